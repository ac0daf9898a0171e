//! The registrar on the wire: sipp registers extensions with digest auth against a live
//! `ledgerline up`; refreshes stay silent in the log; wrong passwords and unknown users get
//! the same answer; a replayed authorization is refused.
#![allow(clippy::disallowed_methods)] // A test reads the clock to bound what the node granted.

mod common;

use commands::testing::TestDb;
use common::{sipp, sipp_at, start, start_with, tenant_with_extensions, until};

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

    // Register again from another address under a new Call-ID (the phone moved: one event),
    // then refresh within that Call-ID (no event).
    let refresh = vec![user_line(1000, "pass-1000")];
    assert!(sipp_at(&node, "127.0.0.2", "reg_refresh.xml", &refresh, 1));
    until(
        &db.pool,
        30,
        "SELECT count(*) = 1 FROM events WHERE event_type = 'DeviceRegistrationChanged'",
    )
    .await;
    // The refresh (CSeq 4) came right after the move's 200. Had its bindings been read after
    // the move's save landed, it was a quiet refresh and wrote nothing (the row keeps the
    // move's CSeq 2); read while that save was in flight, it is written. Either way the row
    // holds one of the two, and the log nothing for the refresh (counted below).
    let cseq: i64 = sqlx::query_scalar("SELECT cseq FROM sip_bindings WHERE contact LIKE '%1000@%'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        cseq == 2 || cseq == 4,
        "CSeq {cseq} is neither the move's nor the refresh's"
    );
    // A sentinel registration after the refresh: once its event is in, the refresh's would be too.
    assert!(sipp(&node, "reg_auth.xml", &[user_line(1010, "pass-1010")], 1));
    until(
        &db.pool,
        30,
        "SELECT count(*) = 11 FROM events WHERE event_type = 'DeviceRegistered'",
    )
    .await;
    assert_eq!(
        registration_events(&db).await,
        12,
        "11 devices, 1 change, and nothing for the refresh"
    );
    // The live view of registered devices follows the log, with the phones' User-Agent.
    until(
        &db.pool,
        30,
        "SELECT count(*) = 11 FROM rm_registrations WHERE user_agent = 'bars-sipp'",
    )
    .await;

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
            let contact = format!("sip:{user}@{}", self.socket.local_addr().unwrap());
            self.register_contact(user, call_id, cseq, authorization, &contact)
        }

        /// A REGISTER binding `contact`, which need not be this client's own address.
        pub fn register_contact(
            &self,
            user: &str,
            call_id: &str,
            cseq: u32,
            authorization: Option<&str>,
            contact: &str,
        ) -> String {
            self.branch.set(self.branch.get() + 1);
            let local = self.socket.local_addr().unwrap();
            let auth = authorization
                .map(|a| format!("Authorization: {a}\r\n"))
                .unwrap_or_default();
            format!(
                "REGISTER sip:acme.test SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKprobe{}{}\r\n\
                 From: <sip:{user}@acme.test>;tag=t{cseq}\r\nTo: <sip:{user}@acme.test>\r\nCall-ID: {call_id}\r\n\
                 CSeq: {cseq} REGISTER\r\nContact: <{contact}>\r\nMax-Forwards: 70\r\nExpires: 600\r\n\
                 {auth}Content-Length: 0\r\n\r\n",
                self.branch.get(),
                call_id
            )
        }

        /// From now on, talk to `node` (from the same socket: a phone whose DNS picked
        /// another node).
        pub fn switch_to(&mut self, node: SocketAddr) {
            self.node = node;
        }

        pub fn local_addr(&self) -> SocketAddr {
            self.socket.local_addr().unwrap()
        }

        pub fn contact(&self, user: &str) -> String {
            format!("sip:{user}@{}", self.socket.local_addr().unwrap())
        }

        /// Challenged, then authorized with nonce count 1: the final answer.
        pub async fn register_with_password(&self, user: &str, password: &str, call_id: &str, contact: &str) -> Reply {
            let challenge = self.send(&self.register_contact(user, call_id, 1, None, contact)).await;
            let auth = authorization(&challenge, user, password, "00000001");
            self.send(&self.register_contact(user, call_id, 2, Some(&auth), contact))
                .await
        }

        pub async fn send(&self, message: &str) -> Reply {
            self.exchange(message, Duration::from_secs(5))
                .await
                .expect("the node answers within 5 s")
        }

        /// Sends and waits briefly: `None` when no answer comes (a blocked source).
        pub async fn try_send(&self, message: &str) -> Option<Reply> {
            self.exchange(message, Duration::from_secs(2)).await
        }

        async fn exchange(&self, message: &str, wait: Duration) -> Option<Reply> {
            self.socket.send_to(message.as_bytes(), self.node).await.unwrap();
            let mut buffer = vec![0u8; 65_535];
            let (n, _) = tokio::time::timeout(wait, self.socket.recv_from(&mut buffer))
                .await
                .ok()?
                .unwrap();
            let text = String::from_utf8_lossy(&buffer[..n]).to_string();
            let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            Some(Reply { status, text })
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_through_another_node_is_written_by_that_node() {
    let db = TestDb::new().await.unwrap();
    let a = start_with(&db, &["--node-id", "node-a"]);
    tenant_with_extensions(&db, 1).await;
    let b = start_with(&db, &["--node-id", "node-b"]);
    let mut phone = raw::Client::new(a.sip).await;
    let contact = phone.contact("1000");
    let first = phone
        .register_with_password("1000", "pass-1000", "boot-1", &contact)
        .await;
    assert_eq!(first.status, 200, "{}", first.text);
    until(&db.pool, 30, "SELECT node_id = 'node-a' FROM sip_bindings").await;

    // Seconds later, from the same socket, through the other node: nothing a reader of the
    // log can see changed, but the binding node A wrote is not node B's to keep unwritten.
    phone.switch_to(b.sip);
    let again = phone
        .register_with_password("1000", "pass-1000", "boot-1b", &contact)
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(
        contact_expiry(&again.text),
        600,
        "written, so granted in full: {}",
        again.text
    );
    until(
        &db.pool,
        30,
        "SELECT node_id = 'node-b' AND call_id = 'boot-1b' FROM sip_bindings",
    )
    .await;
    assert_eq!(
        registration_events(&db).await,
        1,
        "a refresh is no event, whichever node writes it"
    );
}

/// A node answers an unchanged refresh from the bindings it last read (no read at all), and
/// forgets them when another node changes the table: a phone that moves to node B and back
/// is written again by node A, not answered from A's memory of its own old binding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_forgets_the_bindings_another_node_changed() {
    let db = TestDb::new().await.unwrap();
    // A's directory answers outlive the test: a directory miss reads the bindings afresh,
    // which would hide a node that never forgets them.
    let a = start_with(&db, &["--node-id", "node-a", "--sip-directory-ttl-ms", "120000"]);
    tenant_with_extensions(&db, 1).await;
    let b = start_with(&db, &["--node-id", "node-b"]);
    let mut phone = raw::Client::new(a.sip).await;
    let contact = phone.contact("1000");
    let first = phone
        .register_with_password("1000", "pass-1000", "boot-1", &contact)
        .await;
    assert_eq!(contact_expiry(&first.text), 600, "{}", first.text);
    // The save's event is written after its row: then the save is over.
    until(
        &db.pool,
        30,
        "SELECT count(*) = 1 FROM events WHERE event_type = 'DeviceRegistered'",
    )
    .await;
    // Quiet refreshes through A: the first reads the table, the next stand on what it read.
    for call_id in ["boot-1a", "boot-1b", "boot-1c"] {
        let quiet = phone
            .register_with_password("1000", "pass-1000", call_id, &contact)
            .await;
        assert!(contact_expiry(&quiet.text) < 600, "a quiet refresh: {}", quiet.text);
    }

    phone.switch_to(b.sip);
    let moved = phone
        .register_with_password("1000", "pass-1000", "boot-2", &contact)
        .await;
    assert_eq!(contact_expiry(&moved.text), 600, "{}", moved.text);
    until(
        &db.pool,
        30,
        "SELECT node_id = 'node-b' AND call_id = 'boot-2' FROM sip_bindings",
    )
    .await;

    // Back through A: once A has heard of B's save (a notice from Postgres, in flight for
    // a moment after the commit), A reads the table again and writes the binding as its own.
    // Without the notice A would answer from its memory until the entry's 30 s ran out.
    phone.switch_to(a.sip);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let back = phone
            .register_with_password("1000", "pass-1000", &format!("boot-3-{attempt}"), &contact)
            .await;
        assert_eq!(back.status, 200, "{}", back.text);
        if contact_expiry(&back.text) == 600 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node A still answers from what it read before node B's save"
        );
    }
    until(
        &db.pool,
        30,
        &format!("SELECT node_id = 'node-a' AND call_id = 'boot-3-{attempt}' FROM sip_bindings"),
    )
    .await;
    assert_eq!(
        registration_events(&db).await,
        1,
        "moving between nodes from the same socket is no event"
    );
}

/// A REGISTER is answered once its binding is stored: when the table refuses the write, the
/// phone gets 500 with Retry-After (and tries again), not a 200 for a binding that is not
/// there; a 200 means the row is already in the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_is_answered_only_once_its_binding_is_stored() {
    let db = TestDb::new().await.unwrap();
    let node = start(&db);
    tenant_with_extensions(&db, 1).await;
    sqlx::query("ALTER TABLE sip_bindings ADD CONSTRAINT test_refuses CHECK (call_id <> 'refused')")
        .execute(&db.pool)
        .await
        .unwrap();
    let phone = raw::Client::new(node.sip).await;
    let contact = phone.contact("1000");
    let refused = phone
        .register_with_password("1000", "pass-1000", "refused", &contact)
        .await;
    assert_eq!(refused.status, 500, "{}", refused.text);
    assert!(refused.text.contains("\r\nRetry-After: 5\r\n"), "{}", refused.text);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM sip_bindings")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);

    let accepted = phone
        .register_with_password("1000", "pass-1000", "accepted", &contact)
        .await;
    assert_eq!(accepted.status, 200, "{}", accepted.text);
    // No waiting: the answer came after the save.
    let call_id: String = sqlx::query_scalar("SELECT call_id FROM sip_bindings")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(call_id, "accepted");
    until(
        &db.pool,
        30,
        "SELECT count(*) = 1 FROM events WHERE event_type = 'DeviceRegistered'",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_phone_refreshes_silently_and_a_moved_one_is_an_event() {
    let db = TestDb::new().await.unwrap();
    let node = start(&db);
    tenant_with_extensions(&db, 1).await;
    let phone = raw::Client::new(node.sip).await;
    let contact = phone.contact("1000");
    let first = phone
        .register_with_password("1000", "pass-1000", "boot-1", &contact)
        .await;
    assert_eq!(first.status, 200, "{}", first.text);
    until(
        &db.pool,
        30,
        "SELECT count(*) = 1 FROM events WHERE event_type = 'DeviceRegistered'",
    )
    .await;

    // The phone restarts: a new Call-ID with CSeq starting over, same contact, same socket.
    let asked_at = chrono::Utc::now();
    let again = phone
        .register_with_password("1000", "pass-1000", "boot-2", &contact)
        .await;
    assert_eq!(
        again.status, 200,
        "a new Call-ID may start its CSeq over: {}",
        again.text
    );
    // A quiet refresh (nothing a reader can see changed, and the stored binding has almost
    // all of its 600 s left): answered from the table, which is not written, with what the
    // stored binding has left rather than the 600 s asked for.
    let granted = contact_expiry(&again.text);
    assert!(
        (540..=600).contains(&granted),
        "granted {granted} s of the 600 asked: {}",
        again.text
    );
    let (call_id, expires_at): (String, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT call_id, expires_at FROM sip_bindings")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(call_id, "boot-1", "the quiet refresh wrote nothing");
    assert!(
        expires_at >= asked_at + chrono::Duration::seconds(i64::from(granted)),
        "the table holds at least what was granted: {expires_at} for {granted} s asked at {asked_at}"
    );

    // The same contact now reached through another address (a NAT rebinding): one event.
    let moved = raw::Client::new(node.sip).await;
    let answer = moved
        .register_with_password("1000", "pass-1000", "boot-3", &contact)
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    until(
        &db.pool,
        30,
        "SELECT count(*) = 1 FROM events WHERE event_type = 'DeviceRegistrationChanged'",
    )
    .await;
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE stream_id LIKE 'registration-%' ORDER BY global_position",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        kinds,
        ["DeviceRegistered", "DeviceRegistrationChanged"],
        "the restart wrote nothing"
    );
    let source: String = sqlx::query_scalar("SELECT source FROM sip_bindings")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        source,
        moved.local_addr().to_string(),
        "the binding follows the new address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_block_the_source_and_the_block_is_an_event() {
    let db = TestDb::new().await.unwrap();
    let node = start_with(&db, &["--sip-block-after", "3", "--sip-block-for-secs", "600"]);
    tenant_with_extensions(&db, 1).await;
    let client = raw::Client::new(node.sip).await;
    for attempt in 0..3 {
        let call_id = format!("guess-{attempt}");
        let challenge = client.send(&client.register("1000", &call_id, 1, None)).await;
        let auth = raw::authorization(&challenge, "1000", "guess-password", "00000001");
        let answer = client.send(&client.register("1000", &call_id, 2, Some(&auth))).await;
        assert_eq!(answer.status, 401);
    }
    until(
        &db.pool,
        30,
        "SELECT count(*) = 1 FROM events WHERE event_type = 'SourceBlocked' AND payload->>'ip' = '127.0.0.1' \
         AND stream_id = 'sip-abuse-127.0.0.1'",
    )
    .await;
    // Blocked: even the right password gets no answer now.
    assert!(
        client
            .try_send(&client.register("1000", "honest", 1, None))
            .await
            .is_none(),
        "a blocked source is not answered"
    );
}

/// How many events the registration streams hold.
async fn registration_events(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id LIKE 'registration-%'")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// The `expires` parameter of the one Contact in a 200 to a REGISTER.
fn contact_expiry(response: &str) -> u32 {
    let contact = response
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("contact:"))
        .unwrap_or_else(|| panic!("no Contact in {response}"));
    let (_, expires) = contact
        .split_once("expires=")
        .unwrap_or_else(|| panic!("no expires in {contact}"));
    expires
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("bad expires in {contact}"))
}
