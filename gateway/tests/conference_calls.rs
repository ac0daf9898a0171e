//! The conference access number over SIP, end to end: a live `ledgerline up` (SIP node and
//! media node), a room created with the CLI on access number 7000, and sipp callers. A
//! caller who dials 7000 is answered by the media node's IVR, enters the host code as
//! RFC 4733 events (sip-tester's DTMF pcaps), is in the room (`ParticipantJoined` as host)
//! and leaves it when hanging up (`ParticipantLeft`); the call's own events are those of an
//! answered call. Three wrong codes end the call from the node's side (BYE). A carrier's
//! call to a DID whose target is the access number reaches the room the same way (the guest
//! code, as guest). A SIP node
//! whose media node cannot be reached refuses calls to the access number with 503.
//!
//! When the media node takes a participant out of a room itself, the node hangs the call
//! up: a moderated, recorded room's waiting guest gets a BYE when the last host leaves
//! (`conference_ended`; the recording on disk matches its `ConferenceRecordingStored`),
//! and a guest kicked through the API gets one too (`kicked`) — that guest's phone sends
//! its code in SIP INFO rather than RTP.

mod common;

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use commands::testing::TestDb;
use common::{ledgerline, ok, sipp, sipp_at, start, start_with, tenant_with_extensions, until};
use gateway::api::client::HttpClient;
use serde_json::json;
use sha2::Digest;

const HOST_CODE: &str = "1234";
const GUEST_CODE: &str = "5678";

fn caller_line(caller: u32, callee: &str) -> String {
    format!("{caller};acme.test;{callee};[authentication username={caller} password=pass-{caller}]")
}

/// A room of `tenant` on access number 7000, created as an operator would; its id.
async fn room(db: &TestDb, tenant: &str) -> String {
    room_with(db, tenant, &[]).await
}

/// Like [`room`], with more `conference create` flags (`--moderated`, `--record`).
async fn room_with(db: &TestDb, tenant: &str, flags: &[&str]) -> String {
    let owner = uuid::Uuid::new_v4().to_string();
    let mut args = vec![
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
    ];
    args.extend_from_slice(flags);
    let room = ok(ledgerline(db, &args)).trim().to_string();
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

/// One event's payload field of a stream, in stream order.
async fn fields(db: &TestDb, stream: &str, event_type: &str, field: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT payload->>$3 FROM events WHERE stream_id = $1 AND event_type = $2 ORDER BY stream_version",
    )
    .bind(stream)
    .bind(event_type)
    .bind(field)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

async fn event_types(db: &TestDb, stream: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT event_type FROM events WHERE stream_id = $1 ORDER BY stream_version")
        .bind(stream)
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// How a call ended: `(reason, hangup_by, sip_status)`, once it has.
async fn ending(db: &TestDb, call_id: &str) -> (String, String, String) {
    let stream = format!("call-{call_id}");
    until(
        &db.pool,
        30,
        &format!("SELECT EXISTS (SELECT 1 FROM events WHERE stream_id = '{stream}' AND event_type = 'CallEnded')"),
    )
    .await;
    sqlx::query_as(
        "SELECT payload->>'reason', payload->>'hangup_by', payload->>'sip_status' FROM events \
         WHERE stream_id = $1 AND event_type = 'CallEnded'",
    )
    .bind(&stream)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// sipp in a thread of its own (the scenario waits for what the node does meanwhile).
fn sipp_in_background(node: &Arc<common::Node>, scenario: &'static str, line: String) -> std::thread::JoinHandle<bool> {
    let node = node.clone();
    std::thread::spawn(move || sipp(&node, scenario, &[line], 1))
}

fn at(value: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|e| panic!("{value}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moderated_rooms_waiting_guest_gets_a_bye_when_the_last_host_leaves_and_the_session_is_recorded() {
    let db = TestDb::new().await.unwrap();
    let data_dir = std::env::temp_dir().join(format!("ledgerline-conference-{}", uuid::Uuid::new_v4()));
    let node = Arc::new(start_with(
        &db,
        &["--data-dir", data_dir.to_str().expect("a UTF-8 temp dir")],
    ));
    let tenant = tenant_with_extensions(&db, 2).await;
    let room = room_with(&db, &tenant, &["--moderated", "--record"]).await;
    let stream = format!("conference-{room}");

    // The guest dials in and enters the guest code (RFC 4733); its scenario then only waits
    // for the node's BYE.
    let guest = sipp_in_background(&node, "uac_conference_guest.xml", caller_line(1000, "7000"));
    until(
        &db.pool,
        30,
        &format!(
            "SELECT EXISTS (SELECT 1 FROM events WHERE stream_id = '{stream}' AND event_type = 'ParticipantJoined' \
             AND payload->>'role' = 'guest')"
        ),
    )
    .await;
    let guest_call = fields(&db, &stream, "ParticipantJoined", "call_id").await.remove(0);
    // The guest waits: the room is in session with one guest and no host, which is when the
    // mixer plays the waiting prompt to guests and mixes and records nothing.
    until(
        &db.pool,
        30,
        &format!(
            "SELECT EXISTS (SELECT 1 FROM rm_live_conference_rooms WHERE room_id = '{room}' AND moderated \
             AND participants = 1 AND hosts = 0 AND talking = 0)"
        ),
    )
    .await;
    let (role, talking): (String, bool) = sqlx::query_as(
        "SELECT role, talking FROM rm_live_conference_participants WHERE room_id = $1::uuid AND call_id = $2::uuid",
    )
    .bind(&room)
    .bind(&guest_call)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((role.as_str(), talking), ("guest", false));
    let guest_types = event_types(&db, &format!("call-{guest_call}")).await;
    assert!(
        !guest_types.iter().any(|t| t == "CallEnded"),
        "the waiting guest's call is up: {guest_types:?}"
    );

    // The host joins with the host code, stays a few seconds and hangs up.
    let host = {
        let node = node.clone();
        tokio::task::spawn_blocking(move || sipp(&node, "uac_conference.xml", &[caller_line(1001, "7000")], 1))
    };
    assert!(host.await.unwrap(), "the host enters 1234 and hangs up");
    let guest_passed = tokio::task::spawn_blocking(move || guest.join().unwrap())
        .await
        .unwrap();
    assert!(guest_passed, "the waiting guest receives our BYE and answers 200");

    // The guest's call ended from our side, because the conference did.
    assert_eq!(
        ending(&db, &guest_call).await,
        ("conference_ended".into(), "system".into(), "200".into())
    );
    assert_eq!(
        event_types(&db, &format!("call-{guest_call}")).await,
        [
            "CallInitiated",
            "CallAuthorized",
            "LegCreated",
            "CallAnswered",
            "CallEnded"
        ]
    );
    // The CDR says why.
    until(
        &db.pool,
        30,
        &format!(
            "SELECT EXISTS (SELECT 1 FROM rm_cdrs WHERE call_id = '{guest_call}' AND end_reason = 'conference_ended')"
        ),
    )
    .await;
    let host_call = fields(&db, &stream, "ParticipantJoined", "call_id").await.remove(1);
    assert_eq!(ending(&db, &host_call).await.1, "caller", "the host hung up");

    // The room's log: both joined, the host left, the session ended with the guest leaving
    // in it, and the recording was stored.
    until(
        &db.pool,
        30,
        &format!(
            "SELECT EXISTS (SELECT 1 FROM events WHERE stream_id = '{stream}' AND event_type = 'ConferenceRecordingStored')"
        ),
    )
    .await;
    assert_eq!(
        event_types(&db, &stream).await,
        [
            "ConferenceRoomCreated",
            "ConferenceSessionStarted",
            "ParticipantJoined",
            "ParticipantJoined",
            "ParticipantLeft",
            "ParticipantLeft",
            "ConferenceSessionEnded",
            "ConferenceRecordingStored"
        ]
    );
    assert_eq!(
        fields(&db, &stream, "ParticipantJoined", "role").await,
        ["guest", "host"]
    );
    let joined_legs = fields(&db, &stream, "ParticipantJoined", "leg_id").await;
    let left_legs = fields(&db, &stream, "ParticipantLeft", "leg_id").await;
    assert_eq!(
        left_legs,
        [joined_legs[1].clone(), joined_legs[0].clone()],
        "the host left, then the guest"
    );
    assert_eq!(
        fields(&db, &stream, "ConferenceSessionEnded", "reason").await,
        ["last_host_left"]
    );

    // The recording: the file is there, its SHA-256 is the event's, and its length (data
    // bytes / 8000 Hz / 2 bytes per sample) is the event's duration. A moderated room records
    // only while a host is in, so that is the host's stay by the log's clock, within two
    // 20 ms ticks.
    let path = fields(&db, &stream, "ConferenceRecordingStored", "path")
        .await
        .remove(0);
    let duration_ms: u64 = fields(&db, &stream, "ConferenceRecordingStored", "duration_ms")
        .await
        .remove(0)
        .parse()
        .unwrap();
    let sha256 = fields(&db, &stream, "ConferenceRecordingStored", "sha256")
        .await
        .remove(0);
    let file = data_dir.join(&path);
    let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), sha256);
    assert_eq!(&bytes[..4], b"RIFF");
    assert_eq!(&bytes[36..40], b"data");
    let data_len = u64::from(u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]));
    assert_eq!(data_len, bytes.len() as u64 - 44, "the header names every byte");
    let (rate_hz, bytes_per_sample) = (8_000u64, 2u64);
    assert_eq!(data_len * 1000 / rate_hz / bytes_per_sample, duration_ms);
    assert!(duration_ms > 1_000, "the host stayed a few seconds: {duration_ms} ms");
    let joined_at = fields(&db, &stream, "ParticipantJoined", "at").await;
    let left_at = fields(&db, &stream, "ParticipantLeft", "at").await;
    let host_stay_ms = (at(&left_at[0]) - at(&joined_at[1])).num_milliseconds();
    let tick_ms = 20;
    assert!(
        (i64::try_from(duration_ms).unwrap() - host_stay_ms).abs() <= 2 * tick_ms,
        "recorded {duration_ms} ms, the host was in for {host_stay_ms} ms"
    );
    std::fs::remove_dir_all(&data_dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_who_sends_the_code_in_sip_info_and_is_kicked_through_the_api_gets_a_bye() {
    let db = TestDb::new().await.unwrap();
    let node = Arc::new(start(&db));
    let tenant = tenant_with_extensions(&db, 1).await;
    let room = room(&db, &tenant).await;
    let stream = format!("conference-{room}");
    let key = ok(ledgerline(
        &db,
        &["apikey", "create", "--tenant", &tenant, "--role", "tenant_admin"],
    ))
    .trim()
    .to_string();

    // The phone sends DTMF only in INFO (a malformed body first, answered 400); its scenario
    // then waits for the node's BYE.
    let guest = sipp_in_background(&node, "uac_conference_info.xml", caller_line(1000, "7000"));
    until(
        &db.pool,
        30,
        &format!(
            "SELECT EXISTS (SELECT 1 FROM events WHERE stream_id = '{stream}' AND event_type = 'ParticipantJoined' \
             AND payload->>'role' = 'guest')"
        ),
    )
    .await;
    let leg_id = fields(&db, &stream, "ParticipantJoined", "leg_id").await.remove(0);
    let call_id = fields(&db, &stream, "ParticipantJoined", "call_id").await.remove(0);

    let mut http = HttpClient::new(node.http);
    let kick = "mutation($k: UUID!, $r: UUID!, $l: UUID!) { kickParticipant(idempotencyKey: $k, roomId: $r, legId: $l) { id replayed } }";
    let body = http
        .graphql(&key, kick, json!({ "k": uuid::Uuid::new_v4(), "r": room, "l": leg_id }))
        .await
        .unwrap()
        .json();
    assert!(body["errors"].is_null(), "{body}");

    let guest_passed = tokio::task::spawn_blocking(move || guest.join().unwrap())
        .await
        .unwrap();
    assert!(guest_passed, "the kicked guest receives our BYE and answers 200");
    assert_eq!(
        ending(&db, &call_id).await,
        ("kicked".into(), "system".into(), "200".into())
    );
    until(
        &db.pool,
        30,
        &format!("SELECT EXISTS (SELECT 1 FROM rm_cdrs WHERE call_id = '{call_id}' AND end_reason = 'kicked')"),
    )
    .await;
    until(
        &db.pool,
        30,
        &format!(
            "SELECT EXISTS (SELECT 1 FROM events WHERE stream_id = '{stream}' AND event_type = 'ConferenceSessionEnded')"
        ),
    )
    .await;
    assert_eq!(
        event_types(&db, &stream).await,
        [
            "ConferenceRoomCreated",
            "ConferenceSessionStarted",
            "ParticipantJoined",
            "ParticipantKickRequested",
            "ParticipantKicked",
            "ConferenceSessionEnded"
        ]
    );
    assert_eq!(fields(&db, &stream, "ParticipantKicked", "leg_id").await, [leg_id]);
    assert_eq!(
        fields(&db, &stream, "ConferenceSessionEnded", "reason").await,
        ["empty"]
    );
}
