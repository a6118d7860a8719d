//! Which way deliveries travel: pg_net (queued in the claim transaction, answered in its
//! tables) or flowgate's native client, by the `flowgate.http_transport` setting.

use pgrx::prelude::*;

use crate::core::error::{CoreError, CoreResult};
use crate::core::store as settings;

/// How a batch travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Native,
    PgNet,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Native => "native",
            Transport::PgNet => "pg_net",
        }
    }

    /// The transport in use now: the `flowgate.http_transport` setting, with `auto` meaning
    /// pg_net when that extension is installed and closed to PUBLIC, else native.
    ///
    /// pg_net as installed grants PUBLIC its request queue and response table: any role could
    /// then read a queued request's body and write the response flowgate records as the
    /// delivery's outcome (and hands to its handler). So pg_net carries deliveries only where
    /// neither PUBLIC nor PostgREST's `anon` and `authenticated` (grants of their own included)
    /// can read `net.http_request_queue` or write `net._http_response`; asked for by name where
    /// it is open, it is refused (0A000) with the REVOKEs that close it.
    pub fn current() -> CoreResult<Transport> {
        let wanted = settings::get_text("flowgate.http_transport")?;
        if wanted == "native" {
            return Ok(Transport::Native);
        }
        let (has_pg_net, open) = Spi::get_two::<bool, bool>(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_net'), \
                    CASE WHEN pg_catalog.to_regclass('net.http_request_queue') IS NULL \
                           OR pg_catalog.to_regclass('net._http_response') IS NULL THEN false \
                         ELSE EXISTS (SELECT FROM (SELECT 'public'::name UNION ALL \
                                                     SELECT rolname FROM pg_catalog.pg_roles WHERE rolname IN ('anon', 'authenticated')) r(role) \
                                       WHERE pg_catalog.has_schema_privilege(r.role, 'net', 'USAGE') \
                                         AND (pg_catalog.has_table_privilege(r.role, 'net.http_request_queue', 'SELECT') \
                                              OR pg_catalog.has_table_privilege(r.role, 'net._http_response', 'INSERT, UPDATE, DELETE'))) END",
        )?;
        let (has_pg_net, open) = (has_pg_net.unwrap_or(false), open.unwrap_or(true));
        match (wanted.as_str(), has_pg_net, open) {
            ("auto", false, _) | ("auto", true, true) => Ok(Transport::Native),
            ("pg_net", true, false) | ("auto", true, false) => Ok(Transport::PgNet),
            ("pg_net", true, true) => Err(CoreError::MissingDependency {
                feature: "flowgate.http_transport = pg_net".into(),
                dependency: "a pg_net whose request queue and responses PUBLIC cannot read or write".into(),
                hint: "REVOKE SELECT ON net.http_request_queue FROM PUBLIC; REVOKE INSERT, UPDATE, DELETE ON net._http_response FROM PUBLIC \
                       (and from anon and authenticated where they were granted them); or set flowgate.http_transport to auto or native"
                    .into(),
            }),
            _ => Err(CoreError::MissingDependency {
                feature: "flowgate.http_transport = pg_net".into(),
                dependency: "the pg_net extension".into(),
                hint: "CREATE EXTENSION pg_net, or set flowgate.http_transport to auto or native"
                    .into(),
            }),
        }
    }
}

/// Whether this database's schema has the pg_net epoch (`flowgate.deliveries.transport_epoch`,
/// 0.1.1): the library runs against the schema it is installed beside until
/// `ALTER EXTENSION flowgate UPDATE`, and sends as before the epoch until then.
pub fn pg_net_epoch_supported() -> bool {
    settings::column_exists(c"flowgate", c"deliveries", c"transport_epoch")
}

/// The current pg_net epoch as SQL: the epoch row begun for the pg_net installed now (its
/// response table, by OID: a pg_net dropped and created again numbers from 1 too), or NULL.
pub const CURRENT_EPOCH: &str = "(SELECT e.epoch FROM flowgate.pg_net_epoch e \
     WHERE e.net_relid = pg_catalog.to_regclass('net._http_response'))";

/// The current pg_net epoch (`flowgate.pg_net_epoch`), begun now when there is none: pg_net's
/// request ids name requests only within one epoch, since a crash (or a restore, or a promoted
/// standby) resets pg_net's unlogged id sequence, queue and responses, and that row with them;
/// so does dropping pg_net and creating it again, which the row's `net_relid` tells.
/// Statements that write (a new snapshot each), so an epoch a concurrent runner began and
/// committed while this one waited on it is seen.
pub fn pg_net_epoch() -> CoreResult<String> {
    current_or_begun(
        CURRENT_EPOCH,
        &[
            "DELETE FROM flowgate.pg_net_epoch \
              WHERE net_relid IS DISTINCT FROM pg_catalog.to_regclass('net._http_response')",
            "INSERT INTO flowgate.pg_net_epoch (epoch, net_relid) \
             SELECT pg_catalog.gen_random_uuid(), pg_catalog.to_regclass('net._http_response') \
              WHERE pg_catalog.to_regclass('net._http_response') IS NOT NULL \
             ON CONFLICT DO NOTHING",
        ],
        "the pg_net epoch",
        "a concurrent runner began it after this transaction's snapshot; the next round queues on pg_net",
    )
}

/// The id `current` (SQL) names, or the one `begin` (statements) makes when there is none. The
/// look-ups write (a new snapshot each), so one a concurrent runner began and committed while
/// this one waited on it is seen; one begun after this transaction's snapshot is a Busy error
/// (40001: the caller retries).
fn current_or_begun(current: &str, begin: &[&str], what: &str, hint: &str) -> CoreResult<String> {
    let current_sql = format!("SELECT {current}::text");
    let look = || {
        Spi::connect_mut(|client| {
            crate::core::prepared::first_text(crate::core::prepared::exec(
                client,
                &current_sql,
                &[],
            )?)
        })
    };
    if let Some(id) = look()? {
        return Ok(id);
    }
    Spi::connect_mut(|client| {
        for sql in begin {
            crate::core::prepared::exec(client, sql, &[])?;
        }
        Ok::<_, CoreError>(())
    })?;
    look()?.ok_or_else(|| CoreError::Busy {
        what: what.into(),
        hint: hint.into(),
    })
}

/// Whether this database's schema has the server run (`flowgate.server_run`, 0.1.1): before
/// `ALTER EXTENSION flowgate UPDATE` a native attempt in flight waits for its lease as before.
pub fn server_run_supported() -> bool {
    settings::relation_id(c"flowgate", c"server_run").is_some()
}

/// The current server run as SQL: the run row begun under this postmaster's start time (compared
/// for equality: a clock stepped back does not make a run stale), or NULL after a restart or a
/// crash (which empties the UNLOGGED row).
pub const CURRENT_RUN: &str = "(SELECT r.run FROM flowgate.server_run r \
     WHERE r.started = pg_catalog.pg_postmaster_start_time())";

/// The current server run (`flowgate.server_run`), begun now when there is none: the native
/// attempts claimed in it are sent by this server's backends; one of an earlier run lost its
/// sender when the server restarted or crashed. Statements that write (a new snapshot each), so
/// a run a concurrent runner began and committed while this one waited on it is seen.
pub fn server_run() -> CoreResult<String> {
    current_or_begun(
        CURRENT_RUN,
        &["INSERT INTO flowgate.server_run AS r (run, started) \
           VALUES (pg_catalog.gen_random_uuid(), pg_catalog.pg_postmaster_start_time()) \
           ON CONFLICT (only_row) DO UPDATE SET run = EXCLUDED.run, started = EXCLUDED.started \
            WHERE r.started IS DISTINCT FROM EXCLUDED.started"],
        "the server run",
        "a concurrent runner began it after this transaction's snapshot; the next round sends",
    )
}
