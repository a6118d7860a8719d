//! The intake engine, schema `intake`: a burst-absorbing claim queue. Pools of
//! UNLOGGED inventory, the claim hot path with pgmq intents, the drain through the outbox to a
//! validation webhook and a ledger (with DLQ and replay), the ledger itself, metrics and crash
//! recovery.

pub mod api;
pub mod drain;
pub mod ledger;
pub mod pool;
pub mod settings;
pub mod store;
