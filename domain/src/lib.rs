//! Ledgerline's domain: the events and pure deciders of every aggregate.
//!
//! Nothing here does IO, is async or reads a clock: a decider gets everything it
//! needs (including `now` and any looked-up facts) inside its command, and answers
//! with events or a rejection. `commands` loads, decides and appends.

pub mod apikey;
pub mod call;
pub mod conference;
pub mod decider;
pub mod digest;
pub mod event;
pub mod extension;
pub mod registration;
pub mod registry;
pub mod routing;
pub mod security;
pub mod tenant;
pub mod webhook;

pub use decider::Aggregate;
pub use event::{DomainEvent, SchemaError};

/// The tenant id that owns system-wide streams (such as SIP domain claims).
pub const SYSTEM_TENANT: uuid::Uuid = uuid::Uuid::nil();
