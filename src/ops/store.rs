//! Data access of the release-gates module: the statement helpers, the caller's personas, the
//! ingest log and the release lock. The handlers that turn a checked envelope into rows of
//! `ops.*` are in `apply/`.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::spi::{SpiClient, SpiTupleTable};

use super::envelope::{self, EventType, Header};
use super::error::OpsResult;
use super::personas;
use crate::core::answer::JsonbAnswer;
use crate::core::prepared::{self, JSONB, TEXT, UUID};

/// A release id (checked by the envelope) as a `uuid` argument.
pub(super) fn uuid_arg(id: &str) -> OpsResult<DatumWithOid<'static>> {
    let parsed = envelope::parse_uuid("release_id", id)?;
    Ok(pgrx::Uuid::from_bytes(*parsed.as_bytes()).into())
}

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
    /// The envelope as sent (a `jsonb` argument of the call), unless it was over the size limit.
    pub envelope: Option<pg_sys::Datum>,
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
    /// The answer (a `jsonb` datum of the call), logged with the row; None for a duplicate.
    pub result: Option<pg_sys::Datum>,
    pub original_ingest_id: Option<&'a str>,
}

impl Outcome<'_> {
    /// An accepted envelope's outcome, logged with its answer.
    pub fn accepted(answer: &JsonbAnswer) -> Outcome<'static> {
        Outcome {
            status: "accepted",
            http_status: 200,
            error: None,
            error_message: None,
            result: Some(answer.datum()),
            original_ingest_id: None,
        }
    }
}

/// The log row's insert; an accepted row takes the idempotency key (see [`log`]). A plain
/// insert, not `ON CONFLICT DO NOTHING`: only an accepted row can conflict, and a conflict is a
/// race lost to a concurrent sender of the same key, which the caller's subtransaction catches
/// (speculative insertion would cost every row a confirmation record in the WAL).
const LOG_INSERT: &str = "INSERT INTO ops.event_ingest_log (ingest_id, idempotency_key, event_type, received_event_type, \
        schema_version, source_system, release_id, processing_status, http_status, error, error_message, result, \
        original_ingest_id, envelope, envelope_bytes, occurred_at, received_by) \
     VALUES ($17::uuid, $1, $2::ops.ops_event_type, $3, $4, $5, $6::uuid, $11, $12::int, $13, $14, $15, \
             $16::uuid, $7, $8::int, $9::timestamptz, $10) \
     RETURNING pg_catalog.set_config('response.status', $12, true)";

fn log_args<'a>(r: &'a Received<'a>, bytes: &'a str) -> [Option<&'a str>; 9] {
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
        Some(bytes),
        r.occurred_at,
        Some(r.received_by),
    ]
}

/// The common table expressions that take the lock of the release `$release` (a `uuid`
/// placeholder: a text one cast in the filter would be parsed again for every row a small table
/// is scanned for) when `$cond` holds and the release exists (see [`lock_release_row`]); the
/// CTE `locked` returns `taken` when it did. The release's row is locked (`FOR NO KEY UPDATE`),
/// then its row in `ops.release_locks` is rewritten by an upsert that changes nothing; in a
/// schema from before that table (an earlier version's, until `ALTER EXTENSION flowgate
/// UPDATE`) the release's own row is rewritten instead.
macro_rules! take_release {
    (lock_row, $release:literal, $cond:literal) => {
        concat!(
            "release AS (SELECT r.release_id FROM ops.releases r WHERE r.release_id = ",
            $release,
            " AND ",
            $cond,
            " FOR NO KEY UPDATE OF r), \
             locked AS (INSERT INTO ops.release_locks AS l (release_id) SELECT release_id FROM release \
                        ON CONFLICT (release_id) DO UPDATE SET release_id = EXCLUDED.release_id \
                        RETURNING true AS taken)"
        )
    };
    (release_row, $release:literal, $cond:literal) => {
        concat!(
            "locked AS (UPDATE ops.releases r SET status = r.status WHERE r.release_id = ",
            $release,
            " AND ",
            $cond,
            " RETURNING true AS taken)"
        )
    };
}

/// Whether the schema has `ops.release_locks` (it is older until the extension is updated).
fn has_lock_rows() -> bool {
    crate::core::store::relation_id(c"ops", c"release_locks").is_some()
}

/// What an envelope finds before it is applied.
pub enum Precheck {
    /// An accepted row holds its idempotency key.
    Held(HeldKey),
    /// The key is free (as far as committed rows show); the release row, if one was to be
    /// locked, is locked.
    Clear(ReleaseLock),
}

/// The accepted row that holds an idempotency key.
pub struct HeldKey {
    pub ingest_id: String,
    /// Its result as this envelope's duplicate answer: `status` duplicate, `receipt_id` the
    /// receipt (built by the statement, a datum of the call).
    pub answer: Option<JsonbAnswer>,
    /// Who sent it (`received_by`).
    pub sender: String,
}

/// The release lock an envelope's events are applied under ([`lock_release_row`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReleaseLock {
    /// Not locked (the envelope names no release, or creates it).
    NotTaken,
    /// Taken by this transaction.
    Taken,
    /// The release does not exist.
    Missing,
}

/// Look for the accepted row that holds an idempotency key and, when there is none, take the
/// lock of the release the envelope is about as [`lock_release_row`] does (so events of one
/// release are applied one at a time): one statement. The look uses the statement's snapshot,
/// taken before any lock wait, so it does not see what the previous lock holder committed; the
/// statements after it do. A concurrent sender of the same key is found later: by the accepted
/// log row's insert, or by the look again after a refusal. The lock is held until the caller's
/// transaction ends, also when the event is refused.
///
/// A held key's answer, should this envelope be its duplicate under the ingest id `receipt`, is
/// built by the statement. Must run in the function's own `Spi::connect` (see `JsonbAnswer`).
pub fn precheck(
    client: &mut SpiClient<'_>,
    key: &str,
    receipt: &str,
    release_to_lock: Option<&str>,
) -> OpsResult<Precheck> {
    // The key is $1 and the receipt $2 in both forms.
    macro_rules! held {
        () => {
            "SELECT ingest_id::text AS id, \
                    CASE WHEN result IS NULL OR jsonb_typeof(result) = 'object' \
                         THEN coalesce(result, jsonb_build_object('ingest_id', ingest_id::text)) \
                              || jsonb_build_object('status', 'duplicate', 'receipt_id', $2::text) \
                         ELSE result END AS answer, \
                    received_by \
               FROM ops.event_ingest_log WHERE idempotency_key = $1 AND processing_status = 'accepted'"
        };
    }
    macro_rules! held_or_lock {
        ($form:ident) => {
            concat!(
                "WITH held AS (",
                held!(),
                "), ",
                take_release!($form, "$3", "NOT EXISTS (SELECT FROM held)"),
                " SELECT (SELECT id FROM held), (SELECT answer FROM held), (SELECT received_by FROM held), \
                        (SELECT taken FROM locked)"
            )
        };
    }
    // Both forms run as writes: a read-only SPI statement would see the calling statement's
    // snapshot, and miss a sender of the same key that committed since it began.
    let t = match release_to_lock {
        None => write(client, held!(), &[Some(key), Some(receipt)])?,
        Some(release) => prepared::run(
            client,
            if has_lock_rows() {
                held_or_lock!(lock_row)
            } else {
                held_or_lock!(release_row)
            },
            &[TEXT, TEXT, UUID],
            &[key.into(), receipt.into(), uuid_arg(release)?],
        )?,
    };
    if t.is_empty() {
        return Ok(Precheck::Clear(ReleaseLock::NotTaken));
    }
    let row = t.first();
    let lock = match release_to_lock {
        None => ReleaseLock::NotTaken,
        Some(_) if row.get::<bool>(4)? == Some(true) => ReleaseLock::Taken,
        Some(_) => ReleaseLock::Missing,
    };
    Ok(match row.get::<String>(1)? {
        Some(ingest_id) => Precheck::Held(HeldKey {
            ingest_id,
            answer: JsonbAnswer::from_current(&row, 2)?,
            sender: row.get::<String>(3)?.unwrap_or_default(),
        }),
        None => Precheck::Clear(lock),
    })
}

/// Write the envelope's log row, once, with its outcome, and make PostgREST answer with the
/// outcome's HTTP status (`response.status`, set by the same statement). An accepted row takes
/// the idempotency key: when an accepted row holds it already, the insert waits for that
/// concurrent sender to commit or roll back, and raises a unique violation (23505) if it
/// committed. Only an accepted row can: the unique index holds accepted rows alone.
pub fn log(
    client: &mut SpiClient<'_>,
    ingest_id: &str,
    r: &Received<'_>,
    o: &Outcome<'_>,
) -> OpsResult<()> {
    let bytes = r.envelope_bytes.to_string();
    let a = log_args(r, &bytes);
    let http = o.http_status.to_string();
    let jsonb = |d: Option<pg_sys::Datum>| match d {
        // SAFETY: a jsonb datum of this call (the argument, or an answer built in the call's
        // memory context), valid while the statement runs.
        Some(d) => unsafe { DatumWithOid::new(d, pg_sys::JSONBOID) },
        None => DatumWithOid::null_oid(pg_sys::JSONBOID),
    };
    // Text arguments are copied into the statement's arguments.
    let text = |v: Option<&str>| -> DatumWithOid<'static> { v.into() };
    let args = [
        text(a[0]),
        text(a[1]),
        text(a[2]),
        text(a[3]),
        text(a[4]),
        text(a[5]),
        jsonb(r.envelope),
        text(a[6]),
        text(a[7]),
        text(a[8]),
        text(Some(o.status)),
        text(Some(&http)),
        text(o.error),
        text(o.error_message),
        jsonb(o.result),
        text(o.original_ingest_id),
        text(Some(ingest_id)),
    ];
    let mut types = [TEXT; 17];
    types[6] = JSONB;
    types[14] = JSONB;
    prepared::run(client, LOG_INSERT, &types, &args)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The release lock
// ---------------------------------------------------------------------------------------------

/// Take the release's lock, so events of one release are applied (and its gates evaluated) one
/// at a time; false when the release does not exist (also when it was deleted while this
/// waited). Two rows are taken, in this order:
/// - the release's row in `ops.releases`, `FOR NO KEY UPDATE`: writers of the release wait here,
///   in the order every writer of a release takes its rows (the release first: a direct edit of
///   the release, a deletion of it), and a writer that waited finds a release deleted meanwhile
///   gone;
/// - its row in `ops.release_locks`, rewritten by an upsert that changes nothing: a lock alone is
///   no concurrent update to Postgres, a rewrite is. A `REPEATABLE READ` transaction whose
///   snapshot is older than another evaluation of the release would otherwise evaluate from
///   facts that miss what that one wrote (two events can each leave the stored statuses as they
///   were while their facts together change them); with the rewrite it fails with 40001 here.
///   The table is UNLOGGED and narrow: the rewrite writes no WAL and checks no constraint, where
///   rewriting the release's own row ran its six CHECKs and logged a new version of it.
///
/// Before `ALTER EXTENSION flowgate UPDATE` has made the table, the release's own row is
/// rewritten instead (as the earlier version did).
///
/// The lock is taken by this transaction itself, not by the subtransaction an envelope's
/// handler runs in: rows its parent had locked, locked or rewritten again by the
/// subtransaction, would record both in a new MultiXact, on every event. An envelope refused
/// after the precheck leaves the lock row's new version (its log row is written all the same).
pub(super) fn lock_release_row(client: &mut SpiClient<'_>, release_id: &str) -> OpsResult<bool> {
    macro_rules! lock {
        ($form:ident) => {
            concat!(
                "WITH ",
                take_release!($form, "$1", "true"),
                " SELECT taken FROM locked"
            )
        };
    }
    let t = prepared::run(
        client,
        if has_lock_rows() {
            lock!(lock_row)
        } else {
            lock!(release_row)
        },
        &[UUID],
        &[uuid_arg(release_id)?],
    )?;
    Ok(!t.is_empty())
}
