//! Operator listener (issue 2, item 8): `/healthz`, `/readyz`, and `/metrics` with requests
//! by tenant, route and status, the upstream latency histogram and TLS handshakes by
//! negotiated version and cipher, and the connections cut at slow-client limits.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn healthz_and_readyz_answer() {
    let gw = Gateway::start_default();
    let health = gw.admin("/healthz");
    assert_eq!(health.status, 200);
    assert_eq!(health.text().trim(), "ok");
    assert_eq!(gw.admin("/readyz").status, 200);
}

#[tokio::test]
async fn metrics_count_requests_by_tenant_route_and_status() {
    let gw = Gateway::start_default();
    let client = gw.client_h1();
    for (host, path, status) in [
        ("acme.localhost", "/api/m", 200),
        ("acme.localhost", "/app", 401),
        ("globex.localhost", "/api/m", 200),
    ] {
        let resp = client
            .get(gw.url(host, path))
            .header("accept", "application/json")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status().as_u16(), status, "{host}{path}");
    }
    let wanted = [
        ("acme", "api", "200"),
        ("acme", "app", "401"),
        ("globex", "api", "200"),
    ];
    let mut last = Vec::new();
    let found = poll_until(Duration::from_secs(10), || {
        last = gw.metrics();
        wanted.iter().all(|(tenant, route, status)| {
            last.iter().any(|s| {
                s.name == "portcullis_requests_total"
                    && s.label("tenant") == Some(tenant)
                    && s.label("route") == Some(route)
                    && s.label("status") == Some(status)
                    && s.value >= 1.0
            })
        })
    });
    let ours: Vec<&Sample> = last
        .iter()
        .filter(|s| s.name == "portcullis_requests_total")
        .collect();
    assert!(
        found,
        "portcullis_requests_total must have {wanted:?} (tenant, route id, status); got {ours:?}"
    );
    assert!(
        last.iter()
            .any(|s| s.name == "portcullis_upstream_latency_seconds_count" && s.value >= 1.0),
        "portcullis_upstream_latency_seconds histogram has no observations"
    );
}

#[tokio::test]
async fn metrics_count_tls_handshakes_by_version_and_cipher() {
    let gw = Gateway::start_default();
    let resp = gw
        .client_h1()
        .get(gw.url("acme.localhost", "/api/tls"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let mut last = Vec::new();
    let found = poll_until(Duration::from_secs(10), || {
        last = gw.metrics();
        last.iter().any(|s| {
            s.name == "portcullis_tls_handshakes_total"
                && s.label("version").is_some_and(|v| v.contains('3'))
                && s.label("cipher").is_some_and(|c| {
                    let c = c.to_ascii_uppercase();
                    c.contains("AES") || c.contains("CHACHA")
                })
                && s.value >= 1.0
        })
    });
    let ours: Vec<&Sample> = last
        .iter()
        .filter(|s| s.name == "portcullis_tls_handshakes_total")
        .collect();
    assert!(
        found,
        "portcullis_tls_handshakes_total{{version, cipher}} must count the TLS 1.3 handshake; got {ours:?}"
    );
}

/// The slow-client cuts are listed, at 0, before any has happened: an alert on their rate
/// needs the series to exist.
#[test]
fn metrics_list_every_client_cut_reason_from_the_start() {
    let gw = Gateway::start_default();
    let cuts: Vec<(String, f64)> = gw
        .metrics()
        .into_iter()
        .filter(|s| s.name == "portcullis_client_connections_cut_total")
        .map(|s| (s.label("reason").unwrap_or("").to_string(), s.value))
        .collect();
    let mut reasons: Vec<&str> = cuts.iter().map(|(r, _)| r.as_str()).collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        [
            "body_timeout",
            "header_timeout",
            "header_too_large",
            "send_timeout"
        ],
        "{cuts:?}"
    );
    assert!(cuts.iter().all(|(_, v)| *v == 0.0), "{cuts:?}");
}
