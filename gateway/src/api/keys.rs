//! Keys area: create (the secret is answered once) and revoke API keys of the caller's tenant.

use async_graphql::{Context, Object, SimpleObject};
use domain::apikey::Role;
use uuid::Uuid;

use super::auth::{self, Capability};
use super::error::{ApiError, ApiResult};
use super::{command, require, state, text, MutationResult};

#[derive(SimpleObject, Debug, Clone)]
pub struct CreatedApiKey {
    pub key_id: Uuid,
    /// The key itself: shown this once, stored only as its SHA-256. Empty on a replay.
    pub key: String,
    pub role: String,
    pub replayed: bool,
}

#[derive(Default)]
pub struct KeysMutation;

#[Object]
impl KeysMutation {
    /// A new key for the caller's tenant. Tenant admins cannot mint system admins.
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        role: String,
        #[graphql(default)] label: String,
    ) -> ApiResult<CreatedApiKey> {
        let caller = require(ctx, Capability::ManageKeys)?;
        text("label", &label, domain::apikey::MAX_LABEL_LEN)?;
        let role = Role::parse(&role).ok_or_else(|| {
            ApiError::invalid("role must be system_admin, tenant_admin, finance, auditor or developer")
        })?;
        if role == Role::SystemAdmin && caller.role != Role::SystemAdmin {
            return Err(ApiError::forbidden("only a system admin may create a system admin key"));
        }
        let cmd = command(ctx, &caller, "createApiKey", idempotency_key);
        let created = auth::create_key(&state(ctx).handler, &cmd, caller.tenant_id, role, &label).await?;
        Ok(CreatedApiKey {
            key_id: created.key_id,
            key: created.key,
            role: role.as_str().to_string(),
            replayed: created.outcome.replayed,
        })
    }

    /// Revoke one of the caller's tenant's keys: it stops working at once.
    async fn revoke_api_key(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        key_id: Uuid,
        #[graphql(default)] reason: String,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageKeys)?;
        text("reason", &reason, 500)?;
        let cmd = command(ctx, &caller, "revokeApiKey", idempotency_key);
        let outcome = auth::revoke_key(
            &state(ctx).handler,
            Some(&state(ctx).keys),
            &cmd,
            caller.tenant_id,
            key_id,
            &reason,
        )
        .await?;
        Ok(MutationResult::new(key_id, outcome))
    }
}
