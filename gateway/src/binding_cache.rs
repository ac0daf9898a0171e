//! A SIP node's memory of the location table: the bindings it last read of each extension,
//! kept only while the table is known not to have changed since, so that a REGISTER which
//! changes nothing (a quiet refresh, see `RegistrarConfig::quiet_refresh_percent`) is
//! answered without a round trip to Postgres, as an in-memory registrar would.
//!
//! How it stays true with several nodes on one table:
//! - every change to `sip_bindings` (any node's save, removal or purge, or an operator's
//!   statement) notifies [`CHANNEL`] with the extension id, from a trigger, at commit;
//! - each node listens on its own connection and forgets the extension on each notice; a
//!   read that was in flight when a notice (or a loss of the listening connection) arrived
//!   does not fill the cache, since it may predate the change;
//! - the node forgets an extension itself when one of its own saves of it begins;
//! - losing the listening connection, or hearing nothing on it (not even the heartbeat this
//!   node sends every [`HEARTBEAT`]) for [`SILENCE`], forgets everything, and nothing is
//!   kept until the node listens again;
//! - an entry is used for at most its time to live, whatever was heard.
//!
//! What it cannot close: a change committed by another node is seen here only once its
//! notice arrives (usually well under a millisecond). A phone that registers through another
//! node and, within that time, through this one again may be answered from the old entry.
//! The node already answers a REGISTER before its save commits, so the same window exists
//! without the cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::sip::registrar::Binding;

/// The channel every change of `sip_bindings` is announced on (migration 0062).
pub const CHANNEL: &str = "ledgerline_sip_bindings";
/// The payload that means "anything may have changed" (a `TRUNCATE`).
pub const EVERYTHING: &str = "*";
/// The payload of a node's heartbeat: proves the listening connection still delivers.
pub const PING: &str = "ping";
/// How often a node sends its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// After this long without any notice, the listening connection is taken for dead.
pub const SILENCE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The longest an entry is used after its read; zero turns the cache off.
    pub ttl: chrono::Duration,
    /// Entries kept at most; past it, new extensions are not cached.
    pub max_entries: usize,
}

/// What the listener has seen, for health checks and for tests to wait on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStatus {
    /// Changes are being heard: only then is anything kept.
    pub listening: bool,
    /// Notices of changes (not heartbeats) heard so far.
    pub notices: u64,
    /// Times the listening connection was lost or fell silent.
    pub losses: u64,
}

/// A read the cache is waiting for: only the read it was issued for may fill the entry.
#[derive(Debug)]
pub struct Ticket {
    extension_id: Uuid,
    number: u64,
}

#[derive(Clone)]
pub struct BindingCache {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    status: watch::Sender<CacheStatus>,
    config: CacheConfig,
}

#[derive(Default)]
struct State {
    listening: bool,
    next_ticket: u64,
    entries: HashMap<Uuid, Entry>,
}

enum Entry {
    /// A read was issued with this ticket and has not answered.
    Reading(u64),
    Known {
        bindings: Vec<Binding>,
        /// The caller's generation at the read (the SIP shell's save tracker).
        generation: u64,
        read_at: DateTime<Utc>,
    },
}

impl BindingCache {
    /// A cache that keeps nothing until [`BindingCache::set_listening`] says changes are
    /// heard (the shell's [`BindingCache::start`] does that).
    pub fn new(config: CacheConfig) -> Self {
        BindingCache {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                status: watch::channel(CacheStatus::default()).0,
                config,
            }),
        }
    }

    /// A cache kept true by listening on [`CHANNEL`] (see the module's notes). The
    /// listener and heartbeat tasks stop when the last clone is dropped. With a zero time to
    /// live nothing is started and nothing is ever kept.
    pub fn start(pool: PgPool, config: CacheConfig) -> Self {
        let cache = BindingCache::new(config);
        if cache.shared.config.ttl > chrono::Duration::zero() {
            tokio::spawn(listen(pool.clone(), Arc::downgrade(&cache.shared)));
            tokio::spawn(heartbeat(pool, Arc::downgrade(&cache.shared)));
        }
        cache
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live bindings of an extension as last read, and the generation given with them,
    /// if they are known to be the table's (and the entry is within its time to live).
    pub fn get(&self, extension_id: Uuid, now: DateTime<Utc>) -> Option<(Vec<Binding>, u64)> {
        let state = self.state();
        if !state.listening {
            return None;
        }
        match state.entries.get(&extension_id)? {
            Entry::Known {
                bindings,
                generation,
                read_at,
            } if *read_at <= now && now - *read_at < self.shared.config.ttl => Some((
                // As the table's read does: a lapsed binding is not there.
                bindings.iter().filter(|b| b.expires_at > now).cloned().collect(),
                *generation,
            )),
            _ => None,
        }
    }

    /// Before reading an extension's bindings: a ticket for [`BindingCache::fill`], or
    /// `None` when the answer cannot be kept (not listening, or full).
    pub fn begin_read(&self, extension_id: Uuid) -> Option<Ticket> {
        let max = self.shared.config.max_entries;
        let ttl = self.shared.config.ttl;
        let mut state = self.state();
        if !state.listening || ttl <= chrono::Duration::zero() {
            return None;
        }
        if state.entries.len() >= max && !state.entries.contains_key(&extension_id) {
            // Room is made only from entries that could not be used again anyway.
            let newest = state
                .entries
                .values()
                .filter_map(|e| match e {
                    Entry::Known { read_at, .. } => Some(*read_at),
                    Entry::Reading(_) => None,
                })
                .max();
            if let Some(newest) = newest {
                state.entries.retain(|_, e| match e {
                    Entry::Known { read_at, .. } => newest - *read_at < ttl,
                    Entry::Reading(_) => true,
                });
            }
            if state.entries.len() >= max {
                return None;
            }
        }
        state.next_ticket += 1;
        let number = state.next_ticket;
        state.entries.insert(extension_id, Entry::Reading(number));
        Some(Ticket { extension_id, number })
    }

    /// The read's answer, kept if nothing was heard of the extension since the read was
    /// issued; `None` (a failed read, or bindings the caller will not stand on) only ends the
    /// wait. `read_at` is when the read was issued.
    pub fn fill(&self, ticket: Ticket, answer: Option<(&[Binding], u64)>, read_at: DateTime<Utc>) {
        let mut state = self.state();
        let Some(Entry::Reading(number)) = state.entries.get(&ticket.extension_id) else {
            return;
        };
        if *number != ticket.number {
            return;
        }
        match answer {
            Some((bindings, generation)) => {
                state.entries.insert(
                    ticket.extension_id,
                    Entry::Known {
                        bindings: bindings.to_vec(),
                        generation,
                        read_at,
                    },
                );
            }
            None => {
                state.entries.remove(&ticket.extension_id);
            }
        }
    }

    /// The extension's bindings may have changed (a notice, or a save this node begins):
    /// its entry, or the read in flight for it, is no longer the table's.
    pub fn forget(&self, extension_id: Uuid) {
        self.state().entries.remove(&extension_id);
    }

    /// Whether changes are heard; either way, everything kept so far is forgotten (while
    /// nothing was heard, or from before the listener knew, anything may have changed).
    pub fn set_listening(&self, listening: bool) {
        {
            let mut state = self.state();
            state.listening = listening;
            state.forget_all();
        }
        self.shared.status.send_modify(|s| s.listening = listening);
    }

    /// A notice on [`CHANNEL`].
    pub fn notice(&self, payload: &str) {
        if payload == PING {
            return;
        }
        match payload.parse::<Uuid>() {
            Ok(extension_id) => self.forget(extension_id),
            // `*`, or anything not understood: it may concern any extension.
            Err(_) => self.state().forget_all(),
        }
        self.shared.status.send_modify(|s| s.notices += 1);
    }

    fn lost(&self) {
        self.set_listening(false);
        self.shared.status.send_modify(|s| s.losses += 1);
    }

    /// Follows the listener's state.
    pub fn status(&self) -> watch::Receiver<CacheStatus> {
        self.shared.status.subscribe()
    }

    /// How many extensions have an entry (or a read in flight).
    pub fn len(&self) -> usize {
        self.state().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl State {
    fn forget_all(&mut self) {
        self.entries.clear();
        self.entries.shrink_to(1024);
    }
}

fn upgrade(shared: &Weak<Shared>) -> Option<BindingCache> {
    shared.upgrade().map(|shared| BindingCache { shared })
}

/// Waits `for_`, or less if the cache is dropped; false when it was.
async fn pause(shared: &Weak<Shared>, for_: Duration) -> bool {
    let step = Duration::from_millis(250).min(for_);
    let mut waited = Duration::ZERO;
    while waited < for_ {
        tokio::time::sleep(step).await;
        waited += step;
        if shared.strong_count() == 0 {
            return false;
        }
    }
    true
}

/// Listens on [`CHANNEL`] for as long as the cache lives, reconnecting after a loss.
async fn listen(pool: PgPool, shared: Weak<Shared>) {
    loop {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let mut listener = match listener {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "listening for location changes failed; the location cache is off");
                if !pause(&shared, HEARTBEAT).await {
                    return;
                }
                continue;
            }
        };
        match upgrade(&shared) {
            Some(cache) => cache.set_listening(true),
            None => return,
        }
        let mut heard = tokio::time::Instant::now();
        loop {
            // Only the deadline competes with the listener, and when it wins the listener
            // is dropped: a read cut short mid-message never leaves a connection behind.
            let received = tokio::select! {
                received = listener.try_recv() => received,
                _ = tokio::time::sleep_until(heard + SILENCE) => {
                    tracing::warn!("nothing heard on the location channel; listening again");
                    break;
                }
            };
            let Some(cache) = upgrade(&shared) else {
                return;
            };
            heard = tokio::time::Instant::now();
            match received {
                Ok(Some(notification)) => cache.notice(notification.payload()),
                // Lost, and listening again already: what was missed in between is unknown.
                Ok(None) => {
                    cache.lost();
                    cache.set_listening(true);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the location channel failed; listening again");
                    break;
                }
            }
        }
        match upgrade(&shared) {
            Some(cache) => cache.lost(),
            None => return,
        }
        drop(listener);
        if !pause(&shared, Duration::from_millis(100)).await {
            return;
        }
    }
}

/// Sends [`PING`] on [`CHANNEL`] every [`HEARTBEAT`], so that every node's listener hears
/// something while the table is quiet and can tell a dead connection from a calm one.
async fn heartbeat(pool: PgPool, shared: Weak<Shared>) {
    loop {
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(PING)
            .execute(&pool)
            .await
        {
            tracing::debug!(error = %e, "location heartbeat failed");
        }
        if !pause(&shared, HEARTBEAT).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn binding(contact: &str, expires: i64) -> Binding {
        Binding {
            contact: contact.into(),
            expires_at: at(expires),
            call_id: "c".into(),
            cseq: 1,
            source: "127.0.0.1:5060".into(),
            user_agent: String::new(),
        }
    }

    fn cache(ttl: i64, max: usize) -> BindingCache {
        let cache = BindingCache::new(CacheConfig {
            ttl: chrono::Duration::seconds(ttl),
            max_entries: max,
        });
        cache.set_listening(true);
        cache
    }

    #[test]
    fn a_read_fills_and_is_used_until_its_time_to_live() {
        let cache = cache(30, 10);
        let a = Uuid::new_v4();
        assert!(cache.get(a, at(0)).is_none());
        let ticket = cache.begin_read(a).unwrap();
        assert!(cache.get(a, at(0)).is_none(), "a read in flight answers nothing");
        cache.fill(ticket, Some((&[binding("sip:a@x", 100)], 7)), at(0));
        assert_eq!(cache.get(a, at(1)), Some((vec![binding("sip:a@x", 100)], 7)));
        assert!(cache.get(a, at(29)).is_some());
        assert!(cache.get(a, at(30)).is_none(), "past its time to live");
        assert!(cache.get(a, at(-1)).is_none(), "not before its read");
        assert!(cache.get(Uuid::new_v4(), at(1)).is_none());
    }

    #[test]
    fn lapsed_bindings_are_left_out_as_the_table_read_leaves_them() {
        let cache = cache(300, 10);
        let a = Uuid::new_v4();
        let ticket = cache.begin_read(a).unwrap();
        cache.fill(
            ticket,
            Some((&[binding("sip:a@x", 10), binding("sip:b@x", 100)], 1)),
            at(0),
        );
        assert_eq!(cache.get(a, at(9)).unwrap().0.len(), 2);
        assert_eq!(cache.get(a, at(10)).unwrap().0, vec![binding("sip:b@x", 100)]);
    }

    #[test]
    fn a_notice_during_the_read_keeps_its_answer_out() {
        let cache = cache(30, 10);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let ticket_a = cache.begin_read(a).unwrap();
        let ticket_b = cache.begin_read(b).unwrap();
        cache.notice(&a.to_string());
        cache.fill(ticket_a, Some((&[], 1)), at(0));
        cache.fill(ticket_b, Some((&[], 1)), at(0));
        assert!(cache.get(a, at(1)).is_none(), "the read may predate the change");
        assert!(cache.get(b, at(1)).is_some(), "a notice is for its extension only");
        cache.notice(&b.to_string());
        assert!(cache.get(b, at(1)).is_none(), "a notice forgets a known entry");
        assert_eq!(
            *cache.status().borrow(),
            CacheStatus {
                listening: true,
                notices: 2,
                losses: 0
            }
        );
    }

    #[test]
    fn only_the_latest_read_fills_and_a_failed_one_ends_the_wait() {
        let cache = cache(30, 10);
        let a = Uuid::new_v4();
        let first = cache.begin_read(a).unwrap();
        let second = cache.begin_read(a).unwrap();
        cache.fill(first, Some((&[binding("sip:old@x", 100)], 1)), at(0));
        assert!(cache.get(a, at(1)).is_none());
        cache.fill(second, None, at(0));
        assert!(cache.is_empty());
    }

    #[test]
    fn everything_is_forgotten_on_a_loss_a_truncate_or_an_unknown_notice_and_a_ping_is_nothing() {
        let cache = cache(30, 10);
        let a = Uuid::new_v4();
        let fill = |cache: &BindingCache| {
            let ticket = cache.begin_read(a).unwrap();
            cache.fill(ticket, Some((&[], 1)), at(0));
            assert!(cache.get(a, at(1)).is_some());
        };
        fill(&cache);
        cache.notice(PING);
        assert!(cache.get(a, at(1)).is_some(), "a heartbeat changes nothing");
        cache.notice(EVERYTHING);
        assert!(cache.get(a, at(1)).is_none());
        fill(&cache);
        cache.notice("not-a-uuid");
        assert!(cache.get(a, at(1)).is_none());
        fill(&cache);
        let in_flight = cache.begin_read(Uuid::new_v4()).unwrap();
        cache.lost();
        assert!(cache.get(a, at(1)).is_none());
        assert!(cache.begin_read(a).is_none(), "nothing is kept while not listening");
        cache.fill(in_flight, Some((&[], 1)), at(0));
        assert!(cache.is_empty(), "a read from before the loss is not kept");
        cache.set_listening(true);
        assert!(cache.get(a, at(1)).is_none(), "listening again starts empty");
        fill(&cache);
        assert_eq!(cache.status().borrow().losses, 1);
    }

    #[test]
    fn a_full_cache_makes_room_only_from_stale_entries() {
        let cache = cache(30, 2);
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let first = cache.begin_read(ids[0]).unwrap();
        cache.fill(first, Some((&[], 1)), at(0));
        let second = cache.begin_read(ids[1]).unwrap();
        cache.fill(second, Some((&[], 1)), at(20));
        assert!(cache.begin_read(ids[2]).is_none(), "both entries are fresh");
        assert!(
            cache.begin_read(ids[1]).is_some(),
            "an extension already there may read again"
        );
        let second = cache.begin_read(ids[1]).unwrap();
        cache.fill(second, Some((&[], 1)), at(40));
        let third = cache
            .begin_read(ids[2])
            .expect("the entry read at 0 is past its time to live");
        cache.fill(third, Some((&[], 1)), at(40));
        assert!(cache.get(ids[2], at(41)).is_some());
        assert!(cache.get(ids[1], at(41)).is_some());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_zero_time_to_live_keeps_nothing() {
        let cache = cache(0, 10);
        assert!(cache.begin_read(Uuid::new_v4()).is_none());
    }
}
