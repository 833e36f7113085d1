//! Size caps (issue 2, item 4; SPEC step 6): a header block over `max_header_bytes` gets 431,
//! a Content-Length over `max_body_bytes` gets 413, and a chunked body is cut at the cap;
//! none of these reach the backend in full.

mod common;

use common::*;

const MAX_HEADER_BYTES: u64 = 4096;
const MAX_BODY_BYTES: u64 = 1000;

fn limited() -> Gateway {
    Gateway::start(Opts {
        max_header_bytes: Some(MAX_HEADER_BYTES),
        max_body_bytes: Some(MAX_BODY_BYTES),
        ..Opts::default()
    })
}

#[tokio::test]
async fn header_block_over_the_limit_is_431() {
    let gw = limited();
    // Control: well under the cap passes.
    let small = format!("X-Filler: {}", "a".repeat(1000));
    let resp = gw.raw_get("acme.localhost", "/api/h", &[&small]).await;
    assert_eq!(resp.status, 200, "1 KB of headers under a 4 KB cap");

    let big = format!("X-Filler: {}", "a".repeat(5000));
    let resp = gw
        .raw_get(
            "acme.localhost",
            "/api/h",
            &[&big, "X-Test-Probe: big-header"],
        )
        .await;
    assert_eq!(resp.status, 431, "one 5 KB header over a 4 KB cap");
    assert!(!gw.backend_traffic().contains("big-header"), "forwarded");

    // Many small headers that add up past the cap.
    let many: Vec<String> = (0..100)
        .map(|i| format!("X-Filler-{i}: {}", "b".repeat(60)))
        .collect();
    let mut lines: Vec<&str> = many.iter().map(String::as_str).collect();
    lines.push("X-Test-Probe: many-headers");
    let resp = gw.raw_get("acme.localhost", "/api/h", &lines).await;
    assert_eq!(
        resp.status, 431,
        "100 headers totalling ~7 KB over a 4 KB cap"
    );
    assert!(!gw.backend_traffic().contains("many-headers"), "forwarded");
}

#[tokio::test]
async fn content_length_over_the_limit_is_413() {
    let gw = limited();
    // Control: a body at the cap passes.
    let ok = vec![b'o'; 1000];
    let req = request_bytes("POST", "/api/body", "acme.localhost", &[], &ok);
    let resp = gw.raw("acme.localhost", &req).await.single();
    assert_eq!(resp.status, 200, "1000-byte body with a 1000-byte cap");
    assert_eq!(resp.expect_echo().body_len, 1000);

    let big = vec![b'x'; 5000];
    let req = request_bytes(
        "POST",
        "/api/body",
        "acme.localhost",
        &["X-Test-Probe: big-body"],
        &big,
    );
    let reply = gw.raw("acme.localhost", &req).await;
    let first = reply
        .responses()
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no response: {:?}", reply.text()));
    assert_eq!(
        first.status, 413,
        "Content-Length 5000 over a 1000-byte cap"
    );
    assert!(!gw.backend_traffic().contains("big-body"), "forwarded");
}

#[tokio::test]
async fn chunked_body_is_cut_at_the_limit() {
    let gw = limited();
    let mut body = String::new();
    for i in 0..50 {
        let chunk = format!("chunk-{i:03}-{}", "c".repeat(90));
        body.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    body.push_str("11\r\nEND-OF-BODY-MARK!\r\n0\r\n\r\n");
    let req = format!(
        "POST /api/chunked HTTP/1.1\r\nHost: acme.localhost\r\nTransfer-Encoding: chunked\r\n\
Connection: close\r\n\r\n{body}"
    );
    let reply = gw.raw("acme.localhost", req.as_bytes()).await;
    if let Some(resp) = reply.responses().first() {
        if let Some(echo) = resp.echo() {
            assert!(
                echo.body_len <= MAX_BODY_BYTES,
                "backend received {} body bytes, cap is {MAX_BODY_BYTES}",
                echo.body_len
            );
        }
        assert_ne!(
            resp.status, 200,
            "a 5 KB chunked body over a 1 KB cap got 200"
        );
    }
    assert!(
        !gw.backend_traffic().contains("END-OF-BODY-MARK"),
        "the whole over-cap chunked body reached the backend"
    );
}

/// Header blocks larger than the gateway reads itself (16 KiB, src/gateway/client.rs) go to
/// pingora's session, from their first byte: under a 64 KiB cap a 30 KB header block is
/// served whole, 80 fields (more than it reads itself) too, and 70 KB gets 431; a small
/// request on the same connection afterwards is read as usual.
#[tokio::test]
async fn header_blocks_too_large_to_read_here_are_read_by_pingora_under_the_cap() {
    let gw = Gateway::start(Opts {
        max_header_bytes: Some(65_536),
        ..Opts::default()
    });
    let mut conn = gw.raw_connect("acme.localhost").await.expect("connect");
    let big = format!("X-Filler: {}", "a".repeat(30_000));
    conn.send(&request_bytes(
        "GET",
        "/api/big",
        "acme.localhost",
        &[&big, "Connection: keep-alive"],
        b"",
    ))
    .await;
    let r = conn
        .read_response(std::time::Duration::from_secs(10))
        .await
        .expect("an answer to the 30 KB header");
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.echo().expect("the echo backend's answer");
    assert_eq!(echo.header_all("x-filler"), vec!["a".repeat(30_000)]);

    // 80: past the 64 read here, under the echo backend's own limit of 100.
    let many: Vec<String> = (0..80).map(|i| format!("X-F-{i}: {i}")).collect();
    let mut lines: Vec<&str> = many.iter().map(String::as_str).collect();
    lines.push("Connection: keep-alive");
    conn.send(&request_bytes(
        "GET",
        "/api/many",
        "acme.localhost",
        &lines,
        b"",
    ))
    .await;
    let r = conn
        .read_response(std::time::Duration::from_secs(10))
        .await
        .expect("an answer to 80 fields");
    let echo = r
        .echo()
        .unwrap_or_else(|| panic!("not the echo: {} {:?} {}", r.status, r.headers, r.text()));
    assert_eq!(echo.header_all("x-f-79"), vec!["79"]);

    conn.send(&request_bytes(
        "GET",
        "/api/small",
        "acme.localhost",
        &["Connection: keep-alive"],
        b"",
    ))
    .await;
    let r = conn
        .read_response(std::time::Duration::from_secs(10))
        .await
        .expect("an answer to the small request after them");
    assert_eq!(r.echo().expect("echo").path, "/api/small");

    let huge = format!("X-Filler: {}", "a".repeat(70_000));
    let resp = gw.raw_get("acme.localhost", "/api/huge", &[&huge]).await;
    assert_eq!(resp.status, 431, "70 KB over a 64 KiB cap");
}

/// A header block that goes on past the cap is refused as soon as it is past it, not read up
/// to pingora's own limit of 1 MiB first: a client cannot make the gateway hold more than
/// about the cap for a header, however slowly or long it sends.
#[tokio::test]
async fn a_header_block_running_past_the_cap_is_refused_before_it_ends() {
    let gw = Gateway::start(Opts {
        max_header_bytes: Some(32_768),
        ..Opts::default()
    });
    let mut conn = gw.raw_connect("acme.localhost").await.expect("connect");
    conn.send(b"GET /api/endless HTTP/1.1\r\nHost: acme.localhost\r\nX-Filler: ")
        .await;
    // 40 KB, then 100 KB more, and never the end of the header.
    conn.send("a".repeat(40_000).as_bytes()).await;
    let early = conn.read_response(std::time::Duration::from_secs(10)).await;
    let r = early.expect("no answer to a header past the cap before it ended");
    assert_eq!(r.status, 431, "{}", r.text());
    conn.send("a".repeat(100_000).as_bytes()).await;
    conn.read_until(std::time::Duration::from_secs(10), |_| false)
        .await;
    assert!(conn.closed, "the connection stayed open after the 431");
    assert_eq!(gw.cuts("header_too_large"), 1.0, "the cut counted");
}

/// The early cut leaves room for what the gateway's count leaves out (the blank line that ends
/// the header): a header block of exactly `max_header_bytes` by that count, too long for the
/// loop to read itself, is still served, and one byte more is refused.
#[tokio::test]
async fn a_header_block_of_exactly_the_cap_is_served_even_when_pingora_reads_it() {
    let gw = Gateway::start(Opts {
        max_header_bytes: Some(20_000),
        ..Opts::default()
    });
    // Counted: "GET" + "/api/edge" + 12 for the request line, then name + value + 4 for
    // each of host (22), connection (24) and x-filler (12 + n): 82 + n.
    for (n, want) in [(19_918, 200), (19_919, 431)] {
        let filler = format!("X-Filler: {}", "a".repeat(n));
        let mut conn = gw.raw_connect("acme.localhost").await.expect("connect");
        conn.send(&request_bytes(
            "GET",
            "/api/edge",
            "acme.localhost",
            &["Connection: keep-alive", &filler],
            b"",
        ))
        .await;
        let r = conn
            .read_response(std::time::Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no answer to a header of {} bytes", 82 + n));
        assert_eq!(r.status, want, "a header of {} bytes", 82 + n);
    }
}
