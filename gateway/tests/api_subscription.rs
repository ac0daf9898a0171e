//! graphql-ws over a real socket: a call placed while the subscription is open arrives as its
//! events, in order; a bad key is refused at `connection_init`; an open connection is closed
//! (4403) once its key is revoked, here or by another process.

#![allow(clippy::disallowed_methods)] // Tests stamp their commands with the clock.

mod api_support;

use api_support::{
    key_id_of, place_call, revoke_key, start, ws_close_code, ws_connect as connect, ws_next as next, ws_send,
};
use chrono::Utc;
use commands::{CommandContext, CommandHandler};
use domain::apikey::Role;
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_placed_during_the_subscription_arrives_in_order() {
    let env = start().await;
    let handler = CommandHandler::new(env.store.clone());
    let ctx = CommandContext::new(Uuid::new_v4(), "test", "test", Utc::now());
    let tenant = Uuid::new_v5(&ctx.command_id, b"tenant");
    commands::directory::create_tenant(
        &handler,
        &ctx,
        tenant,
        "Subscribers",
        "subs.example",
        domain::tenant::Limits {
            max_extensions: 10,
            max_concurrent_calls: 10,
        },
    )
    .await
    .unwrap();
    let key = env.key(tenant, Role::Developer).await;

    let mut ws = acknowledged(&env, &key).await;
    // From the start of the log, call events only: the first ones are this test's call,
    // whenever the server starts reading.
    let types = [
        "CallInitiated",
        "CallAuthorized",
        "LegCreated",
        "CallRinging",
        "CallAnswered",
        "CallEnded",
    ];
    ws_send(&mut ws, json!({ "id": "call", "type": "subscribe", "payload": {
            "query": "subscription($t: [String!]) { events(eventTypes: $t, after: \"0:0\") { position cursor streamId streamVersion eventType } }",
            "variables": { "t": types } } })).await;
    let call_id = place_call(&env.store, tenant, "1001", "1002", Utc::now()).await;

    let mut received = Vec::new();
    let mut last_position = 0;
    while received.len() < 6 {
        let msg = next(&mut ws).await.expect("the feed stays open");
        assert_eq!(msg["type"], "next", "{msg}");
        assert_eq!(msg["id"], "call");
        let event = &msg["payload"]["data"]["events"];
        assert_eq!(event["streamId"], format!("call-{call_id}"), "{event}");
        assert_eq!(
            event["streamVersion"],
            received.len() as i64 + 1,
            "in stream order: {event}"
        );
        let position = event["position"].as_i64().unwrap();
        assert!(position > last_position, "in log order");
        last_position = position;
        received.push(event["eventType"].as_str().unwrap().to_string());
    }
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM events WHERE stream_id = $1 ORDER BY stream_version")
            .bind(format!("call-{call_id}"))
            .fetch_all(&env.db.pool)
            .await
            .unwrap();
    assert_eq!(received, stored);
    for t in &received {
        assert!(types.contains(&t.as_str()), "{t} is one of the requested types");
    }

    // An invalid key never gets an ack.
    let mut ws = connect(env.addr).await;
    ws_send(
        &mut ws,
        json!({ "type": "connection_init", "payload": { "authorization": "Bearer llk_nope" } }),
    )
    .await;
    match next(&mut ws).await {
        None => {}
        Some(msg) => assert_ne!(msg["type"], "connection_ack", "{msg}"),
    }
}

/// A graphql-ws connection initialised with `key` and acknowledged.
async fn acknowledged(env: &api_support::Env, key: &str) -> api_support::Ws {
    let mut ws = connect(env.addr).await;
    ws_send(
        &mut ws,
        json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {key}") } }),
    )
    .await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "connection_ack");
    ws
}

/// A subscription open with `key`, acknowledged and listening for call events.
async fn subscribed(env: &api_support::Env, key: &str) -> api_support::Ws {
    let mut ws = acknowledged(env, key).await;
    ws_send(
        &mut ws,
        json!({ "id": "feed", "type": "subscribe", "payload": {
            "query": "subscription { events(eventTypes: [\"CallEnded\"]) { position } }" } }),
    )
    .await;
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_closes_its_open_subscriptions() {
    let env = start().await;
    let tenant = Uuid::new_v4();
    let admin = env.key(tenant, Role::TenantAdmin).await;
    let victim = env.key(tenant, Role::Developer).await;
    let bystander = env.key(tenant, Role::Developer).await;
    let mut http = env.client();
    let victim_id = key_id_of(&mut http, &victim).await;

    // Revoked through this node's API while two connections use the key and one does not.
    let mut first = subscribed(&env, &victim).await;
    let mut second = subscribed(&env, &victim).await;
    let mut other = subscribed(&env, &bystander).await;
    revoke_key(&mut http, &admin, &victim_id).await;
    assert_eq!(ws_close_code(&mut first).await, Some(4403));
    assert_eq!(ws_close_code(&mut second).await, Some(4403));

    // The bystander's connection is still served: a ping gets its pong.
    ws_send(&mut other, json!({ "type": "ping" })).await;
    assert_eq!(next(&mut other).await.unwrap()["type"], "pong");

    // Revoked by another process (the CLI): closed once the key follower reads it.
    let bystander_id = key_id_of(&mut http, &bystander).await;
    env.ledgerline(&[
        "apikey",
        "revoke",
        "--tenant",
        &tenant.to_string(),
        "--key",
        &bystander_id,
        "--reason",
        "rotated",
    ]);
    assert_eq!(ws_close_code(&mut other).await, Some(4403));

    // A revoked key cannot open a new one.
    let mut again = connect(env.addr).await;
    ws_send(
        &mut again,
        json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {victim}") } }),
    )
    .await;
    match next(&mut again).await {
        None => {}
        Some(msg) => assert_ne!(msg["type"], "connection_ack", "{msg}"),
    }
}
