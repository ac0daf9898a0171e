//! Routing area: the tenant's SIP trunks, outbound routes and DIDs (`rm_trunks`, `rm_routes`,
//! `rm_dids`), and their commands on the tenant's `domain::routing::RoutingTable`.
//! A trunk's outbound password is never read here: only whether credentials exist.

use async_graphql::{Context, Enum, Object, SimpleObject};
use commands::{CommandContext, CommandError, Outcome, StreamRef};
use domain::routing::{self, DidAdded, RouteAdded, RoutingCommand, RoutingRejection, RoutingTable, TrunkAdded};
use uuid::Uuid;

use super::auth::Capability;
use super::error::{ApiError, ApiResult};
use super::{command, now, page, require, state, text, Caller, MutationResult};

#[derive(SimpleObject, sqlx::FromRow, Debug, Clone)]
pub struct Trunk {
    pub trunk_id: Uuid,
    pub name: String,
    pub host: String,
    pub port: i32,
    pub transport: String,
    /// IP authentication: calls from these addresses arrive through this trunk.
    pub allowed_ips: Vec<String>,
    pub username: Option<String>,
    /// True when outbound digest credentials are set (the password itself is never exposed).
    pub has_outbound_credentials: bool,
    pub enabled: bool,
}

#[derive(SimpleObject, sqlx::FromRow, Debug, Clone)]
pub struct Route {
    pub route_id: Uuid,
    pub prefix: String,
    pub strip_digits: i32,
    pub prepend: String,
    pub priority: i32,
    /// Trunks in failover order.
    pub trunk_ids: Vec<Uuid>,
}

#[derive(SimpleObject, sqlx::FromRow, Debug, Clone)]
pub struct Did {
    pub did: String,
    pub extension_number: String,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum TrunkTransportInput {
    Udp,
    Tcp,
}

#[derive(Default)]
pub struct RoutingQuery;

#[Object]
impl RoutingQuery {
    /// The tenant's SIP trunks, by name.
    #[graphql(complexity = "(first.unwrap_or(50).clamp(1, 500) as usize) * child_complexity")]
    async fn trunks(&self, ctx: &Context<'_>, first: Option<i32>) -> ApiResult<Vec<Trunk>> {
        let caller = require(ctx, Capability::Read)?;
        let size = page::page_size(ctx, first)?;
        // `password` is deliberately not selected.
        Ok(sqlx::query_as(
            "SELECT trunk_id, name, host, port, transport, allowed_ips, username, \
             (username IS NOT NULL AND password IS NOT NULL) AS has_outbound_credentials, enabled \
             FROM rm_trunks WHERE tenant_id = $1 ORDER BY name, trunk_id LIMIT $2",
        )
        .bind(caller.tenant_id)
        .bind(size)
        .fetch_all(&state(ctx).pool)
        .await?)
    }

    /// The tenant's outbound routes, by prefix then priority.
    #[graphql(complexity = "(first.unwrap_or(50).clamp(1, 500) as usize) * child_complexity")]
    async fn routes(&self, ctx: &Context<'_>, first: Option<i32>) -> ApiResult<Vec<Route>> {
        let caller = require(ctx, Capability::Read)?;
        let size = page::page_size(ctx, first)?;
        Ok(sqlx::query_as(
            "SELECT route_id, prefix, strip_digits, prepend, priority, trunk_ids FROM rm_routes \
             WHERE tenant_id = $1 ORDER BY prefix, priority, route_id LIMIT $2",
        )
        .bind(caller.tenant_id)
        .bind(size)
        .fetch_all(&state(ctx).pool)
        .await?)
    }

    /// The tenant's inbound DIDs and the extensions they ring.
    #[graphql(complexity = "(first.unwrap_or(50).clamp(1, 500) as usize) * child_complexity")]
    async fn dids(&self, ctx: &Context<'_>, first: Option<i32>) -> ApiResult<Vec<Did>> {
        let caller = require(ctx, Capability::Read)?;
        let size = page::page_size(ctx, first)?;
        Ok(
            sqlx::query_as("SELECT did, extension_number FROM rm_dids WHERE tenant_id = $1 ORDER BY did LIMIT $2")
                .bind(caller.tenant_id)
                .bind(size)
                .fetch_all(&state(ctx).pool)
                .await?,
        )
    }
}

/// One command on the caller's routing table: the stream is the caller's tenant's, so
/// another tenant's trunk, route or DID is unknown here (`NOT_FOUND`).
async fn execute(
    ctx: &Context<'_>,
    caller: &Caller,
    cmd: &CommandContext,
    command_: RoutingCommand,
) -> ApiResult<Outcome> {
    let tenant = caller.tenant_id;
    state(ctx)
        .handler
        .execute::<RoutingTable, _>(cmd, StreamRef::of::<RoutingTable>(tenant, &tenant), |s| {
            routing::decide(&command_, s)
        })
        .await
        .map_err(|e| match e {
            CommandError::Rejected(
                r @ (RoutingRejection::UnknownTrunk(_)
                | RoutingRejection::UnknownRoute
                | RoutingRejection::UnknownDid(_)),
            ) => ApiError::not_found(r.to_string()),
            CommandError::Rejected(r @ RoutingRejection::Invalid { .. }) => ApiError::invalid(r.to_string()),
            other => other.into(),
        })
}

fn manage(ctx: &Context<'_>) -> ApiResult<Caller> {
    require(ctx, Capability::ManageDirectory)
}

#[derive(Default)]
pub struct RoutingMutation;

#[Object]
impl RoutingMutation {
    /// Add a SIP trunk; its id derives from the idempotency key.
    #[allow(clippy::too_many_arguments)]
    async fn add_trunk(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        name: String,
        host: String,
        #[graphql(default = 5060)] port: i32,
        #[graphql(default_with = "TrunkTransportInput::Udp")] transport: TrunkTransportInput,
        #[graphql(default)] allowed_ips: Vec<String>,
        username: Option<String>,
        password: Option<String>,
    ) -> ApiResult<MutationResult> {
        let caller = manage(ctx)?;
        text("name", &name, 100)?;
        text("host", &host, 253)?;
        if allowed_ips.len() > 64 {
            return Err(ApiError::invalid("allowedIps has more than 64 entries"));
        }
        for ip in &allowed_ips {
            text("allowedIps", ip, 64)?;
        }
        if username.is_some() != password.is_some() {
            return Err(ApiError::invalid("username and password go together"));
        }
        if let Some(u) = &username {
            text("username", u, 200)?;
        }
        if let Some(p) = &password {
            text("password", p, 200)?;
        }
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| ApiError::invalid("port must be 1..65535"))?;
        let cmd = command(ctx, &caller, "addTrunk", idempotency_key);
        let trunk_id = Uuid::new_v5(&cmd.command_id, b"trunk");
        let added = TrunkAdded {
            trunk_id,
            name,
            host,
            port,
            transport: match transport {
                TrunkTransportInput::Udp => routing::TrunkTransport::Udp,
                TrunkTransportInput::Tcp => routing::TrunkTransport::Tcp,
            },
            allowed_ips,
            username,
            password,
            at: now(),
        };
        let outcome = execute(ctx, &caller, &cmd, RoutingCommand::AddTrunk(added)).await?;
        Ok(MutationResult::new(trunk_id, outcome))
    }

    /// Remove a trunk no route uses.
    async fn remove_trunk(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        trunk_id: Uuid,
    ) -> ApiResult<MutationResult> {
        let caller = manage(ctx)?;
        let cmd = command(ctx, &caller, "removeTrunk", idempotency_key);
        let outcome = execute(ctx, &caller, &cmd, RoutingCommand::RemoveTrunk { trunk_id, at: now() }).await?;
        Ok(MutationResult::new(trunk_id, outcome))
    }

    /// Add an outbound route: numbers starting with `prefix` leave through `trunkIds`, in order.
    #[allow(clippy::too_many_arguments)]
    async fn add_route(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        #[graphql(default)] prefix: String,
        trunk_ids: Vec<Uuid>,
        #[graphql(default)] strip_digits: i32,
        #[graphql(default)] prepend: String,
        #[graphql(default)] priority: i32,
    ) -> ApiResult<MutationResult> {
        let caller = manage(ctx)?;
        text("prefix", &prefix, 32)?;
        text("prepend", &prepend, 32)?;
        if trunk_ids.is_empty() || trunk_ids.len() > 16 {
            return Err(ApiError::invalid("trunkIds must name 1 to 16 trunks"));
        }
        let strip_digits = u8::try_from(strip_digits).map_err(|_| ApiError::invalid("stripDigits must be 0..255"))?;
        let cmd = command(ctx, &caller, "addRoute", idempotency_key);
        let route_id = Uuid::new_v5(&cmd.command_id, b"route");
        let added = RouteAdded {
            route_id,
            prefix,
            strip_digits,
            prepend,
            priority,
            trunk_ids,
            at: now(),
        };
        let outcome = execute(ctx, &caller, &cmd, RoutingCommand::AddRoute(added)).await?;
        Ok(MutationResult::new(route_id, outcome))
    }

    async fn remove_route(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        route_id: Uuid,
    ) -> ApiResult<MutationResult> {
        let caller = manage(ctx)?;
        let cmd = command(ctx, &caller, "removeRoute", idempotency_key);
        let outcome = execute(ctx, &caller, &cmd, RoutingCommand::RemoveRoute { route_id, at: now() }).await?;
        Ok(MutationResult::new(route_id, outcome))
    }

    /// Route calls to a DID (arriving through one of the tenant's trunks) to an extension.
    /// The result's id is the command's id.
    async fn add_did(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        did: String,
        extension_number: String,
    ) -> ApiResult<MutationResult> {
        let caller = manage(ctx)?;
        text("did", &did, 32)?;
        text("extensionNumber", &extension_number, 32)?;
        let cmd = command(ctx, &caller, "addDid", idempotency_key);
        let added = DidAdded {
            did,
            extension_number,
            at: now(),
        };
        let outcome = execute(ctx, &caller, &cmd, RoutingCommand::AddDid(added)).await?;
        Ok(MutationResult::new(cmd.command_id, outcome))
    }

    async fn remove_did(&self, ctx: &Context<'_>, idempotency_key: Uuid, did: String) -> ApiResult<MutationResult> {
        let caller = manage(ctx)?;
        text("did", &did, 32)?;
        let cmd = command(ctx, &caller, "removeDid", idempotency_key);
        let outcome = execute(ctx, &caller, &cmd, RoutingCommand::RemoveDid { did, at: now() }).await?;
        Ok(MutationResult::new(cmd.command_id, outcome))
    }
}
