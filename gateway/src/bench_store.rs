//! `ledgerline bench store`: append and catch-up rates of the event store, each beside
//! plain SQL doing the same rows in the same run, on a scratch database of the same server.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::Utc;
use commands::db::{connect, ensure_database, Database, MIGRATOR};
use commands::testing::with_database;
use commands::{Cursor, EventStore, Expected, Metadata, NewEvent, StreamWrite};
use futures::TryStreamExt;
use serde_json::json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

#[derive(clap::Args, Debug)]
pub struct BenchStoreArgs {
    /// Concurrent appenders in each append figure.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Seconds each measured run lasts (three runs per side, the median is reported).
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Events per page of the catch-up read (the subscription's batch size).
    #[arg(long, default_value_t = commands::subscription::DEFAULT_BATCH_SIZE)]
    pub page_size: i64,
}

const BATCH: usize = 100;
const ROUNDS: usize = 3;

pub async fn run(data_dir: &Path, args: BenchStoreArgs) -> anyhow::Result<ExitCode> {
    let db = Database::open(data_dir, 4).await?;
    let scratch = format!("ledgerline_bench_{}", std::process::id());
    let admin_url = db.url.clone();
    ensure_database(&admin_url, &scratch).await?;
    let url = with_database(&admin_url, &scratch);
    let result = measure(&url, &args).await;
    // Leave nothing behind, whatever happened.
    if let Ok(mut conn) = sqlx::PgConnection::connect_with(&commands::db::connect_options(&admin_url)?).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{scratch}\" WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
    db.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

use sqlx::Connection;

async fn measure(url: &str, args: &BenchStoreArgs) -> anyhow::Result<()> {
    let writers = args.writers.clamp(1, 32);
    let pool = connect(url, writers as u32 + 4).await?;
    MIGRATOR.run(&pool).await?;
    sqlx::query("CREATE TABLE bench_raw_events (LIKE events INCLUDING ALL)")
        .execute(&pool)
        .await?;
    let store = EventStore::new(pool.clone());
    let run_for = Duration::from_secs_f64(args.seconds.clamp(0.5, 20.0));

    println!(
        "# bench store: cpu={} commit={} writers={} batch={} rounds={} seconds_per_run={}",
        cpu_model(),
        commit(),
        writers,
        BATCH,
        ROUNDS,
        run_for.as_secs_f64()
    );

    // Warm-up: connections, plans, caches.
    appenders(&store, &pool, writers, BATCH, Duration::from_millis(500), Side::Ours).await?;
    appenders(&store, &pool, writers, BATCH, Duration::from_millis(500), Side::Raw).await?;

    for (name, batch) in [("store_append_batched", BATCH), ("store_append_single", 1)] {
        let mut ours = Vec::new();
        let mut raw = Vec::new();
        for _ in 0..ROUNDS {
            ours.push(appenders(&store, &pool, writers, batch, run_for, Side::Ours).await?);
            raw.push(appenders(&store, &pool, writers, batch, run_for, Side::Raw).await?);
        }
        line(name, median(ours), "raw_insert", median(raw), "events/s");
    }

    let mut ours = Vec::new();
    let mut raw = Vec::new();
    for _ in 0..ROUNDS {
        ours.push(catch_up_ours(&store, args.page_size.clamp(100, 50_000)).await?);
        raw.push(catch_up_raw(&pool).await?);
    }
    line(
        "store_catchup_read",
        median(ours),
        "raw_select",
        median(raw),
        "events/s",
    );
    pool.close().await;
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Ours,
    Raw,
}

/// `writers` tasks appending `batch` events per append for `run_for`; returns events/s.
async fn appenders(
    store: &EventStore,
    pool: &PgPool,
    writers: usize,
    batch: usize,
    run_for: Duration,
    side: Side,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let deadline = start + run_for;
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let store = store.clone();
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let tenant = Uuid::new_v4();
            let stream = format!("bench-{}", Uuid::new_v4());
            let mut version = 0u64;
            let mut written = 0u64;
            // Bounded in time and in count.
            while Instant::now() < deadline && written < 5_000_000 {
                let events: Vec<NewEvent> = (0..batch).map(|i| bench_event(version + i as u64)).collect();
                match side {
                    Side::Ours => {
                        let expected = if version == 0 {
                            Expected::NoStream
                        } else {
                            Expected::Exact(version)
                        };
                        store
                            .append(&[StreamWrite {
                                tenant_id: tenant,
                                stream_id: stream.clone(),
                                expected,
                                events,
                            }])
                            .await?;
                    }
                    Side::Raw => raw_insert(&pool, tenant, &stream, version, &events).await?,
                }
                version += batch as u64;
                written += batch as u64;
            }
            anyhow::Ok(written)
        }));
    }
    let mut total = 0u64;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

#[allow(clippy::disallowed_methods)] // The binary is where the clock is read.
fn bench_event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "TenantRenamed".into(),
        schema_version: 1,
        payload: json!({ "name": format!("Bench tenant renamed for the {n}th time, a realistic length") }),
        metadata: Metadata {
            command_id: Some(Uuid::new_v4()),
            node_id: Some("bench".into()),
            actor: Some("bench".into()),
            ..Metadata::default()
        },
        occurred_at: Utc::now(),
    }
}

/// The baseline: the same rows in one multi-row INSERT, no stream check, no hashing.
async fn raw_insert(
    pool: &PgPool,
    tenant: Uuid,
    stream: &str,
    version: u64,
    events: &[NewEvent],
) -> anyhow::Result<()> {
    let n = events.len();
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let tenants = vec![tenant; n];
    let streams = vec![stream.to_string(); n];
    let versions: Vec<i64> = (0..n).map(|i| (version + i as u64 + 1) as i64).collect();
    let types: Vec<String> = events.iter().map(|e| e.event_type.clone()).collect();
    let schema = vec![1i32; n];
    let payloads: Vec<serde_json::Value> = events.iter().map(|e| e.payload.clone()).collect();
    let metadata: Vec<serde_json::Value> = events
        .iter()
        .map(|e| serde_json::to_value(&e.metadata).unwrap_or_default())
        .collect();
    let occurred: Vec<chrono::DateTime<Utc>> = events.iter().map(|e| e.occurred_at).collect();
    let hashes = vec![vec![0u8; 32]; n];
    sqlx::query(
        "INSERT INTO bench_raw_events (event_id, tenant_id, stream_id, stream_version, event_type, schema_version, \
                                       payload, metadata, occurred_at, hash) \
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::int[], \
                              $7::jsonb[], $8::jsonb[], $9::timestamptz[], $10::bytea[])",
    )
    .bind(&ids)
    .bind(&tenants)
    .bind(&streams)
    .bind(&versions)
    .bind(&types)
    .bind(&schema)
    .bind(&payloads)
    .bind(&metadata)
    .bind(&occurred)
    .bind(&hashes)
    .execute(pool)
    .await?;
    Ok(())
}

/// Ours: the subscription's fenced, paged read of the whole log, decoded.
async fn catch_up_ours(store: &EventStore, page_size: i64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut cursor = Cursor::START;
    let mut count = 0u64;
    loop {
        let batch = store.read_all(cursor, page_size, None).await?;
        let Some(last) = batch.last() else { break };
        cursor = last.cursor();
        count += batch.len() as u64;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// The baseline: one plain ordered SELECT of the same rows, decoded to the same columns.
async fn catch_up_raw(pool: &PgPool) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut rows = sqlx::query(
        "SELECT tx_id::text::bigint AS tx_id, global_position, event_id, tenant_id, stream_id, stream_version, event_type, \
                schema_version, payload, metadata, occurred_at, recorded_at, hash FROM events ORDER BY global_position",
    )
    .fetch(pool);
    let mut count = 0u64;
    while let Some(row) = rows.try_next().await? {
        let _: (
            i64,
            i64,
            Uuid,
            Uuid,
            String,
            i64,
            String,
            i32,
            serde_json::Value,
            serde_json::Value,
        ) = (
            row.try_get("tx_id")?,
            row.try_get("global_position")?,
            row.try_get("event_id")?,
            row.try_get("tenant_id")?,
            row.try_get("stream_id")?,
            row.try_get("stream_version")?,
            row.try_get("event_type")?,
            row.try_get("schema_version")?,
            row.try_get("payload")?,
            row.try_get("metadata")?,
        );
        let _: (chrono::DateTime<Utc>, chrono::DateTime<Utc>, Vec<u8>) = (
            row.try_get("occurred_at")?,
            row.try_get("recorded_at")?,
            row.try_get("hash")?,
        );
        count += 1;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn line(name: &str, ours: f64, baseline_name: &str, baseline: f64, unit: &str) {
    let ratio = if baseline > 0.0 { ours / baseline } else { 0.0 };
    println!("BENCH {name} ours={ours:.0} {baseline_name}={baseline:.0} ratio={ratio:.2} unit={unit}");
}

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().replace(' ', "_"))
        })
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn commit() -> String {
    if let Some(commit) = option_env!("LEDGERLINE_COMMIT") {
        return commit.to_string();
    }
    std::process::Command::new("git")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
