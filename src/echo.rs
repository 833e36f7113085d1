//! The built-in echo backend for the demo, tests and benchmarks: it answers every request
//! with JSON describing exactly what it received, so anyone can see what the gateway
//! forwards. WebSocket upgrades are accepted and every byte sent afterwards is echoed back.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Bodies above this are not read, only reported as too large.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Serve on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!("echo connection ended: {e}");
            }
        });
    }
}

/// Bind `addr` and serve forever on a runtime of its own (for `portcullis echo-backend`).
pub fn run(addr: SocketAddr) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        serve(listener).await;
        Ok(())
    })
}

async fn answer(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let wants_ws = req
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if wants_ws {
        // RFC 6455 §4.2.2: the accept key proves the server read the client's key.
        let accept = req
            .headers()
            .get("sec-websocket-key")
            .map(|k| {
                let mut h = Sha1::new();
                h.update(k.as_bytes());
                h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
                base64::engine::general_purpose::STANDARD.encode(h.finalize())
            })
            .unwrap_or_default();
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(
            http::header::UPGRADE,
            http::HeaderValue::from_static("websocket"),
        );
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("Upgrade"),
        );
        if let Ok(v) = http::HeaderValue::from_str(&accept) {
            h.insert("sec-websocket-accept", v);
        }
        return Ok(resp);
    }

    let (parts, body) = req.into_parts();
    let body_len = match Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => BodyLen::Bytes(body.to_bytes().len()),
        Err(_) => BodyLen::Unreadable("unreadable or over 64 MiB"),
    };
    let report = report(&parts, body_len);
    let mut resp = Response::new(Full::new(Bytes::from(report)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// The size of the request body, or why it is not known.
enum BodyLen {
    Bytes(usize),
    Unreadable(&'static str),
}

/// The JSON answer, `{"body_len":…,"headers":[[name,value],…],"method":…,"path":…}`: fields in
/// alphabetical order, headers sorted by name (a stable sort, so repeated fields keep their
/// order), values as lossy UTF-8, strings escaped as serde_json escapes them. Written straight
/// from the borrowed request: the backend shares the CPUs with the proxies it is measured
/// through, so what it spends echoing large headers (a signed-in request's JWT) is kept small.
fn report(parts: &http::request::Parts, body_len: BodyLen) -> Vec<u8> {
    let mut headers: Vec<(&str, Cow<'_, str>)> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), utf8_lossy(v.as_bytes())))
        .collect();
    headers.sort_by(|a, b| a.0.cmp(b.0));
    let size: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 8).sum();
    let mut out = Vec::with_capacity(size + 128);
    out.extend_from_slice(b"{\"body_len\":");
    match body_len {
        BodyLen::Bytes(n) => out.extend_from_slice(n.to_string().as_bytes()),
        BodyLen::Unreadable(why) => push_json_str(&mut out, why),
    }
    out.extend_from_slice(b",\"headers\":[");
    for (i, (name, value)) in headers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        push_json_str(&mut out, name);
        out.push(b',');
        push_json_str(&mut out, value);
        out.push(b']');
    }
    out.extend_from_slice(b"],\"method\":");
    push_json_str(&mut out, parts.method.as_str());
    out.extend_from_slice(b",\"path\":");
    match parts.uri.path_and_query() {
        Some(p) => push_json_str(&mut out, p.as_str()),
        None => push_json_str(&mut out, &parts.uri.to_string()),
    }
    out.push(b'}');
    out
}

/// `bytes` as UTF-8, invalid sequences replaced; borrowed when valid (checked a word at a time).
fn utf8_lossy(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Whether a byte must be escaped in a JSON string.
fn escaped(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether any byte of `w` is below 0x20, `"` or `\\` (the "has less" and "has zero" bit tricks:
/// a byte below n borrows into its top bit when n is subtracted from it; either result is
/// nonzero exactly when such a byte is present).
fn word_has_escaped(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    below(w, 0x20) | below(w ^ (ONES * 0x22), 1) | below(w ^ (ONES * 0x5c), 1) != 0
}

/// Append `s` as a JSON string, escaped as serde_json escapes it.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.push(b'"');
    // Most values need no escaping: test eight bytes at a time.
    let mut words = bytes.chunks_exact(8);
    let clean = words.all(|w| {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        !word_has_escaped(u64::from_le_bytes(word))
    }) && !words.remainder().iter().any(|&b| escaped(b));
    if clean {
        out.extend_from_slice(bytes);
    } else {
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if !escaped(b) {
                continue;
            }
            out.extend_from_slice(&bytes[start..i]);
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                _ => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 0xf)]);
                }
            }
            start = i + 1;
        }
        out.extend_from_slice(&bytes[start..]);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::Request<()>) -> http::request::Parts {
        req.into_parts().0
    }

    /// The answer is exactly what serde_json makes of the same report, for headers that need
    /// every kind of escaping, repeated names, invalid UTF-8 and a large value.
    #[test]
    fn the_report_is_the_json_serde_json_writes() {
        let jwt = "e".repeat(410);
        let odd: Vec<u8> = (0x20u8..0x7f).chain([0xc3, 0xbc, 0xff, 0xfe]).collect();
        let req = http::Request::get("/x/%22?q=1&b=%5C")
            .header("x-b", "2")
            .header("x-a", "first \"quoted\" \\ back\tslash")
            .header("x-a", "second")
            .header("x-portcullis-jwt", jwt.as_str())
            .header("x-bytes", http::HeaderValue::from_bytes(&odd).unwrap())
            .header("x-tab", http::HeaderValue::from_bytes(b"\t").unwrap())
            .body(())
            .unwrap();
        let parts = parts(req);
        let mut headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        for (len, json_len) in [
            (BodyLen::Bytes(1234), serde_json::json!(1234)),
            (
                BodyLen::Unreadable("too \"big\""),
                serde_json::json!("too \"big\""),
            ),
        ] {
            let expected = serde_json::json!({
                "method": "GET",
                "path": "/x/%22?q=1&b=%5C",
                "headers": headers,
                "body_len": json_len,
            })
            .to_string();
            assert_eq!(String::from_utf8(report(&parts, len)).unwrap(), expected);
        }
        // Every byte value, as a string of its own and inside longer ones (both paths of the
        // escaper: whole words and the remainder).
        for b in 0u8..=0x7f {
            let c = char::from(b);
            let mut strings = vec![c.to_string(), format!("{}{c}x", "ü".repeat(9))];
            // At every offset of the first two words, beside multi-byte characters.
            strings.extend((0..16).map(|at| format!("{}{c}{}", "a".repeat(at), "ü".repeat(9))));
            for s in strings {
                let mut out = Vec::new();
                push_json_str(&mut out, &s);
                assert_eq!(out, serde_json::to_vec(&s).unwrap(), "{s:?}");
            }
        }
        assert_eq!(utf8_lossy(&[b'a', 0xff]), "a\u{fffd}");
    }
}
