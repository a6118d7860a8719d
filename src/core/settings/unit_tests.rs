use super::*;
use crate::core::error::SqlError;
use serde_json::json;

#[test]
fn every_definition_is_well_formed_unique_and_has_a_valid_default() {
    let mut seen = std::collections::HashSet::new();
    for d in definitions() {
        assert!(is_well_formed_key(d.key), "{}", d.key);
        assert!(seen.insert(d.key), "duplicate key {}", d.key);
        let v: Value = serde_json::from_str(d.default).unwrap_or_else(|e| panic!("{}: {e}", d.key));
        validate(d.key, &v).unwrap_or_else(|e| panic!("{}: default rejected: {e}", d.key));
        assert!(!d.doc.is_empty());
    }
}

#[test]
fn unknown_keys_are_rejected_with_the_closest_known_key() {
    let e = validate("flowgate.nope", &json!(1)).unwrap_err();
    assert_eq!(e.sqlstate(), "22023");
    assert!(e.hint().unwrap().contains("flowgate.setting_definitions()"));
    let e = validate("flowgate.trusted_role", &json!([])).unwrap_err();
    assert!(
        e.hint()
            .unwrap()
            .contains("did you mean \"flowgate.trusted_roles\"?"),
        "{:?}",
        e.hint()
    );
    let e = validate("capacity.confirmation_ttl_busines_days", &json!(5)).unwrap_err();
    assert!(e
        .hint()
        .unwrap()
        .contains("capacity.confirmation_ttl_business_days"));
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    assert_eq!(
        validate_new("capacity.slack_channel", &json!("C\u{7}X"))
            .unwrap_err()
            .sqlstate(),
        "22023"
    );
    for (key, bad) in [
        ("capacity.slack_api_url", "slack.com/api"),
        ("capacity.linear_api_url", ""),
        ("capacity.slack_token_secret", "slack bot token"),
        ("capacity.slack_token_secret", ""),
    ] {
        assert_eq!(
            validate_new(key, &json!(bad)).unwrap_err().sqlstate(),
            "22023",
            "{key} = {bad:?}"
        );
    }
    assert!(validate_new("capacity.slack_api_url", &json!("https://slack.com/api")).is_ok());
    // The trigger's check lets a restore of an older backup load such a row.
    assert!(validate("capacity.slack_channel", &json!("C\u{7}X")).is_ok());
    assert_eq!(edit_distance("", "abc"), 3);
}

#[test]
fn schedules_are_checked_before_they_reach_pg_cron() {
    for ok in [
        "* * * * *",
        "17 * * * *",
        "*/5 0-6 1,15 * 1-5",
        "10 seconds",
        "1 second",
        "0 0 1 1 7",
        "0-30/10 * * * *",
        "5 seconds",
    ] {
        assert!(check_schedule(ok).is_ok(), "{ok}");
    }
    for bad in [
        "*/5 * * * * *",
        "every minute",
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * * 13 *",
        "* * * * 8",
        "*/0 * * * *",
        "5-1 * * * *",
        // pg_cron refuses a step on a single number, and a sign.
        "5/15 * * * *",
        "+5 * * * *",
        "* * * * +1",
        "+5 seconds",
        "0 seconds",
        "60 seconds",
        "",
        "; DROP TABLE x",
    ] {
        assert!(check_schedule(bad).is_err(), "{bad}");
    }
    let e = validate("flowgate.dispatch_schedule", &json!("*/5 * * * * *")).unwrap_err();
    assert_eq!(e.sqlstate(), "22023");
    assert!(e.to_string().contains("6 fields"), "{e}");
}

#[test]
fn values_are_checked_against_their_kind() {
    let ok = [
        ("fg_test.flag", json!(true)),
        ("fg_test.batch", json!(1)),
        ("fg_test.batch", json!(1000)),
        ("fg_test.label", json!("0123456789abcdef")),
        ("fg_test.mode", json!("manual")),
        ("flowgate.trusted_roles", json!([])),
        (
            "flowgate.trusted_roles",
            json!(["service_role", "ops admins"]),
        ),
    ];
    for (k, v) in ok {
        assert!(validate(k, &v).is_ok(), "{k} {v}");
    }
    let bad = [
        ("fg_test.flag", json!("true")),
        ("fg_test.batch", json!(0)),
        ("fg_test.batch", json!(1001)),
        ("fg_test.batch", json!(1.5)),
        ("fg_test.batch", json!("100")),
        ("fg_test.label", json!("0123456789abcdefg")),
        ("fg_test.mode", json!("AUTO")),
        ("fg_test.mode", Value::Null),
        ("flowgate.trusted_roles", json!("service_role")),
        ("flowgate.trusted_roles", json!([""])),
        ("flowgate.trusted_roles", json!([1])),
        ("flowgate.trusted_roles", json!(["x".repeat(64)])),
    ];
    for (k, v) in bad {
        let e = validate(k, &v).unwrap_err();
        assert_eq!(e.sqlstate(), "22023", "{k} {v}");
        assert!(e.hint().is_some(), "the hint says what is allowed");
    }
}

#[test]
fn typed_reads_fall_back_to_defaults_and_report_corruption() {
    let batch = definition("fg_test.batch").unwrap();
    assert_eq!(as_i64(batch, None).unwrap(), 100);
    assert_eq!(as_i64(batch, Some(json!(7))).unwrap(), 7);
    assert_eq!(
        as_i64(batch, Some(json!("7"))).unwrap_err().sqlstate(),
        "XX000"
    );
    let roles = definition("flowgate.trusted_roles").unwrap();
    assert_eq!(
        as_list(roles, None).unwrap(),
        vec!["service_role".to_string()]
    );
    assert!(as_bool(definition("fg_test.flag").unwrap(), None).is_ok());
    assert_eq!(
        as_text(definition("fg_test.mode").unwrap(), None).unwrap(),
        "auto"
    );
}

#[test]
fn key_shape() {
    for k in ["flowgate.x", "capacity.confirmation_ttl_days", "a1.b_2"] {
        assert!(is_well_formed_key(k), "{k}");
    }
    for k in [
        "",
        "flowgate",
        "Flowgate.x",
        "a.b.c",
        "a.",
        ".b",
        "a.b-c",
        "1a.b",
    ] {
        assert!(!is_well_formed_key(k), "{k}");
    }
}
