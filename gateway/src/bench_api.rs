//! `ledgerline bench api`: a page of 100 charges with filters, over a tenant-month of a
//! million charges, through GraphQL over HTTP (authentication, rate limit, limits, JSON)
//! against the same query through sqlx alone, in the same run.
//!
//! The fixture is a bench tenant's projected charge rows, inserted in bulk straight into
//! `rm_charges` with one `INSERT … SELECT generate_series` (a read benchmark needs the rows,
//! not the log that would produce them); it is kept for the next run and never touches a
//! real tenant. Output, two lines:
//! `BENCH graphql_charges_p99 ours=<ms> raw_sql=<ms> ratio=<x> unit=ms` and
//! `BENCH graphql_throughput ours=<requests/s> raw_sql=<queries/s> ratio=<x> unit=req/s`.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use chrono::{TimeZone, Utc};
use commands::{CommandContext, CommandHandler, EventStore};
use domain::apikey::Role;
use gateway::api::billing::{charges_query, CallFilter, Charge};
use gateway::api::client::HttpClient;
use gateway::api::{self, ApiConfig};
use uuid::Uuid;

use crate::roles;

#[derive(clap::Args, Debug)]
pub struct BenchApiArgs {
    /// Charges in the bench tenant's month.
    #[arg(long, default_value_t = 1_000_000)]
    pub charges: i64,
    /// Timed requests per side (after a warm-up of a tenth as many).
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Stop the timed rounds after this many seconds, whatever the count.
    #[arg(long, default_value_t = 120)]
    pub max_seconds: u64,
}

/// The bench tenant: fixed, so the fixture is built once per database.
fn bench_tenant() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, b"ledgerline-bench-api-tenant")
}

fn account(n: u32) -> Uuid {
    Uuid::new_v5(&bench_tenant(), format!("account-{n}").as_bytes())
}

const ACCOUNTS: u32 = 10;

pub async fn run(data_dir: &Path, args: BenchApiArgs) -> anyhow::Result<ExitCode> {
    let db = roles::open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let result = bench(&store, &args).await;
    db.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn fixture(store: &EventStore, charges: i64) -> anyhow::Result<()> {
    let tenant = bench_tenant();
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_charges WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(store.pool())
        .await?;
    if have == charges {
        eprintln!("bench api: reusing the fixture ({have} charges)");
        return Ok(());
    }
    eprintln!("bench api: inserting {charges} charges for March 2025 (one INSERT … SELECT)");
    let started = Instant::now();
    let accounts: Vec<Uuid> = (0..ACCOUNTS).map(account).collect();
    let mut tx = store.pool().begin().await?;
    sqlx::query("DELETE FROM rm_charges WHERE tenant_id = $1")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    // Spread over the 31 days of March; destinations in 8 country prefixes; 1 to 600 s.
    sqlx::query(
        "INSERT INTO rm_charges (tenant_id, call_id, leg_id, account_id, answered_at, duration_s, destination, \
           status, unrated_reason, tariff_id, tariff_version, matched_prefix, billed_s, currency, amount, \
           amount_exact, explanation, position) \
         SELECT $1, md5(i::text || 'call')::uuid, md5(i::text || 'leg')::uuid, ($2::uuid[])[1 + i % 10], \
           timestamptz '2025-03-01 00:00:00+00' + (i * (2678400.0 / $3)) * interval '1 second', \
           1 + (i * 7919) % 600, \
           (ARRAY['49','44','33','1','39','34','41','43'])[1 + (i / 10) % 8] || lpad(((i * 104729) % 100000000)::text, 8, '0'), \
           'rated', NULL, $4, 1, (ARRAY['49','44','33','1','39','34','41','43'])[1 + (i / 10) % 8], \
           60 * (1 + ((i * 7919) % 600) / 60), 'EUR', round(((1 + ((i * 7919) % 600) / 60) * 0.0123)::numeric, 4), \
           ((1 + ((i * 7919) % 600) / 60) * 0.0123)::numeric, \
           'prefix ' || (ARRAY['49','44','33','1','39','34','41','43'])[1 + (i / 10) % 8] || ' tariff v1; ' || \
             (1 + ((i * 7919) % 600) / 60) || ' x 60 s at 0.0123/min (peak); fee 0; exact ' || \
             ((1 + ((i * 7919) % 600) / 60) * 0.0123)::numeric || ', posted half-up to 4 places', \
           i \
         FROM generate_series(1, $3::bigint) AS i",
    )
    .bind(tenant)
    .bind(&accounts)
    .bind(charges)
    .bind(Uuid::new_v5(&tenant, b"tariff"))
    .execute(&mut *tx)
    .await
    .context("insert the fixture")?;
    tx.commit().await?;
    sqlx::query("ANALYZE rm_charges").execute(store.pool()).await?;
    eprintln!("bench api: fixture ready in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn filter() -> CallFilter {
    CallFilter {
        account_id: Some(account(3)),
        from: Utc.with_ymd_and_hms(2025, 3, 10, 0, 0, 0).single(),
        to: Utc.with_ymd_and_hms(2025, 3, 20, 0, 0, 0).single(),
        destination: Some("49".into()),
        ..CallFilter::default()
    }
}

const QUERY: &str = "query($filter: CallFilter!) { charges(filter: $filter, first: 100) { \
  edges { cursor node { callId legId accountId answeredAt durationS destination status unratedReason tariffId \
  tariffVersion matchedPrefix billedS currency amount amountExact explanation } } pageInfo { hasNextPage endCursor } } }";

fn p99(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    let index = ((samples.len() as f64) * 0.99).ceil() as usize;
    samples[index.clamp(1, samples.len()) - 1].as_secs_f64() * 1000.0
}

async fn bench(store: &EventStore, args: &BenchApiArgs) -> anyhow::Result<()> {
    if args.requests == 0 || args.charges < 1000 {
        return Err(anyhow!("--requests must be positive and --charges at least 1000"));
    }
    fixture(store, args.charges).await?;
    let tenant = bench_tenant();
    #[allow(clippy::disallowed_methods)] // The binary reads the clock.
    let now = Utc::now();
    let handler = CommandHandler::new(store.clone());
    let ctx = CommandContext::new(Uuid::new_v4(), "bench", "bench", now);
    let key = api::auth::create_key(&handler, &ctx, tenant, Role::Finance, "bench api")
        .await
        .map_err(|e| anyhow!("create the bench key: {}", e.message))?
        .key;
    let config = ApiConfig {
        bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        // The bench measures the query path, not the limiter.
        rate_per_second: 1_000_000,
        rate_burst: 1_000_000,
        ..ApiConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = api::start(store.clone(), config, stop_rx).await?;
    let mut client = HttpClient::new(server.local_addr);
    let filter = filter();
    let variables = serde_json::json!({ "filter": {
        "accountId": filter.account_id, "from": filter.from, "to": filter.to, "destination": filter.destination,
    }});
    let pool = store.pool().clone();
    let raw_once = || {
        let pool = pool.clone();
        let filter = filter.clone();
        async move {
            let rows: Vec<Charge> = charges_query(tenant, &filter, None, Some(101))
                .build_query_as()
                .fetch_all(&pool)
                .await?;
            Ok::<_, anyhow::Error>(rows)
        }
    };
    // Both sides answer the same page.
    let raw = raw_once().await?;
    let ours = client.graphql(&key, QUERY, variables.clone()).await?;
    let edges = ours.json()["data"]["charges"]["edges"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if ours.status != 200 || edges.len() != 100 || raw.len() != 101 {
        return Err(anyhow!(
            "the page is not 100 charges (status {}, {} edges, {} raw rows): {}",
            ours.status,
            edges.len(),
            raw.len(),
            ours.text().chars().take(500).collect::<String>()
        ));
    }
    if edges[99]["node"]["callId"].as_str() != Some(raw[99].call_id.to_string().as_str()) {
        return Err(anyhow!("GraphQL and SQL disagree on the page"));
    }
    let warmup = (args.requests / 10).max(10);
    let budget = Duration::from_secs(args.max_seconds);

    for _ in 0..warmup {
        raw_once().await?;
        client.graphql(&key, QUERY, variables.clone()).await?;
    }
    // Rounds alternate between the two sides, so both see the same machine (a shared 2-core
    // box's load moves within a run); each side's rate is its count over its own time.
    let rounds = 10;
    let per_round = args.requests.div_ceil(rounds);
    let mut raw_samples = Vec::with_capacity(args.requests);
    let mut our_samples = Vec::with_capacity(args.requests);
    let (mut raw_time, mut our_time) = (Duration::ZERO, Duration::ZERO);
    let started = Instant::now();
    for _ in 0..rounds {
        if started.elapsed() >= budget {
            break;
        }
        let t0 = Instant::now();
        for _ in 0..per_round {
            let t = Instant::now();
            raw_once().await?;
            raw_samples.push(t.elapsed());
        }
        raw_time += t0.elapsed();
        let t0 = Instant::now();
        for _ in 0..per_round {
            let t = Instant::now();
            let r = client.graphql(&key, QUERY, variables.clone()).await?;
            if r.status != 200 {
                return Err(anyhow!("status {} during the run: {}", r.status, r.text()));
            }
            our_samples.push(t.elapsed());
        }
        our_time += t0.elapsed();
    }
    let raw_rate = raw_samples.len() as f64 / raw_time.as_secs_f64();
    let our_rate = our_samples.len() as f64 / our_time.as_secs_f64();
    let _ = stop_tx.send(true);
    let _ = server.task.await;

    let (ours_p99, raw_p99) = (p99(our_samples.clone()), p99(raw_samples.clone()));
    eprintln!(
        "bench api: {} charges in the tenant-month; {} GraphQL requests, {} raw queries; cpu: {}",
        args.charges,
        our_samples.len(),
        raw_samples.len(),
        cpu_model()
    );
    say!(
        "BENCH graphql_charges_p99 ours={ours_p99:.3} raw_sql={raw_p99:.3} ratio={:.2} unit=ms",
        ours_p99 / raw_p99
    );
    say!(
        "BENCH graphql_throughput ours={our_rate:.0} raw_sql={raw_rate:.0} ratio={:.2} unit=req/s",
        our_rate / raw_rate
    );
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
