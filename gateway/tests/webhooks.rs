//! Webhooks end to end: a real Postgres, the real dispatcher, real HTTP on loopback to a
//! local receiver, and a virtual clock for the retry schedule.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use commands::directory;
use commands::testing::TestDb;
use commands::{CommandContext, CommandError, CommandHandler, EventStore};
use domain::tenant::{Limits, TenantCommand};
use domain::webhook::{WebhookCommand, WebhookRejection};
use gateway::webhooks::clock::{ManualClock, SeededJitter, SharedJitter};
use gateway::webhooks::commands::{self as webhook_commands, Registered};
use gateway::webhooks::http::{ReqwestPoster, Targets};
use gateway::webhooks::queries::{self, DeliveryFilter, DeliveryStatus, QueryError};
use gateway::webhooks::retry::{AfterFailure, RetryPolicy};
use gateway::webhooks::{verify_signature, Dispatcher, DispatcherConfig};
use projections::webhooks::Webhooks;
use projections::Runner;
use sqlx::{PgPool, Row};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

mod common;

const SECRET: &str = "whsec_test_0123456789abcdef";
/// Bounds every wait on the receiver, so a broken dispatcher fails the test instead of hanging it.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// A fresh command (the number only tells the call sites apart when reading a failure).
fn ctx(_n: u32) -> CommandContext {
    CommandContext::new(Uuid::new_v4(), "test", "test", t0())
}

/// What the receiver saw of one request.
#[derive(Debug, Clone)]
struct Received {
    event_id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

struct ReceiverState {
    received: Mutex<Vec<Received>>,
    count: watch::Sender<usize>,
    /// Requests with an index below this are answered 500.
    fail_first: AtomicUsize,
    /// Requests with an index at or above this wait for `release` before answering.
    hold_from: AtomicUsize,
    release: Notify,
}

/// A local HTTP receiver on 127.0.0.1:0.
struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let state = Arc::new(ReceiverState {
            received: Mutex::new(Vec::new()),
            count: watch::Sender::new(0),
            fail_first: AtomicUsize::new(fail_first),
            hold_from: AtomicUsize::new(usize::MAX),
            release: Notify::new(),
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url: format!("http://{addr}/hook"),
            state,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) {
        let mut rx = self.state.count.subscribe();
        tokio::time::timeout(WAIT_LIMIT, rx.wait_for(|count| *count >= n))
            .await
            .expect("the receiver got the deliveries in time")
            .unwrap();
    }
}

async fn receive(State(state): State<Arc<ReceiverState>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let index = {
        let mut received = state.received.lock().unwrap();
        received.push(Received {
            event_id: header("Ledgerline-Event-Id"),
            timestamp: header("Ledgerline-Timestamp"),
            signature: header("Ledgerline-Signature"),
            body: body.to_vec(),
        });
        received.len() - 1
    };
    state.count.send_replace(index + 1);
    if index >= state.hold_from.load(Ordering::SeqCst) {
        state.release.notified().await;
    }
    if index < state.fail_first.load(Ordering::SeqCst) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

struct World {
    db: TestDb,
    store: EventStore,
    handler: CommandHandler,
    tenant_a: Uuid,
    tenant_b: Uuid,
}

async fn world() -> World {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let handler = CommandHandler::new(store.clone());
    let (tenant_a, tenant_b) = (Uuid::new_v4(), Uuid::new_v4());
    for (tenant, name, domain) in [(tenant_a, "Acme", "acme.test"), (tenant_b, "Beta", "beta.test")] {
        directory::create_tenant(&handler, &ctx(1), tenant, name, domain, Limits::default())
            .await
            .unwrap();
    }
    World {
        db,
        store,
        handler,
        tenant_a,
        tenant_b,
    }
}

impl World {
    async fn rename(&self, tenant: Uuid, name: &str) {
        directory::tenant_command(
            &self.handler,
            &ctx(2),
            tenant,
            TenantCommand::Rename { name: name.into() },
        )
        .await
        .unwrap();
    }

    async fn register(&self, tenant: Uuid, url: &str, events: &[&str]) -> Registered {
        let events: Vec<String> = events.iter().map(|e| e.to_string()).collect();
        webhook_commands::register(&self.handler, &ctx(3), tenant, url, &events, Some(SECRET.into()))
            .await
            .unwrap()
    }

    fn dispatcher(
        &self,
        clock: Arc<ManualClock>,
        retry: RetryPolicy,
        seed: u64,
        config: DispatcherConfig,
    ) -> Dispatcher {
        Dispatcher::new(
            self.store.clone(),
            clock,
            Arc::new(ReqwestPoster::new(Duration::from_secs(10), Targets::Any).unwrap()),
            SharedJitter::new(SeededJitter::new(seed)),
            DispatcherConfig { retry, ..config },
        )
    }
}

#[derive(Debug)]
struct DeliveryRow {
    tenant_id: Uuid,
    event_id: Uuid,
    attempts: i32,
    status: String,
    last_http_status: Option<i32>,
    last_error: Option<String>,
    next_attempt_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
}

async fn delivery_rows(pool: &PgPool) -> Vec<DeliveryRow> {
    sqlx::query(
        "SELECT tenant_id, event_id, attempts, status, last_http_status, last_error, next_attempt_at, delivered_at \
         FROM webhook_deliveries ORDER BY event_position",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| DeliveryRow {
        tenant_id: r.get("tenant_id"),
        event_id: r.get("event_id"),
        attempts: r.get("attempts"),
        status: r.get("status"),
        last_http_status: r.get("last_http_status"),
        last_error: r.get("last_error"),
        next_attempt_at: r.get("next_attempt_at"),
        delivered_at: r.get("delivered_at"),
    })
    .collect()
}

/// The ids of a tenant's events of one type, in log order.
async fn event_ids(pool: &PgPool, tenant: Uuid, event_type: &str) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT event_id FROM events WHERE tenant_id = $1 AND event_type = $2 ORDER BY global_position")
        .bind(tenant)
        .bind(event_type)
        .fetch_all(pool)
        .await
        .unwrap()
}

fn retry_in(policy: &RetryPolicy, failed: u32, jitter: &SharedJitter) -> chrono::Duration {
    match policy.after_failure(failed, jitter) {
        AfterFailure::RetryIn(delay) => chrono::Duration::from_std(delay).unwrap(),
        AfterFailure::GiveUp => panic!("attempt {failed} must be retried"),
    }
}

#[tokio::test]
async fn a_receiver_failing_twice_gets_the_third_attempt_signed_and_nothing_twice_after_its_ack() {
    let w = world().await;
    let receiver = Receiver::start(2).await;
    w.register(w.tenant_a, &receiver.url, &["TenantRenamed"]).await;
    w.rename(w.tenant_a, "Acme Two").await;
    w.rename(w.tenant_b, "Beta Two").await;

    let clock = Arc::new(ManualClock::new(t0()));
    let policy = RetryPolicy {
        base: Duration::from_secs(10),
        cap: Duration::from_secs(60),
        max_attempts: 5,
    };
    let d = w.dispatcher(clock.clone(), policy, 42, DispatcherConfig::default());
    // The same seed gives the schedule the dispatcher must follow.
    let expected_jitter = SharedJitter::new(SeededJitter::new(42));
    d.enqueue_to_now(WAIT_LIMIT).await.unwrap();
    let renamed_a = event_ids(&w.db.pool, w.tenant_a, "TenantRenamed").await;
    let rows = delivery_rows(&w.db.pool).await;
    assert_eq!(rows.len(), 1, "only tenant A's rename matches A's webhook: {rows:?}");
    assert_eq!((rows[0].event_id, rows[0].tenant_id), (renamed_a[0], w.tenant_a));
    assert_eq!((rows[0].status.as_str(), rows[0].attempts), ("pending", 0));

    // Attempt 1 fails (500) and is scheduled after the first backoff.
    assert_eq!(d.deliver_due().await.unwrap(), 1);
    let row = &delivery_rows(&w.db.pool).await[0];
    assert_eq!(
        (row.status.as_str(), row.attempts, row.last_http_status),
        ("pending", 1, Some(500))
    );
    assert_eq!(row.last_error.as_deref(), Some("HTTP 500"));
    let first_retry = t0() + retry_in(&policy, 1, &expected_jitter);
    assert_eq!(row.next_attempt_at, first_retry);
    assert_eq!(d.deliver_due().await.unwrap(), 0, "not due before its time");
    clock.set(first_retry - chrono::Duration::milliseconds(1));
    assert_eq!(d.deliver_due().await.unwrap(), 0, "not due one millisecond early");

    // Attempt 2 fails too; the next delay is drawn from the doubled backoff.
    clock.set(first_retry);
    assert_eq!(d.deliver_due().await.unwrap(), 1);
    let row = &delivery_rows(&w.db.pool).await[0];
    assert_eq!((row.status.as_str(), row.attempts), ("pending", 2));
    let second_retry = first_retry + retry_in(&policy, 2, &expected_jitter);
    assert_eq!(row.next_attempt_at, second_retry);

    // Attempt 3 is acknowledged.
    clock.set(second_retry);
    assert_eq!(d.deliver_due().await.unwrap(), 1);
    let row = &delivery_rows(&w.db.pool).await[0];
    assert_eq!(
        (row.status.as_str(), row.attempts, row.last_http_status),
        ("delivered", 3, Some(204))
    );
    assert_eq!(
        (row.delivered_at, row.last_error.as_deref()),
        (Some(second_retry), None)
    );

    let received = receiver.received();
    assert_eq!(received.len(), 3);
    let third = &received[2];
    assert!(received.iter().all(|r| r.event_id == renamed_a[0].to_string()));
    assert_eq!(third.timestamp, second_retry.timestamp().to_string());
    verify_signature(
        SECRET.as_bytes(),
        &third.timestamp,
        &third.signature,
        &third.body,
        second_retry.timestamp(),
        300,
    )
    .expect("the delivery's signature verifies with the webhook's secret");
    assert!(verify_signature(
        b"another-secret-0000",
        &third.timestamp,
        &third.signature,
        &third.body,
        second_retry.timestamp(),
        300
    )
    .is_err());
    let body: serde_json::Value = serde_json::from_slice(&third.body).unwrap();
    assert_eq!(body["event_id"], renamed_a[0].to_string());
    assert_eq!(body["event_type"], "TenantRenamed");
    assert_eq!(body["stream_id"], format!("tenant-{}", w.tenant_a));
    assert_eq!(body["tenant_id"], w.tenant_a.to_string());
    assert_eq!(body["data"], serde_json::json!({"name": "Acme Two"}));
    assert!(body["position"].as_i64().unwrap() > 0);
    assert!(body["recorded_at"].is_string());

    // Much later, after more dispatching, nothing acknowledged is sent again.
    clock.advance(chrono::Duration::days(1));
    assert_eq!(d.enqueue_to_now(WAIT_LIMIT).await.unwrap(), 0);
    assert_eq!(d.deliver_due().await.unwrap(), 0);
    let again = w.dispatcher(clock.clone(), policy, 1, DispatcherConfig::default());
    assert_eq!(again.enqueue_to_now(WAIT_LIMIT).await.unwrap(), 0);
    assert_eq!(again.deliver_due().await.unwrap(), 0);
    assert_eq!(receiver.received().len(), 3);
    assert_eq!(delivery_rows(&w.db.pool).await.len(), 1);
}

#[tokio::test]
async fn a_delivery_that_keeps_failing_ends_failed_after_its_attempts() {
    let w = world().await;
    let receiver = Receiver::start(usize::MAX).await;
    w.register(w.tenant_a, &receiver.url, &["*"]).await;
    w.rename(w.tenant_a, "Acme Two").await;
    let clock = Arc::new(ManualClock::new(t0()));
    let policy = RetryPolicy {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(4),
        max_attempts: 3,
    };
    let d = w.dispatcher(clock.clone(), policy, 7, DispatcherConfig::default());
    d.enqueue_to_now(WAIT_LIMIT).await.unwrap();
    for _ in 0..3 {
        assert_eq!(d.deliver_due().await.unwrap(), 1);
        clock.advance(chrono::Duration::seconds(5));
    }
    let rows = delivery_rows(&w.db.pool).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].status.as_str(), rows[0].attempts), ("failed", 3));
    clock.advance(chrono::Duration::days(1));
    assert_eq!(d.deliver_due().await.unwrap(), 0, "a failed delivery is never retried");
    assert_eq!(receiver.received().len(), 3);
    // An unreachable URL records a short reason, never internals.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    w.register(w.tenant_b, &dead_url, &["*"]).await;
    w.rename(w.tenant_b, "Beta Two").await;
    d.enqueue_to_now(WAIT_LIMIT).await.unwrap();
    assert_eq!(d.deliver_due().await.unwrap(), 1);
    let row = delivery_rows(&w.db.pool)
        .await
        .into_iter()
        .find(|r| r.tenant_id == w.tenant_b)
        .unwrap();
    assert_eq!(
        (row.last_error.as_deref(), row.last_http_status),
        (Some("connection failed"), None)
    );
}

#[tokio::test]
async fn a_dispatcher_stopped_mid_delivery_and_restarted_loses_nothing_and_resends_nothing_acknowledged() {
    let w = world().await;
    let receiver = Receiver::start(0).await;
    // The ninth request is held open: the dispatcher is stopped while it is in flight.
    receiver.state.hold_from.store(8, Ordering::SeqCst);
    w.register(w.tenant_a, &receiver.url, &["TenantRenamed"]).await;
    for i in 0..20 {
        w.rename(w.tenant_a, &format!("Acme {i}")).await;
    }
    let clock = Arc::new(ManualClock::new(t0()));
    let one_at_a_time = DispatcherConfig {
        claim_size: 1,
        max_in_flight: 1,
        ..DispatcherConfig::default()
    };
    let first = w.dispatcher(clock.clone(), RetryPolicy::default(), 1, one_at_a_time.clone());
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(async move { first.run(stopped).await });
    receiver.wait_for(9).await;
    task.abort();
    let _ = task.await;
    drop(stop);

    let acknowledged: HashSet<Uuid> =
        sqlx::query_scalar("SELECT event_id FROM webhook_deliveries WHERE status = 'delivered'")
            .fetch_all(&w.db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(
        acknowledged.len(),
        8,
        "eight acknowledged before the stop, the ninth in flight"
    );
    let seen_before_restart = receiver.received().len();
    receiver.state.hold_from.store(usize::MAX, Ordering::SeqCst);
    receiver.state.release.notify_waiters();

    // More events arrive while no dispatcher runs.
    for i in 20..30 {
        w.rename(w.tenant_a, &format!("Acme {i}")).await;
    }
    // The stopped dispatcher's lease on the ninth delivery runs out; a new dispatcher takes over.
    clock.advance(chrono::Duration::from_std(one_at_a_time.lease).unwrap() + chrono::Duration::seconds(1));
    let second = w.dispatcher(clock.clone(), RetryPolicy::default(), 2, DispatcherConfig::default());
    for _ in 0..100 {
        second.enqueue_to_now(WAIT_LIMIT).await.unwrap();
        second.deliver_due().await.unwrap();
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status <> 'delivered'")
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
        if pending == 0 {
            break;
        }
    }

    let renamed = event_ids(&w.db.pool, w.tenant_a, "TenantRenamed").await;
    assert_eq!(renamed.len(), 30);
    let rows = delivery_rows(&w.db.pool).await;
    assert_eq!(rows.len(), 30, "one delivery row per event, none twice");
    assert!(rows.iter().all(|r| r.status == "delivered"), "{rows:?}");
    let received = receiver.received();
    let got: HashSet<String> = received.iter().map(|r| r.event_id.clone()).collect();
    let want: HashSet<String> = renamed.iter().map(Uuid::to_string).collect();
    assert_eq!(got, want, "every event arrived");
    for r in &received[seen_before_restart..] {
        assert!(
            !acknowledged.contains(&r.event_id.parse().unwrap()),
            "{} was acknowledged before the restart and sent again",
            r.event_id
        );
    }
    let mut counts = std::collections::HashMap::new();
    for r in &received {
        *counts.entry(r.event_id.clone()).or_insert(0) += 1;
    }
    let resent: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        resent.len() <= 1,
        "only the delivery in flight at the stop may arrive twice: {resent:?}"
    );
}

#[tokio::test]
async fn a_tenants_webhook_never_sees_another_tenants_events() {
    let w = world().await;
    let (receiver_a, receiver_b) = (Receiver::start(0).await, Receiver::start(0).await);
    let hook_a = w.register(w.tenant_a, &receiver_a.url, &["*"]).await.webhook_id;
    let hook_b = w.register(w.tenant_b, &receiver_b.url, &["*"]).await.webhook_id;
    for i in 0..5 {
        w.rename(w.tenant_a, &format!("Acme {i}")).await;
        w.rename(w.tenant_b, &format!("Beta {i}")).await;
    }
    // Tenant A cannot touch B's webhook: under A's id it does not exist.
    let denied = webhook_commands::command(&w.handler, &ctx(9), w.tenant_a, hook_b, WebhookCommand::Remove).await;
    assert!(matches!(
        denied,
        Err(CommandError::Rejected(WebhookRejection::NotFound))
    ));

    let clock = Arc::new(ManualClock::new(t0()));
    let d = w.dispatcher(clock, RetryPolicy::default(), 3, DispatcherConfig::default());
    d.enqueue_to_now(WAIT_LIMIT).await.unwrap();
    while d.deliver_due().await.unwrap() > 0 {}

    for (tenant, receiver) in [(w.tenant_a, &receiver_a), (w.tenant_b, &receiver_b)] {
        let own: HashSet<String> = sqlx::query_scalar("SELECT event_id::text FROM events WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(&w.db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
        let received = receiver.received();
        assert!(received.len() >= 5, "{} deliveries", received.len());
        for r in received {
            assert!(
                own.contains(&r.event_id),
                "an event of another tenant reached {tenant}'s webhook"
            );
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body["tenant_id"], tenant.to_string());
        }
    }

    // The queries answer for the tenant asked about only.
    Runner::new(w.store.clone(), Webhooks)
        .catch_up_to_now(WAIT_LIMIT)
        .await
        .unwrap();
    let hooks = queries::list_webhooks(&w.db.pool, w.tenant_a).await.unwrap();
    assert_eq!(hooks.iter().map(|h| h.webhook_id).collect::<Vec<_>>(), vec![hook_a]);
    assert!(queries::get_webhook(&w.db.pool, w.tenant_a, hook_b)
        .await
        .unwrap()
        .is_none());
    let page = queries::list_deliveries(&w.db.pool, w.tenant_a, &DeliveryFilter::default(), 500, None)
        .await
        .unwrap();
    assert!(page
        .items
        .iter()
        .all(|d| d.tenant_id == w.tenant_a && d.webhook_id == hook_a));
    let foreign = DeliveryFilter {
        webhook_id: Some(hook_b),
        ..DeliveryFilter::default()
    };
    let page = queries::list_deliveries(&w.db.pool, w.tenant_a, &foreign, 500, None)
        .await
        .unwrap();
    assert!(page.items.is_empty());
}

#[tokio::test]
async fn bad_input_is_refused_by_the_decider_and_changes_nothing_and_the_secret_stays_out_of_the_log() {
    let w = world().await;
    let count = |sql: &'static str| {
        let pool = w.db.pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap() }
    };
    let events_before = count("SELECT count(*) FROM events").await;
    for (url, events) in [
        ("ftp://hooks.example.com/x", vec!["*".to_string()]),
        ("https://user:pw@hooks.example.com/x", vec!["*".to_string()]),
        ("not a url", vec!["*".to_string()]),
        ("https://hooks.example.com/x", vec!["NoSuchEvent".to_string()]),
    ] {
        let result = webhook_commands::register(&w.handler, &ctx(4), w.tenant_a, url, &events, None).await;
        assert!(
            matches!(
                result,
                Err(CommandError::Rejected(
                    WebhookRejection::InvalidUrl(_) | WebhookRejection::InvalidEventTypes(_)
                ))
            ),
            "{url} {events:?}: {result:?}"
        );
    }
    let short = webhook_commands::register(
        &w.handler,
        &ctx(5),
        w.tenant_a,
        "https://hooks.example.com/x",
        &["*".into()],
        Some("short".into()),
    )
    .await;
    assert!(matches!(
        short,
        Err(CommandError::Rejected(WebhookRejection::InvalidSecret(_)))
    ));
    assert_eq!(count("SELECT count(*) FROM events").await, events_before);
    assert_eq!(count("SELECT count(*) FROM webhook_secrets").await, 0);

    // A generated secret is returned once, kept outside the log, and never written to it.
    let command = ctx(6);
    let registered = webhook_commands::register(
        &w.handler,
        &command,
        w.tenant_a,
        "https://hooks.example.com/x",
        &["CallEnded".into()],
        None,
    )
    .await
    .unwrap();
    let secret = registered
        .generated_secret
        .clone()
        .expect("a generated secret is shown once");
    assert!(secret.starts_with("whsec_") && secret.len() == 6 + 64);
    let in_log: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE payload::text LIKE '%' || $1 || '%'")
        .bind(&secret)
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
    assert_eq!(in_log, 0);
    let stored: String = sqlx::query_scalar("SELECT secret FROM webhook_secrets WHERE webhook_id = $1")
        .bind(registered.webhook_id)
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
    assert_eq!(stored, secret);
    let again = webhook_commands::register(
        &w.handler,
        &command,
        w.tenant_a,
        "https://hooks.example.com/x",
        &["CallEnded".into()],
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (again.webhook_id, again.replayed, again.generated_secret),
        (registered.webhook_id, true, None)
    );

    // Removal deletes the secret in the same transaction as the event.
    webhook_commands::command(
        &w.handler,
        &ctx(7),
        w.tenant_a,
        registered.webhook_id,
        WebhookCommand::Remove,
    )
    .await
    .unwrap();
    assert_eq!(count("SELECT count(*) FROM webhook_secrets").await, 0);
}

#[tokio::test]
async fn the_delivery_log_pages_with_a_cursor_and_refuses_bad_pages() {
    let w = world().await;
    let receiver = Receiver::start(0).await;
    let hook = w
        .register(w.tenant_a, &receiver.url, &["TenantRenamed"])
        .await
        .webhook_id;
    for i in 0..5 {
        w.rename(w.tenant_a, &format!("Acme {i}")).await;
    }
    let clock = Arc::new(ManualClock::new(t0()));
    let d = w.dispatcher(clock, RetryPolicy::default(), 5, DispatcherConfig::default());
    d.enqueue_to_now(WAIT_LIMIT).await.unwrap();
    let filter = DeliveryFilter {
        webhook_id: Some(hook),
        status: Some(DeliveryStatus::Pending),
        ..DeliveryFilter::default()
    };
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let page = queries::list_deliveries(&w.db.pool, w.tenant_a, &filter, 2, after.as_deref())
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|d| d.event_position));
        if !page.has_next_page {
            break;
        }
        after = page.end_cursor;
    }
    assert_eq!(seen.len(), 5);
    assert!(
        seen.windows(2).all(|p| p[0] > p[1]),
        "newest first, no repeats: {seen:?}"
    );
    for bad in [0, queries::MAX_PAGE_SIZE + 1] {
        assert!(matches!(
            queries::list_deliveries(&w.db.pool, w.tenant_a, &filter, bad, None).await,
            Err(QueryError::PageSize)
        ));
    }
    assert!(matches!(
        queries::list_deliveries(&w.db.pool, w.tenant_a, &filter, 2, Some("garbage")).await,
        Err(QueryError::InvalidCursor)
    ));
}

#[tokio::test]
async fn the_cli_registers_lists_and_removes_and_the_projector_role_delivers() {
    let w = world().await;
    let receiver = Receiver::start(0).await;
    let tenant = w.tenant_a.to_string();

    let bad = common::ledgerline(
        &w.db,
        &["webhook", "add", "--tenant", &tenant, "--url", "ftp://x.test/h"],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", common::stderr(&bad));
    assert!(common::stderr(&bad).contains("invalid URL"), "{}", common::stderr(&bad));

    let added = common::ok(common::ledgerline(
        &w.db,
        &[
            "webhook",
            "add",
            "--tenant",
            &tenant,
            "--url",
            &receiver.url,
            "--events",
            "TenantRenamed",
        ],
    ));
    let mut lines = added.lines();
    let webhook_id = lines.next().unwrap().trim().to_string();
    let secret = lines.next().unwrap().trim().to_string();
    assert!(
        webhook_id.parse::<Uuid>().is_ok() && secret.starts_with("whsec_"),
        "{added}"
    );
    let list = common::ok(common::ledgerline(&w.db, &["webhook", "list", "--tenant", &tenant]));
    assert!(list.contains(&webhook_id) && list.contains(&receiver.url), "{list}");
    let other = common::ok(common::ledgerline(
        &w.db,
        &["webhook", "list", "--tenant", &w.tenant_b.to_string()],
    ));
    assert!(!other.contains(&webhook_id), "{other}");

    // The projector role runs the dispatcher.
    let mut projector = std::process::Command::new(common::BIN)
        .arg("projector")
        .env("DATABASE_URL", &w.db.url)
        .env("LEDGERLINE_LOG", "warn")
        .env(gateway::webhooks::ALLOW_PRIVATE_ENV, "1")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the projector");
    w.rename(w.tenant_a, "Acme via the projector").await;
    receiver.wait_for(1).await;
    common::until(
        &w.db.pool,
        60,
        "SELECT count(*) = 1 FROM webhook_deliveries WHERE status = 'delivered'",
    )
    .await;
    projector.kill().ok();
    projector.wait().ok();
    let got = &receiver.received()[0];
    let timestamp: i64 = got.timestamp.parse().unwrap();
    verify_signature(
        secret.as_bytes(),
        &got.timestamp,
        &got.signature,
        &got.body,
        timestamp,
        0,
    )
    .expect("signed with the secret the CLI printed");

    let deliveries = common::ok(common::ledgerline(
        &w.db,
        &["webhook", "deliveries", "--tenant", &tenant],
    ));
    assert!(
        deliveries.contains("TenantRenamed") && deliveries.contains("delivered"),
        "{deliveries}"
    );
    common::ok(common::ledgerline(
        &w.db,
        &["webhook", "remove", "--tenant", &tenant, "--webhook", &webhook_id],
    ));
    let list = common::ok(common::ledgerline(&w.db, &["webhook", "list", "--tenant", &tenant]));
    assert!(!list.contains(&webhook_id), "{list}");
}

#[tokio::test]
async fn filter_changes_rotation_and_disabling_apply_from_their_position_in_the_log() {
    let w = world().await;
    let receiver = Receiver::start(0).await;
    let hook = w
        .register(w.tenant_a, &receiver.url, &["TenantRenamed"])
        .await
        .webhook_id;
    let (a, h) = (w.tenant_a, &w.handler);
    const ROTATED: &str = "whsec_rotated_secret_000000";
    // Every change is in the log before the dispatcher reads any of it: each event must
    // still meet the configuration in force at its own position.
    w.rename(a, "Acme 1").await; // delivered
    webhook_commands::update(h, &ctx(10), a, hook, None, None, Some(ROTATED.into()))
        .await
        .unwrap();
    w.rename(a, "Acme 2").await; // delivered
    webhook_commands::command(h, &ctx(11), a, hook, WebhookCommand::Disable { reason: "pause".into() })
        .await
        .unwrap();
    w.rename(a, "Acme 3").await; // not delivered: disabled
    webhook_commands::command(h, &ctx(12), a, hook, WebhookCommand::Enable)
        .await
        .unwrap();
    w.rename(a, "Acme 4").await; // delivered
    webhook_commands::update(h, &ctx(13), a, hook, None, Some(vec!["TenantSuspended".into()]), None)
        .await
        .unwrap();
    w.rename(a, "Acme 5").await; // not delivered: filtered out
    directory::tenant_command(h, &ctx(14), a, TenantCommand::Suspend { reason: "test".into() })
        .await
        .unwrap(); // delivered

    let clock = Arc::new(ManualClock::new(t0()));
    let d = w.dispatcher(clock, RetryPolicy::default(), 9, DispatcherConfig::default());
    d.enqueue_to_now(WAIT_LIMIT).await.unwrap();
    while d.deliver_due().await.unwrap() > 0 {}

    let received = receiver.received();
    let bodies: Vec<serde_json::Value> = received
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let seen: Vec<String> = bodies
        .iter()
        .map(|b| match b["data"]["name"].as_str() {
            Some(name) => name.to_string(),
            None => b["event_type"].as_str().unwrap().to_string(),
        })
        .collect();
    assert_eq!(seen, vec!["Acme 1", "Acme 2", "Acme 4", "TenantSuspended"]);
    // An attempt is signed with the secret current when it is made (all of these were made
    // after the rotation), so a receiver that rotated never sees the old secret again.
    for r in &received {
        let ts: i64 = r.timestamp.parse().unwrap();
        verify_signature(ROTATED.as_bytes(), &r.timestamp, &r.signature, &r.body, ts, 0)
            .unwrap_or_else(|e| panic!("{}: {e}", r.event_id));
        assert!(verify_signature(SECRET.as_bytes(), &r.timestamp, &r.signature, &r.body, ts, 0).is_err());
    }
    // The read model shows the latest configuration, never a secret.
    Runner::new(w.store.clone(), Webhooks)
        .catch_up_to_now(WAIT_LIMIT)
        .await
        .unwrap();
    let view = queries::get_webhook(&w.db.pool, a, hook).await.unwrap().unwrap();
    assert_eq!(
        (view.event_types, view.enabled),
        (vec!["TenantSuspended".to_string()], true)
    );
    assert_eq!(
        view.secret_fingerprint,
        domain::webhook::secret_fingerprint(&hook, &domain::webhook::WebhookSecret(ROTATED.into()))
    );
}
