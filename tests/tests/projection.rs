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

/// A run of registration events is folded to the last state of each device: the rows are
/// those that applying the events one at a time gives, whatever the batch size.
#[tokio::test]
async fn folded_registration_runs_equal_one_event_at_a_time() {
    use commands::{Expected, Metadata, NewEvent, StreamWrite};
    use domain::registration::{
        stream_id, DeviceRegistered, DeviceRegistrationChanged, DeviceUnregistered, RegistrationEvent, UnregisterReason,
    };
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let handler = CommandHandler::new(store.clone());
    let tenant = Uuid::new_v4();
    directory::create_tenant(&handler, &ctx(), tenant, "Acme", "fold.test", Limits::default())
        .await
        .unwrap();
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let at = |s: i64| chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
    let registered = |ext: Uuid, contact: &str, agent: &str, expires: i64| {
        RegistrationEvent::DeviceRegistered(DeviceRegistered {
            extension_id: ext,
            contact: contact.into(),
            source: "udp:127.0.0.1:5060".into(),
            user_agent: agent.into(),
            expires_at: at(expires),
            node_id: "n".into(),
        })
    };
    let changed = |ext: Uuid, contact: &str, agent: &str, expires: i64| {
        RegistrationEvent::DeviceRegistrationChanged(DeviceRegistrationChanged {
            extension_id: ext,
            contact: contact.into(),
            source: "udp:127.0.0.1:5060".into(),
            user_agent: agent.into(),
            expires_at: at(expires),
            node_id: "n".into(),
        })
    };
    let gone = |ext: Uuid, contact: &str| {
        RegistrationEvent::DeviceUnregistered(DeviceUnregistered {
            extension_id: ext,
            contact: contact.into(),
            reason: UnregisterReason::Removed,
        })
    };
    // Alice's phone registers, changes twice; her softphone comes and goes; Bob's desk phone
    // goes, then comes back; a tenant rename sits in the middle of the run.
    let script = [
        (alice, registered(alice, "sip:a@10.0.0.1", "phone/1", 100)),
        (alice, registered(alice, "sip:a@10.0.0.9", "soft/1", 100)),
        (bob, registered(bob, "sip:b@10.0.0.2", "desk/1", 100)),
        (alice, changed(alice, "sip:a@10.0.0.1", "phone/2", 200)),
        (bob, gone(bob, "sip:b@10.0.0.2")),
        (alice, gone(alice, "sip:a@10.0.0.9")),
        (bob, registered(bob, "sip:b@10.0.0.2", "desk/2", 300)),
        (alice, changed(alice, "sip:a@10.0.0.1", "phone/3", 400)),
    ];
    for (i, (ext, event)) in script.iter().enumerate() {
        if i == 4 {
            directory::tenant_command(
                &handler,
                &ctx(),
                tenant,
                TenantCommand::Rename { name: "Acme 2".into() },
            )
            .await
            .unwrap();
        }
        let write = StreamWrite {
            tenant_id: tenant,
            stream_id: stream_id(ext),
            expected: Expected::Any,
            events: vec![NewEvent::from_domain(Uuid::new_v4(), event, Metadata::default(), at(0))],
        };
        store.append(&[write]).await.unwrap();
    }
    let rows = || async {
        sqlx::query_as::<_, (String, String, i64)>(
            "SELECT contact, user_agent, extract(epoch FROM expires_at)::int8 - 1800000000 FROM rm_registrations \
             WHERE tenant_id = $1 ORDER BY contact",
        )
        .bind(tenant)
        .fetch_all(&db.pool)
        .await
        .unwrap()
    };
    let mut one_by_one = Runner::new(store.clone(), Directory).batch_size(1);
    one_by_one
        .catch_up_to_now(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let expected = vec![
        ("sip:a@10.0.0.1".to_string(), "phone/3".to_string(), 400),
        ("sip:b@10.0.0.2".to_string(), "desk/2".to_string(), 300),
    ];
    assert_eq!(rows().await, expected);
    let single = dump(&db.pool).await.unwrap();

    let mut folded = Runner::new(store.clone(), Directory).batch_size(500);
    folded.reset().await.unwrap();
    assert!(rows().await.is_empty());
    folded.catch_up().await.unwrap();
    assert_eq!(rows().await, expected);
    assert_eq!(dump(&db.pool).await.unwrap(), single, "the same rows, byte for byte");
}

/// A projection that skips some payloads still sees every event, in order, and moves its
/// checkpoint past them; only the payloads it declared it never reads are missing.
#[tokio::test]
async fn skipped_payloads_arrive_as_null_and_the_checkpoint_moves_past_them() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<(String, serde_json::Value)>>>);
    impl projections::runner::Projection for Seen {
        fn name(&self) -> &'static str {
            "seen"
        }
        fn version(&self) -> i32 {
            1
        }
        fn tables(&self) -> &'static [&'static str] {
            &[]
        }
        fn skips_payloads(&self) -> &'static [&'static str] {
            &["TenantRenamed"]
        }
        async fn apply(
            &self,
            _conn: &mut sqlx::PgConnection,
            events: &[commands::RecordedEvent],
        ) -> Result<(), projections::runner::ProjectionError> {
            let mut seen = self.0.lock().unwrap();
            seen.extend(events.iter().map(|e| (e.event_type.clone(), e.payload.clone())));
            Ok(())
        }
    }
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let handler = CommandHandler::new(store.clone());
    let tenant = Uuid::new_v4();
    directory::create_tenant(&handler, &ctx(), tenant, "Acme", "skip.test", Limits::default())
        .await
        .unwrap();
    directory::tenant_command(
        &handler,
        &ctx(),
        tenant,
        TenantCommand::Rename { name: "Acme 2".into() },
    )
    .await
    .unwrap();
    let seen = Seen::default();
    let mut runner = Runner::new(store.clone(), seen.clone()).batch_size(1);
    // The fence is cluster-wide (other tests' transactions hold it): wait past it first.
    let applied = runner
        .catch_up_to_now(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let all = store.read_all(commands::Cursor::START, 100, None).await.unwrap();
    assert_eq!(applied as usize, all.len());
    let got = seen.0.lock().unwrap().clone();
    assert_eq!(got.len(), all.len(), "every event is delivered");
    for ((event_type, payload), stored) in got.iter().zip(&all) {
        assert_eq!(event_type, &stored.event_type);
        if event_type == "TenantRenamed" {
            assert_eq!(payload, &serde_json::Value::Null);
        } else {
            assert_eq!(payload, &stored.payload);
            assert_ne!(payload, &serde_json::Value::Null);
        }
    }
    assert!(got.iter().any(|(t, _)| t == "TenantRenamed"));
    assert_eq!(runner.checkpoint().await.unwrap(), all.last().unwrap().cursor());
    assert_eq!(runner.catch_up().await.unwrap(), 0, "nothing is applied twice");
}
