//! Secrets at rest: Supabase Vault when it is installed, else pgcrypto's `pgp_sym_encrypt` under a
//! passphrase that lives only in the server configuration (`flowgate.tenant_key_passphrase`:
//! superuser-only, hidden from SHOW ALL, never in a dump). Neither a table read nor pg_dump
//! reveals a value, and no value is ever put into an error, a notice, a log line or a statement's
//! parameters (pgcrypto is called directly: [`pgp_encrypt`], [`pgp_decrypt`]).
//!
//! Named secrets (`flowgate.set_secret`: bot tokens, API keys for deliveries) and the modules'
//! own secrets (tenant keys) are kept the same way.

use std::ffi::CString;

use pgrx::fn_call::{fn_call, Arg, FnCallError};
use pgrx::spi::SpiClient;
use pgrx::{pg_guard, pg_sys, GucContext, GucFlags, GucRegistry, GucSetting};

use super::error::{CoreError, CoreResult};

static PASSPHRASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static PASSPHRASE_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Longest passphrase file read, in bytes (a passphrase, not a key store).
const MAX_PASSPHRASE_FILE_BYTES: u64 = 4096;

/// Longest secret value accepted, in bytes.
pub const MAX_SECRET_BYTES: usize = 8192;

/// Register `flowgate.tenant_key_passphrase` (every backend that loads flowgate).
pub fn init() {
    // SAFETY: the check hook is a plain function of its arguments, guarded, for the life of
    // the backend.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"flowgate.tenant_key_passphrase",
            c"Passphrase that encrypts flowgate's secrets (named secrets, tenant keys) with pgcrypto when Supabase Vault is not installed.",
            c"Prefer flowgate.tenant_key_passphrase_file; else set it in postgresql.conf (superuser-only; not shown by SHOW ALL; never in a dump). ALTER DATABASE/ROLE ... SET and a function's SET clause are refused where flowgate is loaded. Changing it makes stored secrets unreadable.",
            &PASSPHRASE,
            GucContext::Suset,
            GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL | GucFlags::NO_RESET_ALL,
            Some(passphrase_check),
            None,
            None,
        );
    }
    GucRegistry::define_string_guc(
        c"flowgate.tenant_key_passphrase_file",
        c"File holding the passphrase that encrypts flowgate's secrets with pgcrypto when Supabase Vault is not installed; used instead of flowgate.tenant_key_passphrase when set.",
        c"An absolute path the server can read (owned by its OS user, mode 0600). Unlike a setting's value, the file cannot be read by pg_read_all_settings members or, on a server that does not preload flowgate, by any role.",
        &PASSPHRASE_FILE,
        GucContext::Suset,
        GucFlags::default(),
    );
}

/// Where a passphrase must not be set: `ALTER DATABASE … SET` and `ALTER ROLE … SET` store it in
/// `pg_db_role_setting`, which every role can read and `pg_dumpall` writes out, and a function's
/// `SET` clause stores it in `pg_proc`. Those are checked with the sources below (`PGC_S_TEST`
/// when the setting is stored; the others when a session applies one stored before flowgate
/// was loaded, which it then ignores with a warning). An empty value is harmless.
fn stored_in_a_catalog(source: pg_sys::GucSource::Type) -> bool {
    use pg_sys::GucSource::*;
    matches!(
        source,
        PGC_S_TEST | PGC_S_GLOBAL | PGC_S_DATABASE | PGC_S_USER | PGC_S_DATABASE_USER
    )
}

#[pg_guard]
unsafe extern "C-unwind" fn passphrase_check(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: Postgres hands a valid pointer to the proposed value (NULL or a C string).
    let empty = unsafe { newval.is_null() || (*newval).is_null() || **newval == 0 };
    // pg_upgrade replays what the old cluster stored and stops at the first error: there the
    // value is let through (it is in the old cluster's catalogs already).
    // SAFETY: a flag of this process, set at its start.
    let upgrading = unsafe { pg_sys::IsBinaryUpgrade };
    if empty || upgrading || !stored_in_a_catalog(source) {
        return true;
    }
    // SAFETY: the messages Postgres reports for a refused value, palloc'd as it expects. The
    // message is set too: the default one quotes the value.
    unsafe {
        pg_sys::GUC_check_errmsg_string = pg_sys::pstrdup(
            c"flowgate.tenant_key_passphrase cannot be set for a database, a role or a function"
                .as_ptr(),
        );
        pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(
            c"ALTER DATABASE/ROLE ... SET and a function's SET clause store the passphrase in a catalog every role can read (and pg_dumpall writes out).".as_ptr(),
        );
        pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(
            c"Name a file holding it with flowgate.tenant_key_passphrase_file (the passphrase then appears in no SQL statement or log), or set flowgate.tenant_key_passphrase in postgresql.conf.".as_ptr(),
        );
    }
    false
}

/// The passphrase: from `flowgate.tenant_key_passphrase_file` when it is set, else
/// `flowgate.tenant_key_passphrase`; at least 16 characters. A setting's value can be read by
/// members of `pg_read_all_settings` (`pg_monitor`), and by any role on a server that does not
/// preload flowgate (it is then a placeholder until the library loads); a file cannot.
pub fn passphrase(feature: &str) -> CoreResult<String> {
    let missing = |dependency: String, hint: &str| CoreError::MissingDependency {
        feature: format!("{feature} without Supabase Vault"),
        dependency,
        hint: hint.into(),
    };
    let file = PASSPHRASE_FILE
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .filter(|p| !p.is_empty());
    let Some(path) = file else {
        return PASSPHRASE
            .get()
            .map(|c| c.to_string_lossy().into_owned())
            .filter(|p| p.len() >= 16)
            .ok_or_else(|| {
                missing(
                    "flowgate.tenant_key_passphrase (at least 16 characters)".into(),
                    "install Supabase Vault, or set flowgate.tenant_key_passphrase_file (or flowgate.tenant_key_passphrase) in postgresql.conf and reload",
                )
            });
    };
    let unreadable = |why: String| {
        missing(
            format!("the passphrase file {path:?} flowgate.tenant_key_passphrase_file names ({why})"),
            "an absolute path to a file the server's OS user can read, holding the passphrase (at least 16 characters) on its first line",
        )
    };
    if !std::path::Path::new(&path).is_absolute() {
        return Err(unreadable("not an absolute path".into()));
    }
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| {
            f.take(MAX_PASSPHRASE_FILE_BYTES + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(|e| unreadable(e.kind().to_string()))?;
    if bytes.len() as u64 > MAX_PASSPHRASE_FILE_BYTES {
        return Err(unreadable(format!(
            "longer than {MAX_PASSPHRASE_FILE_BYTES} bytes"
        )));
    }
    // Never shown: not UTF-8, or too short, is said without the content.
    let text = String::from_utf8(bytes).map_err(|_| unreadable("not UTF-8 text".into()))?;
    let first = text.lines().next().unwrap_or("").trim_end().to_owned();
    if first.chars().count() < 16 {
        return Err(unreadable(
            "its first line is shorter than 16 characters".into(),
        ));
    }
    Ok(first)
}

/// Where secrets go: Vault, or pgcrypto (with the quoted schema it lives in).
pub enum Storage {
    Vault,
    Pgcrypto(String),
}

/// The quoted schema pgcrypto is installed in, if it is.
pub fn pgcrypto_schema(client: &SpiClient<'_>) -> CoreResult<Option<String>> {
    let t = client.select(
        "SELECT pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_extension e \
           JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pgcrypto'",
        None,
        &[],
    )?;
    super::prepared::first_text(t)
}

/// Whether Supabase Vault is installed.
pub fn vault_installed(client: &SpiClient<'_>) -> CoreResult<bool> {
    Ok(client
        .select(
            // By signature: `to_regproc` finds nothing once the name is overloaded.
            "SELECT to_regprocedure('vault.create_secret(text, text, text, uuid)') IS NOT NULL \
                AND to_regprocedure('vault.update_secret(uuid, text, text, text, uuid)') IS NOT NULL \
                AND to_regclass('vault.decrypted_secrets') IS NOT NULL",
            None,
            &[],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false))
}

pub fn storage(client: &SpiClient<'_>, feature: &str) -> CoreResult<Storage> {
    if vault_installed(client)? {
        return Ok(Storage::Vault);
    }
    match pgcrypto_schema(client)? {
        Some(schema) => Ok(Storage::Pgcrypto(schema)),
        None => Err(CoreError::MissingDependency {
            feature: feature.into(),
            dependency: "Supabase Vault or pgcrypto".into(),
            hint: "CREATE EXTENSION pgcrypto (and set flowgate.tenant_key_passphrase), or install Supabase Vault".into(),
        }),
    }
}

/// pgcrypto's `pgp_sym_encrypt(value, passphrase, 'cipher-algo=aes256')` (pgcrypto in the quoted
/// `schema`). Called through the function manager, not by a statement: neither the value nor the
/// passphrase ever becomes a statement's parameter, which pgaudit's `log_parameter` (or any
/// executor hook) would write to the server log. The statement that stores the result binds
/// only the ciphertext.
pub fn pgp_encrypt(
    client: &SpiClient<'_>,
    schema: &str,
    value: &str,
    passphrase: &str,
) -> CoreResult<Vec<u8>> {
    let f = direct_function(
        client,
        &format!("{schema}.pgp_sym_encrypt"),
        "text, text, text",
    )?;
    fn_call::<Vec<u8>>(
        &f,
        &[
            &Arg::Value(value),
            &Arg::Value(passphrase),
            &Arg::Value("cipher-algo=aes256"),
        ],
    )
    .map_err(|e| direct_call_failed(&f, &e))?
    .ok_or_else(|| CoreError::Internal(format!("{f} returned NULL")))
}

/// pgcrypto's `pgp_sym_decrypt(data, passphrase)`, called the way [`pgp_encrypt`] is: the
/// passphrase is never a statement's parameter, the plain text never a statement's result.
/// A wrong passphrase or damaged data raises pgcrypto's error (class 39); the callers catch it.
pub fn pgp_decrypt(
    client: &SpiClient<'_>,
    schema: &str,
    data: &[u8],
    passphrase: &str,
) -> CoreResult<String> {
    let f = direct_function(client, &format!("{schema}.pgp_sym_decrypt"), "bytea, text")?;
    fn_call::<String>(&f, &[&Arg::Value(data), &Arg::Value(passphrase)])
        .map_err(|e| direct_call_failed(&f, &e))?
        .ok_or_else(|| CoreError::Internal(format!("{f} returned NULL")))
}

/// `function` (schema-qualified), once the caller (flowgate's owner, in its SECURITY DEFINER
/// functions) may execute `function(args)`: a direct call skips the executor's privilege check,
/// so it is made here, and a revoked EXECUTE is honoured as it would be in a statement. Either
/// way a missing or forbidden function is a missing dependency: the outbox fails the one
/// delivery whose secret it cannot read, not its whole round.
fn direct_function(client: &SpiClient<'_>, function: &str, args: &str) -> CoreResult<String> {
    let signature = format!("{function}({args})");
    let may = client
        .select(
            "SELECT pg_catalog.has_function_privilege(pg_catalog.to_regprocedure($1), 'EXECUTE')",
            Some(1),
            &[signature.as_str().into()],
        )?
        .first()
        .get_one::<bool>()?;
    let missing = |dependency: String, hint: String| CoreError::MissingDependency {
        feature: "flowgate's secrets".into(),
        dependency,
        hint,
    };
    match may {
        Some(true) => Ok(function.to_owned()),
        Some(false) => Err(missing(
            format!("EXECUTE on {signature}"),
            format!("GRANT EXECUTE ON FUNCTION {signature} to the owner of flowgate's functions"),
        )),
        None => Err(missing(
            signature,
            "install (or update) the extension that provides it".into(),
        )),
    }
}

/// A direct call that could not be made (the function changed shape under its name).
fn direct_call_failed(function: &str, e: &FnCallError) -> CoreError {
    CoreError::MissingDependency {
        feature: "flowgate's secrets".into(),
        dependency: format!("{function} as flowgate calls it ({e})"),
        hint: "install a version of the extension that provides it".into(),
    }
}

/// What a failed Vault read means. Vault decrypts in its view: a data exception (class 22:
/// pgsodium's "invalid ciphertext", text that is not UTF-8) is a secret stored under another
/// root key (a backup restored elsewhere); a refused read is a missing grant; a lock or
/// statement timeout, a deadlock or a serialization failure is passing, and the caller's round
/// is retried; anything else (a Vault that cannot load its root key) is a missing dependency of
/// the deliveries that name a secret, never a failure of every round.
pub fn vault_read_failed(name: &str, caught: &super::subxact::Caught) -> CoreError {
    let feature = format!("reading secret {name:?}");
    if caught.sqlstate.starts_with("22") {
        CoreError::MissingDependency {
            feature,
            dependency: "the Vault key it was stored with".into(),
            hint: "restore the database's Vault root key, or store the secret again with flowgate.set_secret()".into(),
        }
    } else if caught.sqlstate.starts_with("42") {
        CoreError::MissingDependency {
            feature,
            dependency: "read access to vault.decrypted_secrets".into(),
            hint: "GRANT SELECT ON vault.decrypted_secrets to the role that runs the outbox (the owner of flowgate's functions)".into(),
        }
    } else if matches!(
        caught.sqlstate.as_str(),
        "55P03" | "40P01" | "40001" | "57014"
    ) || caught.sqlstate.starts_with("53")
    {
        CoreError::Busy {
            what: format!("{feature} from Vault (SQLSTATE {})", caught.sqlstate),
            hint: "a passing failure (a lock or statement timeout); the next round reads it again"
                .into(),
        }
    } else {
        CoreError::MissingDependency {
            feature,
            dependency: format!("a Vault that can decrypt (it raised SQLSTATE {})", caught.sqlstate),
            hint: "check supabase_vault's root key (its getkey script or pgsodium's server key) in the server log".into(),
        }
    }
}

/// A value stored in place of a secret's own while Vault creates its row: Vault 0.3 inserts the
/// value it is given as it is and encrypts it in a second statement, so the first row version,
/// in the WAL and until vacuum in the table's page, would hold the secret in plain text. Only
/// this placeholder is written that way; the secret itself goes in by `vault.update_secret`,
/// which writes ciphertext only.
const VAULT_PLACEHOLDER: &str = "flowgate: value being stored";

/// Create or update the Vault secret called `name`; returns its id. Idempotent: Vault refuses a
/// second secret of one name (unique index `secrets_name_idx`), so an existing one is updated
/// (whoever created it: a Vault secret of that name is the one deliveries send). One that
/// cannot be decrypted (stored under another root key, from a backup restored here; Vault
/// decrypts it before an update) is replaced: its value is lost anyway, and a new one is what
/// the caller is storing.
pub fn vault_upsert(
    client: &mut SpiClient<'_>,
    name: &str,
    value: &str,
    description: &str,
) -> CoreResult<String> {
    let existing = super::prepared::first_text(client.select(
        "SELECT id::text FROM vault.secrets WHERE name = $1",
        Some(1),
        &[name.into()],
    )?)?;
    let id = match existing {
        Some(id) if vault_readable(&id)? => id,
        Some(unreadable) => {
            client.update(
                "DELETE FROM vault.secrets WHERE id = $1::uuid",
                None,
                &[unreadable.as_str().into()],
            )?;
            vault_create(client, name, description)?
        }
        None => vault_create(client, name, description)?,
    };
    // Called directly, not by a statement of flowgate's: the value is never its parameter.
    // (Vault's own function binds it in its UPDATE; README, "Secrets".)
    let f = direct_function(
        client,
        "vault.update_secret",
        "uuid, text, text, text, uuid",
    )?;
    let uuid = pgrx::Uuid::from_slice(
        uuid::Uuid::parse_str(&id)
            .map_err(|_| CoreError::Internal(format!("Vault returned secret id {id:?}")))?
            .as_bytes(),
    )
    .map_err(CoreError::Internal)?;
    fn_call::<()>(
        &f,
        &[
            &Arg::Value(uuid),
            &Arg::Value(value),
            &Arg::<&str>::Default,
            &Arg::<&str>::Default,
            &Arg::<pgrx::Uuid>::Default,
        ],
    )
    .map_err(|e| direct_call_failed(&f, &e))?;
    Ok(id)
}

/// A new Vault secret called `name` holding [`VAULT_PLACEHOLDER`]; its id.
fn vault_create(client: &mut SpiClient<'_>, name: &str, description: &str) -> CoreResult<String> {
    super::prepared::first_text(client.update(
        "SELECT vault.create_secret($1, $2, $3)::text",
        None,
        &[VAULT_PLACEHOLDER.into(), name.into(), description.into()],
    )?)?
    .ok_or_else(|| CoreError::Internal(format!("Vault returned no id for secret {name:?}")))
}

/// Whether Vault can decrypt the secret `id` (a data exception when it was stored under another
/// root key; any other failure is the caller's).
fn vault_readable(id: &str) -> CoreResult<bool> {
    let read = super::subxact::run(|| {
        pgrx::Spi::connect_mut(|c| {
            super::prepared::exec(
                c,
                "SELECT length(decrypted_secret) FROM vault.decrypted_secrets WHERE id = $1::uuid",
                &[id.into()],
            )
            .map(|_| ())
        })
    });
    match read {
        Ok(Ok(())) => Ok(true),
        Ok(Err(e)) => Err(e),
        Err(caught) if caught.sqlstate.starts_with("22") => Ok(false),
        Err(caught) => Err(vault_read_failed(id, &caught)),
    }
}

/// Check a secret's name.
pub fn check_name(name: &str) -> CoreResult<()> {
    let ok = (1..=128).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        return Ok(());
    }
    Err(CoreError::invalid(
        "secret name",
        format!("{:?}", name.chars().take(64).collect::<String>()),
        "1 to 128 of A-Za-z0-9_.-, starting with a letter",
    ))
}

/// Check a secret's value without ever echoing it: it must travel in an HTTP header, so only
/// visible ASCII and inner spaces, 1 to [`MAX_SECRET_BYTES`] bytes.
pub fn check_value(name: &str, value: &str) -> CoreResult<()> {
    let what = format!("value of secret {name:?}");
    let allowed = format!(
        "1 to {MAX_SECRET_BYTES} bytes of visible ASCII (what an HTTP header can carry), no leading or trailing space"
    );
    if value.is_empty() || value.len() > MAX_SECRET_BYTES {
        return Err(CoreError::invalid(
            what,
            format!("it is {} bytes", value.len()),
            allowed,
        ));
    }
    if let Some(pos) = value
        .chars()
        .position(|c| !(c.is_ascii_graphic() || c == ' '))
    {
        return Err(CoreError::invalid(
            what,
            format!(
                "character {} is a control or non-ASCII character (the value is not shown)",
                pos + 1
            ),
            allowed,
        ));
    }
    if value.starts_with(' ') || value.ends_with(' ') {
        return Err(CoreError::invalid(
            what,
            "it starts or ends with a space (the value is not shown)",
            allowed,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use crate::core::error::SqlError;

    #[test]
    fn values_that_cannot_travel_in_a_header_are_refused_without_being_echoed() {
        assert!(check_value("slack_bot_token", "xoxb-1234-abcd").is_ok());
        assert!(check_value("k", "Bearer-ish with inner spaces").is_ok());
        for bad in [
            "sk_live_…",
            "tab\there",
            "new\nline",
            "",
            " lead-XQ1",
            "trail-XQ2 ",
            "\u{7f}del",
        ] {
            let e = check_value("api_key", bad).unwrap_err();
            assert_eq!(e.sqlstate(), "22023", "{bad:?}");
            let shown = format!("{e} {}", e.hint().unwrap_or_default());
            if bad.len() > 2 {
                assert!(!shown.contains(bad.trim()), "{bad:?} echoed in {shown}");
            }
        }
        let long = "a".repeat(MAX_SECRET_BYTES + 1);
        assert_eq!(check_value("k", &long).unwrap_err().sqlstate(), "22023");
        assert!(check_name("slack_bot_token").is_ok());
        for bad in ["", "1abc", "a b", "a;drop", &"a".repeat(129)] {
            assert_eq!(check_name(bad).unwrap_err().sqlstate(), "22023");
        }
    }
}
