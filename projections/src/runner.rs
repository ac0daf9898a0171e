//! The projection runner: fenced batches from the log, applied with their checkpoint in
//! one transaction; resumes where the last committed batch ended.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use commands::store::{Cursor, EventStore, RecordedEvent, StoreError};
use commands::subscription::LogWaker;
use sqlx::{PgConnection, Row};
use tokio::sync::watch;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("stream {stream_id} jumped from version {last} to {got}: the log was read out of order")]
    Gap { stream_id: String, last: i64, got: i64 },
    #[error("event {0} cannot be read: {1}")]
    Decode(Uuid, String),
}

/// A read model built from the log.
pub trait Projection: Send + Sync {
    /// Stable name, the checkpoint's key.
    fn name(&self) -> &'static str;
    /// Bumped when the read model's shape or rules change: a new version rebuilds from zero.
    fn version(&self) -> i32;
    /// The tables this projection owns, emptied on a rebuild.
    fn tables(&self) -> &'static [&'static str];
    /// Event types whose payloads this projection never reads. They are still delivered, in
    /// order and with their stream versions (the runner checks each stream's versions and
    /// moves the checkpoint past them), but with a `null` payload that the database does not
    /// send and the runner does not decode. A projection that decodes one of them fails
    /// loudly (a decode error), never silently.
    fn skips_payloads(&self) -> &'static [&'static str] {
        &[]
    }
    /// Apply a batch inside the runner's transaction.
    fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;
}

pub struct Runner<P: Projection> {
    store: EventStore,
    projection: P,
    batch_size: i64,
    poll_interval: Duration,
    /// Last version seen per stream since this runner started, to assert contiguity.
    seen: HashMap<(Uuid, String), i64>,
    /// Where the read model and its checkpoint live: `public` for the live one, another
    /// schema for a shadow rebuild or a time-travel copy (see `rebuild.rs`).
    schema: String,
    /// Apply only the events this keeps (time travel: "as of" a position or a moment).
    until: Option<Until>,
}

/// The last event a time-travel build applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Events at or before this global position.
    Position(i64),
    /// Events recorded (committed to the log) at or before this moment: what the system
    /// knew then.
    RecordedAt(chrono::DateTime<chrono::Utc>),
    /// Events at or before this cursor: exactly what a live runner at this checkpoint saw.
    Cursor(Cursor),
}

impl Until {
    pub fn keeps(&self, event: &RecordedEvent) -> bool {
        match self {
            Until::Position(position) => event.global_position <= *position,
            Until::RecordedAt(at) => event.recorded_at <= *at,
            Until::Cursor(cursor) => event.cursor() <= *cursor,
        }
    }
}

/// How long a caught-up runner lets new events gather after being woken (see `run`): the
/// read models' lag grows by at most this much.
pub const LINGER: Duration = Duration::from_millis(50);

/// How often one `step` retries after losing the checkpoint to another runner.
const MAX_LOST_RACES: usize = 100;

/// Above this many tracked streams, the contiguity map starts over (memory stays bounded).
const MAX_TRACKED_STREAMS: usize = 200_000;

impl<P: Projection> Runner<P> {
    pub fn new(store: EventStore, projection: P) -> Self {
        Runner {
            store,
            projection,
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            seen: HashMap::new(),
            schema: "public".to_string(),
            until: None,
        }
    }

    /// Build into `schema` (which must hold the projection's tables and a
    /// `projection_checkpoints` table) instead of `public`. The name must be a plain
    /// identifier; `rebuild::create_shadow` makes one.
    pub fn in_schema(mut self, schema: &str) -> Self {
        assert!(
            crate::rebuild::is_identifier(schema),
            "schema names are checked by the caller: {schema}"
        );
        self.schema = schema.to_string();
        self
    }

    /// Apply only events up to a position or a moment; the rest is read and skipped.
    pub fn until(mut self, until: Option<Until>) -> Self {
        self.until = until;
        self
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub fn batch_size(mut self, batch_size: i64) -> Self {
        self.batch_size = batch_size.clamp(1, 10_000);
        self
    }

    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// The committed checkpoint, after making sure it belongs to this projection version
    /// (an older version's read model is emptied and rebuilt from zero).
    pub async fn checkpoint(&mut self) -> Result<Cursor, ProjectionError> {
        let row = sqlx::query(&format!(
            "SELECT version, tx_id::text::bigint AS tx_id, position FROM {}.projection_checkpoints WHERE projection = $1",
            self.schema
        ))
        .bind(self.projection.name())
        .fetch_optional(self.store.pool())
        .await?;
        match row {
            Some(row) if row.get::<i32, _>("version") == self.projection.version() => Ok(Cursor {
                tx_id: row.get("tx_id"),
                position: row.get("position"),
            }),
            _ => {
                self.reset().await?;
                Ok(Cursor::START)
            }
        }
    }

    /// Empty the read model and start it over from position zero.
    pub async fn reset(&mut self) -> Result<(), ProjectionError> {
        self.seen.clear();
        let mut tx = self.store.pool().begin().await?;
        for table in self.projection.tables() {
            sqlx::query(&format!("TRUNCATE {}.{table}", self.schema))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(&format!(
            "INSERT INTO {}.projection_checkpoints (projection, version, tx_id, position, events_seen) \
             VALUES ($1, $2, '0'::xid8, 0, 0) \
             ON CONFLICT (projection) DO UPDATE SET version = $2, tx_id = '0'::xid8, position = 0, events_seen = 0, updated_at = now()",
            self.schema
        ))
        .bind(self.projection.name())
        .bind(self.projection.version())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Apply one batch; returns how many events it held (0 when caught up).
    pub async fn step(&mut self) -> Result<usize, ProjectionError> {
        // A batch dropped because another runner (or the still-running backend of a killed
        // one) moved the checkpoint is retried from the new checkpoint, so `0` always means
        // "caught up" and `catch_up` never stops early.
        for _ in 0..MAX_LOST_RACES {
            if let Some(n) = self.try_step().await? {
                return Ok(n);
            }
        }
        Ok(0)
    }

    /// One attempt: `None` when the checkpoint moved under this batch and it was dropped.
    async fn try_step(&mut self) -> Result<Option<usize>, ProjectionError> {
        let cursor = self.checkpoint().await?;
        let skip = self.projection.skips_payloads();
        let batch = read_batch(self.store.clone(), cursor, self.batch_size, self.until, skip).await?;
        self.apply_batch(cursor, batch).await
    }

    /// Apply a batch read from `cursor`: `None` when the checkpoint moved and it was dropped.
    async fn apply_batch(
        &mut self,
        cursor: Cursor,
        batch: Vec<RecordedEvent>,
    ) -> Result<Option<usize>, ProjectionError> {
        if batch.is_empty() {
            return Ok(Some(0));
        }
        for event in &batch {
            let key = (event.tenant_id, event.stream_id.clone());
            if let Some(&last) = self.seen.get(&key) {
                if event.stream_version != last + 1 {
                    return Err(ProjectionError::Gap {
                        stream_id: event.stream_id.clone(),
                        last,
                        got: event.stream_version,
                    });
                }
            }
            if self.seen.len() >= MAX_TRACKED_STREAMS {
                self.seen.clear();
            }
            self.seen.insert(key, event.stream_version);
        }
        let mut tx = self.store.pool().begin().await?;
        // Unqualified table names in `apply` resolve to this runner's schema first.
        sqlx::query(&format!("SET LOCAL search_path TO {}, public", self.schema))
            .execute(&mut *tx)
            .await?;
        // Lock the checkpoint: if another runner moved it since we read, drop this batch.
        let current = sqlx::query(&format!(
            "SELECT tx_id::text::bigint AS tx_id, position FROM {}.projection_checkpoints WHERE projection = $1 FOR UPDATE",
            self.schema
        ))
        .bind(self.projection.name())
        .fetch_one(&mut *tx)
        .await?;
        let current = Cursor {
            tx_id: current.get("tx_id"),
            position: current.get("position"),
        };
        if current != cursor {
            self.seen.clear();
            return Ok(None);
        }
        match self.until {
            None => self.projection.apply(&mut tx, &batch).await?,
            Some(until) => {
                let kept: Vec<RecordedEvent> = batch.iter().filter(|e| until.keeps(e)).cloned().collect();
                if !kept.is_empty() {
                    self.projection.apply(&mut tx, &kept).await?;
                }
            }
        }
        // The batch is non-empty: its last event is where the checkpoint moves.
        let last = batch.last().expect("batch is not empty").cursor();
        sqlx::query(&format!(
            "UPDATE {}.projection_checkpoints SET tx_id = $2::bigint::text::xid8, position = $3, \
             events_seen = events_seen + $4, updated_at = now() WHERE projection = $1",
            self.schema
        ))
        .bind(self.projection.name())
        .bind(last.tx_id)
        .bind(last.position)
        .bind(batch.len() as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(batch.len()))
    }

    /// Change the limit of a time-travel or audit build (see [`Until`]).
    pub fn set_until(&mut self, until: Option<Until>) {
        self.until = until;
    }

    /// Catch up with every event committed before this call: unlike [`Runner::catch_up`],
    /// which stops at the fence, this waits (polling, up to `deadline`) until every
    /// transaction that was running when it started has finished, so a write that committed
    /// before the call is never missed because an unrelated transaction held the fence.
    /// (The deadline is counted in polls: projections do not read the clock.)
    pub async fn catch_up_to_now(&mut self, deadline: Duration) -> Result<u64, ProjectionError> {
        const POLL: Duration = Duration::from_millis(10);
        let max_polls = deadline.as_millis() / POLL.as_millis();
        let mut polls = 0u128;
        let target: i64 = sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
            .fetch_one(self.store.pool())
            .await?;
        let mut total = self.catch_up().await?;
        loop {
            let xmin: i64 = sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                .fetch_one(self.store.pool())
                .await?;
            if xmin >= target || polls >= max_polls {
                total += self.catch_up().await?;
                return Ok(total);
            }
            polls += 1;
            tokio::time::sleep(POLL).await;
            total += self.catch_up().await?;
        }
    }

    /// Apply batches until the log (behind the fence) is exhausted; returns events applied.
    ///
    /// The next batch is read while this one is applied (its read starts where this batch
    /// ends, assuming it commits; if the checkpoint moved instead, the read-ahead is dropped
    /// and reading starts over from the checkpoint), so a rebuild overlaps the log read, the
    /// fold and the writes. The read-ahead is fenced like any read: it may see fewer events,
    /// never skip one.
    pub async fn catch_up(&mut self) -> Result<u64, ProjectionError> {
        let mut total = 0u64;
        let mut cursor = self.checkpoint().await?;
        let mut ahead = self.spawn_read(cursor);
        let mut lost_races = 0;
        loop {
            let batch = ahead
                .await
                .map_err(|e| ProjectionError::Decode(Uuid::nil(), format!("read-ahead task: {e}")))??;
            let Some(end) = batch.last().map(RecordedEvent::cursor) else {
                return Ok(total);
            };
            ahead = self.spawn_read(end);
            match self.apply_batch(cursor, batch).await? {
                Some(n) => {
                    total += n as u64;
                    cursor = end;
                }
                None => {
                    ahead.abort();
                    lost_races += 1;
                    if lost_races >= MAX_LOST_RACES {
                        return Ok(total);
                    }
                    cursor = self.checkpoint().await?;
                    ahead = self.spawn_read(cursor);
                }
            }
        }
    }

    fn spawn_read(&self, cursor: Cursor) -> tokio::task::JoinHandle<Result<Vec<RecordedEvent>, StoreError>> {
        let skip = self.projection.skips_payloads();
        tokio::spawn(read_batch(
            self.store.clone(),
            cursor,
            self.batch_size,
            self.until,
            skip,
        ))
    }

    /// Follow the log until `shutdown` turns true.
    pub async fn run(&mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), ProjectionError> {
        let mut waker = LogWaker::connect(&self.store, self.poll_interval).await?;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let n = self.step().await?;
            if n as i64 >= self.batch_size {
                continue;
            }
            tokio::select! {
                _ = waker.wait() => {}
                _ = shutdown.changed() => {}
            }
            // Gather: under load a commit lands every few milliseconds, and a batch per
            // commit costs a read, a transaction and a checkpoint write each time. Waiting
            // `LINGER` after a wake-up lets the next batch take what arrives meanwhile.
            tokio::select! {
                _ = tokio::time::sleep(LINGER) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// One fenced batch after `cursor`; a cursor limit stops the read there (the log is read in
/// cursor order, so stopping rather than skipping lets a build be extended later).
async fn read_batch(
    store: EventStore,
    cursor: Cursor,
    batch_size: i64,
    until: Option<Until>,
    skip_payloads: &'static [&'static str],
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut batch = store
        .read_all_skipping_payloads(cursor, batch_size, skip_payloads)
        .await?;
    if let Some(Until::Cursor(limit)) = until {
        batch.retain(|e| e.cursor() <= limit);
    }
    Ok(batch)
}
