//! Events area: the log for auditors (by stream, type, position or time range), the
//! projections' status, and the live feeds over graphql-ws.

use std::time::Duration;

use async_graphql::connection::Connection;
use async_graphql::{Context, InputObject, Json, Object, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use commands::subscription::{Subscription as LogSubscription, SubscriptionOptions};
use commands::{Cursor, EventStore, RecordedEvent};
use futures::Stream;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::auth::Capability;
use super::conferences::LiveConferenceRoom;
use super::directory::LiveCall;
use super::error::{ApiError, ApiResult};
use super::{page, require, state, text};

#[derive(SimpleObject, Debug, Clone)]
pub struct Event {
    pub position: i64,
    /// The fenced cursor (`tx_id:position`): resume an export or a feed after it.
    pub cursor: String,
    pub event_id: Uuid,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Json<serde_json::Value>,
    pub metadata: Json<serde_json::Value>,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
}

pub fn cursor_text(c: Cursor) -> String {
    format!("{}:{}", c.tx_id, c.position)
}

pub fn parse_cursor(text: &str) -> ApiResult<Cursor> {
    let bad = || ApiError::invalid("a cursor is `tx_id:position`");
    let (tx, pos) = text.split_once(':').ok_or_else(bad)?;
    let cursor = Cursor {
        tx_id: tx.parse().map_err(|_| bad())?,
        position: pos.parse().map_err(|_| bad())?,
    };
    if cursor.tx_id < 0 || cursor.position < 0 {
        return Err(bad());
    }
    Ok(cursor)
}

impl From<RecordedEvent> for Event {
    fn from(e: RecordedEvent) -> Self {
        Event {
            position: e.global_position,
            cursor: cursor_text(e.cursor()),
            event_id: e.event_id,
            stream_id: e.stream_id,
            stream_version: e.stream_version,
            event_type: e.event_type,
            schema_version: e.schema_version,
            payload: Json(e.payload),
            metadata: Json(e.metadata),
            occurred_at: e.occurred_at,
            recorded_at: e.recorded_at,
        }
    }
}

#[derive(InputObject, Debug, Clone, Default)]
pub struct EventFilter {
    pub stream_id: Option<String>,
    pub event_types: Option<Vec<String>>,
    /// Events after this global position.
    pub after_position: Option<i64>,
    /// Events up to and including this global position.
    pub until_position: Option<i64>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

#[derive(SimpleObject, sqlx::FromRow, Debug, Clone)]
pub struct ProjectionStatus {
    pub projection: String,
    pub version: i32,
    pub position: i64,
    pub events_seen: i64,
    pub updated_at: DateTime<Utc>,
    /// Events in the log past this projection's checkpoint.
    pub lag: i64,
}

pub async fn projection_status(pool: &PgPool) -> ApiResult<Vec<ProjectionStatus>> {
    Ok(sqlx::query_as(
        "SELECT projection, version, position, events_seen, updated_at, \
         greatest((SELECT coalesce(max(global_position), 0) FROM events) - position, 0) AS lag \
         FROM projection_checkpoints ORDER BY projection",
    )
    .fetch_all(pool)
    .await?)
}

#[derive(Default)]
pub struct EventsQuery;

#[Object]
impl EventsQuery {
    /// The tenant's events in log order (auditors and administrators).
    #[graphql(complexity = "(first.unwrap_or(50).clamp(1, 500) as usize) * child_complexity")]
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default)] filter: EventFilter,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Connection<String, Event>> {
        let caller = require(ctx, Capability::ReadEvents)?;
        let size = page::page_size(ctx, first)?;
        let after_position: Option<i64> = match &after {
            Some(c) => Some(page::parse(&page::decode(c, 1)?[0])?),
            None => None,
        };
        if let Some(s) = &filter.stream_id {
            text("streamId", s, 300)?;
        }
        let types = filter.event_types.clone().unwrap_or_default();
        if types.len() > 100 || types.iter().any(|t| t.len() > 100) {
            return Err(ApiError::invalid("at most 100 event types of at most 100 characters"));
        }
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(format!(
            "SELECT {} FROM events WHERE tenant_id = ",
            commands::store::EVENT_COLUMNS
        ));
        q.push_bind(caller.tenant_id);
        if let Some(s) = &filter.stream_id {
            q.push(" AND stream_id = ").push_bind(s.clone());
        }
        if !types.is_empty() {
            q.push(" AND event_type = ANY(").push_bind(types).push(")");
        }
        let lower = after_position.max(filter.after_position);
        if let Some(p) = lower {
            q.push(" AND global_position > ").push_bind(p);
        }
        if let Some(p) = filter.until_position {
            q.push(" AND global_position <= ").push_bind(p);
        }
        if let Some(t) = filter.from {
            q.push(" AND recorded_at >= ").push_bind(t);
        }
        if let Some(t) = filter.to {
            q.push(" AND recorded_at < ").push_bind(t);
        }
        q.push(" ORDER BY global_position LIMIT ").push_bind(size + 1);
        let rows = q.build().fetch_all(&state(ctx).pool).await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            events.push(Event::from(commands::store::decode_row(row)?));
        }
        Ok(page::connection(events, size, after.is_some(), |e| {
            vec![e.position.to_string()]
        }))
    }

    /// Each projection's checkpoint and how far it is behind the log.
    async fn projection_status(&self, ctx: &Context<'_>) -> ApiResult<Vec<ProjectionStatus>> {
        require(ctx, Capability::ReadEvents)?;
        projection_status(&state(ctx).pool).await
    }
}

/// Where a live feed starts: after every transaction that has finished, so nothing committed
/// from now on is missed (a transaction still open has an id at or past the fence).
pub async fn live_start(pool: &PgPool) -> ApiResult<Cursor> {
    let xmin: i64 = sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        .fetch_one(pool)
        .await?;
    Ok(Cursor {
        tx_id: xmin - 1,
        position: i64::MAX,
    })
}

async fn feed(store: &EventStore, tenant: Uuid, from: Cursor) -> ApiResult<LogSubscription> {
    let options = SubscriptionOptions {
        tenant: Some(tenant),
        poll_interval: Duration::from_millis(250),
        buffer: 1024,
        ..SubscriptionOptions::default()
    };
    Ok(LogSubscription::start(store.clone(), from, options).await?)
}

#[derive(Default)]
pub struct EventsSubscription;

#[Subscription]
impl EventsSubscription {
    /// The caller's tenant's events as they are committed, in log order, optionally of some
    /// types, from now or after a cursor (`Event.cursor`).
    async fn events(
        &self,
        ctx: &Context<'_>,
        event_types: Option<Vec<String>>,
        after: Option<String>,
    ) -> Result<impl Stream<Item = Event>, ApiError> {
        let caller = require(ctx, Capability::Subscribe)?;
        let st = state(ctx);
        let from = match after {
            Some(c) => parse_cursor(&c)?,
            None => live_start(&st.pool).await?,
        };
        let types = event_types.unwrap_or_default();
        let sub = feed(&st.store, caller.tenant_id, from).await?;
        Ok(futures::stream::unfold((sub, types), |(mut sub, types)| async move {
            loop {
                match sub.next().await? {
                    Ok(e) if types.is_empty() || types.contains(&e.event_type) => {
                        return Some((Event::from(e), (sub, types)));
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "api: event feed read failed; retrying");
                        continue;
                    }
                }
            }
        }))
    }

    /// The tenant's live calls: now, then again whenever a call event is committed (once
    /// the projection shows it).
    async fn live_calls(&self, ctx: &Context<'_>) -> Result<impl Stream<Item = Vec<LiveCall>>, ApiError> {
        let caller = require(ctx, Capability::Subscribe)?;
        let st = state(ctx);
        let sub = feed(&st.store, caller.tenant_id, live_start(&st.pool).await?).await?;
        let (tenant, limit) = (caller.tenant_id, st.config.max_page_size);
        Ok(live_view(
            sub,
            st.pool.clone(),
            "call-",
            "billing",
            move |pool| async move { super::directory::live_calls(&pool, tenant, limit).await },
        ))
    }

    /// The tenant's conference rooms in session, with their participants: now, then again
    /// whenever a conference event (a join, a leave, a mute, a session's start or end) is
    /// committed. Talking flags are read fresh with each update; a change of talker alone
    /// is not an event and sends nothing.
    async fn live_conference_rooms(
        &self,
        ctx: &Context<'_>,
    ) -> Result<impl Stream<Item = Vec<LiveConferenceRoom>>, ApiError> {
        let caller = require(ctx, Capability::Subscribe)?;
        let st = state(ctx);
        let sub = feed(&st.store, caller.tenant_id, live_start(&st.pool).await?).await?;
        let (tenant, limit) = (caller.tenant_id, st.config.max_page_size);
        Ok(live_view(
            sub,
            st.pool.clone(),
            "conference-",
            "conferences",
            move |pool| async move { super::conferences::live_rooms(&pool, tenant, limit).await },
        ))
    }
}

/// A live view over a feed: `snapshot` now, then again after each committed event of a
/// stream starting with `prefix`, once `projection` (which owns the view's read model) shows
/// it. A snapshot that cannot be read ends the feed.
fn live_view<T, F, Fut>(
    sub: LogSubscription,
    pool: PgPool,
    prefix: &'static str,
    projection: &'static str,
    snapshot: F,
) -> impl Stream<Item = T>
where
    F: Fn(PgPool) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ApiResult<T>> + Send,
    T: Send + 'static,
{
    let snapshot = std::sync::Arc::new(snapshot);
    futures::stream::unfold((sub, true), move |(mut sub, first)| {
        let (pool, snapshot) = (pool.clone(), snapshot.clone());
        async move {
            if !first {
                loop {
                    match sub.next().await? {
                        Ok(e) if e.stream_id.starts_with(prefix) => {
                            projected(&pool, projection, e.cursor()).await;
                            break;
                        }
                        _ => continue,
                    }
                }
            }
            let view = snapshot(pool).await.ok()?;
            Some((view, (sub, false)))
        }
    })
}

/// Wait until `projection` has applied the event at `cursor`, so a live snapshot sent
/// after an event already shows it. Bounded (about ten seconds): a stalled projection
/// delays the update, never stops the feed.
async fn projected(pool: &PgPool, projection: &str, cursor: Cursor) {
    const POLL: Duration = Duration::from_millis(25);
    for _ in 0..400 {
        let at: Option<(i64, i64)> =
            sqlx::query_as("SELECT tx_id::text::bigint, position FROM projection_checkpoints WHERE projection = $1")
                .bind(projection)
                .fetch_optional(pool)
                .await
                .ok()
                .flatten();
        if matches!(at, Some((tx_id, position)) if Cursor { tx_id, position } >= cursor) {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    tracing::warn!(projection, "api: live feed sent before the projection caught up");
}
