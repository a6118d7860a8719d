//! flowgate: control-plane workflows inside PostgreSQL.
//!
//! Each module owns one SQL schema: `core` (schema `flowgate`) is the shared ground;
//! `capacity`, `intake`, `ops` and `provisioning` arrive with their issues. DDL lives in
//! `sql/*.sql`, loaded below in dependency order.

::pgrx::pg_module_magic!(name, version);

pub mod core;

pgrx::extension_sql_file!("../sql/core.sql", name = "core_bootstrap", bootstrap);
pgrx::extension_sql_file!("../sql/core_finalize.sql", name = "core_finalize", finalize);

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
