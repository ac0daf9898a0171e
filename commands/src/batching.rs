//! A batching writer: many small appends (a burst of call events) become few transactions.
//!
//! Group commit without timers: the writer drains whatever is queued into one append while
//! the previous append is in flight, so an idle node appends at once and a busy one batches.
//! A write that fails (a version conflict, an invalid event) fails alone: the rest of its
//! batch is retried without it.

use std::collections::{HashSet, VecDeque};

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::store::{EventStore, StoreError, StreamWrite, MAX_EVENTS_PER_APPEND};

/// Limits on one batch and on the queue in front of it.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Stream writes per transaction.
    pub max_writes: usize,
    /// Events per transaction.
    pub max_events: usize,
    /// Writes waiting; `append` waits for room beyond this (back-pressure).
    pub queue: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_writes: 500,
            max_events: 5_000,
            queue: 10_000,
        }
    }
}

/// Where one write's events landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub positions: Vec<i64>,
    pub stream_version: u64,
    pub already_stored: bool,
}

struct Request {
    write: StreamWrite,
    reply: oneshot::Sender<Result<Written, StoreError>>,
}

#[derive(Clone)]
pub struct BatchingWriter {
    tx: mpsc::Sender<Request>,
}

impl BatchingWriter {
    pub fn spawn(store: EventStore, options: BatchOptions) -> Self {
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        tokio::spawn(run(store, options, rx));
        BatchingWriter { tx }
    }

    /// Queue one stream write and return at once with the receiver of its result: writes
    /// submitted one after another from one task keep their order, without waiting for
    /// each commit (how the SIP node keeps a call's events in order yet batched).
    pub async fn submit(
        &self,
        write: StreamWrite,
    ) -> Result<oneshot::Receiver<Result<Written, StoreError>>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request { write, reply })
            .await
            .map_err(|_| StoreError::InvalidAppend("the batching writer has stopped".into()))?;
        Ok(answer)
    }

    /// Append one stream write; resolves when its batch has committed (or it failed).
    pub async fn append(&self, write: StreamWrite) -> Result<Written, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request { write, reply })
            .await
            .map_err(|_| StoreError::InvalidAppend("the batching writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::InvalidAppend("the batching writer has stopped".into()))?
    }
}

async fn run(store: EventStore, options: BatchOptions, mut rx: mpsc::Receiver<Request>) {
    let max_events = options.max_events.clamp(1, MAX_EVENTS_PER_APPEND);
    // Writes held back because their stream already has a write in the current batch.
    let mut deferred: VecDeque<Request> = VecDeque::new();
    loop {
        let mut batch: Vec<Request> = Vec::new();
        let mut streams: HashSet<(Uuid, String)> = HashSet::new();
        let mut events = 0usize;
        let mut next_deferred = VecDeque::new();
        // Deferred writes go first, in their order.
        while let Some(request) = deferred.pop_front() {
            admit(
                request,
                &mut batch,
                &mut streams,
                &mut events,
                &mut next_deferred,
                &options,
                max_events,
            );
        }
        if batch.is_empty() {
            match rx.recv().await {
                Some(request) => admit(
                    request,
                    &mut batch,
                    &mut streams,
                    &mut events,
                    &mut next_deferred,
                    &options,
                    max_events,
                ),
                None => return,
            }
        }
        while batch.len() < options.max_writes && events < max_events {
            match rx.try_recv() {
                Ok(request) => admit(
                    request,
                    &mut batch,
                    &mut streams,
                    &mut events,
                    &mut next_deferred,
                    &options,
                    max_events,
                ),
                Err(_) => break,
            }
        }
        deferred = next_deferred;
        commit(&store, batch).await;
    }
}

fn admit(
    request: Request,
    batch: &mut Vec<Request>,
    streams: &mut HashSet<(Uuid, String)>,
    events: &mut usize,
    deferred: &mut VecDeque<Request>,
    options: &BatchOptions,
    max_events: usize,
) {
    let key = (request.write.tenant_id, request.write.stream_id.clone());
    let fits =
        batch.len() < options.max_writes && (batch.is_empty() || *events + request.write.events.len() <= max_events);
    // A stream may appear once per append, and order within a stream must hold.
    if !fits
        || streams.contains(&key)
        || deferred
            .iter()
            .any(|d| (d.write.tenant_id, &d.write.stream_id) == (key.0, &key.1))
    {
        deferred.push_back(request);
        return;
    }
    *events += request.write.events.len();
    streams.insert(key);
    batch.push(request);
}

/// Append the batch; on a failure that belongs to one write, answer it and retry the rest.
async fn commit(store: &EventStore, mut batch: Vec<Request>) {
    while !batch.is_empty() {
        let writes: Vec<StreamWrite> = batch.iter().map(|r| r.write.clone()).collect();
        match store.append(&writes).await {
            Ok(appended) => {
                let mut offset = 0;
                for (i, request) in batch.into_iter().enumerate() {
                    let n = request.write.events.len();
                    let _ = request.reply.send(Ok(Written {
                        positions: appended.positions[offset..offset + n].to_vec(),
                        stream_version: appended.stream_versions[i],
                        already_stored: appended.already_stored,
                    }));
                    offset += n;
                }
                return;
            }
            Err(error) => {
                let culprit = match &error {
                    StoreError::Conflict { stream_id, .. } => {
                        batch.iter().position(|r| &r.write.stream_id == stream_id)
                    }
                    StoreError::InvalidEvent { index, .. } => write_of_event(&batch, *index),
                    StoreError::InvalidAppend(_) | StoreError::IdempotencyMismatch(_) if batch.len() > 1 => {
                        // Not attributable from the message: fall back to one append per write.
                        for request in batch {
                            let result = store
                                .append(std::slice::from_ref(&request.write))
                                .await
                                .map(|a| Written {
                                    positions: a.positions,
                                    stream_version: a.stream_versions[0],
                                    already_stored: a.already_stored,
                                });
                            let _ = request.reply.send(result);
                        }
                        return;
                    }
                    _ => None,
                };
                match culprit {
                    Some(i) => {
                        let request = batch.remove(i);
                        let _ = request.reply.send(Err(error));
                    }
                    None => {
                        // Not one write's fault (the database is gone): everyone hears it.
                        let message = error.to_string();
                        for request in batch {
                            let _ = request
                                .reply
                                .send(Err(StoreError::InvalidAppend(format!("batch failed: {message}"))));
                        }
                        return;
                    }
                }
            }
        }
    }
}

fn write_of_event(batch: &[Request], index: usize) -> Option<usize> {
    let mut seen = 0;
    for (i, request) in batch.iter().enumerate() {
        seen += request.write.events.len();
        if index < seen {
            return Some(i);
        }
    }
    None
}
