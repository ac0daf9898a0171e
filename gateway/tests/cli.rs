//! The `ledgerline` binary as a user runs it: real processes, a real Postgres.

// Tests stand in for the binary: they may read the clock.
#![allow(clippy::disallowed_methods)]

use std::process::{Command, Stdio};

mod common;

use commands::testing::TestDb;
use commands::{EventStore, Expected, Metadata, NewEvent, StreamWrite};
use common::{ledgerline, ok, stderr, stdout, until, BIN};
use uuid::Uuid;

#[tokio::test]
async fn tenants_and_extensions_through_the_cli() {
    let db = TestDb::new().await.unwrap();
    let created = ledgerline(
        &db,
        &[
            "tenant",
            "create",
            "--name",
            "Acme",
            "--domain",
            "acme.test",
            "--max-extensions",
            "2",
        ],
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let tenant = stdout(&created).trim().to_string();
    Uuid::parse_str(&tenant).expect("tenant create prints the tenant id");

    let ext = ledgerline(
        &db,
        &[
            "extension",
            "add",
            "--tenant",
            &tenant,
            "--number",
            "1001",
            "--name",
            "Alice",
            "--password",
            "secret-pass",
        ],
    );
    assert!(ext.status.success(), "{}", stderr(&ext));
    let dup = ledgerline(
        &db,
        &[
            "extension",
            "add",
            "--tenant",
            &tenant,
            "--number",
            "1001",
            "--name",
            "Bob",
            "--password",
            "secret-pass",
        ],
    );
    assert_eq!(dup.status.code(), Some(2));
    assert!(
        stderr(&dup).contains("number 1001 is already taken"),
        "{}",
        stderr(&dup)
    );
    ledgerline(
        &db,
        &[
            "extension",
            "add",
            "--tenant",
            &tenant,
            "--number",
            "1002",
            "--password",
            "secret-pass",
        ],
    );
    let limit = ledgerline(
        &db,
        &[
            "extension",
            "add",
            "--tenant",
            &tenant,
            "--number",
            "1003",
            "--password",
            "secret-pass",
        ],
    );
    assert!(stderr(&limit).contains("limit of 2 extensions"), "{}", stderr(&limit));

    let list = ledgerline(&db, &["tenant", "list"]);
    assert!(
        stdout(&list).contains(&tenant) && stdout(&list).contains("2/2"),
        "{}",
        stdout(&list)
    );
    let exts = ledgerline(&db, &["extension", "list", "--tenant", &tenant]);
    assert!(
        stdout(&exts).contains("1001") && stdout(&exts).contains("Alice"),
        "{}",
        stdout(&exts)
    );
    // Another tenant's listing shows none of these.
    let other = ledgerline(&db, &["extension", "list", "--tenant", &Uuid::new_v4().to_string()]);
    assert!(!stdout(&other).contains("1001"));

    let bad = ledgerline(&db, &["tenant", "create", "--name", "X", "--domain", "not a domain"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("invalid SIP domain"), "{}", stderr(&bad));
}

#[tokio::test]
async fn export_and_audit_verify_then_tampering_is_named() {
    let db = TestDb::new().await.unwrap();
    let tenant = stdout(&ledgerline(
        &db,
        &["tenant", "create", "--name", "Acme", "--domain", "audit.test"],
    ))
    .trim()
    .to_string();
    ledgerline(&db, &["tenant", "rename", "--tenant", &tenant, "--name", "Acme 2"]);
    ledgerline(
        &db,
        &[
            "extension",
            "add",
            "--tenant",
            &tenant,
            "--number",
            "1001",
            "--password",
            "secret-pass",
        ],
    );

    let export = ledgerline(&db, &["events", "export", "--tenant", &tenant]);
    assert!(export.status.success());
    let lines: Vec<serde_json::Value> = stdout(&export)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert_eq!(
        lines.len(),
        4,
        "the tenant's 4 events; the system domain claim is not the tenant's"
    );
    for field in [
        "cursor",
        "global_position",
        "tx_id",
        "event_id",
        "tenant_id",
        "stream_id",
        "stream_version",
        "event_type",
        "schema_version",
        "payload",
        "metadata",
        "occurred_at",
        "recorded_at",
        "hash",
    ] {
        assert!(lines[0].get(field).is_some(), "export has {field}");
    }
    // Resuming from the first line's cursor gives the rest.
    let cursor = lines[0]["cursor"].as_str().unwrap().to_string();
    let rest = ledgerline(&db, &["events", "export", "--tenant", &tenant, "--from", &cursor]);
    assert_eq!(stdout(&rest).lines().count(), 3);

    let ok = ledgerline(&db, &["audit", "verify"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("every hash chain holds"));

    let victim = lines[1]["event_id"].as_str().unwrap().to_string();
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE events SET payload = jsonb_set(payload, '{name}', '\"Evil\"') WHERE event_id = $1::uuid")
        .bind(&victim)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let failed = ledgerline(&db, &["audit", "verify"]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        stderr(&failed).contains(&victim),
        "names the event: {}",
        stderr(&failed)
    );
}

#[tokio::test]
async fn a_projector_killed_mid_run_resumes_to_the_same_read_model_as_a_rebuild() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    // 40 tenants, each renamed 150 times: 6,040 events for the directory.
    for t in 0..40 {
        let tenant = Uuid::new_v4();
        let created = NewEvent {
            event_id: Uuid::new_v4(),
            event_type: "TenantCreated".into(),
            schema_version: 1,
            payload: serde_json::json!({
                "tenant_id": tenant, "name": format!("T{t}"), "sip_domain": format!("t{t}.test"),
                "max_extensions": 10, "max_concurrent_calls": 2
            }),
            metadata: Metadata::default(),
            occurred_at: chrono::Utc::now(),
        };
        let mut events = vec![created];
        for r in 0..150 {
            let mut e = ledgerline_rename(&format!("T{t} r{r}"));
            e.occurred_at = chrono::Utc::now();
            events.push(e);
        }
        store
            .append(&[StreamWrite {
                tenant_id: tenant,
                stream_id: format!("tenant-{tenant}"),
                expected: Expected::NoStream,
                events,
            }])
            .await
            .unwrap();
    }
    let total = 40 * 151;

    for round in 0..3 {
        let mut child = Command::new(BIN)
            .args(["projector", "--batch-size", "25"])
            .env("DATABASE_URL", &db.url)
            .env("LEDGERLINE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // Kill it once it has made progress, wherever it is.
        let target = 500 * (round + 1);
        until(
            &db.pool,
            120,
            &format!("SELECT coalesce((SELECT events_seen >= {target} FROM projection_checkpoints WHERE projection = 'directory'), false)"),
        )
        .await;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let seen: i64 = sqlx::query_scalar("SELECT events_seen FROM projection_checkpoints WHERE projection = 'directory'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(seen < total, "killed before the end ({seen} of {total})");

    let finish = ledgerline(&db, &["projector", "--once"]);
    assert!(finish.status.success(), "{}", stderr(&finish));
    let seen: i64 = sqlx::query_scalar("SELECT events_seen FROM projection_checkpoints WHERE projection = 'directory'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(seen, total, "every event applied exactly once across the kills");
    let resumed = projections::directory::dump(&db.pool).await.unwrap();

    let mut runner = projections::Runner::new(store, projections::directory::Directory);
    runner.reset().await.unwrap();
    runner.catch_up().await.unwrap();
    assert_eq!(projections::directory::dump(&db.pool).await.unwrap(), resumed);
    assert!(
        resumed.iter().any(|row| row.contains("T7 r149")),
        "the last rename of each tenant wins"
    );
}

fn ledgerline_rename(name: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "TenantRenamed".into(),
        schema_version: 1,
        payload: serde_json::json!({ "name": name }),
        metadata: Metadata::default(),
        occurred_at: chrono::Utc::now(),
    }
}

#[tokio::test]
async fn up_runs_the_projector_live_and_stops_cleanly_on_ctrl_c() {
    let db = TestDb::new().await.unwrap();
    let mut up = Command::new(BIN)
        .args(["up", "--sip-bind", "127.0.0.1:0", "--http-bind", "127.0.0.1:0"])
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
    });
    let banner = banner.join().unwrap();
    assert!(banner.iter().any(|l| l.contains("database:")), "{banner:?}");

    let tenant = ok(ledgerline(
        &db,
        &["tenant", "create", "--name", "Live", "--domain", "live.test"],
    ));
    // The running node's projector picks it up without any CLI catch-up.
    until(
        &db.pool,
        30,
        &format!(
            "SELECT EXISTS (SELECT 1 FROM rm_tenants WHERE tenant_id = '{}')",
            tenant.trim()
        ),
    )
    .await;

    unsafe { libc::kill(up.id() as i32, libc::SIGINT) };
    let status = up.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn the_embedded_default_starts_a_private_cluster_and_stops_it() {
    let dir = std::env::temp_dir().join(format!("ledgerline-embedded-{}", Uuid::new_v4()));
    let out = Command::new(BIN)
        .args(["migrate", "--data-dir"])
        .arg(&dir)
        .env_remove("DATABASE_URL")
        .env("LEDGERLINE_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("migrations applied to postgres://postgres@127.0.0.1:"),
        "{}",
        stdout(&out)
    );
    let cluster = dir.join("postgres");
    assert!(
        cluster.join("PG_VERSION").exists(),
        "the cluster lives under --data-dir"
    );
    assert!(
        !cluster.join("postmaster.pid").exists(),
        "the cluster is stopped on exit"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn without_postgres_binaries_it_says_what_to_do_in_one_line() {
    let dir = std::env::temp_dir().join(format!("ledgerline-nobin-{}", Uuid::new_v4()));
    let out = Command::new(BIN)
        .args(["migrate", "--data-dir"])
        .arg(&dir)
        .env_remove("DATABASE_URL")
        .env("LEDGERLINE_PG_BIN", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("install the `postgresql` package") && err.contains("DATABASE_URL"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["up", "--help"],
        vec!["projector", "--help"],
        vec!["migrate", "--help"],
        vec!["tenant", "create", "--help"],
        vec!["tenant", "list", "--help"],
        vec!["extension", "add", "--help"],
        vec!["extension", "list", "--help"],
        vec!["events", "export", "--help"],
        vec!["audit", "verify", "--help"],
        vec!["bench", "store", "--help"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(stdout(&out).contains("Usage:"), "{args:?}");
    }
}

#[test]
fn rate_prints_exact_charges_and_refuses_a_malformed_file_without_output() {
    let dir = std::env::temp_dir().join(format!("ledgerline-rate-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let deck = dir.join("deck.csv");
    std::fs::write(
        &deck,
        "prefix,first_interval_s,next_interval_s,price_per_min,next_price_per_min,connection_fee,free_seconds,grace_period_s,offpeak_price_per_min,post_call_surcharge_pct\n\
         44,30,6,0.02,,,,,,\n\
         1,1,1,0.06,,,,,,\n",
    )
    .unwrap();
    let calls = dir.join("calls.csv");
    std::fs::write(
        &calls,
        "call_id,destination,answered_at,duration_s\n\
         a,4420123,2026-01-05T10:00:00Z,31\n\
         b,4420123,2026-01-05T10:00:00Z,29\n\
         c,15551234,2026-01-05T10:00:00Z,180\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("rate")
        .arg("--deck")
        .arg(&deck)
        .arg("--calls")
        .arg(&calls)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let rows: Vec<Vec<&str>> = text.lines().skip(1).map(|l| l.splitn(5, ',').collect()).collect();
    // Reference cases 4 and 6, through the binary.
    assert_eq!(&rows[0][..4], ["a", "44", "36", "0.01200"]);
    assert_eq!(&rows[1][..4], ["b", "44", "30", "0.01000"]);
    assert_eq!(&rows[2][..4], ["c", "1", "180", "0.18000"]);

    let max = Command::new(BIN)
        .args([
            "rate",
            "--max-duration",
            "--destination",
            "4420123",
            "--balance",
            "0.012",
            "--answered-at",
            "2026-01-05T10:00:00Z",
            "--deck",
        ])
        .arg(&deck)
        .output()
        .unwrap();
    assert_eq!(stdout(&max).trim(), "36", "{}", stderr(&max));

    std::fs::write(
        &calls,
        "call_id,destination,answered_at,duration_s\na,4420123,2026-01-05T10:00:00Z,31\nb,4420123,yesterday,29\n",
    )
    .unwrap();
    let bad = Command::new(BIN)
        .arg("rate")
        .arg("--deck")
        .arg(&deck)
        .arg("--calls")
        .arg(&calls)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        bad.stdout.is_empty(),
        "nothing is printed for a file with a malformed row"
    );
    assert!(stderr(&bad).contains("calls.csv:3:3"), "{}", stderr(&bad));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn extensions_import_from_csv_and_a_rerun_changes_nothing() {
    let db = TestDb::new().await.unwrap();
    let tenant = stdout(&ledgerline(
        &db,
        &[
            "tenant",
            "create",
            "--name",
            "Bulk",
            "--domain",
            "bulk.test",
            "--max-extensions",
            "3",
        ],
    ))
    .trim()
    .to_string();
    let dir = std::env::temp_dir().join(format!("ledgerline-import-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("ext.csv");
    std::fs::write(&csv, "number,name,password\n1000,Ann,pass-1000\n1001,Bo,pass-1001\n1002,Cy,short\n1003,Di,pass-1003\n1004,Ed,pass-1004\n").unwrap();
    let path = csv.to_string_lossy().to_string();
    let first = ledgerline(&db, &["extension", "import", "--tenant", &tenant, "--csv", &path]);
    assert_eq!(first.status.code(), Some(2), "rejected rows make the exit non-zero");
    assert!(
        stderr(&first).contains("ext.csv:4: 1002: rejected"),
        "{}",
        stderr(&first)
    );
    assert!(
        stderr(&first).contains("ext.csv:6: 1004: rejected: the tenant's limit of 3"),
        "{}",
        stderr(&first)
    );
    assert!(stdout(&first).contains("imported 3 extensions, 2 rejected"));
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let again = ledgerline(&db, &["extension", "import", "--tenant", &tenant, "--csv", &path]);
    assert!(stdout(&again).contains("imported 3 extensions"), "{}", stdout(&again));
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(events, after, "a re-run writes nothing new");

    std::fs::write(&csv, "number,name,password\n1005,Fay\n").unwrap();
    let broken = ledgerline(&db, &["extension", "import", "--tenant", &tenant, "--csv", &path]);
    assert!(
        stderr(&broken).contains("ext.csv:2: expected 3 columns"),
        "{}",
        stderr(&broken)
    );
    std::fs::remove_dir_all(&dir).ok();
}
