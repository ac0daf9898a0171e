//! The batching writer: a burst of small appends costs few transactions, keeps each
//! stream's order, and a bad write fails alone.

use std::collections::HashMap;

use commands::batching::{BatchOptions, BatchingWriter};
use commands::testing::TestDb;
use commands::{EventStore, Expected, StoreError, StreamWrite};
use ledgerline_tests::rename_event;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_calls_costs_few_transactions_and_keeps_stream_order() {
    let db = TestDb::new().await.unwrap();
    let writer = BatchingWriter::spawn(EventStore::new(db.pool.clone()), BatchOptions::default());
    let tenant = Uuid::new_v4();
    const CALLS: usize = 200;
    const STEPS: u64 = 5;
    let mut tasks = Vec::new();
    for c in 0..CALLS {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            // One call's life: each step is appended once the previous one is stored.
            let stream = format!("call-{c}");
            for step in 0..STEPS {
                let expected = if step == 0 {
                    Expected::NoStream
                } else {
                    Expected::Exact(step)
                };
                let written = writer
                    .append(StreamWrite {
                        tenant_id: tenant,
                        stream_id: stream.clone(),
                        expected,
                        events: vec![rename_event(&format!("{c}-{step}"))],
                    })
                    .await
                    .expect("append");
                assert_eq!(written.stream_version, step + 1);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let (events, transactions): (i64, i64) = sqlx::query_as("SELECT count(*), count(DISTINCT tx_id) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(events, (CALLS as i64) * STEPS as i64);
    assert!(
        transactions * 4 <= events,
        "{events} appends took {transactions} transactions: the writer did not batch"
    );
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT stream_id, stream_version FROM events ORDER BY global_position")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let mut last: HashMap<String, i64> = HashMap::new();
    for (stream, version) in rows {
        let previous = last.insert(stream.clone(), version).unwrap_or(0);
        assert_eq!(version, previous + 1, "{stream} in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conflicting_or_invalid_write_fails_alone() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let tenant = Uuid::new_v4();
    store
        .append(&[StreamWrite {
            tenant_id: tenant,
            stream_id: "taken".into(),
            expected: Expected::NoStream,
            events: vec![rename_event("first")],
        }])
        .await
        .unwrap();
    let writer = BatchingWriter::spawn(store, BatchOptions::default());
    let mut tasks = Vec::new();
    for i in 0..50 {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            let (stream, mut event) = match i {
                7 => ("taken".to_string(), rename_event("conflict")),
                13 => (format!("s{i}"), rename_event("invalid")),
                _ => (format!("s{i}"), rename_event("fine")),
            };
            if i == 13 {
                event.event_type = "NoSuchEvent".into();
            }
            let result = writer
                .append(StreamWrite {
                    tenant_id: tenant,
                    stream_id: stream,
                    expected: Expected::NoStream,
                    events: vec![event],
                })
                .await;
            (i, result)
        }));
    }
    for task in tasks {
        let (i, result) = task.await.unwrap();
        match i {
            7 => assert!(matches!(result, Err(StoreError::Conflict { .. })), "{result:?}"),
            13 => assert!(matches!(result, Err(StoreError::InvalidEvent { .. })), "{result:?}"),
            _ => assert!(result.is_ok(), "write {i}: {result:?}"),
        }
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 1 + 48);
}
