//! `ledgerline bench replay`: how fast the `billing` projection (CDRs, charges, balances,
//! reports) rebuilds from position zero, against a plain ordered `SELECT` of the same rows
//! in the same run, on a simulated log of at least a million events.
//!
//! Output, one line: `BENCH replay ours=<events/s> raw_select=<events/s> ratio=<x> unit=events/s`.
//! Each figure is the median of `--runs` timed runs after a warm-up read; the rebuild writes
//! into a shadow schema, so the live read model is untouched.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use commands::EventStore;
use futures::TryStreamExt;
use projections::billing::Billing;
use projections::{rebuild, Projection, Runner};

use crate::roles;
use crate::simulate::{self, SimulateArgs};

#[derive(clap::Args, Debug)]
pub struct BenchReplayArgs {
    /// Simulate traffic until the log holds at least this many events.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: i64,
    /// Timed runs per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Events per projection transaction (the runner's maximum is 10,000).
    #[arg(long, default_value_t = 10_000)]
    pub batch_size: i64,
}

pub async fn run(data_dir: &Path, args: BenchReplayArgs) -> anyhow::Result<ExitCode> {
    let db = roles::open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let result = bench(&store, &args).await;
    db.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn count(store: &EventStore) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await?)
}

async fn bench(store: &EventStore, args: &BenchReplayArgs) -> anyhow::Result<()> {
    // Fill the log: rounds of simulated days with fresh seeds until it is big enough.
    let mut round = 0u64;
    let mut events = count(store).await?;
    while events < args.events {
        round += 1;
        let missing = (args.events - events).max(0) as u64;
        // About ten events per simulated call.
        let calls = (missing / 9 + 100).min(60_000) as u32;
        eprintln!("bench replay: the log has {events} events; simulating {calls} more calls");
        let sim = SimulateArgs {
            tenants: 4,
            calls,
            conferences: 0,
            seed: 0xbe_4c40 + round + events as u64,
            day: chrono::NaiveDate::from_ymd_opt(2025, 3, 31).context("date")?,
            batch: 100,
        };
        simulate::simulate(store, &sim).await?;
        events = count(store).await?;
    }
    println!(
        "# bench replay: cpu={} commit={} events={} runs={} batch={}",
        crate::bench_store::cpu_model(),
        crate::bench_store::commit(),
        events,
        args.runs,
        args.batch_size
    );
    // Warm-up: one read brings the table into the page cache for both contenders.
    raw_select(store).await?;
    let mut raw_rates = Vec::new();
    let mut our_rates = Vec::new();
    for _ in 0..args.runs.max(1) {
        let started = Instant::now();
        let rows = raw_select(store).await?;
        raw_rates.push(rows as f64 / started.elapsed().as_secs_f64());

        rebuild::create_schema(store.pool(), "bench_billing", Billing.tables()).await?;
        let mut runner = Runner::new(store.clone(), Billing)
            .in_schema("bench_billing")
            .batch_size(args.batch_size);
        let started = Instant::now();
        let applied = runner.catch_up().await?;
        our_rates.push(applied as f64 / started.elapsed().as_secs_f64());
        eprintln!(
            "bench replay: run: raw_select {:.0} events/s, rebuild {:.0} events/s",
            raw_rates.last().copied().unwrap_or_default(),
            our_rates.last().copied().unwrap_or_default()
        );
    }
    rebuild::drop_schema(store.pool(), "bench_billing").await?;
    let ours = median(&mut our_rates);
    let raw = median(&mut raw_rates);
    let ratio = if raw > 0.0 { ours / raw } else { 0.0 };
    println!("BENCH replay ours={ours:.0} raw_select={raw:.0} ratio={ratio:.2} unit=events/s");
    Ok(())
}

/// Read every event row in subscription order, as the rebuild reads them; returns the count.
async fn raw_select(store: &EventStore) -> anyhow::Result<u64> {
    let mut rows = sqlx::query(
        "SELECT tx_id::text::bigint AS tx_id, global_position, event_id, tenant_id, stream_id, stream_version, \
         event_type, schema_version, payload, metadata, occurred_at, recorded_at, hash \
         FROM events ORDER BY events.tx_id, events.global_position",
    )
    .fetch(store.pool());
    let mut n = 0u64;
    while rows.try_next().await?.is_some() {
        n += 1;
    }
    Ok(n)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or_default()
}
