//! The release gate rules as pure functions over facts loaded from
//! `ops.*`. Nothing here touches Postgres: `store.rs` loads [`ReleaseFacts`], these rules
//! decide, and the result is written back to `ops.release_gates`.
//!
//! | gate | passed when |
//! |---|---|
//! | G1 | every required check (configured names, plus checks reported as required) has `pass` as its latest result |
//! | G2 | QA evidence (`test_report` or `qa_signoff`) is attached, no check's latest result is `fail`, required checks passed, the latest signoff is not a rejection |
//! | G3 | the latest release-manager approval is `approved`, a `rollback_plan` artifact is attached, and G2 is passed (or bypassed) |
//! | G4 | a staging or production deployment has `g4_status = passed` and a `health_check` artifact is attached |
//!
//! A gate that is not passed counts as `bypassed` while an exception for it is approved and
//! not expired at evaluation time. Evidence attached to the release itself (no gate) counts
//! for every gate.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::error::OpsError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum GateCode {
    G1,
    G2,
    G3,
    G4,
}

pub const ALL_GATES: [GateCode; 4] = [GateCode::G1, GateCode::G2, GateCode::G3, GateCode::G4];

impl GateCode {
    pub fn parse(s: &str) -> Result<GateCode, OpsError> {
        match s {
            "G1" => Ok(GateCode::G1),
            "G2" => Ok(GateCode::G2),
            "G3" => Ok(GateCode::G3),
            "G4" => Ok(GateCode::G4),
            other => Err(OpsError::invalid(
                "gate_code",
                format!("{other:?} is not a gate"),
                "G1, G2, G3 or G4",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GateCode::G1 => "G1",
            GateCode::G2 => "G2",
            GateCode::G3 => "G3",
            GateCode::G4 => "G4",
        }
    }

    /// What each gate needs, stated once: `ops.gate_rules()` and the evidence view read this.
    pub fn rule(self) -> GateRule {
        match self {
            GateCode::G1 => GateRule {
                code: self,
                name: "build and automated checks",
                evidence_any_of: &[],
                approver_roles: &[],
                summary: "every required check has pass as its latest result",
            },
            GateCode::G2 => GateRule {
                code: self,
                name: "QA validation",
                evidence_any_of: &["test_report", "qa_signoff"],
                approver_roles: &["qa_tester", "release_manager"],
                summary: "QA evidence attached, no failing check, required checks passed, latest signoff not rejected",
            },
            GateCode::G3 => GateRule {
                code: self,
                name: "release approval",
                evidence_any_of: &["rollback_plan"],
                approver_roles: &["release_manager"],
                summary: "latest release_manager approval is approved, rollback plan attached, G2 passed or bypassed",
            },
            GateCode::G4 => GateRule {
                code: self,
                name: "post-deployment health",
                evidence_any_of: &["health_check"],
                approver_roles: &[],
                summary: "a staging or production deployment has g4_status passed and a health check artifact is attached",
            },
        }
    }
}

impl fmt::Display for GateCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The requirements of one gate, published by `ops.gate_rules()`.
#[derive(Debug, Clone, Serialize)]
pub struct GateRule {
    pub code: GateCode,
    pub name: &'static str,
    /// At least one artifact of one of these types must be attached (empty: none needed).
    pub evidence_any_of: &'static [&'static str],
    /// Personas whose approvals the gate reads (empty: no approval involved).
    pub approver_roles: &'static [&'static str],
    pub summary: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateStatus {
    Pending,
    InProgress,
    Passed,
    Failed,
    Bypassed,
}

impl GateStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GateStatus::Pending => "pending",
            GateStatus::InProgress => "in_progress",
            GateStatus::Passed => "passed",
            GateStatus::Failed => "failed",
            GateStatus::Bypassed => "bypassed",
        }
    }

    /// Whether the gate lets a release through.
    pub fn satisfied(self) -> bool {
        matches!(self, GateStatus::Passed | GateStatus::Bypassed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    Pass,
    Fail,
    Pending,
    Skipped,
}

impl CheckStatus {
    pub fn parse(s: &str) -> Option<CheckStatus> {
        match s {
            "pass" => Some(CheckStatus::Pass),
            "fail" => Some(CheckStatus::Fail),
            "pending" => Some(CheckStatus::Pending),
            "skipped" => Some(CheckStatus::Skipped),
            _ => None,
        }
    }
}

/// The latest result of one named check of a gate.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckFact {
    pub name: String,
    pub status: CheckStatus,
    pub required: bool,
}

/// One approval or signoff on a gate; the list is in the order they were recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalFact {
    pub approver_id: String,
    pub persona_role: String,
    pub approved: bool,
}

/// An exception on a gate, with times as seconds since the epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct ExceptionFact {
    pub exception_id: String,
    pub status: String,
    pub expires_at: f64,
}

impl ExceptionFact {
    pub fn active_at(&self, now: f64) -> bool {
        self.status == "approved" && self.expires_at > now
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GateFacts {
    pub required_checks: Vec<String>,
    /// Latest result per check name.
    pub checks: Vec<CheckFact>,
    /// Types of the artifacts attached to this gate, its checks, or the release itself.
    pub evidence: Vec<String>,
    pub approvals: Vec<ApprovalFact>,
    pub exceptions: Vec<ExceptionFact>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentFact {
    pub environment: String,
    pub status: String,
    pub g4_status: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReleaseFacts {
    pub gates: BTreeMap<GateCode, GateFacts>,
    /// In the order they were recorded.
    pub deployments: Vec<DeploymentFact>,
    /// Evaluation time, seconds since the epoch (the database's `now()`).
    pub now: f64,
}

/// The outcome for one gate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub code: GateCode,
    pub status: GateStatus,
    /// Why, in words an operator can act on.
    pub reason: String,
    /// The exception that bypasses the gate, and when it expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bypass: Option<(String, f64)>,
}

fn evidence_present(facts: &GateFacts, any_of: &[&str]) -> bool {
    facts.evidence.iter().any(|t| any_of.contains(&t.as_str()))
}

/// Required check names: configured ones plus those reported as required, in order.
fn required_names(facts: &GateFacts) -> Vec<&str> {
    let mut names: Vec<&str> = facts.required_checks.iter().map(String::as_str).collect();
    for c in &facts.checks {
        if c.required && !names.contains(&c.name.as_str()) {
            names.push(&c.name);
        }
    }
    names
}

fn latest(facts: &GateFacts, name: &str) -> Option<CheckStatus> {
    facts
        .checks
        .iter()
        .rev()
        .find(|c| c.name == name)
        .map(|c| c.status)
}

/// Required checks whose latest result is not `pass`, and the ones among them that failed.
fn unmet_checks(facts: &GateFacts) -> (Vec<String>, Vec<String>) {
    let mut waiting = Vec::new();
    let mut failed = Vec::new();
    for name in required_names(facts) {
        match latest(facts, name) {
            Some(CheckStatus::Pass) => {}
            Some(CheckStatus::Fail) => failed.push(name.to_owned()),
            _ => waiting.push(name.to_owned()),
        }
    }
    (waiting, failed)
}

fn has_facts(facts: &GateFacts) -> bool {
    !facts.checks.is_empty() || !facts.evidence.is_empty() || !facts.approvals.is_empty()
}

fn open(facts: &GateFacts, reason: String) -> (GateStatus, String) {
    if has_facts(facts) {
        (GateStatus::InProgress, reason)
    } else {
        (GateStatus::Pending, reason)
    }
}

fn latest_approval<'a>(facts: &'a GateFacts, roles: &[&str]) -> Option<&'a ApprovalFact> {
    facts
        .approvals
        .iter()
        .rev()
        .find(|a| roles.contains(&a.persona_role.as_str()))
}

fn g1(facts: &GateFacts) -> (GateStatus, String) {
    let (waiting, failed) = unmet_checks(facts);
    if !failed.is_empty() {
        return (
            GateStatus::Failed,
            format!("required check(s) failed: {}", failed.join(", ")),
        );
    }
    if required_names(facts).is_empty() {
        return open(facts, "no required check has been reported".into());
    }
    if waiting.is_empty() {
        return (GateStatus::Passed, "every required check passed".into());
    }
    open(
        facts,
        format!("waiting for required check(s): {}", waiting.join(", ")),
    )
}

fn g2(facts: &GateFacts) -> (GateStatus, String) {
    let rule = GateCode::G2.rule();
    let failing: Vec<&str> = {
        let mut names: Vec<&str> = Vec::new();
        for c in &facts.checks {
            if !names.contains(&c.name.as_str())
                && latest(facts, &c.name) == Some(CheckStatus::Fail)
            {
                names.push(&c.name);
            }
        }
        names
    };
    if !failing.is_empty() {
        return (
            GateStatus::Failed,
            format!("check(s) failed: {}", failing.join(", ")),
        );
    }
    if let Some(a) = latest_approval(facts, rule.approver_roles) {
        if !a.approved {
            return (
                GateStatus::Failed,
                format!(
                    "QA signoff rejected by {} ({})",
                    a.approver_id, a.persona_role
                ),
            );
        }
    }
    let (waiting, _) = unmet_checks(facts);
    if !evidence_present(facts, rule.evidence_any_of) {
        return open(
            facts,
            "no QA evidence (test_report or qa_signoff) attached".into(),
        );
    }
    if !waiting.is_empty() {
        return open(
            facts,
            format!("waiting for required check(s): {}", waiting.join(", ")),
        );
    }
    (
        GateStatus::Passed,
        "QA evidence attached and no check failing".into(),
    )
}

fn g3(facts: &GateFacts, g2_status: GateStatus) -> (GateStatus, String) {
    let rule = GateCode::G3.rule();
    let approval = latest_approval(facts, rule.approver_roles);
    if let Some(a) = approval {
        if !a.approved {
            return (
                GateStatus::Failed,
                format!("release approval rejected by {}", a.approver_id),
            );
        }
    }
    let mut missing = Vec::new();
    if approval.is_none() {
        missing.push("a release_manager approval".to_owned());
    }
    if !evidence_present(facts, rule.evidence_any_of) {
        missing.push("a rollback_plan artifact".to_owned());
    }
    if !g2_status.satisfied() {
        missing.push(format!("G2 passed (it is {})", g2_status.as_str()));
    }
    if missing.is_empty() {
        (
            GateStatus::Passed,
            "approved by a release manager, rollback plan attached, G2 satisfied".into(),
        )
    } else {
        open(facts, format!("waiting for {}", missing.join(", ")))
    }
}

fn g4(facts: &GateFacts, deployments: &[DeploymentFact]) -> (GateStatus, String) {
    let rule = GateCode::G4.rule();
    let promoted: Vec<&DeploymentFact> = deployments
        .iter()
        .filter(|d| d.environment == "staging" || d.environment == "production")
        .collect();
    let health = evidence_present(facts, rule.evidence_any_of);
    if promoted.iter().any(|d| d.g4_status == "passed") {
        if health {
            return (
                GateStatus::Passed,
                "deployment health passed and health check evidence attached".into(),
            );
        }
        return (
            GateStatus::InProgress,
            "deployment health passed; waiting for a health_check artifact".into(),
        );
    }
    match promoted.last() {
        Some(d) if d.g4_status == "failed" => (
            GateStatus::Failed,
            format!("post-deployment health check failed in {}", d.environment),
        ),
        Some(d) => (
            GateStatus::InProgress,
            format!(
                "waiting for the health check of the {} deployment",
                d.environment
            ),
        ),
        None => open(facts, "no staging or production deployment yet".into()),
    }
}

/// Evaluate every gate of a release.
pub fn evaluate(facts: &ReleaseFacts) -> Vec<Evaluation> {
    let empty = GateFacts::default();
    let of = |c: GateCode| facts.gates.get(&c).unwrap_or(&empty);
    let mut out: Vec<Evaluation> = Vec::with_capacity(4);
    for code in ALL_GATES {
        let gate = of(code);
        let (status, reason) = match code {
            GateCode::G1 => g1(gate),
            GateCode::G2 => g2(gate),
            GateCode::G3 => {
                let g2_status = out
                    .iter()
                    .find(|e| e.code == GateCode::G2)
                    .map_or(GateStatus::Pending, |e| e.status);
                g3(gate, g2_status)
            }
            GateCode::G4 => g4(gate, &facts.deployments),
        };
        out.push(apply_exception(code, gate, status, reason, facts.now));
    }
    out
}

fn apply_exception(
    code: GateCode,
    gate: &GateFacts,
    status: GateStatus,
    reason: String,
    now: f64,
) -> Evaluation {
    if status != GateStatus::Passed {
        // The exception that stays valid longest wins.
        let best = gate
            .exceptions
            .iter()
            .filter(|e| e.active_at(now))
            .max_by(|a, b| a.expires_at.total_cmp(&b.expires_at));
        if let Some(e) = best {
            return Evaluation {
                code,
                status: GateStatus::Bypassed,
                reason: format!("bypassed by exception {} ({reason})", e.exception_id),
                bypass: Some((e.exception_id.clone(), e.expires_at)),
            };
        }
    }
    Evaluation {
        code,
        status,
        reason,
        bypass: None,
    }
}

/// Whether a release may be promoted, given its evaluations and the gates `required` for the
/// target environment; also returns the gates in the way.
pub fn eligible(evaluations: &[Evaluation], required: &[GateCode]) -> (bool, Vec<GateCode>) {
    let blocking: Vec<GateCode> = required
        .iter()
        .copied()
        .filter(|code| {
            !evaluations
                .iter()
                .any(|e| e.code == *code && e.status.satisfied())
        })
        .collect();
    (blocking.is_empty(), blocking)
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use proptest::prelude::*;

    fn check(name: &str, status: CheckStatus, required: bool) -> CheckFact {
        CheckFact {
            name: name.into(),
            status,
            required,
        }
    }

    fn approval(role: &str, approved: bool) -> ApprovalFact {
        ApprovalFact {
            approver_id: format!("{role}-1"),
            persona_role: role.into(),
            approved,
        }
    }

    fn deployed(env: &str, g4: &str) -> DeploymentFact {
        DeploymentFact {
            environment: env.into(),
            status: "succeeded".into(),
            g4_status: g4.into(),
        }
    }

    /// A release with every gate passed.
    fn all_passed() -> ReleaseFacts {
        let mut gates = BTreeMap::new();
        gates.insert(
            GateCode::G1,
            GateFacts {
                checks: vec![check("build", CheckStatus::Pass, true)],
                ..Default::default()
            },
        );
        gates.insert(
            GateCode::G2,
            GateFacts {
                evidence: vec!["qa_signoff".into()],
                approvals: vec![approval("qa_tester", true)],
                ..Default::default()
            },
        );
        gates.insert(
            GateCode::G3,
            GateFacts {
                evidence: vec!["rollback_plan".into()],
                approvals: vec![approval("release_manager", true)],
                ..Default::default()
            },
        );
        gates.insert(
            GateCode::G4,
            GateFacts {
                evidence: vec!["health_check".into()],
                ..Default::default()
            },
        );
        ReleaseFacts {
            gates,
            deployments: vec![deployed("staging", "passed")],
            now: 1_000.0,
        }
    }

    fn status(facts: &ReleaseFacts, code: GateCode) -> GateStatus {
        evaluate(facts)
            .into_iter()
            .find(|e| e.code == code)
            .unwrap()
            .status
    }

    const STAGING: &[GateCode] = &[GateCode::G1, GateCode::G2];

    #[test]
    fn all_gates_passed_is_eligible_everywhere() {
        let e = evaluate(&all_passed());
        assert!(e.iter().all(|g| g.status == GateStatus::Passed), "{e:?}");
        assert_eq!(eligible(&e, STAGING), (true, vec![]));
        assert_eq!(eligible(&e, &ALL_GATES), (true, vec![]));
    }

    #[test]
    fn g2_failed_blocks_staging_and_production() {
        let mut f = all_passed();
        f.gates
            .get_mut(&GateCode::G2)
            .unwrap()
            .checks
            .push(check("e2e", CheckStatus::Fail, false));
        let e = evaluate(&f);
        assert_eq!(status(&f, GateCode::G2), GateStatus::Failed);
        // G3 needs G2, so it falls back to in progress.
        assert_eq!(status(&f, GateCode::G3), GateStatus::InProgress);
        assert!(!eligible(&e, STAGING).0);
        assert_eq!(eligible(&e, &ALL_GATES).1, vec![GateCode::G2, GateCode::G3]);
    }

    #[test]
    fn g3_bypassed_by_an_active_exception_is_eligible_for_production() {
        let mut f = all_passed();
        let g3 = f.gates.get_mut(&GateCode::G3).unwrap();
        g3.approvals.clear();
        g3.exceptions.push(ExceptionFact {
            exception_id: "x1".into(),
            status: "approved".into(),
            expires_at: 2_000.0,
        });
        assert_eq!(status(&f, GateCode::G3), GateStatus::Bypassed);
        assert!(eligible(&evaluate(&f), &ALL_GATES).0);

        // Expired, requested or rejected exceptions do not bypass.
        for (state, expires) in [
            ("approved", 1_000.0),
            ("requested", 2_000.0),
            ("rejected", 2_000.0),
        ] {
            let g3 = f.gates.get_mut(&GateCode::G3).unwrap();
            g3.exceptions[0].status = state.into();
            g3.exceptions[0].expires_at = expires;
            assert_eq!(status(&f, GateCode::G3), GateStatus::InProgress, "{state}");
            assert!(!eligible(&evaluate(&f), &ALL_GATES).0);
        }
    }

    #[test]
    fn g1_waits_for_configured_checks_and_takes_the_latest_result() {
        let mut f = all_passed();
        let g1 = f.gates.get_mut(&GateCode::G1).unwrap();
        g1.required_checks = vec!["build".into(), "lint".into()];
        assert_eq!(status(&f, GateCode::G1), GateStatus::InProgress);
        let g1 = f.gates.get_mut(&GateCode::G1).unwrap();
        g1.checks.push(check("lint", CheckStatus::Fail, true));
        assert_eq!(status(&f, GateCode::G1), GateStatus::Failed);
        let g1 = f.gates.get_mut(&GateCode::G1).unwrap();
        g1.checks.push(check("lint", CheckStatus::Pass, true));
        assert_eq!(status(&f, GateCode::G1), GateStatus::Passed);
        // An optional check failing does not fail G1.
        let g1 = f.gates.get_mut(&GateCode::G1).unwrap();
        g1.checks
            .push(check("flaky-canary", CheckStatus::Fail, false));
        assert_eq!(status(&f, GateCode::G1), GateStatus::Passed);
        // Nothing reported at all is pending, not passed.
        assert_eq!(
            status(&ReleaseFacts::default(), GateCode::G1),
            GateStatus::Pending
        );
    }

    #[test]
    fn g3_needs_a_release_manager_not_a_qa_tester() {
        let mut f = all_passed();
        let g3 = f.gates.get_mut(&GateCode::G3).unwrap();
        g3.approvals = vec![approval("qa_tester", true)];
        assert_eq!(status(&f, GateCode::G3), GateStatus::InProgress);
        let g3 = f.gates.get_mut(&GateCode::G3).unwrap();
        g3.approvals.push(approval("release_manager", false));
        assert_eq!(status(&f, GateCode::G3), GateStatus::Failed);
    }

    #[test]
    fn g4_needs_health_evidence_and_a_promoted_deployment() {
        let mut f = all_passed();
        f.deployments = vec![deployed("dev", "passed")];
        // Health evidence is there but no staging or production deployment yet.
        assert_eq!(status(&f, GateCode::G4), GateStatus::InProgress);
        f.deployments.push(deployed("staging", "failed"));
        assert_eq!(status(&f, GateCode::G4), GateStatus::Failed);
        f.deployments.push(deployed("staging", "passed"));
        assert_eq!(status(&f, GateCode::G4), GateStatus::Passed);
        f.gates.get_mut(&GateCode::G4).unwrap().evidence.clear();
        assert_eq!(status(&f, GateCode::G4), GateStatus::InProgress);
    }

    fn arb_gate() -> impl Strategy<Value = GateFacts> {
        let check = (
            prop::sample::select(vec!["build", "lint", "e2e"]),
            prop::sample::select(vec![
                CheckStatus::Pass,
                CheckStatus::Fail,
                CheckStatus::Pending,
                CheckStatus::Skipped,
            ]),
            any::<bool>(),
        )
            .prop_map(|(n, s, r)| check(n, s, r));
        let evidence = prop::sample::select(vec![
            "test_report",
            "qa_signoff",
            "rollback_plan",
            "health_check",
            "build_log",
        ])
        .prop_map(String::from);
        let approval = (
            prop::sample::select(vec!["qa_tester", "release_manager", "developer"]),
            any::<bool>(),
        )
            .prop_map(|(r, a)| approval(r, a));
        let exception = (
            prop::sample::select(vec!["approved", "requested", "rejected"]),
            0.0..2_000.0f64,
        )
            .prop_map(|(s, t)| ExceptionFact {
                exception_id: "x".into(),
                status: s.into(),
                expires_at: t,
            });
        (
            prop::collection::vec(
                prop::sample::select(vec!["build", "lint"]).prop_map(String::from),
                0..2,
            ),
            prop::collection::vec(check, 0..5),
            prop::collection::vec(evidence, 0..3),
            prop::collection::vec(approval, 0..3),
            prop::collection::vec(exception, 0..2),
        )
            .prop_map(
                |(required_checks, checks, evidence, approvals, exceptions)| GateFacts {
                    required_checks,
                    checks,
                    evidence,
                    approvals,
                    exceptions,
                },
            )
    }

    fn arb_release() -> impl Strategy<Value = ReleaseFacts> {
        let deployment = (
            prop::sample::select(vec!["dev", "staging", "production"]),
            prop::sample::select(vec!["pending", "passed", "failed"]),
        )
            .prop_map(|(e, g)| deployed(e, g));
        (
            prop::collection::vec(arb_gate(), 4),
            prop::collection::vec(deployment, 0..3),
        )
            .prop_map(|(gates, deployments)| ReleaseFacts {
                gates: ALL_GATES.into_iter().zip(gates).collect(),
                deployments,
                now: 1_000.0,
            })
    }

    proptest! {
        /// A gate is bypassed exactly when it would not pass on its own and an approved,
        /// unexpired exception exists; a passed gate is never reported as bypassed.
        #[test]
        fn bypass_only_through_active_exceptions(f in arb_release()) {
            for e in evaluate(&f) {
                let gate = &f.gates[&e.code];
                let active = gate.exceptions.iter().any(|x| x.active_at(f.now));
                if e.status == GateStatus::Bypassed {
                    prop_assert!(active);
                }
                if !active {
                    prop_assert_ne!(e.status, GateStatus::Bypassed);
                }
            }
        }

        /// Eligibility is exactly "every required gate satisfied", and a G1 that is passed
        /// never has a failed required check as latest result.
        #[test]
        fn eligibility_matches_required_gates(f in arb_release()) {
            let e = evaluate(&f);
            for required in [STAGING, &ALL_GATES[..]] {
                let (ok, blocking) = eligible(&e, required);
                prop_assert_eq!(ok, blocking.is_empty());
                for code in required {
                    let satisfied = e.iter().any(|g| g.code == *code && g.status.satisfied());
                    prop_assert_eq!(satisfied, !blocking.contains(code));
                }
            }
            let g1 = &e[0];
            if g1.status == GateStatus::Passed {
                let (waiting, failed) = unmet_checks(&f.gates[&GateCode::G1]);
                prop_assert!(waiting.is_empty() && failed.is_empty());
            }
        }

        /// Adding a late passing result for every required check never makes G1 fail.
        #[test]
        fn a_fixed_check_clears_g1(f in arb_release()) {
            let mut f = f;
            let g1 = f.gates.get_mut(&GateCode::G1).unwrap();
            let names: Vec<String> = required_names(g1).into_iter().map(String::from).collect();
            for n in names {
                g1.checks.push(check(&n, CheckStatus::Pass, true));
            }
            let s = status(&f, GateCode::G1);
            prop_assert!(s != GateStatus::Failed);
        }
    }
}
