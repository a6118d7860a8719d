//! What to do after an HTTP attempt: deliver, retry later, fail for good, or give up.
//!
//! Pure: no Postgres, no clock, no randomness of its own (the caller passes a uniform random
//! number), so every rule is tested by `#[test]` and proptest.

use std::time::{Duration, SystemTime};

/// The result of one attempt as the transport saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The server answered.
    Response {
        status: u16,
        retry_after: Option<String>,
    },
    /// No answer within the request timeout.
    Timeout,
    /// Could not connect (refused, DNS, TLS, reset before a response).
    Connect(String),
    /// Anything else that prevented a response; retried like a connection error.
    Transport(String),
    /// The request could not be built from the delivery (a URL or header value the HTTP client
    /// refuses): sending it again cannot go otherwise, so it is not retried.
    Invalid(String),
}

/// Retry tuning, from settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// Longest Retry-After flowgate will honour; longer values are clamped to it.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(600),
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again after `delay`.
    Retry {
        delay: Duration,
        reason: String,
    },
    /// A permanent client error: not retried; the owner is told.
    Failed {
        reason: String,
    },
    /// Retries exhausted: kept as `dead` for inspection and replay; the owner is told.
    Dead {
        reason: String,
    },
}

/// Exponential back-off with full jitter: uniform in `[0, min(cap, base · 2^(attempt-1))]`.
/// `unit_random` must be in `[0, 1)`; out-of-range values are clamped.
pub fn backoff(attempt: u32, policy: &RetryPolicy, unit_random: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(40);
    let ceiling = policy
        .base
        .saturating_mul(1u32 << exp.min(31))
        .min(policy.cap);
    let ceiling = if exp > 31 { policy.cap } else { ceiling };
    ceiling.mul_f64(unit_random.clamp(0.0, 1.0))
}

/// Parse a Retry-After value: delta-seconds or an HTTP-date (relative to `now`).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn is_retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || status == 425 || (500..=599).contains(&status)
}

/// Decide what follows attempt number `attempt` (1-based) of at most `max_attempts`.
pub fn decide(
    attempt: u32,
    max_attempts: u32,
    result: &Attempt,
    policy: &RetryPolicy,
    unit_random: f64,
    now: SystemTime,
) -> Verdict {
    let (reason, floor) = match result {
        Attempt::Response { status, .. } if (200..=299).contains(status) => {
            return Verdict::Delivered
        }
        Attempt::Response {
            status,
            retry_after,
        } if is_retryable_status(*status) => {
            let floor = retry_after
                .as_deref()
                .and_then(|v| parse_retry_after(v, now))
                .map(|d| d.min(policy.max_retry_after));
            (format!("HTTP {status}"), floor)
        }
        Attempt::Response { status, .. } => {
            return Verdict::Failed {
                reason: format!("HTTP {status} is a permanent error (not retried)"),
            }
        }
        Attempt::Timeout => ("timed out".to_string(), None),
        Attempt::Connect(e) => (format!("connection failed: {e}"), None),
        Attempt::Transport(e) => (format!("transport error: {e}"), None),
        Attempt::Invalid(e) => {
            return Verdict::Failed {
                reason: format!("the request cannot be sent: {e} (not retried)"),
            }
        }
    };
    if attempt >= max_attempts {
        return Verdict::Dead {
            reason: format!("{reason}; gave up after {attempt} attempts"),
        };
    }
    let jittered = backoff(attempt, policy, unit_random);
    let delay = match floor {
        Some(f) => jittered.max(f),
        None => jittered,
    };
    Verdict::Retry { delay, reason }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_request_that_cannot_be_built_is_not_retried() {
        let v = decide(
            1,
            5,
            &Attempt::Invalid("invalid uri character".into()),
            &RetryPolicy::default(),
            0.5,
            at(0),
        );
        assert!(matches!(v, Verdict::Failed { reason } if reason.contains("not retried")));
    }

    fn resp(status: u16) -> Attempt {
        Attempt::Response {
            status,
            retry_after: None,
        }
    }

    const NOW: u64 = 1_784_000_000;

    #[test]
    fn two_hundreds_are_delivered() {
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(
                decide(1, 5, &resp(s), &RetryPolicy::default(), 0.5, at(NOW)),
                Verdict::Delivered
            );
        }
    }

    #[test]
    fn client_errors_fail_at_once_except_408_425_429() {
        for s in [300, 301, 400, 401, 403, 404, 409, 410, 422] {
            assert!(
                matches!(
                    decide(1, 5, &resp(s), &RetryPolicy::default(), 0.5, at(NOW)),
                    Verdict::Failed { .. }
                ),
                "{s}"
            );
        }
        for s in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert!(
                matches!(
                    decide(1, 5, &resp(s), &RetryPolicy::default(), 0.5, at(NOW)),
                    Verdict::Retry { .. }
                ),
                "{s}"
            );
        }
    }

    #[test]
    fn transport_failures_retry_then_die() {
        let p = RetryPolicy::default();
        for a in [
            Attempt::Timeout,
            Attempt::Connect("refused".into()),
            Attempt::Transport("reset".into()),
        ] {
            assert!(matches!(
                decide(1, 3, &a, &p, 0.5, at(NOW)),
                Verdict::Retry { .. }
            ));
            assert!(matches!(
                decide(3, 3, &a, &p, 0.5, at(NOW)),
                Verdict::Dead { .. }
            ));
        }
        match decide(3, 3, &resp(503), &p, 0.5, at(NOW)) {
            Verdict::Dead { reason } => assert_eq!(reason, "HTTP 503; gave up after 3 attempts"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn backoff_grows_exponentially_and_is_capped() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            ..Default::default()
        };
        let top = |a| backoff(a, &p, 0.999_999);
        assert!(top(1) < Duration::from_millis(101));
        assert!(top(2) > Duration::from_millis(190) && top(2) <= Duration::from_millis(200));
        assert!(top(5) > Duration::from_millis(1590) && top(5) <= Duration::from_millis(1600));
        assert!(top(30) <= Duration::from_secs(10));
        assert!(top(u32::MAX) <= Duration::from_secs(10));
        assert_eq!(
            backoff(7, &p, 0.0),
            Duration::ZERO,
            "full jitter reaches zero"
        );
    }

    #[test]
    fn retry_after_seconds_and_dates_are_honoured_and_clamped() {
        let p = RetryPolicy::default();
        let r = Attempt::Response {
            status: 429,
            retry_after: Some("30".into()),
        };
        match decide(1, 5, &r, &p, 0.0, at(NOW)) {
            Verdict::Retry { delay, .. } => assert_eq!(delay, Duration::from_secs(30)),
            v => panic!("{v:?}"),
        }
        let date = httpdate::fmt_http_date(at(NOW + 120));
        assert_eq!(
            parse_retry_after(&date, at(NOW)),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after(&httpdate::fmt_http_date(at(NOW - 5)), at(NOW)),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", at(NOW)), None);
        let huge = Attempt::Response {
            status: 503,
            retry_after: Some("999999".into()),
        };
        match decide(1, 5, &huge, &p, 0.0, at(NOW)) {
            Verdict::Retry { delay, .. } => assert_eq!(delay, p.max_retry_after),
            v => panic!("{v:?}"),
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn backoff_stays_within_bounds(attempt in 0u32..200, r in 0.0f64..1.0, base_ms in 1u64..10_000, cap_ms in 1u64..1_000_000) {
                let p = RetryPolicy { base: Duration::from_millis(base_ms), cap: Duration::from_millis(cap_ms), ..Default::default() };
                let d = backoff(attempt, &p, r);
                prop_assert!(d <= p.cap);
                let exp = attempt.saturating_sub(1).min(31);
                prop_assert!(d <= Duration::from_millis(base_ms.saturating_mul(1u64 << exp)));
            }

            #[test]
            fn verdicts_are_consistent(attempt in 1u32..20, max in 1u32..20, status in 100u16..600, r in 0.0f64..1.0) {
                let v = decide(attempt, max, &Attempt::Response { status, retry_after: None }, &RetryPolicy::default(), r, SystemTime::UNIX_EPOCH);
                match v {
                    Verdict::Delivered => prop_assert!((200..300).contains(&status)),
                    Verdict::Retry { .. } => prop_assert!(attempt < max),
                    Verdict::Dead { .. } => prop_assert!(attempt >= max),
                    Verdict::Failed { .. } => prop_assert!(!(200..300).contains(&status)),
                }
            }
        }
    }
}
