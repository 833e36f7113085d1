//! The optional plain-HTTP listener: it serves nothing, it only sends clients to HTTPS with a
//! 308 (RFC 9110 §15.4.9, method and body kept). Only known tenant hosts are redirected, and
//! only with a path that passes the same normalization as the HTTPS side.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::error::RequestError;
use crate::gateway::respond::error_body;
use crate::gateway::state::Shared;
use crate::request::target;
use crate::tenant;

/// Answers every plain-HTTP request with a redirect to HTTPS, or an error.
pub struct RedirectApp {
    shared: Arc<Shared>,
}

impl RedirectApp {
    /// A redirect app over shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// Where a plain-HTTP request should go instead, or why it gets nothing.
pub fn location(
    rt: &crate::gateway::state::Runtime,
    host_headers: &[&[u8]],
    raw_target: &[u8],
) -> Result<String, RequestError> {
    let host = tenant::request_host(host_headers.iter().copied(), None)?;
    rt.tenants.resolve(&host)?;
    let target = target::normalize(raw_target, &host)?;
    let port = rt.config.server.https_public_port;
    Ok(if port == 443 {
        format!("https://{host}{}", target.path_and_query())
    } else {
        format!("https://{host}:{port}{}", target.path_and_query())
    })
}

#[async_trait]
impl ServeHttp for RedirectApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let rt = self.shared.runtime.load();
        let req = session.req_header();
        let hosts: Vec<&[u8]> = req
            .headers
            .get_all(http::header::HOST)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let answer = location(&rt, &hosts, req.raw_path());
        let builder = Response::builder()
            .header(http::header::CACHE_CONTROL, "no-store")
            .header(http::header::CONTENT_LENGTH, "0");
        let built = match answer {
            Ok(loc) => builder
                .status(308)
                .header(http::header::LOCATION, loc)
                .body(Vec::new()),
            Err(err) => {
                let (body, content_type) = error_body(&err, false);
                Response::builder()
                    .status(err.status())
                    .header(http::header::CONTENT_TYPE, content_type)
                    .header(http::header::CONTENT_LENGTH, body.len().to_string())
                    .header(http::header::CONNECTION, "close")
                    .body(body.to_vec())
            }
        };
        self.shared.metrics.request(
            "-",
            "http-redirect",
            built.as_ref().map_or(500, |r| r.status().as_u16()),
        );
        built.unwrap_or_else(|_| {
            let mut fallback = Response::new(Vec::new());
            *fallback.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            fallback
        })
    }
}
