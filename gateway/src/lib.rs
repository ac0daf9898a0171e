//! The gateway's library side: the doors' cores and shells, testable without the binary.

pub mod location;
pub mod transport;
