//! Shared by the `api_*` tests: a private database, the API server in-process on a free
//! loopback port, keys, simulated traffic through the binary, and a projector catch-up.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use commands::testing::TestDb;
use commands::{CommandContext, CommandHandler, EventStore, StreamRef};
use domain::apikey::Role;
use domain::call::{Call, CallCommand, CallInitiated, Direction, Party};
use futures::{SinkExt, StreamExt};
use gateway::api::client::HttpClient;
use gateway::api::key_cache::KeyCache;
use gateway::api::{self, ApiConfig};
use serde_json::Value;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

pub const BIN: &str = env!("CARGO_BIN_EXE_ledgerline");

pub struct Env {
    pub db: TestDb,
    pub store: EventStore,
    pub addr: SocketAddr,
    /// The server's memory of API keys.
    pub keys: Arc<KeyCache>,
    stop: watch::Sender<bool>,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

pub async fn start() -> Env {
    start_with(ApiConfig::default()).await
}

pub async fn start_with(mut config: ApiConfig) -> Env {
    let db = TestDb::new().await.expect("test database");
    let store = EventStore::new(db.pool.clone());
    config.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    let (stop, rx) = watch::channel(false);
    let server = api::start(store.clone(), config, rx).await.expect("start the API");
    Env {
        db,
        store,
        addr: server.local_addr,
        keys: server.keys,
        stop,
    }
}

impl Env {
    pub fn client(&self) -> HttpClient {
        HttpClient::new(self.addr)
    }

    pub async fn key(&self, tenant: Uuid, role: Role) -> String {
        let handler = CommandHandler::new(self.store.clone());
        let ctx = CommandContext::new(Uuid::new_v4(), "test", "test", Utc::now());
        api::auth::create_key(&handler, &ctx, tenant, role, "test")
            .await
            .map_err(|e| e.message)
            .expect("create a key")
            .key
    }

    /// `ledgerline ARGS` on this database; its stdout, after it succeeded.
    pub fn ledgerline(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(args)
            .env("DATABASE_URL", &self.db.url)
            .env("LEDGERLINE_LOG", "warn")
            .output()
            .expect("run ledgerline");
        assert!(
            out.status.success(),
            "ledgerline {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Simulated traffic through the real deciders, then every projection caught up.
    pub fn simulate(&self, tenants: u32, calls: u32, seed: u64) {
        self.ledgerline(&[
            "simulate",
            "--tenants",
            &tenants.to_string(),
            "--calls",
            &calls.to_string(),
            "--seed",
            &seed.to_string(),
        ]);
        self.catch_up();
    }

    pub fn catch_up(&self) {
        self.ledgerline(&["projector", "--once"]);
    }

    /// Tenant ids by name.
    pub async fn tenants(&self) -> Vec<Uuid> {
        sqlx::query_scalar("SELECT tenant_id FROM rm_tenants ORDER BY name")
            .fetch_all(&self.db.pool)
            .await
            .unwrap()
    }

    pub async fn head(&self) -> i64 {
        sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM events")
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }
}

pub async fn gql(client: &mut HttpClient, key: &str, query: &str, variables: Value) -> (u16, Value) {
    let r = client.graphql(key, query, variables).await.expect("http");
    (r.status, r.json())
}

/// The id of the key `key` (its `me.keyId`).
pub async fn key_id_of(client: &mut HttpClient, key: &str) -> String {
    let (_, me) = gql(client, key, "{ me { keyId } }", serde_json::json!({})).await;
    me["data"]["me"]["keyId"].as_str().expect("me.keyId").to_string()
}

/// Revokes key `key_id` through `revokeApiKey`, called with `admin`; asserts it succeeded.
pub async fn revoke_key(client: &mut HttpClient, admin: &str, key_id: &str) {
    let (_, body) = gql(
        client,
        admin,
        "mutation($k: UUID!, $id: UUID!) { revokeApiKey(idempotencyKey: $k, keyId: $id, reason: \"test\") { replayed } }",
        serde_json::json!({ "k": Uuid::new_v4(), "id": key_id }),
    )
    .await;
    assert!(body["errors"].is_null(), "{body}");
}

/// The `extensions.code` of the first error, if any.
pub fn code(body: &Value) -> Option<String> {
    body["errors"][0]["extensions"]["code"].as_str().map(str::to_string)
}

/// A whole call (initiated, authorized, leg, ringing, answered, ended) through the call decider.
pub async fn place_call(store: &EventStore, tenant: Uuid, caller: &str, callee: &str, at: DateTime<Utc>) -> Uuid {
    let handler = CommandHandler::new(store.clone());
    let call_id = Uuid::new_v4();
    let leg_id = Uuid::new_v4();
    let t = |s: i64| at + TimeDelta::seconds(s);
    let commands = vec![
        CallCommand::Initiate(CallInitiated {
            call_id,
            tenant_id: tenant,
            direction: Direction::Internal,
            caller: caller.into(),
            caller_name: String::new(),
            callee: callee.into(),
            did: None,
            trunk_id: None,
            account_id: None,
            at: t(0),
        }),
        CallCommand::Authorize {
            max_duration_s: None,
            reservation_id: None,
            at: t(0),
        },
        CallCommand::CreateLeg {
            leg_id,
            target: format!("sip:{callee}"),
            trunk_id: None,
            at: t(0),
        },
        CallCommand::Ring { leg_id, at: t(1) },
        CallCommand::Answer { leg_id, at: t(3) },
        CallCommand::End {
            hangup_by: Party::Caller,
            sip_status: 200,
            reason: None,
            at: t(30),
            media: vec![],
        },
    ];
    for command in commands {
        let ctx = CommandContext::new(Uuid::new_v4(), "test", "test", at);
        handler
            .execute::<Call, _>(&ctx, StreamRef::of::<Call>(tenant, &call_id), |s| {
                domain::call::decide(&command, s)
            })
            .await
            .expect("call command");
    }
    call_id
}

/// Role keys for a tenant.
pub async fn keys(env: &Env, tenant: Uuid) -> Vec<(Role, String)> {
    let mut out = Vec::new();
    for role in Role::ALL {
        out.push((role, env.key(tenant, role).await));
    }
    out
}

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A graphql-ws (`graphql-transport-ws`) connection to `/graphql/ws`, not yet initialised.
pub async fn ws_connect(addr: SocketAddr) -> Ws {
    let mut request = format!("ws://{addr}/graphql/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// The next protocol message (pings are answered), or `None` once the server closed.
pub async fn ws_next(ws: &mut Ws) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(30), ws.next())
            .await
            .expect("a message within 30 s")?;
        match msg {
            Ok(Message::Text(text)) => {
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["type"] == "ping" {
                    ws.send(Message::text(serde_json::json!({"type": "pong"}).to_string()))
                        .await
                        .unwrap();
                    continue;
                }
                return Some(v);
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Reads until the server closes: the close frame's code (`None`: closed without a frame).
/// Data messages before it are skipped; pings are answered.
pub async fn ws_close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(30), ws.next())
            .await
            .expect("the server closes within 30 s")?;
        match msg {
            Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
            Ok(Message::Text(text)) if text.contains("\"ping\"") => {
                ws.send(Message::text(serde_json::json!({"type": "pong"}).to_string()))
                    .await
                    .unwrap();
            }
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

pub async fn ws_send(ws: &mut Ws, message: Value) {
    ws.send(Message::text(message.to_string())).await.unwrap();
}
