//! What a gateway endpoint answers, independent of pingora: the gateway writes it out.

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::HeaderValue;

use super::pages;

/// A complete response from a `/.auth/…` endpoint.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers besides the ones the gateway adds to everything (HSTS).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    fn new(status: u16, content_type: &'static str, body: Bytes) -> Self {
        Self {
            status,
            headers: vec![
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
                (
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer"),
                ),
            ],
            body,
        }
    }

    /// An HTML page under the pages' strict CSP.
    pub fn html(status: u16, page: String) -> Self {
        let mut reply = Self::new(status, "text/html; charset=utf-8", Bytes::from(page));
        reply.push(header::CONTENT_SECURITY_POLICY, pages::csp());
        reply.push(header::X_FRAME_OPTIONS, "DENY");
        reply
    }

    /// An XML document (SAML metadata), cacheable for an hour.
    pub fn xml(status: u16, document: String) -> Self {
        let mut reply = Self::new(
            status,
            "application/samlmetadata+xml",
            Bytes::from(document),
        );
        reply.headers.retain(|(n, _)| n != header::CACHE_CONTROL);
        reply.push(header::CACHE_CONTROL, "public, max-age=3600");
        reply
    }

    /// A JSON document.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self::new(status, "application/json", Bytes::from(value.to_string()))
    }

    /// A JSON error `{"error": code, "status": status}`.
    pub fn json_error(status: u16, code: &str) -> Self {
        Self::json(
            status,
            &serde_json::json!({ "error": code, "status": status }),
        )
    }

    /// A redirect (303 after a form POST, 302 otherwise) to a same-host path.
    pub fn redirect(status: u16, location: &str) -> Self {
        let mut reply = Self::new(status, "text/plain; charset=utf-8", Bytes::new());
        reply.push(header::LOCATION, location);
        reply
    }

    /// Add a header. Values are built by the gateway from checked parts; one that is still
    /// not a valid header value is dropped rather than sent malformed.
    pub fn push(&mut self, name: HeaderName, value: &str) {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
    }

    /// Add a `Set-Cookie`.
    pub fn cookie(mut self, set_cookie: String) -> Self {
        self.push(header::SET_COOKIE, &set_cookie);
        self
    }
}
