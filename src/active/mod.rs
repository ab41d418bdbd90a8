//! PROVISIONAL stand-in (branch `active`).
pub mod metrics;
