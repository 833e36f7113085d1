//! The data plane: the one place that touches pingora's `Session`.
//!
//! Each `ProxyHttp` phase below only gathers facts from the session and hands them to a module
//! that returns a typed outcome; the modules know nothing of pingora.

pub mod admit;
pub mod client;
pub mod direct;
pub mod fast;
pub mod front;
pub mod idp_refresh;
pub mod pace;
pub mod redirect;
pub mod reload;
pub mod replay;
pub mod respond;
pub mod retention;
pub mod server;
pub mod state;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};

use crate::audit::{AuditEvent, EventKind, Outcome, OPERATOR_TENANT};
use crate::auth::cookie;
use crate::auth::flow::{self, AuthRequest};
use crate::auth::session::Identity;
use crate::error::RequestError;
use crate::policy;
use crate::tls::HandshakeInfo;
use crate::upstream::headers::{self, Forwarding, ResponseParts};
use admit::{Admitted, Prepared, Reached, RequestFacts};
use state::{Runtime, Shared};

/// The gateway's `ProxyHttp` implementation.
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// A gateway over shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Answer with an error page and end the request.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        err: RequestError,
    ) -> pingora::Result<Served> {
        let hsts = self.shared.runtime.load().hsts.clone();
        respond::error(session, &err, &hsts, false).await?;
        ctx.refused = Some(err);
        Ok(Served::Answered)
    }

    /// 429 with `Retry-After` (RFC 6585 §4) for a client over its request budget.
    async fn too_many(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        wait: std::time::Duration,
    ) -> pingora::Result<Served> {
        let json = respond::wants_json(session.req_header().headers.get(http::header::ACCEPT));
        let secs = crate::ratelimit::retry_after_secs(wait);
        let mut reply = if json {
            crate::auth::reply::Reply::json_error(429, "too_many_requests")
        } else {
            crate::auth::reply::Reply::html(
                429,
                crate::auth::pages::message_page(
                    "Too Many Requests",
                    "Too many requests. Please slow down and try again shortly.",
                ),
            )
        };
        reply.push(http::header::RETRY_AFTER, &secs.to_string());
        let hsts = self.shared.runtime.load().hsts.clone();
        respond::reply(session, reply, &hsts).await?;
        ctx.refused = Some(RequestError::RateLimited);
        Ok(Served::Answered)
    }

    /// Serve `/.auth/…`: read the (small) body, let the auth flow answer.
    async fn gateway_endpoint(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        prepared: &Prepared,
    ) -> pingora::Result<Served> {
        // The snapshot `request_filter` took: one configuration for the whole request.
        let rt = ctx
            .runtime
            .clone()
            .unwrap_or_else(|| self.shared.runtime.load_full());
        if prepared.target.path.starts_with("/.auth/saml/") {
            if let Err(wait) = ctx
                .client
                .map_or(Ok(()), |ip| rt.request_limits.check_saml(ip))
            {
                self.shared.metrics.limiter_decision("saml_rate");
                return self.too_many(session, ctx, wait).await;
            }
        }
        let mut body = BytesMut::new();
        let limit = flow::body_limit(&prepared.target.path);
        while let Some(chunk) = session.read_request_body().await? {
            if body.len() + chunk.len() > limit {
                return self.refuse(session, ctx, RequestError::BodyTooLarge).await;
            }
            body.extend_from_slice(&chunk);
        }
        let req = session.req_header();
        let authority = req
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri.authority().map(|a| a.as_str().to_string()))
            .unwrap_or_default()
            .to_ascii_lowercase();
        let auth_req = AuthRequest {
            tenant: &prepared.tenant,
            authority: &authority,
            host: &prepared.host,
            method: &req.method,
            path: &prepared.target.path,
            query: prepared.target.query.as_deref(),
            headers: &req.headers,
            body: body.freeze(),
            client_ip: ctx.client,
            public_port: rt.config.server.https_public_port,
        };
        let grace = rt.config.keys.jwt_grace.as_secs();
        let auth = Arc::clone(&self.shared.auth);
        let reply = auth.handle(&auth_req, || auth.jwks(grace)).await;
        let hsts = rt.hsts.clone();
        respond::reply(session, reply, &hsts).await?;
        Ok(Served::Answered)
    }

    /// The request that goes upstream through pingora_proxy: the target as the client sent
    /// it (or as normalized) and the fields of [`Gateway::upstream_fields`].
    fn upstream_request(
        &self,
        session: &Session,
        source: &RequestHeader,
        ctx: &Ctx,
    ) -> pingora::Result<RequestHeader> {
        let uri = match upstream_target(source, ctx)? {
            Some(normalized) => normalized,
            None => source.uri.clone(),
        };
        let mut headers = HeaderMap::with_capacity(source.headers.len() + 12);
        self.upstream_fields(session, source, ctx, &mut |name, value| {
            headers.append(name.clone(), value.clone());
        })?;
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = source.method.clone();
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        parts.headers = headers;
        Ok(RequestHeader::from(parts))
    }

    /// The same request on the wire, for the direct path: no header map is built for it.
    fn upstream_wire(&self, session: &Session, ctx: &Ctx) -> pingora::Result<Vec<u8>> {
        let source = session.req_header();
        let normalized = upstream_target(source, ctx)?;
        let target = match &normalized {
            Some(uri) => uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .as_bytes(),
            None => source.raw_path(),
        };
        let mut wire = fast::Wire::start(&source.method, target)?;
        self.upstream_fields(session, source, ctx, &mut |name, value| {
            wire.field(name, value)
        })?;
        Ok(wire.finish())
    }

    /// Every field of the request that goes upstream, once each: `headers::Outgoing`'s
    /// (hygiene, forwarding, tenant), the client's cookies without the gateway's own, and the
    /// signed-in caller's identity.
    fn upstream_fields(
        &self,
        session: &Session,
        source: &RequestHeader,
        ctx: &Ctx,
        field: &mut dyn FnMut(&HeaderName, &HeaderValue),
    ) -> pingora::Result<()> {
        let (Some(rt), Some(admitted)) = (&ctx.runtime, &ctx.admitted) else {
            return Error::e_explain(ErrorType::InternalError, "no admitted request");
        };
        let p = &admitted.prepared;
        let Some(peer) = peer_ip(session) else {
            return Error::e_explain(ErrorType::InternalError, "no client address");
        };
        let outgoing = headers::Outgoing::new(
            source,
            &Forwarding {
                peer,
                host: &p.host,
                tenant: &p.tenant.id,
                trusted: &rt.trusted,
                is_upgrade: session.is_upgrade_req(),
            },
        )
        .map_err(|e| Error::explain(ErrorType::InternalError, e.to_string()))?;
        let invalid =
            |what: &str| Error::explain(ErrorType::InternalError, format!("invalid {what}"));
        // The session token is a bearer credential for the gateway only: the Cookie lines that
        // pass hygiene go as one, without the gateway's cookies.
        let mut cookies = false;
        outgoing.each(source, |name, value| {
            if name == http::header::COOKIE {
                cookies = true;
            } else {
                field(name, value);
            }
        });
        if cookies {
            if let Some(kept) = cookie::without_gateway_cookies(&source.headers) {
                let kept = HeaderValue::from_str(&kept).map_err(|_| invalid("cookie"))?;
                field(&http::header::COOKIE, &kept);
            }
        }
        if let Some(identity) = &ctx.identity {
            // After `Outgoing`'s fields, which include no inbound `X-Portcullis-*`.
            let token = self
                .shared
                .auth
                .upstream_token(
                    identity,
                    &p.tenant,
                    &admitted.route().id,
                    &p.host,
                    rt.config.keys.jwt_ttl.as_secs(),
                )
                .map_err(|e| {
                    Error::explain(
                        ErrorType::InternalError,
                        format!("cannot sign identity: {e}"),
                    )
                })?;
            let Some((user, roles)) = &identity.upstream_headers else {
                return Err(invalid("user name or roles"));
            };
            field(&IDENTITY_USER, user);
            field(&IDENTITY_ROLES, roles);
            field(&IDENTITY_JWT, &token);
        }
        Ok(())
    }

    /// Everything from a read request header to the decision, in the order of the flow:
    /// checks → gateway endpoints → authenticate → decide; on the direct path also the
    /// upstream exchange. `path` says who runs it; see [`Path`].
    pub(crate) async fn serve(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        path: Path,
    ) -> pingora::Result<Served> {
        let rt = self.shared.runtime.load_full();
        ctx.runtime = Some(Arc::clone(&rt));
        // Each write of the answer may wait this long for the client to read: a client that
        // stops reading does not hold its connection, buffers and upstream for ever.
        session
            .as_downstream_mut()
            .set_write_timeout(Some(rt.config.proxy.client_send_timeout));
        let peer = peer_ip(session);
        let req = session.req_header();
        ctx.client = peer.map(|p| admit::client_ip(&rt, p, &req.headers));
        let sni = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .and_then(|s| s.extension.get::<HandshakeInfo>())
            .and_then(|h| h.sni.as_deref());
        let authority = req.uri.authority().map(|a| a.as_str());
        let downstream = session.as_downstream();
        let raw_header = match downstream.as_http1() {
            Some(h1) => Some(h1.get_headers_raw_bytes()),
            // A plain request read by [`client`]: the header as received.
            None => downstream
                .as_custom()
                .map(|c| c.pseudo_raw_h1_request_header()),
        };
        let facts = RequestFacts {
            sni,
            version: req.version,
            headers: &req.headers,
            raw_target: req.raw_path(),
            authority,
            header_bytes: admit::header_bytes(req.method.as_str(), req.raw_path(), &req.headers),
            raw_header: raw_header.as_deref(),
        };
        let prepared = match admit::prepare(&rt, &facts, &mut ctx.reached) {
            Ok(p) => p,
            Err(err) => return self.refuse(session, ctx, err).await,
        };
        if prepared.is_gateway_endpoint() {
            return self.gateway_endpoint(session, ctx, &prepared).await;
        }
        // The connection loop serves only what the direct path forwards; a TLS upstream goes
        // back to pingora_proxy now, before anything is counted, looked up or written.
        if path == Path::Front
            && prepared.tenant.routes.iter().any(|r| r.upstream.tls)
            && policy::route(&prepared.tenant, &prepared.target.path)
                .is_ok_and(|route| route.upstream.tls)
        {
            return Ok(Served::Proxy);
        }

        let identity = match self
            .shared
            .auth
            .identity(&prepared.tenant, &session.req_header().headers, ctx.client)
            .await
        {
            Ok(identity) => identity,
            Err(e) => {
                tracing::error!("session lookup failed: {e}");
                return self.refuse(session, ctx, RequestError::Unavailable).await;
            }
        };
        let roles = identity.as_ref().map(|i| i.roles.as_slice());
        match admit::choose(&prepared, roles, &mut ctx.reached) {
            Ok(choice) => {
                let admitted = Admitted::new(prepared, choice);
                let budget = ctx.client.map_or(Ok(()), |ip| {
                    rt.request_limits
                        .check(&admitted.prepared.tenant.id, &admitted.route().id, ip)
                });
                if let Err(wait) = budget {
                    self.shared.metrics.limiter_decision("route_rate");
                    return self.too_many(session, ctx, wait).await;
                }
                let upstream_tls = admitted.route().upstream.tls;
                ctx.admitted = Some(admitted);
                ctx.identity = identity;
                if direct::eligible(session, upstream_tls) {
                    self.forward_direct(session, ctx).await?;
                    return Ok(Served::Answered);
                }
                match path {
                    Path::Proxy => Ok(Served::Proxy),
                    // Unreachable (the loop passes only direct-path requests, TLS upstreams
                    // went back above); the request was counted, so it cannot go back now.
                    Path::Front => Error::e_explain(
                        ErrorType::InternalError,
                        "request not for the direct path after admission",
                    ),
                }
            }
            Err(RequestError::Unauthenticated) => {
                let json =
                    respond::wants_json(session.req_header().headers.get(http::header::ACCEPT));
                let answer = flow::login_redirect_to(&prepared.target.path_and_query(), json);
                respond::reply(session, answer, &rt.hsts).await?;
                ctx.refused = Some(RequestError::Unauthenticated);
                Ok(Served::Answered)
            }
            Err(err) => self.refuse(session, ctx, err).await,
        }
    }

    /// Metrics and the audit trail of a finished request, on either path.
    pub(crate) fn record(&self, session: &Session, ctx: &Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let (tenant, route) = match &ctx.admitted {
            Some(a) => (a.prepared.tenant.id.as_str(), a.route().id.as_str()),
            None => (
                ctx.reached.tenant.as_ref().map_or("-", |t| t.id.as_str()),
                ctx.reached.route.as_deref().unwrap_or("-"),
            ),
        };
        self.shared.metrics.request(tenant, route, status);
        if let Some(err) = &ctx.refused {
            if let Some(kind) = audit_kind(err) {
                let user_agent = session
                    .req_header()
                    .headers
                    .get(http::header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                self.shared.audit.record(AuditEvent {
                    time: self.shared.clock.now_utc(),
                    tenant: ctx
                        .reached
                        .tenant
                        .as_ref()
                        .map_or(OPERATOR_TENANT.to_string(), |t| t.id.clone()),
                    event: kind,
                    actor: None,
                    subject: ctx.reached.route.clone(),
                    client_ip: ctx.client,
                    user_agent,
                    request_id: None,
                    outcome: Outcome::Denied,
                    reason: Some(err.code().to_string()),
                });
            }
        }
    }

    /// Send an admitted body-less GET/HEAD to its plain-HTTP upstream without pingora_proxy
    /// (see [`direct`]); failures come back as upstream errors for `fail_to_proxy`.
    async fn forward_direct(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<()> {
        let ctx = &*ctx;
        let build = |session: &Session| self.upstream_wire(session, ctx);
        let (Some(rt), Some(admitted)) = (&ctx.runtime, &ctx.admitted) else {
            return Error::e_explain(ErrorType::InternalError, "no admitted request");
        };
        let proxy = &rt.config.proxy;
        let timeouts = direct::Timeouts {
            connect: proxy.connect_timeout,
            read: proxy.read_timeout,
            write: proxy.write_timeout,
            idle: proxy.idle_timeout,
        };
        let metrics = &self.shared.metrics;
        let (tenant, route) = (&admitted.prepared.tenant.id, &admitted.route().id);
        let addr = admitted.route().upstream.addr;
        direct::forward(session, addr, build, &timeouts, |parts, took| {
            metrics.upstream_latency(tenant, route, took.as_secs_f64());
            add_hsts(parts, &rt.hsts);
        })
        .await
    }
}

/// Who runs [`Gateway::serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// pingora_proxy's `request_filter`: a request it can forward itself.
    Proxy,
    /// The connection loop ([`front`]): a body-less GET or HEAD, which must be answered here
    /// or handed back before anything happens.
    Front,
}

/// How [`Gateway::serve`] left a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// Answered, upstream response included: the request is done.
    Answered,
    /// Not answered and nothing done that counts: pingora_proxy forwards it.
    Proxy,
}

/// Per-request state carried between phases.
#[derive(Default)]
pub struct Ctx {
    /// The configuration this request is served under, fixed at its start (a reload never
    /// changes a request midway).
    runtime: Option<Arc<Runtime>>,
    /// Set once the request is admitted.
    admitted: Option<Admitted>,
    /// The signed-in caller, if any.
    identity: Option<Arc<Identity>>,
    /// How far a refused request got.
    reached: Reached,
    /// The client under the trusted-proxy rules.
    client: Option<IpAddr>,
    /// Body bytes seen so far, against the cap.
    body_bytes: u64,
    /// When the request was sent upstream.
    upstream_sent: Option<Instant>,
    /// How fast the rest of the request body must arrive, while one is expected.
    body_pace: Option<pace::BodyPace>,
    /// A refusal to record once the request is done.
    refused: Option<RequestError>,
    /// Interim (1xx) responses pingora_proxy relayed so far.
    interims: usize,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    /// Runs once the request header is read, before anything goes upstream (see
    /// [`Gateway::serve`]). `Ok(true)`: we answered and the request ends here; `Ok(false)`:
    /// proxy it.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        Ok(matches!(
            self.serve(session, ctx, Path::Proxy).await?,
            Served::Answered
        ))
    }

    /// Counts body bytes as they stream, so a chunked body is cut at the cap too, and keeps
    /// the body to its pace ([`pace`]).
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let cap = ctx
            .runtime
            .as_ref()
            .map_or(0, |rt| rt.config.proxy.max_body_bytes);
        let bytes = body.as_ref().map_or(0, |b| b.len() as u64);
        ctx.body_bytes += bytes;
        if ctx.body_bytes > cap {
            return Error::e_explain(ErrorType::HTTPStatus(413), "request body over the cap");
        }
        if let Some(pace) = ctx.body_pace.as_mut() {
            let Some(left) = pace.arrived(bytes, Instant::now()) else {
                return Error::e_explain(ErrorType::HTTPStatus(408), "request body too slow");
            };
            if end_of_stream || session.is_body_done() {
                ctx.body_pace = None;
            } else {
                session.set_read_timeout(Some(left));
            }
        }
        Ok(())
    }

    /// Where the admitted request goes: its route's upstream, with the configured timeouts.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let (Some(rt), Some(admitted)) = (&ctx.runtime, &ctx.admitted) else {
            return Error::e_explain(ErrorType::InternalError, "no admitted request");
        };
        let upstream = &admitted.route().upstream;
        let mut peer = HttpPeer::new(upstream.addr, upstream.tls, upstream.host.clone());
        let proxy = &rt.config.proxy;
        peer.options.connection_timeout = Some(proxy.connect_timeout);
        peer.options.total_connection_timeout = Some(proxy.connect_timeout);
        peer.options.read_timeout = Some(proxy.read_timeout);
        peer.options.write_timeout = Some(proxy.write_timeout);
        peer.options.idle_timeout = Some(proxy.idle_timeout);
        Ok(Box::new(peer))
    }

    /// Rewrite the request for the upstream: the normalized target, clean headers, identity.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        *upstream_request = self.upstream_request(session, upstream_request, ctx)?;
        let now = Instant::now();
        ctx.upstream_sent = Some(now);
        // An upgrade's body turns into the upgraded stream (a WebSocket), which may idle.
        if !session.is_upgrade_req() && !session.is_body_done() {
            if let Some(rt) = &ctx.runtime {
                let proxy = &rt.config.proxy;
                let pace = pace::BodyPace::start(
                    now,
                    proxy.client_body_timeout,
                    proxy.client_body_min_rate,
                );
                session.set_read_timeout(pace.left(now));
                ctx.body_pace = Some(pace);
            }
        }
        Ok(())
    }

    /// Runs on the upstream's response header: record how long the upstream took.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        // Interim responses pass on (as on the direct path), up to the same limit; the latency
        // is the final response's.
        let status = upstream_response.status;
        if status.is_informational() && status != http::StatusCode::SWITCHING_PROTOCOLS {
            ctx.interims += 1;
            if ctx.interims > direct::MAX_INTERIM {
                return Err(direct::too_many_interims());
            }
            return Ok(());
        }
        if let (Some(sent), Some(admitted)) = (ctx.upstream_sent, &ctx.admitted) {
            self.shared.metrics.upstream_latency(
                &admitted.prepared.tenant.id,
                &admitted.route().id,
                sent.elapsed().as_secs_f64(),
            );
        }
        Ok(())
    }

    /// Runs before the response header goes to the client: hop-by-hop fields end here, HSTS
    /// on every response.
    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let hsts = ctx.runtime.as_ref().map(|rt| &rt.hsts);
        *upstream_response = ResponseHeader::from(finish_response(hsts, upstream_response));
        Ok(())
    }

    /// Runs when proxying failed after admission: map the failure to our own page.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let body_late = match (e.etype(), e.esource()) {
            // Too slow as body bytes arrived.
            (ErrorType::HTTPStatus(408), _) => true,
            // A body read timed out: in the body's pace that is the time it had left.
            (ErrorType::ReadTimedout, ErrorSource::Downstream) => ctx.body_pace.is_some(),
            // The upstream gave up waiting while the client was behind with the body (an
            // HTTP/2 body that stopped, whose reads have no timeout): the client's doing.
            (ErrorType::ReadTimedout, ErrorSource::Upstream) => ctx
                .body_pace
                .is_some_and(|pace| pace.left(Instant::now()).is_none()),
            _ => false,
        };
        if body_late {
            self.shared.metrics.client_cut("body_timeout");
        }
        let err = match (e.etype(), e.esource()) {
            _ if body_late => Some(RequestError::BodyTimeout),
            (ErrorType::HTTPStatus(413), _) => Some(RequestError::BodyTooLarge),
            (ErrorType::ReadTimedout | ErrorType::WriteTimedout, ErrorSource::Upstream) => {
                Some(RequestError::UpstreamTimeout)
            }
            (_, ErrorSource::Upstream) => Some(RequestError::UpstreamUnavailable),
            (ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed, _) => None,
            (ErrorType::WriteTimedout, ErrorSource::Downstream) => {
                self.shared.metrics.client_cut("send_timeout");
                None
            }
            (ErrorType::ReadTimedout, ErrorSource::Downstream) => None,
            (_, ErrorSource::Downstream) => Some(RequestError::Malformed),
            _ => Some(RequestError::Internal),
        };
        let Some(err) = err else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let hsts = ctx.runtime.as_ref().map_or_else(
            || self.shared.runtime.load().hsts.clone(),
            |rt| rt.hsts.clone(),
        );
        // The connection is closed after this answer: say so, or a client would send its next
        // request on a connection about to close.
        session.set_keepalive(None);
        // If the response has already started, the client sees a cut-off response instead;
        // after interim responses only, the final one is still to come.
        if session
            .response_written()
            .is_none_or(|r| r.status.is_informational() && r.status != 101)
        {
            if let Err(write_err) = respond::error(session, &err, &hsts, true).await {
                tracing::debug!("could not send error page: {write_err}");
            }
        }
        let status = err.status();
        ctx.refused = Some(err);
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// Runs last for every request: metrics and the audit trail.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        self.record(session, ctx);
    }

    /// A client that went away, stopped reading mid-answer, sent its body too slowly or sent
    /// too much of it is the client's doing: logged as information (and counted, for a send
    /// timeout), not as the gateway's error, so a slow-read or slow-body attack or a cancelled
    /// download does not fill the error log.
    fn suppress_error_log(&self, session: &Session, ctx: &Ctx, e: &Error) -> bool {
        let gone = client_gone(e) || matches!(e.etype(), ErrorType::HTTPStatus(408 | 413));
        if gone {
            tracing::info!(
                "client connection ended: {e}, {}",
                self.request_summary(session, ctx)
            );
        }
        gone
    }

    /// What pingora's own error logs say about a request: never the query string, which
    /// may carry tokens.
    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        let req = session.req_header();
        match &ctx.admitted {
            Some(a) => format!(
                "{} {} {}",
                req.method, a.prepared.host, a.prepared.target.path
            ),
            None => format!("{} (not admitted)", req.method),
        }
    }
}

/// Whether `e` is the client's connection failing, closing or timing out.
fn client_gone(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::ReadError
                | ErrorType::WriteError
                | ErrorType::ConnectionClosed
                | ErrorType::ReadTimedout
                | ErrorType::WriteTimedout
        )
}

/// Which audit event a refusal is. Upstream failures are operations, not security events.
fn audit_kind(err: &RequestError) -> Option<EventKind> {
    match err {
        RequestError::Unauthenticated | RequestError::Forbidden => Some(EventKind::RequestDenied),
        RequestError::Target(_)
        | RequestError::Framing(_)
        | RequestError::BadHost
        | RequestError::Malformed
        | RequestError::Misdirected
        | RequestError::HeadersTooLarge
        | RequestError::BodyTooLarge => Some(EventKind::BadRequestRejected),
        RequestError::UnknownHost
        | RequestError::NoRoute
        | RequestError::UpstreamUnavailable
        | RequestError::UpstreamTimeout
        | RequestError::BodyTimeout
        | RequestError::Internal
        | RequestError::RateLimited
        | RequestError::Unavailable => None,
    }
}

/// An upstream response header as it goes to the client through pingora_proxy: hop-by-hop
/// fields end here, HSTS on every response (the direct path does the same with
/// [`headers::client_response`] or [`fast`], then [`add_hsts`]).
fn finish_response(hsts: Option<&HeaderValue>, upstream: &ResponseHeader) -> ResponseParts {
    // Room for HSTS and the Transfer-Encoding the direct path may add.
    let mut parts = headers::client_response(upstream, 2);
    if let Some(hsts) = hsts {
        add_hsts(&mut parts, hsts);
    }
    parts
}

/// HSTS on a response to the client (replacing the upstream's own).
fn add_hsts(parts: &mut ResponseParts, hsts: &HeaderValue) {
    parts
        .headers
        .insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
}

/// Identity fields for the upstream (DESIGN.md); inbound copies never pass `headers::Outgoing`.
const IDENTITY_USER: HeaderName = HeaderName::from_static("x-portcullis-user");
const IDENTITY_ROLES: HeaderName = HeaderName::from_static("x-portcullis-roles");
const IDENTITY_JWT: HeaderName = HeaderName::from_static("x-portcullis-jwt");

/// The upstream request's target when it is not the client's own: most targets arrive already
/// normalized (origin-form, as received), and only a rewritten one is parsed again. `None`:
/// send the client's.
fn upstream_target(source: &RequestHeader, ctx: &Ctx) -> pingora::Result<Option<http::Uri>> {
    let Some(admitted) = &ctx.admitted else {
        return Error::e_explain(ErrorType::InternalError, "no admitted request");
    };
    let target = &admitted.prepared.target;
    let raw = source.raw_path();
    let as_received = target.is_exactly(raw)
        && source.uri.authority().is_none()
        && source
            .uri
            .path_and_query()
            .is_some_and(|pq| pq.as_str().as_bytes() == raw);
    if as_received {
        return Ok(None);
    }
    target
        .path_and_query()
        .parse()
        .map(Some)
        .map_err(|_| Error::explain(ErrorType::InternalError, "normalized target is not a URI"))
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}
