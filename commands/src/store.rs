//! The Postgres event store: append with expected versions, idempotent by `event_id`,
//! read a stream, and read the global log behind the `pg_snapshot_xmin` fence.

use chrono::{DateTime, SubsecRound, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{PgConnection, Row};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

use crate::canonical::{chain_hash, HashedFields};
use domain::SchemaError;

/// The NOTIFY channel every append signals on commit (no payload).
pub const NOTIFY_CHANNEL: &str = "ledgerline_events";
/// Limits on what one append may carry.
pub const MAX_EVENTS_PER_APPEND: usize = 10_000;
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
pub const MAX_STREAM_ID_LEN: usize = 200;

/// Decides whether `(event_type, schema_version, payload)` is an event we know.
pub type Validator = fn(&str, u32, &Value) -> Result<(), SchemaError>;

/// What produced an event, kept beside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Value,
    pub metadata: Metadata,
    pub occurred_at: DateTime<Utc>,
}

impl NewEvent {
    pub fn from_domain<E: domain::DomainEvent>(
        event_id: Uuid,
        event: &E,
        metadata: Metadata,
        occurred_at: DateTime<Utc>,
    ) -> Self {
        NewEvent {
            event_id,
            event_type: event.event_type().to_string(),
            schema_version: event.schema_version(),
            payload: event.to_payload(),
            metadata,
            occurred_at,
        }
    }
}

/// The version a stream must be at for an append to go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Expected {
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be exactly at this version (0 means it must not exist).
    Exact(u64),
    /// No check: append at the end, whatever the version.
    Any,
}

#[derive(Debug, Clone)]
pub struct StreamWrite {
    pub tenant_id: Uuid,
    pub stream_id: String,
    pub expected: Expected,
    pub events: Vec<NewEvent>,
}

/// Where an append's events landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Global positions, in the order the events were given.
    pub positions: Vec<i64>,
    /// The version of each written stream after the append, in the order given.
    pub stream_versions: Vec<u64>,
    /// True when every event was already stored by an earlier append with the same ids.
    pub already_stored: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub global_position: i64,
    pub tx_id: i64,
    pub event_id: Uuid,
    pub tenant_id: Uuid,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Value,
    pub metadata: Value,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    #[serde(with = "hex_bytes")]
    pub hash: Vec<u8>,
}

impl RecordedEvent {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            tx_id: self.tx_id,
            position: self.global_position,
        }
    }

    pub fn decode<E: domain::DomainEvent>(&self) -> Result<E, SchemaError> {
        E::from_stored(&self.event_type, self.schema_version as u32, &self.payload)
    }

    pub fn hashed_fields(&self) -> HashedFields<'_> {
        HashedFields {
            event_id: self.event_id,
            tenant_id: self.tenant_id,
            stream_id: &self.stream_id,
            stream_version: self.stream_version,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            payload: &self.payload,
            metadata: &self.metadata,
            occurred_at: self.occurred_at,
        }
    }
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

/// A position in the global log as subscribers see it: `(tx_id, global_position)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cursor {
    pub tx_id: i64,
    pub position: i64,
}

impl Cursor {
    pub const START: Cursor = Cursor { tx_id: 0, position: 0 };
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("stream `{stream_id}` is not at the expected version {expected:?}")]
    Conflict { stream_id: String, expected: Expected },
    #[error("event {index} ({event_id}) is rejected: {reason}")]
    InvalidEvent {
        index: usize,
        event_id: Uuid,
        reason: String,
    },
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    #[error("event ids {0} were stored before with different content or only in part")]
    IdempotencyMismatch(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
    validators: Vec<Validator>,
}

macro_rules! event_columns {
    ($payload:literal) => {
        concat!(
            "tx_id::text::bigint AS tx_id, global_position, event_id, tenant_id, stream_id, \
             stream_version, event_type, schema_version, ",
            $payload,
            ", metadata, occurred_at, recorded_at, hash"
        )
    };
}

pub const EVENT_COLUMNS: &str = event_columns!("payload");

/// [`EVENT_COLUMNS`] with a `null` payload for the event types bound as `$6`.
const EVENT_COLUMNS_SKIPPING_PAYLOADS: &str =
    event_columns!("CASE WHEN event_type = ANY($6) THEN NULL ELSE payload END AS payload");

/// Which events a follower wants: those of these types (all when empty) on streams with
/// this prefix (all when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub event_types: Vec<String>,
    pub stream_prefix: String,
}

/// What [`EventStore::read_all_filtered`] kept of one window of the log.
#[derive(Debug, Clone)]
pub struct FilteredBatch {
    /// The window's events that the filter keeps, in cursor order.
    pub events: Vec<RecordedEvent>,
    /// The cursor of the window's last event, kept or not: where the next read starts.
    pub window_end: Cursor,
    /// How many events the window held.
    pub scanned: i64,
}

impl EventStore {
    /// A store that accepts the domain's events.
    pub fn new(pool: PgPool) -> Self {
        EventStore {
            pool,
            validators: vec![domain::registry::validate, billing::aggregates::validate],
        }
    }

    /// Accept another family of events (billing's, for instance).
    pub fn with_validator(mut self, validator: Validator) -> Self {
        self.validators.push(validator);
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Append to one or more streams in one short transaction. Retrying with the same
    /// `event_id`s returns the original positions and writes nothing.
    pub async fn append(&self, writes: &[StreamWrite]) -> Result<Appended, StoreError> {
        let prepared = self.prepare(writes)?;
        let mut deadlocks = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let result = append_prepared(&mut tx, &prepared).await;
            let result = match result {
                Ok(appended) => tx.commit().await.map(|()| appended).map_err(StoreError::from),
                Err(e) => {
                    drop(tx);
                    Err(e)
                }
            };
            match result {
                Ok(appended) => return Ok(appended),
                Err(e) if is_deadlock(&e) && deadlocks < 5 => deadlocks += 1,
                Err(e) if e.is_conflict() || is_event_id_violation(&e) => {
                    return match self.already_stored(&prepared).await? {
                        Some(appended) => Ok(appended),
                        None => Err(e),
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Append inside a transaction the caller owns (the caller commits). Used where an
    /// append must share a transaction with other writes, and by tests of late commits.
    pub async fn append_in(&self, conn: &mut PgConnection, writes: &[StreamWrite]) -> Result<Appended, StoreError> {
        let prepared = self.prepare(writes)?;
        append_prepared(conn, &prepared).await
    }

    /// Every event of one stream, in version order.
    pub async fn read_stream(&self, tenant_id: Uuid, stream_id: &str) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = $1 AND stream_id = $2 ORDER BY stream_version"
        );
        let rows = sqlx::query(&sql)
            .bind(tenant_id)
            .bind(stream_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_row).collect()
    }

    /// Up to `limit` events after `after` in `(tx_id, global_position)` order, only from
    /// transactions older than every one still running: a late commit is never skipped.
    pub async fn read_all(
        &self,
        after: Cursor,
        limit: i64,
        tenant: Option<Uuid>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_all_from(after, limit, tenant, 0).await
    }

    /// As [`EventStore::read_all`], keeping only events past `min_position` (for an
    /// export that starts at a global position rather than a cursor).
    pub async fn read_all_from(
        &self,
        after: Cursor,
        limit: i64,
        tenant: Option<Uuid>,
        min_position: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_window(after, limit, tenant, min_position, &[]).await
    }

    /// As [`EventStore::read_all`], but events of the `skip_payloads` types come with a
    /// `null` payload (neither sent by the server nor decoded): for a reader that must see
    /// every event, in order, to check versions and move its cursor, yet never reads those
    /// events' contents (a projection and the event types it does not handle).
    pub async fn read_all_skipping_payloads(
        &self,
        after: Cursor,
        limit: i64,
        skip_payloads: &[&str],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_window(after, limit, None, 0, skip_payloads).await
    }

    async fn read_window(
        &self,
        after: Cursor,
        limit: i64,
        tenant: Option<Uuid>,
        min_position: i64,
        skip_payloads: &[&str],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        // Only an export that starts at a position filters on it: an extra range on the
        // primary key tempts the planner away from the (tx_id, global_position) index.
        let position_filter = if min_position > 0 {
            "AND global_position > $5"
        } else {
            "AND $5::bigint = 0"
        };
        let columns = if skip_payloads.is_empty() {
            EVENT_COLUMNS
        } else {
            EVENT_COLUMNS_SKIPPING_PAYLOADS
        };
        let sql = format!(
            "SELECT {columns} FROM events \
             WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
               AND (tx_id, global_position) > ($1::bigint::text::xid8, $2) \
               AND ($3::uuid IS NULL OR tenant_id = $3) \
               {position_filter} \
             ORDER BY events.tx_id, events.global_position LIMIT $4"
        );
        let query = sqlx::query(&sql)
            .bind(after.tx_id)
            .bind(after.position)
            .bind(tenant)
            .bind(limit)
            .bind(min_position);
        let query = if skip_payloads.is_empty() {
            query
        } else {
            query.bind(skip_payloads)
        };
        let mut rows = query.fetch(&self.pool);
        // Decode while the server is still sending: the read overlaps the decoding.
        let mut events = Vec::with_capacity(limit.clamp(0, 10_000) as usize);
        while let Some(row) = rows.try_next().await? {
            events.push(decode_row(&row)?);
        }
        Ok(events)
    }

    /// As [`EventStore::read_all`] over the same window of up to `limit` events, returning
    /// only those `filter` keeps, with where the window ended: a follower that needs a few
    /// kinds of event moves its cursor past the rest without fetching or decoding them.
    /// `None` when the window was empty (nothing new past the fence).
    pub async fn read_all_filtered(
        &self,
        after: Cursor,
        limit: i64,
        tenant: Option<Uuid>,
        filter: &EventFilter,
    ) -> Result<Option<FilteredBatch>, StoreError> {
        // One statement, so the window and the events kept from it share one snapshot.
        let sql = format!(
            "WITH w AS MATERIALIZED ( \
                 SELECT tx_id, global_position, stream_id, event_type FROM events \
                 WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
                   AND (tx_id, global_position) > ($1::bigint::text::xid8, $2) \
                   AND ($3::uuid IS NULL OR tenant_id = $3) \
                 ORDER BY tx_id, global_position LIMIT $4), \
             last AS ( \
                 SELECT tx_id::text::bigint AS end_tx, global_position AS end_position, \
                        (SELECT count(*) FROM w) AS scanned \
                 FROM w ORDER BY tx_id DESC, global_position DESC LIMIT 1) \
             SELECT last.end_tx, last.end_position, last.scanned, {EVENT_COLUMNS} \
             FROM last LEFT JOIN events ON events.global_position IN ( \
                 SELECT global_position FROM w \
                 WHERE (cardinality($5::text[]) = 0 OR event_type = ANY($5)) \
                   AND ($6::text = '' OR starts_with(stream_id, $6))) \
             ORDER BY events.tx_id, events.global_position"
        );
        let rows = sqlx::query(&sql)
            .bind(after.tx_id)
            .bind(after.position)
            .bind(tenant)
            .bind(limit)
            .bind(&filter.event_types)
            .bind(&filter.stream_prefix)
            .fetch_all(&self.pool)
            .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let window_end = Cursor {
            tx_id: first.try_get("end_tx")?,
            position: first.try_get("end_position")?,
        };
        let scanned: i64 = first.try_get("scanned")?;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            // The one row of a window where nothing matched carries no event.
            if row.try_get::<Option<i64>, _>("global_position")?.is_some() {
                events.push(decode_row(row)?);
            }
        }
        Ok(Some(FilteredBatch {
            events,
            window_end,
            scanned,
        }))
    }

    /// The transaction that holds subscribers back, when events wait behind the fence.
    pub async fn fence_holder(&self) -> Result<Option<FenceHolder>, StoreError> {
        let row = sqlx::query(
            "WITH fence AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) \
             SELECT a.pid, a.state, a.xact_start, left(a.query, 200) AS query, \
                    (SELECT count(*) FROM events, fence WHERE events.tx_id >= fence.xmin) AS waiting \
             FROM pg_stat_activity a, fence \
             WHERE a.backend_xid IS NOT NULL \
               AND a.backend_xid::text::bigint = (fence.xmin::text::bigint % 4294967296) \
             LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|r| {
            let waiting: i64 = r.get("waiting");
            (waiting > 0).then(|| FenceHolder {
                pid: r.get("pid"),
                state: r.get("state"),
                xact_start: r.get("xact_start"),
                query: r.get("query"),
                events_waiting: waiting,
            })
        }))
    }

    fn prepare(&self, writes: &[StreamWrite]) -> Result<Vec<StreamWrite>, StoreError> {
        if writes.is_empty() {
            return Err(StoreError::InvalidAppend("nothing to append".into()));
        }
        let total: usize = writes.iter().map(|w| w.events.len()).sum();
        if total > MAX_EVENTS_PER_APPEND {
            return Err(StoreError::InvalidAppend(format!(
                "{total} events in one append; the limit is {MAX_EVENTS_PER_APPEND}"
            )));
        }
        let mut streams = HashSet::new();
        let mut ids = HashSet::new();
        let mut index = 0;
        let mut prepared = Vec::with_capacity(writes.len());
        for write in writes {
            if write.events.is_empty() {
                return Err(StoreError::InvalidAppend(format!(
                    "no events for stream `{}`",
                    write.stream_id
                )));
            }
            if write.stream_id.is_empty()
                || write.stream_id.len() > MAX_STREAM_ID_LEN
                || write.stream_id.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(StoreError::InvalidAppend(format!(
                    "invalid stream id `{}`",
                    write.stream_id
                )));
            }
            if !streams.insert((write.tenant_id, write.stream_id.as_str())) {
                return Err(StoreError::InvalidAppend(format!(
                    "stream `{}` appears twice in one append",
                    write.stream_id
                )));
            }
            let mut events = Vec::with_capacity(write.events.len());
            for event in &write.events {
                let reject = |reason: String| StoreError::InvalidEvent {
                    index,
                    event_id: event.event_id,
                    reason,
                };
                if !ids.insert(event.event_id) {
                    return Err(reject("the event id appears twice in one append".into()));
                }
                self.validate(&event.event_type, event.schema_version, &event.payload)
                    .map_err(|e| reject(e.to_string()))?;
                let size = event.payload.to_string().len();
                if size > MAX_PAYLOAD_BYTES {
                    return Err(reject(format!(
                        "payload of {size} bytes; the limit is {MAX_PAYLOAD_BYTES}"
                    )));
                }
                if has_nul(&event.payload) {
                    return Err(reject("payload strings may not contain NUL characters".into()));
                }
                let mut event = event.clone();
                // Postgres keeps microseconds: hash exactly what will be stored.
                event.occurred_at = event.occurred_at.trunc_subsecs(6);
                events.push(event);
                index += 1;
            }
            let expected = match write.expected {
                Expected::Exact(0) => Expected::NoStream,
                other => other,
            };
            prepared.push(StreamWrite {
                tenant_id: write.tenant_id,
                stream_id: write.stream_id.clone(),
                expected,
                events,
            });
        }
        Ok(prepared)
    }

    fn validate(&self, event_type: &str, schema_version: u32, payload: &Value) -> Result<(), SchemaError> {
        let mut last = SchemaError::UnknownType(event_type.to_string());
        for validator in &self.validators {
            match validator(event_type, schema_version, payload) {
                Ok(()) => return Ok(()),
                Err(SchemaError::UnknownType(t)) => last = SchemaError::UnknownType(t),
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// If every event of the append is stored already (a retry), where it landed.
    async fn already_stored(&self, writes: &[StreamWrite]) -> Result<Option<Appended>, StoreError> {
        let ids: Vec<Uuid> = writes
            .iter()
            .flat_map(|w| w.events.iter().map(|e| e.event_id))
            .collect();
        let rows = sqlx::query(
            "SELECT event_id, tenant_id, stream_id, stream_version, global_position FROM events WHERE event_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let found: HashMap<Uuid, (Uuid, String, i64, i64)> = rows
            .iter()
            .map(|r| {
                (
                    r.get("event_id"),
                    (
                        r.get("tenant_id"),
                        r.get("stream_id"),
                        r.get("stream_version"),
                        r.get("global_position"),
                    ),
                )
            })
            .collect();
        let mut positions = Vec::with_capacity(ids.len());
        let mut stream_versions = Vec::with_capacity(writes.len());
        let mut mismatched = Vec::new();
        for write in writes {
            let mut last_version = 0;
            for event in &write.events {
                match found.get(&event.event_id) {
                    Some((tenant, stream, version, position))
                        if *tenant == write.tenant_id && *stream == write.stream_id =>
                    {
                        positions.push(*position);
                        last_version = last_version.max(*version as u64);
                    }
                    _ => mismatched.push(event.event_id.to_string()),
                }
            }
            stream_versions.push(last_version);
        }
        if !mismatched.is_empty() {
            return Err(StoreError::IdempotencyMismatch(mismatched.join(", ")));
        }
        Ok(Some(Appended {
            positions,
            stream_versions,
            already_stored: true,
        }))
    }
}

/// Subscribers read in `(tx_id, global_position)` order, so two transactions that write
/// the same stream must get their transaction ids in the order of their stream versions.
/// A transaction id is assigned at the first write; a row lock taken after it (a second
/// stream of a batch, or the losing side of a race to create a stream with
/// `Expected::Any`) can make a transaction with the smaller id write the later version.
///
/// So every stream is locked first with a transaction-scoped advisory lock, which assigns
/// no transaction id: whoever writes a stream after us takes its lock only after we
/// commit, and so gets a larger id. When the caller's transaction already has an id (it
/// wrote before calling [`EventStore::append_in`]), the order is checked instead, and a
/// stream last written by a younger transaction is a conflict: retry the transaction.
async fn lock_streams(conn: &mut PgConnection, writes: &[StreamWrite]) -> Result<(), StoreError> {
    let tenants: Vec<Uuid> = writes.iter().map(|w| w.tenant_id).collect();
    let streams: Vec<String> = writes.iter().map(|w| w.stream_id.clone()).collect();
    let row = sqlx::query(
        "SELECT (SELECT count(pg_advisory_xact_lock(k)) FROM ( \
                    SELECT DISTINCT hashtextextended(t::text || '/' || s, 7160) AS k \
                    FROM unnest($1::uuid[], $2::text[]) AS v(t, s) ORDER BY k) AS keys) AS locked, \
                pg_current_xact_id_if_assigned()::text::bigint AS xid",
    )
    .bind(&tenants)
    .bind(&streams)
    .fetch_one(&mut *conn)
    .await?;
    let Some(xid) = row.get::<Option<i64>, _>("xid") else {
        return Ok(());
    };
    let younger = sqlx::query(
        "SELECT v.s AS stream_id FROM unnest($1::uuid[], $2::text[]) AS v(t, s), \
         LATERAL (SELECT tx_id FROM events e WHERE e.tenant_id = v.t AND e.stream_id = v.s \
                  ORDER BY e.stream_version DESC LIMIT 1) AS head \
         WHERE head.tx_id::text::bigint > $3 LIMIT 1",
    )
    .bind(&tenants)
    .bind(&streams)
    .bind(xid)
    .fetch_optional(&mut *conn)
    .await?;
    match younger {
        Some(row) => {
            let stream_id: String = row.get("stream_id");
            let expected = writes
                .iter()
                .find(|w| w.stream_id == stream_id)
                .map_or(Expected::Any, |w| w.expected);
            Err(StoreError::Conflict { stream_id, expected })
        }
        None => Ok(()),
    }
}

/// Puts the head of each stream row returned (`tenant_id`, `stream_id`, `last_hash`) at the
/// index of its write among `subset`; `before` reads the version the write starts from.
fn place_heads(
    writes: &[StreamWrite],
    subset: &[usize],
    rows: &[PgRow],
    heads: &mut [Option<(u64, Vec<u8>)>],
    before: impl Fn(&PgRow, usize) -> i64,
) {
    let index: HashMap<(Uuid, &str), usize> = subset
        .iter()
        .map(|&i| ((writes[i].tenant_id, writes[i].stream_id.as_str()), i))
        .collect();
    for row in rows {
        let stream_id: String = row.get("stream_id");
        if let Some(&i) = index.get(&(row.get("tenant_id"), stream_id.as_str())) {
            heads[i] = Some((before(row, i) as u64, row.get("last_hash")));
        }
    }
}

/// Step 1 for the `Expected::Any` writes: create or advance each stream row and read its
/// head, all in one statement (`append` refuses a stream named twice, so each row moves once).
async fn take_any_heads(
    conn: &mut PgConnection,
    writes: &[StreamWrite],
    heads: &mut [Option<(u64, Vec<u8>)>],
) -> Result<(), StoreError> {
    let any: Vec<usize> = (0..writes.len())
        .filter(|&i| writes[i].expected == Expected::Any)
        .collect();
    if any.is_empty() {
        return Ok(());
    }
    let tenants: Vec<Uuid> = any.iter().map(|&i| writes[i].tenant_id).collect();
    let streams: Vec<String> = any.iter().map(|&i| writes[i].stream_id.clone()).collect();
    let counts: Vec<i64> = any.iter().map(|&i| writes[i].events.len() as i64).collect();
    let rows = sqlx::query(
        "INSERT INTO streams (tenant_id, stream_id, version, last_hash) \
         SELECT t, s, n, '\\x'::bytea FROM unnest($1::uuid[], $2::text[], $3::bigint[]) AS v(t, s, n) \
         ON CONFLICT (tenant_id, stream_id) DO UPDATE SET version = streams.version + EXCLUDED.version \
         RETURNING tenant_id, stream_id, version, last_hash",
    )
    .bind(&tenants)
    .bind(&streams)
    .bind(&counts)
    .fetch_all(&mut *conn)
    .await?;
    place_heads(writes, &any, &rows, heads, |row, i| {
        row.get::<i64, _>("version") - writes[i].events.len() as i64
    });
    match any.iter().find(|&&i| heads[i].is_none()) {
        Some(&i) => Err(StoreError::InvalidAppend(format!(
            "stream `{}` was not taken by the head upsert",
            writes[i].stream_id
        ))),
        None => Ok(()),
    }
}

/// Who holds the subscription fence back.
#[derive(Debug, Clone)]
pub struct FenceHolder {
    pub pid: i32,
    pub state: Option<String>,
    pub xact_start: Option<DateTime<Utc>>,
    pub query: Option<String>,
    pub events_waiting: i64,
}

/// The append protocol, on a connection inside a transaction:
/// 0. lock every stream of the append (transaction-scoped advisory locks, in key order)
///    before anything is written; see [`lock_streams`];
/// 1. take every stream row (update at the expected version, or insert a new one);
///    a missing row is a conflict;
/// 2. chain the hashes in memory;
/// 3. insert every event and move the stream heads in one statement, with a NOTIFY.
async fn append_prepared(conn: &mut PgConnection, writes: &[StreamWrite]) -> Result<Appended, StoreError> {
    lock_streams(conn, writes).await?;
    // Stream heads: (version before the append, last hash), by index in `writes`.
    let mut heads: Vec<Option<(u64, Vec<u8>)>> = vec![None; writes.len()];

    let exact: Vec<usize> = (0..writes.len())
        .filter(|&i| matches!(writes[i].expected, Expected::Exact(_)))
        .collect();
    if !exact.is_empty() {
        let mut tenants = Vec::with_capacity(exact.len());
        let mut streams = Vec::with_capacity(exact.len());
        let mut expected = Vec::with_capacity(exact.len());
        let mut counts = Vec::with_capacity(exact.len());
        for &i in &exact {
            let Expected::Exact(v) = writes[i].expected else {
                unreachable!("filtered to Exact above")
            };
            tenants.push(writes[i].tenant_id);
            streams.push(writes[i].stream_id.clone());
            expected.push(v as i64);
            counts.push(writes[i].events.len() as i64);
        }
        let rows = sqlx::query(
            "UPDATE streams s SET version = v.expected + v.n \
             FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[]) AS v(tenant_id, stream_id, expected, n) \
             WHERE s.tenant_id = v.tenant_id AND s.stream_id = v.stream_id AND s.version = v.expected \
             RETURNING s.tenant_id, s.stream_id, v.expected, s.last_hash",
        )
        .bind(&tenants)
        .bind(&streams)
        .bind(&expected)
        .bind(&counts)
        .fetch_all(&mut *conn)
        .await?;
        place_heads(writes, &exact, &rows, &mut heads, |row, _| {
            row.get::<i64, _>("expected")
        });
        if let Some(&i) = exact.iter().find(|&&i| heads[i].is_none()) {
            return Err(StoreError::Conflict {
                stream_id: writes[i].stream_id.clone(),
                expected: writes[i].expected,
            });
        }
    }

    let new: Vec<usize> = (0..writes.len())
        .filter(|&i| writes[i].expected == Expected::NoStream)
        .collect();
    if !new.is_empty() {
        let tenants: Vec<Uuid> = new.iter().map(|&i| writes[i].tenant_id).collect();
        let streams: Vec<String> = new.iter().map(|&i| writes[i].stream_id.clone()).collect();
        let counts: Vec<i64> = new.iter().map(|&i| writes[i].events.len() as i64).collect();
        let rows = sqlx::query(
            "INSERT INTO streams (tenant_id, stream_id, version, last_hash) \
             SELECT t, s, n, '\\x'::bytea FROM unnest($1::uuid[], $2::text[], $3::bigint[]) AS v(t, s, n) \
             ON CONFLICT DO NOTHING RETURNING tenant_id, stream_id",
        )
        .bind(&tenants)
        .bind(&streams)
        .bind(&counts)
        .fetch_all(&mut *conn)
        .await?;
        let created: HashSet<(Uuid, String)> = rows.iter().map(|r| (r.get("tenant_id"), r.get("stream_id"))).collect();
        for &i in &new {
            if !created.contains(&(writes[i].tenant_id, writes[i].stream_id.clone())) {
                return Err(StoreError::Conflict {
                    stream_id: writes[i].stream_id.clone(),
                    expected: Expected::NoStream,
                });
            }
            heads[i] = Some((0, Vec::new()));
        }
    }

    take_any_heads(conn, writes, &mut heads).await?;

    let total: usize = writes.iter().map(|w| w.events.len()).sum();
    let mut ev_ids = Vec::with_capacity(total);
    let mut ev_tenants = Vec::with_capacity(total);
    let mut ev_streams = Vec::with_capacity(total);
    let mut ev_versions = Vec::with_capacity(total);
    let mut ev_types = Vec::with_capacity(total);
    let mut ev_schema = Vec::with_capacity(total);
    let mut ev_payloads = Vec::with_capacity(total);
    let mut ev_metadata = Vec::with_capacity(total);
    let mut ev_occurred = Vec::with_capacity(total);
    let mut ev_hashes = Vec::with_capacity(total);
    let mut head_tenants = Vec::with_capacity(writes.len());
    let mut head_streams = Vec::with_capacity(writes.len());
    let mut head_hashes = Vec::with_capacity(writes.len());
    let mut stream_versions = Vec::with_capacity(writes.len());

    for (i, write) in writes.iter().enumerate() {
        // Every index was filled above: Exact, NoStream and Any cover all writes.
        let (before, mut previous) = heads[i].clone().expect("every stream head was taken");
        for (k, event) in write.events.iter().enumerate() {
            let version = (before + k as u64 + 1) as i64;
            // Metadata is a plain struct of strings and ids: it always serializes.
            let metadata = serde_json::to_value(&event.metadata).expect("metadata serializes");
            let hash = chain_hash(
                &previous,
                &HashedFields {
                    event_id: event.event_id,
                    tenant_id: write.tenant_id,
                    stream_id: &write.stream_id,
                    stream_version: version,
                    event_type: &event.event_type,
                    schema_version: event.schema_version as i32,
                    payload: &event.payload,
                    metadata: &metadata,
                    occurred_at: event.occurred_at,
                },
            );
            ev_ids.push(event.event_id);
            ev_tenants.push(write.tenant_id);
            ev_streams.push(write.stream_id.clone());
            ev_versions.push(version);
            ev_types.push(event.event_type.clone());
            ev_schema.push(event.schema_version as i32);
            ev_payloads.push(event.payload.clone());
            ev_metadata.push(metadata);
            ev_occurred.push(event.occurred_at);
            ev_hashes.push(hash.clone());
            previous = hash;
        }
        head_tenants.push(write.tenant_id);
        head_streams.push(write.stream_id.clone());
        head_hashes.push(previous);
        stream_versions.push(before + write.events.len() as u64);
    }

    let rows = sqlx::query(
        "WITH ins AS ( \
            INSERT INTO events (event_id, tenant_id, stream_id, stream_version, event_type, schema_version, \
                                payload, metadata, occurred_at, hash) \
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::int[], \
                                 $7::jsonb[], $8::jsonb[], $9::timestamptz[], $10::bytea[]) \
            RETURNING event_id, global_position), \
         heads AS ( \
            UPDATE streams s SET last_hash = h.hash \
            FROM unnest($11::uuid[], $12::text[], $13::bytea[]) AS h(tenant_id, stream_id, hash) \
            WHERE s.tenant_id = h.tenant_id AND s.stream_id = h.stream_id), \
         notified AS (SELECT pg_notify($14, '') AS n) \
         SELECT ins.event_id, ins.global_position FROM ins, notified",
    )
    .bind(&ev_ids)
    .bind(&ev_tenants)
    .bind(&ev_streams)
    .bind(&ev_versions)
    .bind(&ev_types)
    .bind(&ev_schema)
    .bind(&ev_payloads)
    .bind(&ev_metadata)
    .bind(&ev_occurred)
    .bind(&ev_hashes)
    .bind(&head_tenants)
    .bind(&head_streams)
    .bind(&head_hashes)
    .bind(NOTIFY_CHANNEL)
    .fetch_all(&mut *conn)
    .await?;
    let by_id: HashMap<Uuid, i64> = rows
        .iter()
        .map(|r| (r.get("event_id"), r.get("global_position")))
        .collect();
    let positions = ev_ids
        .iter()
        .map(|id| by_id.get(id).copied().unwrap_or_default())
        .collect();
    Ok(Appended {
        positions,
        stream_versions,
        already_stored: false,
    })
}

pub fn decode_row(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    Ok(RecordedEvent {
        global_position: row.try_get("global_position")?,
        tx_id: row.try_get("tx_id")?,
        event_id: row.try_get("event_id")?,
        tenant_id: row.try_get("tenant_id")?,
        stream_id: row.try_get("stream_id")?,
        stream_version: row.try_get("stream_version")?,
        event_type: row.try_get("event_type")?,
        schema_version: row.try_get("schema_version")?,
        // `null` only from `read_all_skipping_payloads`: the column itself is NOT NULL.
        payload: row.try_get::<Option<Value>, _>("payload")?.unwrap_or(Value::Null),
        metadata: row.try_get("metadata")?,
        occurred_at: row.try_get("occurred_at")?,
        recorded_at: row.try_get("recorded_at")?,
        hash: row.try_get("hash")?,
    })
}

pub(crate) const SELECT_EVENT_COLUMNS: &str = EVENT_COLUMNS;

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn db_code(e: &StoreError) -> Option<(String, Option<String>)> {
    match e {
        StoreError::Database(sqlx::Error::Database(db)) => Some((
            db.code().map(|c| c.to_string()).unwrap_or_default(),
            db.constraint().map(str::to_string),
        )),
        _ => None,
    }
}

fn is_deadlock(e: &StoreError) -> bool {
    matches!(db_code(e), Some((code, _)) if code == "40P01")
}

fn is_event_id_violation(e: &StoreError) -> bool {
    matches!(db_code(e), Some((code, Some(constraint))) if code == "23505" && constraint == "events_event_id_key")
}
