//! Rebuild and verify-by-replay: build a projection into a schema of its own (a shadow, or a
//! time-travel copy), swap a shadow into the live tables, and compare a rebuild with the live
//! read model by checksum and row by row.
//!
//! A shadow schema holds tables created `LIKE` the live ones and its own
//! `projection_checkpoints`; the runner writes there through `search_path` (`Runner::in_schema`),
//! so projections need no knowledge of shadows. The swap copies the shadow's rows into the
//! live tables in one transaction that first locks the live checkpoint row: views depend on
//! the live tables (a rename would orphan them), and a live runner that raced the swap sees
//! its checkpoint moved and drops its batch, so the effect stays exactly once.

use sqlx::{PgPool, Row};

use crate::runner::{Projection, ProjectionError, Runner};

/// A plain lower-case SQL identifier (what schema names may be here, so they can be spliced).
pub fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_lowercase() || b == b'_' => {}
        _ => return false,
    }
    name.len() <= 63 && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// (Re)create `schema` with empty copies of `tables` and a checkpoint table.
pub async fn create_schema(pool: &PgPool, schema: &str, tables: &[&str]) -> Result<(), ProjectionError> {
    if !is_identifier(schema) || schema == "public" {
        return Err(ProjectionError::Decode(
            uuid::Uuid::nil(),
            format!("`{schema}` is not a usable schema name (lower-case letters, digits, _; not public)"),
        ));
    }
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut *tx)
        .await?;
    for table in tables.iter().chain(std::iter::once(&"projection_checkpoints")) {
        sqlx::query(&format!(
            "CREATE TABLE {schema}.{table} (LIKE public.{table} INCLUDING ALL)"
        ))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub async fn drop_schema(pool: &PgPool, schema: &str) -> Result<(), ProjectionError> {
    if is_identifier(schema) && schema != "public" {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Replace the live read model of `runner`'s projection with the one built in its schema,
/// checkpoint included, in one transaction.
pub async fn swap_into_live<P: Projection>(pool: &PgPool, runner: &Runner<P>) -> Result<(), ProjectionError> {
    let schema = runner.schema();
    let projection = runner.projection();
    let mut tx = pool.begin().await?;
    // Make sure the live row exists, then lock it: a live runner waits, then drops its batch.
    sqlx::query(
        "INSERT INTO public.projection_checkpoints (projection, version, tx_id, position, events_seen) \
         VALUES ($1, $2, '0'::xid8, 0, 0) ON CONFLICT (projection) DO NOTHING",
    )
    .bind(projection.name())
    .bind(projection.version())
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT 1 FROM public.projection_checkpoints WHERE projection = $1 FOR UPDATE")
        .bind(projection.name())
        .execute(&mut *tx)
        .await?;
    for table in projection.tables() {
        sqlx::query(&format!("TRUNCATE public.{table}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("INSERT INTO public.{table} SELECT * FROM {schema}.{table}"))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(&format!(
        "UPDATE public.projection_checkpoints p SET version = s.version, tx_id = s.tx_id, position = s.position, \
         events_seen = s.events_seen, updated_at = s.updated_at \
         FROM {schema}.projection_checkpoints s WHERE p.projection = $1 AND s.projection = $1"
    ))
    .bind(projection.name())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The checksum of one table: md5 over every row's text, in text order, and the row count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableChecksum {
    pub table: String,
    pub rows: i64,
    pub md5: String,
}

pub async fn checksum(pool: &PgPool, schema: &str, table: &str) -> Result<TableChecksum, ProjectionError> {
    let row = sqlx::query(&format!(
        "SELECT count(*) AS n, md5(coalesce(string_agg(r, E'\\n' ORDER BY r COLLATE \"C\"), '')) AS md5 \
         FROM (SELECT t::text AS r FROM {schema}.{table} t) x"
    ))
    .fetch_one(pool)
    .await?;
    Ok(TableChecksum {
        table: table.to_string(),
        rows: row.get("n"),
        md5: row.get("md5"),
    })
}

/// One row found on one side only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowDiff {
    pub table: String,
    /// `live` or `rebuild`: the side that has the row.
    pub side: &'static str,
    pub row: String,
}

/// Rows of `table` that differ between the live schema and `schema`, compared as text
/// (so `0.0120` and `0.012` differ: a replay must be byte-identical), at most `limit`.
pub async fn diff(pool: &PgPool, schema: &str, table: &str, limit: i64) -> Result<Vec<RowDiff>, ProjectionError> {
    let rows = sqlx::query(&format!(
        "(SELECT 'live' AS side, r FROM (SELECT t::text AS r FROM public.{table} t \
           EXCEPT ALL SELECT t::text FROM {schema}.{table} t) a) \
         UNION ALL \
         (SELECT 'rebuild', r FROM (SELECT t::text AS r FROM {schema}.{table} t \
           EXCEPT ALL SELECT t::text FROM public.{table} t) b) \
         ORDER BY 2, 1 LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| RowDiff {
            table: table.to_string(),
            side: if row.get::<String, _>("side") == "live" {
                "live"
            } else {
                "rebuild"
            },
            row: row.get("r"),
        })
        .collect())
}
