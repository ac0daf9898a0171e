//! The keys this node has authenticated, in memory, so that a request does not ask the log
//! again; a revocation evicts its key at once on this node (`revokeApiKey` returns after the
//! eviction) and, from any other process, as soon as its commit's NOTIFY reaches the
//! follower here, which reads every `ApiKeyRevoked` on the fenced cursor. While the follower
//! is not listening, nothing is served from memory: every request asks the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commands::store::NOTIFY_CHANNEL;
use commands::Cursor;
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use super::auth::Caller;

/// Keys remembered at most; past it the memory starts again from empty.
pub const MAX_KEYS: usize = 10_000;
/// Revocations read per statement while following.
const BATCH: i64 = 1000;
/// The follower reads even without a notification this often (a backstop, like `LogWaker`'s).
const POLL: Duration = Duration::from_secs(1);
/// How long the follower waits before listening again after losing its connection.
const RETRY: Duration = Duration::from_millis(500);
/// Revocations a slow listener may fall behind by before it is told it lagged.
const REVOCATIONS_BUFFER: usize = 1024;

pub struct KeyCache {
    inner: Mutex<Inner>,
    followed: watch::Sender<Followed>,
    revocations: broadcast::Sender<Revoked>,
}

/// A key revoked on this node or read from the log: `(tenant, key)`.
pub type Revoked = (Uuid, Uuid);

/// Where the follower stands, to wait on (`KeyCache::followed`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Followed {
    /// Keys are served from memory.
    pub live: bool,
    /// The global position of the last revocation read (0: none yet).
    pub revoked_position: i64,
}

#[derive(Default)]
struct Inner {
    /// True while the follower listens and has read every revocation committed before.
    live: bool,
    /// Moves on every eviction and every change of `live`: a lookup that began under an
    /// older generation may have read the log before a revocation, so it is not remembered.
    generation: u64,
    /// By the key's SHA-256 (hex), never the key.
    callers: HashMap<String, Caller>,
}

/// What a lookup in the log needs to remember its answer: the generation it began under.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache {
            inner: Mutex::new(Inner::default()),
            followed: watch::channel(Followed::default()).0,
            revocations: broadcast::channel(REVOCATIONS_BUFFER).0,
        }
    }
}

impl KeyCache {
    /// The caller a key hash names, if remembered; else a ticket to remember what the log says
    /// (`None` while the follower is not live: then nothing is remembered).
    pub fn get(&self, key_hash: &str) -> Result<Caller, Option<Ticket>> {
        let inner = self.lock();
        if !inner.live {
            return Err(None);
        }
        match inner.callers.get(key_hash) {
            Some(caller) => Ok(*caller),
            None => Err(Some(Ticket(inner.generation))),
        }
    }

    /// Remember what the log said, unless anything was evicted since the lookup began.
    pub fn remember(&self, ticket: Ticket, key_hash: String, caller: Caller) {
        let mut inner = self.lock();
        if !inner.live || inner.generation != ticket.0 {
            return;
        }
        if inner.callers.len() >= MAX_KEYS {
            inner.callers.clear();
        }
        inner.callers.insert(key_hash, caller);
    }

    /// Forget a key, and tell whoever holds a connection open with it: called after its
    /// revocation committed.
    pub fn evict(&self, tenant_id: Uuid, key_id: Uuid) {
        {
            let mut inner = self.lock();
            inner.generation += 1;
            inner
                .callers
                .retain(|_, c| !(c.key_id == key_id && c.tenant_id == tenant_id));
        }
        // No receiver is not an error: no connection is open.
        let _ = self.revocations.send((tenant_id, key_id));
    }

    /// Every revocation from now on, in the order this node learns of them. A receiver that
    /// falls more than a thousand behind gets `Lagged` and must ask the log about its key.
    pub fn revocations(&self) -> broadcast::Receiver<Revoked> {
        self.revocations.subscribe()
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.lock().callers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether keys are served from memory now.
    pub fn is_live(&self) -> bool {
        self.lock().live
    }

    /// Where the follower stands, to wait on.
    pub fn followed(&self) -> watch::Receiver<Followed> {
        self.followed.subscribe()
    }

    fn set_live(&self, live: bool) {
        {
            let mut inner = self.lock();
            inner.generation += 1;
            inner.live = live;
            if !live {
                inner.callers.clear();
            }
        }
        self.followed
            .send_if_modified(|f| std::mem::replace(&mut f.live, live) != live);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Follow the log's revocations until `shutdown` turns true. Listens first, then reads
    /// from the cursor, so no revocation falls between the two; only then goes live.
    pub async fn follow(self: Arc<Self>, pool: PgPool, mut shutdown: watch::Receiver<bool>) {
        let mut cursor = Cursor::START;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let stopped = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => true,
                result = self.listen(&pool, &mut cursor) => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "api keys: lost the log's notifications; asking the log for every key until back");
                    }
                    false
                }
            };
            self.set_live(false);
            if stopped {
                break;
            }
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// Listen, catch up, go live, then read after each notification; returns on an error.
    async fn listen(&self, pool: &PgPool, cursor: &mut Cursor) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        self.read(pool, cursor).await?;
        self.set_live(true);
        loop {
            match tokio::time::timeout(POLL, listener.try_recv()).await {
                // The connection was lost: notifications in between are gone.
                Ok(Ok(None)) => return Err(sqlx::Error::PoolClosed),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Some(_))) => while listener.next_buffered().is_some() {},
                Err(_elapsed) => {}
            }
            self.read(pool, cursor).await?;
        }
    }

    /// Evict every key revoked after `cursor`. Rows behind the fence move the cursor; rows
    /// past it (an older transaction may still commit before them) are read again next time.
    async fn read(&self, pool: &PgPool, cursor: &mut Cursor) -> Result<(), sqlx::Error> {
        let mut from = *cursor;
        let mut settled = true;
        loop {
            let rows = sqlx::query(
                "SELECT tx_id::text::bigint AS tx_id, global_position, tenant_id, payload->>'key_id' AS key_id, \
                        tx_id < pg_snapshot_xmin(pg_current_snapshot()) AS settled \
                 FROM events \
                 WHERE event_type = 'ApiKeyRevoked' AND (tx_id, global_position) > ($1::bigint::text::xid8, $2) \
                 ORDER BY tx_id, global_position LIMIT $3",
            )
            .bind(from.tx_id)
            .bind(from.position)
            .bind(BATCH)
            .fetch_all(pool)
            .await?;
            let mut last_position = 0;
            for row in &rows {
                let key_id: Option<String> = row.get("key_id");
                if let Some(key_id) = key_id.and_then(|k| k.parse().ok()) {
                    self.evict(row.get("tenant_id"), key_id);
                }
                from = Cursor {
                    tx_id: row.get("tx_id"),
                    position: row.get("global_position"),
                };
                last_position = last_position.max(from.position);
                // The cursor moves only over a prefix of settled rows.
                settled = settled && row.get::<bool, _>("settled");
                if settled {
                    *cursor = from;
                }
            }
            if last_position > 0 {
                self.followed.send_if_modified(|f| {
                    let moved = last_position > f.revoked_position;
                    f.revoked_position = f.revoked_position.max(last_position);
                    moved
                });
            }
            if (rows.len() as i64) < BATCH {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::apikey::Role;

    fn caller(n: u128) -> Caller {
        Caller {
            key_id: Uuid::from_u128(n),
            tenant_id: Uuid::from_u128(1000),
            role: Role::Finance,
        }
    }

    fn live() -> KeyCache {
        let keys = KeyCache::default();
        keys.set_live(true);
        keys
    }

    #[test]
    fn nothing_is_remembered_or_served_unless_live() {
        let keys = KeyCache::default();
        assert!(matches!(keys.get("h"), Err(None)));
        keys.set_live(true);
        let Err(Some(ticket)) = keys.get("h") else {
            panic!("a live cache hands out a ticket")
        };
        keys.remember(ticket, "h".into(), caller(1));
        assert_eq!(keys.get("h").ok(), Some(caller(1)));
        keys.set_live(false);
        assert!(matches!(keys.get("h"), Err(None)));
        assert!(keys.is_empty(), "going dark forgets every key");
    }

    #[test]
    fn an_eviction_forgets_the_key_and_refuses_lookups_that_began_before_it() {
        let keys = live();
        let Err(Some(before)) = keys.get("a") else { panic!() };
        let Err(Some(other)) = keys.get("b") else { panic!() };
        keys.remember(other, "b".into(), caller(2));
        // The lookup of "a" read the log before the revocation committed; it must not stay.
        keys.evict(caller(1).tenant_id, caller(1).key_id);
        keys.remember(before, "a".into(), caller(1));
        assert!(keys.get("a").is_err());
        assert_eq!(keys.get("b").ok(), Some(caller(2)), "other keys stay");
        keys.evict(caller(2).tenant_id, caller(2).key_id);
        assert!(keys.get("b").is_err());
        // Another tenant's key with the same id is not this one.
        let Err(Some(t)) = keys.get("c") else { panic!() };
        keys.remember(t, "c".into(), caller(3));
        keys.evict(Uuid::from_u128(7), caller(3).key_id);
        assert!(keys.get("c").is_ok());
    }

    #[test]
    fn a_revocation_reaches_listeners_subscribed_before_it() {
        let keys = live();
        let mut early = keys.revocations();
        keys.evict(caller(1).tenant_id, caller(1).key_id);
        let mut late = keys.revocations();
        assert_eq!(early.try_recv().ok(), Some((caller(1).tenant_id, caller(1).key_id)));
        assert!(late.try_recv().is_err(), "only revocations after subscribing");
        for n in 0..(REVOCATIONS_BUFFER as u128 + 1) {
            keys.evict(caller(n).tenant_id, caller(n).key_id);
        }
        assert!(
            matches!(early.try_recv(), Err(broadcast::error::TryRecvError::Lagged(_))),
            "a listener that fell behind is told so, not silently skipped"
        );
    }

    #[test]
    fn memory_is_bounded() {
        let keys = live();
        for n in 0..(MAX_KEYS as u128 + 5) {
            let Err(Some(t)) = keys.get(&n.to_string()) else {
                panic!()
            };
            keys.remember(t, n.to_string(), caller(n));
        }
        assert!(keys.len() <= MAX_KEYS);
    }
}
