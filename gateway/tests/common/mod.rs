//! Helpers shared by the binary's process-level tests: run `ledgerline` against a test
//! database, read its output, and wait for a condition with a deadline.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::process::{Command, Output};
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
