//! The subscription never skips or duplicates an event, even when a transaction that
//! took an early position commits after many later ones; a naive reader does skip it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use commands::subscription::{Subscription, SubscriptionOptions};
use commands::testing::TestDb;
use commands::{Cursor, EventStore, Expected, StreamWrite};
use ledgerline_tests::{rename_event, within};
use rand::{Rng, SeedableRng};
use sqlx::Row;
use tokio::sync::watch;
use uuid::Uuid;

const WRITERS: usize = 8;
const EVENTS_PER_WRITER: usize = 2_000;
const STREAMS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscription_gets_every_event_once_in_stream_order_despite_a_late_commit() {
    let db = TestDb::new().await.expect("test database");
    let store = EventStore::new(db.pool.clone());
    let tenant = Uuid::new_v4();

    let mut subscription = Subscription::start(
        store.clone(),
        Cursor::START,
        SubscriptionOptions {
            poll_interval: Duration::from_millis(200),
            ..SubscriptionOptions::default()
        },
    )
    .await
    .expect("subscription");

    // The naive reader: `global_position > last`, publishing how far it got.
    let (naive_tx, mut naive_rx) = watch::channel(0i64);
    let naive_pool = db.pool.clone();
    let naive = tokio::spawn(async move {
        let mut last = 0i64;
        let mut seen = HashSet::new();
        loop {
            let rows = sqlx::query(
                "SELECT global_position, event_id, event_type FROM events WHERE global_position > $1 ORDER BY global_position LIMIT 1000",
            )
            .bind(last)
            .fetch_all(&naive_pool)
            .await
            .expect("naive read");
            let mut done = false;
            for row in rows {
                last = row.get("global_position");
                seen.insert(row.get::<Uuid, _>("event_id"));
                done |= row.get::<String, _>("event_type") == "TenantResumed";
            }
            let _ = naive_tx.send(last);
            if done {
                return seen;
            }
            tokio::task::yield_now().await;
        }
    });

    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let written = written.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(w as u64);
            let mut left = EVENTS_PER_WRITER;
            let mut ids = Vec::new();
            while left > 0 {
                let n = rng.random_range(1..=5).min(left);
                let stream = format!("overlap-{}", rng.random_range(0..STREAMS));
                let events: Vec<_> = (0..n).map(|i| rename_event(&format!("w{w}-{left}-{i}"))).collect();
                ids.extend(events.iter().map(|e| e.event_id));
                store
                    .append(&[StreamWrite {
                        tenant_id: tenant,
                        stream_id: stream,
                        expected: Expected::Any,
                        events,
                    }])
                    .await
                    .expect("append");
                left -= n;
                written.fetch_add(n as u64, Ordering::Relaxed);
            }
            ids
        }));
    }

    // The late transaction: it takes a position early, while the writers run, and
    // commits only after the naive reader has moved past that position.
    while written.load(Ordering::Relaxed) < 1_000 {
        tokio::task::yield_now().await;
    }
    let late = rename_event("late");
    let late_id = late.event_id;
    let mut tx = db.pool.begin().await.expect("begin");
    let appended = store
        .append_in(
            &mut tx,
            &[StreamWrite {
                tenant_id: tenant,
                stream_id: "late-stream".into(),
                expected: Expected::NoStream,
                events: vec![late],
            }],
        )
        .await
        .expect("late append");
    let late_position = appended.positions[0];
    // The scenario: the transaction stays open for a second…
    tokio::time::sleep(Duration::from_secs(1)).await;
    // …and until the naive reader has passed its position (it will, writers keep committing).
    within(
        60,
        "the naive reader to pass the late position",
        naive_rx.wait_for(|p| *p > late_position),
    )
    .await
    .expect("naive reader alive");
    tx.commit().await.expect("late commit");

    let mut expected_ids: HashSet<Uuid> = HashSet::new();
    for writer in writers {
        expected_ids.extend(writer.await.expect("writer"));
    }
    expected_ids.insert(late_id);
    assert_eq!(expected_ids.len(), WRITERS * EVENTS_PER_WRITER + 1);

    // A sentinel after everything, so both readers know when to stop.
    let mut sentinel = rename_event("sentinel");
    sentinel.event_type = "TenantResumed".into();
    sentinel.payload = serde_json::json!({});
    let sentinel_id = sentinel.event_id;
    store
        .append(&[StreamWrite {
            tenant_id: tenant,
            stream_id: "sentinel".into(),
            expected: Expected::NoStream,
            events: vec![sentinel],
        }])
        .await
        .expect("sentinel");

    let mut received = Vec::new();
    let mut versions: HashMap<String, i64> = HashMap::new();
    within(120, "the subscription to deliver the sentinel", async {
        loop {
            let event = subscription
                .next()
                .await
                .expect("subscription open")
                .expect("subscription read");
            let last = versions.entry(event.stream_id.clone()).or_insert(0);
            assert_eq!(
                event.stream_version,
                *last + 1,
                "stream {} must arrive contiguous",
                event.stream_id
            );
            *last = event.stream_version;
            let done = event.event_id == sentinel_id;
            received.push(event.event_id);
            if done {
                break;
            }
        }
    })
    .await;

    let unique: HashSet<Uuid> = received.iter().copied().collect();
    assert_eq!(unique.len(), received.len(), "an event was delivered twice");
    expected_ids.insert(sentinel_id);
    assert_eq!(unique, expected_ids, "the subscription lost or invented events");
    assert!(unique.contains(&late_id), "the late commit was skipped");

    let naive_seen = within(60, "the naive reader to finish", naive)
        .await
        .expect("naive task");
    assert!(
        !naive_seen.contains(&late_id),
        "the naive reader was expected to skip the late commit (this proves the test can fail)"
    );
    assert!(naive_seen.len() < expected_ids.len());
}

/// When the process closes its pool (shutdown), a subscription reports it once and ends,
/// instead of reporting the closed pool in a loop.
#[tokio::test]
async fn a_subscription_ends_when_its_pool_is_closed() {
    let db = TestDb::new().await.expect("test database");
    let pool = commands::db::connect(&db.url, 4).await.expect("pool");
    let store = EventStore::new(pool.clone());
    let mut subscription = Subscription::start(
        store,
        Cursor::START,
        SubscriptionOptions {
            poll_interval: Duration::from_millis(50),
            ..SubscriptionOptions::default()
        },
    )
    .await
    .expect("subscription");
    pool.close().await;
    let mut errors = 0;
    within(30, "the subscription to end", async {
        while let Some(next) = subscription.next().await {
            assert!(next.is_err(), "nothing was appended: only the error may arrive");
            errors += 1;
        }
    })
    .await;
    assert_eq!(errors, 1, "the closed pool is reported once");
}
