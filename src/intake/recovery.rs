//! Crash and restore recovery of a pool's UNLOGGED state: the rebuild from the logged intents,
//! and the heal a claim runs when it finds the state gone.

use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::Value;

use crate::core::error::{CoreError, CoreResult};
use crate::core::prepared;
use crate::intake::pool::PoolId;

/// Rebuild a pool's UNLOGGED state (inventory, given-back slots, per-user counts, the slot
/// sequence when a restore lost it) from the logged record: every intent in its pgmq queue,
/// archive and dead-letter queue is a claim. Claimed slots become `locked` (or `consumed` when
/// committed) with their resource and user, the rest `available`; slots below the counter that
/// no intent holds are given back. Blocks the pool's claims (not other pools') while it runs;
/// marks the pool intact.
pub fn rebuild(client: &mut SpiClient<'_>, pool: &PoolId) -> CoreResult<Value> {
    let seq = pool.slot_sequence();

    let cfg = prepared::exec(
        client,
        "SELECT inventory FROM intake.engine_config WHERE pool_id = $1 FOR UPDATE",
        &[pool.as_str().into()],
    )?;
    if cfg.is_empty() {
        return Err(CoreError::not_found("pool", pool.as_str()));
    }
    let inventory = cfg.first().get_one::<i32>()?.unwrap_or(0);
    // Wait for the pool's claims in flight and keep new ones out while it is rebuilt: every claim
    // writes the pool's queue table in its one statement, so an EXCLUSIVE lock on that table (not
    // on the inventory tables, which all pools share) holds this pool's claims alone. Its other
    // writers (drains, answers, reclaims) hold the configuration row, locked above.
    prepared::exec(
        client,
        &format!("LOCK TABLE {} IN EXCLUSIVE MODE", pool.queue_table()),
        &[],
    )?;
    let intents = format!(
        "SELECT (message ->> 'slot')::int AS slot, (message ->> 'resource_id')::uuid AS resource_id, \
                message ->> 'user_id' AS user_id, enqueued_at, message ->> 'state' AS state FROM pgmq.\"q_{q}\" \
         UNION ALL SELECT (message ->> 'slot')::int, (message ->> 'resource_id')::uuid, message ->> 'user_id', enqueued_at, message ->> 'state' FROM pgmq.\"a_{q}\" \
         UNION ALL SELECT (message ->> 'slot')::int, (message ->> 'resource_id')::uuid, message ->> 'user_id', enqueued_at, message ->> 'state' FROM pgmq.\"q_{d}\" \
         UNION ALL SELECT (message ->> 'slot')::int, (message ->> 'resource_id')::uuid, message ->> 'user_id', enqueued_at, message ->> 'state' FROM pgmq.\"a_{d}\"",
        q = pool.queue(),
        d = pool.dlq()
    );
    // The pool's queue tables owner-only again: a restore creates them under the target
    // database's default privileges (pgmq's own grant SELECT to pg_monitor), and a dump carries
    // no REVOKE for privileges they never had.
    for relation in pool.queue_relations() {
        crate::intake::pools::owner_only(client, &relation)?;
    }
    if !crate::intake::pools::has_slot_sequence(pool) {
        prepared::exec(
            client,
            &format!("CREATE SEQUENCE {seq} AS int MINVALUE 1"),
            &[],
        )?;
        // Owner-only before it joins the extension (see intake::pools::create).
        crate::intake::pools::owner_only(client, &seq)?;
        prepared::exec(
            client,
            &format!("ALTER EXTENSION flowgate ADD SEQUENCE {seq}"),
            &[],
        )?;
        prepared::exec(client, &format!("SELECT setval('{seq}', m, true) FROM (SELECT max(slot) AS m FROM ({intents}) i) x WHERE m IS NOT NULL"), &[],
        )?;
    }
    for table in [
        "intake.allocations",
        "intake.released_slots",
        "intake.user_claims",
    ] {
        prepared::exec(
            client,
            &format!("DELETE FROM {table} WHERE pool_id = $1"),
            &[pool.as_str().into()],
        )?;
    }
    prepared::exec(client, &format!(
            "INSERT INTO intake.allocations (pool_id, slot, resource_id, status, locked_by, locked_at) \
             SELECT $1, g, coalesce(i.resource_id, gen_random_uuid()), \
                    (CASE WHEN i.slot IS NULL THEN 'available' WHEN i.state = 'committed' THEN 'consumed' ELSE 'locked' END)::intake.slot_status, i.user_id, i.enqueued_at \
               FROM generate_series(1, $2) g LEFT JOIN (SELECT DISTINCT ON (slot) * FROM ({intents}) x ORDER BY slot, enqueued_at) i ON i.slot = g"
        ), &[pool.as_str().into(), inventory.into()],
    )?;
    prepared::exec(
        client,
        &format!(
            "INSERT INTO intake.user_claims (pool_id, user_id, claims) \
             SELECT $1, user_id, count(*) FROM ({intents}) i GROUP BY user_id"
        ),
        &[pool.as_str().into()],
    )?;
    let handed_out = crate::intake::pools::handed_out(client, pool)?;
    prepared::exec(client, "INSERT INTO intake.released_slots (pool_id, slot) SELECT pool_id, slot FROM intake.allocations \
         WHERE pool_id = $1 AND status = 'available' AND slot <= $2", &[pool.as_str().into(), (handed_out.min(i64::from(i32::MAX)) as i32).into()],
    )?;
    let summary = client
        .select(
            "SELECT jsonb_build_object('pool_id', $1::text, 'inventory', $2::int, \
               'claimed', count(*) FILTER (WHERE status <> 'available'), \
               'available', count(*) FILTER (WHERE status = 'available'), \
               'released', (SELECT count(*) FROM intake.released_slots WHERE pool_id = $1), \
               'users', (SELECT count(*) FROM intake.user_claims WHERE pool_id = $1)) \
             FROM intake.allocations WHERE pool_id = $1",
            Some(1),
            &[pool.as_str().into(), inventory.into()],
        )?
        .first()
        .get_one::<JsonB>()?
        .unwrap_or(JsonB(Value::Null));
    prepared::exec(
        client,
        "INSERT INTO intake.pool_state (pool_id, built_from) VALUES ($1, 'recovery') \
         ON CONFLICT (pool_id) DO UPDATE SET built_at = now(), built_from = 'recovery'",
        &[pool.as_str().into()],
    )?;
    Ok(summary.0)
}

/// Called by a claim that found the pool's UNLOGGED state or its slot sequence missing (a crash
/// or a restore: sequences are not in dumps either): the
/// first such claim rebuilds it under a per-pool lock; claims that arrive meanwhile wait for
/// it, then find the pool intact and carry on. Returns whether this call rebuilt it.
pub fn heal(client: &mut SpiClient<'_>, pool: &PoolId) -> CoreResult<bool> {
    prepared::exec(client, "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('intake.heal:' || $1, 0))", &[pool.as_str().into()],
    )?;
    let intact = client
        .select(
            "SELECT EXISTS (SELECT FROM intake.pool_state WHERE pool_id = $1) \
                AND pg_catalog.to_regclass($2) IS NOT NULL",
            Some(1),
            &[pool.as_str().into(), pool.slot_sequence().into()],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false);
    if intact {
        return Ok(false);
    }
    let summary = rebuild(client, pool)?;
    pgrx::log!(
        "intake: pool {} had lost its UNLOGGED state (a crash or a restore); rebuilt from its logged intents: {}",
        pool.as_str(),
        summary
    );
    Ok(true)
}
