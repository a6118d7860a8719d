//! Who may send which event, approve as which persona, and name whom. Pure; the personas and
//! what each may write come from the persona matrix (`personas`).
//!
//! Membership is real role membership of the calling role (PostgREST switches to the JWT's
//! role with `SET LOCAL ROLE`), never a claim. Trusted sessions (superusers, members of
//! `flowgate.trusted_roles`, such as an agent holding the service key) may send every event and
//! name the approver.

use super::envelope::EventType;
use super::error::{OpsError, OpsResult};
use super::gates::GateCode;
use super::personas::{senders, PERSONAS};

/// Who sends an envelope.
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor_id: String,
    pub trusted: bool,
    /// The ops personas the calling role is a member of.
    pub memberships: Vec<String>,
}

impl Caller {
    /// 403 unless the caller may attach evidence of `artifact_type`: a `qa_signoff` is the word
    /// that a release passed its testing (it alone passes G2), so only the personas who sign G2
    /// off (or a trusted session) give it.
    pub fn may_attach(&self, artifact_type: &str) -> OpsResult<()> {
        let signers = GateCode::G2.rule().approver_roles;
        if artifact_type != "qa_signoff"
            || self.trusted
            || self
                .memberships
                .iter()
                .any(|m| signers.contains(&m.as_str()))
        {
            return Ok(());
        }
        Err(OpsError::Forbidden {
            actor: self.actor_id.clone(),
            action: "attach a qa_signoff artifact".into(),
            allowed: format!(
                "a qa_signoff comes from {} (gate_signoff); attach a test_report instead",
                signers.join(" or ")
            ),
        })
    }

    /// The persona the caller is recorded as.
    pub fn persona(&self) -> Option<&'static str> {
        persona_of(&self.memberships)
    }

    /// The identity recorded for `field` (approver, creator): the caller's own, or the one
    /// `named`, which only a trusted session may name for someone else.
    pub fn identity(&self, field: &str, named: &Option<String>) -> OpsResult<String> {
        match named {
            Some(n) if *n != self.actor_id && !self.trusted => Err(OpsError::Forbidden {
                actor: self.actor_id.clone(),
                action: format!("set {field} to someone else ({})", crate::core::error::quoted(n)),
                allowed: format!(
                    "omit {field} to act as yourself; only trusted sessions may name another identity"
                ),
            }),
            Some(n) => Ok(n.clone()),
            None => Ok(self.actor_id.clone()),
        }
    }

    /// The persona a decision on `gate` is recorded under: the one `asked` for (a trusted
    /// session may name any; anyone else only one they are a member of), else the caller's
    /// first membership among the gate's approvers. 403 when the caller approves nothing
    /// there, 400 when the persona named does not approve this gate.
    pub fn approver_persona(&self, gate: GateCode, asked: &Option<String>) -> OpsResult<String> {
        check_takes_approvals(gate)?;
        let approvers = gate.rule().approver_roles;
        let persona = if self.trusted {
            asked.clone().unwrap_or_else(|| approvers[0].to_owned())
        } else {
            let mine = self
                .memberships
                .iter()
                .find(|m| approvers.contains(&m.as_str()));
            match (mine, asked) {
                (Some(m), None) => m.clone(),
                (Some(_), Some(p)) if self.memberships.contains(p) => p.clone(),
                _ => {
                    return Err(OpsError::Forbidden {
                        actor: self.actor_id.clone(),
                        action: format!("approve {gate}"),
                        allowed: format!("members of {}", approvers.join(", ")),
                    })
                }
            }
        };
        if !approvers.contains(&persona.as_str()) {
            return Err(OpsError::invalid(
                "persona_role",
                format!("{persona} does not approve {gate}"),
                approvers.join(", "),
            ));
        }
        Ok(persona)
    }
}

/// 400 unless `gate` takes approvals (G2, G3).
pub fn check_takes_approvals(gate: GateCode) -> OpsResult<()> {
    if gate.rule().approver_roles.is_empty() {
        return Err(OpsError::invalid(
            "gate_code",
            format!("{gate} takes no approvals"),
            "G2 (QA signoff) or G3 (release approval)",
        ));
    }
    Ok(())
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

    fn caller(trusted: bool, roles: &[&str]) -> Caller {
        Caller {
            actor_id: "me".into(),
            trusted,
            memberships: m(roles),
        }
    }

    #[test]
    fn only_trusted_sessions_name_someone_else() {
        let me = caller(false, &["release_manager"]);
        assert_eq!(me.identity("approver_id", &None).unwrap(), "me");
        assert_eq!(
            me.identity("approver_id", &Some("me".into())).unwrap(),
            "me"
        );
        let e = me
            .identity("approver_id", &Some("boss".into()))
            .unwrap_err();
        assert_eq!(e.http_status(), 403);
        let agent = caller(true, &[]);
        assert_eq!(
            agent.identity("approver_id", &Some("boss".into())).unwrap(),
            "boss"
        );
    }

    #[test]
    fn approver_persona_follows_the_gate_and_membership() {
        let qa = caller(false, &["developer", "qa_tester"]);
        assert_eq!(
            qa.approver_persona(GateCode::G2, &None).unwrap(),
            "qa_tester"
        );
        assert_eq!(
            qa.approver_persona(GateCode::G3, &None)
                .unwrap_err()
                .http_status(),
            403
        );
        let qa_as_rm = qa.approver_persona(GateCode::G2, &Some("release_manager".into()));
        assert_eq!(qa_as_rm.unwrap_err().http_status(), 403);
        let rm = caller(false, &["release_manager", "qa_tester"]);
        assert_eq!(
            rm.approver_persona(GateCode::G2, &Some("qa_tester".into()))
                .unwrap(),
            "qa_tester"
        );
        assert_eq!(
            rm.approver_persona(GateCode::G1, &None)
                .unwrap_err()
                .http_status(),
            400
        );
        let agent = caller(true, &[]);
        assert_eq!(
            agent.approver_persona(GateCode::G3, &None).unwrap(),
            "release_manager"
        );
        let wrong = agent.approver_persona(GateCode::G3, &Some("qa_tester".into()));
        assert_eq!(wrong.unwrap_err().http_status(), 400);
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
