//! Recording an attempt's outcome under its lease: the verdict (retry, deliver, fail, dead), one
//! statement for a round, the owner's response handlers (their batch forms when given, each
//! delivery isolated in a subtransaction otherwise; `handler_runs`), and flow pauses from
//! Retry-After.

use std::time::{Duration, SystemTime};

use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;

use super::handler_runs::run_handler;
use super::handlers::{self, HandlerCall, Outcome};
use super::policy::{self, Attempt, RetryPolicy, Verdict};
use crate::core::error::{CoreError, CoreResult};
use crate::core::prepared;
use crate::core::store as settings;
use crate::core::subxact;

/// Retry tuning from settings.
pub fn retry_policy() -> CoreResult<RetryPolicy> {
    Ok(RetryPolicy {
        base: Duration::from_millis(settings::get_i64("flowgate.retry_base_ms")?.max(1) as u64),
        cap: Duration::from_millis(settings::get_i64("flowgate.retry_cap_ms")?.max(1) as u64),
        max_retry_after: Duration::from_secs(
            settings::get_i64("flowgate.max_retry_after_seconds")?.max(0) as u64,
        ),
    })
}

/// What a transport observed, as text (pg_net's response table, `flowgate.record_attempt`).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub status_code: Option<i32>,
    pub retry_after: Option<String>,
    pub body: Option<String>,
    pub content_type: Option<String>,
    /// `timeout`, `connect`, `transport` or `unsendable`; `None` when the server answered.
    pub error_kind: Option<String>,
    pub error: Option<String>,
}

impl Observed {
    /// The typed observation: a status outside 100..=599 is a transport error.
    pub fn typed(&self) -> Observation {
        let detail = || crate::core::error::bounded(self.error.clone().unwrap_or_default());
        let attempt = match self.error_kind.as_deref() {
            None => match self.status_code {
                Some(s) if (100..=599).contains(&s) => Ok(Attempt::Response {
                    status: s as u16,
                    retry_after: self.retry_after.clone(),
                }),
                other => Ok(Attempt::Transport(format!(
                    "no usable status code ({other:?})"
                ))),
            },
            Some("timeout") => Ok(Attempt::Timeout),
            Some("connect") => Ok(Attempt::Connect(detail())),
            Some("unsendable") => Err(detail()),
            Some(_) => Ok(Attempt::Transport(detail())),
        };
        Observation {
            attempt,
            // Stored as the native client stores a response: at most MAX_STORED_BODY bytes.
            body: self
                .body
                .as_deref()
                .map(|b| super::native::stored_text(b.as_bytes())),
            content_type: self.content_type.clone(),
        }
    }
}

/// What one attempt came to: the transport's observation, or why it could not be sent at all
/// (a secret that is missing or unreadable).
#[derive(Debug, Clone)]
pub struct Observation {
    pub attempt: Result<Attempt, String>,
    /// The response body (possibly truncated) when the server answered.
    pub body: Option<String>,
    pub content_type: Option<String>,
}

impl Observation {
    pub fn unsendable(reason: String) -> Self {
        Observation {
            attempt: Err(reason),
            body: None,
            content_type: None,
        }
    }

    pub fn status_code(&self) -> Option<i32> {
        match &self.attempt {
            Ok(Attempt::Response { status, .. }) => Some(i32::from(*status)),
            _ => None,
        }
    }
}

/// How recording one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Delivered,
    /// Back to pending, due after its back-off.
    Retry,
    Failed,
    Dead,
    /// No longer in flight under this lease: someone else recorded it (or its lease expired
    /// and it was claimed again); nothing was written.
    Skipped,
    /// Recording or the owner's handler raised: the handler's writes were undone and the
    /// delivery is kept with `handler_error` set.
    HandlerError,
}

impl Recorded {
    pub const ALL: [Recorded; 6] = [
        Recorded::Delivered,
        Recorded::Retry,
        Recorded::Failed,
        Recorded::Dead,
        Recorded::Skipped,
        Recorded::HandlerError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Recorded::Delivered => "delivered",
            Recorded::Retry => "retry",
            Recorded::Failed => "failed",
            Recorded::Dead => "dead",
            Recorded::Skipped => "skipped",
            Recorded::HandlerError => "handler_error",
        }
    }
}

/// The claim a delivery is in flight under: the attempt number it was claimed with and the
/// claim's time (`claimed_at`, to the microsecond). The attempt number alone repeats once
/// `flowgate.replay_dead` resets a delivery's attempts: a record step that stalled past its
/// lease, followed by the delivery's death, a replay and new claims, would take the new claim
/// for its own and record its stale answer on it. The two together never repeat.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    pub attempt: i32,
    pub claimed_at: TimestampWithTimeZone,
}

/// The row an attempt is recorded on, locked.
struct InFlight {
    lease: Lease,
    sensitive: bool,
    max_attempts: i32,
    flow_key: String,
}

/// Lock the delivery and check that it is still in flight under `lease` (`None` accepts any
/// claim, as pg_net's collector does: it matches requests by pg_net's own ids). `None` when it
/// is gone, no longer in flight, or claimed again.
fn lock_in_flight(
    client: &mut SpiClient<'_>,
    id: i64,
    lease: Option<Lease>,
) -> CoreResult<Option<InFlight>> {
    let rows = prepared::exec(
        client,
        "SELECT attempts, max_attempts, status = 'in_flight' AND ($2::int IS NULL OR (attempts = $2 AND claimed_at = $3)), \
                flow_key, claimed_at, sensitive \
           FROM flowgate.deliveries WHERE id = $1 FOR UPDATE",
        &[
            id.into(),
            lease.map(|l| l.attempt).into(),
            lease.map(|l| l.claimed_at).into(),
        ],
    )?;
    if rows.is_empty() {
        // Deleted meanwhile (an operator's DELETE): nothing to record, and the rest of the
        // round is recorded as usual.
        return Ok(None);
    }
    let first = rows.first();
    let (Some(claimed_at), Some(true)) = (
        first.get::<TimestampWithTimeZone>(5)?,
        first.get::<bool>(3)?,
    ) else {
        return Ok(None);
    };
    Ok(Some(InFlight {
        lease: Lease {
            attempt: first.get(1)?.unwrap_or(0),
            claimed_at,
        },
        sensitive: first.get(6)?.unwrap_or(false),
        max_attempts: first.get(2)?.unwrap_or(1),
        flow_key: first.get(4)?.unwrap_or_default(),
    }))
}

/// Record the outcome of one attempt of an `in_flight` delivery and run its owner's handler.
/// A handler runs in a subtransaction: when it raises, its writes are undone and the delivery
/// is kept (a 2xx stays delivered, since sending it again could post a Slack message twice)
/// with `handler_error` set.
pub fn record(id: i64, lease: Option<Lease>, observed: &Observation) -> CoreResult<Recorded> {
    record_with(id, lease, observed, &retry_policy()?)
}

/// [`record`] with the retry policy already read: one row through [`record_batch`], under
/// its lease (or, with none, whatever attempt it is in flight under), and a Retry-After
/// pauses its flow key.
pub fn record_with(
    id: i64,
    lease: Option<Lease>,
    observed: &Observation,
    policy: &RetryPolicy,
) -> CoreResult<Recorded> {
    let mut pauses = Vec::new();
    let recorded = record_deferring_pause(id, lease, observed, policy, &mut pauses)?;
    let pauses: Vec<(&str, Duration)> = pauses.iter().map(|(k, d)| (k.as_str(), *d)).collect();
    pause_flows(&pauses)?;
    Ok(recorded)
}

/// [`record_with`], leaving the flow pause its answer asks for in `pauses` for the caller to
/// apply with the others of its transaction, at once and in key order ([`pause_flows`]): a
/// caller recording many answers (`collect`) that paused each as it went would lock flow keys
/// in delivery order, against claims that lock them in key order, and hold each until it ends.
pub fn record_deferring_pause(
    id: i64,
    lease: Option<Lease>,
    observed: &Observation,
    policy: &RetryPolicy,
    pauses: &mut Vec<(String, Duration)>,
) -> CoreResult<Recorded> {
    let Some(row) = Spi::connect_mut(|client| lock_in_flight(client, id, lease))? else {
        return Ok(Recorded::Skipped);
    };
    if let Some(d) = pause_of(observed, policy) {
        pauses.push((row.flow_key.clone(), d));
    }
    let item = Batched {
        id,
        lease: row.lease,
        sensitive: row.sensitive,
        max_attempts: row.max_attempts,
        observed,
    };
    Ok(record_batch(&[item], policy)?
        .pop()
        .unwrap_or(Recorded::Skipped))
}

/// How long a 429 or 503 with Retry-After pauses its whole flow key (clamped like the
/// delivery's own wait).
pub fn pause_of(observed: &Observation, policy: &RetryPolicy) -> Option<Duration> {
    match &observed.attempt {
        Ok(Attempt::Response {
            status: 429 | 503,
            retry_after: Some(v),
        }) => policy::parse_retry_after(v, SystemTime::now())
            .map(|d| d.min(policy.max_retry_after))
            .filter(|d| !d.is_zero()),
        _ => None,
    }
}

/// Pause flow keys until now + their wait (a later pause already set is kept).
/// Keys are written in key order, the order a claim locks them in (`engine`), so a round
/// pausing several keys and a claim taking them never deadlock.
pub fn pause_flows(pauses: &[(&str, Duration)]) -> CoreResult<()> {
    if pauses.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = pauses.iter().map(|(k, _)| *k).collect();
    let secs: Vec<f64> = pauses.iter().map(|(_, d)| d.as_secs_f64()).collect();
    Spi::run_with_args(
        "INSERT INTO flowgate.flow_state AS fs (flow_key, tokens, refilled_at, paused_until) \
         SELECT k, 0, clock_timestamp(), clock_timestamp() + make_interval(secs => max(w)) \
           FROM unnest($1::text[], $2::float8[]) AS u(k, w) GROUP BY k ORDER BY k \
         ON CONFLICT (flow_key) DO UPDATE \
            SET paused_until = greatest(fs.paused_until, EXCLUDED.paused_until)",
        &[keys.into(), secs.into()],
    )?;
    Ok(())
}

/// What an attempt comes to, ready to be written.
struct Decided {
    verdict: Verdict,
    /// The delivery's next status.
    status: &'static str,
    /// Back-off before the next attempt (pending only).
    delay_ms: i64,
    last_error: Option<String>,
    recorded: Recorded,
}

fn decide(
    attempts: i32,
    max_attempts: i32,
    observed: &Observation,
    policy: &RetryPolicy,
) -> Decided {
    let verdict = match &observed.attempt {
        Ok(attempt) => policy::decide(
            attempts.max(1) as u32,
            max_attempts.max(1) as u32,
            attempt,
            policy,
            rand::random::<f64>(),
            SystemTime::now(),
        ),
        Err(reason) => Verdict::Failed {
            reason: reason.clone(),
        },
    };
    let (status, delay_ms, last_error, recorded) = match &verdict {
        Verdict::Delivered => ("delivered", 0i64, None, Recorded::Delivered),
        Verdict::Retry { delay, reason } => (
            "pending",
            delay.as_millis().min(i64::MAX as u128) as i64,
            Some(reason.clone()),
            Recorded::Retry,
        ),
        Verdict::Failed { reason } => ("failed", 0, Some(reason.clone()), Recorded::Failed),
        Verdict::Dead { reason } => ("dead", 0, Some(reason.clone()), Recorded::Dead),
    };
    Decided {
        verdict,
        status,
        delay_ms,
        last_error,
        recorded,
    }
}

/// One attempt to record in a batch.
pub struct Batched<'a> {
    pub id: i64,
    /// The claim it was sent under.
    pub lease: Lease,
    /// Its answer holds secrets: handed to its handler only, never bound to a statement (a
    /// statement's parameters can be logged: pgaudit's `log_parameter`).
    pub sensitive: bool,
    pub max_attempts: i32,
    pub observed: &'a Observation,
}

/// Record a round's attempts in one statement: each row is written only while still in flight
/// under its lease (the others are `Skipped`). Then the owners' response handlers run, each in
/// a subtransaction: one that raises has its writes undone and its delivery kept with
/// `handler_error` set (`handler_runs`); the recorded outcomes stand.
pub fn record_batch(items: &[Batched<'_>], policy: &RetryPolicy) -> CoreResult<Vec<Recorded>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let decided: Vec<Decided> = items
        .iter()
        .map(|u| decide(u.lease.attempt, u.max_attempts, u.observed, policy))
        .collect();
    let ids: Vec<i64> = items.iter().map(|u| u.id).collect();
    let leases: Vec<i32> = items.iter().map(|u| u.lease.attempt).collect();
    let claims: Vec<TimestampWithTimeZone> = items.iter().map(|u| u.lease.claimed_at).collect();
    let statuses: Vec<&str> = decided.iter().map(|d| d.status).collect();
    let delays: Vec<i64> = decided.iter().map(|d| d.delay_ms).collect();
    let codes: Vec<Option<i32>> = items.iter().map(|u| u.observed.status_code()).collect();
    let errors: Vec<Option<String>> = decided.iter().map(|d| d.last_error.clone()).collect();
    let bodies: Vec<Option<String>> = items
        .iter()
        .map(|u| match u.sensitive {
            true => None,
            false => u.observed.body.clone(),
        })
        .collect();
    let types: Vec<Option<String>> = items
        .iter()
        .map(|u| u.observed.content_type.clone())
        .collect();
    // What each written row's handler needs: its owner and the request as it was sent (the
    // row's body may be redacted by this very statement).
    type Written = (Option<String>, String, String, Option<JsonB>);
    let written: std::collections::HashMap<i64, Written> = Spi::connect_mut(|client| {
        let rows = prepared::exec(
            client,
            "UPDATE flowgate.deliveries d SET status = u.status::flowgate.delivery_status, \
               next_attempt_at = CASE WHEN u.status = 'pending' THEN clock_timestamp() + make_interval(secs => u.delay_ms::float8 / 1000) ELSE d.next_attempt_at END, \
               delivered_at = CASE WHEN u.status = 'delivered' THEN clock_timestamp() ELSE d.delivered_at END, \
               last_status_code = u.code, last_error = u.error, \
               response_body = u.body, \
               response_content_type = u.content_type, claimed_at = NULL, updated_at = clock_timestamp(), \
               body = CASE WHEN d.sensitive AND u.status <> 'pending' THEN '{\"redacted\": true}'::jsonb ELSE d.body END \
             FROM unnest($1::bigint[], $2::int[], $3::text[], $4::bigint[], $5::int[], $6::text[], $7::text[], $8::text[], $9::timestamptz[]) \
                  AS u(id, lease, status, delay_ms, code, error, body, content_type, claimed_at), \
                  (SELECT x.id, x.body FROM flowgate.deliveries x WHERE x.id = ANY ($1)) AS sent \
            WHERE d.id = u.id AND sent.id = u.id AND d.status = 'in_flight' AND d.attempts = u.lease \
              AND d.claimed_at = u.claimed_at \
            RETURNING d.id, d.handler, d.owner_module, d.owner_id, sent.body",
            &[
                ids.into(),
                leases.into(),
                statuses.into(),
                delays.into(),
                codes.into(),
                errors.into(),
                bodies.into(),
                types.into(),
                claims.into(),
            ],
        )?;
        let mut out = std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            out.insert(
                row.get::<i64>(1)?.unwrap_or_default(),
                (
                    row.get::<String>(2)?,
                    row.get::<String>(3)?.unwrap_or_default(),
                    row.get::<String>(4)?.unwrap_or_default(),
                    row.get::<JsonB>(5)?,
                ),
            );
        }
        Ok::<_, CoreError>(out)
    })?;
    let texts: Vec<String> = items
        .iter()
        .map(|u| u.observed.body.clone().unwrap_or_default())
        .collect();
    let mut out: Vec<Option<Recorded>> = Vec::with_capacity(items.len());
    // The deliveries whose handler runs now: (position, handler, outcome).
    let mut due: Vec<(usize, &str, Outcome)> = Vec::new();
    for (i, (u, d)) in items.iter().zip(&decided).enumerate() {
        let Some((handler, ..)) = written.get(&u.id) else {
            out.push(Some(Recorded::Skipped));
            continue;
        };
        let outcome = match d.verdict {
            Verdict::Delivered => Outcome::Delivered,
            Verdict::Failed { .. } => Outcome::Failed,
            Verdict::Dead { .. } => Outcome::Dead,
            Verdict::Retry { .. } => {
                out.push(Some(d.recorded));
                continue;
            }
        };
        let Some(name) = handler else {
            out.push(Some(d.recorded));
            continue;
        };
        out.push(None);
        due.push((i, name.as_str(), outcome));
    }
    // Grouped by handler (a stable sort: each handler sees its deliveries in round order).
    due.sort_by(|a, b| a.1.cmp(b.1));
    let calls: Vec<HandlerCall<'_>> = due
        .iter()
        .map(|&(i, _, outcome)| {
            let u = &items[i];
            let (_, owner_module, owner_id, request) = &written[&u.id];
            HandlerCall {
                delivery_id: u.id,
                owner_module,
                owner_id,
                outcome,
                status_code: u.observed.status_code(),
                response: handlers::response_json(&texts[i]),
                response_text: &texts[i],
                request: request.as_ref().map(|j| &j.0),
                last_error: decided[i].last_error.as_deref(),
            }
        })
        .collect();
    let mut start = 0;
    while start < due.len() {
        let name = due[start].1;
        let end = start + due[start..].iter().take_while(|r| r.1 == name).count();
        // A handler's batch form takes the whole group in one subtransaction; if it raises,
        // that is rolled back and each delivery runs the single form in its own.
        let batched = match handlers::find_batch(name) {
            Some(batch) if end - start > 1 => matches!(
                subxact::run(|| Spi::connect_mut(|client| batch(client, &calls[start..end]))),
                Ok(Ok(()))
            ),
            _ => false,
        };
        for k in start..end {
            let i = due[k].0;
            out[i] = Some(if batched {
                decided[i].recorded
            } else {
                run_handler(name, &calls[k], items[i].observed, decided[i].recorded)?
            });
        }
        start = end;
    }
    Ok(out
        .into_iter()
        .map(|r| r.unwrap_or(Recorded::Skipped))
        .collect())
}
