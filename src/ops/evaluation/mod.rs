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
//!   `clock_timestamp()`.
//!
//! Expiry is judged by the clock when the evaluation runs, never by the transaction's start
//! (`now()`): a transaction that began before an exception expired cannot promote on it after.
//!
//! Eligibility reads the stored statuses and falls back to a fresh evaluation in those two
//! cases.

use std::cell::RefCell;

use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::{json, Value};

use super::envelope::CheckReport;
use super::error::{OpsError, OpsResult};
use super::gates::{self, GateCode};
use super::store::{lock_release_row, read, write};
use super::values;
use crate::core::error::CoreError;
use crate::core::prepared::{self, JSONB, TEXT};

mod facts;

pub use facts::{insert_check, load_facts, NewCheck};
use facts::{Loaded, Written};

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
    if !lock_release_row(client, release_id)? {
        // Deleted meanwhile (cascade): nothing to evaluate.
        return Ok(Vec::new());
    }
    Ok(refresh_locked(client, release_id, None)?.evaluations)
}

/// What [`refresh_locked`] did.
#[derive(Default)]
pub struct Refreshed {
    /// The gates it evaluated, in order (none when a new check repeats its latest result).
    pub evaluations: Vec<gates::Evaluation>,
    /// Every gate's status now: evaluated, or stored (a gate the new check cannot change).
    pub statuses: Vec<(GateCode, String)>,
    /// The id of the check row that holds the `NewCheck`'s result; None when there was none, or
    /// the release has no such gate (then nothing was written).
    pub check_id: Option<String>,
    /// Whether the new check repeated its check's latest result: `check_id` is that result's
    /// row, and nothing was written.
    pub repeated: bool,
}

/// Recompute and store the gate statuses of a release whose lock the caller holds
/// (`store::lock_release_row`, or the ingest's precheck), after
/// writing `new_check` if there is one. A new check is evaluated with the gates it can change,
/// from their facts alone (`GateCode::scope`), unless it repeats its check's latest result
/// (`facts::write_check`: then nothing is written or evaluated); otherwise every gate is. Only
/// statuses that changed are written.
pub fn refresh_locked(
    client: &mut SpiClient<'_>,
    release_id: &str,
    new_check: Option<&NewCheck<'_>>,
) -> OpsResult<Refreshed> {
    let (affected, inputs) = match new_check {
        Some(c) => c.report.gate.scope(),
        None => (&gates::ALL_GATES[..], &gates::ALL_GATES[..]),
    };
    let (check_id, repeated) = match new_check {
        None => (None, false),
        Some(c) => match facts::write_check(client, release_id, c, inputs)? {
            Written::NoGate => return Ok(Refreshed::default()),
            Written::Unchanged { check_id, statuses } => {
                return Ok(Refreshed {
                    evaluations: Vec::new(),
                    statuses,
                    check_id: Some(check_id),
                    repeated: true,
                })
            }
            Written::Evaluate { check_id, repeated } => (Some(check_id), repeated),
        },
    };
    // A later statement than the check's write: the facts include it.
    let Loaded { facts, stored } = facts::load(write(
        client,
        &facts::facts_sql(inputs),
        &[Some(release_id)],
    )?)?;
    // Facts of gates outside the inputs were not loaded: only the affected gates count.
    let evaluations: Vec<gates::Evaluation> = gates::evaluate(&facts)
        .into_iter()
        .filter(|e| affected.contains(&e.code))
        .collect();
    let changed: Vec<Value> = evaluations
        .iter()
        .filter(|e| stored.get(&e.code).is_none_or(|s| !same_as_stored(e, s)))
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
                AND (g.status, g.status_reason, g.bypass_exception_id, g.bypass_expires_at) \
                    IS DISTINCT FROM (n.status, n.reason, n.bypass_exception_id, to_timestamp(n.bypass_expires_at))",
            &[TEXT, JSONB],
            &[release_id.into(), JsonB(Value::Array(changed)).into()],
        )?;
    }
    let statuses = stored
        .into_iter()
        .map(|(code, (status, ..))| {
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
        repeated,
    })
}

/// A check result that repeats its check's latest result (same status, same `required`) while
/// no bypass its evaluation reads has expired: the row that holds the result and every gate's
/// stored status, or None (the release or gate does not exist, or the result is new). Read
/// without the release's lock, from one snapshot taken now: such a report changes no fact and
/// no status, so it needs no turn (`ops.ingest_event` under READ COMMITTED). Statuses are
/// stored in the transaction that writes the facts they come from, so one snapshot holds both.
pub fn unchanged_repeat(
    client: &mut SpiClient<'_>,
    release_id: &str,
    report: &CheckReport,
) -> OpsResult<Option<Repeat>> {
    // While this backend applies an event to the release (an ingest from a trigger of the
    // ingest's own writes), its stored statuses are not yet the facts'.
    if uuid::Uuid::parse_str(release_id).is_ok_and(is_applying) {
        return Ok(None);
    }
    let (_, inputs) = report.gate.scope();
    let found = facts::look(client, release_id, report, inputs)?;
    Ok(match (found.has_gate, found.latest, found.expired) {
        (true, Some(check_id), false) => Some(Repeat {
            check_id,
            statuses: found.statuses,
        }),
        _ => None,
    })
}

/// A check result that repeats its check's latest result ([`unchanged_repeat`]).
pub struct Repeat {
    /// The row that holds the result.
    pub check_id: String,
    /// Every gate's stored status, by code.
    pub statuses: Vec<(GateCode, String)>,
}

/// Whether an evaluation says what is stored: status, reason, bypassing exception, and when
/// that bypass expires (an exception's expiry moved by its owner changes when the bypass ends,
/// not the reason). Expiries cross as epoch seconds in `f64`; within a millisecond is the same.
fn same_as_stored(e: &gates::Evaluation, stored: &facts::Stored) -> bool {
    let (status, reason, bypass, expires) = stored;
    let expiry_same = match (e.bypass.as_ref().map(|b| b.1), expires) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).abs() < 0.001,
        _ => false,
    };
    status == e.status.as_str()
        && reason.as_deref() == Some(e.reason.as_str())
        && bypass.as_deref() == e.bypass.as_ref().map(|b| b.0.as_str())
        && expiry_same
}

fn check_environment(environment: &str) -> OpsResult<()> {
    if values::ENVIRONMENTS.contains(&environment) {
        return Ok(());
    }
    Err(OpsError::Core(crate::core::error::CoreError::invalid(
        "target_env",
        format!(
            "{} is not an environment",
            crate::core::error::quoted(environment)
        ),
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
        "SELECT count(*)::int = 4 AND NOT coalesce(bool_or(g.bypass_expires_at <= clock_timestamp()), false), \
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
          WHERE status = 'bypassed' AND bypass_expires_at <= clock_timestamp()",
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
