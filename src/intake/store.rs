//! The drain's data access: pool configuration, pgmq reads, moving an intent between states
//! (validated, released, committed, dead-lettered), the outbox deliveries that carry it, the
//! outbox response handlers, the ledger insert and the metrics sample. The rules themselves are
//! in `intake::drain` (pure).

use std::collections::HashMap;

use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::{json, Map, Value};

use crate::core::error::{CoreError, CoreResult};
use crate::core::outbox::delivery::NewDelivery;
use crate::core::outbox::store::{self as outbox, Rearmed};
use crate::core::prepared;
use crate::intake::drain::{self, Action, IntentState, Stage, Step};
use crate::intake::ledger;
use crate::intake::pool::PoolId;

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

pub fn load_config(client: &SpiClient<'_>, pool: &PoolId) -> CoreResult<Config> {
    let rows = prepared::read(client, "SELECT inventory, batch_size, visibility_timeout_seconds, validation_webhook_url, validation_auth_secret, \
                commit_target, commit_auth_secret, request_timeout_ms, max_retries, rate_limit_per_second, paused \
           FROM intake.engine_config WHERE pool_id = $1", &[pool.as_str().into()],
    )?;
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
    let rows = prepared::exec(
        client,
        &format!(
            "SELECT msg_id, read_ct, message FROM {} WHERE msg_id = $1 FOR UPDATE",
            pool.queue_table()
        ),
        &[msg_id.into()],
    )?;
    if rows.is_empty() {
        return Ok(None);
    }
    let r = rows.first();
    Ok(Some(Intent {
        msg_id,
        read_ct: r.get(2)?.unwrap_or(1),
        message: r.get::<JsonB>(3)?.map(|j| j.0).unwrap_or(Value::Null),
    }))
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
fn mark_validated(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    intent: &mut Intent,
    validation: Value,
) -> CoreResult<()> {
    let fields = json!({"state": "validated", "validation": validation, "last_error": null});
    patch(client, pool, intent.msg_id, fields.clone())?;
    if let (Value::Object(m), Some(f)) = (&mut intent.message, fields.as_object()) {
        m.extend(f.clone());
    }
    log_outcome(client, pool, "validated", 1)
}

/// Validation refused: the resource returns to the pool, the user's claim is given back and the
/// intent is deleted.
fn release(client: &mut SpiClient<'_>, pool: &PoolId, intent: &Intent) -> CoreResult<()> {
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
fn complete(client: &mut SpiClient<'_>, pool: &PoolId, intent: &Intent) -> CoreResult<()> {
    // pgmq.archive's move, as one prepared statement on the queue's tables (pgmq.archive is
    // PL/pgSQL that plans its dynamic SQL on every call), with the committed state patched in.
    prepared::exec(
        client,
        &format!(
            "WITH moved AS (DELETE FROM {queue} WHERE msg_id = $1 \
                            RETURNING msg_id, read_ct, enqueued_at, last_read_at, vt, message || $2 AS message, headers) \
             INSERT INTO {archive} (msg_id, read_ct, enqueued_at, last_read_at, vt, message, headers) \
             SELECT msg_id, read_ct, enqueued_at, last_read_at, vt, message, headers FROM moved",
            queue = pool.queue_table(),
            archive = pool.archive_table()
        ),
        &[
            intent.msg_id.into(),
            JsonB(json!({"state": "committed", "last_error": null})).into(),
        ],
    )?;
    if let Some(slot) = slot_of(&intent.message) {
        prepared::exec(
            client,
            "UPDATE intake.allocations SET status = 'consumed' WHERE pool_id = $1 AND slot = $2",
            &[pool.as_str().into(), slot.into()],
        )?;
    }
    log_outcome(client, pool, "committed", 1)
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

/// [`complete`] for many intents in three statements.
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
    prepared::exec(
        client,
        &format!(
            "WITH moved AS (DELETE FROM {queue} WHERE msg_id = ANY ($1) \
                            RETURNING msg_id, read_ct, enqueued_at, last_read_at, vt, message || $2 AS message, headers) \
             INSERT INTO {archive} (msg_id, read_ct, enqueued_at, last_read_at, vt, message, headers) \
             SELECT msg_id, read_ct, enqueued_at, last_read_at, vt, message, headers FROM moved",
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

/// Park the intent in the dead-letter queue with the reason; its resource stays locked (never
/// sold twice, never lost) until an operator replays it.
fn dead_letter(
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

fn note_error(
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
    match finalize(client, &entry) {
        Ok(_) => {
            complete(client, pool, intent)?;
            Ok("committed")
        }
        Err(CoreError::Duplicate { kind, key }) => {
            dead_letter(
                client,
                pool,
                intent,
                &format!("the ledger refused the commit: {kind} {key:?} already exists"),
            )?;
            Ok("dead_lettered")
        }
        Err(e) => Err(e),
    }
}

/// Where one stage of one read of an intent goes: URL (None: the ledger in this database),
/// secret name, body and the Idempotency-Key header. Shared by the drain and the external-worker API.
pub struct StageRequest {
    pub url: Option<String>,
    pub secret: Option<String>,
    pub body: Value,
    pub wire_key: String,
}

pub fn stage_request(cfg: &Config, pool: &PoolId, intent: &Intent, stage: Stage) -> StageRequest {
    let origin = drain::origin_msg_id(&intent.message, intent.msg_id);
    let (url, secret, body) = match stage {
        Stage::Validate => (
            cfg.webhook.clone(),
            cfg.webhook_secret.clone(),
            drain::validation_body(
                pool.as_str(),
                intent.msg_id,
                intent.read_ct,
                &intent.message,
            ),
        ),
        Stage::Commit => (
            cfg.commit_target.clone(),
            cfg.commit_secret.clone(),
            drain::commit_body(
                pool.as_str(),
                intent.msg_id,
                intent.read_ct,
                &intent.message,
            ),
        ),
    };
    StageRequest {
        url,
        secret,
        body,
        wire_key: drain::wire_key(pool.as_str(), origin, stage),
    }
}

/// The outbox delivery for one stage of an intent (re-armed on every read).
pub fn delivery(
    cfg: &Config,
    pool: &PoolId,
    intent: &Intent,
    stage: Stage,
) -> CoreResult<NewDelivery> {
    let req = stage_request(cfg, pool, intent, stage);
    let handler = match stage {
        Stage::Validate => "intake.validation",
        Stage::Commit => "intake.commit",
    };
    let url = req
        .url
        .ok_or_else(|| CoreError::Internal(format!("no URL for the {} stage", stage.as_str())))?;
    let mut d = NewDelivery::post_json(
        "intake",
        &format!("{}:{}", pool.as_str(), intent.msg_id),
        &url,
        req.body,
        &req.wire_key,
    );
    d.handler = Some(handler.into());
    d.auth_secret = req.secret;
    // One attempt per read (outbox::rearm): the visibility timeout paces retries and read_ct
    // counts them.
    d.max_attempts = Some(1);
    d.timeout_ms = Some(cfg.timeout_ms);
    Ok(d)
}

/// Settle an intent that needs no HTTP: archive a committed one, dead-letter one read too often.
/// Returns "committed", "dead_lettered", or "pending" when it has a step to perform.
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
                requests.push(delivery(cfg, pool, &intent, stage)?);
            }
        }
    }
    // The batch's requests in one statement (those never sent before; the rest one by one).
    for rearmed in outbox::rearm_many(client, &requests)? {
        match rearmed {
            Rearmed::Created(id) | Rearmed::Again(id) => out.deliveries.push(id),
            // The previous read's attempt is still out (pg_net answers later), or was
            // delivered and its handler failed (flowgate.rerun_handlers): nothing to send.
            Rearmed::Busy(_) | Rearmed::Delivered(_) => out.waiting += 1,
        }
    }
    Ok(out)
}

/// What came back from an HTTP call (or did not: status None).
#[derive(Debug, Default)]
pub struct HttpReply<'a> {
    pub status: Option<i32>,
    pub response: Option<&'a Value>,
    pub text: &'a str,
    pub error: Option<&'a str>,
}

/// Apply a validation reply to an intent (outbox handler and `intake.report_validation`).
/// `enqueue_commit`: start the commit delivery now (the drain's own path); an external worker
/// commits by itself. Returns what happened.
pub fn apply_validation(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    msg_id: i64,
    reply: &HttpReply<'_>,
    enqueue_commit: bool,
) -> CoreResult<&'static str> {
    let Some(mut intent) = lock(client, pool, msg_id)? else {
        return Ok("gone");
    };
    if intent.state() != IntentState::Queued {
        return Ok("already_validated");
    }
    match drain::after_validation(drain::classify(reply.status)) {
        Action::MarkValidated => {
            mark_validated(
                client,
                pool,
                &mut intent,
                drain::validation_record(reply.response, reply.text),
            )?;
            let cfg = load_config(client, pool)?;
            if cfg.commit_target.is_none() {
                return commit_locally(client, pool, &intent);
            }
            if enqueue_commit {
                outbox::rearm(client, &delivery(&cfg, pool, &intent, Stage::Commit)?)?;
            }
            Ok("validated")
        }
        Action::Release => {
            release(client, pool, &intent)?;
            Ok("released")
        }
        _ => {
            note_error(
                client,
                pool,
                &intent,
                &reply_error("validation", reply.status, reply.error),
            )?;
            Ok("retry_later")
        }
    }
}

/// Apply a ledger reply (outbox handler and `intake.report_commit`).
pub fn apply_commit(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    msg_id: i64,
    status: Option<i32>,
    error: Option<&str>,
) -> CoreResult<&'static str> {
    let Some(intent) = lock(client, pool, msg_id)? else {
        return Ok("gone");
    };
    match drain::after_commit(drain::classify(status), status) {
        Action::Complete => {
            complete(client, pool, &intent)?;
            Ok("committed")
        }
        Action::DeadLetter(reason) => {
            dead_letter(client, pool, &intent, &reason)?;
            Ok("dead_lettered")
        }
        _ => {
            note_error(client, pool, &intent, &reply_error("commit", status, error))?;
            Ok("retry_later")
        }
    }
}

fn reply_error(stage: &str, status: Option<i32>, error: Option<&str>) -> String {
    match (status, error) {
        (Some(s), _) => format!("{stage}: HTTP {s}"),
        (None, Some(e)) => format!("{stage}: {e}"),
        (None, None) => format!("{stage}: no response"),
    }
}

/// Write a ledger entry once per idempotency key. The same key again returns the first row
/// (`duplicate`); the same key with different contents, or a resource already finalized under
/// another key, is 23505.
pub fn finalize(client: &mut SpiClient<'_>, e: &ledger::Entry) -> CoreResult<Value> {
    check_resource_free(client, e)?;
    let row_json = "jsonb_build_object('idempotency_key', idempotency_key, 'pool_id', pool_id, 'msg_id', msg_id, 'slot', slot, \
                    'resource_id', resource_id, 'user_id', user_id, 'finalized_at', finalized_at)";
    let inserted = prepared::exec(client, &format!(
            "INSERT INTO intake.transactions (idempotency_key, pool_id, msg_id, slot, resource_id, user_id, validation, details) \
             VALUES ($1, $2, $3, $4, $5::uuid, $6, $7, $8) ON CONFLICT (idempotency_key) DO NOTHING RETURNING {row_json}"
        ), &[
            e.idempotency_key.as_str().into(),
            e.pool_id.as_str().into(),
            e.msg_id.into(),
            e.slot.into(),
            e.resource_id.as_str().into(),
            e.user_id.as_str().into(),
            e.validation.clone().map(JsonB).into(),
            JsonB(Value::Object(e.details.clone())).into(),
        ],
    )?;
    if !inserted.is_empty() {
        let row = inserted
            .first()
            .get_one::<JsonB>()?
            .map(|j| j.0)
            .unwrap_or(Value::Null);
        return Ok(json!({"status": "finalized", "transaction": row}));
    }
    let existing = prepared::read(client, &format!(
            "SELECT {row_json}, (pool_id, resource_id::text, user_id) = ($2, $3, $4) FROM intake.transactions WHERE idempotency_key = $1"
        ), &[
            e.idempotency_key.as_str().into(),
            e.pool_id.as_str().into(),
            e.resource_id.as_str().into(),
            e.user_id.as_str().into(),
        ],
    )?;
    if existing.is_empty() {
        return Err(CoreError::Internal(
            "ledger key conflict without a row".into(),
        ));
    }
    let (row, same) = existing.first().get_two::<JsonB, bool>()?;
    if same != Some(true) {
        return Err(CoreError::Duplicate {
            kind: "ledger idempotency key (for another pool, resource or user)".into(),
            key: e.idempotency_key.clone(),
        });
    }
    Ok(json!({"status": "duplicate", "transaction": row.map(|j| j.0).unwrap_or(Value::Null)}))
}

/// Check that a resource is not already in the ledger under another key (so the raw unique
/// violation never reaches a caller).
pub fn check_resource_free(client: &SpiClient<'_>, e: &ledger::Entry) -> CoreResult<()> {
    let rows = prepared::read(client, "SELECT idempotency_key FROM intake.transactions WHERE pool_id = $1 AND resource_id = $2::uuid AND idempotency_key <> $3", &[e.pool_id.as_str().into(), e.resource_id.as_str().into(), e.idempotency_key.as_str().into()],
    )?;
    if rows.is_empty() {
        Ok(())
    } else {
        Err(CoreError::Duplicate {
            kind: format!("ledger entry for resource {} of pool", e.resource_id),
            key: e.pool_id.clone(),
        })
    }
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

/// Fold the pool's outcome log into its totals, then write one metrics row from counters alone.
pub fn collect_metrics(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    inventory: i32,
) -> CoreResult<Value> {
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
    Ok(Value::Object(m))
}

/// Rebuild a pool's UNLOGGED state (inventory, given-back slots, per-user counts, the slot
/// sequence when a restore lost it) from the logged record: every intent in its pgmq queue,
/// archive and dead-letter queue is a claim. Claimed slots become `locked` (or `consumed` when
/// committed) with their resource and user, the rest `available`; slots below the counter that
/// no intent holds are given back. Blocks claims while it runs; marks the pool intact.
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
    prepared::exec(client, "LOCK TABLE intake.allocations, intake.released_slots, intake.user_claims IN EXCLUSIVE MODE", &[])?;
    let intents = format!(
        "SELECT (message ->> 'slot')::int AS slot, (message ->> 'resource_id')::uuid AS resource_id, \
                message ->> 'user_id' AS user_id, enqueued_at, message ->> 'state' AS state FROM pgmq.\"q_{q}\" \
         UNION ALL SELECT (message ->> 'slot')::int, (message ->> 'resource_id')::uuid, message ->> 'user_id', enqueued_at, message ->> 'state' FROM pgmq.\"a_{q}\" \
         UNION ALL SELECT (message ->> 'slot')::int, (message ->> 'resource_id')::uuid, message ->> 'user_id', enqueued_at, message ->> 'state' FROM pgmq.\"q_{d}\" \
         UNION ALL SELECT (message ->> 'slot')::int, (message ->> 'resource_id')::uuid, message ->> 'user_id', enqueued_at, message ->> 'state' FROM pgmq.\"a_{d}\"",
        q = pool.queue(),
        d = pool.dlq()
    );
    let missing_seq = client
        .select(
            "SELECT to_regclass($1) IS NULL",
            Some(1),
            &[seq.clone().into()],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false);
    if missing_seq {
        prepared::exec(
            client,
            &format!("CREATE SEQUENCE {seq} AS int MINVALUE 1"),
            &[],
        )?;
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
    let handed_out = client
        .select(
            &format!("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {seq}"),
            Some(1),
            &[],
        )?
        .first()
        .get_one::<i64>()?
        .unwrap_or(0);
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

/// A pool at a glance (what an operator asks during a sale): its inventory by status, its queue
/// (due, backing off, validated and waiting for the ledger), its dead letters, the next retry,
/// the latest error and the commit rate over the last minute. Counts rows: for an operator, not
/// for a hot path.
pub fn status(client: &SpiClient<'_>, pool: &PoolId) -> CoreResult<Value> {
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
