//! The projection runner: exactly-once batches, resume from the checkpoint, rebuild equality.

// Tests stand in for the binary: they may read the clock.
#![allow(clippy::disallowed_methods)]

use chrono::Utc;
use commands::directory;
use commands::testing::TestDb;
use commands::{CommandContext, CommandHandler, EventStore};
use domain::extension::ExtensionCommand;
use domain::tenant::{Limits, TenantCommand};
use projections::directory::{dump, Directory};
use projections::Runner;
use uuid::Uuid;

fn ctx() -> CommandContext {
    CommandContext::new(Uuid::new_v4(), "test", "n", Utc::now())
}

#[tokio::test]
async fn the_directory_follows_the_log_resumes_and_equals_a_rebuild() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let handler = CommandHandler::new(store.clone());
    let tenant = Uuid::new_v4();
    directory::create_tenant(&handler, &ctx(), tenant, "Acme", "dir.test", Limits::default())
        .await
        .unwrap();
    let alice = Uuid::new_v4();
    directory::provision_extension(&handler, &ctx(), tenant, alice, "1001", "Alice", "password-1")
        .await
        .unwrap();

    let mut runner = Runner::new(store.clone(), Directory).batch_size(2);
    assert_eq!(runner.catch_up().await.unwrap(), 4);
    assert_eq!(runner.catch_up().await.unwrap(), 0, "nothing is applied twice");

    // More events; a new runner (as after a restart) resumes at the checkpoint.
    directory::provision_extension(&handler, &ctx(), tenant, Uuid::new_v4(), "1002", "Bob", "password-2")
        .await
        .unwrap();
    directory::extension_command(
        &handler,
        &ctx(),
        tenant,
        alice,
        ExtensionCommand::Disable { reason: "left".into() },
    )
    .await
    .unwrap();
    directory::tenant_command(
        &handler,
        &ctx(),
        tenant,
        TenantCommand::Rename {
            name: "Acme Ltd".into(),
        },
    )
    .await
    .unwrap();
    let mut restarted = Runner::new(store.clone(), Directory);
    assert_eq!(restarted.catch_up().await.unwrap(), 4);

    let (name, count): (String, i32) =
        sqlx::query_as("SELECT name, extension_count FROM rm_tenants WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((name.as_str(), count), ("Acme Ltd", 2));
    let enabled: bool = sqlx::query_scalar("SELECT enabled FROM rm_extensions WHERE extension_id = $1")
        .bind(alice)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!enabled);

    let live = dump(&db.pool).await.unwrap();
    restarted.reset().await.unwrap();
    assert!(dump(&db.pool).await.unwrap().is_empty());
    restarted.catch_up().await.unwrap();
    assert_eq!(dump(&db.pool).await.unwrap(), live, "a rebuild gives the same rows");
}
