//! Test support: a fresh, migrated database per test, on `DATABASE_URL`'s server or on
//! a shared embedded cluster that every test process of this machine reuses.

use sqlx::postgres::PgPool;
use sqlx::{Connection, PgConnection, Row};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::OnceCell;

use crate::db::{connect, connect_options, DbError, MIGRATOR};
use crate::embedded::EmbeddedPostgres;

static ADMIN_URL: OnceCell<String> = OnceCell::const_new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Where the shared test cluster lives (`LEDGERLINE_TEST_PG_DIR` overrides).
pub fn shared_cluster_dir() -> PathBuf {
    match std::env::var_os("LEDGERLINE_TEST_PG_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::temp_dir().join("ledgerline-test-pg").join("postgres"),
    }
}

/// A database made for one test. Its name carries the pid of the test process, so a
/// later run can drop the databases of processes that are gone.
pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
    pub name: String,
}

impl TestDb {
    pub async fn new() -> Result<TestDb, DbError> {
        let admin = admin_url().await?;
        let name = format!(
            "lt_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            uuid::Uuid::new_v4().simple().to_string().get(..8).unwrap_or("0")
        );
        let mut conn = PgConnection::connect_with(&connect_options(admin)?)
            .await
            .map_err(DbError::Connect)?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await?;
        conn.close().await.ok();
        let url = with_database(admin, &name);
        let pool = connect(&url, 20).await?;
        MIGRATOR.run(&pool).await?;
        Ok(TestDb { pool, url, name })
    }
}

async fn admin_url() -> Result<&'static String, DbError> {
    ADMIN_URL
        .get_or_try_init(|| async {
            let admin = match std::env::var("DATABASE_URL") {
                Ok(url) if !url.trim().is_empty() => url,
                _ => {
                    let dir = shared_cluster_dir();
                    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir))
                        .await
                        .map_err(|e| DbError::BadUrl(e.to_string()))??;
                    // The shared cluster outlives this process; `.ci/run` stops it.
                    pg.detach().url("postgres")
                }
            };
            drop_stale_databases(&admin).await?;
            Ok(admin)
        })
        .await
}

/// Drop test databases whose process has exited.
async fn drop_stale_databases(admin: &str) -> Result<(), DbError> {
    let mut conn = PgConnection::connect_with(&connect_options(admin)?)
        .await
        .map_err(DbError::Connect)?;
    let rows = sqlx::query("SELECT datname FROM pg_database WHERE datname LIKE 'lt\\_%'")
        .fetch_all(&mut conn)
        .await?;
    for row in rows {
        let name: String = row.get("datname");
        let pid: Option<i32> = name.split('_').nth(1).and_then(|p| p.parse().ok());
        let alive = pid.is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0);
        if !alive {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut conn)
                .await;
        }
    }
    conn.close().await.ok();
    Ok(())
}

/// The same server URL with another database name.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_in_a_url() {
        assert_eq!(with_database("postgres://u@h:1/test", "x"), "postgres://u@h:1/x");
        assert_eq!(with_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
        assert_eq!(
            with_database("postgres://u@h/test?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
