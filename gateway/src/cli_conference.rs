//! `ledgerline conference …`: create and list conference rooms.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use commands::{CommandContext, CommandError, CommandHandler, EventStore};
use domain::conference::RoomSettings;
use uuid::Uuid;

use crate::roles;

#[derive(Subcommand, Debug)]
pub enum ConferenceCommand {
    /// Create a conference room; prints its id.
    Create {
        #[arg(long)]
        tenant: Uuid,
        /// The billing account that pays for every participant leg.
        #[arg(long)]
        owner_account: Uuid,
        #[arg(long, default_value = "")]
        name: String,
        /// Digits; callers who enter it join as hosts.
        #[arg(long)]
        host_code: String,
        /// Digits; callers who enter it join as guests.
        #[arg(long)]
        guest_code: String,
        /// Guests wait for a host; the session ends when the last host leaves.
        #[arg(long)]
        moderated: bool,
        #[arg(long, default_value_t = 50)]
        max: u32,
        /// Record each session's mix to a WAV file.
        #[arg(long)]
        record: bool,
        /// The access number (an extension-like number or a DID) that answers for the room.
        #[arg(long)]
        number: Option<String>,
        /// Idempotency key: the same id twice creates one room.
        #[arg(long)]
        command_id: Option<Uuid>,
    },
    /// List a tenant's rooms.
    List {
        #[arg(long)]
        tenant: Uuid,
    },
}

#[allow(clippy::disallowed_methods)] // The binary is where the clock is read.
fn context(command_id: Option<Uuid>) -> CommandContext {
    let actor = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    CommandContext::new(
        command_id.unwrap_or_else(Uuid::new_v4),
        &format!("cli:{actor}"),
        "cli",
        chrono::Utc::now(),
    )
}

pub async fn conference(data_dir: &Path, command: ConferenceCommand) -> anyhow::Result<ExitCode> {
    let db = roles::open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let handler = CommandHandler::new(store.clone());
    let code = match command {
        ConferenceCommand::Create {
            tenant,
            owner_account,
            name,
            host_code,
            guest_code,
            moderated,
            max,
            record,
            number,
            command_id,
        } => {
            let ctx = context(command_id);
            // A retried command id names the same room.
            let room_id = Uuid::new_v5(&ctx.command_id, b"conference");
            let settings = RoomSettings {
                name,
                owner_account_id: owner_account,
                host_code,
                guest_code,
                moderated,
                max_participants: max,
                record,
                access_number: number,
            };
            match media::rooms::create_room(&handler, &ctx, tenant, room_id, settings).await {
                Ok(_) => {
                    println!("{room_id}");
                    ExitCode::SUCCESS
                }
                Err(CommandError::Rejected(reason)) => {
                    eprintln!("ledgerline: rejected: {reason}");
                    ExitCode::from(2)
                }
                Err(e) => return Err(e.into()),
            }
        }
        ConferenceCommand::List { tenant } => {
            let rooms = media::rooms::list_rooms(&store, tenant).await?;
            println!(
                "{:<36}  {:<20}  {:<8}  {:<9}  {:>4}  {:<6}  {:<5}  status",
                "room_id", "name", "number", "moderated", "max", "record", "live"
            );
            for (room_id, state) in rooms {
                let Some(s) = &state.settings else { continue };
                println!(
                    "{room_id}  {:<20}  {:<8}  {:<9}  {:>4}  {:<6}  {:<5}  {}",
                    s.name,
                    s.access_number.as_deref().unwrap_or("-"),
                    if s.moderated { "yes" } else { "no" },
                    s.max_participants,
                    if s.record { "yes" } else { "no" },
                    state.session.as_ref().map(|x| x.participants.len()).unwrap_or(0),
                    if state.removed { "removed" } else { "active" }
                );
            }
            ExitCode::SUCCESS
        }
    };
    db.close().await;
    Ok(code)
}
