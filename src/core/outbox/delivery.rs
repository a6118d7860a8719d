//! What a module asks the outbox to send, checked before it is stored. Pure.

use serde_json::{Map, Value};

use crate::core::error::{CoreError, CoreResult};

pub const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Headers the HTTP client sets from the request itself (its target, its body's framing, the
/// connection): one given by a caller would misdirect or corrupt the request.
const TRANSPORT_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
];

/// Headers that carry credentials: they must come from a secret reference, never a row.
const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "apikey",
];

/// `auth_header` value that sends the secret as Supabase's API gateway wants a project key:
/// `apikey: <secret>`, plus `Authorization: Bearer <secret>` unless it is a new-style `sb_` key.
pub const SUPABASE_AUTH: &str = "Supabase";

/// A request to enqueue. `auth_secret` names a secret resolved at send time (Vault, else
/// `flowgate.secrets`) and sent as `<auth_header>: <auth_scheme> <secret>` (or, with
/// `auth_header` [`SUPABASE_AUTH`], as Supabase's gateway wants it).
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    pub owner_module: String,
    pub owner_id: String,
    /// Response handler (`module.name`) run when the delivery is delivered, fails or dies.
    pub handler: Option<String>,
    pub method: String,
    pub url: String,
    pub headers: Map<String, Value>,
    pub auth_secret: Option<String>,
    pub auth_header: String,
    pub auth_scheme: String,
    pub body: Option<Value>,
    pub idempotency_key: String,
    pub max_attempts: Option<i32>,
    pub timeout_ms: Option<i32>,
    /// Enqueue without a due time (`next_attempt_at = 'infinity'`) until its owner releases it
    /// (e.g. a Slack thread reply waiting for the root message's ts).
    pub parked: bool,
    /// The Idempotency-Key header, when it differs from `idempotency_key`: several rows that
    /// are attempts of one logical request (paced by their owner) share it.
    pub wire_key: Option<String>,
    /// The request or response carries secrets: the response body is handed to the handler but
    /// never stored, and the request body is redacted once the delivery ends.
    pub sensitive: bool,
    /// The destination it shares flow limits with (`core::outbox::flow`); `None`: the URL's
    /// host and port.
    pub flow_key: Option<String>,
    /// Top-level fields of the JSON body that are secrets (a database password), each with the
    /// name of the secret that holds it (Supabase Vault, else `flowgate.secrets`, as for
    /// `auth_secret`): set in the body when the request is built, never stored with the row.
    pub body_secrets: Vec<(String, String)>,
}

impl NewDelivery {
    /// The flow key it is enqueued with.
    pub fn effective_flow_key(&self) -> String {
        self.flow_key
            .clone()
            .unwrap_or_else(|| super::flow::host_key(&self.url))
    }
}

impl NewDelivery {
    /// A JSON POST with no auth, no handler and default limits.
    pub fn post_json(
        owner_module: &str,
        owner_id: &str,
        url: &str,
        body: Value,
        idempotency_key: &str,
    ) -> Self {
        NewDelivery {
            owner_module: owner_module.into(),
            owner_id: owner_id.into(),
            handler: None,
            method: "POST".into(),
            url: url.into(),
            headers: Map::new(),
            auth_secret: None,
            auth_header: "Authorization".into(),
            auth_scheme: "Bearer".into(),
            body: Some(body),
            idempotency_key: idempotency_key.into(),
            max_attempts: None,
            timeout_ms: None,
            parked: false,
            wire_key: None,
            sensitive: false,
            flow_key: None,
            body_secrets: Vec::new(),
        }
    }
}

/// Most secret fields in one body.
pub const MAX_BODY_SECRETS: usize = 8;

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub fn is_secret_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Check a URL: http(s), a host, no credentials in it.
pub fn validate_url(url: &str) -> CoreResult<()> {
    let bad = |p: &str| {
        CoreError::invalid(
            "url",
            p.to_string(),
            "an http:// or https:// URL with a host and no user:password@",
        )
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| bad("it is not an http(s) URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(bad("it has no host"));
    }
    if authority.contains('@') {
        return Err(bad("it carries credentials; reference a secret instead"));
    }
    if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it is longer than 2048 bytes or contains whitespace"));
    }
    Ok(())
}

/// Validate everything a caller controls before the row is written (the handler name is
/// checked against the registry by `store::enqueue`).
pub fn validate(d: &NewDelivery) -> CoreResult<()> {
    let ident = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    if !ident(&d.owner_module) {
        return Err(CoreError::invalid(
            "owner_module",
            format!("{:?}", d.owner_module),
            "a module name such as capacity or intake",
        ));
    }
    if let Some(k) = &d.flow_key {
        if k.is_empty() || k.len() > 255 || k.chars().any(char::is_control) {
            return Err(CoreError::invalid(
                "flow_key",
                format!("{:?}", k.chars().take(64).collect::<String>()),
                "1 to 255 visible characters, e.g. slack:C123 or api.example.com",
            ));
        }
    }
    if d.owner_id.is_empty() || d.owner_id.len() > 256 {
        return Err(CoreError::invalid(
            "owner_id",
            "it is empty or longer than 256 bytes",
            "1 to 256 bytes",
        ));
    }
    if !METHODS.contains(&d.method.as_str()) {
        return Err(CoreError::invalid(
            "method",
            format!("{:?}", d.method),
            METHODS.join(", "),
        ));
    }
    validate_url(&d.url)?;
    for (name, value) in &d.headers {
        if !is_token(name) {
            return Err(CoreError::invalid(
                "header name",
                format!("{name:?}"),
                "an HTTP token (letters, digits, !#$%&'*+-.^_`|~)",
            ));
        }
        if TRANSPORT_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(CoreError::invalid(
                "headers",
                format!("{name} is set by the HTTP client from the request itself"),
                "headers other than Host, Content-Length, Transfer-Encoding, Connection, Keep-Alive, Upgrade, TE, Trailer and Expect",
            ));
        }
        if CREDENTIAL_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(CoreError::invalid(
                "headers",
                format!("{name} carries credentials and would be stored in plain text"),
                "pass auth_secret (the name of a secret in Vault or flowgate.secrets) instead",
            ));
        }
        match value {
            // What a header field value may hold (RFC 9110 5.5): visible characters, spaces
            // and tabs, no other control character.
            Value::String(v) if !v.chars().any(|c| c.is_control() && c != '\t') => {}
            _ => {
                return Err(CoreError::invalid(
                    "header value",
                    format!("{name} is not a string of visible characters, spaces and tabs"),
                    "a JSON string without line breaks or other control characters",
                ))
            }
        }
        if name.eq_ignore_ascii_case("idempotency-key") {
            return Err(CoreError::invalid(
                "headers",
                "Idempotency-Key is set by flowgate",
                "pass idempotency_key instead",
            ));
        }
    }
    if !d.body_secrets.is_empty() {
        if !matches!(d.body, Some(Value::Object(_))) || d.body_secrets.len() > MAX_BODY_SECRETS {
            return Err(CoreError::invalid(
                "body_secrets",
                "they need a JSON object body, and there are at most 8",
                "up to 8 top-level fields of a JSON object body",
            ));
        }
        for (field, name) in &d.body_secrets {
            if field.is_empty() || field.len() > 64 || !is_token(field) {
                return Err(CoreError::invalid(
                    "body_secrets",
                    "a field name is not a 1 to 64 character token",
                    "top-level field names of letters, digits and _ -",
                ));
            }
            if !is_secret_name(name) {
                return Err(CoreError::invalid(
                    "body_secrets",
                    format!("{name:?} is not a secret name"),
                    "a secret name: a letter, then letters, digits, _ . - (at most 128)",
                ));
            }
        }
    }
    if let Some(s) = &d.auth_secret {
        if !is_secret_name(s) {
            return Err(CoreError::invalid(
                "auth_secret",
                format!("{s:?}"),
                "a secret name: a letter, then letters, digits, _ . - (at most 128)",
            ));
        }
        if !is_token(&d.auth_header) {
            return Err(CoreError::invalid(
                "auth_header",
                format!("{:?}", d.auth_header),
                "an HTTP header name",
            ));
        }
        if !d.auth_scheme.is_empty() && !is_token(&d.auth_scheme) {
            return Err(CoreError::invalid(
                "auth_scheme",
                format!("{:?}", d.auth_scheme),
                "a scheme such as Bearer, or empty for the bare secret",
            ));
        }
    }
    let bad_key = |k: &str| k.is_empty() || k.len() > 255 || k.chars().any(char::is_control);
    if bad_key(&d.idempotency_key) || d.wire_key.as_deref().is_some_and(bad_key) {
        return Err(CoreError::invalid(
            "idempotency_key",
            "it is empty, too long or has control characters",
            "1 to 255 printable bytes",
        ));
    }
    if let Some(m) = d.max_attempts {
        if !(1..=100).contains(&m) {
            return Err(CoreError::invalid(
                "max_attempts",
                m.to_string(),
                "1 to 100",
            ));
        }
    }
    if let Some(t) = d.timeout_ms {
        if !(100..=300_000).contains(&t) {
            return Err(CoreError::invalid(
                "timeout_ms",
                t.to_string(),
                "100 to 300000",
            ));
        }
    }
    Ok(())
}

/// The header list sent on the wire: stored headers, the idempotency key, a JSON content
/// type when there is a body and none was given, and the resolved secret.
pub fn wire_headers(
    stored: &Map<String, Value>,
    idempotency_key: &str,
    has_body: bool,
    auth: Option<(&str, &str, &str)>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = stored
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
        .collect();
    if has_body
        && !out
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        out.push(("Content-Type".into(), "application/json".into()));
    }
    out.push(("Idempotency-Key".into(), idempotency_key.into()));
    if let Some((_, _, secret)) = auth.filter(|(h, _, _)| h.eq_ignore_ascii_case(SUPABASE_AUTH)) {
        // Supabase's API gateway: the key as `apikey`; a legacy (JWT) key also as the bearer
        // PostgREST takes the role from; a new `sb_` secret key never as a bearer (refused).
        out.push(("apikey".into(), secret.into()));
        if !secret.starts_with("sb_") {
            out.push(("Authorization".into(), format!("Bearer {secret}")));
        }
    } else if let Some((header, scheme, secret)) = auth {
        let value = if scheme.is_empty() {
            secret.to_string()
        } else {
            format!("{scheme} {secret}")
        };
        out.push((header.into(), value));
    }
    out
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use crate::core::error::SqlError;
    use serde_json::json;

    fn ok() -> NewDelivery {
        NewDelivery::post_json(
            "capacity",
            "CR-2026-000001",
            "https://slack.com/api/chat.postMessage",
            json!({"text": "hi"}),
            "cr:1:slack",
        )
    }

    #[test]
    fn body_secrets_name_secrets_of_an_object_body() {
        let mut d = ok();
        d.body_secrets = vec![("db_pass".into(), "provisioning.acme.db_pass".into())];
        assert!(validate(&d).is_ok());
        for (field, name) in [
            ("db pass", "provisioning.acme.db_pass"),
            ("", "x"),
            ("db_pass", "provisioning/acme/db_pass"),
            ("db_pass", "hunter2 is the password"),
        ] {
            let mut bad = ok();
            bad.body_secrets = vec![(field.into(), name.into())];
            assert_eq!(
                validate(&bad).unwrap_err().sqlstate(),
                "22023",
                "{field} {name}"
            );
        }
        let mut not_object = ok();
        not_object.body = Some(json!(["x"]));
        not_object.body_secrets = vec![("db_pass".into(), "s".into())];
        assert_eq!(validate(&not_object).unwrap_err().sqlstate(), "22023");
        let mut many = ok();
        many.body_secrets = (0..9).map(|i| (format!("f{i}"), "s".into())).collect();
        assert_eq!(validate(&many).unwrap_err().sqlstate(), "22023");
    }

    #[test]
    fn a_plain_delivery_is_valid() {
        assert!(validate(&ok()).is_ok());
    }

    #[test]
    fn bad_inputs_are_refused_with_22023() {
        type Mutation = Box<dyn Fn(&mut NewDelivery)>;
        let cases: Vec<Mutation> = vec![
            Box::new(|d| d.owner_module = "Capacity".into()),
            Box::new(|d| d.owner_id = String::new()),
            Box::new(|d| d.method = "TRACE".into()),
            Box::new(|d| d.url = "ftp://x".into()),
            Box::new(|d| d.url = "https://".into()),
            Box::new(|d| d.wire_key = Some(String::new())),
            Box::new(|d| d.wire_key = Some("k\nInjected: 1".into())),
            Box::new(|d| d.url = "https://user:pw@host/x".into()),
            Box::new(|d| d.url = "https://host/a b".into()),
            Box::new(|d| {
                d.headers.insert("Authorization".into(), json!("Bearer x"));
            }),
            Box::new(|d| {
                d.headers.insert("X-Api-Key".into(), json!("x"));
            }),
            Box::new(|d| {
                d.headers.insert("X-Ok".into(), json!("a\r\nInjected: 1"));
            }),
            Box::new(|d| {
                d.headers.insert("X-T".into(), json!("a\u{b}b"));
            }),
            Box::new(|d| {
                d.headers.insert("Content-Length".into(), json!("0"));
            }),
            Box::new(|d| {
                d.headers.insert("Host".into(), json!("metadata.internal"));
            }),
            Box::new(|d| {
                d.headers.insert("bad header".into(), json!("x"));
            }),
            Box::new(|d| {
                d.headers.insert("X-Num".into(), json!(1));
            }),
            Box::new(|d| {
                d.headers.insert("Idempotency-Key".into(), json!("mine"));
            }),
            Box::new(|d| d.auth_secret = Some("bad name!".into())),
            Box::new(|d| d.idempotency_key = String::new()),
            Box::new(|d| d.idempotency_key = "x".repeat(256)),
            Box::new(|d| d.max_attempts = Some(0)),
            Box::new(|d| d.timeout_ms = Some(5)),
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut d = ok();
            mutate(&mut d);
            let e = validate(&d).expect_err(&format!("case {i} should fail"));
            assert_eq!(e.sqlstate(), "22023", "case {i}: {e}");
            assert!(e.hint().is_some(), "case {i} says what is allowed");
        }
    }

    #[test]
    fn wire_headers_add_key_content_type_and_secret() {
        let mut stored = Map::new();
        stored.insert("X-Trace".into(), json!("t1"));
        let h = wire_headers(
            &stored,
            "k1",
            true,
            Some(("Authorization", "Bearer", "s3cr3t")),
        );
        assert_eq!(
            h,
            vec![
                ("X-Trace".to_string(), "t1".to_string()),
                ("Content-Type".to_string(), "application/json".to_string()),
                ("Idempotency-Key".to_string(), "k1".to_string()),
                ("Authorization".to_string(), "Bearer s3cr3t".to_string()),
            ]
        );
        let bare = wire_headers(&Map::new(), "k2", false, Some(("apikey", "", "s")));
        assert_eq!(
            bare.last().unwrap(),
            &("apikey".to_string(), "s".to_string())
        );
        assert_eq!(bare.len(), 2);
        // Supabase's gateway: apikey, and the bearer only for a legacy (JWT) key.
        let legacy = wire_headers(
            &Map::new(),
            "k3",
            false,
            Some((SUPABASE_AUTH, "", "eyJhbGc.x.y")),
        );
        assert_eq!(
            legacy[1..].to_vec(),
            vec![
                ("apikey".to_string(), "eyJhbGc.x.y".to_string()),
                (
                    "Authorization".to_string(),
                    "Bearer eyJhbGc.x.y".to_string()
                )
            ]
        );
        let new_key = wire_headers(
            &Map::new(),
            "k4",
            false,
            Some(("supabase", "", "sb_secret_abc")),
        );
        assert_eq!(
            new_key[1..].to_vec(),
            vec![("apikey".to_string(), "sb_secret_abc".to_string())]
        );
    }
}
