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
        recorded: 0.0,
        rolled_back_at: None,
    }
}

/// Deployed (recorded) at `t`.
fn deployed_at(env: &str, g4: &str, t: f64) -> DeploymentFact {
    DeploymentFact {
        recorded: t,
        ..deployed(env, g4)
    }
}

fn health_attached_at(f: &mut ReleaseFacts, t: f64) {
    let g4 = f.gates.get_mut(&GateCode::G4).unwrap();
    g4.evidence.insert("health_check".into(), t);
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
            evidence: BTreeMap::from([("qa_signoff".to_string(), 0.0)]),
            approvals: vec![approval("qa_tester", true)],
            ..Default::default()
        },
    );
    gates.insert(
        GateCode::G3,
        GateFacts {
            evidence: BTreeMap::from([("rollback_plan".to_string(), 0.0)]),
            approvals: vec![approval("release_manager", true)],
            ..Default::default()
        },
    );
    gates.insert(
        GateCode::G4,
        GateFacts {
            evidence: BTreeMap::from([("health_check".to_string(), 0.0)]),
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
    let g4 = f.gates.get_mut(&GateCode::G4).unwrap();
    g4.evidence.clear();
    assert_eq!(status(&f, GateCode::G4), GateStatus::InProgress);
}

#[test]
fn g4_is_withdrawn_by_a_rollback_until_a_later_deployment_passes() {
    let mut f = all_passed();
    f.deployments = vec![deployed_at("staging", "passed", 10.0)];
    health_attached_at(&mut f, 11.0);
    assert_eq!(status(&f, GateCode::G4), GateStatus::Passed);
    // Production is deployed, then a second staging deployment passes, then production is
    // rolled back: everything recorded before the rollback is withdrawn, the later staging
    // deployment included (it was started before the rollback).
    let mut prod = deployed_at("production", "pending", 20.0);
    f.deployments.push(prod.clone());
    f.deployments.push(deployed_at("staging", "passed", 30.0));
    health_attached_at(&mut f, 31.0);
    assert_eq!(status(&f, GateCode::G4), GateStatus::Passed);
    prod.status = "rolled_back".into();
    prod.rolled_back_at = Some(40.0);
    f.deployments[1] = prod;
    assert_eq!(status(&f, GateCode::G4), GateStatus::Failed);
    // The rolled-back deployment itself had passed: still withdrawn.
    f.deployments[1].g4_status = "passed".into();
    assert_eq!(status(&f, GateCode::G4), GateStatus::Failed);
    // A dev deployment after it changes nothing.
    f.deployments.push(deployed_at("dev", "passed", 50.0));
    assert_eq!(status(&f, GateCode::G4), GateStatus::Failed);
    // A new staging deployment waits for its health check.
    f.deployments.push(deployed_at("staging", "pending", 60.0));
    assert_eq!(status(&f, GateCode::G4), GateStatus::InProgress);
    // It passes, but the only health evidence is from before it: not yet.
    f.deployments.last_mut().unwrap().g4_status = "passed".into();
    assert_eq!(status(&f, GateCode::G4), GateStatus::InProgress);
    // Evidence attached since it started: passed.
    health_attached_at(&mut f, 61.0);
    assert_eq!(status(&f, GateCode::G4), GateStatus::Passed);
}

#[test]
fn g4_needs_health_evidence_attached_since_the_deployment() {
    let mut f = all_passed();
    health_attached_at(&mut f, 5.0);
    f.deployments = vec![deployed_at("staging", "passed", 10.0)];
    assert_eq!(status(&f, GateCode::G4), GateStatus::InProgress);
    // Attached at the moment it was recorded: it counts.
    health_attached_at(&mut f, 10.0);
    assert_eq!(status(&f, GateCode::G4), GateStatus::Passed);
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
                evidence: evidence.into_iter().map(|e: String| (e, 0.0)).collect(),
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

    /// A fact about a gate changes only the gates of its scope, and those evaluate the same
    /// from the facts of the scope's inputs alone (the ingest of a check loads no more).
    #[test]
    fn a_gate_scope_is_all_a_fact_changes(f in arb_release(), other in arb_release()) {
        let full = evaluate(&f);
        for gate in ALL_GATES {
            let (affected, inputs) = gate.scope();
            // Other facts for this gate: only the affected gates may change.
            let mut changed = f.clone();
            changed.gates.insert(gate, other.gates[&gate].clone());
            if gate == GateCode::G4 {
                changed.deployments = other.deployments.clone();
            }
            for (before, after) in full.iter().zip(evaluate(&changed)) {
                if !affected.contains(&before.code) {
                    prop_assert_eq!(before, &after);
                }
            }
            // The inputs' facts alone give the affected gates' evaluations.
            let mut alone = f.clone();
            alone.gates.retain(|code, _| inputs.contains(code));
            if !inputs.contains(&GateCode::G4) {
                alone.deployments.clear();
            }
            let partial = evaluate(&alone);
            for code in affected {
                let i = ALL_GATES.iter().position(|c| c == code).unwrap();
                prop_assert_eq!(&full[i], &partial[i]);
            }
        }
    }

    /// The rules read the latest result per check and nothing of the order the results came
    /// in: a result that repeats its check's latest one (which moves that check to the end of
    /// the loaded facts) changes no evaluation, reason texts included. The ingest writes such
    /// a result without evaluating the release again.
    #[test]
    fn a_repeated_latest_result_changes_nothing(f in arb_release(), pick in any::<prop::sample::Index>()) {
        // As loaded: one latest result per check.
        let mut f = f;
        for gate in f.gates.values_mut() {
            let mut seen: Vec<String> = Vec::new();
            let mut latest: Vec<CheckFact> = Vec::new();
            for c in gate.checks.iter().rev() {
                if !seen.contains(&c.name) {
                    seen.push(c.name.clone());
                    latest.push(c.clone());
                }
            }
            latest.reverse();
            gate.checks = latest;
        }
        let before = evaluate(&f);
        for code in ALL_GATES {
            let checks = &f.gates[&code].checks;
            if checks.is_empty() {
                continue;
            }
            let mut repeated = f.clone();
            let list = &mut repeated.gates.get_mut(&code).unwrap().checks;
            let again = list.remove(pick.index(list.len()));
            list.push(again);
            prop_assert_eq!(&before, &evaluate(&repeated));
        }
    }
}
