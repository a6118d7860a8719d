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
};
