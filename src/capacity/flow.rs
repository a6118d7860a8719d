//! The Capacity Request reducer: the pure decision the event-store runner applies, plus the
//! business-day arithmetic of the customer-confirmation deadline.

use chrono::{DateTime, Datelike, Duration, SecondsFormat, Utc, Weekday};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::machine::{allowed_events, may_send, next_state, Event, Standing, State};
use crate::core::actor::Actor;
use crate::core::error::CoreError;
use crate::core::workflow::{Reducer, Transition};

/// Longest free-text reason accepted.
pub const MAX_REASON: usize = 2000;
/// Largest event payload accepted, in bytes of JSON text.
pub const MAX_PAYLOAD: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl From<CapacityError> for pgrx::pg_sys::panic::ErrorReport {
    fn from(e: CapacityError) -> Self {
        match e {
            CapacityError::Core(c) => c.into_report("capacity"),
        }
    }
}

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
    CancellationTask { assigned_to: String },
    /// The decision was made: close open cancellation tasks.
    CloseCancellationTasks,
}

pub struct CapacityFlow;

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

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
    type Error = CapacityError;

    fn reduce(
        state: Option<&Request>,
        cmd: &Command,
        actor: &Actor,
    ) -> Result<Transition<Request, Effect>, CapacityError> {
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
                _ => Err(CoreError::not_found("capacity request", "(unknown)").into()),
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
            }
            .into());
        };
        if let Err(allowed) = may_send(cmd.event, &cmd.standing) {
            return Err(CoreError::PermissionDenied {
                actor: actor.id.clone(),
                action: format!("send {} to this request", cmd.event.as_str()),
                allowed: format!("{} may", allowed),
            }
            .into());
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
        m.insert("from_state".into(), before.map(|b| b.state.as_str()).into());
        m.insert("to_state".into(), after.state.as_str().into());
        m
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use crate::capacity::machine::{EVENTS, STATES};
    use chrono::TimeZone;

    fn request(state: State) -> Request {
        Request {
            state,
            requester_user_id: "sa-1".into(),
            commercial_owner_user_id: "ae-1".into(),
            infra_owner_group: "infra".into(),
            customer_ref: serde_json::json!({"org": "acme"}),
            requested_size: "24XL".into(),
            quantity: 2,
            region: "us-east-1".into(),
            needed_by_date: None,
            expected_duration_days: Some(90),
            estimated_monthly_cost_usd: Some(serde_json::json!(48000)),
            customer_confirmation_deadline_at: None,
            cancellation_reason: None,
            cancellation_authorizer_user_id: None,
            procurement_started_at: None,
        }
    }

    fn admin_cmd(event: Event) -> Command {
        let mut payload = Map::new();
        payload.insert("reason".into(), "customer withdrew".into());
        Command {
            event,
            payload,
            standing: Standing {
                is_admin: true,
                ..Default::default()
            },
            now: Utc.with_ymd_and_hms(2026, 11, 20, 15, 0, 0).unwrap(),
            confirmation_ttl_business_days: 5,
            new_request: Some(request(State::Submitted)),
        }
    }

    fn admin() -> Actor {
        Actor::system()
    }

    #[test]
    fn business_days_skip_weekends() {
        let friday = Utc.with_ymd_and_hms(2026, 11, 20, 15, 0, 0).unwrap();
        assert_eq!(
            add_business_days(friday, 1),
            Utc.with_ymd_and_hms(2026, 11, 23, 15, 0, 0).unwrap()
        );
        assert_eq!(
            add_business_days(friday, 5),
            Utc.with_ymd_and_hms(2026, 11, 27, 15, 0, 0).unwrap()
        );
        let saturday = Utc.with_ymd_and_hms(2026, 11, 21, 9, 30, 0).unwrap();
        assert_eq!(
            add_business_days(saturday, 1),
            Utc.with_ymd_and_hms(2026, 11, 23, 9, 30, 0).unwrap()
        );
        assert_eq!(add_business_days(friday, 0), friday);
    }

    #[test]
    fn the_reducer_agrees_with_the_table_for_every_cell() {
        for s in STATES {
            for e in EVENTS {
                let result = CapacityFlow::reduce(Some(&request(s)), &admin_cmd(e), &admin());
                match next_state(s, e) {
                    Some(to) => assert_eq!(result.unwrap().state.state, to, "{s:?} × {e:?}"),
                    None => {
                        let err = result.unwrap_err();
                        let CapacityError::Core(core) = &err;
                        assert_eq!(core.sqlstate(), "55000", "{s:?} × {e:?}");
                        assert!(
                            core.to_string().contains(&s.as_str()),
                            "the error names the state"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn cancellation_needs_a_reason_and_records_the_authorizer() {
        let mut cmd = admin_cmd(Event::CancelApproved);
        cmd.payload.clear();
        let err = CapacityFlow::reduce(Some(&request(State::Expired)), &cmd, &admin()).unwrap_err();
        let CapacityError::Core(core) = err;
        assert_eq!(core.sqlstate(), "22023");
        let t = CapacityFlow::reduce(
            Some(&request(State::Expired)),
            &admin_cmd(Event::CancelApproved),
            &admin(),
        )
        .unwrap();
        assert_eq!(
            t.state.cancellation_reason.as_deref(),
            Some("customer withdrew")
        );
        assert_eq!(
            t.state.cancellation_authorizer_user_id.as_deref(),
            Some("system")
        );
        assert!(t.effects.contains(&Effect::CloseCancellationTasks));
    }

    #[test]
    fn tech_approval_sets_the_business_day_deadline_and_timeout_assigns_the_owner() {
        let t = CapacityFlow::reduce(
            Some(&request(State::TechnicalReviewRequired)),
            &admin_cmd(Event::TechReviewApproved),
            &admin(),
        )
        .unwrap();
        assert_eq!(
            t.state.customer_confirmation_deadline_at.as_deref(),
            Some("2026-11-27T15:00:00.000000Z")
        );
        let t = CapacityFlow::reduce(
            Some(&request(State::CustomerConfirmationRequired)),
            &admin_cmd(Event::CustomerConfirmationTimeout),
            &admin(),
        )
        .unwrap();
        assert_eq!(t.state.state, State::Expired);
        assert!(t.effects.contains(&Effect::CancellationTask {
            assigned_to: "ae-1".into()
        }));
    }

    #[test]
    fn procurement_started_is_recorded_without_leaving_the_state() {
        let t = CapacityFlow::reduce(
            Some(&request(State::ProvisioningInProgress)),
            &admin_cmd(Event::AwsProcurementStarted),
            &admin(),
        )
        .unwrap();
        assert_eq!(t.state.state, State::ProvisioningInProgress);
        assert!(t.state.procurement_started_at.is_some());
        assert!(t.effects.is_empty(), "no state change, no announcement");
    }

    #[test]
    fn the_wrong_actor_is_refused_with_42501() {
        let mut cmd = admin_cmd(Event::CommercialApproved);
        cmd.standing = Standing {
            is_requester: true,
            ..Default::default()
        };
        let CapacityError::Core(core) = CapacityFlow::reduce(
            Some(&request(State::CommercialApprovalRequired)),
            &cmd,
            &admin(),
        )
        .unwrap_err();
        assert_eq!(core.sqlstate(), "42501");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const GATES: [Event; 3] = [
            Event::CommercialApproved,
            Event::TechReviewApproved,
            Event::CustomerConfirmed,
        ];

        proptest! {
            /// Any sequence of events (applied by an admin, so only the table decides): no
            /// terminal state is ever left except EXPIRED → CANCELLED, and no request reaches
            /// provisioning or beyond without having passed all three gates in order.
            #[test]
            fn no_sequence_leaves_a_terminal_state_or_skips_a_gate(seq in proptest::collection::vec(0usize..13, 0..40)) {
                let mut r = CapacityFlow::reduce(None, &admin_cmd(Event::RequestSubmitted), &admin()).unwrap().state;
                let mut passed: Vec<Event> = Vec::new();
                for i in seq {
                    let e = EVENTS[i];
                    let before = r.state;
                    if let Ok(t) = CapacityFlow::reduce(Some(&r), &admin_cmd(e), &admin()) {
                        if before.is_terminal() {
                            prop_assert!(before == State::Expired && t.state.state == State::Cancelled);
                        }
                        if GATES.contains(&e) { passed.push(e); }
                        r = t.state;
                    }
                    if matches!(r.state, State::ProvisioningInProgress | State::ReadyForCustomer | State::Activated) {
                        prop_assert_eq!(&passed[..], &GATES[..]);
                    }
                }
            }
        }
    }
}
