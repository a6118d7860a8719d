//! The persona matrix, written once: which persona reads and writes which table of `ops`, and
//! under which row condition. Pure.
//!
//! Everything about personas follows from it: who may send which event through
//! `ops.ingest_event` ([`senders`]: an event may be sent by the personas that may write its
//! rows directly), and the statements `ops.persona_privileges()` returns, which the install
//! runs: the roles themselves, the GRANTs, the row-level security policies, and the CHECK on the
//! persona an approval is recorded under. Identity in every policy is
//! `flowgate.current_actor()`: the JWT subject under PostgREST, else the login role.

use super::envelope::EventType;
use super::gates::{GateCode, ALL_GATES};

pub const RELEASE_MANAGER: &str = "release_manager";
pub const QA_TESTER: &str = "qa_tester";
pub const SRE: &str = "sre";
pub const CI: &str = "ci_service_role";
pub const DEVELOPER: &str = "developer";
pub const AUDIT_READER: &str = "audit_reader";

/// The six personas, in the order a member of several is recorded as.
pub const PERSONAS: &[&str] = &[RELEASE_MANAGER, QA_TESTER, SRE, CI, DEVELOPER, AUDIT_READER];

/// Who updates which columns of a table, on which rows (USING) and into which (WITH CHECK).
pub struct Update {
    pub personas: &'static [&'static str],
    pub columns: &'static [&'static str],
    pub using: &'static str,
    pub check: &'static str,
    /// The check on a table that lacks a column of `columns` (an earlier version's install script
    /// run with this library, before `ALTER EXTENSION ... UPDATE`): the column, and the check
    /// that version had. Columns a table lacks are left out of the grant.
    pub before: Option<(&'static str, &'static str)>,
}

/// One table of `ops` and who may do what with it.
pub struct Access {
    pub table: &'static str,
    /// Who reads every row.
    pub read_all: &'static [&'static str],
    /// Who reads some rows: the persona and the rows (USING).
    pub read_some: &'static [(&'static str, &'static str)],
    /// Who inserts rows.
    pub insert: &'static [&'static str],
    /// The rows they may insert (WITH CHECK). `{persona}` and `{gates}` make one policy per
    /// persona: its name, and the gates it approves.
    pub insert_check: &'static str,
    pub update: Option<Update>,
}

const ALL: &[&str] = PERSONAS;
/// SQL for "the caller".
macro_rules! me {
    () => {
        "flowgate.current_actor()"
    };
}

/// The matrix. Every table of `ops` is here; what is not granted is refused with 42501 or
/// filtered by row-level security.
pub const MATRIX: &[Access] = &[
    Access {
        table: "releases",
        read_all: ALL,
        read_some: &[],
        insert: &[CI, RELEASE_MANAGER],
        insert_check: concat!("created_by = ", me!(), " AND status = 'open'"),
        update: Some(Update {
            personas: &[RELEASE_MANAGER],
            columns: &["title"],
            using: concat!("created_by = ", me!()),
            check: concat!("created_by = ", me!()),
            before: None,
        }),
    },
    Access {
        table: "release_gates",
        read_all: ALL,
        read_some: &[],
        insert: &[],
        insert_check: "",
        update: None,
    },
    Access {
        table: "gate_checks",
        read_all: ALL,
        read_some: &[],
        insert: &[CI, QA_TESTER, RELEASE_MANAGER],
        insert_check: concat!("reported_by = ", me!()),
        update: None,
    },
    Access {
        table: "approvals",
        read_all: &[AUDIT_READER, SRE],
        read_some: &[
            (
                RELEASE_MANAGER,
                concat!(
                    "approver_id = ",
                    me!(),
                    " OR release_id IN (SELECT r.release_id FROM ops.releases r WHERE r.created_by = ",
                    me!(),
                    ")"
                ),
            ),
            (QA_TESTER, concat!("approver_id = ", me!())),
        ],
        insert: &[QA_TESTER, RELEASE_MANAGER],
        insert_check: concat!(
            "approver_id = ",
            me!(),
            " AND persona_role = '{persona}'",
            " AND gate_id IN (SELECT g.gate_id FROM ops.release_gates g WHERE g.gate_code IN ({gates}))"
        ),
        update: None,
    },
    Access {
        table: "evidence_artifacts",
        read_all: ALL,
        read_some: &[],
        insert: &[CI, QA_TESTER, RELEASE_MANAGER, SRE, DEVELOPER],
        // A qa_signoff (it alone passes G2) only from those who sign G2 off
        // (`roles::Caller::may_attach`).
        insert_check: concat!(
            "submitted_by = ",
            me!(),
            " AND (artifact_type <> 'qa_signoff' OR '{persona}' IN ({signers}))"
        ),
        update: None,
    },
    Access {
        table: "exceptions",
        read_all: ALL,
        read_some: &[],
        insert: &[DEVELOPER, RELEASE_MANAGER, SRE],
        insert_check: concat!("requested_by = ", me!(), " AND status = 'requested'"),
        update: Some(Update {
            personas: &[RELEASE_MANAGER],
            columns: &[
                "status",
                "decided_by",
                "decided_at",
                "decision_comment",
                "revoked_by",
                "revoked_at",
                "revoke_comment",
            ],
            using: "status IN ('requested', 'approved')",
            // The decider of a decision, the revoker of a revocation (the approval it withdraws
            // stays as recorded: ops.exception_rules).
            check: concat!(
                "CASE WHEN status = 'revoked' THEN revoked_by = ",
                me!(),
                " ELSE decided_by = ",
                me!(),
                " END"
            ),
            // 0.1.0 had no revocation columns: a revocation named its revoker as the decider.
            before: Some(("revoked_by", concat!("decided_by = ", me!()))),
        }),
    },
    Access {
        table: "deployments",
        read_all: ALL,
        read_some: &[],
        insert: &[CI, SRE, RELEASE_MANAGER],
        insert_check: concat!("deployed_by = ", me!()),
        update: Some(Update {
            personas: &[CI, SRE, RELEASE_MANAGER],
            columns: &["status", "g4_status", "finished_at", "rolled_back_at", "rollback_reason"],
            using: "true",
            check: "true",
            before: None,
        }),
    },
    Access {
        table: "environment_events",
        read_all: ALL,
        read_some: &[],
        insert: &[SRE, CI, RELEASE_MANAGER],
        insert_check: concat!("recorded_by = ", me!()),
        update: None,
    },
    Access {
        table: "incidents",
        read_all: ALL,
        read_some: &[],
        insert: &[SRE],
        insert_check: concat!("opened_by = ", me!()),
        update: Some(Update {
            personas: &[SRE],
            columns: &["status", "resolution", "resolved_at"],
            using: "true",
            check: "true",
            before: None,
        }),
    },
    Access {
        table: "recovery_drills",
        read_all: ALL,
        read_some: &[],
        insert: &[SRE],
        insert_check: concat!("performed_by = ", me!()),
        update: None,
    },
    Access {
        table: "environment_gate_requirements",
        read_all: ALL,
        read_some: &[],
        insert: &[],
        insert_check: "",
        update: None,
    },
    Access {
        table: "event_ingest_log",
        read_all: &[AUDIT_READER, SRE],
        // A release manager reads the approvals of the releases they created and their own
        // (ops.approvals), so the same of the envelopes that carry approvals; every other row.
        read_some: &[
            (CI, concat!("received_by = ", me!())),
            (
                RELEASE_MANAGER,
                concat!(
                    "event_type IS NULL OR event_type NOT IN ('approval', 'gate_signoff') OR received_by = ",
                    me!(),
                    " OR release_id IN (SELECT r.release_id FROM ops.releases r WHERE r.created_by = ",
                    me!(),
                    ")"
                ),
            ),
        ],
        insert: &[],
        insert_check: "",
        update: None,
    },
];

/// Who inserts into `table` (nobody for a table not in the matrix).
fn inserters(table: &str) -> &'static [&'static str] {
    MATRIX
        .iter()
        .find(|a| a.table == table)
        .map_or(&[], |a| a.insert)
}

/// The personas that may send an event: those that may write its rows directly. An approval
/// or signoff is for the approvers of the gate it defaults to (G3, G2).
pub fn senders(event: EventType) -> &'static [&'static str] {
    use EventType as T;
    match event {
        T::ReleaseCreated | T::GateConfigured => inserters("releases"),
        T::BuildComplete | T::CheckResult => inserters("gate_checks"),
        T::GateSignoff => GateCode::G2.rule().approver_roles,
        T::Approval => GateCode::G3.rule().approver_roles,
        T::EvidenceAttached => inserters("evidence_artifacts"),
        T::ExceptionRequested => inserters("exceptions"),
        T::ExceptionDecided => updaters("exceptions"),
        T::DeploymentStarted => inserters("deployments"),
        T::DeploymentFinished | T::HealthCheck | T::Rollback => updaters("deployments"),
        T::EnvironmentEvent => inserters("environment_events"),
        T::IncidentOpened => inserters("incidents"),
        T::IncidentResolved => updaters("incidents"),
        T::RecoveryDrill => inserters("recovery_drills"),
    }
}

/// Who updates `table` (nobody for a table not in the matrix or without updates).
fn updaters(table: &str) -> &'static [&'static str] {
    MATRIX
        .iter()
        .find(|a| a.table == table)
        .and_then(|a| a.update.as_ref())
        .map_or(&[], |u| u.personas)
}

/// The columns a persona may set in a direct insert, for tables whose key an identity column
/// gives: all but that column. With the whole table granted, `OVERRIDING SYSTEM VALUE` would let
/// a persona take the identity's future values, and every later ingest that writes a row there
/// would fail on the key. None: the table grants every column.
fn insert_columns(table: &str) -> Option<&'static [&'static str]> {
    match table {
        "environment_events" => Some(&[
            "environment",
            "event_kind",
            "release_id",
            "deployment_id",
            "detail",
            "recorded_by",
            "ingest_id",
            "created_at",
        ]),
        _ => None,
    }
}

fn quoted(roles: &[&str]) -> String {
    roles.join(", ")
}

/// The reporting views; every persona reads them (each sees what its policies allow; the check
/// reports, every report's check fields, as every persona reads every check result).
pub const VIEWS: &[&str] = &[
    "v_release_gate_summary",
    "v_promotion_eligibility",
    "v_evidence_completeness",
    "v_exception_status",
    "v_deployment_history",
    "v_check_reports",
];

/// The statements that give every persona its access, in order: the roles (NOLOGIN, created
/// if missing), schema usage, the CHECK on an approval's persona, then per table its GRANTs and
/// policies, then the views and the functions.
pub fn privileges(has_column: &dyn Fn(&str, &str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    out.push(format!(
        "DO $roles$ DECLARE r text; BEGIN FOREACH r IN ARRAY ARRAY['{}'] LOOP \
         IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN \
         EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r); END IF; END LOOP; END $roles$",
        PERSONAS.join("', '")
    ));
    out.push(format!("GRANT USAGE ON SCHEMA ops TO {}", quoted(PERSONAS)));
    out.push(format!(
        "ALTER TABLE ops.approvals ADD CONSTRAINT approvals_persona_role_check \
         CHECK (persona_role IN ('{}'))",
        PERSONAS.join("', '")
    ));
    for a in MATRIX {
        let t = a.table;
        let mut readers: Vec<&str> = a.read_all.to_vec();
        readers.extend(a.read_some.iter().map(|(p, _)| *p));
        if !readers.is_empty() {
            out.push(format!("GRANT SELECT ON ops.{t} TO {}", quoted(&readers)));
        }
        if !a.read_all.is_empty() {
            out.push(format!(
                "CREATE POLICY read_all ON ops.{t} FOR SELECT TO {} USING (true)",
                quoted(a.read_all)
            ));
        }
        for (p, using) in a.read_some {
            out.push(format!(
                "CREATE POLICY {p}_reads ON ops.{t} FOR SELECT TO {p} USING ({using})"
            ));
        }
        if !a.insert.is_empty() {
            match insert_columns(t) {
                Some(cols) => out.push(format!(
                    "GRANT INSERT ({}) ON ops.{t} TO {}",
                    cols.join(", "),
                    quoted(a.insert)
                )),
                None => out.push(format!("GRANT INSERT ON ops.{t} TO {}", quoted(a.insert))),
            }
            if a.insert_check.contains("{persona}") {
                for p in a.insert {
                    let gates: Vec<String> = ALL_GATES
                        .iter()
                        .filter(|g| g.rule().approver_roles.contains(p))
                        .map(|g| format!("'{g}'"))
                        .collect();
                    // A persona that approves no gate may insert no approval.
                    let gates = if gates.is_empty() {
                        "NULL".to_owned()
                    } else {
                        gates.join(", ")
                    };
                    let signers = GateCode::G2
                        .rule()
                        .approver_roles
                        .iter()
                        .map(|r| format!("'{r}'"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let check = a
                        .insert_check
                        .replace("{persona}", p)
                        .replace("{gates}", &gates)
                        .replace("{signers}", &signers);
                    out.push(format!(
                        "CREATE POLICY {p}_inserts ON ops.{t} FOR INSERT TO {p} WITH CHECK ({check})"
                    ));
                }
            } else {
                out.push(format!(
                    "CREATE POLICY inserts ON ops.{t} FOR INSERT TO {} WITH CHECK ({})",
                    quoted(a.insert),
                    a.insert_check
                ));
            }
        }
        if let Some(u) = &a.update {
            let columns: Vec<&str> = u
                .columns
                .iter()
                .copied()
                .filter(|c| has_column(t, c))
                .collect();
            let check = match u.before {
                Some((column, check)) if !has_column(t, column) => check,
                _ => u.check,
            };
            out.push(format!(
                "GRANT UPDATE ({}) ON ops.{t} TO {}",
                columns.join(", "),
                quoted(u.personas)
            ));
            out.push(format!(
                "CREATE POLICY updates ON ops.{t} FOR UPDATE TO {} USING ({}) WITH CHECK ({})",
                quoted(u.personas),
                u.using,
                check
            ));
        }
    }
    // The views the schema has: an earlier version's script run with this library made fewer.
    let views: Vec<String> = VIEWS
        .iter()
        .filter(|v| has_column(v, "release_id"))
        .map(|v| format!("ops.{v}"))
        .collect();
    if !views.is_empty() {
        out.push(format!(
            "GRANT SELECT ON {} TO {}",
            views.join(", "),
            quoted(PERSONAS)
        ));
    }
    // Ingest for every persona that may send some event; evaluation for all six; creating a
    // release's gates for those that create releases.
    let senders: Vec<&str> = PERSONAS
        .iter()
        .copied()
        .filter(|p| {
            EventType::NAMES
                .iter()
                .filter_map(|n| EventType::parse(n))
                .any(|e| senders(e).contains(p))
        })
        .collect();
    out.push(format!(
        "GRANT EXECUTE ON FUNCTION ops.ingest_event(jsonb) TO {}",
        quoted(&senders)
    ));
    out.push(format!(
        "GRANT EXECUTE ON FUNCTION ops.evaluate_gate(uuid), ops.is_eligible_for_promotion(uuid, text), \
         ops.promotion_status(uuid, text) TO {}",
        quoted(PERSONAS)
    ));
    out.push(format!(
        "GRANT EXECUTE ON FUNCTION ops.create_release_gates(uuid) TO {}",
        quoted(inserters("releases"))
    ));
    out
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn every_event_has_senders_who_may_write_its_rows() {
        for name in EventType::NAMES {
            let e = EventType::parse(name).unwrap();
            let s = senders(e);
            assert!(!s.is_empty(), "{name}");
            assert!(s.iter().all(|p| PERSONAS.contains(p)), "{name}");
            assert!(!s.contains(&AUDIT_READER), "{name}: auditors send nothing");
        }
    }

    #[test]
    fn the_statements_name_only_functions_the_ops_surface_requires() {
        // The surface block that runs these statements requires the Rust ones among them
        // (src/ops/mod.rs); pg_test/surface_check.sh cannot see inside generated text.
        let known = [
            "flowgate.current_actor",
            "ops.ingest_event",
            "ops.evaluate_gate",
            "ops.is_eligible_for_promotion",
            "ops.promotion_status",
            "ops.create_release_gates",
        ];
        for statement in privileges(&|_, _| true) {
            for (i, _) in statement.match_indices('(') {
                let name: String = statement[..i]
                    .chars()
                    .rev()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                if name.contains('.') && !name.starts_with("pg_catalog.") {
                    assert!(known.contains(&name.as_str()), "{name} in {statement}");
                }
            }
        }
    }

    #[test]
    fn tables_are_listed_once() {
        for (i, a) in MATRIX.iter().enumerate() {
            assert!(
                MATRIX[i + 1..].iter().all(|b| b.table != a.table),
                "{}",
                a.table
            );
        }
        assert_eq!(MATRIX.len(), 12);
    }

    #[test]
    fn approvals_are_inserted_for_the_gates_each_persona_approves() {
        let sql = privileges(&|_, _| true).join(";\n");
        assert!(sql.contains(
            "CREATE POLICY qa_tester_inserts ON ops.approvals FOR INSERT TO qa_tester WITH CHECK \
             (approver_id = flowgate.current_actor() AND persona_role = 'qa_tester' AND gate_id IN \
             (SELECT g.gate_id FROM ops.release_gates g WHERE g.gate_code IN ('G2')))"
        ));
        assert!(sql.contains("g.gate_code IN ('G2', 'G3')"));
        assert!(sql.contains(
            "GRANT EXECUTE ON FUNCTION ops.ingest_event(jsonb) TO release_manager, qa_tester, sre, \
             ci_service_role, developer"
        ));
        assert!(!sql.contains('{'), "every placeholder is filled in");
    }
}
