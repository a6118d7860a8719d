//! Deployments: deployment_started, deployment_finished, health_check, rollback.

use pgrx::spi::SpiClient;
use serde_json::json;

use super::{
    first_text, gate_id, insert_artifact, log_environment, write, Applied, Apply, EnvironmentLog,
};
use crate::ops::envelope::{
    Artifact, DeploymentFinished, DeploymentStarted, HealthCheck, Rollback,
};
use crate::ops::error::{OpsError, OpsResult};
use crate::ops::evaluation;
use crate::ops::gates::GateCode;

/// A deployment of this release, locked: (environment, status).
fn lock_deployment(
    client: &mut SpiClient<'_>,
    release_id: &str,
    deployment_id: &str,
) -> OpsResult<(String, String)> {
    let t = write(
        client,
        "SELECT environment, status FROM ops.deployments \
          WHERE deployment_id = $1::uuid AND release_id = $2::uuid FOR UPDATE",
        &[Some(deployment_id), Some(release_id)],
    )?;
    if t.is_empty() {
        return Err(OpsError::UnknownReference {
            kind: "deployment".into(),
            id: format!("{deployment_id} of release {release_id}"),
        });
    }
    let (env, status) = t.first().get_two::<String, String>()?;
    Ok((env.unwrap_or_default(), status.unwrap_or_default()))
}

/// A started deployment, if the release is eligible for the environment (409 otherwise).
pub(super) fn start(
    client: &mut SpiClient<'_>,
    ctx: &Apply<'_>,
    r: &str,
    b: &DeploymentStarted,
    out: &mut Applied,
) -> OpsResult<()> {
    let (ok, blocking) = evaluation::promotion(client, r, &b.environment)?;
    if !ok {
        return Err(OpsError::Conflict(format!(
            "release {r} is not eligible for {}: {}",
            b.environment,
            blocking.join("; ")
        )));
    }
    let t = write(
        client,
        "INSERT INTO ops.deployments (deployment_id, release_id, environment, external_ref, deployed_by, ingest_id) \
         VALUES (coalesce($1::uuid, gen_random_uuid()), $2::uuid, $3, $4, $5, $6::uuid) \
         ON CONFLICT (deployment_id) DO NOTHING RETURNING deployment_id::text",
        &[
            b.deployment_id.as_deref(),
            Some(r),
            Some(&b.environment),
            b.external_ref.as_deref(),
            Some(&ctx.caller.actor_id),
            Some(ctx.ingest_id),
        ],
    )?;
    let id = first_text(t)?.ok_or_else(|| {
        OpsError::Conflict(format!(
            "deployment {} already exists",
            b.deployment_id.as_deref().unwrap_or_default()
        ))
    })?;
    let log = EnvironmentLog {
        environment: &b.environment,
        kind: "deployment_started",
        release_id: Some(r),
        deployment_id: Some(&id),
        detail: json!({}),
    };
    log_environment(client, ctx, &log)?;
    out.set("deployment_id", id);
    out.set("environment", b.environment.as_str());
    Ok(())
}

/// started -> succeeded | failed; a success moves the release to in_staging or in_production.
pub(super) fn finish(
    client: &mut SpiClient<'_>,
    ctx: &Apply<'_>,
    r: &str,
    b: &DeploymentFinished,
    out: &mut Applied,
) -> OpsResult<()> {
    let (environment, status) = lock_deployment(client, r, &b.deployment_id)?;
    if status != "started" {
        return Err(OpsError::Conflict(format!(
            "deployment {} is already {status}",
            b.deployment_id
        )));
    }
    write(
        client,
        "UPDATE ops.deployments SET status = $2, finished_at = clock_timestamp() WHERE deployment_id = $1::uuid",
        &[Some(&b.deployment_id), Some(&b.status)],
    )?;
    if b.status == "succeeded" {
        write(
            client,
            "UPDATE ops.releases SET updated_at = now(), status = CASE \
                 WHEN $2 = 'production' THEN 'in_production' \
                 WHEN $2 = 'staging' AND status = 'open' THEN 'in_staging' ELSE status END \
              WHERE release_id = $1::uuid",
            &[Some(r), Some(&environment)],
        )?;
    }
    let kind = format!("deployment_{}", b.status);
    let log = EnvironmentLog {
        environment: &environment,
        kind: &kind,
        release_id: Some(r),
        deployment_id: Some(&b.deployment_id),
        detail: json!({}),
    };
    log_environment(client, ctx, &log)?;
    out.set("deployment_id", b.deployment_id.as_str());
    out.set("deployment_status", b.status.as_str());
    Ok(())
}

/// G4's result on a succeeded deployment, with its report as G4 evidence.
pub(super) fn health(
    client: &mut SpiClient<'_>,
    ctx: &Apply<'_>,
    r: &str,
    b: &HealthCheck,
    out: &mut Applied,
) -> OpsResult<()> {
    let (environment, status) = lock_deployment(client, r, &b.deployment_id)?;
    if status != "succeeded" {
        return Err(OpsError::Conflict(format!(
            "deployment {} is {status}; health checks follow a succeeded deployment",
            b.deployment_id
        )));
    }
    let g4 = if b.status == "pass" {
        "passed"
    } else {
        "failed"
    };
    write(
        client,
        "UPDATE ops.deployments SET g4_status = $2 WHERE deployment_id = $1::uuid",
        &[Some(&b.deployment_id), Some(g4)],
    )?;
    let g = gate_id(client, r, GateCode::G4)?;
    let a = Artifact {
        artifact_type: "health_check".into(),
        uri: b.uri.clone(),
        sha256: None,
        description: Some(format!("{environment} health check: {}", b.status)),
    };
    insert_artifact(client, ctx, r, Some(&g), None, &a, &ctx.caller.actor_id)?;
    let log = EnvironmentLog {
        environment: &environment,
        kind: "health_check",
        release_id: Some(r),
        deployment_id: Some(&b.deployment_id),
        detail: b
            .details
            .clone()
            .map_or(json!({}), serde_json::Value::Object),
    };
    log_environment(client, ctx, &log)?;
    out.set("deployment_id", b.deployment_id.as_str());
    out.set("g4_status", g4);
    out.attach_gate = Some(GateCode::G4);
    Ok(())
}

/// A finished deployment rolled back, and the release with it.
pub(super) fn roll_back(
    client: &mut SpiClient<'_>,
    ctx: &Apply<'_>,
    r: &str,
    b: &Rollback,
    out: &mut Applied,
) -> OpsResult<()> {
    let (environment, status) = lock_deployment(client, r, &b.deployment_id)?;
    if status == "rolled_back" || status == "started" {
        return Err(OpsError::Conflict(format!(
            "deployment {} is {status}; only a finished deployment is rolled back",
            b.deployment_id
        )));
    }
    write(
        client,
        "UPDATE ops.deployments SET status = 'rolled_back', rolled_back_at = clock_timestamp(), rollback_reason = $2 \
          WHERE deployment_id = $1::uuid",
        &[Some(&b.deployment_id), Some(&b.reason)],
    )?;
    write(
        client,
        "UPDATE ops.releases SET status = 'rolled_back', updated_at = now() WHERE release_id = $1::uuid",
        &[Some(r)],
    )?;
    let log = EnvironmentLog {
        environment: &environment,
        kind: "rollback",
        release_id: Some(r),
        deployment_id: Some(&b.deployment_id),
        detail: json!({"reason": b.reason}),
    };
    log_environment(client, ctx, &log)?;
    out.set("deployment_id", b.deployment_id.as_str());
    out.set("deployment_status", "rolled_back");
    Ok(())
}
