//! `ledgerline events export` and `ledgerline audit verify`: the auditors' door to the log.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use commands::subscription::LogWaker;
use commands::{Cursor, EventStore, RecordedEvent};
use serde::Serialize;
use uuid::Uuid;

use crate::roles;

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Print the log as NDJSON, one event per line with every envelope field and its cursor.
    Export {
        /// Only this tenant's events.
        #[arg(long)]
        tenant: Option<Uuid>,
        /// Start after a global position (`1234`) or exactly after a cursor from an
        /// earlier export (`TX_ID:POSITION`, the `cursor` field), which never skips a late commit.
        #[arg(long, value_parser = parse_from)]
        from: Option<From>,
        /// Keep streaming new events until Ctrl-C.
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Recompute every stream's hash chain; exit non-zero naming the first event that does not match.
    Verify {
        #[arg(long)]
        tenant: Option<Uuid>,
    },
    /// Rebuild every projection into a shadow, compare it with the live one (a checksum per
    /// projection, every differing row); exit non-zero on any difference.
    Replay {
        /// Print at most this many differing rows per table.
        #[arg(long, default_value_t = 50)]
        max_rows: i64,
    },
}

#[derive(Debug, Clone, Copy)]
pub enum From {
    Position(i64),
    Cursor(Cursor),
}

fn parse_from(text: &str) -> Result<From, String> {
    let bad = || format!("`{text}` is neither a position (1234) nor a cursor (TX_ID:POSITION)");
    match text.split_once(':') {
        Some((tx, pos)) => Ok(From::Cursor(Cursor {
            tx_id: tx.trim().parse().map_err(|_| bad())?,
            position: pos.trim().parse().map_err(|_| bad())?,
        })),
        None => text.trim().parse().map(From::Position).map_err(|_| bad()),
    }
}

#[derive(Serialize)]
struct ExportLine<'a> {
    cursor: String,
    #[serde(flatten)]
    event: &'a RecordedEvent,
}

/// How long (in 10 ms polls) an export waits for transactions older than its start: 30 s.
const MAX_FENCE_POLLS: u32 = 3000;

/// Whether every transaction running at `xmax`'s snapshot has finished.
async fn fence_passed(store: &EventStore, xmax: i64) -> anyhow::Result<bool> {
    let xmin: i64 = sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        .fetch_one(store.pool())
        .await?;
    Ok(xmin >= xmax)
}

pub async fn events(data_dir: &Path, command: EventsCommand) -> anyhow::Result<ExitCode> {
    let EventsCommand::Export { tenant, from, follow } = command;
    let db = roles::open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let (mut cursor, min_position) = match from {
        None => (Cursor::START, 0),
        Some(From::Position(p)) => (Cursor::START, p),
        Some(From::Cursor(c)) => (c, 0),
    };
    let mut waker = if follow {
        Some(LogWaker::connect(&store, Duration::from_millis(500)).await?)
    } else {
        None
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let start_xmax: i64 = sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
        .fetch_one(store.pool())
        .await?;
    let mut polls = 0u32;
    let result: anyhow::Result<()> = async {
        loop {
            let batch = store.read_all_from(cursor, 1000, tenant, min_position).await?;
            for event in &batch {
                cursor = event.cursor();
                let line = ExportLine {
                    cursor: format!("{}:{}", cursor.tx_id, cursor.position),
                    event,
                };
                serde_json::to_writer(&mut out, &line)?;
                out.write_all(b"\n")?;
            }
            if batch.len() == 1000 {
                continue;
            }
            out.flush()?;
            // Without --follow, export everything committed before the call: the fence is
            // cluster-wide, so wait (bounded) for transactions that were already running.
            if waker.is_none() && !fence_passed(&store, start_xmax).await? && polls < MAX_FENCE_POLLS {
                polls += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            match waker.as_mut() {
                None => return Ok(()),
                Some(waker) => {
                    tokio::select! {
                        _ = waker.wait() => {}
                        _ = tokio::signal::ctrl_c() => return Ok(()),
                    }
                }
            }
        }
    }
    .await;
    drop(out);
    db.close().await;
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

pub async fn audit(data_dir: &Path, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let tenant = match command {
        AuditCommand::Verify { tenant } => tenant,
        AuditCommand::Replay { max_rows } => return crate::cli_replay::audit_replay(data_dir, max_rows).await,
    };
    let db = roles::open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let report = commands::audit::verify(&store, tenant).await;
    db.close().await;
    let report = report?;
    match report.first_break {
        None => {
            println!(
                "audit verify: OK: {} events in {} streams, every hash chain holds",
                report.events, report.streams
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(b) => {
            let event = match (b.event_id, b.global_position) {
                (Some(id), Some(pos)) => format!("event {id} (position {pos}, "),
                _ => "stream head (".to_string(),
            };
            eprintln!(
                "audit verify: FAILED at {event}stream {} version {}, tenant {}): {}",
                b.stream_id, b.stream_version, b.tenant_id, b.reason
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
