//! The direct path's upstream exchange for the common response, without pingora's client
//! session.
//!
//! pingora's client session serializes the request through its own header type, arms a timer
//! for every read, copies each response field into a case-preserving map beside the header
//! map and sets up a general body reader; the client's header is then built once more from
//! what it parsed. Measured with callgrind, that was about 12,000 of the 66,000 instructions
//! of a signed-in request. Here the request goes out as one buffer, and the common response is
//! parsed once, straight into the header the client gets, each value a slice of the bytes read
//! (no copy).
//!
//! Only the common response is read here: HTTP/1.1, a final status (200–599), a header that
//! httparse's strict defaults accept within [`MAX_HEAD`] bytes and [`MAX_FIELDS`] fields, no
//! `Transfer-Encoding`, and a body framed by exactly one `Content-Length` of plain digits, or
//! no body by definition (the answer to HEAD, 204, 304). Everything else (interim responses,
//! chunked or close-delimited bodies, HTTP/1.0, a repeated or unusual `Content-Length`,
//! whatever httparse's defaults refuse) is [`Head::Other`]: pingora's client session reads it
//! from its first byte and frames or refuses it exactly as before. So the only framing this
//! module decides is where RFC 9112 §6.3 leaves no choice.

use std::future::Future;
use std::mem::MaybeUninit;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use pingora::protocols::Stream;
use pingora::{Error, ErrorType};
use pingora_timeout::fast_timeout::fast_timeout;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::upstream::headers::{self, ResponseParts};

/// The largest response header read here; a larger one goes to pingora's client session,
/// which has its own limit.
pub const MAX_HEAD: usize = 16 * 1024;

/// The most response fields read here (as [`MAX_HEAD`]).
pub const MAX_FIELDS: usize = 64;

/// The most body bytes read from the upstream at once.
const BODY_CHUNK: usize = 64 * 1024;

/// How the upstream's response header was read.
pub enum Head {
    /// The common response, read here.
    Simple(Simple),
    /// Any other: every byte read so far, for pingora's client session to read again.
    Other(Bytes),
}

/// A common response (see the module documentation).
pub struct Simple {
    /// The header as the client gets it, without hop-by-hop fields.
    pub parts: ResponseParts,
    /// The body's length: its `Content-Length`, or 0 when there is none by definition.
    pub body_len: u64,
    /// Body bytes that came with the header (no more than `body_len`).
    pub preread: Bytes,
    /// Whether the connection may carry another request once the body is read.
    pub keepalive: bool,
}

/// A request header as it goes on the wire: the request line, then each field.
pub struct Wire(Vec<u8>);

impl Wire {
    /// The request line, HTTP/1.1. A target holding a byte that would split the request line
    /// is refused (http's own types cannot hold one, but the line must never be split).
    pub fn start(method: &Method, target: &[u8]) -> pingora::Result<Self> {
        if target.is_empty() || target.iter().any(|b| matches!(b, b' ' | b'\r' | b'\n')) {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "request target not sendable");
        }
        // Room for a signed-in request (its JWT is most of it) without growing.
        let mut wire = Vec::with_capacity(1536 + target.len());
        wire.extend_from_slice(method.as_str().as_bytes());
        wire.push(b' ');
        wire.extend_from_slice(target);
        wire.extend_from_slice(b" HTTP/1.1\r\n");
        Ok(Self(wire))
    }

    /// One field (http's types hold no CR or LF).
    pub fn field(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.0.extend_from_slice(name.as_str().as_bytes());
        self.0.extend_from_slice(b": ");
        self.0.extend_from_slice(value.as_bytes());
        self.0.extend_from_slice(b"\r\n");
    }

    /// The header, ended.
    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(b"\r\n");
        self.0
    }
}

/// Send a request header (the request has no body) as one write.
pub async fn send(stream: &mut Stream, wire: &[u8], limit: Duration) -> pingora::Result<()> {
    let write = async {
        stream.write_all(wire).await?;
        stream.flush().await
    };
    match timed_if_it_waits(Some(limit), write).await {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Error::e_because(ErrorType::WriteError, "writing request header", e),
        None => Error::e_explain(ErrorType::WriteTimedout, "writing request header"),
    }
}

/// `work`'s output, or `None` if it did not finish within `limit` (`None`: no limit). A write
/// into a socket's send buffer with room, which is nearly every write, finishes when first
/// polled: only work that has to wait gets the timer (and the clock reading that arms it),
/// kept on the heap so that the futures of every write stay as small as without it.
pub async fn timed_if_it_waits<F: Future>(limit: Option<Duration>, work: F) -> Option<F::Output> {
    let mut work = std::pin::pin!(work);
    if let Poll::Ready(done) = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await
    {
        return Some(done);
    }
    match limit {
        Some(limit) => Box::pin(fast_timeout(limit, work)).await.ok(),
        None => Some(work.await),
    }
}

/// Read the response header. `head_request`: the request was HEAD, so the response has no
/// body whatever it says. `heard` turns true once the upstream has sent anything.
pub async fn read_head(
    stream: &mut Stream,
    limit: Duration,
    head_request: bool,
    heard: &mut bool,
) -> pingora::Result<Head> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if buf.len() >= MAX_HEAD {
            return Ok(Head::Other(buf.freeze()));
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let n = read_into(stream, &mut buf, limit, "reading response header").await?;
        if n == 0 {
            return Error::e_explain(
                ErrorType::ConnectionClosed,
                "upstream closed before its response header ended",
            );
        }
        *heard = true;
        match parse(&buf, head_request) {
            Parse::Partial => continue,
            Parse::Other => return Ok(Head::Other(buf.freeze())),
            Parse::Simple(parsed) => return Ok(parsed.finish(buf.freeze())),
        }
    }
}

/// Read the rest of a body of `remaining` bytes, at most [`BODY_CHUNK`] at a time; `None` once
/// it is all read. An early end is the upstream's error.
pub async fn read_body(
    stream: &mut Stream,
    remaining: &mut u64,
    limit: Duration,
) -> pingora::Result<Option<Bytes>> {
    if *remaining == 0 {
        return Ok(None);
    }
    let want = usize::try_from(*remaining).map_or(BODY_CHUNK, |r| r.min(BODY_CHUNK));
    let mut chunk = BytesMut::with_capacity(want);
    // `take`: never a byte past the body, which would belong to no request.
    let mut body = (&mut *stream).take(want as u64);
    let n = match fast_timeout(limit, body.read_buf(&mut chunk)).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Error::e_because(ErrorType::ReadError, "reading response body", e),
        Err(_) => return Error::e_explain(ErrorType::ReadTimedout, "reading response body"),
    };
    if n == 0 {
        return Error::e_explain(
            ErrorType::ConnectionClosed,
            "upstream closed before its response body ended",
        );
    }
    *remaining -= n as u64;
    Ok(Some(chunk.freeze()))
}

async fn read_into(
    stream: &mut Stream,
    buf: &mut BytesMut,
    limit: Duration,
    what: &'static str,
) -> pingora::Result<usize> {
    match fast_timeout(limit, stream.read_buf(buf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Error::e_because(ErrorType::ReadError, what, e),
        Err(_) => Error::e_explain(ErrorType::ReadTimedout, what),
    }
}

enum Parse {
    Partial,
    Other,
    Simple(Parsed),
}

/// A common response header, parsed: each field's name and where its value lies in the
/// bytes read.
struct Parsed {
    status: StatusCode,
    fields: Vec<(HeaderName, usize, usize)>,
    /// Connection options (lowercased), whose fields do not reach the client.
    named: Vec<String>,
    head_len: usize,
    body_len: u64,
    keepalive: bool,
}

/// Parse what was read so far (see the module documentation for what is common).
fn parse(buf: &[u8], head_request: bool) -> Parse {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        // pingora's client session decides: it refuses, or accepts what its more lenient
        // settings allow.
        Err(_) => return Parse::Other,
    };
    if resp.version != Some(1) {
        return Parse::Other;
    }
    let Some(status) = resp
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .filter(|s| (200..=599).contains(&s.as_u16()))
    else {
        return Parse::Other;
    };
    let base = buf.as_ptr() as usize;
    let mut fields = Vec::with_capacity(resp.headers.len());
    let mut content_length = None;
    let mut keepalive = true;
    let mut connection: Vec<&[u8]> = Vec::new();
    for field in resp.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else {
            return Parse::Other;
        };
        if name == http::header::TRANSFER_ENCODING {
            return Parse::Other;
        }
        if name == http::header::CONTENT_LENGTH {
            if content_length.is_some() {
                return Parse::Other;
            }
            let Some(n) = digits(field.value) else {
                return Parse::Other;
            };
            content_length = Some(n);
        }
        if name == http::header::CONNECTION {
            connection.push(field.value);
        }
        let start = field.value.as_ptr() as usize - base;
        fields.push((name, start, start + field.value.len()));
    }
    let named = headers::connection_options_in(connection.into_iter());
    if named.iter().any(|option| option == "close") {
        keepalive = false;
    }
    // RFC 9112 §6.3: no body after HEAD, 204 or 304, whatever the header says.
    let no_body = head_request || matches!(status.as_u16(), 204 | 304);
    let body_len = match (no_body, content_length) {
        (true, _) => 0,
        (false, Some(n)) => n,
        // Close-delimited: pingora's client session reads it.
        (false, None) => return Parse::Other,
    };
    Parse::Simple(Parsed {
        status,
        fields,
        named,
        head_len,
        body_len,
        keepalive,
    })
}

/// A Content-Length value of plain digits (at most 18, so it fits); anything else (a list,
/// a sign, spaces) is left to pingora's client session.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

impl Parsed {
    /// The client's header, with each value a slice of `read`, and the body bytes read with it.
    fn finish(self, read: Bytes) -> Head {
        let mut map = HeaderMap::with_capacity(self.fields.len() + 2);
        for (name, start, end) in self.fields {
            if !headers::reaches_client(name.as_str(), &self.named) {
                continue;
            }
            // httparse accepts bytes (obs-text) a header value may not hold.
            let Ok(value) = HeaderValue::from_maybe_shared(read.slice(start..end)) else {
                return Head::Other(read);
            };
            map.append(name, value);
        }
        let rest = read.slice(self.head_len..);
        let body_len = self.body_len;
        // More than the body: the upstream is out of step with us; what it sent past the body
        // belongs to no request, so the connection is not used again.
        let overread = rest.len() as u64 > body_len;
        let preread = if overread {
            rest.slice(..body_len as usize)
        } else {
            rest
        };
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = self.status;
        parts.version = Version::HTTP_11;
        parts.headers = map;
        Head::Simple(Simple {
            parts,
            body_len,
            preread,
            keepalive: self.keepalive && !overread,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simple(bytes: &[u8], head_request: bool) -> Simple {
        let Parse::Simple(parsed) = parse(bytes, head_request) else {
            panic!("not read here: {}", String::from_utf8_lossy(bytes));
        };
        match parsed.finish(Bytes::copy_from_slice(bytes)) {
            Head::Simple(s) => s,
            Head::Other(_) => panic!("not read here"),
        }
    }

    fn is_other(bytes: &[u8]) -> bool {
        matches!(parse(bytes, false), Parse::Other)
    }

    #[test]
    fn the_common_response_is_read_here_without_its_hop_by_hop_fields() {
        let s = simple(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\
              Connection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nX-Secret: 1\r\n\
              X-App: a\r\nX-App: b\r\n\r\nhello",
            false,
        );
        assert_eq!(s.parts.status, StatusCode::OK);
        assert_eq!(s.body_len, 5);
        assert_eq!(&s.preread[..], b"hello");
        assert!(s.keepalive);
        let h = &s.parts.headers;
        assert_eq!(h["content-type"], "text/plain");
        assert_eq!(h["content-length"], "5");
        let apps: Vec<_> = h.get_all("x-app").iter().collect();
        assert_eq!(apps, ["a", "b"]);
        for gone in ["connection", "keep-alive", "x-secret"] {
            assert!(!h.contains_key(gone), "{gone} reached the client");
        }
    }

    #[test]
    fn connection_close_ends_reuse() {
        let s = simple(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: Close\r\n\r\n",
            false,
        );
        assert!(!s.keepalive);
    }

    #[test]
    fn bytes_past_the_body_are_not_relayed_and_end_reuse() {
        let s = simple(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
            false,
        );
        assert_eq!(&s.preread[..], b"ok");
        assert!(!s.keepalive);
    }

    #[test]
    fn no_body_after_head_204_and_304_whatever_the_length_says() {
        let s = simple(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", true);
        assert_eq!(s.body_len, 0);
        assert_eq!(s.parts.headers["content-length"], "50");
        let s = simple(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", false);
        assert_eq!(s.body_len, 0);
        // A body sent anyway is out of step.
        let s = simple(b"HTTP/1.1 204 No Content\r\n\r\nbody", false);
        assert!(s.preread.is_empty());
        assert!(!s.keepalive);
    }

    #[test]
    fn every_other_framing_is_left_to_pingora() {
        for other in [
            // Chunked, with or without a length beside it (a smuggling classic).
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            // Close-delimited.
            b"HTTP/1.1 200 OK\r\n\r\n",
            // Repeated, listed, signed, spaced or huge lengths.
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            // Interim and switching responses, HTTP/1.0, odd status codes.
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n",
            // What httparse's defaults refuse: a space before the colon, obs-fold, junk.
            b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX\x01A: 1\r\nContent-Length: 0\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(
                is_other(other),
                "read here: {}",
                String::from_utf8_lossy(other)
            );
        }
        // Too many fields for here.
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_FIELDS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        assert!(is_other(&many));
    }

    #[test]
    fn a_header_not_yet_complete_waits_for_more() {
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Len", false),
            Parse::Partial
        ));
    }

    #[test]
    fn a_value_http_cannot_hold_goes_to_pingora() {
        let bytes = b"HTTP/1.1 200 OK\r\nX-A: caf\xc3\xa9\x7f\r\nContent-Length: 0\r\n\r\n";
        match parse(bytes, false) {
            Parse::Simple(p) => assert!(matches!(
                p.finish(Bytes::copy_from_slice(bytes)),
                Head::Other(_)
            )),
            Parse::Other => {}
            Parse::Partial => panic!("complete header read as partial"),
        }
    }

    /// What pingora's client session makes of `bytes` (sent, then the connection closed) as
    /// the answer to GET or HEAD: the status, the client's header, the body and whether the
    /// connection may be reused, or `None` if it refuses the response or finds its body cut
    /// short.
    async fn pingora_reads(
        bytes: &[u8],
        head_request: bool,
    ) -> Option<(StatusCode, HeaderMap, Vec<u8>, bool)> {
        use tokio::io::AsyncWriteExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
        let addr = listener.local_addr().ok()?;
        let ours = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut theirs, _) = listener.accept().await.ok()?;
        theirs.write_all(bytes).await.ok()?;
        theirs.shutdown().await.ok()?;
        let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(ours));
        let mut session = pingora::protocols::http::v1::client::HttpSession::new(stream);
        let method = if head_request { "HEAD" } else { "GET" };
        let request = pingora::http::RequestHeader::build(method, b"/", None).ok()?;
        session.write_request_header(Box::new(request)).await.ok()?;
        session.read_response().await.ok()?;
        let header = session.resp_header()?;
        let status = header.status;
        let client = headers::client_response(header, 0).headers;
        let mut body = Vec::new();
        loop {
            match session.read_body_bytes().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(_) => return None,
            }
        }
        session.respect_keepalive();
        Some((status, client, body, session.will_keepalive()))
    }

    /// Differential: for every response this module reads itself, pingora's client session
    /// (the reader of every other response, and of all of them before) finds the same status,
    /// the same fields for the client, the same body and the same answer on reuse; and what
    /// pingora refuses or finds cut short is never a complete answer here.
    #[tokio::test]
    async fn what_is_read_here_pingora_reads_the_same_way() {
        let statuses = [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 ",
            "HTTP/1.1 204 No Content",
            "HTTP/1.1 304 Not Modified",
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 599 Odd",
            "HTTP/1.0 200 OK",
        ];
        let lengths: [&[&str]; 10] = [
            &[],
            &["0"],
            &["5"],
            &["05"],
            &["5 "],
            &["9"],
            &["5, 5"],
            &["-1"],
            &["5", "5"],
            &["5", "6"],
        ];
        let codings: [&[&str]; 3] = [&[], &["chunked"], &["gzip"]];
        let connections: [&[&str]; 3] = [&[], &["close"], &["keep-alive, X-Hop"]];
        let mut simple = 0;
        for status in statuses {
            for length in lengths {
                for coding in codings {
                    for connection in connections {
                        for eol in ["\r\n", "\n"] {
                            for head_request in [false, true] {
                                let mut text = format!("{status}{eol}X-App: a{eol}X-Hop: h{eol}");
                                for v in length {
                                    text += &format!("Content-Length: {v}{eol}");
                                }
                                for v in coding {
                                    text += &format!("Transfer-Encoding: {v}{eol}");
                                }
                                for v in connection {
                                    text += &format!("Connection: {v}{eol}");
                                }
                                text += &format!("{eol}hello");
                                let bytes = text.as_bytes();
                                let Parse::Simple(parsed) = parse(bytes, head_request) else {
                                    continue;
                                };
                                let Head::Simple(ours) =
                                    parsed.finish(Bytes::copy_from_slice(bytes))
                                else {
                                    continue;
                                };
                                simple += 1;
                                let theirs = pingora_reads(bytes, head_request).await;
                                let complete = ours.preread.len() as u64 == ours.body_len;
                                match theirs {
                                    Some((status, fields, body, keepalive)) => {
                                        assert!(complete, "cut short only here: {text:?}");
                                        assert_eq!(status, ours.parts.status, "{text:?}");
                                        assert_eq!(fields, ours.parts.headers, "{text:?}");
                                        assert_eq!(body, &ours.preread[..], "{text:?}");
                                        assert_eq!(keepalive, ours.keepalive, "{text:?}");
                                    }
                                    None => assert!(
                                        !complete,
                                        "pingora refuses what is complete here: {text:?}"
                                    ),
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(simple > 50, "only {simple} responses were read here");
    }

    /// A request written at once is sent without a timer; one the upstream does not take in
    /// (it never reads) ends with a write timeout, not a hang.
    #[tokio::test]
    async fn a_request_is_sent_and_a_stuck_write_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut peer, _) = listener.accept().await.expect("accept");
        let mut stream: Stream = Box::new(super::super::direct::Upstream(tcp));

        let wire = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        send(&mut stream, wire, Duration::from_secs(5))
            .await
            .expect("a small request is sent");
        let mut got = vec![0u8; wire.len()];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(got, wire);

        // Far more than the socket buffers hold, to a peer that reads no more.
        let huge = vec![b'x'; 64 << 20];
        let started = std::time::Instant::now();
        let sending = send(&mut stream, &huge, Duration::from_millis(300));
        let err = tokio::time::timeout(Duration::from_secs(20), sending)
            .await
            .expect("a stuck write hung instead of timing out")
            .expect_err("a write nobody reads must time out");
        assert_eq!(err.etype(), &ErrorType::WriteTimedout);
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(peer);
    }
}
