//! The location service on Postgres: the bindings of every extension, shared by all SIP
//! nodes. Saving a binding says, atomically, whether it was created, changed or only
//! refreshed; that answer (not the registrar's view from lookup time, which two nodes can
//! share) decides which registration events are written, so each fact is written once.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub tenant_id: Uuid,
    pub extension_id: Uuid,
    pub contact: String,
    pub source: String,
    pub call_id: String,
    pub cseq: i64,
    pub user_agent: String,
    pub expires_at: DateTime<Utc>,
    pub node_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// A new binding (or one that had lapsed): worth an event.
    Created,
    /// Same contact, but a new Call-ID (the device restarted), place or software: worth an event.
    Changed,
    /// Only the expiry moved: no event.
    Refreshed,
}

/// Bindings per extension are bounded: a device may not fill the table.
pub const MAX_BINDINGS_PER_EXTENSION: i64 = 10;

#[derive(Clone)]
pub struct Location {
    pool: PgPool,
}

#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error("extension already has {MAX_BINDINGS_PER_EXTENSION} registered devices")]
    TooManyBindings,
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

impl Location {
    pub fn new(pool: PgPool) -> Self {
        Location { pool }
    }

    /// The live bindings of an extension.
    pub async fn bindings(
        &self,
        tenant_id: Uuid,
        extension_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Vec<Binding>, LocationError> {
        let rows = sqlx::query(
            "SELECT tenant_id, extension_id, contact, source, call_id, cseq, user_agent, expires_at, node_id \
             FROM sip_bindings WHERE tenant_id = $1 AND extension_id = $2 AND expires_at > $3 ORDER BY contact",
        )
        .bind(tenant_id)
        .bind(extension_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(binding_of).collect())
    }

    /// Insert or refresh a binding and say which it was, in one statement.
    pub async fn save(&self, binding: &Binding, now: DateTime<Utc>) -> Result<Saved, LocationError> {
        let row = sqlx::query(
            "WITH old AS ( \
                 SELECT source, user_agent, call_id, expires_at FROM sip_bindings \
                 WHERE tenant_id = $1 AND extension_id = $2 AND contact = $3 FOR UPDATE), \
             live AS ( \
                 SELECT count(*) AS n FROM sip_bindings \
                 WHERE tenant_id = $1 AND extension_id = $2 AND expires_at > $10 AND contact <> $3), \
             saved AS ( \
                 INSERT INTO sip_bindings (tenant_id, extension_id, contact, source, call_id, cseq, user_agent, expires_at, node_id, updated_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 FROM live WHERE live.n < $11 \
                 ON CONFLICT (tenant_id, extension_id, contact) DO UPDATE SET \
                     source = EXCLUDED.source, call_id = EXCLUDED.call_id, cseq = EXCLUDED.cseq, \
                     user_agent = EXCLUDED.user_agent, expires_at = EXCLUDED.expires_at, \
                     node_id = EXCLUDED.node_id, updated_at = EXCLUDED.updated_at \
                 RETURNING 1) \
             SELECT (SELECT count(*) FROM saved) AS saved, old.source, old.user_agent, old.call_id, old.expires_at \
             FROM (SELECT 1) one LEFT JOIN old ON true",
        )
        .bind(binding.tenant_id)
        .bind(binding.extension_id)
        .bind(&binding.contact)
        .bind(&binding.source)
        .bind(&binding.call_id)
        .bind(binding.cseq)
        .bind(&binding.user_agent)
        .bind(binding.expires_at)
        .bind(&binding.node_id)
        .bind(now)
        .bind(MAX_BINDINGS_PER_EXTENSION)
        .fetch_one(&self.pool)
        .await?;
        let saved: i64 = row.get("saved");
        let old_source: Option<String> = row.get("source");
        if saved == 0 && old_source.is_none() {
            return Err(LocationError::TooManyBindings);
        }
        let old_user_agent: Option<String> = row.get("user_agent");
        let old_call_id: Option<String> = row.get("call_id");
        let old_expiry: Option<DateTime<Utc>> = row.get("expires_at");
        Ok(match (old_source, old_expiry) {
            (None, _) => Saved::Created,
            (Some(_), Some(expiry)) if expiry <= now => Saved::Created,
            (Some(source), _)
                if source != binding.source
                    || old_user_agent.as_deref() != Some(&binding.user_agent)
                    || old_call_id.as_deref() != Some(&binding.call_id) =>
            {
                Saved::Changed
            }
            _ => Saved::Refreshed,
        })
    }

    /// Remove one binding; true if it was live.
    pub async fn remove(
        &self,
        tenant_id: Uuid,
        extension_id: Uuid,
        contact: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, LocationError> {
        let live: Option<bool> = sqlx::query_scalar(
            "DELETE FROM sip_bindings WHERE tenant_id = $1 AND extension_id = $2 AND contact = $3 RETURNING expires_at > $4",
        )
        .bind(tenant_id)
        .bind(extension_id)
        .bind(contact)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(live.unwrap_or(false))
    }

    /// Remove every binding of an extension (`Contact: *`); returns the live ones removed.
    pub async fn remove_all(
        &self,
        tenant_id: Uuid,
        extension_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, LocationError> {
        let rows = sqlx::query(
            "DELETE FROM sip_bindings WHERE tenant_id = $1 AND extension_id = $2 RETURNING contact, expires_at > $3 AS live",
        )
        .bind(tenant_id)
        .bind(extension_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .filter(|r| r.get::<bool, _>("live"))
            .map(|r| r.get("contact"))
            .collect())
    }

    /// Delete up to `limit` lapsed bindings (any node may do it; each row goes once).
    pub async fn purge_expired(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<Binding>, LocationError> {
        let rows = sqlx::query(
            "DELETE FROM sip_bindings WHERE ctid IN ( \
                 SELECT ctid FROM sip_bindings WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING tenant_id, extension_id, contact, source, call_id, cseq, user_agent, expires_at, node_id",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(binding_of).collect())
    }
}

fn binding_of(row: &sqlx::postgres::PgRow) -> Binding {
    Binding {
        tenant_id: row.get("tenant_id"),
        extension_id: row.get("extension_id"),
        contact: row.get("contact"),
        source: row.get("source"),
        call_id: row.get("call_id"),
        cseq: row.get("cseq"),
        user_agent: row.get("user_agent"),
        expires_at: row.get("expires_at"),
        node_id: row.get("node_id"),
    }
}
