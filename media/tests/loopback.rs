//! The media node over real loopback UDP and TCP: a call anchored through the control
//! protocol (latching, transcoding, DTMF, statistics), and a conference room mixing three
//! phones that each hear the other two and never themselves, recorded to a WAV file.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use media::control::{Client, ControlEvent, ParticipantRole, Server};
use media::dtmf::{build_event, TelephoneEvent, TELEPHONE_EVENT_PT};
use media::engine::{Engine, EngineConfig, EngineEvent};
use media::g711::Codec;
use media::mixer::{MixerEvent, RoomConfig, FRAME};
use media::rtp::{self, RtpHeader};
use tokio::net::{TcpListener, UdpSocket};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(5);

fn sdp(port: u16, formats: &str) -> String {
    format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP {formats}\r\na=rtpmap:101 telephone-event/8000\r\n")
}

async fn start(
    data_dir: &std::path::Path,
) -> (
    Client,
    tokio::sync::mpsc::Receiver<ControlEvent>,
    tokio::sync::mpsc::Receiver<EngineEvent>,
    Server,
) {
    let (engine, events) = Engine::start(EngineConfig {
        bind_ip: "127.0.0.1".parse().unwrap(),
        public_ip: None,
        port_min: 0,
        port_max: 0,
        data_dir: data_dir.to_path_buf(),
    })
    .unwrap();
    let rooms: media::control::RoomLookup = Arc::new(|_room| {
        Some(RoomConfig {
            moderated: false,
            max_participants: 10,
            record: true,
            waiting_prompt: vec![],
        })
    });
    let server = Server::new(engine, rooms);
    let events = server.forward_events(events);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.clone().serve(listener));
    let (client, control_events) = Client::connect(addr).await.unwrap();
    (client, control_events, events, server)
}

fn packet(pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    rtp::build(
        &RtpHeader {
            marker: false,
            payload_type: pt,
            sequence: seq,
            timestamp: ts,
            ssrc: 0x1234,
        },
        payload,
        &mut out,
    );
    out
}

async fn recv(sock: &UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("a packet in time")
        .unwrap();
    buf[..n].to_vec()
}

fn anchored(answer: &str) -> (SocketAddr, Vec<Codec>) {
    let a = media::sdp::parse(answer).unwrap();
    (a.remote.unwrap(), a.codecs)
}

#[tokio::test]
async fn a_call_is_anchored_latched_transcoded_and_measured() {
    let dir = std::env::temp_dir().join(format!("ledgerline-media-call-{}", std::process::id()));
    let (client, mut control_events, _events, _server) = start(&dir).await;
    let alice = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let bob = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (call, leg_a, leg_b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());

    // Alice offers PCMU only; Bob answers PCMA: the node transcodes.
    let to_bob = client
        .offer(call, leg_a, leg_b, &sdp(alice.local_addr().unwrap().port(), "0 101"))
        .await
        .unwrap();
    let (bob_side, _) = anchored(&to_bob);
    let to_alice = client
        .answer(call, leg_b, &sdp(bob.local_addr().unwrap().port(), "8 101"))
        .await
        .unwrap();
    let (alice_side, alice_codecs) = anchored(&to_alice);
    assert_eq!(alice_codecs, vec![Codec::Pcmu]);
    assert_ne!(alice_side, bob_side);

    for seq in 0..10u16 {
        alice
            .send_to(&packet(0, seq, seq as u32 * 160, &[0xFF; 160]), alice_side)
            .await
            .unwrap();
        let got = recv(&bob).await;
        let p = rtp::parse(&got).unwrap();
        assert_eq!(
            (p.payload_type, p.payload),
            (8, &[0xD5u8; 160][..]),
            "µ-law silence arrives as A-law silence"
        );
    }
    // Bob's packets go back to where Alice's came from (latched), transcoded to PCMU.
    bob.send_to(&packet(8, 1, 160, &[0xD5; 160]), bob_side).await.unwrap();
    let p = recv(&alice).await;
    let p = rtp::parse(&p).unwrap();
    // A-law's smallest level (+8) is µ-law's 0xFE: transcoding keeps the level, not the zero.
    assert_eq!((p.payload_type, p.payload), (0, &[0xFE; 160][..]));

    // RFC 4733: three end packets of one event are one digit on the control connection.
    for _ in 0..3 {
        let ev = build_event(&TelephoneEvent {
            event: 5,
            end: true,
            volume: 10,
            duration: 800,
        });
        alice
            .send_to(&packet(TELEPHONE_EVENT_PT, 20, 3200, &ev), alice_side)
            .await
            .unwrap();
        recv(&bob).await;
    }
    let event = tokio::time::timeout(WAIT, control_events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        event,
        ControlEvent::Dtmf {
            call_id: call,
            leg_id: leg_a,
            digit: '5'
        }
    );

    // Garbage from anywhere changes nothing and does not stop the node.
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    stranger.send_to(b"\x80garbage", alice_side).await.unwrap();
    stranger
        .send_to(&packet(0, 99, 0, &[0; 160]), alice_side)
        .await
        .unwrap();

    let stats = client.delete(call).await.unwrap();
    let a = stats.iter().find(|m| m.leg_id == leg_a).unwrap();
    let b = stats.iter().find(|m| m.leg_id == leg_b).unwrap();
    assert_eq!(
        (a.packets_received, a.bytes_received, a.codec.as_str()),
        (13, 10 * 160 + 12, "PCMU")
    );
    assert_eq!((b.packets_sent, b.packets_received, b.codec.as_str()), (13, 1, "PCMA"));
    // Sequence 10..=19 never came; the DTMF event's three copies of 20 count as received
    // (RFC 3550's cumulative loss: expected 21, received 13).
    assert_eq!(a.packets_lost, 8);
    // Deleting twice, or bad SDP, is a clear error.
    assert!(client.delete(call).await.is_err());
    let bad = client.offer(Uuid::new_v4(), leg_a, leg_b, "not sdp").await.unwrap_err();
    assert!(bad.to_string().contains("not SDP"), "{bad}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_reinvite_from_either_side_is_anchored_on_the_same_ports() {
    let dir = std::env::temp_dir().join(format!("ledgerline-media-reinvite-{}", std::process::id()));
    let (client, _control_events, _events, _server) = start(&dir).await;
    let alice = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let bob = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (call, leg_a, leg_b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let alice_port = alice.local_addr().unwrap().port();
    let bob_port = bob.local_addr().unwrap().port();
    let to_bob = client
        .offer(call, leg_a, leg_b, &sdp(alice_port, "0 101"))
        .await
        .unwrap();
    let (bob_side, _) = anchored(&to_bob);
    let to_alice = client.answer(call, leg_b, &sdp(bob_port, "0 101")).await.unwrap();
    let (alice_side, _) = anchored(&to_alice);

    // Bob puts Alice on hold (his re-INVITE): Alice is offered the port she already sends to,
    // and Bob gets the port he already sends to in the answer.
    let hold = sdp(bob_port, "0 101").replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
    let to_alice = client.offer(call, leg_b, leg_a, &hold).await.unwrap();
    assert_eq!(anchored(&to_alice).0, alice_side);
    assert!(to_alice.contains("a=sendonly"), "{to_alice}");
    let to_bob = client.answer(call, leg_a, &sdp(alice_port, "0 101")).await.unwrap();
    assert_eq!(anchored(&to_bob).0, bob_side);
    // The answer must come from the other leg than the offer's.
    assert!(client.answer(call, leg_b, &sdp(bob_port, "0 101")).await.is_err());
    // Alice resumes (her re-INVITE); media still flows both ways.
    let to_bob = client
        .offer(call, leg_a, leg_b, &sdp(alice_port, "0 101"))
        .await
        .unwrap();
    assert_eq!(anchored(&to_bob).0, bob_side);
    let to_alice = client.answer(call, leg_b, &sdp(bob_port, "0 101")).await.unwrap();
    assert_eq!(anchored(&to_alice).0, alice_side);
    alice
        .send_to(&packet(0, 1, 160, &[0xFF; 160]), alice_side)
        .await
        .unwrap();
    let got = recv(&bob).await;
    let got = rtp::parse(&got).unwrap();
    assert_eq!(got.payload, &[0xFF; 160][..]);
    assert_eq!(
        (got.ssrc, got.sequence, got.timestamp),
        (0x1234, 1, 160),
        "SSRC, sequence and timestamp pass through"
    );
    bob.send_to(&packet(0, 1, 160, &[0x7F; 160]), bob_side).await.unwrap();
    assert_eq!(rtp::parse(&recv(&alice).await).unwrap().payload, &[0x7F; 160][..]);
    // A leg of another call cannot offer on this one.
    assert!(client
        .offer(call, Uuid::new_v4(), leg_a, &sdp(alice_port, "0"))
        .await
        .is_err());
    let stats = client.delete(call).await.unwrap();
    assert_eq!(stats.len(), 2);
    let _ = std::fs::remove_dir_all(dir);
}

fn goertzel(samples: &[i16], hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / 8000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for x in samples {
        let s0 = *x as f64 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (samples.len() as f64).powi(2)
}

#[tokio::test]
async fn three_phones_in_a_room_hear_the_other_two_and_the_session_is_recorded() {
    let dir = std::env::temp_dir().join(format!("ledgerline-media-room-{}", std::process::id()));
    let (client, _control_events, mut events, _server) = start(&dir).await;
    let room = Uuid::new_v4();
    let freqs = [440.0, 1000.0, 1700.0];
    let mut phones = Vec::new();
    for (i, hz) in freqs.iter().enumerate() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (call, leg) = (Uuid::new_v4(), Uuid::new_v4());
        let codec = if i == 1 { "8 101" } else { "0 101" };
        let answer = client
            .conference_join(
                room,
                call,
                leg,
                &sdp(sock.local_addr().unwrap().port(), codec),
                ParticipantRole::Guest,
            )
            .await
            .unwrap();
        let (node, codecs) = anchored(&answer);
        phones.push((sock, node, codecs[0], *hz, call, leg));
    }
    // Every phone sends 60 frames of its tone, paced at 20 ms as a phone does, and keeps what it hears.
    let mut heard: HashMap<usize, Vec<i16>> = HashMap::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for n in 0..60u32 {
        ticker.tick().await;
        for (sock, node, codec, hz, _, _) in &phones {
            let mut frame = [0u8; FRAME];
            for (k, b) in frame.iter_mut().enumerate() {
                let t = (n as f64 * FRAME as f64 + k as f64) / 8000.0;
                *b = codec.encode((8000.0 * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16);
            }
            sock.send_to(&packet(codec.payload_type(), n as u16, n * 160, &frame), node)
                .await
                .unwrap();
        }
        for (i, (sock, _, codec, _, _, _)) in phones.iter().enumerate() {
            let mut buf = [0u8; 2048];
            while let Ok((len, _)) = sock.try_recv_from(&mut buf) {
                let p = rtp::parse(&buf[..len]).unwrap();
                let mut pcm = [0i16; FRAME];
                codec.decode_into(p.payload, &mut pcm[..p.payload.len().min(FRAME)]);
                heard.entry(i).or_default().extend_from_slice(&pcm);
            }
        }
    }
    for (i, (_, _, _, own, _, _)) in phones.iter().enumerate() {
        let samples = &heard[&i];
        let own_power = goertzel(samples, *own);
        for (_, _, _, other, _, _) in phones.iter().filter(|p| p.3 != *own) {
            let p = goertzel(samples, *other);
            assert!(
                p > 50.0 * own_power,
                "phone {i}: {other} Hz at {p}, own {own} Hz at {own_power}"
            );
        }
    }
    for (_, _, _, _, call, _) in &phones {
        let stats = client.delete(*call).await.unwrap();
        assert!(stats[0].packets_received >= 50, "{stats:?}");
    }
    // The room ends with its last participant; the recording is stored with its hash.
    let mut recorded = None;
    while recorded.is_none() {
        match tokio::time::timeout(WAIT, events.recv()).await.unwrap().unwrap() {
            EngineEvent::RecordingStored {
                path,
                duration_ms,
                sha256,
                ..
            } => recorded = Some((path, duration_ms, sha256)),
            EngineEvent::Room {
                event: MixerEvent::SessionEnded { .. },
                ..
            } => {}
            _ => {}
        }
    }
    let (path, duration_ms, sha256) = recorded.unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, 44 + duration_ms * 16);
    assert!(
        (1000..=3000).contains(&duration_ms),
        "about 1.2 s of talk: {duration_ms} ms"
    );
    use sha2::Digest;
    assert_eq!(sha256, hex::encode(sha2::Sha256::digest(&bytes)));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_prompt_is_played_to_an_anchored_leg() {
    let dir = std::env::temp_dir().join(format!("ledgerline-media-prompt-{}", std::process::id()));
    let (client, _control_events, _events, _server) = start(&dir).await;
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let call = Uuid::new_v4();
    let leg = Uuid::new_v4();
    let answer = client
        .play_prompt(
            call,
            leg,
            Some(&sdp(phone.local_addr().unwrap().port(), "8 101")),
            "joined",
        )
        .await
        .unwrap()
        .expect("anchoring answers with SDP");
    assert_eq!(anchored(&answer).1, vec![Codec::Pcma]);
    let expected = media::prompts::samples("joined").unwrap();
    let frames = expected.len().div_ceil(FRAME);
    let mut heard = Vec::new();
    let mut last_seq = None;
    for _ in 0..frames {
        let p = recv(&phone).await;
        let p = rtp::parse(&p).unwrap();
        assert_eq!(p.payload_type, 8);
        if let Some(prev) = last_seq {
            assert_eq!(p.sequence, u16::wrapping_add(prev, 1), "one continuous stream");
        }
        last_seq = Some(p.sequence);
        let mut pcm = [0i16; FRAME];
        Codec::Pcma.decode_into(p.payload, &mut pcm);
        heard.extend_from_slice(&pcm);
    }
    // What arrives is the prompt, through A-law: within its quantization everywhere.
    for (k, (h, e)) in heard.iter().zip(expected.iter()).enumerate() {
        let step = (*e as i32).abs() / 16 + 16;
        assert!((*h as i32 - *e as i32).abs() <= step, "sample {k}: {h} vs {e}");
    }
    assert!(client.play_prompt(call, leg, None, "no-such-prompt").await.is_err());
    let _ = std::fs::remove_dir_all(dir);
}

/// The IVR timeout in this test: well after the wrong codes' `leg_ended` is due.
const IVR_TIMEOUT: Duration = Duration::from_secs(3);

/// The access-number IVR over the control protocol: the caller is answered, three wrong
/// codes (RFC 4733 packets on the wire) end the leg with `leg_ended`, and so does a caller
/// who enters nothing until the IVR's timeout.
#[tokio::test]
async fn the_conference_ivr_lets_go_of_wrong_codes_and_of_silence() {
    let data_dir = std::env::temp_dir().join(format!("ledgerline-ivr-{}", Uuid::new_v4()));
    let (engine, events) = Engine::start(EngineConfig {
        bind_ip: "127.0.0.1".parse().unwrap(),
        public_ip: None,
        port_min: 0,
        port_max: 0,
        data_dir: data_dir.clone(),
    })
    .unwrap();
    let rooms: media::control::RoomLookup = Arc::new(|_room| None);
    let tenant = Uuid::new_v4();
    // Only "12" is the start of a code; nothing opens a room.
    let codes: media::control::CodeLookup = Arc::new(move |t, number, digits| {
        (t == tenant && number == "7000" && "12".starts_with(digits)).then_some(None)
    });
    let server = Server::new(engine, rooms)
        .with_codes(codes)
        .with_ivr_timeout(IVR_TIMEOUT);
    let _events = server.forward_events(events);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.clone().serve(listener));
    let (client, mut control_events) = Client::connect(addr).await.unwrap();

    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (call_id, leg_id) = (Uuid::new_v4(), Uuid::new_v4());
    let answer = client
        .request(media::control::Command::ConferenceIvr {
            call_id,
            leg_id,
            sdp: sdp(phone.local_addr().unwrap().port(), "0 101"),
            tenant_id: tenant,
            access_number: "7000".into(),
        })
        .await
        .unwrap()
        .sdp
        .expect("the caller's answer");
    let port: u16 = answer
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    // "1" waits, "9" is wrong (1), "9" again (2), "8" (3): the IVR gives up.
    for (i, digit) in [1u8, 9, 9, 8].into_iter().enumerate() {
        let i = i as u16;
        let event = build_event(&TelephoneEvent {
            event: digit,
            end: true,
            volume: 10,
            duration: 800,
        });
        phone
            .send_to(&packet(TELEPHONE_EVENT_PT, i, 1000 * u32::from(i + 1), &event), to)
            .await
            .unwrap();
    }
    // Before the timeout could have ended it: the codes did.
    let ended = tokio::time::timeout(IVR_TIMEOUT / 2, async {
        loop {
            if let Some(ControlEvent::LegEnded { call_id: c, leg_id: l }) = control_events.recv().await {
                return (c, l);
            }
        }
    })
    .await
    .expect("leg_ended after three wrong codes");
    assert_eq!(ended, (call_id, leg_id));
    client.delete(call_id).await.unwrap();

    // Silence: the timeout lets the caller go.
    let (call_id, leg_id) = (Uuid::new_v4(), Uuid::new_v4());
    client
        .request(media::control::Command::ConferenceIvr {
            call_id,
            leg_id,
            sdp: sdp(phone.local_addr().unwrap().port(), "0 101"),
            tenant_id: tenant,
            access_number: "7000".into(),
        })
        .await
        .unwrap();
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(ControlEvent::LegEnded { call_id: c, leg_id: l }) = control_events.recv().await {
                return (c, l);
            }
        }
    })
    .await
    .expect("leg_ended after the IVR's timeout");
    assert_eq!(ended, (call_id, leg_id));
    std::fs::remove_dir_all(&data_dir).ok();
}

/// Digits a SIP node received in INFO (the `dtmf` command) count as the leg's RFC 4733
/// events: they open the room in the IVR, and `*6` in the room toggles the self-mute. Only
/// the call's own leg and DTMF digits are taken.
#[tokio::test]
async fn digits_sent_with_the_dtmf_command_open_a_room_and_mute() {
    let data_dir = std::env::temp_dir().join(format!("ledgerline-info-{}", Uuid::new_v4()));
    let (engine, events) = Engine::start(EngineConfig {
        bind_ip: "127.0.0.1".parse().unwrap(),
        public_ip: None,
        port_min: 0,
        port_max: 0,
        data_dir: data_dir.clone(),
    })
    .unwrap();
    let room = Uuid::new_v4();
    let rooms: media::control::RoomLookup = Arc::new(|_room| {
        Some(RoomConfig {
            moderated: false,
            max_participants: 10,
            record: false,
            waiting_prompt: vec![],
        })
    });
    let tenant = Uuid::new_v4();
    // "12" opens the room as host.
    let codes: media::control::CodeLookup = Arc::new(move |t, number, digits| {
        if t != tenant || number != "7000" || !"12".starts_with(digits) {
            return None;
        }
        Some((digits == "12").then_some((room, media::mixer::Role::Host)))
    });
    let server = Server::new(engine, rooms).with_codes(codes);
    let mut events = server.forward_events(events);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.clone().serve(listener));
    let (client, _control_events) = Client::connect(addr).await.unwrap();

    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (call_id, leg_id) = (Uuid::new_v4(), Uuid::new_v4());
    client
        .request(media::control::Command::ConferenceIvr {
            call_id,
            leg_id,
            sdp: sdp(phone.local_addr().unwrap().port(), "0 101"),
            tenant_id: tenant,
            access_number: "7000".into(),
        })
        .await
        .unwrap();
    let dtmf = |call_id, leg_id, digit| media::control::Command::Dtmf { call_id, leg_id, digit };
    // Another call's id for this leg, or a character that is no DTMF digit: refused.
    for refused in [dtmf(Uuid::new_v4(), leg_id, '1'), dtmf(call_id, leg_id, 'x')] {
        assert!(client.request(refused).await.is_err());
    }
    for digit in ['1', '2'] {
        client.request(dtmf(call_id, leg_id, digit)).await.unwrap();
    }
    let joined = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(EngineEvent::Joined { room_id, leg_id, .. }) = events.recv().await {
                return (room_id, leg_id);
            }
        }
    })
    .await
    .expect("the code opens the room");
    assert_eq!(joined, (room, leg_id));
    for digit in ['*', '6'] {
        client.request(dtmf(call_id, leg_id, digit)).await.unwrap();
    }
    let muted = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(EngineEvent::Room {
                event: MixerEvent::MuteChanged { leg_id, muted, by },
                ..
            }) = events.recv().await
            {
                return (leg_id, muted, by);
            }
        }
    })
    .await
    .expect("*6 mutes");
    assert_eq!(muted, (leg_id, true, media::mixer::MuteBy::Participant));
    client.delete(call_id).await.unwrap();
    std::fs::remove_dir_all(&data_dir).ok();
}
