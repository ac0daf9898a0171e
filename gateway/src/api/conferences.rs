//! Conferences area: the tenant's rooms (`rm_conference_rooms`, projection `conferences`)
//! and the rooms in session now with who is in them (`rm_live_conference_rooms`,
//! `rm_live_conference_participants`). Host and guest codes are not in the read models and
//! so never here.

use std::collections::HashMap;

use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::auth::Capability;
use super::error::ApiResult;
use super::{page, require, state};

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
