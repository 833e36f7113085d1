//! Path handling (issue 2, item 5; SPEC step 4): ambiguous targets are rejected with 400 and
//! never forwarded; everything else is normalized once, and that one path is used both for
//! the route decision and for what the upstream receives. Requests are written as raw bytes
//! so no client library normalizes them first.

mod common;

use common::*;

/// Sends each `(case, target)` on its own connection with SNI/Host acme.localhost and
/// asserts 400 and that nothing reached the backend; reports every failing case.
async fn assert_rejected(gw: &Gateway, cases: &[(&str, &[u8])]) {
    let mut failures = Vec::new();
    for (i, (name, target)) in cases.iter().enumerate() {
        let marker = format!("path-probe-{i}-{}", name.replace(' ', "-"));
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(
            format!(
                " HTTP/1.1\r\nHost: acme.localhost\r\nX-Test-Probe: {marker}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        let reply = gw.raw("acme.localhost", &req).await;
        let shown = target.escape_ascii().to_string();
        match reply.responses().first() {
            Some(resp) if resp.status == 400 => {}
            Some(resp) => failures.push(format!(
                "{name} ({shown}): expected 400, got {} (backend saw path {:?})",
                resp.status,
                resp.echo().map(|e| e.path)
            )),
            None => failures.push(format!(
                "{name} ({shown}): expected 400, got no response: {:?}",
                reply.text()
            )),
        }
        if gw.backend_traffic().contains(&marker) {
            failures.push(format!("{name} ({shown}): the request reached the backend"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Sends each `(case, target, expected status, expected backend path)` and checks what the
/// backend received.
async fn assert_normalized(gw: &Gateway, cases: &[(&str, &str, u16, Option<&str>)]) {
    let mut failures = Vec::new();
    for (name, target, status, backend_path) in cases {
        // As an API client, so a protected route answers 401 rather than a login redirect.
        let resp = gw.raw_get("acme.localhost", target, &[ACCEPT_JSON]).await;
        if resp.status != *status {
            failures.push(format!(
                "{name} ({target}): expected {status}, got {} {}",
                resp.status,
                resp.text()
            ));
            continue;
        }
        let seen = resp.echo().map(|e| e.path);
        if seen.as_deref() != *backend_path {
            failures.push(format!(
                "{name} ({target}): backend should see {backend_path:?}, saw {seen:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn encoded_slash_and_backslash_are_rejected() {
    let gw = Gateway::start_default();
    assert_rejected(
        &gw,
        &[
            ("%2F", b"/api/a%2Fb"),
            ("%2f", b"/api/a%2fb"),
            ("%2F hiding a route", b"/api%2Fprivate"),
            ("%5C", b"/api/a%5Cb"),
            ("%5c", b"/api/a%5cb"),
            ("raw backslash", b"/api/a\\b"),
            ("raw backslash as separator", b"/api\\..\\app"),
        ],
    )
    .await;
}

#[tokio::test]
async fn nul_byte_is_rejected() {
    let gw = Gateway::start_default();
    assert_rejected(
        &gw,
        &[("%00", b"/api/a%00b"), ("%00 at end", b"/api/x.txt%00")],
    )
    .await;
}

#[tokio::test]
async fn dot_segments_are_rejected() {
    let gw = Gateway::start_default();
    assert_rejected(
        &gw,
        &[
            ("/a/../b", b"/api/../app"),
            ("/a/./b", b"/api/./x"),
            ("trailing /..", b"/api/.."),
            ("trailing /.", b"/api/."),
            ("leading /../", b"/../api"),
            ("%2e%2e", b"/api/%2e%2e/app"),
            ("%2E%2E/", b"/%2E%2E/api"),
            (".%2e", b"/api/.%2e/app"),
            ("%2e.", b"/api/%2e./app"),
            ("%2e", b"/api/%2e/x"),
        ],
    )
    .await;
}

#[tokio::test]
async fn semicolon_dot_segments_are_rejected() {
    let gw = Gateway::start_default();
    assert_rejected(
        &gw,
        &[
            ("..;/", b"/api/..;/app"),
            (".;/", b"/api/.;/x"),
            ("..;param/", b"/api/..;jsessionid=1/app"),
        ],
    )
    .await;
}

#[tokio::test]
async fn double_encoding_is_rejected() {
    let gw = Gateway::start_default();
    assert_rejected(
        &gw,
        &[
            ("%252F", b"/api/a%252Fb"),
            ("%252e%252e", b"/api/%252e%252e/app"),
            ("%2500", b"/api/a%2500"),
            ("%25 alone", b"/api/100%25"),
        ],
    )
    .await;
}

#[tokio::test]
async fn invalid_percent_escapes_are_rejected() {
    let gw = Gateway::start_default();
    assert_rejected(
        &gw,
        &[
            ("%zz", b"/api/a%zzb"),
            ("truncated %2", b"/api/a%2"),
            ("lone %", b"/api/a%"),
        ],
    )
    .await;
}

#[tokio::test]
async fn control_characters_and_raw_non_ascii_are_rejected() {
    let gw = Gateway::start_default();
    assert_rejected(
        &gw,
        &[
            ("DEL", b"/api/a\x7fb"),
            ("raw UTF-8", b"/api/caf\xc3\xa9"),
            ("raw Latin-1", b"/api/caf\xe9"),
            ("raw tab", b"/api/a\tb"),
        ],
    )
    .await;
}

/// pingora's HTTP/1 parser re-encodes a raw space in the request line as `%20` before any
/// filter runs, so the gateway cannot tell it from a client's own `%20`. What matters is that
/// the decision and the forwarding still use one path: the backend gets exactly that encoded
/// form, never a second spelling.
#[tokio::test]
async fn raw_space_is_forwarded_only_in_its_one_encoded_form() {
    let gw = Gateway::start_default();
    let req = b"GET /api/a b HTTP/1.1\r\nHost: acme.localhost\r\nConnection: close\r\n\r\n";
    let reply = gw.raw("acme.localhost", req).await;
    let resp = reply.single();
    if resp.status != 400 {
        assert_eq!(resp.status, 200, "{}", reply.text());
        let echo = resp.echo().expect("echo JSON");
        assert_eq!(echo.path, "/api/a%20b");
    }
}

#[tokio::test]
async fn non_origin_form_targets_are_rejected() {
    let gw = Gateway::start_default();
    assert_rejected(
        &gw,
        &[
            ("no leading slash", b"api/x"),
            ("asterisk", b"*"),
            ("authority form", b"acme.localhost:443"),
        ],
    )
    .await;
}

#[tokio::test]
async fn absolute_form_with_another_host_is_rejected() {
    let gw = Gateway::start_default();
    assert_rejected(
        &gw,
        &[
            ("other tenant", b"https://globex.localhost/api/x"),
            ("foreign host", b"https://evil.example/api/x"),
            (
                "http scheme, other tenant",
                b"http://globex.localhost/api/x",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn absolute_form_with_the_same_host_is_accepted() {
    let gw = Gateway::start_default();
    assert_normalized(
        &gw,
        &[(
            "absolute-form, same host",
            "https://acme.localhost/api/abs?q=1",
            200,
            Some("/api/abs?q=1"),
        )],
    )
    .await;
}

#[tokio::test]
async fn duplicate_slashes_are_collapsed_for_decision_and_forwarding() {
    let gw = Gateway::start_default();
    assert_normalized(
        &gw,
        &[
            ("//public///x", "//public///x", 200, Some("/public/x")),
            ("//api//x", "//api//x", 200, Some("/api/x")),
            // The same collapsed path decides: `//app` is the authenticated route.
            ("//app", "//app", 401, None),
            ("/app//x", "/app//x", 401, None),
            ("//api//private", "//api//private", 401, None),
        ],
    )
    .await;
}

#[tokio::test]
async fn unreserved_escapes_are_decoded_for_decision_and_forwarding() {
    let gw = Gateway::start_default();
    assert_normalized(
        &gw,
        &[
            ("/%61pi", "/%61pi", 200, Some("/api")),
            ("/%61pi/%7Euser", "/%61pi/%7Euser", 200, Some("/api/~user")),
            ("/api/%41-%5a", "/api/%41-%5a", 200, Some("/api/A-Z")),
            // The decoded path decides: these are the authenticated routes.
            ("/%61pp", "/%61pp", 401, None),
            ("/%61%70%70/x", "/%61%70%70/x", 401, None),
            ("/api/%70rivate", "/api/%70rivate", 401, None),
            ("/%61dmin", "/%61dmin", 401, None),
        ],
    )
    .await;
}

#[tokio::test]
async fn reserved_escapes_are_kept_and_uppercased() {
    let gw = Gateway::start_default();
    assert_normalized(
        &gw,
        &[
            ("%3f", "/api/a%3fb", 200, Some("/api/a%3Fb")),
            ("%20", "/api/a%20b", 200, Some("/api/a%20b")),
            ("%c3%a9", "/api/caf%c3%a9", 200, Some("/api/caf%C3%A9")),
        ],
    )
    .await;
}

#[tokio::test]
async fn query_string_is_passed_unchanged() {
    let gw = Gateway::start_default();
    assert_normalized(
        &gw,
        &[
            (
                "query with escapes",
                "/api/q?x=%2F&y=..&z=%2e%2e&w=a%20b",
                200,
                Some("/api/q?x=%2F&y=..&z=%2e%2e&w=a%20b"),
            ),
            (
                "normalized path, query kept",
                "//api//q?a=1",
                200,
                Some("/api/q?a=1"),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn h2_requests_get_the_same_path_decisions() {
    let gw = Gateway::start_default();
    let client = gw.client();
    let mut failures = Vec::new();
    for (target, status, backend_path) in [
        ("/api/a%2Fb", 400, None),
        ("/api/a%5Cb", 400, None),
        ("/api/a%252Fb", 400, None),
        ("/api/a%00b", 400, None),
        ("/%61pp", 401, None),
        ("//app", 401, None),
        ("/%61pi//x", 200, Some("/api/x")),
    ] {
        let resp = client
            .get(gw.url("acme.localhost", target))
            .header("x-test-probe", format!("h2-{target}"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap_or_else(|e| panic!("h2 {target}: {e}"));
        if resp.version() != reqwest::Version::HTTP_2 {
            failures.push(format!("{target}: not h2 ({:?})", resp.version()));
        }
        let got = resp.status().as_u16();
        let seen = parse_echo(&resp.bytes().await.unwrap_or_default()).map(|e| e.path);
        if got != status || seen.as_deref() != backend_path {
            failures.push(format!(
                "h2 {target}: expected {status} with backend path {backend_path:?}, got {got} \
                 with {seen:?}"
            ));
        }
    }
    let traffic = gw.backend_traffic();
    for target in [
        "/api/a%2Fb",
        "/api/a%5Cb",
        "/api/a%252Fb",
        "/api/a%00b",
        "/%61pp",
        "//app",
    ] {
        if traffic.contains(&format!("h2-{target}")) {
            failures.push(format!("h2 {target}: reached the backend"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
