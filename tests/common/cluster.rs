//! Test worlds the shared harness cannot express: `[ratelimit]` settings, several gateway
//! processes sharing one data dir (one SQLite file, one set of keys), and a real
//! `redis-server` the test starts, kills and restarts. Built from the same commands an
//! operator runs (`portcullis dev-certs`, `keygen`, `user add`, `serve`, `echo-backend`).
//!
//! Every process started here is killed on drop. Traffic goes to 127.0.0.1 only.

// Each test file that includes this uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::common::{
    admin_get, fetch, form_body, form_field, free_port, parse_metrics, plain_http, poll_until,
    tls_client_config, CmdOutput, Response, BIN, LOGIN_CSRF_COOKIE, SESSION_COOKIE, WAIT,
};

/// The one tenant host of every world.
pub const ACME: &str = "acme.localhost";

/// A child process killed (and reaped) on drop.
struct Proc(Child);

impl Proc {
    fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn log_to(path: &Path) -> Stdio {
    Stdio::from(fs::File::create(path).expect("create log file"))
}

// ---------------------------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------------------------

/// A `redis-server` on a free loopback port, without persistence, owned by the test.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Redis {
    /// Starts a server on a free port (retrying if the port was taken meanwhile).
    pub fn start(dir: &Path) -> Redis {
        let mut last = String::new();
        for _ in 0..3 {
            let mut redis = Redis {
                port: free_port(),
                dir: dir.to_path_buf(),
                proc: None,
            };
            match redis.spawn() {
                Ok(()) => return redis,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.join(format!("redis-{}.log", self.port));
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log_to(&log))
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server (is it installed?): {e}"))?;
        let mut proc = Proc(child);
        let port = self.port;
        let up = poll_until(Duration::from_secs(10), || {
            !proc.running() || redis_ping(port)
        });
        if !up || !proc.running() {
            return Err(fs::read_to_string(&log).unwrap_or_default());
        }
        self.proc = Some(proc);
        Ok(())
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown) and waits until its port
    /// refuses connections.
    pub fn kill(&mut self) {
        self.proc = None;
        let port = self.port;
        assert!(
            poll_until(Duration::from_secs(10), || TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_err()),
            "redis port {port} still accepts connections after the kill"
        );
    }

    /// Starts the server again on the same port (bounded retries while the port frees up).
    pub fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("redis-server did not restart on port {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

/// Whether a Redis on `port` answers `PING`.
pub fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

// ---------------------------------------------------------------------------------------------
// Worlds: N gateway processes sharing one site
// ---------------------------------------------------------------------------------------------

/// What a world's `portcullis.toml` files and acme policy hold beyond the defaults.
#[derive(Clone, Debug)]
pub struct WorldOpts {
    /// Gateway processes, all on the same data dir.
    pub nodes: usize,
    /// `[server] threads` of each (also its number of concurrent password hashes).
    pub threads: usize,
    /// `[proxy] trusted_proxies`.
    pub trusted_proxies: Vec<String>,
    /// Lines under `[ratelimit]` (e.g. `login_ip_burst = 5`).
    pub ratelimit: Vec<String>,
    /// Appended to the acme policy after its routes.
    pub acme_extra: String,
}

impl Default for WorldOpts {
    fn default() -> Self {
        WorldOpts {
            nodes: 1,
            threads: 2,
            trusted_proxies: Vec::new(),
            ratelimit: Vec::new(),
            acme_extra: String::new(),
        }
    }
}

/// One `portcullis serve` of a world.
pub struct Node {
    pub https: u16,
    pub admin: u16,
    pub config: PathBuf,
    log: PathBuf,
    proc: Proc,
}

/// A site (certificates, policies, keys, one data dir), an echo backend and N gateways.
pub struct World {
    pub dir: TempDir,
    pub opts: WorldOpts,
    pub echo_port: u16,
    pub nodes: Vec<Node>,
    echo: Proc,
    doors: Vec<Door>,
}

impl World {
    /// Builds the site, starts the echo backend and every node, and waits (bounded) until
    /// each answers `/readyz` and accepts TCP on its HTTPS port.
    pub fn start(opts: WorldOpts) -> World {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-bf-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        let out = Command::new(BIN)
            .arg("dev-certs")
            .arg("--out")
            .arg(root.join("certs"))
            .arg("--hosts")
            .arg(ACME)
            .output()
            .expect("run portcullis dev-certs");
        assert!(out.status.success(), "dev-certs: {out:?}");
        fs::create_dir_all(root.join("policies")).expect("mkdir policies");
        fs::create_dir_all(root.join("data")).expect("mkdir data");

        let (echo, echo_port) = start_echo(root);
        let upstream = format!("http://127.0.0.1:{echo_port}");
        let mut policy = format!(
            "display_name = \"Acme Corp\"\nhosts = [\"{ACME}\"]\n\n\
             [[routes]]\nid = \"root\"\nprefix = \"/\"\nupstream = \"{upstream}\"\naccess = \"public\"\n\n\
             [[routes]]\nid = \"app\"\nprefix = \"/app\"\nupstream = \"{upstream}\"\naccess = \"authenticated\"\n\n\
             [[routes]]\nid = \"api\"\nprefix = \"/api\"\nupstream = \"{upstream}\"\naccess = \"public\"\n"
        );
        policy.push_str(&opts.acme_extra.replace("{upstream}", &upstream));
        fs::write(root.join("policies/acme.toml"), policy).expect("write policy");

        let mut world = World {
            dir,
            opts,
            echo_port,
            nodes: Vec::new(),
            echo,
            doors: Vec::new(),
        };
        for i in 0..world.opts.nodes {
            let node = world.start_node(i);
            world.nodes.push(node);
        }
        world.doors = (0..world.nodes.len()).map(|i| world.make_door(i)).collect();
        world
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca_path(&self) -> PathBuf {
        self.root().join("certs/ca.crt")
    }

    pub fn db_path(&self) -> PathBuf {
        self.root().join("data/portcullis.db")
    }

    /// The operator API token `keygen` wrote.
    pub fn admin_token(&self) -> String {
        fs::read_to_string(self.root().join("data/keys/admin.token"))
            .expect("read data/keys/admin.token")
            .trim()
            .to_string()
    }

    fn config_toml(&self, https: u16, admin: u16) -> String {
        let o = &self.opts;
        let trusted: Vec<String> = o
            .trusted_proxies
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect();
        let mut s = format!(
            "[server]\nhttps_listen = \"127.0.0.1:{https}\"\nthreads = {}\n\
             policies_dir = \"policies\"\ndata_dir = \"data\"\nreload_poll_ms = 0\n\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
             [[tls.certificates]]\nhosts = [\"{ACME}\"]\ncert = \"certs/{ACME}.crt\"\n\
             key = \"certs/{ACME}.key\"\n\n\
             [proxy]\ntrusted_proxies = [{}]\nconnect_timeout_ms = 1000\nread_timeout_ms = 5000\n",
            o.threads,
            trusted.join(", ")
        );
        if !o.ratelimit.is_empty() {
            s.push_str("\n[ratelimit]\n");
            for line in &o.ratelimit {
                s.push_str(line);
                s.push('\n');
            }
        }
        s
    }

    fn start_node(&self, i: usize) -> Node {
        let mut last = String::new();
        for _ in 0..3 {
            let (https, admin) = (free_port(), free_port());
            let config = self.root().join(format!("node{i}.toml"));
            fs::write(&config, self.config_toml(https, admin)).expect("write config");
            if i == 0 {
                // Master key, JWT keys and operator token in the shared data dir (once).
                let out = Command::new(BIN)
                    .arg("keygen")
                    .arg("--config")
                    .arg(&config)
                    .current_dir(self.root())
                    .output()
                    .expect("run portcullis keygen");
                assert!(out.status.success(), "keygen: {out:?}");
            }
            let log = self.root().join(format!("node{i}.log"));
            let child = Command::new(BIN)
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .current_dir(self.root())
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log_to(&log))
                .stderr(Stdio::from(
                    fs::OpenOptions::new()
                        .append(true)
                        .open(&log)
                        .expect("open log"),
                ))
                .spawn()
                .expect("spawn portcullis serve");
            let mut node = Node {
                https,
                admin,
                config,
                log,
                proc: Proc(child),
            };
            let ready = poll_until(WAIT, || {
                !node.proc.running()
                    || (admin_get(admin, "/readyz").is_some_and(|r| r.status == 200)
                        && TcpStream::connect(("127.0.0.1", https)).is_ok())
            });
            if ready && node.proc.running() {
                return node;
            }
            last = node.logs();
            if !last.to_lowercase().contains("in use") {
                panic!("node {i} did not start (ready={ready}):\n{last}");
            }
        }
        panic!("node {i} did not start (ports kept colliding):\n{last}");
    }

    fn make_door(&self, i: usize) -> Door {
        let ca = fs::read(self.ca_path()).expect("read ca.crt");
        let ca = reqwest::Certificate::from_pem(&ca).expect("parse ca.crt");
        let port = self.nodes[i].https;
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .resolve(ACME, SocketAddr::from(([127, 0, 0, 1], port)))
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("build reqwest client");
        Door {
            client,
            origin: format!("https://{ACME}:{port}"),
        }
    }

    /// The client of node `i` (cheap to clone into spawned tasks).
    pub fn door(&self, i: usize) -> Door {
        self.doors[i].clone()
    }

    /// Everything node `i` logged so far.
    pub fn logs(&self, i: usize) -> String {
        self.nodes[i].logs()
    }

    /// `portcullis_login_limiter_decisions_total` of node `i` by decision (absent = 0).
    pub fn decisions(&self, i: usize) -> BTreeMap<String, f64> {
        let resp = admin_get(self.nodes[i].admin, "/metrics")
            .unwrap_or_else(|| panic!("node {i} /metrics did not answer"));
        assert_eq!(resp.status, 200, "node {i} /metrics");
        parse_metrics(&resp.text())
            .into_iter()
            .filter(|s| s.name == "portcullis_login_limiter_decisions_total")
            .filter_map(|s| Some((s.label("decision")?.to_string(), s.value)))
            .collect()
    }

    /// One decision count on node `i`.
    pub fn decision(&self, i: usize, decision: &str) -> f64 {
        self.decisions(i).get(decision).copied().unwrap_or(0.0)
    }

    /// One decision count summed over every node.
    pub fn decision_sum(&self, decision: &str) -> f64 {
        (0..self.nodes.len())
            .map(|i| self.decision(i, decision))
            .sum()
    }

    /// Runs `portcullis ARGS` against node 0's config with `stdin` (killed after 30 s).
    pub fn cli(&self, args: &[&str], stdin: &str) -> CmdOutput {
        let mut child = Command::new("timeout")
            .arg("30")
            .arg(BIN)
            .args(args)
            .current_dir(self.root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run portcullis");
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin.as_bytes());
        }
        let out = child.wait_with_output().expect("wait for portcullis");
        CmdOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `portcullis user SUBCOMMAND --config node0.toml ARGS`.
    pub fn user_cli(&self, sub: &str, args: &[&str], stdin: &str) -> CmdOutput {
        let config = self.nodes[0].config.to_string_lossy().into_owned();
        let mut all = vec!["user", sub, "--config", config.as_str()];
        all.extend_from_slice(args);
        self.cli(&all, stdin)
    }

    /// `portcullis user add --tenant acme NAME --password-stdin`; panics on failure.
    pub fn add_user(&self, name: &str, password: &str) {
        let out = self.user_cli(
            "add",
            &["--tenant", "acme", name, "--password-stdin"],
            &format!("{password}\n"),
        );
        assert_eq!(out.code, Some(0), "user add {name}:\n{out}");
    }

    /// `POST path` on node `i`'s operator listener with an optional `Authorization` value.
    pub fn operator_post(&self, i: usize, path: &str, authorization: Option<&str>) -> Response {
        let port = self.nodes[i].admin;
        let auth = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        plain_http(port, req.as_bytes())
            .unwrap_or_else(|| panic!("operator listener did not answer POST {path}"))
    }

    /// Polls (bounded) the audit log with the sqlite3 CLI until it holds at least `want`
    /// `event` rows of tenant acme about `subject`; returns their `reason`s in order (fewer
    /// if the time ran out). `None` when the sqlite3 CLI is not installed.
    pub fn audit_reasons(
        &self,
        event: &str,
        subject: &str,
        want: usize,
        timeout: Duration,
    ) -> Option<Vec<String>> {
        Command::new("sqlite3").arg("-version").output().ok()?;
        let sql = format!(
            "SELECT coalesce(reason, '') FROM audit_event WHERE tenant = 'acme' \
             AND event = '{event}' AND subject = '{subject}' ORDER BY seq;"
        );
        let mut rows = Vec::new();
        poll_until(timeout, || {
            let out = Command::new("sqlite3")
                .arg("-cmd")
                .arg(".timeout 5000")
                .arg(self.db_path())
                .arg(&sql)
                .output();
            rows = match out {
                Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect(),
                _ => Vec::new(),
            };
            rows.len() >= want
        });
        Some(rows)
    }
}

impl World {
    /// Audit events of tenant acme counted by (event, subject, reason), for failure messages.
    pub fn audit_summary(&self) -> String {
        let out = Command::new("sqlite3")
            .arg("-cmd")
            .arg(".timeout 5000")
            .arg(self.db_path())
            .arg(
                "SELECT event, coalesce(subject, '-'), coalesce(reason, '-'), count(*) \
                 FROM audit_event WHERE tenant = 'acme' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;",
            )
            .output();
        match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("sqlite3: {e}"),
        }
    }
}

impl Node {
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn start_echo(root: &Path) -> (Proc, u16) {
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port();
        let log = root.join(format!("echo-{port}.log"));
        let child = Command::new(BIN)
            .arg("echo-backend")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log_to(&log))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn echo-backend");
        let mut proc = Proc(child);
        let up = poll_until(WAIT, || {
            !proc.running() || TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if up && proc.running() {
            return (proc, port);
        }
        last = fs::read_to_string(&log).unwrap_or_default();
    }
    panic!("echo-backend did not start: {last}");
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// A keep-alive HTTPS client for one node (HTTP/2 or HTTP/1.1 by ALPN, our CA only).
#[derive(Clone)]
pub struct Door {
    pub client: reqwest::Client,
    /// `https://acme.localhost:PORT`
    pub origin: String,
}

impl Door {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    /// JSON sign-in with extra request headers (e.g. `X-Forwarded-For`).
    pub async fn login_json(
        &self,
        user: &str,
        password: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        let body = serde_json::json!({ "username": user, "password": password });
        let mut req = self
            .client
            .post(self.url("/.auth/login"))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(body.to_string());
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        fetch(req).await
    }

    /// JSON sign-in from `X-Forwarded-For: xff` (believed only from a trusted peer).
    pub async fn login_from(&self, xff: &str, user: &str, password: &str) -> Response {
        self.login_json(user, password, &[("x-forwarded-for", xff)])
            .await
    }

    /// What a browser does: open the sign-in form, then post it with its CSRF cookie and
    /// token, `Origin` and `Sec-Fetch-Site`. Returns the POST's answer.
    pub async fn login_form(
        &self,
        user: &str,
        password: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut get = self
            .client
            .get(self.url("/.auth/login"))
            .header("accept", "text/html");
        for (n, v) in headers {
            get = get.header(*n, *v);
        }
        let page = fetch(get).await;
        assert_eq!(page.status, 200, "sign-in form: {}", page.text());
        let csrf = form_field(&page.text(), "csrf").expect("csrf field in the sign-in form");
        let cookie = page
            .set_cookie_value(LOGIN_CSRF_COOKIE)
            .expect("sign-in form sets the CSRF cookie");
        let mut post = self
            .client
            .post(self.url("/.auth/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "text/html,application/xhtml+xml")
            .header("origin", self.origin.as_str())
            .header("sec-fetch-site", "same-origin")
            .header("cookie", format!("{LOGIN_CSRF_COOKIE}={cookie}"))
            .body(form_body(&[
                ("username", user),
                ("password", password),
                ("csrf", &csrf),
                ("return_to", "/app"),
            ]));
        for (n, v) in headers {
            post = post.header(*n, *v);
        }
        fetch(post).await
    }

    /// `GET path` with an optional session cookie and extra headers.
    pub async fn get(
        &self,
        path: &str,
        session: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut req = self.client.get(self.url(path));
        if let Some(token) = session {
            req = req.header("cookie", format!("{SESSION_COOKIE}={token}"));
        }
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        fetch(req).await
    }
}

/// The session cookie a successful sign-in set; panics otherwise.
pub fn session_of(resp: &Response) -> String {
    assert_eq!(
        resp.status,
        200,
        "sign-in: {:?}\n{}",
        resp.headers,
        resp.text()
    );
    resp.set_cookie_value(SESSION_COOKIE)
        .filter(|v| !v.is_empty())
        .expect("sign-in sets the session cookie")
}

/// `Retry-After` as delay-seconds; panics if missing or not a number.
pub fn retry_after(resp: &Response) -> u64 {
    let v = resp
        .header("retry-after")
        .unwrap_or_else(|| panic!("{} without Retry-After: {:?}", resp.status, resp.headers));
    v.trim()
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After is not delay-seconds: {v:?}"))
}

/// A TLS handshake with node `port` from local address `from` (any 127.0.0.0/8 address is
/// loopback on Linux), SNI `acme.localhost`, ALPN http/1.1.
pub async fn tls_connect_from(
    from: Ipv4Addr,
    port: u16,
    ca: &Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tcp_connect_from(from, port).await?;
    let connector = tokio_rustls::TlsConnector::from(tls_client_config(ca, &[b"http/1.1"]));
    let name = rustls::pki_types::ServerName::try_from(ACME.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "tls handshake"))?
}

/// A TCP connection to 127.0.0.1:`port` from local address `from`.
pub async fn tcp_connect_from(from: Ipv4Addr, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    tokio::time::timeout(
        Duration::from_secs(10),
        socket.connect(SocketAddr::from(([127, 0, 0, 1], port))),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "tcp connect"))?
}
