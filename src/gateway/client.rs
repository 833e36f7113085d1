//! The client side of the common request, without pingora's HTTP/1 server session.
//!
//! pingora's server session reads every request into a fresh 4 KiB buffer, builds a
//! case-preserving header map beside the real one, validates framing the request cannot have,
//! and on the way out copies the response header into a second map for its `Date` and
//! `Connection` fields before serializing it; measured, reading and answering a signed-in
//! request cost about 12,000 instructions there, a fifth of the gateway's work per request.
//!
//! [`Conn::next`] reads the next request header itself, into a buffer kept for the connection,
//! and takes on only the plainest requests ([`take_plain`]): HTTP/1.1 `GET` or `HEAD` to an
//! origin-form target, with one `Host`, and with no `Content-Length`, `Transfer-Encoding`,
//! `Upgrade` or `Expect` — so, by RFC 9112 §6.3, with no body: the bytes after the header are
//! the next request. Everything else, and anything httparse's strict defaults refuse, is
//! [`Next::Other`]: [`super::front`] puts the bytes back and pingora's own session reads the
//! request from its first byte, as before. So request framing, where smuggling lives, is
//! decided here only where there is nothing to decide.
//!
//! The request is then served through pingora_proxy's `Session` as usual, with a [`Client`]
//! as its downstream (pingora's custom-session hook) that writes responses the way pingora's
//! HTTP/1 session does: `Date` and `Connection` set, the body framed by `Content-Length`,
//! chunked, or by closing the connection, and no body after `HEAD`, 204 or 304.

use std::io::Write as _;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_core::Stream as FuturesStream;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::custom::server::Session as CustomSession;
use pingora::protocols::http::custom::CustomMessageWrite;
use pingora::protocols::http::date::get_cached_date;
use pingora::protocols::http::HttpTask;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::{Digest, GetProxyDigest, GetSocketDigest, GetTimingDigest, Ssl};
use pingora::{Error, ErrorType, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Sleep;

use super::replay::Replay;

/// The most header fields a request read here may have; a request with more is left to
/// pingora (which allows 256).
const MAX_FIELDS: usize = 64;

/// The largest request header read here; a larger one is left to pingora (which allows 1 MiB).
const MAX_HEAD: usize = 16 * 1024;

/// Room made in the buffer before each read.
const READ_ROOM: usize = 4 * 1024;

/// One client connection between requests: the stream, and what was read past the last
/// request.
pub struct Conn {
    /// The client's stream.
    pub replay: Box<Replay>,
    /// Bytes read and not yet part of a request that was taken.
    buf: BytesMut,
    /// The connection's TLS, socket and timing facts, shared by all its requests.
    digest: Digest,
    /// The response being written, serialized before it goes out.
    out: Vec<u8>,
    /// Whether the last request's exchange left the connection fit for another request.
    reusable: bool,
    /// When a read last brought bytes.
    last_read: Instant,
    /// When the first bytes of the request being read arrived.
    begun: Option<Instant>,
    /// Wakes a read that waits when the connection may have been quiet too long, or a request
    /// header may have taken too long; armed once and moved only when that moment moves, not
    /// for every read as a timeout per read would be.
    quiet: Option<Pin<Box<Sleep>>>,
}

/// What the connection sent next.
pub enum Next {
    /// A plain request ([`take_plain`]), taken off the buffer.
    Plain(Box<Plain>),
    /// Something else; [`Conn::put_back`] returns its bytes to the stream.
    Other,
    /// The client closed, went quiet or failed before a request began, or closed or failed
    /// within one.
    Closed,
    /// A request header had begun and did not come whole in time.
    Overdue,
}

/// A plain request header.
pub struct Plain {
    header: RequestHeader,
    /// The header's bytes as received.
    raw: Bytes,
    /// The client did not ask to close, and sent nothing behind the request.
    keepalive: bool,
}

/// The result of looking at the buffer.
enum Parsed {
    Plain(Box<Plain>),
    Incomplete,
    Other,
}

impl Conn {
    /// A connection on `replay`, nothing read yet.
    pub fn new(replay: Box<Replay>) -> Box<Self> {
        let digest = Digest {
            ssl_digest: replay.get_ssl_digest(),
            timing_digest: replay.get_timing_digest(),
            proxy_digest: replay.get_proxy_digest(),
            socket_digest: replay.get_socket_digest(),
        };
        Box::new(Self {
            replay,
            buf: BytesMut::new(),
            digest,
            out: Vec::new(),
            reusable: false,
            last_read: Instant::now(),
            begun: None,
            quiet: None,
        })
    }

    /// Read until the buffer holds a whole request header, or it is clear that pingora must
    /// read it. The connection may stay quiet for at most `idle`, as each read of pingora's
    /// keep-alive wait may, and a request header, once begun, must be whole within `header`
    /// of its first byte: a client that trickles it byte by byte is not kept for ever.
    /// `header` is asked for the header timeout only when a header has begun and is not yet
    /// whole, so it can follow a reload at no cost to requests that come in one read.
    pub async fn next(&mut self, idle: Duration, header: impl Fn() -> Duration) -> Next {
        loop {
            if !self.buf.is_empty() {
                match take_plain(&mut self.buf) {
                    Parsed::Plain(plain) => {
                        self.begun = None;
                        return Next::Plain(plain);
                    }
                    Parsed::Other => return Next::Other,
                    Parsed::Incomplete => {}
                }
            }
            if self.buf.capacity() - self.buf.len() < READ_ROOM / 4 {
                self.buf.reserve(READ_ROOM);
            }
            let mut deadline = self.last_read + idle;
            if let Some(begun) = self.begun.filter(|_| !self.buf.is_empty()) {
                deadline = deadline.min(begun + header());
            }
            let read = tokio::select! {
                biased;
                read = self.replay.read_buf(&mut self.buf) => read,
                () = quiet_until(&mut self.quiet, deadline) => {
                    return if self.buf.is_empty() {
                        Next::Closed
                    } else {
                        Next::Overdue
                    };
                }
            };
            match read {
                Ok(n) if n > 0 => {
                    self.last_read = Instant::now();
                    if self.buf.len() == n {
                        // The first bytes of a request.
                        self.begun = Some(self.last_read);
                    }
                }
                // Closed, failed or quiet: before a request as after part of one, pingora too
                // closes without an answer.
                _ => return Next::Closed,
            }
        }
    }

    /// When the request header being read must be whole, `header` after its first byte (from
    /// now if none has come).
    pub fn header_deadline(&self, header: Duration) -> Instant {
        self.begun.unwrap_or_else(Instant::now) + header
    }

    /// Return what was read since the last request taken to the stream, in front of what is
    /// still to come, for pingora to read.
    pub fn put_back(&mut self) {
        let rest = self.buf.split().freeze();
        self.replay.unread(rest);
    }

    /// Take bytes read past a request (by pingora's session) as the start of the next one.
    pub fn carry(&mut self, prefix: &[u8]) {
        if self.buf.is_empty() && !prefix.is_empty() {
            self.begun = Some(Instant::now());
        }
        self.buf.extend_from_slice(prefix);
    }

    /// The connection's stream, with `raw` (a request header taken from it) and everything
    /// read after it put back in front, for pingora to read from that request's first byte.
    pub fn into_replay(mut self, raw: &Bytes) -> Box<Replay> {
        self.put_back();
        self.replay.unread(raw.clone());
        self.replay
    }

    /// The stream, for pingora's own session to read from; a [`Vacant`] one stands in until
    /// it is given back (`replay` is public).
    pub fn take_replay(&mut self) -> Box<Replay> {
        std::mem::replace(&mut self.replay, Box::new(Replay::new(Box::new(Vacant))))
    }

    /// Whether the last exchange left the connection fit for another request.
    pub fn reusable(&self) -> bool {
        self.reusable
    }
}

/// Resolves at `deadline`, on `timer` (armed on first use).
async fn quiet_until(timer: &mut Option<Pin<Box<Sleep>>>, deadline: Instant) {
    let deadline = tokio::time::Instant::from_std(deadline);
    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    loop {
        if timer.deadline() != deadline {
            // Armed for an earlier quiet spell, which reads have since ended, or for a later
            // one than a request header that has begun may take.
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().await;
        if tokio::time::Instant::now() >= deadline {
            return;
        }
    }
}

fn eq(name: &[u8], lower: &str) -> bool {
    name.eq_ignore_ascii_case(lower.as_bytes())
}

/// Take a plain request header off the front of `buf`: see the module documentation for
/// which requests are plain. Anything else is [`Parsed::Other`], and `buf` is left as it was.
fn take_plain(buf: &mut BytesMut) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::Incomplete,
        // Too large, too many fields, or refused: pingora reads it, and answers as it does.
        _ => return Parsed::Other,
    };
    let method = match req.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return Parsed::Other,
    };
    let (Some(1), Some(path)) = (req.version, req.path) else {
        return Parsed::Other;
    };
    if !path.starts_with('/') {
        return Parsed::Other;
    }
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| -> Range<usize> {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let mut spans: [(usize, usize, usize, usize); MAX_FIELDS] = [(0, 0, 0, 0); MAX_FIELDS];
    let mut hosts = 0;
    let mut keepalive = true;
    for (field, span) in req.headers.iter().zip(spans.iter_mut()) {
        let name = field.name.as_bytes();
        if eq(name, "content-length")
            || eq(name, "transfer-encoding")
            || eq(name, "upgrade")
            || eq(name, "expect")
        {
            return Parsed::Other;
        }
        if eq(name, "host") {
            hosts += 1;
            // pingora refuses userinfo in Host (400); its session gives that answer.
            if field.value.contains(&b'@') {
                return Parsed::Other;
            }
        } else if eq(name, "connection")
            && field
                .value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            keepalive = false;
        }
        let (n, v) = (at(name), at(field.value));
        *span = (n.start, n.end, v.start, v.end);
    }
    if hosts != 1 {
        return Parsed::Other;
    }
    let count = req.headers.len();
    let target = at(path.as_bytes());
    let raw = buf.split_to(len).freeze();
    match build(method, &raw, target, &spans[..count]) {
        Some(header) => Parsed::Plain(Box::new(Plain {
            header,
            raw,
            // As pingora (pipelining off): bytes already sent behind a request are not read
            // as the next one; the connection closes after the answer.
            keepalive: keepalive && buf.is_empty(),
        })),
        None => {
            // Not expected after httparse's checks; the bytes go back as they were.
            let mut again = BytesMut::with_capacity(raw.len() + buf.len());
            again.extend_from_slice(&raw);
            again.extend_from_slice(buf);
            *buf = again;
            Parsed::Other
        }
    }
}

/// The request header, its values sharing `raw`'s bytes. `None` if the `http` types refuse
/// anything, or if the target would not read back exactly as received.
fn build(
    method: Method,
    raw: &Bytes,
    target: Range<usize>,
    spans: &[(usize, usize, usize, usize)],
) -> Option<RequestHeader> {
    let uri = http::Uri::from_maybe_shared(raw.slice(target.clone())).ok()?;
    if uri.path_and_query().map(|p| p.as_str().as_bytes()) != Some(&raw[target]) {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(spans.len());
    for &(ns, ne, vs, ve) in spans {
        let name = HeaderName::from_bytes(&raw[ns..ne]).ok()?;
        let value = HeaderValue::from_maybe_shared(raw.slice(vs..ve)).ok()?;
        headers.try_append(name, value).ok()?;
    }
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    Some(RequestHeader::from(parts))
}

/// Where the connection goes back when a request's [`Client`] is dropped.
pub type Home = Arc<Mutex<Option<Box<Conn>>>>;

/// Take the connection back from `home`.
pub fn take_home(home: &Home) -> Option<Box<Conn>> {
    home.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// No final response header yet.
    NotYet,
    /// Exactly this many bytes are still to come.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Ends when the connection closes.
    Close,
    /// The response is complete.
    Done,
}

/// One plain request and its response, as pingora_proxy's downstream session.
pub struct Client {
    /// Always present until dropped; then it goes [`Home`].
    conn: Option<Box<Conn>>,
    home: Home,
    plain: Box<Plain>,
    /// The connection may serve another request after this one (the client did not ask to
    /// close, the gateway is not shutting down, and no answer said otherwise).
    keepalive: bool,
    written: Option<Box<ResponseHeader>>,
    body: Body,
    sent: usize,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    drain_timeout: Option<Duration>,
}

impl Client {
    /// The session of `plain`, read from `conn`; `conn` goes back to `home` when it ends.
    /// `closing` (the gateway is shutting down) makes it the connection's last request.
    pub fn new(conn: Box<Conn>, home: Home, plain: Box<Plain>, closing: bool) -> Self {
        let keepalive = plain.keepalive && !closing;
        Self {
            conn: Some(conn),
            home,
            plain,
            keepalive,
            written: None,
            body: Body::NotYet,
            sent: 0,
            read_timeout: None,
            write_timeout: None,
            drain_timeout: None,
        }
    }

    fn conn(&mut self) -> Result<&mut Conn> {
        self.conn
            .as_deref_mut()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "client connection gone"))
    }

    async fn send(&mut self, flush: bool) -> Result<()> {
        let limit = self.write_timeout;
        let conn = self.conn()?;
        let write = async {
            conn.replay.write_all(&conn.out).await?;
            if flush {
                conn.replay.flush().await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let Some(done) = super::fast::timed_if_it_waits(limit, write).await else {
            return Err(Error::explain(ErrorType::WriteTimedout, "writing response"));
        };
        conn.out.clear();
        done.map_err(|e| Error::because(ErrorType::WriteError, "writing response", e))
    }

    /// Serialize `resp` into the connection's output: the status line, its fields but
    /// `Date` and `Connection`, then, on a final response, ours.
    fn serialize(&mut self, resp: &ResponseHeader, last: bool) -> Result<()> {
        let conn = self.conn()?;
        let out = &mut conn.out;
        out.extend_from_slice(match resp.version {
            Version::HTTP_10 => b"HTTP/1.0 ",
            _ => b"HTTP/1.1 ",
        });
        out.extend_from_slice(resp.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(resp.get_reason_phrase().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        let informational = resp.status.is_informational();
        let mut field = |name: &[u8], value: &HeaderValue| {
            if !informational && (eq(name, "date") || eq(name, "connection")) {
                return;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        };
        if resp.has_case() {
            for (name, value) in resp.case_header_iter() {
                field(name.as_slice(), value);
            }
        } else {
            for (name, value) in &resp.headers {
                field(name.as_str().as_bytes(), value);
            }
        }
        if !informational {
            out.extend_from_slice(b"date: ");
            out.extend_from_slice(get_cached_date().as_bytes());
            out.extend_from_slice(if last {
                b"\r\nconnection: close\r\n"
            } else {
                b"\r\nconnection: keep-alive\r\n"
            });
        }
        out.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// The framing of a final response, as pingora's HTTP/1 session frames it.
    fn framing(&self, resp: &ResponseHeader) -> Body {
        if self.plain.header.method == Method::HEAD
            || matches!(
                resp.status,
                StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
            )
        {
            return Body::Length(0);
        }
        if resp.status == StatusCode::SWITCHING_PROTOCOLS {
            return Body::Close;
        }
        let chunked = resp
            .headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        if chunked {
            return Body::Chunked;
        }
        let mut lengths = resp.headers.get_all(http::header::CONTENT_LENGTH).iter();
        match (lengths.next(), lengths.next()) {
            (Some(one), None) => plain_length(one.as_bytes()).map_or(Body::Close, Body::Length),
            _ => Body::Close,
        }
    }

    async fn head_out(&mut self, resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        if self.written.is_some() {
            tracing::warn!("response header already sent; not sent again");
            return Ok(());
        }
        if resp.status.is_informational() && resp.status != StatusCode::SWITCHING_PROTOCOLS {
            self.serialize(&resp, false)?;
            return self.send(true).await;
        }
        let body = self.framing(&resp);
        let says_close = resp
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .any(|v| {
                v.as_bytes()
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            });
        if says_close || body == Body::Close {
            self.keepalive = false;
        }
        self.serialize(&resp, !self.keepalive)?;
        self.body = if body == Body::Length(0) {
            Body::Done
        } else {
            body
        };
        self.written = Some(resp);
        // As pingora: a response of known length waits for its body, to leave as one write.
        let flush = end || self.body == Body::Done || !matches!(self.body, Body::Length(_));
        let sent = self.send(flush).await;
        if end && sent.is_ok() {
            return self.body_out(Bytes::new(), true).await;
        }
        sent
    }

    async fn body_out(&mut self, data: Bytes, end: bool) -> Result<()> {
        let mut flush = end;
        let conn = self.conn.as_deref_mut();
        let Some(conn) = conn else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "client connection gone",
            ));
        };
        match self.body {
            Body::NotYet => {
                return Err(Error::explain(
                    ErrorType::InternalError,
                    "response body before its header",
                ))
            }
            Body::Done => {
                if !data.is_empty() {
                    tracing::debug!("response body past its end dropped");
                }
            }
            Body::Length(left) => {
                let take = (data.len() as u64).min(left) as usize;
                if take < data.len() {
                    tracing::debug!("response body past its Content-Length dropped");
                }
                conn.out.extend_from_slice(&data[..take]);
                self.sent += take;
                let left = left - take as u64;
                self.body = if left == 0 {
                    flush = true;
                    Body::Done
                } else {
                    Body::Length(left)
                };
                if end && left > 0 {
                    // Cut short: the client must not read the next response as this one's end.
                    self.keepalive = false;
                }
            }
            Body::Chunked => {
                if !data.is_empty() {
                    // Writing into a Vec cannot fail.
                    let _ = write!(conn.out, "{:x}\r\n", data.len());
                    conn.out.extend_from_slice(&data);
                    conn.out.extend_from_slice(b"\r\n");
                    self.sent += data.len();
                }
                if end {
                    conn.out.extend_from_slice(b"0\r\n\r\n");
                    self.body = Body::Done;
                }
                // Generated as it comes: each piece goes out now.
                flush = true;
            }
            Body::Close => {
                conn.out.extend_from_slice(&data);
                self.sent += data.len();
                if end {
                    self.body = Body::Done;
                }
                flush = true;
            }
        }
        if end && self.body != Body::Done {
            self.body = Body::Done;
        }
        if conn.out.is_empty() && !flush {
            return Ok(());
        }
        self.send(flush).await
    }
}

/// A `Content-Length` of plain digits that fits in a `u64`.
fn plain_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.reusable = self.keepalive && self.body == Body::Done;
            *self.home.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn);
        }
    }
}

fn unsupported(what: &str) -> Box<Error> {
    Error::explain(
        ErrorType::InternalError,
        format!("{what}: not supported for a plain request"),
    )
}

type MessageReader = Box<dyn FuturesStream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>;

#[async_trait]
impl CustomSession for Client {
    fn req_header(&self) -> &RequestHeader {
        &self.plain.header
    }

    fn req_header_mut(&mut self) -> &mut RequestHeader {
        &mut self.plain.header
    }

    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        // A plain request has no body.
        Ok(None)
    }

    async fn drain_request_body(&mut self) -> Result<()> {
        Ok(())
    }

    async fn write_response_header(&mut self, resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        self.head_out(resp, end).await
    }

    async fn write_response_header_ref(&mut self, resp: &ResponseHeader, end: bool) -> Result<()> {
        self.head_out(Box::new(resp.clone()), end).await
    }

    async fn write_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        self.body_out(data, end).await
    }

    async fn write_trailers(&mut self, _trailers: HeaderMap) -> Result<()> {
        // As pingora's HTTP/1 session: trailers are not sent.
        Ok(())
    }

    async fn response_duplex_vec(&mut self, tasks: Vec<HttpTask>) -> Result<bool> {
        let mut ended = false;
        for task in tasks {
            ended |= task.is_end();
            match task {
                HttpTask::Header(resp, end) => self.head_out(resp, end).await?,
                HttpTask::Body(data, end) | HttpTask::UpgradedBody(data, end) => {
                    self.body_out(data.unwrap_or_default(), end).await?
                }
                HttpTask::Trailer(_) | HttpTask::Done => self.body_out(Bytes::new(), true).await?,
                HttpTask::Failed(e) => return Err(e),
            }
        }
        Ok(ended)
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        // Kept for the asking: a plain request has no body to read.
        self.read_timeout = timeout;
    }

    fn get_read_timeout(&self) -> Option<Duration> {
        self.read_timeout
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout;
    }

    fn get_write_timeout(&self) -> Option<Duration> {
        self.write_timeout
    }

    fn set_total_drain_timeout(&mut self, timeout: Option<Duration>) {
        self.drain_timeout = timeout;
    }

    fn get_total_drain_timeout(&self) -> Option<Duration> {
        self.drain_timeout
    }

    fn request_summary(&self) -> String {
        // Never the query string: it may carry tokens.
        let req = &self.plain.header;
        format!("{} {}", req.method, req.uri.path())
    }

    fn response_written(&self) -> Option<&ResponseHeader> {
        self.written.as_deref()
    }

    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        self.keepalive = false;
        if let Some(conn) = self.conn.as_deref_mut() {
            pingora::protocols::Shutdown::shutdown(&mut *conn.replay).await;
        }
    }

    fn is_body_done(&mut self) -> bool {
        true
    }

    async fn finish(&mut self) -> Result<()> {
        if self.body != Body::Done && self.body != Body::NotYet {
            self.body_out(Bytes::new(), true).await?;
        }
        Ok(())
    }

    fn is_body_empty(&mut self) -> bool {
        true
    }

    async fn read_body_or_idle(&mut self, _no_body_expected: bool) -> Result<Option<Bytes>> {
        Ok(None)
    }

    fn body_bytes_sent(&self) -> usize {
        self.sent
    }

    fn body_bytes_read(&self) -> usize {
        0
    }

    fn digest(&self) -> Option<&Digest> {
        self.conn.as_deref().map(|c| &c.digest)
    }

    fn digest_mut(&mut self) -> Option<&mut Digest> {
        self.conn.as_deref_mut().map(|c| &mut c.digest)
    }

    fn client_addr(&self) -> Option<&SocketAddr> {
        self.digest()?.socket_digest.as_ref()?.peer_addr()
    }

    fn server_addr(&self) -> Option<&SocketAddr> {
        self.digest()?.socket_digest.as_ref()?.local_addr()
    }

    fn pseudo_raw_h1_request_header(&self) -> Bytes {
        self.plain.raw.clone()
    }

    fn enable_retry_buffering(&mut self) {}

    fn retry_buffer_truncated(&self) -> bool {
        false
    }

    fn get_retry_buffer(&self) -> Option<Bytes> {
        // No body, so the whole (empty) body is buffered.
        Some(Bytes::new())
    }

    async fn finish_custom(&mut self) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_reader(&mut self) -> Option<MessageReader> {
        None
    }

    fn restore_custom_message_reader(&mut self, _reader: MessageReader) -> Result<()> {
        Err(unsupported("custom messages"))
    }

    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        None
    }

    fn restore_custom_message_writer(
        &mut self,
        _writer: Box<dyn CustomMessageWrite>,
    ) -> Result<()> {
        Err(unsupported("custom messages"))
    }
}

/// A stream with nothing behind it: what pingora_proxy's `Session` is first made with before
/// its downstream becomes a [`Client`], and what stands in a [`Conn`] while pingora's own
/// session has the real one. Reads see the end; writes fail.
#[derive(Debug)]
pub struct Vacant;

impl tokio::io::AsyncRead for Vacant {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        _buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Vacant {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        _buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl pingora::protocols::Shutdown for Vacant {
    async fn shutdown(&mut self) {}
}

impl pingora::protocols::UniqueID for Vacant {
    fn id(&self) -> pingora::protocols::UniqueIDType {
        -1
    }
}

impl Ssl for Vacant {}
impl GetTimingDigest for Vacant {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        Vec::new()
    }
}
impl GetProxyDigest for Vacant {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        None
    }
}
impl GetSocketDigest for Vacant {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        None
    }
}
#[async_trait]
impl pingora::protocols::Peek for Vacant {}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::protocols::http::v1::server::HttpSession as PingoraSession;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const NEXT: &[u8] = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n";

    fn take(bytes: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let parsed = take_plain(&mut buf);
        (parsed, buf)
    }

    fn plain(bytes: &[u8]) -> (Box<Plain>, BytesMut) {
        match take(bytes) {
            (Parsed::Plain(p), rest) => (p, rest),
            (Parsed::Other, _) => panic!("not plain: {}", bytes.escape_ascii()),
            (Parsed::Incomplete, _) => panic!("incomplete: {}", bytes.escape_ascii()),
        }
    }

    #[test]
    fn a_plain_get_is_taken_with_its_fields_and_the_next_request_stays() {
        let head = b"GET /app/x?y=1 HTTP/1.1\r\nHost: acme.localhost\r\nCookie: a=1\r\nX-Two: 1\r\nx-two: 2\r\n\r\n";
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(NEXT);
        let (p, rest) = plain(&bytes);
        assert_eq!(p.header.method, Method::GET);
        assert_eq!(p.header.version, Version::HTTP_11);
        assert_eq!(p.header.uri.path(), "/app/x");
        assert_eq!(p.header.raw_path(), b"/app/x?y=1");
        assert_eq!(p.header.headers["host"], "acme.localhost");
        assert_eq!(p.header.headers["cookie"], "a=1");
        let two: Vec<_> = p.header.headers.get_all("x-two").iter().collect();
        assert_eq!(two, ["1", "2"]);
        assert!(
            !p.keepalive,
            "bytes sent behind a request end the connection after it"
        );
        assert_eq!(&p.raw[..], &head[..]);
        assert_eq!(&rest[..], NEXT);
        let (p, rest) = plain(head);
        assert!(p.keepalive);
        assert!(rest.is_empty());

        let (p, rest) =
            plain(b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n");
        assert_eq!(p.header.method, Method::HEAD);
        assert!(!p.keepalive, "Connection: close is heard");
        assert!(rest.is_empty());
    }

    #[test]
    fn what_is_not_plain_is_left_whole() {
        let cases: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: evil@a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX\0: b\r\n\r\n",
            b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"garbage\r\n\r\n",
        ];
        for case in cases {
            match take(case) {
                (Parsed::Other, rest) => assert_eq!(&rest[..], *case, "left whole"),
                _ => panic!("taken as plain or incomplete: {}", case.escape_ascii()),
            }
        }
        // More fields than are read here.
        let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..MAX_FIELDS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(take(&many).0, Parsed::Other));
    }

    #[test]
    fn an_incomplete_header_waits_until_it_is_too_large_to_read_here() {
        for cut in [1, 4, 15, 26] {
            let full = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
            assert!(matches!(take(&full[..cut]).0, Parsed::Incomplete), "{cut}");
        }
        let mut long = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        long.resize(MAX_HEAD, b'v');
        assert!(matches!(take(&long).0, Parsed::Other));
    }

    /// pingora's HTTP/1 server session reading `bytes` (and then the end of the stream).
    async fn pingora_reads(bytes: &[u8]) -> (Result<Option<usize>>, PingoraSession) {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        theirs.write_all(bytes).await.unwrap();
        drop(theirs);
        let mut session = PingoraSession::new(Box::new(ours));
        let read = session.read_request().await;
        (read, session)
    }

    /// Whether `bytes` (a request header followed by `after`) is read here as plain; if so,
    /// pingora's session must read it as the same request (see below), and if it is
    /// incomplete here, pingora must not find a request in it either.
    async fn agree(bytes: &[u8], after: &[u8]) -> bool {
        let what = bytes.escape_ascii().to_string();
        let (ours, rest) = take(bytes);
        let (theirs, mut session) = pingora_reads(bytes).await;
        match ours {
            Parsed::Plain(p) => {
                assert!(matches!(theirs, Ok(Some(_))), "pingora refused {what}");
                let req = session.req_header();
                assert_eq!(req.method, p.header.method, "{what}");
                assert_eq!(req.uri, p.header.uri, "{what}");
                assert_eq!(req.raw_path(), p.header.raw_path(), "{what}");
                assert_eq!(req.version, p.header.version, "{what}");
                let a: Vec<_> = req.headers.iter().collect();
                let b: Vec<_> = p.header.headers.iter().collect();
                assert_eq!(a, b, "{what}");
                assert!(session.is_body_empty(), "{what}");
                assert!(!session.is_upgrade_req(), "{what}");
                assert_eq!(session.get_headers_raw_bytes(), p.raw, "{what}");
                assert_eq!(&rest[..], &bytes[p.raw.len()..], "{what}");
                assert!(after.is_empty() || rest.ends_with(after), "{what}");
                assert!(!p.keepalive || session.will_keepalive(), "{what}");
                true
            }
            Parsed::Incomplete => {
                assert!(!matches!(theirs, Ok(Some(_))), "{what}");
                false
            }
            Parsed::Other => {
                assert_eq!(&rest[..], bytes, "{what}");
                false
            }
        }
    }

    /// Every framing read here as plain must be read by pingora's session as the same request:
    /// the same method, target, version and fields in the same order, no body, the same
    /// header bytes (so the same bytes left for the next request), and no keep-alive where
    /// pingora would close. What is incomplete here must not be a request to pingora either.
    #[tokio::test]
    async fn what_is_taken_here_pingora_reads_the_same_way() {
        let lines: &[&[u8]] = &[
            b"GET / HTTP/1.1",
            b"HEAD /x?y=%20 HTTP/1.1",
            b"GET /a/../b;c?d HTTP/1.1",
            b"GET  / HTTP/1.1",
            b"GET / HTTP/1.1 ",
            b"GET / HTTP/1.0",
            b"GET /\xc3\xa4 HTTP/1.1",
            b"GET /a%zz\"<> HTTP/1.1",
            b"POST / HTTP/1.1",
            b"GET http://a/b HTTP/1.1",
            // RFC 9112 §2.2: an empty line before the request line may be ignored.
            b"\r\nGET / HTTP/1.1",
        ];
        let fields: &[&[&[u8]]] = &[
            &[b"Host: a"],
            &[b"host: a", b"Cookie: x=1; __Host-portcullis=t", b"X-Empty:"],
            &[b"Host: a", b"Connection: close"],
            &[b"Host: a", b"Connection: keep-alive, close"],
            &[b"Host: a", b"Connection: foo"],
            &[b"Host: a", b"Content-Length: 0"],
            &[b"Host: a", b"Transfer-Encoding: chunked"],
            &[b"Host: a", b"Host: a"],
            &[],
            &[b"Host: a", b"X: \xff\x80 obs-text"],
            &[b"Host: a", b"X:\tt\tab\t"],
            &[b"Host: a", b"X : b"],
            &[b"Host: a", b"X: b", b" folded"],
            &[b"Host: a", b"Upgrade: h2c"],
            &[b"Host: user@a"],
            &[b"Host: a:443", b"X-Forwarded-Host: b@c"],
        ];
        let mut checked = 0;
        for line in lines {
            for set in fields {
                for eol in [&b"\r\n"[..], b"\n"] {
                    for after in [&b""[..], NEXT] {
                        let mut bytes = line.to_vec();
                        bytes.extend_from_slice(eol);
                        for f in *set {
                            bytes.extend_from_slice(f);
                            bytes.extend_from_slice(eol);
                        }
                        bytes.extend_from_slice(eol);
                        bytes.extend_from_slice(after);
                        if agree(&bytes, after).await {
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked >= 40, "too few plain framings compared: {checked}");
    }

    /// The same agreement over thousands of random corruptions of plain requests: a byte
    /// changed, inserted or removed, among the bytes framing hinges on. Nothing panics, and
    /// whatever is still read here as plain, pingora reads the same way.
    #[tokio::test]
    async fn corrupted_requests_are_read_as_pingora_reads_them_or_left_to_it() {
        use rand::{Rng, SeedableRng};
        let seeds: &[&[u8]] = &[
            b"GET /app/x?y=1 HTTP/1.1\r\nHost: acme.localhost\r\nCookie: a=1\r\n\r\n",
            b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nX-A: b\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\nAccept: */*\n\n",
        ];
        let alphabet: &[u8] = b"\r\n \t:,;@0123456789GETHOSPLCNx/?#%\x00\x7f\x80\xff";
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_f00d);
        let (mut plain, mut tried) = (0, 0);
        for _ in 0..3000 {
            let mut bytes = seeds[rng.gen_range(0..seeds.len())].to_vec();
            for _ in 0..rng.gen_range(1..=3) {
                let at = rng.gen_range(0..bytes.len());
                let byte = alphabet[rng.gen_range(0..alphabet.len())];
                match rng.gen_range(0..3) {
                    0 => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
            tried += 1;
            if agree(&bytes, b"").await {
                plain += 1;
            }
        }
        // Both kinds were seen: the corruptions are neither all harmless nor all fatal.
        assert!(
            plain > 100 && plain < tried - 100,
            "{plain} of {tried} read as plain"
        );
    }

    /// A client session over one end of a pipe, for `request`; the other end is returned.
    fn client(request: &[u8], closing: bool) -> (Client, Home, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let conn = Conn::new(Box::new(Replay::new(Box::new(ours))));
        let (p, _) = plain(request);
        let home: Home = Arc::new(Mutex::new(None));
        (
            Client::new(conn, Arc::clone(&home), p, closing),
            home,
            theirs,
        )
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    fn response(status: u16, fields: &[(&str, &str)]) -> Box<ResponseHeader> {
        let mut resp = ResponseHeader::build(status, None).unwrap();
        for (name, value) in fields {
            resp.append_header(name.to_string(), *value).unwrap();
        }
        Box::new(resp)
    }

    async fn written(client: Client, home: &Home, mut peer: DuplexStream) -> (String, bool) {
        drop(client);
        let conn = take_home(home).expect("the connection came home");
        let reusable = conn.reusable();
        drop(conn);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        (String::from_utf8_lossy(&got).into_owned(), reusable)
    }

    #[tokio::test]
    async fn a_response_of_known_length_goes_out_whole_and_keeps_the_connection() {
        let (mut c, home, peer) = client(GET, false);
        let resp = response(
            200,
            &[
                ("Content-Type", "text/plain"),
                ("Content-Length", "5"),
                ("Date", "old"),
                ("Connection", "x"),
            ],
        );
        c.write_response_header(resp, false).await.unwrap();
        c.write_body(Bytes::from_static(b"hel"), false)
            .await
            .unwrap();
        c.write_body(Bytes::from_static(b"lo, and more"), false)
            .await
            .unwrap();
        c.write_body(Bytes::new(), true).await.unwrap();
        assert_eq!(c.body_bytes_sent(), 5);
        assert_eq!(c.response_written().map(|r| r.status.as_u16()), Some(200));
        let (out, reusable) = written(c, &home, peer).await;
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, "hello", "nothing past Content-Length");
        let mut lines = head.lines();
        assert_eq!(lines.next(), Some("HTTP/1.1 200 OK"));
        let fields: Vec<&str> = lines.collect();
        assert!(fields.contains(&"Content-Type: text/plain"), "{head}");
        assert!(fields.contains(&"Content-Length: 5"), "{head}");
        assert!(fields.contains(&"connection: keep-alive"), "{head}");
        assert!(
            !head.contains("old") && !head.contains(": x"),
            "ours replace theirs: {head}"
        );
        assert_eq!(
            fields.iter().filter(|f| f.starts_with("date: ")).count(),
            1,
            "{head}"
        );
        assert!(reusable);
    }

    #[tokio::test]
    async fn head_204_and_304_have_no_body() {
        let head = b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n";
        for (req, status) in [(&head[..], 200), (GET, 204), (GET, 304)] {
            let (mut c, home, peer) = client(req, false);
            c.write_response_header(response(status, &[("Content-Length", "9")]), false)
                .await
                .unwrap();
            c.write_body(Bytes::from_static(b"not sent!"), true)
                .await
                .unwrap();
            let (out, reusable) = written(c, &home, peer).await;
            assert!(out.ends_with("\r\n\r\n"), "{status}: {out}");
            assert!(!out.contains("not sent"), "{status}: {out}");
            assert!(reusable, "{status}");
        }
    }

    #[tokio::test]
    async fn a_response_without_length_is_chunked_or_closes() {
        let (mut c, home, peer) = client(GET, false);
        c.write_response_header(response(200, &[("Transfer-Encoding", "chunked")]), false)
            .await
            .unwrap();
        c.write_body(Bytes::from_static(b"0123456789abcdefg"), false)
            .await
            .unwrap();
        c.write_body(Bytes::new(), true).await.unwrap();
        let (out, reusable) = written(c, &home, peer).await;
        assert!(
            out.ends_with("\r\n\r\n11\r\n0123456789abcdefg\r\n0\r\n\r\n"),
            "{out}"
        );
        assert!(reusable);

        let (mut c, home, peer) = client(GET, false);
        c.write_response_header(response(200, &[]), false)
            .await
            .unwrap();
        c.write_body(Bytes::from_static(b"until close"), true)
            .await
            .unwrap();
        let (out, reusable) = written(c, &home, peer).await;
        assert!(out.contains("connection: close\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nuntil close"), "{out}");
        assert!(!reusable, "a close-delimited body ends the connection");
    }

    #[tokio::test]
    async fn close_when_the_client_the_answer_or_the_gateway_says_so() {
        let asks = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        for (req, fields, closing) in [
            (&asks[..], &[("Content-Length", "0")][..], false),
            (
                GET,
                &[("Content-Length", "0"), ("Connection", "close")][..],
                false,
            ),
            (GET, &[("Content-Length", "0")][..], true),
        ] {
            let (mut c, home, peer) = client(req, closing);
            c.write_response_header(response(403, fields), true)
                .await
                .unwrap();
            let (out, reusable) = written(c, &home, peer).await;
            assert!(out.contains("connection: close\r\n"), "{out}");
            assert!(!out.contains("keep-alive"), "{out}");
            assert!(!reusable);
        }
    }

    #[tokio::test]
    async fn a_body_cut_short_or_never_started_ends_the_connection() {
        let (mut c, home, peer) = client(GET, false);
        c.write_response_header(response(200, &[("Content-Length", "10")]), false)
            .await
            .unwrap();
        c.write_body(Bytes::from_static(b"short"), true)
            .await
            .unwrap();
        let (_, reusable) = written(c, &home, peer).await;
        assert!(!reusable, "the client still waits for 5 bytes");

        let (mut c, home, peer) = client(GET, false);
        assert!(c.write_body(Bytes::from_static(b"x"), true).await.is_err());
        let (out, reusable) = written(c, &home, peer).await;
        assert!(out.is_empty());
        assert!(!reusable, "no response was written");
    }

    #[tokio::test]
    async fn interim_responses_go_first_and_only_one_final_one() {
        let (mut c, home, peer) = client(GET, false);
        c.write_response_header(response(103, &[("Link", "</a.css>; rel=preload")]), false)
            .await
            .unwrap();
        assert!(c.response_written().is_none());
        c.write_response_header(response(200, &[("Content-Length", "2")]), false)
            .await
            .unwrap();
        c.write_response_header(response(500, &[("Content-Length", "0")]), true)
            .await
            .unwrap();
        c.write_body(Bytes::from_static(b"ok"), true).await.unwrap();
        let (out, reusable) = written(c, &home, peer).await;
        assert!(
            out.starts_with("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"),
            "{out}"
        );
        assert!(!out.contains("500"), "{out}");
        assert!(out.ends_with("\r\n\r\nok"), "{out}");
        assert!(reusable);
    }

    #[tokio::test]
    async fn a_connection_reads_plain_requests_and_puts_the_rest_back() {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let mut conn = Conn::new(Box::new(Replay::new(Box::new(ours))));
        let post = b"POST /login HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
        let mut sent = GET.to_vec();
        sent.extend_from_slice(post);
        // Split mid-header: the reader waits for the rest.
        theirs.write_all(&sent[..10]).await.unwrap();
        let reader = tokio::spawn(async move {
            let first = conn
                .next(Duration::from_secs(5), || Duration::from_secs(5))
                .await;
            let second = conn
                .next(Duration::from_secs(5), || Duration::from_secs(5))
                .await;
            (conn, first, second)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        theirs.write_all(&sent[10..]).await.unwrap();
        let (mut conn, first, second) = reader.await.unwrap();
        assert!(matches!(first, Next::Plain(_)));
        assert!(matches!(second, Next::Other));
        conn.put_back();
        let mut again = vec![0u8; post.len()];
        conn.replay.read_exact(&mut again).await.unwrap();
        assert_eq!(again, post, "pingora reads the request from its first byte");

        drop(theirs);
        assert!(matches!(
            conn.next(Duration::from_secs(5), || Duration::from_secs(5))
                .await,
            Next::Closed
        ));
    }

    /// A header that trickles in, each piece within `idle`, ends the connection once it has
    /// taken `header` from its first byte; the wait before that byte does not count.
    #[tokio::test]
    async fn a_header_trickled_past_its_limit_closes_the_connection() {
        let (idle, header) = (Duration::from_millis(300), Duration::from_millis(200));
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut conn = Conn::new(Box::new(Replay::new(Box::new(ours))));
        let writer = tokio::spawn(async move {
            // Quiet for longer than `header` (but within `idle`) before the first byte.
            tokio::time::sleep(Duration::from_millis(250)).await;
            for piece in GET.chunks(2) {
                if theirs.write_all(piece).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            theirs
        });
        let started = Instant::now();
        assert!(matches!(conn.next(idle, || header).await, Next::Overdue));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(430) && took < Duration::from_millis(1000),
            "closed after {took:?}: not the header limit after the first byte"
        );
        drop(conn);
        let _ = writer.await;
    }

    /// The quiet timer is armed once and moved on by reads: a header that trickles in over
    /// longer than `idle`, each piece within it, is read; then `idle` of quiet closes.
    #[tokio::test]
    async fn reads_keep_a_connection_from_being_quiet() {
        let idle = Duration::from_millis(300);
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut conn = Conn::new(Box::new(Replay::new(Box::new(ours))));
        let writer = tokio::spawn(async move {
            for piece in GET.chunks(4) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                theirs.write_all(piece).await.unwrap();
            }
            theirs
        });
        let started = Instant::now();
        assert!(matches!(
            conn.next(idle, || Duration::from_secs(5)).await,
            Next::Plain(_)
        ));
        assert!(
            started.elapsed() > idle,
            "the header took longer than idle to arrive"
        );
        let _theirs = writer.await.unwrap();
        let quiet = Instant::now();
        assert!(matches!(conn.next(idle, || idle).await, Next::Closed));
        assert!(quiet.elapsed() >= idle - Duration::from_millis(20));
    }

    #[tokio::test]
    async fn a_quiet_or_half_sent_connection_is_closed() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut conn = Conn::new(Box::new(Replay::new(Box::new(ours))));
        assert!(matches!(
            conn.next(Duration::from_millis(30), || Duration::from_millis(30))
                .await,
            Next::Closed
        ));
        theirs.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        // Half a header, then quiet: overdue, not merely closed.
        assert!(matches!(
            conn.next(Duration::from_millis(30), || Duration::from_secs(5))
                .await,
            Next::Overdue
        ));
        drop(theirs);
        assert!(matches!(
            conn.next(Duration::from_secs(5), || Duration::from_secs(5))
                .await,
            Next::Closed
        ));
    }
}
