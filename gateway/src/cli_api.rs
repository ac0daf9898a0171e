//! `ledgerline api` (the API role alone) and `ledgerline apikey …`.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use commands::{CommandHandler, EventStore};

use crate::cli_directory::context;
use domain::apikey::Role;
use gateway::api::{self, ApiConfig};
use uuid::Uuid;

use crate::roles;

#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    /// Where the API (GraphQL, REST, metrics) listens (port 0 picks a free port).
    #[arg(long, env = "LEDGERLINE_HTTP_BIND", default_value = "0.0.0.0:8080")]
    pub http_bind: std::net::SocketAddr,
    /// Requests per second each API key may make (bursts up to twice this).
    #[arg(long, env = "LEDGERLINE_API_RATE", default_value_t = 200)]
    pub api_rate: u32,
}

impl HttpArgs {
    pub fn config(&self, node_id: &str) -> ApiConfig {
        ApiConfig {
            bind: self.http_bind,
            node_id: node_id.to_string(),
            rate_per_second: self.api_rate,
            rate_burst: self.api_rate.saturating_mul(2),
            ..ApiConfig::default()
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct ApiArgs {
    #[arg(long, env = "LEDGERLINE_NODE_ID", default_value = "api-1")]
    pub node_id: String,
    #[command(flatten)]
    pub http: HttpArgs,
}

#[derive(Subcommand, Debug)]
pub enum ApiKeyCommand {
    /// Create an API key; prints it once (only its SHA-256 is stored).
    Create {
        #[arg(long)]
        tenant: Uuid,
        /// system_admin, tenant_admin, finance, auditor or developer.
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "")]
        label: String,
        /// Idempotency key: the same id twice creates one key (shown only the first time).
        #[arg(long)]
        command_id: Option<Uuid>,
    },
    /// Revoke a key: API nodes refuse it as soon as they read the revocation (on its
    /// commit's notification).
    Revoke {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        key: Uuid,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

pub async fn apikey(data_dir: &Path, command: ApiKeyCommand) -> anyhow::Result<ExitCode> {
    let db = roles::open(data_dir).await?;
    let handler = CommandHandler::new(EventStore::new(db.pool.clone()));
    let result = match command {
        ApiKeyCommand::Create {
            tenant,
            role,
            label,
            command_id,
        } => {
            match Role::parse(&role) {
                None => {
                    eprintln!("ledgerline: unknown role {role:?}: use system_admin, tenant_admin, finance, auditor or developer");
                    Ok(ExitCode::from(2))
                }
                Some(role) => match api::auth::create_key(&handler, &context(command_id), tenant, role, &label).await {
                    Ok(created) if created.outcome.replayed => {
                        eprintln!(
                            "ledgerline: key {} was already created by this command id; its secret was shown then",
                            created.key_id
                        );
                        Ok(ExitCode::from(2))
                    }
                    Ok(created) => {
                        say!("{}", created.key);
                        eprintln!(
                            "key id {} ({}): store the key now, it is not shown again",
                            created.key_id,
                            role.as_str()
                        );
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(e) => {
                        eprintln!("ledgerline: {}", e.message);
                        Ok(ExitCode::from(2))
                    }
                },
            }
        }
        ApiKeyCommand::Revoke { tenant, key, reason } => {
            match api::auth::revoke_key(&handler, None, &context(None), tenant, key, &reason).await {
                Ok(_) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    eprintln!("ledgerline: {}", e.message);
                    Ok(ExitCode::from(2))
                }
            }
        }
    };
    db.close().await;
    result
}

pub async fn serve(data_dir: &Path, args: ApiArgs) -> anyhow::Result<ExitCode> {
    let db = roles::open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let mut shutdown = roles::shutdown_signal();
    let server = api::start(store, args.http.config(&args.node_id), shutdown.clone()).await?;
    say!("ledgerline api: node {}", args.node_id);
    say!(
        "  http: listening on {} (GraphQL /graphql, GraphiQL /graphiql)",
        server.local_addr
    );
    say!("  stop with Ctrl-C");
    let _ = shutdown.wait_for(|stop| *stop).await;
    let _ = server.task.await;
    db.close().await;
    Ok(ExitCode::SUCCESS)
}
