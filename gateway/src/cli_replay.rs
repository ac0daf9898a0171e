//! `ledgerline replay` and `ledgerline audit replay`: rebuild read models from position zero
//! into shadow schemas, swap them in, compare them with the live ones, or build them as of a
//! past moment ("what did we know then").

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use commands::{Cursor, EventStore};
use projections::billing::Billing;
use projections::conferences::Conferences;
use projections::directory::Directory;
use projections::invoices::Invoices;
use projections::webhooks::Webhooks;
use projections::{rebuild, Projection, Runner, Until};
use sqlx::{PgPool, Row};

use crate::roles;

/// Every projection the binary runs, by name.
pub const PROJECTIONS: &[&str] = &["directory", "billing", "invoices", "webhooks", "conferences"];

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Rebuild this projection into a shadow from position zero, then swap it in.
    #[arg(long, conflicts_with_all = ["until", "into"], required_unless_present = "until")]
    pub projection: Option<String>,
    /// Build every read model as of a global position (`1234`) or a moment (RFC 3339, compared
    /// with when events were recorded).
    #[arg(long, requires = "into")]
    pub until: Option<String>,
    /// The schema a time-travel build goes into (created or replaced; never `public`).
    #[arg(long, requires = "until")]
    pub into: Option<String>,
    /// Events per transaction.
    #[arg(long, default_value_t = 5000)]
    pub batch_size: i64,
}

pub async fn replay(data_dir: &Path, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let db = roles::open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let result = match (&args.projection, &args.until, &args.into) {
        (Some(name), _, _) => rebuild_and_swap(&store, name, args.batch_size).await,
        (None, Some(until), Some(schema)) => time_travel(&store, parse_until(until)?, schema, args.batch_size).await,
        _ => Err(anyhow!(
            "give --projection NAME, or --until TIME|POSITION with --into SCHEMA"
        )),
    };
    db.close().await;
    result.map(|()| ExitCode::SUCCESS)
}

fn parse_until(text: &str) -> anyhow::Result<Until> {
    if let Ok(position) = text.trim().parse::<i64>() {
        return Ok(Until::Position(position));
    }
    let at = chrono::DateTime::parse_from_rfc3339(text.trim())
        .map_err(|_| anyhow!("`{text}` is neither a position (1234) nor an RFC 3339 moment"))?;
    Ok(Until::RecordedAt(at.with_timezone(&chrono::Utc)))
}

async fn rebuild_and_swap(store: &EventStore, name: &str, batch_size: i64) -> anyhow::Result<()> {
    match name {
        "directory" => rebuild_one(store, Directory, batch_size).await,
        "billing" => rebuild_one(store, Billing, batch_size).await,
        "invoices" => rebuild_one(store, Invoices, batch_size).await,
        "webhooks" => rebuild_one(store, Webhooks, batch_size).await,
        "conferences" => rebuild_one(store, Conferences, batch_size).await,
        other => bail!("no projection named `{other}` (known: {})", PROJECTIONS.join(", ")),
    }
}

async fn rebuild_one<P: Projection>(store: &EventStore, projection: P, batch_size: i64) -> anyhow::Result<()> {
    let name = projection.name();
    let schema = format!("shadow_{name}");
    rebuild::create_schema(store.pool(), &schema, projection.tables()).await?;
    let mut runner = Runner::new(store.clone(), projection)
        .in_schema(&schema)
        .batch_size(batch_size);
    let started = Instant::now();
    let applied = run_with_progress(store.pool(), &mut runner, name).await?;
    rebuild::swap_into_live(store.pool(), &runner).await?;
    rebuild::drop_schema(store.pool(), &schema).await?;
    say!(
        "replay {name}: rebuilt from position zero in a shadow and swapped in: {applied} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Catch a runner up, drawing a progress bar on stderr; returns the events applied.
pub async fn run_with_progress<P: Projection>(
    pool: &PgPool,
    runner: &mut Runner<P>,
    label: &str,
) -> anyhow::Result<u64> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    let mut bar = Progress::new(label, total.max(0) as u64);
    let mut applied = 0u64;
    loop {
        let n = runner.step().await?;
        if n == 0 {
            break;
        }
        applied += n as u64;
        bar.update(applied);
    }
    // Then whatever waited behind the fence when the read reached it.
    applied += runner.catch_up_to_now(crate::projectors::CATCH_UP_DEADLINE).await?;
    bar.finish(applied);
    Ok(applied)
}

async fn time_travel(store: &EventStore, until: Until, schema: &str, batch_size: i64) -> anyhow::Result<()> {
    let mut tables: Vec<&str> = Vec::new();
    tables.extend(Directory.tables());
    tables.extend(Billing.tables());
    tables.extend(Invoices.tables());
    tables.extend(Conferences.tables());
    rebuild::create_schema(store.pool(), schema, &tables).await?;
    let mut runner = Runner::new(store.clone(), Directory)
        .in_schema(schema)
        .until(Some(until))
        .batch_size(batch_size);
    run_with_progress(store.pool(), &mut runner, "directory").await?;
    let mut runner = Runner::new(store.clone(), Billing)
        .in_schema(schema)
        .until(Some(until))
        .batch_size(batch_size);
    run_with_progress(store.pool(), &mut runner, "billing").await?;
    let mut runner = Runner::new(store.clone(), Invoices)
        .in_schema(schema)
        .until(Some(until))
        .batch_size(batch_size);
    run_with_progress(store.pool(), &mut runner, "invoices").await?;
    let mut runner = Runner::new(store.clone(), Conferences)
        .in_schema(schema)
        .until(Some(until))
        .batch_size(batch_size);
    run_with_progress(store.pool(), &mut runner, "conferences").await?;
    say!("replay: read models as of {until:?} are in schema {schema} (e.g. SELECT * FROM {schema}.rm_balances)");
    Ok(())
}

/// `ledgerline audit replay`: rebuild every projection into a shadow and compare it with the
/// live one; exit non-zero on any difference.
pub async fn audit_replay(data_dir: &Path, max_rows: i64) -> anyhow::Result<ExitCode> {
    let db = roles::open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let mut differs = false;
    let result: anyhow::Result<()> = async {
        differs |= audit_one(&store, || Directory, max_rows).await?;
        differs |= audit_one(&store, || Billing, max_rows).await?;
        differs |= audit_one(&store, || Invoices, max_rows).await?;
        differs |= audit_one(&store, || Webhooks, max_rows).await?;
        differs |= audit_one(&store, || Conferences, max_rows).await?;
        Ok(())
    }
    .await;
    db.close().await;
    result?;
    if differs {
        say!("audit replay: FAILED: a rebuild differs from the live read model");
        Ok(ExitCode::FAILURE)
    } else {
        say!("audit replay: OK: every projection rebuilt from zero equals the live one");
        Ok(ExitCode::SUCCESS)
    }
}

/// Returns true when the rebuild differs from the live read model.
///
/// The live model is caught up, its checkpoint C read, and the shadow built to exactly C
/// (`Until::Cursor`) and compared. No lock is held (a row lock would take a transaction id
/// and hold every subscriber's fence back for the whole rebuild); instead, if a live runner
/// moved its checkpoint during the comparison, the shadow is extended to the new checkpoint
/// and compared again, a bounded number of times.
async fn audit_one<P: Projection>(store: &EventStore, make: impl Fn() -> P, max_rows: i64) -> anyhow::Result<bool> {
    const ATTEMPTS: usize = 5;
    let projection = make();
    let name = projection.name();
    let tables = projection.tables();
    Runner::new(store.clone(), make())
        .catch_up_to_now(crate::projectors::CATCH_UP_DEADLINE)
        .await?;
    let schema = format!("audit_{name}");
    rebuild::create_schema(store.pool(), &schema, tables).await?;
    let mut runner = Runner::new(store.clone(), projection)
        .in_schema(&schema)
        .batch_size(5000);
    let mut report = Comparison::default();
    for _ in 0..ATTEMPTS {
        let cursor = live_cursor(store.pool(), name).await?;
        runner.set_until(Some(Until::Cursor(cursor)));
        run_with_progress(store.pool(), &mut runner, name).await?;
        report = compare(store.pool(), &schema, tables, max_rows).await?;
        report.cursor = cursor;
        if live_cursor(store.pool(), name).await? == cursor {
            break;
        }
    }
    say!(
        "projection {name}: checksum live={} rebuild={} at {}:{} {}",
        report.live_sum,
        report.rebuilt_sum,
        report.cursor.tx_id,
        report.cursor.position,
        if report.differs { "DIFFERS" } else { "identical" }
    );
    for line in &report.lines {
        say!("{line}");
    }
    rebuild::drop_schema(store.pool(), &schema).await?;
    Ok(report.differs)
}

#[derive(Default)]
struct Comparison {
    cursor: Cursor,
    differs: bool,
    live_sum: String,
    rebuilt_sum: String,
    lines: Vec<String>,
}

async fn live_cursor(pool: &PgPool, name: &str) -> anyhow::Result<Cursor> {
    let row = sqlx::query(
        "SELECT tx_id::text::bigint AS tx_id, position FROM public.projection_checkpoints WHERE projection = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some(row) => Cursor {
            tx_id: row.get("tx_id"),
            position: row.get("position"),
        },
        None => Cursor::START,
    })
}

async fn compare(pool: &PgPool, schema: &str, tables: &[&str], max_rows: i64) -> anyhow::Result<Comparison> {
    let mut report = Comparison::default();
    let mut live_sums = String::new();
    let mut rebuilt_sums = String::new();
    for table in tables {
        let live = rebuild::checksum(pool, "public", table).await?;
        let rebuilt = rebuild::checksum(pool, schema, table).await?;
        live_sums.push_str(&live.md5);
        rebuilt_sums.push_str(&rebuilt.md5);
        if live != rebuilt {
            report.differs = true;
            report.lines.push(format!(
                "  {table}: live {} rows md5 {} / rebuild {} rows md5 {}",
                live.rows, live.md5, rebuilt.rows, rebuilt.md5
            ));
            for diff in rebuild::diff(pool, schema, table, max_rows).await? {
                report.lines.push(format!("    only in {}: {}", diff.side, diff.row));
            }
        }
    }
    report.live_sum = sqlx::query_scalar("SELECT md5($1)")
        .bind(&live_sums)
        .fetch_one(pool)
        .await?;
    report.rebuilt_sum = sqlx::query_scalar("SELECT md5($1)")
        .bind(&rebuilt_sums)
        .fetch_one(pool)
        .await?;
    Ok(report)
}

/// A progress bar on stderr: events, events/s and time left, redrawn at most 5 times a second.
pub struct Progress {
    label: String,
    total: u64,
    started: Instant,
    last_draw: Instant,
}

impl Progress {
    pub fn new(label: &str, total: u64) -> Self {
        // The binary may read the clock; progress is display only.
        let now = Instant::now();
        Progress {
            label: label.to_string(),
            total,
            started: now,
            last_draw: now - Duration::from_secs(1),
        }
    }

    pub fn update(&mut self, done: u64) {
        if self.last_draw.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last_draw = Instant::now();
        self.draw(done, false);
    }

    pub fn finish(&mut self, done: u64) {
        self.draw(done, true);
    }

    fn draw(&self, done: u64, last: bool) {
        const WIDTH: u64 = 30;
        let total = self.total.max(done).max(1);
        let filled = (done * WIDTH / total) as usize;
        let elapsed_ms = self.started.elapsed().as_millis().max(1) as u64;
        let rate = done * 1000 / elapsed_ms;
        let left_s = (total - done).checked_div(rate).unwrap_or(0);
        let bar = format!("{}{}", "#".repeat(filled), "-".repeat(WIDTH as usize - filled));
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r{:<10} [{bar}] {done}/{total} events  {rate} events/s  {left_s} s left ",
            self.label
        );
        if last {
            let _ = writeln!(err);
        }
    }
}
