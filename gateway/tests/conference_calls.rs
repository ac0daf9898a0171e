//! The conference access number over SIP, end to end: a live `ledgerline up` (SIP node and
//! media node), a room created with the CLI on access number 7000, and sipp callers. A
//! caller who dials 7000 is answered by the media node's IVR, enters the host code as
//! RFC 4733 events (sip-tester's DTMF pcaps), is in the room (`ParticipantJoined` as host)
//! and leaves it when hanging up (`ParticipantLeft`); the call's own events are those of an
//! answered call. Three wrong codes end the call from the node's side (BYE). A carrier's
//! call to a DID whose target is the access number reaches the room the same way (the guest
//! code, as guest). A SIP node
//! whose media node cannot be reached refuses calls to the access number with 503.

mod common;

use std::path::Path;

use commands::testing::TestDb;
use common::{ledgerline, ok, sipp, sipp_at, start, start_with, tenant_with_extensions, until};

const HOST_CODE: &str = "1234";
const GUEST_CODE: &str = "5678";

fn caller_line(caller: u32, callee: &str) -> String {
    format!("{caller};acme.test;{callee};[authentication username={caller} password=pass-{caller}]")
}

/// A room of `tenant` on access number 7000, created as an operator would; its id.
async fn room(db: &TestDb, tenant: &str) -> String {
    let owner = uuid::Uuid::new_v4().to_string();
    let room = ok(ledgerline(
        db,
        &[
            "conference",
            "create",
            "--tenant",
            tenant,
            "--owner-account",
            &owner,
            "--name",
            "Weekly",
            "--host-code",
            HOST_CODE,
            "--guest-code",
            GUEST_CODE,
            "--number",
            "7000",
        ],
    ))
    .trim()
    .to_string();
    until(
        &db.pool,
        30,
        &format!(
            "SELECT EXISTS (SELECT 1 FROM rm_conference_rooms WHERE room_id = '{room}' AND access_number = '7000')"
        ),
    )
    .await;
    room
}

/// The event types of the newest call to `callee`, in stream order, once `ended` calls to
/// it have ended.
async fn call_events(db: &TestDb, callee: &str, ended: u32) -> (String, Vec<String>) {
    until(
        &db.pool,
        30,
        &format!(
            "SELECT count(*) = {ended} FROM events WHERE event_type IN ('CallEnded', 'CallRejected') AND stream_id IN \
             (SELECT stream_id FROM events WHERE event_type = 'CallInitiated' AND payload->>'callee' = '{callee}')"
        ),
    )
    .await;
    let stream: String = sqlx::query_scalar(
        "SELECT stream_id FROM events WHERE event_type = 'CallInitiated' AND payload->>'callee' = $1 \
         ORDER BY global_position DESC LIMIT 1",
    )
    .bind(callee)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let types = sqlx::query_scalar("SELECT event_type FROM events WHERE stream_id = $1 ORDER BY stream_version")
        .bind(&stream)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    (stream, types)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_of_the_access_number_enters_the_host_code_and_is_in_the_room_until_hanging_up() {
    for digit in ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"] {
        let pcap = format!("/usr/share/sip-tester/dtmf_2833_{digit}.pcap");
        assert!(Path::new(&pcap).exists(), "{pcap} comes with sip-tester");
    }
    let db = TestDb::new().await.unwrap();
    let node = start(&db);
    let tenant = tenant_with_extensions(&db, 2).await;
    let room = room(&db, &tenant).await;
    let stream = format!("conference-{room}");

    assert!(
        sipp(&node, "uac_conference.xml", &[caller_line(1000, "7000")], 1),
        "the IVR answers, the caller sends 1234 and hangs up"
    );
    let (call_stream, types) = call_events(&db, "7000", 1).await;
    assert_eq!(
        types,
        [
            "CallInitiated",
            "CallAuthorized",
            "LegCreated",
            "CallAnswered",
            "CallEnded"
        ]
    );
    let call_id = call_stream.strip_prefix("call-").unwrap_or(&call_stream).to_string();
    // The media node put the caller in the room as host, and took it out at the BYE.
    until(
        &db.pool,
        30,
        &format!(
            "SELECT EXISTS (SELECT 1 FROM events WHERE stream_id = '{stream}' AND event_type = 'ParticipantLeft')"
        ),
    )
    .await;
    let joined: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT payload->>'role', payload->>'call_id', payload->>'leg_id' FROM events \
         WHERE stream_id = $1 AND event_type = 'ParticipantJoined'",
    )
    .bind(&stream)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(joined.len(), 1, "{joined:?}");
    assert_eq!(joined[0].0, "host");
    assert_eq!(joined[0].1, call_id, "the participant is the SIP call");
    let left: String = sqlx::query_scalar(
        "SELECT payload->>'leg_id' FROM events WHERE stream_id = $1 AND event_type = 'ParticipantLeft'",
    )
    .bind(&stream)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(left, joined[0].2, "the leg that joined is the one that left");
    let order: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE stream_id = $1 AND event_type LIKE 'Participant%' ORDER BY stream_version",
    )
    .bind(&stream)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(order, ["ParticipantJoined", "ParticipantLeft"]);
    let (callee, ended_by): (String, String) = sqlx::query_as(
        "SELECT (SELECT payload->>'callee' FROM events WHERE stream_id = $1 AND event_type = 'CallInitiated'), \
                (SELECT payload->>'hangup_by' FROM events WHERE stream_id = $1 AND event_type = 'CallEnded')",
    )
    .bind(&call_stream)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(callee, "7000");
    assert_eq!(ended_by, "caller");

    // Three wrong codes: the media node gives up on the caller and the node sends BYE.
    assert!(
        sipp(&node, "uac_conference_wrong.xml", &[caller_line(1001, "7000")], 1),
        "the caller enters 9, 0, 9 and receives a BYE"
    );
    let (_, types) = call_events(&db, "7000", 2).await;
    assert_eq!(types.last().map(String::as_str), Some("CallEnded"), "{types:?}");
    let joins: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = $1 AND event_type = 'ParticipantJoined'")
            .bind(&stream)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(joins, 1, "wrong codes open no room");

    // A carrier (127.0.0.2, a trunk's allowed address) calls a DID whose target is the access
    // number; the guest code puts the caller in the room as guest.
    ok(ledgerline(
        &db,
        &[
            "trunk",
            "add",
            "--tenant",
            &tenant,
            "--name",
            "carrier",
            "--host",
            "127.0.0.2",
            "--allow-ip",
            "127.0.0.2",
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
            "+4930700",
            "--extension",
            "7000",
        ],
    ));
    until(&db.pool, 30, "SELECT count(*) = 1 FROM rm_dids").await;
    assert!(
        sipp_at(
            &node,
            "127.0.0.2",
            "uac_conference_inbound.xml",
            &["carrier;acme.test;+4930700".to_string()],
            1
        ),
        "the IVR answers the DID call, the caller sends 5678 and hangs up"
    );
    let (did_stream, types) = call_events(&db, "+4930700", 1).await;
    assert_eq!(
        types,
        [
            "CallInitiated",
            "CallAuthorized",
            "LegCreated",
            "CallAnswered",
            "CallEnded"
        ]
    );
    let did_call = did_stream.strip_prefix("call-").unwrap_or(&did_stream).to_string();
    until(
        &db.pool,
        30,
        &format!("SELECT count(*) = 2 FROM events WHERE stream_id = '{stream}' AND event_type = 'ParticipantLeft'"),
    )
    .await;
    let role: String = sqlx::query_scalar(
        "SELECT payload->>'role' FROM events WHERE stream_id = $1 AND event_type = 'ParticipantJoined' \
         AND payload->>'call_id' = $2",
    )
    .bind(&stream)
    .bind(&did_call)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(role, "guest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_media_node_the_access_number_is_refused_with_503() {
    let db = TestDb::new().await.unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap().to_string();
    drop(closed);
    let node = start_with(&db, &["--sip-media-control", &address]);
    let tenant = tenant_with_extensions(&db, 1).await;
    room(&db, &tenant).await;
    assert!(sipp(&node, "uac_expect_503.xml", &[caller_line(1000, "7000")], 1));
    let (stream, types) = call_events(&db, "7000", 1).await;
    assert_eq!(types, ["CallInitiated", "CallAuthorized", "CallEnded"]);
    let status: String = sqlx::query_scalar(
        "SELECT payload->>'sip_status' FROM events WHERE event_type = 'CallEnded' AND stream_id = $1",
    )
    .bind(&stream)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(status, "503");
}
