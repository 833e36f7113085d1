//! Helpers for the audit-log tests (issue 7, items 1, 2 and 5): reading a tenant's log with
//! `portcullis audit`, waiting for events to be stored, a JSON client that picks its client
//! address with `X-Forwarded-For` (for worlds that trust 127.0.0.1 as a proxy), stopping a
//! gateway without removing its site, and copies of a site for tampering with the store.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// The log of operator-level events (config reload).
pub const OPERATOR: &str = "_operator";

/// One record as `portcullis audit --json` prints it: `{"seq": N, "event": {…}}`.
#[derive(Clone, Debug)]
pub struct Record {
    pub seq: u64,
    pub event: serde_json::Value,
}

impl Record {
    /// The event type name (`login_failed`, …).
    pub fn kind(&self) -> &str {
        self.event["event"].as_str().unwrap_or_default()
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.event[name].as_str()
    }

    /// Whether `user` is this record's actor or subject.
    pub fn about(&self, user: &str) -> bool {
        self.field("actor") == Some(user) || self.field("subject") == Some(user)
    }
}

/// Runs `portcullis audit --config CONFIG ARGS` (killed after 30 s).
pub fn audit_cli(config: &Path, args: &[&str]) -> CmdOutput {
    let config = config.to_string_lossy().into_owned();
    let mut all = vec!["audit", "--config", config.as_str()];
    all.extend_from_slice(args);
    run_cli_in(config_dir(Path::new(&config)), &all)
}

fn config_dir(config: &Path) -> Option<&Path> {
    config.parent()
}

/// Parses the JSON lines of `portcullis audit --json`; panics (with the output) on anything
/// else.
pub fn parse_records(out: &CmdOutput) -> Vec<Record> {
    assert_eq!(out.code, Some(0), "portcullis audit failed:\n{out}");
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("audit --json line is not JSON ({e}): {line}\n{out}"));
            Record {
                seq: v["seq"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no seq in {line}")),
                event: v["event"].clone(),
            }
        })
        .collect()
}

/// `portcullis audit --tenant TENANT --json --limit 1000 EXTRA…` as records (newest first).
pub fn records(config: &Path, tenant: &str, extra: &[&str]) -> Vec<Record> {
    let mut args = vec!["--tenant", tenant, "--json", "--limit", "1000"];
    args.extend_from_slice(extra);
    parse_records(&audit_cli(config, &args))
}

/// Polls (bounded by `timeout`) until `tenant`'s log satisfies `done`; returns the last read.
pub fn wait_records(
    config: &Path,
    tenant: &str,
    timeout: Duration,
    mut done: impl FnMut(&[Record]) -> bool,
) -> Vec<Record> {
    let mut last = Vec::new();
    poll_until(timeout, || {
        last = records(config, tenant, &[]);
        done(&last)
    });
    last
}

/// Polls until `tenant`'s log holds an event `kind` about `user` (any event `kind` when
/// `user` is `None`); returns whether it did.
pub fn wait_event(config: &Path, tenant: &str, kind: &str, user: Option<&str>) -> bool {
    let found = wait_records(config, tenant, Duration::from_secs(15), |rs| {
        rs.iter()
            .any(|r| r.kind() == kind && user.is_none_or(|u| r.about(u)))
    });
    found
        .iter()
        .any(|r| r.kind() == kind && user.is_none_or(|u| r.about(u)))
}

/// How many events of each type, as `kind ×n` lines (for failure messages).
pub fn summary(records: &[Record]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in records {
        *counts.entry(r.kind()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("  {k} ×{n}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every record as one line (for failure messages).
pub fn listing(records: &[Record]) -> String {
    records
        .iter()
        .map(|r| {
            format!(
                "  #{} {} {} actor={} subject={} reason={}",
                r.seq,
                r.kind(),
                r.field("outcome").unwrap_or("-"),
                r.field("actor").unwrap_or("-"),
                r.field("subject").unwrap_or("-"),
                r.field("reason").unwrap_or("-"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Stops the gateway process with SIGTERM (SIGKILL after 15 s) and waits until it is gone,
/// leaving its site (config, store) in place.
pub fn stop(gw: &mut Gateway) {
    let pid = gw.pid().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    if !poll_until(Duration::from_secs(15), || !gw.is_running()) {
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
        assert!(
            poll_until(Duration::from_secs(5), || !gw.is_running()),
            "gateway {pid} did not stop"
        );
    }
}

/// Copies `from` into `to` recursively (files keep their permission bits).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// A copy of a stopped gateway's site in `dir`: the same `portcullis.toml` (so its relative
/// `data_dir` now means the copy's data), certificates, policies and the whole data folder
/// (database, WAL, keys). Returns the copy's config path.
pub fn copy_site(site: &Site, dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).expect("mkdir site copy");
    fs::copy(site.config_path(), dir.join("portcullis.toml")).expect("copy portcullis.toml");
    for sub in ["certs", "policies", "data"] {
        copy_dir(&site.path(sub), &dir.join(sub));
    }
    dir.join("portcullis.toml")
}

/// Runs `sqlite3 DB SQL` (5 s lock timeout); panics on failure; stdout.
pub fn sqlite_at(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 5000")
        .arg(db)
        .arg(sql)
        .output()
        .expect("run sqlite3 (apt-get install sqlite3)");
    assert!(
        out.status.success(),
        "sqlite3 {} {sql}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A JSON/form client of one host that sends `X-Forwarded-For: ip` (when set) and its own
/// `User-Agent`; cheap to clone into spawned tasks.
#[derive(Clone)]
pub struct Agent {
    pub http: reqwest::Client,
    pub origin: String,
    pub ip: Option<String>,
    pub user_agent: String,
}

impl Agent {
    pub fn new(gw: &Gateway, host: &str, ip: Option<&str>) -> Agent {
        Agent {
            http: gw.client(),
            origin: gw.origin(host),
            ip: ip.map(str::to_string),
            user_agent: "audit-tests".into(),
        }
    }

    /// The same client from another address.
    pub fn at_ip(&self, ip: &str) -> Agent {
        Agent {
            ip: Some(ip.to_string()),
            ..self.clone()
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        session: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.origin))
            .header("user-agent", &self.user_agent)
            .header("accept", "application/json");
        if let Some(ip) = &self.ip {
            req = req.header("x-forwarded-for", ip);
        }
        if let Some(s) = session {
            req = req.header("cookie", format!("{SESSION_COOKIE}={s}"));
        }
        req
    }

    /// `POST /.auth/login` with a JSON body.
    pub async fn login(&self, user: &str, password: &str) -> Response {
        let body = serde_json::json!({ "username": user, "password": password });
        fetch(
            self.request(reqwest::Method::POST, "/.auth/login", None)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// A JSON sign-in that must succeed straight to an active session; returns its cookie.
    pub async fn sign_in(&self, user: &str, password: &str) -> String {
        let resp = self.login(user, password).await;
        assert_eq!(resp.status, 200, "login of {user}: {}", resp.text());
        assert_eq!(
            resp.json()["next"],
            "done",
            "login of {user}: {}",
            resp.text()
        );
        resp.set_cookie_value(SESSION_COOKIE)
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| panic!("login of {user} set no session cookie"))
    }

    /// `GET path` as an API client.
    pub async fn get(&self, path: &str, session: Option<&str>) -> Response {
        fetch(self.request(reqwest::Method::GET, path, session)).await
    }

    /// The session's CSRF token (from whoami; active sessions only).
    pub async fn csrf(&self, session: &str) -> String {
        let who = self.get("/.auth/whoami", Some(session)).await;
        assert_eq!(who.status, 200, "whoami: {}", who.text());
        who.json()["csrf"]
            .as_str()
            .expect("whoami csrf")
            .to_string()
    }

    /// `POST path` with a form body, the session cookie and `X-CSRF-Token` (when given).
    pub async fn post_form(
        &self,
        path: &str,
        session: Option<&str>,
        csrf: Option<&str>,
        fields: &[(&str, &str)],
    ) -> Response {
        let mut req = self
            .request(reqwest::Method::POST, path, session)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(fields));
        if let Some(token) = csrf {
            req = req.header("x-csrf-token", token);
        }
        fetch(req).await
    }
}

/// Whether `needle` occurs in `hay` as a token of its own: not inside a longer run of
/// letters and digits (so a 6-digit code is not "found" inside a hex hash or a timestamp).
pub fn has_token(hay: &str, needle: &str) -> bool {
    let bytes = hay.as_bytes();
    hay.match_indices(needle).any(|(at, _)| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(at + needle.len()).copied();
        !before.is_some_and(|b| b.is_ascii_alphanumeric())
            && !after.is_some_and(|b| b.is_ascii_alphanumeric())
    })
}
