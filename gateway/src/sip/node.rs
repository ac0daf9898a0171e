//! The sans-IO SIP node: datagrams, lookup results and time in; datagrams, events and the
//! next deadline out. It strings the layers together in the order every request meets them:
//! abuse block, parser, server transaction (which absorbs retransmissions), screening, then
//! the registrar or the call layer. The tokio shell around it only moves bytes, runs the
//! directory and location-table queries, and sleeps until `poll_timeout`.

use super::abuse::{AbuseConfig, AbuseGuard};
use super::b2bua::{CallConfig, Calls};
use super::digest::{DigestConfig, DigestVerifier};
use super::message::{build_response, into_bytes, uri_user_host, ParseError, SipMessage};
use super::registrar::{decide_register, Binding, BindingChange, Lookup, RegisterContext, RegistrarConfig};
use super::screening::{screen_request, NodeIdentity, Screening};
use super::transaction::ClientTransaction;
use super::transaction::{
    Instant, KeyMap, ServerState, ServerTransaction, Timers, TransactionEvent, TransactionKey, Transport,
};
use chrono::{DateTime, Utc};
use domain::call::{CallEvent, Direction};
use sha2::{Digest, Sha256};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use uuid::Uuid;

/// Everything the node is configured with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub timers: Timers,
    pub registrar: RegistrarConfig,
    pub digest: DigestConfig,
    pub abuse: AbuseConfig,
    pub identity: NodeIdentity,
    /// Above this many live server transactions, new requests get 503.
    pub max_server_transactions: usize,
    /// Above this many REGISTERs waiting for the directory, new ones get 503. As many
    /// again may wait for their bindings to be saved.
    pub max_pending_lookups: usize,
    pub calls: CallConfig,
}

/// The two clocks: a monotonic one for protocol timers and the wall clock for expiries and
/// nonces, which other nodes must read the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub wall: DateTime<Utc>,
}

/// Bytes to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub transport: Transport,
    pub bytes: Vec<u8>,
}

/// Names a REGISTER waiting for its directory lookup (or for its bindings to be saved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LookupId(pub u64);

/// How the save announced by [`NodeEvent::BindingsChanged`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveOutcome {
    /// Every change is in the location table: the REGISTER gets its 200.
    Saved,
    /// The table refused a new device: the extension has as many as it may (403).
    TooManyBindings,
    /// The table could not be written (500 with Retry-After; the phone tries again).
    Failed,
}

/// What the node tells its shell.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// Look up the tenant by `domain`, the extension by `user` and the AOR's bindings, then
    /// call [`SipNode::handle_register_lookup`].
    /// `credentials`: the REGISTER carries an Authorization; without one it will only be
    /// challenged, so its bindings need not be read.
    RegisterLookup {
        id: LookupId,
        domain: String,
        user: String,
        credentials: bool,
    },
    /// Write these to the location table, then call [`SipNode::handle_bindings_saved`] with
    /// `id`; publish those whose `is_event()` is true. The REGISTER is answered only then:
    /// a phone is never told it is registered when its binding was not stored.
    BindingsChanged {
        id: LookupId,
        tenant_id: Uuid,
        extension_id: Uuid,
        changes: Vec<BindingChange>,
    },
    /// Look up the tenant by `domain` (or the trunk by `source`), the calling extension by
    /// `caller` and the route for `callee`, then call [`SipNode::handle_call_lookup`].
    CallLookup {
        id: LookupId,
        domain: String,
        caller: String,
        callee: String,
        source: SocketAddr,
        /// The INVITE carries a Proxy-Authorization; without one (and not from a trunk) it
        /// will only be challenged, so its route need not be looked up.
        credentials: bool,
    },
    /// Authorize a prepaid call against the account's available funds (reserve), then call
    /// [`SipNode::handle_call_authorization`].
    CallAuthorize {
        id: LookupId,
        tenant_id: Uuid,
        call_id: Uuid,
        account_id: Uuid,
        direction: Direction,
        callee: String,
        at: DateTime<Utc>,
    },
    /// Append these to the call's stream, in this order, after what came before.
    CallEvents {
        tenant_id: Uuid,
        call_id: Uuid,
        events: Vec<CallEvent>,
    },
    /// Too many failed authentications: this address is now blocked.
    SourceBlocked { ip: IpAddr },
    /// Run this control-protocol command on the media node, then call
    /// [`SipNode::handle_media`] with the ticket and what became of it (always, even when
    /// the media node cannot be reached).
    Media {
        ticket: super::anchoring::MediaTicket,
        call_id: Uuid,
        command: media::control::Command,
    },
}

pub(super) struct ServerEntry {
    /// Boxed: the map holds up to `max_server_transactions` entries and moves them all
    /// when it grows.
    pub(super) transaction: Box<ServerTransaction>,
    pub(super) peer: SocketAddr,
    pub(super) transport: Transport,
    /// The deadline last put in the node's timer heap for this transaction.
    pub(super) scheduled: Option<Instant>,
}

pub(super) struct ClientEntry {
    pub(super) transaction: ClientTransaction,
    pub(super) destination: SocketAddr,
    pub(super) transport: Transport,
    /// The deadline last put in the node's timer heap for this transaction.
    pub(super) scheduled: Option<Instant>,
}

/// Whose deadline a timer-heap entry is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TimerOwner {
    Server(TransactionKey),
    Client(TransactionKey),
}

/// The node's timers, earliest first. Most deadlines arrive in order (every transaction's
/// linger timer is now plus the same constant, and a loaded node makes tens of thousands a
/// second, each held 32 s): those go to a FIFO, O(1) each way. A deadline earlier than the
/// FIFO's last (a retransmission timer, say) goes to a heap. The next timer is the earlier
/// of the two fronts. Invariant: the FIFO's deadlines never decrease.
#[derive(Debug, Default)]
pub(super) struct TimerQueue {
    in_order: VecDeque<(Instant, TimerOwner)>,
    heap: BinaryHeap<Reverse<(Instant, TimerOwner)>>,
}

impl TimerQueue {
    pub(super) fn push(&mut self, at: Instant, owner: TimerOwner) {
        match self.in_order.back() {
            Some((last, _)) if at < *last => self.heap.push(Reverse((at, owner))),
            _ => self.in_order.push_back((at, owner)),
        }
    }

    /// The earliest deadline held.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let in_order = self.in_order.front().map(|(at, _)| *at);
        let heap = self.heap.peek().map(|Reverse((at, _))| *at);
        in_order.into_iter().chain(heap).min()
    }

    /// The earliest timer due at `now`, if any.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(Instant, TimerOwner)> {
        let in_order = self.in_order.front().map(|(at, _)| *at).filter(|at| *at <= now);
        let heap = self.heap.peek().map(|Reverse((at, _))| *at).filter(|at| *at <= now);
        match (in_order, heap) {
            (Some(a), Some(b)) if b < a => self.heap.pop().map(|Reverse(timer)| timer),
            (Some(_), _) => self.in_order.pop_front(),
            (None, Some(_)) => self.heap.pop().map(|Reverse(timer)| timer),
            (None, None) => None,
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.in_order.len() + self.heap.len()
    }
}

struct PendingLookup {
    key: TransactionKey,
    request: SipMessage,
    source: SocketAddr,
    /// [`to_tag_for`] the request, computed once when it arrived.
    to_tag: String,
}

/// The node's state: live server transactions, pending lookups, nonce and abuse memory.
pub struct SipNode {
    pub(super) config: NodeConfig,
    pub(super) verifier: DigestVerifier,
    pub(super) abuse: AbuseGuard,
    pub(super) server: KeyMap<ServerEntry>,
    pub(super) client: KeyMap<ClientEntry>,
    pending: HashMap<LookupId, PendingLookup>,
    /// REGISTERs decided, waiting for their bindings to be saved, with their 200.
    saving: HashMap<LookupId, (PendingLookup, rsip::Response)>,
    pub(super) next_lookup: u64,
    pub(super) transmits: VecDeque<Transmit>,
    pub(super) events: VecDeque<NodeEvent>,
    pub(super) calls: Calls,
    /// Ended calls, with when to forget them, oldest first.
    pub(super) finished: VecDeque<(Instant, Uuid)>,
    /// Every transaction's next deadline, earliest first, so finding the next one does not
    /// walk every transaction (it did, and that walk was the node's hottest loop under load).
    /// Entries go stale when a deadline moves; a stale entry only wakes the node early once.
    /// Invariant: every live transaction's current deadline is in the heap, because every
    /// change to a transaction is followed by `flush`/`flush_client`, which reschedule it.
    pub(super) timers: TimerQueue,
    /// Server transactions in the order they were created (with keys of some already gone),
    /// so a full node can drop its oldest lingering ones; see [`SipNode::evict_lingering`].
    server_order: VecDeque<TransactionKey>,
}

/// How many of the oldest server transactions a full node looks at for one to drop.
const EVICTION_SCAN: usize = 32;

impl SipNode {
    pub fn new(config: NodeConfig) -> SipNode {
        SipNode {
            verifier: DigestVerifier::new(config.digest.clone()),
            abuse: AbuseGuard::new(config.abuse.clone()),
            config,
            server: KeyMap::default(),
            client: KeyMap::default(),
            calls: Calls::default(),
            finished: VecDeque::new(),
            timers: TimerQueue::default(),
            server_order: VecDeque::new(),
            pending: HashMap::new(),
            saving: HashMap::new(),
            next_lookup: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// One datagram (or one frame cut from a stream) from `source`.
    pub fn handle_datagram(&mut self, now: Now, source: SocketAddr, transport: Transport, bytes: &[u8]) {
        self.handle_message(now, source, transport, SipMessage::parse(bytes));
    }

    /// [`SipNode::handle_datagram`] for a message the shell parsed already (off this loop).
    pub fn handle_message(
        &mut self,
        now: Now,
        source: SocketAddr,
        transport: Transport,
        message: Result<SipMessage, ParseError>,
    ) {
        if self.abuse.is_blocked(source.ip(), now.wall) {
            return;
        }
        // Unparseable input is dropped: without a valid Via there is nowhere to send a 400.
        let Ok(message) = message else {
            return;
        };
        let Some(method) = message.method() else {
            // A response belongs to one of our client transactions, or to nothing.
            if let Some(key) = TransactionKey::of(&message) {
                if let Some(entry) = self.client.get_mut(&key) {
                    let _ = entry.transaction.handle_message(now.mono, message);
                    self.flush_client(now, &key);
                }
            }
            return;
        };
        let Some(key) = TransactionKey::of(&message) else {
            // RFC 2543 peers cannot be matched to transactions; they are refused statelessly.
            if method != rsip::Method::Ack {
                self.send_stateless(source, transport, &message, 400);
            }
            return;
        };
        if let Some(entry) = self.server.get_mut(&key) {
            // A retransmission (or the ACK of a non-2xx): the transaction answers for itself.
            let _ = entry.transaction.handle_message(now.mono, message);
            self.flush(&key);
            return;
        }
        if method == rsip::Method::Ack {
            // An ACK for a 2xx has its own branch and belongs to the dialog.
            self.on_call_request(now, None, source, transport, message);
            return;
        }
        if self.server.len() >= self.config.max_server_transactions && !self.evict_lingering() {
            self.send_stateless(source, transport, &message, 503);
            return;
        }
        let to_tag = to_tag_for(&message);
        let screening = screen_request(&message, &self.config.identity, &to_tag);
        let transaction = Box::new(ServerTransaction::new(&message, transport, self.config.timers));
        self.server.insert(
            key.clone(),
            ServerEntry {
                transaction,
                peer: source,
                transport,
                scheduled: None,
            },
        );
        self.server_order.push_back(key.clone());
        if self.server_order.len() > 2 * self.server.len() + 1024 {
            // Most keys here are of transactions already gone: forget those (amortized O(1)).
            let server = &self.server;
            self.server_order.retain(|key| server.contains_key(key));
        }
        match screening {
            Screening::Respond(response) => self.respond(now, &key, response),
            Screening::Drop => {}
            Screening::Pass if method == rsip::Method::Register => {
                self.start_register(now, key.clone(), message, source, to_tag)
            }
            Screening::Pass => self.on_call_request(now, Some(key.clone()), source, transport, message),
        }
        self.flush(&key);
    }

    /// The directory's answer for a REGISTER announced by [`NodeEvent::RegisterLookup`].
    /// `bindings_settled`: see [`RegisterContext::bindings_settled`]. `nonce_random` comes
    /// from the shell's CSPRNG.
    pub fn handle_register_lookup(
        &mut self,
        now: Now,
        id: LookupId,
        lookup: Lookup,
        bindings: Vec<Binding>,
        bindings_settled: bool,
        nonce_random: [u8; 16],
    ) {
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        let source = address_text(pending.source);
        let context = RegisterContext {
            source: &source,
            now: now.wall,
            nonce_random,
            to_tag: &pending.to_tag,
            bindings_settled,
        };
        let outcome = decide_register(
            &pending.request,
            &lookup,
            &bindings,
            &mut self.verifier,
            &self.config.registrar,
            context,
        );
        if outcome.auth_failed && self.abuse.record_failure(pending.source.ip(), now.wall) {
            self.events.push_back(NodeEvent::SourceBlocked {
                ip: pending.source.ip(),
            });
        }
        if !outcome.changes.is_empty() {
            if let Lookup::Tenant {
                tenant_id,
                extension: Some(extension),
                ..
            } = &lookup
            {
                self.events.push_back(NodeEvent::BindingsChanged {
                    id,
                    tenant_id: *tenant_id,
                    extension_id: extension.extension_id,
                    changes: outcome.changes,
                });
                // Answered once saved; past the bound (a shell whose saves stopped
                // answering), answered now, as the save may still land.
                if self.saving.len() < self.config.max_pending_lookups {
                    self.saving.insert(id, (pending, outcome.response));
                    return;
                }
            }
        }
        self.respond(now, &pending.key, outcome.response);
        self.flush(&pending.key);
    }

    /// The end of the save announced by [`NodeEvent::BindingsChanged`] `id`: the REGISTER's
    /// answer leaves now (200 when saved).
    pub fn handle_bindings_saved(&mut self, now: Now, id: LookupId, outcome: SaveOutcome) {
        let Some((pending, ok)) = self.saving.remove(&id) else {
            return;
        };
        let response = match outcome {
            SaveOutcome::Saved => ok,
            SaveOutcome::TooManyBindings => build_response(&pending.request, 403, &pending.to_tag, &[]),
            SaveOutcome::Failed => {
                build_response(&pending.request, 500, &pending.to_tag, &[("Retry-After", "5".into())])
            }
        };
        self.respond(now, &pending.key, response);
        self.flush(&pending.key);
    }

    /// A response from the call layer for the server transaction `key`.
    pub fn handle_response_command(&mut self, now: Now, key: &TransactionKey, response: rsip::Response) {
        self.respond(now, key, response);
        self.flush(key);
    }

    /// Fires every timer due at `now` and forgets finished transactions.
    pub fn handle_timeout(&mut self, now: Now) {
        let mut due_server = Vec::new();
        let mut due_client = Vec::new();
        while let Some((at, owner)) = self.timers.pop_due(now.mono) {
            match owner {
                TimerOwner::Server(key) => {
                    if let Some(entry) = self.server.get_mut(&key) {
                        if entry.scheduled == Some(at) {
                            entry.scheduled = None;
                        }
                        due_server.push(key);
                    }
                }
                TimerOwner::Client(key) => {
                    if let Some(entry) = self.client.get_mut(&key) {
                        if entry.scheduled == Some(at) {
                            entry.scheduled = None;
                        }
                        due_client.push(key);
                    }
                }
            }
        }
        for key in due_server {
            if let Some(entry) = self.server.get_mut(&key) {
                if entry.transaction.poll_timeout().is_some_and(|at| at <= now.mono) {
                    entry.transaction.handle_timeout(now.mono);
                }
            }
            self.flush(&key);
        }
        for key in due_client {
            if let Some(entry) = self.client.get_mut(&key) {
                if entry.transaction.poll_timeout().is_some_and(|at| at <= now.mono) {
                    entry.transaction.handle_timeout(now.mono);
                }
            }
            self.flush_client(now, &key);
        }
        self.call_timeouts(now);
        self.forget_finished(now.mono);
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// The earliest transaction deadline on the monotonic clock.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers
            .next_deadline()
            .into_iter()
            .chain(self.calls.poll_timeout())
            .chain(self.finished.front().map(|(at, _)| *at))
            .min()
    }

    /// Calls being set up or in progress on this node.
    pub fn calls_in_progress(&self) -> usize {
        self.calls.len()
    }

    /// How many server transactions are alive (for metrics and tests).
    pub fn server_transactions(&self) -> usize {
        self.server.len()
    }

    fn start_register(
        &mut self,
        now: Now,
        key: TransactionKey,
        request: SipMessage,
        source: SocketAddr,
        to_tag: String,
    ) {
        let domain = request.request_domain();
        let user = uri_user_host(&request.to.uri).and_then(|(user, _)| user);
        let (Some(domain), Some(user)) = (domain, user) else {
            let response = build_response(&request, 400, &to_tag, &[]);
            self.respond(now, &key, response);
            return;
        };
        if self.pending.len() >= self.config.max_pending_lookups {
            let response = build_response(&request, 503, &to_tag, &[("Retry-After", "5".into())]);
            self.respond(now, &key, response);
            return;
        }
        self.next_lookup += 1;
        let id = LookupId(self.next_lookup);
        let credentials = request.header("Authorization").is_some();
        self.pending.insert(
            id,
            PendingLookup {
                key,
                request,
                source,
                to_tag,
            },
        );
        self.events.push_back(NodeEvent::RegisterLookup {
            id,
            domain,
            user,
            credentials,
        });
    }

    /// A full node drops its oldest transaction that only lingers to absorb retransmissions
    /// (a non-INVITE one that has answered, Timer J; an INVITE one whose error response was
    /// acknowledged, Timer I) rather than refuse new requests with 503. Such a transaction
    /// has nothing left to do but answer a retransmission of its request; the oldest are
    /// the least likely to see one. One still at work is never dropped. Returns whether
    /// room was made.
    fn evict_lingering(&mut self) -> bool {
        for _ in 0..EVICTION_SCAN {
            let Some(key) = self.server_order.pop_front() else {
                return false;
            };
            let Some(entry) = self.server.get(&key) else {
                continue;
            };
            let lingering = match entry.transaction.state() {
                ServerState::Completed => key.method() != "INVITE",
                ServerState::Confirmed | ServerState::Terminated => true,
                ServerState::Trying | ServerState::Proceeding | ServerState::Accepted => false,
            };
            if lingering {
                self.server.remove(&key);
                return true;
            }
            self.server_order.push_back(key);
        }
        false
    }

    fn respond(&mut self, now: Now, key: &TransactionKey, response: rsip::Response) {
        let Some(entry) = self.server.get_mut(key) else {
            return;
        };
        // Rendered once, not re-parsed: every response starts from `build_response`, and the
        // fuzz entry point checks that its output for any accepted request parses.
        let code = response.status_code.code();
        let _ = entry
            .transaction
            .handle_tu_response_bytes(now.mono, code, into_bytes(response.into()));
    }

    /// Moves a client transaction's output into the node's queues and its responses and
    /// timeouts to the call layer; forgets it once terminated.
    pub(super) fn flush_client(&mut self, now: Now, key: &TransactionKey) {
        let Some(entry) = self.client.get_mut(key) else {
            return;
        };
        while let Some(bytes) = entry.transaction.poll_transmit() {
            self.transmits.push_back(Transmit {
                destination: entry.destination,
                transport: entry.transport,
                bytes,
            });
        }
        let events: Vec<TransactionEvent> = std::iter::from_fn(|| entry.transaction.poll_event()).collect();
        let mut terminated = false;
        for event in events {
            match event {
                TransactionEvent::Response(response) => self.on_client_response(now, key, *response),
                TransactionEvent::TimedOut => self.on_client_timeout(now, key),
                TransactionEvent::Terminated => terminated = true,
            }
        }
        if terminated {
            self.client.remove(key);
            self.calls.purposes.remove(key);
        } else if let Some(entry) = self.client.get_mut(key) {
            let next = entry.transaction.poll_timeout();
            if let Some(at) = next.filter(|at| entry.scheduled != Some(*at)) {
                entry.scheduled = Some(at);
                self.timers.push(at, TimerOwner::Client(key.clone()));
            }
        }
    }

    /// Moves a transaction's output into the node's queues and forgets it once terminated.
    pub(super) fn flush(&mut self, key: &TransactionKey) {
        let Some(entry) = self.server.get_mut(key) else {
            return;
        };
        while let Some(bytes) = entry.transaction.poll_transmit() {
            self.transmits.push_back(Transmit {
                destination: entry.peer,
                transport: entry.transport,
                bytes,
            });
        }
        let mut terminated = false;
        while let Some(event) = entry.transaction.poll_event() {
            terminated |= matches!(event, TransactionEvent::Terminated);
        }
        if terminated {
            self.server.remove(key);
            return;
        }
        if let Some(at) = entry
            .transaction
            .poll_timeout()
            .filter(|at| entry.scheduled != Some(*at))
        {
            entry.scheduled = Some(at);
            self.timers.push(at, TimerOwner::Server(key.clone()));
        }
    }

    fn send_stateless(&mut self, destination: SocketAddr, transport: Transport, request: &SipMessage, code: u16) {
        let response = build_response(request, code, &to_tag_for(request), &[]);
        self.transmits.push_back(Transmit {
            destination,
            transport,
            bytes: into_bytes(response.into()),
        });
    }
}

/// A To-tag derived from the request, so every retransmission and every node that answers
/// the same request uses the same tag.
/// `a.b.c.d:port` (or `[v6]:port`), as `SocketAddr`'s `Display` writes it; IPv4 without the
/// formatting machinery, since every REGISTER stores its source.
pub(super) fn address_text(address: SocketAddr) -> String {
    let SocketAddr::V4(v4) = address else {
        return address.to_string();
    };
    let mut out = Vec::with_capacity(21);
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        super::message::write_decimal(&mut out, u64::from(octet));
    }
    out.push(b':');
    super::message::write_decimal(&mut out, u64::from(v4.port()));
    // Digits, dots and a colon.
    String::from_utf8(out).unwrap_or_default()
}

pub(super) fn to_tag_for(request: &SipMessage) -> String {
    let mut hash = Sha256::new();
    hash.update(request.call_id.as_bytes());
    hash.update(b"\0");
    hash.update(request.from.tag.as_deref().unwrap_or("").as_bytes());
    hash.update(b"\0");
    hash.update(request.branch().unwrap_or("").as_bytes());
    // A SHA-256 digest is 32 bytes, so the first 6 always exist.
    super::digest::hex_lower(&hash.finalize()[..6])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        /// Whatever order deadlines are pushed in, and however pops interleave with pushes,
        /// timers come out earliest first, each once, exactly when due.
        #[test]
        fn the_timer_queue_yields_every_deadline_in_order_once(
            steps in proptest::collection::vec((0u64..40_000, 0u64..3_000, any::<bool>()), 1..200)
        ) {
            let mut queue = TimerQueue::default();
            let mut now = Duration::ZERO;
            let mut pushed = Vec::new();
            let mut popped = 0usize;
            for (n, (offset_ms, advance_ms, pop)) in steps.iter().enumerate() {
                let at = now + Duration::from_millis(*offset_ms);
                let owner = TimerOwner::Server(TransactionKey::new(&format!("z9hG4bK{n}"), "h", "REGISTER"));
                queue.push(at, owner.clone());
                pushed.push((at, owner));
                if *pop {
                    now += Duration::from_millis(*advance_ms);
                    let mut last = Duration::ZERO;
                    while let Some((at, owner)) = queue.pop_due(now) {
                        prop_assert!(at <= now && at >= last);
                        last = at;
                        let index = pushed.iter().position(|(a, o)| *a == at && *o == owner);
                        prop_assert!(index.is_some());
                        popped += 1;
                    }
                    prop_assert!(queue.next_deadline().is_none_or(|next| next > now));
                }
            }
            now += Duration::from_secs(3600);
            while queue.pop_due(now).is_some() {
                popped += 1;
            }
            prop_assert_eq!(popped, pushed.len());
            prop_assert_eq!(queue.len(), 0);
        }
    }

    use super::*;
    use crate::sip::digest::compute_response;
    use crate::sip::registrar::ExtensionRecord;
    use chrono::TimeZone;
    use domain::digest::Ha1;
    use std::time::Duration;

    const DOMAIN: &str = "acme.example.com";

    fn config() -> NodeConfig {
        NodeConfig {
            timers: Timers::default(),
            registrar: RegistrarConfig::default(),
            digest: DigestConfig {
                secret: b"s".to_vec(),
                nonce_lifetime_secs: 300,
                max_tracked_nonces: 1000,
                prefer_sha256: true,
                offer_sha256: true,
            },
            abuse: AbuseConfig {
                max_failures: 3,
                window: chrono::Duration::seconds(60),
                block_for: chrono::Duration::seconds(600),
                max_tracked_sources: 100,
            },
            identity: NodeIdentity {
                sent_by: vec!["sip1.example.net:5060".into()],
                branch_prefix: "z9hG4bK-ll-".into(),
            },
            max_server_transactions: 100,
            max_pending_lookups: 100,
            calls: crate::sip::b2bua::CallConfig::default(),
        }
    }

    fn now(ms: u64) -> Now {
        Now {
            mono: Duration::from_millis(ms),
            wall: Utc.timestamp_opt(1_700_000_000, 0).single().unwrap() + chrono::Duration::milliseconds(ms as i64),
        }
    }

    fn phone() -> SocketAddr {
        "192.0.2.10:5060".parse().unwrap()
    }

    fn lookup() -> Lookup {
        Lookup::Tenant {
            tenant_id: Uuid::from_u128(1),
            sip_domain: DOMAIN.into(),
            suspended: false,
            extension: Some(ExtensionRecord {
                extension_id: Uuid::from_u128(2),
                number: "1001".into(),
                ha1: Ha1::compute("1001", DOMAIN, "pw"),
                enabled: true,
            }),
        }
    }

    fn register(branch: &str, cseq: u32, auth: Option<(&str, &str)>) -> Vec<u8> {
        let authorization = match auth {
            Some((nonce, password)) => {
                let ha1 = Ha1::compute("1001", DOMAIN, password);
                let uri = "sip:acme.example.com";
                let response = compute_response(true, &ha1.sha256, nonce, "00000001", "c", "auth", "REGISTER", uri);
                format!(
                    "Authorization: Digest username=\"1001\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", uri=\"{uri}\", \
response=\"{response}\", algorithm=SHA-256, qop=auth, nc=00000001, cnonce=\"c\"\r\n"
                )
            }
            None => String::new(),
        };
        format!(
            "REGISTER sip:acme.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch={branch}\r\n\
Max-Forwards: 70\r\nTo: <sip:1001@acme.example.com>\r\nFrom: <sip:1001@acme.example.com>;tag=f\r\n\
Call-ID: node-reg\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:1001@192.0.2.10>\r\n{authorization}Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn transmitted(node: &mut SipNode) -> Vec<SipMessage> {
        std::iter::from_fn(|| node.poll_transmit())
            .map(|t| SipMessage::parse(&t.bytes).unwrap())
            .collect()
    }

    fn lookup_id(node: &mut SipNode) -> LookupId {
        match node.poll_event() {
            Some(NodeEvent::RegisterLookup { id, domain, user, .. }) => {
                assert_eq!((domain.as_str(), user.as_str()), (DOMAIN, "1001"));
                id
            }
            other => panic!("expected a lookup, got {other:?}"),
        }
    }

    fn nonce(response: &SipMessage) -> String {
        let value = response.header("WWW-Authenticate").unwrap();
        let start = value.find("nonce=\"").unwrap() + 7;
        value[start..].split('"').next().unwrap().to_string()
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for address in [
            "127.0.0.1:5060",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.2.30.4:9",
            "[::1]:5060",
        ] {
            let address: SocketAddr = address.parse().unwrap();
            assert_eq!(address_text(address), address.to_string());
        }
    }

    #[test]
    fn register_challenge_retransmission_is_absorbed_then_registers() {
        let mut node = SipNode::new(config());
        node.handle_datagram(now(0), phone(), Transport::Unreliable, &register("z9hG4bK1", 1, None));
        let id = lookup_id(&mut node);
        node.handle_register_lookup(now(5), id, lookup(), vec![], false, [1; 16]);
        let challenge = transmitted(&mut node);
        assert_eq!(challenge[0].status(), Some(401));
        // The phone did not hear us and retransmits: the same 401 again, and no new lookup.
        node.handle_datagram(now(500), phone(), Transport::Unreliable, &register("z9hG4bK1", 1, None));
        assert_eq!(
            transmitted(&mut node)[0].header("WWW-Authenticate"),
            challenge[0].header("WWW-Authenticate")
        );
        assert!(node.poll_event().is_none());

        let nonce = nonce(&challenge[0]);
        node.handle_datagram(
            now(600),
            phone(),
            Transport::Unreliable,
            &register("z9hG4bK2", 2, Some((&nonce, "pw"))),
        );
        let id = lookup_id(&mut node);
        node.handle_register_lookup(now(605), id, lookup(), vec![], false, [2; 16]);
        assert!(node.poll_transmit().is_none(), "no answer before the binding is saved");
        match node.poll_event() {
            Some(NodeEvent::BindingsChanged {
                id: save,
                tenant_id,
                changes,
                ..
            }) => {
                assert_eq!(save, id);
                assert_eq!(tenant_id, Uuid::from_u128(1));
                assert!(matches!(&changes[..], [BindingChange::Created(_)]));
            }
            other => panic!("expected binding changes, got {other:?}"),
        }
        // A retransmission while the save runs is absorbed, unanswered.
        node.handle_datagram(
            now(700),
            phone(),
            Transport::Unreliable,
            &register("z9hG4bK2", 2, Some((&nonce, "pw"))),
        );
        assert!(node.poll_transmit().is_none() && node.poll_event().is_none());
        node.handle_bindings_saved(now(710), id, SaveOutcome::Saved);
        assert_eq!(transmitted(&mut node)[0].status(), Some(200));
        node.handle_bindings_saved(now(711), id, SaveOutcome::Saved);
        assert!(node.poll_transmit().is_none(), "a save ends once");
        // Timer J ends both transactions 64*T1 after their final responses.
        assert_eq!(node.server_transactions(), 2);
        node.handle_timeout(now(710 + 32_000));
        assert_eq!(node.server_transactions(), 0);
        assert_eq!(node.poll_timeout(), None);
    }

    #[test]
    fn a_full_node_drops_its_oldest_answered_transaction_not_one_at_work() {
        let mut node = SipNode::new(NodeConfig {
            max_server_transactions: 3,
            max_pending_lookups: 10,
            ..config()
        });
        // Two REGISTERs wait for their lookups (at work); a third is answered (lingering).
        for branch in ["z9hG4bKwork1", "z9hG4bKwork2"] {
            node.handle_datagram(now(0), phone(), Transport::Unreliable, &register(branch, 1, None));
            lookup_id(&mut node);
        }
        node.handle_datagram(
            now(1),
            phone(),
            Transport::Unreliable,
            &register("z9hG4bKdone", 1, None),
        );
        let id = lookup_id(&mut node);
        node.handle_register_lookup(now(2), id, lookup(), vec![], false, [3; 16]);
        assert_eq!(transmitted(&mut node)[0].status(), Some(401));
        assert_eq!(node.server_transactions(), 3);

        // Full: a new REGISTER takes the answered one's place and is looked up, not refused.
        node.handle_datagram(now(3), phone(), Transport::Unreliable, &register("z9hG4bKnew", 1, None));
        lookup_id(&mut node);
        assert!(transmitted(&mut node).is_empty(), "no 503");
        assert_eq!(node.server_transactions(), 3);
        // A retransmission of the dropped request is now a new transaction: it needs a lookup.
        // Only transactions at work remain, so it is refused with 503 and nothing is dropped.
        node.handle_datagram(
            now(4),
            phone(),
            Transport::Unreliable,
            &register("z9hG4bKdone", 1, None),
        );
        assert!(node.poll_event().is_none());
        assert_eq!(transmitted(&mut node)[0].status(), Some(503));
        assert_eq!(node.server_transactions(), 3);
    }

    /// Registers with a fresh nonce and returns the save the node asks for.
    fn register_until_saved(node: &mut SipNode, branch: &str, at: u64) -> LookupId {
        node.handle_datagram(
            now(at),
            phone(),
            Transport::Unreliable,
            &register(&format!("{branch}a"), 1, None),
        );
        let id = lookup_id(node);
        node.handle_register_lookup(now(at), id, lookup(), vec![], false, [at as u8; 16]);
        let nonce = nonce(&transmitted(node)[0]);
        node.handle_datagram(
            now(at + 1),
            phone(),
            Transport::Unreliable,
            &register(&format!("{branch}b"), 2, Some((&nonce, "pw"))),
        );
        let id = lookup_id(node);
        node.handle_register_lookup(now(at + 1), id, lookup(), vec![], false, [at as u8 + 1; 16]);
        assert!(node.poll_transmit().is_none());
        match node.poll_event() {
            Some(NodeEvent::BindingsChanged { id: save, .. }) => save,
            other => panic!("expected binding changes, got {other:?}"),
        }
    }

    #[test]
    fn a_register_whose_save_fails_is_not_told_it_is_registered() {
        let mut node = SipNode::new(config());
        let full = register_until_saved(&mut node, "z9hG4bKf", 0);
        node.handle_bindings_saved(now(10), full, SaveOutcome::TooManyBindings);
        assert_eq!(transmitted(&mut node)[0].status(), Some(403));
        let failed = register_until_saved(&mut node, "z9hG4bKg", 20);
        node.handle_bindings_saved(now(30), failed, SaveOutcome::Failed);
        let answer = transmitted(&mut node).remove(0);
        assert_eq!(answer.status(), Some(500));
        assert_eq!(answer.header("Retry-After"), Some("5"));
    }

    #[test]
    fn repeated_failures_block_the_source() {
        let mut node = SipNode::new(config());
        let mut cseq = 1;
        for round in 0..3 {
            node.handle_datagram(
                now(round * 10),
                phone(),
                Transport::Unreliable,
                &register(&format!("z9hG4bKa{cseq}"), cseq, None),
            );
            let id = lookup_id(&mut node);
            node.handle_register_lookup(now(round * 10), id, lookup(), vec![], false, [round as u8; 16]);
            let nonce = nonce(&transmitted(&mut node)[0]);
            cseq += 1;
            node.handle_datagram(
                now(round * 10 + 1),
                phone(),
                Transport::Unreliable,
                &register(&format!("z9hG4bKb{cseq}"), cseq, Some((&nonce, "wrong"))),
            );
            let id = lookup_id(&mut node);
            node.handle_register_lookup(
                now(round * 10 + 1),
                id,
                lookup(),
                vec![],
                false,
                [round as u8 + 100; 16],
            );
            assert_eq!(transmitted(&mut node)[0].status(), Some(401));
            cseq += 1;
        }
        assert!(matches!(node.poll_event(), Some(NodeEvent::SourceBlocked { .. })));
        node.handle_datagram(
            now(100),
            phone(),
            Transport::Unreliable,
            &register("z9hG4bKz", 99, None),
        );
        assert!(
            node.poll_transmit().is_none() && node.poll_event().is_none(),
            "blocked sources are dropped"
        );
        let other: SocketAddr = "198.51.100.1:5060".parse().unwrap();
        node.handle_datagram(now(100), other, Transport::Unreliable, &register("z9hG4bKy", 1, None));
        assert!(node.poll_event().is_some(), "other sources are still served");
    }

    #[test]
    fn options_is_answered_and_invite_reaches_the_call_layer_after_a_100() {
        let mut node = SipNode::new(config());
        let options = b"OPTIONS sip:acme.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKo\r\n\
From: <sip:1001@acme.example.com>;tag=f\r\nTo: <sip:acme.example.com>\r\nCall-ID: o\r\nCSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n";
        node.handle_datagram(now(0), phone(), Transport::Reliable, options);
        let sent = std::iter::from_fn(|| node.poll_transmit()).collect::<Vec<_>>();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].destination, phone());
        assert_eq!(SipMessage::parse(&sent[0].bytes).unwrap().status(), Some(200));
        assert_eq!(node.server_transactions(), 0, "Timer J is zero over TCP");

        let invite = String::from_utf8(options.to_vec())
            .unwrap()
            .replace("OPTIONS sip:", "INVITE sip:1002@")
            .replace("OPTIONS", "INVITE");
        node.handle_datagram(now(0), phone(), Transport::Unreliable, invite.as_bytes());
        assert_eq!(transmitted(&mut node)[0].status(), Some(100));
        let Some(NodeEvent::CallLookup { id, domain, callee, .. }) = node.poll_event() else {
            panic!("the INVITE must reach the call layer");
        };
        assert_eq!((domain.as_str(), callee.as_str()), ("acme.example.com", "1002"));
        node.handle_call_lookup(now(10), id, crate::sip::b2bua::CallLookup::UnknownDomain, [0; 16]);
        assert_eq!(transmitted(&mut node)[0].status(), Some(404));
    }

    #[test]
    fn garbage_and_rfc_2543_requests_never_panic() {
        let mut node = SipNode::new(config());
        node.handle_datagram(
            now(0),
            phone(),
            Transport::Unreliable,
            b"\x00\xffINVITE garbage\r\n\r\n",
        );
        assert!(node.poll_transmit().is_none());
        let old = String::from_utf8(register("2543-style", 1, None)).unwrap();
        node.handle_datagram(now(0), phone(), Transport::Unreliable, old.as_bytes());
        assert_eq!(transmitted(&mut node)[0].status(), Some(400));
    }

    mod calls {
        //! The call layer on a virtual clock: forking with the first answer winning, and the
        //! tenant's call limit.

        use super::*;
        use crate::sip::b2bua::{CallLookup, ContactTarget, Route, TenantCall};
        use domain::call::CallEvent;

        fn invite(branch: &str, call_id: &str, cseq: u32, auth: Option<&str>) -> Vec<u8> {
            let authorization = match auth {
                Some(nonce) => {
                    let ha1 = Ha1::compute("1001", DOMAIN, "pw");
                    let uri = "sip:1002@acme.example.com";
                    let response = compute_response(true, &ha1.sha256, nonce, "00000001", "c", "auth", "INVITE", uri);
                    format!(
                        "Proxy-Authorization: Digest username=\"1001\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", \
uri=\"{uri}\", response=\"{response}\", algorithm=SHA-256, qop=auth, nc=00000001, cnonce=\"c\"\r\n"
                    )
                }
                None => String::new(),
            };
            let sdp =
                "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
            format!(
                "INVITE sip:1002@acme.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch={branch}\r\n\
Max-Forwards: 70\r\nFrom: \"Alice\" <sip:1001@acme.example.com>;tag=a\r\nTo: <sip:1002@acme.example.com>\r\n\
Call-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:1001@192.0.2.10>\r\n{authorization}\
Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                sdp.len()
            )
            .into_bytes()
        }

        fn contact(n: u8) -> ContactTarget {
            ContactTarget {
                uri: format!("sip:1002@192.0.2.{n}:5060"),
                destination: SocketAddr::from(([192, 0, 2, n], 5060)),
                transport: Transport::Unreliable,
            }
        }

        fn lookup(contacts: Vec<ContactTarget>, call_limit: Option<u32>) -> CallLookup {
            let Lookup::Tenant { extension, .. } = super::lookup() else {
                unreachable!()
            };
            CallLookup::Tenant(Box::new(TenantCall {
                tenant_id: Uuid::from_u128(1),
                sip_domain: DOMAIN.into(),
                suspended: false,
                caller: extension,
                from_trunk: None,
                did: None,
                route: Route::Extension {
                    extension_id: Uuid::from_u128(3),
                    number: "1002".into(),
                    contacts,
                },
                call_limit,
                account: None,
            }))
        }

        fn call_lookup_id(node: &mut SipNode) -> LookupId {
            match node.poll_event() {
                Some(NodeEvent::CallLookup { id, callee, .. }) => {
                    assert_eq!(callee, "1002");
                    id
                }
                other => panic!("expected a call lookup, got {other:?}"),
            }
        }

        /// Challenge, then the authenticated INVITE; returns what the node sent after it.
        fn place_call(node: &mut SipNode, call_id: &str, lookup: impl Fn() -> CallLookup) -> Vec<Transmit> {
            node.handle_datagram(
                now(0),
                phone(),
                Transport::Unreliable,
                &invite(&format!("z9hG4bK{call_id}1"), call_id, 1, None),
            );
            let id = call_lookup_id(node);
            let seed = call_id.len() as u8;
            node.handle_call_lookup(now(1), id, lookup(), [seed; 16]);
            let challenge = transmitted(node).into_iter().find(|m| m.status() == Some(407)).unwrap();
            let value = challenge.header("Proxy-Authenticate").unwrap();
            let start = value.find("nonce=\"").unwrap() + 7;
            let nonce = value[start..].split('"').next().unwrap().to_string();
            assert!(
                node.poll_event().is_none(),
                "a challenged INVITE leaves nothing in the log"
            );
            node.handle_datagram(
                now(2),
                phone(),
                Transport::Unreliable,
                &invite(&format!("z9hG4bK{call_id}2"), call_id, 2, Some(&nonce)),
            );
            let id = call_lookup_id(node);
            node.handle_call_lookup(now(3), id, lookup(), [seed + 100; 16]);
            std::iter::from_fn(|| node.poll_transmit()).collect()
        }

        fn call_events(node: &mut SipNode) -> Vec<&'static str> {
            let mut names = Vec::new();
            while let Some(event) = node.poll_event() {
                if let NodeEvent::CallEvents { events, .. } = event {
                    names.extend(events.iter().map(|e| match e {
                        CallEvent::CallInitiated(_) => "initiated",
                        CallEvent::CallAuthorized(_) => "authorized",
                        CallEvent::CallRejected(_) => "rejected",
                        CallEvent::LegCreated(_) => "leg",
                        CallEvent::CallRinging(_) => "ringing",
                        CallEvent::CallAnswered(_) => "answered",
                        CallEvent::CallHeld(_) => "held",
                        CallEvent::CallResumed(_) => "resumed",
                        CallEvent::CallTransferred(_) => "transferred",
                        CallEvent::CallEnded(_) => "ended",
                        CallEvent::CallHangupRequested(_) => "hangup requested",
                    }));
                }
            }
            names
        }

        /// A response from a contact to one of the node's INVITEs.
        fn answer(request: &SipMessage, code: u16, tag: &str) -> Vec<u8> {
            let mut response = build_response(request, code, tag, &[]);
            if code == 200 {
                response.headers.push(rsip::Header::Other(
                    "Contact".into(),
                    format!("<{}>", request.request_uri.clone().unwrap()),
                ));
            }
            into_bytes(response.into())
        }

        #[test]
        fn every_contact_rings_and_the_first_answer_wins() {
            let mut node = SipNode::new(config());
            let sent = place_call(&mut node, "fork", || lookup(vec![contact(21), contact(22)], None));
            let invites: Vec<(SocketAddr, SipMessage)> = sent
                .iter()
                .filter_map(|t| {
                    let m = SipMessage::parse(&t.bytes).ok()?;
                    (m.method() == Some(rsip::Method::Invite)).then_some((t.destination, m))
                })
                .collect();
            assert_eq!(
                invites.iter().map(|(d, _)| *d).collect::<Vec<_>>(),
                [contact(21).destination, contact(22).destination],
                "both contacts are called at once"
            );
            assert!(
                invites.iter().all(|(_, m)| m.body.starts_with(b"v=0")),
                "the SDP passes through"
            );
            assert_eq!(call_events(&mut node), ["initiated", "authorized", "leg", "leg"]);

            // The first rings, the second answers.
            node.handle_datagram(
                now(10),
                contact(21).destination,
                Transport::Unreliable,
                &answer(&invites[0].1, 180, "r1"),
            );
            let to_caller = transmitted(&mut node);
            assert_eq!(
                to_caller.iter().filter_map(SipMessage::status).collect::<Vec<_>>(),
                [180]
            );
            node.handle_datagram(
                now(20),
                contact(22).destination,
                Transport::Unreliable,
                &answer(&invites[1].1, 200, "r2"),
            );
            let out: Vec<Transmit> = std::iter::from_fn(|| node.poll_transmit()).collect();
            let parsed: Vec<(SocketAddr, SipMessage)> = out
                .iter()
                .map(|t| (t.destination, SipMessage::parse(&t.bytes).unwrap()))
                .collect();
            let kinds: Vec<(SocketAddr, String)> = parsed
                .iter()
                .map(|(d, m)| {
                    let kind = match (m.method(), m.status()) {
                        (Some(method), _) => method.to_string(),
                        (None, Some(code)) => code.to_string(),
                        _ => unreachable!(),
                    };
                    (*d, kind)
                })
                .collect();
            assert!(kinds.contains(&(contact(22).destination, "ACK".into())), "{kinds:?}");
            assert!(kinds.contains(&(phone(), "200".into())), "{kinds:?}");
            assert!(
                kinds.contains(&(contact(21).destination, "CANCEL".into())),
                "the loser is cancelled: {kinds:?}"
            );
            assert_eq!(call_events(&mut node), ["ringing", "answered"]);
            assert_eq!(node.active_calls(Uuid::from_u128(1)), 1);
        }

        #[test]
        fn the_tenant_call_limit_refuses_the_next_call_with_503() {
            let mut node = SipNode::new(config());
            place_call(&mut node, "first", || lookup(vec![contact(21)], Some(1)));
            assert_eq!(call_events(&mut node), ["initiated", "authorized", "leg"]);
            let sent = place_call(&mut node, "second-call", || lookup(vec![contact(21)], Some(1)));
            let statuses: Vec<u16> = sent
                .iter()
                .filter_map(|t| SipMessage::parse(&t.bytes).ok()?.status())
                .collect();
            assert!(statuses.contains(&503), "{statuses:?}");
            assert_eq!(call_events(&mut node), ["initiated", "rejected"]);
            assert_eq!(
                node.active_calls(Uuid::from_u128(1)),
                1,
                "the refused call does not count"
            );
        }
    }
}
