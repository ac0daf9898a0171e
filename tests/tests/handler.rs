//! The command handler against a real store: idempotent by command id, race-free limits
//! and uniqueness across concurrent commands.

// Tests stand in for the binary: they may read the clock.
#![allow(clippy::disallowed_methods)]

use chrono::Utc;
use commands::directory::{self, DirectoryRejection};
use commands::testing::TestDb;
use commands::{CommandContext, CommandError, CommandHandler, EventStore};
use domain::extension::ExtensionRejection;
use domain::tenant::{Limits, TenantCommand};
use uuid::Uuid;

fn ctx() -> CommandContext {
    CommandContext::new(Uuid::new_v4(), "test", "test-node", Utc::now())
}

async fn tenant(handler: &CommandHandler, domain: &str, max_extensions: u32) -> Uuid {
    let id = Uuid::new_v4();
    let limits = Limits {
        max_extensions,
        max_concurrent_calls: 4,
    };
    directory::create_tenant(handler, &ctx(), id, "Acme", domain, limits)
        .await
        .expect("tenant created");
    id
}

#[tokio::test]
async fn the_same_command_id_twice_has_one_effect() {
    let db = TestDb::new().await.unwrap();
    let handler = CommandHandler::new(EventStore::new(db.pool.clone()));
    let command = ctx();
    let id = Uuid::new_v4();
    let first = directory::create_tenant(&handler, &command, id, "Acme", "acme.test", Limits::default())
        .await
        .unwrap();
    assert!(!first.replayed);
    let second = directory::create_tenant(&handler, &command, id, "Acme", "acme.test", Limits::default())
        .await
        .unwrap();
    assert!(second.replayed, "a retried command is recognised");
    assert_eq!(first.positions, second.positions);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(events, 2, "TenantCreated and SipDomainClaimed, once");

    // A new command id is a new command, and is rejected by the rules.
    let again = directory::create_tenant(&handler, &ctx(), id, "Acme", "acme.test", Limits::default()).await;
    assert!(matches!(again, Err(CommandError::Rejected(_))));
}

#[tokio::test]
async fn two_tenants_cannot_share_a_sip_domain() {
    let db = TestDb::new().await.unwrap();
    let handler = CommandHandler::new(EventStore::new(db.pool.clone()));
    tenant(&handler, "shared.test", 5).await;
    let second = directory::create_tenant(
        &handler,
        &ctx(),
        Uuid::new_v4(),
        "Other",
        "SHARED.test",
        Limits::default(),
    )
    .await;
    assert!(matches!(second, Err(CommandError::Rejected(DirectoryRejection::DomainTaken(d))) if d == "shared.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_provisioning_never_exceeds_the_limit_nor_duplicates_a_number() {
    let db = TestDb::new().await.unwrap();
    let handler = CommandHandler::new(EventStore::new(db.pool.clone()));
    let tenant_id = tenant(&handler, "race.test", 5).await;

    // 12 commands race: numbers 1000..1005 twice each, against a limit of 5.
    let mut tasks = Vec::new();
    for i in 0..12u32 {
        let handler = handler.clone();
        tasks.push(tokio::spawn(async move {
            let number = format!("{}", 1000 + i % 6);
            directory::provision_extension(
                &handler,
                &ctx(),
                tenant_id,
                Uuid::new_v4(),
                &number,
                "x",
                "password-123",
            )
            .await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(CommandError::Rejected(DirectoryRejection::Extension(
                ExtensionRejection::DuplicateNumber(_) | ExtensionRejection::LimitReached(5),
            ))) => {}
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert_eq!(ok, 5, "exactly the limit is provisioned");
    let numbers: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'number' FROM events WHERE event_type = 'ExtensionProvisioned' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut unique = numbers.clone();
    unique.dedup();
    assert_eq!(numbers, unique, "no number twice");
    assert_eq!(numbers.len(), 5);
}

#[tokio::test]
async fn a_suspended_tenant_gets_no_new_extensions() {
    let db = TestDb::new().await.unwrap();
    let handler = CommandHandler::new(EventStore::new(db.pool.clone()));
    let tenant_id = tenant(&handler, "sus.test", 5).await;
    directory::tenant_command(
        &handler,
        &ctx(),
        tenant_id,
        TenantCommand::Suspend {
            reason: "unpaid".into(),
        },
    )
    .await
    .unwrap();
    let refused =
        directory::provision_extension(&handler, &ctx(), tenant_id, Uuid::new_v4(), "1001", "A", "password-1").await;
    assert!(matches!(
        refused,
        Err(CommandError::Rejected(DirectoryRejection::Extension(
            ExtensionRejection::TenantSuspended
        )))
    ));
    directory::tenant_command(&handler, &ctx(), tenant_id, TenantCommand::Resume)
        .await
        .unwrap();
    directory::provision_extension(&handler, &ctx(), tenant_id, Uuid::new_v4(), "1001", "A", "password-1")
        .await
        .unwrap();
}

#[tokio::test]
async fn passwords_are_stored_only_as_ha1() {
    let db = TestDb::new().await.unwrap();
    let handler = CommandHandler::new(EventStore::new(db.pool.clone()));
    let tenant_id = tenant(&handler, "pw.test", 5).await;
    directory::provision_extension(
        &handler,
        &ctx(),
        tenant_id,
        Uuid::new_v4(),
        "1001",
        "A",
        "very-secret-pw",
    )
    .await
    .unwrap();
    let leaked: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE payload::text LIKE '%very-secret-pw%'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(leaked, 0);
    let ha1: String =
        sqlx::query_scalar("SELECT payload->>'ha1_md5' FROM events WHERE event_type = 'ExtensionProvisioned'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        ha1,
        domain::digest::Ha1::compute("1001", "pw.test", "very-secret-pw").md5
    );
}
