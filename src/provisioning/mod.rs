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
