//! A pool's numbers: the metrics sample the worker writes and the status an operator asks for.

use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::{json, Map, Value};

use crate::core::error::{CoreError, CoreResult};
use crate::core::prepared;
use crate::intake::drain;
use crate::intake::pool::PoolId;
use crate::intake::pools;

/// Fold the pool's outcome log into its totals, then write one metrics row from counters alone.
/// `None` when the pool was dropped meanwhile, or another transaction is sampling it.
///
/// The pool is held first ([`pools::hold`]): a drop waits for the sample, or the sample
/// for the drop and finds the pool gone; the two never wait for each other.
///
/// A pool whose slot counter has reached its inventory, with no given-back slot waiting, first
/// gets back the slots of claims
/// that aborted after taking their number ([`pools::reclaim_slots`]: a client that
/// disconnected, a statement timeout, a caller's rollback), so it does not answer "sold out"
/// while such slots are still free: the job that samples every pool does this within seconds.
pub fn collect_metrics(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    inventory: i32,
) -> CoreResult<Option<Value>> {
    if !pools::hold(client, pool)? {
        return Ok(None);
    }
    // One sample of a pool at a time, and never a wait for another: a sample taken in a
    // transaction left open (a `flowgate.run_job('intake.metrics')` not yet committed) holds
    // the pool's totals, and the worker, which runs every job in turn, would wait behind it.
    let free = prepared::exec(
        client,
        "SELECT pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtextextended('flowgate.intake.metrics:' || $1, 0))",
        &[pool.as_str().into()],
    )?
    .first()
    .get_one::<bool>()?
    .unwrap_or(false);
    if !free {
        return Ok(None);
    }
    // (Only an intact pool: after a crash or a restore its UNLOGGED state and slot sequence
    // wait for the first claim, which rebuilds them and gives back what it finds.)
    if pools::intact(client, pool)?
        && pools::handed_out(client, pool)? >= i64::from(inventory)
        && !pools::has_released_slots(client, pool)?
    {
        pools::reclaim_slots(client, pool)?;
    }
    prepared::exec(client, "WITH folded AS (DELETE FROM intake.outcome_log WHERE pool_id = $1 RETURNING outcome, n), \
              sums AS (SELECT coalesce(sum(n) FILTER (WHERE outcome = 'validated'), 0) AS v, \
                              coalesce(sum(n) FILTER (WHERE outcome = 'committed'), 0) AS c, \
                              coalesce(sum(n) FILTER (WHERE outcome = 'rejected'), 0) AS r, \
                              coalesce(sum(n) FILTER (WHERE outcome = 'dead_lettered'), 0) AS d, \
                              coalesce(sum(n) FILTER (WHERE outcome = 'replayed'), 0) AS p FROM folded) \
         INSERT INTO intake.pool_totals AS t (pool_id, validated, committed, rejected, dead_lettered, replayed) \
         SELECT $1, v, c, r, d, p FROM sums \
         ON CONFLICT (pool_id) DO UPDATE SET validated = t.validated + EXCLUDED.validated, \
                committed = t.committed + EXCLUDED.committed, rejected = t.rejected + EXCLUDED.rejected, \
                dead_lettered = t.dead_lettered + EXCLUDED.dead_lettered, replayed = t.replayed + EXCLUDED.replayed, \
                updated_at = now()", &[pool.as_str().into()],
    )?;
    let row = prepared::exec(client, &format!(
            "SELECT t.committed, t.rejected, t.dead_lettered, t.replayed, \
                    (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM pgmq.\"q_{q}_msg_id_seq\"), \
                    m.committed, extract(epoch FROM clock_timestamp() - m.collected_at)::float8 \
               FROM intake.pool_totals t \
               LEFT JOIN LATERAL (SELECT committed, collected_at FROM intake.engine_metrics \
                                   WHERE pool_id = $1 ORDER BY collected_at DESC LIMIT 1) m ON true \
              WHERE t.pool_id = $1 FOR UPDATE OF t",
            q = pool.queue()
        ), &[pool.as_str().into()],
    )?;
    let r = row.first();
    let totals = drain::Totals {
        committed: r.get(1)?.unwrap_or(0),
        rejected: r.get(2)?.unwrap_or(0),
        dead_lettered: r.get(3)?.unwrap_or(0),
        replayed: r.get(4)?.unwrap_or(0),
        sent: r.get(5)?.unwrap_or(0),
    };
    let prev_committed: Option<i64> = r.get(6)?;
    let secs: Option<f64> = r.get(7)?;
    let s = drain::sample(i64::from(inventory), &totals);
    let velocity = match (prev_committed, secs) {
        (Some(before), Some(secs)) => drain::velocity(before, totals.committed, secs),
        _ => 0.0,
    };
    prepared::exec(client, "INSERT INTO intake.engine_metrics (pool_id, available_slots, claimed, queue_depth, dlq_depth, committed, rejected, processing_velocity) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric)", &[
            pool.as_str().into(),
            s.available_slots.into(),
            s.claimed.into(),
            s.queue_depth.into(),
            s.dlq_depth.into(),
            totals.committed.into(),
            totals.rejected.into(),
            velocity.into(),
        ],
    )?;
    let mut m = Map::new();
    m.insert("pool_id".into(), pool.as_str().into());
    m.insert("available_slots".into(), s.available_slots.into());
    m.insert("claimed".into(), s.claimed.into());
    m.insert("queue_depth".into(), s.queue_depth.into());
    m.insert("dlq_depth".into(), s.dlq_depth.into());
    m.insert("committed".into(), totals.committed.into());
    m.insert("rejected".into(), totals.rejected.into());
    m.insert("processing_velocity".into(), json!(velocity));
    Ok(Some(Value::Object(m)))
}

/// A pool at a glance (what an operator asks during a sale): its inventory by status, its queue
/// (due, backing off, validated and waiting for the ledger), its dead letters, the next retry,
/// the latest error and the commit rate over the last minute. Counts rows: for an operator, not
/// for a hot path.
pub fn status(client: &SpiClient<'_>, pool: &PoolId) -> CoreResult<Value> {
    // The statement below names the pool's queue tables: an unknown (or just dropped) pool is
    // P0002 here, not a missing relation when it is parsed.
    pools::load_config(client, pool)?;
    let q = pool.queue_table();
    let dlq = format!("pgmq.\"q_{}\"", pool.dlq());
    let rows = client.select(
        &format!(
            "WITH totals AS ( \
               SELECT t.committed + coalesce((SELECT sum(n) FROM intake.outcome_log o WHERE o.pool_id = t.pool_id AND o.outcome = 'committed'), 0) AS committed, \
                      t.rejected + coalesce((SELECT sum(n) FROM intake.outcome_log o WHERE o.pool_id = t.pool_id AND o.outcome = 'rejected'), 0) AS rejected \
                 FROM intake.pool_totals t WHERE t.pool_id = $1), \
             minute_ago AS ( \
               SELECT m.committed, m.collected_at FROM intake.engine_metrics m \
                WHERE m.pool_id = $1 AND m.collected_at <= clock_timestamp() - interval '1 minute' \
                ORDER BY m.collected_at DESC LIMIT 1) \
             SELECT jsonb_build_object( \
               'pool_id', c.pool_id, 'inventory', c.inventory, 'paused', c.paused, 'drain_mode', c.drain_mode, \
               'intact', EXISTS (SELECT FROM intake.pool_state s WHERE s.pool_id = c.pool_id), \
               'available', (SELECT count(*) FROM intake.allocations a WHERE a.pool_id = c.pool_id AND a.status = 'available'), \
               'claimed', (SELECT count(*) FROM intake.allocations a WHERE a.pool_id = c.pool_id AND a.status = 'locked'), \
               'consumed', (SELECT count(*) FROM intake.allocations a WHERE a.pool_id = c.pool_id AND a.status = 'consumed'), \
               'released', (SELECT count(*) FROM intake.released_slots r WHERE r.pool_id = c.pool_id), \
               'queued', (SELECT count(*) FROM {q} WHERE vt <= clock_timestamp()), \
               'invisible', (SELECT count(*) FROM {q} WHERE vt > clock_timestamp()), \
               'validated_waiting', (SELECT count(*) FROM {q} WHERE message ->> 'state' = 'validated'), \
               'committed', (SELECT committed FROM totals), \
               'rejected', (SELECT rejected FROM totals), \
               'dlq', (SELECT count(*) FROM {dlq}), \
               'next_retry_at', (SELECT min(vt) FROM {q} WHERE vt > clock_timestamp()), \
               'last_error', (SELECT message ->> 'last_error' FROM {q} WHERE message ->> 'last_error' IS NOT NULL ORDER BY msg_id DESC LIMIT 1), \
               'committed_per_second_last_minute', \
                 (SELECT round(((SELECT committed FROM totals) - m.committed) \
                               / greatest(extract(epoch FROM clock_timestamp() - m.collected_at), 1)::numeric, 2) FROM minute_ago m)) \
             FROM intake.engine_config c WHERE c.pool_id = $1"
        ),
        Some(1),
        &[pool.as_str().into()],
    )?;
    if rows.is_empty() {
        return Err(CoreError::not_found("pool", pool.as_str()));
    }
    Ok(rows
        .first()
        .get_one::<JsonB>()?
        .map_or(Value::Null, |j| j.0))
}

/// Sample every pool (or `only` that one) not sampled in the last `min_interval_seconds`;
/// the samples taken. P0002 for an unknown pool. A sample dated after now (the clock stepped
/// back, or a restore onto a server whose clock is behind) is no recent sample: it would stop
/// the sampling, and the slot reclaim it drives, until the clock caught up.
pub fn collect_due(
    client: &mut SpiClient<'_>,
    only: Option<&PoolId>,
    min_interval_seconds: f64,
) -> CoreResult<Value> {
    let pools = client.select(
        "SELECT c.pool_id, c.inventory FROM intake.engine_config c \
          WHERE ($1::text IS NULL OR c.pool_id = $1) \
            AND NOT EXISTS (SELECT FROM intake.engine_metrics m WHERE m.pool_id = c.pool_id \
                             AND m.collected_at > clock_timestamp() - make_interval(secs => $2) \
                             AND m.collected_at <= clock_timestamp()) \
          ORDER BY c.pool_id",
        None,
        &[only.map(|p| p.as_str()).into(), min_interval_seconds.into()],
    )?;
    let mut todo = Vec::new();
    for r in pools {
        todo.push((
            r.get::<String>(1)?.unwrap_or_default(),
            r.get::<i32>(2)?.unwrap_or(0),
        ));
    }
    if let Some(p) = only {
        if todo.is_empty() && pools::load_config(client, p).is_err() {
            return Err(CoreError::not_found("pool", p.as_str()));
        }
    }
    let mut samples = Vec::new();
    for (id, inventory) in todo {
        samples.extend(collect_metrics(client, &PoolId::parse(&id)?, inventory)?);
    }
    Ok(Value::Array(samples))
}
