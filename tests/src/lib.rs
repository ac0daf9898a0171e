//! Shared helpers for the end-to-end tests in `tests/tests/`.

// Tests stand in for the binary: they may read the clock.
#![allow(clippy::disallowed_methods)]

use chrono::Utc;
use commands::{Metadata, NewEvent};
use serde_json::json;
use uuid::Uuid;

/// A valid event for store tests: a tenant rename with a distinct name.
pub fn rename_event(label: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "TenantRenamed".into(),
        schema_version: 1,
        payload: json!({ "name": label }),
        metadata: Metadata {
            actor: Some("test".into()),
            ..Metadata::default()
        },
        occurred_at: Utc::now(),
    }
}

/// Wait for a condition with a deadline, so that a broken test fails instead of hanging.
pub async fn within<T>(seconds: u64, what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(std::time::Duration::from_secs(seconds), future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {seconds}s waiting for {what}"),
    }
}
