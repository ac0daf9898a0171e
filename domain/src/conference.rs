//! The ConferenceRoom aggregate: one stream per room (`conference-{id}`, with the owning
//! tenant's id), holding its configuration and, inside it, the sessions (a room is a
//! session only while someone is in it), their participants, mutes, kicks and recordings.
//!
//! The API asks for a mute or a kick by appending a *request* event here; the media node
//! that holds the session consumes it from the log, acts on the audio, and records what it
//! did (`ParticipantMuted`, `ParticipantKicked`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::decider::Aggregate;
use crate::event_family;

/// Bounds that keep a room (and its stream) small.
pub const MAX_PARTICIPANTS_CEILING: u32 = 1_000;
pub const MAX_CODE_LEN: usize = 16;
pub const MIN_CODE_LEN: usize = 3;
pub const MAX_NAME_LEN: usize = 200;
pub const MAX_NUMBER_LEN: usize = 32;
pub const MAX_PATH_LEN: usize = 1_024;
pub const MAX_ACTOR_LEN: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Entered the host code: starts and (in a moderated room) ends the session.
    Host,
    Guest,
}

/// Who muted, unmuted or kicked a participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// The participant themselves (DTMF `*6`).
    Participant,
    /// A host in the room, by leg.
    Host { leg_id: Uuid },
    /// A person through the API or the CLI.
    Api { actor: String },
    /// The media node itself (moderation rules, a hung-up leg).
    System,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionEndReason {
    /// Everyone left.
    Empty,
    /// The last host of a moderated room left; everyone was disconnected.
    LastHostLeft,
    /// The media node stopped (or the room was removed).
    Shutdown,
}

/// The settings a room is created with, and updated to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomSettings {
    pub name: String,
    /// The billing account that pays for every participant leg.
    pub owner_account_id: Uuid,
    /// Digits only; entering it makes the caller a host.
    pub host_code: String,
    /// Digits only; entering it makes the caller a guest.
    pub guest_code: String,
    /// Guests wait (hearing a prompt) until a host joins; the session ends when the last host leaves.
    pub moderated: bool,
    pub max_participants: u32,
    pub record: bool,
    /// The conference access number (an extension-like number or a DID) that answers for this room.
    #[serde(default)]
    pub access_number: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConferenceRoomCreated {
    pub room_id: Uuid,
    pub tenant_id: Uuid,
    pub settings: RoomSettings,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConferenceRoomUpdated {
    pub settings: RoomSettings,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConferenceRoomRemoved {
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConferenceSessionStarted {
    pub session_id: Uuid,
    /// The media node that mixes this session.
    pub node_id: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParticipantJoined {
    pub session_id: Uuid,
    pub leg_id: Uuid,
    pub call_id: Uuid,
    pub role: Role,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParticipantMuted {
    pub session_id: Uuid,
    pub leg_id: Uuid,
    pub by: Actor,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParticipantUnmuted {
    pub session_id: Uuid,
    pub leg_id: Uuid,
    pub by: Actor,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParticipantLeft {
    pub session_id: Uuid,
    pub leg_id: Uuid,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParticipantKicked {
    pub session_id: Uuid,
    pub leg_id: Uuid,
    pub by: Actor,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConferenceRecordingStored {
    pub session_id: Uuid,
    /// Where the WAV file is, relative to the media node's data directory.
    pub path: String,
    pub duration_ms: u64,
    /// Hex SHA-256 of the whole file.
    pub sha256: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConferenceSessionEnded {
    pub session_id: Uuid,
    pub reason: SessionEndReason,
    pub at: DateTime<Utc>,
}

/// The API asks the media node to mute (or unmute) a participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParticipantMuteRequested {
    pub session_id: Uuid,
    pub leg_id: Uuid,
    pub mute: bool,
    pub by: Actor,
    pub at: DateTime<Utc>,
}

/// The API asks the media node to disconnect a participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParticipantKickRequested {
    pub session_id: Uuid,
    pub leg_id: Uuid,
    pub by: Actor,
    pub at: DateTime<Utc>,
}

event_family! {
    /// Everything that happens on a `conference-{room_id}` stream.
    pub enum ConferenceEvent {
        ConferenceRoomCreated,
        ConferenceRoomUpdated,
        ConferenceRoomRemoved,
        ConferenceSessionStarted,
        ParticipantJoined,
        ParticipantMuted,
        ParticipantUnmuted,
        ParticipantLeft,
        ParticipantKicked,
        ConferenceRecordingStored,
        ConferenceSessionEnded,
        ParticipantMuteRequested,
        ParticipantKickRequested,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConferenceCommand {
    Create {
        room_id: Uuid,
        tenant_id: Uuid,
        settings: RoomSettings,
        at: DateTime<Utc>,
    },
    Update {
        settings: RoomSettings,
        at: DateTime<Utc>,
    },
    Remove {
        at: DateTime<Utc>,
    },
    StartSession {
        session_id: Uuid,
        node_id: String,
        at: DateTime<Utc>,
    },
    Join {
        leg_id: Uuid,
        call_id: Uuid,
        role: Role,
        at: DateTime<Utc>,
    },
    /// Mute or unmute; a no-op when the participant already is in that state.
    SetMuted {
        leg_id: Uuid,
        muted: bool,
        by: Actor,
        at: DateTime<Utc>,
    },
    Leave {
        leg_id: Uuid,
        at: DateTime<Utc>,
    },
    Kick {
        leg_id: Uuid,
        by: Actor,
        at: DateTime<Utc>,
    },
    StoreRecording {
        session_id: Uuid,
        path: String,
        duration_ms: u64,
        sha256: String,
        at: DateTime<Utc>,
    },
    /// End the session; whoever is still in leaves first, in the same decision.
    EndSession {
        reason: SessionEndReason,
        at: DateTime<Utc>,
    },
    /// From the API: ask the media node to mute or unmute.
    RequestMute {
        leg_id: Uuid,
        mute: bool,
        by: Actor,
        at: DateTime<Utc>,
    },
    /// From the API: ask the media node to disconnect.
    RequestKick {
        leg_id: Uuid,
        by: Actor,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConferenceRejection {
    #[error("the room already exists")]
    AlreadyExists,
    #[error("no such room")]
    NotFound,
    #[error("the room has been removed")]
    Removed,
    #[error("invalid settings: {0}")]
    InvalidSettings(String),
    #[error("a session is running in this room")]
    SessionActive,
    #[error("no session is running in this room")]
    NoSession,
    #[error("the room is full ({0} participants)")]
    Full(u32),
    #[error("the leg is already in the room")]
    AlreadyJoined,
    #[error("the leg is not in the room")]
    NotInRoom,
    #[error("no such session")]
    UnknownSession,
    #[error("the recording of this session is already stored")]
    RecordingAlreadyStored,
    #[error("invalid recording: {0}")]
    InvalidRecording(String),
    #[error("invalid actor")]
    InvalidActor,
    #[error("time runs backwards: {0}")]
    TimeTravel(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Participant {
    pub call_id: Uuid,
    pub role: Role,
    pub muted: bool,
    pub joined_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub session_id: Uuid,
    pub node_id: String,
    pub started_at: DateTime<Utc>,
    pub participants: BTreeMap<Uuid, Participant>,
}

impl Session {
    pub fn hosts(&self) -> usize {
        self.participants.values().filter(|p| p.role == Role::Host).count()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomState {
    pub room_id: Option<Uuid>,
    pub tenant_id: Option<Uuid>,
    pub settings: Option<RoomSettings>,
    pub removed: bool,
    pub session: Option<Session>,
    /// Sessions that have ended, with whether their recording is stored (bounded by the
    /// stream's own length; a room sees a handful of sessions a day).
    pub ended_sessions: BTreeMap<Uuid, bool>,
    pub last_at: Option<DateTime<Utc>>,
}

impl RoomState {
    pub fn exists(&self) -> bool {
        self.settings.is_some()
    }
}

pub struct ConferenceRoom;

impl Aggregate for ConferenceRoom {
    type Event = ConferenceEvent;
    type State = RoomState;
    const STREAM_PREFIX: &'static str = "conference";

    fn evolve(mut state: RoomState, event: &ConferenceEvent) -> RoomState {
        let at = match event {
            ConferenceEvent::ConferenceRoomCreated(e) => {
                state.room_id = Some(e.room_id);
                state.tenant_id = Some(e.tenant_id);
                state.settings = Some(e.settings.clone());
                e.at
            }
            ConferenceEvent::ConferenceRoomUpdated(e) => {
                state.settings = Some(e.settings.clone());
                e.at
            }
            ConferenceEvent::ConferenceRoomRemoved(e) => {
                state.removed = true;
                e.at
            }
            ConferenceEvent::ConferenceSessionStarted(e) => {
                state.session = Some(Session {
                    session_id: e.session_id,
                    node_id: e.node_id.clone(),
                    started_at: e.at,
                    participants: BTreeMap::new(),
                });
                e.at
            }
            ConferenceEvent::ParticipantJoined(e) => {
                if let Some(session) = state.session.as_mut() {
                    session.participants.insert(
                        e.leg_id,
                        Participant {
                            call_id: e.call_id,
                            role: e.role,
                            muted: false,
                            joined_at: e.at,
                        },
                    );
                }
                e.at
            }
            ConferenceEvent::ParticipantMuted(e) => {
                set_muted(&mut state, &e.leg_id, true);
                e.at
            }
            ConferenceEvent::ParticipantUnmuted(e) => {
                set_muted(&mut state, &e.leg_id, false);
                e.at
            }
            ConferenceEvent::ParticipantLeft(e) => {
                if let Some(session) = state.session.as_mut() {
                    session.participants.remove(&e.leg_id);
                }
                e.at
            }
            ConferenceEvent::ParticipantKicked(e) => {
                if let Some(session) = state.session.as_mut() {
                    session.participants.remove(&e.leg_id);
                }
                e.at
            }
            ConferenceEvent::ConferenceRecordingStored(e) => {
                state.ended_sessions.insert(e.session_id, true);
                e.at
            }
            ConferenceEvent::ConferenceSessionEnded(e) => {
                if let Some(session) = state.session.take() {
                    state.ended_sessions.entry(session.session_id).or_insert(false);
                }
                e.at
            }
            ConferenceEvent::ParticipantMuteRequested(e) => e.at,
            ConferenceEvent::ParticipantKickRequested(e) => e.at,
        };
        state.last_at = Some(at);
        state
    }
}

fn set_muted(state: &mut RoomState, leg_id: &Uuid, muted: bool) {
    if let Some(p) = state.session.as_mut().and_then(|s| s.participants.get_mut(leg_id)) {
        p.muted = muted;
    }
}

/// Check settings against the limits: digit codes of sane length that differ, a bounded
/// room, a plausible access number.
pub fn validate_settings(settings: &RoomSettings) -> Result<(), ConferenceRejection> {
    let bad = |why: String| Err(ConferenceRejection::InvalidSettings(why));
    if settings.name.len() > MAX_NAME_LEN || settings.name.chars().any(char::is_control) {
        return bad(format!("a name has at most {MAX_NAME_LEN} printable characters"));
    }
    for (what, code) in [("host", &settings.host_code), ("guest", &settings.guest_code)] {
        if code.len() < MIN_CODE_LEN || code.len() > MAX_CODE_LEN || !code.bytes().all(|b| b.is_ascii_digit()) {
            return bad(format!(
                "the {what} code must be {MIN_CODE_LEN} to {MAX_CODE_LEN} digits"
            ));
        }
    }
    if settings.host_code == settings.guest_code {
        return bad("the host and guest codes must differ".into());
    }
    if settings.max_participants < 2 || settings.max_participants > MAX_PARTICIPANTS_CEILING {
        return bad(format!(
            "max participants must be between 2 and {MAX_PARTICIPANTS_CEILING}"
        ));
    }
    if let Some(number) = &settings.access_number {
        let plus = number.strip_prefix('+').unwrap_or(number);
        if plus.is_empty() || number.len() > MAX_NUMBER_LEN || !plus.bytes().all(|b| b.is_ascii_digit()) {
            return bad("the access number must be digits (optionally with a leading +)".into());
        }
    }
    Ok(())
}

fn validate_actor(by: &Actor) -> Result<(), ConferenceRejection> {
    match by {
        Actor::Api { actor } if actor.is_empty() || actor.len() > MAX_ACTOR_LEN => {
            Err(ConferenceRejection::InvalidActor)
        }
        _ => Ok(()),
    }
}

pub fn decide(command: &ConferenceCommand, state: &RoomState) -> Result<Vec<ConferenceEvent>, ConferenceRejection> {
    use ConferenceCommand as C;
    use ConferenceEvent as E;
    if let C::Create {
        room_id,
        tenant_id,
        settings,
        at,
    } = command
    {
        if state.exists() {
            return Err(ConferenceRejection::AlreadyExists);
        }
        validate_settings(settings)?;
        return Ok(vec![E::ConferenceRoomCreated(ConferenceRoomCreated {
            room_id: *room_id,
            tenant_id: *tenant_id,
            settings: settings.clone(),
            at: *at,
        })]);
    }
    let Some(settings) = &state.settings else {
        return Err(ConferenceRejection::NotFound);
    };
    if state.removed {
        return Err(ConferenceRejection::Removed);
    }
    let at = command_time(command);
    if let Some(last) = state.last_at {
        if at < last {
            return Err(ConferenceRejection::TimeTravel(format!("{at} is before {last}")));
        }
    }
    let session = state.session.as_ref();
    let in_session = |leg_id: &Uuid| -> Result<&Session, ConferenceRejection> {
        let session = session.ok_or(ConferenceRejection::NoSession)?;
        if session.participants.contains_key(leg_id) {
            Ok(session)
        } else {
            Err(ConferenceRejection::NotInRoom)
        }
    };
    match command {
        C::Create { .. } => unreachable!("handled above"),
        C::Update { settings, at } => {
            validate_settings(settings)?;
            Ok(vec![E::ConferenceRoomUpdated(ConferenceRoomUpdated {
                settings: settings.clone(),
                at: *at,
            })])
        }
        C::Remove { at } => {
            if session.is_some() {
                return Err(ConferenceRejection::SessionActive);
            }
            Ok(vec![E::ConferenceRoomRemoved(ConferenceRoomRemoved { at: *at })])
        }
        C::StartSession {
            session_id,
            node_id,
            at,
        } => {
            if session.is_some() {
                return Err(ConferenceRejection::SessionActive);
            }
            if state.ended_sessions.contains_key(session_id) {
                return Err(ConferenceRejection::UnknownSession);
            }
            Ok(vec![E::ConferenceSessionStarted(ConferenceSessionStarted {
                session_id: *session_id,
                node_id: node_id.clone(),
                at: *at,
            })])
        }
        C::Join {
            leg_id,
            call_id,
            role,
            at,
        } => {
            let session = session.ok_or(ConferenceRejection::NoSession)?;
            if session.participants.contains_key(leg_id) {
                return Err(ConferenceRejection::AlreadyJoined);
            }
            if session.participants.len() >= settings.max_participants as usize {
                return Err(ConferenceRejection::Full(settings.max_participants));
            }
            Ok(vec![E::ParticipantJoined(ParticipantJoined {
                session_id: session.session_id,
                leg_id: *leg_id,
                call_id: *call_id,
                role: *role,
                at: *at,
            })])
        }
        C::SetMuted { leg_id, muted, by, at } => {
            validate_actor(by)?;
            let session = in_session(leg_id)?;
            if session.participants[leg_id].muted == *muted {
                return Ok(vec![]);
            }
            let (session_id, leg_id, by, at) = (session.session_id, *leg_id, by.clone(), *at);
            Ok(vec![if *muted {
                E::ParticipantMuted(ParticipantMuted {
                    session_id,
                    leg_id,
                    by,
                    at,
                })
            } else {
                E::ParticipantUnmuted(ParticipantUnmuted {
                    session_id,
                    leg_id,
                    by,
                    at,
                })
            }])
        }
        C::Leave { leg_id, at } => {
            let session = in_session(leg_id)?;
            Ok(vec![E::ParticipantLeft(ParticipantLeft {
                session_id: session.session_id,
                leg_id: *leg_id,
                at: *at,
            })])
        }
        C::Kick { leg_id, by, at } => {
            validate_actor(by)?;
            let session = in_session(leg_id)?;
            Ok(vec![E::ParticipantKicked(ParticipantKicked {
                session_id: session.session_id,
                leg_id: *leg_id,
                by: by.clone(),
                at: *at,
            })])
        }
        C::StoreRecording {
            session_id,
            path,
            duration_ms,
            sha256,
            at,
        } => {
            let known = session.map(|s| s.session_id) == Some(*session_id);
            match state.ended_sessions.get(session_id) {
                Some(true) => return Err(ConferenceRejection::RecordingAlreadyStored),
                None if !known => return Err(ConferenceRejection::UnknownSession),
                _ => {}
            }
            if path.is_empty() || path.len() > MAX_PATH_LEN || path.chars().any(char::is_control) {
                return Err(ConferenceRejection::InvalidRecording("bad path".into()));
            }
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConferenceRejection::InvalidRecording(
                    "sha256 must be 64 hex digits".into(),
                ));
            }
            Ok(vec![E::ConferenceRecordingStored(ConferenceRecordingStored {
                session_id: *session_id,
                path: path.clone(),
                duration_ms: *duration_ms,
                sha256: sha256.to_ascii_lowercase(),
                at: *at,
            })])
        }
        C::EndSession { reason, at } => {
            let session = session.ok_or(ConferenceRejection::NoSession)?;
            let mut events: Vec<ConferenceEvent> = session
                .participants
                .keys()
                .map(|leg_id| {
                    E::ParticipantLeft(ParticipantLeft {
                        session_id: session.session_id,
                        leg_id: *leg_id,
                        at: *at,
                    })
                })
                .collect();
            events.push(E::ConferenceSessionEnded(ConferenceSessionEnded {
                session_id: session.session_id,
                reason: *reason,
                at: *at,
            }));
            Ok(events)
        }
        C::RequestMute { leg_id, mute, by, at } => {
            validate_actor(by)?;
            let session = in_session(leg_id)?;
            Ok(vec![E::ParticipantMuteRequested(ParticipantMuteRequested {
                session_id: session.session_id,
                leg_id: *leg_id,
                mute: *mute,
                by: by.clone(),
                at: *at,
            })])
        }
        C::RequestKick { leg_id, by, at } => {
            validate_actor(by)?;
            let session = in_session(leg_id)?;
            Ok(vec![E::ParticipantKickRequested(ParticipantKickRequested {
                session_id: session.session_id,
                leg_id: *leg_id,
                by: by.clone(),
                at: *at,
            })])
        }
    }
}

fn command_time(command: &ConferenceCommand) -> DateTime<Utc> {
    use ConferenceCommand as C;
    match command {
        C::Create { at, .. }
        | C::Update { at, .. }
        | C::Remove { at }
        | C::StartSession { at, .. }
        | C::Join { at, .. }
        | C::SetMuted { at, .. }
        | C::Leave { at, .. }
        | C::Kick { at, .. }
        | C::StoreRecording { at, .. }
        | C::EndSession { at, .. }
        | C::RequestMute { at, .. }
        | C::RequestKick { at, .. } => *at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    const ROOM: Uuid = Uuid::from_u128(1);
    const TENANT: Uuid = Uuid::from_u128(2);
    const SESSION: Uuid = Uuid::from_u128(3);
    const HOST: Uuid = Uuid::from_u128(10);
    const GUEST: Uuid = Uuid::from_u128(11);
    const CALL: Uuid = Uuid::from_u128(20);

    fn settings() -> RoomSettings {
        RoomSettings {
            name: "Weekly".into(),
            owner_account_id: Uuid::from_u128(5),
            host_code: "1234".into(),
            guest_code: "5678".into(),
            moderated: true,
            max_participants: 3,
            record: true,
            access_number: Some("7000".into()),
        }
    }

    fn created() -> ConferenceEvent {
        ConferenceEvent::ConferenceRoomCreated(ConferenceRoomCreated {
            room_id: ROOM,
            tenant_id: TENANT,
            settings: settings(),
            at: t(0),
        })
    }

    fn started() -> ConferenceEvent {
        ConferenceEvent::ConferenceSessionStarted(ConferenceSessionStarted {
            session_id: SESSION,
            node_id: "media-1".into(),
            at: t(10),
        })
    }

    fn joined(leg_id: Uuid, role: Role) -> ConferenceEvent {
        ConferenceEvent::ParticipantJoined(ParticipantJoined {
            session_id: SESSION,
            leg_id,
            call_id: CALL,
            role,
            at: t(11),
        })
    }

    fn ended() -> ConferenceEvent {
        ConferenceEvent::ConferenceSessionEnded(ConferenceSessionEnded {
            session_id: SESSION,
            reason: SessionEndReason::Empty,
            at: t(20),
        })
    }

    fn state(events: &[ConferenceEvent]) -> RoomState {
        ConferenceRoom::fold(events)
    }

    fn run(history: &mut Vec<ConferenceEvent>, command: ConferenceCommand) -> Vec<ConferenceEvent> {
        let events = decide(&command, &state(history)).unwrap_or_else(|e| panic!("{command:?}: {e}"));
        history.extend(events.clone());
        events
    }

    #[test]
    fn a_session_flows_from_first_join_to_the_end() {
        let mut history = vec![];
        run(
            &mut history,
            ConferenceCommand::Create {
                room_id: ROOM,
                tenant_id: TENANT,
                settings: settings(),
                at: t(0),
            },
        );
        run(
            &mut history,
            ConferenceCommand::StartSession {
                session_id: SESSION,
                node_id: "media-1".into(),
                at: t(10),
            },
        );
        for (leg_id, role) in [(GUEST, Role::Guest), (HOST, Role::Host)] {
            run(
                &mut history,
                ConferenceCommand::Join {
                    leg_id,
                    call_id: CALL,
                    role,
                    at: t(11),
                },
            );
        }
        let mute = ConferenceCommand::SetMuted {
            leg_id: GUEST,
            muted: true,
            by: Actor::Participant,
            at: t(12),
        };
        assert_eq!(run(&mut history, mute.clone()).len(), 1);
        // Muting a muted participant changes nothing.
        assert!(run(&mut history, mute).is_empty());
        assert!(state(&history).session.as_ref().unwrap().participants[&GUEST].muted);
        run(
            &mut history,
            ConferenceCommand::RequestKick {
                leg_id: GUEST,
                by: Actor::Api {
                    actor: "api:alice".into(),
                },
                at: t(13),
            },
        );
        run(
            &mut history,
            ConferenceCommand::Kick {
                leg_id: GUEST,
                by: Actor::Api {
                    actor: "api:alice".into(),
                },
                at: t(13),
            },
        );
        assert_eq!(state(&history).session.as_ref().unwrap().hosts(), 1);
        // Ending the session makes whoever is left leave first.
        let end = run(
            &mut history,
            ConferenceCommand::EndSession {
                reason: SessionEndReason::LastHostLeft,
                at: t(30),
            },
        );
        assert!(matches!(&end[0], ConferenceEvent::ParticipantLeft(e) if e.leg_id == HOST));
        assert!(matches!(&end[1], ConferenceEvent::ConferenceSessionEnded(_)));
        assert!(state(&history).session.is_none());
        run(
            &mut history,
            ConferenceCommand::StoreRecording {
                session_id: SESSION,
                path: "recordings/x.wav".into(),
                duration_ms: 20_000,
                sha256: "AB".repeat(32),
                at: t(31),
            },
        );
        assert_eq!(state(&history).ended_sessions.get(&SESSION), Some(&true));
    }

    #[test]
    fn rules_table() {
        let join = |leg_id: Uuid| ConferenceCommand::Join {
            leg_id,
            call_id: CALL,
            role: Role::Guest,
            at: t(12),
        };
        let recording = |session_id: Uuid, sha256: &str| ConferenceCommand::StoreRecording {
            session_id,
            path: "r.wav".into(),
            duration_ms: 1,
            sha256: sha256.into(),
            at: t(40),
        };
        let good_sha = "0".repeat(64);
        let mut same_codes = settings();
        same_codes.guest_code = same_codes.host_code.clone();
        let mut letters = settings();
        letters.host_code = "12a4".into();
        let mut too_big = settings();
        too_big.max_participants = MAX_PARTICIPANTS_CEILING + 1;
        let mut bad_number = settings();
        bad_number.access_number = Some("70x".into());
        let stored = ConferenceEvent::ConferenceRecordingStored(ConferenceRecordingStored {
            session_id: SESSION,
            path: "r.wav".into(),
            duration_ms: 1,
            sha256: good_sha.clone(),
            at: t(21),
        });
        let full = vec![
            created(),
            started(),
            joined(HOST, Role::Host),
            joined(GUEST, Role::Guest),
            joined(Uuid::from_u128(12), Role::Guest),
        ];
        let cases: Vec<(
            Vec<ConferenceEvent>,
            ConferenceCommand,
            Result<usize, ConferenceRejection>,
        )> = vec![
            (
                vec![created()],
                ConferenceCommand::Create {
                    room_id: ROOM,
                    tenant_id: TENANT,
                    settings: settings(),
                    at: t(1),
                },
                Err(ConferenceRejection::AlreadyExists),
            ),
            (vec![], join(GUEST), Err(ConferenceRejection::NotFound)),
            (vec![created()], join(GUEST), Err(ConferenceRejection::NoSession)),
            (
                vec![created(), started(), joined(GUEST, Role::Guest)],
                join(GUEST),
                Err(ConferenceRejection::AlreadyJoined),
            ),
            (full, join(Uuid::from_u128(13)), Err(ConferenceRejection::Full(3))),
            (
                vec![created(), started()],
                ConferenceCommand::Leave {
                    leg_id: HOST,
                    at: t(12),
                },
                Err(ConferenceRejection::NotInRoom),
            ),
            (
                vec![created(), started()],
                ConferenceCommand::Remove { at: t(12) },
                Err(ConferenceRejection::SessionActive),
            ),
            (
                vec![created(), started()],
                ConferenceCommand::StartSession {
                    session_id: Uuid::from_u128(4),
                    node_id: "m".into(),
                    at: t(12),
                },
                Err(ConferenceRejection::SessionActive),
            ),
            (
                vec![created(), started(), ended()],
                ConferenceCommand::StartSession {
                    session_id: SESSION,
                    node_id: "m".into(),
                    at: t(30),
                },
                Err(ConferenceRejection::UnknownSession),
            ),
            (
                vec![
                    created(),
                    ConferenceEvent::ConferenceRoomRemoved(ConferenceRoomRemoved { at: t(1) }),
                ],
                join(GUEST),
                Err(ConferenceRejection::Removed),
            ),
            (
                vec![created(), started()],
                ConferenceCommand::Leave { leg_id: HOST, at: t(1) },
                Err(ConferenceRejection::TimeTravel(format!("{} is before {}", t(1), t(10)))),
            ),
            (
                vec![created(), started(), ended()],
                recording(SESSION, &good_sha),
                Ok(1),
            ),
            (vec![created(), started()], recording(SESSION, &good_sha), Ok(1)),
            (
                vec![created(), started(), ended(), stored],
                recording(SESSION, &good_sha),
                Err(ConferenceRejection::RecordingAlreadyStored),
            ),
            (
                vec![created(), started(), ended()],
                recording(Uuid::from_u128(99), &good_sha),
                Err(ConferenceRejection::UnknownSession),
            ),
            (
                vec![created(), started(), ended()],
                recording(SESSION, "xyz"),
                Err(ConferenceRejection::InvalidRecording(
                    "sha256 must be 64 hex digits".into(),
                )),
            ),
            (
                vec![created(), started(), joined(GUEST, Role::Guest)],
                ConferenceCommand::RequestMute {
                    leg_id: GUEST,
                    mute: true,
                    by: Actor::Api { actor: String::new() },
                    at: t(12),
                },
                Err(ConferenceRejection::InvalidActor),
            ),
            (
                vec![created(), started(), joined(GUEST, Role::Guest)],
                ConferenceCommand::SetMuted {
                    leg_id: GUEST,
                    muted: false,
                    by: Actor::Participant,
                    at: t(12),
                },
                Ok(0),
            ),
            (
                vec![created()],
                ConferenceCommand::EndSession {
                    reason: SessionEndReason::Empty,
                    at: t(12),
                },
                Err(ConferenceRejection::NoSession),
            ),
        ];
        for (history, command, expected) in cases {
            assert_eq!(
                decide(&command, &state(&history)).map(|e| e.len()),
                expected,
                "given {history:?} when {command:?}"
            );
        }
        for bad in [same_codes, letters, too_big, bad_number] {
            assert!(
                matches!(
                    decide(
                        &ConferenceCommand::Update {
                            settings: bad.clone(),
                            at: t(1)
                        },
                        &state(&[created()])
                    ),
                    Err(ConferenceRejection::InvalidSettings(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn events_round_trip_through_their_stored_form() {
        use crate::event::DomainEvent;
        let events = vec![
            created(),
            started(),
            joined(HOST, Role::Host),
            ConferenceEvent::ParticipantMuted(ParticipantMuted {
                session_id: SESSION,
                leg_id: HOST,
                by: Actor::Host { leg_id: HOST },
                at: t(12),
            }),
            ended(),
        ];
        for event in events {
            let back =
                ConferenceEvent::from_stored(event.event_type(), event.schema_version(), &event.to_payload()).unwrap();
            assert_eq!(back, event);
        }
    }
}
