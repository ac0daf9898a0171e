//! Directory area: the caller, tenants, extensions, registrations, live calls; tenant and
//! extension commands.

use async_graphql::connection::Connection;
use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, Utc};
use commands::directory;
use domain::extension::{ExtensionCommand, Password};
use domain::tenant::{Limits, TenantCommand};
use uuid::Uuid;

use super::auth::Capability;
use super::error::{ApiError, ApiResult};
use super::{caller, command, page, require, state, text, MutationResult};

#[derive(SimpleObject, sqlx::FromRow, Debug, Clone)]
pub struct Tenant {
    pub tenant_id: Uuid,
    pub name: String,
    pub sip_domain: String,
    pub max_extensions: i32,
    pub max_concurrent_calls: i32,
    pub suspended: bool,
    pub extension_count: i32,
    pub created_at: DateTime<Utc>,
}

#[derive(SimpleObject, sqlx::FromRow, Debug, Clone)]
pub struct Extension {
    pub extension_id: Uuid,
    pub number: String,
    pub display_name: String,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(SimpleObject, sqlx::FromRow, Debug, Clone)]
pub struct Registration {
    pub extension_id: Uuid,
    pub contact: String,
    pub user_agent: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(SimpleObject, sqlx::FromRow, Debug, Clone)]
pub struct LiveCall {
    pub call_id: Uuid,
    pub state: String,
    pub caller: String,
    pub callee: String,
    pub direction: String,
    pub started_at: DateTime<Utc>,
    pub answer_at: Option<DateTime<Utc>>,
    pub on_hold: bool,
}

/// Who the key belongs to.
#[derive(SimpleObject, Debug, Clone)]
pub struct Me {
    pub key_id: Uuid,
    pub tenant_id: Uuid,
    pub role: String,
    /// The tenant's name (empty for the system tenant).
    pub tenant_name: String,
}

const TENANT_COLUMNS: &str =
    "tenant_id, name, sip_domain, max_extensions, max_concurrent_calls, suspended, extension_count, created_at";

#[derive(Default)]
pub struct DirectoryQuery;

#[Object]
impl DirectoryQuery {
    /// The caller: its key, tenant and role.
    async fn me(&self, ctx: &Context<'_>) -> ApiResult<Me> {
        let caller = caller(ctx)?;
        let name: Option<String> = sqlx::query_scalar("SELECT name FROM rm_tenants WHERE tenant_id = $1")
            .bind(caller.tenant_id)
            .fetch_optional(&state(ctx).pool)
            .await?;
        Ok(Me {
            key_id: caller.key_id,
            tenant_id: caller.tenant_id,
            role: caller.role.as_str().to_string(),
            tenant_name: name.unwrap_or_default(),
        })
    }

    /// Every tenant (system administrators only).
    #[graphql(complexity = "(first.unwrap_or(50).clamp(1, 500) as usize) * child_complexity")]
    async fn tenants(&self, ctx: &Context<'_>, first: Option<i32>) -> ApiResult<Vec<Tenant>> {
        require(ctx, Capability::ManageTenants)?;
        let size = page::page_size(ctx, first)?;
        let sql = format!("SELECT {TENANT_COLUMNS} FROM rm_tenants ORDER BY name, tenant_id LIMIT $1");
        Ok(sqlx::query_as(&sql).bind(size).fetch_all(&state(ctx).pool).await?)
    }

    /// The caller's tenant.
    async fn tenant(&self, ctx: &Context<'_>) -> ApiResult<Option<Tenant>> {
        let caller = require(ctx, Capability::Read)?;
        let sql = format!("SELECT {TENANT_COLUMNS} FROM rm_tenants WHERE tenant_id = $1");
        Ok(sqlx::query_as(&sql)
            .bind(caller.tenant_id)
            .fetch_optional(&state(ctx).pool)
            .await?)
    }

    /// The tenant's extensions, by number.
    #[graphql(complexity = "(first.unwrap_or(50).clamp(1, 500) as usize) * child_complexity")]
    async fn extensions(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        enabled: Option<bool>,
    ) -> ApiResult<Connection<String, Extension>> {
        let caller = require(ctx, Capability::Read)?;
        let size = page::page_size(ctx, first)?;
        let after_number = match &after {
            Some(c) => Some(page::decode(c, 1)?.remove(0)),
            None => None,
        };
        let rows: Vec<Extension> = sqlx::query_as(
            "SELECT extension_id, number, display_name, enabled, created_at FROM rm_extensions \
             WHERE tenant_id = $1 AND ($2::text IS NULL OR number > $2) AND ($3::bool IS NULL OR enabled = $3) \
             ORDER BY number LIMIT $4",
        )
        .bind(caller.tenant_id)
        .bind(after_number)
        .bind(enabled)
        .bind(size + 1)
        .fetch_all(&state(ctx).pool)
        .await?;
        Ok(page::connection(rows, size, after.is_some(), |e| {
            vec![e.number.clone()]
        }))
    }

    /// Registered devices, optionally of one extension.
    #[graphql(complexity = "(first.unwrap_or(50).clamp(1, 500) as usize) * child_complexity")]
    async fn registrations(
        &self,
        ctx: &Context<'_>,
        extension_id: Option<Uuid>,
        first: Option<i32>,
    ) -> ApiResult<Vec<Registration>> {
        let caller = require(ctx, Capability::Read)?;
        let size = page::page_size(ctx, first)?;
        Ok(sqlx::query_as(
            "SELECT extension_id, contact, user_agent, expires_at FROM rm_registrations \
             WHERE tenant_id = $1 AND ($2::uuid IS NULL OR extension_id = $2) \
             ORDER BY extension_id, contact LIMIT $3",
        )
        .bind(caller.tenant_id)
        .bind(extension_id)
        .bind(size)
        .fetch_all(&state(ctx).pool)
        .await?)
    }

    /// Calls in progress.
    #[graphql(complexity = "(first.unwrap_or(50).clamp(1, 500) as usize) * child_complexity")]
    async fn live_calls(&self, ctx: &Context<'_>, first: Option<i32>) -> ApiResult<Vec<LiveCall>> {
        let caller = require(ctx, Capability::Read)?;
        let size = page::page_size(ctx, first)?;
        live_calls(&state(ctx).pool, caller.tenant_id, size).await
    }
}

pub async fn live_calls(pool: &sqlx::PgPool, tenant_id: Uuid, limit: i64) -> ApiResult<Vec<LiveCall>> {
    Ok(sqlx::query_as(
        "SELECT call_id, state, caller, callee, direction, started_at, answer_at, on_hold FROM rm_live_calls \
         WHERE tenant_id = $1 ORDER BY started_at, call_id LIMIT $2",
    )
    .bind(tenant_id)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

fn limits(max_extensions: i32, max_calls: i32) -> ApiResult<Limits> {
    let max_extensions = u32::try_from(max_extensions).map_err(|_| ApiError::invalid("maxExtensions must be >= 0"))?;
    let max_concurrent_calls = u32::try_from(max_calls).map_err(|_| ApiError::invalid("maxCalls must be >= 0"))?;
    Ok(Limits {
        max_extensions,
        max_concurrent_calls,
    })
}

#[derive(Default)]
pub struct DirectoryMutation;

#[Object]
impl DirectoryMutation {
    /// Create a tenant (system administrators). Its id derives from the idempotency key.
    async fn create_tenant(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        name: String,
        sip_domain: String,
        #[graphql(default = 100)] max_extensions: i32,
        #[graphql(default = 10)] max_calls: i32,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageTenants)?;
        text("name", &name, 200)?;
        text("sipDomain", &sip_domain, 253)?;
        let cmd = command(ctx, &caller, "createTenant", idempotency_key);
        let tenant_id = Uuid::new_v5(&cmd.command_id, b"tenant");
        let limits = limits(max_extensions, max_calls)?;
        let outcome =
            directory::create_tenant(&state(ctx).handler, &cmd, tenant_id, &name, &sip_domain, limits).await?;
        Ok(MutationResult::new(tenant_id, outcome))
    }

    /// Rename the caller's tenant.
    async fn rename_tenant(&self, ctx: &Context<'_>, idempotency_key: Uuid, name: String) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageDirectory)?;
        text("name", &name, 200)?;
        let cmd = command(ctx, &caller, "renameTenant", idempotency_key);
        let outcome = directory::tenant_command(
            &state(ctx).handler,
            &cmd,
            caller.tenant_id,
            TenantCommand::Rename { name },
        )
        .await?;
        Ok(MutationResult::new(caller.tenant_id, outcome))
    }

    /// Suspend a tenant (system administrators; any tenant).
    async fn suspend_tenant(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        tenant_id: Uuid,
        #[graphql(default)] reason: String,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageTenants)?;
        text("reason", &reason, 500)?;
        let cmd = command(ctx, &caller, "suspendTenant", idempotency_key);
        let outcome =
            directory::tenant_command(&state(ctx).handler, &cmd, tenant_id, TenantCommand::Suspend { reason }).await?;
        Ok(MutationResult::new(tenant_id, outcome))
    }

    /// Resume a suspended tenant (system administrators).
    async fn resume_tenant(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        tenant_id: Uuid,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageTenants)?;
        let cmd = command(ctx, &caller, "resumeTenant", idempotency_key);
        let outcome = directory::tenant_command(&state(ctx).handler, &cmd, tenant_id, TenantCommand::Resume).await?;
        Ok(MutationResult::new(tenant_id, outcome))
    }

    /// Provision an extension in the caller's tenant; the password is kept only as HA1 values.
    async fn provision_extension(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        number: String,
        #[graphql(default)] display_name: String,
        password: String,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageDirectory)?;
        text("number", &number, 32)?;
        text("displayName", &display_name, 200)?;
        text("password", &password, 200)?;
        let cmd = command(ctx, &caller, "provisionExtension", idempotency_key);
        let extension_id = Uuid::new_v5(&cmd.command_id, b"extension");
        let outcome = directory::provision_extension(
            &state(ctx).handler,
            &cmd,
            caller.tenant_id,
            extension_id,
            &number,
            &display_name,
            &password,
        )
        .await?;
        Ok(MutationResult::new(extension_id, outcome))
    }

    async fn change_extension_password(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        extension_id: Uuid,
        password: String,
    ) -> ApiResult<MutationResult> {
        text("password", &password, 200)?;
        let command = ExtensionCommand::ChangePassword {
            password: Password(password),
        };
        extension_command(ctx, "changeExtensionPassword", idempotency_key, extension_id, command).await
    }

    async fn disable_extension(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        extension_id: Uuid,
        #[graphql(default)] reason: String,
    ) -> ApiResult<MutationResult> {
        text("reason", &reason, 500)?;
        extension_command(
            ctx,
            "disableExtension",
            idempotency_key,
            extension_id,
            ExtensionCommand::Disable { reason },
        )
        .await
    }

    async fn enable_extension(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        extension_id: Uuid,
    ) -> ApiResult<MutationResult> {
        extension_command(
            ctx,
            "enableExtension",
            idempotency_key,
            extension_id,
            ExtensionCommand::Enable,
        )
        .await
    }
}

async fn extension_command(
    ctx: &Context<'_>,
    operation: &str,
    idempotency_key: Uuid,
    extension_id: Uuid,
    command_: ExtensionCommand,
) -> ApiResult<MutationResult> {
    let caller = require(ctx, Capability::ManageDirectory)?;
    let cmd = command(ctx, &caller, operation, idempotency_key);
    // The stream is the caller's tenant's: another tenant's extension id finds nothing here.
    let outcome = directory::extension_command(&state(ctx).handler, &cmd, caller.tenant_id, extension_id, command_)
        .await
        .map_err(|e| match e {
            commands::CommandError::Rejected(directory::DirectoryRejection::Extension(
                domain::extension::ExtensionRejection::NotFound,
            )) => ApiError::not_found("no such extension"),
            other => other.into(),
        })?;
    Ok(MutationResult::new(extension_id, outcome))
}
