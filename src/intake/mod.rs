//! The intake engine, schema `intake`: a burst-absorbing claim queue. Pools of
//! UNLOGGED inventory, the claim hot path with pgmq intents, the drain through the outbox to a
//! validation webhook and a ledger (with DLQ and replay), the ledger itself, metrics and crash
//! recovery.

pub mod api;
pub mod book;
pub mod claim;
pub mod drain;
pub mod ledger;
pub mod metrics;
pub mod pool;
pub mod pools;
pub mod recovery;
pub mod replies;
pub mod requests;
pub mod settings;
pub mod store;

use crate::core::schedules::Job;

/// What this module plugs into core: its settings, response handlers and periodic jobs.
pub static MODULE: crate::core::module::Module = crate::core::module::Module {
    name: "intake",
    settings: settings::DEFINITIONS,
    handlers: crate::core::module::handlers(replies::HANDLERS),
    batch_handlers: crate::core::module::batch_handlers(replies::BATCH_HANDLERS),
    jobs: &[
        Job {
            name: "intake.drain",
            schedule_setting: "intake.drain_schedule",
            command: "SELECT intake.drain_all()",
            every_tick: true,
        },
        Job {
            // Every tick of the worker, but a pool is sampled at most every 4.5 s.
            name: "intake.metrics",
            schedule_setting: "intake.metrics_schedule",
            command: "SELECT intake.collect_metrics(NULL, 4.5)",
            every_tick: true,
        },
    ],
    identity_providers: &[],
};

// The schema's SQL, beside this code: tables first, then the surface that names Rust functions,
// after each of them (`requires`; pg_test/surface_check.sh checks both in CI).
pgrx::extension_sql_file!(
    "../../sql/intake/tables.sql",
    name = "intake_tables",
    requires = ["core_bootstrap", core::api::is_endpoint_url]
);
pgrx::extension_sql_file!(
    "../../sql/intake/surface.sql",
    name = "intake_surface",
    requires = [
        "intake_tables",
        core::api::current_actor,
        intake::api::intake::claim,
        intake::api::intake::claim_resource,
        intake::api::intake::collect_metrics,
        intake::api::intake::create_pool,
        intake::api::intake::drain,
        intake::api::intake::drop_pool,
        intake::api::intake::finalize_transaction,
        intake::api::intake::pool_status,
        intake::api::intake::read_intents,
        intake::api::intake::reclaim_slots,
        intake::api::intake::recover_pool,
        intake::api::intake::replay_dlq,
        intake::api::intake::report_commit,
        intake::api::intake::report_validation,
    ]
);
