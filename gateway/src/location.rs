//! The location service on Postgres: the bindings of every extension, shared by all SIP
//! nodes. Saving a binding says, atomically, whether it was created, changed or only
//! refreshed; that answer (not the registrar's view from lookup time, which two nodes can
//! share) decides which registration events are written, so each fact is written once.

use chrono::{DateTime, Utc};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use commands::db::KeptConnection;
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub tenant_id: Uuid,
    pub extension_id: Uuid,
    pub contact: String,
    pub source: String,
    pub call_id: String,
    pub cseq: i64,
    pub user_agent: String,
    pub expires_at: DateTime<Utc>,
    pub node_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// A new binding (or one that had lapsed): worth an event.
    Created,
    /// Same contact, but a new source address or user agent: worth an event.
    Changed,
    /// Only the expiry, Call-ID or CSeq moved (a refresh, or a phone that restarted and
    /// registered the same contact from the same place): no event.
    Refreshed,
}

/// Bindings per extension are bounded: a device may not fill the table.
pub const MAX_BINDINGS_PER_EXTENSION: i64 = 10;

/// Requests queued while a batch runs go in the next one, up to this many.
pub const MAX_BATCH: usize = 256;

/// The location table, with reads and saves of concurrent REGISTERs and INVITEs gathered
/// into one statement each (a burst of registrations costs a few statements and one commit,
/// not two statements and a commit per phone). Removals and purges are rare and go direct.
#[derive(Clone)]
pub struct Location {
    pool: PgPool,
    /// Unbounded: every read has a caller waiting for it, and callers bound how many they
    /// wait for (the SIP node by its pending lookups). A bounded queue made the node's loop,
    /// which enqueues reads itself, stop whole while the batcher caught up.
    reads: mpsc::UnboundedSender<ReadRequest>,
    saves: mpsc::Sender<SaveRequest>,
}

#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error("extension already has {MAX_BINDINGS_PER_EXTENSION} registered devices")]
    TooManyBindings,
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("the location batcher stopped")]
    Stopped,
}

/// What a read batch answers each caller: called on the batcher's task, so it must not block.
type ReadReply = Box<dyn FnOnce(Result<Vec<Binding>, LocationError>) + Send>;

struct ReadRequest {
    tenant_id: Uuid,
    extension_id: Uuid,
    now: DateTime<Utc>,
    reply: ReadReply,
}

struct SaveRequest {
    binding: Binding,
    now: DateTime<Utc>,
    reply: oneshot::Sender<Result<Saved, SaveFailure>>,
}

#[derive(Debug, Clone)]
enum SaveFailure {
    TooMany,
    Sql(Arc<sqlx::Error>),
}

fn shared_error(e: Arc<sqlx::Error>) -> LocationError {
    LocationError::Sql(commands::db::unshared(e))
}

impl Location {
    /// Starts the two batchers (reads, saves) on the current tokio runtime; they stop when
    /// the last clone of the returned value is dropped.
    pub fn new(pool: PgPool) -> Self {
        let (reads, read_rx) = mpsc::unbounded_channel();
        let (saves, save_rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(read_batcher(pool.clone(), read_rx));
        tokio::spawn(save_batcher(pool.clone(), save_rx));
        Location { pool, reads, saves }
    }

    /// The live bindings of an extension.
    pub async fn bindings(
        &self,
        tenant_id: Uuid,
        extension_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Vec<Binding>, LocationError> {
        let (reply, answer) = oneshot::channel();
        self.bindings_then(tenant_id, extension_id, now, move |found| {
            let _ = reply.send(found);
        });
        answer.await.map_err(|_| LocationError::Stopped)?
    }

    /// [`Location::bindings`], with the answer handed to `then` on the read batcher's task
    /// instead of awaited: a caller with its own queue (the SIP node's loop) takes the answer
    /// without a task of its own in between. `then` must not block; it is always called once,
    /// with [`LocationError::Stopped`] when the batcher is gone. Never waits.
    pub fn bindings_then(
        &self,
        tenant_id: Uuid,
        extension_id: Uuid,
        now: DateTime<Utc>,
        then: impl FnOnce(Result<Vec<Binding>, LocationError>) + Send + 'static,
    ) {
        let request = ReadRequest {
            tenant_id,
            extension_id,
            now,
            reply: Box::new(then),
        };
        if let Err(mpsc::error::SendError(request)) = self.reads.send(request) {
            (request.reply)(Err(LocationError::Stopped));
        }
    }

    /// Insert or refresh a binding and say which it was (atomically, in the statement that
    /// writes it; concurrent saves share that statement and its commit).
    pub async fn save(&self, binding: &Binding, now: DateTime<Utc>) -> Result<Saved, LocationError> {
        let (reply, answer) = oneshot::channel();
        let request = SaveRequest {
            binding: binding.clone(),
            now,
            reply,
        };
        self.saves.send(request).await.map_err(|_| LocationError::Stopped)?;
        match answer.await.map_err(|_| LocationError::Stopped)? {
            Ok(saved) => Ok(saved),
            Err(SaveFailure::TooMany) => Err(LocationError::TooManyBindings),
            Err(SaveFailure::Sql(e)) => Err(shared_error(e)),
        }
    }

    /// Remove one binding; true if it was live.
    pub async fn remove(
        &self,
        tenant_id: Uuid,
        extension_id: Uuid,
        contact: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, LocationError> {
        let live: Option<bool> = sqlx::query_scalar(
            "DELETE FROM sip_bindings WHERE tenant_id = $1 AND extension_id = $2 AND contact = $3 RETURNING expires_at > $4",
        )
        .bind(tenant_id)
        .bind(extension_id)
        .bind(contact)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(live.unwrap_or(false))
    }

    /// Remove every binding of an extension (`Contact: *`); returns the live ones removed.
    pub async fn remove_all(
        &self,
        tenant_id: Uuid,
        extension_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, LocationError> {
        let rows = sqlx::query(
            "DELETE FROM sip_bindings WHERE tenant_id = $1 AND extension_id = $2 RETURNING contact, expires_at > $3 AS live",
        )
        .bind(tenant_id)
        .bind(extension_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .filter(|r| r.get::<bool, _>("live"))
            .map(|r| r.get("contact"))
            .collect())
    }

    /// Delete up to `limit` lapsed bindings (any node may do it; each row goes once).
    pub async fn purge_expired(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<Binding>, LocationError> {
        let rows = sqlx::query(
            "DELETE FROM sip_bindings WHERE ctid IN ( \
                 SELECT ctid FROM sip_bindings WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING tenant_id, extension_id, contact, source, call_id, cseq, user_agent, expires_at, node_id",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(binding_of).collect())
    }
}

fn binding_of(row: &sqlx::postgres::PgRow) -> Binding {
    Binding {
        tenant_id: row.get("tenant_id"),
        extension_id: row.get("extension_id"),
        contact: row.get("contact"),
        source: row.get("source"),
        call_id: row.get("call_id"),
        cseq: row.get("cseq"),
        user_agent: row.get("user_agent"),
        expires_at: row.get("expires_at"),
        node_id: row.get("node_id"),
    }
}

/// Reads: whatever is queued (up to `MAX_BATCH`) in one statement, one batch at a time on
/// the batcher's own connection (see [`KeptConnection`]). One at a time keeps batches large:
/// two at once halved them (4.5 rows a statement at 8,000 REGISTERs/s, against 8.9) and cost
/// Postgres more per registration.
async fn read_batcher(pool: PgPool, mut rx: mpsc::UnboundedReceiver<ReadRequest>) {
    let mut connection = KeptConnection::new(pool);
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        read_batch(&mut connection, batch).await;
    }
}

async fn read_batch(connection: &mut KeptConnection, batch: Vec<ReadRequest>) {
    let tenants: Vec<Uuid> = batch.iter().map(|r| r.tenant_id).collect();
    let extensions: Vec<Uuid> = batch.iter().map(|r| r.extension_id).collect();
    let nows: Vec<DateTime<Utc>> = batch.iter().map(|r| r.now).collect();
    let rows = match connection.get().await {
        Ok(c) => {
            sqlx::query(
                "SELECT i.ord, b.tenant_id, b.extension_id, b.contact, b.source, b.call_id, b.cseq, b.user_agent, \
                b.expires_at, b.node_id \
         FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[]) WITH ORDINALITY AS i(tenant_id, extension_id, at, ord) \
         CROSS JOIN LATERAL (SELECT * FROM sip_bindings b WHERE b.tenant_id = i.tenant_id \
             AND b.extension_id = i.extension_id AND b.expires_at > i.at ORDER BY b.contact) b \
         ORDER BY i.ord",
            )
            .bind(&tenants)
            .bind(&extensions)
            .bind(&nows)
            .fetch_all(c)
            .await
        }
        Err(e) => Err(e),
    };
    if rows.is_err() {
        connection.discard();
    }
    match rows {
        Ok(rows) => {
            let mut found: Vec<Vec<Binding>> = batch.iter().map(|_| Vec::new()).collect();
            for row in &rows {
                let ord: i64 = row.get("ord");
                if let Some(slot) = usize::try_from(ord - 1).ok().and_then(|i| found.get_mut(i)) {
                    slot.push(binding_of(row));
                }
            }
            for (request, bindings) in batch.into_iter().zip(found) {
                (request.reply)(Ok(bindings));
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for request in batch {
                (request.reply)(Err(shared_error(e.clone())));
            }
        }
    }
}

/// Saves: one batch at a time, in arrival order, with at most one save per extension in a
/// batch (the per-extension device limit and `ON CONFLICT` both need that); a second save of
/// an extension waits for the next batch, and so does everything after it for that extension.
async fn save_batcher(pool: PgPool, mut rx: mpsc::Receiver<SaveRequest>) {
    let mut connection = KeptConnection::new(pool);
    let mut pending: VecDeque<SaveRequest> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(request) => pending.push_back(request),
                None => return,
            }
        }
        while pending.len() < 4 * MAX_BATCH {
            match rx.try_recv() {
                Ok(request) => pending.push_back(request),
                Err(_) => break,
            }
        }
        let mut batch = Vec::new();
        let mut keys = HashSet::new();
        let mut held = HashSet::new();
        let mut rest = VecDeque::new();
        while let Some(request) = pending.pop_front() {
            let key = (request.binding.tenant_id, request.binding.extension_id);
            if batch.len() < MAX_BATCH && !held.contains(&key) && keys.insert(key) {
                batch.push(request);
            } else {
                held.insert(key);
                rest.push_back(request);
            }
        }
        pending = rest;
        save_batch(&mut connection, batch).await;
    }
}

async fn save_batch(connection: &mut KeptConnection, batch: Vec<SaveRequest>) {
    let col = |f: fn(&SaveRequest) -> String| batch.iter().map(f).collect::<Vec<String>>();
    let tenants: Vec<Uuid> = batch.iter().map(|r| r.binding.tenant_id).collect();
    let extensions: Vec<Uuid> = batch.iter().map(|r| r.binding.extension_id).collect();
    let contacts = col(|r| r.binding.contact.clone());
    let sources = col(|r| r.binding.source.clone());
    let call_ids = col(|r| r.binding.call_id.clone());
    let cseqs: Vec<i64> = batch.iter().map(|r| r.binding.cseq).collect();
    let agents = col(|r| r.binding.user_agent.clone());
    let expiries: Vec<DateTime<Utc>> = batch.iter().map(|r| r.binding.expires_at).collect();
    let nodes = col(|r| r.binding.node_id.clone());
    let nows: Vec<DateTime<Utc>> = batch.iter().map(|r| r.now).collect();
    // Per row, as the one-row statement did: lock the old binding and keep its fields, count
    // the extension's other live devices, insert or update only below the limit. Every lookup
    // is a LATERAL one by key, so each row costs index probes whatever the planner guesses of
    // the batch (a join let it scan the whole table, dead versions included, for each batch);
    // an insert without a WHERE on its update always writes, so `saved` is the limit check.
    // A live binding's refresh adds no device, so it is never refused and skips the count.
    let rows = match connection.get().await {
        Ok(c) => sqlx::query(
        "WITH input AS ( \
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int8[], \
                                  $7::text[], $8::timestamptz[], $9::text[], $10::timestamptz[]) WITH ORDINALITY \
                 AS t(tenant_id, extension_id, contact, source, call_id, cseq, user_agent, expires_at, node_id, at, ord)), \
         state AS MATERIALIZED ( \
             SELECT i.*, o.source AS old_source, o.user_agent AS old_user_agent, o.expires_at AS old_expires_at, \
                    CASE WHEN o.expires_at > i.at THEN 0 ELSE \
                    (SELECT count(*) FROM sip_bindings b WHERE b.tenant_id = i.tenant_id \
                        AND b.extension_id = i.extension_id AND b.expires_at > i.at AND b.contact <> i.contact) END AS others \
             FROM input i LEFT JOIN LATERAL ( \
                 SELECT b.source, b.user_agent, b.expires_at FROM sip_bindings b \
                 WHERE b.tenant_id = i.tenant_id AND b.extension_id = i.extension_id AND b.contact = i.contact \
                 FOR UPDATE) o ON true), \
         saved AS ( \
             INSERT INTO sip_bindings (tenant_id, extension_id, contact, source, call_id, cseq, user_agent, expires_at, node_id, updated_at) \
             SELECT s.tenant_id, s.extension_id, s.contact, s.source, s.call_id, s.cseq, s.user_agent, s.expires_at, s.node_id, s.at \
             FROM state s WHERE s.others < $11 \
             ON CONFLICT (tenant_id, extension_id, contact) DO UPDATE SET \
                 source = EXCLUDED.source, call_id = EXCLUDED.call_id, cseq = EXCLUDED.cseq, \
                 user_agent = EXCLUDED.user_agent, expires_at = EXCLUDED.expires_at, \
                 node_id = EXCLUDED.node_id, updated_at = EXCLUDED.updated_at) \
         SELECT s.ord, s.others < $11 AS saved, s.old_source AS source, s.old_user_agent AS user_agent, \
                s.old_expires_at AS expires_at \
         FROM state s ORDER BY s.ord",
    )
    .bind(&tenants)
    .bind(&extensions)
    .bind(&contacts)
    .bind(&sources)
    .bind(&call_ids)
    .bind(&cseqs)
    .bind(&agents)
    .bind(&expiries)
    .bind(&nodes)
    .bind(&nows)
    .bind(MAX_BINDINGS_PER_EXTENSION)
    .fetch_all(c)
    .await,
        Err(e) => Err(e),
    };
    if rows.is_err() {
        connection.discard();
    }
    match rows {
        Ok(rows) if rows.len() == batch.len() => {
            for (request, row) in batch.into_iter().zip(&rows) {
                let answer = classify(&request.binding, request.now, row);
                let _ = request.reply.send(answer);
            }
        }
        Ok(rows) => {
            let e = Arc::new(sqlx::Error::Protocol(format!(
                "location batch of {} answered {} rows",
                batch.len(),
                rows.len()
            )));
            for request in batch {
                let _ = request.reply.send(Err(SaveFailure::Sql(e.clone())));
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for request in batch {
                let _ = request.reply.send(Err(SaveFailure::Sql(e.clone())));
            }
        }
    }
}

/// Created, changed or refreshed, from the row the binding replaced (if any).
fn classify(binding: &Binding, now: DateTime<Utc>, row: &sqlx::postgres::PgRow) -> Result<Saved, SaveFailure> {
    let saved: bool = row.get("saved");
    let old_source: Option<String> = row.get("source");
    // Only a new device, or one whose binding lapsed, is ever refused: then nothing was written,
    // whatever row was there before.
    if !saved {
        return Err(SaveFailure::TooMany);
    }
    let old_user_agent: Option<String> = row.get("user_agent");
    let old_expiry: Option<DateTime<Utc>> = row.get("expires_at");
    Ok(match (old_source, old_expiry) {
        (None, _) => Saved::Created,
        (Some(_), Some(expiry)) if expiry <= now => Saved::Created,
        (Some(source), _) if source != binding.source || old_user_agent.as_deref() != Some(&binding.user_agent) => {
            Saved::Changed
        }
        _ => Saved::Refreshed,
    })
}
