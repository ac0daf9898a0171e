//! Conferences area: the tenant's rooms (`rm_conference_rooms`, projection `conferences`)
//! and the rooms in session now with who is in them (`rm_live_conference_rooms`,
//! `rm_live_conference_participants`). Host and guest codes are not in the read models and
//! so never here: a room's codes are written by `createConferenceRoom` /
//! `updateConferenceRoom` and never read back.
//!
//! The writes go through the `domain::conference` decider on the room's stream, loaded under
//! the caller's tenant (another tenant's room is not found). Mute, unmute and kick are
//! requests (`ParticipantMuteRequested`, `ParticipantKickRequested`) that the media node
//! holding the session acts on.

use std::collections::HashMap;

use async_graphql::{Context, Object, SimpleObject};
use billing::aggregates::Account;
use chrono::{DateTime, Utc};
use commands::{CommandContext, CommandError, Outcome, StreamRef};
use domain::conference::{
    self as room, Actor, ConferenceCommand, ConferenceRejection, ConferenceRoom as Room, RoomSettings,
};
use uuid::Uuid;

use super::auth::Capability;
use super::error::{ApiError, ApiResult};
use super::{command, page, require, state, text, Caller, MutationResult};

#[derive(SimpleObject, sqlx::FromRow, Debug, Clone)]
pub struct ConferenceRoom {
    pub room_id: Uuid,
    pub name: String,
    /// The account the room's legs are charged to.
    pub owner_account_id: Uuid,
    pub access_number: Option<String>,
    pub moderated: bool,
    pub max_participants: i32,
    pub record: bool,
    pub created_at: DateTime<Utc>,
    /// The running session, while someone is in the room.
    pub session_id: Option<Uuid>,
    pub session_started_at: Option<DateTime<Utc>>,
    /// Sessions held so far.
    pub sessions: i32,
}

#[derive(SimpleObject, sqlx::FromRow, Debug, Clone)]
pub struct ConferenceParticipant {
    #[graphql(skip)]
    pub room_id: Uuid,
    pub leg_id: Uuid,
    pub call_id: Uuid,
    /// `host` or `guest`.
    pub role: String,
    pub muted: bool,
    /// Talking now (the mixer hears their voice; held ~0.5 s through pauses; never while muted).
    pub talking: bool,
    pub joined_at: DateTime<Utc>,
}

#[derive(SimpleObject, sqlx::FromRow, Debug, Clone)]
pub struct LiveConferenceRoom {
    pub room_id: Uuid,
    pub name: String,
    pub owner_account_id: Uuid,
    pub moderated: bool,
    pub session_id: Uuid,
    pub session_node: Option<String>,
    pub session_started_at: Option<DateTime<Utc>>,
    pub participant_count: i64,
    pub hosts: i64,
    pub muted: i64,
    /// How many participants are talking now.
    pub talking: i64,
    #[sqlx(skip)]
    pub participants: Vec<ConferenceParticipant>,
}

#[derive(Default)]
pub struct ConferencesQuery;

#[Object]
impl ConferencesQuery {
    /// The tenant's conference rooms (removed ones left out), by name.
    #[graphql(complexity = "(first.unwrap_or(50).clamp(1, 500) as usize) * child_complexity")]
    async fn conference_rooms(&self, ctx: &Context<'_>, first: Option<i32>) -> ApiResult<Vec<ConferenceRoom>> {
        let caller = require(ctx, Capability::Read)?;
        let size = page::page_size(ctx, first)?;
        Ok(sqlx::query_as(
            "SELECT room_id, name, owner_account_id, access_number, moderated, max_participants, record, \
                    created_at, session_id, session_started_at, sessions \
             FROM rm_conference_rooms WHERE tenant_id = $1 AND NOT removed ORDER BY name, room_id LIMIT $2",
        )
        .bind(caller.tenant_id)
        .bind(size)
        .fetch_all(&state(ctx).pool)
        .await?)
    }

    /// The tenant's rooms in session now, with who is in them.
    #[graphql(complexity = "(first.unwrap_or(50).clamp(1, 500) as usize) * child_complexity")]
    async fn live_conference_rooms(&self, ctx: &Context<'_>, first: Option<i32>) -> ApiResult<Vec<LiveConferenceRoom>> {
        let caller = require(ctx, Capability::Read)?;
        let size = page::page_size(ctx, first)?;
        live_rooms(&state(ctx).pool, caller.tenant_id, size).await
    }
}

/// The tenant's rooms in session now, with who is in them (at most `limit` rooms).
pub async fn live_rooms(pool: &sqlx::PgPool, tenant_id: Uuid, limit: i64) -> ApiResult<Vec<LiveConferenceRoom>> {
    let mut rooms: Vec<LiveConferenceRoom> = sqlx::query_as(
        "SELECT room_id, name, owner_account_id, moderated, session_id, session_node, session_started_at, \
                participants AS participant_count, hosts, muted, talking \
         FROM rm_live_conference_rooms WHERE tenant_id = $1 ORDER BY name, room_id LIMIT $2",
    )
    .bind(tenant_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let ids: Vec<Uuid> = rooms.iter().map(|r| r.room_id).collect();
    let people: Vec<ConferenceParticipant> = sqlx::query_as(
        "SELECT room_id, leg_id, call_id, role, muted, talking, joined_at FROM rm_live_conference_participants \
         WHERE tenant_id = $1 AND room_id = ANY($2) ORDER BY joined_at, leg_id",
    )
    .bind(tenant_id)
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut by_room: HashMap<Uuid, Vec<ConferenceParticipant>> = HashMap::new();
    for p in people {
        by_room.entry(p.room_id).or_default().push(p);
    }
    for room in &mut rooms {
        room.participants = by_room.remove(&room.room_id).unwrap_or_default();
    }
    Ok(rooms)
}

/// Why a room write was refused: the decider's reason, or an owner account the caller's
/// tenant does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum RoomWriteError {
    #[error("no such account")]
    UnknownAccount,
    #[error(transparent)]
    Room(#[from] ConferenceRejection),
}

fn room_error(e: CommandError<RoomWriteError>) -> ApiError {
    match e {
        CommandError::Rejected(RoomWriteError::UnknownAccount) => ApiError::not_found("no such account"),
        CommandError::Rejected(RoomWriteError::Room(r)) => match r {
            // A removed room is gone for the API as for the listing; a leg that is not in the
            // room (or a room without a session) names no participant.
            ConferenceRejection::NotFound | ConferenceRejection::Removed => ApiError::not_found("no such room"),
            ConferenceRejection::NotInRoom | ConferenceRejection::NoSession => {
                ApiError::not_found("no such participant in the room")
            }
            r @ (ConferenceRejection::InvalidSettings(_) | ConferenceRejection::InvalidActor) => {
                ApiError::invalid(r.to_string())
            }
            other => CommandError::Rejected(other).into(),
        },
        other => other.into(),
    }
}

/// Who the room's events name as the actor of an API request.
fn actor(caller: &Caller) -> Actor {
    Actor::Api {
        actor: format!("api-key:{}", caller.key_id),
    }
}

/// One command on a room of the caller's tenant; `settings` turns the room's current
/// state into the command (so an update merges with the stored codes it never shows).
async fn room_command(
    ctx: &Context<'_>,
    caller: &Caller,
    cmd: &CommandContext,
    room_id: Uuid,
    make: impl Fn(&room::RoomState) -> Result<ConferenceCommand, RoomWriteError>,
) -> ApiResult<Outcome> {
    state(ctx)
        .handler
        .execute::<Room, RoomWriteError>(cmd, StreamRef::of::<Room>(caller.tenant_id, &room_id), |s| {
            let c = make(s)?;
            Ok(room::decide(&c, s)?)
        })
        .await
        .map_err(room_error)
}

/// The command's time, never before the room's last event (the media node writes there
/// too, with its own clock).
fn at_or_after(now: DateTime<Utc>, s: &room::RoomState) -> DateTime<Utc> {
    match s.last_at {
        Some(last) if last > now => last,
        _ => now,
    }
}

fn check_text(name: Option<&str>, access_number: Option<&str>) -> ApiResult<()> {
    if let Some(name) = name {
        text("name", name, room::MAX_NAME_LEN)?;
    }
    if let Some(number) = access_number {
        text("accessNumber", number, room::MAX_NUMBER_LEN)?;
    }
    Ok(())
}

fn max_participants(value: i32) -> ApiResult<u32> {
    u32::try_from(value).map_err(|_| ApiError::invalid("maxParticipants must be positive"))
}

#[derive(Default)]
pub struct ConferencesMutation;

#[Object]
impl ConferencesMutation {
    /// Create a conference room of the caller's tenant; its id derives from the idempotency
    /// key. The codes are digits (callers who enter the host code join as hosts); they are
    /// never shown again. `ownerAccountId` is the tenant's account that pays for every leg.
    #[allow(clippy::too_many_arguments)]
    async fn create_conference_room(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        name: String,
        owner_account_id: Uuid,
        host_code: String,
        guest_code: String,
        #[graphql(default)] moderated: bool,
        #[graphql(default = 50)] max_participants: i32,
        #[graphql(default)] record: bool,
        access_number: Option<String>,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageConferences)?;
        check_text(Some(&name), access_number.as_deref())?;
        let settings = RoomSettings {
            name,
            owner_account_id,
            host_code,
            guest_code,
            moderated,
            max_participants: self::max_participants(max_participants)?,
            record,
            access_number,
        };
        let cmd = command(ctx, &caller, "createConferenceRoom", idempotency_key);
        let room_id = Uuid::new_v5(&cmd.command_id, b"conference");
        let tenant = caller.tenant_id;
        let create = ConferenceCommand::Create {
            room_id,
            tenant_id: tenant,
            settings,
            at: cmd.now,
        };
        // The owner account is loaded under the caller's tenant: another tenant's account
        // is unknown here, and a room can never bill it.
        let outcome = state(ctx)
            .handler
            .execute2::<Account, Room, RoomWriteError>(
                &cmd,
                StreamRef::of::<Account>(tenant, &owner_account_id),
                StreamRef::of::<Room>(tenant, &room_id),
                |account, room_state| {
                    if account.info.is_none() {
                        return Err(RoomWriteError::UnknownAccount);
                    }
                    Ok((vec![], room::decide(&create, room_state)?))
                },
            )
            .await
            .map_err(room_error)?;
        Ok(MutationResult::new(room_id, outcome))
    }

    /// Change a room's settings; what is not given stays as it is (codes included).
    #[allow(clippy::too_many_arguments)]
    async fn update_conference_room(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        room_id: Uuid,
        name: Option<String>,
        host_code: Option<String>,
        guest_code: Option<String>,
        moderated: Option<bool>,
        max_participants: Option<i32>,
        record: Option<bool>,
        access_number: Option<String>,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageConferences)?;
        check_text(name.as_deref(), access_number.as_deref())?;
        let max_participants = max_participants.map(self::max_participants).transpose()?;
        let cmd = command(ctx, &caller, "updateConferenceRoom", idempotency_key);
        let now = cmd.now;
        let outcome = room_command(ctx, &caller, &cmd, room_id, |s| {
            let Some(current) = &s.settings else {
                return Err(ConferenceRejection::NotFound.into());
            };
            let mut settings = current.clone();
            if let Some(v) = &name {
                settings.name = v.clone();
            }
            if let Some(v) = &host_code {
                settings.host_code = v.clone();
            }
            if let Some(v) = &guest_code {
                settings.guest_code = v.clone();
            }
            if let Some(v) = moderated {
                settings.moderated = v;
            }
            if let Some(v) = max_participants {
                settings.max_participants = v;
            }
            if let Some(v) = record {
                settings.record = v;
            }
            if let Some(v) = &access_number {
                settings.access_number = Some(v.clone());
            }
            Ok(ConferenceCommand::Update {
                settings,
                at: at_or_after(now, s),
            })
        })
        .await?;
        Ok(MutationResult::new(room_id, outcome))
    }

    /// Remove a room for good (refused while a session runs in it).
    async fn remove_conference_room(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        room_id: Uuid,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageConferences)?;
        let cmd = command(ctx, &caller, "removeConferenceRoom", idempotency_key);
        let now = cmd.now;
        let outcome = room_command(ctx, &caller, &cmd, room_id, |s| {
            Ok(ConferenceCommand::Remove {
                at: at_or_after(now, s),
            })
        })
        .await?;
        Ok(MutationResult::new(room_id, outcome))
    }

    /// Ask the media node holding the session to mute a participant (by leg).
    async fn mute_participant(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        room_id: Uuid,
        leg_id: Uuid,
    ) -> ApiResult<MutationResult> {
        request_mute(ctx, "muteParticipant", idempotency_key, room_id, leg_id, true).await
    }

    /// Ask the media node holding the session to unmute a participant (by leg).
    async fn unmute_participant(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        room_id: Uuid,
        leg_id: Uuid,
    ) -> ApiResult<MutationResult> {
        request_mute(ctx, "unmuteParticipant", idempotency_key, room_id, leg_id, false).await
    }

    /// Ask the media node holding the session to disconnect a participant (by leg).
    async fn kick_participant(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        room_id: Uuid,
        leg_id: Uuid,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageConferences)?;
        let cmd = command(ctx, &caller, "kickParticipant", idempotency_key);
        let (now, by) = (cmd.now, actor(&caller));
        let outcome = room_command(ctx, &caller, &cmd, room_id, |s| {
            Ok(ConferenceCommand::RequestKick {
                leg_id,
                by: by.clone(),
                at: at_or_after(now, s),
            })
        })
        .await?;
        Ok(MutationResult::new(leg_id, outcome))
    }
}

async fn request_mute(
    ctx: &Context<'_>,
    operation: &str,
    idempotency_key: Uuid,
    room_id: Uuid,
    leg_id: Uuid,
    mute: bool,
) -> ApiResult<MutationResult> {
    let caller = require(ctx, Capability::ManageConferences)?;
    let cmd = command(ctx, &caller, operation, idempotency_key);
    let (now, by) = (cmd.now, actor(&caller));
    let outcome = room_command(ctx, &caller, &cmd, room_id, |s| {
        Ok(ConferenceCommand::RequestMute {
            leg_id,
            mute,
            by: by.clone(),
            at: at_or_after(now, s),
        })
    })
    .await?;
    Ok(MutationResult::new(leg_id, outcome))
}
