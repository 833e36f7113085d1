//! A client connection that can read again what it has read since a mark.
//!
//! [`super::front`] reads each HTTP/1 request header itself and serves the common case on its
//! own. Any other request goes to pingora's HTTP/1 session or to pingora_proxy, which must then
//! see the request from its first byte: [`Replay::unread`] puts bytes already read back in
//! front of the stream, and this wrapper keeps a copy of every byte read since [`Replay::mark`],
//! which [`Replay::rewind`] puts back the same way. Writes are held back until a flush, so that a small response goes out as one TLS
//! record; TLS facts and digests pass straight through.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most a mark keeps: pingora refuses a request header past 1 MiB, and the read that
/// completes it adds at most one buffer more. Past this the copy is dropped and
/// [`Replay::rewind`] reports that it cannot replay.
const MAX_KEPT: usize = 2 * 1024 * 1024;

/// The most held back from writing: one TLS record's worth of plaintext.
const HOLD: usize = 16 * 1024;

/// A client stream that remembers what it read since the last mark.
pub struct Replay {
    inner: Stream,
    /// Bytes read since the mark, while `keeping`.
    kept: BytesMut,
    keeping: bool,
    /// Set when `kept` outgrew [`MAX_KEPT`] and was dropped.
    overflowed: bool,
    /// While keeping, the most that may be kept ([`Replay::cap`]); a read past it fails.
    cap: Option<usize>,
    /// Set when a read failed at `cap`.
    capped: bool,
    /// Bytes to read again before reading `inner`.
    again: Bytes,
    /// Bytes written but not yet passed on (see the `AsyncWrite` impl).
    held: BytesMut,
    /// Writes are dropped (see [`Replay::answered`]).
    discard: bool,
}

impl Replay {
    /// Wrap a client stream; nothing is kept until the first mark.
    pub fn new(inner: Stream) -> Self {
        Self {
            inner,
            kept: BytesMut::new(),
            keeping: false,
            overflowed: false,
            cap: None,
            capped: false,
            again: Bytes::new(),
            held: BytesMut::new(),
            discard: false,
        }
    }

    /// An upstream connection whose response the gateway started reading itself
    /// ([`super::fast`]) before deciding that pingora's client session must read it: `read`,
    /// the bytes read so far, come first. The request already went out, so what that session
    /// writes when it is handed the request it answers is dropped, not sent a second time.
    pub fn answered(inner: Stream, read: Bytes) -> Self {
        Self {
            again: read,
            discard: true,
            ..Self::new(inner)
        }
    }

    /// The connection underneath, once nothing is left to read again: a connection of
    /// [`Replay::answered`] that may be pooled. `None` if bytes are still unread.
    pub fn into_inner(self) -> Option<Stream> {
        self.again.is_empty().then_some(self.inner)
    }

    /// Start keeping from here, counting `already` (bytes read earlier that belong to what
    /// follows) as kept.
    pub fn mark(&mut self, already: &[u8]) {
        self.kept.clear();
        self.kept.extend_from_slice(already);
        self.keeping = true;
        self.overflowed = false;
        self.cap = None;
        self.capped = false;
    }

    /// Until the mark ends, let no more than `limit` bytes in all be kept: a read once they
    /// are fails (see [`Replay::capped`]), and one before that reads no further. The
    /// gateway's limit on a request header thus holds while pingora's session reads it,
    /// rather than pingora's own (1 MiB) alone.
    pub fn cap(&mut self, limit: usize) {
        self.cap = Some(limit);
    }

    /// Whether a read failed because it would have gone past the cap.
    pub fn capped(&self) -> bool {
        self.capped
    }

    /// Stop keeping; the next reads return everything kept since the mark, then whatever was
    /// still to be read again, then read on. `false` if it cannot: the kept bytes were lost
    /// (over [`MAX_KEPT`]).
    pub fn rewind(&mut self) -> bool {
        self.keeping = false;
        self.cap = None;
        if self.overflowed {
            return false;
        }
        let kept = self.kept.split().freeze();
        self.unread(kept);
        true
    }

    /// Stop keeping, and drop what was kept.
    pub fn unmark(&mut self) {
        self.keeping = false;
        self.cap = None;
        self.overflowed = false;
        self.kept = BytesMut::new();
    }

    /// Put `bytes`, read from this stream earlier, back in front of whatever is to be read
    /// next.
    pub fn unread(&mut self, bytes: Bytes) {
        if self.again.is_empty() {
            self.again = bytes;
        } else if !bytes.is_empty() {
            let mut both = BytesMut::with_capacity(bytes.len() + self.again.len());
            both.extend_from_slice(&bytes);
            both.extend_from_slice(&self.again);
            self.again = both.freeze();
        }
    }
}

impl fmt::Debug for Replay {
    // Never the kept bytes: they are a client's request, cookies and all.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay")
            .field("inner", &self.inner)
            .field("kept", &self.kept.len())
            .field("again", &self.again.len())
            .finish()
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let room = match this.cap.filter(|_| this.keeping) {
            Some(cap) if this.kept.len() >= cap => {
                this.capped = true;
                return Poll::Ready(Err(io::Error::other("read past the cap")));
            }
            Some(cap) => cap - this.kept.len(),
            None => usize::MAX,
        };
        if room < buf.remaining() {
            return Pin::new(this).poll_read_at_most(cx, buf, room);
        }
        if !this.again.is_empty() {
            let n = this.again.len().min(buf.remaining());
            buf.put_slice(&this.again[..n]);
            if this.keeping && !this.overflowed {
                // Read again, so kept again: a second rewind must replay them too.
                this.kept.extend_from_slice(&this.again[..n]);
            }
            this.again.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.keeping && !this.overflowed {
            let read = &buf.filled()[before..];
            if this.kept.len() + read.len() > MAX_KEPT {
                this.overflowed = true;
                this.kept = BytesMut::new();
            } else {
                this.kept.extend_from_slice(read);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Replay {
    /// A read of at most `room` bytes, less than `buf` has room for: only near a cap.
    fn poll_read_at_most(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        room: usize,
    ) -> Poll<io::Result<()>> {
        let mut some = vec![0; room];
        let mut part = ReadBuf::new(&mut some);
        ready!(self.as_mut().poll_read(cx, &mut part))?;
        buf.put_slice(part.filled());
        Poll::Ready(Ok(()))
    }

    /// Write out what is held back, before a flush, a shutdown or a write that does not fit.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.advance(n);
        }
        // An idle connection keeps no large buffer.
        if self.held.capacity() > HOLD / 4 {
            self.held = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

/// Writes are held back until a flush, up to [`HOLD`] bytes: pingora writes a response header
/// and then its body, and flushes when a response must reach the client; over TLS each write
/// was a record of its own. Held together, a small response is one record: one encryption,
/// one record header, one write into the TLS layer. The buffered TCP stream under TLS already
/// waits for the flush the same way, so nothing reaches the client later than before.
impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.discard {
            return Poll::Ready(Ok(buf.len()));
        }
        if this.held.len() + buf.len() > HOLD {
            ready!(this.poll_drain(cx))?;
        }
        if buf.len() >= HOLD {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Replay {
    async fn shutdown(&mut self) {
        // What was written before an abrupt close still goes out first, as it would have
        // from the buffered stream underneath.
        if std::future::poll_fn(|cx| self.poll_drain(cx))
            .await
            .is_err()
        {
            tracing::debug!("client connection closed with unsent bytes");
        }
        self.inner.shutdown().await
    }
}

impl UniqueID for Replay {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Replay {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Replay {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Replay {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Replay {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

/// Peeking would have to see the replayed bytes too; nothing on a TLS connection peeks, so it
/// is reported as unsupported (the trait's meaning of `Ok(false)`).
#[async_trait]
impl Peek for Replay {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pair() -> (Replay, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(4096);
        (Replay::new(Box::new(ours)), theirs)
    }

    #[tokio::test]
    async fn a_cap_stops_reads_at_its_limit_until_the_mark_ends() {
        let (mut replay, mut peer) = pair();
        replay.unread(Bytes::from_static(b"0123"));
        replay.mark(b"ab");
        replay.cap(8);
        peer.write_all(b"456789-rest").await.unwrap();
        // 2 already kept: 6 more may be read, put back bytes and the stream's alike.
        let mut buf = vec![0u8; 64];
        let mut got = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(n @ 1..) = replay.read(&mut buf).await {
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert!(ended.is_ok(), "still reading past the cap: {got:?}");
        assert_eq!(got, b"012345");
        assert!(replay.capped());
        // A rewind lifts the cap: everything kept, then the rest, reads on.
        assert!(replay.rewind());
        let mut all = vec![0u8; 15];
        replay.read_exact(&mut all).await.unwrap();
        assert_eq!(all, b"ab0123456789-re");
    }

    #[tokio::test]
    async fn reads_again_what_was_read_since_the_mark_then_reads_on() {
        let (mut replay, mut peer) = pair();
        peer.write_all(b"before|").await.unwrap();
        let mut buf = [0u8; 7];
        replay.read_exact(&mut buf).await.unwrap();
        replay.mark(b"");
        peer.write_all(b"POST / HTTP/1.1\r\n\r\nbody")
            .await
            .unwrap();
        let mut first = vec![0u8; 23];
        replay.read_exact(&mut first).await.unwrap();
        assert!(replay.rewind());
        peer.write_all(b"-rest").await.unwrap();
        let mut again = vec![0u8; 28];
        replay.read_exact(&mut again).await.unwrap();
        assert_eq!(again, b"POST / HTTP/1.1\r\n\r\nbody-rest");
    }

    #[tokio::test]
    async fn a_mark_counts_bytes_read_before_it_and_forgets_earlier_ones() {
        let (mut replay, mut peer) = pair();
        replay.mark(b"old");
        peer.write_all(b"abc").await.unwrap();
        let mut buf = [0u8; 3];
        replay.read_exact(&mut buf).await.unwrap();
        replay.mark(b"GE");
        peer.write_all(b"T /").await.unwrap();
        replay.read_exact(&mut buf).await.unwrap();
        assert!(replay.rewind());
        let mut again = [0u8; 5];
        replay.read_exact(&mut again).await.unwrap();
        assert_eq!(&again, b"GET /");
    }

    #[tokio::test]
    async fn bytes_put_back_are_read_first_and_kept_like_any_other() {
        let (mut replay, mut peer) = pair();
        replay.unread(Bytes::from_static(b"GET / HTTP/1.1\r\n"));
        replay.unread(Bytes::from_static(b"\r\n"));
        // Marked after the bytes were put back: they are kept when read.
        replay.mark(b"");
        peer.write_all(b"Host: a\r\n\r\n").await.unwrap();
        let mut first = vec![0u8; 11];
        replay.read_exact(&mut first).await.unwrap();
        assert_eq!(first, b"\r\nGET / HTT");
        // Rewound with part of the put-back bytes unread: kept first, then the rest.
        assert!(replay.rewind());
        let mut all = vec![0u8; 11 + 7 + 11];
        replay.read_exact(&mut all).await.unwrap();
        assert_eq!(all, b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
        // Nothing kept since: a second rewind replays nothing more.
        assert!(replay.rewind());
        peer.write_all(b"next").await.unwrap();
        let mut next = [0u8; 4];
        replay.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"next");
    }

    #[tokio::test]
    async fn too_much_kept_means_no_replay() {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let mut replay = Replay::new(Box::new(ours));
        replay.mark(b"");
        let writer = tokio::spawn(async move {
            let chunk = vec![b'a'; 64 * 1024];
            for _ in 0..(MAX_KEPT / chunk.len() + 2) {
                theirs.write_all(&chunk).await.unwrap();
            }
            theirs
        });
        let mut sink = vec![0u8; MAX_KEPT + 64 * 1024];
        replay.read_exact(&mut sink).await.unwrap();
        drop(writer.await.unwrap());
        assert!(!replay.rewind());
    }

    #[tokio::test]
    async fn writes_wait_for_a_flush_and_go_out_in_order() {
        let (mut replay, mut peer) = pair();
        replay.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        replay.write_all(b"\r\nbody").await.unwrap();
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(50), peer.read(&mut buf)).await;
        assert!(early.is_err(), "bytes went out before the flush");
        replay.flush().await.unwrap();
        let mut got = [0u8; 23];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 200 OK\r\n\r\nbody");

        // A write larger than what is held goes out behind what was held.
        let big = vec![b'x'; HOLD + 10];
        let mut got = vec![0u8; 4 + big.len()];
        let reader = tokio::spawn(async move {
            peer.read_exact(&mut got).await.unwrap();
            (peer, got)
        });
        replay.write_all(b"head").await.unwrap();
        replay.write_all(&big).await.unwrap();
        replay.flush().await.unwrap();
        let (mut peer, got) = reader.await.unwrap();
        assert_eq!(&got[..4], b"head");
        assert!(got[4..].iter().all(|&b| b == b'x'));

        // An abrupt close still sends what was written before it.
        replay.write_all(b"last").await.unwrap();
        Shutdown::shutdown(&mut replay).await;
        let mut last = [0u8; 4];
        peer.read_exact(&mut last).await.unwrap();
        assert_eq!(&last, b"last");
    }

    #[tokio::test]
    async fn writes_pass_through_and_debug_shows_no_bytes() {
        let (mut replay, mut peer) = pair();
        replay.mark(b"Cookie: secret");
        replay.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        replay.flush().await.unwrap();
        let mut buf = [0u8; 19];
        peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(!format!("{replay:?}").contains("secret"));
    }
}
