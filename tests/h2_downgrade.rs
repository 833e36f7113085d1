//! HTTP/2 to HTTP/1.1 downgrade: the gateway takes requests over HTTP/2 and forwards them over
//! HTTP/1.1, where framing and field boundaries are text again. A request that HTTP/2 carries
//! but HTTP/1.1 cannot say the same way (a body longer than its `content-length`, a
//! `transfer-encoding`, CR or LF inside a field, a method or path with spaces, a Host that
//! disagrees with `:authority`) must never reach a backend as something else: here each is
//! sent as raw frames, and the bytes the backend received are searched for what was smuggled.

mod common;
#[path = "common/h2frames.rs"]
mod h2frames;

use std::time::Duration;

use common::*;
use h2frames::*;

const ACME: &str = "acme.localhost";

/// How the gateway answered one raw request on stream 1.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// A response header, 200 or not.
    Status { ok: bool },
    /// The stream was reset, or the connection ended (GOAWAY or closed), before any answer.
    Refused,
}

/// Sends one request on stream 1 of a new connection: the header block, then `body` as one
/// DATA frame (if any), and reads how it is answered.
async fn send_raw(gw: &Gateway, block: &[u8], body: Option<&[u8]>) -> Answer {
    let mut conn = raw_h2(gw).await;
    let flags = if body.is_some() {
        END_HEADERS
    } else {
        END_HEADERS | END_STREAM
    };
    let mut out = frame(HEADERS, flags, 1, block);
    if let Some(body) = body {
        out.extend(frame(DATA, END_STREAM, 1, body));
    }
    conn.send(&out).await;
    let settled = |b: &[u8]| {
        frames(b)
            .iter()
            .any(|f| (f.2 == 1 && (f.0 == HEADERS || f.0 == RST_STREAM)) || f.0 == GOAWAY)
    };
    conn.read_until(Duration::from_secs(10), settled).await;
    // A refusal may come as a reset after an answer began; the first word counts.
    match frames(&conn.buf)
        .into_iter()
        .find(|f| (f.2 == 1 && (f.0 == HEADERS || f.0 == RST_STREAM)) || f.0 == GOAWAY)
    {
        Some((kind, _, _, payload)) if kind == HEADERS => Answer::Status {
            ok: is_200(&payload),
        },
        Some(_) => Answer::Refused,
        None if conn.closed => Answer::Refused,
        None => panic!("no answer in 10 s: {:?}", frames(&conn.buf)),
    }
}

/// A request line and header for the backend, to ride inside a body or a field.
fn smuggled(marker: &str) -> String {
    format!("GET /{marker} HTTP/1.1\r\nHost: {ACME}\r\n\r\n")
}

/// `answer` is no success, and the backend saw nothing of `marker`.
fn assert_not_smuggled(gw: &Gateway, case: &str, marker: &str, answer: &Answer) {
    assert_ne!(answer, &Answer::Status { ok: true }, "{case}: answered 200");
    let traffic = gw.backend_traffic();
    assert!(
        !traffic.contains(marker),
        "{case}: the backend received the smuggled part:\n{traffic}"
    );
}

/// The harness itself: a well-formed POST over raw frames is answered 200 and its body
/// reaches the backend, so the refusals below are the gateway's doing.
#[tokio::test]
async fn a_well_formed_raw_post_goes_through() {
    let gw = Gateway::start_default();
    let body = b"marker-well-formed-body";
    let block = request_block(
        b"POST",
        b"/echo",
        ACME.as_bytes(),
        &[(b"content-length", body.len().to_string().as_bytes())],
    );
    assert_eq!(
        send_raw(&gw, &block, Some(body)).await,
        Answer::Status { ok: true }
    );
    assert!(gw.backend_traffic().contains("marker-well-formed-body"));
}

/// H2.CL: a `content-length` shorter than the DATA that follows. Forwarded as is, the rest of
/// the body would be the backend's next request.
#[tokio::test]
async fn a_body_longer_than_its_content_length_is_refused() {
    let gw = Gateway::start_default();
    for (case, declared) in [("content-length 0", "0"), ("content-length 5", "5")] {
        let marker = format!("smuggled-cl-{declared}");
        let block = request_block(
            b"POST",
            b"/echo",
            ACME.as_bytes(),
            &[(b"content-length", declared.as_bytes())],
        );
        let body = format!("hello{}", smuggled(&marker));
        let answer = send_raw(&gw, &block, Some(body.as_bytes())).await;
        assert_not_smuggled(&gw, case, &marker, &answer);
    }
}

/// H2.TE and the other connection-specific fields HTTP/2 forbids (RFC 9113 §8.2.2): a
/// `transfer-encoding: chunked` body that ends early would leave the rest for the backend.
#[tokio::test]
async fn connection_specific_fields_are_refused() {
    let gw = Gateway::start_default();
    let marker = "smuggled-te";
    let block = request_block(
        b"POST",
        b"/echo",
        ACME.as_bytes(),
        &[(b"transfer-encoding", b"chunked")],
    );
    let body = format!("0\r\n\r\n{}", smuggled(marker));
    let answer = send_raw(&gw, &block, Some(body.as_bytes())).await;
    assert_not_smuggled(&gw, "transfer-encoding", marker, &answer);

    for (name, value) in [
        (&b"connection"[..], &b"x-smuggled-connection"[..]),
        (b"keep-alive", b"smuggled-keep-alive"),
        (b"proxy-connection", b"smuggled-proxy-connection"),
        (b"upgrade", b"smuggled-upgrade"),
    ] {
        let case = String::from_utf8_lossy(name).into_owned();
        let marker = String::from_utf8_lossy(value).into_owned();
        let block = request_block(b"GET", b"/echo", ACME.as_bytes(), &[(name, value)]);
        let answer = send_raw(&gw, &block, None).await;
        assert_not_smuggled(&gw, &case, &marker, &answer);
    }
}

/// CR, LF or NUL inside a field name or value, the method or the path: written into an
/// HTTP/1.1 request as they are, each would end a line and start a field (or a request) of the
/// client's choosing.
#[tokio::test]
async fn line_breaks_inside_fields_method_or_path_are_refused() {
    let gw = Gateway::start_default();
    let field = |name: &'static [u8], value: &'static [u8]| {
        request_block(b"GET", b"/echo", ACME.as_bytes(), &[(name, value)])
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("CRLF in a value", field(b"x-a", b"b\r\nx-smuggled-1: yes")),
        ("LF in a value", field(b"x-a", b"b\nx-smuggled-2: yes")),
        ("CR in a value", field(b"x-a", b"b\rx-smuggled-3: yes")),
        ("NUL in a value", field(b"x-a", b"b\0x-smuggled-4")),
        ("CRLF in a name", field(b"x-a\r\nx-smuggled-5", b"yes")),
        ("space in a name", field(b"x-smuggled-6 x", b"yes")),
        ("colon in a name", field(b"x-smuggled-7:x", b"yes")),
        (
            "CRLF in the method",
            request_block(
                b"GET /x-smuggled-8 HTTP/1.1\r\nx:",
                b"/echo",
                ACME.as_bytes(),
                &[],
            ),
        ),
        (
            "CRLF and spaces in the path",
            request_block(
                b"GET",
                b"/echo HTTP/1.1\r\nx-smuggled-9: yes\r\nx: /",
                ACME.as_bytes(),
                &[],
            ),
        ),
        (
            "CRLF in the authority",
            request_block(
                b"GET",
                b"/echo",
                b"acme.localhost\r\nx-smuggled-10: yes",
                &[],
            ),
        ),
    ];
    for (i, (case, block)) in cases.iter().enumerate() {
        let marker = format!("x-smuggled-{}", i + 1);
        let answer = send_raw(&gw, block, None).await;
        assert_not_smuggled(&gw, case, &marker, &answer);
    }
    // Each ended only its own connection: the gateway still serves.
    let ok = send_raw(&gw, &get_block("/echo"), None).await;
    assert_eq!(ok, Answer::Status { ok: true });
}

/// `:authority` names one tenant and a `host` field another (RFC 9113 §8.3.1): the request
/// must not reach the backend with a Host of the other tenant, whichever one it is routed by.
#[tokio::test]
async fn a_host_field_that_disagrees_with_the_authority_does_not_reach_the_backend() {
    let gw = Gateway::start_default();
    let block = request_block(
        b"GET",
        b"/echo",
        ACME.as_bytes(),
        &[(b"host", b"globex.localhost")],
    );
    let answer = send_raw(&gw, &block, None).await;
    let traffic = gw.backend_traffic();
    assert!(
        !traffic.to_ascii_lowercase().contains("globex"),
        "the backend was told another tenant's host ({answer:?}):\n{traffic}"
    );
}
