//! Capacity Requests for instances above 16XL (seeds 000 and 001), schema `capacity`: approval
//! gates, the customer-confirmation TTL in business days, cancellation ownership, timers and
//! metrics, on the core event-store runner.

pub mod api;
pub mod flow;
pub mod linear;
pub mod machine;
pub mod notify;
pub mod settings;
pub mod slack;
pub mod store;
