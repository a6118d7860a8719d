//! Applying a checked envelope: the rows of `ops.*` each event stands for, one file per family
//! of events (a release and its gates; checks, approvals and evidence; exceptions; deployments;
//! the environment's own record).
//!
//! Every envelope about an existing release is applied under the release's lock
//! (`store::lock_release_row`, taken by the ingest's first statement or else here), so events
//! of one release are applied one at a time, and ends by evaluating the release's gates once from
//! everything committed before it and written by it: every gate, or for a check result the
//! gates it can change (`GateCode::scope`). Different releases never wait for each other.

use pgrx::spi::SpiClient;
use serde_json::{json, Map, Value};

use super::envelope::{Artifact, Body, CheckReport, Envelope, OnEnvironment, OnRelease};
use super::error::{OpsError, OpsResult};
use super::evaluation;
use super::gates::GateCode;
use super::roles::Caller;
use super::store::{first_text, lock_release_row, read, write, ReleaseLock};

mod deployments;
mod environment;
mod exceptions;
mod facts;
mod release;

/// The context a handler runs in.
pub struct Apply<'a> {
    pub ingest_id: &'a str,
    pub caller: &'a Caller,
    /// Whether the caller locked the release row already (`release_to_lock`).
    pub lock: ReleaseLock,
}

/// The release whose row is locked before an envelope is applied: the one every event about an
/// existing release names (release_created makes its release).
pub fn release_to_lock(env: &Envelope) -> Option<&str> {
    match &env.body {
        Body::Release {
            event: OnRelease::ReleaseCreated(_),
            ..
        } => None,
        Body::Release { release_id, .. } => Some(release_id),
        Body::Environment { release_id, .. } => release_id.as_deref(),
    }
}

/// The check result an envelope reports when it is one a sender may record without the
/// release's lock should it repeat its check's latest result (`evaluation::unchanged_repeat`):
/// a check or build result without evidence (evidence needs a row of its own to attach to).
pub fn repeat_candidate(env: &Envelope) -> Option<(&str, &CheckReport)> {
    match &env.body {
        Body::Release {
            release_id,
            event: OnRelease::Check(report),
        } if env.evidence.is_empty() => Some((release_id, report)),
        _ => None,
    }
}

/// What a handler adds to the accepted outcome.
#[derive(Default)]
struct Applied<'a> {
    /// The `detail` of the outcome.
    detail: Map<String, Value>,
    /// The gate the envelope's extra evidence is attached to.
    attach_gate: Option<GateCode>,
    /// The check the envelope's extra evidence is attached to.
    attach_check: Option<String>,
    /// A check result left for the evaluation to write (`evaluation::refresh_locked`).
    new_check: Option<evaluation::NewCheck<'a>>,
    /// Who the envelope's extra evidence is recorded as submitted by, when not the caller: a
    /// decision's evidence names the persona that decided, never the person (every persona
    /// reads evidence; fewer read ops.approvals, which says who).
    evidence_submitter: Option<String>,
}

impl Applied<'_> {
    fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.detail.insert(key.to_owned(), value.into());
    }
}

/// Apply a checked envelope; returns the `detail` of the accepted outcome.
pub fn apply<'a>(
    client: &mut SpiClient<'_>,
    ctx: &Apply<'a>,
    env: &'a Envelope,
) -> OpsResult<Value> {
    let mut out = Applied::default();
    match &env.body {
        Body::Release { release_id, event } => {
            let r = release_id.as_str();
            out.set("release_id", r);
            if !matches!(event, OnRelease::ReleaseCreated(_)) {
                lock_release(client, ctx, r)?;
            }
            match event {
                OnRelease::ReleaseCreated(b) => release::created(client, ctx, env, r, b, &mut out),
                OnRelease::GateConfigured(b) => release::configured(client, r, b, &mut out),
                OnRelease::Check(b) => facts::check(client, ctx, env, r, b, &mut out),
                OnRelease::Approval(b) => facts::signoff(client, ctx, env, r, b, &mut out),
                OnRelease::Evidence(b) => facts::attach(client, ctx, r, b, &mut out),
                OnRelease::ExceptionRequested(b) => {
                    exceptions::request(client, ctx, r, b, &mut out)
                }
                OnRelease::ExceptionDecided(b) => exceptions::decide(client, ctx, r, b, &mut out),
                OnRelease::DeploymentStarted(b) => deployments::start(client, ctx, r, b, &mut out),
                OnRelease::DeploymentFinished(b) => {
                    deployments::finish(client, ctx, r, b, &mut out)
                }
                OnRelease::HealthCheck(b) => deployments::health(client, ctx, r, b, &mut out),
                OnRelease::Rollback(b) => deployments::roll_back(client, ctx, r, b, &mut out),
            }?;
        }
        Body::Environment { release_id, event } => {
            let r = release_id.as_deref();
            match r {
                Some(r) => {
                    out.set("release_id", r);
                    lock_release(client, ctx, r)?;
                }
                None if !env.evidence.is_empty() => {
                    return Err(OpsError::invalid(
                        "evidence",
                        "artifacts need a release to attach to",
                        "send release_id with evidence",
                    ))
                }
                None => {}
            }
            match event {
                OnEnvironment::EnvironmentEvent(b) => {
                    environment::event(client, ctx, r, b, &mut out)
                }
                OnEnvironment::IncidentOpened(b) => environment::open(client, ctx, r, b, &mut out),
                OnEnvironment::IncidentResolved(b) => {
                    environment::resolve(client, ctx, b, &mut out)
                }
                OnEnvironment::RecoveryDrill(b) => environment::drill(client, ctx, r, b, &mut out),
            }?;
        }
    }

    if let Some(r) = env.release_id() {
        if !env.evidence.is_empty() {
            let g = out.attach_gate.map(|g| gate_id(client, r, g)).transpose()?;
            let mut ids = Vec::new();
            for a in &env.evidence {
                let check = out.attach_check.as_deref();
                let submitter = out
                    .evidence_submitter
                    .as_deref()
                    .unwrap_or(&ctx.caller.actor_id);
                ids.push(insert_artifact(
                    client,
                    ctx,
                    r,
                    g.as_deref(),
                    check,
                    a,
                    submitter,
                )?);
            }
            out.set("artifact_ids", json!(ids));
        }
        // The triggers on fact rows skipped this release (evaluation::Applying): evaluate it
        // once, now that every fact of the envelope is written.
        let new_check = out.new_check.take();
        let refreshed = evaluation::refresh_locked(client, r, new_check.as_ref())?;
        if let Some(c) = &new_check {
            let id = refreshed
                .check_id
                .ok_or_else(|| unknown_gate(r, c.report.gate))?;
            out.set("check_id", id);
            if refreshed.repeated {
                // The report repeats its check's latest result: `check_id` is that result's
                // row, and the report is this envelope's log row alone.
                out.set("repeated", true);
            }
        }
        out.set("gates", gates_detail(refreshed.statuses));
    }
    Ok(Value::Object(out.detail))
}

/// Every gate's status, as `detail.gates` answers it.
fn gates_detail(statuses: Vec<(GateCode, String)>) -> Value {
    let statuses: Map<String, Value> = statuses
        .into_iter()
        .map(|(code, status)| (code.as_str().to_owned(), json!(status)))
        .collect();
    Value::Object(statuses)
}

/// The `detail` [`apply`] answers for a check result without evidence that repeats its check's
/// latest result (`evaluation::unchanged_repeat`), built without applying anything: the row
/// that holds the result and the stored statuses.
pub fn repeated_check_detail(
    release_id: &str,
    report: &CheckReport,
    check_id: &str,
    statuses: Vec<(GateCode, String)>,
) -> Value {
    json!({
        "release_id": release_id,
        "gate_code": report.gate.as_str(),
        "check_id": check_id,
        "repeated": true,
        "gates": gates_detail(statuses),
    })
}

/// Lock the release row, unless the caller did; 409 when it does not exist.
fn lock_release(client: &mut SpiClient<'_>, ctx: &Apply<'_>, release_id: &str) -> OpsResult<()> {
    let exists = match ctx.lock {
        ReleaseLock::Taken => true,
        ReleaseLock::Missing => false,
        ReleaseLock::NotTaken => lock_release_row(client, release_id)?,
    };
    if !exists {
        return Err(OpsError::UnknownRelease(release_id.to_owned()));
    }
    Ok(())
}

fn gate_id(client: &SpiClient<'_>, release_id: &str, gate: GateCode) -> OpsResult<String> {
    let t = read(
        client,
        "SELECT gate_id::text FROM ops.release_gates WHERE release_id = $1::uuid AND gate_code = $2",
        &[Some(release_id), Some(gate.as_str())],
    )?;
    first_text(t)?.ok_or_else(|| unknown_gate(release_id, gate))
}

fn unknown_gate(release_id: &str, gate: GateCode) -> OpsError {
    OpsError::UnknownReference {
        kind: "gate".into(),
        id: format!("{gate} of release {release_id}"),
    }
}

/// Attach an artifact to the release, or to one of its gates or checks, as submitted by
/// `submitted_by` (the caller's actor, but for a signoff's own evidence).
fn insert_artifact(
    client: &mut SpiClient<'_>,
    ctx: &Apply<'_>,
    release_id: &str,
    gate_id: Option<&str>,
    check_id: Option<&str>,
    a: &Artifact,
    submitted_by: &str,
) -> OpsResult<String> {
    ctx.caller.may_attach(&a.artifact_type)?;
    let t = write(
        client,
        "INSERT INTO ops.evidence_artifacts (release_id, gate_id, check_id, artifact_type, uri, sha256, description, \
                                             submitted_by, ingest_id) \
         VALUES ($1::uuid, $2::uuid, $3::uuid, $4, $5, $6, $7, $8, $9::uuid) RETURNING artifact_id::text",
        &[
            Some(release_id),
            gate_id,
            check_id,
            Some(&a.artifact_type),
            Some(&a.uri),
            a.sha256.as_deref(),
            a.description.as_deref(),
            Some(submitted_by),
            Some(ctx.ingest_id),
        ],
    )?;
    Ok(first_text(t)?.unwrap_or_default())
}

/// What happened in an environment, for its log (`ops.environment_events`).
struct EnvironmentLog<'a> {
    environment: &'a str,
    kind: &'a str,
    release_id: Option<&'a str>,
    deployment_id: Option<&'a str>,
    detail: Value,
}

fn log_environment(
    client: &mut SpiClient<'_>,
    ctx: &Apply<'_>,
    e: &EnvironmentLog<'_>,
) -> OpsResult<()> {
    let d = e.detail.to_string();
    write(
        client,
        "INSERT INTO ops.environment_events (environment, event_kind, release_id, deployment_id, detail, recorded_by, ingest_id) \
         VALUES ($1, $2, $3::uuid, $4::uuid, $5::jsonb, $6, $7::uuid)",
        &[
            Some(e.environment),
            Some(e.kind),
            e.release_id,
            e.deployment_id,
            Some(&d),
            Some(&ctx.caller.actor_id),
            Some(ctx.ingest_id),
        ],
    )?;
    Ok(())
}
