//! Request smuggling (issue 2, item 5; SPEC step 3): on HTTP/1.1, ambiguous framing —
//! duplicate or non-numeric Content-Length, Content-Length with Transfer-Encoding, anything
//! but exactly one `Transfer-Encoding: chunked` — gets 400 and the connection is closed;
//! neither the request nor the request hidden in its body reaches the upstream.
//!
//! Each attack is written as raw bytes on a keep-alive connection with a second request
//! (`GET /smuggled-…`) hidden in the body.

mod common;

use std::time::Duration;

use common::*;

/// The request hidden in the attack's body.
fn smuggled(case: &str) -> String {
    format!("GET /smuggled-{case} HTTP/1.1\r\nHost: acme.localhost\r\nX-Test-Probe: smuggled-{case}\r\n\r\n")
}

/// A chunked body that ends at once, followed by the hidden request.
fn chunked_then_smuggled(case: &str) -> String {
    format!("0\r\n\r\n{}", smuggled(case))
}

/// Builds `POST /api/outer-<case>` with `headers` (each without CRLF; no Connection header so
/// the connection stays open unless the gateway closes it) and `body`.
fn attack(case: &str, headers: &[String], body: &str) -> Vec<u8> {
    let mut req = format!(
        "POST /api/outer-{case} HTTP/1.1\r\nHost: acme.localhost\r\nX-Test-Probe: outer-{case}\r\n"
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    req.into_bytes()
}

/// Sends the attack and asserts: exactly one response, 400, connection closed, nothing of
/// it at the backend, and the gateway still serves a fresh connection. Returns the problems.
async fn check_rejected(gw: &Gateway, case: &str, request: &[u8]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut conn = gw.raw_connect("acme.localhost").await.expect("TLS connect");
    conn.send(request).await;
    let reply = conn.read_to_close(Duration::from_secs(10)).await;
    let responses = reply.responses();
    match responses.first() {
        Some(r) if r.status == 400 => {}
        Some(r) => problems.push(format!(
            "{case}: first response is {}, expected 400",
            r.status
        )),
        None => problems.push(format!("{case}: no response at all: {:?}", reply.text())),
    }
    if responses.len() > 1 {
        problems.push(format!(
            "{case}: {} responses on one connection (the hidden request was processed):\n{}",
            responses.len(),
            reply.text()
        ));
    }
    if !reply.closed {
        problems.push(format!("{case}: the connection stayed open after the 400"));
    }
    let traffic = gw.backend_traffic();
    if traffic.contains(&format!("outer-{case}")) {
        problems.push(format!("{case}: the ambiguous request reached the backend"));
    }
    if traffic.contains(&format!("smuggled-{case}")) {
        problems.push(format!("{case}: the hidden request reached the backend"));
    }
    let after = gw.raw_get("acme.localhost", "/api/after", &[]).await;
    if after.status != 200 {
        problems.push(format!(
            "{case}: a fresh request afterwards got {}, expected 200",
            after.status
        ));
    }
    problems
}

async fn assert_rejected(gw: &Gateway, case: &str, request: &[u8]) {
    let problems = check_rejected(gw, case, request).await;
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Runs several named variants of one attack and reports every failing one.
async fn assert_all_rejected(gw: &Gateway, cases: &[(&str, Vec<u8>)]) {
    let mut problems = Vec::new();
    for (case, request) in cases {
        problems.extend(check_rejected(gw, case, request).await);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn duplicate_content_length_with_equal_values_is_rejected() {
    let gw = Gateway::start_default();
    let case = "cl-dup-equal";
    let body = smuggled(case);
    let cl = format!("Content-Length: {}", body.len());
    assert_rejected(&gw, case, &attack(case, &[cl.clone(), cl], &body)).await;
}

#[tokio::test]
async fn duplicate_content_length_with_different_values_is_rejected() {
    let gw = Gateway::start_default();
    let case = "cl-dup-different";
    let body = smuggled(case);
    let headers = [
        "Content-Length: 0".to_string(),
        format!("Content-Length: {}", body.len()),
    ];
    assert_rejected(&gw, case, &attack(case, &headers, &body)).await;
}

#[tokio::test]
async fn content_length_list_value_is_rejected() {
    let gw = Gateway::start_default();
    let case = "cl-list";
    let body = smuggled(case);
    let n = body.len();
    assert_rejected(
        &gw,
        case,
        &attack(case, &[format!("Content-Length: {n}, {n}")], &body),
    )
    .await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_rejected() {
    let gw = Gateway::start_default();
    let cl_te = chunked_then_smuggled("cl-te");
    let te_cl = chunked_then_smuggled("te-cl");
    let cases = [
        (
            "cl-te",
            attack(
                "cl-te",
                &[
                    format!("Content-Length: {}", cl_te.len()),
                    "Transfer-Encoding: chunked".to_string(),
                ],
                &cl_te,
            ),
        ),
        // The other order, with a Content-Length that covers only the chunk terminator.
        (
            "te-cl",
            attack(
                "te-cl",
                &[
                    "Transfer-Encoding: chunked".to_string(),
                    "Content-Length: 5".to_string(),
                ],
                &te_cl,
            ),
        ),
    ];
    assert_all_rejected(&gw, &cases).await;
}

#[tokio::test]
async fn transfer_encoding_chunked_identity_is_rejected() {
    let gw = Gateway::start_default();
    let case = "te-chunked-identity";
    let body = chunked_then_smuggled(case);
    let headers = ["Transfer-Encoding: chunked, identity".to_string()];
    assert_rejected(&gw, case, &attack(case, &headers, &body)).await;
}

#[tokio::test]
async fn transfer_encoding_other_than_chunked_is_rejected() {
    let gw = Gateway::start_default();
    let cases: Vec<(&str, Vec<u8>)> = [
        ("te-identity", "identity"),
        ("te-gzip-chunked", "gzip, chunked"),
        ("te-chunked-chunked", "chunked, chunked"),
        ("te-xchunked", "xchunked"),
        ("te-chunked-x", "chunked-x"),
    ]
    .iter()
    .map(|(case, te)| {
        let body = chunked_then_smuggled(case);
        (
            *case,
            attack(case, &[format!("Transfer-Encoding: {te}")], &body),
        )
    })
    .collect();
    assert_all_rejected(&gw, &cases).await;
}

#[tokio::test]
async fn transfer_encoding_leading_space_xchunked_is_rejected() {
    let gw = Gateway::start_default();
    let case = "te-space-xchunked";
    let body = chunked_then_smuggled(case);
    let headers = ["Transfer-Encoding:  xchunked".to_string()];
    assert_rejected(&gw, case, &attack(case, &headers, &body)).await;
}

#[tokio::test]
async fn transfer_encoding_tab_obfuscation_is_rejected() {
    let gw = Gateway::start_default();
    let mut cases = Vec::new();
    for (case, te_line) in [
        ("te-tab-value", "Transfer-Encoding:\tchunked"),
        ("te-tab-before-colon", "Transfer-Encoding\t: chunked"),
        ("te-tab-xchunked", "Transfer-Encoding:\txchunked"),
        ("te-vtab", "Transfer-Encoding: \x0bchunked"),
    ] {
        let body = chunked_then_smuggled(case);
        // With a Content-Length as well: a front end that misses the obfuscated TE would
        // frame by Content-Length, a back end that sees it by chunks.
        let headers = [
            format!("Content-Length: {}", body.len()),
            te_line.to_string(),
        ];
        cases.push((case, attack(case, &headers, &body)));
    }
    assert_all_rejected(&gw, &cases).await;
}

#[tokio::test]
async fn two_transfer_encoding_headers_are_rejected() {
    let gw = Gateway::start_default();
    let mut cases = Vec::new();
    for (case, second) in [("te-twice", "chunked"), ("te-twice-identity", "identity")] {
        let body = chunked_then_smuggled(case);
        let headers = [
            "Transfer-Encoding: chunked".to_string(),
            format!("Transfer-Encoding: {second}"),
        ];
        cases.push((case, attack(case, &headers, &body)));
    }
    assert_all_rejected(&gw, &cases).await;
}

#[tokio::test]
async fn transfer_encoding_underscore_lookalike_is_rejected() {
    let gw = Gateway::start_default();
    let case = "te-underscore";
    let body = chunked_then_smuggled(case);
    let headers = [
        format!("Content-Length: {}", body.len()),
        "Transfer_Encoding: chunked".to_string(),
    ];
    assert_rejected(&gw, case, &attack(case, &headers, &body)).await;
}

#[tokio::test]
async fn non_numeric_content_length_is_rejected() {
    let gw = Gateway::start_default();
    let cases: Vec<(&str, Vec<u8>)> = [
        ("cl-alpha", "abc"),
        ("cl-trailing-alpha", "5a"),
        ("cl-plus", "+5"),
        ("cl-negative", "-1"),
        ("cl-hex", "0x5"),
        ("cl-empty", ""),
        ("cl-inner-space", "1 2"),
    ]
    .iter()
    .map(|(case, cl)| {
        let body = smuggled(case);
        (
            *case,
            attack(case, &[format!("Content-Length: {cl}")], &body),
        )
    })
    .collect();
    assert_all_rejected(&gw, &cases).await;
}

#[tokio::test]
async fn whitespace_before_colon_is_rejected() {
    // RFC 9112 §5.1: a server MUST reject whitespace between field name and colon with 400.
    let gw = Gateway::start_default();
    let case = "cl-space-colon";
    let body = smuggled(case);
    let headers = [format!("Content-Length : {}", body.len())];
    assert_rejected(&gw, case, &attack(case, &headers, &body)).await;
}

#[tokio::test]
async fn chunked_body_in_any_case_is_forwarded() {
    let gw = Gateway::start_default();
    for te in ["chunked", "CHUNKED", "Chunked"] {
        let req = format!(
            "POST /api/chunked HTTP/1.1\r\nHost: acme.localhost\r\nTransfer-Encoding: {te}\r\n\
Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        );
        let reply = gw.raw("acme.localhost", req.as_bytes()).await;
        let resp = reply.single();
        assert_eq!(resp.status, 200, "Transfer-Encoding: {te}: {}", resp.text());
        let echo = resp.expect_echo();
        assert_eq!(echo.body_len, 11, "Transfer-Encoding: {te}");
        assert_eq!(echo.method, "POST");
    }
}

#[tokio::test]
async fn content_length_body_is_forwarded() {
    let gw = Gateway::start_default();
    let req = request_bytes("POST", "/api/cl", "acme.localhost", &[], b"0123456789");
    let resp = gw.raw("acme.localhost", &req).await.single();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.expect_echo().body_len, 10);
}
