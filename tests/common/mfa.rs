//! Helpers for the TOTP tests (issue 5): codes from the independent `oathtool` binary, time
//! windows, and the JSON flows of `/.auth/login`, `/.auth/mfa` and `/.auth/mfa/enroll`
//! against a real gateway from [`crate::common`].
//!
//! Every request can carry an `X-Forwarded-For` client address (the worlds made by
//! [`world`] trust 127.0.0.1 as a proxy), so a test can choose which brute-force budgets its
//! attempts use.

#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;

pub const ACME: &str = "acme.localhost";
/// Password of every test account (long enough for the default policy).
pub const PASSWORD: &str = "correct-horse-battery-staple-42";
/// TOTP time step (RFC 6238 §5.2, the gateway's setting).
pub const STEP: u64 = 30;

/// A gateway whose only trusted proxy is the test itself (127.0.0.1), so
/// `X-Forwarded-For` picks the client address the limiter sees.
pub fn world() -> Gateway {
    Gateway::start(Opts {
        trusted_proxies: vec!["127.0.0.1/32".into()],
        // Secrets must not be logged at any level of our own code.
        log_filter: "info,portcullis=trace".into(),
        ..Opts::default()
    })
}

/// Seconds since the epoch, fractional.
pub fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Whole seconds since the epoch.
pub fn now() -> u64 {
    now_f64() as u64
}

/// The TOTP step holding `unix_secs`.
pub fn step_of(unix_secs: u64) -> u64 {
    unix_secs / STEP
}

/// Seconds left in the current 30 s window.
pub fn window_left() -> f64 {
    STEP as f64 - now_f64() % STEP as f64
}

/// If fewer than `min_left` seconds remain in the current window, sleeps into the next one
/// (0.3 s past its start), so codes made now stay valid for what follows.
pub async fn fresh_window(min_left: f64) {
    let left = window_left();
    if left < min_left {
        tokio::time::sleep(Duration::from_secs_f64(left + 0.3)).await;
    }
}

/// Sleeps until the window after the one holding `unix_secs` has started (plus 0.3 s).
pub async fn wait_past_step_of(unix_secs: u64) {
    let next = (step_of(unix_secs) + 1) * STEP;
    let wait = next as f64 + 0.3 - now_f64();
    if wait > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
}

/// The 6-digit SHA-1 TOTP code for `unix_secs`, made by `oathtool` (an independent
/// implementation). The key goes on standard input, not the command line.
pub fn oathtool(key_b32: &str, unix_secs: u64) -> String {
    let mut child = Command::new("oathtool")
        .arg("--totp")
        .arg("-b")
        .arg("-N")
        .arg(format!("@{unix_secs}"))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run oathtool (apt-get install oathtool)");
    child
        .stdin
        .take()
        .expect("oathtool stdin")
        .write_all(key_b32.as_bytes())
        .expect("write key to oathtool");
    let out = child.wait_with_output().expect("wait for oathtool");
    assert!(
        out.status.success(),
        "oathtool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "oathtool gave {code:?}"
    );
    code
}

/// The code for the current time shifted by `offset` seconds.
pub fn code_at_offset(key_b32: &str, offset: i64) -> String {
    oathtool(key_b32, now().saturating_add_signed(offset))
}

/// A 6-digit code that is none of the codes of the steps now−1, now and now+1.
pub fn wrong_code(key_b32: &str) -> String {
    let t = now();
    let window = [
        oathtool(key_b32, t - STEP),
        oathtool(key_b32, t),
        oathtool(key_b32, t + STEP),
    ];
    let mut candidate: u32 = window[1].parse().expect("digits");
    loop {
        candidate = (candidate + 1) % 1_000_000;
        let s = format!("{candidate:06}");
        if !window.contains(&s) {
            return s;
        }
    }
}

/// The decoded payload of a compact JWS.
pub fn jwt_payload(token: &str) -> serde_json::Value {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;
    let payload = token
        .split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("not a compact JWS: {token:?}"));
    let bytes = B64.decode(payload).expect("base64url JWT payload");
    serde_json::from_slice(&bytes).expect("JSON JWT payload")
}

/// The `amr` values of a JSON object (whoami or JWT claims).
pub fn amr(v: &serde_json::Value) -> Vec<String> {
    v["amr"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `code` occurs in `hay` as a number of its own: not inside a longer run of digits
/// and not as the fraction of a timestamp (`…:05.123456Z`).
pub fn has_code_token(hay: &str, code: &str) -> bool {
    let bytes = hay.as_bytes();
    hay.match_indices(code).any(|(at, _)| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(at + code.len()).copied();
        !before.is_some_and(|b| b.is_ascii_digit() || b == b'.')
            && !after.is_some_and(|b| b.is_ascii_digit())
    })
}

/// The session a login step handed out.
#[derive(Clone, Debug)]
pub struct Step {
    pub status: u16,
    /// The session cookie set (empty if none).
    pub cookie: String,
    /// `next` of the JSON answer.
    pub next: String,
    /// `csrf` of the JSON answer (empty if none).
    pub csrf: String,
    pub body: serde_json::Value,
    pub resp: Response,
}

impl Step {
    fn from(resp: Response) -> Step {
        let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
        Step {
            status: resp.status,
            cookie: resp.set_cookie_value(SESSION_COOKIE).unwrap_or_default(),
            next: body["next"].as_str().unwrap_or_default().to_string(),
            csrf: body["csrf"].as_str().unwrap_or_default().to_string(),
            body,
            resp,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} {:?}\n{}",
            self.status,
            self.resp.headers,
            self.resp.text()
        )
    }
}

/// What enrolment returned.
#[derive(Clone, Debug)]
pub struct Enrolled {
    /// The base32 key (no spaces), as read off the enrolment page.
    pub key: String,
    /// The active session after enrolment (the cookie the confirmation set).
    pub session: String,
    pub recovery_codes: Vec<String>,
    /// The unix time whose code confirmed the enrolment.
    pub confirmed_with: u64,
}

/// The base32 key shown on the enrolment page: the `<code>` element, spaces removed.
pub fn key_from_page(html: &str) -> Option<String> {
    let start = html.find("<code>")? + "<code>".len();
    let end = start + html[start..].find("</code>")?;
    let key: String = html[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    (!key.is_empty()).then_some(key)
}

/// JSON/form client of acme on one world (cheap to clone into spawned tasks).
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    /// `https://acme.localhost:<port>`.
    pub origin: String,
}

impl Client {
    /// A client with its own connection pool.
    pub fn new(gw: &Gateway) -> Client {
        Client {
            http: gw.client(),
            origin: gw.origin(ACME),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    fn with(
        mut req: reqwest::RequestBuilder,
        session: Option<&str>,
        ip: Option<&str>,
    ) -> reqwest::RequestBuilder {
        if let Some(s) = session {
            req = req.header("cookie", format!("{SESSION_COOKIE}={s}"));
        }
        if let Some(ip) = ip {
            req = req.header("x-forwarded-for", ip);
        }
        req
    }

    /// `POST /.auth/login` (JSON) from client address `ip` (None: 127.0.0.1).
    pub async fn login(&self, user: &str, ip: Option<&str>) -> Step {
        let body = serde_json::json!({ "username": user, "password": PASSWORD });
        let req = self
            .http
            .post(self.url("/.auth/login"))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(body.to_string());
        Step::from(fetch(Self::with(req, None, ip)).await)
    }

    /// A login that must stop at `next` (200 with a session cookie).
    pub async fn login_expect(&self, user: &str, ip: Option<&str>, next: &str) -> Step {
        let step = self.login(user, ip).await;
        assert_eq!(step.status, 200, "login of {user}: {}", step.describe());
        assert_eq!(step.next, next, "login of {user}: {}", step.describe());
        assert!(
            !step.cookie.is_empty(),
            "login of {user} set no session cookie: {}",
            step.describe()
        );
        step
    }

    /// `POST /.auth/mfa` (form fields, `Accept: application/json`) with a TOTP code.
    pub async fn verify(&self, session: &str, csrf: &str, code: &str, ip: Option<&str>) -> Step {
        self.post_mfa(session, &[("code", code), ("csrf", csrf)], ip)
            .await
    }

    /// `POST /.auth/mfa` with a recovery code.
    pub async fn verify_recovery(
        &self,
        session: &str,
        csrf: &str,
        code: &str,
        ip: Option<&str>,
    ) -> Step {
        self.post_mfa(session, &[("recovery_code", code), ("csrf", csrf)], ip)
            .await
    }

    async fn post_mfa(&self, session: &str, fields: &[(&str, &str)], ip: Option<&str>) -> Step {
        let req = self
            .http
            .post(self.url("/.auth/mfa"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(form_body(fields));
        Step::from(fetch(Self::with(req, Some(session), ip)).await)
    }

    /// `GET path` with the session, as a browser (HTML) or API client (JSON).
    pub async fn get(&self, path: &str, session: Option<&str>, json: bool) -> Response {
        let accept = if json {
            "application/json"
        } else {
            "text/html,application/xhtml+xml"
        };
        let req = self.http.get(self.url(path)).header("accept", accept);
        fetch(Self::with(req, session, None)).await
    }

    /// `GET /.auth/whoami` status and body.
    pub async fn whoami(&self, session: &str) -> Response {
        self.get("/.auth/whoami", Some(session), true).await
    }

    /// The session's CSRF token from whoami (active sessions only).
    pub async fn csrf_of(&self, session: &str) -> String {
        let who = self.whoami(session).await;
        assert_eq!(who.status, 200, "whoami: {}", who.text());
        who.json()["csrf"]
            .as_str()
            .expect("whoami csrf")
            .to_string()
    }

    /// `GET /.auth/mfa/enroll` (HTML): the page with a new secret.
    pub async fn enroll_page(&self, session: &str) -> Response {
        self.get("/.auth/mfa/enroll", Some(session), false).await
    }

    /// `POST /.auth/mfa/enroll` with `fields` (form, `Accept: application/json`).
    pub async fn enroll_post(
        &self,
        session: &str,
        fields: &[(&str, &str)],
        ip: Option<&str>,
    ) -> Step {
        let req = self
            .http
            .post(self.url("/.auth/mfa/enroll"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(form_body(fields));
        Step::from(fetch(Self::with(req, Some(session), ip)).await)
    }

    /// Opens the enrolment page with `session` (active or enrol stage) and reads the key and
    /// the form's CSRF token.
    pub async fn open_enrolment(&self, session: &str) -> (String, String, String) {
        let page = self.enroll_page(session).await;
        assert_eq!(page.status, 200, "enrolment page: {}", page.text());
        let html = page.text();
        let key = key_from_page(&html)
            .unwrap_or_else(|| panic!("no <code>key</code> on the enrolment page:\n{html}"));
        let csrf = form_field(&html, "csrf")
            .unwrap_or_else(|| panic!("no csrf field on the enrolment page:\n{html}"));
        (key, csrf, html)
    }

    /// Turns TOTP on for the user of `session`, confirming with the code for now + `offset`
    /// seconds (use −30 to leave the current and next steps free for the test).
    pub async fn enroll(&self, session: &str, offset: i64, ip: Option<&str>) -> Enrolled {
        fresh_window(4.0).await;
        let (key, csrf, _) = self.open_enrolment(session).await;
        let at = now().saturating_add_signed(offset);
        let code = oathtool(&key, at);
        let step = self
            .enroll_post(
                session,
                &[("action", "confirm"), ("code", &code), ("csrf", &csrf)],
                ip,
            )
            .await;
        assert_eq!(step.status, 200, "enrolment confirm: {}", step.describe());
        assert_eq!(step.next, "done", "enrolment confirm: {}", step.describe());
        let recovery_codes: Vec<String> = step.body["recovery_codes"]
            .as_array()
            .unwrap_or_else(|| panic!("no recovery_codes: {}", step.describe()))
            .iter()
            .map(|c| c.as_str().expect("recovery code string").to_string())
            .collect();
        assert!(
            !step.cookie.is_empty(),
            "enrolment set no session cookie: {}",
            step.describe()
        );
        Enrolled {
            key,
            session: step.cookie,
            recovery_codes,
            confirmed_with: at,
        }
    }

    /// A new user signed in with the password alone (no TOTP yet): its active session.
    pub async fn new_user(&self, gw: &Gateway, user: &str) -> String {
        gw.add_user("acme", user, PASSWORD, &[]);
        self.login_expect(user, None, "done").await.cookie
    }

    /// A new user with TOTP on, enrolled with the code of the previous step (so the current
    /// and the next step are still unused).
    pub async fn enrolled_user(&self, gw: &Gateway, user: &str) -> Enrolled {
        let session = self.new_user(gw, user).await;
        self.enroll(&session, -(STEP as i64), None).await
    }
}

/// Path of the store's database file.
pub fn db_path(gw: &Gateway) -> std::path::PathBuf {
    gw.site.path("data/portcullis.db")
}

/// Runs `sqlite3 <db> <sql>` (waiting up to 5 s on locks); stdout.
pub fn sqlite(gw: &Gateway, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 5000")
        .arg(db_path(gw))
        .arg(sql)
        .output()
        .expect("run sqlite3 (apt-get install sqlite3)");
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Audit events `event` of acme about `subject`, polled until at least `want` exist (bounded);
/// returns how many there are.
pub fn audit_count(gw: &Gateway, event: &str, subject: &str, want: usize) -> usize {
    let sql = format!(
        "SELECT count(*) FROM audit_event WHERE tenant = 'acme' AND event = '{event}' \
         AND subject = '{subject}';"
    );
    let mut n = 0;
    poll_until(Duration::from_secs(10), || {
        n = sqlite(gw, &sql).trim().parse().unwrap_or(0);
        n >= want
    });
    n
}

/// Every audit event of acme as `event|subject|outcome|reason` lines (for messages).
pub fn audit_summary(gw: &Gateway) -> String {
    sqlite(
        gw,
        "SELECT event, coalesce(subject, '-'), outcome, coalesce(reason, '-'), count(*) \
         FROM audit_event WHERE tenant = 'acme' GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4;",
    )
}

/// The sum of a counter's samples.
pub fn metric_sum(gw: &Gateway, name: &str, label: Option<(&str, &str)>) -> f64 {
    gw.metrics()
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| label.is_none_or(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
        .sum()
}
