//! Actor identity: who is acting, taken from the session, never from arguments.
//!
//! PostgREST (and Supabase) put the verified JWT into the transaction-local setting
//! `request.jwt.claims` (older PostgREST versions: one setting per claim, such as
//! `request.jwt.claim.sub`) and switch to the JWT's role with `SET LOCAL ROLE`. The actor is the
//! JWT subject when there is one, else the current database role. Only *trusted* sessions may
//! act on behalf of someone else; trust comes from real role membership (superuser, or a member
//! of a role listed in the `flowgate.trusted_roles` setting), not from a claim, because any
//! session can write `request.jwt.claims` itself.
//!
//! This file is pure: the session facts are read by `session.rs` and passed in.

use serde::Serialize;

use super::error::{CoreError, CoreResult};

/// Longest actor id accepted; JWT subjects are UUIDs, Slack ids are ~11 characters.
pub const MAX_ACTOR_ID_LEN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorSource {
    /// The `sub` claim of the PostgREST/Supabase JWT.
    Jwt,
    /// The current database role (psql, pg_cron, a service without a JWT).
    Session,
    /// A trusted session named another actor (for example a Slack bot passing the Slack user).
    OnBehalf,
    /// flowgate itself (timers, automatic approvals).
    System,
}

impl ActorSource {
    /// The `actor_type` recorded on events.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorSource::Jwt => "user",
            ActorSource::Session => "role",
            ActorSource::OnBehalf => "delegated",
            ActorSource::System => "system",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    /// The identity recorded on events and compared in permission checks.
    pub id: String,
    /// The JWT `role` claim when present, else the database role.
    pub role: String,
    pub source: ActorSource,
    /// Whether the session may act on behalf of others and call operator functions.
    pub trusted: bool,
    /// For `OnBehalf`: the session identity that vouched for `id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegated_by: Option<String>,
}

impl Actor {
    /// flowgate's own identity, used by timers and automatic decisions.
    pub fn system() -> Actor {
        Actor {
            id: "system".into(),
            role: "system".into(),
            source: ActorSource::System,
            trusted: true,
            delegated_by: None,
        }
    }

    pub fn actor_type(&self) -> &'static str {
        self.source.as_str()
    }
}

/// What the session says about itself, read from Postgres by the caller.
#[derive(Debug, Clone, Default)]
pub struct SessionFacts<'a> {
    /// `current_setting('request.jwt.claims', true)`: absent, empty, or a JSON object.
    pub claims: Option<&'a str>,
    /// `current_setting('request.jwt.claim.sub', true)` (PostgREST < 10).
    pub legacy_sub: Option<&'a str>,
    /// `current_setting('request.jwt.claim.role', true)` (PostgREST < 10).
    pub legacy_role: Option<&'a str>,
    /// `current_user`.
    pub current_user: &'a str,
    pub trusted: bool,
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

/// Check an actor id from any source: non-empty, bounded, printable.
pub fn validate_actor_id(what: &str, id: &str) -> CoreResult<()> {
    let allowed = format!("1 to {MAX_ACTOR_ID_LEN} printable characters");
    if id.trim().is_empty() {
        return Err(CoreError::invalid(what, "it is empty", allowed));
    }
    if id.chars().count() > MAX_ACTOR_ID_LEN {
        return Err(CoreError::invalid(
            what,
            format!("it is {} characters long", id.chars().count()),
            allowed,
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(CoreError::invalid(
            what,
            "it contains control characters",
            allowed,
        ));
    }
    Ok(())
}

/// Resolve the acting identity of a session.
pub fn resolve(facts: &SessionFacts<'_>) -> CoreResult<Actor> {
    let mut sub: Option<String> = None;
    let mut role: Option<String> = None;

    if let Some(raw) = non_empty(facts.claims) {
        let value: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| CoreError::InvalidJson {
                what: "request.jwt.claims".into(),
                problem: e.to_string(),
            })?;
        let obj = value.as_object().ok_or_else(|| CoreError::InvalidJson {
            what: "request.jwt.claims".into(),
            problem: "expected a JSON object of claims".into(),
        })?;
        match obj.get("sub") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => {}
            Some(serde_json::Value::String(s)) => sub = Some(s.clone()),
            Some(other) => {
                return Err(CoreError::invalid(
                    "JWT claim \"sub\"",
                    format!("it is a JSON {}", json_kind(other)),
                    "a string (RFC 7519 §4.1.2)",
                ))
            }
        }
        if let Some(serde_json::Value::String(r)) = obj.get("role") {
            if !r.trim().is_empty() {
                role = Some(r.clone());
            }
        }
    }
    if sub.is_none() {
        sub = non_empty(facts.legacy_sub).map(str::to_owned);
    }
    if role.is_none() {
        role = non_empty(facts.legacy_role).map(str::to_owned);
    }

    let role = role.unwrap_or_else(|| facts.current_user.to_owned());
    let actor = match sub {
        Some(id) => {
            validate_actor_id("JWT claim \"sub\"", &id)?;
            Actor {
                id,
                role,
                source: ActorSource::Jwt,
                trusted: facts.trusted,
                delegated_by: None,
            }
        }
        None => Actor {
            id: facts.current_user.to_owned(),
            role,
            source: ActorSource::Session,
            trusted: facts.trusted,
            delegated_by: None,
        },
    };
    Ok(actor)
}

/// The actor a call runs as when the caller names `on_behalf_of`.
///
/// Naming yourself is always allowed; naming someone else needs a trusted session.
pub fn act_on_behalf(session: Actor, on_behalf_of: Option<&str>) -> CoreResult<Actor> {
    let Some(other) = on_behalf_of else {
        return Ok(session);
    };
    validate_actor_id("on_behalf_of", other)?;
    if other == session.id {
        return Ok(session);
    }
    if !session.trusted {
        return Err(CoreError::PermissionDenied {
            actor: session.id,
            action: format!("act on behalf of {other:?}"),
            allowed: "only trusted sessions (superuser, or members of a role in the flowgate.trusted_roles setting) may name another actor; omit on_behalf_of to act as yourself".into(),
        });
    }
    Ok(Actor {
        id: other.to_owned(),
        role: session.role,
        source: ActorSource::OnBehalf,
        trusted: false,
        delegated_by: Some(session.id),
    })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    pub(super) fn facts<'a>(claims: Option<&'a str>, user: &'a str) -> SessionFacts<'a> {
        SessionFacts {
            claims,
            current_user: user,
            ..Default::default()
        }
    }

    #[test]
    fn jwt_subject_wins_over_the_role() {
        let a = resolve(&facts(
            Some(r#"{"sub":"0b6e-uuid","role":"authenticated"}"#),
            "authenticated",
        ))
        .unwrap();
        assert_eq!(a.id, "0b6e-uuid");
        assert_eq!(a.role, "authenticated");
        assert_eq!(a.source, ActorSource::Jwt);
        assert_eq!(a.actor_type(), "user");
    }

    #[test]
    fn no_claims_or_empty_claims_fall_back_to_current_user() {
        for claims in [
            None,
            Some(""),
            Some("   "),
            Some("{}"),
            Some(r#"{"role":"anon"}"#),
            Some(r#"{"sub":""}"#),
        ] {
            let a = resolve(&facts(claims, "alice")).unwrap();
            assert_eq!(a.id, "alice", "{claims:?}");
            assert_eq!(a.source, ActorSource::Session);
        }
        let anon = resolve(&facts(Some(r#"{"role":"anon"}"#), "anon")).unwrap();
        assert_eq!(anon.role, "anon");
    }

    #[test]
    fn legacy_per_claim_settings_are_read() {
        let f = SessionFacts {
            claims: None,
            legacy_sub: Some("u-legacy"),
            legacy_role: Some("authenticated"),
            current_user: "authenticator",
            trusted: false,
        };
        let a = resolve(&f).unwrap();
        assert_eq!(
            (a.id.as_str(), a.role.as_str(), a.source),
            ("u-legacy", "authenticated", ActorSource::Jwt)
        );
    }

    #[test]
    fn malformed_claims_are_rejected_with_json_or_argument_errors() {
        assert_eq!(
            resolve(&facts(Some("{not json"), "u"))
                .unwrap_err()
                .sqlstate(),
            "22P02"
        );
        assert_eq!(
            resolve(&facts(Some("[1,2]"), "u")).unwrap_err().sqlstate(),
            "22P02"
        );
        assert_eq!(
            resolve(&facts(Some(r#"{"sub":42}"#), "u"))
                .unwrap_err()
                .sqlstate(),
            "22023"
        );
        let long = format!(r#"{{"sub":"{}"}}"#, "x".repeat(MAX_ACTOR_ID_LEN + 1));
        assert_eq!(
            resolve(&facts(Some(&long), "u")).unwrap_err().sqlstate(),
            "22023"
        );
        assert_eq!(
            resolve(&facts(Some("{\"sub\":\"a\\nb\"}"), "u"))
                .unwrap_err()
                .sqlstate(),
            "22023"
        );
    }

    #[test]
    fn only_trusted_sessions_act_on_behalf_of_others() {
        let user = resolve(&facts(Some(r#"{"sub":"u1"}"#), "authenticated")).unwrap();
        assert_eq!(act_on_behalf(user.clone(), None).unwrap(), user);
        assert_eq!(act_on_behalf(user.clone(), Some("u1")).unwrap(), user);
        let err = act_on_behalf(user, Some("u2")).unwrap_err();
        assert_eq!(err.sqlstate(), "42501");

        let bot = SessionFacts {
            current_user: "service_role",
            trusted: true,
            ..Default::default()
        };
        let bot = resolve(&bot).unwrap();
        let slack_user = act_on_behalf(bot, Some("U024BE7LH")).unwrap();
        assert_eq!(slack_user.id, "U024BE7LH");
        assert_eq!(slack_user.source, ActorSource::OnBehalf);
        assert_eq!(slack_user.delegated_by.as_deref(), Some("service_role"));
        assert!(!slack_user.trusted, "delegated actors do not inherit trust");
    }

    #[test]
    fn system_actor_is_trusted_and_typed() {
        let s = Actor::system();
        assert!(s.trusted);
        assert_eq!(s.actor_type(), "system");
    }

    mod props {
        use super::super::unit_tests::facts;
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever lands in request.jwt.claims, resolution never panics, and a successful
            /// resolution always yields a valid, non-empty actor id.
            #[test]
            fn resolution_is_total(claims in ".{0,64}", user in "[a-z_]{1,12}") {
                if let Ok(a) = resolve(&facts(Some(&claims), &user)) {
                    prop_assert!(validate_actor_id("id", &a.id).is_ok() || a.id == user);
                }
            }

            #[test]
            fn any_string_sub_is_the_actor(sub in "[[:print:]]{1,40}") {
                prop_assume!(!sub.trim().is_empty());
                let claims = serde_json::json!({"sub": sub, "role": "authenticated"}).to_string();
                let a = resolve(&facts(Some(&claims), "authenticated")).unwrap();
                prop_assert_eq!(a.id, sub);
            }
        }
    }
}
