//! The ledger's storage: `intake.transactions`, written once per idempotency key.

use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::{json, Value};

use crate::core::error::{CoreError, CoreResult};
use crate::core::prepared;
use crate::intake::ledger;

/// Write a ledger entry once per idempotency key. The same key again returns the first row
/// (`duplicate`); the same key with different contents, or a resource already finalized under
/// another key, is 23505.
pub fn finalize(client: &mut SpiClient<'_>, e: &ledger::Entry) -> CoreResult<Value> {
    check_resource_free(client, e)?;
    let row_json = "jsonb_build_object('idempotency_key', idempotency_key, 'pool_id', pool_id, 'msg_id', msg_id, 'slot', slot, \
                    'resource_id', resource_id, 'user_id', user_id, 'finalized_at', finalized_at)";
    let inserted = prepared::exec(client, &format!(
            "INSERT INTO intake.transactions (idempotency_key, pool_id, msg_id, slot, resource_id, user_id, validation, details) \
             VALUES ($1, $2, $3, $4, $5::uuid, $6, $7, $8) ON CONFLICT (idempotency_key) DO NOTHING RETURNING {row_json}"
        ), &[
            e.idempotency_key.as_str().into(),
            e.pool_id.as_str().into(),
            e.msg_id.into(),
            e.slot.into(),
            e.resource_id.as_str().into(),
            e.user_id.as_str().into(),
            e.validation.clone().map(JsonB).into(),
            JsonB(Value::Object(e.details.clone())).into(),
        ],
    )?;
    if !inserted.is_empty() {
        let row = inserted
            .first()
            .get_one::<JsonB>()?
            .map(|j| j.0)
            .unwrap_or(Value::Null);
        return Ok(json!({"status": "finalized", "transaction": row}));
    }
    // Its own statement and snapshot: the conflicting row may have been committed while the
    // insert waited for it (see core::outbox::store::enqueue).
    let existing = prepared::exec(client, &format!(
            "SELECT {row_json}, (pool_id, resource_id::text, user_id) = ($2, $3, $4) FROM intake.transactions WHERE idempotency_key = $1"
        ), &[
            e.idempotency_key.as_str().into(),
            e.pool_id.as_str().into(),
            e.resource_id.as_str().into(),
            e.user_id.as_str().into(),
        ],
    )?;
    if existing.is_empty() {
        return Err(CoreError::Busy {
            what: format!("ledger idempotency key {}", e.idempotency_key),
            hint: "its entry was deleted while this one was written: send it again".into(),
        });
    }
    let (row, same) = existing.first().get_two::<JsonB, bool>()?;
    if same != Some(true) {
        return Err(CoreError::Duplicate {
            kind: "ledger idempotency key (for another pool, resource or user)".into(),
            key: e.idempotency_key.clone(),
        });
    }
    Ok(json!({"status": "duplicate", "transaction": row.map(|j| j.0).unwrap_or(Value::Null)}))
}

/// Check that a resource is not already in the ledger under another key (so the raw unique
/// violation never reaches a caller).
pub fn check_resource_free(client: &SpiClient<'_>, e: &ledger::Entry) -> CoreResult<()> {
    let rows = prepared::read(client, "SELECT idempotency_key FROM intake.transactions WHERE pool_id = $1 AND resource_id = $2::uuid AND idempotency_key <> $3", &[e.pool_id.as_str().into(), e.resource_id.as_str().into(), e.idempotency_key.as_str().into()],
    )?;
    if rows.is_empty() {
        Ok(())
    } else {
        Err(CoreError::Duplicate {
            kind: format!("ledger entry for resource {} of pool", e.resource_id),
            key: e.pool_id.clone(),
        })
    }
}
