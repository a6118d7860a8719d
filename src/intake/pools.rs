//! A pool's lifecycle and its operator actions: creating and dropping it (configuration,
//! inventory, queues, slot sequence), reading and holding its configuration, giving back lost
//! slots and replaying dead letters.

use pgrx::spi::{SpiClient, SpiTupleTable};
use pgrx::JsonB;
use serde_json::{Map, Value};

use crate::core::error::{CoreError, CoreResult};
use crate::core::prepared;
use crate::intake::pool::PoolId;
use crate::intake::store::log_outcome;

/// A pool made again under the id of a dropped one: its intents' message ids go on after the
/// highest its predecessor used, as its ledger rows (`<pool>:<msg id>`) and its requests
/// (`intake:<pool>:<stage>:<msg id>`) still carry them; a new queue would number from 1 again,
/// and its intents would find those taken (a duplicate in the ledger, a request already
/// delivered, an old answer applied to a new intent). The drop kept that highest id in
/// `intake.retired_pools`; a pool dropped before that table existed is judged by its ledger
/// rows and its deliveries not yet pruned.
fn continue_message_ids(client: &mut SpiClient<'_>, pool: &PoolId) -> CoreResult<()> {
    let seq = format!("pgmq.\"q_{}_msg_id_seq\"", pool.queue());
    let retired = if has_retired_pools() {
        "(SELECT last_msg_id FROM intake.retired_pools WHERE pool_id = $1)"
    } else {
        "NULL"
    };
    client.update(
        &format!(
            "SELECT setval('{seq}', m) FROM ( \
               SELECT greatest((SELECT max(msg_id) FROM intake.transactions WHERE pool_id = $1), \
                               {retired}, \
                               (SELECT max(split_part(idempotency_key, ':', 4)::bigint) FROM flowgate.deliveries \
                                 WHERE owner_module = 'intake' AND split_part(owner_id, ':', 1) = $1 \
                                   AND idempotency_key ~ '^intake:[a-z0-9_]+:(validate|commit):[0-9]{{1,18}}$')) AS m) x \
              WHERE m IS NOT NULL"
        ),
        None,
        &[pool.as_str().into()],
    )?;
    Ok(())
}

/// Whether the schema has `intake.retired_pools` (it is older until the extension is updated).
fn has_retired_pools() -> bool {
    crate::core::store::relation_id(c"intake", c"retired_pools").is_some()
}

/// Create a pool from its checked configuration `cfg` (engine_config columns, with `pool_id`
/// and `inventory`): its configuration row, counters, pgmq queue and dead-letter queue, slot
/// sequence, `inventory` available slots and its intact marker. 23505 if it exists.
pub fn create(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    inventory: i32,
    cfg: Map<String, Value>,
) -> CoreResult<()> {
    let cols: Vec<String> = cfg.keys().map(|k| format!("\"{k}\"")).collect();
    let list = cols.join(", ");
    let exists = client.select(
        "SELECT FROM intake.engine_config WHERE pool_id = $1",
        Some(1),
        &[pool.as_str().into()],
    )?;
    if !exists.is_empty() {
        return Err(CoreError::Duplicate {
            kind: "pool".into(),
            key: pool.as_str().into(),
        });
    }
    client.update(
        &format!(
            "INSERT INTO intake.engine_config ({list}) SELECT {list} FROM jsonb_populate_record(NULL::intake.engine_config, $1)"
        ),
        None,
        &[JsonB(Value::Object(cfg)).into()],
    )?;
    for table in ["intake.pool_totals", "intake.drain_clock"] {
        client.update(
            &format!("INSERT INTO {table} (pool_id) VALUES ($1)"),
            None,
            &[pool.as_str().into()],
        )?;
    }
    client.update("SELECT pgmq.create($1)", None, &[pool.queue().into()])?;
    client.update("SELECT pgmq.create($1)", None, &[pool.dlq().into()])?;
    // Before pgmq 1.6 a queue's tables are members of pgmq, left out of dumps: say so once,
    // where the operator sees it (README: requirements).
    let old_pgmq = client
        .select(
            "SELECT coalesce((SELECT pg_catalog.regexp_split_to_array( \
                                        substring(extversion FROM '^[0-9]+(?:[.][0-9]+)*'), '[.]')::int[] < '{1,6}' \
                                FROM pg_catalog.pg_extension WHERE extname = 'pgmq'), false)",
            Some(1),
            &[],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false);
    if old_pgmq {
        pgrx::warning!(
            "intake pool {}: pgmq before 1.6 keeps its queue tables out of pg_dump, so a backup would not hold its queued intents; ALTER EXTENSION pgmq UPDATE (1.6 or later)",
            pool.as_str()
        );
    }
    for relation in pool.queue_relations() {
        owner_only(client, &relation)?;
    }
    continue_message_ids(client, pool)?;
    // A member of the extension, so DROP EXTENSION takes it along.
    client.update(
        &format!("CREATE SEQUENCE {} AS int MINVALUE 1", pool.slot_sequence()),
        None,
        &[],
    )?;
    // Owner-only before it joins the extension, which records its privileges then: a dump
    // carries no REVOKE for a sequence it does not create.
    owner_only(client, &pool.slot_sequence())?;
    client.update(
        &format!(
            "ALTER EXTENSION flowgate ADD SEQUENCE {}",
            pool.slot_sequence()
        ),
        None,
        &[],
    )?;
    client.update(
        "INSERT INTO intake.allocations (pool_id, slot) SELECT $1, g FROM generate_series(1, $2) g",
        None,
        &[pool.as_str().into(), inventory.into()],
    )?;
    client.update(
        "INSERT INTO intake.pool_state (pool_id) VALUES ($1)",
        None,
        &[pool.as_str().into()],
    )?;
    Ok(())
}

/// A pool's live configuration (read at the start of every drain).
#[derive(Debug, Clone)]
pub struct Config {
    pub inventory: i32,
    pub batch_size: i32,
    pub visibility_timeout: i32,
    pub webhook: Option<String>,
    pub webhook_secret: Option<String>,
    pub commit_target: Option<String>,
    pub commit_secret: Option<String>,
    pub timeout_ms: i32,
    pub max_retries: i32,
    pub rate_limit: Option<i32>,
    pub paused: bool,
}

/// A pool's configuration row (`$1` the pool).
macro_rules! config_row {
    () => {
        "SELECT inventory, batch_size, visibility_timeout_seconds, validation_webhook_url, validation_auth_secret, \
                commit_target, commit_auth_secret, request_timeout_ms, max_retries, rate_limit_per_second, paused \
           FROM intake.engine_config WHERE pool_id = $1"
    };
}
const CONFIG: &str = config_row!();
/// The same, holding the pool ([`hold`]).
const CONFIG_HELD: &str = concat!(config_row!(), " FOR KEY SHARE");

pub fn load_config(client: &SpiClient<'_>, pool: &PoolId) -> CoreResult<Config> {
    config_of(
        pool,
        prepared::read(client, CONFIG, &[pool.as_str().into()])?,
    )
}

/// The configuration read by [`CONFIG`] (P0002 when there was no row).
fn config_of(pool: &PoolId, rows: SpiTupleTable<'_>) -> CoreResult<Config> {
    if rows.is_empty() {
        return Err(CoreError::not_found("pool", pool.as_str()));
    }
    let r = rows.first();
    Ok(Config {
        inventory: r.get(1)?.unwrap_or(0),
        batch_size: r.get(2)?.unwrap_or(100),
        visibility_timeout: r.get(3)?.unwrap_or(45),
        webhook: r.get(4)?,
        webhook_secret: r.get(5)?,
        commit_target: r.get(6)?,
        commit_secret: r.get(7)?,
        timeout_ms: r.get(8)?.unwrap_or(10_000),
        max_retries: r.get(9)?.unwrap_or(5),
        rate_limit: r.get(10)?,
        paused: r.get(11)?.unwrap_or(false),
    })
}

/// Hold the pool for this transaction: lock its configuration row `FOR KEY SHARE`, so it cannot
/// be dropped until the transaction ends; a drop in progress is waited for, and then the pool is
/// gone (`false`). Every transaction that writes a pool's rows takes this first, in the order
/// `intake.drop_pool` takes its locks (the configuration row, then the pool's rows): otherwise
/// a writer holding an intent's row, whose foreign key then needs the configuration row, and a
/// drop holding that row and deleting the intent's, would wait for each other.
pub fn hold(client: &mut SpiClient<'_>, pool: &PoolId) -> CoreResult<bool> {
    Ok(!prepared::exec(
        client,
        "SELECT FROM intake.engine_config WHERE pool_id = $1 FOR KEY SHARE",
        &[pool.as_str().into()],
    )?
    .is_empty())
}

/// [`hold`] for a call naming the pool: P0002 when it does not exist (or was just dropped).
pub fn held(client: &mut SpiClient<'_>, pool: &PoolId) -> CoreResult<()> {
    if hold(client, pool)? {
        Ok(())
    } else {
        Err(CoreError::not_found("pool", pool.as_str()))
    }
}

/// [`held`], reading the pool's configuration in the same statement.
pub fn held_config(client: &mut SpiClient<'_>, pool: &PoolId) -> CoreResult<Config> {
    config_of(
        pool,
        prepared::exec(client, CONFIG_HELD, &[pool.as_str().into()])?,
    )
}

/// Drop a pool: its queues, sequence, inventory and configuration, and its validation requests
/// not sent yet (dead). P0002 if it does not exist.
///
/// The order is the one every other session takes: the configuration row first (its writers
/// hold it, [`hold`]), then the slot sequence, which a claim locks before its statement (see
/// `claim::sequence_exists`): claims under way finish first, later ones wait and then find the
/// pool gone. The queues and the pool's rows go last, when nothing of the pool can be running.
pub fn drop(client: &mut SpiClient<'_>, pool: &PoolId) -> CoreResult<bool> {
    let gone = client.update(
        "DELETE FROM intake.engine_config WHERE pool_id = $1 RETURNING 1",
        None,
        &[pool.as_str().into()],
    )?;
    if gone.is_empty() {
        return Err(CoreError::not_found("pool", pool.as_str()));
    }
    // A restored database has no slot sequence until the pool is rebuilt (pg_dump leaves out
    // an extension's member sequences): there is nothing to drop then.
    if has_slot_sequence(pool) {
        client.update(
            &format!(
                "ALTER EXTENSION flowgate DROP SEQUENCE {}",
                pool.slot_sequence()
            ),
            None,
            &[],
        )?;
        client.update(
            &format!("DROP SEQUENCE {}", pool.slot_sequence()),
            None,
            &[],
        )?;
    }
    // The highest message id the pool used (its queue's counter; a replayed intent takes a new
    // one there), kept for a pool made again under its id (`continue_message_ids`). (Not before
    // `ALTER EXTENSION flowgate UPDATE` has made the table.)
    if has_retired_pools() {
        const KEEP: &str = "INSERT INTO intake.retired_pools AS r (pool_id, last_msg_id) \
             SELECT $1, m FROM (SELECT greatest(pg_catalog.pg_sequence_last_value(pg_catalog.to_regclass($2)), \
                                                (SELECT max(msg_id) FROM intake.transactions WHERE pool_id = $1)) AS m) x \
              WHERE m IS NOT NULL \
             ON CONFLICT (pool_id) DO UPDATE SET last_msg_id = greatest(r.last_msg_id, EXCLUDED.last_msg_id), \
                                                 dropped_at = now()";
        let seq = format!("pgmq.\"q_{}_msg_id_seq\"", pool.queue());
        client.update(KEEP, None, &[pool.as_str().into(), seq.as_str().into()])?;
    }
    for q in [pool.queue(), pool.dlq()] {
        client.update("SELECT pgmq.drop_queue($1)", None, &[q.into()])?;
    }
    // Its validation requests not sent yet never will be: a payment webhook called for a pool
    // that is gone would charge for nothing. (One in flight finishes; its answer finds no pool.)
    // A ledger commit still goes: its payment was taken.
    client.update(
        "UPDATE flowgate.deliveries SET status = 'dead', \
                last_error = 'intake pool ' || $1 || ' was dropped before this request was sent', \
                updated_at = clock_timestamp() \
          WHERE owner_module = 'intake' AND split_part(owner_id, ':', 1) = $1 AND status = 'pending' \
            AND handler = 'intake.validation'",
        None,
        &[pool.as_str().into()],
    )?;
    // The tables without a foreign key to engine_config (see sql/intake/tables.sql).
    for table in ["intake.user_claims", "intake.allocations"] {
        client.update(
            &format!("DELETE FROM {table} WHERE pool_id = $1"),
            None,
            &[pool.as_str().into()],
        )?;
    }
    Ok(true)
}

/// Whether the pool's slot sequence exists (a restore leaves it out: pg_dump skips an
/// extension's member sequences), from the catalog cache.
pub fn has_slot_sequence(pool: &PoolId) -> bool {
    std::ffi::CString::new(pool.slot_sequence_name())
        .is_ok_and(|name| crate::core::store::relation_id(c"intake", &name).is_some())
}

/// Take back whatever the creating role's default privileges (or pgmq) granted on a pool's
/// table or sequence: a role that could `setval` the slot sequence would make the pool sell out
/// with nothing sold, and one that could read or write its queue would read every user's claim
/// intents, forge or delete them. They are flowgate's own state, as the install's objects are.
pub fn owner_only(client: &mut SpiClient<'_>, relation: &str) -> CoreResult<()> {
    let revokes = client.select(
        "SELECT pg_catalog.format('REVOKE ALL ON %s %s FROM %s', \
                CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, c.oid::regclass, \
                CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(r.rolname) END) \
           FROM pg_catalog.pg_class c CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a \
           LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee \
          WHERE c.oid = $1::regclass AND a.grantee <> c.relowner",
        None,
        &[relation.into()],
    )?;
    let statements: Vec<String> = revokes
        .into_iter()
        .filter_map(|row| row.get::<String>(1).ok().flatten())
        .collect();
    for statement in statements {
        client.update(&statement, None, &[])?;
    }
    Ok(())
}

/// How many slot numbers the pool's sequence has handed out (its counter).
pub fn handed_out(client: &SpiClient<'_>, pool: &PoolId) -> CoreResult<i64> {
    Ok(client
        .select(
            &format!(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {}",
                pool.slot_sequence()
            ),
            Some(1),
            &[],
        )?
        .first()
        .get_one::<i64>()?
        .unwrap_or(0))
}

/// Whether the pool's UNLOGGED state is intact (its marker row and its slot sequence exist).
pub fn intact(client: &SpiClient<'_>, pool: &PoolId) -> CoreResult<bool> {
    Ok(client
        .select(
            "SELECT EXISTS (SELECT FROM intake.pool_state WHERE pool_id = $1) \
                AND pg_catalog.to_regclass($2) IS NOT NULL",
            Some(1),
            &[pool.as_str().into(), pool.slot_sequence().into()],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false))
}

/// Whether the pool has given-back slots waiting for a claim.
pub fn has_released_slots(client: &SpiClient<'_>, pool: &PoolId) -> CoreResult<bool> {
    Ok(client
        .select(
            "SELECT EXISTS (SELECT FROM intake.released_slots WHERE pool_id = $1)",
            Some(1),
            &[pool.as_str().into()],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false))
}

/// Give back slots whose claim aborted after taking its number (the sequence does not roll
/// back): available slots at or below the counter that no claim holds.
pub fn reclaim_slots(client: &mut SpiClient<'_>, pool: &PoolId) -> CoreResult<i64> {
    let handed_out = handed_out(client, pool)?;
    Ok(client
        .update(
            "WITH lost AS (SELECT slot FROM intake.allocations WHERE pool_id = $1 AND slot <= $2 \
                           AND status = 'available' FOR UPDATE SKIP LOCKED), \
                  ins AS (INSERT INTO intake.released_slots (pool_id, slot) SELECT $1, slot FROM lost \
                          ON CONFLICT DO NOTHING RETURNING 1) \
             SELECT count(*) FROM ins",
            None,
            &[pool.as_str().into(), (handed_out.min(i64::from(i32::MAX)) as i32).into()],
        )?
        .first()
        .get_one::<i64>()?
        .unwrap_or(0))
}

/// Re-queue dead-lettered intents (all, or those listed). Each keeps its origin message id, so
/// the webhook and the ledger see the same idempotency key; a validated intent is not validated
/// again. Returns the new message ids.
pub fn replay(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    ids: Option<Vec<i64>>,
) -> CoreResult<Vec<i64>> {
    let rows = client.update(
        &format!(
            "WITH picked AS (SELECT msg_id, message FROM pgmq.\"q_{dlq}\" WHERE $1::bigint[] IS NULL OR msg_id = ANY ($1) \
                              ORDER BY msg_id FOR UPDATE SKIP LOCKED), \
                  gone AS (DELETE FROM pgmq.\"q_{dlq}\" d USING picked WHERE d.msg_id = picked.msg_id RETURNING picked.message) \
             SELECT (SELECT pgmq.send($2, (message - 'dlq_reason' - 'dead_lettered_at' - 'read_ct' - 'last_error') \
                                          || jsonb_build_object('replayed_at', clock_timestamp()))) FROM gone",
            dlq = pool.dlq()
        ),
        None,
        &[ids.into(), pool.queue().into()],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        if let Some(id) = r.get::<i64>(1)? {
            out.push(id);
        }
    }
    log_outcome(client, pool, "replayed", out.len() as i64)?;
    Ok(out)
}
