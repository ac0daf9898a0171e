//! The media node role: the engine, the control server, and the log. It follows the log
//! (`commands::subscription`) to know every conference room (its settings, for joins and
//! access codes) and to act on the API's mute and kick requests; it appends what happens in
//! its rooms (session started, participant joined/muted/unmuted/left/kicked, session ended,
//! recording stored) through `commands::CommandHandler`, so the room's decider checks each fact.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use commands::subscription::{Subscription, SubscriptionOptions};
use commands::{CommandContext, CommandError, CommandHandler, Cursor, EventFilter, EventStore};
use domain::conference::{
    Actor, ConferenceCommand, ConferenceEvent, ConferenceRejection, ConferenceRoom, Role as DomainRole, RoomState,
    SessionEndReason,
};
use domain::{Aggregate, DomainEvent};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::control::{ControlEvent, DisconnectReason, RoomLookup, Server};
use crate::engine::{Engine, EngineConfig, EngineEvent};
use crate::mixer::{EndReason, MixerEvent, MuteBy, Role, RoomConfig};

#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub node_id: String,
    pub control_bind: SocketAddr,
    pub engine: EngineConfig,
}

/// Every room known from the log, by id (with its tenant).
#[derive(Default)]
pub struct RoomDirectory {
    rooms: HashMap<Uuid, (Uuid, RoomState)>,
}

impl RoomDirectory {
    pub fn apply(&mut self, tenant_id: Uuid, room_id: Uuid, event: &ConferenceEvent) {
        let entry = self
            .rooms
            .entry(room_id)
            .or_insert_with(|| (tenant_id, RoomState::default()));
        entry.1 = ConferenceRoom::evolve(std::mem::take(&mut entry.1), event);
    }

    pub fn get(&self, room_id: &Uuid) -> Option<&(Uuid, RoomState)> {
        self.rooms.get(room_id)
    }

    /// The room an access number and code open, and the role the code gives. Codes are
    /// compared per access number, so two rooms may share a code on different numbers.
    pub fn find_by_code(&self, access_number: &str, code: &str) -> Option<(Uuid, Uuid, DomainRole)> {
        for (room_id, (tenant_id, state)) in &self.rooms {
            let Some(s) = &state.settings else { continue };
            if state.removed || s.access_number.as_deref() != Some(access_number) {
                continue;
            }
            if s.host_code == code {
                return Some((*room_id, *tenant_id, DomainRole::Host));
            }
            if s.guest_code == code {
                return Some((*room_id, *tenant_id, DomainRole::Guest));
            }
        }
        None
    }

    /// What the digits collected so far on a tenant's access number are: a room's code (the
    /// room and the role it gives), the beginning of one, or wrong.
    pub fn check_code(&self, tenant_id: Uuid, access_number: &str, digits: &str) -> CodeCheck {
        let mut partial = false;
        for (room_id, (tenant, state)) in &self.rooms {
            let Some(s) = &state.settings else { continue };
            if *tenant != tenant_id || state.removed || s.access_number.as_deref() != Some(access_number) {
                continue;
            }
            if s.host_code == digits {
                return CodeCheck::Open(*room_id, DomainRole::Host);
            }
            if s.guest_code == digits {
                return CodeCheck::Open(*room_id, DomainRole::Guest);
            }
            partial |= s.host_code.starts_with(digits) || s.guest_code.starts_with(digits);
        }
        if partial {
            CodeCheck::Partial
        } else {
            CodeCheck::Wrong
        }
    }

    pub fn config(&self, room_id: &Uuid) -> Option<RoomConfig> {
        let (_, state) = self.rooms.get(room_id)?;
        let s = state.settings.as_ref()?;
        if state.removed {
            return None;
        }
        Some(RoomConfig {
            moderated: s.moderated,
            max_participants: s.max_participants as usize,
            record: s.record,
            waiting_prompt: crate::prompts::samples("waiting-for-host").unwrap_or_default(),
        })
    }
}

/// The digits a caller of an access number has entered so far, checked against the rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    Open(Uuid, DomainRole),
    Partial,
    Wrong,
}

/// A running media node.
pub struct MediaNode {
    pub control_addr: SocketAddr,
    pub engine: Engine,
    pub directory: Arc<Mutex<RoomDirectory>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for MediaNode {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.engine.stop();
    }
}

#[allow(clippy::disallowed_methods)] // The node's shell is where the clock is read.
fn now() -> DateTime<Utc> {
    Utc::now()
}

impl MediaNode {
    pub async fn start(store: EventStore, config: MediaConfig) -> anyhow_like::Result<MediaNode> {
        let directory: Arc<Mutex<RoomDirectory>> = Arc::default();
        // Know every room before accepting joins: catch up with the log first.
        // Only conference streams are fetched: the rest of the log is skipped in the database.
        let options = SubscriptionOptions {
            filter: Some(EventFilter {
                event_types: Vec::new(),
                stream_prefix: "conference-".into(),
            }),
            ..SubscriptionOptions::default()
        };
        let mut subscription = Subscription::start(store.clone(), Cursor::default(), options)
            .await
            .map_err(anyhow_like::Error::from_display)?;
        let (engine, engine_events) = Engine::start(config.engine.clone()).map_err(anyhow_like::Error::from_display)?;
        let lookup_dir = directory.clone();
        let lookup: RoomLookup = Arc::new(move |room_id| lookup_dir.lock().ok()?.config(&room_id));
        let codes_dir = directory.clone();
        let codes: crate::control::CodeLookup = Arc::new(move |tenant_id, number, digits| {
            let check = codes_dir
                .lock()
                .ok()
                .map(|d| d.check_code(tenant_id, number, digits))
                .unwrap_or(CodeCheck::Wrong);
            match check {
                CodeCheck::Open(room_id, DomainRole::Host) => Some(Some((room_id, Role::Host))),
                CodeCheck::Open(room_id, DomainRole::Guest) => Some(Some((room_id, Role::Guest))),
                CodeCheck::Partial => Some(None),
                CodeCheck::Wrong => None,
            }
        });
        let server = Server::new(engine.clone(), lookup).with_codes(codes);
        let events = server.forward_events(engine_events);
        let listener = TcpListener::bind(config.control_bind)
            .await
            .map_err(anyhow_like::Error::from_display)?;
        let control_addr = listener.local_addr().map_err(anyhow_like::Error::from_display)?;
        let journal = Journal {
            handler: CommandHandler::new(store.clone()),
            node_id: config.node_id.clone(),
            directory: directory.clone(),
            sessions: HashMap::new(),
            pending_actor: HashMap::new(),
        };
        // A node that restarts forgets who was talking in the sessions it ran.
        journal.clear_talking(None, None).await;
        let journal = Arc::new(tokio::sync::Mutex::new(journal));
        let mut tasks = vec![tokio::spawn(server.clone().serve(listener))];
        tasks.push(tokio::spawn(run_journal(journal.clone(), events)));
        // Follow the log: rooms for the directory, mute and kick requests for the engine.
        let follow_engine = engine.clone();
        let follow_dir = directory.clone();
        let follow_server = server.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(next) = subscription.next().await {
                let recorded = match next {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!("media: reading the log: {e}");
                        continue;
                    }
                };
                let Some(id) = recorded.stream_id.strip_prefix("conference-") else {
                    continue;
                };
                let Ok(room_id) = Uuid::parse_str(id) else { continue };
                let Ok(event) = recorded.decode::<ConferenceEvent>() else {
                    continue;
                };
                if let Ok(mut dir) = follow_dir.lock() {
                    dir.apply(recorded.tenant_id, room_id, &event);
                }
                match &event {
                    ConferenceEvent::ParticipantMuteRequested(r) => {
                        journal.lock().await.pending_actor.insert(r.leg_id, r.by.clone());
                        // Only a leg this node holds answers; old requests replayed at start find none.
                        let _ = follow_engine.set_muted(r.leg_id, r.mute).await;
                    }
                    ConferenceEvent::ParticipantKickRequested(r) => {
                        // Hold the journal while the engine drops the leg, so the `Left` it
                        // reports is known to be this kick's (recorded as kicked, not left).
                        let mut j = journal.lock().await;
                        if j.sessions.get(&room_id).map(|s| s.0) != Some(r.session_id) {
                            continue;
                        }
                        // The participant's call, from its `ParticipantJoined`: the SIP node
                        // holding it hangs it up.
                        let call_id = follow_dir.lock().ok().and_then(|d| {
                            let (_, state) = d.get(&room_id)?;
                            Some(state.session.as_ref()?.participants.get(&r.leg_id)?.call_id)
                        });
                        j.mark_kicked(room_id, r.leg_id);
                        if follow_engine.leave_room(r.leg_id).await.unwrap_or(false) {
                            j.kick(room_id, r.leg_id, r.by.clone()).await;
                            match call_id {
                                Some(call_id) => follow_server.publish(ControlEvent::Disconnect {
                                    room_id,
                                    call_id,
                                    leg_id: r.leg_id,
                                    reason: DisconnectReason::Kicked,
                                }),
                                None => {
                                    tracing::warn!(%room_id, leg_id = %r.leg_id, "kicked a leg whose call is unknown")
                                }
                            }
                        } else {
                            j.unmark_kicked(room_id, r.leg_id);
                        }
                    }
                    _ => {}
                }
            }
        }));
        Ok(MediaNode {
            control_addr,
            engine,
            directory,
            tasks,
        })
    }
}

/// Turns what the engine saw into the room's events, through the decider.
struct Journal {
    handler: CommandHandler,
    node_id: String,
    directory: Arc<Mutex<RoomDirectory>>,
    /// room -> (the session this node runs, legs kicked that the engine will report as left).
    sessions: HashMap<Uuid, (Uuid, Vec<Uuid>)>,
    /// Who asked for a mute, until the engine reports it.
    pending_actor: HashMap<Uuid, Actor>,
}

async fn run_journal(journal: Arc<tokio::sync::Mutex<Journal>>, mut events: mpsc::Receiver<EngineEvent>) {
    while let Some(event) = events.recv().await {
        journal.lock().await.record(event).await;
    }
}

impl Journal {
    fn tenant(&self, room_id: &Uuid) -> Option<Uuid> {
        self.directory.lock().ok()?.get(room_id).map(|(t, _)| *t)
    }

    async fn run(&self, room_id: Uuid, command: ConferenceCommand) -> Result<(), CommandError<ConferenceRejection>> {
        let Some(tenant_id) = self.tenant(&room_id) else {
            tracing::warn!("media: room {room_id} is not in the log; its events are not recorded");
            return Ok(());
        };
        let ctx = CommandContext::new(Uuid::new_v4(), &format!("media:{}", self.node_id), &self.node_id, now());
        crate::rooms::room_command(&self.handler, &ctx, tenant_id, room_id, command)
            .await
            .map(drop)
    }

    fn mark_kicked(&mut self, room_id: Uuid, leg_id: Uuid) {
        if let Some((_, kicked)) = self.sessions.get_mut(&room_id) {
            kicked.push(leg_id);
        }
    }

    fn unmark_kicked(&mut self, room_id: Uuid, leg_id: Uuid) {
        if let Some((_, kicked)) = self.sessions.get_mut(&room_id) {
            kicked.retain(|l| *l != leg_id);
        }
    }

    async fn kick(&mut self, room_id: Uuid, leg_id: Uuid, by: Actor) {
        let r = self
            .run(room_id, ConferenceCommand::Kick { leg_id, by, at: now() })
            .await;
        log_failure("kick", r);
    }

    /// The live talking flag (`live_conference_talking`): a row while the participant talks.
    async fn set_talking(&self, room_id: Uuid, leg_id: Uuid, talking: bool) {
        if !talking {
            return self.clear_talking(Some(room_id), Some(leg_id)).await;
        }
        let (Some(tenant_id), Some((session_id, _))) = (self.tenant(&room_id), self.sessions.get(&room_id)) else {
            return;
        };
        let r = sqlx::query(
            "INSERT INTO live_conference_talking (tenant_id, room_id, session_id, leg_id, node_id, since)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (tenant_id, room_id, leg_id) DO UPDATE
               SET session_id = EXCLUDED.session_id, node_id = EXCLUDED.node_id, since = EXCLUDED.since",
        )
        .bind(tenant_id)
        .bind(room_id)
        .bind(session_id)
        .bind(leg_id)
        .bind(&self.node_id)
        .bind(now())
        .execute(self.handler.store().pool())
        .await;
        if let Err(e) = r {
            tracing::warn!("media: talking flag not stored: {e}");
        }
    }

    /// Forget talking flags of this node: one leg, one room, or (both `None`) all of them.
    async fn clear_talking(&self, room_id: Option<Uuid>, leg_id: Option<Uuid>) {
        let r = sqlx::query(
            "DELETE FROM live_conference_talking
             WHERE node_id = $1 AND ($2::uuid IS NULL OR room_id = $2) AND ($3::uuid IS NULL OR leg_id = $3)",
        )
        .bind(&self.node_id)
        .bind(room_id)
        .bind(leg_id)
        .execute(self.handler.store().pool())
        .await;
        if let Err(e) = r {
            tracing::warn!("media: talking flags not cleared: {e}");
        }
    }

    async fn record(&mut self, event: EngineEvent) {
        // The time of what happened is when the journal hears of it, not after its own round
        // trips to the database (starting the session; talking flags are cleared after the
        // append): a participant's stay, which billing and the recording's length are checked
        // against, is not stretched by them.
        let at = now();
        match event {
            EngineEvent::Joined {
                room_id,
                call_id,
                leg_id,
                role,
            } => {
                if !self.sessions.contains_key(&room_id) {
                    let session_id = Uuid::new_v4();
                    let r = self
                        .run(
                            room_id,
                            ConferenceCommand::StartSession {
                                session_id,
                                node_id: self.node_id.clone(),
                                at,
                            },
                        )
                        .await;
                    log_failure("session start", r);
                    self.sessions.insert(room_id, (session_id, vec![]));
                }
                let role = match role {
                    Role::Host => DomainRole::Host,
                    Role::Guest => DomainRole::Guest,
                };
                let r = self
                    .run(
                        room_id,
                        ConferenceCommand::Join {
                            leg_id,
                            call_id,
                            role,
                            at,
                        },
                    )
                    .await;
                log_failure("join", r);
            }
            EngineEvent::Left { room_id, leg_id } => {
                let was_kicked = self
                    .sessions
                    .get_mut(&room_id)
                    .map(|(_, kicked)| {
                        let k = kicked.contains(&leg_id);
                        kicked.retain(|l| *l != leg_id);
                        k
                    })
                    .unwrap_or(false);
                if !was_kicked {
                    let r = self.run(room_id, ConferenceCommand::Leave { leg_id, at }).await;
                    log_failure("leave", r);
                }
                self.clear_talking(Some(room_id), Some(leg_id)).await;
            }
            EngineEvent::Room { room_id, event } => match event {
                MixerEvent::MuteChanged { leg_id, muted, by } => {
                    let by = match by {
                        MuteBy::Participant => Actor::Participant,
                        MuteBy::Other => self.pending_actor.remove(&leg_id).unwrap_or(Actor::System),
                    };
                    let r = self
                        .run(room_id, ConferenceCommand::SetMuted { leg_id, muted, by, at })
                        .await;
                    log_failure("mute", r);
                }
                MixerEvent::TalkingChanged { leg_id, talking } => self.set_talking(room_id, leg_id, talking).await,
                MixerEvent::Disconnect { .. } => {}
                MixerEvent::SessionEnded { reason } => {
                    let reason = match reason {
                        EndReason::Empty => SessionEndReason::Empty,
                        EndReason::LastHostLeft => SessionEndReason::LastHostLeft,
                    };
                    let r = self.run(room_id, ConferenceCommand::EndSession { reason, at }).await;
                    log_failure("session end", r);
                    self.clear_talking(Some(room_id), None).await;
                    // A recording, if any, arrives next and needs the session id; otherwise forget it.
                    let records = self
                        .directory
                        .lock()
                        .ok()
                        .and_then(|d| d.config(&room_id))
                        .is_some_and(|c| c.record);
                    if !records {
                        self.sessions.remove(&room_id);
                    }
                }
            },
            EngineEvent::RecordingStored {
                room_id,
                path,
                duration_ms,
                sha256,
            } => {
                let Some((session_id, _)) = self.sessions.remove(&room_id) else {
                    return;
                };
                let path = relative(&path);
                let r = self
                    .run(
                        room_id,
                        ConferenceCommand::StoreRecording {
                            session_id,
                            path,
                            duration_ms,
                            sha256,
                            at,
                        },
                    )
                    .await;
                log_failure("recording", r);
            }
            // For the SIP node (which hangs the call up); the session's end records the leave.
            EngineEvent::Dtmf { .. } | EngineEvent::Disconnect { .. } => {}
        }
    }
}

/// `…/recordings/x.wav` -> `recordings/x.wav` (paths in events are relative to the data dir).
fn relative(path: &std::path::Path) -> String {
    let mut parts: Vec<String> = path
        .components()
        .rev()
        .take(2)
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect();
    parts.reverse();
    PathBuf::from_iter(parts).to_string_lossy().to_string()
}

fn log_failure(what: &str, result: Result<(), CommandError<ConferenceRejection>>) {
    if let Err(e) = result {
        tracing::warn!("media: conference {what} not recorded: {e}");
    }
}

/// The event type names the node follows (for documentation and filters).
pub fn followed_event_types() -> &'static [&'static str] {
    ConferenceEvent::event_types()
}

/// Errors of starting the node, as text (the binary wraps them in anyhow).
pub mod anyhow_like {
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    pub struct Error(pub String);

    impl Error {
        pub fn from_display(e: impl std::fmt::Display) -> Self {
            Error(e.to_string())
        }
    }

    pub type Result<T> = std::result::Result<T, Error>;
}
