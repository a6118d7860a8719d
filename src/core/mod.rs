//! The shared core every workflow module stands on (SQL schema `flowgate`): actor identity,
//! settings, the error contract, the event-store runner, the append-only guard, the
//! outbox of HTTP deliveries and the periodic jobs.

pub mod actor;
pub mod answer;
pub mod api;
pub mod args;
pub mod error;
pub mod eventstore;
pub mod jsonb;
pub mod module;
pub mod outbox;
pub mod prepared;
pub mod restore;
pub mod schedules;
pub mod secrets;
pub mod settings;
pub mod store;
pub mod subxact;
pub mod worker;
pub mod workflow;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

// The schema's SQL, beside this code: tables first (no Rust function needed), then the surface
// that names Rust functions, after each of them (`requires`; pg_test/surface_check.sh checks both in CI).
pgrx::extension_sql_file!(
    "../../sql/core/tables.sql",
    name = "core_bootstrap",
    bootstrap
);
pgrx::extension_sql_file!(
    "../../sql/core/outbox.sql",
    name = "outbox_tables",
    requires = ["core_bootstrap", core::api::is_endpoint_url]
);
pgrx::extension_sql_file!(
    "../../sql/core/surface.sql",
    name = "core_surface",
    requires = [
        "outbox_tables",
        core::api::check_setting,
        core::api::current_actor,
        core::api::get_setting,
        core::api::restore_loading_settings,
        core::outbox::api::collect,
        core::outbox::api::enqueue_delivery,
        core::outbox::api::record_attempt,
        core::outbox::api::rerun_handlers,
        core::outbox::api::set_secret,
        core::schedules::install_schedules,
        core::schedules::run_job,
        core::schedules::run_periodic,
        core::schedules::uninstall_schedules,
    ]
);
