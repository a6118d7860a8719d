//! The in-database worker: claims due jobs, sends their Management API calls through the outbox
//! (one delivery per step, `max_attempts = 1`, so the job's own attempts and back-off govern
//! retries), and applies each answer in the response handler `provisioning.response`.
//!
//! create_project: `lookup` (retries only: adopt a project a timed-out attempt created) →
//! `create` → `api_keys` → succeeded (schema_sync is queued). schema_sync: `migration:N` for each
//! migration above the client's schema_version, one at a time → succeeded (the client is ready).

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::core::error::{CoreError, CoreResult};
use crate::core::outbox::delivery::NewDelivery;
use crate::core::outbox::handlers::{Handler, HandlerCall, Outcome};
use crate::core::outbox::store as outbox;
use crate::core::store as core_store;

use super::error::{ProvisioningError, ProvisioningResult};
use super::keys;
use super::mgmt::{self, Step};
use super::store::{self, Report};

pub const WORKER: &str = "flowgate";
const HANDLER: &str = "provisioning.response";

pub const HANDLERS: &[(&str, Handler)] = &[(HANDLER, response)];

/// What a step needs to know about its client.
struct ClientRow {
    client_id: String,
    slug: String,
    region: Option<String>,
    plan: Option<String>,
    project_ref: Option<String>,
    schema_version: i32,
}

fn load_client(client: &SpiClient<'_>, client_id: &str) -> CoreResult<ClientRow> {
    let t = client.select(
        "SELECT slug, region, plan, project_ref, schema_version FROM provisioning.clients WHERE client_id = $1::uuid",
        None,
        &[client_id.into()],
    )?;
    if t.is_empty() {
        return Err(CoreError::not_found("client", client_id));
    }
    let row = t.first();
    Ok(ClientRow {
        client_id: client_id.to_owned(),
        slug: row.get::<String>(1)?.unwrap_or_default(),
        region: row.get::<String>(2)?,
        plan: row.get::<String>(3)?,
        project_ref: row.get::<String>(4)?,
        schema_version: row.get::<i32>(5)?.unwrap_or(0),
    })
}

fn api_url(path: &str) -> CoreResult<String> {
    let base = core_store::get_text("provisioning.management_api_url")?;
    Ok(format!("{}{path}", base.trim_end_matches('/')))
}

/// Enqueue the delivery of one step.
fn send(
    client: &mut SpiClient<'_>,
    job_id: &str,
    attempt: i32,
    c: &ClientRow,
    step: &Step,
) -> CoreResult<i64> {
    // Body fields the outbox sets from named secrets when it sends (the create's db_pass).
    let mut body_secrets = Vec::new();
    let (method, path, body, sensitive): (&str, String, Option<Value>, bool) = match step {
        Step::Lookup => ("GET", "/v1/projects".into(), None, false),
        Step::Create => {
            let org = core_store::get_text("provisioning.organization_id")?;
            if org.is_empty() {
                return Err(CoreError::MissingDependency {
                    feature: "creating Supabase projects".into(),
                    dependency: "the provisioning.organization_id setting".into(),
                    hint: "SELECT flowgate.set_setting('provisioning.organization_id', '\"<your org id>\"')".into(),
                });
            }
            // One password per client, kept from its first create on: every create of the
            // client is the same request (same body, same Idempotency-Key below), so an API
            // that keeps keys answers a re-sent create with the project the first one made.
            let pass = match keys::read(&c.client_id)?.2 {
                Some(kept) => kept,
                None => {
                    let pass = mgmt::db_pass(crate::core::store::os_random_u32);
                    keys::store(client, &c.client_id, &c.slug, "db_pass", &pass)?;
                    pass
                }
            };
            // The request carries the password by reference (`body_secrets`), set when it is
            // sent: the delivery row, a dump and the WAL hold only the secret's name. (Until
            // ALTER EXTENSION flowgate UPDATE has run, the body holds it, as 0.1.0's did.)
            let by_reference = outbox::body_secrets_supported();
            if by_reference {
                let secret = format!("provisioning.{}.db_pass", c.slug);
                outbox::store_secret(client, &secret, &pass)?;
                body_secrets.push(("db_pass".to_owned(), secret));
            }
            let region = match &c.region {
                Some(r) => r.clone(),
                None => core_store::get_text("provisioning.default_region")?,
            };
            let plan = match &c.plan {
                Some(p) => p.clone(),
                None => core_store::get_text("provisioning.default_plan")?,
            };
            (
                "POST",
                "/v1/projects".into(),
                Some({
                    let mut body = mgmt::create_body(&org, &c.slug, &region, &plan);
                    if !by_reference {
                        body["db_pass"] = pass.clone().into();
                    }
                    body
                }),
                true,
            )
        }
        Step::ApiKeys => (
            "GET",
            format!(
                "/v1/projects/{}/api-keys",
                c.project_ref.as_deref().unwrap_or_default()
            ),
            None,
            true,
        ),
        Step::Migration(v) => {
            let t = client.select(
                "SELECT sql FROM provisioning.migrations WHERE version = $1",
                None,
                &[(*v).into()],
            )?;
            let sql: String = t.first().get_one::<String>()?.unwrap_or_default();
            (
                "POST",
                format!(
                    "/v1/projects/{}/database/query",
                    c.project_ref.as_deref().unwrap_or_default()
                ),
                Some(json!({"query": sql})),
                false,
            )
        }
        Step::Smoke => (
            "GET",
            format!(
                "/v1/projects/{}",
                c.project_ref.as_deref().unwrap_or_default()
            ),
            None,
            false,
        ),
    };
    let owner = mgmt::owner_id(job_id, attempt, step);
    // An operator reset numbers attempts from 1 again: the row key must still be new.
    let key = format!("provisioning:{owner}:{:016x}", rand::random::<u64>());
    let mut d = NewDelivery::post_json("provisioning", &owner, &api_url(&path)?, Value::Null, &key);
    d.method = method.into();
    d.body = body;
    d.handler = Some(HANDLER.into());
    d.auth_secret = Some(core_store::get_text("provisioning.access_token_secret")?);
    d.max_attempts = Some(1);
    d.timeout_ms = Some(core_store::get_i64("provisioning.request_timeout_ms")? as i32);
    d.sensitive = sensitive;
    d.body_secrets = body_secrets;
    // The Management API's rate limits are per account, whatever the host path.
    d.flow_key = Some("supabase-management-api".into());
    match step {
        // Every attempt at one migration of one client carries the same Idempotency-Key, and
        // so does every create of one client's project with the same body (its password is
        // kept; a changed region, plan or organization is another request, under another key).
        Step::Migration(v) => {
            d.wire_key = Some(format!("provisioning:{}:migration:{v}", c.client_id));
        }
        Step::Create => {
            use sha2::{Digest, Sha256};
            let body = d.body.as_ref().map(Value::to_string).unwrap_or_default();
            let digest = Sha256::digest(body.as_bytes());
            let short: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            d.wire_key = Some(format!("provisioning:{}:create:{short}", c.client_id));
        }
        _ => {}
    }
    Ok(outbox::enqueue(client, &d)?.id)
}

/// The next migration above `version`, if any.
fn next_migration(client: &SpiClient<'_>, version: i32) -> CoreResult<Option<i32>> {
    let t = client.select(
        "SELECT min(version) FROM provisioning.migrations WHERE version > $1",
        None,
        &[version.into()],
    )?;
    Ok(t.first().get_one::<i32>()?)
}

/// Begin the attempt of a freshly claimed job: its first step's delivery, or an immediate
/// report when there is nothing to send.
fn start(job: &Value) -> ProvisioningResult<()> {
    let job_id = job["job_id"].as_str().unwrap_or_default().to_owned();
    let attempt = job["attempts"].as_i64().unwrap_or(1) as i32;
    let client_id = job["client_id"].as_str().unwrap_or_default().to_owned();
    let job_type = job["job_type"].as_str().unwrap_or_default().to_owned();
    let begun = Spi::connect_mut(|client| -> CoreResult<Begun> {
        supersede_earlier_attempts(client, &job_id)?;
        let c = load_client(client, &client_id)?;
        let step = match job_type.as_str() {
            "create_project" if c.project_ref.is_some() => Step::ApiKeys,
            // Any attempt but a client's very first may follow a create that went out (an
            // operator's reset numbers attempts from 1 again): look the project up first.
            "create_project" if attempt > 1 || create_claimed_before(client, &client_id)? => {
                Step::Lookup
            }
            "create_project" => Step::Create,
            "schema_sync" | "smoke_checks" if c.project_ref.is_none() => {
                return Ok(Begun::CannotStart(
                    "the client has no project yet (create_project has not succeeded)".into(),
                ))
            }
            "smoke_checks" => Step::Smoke,
            _ => match next_migration(client, c.schema_version)? {
                Some(v) => Step::Migration(v),
                None => return Ok(Begun::NothingToDo),
            },
        };
        match send(client, &job_id, attempt, &c, &step) {
            Ok(_) => Ok(Begun::Sent),
            Err(e @ CoreError::MissingDependency { .. }) => Ok(Begun::CannotStart(e.to_string())),
            Err(e) => Err(e),
        }
    })?;
    match begun {
        Begun::Sent => Ok(()),
        // The schema is already current.
        Begun::NothingToDo => finish(&job_id, true, None, None).map(|_| ()),
        // No organization id, no pgcrypto, no project: a permanent failure.
        Begun::CannotStart(why) => finish(&job_id, false, Some(400), Some(&why)).map(|_| ()),
    }
}

/// A new attempt begins: requests of the job's earlier attempts still waiting to be sent never
/// will be (a create among them would make a second project, a migration run twice). Their
/// answers would be ignored anyway; one already in flight cannot be stopped, and is waited for
/// ([`earlier_create_in_flight`]).
fn supersede_earlier_attempts(client: &mut SpiClient<'_>, job_id: &str) -> CoreResult<()> {
    client.update(
        // One a runner is claiming now (locked) goes out, and is waited for as in flight.
        "UPDATE flowgate.deliveries \
            SET status = 'failed', last_error = 'superseded: the attempt it belonged to ended before it was sent', \
                updated_at = clock_timestamp() \
          WHERE id IN (SELECT id FROM flowgate.deliveries \
                        WHERE owner_module = 'provisioning' AND owner_id LIKE $1 || ':%' AND status = 'pending' \
                          FOR UPDATE SKIP LOCKED)",
        None,
        &[job_id.into()],
    )?;
    Ok(())
}

/// Whether the client's create_project jobs were claimed before this attempt's claim.
fn create_claimed_before(client: &SpiClient<'_>, client_id: &str) -> CoreResult<bool> {
    let t = client.select(
        "SELECT count(*) > 1 FROM provisioning.job_events e \
           JOIN provisioning.client_provisioning_jobs j ON j.job_id = e.job_id \
          WHERE j.client_id = $1::uuid AND j.job_type = 'create_project' AND e.event_type = 'claimed'",
        None,
        &[client_id.into()],
    )?;
    Ok(t.first().get_one::<bool>()?.unwrap_or(true))
}

/// Whether a create request of an earlier attempt for the client is still in flight: its
/// project may appear after a look-up that did not find it.
fn earlier_create_in_flight(client: &SpiClient<'_>, client_id: &str) -> CoreResult<bool> {
    let t = client.select(
        "SELECT EXISTS (SELECT FROM flowgate.deliveries d \
                          JOIN provisioning.client_provisioning_jobs j ON d.owner_id LIKE j.job_id || ':%:create' \
                         WHERE j.client_id = $1::uuid AND j.job_type = 'create_project' \
                           AND d.owner_module = 'provisioning' AND d.status = 'in_flight')",
        None,
        &[client_id.into()],
    )?;
    Ok(t.first().get_one::<bool>()?.unwrap_or(true))
}

/// How the first step of an attempt went.
enum Begun {
    Sent,
    NothingToDo,
    CannotStart(String),
}

/// Response handlers return core's error type. Finishing a job raises only core errors (a
/// taken slug or a non-operator cannot happen here); anything else would be a bug.
fn handler_error(e: ProvisioningError) -> CoreError {
    match e {
        ProvisioningError::Core(c) => c,
        other => CoreError::Internal(format!("finishing a job: {other}")),
    }
}

fn finish(
    job_id: &str,
    succeeded: bool,
    status_code: Option<i32>,
    error: Option<&str>,
) -> ProvisioningResult<Value> {
    store::report(&Report {
        job_id,
        worker: WORKER,
        succeeded,
        status_code,
        error,
        min_delay: std::time::Duration::ZERO,
    })
}

/// Claim and start up to `max` due jobs: each enqueues its first step's request, which the
/// outbox sends (CALL flowgate.run_outbox() or the worker) with no transaction open; the
/// response handler chains the next step. Returns what was started.
pub fn run(max: i32) -> ProvisioningResult<Value> {
    // Until the operator has configured the organization, the schedule leaves jobs alone (an
    // external worker may be driving them through claim_job/report_job).
    if core_store::get_text("provisioning.organization_id")?.is_empty() {
        return Ok(json!({"started": [], "skipped": "provisioning.organization_id is not set"}));
    }
    let mut started = Vec::new();
    while (started.len() as i32) < max.max(0) {
        let Some(job) = store::claim(WORKER)? else {
            break;
        };
        start(&job)?;
        started.push(json!({"job_id": job["job_id"], "job_type": job["job_type"], "attempt": job["attempts"]}));
    }
    Ok(json!({"started": started}))
}

/// The response handler: apply one step's answer and move the attempt on.
fn response(client: &mut SpiClient<'_>, call: &HandlerCall<'_>) -> CoreResult<()> {
    let Some((job_id, attempt, step)) = mgmt::parse_owner_id(call.owner_id) else {
        return Err(CoreError::Internal(format!(
            "unreadable provisioning owner_id {:?}",
            call.owner_id
        )));
    };
    // A late answer for an attempt that is no longer running (lease lost, operator reset) is
    // history: ignore it. An operator reset numbers attempts from 1 again, so the number alone
    // does not tell: the request must also have been made under the running claim (enqueued
    // no earlier than it). The job is locked first, before the client row its step writes: a
    // reclaim of the expired lease locks the job, then the client, so the two wait for each
    // other in that one order (and the answer finds the attempt over and is ignored).
    let t = client.update(
        "SELECT client_id::text FROM provisioning.client_provisioning_jobs \
          WHERE job_id = $1::uuid AND status = 'running' AND attempts = $2 AND claimed_by = $3 \
            AND claimed_at <= (SELECT d.created_at FROM flowgate.deliveries d WHERE d.id = $4) \
            FOR UPDATE",
        None,
        &[
            job_id.as_str().into(),
            attempt.into(),
            WORKER.into(),
            call.delivery_id.into(),
        ],
    )?;
    if t.is_empty() {
        // Except a project a late create made: recorded on a client without one, so no later
        // attempt makes another (its look-up may run before the project is listed).
        if step == Step::Create && call.outcome == Outcome::Delivered {
            adopt_late_project(client, &job_id, call)?;
        }
        return Ok(());
    }
    let client_id: String = t.first().get_one::<String>()?.unwrap_or_default();
    // An answer is progress: the attempt's lease runs from now again, so a job whose requests
    // wait in the outbox (its rate limits) is not handed to another attempt, which would send
    // its last step again (a migration twice), while this one is still going.
    client.update(
        "UPDATE provisioning.client_provisioning_jobs \
            SET lease_expires_at = greatest(lease_expires_at, now() + make_interval(secs => $2)) \
          WHERE job_id = $1::uuid",
        None,
        &[
            job_id.as_str().into(),
            (core_store::get_i64("provisioning.lease_seconds")? as f64).into(),
        ],
    )?;
    let fail = |status: Option<i32>, why: String| -> CoreResult<()> {
        finish(&job_id, false, status, Some(&why))
            .map(|_| ())
            .map_err(handler_error)
    };
    if call.outcome != Outcome::Delivered {
        let what = match &step {
            Step::Migration(v) => format!("migration {v}: "),
            other => format!("{}: ", other.as_string()),
        };
        let detail = mgmt::api_message(call.response.as_ref())
            .map(|m| format!(" ({m})"))
            .unwrap_or_default();
        return fail(
            call.status_code,
            format!("{what}{}{detail}", call.last_error.unwrap_or("failed")),
        );
    }
    let c = load_client(client, &client_id)?;
    let next: Option<Step> = match &step {
        // A late create of an earlier attempt was recorded meanwhile: that is the project.
        Step::Lookup if c.project_ref.is_some() => Some(Step::ApiKeys),
        Step::Lookup => match mgmt::find_project(
            call.response.as_ref(),
            &c.slug,
            &core_store::get_text("provisioning.organization_id")?,
        ) {
            Ok(Some(p)) => {
                save_project(client, &c, &p)?;
                Some(Step::ApiKeys)
            }
            Ok(None) if earlier_create_in_flight(client, &client_id)? => {
                return fail(
                    Some(503),
                    "lookup: a create request of an earlier attempt is still in flight; the next attempt looks again"
                        .into(),
                )
            }
            Ok(None) => Some(Step::Create),
            Err(e) => return fail(call.status_code, e.to_string()),
        },
        Step::Create => match mgmt::parse_created(call.response.as_ref()) {
            Ok(p) => {
                save_project(client, &c, &p)?;
                Some(Step::ApiKeys)
            }
            Err(e) => return fail(call.status_code, e.to_string()),
        },
        Step::ApiKeys => match mgmt::parse_api_keys(call.response.as_ref()) {
            Ok((anon, service)) => {
                // A key that cannot be stored (no passphrase, no pgcrypto) fails the job with the
                // reason, rather than leaving it running until its lease expires.
                let stored = keys::store(client, &c.client_id, &c.slug, "anon_key", &anon)
                    .and_then(|_| {
                        keys::store(client, &c.client_id, &c.slug, "service_key", &service)
                    });
                if let Err(e) = stored {
                    return fail(Some(400), format!("api_keys: {e}"));
                }
                None
            }
            Err(e) => return fail(call.status_code, e.to_string()),
        },
        Step::Migration(v) => {
            client.update(
                "UPDATE provisioning.clients SET schema_version = $2, updated_at = now() WHERE client_id = $1::uuid",
                None,
                &[client_id.as_str().into(), (*v).into()],
            )?;
            next_migration(client, *v)?.map(Step::Migration)
        }
        Step::Smoke => None,
    };
    match next {
        Some(step) => {
            let c = load_client(client, &client_id)?;
            send(client, &job_id, attempt, &c, &step)?;
            Ok(())
        }
        None => finish(&job_id, true, None, None)
            .map(|_| ())
            .map_err(handler_error),
    }
}

/// Record the project a create of an ended attempt made, on a client that has none yet. The
/// job is locked first, then the client, as a running attempt's answer does.
fn adopt_late_project(
    client: &mut SpiClient<'_>,
    job_id: &str,
    call: &HandlerCall<'_>,
) -> CoreResult<()> {
    let Ok(p) = mgmt::parse_created(call.response.as_ref()) else {
        return Ok(());
    };
    let t = client.update(
        "SELECT j.client_id::text FROM provisioning.client_provisioning_jobs j \
          WHERE j.job_id = $1::uuid AND j.job_type = 'create_project' FOR UPDATE",
        None,
        &[job_id.into()],
    )?;
    if t.is_empty() {
        return Ok(());
    }
    let client_id: String = t.first().get_one::<String>()?.unwrap_or_default();
    let c = load_client(client, &client_id)?;
    if c.project_ref.is_none() {
        save_project(client, &c, &p)?;
    }
    Ok(())
}

fn save_project(client: &mut SpiClient<'_>, c: &ClientRow, p: &mgmt::Project) -> CoreResult<()> {
    let meta = json!({
        "supabase": {
            "region": p.region,
            "plan": c.plan,
            "organization_id": p.organization_id,
            "created_at": p.created_at,
            "status": p.status,
        }
    });
    client.update(
        "UPDATE provisioning.clients SET project_ref = $2, region = coalesce(region, $3), \
                additional_settings = additional_settings || $4::jsonb, updated_at = now() WHERE client_id = $1::uuid",
        None,
        &[
            c.client_id.as_str().into(),
            p.project_ref.as_str().into(),
            p.region.as_deref().into(),
            meta.to_string().into(),
        ],
    )?;
    // The copy of the database password the create request carried by reference is not kept
    // once the project exists: a named secret, any delivery could name it. The password stays
    // in the client's tenant keys (provisioning.tenant_keys).
    client.update(
        "SELECT flowgate.drop_secret($1)",
        None,
        &[format!("provisioning.{}.db_pass", c.slug).into()],
    )?;
    Ok(())
}
