//! Conference rooms through `commands`: create a room against its tenant, and list a
//! tenant's rooms by folding their `conference-{id}` streams.

use commands::{CommandContext, CommandError, CommandHandler, EventStore, Outcome, StoreError, StreamRef};

/// Listing only reads; its errors are the store's or a corrupt event.
pub type ListError = CommandError<std::convert::Infallible>;
use domain::conference::{ConferenceCommand, ConferenceRejection, ConferenceRoom, RoomSettings, RoomState};
use domain::tenant::Tenant;
use domain::Aggregate;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("no such tenant")]
    TenantNotFound,
    #[error(transparent)]
    Conference(#[from] ConferenceRejection),
}

/// The most rooms one listing reads.
pub const MAX_LISTED_ROOMS: i64 = 10_000;

/// Create a room owned by `tenant_id`; the tenant must exist. Idempotent by command id.
pub async fn create_room(
    handler: &CommandHandler,
    ctx: &CommandContext,
    tenant_id: Uuid,
    room_id: Uuid,
    settings: RoomSettings,
) -> Result<Outcome, CommandError<RoomError>> {
    let command = ConferenceCommand::Create {
        room_id,
        tenant_id,
        settings,
        at: ctx.now,
    };
    handler
        .execute2::<Tenant, ConferenceRoom, RoomError>(
            ctx,
            StreamRef::of::<Tenant>(tenant_id, &tenant_id),
            StreamRef::of::<ConferenceRoom>(tenant_id, &room_id),
            |tenant, room| {
                if !tenant.exists() {
                    return Err(RoomError::TenantNotFound);
                }
                let events = domain::conference::decide(&command, room)?;
                Ok((vec![], events))
            },
        )
        .await
}

/// Run one command against a room of `tenant_id`.
pub async fn room_command(
    handler: &CommandHandler,
    ctx: &CommandContext,
    tenant_id: Uuid,
    room_id: Uuid,
    command: ConferenceCommand,
) -> Result<Outcome, CommandError<ConferenceRejection>> {
    handler
        .execute::<ConferenceRoom, ConferenceRejection>(
            ctx,
            StreamRef::of::<ConferenceRoom>(tenant_id, &room_id),
            |room| domain::conference::decide(&command, room),
        )
        .await
}

/// Every room of one tenant (removed ones included), ordered by room id.
pub async fn list_rooms(store: &EventStore, tenant_id: Uuid) -> Result<Vec<(Uuid, RoomState)>, ListError> {
    let streams: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT stream_id FROM streams WHERE tenant_id = $1 AND stream_id LIKE 'conference-%' \
         ORDER BY stream_id LIMIT $2",
    )
    .bind(tenant_id)
    .bind(MAX_LISTED_ROOMS)
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::from)?;
    let mut rooms = Vec::new();
    for stream_id in streams {
        let mut state = RoomState::default();
        for recorded in store.read_stream(tenant_id, &stream_id).await? {
            let event = recorded.decode::<<ConferenceRoom as Aggregate>::Event>()?;
            state = ConferenceRoom::evolve(state, &event);
        }
        if let Some(room_id) = state.room_id {
            rooms.push((room_id, state));
        }
    }
    Ok(rooms)
}
