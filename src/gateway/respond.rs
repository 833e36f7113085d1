//! Responses the gateway writes itself: error pages (HTML or JSON). Every one carries HSTS and
//! strict headers, and none echoes anything from the request.

use bytes::Bytes;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::auth::reply::Reply;
use crate::error::RequestError;

/// Whether the client asked for JSON (API clients) rather than a page.
pub fn wants_json(accept: Option<&HeaderValue>) -> bool {
    accept
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

/// The body of an error answer.
pub fn error_body(err: &RequestError, json: bool) -> (Bytes, &'static str) {
    let status = err.status();
    if json {
        let body = serde_json::json!({ "error": err.code(), "status": status });
        (Bytes::from(body.to_string()), "application/json")
    } else {
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let page = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width\">\
             <title>{status} {reason}</title></head>\
             <body><main><h1>{status} {reason}</h1><p>{}</p></main></body></html>\n",
            err.message()
        );
        (Bytes::from(page), "text/html; charset=utf-8")
    }
}

/// Write an error answer to the client. After errors that leave the byte stream untrustworthy
/// (framing, oversized messages), and when `close` asks, the answer says `Connection: close`
/// and the connection is closed after it.
pub async fn error(
    session: &mut Session,
    err: &RequestError,
    hsts: &HeaderValue,
    close: bool,
) -> pingora::Result<()> {
    let json = wants_json(session.req_header().headers.get(http::header::ACCEPT));
    let (body, content_type) = error_body(err, json);
    let mut resp = ResponseHeader::build(err.status(), Some(8))?;
    resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
    resp.insert_header(http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")?;
    resp.insert_header(http::header::CONTENT_SECURITY_POLICY, "default-src 'none'")?;
    resp.insert_header(http::header::X_FRAME_OPTIONS, "DENY")?;
    if close || err.closes_connection() {
        resp.insert_header(http::header::CONNECTION, "close")?;
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Write a gateway endpoint's reply, with HSTS.
pub async fn reply(session: &mut Session, reply: Reply, hsts: &HeaderValue) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(reply.status, Some(reply.headers.len() + 3))?;
    for (name, value) in reply.headers {
        resp.append_header(name, value)?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, reply.body.len().to_string())?;
    resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(reply.body), true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_clients_get_json_errors() {
        let (body, ct) = error_body(&RequestError::Unauthenticated, true);
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"], "unauthenticated");
        assert_eq!(v["status"], 401);
    }

    #[test]
    fn accept_header_selects_json() {
        assert!(wants_json(Some(&HeaderValue::from_static(
            "application/json"
        ))));
        assert!(!wants_json(Some(&HeaderValue::from_static("text/html"))));
        assert!(!wants_json(None));
    }
}
