//! The built-in echo backend for the demo, tests and benchmarks: it answers every request
//! with JSON describing exactly what it received, so anyone can see what the gateway
//! forwards. WebSocket upgrades are accepted and every byte sent afterwards is echoed back.

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
    let mut headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().to_string(), |p| p.as_str().to_string());

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

    let body_len = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => serde_json::json!(body.to_bytes().len()),
        Err(_) => serde_json::json!("unreadable or over 64 MiB"),
    };
    let report = serde_json::json!({
        "method": method,
        "path": path,
        "headers": headers,
        "body_len": body_len,
    });
    let mut resp = Response::new(Full::new(Bytes::from(report.to_string())));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
