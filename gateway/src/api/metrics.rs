//! `/metrics` in Prometheus' text format: HTTP requests and latencies counted here; appends,
//! projection lag, registrations and live calls read from the log and the read models.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::PgPool;

/// Upper bounds of the latency histogram, in seconds.
pub const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum_s: f64,
}

/// One route's requests by status, and its latency.
#[derive(Default)]
struct Route {
    statuses: BTreeMap<u16, u64>,
    latency: Histogram,
}

#[derive(Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<String, Route>>,
}

impl Metrics {
    pub fn observe(&self, route: &str, status: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        // A route seen before costs no allocation.
        let r = match routes.get_mut(route) {
            Some(r) => r,
            None => routes.entry(route.to_string()).or_default(),
        };
        *r.statuses.entry(status).or_default() += 1;
        let h = &mut r.latency;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum_s += seconds;
    }

    pub async fn render(&self, pool: &PgPool) -> Result<String, sqlx::Error> {
        let mut out = String::new();
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM events")
            .fetch_one(pool)
            .await?;
        out.push_str("# HELP ledgerline_events_appended_total Events in the log (the head position).\n");
        out.push_str("# TYPE ledgerline_events_appended_total counter\n");
        let _ = writeln!(out, "ledgerline_events_appended_total {head}");
        let lags: Vec<(String, i64)> =
            sqlx::query_as("SELECT projection, greatest($1 - position, 0) FROM projection_checkpoints ORDER BY 1")
                .bind(head)
                .fetch_all(pool)
                .await?;
        out.push_str("# HELP ledgerline_projection_lag_events Events past each projection's checkpoint.\n");
        out.push_str("# TYPE ledgerline_projection_lag_events gauge\n");
        for (projection, lag) in lags {
            let _ = writeln!(
                out,
                "ledgerline_projection_lag_events{{projection=\"{projection}\"}} {lag}"
            );
        }
        let registrations: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_registrations")
            .fetch_one(pool)
            .await?;
        out.push_str("# HELP ledgerline_registrations Registered device bindings.\n");
        out.push_str("# TYPE ledgerline_registrations gauge\n");
        let _ = writeln!(out, "ledgerline_registrations {registrations}");
        let calls: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM rm_live_calls GROUP BY state ORDER BY state")
                .fetch_all(pool)
                .await?;
        out.push_str("# HELP ledgerline_live_calls Calls in progress, by state.\n");
        out.push_str("# TYPE ledgerline_live_calls gauge\n");
        if calls.is_empty() {
            out.push_str("ledgerline_live_calls{state=\"any\"} 0\n");
        }
        for (state, n) in calls {
            let _ = writeln!(out, "ledgerline_live_calls{{state=\"{state}\"}} {n}");
        }
        out.push_str("# HELP ledgerline_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE ledgerline_http_requests_total counter\n");
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        for (route, r) in routes.iter() {
            for (status, n) in &r.statuses {
                let _ = writeln!(
                    out,
                    "ledgerline_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP ledgerline_http_request_duration_seconds HTTP latency by route.\n");
        out.push_str("# TYPE ledgerline_http_request_duration_seconds histogram\n");
        for (route, h) in routes.iter().map(|(route, r)| (route, &r.latency)) {
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "ledgerline_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "ledgerline_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "ledgerline_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum_s
            );
            let _ = writeln!(
                out,
                "ledgerline_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        Ok(out)
    }
}
