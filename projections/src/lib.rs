//! Projections: the runner that follows the log and the read models it builds.
//!
//! A projection never writes to `events`; its checkpoint moves in the same transaction
//! as the read-model rows of the batch it covers, so its effect is exactly once.

pub mod billing;
pub mod conferences;
pub mod directory;
pub mod invoices;
pub mod rebuild;
pub mod runner;
pub mod webhooks;

pub use runner::{Projection, ProjectionError, Runner, Until};
