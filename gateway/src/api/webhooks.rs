//! Webhooks area: a tenant's webhooks and their delivery log (wrapping
//! `crate::webhooks::queries`), and register/update/disable/enable/remove (wrapping
//! `crate::webhooks::commands`).
//! A webhook's secret is never read back: only its fingerprint; a generated secret is
//! answered once, by the registration that generated it.

use async_graphql::{Context, Enum, Object, SimpleObject};
use chrono::{DateTime, Utc};
use domain::webhook::{WebhookCommand, WebhookRejection};
use uuid::Uuid;

use super::auth::Capability;
use super::error::{ApiError, ApiResult};
use super::{command, require, state, text, MutationResult};
use crate::webhooks::commands::{self as webhook_commands, WebhookError};
use crate::webhooks::queries::{self, DeliveryFilter, DeliveryStatus, DeliveryView, QueryError, WebhookView};

#[derive(SimpleObject, Debug, Clone)]
pub struct Webhook {
    pub webhook_id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub disabled_reason: String,
    /// Names the signing secret without revealing it.
    pub secret_fingerprint: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<WebhookView> for Webhook {
    fn from(v: WebhookView) -> Self {
        Webhook {
            webhook_id: v.webhook_id,
            url: v.url,
            event_types: v.event_types,
            enabled: v.enabled,
            disabled_reason: v.disabled_reason,
            secret_fingerprint: v.secret_fingerprint,
            created_at: v.created_at,
            updated_at: v.updated_at,
        }
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum WebhookDeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl From<DeliveryStatus> for WebhookDeliveryStatus {
    fn from(s: DeliveryStatus) -> Self {
        match s {
            DeliveryStatus::Pending => WebhookDeliveryStatus::Pending,
            DeliveryStatus::Delivered => WebhookDeliveryStatus::Delivered,
            DeliveryStatus::Failed => WebhookDeliveryStatus::Failed,
        }
    }
}

impl From<WebhookDeliveryStatus> for DeliveryStatus {
    fn from(s: WebhookDeliveryStatus) -> Self {
        match s {
            WebhookDeliveryStatus::Pending => DeliveryStatus::Pending,
            WebhookDeliveryStatus::Delivered => DeliveryStatus::Delivered,
            WebhookDeliveryStatus::Failed => DeliveryStatus::Failed,
        }
    }
}

#[derive(SimpleObject, Debug, Clone)]
pub struct WebhookDelivery {
    pub webhook_id: Uuid,
    pub event_id: Uuid,
    pub event_position: i64,
    pub event_type: String,
    pub attempts: i32,
    pub status: WebhookDeliveryStatus,
    pub last_http_status: Option<i32>,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<DeliveryView> for WebhookDelivery {
    fn from(v: DeliveryView) -> Self {
        WebhookDelivery {
            webhook_id: v.webhook_id,
            event_id: v.event_id,
            event_position: v.event_position,
            event_type: v.event_type,
            attempts: v.attempts,
            status: v.status.into(),
            last_http_status: v.last_http_status,
            last_error: v.last_error,
            next_attempt_at: v.next_attempt_at,
            delivered_at: v.delivered_at,
            created_at: v.created_at,
        }
    }
}

/// A page of the delivery log, newest event first.
#[derive(SimpleObject, Debug, Clone)]
pub struct WebhookDeliveryPage {
    pub items: Vec<WebhookDelivery>,
    /// Pass as `after` for the next page; null on the last page.
    pub end_cursor: Option<String>,
    pub has_next_page: bool,
}

/// What registering answers.
#[derive(SimpleObject, Debug, Clone)]
pub struct WebhookRegistration {
    pub id: Uuid,
    pub replayed: bool,
    /// The signing secret, only when this registration generated it: shown once, never again.
    pub generated_secret: Option<String>,
}

fn query_error(e: QueryError) -> ApiError {
    match e {
        QueryError::PageSize => ApiError::invalid(format!("first must be between 1 and {}", queries::MAX_PAGE_SIZE)),
        QueryError::InvalidCursor => ApiError::invalid("invalid cursor"),
        QueryError::Database(e) => e.into(),
    }
}

fn command_error(e: WebhookError) -> ApiError {
    match e {
        commands::CommandError::Rejected(WebhookRejection::NotFound) => ApiError::not_found("no such webhook"),
        commands::CommandError::Rejected(
            r @ (WebhookRejection::InvalidUrl(_)
            | WebhookRejection::InvalidEventTypes(_)
            | WebhookRejection::InvalidSecret(_)),
        ) => ApiError::invalid(r.to_string()),
        other => other.into(),
    }
}

#[derive(Default)]
pub struct WebhooksQuery;

#[Object]
impl WebhooksQuery {
    /// The tenant's webhooks, oldest first (their secrets are never shown).
    async fn webhooks(&self, ctx: &Context<'_>) -> ApiResult<Vec<Webhook>> {
        let caller = require(ctx, Capability::Read)?;
        let list = queries::list_webhooks(&state(ctx).pool, caller.tenant_id)
            .await
            .map_err(query_error)?;
        Ok(list.into_iter().map(Webhook::from).collect())
    }

    /// The tenant's webhook delivery log, newest event first.
    #[graphql(complexity = "(first.unwrap_or(50).clamp(1, 500) as usize) * child_complexity")]
    #[allow(clippy::too_many_arguments)]
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        webhook_id: Option<Uuid>,
        status: Option<WebhookDeliveryStatus>,
        event_type: Option<String>,
        event_id: Option<Uuid>,
    ) -> ApiResult<WebhookDeliveryPage> {
        let caller = require(ctx, Capability::Read)?;
        if let Some(t) = &event_type {
            text("eventType", t, 200)?;
        }
        let filter = DeliveryFilter {
            webhook_id,
            status: status.map(DeliveryStatus::from),
            event_type,
            event_id,
            created_from: None,
            created_to: None,
        };
        let page = queries::list_deliveries(
            &state(ctx).pool,
            caller.tenant_id,
            &filter,
            i64::from(first.unwrap_or(50)),
            after.as_deref(),
        )
        .await
        .map_err(query_error)?;
        Ok(WebhookDeliveryPage {
            items: page.items.into_iter().map(WebhookDelivery::from).collect(),
            end_cursor: page.end_cursor,
            has_next_page: page.has_next_page,
        })
    }
}

#[derive(Default)]
pub struct WebhooksMutation;

#[Object]
impl WebhooksMutation {
    /// Register a webhook for the caller's tenant; its id derives from the idempotency key.
    /// Without `secret`, one is generated and answered once in `generatedSecret`.
    async fn register_webhook(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        url: String,
        #[graphql(default)] event_types: Vec<String>,
        secret: Option<String>,
    ) -> ApiResult<WebhookRegistration> {
        let caller = require(ctx, Capability::ManageWebhooks)?;
        text("url", &url, 2048)?;
        if event_types.len() > 200 {
            return Err(ApiError::invalid("eventTypes has more than 200 entries"));
        }
        for t in &event_types {
            text("eventTypes", t, 200)?;
        }
        if let Some(s) = &secret {
            text("secret", s, 500)?;
        }
        let cmd = command(ctx, &caller, "registerWebhook", idempotency_key);
        let registered =
            webhook_commands::register(&state(ctx).handler, &cmd, caller.tenant_id, &url, &event_types, secret)
                .await
                .map_err(command_error)?;
        Ok(WebhookRegistration {
            id: registered.webhook_id,
            replayed: registered.replayed,
            generated_secret: registered.generated_secret,
        })
    }

    /// Change a webhook's URL or event types, or rotate its secret (given in `secret`;
    /// never shown again, only its fingerprint). What is not given stays as it is.
    async fn update_webhook(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        webhook_id: Uuid,
        url: Option<String>,
        event_types: Option<Vec<String>>,
        secret: Option<String>,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageWebhooks)?;
        if let Some(url) = &url {
            text("url", url, 2048)?;
        }
        if let Some(types) = &event_types {
            if types.len() > 200 {
                return Err(ApiError::invalid("eventTypes has more than 200 entries"));
            }
            for t in types {
                text("eventTypes", t, 200)?;
            }
        }
        if let Some(s) = &secret {
            text("secret", s, 500)?;
        }
        let cmd = command(ctx, &caller, "updateWebhook", idempotency_key);
        // The stream is loaded under the caller's tenant: another tenant's webhook is not found.
        let outcome = webhook_commands::update(
            &state(ctx).handler,
            &cmd,
            caller.tenant_id,
            webhook_id,
            url,
            event_types,
            secret,
        )
        .await
        .map_err(command_error)?;
        Ok(MutationResult::new(webhook_id, outcome))
    }

    /// Stop deliveries to a webhook (events from now on are not enqueued for it, and its
    /// pending deliveries wait) until it is enabled again.
    async fn disable_webhook(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        webhook_id: Uuid,
        #[graphql(default)] reason: String,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageWebhooks)?;
        text("reason", &reason, domain::webhook::MAX_REASON_LEN)?;
        let cmd = command(ctx, &caller, "disableWebhook", idempotency_key);
        let outcome = webhook_commands::command(
            &state(ctx).handler,
            &cmd,
            caller.tenant_id,
            webhook_id,
            WebhookCommand::Disable { reason },
        )
        .await
        .map_err(command_error)?;
        Ok(MutationResult::new(webhook_id, outcome))
    }

    /// Resume deliveries to a disabled webhook.
    async fn enable_webhook(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        webhook_id: Uuid,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageWebhooks)?;
        let cmd = command(ctx, &caller, "enableWebhook", idempotency_key);
        let outcome = webhook_commands::command(
            &state(ctx).handler,
            &cmd,
            caller.tenant_id,
            webhook_id,
            WebhookCommand::Enable,
        )
        .await
        .map_err(command_error)?;
        Ok(MutationResult::new(webhook_id, outcome))
    }

    /// Remove a webhook for good (its secret is deleted; pending deliveries fail).
    async fn remove_webhook(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        webhook_id: Uuid,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageWebhooks)?;
        let cmd = command(ctx, &caller, "removeWebhook", idempotency_key);
        // The stream is loaded under the caller's tenant: another tenant's webhook is not found.
        let outcome = webhook_commands::command(
            &state(ctx).handler,
            &cmd,
            caller.tenant_id,
            webhook_id,
            WebhookCommand::Remove,
        )
        .await
        .map_err(command_error)?;
        Ok(MutationResult::new(webhook_id, outcome))
    }
}
