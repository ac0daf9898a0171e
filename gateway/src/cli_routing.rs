//! `ledgerline trunk|route|did …`: a tenant's SIP trunks, outbound routes and inbound DIDs,
//! all decided by the tenant's routing table (`domain::routing`).

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use commands::{CommandError, CommandHandler, EventStore, StreamRef};
use domain::routing::{self, DidAdded, RouteAdded, RoutingCommand, RoutingTable, TrunkAdded, TrunkTransport};
use sqlx::Row;
use uuid::Uuid;

use crate::cli_directory::context;
use crate::roles;

#[derive(Subcommand, Debug)]
pub enum TrunkCommand {
    /// Add a SIP trunk; prints its id.
    Add {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        name: String,
        /// The carrier's host name or address.
        #[arg(long)]
        host: String,
        #[arg(long, default_value_t = 5060)]
        port: u16,
        #[arg(long, value_parser = ["udp", "tcp"], default_value = "udp")]
        transport: String,
        /// IP authentication: calls from these addresses come in through this trunk (comma-separated).
        #[arg(long, value_delimiter = ',')]
        allow_ip: Vec<String>,
        /// Outbound digest credentials, if the carrier challenges.
        #[arg(long, requires = "password")]
        username: Option<String>,
        #[arg(long, env = "LEDGERLINE_TRUNK_PASSWORD", requires = "username")]
        password: Option<String>,
        #[arg(long)]
        command_id: Option<Uuid>,
    },
    /// List a tenant's trunks.
    List {
        #[arg(long)]
        tenant: Uuid,
    },
    /// Remove a trunk no route uses.
    Remove {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        trunk: Uuid,
    },
}

#[derive(Subcommand, Debug)]
pub enum RouteCommand {
    /// Add an outbound route: numbers starting with PREFIX leave through the trunks, in order; prints its id.
    Add {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long, default_value = "")]
        prefix: String,
        /// Trunk ids in failover order (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        trunks: Vec<Uuid>,
        #[arg(long, default_value_t = 0)]
        strip: u8,
        #[arg(long, default_value = "")]
        prepend: String,
        #[arg(long, default_value_t = 0)]
        priority: i32,
        #[arg(long)]
        command_id: Option<Uuid>,
    },
    List {
        #[arg(long)]
        tenant: Uuid,
    },
    Remove {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        route: Uuid,
    },
}

#[derive(Subcommand, Debug)]
pub enum DidCommand {
    /// Route calls to a DID (arriving through one of the tenant's trunks) to an extension.
    Add {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        did: String,
        #[arg(long)]
        extension: String,
        #[arg(long)]
        command_id: Option<Uuid>,
    },
    List {
        #[arg(long)]
        tenant: Uuid,
    },
    Remove {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        did: String,
    },
}

/// Runs one routing command on the tenant's routing table; rejections exit 2.
async fn execute(
    handler: &CommandHandler,
    tenant: Uuid,
    command_id: Option<Uuid>,
    command: RoutingCommand,
) -> anyhow::Result<Option<ExitCode>> {
    let ctx = context(command_id);
    let result = handler
        .execute::<RoutingTable, _>(&ctx, StreamRef::of::<RoutingTable>(tenant, &tenant), |s| {
            routing::decide(&command, s)
        })
        .await;
    match result {
        Ok(_) => Ok(None),
        Err(CommandError::Rejected(reason)) => {
            eprintln!("ledgerline: rejected: {reason}");
            Ok(Some(ExitCode::from(2)))
        }
        Err(e) => Err(e.into()),
    }
}

fn now() -> chrono::DateTime<chrono::Utc> {
    context(None).now
}

fn printed(code: Option<ExitCode>, id: impl std::fmt::Display) -> ExitCode {
    match code {
        Some(code) => code,
        None => {
            println!("{id}");
            ExitCode::SUCCESS
        }
    }
}

pub async fn trunk(data_dir: &Path, command: TrunkCommand) -> anyhow::Result<ExitCode> {
    let db = roles::open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let handler = CommandHandler::new(store.clone());
    Ok(match command {
        TrunkCommand::Add {
            tenant,
            name,
            host,
            port,
            transport,
            allow_ip,
            username,
            password,
            command_id,
        } => {
            let id = Uuid::new_v5(&command_id.unwrap_or_else(Uuid::new_v4), b"trunk");
            let added = TrunkAdded {
                trunk_id: id,
                name,
                host,
                port,
                transport: if transport == "tcp" {
                    TrunkTransport::Tcp
                } else {
                    TrunkTransport::Udp
                },
                allowed_ips: allow_ip,
                username,
                password,
                at: now(),
            };
            printed(
                execute(&handler, tenant, command_id, RoutingCommand::AddTrunk(added)).await?,
                id,
            )
        }
        TrunkCommand::List { tenant } => {
            roles::catch_up(&store).await?;
            let rows = sqlx::query(
                "SELECT trunk_id, name, host, port, transport, allowed_ips, username IS NOT NULL AS auth \
                 FROM rm_trunks WHERE tenant_id = $1 ORDER BY name",
            )
            .bind(tenant)
            .fetch_all(&db.pool)
            .await?;
            println!(
                "{:<36}  {:<16}  {:<28}  transport  allowed_ips  outbound_auth",
                "trunk_id", "name", "peer"
            );
            for r in rows {
                let id: Uuid = r.get("trunk_id");
                let name: String = r.get("name");
                let host: String = r.get("host");
                let port: i32 = r.get("port");
                let transport: String = r.get("transport");
                let ips: Vec<String> = r.get("allowed_ips");
                let auth: bool = r.get("auth");
                println!(
                    "{id}  {name:<16}  {:<28}  {transport:<9}  {}  {}",
                    format!("{host}:{port}"),
                    ips.join(","),
                    if auth { "digest" } else { "none" }
                );
            }
            ExitCode::SUCCESS
        }
        TrunkCommand::Remove { tenant, trunk } => {
            let command = RoutingCommand::RemoveTrunk {
                trunk_id: trunk,
                at: now(),
            };
            execute(&handler, tenant, None, command)
                .await?
                .unwrap_or(ExitCode::SUCCESS)
        }
    })
}

pub async fn route(data_dir: &Path, command: RouteCommand) -> anyhow::Result<ExitCode> {
    let db = roles::open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let handler = CommandHandler::new(store.clone());
    Ok(match command {
        RouteCommand::Add {
            tenant,
            prefix,
            trunks,
            strip,
            prepend,
            priority,
            command_id,
        } => {
            let id = Uuid::new_v5(&command_id.unwrap_or_else(Uuid::new_v4), b"route");
            let added = RouteAdded {
                route_id: id,
                prefix,
                strip_digits: strip,
                prepend,
                priority,
                trunk_ids: trunks,
                at: now(),
            };
            printed(
                execute(&handler, tenant, command_id, RoutingCommand::AddRoute(added)).await?,
                id,
            )
        }
        RouteCommand::List { tenant } => {
            roles::catch_up(&store).await?;
            let rows = sqlx::query(
                "SELECT route_id, prefix, strip_digits, prepend, priority, trunk_ids FROM rm_routes \
                 WHERE tenant_id = $1 ORDER BY prefix, priority, route_id",
            )
            .bind(tenant)
            .fetch_all(&db.pool)
            .await?;
            println!("{:<36}  {:<12}  strip  prepend  priority  trunks", "route_id", "prefix");
            for r in rows {
                let id: Uuid = r.get("route_id");
                let prefix: String = r.get("prefix");
                let strip: i32 = r.get("strip_digits");
                let prepend: String = r.get("prepend");
                let priority: i32 = r.get("priority");
                let trunks: Vec<Uuid> = r.get("trunk_ids");
                let trunks: Vec<String> = trunks.iter().map(Uuid::to_string).collect();
                println!(
                    "{id}  {prefix:<12}  {strip:>5}  {prepend:<7}  {priority:>8}  {}",
                    trunks.join(",")
                );
            }
            ExitCode::SUCCESS
        }
        RouteCommand::Remove { tenant, route } => {
            let command = RoutingCommand::RemoveRoute {
                route_id: route,
                at: now(),
            };
            execute(&handler, tenant, None, command)
                .await?
                .unwrap_or(ExitCode::SUCCESS)
        }
    })
}

pub async fn did(data_dir: &Path, command: DidCommand) -> anyhow::Result<ExitCode> {
    let db = roles::open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let handler = CommandHandler::new(store.clone());
    Ok(match command {
        DidCommand::Add {
            tenant,
            did,
            extension,
            command_id,
        } => {
            let added = DidAdded {
                did: did.clone(),
                extension_number: extension,
                at: now(),
            };
            printed(
                execute(&handler, tenant, command_id, RoutingCommand::AddDid(added)).await?,
                did,
            )
        }
        DidCommand::List { tenant } => {
            roles::catch_up(&store).await?;
            let rows = sqlx::query("SELECT did, extension_number FROM rm_dids WHERE tenant_id = $1 ORDER BY did")
                .bind(tenant)
                .fetch_all(&db.pool)
                .await?;
            println!("{:<20}  extension", "did");
            for r in rows {
                let did: String = r.get("did");
                let ext: String = r.get("extension_number");
                println!("{did:<20}  {ext}");
            }
            ExitCode::SUCCESS
        }
        DidCommand::Remove { tenant, did } => {
            let command = RoutingCommand::RemoveDid { did, at: now() };
            execute(&handler, tenant, None, command)
                .await?
                .unwrap_or(ExitCode::SUCCESS)
        }
    })
}
