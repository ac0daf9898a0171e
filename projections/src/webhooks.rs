//! Read model `webhooks`: each tenant's live webhooks (`rm_webhooks`), as the CLI and the
//! API list them. Secrets are not here (they are not in the log either).

use commands::store::RecordedEvent;
use domain::webhook::WebhookEvent;
use domain::DomainEvent;
use sqlx::PgConnection;

use crate::runner::{Projection, ProjectionError};

pub struct Webhooks;

impl Projection for Webhooks {
    /// Registrations are the log's busiest events under load, and this projection has no
    /// use for them.
    fn skips_payloads(&self) -> &'static [&'static str] {
        <domain::registration::RegistrationEvent as domain::DomainEvent>::event_types()
    }

    fn name(&self) -> &'static str {
        "webhooks"
    }

    fn version(&self) -> i32 {
        1
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_webhooks"]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        for event in events {
            if !WebhookEvent::event_types().contains(&event.event_type.as_str()) {
                continue;
            }
            let decoded: WebhookEvent = event
                .decode()
                .map_err(|e| ProjectionError::Decode(event.event_id, e.to_string()))?;
            apply_webhook(conn, event, &decoded).await?;
        }
        Ok(())
    }
}

/// The webhook id of a `webhook-{id}` stream.
pub fn webhook_id_of(stream_id: &str) -> Option<uuid::Uuid> {
    stream_id.strip_prefix("webhook-").and_then(|id| id.parse().ok())
}

async fn apply_webhook(conn: &mut PgConnection, meta: &RecordedEvent, event: &WebhookEvent) -> Result<(), sqlx::Error> {
    let webhook_id = webhook_id_of(&meta.stream_id).unwrap_or_default();
    let query = match event {
        WebhookEvent::WebhookRegistered(e) => sqlx::query(
            "INSERT INTO rm_webhooks (tenant_id, webhook_id, url, event_types, enabled, secret_key_id, \
             secret_fingerprint, created_at, updated_at, last_position) \
             VALUES ($1, $2, $3, $4, true, $5, $6, $7, $7, $8)",
        )
        .bind(meta.tenant_id)
        .bind(e.webhook_id)
        .bind(&e.url)
        .bind(&e.event_types)
        .bind(e.secret_key_id)
        .bind(&e.secret_fingerprint)
        .bind(meta.occurred_at)
        .bind(meta.global_position),
        WebhookEvent::WebhookUpdated(e) => sqlx::query(
            "UPDATE rm_webhooks SET url = $3, event_types = $4, updated_at = $5, last_position = $6 \
             WHERE tenant_id = $1 AND webhook_id = $2",
        )
        .bind(meta.tenant_id)
        .bind(webhook_id)
        .bind(&e.url)
        .bind(&e.event_types)
        .bind(meta.occurred_at)
        .bind(meta.global_position),
        WebhookEvent::WebhookSecretRotated(e) => sqlx::query(
            "UPDATE rm_webhooks SET secret_key_id = $3, secret_fingerprint = $4, updated_at = $5, last_position = $6 \
             WHERE tenant_id = $1 AND webhook_id = $2",
        )
        .bind(meta.tenant_id)
        .bind(webhook_id)
        .bind(e.secret_key_id)
        .bind(&e.secret_fingerprint)
        .bind(meta.occurred_at)
        .bind(meta.global_position),
        WebhookEvent::WebhookDisabled(e) => sqlx::query(
            "UPDATE rm_webhooks SET enabled = false, disabled_reason = $3, updated_at = $4, last_position = $5 \
             WHERE tenant_id = $1 AND webhook_id = $2",
        )
        .bind(meta.tenant_id)
        .bind(webhook_id)
        .bind(&e.reason)
        .bind(meta.occurred_at)
        .bind(meta.global_position),
        WebhookEvent::WebhookEnabled(_) => sqlx::query(
            "UPDATE rm_webhooks SET enabled = true, disabled_reason = '', updated_at = $3, last_position = $4 \
             WHERE tenant_id = $1 AND webhook_id = $2",
        )
        .bind(meta.tenant_id)
        .bind(webhook_id)
        .bind(meta.occurred_at)
        .bind(meta.global_position),
        WebhookEvent::WebhookRemoved(_) => {
            sqlx::query("DELETE FROM rm_webhooks WHERE tenant_id = $1 AND webhook_id = $2")
                .bind(meta.tenant_id)
                .bind(webhook_id)
        }
    };
    query.execute(conn).await.map(drop)
}
