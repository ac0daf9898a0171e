//! Every projection the binary runs, started together: `up` and `projector` follow the log
//! with one runner per projection, and CLI reads catch them all up first.

use commands::EventStore;
use projections::billing::Billing;
use projections::conferences::Conferences;
use projections::directory::Directory;
use projections::invoices::Invoices;
use projections::webhooks::Webhooks;
use projections::{Projection, Runner};
use std::time::Duration;

use tokio::sync::watch;

/// The names `up` prints.
pub const NAMES: &str = "directory, billing (CDRs, charges, balances, reports, live calls), invoices, webhooks, conferences (rooms, participant legs, live rooms)";

/// How long a catch-up waits for transactions that were running when it started.
pub const CATCH_UP_DEADLINE: Duration = Duration::from_secs(30);

/// Catch every projection up with everything committed before the call; returns the events
/// applied in all.
pub async fn catch_up_all(store: &EventStore, batch_size: i64) -> anyhow::Result<u64> {
    let mut total = Runner::new(store.clone(), Directory)
        .batch_size(batch_size)
        .catch_up_to_now(CATCH_UP_DEADLINE)
        .await?;
    total += Runner::new(store.clone(), Billing)
        .batch_size(batch_size)
        .catch_up_to_now(CATCH_UP_DEADLINE)
        .await?;
    total += Runner::new(store.clone(), Invoices)
        .batch_size(batch_size)
        .catch_up_to_now(CATCH_UP_DEADLINE)
        .await?;
    total += Runner::new(store.clone(), Webhooks)
        .batch_size(batch_size)
        .catch_up_to_now(CATCH_UP_DEADLINE)
        .await?;
    total += Runner::new(store.clone(), Conferences)
        .batch_size(batch_size)
        .catch_up_to_now(CATCH_UP_DEADLINE)
        .await?;
    Ok(total)
}

/// Follow the log with every projection until `shutdown`; failed batches are retried.
pub async fn run_all(store: &EventStore, batch_size: i64, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let directory = follow(
        Runner::new(store.clone(), Directory).batch_size(batch_size),
        shutdown.clone(),
    );
    let billing = follow(
        Runner::new(store.clone(), Billing).batch_size(batch_size),
        shutdown.clone(),
    );
    let invoices = follow(
        Runner::new(store.clone(), Invoices).batch_size(batch_size),
        shutdown.clone(),
    );
    let webhooks = follow(
        Runner::new(store.clone(), Webhooks).batch_size(batch_size),
        shutdown.clone(),
    );
    let conferences = follow(Runner::new(store.clone(), Conferences).batch_size(batch_size), shutdown);
    tokio::try_join!(directory, billing, invoices, webhooks, conferences)?;
    Ok(())
}

/// One projection until `shutdown`. A failed batch (a deadlock with a CLI catching up, a
/// restarted database) rolled back with its checkpoint, so it is retried after a pause that
/// doubles up to 30 s: the node keeps projecting instead of exiting.
async fn follow<P: Projection>(mut runner: Runner<P>, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut pause = Duration::from_millis(100);
    loop {
        match runner.run(shutdown.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(projection = std::any::type_name::<P>(), error = %e, retry_in = ?pause, "projection batch failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}
