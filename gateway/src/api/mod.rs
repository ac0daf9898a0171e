//! The API door: GraphQL (`/graphql`, GraphiQL at `/graphiql`, graphql-ws at `/graphql/ws`),
//! REST files under `/api/v1`, `/healthz` and `/metrics`, on one axum server.
//!
//! Reads come from read models (`rm_*`) and the event store, always filtered by the caller's
//! tenant in SQL; writes are commands through `commands::CommandHandler`, the idempotency key
//! naming the command. One resolver module per area (`directory`, `billing`, `events`,
//! `keys`, `routing`, `webhooks`, `conferences`, `calls`): a new area adds a module and one line in `schema.rs`.

pub mod auth;
pub mod billing;
pub mod calls;
pub mod client;
pub mod conferences;
pub mod directory;
pub mod doc_cache;
pub mod error;
pub mod events;
pub mod key_cache;
pub mod keys;
pub mod metrics;
pub mod page;
pub mod raw_json;
pub mod rest;
pub mod routing;
pub mod schema;
pub mod server;
pub mod webhooks;

use async_graphql::Context;
use chrono::{DateTime, Utc};
use commands::{CommandContext, CommandHandler, EventStore};
use sqlx::PgPool;
use uuid::Uuid;

pub use auth::Caller;
pub use error::{ApiError, ApiResult, Code};
pub use server::{start, ApiServer};

/// What the server enforces; defaults suit a production node, tests shrink them.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub bind: std::net::SocketAddr,
    pub node_id: String,
    pub max_depth: usize,
    pub max_complexity: usize,
    pub max_page_size: i64,
    pub max_body_bytes: usize,
    pub rate_per_second: u32,
    pub rate_burst: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            bind: std::net::SocketAddr::from(([0, 0, 0, 0], 8080)),
            node_id: "api-1".into(),
            max_depth: 10,
            max_complexity: 50_000,
            max_page_size: 500,
            max_body_bytes: 256 * 1024,
            rate_per_second: 200,
            rate_burst: 400,
        }
    }
}

/// Everything a resolver may reach, put in the schema's data.
#[derive(Clone)]
pub struct ApiState {
    pub pool: PgPool,
    pub store: EventStore,
    pub handler: CommandHandler,
    pub config: ApiConfig,
    /// The keys this node has authenticated; `server::start` runs its follower.
    pub keys: std::sync::Arc<key_cache::KeyCache>,
}

pub(crate) fn state<'a>(ctx: &Context<'a>) -> &'a ApiState {
    // The schema is always built with its state (see `server::start` and `schema::build`).
    ctx.data_unchecked::<ApiState>()
}

pub(crate) fn caller(ctx: &Context<'_>) -> ApiResult<Caller> {
    ctx.data_opt::<Caller>().copied().ok_or_else(ApiError::unauthenticated)
}

/// The caller, if it holds `capability`.
pub(crate) fn require(ctx: &Context<'_>, capability: auth::Capability) -> ApiResult<Caller> {
    let caller = caller(ctx)?;
    caller.require(capability)?;
    Ok(caller)
}

#[allow(clippy::disallowed_methods)] // The API shell is where a command's clock is read.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now()
}

/// The command of a mutation: its id derives from the caller's tenant, the operation and the
/// idempotency key, so a retry is recognised and two tenants' keys never collide.
pub(crate) fn command(ctx: &Context<'_>, caller: &Caller, operation: &str, idempotency_key: Uuid) -> CommandContext {
    let command_id = Uuid::new_v5(&caller.tenant_id, format!("{operation}:{idempotency_key}").as_bytes());
    CommandContext::new(
        command_id,
        &format!("api-key:{}", caller.key_id),
        &state(ctx).config.node_id,
        now(),
    )
}

/// What every mutation answers.
#[derive(async_graphql::SimpleObject, Debug, Clone)]
pub struct MutationResult {
    /// The id of the thing created or changed.
    pub id: Uuid,
    /// True when this idempotency key had been used before and nothing new was written.
    pub replayed: bool,
    /// Global positions of the events written (or found, on a replay).
    pub positions: Vec<i64>,
}

impl MutationResult {
    pub fn new(id: Uuid, outcome: commands::Outcome) -> Self {
        MutationResult {
            id,
            replayed: outcome.replayed,
            positions: outcome.positions,
        }
    }
}

/// Checks on free text arguments.
pub(crate) fn text(name: &str, value: &str, max: usize) -> ApiResult<()> {
    if value.chars().count() > max {
        return Err(ApiError::invalid(format!("{name} is longer than {max} characters")));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(ApiError::invalid(format!("{name} contains control characters")));
    }
    Ok(())
}
