//! The call layer: a back-to-back user agent, sans-IO like the rest of the node.
//!
//! A caller's INVITE is looked up (tenant, calling extension, route), challenged with 407
//! unless it comes from a trunk's allowed address, authorized (prepaid accounts through the
//! shell), and forwarded as new INVITEs on legs of our own: to every registered contact of
//! an extension at once (first answer wins, the others are cancelled) or to a trunk, with
//! failover to the next one on 5xx or timeout. Provisional responses relay, the answer
//! relays with its SDP, both sides' BYEs and re-INVITEs cross over, CANCEL stops the legs.
//! Every step of the call goes through the pure `domain::call` decider, and the events it
//! returns leave as [`NodeEvent::CallEvents`] for the shell's batching writer.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::call::{self, CallCommand, CallInitiated, CallState, Direction, EndReason, Party};
use domain::decider::Aggregate;
use uuid::Uuid;

use super::digest::Verdict;
use super::message::{build_response, uri_user_host, Contact, SipMessage};
use super::node::{LookupId, NodeEvent, Now, SipNode, Transmit};
use super::registrar::ExtensionRecord;
use super::transaction::{ClientTransaction, Instant, TransactionKey, Transport, BRANCH_COOKIE};

#[path = "anchoring.rs"]
pub mod anchoring;

/// How the call layer behaves.
#[derive(Debug, Clone)]
pub struct CallConfig {
    /// `host:port` this node writes in its Via and Contact headers.
    pub advertise: String,
    /// How long a call may ring before it ends as unanswered (408).
    pub no_answer: Duration,
    /// Calls (set up or in progress) this node holds at most; more get 503.
    pub max_calls: usize,
    /// Anchor every call's media on a media node (see `anchoring`).
    pub anchor_media: bool,
}

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig {
            advertise: "127.0.0.1:5060".into(),
            no_answer: Duration::from_secs(60),
            max_calls: 20_000,
            anchor_media: false,
        }
    }
}

/// A registered contact of the called extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactTarget {
    pub uri: String,
    /// Where the REGISTER came from: requests go there, which works behind NAT.
    pub destination: SocketAddr,
    pub transport: Transport,
}

/// One trunk an outbound call may leave through, in failover order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkTarget {
    pub trunk_id: Uuid,
    pub destination: SocketAddr,
    pub transport: Transport,
    /// The Request-URI host (the carrier's domain or address).
    pub host: String,
    /// The number to send, after the route's strip and prepend.
    pub number: String,
    /// Outbound digest credentials `(username, password)`, for carriers that challenge.
    pub credentials: Option<(String, String)>,
}

/// Where a call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Extension {
        extension_id: Uuid,
        number: String,
        contacts: Vec<ContactTarget>,
    },
    Trunks(Vec<TrunkTarget>),
    /// A conference room's access number: the media node answers (its IVR collects the
    /// room's code), no phone is called.
    Conference {
        access_number: String,
    },
    NotFound,
}

/// The directory's answer for an INVITE.
#[derive(Debug, Clone)]
pub enum CallLookup {
    UnknownDomain,
    Tenant(Box<TenantCall>),
}

/// What the directory knows about a call of a tenant.
#[derive(Debug, Clone)]
pub struct TenantCall {
    pub tenant_id: Uuid,
    pub sip_domain: String,
    pub suspended: bool,
    /// The calling extension; `None` for an unknown user, who is challenged all the same.
    pub caller: Option<ExtensionRecord>,
    /// Set when the INVITE came from an allowed address of this trunk: no digest, inbound.
    pub from_trunk: Option<Uuid>,
    /// The DID an inbound call was dialled on.
    pub did: Option<String>,
    pub route: Route,
    /// The tenant's concurrent-call limit, if any.
    pub call_limit: Option<u32>,
    pub account: Option<AccountRef>,
}

/// The account a call is billed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountRef {
    pub account_id: Uuid,
    /// Prepaid calls are authorized against available funds before they are forwarded.
    pub prepaid: bool,
}

/// The billing answer for a prepaid call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    Granted {
        max_duration_s: Option<u32>,
        reservation_id: Option<Uuid>,
    },
    Refused {
        status: u16,
        reason: String,
    },
}

/// An INVITE waiting for the directory or for billing.
pub(super) struct PendingInvite {
    key: TransactionKey,
    request: SipMessage,
    source: SocketAddr,
    transport: Transport,
    /// Set once authenticated, while billing decides.
    planned: Option<Box<Planned>>,
}

/// A call decided but not yet forwarded (waiting for billing).
struct Planned {
    tenant_id: Uuid,
    sip_domain: String,
    initiated: CallInitiated,
    route: Route,
}

#[derive(Debug, Clone)]
struct Dialog {
    call_id: String,
    /// Our From value (with our tag) in requests we send in this dialog.
    local: String,
    /// Their To value (with their tag once known).
    remote: String,
    /// The Request-URI of our requests: their Contact.
    target: String,
    destination: SocketAddr,
    transport: Transport,
    cseq: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LegState {
    Calling,
    Early,
    Answered,
    Done,
}

struct Leg {
    leg_id: Uuid,
    dialog: Dialog,
    invite: SipMessage,
    state: LegState,
    /// A CANCEL is due as soon as the leg answers provisionally.
    cancel_pending: bool,
    trunk: Option<TrunkTarget>,
    auth_tried: bool,
    /// The SDP of the leg's answer.
    sdp: Vec<u8>,
    /// A leg to a blind transfer's target.
    transfer: bool,
}

/// Which side of a call a SIP dialog is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Caller,
    Leg(usize),
}

struct ReInvite {
    origin: Side,
    origin_key: TransactionKey,
}

pub(super) struct ActiveCall {
    id: Uuid,
    tenant_id: Uuid,
    sip_domain: String,
    state: CallState,
    a_key: TransactionKey,
    a_invite: SipMessage,
    a_tag: String,
    a_dialog: Dialog,
    legs: Vec<Leg>,
    answered: Option<usize>,
    /// The two dialogs whose media and requests are joined: the caller and the answered
    /// leg, until a transfer replaces one of them.
    bridge: Option<[Side; 2]>,
    /// A blind transfer in progress: who is left waiting for the new party.
    transfer: Option<Side>,
    failover: Vec<TrunkTarget>,
    best_failure: Option<u16>,
    ring_deadline: Option<Instant>,
    cut_deadline: Option<Instant>,
    reinvite: Option<ReInvite>,
    /// Server transactions (INVITE or re-INVITE) whose 2xx waits for an ACK, by CSeq.
    awaiting_ack: Vec<(u32, TransactionKey)>,
    /// Answered by the media node's conference IVR (no legs to phones).
    conference: bool,
    finished: bool,
}

/// What a client transaction was sent for.
#[derive(Debug, Clone)]
pub(super) enum Purpose {
    Invite { call: Uuid, leg: usize },
    ReInvite { call: Uuid, to: Side },
    Other,
}

/// The call layer's memory, owned by the node.
#[derive(Default)]
pub(super) struct Calls {
    pub(super) pending: HashMap<LookupId, PendingInvite>,
    pub(super) active: HashMap<Uuid, ActiveCall>,
    /// SIP Call-ID → the call and the side that dialog is.
    by_sip_call_id: HashMap<String, (Uuid, Side)>,
    pub(super) purposes: HashMap<TransactionKey, Purpose>,
    /// REFERs waiting for the directory: the call, and who asked.
    transfers: HashMap<LookupId, (Uuid, Side)>,
    per_tenant: HashMap<Uuid, u32>,
    next_branch: u64,
    pub(super) media: anchoring::Anchoring,
    /// Every armed ring or cut deadline, earliest first (entries go stale when a deadline is
    /// cleared or moved; a stale one wakes the node once, early). Invariant: each place that
    /// arms a call's deadline pushes it here.
    deadlines: BinaryHeap<Reverse<(Instant, Uuid)>>,
}

impl Calls {
    /// Calls being set up or in progress.
    pub fn len(&self) -> usize {
        self.active.len() + self.pending.len()
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }
}

/// Whether an SDP body puts the stream on hold (RFC 3264 §8.4, and the old 0.0.0.0 form).
pub fn sdp_is_hold(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    text.lines().any(|line| {
        let line = line.trim();
        line == "a=sendonly" || line == "a=inactive" || line.starts_with("c=IN IP4 0.0.0.0")
    })
}

/// The display name of a From value, without quotes.
fn display_name(value: &str) -> String {
    match value.find('<') {
        Some(open) => value[..open].trim().trim_matches('"').trim().chars().take(64).collect(),
        None => String::new(),
    }
}

fn contact_uri(message: &SipMessage) -> Option<String> {
    match message.contacts().ok()?.into_iter().next()? {
        Contact::Uri { uri, .. } => Some(uri),
        Contact::Star => None,
    }
}

fn via_transport(transport: Transport) -> &'static str {
    match transport {
        Transport::Unreliable => "UDP",
        Transport::Reliable => "TCP",
    }
}

fn short_hex(id: &Uuid) -> String {
    id.simple().to_string()[..16].to_string()
}

impl SipNode {
    fn next_branch(&mut self) -> String {
        self.calls.next_branch += 1;
        format!(
            "{BRANCH_COOKIE}{}c{:x}",
            self.config.identity.branch_prefix, self.calls.next_branch
        )
    }

    fn contact_header(&self, transport: Transport) -> String {
        match transport {
            Transport::Unreliable => format!("<sip:ll@{}>", self.config.calls.advertise),
            Transport::Reliable => format!("<sip:ll@{};transport=tcp>", self.config.calls.advertise),
        }
    }

    /// Composes a request as text and parses it back, so what leaves is what we validate.
    #[allow(clippy::too_many_arguments)]
    fn compose(
        &mut self,
        method: &str,
        uri: &str,
        transport: Transport,
        from: &str,
        to: &str,
        call_id: &str,
        cseq: u32,
        extra: &[(&str, String)],
        body: &[u8],
        content_type: Option<&str>,
    ) -> Option<SipMessage> {
        let branch = self.next_branch();
        self.compose_with_branch(
            method,
            uri,
            transport,
            &branch,
            from,
            to,
            call_id,
            cseq,
            extra,
            body,
            content_type,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn compose_with_branch(
        &self,
        method: &str,
        uri: &str,
        transport: Transport,
        branch: &str,
        from: &str,
        to: &str,
        call_id: &str,
        cseq: u32,
        extra: &[(&str, String)],
        body: &[u8],
        content_type: Option<&str>,
    ) -> Option<SipMessage> {
        let mut text = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={branch};rport\r\nMax-Forwards: 70\r\n\
From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n",
            via_transport(transport),
            self.config.calls.advertise,
        );
        if method != "ACK" && method != "CANCEL" {
            text.push_str(&format!("Contact: {}\r\n", self.contact_header(transport)));
        }
        for (name, value) in extra {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            text.push_str(&format!(
                "Content-Type: {}\r\n",
                content_type.unwrap_or("application/sdp")
            ));
        }
        text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(body);
        SipMessage::parse(&bytes).ok()
    }

    /// Starts a client transaction for `request` towards `destination`.
    fn send_request(
        &mut self,
        now: Now,
        destination: SocketAddr,
        transport: Transport,
        request: SipMessage,
        purpose: Purpose,
    ) {
        let transaction = ClientTransaction::new(request, transport, self.config.timers, now.mono);
        let Some(key) = transaction.key() else {
            return;
        };
        self.calls.purposes.insert(key.clone(), purpose);
        self.client.insert(
            key.clone(),
            super::node::ClientEntry {
                transaction,
                destination,
                transport,
                scheduled: None,
            },
        );
        self.flush_client(now, &key);
    }

    fn send_stateless_request(&mut self, destination: SocketAddr, transport: Transport, request: &SipMessage) {
        self.transmits.push_back(Transmit {
            destination,
            transport,
            bytes: request.to_bytes(),
        });
    }

    /// Answers a server transaction, with a body and our Contact when given.
    #[allow(clippy::too_many_arguments)]
    fn reply(
        &mut self,
        now: Now,
        key: &TransactionKey,
        request: &SipMessage,
        code: u16,
        tag: &str,
        extra: &[(&str, String)],
        body: Option<(&[u8], &str)>,
    ) {
        let mut response = build_response(request, code, tag, extra);
        let is_invite = request.method() == Some(rsip::Method::Invite);
        if is_invite && (101..300).contains(&code) {
            let transport = self
                .server
                .get(key)
                .map(|e| e.transport)
                .unwrap_or(Transport::Unreliable);
            response
                .headers
                .push(rsip::Header::Other("Contact".into(), self.contact_header(transport)));
        }
        if let Some((body, content_type)) = body.filter(|(b, _)| !b.is_empty()) {
            response
                .headers
                .push(rsip::Header::Other("Content-Type".into(), content_type.to_string()));
            response.body = body.to_vec();
        }
        self.handle_response_command(now, key, response);
    }

    /// The first INVITE of a dialog: ask the shell for the directory's view.
    pub(super) fn start_invite(
        &mut self,
        now: Now,
        key: TransactionKey,
        request: SipMessage,
        source: SocketAddr,
        transport: Transport,
    ) {
        let tag = super::node::to_tag_for(&request);
        let domain = request.request_domain();
        let callee = request
            .request_uri
            .as_deref()
            .and_then(uri_user_host)
            .and_then(|(user, _)| user);
        let caller = uri_user_host(&request.from.uri).and_then(|(user, _)| user);
        let (Some(domain), Some(callee), Some(caller)) = (domain, callee, caller) else {
            self.reply(now, &key, &request, 400, &tag, &[], None);
            return;
        };
        if self.calls.len() >= self.config.calls.max_calls {
            self.reply(now, &key, &request, 503, &tag, &[("Retry-After", "5".into())], None);
            return;
        }
        self.next_lookup += 1;
        let id = LookupId(self.next_lookup);
        self.calls.pending.insert(
            id,
            PendingInvite {
                key,
                request,
                source,
                transport,
                planned: None,
            },
        );
        let credentials = self
            .calls
            .pending
            .get(&id)
            .is_some_and(|p| p.request.header("Proxy-Authorization").is_some());
        self.events.push_back(NodeEvent::CallLookup {
            id,
            domain,
            caller,
            callee,
            source,
            credentials,
        });
    }

    /// The directory's answer for an INVITE announced by [`NodeEvent::CallLookup`].
    /// `random` comes from the shell's CSPRNG (nonces and the call's id).
    pub fn handle_call_lookup(&mut self, now: Now, id: LookupId, lookup: CallLookup, random: [u8; 16]) {
        if let Some((call, transferor)) = self.calls.transfers.remove(&id) {
            return self.transfer_lookup(now, call, transferor, lookup);
        }
        let Some(pending) = self.calls.pending.remove(&id) else {
            return;
        };
        let request = &pending.request;
        let tag = super::node::to_tag_for(request);
        let key = pending.key.clone();
        let tenant = match lookup {
            CallLookup::UnknownDomain => {
                self.reply(now, &key, request, 404, &tag, &[], None);
                return;
            }
            CallLookup::Tenant(tenant) => tenant,
        };
        if tenant.from_trunk.is_none() {
            let challenge = |node: &mut SipNode, stale: bool| {
                node.verifier
                    .challenge(&tenant.sip_domain, now.wall, random, stale)
                    .header_fields(true)
            };
            let credentials = match request.digest_credentials(true) {
                None => {
                    let fields = challenge(self, false);
                    self.reply(now, &key, request, 407, &tag, &fields, None);
                    return;
                }
                Some(Err(_)) => {
                    self.auth_failed(now, pending.source);
                    self.reply(now, &key, request, 400, &tag, &[], None);
                    return;
                }
                Some(Ok(credentials)) => credentials,
            };
            let caller_user = uri_user_host(&request.from.uri).and_then(|(user, _)| user);
            if caller_user.as_deref() != Some(credentials.username.as_str()) {
                self.auth_failed(now, pending.source);
                self.reply(now, &key, request, 403, &tag, &[], None);
                return;
            }
            let ha1 = tenant.caller.as_ref().map(|e| &e.ha1);
            match self
                .verifier
                .verify(&credentials, "INVITE", &tenant.sip_domain, ha1, now.wall)
            {
                Verdict::Ok => {}
                Verdict::Stale => {
                    let fields = challenge(self, true);
                    self.reply(now, &key, request, 407, &tag, &fields, None);
                    return;
                }
                Verdict::Invalid(_) => {
                    self.auth_failed(now, pending.source);
                    let fields = challenge(self, false);
                    self.reply(now, &key, request, 407, &tag, &fields, None);
                    return;
                }
            }
            if tenant.suspended || !tenant.caller.as_ref().is_some_and(|c| c.enabled) {
                self.reply(now, &key, request, 403, &tag, &[], None);
                return;
            }
        } else if tenant.suspended {
            self.reply(now, &key, request, 403, &tag, &[], None);
            return;
        }
        // Authenticated: from here on the call exists and every outcome is in its stream.
        let call_id = uuid::Builder::from_random_bytes(random).into_uuid();
        let callee = request
            .request_uri
            .as_deref()
            .and_then(uri_user_host)
            .and_then(|(user, _)| user)
            .unwrap_or_default();
        let caller = match &tenant.caller {
            Some(ext) => ext.number.clone(),
            None => uri_user_host(&request.from.uri)
                .and_then(|(user, _)| user)
                .unwrap_or_default(),
        };
        let direction = match (&tenant.from_trunk, &tenant.route) {
            (Some(_), _) => Direction::Inbound,
            (None, Route::Trunks(_)) => Direction::Outbound,
            (None, _) => Direction::Internal,
        };
        let trunk_id = tenant.from_trunk.or(match &tenant.route {
            Route::Trunks(trunks) => trunks.first().map(|t| t.trunk_id),
            _ => None,
        });
        let initiated = CallInitiated {
            call_id,
            tenant_id: tenant.tenant_id,
            direction,
            caller,
            caller_name: display_name(&request.from.value),
            callee,
            did: tenant.did.clone(),
            trunk_id,
            account_id: tenant.account.map(|a| a.account_id),
            at: now.wall,
        };
        let planned = Planned {
            tenant_id: tenant.tenant_id,
            sip_domain: tenant.sip_domain.clone(),
            initiated,
            route: tenant.route.clone(),
        };
        self.open_call(now, &pending, &planned);
        let refusal = match &tenant.route {
            Route::NotFound => Some((404, "no such number")),
            Route::Extension { contacts, .. } if contacts.is_empty() => Some((480, "not registered")),
            Route::Trunks(trunks) if trunks.is_empty() => Some((503, "no trunk available")),
            _ => None,
        };
        let over_limit = tenant.call_limit.is_some_and(|limit| {
            // This call is already counted by `open_call`.
            self.calls.per_tenant.get(&tenant.tenant_id).copied().unwrap_or(0) > limit
        });
        let refusal = if over_limit {
            Some((503, "tenant call limit reached"))
        } else {
            refusal
        };
        if let Some((status, reason)) = refusal {
            self.reject(now, call_id, status, reason);
            return;
        }
        // A conference call is not authorized against the caller's prepaid funds: conference
        // legs are charged to the room's owner by the billing projection.
        let conference = matches!(tenant.route, Route::Conference { .. });
        match tenant.account {
            Some(account) if account.prepaid && !conference => {
                self.events.push_back(NodeEvent::CallAuthorize {
                    id,
                    tenant_id: tenant.tenant_id,
                    call_id,
                    account_id: account.account_id,
                    direction,
                    callee: planned.initiated.callee.clone(),
                    at: now.wall,
                });
                self.calls.pending.insert(
                    id,
                    PendingInvite {
                        planned: Some(Box::new(planned)),
                        ..pending
                    },
                );
            }
            _ => self.forward(
                now,
                call_id,
                planned.route,
                Authorization::Granted {
                    max_duration_s: None,
                    reservation_id: None,
                },
            ),
        }
    }

    /// Billing's answer for a prepaid call announced by [`NodeEvent::CallAuthorize`].
    pub fn handle_call_authorization(&mut self, now: Now, id: LookupId, authorization: Authorization) {
        let Some(pending) = self.calls.pending.remove(&id) else {
            return;
        };
        let Some(planned) = pending.planned else {
            return;
        };
        self.forward(now, planned.initiated.call_id, planned.route, authorization);
    }

    fn auth_failed(&mut self, now: Now, source: SocketAddr) {
        if self.abuse.record_failure(source.ip(), now.wall) {
            self.events.push_back(NodeEvent::SourceBlocked { ip: source.ip() });
        }
    }

    /// Creates the call's state and records its initiation.
    fn open_call(&mut self, now: Now, pending: &PendingInvite, planned: &Planned) {
        let request = &pending.request;
        let a_tag = super::node::to_tag_for(request);
        let a_dialog = Dialog {
            call_id: request.call_id.clone(),
            local: format!("{};tag={a_tag}", request.to.value),
            remote: request.from.value.clone(),
            target: contact_uri(request).unwrap_or_else(|| request.from.uri.clone()),
            destination: pending.source,
            transport: pending.transport,
            cseq: 1,
        };
        let id = planned.initiated.call_id;
        let call = ActiveCall {
            id,
            tenant_id: planned.tenant_id,
            sip_domain: planned.sip_domain.clone(),
            state: CallState::default(),
            a_key: pending.key.clone(),
            a_invite: request.clone(),
            a_tag,
            a_dialog,
            legs: Vec::new(),
            answered: None,
            bridge: None,
            transfer: None,
            failover: Vec::new(),
            best_failure: None,
            ring_deadline: None,
            cut_deadline: None,
            reinvite: None,
            awaiting_ack: Vec::new(),
            conference: false,
            finished: false,
        };
        self.calls
            .by_sip_call_id
            .insert(request.call_id.clone(), (id, Side::Caller));
        self.calls.active.insert(id, call);
        *self.calls.per_tenant.entry(planned.tenant_id).or_default() += 1;
        self.apply(now, id, CallCommand::Initiate(planned.initiated.clone()));
    }

    /// Runs a command through the call decider and queues the events it returns.
    fn apply(&mut self, now: Now, id: Uuid, command: CallCommand) {
        let Some(call) = self.calls.active.get_mut(&id) else {
            return;
        };
        match call::decide(&command, &call.state) {
            Ok(events) if !events.is_empty() => {
                for event in &events {
                    call.state = call::Call::evolve(std::mem::take(&mut call.state), event);
                }
                self.events.push_back(NodeEvent::CallEvents {
                    tenant_id: call.tenant_id,
                    call_id: id,
                    events,
                });
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(call = %id, error = %e, at = %now.wall, "call command refused"),
        }
    }

    /// The wall time for a call's next event: never before its last one.
    fn at(&self, now: Now, id: Uuid) -> DateTime<Utc> {
        match self.calls.active.get(&id).and_then(|c| c.state.last_at) {
            Some(last) if last > now.wall => last,
            _ => now.wall,
        }
    }

    fn reject(&mut self, now: Now, id: Uuid, status: u16, reason: &str) {
        let at = self.at(now, id);
        self.apply(
            now,
            id,
            CallCommand::Reject {
                reason: reason.to_string(),
                sip_status: status,
                at,
            },
        );
        if let Some(call) = self.calls.active.get(&id) {
            let (key, invite, tag) = (call.a_key.clone(), call.a_invite.clone(), call.a_tag.clone());
            let reason_header = format!("SIP;cause={status};text=\"{reason}\"");
            self.reply(now, &key, &invite, status, &tag, &[("Reason", reason_header)], None);
        }
        self.finish(now, id);
    }

    /// Authorized (or refused) by billing: record it and send the legs out.
    fn forward(&mut self, now: Now, id: Uuid, route: Route, authorization: Authorization) {
        let (max_duration_s, reservation_id) = match authorization {
            Authorization::Granted {
                max_duration_s,
                reservation_id,
            } => (max_duration_s, reservation_id),
            Authorization::Refused { status, reason } => {
                self.reject(now, id, status, &reason);
                return;
            }
        };
        let at = self.at(now, id);
        self.apply(
            now,
            id,
            CallCommand::Authorize {
                max_duration_s,
                reservation_id,
                at,
            },
        );
        let no_answer = self.config.calls.no_answer;
        let Some(call) = self.calls.active.get_mut(&id) else {
            return;
        };
        call.ring_deadline = Some(now.mono + no_answer);
        self.calls.deadlines.push(Reverse((now.mono + no_answer, id)));
        if let Some(max) = max_duration_s {
            // Kept until the answer, which is when the clock starts.
            call.cut_deadline = None;
            call.state.max_duration_s = Some(max);
        }
        if let Route::Conference { access_number } = route {
            return self.route_to_conference(now, id, access_number);
        }
        if let Some(route) = self.anchor_offer(id, route) {
            self.route_legs(now, id, route);
        }
    }

    /// Sends the call's legs out: every contact at once, or the first trunk.
    fn route_legs(&mut self, now: Now, id: Uuid, route: Route) {
        match route {
            Route::Extension { number, contacts, .. } => {
                for contact in contacts {
                    let to = format!("<sip:{number}@{}>", call_domain(self, id));
                    self.create_leg(now, id, contact.uri, contact.destination, contact.transport, to, None);
                }
            }
            Route::Trunks(mut trunks) => {
                if trunks.is_empty() {
                    return;
                }
                let first = trunks.remove(0);
                if let Some(call) = self.calls.active.get_mut(&id) {
                    call.failover = trunks;
                }
                self.trunk_leg(now, id, first);
            }
            Route::Conference { .. } | Route::NotFound => {}
        }
    }

    fn trunk_leg(&mut self, now: Now, id: Uuid, trunk: TrunkTarget) {
        let uri = format!("sip:{}@{}", trunk.number, trunk.host);
        let to = format!("<{uri}>");
        self.create_leg(now, id, uri, trunk.destination, trunk.transport, to, Some(trunk));
    }

    #[allow(clippy::too_many_arguments)]
    fn create_leg(
        &mut self,
        now: Now,
        id: Uuid,
        uri: String,
        destination: SocketAddr,
        transport: Transport,
        to: String,
        trunk: Option<TrunkTarget>,
    ) {
        let Some(call) = self.calls.active.get(&id) else {
            return;
        };
        let body = self.offer_body(call);
        self.create_leg_with(now, id, uri, destination, transport, to, trunk, body, false);
    }

    #[allow(clippy::too_many_arguments)]
    fn create_leg_with(
        &mut self,
        now: Now,
        id: Uuid,
        uri: String,
        destination: SocketAddr,
        transport: Transport,
        to: String,
        trunk: Option<TrunkTarget>,
        body: Vec<u8>,
        transfer: bool,
    ) {
        let Some(call) = self.calls.active.get(&id) else {
            return;
        };
        let index = call.legs.len();
        let leg_id = Uuid::new_v5(&id, format!("leg-{index}").as_bytes());
        let initiated = call.state.initiated.clone();
        let (caller, caller_name) = initiated
            .as_ref()
            .map(|i| (i.caller.clone(), i.caller_name.clone()))
            .unwrap_or_default();
        let from_host = match &trunk {
            Some(_) => self.config.calls.advertise.clone(),
            None => call.sip_domain.clone(),
        };
        let from_tag = short_hex(&leg_id);
        let from = if caller_name.is_empty() {
            format!("<sip:{caller}@{from_host}>;tag={from_tag}")
        } else {
            format!(
                "\"{}\" <sip:{caller}@{from_host}>;tag={from_tag}",
                caller_name.replace('"', "")
            )
        };
        let sip_call_id = format!("{}@ll", leg_id.simple());
        let content_type = call.a_invite.header("Content-Type").map(str::to_string);
        let Some(invite) = self.compose(
            "INVITE",
            &uri,
            transport,
            &from,
            &to,
            &sip_call_id,
            1,
            &[],
            &body,
            content_type.as_deref(),
        ) else {
            tracing::warn!(call = %id, %uri, "could not compose a leg's INVITE");
            return;
        };
        let leg = Leg {
            leg_id,
            dialog: Dialog {
                call_id: sip_call_id.clone(),
                local: from,
                remote: to,
                target: uri.clone(),
                destination,
                transport,
                cseq: 1,
            },
            invite: invite.clone(),
            state: LegState::Calling,
            cancel_pending: false,
            trunk: trunk.clone(),
            auth_tried: false,
            sdp: Vec::new(),
            transfer,
        };
        if let Some(call) = self.calls.active.get_mut(&id) {
            call.legs.push(leg);
        }
        self.calls.by_sip_call_id.insert(sip_call_id, (id, Side::Leg(index)));
        let at = self.at(now, id);
        self.apply(
            now,
            id,
            CallCommand::CreateLeg {
                leg_id,
                target: uri,
                trunk_id: trunk.map(|t| t.trunk_id),
                at,
            },
        );
        self.send_request(
            now,
            destination,
            transport,
            invite,
            Purpose::Invite { call: id, leg: index },
        );
    }

    /// A response for one of our client transactions.
    pub(super) fn on_client_response(&mut self, now: Now, key: &TransactionKey, response: SipMessage) {
        let Some(purpose) = self.calls.purposes.get(key).cloned() else {
            return;
        };
        let Some(code) = response.status() else {
            return;
        };
        match purpose {
            Purpose::Invite { call, leg } => self.on_leg_response(now, call, leg, code, response),
            Purpose::ReInvite { call, to } => self.on_reinvite_response(now, call, to, code, response),
            Purpose::Other => {}
        }
    }

    /// One of our client transactions gave up (Timer B or F).
    pub(super) fn on_client_timeout(&mut self, now: Now, key: &TransactionKey) {
        match self.calls.purposes.get(key).cloned() {
            Some(Purpose::Invite { call, leg }) => self.leg_failed(now, call, leg, 408),
            Some(Purpose::ReInvite { call, to }) => {
                if let Some(c) = self.calls.active.get_mut(&call) {
                    if let Some(re) = c.reinvite.take() {
                        let origin_key = re.origin_key;
                        if let Some(request) = self
                            .server
                            .get(&origin_key)
                            .and_then(|e| e.transaction.request().cloned())
                        {
                            let tag = request.to.tag.clone().unwrap_or_default();
                            self.reply(now, &origin_key, &request, 408, &tag, &[], None);
                        }
                    }
                }
                let _ = to;
            }
            _ => {}
        }
    }

    fn on_leg_response(&mut self, now: Now, id: Uuid, index: usize, code: u16, response: SipMessage) {
        let Some(call) = self.calls.active.get_mut(&id) else {
            // The call is over; a late 2xx still gets its ACK and a BYE.
            return;
        };
        let Some(leg) = call.legs.get_mut(index) else {
            return;
        };
        match code {
            100 => {}
            101..=199 => {
                if leg.state == LegState::Calling {
                    leg.state = LegState::Early;
                }
                let first_ring = call.state.phase != call::Phase::Answered;
                let cancel = std::mem::take(&mut leg.cancel_pending);
                let leg_id = leg.leg_id;
                if cancel {
                    self.cancel_leg(now, id, index);
                    return;
                }
                if call.answered.is_none() && !call.finished && first_ring {
                    let (key, invite, tag) = (call.a_key.clone(), call.a_invite.clone(), call.a_tag.clone());
                    self.relay_answer(now, id, key, invite, code, tag, &response);
                    let at = self.at(now, id);
                    self.apply(now, id, CallCommand::Ring { leg_id, at });
                }
            }
            200..=299 => {
                leg.dialog.remote = response.to.value.clone();
                if let Some(target) = contact_uri(&response) {
                    leg.dialog.target = target;
                }
                leg.sdp = response.body.clone();
                let dialog = leg.dialog.clone();
                let cseq = leg.invite.cseq.seq;
                let was_answered = leg.state == LegState::Answered;
                leg.state = LegState::Answered;
                let leg_id = leg.leg_id;
                let is_transfer = leg.transfer;
                self.ack_leg(&dialog, cseq);
                if was_answered {
                    return; // a retransmitted 2xx: the ACK above answers it
                }
                if is_transfer {
                    return self.transfer_answered(now, id, index);
                }
                let call = self.calls.active.get_mut(&id).expect("looked up above");
                if call.answered.is_some() || call.finished {
                    // Another leg answered first (or the caller is gone): hang this one up.
                    self.bye(now, &dialog, id);
                    if let Some(call) = self.calls.active.get_mut(&id) {
                        call.legs[index].state = LegState::Done;
                    }
                    return;
                }
                call.answered = Some(index);
                call.bridge = Some([Side::Caller, Side::Leg(index)]);
                call.ring_deadline = None;
                if let Some(max) = call.state.max_duration_s {
                    let at = now.mono + Duration::from_secs(u64::from(max));
                    call.cut_deadline = Some(at);
                    self.calls.deadlines.push(Reverse((at, id)));
                }
                let (key, invite, tag) = (call.a_key.clone(), call.a_invite.clone(), call.a_tag.clone());
                call.awaiting_ack.push((invite.cseq.seq, key.clone()));
                let others: Vec<usize> = (0..call.legs.len()).filter(|i| *i != index).collect();
                let at = self.at(now, id);
                self.apply(now, id, CallCommand::Answer { leg_id, at });
                self.relay_answer(now, id, key, invite, code, tag, &response);
                for other in others {
                    self.cancel_leg(now, id, other);
                }
            }
            401 | 407 if leg.trunk.as_ref().is_some_and(|t| t.credentials.is_some()) && !leg.auth_tried => {
                leg.auth_tried = true;
                self.retry_with_credentials(now, id, index, code, &response);
            }
            _ => {
                leg.state = LegState::Done;
                self.leg_failed(now, id, index, code);
            }
        }
    }

    fn retry_with_credentials(&mut self, now: Now, id: Uuid, index: usize, code: u16, response: &SipMessage) {
        let header = if code == 407 {
            "Proxy-Authenticate"
        } else {
            "WWW-Authenticate"
        };
        let Some(challenge) = response.header(header).map(str::to_string) else {
            return self.leg_failed(now, id, index, code);
        };
        let Some(call) = self.calls.active.get_mut(&id) else {
            return;
        };
        let leg = &mut call.legs[index];
        let Some((user, password)) = leg.trunk.as_ref().and_then(|t| t.credentials.clone()) else {
            return;
        };
        leg.dialog.cseq += 1;
        leg.state = LegState::Calling;
        let uri = leg.dialog.target.clone();
        let Some(authorization) = super::digest::answer_challenge(&challenge, &user, &password, "INVITE", &uri) else {
            leg.state = LegState::Done;
            return self.leg_failed(now, id, index, code);
        };
        let (from, to, sip_call_id, cseq, transport, destination) = (
            leg.dialog.local.clone(),
            leg.dialog.remote.clone(),
            leg.dialog.call_id.clone(),
            leg.dialog.cseq,
            leg.dialog.transport,
            leg.dialog.destination,
        );
        let body = leg.invite.body.clone();
        let content_type = leg.invite.header("Content-Type").map(str::to_string);
        let name = if code == 407 {
            "Proxy-Authorization"
        } else {
            "Authorization"
        };
        let Some(invite) = self.compose(
            "INVITE",
            &uri,
            transport,
            &from,
            &to,
            &sip_call_id,
            cseq,
            &[(name, authorization)],
            &body,
            content_type.as_deref(),
        ) else {
            return;
        };
        if let Some(call) = self.calls.active.get_mut(&id) {
            call.legs[index].invite = invite.clone();
        }
        self.send_request(
            now,
            destination,
            transport,
            invite,
            Purpose::Invite { call: id, leg: index },
        );
    }

    /// A leg failed with `code`: fail over to the next trunk, or end the call when no leg
    /// is left.
    fn leg_failed(&mut self, now: Now, id: Uuid, index: usize, code: u16) {
        let Some(call) = self.calls.active.get_mut(&id) else {
            return;
        };
        if let Some(leg) = call.legs.get_mut(index) {
            leg.state = LegState::Done;
        }
        let transfer_leg = call.legs.get(index).is_some_and(|l| l.transfer);
        if transfer_leg && call.transfer.is_some() && !call.finished {
            let pending = call.legs.iter().any(|l| l.transfer && l.state != LegState::Done);
            if !pending {
                return self.transfer_failed(now, id, code);
            }
            return;
        }
        if call.answered.is_some() || call.finished {
            return;
        }
        call.best_failure = Some(match call.best_failure {
            Some(best) if failure_rank(best) >= failure_rank(code) => best,
            _ => code,
        });
        let is_trunk = call.legs.get(index).is_some_and(|l| l.trunk.is_some());
        if is_trunk && (code >= 500 || code == 408) && !call.failover.is_empty() {
            let next = call.failover.remove(0);
            self.trunk_leg(now, id, next);
            return;
        }
        if call.legs.iter().any(|l| l.state != LegState::Done) {
            return;
        }
        let status = call.best_failure.unwrap_or(code);
        let status = if is_trunk && status >= 500 { 503 } else { status };
        let (key, invite, tag) = (call.a_key.clone(), call.a_invite.clone(), call.a_tag.clone());
        self.reply(now, &key, &invite, status, &tag, &[], None);
        self.end(now, id, Party::Callee, status, None);
    }

    fn cancel_leg(&mut self, now: Now, id: Uuid, index: usize) {
        let Some(call) = self.calls.active.get_mut(&id) else {
            return;
        };
        let Some(leg) = call.legs.get_mut(index) else {
            return;
        };
        match leg.state {
            LegState::Calling => leg.cancel_pending = true,
            LegState::Early => {
                let invite = leg.invite.clone();
                let (destination, transport) = (leg.dialog.destination, leg.dialog.transport);
                let branch = invite.branch().unwrap_or_default().to_string();
                let uri = invite.request_uri.clone().unwrap_or_default();
                if let Some(cancel) = self.compose_with_branch(
                    "CANCEL",
                    &uri,
                    transport,
                    &branch,
                    &invite.from.value,
                    &invite.to.value,
                    &invite.call_id,
                    invite.cseq.seq,
                    &[],
                    &[],
                    None,
                ) {
                    self.send_request(now, destination, transport, cancel, Purpose::Other);
                }
            }
            LegState::Answered | LegState::Done => {}
        }
    }

    fn ack_leg(&mut self, dialog: &Dialog, cseq: u32) {
        let branch = self.next_branch();
        if let Some(ack) = self.compose_with_branch(
            "ACK",
            &dialog.target,
            dialog.transport,
            &branch,
            &dialog.local,
            &dialog.remote,
            &dialog.call_id,
            cseq,
            &[],
            &[],
            None,
        ) {
            self.send_stateless_request(dialog.destination, dialog.transport, &ack);
        }
    }

    /// Sends BYE in a dialog.
    fn bye(&mut self, now: Now, dialog: &Dialog, _id: Uuid) {
        let cseq = dialog.cseq + 1;
        if let Some(bye) = self.compose(
            "BYE",
            &dialog.target,
            dialog.transport,
            &dialog.local,
            &dialog.remote,
            &dialog.call_id,
            cseq,
            &[],
            &[],
            None,
        ) {
            self.send_request(now, dialog.destination, dialog.transport, bye, Purpose::Other);
        }
    }

    /// A request for the call layer: a new INVITE, or one inside a dialog.
    pub(super) fn on_call_request(
        &mut self,
        now: Now,
        key: Option<TransactionKey>,
        source: SocketAddr,
        transport: Transport,
        request: SipMessage,
    ) {
        let Some(method) = request.method() else {
            return;
        };
        let Some(key) = key else {
            if method == rsip::Method::Ack {
                self.on_ack(now, &request);
            }
            return;
        };
        let tag = super::node::to_tag_for(&request);
        if method == rsip::Method::Cancel {
            return self.on_cancel(now, key, request);
        }
        if method == rsip::Method::Invite && request.to.tag.is_none() {
            return self.start_invite(now, key, request, source, transport);
        }
        let Some((id, side)) = self.calls.by_sip_call_id.get(&request.call_id).copied() else {
            return self.reply(now, &key, &request, 481, &tag, &[], None);
        };
        match method {
            rsip::Method::Bye => self.on_bye(now, key, request, id, side),
            rsip::Method::Invite => self.on_reinvite(now, key, request, id, side),
            rsip::Method::Refer => self.on_refer(now, key, request, id, side),
            rsip::Method::Info if side == Side::Caller && self.calls.active.get(&id).is_some_and(|c| c.conference) => {
                self.conference_info(now, key, request, id)
            }
            rsip::Method::Info | rsip::Method::Options | rsip::Method::Notify => {
                self.reply(now, &key, &request, 200, &tag, &[], None)
            }
            _ => self.reply(
                now,
                &key,
                &request,
                405,
                &tag,
                &[("Allow", super::screening::ALLOWED_METHODS.into())],
                None,
            ),
        }
    }

    fn on_ack(&mut self, now: Now, request: &SipMessage) {
        let Some((id, _)) = self.calls.by_sip_call_id.get(&request.call_id).copied() else {
            return;
        };
        let Some(call) = self.calls.active.get_mut(&id) else {
            return;
        };
        let seq = request.cseq.seq;
        let keys: Vec<TransactionKey> = call
            .awaiting_ack
            .iter()
            .filter(|(cseq, _)| *cseq == seq)
            .map(|(_, key)| key.clone())
            .collect();
        call.awaiting_ack.retain(|(cseq, _)| *cseq != seq);
        for key in keys {
            if let Some(entry) = self.server.get_mut(&key) {
                entry.transaction.handle_ack(now.mono);
            }
            self.flush(&key);
        }
    }

    fn on_cancel(&mut self, now: Now, key: TransactionKey, request: SipMessage) {
        let tag = super::node::to_tag_for(&request);
        let branch = request.branch().map(str::to_string);
        let matches =
            |invite: &SipMessage| invite.call_id == request.call_id && invite.branch().map(str::to_string) == branch;
        // Still waiting for the directory or billing: drop it and answer 487.
        let pending = self
            .calls
            .pending
            .iter()
            .find(|(_, p)| matches(&p.request))
            .map(|(id, _)| *id);
        if let Some(id) = pending {
            let p = self.calls.pending.remove(&id).expect("found above");
            self.reply(now, &key, &request, 200, &tag, &[], None);
            let invite_tag = super::node::to_tag_for(&p.request);
            self.reply(now, &p.key, &p.request, 487, &invite_tag, &[], None);
            if let Some(planned) = p.planned {
                let call_id = planned.initiated.call_id;
                let at = self.at(now, call_id);
                self.apply(
                    now,
                    call_id,
                    CallCommand::Reject {
                        reason: "cancelled".into(),
                        sip_status: 487,
                        at,
                    },
                );
                self.finish(now, call_id);
            }
            return;
        }
        let found = self
            .calls
            .by_sip_call_id
            .get(&request.call_id)
            .copied()
            .filter(|(id, side)| {
                *side == Side::Caller && self.calls.active.get(id).is_some_and(|c| matches(&c.a_invite))
            });
        let Some((id, _)) = found else {
            return self.reply(now, &key, &request, 481, &tag, &[], None);
        };
        self.reply(now, &key, &request, 200, &tag, &[], None);
        let call = self.calls.active.get(&id).expect("found above");
        if call.answered.is_some() || call.finished {
            return;
        }
        let (a_key, invite, a_tag) = (call.a_key.clone(), call.a_invite.clone(), call.a_tag.clone());
        let legs = call.legs.len();
        self.reply(now, &a_key, &invite, 487, &a_tag, &[], None);
        for index in 0..legs {
            self.cancel_leg(now, id, index);
        }
        self.end(now, id, Party::Caller, 487, Some(EndReason::Cancelled));
    }

    fn dialog_of(call: &ActiveCall, side: Side) -> Option<Dialog> {
        match side {
            Side::Caller => Some(call.a_dialog.clone()),
            Side::Leg(i) => call.legs.get(i).map(|l| l.dialog.clone()),
        }
    }

    fn other_side(call: &ActiveCall, side: Side) -> Option<(Side, Dialog)> {
        let [a, b] = call.bridge?;
        if a == b {
            // One party waiting alone while a transfer rings.
            return None;
        }
        let other = if side == a {
            b
        } else if side == b {
            a
        } else {
            return None;
        };
        Some((other, Self::dialog_of(call, other)?))
    }

    fn on_bye(&mut self, now: Now, key: TransactionKey, request: SipMessage, id: Uuid, side: Side) {
        let tag = request.to.tag.clone().unwrap_or_default();
        self.reply(now, &key, &request, 200, &tag, &[], None);
        let Some(call) = self.calls.active.get(&id) else {
            return;
        };
        if call.finished {
            return;
        }
        if call.conference {
            // The caller left the conference: the media node's leg is deleted by `end`.
            self.end(now, id, party_of(side), 200, None);
            return;
        }
        let Some((_, other)) = Self::other_side(call, side) else {
            if call.transfer.is_some() && call.bridge == Some([side, side]) {
                // The party waiting for a transfer gave up: stop ringing the target.
                let legs: Vec<usize> = (0..call.legs.len()).filter(|i| call.legs[*i].transfer).collect();
                for index in legs {
                    self.cancel_leg(now, id, index);
                }
                self.end(now, id, party_of(side), 200, None);
            }
            return;
        };
        self.bye(now, &other, id);
        self.end(now, id, party_of(side), 200, None);
    }

    /// A re-INVITE from one side (hold, resume, a new offer): relayed to the other side.
    fn on_reinvite(&mut self, now: Now, key: TransactionKey, request: SipMessage, id: Uuid, side: Side) {
        let tag = request.to.tag.clone().unwrap_or_default();
        let Some(call) = self.calls.active.get(&id) else {
            return self.reply(now, &key, &request, 481, &tag, &[], None);
        };
        if call.conference && !call.finished {
            return self.conference_reinvite(now, key, request, id);
        }
        let Some((to, mut dialog)) = Self::other_side(call, side) else {
            return self.reply(now, &key, &request, 481, &tag, &[], None);
        };
        if call.reinvite.is_some() || call.finished {
            return self.reply(now, &key, &request, 491, &tag, &[], None);
        }
        dialog.cseq += 1;
        let content_type = request.header("Content-Type").map(str::to_string);
        let Some(invite) = self.compose(
            "INVITE",
            &dialog.target,
            dialog.transport,
            &dialog.local,
            &dialog.remote,
            &dialog.call_id,
            dialog.cseq,
            &[],
            &request.body,
            content_type.as_deref(),
        ) else {
            return self.reply(now, &key, &request, 500, &tag, &[], None);
        };
        let at = self.at(now, id);
        let call = self.calls.active.get_mut(&id).expect("looked up above");
        match to {
            Side::Caller => call.a_dialog.cseq = dialog.cseq,
            Side::Leg(i) => call.legs[i].dialog.cseq = dialog.cseq,
        }
        call.reinvite = Some(ReInvite {
            origin: side,
            origin_key: key,
        });
        if !request.body.is_empty() {
            let hold = sdp_is_hold(&request.body);
            let by = party_of(side);
            let command = match (hold, call.state.on_hold) {
                (true, false) => Some(CallCommand::Hold { by, at }),
                (false, true) => Some(CallCommand::Resume { by, at }),
                _ => None,
            };
            if let Some(command) = command {
                self.apply(now, id, command);
            }
        }
        self.send_reinvite(now, id, side, to, dialog, invite);
    }

    fn on_reinvite_response(&mut self, now: Now, id: Uuid, to: Side, code: u16, response: SipMessage) {
        if code < 200 {
            return;
        }
        let Some(call) = self.calls.active.get_mut(&id) else {
            return;
        };
        if (200..300).contains(&code) {
            let dialog = match to {
                Side::Caller => call.a_dialog.clone(),
                Side::Leg(i) => call.legs[i].dialog.clone(),
            };
            self.ack_leg(&dialog, response.cseq.seq);
        }
        let Some(call) = self.calls.active.get_mut(&id) else {
            return;
        };
        let Some(re) = call.reinvite.take() else {
            return;
        };
        let Some(request) = self
            .server
            .get(&re.origin_key)
            .and_then(|e| e.transaction.request().cloned())
        else {
            return;
        };
        if (200..300).contains(&code) {
            call.awaiting_ack.push((request.cseq.seq, re.origin_key.clone()));
        }
        let tag = request.to.tag.clone().unwrap_or_default();
        let _ = re.origin;
        self.relay_reinvite_answer(now, id, to, re.origin_key, request, code, tag, &response);
    }

    /// A blind transfer (RFC 3515): the party that sends REFER is released, the other one
    /// stays and is connected to the Refer-To target once it answers.
    fn on_refer(&mut self, now: Now, key: TransactionKey, request: SipMessage, id: Uuid, side: Side) {
        let tag = request.to.tag.clone().unwrap_or_default();
        let target = request
            .header("Refer-To")
            .map(|v| {
                v.trim()
                    .trim_start_matches('<')
                    .split(['>', ';', '?'])
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .and_then(|uri| uri_user_host(&uri))
            .and_then(|(user, _)| user);
        let Some(target) = target else {
            return self.reply(now, &key, &request, 400, &tag, &[], None);
        };
        let Some(call) = self.calls.active.get(&id) else {
            return self.reply(now, &key, &request, 481, &tag, &[], None);
        };
        if call.finished || call.transfer.is_some() || Self::other_side(call, side).is_none() {
            return self.reply(now, &key, &request, 491, &tag, &[], None);
        }
        let (domain, caller) = (
            call.sip_domain.clone(),
            call.state
                .initiated
                .as_ref()
                .map(|i| i.caller.clone())
                .unwrap_or_default(),
        );
        self.reply(now, &key, &request, 202, &tag, &[], None);
        let by = party_of(side);
        let at = self.at(now, id);
        self.apply(
            now,
            id,
            CallCommand::Transfer {
                by,
                to: target.clone(),
                at,
            },
        );
        if let Some(call) = self.calls.active.get_mut(&id) {
            call.transfer = Some(side);
        }
        self.next_lookup += 1;
        let lookup = LookupId(self.next_lookup);
        self.calls.transfers.insert(lookup, (id, side));
        self.events.push_back(NodeEvent::CallLookup {
            id: lookup,
            domain,
            caller,
            callee: target,
            // Not a trunk's address: the target is looked up in the tenant's own numbers.
            source: SocketAddr::from(([0, 0, 0, 0], 0)),
            credentials: true,
        });
    }

    fn transfer_lookup(&mut self, now: Now, id: Uuid, transferor: Side, lookup: CallLookup) {
        let Some(call) = self.calls.active.get(&id) else {
            return;
        };
        if call.finished {
            return;
        }
        let Some((remaining, _)) = Self::other_side(call, transferor) else {
            return;
        };
        let contacts = match lookup {
            CallLookup::Tenant(tenant) => match tenant.route {
                Route::Extension { number, contacts, .. } if !contacts.is_empty() => Some((number, contacts)),
                _ => None,
            },
            CallLookup::UnknownDomain => None,
        };
        let Some((number, contacts)) = contacts else {
            return self.transfer_failed(now, id, 404);
        };
        let body = match remaining {
            Side::Caller => call.a_invite.body.clone(),
            Side::Leg(i) => call.legs[i].sdp.clone(),
        };
        let domain = call.sip_domain.clone();
        // Blind: the transferor is done as soon as the target is known.
        if let Some(dialog) = Self::dialog_of(call, transferor) {
            self.bye(now, &dialog, id);
        }
        if let Some(call) = self.calls.active.get_mut(&id) {
            call.bridge = Some([remaining, remaining]);
            call.ring_deadline = Some(now.mono + self.config.calls.no_answer);
            self.calls
                .deadlines
                .push(Reverse((now.mono + self.config.calls.no_answer, id)));
        }
        for contact in contacts {
            let to = format!("<sip:{number}@{domain}>");
            self.create_leg_with(
                now,
                id,
                contact.uri,
                contact.destination,
                contact.transport,
                to,
                None,
                body.clone(),
                true,
            );
        }
    }

    /// The transfer target answered: join it to the party left waiting, whose media is
    /// pointed at the new party by a re-INVITE.
    fn transfer_answered(&mut self, now: Now, id: Uuid, index: usize) {
        let Some(call) = self.calls.active.get_mut(&id) else {
            return;
        };
        let Some([remaining, _]) = call.bridge else {
            return;
        };
        if call.transfer.is_none() || call.finished {
            // Another target answered first: hang this one up.
            let dialog = call.legs[index].dialog.clone();
            return self.bye(now, &dialog, id);
        }
        call.transfer = None;
        call.ring_deadline = None;
        call.answered = Some(index);
        call.bridge = Some([remaining, Side::Leg(index)]);
        let others: Vec<usize> = (0..call.legs.len())
            .filter(|i| *i != index && call.legs[*i].transfer)
            .collect();
        let sdp = call.legs[index].sdp.clone();
        let Some(mut dialog) = Self::dialog_of(call, remaining) else {
            return;
        };
        dialog.cseq += 1;
        match remaining {
            Side::Caller => call.a_dialog.cseq = dialog.cseq,
            Side::Leg(i) => call.legs[i].dialog.cseq = dialog.cseq,
        }
        for other in others {
            self.cancel_leg(now, id, other);
        }
        if let Some(invite) = self.compose(
            "INVITE",
            &dialog.target,
            dialog.transport,
            &dialog.local,
            &dialog.remote,
            &dialog.call_id,
            dialog.cseq,
            &[],
            &sdp,
            None,
        ) {
            self.send_request(
                now,
                dialog.destination,
                dialog.transport,
                invite,
                Purpose::ReInvite {
                    call: id,
                    to: remaining,
                },
            );
        }
    }

    /// Nobody took the transfer: the party left waiting is hung up.
    fn transfer_failed(&mut self, now: Now, id: Uuid, status: u16) {
        let Some(call) = self.calls.active.get_mut(&id) else {
            return;
        };
        let transferor = call.transfer.take();
        let Some([remaining, _]) = call.bridge else {
            return;
        };
        let mut dialogs: Vec<Dialog> = Self::dialog_of(call, remaining).into_iter().collect();
        if let Some(transferor) = transferor {
            if transferor != remaining {
                dialogs.extend(Self::dialog_of(call, transferor));
            }
        }
        for dialog in dialogs {
            self.bye(now, &dialog, id);
        }
        self.end(now, id, Party::System, status, Some(EndReason::from_sip_status(status)));
    }

    /// Call timers: ringing too long, and prepaid calls at their maximum duration.
    pub(super) fn call_timeouts(&mut self, now: Now) {
        let mut woken = Vec::new();
        while let Some(Reverse((at, id))) = self.calls.deadlines.peek() {
            if *at > now.mono {
                break;
            }
            woken.push(*id);
            self.calls.deadlines.pop();
        }
        woken.sort_unstable();
        woken.dedup();
        let due: Vec<(Uuid, bool)> = woken
            .iter()
            .filter_map(|id| self.calls.active.get(id))
            .filter_map(|c| {
                if c.cut_deadline.is_some_and(|at| at <= now.mono) {
                    Some((c.id, true))
                } else if c.ring_deadline.is_some_and(|at| at <= now.mono) {
                    Some((c.id, false))
                } else {
                    None
                }
            })
            .collect();
        for (id, cut) in due {
            if cut {
                self.cut(now, id);
            } else {
                self.no_answer(now, id);
            }
        }
    }

    fn no_answer(&mut self, now: Now, id: Uuid) {
        let Some(call) = self.calls.active.get_mut(&id) else {
            return;
        };
        call.ring_deadline = None;
        let (key, invite, tag, legs) = (
            call.a_key.clone(),
            call.a_invite.clone(),
            call.a_tag.clone(),
            call.legs.len(),
        );
        for index in 0..legs {
            self.cancel_leg(now, id, index);
        }
        self.reply(now, &key, &invite, 408, &tag, &[], None);
        self.end(now, id, Party::System, 408, Some(EndReason::NoAnswer));
    }

    /// An operator asked (through the API, `CallHangupRequested` in the log) to end a call
    /// of `tenant_id`: answered, both sides get a BYE; not answered yet, the legs are
    /// cancelled and the caller gets 487. The call ends as `hangup_requested` by the
    /// operator. A call this node does not hold, of another tenant, or already ended is
    /// left alone.
    pub fn handle_hangup_request(&mut self, now: Now, tenant_id: Uuid, id: Uuid) {
        let Some(call) = self.calls.active.get(&id) else {
            return;
        };
        if call.tenant_id != tenant_id || call.finished {
            return;
        }
        if call.answered.is_some() || call.state.phase == call::Phase::Answered {
            self.bye_bridged(now, id);
            self.end(now, id, Party::Operator, 200, Some(EndReason::HangupRequested));
            return;
        }
        let (key, invite, tag, legs) = (
            call.a_key.clone(),
            call.a_invite.clone(),
            call.a_tag.clone(),
            call.legs.len(),
        );
        for index in 0..legs {
            self.cancel_leg(now, id, index);
        }
        self.reply(now, &key, &invite, 487, &tag, &[], None);
        self.end(now, id, Party::Operator, 487, Some(EndReason::HangupRequested));
    }

    /// The prepaid limit: both sides get a BYE and the call ends as `credit_exhausted`.
    fn cut(&mut self, now: Now, id: Uuid) {
        self.bye_bridged(now, id);
        self.end(now, id, Party::System, 200, Some(EndReason::CreditExhausted));
    }

    /// A BYE to both dialogs of the call's bridge (the node ends an answered call).
    fn bye_bridged(&mut self, now: Now, id: Uuid) {
        let Some(call) = self.calls.active.get_mut(&id) else {
            return;
        };
        call.cut_deadline = None;
        let sides = call.bridge.unwrap_or([Side::Caller, Side::Caller]);
        let mut dialogs = vec![Self::dialog_of(call, sides[0])];
        if sides[1] != sides[0] {
            dialogs.push(Self::dialog_of(call, sides[1]));
        }
        let dialogs: Vec<Dialog> = dialogs.into_iter().flatten().collect();
        for dialog in dialogs {
            self.bye(now, &dialog, id);
        }
    }

    /// Ends the call: `CallEnded` through the decider, then [`SipNode::finish`].
    fn end(&mut self, now: Now, id: Uuid, hangup_by: Party, sip_status: u16, reason: Option<EndReason>) {
        let at = self.at(now, id);
        // An anchored call records `CallEnded` once the media node says what it counted.
        if !self.release_media(id, hangup_by, sip_status, reason, at) {
            self.apply(
                now,
                id,
                CallCommand::End {
                    hangup_by,
                    sip_status,
                    reason,
                    at,
                    media: vec![],
                },
            );
        }
        self.finish(now, id);
    }

    /// The call has ended: it stops counting against its tenant and its timers stop. Its
    /// dialogs stay known for a while, so late BYEs and ACKs still find it.
    fn finish(&mut self, now: Now, id: Uuid) {
        let Some(call) = self.calls.active.get_mut(&id) else {
            return;
        };
        if call.finished {
            return;
        }
        call.finished = true;
        call.ring_deadline = None;
        call.cut_deadline = None;
        let tenant = call.tenant_id;
        if let Some(count) = self.calls.per_tenant.get_mut(&tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.calls.per_tenant.remove(&tenant);
            }
        }
        self.finished.push_back((now.mono + FORGET_AFTER, id));
    }

    /// Forgets calls that ended long enough ago.
    pub(super) fn forget_finished(&mut self, now: Instant) {
        while let Some((at, id)) = self.finished.front().copied() {
            if at > now {
                break;
            }
            self.finished.pop_front();
            if let Some(call) = self.calls.active.remove(&id) {
                self.calls.by_sip_call_id.remove(&call.a_dialog.call_id);
                for leg in &call.legs {
                    self.calls.by_sip_call_id.remove(&leg.dialog.call_id);
                }
            }
        }
    }

    /// Calls in progress for a tenant on this node.
    pub fn active_calls(&self, tenant_id: Uuid) -> u32 {
        self.calls.per_tenant.get(&tenant_id).copied().unwrap_or(0)
    }
}

/// Who a side of the call is, in the call's events.
fn party_of(side: Side) -> Party {
    match side {
        Side::Caller => Party::Caller,
        Side::Leg(_) => Party::Callee,
    }
}

/// How long an ended call's dialogs stay known (late BYE, ACK, retransmissions).
pub const FORGET_AFTER: Duration = Duration::from_secs(32);

/// Which failure the caller hears when every leg failed: busy beats unavailable beats
/// timeout beats the rest.
fn failure_rank(code: u16) -> u8 {
    match code {
        486 | 600 => 5,
        603 => 4,
        480 => 3,
        408 => 2,
        404 | 604 => 1,
        _ => 0,
    }
}

fn call_domain(node: &SipNode, id: Uuid) -> String {
    node.calls
        .active
        .get(&id)
        .map(|c| c.sip_domain.clone())
        .unwrap_or_default()
}
