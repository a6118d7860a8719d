//! Outbox data access: enqueue and rearm, parking, secret resolution and loading claimed rows
//! for a transport. Recording an outcome is in `record`.

use std::collections::HashMap;
use std::time::Duration;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::{Map, Value};

use super::delivery::{self, NewDelivery};
use super::handlers;
use super::native;
use crate::core::error::SqlError;
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
    if let Some(id) = insert(client, std::slice::from_ref(d), false)?.remove(&d.idempotency_key) {
        return Ok(Enqueued { id, created: true });
    }
    // A statement of its own, with a snapshot of its own: the row the insert conflicted with
    // may have been committed by another transaction while the insert waited for it, after
    // this statement's snapshot (under READ COMMITTED; a REPEATABLE READ insert fails with
    // 40001 instead).
    let existing = prepared::exec(
        client,
        "SELECT id, owner_module, owner_id FROM flowgate.deliveries WHERE idempotency_key = $1",
        &[d.idempotency_key.as_str().into()],
    )?;
    if existing.is_empty() {
        // Its row deleted since the conflict (by the owner, or pruned): enqueue it again.
        return Err(CoreError::Busy {
            what: format!("delivery idempotency key {}", d.idempotency_key),
            hint: "its delivery was deleted while this one was enqueued: enqueue it again".into(),
        });
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
    let mut created = insert(client, ds, true)?;
    ds.iter()
        .map(|d| match created.remove(&d.idempotency_key) {
            Some(id) => Ok(Rearmed::Created(id)),
            None => rearm_existing(client, d),
        })
        .collect()
}

/// Insert checked deliveries in one statement, each unless its idempotency key is taken; the
/// ids of those inserted, by key. `if_absent`: only keys with no row visible at all, so the
/// call never waits for a row another transaction is recording (which the caller may be
/// blocking).
fn insert(
    client: &mut SpiClient<'_>,
    ds: &[NewDelivery],
    if_absent: bool,
) -> CoreResult<HashMap<String, i64>> {
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
            "body_secrets": (!d.body_secrets.is_empty()).then(|| {
                d.body_secrets.iter().map(|(f, n)| (f.clone(), Value::String(n.clone()))).collect::<Map<String, Value>>()
            }),
        }));
    }
    if rows.is_empty() {
        return Ok(HashMap::new());
    }
    let with_secrets = body_secrets_supported();
    if !with_secrets && ds.iter().any(|d| !d.body_secrets.is_empty()) {
        return Err(CoreError::MissingDependency {
            feature: "secret body fields (body_secrets)".into(),
            dependency: "flowgate's SQL of this version".into(),
            hint: "run ALTER EXTENSION flowgate UPDATE".into(),
        });
    }
    macro_rules! insert_sql {
        ($col:literal, $val:literal, $ty:literal) => {
            concat!("INSERT INTO flowgate.deliveries (owner_module, owner_id, handler, method, url, headers, auth_secret, \
         auth_header, auth_scheme, body, idempotency_key, max_attempts, timeout_ms, next_attempt_at, wire_key, sensitive, flow_key", $col, ") \
         SELECT r.owner_module, r.owner_id, r.handler, r.method, r.url, r.headers, r.auth_secret, r.auth_header, r.auth_scheme, \
                r.body, r.idempotency_key, r.max_attempts, r.timeout_ms, \
                CASE WHEN r.parked THEN 'infinity'::timestamptz ELSE now() END, r.wire_key, r.sensitive, r.flow_key", $val, " \
           FROM jsonb_to_recordset($1) AS r (owner_module text, owner_id text, handler text, method text, url text, \
                headers jsonb, auth_secret text, auth_header text, auth_scheme text, body jsonb, idempotency_key text, \
                max_attempts int, timeout_ms int, parked bool, wire_key text, sensitive bool, flow_key text", $ty, ") \
          WHERE NOT $2 OR NOT EXISTS (SELECT FROM flowgate.deliveries x WHERE x.idempotency_key = r.idempotency_key) \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, idempotency_key")
        };
    }
    let sql = if with_secrets {
        insert_sql!(", body_secrets", ", r.body_secrets", ", body_secrets jsonb")
    } else {
        insert_sql!("", "", "")
    };
    let inserted = prepared::exec(
        client,
        sql,
        &[JsonB(Value::Array(rows)).into(), if_absent.into()],
    )?;
    let mut out = HashMap::with_capacity(inserted.len());
    for row in inserted {
        if let (Some(id), Some(key)) = (row.get::<i64>(1)?, row.get::<String>(2)?) {
            out.insert(key, id);
        }
    }
    Ok(out)
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
    /// Delivered, but its handler failed (a lock it waited for, a timeout): its owner id is
    /// now this call's, so [`super::handler_runs::rerun_handler`] applies the stored response to what
    /// the owner has now (intake: the intent's message id after a replay from the DLQ).
    Unhandled(i64),
}

/// Enqueue a delivery that is one logical request retried at its owner's pace (intake's
/// intents, read again after their visibility timeout): the same key is one row, not one per
/// try. A first call enqueues it; a later one gives a finished attempt one more, with what
/// this call says now (body, owner id, URL, headers, secret, timeout and flow key may change
/// from try to try, e.g. an operator fixing a webhook URL; the Idempotency-Key stays).
pub fn rearm(client: &mut SpiClient<'_>, d: &NewDelivery) -> CoreResult<Rearmed> {
    Ok(rearm_many(client, std::slice::from_ref(d))?.remove(0))
}

/// [`rearm`] of a key that [`insert`] found taken.
fn rearm_existing(client: &mut SpiClient<'_>, d: &NewDelivery) -> CoreResult<Rearmed> {
    // Never wait for a row someone is recording (its handler may be waiting for a lock this
    // caller holds, e.g. the intent a drain has just read): a locked row is busy.
    let rows = prepared::exec(
        client,
        "SELECT id, status::text, next_attempt_at = 'infinity', owner_module, handler_error IS NOT NULL FROM flowgate.deliveries \
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
    let unhandled: bool = row.get(5)?.unwrap_or(false);
    if module != d.owner_module {
        return Err(CoreError::Duplicate {
            kind: "delivery idempotency key".into(),
            key: d.idempotency_key.clone(),
        });
    }
    match status.as_str() {
        "failed" | "dead" => {}
        "pending" if parked => {}
        "delivered" if unhandled => {
            prepared::exec(
                client,
                "UPDATE flowgate.deliveries SET owner_id = $2, updated_at = clock_timestamp() WHERE id = $1",
                &[id.into(), d.owner_id.as_str().into()],
            )?;
            return Ok(Rearmed::Unhandled(id));
        }
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
///
/// The look-ups run as statements that write (a new snapshot each), as the claim does: a
/// read-only one would see the snapshot its transaction began with, and miss a secret stored
/// with a delivery that committed after it and that the claim's own statement found.
pub fn resolve_secret(client: &SpiClient<'_>, name: &str) -> CoreResult<Option<String>> {
    if secrets::vault_installed(client)? {
        // A secret Vault cannot decrypt (a backup restored under another root key) raises; it
        // is this delivery's failure, not an error that aborts the caller's batch.
        let found = subxact::run(|| {
            Spi::connect_mut(|c| {
                let rows = prepared::exec(c, "SELECT decrypted_secret FROM vault.decrypted_secrets WHERE name = $1 ORDER BY created_at DESC LIMIT 1", &[name.into()],
                )?;
                if rows.is_empty() {
                    return Ok(None);
                }
                Ok::<_, CoreError>(rows.first().get_one::<String>()?)
            })
        });
        match found {
            Ok(Ok(Some(s))) => return Ok(Some(s)),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => return Err(e),
            Err(caught) => return Err(secrets::vault_read_failed(name, &caught)),
        }
    }
    let stored = Spi::connect_mut(|c| {
        prepared::exec(
            c,
            "SELECT 1 FROM flowgate.secrets WHERE name = $1",
            &[name.into()],
        )
        .map(|t| !t.is_empty())
    })?;
    if !stored {
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
    // A wrong passphrase makes pgcrypto raise; keep that from aborting the caller's batch. The
    // ciphertext is read and decrypted here (`secrets::pgp_decrypt`): the passphrase is never a
    // statement's parameter.
    match subxact::run(|| {
        Spi::connect_mut(|c| {
            let sealed = c
                .update(
                    "SELECT value_encrypted FROM flowgate.secrets WHERE name = $1",
                    Some(1),
                    &[name.into()],
                )?
                .first()
                .get_one::<Vec<u8>>()?;
            sealed
                .map(|d| secrets::pgp_decrypt(c, &schema, &d, &pass))
                .transpose()
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
            // Encrypted here: the statement binds the ciphertext, never the value or the passphrase.
            let sealed = secrets::pgp_encrypt(client, &schema, value, &pass)?;
            prepared::exec(
                client,
                "INSERT INTO flowgate.secrets AS s (name, value_encrypted) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET value_encrypted = EXCLUDED.value_encrypted, updated_at = now()",
                &[name.into(), sealed.as_slice().into()],
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
        macro_rules! prepare_sql {
            ($secrets:literal) => {
                concat!("SELECT id, method, url, headers, auth_secret, auth_header, auth_scheme, body::text, coalesce(wire_key, idempotency_key), timeout_ms, ",
                    $secrets, ", sensitive \
             FROM flowgate.deliveries WHERE id = ANY($1) AND status = 'in_flight' ORDER BY id")
            };
        }
        let sql = if body_secrets_supported() {
            prepare_sql!("body_secrets")
        } else {
            prepare_sql!("NULL::jsonb")
        };
        let rows = prepared::read(client, sql, &[ids.to_vec().into()])?;
        // The claim is this transaction's: its lease runs from about now.
        let claimed = std::time::Instant::now();
        let lease_seconds = settings::get_i64("flowgate.in_flight_lease_seconds")?.max(1) as f64;
        let mut out = Vec::with_capacity(rows.len());
        let mut secrets = Secrets::default();
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
                Some(name) => match secrets.get(client, &name)? {
                    Ok(value) => Some((
                        row.get::<String>(6)?.unwrap_or_default(),
                        row.get::<String>(7)?.unwrap_or_default(),
                        value,
                    )),
                    Err(reason) => {
                        out.push(Prepared::Unsendable { id, reason });
                        continue;
                    }
                },
            };
            let timeout =
                Duration::from_millis(row.get::<i32>(10)?.unwrap_or(10_000).max(1) as u64);
            let mut body: Option<String> = row.get(8)?;
            let body_secrets = match row.get::<JsonB>(11)? {
                Some(JsonB(Value::Object(m))) => m,
                _ => Map::new(),
            };
            let mut secret_values: Vec<String> = auth.iter().map(|(_, _, v)| v.clone()).collect();
            if !body_secrets.is_empty() {
                match with_secrets(
                    client,
                    &mut secrets,
                    body.as_deref(),
                    &body_secrets,
                    &mut secret_values,
                )? {
                    Ok(text) => body = Some(text),
                    Err(reason) => {
                        out.push(Prepared::Unsendable { id, reason });
                        continue;
                    }
                }
            }
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
                timeout,
                start_by: Some(start_by(claimed, lease_seconds, timeout)),
                // pg_net keeps requests and responses in tables PUBLIC can read.
                carries_secret: auth.is_some()
                    || !body_secrets.is_empty()
                    || row.get::<bool>(12)? == Some(true),
                secret_values,
            }));
        }
        Ok(out)
    })
}

/// The latest start of a request claimed at `claimed` that still ends (answered or timed out,
/// and 5 s to record it) before its lease runs out. The lease is what `flowgate.collect`
/// expires in-flight rows after: `flowgate.in_flight_lease_seconds`, or the timeout and 30 s.
fn start_by(
    claimed: std::time::Instant,
    lease_seconds: f64,
    timeout: Duration,
) -> std::time::Instant {
    let lease = Duration::from_secs_f64(lease_seconds.max(timeout.as_secs_f64() + 30.0));
    claimed + lease.saturating_sub(timeout + Duration::from_secs(5))
}

/// Whether `flowgate.deliveries` has its `body_secrets` column (0.1.1). A database whose SQL is
/// still 0.1.0's, with this library installed and `ALTER EXTENSION flowgate UPDATE` not yet
/// run, lacks it. Looked up in the catalog cache on every use, never remembered: the update
/// may run while this backend lives.
pub fn body_secrets_supported() -> bool {
    settings::column_exists(c"flowgate", c"deliveries", c"body_secrets")
}

/// The secrets of one batch of requests, each resolved once: its value, or why a delivery that
/// names it cannot be sent.
#[derive(Default)]
struct Secrets(HashMap<String, Result<String, String>>);

impl Secrets {
    fn get(&mut self, client: &SpiClient<'_>, name: &str) -> CoreResult<Result<String, String>> {
        if let Some(v) = self.0.get(name) {
            return Ok(v.clone());
        }
        let v = match resolve_secret(client, name) {
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
        self.0.insert(name.to_owned(), v.clone());
        Ok(v)
    }
}

/// The stored body with its secret fields set (`body_secrets`: field -> secret name), as the
/// text sent; or why it cannot be sent. Each value set is pushed to `values`.
fn with_secrets(
    client: &SpiClient<'_>,
    secrets: &mut Secrets,
    body: Option<&str>,
    body_secrets: &Map<String, Value>,
    values: &mut Vec<String>,
) -> CoreResult<Result<String, String>> {
    let mut object = match body.map(serde_json::from_str::<Value>) {
        Some(Ok(Value::Object(m))) => m,
        _ => return Ok(Err("body_secrets need a JSON object body".into())),
    };
    for (field, name) in body_secrets {
        let Some(name) = name.as_str() else {
            return Ok(Err(format!("body_secrets.{field} is not a secret name")));
        };
        match secrets.get(client, name)? {
            Ok(value) => {
                values.push(value.clone());
                object.insert(field.clone(), Value::String(value));
            }
            Err(reason) => return Ok(Err(reason)),
        }
    }
    Ok(Ok(Value::Object(object).to_string()))
}
