//! RFC 3261 §17 transactions as sans-IO state machines, with time as an input.
//!
//! Each transaction takes messages (`handle_message`), the TU's responses
//! (`handle_tu_response`) and the passing of time (`handle_timeout(now)`), and hands back what
//! to send (`poll_transmit`), what the TU must learn (`poll_event`) and when it next needs to be
//! woken (`poll_timeout`). Time is a `Duration` since the node's (virtual) epoch, so tests drive
//! the timers A–K on a virtual clock with no sockets and no sleeps.
//!
//! Two choices beyond RFC 3261, both from RFC 6026: an INVITE client that sees a 2xx stays in
//! `Accepted` for Timer M and passes 2xx retransmissions up (so the TU can re-ACK), and an INVITE
//! server that sent a 2xx stays in `Accepted` and retransmits the 2xx on the Timer G schedule
//! until the TU reports the ACK or Timer L (64·T1) expires, absorbing INVITE retransmissions.

use super::message::SipMessage;
use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A point on the node's clock: the time elapsed since its epoch.
pub type Instant = Duration;

/// RFC 3261's timer bases (§17.1.1.1 and Table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// The round-trip estimate: first retransmission interval.
    pub t1: Duration,
    /// The cap on non-INVITE and response retransmission intervals.
    pub t2: Duration,
    /// How long a message may remain in the network.
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl Timers {
    /// Timers B, F, H, J, L and M: 64·T1.
    pub fn sixty_four_t1(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// Timer D: at least 32 s over unreliable transports.
    fn timer_d(&self) -> Duration {
        self.sixty_four_t1().max(Duration::from_secs(32))
    }
}

/// Whether the transport retransmits for us (TCP) or not (UDP); several timers are zero or
/// never started over a reliable transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Reliable,
    Unreliable,
}

/// What a transaction tells its TU.
#[derive(Debug, Clone)]
pub enum TransactionEvent {
    /// Client: a response for the TU (each provisional, the first final, 2xx retransmissions).
    Response(Box<SipMessage>),
    /// Client: Timer B or F fired with no final response. Server: Timer H (no ACK for a
    /// non-2xx) or Timer L (no ACK for a 2xx) fired.
    TimedOut,
    /// The transaction ended; its state may be dropped.
    Terminated,
}

/// Why a transaction refused an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactionError {
    /// The message does not belong here (a request given to a client transaction...).
    WrongMessage,
    /// The TU sent a response the state does not allow (a second final response...).
    NotAllowedInState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    Calling,
    Trying,
    Proceeding,
    Accepted,
    Completed,
    Terminated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Trying,
    Proceeding,
    Accepted,
    Completed,
    Confirmed,
    Terminated,
}

/// What identifies a transaction (RFC 3261 §17.1.3, §17.2.3): the top Via's branch and
/// sent-by, and the method, with ACK folded into INVITE.
///
/// The node keeps a key in its transaction map, its arrival order and its timer heap, and
/// looks one up several times a message: so a key is shared (a clone is a reference count,
/// not three strings) and hashed once, with the process's random keys (a peer choosing
/// branches cannot aim at one bucket).
#[derive(Debug, Clone)]
pub struct TransactionKey(Arc<KeyParts>);

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct KeyParts {
    branch: String,
    sent_by: String,
    /// The CSeq method as text, since `rsip::Method` is not `Hash`.
    method: String,
    hash: u64,
}

/// The RFC 3261 magic cookie: a branch without it comes from an RFC 2543 element.
pub const BRANCH_COOKIE: &str = "z9hG4bK";

impl TransactionKey {
    pub fn new(branch: &str, sent_by: &str, method: &str) -> TransactionKey {
        TransactionKey::from_parts(branch.to_string(), sent_by.to_string(), method.to_string())
    }

    fn from_parts(branch: String, sent_by: String, method: String) -> TransactionKey {
        static KEYS: OnceLock<RandomState> = OnceLock::new();
        let hash = KEYS
            .get_or_init(RandomState::new)
            .hash_one((branch.as_str(), sent_by.as_str(), method.as_str()));
        TransactionKey(Arc::new(KeyParts {
            branch,
            sent_by,
            method,
            hash,
        }))
    }

    /// The key a request or response belongs to; `None` for RFC 2543 branches, which this
    /// node does not match (it answers them statelessly or drops them).
    pub fn of(message: &SipMessage) -> Option<TransactionKey> {
        let via = message.vias.first()?;
        let branch = via.branch.as_deref()?;
        if !branch.starts_with(BRANCH_COOKIE) {
            return None;
        }
        let method = match message.cseq.method {
            rsip::Method::Ack => rsip::Method::Invite,
            method => method,
        };
        Some(TransactionKey::from_parts(
            branch.to_string(),
            via.sent_by.to_ascii_lowercase(),
            crate::sip::message::method_name(method).to_string(),
        ))
    }

    pub fn branch(&self) -> &str {
        &self.0.branch
    }

    pub fn sent_by(&self) -> &str {
        &self.0.sent_by
    }

    pub fn method(&self) -> &str {
        &self.0.method
    }
}

impl PartialEq for TransactionKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for TransactionKey {}

impl PartialOrd for TransactionKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TransactionKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// The maps keyed by [`TransactionKey`]: the key carries its hash (SipHash under the process's
/// random keys), so the map takes it as it is rather than hash those eight bytes again.
pub type KeyMap<V> = super::PrehashedMap<TransactionKey, V>;

impl std::hash::Hash for TransactionKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

/// The deadlines a transaction may hold: a retransmission timer with its current interval,
/// a give-up timer, and a linger timer that ends the transaction.
#[derive(Debug, Clone, Default)]
struct Deadlines {
    retransmit: Option<(Instant, Duration)>,
    give_up: Option<Instant>,
    linger: Option<Instant>,
}

impl Deadlines {
    fn earliest(&self) -> Option<Instant> {
        [self.retransmit.map(|(at, _)| at), self.give_up, self.linger]
            .into_iter()
            .flatten()
            .min()
    }
}

/// A client transaction (RFC 3261 §17.1): INVITE or non-INVITE.
#[derive(Debug)]
pub struct ClientTransaction {
    request: SipMessage,
    request_bytes: Vec<u8>,
    ack_bytes: Option<Vec<u8>>,
    invite: bool,
    transport: Transport,
    timers: Timers,
    state: ClientState,
    deadlines: Deadlines,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<TransactionEvent>,
}

impl ClientTransaction {
    /// Starts the transaction: the request is queued for sending and timers A/B or E/F start.
    pub fn new(request: SipMessage, transport: Transport, timers: Timers, now: Instant) -> ClientTransaction {
        let invite = request.method() == Some(rsip::Method::Invite);
        let request_bytes = request.to_bytes();
        let mut deadlines = Deadlines::default();
        if transport == Transport::Unreliable {
            deadlines.retransmit = Some((now + timers.t1, timers.t1));
        }
        deadlines.give_up = Some(now + timers.sixty_four_t1());
        let mut transaction = ClientTransaction {
            request,
            request_bytes: request_bytes.clone(),
            ack_bytes: None,
            invite,
            transport,
            timers,
            state: if invite {
                ClientState::Calling
            } else {
                ClientState::Trying
            },
            deadlines,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        transaction.transmits.push_back(request_bytes);
        transaction
    }

    pub fn state(&self) -> ClientState {
        self.state
    }

    pub fn key(&self) -> Option<TransactionKey> {
        TransactionKey::of(&self.request)
    }

    /// A response from the network that matched this transaction's key.
    pub fn handle_message(&mut self, now: Instant, response: SipMessage) -> Result<(), TransactionError> {
        let Some(code) = response.status() else {
            return Err(TransactionError::WrongMessage);
        };
        if self.invite {
            self.invite_response(now, code, response);
        } else {
            self.non_invite_response(now, code, response);
        }
        Ok(())
    }

    fn invite_response(&mut self, now: Instant, code: u16, response: SipMessage) {
        match (self.state, code) {
            (ClientState::Calling | ClientState::Proceeding, 100..=199) => {
                self.state = ClientState::Proceeding;
                self.deadlines.retransmit = None;
                self.deadlines.give_up = None;
                self.events.push_back(TransactionEvent::Response(Box::new(response)));
            }
            (ClientState::Calling | ClientState::Proceeding, 200..=299) => {
                self.state = ClientState::Accepted;
                self.deadlines = Deadlines::default();
                // Timer M (RFC 6026): 2xx retransmissions keep reaching the TU until it fires.
                self.deadlines.linger = Some(now + self.timers.sixty_four_t1());
                self.events.push_back(TransactionEvent::Response(Box::new(response)));
            }
            (ClientState::Accepted, 200..=299) => self.events.push_back(TransactionEvent::Response(Box::new(response))),
            (ClientState::Calling | ClientState::Proceeding, 300..=699) => {
                self.state = ClientState::Completed;
                self.deadlines = Deadlines::default();
                let ack = super::message::build_ack_for_non_2xx(&self.request, &response).map(|ack| ack.to_bytes());
                if let Some(ack) = &ack {
                    self.transmits.push_back(ack.clone());
                }
                self.ack_bytes = ack;
                self.events.push_back(TransactionEvent::Response(Box::new(response)));
                match self.transport {
                    Transport::Unreliable => self.deadlines.linger = Some(now + self.timers.timer_d()),
                    Transport::Reliable => self.terminate(),
                }
            }
            (ClientState::Completed, 300..=699) => {
                // A retransmitted final response: our ACK was lost, so send it again.
                if let Some(ack) = &self.ack_bytes {
                    self.transmits.push_back(ack.clone());
                }
            }
            // Anything else (a late 1xx, a 2xx after a 4xx) is absorbed.
            _ => {}
        }
    }

    fn non_invite_response(&mut self, now: Instant, code: u16, response: SipMessage) {
        match (self.state, code) {
            (ClientState::Trying | ClientState::Proceeding, 100..=199) => {
                self.state = ClientState::Proceeding;
                self.events.push_back(TransactionEvent::Response(Box::new(response)));
            }
            (ClientState::Trying | ClientState::Proceeding, 200..=699) => {
                self.state = ClientState::Completed;
                self.deadlines = Deadlines::default();
                self.events.push_back(TransactionEvent::Response(Box::new(response)));
                match self.transport {
                    Transport::Unreliable => self.deadlines.linger = Some(now + self.timers.t4),
                    Transport::Reliable => self.terminate(),
                }
            }
            // Retransmitted final responses in Completed are absorbed (RFC 3261 §17.1.2.2).
            _ => {}
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((at, interval)) = self.deadlines.retransmit {
            if now >= at {
                self.transmits.push_back(self.request_bytes.clone());
                let next = match (self.invite, self.state) {
                    // Timer A doubles without a cap.
                    (true, _) => interval.saturating_mul(2),
                    // Timer E doubles up to T2 in Trying and stays at T2 in Proceeding.
                    (false, ClientState::Proceeding) => self.timers.t2,
                    (false, _) => interval.saturating_mul(2).min(self.timers.t2),
                };
                self.deadlines.retransmit = Some((now + next, next));
            }
        }
        if let Some(at) = self.deadlines.give_up {
            if now >= at {
                self.events.push_back(TransactionEvent::TimedOut);
                self.terminate();
            }
        }
        if let Some(at) = self.deadlines.linger {
            if now >= at {
                self.terminate();
            }
        }
    }

    fn terminate(&mut self) {
        if self.state != ClientState::Terminated {
            self.state = ClientState::Terminated;
            self.deadlines = Deadlines::default();
            self.events.push_back(TransactionEvent::Terminated);
        }
    }

    /// The next datagram or frame to send to the transaction's peer.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TransactionEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must next be called; `None` when no timer runs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.earliest()
    }
}

/// A server transaction (RFC 3261 §17.2): INVITE or non-INVITE. The TU learns of the
/// request from whoever created the transaction; retransmissions never reach it.
#[derive(Debug)]
pub struct ServerTransaction {
    /// An INVITE's request (a non-INVITE transaction keeps only its key and the response to
    /// repeat).
    request: Option<SipMessage>,
    invite: bool,
    transport: Transport,
    timers: Timers,
    state: ServerState,
    last_response: Option<Vec<u8>>,
    deadlines: Deadlines,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<TransactionEvent>,
}

impl ServerTransaction {
    /// Starts the transaction for a new request. An INVITE is answered with a 100 Trying
    /// at once (RFC 3261 §17.2.1 allows it), which stops the client's Timer A.
    /// Only an INVITE's request is kept (the call layer reads it back for re-INVITEs).
    pub fn new(request: &SipMessage, transport: Transport, timers: Timers) -> ServerTransaction {
        let invite = request.method() == Some(rsip::Method::Invite);
        let mut transaction = ServerTransaction {
            invite,
            transport,
            timers,
            state: if invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            last_response: None,
            deadlines: Deadlines::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            request: invite.then(|| request.clone()),
        };
        if let Some(request) = &transaction.request {
            let trying = super::message::build_response(request, 100, "", &[]);
            let bytes = super::message::to_bytes(&trying.into());
            transaction.last_response = Some(bytes.clone());
            transaction.transmits.push_back(bytes);
        }
        transaction
    }

    pub fn state(&self) -> ServerState {
        self.state
    }

    /// The request, for an INVITE transaction.
    pub fn request(&self) -> Option<&SipMessage> {
        self.request.as_ref()
    }

    /// A request from the network that matched this transaction: a retransmission of the
    /// request, or (INVITE only) the ACK.
    pub fn handle_message(&mut self, now: Instant, request: SipMessage) -> Result<(), TransactionError> {
        let Some(method) = request.method() else {
            return Err(TransactionError::WrongMessage);
        };
        if method == rsip::Method::Ack {
            if !self.invite {
                return Err(TransactionError::WrongMessage);
            }
            self.handle_ack(now);
            return Ok(());
        }
        match self.state {
            // The TU has not answered yet: nothing to repeat (RFC 3261 §17.2.2).
            ServerState::Trying => {}
            ServerState::Proceeding | ServerState::Completed => {
                if let Some(last) = &self.last_response {
                    self.transmits.push_back(last.clone());
                }
            }
            // An INVITE retransmission after our 2xx is absorbed; Timer G resends the 2xx.
            ServerState::Accepted | ServerState::Confirmed | ServerState::Terminated => {}
        }
        Ok(())
    }

    /// The ACK for a 2xx carries its own branch, so the dialog layer finds it and reports it
    /// here; an ACK for a non-2xx arrives through `handle_message`.
    pub fn handle_ack(&mut self, now: Instant) {
        match self.state {
            ServerState::Completed => {
                self.state = ServerState::Confirmed;
                self.deadlines = Deadlines::default();
                match self.transport {
                    Transport::Unreliable => self.deadlines.linger = Some(now + self.timers.t4),
                    Transport::Reliable => self.terminate(),
                }
            }
            ServerState::Accepted => self.terminate(),
            _ => {}
        }
    }

    /// A response from the TU.
    pub fn handle_tu_response(&mut self, now: Instant, response: SipMessage) -> Result<(), TransactionError> {
        let Some(code) = response.status() else {
            return Err(TransactionError::WrongMessage);
        };
        self.handle_tu_response_bytes(now, code, response.to_bytes())
    }

    /// A response from the TU, already rendered: `code` is its status code. The node uses
    /// this for responses it composed itself, which need no parse on the way out (they start
    /// from `build_response`, whose output the fuzz entry point checks to parse).
    pub fn handle_tu_response_bytes(
        &mut self,
        now: Instant,
        code: u16,
        bytes: Vec<u8>,
    ) -> Result<(), TransactionError> {
        if !(100..=699).contains(&code) {
            return Err(TransactionError::WrongMessage);
        }
        let allowed = matches!(self.state, ServerState::Trying | ServerState::Proceeding);
        if !allowed {
            return Err(TransactionError::NotAllowedInState);
        }
        self.transmits.push_back(bytes.clone());
        self.last_response = Some(bytes);
        let unreliable = self.transport == Transport::Unreliable;
        match code {
            100..=199 => self.state = ServerState::Proceeding,
            200..=299 if self.invite => {
                self.state = ServerState::Accepted;
                // Timer G's schedule resends the 2xx over UDP until the ACK; Timer L gives up.
                if unreliable {
                    self.deadlines.retransmit = Some((now + self.timers.t1, self.timers.t1));
                }
                self.deadlines.give_up = Some(now + self.timers.sixty_four_t1());
            }
            _ if self.invite => {
                self.state = ServerState::Completed;
                if unreliable {
                    self.deadlines.retransmit = Some((now + self.timers.t1, self.timers.t1));
                }
                self.deadlines.give_up = Some(now + self.timers.sixty_four_t1());
            }
            _ => {
                self.state = ServerState::Completed;
                match self.transport {
                    // Timer J absorbs request retransmissions for 64·T1.
                    Transport::Unreliable => self.deadlines.linger = Some(now + self.timers.sixty_four_t1()),
                    Transport::Reliable => self.terminate(),
                }
            }
        }
        Ok(())
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((at, interval)) = self.deadlines.retransmit {
            if now >= at {
                if let Some(last) = &self.last_response {
                    self.transmits.push_back(last.clone());
                }
                let next = interval.saturating_mul(2).min(self.timers.t2);
                self.deadlines.retransmit = Some((now + next, next));
            }
        }
        if let Some(at) = self.deadlines.give_up {
            if now >= at {
                self.events.push_back(TransactionEvent::TimedOut);
                self.terminate();
            }
        }
        if let Some(at) = self.deadlines.linger {
            if now >= at {
                self.terminate();
            }
        }
    }

    fn terminate(&mut self) {
        if self.state != ServerState::Terminated {
            self.state = ServerState::Terminated;
            self.deadlines = Deadlines::default();
            self.events.push_back(TransactionEvent::Terminated);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TransactionEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.earliest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::build_response;

    const T1: Duration = Duration::from_millis(500);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn request(method: &str) -> SipMessage {
        let text = format!(
            "{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n\
Call-ID: call-1\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        );
        SipMessage::parse(text.as_bytes()).unwrap()
    }

    fn response(to: &SipMessage, code: u16) -> SipMessage {
        SipMessage::from_rsip(build_response(to, code, "b1", &[]).into()).unwrap()
    }

    /// Runs the clock forward to `until`, firing timers at their exact deadlines, and
    /// returns the instants at which something was transmitted.
    fn run_client(tx: &mut ClientTransaction, until: Instant) -> Vec<Instant> {
        let mut sent = Vec::new();
        while let Some(at) = tx.poll_timeout() {
            if at > until {
                break;
            }
            tx.handle_timeout(at);
            while tx.poll_transmit().is_some() {
                sent.push(at);
            }
        }
        sent
    }

    fn drain_events(events: impl FnMut() -> Option<TransactionEvent>) -> Vec<String> {
        std::iter::from_fn(events)
            .map(|e| match e {
                TransactionEvent::Response(r) => format!("response {}", r.status().unwrap_or(0)),
                TransactionEvent::TimedOut => "timed out".into(),
                TransactionEvent::Terminated => "terminated".into(),
            })
            .collect()
    }

    #[test]
    fn invite_client_retransmits_on_timer_a_until_timer_b() {
        let mut tx = ClientTransaction::new(request("INVITE"), Transport::Unreliable, Timers::default(), ms(0));
        assert!(tx.poll_transmit().is_some());
        let sent = run_client(&mut tx, ms(100_000));
        // Intervals T1, 2T1, 4T1, ... : sends at 1, 3, 7, 15, 31, 63 T1; B fires at 64 T1.
        let expected: Vec<Instant> = [1u32, 3, 7, 15, 31, 63].iter().map(|n| T1 * *n).collect();
        assert_eq!(sent, expected);
        assert_eq!(drain_events(|| tx.poll_event()), ["timed out", "terminated"]);
        assert_eq!(tx.state(), ClientState::Terminated);
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn non_invite_client_caps_timer_e_at_t2_and_times_out_on_f() {
        let mut tx = ClientTransaction::new(request("OPTIONS"), Transport::Unreliable, Timers::default(), ms(0));
        assert!(tx.poll_transmit().is_some());
        let sent = run_client(&mut tx, ms(100_000));
        // 500, 1500, 3500, then every 4 s (T2) until F at 32 s.
        let expected: Vec<Instant> = [500u64, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
            .iter()
            .map(|n| ms(*n))
            .collect();
        assert_eq!(sent, expected);
        assert_eq!(drain_events(|| tx.poll_event()), ["timed out", "terminated"]);
    }

    #[test]
    fn non_invite_client_in_proceeding_retransmits_every_t2() {
        let req = request("REGISTER");
        let mut tx = ClientTransaction::new(req.clone(), Transport::Unreliable, Timers::default(), ms(0));
        tx.poll_transmit();
        tx.handle_message(ms(100), response(&req, 100)).unwrap();
        assert_eq!(tx.state(), ClientState::Proceeding);
        tx.handle_timeout(ms(500));
        assert!(tx.poll_transmit().is_some());
        assert_eq!(tx.poll_timeout(), Some(ms(4500)));
        tx.handle_message(ms(600), response(&req, 200)).unwrap();
        assert_eq!(tx.state(), ClientState::Completed);
        // A retransmitted 200 is absorbed, not passed up again.
        tx.handle_message(ms(700), response(&req, 200)).unwrap();
        assert_eq!(drain_events(|| tx.poll_event()), ["response 100", "response 200"]);
        // Timer K = T4.
        assert_eq!(tx.poll_timeout(), Some(ms(5600)));
        tx.handle_timeout(ms(5600));
        assert_eq!(drain_events(|| tx.poll_event()), ["terminated"]);
    }

    #[test]
    fn invite_client_acks_a_non_2xx_and_re_acks_retransmissions_until_timer_d() {
        let req = request("INVITE");
        let mut tx = ClientTransaction::new(req.clone(), Transport::Unreliable, Timers::default(), ms(0));
        tx.poll_transmit();
        tx.handle_message(ms(50), response(&req, 180)).unwrap();
        // Proceeding stops Timer A.
        assert_eq!(tx.poll_timeout(), None);
        tx.handle_message(ms(900), response(&req, 486)).unwrap();
        let ack = SipMessage::parse(&tx.poll_transmit().unwrap()).unwrap();
        assert_eq!(ack.method(), Some(rsip::Method::Ack));
        assert_eq!(ack.cseq.seq, 1);
        assert_eq!(ack.branch(), Some("z9hG4bKabc"));
        assert_eq!(ack.to.tag.as_deref(), Some("b1"));
        tx.handle_message(ms(1000), response(&req, 486)).unwrap();
        assert!(
            tx.poll_transmit().is_some(),
            "the ACK is resent for a retransmitted 486"
        );
        assert_eq!(drain_events(|| tx.poll_event()), ["response 180", "response 486"]);
        assert_eq!(tx.poll_timeout(), Some(ms(900 + 32_000)));
        tx.handle_timeout(ms(32_900));
        assert_eq!(tx.state(), ClientState::Terminated);
    }

    #[test]
    fn invite_client_passes_2xx_retransmissions_up_until_timer_m() {
        let req = request("INVITE");
        let mut tx = ClientTransaction::new(req.clone(), Transport::Unreliable, Timers::default(), ms(0));
        tx.poll_transmit();
        tx.handle_message(ms(10), response(&req, 200)).unwrap();
        tx.handle_message(ms(510), response(&req, 200)).unwrap();
        assert!(tx.poll_transmit().is_none(), "the TU, not the transaction, ACKs a 2xx");
        assert_eq!(drain_events(|| tx.poll_event()), ["response 200", "response 200"]);
        tx.handle_timeout(ms(10) + T1 * 64);
        assert_eq!(tx.state(), ClientState::Terminated);
    }

    #[test]
    fn reliable_client_has_no_retransmissions_and_no_linger() {
        let req = request("INVITE");
        let mut tx = ClientTransaction::new(req.clone(), Transport::Reliable, Timers::default(), ms(0));
        tx.poll_transmit();
        assert_eq!(tx.poll_timeout(), Some(T1 * 64), "only Timer B runs over TCP");
        tx.handle_message(ms(10), response(&req, 404)).unwrap();
        assert!(tx.poll_transmit().is_some(), "the ACK");
        assert_eq!(tx.state(), ClientState::Terminated, "Timer D is zero over TCP");

        let req = request("BYE");
        let mut tx = ClientTransaction::new(req.clone(), Transport::Reliable, Timers::default(), ms(0));
        tx.poll_transmit();
        tx.handle_message(ms(10), response(&req, 200)).unwrap();
        assert_eq!(tx.state(), ClientState::Terminated, "Timer K is zero over TCP");
        assert!(tx.poll_transmit().is_none());
    }

    #[test]
    fn configurable_t1_scales_every_timer() {
        let timers = Timers {
            t1: ms(100),
            t2: ms(400),
            t4: ms(1000),
        };
        let mut tx = ClientTransaction::new(request("OPTIONS"), Transport::Unreliable, timers, ms(0));
        tx.poll_transmit();
        let sent = run_client(&mut tx, ms(60_000));
        assert_eq!(sent.first(), Some(&ms(100)));
        assert_eq!(sent.last(), Some(&ms(6300)));
        assert_eq!(drain_events(|| tx.poll_event()), ["timed out", "terminated"]);
    }

    #[test]
    fn only_an_invite_transaction_keeps_its_request_and_rendered_responses_are_checked() {
        let register = request("REGISTER");
        let mut tx = ServerTransaction::new(&register, Transport::Unreliable, Timers::default());
        assert!(tx.request().is_none(), "a non-INVITE keeps only its key and response");
        assert_eq!(
            tx.handle_tu_response_bytes(ms(0), 99, b"SIP/2.0 99 x\r\n\r\n".to_vec()),
            Err(TransactionError::WrongMessage)
        );
        let bytes = response(&register, 401).to_bytes();
        tx.handle_tu_response_bytes(ms(0), 401, bytes.clone()).unwrap();
        assert_eq!(tx.poll_transmit(), Some(bytes));
        assert_eq!(tx.state(), ServerState::Completed);
        let invite = request("INVITE");
        let tx = ServerTransaction::new(&invite, Transport::Unreliable, Timers::default());
        assert_eq!(tx.request().map(|r| r.call_id.clone()), Some(invite.call_id.clone()));
    }

    #[test]
    fn non_invite_server_absorbs_retransmissions_and_repeats_its_response_until_timer_j() {
        let req = request("REGISTER");
        let mut tx = ServerTransaction::new(&req, Transport::Unreliable, Timers::default());
        assert!(tx.poll_transmit().is_none(), "no automatic 100 for non-INVITE");
        tx.handle_message(ms(100), req.clone()).unwrap();
        assert!(tx.poll_transmit().is_none(), "nothing to repeat before the TU answers");
        tx.handle_tu_response(ms(200), response(&req, 200)).unwrap();
        let first = tx.poll_transmit().unwrap();
        tx.handle_message(ms(700), req.clone()).unwrap();
        assert_eq!(tx.poll_transmit(), Some(first), "the same 200 is re-sent");
        assert_eq!(
            tx.handle_tu_response(ms(800), response(&req, 500)),
            Err(TransactionError::NotAllowedInState)
        );
        assert_eq!(tx.poll_timeout(), Some(ms(200) + T1 * 64));
        tx.handle_timeout(ms(200) + T1 * 64);
        assert_eq!(tx.state(), ServerState::Terminated);
    }

    #[test]
    fn invite_server_retransmits_a_final_response_on_timer_g_until_the_ack() {
        let req = request("INVITE");
        let mut tx = ServerTransaction::new(&req, Transport::Unreliable, Timers::default());
        let trying = SipMessage::parse(&tx.poll_transmit().unwrap()).unwrap();
        assert_eq!(trying.status(), Some(100));
        tx.handle_message(ms(300), req.clone()).unwrap();
        assert_eq!(
            SipMessage::parse(&tx.poll_transmit().unwrap()).unwrap().status(),
            Some(100)
        );
        tx.handle_tu_response(ms(1000), response(&req, 603)).unwrap();
        tx.poll_transmit();
        let mut sent = Vec::new();
        while let Some(at) = tx.poll_timeout() {
            if at > ms(9000) {
                break;
            }
            tx.handle_timeout(at);
            while tx.poll_transmit().is_some() {
                sent.push(at);
            }
        }
        // G: T1, 2T1, 4T1, then capped at T2 = 4 s.
        assert_eq!(sent, [ms(1500), ms(2500), ms(4500), ms(8500)]);
        let ack = SipMessage::parse(&build_ack(&req, &response(&req, 603)).unwrap().to_bytes()).unwrap();
        tx.handle_message(ms(9000), ack.clone()).unwrap();
        assert_eq!(tx.state(), ServerState::Confirmed);
        tx.handle_message(ms(9100), ack).unwrap();
        assert!(tx.poll_transmit().is_none(), "ACKs are absorbed in Confirmed");
        assert_eq!(tx.poll_timeout(), Some(ms(9000) + Timers::default().t4), "Timer I = T4");
        tx.handle_timeout(ms(14_000));
        assert_eq!(tx.state(), ServerState::Terminated);
    }

    fn build_ack(req: &SipMessage, resp: &SipMessage) -> Option<SipMessage> {
        crate::sip::message::build_ack_for_non_2xx(req, resp)
    }

    #[test]
    fn invite_server_gives_up_on_timer_h_without_an_ack() {
        let req = request("INVITE");
        let mut tx = ServerTransaction::new(&req, Transport::Unreliable, Timers::default());
        tx.handle_tu_response(ms(0), response(&req, 486)).unwrap();
        while let Some(at) = tx.poll_timeout() {
            tx.handle_timeout(at);
        }
        assert_eq!(drain_events(|| tx.poll_event()), ["timed out", "terminated"]);
    }

    #[test]
    fn invite_server_retransmits_2xx_until_the_tu_reports_the_ack() {
        let req = request("INVITE");
        let mut tx = ServerTransaction::new(&req, Transport::Unreliable, Timers::default());
        tx.poll_transmit();
        tx.handle_tu_response(ms(0), response(&req, 200)).unwrap();
        tx.poll_transmit();
        tx.handle_timeout(ms(500));
        assert!(tx.poll_transmit().is_some());
        tx.handle_message(ms(600), req.clone()).unwrap();
        assert!(
            tx.poll_transmit().is_none(),
            "an INVITE retransmission after 2xx is absorbed"
        );
        tx.handle_ack(ms(700));
        assert_eq!(tx.state(), ServerState::Terminated);
    }

    #[test]
    fn reliable_invite_server_has_no_timer_g_and_no_timer_i() {
        let req = request("INVITE");
        let mut tx = ServerTransaction::new(&req, Transport::Reliable, Timers::default());
        tx.handle_tu_response(ms(0), response(&req, 480)).unwrap();
        assert_eq!(tx.poll_timeout(), Some(T1 * 64), "only Timer H");
        tx.handle_ack(ms(10));
        assert_eq!(tx.state(), ServerState::Terminated);

        let req = request("OPTIONS");
        let mut tx = ServerTransaction::new(&req, Transport::Reliable, Timers::default());
        tx.handle_tu_response(ms(0), response(&req, 200)).unwrap();
        assert_eq!(tx.state(), ServerState::Terminated, "Timer J is zero over TCP");
    }

    #[test]
    fn keys_fold_ack_into_invite_and_refuse_rfc_2543_branches() {
        let invite = request("INVITE");
        let ack = build_ack(&invite, &response(&invite, 404)).unwrap();
        assert_eq!(TransactionKey::of(&invite), TransactionKey::of(&ack));
        assert_ne!(TransactionKey::of(&invite), TransactionKey::of(&request("CANCEL")));
        let text = String::from_utf8(invite.to_bytes())
            .unwrap()
            .replace("z9hG4bKabc", "old2543");
        assert_eq!(TransactionKey::of(&SipMessage::parse(text.as_bytes()).unwrap()), None);
    }

    #[test]
    fn keys_are_equal_and_hash_alike_by_value_and_clones_share_one_copy() {
        use std::collections::HashMap;
        let invite = request("INVITE");
        let (a, b) = (
            TransactionKey::of(&invite).unwrap(),
            TransactionKey::of(&invite).unwrap(),
        );
        assert!(!Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a, b);
        let hasher = RandomState::new();
        assert_eq!(hasher.hash_one(&a), hasher.hash_one(&b));
        let mut map = HashMap::new();
        map.insert(a.clone(), 1);
        assert_eq!(map.get(&b), Some(&1));
        assert!(Arc::ptr_eq(&a.0, &a.clone().0));
        // Each part counts: the sent-by is compared case-folded, the branch exactly.
        assert_eq!((a.branch(), a.method()), ("z9hG4bKabc", "INVITE"));
        assert_ne!(a, TransactionKey::new("z9hG4bKABC", a.sent_by(), "INVITE"));
        assert_ne!(a, TransactionKey::new(a.branch(), "elsewhere.example.com", "INVITE"));
        assert_eq!(a, TransactionKey::new(a.branch(), a.sent_by(), "INVITE"));
        assert_eq!(
            a.cmp(&TransactionKey::new(a.branch(), a.sent_by(), "INVITE")),
            std::cmp::Ordering::Equal
        );
    }
}
