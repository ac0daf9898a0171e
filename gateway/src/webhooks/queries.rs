//! Reads for the doors (CLI, GraphQL): a tenant's webhooks and its delivery log, with
//! filters and cursor pagination. Every query takes the tenant first and filters on it;
//! the caller derives the tenant from credentials, never from a request argument alone.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// The largest page a caller may ask for.
pub const MAX_PAGE_SIZE: i64 = 500;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookView {
    pub tenant_id: Uuid,
    pub webhook_id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub disabled_reason: String,
    /// Names the secret without revealing it.
    pub secret_fingerprint: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryView {
    pub tenant_id: Uuid,
    pub webhook_id: Uuid,
    pub event_id: Uuid,
    pub event_position: i64,
    pub event_type: String,
    pub attempts: i32,
    pub status: DeliveryStatus,
    pub last_http_status: Option<i32>,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Filters on the delivery log; `None` means "any".
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub webhook_id: Option<Uuid>,
    pub status: Option<DeliveryStatus>,
    pub event_type: Option<String>,
    pub event_id: Option<Uuid>,
    /// Deliveries created at or after this moment.
    pub created_from: Option<DateTime<Utc>>,
    /// Deliveries created before this moment.
    pub created_to: Option<DateTime<Utc>>,
}

/// A page of the delivery log, newest event first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryView>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub end_cursor: Option<String>,
    pub has_next_page: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("page size must be between 1 and {MAX_PAGE_SIZE}")]
    PageSize,
    #[error("invalid cursor")]
    InvalidCursor,
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// A tenant's live webhooks, oldest first.
pub async fn list_webhooks(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<WebhookView>, QueryError> {
    let rows = sqlx::query(
        "SELECT tenant_id, webhook_id, url, event_types, enabled, disabled_reason, secret_fingerprint, \
                created_at, updated_at \
         FROM rm_webhooks WHERE tenant_id = $1 ORDER BY created_at, webhook_id",
    )
    .bind(tenant_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(webhook_view).collect())
}

/// One webhook of a tenant (`None` for another tenant's id as for an unknown one).
pub async fn get_webhook(pool: &PgPool, tenant_id: Uuid, webhook_id: Uuid) -> Result<Option<WebhookView>, QueryError> {
    let row = sqlx::query(
        "SELECT tenant_id, webhook_id, url, event_types, enabled, disabled_reason, secret_fingerprint, \
                created_at, updated_at \
         FROM rm_webhooks WHERE tenant_id = $1 AND webhook_id = $2",
    )
    .bind(tenant_id)
    .bind(webhook_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.as_ref().map(webhook_view))
}

fn webhook_view(r: &sqlx::postgres::PgRow) -> WebhookView {
    WebhookView {
        tenant_id: r.get("tenant_id"),
        webhook_id: r.get("webhook_id"),
        url: r.get("url"),
        event_types: r.get("event_types"),
        enabled: r.get("enabled"),
        disabled_reason: r.get("disabled_reason"),
        secret_fingerprint: r.get("secret_fingerprint"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

/// A page of a tenant's delivery log, ordered by event position (newest first), then webhook.
pub async fn list_deliveries(
    pool: &PgPool,
    tenant_id: Uuid,
    filter: &DeliveryFilter,
    first: i64,
    after: Option<&str>,
) -> Result<DeliveryPage, QueryError> {
    if !(1..=MAX_PAGE_SIZE).contains(&first) {
        return Err(QueryError::PageSize);
    }
    let after = match after {
        Some(text) => Some(decode_cursor(text).ok_or(QueryError::InvalidCursor)?),
        None => None,
    };
    let rows = sqlx::query(
        "SELECT tenant_id, webhook_id, event_id, event_position, event_type, attempts, status, \
                last_http_status, last_error, next_attempt_at, delivered_at, created_at \
         FROM webhook_deliveries \
         WHERE tenant_id = $1 \
           AND ($2::uuid IS NULL OR webhook_id = $2) \
           AND ($3::text IS NULL OR status = $3) \
           AND ($4::text IS NULL OR event_type = $4) \
           AND ($5::uuid IS NULL OR event_id = $5) \
           AND ($6::timestamptz IS NULL OR created_at >= $6) \
           AND ($7::timestamptz IS NULL OR created_at < $7) \
           AND ($8::bigint IS NULL OR event_position < $8 OR (event_position = $8 AND webhook_id > $9)) \
         ORDER BY event_position DESC, webhook_id \
         LIMIT $10",
    )
    .bind(tenant_id)
    .bind(filter.webhook_id)
    .bind(filter.status.map(DeliveryStatus::as_str))
    .bind(filter.event_type.as_deref())
    .bind(filter.event_id)
    .bind(filter.created_from)
    .bind(filter.created_to)
    .bind(after.map(|(position, _)| position))
    .bind(after.map(|(_, webhook)| webhook).unwrap_or_default())
    .bind(first + 1)
    .fetch_all(pool)
    .await?;
    let has_next_page = rows.len() as i64 > first;
    let items: Vec<DeliveryView> = rows.iter().take(first as usize).map(delivery_view).collect();
    let end_cursor = match items.last() {
        Some(last) if has_next_page => Some(encode_cursor(last.event_position, last.webhook_id)),
        _ => None,
    };
    Ok(DeliveryPage {
        items,
        end_cursor,
        has_next_page,
    })
}

fn delivery_view(r: &sqlx::postgres::PgRow) -> DeliveryView {
    let status: String = r.get("status");
    DeliveryView {
        tenant_id: r.get("tenant_id"),
        webhook_id: r.get("webhook_id"),
        event_id: r.get("event_id"),
        event_position: r.get("event_position"),
        event_type: r.get("event_type"),
        attempts: r.get("attempts"),
        // The column's CHECK constraint admits only these three values.
        status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Failed),
        last_http_status: r.get("last_http_status"),
        last_error: r.get("last_error"),
        next_attempt_at: r.get("next_attempt_at"),
        delivered_at: r.get("delivered_at"),
        created_at: r.get("created_at"),
    }
}

/// An opaque cursor: `d1.{position}.{webhook_id}`, hex-encoded so callers do not build one.
fn encode_cursor(position: i64, webhook_id: Uuid) -> String {
    hex::encode(format!("d1.{position}.{webhook_id}"))
}

fn decode_cursor(text: &str) -> Option<(i64, Uuid)> {
    if text.len() > 200 {
        return None;
    }
    let raw = String::from_utf8(hex::decode(text).ok()?).ok()?;
    let rest = raw.strip_prefix("d1.")?;
    let (position, webhook) = rest.split_once('.')?;
    Some((position.parse().ok()?, webhook.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let id = Uuid::from_u128(9);
        assert_eq!(decode_cursor(&encode_cursor(42, id)), Some((42, id)));
        for bad in [
            "",
            "zz",
            "00",
            &hex::encode("d2.1.x"),
            &hex::encode("d1.x.y"),
            &"a".repeat(500),
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad:?}");
        }
    }
}
