//! The drain's data access: pool configuration, pgmq reads, moving an intent between states
//! (validated, released, committed, dead-lettered), the outbox deliveries that carry it and the
//! DLQ replay. The rules themselves are in `intake::drain` (pure); the response handlers are in
//! `intake::replies`, the ledger's storage in `intake::book`, metrics in `intake::metrics` and
//! crash recovery in `intake::recovery`.

use std::collections::HashMap;

use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::{json, Map, Value};

use crate::core::error::{CoreError, CoreResult};
use crate::core::outbox::store::{self as outbox, Rearmed};
use crate::core::prepared;
use crate::core::subxact;
use crate::intake::drain::{self, IntentState, Stage, Step};
use crate::intake::ledger;
use crate::intake::pool::PoolId;
use crate::intake::pools::{self, Config};
use crate::intake::requests;

/// An intent as read from the queue.
#[derive(Debug, Clone)]
pub struct Intent {
    pub msg_id: i64,
    pub read_ct: i32,
    pub message: Value,
}

impl Intent {
    pub fn state(&self) -> IntentState {
        IntentState::parse(&self.message)
    }
}

/// Read up to `n` intents, hiding them for the visibility timeout (pgmq.read).
pub fn read(client: &mut SpiClient<'_>, pool: &PoolId, vt: i32, n: i32) -> CoreResult<Vec<Intent>> {
    let rows = prepared::exec(
        client,
        "SELECT msg_id, read_ct, message FROM pgmq.read($1, $2, $3)",
        &[pool.queue().into(), vt.into(), n.into()],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(Intent {
            msg_id: r.get(1)?.unwrap_or(0),
            read_ct: r.get(2)?.unwrap_or(1),
            message: r.get::<JsonB>(3)?.map(|j| j.0).unwrap_or(Value::Null),
        });
    }
    Ok(out)
}

/// The intent with this id, locked, if it is still in the queue.
pub fn lock(client: &mut SpiClient<'_>, pool: &PoolId, msg_id: i64) -> CoreResult<Option<Intent>> {
    Ok(lock_many(client, pool, &[msg_id])?.remove(&msg_id))
}

/// Merge fields into the intent's message (its state travels with it).
fn patch(client: &mut SpiClient<'_>, pool: &PoolId, msg_id: i64, fields: Value) -> CoreResult<()> {
    prepared::exec(
        client,
        &format!(
            "UPDATE {} SET message = message || $2 WHERE msg_id = $1",
            pool.queue_table()
        ),
        &[msg_id.into(), JsonB(fields).into()],
    )?;
    Ok(())
}

pub fn log_outcome(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    outcome: &str,
    n: i64,
) -> CoreResult<()> {
    if n > 0 {
        prepared::exec(
            client,
            "INSERT INTO intake.outcome_log (pool_id, outcome, n) VALUES ($1, $2, $3)",
            &[
                pool.as_str().into(),
                outcome.into(),
                (n.min(i64::from(i32::MAX)) as i32).into(),
            ],
        )?;
    }
    Ok(())
}

fn slot_of(message: &Value) -> Option<i32> {
    message
        .get("slot")
        .and_then(Value::as_i64)
        .map(|s| s as i32)
}

/// Validation passed: remember it (and what the webhook said) on the intent.
pub(super) fn mark_validated(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    intent: &mut Intent,
    validation: Value,
) -> CoreResult<()> {
    let msg_id = intent.msg_id;
    mark_validated_many(
        client,
        pool,
        std::slice::from_mut(intent),
        vec![(msg_id, validation)],
    )
}

/// Validation refused: the resource returns to the pool, the user's claim is given back and the
/// intent is deleted.
pub(super) fn release(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    intent: &Intent,
) -> CoreResult<()> {
    if let Some(slot) = slot_of(&intent.message) {
        let freed = prepared::exec(client, "UPDATE intake.allocations SET status = 'available', locked_by = NULL, locked_at = NULL, msg_id = NULL \
              WHERE pool_id = $1 AND slot = $2 AND status = 'locked' RETURNING 1", &[pool.as_str().into(), slot.into()],
        )?;
        if !freed.is_empty() {
            prepared::exec(client, "INSERT INTO intake.released_slots (pool_id, slot) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[pool.as_str().into(), slot.into()],
            )?;
        }
    }
    if let Some(user) = intent.message.get("user_id").and_then(Value::as_str) {
        prepared::exec(client, "UPDATE intake.user_claims SET claims = claims - 1 WHERE pool_id = $1 AND user_id = $2 AND claims > 0", &[pool.as_str().into(), user.into()],
        )?;
    }
    prepared::exec(
        client,
        &format!("DELETE FROM {} WHERE msg_id = $1", pool.queue_table()),
        &[intent.msg_id.into()],
    )?;
    log_outcome(client, pool, "rejected", 1)
}

/// The ledger has the intent: the resource is consumed, the intent archived (the archive stays
/// part of the logged record `recover_pool` reads).
pub(super) fn complete(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    intent: &Intent,
) -> CoreResult<()> {
    complete_many(client, pool, std::slice::from_ref(intent))
}

/// The intents with these ids still in the queue, locked (in id order), by id.
pub fn lock_many(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    msg_ids: &[i64],
) -> CoreResult<HashMap<i64, Intent>> {
    let rows = prepared::exec(
        client,
        &format!(
            "SELECT msg_id, read_ct, message FROM {} WHERE msg_id = ANY ($1) ORDER BY msg_id FOR UPDATE",
            pool.queue_table()
        ),
        &[msg_ids.to_vec().into()],
    )?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let msg_id: i64 = r.get(1)?.unwrap_or(0);
        out.insert(
            msg_id,
            Intent {
                msg_id,
                read_ct: r.get(2)?.unwrap_or(1),
                message: r.get::<JsonB>(3)?.map(|j| j.0).unwrap_or(Value::Null),
            },
        );
    }
    Ok(out)
}

/// [`mark_validated`] for many intents in two statements: each intent gets the validation
/// record under its id in `records`.
pub fn mark_validated_many(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    intents: &mut [Intent],
    records: Vec<(i64, Value)>,
) -> CoreResult<()> {
    let mut patches = Map::with_capacity(records.len());
    for (msg_id, record) in records {
        patches.insert(
            msg_id.to_string(),
            json!({"state": "validated", "validation": record, "last_error": null}),
        );
    }
    let ids: Vec<i64> = intents.iter().map(|i| i.msg_id).collect();
    for intent in intents.iter_mut() {
        if let (Value::Object(m), Some(Value::Object(f))) =
            (&mut intent.message, patches.get(&intent.msg_id.to_string()))
        {
            m.extend(f.clone());
        }
    }
    prepared::exec(
        client,
        &format!(
            "UPDATE {} SET message = message || ($2 -> msg_id::text) WHERE msg_id = ANY ($1)",
            pool.queue_table()
        ),
        &[ids.into(), JsonB(Value::Object(patches)).into()],
    )?;
    log_outcome(client, pool, "validated", intents.len() as i64)
}

/// [`complete`] for many intents in four statements.
pub fn complete_many(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    intents: &[Intent],
) -> CoreResult<()> {
    if intents.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = intents.iter().map(|i| i.msg_id).collect();
    let slots: Vec<i32> = intents.iter().filter_map(|i| slot_of(&i.message)).collect();
    let columns = archived_columns(client, pool)?;
    let moved = columns
        .iter()
        .map(|(name, quoted)| match name.as_str() {
            "message" => "message || $2 AS message".to_owned(),
            _ => quoted.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let columns = columns
        .into_iter()
        .map(|(_, quoted)| quoted)
        .collect::<Vec<_>>()
        .join(", ");
    prepared::exec(
        client,
        &format!(
            "WITH moved AS (DELETE FROM {queue} WHERE msg_id = ANY ($1) RETURNING {moved}) \
             INSERT INTO {archive} ({columns}) SELECT {columns} FROM moved",
            queue = pool.queue_table(),
            archive = pool.archive_table()
        ),
        &[
            ids.into(),
            JsonB(json!({"state": "committed", "last_error": null})).into(),
        ],
    )?;
    prepared::exec(
        client,
        "UPDATE intake.allocations SET status = 'consumed' WHERE pool_id = $1 AND slot = ANY ($2)",
        &[pool.as_str().into(), slots.into()],
    )?;
    log_outcome(client, pool, "committed", intents.len() as i64)
}

/// The columns a message keeps when it moves to the pool's archive: those its queue table and
/// archive table both have (name and quoted name, in the queue's order), read from the catalog
/// on each move. They differ between pgmq versions (`headers` came in 1.5, `last_read_at` in
/// 1.10; Supabase images ship older ones), and pgmq's upgrades add them to existing queues.
fn archived_columns(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
) -> CoreResult<Vec<(String, String)>> {
    let rows = prepared::exec(
        client,
        "SELECT q.attname::text, quote_ident(q.attname) FROM pg_catalog.pg_attribute q \
           JOIN pg_catalog.pg_attribute a ON a.attrelid = $2::regclass AND a.attname = q.attname \
                                        AND a.attnum > 0 AND NOT a.attisdropped \
          WHERE q.attrelid = $1::regclass AND q.attnum > 0 AND NOT q.attisdropped \
          ORDER BY q.attnum",
        &[
            pool.queue_table().as_str().into(),
            pool.archive_table().as_str().into(),
        ],
    )?;
    let mut columns = Vec::with_capacity(rows.len());
    for row in rows {
        if let (Some(name), Some(quoted)) = (row.get::<String>(1)?, row.get::<String>(2)?) {
            columns.push((name, quoted));
        }
    }
    for needed in ["msg_id", "message"] {
        if !columns.iter().any(|(name, _)| name == needed) {
            return Err(CoreError::Internal(format!(
                "the queue and archive tables of pool {} share no {needed} column",
                pool.as_str()
            )));
        }
    }
    Ok(columns)
}

/// Park the intent in the dead-letter queue with the reason; its resource stays locked (never
/// sold twice, never lost) until an operator replays it.
pub(super) fn dead_letter(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    intent: &Intent,
    reason: &str,
) -> CoreResult<()> {
    let origin = drain::origin_msg_id(&intent.message, intent.msg_id);
    let fields = json!({"dlq_reason": reason, "read_ct": intent.read_ct, "origin_msg_id": origin});
    prepared::exec(client, "SELECT pgmq.send($1, $2 || $3 || jsonb_build_object('dead_lettered_at', clock_timestamp()))", &[pool.dlq().into(), JsonB(intent.message.clone()).into(), JsonB(fields).into()],
    )?;
    prepared::exec(
        client,
        "SELECT pgmq.delete($1, $2)",
        &[pool.queue().into(), intent.msg_id.into()],
    )?;
    // Its requests waiting for another read will not get one: they are dead now (and come
    // back if the intent is replayed from the DLQ).
    let keys: Vec<String> = [Stage::Validate, Stage::Commit]
        .iter()
        .map(|s| drain::wire_key(pool.as_str(), origin, *s))
        .collect();
    prepared::exec(client, "UPDATE flowgate.deliveries SET status = 'dead', last_error = left('the intent was dead-lettered: ' || $2, 2000), \
                updated_at = clock_timestamp() \
          WHERE idempotency_key = ANY ($1) AND owner_module = 'intake' AND status = 'pending' AND next_attempt_at = 'infinity'", &[keys.into(), reason.into()],
    )?;
    log_outcome(client, pool, "dead_lettered", 1)
}

pub(super) fn note_error(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    intent: &Intent,
    error: &str,
) -> CoreResult<()> {
    let error: String = error.chars().take(500).collect();
    patch(client, pool, intent.msg_id, json!({"last_error": error}))
}

/// Commit into this database's ledger (commit_target NULL).
pub fn commit_locally(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    intent: &Intent,
) -> CoreResult<&'static str> {
    let payload = drain::ledger_payload(pool.as_str(), intent.msg_id, &intent.message);
    let entry = ledger::parse(&payload)?;
    match crate::intake::book::finalize(client, &entry) {
        Ok(_) => {
            complete(client, pool, intent)?;
            Ok("committed")
        }
        Err(CoreError::Duplicate { kind, key }) => {
            dead_letter(
                client,
                pool,
                intent,
                &format!(
                    "the ledger refused the commit: {kind} {} already exists",
                    crate::core::error::quoted(&key)
                ),
            )?;
            Ok("dead_lettered")
        }
        Err(e) => Err(e),
    }
}

/// Settle an intent that needs no HTTP: archive a committed one, dead-letter one read too often.
/// Returns "committed", "dead_lettered", "waiting" (read too often, but a request of it is
/// still due or in flight: the reads counted the outbox's lag, not failed attempts, and its
/// answer is still to come), or "pending" when it has a step to perform.
pub fn settle(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    cfg: &Config,
    intent: &Intent,
) -> CoreResult<&'static str> {
    match drain::plan(
        intent.state(),
        intent.read_ct,
        cfg.max_retries,
        cfg.webhook.is_some(),
    ) {
        Step::Finish => {
            complete(client, pool, intent)?;
            Ok("committed")
        }
        Step::DeadLetter(_) if request_outstanding(client, pool, intent)? => {
            // A 2xx whose handler failed (the payment taken): its stored answer is applied now,
            // in a subtransaction, to the intent this read holds; the next read commits it.
            // While the handler still fails, the intent waits: never dead-lettered paid.
            if let Some(id) = unhandled_answer(client, pool, intent)? {
                let _ = subxact::run(|| crate::core::outbox::handler_runs::rerun_handler(id));
            }
            Ok("waiting")
        }
        Step::DeadLetter(reason) => {
            let reason = match intent.message.get("last_error").and_then(Value::as_str) {
                Some(last) => format!("{reason}; last error: {last}"),
                None => reason,
            };
            dead_letter(client, pool, intent, &reason)?;
            Ok("dead_lettered")
        }
        _ => Ok("pending"),
    }
}

/// Whether a request of the intent (either stage) is due to be sent or in flight: not parked
/// for the next read, not finished.
fn request_outstanding(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    intent: &Intent,
) -> CoreResult<bool> {
    let keys = request_keys(pool, intent);
    // A statement that writes nothing but takes a new snapshot: an answer recorded since the
    // drain's statement began counts. So does a 2xx whose handler failed: the webhook took the
    // payment, and the intent waits for `flowgate.rerun_handlers` to apply it, instead of going
    // to the dead-letter queue with the payment taken.
    let t = prepared::exec(
        client,
        "SELECT EXISTS (SELECT FROM flowgate.deliveries WHERE idempotency_key = ANY ($1) AND owner_module = 'intake' \
                          AND (status = 'in_flight' OR (status = 'pending' AND next_attempt_at <> 'infinity') \
                               OR (status = 'delivered' AND handler_error IS NOT NULL)))",
        &[keys.into()],
    )?;
    Ok(t.first().get_one::<bool>()?.unwrap_or(false))
}

/// The idempotency keys of the intent's requests (validation and commit), by the message id it
/// was first queued under (kept across replays from the DLQ).
fn request_keys(pool: &PoolId, intent: &Intent) -> Vec<String> {
    let origin = drain::origin_msg_id(&intent.message, intent.msg_id);
    [Stage::Validate, Stage::Commit]
        .iter()
        .map(|s| drain::wire_key(pool.as_str(), origin, *s))
        .collect()
}

/// A delivered request of the intent whose response handler failed, if there is one.
fn unhandled_answer(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    intent: &Intent,
) -> CoreResult<Option<i64>> {
    let keys = request_keys(pool, intent);
    let t = prepared::exec(
        client,
        "SELECT id FROM flowgate.deliveries WHERE idempotency_key = ANY ($1) AND owner_module = 'intake' \
            AND status = 'delivered' AND handler_error IS NOT NULL ORDER BY id LIMIT 1",
        &[keys.into()],
    )?;
    if t.is_empty() {
        return Ok(None);
    }
    Ok(t.first().get_one::<i64>()?)
}

/// What one drain did, for its summary.
#[derive(Debug, Default)]
pub struct Started {
    pub read: usize,
    pub deliveries: Vec<i64>,
    pub committed: usize,
    pub dead_lettered: usize,
    pub waiting: usize,
}

/// The first half of a drain: read a batch and start each intent's next step.
pub fn start(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    cfg: &Config,
    budget: i32,
) -> CoreResult<Started> {
    let mut out = Started::default();
    let intents = read(client, pool, cfg.visibility_timeout, budget)?;
    out.read = intents.len();
    let mut requests = Vec::new();
    for intent in intents {
        match drain::plan(
            intent.state(),
            intent.read_ct,
            cfg.max_retries,
            cfg.webhook.is_some(),
        ) {
            Step::Finish | Step::DeadLetter(_) => match settle(client, pool, cfg, &intent)? {
                "committed" => out.committed += 1,
                "waiting" => out.waiting += 1,
                _ => out.dead_lettered += 1,
            },
            Step::Commit if cfg.commit_target.is_none() => {
                match commit_locally(client, pool, &intent)? {
                    "committed" => out.committed += 1,
                    _ => out.dead_lettered += 1,
                }
            }
            step => {
                let stage = if step == Step::Validate {
                    Stage::Validate
                } else {
                    Stage::Commit
                };
                requests.push(requests::delivery(cfg, pool, &intent, stage)?);
            }
        }
    }
    // The batch's requests in one statement (those never sent before; the rest one by one).
    for rearmed in outbox::rearm_many(client, &requests)? {
        match rearmed {
            Rearmed::Created(id) | Rearmed::Again(id) => out.deliveries.push(id),
            // The previous read's attempt is still out (pg_net answers later), or was
            // delivered: nothing to send.
            Rearmed::Busy(_) | Rearmed::Delivered(_) => out.waiting += 1,
            // Delivered, and its handler failed (say, on the lock this drain's read held):
            // the stored answer is applied now, in a subtransaction, to the intent this read
            // holds. A validated intent then commits on its next read, instead of being read
            // until it is dead-lettered with its payment taken.
            Rearmed::Unhandled(id) => {
                let _ = subxact::run(|| crate::core::outbox::handler_runs::rerun_handler(id));
                out.waiting += 1;
            }
        }
    }
    Ok(out)
}

/// One drain of a pool (`intake.drain`): start the next step of up to a batch of intents and say
/// what it did.
pub fn drain(client: &mut SpiClient<'_>, pool: &PoolId) -> CoreResult<Value> {
    let cfg = pools::held_config(client, pool)?;
    if cfg.paused {
        return Ok(json!({"pool_id": pool.as_str(), "status": "paused"}));
    }
    let budget = match cfg.rate_limit {
        None => cfg.batch_size,
        Some(rate) => {
            let clock = client.update(
                "SELECT extract(epoch FROM clock_timestamp() - last_drain_at)::float8 FROM intake.drain_clock \
                  WHERE pool_id = $1 FOR UPDATE SKIP LOCKED",
                None,
                &[pool.as_str().into()],
            )?;
            let since: Option<f64> = if !clock.is_empty() {
                clock.first().get_one::<f64>()?
            } else {
                // No row to take: another drain of this rate-limited pool holds it (and the
                // budget), or it is missing (the table is not in dumps, so a restored pool has
                // none): then it is made here, taken by this drain, never drained before.
                let made = client.update(
                    "INSERT INTO intake.drain_clock (pool_id) VALUES ($1) ON CONFLICT (pool_id) DO NOTHING RETURNING true",
                    None,
                    &[pool.as_str().into()],
                )?;
                if made.is_empty() {
                    return Ok(json!({"pool_id": pool.as_str(), "status": "busy"}));
                }
                None
            };
            drain::budget(cfg.batch_size, Some(rate), since)
        }
    };
    if budget <= 0 {
        return Ok(json!({"pool_id": pool.as_str(), "status": "throttled"}));
    }
    let started = start(client, pool, &cfg, budget)?;
    if cfg.rate_limit.is_some() && started.read > 0 {
        client.update(
            "UPDATE intake.drain_clock SET last_drain_at = clock_timestamp() WHERE pool_id = $1",
            None,
            &[pool.as_str().into()],
        )?;
    }
    let queue_empty = client
        .select(
            &format!("SELECT NOT EXISTS (SELECT FROM {})", pool.queue_table()),
            Some(1),
            &[],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false);
    // The validation and commit requests go out through the outbox (CALL
    // flowgate.run_outbox() or the worker), with no transaction open; their handlers move
    // each intent on.
    let status = drain::summarize(&drain::DrainCounts {
        read: started.read,
        progressed: started.committed,
        handed: started.deliveries.len(),
        troubled: started.dead_lettered,
        waiting: started.waiting,
        queue_empty,
    });
    Ok(json!({
        "pool_id": pool.as_str(),
        "status": status,
        "read": started.read,
        "committed_locally": started.committed,
        "dead_lettered": started.dead_lettered,
        "waiting_for_reply": started.waiting,
        "handed_to_outbox": started.deliveries.len(),
    }))
}
