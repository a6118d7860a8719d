//! Data access of the release-gates module: the statement helpers, the caller's personas, the
//! ingest log and the release lock. The handlers that turn a checked envelope into rows of
//! `ops.*` are in `apply/`.

use pgrx::datum::DatumWithOid;
use pgrx::spi::{SpiClient, SpiTupleTable};
use pgrx::JsonB;
use serde_json::Value;

use super::envelope::{self, EventType, Header};
use super::error::{OpsError, OpsResult};
use super::personas;
use crate::core::prepared::{self, TEXT};

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

/// The ops personas the calling role (the outer user, even inside SECURITY DEFINER) is a member
/// of, in the matrix's order, from the role caches (no statement). A superuser is a member of
/// every role, as `pg_has_role(..., 'MEMBER')` says.
pub fn memberships() -> Vec<String> {
    // SAFETY: GetOuterUserId() is valid inside a transaction; get_role_oid (missing_ok) and
    // is_member_of_role only read the role caches; the names are NUL-terminated.
    unsafe {
        let me = pgrx::pg_sys::GetOuterUserId();
        personas::PERSONAS
            .iter()
            .filter(|p| {
                let Ok(name) = std::ffi::CString::new(**p) else {
                    return false;
                };
                let oid = pgrx::pg_sys::get_role_oid(name.as_ptr(), true);
                oid != pgrx::pg_sys::InvalidOid && pgrx::pg_sys::is_member_of_role(me, oid)
            })
            .map(|p| (*p).to_owned())
            .collect()
    }
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

/// What a try to take an idempotency key found.
pub enum Claim {
    /// The key is this envelope's now: the accepted row's ingest_id (its outcome comes later).
    Taken(String),
    /// An earlier envelope holds it: that row's ingest_id and result.
    Held(String, Value),
    /// Taken by a sender whose row this statement cannot see yet (it committed after the
    /// statement began, or released the key meanwhile): try again.
    Contended,
}

/// Take the key: insert the accepted row, or else find the accepted row that holds it, in one
/// statement (the insert waits for a concurrent sender of the same key to commit or roll back).
pub fn claim_key(client: &mut SpiClient<'_>, r: &Received<'_>) -> OpsResult<Claim> {
    let envelope_text = r.envelope.map(Value::to_string);
    let bytes = r.envelope_bytes.to_string();
    let a = log_args(r, &envelope_text, &bytes);
    let t = write(
        client,
        &format!(
            "WITH taken AS ( \
               INSERT INTO ops.event_ingest_log ({LOG_COLUMNS}) \
               VALUES ($1, $2::ops.ops_event_type, $3, $4, $5, $6::uuid, 'accepted', 200, NULL, NULL, NULL, NULL, \
                       $7::jsonb, $8::int, $9::timestamptz, $10) \
               ON CONFLICT (idempotency_key) WHERE processing_status = 'accepted' DO NOTHING \
               RETURNING ingest_id::text AS id), \
             held AS ( \
               SELECT l.ingest_id::text AS id, l.result FROM ops.event_ingest_log l \
                WHERE NOT EXISTS (SELECT FROM taken) \
                  AND l.idempotency_key = $1 AND l.processing_status = 'accepted') \
             SELECT (SELECT id FROM taken), (SELECT id FROM held), (SELECT result FROM held)"
        ),
        &a,
    )?;
    let row = t.first();
    let taken = row.get::<String>(1)?;
    let held = row.get::<String>(2)?;
    let result = row.get::<JsonB>(3)?;
    Ok(match (taken, held) {
        (Some(id), _) => Claim::Taken(id),
        (None, Some(id)) => Claim::Held(id, result.map_or(Value::Null, |j| j.0)),
        (None, None) => Claim::Contended,
    })
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
// The release lock
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
