//! The release gates control plane, schema `ops`: releases and their G1–G4 gates,
//! idempotent event ingest, the gate rules, promotion eligibility, personas with RLS, and the
//! reporting views.

pub mod api;
pub mod envelope;
pub mod error;
pub mod gates;
pub mod roles;
pub mod settings;
pub mod store;

#[cfg(any(test, feature = "pg_test"))]
mod tests;
