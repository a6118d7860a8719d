//! SQL surface of the core (schema `flowgate`): thin wrappers over `actor`, `settings` and
//! `store`. Errors leave as `ErrorReport`s carrying the SQLSTATEs documented in the README.

use flowgate_macros::documented;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::JsonB;

use super::args::{RawJsonb, MAX_JSON_ARG_BYTES};
use super::error::CoreResult;
use super::{settings, store};

/// The acting identity: the JWT subject (`request.jwt.claims` → `sub`) when a PostgREST or
/// Supabase request set one, else `current_user`.
#[documented]
#[pg_extern(stable, parallel_safe)]
fn current_actor() -> Result<String, ErrorReport> {
    Ok(store::session_actor(false).map(|a| a.id)?)
}

/// Whether the acting identity is anonymous: the `anon` role, or a JWT with no subject from an
/// untrusted session (every such caller would be one actor, the role). Row rules of direct
/// writes refuse such writers, as the write functions do.
#[documented]
#[pg_extern(stable, parallel_safe)]
fn actor_is_anonymous() -> Result<bool, ErrorReport> {
    Ok(store::session_actor(true).map(|a| a.refuse_anonymous("").is_err())?)
}

/// CHECK helper: an http:// or https:// URL with a host, no user:password@ in it, at most 2048
/// bytes, no whitespace or control characters. The rule every URL flowgate sends to is checked
/// with, so direct writes of flowgate.deliveries and intake.engine_config hold to it too.
#[documented]
#[pg_extern(immutable, strict, parallel_safe)]
fn is_endpoint_url(value: &str) -> bool {
    super::outbox::delivery::validate_url(value).is_ok()
}

/// The acting identity as JSON: `id`, `role`, `source`, `actor_type`, `trusted` (and
/// `delegated_by` when delegated). With `on_behalf_of`, what a trusted session acting for that
/// actor would be recorded as; 42501 for untrusted sessions.
#[documented]
#[pg_extern(stable)]
fn current_actor_info(on_behalf_of: default!(Option<&str>, "NULL")) -> Result<JsonB, ErrorReport> {
    let info = store::session_actor(true)
        .and_then(|session| super::actor::act_on_behalf(session, on_behalf_of))
        .and_then(|actor| {
            let mut value = serde_json::to_value(&actor)?;
            value["actor_type"] = actor.actor_type().into();
            Ok(value)
        });
    Ok(info.map(JsonB)?)
}

/// Link an external identity (`provider` 'slack': a Slack user id) to the actor it acts as, so
/// one person is one actor on every surface; returns the link. For trusted sessions, which link
/// anyone's (`actor_id` defaults to the caller). Anyone else gets 42501 unless the identity is
/// linked to them already: a person links their own with a code
/// (`flowgate.request_identity_link`).
#[documented]
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn link_identity(
    provider: Option<&str>,
    external_id: Option<&str>,
    actor_id: default!(Option<&str>, "NULL"),
) -> Result<JsonB, ErrorReport> {
    let run = || -> CoreResult<serde_json::Value> {
        let provider = super::args::required("provider", provider)?;
        let external_id = super::args::required("external_id", external_id)?;
        let me;
        let target = match actor_id {
            Some(a) => a,
            None => {
                me = store::session_actor(false)?.id;
                &me
            }
        };
        store::link_identity(provider, external_id, Some(target))
    };
    Ok(run().map(JsonB)?)
}

/// A one-time code that links your identity at `provider` to you, signed in: the identity
/// redeems it (in Slack: `/capacity link CODE`, a request Slack signs) within ten minutes; a
/// new code replaces the last. Returns `{provider, actor_id, code, expires_at}`. This is how a
/// person links their own Slack id: only the Slack user who sends the code is linked. 42501
/// for an anonymous caller; 22023 for a provider no module redeems codes for (`slack` does).
#[documented]
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn request_identity_link(provider: Option<&str>) -> Result<JsonB, ErrorReport> {
    let run = || -> CoreResult<serde_json::Value> {
        store::request_identity_link(super::args::required("provider", provider)?)
    };
    Ok(run().map(JsonB)?)
}

/// Remove a link made with `flowgate.link_identity`: your own, or any for trusted sessions.
/// Returns the removed link, or NULL when there was none of yours (whether or not the id is
/// linked to someone else, which this does not tell); 42501 for an anonymous caller.
#[documented]
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn unlink_identity(
    provider: Option<&str>,
    external_id: Option<&str>,
) -> Result<Option<JsonB>, ErrorReport> {
    let run = || -> CoreResult<Option<JsonB>> {
        let provider = super::args::required("provider", provider)?;
        let external_id = super::args::required("external_id", external_id)?;
        store::link_identity(provider, external_id, None)
            .map(|v| (!v.is_null()).then_some(JsonB(v)))
    };
    Ok(run()?)
}

/// The effective value of a setting: the stored one, else its documented default (22023 for an
/// unknown key). Keys naming URLs, secrets, ids, channels or admins read as their default
/// except for the extension owner and service_role.
///
/// The hiding is the row-level security of `flowgate.settings`: this function reads the table
/// with the caller's rights.
#[documented]
#[pg_extern(stable)]
fn get_setting(key: Option<&str>) -> Result<JsonB, ErrorReport> {
    Ok(super::args::required("key", key)
        .and_then(store::get_value)
        .map(JsonB)?)
}

/// Store a setting after validating it against its documented type (22023 with the allowed
/// values otherwise); returns the stored value. Needs write access to `flowgate.settings` (the
/// extension owner by default; 42501 otherwise).
#[documented]
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn set_setting(key: Option<&str>, value: RawJsonb) -> Result<JsonB, ErrorReport> {
    let run = || -> CoreResult<serde_json::Value> {
        // Who may write, which key, how large: all before the value is read (a NULL is 22023).
        store::require_writer("flowgate.settings", "write flowgate settings")?;
        let key = super::args::required("key", key)?;
        settings::definition(key)?;
        let value = value.value("value", MAX_JSON_ARG_BYTES)?;
        settings::validate_new(key, &value)?;
        store::set_value(key, value)
    };
    Ok(run().map(JsonB)?)
}

/// Forget a stored setting so its documented default applies again; returns that default
/// (22023 for an unknown key). Needs write access to `flowgate.settings`.
#[documented]
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn reset_setting(key: Option<&str>) -> Result<JsonB, ErrorReport> {
    let run = || -> CoreResult<serde_json::Value> {
        // Who may reset first: a caller who may not learns nothing about the key.
        store::require_deleter("flowgate.settings", "reset flowgate settings")?;
        store::reset_value(super::args::required("key", key)?)
    };
    Ok(run().map(JsonB)?)
}

/// Raise 22023 unless `value` is acceptable for `key`; true otherwise. The `flowgate.settings`
/// trigger calls it, so that no write path can store a bad value.
#[documented]
#[pg_extern(immutable, parallel_safe, strict)]
fn check_setting(key: &str, value: RawJsonb) -> Result<bool, ErrorReport> {
    let run = || -> CoreResult<bool> {
        settings::definition(key)?;
        let value = value.value("value", MAX_JSON_ARG_BYTES)?;
        // A direct write holds to set_setting's rules (no URL with credentials, no control
        // character, a secret's name), or every later call that reads it would fail; a restore
        // keeps what its dump holds (an older release's rules were looser).
        if super::restore::restore_loading_into(c"flowgate", c"settings") {
            settings::validate(key, &value)?;
        } else {
            settings::validate_new(key, &value)?;
        }
        Ok(true)
    };
    Ok(run()?)
}

/// Whether a restore is loading `flowgate.settings` now (a COPY into it by a role row security
/// does not apply to, as pg_restore runs): the settings trigger then keeps each row's
/// `updated_at` and `updated_by` as the dump has them.
#[documented]
#[pg_extern(volatile, parallel_restricted)]
fn restore_loading_settings() -> bool {
    super::restore::restore_loading_into(c"flowgate", c"settings")
}

/// Every documented setting: key, kind, allowed values, default, current value, whether it is
/// set, and description.
#[documented]
#[pg_extern(stable)]
#[allow(clippy::type_complexity)]
fn setting_definitions() -> Result<
    TableIterator<
        'static,
        (
            name!(key, String),
            name!(kind, String),
            name!(allowed, String),
            name!(default_value, JsonB),
            name!(value, JsonB),
            name!(is_set, bool),
            name!(description, String),
        ),
    >,
    ErrorReport,
> {
    let mut rows = Vec::new();
    for def in settings::definitions() {
        let stored = store::stored_setting(def.key)?;
        let is_set = stored.is_some();
        let value = stored.unwrap_or_else(|| def.default_value());
        rows.push((
            def.key.to_owned(),
            def.kind.name().to_owned(),
            def.kind.describe(),
            JsonB(def.default_value()),
            JsonB(value),
            is_set,
            def.doc.to_owned(),
        ));
    }
    Ok(TableIterator::new(rows))
}
