//! Property-based fuzzing of every parser a caller's input reaches before the database does:
//! envelopes, capacity payloads and customer references, the ledger payload, Slack forms,
//! commands and button values, settings values and JWT claims. Whatever the input (arbitrary
//! JSON of any shape and depth, arbitrary text), each parser answers, never panics, and every
//! refusal carries one of the SQLSTATEs (or ingest HTTP statuses) the README documents.

#[cfg(test)]
mod unit_tests {
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    use crate::core::args::parse_bounded;
    use crate::core::error::{CoreError, SqlError};

    const DOCUMENTED: &[&str] = &[
        "22023", "22P02", "P0002", "55000", "42501", "23505", "23514", "40001", "0A000",
    ];

    fn documented(e: &CoreError) -> bool {
        DOCUMENTED.contains(&e.sqlstate().as_str())
    }

    /// Any JSON value: scalars with hostile strings, arrays and objects up to 6 levels deep.
    fn any_json() -> impl Strategy<Value = Value> {
        let text = prop_oneof![
            "\\PC{0,40}",
            Just("'; DROP TABLE flowgate.settings; --".to_string()),
            Just("\u{feff}\u{202e}e\u{301}🙂\u{ffff}İ".to_string()),
            Just("<!channel> <@U123|x> &amp;".to_string()),
            "[a-z_]{1,12}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            text.prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,16}", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
            ]
        })
    }

    /// An envelope whose known fields are present but hold arbitrary values.
    fn envelope_like() -> impl Strategy<Value = Value> {
        (
            any_json(),
            any_json(),
            any_json(),
            prop::sample::select(crate::ops::envelope::EventType::NAMES.to_vec()),
        )
            .prop_map(|(a, b, c, event)| {
                json!({
                    "schema_version": "1.0", "idempotency_key": a, "event_type": event,
                    "source_system": "github_actions", "release_id": "4f1c2a9e-8d3b-4c55-9a7e-0b6d2f1e3c4a",
                    "status": b, "gate_code": "G1", "check_name": c, "run_id": 1,
                })
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn envelopes_of_any_shape_get_a_4xx_or_parse(v in prop_oneof![any_json(), envelope_like()]) {
            let size = v.to_string().len();
            let (_, result) = crate::ops::envelope::parse(&v, size);
            if let Err(e) = result {
                prop_assert!((400..500).contains(&e.http_status()), "{e} -> {}", e.http_status());
            }
        }

        #[test]
        fn capacity_inputs_are_checked_without_panicking(v in any_json()) {
            if let Err(e) = crate::capacity::flow::check_customer_ref(&v) {
                prop_assert!(documented(&e), "{e}");
            }
        }

        #[test]
        fn ledger_payloads_are_checked_without_panicking(v in any_json()) {
            if let Err(e) = crate::intake::ledger::parse(&v) {
                prop_assert!(documented(&e), "{e}");
            }
        }

        #[test]
        fn every_setting_refuses_bad_values_with_22023(v in any_json()) {
            for def in crate::core::settings::definitions() {
                if let Err(e) = crate::core::settings::validate(def.key, &v) {
                    prop_assert_eq!(e.sqlstate(), "22023", "{} {}", def.key, e);
                }
            }
        }

        #[test]
        fn json_text_of_any_depth_parses_or_is_refused(depth in 0usize..400, v in any_json()) {
            let text = format!("{}{}{}", "[".repeat(depth), v, "]".repeat(depth));
            match parse_bounded("v", &text) {
                Ok(parsed) => prop_assert!(depth <= crate::core::args::MAX_JSON_DEPTH, "{parsed}"),
                Err(e) => prop_assert!(documented(&e), "{e}"),
            }
        }

        #[test]
        fn arbitrary_text_never_breaks_a_text_parser(s in "\\PC{0,200}", raw in prop::collection::vec(any::<u8>(), 0..200)) {
            let lossy = String::from_utf8_lossy(&raw).into_owned();
            for t in [&s, &lossy] {
                if let Err(e) = parse_bounded("v", t) {
                    prop_assert!(documented(&e), "{e}");
                }
                if let Err(e) = crate::capacity::slack::parse_command(t) {
                    prop_assert!(documented(&e), "{e}");
                }
                if let Err(e) = crate::capacity::slack::parse_action_value(t) {
                    prop_assert!(documented(&e), "{e}");
                }
                let _ = crate::capacity::slack::form_field(t, "payload");
                prop_assert!(!crate::capacity::slack::escape(t).contains('<'));
                let facts = crate::core::actor::SessionFacts {
                    claims: Some(t),
                    current_user: "authenticated",
                    claims_count: true,
                    ..Default::default()
                };
                if let Err(e) = crate::core::actor::resolve(&facts) {
                    prop_assert!(documented(&e), "{e}");
                }
            }
        }
    }
}
