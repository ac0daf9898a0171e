//! What the SIP node's call layer asks of Postgres: who is calling, where the call goes,
//! and (for prepaid accounts) how long it may last. The decisions stay in the sans-IO
//! `sip::b2bua`; this module only reads read models and runs billing commands.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use billing::account::{self, AccountCommand, AccountEvent, AccountState};
use billing::aggregates::Account;
use billing::rating::{self, Leg, RateCard};
use billing::tariff::{CompiledTariff, TariffVersion};
use chrono::{DateTime, Utc};
use commands::{CommandContext, CommandHandler, StreamRef};
use domain::call::{CallEvent, Direction};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::directory_cache::DirectoryCache;
use crate::location::Location;
use crate::sip::b2bua::{Authorization, CallLookup, ContactTarget, Route, TenantCall, TrunkTarget};
use crate::sip::registrar::ExtensionRecord;
use crate::sip::transaction::Transport;

/// Tenant, caller, route and account for an INVITE.
#[allow(clippy::too_many_arguments)]
pub async fn lookup(
    pool: &PgPool,
    directory: &DirectoryCache,
    location: &Location,
    domain: &str,
    caller: &str,
    callee: &str,
    source: SocketAddr,
    credentials: bool,
    at: DateTime<Utc>,
) -> Result<CallLookup, sqlx::Error> {
    // A trunk's allowed address comes first: carriers address us by IP, not by domain.
    if let Some(inbound) = inbound_from_trunk(pool, directory, location, callee, source, at).await? {
        return Ok(inbound);
    }
    let Some(tenant) = directory.tenant(pool, domain).await? else {
        return Ok(CallLookup::UnknownDomain);
    };
    let tenant_id = tenant.tenant_id;
    let caller = directory.extension(pool, tenant_id, caller).await?;
    if !credentials {
        // Only a challenge follows: the route and the account are not needed yet.
        return Ok(CallLookup::Tenant(Box::new(TenantCall {
            tenant_id,
            sip_domain: tenant.sip_domain,
            suspended: tenant.suspended,
            caller,
            from_trunk: None,
            did: None,
            route: Route::NotFound,
            call_limit: Some(tenant.max_concurrent_calls),
            account: None,
        })));
    }
    let route = match directory.extension(pool, tenant_id, callee).await? {
        Some(ext) if ext.enabled => extension_route(location, tenant_id, &ext, at).await?,
        Some(_) => Route::Extension {
            extension_id: Uuid::nil(),
            number: callee.to_string(),
            contacts: vec![],
        },
        // No extension has the number: a conference room's access number, else outbound.
        None => match conference_route(pool, tenant_id, callee).await? {
            Some(route) => route,
            None => outbound_route(pool, tenant_id, callee).await?,
        },
    };
    Ok(CallLookup::Tenant(Box::new(TenantCall {
        tenant_id,
        sip_domain: tenant.sip_domain,
        suspended: tenant.suspended,
        caller,
        from_trunk: None,
        did: None,
        route,
        call_limit: Some(tenant.max_concurrent_calls),
        account: directory.account(pool, tenant_id).await?,
    })))
}

async fn extension_route(
    location: &Location,
    tenant_id: Uuid,
    ext: &ExtensionRecord,
    at: DateTime<Utc>,
) -> Result<Route, sqlx::Error> {
    let bindings = location
        .bindings(tenant_id, ext.extension_id, at)
        .await
        .map_err(|e| match e {
            crate::location::LocationError::Sql(e) => e,
            other => sqlx::Error::Protocol(other.to_string()),
        })?;
    let contacts = bindings
        .into_iter()
        .filter_map(|b| {
            let source: SocketAddr = b.source.parse().ok()?;
            let destination = contact_destination(&b.contact, source);
            let transport = if b.contact.to_ascii_lowercase().contains("transport=tcp") {
                Transport::Reliable
            } else {
                Transport::Unreliable
            };
            Some(ContactTarget {
                uri: b.contact,
                destination,
                transport,
            })
        })
        .collect();
    Ok(Route::Extension {
        extension_id: ext.extension_id,
        number: ext.number.clone(),
        contacts,
    })
}

/// Where to send requests for a registered contact: the contact's own address when it is
/// reachable as written (a public address, or the same host the REGISTER came from), else
/// the address the REGISTER came from (a phone behind NAT with a private Contact).
fn contact_destination(contact: &str, source: SocketAddr) -> SocketAddr {
    let Some((_, hostport)) = contact.split_once('@').or_else(|| contact.split_once(':')) else {
        return source;
    };
    let hostport = hostport.split([';', '>', '?']).next().unwrap_or("");
    let (host, port) = match hostport.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse::<u16>().ok()),
        _ => (hostport, Some(5060)),
    };
    let Ok(ip) = host.trim_matches(|c| c == '[' || c == ']').parse::<std::net::IpAddr>() else {
        return source;
    };
    let private = match ip {
        std::net::IpAddr::V4(v4) => v4.is_private() || v4.is_link_local(),
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    };
    match port {
        Some(port) if ip == source.ip() || !private => SocketAddr::new(ip, port),
        _ => source,
    }
}

/// The conference route when `number` is the access number of one of the tenant's rooms
/// (not removed).
async fn conference_route(pool: &PgPool, tenant_id: Uuid, number: &str) -> Result<Option<Route>, sqlx::Error> {
    let found: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM rm_conference_rooms WHERE tenant_id = $1 AND access_number = $2 AND NOT removed)",
    )
    .bind(tenant_id)
    .bind(number)
    .fetch_one(pool)
    .await?;
    Ok(found.then(|| Route::Conference {
        access_number: number.to_string(),
    }))
}

/// The outbound route whose prefix matches the dialled number best, as trunk targets in
/// the route's order.
async fn outbound_route(pool: &PgPool, tenant_id: Uuid, number: &str) -> Result<Route, sqlx::Error> {
    let routes = sqlx::query(
        "SELECT route_id, prefix, strip_digits, prepend, trunk_ids FROM rm_routes \
         WHERE tenant_id = $1 AND starts_with($2, prefix) ORDER BY length(prefix) DESC, priority, route_id LIMIT 1",
    )
    .bind(tenant_id)
    .bind(number)
    .fetch_optional(pool)
    .await?;
    let Some(route) = routes else {
        return Ok(Route::NotFound);
    };
    let strip: i32 = route.get("strip_digits");
    let prepend: String = route.get("prepend");
    let trunk_ids: Vec<Uuid> = route.get("trunk_ids");
    let dialled = format!(
        "{prepend}{}",
        number
            .chars()
            .skip(usize::try_from(strip).unwrap_or(0))
            .collect::<String>()
    );
    let rows = sqlx::query(
        "SELECT trunk_id, host, port, transport, username, password, enabled FROM rm_trunks \
         WHERE tenant_id = $1 AND trunk_id = ANY($2)",
    )
    .bind(tenant_id)
    .bind(&trunk_ids)
    .fetch_all(pool)
    .await?;
    let mut by_id: HashMap<Uuid, TrunkTarget> = HashMap::new();
    for row in rows {
        if !row.get::<bool, _>("enabled") {
            continue;
        }
        let host: String = row.get("host");
        let port: i32 = row.get("port");
        let Some(destination) = resolve(&host, port).await else {
            continue;
        };
        let username: Option<String> = row.get("username");
        let password: Option<String> = row.get("password");
        let transport: String = row.get("transport");
        by_id.insert(
            row.get("trunk_id"),
            TrunkTarget {
                trunk_id: row.get("trunk_id"),
                destination,
                transport: if transport == "tcp" {
                    Transport::Reliable
                } else {
                    Transport::Unreliable
                },
                host: if port == 5060 { host } else { format!("{host}:{port}") },
                number: dialled.clone(),
                credentials: username.zip(password),
            },
        );
    }
    Ok(Route::Trunks(
        trunk_ids.iter().filter_map(|id| by_id.remove(id)).collect(),
    ))
}

async fn resolve(host: &str, port: i32) -> Option<SocketAddr> {
    let port = u16::try_from(port).ok()?;
    tokio::net::lookup_host((host, port)).await.ok()?.next()
}

/// An INVITE from a trunk's allowed address: the DID decides the tenant and the extension.
async fn inbound_from_trunk(
    pool: &PgPool,
    directory: &DirectoryCache,
    location: &Location,
    did: &str,
    source: SocketAddr,
    at: DateTime<Utc>,
) -> Result<Option<CallLookup>, sqlx::Error> {
    let Some(trunk) = directory.trunk_by_address(pool, source.ip()).await? else {
        return Ok(None);
    };
    let tenant_id = trunk.tenant_id;
    let target = sqlx::query("SELECT extension_number FROM rm_dids WHERE tenant_id = $1 AND did = $2")
        .bind(tenant_id)
        .bind(did)
        .fetch_optional(pool)
        .await?;
    let route = match target {
        Some(row) => {
            let number: String = row.get("extension_number");
            match directory.extension(pool, tenant_id, &number).await? {
                Some(ext) if ext.enabled => extension_route(location, tenant_id, &ext, at).await?,
                Some(_) => Route::NotFound,
                // A DID whose target number is a room's access number reaches the room.
                None => conference_route(pool, tenant_id, &number)
                    .await?
                    .unwrap_or(Route::NotFound),
            }
        }
        None => Route::NotFound,
    };
    Ok(Some(CallLookup::Tenant(Box::new(TenantCall {
        tenant_id,
        sip_domain: trunk.sip_domain,
        suspended: trunk.suspended,
        caller: None,
        from_trunk: Some(trunk.trunk_id),
        did: Some(did.to_string()),
        route,
        call_limit: call_limit(pool, tenant_id).await?,
        account: directory.account(pool, tenant_id).await?,
    }))))
}

async fn call_limit(pool: &PgPool, tenant_id: Uuid) -> Result<Option<u32>, sqlx::Error> {
    let row = sqlx::query("SELECT max_concurrent_calls FROM rm_tenants WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_optional(pool)
        .await?;
    Ok(row
        .map(|r| r.get::<i32, _>("max_concurrent_calls"))
        .and_then(|n| u32::try_from(n).ok()))
}

/// A prepaid call's reservation, kept until the call ends and is settled.
#[derive(Debug, Clone)]
struct Reservation {
    tenant_id: Uuid,
    account_id: Uuid,
    reservation_id: Uuid,
    destination: String,
    tariff: Arc<CompiledTariff>,
    billing_tz: chrono_tz::Tz,
    currency: String,
    answered_at: Option<DateTime<Utc>>,
    /// The longest call the reservation covers: the node cuts the call there, and the
    /// settled duration never exceeds it (wall-clock timestamps may lag the cut by a little).
    max_duration_s: u32,
}

/// Prepaid authorization and settlement for the SIP node's calls.
#[derive(Clone)]
pub struct CallBilling {
    pool: PgPool,
    handler: CommandHandler,
    node_id: String,
    open: Arc<Mutex<HashMap<Uuid, Reservation>>>,
}

/// Prepaid calls get at most this long, whatever the funds.
const MAX_CALL_S: u32 = 4 * 3600;

impl CallBilling {
    pub fn new(pool: PgPool, handler: CommandHandler, node_id: String) -> CallBilling {
        CallBilling {
            pool,
            handler,
            node_id,
            open: Arc::default(),
        }
    }

    /// Reserves the charge of the longest call the account's available funds allow.
    pub async fn authorize(
        &self,
        tenant_id: Uuid,
        call_id: Uuid,
        account_id: Uuid,
        direction: Direction,
        callee: &str,
        at: DateTime<Utc>,
    ) -> Authorization {
        match self
            .try_authorize(tenant_id, call_id, account_id, direction, callee, at)
            .await
        {
            Ok(authorization) => authorization,
            Err(e) => {
                tracing::warn!(%call_id, error = %e, "prepaid authorization failed");
                Authorization::Refused {
                    status: 503,
                    reason: "billing unavailable".into(),
                }
            }
        }
    }

    async fn try_authorize(
        &self,
        tenant_id: Uuid,
        call_id: Uuid,
        account_id: Uuid,
        direction: Direction,
        callee: &str,
        at: DateTime<Utc>,
    ) -> anyhow::Result<Authorization> {
        if direction == Direction::Inbound {
            // Inbound calls cost the callee's tenant nothing per minute here.
            return Ok(Authorization::Granted {
                max_duration_s: None,
                reservation_id: None,
            });
        }
        let Some(tariff) = self.tariff_in_force(tenant_id, account_id, at).await? else {
            return Ok(Authorization::Refused {
                status: 403,
                reason: "no tariff for this account".into(),
            });
        };
        let card = match RateCard::for_destination(&tariff, callee) {
            Ok(card) => card,
            Err(_) => {
                return Ok(Authorization::Refused {
                    status: 403,
                    reason: "destination not in tariff".into(),
                })
            }
        };
        let row = sqlx::query("SELECT billing_tz, currency FROM rm_balances WHERE tenant_id = $1 AND account_id = $2")
            .bind(tenant_id)
            .bind(account_id)
            .fetch_one(&self.pool)
            .await?;
        let billing_tz: chrono_tz::Tz = row.get::<String, _>("billing_tz").parse().unwrap_or(chrono_tz::UTC);
        let currency: String = row.get("currency");
        let reservation_id = Uuid::new_v5(&call_id, b"reservation");
        let command = AccountCommand::Reserve {
            reservation_id,
            call_id,
            rate_card: card,
            now: at,
            duration_cap_s: Some(MAX_CALL_S),
        };
        let granted: Mutex<Option<u32>> = Mutex::new(None);
        let context = CommandContext::new(reservation_id, "sip-b2bua", &self.node_id, at);
        let outcome = self
            .handler
            .execute::<Account, _>(
                &context,
                StreamRef::of::<Account>(tenant_id, &account_id),
                |s: &AccountState| {
                    let events = account::decide(&command, s)?;
                    for event in &events {
                        if let AccountEvent::Reserved(r) = event {
                            *granted.lock().unwrap_or_else(|e| e.into_inner()) = Some(r.max_duration.actual_s);
                        }
                    }
                    Ok::<_, account::AccountRejection>(events)
                },
            )
            .await;
        match outcome {
            Ok(_) => {}
            Err(commands::CommandError::Rejected(account::AccountRejection::InsufficientFunds { .. })) => {
                return Ok(Authorization::Refused {
                    status: 402,
                    reason: "insufficient funds".into(),
                })
            }
            Err(e) => return Err(anyhow::anyhow!("reserve: {e}")),
        }
        let max = granted.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or(0);
        if max == 0 {
            self.release(tenant_id, account_id, reservation_id, at).await;
            return Ok(Authorization::Refused {
                status: 402,
                reason: "insufficient funds".into(),
            });
        }
        self.open.lock().unwrap_or_else(|e| e.into_inner()).insert(
            call_id,
            Reservation {
                tenant_id,
                account_id,
                reservation_id,
                destination: callee.to_string(),
                tariff,
                billing_tz,
                currency,
                answered_at: None,
                max_duration_s: max,
            },
        );
        Ok(Authorization::Granted {
            max_duration_s: Some(max),
            reservation_id: Some(reservation_id),
        })
    }

    async fn tariff_in_force(
        &self,
        tenant_id: Uuid,
        account_id: Uuid,
        at: DateTime<Utc>,
    ) -> anyhow::Result<Option<Arc<CompiledTariff>>> {
        let row = sqlx::query(
            "SELECT v.body FROM rm_rating_assignments a \
             JOIN rm_rating_tariff_versions v ON v.tenant_id = a.tenant_id AND v.tariff_id = a.tariff_id \
             WHERE a.tenant_id = $1 AND a.account_id = $2 AND a.effective_from <= $3 AND v.effective_from <= $3 \
             ORDER BY a.effective_from DESC, v.version DESC LIMIT 1",
        )
        .bind(tenant_id)
        .bind(account_id)
        .bind(at)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let version: TariffVersion = serde_json::from_value(row.get("body"))?;
        Ok(Some(Arc::new(CompiledTariff::new(version))))
    }

    /// Follows a call's events: remembers the answer, and at the end settles the charge
    /// (or releases the reservation of an unanswered call).
    pub async fn observe(&self, call_id: Uuid, events: &[CallEvent]) {
        for event in events {
            match event {
                CallEvent::CallAnswered(answered) => {
                    if let Some(r) = self.open.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&call_id) {
                        r.answered_at = Some(answered.at);
                    }
                }
                CallEvent::CallEnded(ended) => {
                    let reservation = self.open.lock().unwrap_or_else(|e| e.into_inner()).remove(&call_id);
                    if let Some(r) = reservation {
                        self.settle(call_id, r, ended.at).await;
                    }
                }
                CallEvent::CallRejected(rejected) => {
                    let reservation = self.open.lock().unwrap_or_else(|e| e.into_inner()).remove(&call_id);
                    if let Some(r) = reservation {
                        self.release(r.tenant_id, r.account_id, r.reservation_id, rejected.at)
                            .await;
                    }
                }
                _ => {}
            }
        }
    }

    async fn settle(&self, call_id: Uuid, r: Reservation, ended_at: DateTime<Utc>) {
        let Some(answered_at) = r.answered_at else {
            return self
                .release(r.tenant_id, r.account_id, r.reservation_id, ended_at)
                .await;
        };
        let duration_s = u32::try_from((ended_at - answered_at).num_seconds().max(0))
            .unwrap_or(MAX_CALL_S)
            .min(r.max_duration_s);
        let leg = Leg {
            destination: &r.destination,
            answered_at,
            duration_s,
        };
        let charge = match rating::rate_leg(&r.tariff, &leg, r.billing_tz) {
            Ok(charge) => charge,
            Err(e) => {
                tracing::warn!(%call_id, error = %e, "rating a prepaid call failed; releasing");
                return self
                    .release(r.tenant_id, r.account_id, r.reservation_id, ended_at)
                    .await;
            }
        };
        let command = AccountCommand::Settle {
            charge_id: call_id,
            call_id,
            reservation_id: Some(r.reservation_id),
            amount: charge.amount,
            currency: r.currency.clone(),
        };
        let context = CommandContext::new(Uuid::new_v5(&call_id, b"settle"), "sip-b2bua", &self.node_id, ended_at);
        if let Err(e) = self
            .handler
            .execute::<Account, _>(&context, StreamRef::of::<Account>(r.tenant_id, &r.account_id), |s| {
                account::decide(&command, s)
            })
            .await
        {
            tracing::warn!(%call_id, error = %e, "settling a prepaid call failed");
        }
    }

    async fn release(&self, tenant_id: Uuid, account_id: Uuid, reservation_id: Uuid, at: DateTime<Utc>) {
        let command = AccountCommand::Release { reservation_id };
        let context = CommandContext::new(
            Uuid::new_v5(&reservation_id, b"release"),
            "sip-b2bua",
            &self.node_id,
            at,
        );
        if let Err(e) = self
            .handler
            .execute::<Account, _>(&context, StreamRef::of::<Account>(tenant_id, &account_id), |s| {
                account::decide(&command, s)
            })
            .await
        {
            tracing::warn!(%reservation_id, error = %e, "releasing a reservation failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::contact_destination;

    #[test]
    fn contacts_behind_nat_are_reached_at_their_source() {
        let source = "203.0.113.7:40000".parse().unwrap();
        assert_eq!(contact_destination("sip:1001@192.168.1.20:5060", source), source);
        assert_eq!(
            contact_destination("sip:1001@198.51.100.9:5070;transport=udp", source),
            "198.51.100.9:5070".parse().unwrap()
        );
        let local = "127.0.0.1:6000".parse().unwrap();
        assert_eq!(
            contact_destination("sip:1001@127.0.0.1:7000", local),
            "127.0.0.1:7000".parse().unwrap()
        );
        assert_eq!(contact_destination("sip:1001@phone.example", source), source);
    }
}
