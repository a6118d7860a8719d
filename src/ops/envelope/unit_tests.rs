use super::*;
use crate::ops::gates::GateCode;
use proptest::prelude::*;
use serde_json::json;

const RELEASE: &str = "4f1c2a9e-8d3b-4c55-9a7e-0b6d2f1e3c4a";

fn build() -> Value {
    json!({
        "schema_version": "1.0",
        "idempotency_key": "github_actions/123/build_complete",
        "event_type": "build_complete",
        "source_system": "github_actions",
        "release_id": RELEASE,
        "status": "pass",
        "run_id": 123
    })
}

fn parse(v: &Value) -> (Header, OpsResult<Envelope>) {
    super::parse(v, v.to_string().len())
}

fn rejected(v: Value) -> (u16, String) {
    let e = parse(&v).1.unwrap_err();
    (e.http_status(), e.to_string())
}

#[test]
fn a_build_event_is_read_with_defaults() {
    let (h, e) = parse(&build());
    let e = e.unwrap();
    assert_eq!(
        h.idempotency_key.as_deref(),
        Some("github_actions/123/build_complete")
    );
    assert_eq!(e.event_type, EventType::BuildComplete);
    assert_eq!(
        e.body,
        Body::Release {
            release_id: RELEASE.into(),
            event: OnRelease::Check(CheckReport {
                gate: GateCode::G1,
                check_name: "build".into(),
                status: "pass".into(),
                required: true,
                run_id: Some("123".into()),
                details_url: None,
            })
        }
    );
}

#[test]
fn keys_are_kept_whole_or_not_at_all() {
    let long = format!("{}é", "k".repeat(MAX_KEY_CHARS - 1));
    let mut v = build();
    v["idempotency_key"] = json!(long);
    let (h, e) = parse(&v);
    assert_eq!(h.idempotency_key.as_deref(), Some(long.as_str()));
    assert_eq!(e.unwrap().idempotency_key, long);
    let longer = format!("{long}x");
    v["idempotency_key"] = json!(longer);
    let (h, e) = parse(&v);
    assert_eq!(
        h.idempotency_key, None,
        "an over-long key is not logged cut"
    );
    assert_eq!(e.unwrap_err().http_status(), 400);
}

#[test]
fn an_unsupported_schema_version_is_422() {
    let mut v = build();
    v["schema_version"] = json!("2.0");
    assert_eq!(rejected(v).0, 422);
    let mut v = build();
    v.as_object_mut().unwrap().remove("schema_version");
    assert_eq!(rejected(v).0, 400);
    let mut v = build();
    v.as_object_mut().unwrap().remove("release_id");
    let (s, m) = rejected(v);
    assert_eq!((s, m.as_str()), (400, "missing field \"release_id\""));
    let mut v = build();
    v.as_object_mut().unwrap().remove("status");
    assert_eq!(rejected(v).1, "missing field \"status\"");
    let mut v = build();
    v["status"] = json!(true);
    assert_eq!(rejected(v).0, 400);
    let mut v = build();
    v["event_type"] = json!("build_completed");
    let (s, m) = rejected(v);
    assert_eq!(s, 400);
    assert!(m.contains("unknown event_type"), "{m}");
    let mut v = build();
    v["surprise"] = json!(1);
    let (s, m) = rejected(v);
    assert_eq!(s, 400);
    assert!(m.contains("unknown field `surprise`"), "{m}");
    let mut v = build();
    v["metadata"] = json!({"blob": "x".repeat(MAX_ENVELOPE_BYTES)});
    assert_eq!(rejected(v).0, 413);
    assert_eq!(rejected(json!([1, 2])).0, 400);
    let mut v = build();
    v["release_id"] = json!("'; DROP TABLE ops.releases; --");
    assert_eq!(rejected(v).0, 400);
}

#[test]
fn environment_events_need_no_release() {
    let v = json!({
        "schema_version": 1, "idempotency_key": "k", "event_type": "environment_event",
        "source_system": "sre-bot", "environment": "production", "event_kind": "config_change"
    });
    assert!(parse(&v).1.is_ok());
}

proptest! {
    /// Any JSON at all is either accepted or rejected with a 4xx; parsing never panics.
    #[test]
    fn arbitrary_json_is_rejected_cleanly(s in "\\PC{0,200}", key in "[a-z_]{1,20}") {
        let mut v = build();
        v[key.as_str()] = json!(s);
        if let Err(e) = parse(&v).1 {
            prop_assert!((400..500).contains(&e.http_status()));
        }
    }

    /// Idempotency keys with control characters are never accepted.
    #[test]
    fn control_characters_in_keys_are_rejected(prefix in "[a-z]{0,5}", c in 0u8..32) {
        let mut v = build();
        v["idempotency_key"] = json!(format!("{prefix}{}x", c as char));
        prop_assert_eq!(parse(&v).1.unwrap_err().http_status(), 400);
    }
}

/// Times are RFC 3339, within what a timestamptz takes: a year from 1, an offset up to 15:59.
#[test]
fn times_are_ones_postgres_can_store() {
    for ok in [
        "2026-11-30T12:00:00Z",
        "0001-01-01T00:00:00+15:59",
        "2026-01-01T00:00:00-15:59",
        "9999-12-31T23:59:59.999999Z",
        "2026-12-31T23:59:60Z",
        "2026-11-30T12:00:00.123456789+15:59",
    ] {
        assert!(check_timestamp("occurred_at", ok).is_ok(), "{ok}");
    }
    // chrono reads any number of fraction digits; Postgres refuses a time over ~150 characters.
    let long = format!("2026-12-01T00:00:00.{}Z", "1".repeat(200));
    let e = check_timestamp("expires_at", &long).unwrap_err();
    assert_eq!(e.http_status(), 400);
    assert!(e.to_string().len() < 300, "{e}");
    for bad in [
        "0000-06-01T00:00:00Z",
        "2026-06-01T00:00:00+20:00",
        "2026-06-01T00:00:00-16:00",
        "yesterday",
        "2026-06-01T00:00:00",
        "2026-12-31T23:59:60.5Z",
    ] {
        let e = check_timestamp("occurred_at", bad).unwrap_err();
        assert_eq!(e.http_status(), 400, "{bad}");
    }
}
