//! Registrations of an extension's devices (`registration-{extension_id}`): events only when
//! a binding is created, changed or removed, never on a refresh.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event_family;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceRegistered {
    pub extension_id: Uuid,
    pub contact: String,
    /// Where the REGISTER came from (`udp:203.0.113.5:5060`), for NAT traversal.
    pub source: String,
    #[serde(default)]
    pub user_agent: String,
    pub expires_at: DateTime<Utc>,
    pub node_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceRegistrationChanged {
    pub extension_id: Uuid,
    pub contact: String,
    pub source: String,
    #[serde(default)]
    pub user_agent: String,
    pub expires_at: DateTime<Utc>,
    pub node_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnregisterReason {
    /// The device said so (Expires: 0, or `*`).
    Removed,
    /// The binding ran out without a refresh.
    Expired,
    /// The extension was disabled or its tenant suspended.
    Revoked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceUnregistered {
    pub extension_id: Uuid,
    pub contact: String,
    pub reason: UnregisterReason,
}

event_family! {
    /// Everything that happens on a `registration-{extension_id}` stream.
    pub enum RegistrationEvent {
        DeviceRegistered,
        DeviceRegistrationChanged,
        DeviceUnregistered,
    }
}

/// The stream of an extension's registrations.
pub fn stream_id(extension_id: &Uuid) -> String {
    format!("registration-{extension_id}")
}
