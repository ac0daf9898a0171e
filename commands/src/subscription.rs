//! Following the global log: wake on NOTIFY, poll as a backstop, never skip a late commit.

use sqlx::postgres::PgListener;
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::store::{Cursor, EventFilter, EventStore, RecordedEvent, StoreError, NOTIFY_CHANNEL};

/// Waits for the next append: a NOTIFY on the events channel, or the poll interval.
pub struct LogWaker {
    listener: Option<PgListener>,
    poll_interval: Duration,
}

impl LogWaker {
    /// LISTEN before the first read, so that no notification falls between the two.
    pub async fn connect(store: &EventStore, poll_interval: Duration) -> Result<Self, StoreError> {
        let mut listener = PgListener::connect_with(store.pool()).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        Ok(LogWaker {
            listener: Some(listener),
            poll_interval,
        })
    }

    /// Returns `true` when woken by a notification, `false` on the poll timeout.
    pub async fn wait(&mut self) -> bool {
        let Some(listener) = self.listener.as_mut() else {
            tokio::time::sleep(self.poll_interval).await;
            return false;
        };
        match tokio::time::timeout(self.poll_interval, listener.recv()).await {
            Ok(Ok(_)) => {
                // Drain notifications already queued: one read covers them all.
                while listener.next_buffered().is_some() {}
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "LISTEN connection lost; polling until it is back");
                // The listener reconnects on the next recv; wait one interval first, or a
                // database that is gone turns this into a busy loop.
                tokio::time::sleep(self.poll_interval).await;
                false
            }
            Err(_) => false,
        }
    }
}

/// Events per read: large enough that a catch-up is bound by the rows, not the round trips.
pub const DEFAULT_BATCH_SIZE: i64 = 5000;

#[derive(Debug, Clone)]
pub struct SubscriptionOptions {
    pub batch_size: i64,
    pub poll_interval: Duration,
    pub tenant: Option<Uuid>,
    /// Events buffered ahead of the consumer.
    pub buffer: usize,
    /// Only these events are delivered; the cursor still moves past every other one, which
    /// is neither fetched nor decoded. `None`: every event.
    pub filter: Option<EventFilter>,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        SubscriptionOptions {
            batch_size: DEFAULT_BATCH_SIZE,
            poll_interval: Duration::from_millis(500),
            tenant: None,
            buffer: 4096,
            filter: None,
        }
    }
}

/// A live feed of the global log from a cursor, in `(tx_id, global_position)` order.
pub struct Subscription {
    rx: mpsc::Receiver<Result<RecordedEvent, StoreError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscription {
    pub async fn start(store: EventStore, from: Cursor, options: SubscriptionOptions) -> Result<Self, StoreError> {
        let mut waker = LogWaker::connect(&store, options.poll_interval).await?;
        let (tx, rx) = mpsc::channel(options.buffer.max(1));
        let task = tokio::spawn(async move {
            let mut cursor = from;
            let mut idle_polls = 0u32;
            loop {
                let read = match &options.filter {
                    None => store
                        .read_all(cursor, options.batch_size, options.tenant)
                        .await
                        .map(|batch| {
                            let end = batch.last().map(RecordedEvent::cursor);
                            (batch.len() as i64, end, batch)
                        }),
                    Some(filter) => store
                        .read_all_filtered(cursor, options.batch_size, options.tenant, filter)
                        .await
                        .map(|found| match found {
                            Some(found) => (found.scanned, Some(found.window_end), found.events),
                            None => (0, None, Vec::new()),
                        }),
                };
                let (scanned, window_end, batch) = match read {
                    Ok(read) => read,
                    Err(e) => {
                        // A closed pool never opens again (the process is stopping): say so
                        // once and end the feed instead of reporting it forever.
                        let closed = matches!(e, StoreError::Database(sqlx::Error::PoolClosed));
                        if tx.send(Err(e)).await.is_err() || closed {
                            return;
                        }
                        waker.wait().await;
                        continue;
                    }
                };
                let full = scanned == options.batch_size;
                for event in batch {
                    cursor = event.cursor();
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if let Some(end) = window_end {
                    cursor = end;
                }
                if full {
                    continue;
                }
                if waker.wait().await {
                    idle_polls = 0;
                } else {
                    idle_polls += 1;
                    // After ~10 quiet polls, say who holds the fence if events wait behind it.
                    if idle_polls.is_multiple_of(10) {
                        if let Ok(Some(holder)) = store.fence_holder().await {
                            tracing::warn!(
                                pid = holder.pid,
                                state = ?holder.state,
                                since = ?holder.xact_start,
                                query = ?holder.query,
                                waiting = holder.events_waiting,
                                "an open transaction holds subscribers back"
                            );
                        }
                    }
                }
            }
        });
        Ok(Subscription { rx, task })
    }

    pub async fn next(&mut self) -> Option<Result<RecordedEvent, StoreError>> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}
