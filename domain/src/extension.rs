//! The Extension aggregate: a number in a tenant with a display name and digest credentials.
//!
//! Provisioning is decided against the tenant's state too (limits, numbers taken,
//! suspension), and produces events for both streams, appended together.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::decider::Aggregate;
use crate::digest::Ha1;
use crate::event_family;
use crate::tenant::{ExtensionNumberClaimed, TenantEvent, TenantState};

pub const MIN_PASSWORD_LEN: usize = 8;
pub const MAX_PASSWORD_LEN: usize = 128;
pub const MAX_DISPLAY_NAME_LEN: usize = 100;
pub const MAX_NUMBER_LEN: usize = 15;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtensionProvisioned {
    pub extension_id: Uuid,
    pub tenant_id: Uuid,
    pub number: String,
    pub display_name: String,
    /// The digest realm the HA1 values were computed for (the tenant's SIP domain).
    pub realm: String,
    pub ha1_md5: String,
    pub ha1_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtensionPasswordChanged {
    pub ha1_md5: String,
    pub ha1_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtensionDisabled {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtensionEnabled {}

event_family! {
    /// Everything that happens on an `extension-{id}` stream.
    pub enum ExtensionEvent {
        ExtensionProvisioned,
        ExtensionPasswordChanged,
        ExtensionDisabled,
        ExtensionEnabled,
    }
}

/// A password in clear, only ever held in a command; `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provision {
    pub extension_id: Uuid,
    pub number: String,
    pub display_name: String,
    pub password: Password,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionCommand {
    ChangePassword { password: Password },
    Disable { reason: String },
    Enable,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionRejection {
    #[error("no such tenant")]
    TenantNotFound,
    #[error("the tenant is suspended")]
    TenantSuspended,
    #[error("number {0} is already taken in this tenant")]
    DuplicateNumber(String),
    #[error("the tenant's limit of {0} extensions is reached")]
    LimitReached(u32),
    #[error("invalid number `{0}`: use 2 to {MAX_NUMBER_LEN} digits")]
    InvalidNumber(String),
    #[error("invalid display name: {0}")]
    InvalidDisplayName(String),
    #[error("the password must have {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters and no control characters")]
    WeakPassword,
    #[error("the extension already exists")]
    AlreadyExists,
    #[error("no such extension")]
    NotFound,
    #[error("the extension is already disabled")]
    AlreadyDisabled,
    #[error("the extension is not disabled")]
    NotDisabled,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtensionState {
    pub provisioned: Option<ExtensionProvisioned>,
    pub disabled: bool,
}

pub struct Extension;

impl Aggregate for Extension {
    type Event = ExtensionEvent;
    type State = ExtensionState;
    const STREAM_PREFIX: &'static str = "extension";

    fn evolve(mut state: ExtensionState, event: &ExtensionEvent) -> ExtensionState {
        match event {
            ExtensionEvent::ExtensionProvisioned(e) => state.provisioned = Some(e.clone()),
            ExtensionEvent::ExtensionPasswordChanged(e) => {
                if let Some(p) = state.provisioned.as_mut() {
                    p.ha1_md5 = e.ha1_md5.clone();
                    p.ha1_sha256 = e.ha1_sha256.clone();
                }
            }
            ExtensionEvent::ExtensionDisabled(_) => state.disabled = true,
            ExtensionEvent::ExtensionEnabled(_) => state.disabled = false,
        }
        state
    }
}

/// Provision a new extension in a tenant: one event for the tenant (the number claim)
/// and one for the new extension stream.
pub fn decide_provision(
    command: &Provision,
    tenant: &TenantState,
    extension: &ExtensionState,
) -> Result<(Vec<TenantEvent>, Vec<ExtensionEvent>), ExtensionRejection> {
    let Some(created) = tenant.created.as_ref() else {
        return Err(ExtensionRejection::TenantNotFound);
    };
    if tenant.suspended {
        return Err(ExtensionRejection::TenantSuspended);
    }
    if extension.provisioned.is_some() {
        return Err(ExtensionRejection::AlreadyExists);
    }
    let number = command.number.trim();
    if number.len() < 2 || number.len() > MAX_NUMBER_LEN || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ExtensionRejection::InvalidNumber(
            number.chars().take(MAX_NUMBER_LEN + 1).collect(),
        ));
    }
    if tenant.numbers.contains_key(number) {
        return Err(ExtensionRejection::DuplicateNumber(number.to_string()));
    }
    if tenant.numbers.len() as u64 >= u64::from(created.max_extensions) {
        return Err(ExtensionRejection::LimitReached(created.max_extensions));
    }
    let display_name = valid_display_name(&command.display_name)?;
    let ha1 = hashed_password(number, &created.sip_domain, &command.password)?;
    Ok((
        vec![TenantEvent::ExtensionNumberClaimed(ExtensionNumberClaimed {
            extension_id: command.extension_id,
            number: number.to_string(),
        })],
        vec![ExtensionEvent::ExtensionProvisioned(ExtensionProvisioned {
            extension_id: command.extension_id,
            tenant_id: created.tenant_id,
            number: number.to_string(),
            display_name,
            realm: created.sip_domain.clone(),
            ha1_md5: ha1.md5,
            ha1_sha256: ha1.sha256,
        })],
    ))
}

pub fn decide(command: &ExtensionCommand, state: &ExtensionState) -> Result<Vec<ExtensionEvent>, ExtensionRejection> {
    let Some(provisioned) = state.provisioned.as_ref() else {
        return Err(ExtensionRejection::NotFound);
    };
    match command {
        ExtensionCommand::ChangePassword { password } => {
            let ha1 = hashed_password(&provisioned.number, &provisioned.realm, password)?;
            if ha1.md5 == provisioned.ha1_md5 {
                return Ok(vec![]);
            }
            Ok(vec![ExtensionEvent::ExtensionPasswordChanged(
                ExtensionPasswordChanged {
                    ha1_md5: ha1.md5,
                    ha1_sha256: ha1.sha256,
                },
            )])
        }
        ExtensionCommand::Disable { reason } => {
            if state.disabled {
                return Err(ExtensionRejection::AlreadyDisabled);
            }
            Ok(vec![ExtensionEvent::ExtensionDisabled(ExtensionDisabled {
                reason: reason.trim().chars().take(MAX_DISPLAY_NAME_LEN).collect(),
            })])
        }
        ExtensionCommand::Enable => {
            if !state.disabled {
                return Err(ExtensionRejection::NotDisabled);
            }
            Ok(vec![ExtensionEvent::ExtensionEnabled(ExtensionEnabled {})])
        }
    }
}

fn hashed_password(number: &str, realm: &str, password: &Password) -> Result<Ha1, ExtensionRejection> {
    let len = password.0.chars().count();
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&len) || password.0.chars().any(char::is_control) {
        return Err(ExtensionRejection::WeakPassword);
    }
    Ok(Ha1::compute(number, realm, &password.0))
}

fn valid_display_name(name: &str) -> Result<String, ExtensionRejection> {
    let name = name.trim();
    if name.chars().count() > MAX_DISPLAY_NAME_LEN {
        return Err(ExtensionRejection::InvalidDisplayName(format!(
            "longer than {MAX_DISPLAY_NAME_LEN} characters"
        )));
    }
    if name.chars().any(|c| c.is_control() || c == '"') {
        return Err(ExtensionRejection::InvalidDisplayName(
            "it contains quotes or control characters".into(),
        ));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::{Tenant, TenantCreated, TenantSuspended};

    const TENANT: Uuid = Uuid::from_u128(7);

    fn tenant(max_extensions: u32, extra: &[TenantEvent]) -> TenantState {
        let mut events = vec![TenantEvent::TenantCreated(TenantCreated {
            tenant_id: TENANT,
            name: "Acme".into(),
            sip_domain: "acme.test".into(),
            max_extensions,
            max_concurrent_calls: 4,
        })];
        events.extend_from_slice(extra);
        Tenant::fold(&events)
    }

    fn claim(n: u128, number: &str) -> TenantEvent {
        TenantEvent::ExtensionNumberClaimed(ExtensionNumberClaimed {
            extension_id: Uuid::from_u128(n),
            number: number.into(),
        })
    }

    fn provision(number: &str, password: &str) -> Provision {
        Provision {
            extension_id: Uuid::from_u128(100),
            number: number.into(),
            display_name: "Alice".into(),
            password: Password(password.into()),
        }
    }

    #[test]
    fn provisions_with_ha1_only_and_claims_the_number() {
        let (t, e) = decide_provision(
            &provision("1001", "s3cret-pass"),
            &tenant(2, &[]),
            &ExtensionState::default(),
        )
        .unwrap();
        assert_eq!(t, vec![claim(100, "1001")]);
        let ExtensionEvent::ExtensionProvisioned(p) = &e[0] else {
            panic!("expected provisioned, got {e:?}")
        };
        assert_eq!(p.ha1_md5, Ha1::compute("1001", "acme.test", "s3cret-pass").md5);
        assert_eq!(p.realm, "acme.test");
        let payload = crate::DomainEvent::to_payload(&e[0]).to_string();
        assert!(
            !payload.contains("s3cret-pass"),
            "the clear password must never be in an event"
        );
        assert!(!format!("{:?}", provision("1001", "s3cret-pass")).contains("s3cret"));
    }

    #[test]
    fn provisioning_rules_table() {
        let fresh = ExtensionState::default();
        let suspended = TenantEvent::TenantSuspended(TenantSuspended { reason: "x".into() });
        let cases: Vec<(TenantState, Provision, ExtensionRejection)> = vec![
            (
                TenantState::default(),
                provision("1001", "password1"),
                ExtensionRejection::TenantNotFound,
            ),
            (
                tenant(2, &[suspended]),
                provision("1001", "password1"),
                ExtensionRejection::TenantSuspended,
            ),
            (
                tenant(5, &[claim(1, "1001")]),
                provision("1001", "password1"),
                ExtensionRejection::DuplicateNumber("1001".into()),
            ),
            (
                tenant(2, &[claim(1, "1001"), claim(2, "1002")]),
                provision("1003", "password1"),
                ExtensionRejection::LimitReached(2),
            ),
            (
                tenant(2, &[]),
                provision("10a1", "password1"),
                ExtensionRejection::InvalidNumber("10a1".into()),
            ),
            (
                tenant(2, &[]),
                provision("1", "password1"),
                ExtensionRejection::InvalidNumber("1".into()),
            ),
            (
                tenant(2, &[]),
                provision("1001", "short"),
                ExtensionRejection::WeakPassword,
            ),
            (
                tenant(2, &[]),
                provision("1001", "pass\nword1"),
                ExtensionRejection::WeakPassword,
            ),
        ];
        for (tenant_state, command, rejection) in cases {
            assert_eq!(
                decide_provision(&command, &tenant_state, &fresh),
                Err(rejection.clone()),
                "when {command:?} then {rejection}"
            );
        }
    }

    #[test]
    fn an_existing_extension_is_not_provisioned_twice() {
        let (_, e) = decide_provision(
            &provision("1001", "password1"),
            &tenant(2, &[]),
            &ExtensionState::default(),
        )
        .unwrap();
        let state = Extension::fold(&e);
        assert_eq!(
            decide_provision(&provision("1002", "password1"), &tenant(2, &[]), &state),
            Err(ExtensionRejection::AlreadyExists)
        );
    }

    #[test]
    fn password_disable_enable_table() {
        let (_, provisioned) = decide_provision(
            &provision("1001", "password1"),
            &tenant(2, &[]),
            &ExtensionState::default(),
        )
        .unwrap();
        let active = Extension::fold(&provisioned);
        let mut disabled_history = provisioned.clone();
        disabled_history.push(ExtensionEvent::ExtensionDisabled(ExtensionDisabled {
            reason: "left".into(),
        }));
        let disabled = Extension::fold(&disabled_history);

        let new_ha1 = Ha1::compute("1001", "acme.test", "password2");
        assert_eq!(
            decide(
                &ExtensionCommand::ChangePassword {
                    password: Password("password2".into())
                },
                &active
            ),
            Ok(vec![ExtensionEvent::ExtensionPasswordChanged(
                ExtensionPasswordChanged {
                    ha1_md5: new_ha1.md5,
                    ha1_sha256: new_ha1.sha256,
                }
            )])
        );
        assert_eq!(
            decide(
                &ExtensionCommand::ChangePassword {
                    password: Password("password1".into())
                },
                &active
            ),
            Ok(vec![])
        );
        assert_eq!(
            decide(
                &ExtensionCommand::ChangePassword {
                    password: Password("x".into())
                },
                &active
            ),
            Err(ExtensionRejection::WeakPassword)
        );
        assert_eq!(
            decide(&ExtensionCommand::Disable { reason: "again".into() }, &disabled),
            Err(ExtensionRejection::AlreadyDisabled)
        );
        assert_eq!(
            decide(&ExtensionCommand::Enable, &active),
            Err(ExtensionRejection::NotDisabled)
        );
        assert_eq!(
            decide(&ExtensionCommand::Enable, &disabled),
            Ok(vec![ExtensionEvent::ExtensionEnabled(ExtensionEnabled {})])
        );
        assert_eq!(
            decide(&ExtensionCommand::Enable, &ExtensionState::default()),
            Err(ExtensionRejection::NotFound)
        );
    }
}
