//! Secrets at rest: Supabase Vault when it is installed, else pgcrypto's `pgp_sym_encrypt` under a
//! passphrase that lives only in the server configuration (`flowgate.tenant_key_passphrase`:
//! superuser-only, hidden from SHOW ALL, never in a dump). Neither a table read nor pg_dump
//! reveals a value, and no value is ever put into an error, a notice or a log line.
//!
//! Named secrets (`flowgate.set_secret`: bot tokens, API keys for deliveries) and the modules'
//! own secrets (tenant keys) are kept the same way.

use std::ffi::CString;

use pgrx::spi::SpiClient;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

use super::error::{CoreError, CoreResult};

static PASSPHRASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Longest secret value accepted, in bytes.
pub const MAX_SECRET_BYTES: usize = 8192;

/// Register `flowgate.tenant_key_passphrase` (every backend that loads flowgate).
pub fn init() {
    GucRegistry::define_string_guc(
        c"flowgate.tenant_key_passphrase",
        c"Passphrase that encrypts flowgate's secrets (named secrets, tenant keys) with pgcrypto when Supabase Vault is not installed.",
        c"Set it in postgresql.conf (superuser-only; not shown by SHOW ALL; never in a dump). Changing it makes stored secrets unreadable.",
        &PASSPHRASE,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL | GucFlags::NO_RESET_ALL,
    );
}

/// The passphrase, when it is set and long enough.
pub fn passphrase(feature: &str) -> CoreResult<String> {
    PASSPHRASE
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .filter(|p| p.len() >= 16)
        .ok_or_else(|| CoreError::MissingDependency {
            feature: format!("{feature} without Supabase Vault"),
            dependency: "flowgate.tenant_key_passphrase (at least 16 characters)".into(),
            hint: "install Supabase Vault, or set flowgate.tenant_key_passphrase in postgresql.conf and reload".into(),
        })
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
            "SELECT to_regproc('vault.create_secret') IS NOT NULL AND to_regclass('vault.decrypted_secrets') IS NOT NULL",
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

/// Create or update the Vault secret called `name`; returns its id. Idempotent: Vault refuses a
/// second secret of one name (unique index `secrets_name_idx`), so an existing one is updated.
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
        Some(id) => {
            client.update(
                "SELECT vault.update_secret($1::uuid, $2)",
                None,
                &[id.as_str().into(), value.into()],
            )?;
            Some(id)
        }
        None => super::prepared::first_text(client.update(
            "SELECT vault.create_secret($1, $2, $3)::text",
            None,
            &[value.into(), name.into(), description.into()],
        )?)?,
    };
    id.ok_or_else(|| CoreError::Internal(format!("Vault returned no id for secret {name:?}")))
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
