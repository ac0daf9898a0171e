//! The routing and webhook mutations through the API: bad input is refused with
//! `INVALID_INPUT` and writes nothing, the routing table's rules answer `CONFLICT` or
//! `NOT_FOUND`, removals show in the read models, and a generated webhook secret is answered
//! once and never listed.

#![allow(clippy::disallowed_methods)] // Tests stamp their commands with the clock.

mod api_support;

use api_support::{code, gql, start};
use domain::apikey::Role;
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_and_webhook_mutations_keep_their_rules() {
    let env = start().await;
    env.simulate(1, 10, 3);
    let tenant = env.tenants().await[0];
    let admin = env.key(tenant, Role::TenantAdmin).await;
    let mut http = env.client();

    // Bad input: refused, nothing written.
    let head = env.head().await;
    for (query, vars) in [
        (
            "mutation($k: UUID!) { addTrunk(idempotencyKey: $k, name: \"t\", host: \"h.example\", port: 70000) { id } }",
            json!({}),
        ),
        (
            "mutation($k: UUID!) { addTrunk(idempotencyKey: $k, name: \"t\", host: \"h.example\", username: \"u\") { id } }",
            json!({}),
        ),
        (
            "mutation($k: UUID!) { addRoute(idempotencyKey: $k, trunkIds: []) { id } }",
            json!({}),
        ),
        (
            "mutation($k: UUID!) { registerWebhook(idempotencyKey: $k, url: \"not a url\", eventTypes: [\"*\"]) { id } }",
            json!({}),
        ),
    ] {
        let mut vars = vars;
        vars["k"] = json!(Uuid::new_v4());
        let (_, body) = gql(&mut http, &admin, query, vars).await;
        assert_eq!(code(&body).as_deref(), Some("INVALID_INPUT"), "{query}: {body}");
    }
    assert_eq!(env.head().await, head, "refused input wrote nothing");

    // A trunk in use by a route cannot go; once the route is gone it can.
    let (_, body) = gql(
        &mut http,
        &admin,
        "mutation($k: UUID!) { addTrunk(idempotencyKey: $k, name: \"main\", host: \"carrier.example\", transport: TCP) { id } }",
        json!({ "k": Uuid::new_v4() }),
    )
    .await;
    assert!(body["errors"].is_null(), "{body}");
    let trunk = body["data"]["addTrunk"]["id"].as_str().unwrap().to_string();
    let (_, body) = gql(
        &mut http,
        &admin,
        "mutation($k: UUID!, $t: UUID!) { addRoute(idempotencyKey: $k, prefix: \"0\", trunkIds: [$t]) { id } }",
        json!({ "k": Uuid::new_v4(), "t": trunk }),
    )
    .await;
    assert!(body["errors"].is_null(), "{body}");
    let route = body["data"]["addRoute"]["id"].as_str().unwrap().to_string();
    let remove_trunk = "mutation($k: UUID!, $t: UUID!) { removeTrunk(idempotencyKey: $k, trunkId: $t) { id } }";
    let (_, body) = gql(
        &mut http,
        &admin,
        remove_trunk,
        json!({ "k": Uuid::new_v4(), "t": trunk }),
    )
    .await;
    assert_eq!(code(&body).as_deref(), Some("CONFLICT"), "{body}");
    let (_, body) = gql(
        &mut http,
        &admin,
        "mutation($k: UUID!) { removeDid(idempotencyKey: $k, did: \"+4900000\") { id } }",
        json!({ "k": Uuid::new_v4() }),
    )
    .await;
    assert_eq!(code(&body).as_deref(), Some("NOT_FOUND"), "{body}");
    env.catch_up();
    let (_, body) = gql(
        &mut http,
        &admin,
        "{ trunks { trunkId transport hasOutboundCredentials } routes { routeId trunkIds } }",
        json!({}),
    )
    .await;
    assert_eq!(body["data"]["trunks"][0]["trunkId"], trunk, "{body}");
    assert_eq!(body["data"]["trunks"][0]["transport"], "tcp", "{body}");
    assert_eq!(body["data"]["trunks"][0]["hasOutboundCredentials"], false, "{body}");
    assert_eq!(body["data"]["routes"][0]["trunkIds"][0], trunk, "{body}");
    let (_, body) = gql(
        &mut http,
        &admin,
        "mutation($k: UUID!, $r: UUID!) { removeRoute(idempotencyKey: $k, routeId: $r) { id } }",
        json!({ "k": Uuid::new_v4(), "r": route }),
    )
    .await;
    assert!(body["errors"].is_null(), "{body}");
    let (_, body) = gql(
        &mut http,
        &admin,
        remove_trunk,
        json!({ "k": Uuid::new_v4(), "t": trunk }),
    )
    .await;
    assert!(body["errors"].is_null(), "{body}");
    env.catch_up();
    let (_, body) = gql(
        &mut http,
        &admin,
        "{ trunks { trunkId } routes { routeId } }",
        json!({}),
    )
    .await;
    assert_eq!(body["data"]["trunks"], json!([]), "{body}");
    assert_eq!(body["data"]["routes"], json!([]), "{body}");

    // A generated webhook secret is answered once; the list shows only its fingerprint.
    let developer = env.key(tenant, Role::Developer).await;
    let register = "mutation($k: UUID!) { registerWebhook(idempotencyKey: $k, url: \"https://hooks.example/in\", eventTypes: [\"*\"]) { id replayed generatedSecret } }";
    let k = Uuid::new_v4();
    let (_, body) = gql(&mut http, &developer, register, json!({ "k": k })).await;
    assert!(body["errors"].is_null(), "{body}");
    let secret = body["data"]["registerWebhook"]["generatedSecret"]
        .as_str()
        .unwrap()
        .to_string();
    let hook = body["data"]["registerWebhook"]["id"].as_str().unwrap().to_string();
    let (_, again) = gql(&mut http, &developer, register, json!({ "k": k })).await;
    assert_eq!(again["data"]["registerWebhook"]["replayed"], true, "{again}");
    assert!(again["data"]["registerWebhook"]["generatedSecret"].is_null(), "{again}");
    env.catch_up();
    let (_, body) = gql(
        &mut http,
        &developer,
        "{ webhooks { webhookId url secretFingerprint } }",
        json!({}),
    )
    .await;
    assert_eq!(body["data"]["webhooks"][0]["webhookId"], hook, "{body}");
    assert!(!body.to_string().contains(&secret), "{body}");
    let (_, body) = gql(
        &mut http,
        &developer,
        "mutation($k: UUID!, $w: UUID!) { removeWebhook(idempotencyKey: $k, webhookId: $w) { id } }",
        json!({ "k": Uuid::new_v4(), "w": hook }),
    )
    .await;
    assert!(body["errors"].is_null(), "{body}");
    env.catch_up();
    let (_, body) = gql(&mut http, &developer, "{ webhooks { webhookId } }", json!({})).await;
    assert_eq!(body["data"]["webhooks"], json!([]), "{body}");
}
