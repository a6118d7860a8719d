//! The release gate rules as pure functions over facts loaded from
//! `ops.*`. Nothing here touches Postgres: `evaluation/` loads [`ReleaseFacts`], these rules
//! decide, and the result is written back to `ops.release_gates`.
//!
//! | gate | passed when |
//! |---|---|
//! | G1 | every required check (configured names, plus checks reported as required) has `pass` as its latest result |
//! | G2 | QA evidence (`test_report` or `qa_signoff`) is attached, no check's latest result is `fail`, required checks passed, the latest signoff is not a rejection |
//! | G3 | the latest release-manager approval is `approved`, a `rollback_plan` artifact is attached, and G2 is passed (or bypassed) |
//! | G4 | a staging or production deployment recorded after the latest rollback has `g4_status = passed`, and a `health_check` artifact was attached since it was recorded |
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
                format!("{} is not a gate", crate::core::error::quoted(other)),
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

    /// The gates whose status a fact about this gate can change, and the gates whose facts
    /// evaluating those reads (G3 follows G2's status).
    pub fn scope(self) -> (&'static [GateCode], &'static [GateCode]) {
        use GateCode::*;
        match self {
            G1 => (&[G1], &[G1]),
            G2 => (&[G2, G3], &[G2, G3]),
            G3 => (&[G3], &[G2, G3]),
            G4 => (&[G4], &[G4]),
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
                summary: "a staging or production deployment recorded after the latest rollback has g4_status passed and a health check artifact attached since it was recorded",
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
    /// Types of the artifacts attached to this gate, its checks, or the release itself, each
    /// with when it was last attached: seconds since the epoch, by the clock (`recorded_at`).
    pub evidence: BTreeMap<String, f64>,
    pub approvals: Vec<ApprovalFact>,
    pub exceptions: Vec<ExceptionFact>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentFact {
    pub environment: String,
    pub status: String,
    pub g4_status: String,
    /// When it was recorded (`recorded_at`, the clock), seconds since the epoch: health
    /// evidence counts for it from then on.
    pub recorded: f64,
    /// When it was rolled back (`rolled_back_at`, the clock), seconds since the epoch.
    pub rolled_back_at: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReleaseFacts {
    pub gates: BTreeMap<GateCode, GateFacts>,
    /// In the order they were recorded.
    pub deployments: Vec<DeploymentFact>,
    /// Evaluation time, seconds since the epoch (the clock when the evaluation runs,
    /// `clock_timestamp()`).
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
    any_of.iter().any(|t| facts.evidence.contains_key(*t))
}

/// Required check names: the configured ones in their order, then those reported as required
/// by name. Nothing here depends on the order the latest results were reported in, so a result
/// that repeats its check's latest one changes no evaluation (the ingest relies on it).
fn required_names(facts: &GateFacts) -> Vec<&str> {
    let mut names: Vec<&str> = facts.required_checks.iter().map(String::as_str).collect();
    let mut reported: Vec<&str> = facts
        .checks
        .iter()
        .filter(|c| c.required && !names.contains(&c.name.as_str()))
        .map(|c| c.name.as_str())
        .collect();
    reported.sort_unstable();
    reported.dedup();
    names.extend(reported);
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
        let mut names: Vec<&str> = facts
            .checks
            .iter()
            .filter(|c| latest(facts, &c.name) == Some(CheckStatus::Fail))
            .map(|c| c.name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
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
                // Who rejected it is in ops.approvals, which row security shows to fewer
                // personas than the gate statuses: the reason names the persona only.
                format!("QA signoff rejected ({})", a.persona_role),
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
                // As for G2: the approver's identity stays in ops.approvals.
                format!("release approval rejected ({})", a.persona_role),
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
    let promoted = deployments
        .iter()
        .filter(|d| d.environment == "staging" || d.environment == "production");
    // A rollback withdraws the health of every staging or production deployment recorded
    // before it was rolled back (and its own): only deployments started after the latest
    // rollback count.
    let rollback = promoted
        .clone()
        .filter_map(|d| d.rolled_back_at.map(|at| (at, d)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let current: Vec<&DeploymentFact> = promoted
        .filter(|d| d.status != "rolled_back" && rollback.is_none_or(|(at, _)| d.recorded > at))
        .collect();
    // Health evidence speaks for a deployment only if it was attached once the deployment
    // existed: older evidence (from before a rollback, say) does not.
    let latest_health = rule
        .evidence_any_of
        .iter()
        .filter_map(|t| facts.evidence.get(*t).copied())
        .max_by(f64::total_cmp);
    let healthy: Vec<&&DeploymentFact> =
        current.iter().filter(|d| d.g4_status == "passed").collect();
    if !healthy.is_empty() {
        if healthy
            .iter()
            .any(|d| latest_health.is_some_and(|at| at >= d.recorded))
        {
            return (
                GateStatus::Passed,
                "deployment health passed and health check evidence attached".into(),
            );
        }
        return (
            GateStatus::InProgress,
            "deployment health passed; waiting for a health_check artifact attached since the deployment".into(),
        );
    }
    match (current.last(), rollback) {
        (Some(d), _) if d.g4_status == "failed" => (
            GateStatus::Failed,
            format!("post-deployment health check failed in {}", d.environment),
        ),
        (Some(d), _) => (
            GateStatus::InProgress,
            format!(
                "waiting for the health check of the {} deployment",
                d.environment
            ),
        ),
        (None, Some((_, d))) => (
            GateStatus::Failed,
            format!(
                "the {} deployment was rolled back; a new staging or production deployment has to pass its health check",
                d.environment
            ),
        ),
        (None, None) => open(facts, "no staging or production deployment yet".into()),
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
mod unit_tests;
