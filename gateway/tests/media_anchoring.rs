//! RTP anchoring on the wire: a sipp caller and a sipp callee (echoing RTP) call through a
//! live `ledgerline up`. Each side must be given the media node's address in the SDP it
//! receives, never the other sipp's; the caller's audio (g711a.pcap) and the callee's echo
//! must be relayed, counted in `CallEnded.media` and shown in the CDR's legs. A second node
//! whose media node cannot be reached still connects the call, with the SDP passed through.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use commands::testing::TestDb;
use common::{register, scenario, start_with, tenant_with_extensions, until, Node};

const PCAP: &str = "/usr/share/sip-tester/g711a.pcap";
/// The media node's RTP ports in these tests, away from the ports sipp and the OS pick.
const RTP_MIN: u16 = 21000;
const RTP_MAX: u16 = 21999;

/// A port `p` with `p` and `p + 2` free (sipp's media port and the second one it echoes
/// on), away from the media node's RTP range.
fn free_udp_port() -> u16 {
    loop {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        if (RTP_MIN..=RTP_MAX + 2).contains(&port) || port >= u16::MAX - 2 {
            continue;
        }
        if std::net::UdpSocket::bind(("127.0.0.1", port + 2)).is_ok() {
            return port;
        }
    }
}

/// A sipp process whose `<log>` actions go to a file of ours.
struct Sipp {
    child: Child,
    dir: PathBuf,
}

impl Sipp {
    /// `echo`: send back what reaches the media port (the callee; the caller plays a pcap).
    fn spawn(
        target: Option<&str>,
        scenario_file: &str,
        port: u16,
        media_port: u16,
        echo: bool,
        csv: Option<&str>,
    ) -> Sipp {
        let dir = std::env::temp_dir().join(format!("ledgerline-anchoring-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut command = Command::new("sipp");
        if let Some(target) = target {
            command.arg(target);
        }
        if let Some(lines) = csv {
            let path = dir.join("users.csv");
            std::fs::write(&path, format!("SEQUENTIAL\n{lines}\n")).unwrap();
            command.arg("-inf").arg(path);
        }
        if echo {
            command.arg("-rtp_echo");
        }
        let child = command
            .arg("-sf")
            .arg(scenario(scenario_file))
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-m", "1"])
            .args(["-mp", &media_port.to_string()])
            .args([
                "-recv_timeout",
                "20000",
                "-timeout",
                "40",
                "-nostdin",
                "-trace_err",
                "-trace_logs",
            ])
            .arg("-log_file")
            .arg(dir.join("actions.log"))
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp is installed (apt-get install sip-tester)");
        Sipp { child, dir }
    }

    /// Waits for the scenario's end; true when it passed.
    fn passed(&mut self) -> bool {
        let status = self.child.wait().unwrap();
        if !status.success() {
            for entry in std::fs::read_dir(&self.dir).unwrap().flatten() {
                if entry.file_name().to_string_lossy().ends_with("errors.log") {
                    eprintln!("{}", std::fs::read_to_string(entry.path()).unwrap_or_default());
                }
            }
        }
        status.success()
    }

    /// The `ip:port` the scenario logged after `label`.
    fn logged(&self, label: &str) -> (String, u16) {
        let text = std::fs::read_to_string(self.dir.join("actions.log")).unwrap_or_default();
        let line = text
            .lines()
            .find_map(|l| l.split_once(label).map(|(_, rest)| rest.trim().to_string()))
            .unwrap_or_else(|| panic!("sipp logged no `{label}`: {text}"));
        let address = line.split_whitespace().next().unwrap();
        let (ip, port) = address.rsplit_once(':').unwrap();
        (ip.to_string(), port.parse().unwrap())
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

struct Call {
    /// The audio address the caller was answered with, and the one the callee was offered.
    caller_got: (String, u16),
    callee_got: (String, u16),
    /// The same for the caller's hold re-INVITE.
    caller_got_on_hold: (String, u16),
    callee_got_on_hold: (String, u16),
    caller_media_port: u16,
    callee_media_port: u16,
}

/// 1000 calls `number` (registered at a sipp callee that echoes RTP and answers with
/// `codec`, `payload type;name`); the caller offers PCMA. Both scenarios pass.
fn call(node: &Node, number: u32, codec: &str) -> Call {
    let (callee_port, callee_media_port, caller_media_port) = (free_udp_port(), free_udp_port(), free_udp_port());
    let mut callee = Sipp::spawn(None, "uas_media.xml", callee_port, callee_media_port, true, Some(codec));
    register(node, number, callee_port);
    let line = format!("1000;acme.test;{number};[authentication username=1000 password=pass-1000]");
    let mut caller = Sipp::spawn(
        Some(&node.sip.to_string()),
        "uac_media.xml",
        0,
        caller_media_port,
        false,
        Some(&line),
    );
    assert!(caller.passed(), "the caller's call is answered and hung up");
    assert!(callee.passed(), "the callee saw INVITE, ACK and BYE");
    Call {
        caller_got: caller.logged("answer-audio"),
        callee_got: callee.logged("offer-audio"),
        caller_got_on_hold: caller.logged("hold-answer-audio"),
        callee_got_on_hold: callee.logged("hold-offer-audio"),
        caller_media_port,
        callee_media_port,
    }
}

async fn call_stream(db: &TestDb, callee: &str) -> String {
    until(
        &db.pool,
        30,
        &format!(
            "SELECT EXISTS (SELECT 1 FROM events WHERE event_type = 'CallEnded' AND stream_id IN \
             (SELECT stream_id FROM events WHERE event_type = 'CallInitiated' AND payload->>'callee' = '{callee}'))"
        ),
    )
    .await;
    sqlx::query_scalar(
        "SELECT stream_id FROM events WHERE event_type = 'CallInitiated' AND payload->>'callee' = $1 \
         ORDER BY global_position DESC LIMIT 1",
    )
    .bind(callee)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// `CallEnded.media` of the call: (leg id, packets received, packets sent, codec) per leg.
async fn ended_media(db: &TestDb, stream: &str) -> Vec<(String, i64, i64, String)> {
    sqlx::query_as(
        "SELECT m->>'leg_id', (m->>'packets_received')::bigint, (m->>'packets_sent')::bigint, m->>'codec' \
         FROM events, jsonb_array_elements(payload->'media') m \
         WHERE stream_id = $1 AND event_type = 'CallEnded' ORDER BY 1",
    )
    .bind(stream)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

fn in_rtp_range(port: u16) -> bool {
    (RTP_MIN..=RTP_MAX).contains(&port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_anchored_on_the_media_node_and_its_media_counted() {
    assert!(Path::new(PCAP).exists(), "{PCAP} comes with sip-tester");
    let db = TestDb::new().await.unwrap();
    let (min, max) = (RTP_MIN.to_string(), RTP_MAX.to_string());
    let node = start_with(&db, &["--rtp-port-min", &min, "--rtp-port-max", &max]);
    tenant_with_extensions(&db, 3).await;

    let call = call(&node, 1001, "8;PCMA");
    // Each side was sent to the media node (loopback here, on its RTP ports), not to the other.
    assert_eq!(call.caller_got.0, "127.0.0.1");
    assert_eq!(call.callee_got.0, "127.0.0.1");
    assert!(
        in_rtp_range(call.caller_got.1),
        "the caller's answer: {:?}",
        call.caller_got
    );
    assert!(
        in_rtp_range(call.callee_got.1),
        "the callee's offer: {:?}",
        call.callee_got
    );
    assert_ne!(call.caller_got.1, call.callee_media_port);
    assert_ne!(call.callee_got.1, call.caller_media_port);
    assert_ne!(call.caller_got.1, call.callee_got.1, "one port pair per leg");
    // The hold re-INVITE and its answer were anchored too, on the same port pairs.
    assert_eq!(call.callee_got_on_hold, call.callee_got);
    assert_eq!(call.caller_got_on_hold, call.caller_got);

    // The media node counted both directions: the caller's audio reached the callee, whose
    // echo came back.
    let stream = call_stream(&db, "1001").await;
    let held: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE stream_id = $1 AND event_type = 'CallHeld')")
            .bind(&stream)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(held, "the hold is in the call's stream");
    let media = ended_media(&db, &stream).await;
    assert_eq!(media.len(), 2, "{media:?}");
    let leg: String = sqlx::query_scalar(
        "SELECT payload->>'leg_id' FROM events WHERE stream_id = $1 AND event_type = 'CallAnswered'",
    )
    .bind(&stream)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let callee_side = media
        .iter()
        .find(|m| m.0 == leg)
        .expect("the answered leg's statistics");
    let caller_side = media.iter().find(|m| m.0 != leg).unwrap();
    assert!(
        caller_side.1 > 0,
        "the caller's packets reached the media node: {media:?}"
    );
    assert!(callee_side.2 > 0, "and were relayed to the callee: {media:?}");
    assert!(callee_side.1 > 0, "the callee's echo reached the media node: {media:?}");
    assert!(caller_side.2 > 0, "and was relayed to the caller: {media:?}");
    assert_eq!((caller_side.3.as_str(), callee_side.3.as_str()), ("PCMA", "PCMA"));

    // The CDR's leg shows the same counters.
    let call_id = stream.trim_start_matches("call-").to_string();
    until(
        &db.pool,
        30,
        &format!(
            "SELECT EXISTS (SELECT 1 FROM rm_cdr_legs WHERE call_id = '{call_id}' AND leg_id = '{leg}' \
             AND codec IS NOT NULL)"
        ),
    )
    .await;
    let (received, sent): (i64, i64) = sqlx::query_as(
        "SELECT packets_received, packets_sent FROM rm_cdr_legs WHERE call_id::text = $1 AND leg_id::text = $2",
    )
    .bind(&call_id)
    .bind(&leg)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((received, sent), (callee_side.1, callee_side.2));
    // And the caller's side is a leg of its own.
    let (kind, received, sent): (String, i64, i64) = sqlx::query_as(
        "SELECT kind, packets_received, packets_sent FROM rm_cdr_legs WHERE call_id::text = $1 AND leg_id::text = $2",
    )
    .bind(&call_id)
    .bind(&caller_side.0)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (kind.as_str(), received, sent),
        ("caller", caller_side.1, caller_side.2)
    );

    // A callee that answers PCMU to the caller's PCMA: the media node transcodes both ways.
    let transcoded = self::call(&node, 1002, "0;PCMU");
    assert!(in_rtp_range(transcoded.caller_got.1) && in_rtp_range(transcoded.callee_got.1));
    let stream = call_stream(&db, "1002").await;
    let media = ended_media(&db, &stream).await;
    let codecs: Vec<&str> = media.iter().map(|m| m.3.as_str()).collect();
    assert!(codecs.contains(&"PCMA") && codecs.contains(&"PCMU"), "{media:?}");
    assert!(
        media.iter().all(|m| m.1 > 0 && m.2 > 0),
        "both directions flowed through the transcoder: {media:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_media_node_never_fails_a_call() {
    let db = TestDb::new().await.unwrap();
    // Nothing listens on the discard port's TCP side of loopback.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap().to_string();
    drop(closed);
    let node = start_with(&db, &["--sip-media-control", &address]);
    tenant_with_extensions(&db, 2).await;

    let call = call(&node, 1001, "8;PCMA");
    // The SDP passed through: each side was sent straight to the other.
    assert_eq!(call.caller_got.1, call.callee_media_port);
    assert_eq!(call.callee_got.1, call.caller_media_port);
    assert_eq!(call.caller_got_on_hold.1, call.callee_media_port);
    assert_eq!(call.callee_got_on_hold.1, call.caller_media_port);
    let stream = call_stream(&db, "1001").await;
    assert!(
        ended_media(&db, &stream).await.is_empty(),
        "nothing anchored, nothing counted"
    );
}
