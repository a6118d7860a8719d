//! The value lists of `ops`, written once. Pure.
//!
//! The envelope checks (`envelope`) refuse a value outside these lists before anything is
//! written, with the list in the error; the tables hold the same lists as CHECK constraints
//! (23514 for a direct write), generated from here by `ops.value_constraints()`, which the
//! install runs.

/// Where a deployment goes, and what environment events, incidents and drills are about.
pub const ENVIRONMENTS: &[&str] = &["dev", "staging", "production"];
/// A release's own status.
pub const RELEASE_STATUSES: &[&str] = &["open", "in_staging", "in_production", "rolled_back"];
pub const GATE_CODES: &[&str] = &["G1", "G2", "G3", "G4"];
pub const GATE_STATUSES: &[&str] = &["pending", "in_progress", "passed", "failed", "bypassed"];
/// A check's reported result (build_complete reports pass or fail only).
pub const CHECK_STATUSES: &[&str] = &["pass", "fail", "pending", "skipped"];
pub const BUILD_STATUSES: &[&str] = &["pass", "fail"];
/// A signoff's or approval's decision.
pub const DECISIONS: &[&str] = &["approved", "rejected"];
pub const ARTIFACT_TYPES: &[&str] = &[
    "build_log",
    "test_report",
    "qa_signoff",
    "security_scan",
    "rollback_plan",
    "health_check",
    "deployment_log",
    "runbook",
    "reference",
    "other",
];
/// An exception's status; a decision moves it out of `requested`.
pub const EXCEPTION_STATUSES: &[&str] = &["requested", "approved", "rejected", "revoked"];
pub const EXCEPTION_DECISIONS: &[&str] = &["approved", "rejected", "revoked"];
/// A deployment's status; deployment_finished reports one of the two outcomes.
pub const DEPLOYMENT_STATUSES: &[&str] = &["started", "succeeded", "failed", "rolled_back"];
pub const DEPLOYMENT_OUTCOMES: &[&str] = &["succeeded", "failed"];
/// G4's result on a deployment, and a health check's report.
pub const G4_STATUSES: &[&str] = &["pending", "passed", "failed"];
pub const HEALTH_RESULTS: &[&str] = &["pass", "fail"];
pub const SEVERITIES: &[&str] = &["sev1", "sev2", "sev3", "sev4"];
pub const INCIDENT_STATUSES: &[&str] = &["open", "resolved"];
pub const DRILL_TYPES: &[&str] = &[
    "backup_restore",
    "failover",
    "rollback",
    "region_evacuation",
];
pub const DRILL_OUTCOMES: &[&str] = &["passed", "failed"];
/// What became of an envelope.
pub const PROCESSING_STATUSES: &[&str] = &["accepted", "duplicate", "rejected", "error"];

/// Each table column of `ops` that holds one of the lists: (table, column, list).
pub const COLUMNS: &[(&str, &str, &[&str])] = &[
    ("releases", "status", RELEASE_STATUSES),
    ("release_gates", "gate_code", GATE_CODES),
    ("release_gates", "status", GATE_STATUSES),
    ("gate_checks", "status", CHECK_STATUSES),
    ("approvals", "decision", DECISIONS),
    ("evidence_artifacts", "artifact_type", ARTIFACT_TYPES),
    ("exceptions", "status", EXCEPTION_STATUSES),
    ("deployments", "environment", ENVIRONMENTS),
    ("deployments", "status", DEPLOYMENT_STATUSES),
    ("deployments", "g4_status", G4_STATUSES),
    ("environment_events", "environment", ENVIRONMENTS),
    ("event_ingest_log", "processing_status", PROCESSING_STATUSES),
    ("incidents", "environment", ENVIRONMENTS),
    ("incidents", "severity", SEVERITIES),
    ("incidents", "status", INCIDENT_STATUSES),
    ("recovery_drills", "environment", ENVIRONMENTS),
    ("recovery_drills", "drill_type", DRILL_TYPES),
    ("recovery_drills", "outcome", DRILL_OUTCOMES),
    ("environment_gate_requirements", "environment", ENVIRONMENTS),
    ("environment_gate_requirements", "gate_code", GATE_CODES),
];

/// The CHECK constraints of [`COLUMNS`], named as Postgres names a column's CHECK
/// (`<table>_<column>_check`).
pub fn constraints() -> Vec<String> {
    COLUMNS
        .iter()
        .map(|(table, column, list)| {
            format!(
                "ALTER TABLE ops.{table} ADD CONSTRAINT {table}_{column}_check CHECK ({column} IN ('{}'))",
                list.join("', '")
            )
        })
        .collect()
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use crate::ops::gates::{GateStatus, ALL_GATES};

    #[test]
    fn the_lists_agree_with_the_types_that_hold_them() {
        let codes: Vec<String> = ALL_GATES.iter().map(|g| g.to_string()).collect();
        assert_eq!(codes, GATE_CODES);
        assert!(BUILD_STATUSES.iter().all(|v| CHECK_STATUSES.contains(v)));
        assert!(HEALTH_RESULTS.iter().all(|v| CHECK_STATUSES.contains(v)));
        let gate_statuses: Vec<&str> = [
            GateStatus::Pending,
            GateStatus::InProgress,
            GateStatus::Passed,
            GateStatus::Failed,
            GateStatus::Bypassed,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect();
        assert_eq!(gate_statuses, GATE_STATUSES);
        assert!(EXCEPTION_DECISIONS
            .iter()
            .all(|v| EXCEPTION_STATUSES.contains(v)));
        assert!(DEPLOYMENT_OUTCOMES
            .iter()
            .all(|v| DEPLOYMENT_STATUSES.contains(v)));
    }

    #[test]
    fn values_need_no_quoting() {
        for (_, _, list) in COLUMNS {
            for v in *list {
                assert!(
                    v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'),
                    "{v}"
                );
            }
        }
        assert_eq!(constraints().len(), COLUMNS.len());
        assert!(constraints()[0].starts_with(
            "ALTER TABLE ops.releases ADD CONSTRAINT releases_status_check CHECK (status IN ('open', "
        ));
    }
}
