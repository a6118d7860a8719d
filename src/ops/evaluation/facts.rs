//! Loading what the gate rules read about a release, and writing a check result with the
//! look at its check's latest result that decides whether the release is evaluated again.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use pgrx::spi::{SpiClient, SpiTupleTable};
use serde::Deserialize;
use serde_json::Value;

use crate::core::prepared::{self, BOOL, TEXT, TEXT_ARRAY, UUID};
use crate::ops::envelope::CheckReport;
use crate::ops::error::{OpsError, OpsResult};
use crate::ops::gates::{self, GateCode, ReleaseFacts};
use crate::ops::store::{read, uuid_arg};

/// A gate as loaded: code, required checks, stored status, reason, bypassing exception and
/// its stored expiry (epoch seconds).
type RawGate = (
    String,
    Vec<String>,
    String,
    Option<String>,
    Option<String>,
    Option<f64>,
);

#[derive(Deserialize)]
struct RawFacts {
    now: f64,
    gates: Vec<RawGate>,
    checks: Vec<(String, String, String, bool)>,
    evidence: Vec<(Option<String>, String, f64)>,
    approvals: Vec<(String, String, String, String)>,
    exceptions: Vec<(String, String, String, f64)>,
    deployments: Vec<(String, String, String, f64, Option<f64>)>,
}

/// Everything the gate rules read about the release `$1` for the gates `{G}` (a text[]
/// literal), as one JSON value; every gate's stored status.
const FACTS: &str = "jsonb_build_object(\
  'now', extract(epoch FROM clock_timestamp()), \
  'gates', coalesce((SELECT jsonb_agg(jsonb_build_array(gate_code, to_jsonb(required_checks), status, status_reason, \
                                                        bypass_exception_id, extract(epoch FROM bypass_expires_at))) \
                       FROM ops.release_gates WHERE release_id = $1::uuid), '[]'), \
  'checks', coalesce((WITH RECURSIVE names AS ( \
                          SELECT g.gate_id, g.gate_code, \
                                 (SELECT min(c.check_name COLLATE \"C\") FROM ops.gate_checks c WHERE c.gate_id = g.gate_id) AS name \
                            FROM ops.release_gates g WHERE g.release_id = $1::uuid AND g.gate_code = ANY ({G}::text[]) \
                          UNION ALL \
                          SELECT n.gate_id, n.gate_code, \
                                 (SELECT min(c.check_name COLLATE \"C\") FROM ops.gate_checks c \
                                   WHERE c.gate_id = n.gate_id AND c.check_name COLLATE \"C\" > n.name) \
                            FROM names n WHERE n.name IS NOT NULL) \
                       SELECT jsonb_agg(jsonb_build_array(n.gate_code, n.name, l.status, l.required) ORDER BY l.recorded_at) \
                         FROM names n \
                        CROSS JOIN LATERAL (SELECT c.status, c.required, c.recorded_at FROM ops.gate_checks c \
                                             WHERE c.gate_id = n.gate_id AND c.check_name COLLATE \"C\" = n.name \
                                             ORDER BY c.recorded_at DESC LIMIT 1) l \
                        WHERE n.name IS NOT NULL), '[]'), \
  'evidence', coalesce((SELECT jsonb_agg(jsonb_build_array(x.code, x.artifact_type, x.latest)) \
                          FROM (SELECT coalesce(g.gate_code, cg.gate_code) AS code, e.artifact_type, \
                                       extract(epoch FROM max(e.{ATTACHED})) AS latest \
                                  FROM ops.evidence_artifacts e \
                                  LEFT JOIN ops.release_gates g ON g.gate_id = e.gate_id \
                                  LEFT JOIN ops.gate_checks c ON c.check_id = e.check_id \
                                  LEFT JOIN ops.release_gates cg ON cg.gate_id = c.gate_id \
                                 WHERE e.release_id = $1::uuid GROUP BY 1, 2) x), '[]'), \
  'approvals', coalesce((SELECT jsonb_agg(jsonb_build_array(g.gate_code, a.approver_id, a.persona_role, a.decision) ORDER BY a.recorded_at) \
                           FROM ops.approvals a JOIN ops.release_gates g ON g.gate_id = a.gate_id \
                          WHERE a.release_id = $1::uuid AND g.gate_code = ANY ({G}::text[])), '[]'), \
  'exceptions', coalesce((SELECT jsonb_agg(jsonb_build_array(g.gate_code, x.exception_id, x.status, extract(epoch FROM x.expires_at))) \
                            FROM ops.exceptions x JOIN ops.release_gates g ON g.gate_id = x.gate_id \
                           WHERE x.release_id = $1::uuid AND g.gate_code = ANY ({G}::text[])), '[]'), \
  'deployments', coalesce((SELECT jsonb_agg(jsonb_build_array(environment, status, g4_status, \
                                                              extract(epoch FROM recorded_at), extract(epoch FROM rolled_back_at)) \
                                            ORDER BY recorded_at, deployment_id) \
                             FROM ops.deployments WHERE release_id = $1::uuid AND 'G4' = ANY ({G}::text[])), '[]'))";

/// A check result for the evaluation to write ([`write_check`]).
pub struct NewCheck<'a> {
    pub report: &'a CheckReport,
    pub reported_by: &'a str,
    pub source_system: &'a str,
    pub ingest_id: &'a str,
}

/// The facts statements built so far: by scope, and whether evidence has `recorded_at`.
type FactTexts = HashMap<(Vec<GateCode>, bool), Rc<str>>;

/// The statement that reads the facts of the gates `inputs` (the release is `$1`). The gates
/// are a literal, so each scope is its own prepared statement with its own generic plan.
///
/// Evidence is timed by its `recorded_at` (the clock); a schema from before that column (an
/// earlier version's, before `ALTER EXTENSION flowgate UPDATE`) has only `created_at`.
pub(super) fn facts_sql(inputs: &[GateCode]) -> Rc<str> {
    thread_local! {
        /// Each scope's text, built once per backend (a handful of scopes, two schemas).
        static TEXTS: RefCell<FactTexts> = RefCell::new(HashMap::new());
    }
    let clocked = crate::core::store::column_exists(c"ops", c"evidence_artifacts", c"recorded_at");
    let key = (inputs.to_vec(), clocked);
    if let Some(text) = TEXTS.with(|t| t.borrow().get(&key).cloned()) {
        return text;
    }
    let codes: Vec<&str> = inputs.iter().map(|g| g.as_str()).collect();
    let facts = FACTS
        .replace("{G}", &format!("'{{{}}}'", codes.join(",")))
        .replace(
            "{ATTACHED}",
            if clocked { "recorded_at" } else { "created_at" },
        );
    let text: Rc<str> = format!("SELECT {facts}").into();
    TEXTS.with(|t| t.borrow_mut().insert(key, text.clone()));
    text
}

/// What [`write_check`] did.
pub(super) enum Written {
    /// The release has no such gate: nothing was written.
    NoGate,
    /// The result repeats its check's latest one and no evaluation can change: nothing was
    /// written, and the stored statuses (every gate's, by code) are the answer. `check_id` is
    /// the row that holds the result.
    Unchanged {
        check_id: String,
        statuses: Vec<(GateCode, String)>,
    },
    /// The release's gates are to be evaluated, with the result among their facts: in the row
    /// `check_id`, written now, or (`repeated`) the row that holds it already.
    Evaluate { check_id: String, repeated: bool },
}

/// Record a check result of the release `release_id`, whose lock the caller holds
/// (`store::lock_release_row`, and the ingest's precheck, which takes the same lock).
///
/// `ops.gate_checks` holds a check's results as they change: a result that repeats its check's
/// latest one (same status, same `required`) is not written again, and the answer names the row
/// that holds it. No evaluation can change either: the rules read the latest result per check
/// and nothing of the order or number of reports (`gates::required_names`), so every stored
/// status stays exact. CI reports the same results all day; this is their path, and the report
/// itself is the envelope's row in `ops.event_ingest_log`. (An envelope with evidence writes its
/// own check row, for the evidence to attach to: `apply::facts::check`.)
///
/// A repeat is evaluated all the same (and still not written) when a gate whose facts the
/// evaluation reads (`inputs`: G3 follows G2's status) holds a bypass that has expired: expiry
/// is the one way time changes an evaluation, and the stored status is then out of date.
///
/// Under the lock, the repeat path relies on the lock's rewrite: a `REPEATABLE READ`
/// transaction whose snapshot misses a new result could otherwise judge its own report against
/// an older latest result. Instead it fails with 40001 when it takes the release. (A
/// `READ COMMITTED` sender records a repeat without the lock: `unchanged_repeat`.)
pub(super) fn write_check(
    client: &mut SpiClient<'_>,
    release_id: &str,
    c: &NewCheck<'_>,
    inputs: &[GateCode],
) -> OpsResult<Written> {
    let Look {
        has_gate,
        latest,
        expired,
        statuses,
    } = look(client, release_id, c.report, inputs)?;
    if !has_gate {
        return Ok(Written::NoGate);
    }
    match (latest, expired) {
        (Some(check_id), false) => return Ok(Written::Unchanged { check_id, statuses }),
        (Some(check_id), true) => {
            return Ok(Written::Evaluate {
                check_id,
                repeated: true,
            })
        }
        (None, _) => {}
    }
    // Under the lock the gate that `look` found is still there.
    let Some(check_id) = insert_check(client, release_id, c)? else {
        return Ok(Written::NoGate);
    };
    Ok(Written::Evaluate {
        check_id,
        repeated: false,
    })
}

/// Write a check result as a row of its own on its gate of the release `release_id`: its id, or
/// None when the release has no such gate (nothing was written).
pub fn insert_check(
    client: &mut SpiClient<'_>,
    release_id: &str,
    c: &NewCheck<'_>,
) -> OpsResult<Option<String>> {
    // A v4 UUID as the column's default makes, without OpenSSL's generator.
    let check_id = crate::core::store::new_id();
    let t = prepared::run(
        client,
        "INSERT INTO ops.gate_checks (check_id, gate_id, release_id, check_name, status, required, run_id, \
                                      details_url, reported_by, source_system, ingest_id) \
         SELECT $1::uuid, g.gate_id, g.release_id, $4, $5, $6, $7, $8, $9, $10, $11::uuid \
           FROM ops.release_gates g WHERE g.release_id = $2 AND g.gate_code = $3",
        &[
            TEXT, UUID, TEXT, TEXT, TEXT, BOOL, TEXT, TEXT, TEXT, TEXT, TEXT,
        ],
        &[
            check_id.as_str().into(),
            uuid_arg(release_id)?,
            c.report.gate.as_str().into(),
            c.report.check_name.as_str().into(),
            c.report.status.as_str().into(),
            c.report.required.into(),
            c.report.run_id.as_deref().into(),
            c.report.details_url.as_deref().into(),
            c.reported_by.into(),
            c.source_system.into(),
            c.ingest_id.into(),
        ],
    )?;
    Ok((t.len() == 1).then_some(check_id))
}

/// What [`look`] found of a release's gates and a check's latest result.
pub(super) struct Look {
    /// Whether the release has the reported gate (false also when the release does not exist).
    pub has_gate: bool,
    /// The row of the check's latest result, when that result is the reported one (same
    /// status, same `required`).
    pub latest: Option<String>,
    /// Whether a gate whose facts the check's evaluation reads holds a bypass that has expired.
    pub expired: bool,
    /// Every gate's stored status, by code.
    pub statuses: Vec<(GateCode, String)>,
}

/// Read a release's gates with their stored statuses, and whether a check's latest result is
/// `report`'s (one statement, run as a write: its own snapshot, taken now). `inputs` are the
/// gates whose facts the check's evaluation reads.
pub(super) fn look(
    client: &mut SpiClient<'_>,
    release_id: &str,
    report: &CheckReport,
    inputs: &[GateCode],
) -> OpsResult<Look> {
    // One row per gate of the release; the reported gate's row carries its check's latest
    // result when that result is the same.
    const LOOK: &str = "SELECT g.gate_code, g.status, \
                g.gate_code = ANY ($6) AND g.bypass_expires_at <= clock_timestamp(), l.check_id::text \
           FROM ops.release_gates g \
           LEFT JOIN LATERAL ( \
                SELECT c.check_id, c.status, c.required FROM ops.gate_checks c \
                 WHERE g.gate_code = $2 AND c.gate_id = g.gate_id AND c.check_name COLLATE \"C\" = $3 \
                 ORDER BY c.recorded_at DESC LIMIT 1) l ON l.status = $4 AND l.required = $5 \
          WHERE g.release_id = $1 \
          ORDER BY g.gate_code";
    let codes: Vec<String> = inputs.iter().map(|g| g.as_str().to_owned()).collect();
    let t = prepared::run(
        client,
        LOOK,
        &[UUID, TEXT, TEXT, TEXT, BOOL, TEXT_ARRAY],
        &[
            uuid_arg(release_id)?,
            report.gate.as_str().into(),
            report.check_name.as_str().into(),
            report.status.as_str().into(),
            report.required.into(),
            codes.into(),
        ],
    )?;
    let mut found = Look {
        has_gate: false,
        latest: None,
        expired: false,
        statuses: Vec::new(),
    };
    for row in t {
        let code = GateCode::parse(&row.get::<String>(1)?.unwrap_or_default())?;
        found
            .statuses
            .push((code, row.get::<String>(2)?.unwrap_or_default()));
        found.expired |= row.get::<bool>(3)? == Some(true);
        if code == report.gate {
            found.has_gate = true;
            found.latest = row.get::<String>(4)?;
        }
    }
    Ok(found)
}

/// What `ops.release_gates` holds for a gate now: status, reason, bypassing exception and when
/// that bypass expires (epoch seconds).
pub(super) type Stored = (String, Option<String>, Option<String>, Option<f64>);

/// What [`load`] read.
pub(super) struct Loaded {
    pub facts: ReleaseFacts,
    pub stored: BTreeMap<GateCode, Stored>,
}

/// Load everything the gate rules read about a release (one statement): the latest result per
/// check, the distinct evidence types per gate, approvals in order, exceptions, deployments.
pub fn load_facts(client: &SpiClient<'_>, release_id: &str) -> OpsResult<ReleaseFacts> {
    let t = read(client, &facts_sql(&gates::ALL_GATES), &[Some(release_id)])?;
    Ok(load(t)?.facts)
}

/// A release still collects many rows per check (every change of a result, every report with
/// evidence, direct writes). The latest per check is found by walking the `(gate_id,
/// check_name, recorded_at)` index from name to name, one probe per distinct check, instead of
/// sorting every row: the cost follows the number of checks, not the number of rows.
pub(super) fn load(t: SpiTupleTable<'_>) -> OpsResult<Loaded> {
    let raw = if t.is_empty() {
        None
    } else {
        crate::core::prepared::json_at(&t.first(), 1)?
    };
    let raw: RawFacts = serde_json::from_value(raw.unwrap_or(Value::Null)).map_err(|e| {
        OpsError::Core(crate::core::error::CoreError::Internal(format!(
            "release facts did not load: {e}"
        )))
    })?;
    let mut facts = ReleaseFacts {
        now: raw.now,
        ..Default::default()
    };
    let mut stored = BTreeMap::new();
    for (code, required, status, reason, bypass, expires) in raw.gates {
        let code = GateCode::parse(&code)?;
        facts.gates.entry(code).or_default().required_checks = required;
        stored.insert(code, (status, reason, bypass, expires));
    }
    for (code, name, status, required) in raw.checks {
        if let Some(status) = gates::CheckStatus::parse(&status) {
            facts
                .gates
                .entry(GateCode::parse(&code)?)
                .or_default()
                .checks
                .push(gates::CheckFact {
                    name,
                    status,
                    required,
                });
        }
    }
    for (code, artifact_type, latest) in raw.evidence {
        // Release-level evidence counts for every gate.
        let codes = match code {
            Some(c) => vec![GateCode::parse(&c)?],
            None => gates::ALL_GATES.to_vec(),
        };
        for g in codes {
            let at = facts
                .gates
                .entry(g)
                .or_default()
                .evidence
                .entry(artifact_type.clone())
                .or_insert(latest);
            *at = at.max(latest);
        }
    }
    for (code, approver_id, persona_role, decision) in raw.approvals {
        facts
            .gates
            .entry(GateCode::parse(&code)?)
            .or_default()
            .approvals
            .push(gates::ApprovalFact {
                approver_id,
                persona_role,
                approved: decision == "approved",
            });
    }
    for (code, exception_id, status, expires_at) in raw.exceptions {
        facts
            .gates
            .entry(GateCode::parse(&code)?)
            .or_default()
            .exceptions
            .push(gates::ExceptionFact {
                exception_id,
                status,
                expires_at,
            });
    }
    for (environment, status, g4_status, recorded, rolled_back_at) in raw.deployments {
        facts.deployments.push(gates::DeploymentFact {
            environment,
            status,
            g4_status,
            recorded,
            rolled_back_at,
        });
    }
    Ok(Loaded { facts, stored })
}
