//! The data plane's connection loop for HTTP/1.
//!
//! pingora_proxy runs each request as one large future (about 7 KB of state) that pingora
//! boxes afresh for every request on a connection, moving the whole state into the heap each
//! time, and then walks its cache, module and subrequest machinery around our filters;
//! measured, that was about a tenth of the gateway's user-space CPU per request. Most requests
//! need none of it: a body-less GET or HEAD to a plain-HTTP upstream goes over the direct path
//! ([`super::direct`]) anyway.
//!
//! So the loop reads each request header itself. A plain one ([`client`]: HTTP/1.1 `GET` or
//! `HEAD`, no body by its fields) is served through [`Gateway::serve`] with a [`Client`] as the
//! session's downstream, without pingora's HTTP/1 server session. Any other request is put
//! back and read, from its first byte, by pingora's own HTTP/1 session; the body-less GET and
//! HEAD among them are served the same way on that session. Every other request (a body, an
//! upgrade, CONNECT aside, a TLS upstream) and every HTTP/2 connection go to pingora_proxy
//! unchanged: the connection is handed over, and [`Replay`] makes pingora_proxy read the
//! request from its first byte, as if nothing had touched it. The decision to hand over is made
//! before anything about the request is counted, looked up or written. pingora_proxy serves
//! that one request; if the connection may carry another, it comes back to the loop, so every
//! request header on an HTTP/1 connection is read under the loop's limits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::{http_proxy, HttpProxy, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::ErrorType;
use tokio::sync::Notify;

use super::client::{self, Client, Conn, Home, Next, Plain, Vacant};
use super::direct;
use super::replay::Replay;
use super::state::Shared;
use super::{Ctx, Gateway, Path, Served};

/// What pingora's session may read of a request header beyond `max_header_bytes`, which is
/// counted without the blank line that ends the header and with one space after each colon:
/// room for the blank line and for a little more optional whitespace. A header over it by
/// the gateway's count is refused anyway once read whole.
const HEADER_SLACK: usize = 1024;

/// One worker's data-plane application: the HTTP/1 loop, with pingora_proxy behind it.
pub struct Front {
    gateway: Gateway,
    /// How long an idle client connection waits for its next request (`client_idle_timeout`),
    /// and the same in whole seconds, rounded up, for pingora's HTTP/1 session.
    idle: Duration,
    idle_secs: u64,
    proxy: Arc<HttpProxy<Gateway>>,
    closing: AtomicBool,
    closed: Notify,
}

impl Front {
    /// The loop and its pingora_proxy over the same shared state.
    pub fn new(shared: Arc<Shared>, conf: &Arc<ServerConf>) -> Self {
        let idle = shared.runtime.load().config.proxy.client_idle_timeout;
        let mut proxy = http_proxy(conf, Gateway::new(Arc::clone(&shared)));
        // Without it pingora keeps an HTTP/2 connection with no stream open for ever.
        let mut options = HttpServerOptions::default();
        options.h2_idle_timeout = Some(idle);
        proxy.server_options = Some(options);
        Self {
            gateway: Gateway::new(shared),
            idle,
            idle_secs: idle
                .as_millis()
                .div_ceil(1000)
                .try_into()
                .unwrap_or(u64::MAX),
            proxy: Arc::new(proxy),
            closing: AtomicBool::new(false),
            closed: Notify::new(),
        }
    }

    /// The keep-alive for pingora's HTTP/1 session: none once shutting down.
    fn keepalive(&self, shutdown: &ShutdownWatch) -> Option<u64> {
        (!*shutdown.borrow()).then_some(self.idle_secs)
    }

    /// A value of the `[proxy]` settings in force now.
    fn proxy_setting<T>(&self, get: impl FnOnce(&crate::config::Proxy) -> T) -> T {
        get(&self.gateway.shared.runtime.load().config.proxy)
    }

    /// Resolves once the service is shutting down.
    async fn closing(&self) {
        // Made before the flag is read, so a shutdown between the two is not missed.
        let closed = self.closed.notified();
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        closed.await
    }

    /// Give the connection, with the request just read, to pingora_proxy.
    async fn hand_over(self: &Arc<Self>, session: Session, shutdown: &ShutdownWatch) -> After {
        let ServerSession::H1(h1) = *session.downstream_session else {
            return After::End(None);
        };
        let Ok(mut replay) = h1.into_inner().into_any().downcast::<Replay>() else {
            return After::End(None);
        };
        if !replay.rewind() {
            tracing::warn!("request too large to hand over; connection closed");
            return After::End(None);
        }
        self.proxy_one(replay, shutdown).await
    }

    /// Have pingora_proxy serve the one request `replay` holds from its first byte. A
    /// connection it leaves fit for another request comes back to this loop, so that its next
    /// requests are read under the loop's limits (the header timeout among them) and plain
    /// ones take the short way again, as on a connection that never had a body.
    async fn proxy_one(self: &Arc<Self>, replay: Box<Replay>, shutdown: &ShutdownWatch) -> After {
        let mut session = ServerSession::new_http1(replay);
        session.set_keepalive(self.keepalive(shutdown));
        let Some(reused) = self.proxy.process_new_http(session, shutdown).await else {
            return After::End(None);
        };
        // Bytes pingora read past the request would be in the settings, but only with
        // pipelining, which is never enabled: with it off, such a connection is not reused.
        let (stream, _settings) = reused.consume();
        match stream.into_any().downcast::<Replay>() {
            Ok(replay) => After::Next(Conn::new(replay)),
            Err(_) => After::End(None),
        }
    }
}
/// What a served request leaves.
enum After {
    /// The connection, ready for its next request.
    Next(Box<Conn>),
    /// The end of this loop: what pingora_proxy returned, or nothing.
    End(Option<Stream>),
}

impl Front {
    /// Serve a plain request ([`client`]) through [`Gateway::serve`], with a [`Client`] as
    /// the session's downstream.
    ///
    /// `session` is the connection's, made once: its downstream is the only part a request
    /// served this way touches (no cache, modules or subrequests run here), and it is
    /// replaced for each request.
    async fn serve_plain(
        self: &Arc<Self>,
        session: &mut Session,
        conn: Box<Conn>,
        plain: Box<Plain>,
        home: &Home,
        shutdown: &ShutdownWatch,
    ) -> After {
        let client = Client::new(conn, Arc::clone(home), plain, *shutdown.borrow());
        *session.downstream_session = ServerSession::new_custom(Box::new(client));
        let Some(reuse) = self.answer(session).await else {
            let raw = session
                .as_downstream()
                .as_custom()
                .map(|c| c.pseudo_raw_h1_request_header())
                .unwrap_or_default();
            vacate(session);
            let Some(conn) = client::take_home(home) else {
                return After::End(None);
            };
            return self.proxy_one(conn.into_replay(&raw), shutdown).await;
        };
        vacate(session);
        match client::take_home(home) {
            Some(conn) if reuse && conn.reusable() => After::Next(conn),
            _ => After::End(None),
        }
    }

    /// Serve a request that is not plain with pingora's own HTTP/1 session reading it, from
    /// its first byte, as pingora_proxy would; hand it over if the direct path does not take
    /// it.
    ///
    /// The header must be whole by `header_timeout` after its first byte, as in the loop:
    /// pingora's session reads it with the keep-alive limit per read only, so a header over
    /// the loop's 16 KiB, trickled, would otherwise be read for as long as it keeps coming.
    async fn serve_other(
        self: &Arc<Self>,
        mut conn: Box<Conn>,
        header_timeout: Duration,
        shutdown: &ShutdownWatch,
    ) -> After {
        let deadline = tokio::time::Instant::from_std(conn.header_deadline(header_timeout));
        conn.put_back();
        let mut replay = conn.take_replay();
        // Kept from its first byte, in case it is handed over; and no more of it read than
        // the gateway would let through.
        replay.mark(b"");
        replay.cap(self.proxy_setting(|p| p.max_header_bytes) + HEADER_SLACK);
        let mut session = Session::new_h1(replay);
        let downstream = session.as_downstream_mut();
        downstream.set_keepalive(self.keepalive(shutdown));
        let read = tokio::select! {
            // A request already buffered is served even when shutting down.
            biased;
            read = downstream.read_request() => read,
            _ = self.closing() => return After::End(None),
            // Too slow: closed without an answer, as the loop closes it.
            () = tokio::time::sleep_until(deadline) => {
                self.gateway.shared.metrics.client_cut("header_timeout");
                return After::End(None);
            }
        };
        match read {
            Ok(true) => {}
            Ok(false) => return After::End(None),
            Err(e) => {
                // As pingora_proxy answers a request it cannot parse (pingora's own bare error
                // response); one whose header runs past the limit gets the same with the 431
                // the gateway gives a header over it once read whole.
                let status = if capped(&session) {
                    self.gateway.shared.metrics.client_cut("header_too_large");
                    Some(431)
                } else if matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
                    Some(400)
                } else {
                    None
                };
                if let Some(status) = status {
                    tracing::debug!("request header refused with {status}: {e}");
                    if let Err(e) = session.respond_error(status).await {
                        tracing::debug!("could not answer a refused request header: {e}");
                    }
                }
                session.as_downstream_mut().shutdown().await;
                return After::End(None);
            }
        }
        // What the direct path forwards; CONNECT and all else go to pingora_proxy, which
        // refuses or forwards them as before.
        if !direct::simple(&mut session) {
            return self.hand_over(session, shutdown).await;
        }

        let Some(reuse) = self.answer(&mut session).await else {
            return self.hand_over(session, shutdown).await;
        };
        if !reuse {
            return After::End(None);
        }
        let Some(reused) = session.downstream_session.finish().await.ok().flatten() else {
            return After::End(None);
        };
        let (stream, prefix) = reused.into_parts();
        let Ok(mut replay) = stream.into_any().downcast::<Replay>() else {
            return After::End(None);
        };
        replay.unmark();
        conn.replay = replay;
        if let Some(prefix) = prefix {
            conn.carry(&prefix);
        }
        After::Next(conn)
    }

    /// Serve the request read into `session` on the direct path and record it. `None` if it
    /// is pingora_proxy's to serve (nothing was written); else whether the connection may
    /// serve another request.
    async fn answer(&self, session: &mut Session) -> Option<bool> {
        let mut ctx = Ctx::default();
        let reuse = match self.gateway.serve(session, &mut ctx, Path::Front).await {
            Ok(Served::Answered) => true,
            Ok(Served::Proxy) => return None,
            Err(e) => {
                let failed = self.gateway.fail_to_proxy(session, &e, &mut ctx).await;
                if !self.gateway.suppress_error_log(session, &ctx, &e) {
                    tracing::error!(
                        "Fail to filter request: {e}, status: {}, {}",
                        failed.error_code,
                        self.gateway.request_summary(session, &ctx)
                    );
                }
                failed.can_reuse_downstream
            }
        };
        self.gateway.record(session, &ctx);
        Some(reuse)
    }
}

/// Whether reading the request header in `session` stopped at the cap set on its stream.
fn capped(session: &Session) -> bool {
    match session.as_downstream() {
        ServerSession::H1(h1) => h1
            .stream()
            .as_any()
            .downcast_ref::<Replay>()
            .is_some_and(Replay::capped),
        _ => false,
    }
}

/// End the request's [`Client`], which sends the connection home: the downstream becomes
/// pingora's inert stand-in (no allocation) until the next request's client replaces it.
fn vacate(session: &mut Session) {
    *session.downstream_session = ServerSession::new_custom(Box::new(()));
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Both paths below forward over this thread's upstream pool.
        direct::sweep_this_thread(|| {
            let shared = Arc::clone(&self.gateway.shared);
            move || shared.runtime.load().config.proxy.idle_timeout
        });
        if !matches!(stream.selected_alpn_proto(), None | Some(ALPN::H1)) {
            return self.proxy.process_new(stream, shutdown).await;
        }
        let home: Home = Arc::new(Mutex::new(None));
        let mut conn = Conn::new(Box::new(Replay::new(stream)));
        let mut session: Option<Session> = None;
        let closing = self.closing();
        tokio::pin!(closing);
        // Read when a request header begins, so a reload (tightening it during an attack, say)
        // applies to the connections already open too.
        let header_timeout = || self.proxy_setting(|p| p.client_header_timeout);
        loop {
            let next = tokio::select! {
                biased;
                next = conn.next(self.idle, header_timeout) => next,
                () = &mut closing => return None,
            };
            let after = match next {
                Next::Closed => return None,
                Next::Overdue => {
                    self.gateway.shared.metrics.client_cut("header_timeout");
                    return None;
                }
                Next::Plain(plain) => {
                    let session = session.get_or_insert_with(|| Session::new_h1(Box::new(Vacant)));
                    self.serve_plain(session, conn, plain, &home, shutdown)
                        .await
                }
                Next::Other => self.serve_other(conn, header_timeout(), shutdown).await,
            };
            conn = match after {
                After::Next(conn) => conn,
                After::End(stream) => return stream,
            };
        }
    }

    async fn cleanup(&self) {
        self.closing.store(true, Ordering::Release);
        self.closed.notify_waiters();
        self.proxy.cleanup().await;
    }
}
