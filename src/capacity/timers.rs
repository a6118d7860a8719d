//! The capacity timers: requests past their customer confirmation deadline expire
//! (CUSTOMER_CONFIRMATION_TIMEOUT, as the system), and those close to it are warned once.

use chrono::DateTime;
use pgrx::prelude::*;
use serde_json::{json, Value};

use super::machine::Event;
use super::store::apply_at;
use crate::core::actor::Actor;
use crate::core::error::{CoreError, CoreResult};
use crate::core::store as core_store;

/// Expire every request past its confirmation deadline and warn those close to it.
/// Run the timers as of `as_of` (an RFC 3339 time; None: now). The clock is an input: an
/// operator (or a test) sees what the timers do at a given moment without editing deadlines.
pub fn run_timers(as_of: Option<&str>) -> Result<Value, CoreError> {
    let due: Vec<String> = Spi::connect_mut(|client| -> CoreResult<Vec<String>> {
        let rows = client.update(
            "SELECT id FROM capacity.capacity_requests \
             WHERE state = 'CUSTOMER_CONFIRMATION_REQUIRED' \
               AND customer_confirmation_deadline_at <= coalesce($1::timestamptz, now()) \
             ORDER BY customer_confirmation_deadline_at LIMIT 1000 FOR UPDATE SKIP LOCKED",
            None,
            &[as_of.into()],
        )?;
        let mut ids = Vec::new();
        for row in rows {
            if let Some(id) = row.get::<String>(1)? {
                ids.push(id);
            }
        }
        Ok(ids)
    })?;
    // The timers' clock: what the reducer sees as now (a timeout before the deadline is
    // refused).
    let at = Spi::get_one_with_args::<i64>(
        "SELECT (extract(epoch FROM coalesce($1::timestamptz, now())) * 1000000)::int8",
        &[as_of.into()],
    )?
    .and_then(DateTime::from_timestamp_micros)
    .ok_or_else(|| CoreError::Internal("the timers' time is out of range".into()))?;
    let system = Actor::system();
    let mut expired = 0usize;
    for id in &due {
        let applied = apply_at(
            id,
            Event::CustomerConfirmationTimeout,
            || {
                Ok(match as_of {
                    None => json!({"reason": "customer confirmation deadline passed"}),
                    Some(t) => {
                        json!({"reason": "customer confirmation deadline passed", "as_of": t})
                    }
                })
            },
            &system,
            Some("sys:confirmation-timeout"),
            Some(at),
        )?;
        expired += usize::from(!applied.replayed);
    }
    let warning_hours = core_store::get_i64("capacity.warning_hours_before_deadline")?;
    let mut warned = 0i64;
    if warning_hours > 0 {
        warned = Spi::connect_mut(|client| -> CoreResult<i64> {
            // Overlapping runs cannot warn twice: the UPDATE re-checks last_notified_at under
            // the row lock, and a concurrently locked row is left for the next run.
            let rows = client.update(
                "UPDATE capacity.capacity_requests r SET last_notified_at = coalesce($2::timestamptz, now()) \
                  WHERE id IN (SELECT id FROM capacity.capacity_requests \
                                WHERE state = 'CUSTOMER_CONFIRMATION_REQUIRED' \
                                  AND customer_confirmation_deadline_at > coalesce($2::timestamptz, now()) \
                                  AND customer_confirmation_deadline_at <= coalesce($2::timestamptz, now()) + make_interval(hours => $1) \
                                  AND (last_notified_at IS NULL \
                                       OR last_notified_at < customer_confirmation_deadline_at - make_interval(hours => $1)) \
                                FOR UPDATE SKIP LOCKED) \
                 RETURNING id, to_char(customer_confirmation_deadline_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
                None,
                &[(warning_hours as i32).into(), as_of.into()],
            )?;
            let mut list = Vec::new();
            for row in rows {
                list.push((
                    row.get::<String>(1)?.unwrap_or_default(),
                    row.get::<String>(2)?.unwrap_or_default(),
                ));
            }
            for (id, deadline) in &list {
                let note = json!({"request_id": id, "warning": "customer confirmation due", "deadline": deadline});
                client.update(
                    "SELECT pg_catalog.pg_notify('flowgate_capacity', $1)",
                    None,
                    &[note.to_string().into()],
                )?;
                super::notify::warn(client, id, deadline)?;
            }
            Ok(list.len() as i64)
        })?;
    }
    Ok(json!({"expired": expired, "warned": warned}))
}
