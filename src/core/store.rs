//! Data access for the core: session facts for actor resolution and the settings table.

use std::ffi::{CStr, CString};

use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value;

use super::actor::{self, Actor, SessionFacts};
use super::error::{CoreError, CoreResult};
use super::settings::{self, Definition};

/// A new row id (an ingest_id, a check_id, an event id): a random (version 4) UUID, as
/// `gen_random_uuid()` makes, from the operating system's generator and without a statement
/// (`gen_random_uuid` draws from OpenSSL's generator, about 2% of a hot path's time).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

// IDENTITY_SQL: the statements that decide who the caller is (trust, and the settings that
// name trusted and authenticator roles) also run inside `flowgate.current_actor()`, which row
// security policies call with the caller's own `search_path`. A caller who puts a schema of
// its own before `pg_catalog` could shadow an unqualified operator (`=` returning true) and
// make those statements say it is trusted. So they name every object with its schema,
// operators included (`OPERATOR(pg_catalog.=)`), and casts to `pg_catalog` types.

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

/// The OID of the relation `schema.name`, looked up in the catalog cache (no statement, no
/// lock); `None` when either does not exist.
pub fn relation_id(schema: &CStr, name: &CStr) -> Option<pg_sys::Oid> {
    // SAFETY: catalog cache look-ups by NUL-terminated names; missing_ok, so no error.
    unsafe {
        let ns = pg_sys::get_namespace_oid(schema.as_ptr(), true);
        if ns == pg_sys::InvalidOid {
            return None;
        }
        let rel = pg_sys::get_relname_relid(name.as_ptr(), ns);
        (rel != pg_sys::InvalidOid).then_some(rel)
    }
}

/// Hold flowgate's extension lock (ACCESS SHARE) until the transaction ends; `NotFound`
/// (P0002) when flowgate is not installed. Background work (a scheduled job, an outbox step)
/// calls it before touching any of flowgate's tables: `DROP EXTENSION` takes that lock (ACCESS
/// EXCLUSIVE) before any of its objects' locks, so it waits for a job under way instead of
/// deadlocking with it (the job holding one table while it waits for another the DROP already
/// holds), and the next job waits for the DROP. Nothing else conflicts with it: jobs do not wait
/// for each other, nor for a pool's `ALTER EXTENSION ... ADD SEQUENCE` (SHARE UPDATE
/// EXCLUSIVE). A job that waited for a `DROP EXTENSION` finds flowgate gone.
pub fn require_extension() -> CoreResult<()> {
    if hold_extension_lock(true) {
        Ok(())
    } else {
        Err(CoreError::NotFound {
            kind: "extension".into(),
            id: "flowgate".into(),
        })
    }
}

/// [`require_extension`] without waiting: whether flowgate is installed and its lock was free,
/// false also while a `DROP EXTENSION` holds the lock or waits for it. The background worker
/// skips its tick then, rather than wait on a DROP that itself waits for some session's open
/// transaction.
pub fn try_hold_extension() -> bool {
    hold_extension_lock(false)
}

fn hold_extension_lock(wait: bool) -> bool {
    // SAFETY: catalog look-ups by a NUL-terminated name (missing_ok) and a lock on a database
    // object, inside a transaction; the lock is released at its end.
    unsafe {
        let before = pg_sys::get_extension_oid(c"flowgate".as_ptr(), true);
        if before == pg_sys::InvalidOid {
            return false;
        }
        let mode = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        if wait {
            pg_sys::LockDatabaseObject(pg_sys::ExtensionRelationId, before, 0, mode);
        } else if !pg_sys::ConditionalLockDatabaseObject(
            pg_sys::ExtensionRelationId,
            before,
            0,
            mode,
        ) {
            return false;
        }
        // A DROP EXTENSION that committed since the look-up (while this waited) is seen here.
        pg_sys::AcceptInvalidationMessages();
        pg_sys::get_extension_oid(c"flowgate".as_ptr(), true) == before
    }
}

/// Whether the table `schema.name` has the column `column` (not dropped), from the catalog
/// cache: the schema an older version's script made lacks the columns added since.
pub fn column_exists(schema: &CStr, name: &CStr, column: &CStr) -> bool {
    relation_id(schema, name).is_some_and(|table| {
        // SAFETY: a catalog cache look-up by a NUL-terminated column name.
        unsafe { pg_sys::get_attnum(table, column.as_ptr()) != pg_sys::InvalidAttrNumber as i16 }
    })
}

/// Whether the transaction reads one snapshot throughout (REPEATABLE READ, SERIALIZABLE).
pub fn snapshot_per_transaction() -> bool {
    // SAFETY: reads the transaction's isolation level, set for the whole transaction.
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 }
}

/// The calling role: `current_user` as the caller sees it. Inside a function running with its
/// owner's rights this is still the caller (Postgres' "outer" user), never the function's owner, so identity
/// and trust cannot be borrowed from a definer.
pub fn current_user() -> String {
    // SAFETY: GetOuterUserId() is always valid inside a transaction.
    unsafe { role_name(pg_sys::GetOuterUserId()) }
}

/// The role the session logged in as (`session_user`); `SET ROLE` does not change it.
pub fn session_user() -> String {
    // SAFETY: as in `current_user`; GetSessionUserId() is valid once the session started.
    unsafe { role_name(pg_sys::GetSessionUserId()) }
}

/// # Safety
/// `oid` must be a role id read from the running session.
unsafe fn role_name(oid: pg_sys::Oid) -> String {
    // SAFETY: with noerr = true GetUserNameFromId returns NULL rather than raising for a
    // dropped role, and the palloc'd result is copied before the memory context can be reset.
    unsafe {
        let name = pg_sys::GetUserNameFromId(oid, true);
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
    // SAFETY: GetOuterUserId() is always valid inside a transaction.
    let (oid, name) = unsafe {
        (
            pg_sys::GetOuterUserId(),
            role_name(pg_sys::GetOuterUserId()),
        )
    };
    role_is_trusted(oid, name)
}

/// Whether the claims settings may be believed: the session logged in as one of
/// `flowgate.authenticator_roles` (PostgREST's login, which sets them from a verified JWT) or as
/// a trusted role. Any other login could have written them itself.
pub fn claims_count() -> CoreResult<bool> {
    let user = session_user();
    if get_list("flowgate.authenticator_roles")?.contains(&user) {
        return Ok(true);
    }
    // SAFETY: GetSessionUserId() is valid once the session started.
    role_is_trusted(unsafe { pg_sys::GetSessionUserId() }, user)
}

fn role_is_trusted(oid: pg_sys::Oid, user: String) -> CoreResult<bool> {
    // SAFETY: superuser_arg only reads the role's catalog entry; the id is the session's.
    if unsafe { pg_sys::superuser_arg(oid) } {
        return Ok(true);
    }
    let roles = get_list("flowgate.trusted_roles")?;
    if roles.is_empty() {
        return Ok(false);
    }
    let trusted = Spi::connect(|client| -> CoreResult<Option<bool>> {
        let rows = super::prepared::query(
            client,
            // Every name is qualified, operators too (IDENTITY_SQL).
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r \
             WHERE r.rolname OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[]) \
               AND pg_catalog.pg_has_role($2::pg_catalog.name, r.oid, 'USAGE'))",
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
    let mut facts = SessionFacts {
        claims: claims.as_deref(),
        legacy_sub: legacy_sub.as_deref(),
        legacy_role: legacy_role.as_deref(),
        current_user: &user,
        login: None,
        trusted,
        claims_count: false,
    };
    // Only a session that carries claims pays for checking who logged in.
    facts.claims_count = facts.has_claims() && claims_count()?;
    // Without believed claims the actor is the login, unless it is the role in effect or a
    // trusted login (which may act as the roles it sets).
    let login;
    if !facts.claims_count {
        login = session_user();
        // SAFETY: GetSessionUserId() is valid once the session started.
        if login != user && !role_is_trusted(unsafe { pg_sys::GetSessionUserId() }, login.clone())?
        {
            facts.login = Some(&login);
        }
    }
    let mut actor = actor::resolve(&facts)?;
    // Read only for such sessions: the setting costs a look-up no other caller pays.
    if actor.anonymous_sign_in && get_bool("flowgate.allow_anonymous_users")? {
        actor.anonymous_sign_in = false;
    }
    Ok(actor)
}

/// The actor a call runs as (trust computed), honouring `on_behalf_of` for trusted sessions only.
pub fn acting_actor(on_behalf_of: Option<&str>) -> CoreResult<Actor> {
    let session = session_actor(true)?;
    actor::act_on_behalf(session, on_behalf_of)
}

/// The stored JSON values of `keys` (those that are set), in one statement.
fn stored_settings(keys: &[&str]) -> CoreResult<Vec<(String, Value)>> {
    let wanted: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    Spi::connect(|client| {
        let rows = super::prepared::query(
            client,
            // Every name is qualified, operators too (IDENTITY_SQL).
            "SELECT key, value FROM flowgate.settings WHERE key OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])",
            &[super::prepared::TEXT_ARRAY],
            &[wanted.into()],
        )?;
        let mut out = Vec::with_capacity(keys.len());
        for row in rows {
            if let (Some(k), Some(v)) = (row.get::<String>(1)?, row.get::<JsonB>(2)?) {
                out.push((k, v.0));
            }
        }
        Ok(out)
    })
}

/// The stored JSON value of a setting, `None` when it is not set.
pub fn stored_setting(key: &str) -> CoreResult<Option<Value>> {
    Ok(stored_settings(&[key])?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v))
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

/// Several settings read in one statement, for a caller that needs more than one.
pub struct SettingsRead {
    stored: Vec<(&'static Definition, Option<Value>)>,
}

impl SettingsRead {
    fn get(&self, key: &str) -> CoreResult<(&'static Definition, Option<Value>)> {
        self.stored
            .iter()
            .find(|(d, _)| d.key == key)
            .cloned()
            .ok_or_else(|| CoreError::Internal(format!("setting {key} was not read")))
    }

    pub fn text(&self, key: &str) -> CoreResult<String> {
        let (def, stored) = self.get(key)?;
        settings::as_text(def, stored)
    }

    pub fn list(&self, key: &str) -> CoreResult<Vec<String>> {
        let (def, stored) = self.get(key)?;
        settings::as_list(def, stored)
    }
}

/// Read `keys` (each a documented setting) in one statement.
pub fn read_settings(keys: &[&str]) -> CoreResult<SettingsRead> {
    let defs = keys
        .iter()
        .map(|k| settings::definition(k))
        .collect::<CoreResult<Vec<_>>>()?;
    let mut found = stored_settings(keys)?;
    let stored = defs
        .into_iter()
        .map(|d| {
            let v = found
                .iter()
                .position(|(k, _)| k == d.key)
                .map(|i| found.swap_remove(i).1);
            (d, v)
        })
        .collect();
    Ok(SettingsRead { stored })
}

/// 42501 unless the calling role may INSERT and UPDATE `table` (one of flowgate's owner-only
/// tables: the extension owner, or roles it granted both). `action` says what was refused.
pub fn require_writer(table: &str, action: &str) -> CoreResult<()> {
    require_privileges(table, &["INSERT", "UPDATE"], action)
}

/// 42501 unless the calling role may DELETE from `table` (one of flowgate's owner-only tables).
pub fn require_deleter(table: &str, action: &str) -> CoreResult<()> {
    require_privileges(table, &["DELETE"], action)
}

/// 42501 unless the calling role holds every one of `privileges` on `table`, and row security
/// does not apply to it there: flowgate's owner-only tables with row security have no write
/// policy, so a role granted the privileges but under row security could write nothing (an
/// insert refused by the policy, a delete that silently removes no row and would report a
/// reset that did not happen).
fn require_privileges(table: &str, privileges: &[&str], action: &str) -> CoreResult<()> {
    let may = Spi::get_one_with_args::<bool>(
        "SELECT bool_and(pg_catalog.has_table_privilege($1, p)) AND NOT pg_catalog.row_security_active($1) \
           FROM pg_catalog.unnest($2::text[]) p",
        &[table.into(), privileges.to_vec().into()],
    )?
    .unwrap_or(false);
    if may {
        return Ok(());
    }
    Err(super::error::CoreError::PermissionDenied {
        actor: current_user(),
        action: action.into(),
        allowed: format!(
            "the extension owner, or roles it granted {} on {table} (and BYPASSRLS where row security is on)",
            privileges.join(" and ")
        ),
    })
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

/// The actor an external identity acts as, when it is linked.
pub fn linked_actor(provider: &str, external_id: &str) -> CoreResult<Option<String>> {
    Spi::connect(|client| {
        let rows = super::prepared::query(
            client,
            "SELECT actor_id FROM flowgate.identity_links WHERE provider = $1 AND external_id = $2",
            &[super::prepared::TEXT, super::prepared::TEXT],
            &[provider.into(), external_id.into()],
        )?;
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(rows.first().get_one::<String>()?)
    })
}

/// Link `external_id` at `provider` to `actor_id`, or (with `actor_id` None) remove the link.
/// The caller may link only themselves and change only their own links, unless trusted.
pub fn link_identity(
    provider: &str,
    external_id: &str,
    actor_id: Option<&str>,
) -> CoreResult<serde_json::Value> {
    let session = session_actor(true)?;
    session.refuse_anonymous("link or unlink an identity anonymously")?;
    actor::validate_provider(provider)?;
    actor::validate_actor_id("external_id", external_id)?;
    let current = linked_actor(provider, external_id)?;
    actor::may_link(&session, current.as_deref(), actor_id)?;
    let row = match actor_id {
        // An untrusted caller may only "link" an identity that is theirs already: nothing is
        // written (a write could race with a redeemed code moving the link to its owner).
        Some(_) if !session.trusted => Spi::get_one_with_args::<JsonB>(
            "SELECT (SELECT to_jsonb(l) FROM flowgate.identity_links l \
                      WHERE provider = $1 AND external_id = $2 AND actor_id = $3)",
            &[
                provider.into(),
                external_id.into(),
                session.id.clone().into(),
            ],
        )?,
        Some(target) => {
            actor::validate_actor_id("actor_id", target)?;
            Spi::get_one_with_args::<JsonB>(
                "INSERT INTO flowgate.identity_links AS l (provider, external_id, actor_id, linked_by) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (provider, external_id) DO UPDATE \
                    SET actor_id = EXCLUDED.actor_id, linked_by = EXCLUDED.linked_by, linked_at = now() \
                 RETURNING to_jsonb(l)",
                &[
                    provider.into(),
                    external_id.into(),
                    target.into(),
                    session.id.clone().into(),
                ],
            )?
        }
        // A CTE so that removing nothing is one row holding NULL, not an empty result. An
        // untrusted caller removes only a link that is theirs when the statement runs.
        None => Spi::get_one_with_args::<JsonB>(
            "WITH gone AS (DELETE FROM flowgate.identity_links l WHERE provider = $1 AND external_id = $2 \
                             AND ($3::text IS NULL OR actor_id = $3) RETURNING to_jsonb(l) AS j) \
             SELECT (SELECT j FROM gone)",
            &[
                provider.into(),
                external_id.into(),
                (!session.trusted).then(|| session.id.clone()).into(),
            ],
        )?,
    };
    Ok(row.map_or(serde_json::Value::Null, |j| j.0))
}

/// How long a link code waits for its identity to redeem it.
pub const LINK_CODE_MINUTES: i32 = 10;

fn code_hash(code: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(actor::normalize_link_code(code).as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Four bytes from the operating system's generator (a v4 UUID's first four, all random), for
/// secrets such as a new database's password: no user-space generator state crosses a fork.
pub fn os_random_u32() -> u32 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Twelve bytes from the operating system's generator, through a v4 UUID (the bytes that carry
/// its version and variant left out).
fn random_bytes() -> [u8; 12] {
    let u = uuid::Uuid::new_v4();
    let b = u.as_bytes();
    [
        b[0], b[1], b[2], b[3], b[4], b[5], b[7], b[9], b[10], b[11], b[12], b[13],
    ]
}

/// A one-time code for the signed-in caller: the identity at `provider` that redeems it (in
/// Slack: `/capacity link CODE`, a request the provider signed) is linked to the caller. One
/// code per caller and provider (a new one replaces it), living [`LINK_CODE_MINUTES`]; only its
/// hash is kept. The caller's own session asks for it, so nobody else can hold it unless they
/// are given it.
pub fn request_identity_link(provider: &str) -> CoreResult<serde_json::Value> {
    let session = session_actor(true)?;
    session.refuse_anonymous("link an identity anonymously")?;
    // A person: a code for a role or a service (a service key, a psql login) would link every
    // Slack user who redeems it to that shared actor. Trusted sessions use link_identity.
    if session.source != actor::ActorSource::Jwt {
        return Err(CoreError::PermissionDenied {
            actor: session.id,
            action: "ask for an identity link code without a signed-in user".into(),
            allowed: "signed-in users (a JWT with a sub claim); trusted sessions link with flowgate.link_identity".into(),
        });
    }
    actor::validate_provider(provider)?;
    let providers = super::module::identity_providers();
    if !providers.contains(&provider) {
        return Err(CoreError::invalid(
            "provider",
            format!(
                "{} does not redeem link codes",
                crate::core::error::quoted(provider)
            ),
            providers.join(", "),
        ));
    }
    let code = actor::link_code(random_bytes());
    let expires = Spi::get_one_with_args::<String>(
        "WITH stale AS (DELETE FROM flowgate.identity_link_codes WHERE expires_at <= pg_catalog.clock_timestamp()) \
         INSERT INTO flowgate.identity_link_codes (provider, actor_id, code_sha256, expires_at) \
         VALUES ($1, $2, $3, pg_catalog.clock_timestamp() + pg_catalog.make_interval(mins => $4)) \
         ON CONFLICT (provider, actor_id) DO UPDATE \
            SET code_sha256 = EXCLUDED.code_sha256, expires_at = EXCLUDED.expires_at \
         RETURNING pg_catalog.to_json(expires_at) OPERATOR(pg_catalog.#>>) '{}'",
        &[
            provider.into(),
            session.id.clone().into(),
            code_hash(&code).into(),
            LINK_CODE_MINUTES.into(),
        ],
    )?;
    Ok(serde_json::json!({
        "provider": provider,
        "actor_id": session.id,
        "code": code,
        "expires_at": expires,
    }))
}

/// Link `external_id` at `provider`, whose request the provider verified (a signed Slack
/// command names its user), to the actor that asked for `code`; the code is used up. A link to
/// someone else moves: the identity itself redeemed the code. 42501 for a wrong, used or
/// expired code.
pub fn redeem_link_code(
    provider: &str,
    external_id: &str,
    code: &str,
) -> CoreResult<serde_json::Value> {
    actor::validate_provider(provider)?;
    actor::validate_actor_id("external_id", external_id)?;
    super::args::check_text_size("code", code, 64)?;
    let row = Spi::connect_mut(|client| {
        client
            .update(
                "WITH used AS (DELETE FROM flowgate.identity_link_codes \
                                WHERE provider = $1 AND code_sha256 = $3 \
                                  AND expires_at > pg_catalog.clock_timestamp() RETURNING actor_id) \
                 INSERT INTO flowgate.identity_links AS l (provider, external_id, actor_id, linked_by) \
                 SELECT $1, $2, actor_id, actor_id FROM used \
                 ON CONFLICT (provider, external_id) DO UPDATE \
                    SET actor_id = EXCLUDED.actor_id, linked_by = EXCLUDED.linked_by, linked_at = now() \
                 RETURNING to_jsonb(l)",
                None,
                &[provider.into(), external_id.into(), code_hash(code).into()],
            )?
            .next()
            .map(|r| r.get::<JsonB>(1))
            .transpose()
            .map(Option::flatten)
    })?;
    row.map(|j| j.0).ok_or_else(|| CoreError::PermissionDenied {
        actor: format!("{provider} {external_id}"),
        action: "link to the actor behind a code".into(),
        allowed: format!(
            "a code the person asked for signed in (flowgate.request_identity_link), within {LINK_CODE_MINUTES} minutes, once"
        ),
    })
}
