//! Signed webhooks (issue 7, item 4): a tenant registers a URL, an event-type filter and a
//! secret; the dispatcher follows the log and POSTs each matching event of that tenant,
//! signed, retried with backoff, at least once. The API wraps `commands` and `queries`.
//!
//! - `commands`: register, update, disable/enable, remove (secret kept outside the log).
//! - `dispatcher`: the log subscriber, the delivery log and the retry loop.
//! - `queries`: a tenant's webhooks and deliveries, with filters and cursor pagination.
//! - `signature`: `sign` and `verify_signature` (for receivers and tests).
//! - `clock`, `http`, `retry`: time, the HTTP client and the schedule behind small parts.

pub mod clock;
pub mod commands;
pub mod dispatcher;
pub mod http;
pub mod queries;
pub mod retry;
pub mod signature;

use std::sync::Arc;
use std::time::Duration;

use ::commands::EventStore;
use tokio::sync::watch;

pub use dispatcher::{Dispatcher, DispatcherConfig};
pub use signature::verify_signature;

/// How long one delivery attempt may take, connection included.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Set to `1` or `true` to let deliveries reach loopback and private addresses (local
/// development, receivers on a private network); public addresses only otherwise.
pub const ALLOW_PRIVATE_ENV: &str = "LEDGERLINE_WEBHOOKS_ALLOW_PRIVATE";

/// Start the dispatcher on the system clock with `reqwest` (the binary's `up` and `projector`).
pub fn spawn(store: EventStore, shutdown: watch::Receiver<bool>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let allow_private = std::env::var(ALLOW_PRIVATE_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let targets = if allow_private {
        http::Targets::Any
    } else {
        http::Targets::PublicOnly
    };
    let http = http::ReqwestPoster::new(HTTP_TIMEOUT, targets)?;
    // The jitter only spreads retries apart; a fresh seed per process is enough.
    let seed = u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap_or([7; 8]));
    let dispatcher = Dispatcher::new(
        store,
        Arc::new(clock::SystemClock),
        Arc::new(http),
        clock::SharedJitter::new(clock::SeededJitter::new(seed)),
        DispatcherConfig::default(),
    );
    Ok(tokio::spawn(async move { dispatcher.run(shutdown).await }))
}
