//! The drain's outbox response handlers: what the validation webhook's and the ledger's replies
//! do to their intents, one delivery at a time or a whole recording round at once.
//!
//! The batch forms have the single forms' effect on every delivery, with one statement per step
//! for the common replies (a 2xx) instead of one per intent; the other replies (refusals,
//! errors, intents already moved on) take the single path inside the batch. If a batch raises,
//! the outbox rolls it back and runs the single form for each delivery in its own
//! subtransaction.

use std::collections::BTreeMap;

use pgrx::spi::SpiClient;
use serde_json::Value;

use crate::core::error::{CoreError, CoreResult};
use crate::core::outbox::handlers::{BatchHandler, Handler, HandlerCall};
use crate::core::outbox::store as outbox;
use crate::intake::drain::{self, Action, IntentState, Stage};
use crate::intake::pool::PoolId;
use crate::intake::store;
use crate::intake::{pools, requests};

/// The outbox response handlers of the drain.
pub const HANDLERS: &[(&str, Handler)] = &[
    ("intake.validation", on_validation),
    ("intake.commit", on_commit),
];

/// Their batch forms.
pub const BATCH_HANDLERS: &[(&str, BatchHandler)] = &[
    ("intake.validation", on_validations),
    ("intake.commit", on_commits),
];

/// The pool and queue message a delivery belongs to (its owner id is `<pool>:<msg_id>`).
fn owner(call: &HandlerCall<'_>) -> CoreResult<(PoolId, i64)> {
    let (pool, msg) = call
        .owner_id
        .rsplit_once(':')
        .ok_or_else(|| CoreError::Internal(format!("intake delivery owner {:?}", call.owner_id)))?;
    let msg_id = msg
        .parse::<i64>()
        .map_err(|_| CoreError::Internal(format!("intake delivery owner {:?}", call.owner_id)))?;
    Ok((PoolId::parse(pool)?, msg_id))
}

fn reply<'a>(call: &'a HandlerCall<'a>) -> HttpReply<'a> {
    HttpReply {
        status: call.status_code,
        response: call.response.as_ref(),
        text: call.response_text,
        error: call.last_error,
    }
}

fn on_validation(client: &mut SpiClient<'_>, call: &HandlerCall<'_>) -> CoreResult<()> {
    let (pool, msg_id) = owner(call)?;
    if !pools::hold(client, &pool)? {
        return Ok(()); // dropped while the request was out (held to the end otherwise)
    }
    if apply_validation(client, &pool, msg_id, &reply(call), true)? == "retry_later" {
        // Not dead: the intent's next read sends it again.
        outbox::park(client, call.delivery_id)?;
    }
    Ok(())
}

fn on_commit(client: &mut SpiClient<'_>, call: &HandlerCall<'_>) -> CoreResult<()> {
    let (pool, msg_id) = owner(call)?;
    if !pools::hold(client, &pool)? {
        return Ok(());
    }
    if apply_commit(client, &pool, msg_id, call.status_code, call.last_error)? == "retry_later" {
        outbox::park(client, call.delivery_id)?;
    }
    Ok(())
}

/// The calls of a batch by pool (pools in name order, calls in round order), with their
/// intents' message ids.
type ByPool<'b, 'a> = BTreeMap<String, (PoolId, Vec<(i64, &'b HandlerCall<'a>)>)>;

fn by_pool<'b, 'a>(calls: &'b [HandlerCall<'a>]) -> CoreResult<ByPool<'b, 'a>> {
    let mut out: ByPool<'b, 'a> = BTreeMap::new();
    for call in calls {
        let (pool, msg_id) = owner(call)?;
        out.entry(pool.as_str().to_string())
            .or_insert_with(|| (pool, Vec::new()))
            .1
            .push((msg_id, call));
    }
    Ok(out)
}

fn on_validations(client: &mut SpiClient<'_>, calls: &[HandlerCall<'_>]) -> CoreResult<()> {
    for (_, (pool, group)) in by_pool(calls)? {
        if !pools::hold(client, &pool)? {
            continue;
        }
        let ids: Vec<i64> = group.iter().map(|(id, _)| *id).collect();
        let mut intents = store::lock_many(client, &pool, &ids)?;
        let mut validated = Vec::new();
        let mut records = Vec::new();
        for (msg_id, call) in group {
            let Some(intent) = intents.remove(&msg_id) else {
                continue; // gone (committed or dead-lettered meanwhile)
            };
            if intent.state() != IntentState::Queued {
                continue; // already validated
            }
            let r = reply(call);
            if drain::after_validation(drain::classify_validation(r.status))
                == Action::MarkValidated
            {
                records.push((msg_id, drain::validation_record(r.response, r.text)));
                validated.push(intent);
            } else if apply_validation(client, &pool, msg_id, &r, true)? == "retry_later" {
                outbox::park(client, call.delivery_id)?;
            }
        }
        if validated.is_empty() {
            continue;
        }
        store::mark_validated_many(client, &pool, &mut validated, records)?;
        let cfg = pools::load_config(client, &pool)?;
        if cfg.commit_target.is_none() {
            for intent in &validated {
                store::commit_locally(client, &pool, intent)?;
            }
        } else {
            let requests = validated
                .iter()
                .map(|intent| requests::delivery(&cfg, &pool, intent, Stage::Commit))
                .collect::<CoreResult<Vec<_>>>()?;
            outbox::rearm_many(client, &requests)?;
        }
    }
    Ok(())
}

fn on_commits(client: &mut SpiClient<'_>, calls: &[HandlerCall<'_>]) -> CoreResult<()> {
    for (_, (pool, group)) in by_pool(calls)? {
        if !pools::hold(client, &pool)? {
            continue;
        }
        let ids: Vec<i64> = group.iter().map(|(id, _)| *id).collect();
        let mut intents = store::lock_many(client, &pool, &ids)?;
        let mut done = Vec::new();
        for (msg_id, call) in group {
            let Some(intent) = intents.remove(&msg_id) else {
                continue;
            };
            if drain::after_commit(drain::classify(call.status_code), call.status_code)
                == Action::Complete
            {
                done.push(intent);
            } else if apply_commit(client, &pool, msg_id, call.status_code, call.last_error)?
                == "retry_later"
            {
                outbox::park(client, call.delivery_id)?;
            }
        }
        store::complete_many(client, &pool, &done)?;
    }
    Ok(())
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
    let Some(mut intent) = store::lock(client, pool, msg_id)? else {
        return Ok("gone");
    };
    if intent.state() != IntentState::Queued {
        return Ok("already_validated");
    }
    match drain::after_validation(drain::classify_validation(reply.status)) {
        Action::MarkValidated => {
            store::mark_validated(
                client,
                pool,
                &mut intent,
                drain::validation_record(reply.response, reply.text),
            )?;
            let cfg = pools::load_config(client, pool)?;
            if cfg.commit_target.is_none() {
                return store::commit_locally(client, pool, &intent);
            }
            if enqueue_commit {
                outbox::rearm(
                    client,
                    &requests::delivery(&cfg, pool, &intent, Stage::Commit)?,
                )?;
            }
            Ok("validated")
        }
        Action::Release => {
            store::release(client, pool, &intent)?;
            Ok("released")
        }
        _ => {
            store::note_error(
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
    let Some(intent) = store::lock(client, pool, msg_id)? else {
        return Ok("gone");
    };
    // A pool with a validation webhook commits only what the webhook validated (a reply for an
    // intent still queued would sell an unpaid slot).
    if intent.state() == IntentState::Queued && pools::load_config(client, pool)?.webhook.is_some()
    {
        return Err(CoreError::IllegalTransition {
            state: "queued (not validated)".into(),
            event: "commit".into(),
            allowed: vec!["validation (intake.report_validation)".into()],
        });
    }
    match drain::after_commit(drain::classify(status), status) {
        Action::Complete => {
            store::complete(client, pool, &intent)?;
            Ok("committed")
        }
        Action::DeadLetter(reason) => {
            store::dead_letter(client, pool, &intent, &reason)?;
            Ok("dead_lettered")
        }
        _ => {
            store::note_error(client, pool, &intent, &reply_error("commit", status, error))?;
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
