//! A short-lived cache of the directory read model for the SIP node: tenants by SIP domain
//! and extensions by number, so a REGISTER or INVITE costs no directory query in the common
//! case. Entries (found or not) live `ttl` (2 s by default): a suspension, a disabled
//! extension or a new password reaches the SIP node within that time plus the projection's
//! lag. Memory is bounded: past `max_entries` the cache starts over.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use commands::db::KeptConnection;
use domain::digest::Ha1;
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot};
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
    /// Extension misses go to one loader task (started at the first miss), which reads
    /// whatever misses are queued in one statement on a connection of its own: under load
    /// every extension's entry lapses once a TTL, so these are most of the node's queries.
    extension_loader: Arc<OnceLock<mpsc::Sender<ExtensionRequest>>>,
}

struct ExtensionRequest {
    tenant_id: Uuid,
    number: String,
    reply: oneshot::Sender<Result<Option<ExtensionRecord>, Arc<sqlx::Error>>>,
}

/// Misses queued while a statement runs go in the next one, up to this many.
const MAX_EXTENSION_BATCH: usize = 256;

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
            extension_loader: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-written.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached answer for a SIP domain, if it is fresh: `Some(None)` is a fresh "no such
    /// tenant". Never queries.
    pub fn cached_tenant(&self, domain: &str) -> Option<Option<TenantRow>> {
        let key = domain.to_ascii_lowercase();
        let inner = self.lock();
        let (at, row) = inner.tenants.get(&key)?;
        (at.elapsed() < self.ttl).then(|| row.clone())
    }

    /// The cached answer for an extension number, if it is fresh. Never queries.
    pub fn cached_extension(&self, tenant_id: Uuid, number: &str) -> Option<Option<ExtensionRecord>> {
        let inner = self.lock();
        let (at, row) = inner.extensions.get(&(tenant_id, number.to_string()))?;
        (at.elapsed() < self.ttl).then(|| row.clone())
    }

    /// The tenant whose SIP domain this is (lower-cased), or none.
    pub async fn tenant(&self, pool: &PgPool, domain: &str) -> Result<Option<TenantRow>, sqlx::Error> {
        if let Some(row) = self.cached_tenant(domain) {
            return Ok(row);
        }
        let key = domain.to_ascii_lowercase();
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
        if let Some(row) = self.cached_extension(tenant_id, number) {
            return Ok(row);
        }
        let key = (tenant_id, number.to_string());
        let loader = self.extension_loader.get_or_init(|| {
            let (requests, queue) = mpsc::channel(4 * MAX_EXTENSION_BATCH);
            tokio::spawn(extension_loader(pool.clone(), queue));
            requests
        });
        let (reply, answer) = oneshot::channel();
        let request = ExtensionRequest {
            tenant_id,
            number: number.to_string(),
            reply,
        };
        let stopped = || sqlx::Error::Protocol("the directory loader stopped".into());
        loader.send(request).await.map_err(|_| stopped())?;
        let row = answer.await.map_err(|_| stopped())?.map_err(commands::db::unshared)?;
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

/// Reads queued extension misses, up to [`MAX_EXTENSION_BATCH`] at a time, each batch in one
/// statement on the loader's own connection; stops when every cache clone is gone.
async fn extension_loader(pool: PgPool, mut queue: mpsc::Receiver<ExtensionRequest>) {
    let mut connection = KeptConnection::new(pool);
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_EXTENSION_BATCH {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let tenants: Vec<Uuid> = batch.iter().map(|r| r.tenant_id).collect();
        let numbers: Vec<&str> = batch.iter().map(|r| r.number.as_str()).collect();
        let rows = match connection.get().await {
            Ok(c) => {
                sqlx::query(
                    "SELECT i.ord, e.extension_id, e.number, e.ha1_md5, e.ha1_sha256, e.enabled \
                     FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS i(tenant_id, number, ord) \
                     JOIN LATERAL (SELECT * FROM rm_extensions e \
                         WHERE e.tenant_id = i.tenant_id AND e.number = i.number) e ON true",
                )
                .bind(&tenants)
                .bind(&numbers)
                .fetch_all(c)
                .await
            }
            Err(e) => Err(e),
        };
        match rows {
            Ok(rows) => {
                let mut found: Vec<Option<ExtensionRecord>> = batch.iter().map(|_| None).collect();
                for row in &rows {
                    let ord: i64 = row.get("ord");
                    if let Some(slot) = usize::try_from(ord - 1).ok().and_then(|i| found.get_mut(i)) {
                        *slot = Some(ExtensionRecord {
                            extension_id: row.get("extension_id"),
                            number: row.get("number"),
                            ha1: Ha1 {
                                md5: row.get("ha1_md5"),
                                sha256: row.get("ha1_sha256"),
                            },
                            enabled: row.get("enabled"),
                        });
                    }
                }
                for (request, record) in batch.into_iter().zip(found) {
                    let _ = request.reply.send(Ok(record));
                }
            }
            Err(e) => {
                connection.discard();
                let e = Arc::new(e);
                for request in batch {
                    let _ = request.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
