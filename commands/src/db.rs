//! Opening the database: `DATABASE_URL` when set, else the embedded cluster; migrations.

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::embedded::{EmbeddedError, EmbeddedPostgres};

/// The migrations of `schemas/migrations`, compiled in.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../schemas/migrations");

pub const DEFAULT_DATABASE: &str = "ledgerline";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[error("invalid DATABASE_URL: {0}")]
    BadUrl(String),
    #[error("cannot reach Postgres: {0}")]
    Connect(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

/// An open database, with the embedded cluster kept alive as long as this value lives.
pub struct Database {
    pub pool: PgPool,
    pub url: String,
    pub embedded: Option<EmbeddedPostgres>,
}

impl Database {
    /// `DATABASE_URL` if set, else a private cluster under `data_dir/postgres`.
    pub async fn open(data_dir: &Path, max_connections: u32) -> Result<Database, DbError> {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            if !url.trim().is_empty() {
                let pool = connect(&url, max_connections).await?;
                return Ok(Database {
                    pool,
                    url,
                    embedded: None,
                });
            }
        }
        let cluster_dir = data_dir.join("postgres");
        let embedded = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&cluster_dir))
            .await
            .map_err(|e| DbError::BadUrl(e.to_string()))??;
        ensure_database(&embedded.url("postgres"), DEFAULT_DATABASE).await?;
        let url = embedded.url(DEFAULT_DATABASE);
        let pool = connect(&url, max_connections).await?;
        Ok(Database {
            pool,
            url,
            embedded: Some(embedded),
        })
    }

    pub async fn migrate(&self) -> Result<(), DbError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Close the pool, then stop the embedded cluster if this process started it.
    pub async fn close(mut self) {
        self.pool.close().await;
        if let Some(mut pg) = self.embedded.take() {
            let _ = tokio::task::spawn_blocking(move || drop(pg.stop())).await;
        }
    }
}

pub fn connect_options(url: &str) -> Result<PgConnectOptions, DbError> {
    let options = PgConnectOptions::from_str(url).map_err(|e| DbError::BadUrl(e.to_string()))?;
    // A forgotten open transaction would hold every subscriber behind the xmin fence.
    Ok(options.options([("idle_in_transaction_session_timeout", "60s")]))
}

/// A pooled connection idle longer than this is pinged before it is handed out.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(10);

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
        // sqlx pings every connection it hands out by default: a round trip per query, which
        // under SIP load was 8% of the node's CPU and as many statements again for Postgres.
        // A connection in steady use is known to be alive; one idle for a while (Postgres
        // may have restarted, a proxy may have cut it) is still checked, and replaced if dead.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(connect_options(url)?)
        .await
        .map_err(DbError::Connect)
}

/// A connection one batching task keeps for itself, taken out of a pool once.
///
/// sqlx 0.8 pings every connection it takes back into a pool (a Sync round trip), so a
/// statement run through the pool costs two round trips; a hot batcher that keeps its own
/// connection pays one. Like the pool, the connection is pinged before use only after
/// [`PING_AFTER_IDLE`] of silence, and after any error it is dropped and the next use takes a
/// fresh one (an error may leave a connection mid-protocol).
pub struct KeptConnection {
    pool: PgPool,
    connection: Option<(PgConnection, tokio::time::Instant)>,
}

impl KeptConnection {
    pub fn new(pool: PgPool) -> KeptConnection {
        KeptConnection { pool, connection: None }
    }

    /// The connection, taken from the pool if none is kept (or the kept one failed its ping).
    pub async fn get(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        let (mut connection, last_used) = match self.connection.take() {
            Some(kept) => kept,
            None => (self.pool.acquire().await?.detach(), tokio::time::Instant::now()),
        };
        if last_used.elapsed() >= PING_AFTER_IDLE && connection.ping().await.is_err() {
            connection = self.pool.acquire().await?.detach();
        }
        let (connection, _) = self.connection.insert((connection, tokio::time::Instant::now()));
        Ok(connection)
    }

    /// Forget the connection after an error; the next [`KeptConnection::get`] opens another.
    pub fn discard(&mut self) {
        self.connection = None;
    }
}

/// A batch's one error, for one of its callers: sqlx errors are not `Clone`, so each caller
/// gets the error itself if it is the last holder, else its text.
pub fn unshared(error: std::sync::Arc<sqlx::Error>) -> sqlx::Error {
    std::sync::Arc::try_unwrap(error).unwrap_or_else(|shared| sqlx::Error::Protocol(shared.to_string()))
}

/// Create `database` on the server at `admin_url` unless it exists.
pub async fn ensure_database(admin_url: &str, database: &str) -> Result<(), DbError> {
    let mut conn = PgConnection::connect_with(&connect_options(admin_url)?)
        .await
        .map_err(DbError::Connect)?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(database)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", database.replace('"', ""));
        if let Err(e) = sqlx::query(&sql).execute(&mut conn).await {
            // Another process may have created it at the same moment.
            let raced = matches!(&e, sqlx::Error::Database(db) if db.code().as_deref() == Some("42P04"));
            if !raced {
                return Err(e.into());
            }
        }
    }
    conn.close().await.ok();
    Ok(())
}
