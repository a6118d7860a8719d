//! The Capacity Request reducer: the pure decision the event-store runner applies, plus the
//! business-day arithmetic of the customer-confirmation deadline.

use chrono::{DateTime, Datelike, Duration, SecondsFormat, Utc, Weekday};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::machine::{allowed_events, may_send, next_state, Event, Standing, State};
use crate::core::actor::{validate_actor_id, Actor};
use crate::core::error::CoreError;
use crate::core::workflow::{Reducer, Transition};

/// Longest free-text reason accepted.
pub const MAX_REASON: usize = 2000;
/// Largest event payload accepted, in bytes of JSON text (measured as by [`jsonb_text_len`]).
pub const MAX_PAYLOAD: usize = 16 * 1024;
/// Deepest nesting of objects and arrays accepted in an event payload.
pub const MAX_PAYLOAD_DEPTH: usize = 8;
/// Largest `customer_ref` accepted, in bytes of JSON text (measured as by [`jsonb_text_len`]),
/// and its deepest nesting: it holds a few customer identifiers, not documents.
pub const MAX_CUSTOMER_REF: usize = 4 * 1024;
pub const MAX_CUSTOMER_REF_DEPTH: usize = 5;
/// Longest `requested_size`, `region` and `infra_owner_group` accepted, in characters.
pub const MAX_SIZE_LEN: usize = 32;
pub const MAX_REGION_LEN: usize = 32;
pub const MAX_GROUP_LEN: usize = 63;
/// Most instances one request may ask for (the table's CHECK says the same).
pub const MAX_QUANTITY: i32 = 10_000;

/// An AWS region name, as the table's CHECK has it: `^[a-z]{2}(-[a-z]+)+-[0-9]+$`.
fn is_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}
/// Longest request id or event name looked up: no longer one exists, and an error message
/// never repeats an oversized argument.
pub const MAX_LOOKUP_LEN: usize = 64;

/// The projection row (`capacity.capacity_requests`), field names = column names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub state: State,
    pub requester_user_id: String,
    pub commercial_owner_user_id: String,
    pub infra_owner_group: String,
    pub customer_ref: Value,
    pub requested_size: String,
    pub quantity: i32,
    pub region: String,
    pub needed_by_date: Option<String>,
    pub expected_duration_days: Option<i32>,
    pub estimated_monthly_cost_usd: Option<Value>,
    pub customer_confirmation_deadline_at: Option<String>,
    pub cancellation_reason: Option<String>,
    pub cancellation_authorizer_user_id: Option<String>,
    pub procurement_started_at: Option<String>,
}

/// One input to the machine, with every fact the reducer needs already loaded.
#[derive(Debug, Clone)]
pub struct Command {
    pub event: Event,
    pub payload: Map<String, Value>,
    /// The actor's relation to the request (computed by the store from the row and groups).
    pub standing: Standing,
    pub now: DateTime<Utc>,
    pub confirmation_ttl_business_days: u32,
    /// For REQUEST_SUBMITTED: the request to create.
    pub new_request: Option<Request>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Tell the humans (Slack thread reply, Linear comment, NOTIFY).
    Announce { from: Option<State>, to: State },
    /// The customer went dark: the commercial owner must decide whether to cancel.
    CancellationTask {
        assigned_to: String,
        /// Two business days after the expiry (RFC 3339).
        due_at: String,
    },
    /// The decision was made: close open cancellation tasks.
    CloseCancellationTasks,
}

pub struct CapacityFlow;

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Why `cmd.event` comes on the wrong side of `current`'s confirmation deadline, as the state it
/// finds: a confirmation at or after the deadline is not one, however long the timers take to
/// expire the request, and a timeout before it is not one either, whoever sends it.
fn outside_confirmation_window(current: &Request, cmd: &Command) -> Option<String> {
    let late = match cmd.event {
        Event::CustomerConfirmed => true,
        Event::CustomerConfirmationTimeout => false,
        _ => return None,
    };
    let deadline = current.customer_confirmation_deadline_at.as_deref()?;
    let deadline = DateTime::parse_from_rfc3339(deadline)
        .ok()?
        .with_timezone(&Utc);
    let state = current.state.as_str();
    match (late, cmd.now >= deadline) {
        (true, true) => Some(format!(
            "{state} past its confirmation deadline ({}): it expires at the timers' next run",
            ts(deadline)
        )),
        (false, false) => Some(format!(
            "{state} until its confirmation deadline ({})",
            ts(deadline)
        )),
        _ => None,
    }
}

/// Business days the commercial owner has to decide on an expired request (its cancellation
/// task's due date).
pub const CANCELLATION_TASK_BUSINESS_DAYS: u32 = 2;

/// `n` business days (Monday to Friday) after `from`, keeping the time of day.
pub fn add_business_days(from: DateTime<Utc>, n: u32) -> DateTime<Utc> {
    let mut t = from;
    let mut left = n;
    while left > 0 {
        t += Duration::days(1);
        if !matches!(t.weekday(), Weekday::Sat | Weekday::Sun) {
            left -= 1;
        }
    }
    t
}

/// Bytes of `v` as Postgres prints it as a jsonb (`{"a": 1, "b": [1, 2]}`: a space after every
/// `:` and `,`), so the limits checked here are the ones the tables' `octet_length(col::text)`
/// CHECKs enforce on direct writes.
pub fn jsonb_text_len(v: &Value) -> usize {
    let separators = |n: usize| 2 * n.saturating_sub(1);
    match v {
        Value::Object(m) => {
            2 + separators(m.len())
                + m.iter()
                    .map(|(k, v)| {
                        Value::String(k.clone()).to_string().len() + 2 + jsonb_text_len(v)
                    })
                    .sum::<usize>()
        }
        Value::Array(a) => 2 + separators(a.len()) + a.iter().map(jsonb_text_len).sum::<usize>(),
        scalar => scalar.to_string().len(),
    }
}

/// Nesting of objects and arrays: 0 for a scalar, 1 for `{}` or `{"a": 1}`, 2 for `{"a": [1]}`.
pub fn json_depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(json_depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// 22023 unless `v` is a JSON object of at most `max_len` bytes (as jsonb text) nested at most
/// `max_depth` levels deep.
pub fn check_json_object(
    what: &str,
    v: &Value,
    max_len: usize,
    max_depth: usize,
    example: &str,
) -> Result<(), CoreError> {
    let allowed = || {
        format!(
            "a JSON object such as {example}, at most {max_len} bytes of JSON text and nested at most {max_depth} levels deep"
        )
    };
    if !v.is_object() {
        return Err(CoreError::invalid(
            what,
            "it is not a JSON object",
            allowed(),
        ));
    }
    let len = jsonb_text_len(v);
    if len > max_len {
        return Err(CoreError::invalid(
            what,
            format!("it is {len} bytes of JSON text"),
            allowed(),
        ));
    }
    let depth = json_depth(v);
    if depth > max_depth {
        return Err(CoreError::invalid(
            what,
            format!("it is nested {depth} levels deep"),
            allowed(),
        ));
    }
    Ok(())
}

/// `customer_ref`: a few customer identifiers.
pub fn check_customer_ref(v: &Value) -> Result<(), CoreError> {
    check_json_object(
        "customer_ref",
        v,
        MAX_CUSTOMER_REF,
        MAX_CUSTOMER_REF_DEPTH,
        r#"{"org": "acme", "account_id": "A-123"}"#,
    )
}

/// 22023 unless `value` has 1 to `max` characters and no control characters. Only the length:
/// formats (a region, a group name) are the table's CHECKs.
fn check_text(what: &str, value: &str, max: usize, example: &str) -> Result<(), CoreError> {
    let n = value.chars().count();
    let problem = if n == 0 {
        "it is empty".to_string()
    } else if n > max {
        format!("it is {n} characters long")
    } else if value.chars().any(char::is_control) {
        "it contains control characters".to_string()
    } else {
        return Ok(());
    };
    Err(CoreError::invalid(
        what,
        problem,
        format!("1 to {max} printable characters, e.g. {example}"),
    ))
}

/// 22023 for a request id or event name longer than any that exists, before it is looked up
/// (or repeated in a P0002 message).
pub fn check_lookup(what: &str, value: &str) -> Result<(), CoreError> {
    if value.len() > MAX_LOOKUP_LEN {
        return Err(CoreError::invalid(
            what,
            format!("it is {} bytes long", value.len()),
            format!("at most {MAX_LOOKUP_LEN} bytes, e.g. CR-2026-000123 or COMMERCIAL_APPROVED"),
        ));
    }
    Ok(())
}

impl Request {
    /// The bounds of a new request's caller-supplied fields, checked before anything is
    /// written, whichever surface (SQL, Slack) it came from. The table's CHECKs agree.
    pub fn check_new(&self) -> Result<(), CoreError> {
        validate_actor_id("commercial_owner_user_id", &self.commercial_owner_user_id)?;
        check_text(
            "infra_owner_group",
            &self.infra_owner_group,
            MAX_GROUP_LEN,
            "infra",
        )?;
        check_text("requested_size", &self.requested_size, MAX_SIZE_LEN, "24XL")?;
        check_text("region", &self.region, MAX_REGION_LEN, "us-east-1")?;
        if !is_region(&self.region) {
            return Err(CoreError::invalid(
                "region",
                format!(
                    "{} is not an AWS region name",
                    crate::core::error::quoted(&self.region)
                ),
                "a region such as us-east-1, eu-west-2 or ap-southeast-1",
            ));
        }
        if !self
            .infra_owner_group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(CoreError::invalid(
                "infra_owner_group",
                format!(
                    "{} has characters a group name cannot have",
                    crate::core::error::quoted(&self.infra_owner_group)
                ),
                "1 to 63 of A-Za-z0-9_.-, e.g. infra",
            ));
        }
        if let Some(d) = self
            .expected_duration_days
            .filter(|d| !(1..=36_500).contains(d))
        {
            return Err(CoreError::invalid(
                "expected_duration_days",
                d.to_string(),
                "1 to 36500 days, or NULL",
            ));
        }
        if let Some(c) = &self.estimated_monthly_cost_usd {
            // The column is numeric(14,2): a value that rounds to 10^12 would overflow it (22003).
            let ok = c
                .as_f64()
                .is_some_and(|v| (0.0..999_999_999_999.995).contains(&v));
            if !ok {
                return Err(CoreError::invalid(
                    "estimated_monthly_cost_usd",
                    c.to_string(),
                    "0 to 999999999999.99 USD, or NULL",
                ));
            }
        }
        if !(1..=MAX_QUANTITY).contains(&self.quantity) {
            return Err(CoreError::invalid(
                "quantity",
                self.quantity.to_string(),
                format!("1 to {MAX_QUANTITY} instances"),
            ));
        }
        check_customer_ref(&self.customer_ref)
    }
}

fn reason(
    payload: &Map<String, Value>,
    required_for: Option<&str>,
) -> Result<Option<String>, CoreError> {
    match payload.get("reason") {
        None | Some(Value::Null) => match required_for {
            Some(what) => Err(CoreError::invalid(
                "payload.reason",
                format!("a reason is required to {what}"),
                format!("a non-empty string of at most {MAX_REASON} characters"),
            )),
            None => Ok(None),
        },
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= MAX_REASON => {
            Ok(Some(s.trim().to_string()))
        }
        Some(other) => Err(CoreError::invalid(
            "payload.reason",
            format!("got {other}"),
            format!("a non-empty string of at most {MAX_REASON} characters"),
        )),
    }
}

impl Reducer for CapacityFlow {
    type State = Request;
    type Event = Command;
    type Effect = Effect;
    type Error = CoreError;

    fn reduce(
        state: Option<&Request>,
        cmd: &Command,
        actor: &Actor,
    ) -> Result<Transition<Request, Effect>, CoreError> {
        let Some(current) = state else {
            return match (cmd.event, &cmd.new_request) {
                (Event::RequestSubmitted, Some(new)) => {
                    let mut r = new.clone();
                    r.state = next_state(State::Submitted, Event::RequestSubmitted)
                        .unwrap_or(State::CommercialApprovalRequired);
                    Ok(Transition::to(r.clone()).with(Effect::Announce {
                        from: None,
                        to: r.state,
                    }))
                }
                _ => Err(CoreError::not_found("capacity request", "(unknown)")),
            };
        };
        let Some(to) = next_state(current.state, cmd.event) else {
            return Err(CoreError::IllegalTransition {
                state: current.state.as_str(),
                event: cmd.event.as_str(),
                allowed: allowed_events(current.state)
                    .iter()
                    .map(|e| e.as_str())
                    .collect(),
            });
        };
        if let Err(allowed) = may_send(cmd.event, &cmd.standing) {
            return Err(CoreError::PermissionDenied {
                actor: actor.id.clone(),
                action: format!("send {} to this request", cmd.event.as_str()),
                allowed: format!("{} may", allowed),
            });
        }
        if let Some(state) = outside_confirmation_window(current, cmd) {
            return Err(CoreError::IllegalTransition {
                state,
                event: cmd.event.as_str(),
                allowed: allowed_events(current.state)
                    .iter()
                    .filter(|e| **e != cmd.event)
                    .map(|e| e.as_str())
                    .collect(),
            });
        }
        let mut next = current.clone();
        next.state = to;
        let mut t = Transition::to(next.clone());
        match cmd.event {
            Event::TechReviewApproved => {
                let deadline = add_business_days(cmd.now, cmd.confirmation_ttl_business_days);
                t.state.customer_confirmation_deadline_at = Some(ts(deadline));
            }
            Event::AwsProcurementStarted if current.procurement_started_at.is_none() => {
                t.state.procurement_started_at = Some(ts(cmd.now));
            }
            Event::CancelApproved => {
                t.state.cancellation_reason = reason(&cmd.payload, Some("approve a cancellation"))?;
                t.state.cancellation_authorizer_user_id = Some(actor.id.clone());
                t = t.with(Effect::CloseCancellationTasks);
            }
            Event::CommercialRejected | Event::TechReviewRejected | Event::CustomerDeclined => {
                t.state.cancellation_reason = reason(&cmd.payload, None)?;
                t.state.cancellation_authorizer_user_id = Some(actor.id.clone());
            }
            Event::CustomerConfirmationTimeout => {
                t = t.with(Effect::CancellationTask {
                    assigned_to: current.commercial_owner_user_id.clone(),
                    due_at: ts(add_business_days(cmd.now, CANCELLATION_TASK_BUSINESS_DAYS)),
                });
            }
            _ => {}
        }
        if current.state != to {
            t = t.with(Effect::Announce {
                from: Some(current.state),
                to,
            });
        }
        Ok(t)
    }

    fn event_type(cmd: &Command) -> String {
        cmd.event.as_str()
    }

    fn event_payload(cmd: &Command) -> Value {
        Value::Object(cmd.payload.clone())
    }

    fn event_extra(before: Option<&Request>, after: &Request) -> Map<String, Value> {
        let mut m = Map::new();
        // The event's id, as the column's default would make it, without OpenSSL's generator.
        m.insert("id".into(), crate::core::store::new_id().into());
        m.insert("from_state".into(), before.map(|b| b.state.as_str()).into());
        m.insert("to_state".into(), after.state.as_str().into());
        m
    }
}

#[cfg(test)]
mod unit_tests;
