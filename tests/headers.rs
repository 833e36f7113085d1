//! Header hygiene (issue 2, item 4; SPEC step 8): spoofed identity headers never reach the
//! backend, the gateway sets X-Forwarded-* itself and believes inbound ones only from
//! trusted proxies, hop-by-hop headers go, and `Connection` cannot remove our headers.

mod common;

use common::*;

/// Asserts that no header the backend received looks like ours except the one
/// `X-Portcullis-Tenant` the gateway set, and that it names `tenant`.
fn assert_only_gateway_identity(echo: &Echo, tenant: &str) {
    let ours: Vec<(String, String)> = echo
        .headers
        .iter()
        .filter(|(n, _)| {
            n.to_ascii_lowercase()
                .replace('_', "-")
                .starts_with("x-portcullis-")
        })
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect();
    assert_eq!(
        ours,
        [("x-portcullis-tenant".to_string(), tenant.to_string())],
        "backend must receive exactly one X-Portcullis-* header (Tenant: {tenant}); \
         all headers: {:?}",
        echo.headers
    );
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_backend() {
    let gw = Gateway::start_default();
    let resp = gw
        .raw_get(
            "acme.localhost",
            "/api/whoami",
            &[
                "X-Portcullis-User: mallory",
                "x-portcullis-roles: admin",
                "X_Portcullis_User: mallory",
                "X-PORTCULLIS-TENANT: globex",
                "x_portcullis_tenant: globex",
                "X-Portcullis-Jwt: forged.jwt.value",
                "X-Portcullis-Anything-Else: mallory",
                "x-pORTCULLIS_roles: admin",
            ],
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = resp.expect_echo();
    assert_only_gateway_identity(&echo, "acme");
    for (name, value) in &echo.headers {
        assert!(
            !value.contains("mallory") && !value.contains("forged") && value != "globex",
            "spoofed value reached the backend in {name}: {value}"
        );
    }
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_backend_over_h2() {
    let gw = Gateway::start_default();
    let resp = gw
        .client()
        .get(gw.url("acme.localhost", "/api/whoami-h2"))
        .header("x-portcullis-user", "mallory")
        .header("x-portcullis-roles", "admin")
        .header("x_portcullis_user", "mallory")
        .header("x-portcullis-tenant", "globex")
        .header("x_portcullis_tenant", "globex")
        .header("x-portcullis-jwt", "forged.jwt.value")
        .send()
        .await
        .expect("h2 request");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let echo = parse_echo(&resp.bytes().await.expect("body")).expect("echo JSON");
    assert_only_gateway_identity(&echo, "acme");
    for (name, value) in &echo.headers {
        assert!(
            !value.contains("mallory") && !value.contains("forged") && value != "globex",
            "spoofed value reached the backend in {name}: {value}"
        );
    }
}

#[tokio::test]
async fn tenant_header_equals_the_real_tenant() {
    let gw = Gateway::start_default();
    for (host, other) in [("acme.localhost", "globex"), ("globex.localhost", "acme")] {
        let spoof = format!("X-Portcullis-Tenant: {other}");
        let resp = gw.raw_get(host, "/api/t", &[&spoof]).await;
        assert_eq!(resp.status, 200, "{host}: {}", resp.text());
        let echo = resp.expect_echo();
        let tenant = host.trim_end_matches(".localhost");
        assert_eq!(echo.header_once("x-portcullis-tenant"), tenant, "{host}");
    }
}

#[tokio::test]
async fn untrusted_forwarded_headers_are_replaced() {
    let gw = Gateway::start_default();
    let resp = gw
        .raw_get(
            "acme.localhost",
            "/api/xff",
            &[
                "X-Forwarded-For: 6.6.6.6",
                "X-Forwarded-Proto: http",
                "X-Forwarded-Host: evil.example",
                "X-Forwarded-Port: 1",
                "X_Forwarded_For: 6.6.6.6",
                "Forwarded: for=6.6.6.6;proto=http;host=evil.example",
                "X-Real-IP: 6.6.6.6",
                "X_Real_IP: 6.6.6.6",
            ],
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = resp.expect_echo();
    assert_eq!(echo.header_once("x-forwarded-for"), "127.0.0.1");
    assert_eq!(echo.header_once("x-forwarded-proto"), "https");
    assert_eq!(echo.header_once("x-forwarded-host"), "acme.localhost");
    let names = echo.normalized_names();
    for gone in ["forwarded", "x-real-ip", "x-forwarded-port"] {
        assert!(
            !names.iter().any(|n| n == gone),
            "{gone} from an untrusted client reached the backend: {:?}",
            echo.headers
        );
    }
    for (name, value) in &echo.headers {
        assert!(
            !value.contains("6.6.6.6") && !value.contains("evil.example"),
            "untrusted forwarding data reached the backend in {name}: {value}"
        );
    }
}

#[tokio::test]
async fn rotating_x_forwarded_for_does_not_change_the_client_ip() {
    let gw = Gateway::start_default();
    for fake in ["1.1.1.1", "2.2.2.2, 3.3.3.3", "10.0.0.1", "::1", "garbage"] {
        let xff = format!("X-Forwarded-For: {fake}");
        let resp = gw.raw_get("acme.localhost", "/api/rot", &[&xff]).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(
            resp.expect_echo().header_once("x-forwarded-for"),
            "127.0.0.1",
            "inbound X-Forwarded-For: {fake}"
        );
    }
}

#[tokio::test]
async fn trusted_proxy_chain_is_kept_and_the_peer_appended() {
    let gw = Gateway::start(Opts {
        trusted_proxies: vec!["127.0.0.1/32".to_string()],
        ..Opts::default()
    });
    let resp = gw
        .raw_get(
            "acme.localhost",
            "/api/trusted",
            &["X-Forwarded-For: 203.0.113.9, 198.51.100.7"],
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = resp.expect_echo();
    let xff = echo.header_once("x-forwarded-for");
    let hops: Vec<&str> = xff.split(',').map(str::trim).collect();
    assert_eq!(
        hops,
        ["203.0.113.9", "198.51.100.7", "127.0.0.1"],
        "trusted peer: inbound chain + peer expected"
    );
    // The client is the right-most hop that is not a trusted proxy.
    let client = hops.iter().rev().find(|h| **h != "127.0.0.1");
    assert_eq!(client, Some(&"198.51.100.7"));
}

#[tokio::test]
async fn connection_header_cannot_remove_identity_headers() {
    let gw = Gateway::start_default();
    let resp = gw
        .raw_get(
            "acme.localhost",
            "/api/conn",
            &["Connection: close, X-Portcullis-Tenant, X-Portcullis-User, x_portcullis_tenant"],
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = resp.expect_echo();
    assert_eq!(echo.header_once("x-portcullis-tenant"), "acme");
    assert_eq!(echo.header_once("x-forwarded-for"), "127.0.0.1");
}

#[tokio::test]
async fn connection_header_cannot_remove_forwarding_headers() {
    let gw = Gateway::start_default();
    let resp = gw
        .raw_get(
            "acme.localhost",
            "/api/conn",
            &[
                "Connection: close, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host",
                "X-Test-Probe: conn-forwarding",
            ],
        )
        .await;
    // Two outcomes keep the promise: forwarded with the gateway's values intact, or refused
    // outright (pingora 0.9 answers 400 when Connection nominates Host or X-Forwarded-*).
    if resp.status == 200 {
        let echo = resp.expect_echo();
        assert_eq!(echo.header_once("x-forwarded-for"), "127.0.0.1");
        assert_eq!(echo.header_once("x-forwarded-proto"), "https");
        assert_eq!(echo.header_once("x-forwarded-host"), "acme.localhost");
        assert_eq!(echo.header_once("x-portcullis-tenant"), "acme");
    } else {
        assert_eq!(
            resp.status,
            400,
            "neither forwarded intact nor refused: {}",
            resp.text()
        );
        assert!(
            !gw.backend_traffic().contains("conn-forwarding"),
            "refused, yet the request reached the backend"
        );
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed() {
    let gw = Gateway::start_default();
    let resp = gw
        .raw_get(
            "acme.localhost",
            "/api/hop",
            &[
                "Connection: close, X-Secret, X-Other-Secret",
                "X-Secret: 1",
                "X-Other-Secret: 2",
                "Keep-Alive: timeout=5",
                "Proxy-Connection: keep-alive",
                "TE: trailers",
                "Trailer: X-Foo",
                "Proxy-Authorization: Basic bWFsbG9yeTpodW50ZXIy",
            ],
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = resp.expect_echo();
    let names = echo.normalized_names();
    for gone in [
        "x-secret",
        "x-other-secret",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "proxy-authorization",
    ] {
        assert!(
            !names.iter().any(|n| n == gone),
            "hop-by-hop header {gone} reached the backend: {:?}",
            echo.headers
        );
    }
    for (name, value) in &echo.headers {
        assert!(
            !value.contains("bWFsbG9yeTpodW50ZXIy"),
            "proxy credentials reached the backend in {name}"
        );
    }
}

#[tokio::test]
async fn non_websocket_upgrade_header_is_removed() {
    let gw = Gateway::start_default();
    let resp = gw
        .raw_get(
            "acme.localhost",
            "/api/upgrade",
            &["Connection: close, Upgrade", "Upgrade: h2c"],
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = resp.expect_echo();
    assert!(
        echo.header_all("upgrade").is_empty(),
        "a non-websocket Upgrade reached the backend: {:?}",
        echo.headers
    );
}

#[tokio::test]
async fn ordinary_headers_and_cookies_pass() {
    let gw = Gateway::start_default();
    let resp = gw
        .raw_get(
            "acme.localhost",
            "/api/ordinary",
            &[
                "X-Custom: keep-me",
                "Cookie: theme=dark; lang=en",
                "User-Agent: portcullis-tests",
                "Accept-Language: en",
            ],
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = resp.expect_echo();
    assert_eq!(echo.header_once("x-custom"), "keep-me");
    assert_eq!(echo.header_once("cookie"), "theme=dark; lang=en");
    assert_eq!(echo.header_once("user-agent"), "portcullis-tests");
    assert_eq!(echo.header_once("accept-language"), "en");
}
