//! `ledgerline tenant …` and `ledgerline extension …`: directory commands and listings.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use commands::directory::{self, DirectoryError};
use commands::{CommandContext, CommandError, CommandHandler, EventStore};
use domain::extension::{ExtensionCommand as ExtCmd, Password};
use domain::tenant::{Limits, TenantCommand as TenantCmd};
use sqlx::Row;
use uuid::Uuid;

use crate::roles;

#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Create a tenant; prints its id.
    Create {
        #[arg(long)]
        name: String,
        /// The tenant's SIP domain (also the digest realm of its extensions).
        #[arg(long)]
        domain: String,
        #[arg(long, default_value_t = 100)]
        max_extensions: u32,
        #[arg(long, default_value_t = 10)]
        max_calls: u32,
        /// Idempotency key: the same id twice creates one tenant.
        #[arg(long)]
        command_id: Option<Uuid>,
    },
    /// List tenants.
    List,
    /// Rename a tenant.
    Rename {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        name: String,
    },
    /// Suspend a tenant (its phones are refused until it is resumed).
    Suspend {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Resume a suspended tenant.
    Resume {
        #[arg(long)]
        tenant: Uuid,
    },
}

#[derive(Subcommand, Debug)]
pub enum ExtensionCommand {
    /// Provision an extension; prints its id. The password is kept only as digest HA1 values.
    Add {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        number: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, env = "LEDGERLINE_EXTENSION_PASSWORD")]
        password: String,
        #[arg(long)]
        command_id: Option<Uuid>,
    },
    /// Provision many extensions from a CSV file (`number,name,password` with a header).
    /// Safe to re-run: each row's command id derives from the tenant and the number.
    Import {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long, value_name = "EXTENSIONS.csv")]
        csv: std::path::PathBuf,
    },
    /// List a tenant's extensions.
    List {
        #[arg(long)]
        tenant: Uuid,
    },
    /// Change an extension's SIP password.
    Passwd {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        extension: Uuid,
        #[arg(long, env = "LEDGERLINE_EXTENSION_PASSWORD")]
        password: String,
    },
    /// Disable an extension (it can no longer register or call).
    Disable {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        extension: Uuid,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Enable a disabled extension.
    Enable {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        extension: Uuid,
    },
}

#[allow(clippy::disallowed_methods)] // The binary is where the clock is read.
pub(crate) fn context(command_id: Option<Uuid>) -> CommandContext {
    let actor = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    CommandContext::new(
        command_id.unwrap_or_else(Uuid::new_v4),
        &format!("cli:{actor}"),
        "cli",
        chrono::Utc::now(),
    )
}

/// Print a command's failure the way a person reads it; rejections exit 2.
fn report(result: Result<commands::Outcome, DirectoryError>) -> anyhow::Result<Option<ExitCode>> {
    match result {
        Ok(_) => Ok(None),
        Err(CommandError::Rejected(reason)) => {
            eprintln!("ledgerline: rejected: {reason}");
            Ok(Some(ExitCode::from(2)))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn tenant(data_dir: &Path, command: TenantCommand) -> anyhow::Result<ExitCode> {
    let db = roles::open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let handler = CommandHandler::new(store.clone());
    let code = match command {
        TenantCommand::Create {
            name,
            domain,
            max_extensions,
            max_calls,
            command_id,
        } => {
            let ctx = context(command_id);
            // A retried command id names the same tenant.
            let tenant_id = Uuid::new_v5(&ctx.command_id, b"tenant");
            let limits = Limits {
                max_extensions,
                max_concurrent_calls: max_calls,
            };
            let result = directory::create_tenant(&handler, &ctx, tenant_id, &name, &domain, limits).await;
            match report(result)? {
                Some(code) => code,
                None => {
                    println!("{tenant_id}");
                    ExitCode::SUCCESS
                }
            }
        }
        TenantCommand::List => {
            roles::catch_up(&store).await?;
            let rows = sqlx::query(
                "SELECT tenant_id, name, sip_domain, extension_count, max_extensions, max_concurrent_calls, suspended \
                 FROM rm_tenants ORDER BY name, tenant_id",
            )
            .fetch_all(&db.pool)
            .await?;
            println!(
                "{:<36}  {:<24}  {:<28}  {:>10}  {:>9}  status",
                "tenant_id", "name", "sip_domain", "extensions", "max_calls"
            );
            for r in rows {
                let tenant_id: Uuid = r.get("tenant_id");
                let name: String = r.get("name");
                let domain: String = r.get("sip_domain");
                let count: i32 = r.get("extension_count");
                let max: i32 = r.get("max_extensions");
                let calls: i32 = r.get("max_concurrent_calls");
                let suspended: bool = r.get("suspended");
                println!(
                    "{tenant_id}  {name:<24}  {domain:<28}  {:>10}  {calls:>9}  {}",
                    format!("{count}/{max}"),
                    if suspended { "suspended" } else { "active" }
                );
            }
            ExitCode::SUCCESS
        }
        TenantCommand::Rename { tenant, name } => {
            let r = directory::tenant_command(&handler, &context(None), tenant, TenantCmd::Rename { name }).await;
            report(r)?.unwrap_or(ExitCode::SUCCESS)
        }
        TenantCommand::Suspend { tenant, reason } => {
            let r = directory::tenant_command(&handler, &context(None), tenant, TenantCmd::Suspend { reason }).await;
            report(r)?.unwrap_or(ExitCode::SUCCESS)
        }
        TenantCommand::Resume { tenant } => {
            let r = directory::tenant_command(&handler, &context(None), tenant, TenantCmd::Resume).await;
            report(r)?.unwrap_or(ExitCode::SUCCESS)
        }
    };
    db.close().await;
    Ok(code)
}

pub async fn extension(data_dir: &Path, command: ExtensionCommand) -> anyhow::Result<ExitCode> {
    let db = roles::open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let handler = CommandHandler::new(store.clone());
    let code = match command {
        ExtensionCommand::Add {
            tenant,
            number,
            name,
            password,
            command_id,
        } => {
            let ctx = context(command_id);
            let extension_id = Uuid::new_v5(&ctx.command_id, b"extension");
            let result =
                directory::provision_extension(&handler, &ctx, tenant, extension_id, &number, &name, &password).await;
            match report(result)? {
                Some(code) => code,
                None => {
                    println!("{extension_id}");
                    ExitCode::SUCCESS
                }
            }
        }
        ExtensionCommand::Import { tenant, csv } => import(&handler, tenant, &csv).await?,
        ExtensionCommand::List { tenant } => {
            roles::catch_up(&store).await?;
            let rows = sqlx::query(
                "SELECT extension_id, number, display_name, enabled FROM rm_extensions WHERE tenant_id = $1 ORDER BY number",
            )
            .bind(tenant)
            .fetch_all(&db.pool)
            .await?;
            println!(
                "{:<36}  {:<8}  {:<24}  status",
                "extension_id", "number", "display_name"
            );
            for r in rows {
                let id: Uuid = r.get("extension_id");
                let number: String = r.get("number");
                let name: String = r.get("display_name");
                let enabled: bool = r.get("enabled");
                println!(
                    "{id}  {number:<8}  {name:<24}  {}",
                    if enabled { "enabled" } else { "disabled" }
                );
            }
            ExitCode::SUCCESS
        }
        ExtensionCommand::Passwd {
            tenant,
            extension,
            password,
        } => {
            let cmd = ExtCmd::ChangePassword {
                password: Password(password),
            };
            report(directory::extension_command(&handler, &context(None), tenant, extension, cmd).await)?
                .unwrap_or(ExitCode::SUCCESS)
        }
        ExtensionCommand::Disable {
            tenant,
            extension,
            reason,
        } => report(
            directory::extension_command(&handler, &context(None), tenant, extension, ExtCmd::Disable { reason }).await,
        )?
        .unwrap_or(ExitCode::SUCCESS),
        ExtensionCommand::Enable { tenant, extension } => {
            report(directory::extension_command(&handler, &context(None), tenant, extension, ExtCmd::Enable).await)?
                .unwrap_or(ExitCode::SUCCESS)
        }
    };
    db.close().await;
    Ok(code)
}

/// The rows of an import file, each with its line number; any malformed row fails the file.
fn import_rows(text: &str, file: &str) -> anyhow::Result<Vec<(usize, String, String, String)>> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim().eq_ignore_ascii_case("number,name,password") => {}
        _ => anyhow::bail!("{file}:1: the header must be `number,name,password`"),
    }
    let mut rows = Vec::new();
    for (index, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.splitn(3, ',').collect();
        if fields.len() != 3 {
            anyhow::bail!(
                "{file}:{}: expected 3 columns (number,name,password), found {}",
                index + 1,
                fields.len()
            );
        }
        rows.push((
            index + 1,
            fields[0].trim().to_string(),
            fields[1].trim().to_string(),
            fields[2].to_string(),
        ));
    }
    Ok(rows)
}

async fn import(handler: &CommandHandler, tenant: Uuid, csv: &std::path::Path) -> anyhow::Result<ExitCode> {
    let file = csv.display().to_string();
    let text = std::fs::read_to_string(csv).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    let rows = import_rows(&text, &file)?;
    let mut created = 0;
    let mut rejected = 0;
    for (line, number, name, password) in rows {
        // The same tenant and number always make the same command: re-running is harmless.
        let command_id = Uuid::new_v5(&tenant, format!("extension-import:{number}").as_bytes());
        let ctx = context(Some(command_id));
        let extension_id = Uuid::new_v5(&ctx.command_id, b"extension");
        match directory::provision_extension(handler, &ctx, tenant, extension_id, &number, &name, &password).await {
            Ok(_) => created += 1,
            Err(CommandError::Rejected(reason)) => {
                eprintln!("{file}:{line}: {number}: rejected: {reason}");
                rejected += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    say!("imported {created} extensions, {rejected} rejected");
    Ok(if rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
