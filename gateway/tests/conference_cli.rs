//! `ledgerline conference create|list` as a user runs it: real process, real Postgres.

mod common;

use commands::testing::TestDb;
use common::{ledgerline, ok, stderr};
use uuid::Uuid;

#[tokio::test]
async fn conference_rooms_through_the_cli() {
    let db = TestDb::new().await.unwrap();
    let tenant = ok(ledgerline(
        &db,
        &["tenant", "create", "--name", "Acme", "--domain", "conf.test"],
    ))
    .trim()
    .to_string();
    let owner = Uuid::from_u128(77).to_string();
    let create = |extra: &[&str]| {
        let mut args = vec![
            "conference",
            "create",
            "--tenant",
            &tenant,
            "--owner-account",
            &owner,
            "--name",
            "Weekly",
            "--host-code",
            "1234",
            "--guest-code",
            "5678",
        ];
        args.extend_from_slice(extra);
        ledgerline(&db, &args)
    };
    let room = ok(create(&["--moderated", "--max", "10", "--record", "--number", "7000"]))
        .trim()
        .to_string();
    Uuid::parse_str(&room).expect("conference create prints the room id");

    // Bad input is refused with a clear error and changes nothing.
    let bad = ledgerline(
        &db,
        &[
            "conference",
            "create",
            "--tenant",
            &tenant,
            "--owner-account",
            &owner,
            "--host-code",
            "12a",
            "--guest-code",
            "5678",
        ],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("host code"), "{}", stderr(&bad));
    // A room needs a tenant that exists.
    let nobody = Uuid::from_u128(5).to_string();
    let orphan = ledgerline(
        &db,
        &[
            "conference",
            "create",
            "--tenant",
            &nobody,
            "--owner-account",
            &owner,
            "--host-code",
            "111",
            "--guest-code",
            "222",
        ],
    );
    assert_eq!(orphan.status.code(), Some(2));
    assert!(stderr(&orphan).contains("no such tenant"));

    let list = ok(ledgerline(&db, &["conference", "list", "--tenant", &tenant]));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(lines[1].starts_with(&room), "{list}");
    assert!(lines[1].contains("7000") && lines[1].contains("yes"), "{list}");
    // Another tenant sees none of it.
    let other = ok(ledgerline(&db, &["conference", "list", "--tenant", &nobody]));
    assert_eq!(other.lines().count(), 1, "{other}");
}

#[tokio::test]
async fn the_media_role_runs_alone_and_answers_its_control_protocol() {
    use std::process::{Command, Stdio};
    let db = TestDb::new().await.unwrap();
    let data = std::env::temp_dir().join(format!("ledgerline-media-role-{}", Uuid::new_v4()));
    let mut media = Command::new(common::BIN)
        .args([
            "media",
            "--media-control-bind",
            "127.0.0.1:0",
            "--rtp-port-min",
            "0",
            "--rtp-port-max",
            "0",
        ])
        .arg("--data-dir")
        .arg(&data)
        .env("DATABASE_URL", &db.url)
        .env("LEDGERLINE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = media.stdout.take().unwrap();
    let banner = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains("stop with Ctrl-C");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    })
    .join()
    .unwrap();
    let control: std::net::SocketAddr = banner
        .iter()
        .find_map(|l| l.split("listening on tcp ").nth(1))
        .unwrap_or_else(|| panic!("{banner:?}"))
        .trim()
        .parse()
        .unwrap();
    let (client, _events) = media::control::Client::connect(control).await.unwrap();
    let phone = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\n",
        phone.local_addr().unwrap().port()
    );
    let call = Uuid::new_v4();
    let offer = client.offer(call, Uuid::new_v4(), Uuid::new_v4(), &sdp).await.unwrap();
    assert!(offer.contains("c=IN IP4 127.0.0.1"), "{offer}");
    assert!(client
        .offer(Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), "garbage")
        .await
        .is_err());
    assert_eq!(client.delete(call).await.unwrap().len(), 2);
    // Ctrl-C stops it cleanly.
    // SAFETY: signalling our own child by its pid.
    unsafe {
        libc::kill(media.id() as i32, libc::SIGINT);
    }
    assert!(media.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(data);
}
