//! Gate evaluation: loading a release's facts, evaluating and storing its gate statuses, and
//! promotion eligibility.
//!
//! The stored statuses in `ops.release_gates` are exact at every moment but two:
//! - while an `ops.ingest_event` is applying an event to the release (it writes the facts, then
//!   re-evaluates the release once, before its subtransaction ends; the triggers on fact rows
//!   skip that release meanwhile, see [`Applying`]);
//! - after a bypassing exception expired, until the next write that re-evaluates the gate, or
//!   the expiry sweep. Expiry is the only way time changes an evaluation, and it happens at the
//!   earliest `bypass_expires_at` of the release's gates, so a reader compares that with
//!   `now()`.
//!
//! Eligibility reads the stored statuses and falls back to a fresh evaluation in those two
//! cases.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use pgrx::spi::{SpiClient, SpiTupleTable};
use pgrx::JsonB;
use serde::Deserialize;
use serde_json::{json, Value};

use super::envelope::CheckReport;
use super::error::{OpsError, OpsResult};
use super::gates::{self, GateCode, ReleaseFacts};
use super::store::{lock_release_row, read, write};
use super::values;
use crate::core::error::CoreError;
use crate::core::prepared::{self, JSONB, TEXT};

// ---------------------------------------------------------------------------------------------
// The release an ingest is applying
// ---------------------------------------------------------------------------------------------

thread_local! {
    /// Releases whose events `ops.ingest_event` is applying in this backend, innermost last.
    static APPLYING: RefCell<Vec<uuid::Uuid>> = const { RefCell::new(Vec::new()) };
}

/// Marks a release as being applied by this backend's ingest until dropped (also when an error
/// unwinds). The fact triggers skip the release meanwhile; the ingest re-evaluates it once.
pub struct Applying(());

impl Applying {
    pub fn start(release_id: uuid::Uuid) -> Applying {
        APPLYING.with(|a| a.borrow_mut().push(release_id));
        Applying(())
    }
}

impl Drop for Applying {
    fn drop(&mut self) {
        APPLYING.with(|a| {
            a.borrow_mut().pop();
        });
    }
}

/// Whether this backend's ingest is applying an event to the release right now.
pub fn is_applying(release_id: uuid::Uuid) -> bool {
    APPLYING.with(|a| a.borrow().contains(&release_id))
}

/// A gate as loaded: code, required checks, stored status, reason and bypassing exception.
type RawGate = (String, Vec<String>, String, Option<String>, Option<String>);

#[derive(Deserialize)]
struct RawFacts {
    now: f64,
    gates: Vec<RawGate>,
    checks: Vec<(String, String, String, bool)>,
    evidence: Vec<(Option<String>, String)>,
    approvals: Vec<(String, String, String, String)>,
    exceptions: Vec<(String, String, String, f64)>,
    deployments: Vec<(String, String, String)>,
}

/// Everything the gate rules read about the release `$1` for the gates `{G}` (a text[]
/// literal), as one JSON value; every gate's stored status.
const FACTS: &str = "jsonb_build_object(\
  'now', extract(epoch FROM now()), \
  'gates', coalesce((SELECT jsonb_agg(jsonb_build_array(gate_code, to_jsonb(required_checks), status, status_reason, \
                                                        bypass_exception_id)) \
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
  'evidence', coalesce((SELECT jsonb_agg(DISTINCT jsonb_build_array(coalesce(g.gate_code, cg.gate_code), e.artifact_type)) \
                          FROM ops.evidence_artifacts e \
                          LEFT JOIN ops.release_gates g ON g.gate_id = e.gate_id \
                          LEFT JOIN ops.gate_checks c ON c.check_id = e.check_id \
                          LEFT JOIN ops.release_gates cg ON cg.gate_id = c.gate_id \
                         WHERE e.release_id = $1::uuid), '[]'), \
  'approvals', coalesce((SELECT jsonb_agg(jsonb_build_array(g.gate_code, a.approver_id, a.persona_role, a.decision) ORDER BY a.recorded_at) \
                           FROM ops.approvals a JOIN ops.release_gates g ON g.gate_id = a.gate_id \
                          WHERE a.release_id = $1::uuid AND g.gate_code = ANY ({G}::text[])), '[]'), \
  'exceptions', coalesce((SELECT jsonb_agg(jsonb_build_array(g.gate_code, x.exception_id, x.status, extract(epoch FROM x.expires_at))) \
                            FROM ops.exceptions x JOIN ops.release_gates g ON g.gate_id = x.gate_id \
                           WHERE x.release_id = $1::uuid AND g.gate_code = ANY ({G}::text[])), '[]'), \
  'deployments', coalesce((SELECT jsonb_agg(jsonb_build_array(environment, status, g4_status) ORDER BY recorded_at) \
                             FROM ops.deployments WHERE release_id = $1::uuid AND 'G4' = ANY ({G}::text[])), '[]'))";

/// A check result that the statement loading its release's facts writes first. That
/// statement reads the facts from before its own write (one snapshot), so the new result is
/// merged into them here: it is the latest of its check.
pub struct NewCheck<'a> {
    pub report: &'a CheckReport,
    pub reported_by: &'a str,
    pub source_system: &'a str,
    pub ingest_id: &'a str,
}

/// The statement that reads the facts of the gates `inputs`, and writes a check result first
/// when `writes_check` (its id is the first column, NULL when the release has no such gate; the
/// result is `$1` to `$10` as in [`refresh_locked`]). The gates are a literal, so each scope is
/// its own prepared statement with its own generic plan.
///
/// An evaluation that stores its result (`stores`) also bumps the release row: an update that
/// changes nothing, under the lock the caller holds. A row lock alone is not a concurrent update
/// to Postgres, so without it a `REPEATABLE READ` transaction whose snapshot is older than
/// another evaluation of the release would evaluate from facts that miss what that one wrote
/// (two events can each leave the stored statuses as they were while their facts together
/// change them). With it, that transaction fails with 40001 when it locks or bumps the row. The
/// bump is in the evaluating statement, so an envelope refused before it (or rolled back with
/// it) leaves no new row version.
fn facts_sql(inputs: &[GateCode], writes_check: bool, stores: bool) -> Rc<str> {
    thread_local! {
        /// Each shape's text, built once per backend (a handful of scopes and flags).
        static TEXTS: RefCell<HashMap<FactsShape, Rc<str>>> = RefCell::new(HashMap::new());
    }
    let shape = (inputs.to_vec(), writes_check, stores);
    if let Some(text) = TEXTS.with(|t| t.borrow().get(&shape).cloned()) {
        return text;
    }
    let text: Rc<str> = build_facts_sql(inputs, writes_check, stores).into();
    TEXTS.with(|t| t.borrow_mut().insert(shape, text.clone()));
    text
}

/// The gates read, whether a check is written, whether the result is stored.
type FactsShape = (Vec<GateCode>, bool, bool);

fn build_facts_sql(inputs: &[GateCode], writes_check: bool, stores: bool) -> String {
    let codes: Vec<&str> = inputs.iter().map(|g| g.as_str()).collect();
    let facts = FACTS.replace("{G}", &format!("'{{{}}}'", codes.join(",")));
    let mut ctes = Vec::new();
    if stores {
        ctes.push(
            "bumped AS (UPDATE ops.releases SET status = status WHERE release_id = $1::uuid)",
        );
    }
    if writes_check {
        ctes.push(
            "written AS ( \
               INSERT INTO ops.gate_checks (gate_id, release_id, check_name, status, required, run_id, details_url, \
                                            reported_by, source_system, ingest_id) \
               SELECT g.gate_id, g.release_id, $3, $4, $5::boolean, $6, $7, $8, $9, $10::uuid \
                 FROM ops.release_gates g WHERE g.release_id = $1::uuid AND g.gate_code = $2 \
               RETURNING check_id::text)",
        );
    }
    let with = if ctes.is_empty() {
        String::new()
    } else {
        format!("WITH {} ", ctes.join(", "))
    };
    let check_id = if writes_check {
        "(SELECT check_id FROM written)"
    } else {
        "NULL::text"
    };
    format!("{with}SELECT {check_id}, {facts}")
}

/// What `ops.release_gates` holds for a gate now: status, reason, bypassing exception.
type Stored = (String, Option<String>, Option<String>);

/// What [`load`] read.
struct Loaded {
    facts: ReleaseFacts,
    stored: BTreeMap<GateCode, Stored>,
    /// The id of the `NewCheck` written, if one was.
    check_id: Option<String>,
}

/// Load everything the gate rules read about a release (one statement): the latest result per
/// check, the distinct evidence types per gate, approvals in order, exceptions, deployments.
pub fn load_facts(client: &SpiClient<'_>, release_id: &str) -> OpsResult<ReleaseFacts> {
    let t = read(
        client,
        &facts_sql(&gates::ALL_GATES, false, false),
        &[Some(release_id)],
    )?;
    Ok(load(t)?.facts)
}

/// Checks are reported again and again (every CI run), so a release collects many rows per
/// check. The latest per check is found by walking the `(gate_id, check_name, recorded_at)`
/// index from name to name, one probe per distinct check, instead of sorting every row: the
/// cost follows the number of checks, not the number of reports.
fn load(t: SpiTupleTable<'_>) -> OpsResult<Loaded> {
    let (check_id, raw) = if t.is_empty() {
        (None, None)
    } else {
        t.first().get_two::<String, JsonB>()?
    };
    let raw: RawFacts = serde_json::from_value(raw.map_or(Value::Null, |j| j.0)).map_err(|e| {
        OpsError::Core(crate::core::error::CoreError::Internal(format!(
            "release facts did not load: {e}"
        )))
    })?;
    let mut facts = ReleaseFacts {
        now: raw.now,
        ..Default::default()
    };
    let mut stored = BTreeMap::new();
    for (code, required, status, reason, bypass) in raw.gates {
        let code = GateCode::parse(&code)?;
        facts.gates.entry(code).or_default().required_checks = required;
        stored.insert(code, (status, reason, bypass));
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
    for (code, artifact_type) in raw.evidence {
        match code {
            Some(c) => facts
                .gates
                .entry(GateCode::parse(&c)?)
                .or_default()
                .evidence
                .push(artifact_type),
            // Release-level evidence counts for every gate.
            None => {
                for g in gates::ALL_GATES {
                    facts
                        .gates
                        .entry(g)
                        .or_default()
                        .evidence
                        .push(artifact_type.clone());
                }
            }
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
    for (environment, status, g4_status) in raw.deployments {
        facts.deployments.push(gates::DeploymentFact {
            environment,
            status,
            g4_status,
        });
    }
    Ok(Loaded {
        facts,
        stored,
        check_id,
    })
}

fn release_exists(client: &SpiClient<'_>, release_id: &str) -> OpsResult<()> {
    let t = read(
        client,
        "SELECT 1 FROM ops.releases WHERE release_id = $1::uuid",
        &[Some(release_id)],
    )?;
    if t.is_empty() {
        return Err(OpsError::Core(crate::core::error::CoreError::not_found(
            "release", release_id,
        )));
    }
    Ok(())
}

/// Evaluate every gate of a release from current facts, without writing.
pub fn evaluate(client: &SpiClient<'_>, release_id: &str) -> OpsResult<Vec<gates::Evaluation>> {
    release_exists(client, release_id)?;
    Ok(gates::evaluate(&load_facts(client, release_id)?))
}

/// Recompute and store the gate statuses of a release, taking its row lock.
pub fn refresh(client: &mut SpiClient<'_>, release_id: &str) -> OpsResult<Vec<gates::Evaluation>> {
    if lock_release_row(client, release_id)?.is_none() {
        // Deleted meanwhile (cascade): nothing to evaluate.
        return Ok(Vec::new());
    }
    Ok(refresh_locked(client, release_id, None)?.evaluations)
}

/// What [`refresh_locked`] did.
pub struct Refreshed {
    /// The gates it evaluated, in order.
    pub evaluations: Vec<gates::Evaluation>,
    /// Every gate's status now: evaluated, or stored (a gate the new check cannot change).
    pub statuses: Vec<(GateCode, String)>,
    /// The id of the `NewCheck` written; None when there was none, or the release has no such
    /// gate (then nothing was written).
    pub check_id: Option<String>,
}

/// Recompute and store the gate statuses of a release whose row lock the caller holds, after
/// writing `new_check` if there is one. A new check is evaluated with the gates it can change,
/// from their facts alone (`GateCode::scope`); otherwise every gate is. Only statuses that
/// changed are written.
pub fn refresh_locked(
    client: &mut SpiClient<'_>,
    release_id: &str,
    new_check: Option<&NewCheck<'_>>,
) -> OpsResult<Refreshed> {
    let (affected, inputs) = match new_check {
        Some(c) => c.report.gate.scope(),
        None => (&gates::ALL_GATES[..], &gates::ALL_GATES[..]),
    };
    let Loaded {
        mut facts,
        stored,
        check_id,
    } = match new_check {
        None => load(write(
            client,
            &facts_sql(inputs, false, true),
            &[Some(release_id)],
        )?)?,
        Some(c) => {
            let required = c.report.required.to_string();
            let t = write(
                client,
                &facts_sql(inputs, true, true),
                &[
                    Some(release_id),
                    Some(c.report.gate.as_str()),
                    Some(&c.report.check_name),
                    Some(&c.report.status),
                    Some(&required),
                    c.report.run_id.as_deref(),
                    c.report.details_url.as_deref(),
                    Some(c.reported_by),
                    Some(c.source_system),
                    Some(c.ingest_id),
                ],
            )?;
            let loaded = load(t)?;
            if loaded.check_id.is_none() {
                return Ok(Refreshed {
                    evaluations: Vec::new(),
                    statuses: Vec::new(),
                    check_id: None,
                });
            }
            loaded
        }
    };
    if let Some(c) = new_check {
        let status = gates::CheckStatus::parse(&c.report.status).ok_or_else(|| {
            OpsError::Core(CoreError::Internal(format!(
                "check status {:?} passed the envelope checks but is not a check status",
                c.report.status
            )))
        })?;
        let checks = &mut facts.gates.entry(c.report.gate).or_default().checks;
        checks.retain(|f| f.name != c.report.check_name);
        checks.push(gates::CheckFact {
            name: c.report.check_name.clone(),
            status,
            required: c.report.required,
        });
    }
    // Facts of gates outside the inputs were not loaded: only the affected gates count.
    let evaluations: Vec<gates::Evaluation> = gates::evaluate(&facts)
        .into_iter()
        .filter(|e| affected.contains(&e.code))
        .collect();
    let changed: Vec<Value> = evaluations
        .iter()
        .filter(|e| {
            let now = (
                e.status.as_str().to_owned(),
                Some(e.reason.clone()),
                e.bypass.as_ref().map(|b| b.0.clone()),
            );
            stored.get(&e.code) != Some(&now)
        })
        .map(|e| {
            json!({
                "gate_code": e.code.as_str(),
                "status": e.status.as_str(),
                "reason": e.reason,
                "bypass_exception_id": e.bypass.as_ref().map(|b| b.0.clone()),
                "bypass_expires_at": e.bypass.as_ref().map(|b| b.1),
            })
        })
        .collect();
    if !changed.is_empty() {
        prepared::run(
            client,
            "UPDATE ops.release_gates g \
                SET status = n.status, status_reason = n.reason, bypass_exception_id = n.bypass_exception_id, \
                    bypass_expires_at = to_timestamp(n.bypass_expires_at), evaluated_at = now(), \
                    passed_at = CASE WHEN n.status = 'passed' THEN coalesce(g.passed_at, now()) END \
               FROM jsonb_to_recordset($2) AS n(gate_code text, status text, reason text, bypass_exception_id uuid, \
                                               bypass_expires_at float8) \
              WHERE g.release_id = $1::uuid AND g.gate_code = n.gate_code \
                AND (g.status, g.status_reason, g.bypass_exception_id) IS DISTINCT FROM (n.status, n.reason, n.bypass_exception_id)",
            &[TEXT, JSONB],
            &[release_id.into(), JsonB(Value::Array(changed)).into()],
        )?;
    }
    let statuses = stored
        .into_iter()
        .map(|(code, (status, _, _))| {
            let now = evaluations
                .iter()
                .find(|e| e.code == code)
                .map_or(status, |e| e.status.as_str().to_owned());
            (code, now)
        })
        .collect();
    Ok(Refreshed {
        evaluations,
        statuses,
        check_id,
    })
}

fn check_environment(environment: &str) -> OpsResult<()> {
    if values::ENVIRONMENTS.contains(&environment) {
        return Ok(());
    }
    Err(OpsError::Core(crate::core::error::CoreError::invalid(
        "target_env",
        format!("{environment:?} is not an environment"),
        values::ENVIRONMENTS.join(", "),
    )))
}

/// The gates `environment` requires.
pub fn required_gates(client: &SpiClient<'_>, environment: &str) -> OpsResult<Vec<GateCode>> {
    check_environment(environment)?;
    let t = read(
        client,
        "SELECT gate_code FROM ops.environment_gate_requirements WHERE environment = $1 ORDER BY gate_code",
        &[Some(environment)],
    )?;
    let mut out = Vec::new();
    for row in t {
        if let Some(code) = row.get::<String>(1)? {
            out.push(GateCode::parse(&code)?);
        }
    }
    Ok(out)
}

/// What the stored statuses say about promotion to `environment`, or None when they cannot be
/// trusted now (a bypass expired, the release is being applied, or it has not got its four
/// gates, which includes a release that does not exist).
fn stored_promotion(
    client: &SpiClient<'_>,
    release_id: &str,
    environment: &str,
) -> OpsResult<Option<(bool, Vec<String>)>> {
    if uuid::Uuid::parse_str(release_id).is_ok_and(is_applying) {
        return Ok(None);
    }
    let t = read(
        client,
        "SELECT count(*)::int = 4 AND NOT coalesce(bool_or(g.bypass_expires_at <= now()), false), \
                coalesce(array_agg(g.gate_code || ' ' || g.status || ': ' || coalesce(g.status_reason, '') ORDER BY g.gate_code) \
                         FILTER (WHERE q.gate_code IS NOT NULL AND g.status NOT IN ('passed', 'bypassed')), '{}') \
           FROM ops.release_gates g \
           LEFT JOIN ops.environment_gate_requirements q ON q.environment = $2 AND q.gate_code = g.gate_code \
          WHERE g.release_id = $1::uuid",
        &[Some(release_id), Some(environment)],
    )?;
    let (exact, blocking) = t.first().get_two::<bool, Vec<String>>()?;
    Ok(match exact {
        Some(true) => {
            let blocking = blocking.unwrap_or_default();
            Some((blocking.is_empty(), blocking))
        }
        _ => None,
    })
}

/// Whether a release may be promoted to `environment` now, and what stands in the way
/// ("G3 in_progress: waiting for ..."). Read from the stored statuses when they are exact now,
/// else evaluated from the facts.
pub fn promotion(
    client: &SpiClient<'_>,
    release_id: &str,
    environment: &str,
) -> OpsResult<(bool, Vec<String>)> {
    check_environment(environment)?;
    if let Some(stored) = stored_promotion(client, release_id, environment)? {
        return Ok(stored);
    }
    let required = required_gates(client, environment)?;
    let evaluations = evaluate(client, release_id)?;
    let (ok, blocking) = gates::eligible(&evaluations, &required);
    let reasons = blocking
        .iter()
        .filter_map(|code| evaluations.iter().find(|e| e.code == *code))
        .map(|e| format!("{} {}: {}", e.code, e.status.as_str(), e.reason))
        .collect();
    Ok((ok, reasons))
}

/// The current status of one gate, from its release's facts now; P0002 for an unknown gate.
pub fn gate_status(client: &SpiClient<'_>, gate_id: &str) -> OpsResult<String> {
    let t = read(
        client,
        "SELECT release_id::text, gate_code FROM ops.release_gates WHERE gate_id = $1::uuid",
        &[Some(gate_id)],
    )?;
    if t.is_empty() {
        return Err(OpsError::Core(CoreError::not_found("gate", gate_id)));
    }
    let (release, code) = t.first().get_two::<String, String>()?;
    let code = GateCode::parse(&code.unwrap_or_default())?;
    let evaluations = evaluate(client, &release.unwrap_or_default())?;
    Ok(evaluations
        .into_iter()
        .find(|e| e.code == code)
        .map(|e| e.status.as_str().to_owned())
        .unwrap_or_else(|| "pending".into()))
}

/// Re-evaluate the releases whose bypassing exception has expired; how many there were.
pub fn expire_bypasses(client: &mut SpiClient<'_>) -> OpsResult<i32> {
    let t = read(
        client,
        "SELECT DISTINCT release_id::text FROM ops.release_gates \
          WHERE status = 'bypassed' AND bypass_expires_at <= now()",
        &[],
    )?;
    let mut ids = Vec::new();
    for row in t {
        if let Some(id) = row.get::<String>(1)? {
            ids.push(id);
        }
    }
    for id in &ids {
        refresh(client, id)?;
    }
    Ok(ids.len() as i32)
}
