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
