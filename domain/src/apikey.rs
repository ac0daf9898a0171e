//! API keys (`apikey-{key_id}`, owned by the key's tenant): created with a role and the
//! SHA-256 of the secret (the secret itself is shown once and never stored), or revoked.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::decider::Aggregate;
use crate::event_family;

/// What a key may do; the tenant always comes from the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Every tenant: may list and create tenants, and everything a tenant admin may.
    SystemAdmin,
    /// Everything inside its tenant.
    TenantAdmin,
    /// Billing reads and writes (accounts, top-ups, adjustments, tariffs, period close), exports.
    Finance,
    /// Read-only: events, exports, projection status.
    Auditor,
    /// Reads, subscriptions and webhooks.
    Developer,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::SystemAdmin,
        Role::TenantAdmin,
        Role::Finance,
        Role::Auditor,
        Role::Developer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::SystemAdmin => "system_admin",
            Role::TenantAdmin => "tenant_admin",
            Role::Finance => "finance",
            Role::Auditor => "auditor",
            Role::Developer => "developer",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

pub const MAX_LABEL_LEN: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyCreated {
    pub key_id: Uuid,
    pub tenant_id: Uuid,
    pub role: Role,
    /// Lowercase hex SHA-256 of the whole key as the client sends it.
    pub key_hash: String,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRevoked {
    pub key_id: Uuid,
    pub reason: String,
}

event_family! {
    /// Everything that happens on an `apikey-{key_id}` stream.
    pub enum ApiKeyEvent {
        ApiKeyCreated,
        ApiKeyRevoked,
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ApiKeyState {
    #[default]
    Absent,
    Active {
        key_id: Uuid,
        tenant_id: Uuid,
        role: Role,
    },
    Revoked,
}

pub struct ApiKey;

impl Aggregate for ApiKey {
    type Event = ApiKeyEvent;
    type State = ApiKeyState;
    const STREAM_PREFIX: &'static str = "apikey";

    fn evolve(state: ApiKeyState, event: &ApiKeyEvent) -> ApiKeyState {
        match event {
            ApiKeyEvent::ApiKeyCreated(e) => ApiKeyState::Active {
                key_id: e.key_id,
                tenant_id: e.tenant_id,
                role: e.role,
            },
            ApiKeyEvent::ApiKeyRevoked(_) => match state {
                ApiKeyState::Absent => ApiKeyState::Absent,
                _ => ApiKeyState::Revoked,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyCommand {
    Create {
        key_id: Uuid,
        tenant_id: Uuid,
        role: Role,
        key_hash: String,
        label: String,
    },
    Revoke {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyRejection {
    #[error("the key already exists")]
    AlreadyExists,
    #[error("no such key")]
    NotFound,
    #[error("the key is already revoked")]
    AlreadyRevoked,
    #[error("the key hash must be 64 lowercase hex digits")]
    BadHash,
    #[error("the label is longer than {MAX_LABEL_LEN} characters")]
    LabelTooLong,
}

pub fn decide(command: &ApiKeyCommand, state: &ApiKeyState) -> Result<Vec<ApiKeyEvent>, ApiKeyRejection> {
    match (command, state) {
        (
            ApiKeyCommand::Create {
                key_id,
                tenant_id,
                role,
                key_hash,
                label,
            },
            ApiKeyState::Absent,
        ) => {
            if key_hash.len() != 64
                || !key_hash
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(ApiKeyRejection::BadHash);
            }
            if label.chars().count() > MAX_LABEL_LEN {
                return Err(ApiKeyRejection::LabelTooLong);
            }
            Ok(vec![ApiKeyEvent::ApiKeyCreated(ApiKeyCreated {
                key_id: *key_id,
                tenant_id: *tenant_id,
                role: *role,
                key_hash: key_hash.clone(),
                label: label.clone(),
            })])
        }
        (ApiKeyCommand::Create { .. }, _) => Err(ApiKeyRejection::AlreadyExists),
        (ApiKeyCommand::Revoke { .. }, ApiKeyState::Absent) => Err(ApiKeyRejection::NotFound),
        (ApiKeyCommand::Revoke { .. }, ApiKeyState::Revoked) => Err(ApiKeyRejection::AlreadyRevoked),
        (ApiKeyCommand::Revoke { reason }, ApiKeyState::Active { key_id, .. }) => {
            Ok(vec![ApiKeyEvent::ApiKeyRevoked(ApiKeyRevoked {
                key_id: *key_id,
                reason: reason.clone(),
            })])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_revoke_once() {
        let key_id = Uuid::from_u128(7);
        let create = ApiKeyCommand::Create {
            key_id,
            tenant_id: Uuid::from_u128(1),
            role: Role::Finance,
            key_hash: "ab".repeat(32),
            label: "ci".into(),
        };
        let events = decide(&create, &ApiKeyState::Absent).unwrap();
        let state = ApiKey::fold(&events);
        assert_eq!(decide(&create, &state), Err(ApiKeyRejection::AlreadyExists));
        let revoke = ApiKeyCommand::Revoke {
            reason: "leaked".into(),
        };
        let revoked = decide(&revoke, &state).unwrap();
        assert!(matches!(&revoked[0], ApiKeyEvent::ApiKeyRevoked(e) if e.key_id == key_id));
        let state = ApiKey::evolve(state, &revoked[0]);
        assert_eq!(decide(&revoke, &state), Err(ApiKeyRejection::AlreadyRevoked));
        assert_eq!(decide(&revoke, &ApiKeyState::Absent), Err(ApiKeyRejection::NotFound));
    }

    #[test]
    fn refuses_bad_hashes_and_roles_round_trip() {
        let create = ApiKeyCommand::Create {
            key_id: Uuid::from_u128(7),
            tenant_id: Uuid::from_u128(1),
            role: Role::Auditor,
            key_hash: "AB".repeat(32),
            label: String::new(),
        };
        assert_eq!(decide(&create, &ApiKeyState::Absent), Err(ApiKeyRejection::BadHash));
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
