//! Which way deliveries travel: pg_net (queued in the claim transaction, answered in its
//! tables) or flowgate's native client, by the `flowgate.http_transport` setting; and the
//! queueing of a request with pg_net.

use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{Map, Value};

use super::native;
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
    /// pg_net when that extension is installed, closed to other roles, usable by this role and
    /// served by a pg_net worker in this database, else native.
    ///
    /// pg_net as installed grants PUBLIC everything on its request queue and response table: any
    /// role could then read a queued request's body, rewrite its URL, write the response
    /// flowgate records as the delivery's outcome (and hands to its handler), or put a trigger
    /// on the queue that runs as whoever queues (the outbox's runner). So pg_net carries
    /// deliveries only where no role but superusers, the tables' owners and roles that can act
    /// as the runner anyway holds any write, TRUNCATE, REFERENCES or TRIGGER privilege on either
    /// table (on any column too) or may set the queue's id sequence; where neither PUBLIC nor
    /// PostgREST's `anon` and `authenticated` can read them; and where no user trigger sits on
    /// either table. The runner itself needs to queue (`net.http_*` insert as their caller),
    /// withdraw and read responses. Asked for by name where it is open or not usable, it is
    /// refused (0A000) with the statements that fix it.
    ///
    /// pg_net's one worker serves the database `pg_net.database_name` names: elsewhere its queue
    /// is never sent, so `auto` sends natively there.
    pub fn current() -> CoreResult<Transport> {
        let wanted = settings::get_text("flowgate.http_transport")?;
        if wanted == "native" {
            return Ok(Transport::Native);
        }
        let state = Spi::connect(|client| {
            let row = client.select(PG_NET_STATE, Some(1), &[])?.first();
            Ok::<_, CoreError>((
                row.get::<bool>(1)?.unwrap_or(false),
                row.get::<bool>(2)?.unwrap_or(true),
                row.get::<bool>(3)?.unwrap_or(false),
                row.get::<bool>(4)?.unwrap_or(false),
            ))
        })?;
        let (installed, open, usable, worker_here) = state;
        let refused = |dependency: &str, hint: String| {
            Err(CoreError::MissingDependency {
                feature: "flowgate.http_transport = pg_net".into(),
                dependency: dependency.into(),
                hint,
            })
        };
        match wanted.as_str() {
            "auto" if installed && !open && usable && worker_here => Ok(Transport::PgNet),
            "auto" => Ok(Transport::Native),
            _ if !installed => refused(
                "the pg_net extension",
                "CREATE EXTENSION pg_net, or set flowgate.http_transport to auto or native".into(),
            ),
            _ if open => refused(
                "a pg_net whose request queue and responses no other role can read, write or put a trigger on",
                "REVOKE ALL ON ALL TABLES IN SCHEMA net FROM PUBLIC; REVOKE ALL ON ALL SEQUENCES IN SCHEMA net FROM PUBLIC \
                 (and from every other role but the runner's, anon and authenticated included, column grants too); drop user \
                 triggers on net.http_request_queue and net._http_response; or set flowgate.http_transport to auto or native"
                    .into(),
            ),
            _ if !usable => refused(
                "a pg_net this role may queue on, withdraw from and read responses of",
                format!(
                    "as pg_net's owner: GRANT USAGE ON SCHEMA net TO {r}; GRANT SELECT, INSERT, DELETE ON net.http_request_queue TO {r}; \
                     GRANT SELECT, DELETE ON net._http_response TO {r}; GRANT USAGE ON ALL SEQUENCES IN SCHEMA net TO {r}",
                    r = current_role_quoted()?
                ),
            ),
            _ => Ok(Transport::PgNet),
        }
    }
}

/// `current_user`, quoted as an identifier.
fn current_role_quoted() -> CoreResult<String> {
    Ok(Spi::get_one::<String>("SELECT pg_catalog.quote_ident(current_user)")?.unwrap_or_default())
}

/// Whether pg_net is installed; whether it is open (a role other than superusers, the tables'
/// owners and members of the current role holds a privilege on its request queue, response
/// table or the queue's id sequence that lets it tamper, table-wide or on a column; PUBLIC,
/// `anon` or `authenticated` may read them; or a user trigger sits on either table); whether
/// the current role may queue, withdraw and read responses; and whether a pg_net worker serves
/// this database (pg_net's `pg_net.database_name`, readable by every role where pg_net is
/// preloaded; or its worker seen in `pg_stat_activity`, whose application name every role sees).
const PG_NET_STATE: &str = "\
    SELECT t.q IS NOT NULL AND t.r IS NOT NULL AND EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_net'), \
           CASE WHEN t.q IS NULL OR t.r IS NULL THEN false ELSE \
             EXISTS (SELECT FROM pg_catalog.pg_trigger g WHERE g.tgrelid IN (t.q, t.r) AND NOT g.tgisinternal) \
             OR EXISTS (SELECT FROM (SELECT 'public'::name, true UNION ALL \
                                     SELECT o.rolname, o.rolname IN ('anon', 'authenticated') FROM pg_catalog.pg_roles o \
                                      WHERE NOT o.rolsuper AND o.rolname !~ '^pg_' \
                                        AND o.oid NOT IN (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid IN (t.q, t.r)) \
                                        AND NOT pg_catalog.pg_has_role(o.oid, current_user, 'MEMBER')) x(role, reader) \
                         WHERE pg_catalog.has_schema_privilege(x.role, 'net', 'USAGE') \
                           AND (pg_catalog.has_table_privilege(x.role, t.q, 'DELETE, TRUNCATE, TRIGGER') \
                                OR pg_catalog.has_table_privilege(x.role, t.r, 'DELETE, TRUNCATE, TRIGGER') \
                                OR pg_catalog.has_any_column_privilege(x.role, t.q, 'INSERT, UPDATE, REFERENCES') \
                                OR pg_catalog.has_any_column_privilege(x.role, t.r, 'INSERT, UPDATE, REFERENCES') \
                                OR (t.s IS NOT NULL AND pg_catalog.has_sequence_privilege(x.role, t.s, 'UPDATE')) \
                                OR (x.reader AND (pg_catalog.has_any_column_privilege(x.role, t.q, 'SELECT') \
                                                  OR pg_catalog.has_any_column_privilege(x.role, t.r, 'SELECT'))))) END, \
           CASE WHEN t.q IS NULL OR t.r IS NULL THEN false ELSE \
             pg_catalog.has_schema_privilege('net', 'USAGE') \
             AND pg_catalog.has_table_privilege(t.q, 'INSERT') AND pg_catalog.has_table_privilege(t.q, 'SELECT') \
             AND pg_catalog.has_table_privilege(t.q, 'DELETE') AND pg_catalog.has_table_privilege(t.r, 'SELECT') \
             AND (t.s IS NULL OR pg_catalog.has_sequence_privilege(t.s, 'USAGE')) END, \
           CASE WHEN t.q IS NULL THEN false ELSE \
             coalesce(pg_catalog.current_setting('pg_net.database_name', true) = pg_catalog.current_database(), false) \
             OR EXISTS (SELECT FROM pg_catalog.pg_stat_activity a \
                         WHERE (a.backend_type LIKE 'pg\\_net%' OR a.application_name LIKE 'pg\\_net%') \
                           AND a.datname = pg_catalog.current_database()) END \
      FROM (SELECT pg_catalog.to_regclass('net.http_request_queue') AS q, pg_catalog.to_regclass('net._http_response') AS r, \
                   CASE WHEN pg_catalog.to_regclass('net.http_request_queue') IS NOT NULL \
                        THEN pg_catalog.to_regclass(pg_catalog.pg_get_serial_sequence('net.http_request_queue', 'id')) END AS s) t";

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

/// Whether pg_net can carry `req`: not with a resolved secret or as a sensitive delivery
/// (pg_net keeps requests until it sends them, and responses for hours, in tables its owner
/// may open to others), not a body that is not plain JSON, and only GET and POST (a GET
/// without a body: `net.http_get` would drop it).
pub fn pg_net_fits(req: &native::Request) -> bool {
    let plain_json = req
        .headers
        .iter()
        .all(|(k, v)| !k.eq_ignore_ascii_case("content-type") || v == "application/json");
    let method_fits = match req.method.as_str() {
        "GET" => req.body.is_none(),
        "POST" => true,
        _ => false,
    };
    !req.carries_secret && plain_json && method_fits
}

/// Queue requests that fit pg_net (`pg_net_fits`) with it, remembering each one's pg_net
/// request id and epoch (`epoch`: looked up, or begun, once for the claim; `epochs` false on a
/// schema without them); which were queued. All in one subtransaction; if pg_net refuses one
/// (its URL parser is stricter than flowgate's: a port past 65535, a character a host name may
/// not hold) that is rolled back and each is queued in its own, and those pg_net refuses
/// travel natively, where their failure is recorded, instead of aborting the claim of the
/// whole batch on every round. (One subtransaction per request would overflow each backend's
/// cache of 64 and slow every other session's visibility checks.)
pub fn queue_on_pg_net(
    reqs: &[&native::Request],
    epochs: bool,
    epoch: &mut Option<String>,
) -> CoreResult<Vec<bool>> {
    if reqs.is_empty() {
        return Ok(Vec::new());
    }
    // Outside the subtransactions: an epoch begun in one rolled back would not exist.
    if epochs && epoch.is_none() {
        *epoch = Some(pg_net_epoch()?);
    }
    let epoch = if epochs { epoch.as_deref() } else { None };
    let all = crate::core::subxact::run(|| -> CoreResult<()> {
        for req in reqs {
            remember_pg_net_request(req.id, pg_net_request(req)?, epoch)?;
        }
        Ok(())
    });
    match all {
        Ok(Ok(())) => return Ok(vec![true; reqs.len()]),
        Ok(Err(e)) => return Err(e),
        Err(_) => {}
    }
    let mut queued = Vec::with_capacity(reqs.len());
    for req in reqs {
        match crate::core::subxact::run(|| pg_net_request(req)) {
            Ok(request_id) => {
                remember_pg_net_request(req.id, request_id?, epoch)?;
                queued.push(true);
            }
            Err(refused) => {
                pgrx::debug1!(
                    "flowgate: pg_net refused delivery {} ({}); it travels natively",
                    req.id,
                    refused.sqlstate
                );
                queued.push(false);
            }
        }
    }
    Ok(queued)
}

/// Keep the pg_net request id (and epoch) a delivery was queued under.
fn remember_pg_net_request(
    id: i64,
    request_id: Option<i64>,
    epoch: Option<&str>,
) -> CoreResult<()> {
    match epoch {
        None => Spi::run_with_args(
            "UPDATE flowgate.deliveries SET transport_ref = $2, updated_at = clock_timestamp() WHERE id = $1",
            &[id.into(), request_id.into()],
        )?,
        Some(e) => Spi::run_with_args(
            "UPDATE flowgate.deliveries SET transport_ref = $2, transport_epoch = $3::uuid, updated_at = clock_timestamp() WHERE id = $1",
            &[id.into(), request_id.into(), e.into()],
        )?,
    }
    Ok(())
}

/// Queue `req` with `net.http_get` or `net.http_post`; pg_net's request id.
fn pg_net_request(req: &native::Request) -> CoreResult<Option<i64>> {
    let headers: Map<String, Value> = req
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let timeout = req.timeout.as_millis().min(i32::MAX as u128) as i32;
    let request_id = if req.method == "GET" {
        Spi::get_one_with_args::<i64>(
            "SELECT net.http_get(url := $1, headers := $2, timeout_milliseconds := $3)",
            &[
                req.url.as_str().into(),
                JsonB(Value::Object(headers)).into(),
                timeout.into(),
            ],
        )?
    } else {
        let body = req
            .body
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned());
        Spi::get_one_with_args::<i64>(
            "SELECT net.http_post(url := $1, body := $2::jsonb, headers := $3, timeout_milliseconds := $4)",
            &[
                req.url.as_str().into(),
                body.into(),
                JsonB(Value::Object(headers)).into(),
                timeout.into(),
            ],
        )?
    };
    Ok(request_id)
}
