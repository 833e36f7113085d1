//! The upstream half for the common case, without pingora_proxy's machinery.
//!
//! pingora_proxy runs every upstream exchange as two joined futures talking over channels and
//! hands kept-alive connections to a shared pool through a spawned watcher task; measured, that
//! is about 7 µs of CPU per request, a third of the whole request. Body-less GET and HEAD
//! requests to plain-HTTP upstreams — nearly all page, asset and API reads — instead go out
//! here over a keep-alive pool local to the worker thread. The request is written as one
//! buffer and the common response (one Content-Length, or no body) is read by [`fast`]; any
//! other response (chunked, close-delimited, interim responses, which are relayed, and all
//! that is odd) is read from its first byte by pingora's own HTTP/1 client session, with its
//! body framing. Everything else (request bodies, upgrades, TLS upstreams) still goes through
//! pingora_proxy. Errors come back as pingora errors marked as the upstream's, so
//! `fail_to_proxy` answers 502/504 exactly as for the other path.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, OrErr};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::fast::{self, Head, Simple};
use super::replay::Replay;
use crate::upstream::headers::{client_response, ResponseParts};

/// Idle connections kept per upstream address and worker thread.
const POOL_PER_UPSTREAM: usize = 64;

/// Timeouts of one exchange (from the `[proxy]` config).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Each read of the response.
    pub read: Duration,
    /// Writing the request.
    pub write: Duration,
    /// How long an idle pooled connection may be reused.
    pub idle: Duration,
}

/// Whether this request takes the direct path: a [`simple`] request to a plain-HTTP upstream.
pub fn eligible(session: &mut Session, upstream_tls: bool) -> bool {
    !upstream_tls && simple(session)
}

/// GET or HEAD without a body and without an upgrade.
pub fn simple(session: &mut Session) -> bool {
    matches!(session.req_header().method, Method::GET | Method::HEAD)
        && !session.is_upgrade_req()
        && session.is_body_empty()
}

/// Idle connections to one upstream address, newest last, with when they went idle.
type Idle = Vec<(Stream, Instant)>;

/// How often a worker thread closes the idle connections it kept too long.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One worker thread's idle upstream connections, by upstream address. A list, not a hash
/// map: a configuration names few upstreams, and comparing a handful of addresses is cheaper
/// than hashing one.
struct Pool {
    by_addr: Vec<(SocketAddr, Idle)>,
}

thread_local! {
    static IDLE: RefCell<Pool> = const { RefCell::new(Pool { by_addr: Vec::new() }) };
    /// Whether this thread's sweeper runs (see [`sweep_this_thread`]).
    static SWEEPING: Cell<bool> = const { Cell::new(false) };
}

impl Pool {
    fn idle_for(&mut self, addr: SocketAddr) -> &mut Idle {
        let at = match self.by_addr.iter().position(|(a, _)| *a == addr) {
            Some(at) => at,
            None => {
                self.by_addr.push((addr, Vec::new()));
                self.by_addr.len() - 1
            }
        };
        &mut self.by_addr[at].1
    }

    /// Close every connection idle for `idle` or longer, and forget addresses left without
    /// any: an upstream a reload removed, or one no request has used for that long, holds no
    /// sockets after this.
    fn sweep(&mut self, now: Instant, idle: Duration) {
        for (_, conns) in &mut self.by_addr {
            // Oldest first: the expired ones are a prefix.
            let expired = conns.partition_point(|(_, since)| now.duration_since(*since) >= idle);
            conns.drain(..expired);
        }
        self.by_addr.retain(|(_, conns)| !conns.is_empty());
    }

    /// Keep `stream`, quiet since `since`. The list stays ordered by that time (a response
    /// with a long body can come back after a later, shorter one), so the expired are a prefix.
    fn keep(&mut self, addr: SocketAddr, stream: Stream, since: Instant) {
        let conns = self.idle_for(addr);
        if conns.len() >= POOL_PER_UPSTREAM {
            conns.remove(0);
        }
        let at = conns.partition_point(|(_, s)| *s <= since);
        conns.insert(at, (stream, since));
    }
}

/// Start, once per worker thread, the task that closes this thread's pooled connections idle
/// past the timeout `idle()` gives (asked each time: a reload may change it) every
/// [`SWEEP_EVERY`], whether or not requests come; `make` makes `idle` only when the task
/// starts. Call it from a task of the worker's own single-threaded runtime, so that the
/// sweeper runs on the thread whose pool it sweeps.
pub fn sweep_this_thread<F>(make: impl FnOnce() -> F)
where
    F: Fn() -> Duration + Send + 'static,
{
    if SWEEPING.with(|s| s.replace(true)) {
        return;
    }
    let idle = make();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let idle = idle();
            IDLE.with(|p| p.borrow_mut().sweep(Instant::now(), idle));
        }
    });
}

/// A pooled connection to `addr` that is still open and quiet at `now`, if any.
fn pooled(addr: SocketAddr, idle: Duration, now: Instant) -> Option<Stream> {
    loop {
        let (mut stream, since) = IDLE.with(|p| {
            let mut pool = p.borrow_mut();
            pool.by_addr.iter_mut().find(|(a, _)| *a == addr)?.1.pop()
        })?;
        if now.saturating_duration_since(since) >= idle {
            continue;
        }
        // An idle HTTP/1 connection has nothing to say: readable means closed or broken.
        // One poll, outside tokio's cooperative budget so "not ready" means no data.
        let mut byte = [0u8; 1];
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let read = std::pin::pin!(tokio::task::unconstrained(stream.read(&mut byte)));
        if read.poll(&mut cx).is_pending() {
            return Some(stream);
        }
    }
}

/// Pool `stream`, quiet since `since` (when its response header came: the upstream's own idle
/// time started no earlier, so the pool's timeout never outlasts the upstream's).
fn keep(addr: SocketAddr, stream: Stream, since: Instant) {
    IDLE.with(|p| p.borrow_mut().keep(addr, stream, since));
}

async fn connect(addr: SocketAddr, timeouts: &Timeouts) -> pingora::Result<Stream> {
    let tcp = match tokio::time::timeout(timeouts.connect, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Error::e_because(ErrorType::ConnectError, "connecting upstream", e),
        Err(_) => return Error::e_explain(ErrorType::ConnectTimedout, "connecting upstream"),
    };
    tcp.set_nodelay(true)
        .or_err(ErrorType::ConnectError, "setting TCP_NODELAY")?;
    Ok(Box::new(Upstream(tcp)))
}

/// An upstream connection of this path, as pingora's transport: the TCP stream itself.
/// pingora's own (`l4::Stream`) adds a write buffer this path never needs (a request goes out
/// in one write) and times every read that waits, two clock readings per request; it keeps no
/// digest this path reports.
#[derive(Debug)]
pub struct Upstream(pub TcpStream);

impl AsyncRead for Upstream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Upstream {
    async fn shutdown(&mut self) {
        // A failed shutdown leaves nothing to do: the socket closes when dropped.
        let _ = AsyncWriteExt::shutdown(&mut self.0).await;
    }
}

impl UniqueID for Upstream {
    fn id(&self) -> UniqueIDType {
        self.0.as_raw_fd()
    }
}

impl Ssl for Upstream {}

impl GetTimingDigest for Upstream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for Upstream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for Upstream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        None
    }
}

#[async_trait]
impl Peek for Upstream {}

/// Interim responses relayed for one request at most, on either upstream path; an upstream
/// that sends more is broken or hostile, and the exchange ends with an upstream error (502)
/// instead of tying up the connection.
pub const MAX_INTERIM: usize = 8;

/// The upstream error for one interim response too many.
pub fn too_many_interims() -> Box<Error> {
    Error::explain(ErrorType::InvalidHTTPHeader, "too many interim responses").into_up()
}

/// What [`exchange`] got back.
enum Answer {
    /// The common response, read by [`fast`]; the connection it came on.
    Simple(Stream, Simple),
    /// Any other, in pingora's client session (boxed: the rare case), its final header read.
    Other(Box<UpstreamSession>),
}

/// Send the request `build` makes from the client's and read the response header, relaying
/// interim (1xx) responses on the way (see [`read_final_header`]). A reused connection the
/// upstream closed meanwhile is replaced once by a new one: the request has no body and a
/// safe method, so sending the same bytes again is harmless. Once the upstream has answered
/// anything, it is not sent again.
///
/// An HTTP/2 client that resets its stream (or closes its connection) while the upstream is
/// being asked ends the exchange at once, and the upstream connection is dropped: otherwise a
/// client resetting every stream right after opening it (Rapid Reset, CVE-2023-44487) would
/// free its stream slots while the gateway kept a request per reset stream open upstream,
/// without bound.
async fn exchange(
    addr: SocketAddr,
    session: &mut Session,
    build: &impl Fn(&Session) -> pingora::Result<Vec<u8>>,
    timeouts: &Timeouts,
    sent: Instant,
) -> pingora::Result<Answer> {
    let head_request = session.req_header().method == Method::HEAD;
    let request = build(session).map_err(|e| e.into_in())?;
    let mut reused = pooled(addr, timeouts.idle, sent);
    loop {
        let was_reused = reused.is_some();
        // Everything that waits on the upstream, without the session: it can be raced against
        // the client going away.
        let ask = async {
            let mut stream = match reused.take() {
                Some(stream) => stream,
                None => connect(addr, timeouts).await.map_err(|e| (e, false))?,
            };
            let mut heard = false;
            let head = match fast::send(&mut stream, &request, timeouts.write).await {
                Ok(()) => {
                    fast::read_head(&mut stream, timeouts.read, head_request, &mut heard).await
                }
                Err(e) => Err(e),
            };
            match head {
                Ok(head) => Ok((stream, head)),
                Err(e) => Err((e, heard)),
            }
        };
        // Only an HTTP/2 stream can be closed while the connection stays: checked once, so
        // an HTTP/1 request's answer is not passed through one more layer.
        let head = if session.as_downstream().is_http2() {
            unless_client_left(session, ask).await?
        } else {
            ask.await
        };
        let answered = match head {
            Ok((stream, Head::Simple(simple))) => return Ok(Answer::Simple(stream, simple)),
            Ok((stream, Head::Other(read))) => {
                // pingora's client session reads the response from its first byte. It is
                // handed a request only to know what it answers: the method (HEAD has no
                // body), and no Connection or Upgrade field, as the request sent had none
                // (body-less GET and HEAD only, never an upgrade).
                let replay: Stream = Box::new(Replay::answered(stream, read));
                let mut upstream = UpstreamSession::new(replay);
                upstream.read_timeout = Some(timeouts.read);
                upstream.write_timeout = Some(timeouts.write);
                let method = session.req_header().method.clone();
                let answered = RequestHeader::build(method, b"/", Some(0));
                let written = match answered {
                    Ok(header) => upstream.write_request_header(Box::new(header)).await,
                    Err(e) => Err(e),
                };
                match written {
                    // The upstream has answered something: never sent again.
                    Ok(_) => read_final_header(&mut upstream, session)
                        .await
                        .map(|()| Answer::Other(Box::new(upstream)))
                        .map_err(|e| (e, true)),
                    Err(e) => Err((e.into_up(), true)),
                }
            }
            Err((e, heard)) => Err((e.into_up(), heard)),
        };
        match answered {
            Ok(answer) => return Ok(answer),
            // A timeout is the upstream being slow, not a stale connection.
            Err((e, heard)) if was_reused && !heard && !is_timeout(&e) => continue,
            Err((e, _)) => return Err(e),
        }
    }
}

/// `work`'s output, unless the client goes away first: an HTTP/2 stream the client resets (or
/// the gateway resets for the client's protocol error) or whose connection closes ends the
/// request as the client's doing, and `work`, with the upstream connection it holds, is
/// dropped. Every wait of an HTTP/2 request on the upstream goes through here. An HTTP/1
/// client's closing is noticed at the next write.
async fn unless_client_left<T>(
    session: &mut Session,
    work: impl Future<Output = T>,
) -> pingora::Result<T> {
    let Some(closed) = session.as_downstream_mut().watch_h2_stream_close() else {
        return Ok(work.await);
    };
    tokio::select! {
        biased;
        out = work => Ok(out),
        reason = closed => {
            let why = match reason {
                Ok(reason) => format!("client closed its HTTP/2 stream ({reason})"),
                Err(e) => format!("client's HTTP/2 stream failed: {e}"),
            };
            Err(Error::explain(ErrorType::ConnectionClosed, why).into_down())
        }
    }
}

fn is_timeout(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

/// Read response headers until the final one. Interim responses (1xx other than 101) go on
/// to the client without their hop-by-hop fields, as RFC 9110 §15.2 asks of a proxy —
/// `103 Early Hints` lets a browser start fetching before the page is ready — except to an
/// HTTP/1.0 client, which must not receive them. A client write that fails is the client's
/// error; the rest are the upstream's.
async fn read_final_header(
    upstream: &mut UpstreamSession,
    session: &mut Session,
) -> pingora::Result<()> {
    let relay = session.req_header().version >= http::Version::HTTP_11;
    let mut interims = 0;
    loop {
        unless_client_left(session, upstream.read_response())
            .await?
            .map_err(|e| e.into_up())?;
        let Some(header) = upstream.resp_header() else {
            return Err(
                Error::explain(ErrorType::InvalidHTTPHeader, "no response header").into_up(),
            );
        };
        let status = header.status;
        // 101 answers no request of this path (no upgrades here): refuse it.
        if status == http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(
                Error::explain(ErrorType::InvalidHTTPHeader, "101 to a plain request").into_up(),
            );
        }
        if !status.is_informational() {
            return Ok(());
        }
        if interims == MAX_INTERIM {
            break;
        }
        interims += 1;
        if relay {
            header_to_client(session, client_response(header, 0), false).await?;
        }
    }
    Err(too_many_interims())
}

/// Forward the client's request, as `build` prepares it for the upstream, to `addr` and stream
/// the answer to the client. The client's response header is the upstream's without
/// hop-by-hop fields, as `finish` completes it (HSTS; metrics, with how long the upstream
/// took to answer).
pub async fn forward(
    session: &mut Session,
    addr: SocketAddr,
    build: impl Fn(&Session) -> pingora::Result<Vec<u8>>,
    timeouts: &Timeouts,
    finish: impl FnOnce(&mut ResponseParts, Duration),
) -> pingora::Result<()> {
    let sent = Instant::now();
    // One reading of the clock for the answer too: the latency and the pooled connection's
    // idle start.
    let finish = |parts: &mut ResponseParts| {
        let answered = Instant::now();
        finish(parts, answered.saturating_duration_since(sent));
        answered
    };
    match exchange(addr, session, &build, timeouts, sent).await? {
        Answer::Simple(stream, simple) => {
            relay_simple(session, addr, stream, simple, timeouts, finish).await
        }
        Answer::Other(upstream) => relay_other(session, addr, *upstream, finish).await,
    }
}

/// The common response: the body is exactly `Content-Length` bytes, or none.
async fn relay_simple(
    session: &mut Session,
    addr: SocketAddr,
    mut stream: Stream,
    simple: Simple,
    timeouts: &Timeouts,
    finish: impl FnOnce(&mut ResponseParts) -> Instant,
) -> pingora::Result<()> {
    let Simple {
        mut parts,
        body_len,
        preread,
        keepalive,
    } = simple;
    let answered = finish(&mut parts);
    let mut remaining = body_len - preread.len() as u64;
    header_to_client(session, parts, body_len == 0).await?;
    if !preread.is_empty() {
        to_client(session, Some(preread), false).await?;
    }
    while let Some(chunk) = unless_client_left(
        session,
        fast::read_body(&mut stream, &mut remaining, timeouts.read),
    )
    .await?
    .map_err(|e| e.into_up())?
    {
        to_client(session, Some(chunk), false).await?;
    }
    to_client(session, None, true).await?;
    if keepalive {
        keep(addr, stream, answered);
    }
    Ok(())
}

/// Write a response header to the client; a failure is the client's.
async fn header_to_client(
    session: &mut Session,
    parts: ResponseParts,
    end: bool,
) -> pingora::Result<()> {
    session
        .write_response_header(Box::new(ResponseHeader::from(parts)), end)
        .await
        .map_err(|e| e.into_down())
}

/// Write `body` to the client; a failure is the client's.
async fn to_client(
    session: &mut Session,
    body: Option<bytes::Bytes>,
    end: bool,
) -> pingora::Result<()> {
    session
        .write_response_body(body, end)
        .await
        .map_err(|e| e.into_down())
}

/// Any other response, read by pingora's client session.
async fn relay_other(
    session: &mut Session,
    addr: SocketAddr,
    mut upstream: UpstreamSession,
    finish: impl FnOnce(&mut ResponseParts) -> Instant,
) -> pingora::Result<()> {
    let head = session.req_header().method == Method::HEAD;
    upstream.respect_keepalive();
    let Some(upstream_header) = upstream.resp_header() else {
        return Err(Error::explain(ErrorType::InvalidHTTPHeader, "no response header").into_up());
    };
    // Room for HSTS and the Transfer-Encoding added below.
    let mut header = client_response(upstream_header, 2);
    let answered = finish(&mut header);
    let done = upstream.is_body_done();
    // As pingora_proxy does: a response framed by the connection's close goes to the client
    // chunked, so the client's connection can stay open.
    let no_body = head || matches!(header.status.as_u16(), 204 | 304);
    if !no_body
        && !done
        && !header.headers.contains_key(http::header::TRANSFER_ENCODING)
        && !header.headers.contains_key(http::header::CONTENT_LENGTH)
    {
        header.version = http::Version::HTTP_11;
        header.headers.insert(
            http::header::TRANSFER_ENCODING,
            http::HeaderValue::from_static("chunked"),
        );
    }
    header_to_client(session, header, done).await?;
    if !done {
        while let Some(chunk) = unless_client_left(session, upstream.read_body_bytes())
            .await?
            .map_err(|e| e.into_up())?
        {
            to_client(session, Some(chunk), false).await?;
        }
    }
    // Ends the response in every case (an HTTP/2 stream needs it even without a body).
    to_client(session, None, true).await?;
    let unwrapped = upstream
        .reuse()
        .await
        .and_then(|stream| stream.into_any().downcast::<Replay>().ok())
        .and_then(|replay| replay.into_inner());
    if let Some(stream) = unwrapped {
        keep(addr, stream, answered);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` connected streams to a fresh listener, and the listener's ends of them.
    async fn streams(n: usize) -> (SocketAddr, Vec<Stream>, Vec<TcpStream>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            ours.push(Box::new(Upstream(tcp)) as Stream);
            theirs.push(listener.accept().await.expect("accept").0);
        }
        (addr, ours, theirs)
    }

    /// Whether the peer of `theirs` has closed (EOF) within `wait`.
    async fn closed(theirs: &mut TcpStream, wait: Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(wait, theirs.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// The transport passes bytes both ways unbuffered, and its shutdown ends the request
    /// side (pingora's client session shuts down a connection it will not reuse).
    #[tokio::test]
    async fn the_upstream_transport_passes_bytes_and_shuts_down() {
        use tokio::io::AsyncWriteExt as _;
        let (_, mut ours, mut theirs) = streams(1).await;
        let (mut ours, mut theirs) = (ours.remove(0), theirs.remove(0));
        ours.write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut got = [0u8; 18];
        tokio::time::timeout(Duration::from_secs(5), theirs.read_exact(&mut got))
            .await
            .expect("the request arrives without a flush")
            .expect("read");
        assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");
        theirs
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .expect("answer");
        let mut answer = [0u8; 27];
        ours.read_exact(&mut answer).await.expect("read answer");
        assert_eq!(&answer, b"HTTP/1.1 204 No Content\r\n\r\n");
        assert!(ours.id() > 0, "the id is the socket's descriptor");
        <dyn pingora::protocols::IO as Shutdown>::shutdown(&mut *ours).await;
        assert!(
            closed(&mut theirs, Duration::from_secs(5)).await,
            "no FIN after shutdown"
        );
    }

    /// A connection that comes back quiet since earlier than one kept before it is still
    /// swept when its time is up.
    #[tokio::test]
    async fn a_connection_kept_out_of_order_is_swept_in_time() {
        let idle = Duration::from_secs(60);
        let (addr, conns, mut peers) = streams(2).await;
        let mut pool = Pool {
            by_addr: Vec::new(),
        };
        let start = Instant::now();
        let mut conns = conns.into_iter();
        pool.keep(addr, conns.next().expect("two"), start + idle / 2);
        pool.keep(addr, conns.next().expect("two"), start);
        pool.sweep(start + idle, idle);
        assert_eq!(pool.by_addr[0].1.len(), 1, "the expired connection stayed");
        assert_eq!(pool.by_addr[0].1[0].1, start + idle / 2);
        assert!(closed(&mut peers[1], Duration::from_secs(5)).await);
        assert!(!closed(&mut peers[0], Duration::from_millis(200)).await);
    }

    #[tokio::test]
    async fn a_sweep_closes_connections_idle_too_long_and_forgets_their_upstream() {
        let idle = Duration::from_secs(60);
        let (gone, old, mut old_peers) = streams(2).await;
        let (live, new, mut new_peers) = streams(2).await;
        let mut pool = Pool {
            by_addr: Vec::new(),
        };
        let start = Instant::now();
        for stream in old {
            pool.keep(gone, stream, start);
        }
        for stream in new {
            pool.keep(live, stream, start + idle / 2);
        }
        pool.sweep(start + idle / 2, idle);
        assert_eq!(pool.by_addr.len(), 2, "nothing expired yet");

        // Past the idle timeout of `gone`'s connections, not of `live`'s.
        pool.sweep(start + idle, idle);
        assert_eq!(pool.by_addr.len(), 1, "the unused upstream is forgotten");
        assert_eq!(pool.by_addr[0].0, live);
        assert_eq!(pool.by_addr[0].1.len(), 2);
        for peer in &mut old_peers {
            assert!(
                closed(peer, Duration::from_secs(5)).await,
                "an expired connection stayed open"
            );
        }
        for peer in &mut new_peers {
            assert!(
                !closed(peer, Duration::from_millis(200)).await,
                "a live pooled connection was closed"
            );
        }
    }
}
