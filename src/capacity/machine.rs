//! The Capacity Request state machine: states, events, who may send which event,
//! and the pure reducer over the whole (state × event) table.

use serde::{Deserialize, Serialize};

use crate::core::actor::{Actor, ActorSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Submitted,
    CommercialApprovalRequired,
    TechnicalReviewRequired,
    CustomerConfirmationRequired,
    ProvisioningInProgress,
    ReadyForCustomer,
    Activated,
    Cancelled,
    Expired,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Event {
    RequestSubmitted,
    CommercialApproved,
    CommercialRejected,
    TechReviewApproved,
    TechReviewRejected,
    CustomerConfirmed,
    CustomerDeclined,
    CustomerConfirmationTimeout,
    AwsProcurementStarted,
    AwsCapacityReady,
    AwsProcurementFailed,
    CancelApproved,
    ActivationConfirmed,
}

pub const STATES: [State; 10] = [
    State::Submitted,
    State::CommercialApprovalRequired,
    State::TechnicalReviewRequired,
    State::CustomerConfirmationRequired,
    State::ProvisioningInProgress,
    State::ReadyForCustomer,
    State::Activated,
    State::Cancelled,
    State::Expired,
    State::Failed,
];

pub const EVENTS: [Event; 13] = [
    Event::RequestSubmitted,
    Event::CommercialApproved,
    Event::CommercialRejected,
    Event::TechReviewApproved,
    Event::TechReviewRejected,
    Event::CustomerConfirmed,
    Event::CustomerDeclined,
    Event::CustomerConfirmationTimeout,
    Event::AwsProcurementStarted,
    Event::AwsCapacityReady,
    Event::AwsProcurementFailed,
    Event::CancelApproved,
    Event::ActivationConfirmed,
];

fn sql_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

impl State {
    pub fn as_str(self) -> String {
        sql_name(&self)
    }

    /// No event leaves these (EXPIRED still accepts CANCEL_APPROVED, the cancellation decision).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            State::Activated | State::Cancelled | State::Failed | State::Expired
        )
    }
}

impl Event {
    pub fn as_str(self) -> String {
        sql_name(&self)
    }

    pub fn parse(s: &str) -> Option<Event> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}

/// Where a transition goes, ignoring who asks: `None` when the pair is not allowed.
pub fn next_state(state: State, event: Event) -> Option<State> {
    use Event as E;
    use State as S;
    let non_terminal = !state.is_terminal();
    Some(match (state, event) {
        (S::Submitted, E::RequestSubmitted) => S::CommercialApprovalRequired,
        (S::CommercialApprovalRequired, E::CommercialApproved) => S::TechnicalReviewRequired,
        (S::CommercialApprovalRequired, E::CommercialRejected) => S::Cancelled,
        (S::TechnicalReviewRequired, E::TechReviewApproved) => S::CustomerConfirmationRequired,
        (S::TechnicalReviewRequired, E::TechReviewRejected) => S::Cancelled,
        (S::CustomerConfirmationRequired, E::CustomerConfirmed) => S::ProvisioningInProgress,
        (S::CustomerConfirmationRequired, E::CustomerDeclined) => S::Cancelled,
        (S::CustomerConfirmationRequired, E::CustomerConfirmationTimeout) => S::Expired,
        (S::ProvisioningInProgress, E::AwsProcurementStarted) => S::ProvisioningInProgress,
        (S::ProvisioningInProgress, E::AwsCapacityReady) => S::ReadyForCustomer,
        (S::ProvisioningInProgress, E::AwsProcurementFailed) => S::Failed,
        (S::ReadyForCustomer, E::ActivationConfirmed) => S::Activated,
        (_, E::CancelApproved) if non_terminal || state == S::Expired => S::Cancelled,
        _ => return None,
    })
}

/// The events `state` accepts, in declaration order (for error hints).
pub fn allowed_events(state: State) -> Vec<Event> {
    EVENTS
        .iter()
        .copied()
        .filter(|e| next_state(state, *e).is_some())
        .collect()
}

/// Who the actor is with respect to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Standing {
    pub is_requester: bool,
    pub is_commercial_owner: bool,
    pub in_infra_group: bool,
    /// A capacity admin (setting `capacity.admins`) or a trusted session.
    pub is_admin: bool,
    pub is_system: bool,
}

impl Standing {
    /// Whether the actor has anything to do with the request at all.
    pub fn has_any(&self) -> bool {
        self.is_requester
            || self.is_commercial_owner
            || self.in_infra_group
            || self.is_admin
            || self.is_system
    }

    pub fn of(
        actor: &Actor,
        requester: &str,
        commercial_owner: &str,
        in_infra_group: bool,
        is_admin: bool,
    ) -> Standing {
        Standing {
            is_requester: actor.id == requester,
            is_commercial_owner: actor.id == commercial_owner,
            in_infra_group,
            is_admin: is_admin || (actor.trusted && actor.source != ActorSource::OnBehalf),
            is_system: actor.source == ActorSource::System,
        }
    }
}

/// Who may send `event`; `Err` names who may.
pub fn may_send(event: Event, who: &Standing) -> Result<(), &'static str> {
    use Event as E;
    if who.is_admin {
        return Ok(());
    }
    let (ok, allowed) = match event {
        E::RequestSubmitted => (true, "anyone"),
        E::CommercialApproved | E::CommercialRejected => (
            who.is_commercial_owner || who.is_system,
            "the commercial owner, an admin, or the system (threshold approvals)",
        ),
        E::TechReviewApproved | E::TechReviewRejected => (
            who.in_infra_group && !who.is_requester,
            "members of the request's infra owner group other than the requester, or an admin",
        ),
        E::CustomerConfirmed | E::CustomerDeclined => (
            who.is_commercial_owner || who.is_requester,
            "the requester or the commercial owner (relaying the customer), or an admin",
        ),
        E::CustomerConfirmationTimeout => (who.is_system, "the system timers only"),
        E::AwsProcurementStarted | E::AwsCapacityReady | E::AwsProcurementFailed => (
            who.in_infra_group || who.is_system,
            "members of the infra owner group, the system, or an admin",
        ),
        E::CancelApproved => (who.is_commercial_owner, "the commercial owner or an admin"),
        E::ActivationConfirmed => (
            who.is_requester || who.is_commercial_owner || who.in_infra_group || who.is_system,
            "the requester, the commercial owner, the infra owner group, the system, or an admin",
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(allowed)
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use State as S;

    /// The whole table, written out once by hand: every (state, event) pair and its target.
    const TABLE: &[(State, Event, State)] = &[
        (
            S::Submitted,
            Event::RequestSubmitted,
            S::CommercialApprovalRequired,
        ),
        (S::Submitted, Event::CancelApproved, S::Cancelled),
        (
            S::CommercialApprovalRequired,
            Event::CommercialApproved,
            S::TechnicalReviewRequired,
        ),
        (
            S::CommercialApprovalRequired,
            Event::CommercialRejected,
            S::Cancelled,
        ),
        (
            S::CommercialApprovalRequired,
            Event::CancelApproved,
            S::Cancelled,
        ),
        (
            S::TechnicalReviewRequired,
            Event::TechReviewApproved,
            S::CustomerConfirmationRequired,
        ),
        (
            S::TechnicalReviewRequired,
            Event::TechReviewRejected,
            S::Cancelled,
        ),
        (
            S::TechnicalReviewRequired,
            Event::CancelApproved,
            S::Cancelled,
        ),
        (
            S::CustomerConfirmationRequired,
            Event::CustomerConfirmed,
            S::ProvisioningInProgress,
        ),
        (
            S::CustomerConfirmationRequired,
            Event::CustomerDeclined,
            S::Cancelled,
        ),
        (
            S::CustomerConfirmationRequired,
            Event::CustomerConfirmationTimeout,
            S::Expired,
        ),
        (
            S::CustomerConfirmationRequired,
            Event::CancelApproved,
            S::Cancelled,
        ),
        (
            S::ProvisioningInProgress,
            Event::AwsProcurementStarted,
            S::ProvisioningInProgress,
        ),
        (
            S::ProvisioningInProgress,
            Event::AwsCapacityReady,
            S::ReadyForCustomer,
        ),
        (
            S::ProvisioningInProgress,
            Event::AwsProcurementFailed,
            S::Failed,
        ),
        (
            S::ProvisioningInProgress,
            Event::CancelApproved,
            S::Cancelled,
        ),
        (
            S::ReadyForCustomer,
            Event::ActivationConfirmed,
            S::Activated,
        ),
        (S::ReadyForCustomer, Event::CancelApproved, S::Cancelled),
        (S::Expired, Event::CancelApproved, S::Cancelled),
    ];

    #[test]
    fn every_cell_of_the_table() {
        let mut allowed = 0;
        for s in STATES {
            for e in EVENTS {
                let expected = TABLE
                    .iter()
                    .find(|(ts, te, _)| *ts == s && *te == e)
                    .map(|(_, _, to)| *to);
                assert_eq!(next_state(s, e), expected, "{s:?} × {e:?}");
                allowed += usize::from(expected.is_some());
            }
        }
        assert_eq!(allowed, TABLE.len());
        assert_eq!(STATES.len() * EVENTS.len(), 130, "all 130 cells checked");
    }

    #[test]
    fn terminal_states_accept_only_the_cancellation_decision_after_expiry() {
        for s in [S::Activated, S::Cancelled, S::Failed] {
            assert!(allowed_events(s).is_empty(), "{s:?}");
        }
        assert_eq!(allowed_events(S::Expired), vec![Event::CancelApproved]);
        assert_eq!(
            allowed_events(S::ProvisioningInProgress),
            vec![
                Event::AwsProcurementStarted,
                Event::AwsCapacityReady,
                Event::AwsProcurementFailed,
                Event::CancelApproved
            ]
        );
    }

    #[test]
    fn sql_names_round_trip() {
        assert_eq!(
            State::CustomerConfirmationRequired.as_str(),
            "CUSTOMER_CONFIRMATION_REQUIRED"
        );
        assert_eq!(
            Event::AwsProcurementStarted.as_str(),
            "AWS_PROCUREMENT_STARTED"
        );
        for e in EVENTS {
            assert_eq!(Event::parse(&e.as_str()), Some(e));
        }
        assert_eq!(Event::parse("aws_procurement_started"), None);
    }

    fn standing(f: impl Fn(&mut Standing)) -> Standing {
        let mut s = Standing::default();
        f(&mut s);
        s
    }

    #[test]
    fn permissions_per_event() {
        let owner = standing(|s| s.is_commercial_owner = true);
        let requester = standing(|s| s.is_requester = true);
        let infra = standing(|s| s.in_infra_group = true);
        let system = standing(|s| s.is_system = true);
        let admin = standing(|s| s.is_admin = true);
        let nobody = Standing::default();
        let cases: &[(Event, &[&Standing])] = &[
            (Event::CommercialApproved, &[&owner, &system, &admin]),
            (Event::TechReviewApproved, &[&infra, &admin]),
            (Event::CustomerConfirmed, &[&owner, &requester, &admin]),
            (Event::CustomerConfirmationTimeout, &[&system, &admin]),
            (Event::AwsCapacityReady, &[&infra, &system, &admin]),
            (Event::CancelApproved, &[&owner, &admin]),
            (
                Event::ActivationConfirmed,
                &[&owner, &requester, &infra, &system, &admin],
            ),
        ];
        for (event, allowed) in cases {
            for who in [&owner, &requester, &infra, &system, &admin, &nobody] {
                let expect = allowed.contains(&who);
                assert_eq!(
                    may_send(*event, who).is_ok(),
                    expect,
                    "{event:?} by {who:?}"
                );
            }
        }
        assert!(may_send(Event::RequestSubmitted, &nobody).is_ok());
    }
}
