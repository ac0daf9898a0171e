//! Append semantics: expected versions, idempotent retries, validation, atomic batches.

use commands::testing::TestDb;
use commands::{EventStore, Expected, StoreError, StreamWrite};
use ledgerline_tests::{rename_event, within};
use serde_json::json;
use uuid::Uuid;

fn write(tenant: Uuid, stream: &str, expected: Expected, labels: &[&str]) -> StreamWrite {
    StreamWrite {
        tenant_id: tenant,
        stream_id: stream.into(),
        expected,
        events: labels.iter().map(|l| rename_event(l)).collect(),
    }
}

async fn count(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_appends_at_the_same_expected_version_one_wins() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let tenant = Uuid::new_v4();
    store
        .append(&[write(tenant, "s", Expected::NoStream, &["a"])])
        .await
        .unwrap();

    for round in 0..20 {
        let version = 1 + round as u64;
        let a = [write(tenant, "s", Expected::Exact(version), &["x"])];
        let b = [write(tenant, "s", Expected::Exact(version), &["y"])];
        let (ra, rb) = tokio::join!(store.append(&a), store.append(&b));
        let wins = [ra.is_ok(), rb.is_ok()].iter().filter(|ok| **ok).count();
        assert_eq!(wins, 1, "round {round}: exactly one append wins");
        let loser = if ra.is_ok() { rb } else { ra };
        assert!(
            matches!(loser, Err(StoreError::Conflict { .. })),
            "the other gets Conflict: {loser:?}"
        );
    }
    let versions: Vec<i64> = sqlx::query_scalar("SELECT stream_version FROM events WHERE stream_id = 's' ORDER BY 1")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(versions, (1..=21).collect::<Vec<i64>>());
}

#[tokio::test]
async fn a_new_stream_is_created_once() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let tenant = Uuid::new_v4();
    store
        .append(&[write(tenant, "n", Expected::NoStream, &["a"])])
        .await
        .unwrap();
    let again = store.append(&[write(tenant, "n", Expected::NoStream, &["b"])]).await;
    assert!(matches!(again, Err(StoreError::Conflict { .. })));
    let stale = store.append(&[write(tenant, "n", Expected::Exact(5), &["c"])]).await;
    assert!(matches!(stale, Err(StoreError::Conflict { .. })));
    // The same stream name in another tenant is another stream.
    store
        .append(&[write(Uuid::new_v4(), "n", Expected::NoStream, &["d"])])
        .await
        .unwrap();
    assert_eq!(count(&db).await, 2);
}

#[tokio::test]
async fn a_retried_append_writes_nothing_new_and_returns_the_original_positions() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let tenant = Uuid::new_v4();
    let batch = vec![
        write(tenant, "a", Expected::NoStream, &["1", "2"]),
        write(tenant, "b", Expected::Any, &["3"]),
    ];
    let first = store.append(&batch).await.unwrap();
    assert!(!first.already_stored);
    assert_eq!(first.positions.len(), 3);
    let retry = store.append(&batch).await.unwrap();
    assert!(retry.already_stored);
    assert_eq!(retry.positions, first.positions);
    assert_eq!(count(&db).await, 3);

    // Reusing one id with another event is refused, and nothing is written.
    let mut mixed = write(tenant, "b", Expected::Any, &["4", "5"]);
    mixed.events[0].event_id = batch[0].events[0].event_id;
    let refused = store.append(&[mixed]).await;
    assert!(
        matches!(refused, Err(StoreError::IdempotencyMismatch(_))),
        "{refused:?}"
    );
    assert_eq!(count(&db).await, 3);
}

#[tokio::test]
async fn invalid_events_are_rejected_with_a_clear_error_and_nothing_is_written() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let tenant = Uuid::new_v4();

    let mut unknown = write(tenant, "s", Expected::Any, &["ok", "bad"]);
    unknown.events[1].event_type = "TenantTeleported".into();
    let err = store.append(&[unknown]).await.unwrap_err();
    assert!(
        err.to_string().contains("unknown event type `TenantTeleported`"),
        "{err}"
    );

    let mut malformed = write(tenant, "s", Expected::Any, &["ok"]);
    malformed.events[0].payload = json!({"name": 42});
    let err = store.append(&[malformed]).await.unwrap_err();
    assert!(err.to_string().contains("does not match its schema"), "{err}");

    let mut extra = write(tenant, "s", Expected::Any, &["ok"]);
    extra.events[0].payload = json!({"name": "x", "admin": true});
    assert!(matches!(
        store.append(&[extra]).await,
        Err(StoreError::InvalidEvent { .. })
    ));

    let mut version = write(tenant, "s", Expected::Any, &["ok"]);
    version.events[0].schema_version = 9;
    let err = store.append(&[version]).await.unwrap_err();
    assert!(err.to_string().contains("no schema version 9"), "{err}");

    let mut nul = write(tenant, "s", Expected::Any, &["ok"]);
    nul.events[0].payload = json!({"name": "a\u{0}b"});
    assert!(matches!(
        store.append(&[nul]).await,
        Err(StoreError::InvalidEvent { .. })
    ));

    let bad_stream = write(tenant, "has space", Expected::Any, &["ok"]);
    assert!(matches!(
        store.append(&[bad_stream]).await,
        Err(StoreError::InvalidAppend(_))
    ));

    // A good stream beside a bad one: the whole append is refused.
    let good = write(tenant, "good", Expected::NoStream, &["fine"]);
    let mut bad = write(tenant, "bad", Expected::NoStream, &["x"]);
    bad.events[0].event_type = "Nope".into();
    assert!(store.append(&[good, bad]).await.is_err());

    assert_eq!(count(&db).await, 0);
    let streams: i64 = sqlx::query_scalar("SELECT count(*) FROM streams")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(streams, 0);
}

#[tokio::test]
async fn a_multi_stream_append_is_all_or_nothing() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let tenant = Uuid::new_v4();
    store
        .append(&[write(tenant, "x", Expected::NoStream, &["1"])])
        .await
        .unwrap();
    // "y" is new, but "x" is not at version 7: neither is written.
    let result = store
        .append(&[
            write(tenant, "y", Expected::NoStream, &["a"]),
            write(tenant, "x", Expected::Exact(7), &["b"]),
        ])
        .await;
    assert!(matches!(result, Err(StoreError::Conflict { ref stream_id, .. }) if stream_id == "x"));
    assert_eq!(count(&db).await, 1);
    assert!(store.read_stream(tenant, "y").await.unwrap().is_empty());
}

#[tokio::test]
async fn events_cannot_be_updated_or_deleted_through_sql() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    store
        .append(&[write(Uuid::new_v4(), "s", Expected::NoStream, &["a"])])
        .await
        .unwrap();
    let update = sqlx::query("UPDATE events SET payload = '{}'").execute(&db.pool).await;
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = sqlx::query("DELETE FROM events").execute(&db.pool).await;
    assert!(delete.unwrap_err().to_string().contains("append-only"));
}

#[tokio::test]
async fn an_open_transaction_that_holds_the_fence_is_reported() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let tenant = Uuid::new_v4();
    store
        .append(&[write(tenant, "before", Expected::NoStream, &["a"])])
        .await
        .unwrap();

    let mut open = db.pool.begin().await.unwrap();
    store
        .append_in(&mut open, &[write(tenant, "held", Expected::NoStream, &["b"])])
        .await
        .unwrap();
    let open_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *open)
        .await
        .unwrap();
    // Committed after the open one started: readable by position, but behind the fence.
    store
        .append(&[write(tenant, "after", Expected::NoStream, &["c"])])
        .await
        .unwrap();

    // xmin is cluster-wide: other tests' transactions may hold the fence too, briefly.
    let visible = store.read_all(commands::Cursor::START, 100, None).await.unwrap();
    assert!(
        visible.iter().all(|e| e.stream_id == "before"),
        "nothing that committed after the open transaction began is readable"
    );
    let holder = within(30, "our open transaction to be reported as the holder", async {
        loop {
            if let Some(holder) = store.fence_holder().await.unwrap() {
                if holder.pid == open_pid {
                    return holder;
                }
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(holder.events_waiting >= 1);

    open.commit().await.unwrap();
    within(30, "every event to become readable", async {
        while store.read_all(commands::Cursor::START, 100, None).await.unwrap().len() < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// The backend that waits behind `holder`, once it waits, and whether it has a
/// transaction id while it waits.
async fn waiter_behind(db: &TestDb, holder: i32) -> bool {
    within(30, "an append to wait behind the open transaction", async {
        loop {
            let row: Option<(bool,)> = sqlx::query_as(
                "SELECT backend_xid IS NULL FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid)) LIMIT 1",
            )
            .bind(holder)
            .fetch_optional(&db.pool)
            .await
            .unwrap();
            if let Some((no_xid,)) = row {
                return no_xid;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

/// Subscribers read in transaction-id order: a batch that waits for a stream another
/// transaction is writing must not hold a transaction id yet, or its later version of
/// that stream would be read before the earlier one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waiting_for_a_stream_has_no_transaction_id_yet() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let tenant = Uuid::new_v4();

    let mut open = db.pool.begin().await.unwrap();
    store
        .append_in(&mut open, &[write(tenant, "shared", Expected::Any, &["first"])])
        .await
        .unwrap();
    let open_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *open)
        .await
        .unwrap();

    // "a-own" sorts before "shared": the old protocol wrote it (and took an id) first.
    let batch = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append(&[
                    write(tenant, "a-own", Expected::Any, &["own"]),
                    write(tenant, "shared", Expected::Any, &["second"]),
                ])
                .await
        })
    };
    assert!(
        waiter_behind(&db, open_pid).await,
        "the waiting batch already holds a transaction id"
    );
    open.commit().await.unwrap();
    batch.await.unwrap().unwrap();

    // Subscribers read in (tx_id, global_position) order (behind the cluster-wide fence,
    // which other tests' transactions may hold: the order itself is read here).
    let shared = in_subscription_order(&db, tenant, "shared").await;
    assert_eq!(shared, vec![1, 2], "the subscription order follows the stream order");
}

/// A caller's transaction that has an id before it appends (it wrote something first)
/// cannot be reordered: when a younger transaction wrote the stream meanwhile, the append
/// is a conflict to retry, never a later version read before an earlier one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_transaction_appending_after_a_younger_one_is_a_conflict() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let tenant = Uuid::new_v4();

    let mut older = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *older)
        .await
        .unwrap();
    let mut younger = db.pool.begin().await.unwrap();
    store
        .append_in(&mut younger, &[write(tenant, "shared", Expected::Any, &["young"])])
        .await
        .unwrap();
    let younger_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *younger)
        .await
        .unwrap();

    let waiting = {
        let store = store.clone();
        tokio::spawn(async move {
            let result = store
                .append_in(&mut older, &[write(tenant, "shared", Expected::Any, &["old"])])
                .await;
            if result.is_ok() {
                older.commit().await.unwrap();
            }
            result
        })
    };
    waiter_behind(&db, younger_pid).await;
    younger.commit().await.unwrap();
    let err = waiting.await.unwrap().unwrap_err();
    assert!(err.is_conflict(), "expected a conflict, got {err}");

    assert_eq!(in_subscription_order(&db, tenant, "shared").await, vec![1]);
    // A retry in a fresh transaction succeeds, after the younger one.
    store
        .append(&[write(tenant, "shared", Expected::Any, &["old"])])
        .await
        .unwrap();
    assert_eq!(in_subscription_order(&db, tenant, "shared").await, vec![1, 2]);
}

/// A stream's versions in the order subscribers read the log.
async fn in_subscription_order(db: &TestDb, tenant: Uuid, stream: &str) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT stream_version FROM events WHERE tenant_id = $1 AND stream_id = $2 ORDER BY tx_id, global_position",
    )
    .bind(tenant)
    .bind(stream)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// Several `Any` writes in one append (new and existing streams, beside a `NoStream` one)
/// move their stream heads in one statement; versions and the hash chain hold.
#[tokio::test]
async fn any_writes_in_one_append_keep_versions_and_the_chain() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let tenant = Uuid::new_v4();
    store
        .append(&[write(tenant, "old", Expected::Any, &["o1", "o2"])])
        .await
        .unwrap();
    let appended = store
        .append(&[
            write(tenant, "old", Expected::Any, &["o3"]),
            write(tenant, "new", Expected::Any, &["n1", "n2"]),
            write(tenant, "exact", Expected::NoStream, &["e1"]),
        ])
        .await
        .unwrap();
    assert_eq!(appended.stream_versions, vec![3, 2, 1]);
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT stream_id, stream_version FROM events WHERE tenant_id = $1 ORDER BY stream_id, stream_version",
    )
    .bind(tenant)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let versions = |s: &str| rows.iter().filter(|r| r.0 == s).map(|r| r.1).collect::<Vec<_>>();
    assert_eq!(versions("old"), vec![1, 2, 3]);
    assert_eq!(versions("new"), vec![1, 2]);
    let report = commands::audit::verify(&store, Some(tenant)).await.unwrap();
    assert_eq!((report.streams, report.events), (3, 6));
    assert!(report.first_break.is_none(), "{:?}", report.first_break);
}

/// A filtered read covers the same window as an unfiltered one, returns only what the filter
/// keeps, and says where the window ended, so a follower moves past the rest.
#[tokio::test]
async fn a_filtered_read_skips_the_rest_of_its_window_and_says_where_it_ended() {
    use commands::subscription::{Subscription, SubscriptionOptions};
    use commands::{Cursor, EventFilter};
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let tenant = Uuid::new_v4();
    for i in 0..6 {
        store
            .append(&[write(tenant, &format!("noise-{i}"), Expected::Any, &["n"])])
            .await
            .unwrap();
    }
    store
        .append(&[write(tenant, "wanted-1", Expected::Any, &["w1"])])
        .await
        .unwrap();
    // The fence is cluster-wide (other tests' transactions may hold it): wait until all 7
    // events are past it; they stay past it.
    let all = within(30, "the 7 events pass the fence", async {
        loop {
            let all = store.read_all(Cursor::START, 100, None).await.unwrap();
            if all.len() == 7 {
                return all;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let wanted = EventFilter {
        event_types: Vec::new(),
        stream_prefix: "wanted-".into(),
    };
    // A window of 5 holds only noise: nothing kept, and the cursor can move to its end.
    let first = store
        .read_all_filtered(Cursor::START, 5, None, &wanted)
        .await
        .unwrap()
        .expect("a window");
    assert!(first.events.is_empty());
    assert_eq!((first.window_end, first.scanned), (all[4].cursor(), 5));
    // The next window holds the wanted event.
    let second = store
        .read_all_filtered(first.window_end, 5, None, &wanted)
        .await
        .unwrap()
        .expect("a window");
    assert_eq!(second.events.len(), 1);
    assert_eq!(second.events[0].event_id, all[6].event_id);
    assert_eq!(second.events[0].payload, all[6].payload);
    assert_eq!((second.window_end, second.scanned), (all[6].cursor(), 2));
    assert!(store
        .read_all_filtered(second.window_end, 5, None, &wanted)
        .await
        .unwrap()
        .is_none());
    // By type: nothing of another type is kept, whatever the window.
    let other_type = EventFilter {
        event_types: vec!["TenantSuspended".into()],
        stream_prefix: String::new(),
    };
    let none = store
        .read_all_filtered(Cursor::START, 100, None, &other_type)
        .await
        .unwrap()
        .expect("a window");
    assert!(none.events.is_empty());
    assert_eq!(none.window_end, all[6].cursor());

    // A filtered subscription with small windows delivers each wanted event once, in order,
    // across windows of noise, including events committed after it started.
    let mut subscription = Subscription::start(
        store.clone(),
        Cursor::START,
        SubscriptionOptions {
            batch_size: 2,
            filter: Some(wanted),
            ..SubscriptionOptions::default()
        },
    )
    .await
    .unwrap();
    let got = within(30, "the first wanted event", subscription.next()).await;
    assert_eq!(got.unwrap().unwrap().event_id, all[6].event_id);
    for i in 6..11 {
        store
            .append(&[write(tenant, &format!("noise-{i}"), Expected::Any, &["n"])])
            .await
            .unwrap();
    }
    let later = write(tenant, "wanted-2", Expected::Any, &["w2"]);
    let later_id = later.events[0].event_id;
    store.append(&[later]).await.unwrap();
    let got = within(30, "the second wanted event", subscription.next()).await;
    assert_eq!(got.unwrap().unwrap().event_id, later_id);
}
