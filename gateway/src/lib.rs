//! The gateway's library side: the doors' sans-IO cores and their tokio shells, testable
//! without the binary.

pub mod api;
pub mod binding_cache;
pub mod call_directory;
pub mod directory_cache;
pub mod finance;
pub mod location;
pub mod media_link;
pub mod sip;
pub mod sip_service;
pub mod transport;
pub mod webhooks;
