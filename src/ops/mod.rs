//! The release gates control plane, schema `ops`: releases and their G1–G4 gates,
//! idempotent event ingest, the gate rules, promotion eligibility, personas with RLS, and the
//! reporting views.

pub mod api;
pub mod apply;
pub mod envelope;
pub mod error;
pub mod evaluation;
pub mod gates;
pub mod personas;
pub mod roles;
pub mod settings;
pub mod store;
pub mod values;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

use crate::core::schedules::Job;

/// What this module plugs into core: its settings, response handlers and periodic jobs.
pub static MODULE: crate::core::module::Module = crate::core::module::Module {
    name: "ops",
    settings: settings::DEFINITIONS,
    handlers: &[],
    batch_handlers: &[],
    jobs: &[Job {
        // Gates bypassed by an exception that has since expired are re-evaluated.
        name: "ops.expiry",
        schedule_setting: "ops.expiry_schedule",
        command: "SELECT ops.expire_bypasses()",
        every_tick: false,
    }],
    identity_providers: &[],
};

// The schema's SQL, beside this code: tables first, then the surface that names Rust functions,
// after each of them (`requires`; pg_test/surface_check.sh checks both in CI).
pgrx::extension_sql_file!(
    "../../sql/ops/tables.sql",
    name = "ops_tables",
    requires = [
        "core_bootstrap",
        ops::api::ops::is_valid_text,
        ops::api::ops::is_absolute_uri
    ]
);
pgrx::extension_sql_file!(
    "../../sql/ops/surface.sql",
    name = "ops_surface",
    requires = [
        "ops_tables",
        core::api::actor_is_anonymous,
        core::api::current_actor,
        ops::api::ops::evaluate_gate,
        ops::api::ops::expire_bypasses,
        ops::api::ops::gate_rules,
        ops::api::ops::ingest_applying,
        ops::api::ops::ingest_event,
        ops::api::ops::is_eligible_for_promotion,
        ops::api::ops::persona_privileges,
        ops::api::ops::value_constraints,
        ops::api::ops::promotion_status,
        ops::api::ops::refresh_gates,
        ops::api::ops::restore_loading,
    ]
);
