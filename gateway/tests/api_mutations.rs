//! The conference, webhook and call mutations through the API over HTTP: each works for its
//! tenant, a reused idempotency key is a replay that writes nothing, tenant A's key finds
//! nothing of tenant B's (`NOT_FOUND`, nothing appended), the roles that may not write are
//! refused, and a room's codes are never read back.

#![allow(clippy::disallowed_methods)] // Tests stamp their commands with the clock.

mod api_support;

use api_support::{code, gql, place_call, start, Env};
use chrono::Utc;
use commands::{CommandContext, CommandHandler, StreamRef};
use domain::apikey::Role;
use domain::call::{Call, CallCommand, CallInitiated, Direction};
use domain::conference::{self as room, ConferenceCommand, ConferenceRoom};
use gateway::api::client::HttpClient;
use serde_json::{json, Value};
use uuid::Uuid;

const HOST_CODE: &str = "9182736450918273";
const GUEST_CODE: &str = "5647382910564738";

const CREATE_ROOM: &str = "mutation($k: UUID!, $a: UUID!, $h: String!, $g: String!) { createConferenceRoom(idempotencyKey: $k, name: \"Weekly\", ownerAccountId: $a, hostCode: $h, guestCode: $g, moderated: true, maxParticipants: 10, accessNumber: \"7000\") { id replayed positions } }";
const UPDATE_ROOM: &str = "mutation($k: UUID!, $r: UUID!, $n: String) { updateConferenceRoom(idempotencyKey: $k, roomId: $r, name: $n, maxParticipants: 20) { id replayed positions } }";
const REMOVE_ROOM: &str =
    "mutation($k: UUID!, $r: UUID!) { removeConferenceRoom(idempotencyKey: $k, roomId: $r) { id replayed positions } }";
const MUTE: &str = "mutation($k: UUID!, $r: UUID!, $l: UUID!) { muteParticipant(idempotencyKey: $k, roomId: $r, legId: $l) { id replayed positions } }";
const UNMUTE: &str = "mutation($k: UUID!, $r: UUID!, $l: UUID!) { unmuteParticipant(idempotencyKey: $k, roomId: $r, legId: $l) { id replayed positions } }";
const KICK: &str = "mutation($k: UUID!, $r: UUID!, $l: UUID!) { kickParticipant(idempotencyKey: $k, roomId: $r, legId: $l) { id replayed positions } }";
const REGISTER_WEBHOOK: &str = "mutation($k: UUID!) { registerWebhook(idempotencyKey: $k, url: \"https://hooks.example/in\", eventTypes: [\"*\"], secret: \"whsec_first_secret_0123456789\") { id } }";
const UPDATE_WEBHOOK: &str = "mutation($k: UUID!, $w: UUID!, $s: String) { updateWebhook(idempotencyKey: $k, webhookId: $w, url: \"https://hooks.example/v2\", eventTypes: [\"ConferenceRoomUpdated\"], secret: $s) { id replayed positions } }";
const DISABLE_WEBHOOK: &str = "mutation($k: UUID!, $w: UUID!) { disableWebhook(idempotencyKey: $k, webhookId: $w, reason: \"maintenance\") { id replayed positions } }";
const ENABLE_WEBHOOK: &str =
    "mutation($k: UUID!, $w: UUID!) { enableWebhook(idempotencyKey: $k, webhookId: $w) { id replayed positions } }";
const HANGUP: &str =
    "mutation($k: UUID!, $c: UUID!) { hangupCall(idempotencyKey: $k, callId: $c) { id replayed positions } }";

/// The mutation's answer; fails on any error.
async fn ok(http: &mut HttpClient, key: &str, query: &str, vars: Value) -> Value {
    let (_, body) = gql(http, key, query, vars).await;
    assert!(body["errors"].is_null(), "{query}: {body}");
    let data = body["data"].as_object().unwrap();
    data.values().next().unwrap().clone()
}

/// Runs `query` twice with one idempotency key: the second answer is a replay of the first.
async fn once(http: &mut HttpClient, key: &str, query: &str, mut vars: Value) -> Value {
    vars["k"] = json!(Uuid::new_v4());
    let first = ok(http, key, query, vars.clone()).await;
    assert_eq!(first["replayed"], false, "{query}: {first}");
    assert!(!first["positions"].as_array().unwrap().is_empty(), "{query}: {first}");
    let again = ok(http, key, query, vars).await;
    assert_eq!(again["replayed"], true, "{query}: {again}");
    assert_eq!(again["id"], first["id"], "{query}");
    assert_eq!(again["positions"], first["positions"], "{query}");
    first
}

/// The error code of `query` with a fresh idempotency key.
async fn refused(http: &mut HttpClient, key: &str, query: &str, mut vars: Value) -> String {
    vars["k"] = json!(Uuid::new_v4());
    let (_, body) = gql(http, key, query, vars).await;
    code(&body).unwrap_or_else(|| panic!("{query} was not refused: {body}"))
}

fn key_of(keys: &[(Role, String)], role: Role) -> String {
    keys.iter().find(|(r, _)| *r == role).map(|(_, k)| k.clone()).unwrap()
}

async fn account_of(env: &Env, tenant: Uuid) -> Uuid {
    sqlx::query_scalar("SELECT account_id FROM rm_balances WHERE tenant_id = $1 ORDER BY account_id LIMIT 1")
        .bind(tenant)
        .fetch_one(&env.db.pool)
        .await
        .unwrap()
}

/// `(event_type, payload)` of a stream, in order.
async fn stream(env: &Env, tenant: Uuid, stream_id: &str) -> Vec<(String, Value)> {
    sqlx::query_as(
        "SELECT event_type, payload FROM events WHERE tenant_id = $1 AND stream_id = $2 ORDER BY stream_version",
    )
    .bind(tenant)
    .bind(stream_id)
    .fetch_all(&env.db.pool)
    .await
    .unwrap()
}

/// A session in the room with one guest in it, as the media node would record them; the leg.
async fn join_one(env: &Env, tenant: Uuid, room_id: Uuid) -> Uuid {
    let handler = CommandHandler::new(env.store.clone());
    let leg = Uuid::new_v4();
    let now = Utc::now();
    for command in [
        ConferenceCommand::StartSession {
            session_id: Uuid::new_v4(),
            node_id: "media-test".into(),
            at: now,
        },
        ConferenceCommand::Join {
            leg_id: leg,
            call_id: Uuid::new_v4(),
            role: room::Role::Guest,
            at: now,
        },
    ] {
        handler
            .execute::<ConferenceRoom, _>(
                &CommandContext::new(Uuid::new_v4(), "test", "media-test", now),
                StreamRef::of::<ConferenceRoom>(tenant, &room_id),
                |s| room::decide(&command, s),
            )
            .await
            .unwrap();
    }
    leg
}

async fn end_session(env: &Env, tenant: Uuid, room_id: Uuid) {
    let handler = CommandHandler::new(env.store.clone());
    let command = ConferenceCommand::EndSession {
        reason: room::SessionEndReason::Empty,
        at: Utc::now(),
    };
    handler
        .execute::<ConferenceRoom, _>(
            &CommandContext::new(Uuid::new_v4(), "test", "media-test", Utc::now()),
            StreamRef::of::<ConferenceRoom>(tenant, &room_id),
            |s| room::decide(&command, s),
        )
        .await
        .unwrap();
}

/// A call answered and still going, through the call decider (as the SIP node records it).
async fn call_in_progress(env: &Env, tenant: Uuid) -> Uuid {
    let handler = CommandHandler::new(env.store.clone());
    let (call_id, leg_id, now) = (Uuid::new_v4(), Uuid::new_v4(), Utc::now());
    for command in [
        CallCommand::Initiate(CallInitiated {
            call_id,
            tenant_id: tenant,
            direction: Direction::Internal,
            caller: "1001".into(),
            caller_name: String::new(),
            callee: "1002".into(),
            did: None,
            trunk_id: None,
            account_id: None,
            at: now,
        }),
        CallCommand::Authorize {
            max_duration_s: None,
            reservation_id: None,
            at: now,
        },
        CallCommand::CreateLeg {
            leg_id,
            target: "sip:1002@192.0.2.2".into(),
            trunk_id: None,
            at: now,
        },
        CallCommand::Answer { leg_id, at: now },
    ] {
        handler
            .execute::<Call, _>(
                &CommandContext::new(Uuid::new_v4(), "test", "sip-test", now),
                StreamRef::of::<Call>(tenant, &call_id),
                |s| domain::call::decide(&command, s),
            )
            .await
            .unwrap();
    }
    call_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conference_room_mutations_are_idempotent_tenant_scoped_and_never_show_codes() {
    let env = start().await;
    env.simulate(2, 10, 7);
    let tenants = env.tenants().await;
    let (a, b) = (tenants[0], tenants[1]);
    let (a_admin, b_admin) = (env.key(a, Role::TenantAdmin).await, env.key(b, Role::TenantAdmin).await);
    let (a_account, b_account) = (account_of(&env, a).await, account_of(&env, b).await);
    let mut http = env.client();
    let create = |account: Uuid| json!({ "a": account, "h": HOST_CODE, "g": GUEST_CODE });

    // Bad input and another tenant's account are refused and write nothing.
    let head = env.head().await;
    let bad_code = json!({ "a": a_account, "h": "12", "g": GUEST_CODE });
    assert_eq!(
        refused(&mut http, &a_admin, CREATE_ROOM, bad_code).await,
        "INVALID_INPUT"
    );
    assert_eq!(
        refused(&mut http, &a_admin, CREATE_ROOM, create(b_account)).await,
        "NOT_FOUND"
    );
    assert_eq!(env.head().await, head, "refused input wrote nothing");
    for role in [Role::Finance, Role::Auditor, Role::Developer] {
        let k = env.key(a, role).await;
        let head = env.head().await;
        assert_eq!(
            refused(&mut http, &k, CREATE_ROOM, create(a_account)).await,
            "FORBIDDEN",
            "{role:?}"
        );
        assert_eq!(env.head().await, head, "{role:?} wrote nothing");
    }

    // Created once, replayed on the same key.
    let created = once(&mut http, &a_admin, CREATE_ROOM, create(a_account)).await;
    let room_id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let room_stream = format!("conference-{room_id}");
    assert_eq!(stream(&env, a, &room_stream).await.len(), 1);

    // Updated: what is not given keeps its value, codes included.
    once(
        &mut http,
        &a_admin,
        UPDATE_ROOM,
        json!({ "r": room_id, "n": "Monthly" }),
    )
    .await;
    let events = stream(&env, a, &room_stream).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].0, "ConferenceRoomUpdated");
    let settings = &events[1].1["settings"];
    assert_eq!(settings["name"], "Monthly");
    assert_eq!(settings["max_participants"], 20);
    assert_eq!(settings["host_code"], HOST_CODE);
    assert_eq!(settings["guest_code"], GUEST_CODE);
    assert_eq!(settings["access_number"], "7000");
    assert_eq!(settings["moderated"], true);

    // The listing shows the room, never its codes, to every role.
    env.catch_up();
    for role in Role::ALL {
        let k = env.key(a, role).await;
        let (_, body) = gql(
            &mut http,
            &k,
            "{ conferenceRooms { roomId name accessNumber moderated maxParticipants } }",
            json!({}),
        )
        .await;
        assert!(body["errors"].is_null(), "{role:?}: {body}");
        let rooms = body["data"]["conferenceRooms"].as_array().unwrap();
        let mine = rooms
            .iter()
            .find(|r| r["roomId"] == room_id.to_string())
            .expect("the room is listed");
        assert_eq!(mine["name"], "Monthly");
        assert_eq!(mine["maxParticipants"], 20);
        let text = body.to_string();
        assert!(
            !text.contains(HOST_CODE) && !text.contains(GUEST_CODE),
            "{role:?} sees a code: {text}"
        );
    }

    // Mute, unmute and kick are requests on the room's stream for a leg in the session.
    let leg = join_one(&env, a, room_id).await;
    let participant = json!({ "r": room_id, "l": leg });
    let before = stream(&env, a, &room_stream).await.len();
    once(&mut http, &a_admin, MUTE, participant.clone()).await;
    once(&mut http, &a_admin, UNMUTE, participant.clone()).await;
    once(&mut http, &a_admin, KICK, participant.clone()).await;
    let events = stream(&env, a, &room_stream).await;
    let requests: Vec<(String, Value)> = events[before..].to_vec();
    assert_eq!(
        requests.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
        [
            "ParticipantMuteRequested",
            "ParticipantMuteRequested",
            "ParticipantKickRequested"
        ]
    );
    assert_eq!(requests[0].1["mute"], true);
    assert_eq!(requests[1].1["mute"], false);
    for (_, payload) in &requests {
        assert_eq!(payload["leg_id"], leg.to_string());
        assert!(
            payload["by"]["api"]["actor"].as_str().unwrap().starts_with("api-key:"),
            "{payload}"
        );
    }
    // A leg that is not in the room is no participant.
    let stranger = json!({ "r": room_id, "l": Uuid::new_v4() });
    assert_eq!(refused(&mut http, &a_admin, MUTE, stranger).await, "NOT_FOUND");
    // Roles that may not write are refused.
    for role in [Role::Finance, Role::Auditor, Role::Developer] {
        let k = env.key(a, role).await;
        assert_eq!(
            refused(&mut http, &k, KICK, participant.clone()).await,
            "FORBIDDEN",
            "{role:?}"
        );
    }

    // Tenant B's key finds nothing of A's room or participant, and writes nothing.
    let head = env.head().await;
    for (query, vars) in [
        (UPDATE_ROOM, json!({ "r": room_id, "n": "Stolen" })),
        (REMOVE_ROOM, json!({ "r": room_id })),
        (MUTE, participant.clone()),
        (UNMUTE, participant.clone()),
        (KICK, participant.clone()),
    ] {
        assert_eq!(refused(&mut http, &b_admin, query, vars).await, "NOT_FOUND", "{query}");
    }
    assert_eq!(env.head().await, head, "B's refused writes appended nothing");

    // A room in session cannot be removed; once the session ends it can, and is gone.
    assert_eq!(
        refused(&mut http, &a_admin, REMOVE_ROOM, json!({ "r": room_id })).await,
        "CONFLICT"
    );
    end_session(&env, a, room_id).await;
    once(&mut http, &a_admin, REMOVE_ROOM, json!({ "r": room_id })).await;
    assert_eq!(
        refused(&mut http, &a_admin, UPDATE_ROOM, json!({ "r": room_id, "n": "Again" })).await,
        "NOT_FOUND"
    );
    env.catch_up();
    let (_, body) = gql(&mut http, &a_admin, "{ conferenceRooms { roomId } }", json!({})).await;
    assert!(!body.to_string().contains(&room_id.to_string()), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_mutations_update_disable_and_enable_within_the_tenant() {
    use gateway::webhooks::clock::{ManualClock, SeededJitter, SharedJitter};
    use gateway::webhooks::http::{ReqwestPoster, Targets};
    use gateway::webhooks::{Dispatcher, DispatcherConfig};

    let env = start().await;
    env.simulate(2, 4, 9);
    let tenants = env.tenants().await;
    let (a, b) = (tenants[0], tenants[1]);
    let (a_dev, b_admin) = (env.key(a, Role::Developer).await, env.key(b, Role::TenantAdmin).await);
    let a_admin = env.key(a, Role::TenantAdmin).await;
    let a_account = account_of(&env, a).await;
    let mut http = env.client();
    let hook = ok(&mut http, &a_dev, REGISTER_WEBHOOK, json!({ "k": Uuid::new_v4() })).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.catch_up();
    let list = "{ webhooks { webhookId url eventTypes enabled disabledReason secretFingerprint } }";
    let before = ok(&mut http, &a_dev, list, json!({})).await[0].clone();

    // Updated (with a new secret), once.
    let new_secret = "whsec_second_secret_9876543210";
    once(&mut http, &a_dev, UPDATE_WEBHOOK, json!({ "w": hook, "s": new_secret })).await;
    env.catch_up();
    let after = ok(&mut http, &a_dev, list, json!({})).await;
    assert_eq!(after[0]["url"], "https://hooks.example/v2", "{after}");
    assert_eq!(after[0]["eventTypes"], json!(["ConferenceRoomUpdated"]), "{after}");
    assert_ne!(
        after[0]["secretFingerprint"], before["secretFingerprint"],
        "the secret was rotated"
    );
    assert!(!after.to_string().contains(new_secret), "{after}");
    let secrets: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_secrets WHERE tenant_id = $1 AND webhook_id = $2")
            .bind(a)
            .bind(hook.parse::<Uuid>().unwrap())
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    assert_eq!(secrets, 2, "the rotated secret is stored beside the first");
    // Invalid input writes nothing.
    let head = env.head().await;
    let (_, body) = gql(
        &mut http,
        &a_dev,
        "mutation($k: UUID!, $w: UUID!) { updateWebhook(idempotencyKey: $k, webhookId: $w, url: \"ftp://x\") { id } }",
        json!({ "k": Uuid::new_v4(), "w": hook }),
    )
    .await;
    assert_eq!(code(&body).as_deref(), Some("INVALID_INPUT"), "{body}");
    assert_eq!(env.head().await, head);

    // Tenant B's key finds nothing; roles without the right are refused; nothing is written.
    let role_keys = api_support::keys(&env, a).await;
    let head = env.head().await;
    for query in [UPDATE_WEBHOOK, DISABLE_WEBHOOK, ENABLE_WEBHOOK] {
        assert_eq!(
            refused(&mut http, &b_admin, query, json!({ "w": hook })).await,
            "NOT_FOUND",
            "{query}"
        );
        for role in [Role::Finance, Role::Auditor] {
            let k = key_of(&role_keys, role);
            assert_eq!(
                refused(&mut http, &k, query, json!({ "w": hook })).await,
                "FORBIDDEN",
                "{role:?} {query}"
            );
        }
    }
    assert_eq!(env.head().await, head, "refused writes appended nothing");

    // Disabled: the events that follow are not enqueued for it; enabled again, they are.
    let dispatcher = Dispatcher::new(
        env.store.clone(),
        std::sync::Arc::new(ManualClock::new(Utc::now())),
        std::sync::Arc::new(ReqwestPoster::new(std::time::Duration::from_secs(5), Targets::Any).unwrap()),
        SharedJitter::new(SeededJitter::new(1)),
        DispatcherConfig::default(),
    );
    let deliveries_after = |position: i64| {
        let pool = env.db.pool.clone();
        let hook: Uuid = hook.parse().unwrap();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2 AND event_position > $3",
            )
            .bind(a)
            .bind(hook)
            .bind(position)
            .fetch_one(&pool)
            .await
            .unwrap();
            n
        }
    };
    once(&mut http, &a_dev, DISABLE_WEBHOOK, json!({ "w": hook })).await;
    assert_eq!(
        refused(&mut http, &a_dev, DISABLE_WEBHOOK, json!({ "w": hook })).await,
        "CONFLICT",
        "already disabled"
    );
    let disabled_at = env.head().await;
    let room = ok(
        &mut http,
        &a_admin,
        CREATE_ROOM,
        json!({ "k": Uuid::new_v4(), "a": a_account, "h": HOST_CODE, "g": GUEST_CODE }),
    )
    .await["id"]
        .clone();
    ok(
        &mut http,
        &a_admin,
        UPDATE_ROOM,
        json!({ "k": Uuid::new_v4(), "r": room, "n": "One" }),
    )
    .await;
    dispatcher
        .enqueue_to_now(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        deliveries_after(disabled_at).await,
        0,
        "a disabled webhook gets no deliveries"
    );
    env.catch_up();
    let listed = ok(&mut http, &a_dev, list, json!({})).await;
    assert_eq!(listed[0]["enabled"], false, "{listed}");
    assert_eq!(listed[0]["disabledReason"], "maintenance", "{listed}");

    once(&mut http, &a_dev, ENABLE_WEBHOOK, json!({ "w": hook })).await;
    let enabled_at = env.head().await;
    ok(
        &mut http,
        &a_admin,
        UPDATE_ROOM,
        json!({ "k": Uuid::new_v4(), "r": room, "n": "Two" }),
    )
    .await;
    dispatcher
        .enqueue_to_now(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        deliveries_after(enabled_at).await,
        1,
        "enabled again, the next update is enqueued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_call_is_a_request_on_the_tenants_call_that_has_not_ended() {
    let env = start().await;
    env.simulate(2, 4, 13);
    let tenants = env.tenants().await;
    let (a, b) = (tenants[0], tenants[1]);
    let (a_admin, b_admin) = (env.key(a, Role::TenantAdmin).await, env.key(b, Role::TenantAdmin).await);
    let mut http = env.client();
    let call = call_in_progress(&env, a).await;
    let call_stream = format!("call-{call}");

    // Tenant B's key and the roles that may not end calls: refused, nothing written.
    let role_keys = api_support::keys(&env, a).await;
    let head = env.head().await;
    assert_eq!(
        refused(&mut http, &b_admin, HANGUP, json!({ "c": call })).await,
        "NOT_FOUND"
    );
    for role in [Role::Finance, Role::Auditor, Role::Developer] {
        let k = key_of(&role_keys, role);
        assert_eq!(
            refused(&mut http, &k, HANGUP, json!({ "c": call })).await,
            "FORBIDDEN",
            "{role:?}"
        );
    }
    assert_eq!(
        refused(&mut http, &a_admin, HANGUP, json!({ "c": Uuid::new_v4() })).await,
        "NOT_FOUND"
    );
    assert_eq!(env.head().await, head, "refused requests appended nothing");

    // The request, once.
    let answer = once(&mut http, &a_admin, HANGUP, json!({ "c": call })).await;
    assert_eq!(answer["id"], call.to_string());
    let events = stream(&env, a, &call_stream).await;
    let (last_type, last) = events.last().unwrap();
    assert_eq!(last_type, "CallHangupRequested");
    assert!(last["requested_by"].as_str().unwrap().starts_with("api-key:"), "{last}");

    // An ended call cannot be hung up.
    let ended = place_call(&env.store, a, "1001", "1002", Utc::now()).await;
    assert_eq!(
        refused(&mut http, &a_admin, HANGUP, json!({ "c": ended })).await,
        "CONFLICT"
    );
}
