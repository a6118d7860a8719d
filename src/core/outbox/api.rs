//! SQL surface of the outbox. Sending is `CALL flowgate.run_outbox()` (procedure.rs) or the
//! background worker; `flowgate.collect` reads pg_net's responses and expires lost leases.

use flowgate_macros::documented;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use serde_json::Value;

use super::delivery::NewDelivery;
use super::record::{self, Observed};
use super::store;
use super::{collect, engine};
use crate::core::args::{
    self, RawJsonb, MAX_JSON_ARG_BYTES, MAX_RESPONSE_ARG_BYTES as MAX_BODY_ARG_BYTES,
};
use crate::core::error::{CoreError, CoreResult};
use crate::core::store as settings;

/// Enqueue an HTTP delivery and return its id; the same `idempotency_key` returns the first
/// delivery's id and writes nothing (23505 when another owner used that key). Credentials go in
/// a named secret (`auth_secret`): in `headers` or the URL they are refused (22023). Extension
/// owner only.
///
/// For operators, tests and SQL-only callers; modules use the Rust API
/// (`core::outbox::store::enqueue`).
#[documented]
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
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
    flow_key: default!(Option<&str>, "NULL"),
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
            // Its kind only: misplaced headers may well hold a credential.
            other => {
                return Err(CoreError::invalid(
                    "headers",
                    format!("got a JSON {}", args::json_kind(&other)),
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
            flow_key: flow_key.map(str::to_owned),
            body_secrets: Vec::new(),
        };
        Spi::connect_mut(|client| store::enqueue(client, &d)).map(|e| e.id)
    };
    Ok(run()?)
}

/// Store a named secret (a bot token, an API key) that deliveries reference by name: in
/// Supabase Vault when it is installed, else encrypted with pgcrypto under
/// `flowgate.tenant_key_passphrase`. Returns `vault` or `pgcrypto`. Visible ASCII only; the
/// value never appears in an error. Extension owner only.
///
/// Visible ASCII because the value travels in an HTTP header. Besides EXECUTE, the caller needs
/// write access to `flowgate.secrets` (42501 otherwise); 0A000 when neither Vault nor pgcrypto
/// with a passphrase is available.
#[documented]
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn set_secret(name: Option<&str>, value: Option<&str>) -> Result<String, ErrorReport> {
    let run = || -> CoreResult<String> {
        settings::require_writer("flowgate.secrets", "store secrets")?;
        // A NULL (a script's unset variable) is 22023, not a NULL answer that stored nothing.
        let name = crate::core::args::required("name", name)?;
        let value = crate::core::args::required("value", value)?;
        Spi::connect_mut(|client| store::store_secret(client, name, value)).map(str::to_owned)
    };
    Ok(run()?)
}

/// The transport the outbox uses now, `pg_net` or `native`: the `flowgate.http_transport`
/// setting, with `auto` meaning pg_net where that extension is installed, closed to other
/// roles, usable by the caller and served by a pg_net worker in this database, else native.
#[documented]
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn effective_transport() -> Result<String, ErrorReport> {
    Ok(engine::Transport::current().map(|t| t.as_str().to_owned())?)
}

/// Record the responses pg_net stored for in-flight deliveries, and expire deliveries in flight
/// past their lease as timed-out attempts (retried with the same key); sends no HTTP. Returns
/// `{collected, expired, delivered, retry, failed, dead, skipped, handler_error}`. Extension
/// owner only.
#[documented]
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn collect() -> Result<pgrx::JsonB, ErrorReport> {
    Ok(collect::collect().map(|c| pgrx::JsonB(c.to_json()))?)
}

/// Run the response handler again, on the stored response, for delivered deliveries whose
/// handler failed (no HTTP is sent); returns how many handlers now succeeded. Extension owner
/// only.
///
/// Ids that are not delivered deliveries with a failed handler are passed over.
#[documented]
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn rerun_handlers(ids: Option<Vec<Option<i64>>>) -> Result<i32, ErrorReport> {
    let ids = crate::core::args::required("ids", ids)?;
    let mut ok = 0;
    for id in ids.into_iter().flatten() {
        // Each in its own subtransaction: one that fails again keeps its handler_error and
        // is not counted; the others go on.
        if let Ok(Ok(true)) = crate::core::subxact::run(|| super::handler_runs::rerun_handler(id)) {
            ok += 1;
        }
    }
    Ok(ok)
}

/// Longest header value `record_attempt` takes (`retry_after`, `content_type`, `error_kind`).
const MAX_HEADER_ARG_BYTES: usize = 1024;

/// Record one attempt of an in-flight delivery sent elsewhere (pg_net, an Edge Function) and
/// run its owner's handler; returns `delivered`, `retry`, `failed`, `dead`, `skipped` or
/// `handler_error`. Extension owner only.
///
/// The handler runs in a subtransaction when the delivery has one.
#[documented]
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
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
    let run = || -> crate::core::error::CoreResult<String> {
        let id = args::required("id", id)?;
        // What an Edge Function reports is bounded as the native client's own reading is.
        for (what, text, limit) in [
            ("body", &body, MAX_BODY_ARG_BYTES),
            ("error", &error, args::MAX_ERROR_TEXT_BYTES),
            ("retry_after", &retry_after, MAX_HEADER_ARG_BYTES),
            ("content_type", &content_type, MAX_HEADER_ARG_BYTES),
            ("error_kind", &error_kind, MAX_HEADER_ARG_BYTES),
        ] {
            if let Some(t) = text {
                args::check_text_size(what, t, limit)?;
            }
        }
        let observed = Observed {
            status_code,
            retry_after,
            body,
            content_type,
            error_kind,
            error,
        };
        Ok(record::record(id, None, &observed.typed())?
            .as_str()
            .to_owned())
    };
    Ok(run()?)
}
