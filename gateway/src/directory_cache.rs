//! A short-lived cache of the directory read model for the SIP node: tenants by SIP domain
//! and extensions by number, so a REGISTER or INVITE costs no directory query in the common
//! case. Entries (found or not) live `ttl` (2 s by default): a suspension, a disabled
//! extension or a new password reaches the SIP node within that time plus the projection's
//! lag. Memory is bounded: past `max_entries` the cache starts over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::digest::Ha1;
use sqlx::{PgPool, Row};
use tokio::time::Instant;
use uuid::Uuid;

use crate::sip::registrar::ExtensionRecord;

/// What the SIP node needs of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRow {
    pub tenant_id: Uuid,
    pub sip_domain: String,
    pub suspended: bool,
    pub max_concurrent_calls: u32,
}

type Entry<T> = (Instant, Option<T>);

#[derive(Default)]
struct Inner {
    tenants: HashMap<String, Entry<TenantRow>>,
    extensions: HashMap<(Uuid, String), Entry<ExtensionRecord>>,
}

#[derive(Clone)]
pub struct DirectoryCache {
    ttl: Duration,
    max_entries: usize,
    inner: Arc<Mutex<Inner>>,
}

impl Default for DirectoryCache {
    fn default() -> Self {
        DirectoryCache::new(Duration::from_secs(2), 200_000)
    }
}

impl DirectoryCache {
    pub fn new(ttl: Duration, max_entries: usize) -> DirectoryCache {
        DirectoryCache {
            ttl,
            max_entries: max_entries.max(1),
            inner: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-written.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tenant whose SIP domain this is (lower-cased), or none.
    pub async fn tenant(&self, pool: &PgPool, domain: &str) -> Result<Option<TenantRow>, sqlx::Error> {
        let key = domain.to_ascii_lowercase();
        if let Some((at, row)) = self.lock().tenants.get(&key) {
            if at.elapsed() < self.ttl {
                return Ok(row.clone());
            }
        }
        let row = sqlx::query(
            "SELECT tenant_id, sip_domain, suspended, max_concurrent_calls FROM rm_tenants WHERE sip_domain = $1",
        )
        .bind(&key)
        .fetch_optional(pool)
        .await?
        .map(|r| TenantRow {
            tenant_id: r.get("tenant_id"),
            sip_domain: r.get("sip_domain"),
            suspended: r.get("suspended"),
            max_concurrent_calls: u32::try_from(r.get::<i32, _>("max_concurrent_calls")).unwrap_or(0),
        });
        let mut inner = self.lock();
        if inner.tenants.len() >= self.max_entries {
            inner.tenants.clear();
        }
        inner.tenants.insert(key, (Instant::now(), row.clone()));
        Ok(row)
    }

    /// The extension `number` of a tenant, or none.
    pub async fn extension(
        &self,
        pool: &PgPool,
        tenant_id: Uuid,
        number: &str,
    ) -> Result<Option<ExtensionRecord>, sqlx::Error> {
        let key = (tenant_id, number.to_string());
        if let Some((at, row)) = self.lock().extensions.get(&key) {
            if at.elapsed() < self.ttl {
                return Ok(row.clone());
            }
        }
        let row = sqlx::query(
            "SELECT extension_id, number, ha1_md5, ha1_sha256, enabled FROM rm_extensions WHERE tenant_id = $1 AND number = $2",
        )
        .bind(tenant_id)
        .bind(number)
        .fetch_optional(pool)
        .await?
        .map(|row| ExtensionRecord {
            extension_id: row.get("extension_id"),
            number: row.get("number"),
            ha1: Ha1 {
                md5: row.get("ha1_md5"),
                sha256: row.get("ha1_sha256"),
            },
            enabled: row.get("enabled"),
        });
        let mut inner = self.lock();
        if inner.extensions.len() >= self.max_entries {
            inner.extensions.clear();
        }
        inner.extensions.insert(key, (Instant::now(), row.clone()));
        Ok(row)
    }
}
