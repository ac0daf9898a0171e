//! Calls through the B2BUA on the wire: sipp callers and callees against a live
//! `ledgerline up`, with INVITE digest auth, and after each call its events in the log in
//! the right order.

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};

mod common;

use commands::testing::TestDb;
use common::{ledgerline, ok, scenario, sipp, start, tenant_with_extensions, until, Node};

/// A sipp callee on a port of its own, running one scenario once.
struct Callee {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Callee {
    fn start(scenario_file: &str) -> Callee {
        // A free port: bind, read, release (sipp binds it right after).
        let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("ledgerline-uas-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("sipp")
            .arg("-sf")
            .arg(scenario(scenario_file))
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-m", "1"])
            .args(["-recv_timeout", "20000", "-timeout", "40", "-nostdin", "-trace_err"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp is installed (apt-get install sip-tester)");
        Callee { child, port, dir }
    }

    /// Waits for the scenario to end; true when it passed.
    fn passed(mut self) -> bool {
        let status = self.child.wait().unwrap();
        if !status.success() {
            for entry in std::fs::read_dir(&self.dir).unwrap().flatten() {
                if entry.file_name().to_string_lossy().ends_with("errors.log") {
                    eprintln!("callee: {}", std::fs::read_to_string(entry.path()).unwrap_or_default());
                }
            }
        }
        status.success()
    }
}

impl Drop for Callee {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn register(node: &Node, number: u32, contact_port: u16) {
    let line = format!("{number};acme.test;[authentication username={number} password=pass-{number}];{contact_port}");
    assert!(sipp(node, "reg_auth.xml", &[line], 1), "{number} registers");
}

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
    let node = start(&db);
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
    assert!(sipp(&node, "uac_cancel.xml", &[caller_line(1000, "1002", "pass-1000")], 1));
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
    assert!(sipp(&node, "uac_busy.xml", &[caller_line(1000, "1003", "pass-1000")], 1));
    assert!(callee.passed());
    wait_for_end(&db, "1003").await;
    assert_eq!(ended(&db, "1003").await, ("busy".into(), "callee".into(), 486));

    // 4. Nobody registered (480) and no such number (404): rejected after authentication.
    assert!(sipp(&node, "uac_expect_404.xml", &[caller_line(1000, "5555", "pass-1000")], 1));
    wait_for_end(&db, "5555").await;
    assert_eq!(
        call_events(&db, "5555").await,
        ["CallInitiated", "CallRejected"]
    );

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
    ok(ledgerline(&db, &["extension", "disable", "--tenant", &tenant, "--extension", &extension]));
    until(&db.pool, 30, "SELECT NOT enabled FROM rm_extensions WHERE number = '1004'").await;
    assert!(sipp(&node, "uac_expect_403.xml", &[caller_line(1004, "1001", "pass-1004")], 1));
}
