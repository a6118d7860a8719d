//! Data access of the release-gates module: the ingest log, and the domain handlers that turn a
//! checked envelope into rows of `ops.*`.
//!
//! Every handler starts by locking its release row (`FOR NO KEY UPDATE`), so events of one
//! release are applied one at a time, and ends by evaluating the release's gates once from
//! everything committed before it and written by it. Different releases never wait for each
//! other.

use pgrx::datum::DatumWithOid;
use pgrx::spi::{SpiClient, SpiTupleTable};
use pgrx::JsonB;
use serde_json::{json, Map, Value};

use super::envelope::{self, Artifact, Body, Envelope, EventType, Header};
use super::error::{OpsError, OpsResult};
use super::evaluation;
use super::gates::GateCode;
use super::roles;
use crate::core::prepared::{self, TEXT};

/// Longest an exception may run.
pub const MAX_EXCEPTION_DAYS: i64 = 90;

fn args<'a>(values: &'a [Option<&'a str>]) -> Vec<DatumWithOid<'a>> {
    values.iter().map(|v| (*v).into()).collect()
}

/// A write (or a locking read), all arguments text.
pub(super) fn write<'c>(
    client: &mut SpiClient<'c>,
    sql: &str,
    values: &[Option<&str>],
) -> OpsResult<SpiTupleTable<'c>> {
    let types = vec![TEXT; values.len()];
    Ok(prepared::run(client, sql, &types, &args(values))?)
}

/// A plain read, all arguments text.
pub(super) fn read<'c>(
    client: &SpiClient<'c>,
    sql: &str,
    values: &[Option<&str>],
) -> OpsResult<SpiTupleTable<'c>> {
    let types = vec![TEXT; values.len()];
    Ok(prepared::query(client, sql, &types, &args(values))?)
}

pub(super) fn first_text(t: SpiTupleTable<'_>) -> OpsResult<Option<String>> {
    Ok(prepared::first_text(t)?)
}

pub(super) fn first_json(t: SpiTupleTable<'_>) -> OpsResult<Option<Value>> {
    Ok(prepared::first_json(t)?)
}

// ---------------------------------------------------------------------------------------------
// The caller
// ---------------------------------------------------------------------------------------------

/// Who sends an envelope.
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor_id: String,
    pub trusted: bool,
    /// The ops personas the calling role is a member of.
    pub memberships: Vec<String>,
}

impl Caller {
    pub fn persona(&self) -> Option<&'static str> {
        roles::persona_of(&self.memberships)
    }
}

/// The ops personas the calling role (the outer user, even inside SECURITY DEFINER) belongs to.
pub fn memberships(client: &SpiClient<'_>, role: &str) -> OpsResult<Vec<String>> {
    let personas: Vec<String> = roles::PERSONAS.iter().map(|s| s.to_string()).collect();
    let t = prepared::query(
        client,
        "SELECT coalesce(array_agg(r.rolname::text), '{}') FROM pg_catalog.pg_roles r \
          WHERE r.rolname = ANY($1) AND pg_catalog.pg_has_role($2::name, r.oid, 'MEMBER')",
        &[prepared::TEXT_ARRAY, TEXT],
        &[personas.into(), role.into()],
    )?;
    Ok(t.first().get_one::<Vec<String>>()?.unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// The ingest log
// ---------------------------------------------------------------------------------------------

/// What the log row says about the envelope itself.
pub struct Received<'a> {
    pub header: &'a Header,
    /// The envelope, unless it was over the size limit.
    pub envelope: Option<&'a Value>,
    pub envelope_bytes: usize,
    pub occurred_at: Option<&'a str>,
    pub received_by: &'a str,
}

/// The final outcome of one envelope.
pub struct Outcome<'a> {
    pub status: &'a str,
    pub http_status: u16,
    pub error: Option<&'a str>,
    pub error_message: Option<&'a str>,
    pub result: &'a Value,
    pub original_ingest_id: Option<&'a str>,
}

const LOG_COLUMNS: &str = "idempotency_key, event_type, received_event_type, schema_version, source_system, \
    release_id, processing_status, http_status, error, error_message, result, original_ingest_id, envelope, \
    envelope_bytes, occurred_at, received_by";

fn log_args<'a>(
    r: &'a Received<'a>,
    envelope_text: &'a Option<String>,
    bytes: &'a str,
) -> [Option<&'a str>; 10] {
    let h = r.header;
    let release = h
        .release_id
        .as_deref()
        .filter(|id| envelope::check_uuid("release_id", id).is_ok());
    let known_type = h
        .event_type
        .as_deref()
        .filter(|t| EventType::parse(t).is_some());
    [
        h.idempotency_key.as_deref(),
        known_type,
        h.event_type.as_deref(),
        h.schema_version.as_deref(),
        h.source_system.as_deref(),
        release,
        envelope_text.as_deref(),
        Some(bytes),
        r.occurred_at,
        Some(r.received_by),
    ]
}

/// Write a finished log row (rejections, duplicates) and return its ingest_id. When `result`
/// has an `ingest_id` key it is set to the new row's id. PostgREST answers with the outcome's
/// HTTP status (`response.status`, set by the same statement).
pub fn log(client: &mut SpiClient<'_>, r: &Received<'_>, o: &Outcome<'_>) -> OpsResult<String> {
    let envelope_text = r.envelope.map(Value::to_string);
    let bytes = r.envelope_bytes.to_string();
    let a = log_args(r, &envelope_text, &bytes);
    let http = o.http_status.to_string();
    let result = (!o.result.is_null()).then(|| o.result.to_string());
    let t = write(
        client,
        &format!(
            "WITH id AS (SELECT gen_random_uuid() AS v) \
             INSERT INTO ops.event_ingest_log (ingest_id, {LOG_COLUMNS}) \
             SELECT id.v, $1, $2::ops.ops_event_type, $3, $4, $5, $6::uuid, $11, $12::int, $13, $14, \
                    CASE WHEN $15::jsonb ? 'ingest_id' THEN jsonb_set($15::jsonb, '{{ingest_id}}', to_jsonb(id.v::text)) \
                         ELSE $15::jsonb END, \
                    $16::uuid, $7::jsonb, $8::int, $9::timestamptz, $10 FROM id \
             RETURNING ingest_id::text, pg_catalog.set_config('response.status', $12, true)"
        ),
        &[
            a[0],
            a[1],
            a[2],
            a[3],
            a[4],
            a[5],
            a[6],
            a[7],
            a[8],
            a[9],
            Some(o.status),
            Some(&http),
            o.error,
            o.error_message,
            result.as_deref(),
            o.original_ingest_id,
        ],
    )?;
    first_text(t)?.ok_or_else(|| {
        OpsError::Core(crate::core::error::CoreError::Internal(
            "the ingest log row was not written".into(),
        ))
    })
}

/// The accepted row of a key, if one is committed (or written by this transaction).
pub fn accepted(client: &SpiClient<'_>, key: &str) -> OpsResult<Option<(String, Value)>> {
    let t = read(
        client,
        "SELECT ingest_id::text, result FROM ops.event_ingest_log \
          WHERE idempotency_key = $1 AND processing_status = 'accepted'",
        &[Some(key)],
    )?;
    if t.is_empty() {
        return Ok(None);
    }
    let (id, result) = t.first().get_two::<String, JsonB>()?;
    Ok(id.map(|id| (id, result.map_or(Value::Null, |j| j.0))))
}

/// Take the key: insert the accepted row, or return None when another accepted row holds it
/// (waiting for a concurrent sender to commit or roll back first).
pub fn claim_key(client: &mut SpiClient<'_>, r: &Received<'_>) -> OpsResult<Option<String>> {
    let envelope_text = r.envelope.map(Value::to_string);
    let bytes = r.envelope_bytes.to_string();
    let a = log_args(r, &envelope_text, &bytes);
    let t = write(
        client,
        &format!(
            "INSERT INTO ops.event_ingest_log ({LOG_COLUMNS}) \
             VALUES ($1, $2::ops.ops_event_type, $3, $4, $5, $6::uuid, 'accepted', 200, NULL, NULL, NULL, NULL, \
                     $7::jsonb, $8::int, $9::timestamptz, $10) \
             ON CONFLICT (idempotency_key) WHERE processing_status = 'accepted' DO NOTHING \
             RETURNING ingest_id::text"
        ),
        &a,
    )?;
    first_text(t)
}

/// Record the outcome on the row that claimed the key, and make PostgREST answer with its HTTP
/// status (`response.status`, set by the same statement). A rejection or error releases the
/// key.
pub fn finish(client: &mut SpiClient<'_>, ingest_id: &str, o: &Outcome<'_>) -> OpsResult<()> {
    let http = o.http_status.to_string();
    let result = o.result.to_string();
    write(
        client,
        "UPDATE ops.event_ingest_log SET processing_status = $2, http_status = $3::int, error = $4, \
                error_message = $5, result = $6::jsonb \
          WHERE ingest_id = $1::uuid \
         RETURNING pg_catalog.set_config('response.status', $3, true)",
        &[
            Some(ingest_id),
            Some(o.status),
            Some(&http),
            o.error,
            o.error_message,
            Some(&result),
        ],
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

/// Lock the release row, so events of one release are applied (and its gates evaluated) one
/// at a time; its status, or None when it does not exist.
pub(super) fn lock_release_row(
    client: &mut SpiClient<'_>,
    release_id: &str,
) -> OpsResult<Option<String>> {
    let t = write(
        client,
        "SELECT status FROM ops.releases WHERE release_id = $1::uuid FOR NO KEY UPDATE",
        &[Some(release_id)],
    )?;
    first_text(t)
}

/// Lock the release row; 409 when it does not exist.
fn lock_release(client: &mut SpiClient<'_>, release_id: &str) -> OpsResult<String> {
    lock_release_row(client, release_id)?
        .ok_or_else(|| OpsError::UnknownRelease(release_id.to_owned()))
}

fn gate_id(client: &SpiClient<'_>, release_id: &str, gate: GateCode) -> OpsResult<String> {
    let t = read(
        client,
        "SELECT gate_id::text FROM ops.release_gates WHERE release_id = $1::uuid AND gate_code = $2",
        &[Some(release_id), Some(gate.as_str())],
    )?;
    first_text(t)?.ok_or_else(|| OpsError::UnknownReference {
        kind: "gate".into(),
        id: format!("{gate} of release {release_id}"),
    })
}

/// The context a handler runs in.
pub struct Apply<'a> {
    pub ingest_id: &'a str,
    pub caller: &'a Caller,
}

/// The identity a trusted caller may name instead of itself (approver, creator).
fn named_identity(caller: &Caller, field: &str, named: &Option<String>) -> OpsResult<String> {
    match named {
        Some(n) if *n != caller.actor_id && !caller.trusted => Err(OpsError::Forbidden {
            actor: caller.actor_id.clone(),
            action: format!("set {field} to someone else ({n:?})"),
            allowed: format!(
                "omit {field} to act as yourself; only trusted sessions may name another identity"
            ),
        }),
        Some(n) => Ok(n.clone()),
        None => Ok(caller.actor_id.clone()),
    }
}

#[allow(clippy::too_many_arguments)]
fn insert_artifact(
    client: &mut SpiClient<'_>,
    ctx: &Apply<'_>,
    release_id: Option<&str>,
    gate_id: Option<&str>,
    check_id: Option<&str>,
    a: &Artifact,
) -> OpsResult<String> {
    let t = write(
        client,
        "INSERT INTO ops.evidence_artifacts (release_id, gate_id, check_id, artifact_type, uri, sha256, description, \
                                             submitted_by, ingest_id) \
         VALUES ($1::uuid, $2::uuid, $3::uuid, $4, $5, $6, $7, $8, $9::uuid) RETURNING artifact_id::text",
        &[
            release_id,
            gate_id,
            check_id,
            Some(&a.artifact_type),
            Some(&a.uri),
            a.sha256.as_deref(),
            a.description.as_deref(),
            Some(&ctx.caller.actor_id),
            Some(ctx.ingest_id),
        ],
    )?;
    Ok(first_text(t)?.unwrap_or_default())
}

fn environment_event(
    client: &mut SpiClient<'_>,
    ctx: &Apply<'_>,
    environment: &str,
    kind: &str,
    release_id: Option<&str>,
    deployment_id: Option<&str>,
    detail: &Value,
) -> OpsResult<()> {
    let d = detail.to_string();
    write(
        client,
        "INSERT INTO ops.environment_events (environment, event_kind, release_id, deployment_id, detail, recorded_by, ingest_id) \
         VALUES ($1, $2, $3::uuid, $4::uuid, $5::jsonb, $6, $7::uuid)",
        &[
            Some(environment),
            Some(kind),
            release_id,
            deployment_id,
            Some(&d),
            Some(&ctx.caller.actor_id),
            Some(ctx.ingest_id),
        ],
    )?;
    Ok(())
}

/// A deployment of this release, locked: (environment, status).
fn lock_deployment(
    client: &mut SpiClient<'_>,
    release_id: &str,
    deployment_id: &str,
) -> OpsResult<(String, String)> {
    let t = write(
        client,
        "SELECT environment, status FROM ops.deployments \
          WHERE deployment_id = $1::uuid AND release_id = $2::uuid FOR UPDATE",
        &[Some(deployment_id), Some(release_id)],
    )?;
    if t.is_empty() {
        return Err(OpsError::UnknownReference {
            kind: "deployment".into(),
            id: format!("{deployment_id} of release {release_id}"),
        });
    }
    let (env, status) = t.first().get_two::<String, String>()?;
    Ok((env.unwrap_or_default(), status.unwrap_or_default()))
}

/// Apply a checked envelope; returns the `detail` of the accepted outcome.
pub fn apply(client: &mut SpiClient<'_>, ctx: &Apply<'_>, env: &Envelope) -> OpsResult<Value> {
    let mut detail = Map::new();
    let release = env.release_id.as_deref();
    if release.is_none() && !env.evidence.is_empty() {
        return Err(OpsError::invalid(
            "evidence",
            "artifacts need a release to attach to",
            "send release_id with evidence",
        ));
    }
    if let Some(r) = release {
        detail.insert("release_id".into(), json!(r));
        if !matches!(env.body, Body::ReleaseCreated(_)) {
            lock_release(client, r)?;
        }
    }
    // The gate (and check) the envelope's extra evidence is attached to.
    let mut attach_gate: Option<GateCode> = None;
    let mut attach_check: Option<String> = None;

    match &env.body {
        Body::ReleaseCreated(b) => {
            let r = release.unwrap_or_default();
            let created_by = named_identity(ctx.caller, "created_by", &b.created_by)?;
            let t = write(
                client,
                "INSERT INTO ops.releases (release_id, version, title, repository, commit_sha, created_by, source_system, ingest_id) \
                 VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8::uuid) ON CONFLICT (release_id) DO NOTHING RETURNING release_id",
                &[
                    Some(r),
                    Some(&b.version),
                    b.title.as_deref(),
                    b.repository.as_deref(),
                    b.commit_sha.as_deref(),
                    Some(&created_by),
                    Some(&env.source_system),
                    Some(ctx.ingest_id),
                ],
            )?;
            if t.is_empty() {
                return Err(OpsError::Conflict(format!(
                    "release {r} already exists; release_created is sent once per release"
                )));
            }
            write(
                client,
                "INSERT INTO ops.release_gates (release_id, gate_code) \
                 SELECT $1::uuid, g FROM unnest(ARRAY['G1', 'G2', 'G3', 'G4']) AS g",
                &[Some(r)],
            )?;
            detail.insert("version".into(), json!(b.version));
        }
        Body::GateConfigured {
            gate,
            required_checks,
        } => {
            let r = release.unwrap_or_default();
            let mut names = required_checks.clone();
            names.sort();
            names.dedup();
            let t = prepared::run(
                client,
                "UPDATE ops.release_gates SET required_checks = $3 \
                  WHERE release_id = $1::uuid AND gate_code = $2 RETURNING gate_id",
                &[TEXT, TEXT, prepared::TEXT_ARRAY],
                &[r.into(), gate.as_str().into(), names.clone().into()],
            )?;
            if t.is_empty() {
                return Err(OpsError::UnknownReference {
                    kind: "gate".into(),
                    id: format!("{gate} of release {r}"),
                });
            }
            detail.insert("gate_code".into(), json!(gate.as_str()));
            detail.insert("required_checks".into(), json!(names));
        }
        Body::Check {
            gate,
            check_name,
            status,
            required,
            run_id,
            details_url,
        } => {
            let r = release.unwrap_or_default();
            let req = required.to_string();
            let t = write(
                client,
                "INSERT INTO ops.gate_checks (gate_id, release_id, check_name, status, required, run_id, details_url, \
                                              reported_by, source_system, ingest_id) \
                 SELECT g.gate_id, g.release_id, $3, $4, $5::boolean, $6, $7, $8, $9, $10::uuid \
                   FROM ops.release_gates g WHERE g.release_id = $2::uuid AND g.gate_code = $1 \
                 RETURNING check_id::text",
                &[
                    Some(gate.as_str()),
                    Some(r),
                    Some(check_name),
                    Some(status),
                    Some(&req),
                    run_id.as_deref(),
                    details_url.as_deref(),
                    Some(&ctx.caller.actor_id),
                    Some(&env.source_system),
                    Some(ctx.ingest_id),
                ],
            )?;
            if t.is_empty() {
                return Err(OpsError::UnknownReference {
                    kind: "gate".into(),
                    id: format!("{gate} of release {r}"),
                });
            }
            let check_id = first_text(t)?.unwrap_or_default();
            detail.insert("gate_code".into(), json!(gate.as_str()));
            detail.insert("check_id".into(), json!(check_id));
            attach_gate = Some(*gate);
            attach_check = Some(check_id);
        }
        Body::Approval {
            gate,
            approved,
            approver_id,
            persona_role,
            comment,
            report_url,
        } => {
            let r = release.unwrap_or_default();
            let rule = gate.rule();
            if rule.approver_roles.is_empty() {
                return Err(OpsError::invalid(
                    "gate_code",
                    format!("{gate} takes no approvals"),
                    "G2 (QA signoff) or G3 (release approval)",
                ));
            }
            let approver = named_identity(ctx.caller, "approver_id", approver_id)?;
            let persona: String = if ctx.caller.trusted {
                persona_role
                    .clone()
                    .unwrap_or_else(|| rule.approver_roles[0].to_owned())
            } else {
                let mine = ctx
                    .caller
                    .memberships
                    .iter()
                    .find(|m| rule.approver_roles.contains(&m.as_str()));
                match (mine, persona_role) {
                    (Some(m), None) => m.clone(),
                    (Some(_), Some(p)) if ctx.caller.memberships.contains(p) => p.clone(),
                    _ => {
                        return Err(OpsError::Forbidden {
                            actor: ctx.caller.actor_id.clone(),
                            action: format!("approve {gate}"),
                            allowed: format!("members of {}", rule.approver_roles.join(", ")),
                        })
                    }
                }
            };
            if !rule.approver_roles.contains(&persona.as_str()) {
                return Err(OpsError::invalid(
                    "persona_role",
                    format!("{persona} does not approve {gate}"),
                    rule.approver_roles.join(", "),
                ));
            }
            let g = gate_id(client, r, *gate)?;
            let decision = if *approved { "approved" } else { "rejected" };
            let t = write(
                client,
                "INSERT INTO ops.approvals (release_id, gate_id, approver_id, persona_role, decision, comment, ingest_id) \
                 VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6, $7::uuid) RETURNING approval_id::text",
                &[
                    Some(r),
                    Some(&g),
                    Some(&approver),
                    Some(&persona),
                    Some(decision),
                    comment.as_deref(),
                    Some(ctx.ingest_id),
                ],
            )?;
            detail.insert("approval_id".into(), json!(first_text(t)?));
            detail.insert("gate_code".into(), json!(gate.as_str()));
            detail.insert("approver_id".into(), json!(approver));
            detail.insert("persona_role".into(), json!(persona));
            if env.event_type == EventType::GateSignoff {
                // The signoff itself is QA evidence: its report, or this ingest record.
                let uri = report_url
                    .clone()
                    .unwrap_or_else(|| format!("urn:flowgate:ops:ingest:{}", ctx.ingest_id));
                let a = Artifact {
                    artifact_type: "qa_signoff".into(),
                    uri,
                    sha256: None,
                    description: Some(format!("{gate} signoff by {approver}: {decision}")),
                };
                insert_artifact(client, ctx, Some(r), Some(&g), None, &a)?;
            }
            attach_gate = Some(*gate);
        }
        Body::Evidence {
            gate,
            check_id,
            artifact,
        } => {
            let r = release.unwrap_or_default();
            let g = gate.map(|g| gate_id(client, r, g)).transpose()?;
            if let Some(c) = check_id {
                let t = read(
                    client,
                    "SELECT 1 FROM ops.gate_checks WHERE check_id = $1::uuid AND release_id = $2::uuid",
                    &[Some(c), Some(r)],
                )?;
                if t.is_empty() {
                    return Err(OpsError::UnknownReference {
                        kind: "check".into(),
                        id: format!("{c} of release {r}"),
                    });
                }
            }
            let id = insert_artifact(
                client,
                ctx,
                Some(r),
                g.as_deref(),
                check_id.as_deref(),
                artifact,
            )?;
            detail.insert("artifact_id".into(), json!(id));
        }
        Body::ExceptionRequested {
            gate,
            reason,
            expires_at,
            exception_id,
        } => {
            let r = release.unwrap_or_default();
            let days = MAX_EXCEPTION_DAYS.to_string();
            let t = read(
                client,
                "SELECT $1::timestamptz > now() AND $1::timestamptz <= now() + make_interval(days => $2::int)",
                &[Some(expires_at), Some(&days)],
            )?;
            if t.first().get_one::<bool>()? != Some(true) {
                return Err(OpsError::invalid(
                    "expires_at",
                    format!("{expires_at} is not in the future within {MAX_EXCEPTION_DAYS} days"),
                    format!("a time after now and at most {MAX_EXCEPTION_DAYS} days ahead"),
                ));
            }
            let g = gate_id(client, r, *gate)?;
            let t = write(
                client,
                "INSERT INTO ops.exceptions (exception_id, release_id, gate_id, reason, requested_by, expires_at, ingest_id) \
                 VALUES (coalesce($1::uuid, gen_random_uuid()), $2::uuid, $3::uuid, $4, $5, $6::timestamptz, $7::uuid) \
                 ON CONFLICT (exception_id) DO NOTHING RETURNING exception_id::text",
                &[
                    exception_id.as_deref(),
                    Some(r),
                    Some(&g),
                    Some(reason),
                    Some(&ctx.caller.actor_id),
                    Some(expires_at),
                    Some(ctx.ingest_id),
                ],
            )?;
            let id = first_text(t)?.ok_or_else(|| {
                OpsError::Conflict(format!(
                    "exception {} already exists",
                    exception_id.as_deref().unwrap_or_default()
                ))
            })?;
            detail.insert("exception_id".into(), json!(id));
            detail.insert("gate_code".into(), json!(gate.as_str()));
            detail.insert("exception_status".into(), json!("requested"));
        }
        Body::ExceptionDecided(b) => {
            let r = release.unwrap_or_default();
            let t = write(
                client,
                "SELECT status, requested_by, expires_at <= now() FROM ops.exceptions \
                  WHERE exception_id = $1::uuid AND release_id = $2::uuid FOR UPDATE",
                &[Some(&b.exception_id), Some(r)],
            )?;
            if t.is_empty() {
                return Err(OpsError::UnknownReference {
                    kind: "exception".into(),
                    id: format!("{} of release {r}", b.exception_id),
                });
            }
            let (status, requested_by, expired) = t.first().get_three::<String, String, bool>()?;
            let status = status.unwrap_or_default();
            let allowed = matches!(
                (status.as_str(), b.decision.as_str()),
                ("requested", "approved" | "rejected") | ("approved", "revoked")
            );
            if !allowed {
                return Err(OpsError::Conflict(format!(
                    "exception {} is {status}; a requested exception may be approved or rejected, an approved one revoked",
                    b.exception_id
                )));
            }
            if b.decision == "approved" && expired == Some(true) {
                return Err(OpsError::Conflict(format!(
                    "exception {} has already expired; request a new one",
                    b.exception_id
                )));
            }
            if requested_by.as_deref() == Some(ctx.caller.actor_id.as_str()) {
                return Err(OpsError::Forbidden {
                    actor: ctx.caller.actor_id.clone(),
                    action: "decide an exception they requested".into(),
                    allowed: "another release manager decides (four eyes)".into(),
                });
            }
            write(
                client,
                "UPDATE ops.exceptions SET status = $2, decided_by = $3, decided_at = now(), decision_comment = $4 \
                  WHERE exception_id = $1::uuid",
                &[
                    Some(&b.exception_id),
                    Some(&b.decision),
                    Some(&ctx.caller.actor_id),
                    b.comment.as_deref(),
                ],
            )?;
            detail.insert("exception_id".into(), json!(b.exception_id));
            detail.insert("exception_status".into(), json!(b.decision));
        }
        Body::DeploymentStarted(b) => {
            let r = release.unwrap_or_default();
            let (ok, blocking) = evaluation::promotion(client, r, &b.environment)?;
            if !ok {
                return Err(OpsError::Conflict(format!(
                    "release {r} is not eligible for {}: {}",
                    b.environment,
                    blocking.join("; ")
                )));
            }
            let t = write(
                client,
                "INSERT INTO ops.deployments (deployment_id, release_id, environment, external_ref, deployed_by, ingest_id) \
                 VALUES (coalesce($1::uuid, gen_random_uuid()), $2::uuid, $3, $4, $5, $6::uuid) \
                 ON CONFLICT (deployment_id) DO NOTHING RETURNING deployment_id::text",
                &[
                    b.deployment_id.as_deref(),
                    Some(r),
                    Some(&b.environment),
                    b.external_ref.as_deref(),
                    Some(&ctx.caller.actor_id),
                    Some(ctx.ingest_id),
                ],
            )?;
            let id = first_text(t)?.ok_or_else(|| {
                OpsError::Conflict(format!(
                    "deployment {} already exists",
                    b.deployment_id.as_deref().unwrap_or_default()
                ))
            })?;
            environment_event(
                client,
                ctx,
                &b.environment,
                "deployment_started",
                Some(r),
                Some(&id),
                &json!({}),
            )?;
            detail.insert("deployment_id".into(), json!(id));
            detail.insert("environment".into(), json!(b.environment));
        }
        Body::DeploymentFinished(b) => {
            let r = release.unwrap_or_default();
            let (environment, status) = lock_deployment(client, r, &b.deployment_id)?;
            if status != "started" {
                return Err(OpsError::Conflict(format!(
                    "deployment {} is already {status}",
                    b.deployment_id
                )));
            }
            write(
                client,
                "UPDATE ops.deployments SET status = $2, finished_at = clock_timestamp() WHERE deployment_id = $1::uuid",
                &[Some(&b.deployment_id), Some(&b.status)],
            )?;
            if b.status == "succeeded" {
                write(
                    client,
                    "UPDATE ops.releases SET updated_at = now(), status = CASE \
                         WHEN $2 = 'production' THEN 'in_production' \
                         WHEN $2 = 'staging' AND status = 'open' THEN 'in_staging' ELSE status END \
                      WHERE release_id = $1::uuid",
                    &[Some(r), Some(&environment)],
                )?;
            }
            environment_event(
                client,
                ctx,
                &environment,
                &format!("deployment_{}", b.status),
                Some(r),
                Some(&b.deployment_id),
                &json!({}),
            )?;
            detail.insert("deployment_id".into(), json!(b.deployment_id));
            detail.insert("deployment_status".into(), json!(b.status));
        }
        Body::HealthCheck(b) => {
            let r = release.unwrap_or_default();
            let (environment, status) = lock_deployment(client, r, &b.deployment_id)?;
            if status != "succeeded" {
                return Err(OpsError::Conflict(format!(
                    "deployment {} is {status}; health checks follow a succeeded deployment",
                    b.deployment_id
                )));
            }
            let g4 = if b.status == "pass" {
                "passed"
            } else {
                "failed"
            };
            write(
                client,
                "UPDATE ops.deployments SET g4_status = $2 WHERE deployment_id = $1::uuid",
                &[Some(&b.deployment_id), Some(g4)],
            )?;
            let g = gate_id(client, r, GateCode::G4)?;
            let a = Artifact {
                artifact_type: "health_check".into(),
                uri: b.uri.clone(),
                sha256: None,
                description: Some(format!("{environment} health check: {}", b.status)),
            };
            insert_artifact(client, ctx, Some(r), Some(&g), None, &a)?;
            let d = b.details.clone().map_or(json!({}), Value::Object);
            environment_event(
                client,
                ctx,
                &environment,
                "health_check",
                Some(r),
                Some(&b.deployment_id),
                &d,
            )?;
            detail.insert("deployment_id".into(), json!(b.deployment_id));
            detail.insert("g4_status".into(), json!(g4));
            attach_gate = Some(GateCode::G4);
        }
        Body::Rollback(b) => {
            let r = release.unwrap_or_default();
            let (environment, status) = lock_deployment(client, r, &b.deployment_id)?;
            if status == "rolled_back" || status == "started" {
                return Err(OpsError::Conflict(format!(
                    "deployment {} is {status}; only a finished deployment is rolled back",
                    b.deployment_id
                )));
            }
            write(
                client,
                "UPDATE ops.deployments SET status = 'rolled_back', rolled_back_at = clock_timestamp(), rollback_reason = $2 \
                  WHERE deployment_id = $1::uuid",
                &[Some(&b.deployment_id), Some(&b.reason)],
            )?;
            write(
                client,
                "UPDATE ops.releases SET status = 'rolled_back', updated_at = now() WHERE release_id = $1::uuid",
                &[Some(r)],
            )?;
            environment_event(
                client,
                ctx,
                &environment,
                "rollback",
                Some(r),
                Some(&b.deployment_id),
                &json!({"reason": b.reason}),
            )?;
            detail.insert("deployment_id".into(), json!(b.deployment_id));
            detail.insert("deployment_status".into(), json!("rolled_back"));
        }
        Body::EnvironmentEvent(b) => {
            check_deployment_ref(client, b.deployment_id.as_deref())?;
            let d = b.detail.clone().map_or(json!({}), Value::Object);
            environment_event(
                client,
                ctx,
                &b.environment,
                &b.event_kind,
                release,
                b.deployment_id.as_deref(),
                &d,
            )?;
            detail.insert("environment".into(), json!(b.environment));
        }
        Body::IncidentOpened(b) => {
            check_deployment_ref(client, b.deployment_id.as_deref())?;
            let t = write(
                client,
                "INSERT INTO ops.incidents (incident_id, environment, release_id, deployment_id, severity, summary, opened_by, ingest_id) \
                 VALUES (coalesce($1::uuid, gen_random_uuid()), $2, $3::uuid, $4::uuid, $5, $6, $7, $8::uuid) \
                 ON CONFLICT (incident_id) DO NOTHING RETURNING incident_id::text",
                &[
                    b.incident_id.as_deref(),
                    Some(&b.environment),
                    release,
                    b.deployment_id.as_deref(),
                    Some(&b.severity),
                    Some(&b.summary),
                    Some(&ctx.caller.actor_id),
                    Some(ctx.ingest_id),
                ],
            )?;
            let id = first_text(t)?.ok_or_else(|| {
                OpsError::Conflict(format!(
                    "incident {} already exists",
                    b.incident_id.as_deref().unwrap_or_default()
                ))
            })?;
            environment_event(
                client,
                ctx,
                &b.environment,
                "incident_opened",
                release,
                b.deployment_id.as_deref(),
                &json!({"incident_id": id, "severity": b.severity}),
            )?;
            detail.insert("incident_id".into(), json!(id));
        }
        Body::IncidentResolved(b) => {
            let t = write(
                client,
                "UPDATE ops.incidents SET status = 'resolved', resolved_at = now(), resolution = $2 \
                  WHERE incident_id = $1::uuid AND status = 'open' RETURNING environment, release_id::text",
                &[Some(&b.incident_id), b.resolution.as_deref()],
            )?;
            if t.is_empty() {
                let exists = read(
                    client,
                    "SELECT 1 FROM ops.incidents WHERE incident_id = $1::uuid",
                    &[Some(&b.incident_id)],
                )?;
                return Err(if exists.is_empty() {
                    OpsError::UnknownReference {
                        kind: "incident".into(),
                        id: b.incident_id.clone(),
                    }
                } else {
                    OpsError::Conflict(format!("incident {} is already resolved", b.incident_id))
                });
            }
            let (environment, incident_release) = t.first().get_two::<String, String>()?;
            environment_event(
                client,
                ctx,
                &environment.unwrap_or_default(),
                "incident_resolved",
                incident_release.as_deref(),
                None,
                &json!({"incident_id": b.incident_id}),
            )?;
            detail.insert("incident_id".into(), json!(b.incident_id));
        }
        Body::RecoveryDrill(b) => {
            let rto = b.rto_seconds.map(|v| v.to_string());
            let rpo = b.rpo_seconds.map(|v| v.to_string());
            let t = write(
                client,
                "INSERT INTO ops.recovery_drills (environment, release_id, drill_type, outcome, rto_seconds, rpo_seconds, \
                                                  evidence_uri, performed_by, ingest_id) \
                 VALUES ($1, $2::uuid, $3, $4, $5::int, $6::int, $7, $8, $9::uuid) RETURNING drill_id::text",
                &[
                    Some(&b.environment),
                    release,
                    Some(&b.drill_type),
                    Some(&b.outcome),
                    rto.as_deref(),
                    rpo.as_deref(),
                    b.uri.as_deref(),
                    Some(&ctx.caller.actor_id),
                    Some(ctx.ingest_id),
                ],
            )?;
            let id = first_text(t)?.unwrap_or_default();
            environment_event(
                client,
                ctx,
                &b.environment,
                "recovery_drill",
                release,
                None,
                &json!({"drill_id": id, "drill_type": b.drill_type, "outcome": b.outcome}),
            )?;
            detail.insert("drill_id".into(), json!(id));
        }
    }

    if let Some(r) = release {
        if !env.evidence.is_empty() {
            let g = attach_gate.map(|g| gate_id(client, r, g)).transpose()?;
            let mut ids = Vec::new();
            for a in &env.evidence {
                ids.push(insert_artifact(
                    client,
                    ctx,
                    Some(r),
                    g.as_deref(),
                    attach_check.as_deref(),
                    a,
                )?);
            }
            detail.insert("artifact_ids".into(), json!(ids));
        }
        // The triggers on fact rows skipped this release (evaluation::Applying): evaluate it
        // once, now that every fact of the envelope is written.
        let statuses: Map<String, Value> = evaluation::refresh_locked(client, r)?
            .into_iter()
            .map(|e| (e.code.as_str().to_owned(), json!(e.status.as_str())))
            .collect();
        detail.insert("gates".into(), Value::Object(statuses));
    }
    Ok(Value::Object(detail))
}

fn check_deployment_ref(client: &SpiClient<'_>, deployment_id: Option<&str>) -> OpsResult<()> {
    if let Some(d) = deployment_id {
        let t = read(
            client,
            "SELECT 1 FROM ops.deployments WHERE deployment_id = $1::uuid",
            &[Some(d)],
        )?;
        if t.is_empty() {
            return Err(OpsError::UnknownReference {
                kind: "deployment".into(),
                id: d.to_owned(),
            });
        }
    }
    Ok(())
}
