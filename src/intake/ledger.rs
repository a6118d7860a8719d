//! The ledger's input (`intake.finalize_transaction(payload)`), checked before anything is
//! written. Pure.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::core::actor::validate_actor_id;
use crate::core::error::{CoreError, CoreResult};
use crate::intake::pool::PoolId;

/// Largest payload accepted, as JSON text.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Key {
    Text(String),
    Number(i64),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    idempotency_key: Key,
    pool_id: String,
    resource_id: String,
    user_id: String,
    #[serde(default)]
    slot: Option<i32>,
    #[serde(default)]
    msg_id: Option<i64>,
    #[serde(default)]
    validation: Option<Value>,
    #[serde(default)]
    details: Option<Map<String, Value>>,
}

/// A checked ledger entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub idempotency_key: String,
    pub pool_id: String,
    pub resource_id: String,
    pub user_id: String,
    pub slot: Option<i32>,
    pub msg_id: Option<i64>,
    pub validation: Option<Value>,
    pub details: Map<String, Value>,
}

const FIELDS: &str = "idempotency_key (text or integer), pool_id, resource_id (uuid), user_id, and optionally slot, msg_id, validation, details (object)";

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Parse and check a payload.
pub fn parse(payload: &Value) -> CoreResult<Entry> {
    let size = payload.to_string().len();
    if size > MAX_PAYLOAD_BYTES {
        return Err(CoreError::invalid(
            "payload",
            format!("it is {size} bytes of JSON"),
            format!("at most {MAX_PAYLOAD_BYTES} bytes"),
        ));
    }
    if !payload.is_object() {
        return Err(CoreError::invalid(
            "payload",
            format!(
                "it is not a JSON object: {}",
                truncate(&payload.to_string())
            ),
            FIELDS,
        ));
    }
    let raw: Raw = serde_json::from_value(payload.clone())
        .map_err(|e| CoreError::invalid("payload", crate::core::error::json_problem(&e), FIELDS))?;
    let key = match raw.idempotency_key {
        Key::Text(s) => s,
        Key::Number(n) => n.to_string(),
    };
    if key.is_empty() || key.len() > 200 || key.chars().any(char::is_control) {
        return Err(CoreError::invalid(
            "idempotency_key",
            crate::core::error::quoted_upto(&key, 80),
            "1 to 200 bytes without control characters",
        ));
    }
    let pool = PoolId::parse(&raw.pool_id)?;
    if !is_uuid(&raw.resource_id) {
        return Err(CoreError::invalid(
            "resource_id",
            crate::core::error::quoted_upto(&raw.resource_id, 80),
            "a UUID such as 0b9e4c1a-6f0e-4d8e-9b43-2f1c3a5d7e90",
        ));
    }
    validate_actor_id("user_id", &raw.user_id)?;
    Ok(Entry {
        idempotency_key: key,
        pool_id: pool.as_str().to_string(),
        resource_id: raw.resource_id.to_ascii_lowercase(),
        user_id: raw.user_id,
        slot: raw.slot,
        msg_id: raw.msg_id,
        validation: raw.validation.filter(|v| !v.is_null()),
        details: raw.details.unwrap_or_default(),
    })
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= 80 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(80).collect::<String>())
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use crate::core::error::SqlError;
    use serde_json::json;

    fn good() -> Value {
        json!({"idempotency_key": "drop:42", "pool_id": "drop", "resource_id": "0B9E4C1A-6F0E-4D8E-9B43-2F1C3A5D7E90",
               "user_id": "user-1", "slot": 3, "msg_id": 42, "validation": {"payment": "pi_1"}})
    }

    #[test]
    fn accepts_the_drain_payload() {
        let e = parse(&good()).unwrap();
        assert_eq!(e.idempotency_key, "drop:42");
        assert_eq!(e.resource_id, "0b9e4c1a-6f0e-4d8e-9b43-2f1c3a5d7e90");
        assert_eq!(e.slot, Some(3));
        let mut numeric = good();
        numeric["idempotency_key"] = json!(42);
        assert_eq!(parse(&numeric).unwrap().idempotency_key, "42");
    }

    #[test]
    fn rejects_bad_payloads_with_22023() {
        let mut cases: Vec<Value> = vec![json!([]), json!("x"), json!(null), json!({})];
        for (k, v) in [
            ("idempotency_key", json!("")),
            ("idempotency_key", json!(true)),
            ("idempotency_key", json!("k".repeat(201))),
            ("pool_id", json!("Bad Pool")),
            ("pool_id", json!("x'; drop table t; --")),
            ("resource_id", json!("not-a-uuid")),
            ("resource_id", json!(7)),
            ("user_id", json!("")),
            ("user_id", json!("a\u{0}b")),
            ("slot", json!("three")),
            ("details", json!([1])),
            ("surprise", json!(1)),
        ] {
            let mut p = good();
            p[k] = v;
            cases.push(p);
        }
        let mut missing = good();
        missing.as_object_mut().unwrap().remove("user_id");
        cases.push(missing);
        let mut huge = good();
        huge["details"] = json!({"blob": "x".repeat(MAX_PAYLOAD_BYTES)});
        cases.push(huge);
        for c in cases {
            let err = parse(&c).unwrap_err();
            assert_eq!(err.sqlstate(), "22023", "{c}");
        }
    }
}
