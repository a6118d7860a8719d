//! Running the owners' response handlers on recorded answers: each in a subtransaction of its
//! own, a failing one's error kept with its delivery (a 2xx stays delivered), an answer that
//! says the remote did nothing recorded as not delivered, and a failed handler run again on the
//! stored answer (`flowgate.rerun_handlers`). A sensitive delivery's answer (tenant API keys)
//! is handed to its handler only, never bound to a statement.

use pgrx::prelude::*;
use pgrx::JsonB;

use super::handlers::{self, HandlerCall, Outcome};
use super::record::{Observation, Recorded};
use crate::core::error::{CoreError, CoreResult, SqlError};
use crate::core::prepared;
use crate::core::subxact;

/// The response body a statement may store for delivery `id`: none for a sensitive one (its
/// answer holds secrets, tenant API keys; a statement's parameters can be logged: pgaudit's
/// `log_parameter`). A handler's failure is rare: looked up here, not carried.
fn storable_body(id: i64, observed: &Observation) -> CoreResult<Option<String>> {
    let sensitive = Spi::get_one_with_args::<bool>(
        "SELECT sensitive FROM flowgate.deliveries WHERE id = $1",
        &[id.into()],
    )?;
    Ok(match sensitive {
        Some(false) => observed.body.clone(),
        _ => None,
    })
}

/// The delivery whose handler failed, kept: a 2xx stays delivered (sending again could post a
/// Slack message twice), anything else is failed; `handler_error` says why.
fn keep_after_handler_error(id: i64, observed: &Observation, error: &str) -> CoreResult<Recorded> {
    Spi::run_with_args(
        "UPDATE flowgate.deliveries \
            SET status = CASE WHEN $2 BETWEEN 200 AND 299 THEN 'delivered' ELSE 'failed' END::flowgate.delivery_status, \
                delivered_at = CASE WHEN $2 BETWEEN 200 AND 299 THEN clock_timestamp() END, \
                last_status_code = $2, response_body = $3, response_content_type = $4, \
                last_error = CASE WHEN $2 BETWEEN 200 AND 299 \
                                  THEN 'delivered, but the response handler failed; fix it, then flowgate.rerun_handlers()' \
                                  ELSE 'recording the outcome or running the response handler failed; fix the cause, then flowgate.replay_dead()' END, \
                handler_error = $5, claimed_at = NULL, updated_at = clock_timestamp() \
          WHERE id = $1",
        &[
            id.into(),
            observed.status_code().into(),
            storable_body(id, observed)?.into(),
            observed.content_type.clone().into(),
            error.chars().take(2000).collect::<String>().into(),
        ],
    )?;
    Ok(Recorded::HandlerError)
}

/// A delivery whose answer, though 2xx, says the remote did nothing (its handler returned
/// [`CoreError::Refused`]): not delivered. A transient refusal is tried again in a minute (dead
/// once its attempts are spent); any other is failed, for `flowgate.replay_dead` once the cause
/// is fixed. Sending it again posts nothing twice: nothing was posted.
fn refused_in_answer(
    id: i64,
    observed: &Observation,
    e: &CoreError,
    transient: bool,
) -> CoreResult<Recorded> {
    let why = format!("{e}; {}", e.hint().unwrap_or_default());
    let status = Spi::get_one_with_args::<String>(
        "UPDATE flowgate.deliveries \
            SET status = CASE WHEN NOT $5 THEN 'failed' WHEN attempts < max_attempts THEN 'pending' ELSE 'dead' END::flowgate.delivery_status, \
                next_attempt_at = CASE WHEN $5 AND attempts < max_attempts THEN clock_timestamp() + interval '60 seconds' ELSE next_attempt_at END, \
                delivered_at = NULL, last_status_code = $2, response_body = $3, \
                response_content_type = $4, last_error = left($6, 2000), handler_error = NULL, claimed_at = NULL, \
                updated_at = clock_timestamp() \
          WHERE id = $1 RETURNING status::text",
        &[
            id.into(),
            observed.status_code().into(),
            storable_body(id, observed)?.into(),
            observed.content_type.clone().into(),
            transient.into(),
            why.into(),
        ],
    )?;
    Ok(match status.as_deref() {
        Some("pending") => Recorded::Retry,
        Some("dead") => Recorded::Dead,
        _ => Recorded::Failed,
    })
}

/// Run one delivery's handler in a subtransaction of its own: what recording it comes to
/// (`recorded`), or the delivery kept with the handler's error.
pub(super) fn run_handler(
    name: &str,
    call: &HandlerCall<'_>,
    observed: &Observation,
    recorded: Recorded,
) -> CoreResult<Recorded> {
    let ran = subxact::run(|| {
        let run = handlers::registered(name)?;
        Spi::connect_mut(|client| run(client, call))
    });
    match ran {
        Ok(Ok(())) => Ok(recorded),
        Ok(Err(e @ CoreError::Refused { transient, .. })) => {
            refused_in_answer(call.delivery_id, observed, &e, transient)
        }
        Ok(Err(e)) => keep_after_handler_error(
            call.delivery_id,
            observed,
            &format!("{}: {e}", e.sqlstate()),
        ),
        Err(c) => keep_after_handler_error(
            call.delivery_id,
            observed,
            &format!("{}: {}", c.sqlstate, c.message),
        ),
    }
}

/// Re-run the handler of a delivered delivery whose handler failed, with its stored response.
/// Returns false when there was nothing to re-run.
pub fn rerun_handler(id: i64) -> CoreResult<bool> {
    Spi::connect_mut(|client| {
        let rows = prepared::exec(client, "SELECT owner_module, owner_id, handler, body, last_status_code, response_body FROM flowgate.deliveries \
             WHERE id = $1 AND status = 'delivered' AND handler IS NOT NULL AND handler_error IS NOT NULL FOR UPDATE", &[id.into()],
        )?;
        if rows.is_empty() {
            return Ok(false);
        }
        let row = rows.first();
        let owner_module: String = row.get(1)?.unwrap_or_default();
        let owner_id: String = row.get(2)?.unwrap_or_default();
        let name: String = row.get(3)?.unwrap_or_default();
        let request: Option<JsonB> = row.get(4)?;
        let status_code: Option<i32> = row.get(5)?;
        let text: String = row.get::<String>(6)?.unwrap_or_default();
        let run = handlers::registered(&name)?;
        let call = HandlerCall {
            delivery_id: id,
            owner_module: &owner_module,
            owner_id: &owner_id,
            outcome: Outcome::Delivered,
            status_code,
            response: handlers::response_json(&text),
            response_text: &text,
            request: request.as_ref().map(|j| &j.0),
            last_error: None,
        };
        if let Err(e) = run(client, &call) {
            return match e {
                // Nothing was done remotely: failed now (not retried: an operator asked for
                // this run), for replay_dead to send again.
                e @ CoreError::Refused { .. } => {
                    let observed = Observation {
                        attempt: Ok(super::policy::Attempt::Response {
                            status: status_code.unwrap_or(200).clamp(100, 599) as u16,
                            retry_after: None,
                        }),
                        body: Some(text.clone()),
                        content_type: None,
                    };
                    refused_in_answer(id, &observed, &e, false).map(|_| false)
                }
                other => Err(other),
            };
        }
        prepared::exec(client, "UPDATE flowgate.deliveries SET handler_error = NULL, last_error = NULL, updated_at = clock_timestamp() WHERE id = $1", &[id.into()],
        )?;
        Ok(true)
    })
}
