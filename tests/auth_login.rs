//! Sign-in (issue 3, items 2 and 10): the server-rendered form under a strict CSP, form and
//! JSON sign-in, one answer for unknown users, disabled users and wrong passwords (and the
//! same timing), login CSRF, and every open-redirect variant of `return_to`.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Extra request headers, as (name, value).
type Headers<'a> = Vec<(&'a str, &'a str)>;

const ACME: &str = "acme.localhost";
const ALICE_PW: &str = "alice-correct-horse-battery";

/// The `return_to` values an attacker would try (as the form or query value, decoded once).
const OPEN_REDIRECTS: &[&str] = &[
    "//evil.com",
    "/\\evil.com",
    "https://evil.com",
    "/%2F%2Fevil.com",
    "%2F%2Fevil.com",
    "/\t/evil.com",
    "javascript:alert(1)",
    " /x",
    "/.auth/logout",
    // Beyond the list: more spellings browsers read as another host or scheme.
    "\\\\evil.com",
    "///evil.com",
    "/%5Cevil.com",
    "/%5C%5Cevil.com",
    "/\n/evil.com",
    "/%09/evil.com",
    "http:evil.com",
    "https:/evil.com",
    "evil.com",
    "/\\/evil.com",
    "/.auth/login",
    // Header injection through the Location a redirect writes.
    "/\r\nSet-Cookie: injected=1",
    "/%0d%0aSet-Cookie:%20injected=1",
];

/// Where a redirect may go: a path on this host (not protocol-relative, no backslash or
/// whitespace a browser would drop or fold, not back into the login machinery).
fn same_host_path_problem(location: Option<&str>) -> Option<String> {
    let Some(loc) = location else {
        return Some("no Location".into());
    };
    if !loc.starts_with('/') {
        return Some(format!("Location {loc:?} is not a path"));
    }
    if loc.starts_with("//") || loc.starts_with("/\\") {
        return Some(format!("Location {loc:?} is protocol-relative"));
    }
    if loc
        .bytes()
        .any(|b| b == b'\\' || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Some(format!("Location {loc:?} holds a backslash or whitespace"));
    }
    if loc.starts_with("/.auth/") {
        return Some(format!("Location {loc:?} leads back into /.auth/"));
    }
    None
}

fn assert_no_session_cookie(resp: &Response, case: &str) {
    if let Some(line) = resp.set_cookie(SESSION_COOKIE) {
        assert!(
            cookie_is_cleared(line),
            "{case}: a session cookie was issued: {line}"
        );
    }
}

#[tokio::test]
async fn login_form_is_html_under_a_strict_csp_with_labelled_fields_and_a_csrf_cookie() {
    let gw = Gateway::start_default();
    let mut b = gw.browser(ACME);
    let resp = b.get("/.auth/login?return_to=%2Fapp%2Finbox").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let ct = resp.header("content-type").unwrap_or("");
    assert!(ct.starts_with("text/html"), "content-type {ct:?}");

    // CSP: scripts fall under script-src, else default-src; neither may allow inline script.
    let csp = resp
        .header("content-security-policy")
        .expect("Content-Security-Policy header");
    let directive = |name: &str| {
        csp.split(';')
            .map(str::trim)
            .find(|d| d.split_whitespace().next() == Some(name))
            .map(str::to_string)
    };
    let script = directive("script-src")
        .or_else(|| directive("default-src"))
        .unwrap_or_else(|| panic!("CSP restricts no scripts: {csp}"));
    for bad in ["'unsafe-inline'", "'unsafe-eval'", "*", "data:", "https:"] {
        assert!(
            !script.split_whitespace().any(|s| s == bad),
            "script policy allows {bad}: {csp}"
        );
    }
    assert!(!csp.contains("unsafe-inline"), "CSP: {csp}");
    // Clickjacking the sign-in form: no framing, by CSP or X-Frame-Options.
    let no_frames = directive("frame-ancestors").is_some_and(|d| d.contains("'none'"))
        || resp
            .header("x-frame-options")
            .is_some_and(|x| x.eq_ignore_ascii_case("deny"));
    assert!(no_frames, "the sign-in form may be framed: {csp}");
    // The page holds a CSRF token: no shared cache may keep it.
    let cache = resp.header("cache-control").unwrap_or("");
    assert!(cache.contains("no-store"), "Cache-Control {cache:?}");

    let html = resp.text();
    assert!(!html.to_ascii_lowercase().contains("<script"), "{html}");
    assert!(
        html.contains("action=\"/.auth/login\"") && html.contains("method=\"post\""),
        "form posting to /.auth/login: {html}"
    );
    for field in ["username", "password"] {
        assert!(
            html.contains(&format!("<label for=\"{field}\"")),
            "no <label for=\"{field}\">: {html}"
        );
        assert!(
            html.contains(&format!("id=\"{field}\" name=\"{field}\"")),
            "no input id/name {field}: {html}"
        );
    }
    assert!(html.contains("type=\"password\""), "{html}");
    assert_eq!(
        form_field(&html, "return_to").as_deref(),
        Some("/app/inbox"),
        "return_to carried in the form"
    );

    let csrf = form_field(&html, "csrf").expect("csrf field");
    assert!(csrf.len() >= 22, "csrf token too short: {csrf:?}");
    let line = resp
        .set_cookie(LOGIN_CSRF_COOKIE)
        .unwrap_or_else(|| panic!("no {LOGIN_CSRF_COOKIE} cookie: {:?}", resp.headers));
    assert_eq!(
        resp.set_cookie_value(LOGIN_CSRF_COOKIE).as_deref(),
        Some(csrf.as_str()),
        "double-submit: the cookie holds the form's token"
    );
    let attrs = cookie_attributes(line);
    for needed in ["Secure", "HttpOnly", "Path=/"] {
        assert!(
            attrs.iter().any(|a| a.eq_ignore_ascii_case(needed)),
            "{LOGIN_CSRF_COOKIE} lacks {needed}: {line}"
        );
    }
    assert!(
        !attrs
            .iter()
            .any(|a| a.to_ascii_lowercase().starts_with("domain")),
        "{line}"
    );
}

#[tokio::test]
async fn form_login_redirects_to_return_to_with_a_secure_httponly_lax_host_only_cookie() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    let mut b = gw.browser(ACME);
    let resp = b.login("alice", ALICE_PW, "/app/inbox?x=1").await;
    assert_eq!(resp.status, 303, "{:?}\n{}", resp.headers, resp.text());
    assert_eq!(resp.location(), Some("/app/inbox?x=1"));

    let line = resp
        .set_cookie(SESSION_COOKIE)
        .unwrap_or_else(|| panic!("no session cookie: {:?}", resp.headers));
    let attrs = cookie_attributes(line);
    for needed in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(
            attrs.iter().any(|a| a.eq_ignore_ascii_case(needed)),
            "session cookie lacks {needed}: {line}"
        );
    }
    assert!(
        !attrs
            .iter()
            .any(|a| a.to_ascii_lowercase().starts_with("domain")),
        "a __Host- cookie has no Domain: {line}"
    );
    let token = resp.set_cookie_value(SESSION_COOKIE).unwrap_or_default();
    // ≥ 128 random bits: at least 22 base64url characters.
    assert!(
        token.len() >= 22
            && token
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
        "session token {token:?}"
    );

    let page = b.get("/app/inbox?x=1").await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(page.expect_echo().header_once("x-portcullis-user"), "alice");
}

#[tokio::test]
async fn json_login_answers_json_and_sets_the_session_cookie() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    let resp = gw.login_json(ACME, "alice", ALICE_PW, None).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let ct = resp.header("content-type").unwrap_or("");
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    assert!(resp.json().is_object(), "{}", resp.text());
    let line = resp.set_cookie(SESSION_COOKIE).expect("session cookie");
    let attrs = cookie_attributes(line);
    for needed in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(
            attrs.iter().any(|a| a.eq_ignore_ascii_case(needed)),
            "{line}"
        );
    }
    let token = resp.set_cookie_value(SESSION_COOKIE).unwrap_or_default();
    let who = gw.whoami(ACME, &token).await;
    assert_eq!(who.status, 200, "{}", who.text());
    assert_eq!(who.json()["user"], "alice");
    assert_eq!(who.json()["tenant"], "acme");
}

/// The three failures a sign-in can hide. Usernames of one length, so the pages compare
/// byte for byte once the username and the fresh CSRF token are masked.
struct Failures {
    gw: Gateway,
}

const WRONG: (&str, &str) = ("alice", "not-alices-password-at-all");
const UNKNOWN: (&str, &str) = ("ghost", "not-alices-password-at-all");
const DISABLED: (&str, &str) = ("diana", "diana-correct-horse-battery");

impl Failures {
    fn start() -> Failures {
        let gw = Gateway::start_default();
        gw.add_user("acme", "alice", ALICE_PW, &[]);
        gw.add_user("acme", "diana", DISABLED.1, &[]);
        gw.disable_user("acme", "diana");
        Failures { gw }
    }
}

fn masked(resp: &Response, user: &str, csrf: Option<&str>) -> (u16, Vec<(String, String)>, String) {
    let mask = |s: &str| {
        let mut s = s.replace(user, "<USER>");
        if let Some(c) = csrf.filter(|c| !c.is_empty()) {
            s = s.replace(c, "<CSRF>");
        }
        s
    };
    let mut headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("date"))
        .map(|(n, v)| (n.to_ascii_lowercase(), mask(v)))
        .collect();
    headers.sort();
    (resp.status, headers, mask(&resp.text()))
}

#[tokio::test]
async fn wrong_password_unknown_user_and_disabled_user_get_the_same_form_answer() {
    let f = Failures::start();
    let mut answers = Vec::new();
    for (user, password) in [WRONG, UNKNOWN, DISABLED] {
        let mut b = f.gw.browser(ACME);
        let resp = b.login(user, password, "/app").await;
        assert_no_session_cookie(&resp, user);
        assert!(
            (400..500).contains(&resp.status),
            "{user}: failed sign-in answered {}",
            resp.status
        );
        let csrf = resp.set_cookie_value(LOGIN_CSRF_COOKIE);
        answers.push((user, masked(&resp, user, csrf.as_deref())));
    }
    let (first_user, first) = &answers[0];
    for (user, answer) in &answers[1..] {
        assert_eq!(answer, first, "form answers differ: {user} vs {first_user}");
    }
}

#[tokio::test]
async fn wrong_password_unknown_user_and_disabled_user_get_the_same_json_answer() {
    let f = Failures::start();
    let mut answers = Vec::new();
    for (user, password) in [WRONG, UNKNOWN, DISABLED] {
        let resp = f.gw.login_json(ACME, user, password, None).await;
        assert_no_session_cookie(&resp, user);
        assert!(
            (400..500).contains(&resp.status),
            "{user}: failed sign-in answered {}",
            resp.status
        );
        answers.push((user, masked(&resp, user, None)));
    }
    let (first_user, first) = &answers[0];
    for (user, answer) in &answers[1..] {
        assert_eq!(answer, first, "JSON answers differ: {user} vs {first_user}");
    }
}

#[tokio::test]
async fn login_csrf_is_refused_without_a_matching_token_or_from_another_origin() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    let origin = gw.origin(ACME);
    let form = "application/x-www-form-urlencoded";
    let json = "application/json";

    let mut b = gw.browser(ACME);
    let page = b.get("/.auth/login").await;
    let csrf = form_field(&page.text(), "csrf").expect("csrf field");
    let other = form_field(&gw.browser(ACME).get("/.auth/login").await.text(), "csrf")
        .expect("second csrf field");
    assert_ne!(csrf, other);
    let fields = |token: Option<&str>| {
        let mut f = vec![("username", "alice"), ("password", ALICE_PW)];
        if let Some(t) = token {
            f.push(("csrf", t));
        }
        form_body(&f)
    };
    let json_body = serde_json::json!({ "username": "alice", "password": ALICE_PW }).to_string();
    let http_origin = origin.replacen("https:", "http:", 1);

    // (case, content type, body, headers, keep the csrf cookie)
    let cases: Vec<(&str, &str, String, Headers, bool)> = vec![
        ("form without csrf field", form, fields(None), vec![], true),
        (
            "form with an empty csrf field",
            form,
            fields(Some("")),
            vec![],
            true,
        ),
        (
            "form with another page's token",
            form,
            fields(Some(other.as_str())),
            vec![],
            true,
        ),
        (
            "form with a token but no csrf cookie",
            form,
            fields(Some(csrf.as_str())),
            vec![],
            false,
        ),
        (
            "form from Origin https://evil.com",
            form,
            fields(Some(csrf.as_str())),
            vec![("origin", "https://evil.com")],
            true,
        ),
        (
            "form from Origin null",
            form,
            fields(Some(csrf.as_str())),
            vec![("origin", "null")],
            true,
        ),
        (
            "form from the same host on another port",
            form,
            fields(Some(csrf.as_str())),
            vec![("origin", "https://acme.localhost")],
            true,
        ),
        (
            "form from the same host over http",
            form,
            fields(Some(csrf.as_str())),
            vec![("origin", http_origin.as_str())],
            true,
        ),
        (
            "form with Sec-Fetch-Site: cross-site",
            form,
            fields(Some(csrf.as_str())),
            vec![("sec-fetch-site", "cross-site")],
            true,
        ),
        (
            "form with Sec-Fetch-Site: same-site",
            form,
            fields(Some(csrf.as_str())),
            vec![("sec-fetch-site", "same-site")],
            true,
        ),
        (
            "JSON from Origin https://evil.com",
            json,
            json_body.clone(),
            vec![("origin", "https://evil.com")],
            true,
        ),
        (
            "JSON with Sec-Fetch-Site: cross-site",
            json,
            json_body.clone(),
            vec![("sec-fetch-site", "cross-site")],
            true,
        ),
    ];
    let mut failures = Vec::new();
    for (case, ct, body, headers, keep_cookie) in cases {
        let saved = b.cookie(LOGIN_CSRF_COOKIE).map(str::to_string);
        if !keep_cookie {
            b.remove_cookie(LOGIN_CSRF_COOKIE);
        }
        let resp = b.post("/.auth/login", ct, body, &headers).await;
        if let Some(c) = saved {
            b.set_cookie(LOGIN_CSRF_COOKIE, &c);
        }
        if resp.status != 403 {
            failures.push(format!("{case}: expected 403, got {}", resp.status));
        }
        if resp
            .set_cookie(SESSION_COOKIE)
            .is_some_and(|l| !cookie_is_cleared(l))
        {
            failures.push(format!("{case}: a session cookie was issued"));
        }
        if b.session().is_some() {
            failures.push(format!("{case}: the browser holds a session"));
            b.remove_cookie(SESSION_COOKIE);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Control: the same browser's own form, same origin, signs in.
    let resp = b
        .post(
            "/.auth/login",
            form,
            fields(Some(csrf.as_str())),
            &[("origin", &origin), ("sec-fetch-site", "same-origin")],
        )
        .await;
    assert_eq!(resp.status, 303, "control sign-in: {}", resp.text());
    assert!(b.session().is_some(), "control sign-in set no session");
}

#[tokio::test]
async fn login_with_a_body_a_cross_site_form_can_send_is_refused() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    let mut b = gw.browser(ACME);
    let json_body = serde_json::json!({ "username": "alice", "password": ALICE_PW }).to_string();
    let form_body = form_body(&[("username", "alice"), ("password", ALICE_PW)]);
    let boundary = "----x";
    let multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\nalice\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\n{ALICE_PW}\r\n\
         --{boundary}--\r\n"
    );
    let multipart_ct = format!("multipart/form-data; boundary={boundary}");
    let mut failures = Vec::new();
    for (case, ct, body) in [
        ("text/plain JSON", "text/plain", json_body.clone()),
        (
            "text/plain with charset",
            "text/plain; charset=utf-8",
            json_body,
        ),
        ("text/plain form fields", "text/plain", form_body),
        ("multipart form fields", multipart_ct.as_str(), multipart),
    ] {
        let resp = b.post("/.auth/login", ct, body, &[]).await;
        if !(400..500).contains(&resp.status) {
            failures.push(format!(
                "{case}: expected a 4xx refusal, got {}",
                resp.status
            ));
        }
        if resp
            .set_cookie(SESSION_COOKIE)
            .is_some_and(|l| !cookie_is_cleared(l))
        {
            failures.push(format!("{case}: a session cookie was issued"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A gateway that believes `X-Forwarded-For` from loopback, so a test that must sign in
/// more often than one client address may (the per-IP login budget) can speak for many.
fn start_behind_a_proxy() -> Gateway {
    Gateway::start(Opts {
        trusted_proxies: vec!["127.0.0.0/8".into()],
        ..Opts::default()
    })
}

#[tokio::test]
async fn open_redirect_variants_in_the_login_form_post_stay_on_this_host() {
    let gw = start_behind_a_proxy();
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    let origin = gw.origin(ACME);
    let mut b = gw.browser(ACME);
    let mut failures = Vec::new();
    let control = "/app/inbox?x=1";
    for (i, &return_to) in OPEN_REDIRECTS.iter().chain([control].iter()).enumerate() {
        b.remove_cookie(SESSION_COOKIE);
        let page = b.get("/.auth/login").await;
        let csrf = form_field(&page.text(), "csrf").expect("csrf field");
        let client = format!("10.0.0.{}", i + 1);
        let resp = b
            .post(
                "/.auth/login",
                "application/x-www-form-urlencoded",
                form_body(&[
                    ("username", "alice"),
                    ("password", ALICE_PW),
                    ("csrf", &csrf),
                    ("return_to", return_to),
                ]),
                &[
                    ("origin", &origin),
                    ("sec-fetch-site", "same-origin"),
                    ("x-forwarded-for", &client),
                ],
            )
            .await;
        if resp.status != 303 {
            failures.push(format!(
                "{return_to:?}: sign-in answered {} (expected 303)",
                resp.status
            ));
            continue;
        }
        if return_to == control {
            if resp.location() != Some(control) {
                failures.push(format!(
                    "control {control:?}: Location {:?}",
                    resp.location()
                ));
            }
        } else if let Some(problem) = same_host_path_problem(resp.location()) {
            failures.push(format!("return_to {return_to:?}: {problem}"));
        }
    }

    // JSON sign-in names where to go in its body; an API client's front end follows it.
    for (i, &return_to) in OPEN_REDIRECTS.iter().chain([control].iter()).enumerate() {
        let client = format!("10.0.1.{}", i + 1);
        let resp = fetch(
            gw.client()
                .post(gw.url(ACME, "/.auth/login"))
                .header("content-type", "application/json")
                .header("accept", "application/json")
                .header("x-forwarded-for", client)
                .body(
                    serde_json::json!({
                        "username": "alice",
                        "password": ALICE_PW,
                        "return_to": return_to,
                    })
                    .to_string(),
                ),
        )
        .await;
        if resp.status != 200 {
            failures.push(format!("JSON {return_to:?}: status {}", resp.status));
            continue;
        }
        let body = resp.json();
        let named = body["return_to"].as_str();
        if return_to == control {
            if named != Some(control) {
                failures.push(format!("JSON control: return_to {named:?}"));
            }
        } else if let Some(problem) = same_host_path_problem(named) {
            failures.push(format!("JSON return_to {return_to:?}: {problem}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn open_redirect_variants_in_the_login_query_stay_on_this_host() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    let mut b = gw.browser(ACME);
    let control = "/app/inbox?x=1";
    let mut failures = Vec::new();

    // Signed out: the form carries a safe return_to.
    for &return_to in OPEN_REDIRECTS.iter().chain([control].iter()) {
        let page = b
            .get(&format!(
                "/.auth/login?return_to={}",
                query_encode(return_to)
            ))
            .await;
        if page.status != 200 {
            failures.push(format!("signed out {return_to:?}: status {}", page.status));
            continue;
        }
        let carried = form_field(&page.text(), "return_to");
        let problem = if return_to == control {
            (carried.as_deref() != Some(control)).then(|| format!("carried {carried:?}"))
        } else {
            same_host_path_problem(carried.as_deref())
        };
        if let Some(problem) = problem {
            failures.push(format!(
                "signed out, form return_to for {return_to:?}: {problem}"
            ));
        }
    }

    // Signed in: the login page redirects straight to return_to.
    let resp = b.login("alice", ALICE_PW, "/").await;
    assert_eq!(resp.status, 303, "sign-in: {}", resp.text());
    for &return_to in OPEN_REDIRECTS.iter().chain([control].iter()) {
        let resp = b
            .get(&format!(
                "/.auth/login?return_to={}",
                query_encode(return_to)
            ))
            .await;
        if !(300..400).contains(&resp.status) {
            failures.push(format!(
                "signed in {return_to:?}: status {} (expected a redirect)",
                resp.status
            ));
            continue;
        }
        if return_to == control {
            if resp.location() != Some(control) {
                failures.push(format!("signed in control: Location {:?}", resp.location()));
            }
        } else if let Some(problem) = same_host_path_problem(resp.location()) {
            failures.push(format!("signed in, return_to {return_to:?}: {problem}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn unknown_user_and_wrong_password_take_the_same_time() {
    // Each attempt speaks for a fresh client address (trusted proxy), and five accounts of
    // each kind take six failures each: no login budget is what gets measured.
    let gw = start_behind_a_proxy();
    let real = ["tina", "tom", "tess", "tara", "theo"];
    for name in real {
        gw.add_user("acme", name, &format!("{name}-correct-horse-battery"), &[]);
    }
    let unknown = ["nobody-1", "nobody-2", "nobody-3", "nobody-4", "nobody-5"];
    let wrong = "definitely-not-the-password";
    let client = gw.client();
    let url = gw.url(ACME, "/.auth/login");
    let mut n = 0u32;
    let mut attempt = |user: &str| {
        n += 1;
        let req = client
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .header(
                "x-forwarded-for",
                format!("10.1.{}.{}", n / 200, n % 200 + 1),
            )
            .body(serde_json::json!({ "username": user, "password": wrong }).to_string());
        async move {
            let start = Instant::now();
            let resp = fetch(req).await;
            (start.elapsed(), resp.status)
        }
    };
    // Warm up the connection and the hasher.
    for _ in 0..2 {
        let (_, status) = attempt("nobody-0").await;
        assert_eq!(status, 401, "a failed JSON sign-in");
    }

    let (mut t_unknown, mut t_wrong) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for i in 0..30 {
        let (d, s) = attempt(unknown[i % 5]).await;
        assert_eq!(s, 401, "unknown user attempt {i}");
        t_unknown.push(d);
        let (d, s) = attempt(real[i % 5]).await;
        assert_eq!(s, 401, "wrong password attempt {i}");
        t_wrong.push(d);
    }
    let (mu, mw) = (median(t_unknown.clone()), median(t_wrong.clone()));
    let ratio = mu.as_secs_f64() / mw.as_secs_f64();
    eprintln!("median unknown user {mu:?}, wrong password {mw:?}, ratio {ratio:.3}");
    assert!(
        (0.67..=1.5).contains(&ratio),
        "median unknown user {mu:?} vs wrong password {mw:?} (ratio {ratio:.2}) over {:?}\n\
         unknown: {t_unknown:?}\nwrong: {t_wrong:?}",
        started.elapsed()
    );
    // The answer must cost a password hash either way; a fast path would show here.
    assert!(
        mu >= Duration::from_millis(5),
        "unknown users answered in {mu:?}: no dummy hash?"
    );
}

/// NFKC of `text` by Python's `unicodedata`: an implementation independent of the gateway's.
fn python_nfkc(text: &str) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, unicodedata; sys.stdout.write(unicodedata.normalize('NFKC', sys.argv[1]))",
            text,
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[tokio::test]
async fn a_password_signs_in_however_its_unicode_is_typed() {
    let gw = Gateway::start_default();
    // Set through the CLI with a ligature, full-width letters and a decomposed accent.
    let as_set = "\u{fb01}ne \u{ff23}\u{ff21}\u{ff26}\u{ff25}\u{301} au lait sans sucre";
    gw.add_user("acme", "zoe", as_set, &[]);

    let plain = "fine CAF\u{c9} au lait sans sucre"; // what another keyboard sends
    let independent = python_nfkc(as_set);
    assert_eq!(
        independent, plain,
        "Python's NFKC agrees on the expected form"
    );
    for typed in [as_set, plain] {
        let resp = gw.login_json(ACME, "zoe", typed, None).await;
        assert_eq!(resp.status, 200, "{typed:?}: {}", resp.text());
    }
    // Normalization is not a looser match: other letters, case or accents still fail.
    for wrong in [
        "fine CAFE au lait sans sucre",
        "fine caf\u{e9} au lait sans sucre",
        "fine CAF\u{c8} au lait sans sucre",
        "\u{fb02}ne CAF\u{c9} au lait sans sucre",
    ] {
        let resp = gw.login_json(ACME, "zoe", wrong, None).await;
        assert_eq!(resp.status, 401, "{wrong:?} signed in: {}", resp.text());
    }
}
