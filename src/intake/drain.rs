//! The drain's rules, pure: what to do with an intent read from the queue,
//! what a reply from the validation webhook or the ledger means, the bodies sent, and the
//! metrics arithmetic. The SQL side (`intake::store`) carries the decisions out.

use serde_json::{json, Map, Value};

/// Where an intent is in its life (`message.state` in the pgmq payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntentState {
    Queued,
    Validated,
    Committed,
}

impl IntentState {
    pub fn parse(message: &Value) -> IntentState {
        match message.get("state").and_then(Value::as_str) {
            Some("validated") => IntentState::Validated,
            Some("committed") => IntentState::Committed,
            _ => IntentState::Queued,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IntentState::Queued => "queued",
            IntentState::Validated => "validated",
            IntentState::Committed => "committed",
        }
    }
}

/// The next step for an intent the drain has just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// POST it to the validation webhook.
    Validate,
    /// Send it to the ledger (validated already, or there is no validation webhook).
    Commit,
    /// Read more than `max_retries` times: move it to the dead-letter queue.
    DeadLetter(String),
    /// Already committed (a reply recorded after the read): archive it, nothing to send.
    Finish,
}

/// Decide the step for an intent read for the `read_ct`-th time (pgmq counts reads from 1).
pub fn plan(state: IntentState, read_ct: i32, max_retries: i32, has_webhook: bool) -> Step {
    if state == IntentState::Committed {
        return Step::Finish;
    }
    if read_ct > max_retries {
        return Step::DeadLetter(format!(
            "read {read_ct} times, more than max_retries = {max_retries}, while {}",
            state.as_str()
        ));
    }
    match state {
        IntentState::Queued if has_webhook => Step::Validate,
        _ => Step::Commit,
    }
}

/// What a reply means for the intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// 2xx.
    Success,
    /// A permanent refusal: 4xx other than 408, 425 and 429.
    Refused,
    /// 5xx, 408, 425, 429, a timeout, a connection error, a missing secret: try again once the
    /// visibility timeout has passed.
    Transient,
}

/// Classify an HTTP status (None: no response at all).
pub fn classify(status: Option<i32>) -> Reply {
    match status {
        Some(s) if (200..300).contains(&s) => Reply::Success,
        Some(408 | 425 | 429) => Reply::Transient,
        Some(s) if (400..500).contains(&s) => Reply::Refused,
        _ => Reply::Transient,
    }
}

/// Classify the validation webhook's answer: as [`classify`], but 409 is transient. A payment
/// API answers 409 while a request with the same Idempotency-Key is still being processed (an
/// earlier attempt timed out here, and the charge may yet go through): releasing the resource
/// then could charge a buyer who gets nothing. Sent again after the visibility timeout, with the
/// same key, it gets the final answer; a webhook that keeps answering 409 sends the intent to
/// the DLQ after `max_retries` reads, its resource held, for an operator.
pub fn classify_validation(status: Option<i32>) -> Reply {
    match status {
        Some(409) => Reply::Transient,
        other => classify(other),
    }
}

/// What to do after a validation or commit reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Validation passed: record it on the intent, then commit.
    MarkValidated,
    /// Validation refused: the resource returns to the pool and the intent is deleted.
    Release,
    /// The ledger has it: the resource is consumed and the intent archived.
    Complete,
    /// The ledger refused it for good: keep the resource locked, park the intent in the DLQ for
    /// an operator.
    DeadLetter(String),
    /// Leave the intent; it reappears after the visibility timeout.
    RetryLater,
}

pub fn after_validation(reply: Reply) -> Action {
    match reply {
        Reply::Success => Action::MarkValidated,
        Reply::Refused => Action::Release,
        Reply::Transient => Action::RetryLater,
    }
}

pub fn after_commit(reply: Reply, status: Option<i32>) -> Action {
    match reply {
        Reply::Success => Action::Complete,
        Reply::Refused => Action::DeadLetter(format!(
            "the ledger refused the commit with HTTP {}",
            status.unwrap_or(0)
        )),
        Reply::Transient => Action::RetryLater,
    }
}

/// The intent's identity across replays: the message id it was first queued under. A replayed
/// intent is a new pgmq message that keeps `origin_msg_id`, so the webhook and the ledger see
/// the same idempotency key.
pub fn origin_msg_id(message: &Value, msg_id: i64) -> i64 {
    message
        .get("origin_msg_id")
        .and_then(Value::as_i64)
        .unwrap_or(msg_id)
}

/// The ledger's idempotency key (unique across pools): `<pool>:<origin msg id>`.
pub fn ledger_key(pool: &str, origin: i64) -> String {
    format!("{pool}:{origin}")
}

/// Which stage a delivery belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Validate,
    Commit,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Validate => "validate",
            Stage::Commit => "commit",
        }
    }
}

/// The key of an intent's request for one stage: its outbox row (one per intent and stage,
/// whatever the number of reads: each read re-arms it for one more attempt, so retries are
/// paced by the visibility timeout) and its Idempotency-Key header, the same for every attempt
/// and across DLQ replays, so the receiver can de-duplicate (`intake:<pool>:<stage>:<origin
/// msg id>`).
pub fn wire_key(pool: &str, origin: i64, stage: Stage) -> String {
    format!("intake:{pool}:{}:{origin}", stage.as_str())
}

/// The intent fields every body carries.
fn intent_fields(pool: &str, msg_id: i64, message: &Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("pool_id".into(), pool.into());
    m.insert("msg_id".into(), msg_id.into());
    for k in ["slot", "resource_id", "user_id"] {
        m.insert(k.into(), message.get(k).cloned().unwrap_or(Value::Null));
    }
    m
}

/// The validation POST: the intent, with `msg_id` and `idempotency_key` its first message id.
/// The same bytes on every attempt and after a replay (a new message id), as the
/// Idempotency-Key it goes with requires: a server that keeps keys refuses a key sent again
/// with another body, and a refused payment would give the resource back.
pub fn validation_body(pool: &str, msg_id: i64, message: &Value) -> Value {
    let origin = origin_msg_id(message, msg_id);
    let mut m = intent_fields(pool, origin, message);
    m.insert("idempotency_key".into(), origin.into());
    Value::Object(m)
}

/// The ledger payload (the argument of `intake.finalize_transaction`).
pub fn ledger_payload(pool: &str, msg_id: i64, message: &Value) -> Value {
    let origin = origin_msg_id(message, msg_id);
    let mut m = intent_fields(pool, origin, message);
    m.insert("idempotency_key".into(), ledger_key(pool, origin).into());
    if let Some(v) = message.get("validation").filter(|v| !v.is_null()) {
        m.insert("validation".into(), v.clone());
    }
    Value::Object(m)
}

/// The commit POST: PostgREST's RPC convention, one named argument and nothing else (PostgREST
/// picks the function by the body's keys: another key names another function, and fails).
pub fn commit_body(pool: &str, msg_id: i64, message: &Value) -> Value {
    json!({"payload": ledger_payload(pool, msg_id, message)})
}

/// Keep what the webhook answered, bounded: a JSON value up to 4 KiB, else a marker. (The
/// outbox hands handlers answers whose strings hold no NUL, which `jsonb` could not store:
/// `core::outbox::handlers::response_json`.)
pub fn validation_record(response: Option<&Value>, text: &str) -> Value {
    match response {
        Some(v) if v.to_string().len() <= 4096 => v.clone(),
        Some(_) => json!({"truncated": true}),
        None if text.is_empty() => Value::Null,
        None => {
            json!({"text": text.chars().take(512).map(|c| if c == '\0' { '\u{FFFD}' } else { c }).collect::<String>()})
        }
    }
}

/// Pool totals folded from the outcome log, and the identity sequence of the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Messages ever sent to the queue (claims plus replays): the queue's msg_id sequence.
    pub sent: i64,
    pub committed: i64,
    pub rejected: i64,
    pub dead_lettered: i64,
    pub replayed: i64,
}

/// One metrics sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub available_slots: i64,
    pub claimed: i64,
    pub queue_depth: i64,
    pub dlq_depth: i64,
}

/// Metrics from counters alone (no count over the inventory or the queues): every claim sends
/// one message, replays send one more, and every message leaves the queue as committed,
/// rejected or dead-lettered.
pub fn sample(inventory: i64, t: &Totals) -> Sample {
    let claimed = (t.sent - t.replayed).max(0);
    let live_claims = (claimed - t.rejected).max(0);
    Sample {
        available_slots: (inventory - live_claims).max(0),
        claimed,
        queue_depth: (t.sent - t.committed - t.rejected - t.dead_lettered).max(0),
        dlq_depth: (t.dead_lettered - t.replayed).max(0),
    }
}

/// Commits per second between two samples.
pub fn velocity(committed_before: i64, committed_now: i64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    ((committed_now - committed_before).max(0) as f64 / seconds * 100.0).round() / 100.0
}

/// How many intents a drain may take: the batch size, and under a rate limit no more than
/// `rate × seconds since the last drain that took any` (the first drain takes one second's worth,
/// and so does one after the clock went back past the last drain: waiting for the clock to
/// catch up would stop the pool for as long as it was set ahead).
pub fn budget(batch_size: i32, rate_per_second: Option<i32>, since_last: Option<f64>) -> i32 {
    match rate_per_second {
        None => batch_size,
        Some(rate) => {
            let secs = since_last.filter(|s| *s >= 0.0).unwrap_or(1.0);
            let allowed = (f64::from(rate) * secs).floor();
            batch_size.min(allowed.min(f64::from(i32::MAX)) as i32)
        }
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plan_follows_state_and_read_count() {
        use IntentState::*;
        assert_eq!(plan(Queued, 1, 5, true), Step::Validate);
        assert_eq!(plan(Queued, 1, 5, false), Step::Commit);
        assert_eq!(
            plan(Validated, 3, 5, true),
            Step::Commit,
            "validated skips the webhook"
        );
        assert_eq!(plan(Queued, 5, 5, true), Step::Validate);
        assert!(
            matches!(plan(Queued, 6, 5, true), Step::DeadLetter(r) if r.contains("max_retries = 5"))
        );
        assert!(
            matches!(plan(Validated, 6, 5, true), Step::DeadLetter(r) if r.contains("validated"))
        );
        assert_eq!(plan(Committed, 9, 5, true), Step::Finish);
    }

    #[test]
    fn replies_map_to_actions() {
        assert_eq!(classify(Some(200)), Reply::Success);
        assert_eq!(classify(Some(204)), Reply::Success);
        assert_eq!(classify(Some(400)), Reply::Refused);
        assert_eq!(classify(Some(402)), Reply::Refused);
        assert_eq!(classify(Some(409)), Reply::Refused);
        assert_eq!(classify_validation(Some(409)), Reply::Transient);
        assert_eq!(classify_validation(Some(402)), Reply::Refused);
        assert_eq!(classify_validation(Some(200)), Reply::Success);
        for t in [
            Some(408),
            Some(425),
            Some(429),
            Some(500),
            Some(503),
            Some(302),
            None,
        ] {
            assert_eq!(classify(t), Reply::Transient, "{t:?}");
        }
        assert_eq!(after_validation(Reply::Success), Action::MarkValidated);
        assert_eq!(after_validation(Reply::Refused), Action::Release);
        assert_eq!(after_validation(Reply::Transient), Action::RetryLater);
        assert_eq!(after_commit(Reply::Success, Some(200)), Action::Complete);
        assert!(
            matches!(after_commit(Reply::Refused, Some(409)), Action::DeadLetter(r) if r.contains("409"))
        );
        assert_eq!(after_commit(Reply::Transient, None), Action::RetryLater);
    }

    #[test]
    fn keys_and_bodies() {
        let msg = json!({"pool_id": "drop", "slot": 7, "resource_id": "r-1", "user_id": "u1", "state": "validated",
                         "validation": {"payment": "pi_1"}});
        assert_eq!(wire_key("drop", 42, Stage::Commit), "intake:drop:commit:42");
        let v = validation_body("drop", 42, &msg);
        assert_eq!(v["idempotency_key"], 42);
        assert_eq!(v["user_id"], "u1");
        let c = commit_body("drop", 42, &msg);
        assert_eq!(c["payload"]["idempotency_key"], "drop:42");
        assert_eq!(c["payload"]["validation"]["payment"], "pi_1");
        // PostgREST's RPC: the function's one argument, no other key.
        assert_eq!(c.as_object().map(|o| o.len()), Some(1));
        // A replayed intent keeps its first identity, and sends the same bytes.
        let replayed =
            json!({"slot": 7, "resource_id": "r-1", "user_id": "u1", "origin_msg_id": 42});
        assert_eq!(
            validation_body("drop", 99, &replayed)["idempotency_key"],
            42
        );
        let first = json!({"slot": 7, "resource_id": "r-1", "user_id": "u1"});
        assert_eq!(
            validation_body("drop", 99, &replayed),
            validation_body("drop", 42, &first)
        );
        assert_eq!(
            ledger_payload("drop", 99, &replayed)["idempotency_key"],
            "drop:42"
        );
        assert_eq!(ledger_payload("drop", 99, &replayed)["msg_id"], 42);
        assert_eq!(IntentState::parse(&replayed), IntentState::Queued);
        assert_eq!(IntentState::parse(&msg), IntentState::Validated);
    }

    #[test]
    fn validation_records_are_bounded() {
        assert_eq!(
            validation_record(Some(&json!({"ok": true})), ""),
            json!({"ok": true})
        );
        let big = json!({"x": "y".repeat(5000)});
        assert_eq!(
            validation_record(Some(&big), ""),
            json!({"truncated": true})
        );
        assert_eq!(validation_record(None, ""), Value::Null);
        assert_eq!(
            validation_record(None, "a\u{0}b")["text"],
            json!("a\u{FFFD}b")
        );
        assert_eq!(
            validation_record(None, &"z".repeat(900))["text"]
                .as_str()
                .unwrap()
                .len(),
            512
        );
    }

    #[test]
    fn metrics_from_counters() {
        let t = Totals {
            sent: 120,
            committed: 70,
            rejected: 10,
            dead_lettered: 5,
            replayed: 2,
        };
        let s = sample(1000, &t);
        assert_eq!(s.claimed, 118);
        assert_eq!(s.available_slots, 1000 - 108);
        assert_eq!(s.queue_depth, 35);
        assert_eq!(s.dlq_depth, 3);
        assert_eq!(
            sample(
                10,
                &Totals {
                    sent: 50,
                    ..Default::default()
                }
            )
            .available_slots,
            0
        );
        assert_eq!(velocity(100, 350, 5.0), 50.0);
        assert_eq!(velocity(100, 350, 0.0), 0.0);
    }

    #[test]
    fn rate_limit_budget() {
        assert_eq!(budget(100, None, Some(0.01)), 100);
        assert_eq!(budget(100, Some(10), None), 10);
        assert_eq!(budget(100, Some(10), Some(0.5)), 5);
        assert_eq!(budget(100, Some(10), Some(0.05)), 0);
        assert_eq!(budget(100, Some(1000), Some(60.0)), 100);
        // The clock went back an hour past the last drain: one second's worth, not nothing.
        assert_eq!(budget(100, Some(10), Some(-3600.0)), 10);
    }

    proptest! {
        /// Whatever happens, an intent is never sent anywhere once read past max_retries, and a
        /// validated intent is never validated again.
        #[test]
        fn plan_invariants(read_ct in 1i32..200, max in 1i32..100, hook: bool, st in 0u8..3) {
            let state = [IntentState::Queued, IntentState::Validated, IntentState::Committed][st as usize];
            let step = plan(state, read_ct, max, hook);
            if state == IntentState::Committed {
                prop_assert_eq!(step, Step::Finish);
            } else if read_ct > max {
                prop_assert!(matches!(step, Step::DeadLetter(_)));
            } else if state == IntentState::Validated || !hook {
                prop_assert_eq!(step, Step::Commit);
            } else {
                prop_assert_eq!(step, Step::Validate);
            }
        }

        /// Over any sequence of drains, a rate-limited drain never takes more than rate × time.
        #[test]
        fn budget_never_exceeds_rate(rate in 1i32..5000, gaps in proptest::collection::vec(0.0f64..3.0, 1..50)) {
            let mut taken = 0i64;
            let total: f64 = gaps.iter().sum();
            for g in &gaps { taken += i64::from(budget(10_000, Some(rate), Some(*g))); }
            prop_assert!(taken as f64 <= f64::from(rate) * total + 1e-6);
        }

        /// Queue and DLQ depth never go negative and available never exceeds the inventory.
        #[test]
        fn samples_are_sane(inv in 0i64..1_000_000, sent in 0i64..100_000, c in 0i64..100_000, r in 0i64..100_000,
                            d in 0i64..100_000, p in 0i64..100_000) {
            let s = sample(inv, &Totals { sent, committed: c, rejected: r, dead_lettered: d, replayed: p });
            prop_assert!(s.queue_depth >= 0 && s.dlq_depth >= 0);
            prop_assert!(s.available_slots >= 0 && s.available_slots <= inv);
        }
    }
}

/// What one drain call did, for its honest one-word status.
#[derive(Debug, Clone, Copy, Default)]
pub struct DrainCounts {
    /// Intents read from the queue.
    pub read: usize,
    /// Intents that moved on here: committed locally or released.
    pub progressed: usize,
    /// Intents whose next request (validation or ledger commit) was handed to the outbox.
    pub handed: usize,
    /// Intents dead-lettered.
    pub troubled: usize,
    /// Intents waiting for a reply from an external worker.
    pub waiting: usize,
    /// Whether the pool's queue is empty after the call.
    pub queue_empty: bool,
}

/// `drained` only when the queue is empty and nothing went wrong; `empty` when there was
/// nothing to read; `sending` when every intent read was handed to the outbox (their answers
/// move them on; `intake.pool_status` shows how they fare); `waiting` when intents remain but
/// none was due (retries back off by the visibility timeout) or all wait for a reply;
/// `retrying` when every intent read was dead-lettered; `partial` for a mix.
pub fn summarize(c: &DrainCounts) -> &'static str {
    match (c.read, c.queue_empty) {
        (0, true) => "empty",
        (0, false) => "waiting",
        _ if c.troubled == 0 && c.waiting == 0 && c.handed == 0 && c.queue_empty => "drained",
        _ if c.handed == c.read => "sending",
        _ if c.progressed == 0 && c.handed == 0 && c.troubled > 0 => "retrying",
        _ if c.progressed == 0 && c.handed == 0 => "waiting",
        _ => "partial",
    }
}

#[cfg(test)]
mod summary_unit_tests {
    use super::*;

    #[test]
    fn a_drain_says_drained_only_when_nothing_is_left_or_failed() {
        let c = |read, progressed, handed, troubled, waiting, queue_empty| {
            summarize(&DrainCounts {
                read,
                progressed,
                handed,
                troubled,
                waiting,
                queue_empty,
            })
        };
        assert_eq!(c(0, 0, 0, 0, 0, true), "empty");
        assert_eq!(c(0, 0, 0, 0, 0, false), "waiting");
        assert_eq!(c(3, 3, 0, 0, 0, true), "drained", "all committed locally");
        assert_eq!(
            c(3, 0, 3, 0, 0, false),
            "sending",
            "all handed to the outbox"
        );
        assert_eq!(
            c(3, 0, 0, 3, 0, false),
            "retrying",
            "every intent dead-lettered"
        );
        assert_eq!(c(3, 2, 0, 1, 0, false), "partial");
        assert_eq!(c(3, 1, 2, 0, 0, false), "partial");
        assert_eq!(
            c(3, 3, 0, 0, 0, false),
            "partial",
            "more left than one batch"
        );
        assert_eq!(
            c(3, 0, 0, 0, 3, false),
            "waiting",
            "all waiting for an external reply"
        );
    }
}
