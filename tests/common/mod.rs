//! The one shared harness for the integration tests.
//!
//! Every test starts its own world on free loopback ports: dev certificates from
//! `portcullis dev-certs`, the built-in echo backend (`portcullis echo-backend`) behind a
//! recording TCP relay (so a test can prove what did, or did not, reach the upstream), a dead
//! port (502), a silent port that accepts and never answers (504), and `portcullis serve` with
//! its stdout/stderr captured to files. Everything is killed on drop.
//!
//! Clients: reqwest (HTTP/1.1 and h2 over ALPN, our CA only), a raw TLS client (tokio-rustls)
//! that writes exact bytes for smuggling and path cases, and `openssl s_client` for
//! protocol/cipher negotiation.
//!
//! Accounts and sign-in: `Gateway::add_user` / `set_password` / `disable_user` run
//! `portcullis user …` against the world's config (password on stdin), `Gateway::login` signs
//! in with JSON and returns the session cookie, and `Browser` keeps cookies for one host and
//! submits the server-rendered forms as a browser would.

// Each test file compiles this module separately and uses a different part of it.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod saml;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
/// `hsts_max_age` written into every test config.
pub const HSTS_MAX_AGE: u64 = 31_536_000;
/// The exact `Strict-Transport-Security` value the gateway must send (SPEC step 10).
pub const HSTS_VALUE: &str = "max-age=31536000; includeSubDomains";
/// The hosts `dev-certs` makes certificates for; `other.localhost` is never served.
pub const CERT_HOSTS: &str = "acme.localhost,globex.localhost,other.localhost";

/// Upper bound for every wait on the gateway (start-up, reload, log lines).
pub const WAIT: Duration = Duration::from_secs(30);

/// A port that was free a moment ago (bind `127.0.0.1:0`, read, drop), and never handed out
/// before in this test process: the kernel may give a just-released port again, and two worlds
/// of one test binary starting in parallel must not both plan to listen on it.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<std::collections::HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(Default::default);
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let mut seen = given.lock().unwrap_or_else(|e| e.into_inner());
        if seen.insert(port) {
            return port;
        }
    }
}

/// The subcommands `portcullis --help` lists.
pub fn binary_commands() -> &'static [String] {
    static COMMANDS: OnceLock<Vec<String>> = OnceLock::new();
    COMMANDS.get_or_init(|| {
        let out = Command::new(BIN)
            .arg("--help")
            .output()
            .expect("run portcullis --help");
        help_commands(&String::from_utf8_lossy(&out.stdout))
    })
}

/// Whether the binary has the subcommand `name` (key files arrived with `keygen`).
pub fn binary_has_command(name: &str) -> bool {
    binary_commands().iter().any(|c| c == name)
}

/// The command names in the `Commands:` section of clap help text (without `help`).
pub fn help_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Options and the on-disk site (config, policies, certificates)
// ---------------------------------------------------------------------------------------------

/// Per-test knobs for the generated `portcullis.toml`.
#[derive(Clone, Debug)]
pub struct Opts {
    pub trusted_proxies: Vec<String>,
    pub max_header_bytes: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub read_timeout_ms: u64,
    /// `[proxy] idle_timeout_ms`: how long pooled upstream connections may stay idle.
    pub idle_timeout_ms: u64,
    /// `[proxy] client_send_timeout_ms`, when set.
    pub client_send_timeout_ms: Option<u64>,
    /// `[proxy] client_header_timeout_ms`, when set.
    pub client_header_timeout_ms: Option<u64>,
    /// `[proxy] client_idle_timeout_ms`, when set.
    pub client_idle_timeout_ms: Option<u64>,
    /// `[proxy] client_body_timeout_ms`, when set.
    pub client_body_timeout_ms: Option<u64>,
    /// `[proxy] client_body_min_rate`, when set.
    pub client_body_min_rate: Option<u64>,
    pub reload_poll_ms: u64,
    /// Start the plain-HTTP redirect listener too.
    pub http_redirect: bool,
    /// Appended to acme's policy after its routes (e.g. a `[password]` or `[session]` table).
    pub acme_policy_extra: String,
    /// The log filter of `portcullis serve` (`PORTCULLIS_LOG`, and `RUST_LOG` for good measure).
    pub log_filter: String,
    /// Appended to globex's policy after its routes.
    pub globex_policy_extra: String,
    /// Extra files (path relative to the site root, content) written before the gateway
    /// starts, e.g. an IdP's metadata next to the policies.
    pub files: Vec<(String, String)>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            trusted_proxies: Vec::new(),
            max_header_bytes: None,
            max_body_bytes: None,
            read_timeout_ms: 1000,
            idle_timeout_ms: 60_000,
            client_send_timeout_ms: None,
            client_header_timeout_ms: None,
            client_idle_timeout_ms: None,
            client_body_timeout_ms: None,
            client_body_min_rate: None,
            reload_poll_ms: 200,
            http_redirect: false,
            acme_policy_extra: String::new(),
            log_filter: "info".into(),
            globex_policy_extra: String::new(),
            files: Vec::new(),
        }
    }
}

/// Ports of one test world.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub https: u16,
    pub admin: u16,
    /// The echo backend itself.
    pub echo: u16,
    /// The recording relay in front of the echo backend; routes point here.
    pub backend: u16,
    /// Nothing listens here (connect refused → 502).
    pub dead: u16,
    /// Accepts and never answers (read timeout → 504).
    pub silent: u16,
    pub redirect: Option<u16>,
}

impl Ports {
    fn allocate(opts: &Opts) -> Ports {
        Ports {
            https: free_port(),
            admin: free_port(),
            echo: free_port(),
            backend: free_port(),
            dead: free_port(),
            silent: free_port(),
            redirect: opts.http_redirect.then(free_port),
        }
    }
}

/// A route line set for a policy file.
pub fn route(id: &str, prefix: &str, upstream: &str, access: &str) -> String {
    let mut out = format!(
        "\n[[routes]]\nid = \"{id}\"\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\naccess = \"{access}\"\n"
    );
    if access == "roles" {
        out.push_str("roles = [\"admin\"]\n");
    }
    out
}

/// A temporary directory holding a complete, valid configuration: `portcullis.toml`,
/// `policies/acme.toml`, `policies/globex.toml` and `certs/` from `portcullis dev-certs`.
pub struct Site {
    pub dir: TempDir,
    pub ports: Ports,
    pub opts: Opts,
}

/// Number of routes in the default policies (acme 7 + globex 2).
pub const DEFAULT_ROUTES: usize = 9;

impl Site {
    pub fn new(opts: Opts) -> Site {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-it-")
            .tempdir()
            .expect("tempdir");
        let ports = Ports::allocate(&opts);
        let site = Site { dir, ports, opts };
        site.make_certs();
        fs::create_dir_all(site.path("policies")).expect("mkdir policies");
        fs::create_dir_all(site.path("data")).expect("mkdir data");
        for (rel, content) in &site.opts.files {
            site.write(rel, content);
        }
        site.write("portcullis.toml", &site.config_toml());
        site.write(
            "policies/acme.toml",
            &site.acme_policy(&site.opts.acme_policy_extra),
        );
        site.write(
            "policies/globex.toml",
            &site.globex_policy(&site.opts.globex_policy_extra),
        );
        site
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("portcullis.toml")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.path("certs/ca.crt")
    }

    fn make_certs(&self) {
        let out = Command::new(BIN)
            .arg("dev-certs")
            .arg("--out")
            .arg(self.path("certs"))
            .arg("--hosts")
            .arg(CERT_HOSTS)
            .output()
            .expect("run portcullis dev-certs");
        assert!(
            out.status.success(),
            "portcullis dev-certs failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `portcullis keygen`: the master key and JWT signing keys `serve` needs.
    pub fn make_keys(&self) {
        let out = Command::new(BIN)
            .arg("keygen")
            .arg("--config")
            .arg(self.config_path())
            .current_dir(self.root())
            .output()
            .expect("run portcullis keygen");
        assert!(
            out.status.success(),
            "portcullis keygen failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The upstream URL of the echo backend (through the recording relay).
    pub fn echo_upstream(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.backend)
    }

    /// `portcullis.toml` for this site, with `https_listen` overridable for reload tests.
    pub fn config_toml_with_listen(&self, https_port: u16) -> String {
        let p = &self.ports;
        let o = &self.opts;
        let mut s = String::new();
        s.push_str("[server]\n");
        s.push_str(&format!("https_listen = \"127.0.0.1:{https_port}\"\n"));
        if let Some(r) = p.redirect {
            s.push_str(&format!("http_redirect_listen = \"127.0.0.1:{r}\"\n"));
            s.push_str("https_public_port = 8443\n");
        }
        s.push_str("threads = 2\n");
        s.push_str("policies_dir = \"policies\"\n");
        s.push_str("data_dir = \"data\"\n");
        s.push_str(&format!("hsts_max_age = {HSTS_MAX_AGE}\n"));
        s.push_str(&format!("reload_poll_ms = {}\n", o.reload_poll_ms));
        s.push_str("\n[admin]\n");
        s.push_str(&format!("listen = \"127.0.0.1:{}\"\n", p.admin));
        for host in ["acme.localhost", "globex.localhost"] {
            s.push_str("\n[[tls.certificates]]\n");
            s.push_str(&format!("hosts = [\"{host}\"]\n"));
            s.push_str(&format!("cert = \"certs/{host}.crt\"\n"));
            s.push_str(&format!("key = \"certs/{host}.key\"\n"));
        }
        s.push_str("\n[proxy]\n");
        let trusted: Vec<String> = o
            .trusted_proxies
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect();
        s.push_str(&format!("trusted_proxies = [{}]\n", trusted.join(", ")));
        s.push_str("connect_timeout_ms = 1000\n");
        s.push_str(&format!("read_timeout_ms = {}\n", o.read_timeout_ms));
        s.push_str("write_timeout_ms = 5000\n");
        s.push_str(&format!("idle_timeout_ms = {}\n", o.idle_timeout_ms));
        if let Some(ms) = o.client_send_timeout_ms {
            s.push_str(&format!("client_send_timeout_ms = {ms}\n"));
        }
        if let Some(ms) = o.client_header_timeout_ms {
            s.push_str(&format!("client_header_timeout_ms = {ms}\n"));
        }
        if let Some(ms) = o.client_idle_timeout_ms {
            s.push_str(&format!("client_idle_timeout_ms = {ms}\n"));
        }
        if let Some(ms) = o.client_body_timeout_ms {
            s.push_str(&format!("client_body_timeout_ms = {ms}\n"));
        }
        if let Some(rate) = o.client_body_min_rate {
            s.push_str(&format!("client_body_min_rate = {rate}\n"));
        }
        if let Some(b) = o.max_body_bytes {
            s.push_str(&format!("max_body_bytes = {b}\n"));
        }
        if let Some(h) = o.max_header_bytes {
            s.push_str(&format!("max_header_bytes = {h}\n"));
        }
        s
    }

    /// Rewrites `portcullis.toml` with `lines` (`key = value`, newline-ended) at the top of
    /// its `[proxy]` table, for a reload to pick up.
    pub fn write_proxy_lines(&self, lines: &str) {
        let config = self.config_toml();
        let changed = config.replacen("[proxy]\n", &format!("[proxy]\n{lines}"), 1);
        assert_ne!(changed, config, "no [proxy] table to change");
        self.write("portcullis.toml", &changed);
    }

    pub fn config_toml(&self) -> String {
        self.config_toml_with_listen(self.ports.https)
    }

    /// acme: `/` public, `/app` authenticated, `/admin` roles, `/api` public,
    /// `/api/private` authenticated, `/dead` → dead port, `/slow` → silent port.
    /// `id` is line 1 and `hosts` line 2 (the config tests rely on it).
    pub fn acme_policy(&self, extra_routes: &str) -> String {
        let echo = self.echo_upstream();
        let mut s = String::from(
            "id = \"acme\"\nhosts = [\"acme.localhost\"]\ndisplay_name = \"Acme Corp\"\n",
        );
        s.push_str(&route("root", "/", &echo, "public"));
        s.push_str(&route("app", "/app", &echo, "authenticated"));
        s.push_str(&route("admin", "/admin", &echo, "roles"));
        s.push_str(&route("api", "/api", &echo, "public"));
        s.push_str(&route(
            "api-private",
            "/api/private",
            &echo,
            "authenticated",
        ));
        s.push_str(&route(
            "dead",
            "/dead",
            &format!("http://127.0.0.1:{}", self.ports.dead),
            "public",
        ));
        s.push_str(&route(
            "slow",
            "/slow",
            &format!("http://127.0.0.1:{}", self.ports.silent),
            "public",
        ));
        s.push_str(extra_routes);
        s
    }

    /// globex: no `/` route; `/api` public, `/app` authenticated.
    /// `id` is line 1 and `hosts` line 2.
    pub fn globex_policy(&self, extra_routes: &str) -> String {
        let echo = self.echo_upstream();
        let mut s = String::from(
            "id = \"globex\"\nhosts = [\"globex.localhost\"]\ndisplay_name = \"Globex\"\n",
        );
        s.push_str(&route("api", "/api", &echo, "public"));
        s.push_str(&route("app", "/app", &echo, "authenticated"));
        s.push_str(extra_routes);
        s
    }

    /// Writes a file (relative to the site root) in one step: temp file + rename, so a
    /// polling reloader never sees half a file.
    pub fn write(&self, rel: &str, content: &str) {
        let target = self.path(rel);
        let name = target
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let tmp = target.with_file_name(format!(".{name}.writing"));
        fs::write(&tmp, content).expect("write temp file");
        fs::rename(&tmp, &target).expect("rename into place");
    }

    /// Runs `portcullis check --config <this site>`.
    pub fn check(&self) -> CmdOutput {
        let config = self.config_path();
        run_cli(&["check", "--config", &config.to_string_lossy()])
    }
}

// ---------------------------------------------------------------------------------------------
// Test-side servers: a recording relay and a silent listener
// ---------------------------------------------------------------------------------------------

/// A TCP relay in front of the echo backend that records every byte the gateway sent.
struct Recorder {
    port: u16,
    log: Arc<Mutex<Vec<u8>>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    fn start(port: u16, target: u16) -> std::io::Result<Recorder> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, conns2, stop2) = (log.clone(), connections.clone(), stop.clone());
        thread::spawn(move || {
            for inbound in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(inbound) = inbound else { continue };
                conns2.fetch_add(1, Ordering::SeqCst);
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                };
                relay(inbound, outbound, log2.clone());
            }
        });
        Ok(Recorder {
            port,
            log,
            connections,
            stop,
        })
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn relay(inbound: TcpStream, outbound: TcpStream, log: Arc<Mutex<Vec<u8>>>) {
    let (Ok(mut in_r), Ok(mut out_w)) = (inbound.try_clone(), outbound.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match in_r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    log.lock()
                        .expect("recorder log")
                        .extend_from_slice(&buf[..n]);
                    if out_w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = out_w.shutdown(Shutdown::Write);
    });
    let (mut out_r, mut in_w) = (outbound, inbound);
    thread::spawn(move || {
        let _ = std::io::copy(&mut out_r, &mut in_w);
        let _ = in_w.shutdown(Shutdown::Write);
    });
}

/// Accepts connections and never answers (the upstream for 504 tests).
struct Silent {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Silent {
    fn start(port: u16) -> std::io::Result<Silent> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    held.push(conn);
                }
            }
        });
        Ok(Silent { port, stop })
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------------------------

/// One running test world. Children are killed on drop.
pub struct Gateway {
    pub site: Site,
    gateway: Child,
    echo: Child,
    recorder: Recorder,
    silent: Silent,
}

enum StartError {
    /// A port we picked was taken by someone else in the meantime: retry with new ports.
    PortRace(String),
    Fatal(String),
}

impl Gateway {
    pub fn start_default() -> Gateway {
        Gateway::start(Opts::default())
    }

    /// Starts a fresh world and waits (bounded) until `/readyz` answers 200.
    pub fn start(opts: Opts) -> Gateway {
        let mut last = String::new();
        for _ in 0..3 {
            match Gateway::try_start(opts.clone()) {
                Ok(gw) => return gw,
                Err(StartError::PortRace(msg)) => last = msg,
                Err(StartError::Fatal(msg)) => panic!("{msg}"),
            }
        }
        panic!("gateway did not start (ports kept colliding): {last}");
    }

    fn try_start(opts: Opts) -> Result<Gateway, StartError> {
        let site = Site::new(opts);
        let p = site.ports;
        let in_use = |e: std::io::Error| StartError::PortRace(format!("test listener: {e}"));
        let recorder = Recorder::start(p.backend, p.echo).map_err(in_use)?;
        let silent = match Silent::start(p.silent) {
            Ok(s) => s,
            Err(e) => {
                recorder.stop();
                return Err(in_use(e));
            }
        };

        let mut echo = Command::new(BIN)
            .arg("echo-backend")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", p.echo))
            .stdin(Stdio::null())
            .stdout(log_file(&site, "echo.stdout.log"))
            .stderr(log_file(&site, "echo.stderr.log"))
            .spawn()
            .map_err(|e| StartError::Fatal(format!("spawn echo-backend: {e}")))?;
        let echo_up = poll_until(WAIT, || {
            TcpStream::connect(("127.0.0.1", p.echo)).is_ok()
                || matches!(echo.try_wait(), Ok(Some(_)))
        });
        if !echo_up || matches!(echo.try_wait(), Ok(Some(_))) {
            let logs = read_logs(&site, "echo");
            let _ = echo.kill();
            let _ = echo.wait();
            recorder.stop();
            silent.stop();
            return Err(if logs.to_lowercase().contains("in use") {
                StartError::PortRace(logs)
            } else {
                StartError::Fatal(format!("echo-backend did not start:\n{logs}"))
            });
        }

        if binary_has_command("keygen") {
            site.make_keys();
        }
        let gateway = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(site.config_path())
            .current_dir(site.root())
            .env("RUST_LOG", &site.opts.log_filter)
            .env("PORTCULLIS_LOG", &site.opts.log_filter)
            .stdin(Stdio::null())
            .stdout(log_file(&site, "gateway.stdout.log"))
            .stderr(log_file(&site, "gateway.stderr.log"))
            .spawn()
            .map_err(|e| StartError::Fatal(format!("spawn portcullis serve: {e}")))?;
        let mut gw = Gateway {
            site,
            gateway,
            echo,
            recorder,
            silent,
        };
        let ready = poll_until(WAIT, || {
            matches!(gw.gateway.try_wait(), Ok(Some(_)))
                || admin_get(gw.site.ports.admin, "/readyz").is_some_and(|r| r.status == 200)
        });
        if let Ok(Some(status)) = gw.gateway.try_wait() {
            let logs = gw.logs();
            return Err(if logs.to_lowercase().contains("in use") {
                StartError::PortRace(logs)
            } else {
                StartError::Fatal(format!("portcullis serve exited ({status}):\n{logs}"))
            });
        }
        // /readyz means "config loaded"; pingora may bind its listeners a moment later.
        let ports = gw.site.ports;
        let listening = ready
            && poll_until(WAIT, || {
                TcpStream::connect(("127.0.0.1", ports.https)).is_ok()
                    && ports
                        .redirect
                        .is_none_or(|r| TcpStream::connect(("127.0.0.1", r)).is_ok())
            });
        if !listening {
            return Err(StartError::Fatal(format!(
                "portcullis serve not ready within {WAIT:?} (readyz={ready}):\n{}",
                gw.logs()
            )));
        }
        Ok(gw)
    }

    pub fn ports(&self) -> Ports {
        self.site.ports
    }

    pub fn https_port(&self) -> u16 {
        self.site.ports.https
    }

    pub fn pid(&self) -> u32 {
        self.gateway.id()
    }

    /// Whether the gateway process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.gateway.try_wait(), Ok(None))
    }

    /// Everything the gateway wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        read_logs(&self.site, "gateway")
    }

    /// Waits (bounded) until the gateway logs contain `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        poll_until(timeout, || self.logs().contains(needle))
    }

    /// Sends SIGHUP to the gateway process.
    pub fn sighup(&self) {
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill -HUP");
        assert!(status.success(), "kill -HUP failed: {status}");
    }

    /// All bytes the gateway sent to the echo backend so far (lossy UTF-8).
    pub fn backend_traffic(&self) -> String {
        String::from_utf8_lossy(&self.recorder.log.lock().expect("recorder log")).into_owned()
    }

    /// Number of TCP connections the gateway opened to the echo backend so far.
    pub fn backend_connections(&self) -> usize {
        self.recorder.connections.load(Ordering::SeqCst)
    }

    /// GET on the operator listener.
    pub fn admin(&self, path: &str) -> Response {
        admin_get(self.site.ports.admin, path)
            .unwrap_or_else(|| panic!("operator listener did not answer GET {path}"))
    }

    pub fn metrics(&self) -> Vec<Sample> {
        let resp = self.admin("/metrics");
        assert_eq!(resp.status, 200, "/metrics status");
        parse_metrics(&resp.text())
    }

    /// `portcullis_client_connections_cut_total` for `reason` (0 if not yet counted).
    pub fn cuts(&self, reason: &str) -> f64 {
        self.metrics()
            .iter()
            .filter(|s| {
                s.name == "portcullis_client_connections_cut_total"
                    && s.label("reason") == Some(reason)
            })
            .map(|s| s.value)
            .sum()
    }

    // ----- reqwest ------------------------------------------------------------------------

    /// `https://<host>:<port><path>`.
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.site.ports.https)
    }

    fn client_builder(&self) -> reqwest::ClientBuilder {
        let ca = fs::read(self.site.ca_path()).expect("read ca.crt");
        let ca = reqwest::Certificate::from_pem(&ca).expect("parse ca.crt");
        let addr = SocketAddr::from(([127, 0, 0, 1], self.site.ports.https));
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .resolve("acme.localhost", addr)
            .resolve("globex.localhost", addr)
            .resolve("other.localhost", addr)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(20))
    }

    /// A client that negotiates h2 or http/1.1 by ALPN (the gateway offers both).
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().expect("build reqwest client")
    }

    /// A client restricted to HTTP/1.1.
    pub fn client_h1(&self) -> reqwest::Client {
        self.client_builder()
            .http1_only()
            .build()
            .expect("build reqwest client")
    }

    /// An HTTP/2 connection (h2 by ALPN, SNI acme.localhost), driven in the background.
    pub async fn h2_connect(&self) -> h2::client::SendRequest<bytes::Bytes> {
        let connector =
            tokio_rustls::TlsConnector::from(tls_client_config(&self.site.ca_path(), &[b"h2"]));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.site.ports.https))
            .await
            .expect("tcp connect");
        let name = rustls::pki_types::ServerName::try_from("acme.localhost").expect("server name");
        let tls = connector.connect(name, tcp).await.expect("tls handshake");
        let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        send
    }

    // ----- raw TLS ------------------------------------------------------------------------

    /// Opens a TLS connection with the given SNI (ALPN http/1.1), trusting only our CA.
    pub async fn raw_connect(&self, sni: &str) -> std::io::Result<RawConn> {
        RawConn::connect(
            self.site.ports.https,
            &self.site.ca_path(),
            sni,
            &[b"http/1.1"],
        )
        .await
    }

    /// Writes `request` verbatim on a new connection and reads until the server closes
    /// (or 10 s pass).
    pub async fn raw(&self, sni: &str, request: &[u8]) -> RawReply {
        let mut conn = self
            .raw_connect(sni)
            .await
            .unwrap_or_else(|e| panic!("TLS connect with SNI {sni}: {e}"));
        conn.send(request).await;
        conn.read_to_close(Duration::from_secs(10)).await
    }

    /// `GET <target>` with `Host: <host>` and `Connection: close` over SNI `host`,
    /// plus `extra` header lines (each without CRLF).
    pub async fn raw_get(&self, host: &str, target: &str, extra: &[&str]) -> Response {
        let req = request_bytes("GET", target, host, extra, b"");
        self.raw(host, &req).await.single()
    }

    // ----- openssl s_client ---------------------------------------------------------------

    /// Runs `openssl s_client -connect 127.0.0.1:<https> -CAfile ca.crt <args>` with stdin
    /// closed and reports what was negotiated.
    pub fn s_client(&self, args: &[&str]) -> Handshake {
        let out = Command::new("timeout")
            .arg("20")
            .arg("openssl")
            .arg("s_client")
            .arg("-connect")
            .arg(format!("127.0.0.1:{}", self.site.ports.https))
            .arg("-CAfile")
            .arg(self.site.ca_path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl s_client");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Handshake::parse(text)
    }

    /// Like [`Gateway::s_client`] but feeds `input` on stdin and keeps reading after stdin
    /// ends (`-ign_eof`) until the server closes, so post-handshake messages (session
    /// tickets) are received.
    pub fn s_client_with_input(&self, args: &[&str], input: &[u8]) -> Handshake {
        let mut child = Command::new("timeout")
            .arg("20")
            .arg("openssl")
            .arg("s_client")
            .arg("-connect")
            .arg(format!("127.0.0.1:{}", self.site.ports.https))
            .arg("-CAfile")
            .arg(self.site.ca_path())
            .arg("-ign_eof")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run openssl s_client");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input);
        }
        let out = child.wait_with_output().expect("wait for openssl s_client");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Handshake::parse(text)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.gateway.kill();
        let _ = self.gateway.wait();
        let _ = self.echo.kill();
        let _ = self.echo.wait();
        self.recorder.stop();
        self.silent.stop();
    }
}

fn log_file(site: &Site, name: &str) -> Stdio {
    Stdio::from(fs::File::create(site.path(name)).expect("create log file"))
}

fn read_logs(site: &Site, prefix: &str) -> String {
    let mut s = String::new();
    for stream in ["stdout", "stderr"] {
        if let Ok(text) = fs::read_to_string(site.path(&format!("{prefix}.{stream}.log"))) {
            s.push_str(&text);
        }
    }
    s
}

/// Plain HTTP/1.1 GET to the operator listener; `None` if it does not answer.
pub fn admin_get(port: u16, path: &str) -> Option<Response> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    plain_http(port, req.as_bytes())
}

/// Writes `request` verbatim over plain TCP to 127.0.0.1:`port` and parses the first
/// response read before the server closes (5 s bound); `None` if there is none.
pub fn plain_http(port: u16, request: &[u8]) -> Option<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    stream.write_all(request).ok()?;
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    parse_response(&buf).map(|(r, _)| r)
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

// ---------------------------------------------------------------------------------------------
// CLI runs
// ---------------------------------------------------------------------------------------------

pub struct CmdOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Non-empty stderr lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

impl std::fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit={:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the binary with `args` (killed after 30 s; exit 124 then).
pub fn run_cli(args: &[&str]) -> CmdOutput {
    run_cli_in(None, args)
}

pub fn run_cli_in(dir: Option<&Path>, args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new("timeout");
    cmd.arg("30").arg(BIN).args(args).stdin(Stdio::null());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd.output().expect("run portcullis");
    CmdOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every `FILE:LINE:COL: message` in `output` whose FILE ends with `file_name`, as
/// `(line, col, message)`.
pub fn error_locations(output: &str, file_name: &str) -> Vec<(u32, u32, String)> {
    let needle = format!("{file_name}:");
    let mut found = Vec::new();
    for line in output.lines() {
        let mut rest = line;
        while let Some(pos) = rest.find(&needle) {
            let after = &rest[pos + needle.len()..];
            if let Some(loc) = parse_line_col(after) {
                found.push(loc);
            }
            rest = after;
        }
    }
    found
}

fn parse_line_col(s: &str) -> Option<(u32, u32, String)> {
    let (line, rest) = s.split_once(':')?;
    let (col, msg) = rest.split_once(':')?;
    let line = line.parse().ok()?;
    let col = col.parse().ok()?;
    Some((line, col, msg.trim().to_string()))
}

/// 1-based number of the first line of `text` containing `needle`.
pub fn line_of(text: &str, needle: &str) -> u32 {
    let idx = text
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    u32::try_from(idx + 1).expect("line number")
}

// ---------------------------------------------------------------------------------------------
// Raw TLS client
// ---------------------------------------------------------------------------------------------

/// A rustls client config trusting only `ca` (ring provider, TLS 1.2 + 1.3).
pub fn tls_client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let pem = fs::read(ca).expect("read ca.crt");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert.expect("CA PEM")).expect("add CA root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub struct RawConn {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    /// Bytes read so far.
    pub buf: Vec<u8>,
    /// The server closed the connection (EOF, reset or TLS close).
    pub closed: bool,
}

/// What a raw exchange returned.
#[derive(Debug)]
pub struct RawReply {
    pub bytes: Vec<u8>,
    pub closed: bool,
}

impl RawReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    pub fn responses(&self) -> Vec<Response> {
        parse_responses(&self.bytes)
    }

    /// The one response in the stream; panics (with the raw bytes) otherwise.
    pub fn single(&self) -> Response {
        let all = self.responses();
        assert_eq!(
            all.len(),
            1,
            "expected exactly one HTTP response, got {}:\n{}",
            all.len(),
            self.text()
        );
        all.into_iter().next().expect("one response")
    }
}

impl RawConn {
    pub async fn connect(
        port: u16,
        ca: &Path,
        sni: &str,
        alpn: &[&[u8]],
    ) -> std::io::Result<RawConn> {
        let connector = tokio_rustls::TlsConnector::from(tls_client_config(ca, alpn));
        let name = rustls::pki_types::ServerName::try_from(sni.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "tcp connect"))??;
        let stream = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "tls handshake"))??;
        Ok(RawConn {
            stream,
            buf: Vec::new(),
            closed: false,
        })
    }

    /// The TLS stream itself, for a test that reads and writes at once.
    pub fn into_stream(self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        self.stream
    }

    /// Which ALPN protocol the server chose.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.stream.get_ref().1.alpn_protocol().map(|p| p.to_vec())
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        // A server that already answered and closed may reset the write; what it sent is
        // still read afterwards.
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// Reads until `done(buf)` holds, the server closes, or `timeout` passes; returns
    /// whether `done` held.
    pub async fn read_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[u8]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut chunk = [0u8; 16 * 1024];
        while !done(&self.buf) {
            if self.closed {
                return false;
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    }

    /// Reads one complete response (consumed from `buf`).
    pub async fn read_response(&mut self, timeout: Duration) -> Option<Response> {
        self.read_until(timeout, |b| parse_response_strict(b).is_some())
            .await;
        let (resp, used) = parse_response_strict(&self.buf).or_else(|| {
            // A close-delimited body is complete only at EOF.
            if self.closed {
                parse_response(&self.buf)
            } else {
                None
            }
        })?;
        self.buf.drain(..used);
        Some(resp)
    }

    /// Reads until the server closes or `timeout` passes.
    pub async fn read_to_close(mut self, timeout: Duration) -> RawReply {
        self.read_until(timeout, |_| false).await;
        RawReply {
            bytes: self.buf,
            closed: self.closed,
        }
    }
}

/// A WebSocket upgrade request (RFC 6455 §4.1) for `/ws` on `host`.
pub fn websocket_upgrade(host: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Builds an HTTP/1.1 request with `Host`, `Connection: close` (unless `extra` names a
/// `Connection` header), the `extra` header lines and a body with `Content-Length` if
/// non-empty.
pub fn request_bytes(
    method: &str,
    target: &str,
    host: &str,
    extra: &[&str],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    if !extra
        .iter()
        .any(|l| l.to_ascii_lowercase().starts_with("connection:"))
    {
        head.push_str("Connection: close\r\n");
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The header that makes the gateway answer an unauthenticated request with 401 JSON (API
/// client) rather than a browser redirect to the login page.
pub const ACCEPT_JSON: &str = "Accept: application/json";

/// Whether `resp` is how a browser without a session must be turned away from a protected
/// route: a 401 page (before login existed, issue 2) or a 302 to the same host's login page
/// (DESIGN: "Unauthenticated browser requests get 302 to login with a same-host return_to").
pub fn is_browser_login_challenge(resp_status: u16, location: Option<&str>, host: &str) -> bool {
    match resp_status {
        401 => true,
        302 => location.is_some_and(|l| {
            l.starts_with("/.auth/login")
                || l.strip_prefix("https://")
                    .and_then(|rest| rest.strip_prefix(host))
                    .is_some_and(|rest| {
                        let rest =
                            rest.trim_start_matches(|c: char| c == ':' || c.is_ascii_digit());
                        rest.starts_with("/.auth/login")
                    })
        }),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 response parsing
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The echo backend's report, if this is one.
    pub fn echo(&self) -> Option<Echo> {
        parse_echo(&self.body)
    }

    /// The echo backend's report; panics with the response otherwise.
    pub fn expect_echo(&self) -> Echo {
        self.echo().unwrap_or_else(|| {
            panic!(
                "expected the echo backend's JSON, got {} {:?}\n{}",
                self.status,
                self.headers,
                self.text()
            )
        })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses the first response in `buf`. A body without framing runs to the end of `buf`.
pub fn parse_response(buf: &[u8]) -> Option<(Response, usize)> {
    parse_response_inner(buf, true)
}

/// Like [`parse_response`] but `None` for a close-delimited body (its end is unknown).
pub fn parse_response_strict(buf: &[u8]) -> Option<(Response, usize)> {
    parse_response_inner(buf, false)
}

fn parse_response_inner(buf: &[u8], eof: bool) -> Option<(Response, usize)> {
    let head_end = find(buf, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next()?.to_string();
    if !version.starts_with("HTTP/") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut resp = Response {
        version,
        status,
        headers,
        body: Vec::new(),
    };
    let body_start = head_end + 4;
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Some((resp, body_start));
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let (body, used) = decode_chunked(&buf[body_start..])?;
        resp.body = body;
        return Some((resp, body_start + used));
    }
    if let Some(cl) = resp.header("content-length") {
        let n: usize = cl.parse().ok()?;
        if buf.len() < body_start + n {
            return None;
        }
        resp.body = buf[body_start..body_start + n].to_vec();
        return Some((resp, body_start + n));
    }
    if !eof {
        return None;
    }
    resp.body = buf[body_start..].to_vec();
    Some((resp, buf.len()))
}

fn decode_chunked(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let line_end = pos + find(&buf[pos..], b"\r\n")?;
        let line = std::str::from_utf8(&buf[pos..line_end]).ok()?;
        let size_hex = line.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let end = pos + find(&buf[pos..], b"\r\n")?;
                let empty = end == pos;
                pos = end + 2;
                if empty {
                    return Some((body, pos));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return None;
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

/// Every complete response in `buf`, in order.
pub fn parse_responses(buf: &[u8]) -> Vec<Response> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        match parse_response(&buf[pos..]) {
            Some((resp, used)) if used > 0 => {
                let upgraded = resp.status == 101;
                out.push(resp);
                pos += used;
                if upgraded {
                    break;
                }
            }
            _ => break,
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Echo backend reports
// ---------------------------------------------------------------------------------------------

/// What the echo backend received.
#[derive(Clone, Debug)]
pub struct Echo {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
}

impl Echo {
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of `name`, asserting it was received exactly once.
    pub fn header_once(&self, name: &str) -> &str {
        let all = self.header_all(name);
        assert_eq!(
            all.len(),
            1,
            "backend should receive exactly one {name}, got {all:?}; all headers: {:?}",
            self.headers
        );
        all[0]
    }

    /// Header names normalized the way the gateway must compare them: lowercase, `_` → `-`.
    pub fn normalized_names(&self) -> Vec<String> {
        self.headers
            .iter()
            .map(|(n, _)| n.to_ascii_lowercase().replace('_', "-"))
            .collect()
    }
}

pub fn parse_echo(body: &[u8]) -> Option<Echo> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let headers = v
        .get("headers")?
        .as_array()?
        .iter()
        .filter_map(|pair| {
            let pair = pair.as_array()?;
            Some((
                pair.first()?.as_str()?.to_string(),
                pair.get(1)?.as_str()?.to_string(),
            ))
        })
        .collect();
    Some(Echo {
        method: v.get("method")?.as_str()?.to_string(),
        path: v.get("path")?.as_str()?.to_string(),
        headers,
        body_len: v.get("body_len")?.as_u64()?,
    })
}

// ---------------------------------------------------------------------------------------------
// openssl s_client output
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct Handshake {
    /// A cipher was agreed (`New, …, Cipher is X` with X not `(NONE)`).
    pub established: bool,
    /// `Protocol  : TLSv1.x` from the session block.
    pub protocol: String,
    pub cipher: String,
    pub alpn: Option<String>,
    pub output: String,
}

impl Handshake {
    fn parse(output: String) -> Handshake {
        let mut cipher = String::from("(NONE)");
        // `New, <version>, Cipher is X` names the version the suite was defined in (TLSv1.0
        // for SHA-1 CBC suites); the session block names the negotiated one but is printed
        // for TLS 1.3 only once a ticket arrived. Prefer the session block.
        let mut suite_version = String::new();
        let mut session_version = None;
        let mut alpn = None;
        for line in output.lines() {
            let t = line.trim();
            if t.starts_with("New, ") || t.starts_with("Reused, ") {
                let mut parts = t.splitn(3, ", ");
                parts.next();
                if let Some(v) = parts.next() {
                    suite_version = v.trim().to_string();
                }
                if let Some((_, c)) = t.split_once("Cipher is ") {
                    cipher = c.trim().to_string();
                }
            } else if let Some(p) = t.strip_prefix("Protocol  :") {
                session_version = Some(p.trim().to_string());
            } else if let Some(p) = t.strip_prefix("ALPN protocol:") {
                alpn = Some(p.trim().to_string());
            }
        }
        Handshake {
            established: cipher != "(NONE)",
            protocol: session_version.unwrap_or(suite_version),
            cipher,
            alpn,
            output,
        }
    }

    /// The client itself refused to offer what was asked (so a failed handshake would prove
    /// nothing about the server).
    pub fn refused_by_client(&self) -> bool {
        let o = self.output.to_ascii_lowercase();
        o.contains("no protocols available")
            || o.contains("no ciphers available")
            || o.contains("no cipher match")
            || o.contains("ssl_conf_cmd")
            || o.contains("unsupported protocol")
    }

    /// The server's certificate chain verified against our CA (and hostname, if asked).
    pub fn verified(&self) -> bool {
        self.output.contains("Verify return code: 0 (ok)")
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let Some(close) = line.rfind('}') else {
                    continue;
                };
                (
                    &line[..open],
                    parse_labels(&line[open + 1..close]),
                    &line[close + 1..],
                )
            }
            None => match line.split_once(' ') {
                Some((n, r)) => (n, Vec::new(), r),
                None => continue,
            },
        };
        let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse().ok()) else {
            continue;
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let name = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        let Some(after) = after.strip_prefix('"') else {
            break;
        };
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((name, value));
        rest = &after[end..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Accounts and sign-in (issue 3)
// ---------------------------------------------------------------------------------------------

/// The session cookie.
pub const SESSION_COOKIE: &str = "__Host-portcullis";
/// The pre-login double-submit CSRF cookie of the sign-in form.
pub const LOGIN_CSRF_COOKIE: &str = "__Host-portcullis-csrf";

impl Response {
    /// The body as JSON; panics (with the response) otherwise.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected JSON ({e}), got {} {:?}\n{}",
                self.status,
                self.headers,
                self.text()
            )
        })
    }

    pub fn location(&self) -> Option<&str> {
        self.header("location")
    }

    /// The `Set-Cookie` line that sets cookie `name` (exact name), if any.
    pub fn set_cookie(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}=");
        self.header_all("set-cookie")
            .into_iter()
            .find(|c| c.starts_with(&prefix))
    }

    /// The value a `Set-Cookie` gives cookie `name` (empty when it clears it).
    pub fn set_cookie_value(&self, name: &str) -> Option<String> {
        let line = self.set_cookie(name)?;
        let pair = line.split(';').next()?;
        Some(pair[name.len() + 1..].trim().to_string())
    }
}

/// The attributes of a `Set-Cookie` line after the name/value pair, trimmed.
pub fn cookie_attributes(set_cookie: &str) -> Vec<String> {
    set_cookie
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect()
}

/// Whether a `Set-Cookie` line deletes its cookie (empty value, `Max-Age=0` or an `Expires`
/// in the past, which the gateway never writes).
pub fn cookie_is_cleared(set_cookie: &str) -> bool {
    let value_empty = set_cookie
        .split(';')
        .next()
        .and_then(|pair| pair.split_once('='))
        .is_some_and(|(_, v)| v.trim().is_empty());
    value_empty
        || cookie_attributes(set_cookie)
            .iter()
            .any(|a| a.eq_ignore_ascii_case("max-age=0"))
}

/// The `value` of the first `<input … name="NAME" value="…">` in an HTML page, unescaped.
pub fn form_field(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let tag_start = html[..at].rfind('<')?;
    let tag_end = at + html[at..].find('>')?;
    let tag = &html[tag_start..tag_end];
    let v = tag.find("value=\"")? + "value=\"".len();
    let end = v + tag[v..].find('"')?;
    Some(html_unescape(&tag[v..end]))
}

fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// `application/x-www-form-urlencoded` of `fields`.
pub fn form_body(fields: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Percent-encodes `value` for a query string.
pub fn query_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Sends a reqwest request and reads the whole answer into a [`Response`].
pub async fn fetch(req: reqwest::RequestBuilder) -> Response {
    let resp = req.send().await.expect("send request to the gateway");
    let status = resp.status().as_u16();
    let version = format!("{:?}", resp.version());
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp.bytes().await.expect("read response body").to_vec();
    Response {
        version,
        status,
        headers,
        body,
    }
}

impl Gateway {
    /// Runs `portcullis user --config <this site> ARGS` with `stdin` on standard input
    /// (killed after 30 s).
    pub fn user_cli(&self, args: &[&str], stdin: &str) -> CmdOutput {
        let mut child = Command::new("timeout")
            .arg("30")
            .arg(BIN)
            .arg("user")
            .arg("--config")
            .arg(self.site.config_path())
            .args(args)
            .current_dir(self.site.root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run portcullis user");
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin.as_bytes());
        }
        let out = child.wait_with_output().expect("wait for portcullis user");
        CmdOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `portcullis user add --tenant TENANT NAME --role R… --password-stdin`; panics on failure.
    pub fn add_user(&self, tenant: &str, name: &str, password: &str, roles: &[&str]) {
        let mut args = vec!["add", "--tenant", tenant, name];
        for role in roles {
            args.push("--role");
            args.push(role);
        }
        args.push("--password-stdin");
        let out = self.user_cli(&args, &format!("{password}\n"));
        assert_eq!(
            out.code,
            Some(0),
            "portcullis user add {tenant}/{name}:\n{out}"
        );
    }

    /// `portcullis user passwd --tenant TENANT NAME --password-stdin`; panics on failure.
    pub fn set_password(&self, tenant: &str, name: &str, password: &str) {
        let out = self.user_cli(
            &["passwd", "--tenant", tenant, name, "--password-stdin"],
            &format!("{password}\n"),
        );
        assert_eq!(
            out.code,
            Some(0),
            "portcullis user passwd {tenant}/{name}:\n{out}"
        );
    }

    /// `portcullis user disable --tenant TENANT NAME`; panics on failure.
    pub fn disable_user(&self, tenant: &str, name: &str) {
        let out = self.user_cli(&["disable", "--tenant", tenant, name], "");
        assert_eq!(
            out.code,
            Some(0),
            "portcullis user disable {tenant}/{name}:\n{out}"
        );
    }

    /// `https://<host>:<port>`, the origin a browser sends for this gateway's pages.
    pub fn origin(&self, host: &str) -> String {
        format!("https://{host}:{}", self.site.ports.https)
    }

    /// A cookie-keeping browser for `host`.
    pub fn browser(&self, host: &str) -> Browser {
        Browser {
            client: self.client(),
            host: host.to_string(),
            origin: self.origin(host),
            jar: Vec::new(),
        }
    }

    /// JSON sign-in; returns the session cookie's value (panics unless 200 with one).
    pub async fn login(&self, host: &str, user: &str, password: &str) -> String {
        let resp = self.login_json(host, user, password, None).await;
        assert_eq!(
            resp.status,
            200,
            "JSON login of {user}@{host}: {:?}\n{}",
            resp.headers,
            resp.text()
        );
        resp.set_cookie_value(SESSION_COOKIE)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| panic!("login of {user}@{host} set no session cookie"))
    }

    /// `POST /.auth/login` with a JSON body, optionally presenting a session cookie.
    pub async fn login_json(
        &self,
        host: &str,
        user: &str,
        password: &str,
        session: Option<&str>,
    ) -> Response {
        let body = serde_json::json!({ "username": user, "password": password });
        let mut req = self
            .client()
            .post(self.url(host, "/.auth/login"))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(body.to_string());
        if let Some(token) = session {
            req = req.header("cookie", format!("{SESSION_COOKIE}={token}"));
        }
        fetch(req).await
    }

    /// `GET path` on `host` with the session cookie (if any) and extra headers.
    pub async fn get_as(
        &self,
        host: &str,
        path: &str,
        session: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Response {
        let mut req = self.client().get(self.url(host, path));
        if let Some(token) = session {
            req = req.header("cookie", format!("{SESSION_COOKIE}={token}"));
        }
        for (n, v) in extra {
            req = req.header(*n, *v);
        }
        fetch(req).await
    }

    /// `GET /.auth/whoami` with the session cookie.
    pub async fn whoami(&self, host: &str, session: &str) -> Response {
        self.get_as(
            host,
            "/.auth/whoami",
            Some(session),
            &[("accept", "application/json")],
        )
        .await
    }

    /// Polls (bounded by `timeout`) until `session` is no session on `host` (whoami 401);
    /// returns whether it happened.
    pub async fn wait_session_ended(&self, host: &str, session: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.whoami(host, session).await.status == 401 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A browser for one host: keeps cookies from `Set-Cookie` and sends them back, sends
/// `Accept: text/html` and, on its own form posts, the `Origin` and `Sec-Fetch-Site` a
/// browser sends.
pub struct Browser {
    pub client: reqwest::Client,
    pub host: String,
    pub origin: String,
    /// Cookies as (name, value), in the order they were set.
    pub jar: Vec<(String, String)>,
}

impl Browser {
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.jar
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn session(&self) -> Option<&str> {
        self.cookie(SESSION_COOKIE)
    }

    pub fn set_cookie(&mut self, name: &str, value: &str) {
        self.remove_cookie(name);
        self.jar.push((name.to_string(), value.to_string()));
    }

    pub fn remove_cookie(&mut self, name: &str) {
        self.jar.retain(|(n, _)| n != name);
    }

    fn cookie_header(&self) -> Option<String> {
        (!self.jar.is_empty()).then(|| {
            self.jar
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn absorb(&mut self, resp: &Response) {
        for line in resp.header_all("set-cookie") {
            let Some((name, value)) = line.split(';').next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            if cookie_is_cleared(line) {
                self.remove_cookie(name.trim());
            } else {
                self.set_cookie(name.trim(), value.trim());
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    /// Sends `req` with the jar's cookies and `headers`, and keeps the cookies it sets.
    pub async fn send(
        &mut self,
        mut req: reqwest::RequestBuilder,
        headers: &[(&str, &str)],
    ) -> Response {
        if let Some(cookies) = self.cookie_header() {
            req = req.header("cookie", cookies);
        }
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("accept"))
        {
            req = req.header("accept", "text/html,application/xhtml+xml");
        }
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let resp = fetch(req).await;
        self.absorb(&resp);
        resp
    }

    pub async fn get(&mut self, path: &str) -> Response {
        self.get_with(path, &[]).await
    }

    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Response {
        let req = self.client.get(self.url(path));
        self.send(req, headers).await
    }

    /// A POST with exactly the given content type, body and headers (no fetch metadata
    /// added: CSRF tests choose their own).
    pub async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        body: String,
        headers: &[(&str, &str)],
    ) -> Response {
        let req = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body);
        self.send(req, headers).await
    }

    /// What a browser posts from one of this host's own forms.
    pub async fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> Response {
        let origin = self.origin.clone();
        self.post(
            path,
            "application/x-www-form-urlencoded",
            form_body(fields),
            &[("origin", &origin), ("sec-fetch-site", "same-origin")],
        )
        .await
    }

    /// Opens the sign-in form for `return_to` and submits it; returns the POST's answer.
    pub async fn login(&mut self, user: &str, password: &str, return_to: &str) -> Response {
        let page = self
            .get(&format!(
                "/.auth/login?return_to={}",
                query_encode(return_to)
            ))
            .await;
        assert_eq!(page.status, 200, "sign-in form: {}", page.text());
        let html = page.text();
        let csrf = form_field(&html, "csrf").expect("csrf field in the sign-in form");
        let back = form_field(&html, "return_to").unwrap_or_default();
        self.post_form(
            "/.auth/login",
            &[
                ("username", user),
                ("password", password),
                ("csrf", &csrf),
                ("return_to", &back),
            ],
        )
        .await
    }
}
