//! The registry of response handlers: how an owning module reacts to the outcome of its
//! delivery (store a Slack `ts`, a Linear issue id, mark an intent validated) in the same
//! transaction that records the outcome.
//!
//! A handler runs when a delivery is delivered, fails permanently or dies. If it raises, the
//! outcome it was given is rolled back with it (a subtransaction per delivery), and the delivery
//! is marked `failed` with `handler_error` set, ready for `flowgate.replay_dead`.

use pgrx::spi::SpiClient;
use serde_json::Value;

use crate::core::error::CoreResult;

/// How a delivery ended, as told to its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// A permanent error (4xx other than 408/425/429, or a missing secret).
    Failed,
    /// Retries exhausted.
    Dead,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::Dead => "dead",
        }
    }
}

/// What a handler is given.
#[derive(Debug)]
pub struct HandlerCall<'a> {
    pub delivery_id: i64,
    pub owner_module: &'a str,
    pub owner_id: &'a str,
    pub outcome: Outcome,
    pub status_code: Option<i32>,
    /// The response body (possibly truncated), parsed as JSON when it is JSON.
    pub response: Option<Value>,
    pub response_text: &'a str,
    /// The request body that was sent.
    pub request: Option<&'a Value>,
    pub last_error: Option<&'a str>,
}

pub type Handler = for<'c, 'a> fn(&mut SpiClient<'c>, &HandlerCall<'a>) -> CoreResult<()>;

/// A handler's batch form: all of one recording round's deliveries with that handler at once,
/// with the same effect as calling the single form on each. It runs in one subtransaction; if
/// it raises, that is rolled back and the single form runs for each delivery in its own, so a
/// failing delivery is isolated exactly as without the batch form.
pub type BatchHandler =
    for<'c, 'a, 'b> fn(&mut SpiClient<'c>, &'b [HandlerCall<'a>]) -> CoreResult<()>;

/// Every handler flowgate knows, by name: those of each module (`core::module`).
fn registry() -> Vec<(&'static str, Handler)> {
    #[allow(unused_mut)]
    let mut all: Vec<(&'static str, Handler)> = crate::core::module::all()
        .iter()
        .flat_map(|m| m.handlers.iter().copied())
        .collect();
    #[cfg(any(test, feature = "pg_test"))]
    all.extend(crate::core::tests::outbox_handlers());
    all
}

/// The batch form of the handler called `name`, when its module gives one.
pub fn find_batch(name: &str) -> Option<BatchHandler> {
    crate::core::module::all()
        .iter()
        .flat_map(|m| m.batch_handlers.iter())
        .find(|(n, _)| *n == name)
        .map(|(_, h)| *h)
}

pub fn find(name: &str) -> Option<Handler> {
    registry()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, h)| h)
}

/// The handler called `name`, or 22023 naming the registered ones.
pub fn registered(name: &str) -> crate::core::error::CoreResult<Handler> {
    find(name).ok_or_else(|| {
        crate::core::error::CoreError::invalid(
            "handler",
            format!("{name:?} is not registered"),
            names().join(", "),
        )
    })
}

pub fn names() -> Vec<&'static str> {
    let names: Vec<&'static str> = registry().into_iter().map(|(n, _)| n).collect();
    if names.is_empty() {
        vec!["(no handlers are registered yet)"]
    } else {
        names
    }
}

/// A response body as the JSON a handler reads: None when it is not JSON. A string holding NUL
/// (`\u0000`), which no `text` or `jsonb` value can hold, has it replaced by U+FFFD, so a
/// remote's id or message a handler stores (a Slack `ts`, a Linear issue id, an API's error)
/// is never cut short or refused when it is written.
pub fn response_json(text: &str) -> Option<serde_json::Value> {
    let mut v: serde_json::Value = serde_json::from_str(text).ok()?;
    without_nul(&mut v);
    Some(v)
}

/// Replace NUL in every string and key of `v` (nesting is bounded by serde_json's own limit).
fn without_nul(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{FFFD}"),
        serde_json::Value::Array(a) => a.iter_mut().for_each(without_nul),
        serde_json::Value::Object(m) => {
            if m.keys().any(|k| k.contains('\0')) {
                *m = std::mem::take(m)
                    .into_iter()
                    .map(|(k, x)| (k.replace('\0', "\u{FFFD}"), x))
                    .collect();
            }
            m.values_mut().for_each(without_nul);
        }
        _ => {}
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn response_json_holds_no_nul() {
        let v = response_json(r#"{"ok": true, "ts": "1\u00002", "a\u0000": ["x\u0000"]}"#).unwrap();
        assert_eq!(v["ts"], "1\u{FFFD}2");
        assert_eq!(v["a\u{FFFD}"][0], "x\u{FFFD}");
        assert!(response_json("not json").is_none());
    }
}
