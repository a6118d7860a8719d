//! Who may send which event. Pure.
//!
//! Membership is real role membership of the calling role (PostgREST switches to the JWT's
//! role with `SET LOCAL ROLE`), never a claim. Trusted sessions (superusers, members of
//! `flowgate.trusted_roles`, such as an agent holding the service key) may send every event and
//! name the approver.

use super::envelope::EventType;
use super::error::{OpsError, OpsResult};

/// The six personas, in the order a member of several is recorded as.
pub const PERSONAS: &[&str] = &[
    "release_manager",
    "qa_tester",
    "sre",
    "ci_service_role",
    "developer",
    "audit_reader",
];

/// The personas that may send an event type.
pub fn senders(event: EventType) -> &'static [&'static str] {
    use EventType as T;
    match event {
        T::ReleaseCreated | T::GateConfigured => &["ci_service_role", "release_manager"],
        T::BuildComplete | T::CheckResult => &["ci_service_role", "qa_tester", "release_manager"],
        T::GateSignoff => &["qa_tester", "release_manager"],
        T::Approval => &["release_manager"],
        T::EvidenceAttached => &[
            "ci_service_role",
            "qa_tester",
            "release_manager",
            "sre",
            "developer",
        ],
        T::ExceptionRequested => &["developer", "release_manager", "sre"],
        T::ExceptionDecided => &["release_manager"],
        T::DeploymentStarted | T::DeploymentFinished | T::HealthCheck | T::Rollback => {
            &["ci_service_role", "sre", "release_manager"]
        }
        T::EnvironmentEvent => &["sre", "ci_service_role", "release_manager"],
        T::IncidentOpened | T::IncidentResolved | T::RecoveryDrill => &["sre"],
    }
}

/// The persona recorded for a caller who is a member of `memberships`.
pub fn persona_of(memberships: &[String]) -> Option<&'static str> {
    PERSONAS
        .iter()
        .copied()
        .find(|p| memberships.iter().any(|m| m == p))
}

/// Allow or refuse an event for a caller.
pub fn authorize(
    event: EventType,
    actor: &str,
    memberships: &[String],
    trusted: bool,
) -> OpsResult<()> {
    if trusted {
        return Ok(());
    }
    let allowed = senders(event);
    if memberships.iter().any(|m| allowed.contains(&m.as_str())) {
        return Ok(());
    }
    Err(OpsError::Forbidden {
        actor: actor.to_owned(),
        action: format!("send {} events", event.as_str()),
        allowed: format!("members of {} (or trusted sessions)", allowed.join(", ")),
    })
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    fn m(roles: &[&str]) -> Vec<String> {
        roles.iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn ci_may_report_builds_but_not_approve() {
        assert!(authorize(
            EventType::BuildComplete,
            "ci",
            &m(&["ci_service_role"]),
            false
        )
        .is_ok());
        let e = authorize(EventType::Approval, "ci", &m(&["ci_service_role"]), false).unwrap_err();
        assert_eq!(e.http_status(), 403);
        assert!(authorize(EventType::Approval, "svc", &[], true).is_ok());
    }

    #[test]
    fn audit_readers_send_nothing() {
        for name in EventType::NAMES {
            let t = EventType::parse(name).unwrap();
            assert!(
                authorize(t, "a", &m(&["audit_reader"]), false).is_err(),
                "{name}"
            );
        }
    }

    #[test]
    fn persona_is_the_most_specific_membership() {
        assert_eq!(
            persona_of(&m(&["developer", "qa_tester"])),
            Some("qa_tester")
        );
        assert_eq!(persona_of(&m(&["authenticated"])), None);
    }
}
