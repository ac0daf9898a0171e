//! `ledgerline webhook …`: register, list, change and remove a tenant's webhooks, and read
//! its delivery log.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use commands::{CommandError, CommandHandler, EventStore};
use domain::webhook::WebhookCommand;
use gateway::webhooks::commands as webhook_commands;
use gateway::webhooks::queries::{self, DeliveryFilter, DeliveryStatus};
use uuid::Uuid;

use crate::cli_directory::context;
use crate::roles;

#[derive(Subcommand, Debug)]
pub enum WebhookCommandArgs {
    /// Register a webhook; prints its id (and the secret once, when generated).
    Add {
        #[arg(long)]
        tenant: Uuid,
        /// Where deliveries are POSTed (http or https).
        #[arg(long)]
        url: String,
        /// Comma-separated event types, or `*` for every event of the tenant.
        #[arg(long, default_value = "*", value_delimiter = ',')]
        events: Vec<String>,
        /// The signing secret (16 to 256 printable characters); generated when absent.
        #[arg(long, env = "LEDGERLINE_WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Idempotency key: the same id twice registers one webhook.
        #[arg(long)]
        command_id: Option<Uuid>,
    },
    /// List a tenant's webhooks.
    List {
        #[arg(long)]
        tenant: Uuid,
    },
    /// Change a webhook's URL, event types or secret.
    Update {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        webhook: Uuid,
        #[arg(long)]
        url: Option<String>,
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        #[arg(long, env = "LEDGERLINE_WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
    /// Stop deliveries until enabled again (events in between are not delivered).
    Disable {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        webhook: Uuid,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Resume deliveries.
    Enable {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        webhook: Uuid,
    },
    /// Remove a webhook for good (its secret is deleted; pending deliveries fail).
    Remove {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        webhook: Uuid,
    },
    /// The tenant's delivery log, newest first.
    Deliveries {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        webhook: Option<Uuid>,
        /// pending, delivered or failed.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// The cursor printed at the end of the previous page.
        #[arg(long)]
        after: Option<String>,
    },
}

fn report<T>(result: Result<T, webhook_commands::WebhookError>) -> anyhow::Result<Result<T, ExitCode>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(CommandError::Rejected(reason)) => {
            eprintln!("ledgerline: rejected: {reason}");
            Ok(Err(ExitCode::from(2)))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn webhook(data_dir: &Path, command: WebhookCommandArgs) -> anyhow::Result<ExitCode> {
    let db = roles::open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let handler = CommandHandler::new(store.clone());
    let code = match command {
        WebhookCommandArgs::Add {
            tenant,
            url,
            events,
            secret,
            command_id,
        } => {
            let ctx = context(command_id);
            match report(webhook_commands::register(&handler, &ctx, tenant, &url, &events, secret).await)? {
                Ok(registered) => {
                    println!("{}", registered.webhook_id);
                    if let Some(secret) = registered.generated_secret {
                        eprintln!("the second line is the generated signing secret: it is shown once, keep it");
                        println!("{secret}");
                    }
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        WebhookCommandArgs::List { tenant } => {
            roles::catch_up(&store).await?;
            let hooks = queries::list_webhooks(&db.pool, tenant).await?;
            println!(
                "{:<36}  {:<8}  {:<16}  {:<40}  events",
                "webhook_id", "status", "secret", "url"
            );
            for h in hooks {
                println!(
                    "{}  {:<8}  {:<16}  {:<40}  {}",
                    h.webhook_id,
                    if h.enabled { "enabled" } else { "disabled" },
                    h.secret_fingerprint,
                    h.url,
                    h.event_types.join(",")
                );
            }
            ExitCode::SUCCESS
        }
        WebhookCommandArgs::Update {
            tenant,
            webhook,
            url,
            events,
            secret,
        } => {
            let result = webhook_commands::update(&handler, &context(None), tenant, webhook, url, events, secret).await;
            report(result)?.map(|_| ExitCode::SUCCESS).unwrap_or_else(|code| code)
        }
        WebhookCommandArgs::Disable {
            tenant,
            webhook,
            reason,
        } => {
            let cmd = WebhookCommand::Disable { reason };
            let result = webhook_commands::command(&handler, &context(None), tenant, webhook, cmd).await;
            report(result)?.map(|_| ExitCode::SUCCESS).unwrap_or_else(|code| code)
        }
        WebhookCommandArgs::Enable { tenant, webhook } => {
            let result =
                webhook_commands::command(&handler, &context(None), tenant, webhook, WebhookCommand::Enable).await;
            report(result)?.map(|_| ExitCode::SUCCESS).unwrap_or_else(|code| code)
        }
        WebhookCommandArgs::Remove { tenant, webhook } => {
            let result =
                webhook_commands::command(&handler, &context(None), tenant, webhook, WebhookCommand::Remove).await;
            report(result)?.map(|_| ExitCode::SUCCESS).unwrap_or_else(|code| code)
        }
        WebhookCommandArgs::Deliveries {
            tenant,
            webhook,
            status,
            limit,
            after,
        } => {
            let status = match status.as_deref() {
                None => None,
                Some(text) => match DeliveryStatus::parse(text) {
                    Some(status) => Some(status),
                    None => {
                        eprintln!("ledgerline: --status must be pending, delivered or failed");
                        return Ok(ExitCode::from(2));
                    }
                },
            };
            let filter = DeliveryFilter {
                webhook_id: webhook,
                status,
                ..DeliveryFilter::default()
            };
            let page = match queries::list_deliveries(&db.pool, tenant, &filter, limit, after.as_deref()).await {
                Ok(page) => page,
                Err(queries::QueryError::Database(e)) => return Err(e.into()),
                Err(e) => {
                    eprintln!("ledgerline: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            println!(
                "{:<36}  {:<36}  {:>9}  {:<24}  {:<9}  {:>8}  {:>4}  last_error",
                "webhook_id", "event_id", "position", "event_type", "status", "attempts", "http"
            );
            for d in &page.items {
                println!(
                    "{}  {}  {:>9}  {:<24}  {:<9}  {:>8}  {:>4}  {}",
                    d.webhook_id,
                    d.event_id,
                    d.event_position,
                    d.event_type,
                    d.status.as_str(),
                    d.attempts,
                    d.last_http_status.map(|s| s.to_string()).unwrap_or_default(),
                    d.last_error.as_deref().unwrap_or("")
                );
            }
            if let Some(cursor) = page.end_cursor {
                println!("next page: --after {cursor}");
            }
            ExitCode::SUCCESS
        }
    };
    db.close().await;
    Ok(code)
}
