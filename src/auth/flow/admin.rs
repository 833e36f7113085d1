//! Tenant administration at `/.auth/admin/…`, and the account actions the operator API
//! shares with it.
//!
//! Who: a signed-in user (an `Active` session) of the tenant who holds the [`ADMIN_ROLE`]
//! role. Which tenant: always the request's own, resolved from Host, which also scoped the
//! session lookup (a session of another tenant is no session here). No query parameter, path
//! segment or body field names a tenant, so none can reach another one; a username taken from
//! the path is validated and looked up within that tenant only (unknown → 404).
//!
//! Every state-changing action is a POST from the same origin carrying the session's CSRF
//! token (field `csrf` or header `X-CSRF-Token`), and is audited durably (the admin as actor,
//! the account as subject) before the answer goes out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use serde::Serialize;

use super::{login_redirect_to, Auth, AuthError, AuthRequest, Fields};
use crate::audit::filter::AuditFilter;
use crate::audit::{AuditEvent, AuditRecord, EventKind, Outcome};
use crate::auth::pages::{self, AdminAuditPage, AdminUserRow};
use crate::auth::reply::Reply;
use crate::auth::session::Identity;
use crate::store::{
    valid_username, AuditQuery, OperatorAuditQuery, PositionedRecord, MAX_QUERY_LIMIT,
};

/// The tenant role that may use `/.auth/admin/…`.
pub const ADMIN_ROLE: &str = "admin";
/// Audit records per page, unless a JSON client asks for another `limit`.
pub const PAGE_SIZE: u32 = 50;
/// Most rows one CSV export holds; an `X-Next-Before` header says where to continue.
const CSV_MAX_ROWS: usize = 10_000;
/// Where the admin pages live.
const PREFIX: &str = "/.auth/admin";

/// An action on an account, by a tenant admin or the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserAction {
    /// Disable the account and end its sessions.
    Disable,
    /// Enable a disabled account.
    Enable,
    /// Remove the second factor (lost device) and end the sessions it protected.
    ResetMfa,
    /// End every session of the account.
    RevokeSessions,
}

impl UserAction {
    /// The action named by the last path segment.
    pub fn from_path(segment: &str) -> Option<Self> {
        match segment {
            "disable" => Some(Self::Disable),
            "enable" => Some(Self::Enable),
            "reset-mfa" => Some(Self::ResetMfa),
            "revoke-sessions" => Some(Self::RevokeSessions),
            _ => None,
        }
    }

    /// The path segment (and JSON name) of the action.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Enable => "enable",
            Self::ResetMfa => "reset-mfa",
            Self::RevokeSessions => "revoke-sessions",
        }
    }

    fn event(self) -> EventKind {
        match self {
            Self::Disable => EventKind::UserDisabled,
            Self::Enable => EventKind::UserEnabled,
            Self::ResetMfa => EventKind::MfaReset,
            Self::RevokeSessions => EventKind::SessionRevoked,
        }
    }
}

/// Who carries out an account action, as its audit record names them.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The admin's username, or `operator-api`.
    pub name: String,
    /// Where the request came from.
    pub client_ip: Option<IpAddr>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
    /// The reason code recorded with the action (`tenant_admin`, `operator_api`).
    pub via: &'static str,
}

/// What an account action did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionOutcome {
    /// The account.
    pub user: String,
    /// The action (`disable`, `enable`, `reset-mfa`, `revoke-sessions`).
    pub action: &'static str,
    /// Whether the account changed (false: it already was that way).
    pub changed: bool,
    /// How many sessions ended.
    pub sessions_ended: u64,
}

/// One account as administrators see it (no password hash, no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserSummary {
    /// Username.
    pub username: String,
    /// Roles.
    pub roles: Vec<String>,
    /// Whether the account is disabled.
    pub disabled: bool,
    /// Whether two-step verification is on.
    pub mfa: bool,
    /// Live sessions.
    pub sessions: u64,
}

/// A live session as administrators see it: never the token hash, CSRF token or a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionSummary {
    /// Public session id (the JWT `sid`); not a credential.
    pub id: String,
    /// Login stage.
    pub stage: &'static str,
    /// Authentication methods used.
    pub amr: Vec<String>,
    /// Unix seconds of sign-in.
    pub created_at: u64,
    /// Unix seconds of the last use (to the minute).
    pub last_seen: u64,
    /// Unix seconds of the absolute timeout.
    pub expires_at: u64,
}

/// How an admin page answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Html,
    Json,
    Csv,
}

impl Format {
    fn of(req: &AuthRequest<'_>) -> Self {
        match req.query_param("format").as_deref() {
            Some("json") => Self::Json,
            Some("csv") => Self::Csv,
            _ if req.wants_json() => Self::Json,
            _ => Self::Html,
        }
    }
}

/// An error as a page or as JSON `{"error": code}`.
fn fail(json: bool, status: u16, code: &str, message: &str) -> Reply {
    if json {
        Reply::json_error(status, code)
    } else {
        let title = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        Reply::html(status, pages::message_page(title, message))
    }
}

/// `/users/{name}/{action}` → the percent-decoded name (unvalidated) and the action.
fn user_action_path(rest: &str) -> Option<(String, UserAction)> {
    let (name, action) = rest.strip_prefix("/users/")?.split_once('/')?;
    let action = UserAction::from_path(action)?;
    let name = percent_encoding::percent_decode_str(name)
        .decode_utf8()
        .ok()?
        .into_owned();
    Some((name, action))
}

/// RFC 4180 cell, always quoted; a cell a spreadsheet would read as a formula (leading
/// `= + - @`, tab or CR) is prefixed with `'` (OWASP "CSV Injection").
fn csv_cell(value: &str) -> String {
    let guard = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        "'"
    } else {
        ""
    };
    format!("\"{guard}{}\"", value.replace('"', "\"\""))
}

/// Columns of the CSV export, in order.
const CSV_HEADER: [&str; 12] = [
    "seq",
    "time",
    "tenant",
    "event",
    "outcome",
    "actor",
    "subject",
    "client_ip",
    "user_agent",
    "request_id",
    "reason",
    "hash",
];

fn csv_row(out: &mut String, record: &AuditRecord) {
    let e = &record.event;
    let time = e
        .time
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let ip = e.client_ip.map(|ip| ip.to_string());
    let cells = [
        Some(record.seq.to_string()),
        Some(time),
        Some(e.tenant.clone()),
        Some(e.event.as_str().to_string()),
        Some(e.outcome.as_str().to_string()),
        e.actor.clone(),
        e.subject.clone(),
        ip,
        e.user_agent.clone(),
        e.request_id.clone(),
        e.reason.clone(),
        Some(record.hash.to_string()),
    ];
    let line: Vec<String> = cells
        .iter()
        .map(|c| csv_cell(c.as_deref().unwrap_or("")))
        .collect();
    out.push_str(&line.join(","));
    out.push_str("\r\n");
}

impl Auth {
    /// Record an administrative event and wait until it is stored.
    async fn record_action(
        &self,
        tenant: &str,
        event: EventKind,
        outcome: Outcome,
        actor: &Actor,
        subject: Option<&str>,
        reason: Option<&str>,
    ) {
        let stored = self
            .audit
            .record_durable(AuditEvent {
                actor: Some(actor.name.clone()),
                subject: subject.map(str::to_string),
                client_ip: actor.client_ip,
                user_agent: actor.user_agent.clone(),
                reason: reason.map(str::to_string),
                ..AuditEvent::new(self.clock.now_utc(), tenant.to_string(), event, outcome)
            })
            .await;
        if !stored {
            tracing::error!(event = event.as_str(), "audit event could not be stored");
        }
    }

    /// Every account of `tenant` with its live session count, by name.
    pub async fn user_summaries(&self, tenant: &str) -> Result<Vec<UserSummary>, AuthError> {
        let store = Arc::clone(&self.store);
        let tenant = tenant.to_string();
        let now = self.clock.unix_secs();
        Self::blocking(move || {
            let mut live: HashMap<String, u64> = HashMap::new();
            for s in store.sessions_of(&tenant, None)? {
                if s.is_live(now) {
                    *live.entry(s.username).or_default() += 1;
                }
            }
            Ok(store
                .users(&tenant)?
                .into_iter()
                .map(|u| UserSummary {
                    sessions: live.get(&u.username).copied().unwrap_or(0),
                    mfa: u.totp_secret.is_some(),
                    disabled: u.disabled,
                    roles: u.roles,
                    username: u.username,
                })
                .collect())
        })
        .await
    }

    /// The live sessions of one account, oldest first; `None` if `tenant` has no such user.
    pub async fn live_sessions(
        &self,
        tenant: &str,
        username: &str,
    ) -> Result<Option<Vec<SessionSummary>>, AuthError> {
        if !valid_username(username) {
            return Ok(None);
        }
        let store = Arc::clone(&self.store);
        let (tenant, name) = (tenant.to_string(), username.to_string());
        let now = self.clock.unix_secs();
        Self::blocking(move || {
            if store.user(&tenant, &name)?.is_none() {
                return Ok(None);
            }
            Ok(Some(
                store
                    .sessions_of(&tenant, Some(&name))?
                    .into_iter()
                    .filter(|s| s.is_live(now))
                    .map(|s| SessionSummary {
                        id: s.id,
                        stage: s.stage.as_str(),
                        amr: s.amr,
                        created_at: s.created_at,
                        last_seen: s.last_seen,
                        expires_at: s.expires_at,
                    })
                    .collect(),
            ))
        })
        .await
    }

    /// Carry out `action` on `username` of `tenant` and audit it durably; `None` if the
    /// tenant has no such user (nothing is changed or recorded then).
    pub async fn user_action(
        &self,
        tenant: &str,
        username: &str,
        action: UserAction,
        actor: &Actor,
    ) -> Result<Option<ActionOutcome>, AuthError> {
        if !valid_username(username) {
            return Ok(None);
        }
        let (store, sessions) = (Arc::clone(&self.store), Arc::clone(&self.sessions));
        let (t, u) = (tenant.to_string(), username.to_string());
        let done = Self::blocking(move || {
            let Some(user) = store.user(&t, &u)? else {
                return Ok(None);
            };
            Ok(Some(match action {
                UserAction::Disable => {
                    store.set_disabled(&t, &u, true)?;
                    (!user.disabled, sessions.end_all(&t, &u, None)?)
                }
                UserAction::Enable => {
                    store.set_disabled(&t, &u, false)?;
                    (user.disabled, 0)
                }
                UserAction::ResetMfa => {
                    store.set_totp(&t, &u, None, &[], 0)?;
                    // The sessions were signed in with the factor now gone.
                    (user.totp_secret.is_some(), sessions.end_all(&t, &u, None)?)
                }
                UserAction::RevokeSessions => {
                    let ended = sessions.end_all(&t, &u, None)?;
                    (ended > 0, ended)
                }
            }))
        })
        .await?;
        let Some((changed, sessions_ended)) = done else {
            return Ok(None);
        };
        self.record_action(
            tenant,
            action.event(),
            Outcome::Success,
            actor,
            Some(username),
            Some(actor.via),
        )
        .await;
        let side_effect = match action {
            UserAction::Disable => Some("user_disabled"),
            UserAction::ResetMfa => Some("mfa_reset"),
            UserAction::Enable | UserAction::RevokeSessions => None,
        };
        if let (Some(reason), true) = (side_effect, sessions_ended > 0) {
            self.record_action(
                tenant,
                EventKind::SessionRevoked,
                Outcome::Success,
                actor,
                Some(username),
                Some(reason),
            )
            .await;
        }
        Ok(Some(ActionOutcome {
            user: username.to_string(),
            action: action.as_str(),
            changed,
            sessions_ended,
        }))
    }

    /// Audit records of every tenant (or of `q.tenant`), newest first: for the operator API
    /// only, never reachable from a tenant host.
    pub async fn operator_audit(
        &self,
        q: OperatorAuditQuery,
    ) -> Result<Vec<PositionedRecord>, AuthError> {
        let store = Arc::clone(&self.store);
        Self::blocking(move || store.query_all(&q)).await
    }

    /// One page of the tenant's log and the cursor of the next, if there are older records.
    async fn audit_page(
        &self,
        mut query: AuditQuery,
        limit: u32,
    ) -> Result<(Vec<AuditRecord>, Option<u64>), AuthError> {
        // One record more than asked says whether an older page exists.
        query.limit = limit.saturating_add(1).min(MAX_QUERY_LIMIT);
        let store = Arc::clone(&self.store);
        let mut records = Self::blocking(move || store.query(&query)).await?;
        let more = records.len() > limit as usize || records.len() == MAX_QUERY_LIMIT as usize;
        records.truncate(limit as usize);
        let next = if more {
            records.last().map(|r| r.seq)
        } else {
            None
        };
        Ok((records, next))
    }

    /// Answer a request under `/.auth/admin`: sign-in and role first, then the page.
    pub(super) async fn admin(&self, req: &AuthRequest<'_>) -> Result<Reply, AuthError> {
        let format = Format::of(req);
        let json = format != Format::Html;
        let Some(id) = self
            .identity(req.tenant, req.headers, req.client_ip)
            .await?
        else {
            let here = match req.query {
                Some(q) => format!("{}?{q}", req.path),
                None => req.path.to_string(),
            };
            return Ok(login_redirect_to(&here, json));
        };
        let actor = Actor {
            name: id.session.username.clone(),
            client_ip: req.client_ip,
            user_agent: req.user_agent(),
            via: "tenant_admin",
        };
        if !id.roles.iter().any(|r| r == ADMIN_ROLE) {
            self.record_action(
                &req.tenant.id,
                EventKind::RequestDenied,
                Outcome::Denied,
                &actor,
                Some(req.path),
                Some("not_tenant_admin"),
            )
            .await;
            return Ok(fail(
                json,
                403,
                "forbidden",
                "Only administrators of this organisation can open this page.",
            ));
        }
        let rest = req.path.strip_prefix(PREFIX).unwrap_or_default();
        if let Some((name, action)) = user_action_path(rest) {
            return if req.method == Method::POST {
                self.admin_user_action(req, &id, &actor, &name, action, json)
                    .await
            } else {
                Ok(not_allowed(json, "POST"))
            };
        }
        match (req.method, rest) {
            (&Method::GET, "" | "/") => Ok(Reply::redirect(302, "/.auth/admin/audit")),
            (&Method::GET, "/audit") => self.admin_audit(req, format).await,
            (&Method::GET, "/users") => self.admin_users(req, &id, json).await,
            (&Method::GET, "/saml") => {
                let status = self.saml_status(req);
                Ok(if json {
                    Reply::json(200, &status)
                } else {
                    Reply::html(
                        200,
                        pages::admin_saml_page(&req.tenant.display_name, &status),
                    )
                })
            }
            (_, "" | "/" | "/audit" | "/users" | "/saml") => Ok(not_allowed(json, "GET")),
            _ => Ok(fail(
                json,
                404,
                "not_found",
                "Nothing is served at this address.",
            )),
        }
    }

    /// `GET /.auth/admin/audit`: the tenant's log, filtered and paged; HTML, JSON or CSV.
    async fn admin_audit(&self, req: &AuthRequest<'_>, format: Format) -> Result<Reply, AuthError> {
        let typed = |name: &str| req.query_param(name).unwrap_or_default();
        let (since, until, event, user) = (
            typed("since"),
            typed("until"),
            typed("event"),
            typed("user"),
        );
        let filter_query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in [
                ("since", &since),
                ("until", &until),
                ("event", &event),
                ("user", &user),
            ] {
                if !v.trim().is_empty() {
                    q.append_pair(k, v.trim());
                }
            }
            q.finish()
        };
        let mut page = AdminAuditPage {
            tenant_name: &req.tenant.display_name,
            records: &[],
            since: &since,
            until: &until,
            event: &event,
            user: &user,
            filter_query: &filter_query,
            next_before: None,
            error: None,
        };
        let filter = match AuditFilter::from_query(req.query, self.clock.now_utc()) {
            Ok(filter) => filter,
            Err(e) => {
                return Ok(match format {
                    Format::Html => {
                        let message = e.to_string();
                        page.error = Some(&message);
                        Reply::html(400, pages::admin_audit_page(&page))
                    }
                    Format::Json | Format::Csv => Reply::json_error(400, e.code()),
                })
            }
        };
        // The tenant is the request's, whatever the query says.
        let tenant = &req.tenant.id;
        match format {
            Format::Html => {
                let (records, next) = self
                    .audit_page(filter.for_tenant(tenant, PAGE_SIZE), PAGE_SIZE)
                    .await?;
                page.records = &records;
                page.next_before = next;
                Ok(Reply::html(200, pages::admin_audit_page(&page)))
            }
            Format::Json => {
                let limit = filter.limit.unwrap_or(PAGE_SIZE);
                let (records, next) = self
                    .audit_page(filter.for_tenant(tenant, limit), limit)
                    .await?;
                Ok(Reply::json(
                    200,
                    &serde_json::json!({ "events": records, "next_before": next }),
                ))
            }
            Format::Csv => self.audit_csv(tenant, &filter).await,
        }
    }

    /// The filtered log as CSV, newest first, at most [`CSV_MAX_ROWS`] rows.
    async fn audit_csv(&self, tenant: &str, filter: &AuditFilter) -> Result<Reply, AuthError> {
        let mut out = CSV_HEADER.join(",");
        out.push_str("\r\n");
        let mut query = filter.for_tenant(tenant, MAX_QUERY_LIMIT);
        let mut rows = 0;
        let next = loop {
            let want = (CSV_MAX_ROWS - rows).min(MAX_QUERY_LIMIT as usize) as u32;
            let (records, more) = self.audit_page(query.clone(), want).await?;
            for record in &records {
                csv_row(&mut out, record);
            }
            rows += records.len();
            match more {
                Some(seq) if rows < CSV_MAX_ROWS => query.before_seq = Some(seq),
                other => break other,
            }
        };
        let mut reply = Reply::json(200, &serde_json::Value::Null);
        reply
            .headers
            .retain(|(name, _)| name != http::header::CONTENT_TYPE);
        reply.push(http::header::CONTENT_TYPE, "text/csv; charset=utf-8");
        reply.push(
            http::header::CONTENT_DISPOSITION,
            &format!("attachment; filename=\"audit-{tenant}.csv\""),
        );
        if let Some(seq) = next {
            reply.push(
                http::header::HeaderName::from_static("x-next-before"),
                &seq.to_string(),
            );
        }
        reply.body = Bytes::from(out);
        Ok(reply)
    }

    /// `GET /.auth/admin/users`: the accounts with their state and the action forms.
    async fn admin_users(
        &self,
        req: &AuthRequest<'_>,
        id: &Identity,
        json: bool,
    ) -> Result<Reply, AuthError> {
        let users = self.user_summaries(&req.tenant.id).await?;
        if json {
            return Ok(Reply::json(200, &serde_json::json!({ "users": users })));
        }
        let rows: Vec<AdminUserRow<'_>> = users
            .iter()
            .map(|u| AdminUserRow {
                username: &u.username,
                roles: &u.roles,
                disabled: u.disabled,
                mfa: u.mfa,
                sessions: u.sessions,
            })
            .collect();
        // After an action (POST, then 303 here) say what was done; only known words shown.
        let notice = match (req.query_param("done"), req.query_param("user")) {
            (Some(done), Some(user)) if valid_username(&user) => {
                UserAction::from_path(&done).map(|a| format!("Done: {} {user}.", a.as_str()))
            }
            _ => None,
        };
        Ok(Reply::html(
            200,
            pages::admin_users_page(
                &req.tenant.display_name,
                &id.session.csrf,
                &rows,
                &id.session.username,
                notice.as_deref(),
            ),
        ))
    }

    /// `POST /.auth/admin/users/{name}/{action}`.
    async fn admin_user_action(
        &self,
        req: &AuthRequest<'_>,
        id: &Identity,
        actor: &Actor,
        name: &str,
        action: UserAction,
        json: bool,
    ) -> Result<Reply, AuthError> {
        let json = json || req.wants_json();
        let fields = Fields::parse(req).unwrap_or_default();
        if !req.same_origin() || !self.session_csrf_ok(req, id, &fields) {
            self.record_action(
                &req.tenant.id,
                EventKind::RequestDenied,
                Outcome::Denied,
                actor,
                Some(req.path),
                Some("csrf"),
            )
            .await;
            return Ok(fail(
                json,
                403,
                "csrf",
                "This form expired. Go back, reload the page and try again.",
            ));
        }
        let unknown = || {
            fail(
                json,
                404,
                "unknown_user",
                "There is no such user in this organisation.",
            )
        };
        if !valid_username(name) {
            return Ok(unknown());
        }
        if action == UserAction::Disable && name == id.session.username {
            return Ok(fail(
                json,
                409,
                "cannot_disable_self",
                "You cannot disable your own account.",
            ));
        }
        let Some(outcome) = self
            .user_action(&req.tenant.id, name, action, actor)
            .await?
        else {
            return Ok(unknown());
        };
        Ok(if json {
            Reply::json(200, &serde_json::json!(outcome))
        } else {
            Reply::redirect(
                303,
                &format!("/.auth/admin/users?done={}&user={name}", action.as_str()),
            )
        })
    }
}

/// 405 with the one method the address takes.
fn not_allowed(json: bool, allow: &str) -> Reply {
    let mut reply = fail(
        json,
        405,
        "method_not_allowed",
        "That method is not allowed here.",
    );
    reply.push(http::header::ALLOW, allow);
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_formulas_defused() {
        assert_eq!(csv_cell("plain"), "\"plain\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("a,b\r\nc"), "\"a,b\r\nc\"");
        for formula in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            let cell = csv_cell(formula);
            assert!(cell.starts_with("\"'"), "{formula}: {cell}");
        }
        assert_eq!(
            csv_cell("=HYPERLINK(\"http://x\")"),
            "\"'=HYPERLINK(\"\"http://x\"\")\""
        );
        assert_eq!(csv_cell(""), "\"\"");
    }

    #[test]
    fn user_action_paths_name_one_user_and_one_action() {
        assert_eq!(
            user_action_path("/users/bob/disable"),
            Some(("bob".into(), UserAction::Disable))
        );
        assert_eq!(
            user_action_path("/users/bob%40corp/reset-mfa"),
            Some(("bob@corp".into(), UserAction::ResetMfa))
        );
        assert_eq!(user_action_path("/users/bob/delete"), None);
        assert_eq!(user_action_path("/users/bob"), None);
        assert_eq!(user_action_path("/users/a/b/disable"), None);
        // Decoded but never valid: the caller validates before any lookup.
        let (name, _) = user_action_path("/users/..%2Fglobex/disable").expect("parsed");
        assert!(!valid_username(&name));
    }

    #[test]
    fn every_action_has_its_audit_event() {
        for (action, event) in [
            (UserAction::Disable, EventKind::UserDisabled),
            (UserAction::Enable, EventKind::UserEnabled),
            (UserAction::ResetMfa, EventKind::MfaReset),
            (UserAction::RevokeSessions, EventKind::SessionRevoked),
        ] {
            assert_eq!(action.event(), event);
            assert_eq!(UserAction::from_path(action.as_str()), Some(action));
        }
    }
}
