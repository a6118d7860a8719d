//! Tenant secrets (the project's anon and service_role keys, its database password), stored
//! encrypted: in Supabase Vault when it is installed, else with pgcrypto's `pgp_sym_encrypt`
//! under a passphrase that lives only in the server configuration (`flowgate.tenant_key_passphrase`,
//! superuser-only, hidden from SHOW ALL), so neither pg_dump nor a table read reveals them.

use std::ffi::CString;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

use crate::core::error::{CoreError, CoreResult};

static PASSPHRASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Register `flowgate.tenant_key_passphrase` (every backend that loads flowgate).
pub fn init() {
    GucRegistry::define_string_guc(
        c"flowgate.tenant_key_passphrase",
        c"Passphrase that encrypts tenant keys with pgcrypto when Supabase Vault is not installed.",
        c"Set it in postgresql.conf (superuser-only; not shown by SHOW ALL; never in a dump). Changing it makes stored keys unreadable.",
        &PASSPHRASE,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL | GucFlags::NO_RESET_ALL,
    );
}

fn passphrase() -> CoreResult<String> {
    PASSPHRASE
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .filter(|p| p.len() >= 16)
        .ok_or_else(|| CoreError::MissingDependency {
            feature: "storing tenant keys without Supabase Vault".into(),
            dependency: "flowgate.tenant_key_passphrase (at least 16 characters)".into(),
            hint: "install Supabase Vault, or set flowgate.tenant_key_passphrase in postgresql.conf and reload".into(),
        })
}

/// Where keys go: "vault" or "pgcrypto" (with the schema pgcrypto lives in).
pub enum Storage {
    Vault,
    Pgcrypto(String),
}

/// The schema pgcrypto is installed in, if it is.
fn pgcrypto_schema(client: &SpiClient<'_>) -> CoreResult<Option<String>> {
    let t = client.select(
        "SELECT n.nspname::text FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
          WHERE e.extname = 'pgcrypto'",
        None,
        &[],
    )?;
    crate::core::prepared::first_text(t)
}

pub fn storage(client: &SpiClient<'_>) -> CoreResult<Storage> {
    let vault = client
        .select(
            "SELECT to_regproc('vault.create_secret') IS NOT NULL",
            None,
            &[],
        )?
        .first()
        .get_one::<bool>()?;
    if vault == Some(true) {
        return Ok(Storage::Vault);
    }
    match pgcrypto_schema(client)? {
        Some(schema) => Ok(Storage::Pgcrypto(schema)),
        None => Err(CoreError::MissingDependency {
            feature: "storing tenant keys".into(),
            dependency: "Supabase Vault or pgcrypto".into(),
            hint: "CREATE EXTENSION pgcrypto (and set flowgate.tenant_key_passphrase), or install Supabase Vault".into(),
        }),
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Store one secret of a client in column family `what` (anon_key, service_key, db_pass).
pub fn store(
    client: &mut SpiClient<'_>,
    client_id: &str,
    slug: &str,
    what: &str,
    secret: &str,
) -> CoreResult<()> {
    let (enc_col, id_col) = match what {
        "anon_key" => ("anon_key_encrypted", "anon_key_secret_id"),
        "service_key" => ("service_key_encrypted", "service_key_secret_id"),
        "db_pass" => ("db_pass_encrypted", "db_pass_secret_id"),
        other => {
            return Err(CoreError::Internal(format!(
                "unknown tenant secret {other}"
            )))
        }
    };
    match storage(client)? {
        Storage::Vault => {
            let name = format!("provisioning/{slug}/{what}");
            client.update(
                &format!(
                    "UPDATE provisioning.clients SET {id_col} = vault.create_secret($2, $3, 'flowgate tenant secret'), \
                            {enc_col} = NULL, key_storage = 'vault' WHERE client_id = $1::uuid"
                ),
                None,
                &[client_id.into(), secret.into(), name.as_str().into()],
            )?;
        }
        Storage::Pgcrypto(schema) => {
            let pass = passphrase()?;
            client.update(
                &format!(
                    "UPDATE provisioning.clients SET {enc_col} = {}.pgp_sym_encrypt($2, $3, 'cipher-algo=aes256'), \
                            {id_col} = NULL, key_storage = 'pgcrypto' WHERE client_id = $1::uuid",
                    quote_ident(&schema)
                ),
                None,
                &[client_id.into(), secret.into(), pass.as_str().into()],
            )?;
        }
    }
    Ok(())
}

/// The decrypted secrets of a client: (anon_key, service_key, db_pass).
pub fn read(client_id: &str) -> CoreResult<(Option<String>, Option<String>, Option<String>)> {
    Spi::connect(|client| {
        let t = client.select(
            "SELECT key_storage FROM provisioning.clients WHERE client_id = $1::uuid",
            None,
            &[client_id.into()],
        )?;
        if t.is_empty() {
            return Err(CoreError::not_found("client", client_id));
        }
        let t = match t.first().get_one::<String>()?.as_deref() {
            None => return Ok((None, None, None)),
            Some("vault") => client.select(
                "SELECT (SELECT decrypted_secret FROM vault.decrypted_secrets WHERE id = c.anon_key_secret_id), \
                        (SELECT decrypted_secret FROM vault.decrypted_secrets WHERE id = c.service_key_secret_id), \
                        (SELECT decrypted_secret FROM vault.decrypted_secrets WHERE id = c.db_pass_secret_id) \
                   FROM provisioning.clients c WHERE c.client_id = $1::uuid",
                None,
                &[client_id.into()],
            )?,
            Some(_) => {
                let schema = pgcrypto_schema(client)?.ok_or_else(|| CoreError::MissingDependency {
                    feature: "reading tenant keys".into(),
                    dependency: "pgcrypto".into(),
                    hint: "the keys were stored with pgcrypto; CREATE EXTENSION pgcrypto".into(),
                })?;
                let pass = passphrase()?;
                let s = quote_ident(&schema);
                client.select(
                    &format!(
                        "SELECT {s}.pgp_sym_decrypt(anon_key_encrypted, $2), {s}.pgp_sym_decrypt(service_key_encrypted, $2), \
                                {s}.pgp_sym_decrypt(db_pass_encrypted, $2) FROM provisioning.clients WHERE client_id = $1::uuid"
                    ),
                    None,
                    &[client_id.into(), pass.as_str().into()],
                )?
            }
        };
        Ok(t.first().get_three::<String, String, String>()?)
    })
}
