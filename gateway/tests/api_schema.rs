//! The SDL committed at `schemas/graphql/schema.graphql` is the schema the code serves;
//! regenerate with `UPDATE_SCHEMAS=1 cargo test -p gateway --test api_schema`. Also: the
//! GraphiQL page and `/metrics` are served by the binary itself.

#![allow(clippy::disallowed_methods)] // Tests stamp their commands with the clock.

mod api_support;

use std::path::PathBuf;

#[test]
fn committed_sdl_matches_the_code() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/graphql/schema.graphql");
    let sdl = gateway::api::schema::sdl();
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &sdl).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == sdl,
        "schemas/graphql/schema.graphql differs from the code; run `UPDATE_SCHEMAS=1 cargo test -p gateway --test api_schema` and commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_is_offline_and_metrics_count_requests() {
    let env = api_support::start().await;
    let mut http = env.client();
    let page = http.request("GET", "/graphiql", &[], b"").await.unwrap();
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains("/graphql"));
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"),
        "no external assets"
    );
    let page = http
        .request("GET", "/graphql", &[("Accept", "text/html")], b"")
        .await
        .unwrap();
    assert_eq!(page.text(), html);
    let metrics = http.request("GET", "/metrics", &[], b"").await.unwrap();
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for name in [
        "ledgerline_events_appended_total",
        "ledgerline_registrations",
        "ledgerline_live_calls",
        "ledgerline_http_requests_total{route=\"/graphiql\",status=\"200\"} 1",
        "ledgerline_http_request_duration_seconds_bucket{route=\"/graphiql\",le=\"+Inf\"} 1",
    ] {
        assert!(text.contains(name), "{name} in {text}");
    }
}
