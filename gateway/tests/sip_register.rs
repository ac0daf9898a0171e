//! The registrar on the wire: sipp registers extensions with digest auth against a live
//! `ledgerline up`; refreshes stay silent in the log; wrong passwords and unknown users get
//! the same answer; a replayed authorization is refused.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

mod common;

use commands::testing::TestDb;
use common::{ledgerline, ok, until, BIN};

struct Node {
    child: Child,
    sip: SocketAddr,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(db: &TestDb) -> Node {
    let mut child = Command::new(BIN)
        .args([
            "up",
            "--sip-bind",
            "127.0.0.1:0",
            "--http-bind",
            "127.0.0.1:0",
            "--sip-secret",
            "test-secret",
        ])
        .env("DATABASE_URL", &db.url)
        .env("LEDGERLINE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut sip = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(addr) = line.trim().strip_prefix("sip: listening on udp+tcp ") {
            sip = Some(addr.parse().unwrap());
        }
        if line.contains("stop with Ctrl-C") {
            break;
        }
    }
    Node {
        child,
        sip: sip.expect("up prints where SIP listens"),
    }
}

/// A tenant `acme.test` with extensions 1000..1000+n, password `pass-<number>`.
async fn tenant_with_extensions(db: &TestDb, n: u32) -> String {
    let out = ok(ledgerline(
        db,
        &[
            "tenant",
            "create",
            "--name",
            "Acme",
            "--domain",
            "acme.test",
            "--max-extensions",
            "100",
        ],
    ));
    let tenant = out.trim().to_string();
    for number in 1000..1000 + n {
        let number = number.to_string();
        ok(ledgerline(
            db,
            &[
                "extension",
                "add",
                "--tenant",
                &tenant,
                "--number",
                &number,
                "--password",
                &format!("pass-{number}"),
            ],
        ));
    }
    until(&db.pool, 30, &format!("SELECT count(*) = {n} FROM rm_extensions")).await;
    tenant
}

fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sipp").join(name)
}

/// Run sipp against the node with `lines` as its injection file; true when every call passed.
fn sipp(node: &Node, scenario_file: &str, lines: &[String], calls: usize) -> bool {
    let dir = std::env::temp_dir().join(format!("ledgerline-sipp-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("users.csv");
    std::fs::write(&csv, format!("SEQUENTIAL\n{}\n", lines.join("\n"))).unwrap();
    let status = Command::new("sipp")
        .arg(node.sip.to_string())
        .arg("-sf")
        .arg(scenario(scenario_file))
        .arg("-inf")
        .arg(&csv)
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "-m",
            &calls.to_string(),
            "-r",
            "50",
            "-l",
            "20",
        ])
        .args(["-recv_timeout", "5000", "-timeout", "60", "-nostdin", "-trace_err"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("sipp is installed (apt-get install sip-tester)");
    if !status.success() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_name().to_string_lossy().ends_with("errors.log") {
                eprintln!("{}", std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    status.success()
}

fn user_line(user: u32, password: &str) -> String {
    format!("{user};acme.test;[authentication username={user} password={password}];5080")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_registers_extensions_with_digest_and_refreshes_stay_silent() {
    let db = TestDb::new().await.unwrap();
    let node = start(&db);
    tenant_with_extensions(&db, 11).await;

    let users: Vec<String> = (1000..1010).map(|u| user_line(u, &format!("pass-{u}"))).collect();
    assert!(
        sipp(&node, "reg_auth.xml", &users, 10),
        "every REGISTER with digest succeeds"
    );
    until(&db.pool, 30, "SELECT count(*) = 10 FROM sip_bindings").await;
    until(
        &db.pool,
        30,
        "SELECT count(*) = 10 FROM events WHERE event_type = 'DeviceRegistered'",
    )
    .await;

    // Register again under a new Call-ID (a changed binding: one event), then refresh within
    // that Call-ID (no event).
    let refresh = vec![user_line(1000, "pass-1000")];
    assert!(sipp(&node, "reg_refresh.xml", &refresh, 1));
    until(
        &db.pool,
        30,
        "SELECT count(*) = 1 FROM events WHERE event_type = 'DeviceRegistrationChanged'",
    )
    .await;
    until(
        &db.pool,
        30,
        "SELECT cseq = 4 FROM sip_bindings WHERE contact LIKE '%1000@%'",
    )
    .await;
    // A sentinel registration after the refresh: once its event is in, the refresh's would be too.
    assert!(sipp(&node, "reg_auth.xml", &[user_line(1010, "pass-1010")], 1));
    until(
        &db.pool,
        30,
        "SELECT count(*) = 11 FROM events WHERE event_type = 'DeviceRegistered'",
    )
    .await;
    let registration_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id LIKE 'registration-%'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        registration_events, 12,
        "11 devices, 1 change, and nothing for the refresh"
    );
    // The live view of registered devices follows the log.
    until(&db.pool, 30, "SELECT count(*) = 11 FROM rm_registrations").await;

    // Wrong passwords and unknown users both get a fresh 401, and nothing is bound.
    let wrong = vec![user_line(1001, "not-the-password"), user_line(1777, "pass-1777")];
    assert!(sipp(&node, "reg_wrong.xml", &wrong, 2), "both are challenged again");
    let bindings: i64 = sqlx::query_scalar("SELECT count(*) FROM sip_bindings")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(bindings, 11, "nothing was bound for them");
}

mod raw {
    //! A minimal UDP client speaking just enough SIP to probe the registrar.

    use md5::{Digest, Md5};
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::net::UdpSocket;

    pub struct Client {
        socket: UdpSocket,
        node: SocketAddr,
        branch: std::cell::Cell<u32>,
    }

    pub struct Reply {
        pub status: u16,
        pub text: String,
    }

    impl Reply {
        /// Header names in order, without values: the shape of the response.
        pub fn shape(&self) -> Vec<String> {
            self.text
                .split("\r\n")
                .skip(1)
                .take_while(|l| !l.is_empty())
                .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_ascii_lowercase()))
                .collect()
        }

        /// A parameter of the MD5 challenge.
        pub fn md5_param(&self, name: &str) -> String {
            let line = self
                .text
                .split("\r\n")
                .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:") && l.contains("algorithm=MD5"))
                .unwrap_or_else(|| panic!("no MD5 challenge in {}", self.text));
            let start = line
                .find(&format!("{name}=\""))
                .unwrap_or_else(|| panic!("no {name} in {line}"))
                + name.len()
                + 2;
            line[start..start + line[start..].find('"').unwrap()].to_string()
        }
    }

    impl Client {
        pub async fn new(node: SocketAddr) -> Client {
            Client {
                socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
                node,
                branch: std::cell::Cell::new(0),
            }
        }

        pub fn register(&self, user: &str, call_id: &str, cseq: u32, authorization: Option<&str>) -> String {
            self.branch.set(self.branch.get() + 1);
            let local = self.socket.local_addr().unwrap();
            let auth = authorization
                .map(|a| format!("Authorization: {a}\r\n"))
                .unwrap_or_default();
            format!(
                "REGISTER sip:acme.test SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKprobe{}{}\r\n\
                 From: <sip:{user}@acme.test>;tag=t{cseq}\r\nTo: <sip:{user}@acme.test>\r\nCall-ID: {call_id}\r\n\
                 CSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{local}>\r\nMax-Forwards: 70\r\nExpires: 600\r\n\
                 {auth}Content-Length: 0\r\n\r\n",
                self.branch.get(),
                call_id
            )
        }

        pub async fn send(&self, message: &str) -> Reply {
            self.socket.send_to(message.as_bytes(), self.node).await.unwrap();
            let mut buffer = vec![0u8; 65_535];
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), self.socket.recv_from(&mut buffer))
                .await
                .expect("the node answers within 5 s")
                .unwrap();
            let text = String::from_utf8_lossy(&buffer[..n]).to_string();
            let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            Reply { status, text }
        }
    }

    fn md5_hex(text: &str) -> String {
        hex::encode(Md5::digest(text.as_bytes()))
    }

    /// An MD5 `Authorization` value answering `challenge` for `user`/`password`.
    pub fn authorization(challenge: &Reply, user: &str, password: &str, nc: &str) -> String {
        let realm = challenge.md5_param("realm");
        let nonce = challenge.md5_param("nonce");
        let opaque = challenge.md5_param("opaque");
        let ha1 = md5_hex(&format!("{user}:{realm}:{password}"));
        let ha2 = md5_hex("REGISTER:sip:acme.test");
        let cnonce = "0a4f113b";
        let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"sip:acme.test\", \
             response=\"{response}\", algorithm=MD5, cnonce=\"{cnonce}\", opaque=\"{opaque}\", qop=auth, nc={nc}"
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_look_like_wrong_passwords_and_replays_are_refused() {
    let db = TestDb::new().await.unwrap();
    let node = start(&db);
    tenant_with_extensions(&db, 1).await;
    let client = raw::Client::new(node.sip).await;

    // A known user with a wrong password, and a user that does not exist.
    let mut answers = Vec::new();
    for (user, password) in [("1000", "wrong-password"), ("1999", "pass-1999")] {
        let call_id = format!("probe-{user}");
        let challenge = client.send(&client.register(user, &call_id, 1, None)).await;
        assert_eq!(challenge.status, 401, "{}", challenge.text);
        let auth = raw::authorization(&challenge, user, password, "00000001");
        let answer = client.send(&client.register(user, &call_id, 2, Some(&auth))).await;
        answers.push((challenge, answer));
    }
    let (known, unknown) = (&answers[0], &answers[1]);
    assert_eq!(known.1.status, 401);
    assert_eq!(unknown.1.status, 401, "an unknown user is challenged like a known one");
    assert_eq!(
        known.1.shape(),
        unknown.1.shape(),
        "the same headers, in the same order"
    );
    assert_eq!(known.0.shape(), unknown.0.shape());
    assert_eq!(known.1.md5_param("realm"), unknown.1.md5_param("realm"));
    assert_eq!(known.1.md5_param("opaque"), unknown.1.md5_param("opaque"));

    // The right password registers; the same Authorization replayed in a new request does not.
    let challenge = client.send(&client.register("1000", "good", 1, None)).await;
    let auth = raw::authorization(&challenge, "1000", "pass-1000", "00000001");
    let ok = client.send(&client.register("1000", "good", 2, Some(&auth))).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let replay = client.send(&client.register("1000", "attacker", 7, Some(&auth))).await;
    assert_eq!(replay.status, 401, "a replayed nonce count is refused: {}", replay.text);
    // The honest phone goes on with the next nonce count.
    let next = raw::authorization(&challenge, "1000", "pass-1000", "00000002");
    let refresh = client.send(&client.register("1000", "good", 3, Some(&next))).await;
    assert_eq!(refresh.status, 200, "{}", refresh.text);
}
