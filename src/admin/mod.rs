//! The operator listener (hyper, default 127.0.0.1:9090): health, readiness and metrics, and
//! the bearer-token operator API under `/v1/`. It is a separate listener from the data plane
//! so it is never reachable through a tenant host. The API itself is in [`api`]; the token
//! check is here, in front of it (only the OpenAPI document is served without one).

pub mod api;

use std::convert::Infallible;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Mutex;

use crate::gateway::state::Shared;
use crate::keys::token::TokenDigest;

/// Serves `/healthz`, `/readyz` and `/metrics`.
pub struct AdminService {
    shared: Arc<Shared>,
    listener: Mutex<Option<std::net::TcpListener>>,
    token: Option<TokenDigest>,
}

impl AdminService {
    /// An operator service on an already-bound listener (bound at start-up, so a taken port
    /// is reported before anything runs).
    pub fn new(shared: Arc<Shared>, listener: std::net::TcpListener) -> Self {
        let file = shared.runtime.load().config.admin.token_file.clone();
        let token = match TokenDigest::load(&file) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("operator API off: {e}");
                None
            }
        };
        Self {
            shared,
            listener: Mutex::new(Some(listener)),
            token,
        }
    }
}

/// A JSON response.
fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The bearer token of a request, if it sent one.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Answer one operator request.
pub fn handle(shared: &Shared, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (method, path) {
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        (&Method::GET, "/readyz") => {
            let tenants = shared.runtime.load().config.tenants.len();
            (
                StatusCode::OK,
                "text/plain",
                Bytes::from(format!("ready: {tenants} tenants\n")),
            )
        }
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            Bytes::from(shared.metrics.render()),
        ),
        (_, "/healthz" | "/readyz" | "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            Bytes::from_static(b"method not allowed\n"),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found\n"),
        ),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let std_listener = match self.listener.lock() {
            Ok(mut guard) => guard.take(),
            Err(_) => None,
        };
        let Some(std_listener) = std_listener else {
            return;
        };
        let listener = match std_listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(std_listener))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("operator listener failed: {e}");
                return;
            }
        };
        loop {
            let accepted = tokio::select! {
                _ = shutdown.changed() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, peer)) = accepted else {
                continue;
            };
            let shared = Arc::clone(&self.shared);
            let token = self.token.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let shared = Arc::clone(&shared);
                    let token = token.clone();
                    async move {
                        let path = req.uri().path();
                        let resp = if path == api::OPENAPI_PATH {
                            api::openapi(req.method())
                        } else if path.starts_with("/v1/") {
                            match (&token, bearer(req.headers())) {
                                (None, _) => json(
                                    StatusCode::NOT_FOUND,
                                    &serde_json::json!({ "error": "operator_api_off" }),
                                ),
                                (Some(t), Some(presented)) if t.matches(presented) => {
                                    let request = api::ApiRequest {
                                        method: req.method(),
                                        path,
                                        query: req.uri().query(),
                                        user_agent: req
                                            .headers()
                                            .get(http::header::USER_AGENT)
                                            .and_then(|v| v.to_str().ok()),
                                        peer: Some(peer.ip()),
                                    };
                                    api::handle(&shared, &request).await
                                }
                                _ => {
                                    let mut r = json(
                                        StatusCode::UNAUTHORIZED,
                                        &serde_json::json!({ "error": "unauthorized" }),
                                    );
                                    r.headers_mut().insert(
                                        http::header::WWW_AUTHENTICATE,
                                        http::HeaderValue::from_static("Bearer"),
                                    );
                                    r
                                }
                            }
                        } else {
                            handle(&shared, req.method(), path)
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!("operator connection ended: {e}");
                }
            });
        }
    }
}
