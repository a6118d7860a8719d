//! Data access for the core: session facts for actor resolution and the settings table.

use std::ffi::{CStr, CString};

use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value;

use super::actor::{self, Actor, SessionFacts};
use super::error::CoreResult;
use super::settings::{self, Definition};

/// The value of a (custom) configuration setting, `None` if it was never defined.
fn guc(name: &str) -> Option<String> {
    let cname = CString::new(name).ok()?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call. With
    // missing_ok = true GetConfigOption returns NULL for an unknown setting instead of raising;
    // restrict_privileged = false because these are user-settable placeholders. The returned
    // pointer refers to GUC-owned memory that stays valid until the setting changes, and it is
    // copied into a Rust String before anything else runs.
    unsafe {
        let value = pg_sys::GetConfigOption(cname.as_ptr(), true, false);
        if value.is_null() {
            None
        } else {
            Some(CStr::from_ptr(value).to_string_lossy().into_owned())
        }
    }
}

/// The calling role: `current_user` as the caller sees it. Inside a function running with its
/// owner's rights this is still the caller (Postgres' "outer" user), never the function's owner, so identity
/// and trust cannot be borrowed from a definer.
pub fn current_user() -> String {
    // SAFETY: GetOuterUserId() is always valid inside a transaction; with noerr = true
    // GetUserNameFromId returns NULL rather than raising for a dropped role, and the palloc'd
    // result is copied before the memory context can be reset.
    unsafe {
        let name = pg_sys::GetUserNameFromId(pg_sys::GetOuterUserId(), true);
        if name.is_null() {
            String::new()
        } else {
            CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    }
}

/// Whether the calling role (see [`current_user`]) is a superuser or a member of a role in
/// `flowgate.trusted_roles`.
pub fn session_is_trusted() -> CoreResult<bool> {
    // SAFETY: superuser_arg only reads the role's catalog entry; the outer user id is valid.
    if unsafe { pg_sys::superuser_arg(pg_sys::GetOuterUserId()) } {
        return Ok(true);
    }
    let roles = get_list("flowgate.trusted_roles")?;
    if roles.is_empty() {
        return Ok(false);
    }
    let user = current_user();
    let trusted = Spi::connect(|client| -> CoreResult<Option<bool>> {
        let rows = super::prepared::query(
            client,
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r \
             WHERE r.rolname = ANY($1) AND pg_catalog.pg_has_role($2::name, r.oid, 'MEMBER'))",
            &[super::prepared::TEXT_ARRAY, super::prepared::TEXT],
            &[roles.into(), user.into()],
        )?;
        Ok(rows.first().get_one::<bool>()?)
    })?;
    Ok(trusted.unwrap_or(false))
}

/// The session's actor. Trust is only computed when `with_trust` is set, so the common
/// `current_actor()` path reads two settings and nothing else.
pub fn session_actor(with_trust: bool) -> CoreResult<Actor> {
    let claims = guc("request.jwt.claims");
    let legacy_sub = guc("request.jwt.claim.sub");
    let legacy_role = guc("request.jwt.claim.role");
    let user = current_user();
    let trusted = if with_trust {
        session_is_trusted()?
    } else {
        false
    };
    actor::resolve(&SessionFacts {
        claims: claims.as_deref(),
        legacy_sub: legacy_sub.as_deref(),
        legacy_role: legacy_role.as_deref(),
        current_user: &user,
        trusted,
    })
}

/// The actor a call runs as (trust computed), honouring `on_behalf_of` for trusted sessions only.
pub fn acting_actor(on_behalf_of: Option<&str>) -> CoreResult<Actor> {
    let session = session_actor(true)?;
    actor::act_on_behalf(session, on_behalf_of)
}

/// The stored JSON value of a setting, `None` when it is not set.
pub fn stored_setting(key: &str) -> CoreResult<Option<Value>> {
    Spi::connect(|client| {
        let rows = super::prepared::query(
            client,
            "SELECT value FROM flowgate.settings WHERE key = $1",
            &[super::prepared::TEXT],
            &[key.into()],
        )?;
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(rows.first().get_one::<JsonB>()?.map(|j| j.0))
    })
}

fn load(key: &str) -> CoreResult<(&'static Definition, Option<Value>)> {
    let def = settings::definition(key)?;
    Ok((def, stored_setting(key)?))
}

/// The effective value (stored or default) of a setting as JSON.
pub fn get_value(key: &str) -> CoreResult<Value> {
    let (def, stored) = load(key)?;
    Ok(stored.unwrap_or_else(|| def.default_value()))
}

pub fn get_bool(key: &str) -> CoreResult<bool> {
    let (def, stored) = load(key)?;
    settings::as_bool(def, stored)
}

pub fn get_i64(key: &str) -> CoreResult<i64> {
    let (def, stored) = load(key)?;
    settings::as_i64(def, stored)
}

pub fn get_text(key: &str) -> CoreResult<String> {
    let (def, stored) = load(key)?;
    settings::as_text(def, stored)
}

pub fn get_list(key: &str) -> CoreResult<Vec<String>> {
    let (def, stored) = load(key)?;
    settings::as_list(def, stored)
}

/// Store a setting (validated again by the table trigger) and return the stored value.
pub fn set_value(key: &str, value: Value) -> CoreResult<Value> {
    settings::validate(key, &value)?;
    Spi::run_with_args(
        "INSERT INTO flowgate.settings AS s (key, value) VALUES ($1, $2) \
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[key.into(), JsonB(value.clone()).into()],
    )?;
    Ok(value)
}

/// Remove a stored value so the default applies again; returns the now-effective value.
pub fn reset_value(key: &str) -> CoreResult<Value> {
    let def = settings::definition(key)?;
    Spi::run_with_args(
        "DELETE FROM flowgate.settings WHERE key = $1",
        &[key.into()],
    )?;
    Ok(def.default_value())
}
