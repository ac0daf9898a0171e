//! Read model `directory`: tenants, their extensions and the extensions' registered
//! devices, as the CLI, the SIP registrar and the live views look them up.

use chrono::{DateTime, Utc};
use commands::store::RecordedEvent;
use domain::extension::ExtensionEvent;
use domain::registration::RegistrationEvent;
use domain::routing::{RoutingEvent, TrunkTransport};
use domain::tenant::TenantEvent;
use domain::DomainEvent;
use sqlx::PgConnection;
use std::collections::HashMap;
use uuid::Uuid;

use crate::runner::{Projection, ProjectionError};

pub struct Directory;

impl Projection for Directory {
    fn name(&self) -> &'static str {
        "directory"
    }

    fn version(&self) -> i32 {
        // 2: registered devices (`rm_registrations`) joined the directory.
        // 3: trunks, outbound routes and DIDs (`rm_trunks`, `rm_routes`, `rm_dids`).
        3
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "rm_tenants",
            "rm_extensions",
            "rm_registrations",
            "rm_trunks",
            "rm_routes",
            "rm_dids",
        ]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        // Registration events (one per REGISTER that creates or changes a binding) are the
        // bulk of this projection's input under load: a run of them is folded to the last
        // state per device and written in two statements, before any other event is applied.
        let mut registrations = RegistrationRun::default();
        for event in events {
            if RegistrationEvent::event_types().contains(&event.event_type.as_str()) {
                let decoded: RegistrationEvent = event
                    .decode()
                    .map_err(|e| ProjectionError::Decode(event.event_id, e.to_string()))?;
                registrations.push(event.tenant_id, decoded);
                continue;
            }
            registrations.flush(conn).await?;
            if TenantEvent::event_types().contains(&event.event_type.as_str()) {
                let decoded: TenantEvent = event
                    .decode()
                    .map_err(|e| ProjectionError::Decode(event.event_id, e.to_string()))?;
                apply_tenant(conn, event, &decoded).await?;
            } else if ExtensionEvent::event_types().contains(&event.event_type.as_str()) {
                let decoded: ExtensionEvent = event
                    .decode()
                    .map_err(|e| ProjectionError::Decode(event.event_id, e.to_string()))?;
                apply_extension(conn, event, &decoded).await?;
            } else if RoutingEvent::event_types().contains(&event.event_type.as_str()) {
                let decoded: RoutingEvent = event
                    .decode()
                    .map_err(|e| ProjectionError::Decode(event.event_id, e.to_string()))?;
                apply_routing(conn, event, &decoded).await?;
            }
        }
        registrations.flush(conn).await?;
        Ok(())
    }
}

async fn apply_tenant(conn: &mut PgConnection, meta: &RecordedEvent, event: &TenantEvent) -> Result<(), sqlx::Error> {
    let query = match event {
        TenantEvent::TenantCreated(e) => sqlx::query(
            "INSERT INTO rm_tenants (tenant_id, name, sip_domain, max_extensions, max_concurrent_calls, created_at, last_position) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(e.tenant_id)
        .bind(&e.name)
        .bind(&e.sip_domain)
        .bind(e.max_extensions as i32)
        .bind(e.max_concurrent_calls as i32)
        .bind(meta.occurred_at)
        .bind(meta.global_position),
        TenantEvent::TenantRenamed(e) => {
            sqlx::query("UPDATE rm_tenants SET name = $2, last_position = $3 WHERE tenant_id = $1")
                .bind(meta.tenant_id)
                .bind(&e.name)
                .bind(meta.global_position)
        }
        TenantEvent::TenantSuspended(_) => {
            sqlx::query("UPDATE rm_tenants SET suspended = true, last_position = $2 WHERE tenant_id = $1")
                .bind(meta.tenant_id)
                .bind(meta.global_position)
        }
        TenantEvent::TenantResumed(_) => {
            sqlx::query("UPDATE rm_tenants SET suspended = false, last_position = $2 WHERE tenant_id = $1")
                .bind(meta.tenant_id)
                .bind(meta.global_position)
        }
        TenantEvent::ExtensionNumberClaimed(_) => sqlx::query(
            "UPDATE rm_tenants SET extension_count = extension_count + 1, last_position = $2 WHERE tenant_id = $1",
        )
        .bind(meta.tenant_id)
        .bind(meta.global_position),
    };
    query.execute(conn).await.map(drop)
}

async fn apply_extension(
    conn: &mut PgConnection,
    meta: &RecordedEvent,
    event: &ExtensionEvent,
) -> Result<(), sqlx::Error> {
    let extension_id = meta
        .stream_id
        .strip_prefix("extension-")
        .and_then(|id| id.parse::<uuid::Uuid>().ok())
        .unwrap_or_default();
    let query = match event {
        ExtensionEvent::ExtensionProvisioned(e) => sqlx::query(
            "INSERT INTO rm_extensions (tenant_id, extension_id, number, display_name, realm, ha1_md5, ha1_sha256, created_at, last_position) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(e.tenant_id)
        .bind(e.extension_id)
        .bind(&e.number)
        .bind(&e.display_name)
        .bind(&e.realm)
        .bind(&e.ha1_md5)
        .bind(&e.ha1_sha256)
        .bind(meta.occurred_at)
        .bind(meta.global_position),
        ExtensionEvent::ExtensionPasswordChanged(e) => sqlx::query(
            "UPDATE rm_extensions SET ha1_md5 = $3, ha1_sha256 = $4, last_position = $5 WHERE tenant_id = $1 AND extension_id = $2",
        )
        .bind(meta.tenant_id)
        .bind(extension_id)
        .bind(&e.ha1_md5)
        .bind(&e.ha1_sha256)
        .bind(meta.global_position),
        ExtensionEvent::ExtensionDisabled(_) => sqlx::query(
            "UPDATE rm_extensions SET enabled = false, last_position = $3 WHERE tenant_id = $1 AND extension_id = $2",
        )
        .bind(meta.tenant_id)
        .bind(extension_id)
        .bind(meta.global_position),
        ExtensionEvent::ExtensionEnabled(_) => sqlx::query(
            "UPDATE rm_extensions SET enabled = true, last_position = $3 WHERE tenant_id = $1 AND extension_id = $2",
        )
        .bind(meta.tenant_id)
        .bind(extension_id)
        .bind(meta.global_position),
    };
    query.execute(conn).await.map(drop)
}

/// A device's row in `rm_registrations`: present with these fields, or absent.
type DeviceKey = (Uuid, Uuid, String);

/// Consecutive registration events, folded to the last state of each device (in the order
/// devices first appeared, so the statements are the same on every replay). Only the last
/// event of a device decides its row, exactly as applying them one by one would.
#[derive(Default)]
struct RegistrationRun {
    order: Vec<DeviceKey>,
    last: HashMap<DeviceKey, Option<(String, DateTime<Utc>)>>,
}

impl RegistrationRun {
    fn push(&mut self, tenant_id: Uuid, event: RegistrationEvent) {
        let (key, row) = match event {
            RegistrationEvent::DeviceRegistered(e) => (
                (tenant_id, e.extension_id, e.contact),
                Some((e.user_agent, e.expires_at)),
            ),
            RegistrationEvent::DeviceRegistrationChanged(e) => (
                (tenant_id, e.extension_id, e.contact),
                Some((e.user_agent, e.expires_at)),
            ),
            RegistrationEvent::DeviceUnregistered(e) => ((tenant_id, e.extension_id, e.contact), None),
        };
        if self.last.insert(key.clone(), row).is_none() {
            self.order.push(key);
        }
    }

    async fn flush(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.order.is_empty() {
            return Ok(());
        }
        let (mut up, mut gone) = (Columns::default(), Columns::default());
        for key in self.order.drain(..) {
            let row = self.last.remove(&key).flatten();
            let columns = if row.is_some() { &mut up } else { &mut gone };
            columns.tenants.push(key.0);
            columns.extensions.push(key.1);
            columns.contacts.push(key.2);
            if let Some((user_agent, expires_at)) = row {
                columns.user_agents.push(user_agent);
                columns.expiries.push(expires_at);
            }
        }
        if !gone.tenants.is_empty() {
            sqlx::query(
                "DELETE FROM rm_registrations r USING unnest($1::uuid[], $2::uuid[], $3::text[]) AS g(t, e, c) \
                 WHERE r.tenant_id = g.t AND r.extension_id = g.e AND r.contact = g.c",
            )
            .bind(&gone.tenants)
            .bind(&gone.extensions)
            .bind(&gone.contacts)
            .execute(&mut *conn)
            .await?;
        }
        if !up.tenants.is_empty() {
            sqlx::query(
                "INSERT INTO rm_registrations (tenant_id, extension_id, contact, user_agent, expires_at) \
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[]) \
                 ON CONFLICT (tenant_id, extension_id, contact) \
                 DO UPDATE SET user_agent = EXCLUDED.user_agent, expires_at = EXCLUDED.expires_at",
            )
            .bind(&up.tenants)
            .bind(&up.extensions)
            .bind(&up.contacts)
            .bind(&up.user_agents)
            .bind(&up.expiries)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Columns {
    tenants: Vec<Uuid>,
    extensions: Vec<Uuid>,
    contacts: Vec<String>,
    user_agents: Vec<String>,
    expiries: Vec<DateTime<Utc>>,
}

async fn apply_routing(conn: &mut PgConnection, meta: &RecordedEvent, event: &RoutingEvent) -> Result<(), sqlx::Error> {
    let tenant = meta.tenant_id;
    let query = match event {
        RoutingEvent::TrunkAdded(e) => sqlx::query(
            "INSERT INTO rm_trunks (tenant_id, trunk_id, name, host, port, transport, allowed_ips, username, password, enabled) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, true)",
        )
        .bind(tenant)
        .bind(e.trunk_id)
        .bind(&e.name)
        .bind(&e.host)
        .bind(i32::from(e.port))
        .bind(match e.transport {
            TrunkTransport::Udp => "udp",
            TrunkTransport::Tcp => "tcp",
        })
        .bind(&e.allowed_ips)
        .bind(&e.username)
        .bind(&e.password),
        RoutingEvent::TrunkRemoved(e) => sqlx::query("DELETE FROM rm_trunks WHERE tenant_id = $1 AND trunk_id = $2")
            .bind(tenant)
            .bind(e.trunk_id),
        RoutingEvent::RouteAdded(e) => sqlx::query(
            "INSERT INTO rm_routes (tenant_id, route_id, prefix, strip_digits, prepend, priority, trunk_ids) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(tenant)
        .bind(e.route_id)
        .bind(&e.prefix)
        .bind(i32::from(e.strip_digits))
        .bind(&e.prepend)
        .bind(e.priority)
        .bind(&e.trunk_ids),
        RoutingEvent::RouteRemoved(e) => sqlx::query("DELETE FROM rm_routes WHERE tenant_id = $1 AND route_id = $2")
            .bind(tenant)
            .bind(e.route_id),
        RoutingEvent::DidAdded(e) => {
            sqlx::query("INSERT INTO rm_dids (tenant_id, did, extension_number) VALUES ($1, $2, $3)")
                .bind(tenant)
                .bind(&e.did)
                .bind(&e.extension_number)
        }
        RoutingEvent::DidRemoved(e) => sqlx::query("DELETE FROM rm_dids WHERE tenant_id = $1 AND did = $2")
            .bind(tenant)
            .bind(&e.did),
    };
    query.execute(conn).await.map(drop)
}

/// Every row of the directory in a fixed order, as text: for comparing a live read
/// model with a rebuild.
pub async fn dump(pool: &sqlx::PgPool) -> Result<Vec<String>, sqlx::Error> {
    let mut rows: Vec<String> = sqlx::query_scalar("SELECT t::text FROM rm_tenants t ORDER BY tenant_id")
        .fetch_all(pool)
        .await?;
    rows.extend(
        sqlx::query_scalar::<_, String>("SELECT e::text FROM rm_extensions e ORDER BY tenant_id, extension_id")
            .fetch_all(pool)
            .await?,
    );
    for sql in [
        "SELECT t::text FROM rm_trunks t ORDER BY tenant_id, trunk_id",
        "SELECT r::text FROM rm_routes r ORDER BY tenant_id, route_id",
        "SELECT d::text FROM rm_dids d ORDER BY tenant_id, did",
        "SELECT r::text FROM rm_registrations r ORDER BY tenant_id, extension_id, contact",
    ] {
        rows.extend(sqlx::query_scalar::<_, String>(sql).fetch_all(pool).await?);
    }
    Ok(rows)
}
