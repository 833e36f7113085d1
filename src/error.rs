//! The per-request error: every way the gateway refuses or fails a request, mapped to an HTTP
//! status in exactly one place ([`RequestError::status`]), pinned by a test.

use crate::request::framing::FramingError;
use crate::request::target::TargetError;

/// Why a request did not reach (or did not come back from) the upstream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// The request target is ambiguous or malformed.
    #[error("bad request target: {0}")]
    Target(#[from] TargetError),
    /// The message framing could be read two ways (request smuggling).
    #[error("bad message framing: {0}")]
    Framing(#[from] FramingError),
    /// No Host header (or `:authority`), or one that is not a valid host.
    #[error("missing or invalid Host")]
    BadHost,
    /// The request could not be read as HTTP.
    #[error("malformed request")]
    Malformed,
    /// The Host belongs to no tenant. There is no default tenant.
    #[error("unknown host")]
    UnknownHost,
    /// The TLS SNI names a different host than the request (RFC 9110 §15.5.20).
    #[error("TLS server name and Host differ")]
    Misdirected,
    /// No route of the tenant matches the path.
    #[error("no route")]
    NoRoute,
    /// The route needs an authenticated user and there is none.
    #[error("authentication required")]
    Unauthenticated,
    /// The user may not use this route.
    #[error("forbidden")]
    Forbidden,
    /// The body is larger than the configured cap.
    #[error("request body too large")]
    BodyTooLarge,
    /// The client sent the request body too slowly (see `[proxy] client_body_timeout_ms`).
    #[error("request body too slow")]
    BodyTimeout,
    /// The header block is larger than the configured cap.
    #[error("request headers too large")]
    HeadersTooLarge,
    /// The upstream could not be reached.
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The client is over its request budget.
    #[error("too many requests")]
    RateLimited,
    /// A dependency (the store) is unavailable; the request is refused, never let through.
    #[error("temporarily unavailable")]
    Unavailable,
    /// A fault inside the gateway; the request is refused, never let through.
    #[error("internal error")]
    Internal,
}

impl RequestError {
    /// The one mapping from error to HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::Target(_) | Self::Framing(_) | Self::BadHost | Self::Malformed => 400,
            Self::Unauthenticated => 401,
            Self::Forbidden => 403,
            Self::UnknownHost | Self::NoRoute => 404,
            Self::BodyTimeout => 408,
            Self::BodyTooLarge => 413,
            Self::Misdirected => 421,
            Self::RateLimited => 429,
            Self::HeadersTooLarge => 431,
            Self::Internal => 500,
            Self::Unavailable => 503,
            Self::UpstreamUnavailable => 502,
            Self::UpstreamTimeout => 504,
        }
    }

    /// A stable machine-readable code for JSON errors, metrics and audit reasons.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Target(e) => e.code(),
            Self::Framing(e) => e.code(),
            Self::BadHost => "bad_host",
            Self::Malformed => "malformed_request",
            Self::UnknownHost => "unknown_host",
            Self::Misdirected => "misdirected_request",
            Self::NoRoute => "no_route",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::BodyTooLarge => "body_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::HeadersTooLarge => "headers_too_large",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Internal => "internal_error",
            Self::Unavailable => "unavailable",
            Self::RateLimited => "too_many_requests",
        }
    }

    /// Whether the connection must be closed after answering: after a framing error the
    /// rest of the byte stream cannot be trusted to start a new request.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::Framing(_)
                | Self::Malformed
                | Self::HeadersTooLarge
                | Self::BodyTooLarge
                | Self::BodyTimeout
        )
    }

    /// The sentence shown to people on the error page. Never echoes request data.
    pub fn message(&self) -> &'static str {
        match self {
            Self::Target(_) | Self::Framing(_) | Self::BadHost | Self::Malformed => {
                "The request was malformed or ambiguous and was refused."
            }
            Self::UnknownHost => "This host is not served here.",
            Self::Misdirected => "This connection was set up for a different host.",
            Self::NoRoute => "Nothing is served at this address.",
            Self::Unauthenticated => "You need to sign in to see this page.",
            Self::Forbidden => "You do not have access to this page.",
            Self::BodyTooLarge => "The request body is too large.",
            Self::BodyTimeout => "The request body arrived too slowly.",
            Self::HeadersTooLarge => "The request headers are too large.",
            Self::UpstreamUnavailable => "The application is not reachable right now.",
            Self::UpstreamTimeout => "The application took too long to answer.",
            Self::Internal => "Something went wrong; the request was not forwarded.",
            Self::RateLimited => "Too many requests. Please slow down and try again shortly.",
            Self::Unavailable => "This service is unavailable right now. Please try again shortly.",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_status() {
        let cases = [
            (RequestError::BadHost, 400),
            (RequestError::Unauthenticated, 401),
            (RequestError::Forbidden, 403),
            (RequestError::UnknownHost, 404),
            (RequestError::NoRoute, 404),
            (RequestError::BodyTimeout, 408),
            (RequestError::BodyTooLarge, 413),
            (RequestError::Misdirected, 421),
            (RequestError::RateLimited, 429),
            (RequestError::HeadersTooLarge, 431),
            (RequestError::Internal, 500),
            (RequestError::Unavailable, 503),
            (RequestError::UpstreamUnavailable, 502),
            (RequestError::UpstreamTimeout, 504),
        ];
        for (error, status) in cases {
            assert_eq!(error.status(), status, "{error:?}");
        }
    }

    #[test]
    fn only_unrecoverable_errors_close_the_connection() {
        assert!(RequestError::HeadersTooLarge.closes_connection());
        assert!(!RequestError::NoRoute.closes_connection());
        assert!(!RequestError::Unauthenticated.closes_connection());
    }
}
