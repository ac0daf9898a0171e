//! Read model `conferences`: conference rooms with their running session, one CDR leg per
//! participant and session, and the live roster, from the `conference-{id}` streams.
//!
//! Conference traffic is a few events per participant, far below call traffic, so each event
//! is one statement (as `directory` does). Rows depend only on the events, in log order.

use commands::store::RecordedEvent;
use domain::conference::{ConferenceEvent, Role, RoomSettings};
use domain::DomainEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::runner::{Projection, ProjectionError};

pub struct Conferences;

pub const TABLES: &[&str] = &["rm_conference_rooms", "rm_conference_legs"];

impl Projection for Conferences {
    /// Registrations are the log's busiest events under load, and this projection has no
    /// use for them.
    fn skips_payloads(&self) -> &'static [&'static str] {
        <domain::registration::RegistrationEvent as domain::DomainEvent>::event_types()
    }

    fn name(&self) -> &'static str {
        "conferences"
    }

    fn version(&self) -> i32 {
        1
    }

    fn tables(&self) -> &'static [&'static str] {
        TABLES
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        for event in events {
            if !ConferenceEvent::event_types().contains(&event.event_type.as_str()) {
                continue;
            }
            let bad = |e: String| ProjectionError::Decode(event.event_id, e);
            let room: Uuid = event
                .stream_id
                .strip_prefix("conference-")
                .ok_or_else(|| bad(format!("a conference event on stream {}", event.stream_id)))?
                .parse()
                .map_err(|e: uuid::Error| bad(e.to_string()))?;
            let decoded: ConferenceEvent = event.decode().map_err(|e| bad(e.to_string()))?;
            apply(conn, event, room, &decoded).await?;
        }
        Ok(())
    }
}

/// How a role is stored in read models.
pub(crate) fn role_name(role: Role) -> &'static str {
    match role {
        Role::Host => "host",
        Role::Guest => "guest",
    }
}

async fn write_settings(
    conn: &mut PgConnection,
    meta: &RecordedEvent,
    room: Uuid,
    settings: &RoomSettings,
    created_at: chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    // Created inserts; Updated changes only the settings (the conflict target is the key).
    sqlx::query(
        "INSERT INTO rm_conference_rooms (tenant_id, room_id, name, owner_account_id, access_number, moderated, \
         max_participants, record, removed, created_at, sessions, last_position) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, false, $9, 0, $10) \
         ON CONFLICT (tenant_id, room_id) DO UPDATE SET name = EXCLUDED.name, \
         owner_account_id = EXCLUDED.owner_account_id, access_number = EXCLUDED.access_number, \
         moderated = EXCLUDED.moderated, max_participants = EXCLUDED.max_participants, \
         record = EXCLUDED.record, last_position = EXCLUDED.last_position",
    )
    .bind(meta.tenant_id)
    .bind(room)
    .bind(&settings.name)
    .bind(settings.owner_account_id)
    .bind(&settings.access_number)
    .bind(settings.moderated)
    .bind(i32::try_from(settings.max_participants).unwrap_or(i32::MAX))
    .bind(settings.record)
    .bind(created_at)
    .bind(meta.global_position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A participant goes: the leg closes with its seconds in the room (a started second counts).
async fn close_leg(
    conn: &mut PgConnection,
    meta: &RecordedEvent,
    room: Uuid,
    session: Uuid,
    leg: Uuid,
    at: chrono::DateTime<chrono::Utc>,
    how: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE rm_conference_legs SET left_at = $5, left_how = $6, \
         in_room_s = ceil(greatest(extract(epoch FROM $5 - joined_at), 0))::int \
         WHERE tenant_id = $1 AND room_id = $2 AND session_id = $3 AND leg_id = $4 AND left_at IS NULL",
    )
    .bind(meta.tenant_id)
    .bind(room)
    .bind(session)
    .bind(leg)
    .bind(at)
    .bind(how)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn set_muted(
    conn: &mut PgConnection,
    meta: &RecordedEvent,
    room: Uuid,
    session: Uuid,
    leg: Uuid,
    muted: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE rm_conference_legs SET muted = $5, mutes = mutes + CASE WHEN $5 AND NOT muted THEN 1 ELSE 0 END \
         WHERE tenant_id = $1 AND room_id = $2 AND session_id = $3 AND leg_id = $4",
    )
    .bind(meta.tenant_id)
    .bind(room)
    .bind(session)
    .bind(leg)
    .bind(muted)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn apply(
    conn: &mut PgConnection,
    meta: &RecordedEvent,
    room: Uuid,
    event: &ConferenceEvent,
) -> Result<(), sqlx::Error> {
    let room_update = |sql: &'static str| {
        sqlx::query(sql)
            .bind(meta.tenant_id)
            .bind(room)
            .bind(meta.global_position)
    };
    match event {
        ConferenceEvent::ConferenceRoomCreated(e) => write_settings(conn, meta, room, &e.settings, e.at).await?,
        ConferenceEvent::ConferenceRoomUpdated(e) => write_settings(conn, meta, room, &e.settings, e.at).await?,
        ConferenceEvent::ConferenceRoomRemoved(_) => {
            room_update("UPDATE rm_conference_rooms SET removed = true, last_position = $3 WHERE tenant_id = $1 AND room_id = $2")
                .execute(&mut *conn)
                .await?;
        }
        ConferenceEvent::ConferenceSessionStarted(e) => {
            room_update(
                "UPDATE rm_conference_rooms SET session_id = $4, session_node = $5, session_started_at = $6, \
                 sessions = sessions + 1, last_position = $3 WHERE tenant_id = $1 AND room_id = $2",
            )
            .bind(e.session_id)
            .bind(&e.node_id)
            .bind(e.at)
            .execute(&mut *conn)
            .await?;
        }
        ConferenceEvent::ParticipantJoined(e) => {
            sqlx::query(
                "INSERT INTO rm_conference_legs (tenant_id, room_id, session_id, leg_id, call_id, role, muted, mutes, \
                 joined_at) VALUES ($1, $2, $3, $4, $5, $6, false, 0, $7)",
            )
            .bind(meta.tenant_id)
            .bind(room)
            .bind(e.session_id)
            .bind(e.leg_id)
            .bind(e.call_id)
            .bind(role_name(e.role))
            .bind(e.at)
            .execute(&mut *conn)
            .await?;
        }
        ConferenceEvent::ParticipantMuted(e) => set_muted(conn, meta, room, e.session_id, e.leg_id, true).await?,
        ConferenceEvent::ParticipantUnmuted(e) => set_muted(conn, meta, room, e.session_id, e.leg_id, false).await?,
        ConferenceEvent::ParticipantLeft(e) => {
            close_leg(conn, meta, room, e.session_id, e.leg_id, e.at, "left").await?
        }
        ConferenceEvent::ParticipantKicked(e) => {
            close_leg(conn, meta, room, e.session_id, e.leg_id, e.at, "kicked").await?
        }
        ConferenceEvent::ConferenceSessionEnded(e) => {
            room_update(
                "UPDATE rm_conference_rooms SET session_id = NULL, session_node = NULL, session_started_at = NULL, \
                 last_position = $3 WHERE tenant_id = $1 AND room_id = $2 AND session_id = $4",
            )
            .bind(e.session_id)
            .execute(&mut *conn)
            .await?;
        }
        // Recordings and the API's requests change no read model here (a request is acted on
        // by the media node, whose `ParticipantMuted`/`ParticipantKicked` land above).
        ConferenceEvent::ConferenceRecordingStored(_)
        | ConferenceEvent::ParticipantMuteRequested(_)
        | ConferenceEvent::ParticipantKickRequested(_) => {}
    }
    Ok(())
}
