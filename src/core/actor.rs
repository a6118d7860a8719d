//! Actor identity: who is acting, taken from the session, never from arguments.
//!
//! PostgREST (and Supabase) put the verified JWT into the transaction-local setting
//! `request.jwt.claims` (older PostgREST versions: one setting per claim, such as
//! `request.jwt.claim.sub`) and switch to the JWT's role with `SET LOCAL ROLE`. Any session can
//! write those settings itself, so they are believed only when the session logged in as one of
//! the roles PostgREST logs in as (`flowgate.authenticator_roles`) or as a trusted role
//! (superuser, or a member of a role in `flowgate.trusted_roles`). Then the actor is the JWT
//! subject when there is one; in every other case it is the current database role. Only
//! *trusted* sessions may act on behalf of someone else; trust comes from real role membership
//! of the current role, never from a claim.
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
    /// A session whose believed JWT claims name no subject (a token without `sub`): its id is
    /// the role, which every such caller shares.
    #[serde(skip)]
    pub nameless: bool,
    /// A Supabase anonymous sign-in (`is_anonymous: true` in believed claims): a real subject,
    /// but one a script gets anew on every sign-in, so per-user limits would not hold. Treated
    /// as anonymous unless `flowgate.allow_anonymous_users` is on (the session resolver reads it).
    #[serde(skip)]
    pub anonymous_sign_in: bool,
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
            nameless: false,
            anonymous_sign_in: false,
        }
    }

    /// 42501 for an anonymous caller (`action` says what was refused): a session whose role is
    /// `anon`, or whose JWT names no subject, or a Supabase anonymous sign-in (see
    /// `anonymous_sign_in`), and that is not trusted. Every such caller would be
    /// the same actor, so a write in its name would be everyone's (the Supabase anon key has no
    /// subject; neither has a token minted for a role without one).
    pub fn refuse_anonymous(&self, action: &str) -> CoreResult<()> {
        let shared = self.source == ActorSource::Session && (self.role == "anon" || self.nameless);
        if !self.trusted && (shared || self.anonymous_sign_in) {
            return Err(CoreError::PermissionDenied {
                actor: self.id.clone(),
                action: action.into(),
                allowed: "signed-in users (a JWT with a sub claim, not an anonymous sign-in unless flowgate.allow_anonymous_users is on) and trusted sessions".into(),
            });
        }
        Ok(())
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
    /// The login (`session_user`) when it is not `current_user` and is not trusted: a login that
    /// switched to another role with `SET ROLE`. One login is one actor, whatever role it sets
    /// (a member of two personas could otherwise request an exception as one and approve it as
    /// the other); trusted logins act as the role they set. `None` otherwise.
    pub login: Option<&'a str>,
    pub trusted: bool,
    /// Whether the claims settings are believed: the session logged in as an authenticator
    /// role or as a trusted role. When false they are ignored and the actor is `current_user`.
    pub claims_count: bool,
}

impl SessionFacts<'_> {
    /// Whether the session carries any claim settings at all.
    pub fn has_claims(&self) -> bool {
        [self.claims, self.legacy_sub, self.legacy_role]
            .into_iter()
            .any(|c| non_empty(c).is_some())
    }
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
    let mut anonymous_sign_in = false;
    if !facts.claims_count {
        return Ok(Actor {
            id: facts.login.unwrap_or(facts.current_user).to_owned(),
            role: facts.current_user.to_owned(),
            source: ActorSource::Session,
            trusted: facts.trusted,
            delegated_by: None,
            nameless: false,
            anonymous_sign_in: false,
        });
    }

    if let Some(raw) = non_empty(facts.claims) {
        let value: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| CoreError::InvalidJson {
                what: "request.jwt.claims".into(),
                problem: super::error::json_problem(&e),
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
                    format!("it is a JSON {}", super::args::json_kind(other)),
                    "a string (RFC 7519 §4.1.2)",
                ))
            }
        }
        anonymous_sign_in = obj.get("is_anonymous") == Some(&serde_json::Value::Bool(true));
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
                nameless: false,
                anonymous_sign_in,
            }
        }
        None => Actor {
            id: facts.current_user.to_owned(),
            role,
            source: ActorSource::Session,
            trusted: facts.trusted,
            delegated_by: None,
            nameless: facts.has_claims(),
            anonymous_sign_in: false,
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
    if other == session.id {
        return Ok(session);
    }
    // Permission first: an untrusted caller learns nothing about what it sent.
    if !session.trusted {
        return Err(CoreError::PermissionDenied {
            actor: session.id,
            // Not the value: it is unchecked (and unbounded) until permission is granted.
            action: "act on behalf of another actor".into(),
            allowed: "only trusted sessions (superuser, or members of a role in the flowgate.trusted_roles setting) may name another actor; omit on_behalf_of to act as yourself".into(),
        });
    }
    validate_actor_id("on_behalf_of", other)?;
    Ok(Actor {
        id: other.to_owned(),
        role: session.role,
        source: ActorSource::OnBehalf,
        trusted: false,
        delegated_by: Some(session.id),
        nameless: false,
        anonymous_sign_in: false,
    })
}

/// Check an identity provider name: a lowercase identifier such as `slack`.
pub fn validate_provider(provider: &str) -> CoreResult<()> {
    let ok = (1..=32).contains(&provider.len())
        && provider.starts_with(|c: char| c.is_ascii_lowercase())
        && provider
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        return Ok(());
    }
    Err(CoreError::invalid(
        "provider",
        format!(
            "{:?} is not a provider name",
            provider.chars().take(40).collect::<String>()
        ),
        "1 to 32 of a-z, 0-9 and _, starting with a letter, e.g. slack",
    ))
}

/// Whether `session` may point an external identity, linked now to `current` (if at all), at
/// `target` (None: remove the link) without proving control of it. A person removes only their
/// own links (and may "link" one that is theirs already); linking an identity that is not yet
/// theirs takes a code they ask for signed in and the identity redeems
/// (`request_identity_link`): anyone could otherwise claim an approver's Slack id, whose clicks
/// would then act as them. A trusted session may do anything.
pub fn may_link(session: &Actor, current: Option<&str>, target: Option<&str>) -> CoreResult<()> {
    if session.trusted {
        return Ok(());
    }
    // Unlinking removes only the caller's own link (the statement says whose), so it is allowed
    // whatever the link names: the answer (NULL) is the same for an identity linked to nobody
    // and one linked to someone else, and a refusal never tells the two apart either.
    let allowed = match target {
        None => true,
        Some(t) => t == session.id && current == Some(session.id.as_str()),
    };
    if allowed {
        return Ok(());
    }
    Err(CoreError::PermissionDenied {
        actor: session.id.clone(),
        action: match target {
            Some(t) if t == session.id => "link an identity without proving it is theirs".into(),
            _ => "link an identity to another actor".into(),
        },
        allowed: "a code from flowgate.request_identity_link(provider), redeemed by the identity \
                  (in Slack: /capacity link CODE); trusted sessions link anyone's"
            .into(),
    })
}

/// Characters of a link code: no 0/O or 1/I/L to misread.
const LINK_CODE_ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";

/// A link code from random bytes (12 characters of a 31-letter alphabet, about 59 bits), shown
/// in groups of four.
pub fn link_code(random: [u8; 12]) -> String {
    let letters: Vec<char> = random
        .iter()
        .map(|b| LINK_CODE_ALPHABET[*b as usize % LINK_CODE_ALPHABET.len()] as char)
        .collect();
    letters
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// A code as typed, in the form it was issued: upper case, no spaces or dashes.
pub fn normalize_link_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

#[cfg(test)]
mod unit_tests;
