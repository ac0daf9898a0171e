//! Security facts about the network doors (`sip-abuse-{ip}` streams of the system tenant):
//! which source addresses a node blocked after repeated failed authentications.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event_family;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceBlocked {
    /// The blocked address (no port: the whole host is blocked).
    pub ip: String,
    /// Failed authentications within the window that triggered the block.
    pub failures: u32,
    pub blocked_at: DateTime<Utc>,
    pub blocked_until: DateTime<Utc>,
    pub node_id: String,
}

event_family! {
    /// Everything that happens on a `sip-abuse-{ip}` stream.
    pub enum SecurityEvent {
        SourceBlocked,
    }
}

/// The stream of one source address.
pub fn stream_id(ip: &str) -> String {
    format!("sip-abuse-{ip}")
}
