//! The data plane's HTTP/1 connection loop (src/gateway/front.rs): the loop serves body-less
//! GET and HEAD requests itself and hands every other request, with the rest of its connection,
//! to pingora_proxy, which must read that request from its first byte (src/gateway/replay.rs).
//! These tests mix both kinds on one keep-alive connection and split requests over TLS records
//! in the ways that make the hand-over matter: header and body in one record, body later,
//! chunked bodies, and requests that must not be served by the loop at all.

mod common;

use std::time::Duration;

use common::*;

const ACME: &str = "acme.localhost";
const KEEP: &[&str] = &["Connection: keep-alive"];
const WAIT: Duration = Duration::from_secs(10);

async fn next(conn: &mut RawConn, what: &str) -> Response {
    conn.read_response(WAIT).await.unwrap_or_else(|| {
        panic!(
            "no response to {what}: {:?}",
            String::from_utf8_lossy(&conn.buf)
        )
    })
}

fn echoed(r: &Response, what: &str) -> Echo {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    r.echo()
        .unwrap_or_else(|| panic!("{what}: not the echo backend's answer: {}", r.text()))
}

/// A keep-alive connection whose first request, a GET, the loop has already served.
async fn served_once(gw: &Gateway) -> RawConn {
    let mut conn = gw.raw_connect(ACME).await.expect("connect");
    conn.send(&request_bytes("GET", "/warm", ACME, KEEP, b""))
        .await;
    let e = echoed(&next(&mut conn, "GET /warm").await, "GET /warm");
    assert_eq!(e.path, "/warm");
    conn
}

#[tokio::test]
async fn gets_and_requests_with_bodies_share_one_connection() {
    let gw = Gateway::start_default();
    let mut conn = gw.raw_connect(ACME).await.expect("connect");

    conn.send(&request_bytes("GET", "/first", ACME, KEEP, b""))
        .await;
    let e = echoed(&next(&mut conn, "GET /first").await, "GET /first");
    assert_eq!((e.method.as_str(), e.path.as_str()), ("GET", "/first"));

    // Header and body in one write: the bytes read past the header go over too.
    conn.send(&request_bytes("POST", "/second", ACME, KEEP, b"hello body"))
        .await;
    let e = echoed(&next(&mut conn, "POST /second").await, "POST /second");
    assert_eq!((e.method.as_str(), e.path.as_str()), ("POST", "/second"));
    assert_eq!(e.body_len, 10);

    // The rest of the connection, GET and HEAD included, is answered as before.
    conn.send(&request_bytes("GET", "/third?q=1", ACME, KEEP, b""))
        .await;
    let e = echoed(&next(&mut conn, "GET /third").await, "GET /third");
    assert_eq!(e.path, "/third?q=1");
    conn.send(&request_bytes(
        "PUT",
        "/fourth",
        ACME,
        KEEP,
        b"0123456789abcdef",
    ))
    .await;
    let e = echoed(&next(&mut conn, "PUT /fourth").await, "PUT /fourth");
    assert_eq!((e.method.as_str(), e.body_len), ("PUT", 16));
    assert!(!conn.closed, "the connection was closed midway");
}

#[tokio::test]
async fn a_body_sent_after_its_header_arrives_whole() {
    let gw = Gateway::start_default();
    let mut conn = served_once(&gw).await;

    let head = format!(
        "POST /later HTTP/1.1\r\nHost: {ACME}\r\nConnection: keep-alive\r\nContent-Length: 11\r\n\r\n"
    );
    conn.send(head.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    conn.send(b"hello").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.send(b" world").await;
    let e = echoed(&next(&mut conn, "POST /later").await, "POST /later");
    assert_eq!((e.path.as_str(), e.body_len), ("/later", 11));
}

#[tokio::test]
async fn a_chunked_body_split_over_writes_arrives_whole() {
    let gw = Gateway::start_default();
    let mut conn = served_once(&gw).await;

    let first = format!(
        "POST /chunked HTTP/1.1\r\nHost: {ACME}\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    );
    conn.send(first.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    conn.send(b"6\r\n world\r\n0\r\n\r\n").await;
    let e = echoed(&next(&mut conn, "chunked POST").await, "chunked POST");
    assert_eq!((e.path.as_str(), e.body_len), ("/chunked", 11));

    conn.send(&request_bytes("GET", "/after", ACME, KEEP, b""))
        .await;
    let e = echoed(&next(&mut conn, "GET /after").await, "GET /after");
    assert_eq!(e.path, "/after");
}

/// The attack: after a first request has been served by the loop, a second one on the same
/// connection claims an identity. Whichever side serves it, the claim never reaches the backend.
#[tokio::test]
async fn identity_claims_after_the_hand_over_are_stripped() {
    let gw = Gateway::start_default();
    let mut conn = gw.raw_connect(ACME).await.expect("connect");
    let spoof = [
        "Connection: keep-alive",
        "X-Portcullis-User: admin",
        "x_portcullis_roles: admin",
        "X-Forwarded-For: 10.9.9.9",
    ];
    conn.send(&request_bytes("GET", "/one", ACME, &spoof, b""))
        .await;
    let first = echoed(&next(&mut conn, "GET /one").await, "GET /one");
    conn.send(&request_bytes("POST", "/two", ACME, &spoof, b"x=1"))
        .await;
    let second = echoed(&next(&mut conn, "POST /two").await, "POST /two");
    conn.send(&request_bytes("GET", "/three", ACME, &spoof, b""))
        .await;
    let third = echoed(&next(&mut conn, "GET /three").await, "GET /three");
    for (what, e) in [("loop", first), ("hand-over", second), ("after", third)] {
        for (name, value) in &e.headers {
            let lower = name.to_ascii_lowercase().replace('_', "-");
            assert!(
                !(lower.starts_with("x-portcullis-") && lower != "x-portcullis-tenant"),
                "{what}: {name}: {value} reached the backend"
            );
        }
        assert_eq!(e.header_all("x-forwarded-for"), vec!["127.0.0.1"], "{what}");
        assert_eq!(e.header_all("x-portcullis-tenant"), vec!["acme"], "{what}");
    }
}

/// Two requests in one write: the loop answers the first and closes (no pipelining), so the
/// second is never served from bytes the loop read on the first's behalf.
#[tokio::test]
async fn a_request_riding_behind_a_get_is_not_served() {
    let gw = Gateway::start_default();
    let mut both = request_bytes("GET", "/front", ACME, KEEP, b"");
    both.extend(request_bytes("GET", "/behind", ACME, KEEP, b""));
    let reply = gw.raw(ACME, &both).await;
    let responses = reply.responses();
    assert_eq!(responses.len(), 1, "{}", reply.text());
    assert_eq!(echoed(&responses[0], "first").path, "/front");
    assert!(reply.closed);
    assert!(!gw.backend_traffic().contains("/behind"));
}

/// A GET for a route whose upstream speaks TLS is not the loop's to serve: it goes to
/// pingora_proxy, which talks TLS to the upstream. The upstream here answers anything with a
/// plain-HTTP 200, so had the loop forwarded the request itself, in plain HTTP, the client would
/// see 200; instead the upstream sees a TLS handshake, the handshake fails, and the answer is 502.
#[tokio::test]
async fn a_get_for_a_tls_upstream_is_left_to_pingora_proxy() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<u8>();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut first = [0u8; 1];
            if std::io::Read::read_exact(&mut conn, &mut first).is_ok() {
                let _ = seen_tx.send(first[0]);
            }
            let _ = std::io::Write::write_all(
                &mut conn,
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nplain",
            );
        }
    });
    let gw = Gateway::start(Opts {
        acme_policy_extra: route(
            "tls",
            "/tls",
            &format!("https://127.0.0.1:{port}"),
            "public",
        ),
        ..Opts::default()
    });
    let mut conn = served_once(&gw).await;
    conn.send(&request_bytes("GET", "/tls/x", ACME, KEEP, b""))
        .await;
    let r = next(&mut conn, "GET /tls/x").await;
    assert_eq!(r.status, 502, "{}", r.text());
    let first = seen_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the upstream was never contacted");
    assert_eq!(
        first, 0x16,
        "the upstream got plain bytes, not a TLS handshake record"
    );
}

/// A plain request header that arrives in pieces (src/gateway/client.rs reads it into the
/// connection's buffer until it is whole) is served once, whole.
#[tokio::test]
async fn a_request_header_split_over_writes_is_read_whole() {
    let gw = Gateway::start_default();
    let mut conn = served_once(&gw).await;
    let bytes = request_bytes("GET", "/split?x=1", ACME, KEEP, b"");
    for piece in bytes.chunks(7) {
        conn.send(piece).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = echoed(&next(&mut conn, "split GET").await, "split GET");
    assert_eq!(e.path, "/split?x=1");
    conn.send(&request_bytes("GET", "/after", ACME, KEEP, b""))
        .await;
    let e = echoed(&next(&mut conn, "GET /after").await, "GET /after");
    assert_eq!(e.path, "/after");
    assert!(!conn.closed);
}

/// The attack: a GET that declares a body, the body being a second request. A GET with a
/// length is not plain, so pingora's session frames it: the hidden request travels as the
/// carrier's body (or not at all), and is never served as a request of its own.
#[tokio::test]
async fn a_request_hidden_in_the_body_of_a_get_is_never_served() {
    let gw = Gateway::start_default();
    let mut conn = served_once(&gw).await;
    let hidden = format!("GET /smuggled HTTP/1.1\r\nHost: {ACME}\r\n\r\n");
    conn.send(&request_bytes(
        "GET",
        "/carrier",
        ACME,
        KEEP,
        hidden.as_bytes(),
    ))
    .await;
    let first = next(&mut conn, "GET /carrier").await;
    let forwarded = first.status == 200;
    if forwarded {
        let e = echoed(&first, "GET /carrier");
        assert_eq!(
            (e.path.as_str(), e.body_len),
            ("/carrier", hidden.len() as u64)
        );
    } else {
        assert!((400..500).contains(&first.status), "{}", first.text());
    }
    if !conn.closed {
        conn.send(&request_bytes("GET", "/after", ACME, KEEP, b""))
            .await;
        let after = echoed(&next(&mut conn, "GET /after").await, "GET /after");
        assert_eq!(
            after.path, "/after",
            "the next answer is the next request's"
        );
    }
    assert!(!String::from_utf8_lossy(&conn.buf).contains("\"path\":\"/smuggled\""));
    // At most once at the backend: inside the carrier's body.
    let seen = gw.backend_traffic().matches("GET /smuggled").count();
    assert_eq!(
        seen,
        usize::from(forwarded),
        "the hidden request reached the backend alone"
    );
}

/// A client that asks to close gets an answer that says so, and the connection ends after it.
#[tokio::test]
async fn a_client_that_asks_to_close_is_told_and_the_connection_ends() {
    let gw = Gateway::start_default();
    let reply = gw
        .raw(
            ACME,
            &request_bytes("GET", "/bye", ACME, &["Connection: close"], b""),
        )
        .await;
    let r = reply.single();
    assert_eq!(echoed(&r, "GET /bye").path, "/bye");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(reply.closed);

    // Without asking, the connection stays and the answer says keep-alive.
    let mut conn = gw.raw_connect(ACME).await.expect("connect");
    conn.send(&request_bytes("GET", "/stay", ACME, KEEP, b""))
        .await;
    let r = next(&mut conn, "GET /stay").await;
    assert_eq!(r.header("connection"), Some("keep-alive"));
    assert!(!conn.closed);
}

/// Slowloris: a request header trickled a byte at a time, each byte well within the idle
/// limit, ends the connection once it has taken longer than the header timeout from its
/// first byte. A connection that is merely quiet between requests is not cut by it, and a
/// header that is slow but within the limit is served.
#[tokio::test]
async fn a_request_header_trickled_past_the_header_timeout_ends_the_connection() {
    let gw = Gateway::start(Opts {
        client_header_timeout_ms: Some(1500),
        ..Opts::default()
    });

    // Quiet for longer than the header timeout before the first byte, then a whole request,
    // in pieces over about a second: served.
    let mut conn = gw.raw_connect(ACME).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let bytes = request_bytes("GET", "/slow-but-whole", ACME, KEEP, b"");
    for piece in bytes.chunks(bytes.len().div_ceil(4)) {
        conn.send(piece).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let e = echoed(&next(&mut conn, "slow GET").await, "slow GET");
    assert_eq!(e.path, "/slow-but-whole");

    // The same connection, then one byte every 200 ms, never ending the header.
    trickle_until_closed(
        &mut conn,
        b"GET /trickle HTTP/1.1\r\nHost: acme.localhost\r\nX-Pad: ",
        Duration::from_millis(1500),
        "after a plain GET",
    )
    .await;
    assert_eq!(gw.cuts("header_timeout"), 1.0, "the cut counted");
}

/// Send `head`, then one byte every 200 ms, never ending the header: the connection must be
/// ended about `limit` after the header's first byte, with nothing answered.
async fn trickle_until_closed(conn: &mut RawConn, head: &[u8], limit: Duration, what: &str) {
    let answered = conn.buf.len();
    let started = std::time::Instant::now();
    conn.send(head).await;
    while !conn.closed && started.elapsed() < Duration::from_secs(15) {
        conn.send(b"a").await;
        conn.read_until(Duration::from_millis(200), |_| false).await;
    }
    assert!(
        conn.closed,
        "{what}: a header trickled for 15 s was still being read"
    );
    let took = started.elapsed();
    assert!(
        took >= limit - Duration::from_millis(100) && took < limit * 4,
        "{what}: closed after {took:?}, not about the {limit:?} header timeout"
    );
    assert_eq!(
        conn.buf.len(),
        answered,
        "{what}: something was answered: {:?}",
        String::from_utf8_lossy(&conn.buf[answered..])
    );
}

/// A request pingora_proxy serves (one with a body) does not take the connection out of the
/// loop for good: the next request header on it is under the header timeout again.
#[tokio::test]
async fn after_a_request_with_a_body_the_next_header_is_still_under_the_header_timeout() {
    let gw = Gateway::start(Opts {
        client_header_timeout_ms: Some(1500),
        ..Opts::default()
    });
    let mut conn = gw.raw_connect(ACME).await.expect("connect");
    conn.send(&request_bytes("POST", "/posted", ACME, KEEP, b"some body"))
        .await;
    let e = echoed(&next(&mut conn, "POST /posted").await, "POST /posted");
    assert_eq!((e.method.as_str(), e.body_len), ("POST", 9));
    // A plain GET after it is still served on the same connection.
    conn.send(&request_bytes("GET", "/after", ACME, KEEP, b""))
        .await;
    assert_eq!(
        echoed(&next(&mut conn, "GET /after").await, "GET /after").path,
        "/after"
    );
    conn.send(&request_bytes("PUT", "/again", ACME, KEEP, b"x"))
        .await;
    assert_eq!(
        echoed(&next(&mut conn, "PUT /again").await, "PUT /again").body_len,
        1
    );

    trickle_until_closed(
        &mut conn,
        b"GET /trickle HTTP/1.1\r\nHost: acme.localhost\r\nX-Pad: ",
        Duration::from_millis(1500),
        "after a PUT",
    )
    .await;
    assert_eq!(gw.cuts("header_timeout"), 1.0, "the cut counted");
}

/// A reload that tightens the header timeout applies to connections already open: an operator
/// under a slowloris attack does not wait for the attackers' connections to turn over.
#[tokio::test]
async fn a_reload_that_tightens_the_header_timeout_applies_to_open_connections() {
    let gw = Gateway::start_default();
    let mut conn = gw.raw_connect(ACME).await.expect("connect");
    conn.send(&request_bytes("GET", "/before", ACME, KEEP, b""))
        .await;
    assert_eq!(
        echoed(&next(&mut conn, "GET /before").await, "GET /before").path,
        "/before"
    );
    gw.site
        .write_proxy_lines("client_header_timeout_ms = 1500\n");
    assert!(
        gw.wait_for_log("config reloaded", WAIT),
        "the reload did not happen; logs:\n{}",
        gw.logs()
    );
    trickle_until_closed(
        &mut conn,
        b"GET /trickle HTTP/1.1\r\nHost: acme.localhost\r\nX-Pad: ",
        Duration::from_millis(1500),
        "on a connection opened before the reload",
    )
    .await;
    assert_eq!(gw.cuts("header_timeout"), 1.0, "the cut counted");
}

/// A request header longer than the loop reads itself (16 KiB) is read by pingora's session;
/// it too must be whole within the header timeout. One that is whole in time is served.
#[tokio::test]
async fn a_header_over_16_kib_trickled_past_the_header_timeout_ends_the_connection() {
    let gw = Gateway::start(Opts {
        client_header_timeout_ms: Some(1500),
        max_header_bytes: Some(32_768),
        ..Opts::default()
    });
    let pad = "p".repeat(20 * 1024);
    let mut conn = gw.raw_connect(ACME).await.expect("connect");
    let pad_header = format!("X-Pad: {pad}");
    conn.send(&request_bytes(
        "GET",
        "/long",
        ACME,
        &[KEEP[0], &pad_header],
        b"",
    ))
    .await;
    let e = echoed(&next(&mut conn, "GET /long").await, "GET /long");
    assert_eq!(e.path, "/long");

    let head = format!("GET /trickle HTTP/1.1\r\nHost: {ACME}\r\nX-Pad: {pad}");
    trickle_until_closed(
        &mut conn,
        head.as_bytes(),
        Duration::from_millis(1500),
        "a 20 KiB header",
    )
    .await;
    assert_eq!(gw.cuts("header_timeout"), 1.0, "the cut counted");
    assert_eq!(gw.cuts("header_too_large"), 0.0);
}

/// Wait for the server to close `conn`, for at most 15 s; how long it took.
async fn closed_after(conn: &mut RawConn) -> Duration {
    let started = std::time::Instant::now();
    while !conn.closed && started.elapsed() < Duration::from_secs(15) {
        conn.read_until(Duration::from_millis(100), |_| false).await;
    }
    started.elapsed()
}

/// `client_idle_timeout_ms` ends an HTTP/1 connection that waits that long for its next
/// request, and no sooner.
#[tokio::test]
async fn an_idle_http1_connection_is_closed_after_the_idle_timeout() {
    let gw = Gateway::start(Opts {
        client_idle_timeout_ms: Some(1500),
        ..Opts::default()
    });
    let mut conn = served_once(&gw).await;
    // Quiet for less than the limit: still served.
    tokio::time::sleep(Duration::from_millis(900)).await;
    conn.send(&request_bytes("GET", "/second", ACME, KEEP, b""))
        .await;
    assert_eq!(
        echoed(&next(&mut conn, "GET /second").await, "GET /second").path,
        "/second"
    );
    let took = closed_after(&mut conn).await;
    assert!(conn.closed, "an idle connection was kept for 15 s");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "closed after {took:?}, not about the 1.5 s idle timeout"
    );
}

/// An HTTP/2 connection with no stream open is closed after the idle timeout too (pingora
/// keeps one for ever unless told), even if the client never sends a request at all.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let gw = Gateway::start(Opts {
        client_idle_timeout_ms: Some(1500),
        ..Opts::default()
    });
    let mut conn = RawConn::connect(gw.https_port(), &gw.site.ca_path(), ACME, &[b"h2"])
        .await
        .expect("connect");
    assert_eq!(
        conn.alpn().as_deref(),
        Some(&b"h2"[..]),
        "h2 not negotiated"
    );
    // The client preface and an empty SETTINGS frame, then nothing.
    conn.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await;
    let took = closed_after(&mut conn).await;
    assert!(conn.closed, "an idle HTTP/2 connection was kept for 15 s");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "closed after {took:?}, not about the 1.5 s idle timeout"
    );
}
