//! Tenant provisioning, schema `provisioning`: clients, their jobs as an
//! event-sourced workflow on the core runner (queued → running → succeeded | failed, with
//! back-off), claiming with leases, operator retry and diagnostics.

pub mod api;
pub mod error;
pub mod jobs;
pub mod keys;
pub mod mgmt;
pub mod runner;
pub mod settings;
pub mod store;

use crate::core::schedules::Job;

/// What this module plugs into core: its settings, response handlers and periodic jobs.
pub static MODULE: crate::core::module::Module = crate::core::module::Module {
    name: "provisioning",
    settings: settings::DEFINITIONS,
    handlers: crate::core::module::handlers(runner::HANDLERS),
    batch_handlers: &[],
    jobs: &[Job {
        name: "provisioning.run",
        schedule_setting: "provisioning.run_schedule",
        command: "SELECT provisioning.run_jobs()",
        every_tick: true,
    }],
    identity_providers: &[],
};

// The schema's SQL, beside this code: tables first, then the surface that names Rust functions,
// after each of them (`requires`; pg_test/surface_check.sh checks both in CI).
pgrx::extension_sql_file!(
    "../../sql/provisioning/tables.sql",
    name = "provisioning_tables",
    requires = ["core_bootstrap"]
);
pgrx::extension_sql_file!(
    "../../sql/provisioning/surface.sql",
    name = "provisioning_surface",
    requires = [
        "provisioning_tables",
        core::api::current_actor,
        core::api::current_actor_info,
        provisioning::api::provisioning::claim_job,
        provisioning::api::provisioning::enqueue_client,
        provisioning::api::provisioning::report_job,
        provisioning::api::provisioning::retry,
        provisioning::api::provisioning::retry_by_slug_or_id,
        provisioning::api::provisioning::run_jobs,
        provisioning::api::provisioning::sync_schema,
        provisioning::api::provisioning::tenant_keys,
    ]
);
