//! The outbox: every HTTP side effect flowgate makes goes through `flowgate.deliveries`.
//!
//! A transition enqueues a row in the user's transaction; nothing is sent there. The outbox
//! runner (`CALL flowgate.run_outbox()`, or the background worker) claims due rows in a short
//! transaction, sends them with no transaction open, and records each outcome in a new one
//! (see `engine`): pg_net where installed, else the native Rust client. Outcomes are recorded
//! with retries (exponential back-off, full jitter, Retry-After), dead letters, and the owner's
//! response handler, isolated in a subtransaction.

pub mod api;
pub mod collect;
pub mod delivery;
pub mod engine;
pub mod flow;
pub mod handler_runs;
pub mod handlers;
pub mod native;
pub mod policy;
pub mod procedure;
pub mod record;
pub mod store;
pub mod transport;
