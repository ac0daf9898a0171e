//! Files over REST: CDRs and charges as CSV (streamed from the database cursor as rows
//! arrive, never buffered whole), an invoice as JSON or CSV, the tenant's events as NDJSON
//! (resumable after a fenced cursor), `/healthz` and `/metrics`.

use std::io;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::TryStreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::auth::Capability;
use super::billing::{self, CallFilter, Cdr, Charge, Invoice};
use super::error::ApiError;
use super::events::{cursor_text, parse_cursor};
use super::server::{admit, SharedApp};

pub fn routes() -> Router<SharedApp> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/cdrs.csv", get(cdrs_csv))
        .route("/api/v1/charges.csv", get(charges_csv))
        .route("/api/v1/invoices/{id}", get(invoice))
        .route("/api/v1/events.ndjson", get(events_ndjson))
}

async fn healthz(State(app): State<SharedApp>) -> Response {
    match sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&app.state.pool)
        .await
    {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "healthz: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response()
        }
    }
}

async fn metrics(State(app): State<SharedApp>) -> Response {
    match app.metrics.render(&app.state.pool).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// A response body fed by a task: each chunk is sent as soon as it is ready, and the channel's
/// bound makes the database read wait for a slow client instead of piling up rows.
fn streamed<F, Fut>(content_type: &'static str, producer: F) -> Response
where
    F: FnOnce(mpsc::Sender<Result<Bytes, io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(producer(tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    ([(header::CONTENT_TYPE, content_type)], Body::from_stream(stream)).into_response()
}

const FLUSH_BYTES: usize = 32 * 1024;

fn field(out: &mut String, value: &str) {
    billing_csv_field(out, value);
    out.push(',');
}

fn billing_csv_field(out: &mut String, value: &str) {
    ::billing::csv::push_field(out, value);
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

fn end_row(out: &mut String) {
    out.pop();
    out.push('\n');
}

pub const CHARGES_HEADER: &str = "call_id,leg_id,account_id,answered_at,duration_s,destination,status,unrated_reason,\
tariff_id,tariff_version,matched_prefix,billed_s,currency,amount,amount_exact,explanation\n";

pub fn charge_row(out: &mut String, c: &Charge) {
    for v in [
        c.call_id.to_string(),
        c.leg_id.to_string(),
        c.account_id.to_string(),
        billing::ts(c.answered_at),
        c.duration_s.to_string(),
        c.destination.clone(),
        c.status.clone(),
        opt(&c.unrated_reason),
        opt(&c.tariff_id),
        opt(&c.tariff_version),
        opt(&c.matched_prefix),
        opt(&c.billed_s),
        opt(&c.currency),
        opt(&c.amount),
        opt(&c.amount_exact),
        opt(&c.explanation),
    ] {
        field(out, &v);
    }
    end_row(out);
}

pub const CDRS_HEADER: &str = "call_id,direction,caller,caller_name,callee,callee_name,did,trunk_id,account_id,\
started_at,authorized_at,max_duration_s,rejected_reason,ring_at,answer_at,end_at,duration_s,billed_s,end_reason,\
hangup_by,sip_status,holds,transfers,transferred_to,charge,currency\n";

fn cdr_row(out: &mut String, c: &Cdr) {
    let t = |v: &Option<chrono::DateTime<chrono::Utc>>| v.map(billing::ts).unwrap_or_default();
    for v in [
        c.call_id.to_string(),
        c.direction.clone(),
        c.caller.clone(),
        c.caller_name.clone(),
        c.callee.clone(),
        c.callee_name.clone(),
        opt(&c.did),
        opt(&c.trunk_id),
        opt(&c.account_id),
        billing::ts(c.started_at),
        t(&c.authorized_at),
        opt(&c.max_duration_s),
        opt(&c.rejected_reason),
        t(&c.ring_at),
        t(&c.answer_at),
        t(&c.end_at),
        opt(&c.duration_s),
        opt(&c.billed_s),
        opt(&c.end_reason),
        opt(&c.hangup_by),
        opt(&c.sip_status),
        c.holds.to_string(),
        c.transfers.to_string(),
        opt(&c.transferred_to),
        opt(&c.charge),
        opt(&c.currency),
    ] {
        field(out, &v);
    }
    end_row(out);
}

/// Sends `buf` when it is large enough (or `force`); false when the client went away.
async fn flush(tx: &mpsc::Sender<Result<Bytes, io::Error>>, buf: &mut String, force: bool) -> bool {
    if buf.is_empty() || (!force && buf.len() < FLUSH_BYTES) {
        return true;
    }
    tx.send(Ok(Bytes::from(std::mem::take(buf)))).await.is_ok()
}

async fn fail(tx: &mpsc::Sender<Result<Bytes, io::Error>>, what: &str, e: impl std::fmt::Display) {
    tracing::error!(error = %e, "api: {what} export failed mid-stream");
    let _ = tx.send(Err(io::Error::other("export failed"))).await;
}

type FilterQuery = Result<Query<CallFilter>, axum::extract::rejection::QueryRejection>;

async fn cdrs_csv(State(app): State<SharedApp>, headers: HeaderMap, filter: FilterQuery) -> Response {
    let query = |tenant, filter: &CallFilter| billing::cdrs_query(tenant, filter, None, None);
    export_csv::<Cdr>(&app, &headers, filter, false, CDRS_HEADER, query, cdr_row).await
}

async fn charges_csv(State(app): State<SharedApp>, headers: HeaderMap, filter: FilterQuery) -> Response {
    let query = |tenant, filter: &CallFilter| billing::charges_query(tenant, filter, None, None);
    export_csv::<Charge>(&app, &headers, filter, true, CHARGES_HEADER, query, charge_row).await
}

/// A CSV of every row `query` selects for the caller's tenant, rendered row by row as the
/// database sends them.
async fn export_csv<T>(
    app: &SharedApp,
    headers: &HeaderMap,
    filter: FilterQuery,
    charges: bool,
    header: &'static str,
    query: fn(Uuid, &CallFilter) -> sqlx::QueryBuilder<'static, sqlx::Postgres>,
    render: fn(&mut String, &T),
) -> Response
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin + 'static,
{
    let caller = match admit(app, headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(e) = caller.require(Capability::Export) {
        return e.into_response();
    }
    let Query(filter) = match filter {
        Ok(f) => f,
        Err(e) => return ApiError::invalid(format!("bad filter: {}", e.body_text())).into_response(),
    };
    if let Err(e) = filter.validate(charges) {
        return e.into_response();
    }
    let pool = app.state.pool.clone();
    let what = if charges { "charges" } else { "cdrs" };
    streamed("text/csv; charset=utf-8", move |tx| async move {
        let mut buf = String::from(header);
        let mut query = query(caller.tenant_id, &filter);
        let mut rows = query.build_query_as::<T>().fetch(&pool);
        loop {
            match rows.try_next().await {
                Ok(Some(row)) => {
                    render(&mut buf, &row);
                    if !flush(&tx, &mut buf, false).await {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => return fail(&tx, what, e).await,
            }
        }
        flush(&tx, &mut buf, true).await;
    })
}

#[derive(Deserialize, Debug, Default)]
struct InvoiceParams {
    format: Option<String>,
}

/// `{account_id}_{YYYY-MM}` (from `Invoice.id`), optionally ending in `.csv` or `.json`.
async fn invoice(
    State(app): State<SharedApp>,
    headers: HeaderMap,
    Path(id): Path<String>,
    params: Result<Query<InvoiceParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let caller = match admit(&app, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(e) = caller.require(Capability::Export) {
        return e.into_response();
    }
    let format = params.ok().and_then(|Query(p)| p.format);
    let accept_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    let (id, csv) = match id.strip_suffix(".csv") {
        Some(stem) => (stem.to_string(), true),
        None => {
            let stem = id.strip_suffix(".json").unwrap_or(&id).to_string();
            (
                stem,
                format.as_deref() == Some("csv") || (format.is_none() && accept_csv),
            )
        }
    };
    let Some((account, period)) = id.split_once('_') else {
        return ApiError::invalid("an invoice id is {account_id}_{YYYY-MM}").into_response();
    };
    let Ok(account) = account.parse::<Uuid>() else {
        return ApiError::invalid("an invoice id is {account_id}_{YYYY-MM}").into_response();
    };
    if let Err(e) = billing::parse_period(period) {
        return e.into_response();
    }
    let pool = &app.state.pool;
    let sql = format!(
        "SELECT {} FROM rm_invoices WHERE tenant_id = $1 AND account_id = $2 AND period = $3",
        billing::INVOICE_COLUMNS
    );
    let found: Option<Invoice> = match sqlx::query_as(&sql)
        .bind(caller.tenant_id)
        .bind(account)
        .bind(period)
        .fetch_optional(pool)
        .await
    {
        Ok(i) => i,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Some(invoice) = found else {
        return ApiError::not_found("no such invoice").into_response();
    };
    let lines = match billing::invoice_lines(pool, &invoice, None).await {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    if csv {
        let mut out =
            String::from("account_id,period,view,line_no,service,destination,kind,original_period,count,amount\n");
        for l in &lines {
            for v in [
                invoice.account_id.to_string(),
                invoice.period.clone(),
                l.view.clone(),
                l.line_no.to_string(),
                l.service.clone(),
                l.destination.clone(),
                l.kind.clone(),
                opt(&l.original_period),
                l.count.to_string(),
                l.amount.to_string(),
            ] {
                field(&mut out, &v);
            }
            end_row(&mut out);
        }
        return ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response();
    }
    let mut body = match serde_json::to_value(&invoice) {
        Ok(v) => v,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    body["id"] = serde_json::Value::String(invoice.invoice_id());
    body["lines"] = serde_json::to_value(&lines).unwrap_or_default();
    axum::Json(body).into_response()
}

#[derive(Deserialize, Debug, Default)]
struct EventParams {
    /// Resume after this fenced cursor (`tx_id:position`, the `cursor` of the last line read).
    after: Option<String>,
    /// Or start after this global position.
    from_position: Option<i64>,
    /// At most this many events (the export ends at the head of the log otherwise).
    limit: Option<i64>,
}

/// The tenant's events, one JSON object per line, each with its `cursor`.
async fn events_ndjson(
    State(app): State<SharedApp>,
    headers: HeaderMap,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let caller = match admit(&app, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(e) = caller.require(Capability::ReadEvents) {
        return e.into_response();
    }
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => return ApiError::invalid(format!("bad parameters: {}", e.body_text())).into_response(),
    };
    let after = match params.after.as_deref().map(parse_cursor).transpose() {
        Ok(c) => c.unwrap_or(commands::Cursor::START),
        Err(e) => return e.into_response(),
    };
    let min_position = params.from_position.unwrap_or(0).max(0);
    let mut remaining = params.limit.unwrap_or(i64::MAX);
    if remaining < 1 {
        return ApiError::invalid("limit must be positive").into_response();
    }
    let store = app.state.store.clone();
    streamed("application/x-ndjson", move |tx| async move {
        let mut cursor = after;
        let mut buf = String::new();
        while remaining > 0 {
            let batch = match store
                .read_all_from(cursor, remaining.min(1000), Some(caller.tenant_id), min_position)
                .await
            {
                Ok(b) => b,
                Err(e) => return fail(&tx, "events", e).await,
            };
            if batch.is_empty() {
                break;
            }
            for event in batch {
                cursor = event.cursor();
                remaining -= 1;
                let mut line = match serde_json::to_value(&event) {
                    Ok(v) => v,
                    Err(e) => return fail(&tx, "events", e).await,
                };
                line["cursor"] = serde_json::Value::String(cursor_text(cursor));
                buf.push_str(&line.to_string());
                buf.push('\n');
                if !flush(&tx, &mut buf, false).await {
                    return;
                }
            }
        }
        flush(&tx, &mut buf, true).await;
    })
}
