//! flowgate: control-plane workflows inside PostgreSQL.
//!
//! Each module owns one SQL schema: `core` (schema `flowgate`) is the shared ground;
//! `capacity` is the Capacity Request workflow; `intake` the burst-to-queue ledger; `ops` the
//! release gates control plane; `provisioning` tenant provisioning jobs. Each module's SQL
//! lives in `sql/<module>/`: its tables, and its surface (the SQL that names its Rust
//! functions), loaded after every function it names.

// SQL entry points return `Result<_, ErrorReport>` because that is the only error type whose
// SQLSTATE, detail and hint pgrx 0.18 passes through to Postgres; errors are the cold path.
#![allow(clippy::result_large_err)]

::pgrx::pg_module_magic!(name, version);

pub mod capacity;
pub mod core;
pub mod intake;
pub mod ops;
pub mod provisioning;

mod fuzz_tests;

/// The modules core serves: their settings, response handlers and periodic jobs
/// (`core::module`). Core reads this list and never names a module itself.
pub static MODULES: &[&core::module::Module] = &[
    &capacity::MODULE,
    &intake::MODULE,
    &ops::MODULE,
    &provisioning::MODULE,
];

/// Registers flowgate's GUCs and, when preloaded with `flowgate.worker_database` set, its
/// background worker.
#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // pgrx attaches a captured Rust backtrace to the DETAIL of an error that crossed Rust when
    // RUST_BACKTRACE or RUST_LIB_BACKTRACE is set in the server's environment. A client must
    // never see one, whatever the environment: turn capturing off before anything can panic.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    core::secrets::init();
    core::worker::init();
}

// Each module loads its own SQL (sql/<module>/, declared in src/<module>/mod.rs). What spans
// modules runs last.
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
