//! The intake engine (seed 002), schema `intake`: a burst-absorbing claim queue. This first
//! slice has pools, UNLOGGED inventory and the claim hot path with pgmq intents; the drain
//! (validation webhook, ledger commit, DLQ), metrics and crash recovery come next.

pub mod api;
pub mod pool;
