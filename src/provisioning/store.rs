//! Data access of the provisioning module: the job workflow's tables and effects, onboarding,
//! claiming (one worker per job, expired leases reclaimed), attempt reports and operator resets.

use std::time::Duration;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::{json, Value};

use crate::core::actor::Actor;
use crate::core::error::CoreError;
use crate::core::eventstore::{self, Tables, Workflow};
use crate::core::outbox::policy::RetryPolicy;
use crate::core::prepared::{self, TEXT};
use crate::core::store as core_store;

use super::error::{ProvisioningError, ProvisioningResult};
use super::jobs::{self, Effect, JobEvent, JobFlow};

impl Workflow for JobFlow {
    const TABLES: Tables = Tables {
        projection: "provisioning.client_provisioning_jobs",
        id_column: "job_id",
        id_type: "uuid",
        events: "provisioning.job_events",
        entity_column: "job_id",
        touch_column: Some("updated_at"),
    };

    fn enqueue_effects(
        client: &mut SpiClient<'_>,
        job_id: &str,
        _event: &Value,
        effects: Vec<Effect>,
    ) -> ProvisioningResult<()> {
        if effects.is_empty() {
            return Ok(());
        }
        let t = prepared::query(
            client,
            "SELECT client_id::text FROM provisioning.client_provisioning_jobs WHERE job_id = $1::uuid",
            &[TEXT],
            &[job_id.into()],
        )?;
        let client_id: String = t.first().get_one::<String>()?.unwrap_or_default();
        for effect in effects {
            match effect {
                Effect::ClientStage(stage) => {
                    prepared::run(
                        client,
                        "UPDATE provisioning.clients SET provisioning_status = $2, updated_at = now(), \
                                provisioning_started_at = CASE WHEN $2 = 'queued' THEN provisioning_started_at \
                                                               ELSE coalesce(provisioning_started_at, now()) END, \
                                provisioning_error = CASE WHEN $2 = 'queued' THEN NULL ELSE provisioning_error END \
                          WHERE client_id = $1::uuid",
                        &[TEXT, TEXT],
                        &[client_id.as_str().into(), stage.into()],
                    )?;
                }
                Effect::ClientError(error) => {
                    prepared::run(
                        client,
                        "UPDATE provisioning.clients SET provisioning_error = $2, updated_at = now() WHERE client_id = $1::uuid",
                        &[TEXT, TEXT],
                        &[client_id.as_str().into(), error.into()],
                    )?;
                }
                Effect::ClientErrorCleared => {
                    prepared::run(
                        client,
                        "UPDATE provisioning.clients SET provisioning_error = NULL, updated_at = now() WHERE client_id = $1::uuid",
                        &[TEXT],
                        &[client_id.as_str().into()],
                    )?;
                }
                Effect::ClientFailed(error) => {
                    prepared::run(
                        client,
                        "UPDATE provisioning.clients SET provisioning_status = 'failed', provisioning_error = $2, updated_at = now() \
                          WHERE client_id = $1::uuid",
                        &[TEXT, TEXT],
                        &[client_id.as_str().into(), error.into()],
                    )?;
                    // Nor is the create's copy of the database password kept once the client has
                    // failed (a named secret any delivery could name; the password stays in its
                    // tenant keys): a retry's create stores it again.
                    prepared::run(
                        client,
                        "SELECT flowgate.drop_secret('provisioning.' || slug || '.db_pass') \
                           FROM provisioning.clients WHERE client_id = $1::uuid",
                        &[TEXT],
                        &[client_id.as_str().into()],
                    )?;
                }
                Effect::ClientReady => {
                    prepared::run(
                        client,
                        "UPDATE provisioning.clients SET provisioning_status = 'ready', provisioning_error = NULL, \
                                provisioning_completed_at = now(), updated_at = now() WHERE client_id = $1::uuid",
                        &[TEXT],
                        &[client_id.as_str().into()],
                    )?;
                }
                Effect::Enqueue(job_type) => {
                    enqueue_job(client, &client_id, job_type)?;
                }
            }
        }
        Ok(())
    }
}

/// The database clock as ISO 8601 text (whatever the session's DateStyle: a zone abbreviation
/// such as IST would be read back as another zone), plus an offset (for leases and retry times).
fn clock(client: &SpiClient<'_>, plus: Duration) -> ProvisioningResult<(String, String)> {
    let secs = plus.as_secs_f64().to_string();
    let t = prepared::query(
        client,
        "SELECT to_json(now()) #>> '{}', to_json(now() + make_interval(secs => $1::float8)) #>> '{}'",
        &[TEXT],
        &[secs.as_str().into()],
    )?;
    let (a, b) = t.first().get_two::<String, String>()?;
    Ok((a.unwrap_or_default(), b.unwrap_or_default()))
}

fn apply(job_id: &str, event: JobEvent) -> ProvisioningResult<Value> {
    let applied = eventstore::apply::<JobFlow>(job_id, &event, &Actor::system(), None)?;
    Ok(applied.row)
}

/// Add a queued job for a client (its first attempt due now).
pub fn enqueue_job(
    client: &mut SpiClient<'_>,
    client_id: &str,
    job_type: &str,
) -> ProvisioningResult<Value> {
    let max_attempts = core_store::get_i64("provisioning.max_attempts")? as i32;
    let (now, _) = clock(client, Duration::ZERO)?;
    let t = prepared::query(client, "SELECT gen_random_uuid()::text", &[], &[])?;
    let job_id: String = t.first().get_one::<String>()?.unwrap_or_default();
    apply(
        &job_id,
        JobEvent::Enqueued {
            client_id: client_id.to_owned(),
            job_type: job_type.to_owned(),
            max_attempts,
            at: now,
        },
    )
}

/// Queue a schema_sync job for every ready client (or the one named) that is behind the newest
/// migration and has no open schema_sync job, so migrations added later reach tenants that were
/// already provisioned. Returns `{target_version, queued: [client ids]}`.
pub fn sync_schema(only: Option<&str>) -> ProvisioningResult<Value> {
    let only = only.map(client_id_of).transpose()?;
    Spi::connect_mut(|client| {
        let target = client
            .select(
                "SELECT coalesce(max(version), 0) FROM provisioning.migrations",
                None,
                &[],
            )?
            .first()
            .get_one::<i32>()?
            .unwrap_or(0);
        let behind = client.select(
            "SELECT c.client_id::text FROM provisioning.clients c \
              WHERE c.provisioning_status = 'ready' AND coalesce(c.schema_version, 0) < $1 \
                AND ($2::uuid IS NULL OR c.client_id = $2::uuid) \
                AND NOT EXISTS (SELECT FROM provisioning.client_provisioning_jobs j \
                                 WHERE j.client_id = c.client_id AND j.job_type = 'schema_sync' \
                                   AND j.status IN ('queued', 'running')) \
              ORDER BY c.created_at, c.client_id LIMIT 10000",
            None,
            &[target.into(), only.as_deref().into()],
        )?;
        let behind: Vec<String> = behind
            .into_iter()
            .filter_map(|row| row.get::<String>(1).ok().flatten())
            .collect();
        // A concurrent sync (or a retry) may queue the same client's job between the look-up
        // and the insert: the one-open-job index refuses the second, which is then skipped
        // (queued already), not an error that would roll back every other client's job.
        let mut ids = Vec::with_capacity(behind.len());
        for id in behind {
            // Only the unique violation is caught; any other error stands as raised.
            let queued = crate::core::subxact::run_only(&["23505"], || {
                enqueue_job(client, &id, "schema_sync")
            });
            match queued {
                Ok(Ok(_)) => ids.push(id),
                Ok(Err(e)) => return Err(e),
                Err(_already_queued) => {}
            }
        }
        Ok(json!({"target_version": target, "queued": ids}))
    })
}

/// What `enqueue_client` needs.
pub struct NewClient<'a> {
    pub slug: &'a str,
    pub display_name: &'a str,
    pub region: Option<&'a str>,
    pub plan: Option<&'a str>,
    pub settings: Value,
    pub owner_id: &'a str,
}

/// Register a client and queue its create_project job.
pub fn enqueue_client(c: &NewClient<'_>) -> ProvisioningResult<Value> {
    Spi::connect_mut(|client| {
        let t = client.update(
            "INSERT INTO provisioning.clients (slug, display_name, region, plan, additional_settings, owner_id) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (slug) DO NOTHING RETURNING client_id::text",
            None,
            &[
                c.slug.into(),
                c.display_name.into(),
                c.region.into(),
                c.plan.into(),
                JsonB(c.settings.clone()).into(),
                c.owner_id.into(),
            ],
        )?;
        if t.is_empty() {
            return Err(ProvisioningError::ClientExists(c.slug.to_owned()));
        }
        let client_id: String = t.first().get_one::<String>()?.unwrap_or_default();
        let job = enqueue_job(client, &client_id, "create_project")?;
        Ok(
            json!({"client_id": client_id, "slug": c.slug, "provisioning_status": "queued", "job": job}),
        )
    })
}

/// Claim the oldest due job for `worker`: first a running job whose lease expired (its attempt
/// counts as failed), else the queued job due longest. Locked with SKIP LOCKED, so concurrent
/// workers never get the same job.
pub fn claim(worker: &str) -> ProvisioningResult<Option<Value>> {
    let lease =
        Duration::from_secs(core_store::get_i64("provisioning.lease_seconds")?.max(1) as u64);
    Spi::connect_mut(|client| {
        let expired = client.update(
            "SELECT job_id::text FROM provisioning.client_provisioning_jobs \
              WHERE status = 'running' AND lease_expires_at <= now() \
              ORDER BY lease_expires_at LIMIT 1 FOR UPDATE SKIP LOCKED",
            None,
            &[],
        )?;
        if !expired.is_empty() {
            let id: String = expired.first().get_one::<String>()?.unwrap_or_default();
            let (now, _) = clock(client, Duration::ZERO)?;
            let row = apply(&id, JobEvent::LeaseExpired { at: now })?;
            if row["status"] == "queued" {
                return claim_locked(client, &id, worker, lease).map(Some);
            }
        }
        let due = client.update(
            "SELECT job_id::text FROM provisioning.client_provisioning_jobs \
              WHERE status = 'queued' AND next_attempt_at <= now() \
              ORDER BY next_attempt_at, created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
            None,
            &[],
        )?;
        if due.is_empty() {
            return Ok(None);
        }
        let id: String = due.first().get_one::<String>()?.unwrap_or_default();
        claim_locked(client, &id, worker, lease).map(Some)
    })
}

fn claim_locked(
    client: &SpiClient<'_>,
    job_id: &str,
    worker: &str,
    lease: Duration,
) -> ProvisioningResult<Value> {
    let (now, until) = clock(client, lease)?;
    apply(
        job_id,
        JobEvent::Claimed {
            worker: worker.to_owned(),
            at: now,
            lease_until: until,
        },
    )
}

/// The result of one attempt, as a worker reports it.
pub struct Report<'a> {
    pub job_id: &'a str,
    pub worker: &'a str,
    pub succeeded: bool,
    pub status_code: Option<i32>,
    pub error: Option<&'a str>,
    /// The least time before a retry (e.g. from Retry-After).
    pub min_delay: Duration,
}

/// Record the end of an attempt. Only the worker holding the claim may report; a report for a
/// lost lease is refused (55000) so a slow worker cannot overwrite its successor's attempt.
pub fn report(r: &Report<'_>) -> ProvisioningResult<Value> {
    Spi::connect_mut(|client| {
        let t = client.update(
            "SELECT status, claimed_by, attempts, lease_expires_at > now() \
               FROM provisioning.client_provisioning_jobs WHERE job_id = $1::uuid FOR UPDATE",
            None,
            &[r.job_id.into()],
        )?;
        if t.is_empty() {
            return Err(CoreError::not_found("provisioning job", r.job_id).into());
        }
        let row = t.first();
        let (status, claimed_by, attempts) = (
            row.get::<String>(1)?,
            row.get::<String>(2)?,
            row.get::<i32>(3)?,
        );
        // A lease that ran out is lost even before another worker reclaims the job.
        let leased = row.get::<bool>(4)? == Some(true);
        if status.as_deref() != Some("running")
            || claimed_by.as_deref() != Some(r.worker)
            || !leased
        {
            return Err(CoreError::IllegalTransition {
                state: format!(
                    "{} (claimed by {}{})",
                    status.unwrap_or_default(),
                    claimed_by.unwrap_or_else(|| "nobody".into()),
                    if leased { "" } else { ", lease expired" }
                ),
                event: format!("a report from {}", r.worker),
                allowed: vec![
                    "a report from the worker holding the claim, before its lease expires".into(),
                ],
            }
            .into());
        }
        let (now, _) = clock(client, Duration::ZERO)?;
        if r.succeeded {
            return apply(r.job_id, JobEvent::Succeeded { at: now });
        }
        let policy = RetryPolicy {
            base: Duration::from_secs(
                core_store::get_i64("provisioning.retry_base_seconds")?.max(1) as u64,
            ),
            cap: Duration::from_secs(
                core_store::get_i64("provisioning.retry_cap_seconds")?.max(1) as u64,
            ),
            ..RetryPolicy::default()
        };
        let delay = jobs::retry_delay(
            attempts.unwrap_or(1),
            &policy,
            rand::random::<f64>(),
            r.min_delay,
        );
        let (_, retry_at) = clock(client, delay)?;
        let error = match (r.error, r.status_code) {
            (Some(e), _) => e.to_owned(),
            (None, Some(s)) => format!("HTTP {s}"),
            (None, None) => "failed without an error message".to_owned(),
        };
        apply(
            r.job_id,
            JobEvent::AttemptFailed {
                error,
                status_code: r.status_code,
                transient: jobs::transient(r.status_code),
                retry_at,
                at: now,
            },
        )
    })
}

/// Reset a client's failed (or waiting) jobs so they run again now: attempts = 0, no claim.
/// A client's id from its slug or from its id written as text; P0002 when neither names one.
pub fn client_id_of(slug_or_id: &str) -> ProvisioningResult<String> {
    if slug_or_id.len() > 64 {
        return Err(CoreError::invalid(
            "client",
            format!("it is {} bytes long", slug_or_id.len()),
            "a client slug (3 to 40 characters) or a client id (a UUID)",
        )
        .into());
    }
    let query = if uuid::Uuid::parse_str(slug_or_id).is_ok() {
        "SELECT (SELECT client_id::text FROM provisioning.clients WHERE client_id = $1::uuid)"
    } else {
        "SELECT (SELECT client_id::text FROM provisioning.clients WHERE slug = $1)"
    };
    let id =
        Spi::get_one_with_args::<String>(query, &[slug_or_id.into()]).map_err(CoreError::from)?;
    id.ok_or_else(|| CoreError::not_found("client", slug_or_id).into())
}

pub fn retry(client_id: &str) -> ProvisioningResult<Value> {
    let (ids, now, status) = Spi::connect(
        |client| -> ProvisioningResult<(Vec<String>, String, String)> {
            let c = client.select(
            "SELECT provisioning_status::text FROM provisioning.clients WHERE client_id = $1::uuid",
            None,
            &[client_id.into()],
        )?;
            if c.is_empty() {
                return Err(CoreError::not_found("client", client_id).into());
            }
            let status: String = c.first().get_one::<String>()?.unwrap_or_default();
            // The newest failed (or retry-waiting) job of each type; older ones are history, and a
            // type that already has a fresh open job is left alone.
            let t = client.select(
            "SELECT DISTINCT ON (j.job_type) j.job_id::text FROM provisioning.client_provisioning_jobs j \
              WHERE j.client_id = $1::uuid AND (j.status = 'failed' OR (j.status = 'queued' AND j.attempts > 0)) \
                AND NOT EXISTS (SELECT 1 FROM provisioning.client_provisioning_jobs o \
                                 WHERE o.client_id = $1::uuid AND o.job_type = j.job_type \
                                   AND o.status IN ('queued', 'running') AND o.attempts = 0) \
              ORDER BY j.job_type, j.created_at DESC",
            None,
            &[client_id.into()],
        )?;
            let mut ids = Vec::new();
            for row in t {
                if let Some(id) = row.get::<String>(1)? {
                    ids.push(id);
                }
            }
            Ok((ids, clock(client, Duration::ZERO)?.0, status))
        },
    )?;
    if ids.is_empty() {
        // Nothing failed and nothing waits to retry: say what the client is and what to do.
        return Err(CoreError::IllegalTransition {
            state: format!("{status} (no job failed or waiting to retry)"),
            event: "retry".into(),
            allowed: vec![if status == "ready" {
                "provisioning.sync_schema(client) to bring it to new migrations".into()
            } else {
                "none needed: its jobs are queued or running".into()
            }],
        }
        .into());
    }
    let mut jobs = Vec::new();
    for id in ids {
        jobs.push(apply(&id, JobEvent::Reset { at: now.clone() })?);
    }
    Ok(json!({"client_id": client_id, "reset": jobs}))
}
