//! The environment's own record: environment_event, incident_opened, incident_resolved,
//! recovery_drill. Each may name a release; none needs one.

use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use super::{first_text, log_environment, read, write, Applied, Apply, EnvironmentLog};
use crate::ops::envelope::{EnvironmentEvent, IncidentOpened, IncidentResolved, RecoveryDrill};
use crate::ops::error::{OpsError, OpsResult};

/// 404 unless the deployment named exists.
fn check_deployment_ref(client: &SpiClient<'_>, deployment_id: Option<&str>) -> OpsResult<()> {
    if let Some(d) = deployment_id {
        let t = read(
            client,
            "SELECT 1 FROM ops.deployments WHERE deployment_id = $1::uuid",
            &[Some(d)],
        )?;
        if t.is_empty() {
            return Err(OpsError::UnknownReference {
                kind: "deployment".into(),
                id: d.to_owned(),
            });
        }
    }
    Ok(())
}

pub(super) fn event(
    client: &mut SpiClient<'_>,
    ctx: &Apply<'_>,
    r: Option<&str>,
    b: &EnvironmentEvent,
    out: &mut Applied,
) -> OpsResult<()> {
    check_deployment_ref(client, b.deployment_id.as_deref())?;
    let log = EnvironmentLog {
        environment: &b.environment,
        kind: &b.event_kind,
        release_id: r,
        deployment_id: b.deployment_id.as_deref(),
        detail: b.detail.clone().map_or(json!({}), Value::Object),
    };
    log_environment(client, ctx, &log)?;
    out.set("environment", b.environment.as_str());
    Ok(())
}

/// A new open incident (409 when its id exists).
pub(super) fn open(
    client: &mut SpiClient<'_>,
    ctx: &Apply<'_>,
    r: Option<&str>,
    b: &IncidentOpened,
    out: &mut Applied,
) -> OpsResult<()> {
    check_deployment_ref(client, b.deployment_id.as_deref())?;
    let t = write(
        client,
        "INSERT INTO ops.incidents (incident_id, environment, release_id, deployment_id, severity, summary, opened_by, ingest_id) \
         VALUES (coalesce($1::uuid, gen_random_uuid()), $2, $3::uuid, $4::uuid, $5, $6, $7, $8::uuid) \
         ON CONFLICT (incident_id) DO NOTHING RETURNING incident_id::text",
        &[
            b.incident_id.as_deref(),
            Some(&b.environment),
            r,
            b.deployment_id.as_deref(),
            Some(&b.severity),
            Some(&b.summary),
            Some(&ctx.caller.actor_id),
            Some(ctx.ingest_id),
        ],
    )?;
    let id = first_text(t)?.ok_or_else(|| {
        OpsError::Conflict(format!(
            "incident {} already exists",
            b.incident_id.as_deref().unwrap_or_default()
        ))
    })?;
    let log = EnvironmentLog {
        environment: &b.environment,
        kind: "incident_opened",
        release_id: r,
        deployment_id: b.deployment_id.as_deref(),
        detail: json!({"incident_id": id, "severity": b.severity}),
    };
    log_environment(client, ctx, &log)?;
    out.set("incident_id", id);
    Ok(())
}

/// open -> resolved, logged under the incident's own environment and release.
pub(super) fn resolve(
    client: &mut SpiClient<'_>,
    ctx: &Apply<'_>,
    b: &IncidentResolved,
    out: &mut Applied,
) -> OpsResult<()> {
    let t = write(
        client,
        "UPDATE ops.incidents SET status = 'resolved', resolved_at = now(), resolution = $2 \
          WHERE incident_id = $1::uuid AND status = 'open' RETURNING environment, release_id::text",
        &[Some(&b.incident_id), b.resolution.as_deref()],
    )?;
    if t.is_empty() {
        let exists = read(
            client,
            "SELECT 1 FROM ops.incidents WHERE incident_id = $1::uuid",
            &[Some(&b.incident_id)],
        )?;
        return Err(if exists.is_empty() {
            OpsError::UnknownReference {
                kind: "incident".into(),
                id: b.incident_id.clone(),
            }
        } else {
            OpsError::Conflict(format!("incident {} is already resolved", b.incident_id))
        });
    }
    let (environment, incident_release) = t.first().get_two::<String, String>()?;
    let environment = environment.unwrap_or_default();
    let log = EnvironmentLog {
        environment: &environment,
        kind: "incident_resolved",
        release_id: incident_release.as_deref(),
        deployment_id: None,
        detail: json!({"incident_id": b.incident_id}),
    };
    log_environment(client, ctx, &log)?;
    out.set("incident_id", b.incident_id.as_str());
    Ok(())
}

pub(super) fn drill(
    client: &mut SpiClient<'_>,
    ctx: &Apply<'_>,
    r: Option<&str>,
    b: &RecoveryDrill,
    out: &mut Applied,
) -> OpsResult<()> {
    let rto = b.rto_seconds.map(|v| v.to_string());
    let rpo = b.rpo_seconds.map(|v| v.to_string());
    let t = write(
        client,
        "INSERT INTO ops.recovery_drills (environment, release_id, drill_type, outcome, rto_seconds, rpo_seconds, \
                                          evidence_uri, performed_by, ingest_id) \
         VALUES ($1, $2::uuid, $3, $4, $5::int, $6::int, $7, $8, $9::uuid) RETURNING drill_id::text",
        &[
            Some(&b.environment),
            r,
            Some(&b.drill_type),
            Some(&b.outcome),
            rto.as_deref(),
            rpo.as_deref(),
            b.uri.as_deref(),
            Some(&ctx.caller.actor_id),
            Some(ctx.ingest_id),
        ],
    )?;
    let id = first_text(t)?.unwrap_or_default();
    let log = EnvironmentLog {
        environment: &b.environment,
        kind: "recovery_drill",
        release_id: r,
        deployment_id: None,
        detail: json!({"drill_id": id, "drill_type": b.drill_type, "outcome": b.outcome}),
    };
    log_environment(client, ctx, &log)?;
    out.set("drill_id", id);
    Ok(())
}
