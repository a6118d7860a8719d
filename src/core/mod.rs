//! The shared core every workflow module stands on (SQL schema `flowgate`): actor identity,
//! settings, the error contract, the event-store runner and the append-only guard.

pub mod actor;
pub mod api;
pub mod error;
pub mod eventstore;
pub mod settings;
pub mod store;
pub mod workflow;

#[cfg(any(test, feature = "pg_test"))]
mod tests;
