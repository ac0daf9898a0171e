//! The registrar on the wire: sipp registers extensions with digest auth against a live
//! `ledgerline up`; refreshes stay silent in the log; wrong passwords and unknown users get
//! the same answer; a replayed authorization is refused.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use commands::testing::TestDb;
use sqlx::PgPool;

const BIN: &str = env!("CARGO_BIN_EXE_ledgerline");

struct Node {
    child: Child,
    sip: SocketAddr,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(db: &TestDb) -> Node {
    let mut child = Command::new(BIN)
        .args(["up", "--sip-bind", "127.0.0.1:0", "--sip-secret", "test-secret"])
        .env("DATABASE_URL", &db.url)
        .env("LEDGERLINE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut sip = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(addr) = line.trim().strip_prefix("sip: listening on udp+tcp ") {
            sip = Some(addr.parse().unwrap());
        }
        if line.contains("stop with Ctrl-C") {
            break;
        }
    }
    Node {
        child,
        sip: sip.expect("up prints where SIP listens"),
    }
}

fn ledgerline(db: &TestDb, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("LEDGERLINE_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn until(pool: &PgPool, seconds: u64, sql: &str) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let done: bool = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(false);
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {sql}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A tenant `acme.test` with extensions 1000..1000+n, password `pass-<number>`.
async fn tenant_with_extensions(db: &TestDb, n: u32) -> String {
    let out = ledgerline(
        db,
        &[
            "tenant",
            "create",
            "--name",
            "Acme",
            "--domain",
            "acme.test",
            "--max-extensions",
            "100",
        ],
    );
    let tenant = String::from_utf8_lossy(&out.stdout).trim().to_string();
    for number in 1000..1000 + n {
        let number = number.to_string();
        ledgerline(
            db,
            &[
                "extension",
                "add",
                "--tenant",
                &tenant,
                "--number",
                &number,
                "--password",
                &format!("pass-{number}"),
            ],
        );
    }
    until(&db.pool, 30, &format!("SELECT count(*) = {n} FROM rm_extensions")).await;
    tenant
}

fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sipp").join(name)
}

/// Run sipp against the node with `lines` as its injection file; true when every call passed.
fn sipp(node: &Node, scenario_file: &str, lines: &[String], calls: usize) -> bool {
    let dir = std::env::temp_dir().join(format!("ledgerline-sipp-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("users.csv");
    std::fs::write(&csv, format!("SEQUENTIAL\n{}\n", lines.join("\n"))).unwrap();
    let status = Command::new("sipp")
        .arg(node.sip.to_string())
        .arg("-sf")
        .arg(scenario(scenario_file))
        .arg("-inf")
        .arg(&csv)
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "-m",
            &calls.to_string(),
            "-r",
            "50",
            "-l",
            "20",
        ])
        .args(["-recv_timeout", "5000", "-timeout", "60", "-nostdin", "-trace_err"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("sipp is installed (apt-get install sip-tester)");
    if !status.success() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_name().to_string_lossy().ends_with("errors.log") {
                eprintln!("{}", std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    status.success()
}

fn user_line(user: u32, password: &str) -> String {
    format!("{user};acme.test;[authentication username={user} password={password}];5080")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_registers_extensions_with_digest_and_refreshes_stay_silent() {
    let db = TestDb::new().await.unwrap();
    let node = start(&db);
    tenant_with_extensions(&db, 11).await;

    let users: Vec<String> = (1000..1010).map(|u| user_line(u, &format!("pass-{u}"))).collect();
    assert!(
        sipp(&node, "reg_auth.xml", &users, 10),
        "every REGISTER with digest succeeds"
    );
    until(&db.pool, 30, "SELECT count(*) = 10 FROM sip_bindings").await;
    until(
        &db.pool,
        30,
        "SELECT count(*) = 10 FROM events WHERE event_type = 'DeviceRegistered'",
    )
    .await;

    // Register again under a new Call-ID (a changed binding: one event), then refresh within
    // that Call-ID (no event).
    let refresh = vec![user_line(1000, "pass-1000")];
    assert!(sipp(&node, "reg_refresh.xml", &refresh, 1));
    until(
        &db.pool,
        30,
        "SELECT count(*) = 1 FROM events WHERE event_type = 'DeviceRegistrationChanged'",
    )
    .await;
    until(
        &db.pool,
        30,
        "SELECT cseq = 4 FROM sip_bindings WHERE contact LIKE '%1000@%'",
    )
    .await;
    // A sentinel registration after the refresh: once its event is in, the refresh's would be too.
    assert!(sipp(&node, "reg_auth.xml", &[user_line(1010, "pass-1010")], 1));
    until(
        &db.pool,
        30,
        "SELECT count(*) = 11 FROM events WHERE event_type = 'DeviceRegistered'",
    )
    .await;
    let registration_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id LIKE 'registration-%'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        registration_events, 12,
        "11 devices, 1 change, and nothing for the refresh"
    );

    // Wrong passwords and unknown users both get a fresh 401, and nothing is bound.
    let wrong = vec![user_line(1001, "not-the-password"), user_line(1777, "pass-1777")];
    assert!(sipp(&node, "reg_wrong.xml", &wrong, 2), "both are challenged again");
    let bindings: i64 = sqlx::query_scalar("SELECT count(*) FROM sip_bindings")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(bindings, 11, "nothing was bound for them");
}
