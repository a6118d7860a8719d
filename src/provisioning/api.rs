//! SQL surface of tenant provisioning (schema `provisioning`).

#[pgrx::pg_schema]
mod provisioning {
    use crate::core::args::{required, RawJsonb, MAX_JSON_ARG_BYTES};
    use std::time::Duration;

    use flowgate_macros::documented;
    use pgrx::pg_sys::panic::ErrorReport;
    use pgrx::prelude::*;
    use pgrx::JsonB;
    use serde_json::Value;

    use crate::core::actor::validate_actor_id;
    use crate::core::error::CoreError;
    use crate::core::prepared::uuid_text;
    use crate::core::store as core_store;
    use crate::provisioning::error::{ProvisioningError, ProvisioningResult};
    use crate::provisioning::store::{self, NewClient, Report};

    /// Operator functions are for trusted sessions (superuser, flowgate.trusted_roles). They are
    /// SECURITY DEFINER (the tables are the extension owner's), so each calls this first: trust
    /// is the caller's (the outer role, never the definer's), and nothing is read or written
    /// for anyone else.
    fn operator(action: &str) -> ProvisioningResult<String> {
        let actor = core_store::acting_actor(None)?;
        if !actor.trusted {
            return Err(ProvisioningError::NotAnOperator {
                actor: actor.id,
                action: action.into(),
            });
        }
        Ok(actor.id)
    }

    /// Register a tenant and queue its create_project job; returns
    /// `{client_id, slug, provisioning_status, job}`. Operators (trusted sessions) only, 42501
    /// otherwise; 23505 for a slug already taken, 22023 for a bad argument.
    ///
    /// `slug` names the Supabase project (3 to 40 of a-z, 0-9 and -, starting with a letter);
    /// `region` and `plan` default to the provisioning settings.
    #[documented]
    #[pg_extern(volatile, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn enqueue_client(
        slug: Option<&str>,
        display_name: Option<&str>,
        region: default!(Option<&str>, "NULL"),
        plan: default!(Option<&str>, "NULL"),
        additional_settings: default!(Option<RawJsonb>, "'{}'"),
    ) -> Result<JsonB, ErrorReport> {
        let run = || -> ProvisioningResult<Value> {
            let owner = operator("onboard a tenant")?;
            let slug = required("slug", slug)?;
            let display_name = required("display_name", display_name)?;
            let additional_settings = JsonB(
                required("additional_settings", additional_settings)?
                    .value("additional_settings", MAX_JSON_ARG_BYTES)?,
            );
            let ok_slug = slug.len() >= 3
                && slug.len() <= 40
                && slug.starts_with(|c: char| c.is_ascii_lowercase())
                && slug
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok_slug {
                return Err(CoreError::invalid(
                    "slug",
                    crate::core::error::quoted(slug),
                    "3 to 40 of a-z, 0-9 and -, starting with a letter",
                )
                .into());
            }
            if display_name.trim().is_empty() || display_name.chars().count() > 200 {
                return Err(CoreError::invalid(
                    "display_name",
                    "it is empty or longer than 200 characters",
                    "1 to 200 characters",
                )
                .into());
            }
            if !additional_settings.0.is_object() {
                return Err(CoreError::invalid(
                    "additional_settings",
                    additional_settings.0.to_string(),
                    "a JSON object",
                )
                .into());
            }
            if let Some(p) = plan {
                if !["free", "pro", "team", "enterprise"].contains(&p) {
                    return Err(
                        CoreError::invalid("plan", p, "free, pro, team or enterprise").into(),
                    );
                }
            }
            if let Some(r) = region {
                let parts: Vec<&str> = r.split('-').collect();
                let ok = parts.len() == 3
                    && parts[0].len() == 2
                    && parts
                        .iter()
                        .take(2)
                        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
                    && parts[2].len() == 1
                    && parts[2].chars().all(|c| c.is_ascii_digit());
                if !ok {
                    return Err(
                        CoreError::invalid("region", r, "an AWS region such as us-east-1").into(),
                    );
                }
            }
            store::enqueue_client(&NewClient {
                slug,
                display_name,
                region,
                plan,
                settings: additional_settings.0.clone(),
                owner_id: &owner,
            })
        };
        Ok(run().map(JsonB)?)
    }

    /// Claim the oldest due job for `worker` (a running job whose lease expired first), or NULL
    /// when none is due; no two workers ever get the same job. Operators (trusted sessions) only,
    /// 42501 otherwise.
    ///
    /// A job whose lease expired counts its attempt as failed.
    #[documented]
    #[pg_extern(volatile, strict, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn claim_job(worker: &str) -> Result<Option<JsonB>, ErrorReport> {
        let run = || -> ProvisioningResult<Option<Value>> {
            operator("claim provisioning jobs")?;
            validate_actor_id("worker", worker)?;
            store::claim(worker)
        };
        Ok(run().map(|v| v.map(JsonB))?)
    }

    /// Report the end of an attempt of a claimed job: success, or failure with its HTTP status
    /// (5xx, 408, 425, 429 and no status retry with back-off and jitter until max_attempts; other
    /// 4xx fail at once). Only the claiming worker may report, before its lease expires (55000
    /// otherwise). Operators (trusted sessions) only, 42501 otherwise.
    ///
    /// `min_retry_seconds` honours a Retry-After.
    #[documented]
    #[pg_extern(volatile, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn report_job(
        job_id: Option<pgrx::Uuid>,
        worker: Option<&str>,
        succeeded: Option<bool>,
        status_code: default!(Option<i32>, "NULL"),
        error: default!(Option<&str>, "NULL"),
        min_retry_seconds: default!(Option<i32>, "0"),
    ) -> Result<JsonB, ErrorReport> {
        let run = || -> ProvisioningResult<Value> {
            operator("report provisioning attempts")?;
            let job_id = required("job_id", job_id)?;
            let worker = required("worker", worker)?;
            let succeeded = required("succeeded", succeeded)?;
            let min_retry_seconds = required("min_retry_seconds", min_retry_seconds)?;
            validate_actor_id("worker", worker)?;
            if let Some(e) = error {
                crate::core::args::check_text_size(
                    "error",
                    e,
                    crate::core::args::MAX_ERROR_TEXT_BYTES,
                )?;
            }
            if let Some(s) = status_code {
                if !(100..=599).contains(&s) {
                    return Err(CoreError::invalid(
                        "status_code",
                        s.to_string(),
                        "an HTTP status 100 to 599, or NULL",
                    )
                    .into());
                }
            }
            let id = uuid_text(job_id);
            store::report(&Report {
                job_id: &id,
                worker,
                succeeded,
                status_code,
                error,
                min_delay: Duration::from_secs(min_retry_seconds.clamp(0, 86400) as u64),
            })
        };
        Ok(run().map(JsonB)?)
    }

    /// Operator retry after fixing the cause (credentials, a migration): the client's failed or
    /// waiting jobs start over now (attempts = 0, no claim) and the client goes back to queued;
    /// returns `{client_id, reset}`. Operators (trusted sessions) only, 42501 otherwise; P0002 for
    /// an unknown client.
    #[documented]
    #[pg_extern(volatile, strict, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn retry(client_id: pgrx::Uuid) -> Result<JsonB, ErrorReport> {
        let run = || -> ProvisioningResult<Value> {
            operator("retry provisioning")?;
            store::retry(&uuid_text(client_id))
        };
        Ok(run().map(JsonB)?)
    }

    /// Operator retry naming the client by its slug or its id (as text), whichever the operator has
    /// at hand: the same as `provisioning.retry(uuid)`. Operators (trusted sessions) only, 42501
    /// otherwise; P0002 when neither names a client.
    #[documented]
    #[pg_extern(volatile, strict, security_definer, name = "retry")]
    #[search_path(pg_catalog, pg_temp)]
    fn retry_by_slug_or_id(client: &str) -> Result<JsonB, ErrorReport> {
        let run = || -> ProvisioningResult<Value> {
            operator("retry provisioning")?;
            let id = store::client_id_of(client)?;
            store::retry(&id)
        };
        Ok(run().map(JsonB)?)
    }

    /// Bring ready tenants up to the newest migration: queue a schema_sync job for every ready
    /// client behind it (or only `client`, by slug or id); returns `{target_version, queued}`.
    /// Operators (trusted sessions) only, 42501 otherwise.
    ///
    /// A client that already has an open schema_sync job is not queued again. The next run of the
    /// jobs applies the missing migrations one at a time.
    #[documented]
    #[pg_extern(volatile, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn sync_schema(client: default!(Option<&str>, "NULL")) -> Result<JsonB, ErrorReport> {
        let run = || -> ProvisioningResult<Value> {
            operator("sync tenant schemas")?;
            store::sync_schema(client)
        };
        Ok(run().map(JsonB)?)
    }

    /// Claim and start up to `max` due jobs; their Management API calls go through the outbox and
    /// each answer moves the job on. Returns the jobs started. What the schedule runs; operators
    /// (trusted sessions) only, 42501 otherwise.
    #[documented]
    #[pg_extern(volatile, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn run_jobs(max: default!(i32, "10")) -> Result<JsonB, ErrorReport> {
        let run = || -> ProvisioningResult<Value> {
            operator("run provisioning jobs")?;
            crate::provisioning::runner::run(max.clamp(0, 1000))
        };
        Ok(run().map(JsonB)?)
    }

    /// Decrypt a tenant's anon key, service key and database password, to wire the tenant up;
    /// never logged. Operators (trusted sessions) only, 42501 otherwise.
    #[allow(clippy::type_complexity)]
    #[documented]
    #[pg_extern(volatile, strict, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn tenant_keys(
        client_id: pgrx::Uuid,
    ) -> Result<
        TableIterator<
            'static,
            (
                name!(anon_key, Option<String>),
                name!(service_key, Option<String>),
                name!(db_pass, Option<String>),
            ),
        >,
        ErrorReport,
    > {
        let run = || -> ProvisioningResult<(Option<String>, Option<String>, Option<String>)> {
            operator("read tenant keys")?;
            Ok(crate::provisioning::keys::read(&uuid_text(client_id))?)
        };
        Ok(run().map(TableIterator::once)?)
    }
}
