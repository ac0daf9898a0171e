//! The media node against a real Postgres: joins, mutes and kicks asked through the log,
//! and a moderated room whose guests are disconnected when the last host leaves; every
//! participant event lands in the room's stream and the recording is stored with its hash.

// Tests stand in for the binary: they may read the clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use chrono::Utc;
use commands::testing::TestDb;
use commands::{CommandContext, CommandHandler, EventStore};
use domain::conference::{Actor, ConferenceCommand, ConferenceEvent, RoomSettings};
use media::control::{Client, ControlEvent, DisconnectReason, ParticipantRole};
use media::engine::EngineConfig;
use media::node::{MediaConfig, MediaNode};
use tokio::net::UdpSocket;
use uuid::Uuid;

fn ctx() -> CommandContext {
    CommandContext::new(Uuid::new_v4(), "test", "test", Utc::now())
}

fn sdp(port: u16) -> String {
    format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\n")
}

/// The room's events as `(event_type, payload)`, in stream order.
async fn room_events(store: &EventStore, tenant: Uuid, room: Uuid) -> Vec<ConferenceEvent> {
    store
        .read_stream(tenant, &format!("conference-{room}"))
        .await
        .unwrap()
        .iter()
        .map(|r| r.decode::<ConferenceEvent>().unwrap())
        .collect()
}

/// Wait (bounded) until the room's stream satisfies `done`.
async fn until(
    store: &EventStore,
    tenant: Uuid,
    room: Uuid,
    what: &str,
    done: impl Fn(&[ConferenceEvent]) -> bool,
) -> Vec<ConferenceEvent> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = room_events(store, tenant, room).await;
        if done(&events) {
            return events;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {events:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count(events: &[ConferenceEvent], f: impl Fn(&ConferenceEvent) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

/// The next `disconnect` event: the leg, its call, and why.
async fn next_disconnect(events: &mut tokio::sync::mpsc::Receiver<ControlEvent>) -> (Uuid, Uuid, DisconnectReason) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            ControlEvent::Disconnect {
                leg_id,
                call_id,
                reason,
                ..
            } => return (leg_id, call_id, reason),
            _ => continue,
        }
    }
}

struct Setup {
    _db: TestDb,
    store: EventStore,
    handler: CommandHandler,
    tenant: Uuid,
    room: Uuid,
    node: MediaNode,
    data_dir: std::path::PathBuf,
}

/// A tenant, a room on access number 7000 (host code 1234, guest code 5678), and a media
/// node that has learnt the room from the log.
async fn node_with_room(moderated: bool, record: bool) -> Setup {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let handler = CommandHandler::new(store.clone());
    let tenant = Uuid::new_v4();
    commands::directory::create_tenant(&handler, &ctx(), tenant, "Acme", "media.test", Default::default())
        .await
        .unwrap();
    let room = Uuid::new_v4();
    media::rooms::create_room(
        &handler,
        &ctx(),
        tenant,
        room,
        RoomSettings {
            name: "Standup".into(),
            owner_account_id: Uuid::new_v4(),
            host_code: "1234".into(),
            guest_code: "5678".into(),
            moderated,
            max_participants: 5,
            record,
            access_number: Some("7000".into()),
        },
    )
    .await
    .unwrap();
    let data_dir = std::env::temp_dir().join(format!("ledgerline-media-node-{}-{room}", std::process::id()));
    let node = MediaNode::start(
        store.clone(),
        MediaConfig {
            node_id: "media-test".into(),
            control_bind: "127.0.0.1:0".parse().unwrap(),
            engine: EngineConfig {
                bind_ip: "127.0.0.1".parse().unwrap(),
                public_ip: None,
                port_min: 0,
                port_max: 0,
                data_dir: data_dir.clone(),
            },
        },
    )
    .await
    .unwrap();
    // The node learns rooms from the log; the access number and codes find this one.
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.directory.lock().unwrap().find_by_code("7000", "1234").is_none() {
        assert!(Instant::now() < deadline, "the node never saw the room");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Setup {
        _db: db,
        store,
        handler,
        tenant,
        room,
        node,
        data_dir,
    }
}

#[tokio::test]
async fn a_moderated_room_through_the_log() {
    let Setup {
        _db,
        store,
        handler,
        tenant,
        room,
        node,
        data_dir,
    } = node_with_room(true, true).await;
    {
        let dir = node.directory.lock().unwrap();
        assert_eq!(
            dir.find_by_code("7000", "5678").map(|r| (r.0, r.2)),
            Some((room, domain::conference::Role::Guest))
        );
        assert!(dir.find_by_code("7000", "9999").is_none());
        assert!(dir.find_by_code("7001", "1234").is_none());
        // The IVR's check, digit by digit: the start of a code waits, a code opens the room
        // with its role, anything else is wrong; only for the room's tenant and number.
        use media::node::CodeCheck;
        assert_eq!(dir.check_code(tenant, "7000", "12"), CodeCheck::Partial);
        assert_eq!(
            dir.check_code(tenant, "7000", "1234"),
            CodeCheck::Open(room, domain::conference::Role::Host)
        );
        assert_eq!(
            dir.check_code(tenant, "7000", "5678"),
            CodeCheck::Open(room, domain::conference::Role::Guest)
        );
        assert_eq!(dir.check_code(tenant, "7000", "13"), CodeCheck::Wrong);
        assert_eq!(dir.check_code(tenant, "7001", "1234"), CodeCheck::Wrong);
        assert_eq!(dir.check_code(Uuid::new_v4(), "7000", "1234"), CodeCheck::Wrong);
    }

    let (client, mut control_events) = Client::connect(node.control_addr).await.unwrap();
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = phone.local_addr().unwrap().port();
    let legs: Vec<(Uuid, Uuid, ParticipantRole)> = vec![
        (Uuid::new_v4(), Uuid::new_v4(), ParticipantRole::Guest),
        (Uuid::new_v4(), Uuid::new_v4(), ParticipantRole::Host),
        (Uuid::new_v4(), Uuid::new_v4(), ParticipantRole::Guest),
    ];
    for (call, leg, role) in &legs {
        client
            .conference_join(room, *call, *leg, &sdp(port), *role)
            .await
            .unwrap();
    }
    let (guest, host, guest2) = (legs[0].1, legs[1].1, legs[2].1);
    until(&store, tenant, room, "three joins", |e| {
        count(e, |x| matches!(x, ConferenceEvent::ParticipantJoined(_))) == 3
    })
    .await;

    // The API asks for a mute and a kick through the log; the node does it and records it.
    let api = Actor::Api {
        actor: "api:alice".into(),
    };
    media::rooms::room_command(
        &handler,
        &ctx(),
        tenant,
        room,
        ConferenceCommand::RequestMute {
            leg_id: guest,
            mute: true,
            by: api.clone(),
            at: Utc::now(),
        },
    )
    .await
    .unwrap();
    until(&store, tenant, room, "the mute", |e| {
        e.iter()
            .any(|x| matches!(x, ConferenceEvent::ParticipantMuted(m) if m.leg_id == guest && m.by == api))
    })
    .await;
    assert!(
        node.engine.set_muted(guest, true).await.unwrap(),
        "the guest is in the room"
    );
    media::rooms::room_command(
        &handler,
        &ctx(),
        tenant,
        room,
        ConferenceCommand::RequestKick {
            leg_id: guest2,
            by: api.clone(),
            at: Utc::now(),
        },
    )
    .await
    .unwrap();
    until(&store, tenant, room, "the kick", |e| {
        e.iter()
            .any(|x| matches!(x, ConferenceEvent::ParticipantKicked(k) if k.leg_id == guest2))
    })
    .await;
    assert_eq!(
        next_disconnect(&mut control_events).await,
        (guest2, legs[2].0, DisconnectReason::Kicked),
        "the kicked leg's call is hung up"
    );

    // The host hangs up: the remaining guest is disconnected and the session ends.
    client.delete(legs[1].0).await.unwrap();
    assert_eq!(
        next_disconnect(&mut control_events).await,
        (guest, legs[0].0, DisconnectReason::ConferenceEnded),
        "the remaining guest's call is hung up"
    );
    let events = until(&store, tenant, room, "the recording", |e| {
        e.iter()
            .any(|x| matches!(x, ConferenceEvent::ConferenceRecordingStored(_)))
    })
    .await;
    let types: Vec<&str> = events.iter().map(domain::DomainEvent::event_type).collect();
    assert_eq!(
        types,
        vec![
            "ConferenceRoomCreated",
            "ConferenceSessionStarted",
            "ParticipantJoined",
            "ParticipantJoined",
            "ParticipantJoined",
            "ParticipantMuteRequested",
            "ParticipantMuted",
            "ParticipantKickRequested",
            "ParticipantKicked",
            "ParticipantLeft",
            "ParticipantLeft",
            "ConferenceSessionEnded",
            "ConferenceRecordingStored",
        ]
    );
    assert!(matches!(&events[9], ConferenceEvent::ParticipantLeft(l) if l.leg_id == host));
    assert!(matches!(&events[10], ConferenceEvent::ParticipantLeft(l) if l.leg_id == guest));
    assert!(
        matches!(&events[11], ConferenceEvent::ConferenceSessionEnded(e) if e.reason == domain::conference::SessionEndReason::LastHostLeft)
    );
    let ConferenceEvent::ConferenceRecordingStored(rec) = &events[12] else {
        unreachable!()
    };
    let bytes = std::fs::read(data_dir.join(&rec.path)).unwrap();
    assert_eq!(bytes.len() as u64, 44 + rec.duration_ms * 16);
    use sha2::Digest;
    assert_eq!(rec.sha256, hex::encode(sha2::Sha256::digest(&bytes)));
    drop(node);
    let _ = std::fs::remove_dir_all(data_dir);
}

/// Who the node says is talking in the room now.
async fn talking(store: &EventStore, room: Uuid) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT leg_id FROM live_conference_talking WHERE room_id = $1 ORDER BY leg_id")
        .bind(room)
        .fetch_all(store.pool())
        .await
        .unwrap()
}

/// Send `frames` 20 ms frames of a 440 Hz tone (or silence) from `phone` to the room's port,
/// paced like a phone.
async fn speak(phone: &UdpSocket, to: std::net::SocketAddr, seq: &mut u16, frames: usize, loud: bool) {
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..frames {
        tick.tick().await;
        let payload: Vec<u8> = (0..160)
            .map(|k| {
                let t = (*seq as usize * 160 + k) as f64 / 8000.0;
                let s = if loud {
                    (t * 440.0 * std::f64::consts::TAU).sin() * 8000.0
                } else {
                    0.0
                };
                media::g711::Codec::Pcmu.encode(s as i16)
            })
            .collect();
        out.clear();
        media::rtp::build(
            &media::rtp::RtpHeader {
                marker: false,
                payload_type: 0,
                sequence: *seq,
                timestamp: *seq as u32 * 160,
                ssrc: 0x7a1c,
            },
            &payload,
            &mut out,
        );
        phone.send_to(&out, to).await.unwrap();
        *seq = seq.wrapping_add(1);
    }
}

#[tokio::test]
async fn talking_flags_follow_a_participants_voice_and_go_with_them() {
    let s = node_with_room(false, false).await;
    let (client, _control_events) = Client::connect(s.node.control_addr).await.unwrap();
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (call, leg) = (Uuid::new_v4(), Uuid::new_v4());
    let answer = client
        .conference_join(
            s.room,
            call,
            leg,
            &sdp(phone.local_addr().unwrap().port()),
            ParticipantRole::Host,
        )
        .await
        .unwrap();
    let room_port = media::sdp::parse(&answer)
        .unwrap()
        .remote
        .expect("the room's RTP address");
    until(&s.store, s.tenant, s.room, "the join", |e| {
        count(e, |x| matches!(x, ConferenceEvent::ParticipantJoined(_))) == 1
    })
    .await;
    assert!(talking(&s.store, s.room).await.is_empty(), "nobody talks yet");

    // The phone speaks: the flag is set while it does.
    let mut seq = 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    while talking(&s.store, s.room).await != vec![leg] {
        assert!(Instant::now() < deadline, "the talking flag never came");
        speak(&phone, room_port, &mut seq, 5, true).await;
    }
    let row: (Uuid, Uuid, String) =
        sqlx::query_as("SELECT tenant_id, session_id, node_id FROM live_conference_talking WHERE leg_id = $1")
            .bind(leg)
            .fetch_one(s.store.pool())
            .await
            .unwrap();
    assert_eq!((row.0, row.2.as_str()), (s.tenant, "media-test"));
    let events = room_events(&s.store, s.tenant, s.room).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ConferenceEvent::ConferenceSessionStarted(x) if x.session_id == row.1)),
        "the flag names the running session"
    );
    // Silence: the flag drops after the hang time (no event is appended for it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !talking(&s.store, s.room).await.is_empty() {
        assert!(Instant::now() < deadline, "the talking flag never dropped");
        speak(&phone, room_port, &mut seq, 5, false).await;
    }
    assert_eq!(room_events(&s.store, s.tenant, s.room).await.len(), events.len());
    // Talking again, then hanging up: the flag goes with the participant.
    let deadline = Instant::now() + Duration::from_secs(10);
    while talking(&s.store, s.room).await != vec![leg] {
        assert!(Instant::now() < deadline, "the talking flag never came back");
        speak(&phone, room_port, &mut seq, 5, true).await;
    }
    client.delete(call).await.unwrap();
    until(&s.store, s.tenant, s.room, "the leave", |e| {
        e.iter()
            .any(|x| matches!(x, ConferenceEvent::ParticipantLeft(l) if l.leg_id == leg))
    })
    .await;
    assert!(
        talking(&s.store, s.room).await.is_empty(),
        "a participant who left does not talk"
    );
    drop(s.node);
    let _ = std::fs::remove_dir_all(&s.data_dir);
}
