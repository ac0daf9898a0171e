//! Projections as operators and auditors use them, through the `ledgerline` binary: a simulated
//! day replays identically, an altered row is named, a SIGKILLed projector ends equal to a
//! clean rebuild, `replay` swaps a shadow in, and time travel builds a past moment.

// Tests stand in for the binary: they may read the clock (deadlines only).
#![allow(clippy::disallowed_methods)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use commands::testing::TestDb;
use common::{ledgerline, ok, BIN};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

async fn scalar_i64(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn a_simulated_day_replays_identically_and_an_altered_row_is_named() {
    let db = TestDb::new().await.unwrap();
    let simulated = ok(ledgerline(
        &db,
        &[
            "simulate",
            "--tenants",
            "2",
            "--calls",
            "1500",
            "--conferences",
            "12",
            "--seed",
            "3",
        ],
    ));
    assert!(simulated.contains("1500 calls"), "{simulated}");
    ok(ledgerline(&db, &["projector", "--once"]));
    let cdrs = scalar_i64(&db.pool, "SELECT count(*) FROM rm_cdrs").await;
    assert_eq!(cdrs, 1500, "one CDR per call");
    let conference_legs = scalar_i64(
        &db.pool,
        "SELECT count(*) FROM rm_conference_legs WHERE left_at IS NOT NULL",
    )
    .await;
    let joined = scalar_i64(
        &db.pool,
        "SELECT count(*) FROM events WHERE event_type = 'ParticipantJoined'",
    )
    .await;
    assert!(
        joined > 24 && conference_legs == joined,
        "one closed leg per participant: {conference_legs} of {joined}"
    );
    let owner_charges = scalar_i64(
        &db.pool,
        "SELECT count(*) FROM rm_charges WHERE service = 'conferences' AND status = 'rated'",
    )
    .await;
    assert_eq!(
        owner_charges, joined,
        "every participant leg is charged to the room owner"
    );
    // The simulated owners settled the same amounts and find them on their invoices.
    let (projected, invoiced): (Decimal, Decimal) = sqlx::query_as(
        "SELECT (SELECT sum(amount) FROM rm_charges WHERE service = 'conferences'), \
         (SELECT sum(amount) FROM rm_invoice_lines WHERE service = 'conferences' AND view = 'as_billed')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(projected, invoiced);
    let rated = scalar_i64(&db.pool, "SELECT count(*) FROM rm_charges WHERE status = 'rated'").await;
    assert!(rated > 500, "most answered calls are rated: {rated}");

    let audit = ok(ledgerline(&db, &["audit", "replay"]));
    for name in ["directory", "billing", "invoices", "conferences"] {
        assert!(
            audit.contains(&format!("projection {name}: checksum live=")) && !audit.contains("DIFFERS"),
            "{audit}"
        );
    }

    // One charge altered behind the projection's back.
    let call: Uuid = sqlx::query_scalar(
        "UPDATE rm_charges SET amount = amount + 1 WHERE (tenant_id, call_id) = \
         (SELECT tenant_id, call_id FROM rm_charges WHERE status = 'rated' ORDER BY call_id LIMIT 1) RETURNING call_id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let failed = ledgerline(&db, &["audit", "replay"]);
    let out = String::from_utf8_lossy(&failed.stdout).to_string();
    assert!(!failed.status.success(), "{out}");
    assert!(
        out.contains("projection billing: checksum") && out.contains("DIFFERS"),
        "{out}"
    );
    let named: Vec<&str> = out.lines().filter(|l| l.contains(&call.to_string())).collect();
    assert_eq!(named.len(), 2, "the row on both sides: {out}");
    assert!(named.iter().any(|l| l.contains("only in live")) && named.iter().any(|l| l.contains("only in rebuild")));

    // `replay --projection` rebuilds in a shadow and swaps it in: the audit passes again.
    let replayed = Command::new(BIN)
        .args(["replay", "--projection", "billing"])
        .env("DATABASE_URL", &db.url)
        .env("LEDGERLINE_LOG", "warn")
        .output()
        .unwrap();
    let progress = String::from_utf8_lossy(&replayed.stderr).to_string();
    assert!(
        progress.contains("events/s") && progress.contains("s left"),
        "{progress}"
    );
    ok(replayed);
    ok(ledgerline(&db, &["audit", "replay"]));
}

/// splitmix64 with a fixed seed: the kill points vary across the run, the test does not.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[tokio::test]
async fn a_projector_killed_at_random_points_during_a_simulated_run_ends_equal_to_a_clean_rebuild() {
    let db = TestDb::new().await.unwrap();
    let mut simulator = Command::new(BIN)
        .args([
            "simulate",
            "--tenants",
            "3",
            "--calls",
            "4000",
            "--conferences",
            "30",
            "--seed",
            "11",
            "--batch",
            "20",
        ])
        .env("DATABASE_URL", &db.url)
        .env("LEDGERLINE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut rng = 0x5eed_u64;
    let mut kills = 0;
    for _ in 0..6 {
        let mut projector = Command::new(BIN)
            .args(["projector", "--batch-size", "150"])
            .env("DATABASE_URL", &db.url)
            .env("LEDGERLINE_LOG", "warn")
            .spawn()
            .unwrap();
        // A random kill point: once the billing checkpoint has moved by a random amount.
        let seen_before = scalar_i64(
            &db.pool,
            "SELECT coalesce((SELECT events_seen FROM projection_checkpoints WHERE projection = 'billing'), 0)",
        )
        .await;
        let target = seen_before + 50 + (next(&mut rng) % 3000) as i64;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = scalar_i64(
                &db.pool,
                "SELECT coalesce((SELECT events_seen FROM projection_checkpoints WHERE projection = 'billing'), 0)",
            )
            .await;
            let total = scalar_i64(&db.pool, "SELECT count(*) FROM events").await;
            if seen >= target || (seen >= total && simulator.try_wait().unwrap().is_some()) || Instant::now() > deadline
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        projector.kill().unwrap(); // SIGKILL
        projector.wait().unwrap();
        kills += 1;
    }
    assert!(simulator.wait().unwrap().success());
    ok(ledgerline(&db, &["projector", "--once"]));
    let total = scalar_i64(&db.pool, "SELECT count(*) FROM events").await;
    let checkpoints: Vec<(String, String, i64, i64)> =
        sqlx::query_as("SELECT projection, tx_id::text, position, events_seen FROM projection_checkpoints ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let last: (String, i64) =
        sqlx::query_as("SELECT tx_id::text, global_position FROM events ORDER BY tx_id, global_position DESC LIMIT 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    eprintln!("checkpoints {checkpoints:?} last {last:?} total {total}");
    for name in ["directory", "billing", "invoices", "conferences"] {
        let seen = scalar_i64(
            &db.pool,
            &format!("SELECT events_seen FROM projection_checkpoints WHERE projection = '{name}'"),
        )
        .await;
        assert_eq!(
            seen, total,
            "{name}: every event applied exactly once across {kills} kills"
        );
    }
    let audit = ok(ledgerline(&db, &["audit", "replay"]));
    assert!(!audit.contains("DIFFERS"), "{audit}");
}

#[tokio::test]
async fn time_travel_builds_the_balance_between_two_payments() {
    let db = TestDb::new().await.unwrap();
    ok(ledgerline(
        &db,
        &["simulate", "--tenants", "1", "--calls", "600", "--seed", "5"],
    ));
    // The prepaid account's first two payments, and a position between them.
    let payments: Vec<(i64, String)> = sqlx::query_as(
        "SELECT global_position, payload->>'amount' FROM events WHERE event_type = 'FundsToppedUp' \
         ORDER BY global_position LIMIT 2",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(payments.len(), 2, "the simulated day tops the prepaid account up");
    let between = payments[1].0 - 1;
    let account: Uuid = sqlx::query_scalar("SELECT substr(stream_id, 9)::uuid FROM events WHERE global_position = $1")
        .bind(payments[0].0)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    ok(ledgerline(
        &db,
        &["replay", "--until", &between.to_string(), "--into", "as_of_then"],
    ));
    ok(ledgerline(&db, &["projector", "--once"]));
    let then: Decimal = sqlx::query_scalar("SELECT payments FROM as_of_then.rm_balances WHERE account_id = $1")
        .bind(account)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let now: Decimal = sqlx::query_scalar("SELECT payments FROM rm_balances WHERE account_id = $1")
        .bind(account)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let first = Decimal::from_str_exact(&payments[0].1).unwrap();
    let second = Decimal::from_str_exact(&payments[1].1).unwrap();
    assert_eq!(then, first, "as of then, only the first payment");
    assert!(now >= first + second, "today, both (and any later ones)");
}

#[tokio::test]
async fn up_demo_seeds_a_tenant_and_says_how_to_query_the_charges() {
    let db = TestDb::new().await.unwrap();
    let mut up = Command::new(BIN)
        .args([
            "up",
            "--demo",
            "--sip-bind",
            "127.0.0.1:0",
            "--http-bind",
            "127.0.0.1:0",
        ])
        .env("DATABASE_URL", &db.url)
        .env("LEDGERLINE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = up.stdout.take().unwrap();
    let banner = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains("stop with Ctrl-C");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    })
    .join()
    .unwrap();
    let text = banner.join("\n");
    assert!(
        text.contains("demo: seeded tenant")
            && text.contains("rm_charges")
            && text.contains("register a softphone")
            && text.contains("account close-period --account")
            && text.contains("tariff correct --tariff"),
        "{text}"
    );
    let charges = scalar_i64(&db.pool, "SELECT count(*) FROM rm_charges WHERE status = 'rated'").await;
    assert!(charges > 50, "the demo day is rated: {charges}");
    unsafe { libc::kill(up.id() as i32, libc::SIGINT) };
    assert!(up.wait().unwrap().success());
}

#[tokio::test]
async fn the_same_seed_writes_the_same_log() {
    let first = TestDb::new().await.unwrap();
    let second = TestDb::new().await.unwrap();
    let args = [
        "simulate",
        "--tenants",
        "2",
        "--calls",
        "300",
        "--seed",
        "42",
        "--batch",
        "7",
    ];
    ok(ledgerline(&first, &args));
    ok(ledgerline(&second, &args));
    // Everything but where and when the database put it: ids, streams, payloads, metadata,
    // event times and the hash chain.
    let log = |pool: PgPool| async move {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT concat_ws(' ', event_id, tenant_id, stream_id, stream_version, event_type, payload::text, \
             metadata::text, occurred_at, encode(hash, 'hex')) FROM events ORDER BY global_position",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        rows
    };
    let (a, b) = (log(first.pool.clone()).await, log(second.pool.clone()).await);
    assert!(a.len() > 2000, "{} events", a.len());
    assert_eq!(a.len(), b.len());
    if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
        panic!("event {i} differs:\n{}\n{}", a[i], b[i]);
    }
}
