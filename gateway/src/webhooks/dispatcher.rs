//! The webhook dispatcher: a subscriber of the log that turns each event of a tenant into
//! signed deliveries to that tenant's matching webhooks, at least once.
//!
//! Two steps, each its own short transaction:
//! - **enqueue**: read a fenced batch after the dispatcher's `(tx_id, position)` cursor;
//!   fold the webhooks' own events in log order (so every event is matched against the
//!   filter in force at its position); insert a `pending` delivery per (webhook, event);
//!   move every webhook's checkpoint and the dispatcher's cursor, all in one commit.
//! - **deliver**: lease the due deliveries, POST each (no transaction open across HTTP),
//!   then record the result: 2xx → `delivered`; otherwise a retry at the backoff, or
//!   `failed` once the attempts are spent.
//!
//! A restart resumes from the committed cursor and the pending rows; a delivered row is
//! never attempted again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use commands::store::{Cursor, EventStore, RecordedEvent, StoreError};
use commands::subscription::LogWaker;
use domain::webhook::{self, WebhookEvent};
use domain::DomainEvent;
use futures::StreamExt;
use serde::Serialize;
use sqlx::Row;
use tokio::sync::watch;
use uuid::Uuid;

use super::clock::{Clock, SharedJitter};
use super::http::{HttpPoster, PostOutcome};
use super::retry::{AfterFailure, RetryPolicy};
use super::signature::{sign, EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// The dispatcher's row in `webhook_dispatcher`.
const DISPATCHER: &str = "webhooks";
/// How often one enqueue retries after another dispatcher moved the cursor under it.
const MAX_LOST_RACES: usize = 100;

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub retry: RetryPolicy,
    /// Events read per enqueue transaction.
    pub batch_size: i64,
    /// Deliveries leased per round.
    pub claim_size: i64,
    /// Concurrent HTTP attempts.
    pub max_in_flight: usize,
    /// How long a lease keeps other dispatchers off a delivery; longer than the HTTP timeout.
    pub lease: Duration,
    /// Backstop poll when no NOTIFY arrives.
    pub poll_interval: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            retry: RetryPolicy::default(),
            batch_size: 500,
            claim_size: 64,
            max_in_flight: 16,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("event {0} cannot be read: {1}")]
    Decode(Uuid, String),
}

/// What a receiver gets as the body of a delivery.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryBody<'a> {
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub stream_id: &'a str,
    pub position: i64,
    pub tenant_id: Uuid,
    pub recorded_at: DateTime<Utc>,
    pub data: &'a serde_json::Value,
}

pub struct Dispatcher {
    store: EventStore,
    clock: Arc<dyn Clock>,
    http: Arc<dyn HttpPoster>,
    jitter: SharedJitter,
    config: DispatcherConfig,
    /// Names this dispatcher's leases.
    owner: Uuid,
}

/// A webhook as the dispatcher folded it from the log.
#[derive(Debug, Clone)]
struct Hook {
    tenant_id: Uuid,
    url: String,
    event_types: Vec<String>,
    enabled: bool,
    removed: bool,
    secret_key_id: Uuid,
    /// Deliveries are enqueued for events after this cursor.
    cursor: Cursor,
}

/// A leased delivery with what its attempt needs.
struct Due {
    tenant_id: Uuid,
    webhook_id: Uuid,
    event_id: Uuid,
    attempts: i32,
    url: String,
    secret: Option<String>,
    event_type: String,
    stream_id: String,
    position: i64,
    recorded_at: DateTime<Utc>,
    payload: serde_json::Value,
}

impl Dispatcher {
    pub fn new(
        store: EventStore,
        clock: Arc<dyn Clock>,
        http: Arc<dyn HttpPoster>,
        jitter: SharedJitter,
        config: DispatcherConfig,
    ) -> Self {
        Dispatcher {
            store,
            clock,
            http,
            jitter,
            config,
            owner: Uuid::new_v4(),
        }
    }

    /// The committed cursor (created at the start of the log on first use).
    pub async fn cursor(&self) -> Result<Cursor, DispatchError> {
        sqlx::query(
            "INSERT INTO webhook_dispatcher (name, tx_id, position) VALUES ($1, '0'::xid8, 0) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(DISPATCHER)
        .execute(self.store.pool())
        .await?;
        let row = sqlx::query("SELECT tx_id::text::bigint AS tx_id, position FROM webhook_dispatcher WHERE name = $1")
            .bind(DISPATCHER)
            .fetch_one(self.store.pool())
            .await?;
        Ok(Cursor {
            tx_id: row.get("tx_id"),
            position: row.get("position"),
        })
    }

    /// Enqueue one fenced batch; returns how many events it covered (0 when caught up).
    pub async fn enqueue(&self) -> Result<usize, DispatchError> {
        for _ in 0..MAX_LOST_RACES {
            let cursor = self.cursor().await?;
            let batch = self.store.read_all(cursor, self.config.batch_size, None).await?;
            if batch.is_empty() {
                return Ok(0);
            }
            if self.enqueue_batch(cursor, &batch).await? {
                return Ok(batch.len());
            }
        }
        Ok(0)
    }

    /// Enqueue until caught up with what is committed; returns the events covered.
    pub async fn enqueue_all(&self) -> Result<u64, DispatchError> {
        let mut total = 0u64;
        loop {
            let n = self.enqueue().await?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    }

    /// Enqueue every event committed before this call: waits (polling, up to `deadline`)
    /// until every transaction running at the call has finished, since the fence is
    /// cluster-wide and an unrelated open transaction can hold a plain catch-up short.
    pub async fn enqueue_to_now(&self, deadline: Duration) -> Result<u64, DispatchError> {
        const POLL: Duration = Duration::from_millis(10);
        let max_polls = deadline.as_millis() / POLL.as_millis();
        let target: i64 = sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
            .fetch_one(self.store.pool())
            .await?;
        let mut total = self.enqueue_all().await?;
        for _ in 0..max_polls {
            let xmin: i64 = sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                .fetch_one(self.store.pool())
                .await?;
            if xmin >= target {
                break;
            }
            tokio::time::sleep(POLL).await;
            total += self.enqueue_all().await?;
        }
        Ok(total + self.enqueue_all().await?)
    }

    /// `false` when another dispatcher moved the cursor first (the batch is dropped).
    async fn enqueue_batch(&self, cursor: Cursor, batch: &[RecordedEvent]) -> Result<bool, DispatchError> {
        let now = self.clock.now();
        let mut tx = self.store.pool().begin().await?;
        let locked = sqlx::query(
            "SELECT tx_id::text::bigint AS tx_id, position FROM webhook_dispatcher WHERE name = $1 FOR UPDATE",
        )
        .bind(DISPATCHER)
        .fetch_one(&mut *tx)
        .await?;
        let current = Cursor {
            tx_id: locked.get("tx_id"),
            position: locked.get("position"),
        };
        if current != cursor {
            return Ok(false);
        }

        let mut hooks = load_hooks(&mut tx).await?;
        let mut by_tenant: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for (id, hook) in &hooks {
            by_tenant.entry(hook.tenant_id).or_default().push(*id);
        }
        let mut changed: Vec<Uuid> = Vec::new();
        let mut removed: Vec<(Uuid, Uuid)> = Vec::new();
        let mut deliveries = NewDeliveries::default();

        for event in batch {
            if event.stream_id.starts_with("webhook-")
                && WebhookEvent::event_types().contains(&event.event_type.as_str())
            {
                let decoded: WebhookEvent = event
                    .decode()
                    .map_err(|e| DispatchError::Decode(event.event_id, e.to_string()))?;
                if let Some(webhook_id) = fold_hook(&mut hooks, event, &decoded) {
                    if !changed.contains(&webhook_id) {
                        changed.push(webhook_id);
                    }
                    let ids = by_tenant.entry(event.tenant_id).or_default();
                    if !ids.contains(&webhook_id) {
                        ids.push(webhook_id);
                    }
                    if matches!(decoded, WebhookEvent::WebhookRemoved(_)) {
                        removed.push((event.tenant_id, webhook_id));
                    }
                }
            }
            // Only the event's own tenant's webhooks are considered: promise 4.
            let Some(ids) = by_tenant.get(&event.tenant_id) else {
                continue;
            };
            for webhook_id in ids {
                let Some(hook) = hooks.get(webhook_id) else {
                    continue;
                };
                if hook.tenant_id == event.tenant_id
                    && hook.enabled
                    && !hook.removed
                    && event.cursor() > hook.cursor
                    && webhook::matches(&hook.event_types, &event.event_type)
                {
                    deliveries.push(*webhook_id, event);
                }
            }
        }

        deliveries.insert(&mut tx, now).await?;
        for webhook_id in &changed {
            if let Some(hook) = hooks.get(webhook_id) {
                save_hook(&mut tx, *webhook_id, hook).await?;
            }
        }
        for (tenant_id, webhook_id) in &removed {
            sqlx::query(
                "UPDATE webhook_deliveries SET status = 'failed', last_error = 'webhook removed', \
                        updated_at = $3, lease_owner = NULL, lease_until = NULL \
                 WHERE tenant_id = $1 AND webhook_id = $2 AND status = 'pending'",
            )
            .bind(tenant_id)
            .bind(webhook_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        // Every live webhook's checkpoint moves with the dispatcher's cursor, in this commit.
        let end = batch.last().map(RecordedEvent::cursor).unwrap_or(cursor);
        sqlx::query(
            "UPDATE webhook_checkpoints SET tx_id = $1::bigint::text::xid8, position = $2 \
             WHERE NOT removed AND (tx_id, position) < ($1::bigint::text::xid8, $2)",
        )
        .bind(end.tx_id)
        .bind(end.position)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE webhook_dispatcher SET tx_id = $2::bigint::text::xid8, position = $3, \
                    events_seen = events_seen + $4, updated_at = now() \
             WHERE name = $1",
        )
        .bind(DISPATCHER)
        .bind(end.tx_id)
        .bind(end.position)
        .bind(batch.len() as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Lease the deliveries due now and attempt them; returns how many were attempted.
    pub async fn deliver_due(&self) -> Result<usize, DispatchError> {
        let due = self.claim().await?;
        let attempted = due.len();
        let results: Vec<Result<(), DispatchError>> = futures::stream::iter(due)
            .map(|due| self.attempt(due))
            .buffer_unordered(self.config.max_in_flight.max(1))
            .collect()
            .await;
        for result in results {
            result?;
        }
        Ok(attempted)
    }

    /// The earliest moment a pending delivery of an enabled webhook becomes due.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>, DispatchError> {
        let next: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT min(greatest(d.next_attempt_at, coalesce(d.lease_until, d.next_attempt_at))) \
             FROM webhook_deliveries d \
             JOIN webhook_checkpoints w ON w.tenant_id = d.tenant_id AND w.webhook_id = d.webhook_id \
             WHERE d.status = 'pending' AND w.enabled AND NOT w.removed",
        )
        .fetch_one(self.store.pool())
        .await?;
        Ok(next)
    }

    /// Follow the log and deliver until `shutdown`; errors are logged and retried, never fatal.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut waker = loop {
            match LogWaker::connect(&self.store, self.config.poll_interval).await {
                Ok(waker) => break waker,
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: cannot LISTEN yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        };
        while !*shutdown.borrow() {
            let mut progressed = false;
            match self.enqueue().await {
                Ok(n) => progressed |= n > 0,
                Err(e) => tracing::warn!(error = %e, "webhooks: enqueue failed; will retry"),
            }
            match self.deliver_due().await {
                Ok(n) => progressed |= n > 0,
                Err(e) => tracing::warn!(error = %e, "webhooks: delivery bookkeeping failed; will retry"),
            }
            if progressed {
                continue;
            }
            let next_due = self.next_due().await.ok().flatten();
            let fallback = self.clock.now() + chrono::Duration::from_std(self.config.poll_interval).unwrap_or_default();
            let deadline = next_due.map_or(fallback, |due| due.min(fallback));
            let woken = tokio::select! {
                woken = waker.wait() => woken,
                _ = self.clock.sleep_until(deadline) => false,
                _ = shutdown.changed() => false,
            };
            if woken {
                // Gather, as the projection runners do: under load a commit lands every few
                // milliseconds, and a pass per commit costs a handful of statements each time.
                tokio::select! {
                    _ = tokio::time::sleep(projections::runner::LINGER) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }

    async fn claim(&self) -> Result<Vec<Due>, DispatchError> {
        let now = self.clock.now();
        let lease_until = now + chrono::Duration::from_std(self.config.lease).unwrap_or(chrono::Duration::seconds(60));
        let keys = sqlx::query(
            "WITH due AS ( \
                 SELECT d.tenant_id, d.webhook_id, d.event_id FROM webhook_deliveries d \
                 JOIN webhook_checkpoints w ON w.tenant_id = d.tenant_id AND w.webhook_id = d.webhook_id \
                 WHERE d.status = 'pending' AND d.next_attempt_at <= $1 \
                   AND (d.lease_until IS NULL OR d.lease_until <= $1) \
                   AND w.enabled AND NOT w.removed \
                 ORDER BY d.next_attempt_at, d.event_position \
                 LIMIT $2 FOR UPDATE OF d SKIP LOCKED) \
             UPDATE webhook_deliveries d SET lease_owner = $3, lease_until = $4 \
             FROM due \
             WHERE d.tenant_id = due.tenant_id AND d.webhook_id = due.webhook_id AND d.event_id = due.event_id \
             RETURNING d.tenant_id, d.webhook_id, d.event_id",
        )
        .bind(now)
        .bind(self.config.claim_size.max(1))
        .bind(self.owner)
        .bind(lease_until)
        .fetch_all(self.store.pool())
        .await?;
        if keys.is_empty() {
            return Ok(vec![]);
        }
        let tenants: Vec<Uuid> = keys.iter().map(|r| r.get("tenant_id")).collect();
        let webhooks: Vec<Uuid> = keys.iter().map(|r| r.get("webhook_id")).collect();
        let events: Vec<Uuid> = keys.iter().map(|r| r.get("event_id")).collect();
        let rows = sqlx::query(
            "SELECT d.tenant_id, d.webhook_id, d.event_id, d.attempts, w.url, s.secret, \
                    e.event_type, e.stream_id, e.global_position, e.recorded_at, e.payload \
             FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS k(tenant_id, webhook_id, event_id) \
             JOIN webhook_deliveries d ON d.tenant_id = k.tenant_id AND d.webhook_id = k.webhook_id AND d.event_id = k.event_id \
             JOIN webhook_checkpoints w ON w.tenant_id = d.tenant_id AND w.webhook_id = d.webhook_id \
             LEFT JOIN webhook_secrets s ON s.tenant_id = w.tenant_id AND s.webhook_id = w.webhook_id AND s.key_id = w.secret_key_id \
             JOIN events e ON e.event_id = d.event_id AND e.tenant_id = d.tenant_id \
             ORDER BY d.event_position",
        )
        .bind(&tenants)
        .bind(&webhooks)
        .bind(&events)
        .fetch_all(self.store.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| Due {
                tenant_id: r.get("tenant_id"),
                webhook_id: r.get("webhook_id"),
                event_id: r.get("event_id"),
                attempts: r.get("attempts"),
                url: r.get("url"),
                secret: r.get("secret"),
                event_type: r.get("event_type"),
                stream_id: r.get("stream_id"),
                position: r.get("global_position"),
                recorded_at: r.get("recorded_at"),
                payload: r.get("payload"),
            })
            .collect())
    }

    async fn attempt(&self, due: Due) -> Result<(), DispatchError> {
        let Some(secret) = due.secret.as_deref() else {
            // Only a removed webhook loses its secret; nothing can be signed for it any more.
            return self
                .record(&due, None, Some("no signing secret (webhook removed)"), true)
                .await;
        };
        let body = DeliveryBody {
            event_id: due.event_id,
            event_type: &due.event_type,
            stream_id: &due.stream_id,
            position: due.position,
            tenant_id: due.tenant_id,
            recorded_at: due.recorded_at,
            data: &due.payload,
        };
        // Serializing a struct of ids, strings and a JSON value cannot fail.
        let body = serde_json::to_vec(&body).expect("a delivery body serializes");
        let timestamp = self.clock.now().timestamp();
        let headers = [
            ("Content-Type", "application/json".to_string()),
            (EVENT_ID_HEADER, due.event_id.to_string()),
            (TIMESTAMP_HEADER, timestamp.to_string()),
            (SIGNATURE_HEADER, sign(secret.as_bytes(), timestamp, &body)),
        ];
        match self.http.post(&due.url, &headers, body).await {
            PostOutcome::Status(status) if (200..300).contains(&status) => {
                self.record(&due, Some(status), None, false).await
            }
            PostOutcome::Status(status) => {
                let error = format!("HTTP {status}");
                self.record(&due, Some(status), Some(&error), false).await
            }
            PostOutcome::NoAnswer(reason) => self.record(&due, None, Some(reason), false).await,
        }
    }

    /// Record an attempt: no error = acknowledged; an error = retry later or give up.
    async fn record(
        &self,
        due: &Due,
        http_status: Option<u16>,
        error: Option<&str>,
        give_up: bool,
    ) -> Result<(), DispatchError> {
        let now = self.clock.now();
        let attempts = due.attempts.saturating_add(1);
        let (status, next_attempt_at, delivered_at) = match error {
            None => ("delivered", now, Some(now)),
            Some(_) if give_up => ("failed", now, None),
            Some(_) => match self.config.retry.after_failure(attempts.max(0) as u32, &self.jitter) {
                AfterFailure::GiveUp => ("failed", now, None),
                AfterFailure::RetryIn(delay) => (
                    "pending",
                    now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(1)),
                    None,
                ),
            },
        };
        // Only this dispatcher's lease may record: another that took an expired lease wins.
        sqlx::query(
            "UPDATE webhook_deliveries SET status = $5, attempts = $6, last_http_status = $7, \
                    last_error = $8, next_attempt_at = $9, delivered_at = $10, updated_at = $11, \
                    lease_owner = NULL, lease_until = NULL \
             WHERE tenant_id = $1 AND webhook_id = $2 AND event_id = $3 AND lease_owner = $4 AND status = 'pending'",
        )
        .bind(due.tenant_id)
        .bind(due.webhook_id)
        .bind(due.event_id)
        .bind(self.owner)
        .bind(status)
        .bind(attempts)
        .bind(http_status.map(i32::from))
        .bind(error.map(|e| e.chars().take(200).collect::<String>()))
        .bind(next_attempt_at)
        .bind(delivered_at)
        .bind(now)
        .execute(self.store.pool())
        .await?;
        Ok(())
    }
}

/// Delivery rows gathered for one batch, written with one statement.
#[derive(Default)]
struct NewDeliveries {
    tenants: Vec<Uuid>,
    webhooks: Vec<Uuid>,
    events: Vec<Uuid>,
    positions: Vec<i64>,
    types: Vec<String>,
}

impl NewDeliveries {
    fn push(&mut self, webhook_id: Uuid, event: &RecordedEvent) {
        self.tenants.push(event.tenant_id);
        self.webhooks.push(webhook_id);
        self.events.push(event.event_id);
        self.positions.push(event.global_position);
        self.types.push(event.event_type.clone());
    }

    async fn insert(&self, conn: &mut sqlx::PgConnection, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
        if self.events.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO webhook_deliveries (tenant_id, webhook_id, event_id, event_position, event_type, \
                                             next_attempt_at, created_at, updated_at) \
             SELECT t, w, e, p, ty, $6, $6, $6 \
             FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], $5::text[]) AS x(t, w, e, p, ty) \
             ON CONFLICT (tenant_id, webhook_id, event_id) DO NOTHING",
        )
        .bind(&self.tenants)
        .bind(&self.webhooks)
        .bind(&self.events)
        .bind(&self.positions)
        .bind(&self.types)
        .bind(now)
        .execute(conn)
        .await?;
        Ok(())
    }
}

async fn load_hooks(conn: &mut sqlx::PgConnection) -> Result<HashMap<Uuid, Hook>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT tenant_id, webhook_id, url, event_types, enabled, removed, secret_key_id, \
                tx_id::text::bigint AS tx_id, position \
         FROM webhook_checkpoints WHERE NOT removed",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get("webhook_id"),
                Hook {
                    tenant_id: r.get("tenant_id"),
                    url: r.get("url"),
                    event_types: r.get("event_types"),
                    enabled: r.get("enabled"),
                    removed: r.get("removed"),
                    secret_key_id: r.get("secret_key_id"),
                    cursor: Cursor {
                        tx_id: r.get("tx_id"),
                        position: r.get("position"),
                    },
                },
            )
        })
        .collect())
}

async fn save_hook(conn: &mut sqlx::PgConnection, webhook_id: Uuid, hook: &Hook) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO webhook_checkpoints (tenant_id, webhook_id, url, event_types, enabled, removed, \
                                          secret_key_id, tx_id, position) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::bigint::text::xid8, $9) \
         ON CONFLICT (tenant_id, webhook_id) DO UPDATE SET url = $3, event_types = $4, enabled = $5, \
             removed = $6, secret_key_id = $7",
    )
    .bind(hook.tenant_id)
    .bind(webhook_id)
    .bind(&hook.url)
    .bind(&hook.event_types)
    .bind(hook.enabled)
    .bind(hook.removed)
    .bind(hook.secret_key_id)
    .bind(hook.cursor.tx_id)
    .bind(hook.cursor.position)
    .execute(conn)
    .await?;
    Ok(())
}

/// Fold one of a webhook's own events into the dispatcher's view; returns the webhook id.
fn fold_hook(hooks: &mut HashMap<Uuid, Hook>, event: &RecordedEvent, decoded: &WebhookEvent) -> Option<Uuid> {
    let webhook_id = projections::webhooks::webhook_id_of(&event.stream_id)?;
    if let WebhookEvent::WebhookRegistered(e) = decoded {
        hooks.insert(
            webhook_id,
            Hook {
                tenant_id: event.tenant_id,
                url: e.url.clone(),
                event_types: e.event_types.clone(),
                enabled: true,
                removed: false,
                secret_key_id: e.secret_key_id,
                // It sees the events after its registration.
                cursor: event.cursor(),
            },
        );
        return Some(webhook_id);
    }
    let hook = hooks.get_mut(&webhook_id).filter(|h| h.tenant_id == event.tenant_id)?;
    match decoded {
        WebhookEvent::WebhookRegistered(_) => {}
        WebhookEvent::WebhookUpdated(e) => {
            hook.url = e.url.clone();
            hook.event_types = e.event_types.clone();
        }
        WebhookEvent::WebhookSecretRotated(e) => hook.secret_key_id = e.secret_key_id,
        WebhookEvent::WebhookDisabled(_) => hook.enabled = false,
        WebhookEvent::WebhookEnabled(_) => hook.enabled = true,
        WebhookEvent::WebhookRemoved(_) => {
            hook.removed = true;
            hook.enabled = false;
        }
    }
    Some(webhook_id)
}
