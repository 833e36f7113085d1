//! The login state machine and the `/.auth/…` endpoints.
//!
//! ```text
//!                 password ok                 password expired
//!   (no session) ────────────▶ after_password ─────────────────▶ PasswordChange ──┐
//!        ▲                          │ MFA owed                                     │ changed
//!        │ wrong password           ▼                                              ▼
//!        └─── same answer ──  SecondFactor ──── code ok ────▶ Active ◀── after_password_change
//!                                                                │
//!                                                    logout / timeout / revoke
//!                                                                ▼
//!                                                          (no session)
//! ```
//!
//! Each arrow issues a new session token and ends the previous one (so a token seen before
//! a step is useless after it), and only the transition into `Active` grants access to routes
//! (kanidm-style: a session exists only at the final transition). Unknown users, disabled
//! users and wrong passwords get the same answer after the same work: a dummy hash is
//! verified when there is no real one (OWASP ASVS 2.2.x, CWE-204/208).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::cookie::{self, LOGIN_CSRF, SESSION};
use super::pages::{self, LoginPage};
use super::password::{self, Hasher};
use super::reply::Reply;
use super::return_to;
use super::session::{new_token, Identity, Lookup, Miss, Sessions};
use crate::audit::{AuditEvent, AuditSink, EventKind, Outcome};
use crate::clock::Clock;
use crate::config::{MfaPolicy, Tenant};
use crate::keys::Sealer;
use crate::metrics::Metrics;
use crate::ratelimit::{retry_after_secs, Decision, Limiter, Ticket};
use crate::store::{Session, Stage, Store, StoreError};

use super::jwt::{self, Claims, JwtError, Keyring, Subject, TokenCache};

mod admin;
mod mfa;
mod saml;
pub use admin::{
    ActionOutcome, Actor, SessionSummary, UserAction, UserSummary, ADMIN_ROLE, PAGE_SIZE,
};
use arc_swap::ArcSwap;
pub use saml::SAML_BROWSER;

/// Largest body a gateway endpoint reads; a login form is a few hundred bytes.
pub const MAX_BODY: usize = 16 * 1024;

/// Largest body read for `path`: SAML responses are bigger than forms.
pub fn body_limit(path: &str) -> usize {
    if path == "/.auth/saml/acs" {
        crate::saml::MAX_POST_BYTES + 1024
    } else {
        MAX_BODY
    }
}

/// The one message for every failed sign-in, whatever the reason.
const BAD_LOGIN: &str = "Incorrect username or password.";

/// One request to a `/.auth/…` endpoint.
#[derive(Debug)]
pub struct AuthRequest<'a> {
    /// The tenant (from Host).
    pub tenant: &'a Tenant,
    /// The host as the client wrote it, port included (for Origin checks).
    pub authority: &'a str,
    /// The host, lowercase, no port.
    pub host: &'a str,
    /// Method.
    pub method: &'a Method,
    /// Normalized path.
    pub path: &'a str,
    /// Raw query.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The body (at most [`MAX_BODY`]).
    pub body: Bytes,
    /// The client under the trusted-proxy rules.
    pub client_ip: Option<IpAddr>,
    /// The HTTPS port browsers use (SAML addresses).
    pub public_port: u16,
}

impl AuthRequest<'_> {
    fn wants_json(&self) -> bool {
        let accept = self.headers.get(http::header::ACCEPT);
        let content = self.headers.get(http::header::CONTENT_TYPE);
        [accept, content]
            .into_iter()
            .flatten()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("application/json"))
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim)
            .unwrap_or("")
    }

    fn user_agent(&self) -> Option<String> {
        self.headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query?.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// RFC 6454 / Fetch metadata: a state-changing request must come from our own origin
    /// when the browser says where it comes from.
    fn same_origin(&self) -> bool {
        let origin_ok = self
            .headers
            .get(http::header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|o| o.eq_ignore_ascii_case(&format!("https://{}", self.authority)));
        let site_ok = self
            .headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_none_or(|s| s == "same-origin" || s == "none");
        origin_ok && site_ok
    }
}

/// Form or JSON fields of the endpoints, whichever the client sent.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Fields {
    username: String,
    password: Zeroizing<String>,
    csrf: String,
    return_to: String,
    current_password: Zeroizing<String>,
    new_password: Zeroizing<String>,
    confirm_password: Zeroizing<String>,
    code: Zeroizing<String>,
    recovery_code: Zeroizing<String>,
    action: String,
}

impl Fields {
    fn parse(req: &AuthRequest<'_>) -> Option<Fields> {
        match req.content_type() {
            "application/json" => serde_json::from_slice(&req.body).ok(),
            "application/x-www-form-urlencoded" => {
                let mut f = Fields::default();
                for (k, v) in form_urlencoded::parse(&req.body) {
                    let v = v.into_owned();
                    match k.as_ref() {
                        "username" => f.username = v,
                        "password" => f.password = Zeroizing::new(v),
                        "csrf" => f.csrf = v,
                        "return_to" => f.return_to = v,
                        "current_password" => f.current_password = Zeroizing::new(v),
                        "new_password" => f.new_password = Zeroizing::new(v),
                        "confirm_password" => f.confirm_password = Zeroizing::new(v),
                        "code" => f.code = Zeroizing::new(v),
                        "recovery_code" => f.recovery_code = Zeroizing::new(v),
                        "action" => f.action = v,
                        _ => {}
                    }
                }
                Some(f)
            }
            _ => None,
        }
    }
}

/// Why an endpoint could not do its work. Never an answer that lets a request through.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A blocking task died.
    #[error("worker failed")]
    Worker,
}

/// Constant-time comparison of two tokens.
fn same_token(a: &str, b: &str) -> bool {
    !a.is_empty() && a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Where a login goes after the password was verified.
pub fn after_password(
    tenant: &Tenant,
    password_changed_at: u64,
    has_totp: bool,
    now: u64,
) -> Stage {
    let changed = std::time::Duration::from_secs(password_changed_at);
    if tenant
        .password
        .is_expired(changed, std::time::Duration::from_secs(now))
    {
        Stage::PasswordChange
    } else {
        after_password_settled(tenant, has_totp)
    }
}

/// Where a login goes once the password is settled (checked, and changed if it had expired).
pub fn after_password_settled(tenant: &Tenant, has_totp: bool) -> Stage {
    match (tenant.mfa, has_totp) {
        (MfaPolicy::Off, _) => Stage::Active,
        (_, true) => Stage::SecondFactor,
        (MfaPolicy::Required, false) => Stage::EnrollMfa,
        (MfaPolicy::Optional, false) => Stage::Active,
    }
}

/// The authentication service: endpoints, session lookup.
pub struct Auth {
    store: Arc<dyn Store>,
    /// Session issuing and lookup.
    pub sessions: Arc<Sessions>,
    hasher: Hasher,
    audit: AuditSink,
    clock: Arc<dyn Clock>,
    /// Upstream-JWT signing keys; replaced on reload.
    pub keyring: ArcSwap<Keyring>,
    tokens: TokenCache,
    /// Brute-force budgets for every credential check.
    pub limiter: Arc<dyn Limiter>,
    metrics: Arc<Metrics>,
    sealer: Arc<Sealer>,
    /// IdP metadata fetched from URLs.
    pub saml: Arc<crate::saml::fetch::IdpDirectory>,
}

/// The pieces [`Auth`] is built from.
pub struct AuthParts {
    /// Accounts, sessions, audit.
    pub store: Arc<dyn Store>,
    /// Bounded password hashing.
    pub hasher: Hasher,
    /// Upstream-JWT signing keys.
    pub keyring: Keyring,
    /// Brute-force budgets.
    pub limiter: Arc<dyn Limiter>,
    /// The audit trail.
    pub audit: AuditSink,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Seals secrets at rest (TOTP secrets).
    pub sealer: Arc<Sealer>,
}

/// What the brute-force limiter said about a credential check.
enum Gate {
    /// Go ahead and check; report the result with the ticket.
    Check(Ticket),
    /// Refused before any hashing; answer this.
    Refused(Reply),
}

impl Auth {
    /// The service built from its parts.
    pub fn new(parts: AuthParts) -> Self {
        Self {
            sessions: Arc::new(Sessions::new(Arc::clone(&parts.store))),
            store: parts.store,
            hasher: parts.hasher,
            audit: parts.audit,
            clock: parts.clock,
            keyring: ArcSwap::from_pointee(parts.keyring),
            tokens: TokenCache::default(),
            limiter: parts.limiter,
            metrics: parts.metrics,
            sealer: parts.sealer,
            saml: Arc::default(),
        }
    }

    /// Ask the limiter before checking a credential of `account` (answered before any
    /// hashing: a throttled attempt costs nothing). Fails closed when the limiter's store is
    /// unreachable.
    async fn gate(&self, req: &AuthRequest<'_>, account: &str) -> Gate {
        // A request with no client address shares one budget rather than escaping them all.
        let ip = req.client_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        match self
            .limiter
            .begin(ip, &req.tenant.id, account, self.clock.now())
            .await
        {
            Ok(Decision::Allowed(ticket)) => {
                self.metrics.limiter_decision("allowed");
                Gate::Check(ticket)
            }
            Ok(Decision::Throttled {
                retry_after,
                reason,
            }) => {
                self.metrics.limiter_decision(reason.as_str());
                self.audit(
                    req,
                    EventKind::LoginThrottled,
                    Outcome::Denied,
                    Some(account),
                    Some(reason.as_str()),
                )
                .await;
                let secs = retry_after_secs(retry_after);
                let mut reply = if req.wants_json() {
                    Reply::json(
                        429,
                        &serde_json::json!({ "error": "too_many_attempts", "status": 429, "retry_after": secs }),
                    )
                } else {
                    // The same words as a wrong password: throttling reveals nothing more.
                    let return_to = "/";
                    self.login_page(req, return_to, Some((account, BAD_LOGIN)), 429)
                };
                reply.push(http::header::RETRY_AFTER, &secs.to_string());
                Gate::Refused(reply)
            }
            Err(e) => {
                self.metrics.limiter_decision("unavailable");
                tracing::error!("login limiter unavailable, refusing sign-in: {e}");
                Gate::Refused(error_reply(
                    req,
                    503,
                    "unavailable",
                    "Sign-in is temporarily unavailable. Please try again in a moment.",
                ))
            }
        }
    }

    /// Report a checked credential to the limiter.
    async fn settle(&self, req: &AuthRequest<'_>, ticket: Ticket, account: &str, ok: bool) {
        if ok {
            if let Err(e) = self.limiter.success(ticket, self.clock.now()).await {
                // The attempt stays counted; the user is signed in all the same.
                tracing::warn!("login limiter could not record a success: {e}");
            }
        } else {
            if ticket.locks_account_if_wrong() {
                self.audit(
                    req,
                    EventKind::AccountLocked,
                    Outcome::Denied,
                    Some(account),
                    Some("consecutive_failures"),
                )
                .await;
            }
            self.limiter.failure(ticket);
        }
    }

    /// The identity JWT for one request to one route: reused while fresh (per session and
    /// route), so signing is not on every request.
    pub fn upstream_token(
        &self,
        identity: &Identity,
        tenant: &Tenant,
        route_id: &str,
        host: &str,
        ttl_secs: u64,
    ) -> Result<http::HeaderValue, JwtError> {
        let s = &identity.session;
        let aud = jwt::audience(&tenant.id, route_id);
        let keyring = self.keyring.load();
        let now = self.clock.unix_secs();
        let who = Subject {
            sub: &s.username,
            tenant: &tenant.id,
            host,
            roles: &identity.roles,
            amr: &s.amr,
        };
        if let Some(token) = self.tokens.cached(&keyring, &s.id, &aud, now, &who) {
            return Ok(token);
        }
        let template = Claims {
            iss: format!("https://{host}"),
            sub: s.username.clone(),
            aud,
            tenant: tenant.id.clone(),
            roles: identity.roles.clone(),
            amr: s.amr.clone(),
            sid: s.id.clone(),
            iat: 0,
            exp: 0,
        };
        self.tokens.get_or_sign(&keyring, &template, now, ttl_secs)
    }

    /// The published signing keys.
    pub fn jwks(&self, grace_secs: u64) -> serde_json::Value {
        self.keyring.load().jwks(self.clock.unix_secs(), grace_secs)
    }

    /// Run blocking store work off the async workers.
    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, AuthError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|_| AuthError::Worker)?
            .map_err(AuthError::from)
    }

    /// Record a security event and wait until it is stored: the answer to the user goes out
    /// only after its audit record is durable.
    async fn audit(
        &self,
        req: &AuthRequest<'_>,
        event: EventKind,
        outcome: Outcome,
        subject: Option<&str>,
        reason: Option<&str>,
    ) {
        let stored = self
            .audit
            .record_durable(AuditEvent {
                actor: subject.map(str::to_string),
                subject: subject.map(str::to_string),
                client_ip: req.client_ip,
                user_agent: req.user_agent(),
                reason: reason.map(str::to_string),
                ..AuditEvent::new(self.clock.now_utc(), req.tenant.id.clone(), event, outcome)
            })
            .await;
        if !stored {
            tracing::error!(event = event.as_str(), "audit event could not be stored");
        }
    }

    /// The session behind the request's cookie, if any; audits sessions found ended.
    pub async fn lookup(
        &self,
        tenant: &Tenant,
        headers: &HeaderMap,
        client_ip: Option<IpAddr>,
    ) -> Result<Lookup, AuthError> {
        let Some(token) = cookie::single(headers, SESSION) else {
            return Ok(Lookup::None);
        };
        let (now, lookup) = loop {
            let now = self.clock.unix_secs();
            if let Some(identity) = self.sessions.cached(tenant, token, now) {
                return Ok(Lookup::Live(identity));
            }
            match self.sessions.miss(token) {
                Miss::Malformed => return Ok(Lookup::None),
                // Then the cache again: the lookup it waited for may have filled it.
                Miss::Wait(done) => done.await,
                Miss::Lead(lookup) => break (now, lookup),
            }
        };
        let sessions = Arc::clone(&self.sessions);
        let (tenant_owned, token) = (tenant.clone(), token.to_string());
        let found = Self::blocking(move || sessions.lookup(&tenant_owned, &token, now)).await;
        drop(lookup);
        let found = found?;
        if let Lookup::Ended(s) = &found {
            self.audit.record(AuditEvent {
                actor: Some(s.username.clone()),
                subject: Some(s.id.clone()),
                client_ip,
                reason: Some("timeout_or_account_disabled".into()),
                ..AuditEvent::new(
                    self.clock.now_utc(),
                    tenant.id.clone(),
                    EventKind::SessionExpired,
                    Outcome::Denied,
                )
            });
        }
        Ok(found)
    }

    /// The signed-in identity allowed to use routes (`Active` stage only).
    pub async fn identity(
        &self,
        tenant: &Tenant,
        headers: &HeaderMap,
        client_ip: Option<IpAddr>,
    ) -> Result<Option<Arc<Identity>>, AuthError> {
        Ok(match self.lookup(tenant, headers, client_ip).await? {
            Lookup::Live(id) if id.session.stage == Stage::Active => Some(id),
            _ => None,
        })
    }

    /// Answer a `/.auth/…` request. Errors become 503 pages: nothing fails open.
    pub async fn handle(
        &self,
        req: &AuthRequest<'_>,
        jwks: impl FnOnce() -> serde_json::Value,
    ) -> Reply {
        let result = match (req.method, req.path) {
            (&Method::GET, "/.auth/login") => self.login_form(req).await,
            (&Method::POST, "/.auth/login") => self.login(req).await,
            (&Method::GET, "/.auth/password") => self.password_form(req).await,
            (&Method::POST, "/.auth/password") => self.change_password(req).await,
            (&Method::GET, "/.auth/logout") => self.logout_form(req).await,
            (&Method::POST, "/.auth/logout") => self.logout(req).await,
            (&Method::GET, "/.auth/whoami") => self.whoami(req).await,
            (&Method::GET, "/.auth/mfa") => self.mfa_form(req).await,
            (&Method::POST, "/.auth/mfa") => self.mfa_verify(req).await,
            (&Method::GET, "/.auth/mfa/enroll") => self.enroll_form(req).await,
            (&Method::POST, "/.auth/mfa/enroll") => self.enroll_post(req).await,
            (&Method::GET, "/.auth/saml/metadata") => self.saml_metadata(req).await,
            (&Method::GET, "/.auth/saml/login") => self.saml_login(req).await,
            (&Method::POST, "/.auth/saml/acs") => self.saml_acs(req).await,
            (_, path) if path == "/.auth/admin" || path.starts_with("/.auth/admin/") => {
                self.admin(req).await
            }
            (&Method::GET, "/.auth/jwks.json") => {
                let mut reply = Reply::json(200, &jwks());
                reply
                    .headers
                    .retain(|(n, _)| n != http::header::CACHE_CONTROL);
                reply.push(http::header::CACHE_CONTROL, "public, max-age=300");
                Ok(reply)
            }
            (
                _,
                "/.auth/login"
                | "/.auth/password"
                | "/.auth/logout"
                | "/.auth/whoami"
                | "/.auth/jwks.json"
                | "/.auth/saml/metadata"
                | "/.auth/saml/login"
                | "/.auth/saml/acs",
            ) => Ok(error_reply(
                req,
                405,
                "method_not_allowed",
                "That method is not allowed here.",
            )),
            _ => Ok(error_reply(
                req,
                404,
                "not_found",
                "Nothing is served at this address.",
            )),
        };
        result.unwrap_or_else(|e| {
            tracing::error!("auth endpoint failed: {e}");
            error_reply(
                req,
                503,
                "unavailable",
                "Sign-in is unavailable right now. Please try again.",
            )
        })
    }

    /// `GET /.auth/login`: the form, with a fresh double-submit CSRF token.
    async fn login_form(&self, req: &AuthRequest<'_>) -> Result<Reply, AuthError> {
        let return_to = req
            .query_param("return_to")
            .and_then(|r| return_to::safe(&r, req.host))
            .unwrap_or_else(|| "/".into());
        if self
            .identity(req.tenant, req.headers, req.client_ip)
            .await?
            .is_some()
        {
            return Ok(Reply::redirect(302, &return_to));
        }
        Ok(self.login_page(req, &return_to, None, 200))
    }

    fn login_page(
        &self,
        req: &AuthRequest<'_>,
        return_to: &str,
        error: Option<(&str, &str)>,
        status: u16,
    ) -> Reply {
        let csrf = new_token();
        let (username, message) = error.unwrap_or(("", ""));
        let page = pages::login_page(&LoginPage {
            tenant_name: &req.tenant.display_name,
            csrf_token: &csrf,
            return_to,
            username,
            error: error.map(|_| message),
            password_enabled: req.tenant.login.password,
            sso: req.tenant.login.saml,
            break_glass: !req.tenant.login.break_glass.is_empty(),
        });
        Reply::html(status, page).cookie(cookie::set(LOGIN_CSRF, &csrf, "Strict"))
    }

    /// `POST /.auth/login`: verify the password and move the state machine.
    async fn login(&self, req: &AuthRequest<'_>) -> Result<Reply, AuthError> {
        let json = req.wants_json();
        let Some(fields) = Fields::parse(req) else {
            return Ok(error_reply(
                req,
                415,
                "unsupported_media_type",
                "Send the sign-in form.",
            ));
        };
        // Login CSRF: a form post must carry the token from its own cookie; a JSON post needs
        // a JSON content type, which no cross-site form can send without a CORS preflight.
        let csrf_ok = match req.content_type() {
            "application/json" => true,
            _ => {
                cookie::single(req.headers, LOGIN_CSRF).is_some_and(|c| same_token(c, &fields.csrf))
            }
        };
        if !req.same_origin() || !csrf_ok {
            self.audit(
                req,
                EventKind::LoginFailed,
                Outcome::Denied,
                None,
                Some("csrf"),
            )
            .await;
            return Ok(error_reply(
                req,
                403,
                "csrf",
                "This form expired. Go back, reload the page and try again.",
            ));
        }
        let return_to = return_to::safe(&fields.return_to, req.host).unwrap_or_else(|| "/".into());
        let username = fields.username.trim().to_string();
        // SSO-only tenants: no password is checked, except for the break-glass accounts.
        if !req.tenant.login.password_allowed_for(&username) {
            self.audit(
                req,
                EventKind::LoginFailed,
                Outcome::Denied,
                Some(&username),
                Some("password_login_disabled"),
            )
            .await;
            return Ok(if json {
                Reply::json_error(403, "password_login_disabled")
            } else {
                self.login_page(
                    req,
                    &return_to,
                    Some((
                        &username,
                        "Password sign-in is turned off for this organisation.",
                    )),
                    403,
                )
            });
        }
        let ticket = match self.gate(req, &username).await {
            Gate::Check(ticket) => ticket,
            Gate::Refused(reply) => return Ok(reply),
        };

        let user = if username.is_empty() || username.len() > 128 {
            None
        } else {
            let (store, tenant, name) = (
                Arc::clone(&self.store),
                req.tenant.id.clone(),
                username.clone(),
            );
            Self::blocking(move || store.user(&tenant, &name)).await?
        };
        // An IdP-provisioned user has no password here, whatever the store says.
        let usable_hash = user
            .as_ref()
            .filter(|u| !u.disabled && u.idp.is_none())
            .and_then(|u| u.password_hash.clone());
        let verified = self
            .hasher
            .verify(fields.password.clone(), usable_hash)
            .await;

        let user = match user {
            Some(u) if verified && !u.disabled => u,
            other => {
                let reason = match other {
                    None => "unknown_user",
                    Some(u) if u.disabled => "account_disabled",
                    Some(_) => "bad_password",
                };
                self.audit(
                    req,
                    EventKind::LoginFailed,
                    Outcome::Failure,
                    Some(&username),
                    Some(reason),
                )
                .await;
                self.settle(req, ticket, &username, false).await;
                return Ok(if json {
                    Reply::json_error(401, "invalid_credentials")
                } else {
                    self.login_page(req, &return_to, Some((&username, BAD_LOGIN)), 401)
                });
            }
        };

        let now = self.clock.unix_secs();
        let stage = after_password(
            req.tenant,
            user.password_changed_at,
            user.totp_secret.is_some(),
            now,
        );
        // A second factor still owed is checked (and budgeted) on its own; only a finished
        // login clears the streak, so a known password cannot reset a code guesser's count.
        if matches!(stage, Stage::SecondFactor | Stage::EnrollMfa) {
            self.settle(req, ticket, &username, false).await;
        } else {
            self.settle(req, ticket, &username, true).await;
        }
        let previous = self.lookup(req.tenant, req.headers, req.client_ip).await?;
        let (token, session) = self
            .advance(
                req,
                previous,
                &user.username,
                stage,
                vec!["pwd".into()],
                &return_to,
                now,
            )
            .await?;
        self.audit(
            req,
            EventKind::LoginSucceeded,
            Outcome::Success,
            Some(&user.username),
            Some(stage.as_str()),
        )
        .await;
        Ok(self
            .next_step(req, &token, &session)
            .cookie(cookie::clear(LOGIN_CSRF)))
    }

    /// Issue the session for the next stage, ending the one presented (rotation).
    #[allow(clippy::too_many_arguments)]
    async fn advance(
        &self,
        req: &AuthRequest<'_>,
        previous: Lookup,
        username: &str,
        stage: Stage,
        amr: Vec<String>,
        return_to: &str,
        now: u64,
    ) -> Result<(String, Session), AuthError> {
        let sessions = Arc::clone(&self.sessions);
        let (tenant, name, back) = (
            req.tenant.clone(),
            username.to_string(),
            return_to.to_string(),
        );
        Self::blocking(move || {
            match previous {
                Lookup::Live(old) => {
                    sessions.end(&old.session)?;
                }
                Lookup::Ended(old) => {
                    sessions.end(&old)?;
                }
                Lookup::None => {}
            }
            sessions.issue(&tenant, &name, stage, amr, &back, now)
        })
        .await
    }

    /// The answer after a transition: where the client goes next, with the new cookie.
    fn next_step(&self, req: &AuthRequest<'_>, token: &str, session: &Session) -> Reply {
        let (location, next) = match session.stage {
            Stage::Active => (session.return_to.as_str(), "done"),
            Stage::PasswordChange => ("/.auth/password", "password_change"),
            Stage::SecondFactor => ("/.auth/mfa", "second_factor"),
            Stage::EnrollMfa => ("/.auth/mfa/enroll", "enroll_mfa"),
        };
        let reply = if req.wants_json() {
            Reply::json(
                200,
                &serde_json::json!({ "next": next, "return_to": location, "csrf": session.csrf }),
            )
        } else {
            Reply::redirect(303, location)
        };
        reply.cookie(cookie::set(SESSION, token, "Lax"))
    }

    /// `GET /.auth/password`: the change form, for a session owing a change or an active one.
    async fn password_form(&self, req: &AuthRequest<'_>) -> Result<Reply, AuthError> {
        match self.lookup(req.tenant, req.headers, req.client_ip).await? {
            Lookup::Live(id)
                if matches!(id.session.stage, Stage::PasswordChange | Stage::Active) =>
            {
                Ok(Reply::html(
                    200,
                    pages::password_change_page(
                        &id.session.csrf,
                        &id.session.return_to,
                        req.tenant.password.min_length,
                        None,
                    ),
                ))
            }
            _ => Ok(login_redirect(req, "/")),
        }
    }

    /// `POST /.auth/password`: check the current password, set the new one, end every other
    /// session of the user and continue the login with a fresh session.
    async fn change_password(&self, req: &AuthRequest<'_>) -> Result<Reply, AuthError> {
        let json = req.wants_json();
        let id = match self.lookup(req.tenant, req.headers, req.client_ip).await? {
            Lookup::Live(id)
                if matches!(id.session.stage, Stage::PasswordChange | Stage::Active) =>
            {
                id
            }
            _ => return Ok(not_signed_in(req, "/")),
        };
        let fields = match self.session_form(req, &id, "password") {
            Ok(fields) => fields,
            Err(reply) => return Ok(reply),
        };
        let session = &id.session;
        let (store, tenant, name) = (
            Arc::clone(&self.store),
            req.tenant.id.clone(),
            session.username.clone(),
        );
        let user = Self::blocking(move || store.user(&tenant, &name)).await?;
        let current_ok = self
            .hasher
            .verify(
                fields.current_password.clone(),
                user.as_ref().and_then(|u| u.password_hash.clone()),
            )
            .await;
        let problem = if !current_ok {
            Some((
                "wrong_current_password",
                "The current password is not correct.".to_string(),
            ))
        } else if !password::same_password(&fields.new_password, &fields.confirm_password) {
            Some((
                "confirmation_mismatch",
                "The new passwords do not match.".to_string(),
            ))
        } else if password::same_password(&fields.new_password, &fields.current_password) {
            Some((
                "password_reused",
                "Choose a password different from the current one.".to_string(),
            ))
        } else {
            req.tenant
                .password
                .check(&fields.new_password, &session.username)
                .err()
                .map(|e| (e.code(), e.to_string()))
        };
        if let Some((code, message)) = problem {
            self.audit(
                req,
                EventKind::PasswordChanged,
                Outcome::Failure,
                Some(&session.username),
                Some(code),
            )
            .await;
            return Ok(if json {
                Reply::json_error(400, code)
            } else {
                Reply::html(
                    400,
                    pages::password_change_page(
                        &session.csrf,
                        &session.return_to,
                        req.tenant.password.min_length,
                        Some(&message),
                    ),
                )
            });
        }
        let phc = self
            .hasher
            .hash(fields.new_password.clone())
            .await
            .map_err(|_| AuthError::Worker)?;
        let now = self.clock.unix_secs();
        let (store, sessions) = (Arc::clone(&self.store), Arc::clone(&self.sessions));
        let (tenant, name) = (req.tenant.id.clone(), session.username.clone());
        let revoked = Self::blocking(move || {
            store.set_password(&tenant, &name, &phc, now)?;
            // ASVS 3.3.3: a password change ends every other session of the account.
            sessions.end_all(&tenant, &name, None)
        })
        .await?;
        self.audit(
            req,
            EventKind::PasswordChanged,
            Outcome::Success,
            Some(&session.username),
            None,
        )
        .await;
        if revoked > 1 {
            self.audit(
                req,
                EventKind::SessionRevoked,
                Outcome::Success,
                Some(&session.username),
                Some("password_changed"),
            )
            .await;
        }
        // An active user stays active; one forced to change continues the login.
        let stage = match session.stage {
            Stage::Active => Stage::Active,
            _ => after_password_settled(
                req.tenant,
                user.as_ref().is_some_and(|u| u.totp_secret.is_some()),
            ),
        };
        let (token, next) = self
            .advance(
                req,
                Lookup::None,
                &session.username,
                stage,
                session.amr.clone(),
                &session.return_to,
                now,
            )
            .await?;
        Ok(self.next_step(req, &token, &next))
    }

    fn session_csrf_ok(&self, req: &AuthRequest<'_>, id: &Identity, fields: &Fields) -> bool {
        let header = req
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        same_token(&id.session.csrf, &fields.csrf) || same_token(&id.session.csrf, header)
    }

    /// The fields of a state-changing form posted by a signed-in session, after the checks
    /// every such form gets: a known body type, same origin, and the session's CSRF token.
    fn session_form(
        &self,
        req: &AuthRequest<'_>,
        id: &Identity,
        what: &str,
    ) -> Result<Fields, Reply> {
        let Some(fields) = Fields::parse(req) else {
            return Err(error_reply(
                req,
                415,
                "unsupported_media_type",
                &format!("Send the {what} form."),
            ));
        };
        if !req.same_origin() || !self.session_csrf_ok(req, id, &fields) {
            return Err(csrf_reply(req));
        }
        Ok(fields)
    }

    /// `GET /.auth/logout`: a confirmation form (logout is a POST, so no link can sign a
    /// user out from another site).
    async fn logout_form(&self, req: &AuthRequest<'_>) -> Result<Reply, AuthError> {
        Ok(
            match self.lookup(req.tenant, req.headers, req.client_ip).await? {
                Lookup::Live(id) => Reply::html(200, pages::logout_page(&id.session.csrf)),
                _ => login_redirect(req, "/"),
            },
        )
    }

    /// `POST /.auth/logout`: end the session server-side and clear the cookie.
    async fn logout(&self, req: &AuthRequest<'_>) -> Result<Reply, AuthError> {
        let json = req.wants_json();
        let id = match self.lookup(req.tenant, req.headers, req.client_ip).await? {
            Lookup::Live(id) => id,
            _ => {
                let reply = if json {
                    Reply::json(200, &serde_json::json!({ "ok": true }))
                } else {
                    login_redirect(req, "/")
                };
                return Ok(reply.cookie(cookie::clear(SESSION)));
            }
        };
        let fields = Fields::parse(req).unwrap_or_default();
        if !req.same_origin() || !self.session_csrf_ok(req, &id, &fields) {
            return Ok(error_reply(
                req,
                403,
                "csrf",
                "This form expired. Go back, reload the page and try again.",
            ));
        }
        let sessions = Arc::clone(&self.sessions);
        let session = id.session.clone();
        Self::blocking(move || sessions.end(&session)).await?;
        self.tokens.invalidate_sid(&id.session.id);
        self.audit(
            req,
            EventKind::Logout,
            Outcome::Success,
            Some(&id.session.username),
            None,
        )
        .await;
        let slo = self.saml_logout_target(req.tenant, &id.session.amr);
        let reply = match (json, slo) {
            (true, slo) => Reply::json(200, &serde_json::json!({ "ok": true, "idp_logout": slo })),
            (false, Some(slo)) => Reply::redirect(303, &slo),
            (false, None) => Reply::redirect(303, "/.auth/login"),
        };
        Ok(reply.cookie(cookie::clear(SESSION)))
    }

    /// `GET /.auth/whoami`: the signed-in identity as JSON.
    async fn whoami(&self, req: &AuthRequest<'_>) -> Result<Reply, AuthError> {
        Ok(
            match self
                .identity(req.tenant, req.headers, req.client_ip)
                .await?
            {
                Some(id) => {
                    let s = &id.session;
                    Reply::json(
                        200,
                        &serde_json::json!({
                            "user": s.username,
                            "tenant": s.tenant,
                            "roles": id.roles,
                            "amr": s.amr,
                            "sid": s.id,
                            "expires_at": s.expires_at,
                            "idle_timeout": s.idle_timeout,
                            "csrf": s.csrf,
                        }),
                    )
                }
                None => Reply::json_error(401, "unauthenticated"),
            },
        )
    }
}

/// Where to send a browser that needs to sign in, keeping where it was going.
pub fn login_redirect(req: &AuthRequest<'_>, return_to: &str) -> Reply {
    login_redirect_to(return_to, req.wants_json())
}

/// The answer to an unauthenticated request for `return_to`: 302 to the login form for
/// browsers, 401 JSON for API clients.
pub fn login_redirect_to(return_to: &str, json: bool) -> Reply {
    if json {
        return Reply::json_error(401, "unauthenticated");
    }
    let encoded: String = form_urlencoded::byte_serialize(return_to.as_bytes()).collect();
    Reply::redirect(302, &format!("/.auth/login?return_to={encoded}"))
}

/// The answer to a form whose CSRF check failed.
fn csrf_reply(req: &AuthRequest<'_>) -> Reply {
    error_reply(
        req,
        403,
        "csrf",
        "This form expired. Go back, reload the page and try again.",
    )
}

/// The answer to a request that needs a signed-in session and has none.
fn not_signed_in(req: &AuthRequest<'_>, return_to: &str) -> Reply {
    if req.wants_json() {
        Reply::json_error(401, "unauthenticated")
    } else {
        login_redirect(req, return_to)
    }
}

fn error_reply(req: &AuthRequest<'_>, status: u16, code: &str, message: &str) -> Reply {
    if req.wants_json() {
        Reply::json_error(status, code)
    } else {
        let title = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        Reply::html(status, pages::message_page(title, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_in_constant_time_and_never_match_empty() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("", ""));
        assert!(!same_token("abc", "abcd"));
    }

    #[test]
    fn unauthenticated_browsers_are_sent_to_login_with_return_to() {
        let r = login_redirect_to("/app/x?y=1&z=2", false);
        assert_eq!(r.status, 302);
        let loc = r
            .headers
            .iter()
            .find(|(n, _)| n == http::header::LOCATION)
            .map(|(_, v)| v.to_str().unwrap_or(""));
        assert_eq!(
            loc,
            Some("/.auth/login?return_to=%2Fapp%2Fx%3Fy%3D1%26z%3D2")
        );
        assert_eq!(login_redirect_to("/app", true).status, 401);
    }
}
