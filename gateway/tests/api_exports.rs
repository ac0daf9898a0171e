//! Exports over HTTP with a key made by `ledgerline apikey create`: the events NDJSON resumes
//! after a cursor without skipping or repeating, the CDR CSV agrees with the GraphQL list under
//! the same filter, and a bad filter is refused.

#![allow(clippy::disallowed_methods)] // Tests stamp their commands with the clock.

mod api_support;

use api_support::{code, gql, start};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_resume_and_csv_agree_with_graphql() {
    let env = start().await;
    env.simulate(2, 120, 3);
    let tenant = env.tenants().await[0];
    let auditor = env
        .ledgerline(&[
            "apikey",
            "create",
            "--tenant",
            &tenant.to_string(),
            "--role",
            "auditor",
            "--label",
            "audit",
        ])
        .trim()
        .to_string();
    assert!(auditor.starts_with("llk_"), "{auditor}");
    let mut http = env.client();
    let (_, me) = gql(&mut http, &auditor, "{ me { role tenantId } }", json!({})).await;
    assert_eq!(me["data"]["me"]["role"], "auditor");
    assert_eq!(me["data"]["me"]["tenantId"], tenant.to_string());

    // The whole export, and the same export in pieces resumed after each piece's last cursor.
    let whole = http.get(&auditor, "/api/v1/events.ndjson").await.unwrap();
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("content-type"), Some("application/x-ndjson"));
    let whole: Vec<Value> = whole.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT event_id::text FROM events WHERE tenant_id = $1 ORDER BY tx_id, global_position")
            .bind(tenant)
            .fetch_all(&env.db.pool)
            .await
            .unwrap();
    let ids = |events: &[Value]| {
        events
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&whole), stored, "every event of the tenant, in log order, once");
    let mut pieces: Vec<Value> = Vec::new();
    let mut after = String::new();
    for _ in 0..1000 {
        let path = if after.is_empty() {
            "/api/v1/events.ndjson?limit=97".to_string()
        } else {
            format!("/api/v1/events.ndjson?limit=97&after={after}")
        };
        let r = http.get(&auditor, &path).await.unwrap();
        let piece: Vec<Value> = r.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if piece.is_empty() {
            break;
        }
        after = piece.last().unwrap()["cursor"].as_str().unwrap().to_string();
        pieces.extend(piece);
    }
    assert_eq!(ids(&pieces), stored, "resumed pieces neither skip nor repeat");

    // The CDR CSV and the GraphQL list agree under one filter.
    let (_, body) = gql(
        &mut http,
        &auditor,
        "{ cdrs(filter: { status: \"answered\", direction: \"outbound\" }, first: 500) { edges { node { callId } } } }",
        json!({}),
    )
    .await;
    let mut listed: Vec<String> = body["data"]["cdrs"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["callId"].as_str().unwrap().to_string())
        .collect();
    assert!(!listed.is_empty());
    let csv = http
        .get(&auditor, "/api/v1/cdrs.csv?status=answered&direction=outbound")
        .await
        .unwrap();
    let mut exported: Vec<String> = csv
        .text()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    listed.sort();
    exported.sort();
    assert_eq!(listed, exported);

    // Bad filters and cursors are refused with a code.
    for path in [
        "/api/v1/cdrs.csv?status=maybe",
        "/api/v1/charges.csv?from=yesterday",
        "/api/v1/events.ndjson?after=banana",
        "/api/v1/invoices/not-an-id",
    ] {
        let r = http.get(&auditor, path).await.unwrap();
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(code(&r.json()).as_deref(), Some("INVALID_INPUT"), "{path}");
    }
}
