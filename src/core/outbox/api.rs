//! SQL surface of the outbox. The orchestration (`flowgate.dispatch`, `flowgate.collect`) is
//! PL/pgSQL in `sql/finalize.sql` so that each delivery's outcome and handler run in their
//! own subtransaction; these functions are the Rust steps it calls.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{Map, Value};

use super::delivery::NewDelivery;
use super::native;
use super::store::{self, Observed, Prepared};
use crate::core::args::{
    self, RawJsonb, MAX_JSON_ARG_BYTES, MAX_RESPONSE_ARG_BYTES as MAX_BODY_ARG_BYTES,
};
use crate::core::error::{CoreError, CoreResult};
use crate::core::store as settings;

/// Enqueue an HTTP delivery (operators, tests and SQL-only callers; modules use the Rust API).
/// Returns the delivery id; the same idempotency key returns the first id and writes nothing.
#[pg_extern(volatile)]
#[allow(clippy::too_many_arguments)]
fn enqueue_delivery(
    owner_module: Option<&str>,
    owner_id: Option<&str>,
    url: Option<&str>,
    idempotency_key: Option<&str>,
    body: default!(Option<RawJsonb>, "NULL"),
    method: default!(Option<&str>, "'POST'"),
    headers: default!(Option<RawJsonb>, "'{}'"),
    auth_secret: default!(Option<&str>, "NULL"),
    auth_header: default!(Option<&str>, "'Authorization'"),
    auth_scheme: default!(Option<&str>, "'Bearer'"),
    handler: default!(Option<&str>, "NULL"),
    max_attempts: default!(Option<i32>, "NULL"),
    timeout_ms: default!(Option<i32>, "NULL"),
) -> Result<i64, ErrorReport> {
    let run = || -> CoreResult<i64> {
        let owner_module = args::required("owner_module", owner_module)?;
        let owner_id = args::required("owner_id", owner_id)?;
        let url = args::required("url", url)?;
        let idempotency_key = args::required("idempotency_key", idempotency_key)?;
        let method = args::required("method", method)?;
        let auth_header = args::required("auth_header", auth_header)?;
        let auth_scheme = args::required("auth_scheme", auth_scheme)?;
        let body = args::optional(body, "body", MAX_BODY_ARG_BYTES)?;
        let headers = args::required("headers", headers)?;
        let headers = match headers.value("headers", MAX_JSON_ARG_BYTES)? {
            Value::Object(m) => m,
            other => {
                return Err(CoreError::invalid(
                    "headers",
                    format!("got {other}"),
                    "a JSON object of header name to string",
                ))
            }
        };
        let d = NewDelivery {
            owner_module: owner_module.into(),
            owner_id: owner_id.into(),
            handler: handler.map(str::to_owned),
            method: method.to_ascii_uppercase(),
            url: url.into(),
            headers,
            auth_secret: auth_secret.map(str::to_owned),
            auth_header: auth_header.into(),
            auth_scheme: auth_scheme.into(),
            body,
            idempotency_key: idempotency_key.into(),
            max_attempts,
            timeout_ms,
            parked: false,
            wire_key: None,
            sensitive: false,
        };
        Spi::connect_mut(|client| store::enqueue(client, &d)).map(|e| e.id)
    };
    run().map_err(CoreError::reporter("flowgate.enqueue_delivery"))
}

/// Store a named secret (a bot token, an API key) that deliveries reference by name: in
/// Supabase Vault when it is installed, else encrypted with pgcrypto under
/// `flowgate.tenant_key_passphrase`. The value must travel in an HTTP header (visible ASCII)
/// and is never shown in an error. Needs write access to `flowgate.secrets` (the extension
/// owner). Returns where it was stored: `vault` or `pgcrypto`.
#[pg_extern(volatile, strict)]
fn set_secret(name: &str, value: &str) -> Result<String, ErrorReport> {
    let run = || -> CoreResult<String> {
        settings::require_writer("flowgate.secrets", "store secrets")?;
        Spi::connect_mut(|client| store::store_secret(client, name, value)).map(str::to_owned)
    };
    run().map_err(CoreError::reporter("flowgate.set_secret"))
}

/// The transport `flowgate.dispatch` uses now: the `flowgate.http_transport` setting, with
/// `auto` meaning pg_net when that extension is installed, else native.
#[pg_extern(stable)]
fn effective_transport() -> Result<String, ErrorReport> {
    let run = || -> CoreResult<String> {
        let wanted = settings::get_text("flowgate.http_transport")?;
        let has_pg_net = Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_net')",
        )?
        .unwrap_or(false);
        match (wanted.as_str(), has_pg_net) {
            ("native", _) | ("auto", false) => Ok("native".into()),
            ("pg_net", true) | ("auto", true) => Ok("pg_net".into()),
            _ => Err(CoreError::MissingDependency {
                feature: "flowgate.http_transport = pg_net".into(),
                dependency: "the pg_net extension".into(),
                hint: "CREATE EXTENSION pg_net, or set flowgate.http_transport to auto or native"
                    .into(),
            }),
        }
    };
    run().map_err(CoreError::reporter("flowgate.effective_transport"))
}

/// One attempt's observation: id, status_code, retry_after, body, content_type, error_kind,
/// error, elapsed_ms (the SQL column names are declared on the functions below).
type AttemptRow = (
    i64,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i32>,
);

fn unsendable(id: i64, reason: String) -> AttemptRow {
    (
        id,
        None,
        None,
        None,
        None,
        Some("unsendable".into()),
        Some(reason),
        None,
    )
}

/// Native transport: send the claimed deliveries concurrently and return what happened to
/// each. Writes nothing; `flowgate.dispatch` records the rows.
#[pg_extern(volatile, strict)]
#[allow(clippy::type_complexity)]
fn transport_native(
    ids: Vec<i64>,
) -> Result<
    TableIterator<
        'static,
        (
            name!(id, i64),
            name!(status_code, Option<i32>),
            name!(retry_after, Option<String>),
            name!(body, Option<String>),
            name!(content_type, Option<String>),
            name!(error_kind, Option<String>),
            name!(error, Option<String>),
            name!(elapsed_ms, Option<i32>),
        ),
    >,
    ErrorReport,
> {
    let run = || -> CoreResult<Vec<AttemptRow>> {
        let concurrency = settings::get_i64("flowgate.http_concurrency")? as usize;
        let mut rows = Vec::with_capacity(ids.len());
        let mut requests = Vec::with_capacity(ids.len());
        for p in store::prepare(&ids)? {
            match p {
                Prepared::Send(r) => requests.push(r),
                Prepared::Unsendable { id, reason } => rows.push(unsendable(id, reason)),
            }
        }
        // Postgres APIs stay on this thread: the batch runs on plain worker threads with
        // owned data, and everything is back here before the next SPI call.
        // SAFETY: InterruptPending is a plain flag Postgres sets from signal handlers; reading
        // it on this (the backend's main) thread is what CHECK_FOR_INTERRUPTS does.
        let interrupted = || unsafe { pg_sys::InterruptPending != 0 };
        let results = native::send_batch(&requests, concurrency, &interrupted);
        // Cancel, statement_timeout or shutdown: raise it now, after the workers are joined.
        pgrx::check_for_interrupts!();
        for r in results {
            let status = r.status().map(i32::from);
            let (kind, error, retry_after) = match &r.attempt {
                super::policy::Attempt::Response { retry_after, .. } => {
                    (None, None, retry_after.clone())
                }
                super::policy::Attempt::Timeout => {
                    (Some("timeout"), Some("timed out".to_string()), None)
                }
                super::policy::Attempt::Connect(e) => (Some("connect"), Some(e.clone()), None),
                super::policy::Attempt::Transport(e) => (Some("transport"), Some(e.clone()), None),
            };
            rows.push((
                r.id,
                status,
                retry_after,
                status.map(|_| r.body),
                r.content_type,
                kind.map(str::to_owned),
                error,
                Some(r.elapsed.as_millis().min(i32::MAX as u128) as i32),
            ));
        }
        Ok(rows)
    };
    run()
        .map(TableIterator::new)
        .map_err(CoreError::reporter("flowgate.transport_native"))
}

/// pg_net transport: queue each claimed delivery with `net.http_post` / `net.http_get` and
/// remember pg_net's request id; `flowgate.collect` reads the responses later. Returns the
/// deliveries it did not queue: `unsendable` ones (a missing secret) and those whose method
/// pg_net cannot send (`error_kind = 'native'`), which `flowgate.dispatch` sends natively.
#[pg_extern(volatile, strict)]
#[allow(clippy::type_complexity)]
fn transport_pg_net(
    ids: Vec<i64>,
) -> Result<
    TableIterator<
        'static,
        (
            name!(id, i64),
            name!(status_code, Option<i32>),
            name!(retry_after, Option<String>),
            name!(body, Option<String>),
            name!(content_type, Option<String>),
            name!(error_kind, Option<String>),
            name!(error, Option<String>),
            name!(elapsed_ms, Option<i32>),
        ),
    >,
    ErrorReport,
> {
    let run = || -> CoreResult<Vec<AttemptRow>> {
        let mut rows = Vec::new();
        for p in store::prepare(&ids)? {
            let req = match p {
                Prepared::Send(r) => r,
                Prepared::Unsendable { id, reason } => {
                    rows.push(unsendable(id, reason));
                    continue;
                }
            };
            // pg_net keeps request headers in tables PUBLIC can read until it sends them, and its
            // http_post insists on a plain application/json body: those deliveries go native.
            let plain_json = req
                .headers
                .iter()
                .all(|(k, v)| !k.eq_ignore_ascii_case("content-type") || v == "application/json");
            if req.carries_secret || !plain_json {
                rows.push((
                    req.id,
                    None,
                    None,
                    None,
                    None,
                    Some("native".into()),
                    None,
                    None,
                ));
                continue;
            }
            let call = match req.method.as_str() {
                "POST" => "SELECT net.http_post(url := $1, body := $2::jsonb, headers := $3, timeout_milliseconds := $4)",
                "GET" => "SELECT net.http_get(url := $1, headers := $2, timeout_milliseconds := $3)",
                _ => {
                    rows.push((req.id, None, None, None, None, Some("native".into()), None, None));
                    continue;
                }
            };
            let headers: Map<String, Value> = req
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            let body = req
                .body
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned());
            let timeout = req.timeout.as_millis().min(i32::MAX as u128) as i32;
            Spi::connect_mut(|client| -> CoreResult<()> {
                let args = if req.method == "GET" {
                    vec![
                        req.url.as_str().into(),
                        JsonB(Value::Object(headers)).into(),
                        timeout.into(),
                    ]
                } else {
                    vec![
                        req.url.as_str().into(),
                        body.into(),
                        JsonB(Value::Object(headers)).into(),
                        timeout.into(),
                    ]
                };
                let request_id = client
                    .update(call, Some(1), &args)?
                    .first()
                    .get_one::<i64>()?;
                client.update(
                    "UPDATE flowgate.deliveries SET transport_ref = $2, updated_at = now() WHERE id = $1",
                    None,
                    &[req.id.into(), request_id.into()],
                )?;
                Ok(())
            })?;
        }
        Ok(rows)
    };
    run()
        .map(TableIterator::new)
        .map_err(CoreError::reporter("flowgate.transport_pg_net"))
}

/// Run the response handler again for delivered deliveries whose handler failed (no HTTP is
/// sent: the stored response is used); returns how many handlers now succeeded.
#[pg_extern(volatile, strict)]
fn rerun_handlers(ids: Vec<i64>) -> Result<i32, ErrorReport> {
    let mut ok = 0;
    for id in ids {
        if store::rerun_handler(id).map_err(CoreError::reporter("flowgate.rerun_handlers"))? {
            ok += 1;
        }
    }
    Ok(ok)
}

/// Record one attempt of an in-flight delivery and run its owner's handler; returns
/// `delivered`, `retry`, `failed`, `dead` or `skipped`.
#[pg_extern(volatile)]
#[allow(clippy::too_many_arguments)]
fn record_attempt(
    id: Option<i64>,
    status_code: Option<i32>,
    retry_after: Option<String>,
    body: Option<String>,
    content_type: Option<String>,
    error_kind: Option<String>,
    error: Option<String>,
) -> Result<String, ErrorReport> {
    let observed = Observed {
        status_code,
        retry_after,
        body,
        content_type,
        error_kind,
        error,
    };
    args::required("id", id)
        .and_then(|id| store::record(id, &observed))
        .map(str::to_owned)
        .map_err(CoreError::reporter("flowgate.record_attempt"))
}
