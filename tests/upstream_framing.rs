//! How upstream responses are relayed (issue 2, item 4) for body-less GET and HEAD requests,
//! which go upstream without pingora_proxy (src/gateway/direct.rs): every way HTTP/1 frames a
//! response body, interim responses, broken or lying upstreams, and keep-alive reuse —
//! against a scripted upstream that answers with exact bytes.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;

const ACME: &str = "acme.localhost";

/// A body larger than every socket buffer between the upstream and a client that stops
/// reading can hold.
const HUGE: usize = 64 << 20;

/// The canned answer for a request line; `true` closes the connection after it.
fn answer(method: &str, path: &str) -> (Vec<u8>, bool) {
    let text = |s: &str| s.as_bytes().to_vec();
    match path {
        "/raw/chunked" => (
            text("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            false,
        ),
        "/raw/close-delimited" => (
            text("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbody ended by closing the connection"),
            true,
        ),
        "/raw/head" if method == "HEAD" => (
            text("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n"),
            false,
        ),
        "/raw/no-content" => (text("HTTP/1.1 204 No Content\r\nX-Seen: yes\r\n\r\n"), false),
        "/raw/not-modified" => (
            text("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n"),
            false,
        ),
        "/raw/early-hints" => (
            text("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nConnection: X-Hint-Hop\r\nX-Hint-Hop: 1\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            false,
        ),
        // An upstream that never stops sending interim responses.
        "/raw/interim-flood" => {
            let mut out = text("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n").repeat(50);
            out.extend(text("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
            (out, true)
        }
        "/raw/big" => {
            let body = vec![b'x'; 1 << 20];
            let mut out = text(&format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                body.len()
            ));
            out.extend(body);
            (out, false)
        }
        "/raw/huge" => {
            let mut out = text(&format!("HTTP/1.1 200 OK\r\nContent-Length: {HUGE}\r\n\r\n"));
            out.resize(out.len() + HUGE, b'x');
            (out, false)
        }
        // Answers, then closes without saying so: the pooled connection goes stale.
        "/raw/then-hang-up" => (text("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), true),
        "/raw/garbage" => (text("this is not HTTP at all\r\n\r\n"), true),
        // More than its Content-Length, shaped as an answer to the next request.
        "/raw/overlong" => (
            text("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"),
            false,
        ),
        "/raw/truncated" => (
            text("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this much"),
            true,
        ),
        "/raw/switching" => (
            text("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
            true,
        ),
        "/raw/hop-by-hop" => (
            text("HTTP/1.1 200 OK\r\nConnection: close, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok"),
            true,
        ),
        _ => (text("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), false),
    }
}

/// A scripted HTTP/1 upstream on a free loopback port.
struct Scripted {
    port: u16,
    connections: Arc<AtomicUsize>,
    /// Connections the gateway closed.
    closed: Arc<AtomicUsize>,
}

impl Scripted {
    fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (counter, closings) = (connections.clone(), closed.clone());
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                let closings = closings.clone();
                thread::spawn(move || {
                    if serve(conn) {
                        closings.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Scripted {
            port,
            connections,
            closed,
        }
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Answers requests until either side ends the connection; `true` when the gateway closed it
/// (EOF while waiting for a request).
fn serve(mut conn: TcpStream) -> bool {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk) {
                Ok(0) => return true,
                Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        buf.drain(..head_end);
        let mut line = head.lines().next().unwrap_or("").split(' ');
        let (method, path) = (line.next().unwrap_or(""), line.next().unwrap_or(""));
        let (bytes, close) = answer(method, path);
        if conn.write_all(&bytes).is_err() {
            return false;
        }
        if close {
            let _ = conn.shutdown(Shutdown::Both);
            return false;
        }
    }
}

fn world() -> (Gateway, Scripted) {
    world_with(Opts::default())
}

fn world_with(opts: Opts) -> (Gateway, Scripted) {
    let upstream = Scripted::start();
    let gw = Gateway::start(Opts {
        acme_policy_extra: format!(
            "\n[[routes]]\nid = \"raw\"\nprefix = \"/raw\"\nupstream = \"http://127.0.0.1:{}\"\naccess = \"public\"\n",
            upstream.port
        ),
        ..opts
    });
    (gw, upstream)
}

async fn get(client: &reqwest::Client, gw: &Gateway, path: &str) -> Response {
    fetch(client.get(gw.url(ACME, path))).await
}

#[tokio::test]
async fn every_body_framing_reaches_the_client_whole_over_h1_and_h2() {
    let (gw, _up) = world();
    for client in [gw.client_h1(), gw.client()] {
        let r = get(&client, &gw, "/raw/chunked").await;
        assert_eq!((r.status, r.text()), (200, "hello world".into()));
        assert!(r.header("strict-transport-security").is_some(), "HSTS");
        let r = get(&client, &gw, "/raw/close-delimited").await;
        assert_eq!(
            (r.status, r.text()),
            (200, "body ended by closing the connection".into())
        );
        let r = get(&client, &gw, "/raw/big").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 1 << 20);
        assert!(r.body.iter().all(|&b| b == b'x'));
        // The client's connection survived all of that.
        let r = get(&client, &gw, "/raw/ok").await;
        assert_eq!((r.status, r.text()), (200, "ok".into()));
    }
}

#[tokio::test]
async fn bodiless_answers_stay_bodiless() {
    let (gw, _up) = world();
    for client in [gw.client_h1(), gw.client()] {
        let r = fetch(client.head(gw.url(ACME, "/raw/head"))).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some("1234"));
        assert!(r.body.is_empty());
        let r = get(&client, &gw, "/raw/no-content").await;
        assert_eq!(r.status, 204);
        assert_eq!(r.header("x-seen"), Some("yes"));
        assert!(r.body.is_empty());
        let r = get(&client, &gw, "/raw/not-modified").await;
        assert_eq!(r.status, 304);
        assert_eq!(r.header("etag"), Some("\"v1\""));
        // And the next answer on the same connections is read from its own start.
        let r = get(&client, &gw, "/raw/ok").await;
        assert_eq!((r.status, r.text()), (200, "ok".into()));
    }
}

#[tokio::test]
async fn clients_that_cannot_show_interim_responses_get_the_final_one() {
    let (gw, _up) = world();
    for client in [gw.client_h1(), gw.client()] {
        let r = get(&client, &gw, "/raw/early-hints").await;
        assert_eq!((r.status, r.text()), (200, "ok".into()));
    }
}

/// Body-less GET goes over the direct path, a POST with a body through pingora_proxy: both
/// relay the hints.
#[tokio::test]
async fn early_hints_reach_an_http11_client_ahead_of_the_response_on_both_paths() {
    let (gw, _up) = world();
    for (method, body) in [("GET", &b""[..]), ("POST", &b"a body"[..])] {
        let reply = gw
            .raw(
                ACME,
                &request_bytes(method, "/raw/early-hints", ACME, &[], body),
            )
            .await;
        let all = reply.responses();
        let statuses: Vec<u16> = all.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [103, 200], "{method}: {}", reply.text());
        let hints = &all[0];
        assert_eq!(hints.header("link"), Some("</a.css>; rel=preload"));
        assert_eq!(
            hints.header("x-hint-hop"),
            None,
            "{method}: a hop-by-hop field passed"
        );
        assert_eq!(all[1].text(), "ok", "{method}");
    }
}

#[tokio::test]
async fn an_http10_client_never_gets_an_interim_response() {
    let (gw, _up) = world();
    let request = format!("GET /raw/early-hints HTTP/1.0\r\nHost: {ACME}\r\n\r\n");
    let reply = gw.raw(ACME, request.as_bytes()).await;
    let r = reply.single();
    assert_eq!((r.status, r.text()), (200, "ok".into()));
}

/// On both paths: the direct one (GET) and pingora_proxy's (POST with a body).
#[tokio::test]
async fn an_upstream_that_never_stops_sending_interim_responses_gets_a_502() {
    let (gw, _up) = world();
    for (method, body) in [("GET", &b""[..]), ("POST", &b"a body"[..])] {
        let reply = gw
            .raw(
                ACME,
                &request_bytes(method, "/raw/interim-flood", ACME, &[], body),
            )
            .await;
        let all = reply.responses();
        let hints = all.iter().filter(|r| r.status == 103).count();
        assert!(hints <= 8, "{method}: {hints} interim responses relayed");
        assert_eq!(
            all.last().map(|r| r.status),
            Some(502),
            "{method}: {}",
            reply.text()
        );
    }
    // The gateway itself is fine.
    let r = get(&gw.client_h1(), &gw, "/raw/ok").await;
    assert_eq!((r.status, r.text()), (200, "ok".into()));
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout_without_more_requests() {
    let (gw, up) = world_with(Opts {
        idle_timeout_ms: 1500,
        ..Opts::default()
    });
    let r = get(&gw.client_h1(), &gw, "/raw/ok").await;
    assert_eq!((r.status, r.text()), (200, "ok".into()));
    assert_eq!(up.connections(), 1);
    // Pooled, and kept while it is fresh.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up.closed(), 0, "closed before the idle timeout");
    // No request comes again; the worker's sweep closes it anyway.
    assert!(
        poll_until(Duration::from_secs(6), || up.closed() == 1),
        "an idle pooled connection outlived the idle timeout"
    );
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_stale_ones_replaced() {
    let (gw, up) = world();
    let client = gw.client_h1();
    for _ in 0..10 {
        let r = get(&client, &gw, "/raw/ok").await;
        assert_eq!(r.status, 200);
    }
    let pooled = up.connections();
    assert!(
        pooled <= 2,
        "10 requests opened {pooled} upstream connections"
    );
    // The upstream hangs up after answering without saying so; the next request must not
    // fail on the dead pooled connection.
    for _ in 0..5 {
        let r = get(&client, &gw, "/raw/then-hang-up").await;
        assert_eq!((r.status, r.text()), (200, "ok".into()));
        let r = get(&client, &gw, "/raw/ok").await;
        assert_eq!((r.status, r.text()), (200, "ok".into()), "after a hang-up");
    }
}

/// The gateway reads the common response (one Content-Length) itself, and hands every other
/// framing to pingora's client: both kinds leave the connection ready for the next request.
#[tokio::test]
async fn connections_are_reused_after_both_the_common_and_the_other_framings() {
    let (gw, up) = world();
    let client = gw.client_h1();
    for _ in 0..5 {
        let r = get(&client, &gw, "/raw/chunked").await;
        assert_eq!((r.status, r.text()), (200, "hello world".into()));
        let r = get(&client, &gw, "/raw/ok").await;
        assert_eq!((r.status, r.text()), (200, "ok".into()));
    }
    let opened = up.connections();
    assert!(
        opened <= 2,
        "10 requests opened {opened} upstream connections"
    );
}

#[tokio::test]
async fn bytes_past_a_declared_length_never_answer_another_request() {
    let (gw, up) = world();
    let client = gw.client_h1();
    for _ in 0..3 {
        let r = get(&client, &gw, "/raw/overlong").await;
        assert_eq!((r.status, r.text()), (200, "ok".into()));
        let r = get(&client, &gw, "/raw/ok").await;
        assert_eq!((r.status, r.text()), (200, "ok".into()), "desynchronized");
    }
    // Each overlong answer's connection was dropped, not pooled: the extra bytes came in the
    // same read as the answer, so nothing on the socket would have told a later reuse.
    assert!(up.connections() >= 3);
}

#[tokio::test]
async fn broken_or_lying_upstreams_never_pass_as_good_answers() {
    let (gw, _up) = world();
    let client = gw.client_h1();
    let r = get(&client, &gw, "/raw/garbage").await;
    assert_eq!(r.status, 502, "{}", r.text());
    // 101 to a request that asked for no upgrade.
    let r = get(&client, &gw, "/raw/switching").await;
    assert_eq!(r.status, 502, "{}", r.text());
    // A body shorter than its Content-Length: the client must see a broken response, never a
    // complete one.
    let cut = client.get(gw.url(ACME, "/raw/truncated")).send().await;
    if let Ok(resp) = cut {
        assert!(
            resp.bytes().await.is_err(),
            "a truncated upstream body was delivered as complete"
        );
    }
    // The gateway keeps serving.
    let r = get(&client, &gw, "/raw/ok").await;
    assert_eq!((r.status, r.text()), (200, "ok".into()));
}

#[tokio::test]
async fn hop_by_hop_response_headers_do_not_reach_the_client() {
    let (gw, _up) = world();
    let r = get(&gw.client_h1(), &gw, "/raw/hop-by-hop").await;
    assert_eq!((r.status, r.text()), (200, "ok".into()));
    assert_eq!(r.header("keep-alive"), None);
    assert_eq!(r.header("x-secret-hop"), None, "named in Connection");
    let r = get(&gw.client(), &gw, "/raw/hop-by-hop").await;
    assert_eq!((r.status, r.text()), (200, "ok".into()));
    assert_eq!(r.header("keep-alive"), None);
    assert_eq!(r.header("x-secret-hop"), None, "named in Connection");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_let_go_after_the_send_timeout_on_both_paths() {
    let (gw, _up) = world_with(Opts {
        client_send_timeout_ms: Some(1000),
        ..Opts::default()
    });
    // GET goes the direct path; a POST (even without a body) goes through pingora_proxy.
    for (method, extra) in [("GET", ""), ("POST", "Content-Length: 0\r\n")] {
        let mut conn = gw.raw_connect(ACME).await.expect("connect");
        let request = format!("{method} /raw/huge HTTP/1.1\r\nHost: {ACME}\r\n{extra}\r\n");
        conn.send(request.as_bytes()).await;
        assert!(
            conn.read_until(Duration::from_secs(10), |b| b.len() >= 64 * 1024)
                .await,
            "{method}: the answer did not start"
        );
        assert!(
            conn.buf.starts_with(b"HTTP/1.1 200"),
            "{method}: {:?}",
            &conn.buf[..12]
        );
        // The client reads nothing more for a while, then everything it can.
        tokio::time::sleep(Duration::from_secs(4)).await;
        conn.read_until(Duration::from_secs(60), |_| false).await;
        assert!(conn.closed, "{method}: the connection was still open");
        assert!(
            conn.buf.len() < HUGE,
            "{method}: the whole body ({} bytes) arrived",
            conn.buf.len()
        );
    }
    // Logged as the client's doing, once per path, not as the gateway's error.
    let logs = gw.logs();
    let ended: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("client connection ended") && l.contains("WriteTimedout"))
        .collect();
    assert_eq!(ended.len(), 2, "not one line per cut:\n{logs}");
    assert!(
        !logs
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("Fail to")),
        "a client's send timeout logged as an error:\n{logs}"
    );
    assert_eq!(gw.cuts("send_timeout"), 2.0, "cuts counted, one per path");
}

/// Over HTTP/2 a client that stops reading stalls the stream's flow-control window rather
/// than the socket; the write that waits for window is timed the same way, and the stream is
/// reset rather than kept open.
#[tokio::test]
async fn an_http2_client_that_stops_reading_is_let_go_after_the_send_timeout() {
    let (gw, _up) = world_with(Opts {
        client_send_timeout_ms: Some(1000),
        ..Opts::default()
    });
    let mut resp = gw
        .client()
        .get(gw.url(ACME, "/raw/huge"))
        .send()
        .await
        .expect("h2 request");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let mut got = resp
        .chunk()
        .await
        .expect("first chunk")
        .map_or(0, |c| c.len());
    assert!(got > 0, "the answer did not start");
    // The client reads nothing more for a while, then everything it can.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => got += c.len(),
                Ok(None) => return "the whole body",
                Err(_) => return "a reset",
            }
        }
    })
    .await
    .unwrap_or("nothing within 60 s");
    assert_eq!(ended, "a reset", "after {got} bytes");
    assert!(got < HUGE, "the whole body ({got} bytes) arrived");
    assert_eq!(gw.cuts("send_timeout"), 1.0, "the cut counted");
    let logs = gw.logs();
    assert!(
        !logs
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("Fail to")),
        "a client's send timeout logged as an error:\n{logs}"
    );
}

#[tokio::test]
async fn a_client_that_reads_slowly_but_steadily_gets_the_whole_answer() {
    let (gw, _up) = world_with(Opts {
        client_send_timeout_ms: Some(1000),
        ..Opts::default()
    });
    let mut conn = gw.raw_connect(ACME).await.expect("connect");
    conn.send(format!("GET /raw/big HTTP/1.1\r\nHost: {ACME}\r\n\r\n").as_bytes())
        .await;
    // 1 MiB in pieces of at most 64 KiB, each a little after the last: well within the
    // timeout between writes, though the whole answer takes longer than it.
    let mut total = 0;
    let start = std::time::Instant::now();
    while total < (1 << 20) && start.elapsed() < Duration::from_secs(60) {
        let want = conn.buf.len() + 1;
        conn.read_until(Duration::from_secs(5), |b| b.len() >= want)
            .await;
        total = conn.buf.len();
        if conn.closed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = conn.read_response(Duration::from_secs(10)).await;
    let response = response.expect("a whole response");
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 1 << 20);
    assert!(
        start.elapsed() > Duration::from_secs(1),
        "read too fast to test anything"
    );
}
