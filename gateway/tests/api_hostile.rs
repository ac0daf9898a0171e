//! Hostile input over HTTP: deep nesting, a huge page size, a malformed body, an oversized
//! body, invalid keys, a flood past the rate limit: each gets a clear coded error, the SQL and
//! internals never show, and nothing changes.

#![allow(clippy::disallowed_methods)] // Tests stamp their commands with the clock.

mod api_support;

use api_support::{code, gql, key_id_of, revoke_key, start_with};
use domain::apikey::Role;
use gateway::api::ApiConfig;
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clear_errors_and_change_nothing() {
    let env = start_with(ApiConfig {
        rate_per_second: 5,
        rate_burst: 40,
        max_body_bytes: 64 * 1024,
        ..ApiConfig::default()
    })
    .await;
    let handler = commands::CommandHandler::new(env.store.clone());
    let ctx = commands::CommandContext::new(Uuid::new_v4(), "test", "test", chrono::Utc::now());
    let tenant = Uuid::new_v5(&ctx.command_id, b"tenant");
    commands::directory::create_tenant(
        &handler,
        &ctx,
        tenant,
        "Hostile",
        "hostile.example",
        domain::tenant::Limits {
            max_extensions: 10,
            max_concurrent_calls: 10,
        },
    )
    .await
    .unwrap();
    let key = env.key(tenant, Role::TenantAdmin).await;
    let mut http = env.client();
    let head = env.head().await;
    let no_internals = |text: &str| {
        for word in ["SELECT", "rm_", "sqlx", "panicked", "postgres", "tenant_id ="] {
            assert!(!text.contains(word), "internals leak ({word}): {text}");
        }
    };

    // Deeply nested: refused by the depth limit before anything runs.
    let mut deep = format!(
        "{{ __schema {{ types {{ fields {{ type {} {{ name }} {} }} }} }} }}",
        "{ ofType ".repeat(7),
        "} ".repeat(7)
    );
    let (status, body) = gql(&mut http, &key, &deep, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(code(&body).as_deref(), Some("INVALID_INPUT"), "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("nested"),
        "{body}"
    );
    assert!(body["data"].is_null());
    // And absurdly deep text does not crash the parser.
    deep = format!("{}{}", "{ me ".repeat(3000), "}".repeat(3000));
    let (status, body) = gql(&mut http, &key, &deep, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(code(&body).as_deref(), Some("INVALID_INPUT"), "{body}");

    // A huge page size.
    let (_, body) = gql(
        &mut http,
        &key,
        "{ charges(first: 1000000) { edges { cursor } } }",
        json!({}),
    )
    .await;
    assert_eq!(code(&body).as_deref(), Some("INVALID_INPUT"), "{body}");
    assert!(
        body["errors"][0]["message"].as_str().unwrap().contains("page size"),
        "{body}"
    );
    // A malformed cursor and filter.
    let (_, body) = gql(
        &mut http,
        &key,
        "{ charges(after: \"not-a-cursor\") { edges { cursor } } }",
        json!({}),
    )
    .await;
    assert_eq!(code(&body).as_deref(), Some("INVALID_INPUT"), "{body}");
    let (_, body) = gql(
        &mut http,
        &key,
        "{ cdrs(filter: { direction: \"sideways\" }) { edges { cursor } } }",
        json!({}),
    )
    .await;
    assert_eq!(code(&body).as_deref(), Some("INVALID_INPUT"), "{body}");
    // Too complex: many aliases of a list.
    let wide: String = (0..200)
        .map(|i| format!("a{i}: extensions(first: 500) {{ edges {{ node {{ number }} }} }} "))
        .collect();
    let (_, body) = gql(&mut http, &key, &format!("{{ {wide} }}"), json!({})).await;
    assert_eq!(code(&body).as_deref(), Some("INVALID_INPUT"), "{body}");

    // A malformed body, and bodies that are not JSON at all.
    for body in [&b"{\"query\": "[..], b"not json", b"\xff\xfe\x00", b"[1,2,3]"] {
        let r = http
            .request(
                "POST",
                "/graphql",
                &[
                    ("Authorization", &format!("Bearer {key}")),
                    ("Content-Type", "application/json"),
                ],
                body,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(code(&r.json()).as_deref(), Some("INVALID_INPUT"));
        no_internals(&r.text());
    }
    // A body past the limit.
    let big = vec![b' '; 200 * 1024];
    let r = http
        .request("POST", "/graphql", &[("Authorization", &format!("Bearer {key}"))], &big)
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    // Invalid input to a mutation: a clear message, nothing written.
    let (_, body) = gql(
        &mut http,
        &key,
        "mutation($k: UUID!) { provisionExtension(idempotencyKey: $k, number: \"12\\u0000\", password: \"x\") { id } }",
        json!({ "k": Uuid::new_v4() }),
    )
    .await;
    assert_eq!(code(&body).as_deref(), Some("INVALID_INPUT"), "{body}");
    let (_, body) = gql(
        &mut http,
        &key,
        "mutation($k: UUID!) { openAccount(idempotencyKey: $k, kind: PREPAID, currency: \"EUR\", billingTz: \"Mars/Olympus\") { id } }",
        json!({ "k": Uuid::new_v4() }),
    )
    .await;
    assert_eq!(code(&body).as_deref(), Some("INVALID_INPUT"), "{body}");
    let (_, body) = gql(
        &mut http,
        &key,
        "mutation { topUp(idempotencyKey: \"nope\", accountId: \"x\", amount: \"1\") { id } }",
        json!({}),
    )
    .await;
    assert_eq!(code(&body).as_deref(), Some("INVALID_INPUT"), "{body}");
    no_internals(&body.to_string());

    // Invalid keys: missing, malformed, well-formed but unknown, wrong scheme.
    for auth in [
        None,
        Some("Bearer x"),
        Some("Bearer llk_0000000000000000000000000000000000000000000000000000000000000000"),
        Some(&*format!("Basic {key}")),
    ] {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        let r = http
            .request("POST", "/graphql", &headers, br#"{"query":"{ me { tenantId } }"}"#)
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(code(&r.json()).as_deref(), Some("UNAUTHENTICATED"));
        let r = http.request("GET", "/api/v1/charges.csv", &headers, b"").await.unwrap();
        assert_eq!(r.status, 401);
    }
    // GET cannot mutate.
    let r = http
        .get(&key, "/graphql?query=mutation%20%7B%20renameTenant(idempotencyKey%3A%20%2200000000-0000-0000-0000-000000000001%22%2C%20name%3A%20%22x%22)%20%7B%20id%20%7D%20%7D")
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(env.head().await, head, "nothing hostile changed anything");

    // A revoked key stops at once.
    let victim = env.key(tenant, Role::Auditor).await;
    let key_id = key_id_of(&mut http, &victim).await;
    revoke_key(&mut http, &key, &key_id).await;
    let (status, body) = gql(&mut http, &victim, "{ me { keyId } }", json!({})).await;
    assert_eq!((status, code(&body).as_deref()), (401, Some("UNAUTHENTICATED")));

    // A flood: past the burst, 429 with Retry-After, and the server is still fine.
    let mut limited = None;
    for _ in 0..200 {
        let r = http.graphql(&key, "{ me { role } }", json!({})).await.unwrap();
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200);
    }
    let r = limited.expect("the rate limit answered 429 within 200 requests");
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(code(&r.json()).as_deref(), Some("RATE_LIMITED"));
    let health = http.request("GET", "/healthz", &[], b"").await.unwrap();
    assert_eq!(health.status, 200);
}
