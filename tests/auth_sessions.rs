//! Sessions and routes (issue 3, items 4, 5, 8 and 10): rotation against session fixation,
//! cookie tossing and another tenant's cookie, route enforcement, logout, password changes
//! ending sessions, the forced change of an expired password, the tenant's timeouts, and no
//! secret in the gateway's logs.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

/// Extra request headers, as (name, value).
type Headers<'a> = Vec<(&'a str, &'a str)>;

const ACME: &str = "acme.localhost";
const GLOBEX: &str = "globex.localhost";
const ALICE_PW: &str = "alice-correct-horse-battery";
const BOB_PW: &str = "bob-staple-lantern-orchid";
const MALLORY_PW: &str = "mallory-quiet-river-stone";

/// How long a session ended by another process (the CLI) may still be honoured: the
/// gateway trusts a validated session for at most 1 s.
const CROSS_PROCESS_END: Duration = Duration::from_millis(2500);

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A random, well-formed token an attacker could plant (256 bits, base64url).
fn planted_token() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// Whether `resp` turns a request without a usable session away (302 to login or 401) and
/// did not come from the backend.
fn is_turned_away(resp: &Response, host: &str) -> bool {
    resp.echo().is_none() && is_browser_login_challenge(resp.status, resp.location(), host)
}

#[tokio::test]
async fn planted_session_cookie_is_replaced_at_login() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    let mut failures = Vec::new();
    for planted in [planted_token(), "attacker-chosen-value".to_string()] {
        let mut b = gw.browser(ACME);
        b.set_cookie(SESSION_COOKIE, &planted);
        let resp = b.login("alice", ALICE_PW, "/app").await;
        assert_eq!(resp.status, 303, "sign-in: {}", resp.text());
        let issued = resp.set_cookie_value(SESSION_COOKIE).unwrap_or_default();
        if issued.is_empty() || issued == planted {
            failures.push(format!(
                "planted {planted:?}: login set the session cookie to {issued:?}"
            ));
            continue;
        }
        if gw.whoami(ACME, &planted).await.status != 401 {
            failures.push(format!("planted {planted:?} is a session after login"));
        }
        let who = gw.whoami(ACME, &issued).await;
        if who.status != 200 || who.json()["user"] != "alice" {
            failures.push(format!(
                "the issued cookie is not alice's session: {}",
                who.text()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn planted_session_of_another_user_is_rotated_and_ended_at_login() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    gw.add_user("acme", "mallory", MALLORY_PW, &[]);

    // Form: the victim opened the sign-in form, then the attacker's session was planted.
    let mallory = gw.login(ACME, "mallory", MALLORY_PW).await;
    let mut b = gw.browser(ACME);
    let page = b.get("/.auth/login?return_to=%2Fapp").await;
    let csrf = form_field(&page.text(), "csrf").expect("csrf field");
    b.set_cookie(SESSION_COOKIE, &mallory);
    let resp = b
        .post_form(
            "/.auth/login",
            &[
                ("username", "alice"),
                ("password", ALICE_PW),
                ("csrf", &csrf),
                ("return_to", "/app"),
            ],
        )
        .await;
    assert_eq!(resp.status, 303, "form sign-in: {}", resp.text());
    let alice = resp.set_cookie_value(SESSION_COOKIE).unwrap_or_default();
    assert!(
        !alice.is_empty() && alice != mallory,
        "form sign-in kept the planted session cookie"
    );
    let who = gw.whoami(ACME, &alice).await;
    assert_eq!(who.json()["user"], "alice", "{}", who.text());
    assert_eq!(
        gw.whoami(ACME, &mallory).await.status,
        401,
        "the session presented at sign-in must end"
    );

    // JSON: the same with an API client.
    let mallory = gw.login(ACME, "mallory", MALLORY_PW).await;
    let resp = gw.login_json(ACME, "alice", ALICE_PW, Some(&mallory)).await;
    assert_eq!(resp.status, 200, "JSON sign-in: {}", resp.text());
    let alice = resp.set_cookie_value(SESSION_COOKIE).unwrap_or_default();
    assert!(
        !alice.is_empty() && alice != mallory,
        "JSON sign-in kept it"
    );
    assert_eq!(gw.whoami(ACME, &alice).await.json()["user"], "alice");
    assert_eq!(
        gw.whoami(ACME, &mallory).await.status,
        401,
        "the session presented at JSON sign-in must end"
    );
}

#[tokio::test]
async fn another_tenants_session_cookie_is_no_session() {
    let gw = Gateway::start_default();
    // The same username in both tenants: two users, and neither session crosses.
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    gw.add_user("globex", "alice", "globex-alice-lantern-orchid", &[]);
    let acme = gw.login(ACME, "alice", ALICE_PW).await;
    let globex = gw
        .login(GLOBEX, "alice", "globex-alice-lantern-orchid")
        .await;

    // Controls: each session works on its own tenant.
    let own = gw.get_as(GLOBEX, "/app/x", Some(&globex), &[]).await;
    assert_eq!(own.status, 200, "globex's own session: {}", own.text());
    assert_eq!(gw.whoami(ACME, &acme).await.status, 200);

    let mut failures = Vec::new();
    let browser = gw.get_as(GLOBEX, "/app/x", Some(&acme), &[]).await;
    if !is_turned_away(&browser, GLOBEX) {
        failures.push(format!(
            "acme cookie on globex /app (browser): {} {:?}",
            browser.status,
            browser.location()
        ));
    }
    let api = gw
        .get_as(
            GLOBEX,
            "/app/x",
            Some(&acme),
            &[("accept", "application/json")],
        )
        .await;
    if api.status != 401 {
        failures.push(format!("acme cookie on globex /app (JSON): {}", api.status));
    }
    let who = gw.whoami(GLOBEX, &acme).await;
    if who.status != 401 {
        failures.push(format!(
            "acme cookie on globex whoami: {} {}",
            who.status,
            who.text()
        ));
    }
    let who = gw.whoami(ACME, &globex).await;
    if who.status != 401 {
        failures.push(format!(
            "globex cookie on acme whoami: {} {}",
            who.status,
            who.text()
        ));
    }
    // Public routes still pass, as nobody.
    let public = gw.get_as(GLOBEX, "/api/x", Some(&acme), &[]).await;
    let echo = public.expect_echo();
    if !echo.header_all("x-portcullis-user").is_empty() {
        failures.push(format!(
            "acme cookie made a globex user on a public route: {:?}",
            echo.headers
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn duplicated_session_cookie_is_no_session() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    gw.add_user("acme", "mallory", MALLORY_PW, &[]);
    let alice = gw.login(ACME, "alice", ALICE_PW).await;
    let mallory = gw.login(ACME, "mallory", MALLORY_PW).await;
    let junk = planted_token();
    let pair = |v: &str| format!("{SESSION_COOKIE}={v}");

    let control = gw
        .raw_get(
            ACME,
            "/app/x",
            &[ACCEPT_JSON, &format!("Cookie: {}", pair(&alice))],
        )
        .await;
    assert_eq!(control.status, 200, "one cookie: {}", control.text());

    let one_header = |a: &str, b: &str| vec![format!("Cookie: {}; {}", pair(a), pair(b))];
    let two_headers = |a: &str, b: &str| {
        vec![
            format!("Cookie: {}", pair(a)),
            format!("Cookie: {}", pair(b)),
        ]
    };
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("valid then junk, one header", one_header(&alice, &junk)),
        ("junk then valid, one header", one_header(&junk, &alice)),
        ("valid then junk, two headers", two_headers(&alice, &junk)),
        ("junk then valid, two headers", two_headers(&junk, &alice)),
        ("the same valid value twice", one_header(&alice, &alice)),
        ("two users' sessions", one_header(&mallory, &alice)),
        (
            "valid, empty tossed value",
            vec![format!("Cookie: {}; {SESSION_COOKIE}=", pair(&alice))],
        ),
    ];
    let mut failures = Vec::new();
    for (case, cookies) in cases {
        for path in ["/app/x", "/.auth/whoami"] {
            let mut extra: Vec<&str> = cookies.iter().map(String::as_str).collect();
            extra.push(ACCEPT_JSON);
            let resp = gw.raw_get(ACME, path, &extra).await;
            if resp.status != 401 {
                failures.push(format!("{case}: {path} answered {}", resp.status));
            }
        }
    }
    // HTTP/2 sends cookies as separate header fields (RFC 9113 §8.2.3).
    let h2 = |crumbs: &[String]| {
        let mut req = gw
            .client()
            .get(gw.url(ACME, "/.auth/whoami"))
            .header("accept", "application/json");
        for c in crumbs {
            req = req.header("cookie", c.as_str());
        }
        fetch(req)
    };
    let control = h2(&["theme=dark".into(), pair(&alice)]).await;
    assert_eq!(control.version, "HTTP/2.0", "h2 was not negotiated");
    assert_eq!(control.status, 200, "h2 crumbs: {}", control.text());
    for (case, crumbs) in [
        ("h2: valid then junk", [pair(&alice), pair(&junk)]),
        ("h2: junk then valid", [pair(&junk), pair(&alice)]),
    ] {
        let resp = h2(&crumbs).await;
        if resp.status != 401 {
            failures.push(format!("{case}: whoami answered {}", resp.status));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn unprefixed_portcullis_cookie_is_ignored() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    let alice = gw.login(ACME, "alice", ALICE_PW).await;
    let control = gw
        .raw_get(
            ACME,
            "/.auth/whoami",
            &[ACCEPT_JSON, &format!("Cookie: {SESSION_COOKIE}={alice}")],
        )
        .await;
    assert_eq!(control.status, 200, "{}", control.text());
    let mut failures = Vec::new();
    for name in [
        "portcullis",
        "__host-portcullis",
        "__HOST-PORTCULLIS",
        "__Secure-portcullis",
        "Host-portcullis",
        "__Host-portcullis ",
        "__Host-portcullis-csrf",
    ] {
        for path in ["/app/x", "/.auth/whoami"] {
            let cookie = format!("Cookie: {name}={alice}");
            let resp = gw.raw_get(ACME, path, &[ACCEPT_JSON, &cookie]).await;
            if resp.status != 401 {
                failures.push(format!("cookie {name:?}: {path} answered {}", resp.status));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn signed_in_user_reaches_authenticated_routes() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "bob", BOB_PW, &[]);
    let bob = gw.login(ACME, "bob", BOB_PW).await;
    for path in ["/app", "/app/deep/page?q=1", "/api/private/x"] {
        let resp = gw.get_as(ACME, path, Some(&bob), &[]).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        let echo = resp.expect_echo();
        assert_eq!(echo.header_once("x-portcullis-user"), "bob", "{path}");
    }
}

#[tokio::test]
async fn role_route_is_a_403_page_for_a_user_without_the_role() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "bob", BOB_PW, &["viewer"]);
    let bob = gw.login(ACME, "bob", BOB_PW).await;
    let resp = gw
        .get_as(
            ACME,
            "/admin/panel",
            Some(&bob),
            &[("x-test-probe", "role-denied"), ("accept", "text/html")],
        )
        .await;
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert!(
        resp.echo().is_none(),
        "the backend answered: {}",
        resp.text()
    );
    let ct = resp.header("content-type").unwrap_or("");
    assert!(ct.starts_with("text/html"), "a 403 page, got {ct:?}");
    assert!(
        !gw.backend_traffic().contains("role-denied"),
        "the refused request reached the backend"
    );
    let api = gw
        .get_as(
            ACME,
            "/admin/panel",
            Some(&bob),
            &[("accept", "application/json")],
        )
        .await;
    assert_eq!(api.status, 403, "JSON client: {}", api.text());
}

#[tokio::test]
async fn role_route_admits_a_user_with_the_role() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &["admin"]);
    let alice = gw.login(ACME, "alice", ALICE_PW).await;
    let resp = gw.get_as(ACME, "/admin/panel", Some(&alice), &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = resp.expect_echo();
    assert_eq!(echo.path, "/admin/panel");
    let roles = echo.header_once("x-portcullis-roles");
    assert!(roles.split(',').any(|r| r.trim() == "admin"), "{roles:?}");
}

#[tokio::test]
async fn unauthenticated_browser_is_sent_to_login_and_back_to_the_same_path() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    let mut b = gw.browser(ACME);
    let target = "/app/x?y=1&z=a%20b";
    let resp = b
        .get_with(target, &[("x-test-probe", "before-login")])
        .await;
    assert_eq!(resp.status, 302, "{:?} {}", resp.headers, resp.text());
    assert!(
        !gw.backend_traffic().contains("before-login"),
        "an unauthenticated request reached the backend"
    );
    let location = resp.location().expect("Location").to_string();
    let query = location
        .strip_prefix("/.auth/login?")
        .unwrap_or_else(|| panic!("Location {location:?} is not this host's login page"));
    let return_to: Vec<String> = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "return_to")
        .map(|(_, v)| v.into_owned())
        .collect();
    assert_eq!(return_to, vec![target.to_string()], "Location {location:?}");

    let page = b.get(&location).await;
    assert_eq!(page.status, 200);
    let html = page.text();
    assert_eq!(form_field(&html, "return_to").as_deref(), Some(target));
    let csrf = form_field(&html, "csrf").expect("csrf field");
    let resp = b
        .post_form(
            "/.auth/login",
            &[
                ("username", "alice"),
                ("password", ALICE_PW),
                ("csrf", &csrf),
                ("return_to", target),
            ],
        )
        .await;
    assert_eq!(resp.status, 303, "{}", resp.text());
    assert_eq!(resp.location(), Some(target));
    let landed = b.get(target).await;
    assert_eq!(landed.status, 200, "{}", landed.text());
    assert_eq!(landed.expect_echo().path, target);
}

#[tokio::test]
async fn unauthenticated_json_client_gets_401_json() {
    let gw = Gateway::start_default();
    let resp = gw
        .get_as(
            ACME,
            "/app/x",
            None,
            &[
                ("accept", "application/json"),
                ("x-test-probe", "json-unauthenticated"),
            ],
        )
        .await;
    assert_eq!(resp.status, 401, "{}", resp.text());
    let ct = resp.header("content-type").unwrap_or("");
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    assert!(resp.json().get("error").is_some(), "{}", resp.text());
    assert!(resp.location().is_none(), "no redirect for API clients");
    assert!(!gw.backend_traffic().contains("json-unauthenticated"));
}

/// The session's CSRF token, from whoami.
async fn session_csrf(gw: &Gateway, host: &str, session: &str) -> String {
    let who = gw.whoami(host, session).await;
    assert_eq!(who.status, 200, "whoami: {}", who.text());
    who.json()["csrf"]
        .as_str()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| panic!("whoami has no csrf: {}", who.text()))
        .to_string()
}

#[tokio::test]
async fn logout_with_the_session_csrf_ends_the_session_server_side() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &[]);

    // A browser posting the logout form.
    let mut b = gw.browser(ACME);
    let resp = b.login("alice", ALICE_PW, "/app").await;
    assert_eq!(resp.status, 303);
    let old = b.session().expect("session").to_string();
    let csrf = session_csrf(&gw, ACME, &old).await;
    let resp = b.post_form("/.auth/logout", &[("csrf", &csrf)]).await;
    assert!(
        matches!(resp.status, 200 | 303),
        "logout: {} {}",
        resp.status,
        resp.text()
    );
    let cleared = resp
        .set_cookie(SESSION_COOKIE)
        .unwrap_or_else(|| panic!("logout does not clear the cookie: {:?}", resp.headers));
    assert!(cookie_is_cleared(cleared), "{cleared}");
    // A browser drops a `__Host-` Set-Cookie without Secure and Path=/, so the clearing one
    // needs them too, or the cookie stays.
    let attrs = cookie_attributes(cleared);
    for needed in ["Secure", "Path=/"] {
        assert!(
            attrs.iter().any(|a| a.eq_ignore_ascii_case(needed)),
            "clearing cookie lacks {needed}: {cleared}"
        );
    }
    assert!(
        !attrs
            .iter()
            .any(|a| a.to_ascii_lowercase().starts_with("domain")),
        "{cleared}"
    );
    // The old cookie, replayed: ended on the server, not just forgotten by the browser.
    assert_eq!(
        gw.whoami(ACME, &old).await.status,
        401,
        "whoami after logout"
    );
    let replay = gw
        .get_as(ACME, "/app", Some(&old), &[("accept", "application/json")])
        .await;
    assert_eq!(replay.status, 401, "/app after logout: {}", replay.text());

    // An API client with the X-CSRF-Token header.
    let token = gw.login(ACME, "alice", ALICE_PW).await;
    let csrf = session_csrf(&gw, ACME, &token).await;
    let resp = fetch(
        gw.client()
            .post(gw.url(ACME, "/.auth/logout"))
            .header("cookie", format!("{SESSION_COOKIE}={token}"))
            .header("accept", "application/json")
            .header("x-csrf-token", csrf),
    )
    .await;
    assert_eq!(resp.status, 200, "JSON logout: {}", resp.text());
    assert_eq!(gw.whoami(ACME, &token).await.status, 401);
}

#[tokio::test]
async fn logout_without_the_session_csrf_is_refused_and_the_session_survives() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    gw.add_user("acme", "bob", BOB_PW, &[]);
    let alice = gw.login(ACME, "alice", ALICE_PW).await;
    let bob = gw.login(ACME, "bob", BOB_PW).await;
    let csrf = session_csrf(&gw, ACME, &alice).await;
    let bobs_csrf = session_csrf(&gw, ACME, &bob).await;
    let origin = gw.origin(ACME);
    let form = "application/x-www-form-urlencoded";

    let cases: Vec<(&str, String, Headers)> = vec![
        ("no csrf", String::new(), vec![]),
        ("empty csrf", form_body(&[("csrf", "")]), vec![]),
        (
            "wrong csrf",
            form_body(&[("csrf", "x".repeat(43).as_str())]),
            vec![],
        ),
        (
            "another session's csrf",
            form_body(&[("csrf", &bobs_csrf)]),
            vec![],
        ),
        (
            "right csrf from another origin",
            form_body(&[("csrf", &csrf)]),
            vec![("origin", "https://evil.com")],
        ),
        (
            "right csrf, cross-site fetch",
            form_body(&[("csrf", &csrf)]),
            vec![("sec-fetch-site", "cross-site")],
        ),
    ];
    let mut failures = Vec::new();
    for (case, body, headers) in cases {
        let mut req = gw
            .client()
            .post(gw.url(ACME, "/.auth/logout"))
            .header("cookie", format!("{SESSION_COOKIE}={alice}"))
            .header("content-type", form)
            .body(body);
        for (n, v) in &headers {
            req = req.header(*n, *v);
        }
        let resp = fetch(req).await;
        if resp.status != 403 {
            failures.push(format!("{case}: expected 403, got {}", resp.status));
        }
        if resp.set_cookie(SESSION_COOKIE).is_some() {
            failures.push(format!("{case}: the response touches the session cookie"));
        }
        if gw.whoami(ACME, &alice).await.status != 200 {
            failures.push(format!("{case}: the session ended"));
            break;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        gw.get_as(ACME, "/app", Some(&alice), &[]).await.status,
        200,
        "the session still reaches routes"
    );
    // Control: the same request with the right token, same origin, does sign out.
    let resp = fetch(
        gw.client()
            .post(gw.url(ACME, "/.auth/logout"))
            .header("cookie", format!("{SESSION_COOKIE}={alice}"))
            .header("content-type", form)
            .header("origin", origin)
            .body(form_body(&[("csrf", &csrf)])),
    )
    .await;
    assert!(matches!(resp.status, 200 | 303), "control: {}", resp.status);
    assert_eq!(gw.whoami(ACME, &alice).await.status, 401);
}

#[tokio::test]
async fn logout_get_shows_a_confirmation_form() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    let mut b = gw.browser(ACME);
    assert_eq!(b.login("alice", ALICE_PW, "/").await.status, 303);
    let session = b.session().expect("session").to_string();
    let resp = b.get("/.auth/logout").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/html"));
    assert!(resp.header("content-security-policy").is_some());
    let html = resp.text();
    assert!(
        html.contains("method=\"post\"") && html.contains("action=\"/.auth/logout\""),
        "{html}"
    );
    assert_eq!(
        form_field(&html, "csrf"),
        Some(session_csrf(&gw, ACME, &session).await),
        "the form carries the session's csrf token"
    );
    assert!(
        resp.set_cookie(SESSION_COOKIE).is_none(),
        "GET must not sign out"
    );
    assert_eq!(
        gw.whoami(ACME, &session).await.status,
        200,
        "GET signed out"
    );
}

#[tokio::test]
async fn whoami_csrf_token_is_not_readable_cross_origin_or_cached() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    let alice = gw.login(ACME, "alice", ALICE_PW).await;
    let resp = gw
        .get_as(
            ACME,
            "/.auth/whoami",
            Some(&alice),
            &[
                ("accept", "application/json"),
                ("origin", "https://evil.com"),
            ],
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp.json()["csrf"].is_string(), "{}", resp.text());
    for cors in [
        "access-control-allow-origin",
        "access-control-allow-credentials",
    ] {
        assert!(
            resp.header(cors).is_none(),
            "whoami shares its CSRF token cross-origin: {cors}: {:?}",
            resp.header(cors)
        );
    }
    let cache = resp.header("cache-control").unwrap_or("");
    assert!(cache.contains("no-store"), "Cache-Control {cache:?}");
}

#[tokio::test]
async fn cli_password_change_ends_existing_sessions() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    let first = gw.login(ACME, "alice", ALICE_PW).await;
    let second = gw.login(ACME, "alice", ALICE_PW).await;
    // Warm the gateway's session cache, so the test sees what a busy session sees.
    for s in [&first, &second] {
        assert_eq!(gw.get_as(ACME, "/app", Some(s), &[]).await.status, 200);
    }
    let new_pw = "alice-new-violet-harbour-kite";
    gw.set_password("acme", "alice", new_pw);
    for (name, s) in [("first", &first), ("second", &second)] {
        assert!(
            gw.wait_session_ended(ACME, s, CROSS_PROCESS_END).await,
            "{name} session still alive {CROSS_PROCESS_END:?} after `user passwd`"
        );
        let resp = gw.get_as(ACME, "/app", Some(s), &[]).await;
        assert!(
            is_turned_away(&resp, ACME),
            "{name} session on /app: {}",
            resp.status
        );
    }
    let old = gw.login_json(ACME, "alice", ALICE_PW, None).await;
    assert_eq!(old.status, 401, "the old password still signs in");
    gw.login(ACME, "alice", new_pw).await;
}

/// Opens the password form as `b` and posts it.
async fn change_password(b: &mut Browser, current: &str, new: &str) -> Response {
    let page = b.get("/.auth/password").await;
    assert_eq!(page.status, 200, "password form: {}", page.text());
    let html = page.text();
    let csrf = form_field(&html, "csrf").expect("csrf in the password form");
    let back = form_field(&html, "return_to").unwrap_or_default();
    b.post_form(
        "/.auth/password",
        &[
            ("current_password", current),
            ("new_password", new),
            ("confirm_password", new),
            ("csrf", &csrf),
            ("return_to", &back),
        ],
    )
    .await
}

#[tokio::test]
async fn password_change_issues_a_new_session_and_ends_the_others() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    let mut b = gw.browser(ACME);
    assert_eq!(b.login("alice", ALICE_PW, "/app").await.status, 303);
    let before = b.session().expect("session").to_string();
    let other = gw.login(ACME, "alice", ALICE_PW).await;
    assert_eq!(gw.get_as(ACME, "/app", Some(&other), &[]).await.status, 200);

    let new_pw = "alice-new-violet-harbour-kite";
    let resp = change_password(&mut b, ALICE_PW, new_pw).await;
    assert!(
        matches!(resp.status, 200 | 303),
        "password change: {} {}",
        resp.status,
        resp.text()
    );
    let after = resp
        .set_cookie_value(SESSION_COOKIE)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("no new session cookie: {:?}", resp.headers));
    assert_ne!(after, before, "the session was not rotated");
    assert_eq!(gw.whoami(ACME, &after).await.json()["user"], "alice");
    assert_eq!(gw.whoami(ACME, &before).await.status, 401, "the old cookie");
    assert!(
        gw.wait_session_ended(ACME, &other, CROSS_PROCESS_END).await,
        "the user's other session survived the change"
    );
    assert_eq!(
        gw.login_json(ACME, "alice", ALICE_PW, None).await.status,
        401,
        "the old password still signs in"
    );
    gw.login(ACME, "alice", new_pw).await;
}

#[tokio::test]
async fn password_change_to_a_common_password_is_refused_and_nothing_changes() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    let mut b = gw.browser(ACME);
    assert_eq!(b.login("alice", ALICE_PW, "/app").await.status, 303);
    let session = b.session().expect("session").to_string();
    let other = gw.login(ACME, "alice", ALICE_PW).await;
    let mut failures = Vec::new();
    // From the bundled blocklist, and a sequential run; all long enough for the policy.
    for common in ["1qaz2wsx3edc4rfv", "qwerty123456789", "1234567890123456"] {
        let resp = change_password(&mut b, ALICE_PW, common).await;
        if resp.status != 400 {
            failures.push(format!("{common:?}: expected 400, got {}", resp.status));
        }
        if resp
            .set_cookie(SESSION_COOKIE)
            .is_some_and(|l| !cookie_is_cleared(l))
        {
            failures.push(format!("{common:?}: a new session was issued"));
        }
        if gw.login_json(ACME, "alice", common, None).await.status != 401 {
            failures.push(format!("{common:?} became alice's password"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // JSON clients get the reason as a code.
    let csrf = session_csrf(&gw, ACME, &other).await;
    let resp = fetch(
        gw.client()
            .post(gw.url(ACME, "/.auth/password"))
            .header("cookie", format!("{SESSION_COOKIE}={other}"))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .header("x-csrf-token", csrf)
            .body(
                serde_json::json!({
                    "current_password": ALICE_PW,
                    "new_password": "qwerty123456789",
                    "confirm_password": "qwerty123456789",
                })
                .to_string(),
            ),
    )
    .await;
    assert_eq!(resp.status, 400, "JSON: {}", resp.text());
    assert_eq!(resp.json()["error"], "password_common", "{}", resp.text());

    assert_eq!(b.session(), Some(session.as_str()), "the cookie changed");
    assert_eq!(gw.whoami(ACME, &session).await.status, 200, "session ended");
    assert_eq!(gw.whoami(ACME, &other).await.status, 200, "other ended");
    gw.login(ACME, "alice", ALICE_PW).await;
}

#[tokio::test]
async fn password_change_without_the_session_csrf_is_refused() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    let alice = gw.login(ACME, "alice", ALICE_PW).await;
    let csrf = session_csrf(&gw, ACME, &alice).await;
    let new_pw = "alice-new-violet-harbour-kite";
    let fields = |token: Option<&str>| {
        let mut f = vec![
            ("current_password", ALICE_PW),
            ("new_password", new_pw),
            ("confirm_password", new_pw),
        ];
        if let Some(t) = token {
            f.push(("csrf", t));
        }
        form_body(&f)
    };
    let mut failures = Vec::new();
    for (case, body, origin) in [
        ("no csrf", fields(None), None),
        ("wrong csrf", fields(Some("x".repeat(43).as_str())), None),
        (
            "right csrf from another origin",
            fields(Some(&csrf)),
            Some("https://evil.com"),
        ),
    ] {
        let mut req = gw
            .client()
            .post(gw.url(ACME, "/.auth/password"))
            .header("cookie", format!("{SESSION_COOKIE}={alice}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let resp = fetch(req).await;
        if resp.status != 403 {
            failures.push(format!("{case}: expected 403, got {}", resp.status));
        }
        if resp.set_cookie(SESSION_COOKIE).is_some() {
            failures.push(format!("{case}: the session cookie was touched"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(gw.whoami(ACME, &alice).await.status, 200, "session ended");
    assert_eq!(
        gw.login_json(ACME, "alice", new_pw, None).await.status,
        401,
        "the password was changed"
    );
}

#[tokio::test]
async fn disabling_a_user_ends_their_sessions() {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    let alice = gw.login(ACME, "alice", ALICE_PW).await;
    assert_eq!(gw.get_as(ACME, "/app", Some(&alice), &[]).await.status, 200);
    gw.disable_user("acme", "alice");
    assert!(
        gw.wait_session_ended(ACME, &alice, CROSS_PROCESS_END).await,
        "session alive {CROSS_PROCESS_END:?} after `user disable`"
    );
    let resp = gw.get_as(ACME, "/app", Some(&alice), &[]).await;
    assert!(is_turned_away(&resp, ACME), "/app: {}", resp.status);
}

/// Sets a user's `password_changed_at` back by `days` through the store the gateway uses
/// (the CLI always stamps "now").
fn backdate_password(gw: &Gateway, tenant: &str, user: &str, days: u64) {
    let config = portcullis::config::Config::load(&gw.site.config_path())
        .unwrap_or_else(|e| panic!("load config: {e}"));
    let store = portcullis::store::open(&config.server.store).expect("open store");
    let u = store.user(tenant, user).expect("read user").expect("user");
    let phc = u.password_hash.expect("password hash");
    let then = now_unix() - days * 86_400;
    assert!(
        store
            .set_password(tenant, user, &phc, then)
            .expect("set_password"),
        "no user {tenant}/{user}"
    );
}

#[tokio::test]
async fn expired_password_forces_a_change_before_any_route() {
    let gw = Gateway::start(Opts {
        acme_policy_extra: "\n[password]\nmax_age_days = 1\n".into(),
        ..Opts::default()
    });
    gw.add_user("acme", "erin", "erin-paper-lantern-meadow", &[]);
    backdate_password(&gw, "acme", "erin", 2);

    let mut b = gw.browser(ACME);
    let resp = b
        .login("erin", "erin-paper-lantern-meadow", "/app/home")
        .await;
    assert_eq!(resp.status, 303, "{}", resp.text());
    assert_eq!(resp.location(), Some("/.auth/password"), "forced change");
    let pending = b
        .session()
        .expect("a session for the change step")
        .to_string();
    // Half signed in is not signed in.
    let app = b.get("/app/home").await;
    assert!(
        is_turned_away(&app, ACME),
        "/app before the change: {}",
        app.status
    );
    assert_eq!(gw.whoami(ACME, &pending).await.status, 401);

    let resp = change_password(
        &mut b,
        "erin-paper-lantern-meadow",
        "erin-new-copper-willow-tide",
    )
    .await;
    assert_eq!(resp.status, 303, "{}", resp.text());
    assert_eq!(
        resp.location(),
        Some("/app/home"),
        "back to where erin was going"
    );
    let active = b.session().expect("session").to_string();
    assert_ne!(active, pending, "the change step's session was not rotated");
    assert_eq!(gw.whoami(ACME, &pending).await.status, 401);
    let app = b.get("/app/home").await;
    assert_eq!(app.status, 200, "{}", app.text());
    assert_eq!(app.expect_echo().header_once("x-portcullis-user"), "erin");
}

#[tokio::test]
async fn whoami_reports_the_tenant_session_timeouts() {
    let gw = Gateway::start(Opts {
        acme_policy_extra: "\n[session]\nidle_timeout_minutes = 7\nabsolute_timeout_hours = 3\n"
            .into(),
        ..Opts::default()
    });
    gw.add_user("acme", "alice", ALICE_PW, &[]);
    gw.add_user("globex", "gina", "gina-correct-horse-battery", &[]);
    let before = now_unix();
    let acme = gw.login(ACME, "alice", ALICE_PW).await;
    let globex = gw.login(GLOBEX, "gina", "gina-correct-horse-battery").await;
    let after = now_unix();

    let who = gw.whoami(ACME, &acme).await.json();
    assert_eq!(who["idle_timeout"], 7 * 60, "{who}");
    let expires = who["expires_at"].as_u64().expect("expires_at");
    assert!(
        (before + 3 * 3600..=after + 3 * 3600).contains(&expires),
        "expires_at {expires} not 3 h after sign-in ({before}..{after})"
    );

    // globex keeps the defaults: 30 min idle, 12 h absolute.
    let who = gw.whoami(GLOBEX, &globex).await.json();
    assert_eq!(who["idle_timeout"], 30 * 60, "{who}");
    let expires = who["expires_at"].as_u64().expect("expires_at");
    assert!(
        (before + 12 * 3600..=after + 12 * 3600).contains(&expires),
        "expires_at {expires}"
    );
}

/// Signs in and out, fails, changes a password and goes through the proxy with `gw`; returns
/// every secret that went over the wire, named.
async fn use_every_secret(gw: &Gateway) -> Vec<(String, String)> {
    let new_pw = "alice-new-violet-harbour-kite";
    let wrong = "alice-wrong-guess-sunflower";
    gw.add_user("acme", "alice", ALICE_PW, &["admin"]);
    let mut secrets: Vec<(String, String)> = vec![
        ("password".into(), ALICE_PW.into()),
        ("new password".into(), new_pw.into()),
        ("wrong password".into(), wrong.into()),
    ];

    // Failed sign-ins, form and JSON.
    let mut b = gw.browser(ACME);
    let failed = b.login("alice", wrong, "/app").await;
    assert_eq!(failed.status, 401);
    if let Some(c) = b.cookie(LOGIN_CSRF_COOKIE) {
        secrets.push(("login csrf".into(), c.to_string()));
    }
    assert_eq!(gw.login_json(ACME, "alice", wrong, None).await.status, 401);
    assert_eq!(gw.login_json(ACME, "nobody", wrong, None).await.status, 401);

    // A form sign-in, proxied requests with their JWTs, a password change, a logout.
    let page = b.get("/.auth/login?return_to=%2Fapp").await;
    let csrf = form_field(&page.text(), "csrf").expect("csrf");
    secrets.push(("login csrf".into(), csrf.clone()));
    let resp = b
        .post_form(
            "/.auth/login",
            &[
                ("username", "alice"),
                ("password", ALICE_PW),
                ("csrf", &csrf),
                ("return_to", "/app"),
            ],
        )
        .await;
    assert_eq!(resp.status, 303);
    let first = b.session().expect("session").to_string();
    secrets.push(("session cookie".into(), first.clone()));
    secrets.push(("session csrf".into(), session_csrf(gw, ACME, &first).await));
    for path in ["/app/a", "/admin/b", "/api/private/c"] {
        let echo = b.get(path).await.expect_echo();
        secrets.push((
            "JWT".into(),
            echo.header_once("x-portcullis-jwt").to_string(),
        ));
    }
    let resp = change_password(&mut b, ALICE_PW, new_pw).await;
    assert_eq!(resp.status, 303, "{}", resp.text());
    let second = b.session().expect("session").to_string();
    secrets.push(("session cookie".into(), second.clone()));
    let logout_csrf = session_csrf(gw, ACME, &second).await;
    secrets.push(("session csrf".into(), logout_csrf.clone()));
    let resp = b
        .post_form("/.auth/logout", &[("csrf", &logout_csrf)])
        .await;
    assert!(matches!(resp.status, 200 | 303));
    let json_session = gw.login(ACME, "alice", new_pw).await;
    secrets.push(("session cookie".into(), json_session.clone()));
    gw.get_as(ACME, "/app", Some(&json_session), &[]).await;
    // Replays of ended sessions log "session ended" events; they must not name the token.
    gw.get_as(ACME, "/app", Some(&first), &[]).await;
    // Audit and log lines are written asynchronously.
    tokio::time::sleep(Duration::from_millis(500)).await;
    secrets
}

/// Every secret found in the gateway's logs, with the line it is on (shortened).
fn leaks(gw: &Gateway, secrets: &[(String, String)]) -> Vec<String> {
    let logs = gw.logs();
    let mut found = Vec::new();
    for (what, secret) in secrets {
        // A JWT's signature alone is as telling as the whole token.
        let needle = if what == "JWT" {
            secret.rsplit('.').next().unwrap_or(secret)
        } else {
            secret.as_str()
        };
        if let Some(line) = logs.lines().find(|l| l.contains(needle)) {
            let line: String = line.chars().take(400).collect();
            found.push(format!("{what} {needle:?} in: {line}"));
        }
    }
    found
}

#[tokio::test]
async fn no_password_cookie_csrf_or_jwt_reaches_the_gateway_logs() {
    let gw = Gateway::start_default();
    let secrets = use_every_secret(&gw).await;
    let found = leaks(&gw, &secrets);
    assert!(
        found.is_empty(),
        "secrets in the logs:\n{}",
        found.join("\n")
    );
}

#[tokio::test]
async fn no_password_cookie_csrf_or_jwt_reaches_the_gateway_debug_logs() {
    // An operator chasing a problem sets PORTCULLIS_LOG=debug; secrets must stay out then too.
    let gw = Gateway::start(Opts {
        log_filter: "debug".into(),
        ..Opts::default()
    });
    let secrets = use_every_secret(&gw).await;
    let found = leaks(&gw, &secrets);
    assert!(
        found.is_empty(),
        "secrets in the logs:\n{}",
        found.join("\n")
    );
}

#[tokio::test]
async fn store_holds_no_password_session_token_or_jwt_in_the_clear() {
    let gw = Gateway::start_default();
    let secrets = use_every_secret(&gw).await;
    let mut bytes = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(gw.site.path("data")).expect("data dir") {
        let path = entry.expect("dir entry").path();
        if path.is_file() {
            bytes.extend(std::fs::read(&path).expect("read store file"));
            files.push(path.display().to_string());
        }
    }
    assert!(
        files.iter().any(|f| f.contains("portcullis.db")),
        "no store in {files:?}"
    );
    let mut found = Vec::new();
    // The session's CSRF token is not a credential on its own and is kept to compare with.
    for (what, secret) in secrets.iter().filter(|(w, _)| w != "session csrf") {
        let needle = if what == "JWT" {
            secret.rsplit('.').next().unwrap_or(secret)
        } else {
            secret.as_str()
        };
        if contains(&bytes, needle.as_bytes()) {
            found.push(format!("{what} {needle:?}"));
        }
    }
    assert!(
        found.is_empty(),
        "in the store files {files:?}: {}",
        found.join(", ")
    );
}
