//! The server-rendered pages of the login flow. They work without JavaScript (there is none)
//! under a strict Content-Security-Policy ([`csp`]): one inline `<style>` allowed by its hash,
//! nothing else loads, forms post only to this host, no framing.
//!
//! Every interpolated value goes through [`escape_html`]. Callers send each page with
//! `Content-Type: text/html; charset=utf-8`, `Content-Security-Policy: {csp()}` and
//! `Cache-Control: no-store`.

use std::sync::OnceLock;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::audit::{AuditRecord, EventKind};

/// The one stylesheet, inline. Its SHA-256 is in the CSP, so changing it changes the policy.
const STYLE: &str = "\
:root{color-scheme:light dark;font-family:system-ui,sans-serif;line-height:1.5}\
body{margin:0;padding:2rem 1rem;background:Canvas;color:CanvasText}\
main{max-width:24rem;margin:0 auto}\
h1{font-size:1.5rem;margin:0 0 1rem}\
label{display:block;font-weight:600;margin-top:1rem}\
input{box-sizing:border-box;width:100%;padding:.5rem;font:inherit;\
border:1px solid GrayText;border-radius:4px}\
button{margin-top:1.5rem;padding:.5rem 1.25rem;font:inherit;font-weight:600;cursor:pointer;\
border:1px solid ButtonText;border-radius:4px;background:ButtonFace;color:ButtonText}\
input:focus,button:focus{outline:3px solid Highlight;outline-offset:2px}\
.error{padding:.75rem;border:2px solid #b00020;border-radius:4px}\
.hint{margin:.25rem 0 0;font-size:.875rem}\
main:has(.wide){max-width:72rem}\
nav{margin-bottom:1rem}nav a{margin-right:1rem}\
select{box-sizing:border-box;width:100%;padding:.5rem;font:inherit}\
.filters{display:grid;grid-template-columns:repeat(auto-fit,minmax(10rem,1fr));gap:0 1rem}\
table{border-collapse:collapse;width:100%;margin-top:1rem;font-size:.875rem}\
th,td{text-align:left;vertical-align:top;padding:.25rem .5rem;\
border-bottom:1px solid GrayText;overflow-wrap:anywhere}\
td form{display:inline}td button{margin:0 .25rem .25rem 0;padding:.125rem .5rem;font-weight:400}";

/// The Content-Security-Policy for every page here: nothing but the inline style (by its
/// SHA-256, CSP Level 3 §8.4), forms only to this origin, never framed (clickjacking), no
/// `<base>` rewriting.
pub fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let digest = Sha256::digest(STYLE.as_bytes());
        let hash = base64::engine::general_purpose::STANDARD.encode(digest);
        format!(
            "default-src 'none'; style-src 'sha256-{hash}'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'"
        )
    })
}

/// Escape text for HTML element content and quoted attribute values (OWASP XSS Prevention
/// Cheat Sheet, rule 1 and 2): `& < > " '`.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            _ => out.push(c),
        }
    }
    out
}

/// What the sign-in page shows.
#[derive(Debug, Clone, Copy)]
pub struct LoginPage<'a> {
    /// The tenant's display name.
    pub tenant_name: &'a str,
    /// The anti-CSRF token for the form.
    pub csrf_token: &'a str,
    /// Where to go after signing in (already validated as a same-host path).
    pub return_to: &'a str,
    /// The username to prefill after a failed attempt; empty otherwise.
    pub username: &'a str,
    /// Why the last attempt failed, for people to read.
    pub error: Option<&'a str>,
    /// Whether the tenant allows password sign-in.
    pub password_enabled: bool,
    /// Whether the tenant signs in through its SAML IdP (a button to start it).
    pub sso: bool,
    /// Password sign-in is off but break-glass administrators may use it.
    pub break_glass: bool,
}

/// The sign-in page: a form posting `username`, `password`, `csrf`, `return_to` to
/// `/.auth/login`.
pub fn login_page(page: &LoginPage<'_>) -> String {
    let tenant = escape_html(page.tenant_name);
    let title = format!("Sign in to {tenant}");
    let mut body = format!("<h1>{title}</h1>\n");
    body.push_str(&error_block(page.error));
    if page.sso {
        let back: String = form_urlencoded::byte_serialize(page.return_to.as_bytes()).collect();
        body.push_str(&format!(
            "<p><a class=\"button\" href=\"/.auth/saml/login?return_to={}\">\
             Sign in with single sign-on</a></p>\n",
            escape_html(&back)
        ));
    }
    if !page.password_enabled {
        body.push_str(
            "<p>Password sign-in is turned off for this organisation. \
             Use your organisation's single sign-on.</p>\n",
        );
        if !page.break_glass {
            return layout(&title, &body);
        }
        body.push_str("<h2>Emergency administrator sign-in</h2>\n");
    } else if page.sso {
        body.push_str("<h2>Or sign in with a password</h2>\n");
    }
    let described = described_by(page.error);
    // A prefilled username means the password is what to fix: focus goes there.
    let (user_focus, password_focus) = if page.username.is_empty() {
        (" autofocus", "")
    } else {
        ("", " autofocus")
    };
    body.push_str(&format!(
        "<form method=\"post\" action=\"/.auth/login\">\n\
         {hidden}\
         <label for=\"username\">Username</label>\n\
         <input id=\"username\" name=\"username\" type=\"text\" value=\"{username}\" \
         autocomplete=\"username\" autocapitalize=\"none\" spellcheck=\"false\" \
         required{user_focus}{described}>\n\
         <label for=\"password\">Password</label>\n\
         <input id=\"password\" name=\"password\" type=\"password\" \
         autocomplete=\"current-password\" required{password_focus}{described}>\n\
         <button type=\"submit\">Sign in</button>\n\
         </form>\n",
        hidden = hidden_fields(page.csrf_token, page.return_to),
        username = escape_html(page.username),
    ));
    layout(&title, &body)
}

/// The sign-out confirmation: one button posting `csrf` to `/.auth/logout`.
pub fn logout_page(csrf_token: &str) -> String {
    let body = format!(
        "<h1>Sign out</h1>\n\
         <form method=\"post\" action=\"/.auth/logout\">\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n\
         <button type=\"submit\">Sign out</button>\n\
         </form>\n",
        csrf = escape_html(csrf_token),
    );
    layout("Sign out", &body)
}

/// The password change form: posts `current_password`, `new_password`, `confirm_password`,
/// `csrf`, `return_to` to `/.auth/password`. `min_length` is the tenant's policy, shown as a
/// hint.
pub fn password_change_page(
    csrf_token: &str,
    return_to: &str,
    min_length: usize,
    error: Option<&str>,
) -> String {
    let described = described_by(error);
    // No `maxlength`: browsers silently cut pasted text to it; the server refuses instead.
    let body = format!(
        "<h1>Change your password</h1>\n\
         {error}\
         <form method=\"post\" action=\"/.auth/password\">\n\
         {hidden}\
         <label for=\"current_password\">Current password</label>\n\
         <input id=\"current_password\" name=\"current_password\" type=\"password\" \
         autocomplete=\"current-password\" required autofocus{described}>\n\
         <label for=\"new_password\">New password</label>\n\
         <input id=\"new_password\" name=\"new_password\" type=\"password\" \
         autocomplete=\"new-password\" required aria-describedby=\"new_password_hint\">\n\
         <p class=\"hint\" id=\"new_password_hint\">At least {min_length} characters. \
         A few unrelated words make a good password; common passwords are refused.</p>\n\
         <label for=\"confirm_password\">Repeat the new password</label>\n\
         <input id=\"confirm_password\" name=\"confirm_password\" type=\"password\" \
         autocomplete=\"new-password\" required>\n\
         <button type=\"submit\">Change password</button>\n\
         </form>\n",
        error = error_block(error),
        hidden = hidden_fields(csrf_token, return_to),
    );
    layout("Change your password", &body)
}

/// The second-factor step: a 6-digit code from the authenticator app (`code`), or one of the
/// recovery codes (`recovery_code`); posts to `/.auth/mfa` with `csrf`.
pub fn mfa_page(csrf_token: &str, error: Option<&str>) -> String {
    let described = described_by(error);
    let body = format!(
        "<h1>Two-step verification</h1>\n\
         {error}\
         <form method=\"post\" action=\"/.auth/mfa\">\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n\
         <label for=\"code\">Code from your authenticator app</label>\n\
         <input id=\"code\" name=\"code\" type=\"text\" inputmode=\"numeric\" \
         autocomplete=\"one-time-code\" pattern=\"[0-9 ]*\" autofocus{described}>\n\
         <label for=\"recovery_code\">Or a recovery code</label>\n\
         <input id=\"recovery_code\" name=\"recovery_code\" type=\"text\" \
         autocomplete=\"off\" autocapitalize=\"none\" spellcheck=\"false\">\n\
         <button type=\"submit\">Verify</button>\n\
         </form>\n",
        error = error_block(error),
        csrf = escape_html(csrf_token),
    );
    layout("Two-step verification", &body)
}

/// TOTP enrolment: the QR code (inline SVG made by us), the key written out for manual
/// entry, and a field to confirm with a first code; posts `code`, `csrf` to
/// `/.auth/mfa/enroll`.
pub fn enroll_page(
    csrf_token: &str,
    qr_svg: &str,
    grouped_key: &str,
    error: Option<&str>,
) -> String {
    let described = described_by(error);
    let body = format!(
        "<h1>Set up two-step verification</h1>\n\
         {error}\
         <p>Scan this code with an authenticator app (for example FreeOTP, Aegis, Google \
         Authenticator or 1Password), then enter the 6-digit code it shows.</p>\n\
         <div class=\"qr\">{qr_svg}</div>\n\
         <p>Or enter this key by hand (time-based, SHA-1, 6 digits, 30 seconds):</p>\n\
         <p class=\"key\"><code>{key}</code></p>\n\
         <form method=\"post\" action=\"/.auth/mfa/enroll\">\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n\
         <input type=\"hidden\" name=\"action\" value=\"confirm\">\n\
         <label for=\"code\">Code from your app</label>\n\
         <input id=\"code\" name=\"code\" type=\"text\" inputmode=\"numeric\" \
         autocomplete=\"one-time-code\" required autofocus{described}>\n\
         <button type=\"submit\">Turn on</button>\n\
         </form>\n",
        error = error_block(error),
        key = escape_html(grouped_key),
        csrf = escape_html(csrf_token),
    );
    layout("Set up two-step verification", &body)
}

/// The recovery codes, shown once right after enrolment.
pub fn recovery_codes_page(codes: &[String], continue_to: &str) -> String {
    let items: String = codes
        .iter()
        .map(|c| format!("<li><code>{}</code></li>\n", escape_html(c)))
        .collect();
    let body = format!(
        "<h1>Save your recovery codes</h1>\n\
         <p>Each code signs you in once if you lose your authenticator. They are shown only \
         now: store them somewhere safe.</p>\n\
         <ol class=\"codes\">\n{items}</ol>\n\
         <p><a href=\"{href}\">Continue</a></p>\n",
        href = escape_html(continue_to),
    );
    layout("Save your recovery codes", &body)
}

/// Two-step verification is on: remove it with a current code; posts `action=remove`,
/// `code`, `csrf` to `/.auth/mfa/enroll`.
pub fn mfa_manage_page(
    csrf_token: &str,
    codes_left: u64,
    can_remove: bool,
    error: Option<&str>,
) -> String {
    let described = described_by(error);
    let remove = if can_remove {
        format!(
            "<form method=\"post\" action=\"/.auth/mfa/enroll\">\n\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n\
             <input type=\"hidden\" name=\"action\" value=\"remove\">\n\
             <label for=\"code\">Current code, to turn it off</label>\n\
             <input id=\"code\" name=\"code\" type=\"text\" inputmode=\"numeric\" \
             autocomplete=\"one-time-code\" required{described}>\n\
             <button type=\"submit\">Turn off</button>\n\
             </form>\n",
            csrf = escape_html(csrf_token),
        )
    } else {
        "<p>Your organisation requires two-step verification.</p>\n".to_string()
    };
    let body = format!(
        "<h1>Two-step verification is on</h1>\n\
         {error}\
         <p>{codes_left} recovery code(s) left.</p>\n\
         {remove}",
        error = error_block(error),
    );
    layout("Two-step verification", &body)
}

/// A page with a heading and one paragraph, for outcomes and errors.
pub fn message_page(title: &str, text: &str) -> String {
    let title = escape_html(title);
    let body = format!("<h1>{title}</h1>\n<p>{}</p>\n", escape_html(text));
    layout(&title, &body)
}

/// The tenant admin's navigation, on every admin page.
fn admin_nav() -> &'static str {
    "<nav aria-label=\"Administration\">\
     <a href=\"/.auth/admin/audit\">Audit log</a>\
     <a href=\"/.auth/admin/users\">Users</a>\
     <a href=\"/.auth/admin/saml\">SAML</a>\
     <a href=\"/.auth/logout\">Sign out</a>\
     </nav>\n"
}

/// What the tenant admin's audit log page shows.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuditPage<'a> {
    /// The tenant's display name.
    pub tenant_name: &'a str,
    /// The page of records, newest first.
    pub records: &'a [AuditRecord],
    /// The filters as typed, to refill the form.
    pub since: &'a str,
    /// See `since`.
    pub until: &'a str,
    /// The selected event type name, or empty for all.
    pub event: &'a str,
    /// See `since`.
    pub user: &'a str,
    /// The current filters as a URL-encoded query (no `before`, no `format`), for the links.
    pub filter_query: &'a str,
    /// The cursor of the next (older) page, if there is one.
    pub next_before: Option<u64>,
    /// Why the filters were refused, for people to read.
    pub error: Option<&'a str>,
}

/// The tenant admin's audit log: a GET filter form (`since`, `until`, `event`, `user`), a
/// table of records, a link to older records, and CSV / JSON exports of the same filters.
pub fn admin_audit_page(page: &AdminAuditPage<'_>) -> String {
    let title = format!("Audit log of {}", escape_html(page.tenant_name));
    let options: String = std::iter::once(("", "All events"))
        .chain(EventKind::ALL.iter().map(|k| (k.as_str(), k.as_str())))
        .map(|(value, label)| {
            let selected = if value == page.event { " selected" } else { "" };
            format!("<option value=\"{value}\"{selected}>{label}</option>\n")
        })
        .collect();
    let rows: String = page
        .records
        .iter()
        .map(|r| {
            let e = &r.event;
            let time = e
                .time
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            let cell = |v: Option<&str>| escape_html(v.unwrap_or(""));
            format!(
                "<tr><td>{seq}</td><td>{time}</td><td>{event}</td><td>{outcome}</td>\
                 <td>{actor}</td><td>{subject}</td><td>{ip}</td><td>{reason}</td>\
                 <td>{agent}</td></tr>\n",
                seq = r.seq,
                time = escape_html(&time),
                event = e.event.as_str(),
                outcome = e.outcome.as_str(),
                actor = cell(e.actor.as_deref()),
                subject = cell(e.subject.as_deref()),
                ip = escape_html(&e.client_ip.map(|ip| ip.to_string()).unwrap_or_default()),
                reason = cell(e.reason.as_deref()),
                agent = cell(e.user_agent.as_deref()),
            )
        })
        .collect();
    let table = if page.records.is_empty() {
        "<p>No events match these filters.</p>\n".to_string()
    } else {
        format!(
            "<table>\n<thead><tr><th scope=\"col\">#</th><th scope=\"col\">Time (UTC)</th>\
             <th scope=\"col\">Event</th><th scope=\"col\">Outcome</th>\
             <th scope=\"col\">Actor</th><th scope=\"col\">Subject</th>\
             <th scope=\"col\">Client IP</th><th scope=\"col\">Reason</th>\
             <th scope=\"col\">User agent</th></tr></thead>\n<tbody>\n{rows}</tbody>\n</table>\n"
        )
    };
    let link = |extra: &str| {
        let parts: Vec<&str> = [page.filter_query, extra]
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() {
            "/.auth/admin/audit".to_string()
        } else {
            escape_html(&format!("/.auth/admin/audit?{}", parts.join("&")))
        }
    };
    let older = page.next_before.map_or_else(String::new, |n| {
        format!(
            "<a href=\"{}\" rel=\"next\">Older events</a> ",
            link(&format!("before={n}"))
        )
    });
    let body = format!(
        "<div class=\"wide\">\n{nav}<h1>{title}</h1>\n{error}\
         <form method=\"get\" action=\"/.auth/admin/audit\">\n<div class=\"filters\">\n\
         <div><label for=\"since\">Since</label>\n\
         <input id=\"since\" name=\"since\" type=\"text\" value=\"{since}\" \
         placeholder=\"24h, 7d or 2024-05-01T00:00:00Z\" aria-describedby=\"time_hint\"></div>\n\
         <div><label for=\"until\">Until</label>\n\
         <input id=\"until\" name=\"until\" type=\"text\" value=\"{until}\" \
         aria-describedby=\"time_hint\"></div>\n\
         <div><label for=\"event\">Event</label>\n\
         <select id=\"event\" name=\"event\">\n{options}</select></div>\n\
         <div><label for=\"user\">User</label>\n\
         <input id=\"user\" name=\"user\" type=\"text\" value=\"{user}\" \
         autocapitalize=\"none\" spellcheck=\"false\"></div>\n</div>\n\
         <p class=\"hint\" id=\"time_hint\">Times are RFC 3339, a date, or a span back from \
         now such as 24h or 7d.</p>\n\
         <button type=\"submit\">Filter</button>\n</form>\n\
         {table}<p>{older}<a href=\"{newest}\">Newest</a> \
         <a href=\"{csv}\">Download CSV</a> <a href=\"{json}\">JSON</a></p>\n</div>\n",
        nav = admin_nav(),
        error = error_block(page.error),
        since = escape_html(page.since),
        until = escape_html(page.until),
        user = escape_html(page.user),
        newest = link(""),
        csv = link("format=csv"),
        json = link("format=json"),
    );
    layout(&title, &body)
}

/// One account on the tenant admin's user list.
#[derive(Debug, Clone, Copy)]
pub struct AdminUserRow<'a> {
    /// Username.
    pub username: &'a str,
    /// Roles.
    pub roles: &'a [String],
    /// Whether the account is disabled.
    pub disabled: bool,
    /// Whether two-step verification is on.
    pub mfa: bool,
    /// Live sessions.
    pub sessions: u64,
}

/// The tenant admin's user list; each row has forms posting `csrf` to
/// `/.auth/admin/users/{name}/{disable|enable|reset-mfa|revoke-sessions}`. `me` (the admin
/// looking) gets no disable button.
pub fn admin_users_page(
    tenant_name: &str,
    csrf_token: &str,
    users: &[AdminUserRow<'_>],
    me: &str,
    notice: Option<&str>,
) -> String {
    let title = format!("Users of {}", escape_html(tenant_name));
    let csrf = escape_html(csrf_token);
    let rows: String = users
        .iter()
        .map(|u| {
            let name = escape_html(u.username);
            let button = |action: &str, label: &str| {
                format!(
                    "<form method=\"post\" action=\"/.auth/admin/users/{name}/{action}\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                     <button type=\"submit\">{label}</button></form>"
                )
            };
            let mut actions = String::new();
            if u.disabled {
                actions.push_str(&button("enable", "Enable"));
            } else if u.username != me {
                actions.push_str(&button("disable", "Disable"));
            }
            if u.mfa {
                actions.push_str(&button("reset-mfa", "Reset two-step verification"));
            }
            if u.sessions > 0 {
                actions.push_str(&button("revoke-sessions", "Sign out everywhere"));
            }
            format!(
                "<tr><td>{name}</td><td>{roles}</td><td>{status}</td><td>{mfa}</td>\
                 <td>{sessions}</td><td>{actions}</td></tr>\n",
                roles = escape_html(&u.roles.join(", ")),
                status = if u.disabled { "disabled" } else { "active" },
                mfa = if u.mfa { "on" } else { "off" },
                sessions = u.sessions,
            )
        })
        .collect();
    let notice = notice.map_or_else(String::new, |n| {
        format!("<p role=\"status\">{}</p>\n", escape_html(n))
    });
    let body = format!(
        "<div class=\"wide\">\n{nav}<h1>{title}</h1>\n{notice}\
         <table>\n<thead><tr><th scope=\"col\">User</th><th scope=\"col\">Roles</th>\
         <th scope=\"col\">Status</th><th scope=\"col\">Two-step verification</th>\
         <th scope=\"col\">Sessions</th><th scope=\"col\">Actions</th></tr></thead>\n\
         <tbody>\n{rows}</tbody>\n</table>\n</div>\n",
        nav = admin_nav(),
    );
    layout(&title, &body)
}

/// The tenant's SAML settings (read-only), from the status document of `saml_status`.
pub fn admin_saml_page(tenant_name: &str, status: &serde_json::Value) -> String {
    let title = format!("SAML of {}", escape_html(tenant_name));
    let mut body = format!("{nav}<h1>{title}</h1>\n", nav = admin_nav());
    if status["configured"] != true {
        body.push_str(
            "<p>SAML single sign-on is not configured for this organisation yet. Users sign in \
             with a password.</p>\n",
        );
        return layout(&title, &body);
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => escape_html(s),
        serde_json::Value::Null => "—".to_string(),
        other => escape_html(&other.to_string()),
    };
    body.push_str("<h2>Enter these at your identity provider</h2>\n<dl>\n");
    for (label, key) in [
        ("Entity ID (audience)", "entity_id"),
        ("ACS URL (reply, recipient, destination)", "acs_url"),
        ("SP metadata", "metadata_url"),
    ] {
        body.push_str(&format!(
            "<dt>{label}</dt><dd><code>{}</code></dd>\n",
            text(&status["sp"][key])
        ));
    }
    body.push_str("</dl>\n<h2>Identity provider</h2>\n<dl>\n");
    for (label, key) in [
        ("Entity ID", "entity_id"),
        ("Sign-on URL", "sso_url"),
        ("Logout URL", "slo_url"),
        ("Metadata from", "metadata_source"),
    ] {
        body.push_str(&format!(
            "<dt>{label}</dt><dd>{}</dd>\n",
            text(&status["idp"][key])
        ));
    }
    for cert in status["idp"]["certificates"]
        .as_array()
        .into_iter()
        .flatten()
    {
        body.push_str(&format!(
            "<dt>Signing certificate</dt><dd>SHA-256 <code>{}</code>, expires {}</dd>\n",
            text(&cert["sha256"]),
            text(&cert["not_after"])
        ));
    }
    body.push_str("</dl>\n<h2>Settings</h2>\n<dl>\n");
    for (label, key) in [
        ("Sign-in methods", "login_methods"),
        ("IdP-initiated sign-in", "allow_idp_initiated"),
        ("Signed requests", "sign_authn_requests"),
        ("Create users at first sign-in", "jit_provisioning"),
        ("Clock skew (seconds)", "clock_skew_seconds"),
    ] {
        body.push_str(&format!(
            "<dt>{label}</dt><dd>{}</dd>\n",
            text(&status[key])
        ));
    }
    body.push_str("</dl>\n");
    layout(&title, &body)
}

/// The document around a page body. `title` is already escaped.
fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n\
         <html lang=\"en\">\n\
         <head>\n\
         <meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <title>{title}</title>\n\
         <style>{STYLE}</style>\n\
         </head>\n\
         <body>\n\
         <main>\n\
         {body}\
         </main>\n\
         </body>\n\
         </html>\n"
    )
}

fn hidden_fields(csrf_token: &str, return_to: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">\n\
         <input type=\"hidden\" name=\"return_to\" value=\"{}\">\n",
        escape_html(csrf_token),
        escape_html(return_to),
    )
}

/// The error, announced to screen readers as it appears (WAI-ARIA `role="alert"`).
fn error_block(error: Option<&str>) -> String {
    error.map_or_else(String::new, |error| {
        format!(
            "<p class=\"error\" id=\"form_error\" role=\"alert\">{}</p>\n",
            escape_html(error)
        )
    })
}

/// Ties fields to the error message and marks them invalid, so assistive technology reads it.
fn described_by(error: Option<&str>) -> &'static str {
    if error.is_some() {
        " aria-invalid=\"true\" aria-describedby=\"form_error\""
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XSS: &str = "\"'><script>alert(1)</script><img src=x onerror=alert(1)>&amp;";

    fn login(error: Option<&'static str>) -> LoginPage<'static> {
        LoginPage {
            tenant_name: "Acme",
            csrf_token: "tok123",
            return_to: "/app",
            username: "",
            error,
            password_enabled: true,
            sso: false,
            break_glass: false,
        }
    }

    fn every_page() -> Vec<String> {
        vec![
            login_page(&login(None)),
            login_page(&login(Some("Wrong username or password."))),
            login_page(&LoginPage {
                password_enabled: false,
                ..login(None)
            }),
            logout_page("tok123"),
            password_change_page("tok123", "/app", 15, Some("Use at least 15 characters.")),
            message_page("Signed out", "You have signed out."),
        ]
    }

    /// The `name` attributes of the page's inputs, in order.
    fn field_names(html: &str) -> Vec<&str> {
        html.split("<input")
            .skip(1)
            .filter_map(|input| input.split("name=\"").nth(1))
            .filter_map(|rest| rest.split('"').next())
            .collect()
    }

    /// Whether any ` on…=` attribute (an inline event handler) appears.
    fn has_event_handler(html: &str) -> bool {
        html.match_indices(" on").any(|(at, _)| {
            let rest = &html[at + 3..];
            let name_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        })
    }

    #[test]
    fn escape_html_escapes_every_special_character() {
        assert_eq!(
            escape_html(r#"<a href="x" title='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; title=&#x27;y&#x27;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(escape_html("plain text ü"), "plain text ü");
    }

    #[test]
    fn interpolated_values_cannot_inject_markup() {
        let page = login_page(&LoginPage {
            tenant_name: XSS,
            csrf_token: XSS,
            return_to: XSS,
            username: XSS,
            error: Some(XSS),
            password_enabled: true,
            sso: true,
            break_glass: false,
        });
        let pages = [
            page,
            password_change_page(XSS, XSS, 15, Some(XSS)),
            logout_page(XSS),
            message_page(XSS, XSS),
        ];
        for html in &pages {
            assert!(!html.contains("<script"), "{html}");
            assert!(!html.contains("<img"), "{html}");
            assert!(!html.contains("\"'>"), "{html}");
            assert!(html.contains("&lt;script&gt;"), "{html}");
            assert!(html.contains("&amp;amp;"), "{html}");
        }
    }

    #[test]
    fn csp_hash_matches_the_inline_style_emitted() {
        for html in every_page() {
            let (_, rest) = html.split_once("<style>").expect("one style element");
            let (style, rest) = rest.split_once("</style>").expect("closed");
            assert!(!rest.contains("<style"), "a second style element");
            let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(style));
            assert!(
                csp().contains(&format!("style-src 'sha256-{hash}'")),
                "{}",
                csp()
            );
            assert!(
                !html.contains(" style="),
                "inline style attributes need 'unsafe-hashes'"
            );
        }
    }

    #[test]
    fn csp_allows_nothing_else() {
        let csp = csp();
        for directive in [
            "default-src 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(directive), "{csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(!csp.contains("script-src"), "{csp}");
    }

    #[test]
    fn pages_contain_no_script() {
        for html in every_page() {
            assert!(!html.to_ascii_lowercase().contains("<script"), "{html}");
            assert!(!has_event_handler(&html), "{html}");
        }
    }

    #[test]
    fn pages_are_accessible_documents() {
        for html in every_page() {
            assert!(html.starts_with("<!doctype html>\n<html lang=\"en\">"));
            assert!(html.contains("<meta name=\"viewport\""));
            assert!(html.contains("<title>"));
            for id in html
                .split(" id=\"")
                .skip(1)
                .filter_map(|s| s.split('"').next())
            {
                if html.contains(&format!("<input id=\"{id}\"")) {
                    assert!(html.contains(&format!("<label for=\"{id}\">")), "{id}");
                }
            }
        }
    }

    #[test]
    fn login_form_posts_the_documented_fields() {
        let html = login_page(&login(None));
        assert!(html.contains("<form method=\"post\" action=\"/.auth/login\">"));
        assert_eq!(
            field_names(&html),
            ["csrf", "return_to", "username", "password"]
        );
        assert!(html.contains("autocomplete=\"username\""));
        assert!(html.contains("autocomplete=\"current-password\""));
        assert!(html.contains("name=\"csrf\" value=\"tok123\""));
        assert!(html.contains("name=\"return_to\" value=\"/app\""));
    }

    #[test]
    fn failed_login_prefills_the_username_and_shows_the_error() {
        let html = login_page(&LoginPage {
            username: "alice",
            ..login(Some("Wrong username or password."))
        });
        assert!(html.contains("value=\"alice\""));
        assert!(html.contains("role=\"alert\">Wrong username or password.</p>"));
        assert!(html.contains("aria-invalid=\"true\""));
        assert!(
            !html.contains("type=\"password\" value="),
            "never echo a password"
        );
    }

    #[test]
    fn login_without_password_sign_in_has_no_password_form() {
        let html = login_page(&LoginPage {
            password_enabled: false,
            ..login(None)
        });
        assert!(!html.contains("<form"));
        assert!(field_names(&html).is_empty());
    }

    #[test]
    fn sso_tenants_get_a_button_and_break_glass_keeps_the_form() {
        let html = login_page(&LoginPage {
            password_enabled: false,
            sso: true,
            return_to: "/app?x=1",
            ..login(None)
        });
        assert!(html.contains("href=\"/.auth/saml/login?return_to=%2Fapp%3Fx%3D1\""));
        assert!(!html.contains("<form"));
        let html = login_page(&LoginPage {
            password_enabled: false,
            sso: true,
            break_glass: true,
            ..login(None)
        });
        assert!(html.contains("Emergency administrator sign-in"));
        assert_eq!(
            field_names(&html),
            ["csrf", "return_to", "username", "password"]
        );
    }

    #[test]
    fn logout_form_posts_csrf_to_logout() {
        let html = logout_page("tok123");
        assert!(html.contains("<form method=\"post\" action=\"/.auth/logout\">"));
        assert_eq!(field_names(&html), ["csrf"]);
        assert!(html.contains("<button type=\"submit\">"));
    }

    fn admin_record(text: &str, reason: &str) -> AuditRecord {
        let event = crate::audit::AuditEvent {
            actor: Some(text.into()),
            subject: Some(text.into()),
            user_agent: Some(text.into()),
            reason: Some(reason.into()),
            ..crate::audit::AuditEvent::new(
                time::OffsetDateTime::UNIX_EPOCH,
                "acme",
                EventKind::LoginFailed,
                crate::audit::Outcome::Failure,
            )
        };
        AuditRecord {
            seq: 7,
            hash: crate::audit::chain::GENESIS,
            event,
        }
    }

    fn admin_pages(text: &str) -> Vec<String> {
        let records = [admin_record(text, text)];
        let roles = vec![text.to_string()];
        vec![
            admin_audit_page(&AdminAuditPage {
                tenant_name: text,
                records: &records,
                since: text,
                until: text,
                event: "login_failed",
                user: text,
                filter_query: "event=login_failed&x=\"><script>",
                next_before: Some(7),
                error: Some(text),
            }),
            admin_users_page(
                text,
                text,
                &[AdminUserRow {
                    username: text,
                    roles: &roles,
                    disabled: false,
                    mfa: true,
                    sessions: 2,
                }],
                "alice",
                Some(text),
            ),
            admin_saml_page(
                text,
                &serde_json::json!({ "configured": true, "sp": { "entity_id": text } }),
            ),
        ]
    }

    #[test]
    fn admin_pages_escape_every_value_and_hold_no_script() {
        for html in admin_pages("plain text") {
            assert!(!has_event_handler(&html), "{html}");
        }
        for html in admin_pages(XSS) {
            assert!(!html.to_ascii_lowercase().contains("<script"), "{html}");
            assert!(!html.contains("<img"), "{html}");
            assert!(!html.contains("\"'>"), "{html}");
            assert!(!html.contains(" style="), "{html}");
            assert!(html.starts_with("<!doctype html>\n<html lang=\"en\">"));
            let (_, rest) = html.split_once("<style>").expect("style element");
            let (style, _) = rest.split_once("</style>").expect("closed");
            let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(style));
            assert!(csp().contains(&format!("'sha256-{hash}'")));
            for id in html
                .split(" id=\"")
                .skip(1)
                .filter_map(|s| s.split('"').next())
            {
                if html.contains(&format!("<input id=\"{id}\""))
                    || html.contains(&format!("<select id=\"{id}\""))
                {
                    assert!(html.contains(&format!("<label for=\"{id}\">")), "{id}");
                }
            }
        }
    }

    #[test]
    fn admin_audit_page_keeps_filters_in_its_links_and_selects_the_event() {
        let records = [admin_record("bob", "bad_password")];
        let html = admin_audit_page(&AdminAuditPage {
            tenant_name: "Acme",
            records: &records,
            since: "24h",
            until: "",
            event: "login_failed",
            user: "bob",
            filter_query: "since=24h&event=login_failed&user=bob",
            next_before: Some(7),
            error: None,
        });
        assert!(html.contains("<form method=\"get\" action=\"/.auth/admin/audit\">"));
        assert_eq!(field_names(&html), ["since", "until", "user"]);
        assert!(html.contains("<option value=\"login_failed\" selected>"));
        assert_eq!(html.matches(" selected>").count(), 1);
        assert!(html
            .contains("href=\"/.auth/admin/audit?since=24h&amp;event=login_failed&amp;user=bob&amp;before=7\""));
        assert!(html.contains("&amp;format=csv\""));
        assert!(html.contains("&amp;format=json\""));
        assert!(html.contains("<td>bad_password</td>"));
        let last = admin_audit_page(&AdminAuditPage {
            next_before: None,
            filter_query: "",
            ..AdminAuditPage {
                tenant_name: "Acme",
                records: &[],
                since: "",
                until: "",
                event: "",
                user: "",
                filter_query: "",
                next_before: None,
                error: None,
            }
        });
        assert!(!last.contains("Older events"));
        assert!(last.contains("No events match"));
        assert!(last.contains("href=\"/.auth/admin/audit\""));
    }

    #[test]
    fn admin_users_page_posts_each_action_with_the_csrf_token() {
        let roles = vec!["admin".to_string()];
        let row = |username, disabled, mfa, sessions| AdminUserRow {
            username,
            roles: &roles,
            disabled,
            mfa,
            sessions,
        };
        let html = admin_users_page(
            "Acme",
            "tok123",
            &[row("alice", false, true, 1), row("bob", true, false, 0)],
            "alice",
            None,
        );
        for action in ["alice/reset-mfa", "alice/revoke-sessions", "bob/enable"] {
            assert!(
                html.contains(&format!(
                    "<form method=\"post\" action=\"/.auth/admin/users/{action}\">"
                )),
                "{action}"
            );
        }
        assert!(!html.contains("alice/disable"), "no disabling oneself");
        assert!(!html.contains("bob/reset-mfa"), "nothing to reset");
        assert!(field_names(&html).iter().all(|n| *n == "csrf"));
        assert_eq!(html.matches("value=\"tok123\"").count(), 3);
    }

    #[test]
    fn password_change_form_posts_the_documented_fields() {
        let html = password_change_page("tok123", "/app", 15, None);
        assert!(html.contains("<form method=\"post\" action=\"/.auth/password\">"));
        assert_eq!(
            field_names(&html),
            [
                "csrf",
                "return_to",
                "current_password",
                "new_password",
                "confirm_password"
            ]
        );
        assert_eq!(html.matches("autocomplete=\"new-password\"").count(), 2);
        assert!(html.contains("autocomplete=\"current-password\""));
        assert!(html.contains("At least 15 characters."));
        assert!(!html.contains("maxlength"), "browsers would truncate");
    }
}
