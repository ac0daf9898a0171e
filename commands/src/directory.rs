//! The directory commands (tenants and extensions): which streams each one touches.

use uuid::Uuid;

use crate::handler::{CommandContext, CommandError, CommandHandler, Outcome, StreamRef};
use domain::extension::{self, Extension, ExtensionCommand, ExtensionRejection, Password, Provision};
use domain::tenant::{self, SipDomainClaimed, SipDomainEvent, Tenant, TenantCommand, TenantRejection};
use domain::{Aggregate, SYSTEM_TENANT};

/// The system-wide claim of a SIP domain: which tenant holds it, if any.
pub struct SipDomain;

impl Aggregate for SipDomain {
    type Event = SipDomainEvent;
    type State = Option<Uuid>;
    const STREAM_PREFIX: &'static str = "sipdomain";

    fn evolve(_state: Option<Uuid>, event: &SipDomainEvent) -> Option<Uuid> {
        match event {
            SipDomainEvent::SipDomainClaimed(e) => Some(e.tenant_id),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryRejection {
    #[error(transparent)]
    Tenant(#[from] TenantRejection),
    #[error(transparent)]
    Extension(#[from] ExtensionRejection),
    #[error("the SIP domain {0} belongs to another tenant")]
    DomainTaken(String),
}

pub type DirectoryError = CommandError<DirectoryRejection>;

pub async fn create_tenant(
    handler: &CommandHandler,
    ctx: &CommandContext,
    tenant_id: Uuid,
    name: &str,
    sip_domain: &str,
    limits: tenant::Limits,
) -> Result<Outcome, DirectoryError> {
    let domain = tenant::valid_domain(sip_domain).map_err(|e| CommandError::Rejected(e.into()))?;
    let command = TenantCommand::Create {
        tenant_id,
        name: name.to_string(),
        sip_domain: domain.clone(),
        limits,
    };
    handler
        .execute2::<Tenant, SipDomain, DirectoryRejection>(
            ctx,
            StreamRef::of::<Tenant>(tenant_id, &tenant_id),
            StreamRef {
                tenant_id: SYSTEM_TENANT,
                stream_id: tenant::sip_domain_stream(&domain),
            },
            |tenant_state, claimed| {
                let events = tenant::decide(&command, tenant_state)?;
                if claimed.is_some() {
                    return Err(DirectoryRejection::DomainTaken(domain.clone()));
                }
                let claim = SipDomainEvent::SipDomainClaimed(SipDomainClaimed {
                    tenant_id,
                    sip_domain: domain.clone(),
                });
                Ok((events, vec![claim]))
            },
        )
        .await
}

pub async fn tenant_command(
    handler: &CommandHandler,
    ctx: &CommandContext,
    tenant_id: Uuid,
    command: TenantCommand,
) -> Result<Outcome, DirectoryError> {
    handler
        .execute::<Tenant, DirectoryRejection>(ctx, StreamRef::of::<Tenant>(tenant_id, &tenant_id), |state| {
            tenant::decide(&command, state).map_err(Into::into)
        })
        .await
}

pub async fn provision_extension(
    handler: &CommandHandler,
    ctx: &CommandContext,
    tenant_id: Uuid,
    extension_id: Uuid,
    number: &str,
    display_name: &str,
    password: &str,
) -> Result<Outcome, DirectoryError> {
    let command = Provision {
        extension_id,
        number: number.to_string(),
        display_name: display_name.to_string(),
        password: Password(password.to_string()),
    };
    handler
        .execute2::<Tenant, Extension, DirectoryRejection>(
            ctx,
            StreamRef::of::<Tenant>(tenant_id, &tenant_id),
            StreamRef::of::<Extension>(tenant_id, &extension_id),
            |tenant_state, extension_state| {
                extension::decide_provision(&command, tenant_state, extension_state).map_err(Into::into)
            },
        )
        .await
}

pub async fn extension_command(
    handler: &CommandHandler,
    ctx: &CommandContext,
    tenant_id: Uuid,
    extension_id: Uuid,
    command: ExtensionCommand,
) -> Result<Outcome, DirectoryError> {
    handler
        .execute::<Extension, DirectoryRejection>(ctx, StreamRef::of::<Extension>(tenant_id, &extension_id), |state| {
            extension::decide(&command, state).map_err(Into::into)
        })
        .await
}
