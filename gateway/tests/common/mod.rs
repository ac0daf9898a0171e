//! Helpers shared by the binary's process-level tests: run `ledgerline` against a test
//! database, read its output, and wait for a condition with a deadline.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use commands::testing::TestDb;
use sqlx::PgPool;

pub const BIN: &str = env!("CARGO_BIN_EXE_ledgerline");

/// Run `ledgerline` on the test database, whatever its exit status.
pub fn ledgerline(db: &TestDb, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("LEDGERLINE_LOG", "warn")
        .output()
        .expect("run ledgerline")
}

/// The stdout of a run that must have succeeded.
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Poll the database until `sql` returns true, or fail after `seconds`.
pub async fn until(pool: &PgPool, seconds: u64, sql: &str) {
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

pub struct Node {
    pub child: Child,
    pub sip: SocketAddr,
    /// Where the API listens.
    pub http: SocketAddr,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(db: &TestDb) -> Node {
    start_with(db, &[])
}

/// Like [`start`], with more arguments for `ledgerline up`.
pub fn start_with(db: &TestDb, extra: &[&str]) -> Node {
    let mut child = Command::new(BIN)
        .args([
            "up",
            "--sip-bind",
            "127.0.0.1:0",
            "--http-bind",
            "127.0.0.1:0",
            "--sip-secret",
            "test-secret",
        ])
        .args(extra)
        .env("DATABASE_URL", &db.url)
        .env("LEDGERLINE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut sip = None;
    let mut http = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(addr) = line.trim().strip_prefix("sip: listening on udp+tcp ") {
            sip = Some(addr.parse().unwrap());
        }
        if let Some(rest) = line.trim().strip_prefix("http: API on ") {
            http = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
        if line.contains("stop with Ctrl-C") {
            break;
        }
    }
    Node {
        child,
        sip: sip.expect("up prints where SIP listens"),
        http: http.expect("up prints where the API listens"),
    }
}

/// A tenant `acme.test` with extensions 1000..1000+n, password `pass-<number>`.
pub async fn tenant_with_extensions(db: &TestDb, n: u32) -> String {
    let out = ok(ledgerline(
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
    ));
    let tenant = out.trim().to_string();
    for number in 1000..1000 + n {
        let number = number.to_string();
        ok(ledgerline(
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
        ));
    }
    until(&db.pool, 30, &format!("SELECT count(*) = {n} FROM rm_extensions")).await;
    tenant
}

pub fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sipp").join(name)
}

/// Run sipp against the node with `lines` as its injection file; true when every call passed.
pub fn sipp(node: &Node, scenario_file: &str, lines: &[String], calls: usize) -> bool {
    sipp_at(node, "127.0.0.1", scenario_file, lines, calls)
}

/// Like [`sipp`], from the local address `ip` (another loopback address plays a carrier).
pub fn sipp_at(node: &Node, ip: &str, scenario_file: &str, lines: &[String], calls: usize) -> bool {
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
        .args(["-i", ip, "-p", "0", "-m", &calls.to_string(), "-r", "50", "-l", "20"])
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

/// A sipp callee on a port of its own, running one scenario once.
pub struct Callee {
    pub child: Child,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl Callee {
    pub fn start(scenario_file: &str) -> Callee {
        // A free port: bind, read, release (sipp binds it right after).
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Callee::start_with(scenario_file, port, &[])
    }

    /// A callee on `port`, with `lines` as its injection file when not empty.
    pub fn start_with(scenario_file: &str, port: u16, lines: &[String]) -> Callee {
        let dir = std::env::temp_dir().join(format!("ledgerline-uas-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut command = Command::new("sipp");
        if !lines.is_empty() {
            let csv = dir.join("fields.csv");
            std::fs::write(&csv, format!("SEQUENTIAL\n{}\n", lines.join("\n"))).unwrap();
            command.arg("-inf").arg(csv);
        }
        let child = command
            .arg("-sf")
            .arg(scenario(scenario_file))
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-m", "1"])
            .args(["-recv_timeout", "20000", "-timeout", "40", "-nostdin", "-trace_err"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp is installed (apt-get install sip-tester)");
        Callee { child, port, dir }
    }

    /// Waits for the scenario to end; true when it passed.
    pub fn passed(mut self) -> bool {
        let status = self.child.wait().unwrap();
        if !status.success() {
            for entry in std::fs::read_dir(&self.dir).unwrap().flatten() {
                if entry.file_name().to_string_lossy().ends_with("errors.log") {
                    eprintln!("callee: {}", std::fs::read_to_string(entry.path()).unwrap_or_default());
                }
            }
        }
        status.success()
    }
}

impl Drop for Callee {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

pub fn register(node: &Node, number: u32, contact_port: u16) {
    let line = format!("{number};acme.test;[authentication username={number} password=pass-{number}];{contact_port}");
    assert!(sipp(node, "reg_auth.xml", &[line], 1), "{number} registers");
}
