//! `hangupCall` on the wire: sipp calls through a live `ledgerline up`, hung up by an operator
//! through the API over HTTP. The node's follower of the log sends BYE to both sides of an
//! answered call, or CANCELs the leg of a ringing one and answers the caller 487; either way
//! the call ends in the log as `hangup_requested` by `operator`.

mod common;

use std::sync::Arc;

use commands::testing::TestDb;
use common::{ledgerline, ok, register, sipp, start, tenant_with_extensions, until, Callee};
use gateway::api::client::HttpClient;
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_hangs_up_an_answered_call_and_both_sides_get_a_bye() {
    let db = TestDb::new().await.unwrap();
    let node = Arc::new(start(&db));
    let tenant = tenant_with_extensions(&db, 2).await;
    let key = ok(ledgerline(
        &db,
        &["apikey", "create", "--tenant", &tenant, "--role", "tenant_admin"],
    ))
    .trim()
    .to_string();

    let callee = Callee::start("uas_answer.xml");
    register(&node, 1001, callee.port);
    // The caller waits for the node's BYE (its scenario fails without one).
    let caller = {
        let node = node.clone();
        let line = "1000;acme.test;1001;[authentication username=1000 password=pass-1000]".to_string();
        std::thread::spawn(move || sipp(&node, "uac_hungup.xml", &[line], 1))
    };
    let answered = "SELECT EXISTS (SELECT 1 FROM events WHERE event_type = 'CallAnswered' AND stream_id IN \
                    (SELECT stream_id FROM events WHERE event_type = 'CallInitiated' AND payload->>'callee' = '1001'))";
    until(&db.pool, 30, answered).await;
    let call_id: String = sqlx::query_scalar(
        "SELECT payload->>'call_id' FROM events WHERE event_type = 'CallInitiated' AND payload->>'callee' = '1001'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();

    let mut http = HttpClient::new(node.http);
    let hangup = "mutation($k: UUID!, $c: UUID!) { hangupCall(idempotencyKey: $k, callId: $c) { id replayed } }";
    let response = http
        .graphql(&key, hangup, json!({ "k": Uuid::new_v4(), "c": call_id }))
        .await
        .unwrap();
    let body = response.json();
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(body["data"]["hangupCall"]["id"], call_id.as_str(), "{body}");

    let caller_passed = tokio::task::spawn_blocking(move || caller.join().unwrap())
        .await
        .unwrap();
    assert!(caller_passed, "the caller got the node's BYE");
    assert!(
        tokio::task::spawn_blocking(move || callee.passed()).await.unwrap(),
        "the callee got the node's BYE"
    );

    let stream = format!("call-{call_id}");
    until(
        &db.pool,
        30,
        &format!("SELECT EXISTS (SELECT 1 FROM events WHERE stream_id = '{stream}' AND event_type = 'CallEnded')"),
    )
    .await;
    let types: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM events WHERE stream_id = $1 ORDER BY stream_version")
            .bind(&stream)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        types,
        [
            "CallInitiated",
            "CallAuthorized",
            "LegCreated",
            "CallRinging",
            "CallAnswered",
            "CallHangupRequested",
            "CallEnded"
        ]
    );
    let (reason, hangup_by, status): (String, String, i64) = sqlx::query_as(
        "SELECT payload->>'reason', payload->>'hangup_by', (payload->>'sip_status')::bigint FROM events \
         WHERE stream_id = $1 AND event_type = 'CallEnded'",
    )
    .bind(&stream)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (reason.as_str(), hangup_by.as_str(), status),
        ("hangup_requested", "operator", 200)
    );

    // The call has ended: another request is refused and writes nothing.
    let response = http
        .graphql(&key, hangup, json!({ "k": Uuid::new_v4(), "c": call_id }))
        .await
        .unwrap();
    let body = response.json();
    assert_eq!(body["errors"][0]["extensions"]["code"], "CONFLICT", "{body}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = $1")
        .bind(&stream)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 7);

    // The CDR carries the reason too.
    until(
        &db.pool,
        30,
        &format!(
            "SELECT EXISTS (SELECT 1 FROM rm_cdrs WHERE call_id = '{call_id}' AND end_reason = 'hangup_requested' \
             AND hangup_by = 'operator')"
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_hangs_up_a_ringing_call_the_leg_is_cancelled_and_the_caller_gets_487() {
    let db = TestDb::new().await.unwrap();
    let node = Arc::new(start(&db));
    let tenant = tenant_with_extensions(&db, 2).await;
    let key = ok(ledgerline(
        &db,
        &["apikey", "create", "--tenant", &tenant, "--role", "tenant_admin"],
    ))
    .trim()
    .to_string();

    // The callee rings until it is cancelled; the caller waits for the final answer.
    let callee = Callee::start("uas_ring.xml");
    register(&node, 1001, callee.port);
    let caller = {
        let node = node.clone();
        let line = "1000;acme.test;1001;[authentication username=1000 password=pass-1000]".to_string();
        std::thread::spawn(move || sipp(&node, "uac_expect_487.xml", &[line], 1))
    };
    let ringing = "SELECT EXISTS (SELECT 1 FROM events WHERE event_type = 'CallRinging' AND stream_id IN \
                   (SELECT stream_id FROM events WHERE event_type = 'CallInitiated' AND payload->>'callee' = '1001'))";
    until(&db.pool, 30, ringing).await;
    let call_id: String = sqlx::query_scalar(
        "SELECT payload->>'call_id' FROM events WHERE event_type = 'CallInitiated' AND payload->>'callee' = '1001'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let mut http = HttpClient::new(node.http);
    let response = http
        .graphql(
            &key,
            "mutation($k: UUID!, $c: UUID!) { hangupCall(idempotencyKey: $k, callId: $c) { id } }",
            json!({ "k": Uuid::new_v4(), "c": call_id }),
        )
        .await
        .unwrap();
    let body = response.json();
    assert!(body["errors"].is_null(), "{body}");

    let caller_passed = tokio::task::spawn_blocking(move || caller.join().unwrap())
        .await
        .unwrap();
    assert!(caller_passed, "the caller got 487");
    assert!(
        tokio::task::spawn_blocking(move || callee.passed()).await.unwrap(),
        "the callee's leg was cancelled"
    );
    let stream = format!("call-{call_id}");
    until(
        &db.pool,
        30,
        &format!("SELECT EXISTS (SELECT 1 FROM events WHERE stream_id = '{stream}' AND event_type = 'CallEnded')"),
    )
    .await;
    let types: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM events WHERE stream_id = $1 ORDER BY stream_version")
            .bind(&stream)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        types,
        [
            "CallInitiated",
            "CallAuthorized",
            "LegCreated",
            "CallRinging",
            "CallHangupRequested",
            "CallEnded"
        ]
    );
    let (reason, hangup_by, status): (String, String, i64) = sqlx::query_as(
        "SELECT payload->>'reason', payload->>'hangup_by', (payload->>'sip_status')::bigint FROM events \
         WHERE stream_id = $1 AND event_type = 'CallEnded'",
    )
    .bind(&stream)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (reason.as_str(), hangup_by.as_str(), status),
        ("hangup_requested", "operator", 487)
    );
}
