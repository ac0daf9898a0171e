//! The SIP node's memory of the location table against a real Postgres: every change to the
//! table, whoever makes it, is heard and forgets its extension; a lost listening connection
//! forgets everything until the node listens again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use commands::testing::TestDb;
use gateway::binding_cache::{BindingCache, CacheConfig, CacheStatus};
use gateway::location::{Binding, Location, Saved};
use gateway::sip::registrar;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
}

fn binding(tenant: Uuid, ext: Uuid, contact: &str, node: &str) -> Binding {
    Binding {
        tenant_id: tenant,
        extension_id: ext,
        contact: contact.into(),
        source: "udp:10.0.0.5:5060".into(),
        call_id: "c1".into(),
        cseq: 1,
        user_agent: "phone/1.0".into(),
        expires_at: t(3600),
        node_id: node.into(),
    }
}

fn started(db: &TestDb) -> BindingCache {
    BindingCache::start(
        db.pool.clone(),
        CacheConfig {
            ttl: chrono::Duration::hours(1),
            max_entries: 100,
        },
    )
}

/// Waits (bounded) until the listener's status satisfies `ready`.
async fn until_status(cache: &BindingCache, what: &str, ready: impl FnMut(&CacheStatus) -> bool) -> CacheStatus {
    let mut status = cache.status();
    let reached = match tokio::time::timeout(Duration::from_secs(20), status.wait_for(ready)).await {
        Ok(Ok(status)) => *status,
        _ => panic!("the cache never got to: {what} (now {:?})", *cache.status().borrow()),
    };
    reached
}

/// Reads the extension's bindings through `location` into the cache, as the SIP shell does.
async fn remember(cache: &BindingCache, location: &Location, tenant: Uuid, ext: Uuid) -> usize {
    let ticket = cache.begin_read(ext).expect("listening, with room");
    let found = location.bindings(tenant, ext, t(0)).await.unwrap();
    let found: Vec<registrar::Binding> = found
        .into_iter()
        .map(|b| registrar::Binding {
            contact: b.contact,
            expires_at: b.expires_at,
            call_id: b.call_id,
            cseq: u32::try_from(b.cseq).unwrap(),
            source: b.source,
            user_agent: b.user_agent,
        })
        .collect();
    cache.fill(ticket, Some((&found, 1)), t(0));
    cache.get(ext, t(1)).expect("just read").0.len()
}

#[tokio::test]
async fn every_change_to_the_table_is_heard_and_forgets_only_its_extension() {
    let db = TestDb::new().await.unwrap();
    let location = Location::new(db.pool.clone());
    let tenant = Uuid::new_v4();
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for ext in [a, b, c] {
        let saved = location
            .save(&binding(tenant, ext, "sip:p@10.0.0.5", "node-a"), t(0))
            .await;
        assert_eq!(saved.unwrap(), Saved::Created);
    }
    let cache = started(&db);
    let mut heard = until_status(&cache, "listening", |s| s.listening).await.notices;
    for ext in [a, b, c] {
        assert_eq!(remember(&cache, &location, tenant, ext).await, 1);
    }

    // Another node saves a binding of `a`: `a` is forgotten, `b` and `c` are kept.
    let other_node = Location::new(db.pool.clone());
    let saved = other_node
        .save(&binding(tenant, a, "sip:q@10.0.0.6", "node-b"), t(5))
        .await
        .unwrap();
    assert_eq!(saved, Saved::Created);
    heard = until_status(&cache, "hearing the save", |s| s.notices > heard)
        .await
        .notices;
    assert!(cache.get(a, t(6)).is_none(), "the save of another node is heard");
    assert!(cache.get(b, t(6)).is_some() && cache.get(c, t(6)).is_some());
    assert_eq!(
        remember(&cache, &location, tenant, a).await,
        2,
        "a new read sees the change"
    );

    // An operator's statement is heard as well as a node's.
    let mut admin = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("DELETE FROM sip_bindings WHERE extension_id = $1")
        .bind(b)
        .execute(&mut admin)
        .await
        .unwrap();
    heard = until_status(&cache, "hearing the delete", |s| s.notices > heard)
        .await
        .notices;
    assert!(cache.get(b, t(6)).is_none());
    assert!(cache.get(a, t(6)).is_some() && cache.get(c, t(6)).is_some());

    // A purge of lapsed bindings too.
    assert_eq!(location.purge_expired(t(4000), 10).await.unwrap().len(), 3);
    until_status(&cache, "hearing the purge", |s| s.notices > heard).await;
    // One notice per extension: wait for the last of them, then everything is forgotten.
    for ext in [a, c] {
        while cache.get(ext, t(6)).is_some() {
            let before = cache.status().borrow().notices;
            until_status(&cache, "hearing the rest of the purge", |s| s.notices > before).await;
        }
    }

    // A TRUNCATE forgets every extension.
    let d = Uuid::new_v4();
    assert_eq!(remember(&cache, &location, tenant, d).await, 0);
    let heard = cache.status().borrow().notices;
    sqlx::query("TRUNCATE sip_bindings").execute(&mut admin).await.unwrap();
    until_status(&cache, "hearing the truncate", |s| s.notices > heard).await;
    assert!(cache.is_empty());
    assert!(cache.status().borrow().listening);
}

#[tokio::test]
async fn a_lost_listener_forgets_everything_and_listens_again() {
    let db = TestDb::new().await.unwrap();
    let location = Location::new(db.pool.clone());
    let (tenant, ext) = (Uuid::new_v4(), Uuid::new_v4());
    location
        .save(&binding(tenant, ext, "sip:p@10.0.0.5", "node-a"), t(0))
        .await
        .unwrap();
    let cache = started(&db);
    until_status(&cache, "listening", |s| s.listening).await;
    assert_eq!(remember(&cache, &location, tenant, ext).await, 1);

    let mut admin = PgConnection::connect(&db.url).await.unwrap();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(ended, vec![true], "one listening connection");
    let status = until_status(&cache, "listening again after the loss", |s| {
        s.losses >= 1 && s.listening
    })
    .await;
    assert_eq!(status.losses, 1);
    assert!(
        cache.get(ext, t(1)).is_none(),
        "what was known before the loss is forgotten"
    );

    // Listening again, it hears changes again.
    assert_eq!(remember(&cache, &location, tenant, ext).await, 1);
    let heard = cache.status().borrow().notices;
    location.remove(tenant, ext, "sip:p@10.0.0.5", t(2)).await.unwrap();
    until_status(&cache, "hearing the removal", |s| s.notices > heard).await;
    assert!(cache.get(ext, t(3)).is_none());
}

#[tokio::test]
async fn with_no_time_to_live_nothing_listens_and_nothing_is_kept() {
    let db = TestDb::new().await.unwrap();
    let cache = BindingCache::start(
        db.pool.clone(),
        CacheConfig {
            ttl: chrono::Duration::zero(),
            max_entries: 100,
        },
    );
    assert!(cache.begin_read(Uuid::new_v4()).is_none());
    assert!(!cache.status().borrow().listening);
}
