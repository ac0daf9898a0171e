//! A key of tenant A walks every query field, list, export and subscription over data that
//! belongs to tenant B, and finds nothing of B; writes naming B's things (trunks, webhooks,
//! rooms, participants, calls) find nothing; each role is refused what it must not do, and a
//! refused request changes nothing.

#![allow(clippy::disallowed_methods)] // Tests stamp their commands with the clock.

mod api_support;

use std::collections::BTreeSet;

use api_support::{code, gql, keys, place_call, start, ws_connect, ws_next, ws_send, Ws};
use domain::apikey::Role;
use serde_json::{json, Value};
use uuid::Uuid;

/// Every query field, with a query that selects (nearly) all of its data.
fn walk() -> Vec<(&'static str, &'static str)> {
    vec![
        ("me", "{ me { keyId tenantId role tenantName } }"),
        ("tenants", "{ tenants { tenantId name sipDomain } }"),
        ("tenant", "{ tenant { tenantId name sipDomain extensionCount } }"),
        ("extensions", "{ extensions(first: 500) { edges { cursor node { extensionId number displayName } } } }"),
        ("registrations", "{ registrations { extensionId contact userAgent } }"),
        ("liveCalls", "{ liveCalls { callId caller callee state } }"),
        ("cdrs", "{ cdrs(first: 500) { edges { node { callId caller callee accountId charge did trunkId } } pageInfo { hasNextPage } } }"),
        ("charges", "{ charges(first: 500) { edges { node { callId legId accountId amount destination explanation tariffId } } } }"),
        ("balances", "{ balances { accountId balance payments settledCharges available } }"),
        ("invoices", "{ invoices { id accountId period billedTotal document lines { destination amount } } }"),
        ("hourlyReport", r#"{ hourlyReport(from: "2000-01-01T00:00:00Z", to: "2100-01-01T00:00:00Z", first: 500) { hour calls cost trunkId } }"#),
        ("dailyReport", r#"{ dailyReport(from: "2000-01-01", to: "2100-01-01", first: 500) { day calls cost trunkId } }"#),
        ("destinationReport", r#"{ destinationReport(from: "2000-01-01", to: "2100-01-01", first: 500) { day destination calls cost } }"#),
        ("events", "{ events(first: 500) { edges { node { eventId streamId eventType payload metadata } } } }"),
        ("projectionStatus", "{ projectionStatus { projection position lag } }"),
        ("trunks", "{ trunks(first: 500) { trunkId name host port transport allowedIps username hasOutboundCredentials enabled } }"),
        ("routes", "{ routes(first: 500) { routeId prefix stripDigits prepend priority trunkIds } }"),
        ("dids", "{ dids(first: 500) { did extensionNumber } }"),
        ("conferenceRooms", "{ conferenceRooms(first: 500) { roomId name ownerAccountId accessNumber moderated maxParticipants record createdAt sessionId sessionStartedAt sessions } }"),
        ("liveConferenceRooms", "{ liveConferenceRooms(first: 500) { roomId name ownerAccountId moderated sessionId sessionNode sessionStartedAt participantCount hosts muted talking participants { legId callId role muted talking joinedAt } } }"),
        ("webhooks", "{ webhooks { webhookId url eventTypes enabled disabledReason secretFingerprint createdAt updatedAt } }"),
        ("webhookDeliveries", "{ webhookDeliveries(first: 500) { items { webhookId eventId eventPosition eventType attempts status lastHttpStatus lastError } endCursor hasNextPage } }"),
    ]
}

/// Everything that names tenant B: ids of its rows and its names.
async fn fingerprints(pool: &sqlx::PgPool, tenant: Uuid) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    out.insert(tenant.to_string());
    for sql in [
        "SELECT call_id::text FROM rm_cdrs WHERE tenant_id = $1",
        "SELECT account_id::text FROM rm_balances WHERE tenant_id = $1",
        "SELECT extension_id::text FROM rm_extensions WHERE tenant_id = $1",
        "SELECT sip_domain FROM rm_tenants WHERE tenant_id = $1",
        "SELECT name FROM rm_tenants WHERE tenant_id = $1",
        "SELECT event_id::text FROM events WHERE tenant_id = $1",
        "SELECT DISTINCT stream_id FROM events WHERE tenant_id = $1",
        "SELECT trunk_id::text FROM rm_trunks WHERE tenant_id = $1",
        "SELECT name FROM rm_trunks WHERE tenant_id = $1",
        "SELECT host FROM rm_trunks WHERE tenant_id = $1",
        "SELECT route_id::text FROM rm_routes WHERE tenant_id = $1",
        "SELECT did FROM rm_dids WHERE tenant_id = $1",
        "SELECT webhook_id::text FROM rm_webhooks WHERE tenant_id = $1",
        "SELECT room_id::text FROM rm_conference_rooms WHERE tenant_id = $1",
        "SELECT DISTINCT session_id::text FROM rm_conference_legs WHERE tenant_id = $1",
        "SELECT leg_id::text FROM rm_conference_legs WHERE tenant_id = $1",
        "SELECT call_id::text FROM rm_conference_legs WHERE tenant_id = $1",
        "SELECT url FROM rm_webhooks WHERE tenant_id = $1",
        "SELECT secret_fingerprint FROM rm_webhooks WHERE tenant_id = $1",
        "SELECT secret FROM webhook_secrets WHERE tenant_id = $1",
    ] {
        let rows: Vec<String> = sqlx::query_scalar(sql).bind(tenant).fetch_all(pool).await.unwrap();
        out.extend(rows);
    }
    out
}

fn assert_clean(what: &str, text: &str, of_b: &BTreeSet<String>) {
    for f in of_b {
        assert!(
            !text.contains(f.as_str()),
            "{what} shows {f:?} of tenant B: {}",
            &text[..text.len().min(400)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_a_never_sees_tenant_b_and_roles_are_enforced() {
    let env = start().await;
    // Simulated traffic with conference sessions, and each tenant's room in session now.
    env.ledgerline(&[
        "simulate",
        "--tenants",
        "2",
        "--calls",
        "240",
        "--seed",
        "11",
        "--conferences",
        "4",
    ]);
    env.catch_up();
    let tenants = env.tenants().await;
    let (a, b) = (tenants[0], tenants[1]);
    // A's live-room feed is open while both rooms start: its first update is the state now.
    let mut rooms_ws = subscribe_to(
        env.addr,
        &env.key(a, Role::Developer).await,
        "subscription { liveConferenceRooms { roomId sessionId participants { legId callId role } } }",
    )
    .await;
    let initial = next_message(&mut rooms_ws).await;
    assert_eq!(initial["type"], "next", "{initial}");
    let b_leg = open_room(&env, b).await;
    let a_leg = open_room(&env, a).await;
    env.catch_up();
    // Trunks, routes and DIDs for both tenants, through the API.
    let mut http = env.client();
    // Webhooks for both (a developer may register); the routing events after them are
    // enqueued for delivery.
    let b_hook = register_webhook(&mut http, &env.key(b, Role::Developer).await, "b").await;
    let a_hook = register_webhook(&mut http, &env.key(a, Role::Developer).await, "a").await;
    let b_trunk = seed_routing(&mut http, &env.key(b, Role::TenantAdmin).await, "b").await;
    seed_routing(&mut http, &env.key(a, Role::TenantAdmin).await, "a").await;
    enqueue_deliveries(&env).await;
    env.catch_up();
    let of_b = fingerprints(&env.db.pool, b).await;
    for f in [
        b_leg.to_string(),
        b_trunk.to_string(),
        "trunk-b".into(),
        "+4930999000".into(),
        b_hook.to_string(),
        secret("b"),
    ] {
        assert!(of_b.contains(&f), "B's routing is in the read models: {f}");
    }
    assert!(of_b.len() > 50, "tenant B has data to leak");
    let a_keys = keys(&env, a).await;
    let key = |role: Role| a_keys.iter().find(|(r, _)| *r == role).map(|(_, k)| k.clone()).unwrap();
    let admin = key(Role::TenantAdmin);

    // The walk covers every query field the schema has.
    let (_, intro) = gql(
        &mut http,
        &admin,
        "{ __schema { queryType { fields { name } } } }",
        json!({}),
    )
    .await;
    let fields: BTreeSet<String> = intro["data"]["__schema"]["queryType"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    let walked: BTreeSet<String> = walk().iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(fields, walked, "a query field is missing from the isolation walk");

    // Every role of A, every field: nothing of B; A's own data is there.
    let a_tenant = a.to_string();
    let mut saw_own = BTreeSet::new();
    for (role, k) in &a_keys {
        for (name, query) in walk() {
            let (status, body) = gql(&mut http, k, query, json!({})).await;
            assert_eq!(status, 200, "{role:?} {name}: {body}");
            let text = body.to_string();
            if *role != Role::SystemAdmin || name != "tenants" {
                assert_clean(&format!("{role:?} {name}"), &text, &of_b);
            }
            // The read models never show a trunk's password (`events` shows the tenant's own log,
            // where `TrunkAdded` carries it).
            if name != "events" {
                assert!(!text.contains(TRUNK_PASSWORD), "{role:?} {name} shows a trunk password");
            }
            assert!(!text.contains(&secret("a")), "{role:?} {name} shows a webhook secret");
            let own_routing =
                text.contains("trunk-a") || text.contains("+4930111000") || text.contains("\"stripDigits\":2");
            let own_hooks = text.contains(&a_hook.to_string()) || text.contains(&a_leg.to_string());
            let own_rooms = name == "conferenceRooms" && text.contains("\"sessions\":");
            if body["errors"].is_null() && text.contains(&a_tenant)
                || text.contains("\"callId\"")
                || own_routing
                || own_hooks
                || own_rooms
            {
                saw_own.insert(name);
            }
            let allowed = match name {
                "tenants" => *role == Role::SystemAdmin,
                "events" | "projectionStatus" => matches!(role, Role::SystemAdmin | Role::TenantAdmin | Role::Auditor),
                _ => true,
            };
            if allowed {
                assert!(body["errors"].is_null(), "{role:?} {name}: {body}");
            } else {
                assert_eq!(code(&body).as_deref(), Some("FORBIDDEN"), "{role:?} {name}: {body}");
            }
        }
    }
    for name in [
        "me",
        "cdrs",
        "charges",
        "trunks",
        "routes",
        "dids",
        "conferenceRooms",
        "liveConferenceRooms",
        "webhooks",
        "webhookDeliveries",
    ] {
        assert!(saw_own.contains(name), "A's own {name} were found");
    }
    // A's live room shows its host talking (the flag the media node wrote), B's does not leak in.
    let (_, live) = gql(
        &mut http,
        &admin,
        "{ liveConferenceRooms { talking participants { legId talking } } }",
        json!({}),
    )
    .await;
    let rooms = live["data"]["liveConferenceRooms"].as_array().unwrap();
    assert_eq!(rooms.len(), 1, "{live}");
    assert_eq!(rooms[0]["talking"], 1, "{live}");
    assert_eq!(rooms[0]["participants"][0]["legId"], a_leg.to_string(), "{live}");
    assert_eq!(rooms[0]["participants"][0]["talking"], true, "{live}");

    // Asking for B's things by id finds nothing.
    let b_account: Uuid = sqlx::query_scalar("SELECT account_id FROM rm_balances WHERE tenant_id = $1 LIMIT 1")
        .bind(b)
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    let b_period: String =
        sqlx::query_scalar("SELECT period FROM rm_invoices WHERE tenant_id = $1 AND account_id = $2 LIMIT 1")
            .bind(b)
            .bind(b_account)
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    for query in [
        format!(r#"{{ balances(accountId: "{b_account}") {{ accountId }} }}"#),
        format!(r#"{{ invoices(accountId: "{b_account}") {{ id }} }}"#),
        format!(r#"{{ charges(filter: {{ accountId: "{b_account}" }}) {{ edges {{ node {{ callId }} }} }} }}"#),
        format!(r#"{{ cdrs(filter: {{ accountId: "{b_account}" }}) {{ edges {{ node {{ callId }} }} }} }}"#),
        format!(r#"{{ events(filter: {{ streamId: "account-{b_account}" }}) {{ edges {{ node {{ eventId }} }} }} }}"#),
        format!(r#"{{ webhookDeliveries(webhookId: "{b_hook}") {{ items {{ eventId }} }} }}"#),
    ] {
        let (_, body) = gql(&mut http, &admin, &query, json!({})).await;
        assert!(body["errors"].is_null(), "{query}: {body}");
        assert_clean(&query, &body.to_string(), &of_b);
        assert!(!body.to_string().contains(&b_account.to_string()));
    }

    // Exports: nothing of B in A's files; B's invoice is not found.
    for path in [
        "/api/v1/cdrs.csv".to_string(),
        "/api/v1/charges.csv".to_string(),
        format!("/api/v1/charges.csv?account_id={b_account}"),
        "/api/v1/events.ndjson".to_string(),
    ] {
        let r = http.get(&admin, &path).await.unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_clean(&path, &r.text(), &of_b);
    }
    let r = http.get(&admin, "/api/v1/charges.csv").await.unwrap();
    assert!(r.text().lines().count() > 5, "A's charges are exported");
    for suffix in ["", ".csv"] {
        let r = http
            .get(&admin, &format!("/api/v1/invoices/{b_account}_{b_period}{suffix}"))
            .await
            .unwrap();
        assert_eq!(r.status, 404, "{}", r.text());
        assert_eq!(code(&r.json()).as_deref().unwrap_or("NOT_FOUND"), "NOT_FOUND");
    }

    // Writes against B's things with A's keys: not found, and nothing is written.
    let b_extension: Uuid = sqlx::query_scalar("SELECT extension_id FROM rm_extensions WHERE tenant_id = $1 LIMIT 1")
        .bind(b)
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    // The simulator's room of B (`simulate_conferences::room_id`), in session with `b_leg`.
    let b_room = Uuid::new_v5(&b, b"room");
    let b_cdr_call: Uuid = sqlx::query_scalar("SELECT call_id FROM rm_cdrs WHERE tenant_id = $1 LIMIT 1")
        .bind(b)
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    let head = env.head().await;
    let (_, body) = gql(
        &mut http,
        &key(Role::Finance),
        "mutation($a: UUID!, $k: UUID!) { topUp(idempotencyKey: $k, accountId: $a, amount: \"5.00\") { id } }",
        json!({ "a": b_account, "k": Uuid::new_v4() }),
    )
    .await;
    assert_eq!(code(&body).as_deref(), Some("NOT_FOUND"), "{body}");
    let (_, body) = gql(
        &mut http,
        &admin,
        "mutation($e: UUID!, $k: UUID!) { disableExtension(idempotencyKey: $k, extensionId: $e) { id } }",
        json!({ "e": b_extension, "k": Uuid::new_v4() }),
    )
    .await;
    assert_eq!(code(&body).as_deref(), Some("NOT_FOUND"), "{body}");
    let (_, body) = gql(
        &mut http,
        &admin,
        "mutation($p: String!, $k: UUID!, $a: UUID!) { closePeriod(idempotencyKey: $k, accountId: $a, period: $p, taxRatePct: \"19\", taxMode: EXCLUSIVE) { id } }",
        json!({ "a": b_account, "p": b_period, "k": Uuid::new_v4() }),
    )
    .await;
    assert_eq!(code(&body).as_deref(), Some("NOT_FOUND"), "{body}");
    for (query, vars) in [
        (
            "mutation($t: UUID!, $k: UUID!) { removeTrunk(idempotencyKey: $k, trunkId: $t) { id } }",
            json!({ "t": b_trunk }),
        ),
        (
            "mutation($d: String!, $k: UUID!) { removeDid(idempotencyKey: $k, did: $d) { id } }",
            json!({ "d": "+4930999000" }),
        ),
        (
            "mutation($t: UUID!, $k: UUID!) { addRoute(idempotencyKey: $k, prefix: \"0\", trunkIds: [$t]) { id } }",
            json!({ "t": b_trunk }),
        ),
        (
            "mutation($w: UUID!, $k: UUID!) { removeWebhook(idempotencyKey: $k, webhookId: $w) { id } }",
            json!({ "w": b_hook }),
        ),
        (
            "mutation($w: UUID!, $k: UUID!) { updateWebhook(idempotencyKey: $k, webhookId: $w, url: \"https://x.example/\") { id } }",
            json!({ "w": b_hook }),
        ),
        (
            "mutation($w: UUID!, $k: UUID!) { disableWebhook(idempotencyKey: $k, webhookId: $w) { id } }",
            json!({ "w": b_hook }),
        ),
        (
            "mutation($w: UUID!, $k: UUID!) { enableWebhook(idempotencyKey: $k, webhookId: $w) { id } }",
            json!({ "w": b_hook }),
        ),
        (
            "mutation($r: UUID!, $k: UUID!) { updateConferenceRoom(idempotencyKey: $k, roomId: $r, name: \"x\") { id } }",
            json!({ "r": b_room }),
        ),
        (
            "mutation($r: UUID!, $k: UUID!) { removeConferenceRoom(idempotencyKey: $k, roomId: $r) { id } }",
            json!({ "r": b_room }),
        ),
        (
            "mutation($r: UUID!, $l: UUID!, $k: UUID!) { muteParticipant(idempotencyKey: $k, roomId: $r, legId: $l) { id } }",
            json!({ "r": b_room, "l": b_leg }),
        ),
        (
            "mutation($r: UUID!, $l: UUID!, $k: UUID!) { unmuteParticipant(idempotencyKey: $k, roomId: $r, legId: $l) { id } }",
            json!({ "r": b_room, "l": b_leg }),
        ),
        (
            "mutation($r: UUID!, $l: UUID!, $k: UUID!) { kickParticipant(idempotencyKey: $k, roomId: $r, legId: $l) { id } }",
            json!({ "r": b_room, "l": b_leg }),
        ),
        (
            "mutation($c: UUID!, $k: UUID!) { hangupCall(idempotencyKey: $k, callId: $c) { id } }",
            json!({ "c": b_cdr_call }),
        ),
    ] {
        let mut vars = vars;
        vars["k"] = json!(Uuid::new_v4());
        let (_, body) = gql(&mut http, &admin, query, vars).await;
        assert_eq!(code(&body).as_deref(), Some("NOT_FOUND"), "{query}: {body}");
    }
    assert_eq!(env.head().await, head, "a refused write wrote nothing");

    // Roles: what each must not do is refused, and changes nothing.
    let a_account: Uuid = sqlx::query_scalar("SELECT account_id FROM rm_balances WHERE tenant_id = $1 LIMIT 1")
        .bind(a)
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    let a_room = Uuid::new_v5(&a, b"room");
    let a_cdr_call: Uuid = sqlx::query_scalar("SELECT call_id FROM rm_cdrs WHERE tenant_id = $1 LIMIT 1")
        .bind(a)
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    let top_up = "mutation($a: UUID!, $k: UUID!) { topUp(idempotencyKey: $k, accountId: $a, amount: \"1.00\") { id } }";
    let provision = "mutation($k: UUID!) { provisionExtension(idempotencyKey: $k, number: \"7777\", password: \"secret-password-1\") { id } }";
    let new_key = "mutation($k: UUID!, $r: String!) { createApiKey(idempotencyKey: $k, role: $r) { key } }";
    let new_tenant =
        "mutation($k: UUID!) { createTenant(idempotencyKey: $k, name: \"X\", sipDomain: \"x.example\") { id } }";
    let refusals: Vec<(Role, &str, Value)> = vec![
        (Role::Auditor, top_up, json!({ "a": a_account })),
        (Role::Auditor, provision, json!({})),
        (Role::Auditor, new_key, json!({ "r": "auditor" })),
        (Role::Developer, top_up, json!({ "a": a_account })),
        (Role::Developer, provision, json!({})),
        (Role::Finance, provision, json!({})),
        (Role::Finance, new_key, json!({ "r": "finance" })),
        (Role::TenantAdmin, new_key, json!({ "r": "system_admin" })),
        (Role::TenantAdmin, new_tenant, json!({})),
        (Role::Finance, new_tenant, json!({})),
        (Role::Developer, ADD_TRUNK, json!({ "n": "x", "h": "sip.example" })),
        (Role::Finance, ADD_TRUNK, json!({ "n": "x", "h": "sip.example" })),
        (Role::Auditor, ADD_TRUNK, json!({ "n": "x", "h": "sip.example" })),
        (
            Role::Finance,
            REGISTER_WEBHOOK,
            json!({ "u": "https://x.example/", "s": secret("x") }),
        ),
        (
            Role::Auditor,
            REGISTER_WEBHOOK,
            json!({ "u": "https://x.example/", "s": secret("x") }),
        ),
        (
            Role::Auditor,
            "mutation($k: UUID!, $w: UUID!) { removeWebhook(idempotencyKey: $k, webhookId: $w) { id } }",
            json!({ "w": a_hook }),
        ),
        (
            Role::Auditor,
            "mutation($k: UUID!, $w: UUID!) { disableWebhook(idempotencyKey: $k, webhookId: $w) { id } }",
            json!({ "w": a_hook }),
        ),
        (Role::Developer, KICK, json!({ "r": a_room, "l": a_leg })),
        (Role::Finance, KICK, json!({ "r": a_room, "l": a_leg })),
        (Role::Auditor, KICK, json!({ "r": a_room, "l": a_leg })),
        (Role::Developer, HANGUP, json!({ "c": a_cdr_call })),
        (Role::Finance, HANGUP, json!({ "c": a_cdr_call })),
        (Role::Auditor, HANGUP, json!({ "c": a_cdr_call })),
    ];
    let head = env.head().await;
    for (role, query, mut vars) in refusals {
        vars["k"] = json!(Uuid::new_v4());
        let (_, body) = gql(&mut http, &key(role), query, vars).await;
        assert_eq!(code(&body).as_deref(), Some("FORBIDDEN"), "{role:?} {query}: {body}");
    }
    for (role, path) in [
        (Role::Developer, "/api/v1/charges.csv"),
        (Role::Developer, "/api/v1/cdrs.csv"),
        (Role::Finance, "/api/v1/events.ndjson"),
        (Role::Developer, "/api/v1/events.ndjson"),
    ] {
        let r = http.get(&key(role), path).await.unwrap();
        assert_eq!(r.status, 403, "{role:?} {path}");
        assert_eq!(code(&r.json()).as_deref(), Some("FORBIDDEN"));
    }
    assert_eq!(env.head().await, head, "refused requests wrote nothing");
    // And what they may do, they can.
    let (_, body) = gql(
        &mut http,
        &key(Role::Finance),
        top_up,
        json!({ "a": a_account, "k": Uuid::new_v4() }),
    )
    .await;
    assert!(body["errors"].is_null(), "{body}");

    // Subscriptions: A's feed carries A's events only, and a role without the right is refused.
    let mut ws = subscribe(env.addr, &key(Role::Developer)).await;
    // B's call is committed first, then A's: if B leaked, it would arrive before A's.
    let now = chrono::Utc::now();
    let b_call = place_call(&env.store, b, "1001", "1002", now).await;
    let a_call = place_call(&env.store, a, "1001", "1002", now).await;
    let mut seen = 0;
    while seen < 6 {
        let payload = next_payload(&mut ws).await;
        let text = payload.to_string();
        assert!(!text.contains(&b_call.to_string()), "B's call reached A's feed: {text}");
        assert_clean("subscription", &text, &of_b);
        if text.contains(&a_call.to_string()) {
            seen += 1;
        }
    }
    // A's live rooms: an update per committed event of A's room (session started, host
    // joined), each once the projection shows it; B's room, started first, never shows.
    let mut updates = Vec::new();
    for _ in 0..2 {
        let msg = next_message(&mut rooms_ws).await;
        assert_eq!(msg["type"], "next", "{msg}");
        let text = msg["payload"]["data"]["liveConferenceRooms"].to_string();
        assert!(!text.contains(&b_leg.to_string()), "B's room reached A's feed: {text}");
        assert_clean("liveConferenceRooms subscription", &text, &of_b);
        updates.push(text);
    }
    assert!(
        updates.last().unwrap().contains(&a_leg.to_string()),
        "the update after the join shows A's host: {updates:?}"
    );
    let mut ws = subscribe(env.addr, &key(Role::Finance)).await;
    let msg = next_message(&mut ws).await;
    // graphql-ws answers a refused subscription with its errors (as `next` or `error`).
    let errors = if msg["type"] == "error" {
        &msg["payload"]
    } else {
        &msg["payload"]["errors"]
    };
    assert_eq!(errors[0]["extensions"]["code"], "FORBIDDEN", "{msg}");
    assert!(msg["payload"]["data"].is_null(), "{msg}");
}

const KICK: &str =
    "mutation($k: UUID!, $r: UUID!, $l: UUID!) { kickParticipant(idempotencyKey: $k, roomId: $r, legId: $l) { id } }";
const HANGUP: &str = "mutation($k: UUID!, $c: UUID!) { hangupCall(idempotencyKey: $k, callId: $c) { id } }";
const TRUNK_PASSWORD: &str = "trunk-secret-not-for-eyes";
const ADD_TRUNK: &str = "mutation($k: UUID!, $n: String!, $h: String!) { addTrunk(idempotencyKey: $k, name: $n, host: $h, allowedIps: [\"192.0.2.7\"], username: \"acct\", password: \"trunk-secret-not-for-eyes\") { id replayed } }";

/// A trunk `trunk-{tag}` with outbound credentials, a route over it and a DID, through the
/// API with an admin key of the tenant; the trunk's id. A retried key is a replay.
async fn seed_routing(http: &mut gateway::api::client::HttpClient, admin: &str, tag: &str) -> Uuid {
    let k = Uuid::new_v4();
    let vars = json!({ "k": k, "n": format!("trunk-{tag}"), "h": format!("carrier-{tag}.example") });
    let (_, body) = gql(http, admin, ADD_TRUNK, vars.clone()).await;
    assert!(body["errors"].is_null(), "{body}");
    let trunk: Uuid = body["data"]["addTrunk"]["id"].as_str().unwrap().parse().unwrap();
    let (_, again) = gql(http, admin, ADD_TRUNK, vars).await;
    assert_eq!(again["data"]["addTrunk"]["replayed"], true, "{again}");
    assert_eq!(again["data"]["addTrunk"]["id"], body["data"]["addTrunk"]["id"]);
    let (_, body) = gql(
        http,
        admin,
        "mutation($k: UUID!, $t: UUID!) { addRoute(idempotencyKey: $k, prefix: \"00\", trunkIds: [$t], stripDigits: 2, prepend: \"+\") { id } }",
        json!({ "k": Uuid::new_v4(), "t": trunk }),
    )
    .await;
    assert!(body["errors"].is_null(), "{body}");
    let did = if tag == "a" { "+4930111000" } else { "+4930999000" };
    let (_, body) = gql(
        http,
        admin,
        "mutation($k: UUID!, $d: String!) { addDid(idempotencyKey: $k, did: $d, extensionNumber: \"1001\") { id } }",
        json!({ "k": Uuid::new_v4(), "d": did }),
    )
    .await;
    assert!(body["errors"].is_null(), "{body}");
    trunk
}

/// Start a session in the tenant's simulated room and let a host in; the host's leg id.
async fn open_room(env: &api_support::Env, tenant: Uuid) -> Uuid {
    use commands::{CommandContext, CommandHandler, StreamRef};
    use domain::conference::{self as room, ConferenceCommand, ConferenceRoom};
    let handler = CommandHandler::new(env.store.clone());
    // The simulator's room of the tenant (`simulate_conferences::room_id`).
    let room_id = Uuid::new_v5(&tenant, b"room");
    let leg = Uuid::new_v4();
    let session_id = Uuid::new_v4();
    let now = chrono::Utc::now();
    for command in [
        ConferenceCommand::StartSession {
            session_id,
            node_id: "media-test".into(),
            at: now,
        },
        ConferenceCommand::Join {
            leg_id: leg,
            call_id: Uuid::new_v4(),
            role: room::Role::Host,
            at: now,
        },
    ] {
        handler
            .execute::<ConferenceRoom, _>(
                &CommandContext::new(Uuid::new_v4(), "test", "test", now),
                StreamRef::of::<ConferenceRoom>(tenant, &room_id),
                |s| room::decide(&command, s),
            )
            .await
            .unwrap();
    }
    // The media node running the session flags the host as talking.
    sqlx::query(
        "INSERT INTO live_conference_talking (tenant_id, room_id, session_id, leg_id, node_id, since)
         VALUES ($1, $2, $3, $4, 'media-test', now())",
    )
    .bind(tenant)
    .bind(room_id)
    .bind(session_id)
    .bind(leg)
    .execute(&env.db.pool)
    .await
    .unwrap();
    leg
}

const REGISTER_WEBHOOK: &str = "mutation($k: UUID!, $u: String!, $s: String) { registerWebhook(idempotencyKey: $k, url: $u, eventTypes: [\"*\"], secret: $s) { id replayed generatedSecret } }";

fn secret(tag: &str) -> String {
    format!("whsec_{tag}_isolation_0123456789abcdef")
}

/// A webhook on every event of the key's tenant, with a known secret; its id. A retry is a
/// replay and never answers the secret.
async fn register_webhook(http: &mut gateway::api::client::HttpClient, key: &str, tag: &str) -> Uuid {
    let vars = json!({ "k": Uuid::new_v4(), "u": format!("https://hooks-{tag}.example/in"), "s": secret(tag) });
    let (_, body) = gql(http, key, REGISTER_WEBHOOK, vars.clone()).await;
    assert!(body["errors"].is_null(), "{body}");
    assert!(body["data"]["registerWebhook"]["generatedSecret"].is_null(), "{body}");
    let (_, again) = gql(http, key, REGISTER_WEBHOOK, vars).await;
    assert_eq!(again["data"]["registerWebhook"]["replayed"], true, "{again}");
    body["data"]["registerWebhook"]["id"].as_str().unwrap().parse().unwrap()
}

/// The real dispatcher enqueues every tenant's deliveries (nothing is sent).
async fn enqueue_deliveries(env: &api_support::Env) {
    use gateway::webhooks::clock::{ManualClock, SeededJitter, SharedJitter};
    use gateway::webhooks::http::{ReqwestPoster, Targets};
    use gateway::webhooks::{Dispatcher, DispatcherConfig};
    let dispatcher = Dispatcher::new(
        env.store.clone(),
        std::sync::Arc::new(ManualClock::new(chrono::Utc::now())),
        std::sync::Arc::new(ReqwestPoster::new(std::time::Duration::from_secs(5), Targets::Any).unwrap()),
        SharedJitter::new(SeededJitter::new(1)),
        DispatcherConfig::default(),
    );
    let enqueued = dispatcher
        .enqueue_to_now(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert!(enqueued > 0, "deliveries were enqueued");
}

async fn subscribe(addr: std::net::SocketAddr, key: &str) -> Ws {
    subscribe_to(
        addr,
        key,
        "subscription { events(after: \"0:0\") { eventType streamId streamVersion payload } }",
    )
    .await
}

async fn subscribe_to(addr: std::net::SocketAddr, key: &str, query: &str) -> Ws {
    let mut ws = ws_connect(addr).await;
    ws_send(
        &mut ws,
        json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {key}") } }),
    )
    .await;
    let ack = next_message(&mut ws).await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    ws_send(
        &mut ws,
        json!({ "id": "1", "type": "subscribe", "payload": { "query": query } }),
    )
    .await;
    ws
}

async fn next_message(ws: &mut Ws) -> Value {
    ws_next(ws).await.expect("the feed stays open")
}

async fn next_payload(ws: &mut Ws) -> Value {
    let msg = next_message(ws).await;
    assert_eq!(msg["type"], "next", "{msg}");
    msg["payload"]["data"]["events"].clone()
}
