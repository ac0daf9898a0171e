//! Hang-up requests from the log to the SIP node: the API appends `CallHangupRequested` on a
//! call's stream, and this follower hands each one to the node loop, which ends the call if
//! it holds it (`SipNode::handle_hangup_request`).
//!
//! The one module under `sip/` that does IO: it reads the log (a subscription from the
//! current end). The decision stays in the sans-IO node; [`request_of`] is pure.

use commands::subscription::{Subscription, SubscriptionOptions};
use commands::{Cursor, EventFilter, EventStore, RecordedEvent, StoreError};
use domain::call::Call;
use domain::decider::Aggregate;
use tokio::sync::mpsc;
use uuid::Uuid;

/// A call an operator asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HangupRequest {
    pub tenant_id: Uuid,
    pub call_id: Uuid,
}

/// The stored `event_type` this follower acts on.
pub const EVENT_TYPE: &str = "CallHangupRequested";

/// The request a recorded event is, if it is a hang-up request on a call stream.
pub fn request_of(recorded: &RecordedEvent) -> Option<HangupRequest> {
    if recorded.event_type != EVENT_TYPE {
        return None;
    }
    let id = recorded
        .stream_id
        .strip_prefix(Call::STREAM_PREFIX)?
        .strip_prefix('-')?;
    Some(HangupRequest {
        tenant_id: recorded.tenant_id,
        call_id: Uuid::parse_str(id).ok()?,
    })
}

/// Follow the log from its current end (requests made before the node started are for
/// calls it does not hold) and send every hang-up request to `requests`. Returns once the
/// subscription is in place, so a request committed after this returns is not missed; the
/// task ends when the receiver is dropped.
pub async fn follow(
    store: EventStore,
    requests: mpsc::Sender<HangupRequest>,
) -> Result<tokio::task::JoinHandle<()>, StoreError> {
    let from = live_end(&store).await?;
    let options = SubscriptionOptions {
        poll_interval: std::time::Duration::from_millis(250),
        buffer: 1024,
        // Only hang-up requests leave the database: this follower skips every other event
        // (a REGISTER's, a call's progress) without fetching or decoding it.
        filter: Some(EventFilter {
            event_types: vec![EVENT_TYPE.into()],
            stream_prefix: format!("{}-", Call::STREAM_PREFIX),
        }),
        ..SubscriptionOptions::default()
    };
    let mut subscription = Subscription::start(store, from, options).await?;
    Ok(tokio::spawn(async move {
        while let Some(next) = subscription.next().await {
            let recorded = match next {
                Ok(recorded) => recorded,
                Err(e) => {
                    tracing::warn!(error = %e, "sip: reading hang-up requests from the log");
                    continue;
                }
            };
            if let Some(request) = request_of(&recorded) {
                if requests.send(request).await.is_err() {
                    return;
                }
            }
        }
    }))
}

/// After every transaction that has finished: a transaction still open (and every later
/// one) has an id at or past the fence, so nothing committed from now on is skipped.
async fn live_end(store: &EventStore) -> Result<Cursor, StoreError> {
    let xmin: i64 = sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        .fetch_one(store.pool())
        .await?;
    Ok(Cursor {
        tx_id: xmin - 1,
        position: i64::MAX,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(stream_id: &str, event_type: &str) -> RecordedEvent {
        RecordedEvent {
            global_position: 1,
            tx_id: 1,
            event_id: Uuid::from_u128(1),
            tenant_id: Uuid::from_u128(2),
            stream_id: stream_id.into(),
            stream_version: 3,
            event_type: event_type.into(),
            schema_version: 1,
            payload: serde_json::json!({}),
            metadata: serde_json::json!({}),
            occurred_at: chrono::DateTime::UNIX_EPOCH,
            recorded_at: chrono::DateTime::UNIX_EPOCH,
            hash: vec![],
        }
    }

    #[test]
    fn the_event_type_is_the_call_events() {
        use domain::call::CallEvent;
        use domain::DomainEvent;
        assert!(CallEvent::event_types().contains(&EVENT_TYPE));
    }

    #[test]
    fn only_hangup_requests_on_call_streams_are_requests() {
        let call = Uuid::from_u128(9);
        assert_eq!(
            request_of(&recorded(&format!("call-{call}"), "CallHangupRequested")),
            Some(HangupRequest {
                tenant_id: Uuid::from_u128(2),
                call_id: call,
            })
        );
        assert_eq!(request_of(&recorded(&format!("call-{call}"), "CallEnded")), None);
        assert_eq!(
            request_of(&recorded(&format!("conference-{call}"), "CallHangupRequested")),
            None
        );
        assert_eq!(request_of(&recorded("call-not-a-uuid", "CallHangupRequested")), None);
    }
}
