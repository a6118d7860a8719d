//! Tenant secrets (the project's anon and service_role keys, its database password), stored
//! encrypted: in Supabase Vault when it is installed, else with pgcrypto's `pgp_sym_encrypt`
//! under a passphrase that lives only in the server configuration (`flowgate.tenant_key_passphrase`,
//! superuser-only, hidden from SHOW ALL), so neither pg_dump nor a table read reveals them.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::core::error::{CoreError, CoreResult};
use crate::core::secrets::{self, Storage};

fn passphrase(what: &str) -> CoreResult<String> {
    secrets::passphrase(what)
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
    match secrets::storage(client, "storing tenant keys")? {
        Storage::Vault => {
            // The same name on a retry: the secret is updated, never created twice.
            let name = format!("provisioning/{slug}/{what}");
            let id = secrets::vault_upsert(client, &name, secret, "flowgate tenant secret")?;
            client.update(
                &format!(
                    "UPDATE provisioning.clients SET {id_col} = $2::uuid, \
                            {enc_col} = NULL, key_storage = 'vault' WHERE client_id = $1::uuid"
                ),
                None,
                &[client_id.into(), id.as_str().into()],
            )?;
        }
        Storage::Pgcrypto(schema) => {
            let pass = passphrase("storing tenant keys")?;
            // Encrypted here: the statement binds the ciphertext, never the key or the passphrase.
            let sealed = secrets::pgp_encrypt(client, &schema, secret, &pass)?;
            client.update(
                &format!(
                    "UPDATE provisioning.clients SET {enc_col} = $2, \
                            {id_col} = NULL, key_storage = 'pgcrypto' WHERE client_id = $1::uuid"
                ),
                None,
                &[client_id.into(), sealed.as_slice().into()],
            )?;
        }
    }
    Ok(())
}

/// The decrypted secrets of a client: (anon_key, service_key, db_pass). Keys stored under
/// another Vault root key or passphrase (a backup restored elsewhere) are a
/// [`CoreError::MissingDependency`] naming the key, never the decryption's own error.
pub fn read(client_id: &str) -> CoreResult<(Option<String>, Option<String>, Option<String>)> {
    match crate::core::subxact::run(|| read_stored(client_id)) {
        Ok(read) => read,
        Err(caught) if caught.sqlstate.starts_with("22") || caught.sqlstate.starts_with("39") => {
            Err(CoreError::MissingDependency {
                feature: format!("reading the tenant keys of client {client_id}"),
                dependency:
                    "the Vault root key or flowgate.tenant_key_passphrase they were stored with"
                        .into(),
                hint: "restore that key (or passphrase) on this server".into(),
            })
        }
        Err(caught) => Err(secrets::vault_read_failed(
            &format!("tenant keys of client {client_id}"),
            &caught,
        )),
    }
}

fn read_stored(client_id: &str) -> CoreResult<(Option<String>, Option<String>, Option<String>)> {
    Spi::connect(|client| {
        // Each key is read where it was stored: a Vault secret id, else pgcrypto ciphertext.
        // A client's keys can sit in both (some stored before Vault was installed, some after),
        // and `key_storage` names only the storage used last.
        let t = client.select(
            "SELECT anon_key_secret_id::text, service_key_secret_id::text, db_pass_secret_id::text, \
                    anon_key_encrypted, service_key_encrypted, db_pass_encrypted \
               FROM provisioning.clients WHERE client_id = $1::uuid",
            None,
            &[client_id.into()],
        )?;
        if t.is_empty() {
            return Err(CoreError::not_found("client", client_id));
        }
        let row = t.first();
        let stored: [(Option<String>, Option<Vec<u8>>); 3] = [
            (row.get(1)?, row.get(4)?),
            (row.get(2)?, row.get(5)?),
            (row.get(3)?, row.get(6)?),
        ];
        // Looked up once, when a key needs it.
        let mut vault_checked = false;
        let mut pgcrypto: Option<(String, String)> = None;
        let mut open =
            |(id, sealed): (Option<String>, Option<Vec<u8>>)| -> CoreResult<Option<String>> {
                if let Some(id) = id {
                    if !vault_checked && !secrets::vault_installed(client)? {
                        return Err(CoreError::MissingDependency {
                        feature: "reading tenant keys".into(),
                        dependency: "Supabase Vault".into(),
                        hint: "the keys were stored in Vault; install supabase_vault with the root key they were stored under".into(),
                    });
                    }
                    vault_checked = true;
                    return crate::core::prepared::first_text(client.select(
                        "SELECT decrypted_secret FROM vault.decrypted_secrets WHERE id = $1::uuid",
                        Some(1),
                        &[id.as_str().into()],
                    )?);
                }
                let Some(sealed) = sealed else {
                    return Ok(None);
                };
                let (schema, pass) = match pgcrypto.take() {
                    Some(found) => found,
                    None => (
                        secrets::pgcrypto_schema(client)?.ok_or_else(|| {
                            CoreError::MissingDependency {
                                feature: "reading tenant keys".into(),
                                dependency: "pgcrypto".into(),
                                hint:
                                    "the keys were stored with pgcrypto; CREATE EXTENSION pgcrypto"
                                        .into(),
                            }
                        })?,
                        passphrase("reading tenant keys")?,
                    ),
                };
                // Decrypted here (`secrets::pgp_decrypt`): the passphrase is never a statement's
                // parameter.
                let opened = secrets::pgp_decrypt(client, &schema, &sealed, &pass);
                pgcrypto = Some((schema, pass));
                opened.map(Some)
            };
        let [anon, service, db_pass] = stored;
        Ok((open(anon)?, open(service)?, open(db_pass)?))
    })
}
