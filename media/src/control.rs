//! The control protocol between SIP nodes and media nodes (in the spirit of rtpengine's ng
//! protocol, so the two roles can run on different machines): JSON, one object per line, over
//! TCP. A request carries an `id` and a `cmd`; its response carries the same `id`. Events the
//! SIP node must act on (DTMF digits, a participant to disconnect) arrive unprompted on the
//! same connection as objects with an `event` field.
//!
//! - `offer {call_id, leg_id, sdp, peer_leg_id?}`: anchors the caller's leg and the leg toward
//!   the callee; answers with the SDP to send to the callee (our address, the callee side's port).
//!   For a call already anchored it is a new offer (a re-INVITE: hold, resume) from `leg_id`,
//!   either of the call's two legs: that leg's codec and address are updated, and the answer is
//!   the SDP for the other side (our address, the other leg's port).
//! - `answer {call_id, leg_id, sdp}`: the SDP answering the last offer, from the other leg;
//!   answers with the SDP for the side that offered.
//! - `delete {call_id}`: frees the call's ports; answers with each leg's statistics.
//! - `conference_join {room_id, call_id, leg_id, sdp, role}`: anchors the leg in the room.
//! - `conference_leave {leg_id}`, `mute {leg_id, muted}`, `play_prompt {call_id, leg_id, sdp?, prompt}`.
//! - `conference_ivr {call_id, leg_id, sdp, tenant_id, access_number}`: a caller of a room's
//!   access number. Anchors the leg (answers with the SDP for the caller), plays
//!   `enter-code` and collects RFC 4733 digits: a room's host or guest code (of that tenant
//!   and access number) joins the leg to the room with that role; a wrong code plays
//!   `wrong-code`, and the [`MAX_CODE_ATTEMPTS`]th wrong one (or [`IVR_TIMEOUT`] without a
//!   room) ends the IVR with the event `leg_ended {call_id, leg_id}` (the SIP node hangs up
//!   and deletes the call).
//! - `dtmf {call_id, leg_id, digit}`: a digit the SIP node received out of band (SIP INFO),
//!   handled as if the leg's RTP had carried it as an RFC 4733 event: the IVR collects it,
//!   a room sees `*6`.
//!
//! Events: `disconnect {room_id, call_id, leg_id, reason}` asks the SIP node holding the call
//! to hang it up, the participant being out of the room already (`kicked` through the log,
//! or `conference_ended`: the last host of a moderated room left); `leg_ended` as above.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use domain::call::LegMedia;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

use crate::engine::{Engine, EngineError, EngineEvent};
use crate::g711::Codec;
use crate::mixer::{MixerEvent, Role, RoomConfig};
use crate::sdp;

/// The longest request line accepted.
pub const MAX_LINE: usize = 64 * 1024;
/// Calls one media node anchors at once (offers beyond it are refused).
pub const MAX_CALLS: usize = 5_000;
/// Wrong access codes a caller may enter before the IVR hangs up.
pub const MAX_CODE_ATTEMPTS: u32 = 3;
/// How long a caller may stay in the access-number IVR without opening a room.
pub const IVR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "cmd", deny_unknown_fields)]
pub enum Command {
    Offer {
        call_id: Uuid,
        leg_id: Uuid,
        sdp: String,
        #[serde(default)]
        peer_leg_id: Option<Uuid>,
    },
    Answer {
        call_id: Uuid,
        leg_id: Uuid,
        sdp: String,
    },
    Delete {
        call_id: Uuid,
    },
    ConferenceJoin {
        room_id: Uuid,
        call_id: Uuid,
        leg_id: Uuid,
        sdp: String,
        role: ParticipantRole,
    },
    ConferenceLeave {
        leg_id: Uuid,
    },
    Mute {
        leg_id: Uuid,
        muted: bool,
    },
    /// Play a named prompt (`media/prompts/`) to a leg; with `sdp`, anchor the leg first
    /// (an IVR leg, such as the conference access number collecting a code).
    PlayPrompt {
        call_id: Uuid,
        leg_id: Uuid,
        #[serde(default)]
        sdp: Option<String>,
        prompt: String,
    },
    /// A caller of a conference access number: anchor the leg and collect a room's code.
    ConferenceIvr {
        call_id: Uuid,
        leg_id: Uuid,
        sdp: String,
        tenant_id: Uuid,
        access_number: String,
    },
    /// A digit received out of band (SIP INFO) for a leg: as an RFC 4733 event of its RTP.
    Dtmf {
        call_id: Uuid,
        leg_id: Uuid,
        digit: char,
    },
}

/// The DTMF digits (RFC 4733 events 0–15).
pub fn is_dtmf_digit(digit: char) -> bool {
    matches!(digit, '0'..='9' | '*' | '#' | 'A'..='D')
}

/// Why the media node asks for a participant's call to be hung up.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// Kicked through the log (`ParticipantKickRequested`).
    Kicked,
    /// The session ended around the participant (the last host of a moderated room left).
    ConferenceEnded,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantRole {
    Host,
    Guest,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    pub id: u64,
    #[serde(flatten)]
    pub command: Command,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Response {
    pub id: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stats: Vec<LegMedia>,
}

/// What the media node tells SIP nodes without being asked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum ControlEvent {
    Dtmf {
        call_id: Uuid,
        leg_id: Uuid,
        digit: char,
    },
    /// Hang this leg's call up: it is out of the room already (kicked, or the last host of
    /// a moderated room left).
    Disconnect {
        room_id: Uuid,
        call_id: Uuid,
        leg_id: Uuid,
        reason: DisconnectReason,
    },
    SessionEnded {
        room_id: Uuid,
    },
    /// The media node is done with a leg it answered (an access-number caller who entered
    /// too many wrong codes): the SIP node hangs the call up.
    LegEnded {
        call_id: Uuid,
        leg_id: Uuid,
    },
}

/// One line on the wire from the server: a response or an event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Incoming {
    Event(ControlEvent),
    Response(Response),
}

/// How a room is set up, looked up by the server when a leg joins (from the log).
pub type RoomLookup = Arc<dyn Fn(Uuid) -> Option<RoomConfig> + Send + Sync>;

/// The digits a caller has entered on a tenant's access number: `None` when they are wrong,
/// `Some(None)` when they begin a code, `Some(Some(room, role))` when they open a room.
pub type CodeLookup = Arc<dyn Fn(Uuid, &str, &str) -> Option<Option<(Uuid, Role)>> + Send + Sync>;

/// A leg in the access-number IVR, collecting a code.
#[derive(Debug, Clone)]
struct Ivr {
    call_id: Uuid,
    tenant_id: Uuid,
    access_number: String,
    digits: String,
    wrong: u32,
}

/// What one digit does to an IVR leg.
enum IvrStep {
    Wait,
    Join(Uuid, Role),
    Retry,
    End(Uuid),
}

/// One anchored call: its two legs and the last offer.
#[derive(Debug, Clone)]
struct Anchored {
    legs: [Uuid; 2],
    /// The leg whose offer is being answered.
    offerer: Uuid,
    /// The offer's codecs, in its order of preference.
    offered: Vec<Codec>,
}

impl Anchored {
    fn other(&self, leg_id: Uuid) -> Option<Uuid> {
        match self.legs {
            [a, b] if a == leg_id => Some(b),
            [a, b] if b == leg_id => Some(a),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Calls {
    calls: HashMap<Uuid, Anchored>,
}

/// The server side: accepts SIP nodes' connections and runs their commands on the engine.
#[derive(Clone)]
pub struct Server {
    engine: Engine,
    rooms: RoomLookup,
    events: broadcast::Sender<ControlEvent>,
    calls: Arc<Mutex<Calls>>,
    codes: Option<CodeLookup>,
    /// Legs in the access-number IVR, by leg id.
    ivr: Arc<Mutex<HashMap<Uuid, Ivr>>>,
    ivr_timeout: std::time::Duration,
}

impl Server {
    pub fn new(engine: Engine, rooms: RoomLookup) -> Self {
        let (events, _) = broadcast::channel(1024);
        Server {
            engine,
            rooms,
            events,
            calls: Arc::default(),
            codes: None,
            ivr: Arc::default(),
            ivr_timeout: IVR_TIMEOUT,
        }
    }

    /// How long a caller may stay in the IVR ([`IVR_TIMEOUT`] unless set; tests shorten it).
    pub fn with_ivr_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.ivr_timeout = timeout;
        self
    }

    /// Answer `conference_ivr` with rooms' codes looked up here (without it, it is refused).
    pub fn with_codes(mut self, codes: CodeLookup) -> Self {
        self.codes = Some(codes);
        self
    }

    /// A digit from a leg: when the leg is in the IVR, it adds to the code; a complete code
    /// joins the room, a wrong one is retried, the last wrong one ends the leg.
    fn ivr_digit(&self, leg_id: Uuid, digit: char) {
        let Some(codes) = self.codes.clone() else { return };
        let step = {
            let Ok(mut ivr) = self.ivr.lock() else { return };
            let Some(session) = ivr.get_mut(&leg_id) else { return };
            session.digits.push(digit);
            match codes(session.tenant_id, &session.access_number, &session.digits) {
                Some(Some((room_id, role))) => {
                    ivr.remove(&leg_id);
                    IvrStep::Join(room_id, role)
                }
                Some(None) => IvrStep::Wait,
                None => {
                    session.wrong += 1;
                    session.digits.clear();
                    if session.wrong >= MAX_CODE_ATTEMPTS {
                        let call_id = session.call_id;
                        ivr.remove(&leg_id);
                        IvrStep::End(call_id)
                    } else {
                        IvrStep::Retry
                    }
                }
            }
        };
        let server = self.clone();
        // The engine is asked from a task of its own: this runs on the engine's event path.
        tokio::spawn(async move {
            match step {
                IvrStep::Wait => {}
                IvrStep::Join(room_id, role) => {
                    let Some(config) = (server.rooms)(room_id) else {
                        tracing::warn!(%room_id, "IVR: the room is gone");
                        return;
                    };
                    if let Err(e) = server.engine.join_room(room_id, config, leg_id, role).await {
                        tracing::warn!(%room_id, %leg_id, error = %e, "IVR: joining the room failed");
                    }
                }
                IvrStep::Retry => {
                    if let Some(samples) = crate::prompts::samples("wrong-code") {
                        let _ = server.engine.play_prompt(leg_id, Arc::new(samples)).await;
                    }
                }
                IvrStep::End(call_id) => server.publish(ControlEvent::LegEnded { call_id, leg_id }),
            }
        });
    }

    /// Send an event to every connected SIP node.
    pub fn publish(&self, event: ControlEvent) {
        let _ = self.events.send(event);
    }

    /// Route the engine's events: what SIP nodes act on goes to every control connection;
    /// everything comes out of the returned receiver (for the log writer).
    pub fn forward_events(&self, mut events: mpsc::Receiver<EngineEvent>) -> mpsc::Receiver<EngineEvent> {
        let (tx, rx) = mpsc::channel(crate::engine::EVENT_QUEUE);
        let server = self.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match &event {
                    EngineEvent::Dtmf { call_id, leg_id, digit } => {
                        server.ivr_digit(*leg_id, *digit);
                        server.publish(ControlEvent::Dtmf {
                            call_id: *call_id,
                            leg_id: *leg_id,
                            digit: *digit,
                        })
                    }
                    EngineEvent::Disconnect {
                        room_id,
                        call_id,
                        leg_id,
                    } => server.publish(ControlEvent::Disconnect {
                        room_id: *room_id,
                        call_id: *call_id,
                        leg_id: *leg_id,
                        reason: DisconnectReason::ConferenceEnded,
                    }),
                    EngineEvent::Room {
                        room_id,
                        event: MixerEvent::SessionEnded { .. },
                    } => server.publish(ControlEvent::SessionEnded { room_id: *room_id }),
                    _ => {}
                }
                if tx.try_send(event).is_err() {
                    tracing::warn!("media: event queue to the log is full; an event was dropped");
                }
            }
        });
        rx
    }

    /// Accept connections until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let server = self.clone();
            tokio::spawn(async move {
                if let Err(e) = server.connection(stream).await {
                    tracing::debug!("control connection from {peer} closed: {e}");
                }
            });
        }
    }

    async fn connection(self, stream: TcpStream) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut events = self.events.subscribe();
        let mut line = Vec::new();
        loop {
            tokio::select! {
                n = read_line(&mut reader, &mut line) => {
                    if n? == 0 {
                        return Ok(());
                    }
                    let response = match serde_json::from_slice::<Request>(&line) {
                        Ok(request) => self.handle(request).await,
                        Err(e) => Response { id: 0, ok: false, error: Some(format!("bad request: {e}")), ..Default::default() },
                    };
                    write_json(&mut write, &response).await?;
                }
                event = events.recv() => {
                    match event {
                        Ok(event) => write_json(&mut write, &event).await?,
                        Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!("control: {n} events dropped for a slow SIP node"),
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    }
                }
            }
        }
    }

    pub async fn handle(&self, request: Request) -> Response {
        let id = request.id;
        match self.execute(request.command).await {
            Ok((sdp, stats)) => Response {
                id,
                ok: true,
                error: None,
                sdp,
                stats,
            },
            Err(e) => Response {
                id,
                ok: false,
                error: Some(e),
                ..Default::default()
            },
        }
    }

    fn ip(&self) -> std::net::IpAddr {
        self.engine.config.announced_ip()
    }

    async fn execute(&self, command: Command) -> Result<(Option<String>, Vec<LegMedia>), String> {
        let err = |e: EngineError| e.to_string();
        match command {
            Command::Offer {
                call_id,
                leg_id,
                sdp: offer,
                peer_leg_id,
            } => {
                let audio = sdp::parse(&offer).map_err(|e| e.to_string())?;
                let existing = self.calls.lock().map_err(|_| "poisoned")?.calls.get(&call_id).cloned();
                if let Some(anchored) = existing {
                    return self.reoffer(call_id, anchored, leg_id, &offer, &audio).await;
                }
                let peer = peer_leg_id.unwrap_or_else(|| Uuid::new_v5(&call_id, leg_id.as_bytes()));
                if peer == leg_id {
                    return Err("the peer leg must differ from the leg".into());
                }
                if self.calls.lock().map_err(|_| "poisoned")?.calls.len() >= MAX_CALLS {
                    return Err("the media node is full".into());
                }
                self.engine
                    .add_leg(call_id, leg_id, audio.preferred(), audio.remote)
                    .await
                    .map_err(err)?;
                let ports = match self.engine.add_leg(call_id, peer, audio.preferred(), None).await {
                    Ok(ports) => ports,
                    Err(e) => {
                        let _ = self.engine.delete_call(call_id).await;
                        return Err(e.to_string());
                    }
                };
                self.engine.bridge(leg_id, peer).await.map_err(err)?;
                self.calls.lock().map_err(|_| "poisoned")?.calls.insert(
                    call_id,
                    Anchored {
                        legs: [leg_id, peer],
                        offerer: leg_id,
                        offered: audio.codecs.clone(),
                    },
                );
                let sdp = sdp::rewrite(&offer, self.ip(), ports.rtp, ports.rtcp, None).map_err(|e| e.to_string())?;
                Ok((Some(sdp), vec![]))
            }
            Command::Answer {
                call_id,
                leg_id,
                sdp: answer,
            } => {
                let audio = sdp::parse(&answer).map_err(|e| e.to_string())?;
                let anchored = self
                    .calls
                    .lock()
                    .map_err(|_| "poisoned")?
                    .calls
                    .get(&call_id)
                    .cloned()
                    .ok_or("no such call")?;
                let offerer = anchored.offerer;
                if anchored.other(leg_id) != Some(offerer) {
                    return Err("the answer must come from the leg that did not offer".into());
                }
                let codec = audio.preferred();
                self.engine.update_leg(leg_id, codec, audio.remote).await.map_err(err)?;
                // The offerer keeps the answer's codec when it offered it; otherwise we transcode.
                let offerer_codec = if anchored.offered.contains(&codec) {
                    codec
                } else {
                    anchored.offered[0]
                };
                self.engine
                    .update_leg(offerer, offerer_codec, None)
                    .await
                    .map_err(err)?;
                let ports = self.leg_ports(call_id, offerer).await?;
                let sdp = sdp::rewrite(&answer, self.ip(), ports.0, ports.1, Some(offerer_codec))
                    .map_err(|e| e.to_string())?;
                Ok((Some(sdp), vec![]))
            }
            Command::Delete { call_id } => {
                self.calls.lock().map_err(|_| "poisoned")?.calls.remove(&call_id);
                self.ivr
                    .lock()
                    .map_err(|_| "poisoned")?
                    .retain(|_, s| s.call_id != call_id);
                let stats = self.engine.delete_call(call_id).await.map_err(err)?;
                if stats.is_empty() {
                    return Err("no such call".into());
                }
                Ok((None, stats))
            }
            Command::ConferenceJoin {
                room_id,
                call_id,
                leg_id,
                sdp: offer,
                role,
            } => {
                let audio = sdp::parse(&offer).map_err(|e| e.to_string())?;
                let config = (self.rooms)(room_id).ok_or("no such room")?;
                let codec = audio.preferred();
                let ports = match self.existing_ports(call_id, leg_id).await {
                    Some(p) => p,
                    None => {
                        let p = self
                            .engine
                            .add_leg(call_id, leg_id, codec, audio.remote)
                            .await
                            .map_err(err)?;
                        (p.rtp, p.rtcp)
                    }
                };
                let role = match role {
                    ParticipantRole::Host => Role::Host,
                    ParticipantRole::Guest => Role::Guest,
                };
                self.engine
                    .join_room(room_id, config, leg_id, role)
                    .await
                    .map_err(err)?;
                let sdp = sdp::rewrite(&offer, self.ip(), ports.0, ports.1, Some(codec)).map_err(|e| e.to_string())?;
                Ok((Some(sdp), vec![]))
            }
            Command::ConferenceLeave { leg_id } => match self.engine.leave_room(leg_id).await.map_err(err)? {
                true => Ok((None, vec![])),
                false => Err("the leg is in no room".into()),
            },
            Command::Mute { leg_id, muted } => match self.engine.set_muted(leg_id, muted).await.map_err(err)? {
                true => Ok((None, vec![])),
                false => Err("the leg is in no room".into()),
            },
            Command::PlayPrompt {
                call_id,
                leg_id,
                sdp: offer,
                prompt,
            } => {
                let samples = crate::prompts::samples(&prompt).ok_or("no such prompt")?;
                let mut answer = None;
                if let Some(offer) = offer {
                    let audio = sdp::parse(&offer).map_err(|e| e.to_string())?;
                    let ports = match self.existing_ports(call_id, leg_id).await {
                        Some(p) => p,
                        None => {
                            let p = self
                                .engine
                                .add_leg(call_id, leg_id, audio.preferred(), audio.remote)
                                .await
                                .map_err(err)?;
                            (p.rtp, p.rtcp)
                        }
                    };
                    answer = Some(
                        sdp::rewrite(&offer, self.ip(), ports.0, ports.1, Some(audio.preferred()))
                            .map_err(|e| e.to_string())?,
                    );
                }
                match self.engine.play_prompt(leg_id, Arc::new(samples)).await.map_err(err)? {
                    true => Ok((answer, vec![])),
                    false => Err("no such leg".into()),
                }
            }
            Command::ConferenceIvr {
                call_id,
                leg_id,
                sdp: offer,
                tenant_id,
                access_number,
            } => {
                self.conference_ivr(call_id, leg_id, &offer, tenant_id, access_number)
                    .await
            }
            Command::Dtmf { call_id, leg_id, digit } => {
                if !is_dtmf_digit(digit) {
                    return Err("not a DTMF digit".into());
                }
                match self.engine.digit(call_id, leg_id, digit).await.map_err(err)? {
                    true => Ok((None, vec![])),
                    false => Err("no such leg".into()),
                }
            }
        }
    }

    /// A caller of an access number: anchor the leg, prompt for the code, collect it.
    async fn conference_ivr(
        &self,
        call_id: Uuid,
        leg_id: Uuid,
        offer: &str,
        tenant_id: Uuid,
        access_number: String,
    ) -> Result<(Option<String>, Vec<LegMedia>), String> {
        if self.codes.is_none() {
            return Err("this media node has no conference rooms".into());
        }
        let audio = sdp::parse(offer).map_err(|e| e.to_string())?;
        if self.ivr.lock().map_err(|_| "poisoned")?.len() >= MAX_CALLS {
            return Err("the media node is full".into());
        }
        let codec = audio.preferred();
        let ports = self
            .engine
            .add_leg(call_id, leg_id, codec, audio.remote)
            .await
            .map_err(|e| e.to_string())?;
        self.ivr.lock().map_err(|_| "poisoned")?.insert(
            leg_id,
            Ivr {
                call_id,
                tenant_id,
                access_number,
                digits: String::new(),
                wrong: 0,
            },
        );
        // A caller who never opens a room is let go: `leg_ended`, as after wrong codes.
        let server = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(server.ivr_timeout).await;
            let expired = server
                .ivr
                .lock()
                .map(|mut ivr| match ivr.get(&leg_id) {
                    Some(s) if s.call_id == call_id => ivr.remove(&leg_id).is_some(),
                    _ => false,
                })
                .unwrap_or(false);
            if expired {
                server.publish(ControlEvent::LegEnded { call_id, leg_id });
            }
        });
        if let Some(samples) = crate::prompts::samples("enter-code") {
            let _ = self.engine.play_prompt(leg_id, Arc::new(samples)).await;
        }
        let sdp = sdp::rewrite(offer, self.ip(), ports.rtp, ports.rtcp, Some(codec)).map_err(|e| e.to_string())?;
        Ok((Some(sdp), vec![]))
    }

    /// A new offer on an anchored call (a re-INVITE) from one of its legs: the leg follows
    /// the offer, and the other side gets the offer with the other leg's port.
    async fn reoffer(
        &self,
        call_id: Uuid,
        anchored: Anchored,
        leg_id: Uuid,
        offer: &str,
        audio: &sdp::AudioStream,
    ) -> Result<(Option<String>, Vec<LegMedia>), String> {
        let Some(other) = anchored.other(leg_id) else {
            return Err("the leg is not one of the call's".into());
        };
        self.engine
            .update_leg(leg_id, audio.preferred(), audio.remote)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(call) = self.calls.lock().map_err(|_| "poisoned")?.calls.get_mut(&call_id) {
            call.offerer = leg_id;
            call.offered = audio.codecs.clone();
        }
        let ports = self.leg_ports(call_id, other).await?;
        let sdp = sdp::rewrite(offer, self.ip(), ports.0, ports.1, None).map_err(|e| e.to_string())?;
        Ok((Some(sdp), vec![]))
    }

    async fn existing_ports(&self, _call_id: Uuid, leg_id: Uuid) -> Option<(u16, u16)> {
        self.engine
            .leg_ports(leg_id)
            .await
            .ok()
            .flatten()
            .map(|p| (p.rtp, p.rtcp))
    }

    async fn leg_ports(&self, call_id: Uuid, leg_id: Uuid) -> Result<(u16, u16), String> {
        self.existing_ports(call_id, leg_id)
            .await
            .ok_or_else(|| "no such leg".into())
    }
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R, line: &mut Vec<u8>) -> std::io::Result<usize> {
    line.clear();
    let n = (&mut *reader).take(MAX_LINE as u64 + 1).read_until(b'\n', line).await?;
    if line.len() > MAX_LINE {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "line too long"));
    }
    Ok(n)
}

async fn write_json<W: tokio::io::AsyncWrite + Unpin, T: Serialize>(w: &mut W, value: &T) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    w.write_all(&bytes).await
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("media node refused: {0}")]
    Refused(String),
    #[error("the control connection is closed")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>>;

/// The SIP node's side: async methods, one connection, events on a channel.
pub struct Client {
    write: tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>,
    pending: Pending,
    next_id: std::sync::atomic::AtomicU64,
}

impl Client {
    /// Connect; events (DTMF, disconnects) arrive on the returned receiver.
    pub async fn connect(addr: SocketAddr) -> Result<(Client, mpsc::Receiver<ControlEvent>), ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let pending: Pending = Arc::default();
        let (events_tx, events_rx) = mpsc::channel(1024);
        let reader_pending = pending.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(read);
            let mut line = Vec::new();
            while let Ok(n) = read_line(&mut reader, &mut line).await {
                if n == 0 {
                    break;
                }
                match serde_json::from_slice::<Incoming>(&line) {
                    Ok(Incoming::Event(e)) => {
                        if events_tx.try_send(e).is_err() {
                            tracing::warn!("control client: event dropped (nobody reading)");
                        }
                    }
                    Ok(Incoming::Response(r)) => {
                        let waiter = reader_pending.lock().ok().and_then(|mut p| p.remove(&r.id));
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(r);
                        }
                    }
                    Err(e) => tracing::warn!("control client: unreadable line: {e}"),
                }
            }
            // Wake every waiter: the connection is gone.
            if let Ok(mut p) = reader_pending.lock() {
                p.clear();
            }
        });
        Ok((
            Client {
                write: tokio::sync::Mutex::new(write),
                pending,
                next_id: std::sync::atomic::AtomicU64::new(1),
            },
            events_rx,
        ))
    }

    /// Send any command; the response when it succeeded.
    pub async fn request(&self, command: Command) -> Result<Response, ClientError> {
        self.call(command).await
    }

    async fn call(&self, command: Command) -> Result<Response, ClientError> {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().map_err(|_| ClientError::Closed)?.insert(id, tx);
        {
            let mut w = self.write.lock().await;
            write_json(&mut *w, &Request { id, command }).await?;
        }
        let response = rx.await.map_err(|_| ClientError::Closed)?;
        if response.ok {
            Ok(response)
        } else {
            Err(ClientError::Refused(response.error.unwrap_or_default()))
        }
    }

    /// Anchor a call; returns the SDP to send to the callee.
    pub async fn offer(
        &self,
        call_id: Uuid,
        leg_id: Uuid,
        peer_leg_id: Uuid,
        sdp: &str,
    ) -> Result<String, ClientError> {
        let r = self
            .call(Command::Offer {
                call_id,
                leg_id,
                sdp: sdp.to_string(),
                peer_leg_id: Some(peer_leg_id),
            })
            .await?;
        r.sdp.ok_or(ClientError::Refused("no SDP in the answer".into()))
    }

    /// The callee answered; returns the SDP to send to the caller.
    pub async fn answer(&self, call_id: Uuid, leg_id: Uuid, sdp: &str) -> Result<String, ClientError> {
        let r = self
            .call(Command::Answer {
                call_id,
                leg_id,
                sdp: sdp.to_string(),
            })
            .await?;
        r.sdp.ok_or(ClientError::Refused("no SDP in the answer".into()))
    }

    /// Free the call's ports; its legs' statistics, for `CallEnded`.
    pub async fn delete(&self, call_id: Uuid) -> Result<Vec<LegMedia>, ClientError> {
        Ok(self.call(Command::Delete { call_id }).await?.stats)
    }

    pub async fn conference_join(
        &self,
        room_id: Uuid,
        call_id: Uuid,
        leg_id: Uuid,
        sdp: &str,
        role: ParticipantRole,
    ) -> Result<String, ClientError> {
        let r = self
            .call(Command::ConferenceJoin {
                room_id,
                call_id,
                leg_id,
                sdp: sdp.to_string(),
                role,
            })
            .await?;
        r.sdp.ok_or(ClientError::Refused("no SDP in the answer".into()))
    }

    pub async fn conference_leave(&self, leg_id: Uuid) -> Result<(), ClientError> {
        self.call(Command::ConferenceLeave { leg_id }).await.map(drop)
    }

    pub async fn mute(&self, leg_id: Uuid, muted: bool) -> Result<(), ClientError> {
        self.call(Command::Mute { leg_id, muted }).await.map(drop)
    }

    /// Play a prompt; with `sdp`, anchor the leg first and return the SDP for the caller.
    pub async fn play_prompt(
        &self,
        call_id: Uuid,
        leg_id: Uuid,
        sdp: Option<&str>,
        prompt: &str,
    ) -> Result<Option<String>, ClientError> {
        Ok(self
            .call(Command::PlayPrompt {
                call_id,
                leg_id,
                sdp: sdp.map(str::to_string),
                prompt: prompt.to_string(),
            })
            .await?
            .sdp)
    }
}
