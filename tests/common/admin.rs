//! Helpers for the tenant admin pages and the operator API (issue 7, items 3 and 4): accounts
//! in two tenants, requests with a session and its CSRF token, the operator API with or
//! without the bearer token, a TOTP enrolment through `oathtool`, a CSV reader, and a small
//! OpenAPI 3.0 schema checker (types, `required`, `enum`, `nullable`, `$ref`).

#![allow(dead_code)]

use std::process::Command;

use crate::common::*;

pub const ACME: &str = "acme.localhost";
pub const GLOBEX: &str = "globex.localhost";
/// acme, role `admin`.
pub const ALICE_PW: &str = "alice-admin-lantern-orchid";
/// acme, no role.
pub const BOB_PW: &str = "bob-plain-staple-harbour";
/// globex, role `admin`.
pub const CAROL_PW: &str = "carol-globex-quiet-river";
/// globex, no role.
pub const DAVE_PW: &str = "dave-globex-paper-comet";

/// A world with alice (admin) and bob in acme, carol (admin) and dave in globex.
pub fn world() -> Gateway {
    let gw = Gateway::start_default();
    gw.add_user("acme", "alice", ALICE_PW, &["admin"]);
    gw.add_user("acme", "bob", BOB_PW, &[]);
    gw.add_user("globex", "carol", CAROL_PW, &["admin"]);
    gw.add_user("globex", "dave", DAVE_PW, &[]);
    gw
}

/// The operator token `portcullis keygen` wrote for this world.
pub fn token(gw: &Gateway) -> String {
    std::fs::read_to_string(gw.site.path("data/keys/admin.token"))
        .expect("read the operator token file")
        .trim()
        .to_string()
}

/// A request to the operator listener with an optional `Authorization` value.
pub fn operator_raw(
    gw: &Gateway,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> Response {
    let port = gw.ports().admin;
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}User-Agent: admin-tests\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    plain_http(port, req.as_bytes())
        .unwrap_or_else(|| panic!("operator listener did not answer {method} {path}"))
}

/// A request to the operator API with the right token.
pub fn operator(gw: &Gateway, method: &str, path: &str) -> Response {
    operator_raw(gw, method, path, Some(&format!("Bearer {}", token(gw))))
}

/// `GET /v1/audit?QUERY` with the token: the events (panics unless 200).
pub fn operator_events(gw: &Gateway, query: &str) -> Vec<serde_json::Value> {
    let resp = operator(gw, "GET", &format!("/v1/audit?{query}"));
    assert_eq!(resp.status, 200, "GET /v1/audit?{query}: {}", resp.text());
    resp.json()["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Polls (bounded) until `/v1/audit?QUERY` holds at least `want` events; returns them.
pub fn wait_events(gw: &Gateway, query: &str, want: usize) -> Vec<serde_json::Value> {
    let mut last = Vec::new();
    poll_until(std::time::Duration::from_secs(10), || {
        last = operator_events(gw, query);
        last.len() >= want
    });
    last
}

/// The session's CSRF token (from `/.auth/whoami`).
pub async fn csrf_of(gw: &Gateway, host: &str, session: &str) -> String {
    let who = gw.whoami(host, session).await;
    assert_eq!(who.status, 200, "whoami: {}", who.text());
    who.json()["csrf"]
        .as_str()
        .expect("whoami csrf")
        .to_string()
}

/// A signed-in session and its CSRF token.
pub async fn sign_in(gw: &Gateway, host: &str, user: &str, password: &str) -> (String, String) {
    let session = gw.login(host, user, password).await;
    let csrf = csrf_of(gw, host, &session).await;
    (session, csrf)
}

/// `GET path` on `host` as JSON with the session.
pub async fn get_json(gw: &Gateway, host: &str, path: &str, session: Option<&str>) -> Response {
    gw.get_as(host, path, session, &[("accept", "application/json")])
        .await
}

/// `POST path` on `host` with the session cookie, `X-CSRF-Token` (if any), an empty form
/// body, `Accept: application/json` and `extra` headers.
pub async fn post_json(
    gw: &Gateway,
    host: &str,
    path: &str,
    session: Option<&str>,
    csrf: Option<&str>,
    extra: &[(&str, &str)],
) -> Response {
    let mut req = gw
        .client()
        .post(gw.url(host, path))
        .header("accept", "application/json")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("");
    if let Some(token) = session {
        req = req.header("cookie", format!("{SESSION_COOKIE}={token}"));
    }
    if let Some(csrf) = csrf {
        req = req.header("x-csrf-token", csrf);
    }
    for (n, v) in extra {
        req = req.header(*n, *v);
    }
    fetch(req).await
}

/// Turns TOTP on for the user of `session` (HTML enrolment page, code from `oathtool`);
/// returns the new session cookie.
pub async fn enroll_totp(gw: &Gateway, host: &str, session: &str) -> String {
    let page = gw
        .get_as(
            host,
            "/.auth/mfa/enroll",
            Some(session),
            &[("accept", "text/html")],
        )
        .await;
    assert_eq!(page.status, 200, "enrolment page: {}", page.text());
    let html = page.text();
    let key: String = html
        .split("<p class=\"key\"><code>")
        .nth(1)
        .and_then(|rest| rest.split("</code>").next())
        .expect("key on the enrolment page")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let csrf = form_field(&html, "csrf").expect("csrf on the enrolment page");
    let out = Command::new("oathtool")
        .args(["--totp", "-b", &key])
        .output()
        .expect("run oathtool");
    assert!(out.status.success(), "oathtool failed");
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let req = gw
        .client()
        .post(gw.url(host, "/.auth/mfa/enroll"))
        .header("cookie", format!("{SESSION_COOKIE}={session}"))
        .header("accept", "application/json")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[
            ("action", "confirm"),
            ("code", &code),
            ("csrf", &csrf),
        ]));
    let resp = fetch(req).await;
    assert_eq!(resp.status, 200, "enrolment confirm: {}", resp.text());
    resp.set_cookie_value(SESSION_COOKIE)
        .filter(|v| !v.is_empty())
        .expect("enrolment sets a new session cookie")
}

/// RFC 4180 records of a CSV text (quoted fields, `""` escapes, CRLF line ends).
pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    if !cell.is_empty() || !row.is_empty() {
        row.push(cell);
        rows.push(row);
    }
    rows
}

/// The object a local `$ref` (`#/a/b/c`) points at in `doc`.
pub fn resolve<'a>(
    doc: &'a serde_json::Value,
    value: &'a serde_json::Value,
) -> &'a serde_json::Value {
    let mut v = value;
    while let Some(r) = v.get("$ref").and_then(|r| r.as_str()) {
        let mut target = doc;
        for part in r.trim_start_matches("#/").split('/') {
            target = &target[part];
        }
        assert!(!target.is_null(), "dangling $ref {r}");
        v = target;
    }
    v
}

/// Checks `value` against an OpenAPI 3.0 schema (the subset the document uses); returns
/// what does not match, with its JSON path.
pub fn check_schema(
    doc: &serde_json::Value,
    schema: &serde_json::Value,
    value: &serde_json::Value,
    at: &str,
) -> Vec<String> {
    let schema = resolve(doc, schema);
    let mut problems = Vec::new();
    if value.is_null() {
        if schema.get("type").is_some() && schema["nullable"] != true {
            problems.push(format!("{at}: null but not nullable"));
        }
        return problems;
    }
    if let Some(options) = schema.get("enum").and_then(|e| e.as_array()) {
        if !options.contains(value) {
            problems.push(format!("{at}: {value} not in {options:?}"));
        }
    }
    match schema.get("type").and_then(|t| t.as_str()) {
        Some("object") => {
            let Some(obj) = value.as_object() else {
                problems.push(format!("{at}: expected an object, got {value}"));
                return problems;
            };
            for key in schema["required"].as_array().into_iter().flatten() {
                let key = key.as_str().unwrap_or_default();
                if !obj.contains_key(key) {
                    problems.push(format!("{at}: missing required {key}"));
                }
            }
            if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
                for (key, sub) in props {
                    if let Some(v) = obj.get(key) {
                        problems.extend(check_schema(doc, sub, v, &format!("{at}.{key}")));
                    }
                }
            }
        }
        Some("array") => match value.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    problems.extend(check_schema(
                        doc,
                        &schema["items"],
                        item,
                        &format!("{at}[{i}]"),
                    ));
                }
            }
            None => problems.push(format!("{at}: expected an array, got {value}")),
        },
        Some("string") if !value.is_string() => {
            problems.push(format!("{at}: expected a string, got {value}"))
        }
        Some("integer") if !(value.is_i64() || value.is_u64()) => {
            problems.push(format!("{at}: expected an integer, got {value}"))
        }
        Some("boolean") if !value.is_boolean() => {
            problems.push(format!("{at}: expected a boolean, got {value}"))
        }
        _ => {}
    }
    problems
}

/// The checked-in OpenAPI document.
pub fn openapi_document() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let text = std::fs::read_to_string(path).expect("read docs/openapi.json");
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}
