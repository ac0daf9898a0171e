//! A short-lived cache of the directory read model for the SIP node: tenants by SIP domain
//! and extensions by number, so a REGISTER or INVITE costs no directory query in the common
//! case. Entries (found or not) live `ttl` (2 s by default): a suspension, a disabled
//! extension or a new password reaches the SIP node within that time plus the projection's
//! lag. Memory is bounded: past `max_entries` the cache starts over.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::digest::Ha1;
use sqlx::{PgPool, Row};
use tokio::time::Instant;
use uuid::Uuid;

use crate::sip::b2bua::AccountRef;
use crate::sip::registrar::ExtensionRecord;

/// What the SIP node needs of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRow {
    pub tenant_id: Uuid,
    pub sip_domain: String,
    pub suspended: bool,
    pub max_concurrent_calls: u32,
}

/// The trunk an address belongs to (IP authentication), with its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkRow {
    pub trunk_id: Uuid,
    pub tenant_id: Uuid,
    pub sip_domain: String,
    pub suspended: bool,
}

type Entry<T> = (Instant, Option<T>);

#[derive(Default)]
struct Inner {
    tenants: HashMap<String, Entry<TenantRow>>,
    extensions: HashMap<(Uuid, String), Entry<ExtensionRecord>>,
    trunks: HashMap<IpAddr, Entry<TrunkRow>>,
    accounts: HashMap<Uuid, Entry<AccountRef>>,
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

    /// The enabled trunk whose allowed addresses include `ip`, or none.
    pub async fn trunk_by_address(&self, pool: &PgPool, ip: IpAddr) -> Result<Option<TrunkRow>, sqlx::Error> {
        if let Some((at, row)) = self.lock().trunks.get(&ip) {
            if at.elapsed() < self.ttl {
                return Ok(row.clone());
            }
        }
        let row = sqlx::query(
            "SELECT t.trunk_id, t.tenant_id, r.sip_domain, r.suspended FROM rm_trunks t \
             JOIN rm_tenants r ON r.tenant_id = t.tenant_id \
             WHERE t.enabled AND $1 = ANY(t.allowed_ips) ORDER BY t.trunk_id LIMIT 1",
        )
        .bind(ip.to_string())
        .fetch_optional(pool)
        .await?
        .map(|r| TrunkRow {
            trunk_id: r.get("trunk_id"),
            tenant_id: r.get("tenant_id"),
            sip_domain: r.get("sip_domain"),
            suspended: r.get("suspended"),
        });
        let mut inner = self.lock();
        if inner.trunks.len() >= self.max_entries {
            inner.trunks.clear();
        }
        inner.trunks.insert(ip, (Instant::now(), row.clone()));
        Ok(row)
    }

    /// The tenant's billing account (its first opened one), or none.
    pub async fn account(&self, pool: &PgPool, tenant_id: Uuid) -> Result<Option<AccountRef>, sqlx::Error> {
        if let Some((at, row)) = self.lock().accounts.get(&tenant_id) {
            if at.elapsed() < self.ttl {
                return Ok(*row);
            }
        }
        let row = sqlx::query(
            "SELECT account_id, kind FROM rm_balances WHERE tenant_id = $1 ORDER BY opened_at, account_id LIMIT 1",
        )
        .bind(tenant_id)
        .fetch_optional(pool)
        .await?
        .map(|r| AccountRef {
            account_id: r.get("account_id"),
            prepaid: r.get::<String, _>("kind") == "prepaid",
        });
        let mut inner = self.lock();
        if inner.accounts.len() >= self.max_entries {
            inner.accounts.clear();
        }
        inner.accounts.insert(tenant_id, (Instant::now(), row));
        Ok(row)
    }
}
