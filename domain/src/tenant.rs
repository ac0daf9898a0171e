//! The Tenant aggregate: a customer of the PBX with its SIP domain, limits and extension numbers.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

use crate::decider::Aggregate;
use crate::event_family;

/// Bounds that apply to every tenant, whatever it asks for.
pub const MAX_EXTENSIONS_CEILING: u32 = 100_000;
pub const MAX_CALLS_CEILING: u32 = 100_000;
pub const MAX_NAME_LEN: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantCreated {
    pub tenant_id: Uuid,
    pub name: String,
    pub sip_domain: String,
    pub max_extensions: u32,
    pub max_concurrent_calls: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantRenamed {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantSuspended {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantResumed {}

/// An extension number taken inside the tenant; kept on the tenant stream so that
/// uniqueness and the extension limit are decided under one stream version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtensionNumberClaimed {
    pub extension_id: Uuid,
    pub number: String,
}

/// A SIP domain taken by a tenant; lives on the system stream `sipdomain-{domain}`
/// so that no two tenants can hold one domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SipDomainClaimed {
    pub tenant_id: Uuid,
    pub sip_domain: String,
}

event_family! {
    /// Everything that happens on a `tenant-{id}` stream.
    pub enum TenantEvent {
        TenantCreated,
        TenantRenamed,
        TenantSuspended,
        TenantResumed,
        ExtensionNumberClaimed,
    }
}

event_family! {
    /// Events of the system-wide `sipdomain-{domain}` streams.
    pub enum SipDomainEvent {
        SipDomainClaimed,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_extensions: u32,
    pub max_concurrent_calls: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_extensions: 100,
            max_concurrent_calls: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantCommand {
    Create {
        tenant_id: Uuid,
        name: String,
        sip_domain: String,
        limits: Limits,
    },
    Rename {
        name: String,
    },
    Suspend {
        reason: String,
    },
    Resume,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantRejection {
    #[error("the tenant already exists")]
    AlreadyExists,
    #[error("no such tenant")]
    NotFound,
    #[error("invalid name: {0}")]
    InvalidName(String),
    #[error("invalid SIP domain `{0}`: use a DNS name such as acme.example.com")]
    InvalidDomain(String),
    #[error("invalid limits: {0}")]
    InvalidLimits(String),
    #[error("the tenant is already suspended")]
    AlreadySuspended,
    #[error("the tenant is not suspended")]
    NotSuspended,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantState {
    pub created: Option<TenantCreated>,
    pub name: String,
    pub suspended: bool,
    /// Extension number → extension id.
    pub numbers: BTreeMap<String, Uuid>,
}

impl TenantState {
    pub fn exists(&self) -> bool {
        self.created.is_some()
    }
    pub fn limits(&self) -> Option<Limits> {
        self.created.as_ref().map(|c| Limits {
            max_extensions: c.max_extensions,
            max_concurrent_calls: c.max_concurrent_calls,
        })
    }
    pub fn sip_domain(&self) -> Option<&str> {
        self.created.as_ref().map(|c| c.sip_domain.as_str())
    }
}

pub struct Tenant;

impl Aggregate for Tenant {
    type Event = TenantEvent;
    type State = TenantState;
    const STREAM_PREFIX: &'static str = "tenant";

    fn evolve(mut state: TenantState, event: &TenantEvent) -> TenantState {
        match event {
            TenantEvent::TenantCreated(e) => {
                state.name = e.name.clone();
                state.created = Some(e.clone());
            }
            TenantEvent::TenantRenamed(e) => state.name = e.name.clone(),
            TenantEvent::TenantSuspended(_) => state.suspended = true,
            TenantEvent::TenantResumed(_) => state.suspended = false,
            TenantEvent::ExtensionNumberClaimed(e) => {
                state.numbers.insert(e.number.clone(), e.extension_id);
            }
        }
        state
    }
}

/// The stream that claims a SIP domain for one tenant, system-wide.
pub fn sip_domain_stream(sip_domain: &str) -> String {
    format!("sipdomain-{}", sip_domain.to_ascii_lowercase())
}

pub fn decide(command: &TenantCommand, state: &TenantState) -> Result<Vec<TenantEvent>, TenantRejection> {
    match command {
        TenantCommand::Create {
            tenant_id,
            name,
            sip_domain,
            limits,
        } => {
            if state.exists() {
                return Err(TenantRejection::AlreadyExists);
            }
            let name = valid_name(name)?;
            let sip_domain = valid_domain(sip_domain)?;
            if limits.max_extensions == 0 || limits.max_extensions > MAX_EXTENSIONS_CEILING {
                return Err(TenantRejection::InvalidLimits(format!(
                    "max extensions must be between 1 and {MAX_EXTENSIONS_CEILING}"
                )));
            }
            if limits.max_concurrent_calls == 0 || limits.max_concurrent_calls > MAX_CALLS_CEILING {
                return Err(TenantRejection::InvalidLimits(format!(
                    "max concurrent calls must be between 1 and {MAX_CALLS_CEILING}"
                )));
            }
            Ok(vec![TenantEvent::TenantCreated(TenantCreated {
                tenant_id: *tenant_id,
                name,
                sip_domain,
                max_extensions: limits.max_extensions,
                max_concurrent_calls: limits.max_concurrent_calls,
            })])
        }
        TenantCommand::Rename { name } => {
            if !state.exists() {
                return Err(TenantRejection::NotFound);
            }
            let name = valid_name(name)?;
            if name == state.name {
                return Ok(vec![]);
            }
            Ok(vec![TenantEvent::TenantRenamed(TenantRenamed { name })])
        }
        TenantCommand::Suspend { reason } => {
            if !state.exists() {
                return Err(TenantRejection::NotFound);
            }
            if state.suspended {
                return Err(TenantRejection::AlreadySuspended);
            }
            Ok(vec![TenantEvent::TenantSuspended(TenantSuspended {
                reason: reason.trim().chars().take(MAX_NAME_LEN).collect(),
            })])
        }
        TenantCommand::Resume => {
            if !state.exists() {
                return Err(TenantRejection::NotFound);
            }
            if !state.suspended {
                return Err(TenantRejection::NotSuspended);
            }
            Ok(vec![TenantEvent::TenantResumed(TenantResumed {})])
        }
    }
}

fn valid_name(name: &str) -> Result<String, TenantRejection> {
    let name = name.trim();
    if name.is_empty() {
        return Err(TenantRejection::InvalidName("it is empty".into()));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(TenantRejection::InvalidName(format!(
            "longer than {MAX_NAME_LEN} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(TenantRejection::InvalidName("it contains control characters".into()));
    }
    Ok(name.to_string())
}

/// A SIP domain is a lower-case DNS name: labels of letters, digits and hyphens.
pub fn valid_domain(domain: &str) -> Result<String, TenantRejection> {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(domain)
    } else {
        Err(TenantRejection::InvalidDomain(domain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created() -> TenantEvent {
        TenantEvent::TenantCreated(TenantCreated {
            tenant_id: Uuid::from_u128(1),
            name: "Acme".into(),
            sip_domain: "acme.test".into(),
            max_extensions: 2,
            max_concurrent_calls: 5,
        })
    }

    fn given(events: &[TenantEvent]) -> TenantState {
        Tenant::fold(events)
    }

    fn create_cmd(name: &str, domain: &str, max_extensions: u32) -> TenantCommand {
        TenantCommand::Create {
            tenant_id: Uuid::from_u128(1),
            name: name.into(),
            sip_domain: domain.into(),
            limits: Limits {
                max_extensions,
                max_concurrent_calls: 5,
            },
        }
    }

    #[test]
    fn given_nothing_when_create_then_created_with_normalized_domain() {
        let events = decide(&create_cmd(" Acme ", "ACME.test.", 2), &given(&[])).unwrap();
        assert_eq!(events, vec![created()]);
    }

    #[test]
    fn given_created_when_create_again_then_already_exists() {
        let result = decide(&create_cmd("Acme", "acme.test", 2), &given(&[created()]));
        assert_eq!(result, Err(TenantRejection::AlreadyExists));
    }

    #[test]
    fn rejects_bad_names_domains_and_limits() {
        let state = given(&[]);
        assert!(matches!(
            decide(&create_cmd("  ", "acme.test", 2), &state),
            Err(TenantRejection::InvalidName(_))
        ));
        assert!(matches!(
            decide(&create_cmd("A\u{7}", "acme.test", 2), &state),
            Err(TenantRejection::InvalidName(_))
        ));
        for bad in ["", "acme..test", "-acme.test", "acme_test", "a b", "ac/me"] {
            assert!(
                matches!(
                    decide(&create_cmd("Acme", bad, 2), &state),
                    Err(TenantRejection::InvalidDomain(_))
                ),
                "{bad:?} must be refused"
            );
        }
        assert!(matches!(
            decide(&create_cmd("Acme", "acme.test", 0), &state),
            Err(TenantRejection::InvalidLimits(_))
        ));
        assert!(matches!(
            decide(&create_cmd("Acme", "acme.test", MAX_EXTENSIONS_CEILING + 1), &state),
            Err(TenantRejection::InvalidLimits(_))
        ));
    }

    type Case = (
        Vec<TenantEvent>,
        TenantCommand,
        Result<Vec<TenantEvent>, TenantRejection>,
    );

    #[test]
    fn rename_suspend_resume_table() {
        let suspended = TenantEvent::TenantSuspended(TenantSuspended {
            reason: "unpaid".into(),
        });
        let cases: Vec<Case> = vec![
            (
                vec![],
                TenantCommand::Rename { name: "X".into() },
                Err(TenantRejection::NotFound),
            ),
            (
                vec![created()],
                TenantCommand::Rename {
                    name: "Acme Ltd".into(),
                },
                Ok(vec![TenantEvent::TenantRenamed(TenantRenamed {
                    name: "Acme Ltd".into(),
                })]),
            ),
            (
                vec![created()],
                TenantCommand::Rename { name: "Acme".into() },
                Ok(vec![]),
            ),
            (
                vec![created()],
                TenantCommand::Suspend {
                    reason: "unpaid".into(),
                },
                Ok(vec![suspended.clone()]),
            ),
            (
                vec![created(), suspended.clone()],
                TenantCommand::Suspend { reason: "again".into() },
                Err(TenantRejection::AlreadySuspended),
            ),
            (
                vec![created()],
                TenantCommand::Resume,
                Err(TenantRejection::NotSuspended),
            ),
            (
                vec![created(), suspended],
                TenantCommand::Resume,
                Ok(vec![TenantEvent::TenantResumed(TenantResumed {})]),
            ),
            (
                vec![],
                TenantCommand::Suspend { reason: "x".into() },
                Err(TenantRejection::NotFound),
            ),
        ];
        for (history, command, expected) in cases {
            assert_eq!(
                decide(&command, &given(&history)),
                expected,
                "given {history:?} when {command:?}"
            );
        }
    }
}
