//! The SIP role's tokio shell around the sans-IO `SipNode`: bytes from the transports in,
//! directory and location lookups out to Postgres, registration events into the log through
//! the batching writer, and a sleep until the node's next deadline. No protocol decision
//! is made here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use commands::batching::{BatchOptions, BatchingWriter};
use commands::{EventStore, Expected, Metadata, NewEvent, StreamWrite};
use domain::registration::{
    self, DeviceRegistered, DeviceRegistrationChanged, DeviceUnregistered, RegistrationEvent, UnregisterReason,
};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::binding_cache::{BindingCache, CacheConfig};
use crate::call_directory::CallBilling;
use crate::directory_cache::DirectoryCache;
use crate::location::{self, Location, Saved};
use crate::sip::abuse::AbuseConfig;
use crate::sip::b2bua::{Authorization, CallConfig, CallLookup};
use crate::sip::digest::DigestConfig;
use crate::sip::node::{LookupId, NodeConfig, NodeEvent, Now, SaveOutcome, SipNode};
use crate::sip::registrar::{self, BindingChange, Lookup, RegistrarConfig, RemovalReason};
use crate::sip::screening::NodeIdentity;
use crate::sip::transaction::{Timers, Transport};
use crate::transport::{Protocol, TransportOptions, Transports};
use commands::CommandHandler;
use domain::call::CallEvent;
use domain::decider::Aggregate;
use domain::security::{SecurityEvent, SourceBlocked};

#[derive(Debug, Clone)]
pub struct SipConfig {
    pub bind: SocketAddr,
    pub node_id: String,
    /// Signs digest nonces; every SIP node of a deployment must share it.
    pub secret: Vec<u8>,
    /// Offer SHA-256 digest before MD5 (see `DigestConfig::prefer_sha256`).
    pub prefer_sha256: bool,
    /// Offer SHA-256 at all (see `DigestConfig::offer_sha256`).
    pub offer_sha256: bool,
    /// `host:port` for Via and Contact; `None`: the bound address (or the outward one).
    pub advertise: Option<String>,
    /// How long a call may ring unanswered.
    pub no_answer: Duration,
    /// How long the node trusts a directory answer (tenant, extension) before asking again.
    pub directory_ttl: Duration,
    /// How long the node answers an unchanged REGISTER from the bindings it last read
    /// instead of reading them again (see `binding_cache`); zero reads every time.
    pub location_cache_ttl: Duration,
    pub registrar: RegistrarConfig,
    pub abuse: AbuseConfig,
    /// The media node's control address: every call's media is anchored there. `None`:
    /// SDP passes through and phones send RTP to each other.
    pub media_control: Option<SocketAddr>,
}

/// A running SIP role.
pub struct SipService {
    pub local_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// What a directory lookup task hands back to the node loop.
struct LookupDone {
    id: LookupId,
    lookup: Lookup,
    bindings: Vec<registrar::Binding>,
    /// The extension and the [`SaveTracker`] generation when its bindings were read, if no
    /// save of it was in flight then.
    read_at: Option<(Uuid, u64)>,
}

/// Which extensions have a binding save in flight from this node, and when each last began
/// one, so that bindings read before a save landed are not taken for the table's state
/// ([`RegisterContext::bindings_settled`]). Saves begin in the node loop's turn (so a
/// REGISTER handled after another's in the loop sees its save begun) and end in their tasks.
#[derive(Default)]
struct SaveTracker {
    generation: u64,
    /// Per extension: the generation its last save began at, and how many are in flight.
    /// Bounded by the extensions that registered through this node.
    saves: HashMap<Uuid, (u64, u32)>,
}

impl SaveTracker {
    fn begin(&mut self, extension_id: Uuid) {
        self.generation += 1;
        let entry = self.saves.entry(extension_id).or_default();
        *entry = (self.generation, entry.1 + 1);
    }

    fn end(&mut self, extension_id: Uuid) {
        if let Some(entry) = self.saves.get_mut(&extension_id) {
            entry.1 = entry.1.saturating_sub(1);
        }
    }

    /// The generation to read at, or `None` while a save of the extension is in flight.
    fn read_at(&self, extension_id: Uuid) -> Option<u64> {
        match self.saves.get(&extension_id) {
            Some((_, in_flight)) if *in_flight > 0 => None,
            _ => Some(self.generation),
        }
    }

    /// Whether bindings read at `generation` are still the table's state as far as this
    /// node's saves go: none in flight, none begun since.
    fn settled(&self, extension_id: Uuid, generation: u64) -> bool {
        match self.saves.get(&extension_id) {
            None => true,
            Some((began, in_flight)) => *in_flight == 0 && *began <= generation,
        }
    }
}

impl SipService {
    pub async fn start(
        store: EventStore,
        pool: PgPool,
        config: SipConfig,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<SipService> {
        let (transports, inbound) = Transports::bind(config.bind, TransportOptions::default()).await?;
        let local_addr = transports.local_addr();
        let advertise = config.advertise.clone().unwrap_or_else(|| advertised(local_addr));
        let mut sent_by = vec![local_addr.to_string().to_ascii_lowercase()];
        if !sent_by.contains(&advertise.to_ascii_lowercase()) {
            sent_by.push(advertise.to_ascii_lowercase());
        }
        let node = SipNode::new(NodeConfig {
            timers: Timers::default(),
            registrar: config.registrar.clone(),
            digest: DigestConfig {
                secret: config.secret.clone(),
                nonce_lifetime_secs: 300,
                max_tracked_nonces: 100_000,
                prefer_sha256: config.prefer_sha256,
                offer_sha256: config.offer_sha256,
            },
            abuse: config.abuse.clone(),
            identity: NodeIdentity {
                sent_by,
                branch_prefix: format!(
                    "ll{}",
                    &config
                        .node_id
                        .chars()
                        .filter(char::is_ascii_alphanumeric)
                        .collect::<String>()
                ),
            },
            // Completed transactions linger for Timer J (32 s over UDP) to absorb retransmissions,
            // so at 3,000 REGISTERs/s (two transactions each) about 200,000 are alive; a lower
            // bound turned a busy minute into a 503 storm. About 3 KB each at most.
            max_server_transactions: 250_000,
            max_pending_lookups: 10_000,
            calls: CallConfig {
                advertise,
                no_answer: config.no_answer,
                max_calls: 20_000,
                anchor_media: config.media_control.is_some(),
            },
        });
        let (hangup_tx, hangups) = mpsc::channel(1024);
        crate::sip::hangup::follow(store.clone(), hangup_tx)
            .await
            .map_err(std::io::Error::other)?;
        let (media, media_results, media_events) = match config.media_control {
            Some(addr) => {
                let (link, results, events) = crate::media_link::MediaLink::spawn(addr);
                (Some(link), results, events)
            }
            None => (None, mpsc::channel(1).1, mpsc::channel(1).1),
        };
        let (pool_for_billing, store_for_billing) = (pool.clone(), store.clone());
        let writer = BatchingWriter::spawn(store, BatchOptions::default());
        let calls = spawn_call_appender(writer.clone(), config.node_id.clone());
        let shell = Shell {
            udp_out: spawn_udp_sender(transports.clone()),
            saves: Arc::default(),
            transports,
            location: Location::new(pool.clone()),
            bindings: BindingCache::start(
                pool.clone(),
                CacheConfig {
                    ttl: chrono::Duration::from_std(config.location_cache_ttl).unwrap_or(chrono::Duration::zero()),
                    max_entries: 200_000,
                },
            ),
            pool,
            writer,
            calls,
            abuse: config.abuse.clone(),
            directory: DirectoryCache::new(config.directory_ttl, 200_000),
            billing: CallBilling::new(
                pool_for_billing,
                CommandHandler::new(store_for_billing),
                config.node_id.clone(),
            ),
            node_id: config.node_id.clone(),
            media,
        };
        tokio::spawn(shell.clone().purge_loop(shutdown.clone()));
        let task = tokio::spawn(shell.run(node, inbound, hangups, (media_results, media_events), shutdown));
        Ok(SipService { local_addr, task })
    }
}

#[derive(Clone)]
struct Shell {
    transports: Transports,
    /// The node's UDP answers, a turn's worth at a time, to [`spawn_udp_sender`]'s task.
    udp_out: mpsc::Sender<Vec<crate::sip::node::Transmit>>,
    saves: Arc<Mutex<SaveTracker>>,
    location: Location,
    /// The bindings last read, while the table is known not to have changed since.
    bindings: BindingCache,
    pool: PgPool,
    writer: BatchingWriter,
    /// Call events, in order, to the batching writer.
    calls: mpsc::Sender<StreamWrite>,
    billing: CallBilling,
    directory: DirectoryCache,
    abuse: AbuseConfig,
    node_id: String,
    media: Option<crate::media_link::MediaLink>,
}

/// What a call lookup or billing task hands back to the node loop.
enum CallDone {
    Lookup(LookupId, CallLookup),
    Authorized(LookupId, Authorization),
}

/// One task sends the node loop's UDP answers, so the kernel's work for them (the loopback
/// or network stack behind `sendmmsg`, a sixth of the node's time at load) runs beside the
/// loop rather than in it. Batches leave in the order the loop made them, several at once
/// when the task falls behind; the bounded queue holds the loop back if it falls far behind.
fn spawn_udp_sender(transports: Transports) -> mpsc::Sender<Vec<crate::sip::node::Transmit>> {
    let (tx, mut rx) = mpsc::channel::<Vec<crate::sip::node::Transmit>>(1024);
    tokio::spawn(async move {
        while let Some(mut datagrams) = rx.recv().await {
            while datagrams.len() < 1024 {
                match rx.try_recv() {
                    Ok(more) => datagrams.extend(more),
                    Err(_) => break,
                }
            }
            let packets: Vec<(&[u8], SocketAddr)> =
                datagrams.iter().map(|t| (t.bytes.as_slice(), t.destination)).collect();
            let sent = transports.send_udp_batch(&packets);
            if sent < packets.len() {
                tracing::debug!(dropped = packets.len() - sent, "UDP send buffer full");
            }
        }
    });
    tx
}

/// One task submits every call's events to the batching writer in the order the node made
/// them (so a call's stream is in order) without waiting for each commit (so a burst of
/// calls shares transactions).
fn spawn_call_appender(writer: BatchingWriter, node_id: String) -> mpsc::Sender<StreamWrite> {
    let (tx, mut rx) = mpsc::channel::<StreamWrite>(65_536);
    tokio::spawn(async move {
        while let Some(write) = rx.recv().await {
            let stream = write.stream_id.clone();
            match writer.submit(write).await {
                Ok(answer) => {
                    let node_id = node_id.clone();
                    tokio::spawn(async move {
                        match answer.await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => tracing::warn!(%stream, %node_id, error = %e, "recording call events failed"),
                            Err(_) => tracing::warn!(%stream, "the batching writer stopped"),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(%stream, error = %e, "the batching writer stopped");
                    return;
                }
            }
        }
    });
    tx
}

/// The address to advertise when none is configured: the bound one, or for a wildcard
/// bind the address this machine uses to reach the outside (no packet is sent).
fn advertised(local: SocketAddr) -> String {
    if !local.ip().is_unspecified() {
        return local.to_string();
    }
    let outward = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    SocketAddr::new(outward, local.port()).to_string()
}

/// What the registrar is told of a known tenant and the extension asked for.
fn tenant_lookup(tenant: crate::directory_cache::TenantRow, extension: Option<registrar::ExtensionRecord>) -> Lookup {
    Lookup::Tenant {
        tenant_id: tenant.tenant_id,
        sip_domain: tenant.sip_domain,
        suspended: tenant.suspended,
        extension,
    }
}

/// At most this many queued messages are handled in one turn of the node's loop.
const INBOUND_BURST: usize = 64;

/// Handles `first`, then whatever else is already queued on `rx`, up to [`INBOUND_BURST`] in
/// all (bounded, so timers and the other inputs are not starved); the answers then leave
/// together.
fn burst<T>(first: T, mut queued: impl FnMut() -> Option<T>, mut handle: impl FnMut(T)) {
    handle(first);
    for _ in 1..INBOUND_BURST {
        match queued() {
            Some(item) => handle(item),
            None => break,
        }
    }
}

/// The location table's bindings as the registrar sees them.
fn registrar_bindings(found: Vec<location::Binding>) -> Vec<registrar::Binding> {
    found
        .into_iter()
        .map(|b| registrar::Binding {
            contact: b.contact,
            expires_at: b.expires_at,
            call_id: b.call_id,
            cseq: u32::try_from(b.cseq).unwrap_or(u32::MAX),
            source: b.source,
            user_agent: b.user_agent,
        })
        .collect()
}

#[allow(clippy::disallowed_methods)] // The shell is where the SIP node's clocks are read.
fn now(epoch: tokio::time::Instant) -> Now {
    Now {
        mono: epoch.elapsed(),
        wall: Utc::now(),
    }
}

impl Shell {
    async fn run(
        self,
        mut node: SipNode,
        mut inbound: mpsc::Receiver<crate::transport::Inbound>,
        mut hangups: mpsc::Receiver<crate::sip::hangup::HangupRequest>,
        (mut media_results, mut media_events): (
            mpsc::Receiver<(crate::sip::anchoring::MediaTicket, crate::sip::anchoring::MediaReply)>,
            crate::media_link::MediaEvents,
        ),
        mut shutdown: watch::Receiver<bool>,
    ) {
        let epoch = tokio::time::Instant::now();
        // Unbounded, but never longer than the node's pending lookups (each has one answer),
        // which `max_pending_lookups` bounds; the location batcher sends here without waiting.
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<LookupDone>();
        let (call_tx, mut call_rx) = mpsc::channel::<CallDone>(4096);
        // Unbounded for the same reason: one answer per save, and saves are bounded by the
        // node's pending REGISTERs.
        let (saved_tx, mut saved_rx) = mpsc::unbounded_channel::<(LookupId, SaveOutcome)>();
        loop {
            let deadline = node
                .poll_timeout()
                .map(|at| epoch + at)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                Some(message) = inbound.recv() => {
                    let at = now(epoch);
                    burst(message, || inbound.try_recv().ok(), |message| {
                        let transport = match message.protocol {
                            Protocol::Udp => Transport::Unreliable,
                            Protocol::Tcp => Transport::Reliable,
                        };
                        node.handle_message(at, message.source, transport, message.message);
                    });
                }
                Some(done) = done_rx.recv() => {
                    let at = now(epoch);
                    burst(done, || done_rx.try_recv().ok(), |done| {
                        let random = *Uuid::new_v4().as_bytes();
                        let settled = self.settled(&done);
                        node.handle_register_lookup(at, done.id, done.lookup, done.bindings, settled, random);
                    });
                }
                Some(saved) = saved_rx.recv() => {
                    let at = now(epoch);
                    burst(saved, || saved_rx.try_recv().ok(), |(id, outcome)| {
                        node.handle_bindings_saved(at, id, outcome);
                    });
                }
                Some(done) = call_rx.recv() => match done {
                    CallDone::Lookup(id, lookup) => {
                        let random = *Uuid::new_v4().as_bytes();
                        node.handle_call_lookup(now(epoch), id, lookup, random);
                    }
                    CallDone::Authorized(id, authorization) => {
                        node.handle_call_authorization(now(epoch), id, authorization);
                    }
                },
                Some(request) = hangups.recv() => {
                    node.handle_hangup_request(now(epoch), request.tenant_id, request.call_id);
                }
                Some((ticket, reply)) = media_results.recv() => node.handle_media(now(epoch), ticket, reply),
                Some(event) = media_events.recv() => node.handle_media_event(now(epoch), event),
                _ = tokio::time::sleep_until(deadline) => node.handle_timeout(now(epoch)),
                _ = shutdown.changed() => return,
            }
            self.send_all(&mut node).await;
            let mut ready = Vec::new();
            loop {
                while let Some(event) = node.poll_event() {
                    self.on_event(epoch, event, (&done_tx, &saved_tx), &call_tx, &mut ready)
                        .await;
                }
                if ready.is_empty() {
                    break;
                }
                // Lookups the caches answered at once: handled now, their answers sent below.
                let at = now(epoch);
                for done in ready.drain(..) {
                    let random = *Uuid::new_v4().as_bytes();
                    let settled = self.settled(&done);
                    node.handle_register_lookup(at, done.id, done.lookup, done.bindings, settled, random);
                }
                self.send_all(&mut node).await;
            }
        }
    }

    /// Whether a lookup's bindings are the table's state (see [`SaveTracker`]).
    fn settled(&self, done: &LookupDone) -> bool {
        let saves = self.saves.lock().unwrap_or_else(|p| p.into_inner());
        done.read_at
            .is_some_and(|(extension_id, generation)| saves.settled(extension_id, generation))
    }

    /// Everything the node has to send: UDP datagrams together to the sender task (one
    /// system call for a turn's worth), TCP messages on their connections.
    async fn send_all(&self, node: &mut SipNode) {
        let mut datagrams = Vec::new();
        while let Some(transmit) = node.poll_transmit() {
            match transmit.transport {
                Transport::Unreliable => datagrams.push(transmit),
                Transport::Reliable => self.send(transmit).await,
            }
        }
        if !datagrams.is_empty() && self.udp_out.send(datagrams).await.is_err() {
            tracing::debug!("the UDP sender stopped");
        }
    }

    async fn send(&self, transmit: crate::sip::node::Transmit) {
        let protocol = match transmit.transport {
            Transport::Unreliable => Protocol::Udp,
            Transport::Reliable => Protocol::Tcp,
        };
        if let Err(e) = self
            .transports
            .send(protocol, transmit.destination, transmit.bytes)
            .await
        {
            tracing::debug!(destination = %transmit.destination, error = %e, "SIP send failed");
        }
    }

    async fn on_event(
        &self,
        epoch: tokio::time::Instant,
        event: NodeEvent,
        (done_tx, saved_tx): (
            &mpsc::UnboundedSender<LookupDone>,
            &mpsc::UnboundedSender<(LookupId, SaveOutcome)>,
        ),
        call_tx: &mpsc::Sender<CallDone>,
        ready: &mut Vec<LookupDone>,
    ) {
        match event {
            NodeEvent::RegisterLookup {
                id,
                domain,
                user,
                credentials,
            } => {
                // When the cache holds a fresh directory answer, no task is needed: a
                // challenge (which needs no bindings) is handled in this turn of the loop, and
                // a REGISTER with credentials gets its bindings from the location batcher
                // straight into the loop's queue.
                if let Some(lookup) = self.cached_lookup(&domain, &user) {
                    match &lookup {
                        Lookup::Tenant {
                            tenant_id,
                            extension: Some(extension),
                            ..
                        } if credentials => {
                            let (tenant_id, extension_id) = (*tenant_id, extension.extension_id);
                            let at = now(epoch).wall;
                            // Bindings this node read, unchanged since (the cache's entry
                            // holds only bindings this node wrote, read with no save of
                            // theirs in flight): no read at all.
                            if let Some((bindings, generation)) = self.bindings.get(extension_id, at) {
                                ready.push(LookupDone {
                                    id,
                                    lookup,
                                    bindings,
                                    read_at: Some((extension_id, generation)),
                                });
                                return;
                            }
                            let ticket = self.bindings.begin_read(extension_id);
                            let cache = self.bindings.clone();
                            let read_at = {
                                let saves = self.saves.lock().unwrap_or_else(|p| p.into_inner());
                                saves.read_at(extension_id).map(|generation| (extension_id, generation))
                            };
                            let done_tx = done_tx.clone();
                            let node_id = self.node_id.clone();
                            let then = move |found: Result<Vec<location::Binding>, location::LocationError>| {
                                // A binding another node wrote is not this node's to keep
                                // unwritten: the phone came through that node, and the row
                                // should say it now comes through this one.
                                let read_at = read_at.filter(|_| {
                                    found
                                        .as_ref()
                                        .is_ok_and(|found| found.iter().all(|b| b.node_id == node_id))
                                });
                                let (lookup, bindings) = match found {
                                    Ok(found) => (lookup, registrar_bindings(found)),
                                    Err(e) => {
                                        tracing::warn!(error = %e, "location lookup failed");
                                        (Lookup::UnknownDomain, Vec::new())
                                    }
                                };
                                if let Some(ticket) = ticket {
                                    let kept = read_at.map(|(_, generation)| (bindings.as_slice(), generation));
                                    cache.fill(ticket, kept, at);
                                }
                                let _ = done_tx.send(LookupDone {
                                    id,
                                    lookup,
                                    bindings,
                                    read_at,
                                });
                            };
                            self.location.bindings_then(tenant_id, extension_id, at, then);
                        }
                        _ => ready.push(LookupDone {
                            id,
                            lookup,
                            bindings: Vec::new(),
                            read_at: None,
                        }),
                    }
                    return;
                }
                let shell = self.clone();
                let done_tx = done_tx.clone();
                tokio::spawn(async move {
                    let at = now(epoch).wall;
                    let (lookup, bindings) = match shell.lookup(&domain, &user, credentials, at).await {
                        Ok(found) => found,
                        Err(e) => {
                            // Without the directory nothing can be decided; the phone retries.
                            tracing::warn!(error = %e, "directory lookup failed");
                            (Lookup::UnknownDomain, Vec::new())
                        }
                    };
                    // Read with no generation taken: never settled (a rare path, the cache's miss).
                    let _ = done_tx.send(LookupDone {
                        id,
                        lookup,
                        bindings,
                        read_at: None,
                    });
                });
            }
            NodeEvent::BindingsChanged {
                id,
                tenant_id,
                extension_id,
                changes,
            } => {
                // What this node remembers of the extension is about to be out of date.
                self.bindings.forget(extension_id);
                self.saves.lock().unwrap_or_else(|p| p.into_inner()).begin(extension_id);
                let shell = self.clone();
                let saved_tx = saved_tx.clone();
                tokio::spawn(async move {
                    let at = now(epoch).wall;
                    let (events, stored) = shell.store(tenant_id, extension_id, changes, at).await;
                    shell.saves.lock().unwrap_or_else(|p| p.into_inner()).end(extension_id);
                    let outcome = match stored {
                        Ok(()) => SaveOutcome::Saved,
                        Err(location::LocationError::TooManyBindings) => SaveOutcome::TooManyBindings,
                        Err(e) => {
                            tracing::warn!(error = %e, %extension_id, "saving bindings failed");
                            SaveOutcome::Failed
                        }
                    };
                    // The phone's answer leaves now; the events of what was stored follow.
                    let _ = saved_tx.send((id, outcome));
                    if let Err(e) = shell.record(tenant_id, extension_id, events, at).await {
                        tracing::warn!(error = %e, %extension_id, "recording registration events failed");
                    }
                });
            }
            NodeEvent::CallLookup {
                id,
                domain,
                caller,
                callee,
                source,
                credentials,
            } => {
                let shell = self.clone();
                let call_tx = call_tx.clone();
                tokio::spawn(async move {
                    let at = now(epoch).wall;
                    let lookup = match crate::call_directory::lookup(
                        &shell.pool,
                        &shell.directory,
                        &shell.location,
                        &domain,
                        &caller,
                        &callee,
                        source,
                        credentials,
                        at,
                    )
                    .await
                    {
                        Ok(lookup) => lookup,
                        Err(e) => {
                            tracing::warn!(error = %e, "call lookup failed");
                            CallLookup::UnknownDomain
                        }
                    };
                    let _ = call_tx.send(CallDone::Lookup(id, lookup)).await;
                });
            }
            NodeEvent::CallAuthorize {
                id,
                tenant_id,
                call_id,
                account_id,
                direction,
                callee,
                at,
            } => {
                let shell = self.clone();
                let call_tx = call_tx.clone();
                tokio::spawn(async move {
                    let authorization = shell
                        .billing
                        .authorize(tenant_id, call_id, account_id, direction, &callee, at)
                        .await;
                    let _ = call_tx.send(CallDone::Authorized(id, authorization)).await;
                });
            }
            NodeEvent::CallEvents {
                tenant_id,
                call_id,
                events,
            } => {
                let metadata = Metadata {
                    node_id: Some(self.node_id.clone()),
                    actor: Some("sip-b2bua".into()),
                    ..Metadata::default()
                };
                let at = now(epoch).wall;
                let write = StreamWrite {
                    tenant_id,
                    stream_id: domain::call::Call::stream_id(&call_id),
                    expected: Expected::Any,
                    events: events
                        .iter()
                        .map(|e| NewEvent::from_domain(Uuid::new_v4(), e, metadata.clone(), at))
                        .collect(),
                };
                if self.calls.send(write).await.is_err() {
                    tracing::warn!(%call_id, "the call event appender stopped");
                }
                let settles = events.iter().any(|e| {
                    matches!(
                        e,
                        CallEvent::CallAnswered(_) | CallEvent::CallEnded(_) | CallEvent::CallRejected(_)
                    )
                });
                if settles {
                    let billing = self.billing.clone();
                    tokio::spawn(async move { billing.observe(call_id, &events).await });
                }
            }
            NodeEvent::Media { ticket, command, .. } => match &self.media {
                Some(link) => link.submit(ticket, command),
                None => tracing::warn!("a media command without a media node"),
            },
            NodeEvent::SourceBlocked { ip } => {
                tracing::warn!(%ip, "blocking a source after repeated failed authentications");
                let at = now(epoch).wall;
                let event = SecurityEvent::SourceBlocked(SourceBlocked {
                    ip: ip.to_string(),
                    failures: u32::try_from(self.abuse.max_failures).unwrap_or(u32::MAX),
                    blocked_at: at,
                    blocked_until: at + self.abuse.block_for,
                    node_id: self.node_id.clone(),
                });
                let metadata = Metadata {
                    node_id: Some(self.node_id.clone()),
                    actor: Some("sip-abuse-guard".into()),
                    ..Metadata::default()
                };
                let write = StreamWrite {
                    tenant_id: domain::SYSTEM_TENANT,
                    stream_id: domain::security::stream_id(&ip.to_string()),
                    expected: Expected::Any,
                    events: vec![NewEvent::from_domain(Uuid::new_v4(), &event, metadata, at)],
                };
                if self.calls.send(write).await.is_err() {
                    tracing::warn!(%ip, "the event appender stopped");
                }
            }
        }
    }

    /// Lapsed bindings leave the table (any node may do it, each row once) as events.
    async fn purge_loop(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(15));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            #[allow(clippy::disallowed_methods)] // The shell reads the clock for its timers.
            let at = Utc::now();
            let purged = match self.location.purge_expired(at, 1000).await {
                Ok(purged) => purged,
                Err(e) => {
                    tracing::warn!(error = %e, "purging expired bindings failed");
                    continue;
                }
            };
            for b in purged {
                let event = RegistrationEvent::DeviceUnregistered(DeviceUnregistered {
                    extension_id: b.extension_id,
                    contact: b.contact,
                    reason: UnregisterReason::Expired,
                });
                let metadata = Metadata {
                    node_id: Some(self.node_id.clone()),
                    actor: Some("sip-registrar".into()),
                    ..Metadata::default()
                };
                let write = StreamWrite {
                    tenant_id: b.tenant_id,
                    stream_id: registration::stream_id(&b.extension_id),
                    expected: Expected::Any,
                    events: vec![NewEvent::from_domain(Uuid::new_v4(), &event, metadata, at)],
                };
                if let Err(e) = self.writer.append(write).await {
                    tracing::warn!(error = %e, "recording an expired binding failed");
                }
            }
        }
    }

    /// [`Shell::lookup`] for a challenge, from fresh cache entries only; `None` when the
    /// directory must be asked.
    fn cached_lookup(&self, domain: &str, user: &str) -> Option<Lookup> {
        let Some(tenant) = self.directory.cached_tenant(domain)? else {
            return Some(Lookup::UnknownDomain);
        };
        let extension = self.directory.cached_extension(tenant.tenant_id, user)?;
        Some(tenant_lookup(tenant, extension))
    }

    /// Tenant by SIP domain, extension by number, and the extension's live bindings.
    async fn lookup(
        &self,
        domain: &str,
        user: &str,
        credentials: bool,
        at: DateTime<Utc>,
    ) -> Result<(Lookup, Vec<registrar::Binding>), sqlx::Error> {
        let Some(tenant) = self.directory.tenant(&self.pool, domain).await? else {
            return Ok((Lookup::UnknownDomain, Vec::new()));
        };
        let tenant_id = tenant.tenant_id;
        let extension = self.directory.extension(&self.pool, tenant_id, user).await?;
        let bindings = match &extension {
            // Without credentials the REGISTER is only challenged: its bindings do not matter.
            Some(_) if !credentials => Vec::new(),
            Some(ext) => self
                .location
                .bindings(tenant_id, ext.extension_id, at)
                .await
                .map(registrar_bindings)
                .map_err(|e| match e {
                    location::LocationError::Sql(e) => e,
                    other => sqlx::Error::Protocol(other.to_string()),
                })?,
            None => Vec::new(),
        };
        Ok((tenant_lookup(tenant, extension), bindings))
    }

    /// Writes a REGISTER's binding changes to the location table, in order, stopping at the
    /// first failure; returns the events of the changes stored (whatever came after) and
    /// whether all were. An event is made for each binding the table says was created,
    /// changed or removed: the table's answer is atomic across SIP nodes, so two nodes
    /// handling the same device never record it twice.
    async fn store(
        &self,
        tenant_id: Uuid,
        extension_id: Uuid,
        changes: Vec<BindingChange>,
        at: DateTime<Utc>,
    ) -> (Vec<RegistrationEvent>, Result<(), location::LocationError>) {
        let mut events = Vec::new();
        let stored = self.store_into(&mut events, tenant_id, extension_id, changes, at).await;
        (events, stored)
    }

    async fn store_into(
        &self,
        events: &mut Vec<RegistrationEvent>,
        tenant_id: Uuid,
        extension_id: Uuid,
        changes: Vec<BindingChange>,
        at: DateTime<Utc>,
    ) -> Result<(), location::LocationError> {
        for change in changes {
            let binding = match change {
                BindingChange::Created(b) | BindingChange::Refreshed(b) | BindingChange::Changed { after: b, .. } => b,
                BindingChange::Removed { binding, reason } => {
                    // Only the node that actually removed a live binding records it.
                    if self
                        .location
                        .remove(tenant_id, extension_id, &binding.contact, at)
                        .await?
                    {
                        events.push(RegistrationEvent::DeviceUnregistered(DeviceUnregistered {
                            extension_id,
                            contact: binding.contact,
                            reason: match reason {
                                RemovalReason::Unregistered => UnregisterReason::Removed,
                                RemovalReason::Expired => UnregisterReason::Expired,
                            },
                        }));
                    }
                    continue;
                }
            };
            let saved = self
                .location
                .save(&self.row(tenant_id, extension_id, &binding), at)
                .await?;
            let registered = DeviceRegistered {
                extension_id,
                contact: binding.contact,
                source: binding.source,
                user_agent: binding.user_agent,
                expires_at: binding.expires_at,
                node_id: self.node_id.clone(),
            };
            match saved {
                Saved::Created => events.push(RegistrationEvent::DeviceRegistered(registered)),
                Saved::Changed => events.push(RegistrationEvent::DeviceRegistrationChanged(
                    DeviceRegistrationChanged {
                        extension_id: registered.extension_id,
                        contact: registered.contact,
                        source: registered.source,
                        user_agent: registered.user_agent,
                        expires_at: registered.expires_at,
                        node_id: registered.node_id,
                    },
                )),
                Saved::Refreshed => {}
            }
        }
        Ok(())
    }

    /// Appends a REGISTER's registration events to the extension's stream.
    async fn record(
        &self,
        tenant_id: Uuid,
        extension_id: Uuid,
        events: Vec<RegistrationEvent>,
        at: DateTime<Utc>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if events.is_empty() {
            return Ok(());
        }
        let metadata = Metadata {
            node_id: Some(self.node_id.clone()),
            actor: Some("sip-registrar".into()),
            ..Metadata::default()
        };
        let events = events
            .iter()
            .map(|e| NewEvent::from_domain(Uuid::new_v4(), e, metadata.clone(), at))
            .collect();
        self.writer
            .append(StreamWrite {
                tenant_id,
                stream_id: registration::stream_id(&extension_id),
                expected: Expected::Any,
                events,
            })
            .await?;
        Ok(())
    }

    fn row(&self, tenant_id: Uuid, extension_id: Uuid, b: &registrar::Binding) -> location::Binding {
        location::Binding {
            tenant_id,
            extension_id,
            contact: b.contact.clone(),
            source: b.source.clone(),
            call_id: b.call_id.clone(),
            cseq: i64::from(b.cseq),
            user_agent: b.user_agent.clone(),
            expires_at: b.expires_at,
            node_id: self.node_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SaveTracker;
    use uuid::Uuid;

    #[test]
    fn bindings_are_settled_only_with_no_save_in_flight_or_begun_since_the_read() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut saves = SaveTracker::default();
        let read = saves.read_at(a).expect("nothing in flight");
        assert!(saves.settled(a, read));

        // Another extension's save does not unsettle this one's read.
        saves.begin(b);
        assert!(saves.settled(a, read));

        // A save begun after the read (and even ended) unsettles it: the read may predate it.
        saves.begin(a);
        assert!(!saves.settled(a, read));
        assert_eq!(saves.read_at(a), None, "no read is settled while a save is in flight");
        saves.end(a);
        assert!(!saves.settled(a, read));

        // A read after the save ended is settled, until the next save begins.
        let later = saves.read_at(a).expect("nothing in flight");
        assert!(saves.settled(a, later));
        saves.begin(a);
        saves.begin(a);
        saves.end(a);
        assert_eq!(saves.read_at(a), None, "one of two saves still in flight");
        saves.end(a);
        assert!(!saves.settled(a, later));
        assert!(saves.read_at(a).is_some());
    }
}
