//! Signed Slack requests handled lately, with their answers (`capacity.slack_requests`): the
//! same request sent again (Slack retries, a replay inside the signature's window) gets the
//! same answer and changes nothing.

use pgrx::prelude::*;
use serde_json::Value;

use crate::core::error::{CoreError, CoreResult};
use crate::core::prepared;

/// How long a handled Slack request's answer is kept at least (it is pruned as later requests
/// come): a signature is accepted 5 minutes either side of its timestamp, so 10 minutes after
/// it was first seen it cannot come again; 15 to spare.
const SLACK_REQUESTS_KEPT_MINUTES: i32 = 15;

/// Take a verified Slack request (by its signature) for this transaction: `None` when it is
/// new (the caller handles it and records the answer with [`slack_answered`]), or the answer
/// it got when it was handled before. Two copies sent at once: the second waits for the
/// first's transaction and gets its answer (or is handled, if the first failed).
pub fn slack_replay(signature: &str) -> CoreResult<Option<Value>> {
    let key = signature.to_ascii_lowercase();
    Spi::connect_mut(|client| {
        let taken = prepared::run(
            client,
            // Old answers go as requests come, a few at a time, and only those no other call
            // is deleting: no Slack request waits for another's transaction to prune.
            "WITH stale AS (DELETE FROM capacity.slack_requests WHERE signature IN ( \
                              SELECT signature FROM capacity.slack_requests \
                               WHERE received_at < pg_catalog.clock_timestamp() - pg_catalog.make_interval(mins => $2) \
                               LIMIT 100 FOR UPDATE SKIP LOCKED)) \
             INSERT INTO capacity.slack_requests (signature) VALUES ($1) \
             ON CONFLICT (signature) DO NOTHING RETURNING true",
            &[prepared::TEXT, prepared::INT4],
            &[key.as_str().into(), SLACK_REQUESTS_KEPT_MINUTES.into()],
        )?;
        if !taken.is_empty() {
            return Ok(None);
        }
        // Handled before, and committed (the insert waited for it): a write, so its snapshot
        // is taken now and sees that answer.
        let earlier = prepared::run(
            client,
            "SELECT answer FROM capacity.slack_requests WHERE signature = $1",
            &[prepared::TEXT],
            &[key.as_str().into()],
        )?;
        let answer = if earlier.is_empty() {
            None
        } else {
            prepared::json_at(&earlier.first(), 1)?
        };
        // Pruned meanwhile (its first copy was held open past the retention): not handled
        // again here; the sender tries again.
        answer.map(Some).ok_or_else(|| CoreError::Busy {
            what: "a Slack request".into(),
            hint: "the same request was being handled; send it again".into(),
        })
    })
}

/// Record the answer a Slack request taken with [`slack_replay`] got.
pub fn slack_answered(signature: &str, answer: &Value) -> CoreResult<()> {
    let key = signature.to_ascii_lowercase();
    Spi::connect_mut(|client| {
        prepared::run(
            client,
            "UPDATE capacity.slack_requests SET answer = $2 WHERE signature = $1",
            &[prepared::TEXT, prepared::JSONB],
            &[key.as_str().into(), prepared::jsonb_arg(answer)?],
        )?;
        Ok(())
    })
}
