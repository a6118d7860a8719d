//! A release and its gates: release_created, gate_configured.

use pgrx::spi::SpiClient;
use serde_json::json;

use super::{unknown_gate, write, Applied, Apply};
use crate::core::prepared::{self, TEXT};
use crate::ops::envelope::{Envelope, GateRequirements, ReleaseCreated};
use crate::ops::error::{OpsError, OpsResult};

/// A new release with its four gates (409 when the release exists).
pub(super) fn created(
    client: &mut SpiClient<'_>,
    ctx: &Apply<'_>,
    env: &Envelope,
    r: &str,
    b: &ReleaseCreated,
    out: &mut Applied,
) -> OpsResult<()> {
    let created_by = ctx.caller.identity("created_by", &b.created_by)?;
    let t = write(
        client,
        "INSERT INTO ops.releases (release_id, version, title, repository, commit_sha, created_by, source_system, ingest_id) \
         VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8::uuid) ON CONFLICT (release_id) DO NOTHING RETURNING release_id",
        &[
            Some(r),
            Some(&b.version),
            b.title.as_deref(),
            b.repository.as_deref(),
            b.commit_sha.as_deref(),
            Some(&created_by),
            Some(&env.source_system),
            Some(ctx.ingest_id),
        ],
    )?;
    if t.is_empty() {
        return Err(OpsError::Conflict(format!(
            "release {r} already exists; release_created is sent once per release"
        )));
    }
    write(
        client,
        "INSERT INTO ops.release_gates (release_id, gate_code) \
         SELECT $1::uuid, g FROM unnest(ARRAY['G1', 'G2', 'G3', 'G4']) AS g",
        &[Some(r)],
    )?;
    out.set("version", json!(b.version));
    Ok(())
}

/// A gate's required checks, replaced by the names sent (sorted, each once).
pub(super) fn configured(
    client: &mut SpiClient<'_>,
    r: &str,
    b: &GateRequirements,
    out: &mut Applied,
) -> OpsResult<()> {
    let mut names = b.required_checks.clone();
    names.sort();
    names.dedup();
    let t = prepared::run(
        client,
        "UPDATE ops.release_gates SET required_checks = $3 \
          WHERE release_id = $1::uuid AND gate_code = $2 RETURNING gate_id",
        &[TEXT, TEXT, prepared::TEXT_ARRAY],
        &[r.into(), b.gate.as_str().into(), names.clone().into()],
    )?;
    if t.is_empty() {
        return Err(unknown_gate(r, b.gate));
    }
    out.set("gate_code", b.gate.as_str());
    out.set("required_checks", json!(names));
    Ok(())
}
