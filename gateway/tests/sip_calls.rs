//! Calls through the B2BUA on the wire: sipp callers and callees against a live
//! `ledgerline up`, with INVITE digest auth, and after each call its events in the log in
//! the right order.

mod common;

use commands::testing::TestDb;
use common::{ledgerline, ok, register, sipp, sipp_at, start, start_with, tenant_with_extensions, until, Callee};

fn caller_line(caller: u32, callee: &str, password: &str) -> String {
    format!("{caller};acme.test;{callee};[authentication username={caller} password={password}]")
}

/// The event types of the one call whose caller and callee are these, in stream order.
async fn call_events(db: &TestDb, callee: &str) -> Vec<String> {
    let stream: String = sqlx::query_scalar(
        "SELECT stream_id FROM events WHERE event_type = 'CallInitiated' AND payload->>'callee' = $1 \
         ORDER BY global_position DESC LIMIT 1",
    )
    .bind(callee)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query_scalar("SELECT event_type FROM events WHERE stream_id = $1 ORDER BY stream_version")
        .bind(&stream)
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

async fn ended(db: &TestDb, callee: &str) -> (String, String, i64) {
    let row: (String, String, i64) = sqlx::query_as(
        "SELECT e.payload->>'reason', e.payload->>'hangup_by', (e.payload->>'sip_status')::bigint FROM events e \
         WHERE e.event_type = 'CallEnded' AND e.stream_id = (SELECT stream_id FROM events \
         WHERE event_type = 'CallInitiated' AND payload->>'callee' = $1 ORDER BY global_position DESC LIMIT 1)",
    )
    .bind(callee)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    row
}

async fn wait_for_end(db: &TestDb, callee: &str) {
    until(
        &db.pool,
        30,
        &format!(
            "SELECT EXISTS (SELECT 1 FROM events WHERE event_type IN ('CallEnded', 'CallRejected') AND stream_id IN \
             (SELECT stream_id FROM events WHERE event_type = 'CallInitiated' AND payload->>'callee' = '{callee}'))"
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_authorized_routed_answered_cancelled_and_refused_with_their_events() {
    let db = TestDb::new().await.unwrap();
    // No directory cache: the disabled caller below must be refused at once.
    let node = start_with(&db, &["--sip-directory-ttl-ms", "0"]);
    tenant_with_extensions(&db, 5).await;

    // 1. Answered and hung up by the caller.
    let callee = Callee::start("uas_answer.xml");
    register(&node, 1001, callee.port);
    assert!(
        sipp(&node, "uac_call.xml", &[caller_line(1000, "1001", "pass-1000")], 1),
        "the call is challenged, answered and hung up"
    );
    assert!(callee.passed(), "the callee saw INVITE, ACK and BYE");
    wait_for_end(&db, "1001").await;
    assert_eq!(
        call_events(&db, "1001").await,
        [
            "CallInitiated",
            "CallAuthorized",
            "LegCreated",
            "CallRinging",
            "CallAnswered",
            "CallEnded"
        ]
    );
    assert_eq!(
        ended(&db, "1001").await,
        ("normal_clearing".into(), "caller".into(), 200)
    );
    let (direction, caller_name): (String, String) = sqlx::query_as(
        "SELECT payload->>'direction', payload->>'caller_name' FROM events WHERE event_type = 'CallInitiated' \
         AND payload->>'callee' = '1001'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((direction.as_str(), caller_name.as_str()), ("internal", "Caller 1000"));

    // 2. Cancelled before the answer.
    let callee = Callee::start("uas_ring.xml");
    register(&node, 1002, callee.port);
    assert!(sipp(
        &node,
        "uac_cancel.xml",
        &[caller_line(1000, "1002", "pass-1000")],
        1
    ));
    assert!(callee.passed(), "the callee's leg was cancelled");
    wait_for_end(&db, "1002").await;
    assert_eq!(
        call_events(&db, "1002").await,
        [
            "CallInitiated",
            "CallAuthorized",
            "LegCreated",
            "CallRinging",
            "CallEnded"
        ]
    );
    assert_eq!(ended(&db, "1002").await, ("cancelled".into(), "caller".into(), 487));

    // 3. Busy.
    let callee = Callee::start("uas_busy.xml");
    register(&node, 1003, callee.port);
    assert!(sipp(
        &node,
        "uac_busy.xml",
        &[caller_line(1000, "1003", "pass-1000")],
        1
    ));
    assert!(callee.passed());
    wait_for_end(&db, "1003").await;
    assert_eq!(ended(&db, "1003").await, ("busy".into(), "callee".into(), 486));

    // 4. Nobody registered (480) and no such number (404): rejected after authentication.
    assert!(sipp(
        &node,
        "uac_expect_404.xml",
        &[caller_line(1000, "5555", "pass-1000")],
        1
    ));
    wait_for_end(&db, "5555").await;
    assert_eq!(call_events(&db, "5555").await, ["CallInitiated", "CallRejected"]);

    // 5. A wrong password and an unknown caller are challenged again, and leave no call.
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'CallInitiated'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let wrong = sipp(&node, "uac_call.xml", &[caller_line(1000, "1004", "wrong-password")], 1);
    let unknown = sipp(&node, "uac_call.xml", &[caller_line(1999, "1004", "pass-1999")], 1);
    assert!(!wrong && !unknown, "neither call gets through");
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'CallInitiated'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(before, after, "unauthenticated INVITEs leave nothing in the log");

    // 6. A disabled caller is refused with 403 once authenticated.
    let tenant: String = sqlx::query_scalar("SELECT tenant_id::text FROM rm_tenants")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let extension: String = sqlx::query_scalar("SELECT extension_id::text FROM rm_extensions WHERE number = '1004'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    ok(ledgerline(
        &db,
        &["extension", "disable", "--tenant", &tenant, "--extension", &extension],
    ));
    until(
        &db.pool,
        30,
        "SELECT NOT enabled FROM rm_extensions WHERE number = '1004'",
    )
    .await;
    assert!(sipp(
        &node,
        "uac_expect_403.xml",
        &[caller_line(1004, "1001", "pass-1004")],
        1
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_calls_fail_over_between_trunks_and_dids_bring_calls_in() {
    let db = TestDb::new().await.unwrap();
    let node = start(&db);
    let tenant = tenant_with_extensions(&db, 2).await;

    let failing = Callee::start("uas_503.xml");
    let answering = Callee::start("uas_answer.xml");
    let trunk = |name: &str, port: u16, extra: &[&str]| {
        let port = port.to_string();
        let mut args = vec![
            "trunk",
            "add",
            "--tenant",
            &tenant,
            "--name",
            name,
            "--host",
            "127.0.0.1",
            "--port",
            &port,
        ];
        args.extend_from_slice(extra);
        ok(ledgerline(&db, &args)).trim().to_string()
    };
    let ports = (failing.port, answering.port);
    let first = trunk("primary", failing.port, &[]);
    let second = trunk("backup", answering.port, &["--allow-ip", "127.0.0.2"]);
    let trunks = format!("{first},{second}");
    ok(ledgerline(
        &db,
        &[
            "route",
            "add",
            "--tenant",
            &tenant,
            "--prefix",
            "0",
            "--strip",
            "1",
            "--prepend",
            "49",
            "--trunks",
            &trunks,
        ],
    ));
    ok(ledgerline(
        &db,
        &[
            "did",
            "add",
            "--tenant",
            &tenant,
            "--did",
            "+4930555",
            "--extension",
            "1001",
        ],
    ));
    // A route naming a trunk that does not exist is refused, and changes nothing.
    let refused = ledgerline(
        &db,
        &[
            "route",
            "add",
            "--tenant",
            &tenant,
            "--prefix",
            "1",
            "--trunks",
            &uuid::Uuid::new_v4().to_string(),
        ],
    );
    assert_eq!(refused.status.code(), Some(2));
    until(&db.pool, 30, "SELECT count(*) = 1 FROM rm_routes").await;
    until(&db.pool, 30, "SELECT count(*) = 1 FROM rm_dids").await;

    // Out: the primary answers 503, the backup answers; the caller hears one answered call.
    assert!(sipp(
        &node,
        "uac_call.xml",
        &[caller_line(1000, "0301234", "pass-1000")],
        1
    ));
    assert!(failing.passed(), "the primary trunk was tried first");
    assert!(answering.passed(), "the backup trunk carried the call");
    wait_for_end(&db, "0301234").await;
    assert_eq!(
        call_events(&db, "0301234").await,
        [
            "CallInitiated",
            "CallAuthorized",
            "LegCreated",
            "LegCreated",
            "CallRinging",
            "CallAnswered",
            "CallEnded"
        ]
    );
    let targets: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT payload->>'target', payload->>'trunk_id' FROM events WHERE event_type = 'LegCreated' ORDER BY global_position",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        targets,
        [
            (format!("sip:49301234@127.0.0.1:{}", ports.0), Some(first.clone())),
            (format!("sip:49301234@127.0.0.1:{}", ports.1), Some(second.clone())),
        ]
    );
    let direction: String = sqlx::query_scalar(
        "SELECT payload->>'direction' FROM events WHERE event_type = 'CallInitiated' AND payload->>'callee' = '0301234'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(direction, "outbound");

    // In: the carrier (at 127.0.0.2, the backup trunk's allowed address) calls the DID
    // without digest; extension 1001 answers.
    let phone = Callee::start("uas_answer.xml");
    register(&node, 1001, phone.port);
    assert!(sipp_at(
        &node,
        "127.0.0.2",
        "uac_inbound.xml",
        &["carrier;acme.test;+4930555".to_string()],
        1
    ));
    assert!(phone.passed());
    wait_for_end(&db, "+4930555").await;
    let (direction, did, trunk_id): (String, String, String) = sqlx::query_as(
        "SELECT payload->>'direction', payload->>'did', payload->>'trunk_id' FROM events \
         WHERE event_type = 'CallInitiated' AND payload->>'callee' = '+4930555'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (direction.as_str(), did.as_str(), trunk_id),
        ("inbound", "+4930555", second)
    );
    assert_eq!(
        ended(&db, "+4930555").await,
        ("normal_clearing".into(), "caller".into(), 200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_transfer_connects_the_caller_to_the_refer_to_target() {
    let db = TestDb::new().await.unwrap();
    let node = start(&db);
    tenant_with_extensions(&db, 3).await;

    // 1001 answers and transfers the caller to 1002 (field0 of the callee's CSV is the target).
    let transferor_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let transferor = Callee::start_with("uas_refer.xml", transferor_port, &["1002;acme.test".to_string()]);
    register(&node, 1001, transferor.port);
    let target = Callee::start("uas_answer.xml");
    register(&node, 1002, target.port);

    assert!(sipp(
        &node,
        "uac_transferred.xml",
        &[caller_line(1000, "1001", "pass-1000")],
        1
    ));
    assert!(transferor.passed(), "the transferor got 202 and was released");
    assert!(target.passed(), "the target answered and got the caller's BYE");
    wait_for_end(&db, "1001").await;
    assert_eq!(
        call_events(&db, "1001").await,
        [
            "CallInitiated",
            "CallAuthorized",
            "LegCreated",
            "CallAnswered",
            "CallTransferred",
            "LegCreated",
            "CallEnded"
        ]
    );
    let (by, to): (String, String) =
        sqlx::query_as("SELECT payload->>'by', payload->>'to' FROM events WHERE event_type = 'CallTransferred'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((by.as_str(), to.as_str()), ("callee", "1002"));
    assert_eq!(
        ended(&db, "1001").await,
        ("normal_clearing".into(), "caller".into(), 200)
    );
}
