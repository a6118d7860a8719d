//! The shared core every workflow module stands on (SQL schema `flowgate`): actor identity,
//! settings, the error contract, the event-store runner, the append-only guard, the
//! outbox of HTTP deliveries and the periodic jobs.

pub mod actor;
pub mod api;
pub mod args;
pub mod error;
pub mod eventstore;
pub mod module;
pub mod outbox;
pub mod prepared;
pub mod schedules;
pub mod secrets;
pub mod settings;
pub mod store;
pub mod subxact;
pub mod worker;
pub mod workflow;

#[cfg(any(test, feature = "pg_test"))]
mod tests;
