//! The location table against a real Postgres: what counts as created, changed, refreshed.

use chrono::{DateTime, Duration, Utc};
use commands::testing::TestDb;
use gateway::location::{Binding, Location, LocationError, Saved, MAX_BINDINGS_PER_EXTENSION};
use uuid::Uuid;

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
}

fn binding(tenant: Uuid, ext: Uuid, contact: &str, source: &str, expires_at: DateTime<Utc>) -> Binding {
    Binding {
        tenant_id: tenant,
        extension_id: ext,
        contact: contact.into(),
        source: source.into(),
        call_id: "c1".into(),
        cseq: 1,
        user_agent: "phone/1.0".into(),
        expires_at,
        node_id: "n1".into(),
    }
}

#[tokio::test]
async fn created_refreshed_changed_removed_and_expired() {
    let db = TestDb::new().await.unwrap();
    let location = Location::new(db.pool.clone());
    let (tenant, ext) = (Uuid::new_v4(), Uuid::new_v4());
    let b = binding(tenant, ext, "sip:1001@10.0.0.5:5060", "udp:10.0.0.5:5060", t(3600));

    assert_eq!(location.save(&b, t(0)).await.unwrap(), Saved::Created);
    let mut refresh = b.clone();
    refresh.expires_at = t(7200);
    refresh.cseq = 2;
    assert_eq!(location.save(&refresh, t(100)).await.unwrap(), Saved::Refreshed);
    let mut moved = refresh.clone();
    moved.source = "udp:10.0.0.9:5060".into();
    assert_eq!(location.save(&moved, t(200)).await.unwrap(), Saved::Changed);
    let mut restarted = moved.clone();
    restarted.call_id = "c2".into();
    restarted.cseq = 1;
    assert_eq!(
        location.save(&restarted, t(250)).await.unwrap(),
        Saved::Refreshed,
        "a restarted phone with a new Call-ID but the same place and software is a refresh"
    );
    let stored = location.bindings(tenant, ext, t(255)).await.unwrap();
    assert_eq!(
        (stored[0].call_id.as_str(), stored[0].cseq),
        ("c2", 1),
        "the table follows the new Call-ID, so its CSeq order starts over"
    );
    let mut upgraded = restarted.clone();
    upgraded.user_agent = "phone/2.0".into();
    assert_eq!(location.save(&upgraded, t(260)).await.unwrap(), Saved::Changed);
    assert_eq!(location.save(&upgraded, t(270)).await.unwrap(), Saved::Refreshed);

    // Another tenant's extension with the same contact is another binding.
    let other = binding(Uuid::new_v4(), ext, &b.contact, &b.source, t(3600));
    assert_eq!(location.save(&other, t(0)).await.unwrap(), Saved::Created);
    assert_eq!(location.bindings(tenant, ext, t(300)).await.unwrap().len(), 1);

    assert!(location.remove(tenant, ext, &b.contact, t(300)).await.unwrap());
    assert!(!location.remove(tenant, ext, &b.contact, t(300)).await.unwrap());

    // A lapsed binding is purged once, and re-registering it counts as created.
    let short = binding(tenant, ext, "sip:1001@10.0.0.7", "tcp:10.0.0.7:40000", t(60));
    location.save(&short, t(0)).await.unwrap();
    assert!(location.bindings(tenant, ext, t(61)).await.unwrap().is_empty());
    let purged = location.purge_expired(t(61), 100).await.unwrap();
    assert_eq!(purged.len(), 1);
    assert!(location.purge_expired(t(61), 100).await.unwrap().is_empty());
    assert_eq!(
        location.save(&short, t(62) - Duration::seconds(0)).await.unwrap(),
        Saved::Created
    );
}

#[tokio::test]
async fn an_extension_cannot_register_without_bound() {
    let db = TestDb::new().await.unwrap();
    let location = Location::new(db.pool.clone());
    let (tenant, ext) = (Uuid::new_v4(), Uuid::new_v4());
    for i in 0..MAX_BINDINGS_PER_EXTENSION {
        let b = binding(tenant, ext, &format!("sip:1001@10.0.0.{i}"), "udp:x", t(3600));
        location.save(&b, t(0)).await.unwrap();
    }
    let extra = binding(tenant, ext, "sip:1001@10.0.1.1", "udp:x", t(3600));
    assert!(matches!(
        location.save(&extra, t(0)).await,
        Err(LocationError::TooManyBindings)
    ));
    // Refreshing an existing one still works; a wildcard removal clears them all.
    let again = binding(tenant, ext, "sip:1001@10.0.0.0", "udp:x", t(7200));
    assert_eq!(location.save(&again, t(1)).await.unwrap(), Saved::Refreshed);
    // One that lapsed is a new device again: refused while the others are live.
    let short = binding(tenant, ext, "sip:1001@10.0.0.1", "udp:x", t(10));
    assert_eq!(location.save(&short, t(2)).await.unwrap(), Saved::Refreshed);
    let extra_live = binding(tenant, ext, "sip:1001@10.0.1.2", "udp:x", t(3600));
    assert!(matches!(location.save(&extra_live, t(11)).await, Ok(Saved::Created)));
    let revived = binding(tenant, ext, "sip:1001@10.0.0.1", "udp:x", t(3600));
    assert!(matches!(
        location.save(&revived, t(12)).await,
        Err(LocationError::TooManyBindings)
    ));
    location.remove(tenant, ext, &extra_live.contact, t(12)).await.unwrap();
    assert_eq!(
        location.remove_all(tenant, ext, t(2)).await.unwrap().len(),
        MAX_BINDINGS_PER_EXTENSION as usize
    );
}

/// Saves and reads sent at once go through the batchers: every save gets its own answer
/// (created, then refreshed or changed in the order sent for one extension), the device
/// limit still holds inside one burst, and each read sees only its own extension.
#[tokio::test]
async fn a_burst_of_saves_and_reads_gets_each_answer_right() {
    let db = TestDb::new().await.unwrap();
    let location = Location::new(db.pool.clone());
    let tenant = Uuid::new_v4();
    let extensions: Vec<Uuid> = (0..300).map(|_| Uuid::new_v4()).collect();

    // 300 extensions at once, each with a first save, a refresh and a move in turn (as the
    // registrar sends them), so the batches mix extensions at every stage.
    let mut saves = Vec::new();
    for (i, ext) in extensions.iter().enumerate() {
        let contact = format!("sip:{i}@10.1.0.1");
        let first = binding(tenant, *ext, &contact, "udp:10.1.0.1:5060", t(3600));
        let mut refresh = first.clone();
        refresh.cseq = 2;
        refresh.expires_at = t(3700);
        let mut moved = refresh.clone();
        moved.source = "udp:10.1.0.2:5060".into();
        let location = location.clone();
        saves.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for (b, at) in [(first, t(0)), (refresh, t(1)), (moved, t(2))] {
                answers.push(location.save(&b, at).await.unwrap());
            }
            answers
        }));
    }
    for save in saves {
        assert_eq!(save.await.unwrap(), [Saved::Created, Saved::Refreshed, Saved::Changed]);
    }

    // The limit inside one burst: twelve devices of one extension at once, ten get in.
    let crowded = Uuid::new_v4();
    let mut burst = Vec::new();
    for i in 0..12 {
        let location = location.clone();
        let b = binding(tenant, crowded, &format!("sip:x@10.2.0.{i}"), "udp:x", t(3600));
        burst.push(tokio::spawn(async move { location.save(&b, t(0)).await }));
    }
    let mut refused = 0;
    for save in burst {
        match save.await.unwrap() {
            Ok(saved) => assert_eq!(saved, Saved::Created),
            Err(LocationError::TooManyBindings) => refused += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(refused, 12 - MAX_BINDINGS_PER_EXTENSION);

    let mut reads = Vec::new();
    for ext in extensions.iter().copied().chain([crowded]) {
        let location = location.clone();
        reads.push(tokio::spawn(async move {
            (ext, location.bindings(tenant, ext, t(10)).await)
        }));
    }
    for read in reads {
        let (ext, found) = read.await.unwrap();
        let found = found.unwrap();
        assert!(found.iter().all(|b| b.extension_id == ext && b.tenant_id == tenant));
        let expected = if ext == crowded {
            MAX_BINDINGS_PER_EXTENSION as usize
        } else {
            1
        };
        assert_eq!(found.len(), expected);
        if ext != crowded {
            assert_eq!(found[0].source, "udp:10.1.0.2:5060");
        }
    }
    // A read at a later time sees nothing lapsed.
    assert!(location
        .bindings(tenant, extensions[0], t(3701))
        .await
        .unwrap()
        .is_empty());
}

/// The batchers keep their own connections (sqlx pings every connection a pool takes back).
/// When Postgres closes one, the batch on it fails, and the next batch runs on a new one.
#[tokio::test]
async fn the_batchers_replace_a_connection_postgres_closed() {
    use sqlx::{Connection, PgConnection};
    let db = TestDb::new().await.unwrap();
    let location = Location::new(db.pool.clone());
    let (tenant, ext) = (Uuid::new_v4(), Uuid::new_v4());
    let b = binding(tenant, ext, "sip:1001@10.0.0.5:5060", "udp:10.0.0.5:5060", t(3600));
    assert_eq!(location.save(&b, t(0)).await.unwrap(), Saved::Created);
    assert_eq!(location.bindings(tenant, ext, t(1)).await.unwrap().len(), 1);

    // The backends whose last statement touched sip_bindings are the batchers' two.
    let mut admin = PgConnection::connect(&db.url).await.unwrap();
    let kept: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() AND query LIKE '%sip_bindings%'",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(kept.len(), 2, "one connection for reads, one for saves");
    for pid in &kept {
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert!(ended);
    }
    // Wait (bounded) until both backends are gone, so the next statements meet closed sockets.
    for attempt in 0.. {
        let alive: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
            .bind(&kept)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        if alive == 0 {
            break;
        }
        assert!(attempt < 500, "terminated backends still alive");
        tokio::task::yield_now().await;
        sqlx::query("SELECT pg_sleep(0.01)").execute(&mut admin).await.unwrap();
    }

    let mut refresh = b.clone();
    refresh.cseq = 2;
    assert!(matches!(
        location.save(&refresh, t(10)).await,
        Err(LocationError::Sql(_))
    ));
    assert!(matches!(
        location.bindings(tenant, ext, t(10)).await,
        Err(LocationError::Sql(_))
    ));
    // Each batcher took a new connection after its error.
    refresh.cseq = 3;
    assert_eq!(location.save(&refresh, t(11)).await.unwrap(), Saved::Refreshed);
    let found = location.bindings(tenant, ext, t(12)).await.unwrap();
    assert_eq!((found.len(), found[0].cseq), (1, 3));
}
