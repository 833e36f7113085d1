//! The operator API under `/v1/` (the bearer token is checked by the listener before any of
//! this runs): tenants, users, sessions, second-factor reset, unlock, the audit log across
//! tenants, and config reload. JSON out; errors are `{"error": code}` with their status.
//!
//! `docs/openapi.json` describes exactly these routes and is served at
//! [`OPENAPI_PATH`] without a token; `tests/admin.rs` holds the two together. Every action is
//! audited durably with actor `operator-api`.

use std::net::IpAddr;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;

use super::json;
use crate::audit::filter::AuditFilter;
use crate::audit::{AuditEvent, EventKind, Outcome, OPERATOR_TENANT};
use crate::auth::flow::{Actor, UserAction};
use crate::config::MfaPolicy;
use crate::gateway::state::Shared;
use crate::store::{valid_username, OperatorAuditQuery, DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT};

/// Where the OpenAPI document is served (no token needed).
pub const OPENAPI_PATH: &str = "/v1/openapi.json";
/// The checked-in OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");
/// The actor of every action taken through this API.
pub const ACTOR: &str = "operator-api";

/// One operator API request, as far as the API reads it (no body: no route takes one).
#[derive(Debug, Clone, Copy)]
pub struct ApiRequest<'a> {
    /// Method.
    pub method: &'a Method,
    /// Path as received (segments are percent-decoded here).
    pub path: &'a str,
    /// Raw query.
    pub query: Option<&'a str>,
    /// The client's `User-Agent`.
    pub user_agent: Option<&'a str>,
    /// The connecting address.
    pub peer: Option<IpAddr>,
}

impl ApiRequest<'_> {
    fn actor(&self) -> Actor {
        Actor {
            name: ACTOR.to_string(),
            client_ip: self.peer,
            user_agent: self.user_agent.map(str::to_string),
            via: "operator_api",
        }
    }
}

/// The routes, by path shape, with their decoded tenant and user segments.
enum Route {
    Tenants,
    Users(String),
    Sessions(String, String),
    ResetMfa(String, String),
    Unlock(String, String),
    Audit,
    Reload,
}

/// `{"error": code}` with `status`.
fn error(status: StatusCode, code: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": code }))
}

/// 405 naming the methods the path takes.
fn not_allowed(allow: &str) -> Response<Full<Bytes>> {
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    if let Ok(value) = http::HeaderValue::from_str(allow) {
        resp.headers_mut().insert(http::header::ALLOW, value);
    }
    resp
}

/// 503 for a store or limiter failure (logged; the client learns only that it failed).
fn unavailable(what: &str, e: &dyn std::fmt::Display) -> Response<Full<Bytes>> {
    tracing::error!("operator API: {what} failed: {e}");
    error(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
}

/// A path segment, percent-decoded; `None` if it is not UTF-8 or holds a control character.
fn segment(raw: &str) -> Option<String> {
    let text = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?;
    (!text.chars().any(char::is_control)).then(|| text.into_owned())
}

/// The route a path names and the methods it takes.
fn route(path: &str) -> Option<(Route, &'static str)> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let pair = |t: &str, u: &str| Some((segment(t)?, segment(u)?));
    Some(match parts.as_slice() {
        ["v1", "tenants"] => (Route::Tenants, "GET"),
        ["v1", "tenants", t, "users"] => (Route::Users(segment(t)?), "GET"),
        ["v1", "tenants", t, "users", u, "sessions"] => {
            let (t, u) = pair(t, u)?;
            (Route::Sessions(t, u), "GET, DELETE")
        }
        ["v1", "tenants", t, "users", u, "reset-mfa"] => {
            let (t, u) = pair(t, u)?;
            (Route::ResetMfa(t, u), "POST")
        }
        ["v1", "tenants", t, "users", u, "unlock"] => {
            let (t, u) = pair(t, u)?;
            (Route::Unlock(t, u), "POST")
        }
        ["v1", "audit"] => (Route::Audit, "GET"),
        ["v1", "reload"] => (Route::Reload, "POST"),
        _ => return None,
    })
}

/// `GET /v1/openapi.json`: the document of this API.
pub fn openapi(method: &Method) -> Response<Full<Bytes>> {
    if method != Method::GET {
        return not_allowed("GET");
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Answer one `/v1/…` request whose bearer token was accepted.
pub async fn handle(shared: &Shared, req: &ApiRequest<'_>) -> Response<Full<Bytes>> {
    let Some((route, allow)) = route(req.path) else {
        return error(StatusCode::NOT_FOUND, "not_found");
    };
    if !allow.split(", ").any(|m| m == req.method.as_str()) {
        return not_allowed(allow);
    }
    if let Route::Users(tenant)
    | Route::Sessions(tenant, _)
    | Route::ResetMfa(tenant, _)
    | Route::Unlock(tenant, _) = &route
    {
        if !is_known_tenant(shared, tenant) {
            return error(StatusCode::NOT_FOUND, "unknown_tenant");
        }
    }
    match route {
        Route::Tenants => tenants(shared),
        Route::Users(tenant) => users(shared, &tenant).await,
        Route::Sessions(tenant, user) if req.method == Method::GET => {
            sessions(shared, &tenant, &user).await
        }
        Route::Sessions(tenant, user) => {
            act(shared, req, &tenant, &user, UserAction::RevokeSessions).await
        }
        Route::ResetMfa(tenant, user) => {
            act(shared, req, &tenant, &user, UserAction::ResetMfa).await
        }
        Route::Unlock(tenant, user) => unlock(shared, req, &tenant, &user).await,
        Route::Audit => audit(shared, req).await,
        Route::Reload => reload(shared, req).await,
    }
}

/// Whether a tenant with this id is configured.
fn is_known_tenant(shared: &Shared, id: &str) -> bool {
    shared
        .runtime
        .load()
        .config
        .tenants
        .iter()
        .any(|t| t.id == id)
}

fn mfa_name(mfa: MfaPolicy) -> &'static str {
    match mfa {
        MfaPolicy::Off => "off",
        MfaPolicy::Optional => "optional",
        MfaPolicy::Required => "required",
    }
}

/// `GET /v1/tenants`: every configured tenant.
fn tenants(shared: &Shared) -> Response<Full<Bytes>> {
    let rt = shared.runtime.load();
    let list: Vec<serde_json::Value> = rt
        .config
        .tenants
        .iter()
        .map(|t| {
            serde_json::json!({
                "id": t.id,
                "display_name": t.display_name,
                "hosts": t.hosts,
                "mfa": mfa_name(t.mfa),
                "audit_retention_days": t.audit_retention.as_secs() / 86_400,
            })
        })
        .collect();
    json(StatusCode::OK, &serde_json::json!({ "tenants": list }))
}

/// `GET /v1/tenants/{t}/users`.
async fn users(shared: &Shared, tenant: &str) -> Response<Full<Bytes>> {
    match shared.auth.user_summaries(tenant).await {
        Ok(users) => json(
            StatusCode::OK,
            &serde_json::json!({ "tenant": tenant, "users": users }),
        ),
        Err(e) => unavailable("list users", &e),
    }
}

/// `GET /v1/tenants/{t}/users/{u}/sessions`: the live sessions.
async fn sessions(shared: &Shared, tenant: &str, user: &str) -> Response<Full<Bytes>> {
    if !valid_username(user) {
        return error(StatusCode::BAD_REQUEST, "invalid_username");
    }
    match shared.auth.live_sessions(tenant, user).await {
        Ok(Some(sessions)) => json(
            StatusCode::OK,
            &serde_json::json!({ "tenant": tenant, "user": user, "sessions": sessions }),
        ),
        Ok(None) => error(StatusCode::NOT_FOUND, "unknown_user"),
        Err(e) => unavailable("list sessions", &e),
    }
}

/// `DELETE …/sessions`, `POST …/reset-mfa`.
async fn act(
    shared: &Shared,
    req: &ApiRequest<'_>,
    tenant: &str,
    user: &str,
    action: UserAction,
) -> Response<Full<Bytes>> {
    if !valid_username(user) {
        return error(StatusCode::BAD_REQUEST, "invalid_username");
    }
    match shared
        .auth
        .user_action(tenant, user, action, &req.actor())
        .await
    {
        Ok(Some(outcome)) => json(StatusCode::OK, &serde_json::json!(outcome)),
        Ok(None) => error(StatusCode::NOT_FOUND, "unknown_user"),
        Err(e) => unavailable(action.as_str(), &e),
    }
}

/// `POST …/unlock`: clear the brute-force lock of an account name (which need not exist:
/// names without an account are limited too).
async fn unlock(
    shared: &Shared,
    req: &ApiRequest<'_>,
    tenant: &str,
    user: &str,
) -> Response<Full<Bytes>> {
    if user.is_empty() || user.len() > 128 {
        return error(StatusCode::BAD_REQUEST, "invalid_username");
    }
    match shared.auth.limiter.unlock(tenant, user).await {
        Ok(was_locked) => {
            let reason = if was_locked {
                "was_locked"
            } else {
                "was_not_locked"
            };
            record(
                shared,
                req,
                tenant,
                EventKind::AccountUnlocked,
                Outcome::Success,
                Some(user),
                reason,
            )
            .await;
            json(
                StatusCode::OK,
                &serde_json::json!({ "unlocked": true, "was_locked": was_locked }),
            )
        }
        Err(e) => {
            tracing::error!("unlock failed: {e}");
            error(StatusCode::SERVICE_UNAVAILABLE, "limiter_unavailable")
        }
    }
}

/// `GET /v1/audit`: records of every tenant, or of `tenant`, newest first.
async fn audit(shared: &Shared, req: &ApiRequest<'_>) -> Response<Full<Bytes>> {
    let filter = match AuditFilter::from_query(req.query, shared.clock.now_utc()) {
        Ok(filter) => filter,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.code()),
    };
    let tenant = form_urlencoded::parse(req.query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "tenant")
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty());
    if let Some(t) = &tenant {
        if t != OPERATOR_TENANT && !is_known_tenant(shared, t) {
            return error(StatusCode::NOT_FOUND, "unknown_tenant");
        }
    }
    let limit = filter.limit.unwrap_or(DEFAULT_QUERY_LIMIT);
    let query = OperatorAuditQuery {
        tenant,
        since: filter.since,
        until: filter.until,
        event: filter.event,
        user: filter.user,
        before_position: filter.before,
        // One more than asked says whether an older page exists.
        limit: limit.saturating_add(1).min(MAX_QUERY_LIMIT),
    };
    match shared.auth.operator_audit(query).await {
        Ok(mut records) => {
            let more = records.len() > limit as usize || records.len() == MAX_QUERY_LIMIT as usize;
            records.truncate(limit as usize);
            let next = if more {
                records.last().map(|r| r.position)
            } else {
                None
            };
            json(
                StatusCode::OK,
                &serde_json::json!({ "events": records, "next_before": next }),
            )
        }
        Err(e) => unavailable("audit query", &e),
    }
}

/// `POST /v1/reload`: ask the reloader to re-read the configuration, as SIGHUP does. The
/// result is audited by the reloader (`config_reloaded` / `config_rejected`).
async fn reload(shared: &Shared, req: &ApiRequest<'_>) -> Response<Full<Bytes>> {
    // The reloader registered its SIGHUP flag at start-up, before this listener ran.
    let raised = signal_hook::low_level::raise(signal_hook::consts::SIGHUP);
    let outcome = if raised.is_ok() {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    record(
        shared,
        req,
        OPERATOR_TENANT,
        EventKind::ConfigReloadRequested,
        outcome,
        None,
        "operator_api",
    )
    .await;
    match raised {
        Ok(()) => json(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "reload": "requested" }),
        ),
        Err(e) => unavailable("reload", &e),
    }
}

/// Record an operator action and wait until it is stored.
async fn record(
    shared: &Shared,
    req: &ApiRequest<'_>,
    tenant: &str,
    event: EventKind,
    outcome: Outcome,
    subject: Option<&str>,
    reason: &str,
) {
    let stored = shared
        .audit
        .record_durable(AuditEvent {
            actor: Some(ACTOR.into()),
            subject: subject.map(str::to_string),
            client_ip: req.peer,
            user_agent: req.user_agent.map(str::to_string),
            reason: Some(reason.into()),
            ..AuditEvent::new(shared.clock.now_utc(), tenant.to_string(), event, outcome)
        })
        .await;
    if !stored {
        tracing::error!(event = event.as_str(), "audit event could not be stored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_take_their_documented_methods_only() {
        let cases = [
            ("/v1/tenants", "GET"),
            ("/v1/tenants/acme/users", "GET"),
            ("/v1/tenants/acme/users/bob/sessions", "GET, DELETE"),
            ("/v1/tenants/acme/users/bob/reset-mfa", "POST"),
            ("/v1/tenants/acme/users/bob/unlock", "POST"),
            ("/v1/audit", "GET"),
            ("/v1/reload", "POST"),
        ];
        for (path, methods) in cases {
            let (_, allow) = route(path).unwrap_or_else(|| panic!("{path} routed"));
            assert_eq!(allow, methods, "{path}");
        }
        for unknown in [
            "/v1",
            "/v1/",
            "/v1/tenants/",
            "/v1/tenants/acme",
            "/v1/tenants/acme/users/bob",
            "/v1/tenants/acme/users/bob/disable",
            "/v1/audit/",
            "/v2/tenants",
            "/v1/tenants/acme/users/%0a/unlock",
        ] {
            assert!(route(unknown).is_none(), "{unknown}");
        }
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        match route("/v1/tenants/acme/users/bob%40corp/unlock") {
            Some((Route::Unlock(t, u), _)) => {
                assert_eq!((t.as_str(), u.as_str()), ("acme", "bob@corp"))
            }
            _ => panic!("unlock route"),
        }
    }

    #[test]
    fn the_served_document_is_json_openapi_3() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert!(doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.0")));
        assert!(doc["paths"][OPENAPI_PATH]["get"].is_object());
        let documented: Vec<&str> = doc["components"]["schemas"]["EventKind"]["enum"]
            .as_array()
            .map(|names| names.iter().filter_map(|n| n.as_str()).collect())
            .unwrap_or_default();
        let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            documented, known,
            "docs/openapi.json lists every event type"
        );
    }
}
