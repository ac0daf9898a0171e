//! The hash chain: an untouched log verifies; one altered payload is found and named.

// Tests stand in for the binary: they may read the clock.
#![allow(clippy::disallowed_methods)]

use chrono::Utc;
use commands::audit::verify;
use commands::directory;
use commands::testing::TestDb;
use commands::{CommandContext, CommandHandler, EventStore};
use domain::tenant::{Limits, TenantCommand};
use uuid::Uuid;

#[tokio::test]
async fn tampering_with_one_payload_is_found_and_named() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let handler = CommandHandler::new(store.clone());
    let ctx = || CommandContext::new(Uuid::new_v4(), "test", "n", Utc::now());
    let tenant = Uuid::new_v4();
    directory::create_tenant(&handler, &ctx(), tenant, "Acme", "acme.test", Limits::default())
        .await
        .unwrap();
    for name in ["B", "C", "D"] {
        directory::tenant_command(&handler, &ctx(), tenant, TenantCommand::Rename { name: name.into() })
            .await
            .unwrap();
    }
    let clean = verify(&store, None).await.unwrap();
    assert_eq!((clean.events, clean.streams), (5, 2));
    assert!(clean.first_break.is_none());

    // An attacker with superuser rights rewrites the second rename.
    let target: (Uuid, i64) = sqlx::query_as(
        "SELECT event_id, global_position FROM events WHERE event_type = 'TenantRenamed' ORDER BY stream_version OFFSET 1 LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE events SET payload = '{\"name\": \"Mallory\"}' WHERE event_id = $1")
        .bind(target.0)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let report = verify(&store, None).await.unwrap();
    let broken = report.first_break.expect("the tampering is found");
    assert_eq!(broken.event_id, Some(target.0));
    assert_eq!(broken.global_position, Some(target.1));
    // Another tenant's chains are not affected.
    assert!(verify(&store, Some(Uuid::new_v4()))
        .await
        .unwrap()
        .first_break
        .is_none());
}

#[tokio::test]
async fn a_deleted_tail_event_is_found_through_the_stream_head() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let handler = CommandHandler::new(store.clone());
    let tenant = Uuid::new_v4();
    let ctx = || CommandContext::new(Uuid::new_v4(), "test", "n", Utc::now());
    directory::create_tenant(&handler, &ctx(), tenant, "Acme", "tail.test", Limits::default())
        .await
        .unwrap();
    directory::tenant_command(&handler, &ctx(), tenant, TenantCommand::Rename { name: "Z".into() })
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DELETE FROM events WHERE event_type = 'TenantRenamed'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let broken = verify(&store, None).await.unwrap().first_break.expect("found");
    assert!(broken.reason.contains("stream head"), "{}", broken.reason);
}
