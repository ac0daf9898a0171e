//! `audit verify`: recompute every stream's hash chain from the stored rows.

use futures::TryStreamExt;
use serde::Serialize;
use uuid::Uuid;

use crate::canonical::chain_hash;
use crate::store::{decode_row, EventStore, StoreError, SELECT_EVENT_COLUMNS};
use sqlx::Row;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    pub event_id: Option<Uuid>,
    pub global_position: Option<i64>,
    pub tenant_id: Uuid,
    pub stream_id: String,
    pub stream_version: i64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub streams: u64,
    pub events: u64,
    /// The first break found, in (tenant, stream, version) order.
    pub first_break: Option<Broken>,
}

/// Walk every stream (of one tenant, or all) in version order and recompute its chain;
/// stop at the first event whose hash does not match.
pub async fn verify(store: &EventStore, tenant: Option<Uuid>) -> Result<VerifyReport, StoreError> {
    let sql = format!(
        "SELECT {SELECT_EVENT_COLUMNS} FROM events WHERE ($1::uuid IS NULL OR tenant_id = $1) \
         ORDER BY tenant_id, stream_id, stream_version"
    );
    let mut report = VerifyReport::default();
    let mut rows = sqlx::query(&sql).bind(tenant).fetch(store.pool());
    let mut current: Option<(Uuid, String)> = None;
    let mut previous: Vec<u8> = Vec::new();
    let mut expected_version = 0i64;
    let mut heads_to_check: Vec<(Uuid, String, i64, Vec<u8>)> = Vec::new();
    while let Some(row) = rows.try_next().await? {
        let event = decode_row(&row)?;
        let key = (event.tenant_id, event.stream_id.clone());
        if current.as_ref() != Some(&key) {
            if let Some((t, s)) = current.take() {
                heads_to_check.push((t, s, expected_version, previous.clone()));
            }
            current = Some(key);
            previous.clear();
            expected_version = 0;
            report.streams += 1;
        }
        report.events += 1;
        expected_version += 1;
        let broken = |reason: String| Broken {
            event_id: Some(event.event_id),
            global_position: Some(event.global_position),
            tenant_id: event.tenant_id,
            stream_id: event.stream_id.clone(),
            stream_version: event.stream_version,
            reason,
        };
        if event.stream_version != expected_version {
            report.first_break = Some(broken(format!(
                "version {} follows {} (an event is missing)",
                event.stream_version,
                expected_version - 1
            )));
            return Ok(report);
        }
        let hash = chain_hash(&previous, &event.hashed_fields());
        if hash != event.hash {
            report.first_break = Some(broken(
                "stored hash does not match the event's content and its predecessor".into(),
            ));
            return Ok(report);
        }
        previous = hash;
    }
    if let Some((t, s)) = current.take() {
        heads_to_check.push((t, s, expected_version, previous));
    }
    drop(rows);
    // The stream heads must agree with the last event: a removed tail shows here.
    let heads = sqlx::query(
        "SELECT tenant_id, stream_id, version, last_hash FROM streams WHERE ($1::uuid IS NULL OR tenant_id = $1)",
    )
    .bind(tenant)
    .fetch_all(store.pool())
    .await?;
    let chained: std::collections::HashMap<(Uuid, String), (i64, Vec<u8>)> = heads_to_check
        .into_iter()
        .map(|(t, s, v, h)| ((t, s), (v, h)))
        .collect();
    let mut mismatches: Vec<Broken> = Vec::new();
    for head in heads {
        let key: (Uuid, String) = (head.get("tenant_id"), head.get("stream_id"));
        let version: i64 = head.get("version");
        let last_hash: Vec<u8> = head.get("last_hash");
        let ok = match chained.get(&key) {
            Some((v, h)) => *v == version && *h == last_hash,
            None => version == 0,
        };
        if !ok {
            mismatches.push(Broken {
                event_id: None,
                global_position: None,
                tenant_id: key.0,
                stream_id: key.1.clone(),
                stream_version: version,
                reason: format!(
                    "stream head says version {version}, the log holds {}",
                    chained.get(&key).map(|(v, _)| *v).unwrap_or(0)
                ),
            });
        }
    }
    mismatches.sort_by(|a, b| (a.tenant_id, &a.stream_id).cmp(&(b.tenant_id, &b.stream_id)));
    report.first_break = mismatches.into_iter().next();
    Ok(report)
}
