//! The outbox: every HTTP side effect flowgate makes goes through `flowgate.deliveries`.
//!
//! A transition enqueues a row in the user's transaction; nothing is sent there. A dispatcher
//! (`flowgate.dispatch`, scheduled) claims due rows with `SKIP LOCKED` and hands them to a
//! transport: pg_net where installed, else the native Rust client. Outcomes are recorded with
//! retries (exponential back-off, full jitter, Retry-After), dead letters, and the owner's
//! response handler, each delivery in its own subtransaction.

pub mod api;
pub mod delivery;
pub mod handlers;
pub mod native;
pub mod policy;
pub mod store;
