//! The intake engine (seed 002), schema `intake`: a burst-absorbing claim queue. This first
//! slice has pools, UNLOGGED inventory, the claim hot path with pgmq intents and crash
//! recovery; the drain (validation webhook, ledger commit, DLQ) and metrics come next.

pub mod api;
pub mod pool;
