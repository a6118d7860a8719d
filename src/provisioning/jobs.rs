//! The provisioning job lifecycle as a pure reducer, run by the core event-store runner
//! (projection `provisioning.client_provisioning_jobs`, events `provisioning.job_events`).
//!
//! ```text
//!            enqueued                claimed                succeeded
//!   (none) ───────────▶ queued ───────────────▶ running ───────────────▶ succeeded
//!                        ▲  ▲                    │  │
//!                        │  └── attempt failed ──┘  │ attempt failed, permanent (4xx)
//!                        │      (transient, attempts│ or attempts used up
//!                        │       left; back-off)    ▼
//!                        └───────── reset ─────── failed
//! ```
//!
//! A running job whose lease expired (its worker died) counts the attempt as failed with
//! "lease expired" and goes back to queued, or to failed when it has no attempts left. Times
//! come in with the events (the database's clock); the reducer only copies them.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::core::actor::Actor;
use crate::core::error::CoreError;
use crate::core::outbox::policy::{backoff, RetryPolicy};
use crate::core::workflow::{Reducer, Transition};

use super::error::ProvisioningError;

pub const JOB_TYPES: &[&str] = &["create_project", "schema_sync", "smoke_checks"];

/// The projection row columns the reducer owns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub client_id: String,
    pub job_type: String,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub next_attempt_at: String,
    pub claimed_at: Option<String>,
    pub claimed_by: Option<String>,
    pub lease_expires_at: Option<String>,
    pub last_error: Option<String>,
    pub last_status_code: Option<i32>,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    Enqueued {
        client_id: String,
        job_type: String,
        max_attempts: i32,
        at: String,
    },
    Claimed {
        worker: String,
        at: String,
        lease_until: String,
    },
    Succeeded {
        at: String,
    },
    /// One attempt failed. `retry_at` is when a transient failure may be retried.
    AttemptFailed {
        error: String,
        status_code: Option<i32>,
        transient: bool,
        retry_at: String,
        at: String,
    },
    LeaseExpired {
        at: String,
    },
    /// An operator starts the job over (attempts = 0).
    Reset {
        at: String,
    },
}

/// What a transition asks the store to do to the client row and the job queue.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Set the client's provisioning_status (and stamp provisioning_started_at the first time).
    ClientStage(&'static str),
    /// Keep the latest error on the client while the job retries.
    ClientError(String),
    /// A job succeeded: the client's error (from an earlier attempt) is history.
    ClientErrorCleared,
    /// The job ran out of attempts or failed permanently.
    ClientFailed(String),
    /// The client is provisioned.
    ClientReady,
    /// Enqueue the next job of the pipeline.
    Enqueue(&'static str),
}

/// The client stage a running job puts its client in.
pub fn stage_of(job_type: &str) -> &'static str {
    match job_type {
        "create_project" => "creating_project",
        _ => "schema_syncing",
    }
}

/// The job that follows a succeeded one (None: the client is ready).
pub fn next_job(job_type: &str) -> Option<&'static str> {
    match job_type {
        "create_project" => Some("schema_sync"),
        _ => None,
    }
}

/// Whether an HTTP outcome is worth retrying: 5xx, 408, 425, 429, or no response at all.
pub fn transient(status_code: Option<i32>) -> bool {
    match status_code {
        None => true,
        Some(s) => s == 408 || s == 425 || s == 429 || (500..=599).contains(&s),
    }
}

/// Exponential back-off with full jitter before attempt `attempts + 1`, never shorter than
/// `min` (429 answers ask for patience).
pub fn retry_delay(
    attempts: i32,
    policy: &RetryPolicy,
    unit_random: f64,
    min: Duration,
) -> Duration {
    backoff(attempts.max(1) as u32, policy, unit_random).max(min)
}

pub struct JobFlow;

fn illegal(state: &Job, event: &JobEvent) -> ProvisioningError {
    let allowed: &[&str] = match state.status.as_str() {
        "queued" => &["claimed", "reset"],
        "running" => &["succeeded", "attempt_failed", "lease_expired"],
        "failed" => &["reset"],
        _ => &[],
    };
    CoreError::IllegalTransition {
        state: state.status.clone(),
        event: JobFlow::event_type(event),
        allowed: allowed.iter().map(|s| s.to_string()).collect(),
    }
    .into()
}

impl Reducer for JobFlow {
    type State = Job;
    type Event = JobEvent;
    type Effect = Effect;
    type Error = ProvisioningError;

    fn reduce(
        state: Option<&Job>,
        event: &JobEvent,
        _actor: &Actor,
    ) -> Result<Transition<Job, Effect>, ProvisioningError> {
        let Some(job) = state else {
            return match event {
                JobEvent::Enqueued {
                    client_id,
                    job_type,
                    max_attempts,
                    at,
                } => {
                    if !JOB_TYPES.contains(&job_type.as_str()) {
                        return Err(CoreError::invalid(
                            "job_type",
                            job_type.clone(),
                            JOB_TYPES.join(", "),
                        )
                        .into());
                    }
                    Ok(Transition::to(Job {
                        client_id: client_id.clone(),
                        job_type: job_type.clone(),
                        status: "queued".into(),
                        attempts: 0,
                        max_attempts: *max_attempts,
                        next_attempt_at: at.clone(),
                        claimed_at: None,
                        claimed_by: None,
                        lease_expires_at: None,
                        last_error: None,
                        last_status_code: None,
                        finished_at: None,
                    }))
                }
                _ => Err(CoreError::not_found("provisioning job", "(new)").into()),
            };
        };
        let mut next = job.clone();
        let release = |j: &mut Job| {
            j.claimed_at = None;
            j.claimed_by = None;
            j.lease_expires_at = None;
        };
        match (job.status.as_str(), event) {
            (_, JobEvent::Enqueued { .. }) => Err(CoreError::Duplicate {
                kind: "provisioning job".into(),
                key: job.client_id.clone(),
            }
            .into()),
            (
                "queued",
                JobEvent::Claimed {
                    worker,
                    at,
                    lease_until,
                },
            ) => {
                next.status = "running".into();
                next.attempts += 1;
                next.claimed_at = Some(at.clone());
                next.claimed_by = Some(worker.clone());
                next.lease_expires_at = Some(lease_until.clone());
                Ok(Transition::to(next).with(Effect::ClientStage(stage_of(&job.job_type))))
            }
            ("running", JobEvent::Succeeded { at }) => {
                next.status = "succeeded".into();
                next.finished_at = Some(at.clone());
                next.last_error = None;
                release(&mut next);
                let t = Transition::to(next).with(Effect::ClientErrorCleared);
                Ok(match next_job(&job.job_type) {
                    Some(j) => t.with(Effect::Enqueue(j)),
                    None => t.with(Effect::ClientReady),
                })
            }
            (
                "running",
                JobEvent::AttemptFailed {
                    error,
                    status_code,
                    transient,
                    retry_at,
                    at,
                },
            ) => {
                next.last_error = Some(error.clone());
                next.last_status_code = *status_code;
                release(&mut next);
                Ok(fail_or_retry(next, *transient, retry_at, at, error))
            }
            ("running", JobEvent::LeaseExpired { at }) => {
                let error = format!(
                    "lease expired: worker {} did not finish attempt {}",
                    job.claimed_by.as_deref().unwrap_or("?"),
                    job.attempts
                );
                next.last_error = Some(error.clone());
                release(&mut next);
                Ok(fail_or_retry(next, true, at, at, &error))
            }
            ("queued" | "failed", JobEvent::Reset { at }) => {
                next.status = "queued".into();
                next.attempts = 0;
                next.next_attempt_at = at.clone();
                next.finished_at = None;
                release(&mut next);
                Ok(Transition::to(next).with(Effect::ClientStage("queued")))
            }
            _ => Err(illegal(job, event)),
        }
    }

    fn event_type(event: &JobEvent) -> String {
        match event {
            JobEvent::Enqueued { .. } => "enqueued",
            JobEvent::Claimed { .. } => "claimed",
            JobEvent::Succeeded { .. } => "succeeded",
            JobEvent::AttemptFailed { .. } => "attempt_failed",
            JobEvent::LeaseExpired { .. } => "lease_expired",
            JobEvent::Reset { .. } => "reset",
        }
        .into()
    }

    fn event_payload(event: &JobEvent) -> Value {
        match event {
            JobEvent::Enqueued {
                job_type,
                max_attempts,
                ..
            } => json!({"job_type": job_type, "max_attempts": max_attempts}),
            JobEvent::Claimed {
                worker,
                lease_until,
                ..
            } => json!({"worker": worker, "lease_until": lease_until}),
            JobEvent::Succeeded { .. } | JobEvent::LeaseExpired { .. } | JobEvent::Reset { .. } => {
                json!({})
            }
            JobEvent::AttemptFailed {
                error,
                status_code,
                transient,
                retry_at,
                ..
            } => {
                json!({"error": error, "status_code": status_code, "transient": transient, "retry_at": retry_at})
            }
        }
    }

    fn event_extra(before: Option<&Job>, after: &Job) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(
            "from_status".into(),
            json!(before.map(|b| b.status.clone())),
        );
        m.insert("to_status".into(), json!(after.status));
        m
    }
}

/// `error` followed by `suffix`, unless the error already says it (an outbox error such as
/// "HTTP 404 is a permanent error (not retried)" must not read "(not retried) (not retried)").
fn with_suffix(error: &str, suffix: &str) -> String {
    if error.contains(suffix) {
        error.to_owned()
    } else {
        format!("{error} {suffix}")
    }
}

fn fail_or_retry(
    mut next: Job,
    transient: bool,
    retry_at: &str,
    at: &str,
    error: &str,
) -> Transition<Job, Effect> {
    if transient && next.attempts < next.max_attempts {
        next.status = "queued".into();
        next.next_attempt_at = retry_at.to_owned();
        Transition::to(next).with(Effect::ClientError(error.to_owned()))
    } else {
        let why = if transient {
            with_suffix(
                error,
                &format!("(gave up after {} attempts)", next.attempts),
            )
        } else {
            with_suffix(error, "(not retried)")
        };
        next.status = "failed".into();
        next.finished_at = Some(at.to_owned());
        next.last_error = Some(why.clone());
        Transition::to(next).with(Effect::ClientFailed(why))
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn an_error_never_repeats_its_suffix() {
        assert_eq!(
            with_suffix(
                "HTTP 404 is a permanent error (not retried)",
                "(not retried)"
            ),
            "HTTP 404 is a permanent error (not retried)"
        );
        assert_eq!(
            with_suffix("create: HTTP 401", "(not retried)"),
            "create: HTTP 401 (not retried)"
        );
    }
    use proptest::prelude::*;

    fn actor() -> Actor {
        Actor::system()
    }

    fn apply(
        state: Option<&Job>,
        e: JobEvent,
    ) -> Result<Transition<Job, Effect>, ProvisioningError> {
        JobFlow::reduce(state, &e, &actor())
    }

    fn queued(max: i32) -> Job {
        apply(
            None,
            JobEvent::Enqueued {
                client_id: "c1".into(),
                job_type: "create_project".into(),
                max_attempts: max,
                at: "t0".into(),
            },
        )
        .unwrap()
        .state
    }

    fn claim(j: &Job) -> Transition<Job, Effect> {
        apply(
            Some(j),
            JobEvent::Claimed {
                worker: "w1".into(),
                at: "t1".into(),
                lease_until: "t9".into(),
            },
        )
        .unwrap()
    }

    fn failure(j: &Job, transient: bool) -> Transition<Job, Effect> {
        apply(
            Some(j),
            JobEvent::AttemptFailed {
                error: "HTTP 500".into(),
                status_code: Some(500),
                transient,
                retry_at: "t5".into(),
                at: "t2".into(),
            },
        )
        .unwrap()
    }

    #[test]
    fn happy_path_enqueues_the_schema_sync() {
        let j = queued(3);
        let c = claim(&j);
        assert_eq!(c.state.status, "running");
        assert_eq!(c.state.attempts, 1);
        assert_eq!(c.effects, vec![Effect::ClientStage("creating_project")]);
        let done = apply(Some(&c.state), JobEvent::Succeeded { at: "t3".into() }).unwrap();
        assert_eq!(done.state.status, "succeeded");
        assert_eq!(done.state.claimed_by, None);
        assert_eq!(
            done.effects,
            vec![Effect::ClientErrorCleared, Effect::Enqueue("schema_sync")]
        );
    }

    #[test]
    fn transient_failures_retry_until_attempts_run_out() {
        let mut j = queued(2);
        j = claim(&j).state;
        let t = failure(&j, true);
        assert_eq!(
            (t.state.status.as_str(), t.state.next_attempt_at.as_str()),
            ("queued", "t5")
        );
        assert_eq!(t.effects, vec![Effect::ClientError("HTTP 500".into())]);
        j = claim(&t.state).state;
        let t = failure(&j, true);
        assert_eq!(t.state.status, "failed");
        assert!(
            matches!(&t.effects[0], Effect::ClientFailed(e) if e.contains("gave up after 2 attempts"))
        );
    }

    #[test]
    fn permanent_failures_fail_at_once_and_reset_starts_over() {
        let j = claim(&queued(5)).state;
        let t = failure(&j, false);
        assert_eq!(t.state.status, "failed");
        assert_eq!(t.state.attempts, 1);
        let r = apply(Some(&t.state), JobEvent::Reset { at: "t7".into() }).unwrap();
        assert_eq!((r.state.status.as_str(), r.state.attempts), ("queued", 0));
        assert_eq!(r.effects, vec![Effect::ClientStage("queued")]);
        // A succeeded job is never reset, a queued one is never finished.
        let done = apply(Some(&j), JobEvent::Succeeded { at: "t3".into() })
            .unwrap()
            .state;
        assert!(apply(Some(&done), JobEvent::Reset { at: "t8".into() }).is_err());
        assert!(apply(Some(&queued(1)), JobEvent::Succeeded { at: "t3".into() }).is_err());
    }

    #[test]
    fn an_expired_lease_counts_as_a_failed_attempt() {
        let j = claim(&queued(1)).state;
        let t = apply(Some(&j), JobEvent::LeaseExpired { at: "t9".into() }).unwrap();
        assert_eq!(t.state.status, "failed");
        assert!(t
            .state
            .last_error
            .unwrap()
            .starts_with("lease expired: worker w1"));
    }

    #[test]
    fn only_5xx_429_408_and_no_answer_are_transient() {
        for s in [500, 502, 503, 429, 408, 425] {
            assert!(transient(Some(s)), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 422] {
            assert!(!transient(Some(s)), "{s}");
        }
        assert!(transient(None));
    }

    proptest! {
        /// Whatever happens, attempts never exceed max_attempts while a job can still run, and
        /// a job is running exactly when it has a claim.
        #[test]
        fn attempts_are_bounded(max in 1i32..6, steps in prop::collection::vec(0u8..4, 0..30)) {
            let mut j = queued(max);
            for s in steps {
                let e = match s {
                    0 => JobEvent::Claimed { worker: "w".into(), at: "a".into(), lease_until: "b".into() },
                    1 => JobEvent::AttemptFailed { error: "x".into(), status_code: None, transient: true, retry_at: "r".into(), at: "a".into() },
                    2 => JobEvent::LeaseExpired { at: "a".into() },
                    _ => JobEvent::AttemptFailed { error: "x".into(), status_code: Some(400), transient: false, retry_at: "r".into(), at: "a".into() },
                };
                if let Ok(t) = apply(Some(&j), e) { j = t.state; }
                prop_assert!(j.attempts <= j.max_attempts);
                prop_assert_eq!(j.status == "running", j.claimed_by.is_some());
            }
        }

        #[test]
        fn retry_delays_stay_within_the_cap(attempts in 0i32..50, r in 0.0f64..1.0) {
            let p = RetryPolicy::default();
            let d = retry_delay(attempts, &p, r, Duration::from_secs(2));
            prop_assert!(d >= Duration::from_secs(2) && d <= p.cap.max(Duration::from_secs(2)));
        }
    }
}
