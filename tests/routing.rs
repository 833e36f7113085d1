//! Tenants and routing (issue 2, item 4): Host picks the tenant (no default tenant), SNI and
//! Host must agree, longest whole-segment prefix wins, `authenticated`/`roles` routes fail
//! closed, upstream failures give 502/504 pages, WebSocket and h2 pass, upstream keep-alive,
//! and the plain listener only redirects.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A request header carrying a unique marker, so the recorder can prove it never reached
/// the backend.
fn probe(id: &str) -> String {
    format!("X-Test-Probe: {id}")
}

fn assert_not_forwarded(gw: &Gateway, marker: &str, case: &str) {
    let traffic = gw.backend_traffic();
    assert!(
        !traffic.contains(marker),
        "{case}: the request reached the backend:\n{traffic}"
    );
}

#[tokio::test]
async fn each_tenant_reaches_only_its_own_routes() {
    let gw = Gateway::start_default();
    let client = gw.client();

    let resp = client
        .get(gw.url("acme.localhost", "/hello"))
        .send()
        .await
        .expect("acme /hello");
    assert_eq!(resp.status(), 200, "acme /hello via acme's `/` route");
    let echo = parse_echo(&resp.bytes().await.expect("body")).expect("echo JSON");
    assert_eq!(echo.path, "/hello");
    assert_eq!(echo.header_once("x-portcullis-tenant"), "acme");

    let resp = client
        .get(gw.url("globex.localhost", "/api/hello"))
        .send()
        .await
        .expect("globex /api/hello");
    assert_eq!(resp.status(), 200, "globex /api/hello");
    let echo = parse_echo(&resp.bytes().await.expect("body")).expect("echo JSON");
    assert_eq!(echo.path, "/api/hello");
    assert_eq!(echo.header_once("x-portcullis-tenant"), "globex");

    // globex has no `/` route: acme's must not serve it.
    let resp = client
        .get(gw.url("globex.localhost", "/hello"))
        .send()
        .await
        .expect("globex /hello");
    assert_eq!(resp.status(), 404, "globex /hello has no route");
}

#[tokio::test]
async fn unknown_host_is_404_and_not_forwarded() {
    let gw = Gateway::start_default();
    for (i, host) in [
        "nope.localhost",
        "other.localhost",
        "acme.localhost.evil.example",
    ]
    .iter()
    .enumerate()
    {
        let marker = format!("unknown-host-{i}");
        let req = request_bytes("GET", "/", host, &[&probe(&marker)], b"");
        let resp = gw.raw("acme.localhost", &req).await.single();
        assert_eq!(resp.status, 404, "Host: {host} (SNI acme.localhost)");
        assert!(resp.echo().is_none(), "Host: {host} got an echo body");
        assert_not_forwarded(&gw, &marker, host);
    }
}

#[tokio::test]
async fn missing_host_is_not_forwarded() {
    let gw = Gateway::start_default();
    let req =
        b"GET /api/no-host HTTP/1.1\r\nX-Test-Probe: missing-host\r\nConnection: close\r\n\r\n";
    let resp = gw.raw("acme.localhost", req).await.single();
    // No default tenant: the SNI must not stand in for the missing Host.
    assert!(
        resp.status == 400 || resp.status == 404,
        "request without Host: expected 400 or 404, got {}",
        resp.status
    );
    assert_not_forwarded(&gw, "missing-host", "missing Host");
}

#[tokio::test]
async fn duplicate_host_header_is_rejected() {
    let gw = Gateway::start_default();
    // RFC 9112 §3.2: a request with more than one Host field gets 400.
    let req = b"GET /api/dup-host HTTP/1.1\r\nHost: acme.localhost\r\nHost: globex.localhost\r\n\
X-Test-Probe: duplicate-host\r\nConnection: close\r\n\r\n";
    let resp = gw.raw("acme.localhost", req).await.single();
    assert_eq!(resp.status, 400, "two Host headers");
    assert_not_forwarded(&gw, "duplicate-host", "two Host headers");
}

#[tokio::test]
async fn sni_and_host_mismatch_is_421() {
    let gw = Gateway::start_default();
    let port = gw.https_port();
    let globex_with_port = format!("globex.localhost:{port}");
    let acme_with_port = format!("acme.localhost:{port}");
    for (i, (sni, host)) in [
        ("acme.localhost", "globex.localhost"),
        ("globex.localhost", "acme.localhost"),
        ("acme.localhost", globex_with_port.as_str()),
        ("globex.localhost", acme_with_port.as_str()),
    ]
    .iter()
    .enumerate()
    {
        let marker = format!("mismatch-{i}");
        let req = request_bytes("GET", "/api/x", host, &[&probe(&marker)], b"");
        let resp = gw.raw(sni, &req).await.single();
        assert_eq!(resp.status, 421, "SNI {sni} with Host {host}");
        assert_not_forwarded(&gw, &marker, &format!("SNI {sni} Host {host}"));
    }
}

#[tokio::test]
async fn host_header_with_port_is_accepted() {
    let gw = Gateway::start_default();
    let host = format!("acme.localhost:{}", gw.https_port());
    let req = request_bytes("GET", "/api/port", &host, &[], b"");
    let resp = gw.raw("acme.localhost", &req).await.single();
    assert_eq!(resp.status, 200, "Host with port: {}", resp.text());
    assert_eq!(
        resp.expect_echo().header_once("x-portcullis-tenant"),
        "acme"
    );
}

#[tokio::test]
async fn longest_prefix_route_wins() {
    let gw = Gateway::start_default();
    let mut failures = Vec::new();
    for (path, expected) in [
        ("/api/private", 401),
        ("/api/private/", 401),
        ("/api/private/x", 401),
        ("/api/privatex", 200),
        ("/api/x", 200),
        ("/api", 200),
    ] {
        let resp = gw.raw_get("acme.localhost", path, &[ACCEPT_JSON]).await;
        if resp.status != expected {
            failures.push(format!(
                "acme {path}: expected {expected}, got {}",
                resp.status
            ));
        } else if expected == 200 && resp.echo().map(|e| e.path) != Some(path.to_string()) {
            failures.push(format!("acme {path}: backend saw {:?}", resp.echo()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn prefixes_match_whole_segments_only() {
    let gw = Gateway::start_default();
    let mut failures = Vec::new();
    for (host, path, expected) in [
        // globex has only /api and /app: `/apix` must not match `/api`.
        ("globex.localhost", "/apix", 404),
        ("globex.localhost", "/apix/y", 404),
        ("globex.localhost", "/ap", 404),
        ("globex.localhost", "/api", 200),
        ("globex.localhost", "/api/", 200),
        ("globex.localhost", "/api/x", 200),
        ("globex.localhost", "/api?x=1", 200),
        // acme: `/appx` falls to the public `/` route, `/app` is authenticated.
        ("acme.localhost", "/appx", 200),
        ("acme.localhost", "/app", 401),
        ("acme.localhost", "/app/", 401),
        ("acme.localhost", "/app?x=1", 401),
        ("acme.localhost", "/administrator", 200),
        ("acme.localhost", "/admin/users", 401),
    ] {
        let resp = gw.raw_get(host, path, &[ACCEPT_JSON]).await;
        if resp.status != expected {
            failures.push(format!(
                "{host} {path}: expected {expected}, got {}",
                resp.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn authenticated_route_is_not_forwarded() {
    let gw = Gateway::start_default();
    for (i, (host, path)) in [
        ("acme.localhost", "/app"),
        ("acme.localhost", "/app/dashboard"),
        ("globex.localhost", "/app/x"),
    ]
    .iter()
    .enumerate()
    {
        let marker = format!("authn-{i}");
        let resp = gw
            .raw_get(host, path, &[&probe(&marker), ACCEPT_JSON])
            .await;
        assert_eq!(
            resp.status, 401,
            "{host}{path} without a session (API client)"
        );
        assert!(
            resp.echo().is_none(),
            "{host}{path}: got the backend's answer"
        );
        assert_not_forwarded(&gw, &marker, path);
    }
}

#[tokio::test]
async fn roles_route_is_not_forwarded() {
    let gw = Gateway::start_default();
    for (i, path) in ["/admin", "/admin/users"].iter().enumerate() {
        let marker = format!("roles-{i}");
        let resp = gw
            .raw_get(
                "acme.localhost",
                path,
                &[&probe(&marker), "X-Portcullis-Roles: admin", ACCEPT_JSON],
            )
            .await;
        assert_eq!(resp.status, 401, "{path} without a session (API client)");
        assert!(resp.echo().is_none(), "{path}: got the backend's answer");
        assert_not_forwarded(&gw, &marker, path);
    }
}

#[tokio::test]
async fn browser_without_session_is_challenged_and_not_forwarded() {
    let gw = Gateway::start_default();
    for (i, (host, path)) in [
        ("acme.localhost", "/app/x?y=1"),
        ("acme.localhost", "/admin"),
        ("globex.localhost", "/app"),
    ]
    .iter()
    .enumerate()
    {
        let marker = format!("browser-{i}");
        let resp = gw
            .raw_get(
                host,
                path,
                &[&probe(&marker), "Accept: text/html,*/*;q=0.8"],
            )
            .await;
        assert!(
            is_browser_login_challenge(resp.status, resp.header("location"), host),
            "{host}{path}: expected a 401 page or a 302 to this host's /.auth/login, got {} \
             location={:?}",
            resp.status,
            resp.header("location")
        );
        if resp.status == 401 {
            assert!(
                resp.header("content-type")
                    .is_some_and(|c| c.starts_with("text/html")),
                "{host}{path}: a browser's 401 must be an HTML page"
            );
        }
        assert!(
            resp.echo().is_none(),
            "{host}{path}: got the backend's answer"
        );
        assert_not_forwarded(&gw, &marker, path);
    }
}

#[tokio::test]
async fn json_client_gets_json_errors() {
    let gw = Gateway::start_default();
    let client = gw.client();
    let mut failures = Vec::new();
    for (host, path, status) in [
        ("acme.localhost", "/app", 401),
        ("globex.localhost", "/no-route", 404),
        ("acme.localhost", "/dead", 502),
    ] {
        let resp = client
            .get(gw.url(host, path))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}{path}: {e}"));
        let got = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.text().await.unwrap_or_default();
        let json: Option<serde_json::Value> = serde_json::from_str(&body).ok();
        let ok = got == status
            && ctype.starts_with("application/json")
            && json.as_ref().is_some_and(|j| {
                j.get("error").is_some_and(|e| e.is_string())
                    && j.get("status").and_then(|s| s.as_u64()) == Some(u64::from(status))
                    && j.get("method").is_none()
            });
        if !ok {
            failures.push(format!(
                "{host}{path}: expected {status} JSON {{\"error\", \"status\": {status}}}, \
                 got {got} content-type={ctype:?} body={body}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn browser_gets_html_error_pages() {
    let gw = Gateway::start_default();
    let client = gw.client();
    let mut failures = Vec::new();
    for (host, path, status) in [
        ("globex.localhost", "/no-route", 404),
        ("acme.localhost", "/dead", 502),
        ("acme.localhost", "/slow", 504),
    ] {
        let resp = client
            .get(gw.url(host, path))
            .header("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}{path}: {e}"));
        let got = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if got != status || !ctype.starts_with("text/html") {
            failures.push(format!(
                "{host}{path}: expected {status} text/html, got {got} content-type={ctype:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn dead_upstream_gives_502_page() {
    let gw = Gateway::start_default();
    let resp = gw.raw_get("acme.localhost", "/dead/x", &[]).await;
    assert_eq!(
        resp.status,
        502,
        "connect refused upstream: {}",
        resp.text()
    );
    assert!(
        resp.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "502 must be an HTML page, got {:?}",
        resp.header("content-type")
    );
}

#[tokio::test]
async fn silent_upstream_gives_504_page() {
    let gw = Gateway::start_default();
    let started = Instant::now();
    let resp = gw.raw_get("acme.localhost", "/slow/x", &[]).await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status, 504, "upstream never answers: {}", resp.text());
    assert!(
        resp.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "504 must be an HTML page, got {:?}",
        resp.header("content-type")
    );
    // read_timeout_ms is 1000 in the test config.
    assert!(
        elapsed < Duration::from_secs(8),
        "504 took {elapsed:?}, read_timeout_ms is 1000"
    );
}

#[tokio::test]
async fn websocket_upgrade_passes() {
    let gw = Gateway::start_default();
    let mut conn = gw.raw_connect("acme.localhost").await.expect("TLS connect");
    conn.send(websocket_upgrade("acme.localhost").as_bytes())
        .await;
    let resp = conn
        .read_response(Duration::from_secs(10))
        .await
        .expect("a response to the upgrade request");
    assert_eq!(resp.status, 101, "upgrade: {resp:?}");
    let payload = b"bytes-through-the-tunnel-0123456789";
    conn.send(payload).await;
    let echoed = conn
        .read_until(Duration::from_secs(10), |b| contains(b, payload))
        .await;
    assert!(
        echoed,
        "the tunnel did not echo the bytes back; got {:?}",
        String::from_utf8_lossy(&conn.buf)
    );
}

#[tokio::test]
async fn h2_request_reaches_backend() {
    let gw = Gateway::start_default();
    let client = gw.client();
    let resp = client
        .get(gw.url("acme.localhost", "/api/h2?x=1"))
        .send()
        .await
        .expect("h2 GET");
    assert_eq!(
        resp.version(),
        reqwest::Version::HTTP_2,
        "ALPN must pick h2"
    );
    assert_eq!(resp.status(), 200);
    let echo = parse_echo(&resp.bytes().await.expect("body")).expect("echo JSON");
    assert_eq!(echo.method, "GET");
    assert_eq!(echo.path, "/api/h2?x=1");
    assert_eq!(echo.header_once("x-portcullis-tenant"), "acme");

    let body = vec![b'z'; 1234];
    let resp = client
        .post(gw.url("globex.localhost", "/api/upload"))
        .body(body)
        .send()
        .await
        .expect("h2 POST");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let echo = parse_echo(&resp.bytes().await.expect("body")).expect("echo JSON");
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.body_len, 1234);
    assert_eq!(echo.header_once("x-portcullis-tenant"), "globex");
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let gw = Gateway::start_default();
    let client = gw.client_h1();
    for i in 0..10 {
        let resp = client
            .get(gw.url("acme.localhost", &format!("/api/pool/{i}")))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        resp.bytes().await.expect("body");
    }
    let conns = gw.backend_connections();
    assert!(
        conns <= 4,
        "10 sequential requests opened {conns} upstream connections: no keep-alive pooling"
    );
}

#[tokio::test]
async fn redirect_listener_only_redirects_to_https() {
    let gw = Gateway::start(Opts {
        http_redirect: true,
        ..Opts::default()
    });
    let port = gw.ports().redirect.expect("redirect port");
    let resp = plain_http(
        port,
        b"GET /x/y?q=1 HTTP/1.1\r\nHost: acme.localhost\r\nConnection: close\r\n\r\n",
    )
    .expect("plain listener answers");
    assert_eq!(resp.status, 308);
    assert_eq!(
        resp.header("location"),
        Some("https://acme.localhost:8443/x/y?q=1"),
        "Location must point at https with https_public_port"
    );

    let resp = plain_http(
        port,
        b"POST /api/plain HTTP/1.1\r\nHost: acme.localhost\r\nX-Test-Probe: plain-post\r\n\
Content-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .expect("plain listener answers");
    assert_eq!(resp.status, 308, "plain POST");
    assert_not_forwarded(&gw, "plain-post", "plain-HTTP POST");
}
