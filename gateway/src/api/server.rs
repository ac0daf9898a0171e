//! The axum server: authentication, the per-key rate limit, body and query limits, the
//! GraphQL endpoints, and the routes of `rest.rs`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql::Data;
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message};
use axum::extract::{DefaultBodyLimit, MatchedPath, RawQuery, Request, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use commands::{CommandHandler, EventStore};
use futures::{SinkExt, StreamExt};
use tokio::sync::{broadcast, watch};

use super::auth::{self, Caller, RateLimiter};
use super::doc_cache::DocumentCache;
use super::error::{ApiError, Code};
use super::key_cache::{KeyCache, Revoked};
use super::metrics::Metrics;
use super::raw_json::{self, RawParts};
use super::schema::{self, ApiSchema};
use super::{rest, ApiConfig, ApiState};

pub struct App {
    pub state: ApiState,
    pub schema: ApiSchema,
    pub limiter: RateLimiter,
    pub metrics: Metrics,
    /// Parsed GraphQL documents by query text (`doc_cache.rs`).
    pub documents: DocumentCache,
    /// The length of the last GraphQL answer, to size the next one's buffer.
    pub last_answer_len: AtomicUsize,
}

pub type SharedApp = Arc<App>;

pub struct ApiServer {
    pub local_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
    /// The server's memory of keys (tests wait on its follower).
    pub keys: Arc<KeyCache>,
}

pub fn app(store: EventStore, config: ApiConfig) -> SharedApp {
    let state = ApiState {
        pool: store.pool().clone(),
        handler: CommandHandler::new(store.clone()),
        store,
        config: config.clone(),
        keys: Arc::new(KeyCache::default()),
    };
    Arc::new(App {
        schema: schema::build(state.clone()),
        limiter: RateLimiter::new(config.rate_per_second, config.rate_burst),
        metrics: Metrics::default(),
        documents: DocumentCache::default(),
        last_answer_len: AtomicUsize::new(0),
        state,
    })
}

pub fn router(app: SharedApp) -> Router {
    let body_limit = app.state.config.max_body_bytes;
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/graphql/ws", get(graphql_ws))
        .route("/graphiql", get(graphiql))
        .route("/", get(graphiql))
        .merge(rest::routes())
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

/// Bind and serve until `shutdown` turns true.
pub async fn start(
    store: EventStore,
    config: ApiConfig,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<ApiServer> {
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {}: {e}", config.bind))?;
    let local_addr = listener.local_addr()?;
    let app = app(store, config);
    let keys = app.state.keys.clone();
    tokio::spawn(keys.clone().follow(app.state.pool.clone(), shutdown.clone()));
    let router = router(app);
    let task = tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stop).await {
            tracing::error!(error = %e, "api: server stopped");
        }
    });
    Ok(ApiServer { local_addr, task, keys })
}

/// Count every request and its latency, by route and status.
async fn observe(State(app): State<SharedApp>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    app.metrics
        .observe(route, response.status().as_u16(), started.elapsed());
    response
}

/// The caller of a request, within its rate limit.
pub async fn admit(app: &App, headers: &HeaderMap) -> Result<Caller, Response> {
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let caller = auth::authenticate(&app.state.keys, &app.state.pool, auth::bearer(value))
        .await
        .map_err(IntoResponse::into_response)?;
    match limit(app, &caller) {
        Some(refused) => Err(refused),
        None => Ok(caller),
    }
}

/// The 429 answer when the caller is over its rate, else `None`.
fn limit(app: &App, caller: &Caller) -> Option<Response> {
    if let Err(wait) = app.limiter.check(caller.key_id, Instant::now()) {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut response =
            ApiError::new(Code::RateLimited, format!("rate limit exceeded; retry in {seconds} s")).into_response();
        if let Ok(v) = HeaderValue::from_str(&seconds.max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Some(response);
    }
    None
}

async fn execute(app: &App, caller: Caller, mut request: async_graphql::Request) -> Response {
    // A query seen before is not parsed again; every check still runs on it.
    let mut parts = None;
    if let Some(parsed) = app.documents.document(&request.query) {
        request.set_parsed_query(parsed.document);
        if parsed.distinct_root_fields {
            let offered = Arc::new(RawParts::default());
            request = request.data(offered.clone());
            parts = Some(offered);
        }
    }
    let mut response = app.schema.execute(request.data(caller)).await;
    // Parse, validation and limit errors come from the library without a code.
    for error in &mut response.errors {
        let has_code = error.extensions.as_ref().is_some_and(|e| e.get("code").is_some());
        if !has_code {
            error
                .extensions
                .get_or_insert_with(Default::default)
                .set("code", Code::InvalidInput.as_str());
        }
    }
    let parts = parts.map(|p| p.take()).unwrap_or_default();
    let capacity = app.last_answer_len.load(Ordering::Relaxed).clamp(256, 1 << 20);
    match raw_json::response_json(&response, &parts, capacity) {
        Ok(body) => {
            app.last_answer_len
                .store(body.len() + body.len() / 8, Ordering::Relaxed);
            (
                [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                body,
            )
                .into_response()
        }
        Err(e) => ApiError::internal(format!("serializing the answer: {e}")).into_response(),
    }
}

async fn graphql_post(State(app): State<SharedApp>, headers: HeaderMap, body: Bytes) -> Response {
    let caller = match admit(&app, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return ApiError::invalid(format!(
                "the body must be a GraphQL request as JSON ({{\"query\": ..., \"variables\": ...}}): {e}"
            ))
            .into_response()
        }
    };
    execute(&app, caller, request).await
}

async fn graphql_get(State(app): State<SharedApp>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        if wants_html {
            return graphiql().await.into_response();
        }
        return ApiError::invalid("GET /graphql needs ?query=...").into_response();
    };
    let caller = match admit(&app, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let request = match async_graphql::http::parse_query_string(&query) {
        Ok(r) => r,
        Err(e) => return ApiError::invalid(format!("malformed query string: {e}")).into_response(),
    };
    // GET is for reads only: a link must never change anything.
    if request.query.contains("mutation") {
        if let Ok(doc) = async_graphql::parser::parse_query(&request.query) {
            let mutates = doc
                .operations
                .iter()
                .any(|(_, op)| op.node.ty == async_graphql::parser::types::OperationType::Mutation);
            if mutates {
                return ApiError::invalid("mutations must be POSTed").into_response();
            }
        }
    }
    execute(&app, caller, request).await
}

async fn graphiql() -> Html<&'static str> {
    Html(include_str!("graphiql.html"))
}

/// graphql-ws (and the older subscriptions-transport-ws): the key comes in the upgrade's
/// `Authorization` header or in `connection_init`'s payload (`{"authorization": "Bearer …"}`).
/// A connection lives no longer than its key: once the key is revoked (on this node, or read
/// from the log by the key follower) the server closes it with 4403.
async fn graphql_ws(
    State(app): State<SharedApp>,
    headers: HeaderMap,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    let header_key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| auth::bearer(Some(v)))
        .map(str::to_string);
    let schema = app.schema.clone();
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| async move {
            // Listen before authenticating: a revocation committed in between is not missed.
            let revocations = app.state.keys.revocations();
            let (authenticated, caller) = tokio::sync::oneshot::channel::<(Caller, String)>();
            let (mut sink, stream) = socket.split();
            let init_app = app.clone();
            let serve = GraphQLWebSocket::new_with_pair(&mut sink, stream, schema, protocol)
                .on_connection_init(move |payload| async move {
                    let from_payload = ["authorization", "Authorization"]
                        .iter()
                        .find_map(|k| payload.get(*k).and_then(|v| v.as_str()))
                        .and_then(|v| auth::bearer(Some(v)).map(str::to_string))
                        .or_else(|| payload.get("apiKey").and_then(|v| v.as_str()).map(str::to_string));
                    let key = header_key.or(from_payload);
                    let caller = auth::authenticate(&init_app.state.keys, &init_app.state.pool, key.as_deref()).await?;
                    if limit(&init_app, &caller).is_some() {
                        return Err(ApiError::new(Code::RateLimited, "rate limit exceeded").into());
                    }
                    let _ = authenticated.send((caller, key.unwrap_or_default()));
                    let mut data = Data::default();
                    data.insert(caller);
                    Ok(data)
                })
                .serve();
            let revoked = async {
                match caller.await {
                    Ok((caller, key)) => key_revoked(&app, revocations, caller, &key).await,
                    // Never authenticated: the protocol closes the connection itself.
                    Err(_) => std::future::pending().await,
                }
            };
            let close = tokio::select! {
                _ = serve => false,
                _ = revoked => true,
            };
            if close {
                let frame = CloseFrame {
                    code: 4403,
                    reason: "Forbidden: the API key was revoked".into(),
                };
                let _ = sink.send(Message::Close(Some(frame))).await;
            }
        })
}

/// Resolves once `caller`'s key is revoked. A listener that fell behind asks the log.
async fn key_revoked(app: &App, mut revocations: broadcast::Receiver<Revoked>, caller: Caller, key: &str) {
    loop {
        match revocations.recv().await {
            Ok((tenant_id, key_id)) if tenant_id == caller.tenant_id && key_id == caller.key_id => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if auth::lookup(&app.state.pool, &auth::hash_key(key)).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
        }
    }
}
