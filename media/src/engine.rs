//! The media engine: one thread that owns every leg's sockets, the relay core and the
//! conference mixers. It waits on all sockets with epoll, reads and writes in batches
//! (`recvmmsg`/`sendmmsg`), runs the mixers' 20 ms ticks from its monotonic clock, and talks
//! to the async world through a command queue (woken by an eventfd) and an event channel.
//! The decisions are in the sans-IO cores (`relay`, `mixer`); this file only moves bytes.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use domain::call::LegMedia;
use tokio::sync::{mpsc as tmpsc, oneshot};
use uuid::Uuid;

use crate::g711::Codec;
use crate::mixer::{Mixer, MixerEvent, MuteBy, Role, RoomConfig, FRAME, TICK_US};
use crate::relay::{Delivered, Relay, RelayEvent, Sink, SocketId};
use crate::rtp;
use crate::stats::Micros;
use crate::sys::{self, Epoll, EventFd, RecvBatch};
use crate::wav::WavWriter;

/// The most legs one engine holds (each has two sockets).
pub const MAX_LEGS: usize = 10_000;
/// Events queued for the control connection before new ones are dropped.
pub const EVENT_QUEUE: usize = 4_096;
const WAKE_TOKEN: u64 = u64::MAX;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The address legs' sockets bind to (and that SDP announces, unless `public_ip`).
    pub bind_ip: IpAddr,
    /// Announced in SDP when the node is behind NAT itself.
    pub public_ip: Option<IpAddr>,
    /// RTP port range; 0..0 binds ephemeral ports (tests).
    pub port_min: u16,
    pub port_max: u16,
    /// Recordings go under `<data_dir>/recordings/`.
    pub data_dir: PathBuf,
}

impl EngineConfig {
    pub fn announced_ip(&self) -> IpAddr {
        self.public_ip.unwrap_or(self.bind_ip)
    }
}

/// What the engine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    Dtmf {
        call_id: Uuid,
        leg_id: Uuid,
        digit: char,
    },
    Room {
        room_id: Uuid,
        event: MixerEvent,
    },
    /// A leg entered a room (the first one starts the room's session).
    Joined {
        room_id: Uuid,
        call_id: Uuid,
        leg_id: Uuid,
        role: Role,
    },
    /// The room asks for a participant's call to be hung up (the last host of a moderated
    /// room left); the mixer's `Disconnect` with the leg's call id, for the SIP node.
    Disconnect {
        room_id: Uuid,
        call_id: Uuid,
        leg_id: Uuid,
    },
    /// A leg left a room (hung up, kicked, or deleted).
    Left {
        room_id: Uuid,
        leg_id: Uuid,
    },
    RecordingStored {
        room_id: Uuid,
        path: PathBuf,
        duration_ms: u64,
        sha256: String,
    },
}

/// The local ports of a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegPorts {
    pub rtp: u16,
    pub rtcp: u16,
}

enum Request {
    AddLeg {
        call_id: Uuid,
        leg_id: Uuid,
        codec: Codec,
        remote: Option<SocketAddr>,
        reply: oneshot::Sender<io::Result<LegPorts>>,
    },
    UpdateLeg {
        leg_id: Uuid,
        codec: Codec,
        remote: Option<SocketAddr>,
        reply: oneshot::Sender<bool>,
    },
    Bridge {
        a: Uuid,
        b: Uuid,
        reply: oneshot::Sender<bool>,
    },
    DeleteCall {
        call_id: Uuid,
        reply: oneshot::Sender<Vec<LegMedia>>,
    },
    JoinRoom {
        room_id: Uuid,
        config: RoomConfig,
        leg_id: Uuid,
        role: Role,
        reply: oneshot::Sender<Result<(), String>>,
    },
    SetMuted {
        leg_id: Uuid,
        muted: bool,
        reply: oneshot::Sender<bool>,
    },
    LeaveRoom {
        leg_id: Uuid,
        reply: oneshot::Sender<bool>,
    },
    PlayPrompt {
        leg_id: Uuid,
        samples: Arc<Vec<i16>>,
        reply: oneshot::Sender<bool>,
    },
    LegPorts {
        leg_id: Uuid,
        reply: oneshot::Sender<Option<LegPorts>>,
    },
    Digit {
        call_id: Uuid,
        leg_id: Uuid,
        digit: char,
        reply: oneshot::Sender<bool>,
    },
    Stop,
}

/// A handle to the engine thread; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Request>,
    wake: Arc<EventFd>,
    pub config: Arc<EngineConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the media engine has stopped")]
    Stopped,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("{0}")]
    Refused(String),
}

impl Engine {
    /// Start the engine thread; events arrive on the returned receiver.
    pub fn start(config: EngineConfig) -> io::Result<(Engine, tmpsc::Receiver<EngineEvent>)> {
        let (tx, rx) = mpsc::channel();
        let (events_tx, events_rx) = tmpsc::channel(EVENT_QUEUE);
        let wake = Arc::new(EventFd::new()?);
        let epoll = Epoll::new()?;
        epoll.add(wake.raw(), WAKE_TOKEN)?;
        let config = Arc::new(config);
        let mut state = EngineState {
            config: config.clone(),
            relay: Relay::new(),
            sockets: Vec::new(),
            epoll,
            wake: wake.clone(),
            requests: rx,
            events: events_tx,
            rooms: HashMap::new(),
            leg_room: HashMap::new(),
            prompts: HashMap::new(),
            next_port: config.port_min,
            start: Instant::now(),
            next_tick: TICK_US,
            gso: std::env::var_os("LEDGERLINE_MEDIA_NO_GSO").is_none(),
            gso_scratch: Vec::with_capacity(sys::BATCH * rtp::MAX_PACKET),
        };
        std::thread::Builder::new()
            .name("media-engine".into())
            .spawn(move || state.run())?;
        Ok((Engine { tx, wake, config }, events_rx))
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| EngineError::Stopped)?;
        self.wake.wake();
        rx.await.map_err(|_| EngineError::Stopped)
    }

    pub async fn add_leg(
        &self,
        call_id: Uuid,
        leg_id: Uuid,
        codec: Codec,
        remote: Option<SocketAddr>,
    ) -> Result<LegPorts, EngineError> {
        Ok(self
            .ask(|reply| Request::AddLeg {
                call_id,
                leg_id,
                codec,
                remote,
                reply,
            })
            .await??)
    }

    pub async fn update_leg(
        &self,
        leg_id: Uuid,
        codec: Codec,
        remote: Option<SocketAddr>,
    ) -> Result<bool, EngineError> {
        self.ask(|reply| Request::UpdateLeg {
            leg_id,
            codec,
            remote,
            reply,
        })
        .await
    }

    pub async fn bridge(&self, a: Uuid, b: Uuid) -> Result<bool, EngineError> {
        self.ask(|reply| Request::Bridge { a, b, reply }).await
    }

    /// Remove every leg of a call; returns their statistics.
    pub async fn delete_call(&self, call_id: Uuid) -> Result<Vec<LegMedia>, EngineError> {
        self.ask(|reply| Request::DeleteCall { call_id, reply }).await
    }

    /// Put an existing leg into a room (the room's mixer starts with its first participant).
    pub async fn join_room(
        &self,
        room_id: Uuid,
        config: RoomConfig,
        leg_id: Uuid,
        role: Role,
    ) -> Result<(), EngineError> {
        self.ask(|reply| Request::JoinRoom {
            room_id,
            config,
            leg_id,
            role,
            reply,
        })
        .await?
        .map_err(EngineError::Refused)
    }

    pub async fn set_muted(&self, leg_id: Uuid, muted: bool) -> Result<bool, EngineError> {
        self.ask(|reply| Request::SetMuted { leg_id, muted, reply }).await
    }

    pub async fn leave_room(&self, leg_id: Uuid) -> Result<bool, EngineError> {
        self.ask(|reply| Request::LeaveRoom { leg_id, reply }).await
    }

    pub async fn play_prompt(&self, leg_id: Uuid, samples: Arc<Vec<i16>>) -> Result<bool, EngineError> {
        self.ask(|reply| Request::PlayPrompt { leg_id, samples, reply }).await
    }

    /// A digit a leg sent out of band (SIP INFO): handled like one its RTP carried as an
    /// RFC 4733 event (the room's `*6`, and [`EngineEvent::Dtmf`] for the IVR). False when
    /// the call has no such leg.
    pub async fn digit(&self, call_id: Uuid, leg_id: Uuid, digit: char) -> Result<bool, EngineError> {
        self.ask(|reply| Request::Digit {
            call_id,
            leg_id,
            digit,
            reply,
        })
        .await
    }

    /// The local ports of a leg, if it exists.
    pub async fn leg_ports(&self, leg_id: Uuid) -> Result<Option<LegPorts>, EngineError> {
        self.ask(|reply| Request::LegPorts { leg_id, reply }).await
    }

    pub fn stop(&self) {
        let _ = self.tx.send(Request::Stop);
        self.wake.wake();
    }
}

struct RoomRuntime {
    mixer: Mixer,
    recorder: Option<(WavWriter, PathBuf)>,
}

struct EngineState {
    config: Arc<EngineConfig>,
    relay: Relay,
    sockets: Vec<Option<UdpSocket>>,
    epoll: Epoll,
    wake: Arc<EventFd>,
    requests: mpsc::Receiver<Request>,
    events: tmpsc::Sender<EngineEvent>,
    rooms: HashMap<Uuid, RoomRuntime>,
    /// Leg index -> (room id, leg id).
    leg_room: HashMap<usize, Uuid>,
    prompts: HashMap<usize, (Arc<Vec<i16>>, usize)>,
    next_port: u16,
    start: Instant,
    next_tick: Micros,
    /// Whether the kernel takes UDP_SEGMENT (turned off at the first refusal... kept simple:
    /// a refused GSO send falls back to sendmmsg for that batch).
    gso: bool,
    gso_scratch: Vec<u8>,
}

/// How long the engine may wait for a socket before its next tick, `until_tick` away:
/// whole milliseconds (epoll's unit), rounded up, at most one tick.
fn idle_wait_ms(until_tick: Micros) -> i32 {
    until_tick.div_ceil(1000).min(TICK_US / 1000) as i32
}

impl EngineState {
    fn now(&self) -> Micros {
        self.start.elapsed().as_micros() as Micros
    }

    fn run(&mut self) {
        let mut batch = RecvBatch::default();
        let mut tokens = Vec::new();
        let mut out: Vec<(SocketId, usize, usize, SocketAddr)> = Vec::with_capacity(sys::BATCH);
        loop {
            let now = self.now();
            // Rounded up: rounded down, the last millisecond before each tick was a busy loop
            // of zero-timeout waits (about 5% of a core on an idle node).
            let timeout_ms = idle_wait_ms(self.next_tick.saturating_sub(now));
            if let Err(e) = self.epoll.wait(&mut tokens, timeout_ms) {
                tracing::error!("media engine: epoll failed: {e}");
                return;
            }
            for &token in &tokens {
                if token == WAKE_TOKEN {
                    self.wake.drain();
                    if !self.handle_requests() {
                        return;
                    }
                    continue;
                }
                let socket = token as SocketId;
                let Some(Some(sock)) = self.sockets.get(socket) else {
                    continue;
                };
                let fd = sock.as_raw_fd();
                while let Ok(n) = batch.recv(fd) {
                    let now = self.now();
                    out.clear();
                    for i in 0..n {
                        let Some(from) = batch.from[i] else { continue };
                        let len = batch.lens[i];
                        match self.relay.handle_datagram(socket, from, &mut batch.bufs[i], len, now) {
                            Delivered::Forward(t) => out.push((t.socket, i, t.len, t.to)),
                            Delivered::Room { leg, offset, len } => {
                                if let Some(room_id) = self.leg_room.get(&leg) {
                                    if let (Some(room), Some(l)) = (self.rooms.get_mut(room_id), self.relay.leg(leg)) {
                                        room.mixer.handle_audio(&l.leg_id, &batch.bufs[i][offset..offset + len]);
                                    }
                                }
                            }
                            Delivered::Dropped => {}
                        }
                    }
                    self.flush(&batch, &mut out);
                    self.relay_events();
                    if n < sys::BATCH {
                        break;
                    }
                }
            }
            let now = self.now();
            if now >= self.next_tick {
                // Skip ticks a stalled thread missed rather than bursting them.
                self.tick();
                self.next_tick += TICK_US;
                if self.next_tick + 10 * TICK_US < now {
                    self.next_tick = now + TICK_US;
                }
            }
        }
    }

    /// Send what a batch produced, grouped by the socket it leaves from and its destination:
    /// a run of equal-size datagrams to one address goes as one GSO send, the rest through
    /// `sendmmsg`.
    fn flush(&mut self, batch: &RecvBatch, out: &mut [(SocketId, usize, usize, SocketAddr)]) {
        out.sort_by_key(|o| (o.0, o.3));
        let mut start = 0;
        while start < out.len() {
            let (socket, to) = (out[start].0, out[start].3);
            let end = start + out[start..].iter().take_while(|o| o.0 == socket && o.3 == to).count();
            if let Some(Some(sock)) = self.sockets.get(socket) {
                let fd = sock.as_raw_fd();
                let segments: Vec<&[u8]> = out[start..end]
                    .iter()
                    .map(|(_, i, len, _)| &batch.bufs[*i][..*len])
                    .collect();
                let sent_gso =
                    self.gso && segments.len() > 1 && sys::send_gso(fd, &segments, to, &mut self.gso_scratch).is_ok();
                if !sent_gso {
                    let packets: Vec<(&[u8], SocketAddr)> = segments.iter().map(|s| (*s, to)).collect();
                    sys::send_batch(fd, &packets);
                }
            }
            start = end;
        }
    }

    fn emit(&self, event: EngineEvent) {
        if self.events.try_send(event).is_err() {
            tracing::warn!("media engine: event queue full or closed; an event was dropped");
        }
    }

    fn relay_events(&mut self) {
        while let Some(RelayEvent::Dtmf { call_id, leg_id, digit }) = self.relay.poll_event() {
            self.digit(call_id, leg_id, digit);
        }
    }

    /// A digit from a leg, whether its RTP carried it (RFC 4733) or its SIP dialog (INFO):
    /// the room's mixer sees it (`*6`), and it goes out as an event (the IVR collects codes).
    fn digit(&mut self, call_id: Uuid, leg_id: Uuid, digit: char) {
        if let Some(index) = self.relay.find(&leg_id) {
            if let Some(room) = self.leg_room.get(&index).and_then(|r| self.rooms.get_mut(r)) {
                room.mixer.handle_digit(&leg_id, digit);
            }
        }
        self.emit(EngineEvent::Dtmf { call_id, leg_id, digit });
        self.room_events();
    }

    fn send_frame(&mut self, index: usize, payload: &[u8]) {
        let Some(leg) = self.relay.leg_mut(index) else { return };
        let Some(to) = leg.remote_rtp else { return };
        let header = leg.next_header();
        leg.stats.sent(payload.len());
        let socket = leg.rtp_socket;
        let mut fixed = [0u8; rtp::RTP_HEADER_LEN];
        header.write(&mut fixed);
        let mut packet = [0u8; rtp::RTP_HEADER_LEN + FRAME];
        packet[..rtp::RTP_HEADER_LEN].copy_from_slice(&fixed);
        let len = rtp::RTP_HEADER_LEN + payload.len().min(FRAME);
        packet[rtp::RTP_HEADER_LEN..len].copy_from_slice(&payload[..len - rtp::RTP_HEADER_LEN]);
        if let Some(Some(sock)) = self.sockets.get(socket) {
            let _ = sock.send_to(&packet[..len], to);
        }
    }

    fn tick(&mut self) {
        let now = self.now();
        let room_ids: Vec<Uuid> = self.rooms.keys().copied().collect();
        for room_id in room_ids {
            let mut frames: Vec<(Uuid, [u8; FRAME])> = Vec::new();
            {
                let Some(room) = self.rooms.get_mut(&room_id) else {
                    continue;
                };
                room.mixer.tick(now);
                room.mixer
                    .for_each_output(|leg_id, _, frame| frames.push((leg_id, *frame)));
                if let (Some(pcm), Some((writer, _))) = (room.mixer.recording_frame(), room.recorder.as_mut()) {
                    if let Err(e) = writer.write(pcm) {
                        tracing::error!("recording of room {room_id}: {e}");
                    }
                }
            }
            for (leg_id, frame) in frames {
                if let Some(index) = self.relay.find(&leg_id) {
                    self.send_frame(index, &frame);
                }
            }
        }
        // Prompts to legs outside rooms.
        let playing: Vec<usize> = self.prompts.keys().copied().collect();
        for index in playing {
            let Some((samples, pos)) = self.prompts.get(&index).cloned() else {
                continue;
            };
            let Some(codec) = self.relay.leg(index).map(|l| l.codec) else {
                self.prompts.remove(&index);
                continue;
            };
            let mut frame = [codec.silence(); FRAME];
            let end = (pos + FRAME).min(samples.len());
            codec.encode_into(&samples[pos..end], &mut frame);
            self.send_frame(index, &frame);
            if end >= samples.len() {
                self.prompts.remove(&index);
            } else {
                self.prompts.insert(index, (samples, end));
            }
        }
        self.room_events();
    }

    /// Forward every room's events; finish the recording of a session that ended.
    fn room_events(&mut self) {
        let mut ended = Vec::new();
        for (room_id, room) in self.rooms.iter_mut() {
            while let Some(event) = room.mixer.poll_event() {
                if matches!(event, MixerEvent::SessionEnded { .. }) {
                    ended.push(*room_id);
                }
                // A disconnect names the leg's call, which the SIP node holding it hangs up.
                let event = match event {
                    MixerEvent::Disconnect { leg_id } => {
                        let call_id = self
                            .relay
                            .find(&leg_id)
                            .and_then(|i| self.relay.leg(i))
                            .map(|l| l.call_id);
                        match call_id {
                            Some(call_id) => EngineEvent::Disconnect {
                                room_id: *room_id,
                                call_id,
                                leg_id,
                            },
                            None => continue,
                        }
                    }
                    event => EngineEvent::Room {
                        room_id: *room_id,
                        event,
                    },
                };
                if self.events.try_send(event).is_err() {
                    tracing::warn!("media engine: event queue full; a room event was dropped");
                }
            }
        }
        for room_id in ended {
            let Some(room) = self.rooms.remove(&room_id) else {
                continue;
            };
            self.leg_room.retain(|_, r| *r != room_id);
            if let Some((writer, _)) = room.recorder {
                match writer.finish() {
                    Ok(done) => self.emit(EngineEvent::RecordingStored {
                        room_id,
                        path: done.path,
                        duration_ms: done.duration_ms,
                        sha256: done.sha256,
                    }),
                    Err(e) => tracing::error!("recording of room {room_id}: {e}"),
                }
            }
        }
    }

    fn bind_pair(&mut self) -> io::Result<(UdpSocket, UdpSocket)> {
        let ip = self.config.bind_ip;
        if self.config.port_min == 0 {
            return Ok((UdpSocket::bind((ip, 0))?, UdpSocket::bind((ip, 0))?));
        }
        let (min, max) = (self.config.port_min & !1, self.config.port_max);
        let span = ((max.saturating_sub(min)) / 2).max(1);
        for _ in 0..span {
            let port = self.next_port.max(min) & !1;
            self.next_port = if port.saturating_add(2) >= max { min } else { port + 2 };
            let Ok(rtp) = UdpSocket::bind((ip, port)) else { continue };
            let Ok(rtcp) = UdpSocket::bind((ip, port + 1)) else {
                continue;
            };
            return Ok((rtp, rtcp));
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "no free RTP port pair in the range",
        ))
    }

    fn register(&mut self, sock: UdpSocket) -> io::Result<SocketId> {
        sock.set_nonblocking(true)?;
        let id = self
            .sockets
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.sockets.len());
        self.epoll.add(sock.as_raw_fd(), id as u64)?;
        if id == self.sockets.len() {
            self.sockets.push(Some(sock));
        } else {
            self.sockets[id] = Some(sock);
        }
        Ok(id)
    }

    fn close(&mut self, socket: SocketId) {
        if let Some(sock) = self.sockets.get_mut(socket).and_then(Option::take) {
            self.epoll.remove(sock.as_raw_fd());
        }
    }

    fn add_leg(
        &mut self,
        call_id: Uuid,
        leg_id: Uuid,
        codec: Codec,
        remote: Option<SocketAddr>,
    ) -> io::Result<LegPorts> {
        if self.relay.find(&leg_id).is_some() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "the leg exists"));
        }
        if self.sockets.iter().flatten().count() >= 2 * MAX_LEGS {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "the media node is full"));
        }
        let (rtp, rtcp) = self.bind_pair()?;
        let ports = LegPorts {
            rtp: rtp.local_addr()?.port(),
            rtcp: rtcp.local_addr()?.port(),
        };
        let rtp_id = self.register(rtp)?;
        let rtcp_id = match self.register(rtcp) {
            Ok(id) => id,
            Err(e) => {
                self.close(rtp_id);
                return Err(e);
            }
        };
        self.relay.add_leg(call_id, leg_id, codec, rtp_id, rtcp_id, remote);
        Ok(ports)
    }

    fn leave_room(&mut self, index: usize) -> bool {
        let Some(room_id) = self.leg_room.remove(&index) else {
            return false;
        };
        let Some(leg_id) = self.relay.leg(index).map(|l| l.leg_id) else {
            return false;
        };
        if let Some(room) = self.rooms.get_mut(&room_id) {
            room.mixer.leave(&leg_id);
        }
        self.emit(EngineEvent::Left { room_id, leg_id });
        self.relay.set_sink(index, Sink::Nowhere);
        self.room_events();
        true
    }

    /// Returns false when the engine must stop.
    fn handle_requests(&mut self) -> bool {
        while let Ok(request) = self.requests.try_recv() {
            match request {
                Request::Stop => {
                    let rooms: Vec<Uuid> = self.rooms.keys().copied().collect();
                    for room_id in rooms {
                        if let Some(room) = self.rooms.remove(&room_id) {
                            if let Some((writer, _)) = room.recorder {
                                let _ = writer.finish();
                            }
                        }
                    }
                    return false;
                }
                Request::AddLeg {
                    call_id,
                    leg_id,
                    codec,
                    remote,
                    reply,
                } => {
                    let _ = reply.send(self.add_leg(call_id, leg_id, codec, remote));
                }
                Request::UpdateLeg {
                    leg_id,
                    codec,
                    remote,
                    reply,
                } => {
                    let found = self.relay.find(&leg_id).and_then(|i| self.relay.leg_mut(i)).map(|leg| {
                        leg.codec = codec;
                        if !leg.latched && remote.is_some() {
                            leg.remote_rtp = remote;
                            leg.remote_rtcp = remote.map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1)));
                        }
                    });
                    let _ = reply.send(found.is_some());
                }
                Request::Bridge { a, b, reply } => {
                    let ok = match (self.relay.find(&a), self.relay.find(&b)) {
                        (Some(a), Some(b)) if a != b => {
                            self.relay.bridge(a, b);
                            true
                        }
                        _ => false,
                    };
                    let _ = reply.send(ok);
                }
                Request::DeleteCall { call_id, reply } => {
                    let mut media = Vec::new();
                    for index in self.relay.legs_of_call(&call_id) {
                        self.leave_room(index);
                        self.prompts.remove(&index);
                        if let Some(leg) = self.relay.remove_leg(index) {
                            self.close(leg.rtp_socket);
                            self.close(leg.rtcp_socket);
                            media.push(leg.stats.to_leg_media(leg.leg_id, leg.codec.name()));
                        }
                    }
                    let _ = reply.send(media);
                }
                Request::JoinRoom {
                    room_id,
                    config,
                    leg_id,
                    role,
                    reply,
                } => {
                    let result = self.join_room(room_id, config, leg_id, role);
                    let _ = reply.send(result);
                }
                Request::SetMuted { leg_id, muted, reply } => {
                    let ok = self
                        .relay
                        .find(&leg_id)
                        .and_then(|i| self.leg_room.get(&i))
                        .and_then(|r| self.rooms.get_mut(r))
                        .is_some_and(|room| room.mixer.set_muted(&leg_id, muted, MuteBy::Other));
                    self.room_events();
                    let _ = reply.send(ok);
                }
                Request::LeaveRoom { leg_id, reply } => {
                    let ok = self.relay.find(&leg_id).is_some_and(|i| self.leave_room(i));
                    let _ = reply.send(ok);
                }
                Request::LegPorts { leg_id, reply } => {
                    let ports = self
                        .relay
                        .find(&leg_id)
                        .and_then(|i| self.relay.leg(i))
                        .and_then(|leg| {
                            let port = |s: SocketId| {
                                self.sockets
                                    .get(s)
                                    .and_then(Option::as_ref)
                                    .and_then(|x| x.local_addr().ok())
                                    .map(|a| a.port())
                            };
                            Some(LegPorts {
                                rtp: port(leg.rtp_socket)?,
                                rtcp: port(leg.rtcp_socket)?,
                            })
                        });
                    let _ = reply.send(ports);
                }
                Request::Digit {
                    call_id,
                    leg_id,
                    digit,
                    reply,
                } => {
                    // Only the call's own leg: a SIP node speaks for the calls it holds.
                    let ours = self
                        .relay
                        .find(&leg_id)
                        .and_then(|i| self.relay.leg(i))
                        .is_some_and(|l| l.call_id == call_id);
                    if ours {
                        self.digit(call_id, leg_id, digit);
                    }
                    let _ = reply.send(ours);
                }
                Request::PlayPrompt { leg_id, samples, reply } => {
                    let ok = match self.relay.find(&leg_id) {
                        Some(index) => {
                            self.prompts.insert(index, (samples, 0));
                            true
                        }
                        None => false,
                    };
                    let _ = reply.send(ok);
                }
            }
        }
        true
    }

    fn join_room(&mut self, room_id: Uuid, config: RoomConfig, leg_id: Uuid, role: Role) -> Result<(), String> {
        let index = self.relay.find(&leg_id).ok_or("no such leg")?;
        if self.leg_room.contains_key(&index) {
            return Err("the leg is already in a room".into());
        }
        let (codec, call_id) = self
            .relay
            .leg(index)
            .map(|l| (l.codec, l.call_id))
            .ok_or("no such leg")?;
        if !self.rooms.contains_key(&room_id) {
            let recorder = if config.record {
                let path = self
                    .config
                    .data_dir
                    .join("recordings")
                    .join(format!("{room_id}-{}.wav", Uuid::new_v4()));
                match WavWriter::create(&path) {
                    Ok(w) => Some((w, path)),
                    Err(e) => {
                        tracing::error!("cannot record room {room_id}: {e}");
                        None
                    }
                }
            } else {
                None
            };
            self.rooms.insert(
                room_id,
                RoomRuntime {
                    mixer: Mixer::new(config),
                    recorder,
                },
            );
        }
        let room = self.rooms.get_mut(&room_id).ok_or("room vanished")?;
        room.mixer.join(leg_id, role, codec).map_err(|e| e.to_string())?;
        self.leg_room.insert(index, room_id);
        self.relay.set_sink(index, Sink::Room);
        self.emit(EngineEvent::Joined {
            room_id,
            call_id,
            leg_id,
            role,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_waits_whole_milliseconds_rounded_up_until_its_tick() {
        let cases = [
            (0, 0),
            (1, 1),
            (999, 1),
            (1_000, 1),
            (1_001, 2),
            (19_999, 20),
            (20_000, 20),
            (90_000, 20),
        ];
        for (until_tick, wait) in cases {
            assert_eq!(idle_wait_ms(until_tick), wait, "{until_tick} us before the tick");
        }
    }
}
