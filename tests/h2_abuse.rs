//! HTTP/2 abuse: a client that opens streams and resets them at once ("Rapid Reset",
//! CVE-2023-44487) must not make the gateway hold more upstream requests than the stream
//! limit it advertises, nor keep working for streams nobody waits for.

mod common;
#[path = "common/h2frames.rs"]
mod h2frames;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use h2frames::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ACME: &str = "acme.localhost";

/// How long the held upstream sits on each request before it answers.
const HOLD: Duration = Duration::from_secs(3);

/// What the held upstream saw.
#[derive(Default)]
struct Seen {
    /// Requests that arrived.
    started: AtomicUsize,
    /// Requests arrived and neither answered nor abandoned yet.
    in_flight: AtomicUsize,
    /// The most that were in flight at once.
    most: AtomicUsize,
    /// Requests whose connection the gateway closed before the answer.
    abandoned: AtomicUsize,
}

impl Seen {
    fn start(&self) {
        self.started.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
    }

    /// Until `n` requests have arrived in all (2 s at most: a slow machine's gateway may still
    /// be taking them up), and a little longer, for the stragglers of a batch.
    async fn wait_started(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.started.load(Ordering::SeqCst) < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// What it saw, after a client opened `opened` streams.
    fn outcome(&self, opened: usize) -> Outcome {
        Outcome {
            opened,
            started: self.started.load(Ordering::SeqCst),
            most: self.most.load(Ordering::SeqCst),
            abandoned: self.abandoned.load(Ordering::SeqCst),
            in_flight: self.in_flight.load(Ordering::SeqCst),
        }
    }

    fn end(&self, abandoned: bool) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if abandoned {
            self.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// An upstream that answers each request only after [`HOLD`] (under `/held/late-body/`, the
/// header at once and the body after [`HOLD`]), noticing when the gateway gives up on one
/// (closes the connection) first.
async fn held_upstream() -> (u16, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Seen::default());
    let seen2 = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let seen = Arc::clone(&seen2);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request header at a time (the gateway sends no bodies here).
                    while !contains(&buf, b"\r\n\r\n") {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    buf.drain(..end);
                    // The body, whole, before the request counts as waiting for its answer.
                    let body_done = |buf: &[u8]| match content_length(&head) {
                        Some(len) => buf.len() >= len,
                        None if head.contains("transfer-encoding: chunked") => {
                            contains(buf, b"0\r\n\r\n")
                        }
                        None => true,
                    };
                    while !body_done(&buf) {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.clear();
                    seen.start();
                    // Under /held/late-body/ the header goes at once and only the body waits.
                    let late_body = head.contains(" /held/late-body/");
                    if late_body {
                        let header = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n";
                        if conn.write_all(header).await.is_err() {
                            seen.end(true);
                            return;
                        }
                    }
                    let answer = tokio::select! {
                        () = tokio::time::sleep(HOLD) => true,
                        read = conn.read(&mut chunk) => {
                            // The gateway closed (or wrote a pipelined request, which it
                            // never does): either way this request is abandoned.
                            let _ = read;
                            false
                        }
                    };
                    seen.end(!answer);
                    if !answer {
                        return;
                    }
                    let ok: &[u8] = if late_body {
                        b"ok"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    };
                    if conn.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

/// Other clients (a new connection) are served as usual.
async fn assert_a_new_connection_is_served(gw: &Gateway) {
    let mut fresh = gw.h2_connect().await.ready().await.expect("new connection");
    let req = http::Request::get(format!("https://{ACME}/echo"))
        .body(())
        .expect("request");
    let (resp, _) = fresh.send_request(req, true).expect("send");
    assert_eq!(resp.await.expect("response").status(), 200);
}

fn content_length(head: &str) -> Option<usize> {
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
}

fn with_held_route(port: u16) -> Gateway {
    Gateway::start(Opts {
        read_timeout_ms: 30_000,
        acme_policy_extra: route(
            "held",
            "/held",
            &format!("http://127.0.0.1:{port}"),
            "public",
        ),
        ..Opts::default()
    })
}

/// The plain form of the attack: every stream reset right after its HEADERS, as fast as the
/// client can write. Resets that arrive before the gateway takes their streams up make the
/// HTTP/2 layer end the connection (GOAWAY, ENHANCE_YOUR_CALM) after a few; the rest are let
/// go upstream as soon as they arrive. Either way nothing piles up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reset_as_fast_as_they_open_pile_nothing_up() {
    let (port, seen) = held_upstream().await;
    let gw = with_held_route(port);
    let mut send = gw.h2_connect().await;
    let mut opened = 0;
    for i in 0..1000 {
        send = match send.clone().ready().await {
            Ok(s) => s,
            Err(_) => break,
        };
        let req = http::Request::get(format!("https://{ACME}/held/{i}"))
            .body(())
            .expect("request");
        let Ok((_resp, mut stream)) = send.send_request(req, true) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        opened += 1;
    }
    // Well before HOLD has passed for the first request.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let Outcome {
        started,
        most,
        abandoned,
        in_flight,
        ..
    } = seen.outcome(opened);
    let ended = send.ready().await.err();
    eprintln!(
        "opened {opened}; upstream saw {started}, at most {most} at once, {abandoned} abandoned; connection ended: {ended:?}"
    );
    assert!(most <= 100, "{most} upstream requests at once");
    assert_eq!(
        (abandoned, in_flight),
        (started, 0),
        "requests of reset streams kept open upstream"
    );
    if let Some(e) = ended {
        // The GOAWAY, or the close right after it when the client was still writing.
        assert!(
            e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || e.is_io() || e.is_go_away(),
            "ended otherwise: {e}"
        );
    }
    assert_a_new_connection_is_served(&gw).await;
}

/// What a batched reset attack left upstream.
struct Outcome {
    opened: usize,
    started: usize,
    most: usize,
    abandoned: usize,
    in_flight: usize,
}

/// The variant that beats a stream limit counted by the protocol alone: ten batches of 100
/// streams, each batch reset only once its requests have reached the upstream (so no reset
/// comes before its stream is accepted) and every batch freeing the client's slots for the
/// next. With `body`, each request is a POST with that body, sent whole before the reset.
async fn reset_in_batches(
    gw: &Gateway,
    seen: &Seen,
    prefix: &str,
    body: Option<&'static [u8]>,
) -> Outcome {
    let mut send = gw.h2_connect().await;
    let mut opened = 0;
    'batches: for batch in 0..10 {
        let mut streams = Vec::new();
        for i in 0..100 {
            send = match send.clone().ready().await {
                Ok(s) => s,
                Err(_) => break 'batches,
            };
            let uri = format!("https://{ACME}{prefix}{batch}/{i}");
            let req = match body {
                Some(b) => http::Request::post(uri).header("content-length", b.len().to_string()),
                None => http::Request::get(uri),
            }
            .body(())
            .expect("request");
            let Ok((resp, mut stream)) = send.send_request(req, body.is_none()) else {
                break 'batches;
            };
            if let Some(b) = body {
                if stream
                    .send_data(bytes::Bytes::from_static(b), true)
                    .is_err()
                {
                    break 'batches;
                }
            }
            streams.push((resp, stream));
            opened += 1;
        }
        seen.wait_started(opened).await;
        for (_resp, mut stream) in streams {
            stream.send_reset(h2::Reason::CANCEL);
        }
    }
    // Well before HOLD has passed for the last batch, long enough for the gateway to let go.
    tokio::time::sleep(Duration::from_millis(500)).await;
    seen.outcome(opened)
}

/// Every request of a reset stream was given up upstream (its connection closed) long before
/// the upstream would have answered, so no more were ever open there than the client had
/// streams open.
fn assert_let_go(what: &str, o: &Outcome) {
    eprintln!(
        "{what}: opened {}; upstream saw {}, at most {} at once, {} abandoned, {} in flight",
        o.opened, o.started, o.most, o.abandoned, o.in_flight
    );
    assert_eq!(
        o.opened, 1000,
        "{what}: the client could not open its streams"
    );
    assert!(
        o.started >= 900,
        "{what}: only {} of the requests reached the upstream; the attack was not tried",
        o.started
    );
    assert_eq!(
        (o.abandoned, o.in_flight),
        (o.started, 0),
        "{what}: requests of reset streams kept open upstream"
    );
    assert!(
        o.most <= 200,
        "{what}: {} upstream requests in flight at once from one connection with at most 100 streams open",
        o.most
    );
}

/// [`reset_in_batches`] against a gateway in front of a held upstream, and
/// [`assert_let_go`] on what it left; the gateway, for more checks.
async fn batched_reset_attack(what: &str, prefix: &str, body: Option<&'static [u8]>) -> Gateway {
    let (port, seen) = held_upstream().await;
    let gw = with_held_route(port);
    let outcome = reset_in_batches(&gw, &seen, prefix, body).await;
    assert_let_go(what, &outcome);
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_of_streams_reset_after_acceptance_are_let_go_upstream() {
    let gw = batched_reset_attack("GET", "/held/", None).await;
    // Counted as requests that ended without an answer, which is where an operator sees it.
    let unanswered: f64 = gw
        .metrics()
        .iter()
        .filter(|s| {
            s.name == "portcullis_requests_total"
                && s.label("route") == Some("held")
                && s.label("status") == Some("other")
        })
        .map(|s| s.value)
        .sum();
    assert_eq!(
        unanswered, 1000.0,
        "requests of reset streams in the metrics"
    );
    // The client's doing, not the gateway's error.
    let logs = gw.logs();
    let errors: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("ERROR") && !l.contains("handshake"))
        .collect();
    assert!(
        errors.is_empty(),
        "logged as errors:\n{}",
        errors.join("\n")
    );
    eprintln!(
        "{} log lines; one: {:?}",
        logs.lines().count(),
        logs.lines().find(|l| l.contains("HTTP/2 stream"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_reset_while_their_body_is_awaited_are_let_go_upstream() {
    batched_reset_attack("GET, body awaited", "/held/late-body/", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_of_streams_reset_after_acceptance_are_let_go_upstream() {
    batched_reset_attack("POST", "/held/", Some(b"0123456789")).await;
}

/// "MadeYouReset" (CVE-2025-8671): the client makes the gateway reset each stream itself, once
/// the request is under way, by a WINDOW_UPDATE that overflows the stream's flow-control window
/// past 2^31-1 (a stream error, FLOW_CONTROL_ERROR: RFC 9113 §6.9.1). The reset frees the
/// client's slot as a reset of its own would; the request upstream must go too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_the_gateway_resets_for_a_protocol_error_are_let_go_upstream() {
    let (port, seen) = held_upstream().await;
    let gw = with_held_route(port);
    let mut conn = raw_h2(&gw).await;
    let mut opened = 0;
    let mut next_id = 1u32;
    for batch in 0..10 {
        let ids: Vec<u32> = (0..100).map(|i| next_id + 2 * i).collect();
        next_id += 200;
        let mut out = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let block = get_block(&format!("/held/{batch}/{i}"));
            out.extend(frame(HEADERS, END_STREAM | END_HEADERS, *id, &block));
        }
        conn.send(&out).await;
        opened += ids.len();
        seen.wait_started(opened).await;
        let overflow: Vec<u8> = ids
            .iter()
            .flat_map(|id| frame(WINDOW_UPDATE, 0, *id, &0x7fff_ffffu32.to_be_bytes()))
            .collect();
        conn.send(&overflow).await;
        // The gateway's resets, before the next batch opens.
        let want = (batch + 1) * 100;
        conn.read_until(Duration::from_secs(5), |b| {
            frames(b).iter().filter(|f| f.0 == RST_STREAM).count() >= want
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resets = frames(&conn.buf)
        .iter()
        .filter(|f| f.0 == RST_STREAM)
        .count();
    assert_eq!(
        resets, 1000,
        "the gateway did not reset every stream whose window overflowed"
    );
    assert_let_go("GET reset by the gateway", &seen.outcome(opened));
}

/// A header block that never ends (HEADERS, then CONTINUATION frames without END_HEADERS, the
/// "CONTINUATION flood"): the gateway ends the connection after a bounded amount instead of
/// buffering headers for as long as they come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_that_never_ends_ends_the_connection() {
    let gw = with_held_route(free_port());
    let conn = raw_h2(&gw).await;
    let (mut read_half, mut write_half) = tokio::io::split(conn.into_stream());
    // 16 MiB of header fields `x: <100 bytes>`, in 16 KiB CONTINUATION frames.
    let field: Vec<u8> = [&[0x00, 0x01, b'x', 100][..], &[b'v'; 100][..]].concat();
    let block: Vec<u8> = field.iter().copied().cycle().take(16 * 1024).collect();
    let writer = tokio::spawn(async move {
        let _ = write_half
            .write_all(&frame(HEADERS, END_STREAM, 1, &get_block("/echo")))
            .await;
        for _ in 0..1024 {
            if write_half
                .write_all(&frame(CONTINUATION, 0, 1, &block))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match read_half.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if goaway(&buf).is_some() {
                return;
            }
        }
    })
    .await;
    writer.abort();
    assert!(
        ended.is_ok(),
        "the gateway kept reading an endless header block"
    );
    assert!(
        goaway(&buf).is_some_and(|code| code != 0),
        "the connection ended without a GOAWAY naming an error"
    );
    assert!(
        !frames(&buf).iter().any(|f| f.0 == HEADERS),
        "the endless request was answered"
    );
    assert_a_new_connection_is_served(&gw).await;
}

/// The limits the README promises, as the gateway advertises them (SETTINGS, RFC 9113 §6.5.2)
/// and enforces them: a 101st stream opened while 100 are under way is refused
/// (REFUSED_STREAM) and never reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gets_at_most_100_streams_at_once() {
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    const MAX_HEADER_LIST_SIZE: u16 = 0x6;
    const REFUSED_STREAM: u32 = 0x7;
    let (port, seen) = held_upstream().await;
    let gw = with_held_route(port);
    let mut conn = raw_h2(&gw).await;
    let settings: Vec<(u16, u32)> = frames(&conn.buf)
        .into_iter()
        .find(|f| f.0 == SETTINGS && f.1 & ACK == 0)
        .map(|f| {
            f.3.chunks_exact(6)
                .map(|c| {
                    (
                        u16::from_be_bytes([c[0], c[1]]),
                        u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                    )
                })
                .collect()
        })
        .expect("settings");
    let setting = |id| settings.iter().find(|s| s.0 == id).map(|s| s.1);
    assert_eq!(setting(MAX_CONCURRENT_STREAMS), Some(100), "{settings:?}");
    assert_eq!(
        setting(MAX_HEADER_LIST_SIZE),
        Some(64 * 1024),
        "{settings:?}"
    );

    let streams: Vec<Vec<u8>> = (0..101u32)
        .map(|i| {
            let block = get_block(&format!("/held/{i}"));
            frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, &block)
        })
        .collect();
    conn.send(&streams.concat()).await;
    let refused = conn
        .read_until(Duration::from_secs(5), |b| {
            frames(b).iter().any(|f| f.0 == RST_STREAM)
        })
        .await;
    assert!(refused, "no stream was refused");
    seen.wait_started(100).await;
    let resets: Vec<(u32, u32)> = frames(&conn.buf)
        .into_iter()
        .filter(|f| f.0 == RST_STREAM)
        .map(|f| (f.2, u32::from_be_bytes(f.3[..4].try_into().expect("code"))))
        .collect();
    assert_eq!(
        resets,
        vec![(201, REFUSED_STREAM)],
        "the 101st stream, and only it"
    );
    let o = seen.outcome(101);
    assert_eq!((o.started, o.most), (100, 100), "what reached the upstream");
}

/// The gateway's resident memory, in KiB.
fn rss_kib(gw: &Gateway) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", gw.pid()))
        .expect("proc status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Control frames the gateway must answer, sent in bulk by a client that never reads the
/// answers (PING flood, CVE-2019-9512; SETTINGS flood, CVE-2019-9515): the answers must not
/// pile up in the gateway. 64 MiB worth of each is offered; the gateway may stop reading or
/// end the connection, but its memory grows by far less than that, and it serves others. (It
/// stops reading after about 8 MiB, most of it in the sockets' buffers, and grows by 2–4 MiB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frames_sent_without_reading_the_answers_pile_nothing_up() {
    const PING: u8 = 0x6;
    let gw = with_held_route(free_port());
    // Warm: the first HTTP/2 connection's allocations are not the flood's.
    assert_a_new_connection_is_served(&gw).await;
    for (case, unit) in [
        ("PING", frame(PING, 0, 0, &[7; 8])),
        ("SETTINGS", frame(SETTINGS, 0, 0, &[0, 0x4, 0, 1, 0, 0])),
    ] {
        let before = rss_kib(&gw);
        let conn = raw_h2(&gw).await;
        let (_read_half, mut write_half) = tokio::io::split(conn.into_stream());
        let batch: Vec<u8> = unit
            .iter()
            .copied()
            .cycle()
            .take(unit.len() * 4096)
            .collect();
        let offered = 64 * 1024 * 1024 / batch.len();
        let sent = Arc::new(AtomicUsize::new(0));
        let sent2 = Arc::clone(&sent);
        let writer = tokio::spawn(async move {
            for _ in 0..offered {
                if write_half.write_all(&batch).await.is_err() {
                    break;
                }
                sent2.fetch_add(1, Ordering::SeqCst);
            }
        });
        // The writer ends when the gateway closes, or stalls when it stops reading.
        let ended = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .is_ok();
        let grew = rss_kib(&gw).saturating_sub(before);
        eprintln!(
            "{case}: {} of {offered} batches written, writer ended: {ended}; RSS grew {grew} KiB",
            sent.load(Ordering::SeqCst)
        );
        assert!(
            grew < 16 * 1024,
            "{case}: the gateway's memory grew by {grew} KiB"
        );
        assert_a_new_connection_is_served(&gw).await;
    }
}
