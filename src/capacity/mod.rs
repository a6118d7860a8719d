//! Capacity Requests for instances above 16XL, schema `capacity`: approval
//! gates, the customer-confirmation TTL in business days, cancellation ownership, timers and
//! metrics, on the core event-store runner.

pub mod api;
pub mod flow;
pub mod linear;
pub mod machine;
pub mod notify;
pub mod replays;
pub mod settings;
pub mod slack;
pub mod store;
pub mod timers;

use crate::core::schedules::Job;

/// What this module plugs into core: its settings, response handlers and periodic jobs.
pub static MODULE: crate::core::module::Module = crate::core::module::Module {
    name: "capacity",
    settings: settings::DEFINITIONS,
    handlers: crate::core::module::handlers(notify::HANDLERS),
    batch_handlers: &[],
    jobs: &[Job {
        name: "capacity.timers",
        schedule_setting: "capacity.timers_schedule",
        command: "SELECT capacity.run_capacity_request_timers()",
        every_tick: false,
    }],
    identity_providers: &["slack"],
};

// The schema's SQL, beside this code: tables first, then the surface that names Rust functions,
// after each of them (`requires`; pg_test/surface_check.sh checks both in CI).
pgrx::extension_sql_file!(
    "../../sql/capacity/tables.sql",
    name = "capacity_tables",
    requires = ["outbox_tables"]
);
pgrx::extension_sql_file!(
    "../../sql/capacity/surface.sql",
    name = "capacity_surface",
    requires = [
        "capacity_tables",
        capacity::api::capacity::apply_event_by_name,
        capacity::api::capacity::record_capacity_event,
        capacity::api::capacity::run_capacity_request_timers,
        core::api::current_actor,
        core::api::current_actor_info,
        core::api::get_setting,
    ]
);
