//! API keys and roles: a key is `llk_` + 64 hex digits of randomness, shown once; the log keeps
//! only its SHA-256. The caller's tenant always comes from its key.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use commands::{CommandContext, CommandHandler, Outcome, StreamRef};
use domain::apikey::{self, ApiKey, ApiKeyCommand, ApiKeyRejection, Role};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::error::{ApiError, ApiResult, Code};
use super::key_cache::KeyCache;

/// Who is asking: resolved from the key on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub key_id: Uuid,
    pub tenant_id: Uuid,
    pub role: Role,
}

/// What a request needs; each resolver names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Directory, calls, CDRs, charges, balances, invoices, reports.
    Read,
    /// The event log, its export and the projections' status.
    ReadEvents,
    /// CSV / JSON files of CDRs, charges and invoices.
    Export,
    /// Live feeds over graphql-ws.
    Subscribe,
    /// Tenant settings and extensions.
    ManageDirectory,
    /// Accounts, tariffs, top-ups, adjustments, period close.
    ManageBilling,
    /// Creating and revoking API keys.
    ManageKeys,
    /// Every tenant: list and create tenants.
    ManageTenants,
    /// Webhook subscriptions.
    ManageWebhooks,
    /// Conference rooms, and muting or kicking their participants.
    ManageConferences,
    /// Ending calls in progress (`hangupCall`).
    ControlCalls,
}

pub fn allows(role: Role, capability: Capability) -> bool {
    use Capability::*;
    use Role::*;
    match capability {
        Read => true,
        ReadEvents => matches!(role, SystemAdmin | TenantAdmin | Auditor),
        Export => matches!(role, SystemAdmin | TenantAdmin | Finance | Auditor),
        Subscribe => matches!(role, SystemAdmin | TenantAdmin | Developer | Auditor),
        ManageDirectory => matches!(role, SystemAdmin | TenantAdmin),
        ManageBilling => matches!(role, SystemAdmin | TenantAdmin | Finance),
        ManageKeys => matches!(role, SystemAdmin | TenantAdmin),
        ManageTenants => matches!(role, SystemAdmin),
        ManageWebhooks => matches!(role, SystemAdmin | TenantAdmin | Developer),
        ManageConferences => matches!(role, SystemAdmin | TenantAdmin),
        ControlCalls => matches!(role, SystemAdmin | TenantAdmin),
    }
}

impl Caller {
    pub fn require(&self, capability: Capability) -> ApiResult<()> {
        if allows(self.role, capability) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "the {} role may not do this ({capability:?})",
                self.role.as_str()
            )))
        }
    }
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A fresh key: 256 bits from the OS generator (two v4 UUIDs' random bytes, hashed).
pub fn generate_key() -> String {
    let mut seed = Vec::with_capacity(48);
    for _ in 0..3 {
        seed.extend_from_slice(Uuid::new_v4().as_bytes());
    }
    format!("llk_{}", hex::encode(Sha256::digest(&seed)))
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The caller a key names: from this node's memory of the keys it has authenticated
/// (`key_cache.rs`: a revocation evicts its key), else straight from the log: created and
/// not revoked.
pub async fn authenticate(keys: &KeyCache, pool: &PgPool, key: Option<&str>) -> ApiResult<Caller> {
    let Some(key) = key else {
        return Err(ApiError::unauthenticated());
    };
    // Anything that is not the shape of a key cannot be one; no lookup for it.
    if key.len() != 68 || !key.starts_with("llk_") {
        return Err(ApiError::new(Code::Unauthenticated, "invalid API key"));
    }
    let key_hash = hash_key(key);
    let ticket = match keys.get(&key_hash) {
        Ok(caller) => return Ok(caller),
        Err(ticket) => ticket,
    };
    let caller = lookup(pool, &key_hash).await?;
    if let Some(ticket) = ticket {
        keys.remember(ticket, key_hash, caller);
    }
    Ok(caller)
}

/// The caller a key hash names, straight from the log: created and not revoked.
pub async fn lookup(pool: &PgPool, key_hash: &str) -> ApiResult<Caller> {
    let row = sqlx::query(
        "SELECT c.tenant_id, c.payload->>'key_id' AS key_id, c.payload->>'role' AS role \
         FROM events c \
         WHERE c.event_type = 'ApiKeyCreated' AND c.payload->>'key_hash' = $1 \
           AND NOT EXISTS (SELECT 1 FROM events r WHERE r.tenant_id = c.tenant_id \
                           AND r.stream_id = c.stream_id AND r.event_type = 'ApiKeyRevoked') \
         LIMIT 1",
    )
    .bind(key_hash)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Err(ApiError::new(Code::Unauthenticated, "invalid or revoked API key"));
    };
    let key_id: String = row.get("key_id");
    let role: String = row.get("role");
    Ok(Caller {
        key_id: key_id.parse().map_err(ApiError::internal)?,
        tenant_id: row.get("tenant_id"),
        role: Role::parse(&role).ok_or_else(|| ApiError::internal(format!("stored role {role}")))?,
    })
}

/// A created key: the secret is in `key` and nowhere else.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key_id: Uuid,
    pub key: String,
    pub outcome: Outcome,
}

/// Create a key for `tenant_id` through the command handler. A retried command id is
/// recognised, but its secret cannot be shown again: the caller gets `replayed` and no key.
pub async fn create_key(
    handler: &CommandHandler,
    ctx: &CommandContext,
    tenant_id: Uuid,
    role: Role,
    label: &str,
) -> ApiResult<NewKey> {
    let key_id = Uuid::new_v5(&ctx.command_id, b"apikey");
    let key = generate_key();
    let command = ApiKeyCommand::Create {
        key_id,
        tenant_id,
        role,
        key_hash: hash_key(&key),
        label: label.to_string(),
    };
    let outcome = handler
        .execute::<ApiKey, ApiKeyRejection>(ctx, StreamRef::of::<ApiKey>(tenant_id, &key_id), |state| {
            apikey::decide(&command, state)
        })
        .await?;
    Ok(NewKey {
        key_id,
        key: if outcome.replayed { String::new() } else { key },
        outcome,
    })
}

/// Revoke a key. With `keys` (the API's memory of keys), the key is forgotten before this
/// returns, so the next request with it on this node is refused; other nodes forget it when
/// their follower reads the revocation.
pub async fn revoke_key(
    handler: &CommandHandler,
    keys: Option<&KeyCache>,
    ctx: &CommandContext,
    tenant_id: Uuid,
    key_id: Uuid,
    reason: &str,
) -> ApiResult<Outcome> {
    let command = ApiKeyCommand::Revoke {
        reason: reason.to_string(),
    };
    let outcome = handler
        .execute::<ApiKey, ApiKeyRejection>(ctx, StreamRef::of::<ApiKey>(tenant_id, &key_id), |state| {
            apikey::decide(&command, state)
        })
        .await
        .map_err(|e| match e {
            commands::CommandError::Rejected(ApiKeyRejection::NotFound) => ApiError::not_found("no such key"),
            other => other.into(),
        });
    // After the commit (or a failure: forgetting a key costs one lookup, never a wrong answer).
    if let Some(keys) = keys {
        keys.evict(tenant_id, key_id);
    }
    outcome
}

/// A token bucket per key: `burst` requests at once, refilled at `per_second`.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<Uuid, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        RateLimiter {
            per_second: f64::from(per_second.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok` to go ahead, or how long until the next request would be allowed.
    pub fn check(&self, key: Uuid, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Bounded memory: forget full buckets when the map grows large.
        if buckets.len() > 100_000 {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        let (tokens, at) = buckets.entry(key).or_insert((self.burst, now));
        let refilled = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_shape_authenticate_expects() {
        let key = generate_key();
        assert_eq!(key.len(), 68);
        assert!(key.starts_with("llk_"));
        assert_ne!(key, generate_key());
        assert_eq!(hash_key(&key).len(), 64);
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn rate_limiter_refuses_past_the_burst_and_refills() {
        let limiter = RateLimiter::new(10, 3);
        let key = Uuid::from_u128(1);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(key, t0).is_ok());
        }
        let wait = limiter.check(key, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100));
        assert!(limiter.check(key, t0 + Duration::from_millis(150)).is_ok());
        assert!(limiter.check(Uuid::from_u128(2), t0).is_ok());
    }

    #[test]
    fn roles_capabilities() {
        assert!(!allows(Role::Auditor, Capability::ManageBilling));
        assert!(allows(Role::Finance, Capability::ManageBilling));
        assert!(!allows(Role::Finance, Capability::ReadEvents));
        assert!(!allows(Role::Developer, Capability::Export));
        assert!(!allows(Role::TenantAdmin, Capability::ManageTenants));
        assert!(Role::ALL.iter().all(|r| allows(*r, Capability::Read)));
        for capability in [Capability::ManageConferences, Capability::ControlCalls] {
            for role in [Role::Finance, Role::Auditor, Role::Developer] {
                assert!(!allows(role, capability), "{role:?} {capability:?}");
            }
            assert!(allows(Role::TenantAdmin, capability));
        }
    }
}
