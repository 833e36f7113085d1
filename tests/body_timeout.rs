//! A request body must keep coming (`[proxy] client_body_timeout_ms`, `client_body_min_rate`):
//! a client that trickles or stalls its body to hold a connection and an upstream slot (a
//! slow-POST attack) gets 408 and is let go, over HTTP/1.1 and HTTP/2, while a slow but steady
//! upload that takes longer than the timeout goes through.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;

const ACME: &str = "acme.localhost";

/// One second between reads, then 100 bytes a second on average; the upstream read timeout
/// far away, so it is not what ends a slow body.
fn paced() -> Gateway {
    paced_with(1000, 100, 30_000)
}

/// A gateway with this body timeout, minimum body rate and upstream read timeout.
fn paced_with(body_timeout_ms: u64, min_rate: u64, read_timeout_ms: u64) -> Gateway {
    Gateway::start(Opts {
        client_body_timeout_ms: Some(body_timeout_ms),
        client_body_min_rate: Some(min_rate),
        read_timeout_ms,
        ..Opts::default()
    })
}

fn post_header(len: usize) -> String {
    format!("POST /echo HTTP/1.1\r\nHost: {ACME}\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\n\r\n")
}

/// Sends a POST header for 100 body bytes and ten of them, then nothing: what comes back
/// before the gateway closes (20 s at most), whether it closed, and how long it took.
async fn stall_h1(gw: &Gateway) -> (String, bool, Duration) {
    let mut conn = gw.raw_connect(ACME).await.expect("connect");
    conn.send(format!("{}0123456789", post_header(100)).as_bytes())
        .await;
    let start = Instant::now();
    let reply = conn.read_to_close(Duration::from_secs(20)).await;
    (
        String::from_utf8_lossy(&reply.bytes).into_owned(),
        reply.closed,
        start.elapsed(),
    )
}

/// The cut is logged as the client's doing, at info, and not as the gateway's error.
fn assert_logged_as_the_clients(gw: &Gateway) {
    let logs = gw.logs();
    assert!(
        !logs
            .lines()
            .any(|l| l.contains("ERROR") && (l.contains("Fail to") || l.contains("too slow"))),
        "a client's slow body logged as an error:\n{logs}"
    );
    assert!(
        logs.lines().any(|l| l.contains("INFO")
            && l.contains("client connection ended")
            && (l.contains("too slow") || l.contains("reading body"))),
        "no info line for the cut:\n{logs}"
    );
}

#[tokio::test]
async fn an_http1_body_trickled_below_the_rate_gets_408_and_the_connection_ends() {
    let gw = paced();
    let mut conn = gw.raw_connect(ACME).await.expect("connect");
    conn.send(post_header(1000).as_bytes()).await;
    // One byte every 400 ms: always within the second between reads, far below 100 B/s.
    let start = Instant::now();
    let mut sent = 0;
    while sent < 1000 && start.elapsed() < Duration::from_secs(20) {
        conn.send(b"x").await;
        sent += 1;
        if conn
            .read_until(Duration::from_millis(400), |b| {
                b.windows(4).any(|w| w == b"\r\n\r\n")
            })
            .await
            || conn.closed
        {
            break;
        }
    }
    let took = start.elapsed();
    let reply = conn.read_to_close(Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&reply.bytes);
    assert!(
        text.starts_with("HTTP/1.1 408 "),
        "after {sent} bytes in {took:?}: {text}"
    );
    assert!(reply.closed, "the connection stayed open after the 408");
    assert!(sent < 20, "{sent} bytes trickled before the cut ({took:?})");
    assert!(took < Duration::from_secs(5), "cut only after {took:?}");
    assert_eq!(gw.cuts("body_timeout"), 1.0, "the cut counted");
    assert_logged_as_the_clients(&gw);
}

#[tokio::test]
async fn an_http1_body_that_stops_gets_408_after_the_timeout() {
    let gw = paced();
    let (text, closed, took) = stall_h1(&gw).await;
    assert!(text.starts_with("HTTP/1.1 408 "), "after {took:?}: {text}");
    assert!(closed, "the connection stayed open after the 408");
    // The second it had, plus the tenth of a second its ten bytes earned at 100 B/s.
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "cut after {took:?}"
    );
    assert_eq!(gw.cuts("body_timeout"), 1.0, "the cut counted");
    assert_logged_as_the_clients(&gw);
    // The upstream connection that carried the cut-off body is not reused: the requests
    // after it arrive whole, not read as the rest of that body.
    for i in 0..4 {
        let mut conn = gw.raw_connect(ACME).await.expect("connect");
        conn.send(format!("{}hello", post_header(5)).as_bytes())
            .await;
        let resp = conn
            .read_response(Duration::from_secs(10))
            .await
            .expect("an answer");
        let body = String::from_utf8_lossy(&resp.body);
        assert_eq!(resp.status, 200, "request {i}: {body}");
        assert!(body.contains("\"body_len\":5"), "request {i}: {body}");
    }
}

#[tokio::test]
async fn a_slow_but_steady_http1_upload_longer_than_the_timeout_goes_through() {
    let gw = paced();
    let mut conn = gw.raw_connect(ACME).await.expect("connect");
    // 1000 bytes at 400 B/s: 2.5 s in all, well past the one-second timeout, but every
    // piece within it and the average above 100 B/s.
    let len = 1000;
    conn.send(post_header(len).as_bytes()).await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        conn.send(&[b'y'; 100]).await;
    }
    let resp = conn
        .read_response(Duration::from_secs(10))
        .await
        .expect("an answer");
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let body = String::from_utf8_lossy(&resp.body);
    assert!(body.contains(&format!("\"body_len\":{len}")), "{body}");
    assert_eq!(gw.cuts("body_timeout"), 0.0);
}

#[tokio::test]
async fn a_body_with_no_rate_may_trickle_but_not_stop() {
    let gw = paced_with(1000, 0, 30_000);
    // A trickle within the timeout between reads passes with no rate to keep...
    let mut conn = gw.raw_connect(ACME).await.expect("connect");
    conn.send(post_header(8).as_bytes()).await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        conn.send(b"z").await;
    }
    let resp = conn
        .read_response(Duration::from_secs(10))
        .await
        .expect("an answer");
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    // ...and a stall past it is still cut.
    let (text, _, took) = stall_h1(&gw).await;
    assert!(text.starts_with("HTTP/1.1 408 "), "after {took:?}: {text}");
    assert_eq!(gw.cuts("body_timeout"), 1.0);
}

/// Starts an HTTP/2 POST of `len` body bytes to the echo backend; the body is sent by hand.
fn h2_post(
    send: &mut h2::client::SendRequest<Bytes>,
    len: usize,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let req = http::Request::post(format!("https://{ACME}/echo"))
        .header("content-length", len.to_string())
        .body(())
        .expect("request");
    send.send_request(req, false).expect("send request")
}

#[tokio::test]
async fn an_http2_body_trickled_below_the_rate_gets_408() {
    let gw = paced();
    let mut send = gw.h2_connect().await;
    let (resp, mut body) = h2_post(&mut send, 1000);
    let resp = tokio::spawn(resp);
    // One byte every 400 ms, as over HTTP/1.
    let start = Instant::now();
    let mut sent = 0;
    while !resp.is_finished() && sent < 1000 && start.elapsed() < Duration::from_secs(20) {
        if body.send_data(Bytes::from_static(b"x"), false).is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let took = start.elapsed();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("an answer within 10 s")
        .expect("response task");
    let status = resp.map(|r| r.status().as_u16());
    assert!(
        matches!(status, Ok(408)),
        "after {sent} bytes in {took:?}: {status:?}"
    );
    assert!(sent < 20, "{sent} bytes trickled before the cut ({took:?})");
    assert_eq!(gw.cuts("body_timeout"), 1.0, "the cut counted");
    assert_logged_as_the_clients(&gw);
}

#[tokio::test]
async fn a_slow_but_steady_http2_upload_goes_through() {
    let gw = paced();
    let mut send = gw.h2_connect().await;
    let (resp, mut body) = h2_post(&mut send, 1000);
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        body.send_data(Bytes::from(vec![b'y'; 100]), i == 9)
            .expect("send data");
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("an answer within 10 s")
        .expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("\"body_len\":1000"), "{text}");
    assert_eq!(gw.cuts("body_timeout"), 0.0);
}

#[tokio::test]
async fn an_http2_body_that_stops_gets_408_when_the_upstream_stops_waiting() {
    // HTTP/2 body reads have no timeout of their own: the upstream read timeout ends the
    // wait, and the answer says whose fault it was.
    let gw = paced_with(1000, 100, 3000);
    let mut send = gw.h2_connect().await;
    let (resp, mut body) = h2_post(&mut send, 100);
    body.send_data(Bytes::from_static(b"0123456789"), false)
        .expect("send data");
    let start = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(20), resp)
        .await
        .expect("an answer within 20 s");
    let took = start.elapsed();
    let status = resp.map(|r| r.status().as_u16());
    assert!(matches!(status, Ok(408)), "after {took:?}: {status:?}");
    assert!(took < Duration::from_secs(10), "cut after {took:?}");
    assert_eq!(gw.cuts("body_timeout"), 1.0, "the cut counted");
    drop(body);
}

#[tokio::test]
async fn a_websocket_may_idle_past_the_body_timeout() {
    // After a 101 the client's bytes are the tunnel, not a request body: no pace applies.
    let gw = paced();
    let mut conn = gw.raw_connect(ACME).await.expect("connect");
    conn.send(websocket_upgrade(ACME).as_bytes()).await;
    let resp = conn
        .read_response(Duration::from_secs(10))
        .await
        .expect("a response to the upgrade request");
    assert_eq!(resp.status, 101, "upgrade: {resp:?}");
    for round in 0..2 {
        // Idle for 2.5 times the body timeout, then a few bytes: far below 100 B/s.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let payload = format!("still-here-{round}");
        conn.send(payload.as_bytes()).await;
        let echoed = conn
            .read_until(Duration::from_secs(10), |b| {
                b.windows(payload.len()).any(|w| w == payload.as_bytes())
            })
            .await;
        assert!(
            echoed,
            "round {round}: the tunnel did not echo; got {:?}",
            String::from_utf8_lossy(&conn.buf)
        );
    }
    assert_eq!(gw.cuts("body_timeout"), 0.0);
}

#[tokio::test]
async fn a_reload_that_tightens_the_body_timeout_applies_to_the_next_request() {
    let gw = Gateway::start(Opts {
        read_timeout_ms: 30_000,
        ..Opts::default()
    });
    gw.site
        .write_proxy_lines("client_body_timeout_ms = 1000\nclient_body_min_rate = 100\n");
    assert!(
        gw.wait_for_log("config reloaded", Duration::from_secs(20)),
        "the reload did not happen; logs:\n{}",
        gw.logs()
    );
    let (text, _, took) = stall_h1(&gw).await;
    assert!(text.starts_with("HTTP/1.1 408 "), "after {took:?}: {text}");
    assert!(took < Duration::from_secs(5), "cut after {took:?}");
}

#[tokio::test]
async fn a_whole_body_then_a_silent_upstream_is_the_upstreams_504() {
    // The body is done: the upstream's silence past the body timeout is not the client's.
    let gw = paced_with(500, 100, 2000);
    let mut conn = gw.raw_connect(ACME).await.expect("connect");
    conn.send(
        format!(
            "POST /slow/x HTTP/1.1\r\nHost: {ACME}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        )
        .as_bytes(),
    )
    .await;
    let resp = conn
        .read_response(Duration::from_secs(20))
        .await
        .expect("an answer");
    assert_eq!(resp.status, 504, "over HTTP/1.1");
    let mut send = gw.h2_connect().await;
    let req = http::Request::post(format!("https://{ACME}/slow/x"))
        .body(())
        .expect("request");
    let (resp, mut body) = send.send_request(req, false).expect("send request");
    body.send_data(Bytes::from_static(b"hello"), true)
        .expect("send data");
    let resp = tokio::time::timeout(Duration::from_secs(20), resp)
        .await
        .expect("an answer within 20 s")
        .expect("response");
    assert_eq!(resp.status(), 504, "over HTTP/2");
    assert_eq!(gw.cuts("body_timeout"), 0.0);
}
