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
        let shown = String::from_utf8_lossy(target);
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
        let resp = gw.raw_get("acme.localhost", target, &[]).await;
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
        ],
    )
    .await;
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
