//! The SIP signaling node's sans-IO core: parsing, transactions, digest auth, registrar and screening.
//!
//! Nothing in here touches a socket, a database or the clock: bytes, lookup results and `now`
//! come in as arguments, and what to send comes back out, so every path runs on a virtual clock.
//! The exception is `hangup`, the small follower that reads hang-up requests from the log
//! and hands them to the node loop.

pub mod abuse;
pub mod b2bua;
pub mod core_bench;
pub use b2bua::anchoring;
pub mod digest;
pub mod dtmf_info;
pub mod fuzzing;
pub mod hangup;
pub mod message;
pub mod node;
pub mod registrar;
pub mod screening;
pub mod transaction;

#[cfg(test)]
mod torture;
