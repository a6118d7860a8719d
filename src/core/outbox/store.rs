//! Outbox data access: enqueue, secret resolution, loading claimed rows for a transport,
//! recording an attempt's outcome and running the owner's handler.

use std::time::{Duration, SystemTime};

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::{Map, Value};

use super::delivery::{self, NewDelivery};
use super::handlers::{self, HandlerCall, Outcome};
use super::native;
use super::policy::{self, Attempt, RetryPolicy, Verdict};
use crate::core::error::{CoreError, CoreResult};
use crate::core::prepared;
use crate::core::store as settings;
use crate::core::{secrets, subxact};

/// The row id of an enqueued delivery, and whether this call created it (false when the
/// idempotency key was already enqueued by the same owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: i64,
    pub created: bool,
}

/// Enqueue a delivery in the caller's transaction. Enqueueing the same idempotency key again
/// is a no-op that returns the first row; reusing a key for another owner is 23505.
pub fn enqueue(client: &mut SpiClient<'_>, d: &NewDelivery) -> CoreResult<Enqueued> {
    if let Some(id) = insert(client, d, false)? {
        return Ok(Enqueued { id, created: true });
    }
    let existing = prepared::read(
        client,
        "SELECT id, owner_module, owner_id FROM flowgate.deliveries WHERE idempotency_key = $1",
        &[d.idempotency_key.as_str().into()],
    )?;
    if existing.is_empty() {
        // Conflicting row deleted concurrently; cannot happen through flowgate's own API.
        return Err(CoreError::Internal(
            "idempotency key conflict without a row".into(),
        ));
    }
    let (id, module, owner) = existing.first().get_three::<i64, String, String>()?;
    let id = id.ok_or_else(|| CoreError::Internal("delivery without id".into()))?;
    if module.as_deref() != Some(d.owner_module.as_str())
        || owner.as_deref() != Some(d.owner_id.as_str())
    {
        return Err(CoreError::Duplicate {
            kind: "delivery idempotency key".into(),
            key: d.idempotency_key.clone(),
        });
    }
    Ok(Enqueued { id, created: false })
}

/// Check a delivery before it is stored (its fields, its handler) and fill in the default
/// attempt and timeout limits: `(max_attempts, timeout_ms)`.
fn checked_limits(d: &NewDelivery) -> CoreResult<(i32, i32)> {
    delivery::validate(d)?;
    if let Some(h) = &d.handler {
        if handlers::find(h).is_none() {
            return Err(CoreError::invalid(
                "handler",
                format!("{h:?} is not a registered response handler"),
                handlers::names().join(", "),
            ));
        }
    }
    let max_attempts = match d.max_attempts {
        Some(m) => m,
        None => settings::get_i64("flowgate.http_max_attempts")? as i32,
    };
    let timeout_ms = match d.timeout_ms {
        Some(t) => t,
        None => settings::get_i64("flowgate.http_timeout_ms")? as i32,
    };
    Ok((max_attempts, timeout_ms))
}

/// [`rearm`] for many deliveries (a drain's batch): the keys never enqueued before are inserted
/// in one statement, the others rearmed one by one. Answers in the order given.
pub fn rearm_many(client: &mut SpiClient<'_>, ds: &[NewDelivery]) -> CoreResult<Vec<Rearmed>> {
    if ds.len() < 2 {
        return ds.iter().map(|d| rearm(client, d)).collect();
    }
    let mut rows = Vec::with_capacity(ds.len());
    for d in ds {
        let (max_attempts, timeout_ms) = checked_limits(d)?;
        rows.push(serde_json::json!({
            "owner_module": d.owner_module, "owner_id": d.owner_id, "handler": d.handler,
            "method": d.method, "url": d.url, "headers": d.headers, "auth_secret": d.auth_secret,
            "auth_header": d.auth_header, "auth_scheme": d.auth_scheme, "body": d.body,
            "idempotency_key": d.idempotency_key, "max_attempts": max_attempts,
            "timeout_ms": timeout_ms, "parked": d.parked, "wire_key": d.wire_key,
            "sensitive": d.sensitive, "flow_key": d.effective_flow_key(),
        }));
    }
    // Only keys with no row at all (visible or not yet committed), as in `insert(.., true)`:
    // never waiting for a row another transaction is recording.
    let inserted = prepared::exec(client, "INSERT INTO flowgate.deliveries (owner_module, owner_id, handler, method, url, headers, auth_secret, \
         auth_header, auth_scheme, body, idempotency_key, max_attempts, timeout_ms, next_attempt_at, wire_key, sensitive, flow_key) \
         SELECT r.owner_module, r.owner_id, r.handler, r.method, r.url, r.headers, r.auth_secret, r.auth_header, r.auth_scheme, \
                r.body, r.idempotency_key, r.max_attempts, r.timeout_ms, \
                CASE WHEN r.parked THEN 'infinity'::timestamptz ELSE now() END, r.wire_key, r.sensitive, r.flow_key \
           FROM jsonb_to_recordset($1) AS r (owner_module text, owner_id text, handler text, method text, url text, \
                headers jsonb, auth_secret text, auth_header text, auth_scheme text, body jsonb, idempotency_key text, \
                max_attempts int, timeout_ms int, parked bool, wire_key text, sensitive bool, flow_key text) \
          WHERE NOT EXISTS (SELECT FROM flowgate.deliveries x WHERE x.idempotency_key = r.idempotency_key) \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, idempotency_key",
        &[JsonB(Value::Array(rows)).into()],
    )?;
    let mut created = std::collections::HashMap::with_capacity(inserted.len());
    for row in inserted {
        if let (Some(id), Some(key)) = (row.get::<i64>(1)?, row.get::<String>(2)?) {
            created.insert(key, id);
        }
    }
    let mut out = Vec::with_capacity(ds.len());
    for d in ds {
        out.push(match created.remove(&d.idempotency_key) {
            Some(id) => Rearmed::Created(id),
            None => rearm(client, d)?,
        });
    }
    Ok(out)
}

/// Insert a validated delivery unless its idempotency key is taken; its id when inserted.
/// `if_absent`: only when no row with the key is visible at all, so the call never waits for
/// a row another transaction is recording (which the caller may be blocking).
fn insert(client: &mut SpiClient<'_>, d: &NewDelivery, if_absent: bool) -> CoreResult<Option<i64>> {
    let (max_attempts, timeout_ms) = checked_limits(d)?;
    let inserted = prepared::exec(client, "INSERT INTO flowgate.deliveries (owner_module, owner_id, handler, method, url, headers, auth_secret, \
         auth_header, auth_scheme, body, idempotency_key, max_attempts, timeout_ms, next_attempt_at, wire_key, sensitive, flow_key) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
                CASE WHEN $14 THEN 'infinity'::timestamptz ELSE now() END, $15, $16, $17 \
          WHERE NOT $18 OR NOT EXISTS (SELECT FROM flowgate.deliveries WHERE idempotency_key = $11) \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id", &[
            d.owner_module.as_str().into(),
            d.owner_id.as_str().into(),
            d.handler.as_deref().into(),
            d.method.as_str().into(),
            d.url.as_str().into(),
            JsonB(Value::Object(d.headers.clone())).into(),
            d.auth_secret.as_deref().into(),
            d.auth_header.as_str().into(),
            d.auth_scheme.as_str().into(),
            d.body.clone().map(JsonB).into(),
            d.idempotency_key.as_str().into(),
            max_attempts.into(),
            timeout_ms.into(),
            d.parked.into(),
            d.wire_key.as_deref().into(),
            d.sensitive.into(),
            d.effective_flow_key().into(),
            if_absent.into(),
        ],
    )?;
    if inserted.is_empty() {
        return Ok(None);
    }
    Ok(inserted.first().get_one::<i64>()?)
}

/// What [`rearm`] did with a delivery whose owner paces its retries itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rearmed {
    /// Enqueued for the first time.
    Created(i64),
    /// A finished attempt (failed, dead, or parked waiting for its owner) is due again, for
    /// one more attempt, with the new body and owner id.
    Again(i64),
    /// Still pending and due, or in flight: this call changes nothing.
    Busy(i64),
    /// Already delivered.
    Delivered(i64),
}

/// Enqueue a delivery that is one logical request retried at its owner's pace (intake's
/// intents, read again after their visibility timeout): the same key is one row, not one per
/// try. A first call enqueues it; a later one gives a finished attempt one more, with what
/// this call says now (body, owner id, URL, headers, secret, timeout and flow key may change
/// from try to try, e.g. an operator fixing a webhook URL; the Idempotency-Key stays).
pub fn rearm(client: &mut SpiClient<'_>, d: &NewDelivery) -> CoreResult<Rearmed> {
    // The common case, a key never enqueued, in one statement.
    if let Some(id) = insert(client, d, true)? {
        return Ok(Rearmed::Created(id));
    }
    // Never wait for a row someone is recording (its handler may be waiting for a lock this
    // caller holds, e.g. the intent a drain has just read): a locked row is busy.
    let rows = prepared::exec(
        client,
        "SELECT id, status::text, next_attempt_at = 'infinity', owner_module FROM flowgate.deliveries \
          WHERE idempotency_key = $1 FOR UPDATE SKIP LOCKED",
        &[d.idempotency_key.as_str().into()],
    )?;
    if rows.is_empty() {
        let exists = prepared::exec(
            client,
            "SELECT id FROM flowgate.deliveries WHERE idempotency_key = $1",
            &[d.idempotency_key.as_str().into()],
        )?;
        if !exists.is_empty() {
            return Ok(Rearmed::Busy(
                exists.first().get_one::<i64>()?.unwrap_or_default(),
            ));
        }
        let e = enqueue(client, d)?;
        return Ok(if e.created {
            Rearmed::Created(e.id)
        } else {
            Rearmed::Busy(e.id)
        });
    }
    let row = rows.first();
    let id: i64 = row.get(1)?.unwrap_or_default();
    let status: String = row.get(2)?.unwrap_or_default();
    let parked: bool = row.get(3)?.unwrap_or(false);
    let module: String = row.get(4)?.unwrap_or_default();
    if module != d.owner_module {
        return Err(CoreError::Duplicate {
            kind: "delivery idempotency key".into(),
            key: d.idempotency_key.clone(),
        });
    }
    match status.as_str() {
        "failed" | "dead" => {}
        "pending" if parked => {}
        "delivered" => return Ok(Rearmed::Delivered(id)),
        _ => return Ok(Rearmed::Busy(id)),
    }
    prepared::exec(
        client,
        "UPDATE flowgate.deliveries d \
            SET status = 'pending', next_attempt_at = clock_timestamp(), \
                max_attempts = least(d.attempts + 1, 100), owner_id = $2, body = $3, \
                url = $4, headers = $5, auth_secret = $6, timeout_ms = coalesce($7, d.timeout_ms), flow_key = $8, \
                claimed_at = NULL, transport_ref = NULL, updated_at = clock_timestamp() \
          WHERE d.id = $1",
        &[
            id.into(),
            d.owner_id.as_str().into(),
            d.body.clone().map(JsonB).into(),
            d.url.as_str().into(),
            JsonB(Value::Object(d.headers.clone())).into(),
            d.auth_secret.as_deref().into(),
            d.timeout_ms.into(),
            d.effective_flow_key().into(),
        ],
    )?;
    Ok(Rearmed::Again(id))
}

/// Park a delivery whose owner will rearm it (its attempt failed in a way the owner retries
/// later): pending, never due by itself. Run by the owner's handler, in the recording
/// transaction.
pub fn park(client: &mut SpiClient<'_>, id: i64) -> CoreResult<()> {
    prepared::exec(client, "UPDATE flowgate.deliveries SET status = 'pending', next_attempt_at = 'infinity', updated_at = clock_timestamp() \
          WHERE id = $1 AND status IN ('failed', 'dead')", &[id.into()],
    )?;
    Ok(())
}

/// Resolve a secret by name: Supabase Vault first (when installed), then `flowgate.secrets`
/// (pgcrypto ciphertext, decrypted with `flowgate.tenant_key_passphrase`). The value never
/// leaves this process except in the outgoing request header. A secret that is stored but
/// cannot be decrypted is a [`CoreError::MissingDependency`] that names the secret, not its value.
pub fn resolve_secret(client: &SpiClient<'_>, name: &str) -> CoreResult<Option<String>> {
    if secrets::vault_installed(client)? {
        let rows = prepared::read(client, "SELECT decrypted_secret FROM vault.decrypted_secrets WHERE name = $1 ORDER BY created_at DESC LIMIT 1", &[name.into()],
        )?;
        if !rows.is_empty() {
            if let Some(s) = rows.first().get_one::<String>()? {
                return Ok(Some(s));
            }
        }
    }
    let stored = prepared::read(
        client,
        "SELECT 1 FROM flowgate.secrets WHERE name = $1",
        &[name.into()],
    )?;
    if stored.is_empty() {
        return Ok(None);
    }
    let unreadable = |dependency: &str, hint: &str| CoreError::MissingDependency {
        feature: format!("reading secret {name:?}"),
        dependency: dependency.into(),
        hint: hint.into(),
    };
    let schema = secrets::pgcrypto_schema(client)?.ok_or_else(|| {
        unreadable(
            "pgcrypto",
            "the secret was stored with pgcrypto: CREATE EXTENSION pgcrypto",
        )
    })?;
    let pass = secrets::passphrase(&format!("reading secret {name:?}"))?;
    let sql = format!(
        "SELECT {schema}.pgp_sym_decrypt(value_encrypted, $2) FROM flowgate.secrets WHERE name = $1"
    );
    // A wrong passphrase makes pgcrypto raise; keep that from aborting the caller's batch.
    match subxact::run(|| {
        Spi::connect(|c| {
            crate::core::prepared::first_text(c.select(
                &sql,
                Some(1),
                &[name.into(), pass.as_str().into()],
            )?)
        })
    }) {
        Ok(result) => result,
        Err(_) => Err(unreadable(
            "the flowgate.tenant_key_passphrase it was stored with",
            "set the passphrase the secret was stored with, or store it again with flowgate.set_secret()",
        )),
    }
}

/// Store a named secret for deliveries: in Vault when it is installed (created or updated by
/// name), else encrypted with pgcrypto. Returns where it went ("vault" or "pgcrypto").
pub fn store_secret(
    client: &mut SpiClient<'_>,
    name: &str,
    value: &str,
) -> CoreResult<&'static str> {
    secrets::check_name(name)?;
    secrets::check_value(name, value)?;
    match secrets::storage(client, "storing secrets")? {
        secrets::Storage::Vault => {
            secrets::vault_upsert(client, name, value, "flowgate delivery secret")?;
            // Vault is read first; a stale local copy must not outlive it.
            prepared::exec(
                client,
                "DELETE FROM flowgate.secrets WHERE name = $1",
                &[name.into()],
            )?;
            Ok("vault")
        }
        secrets::Storage::Pgcrypto(schema) => {
            let pass = secrets::passphrase("storing secrets")?;
            prepared::exec(client, &format!(
                    "INSERT INTO flowgate.secrets AS s (name, value_encrypted) \
                     VALUES ($1, {schema}.pgp_sym_encrypt($2, $3, 'cipher-algo=aes256')) \
                     ON CONFLICT (name) DO UPDATE SET value_encrypted = EXCLUDED.value_encrypted, updated_at = now()"
                ), &[name.into(), value.into(), pass.as_str().into()],
            )?;
            Ok("pgcrypto")
        }
    }
}

/// A claimed delivery ready for a transport, or the reason it cannot be sent.
pub enum Prepared {
    Send(native::Request),
    Unsendable { id: i64, reason: String },
}

/// Load claimed (`in_flight`) rows and build their wire requests, secrets resolved.
pub fn prepare(ids: &[i64]) -> CoreResult<Vec<Prepared>> {
    Spi::connect(|client| {
        let rows = prepared::read(client, "SELECT id, method, url, headers, auth_secret, auth_header, auth_scheme, body::text, coalesce(wire_key, idempotency_key), timeout_ms \
             FROM flowgate.deliveries WHERE id = ANY($1) AND status = 'in_flight' ORDER BY id", &[ids.to_vec().into()],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        let mut resolved: std::collections::HashMap<String, Result<String, String>> =
            Default::default();
        for row in rows {
            let id: i64 = row
                .get(1)?
                .ok_or_else(|| CoreError::Internal("delivery without id".into()))?;
            let headers: Map<String, Value> = match row.get::<JsonB>(4)? {
                Some(JsonB(Value::Object(m))) => m,
                _ => Map::new(),
            };
            let auth_secret: Option<String> = row.get(5)?;
            let auth = match auth_secret {
                None => None,
                Some(name) => {
                    if !resolved.contains_key(&name) {
                        let v = match resolve_secret(client, &name) {
                            Ok(Some(v)) => Ok(v),
                            Ok(None) => Err(format!(
                                "secret {name:?} is not defined; add it to Supabase Vault or with flowgate.set_secret(), then flowgate.replay_dead()"
                            )),
                            Err(e @ CoreError::MissingDependency { .. }) => Err(format!(
                                "{e}; {}; then flowgate.replay_dead()",
                                e.hint().unwrap_or_default()
                            )),
                            Err(e) => return Err(e),
                        };
                        resolved.insert(name.clone(), v);
                    }
                    match resolved[&name].clone() {
                        Ok(value) => Some((
                            row.get::<String>(6)?.unwrap_or_default(),
                            row.get::<String>(7)?.unwrap_or_default(),
                            value,
                        )),
                        Err(reason) => {
                            out.push(Prepared::Unsendable { id, reason });
                            continue;
                        }
                    }
                }
            };
            let body: Option<String> = row.get(8)?;
            let key: String = row.get(9)?.unwrap_or_default();
            let wire = delivery::wire_headers(
                &headers,
                &key,
                body.is_some(),
                auth.as_ref()
                    .map(|(h, s, v)| (h.as_str(), s.as_str(), v.as_str())),
            );
            out.push(Prepared::Send(native::Request {
                id,
                method: row.get::<String>(2)?.unwrap_or_else(|| "POST".into()),
                url: row.get::<String>(3)?.unwrap_or_default(),
                headers: wire,
                body: body.map(String::into_bytes),
                timeout: Duration::from_millis(row.get::<i32>(10)?.unwrap_or(10_000).max(1) as u64),
                carries_secret: auth.is_some(),
            }));
        }
        Ok(out)
    })
}

/// Retry tuning from settings.
pub fn retry_policy() -> CoreResult<RetryPolicy> {
    Ok(RetryPolicy {
        base: Duration::from_millis(settings::get_i64("flowgate.retry_base_ms")?.max(1) as u64),
        cap: Duration::from_millis(settings::get_i64("flowgate.retry_cap_ms")?.max(1) as u64),
        max_retry_after: Duration::from_secs(
            settings::get_i64("flowgate.max_retry_after_seconds")?.max(0) as u64,
        ),
    })
}

/// What a transport observed, as text (pg_net's response table, `flowgate.record_attempt`).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub status_code: Option<i32>,
    pub retry_after: Option<String>,
    pub body: Option<String>,
    pub content_type: Option<String>,
    /// `timeout`, `connect`, `transport` or `unsendable`; `None` when the server answered.
    pub error_kind: Option<String>,
    pub error: Option<String>,
}

impl Observed {
    /// The typed observation: a status outside 100..=599 is a transport error.
    pub fn typed(&self) -> Observation {
        let detail = || self.error.clone().unwrap_or_default();
        let attempt = match self.error_kind.as_deref() {
            None => match self.status_code {
                Some(s) if (100..=599).contains(&s) => Ok(Attempt::Response {
                    status: s as u16,
                    retry_after: self.retry_after.clone(),
                }),
                other => Ok(Attempt::Transport(format!(
                    "no usable status code ({other:?})"
                ))),
            },
            Some("timeout") => Ok(Attempt::Timeout),
            Some("connect") => Ok(Attempt::Connect(detail())),
            Some("unsendable") => Err(detail()),
            Some(_) => Ok(Attempt::Transport(detail())),
        };
        Observation {
            attempt,
            body: self.body.clone(),
            content_type: self.content_type.clone(),
        }
    }
}

/// What one attempt came to: the transport's observation, or why it could not be sent at all
/// (a secret that is missing or unreadable).
#[derive(Debug, Clone)]
pub struct Observation {
    pub attempt: Result<Attempt, String>,
    /// The response body (possibly truncated) when the server answered.
    pub body: Option<String>,
    pub content_type: Option<String>,
}

impl Observation {
    pub fn unsendable(reason: String) -> Self {
        Observation {
            attempt: Err(reason),
            body: None,
            content_type: None,
        }
    }

    pub fn status_code(&self) -> Option<i32> {
        match &self.attempt {
            Ok(Attempt::Response { status, .. }) => Some(i32::from(*status)),
            _ => None,
        }
    }
}

/// How recording one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Delivered,
    /// Back to pending, due after its back-off.
    Retry,
    Failed,
    Dead,
    /// No longer in flight under this lease: someone else recorded it (or its lease expired
    /// and it was claimed again); nothing was written.
    Skipped,
    /// Recording or the owner's handler raised: the handler's writes were undone and the
    /// delivery is kept with `handler_error` set.
    HandlerError,
}

impl Recorded {
    pub const ALL: [Recorded; 6] = [
        Recorded::Delivered,
        Recorded::Retry,
        Recorded::Failed,
        Recorded::Dead,
        Recorded::Skipped,
        Recorded::HandlerError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Recorded::Delivered => "delivered",
            Recorded::Retry => "retry",
            Recorded::Failed => "failed",
            Recorded::Dead => "dead",
            Recorded::Skipped => "skipped",
            Recorded::HandlerError => "handler_error",
        }
    }
}

/// The row an attempt is recorded on, locked.
struct InFlight {
    attempts: i32,
    max_attempts: i32,
    flow_key: String,
}

/// Lock the delivery and check that it is still in flight under `lease` (its attempt number
/// when it was claimed; `None` accepts any attempt, as pg_net's collector does). `None` when
/// it is gone, no longer in flight, or leased again.
fn lock_in_flight(
    client: &mut SpiClient<'_>,
    id: i64,
    lease: Option<i32>,
) -> CoreResult<Option<InFlight>> {
    let rows = prepared::exec(
        client,
        "SELECT attempts, max_attempts, status::text, flow_key FROM flowgate.deliveries WHERE id = $1 FOR UPDATE",
        &[id.into()],
    )?;
    if rows.is_empty() {
        // Deleted meanwhile (an operator's DELETE): nothing to record, and the rest of the
        // round is recorded as usual.
        return Ok(None);
    }
    let first = rows.first();
    let status: String = first.get(3)?.unwrap_or_default();
    let row = InFlight {
        attempts: first.get(1)?.unwrap_or(0),
        max_attempts: first.get(2)?.unwrap_or(1),
        flow_key: first.get(4)?.unwrap_or_default(),
    };
    if status != "in_flight" || lease.is_some_and(|l| l != row.attempts) {
        return Ok(None);
    }
    Ok(Some(row))
}

/// Record the outcome of one attempt of an `in_flight` delivery and run its owner's handler.
/// A handler runs in a subtransaction: when it raises, its writes are undone and the delivery
/// is kept (a 2xx stays delivered, since sending it again could post a Slack message twice)
/// with `handler_error` set.
pub fn record(id: i64, lease: Option<i32>, observed: &Observation) -> CoreResult<Recorded> {
    record_with(id, lease, observed, &retry_policy()?)
}

/// [`record`] with the retry policy already read: one row through [`record_batch`], under
/// its lease (or, with none, whatever attempt it is in flight under), and a Retry-After
/// pauses its flow key.
pub fn record_with(
    id: i64,
    lease: Option<i32>,
    observed: &Observation,
    policy: &RetryPolicy,
) -> CoreResult<Recorded> {
    let Some(row) = Spi::connect_mut(|client| lock_in_flight(client, id, lease))? else {
        return Ok(Recorded::Skipped);
    };
    if let Some(d) = pause_of(observed, policy) {
        pause_flows(&[(row.flow_key.as_str(), d)])?;
    }
    let item = Batched {
        id,
        lease: row.attempts,
        max_attempts: row.max_attempts,
        observed,
    };
    Ok(record_batch(&[item], policy)?
        .pop()
        .unwrap_or(Recorded::Skipped))
}

/// The delivery whose handler failed, kept: a 2xx stays delivered (sending again could post a
/// Slack message twice), anything else is failed; `handler_error` says why.
fn keep_after_handler_error(id: i64, observed: &Observation, error: &str) -> CoreResult<Recorded> {
    Spi::run_with_args(
        "UPDATE flowgate.deliveries \
            SET status = CASE WHEN $2 BETWEEN 200 AND 299 THEN 'delivered' ELSE 'failed' END::flowgate.delivery_status, \
                delivered_at = CASE WHEN $2 BETWEEN 200 AND 299 THEN clock_timestamp() END, \
                last_status_code = $2, response_body = CASE WHEN sensitive THEN NULL ELSE $3 END, response_content_type = $4, \
                last_error = CASE WHEN $2 BETWEEN 200 AND 299 \
                                  THEN 'delivered, but the response handler failed; fix it, then flowgate.rerun_handlers()' \
                                  ELSE 'recording the outcome or running the response handler failed; fix the cause, then flowgate.replay_dead()' END, \
                handler_error = $5, claimed_at = NULL, updated_at = clock_timestamp() \
          WHERE id = $1",
        &[
            id.into(),
            observed.status_code().into(),
            observed.body.clone().into(),
            observed.content_type.clone().into(),
            error.chars().take(2000).collect::<String>().into(),
        ],
    )?;
    Ok(Recorded::HandlerError)
}

/// How long a 429 or 503 with Retry-After pauses its whole flow key (clamped like the
/// delivery's own wait).
pub fn pause_of(observed: &Observation, policy: &RetryPolicy) -> Option<Duration> {
    match &observed.attempt {
        Ok(Attempt::Response {
            status: 429 | 503,
            retry_after: Some(v),
        }) => policy::parse_retry_after(v, SystemTime::now())
            .map(|d| d.min(policy.max_retry_after))
            .filter(|d| !d.is_zero()),
        _ => None,
    }
}

/// Pause flow keys until now + their wait (a later pause already set is kept).
pub fn pause_flows(pauses: &[(&str, Duration)]) -> CoreResult<()> {
    if pauses.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = pauses.iter().map(|(k, _)| *k).collect();
    let secs: Vec<f64> = pauses.iter().map(|(_, d)| d.as_secs_f64()).collect();
    Spi::run_with_args(
        "INSERT INTO flowgate.flow_state AS fs (flow_key, tokens, refilled_at, paused_until) \
         SELECT k, 0, clock_timestamp(), clock_timestamp() + make_interval(secs => max(w)) \
           FROM unnest($1::text[], $2::float8[]) AS u(k, w) GROUP BY k \
         ON CONFLICT (flow_key) DO UPDATE \
            SET paused_until = greatest(fs.paused_until, EXCLUDED.paused_until)",
        &[keys.into(), secs.into()],
    )?;
    Ok(())
}

/// What an attempt comes to, ready to be written.
struct Decided {
    verdict: Verdict,
    /// The delivery's next status.
    status: &'static str,
    /// Back-off before the next attempt (pending only).
    delay_ms: i64,
    last_error: Option<String>,
    recorded: Recorded,
}

fn decide(
    attempts: i32,
    max_attempts: i32,
    observed: &Observation,
    policy: &RetryPolicy,
) -> Decided {
    let verdict = match &observed.attempt {
        Ok(attempt) => policy::decide(
            attempts.max(1) as u32,
            max_attempts.max(1) as u32,
            attempt,
            policy,
            rand::random::<f64>(),
            SystemTime::now(),
        ),
        Err(reason) => Verdict::Failed {
            reason: reason.clone(),
        },
    };
    let (status, delay_ms, last_error, recorded) = match &verdict {
        Verdict::Delivered => ("delivered", 0i64, None, Recorded::Delivered),
        Verdict::Retry { delay, reason } => (
            "pending",
            delay.as_millis().min(i64::MAX as u128) as i64,
            Some(reason.clone()),
            Recorded::Retry,
        ),
        Verdict::Failed { reason } => ("failed", 0, Some(reason.clone()), Recorded::Failed),
        Verdict::Dead { reason } => ("dead", 0, Some(reason.clone()), Recorded::Dead),
    };
    Decided {
        verdict,
        status,
        delay_ms,
        last_error,
        recorded,
    }
}

/// One attempt to record in a batch.
pub struct Batched<'a> {
    pub id: i64,
    /// The attempt number it was claimed with.
    pub lease: i32,
    pub max_attempts: i32,
    pub observed: &'a Observation,
}

/// Record a round's attempts in one statement: each row is written only while still in flight
/// under its lease (the others are `Skipped`). Then the owners' response handlers run, each in
/// a subtransaction: one that raises has its writes undone and its delivery kept with
/// `handler_error` set (see [`keep_after_handler_error_in`]); the recorded outcomes stand.
pub fn record_batch(items: &[Batched<'_>], policy: &RetryPolicy) -> CoreResult<Vec<Recorded>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let decided: Vec<Decided> = items
        .iter()
        .map(|u| decide(u.lease, u.max_attempts, u.observed, policy))
        .collect();
    let ids: Vec<i64> = items.iter().map(|u| u.id).collect();
    let leases: Vec<i32> = items.iter().map(|u| u.lease).collect();
    let statuses: Vec<&str> = decided.iter().map(|d| d.status).collect();
    let delays: Vec<i64> = decided.iter().map(|d| d.delay_ms).collect();
    let codes: Vec<Option<i32>> = items.iter().map(|u| u.observed.status_code()).collect();
    let errors: Vec<Option<String>> = decided.iter().map(|d| d.last_error.clone()).collect();
    let bodies: Vec<Option<String>> = items.iter().map(|u| u.observed.body.clone()).collect();
    let types: Vec<Option<String>> = items
        .iter()
        .map(|u| u.observed.content_type.clone())
        .collect();
    // What each written row's handler needs: its owner and the request as it was sent (the
    // row's body may be redacted by this very statement).
    type Written = (Option<String>, String, String, Option<JsonB>);
    let written: std::collections::HashMap<i64, Written> = Spi::connect_mut(|client| {
        let rows = prepared::exec(
            client,
            "UPDATE flowgate.deliveries d SET status = u.status::flowgate.delivery_status, \
               next_attempt_at = CASE WHEN u.status = 'pending' THEN clock_timestamp() + make_interval(secs => u.delay_ms::float8 / 1000) ELSE d.next_attempt_at END, \
               delivered_at = CASE WHEN u.status = 'delivered' THEN clock_timestamp() ELSE d.delivered_at END, \
               last_status_code = u.code, last_error = u.error, \
               response_body = CASE WHEN d.sensitive THEN NULL ELSE u.body END, \
               response_content_type = u.content_type, claimed_at = NULL, updated_at = clock_timestamp(), \
               body = CASE WHEN d.sensitive AND u.status <> 'pending' THEN '{\"redacted\": true}'::jsonb ELSE d.body END \
             FROM unnest($1::bigint[], $2::int[], $3::text[], $4::bigint[], $5::int[], $6::text[], $7::text[], $8::text[]) \
                  AS u(id, lease, status, delay_ms, code, error, body, content_type), \
                  (SELECT x.id, x.body FROM flowgate.deliveries x WHERE x.id = ANY ($1)) AS sent \
            WHERE d.id = u.id AND sent.id = u.id AND d.status = 'in_flight' AND d.attempts = u.lease \
            RETURNING d.id, d.handler, d.owner_module, d.owner_id, sent.body",
            &[
                ids.into(),
                leases.into(),
                statuses.into(),
                delays.into(),
                codes.into(),
                errors.into(),
                bodies.into(),
                types.into(),
            ],
        )?;
        let mut out = std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            out.insert(
                row.get::<i64>(1)?.unwrap_or_default(),
                (
                    row.get::<String>(2)?,
                    row.get::<String>(3)?.unwrap_or_default(),
                    row.get::<String>(4)?.unwrap_or_default(),
                    row.get::<JsonB>(5)?,
                ),
            );
        }
        Ok::<_, CoreError>(out)
    })?;
    let texts: Vec<String> = items
        .iter()
        .map(|u| u.observed.body.clone().unwrap_or_default())
        .collect();
    let mut out: Vec<Option<Recorded>> = Vec::with_capacity(items.len());
    // The deliveries whose handler runs now: (position, handler, outcome).
    let mut due: Vec<(usize, &str, Outcome)> = Vec::new();
    for (i, (u, d)) in items.iter().zip(&decided).enumerate() {
        let Some((handler, ..)) = written.get(&u.id) else {
            out.push(Some(Recorded::Skipped));
            continue;
        };
        let outcome = match d.verdict {
            Verdict::Delivered => Outcome::Delivered,
            Verdict::Failed { .. } => Outcome::Failed,
            Verdict::Dead { .. } => Outcome::Dead,
            Verdict::Retry { .. } => {
                out.push(Some(d.recorded));
                continue;
            }
        };
        let Some(name) = handler else {
            out.push(Some(d.recorded));
            continue;
        };
        out.push(None);
        due.push((i, name.as_str(), outcome));
    }
    // Grouped by handler (a stable sort: each handler sees its deliveries in round order).
    due.sort_by(|a, b| a.1.cmp(b.1));
    let calls: Vec<HandlerCall<'_>> = due
        .iter()
        .map(|&(i, _, outcome)| {
            let u = &items[i];
            let (_, owner_module, owner_id, request) = &written[&u.id];
            HandlerCall {
                delivery_id: u.id,
                owner_module,
                owner_id,
                outcome,
                status_code: u.observed.status_code(),
                response: serde_json::from_str(&texts[i]).ok(),
                response_text: &texts[i],
                request: request.as_ref().map(|j| &j.0),
                last_error: decided[i].last_error.as_deref(),
            }
        })
        .collect();
    let mut start = 0;
    while start < due.len() {
        let name = due[start].1;
        let end = start + due[start..].iter().take_while(|r| r.1 == name).count();
        // A handler's batch form takes the whole group in one subtransaction; if it raises,
        // that is rolled back and each delivery runs the single form in its own.
        let batched = match handlers::find_batch(name) {
            Some(batch) if end - start > 1 => matches!(
                subxact::run(|| Spi::connect_mut(|client| batch(client, &calls[start..end]))),
                Ok(Ok(()))
            ),
            _ => false,
        };
        for k in start..end {
            let i = due[k].0;
            out[i] = Some(if batched {
                decided[i].recorded
            } else {
                run_handler(name, &calls[k], items[i].observed, decided[i].recorded)?
            });
        }
        start = end;
    }
    Ok(out
        .into_iter()
        .map(|r| r.unwrap_or(Recorded::Skipped))
        .collect())
}

/// Run one delivery's handler in a subtransaction of its own: what recording it comes to
/// (`recorded`), or the delivery kept with the handler's error.
fn run_handler(
    name: &str,
    call: &HandlerCall<'_>,
    observed: &Observation,
    recorded: Recorded,
) -> CoreResult<Recorded> {
    let ran = subxact::run(|| {
        let run = handlers::registered(name)?;
        Spi::connect_mut(|client| run(client, call))
    });
    match ran {
        Ok(Ok(())) => Ok(recorded),
        Ok(Err(e)) => keep_after_handler_error(
            call.delivery_id,
            observed,
            &format!("{}: {e}", e.sqlstate()),
        ),
        Err(c) => keep_after_handler_error(
            call.delivery_id,
            observed,
            &format!("{}: {}", c.sqlstate, c.message),
        ),
    }
}

/// Re-run the handler of a delivered delivery whose handler failed, with its stored response.
/// Returns false when there was nothing to re-run.
pub fn rerun_handler(id: i64) -> CoreResult<bool> {
    Spi::connect_mut(|client| {
        let rows = prepared::exec(client, "SELECT owner_module, owner_id, handler, body, last_status_code, response_body FROM flowgate.deliveries \
             WHERE id = $1 AND status = 'delivered' AND handler IS NOT NULL AND handler_error IS NOT NULL FOR UPDATE", &[id.into()],
        )?;
        if rows.is_empty() {
            return Ok(false);
        }
        let row = rows.first();
        let owner_module: String = row.get(1)?.unwrap_or_default();
        let owner_id: String = row.get(2)?.unwrap_or_default();
        let name: String = row.get(3)?.unwrap_or_default();
        let request: Option<JsonB> = row.get(4)?;
        let status_code: Option<i32> = row.get(5)?;
        let text: String = row.get::<String>(6)?.unwrap_or_default();
        let run = handlers::registered(&name)?;
        let call = HandlerCall {
            delivery_id: id,
            owner_module: &owner_module,
            owner_id: &owner_id,
            outcome: Outcome::Delivered,
            status_code,
            response: serde_json::from_str(&text).ok(),
            response_text: &text,
            request: request.as_ref().map(|j| &j.0),
            last_error: None,
        };
        run(client, &call)?;
        prepared::exec(client, "UPDATE flowgate.deliveries SET handler_error = NULL, last_error = NULL, updated_at = clock_timestamp() WHERE id = $1", &[id.into()],
        )?;
        Ok(true)
    })
}
