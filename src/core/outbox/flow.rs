//! Per-destination flow control: how many deliveries of one flow key may be claimed now.
//!
//! A delivery's flow key names the destination it shares limits with: by default the URL's
//! host (and port), or what its module chose (one Slack channel, the Supabase Management API).
//! The `flowgate.flow_limits` setting gives a key (or a `prefix*` pattern) a cap on requests in
//! flight and a token bucket (`per_second`, `burst`). A 429 or 503 with Retry-After pauses the
//! whole key until then, not only the delivery that got it. Every runner (procedures, the
//! worker) takes its share under a row lock on the key's state, so the limits hold across all
//! of them at once.
//!
//! Pure: the claim path reads the state, asks [`allowance`] and writes back what it took.

use serde_json::{Map, Value};

/// The limits of one flow key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Most deliveries of the key in flight at once.
    pub max_in_flight: Option<u32>,
    /// Token refill rate; `None` is no rate limit.
    pub per_second: Option<f64>,
    /// Bucket size: requests allowed at once after a quiet period (at least 1).
    pub burst: f64,
}

/// A key's bucket as stored: tokens at `refilled_at` (seconds), and a pause from Retry-After.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub refilled_at: f64,
    pub paused_until: Option<f64>,
}

impl Bucket {
    /// A key seen for the first time starts full.
    pub fn new(limit: &Limit, now: f64) -> Bucket {
        Bucket {
            tokens: limit.burst,
            refilled_at: now,
            paused_until: None,
        }
    }
}

/// How many deliveries of the key may be claimed at `now`, given those already in flight,
/// and the bucket after refilling (take them with [`take`]).
pub fn allowance(
    limit: Option<&Limit>,
    bucket: Option<Bucket>,
    in_flight: u32,
    now: f64,
) -> (u32, Option<Bucket>) {
    if let Some(until) = bucket.and_then(|b| b.paused_until) {
        if until > now {
            return (0, bucket);
        }
    }
    let Some(limit) = limit else {
        return (u32::MAX, bucket);
    };
    let cap = limit
        .max_in_flight
        .map_or(u32::MAX, |m| m.saturating_sub(in_flight));
    let mut b = bucket.unwrap_or_else(|| Bucket::new(limit, now));
    let by_rate = match limit.per_second {
        None => u32::MAX,
        Some(rate) => {
            let elapsed = (now - b.refilled_at).max(0.0);
            b.tokens = (b.tokens + elapsed * rate).min(limit.burst.max(1.0));
            b.refilled_at = now;
            b.tokens.max(0.0).floor().min(u32::MAX as f64) as u32
        }
    };
    (cap.min(by_rate), Some(b))
}

/// Take `n` tokens from a refilled bucket.
pub fn take(bucket: Bucket, n: u32) -> Bucket {
    Bucket {
        tokens: bucket.tokens - f64::from(n),
        ..bucket
    }
}

/// Seconds from `now` until the `k`-th (1-based) waiting delivery of a rate-limited key may
/// go: how a runner spaces out the ones it could not take, so they do not fill every claim.
/// At most a day: a tiny `per_second` (a 0.1.0 setting allowed any rate above 0) would put the
/// wait past what a timestamp holds, and every claim would fail on it.
pub fn wait_for(limit: &Limit, bucket: &Bucket, k: u32, now: f64) -> f64 {
    let paused = bucket.paused_until.map_or(0.0, |u| (u - now).max(0.0));
    let rated = match limit.per_second {
        Some(rate) if rate > 0.0 => ((f64::from(k) - bucket.tokens).max(0.0)) / rate,
        _ => 0.0,
    };
    paused.max(rated).min(MAX_WAIT_SECONDS)
}

/// Longest a claim defers a rate-limited delivery in one go.
const MAX_WAIT_SECONDS: f64 = 86_400.0;

/// The limits configured for `key`: an exact entry, else the longest matching `prefix*`.
pub fn limit_for(limits: &[(String, Limit)], key: &str) -> Option<Limit> {
    if let Some((_, l)) = limits.iter().find(|(k, _)| k == key) {
        return Some(*l);
    }
    limits
        .iter()
        .filter_map(|(k, l)| {
            k.strip_suffix('*')
                .filter(|p| key.starts_with(p))
                .map(|p| (p.len(), l))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, l)| *l)
}

/// Parse the `flowgate.flow_limits` setting: `{"<key or prefix*>": {"max_in_flight": n,
/// "per_second": r, "burst": b}}`. Returns the problem as text for a 22023.
pub fn parse_limits(v: &Value) -> Result<Vec<(String, Limit)>, String> {
    let Value::Object(m) = v else {
        return Err("a JSON object of flow key (or prefix*) to limits".into());
    };
    if m.len() > 1000 {
        return Err(format!("{} entries (at most 1000)", m.len()));
    }
    let mut out = Vec::with_capacity(m.len());
    for (key, spec) in m {
        if key.is_empty() || key.len() > 255 || key.chars().any(char::is_control) {
            return Err(format!(
                "flow key {:?} (1 to 255 visible characters)",
                key.chars().take(64).collect::<String>()
            ));
        }
        let Value::Object(spec) = spec else {
            return Err(format!("limits of {key:?} must be an object"));
        };
        out.push((key.clone(), parse_limit(key, spec)?));
    }
    Ok(out)
}

fn parse_limit(key: &str, spec: &Map<String, Value>) -> Result<Limit, String> {
    for k in spec.keys() {
        if !matches!(k.as_str(), "max_in_flight" | "per_second" | "burst") {
            return Err(format!(
                "{key:?}: unknown limit {k:?} (max_in_flight, per_second, burst)"
            ));
        }
    }
    let max_in_flight = match spec.get("max_in_flight") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=10_000) => Some(n as u32),
            _ => {
                return Err(format!(
                    "{key:?}: max_in_flight must be an integer from 1 to 10000"
                ))
            }
        },
    };
    let per_second = match spec.get("per_second") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(r) if r > 0.0 && r <= 100_000.0 => Some(r),
            _ => {
                return Err(format!(
                    "{key:?}: per_second must be a number above 0, at most 100000"
                ))
            }
        },
    };
    let burst = match spec.get("burst") {
        None | Some(Value::Null) => per_second.map_or(1.0, |r| r.max(1.0)),
        Some(v) => match v.as_f64() {
            Some(b) if (1.0..=100_000.0).contains(&b) => b,
            _ => return Err(format!("{key:?}: burst must be a number from 1 to 100000")),
        },
    };
    if max_in_flight.is_none() && per_second.is_none() {
        return Err(format!("{key:?}: give max_in_flight, per_second or both"));
    }
    Ok(Limit {
        max_in_flight,
        per_second,
        burst,
    })
}

/// The default flow key of a URL: its host and port, lower-case (`api.slack.com`,
/// `127.0.0.1:5597`).
pub fn host_key(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host.to_ascii_lowercase()
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn a_tiny_rate_defers_at_most_a_day() {
        let l = Limit {
            max_in_flight: None,
            per_second: Some(1e-13),
            burst: 1.0,
        };
        let b = Bucket {
            tokens: 0.0,
            refilled_at: 0.0,
            paused_until: None,
        };
        assert_eq!(wait_for(&l, &b, 2, 0.0), MAX_WAIT_SECONDS);
    }
    use proptest::prelude::*;
    use serde_json::json;

    fn rate(per_second: f64, burst: f64) -> Limit {
        Limit {
            max_in_flight: None,
            per_second: Some(per_second),
            burst,
        }
    }

    #[test]
    fn a_key_without_limits_or_pause_is_unlimited() {
        assert_eq!(allowance(None, None, 1000, 0.0).0, u32::MAX);
    }

    #[test]
    fn a_pause_stops_every_delivery_of_the_key_until_it_ends() {
        let b = Bucket {
            tokens: 0.0,
            refilled_at: 0.0,
            paused_until: Some(30.0),
        };
        assert_eq!(allowance(None, Some(b), 0, 29.9).0, 0);
        assert_eq!(allowance(None, Some(b), 0, 30.0).0, u32::MAX);
        assert_eq!(wait_for(&rate(1.0, 1.0), &b, 1, 10.0), 20.0);
    }

    #[test]
    fn in_flight_counts_against_the_cap() {
        let l = Limit {
            max_in_flight: Some(4),
            per_second: None,
            burst: 1.0,
        };
        assert_eq!(allowance(Some(&l), None, 0, 0.0).0, 4);
        assert_eq!(allowance(Some(&l), None, 3, 0.0).0, 1);
        assert_eq!(allowance(Some(&l), None, 9, 0.0).0, 0);
    }

    #[test]
    fn slack_one_per_second_per_channel() {
        let l = rate(1.0, 1.0);
        let (n, b) = allowance(Some(&l), None, 0, 100.0);
        assert_eq!(n, 1);
        let b = take(b.unwrap(), n);
        assert_eq!(allowance(Some(&l), Some(b), 0, 100.5).0, 0);
        assert_eq!(allowance(Some(&l), Some(b), 0, 101.0).0, 1);
        assert_eq!(
            wait_for(&l, &b, 3, 100.0),
            3.0,
            "the third waiting message goes in 3 s"
        );
    }

    #[test]
    fn limits_match_exactly_then_by_the_longest_prefix() {
        let limits = parse_limits(&json!({
            "slack:*": {"per_second": 1},
            "slack:C1*": {"per_second": 5},
            "api.supabase.com": {"max_in_flight": 4, "per_second": 2, "burst": 10}
        }))
        .unwrap();
        assert_eq!(
            limit_for(&limits, "slack:C9").unwrap().per_second,
            Some(1.0)
        );
        assert_eq!(
            limit_for(&limits, "slack:C12").unwrap().per_second,
            Some(5.0)
        );
        assert_eq!(
            limit_for(&limits, "api.supabase.com")
                .unwrap()
                .max_in_flight,
            Some(4)
        );
        assert!(limit_for(&limits, "example.com").is_none());
    }

    #[test]
    fn bad_limits_are_refused() {
        for bad in [
            json!([]),
            json!({"k": 1}),
            json!({"k": {}}),
            json!({"k": {"per_second": 0}}),
            json!({"k": {"per_second": -1}}),
            json!({"k": {"max_in_flight": 0}}),
            json!({"k": {"max_in_flight": 1.5}}),
            json!({"k": {"burst": 0.5, "per_second": 1}}),
            json!({"k": {"rate": 1}}),
            json!({"": {"per_second": 1}}),
        ] {
            assert!(parse_limits(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_keys() {
        assert_eq!(
            host_key("https://Slack.com/api/chat.postMessage"),
            "slack.com"
        );
        assert_eq!(host_key("http://127.0.0.1:5597/ok?x=1"), "127.0.0.1:5597");
        assert_eq!(host_key("https://api.supabase.com"), "api.supabase.com");
    }

    proptest! {
        /// Over any sequence of claims, a rate-limited key never gets more than
        /// burst + rate × elapsed deliveries, and never more in flight than its cap.
        #[test]
        fn never_above_the_bucket_or_the_cap(
            per_second in 0.1f64..50.0,
            burst in 1.0f64..20.0,
            cap in 1u32..50,
            steps in proptest::collection::vec((0.0f64..2.0, 0u32..100, 0u32..60), 1..60),
        ) {
            let l = Limit { max_in_flight: Some(cap), per_second: Some(per_second), burst };
            let mut bucket = None;
            let mut now = 0.0;
            let mut taken = 0f64;
            for (dt, want, in_flight) in steps {
                now += dt;
                let (n, b) = allowance(Some(&l), bucket, in_flight, now);
                let n = n.min(want);
                prop_assert!(n <= cap.saturating_sub(in_flight));
                bucket = b.map(|b| take(b, n));
                taken += f64::from(n);
                prop_assert!(taken <= burst.max(1.0) + per_second * now + 1e-6,
                    "{} taken by {} s at {}/s, burst {}", taken, now, per_second, burst);
                prop_assert!(bucket.unwrap().tokens >= -1e-9);
            }
        }
    }
}
