//! Configuration: `portcullis.toml` and `policies/<tenant>.toml`.
//!
//! The serde structs mirror the files exactly (`deny_unknown_fields`) and are converted into a
//! separate validated model ([`Config`]). Validation goes on after the first problem, so an
//! operator sees every error at once, each with its file, line and column. Every key of
//! `portcullis.toml` is optional with a safe default.

mod error;
mod policy;
mod saml;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

pub use error::{ConfigError, ConfigErrors};
pub use policy::{
    Access, MfaPolicy, RequestRate, Route, SessionPolicy, Tenant, Upstream,
    DEFAULT_AUDIT_RETENTION_DAYS,
};
pub use saml::{check_metadata_url, LoginPolicy, MetadataSource, SamlPolicy};

use error::Reporter;

use crate::store::StoreUrl;

/// The validated configuration: what the gateway runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file this was read from.
    pub path: PathBuf,
    /// Listeners and process settings.
    pub server: Server,
    /// The operator listener.
    pub admin: Admin,
    /// Certificates by host.
    pub certificates: Vec<Certificate>,
    /// Proxying limits and trust.
    pub proxy: Proxy,
    /// Key files.
    pub keys: Keys,
    /// Brute-force and request limits.
    pub ratelimit: RateLimit,
    /// Every tenant, from `policies/`.
    pub tenants: Vec<Tenant>,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// The TLS data-plane listener.
    pub https_listen: SocketAddr,
    /// The optional plain-HTTP listener that only redirects to HTTPS.
    pub http_redirect_listen: Option<SocketAddr>,
    /// The HTTPS port named in redirects (differs from the listener's behind port mapping).
    pub https_public_port: u16,
    /// Data-plane worker threads.
    pub threads: usize,
    /// Folder of tenant policy files.
    pub policies_dir: PathBuf,
    /// Folder for the embedded store.
    pub data_dir: PathBuf,
    /// Store location, e.g. `sqlite:/var/lib/portcullis/portcullis.db`.
    pub store: StoreUrl,
    /// `Strict-Transport-Security` max-age in seconds.
    pub hsts_max_age: u64,
    /// How often files are checked for changes; zero turns watching off (SIGHUP still works).
    pub reload_poll: Duration,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Where the operator listener binds. Loopback by default: it is not for the internet.
    pub listen: SocketAddr,
    /// The operator API bearer token (made by `portcullis keygen`, mode 0600). Without it
    /// the `/v1/…` operator API is off.
    pub token_file: PathBuf,
}

/// One `[[tls.certificates]]` entry, loaded.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// Hosts (SNI names) this certificate serves.
    pub hosts: Vec<String>,
    /// The PEM chain file.
    pub cert_path: PathBuf,
    /// The PEM private-key file.
    pub key_path: PathBuf,
    /// The loaded chain and key, checked to match.
    pub key: Arc<rustls::sign::CertifiedKey>,
}

/// `[keys]`: made by `portcullis keygen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The data-encryption key (AES-256-GCM) for every secret kept at rest.
    pub master_key: PathBuf,
    /// The upstream-JWT signing keys, sealed under the master key.
    pub jwt_keys: PathBuf,
    /// How long a rotated-out signing key stays published in the JWKS.
    pub jwt_grace: Duration,
    /// Lifetime of an upstream JWT.
    pub jwt_ttl: Duration,
}

/// Where login budgets are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimiterStore {
    /// In this process (one gateway instance).
    Memory,
    /// In Redis, shared by every instance (the URL may hold a password: never print it).
    Redis(String),
}

/// `[ratelimit]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Where login budgets live.
    pub login_store: LimiterStore,
    /// Per-IP login attempts available at once.
    pub login_ip_burst: std::num::NonZeroU32,
    /// Time for one per-IP login attempt to come back.
    pub login_ip_refill: Duration,
    /// New TLS connections per second per client IP, before the handshake (0: no limit).
    pub connections_per_ip_per_second: u32,
    /// Connection burst per client IP.
    pub connection_burst: u32,
}

/// `[proxy]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Peers whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Upstream TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Upstream read timeout (504 when it passes).
    pub read_timeout: Duration,
    /// Upstream write timeout.
    pub write_timeout: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub idle_timeout: Duration,
    /// How long one write of a response may wait for the client to take it in: a client
    /// that stops reading is disconnected after it (as nginx's `send_timeout`).
    pub client_send_timeout: Duration,
    /// How long a client may take to send a whole request header on the connection loop,
    /// from its first byte (as nginx's `client_header_timeout`): a client that trickles it
    /// is disconnected after it.
    pub client_header_timeout: Duration,
    /// How long a client connection may stay idle: between requests on HTTP/1, with no stream
    /// open on HTTP/2 (as nginx's `keepalive_timeout`). Fixed at start-up.
    pub client_idle_timeout: Duration,
    /// How long a client may take to send a request body: at most this between two reads
    /// (as nginx's `client_body_timeout`), and the whole body within this plus one second
    /// for every [`Proxy::client_body_min_rate`] bytes it sent (as Apache's
    /// `RequestReadTimeout body=…,MinRate=…`). A client that falls behind gets 408.
    pub client_body_timeout: Duration,
    /// The average rate, in bytes per second, a request body must keep up past its first
    /// [`Proxy::client_body_timeout`]; 0 leaves only the limit between reads.
    pub client_body_min_rate: u64,
    /// Largest request body let through (413 above).
    pub max_body_bytes: u64,
    /// Largest request header block let through (431 above).
    pub max_header_bytes: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: RawServer,
    admin: RawAdmin,
    tls: RawTls,
    proxy: RawProxy,
    keys: RawKeys,
    ratelimit: RawRateLimit,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRateLimit {
    login_store: Option<Spanned<String>>,
    login_ip_burst: Option<Spanned<u32>>,
    login_ip_refill_secs: Option<Spanned<u64>>,
    connections_per_ip_per_second: Option<u32>,
    connection_burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawKeys {
    master_key: Option<String>,
    jwt_keys: Option<String>,
    jwt_grace_secs: Option<u64>,
    jwt_ttl_secs: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    https_listen: Option<Spanned<String>>,
    http_redirect_listen: Option<Spanned<String>>,
    https_public_port: Option<Spanned<u16>>,
    threads: Option<Spanned<usize>>,
    policies_dir: Option<String>,
    data_dir: Option<String>,
    store: Option<Spanned<String>>,
    hsts_max_age: Option<u64>,
    reload_poll_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
    token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    certificates: Vec<Spanned<RawCertificate>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    hosts: Vec<Spanned<String>>,
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProxy {
    trusted_proxies: Vec<Spanned<String>>,
    connect_timeout_ms: Option<Spanned<u64>>,
    read_timeout_ms: Option<Spanned<u64>>,
    write_timeout_ms: Option<Spanned<u64>>,
    idle_timeout_ms: Option<Spanned<u64>>,
    client_send_timeout_ms: Option<Spanned<u64>>,
    client_header_timeout_ms: Option<Spanned<u64>>,
    client_idle_timeout_ms: Option<Spanned<u64>>,
    client_body_timeout_ms: Option<Spanned<u64>>,
    client_body_min_rate: Option<Spanned<u64>>,
    max_body_bytes: Option<u64>,
    max_header_bytes: Option<Spanned<usize>>,
}

/// One year, the value HSTS preload lists ask for.
const DEFAULT_HSTS_MAX_AGE: u64 = 31_536_000;
/// pingora's own parser refuses header blocks above this, so a larger cap would be a lie.
const MAX_HEADER_BYTES_LIMIT: usize = 65_536;

/// The request body's default minimum rate past its first `client_body_timeout_ms`, in bytes
/// per second: Apache's default `MinRate`, far below any real upload and far above a
/// trickle meant to hold a connection.
const DEFAULT_BODY_MIN_RATE: u64 = 500;
/// The largest `client_body_min_rate` taken: 1 GiB/s, past which it is most likely a typo.
const MAX_BODY_MIN_RATE: u64 = 1 << 30;

/// The longest timeout in `[proxy]`, in milliseconds: one day.
const MAX_TIMEOUT_MS: u64 = 86_400_000;

impl Config {
    /// Read and validate the config file and every policy it points at. Relative paths in
    /// the file are relative to the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        match std::fs::read_to_string(path) {
            Ok(src) => Self::parse(&src, path, path.parent().unwrap_or(Path::new("."))),
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                at: None,
                message: format!("cannot read config file: {e}"),
            }])),
        }
    }

    /// Validate config text that names itself `path` in errors, with relative paths taken
    /// from `base` (used for the embedded demo config).
    pub fn parse(src: &str, path: &Path, base: &Path) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let base = base.to_path_buf();
        let mut rep = Reporter::new(path, src, &mut errors);
        let raw: RawConfig = match toml::from_str(src) {
            Ok(raw) => raw,
            Err(e) => {
                rep.toml(&e);
                return Err(ConfigErrors(errors));
            }
        };
        let server = server(raw.server, &base, &mut rep);
        let admin = Admin {
            listen: socket_addr(raw.admin.listen.as_ref(), "127.0.0.1:9090", &mut rep),
            token_file: match &raw.admin.token_file {
                Some(p) => join(&base, p),
                None => server.data_dir.join("keys").join("admin.token"),
            },
        };
        let proxy = proxy(raw.proxy, &mut rep);
        let keys = keys(raw.keys, &base, &server.data_dir, &mut rep);
        let ratelimit = ratelimit(raw.ratelimit, &mut rep);
        let certificates = certificates(raw.tls.certificates, &base, &mut rep);

        let tenants = policy::load_dir(&server.policies_dir, &mut errors);
        check_hosts_have_certificates(path, &tenants, &certificates, &mut errors);

        if errors.is_empty() {
            Ok(Config {
                path: path.to_path_buf(),
                server,
                admin,
                certificates,
                proxy,
                keys,
                ratelimit,
                tenants,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Every file whose content this configuration depends on, for change detection.
    pub fn source_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        files.extend(self.tenants.iter().map(|t| t.source.clone()));
        for t in &self.tenants {
            if let Some(crate::config::SamlPolicy {
                metadata:
                    MetadataSource::File { path, .. }
                    | MetadataSource::Url {
                        ca_file: Some(path),
                        ..
                    },
                ..
            }) = &t.saml
            {
                files.push(path.clone());
            }
        }
        for c in &self.certificates {
            files.push(c.cert_path.clone());
            files.push(c.key_path.clone());
        }
        files.push(self.keys.jwt_keys.clone());
        files
    }
}

fn server(raw: RawServer, base: &Path, rep: &mut Reporter<'_>) -> Server {
    let https_listen = socket_addr(raw.https_listen.as_ref(), "0.0.0.0:8443", rep);
    let http_redirect_listen = raw
        .http_redirect_listen
        .as_ref()
        .map(|s| socket_addr(Some(s), "0.0.0.0:8080", rep));
    let https_public_port = match raw.https_public_port {
        Some(p) if *p.get_ref() == 0 => {
            rep.at(p.span(), "https_public_port must be between 1 and 65535");
            https_listen.port()
        }
        Some(p) => p.into_inner(),
        None => https_listen.port(),
    };
    let threads = match raw.threads {
        Some(t) if !(1..=256).contains(t.get_ref()) => {
            rep.at(t.span(), "threads must be between 1 and 256");
            1
        }
        Some(t) => t.into_inner(),
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let policies_dir = join(base, raw.policies_dir.as_deref().unwrap_or("policies"));
    let data_dir = join(base, raw.data_dir.as_deref().unwrap_or("data"));
    let default_store = StoreUrl::Sqlite(data_dir.join("portcullis.db"));
    let store = match raw.store {
        Some(s) => match StoreUrl::parse(s.get_ref()) {
            Ok(url) => url.resolved_against(base),
            Err(e) => {
                rep.at(s.span(), e.to_string());
                default_store
            }
        },
        None => default_store,
    };
    Server {
        https_listen,
        http_redirect_listen,
        https_public_port,
        threads,
        policies_dir,
        data_dir,
        store,
        hsts_max_age: raw.hsts_max_age.unwrap_or(DEFAULT_HSTS_MAX_AGE),
        reload_poll: Duration::from_millis(raw.reload_poll_ms.unwrap_or(1000)),
    }
}

fn socket_addr(raw: Option<&Spanned<String>>, default: &str, rep: &mut Reporter<'_>) -> SocketAddr {
    let fallback = SocketAddr::from(([127, 0, 0, 1], 0));
    match raw {
        Some(s) => s.get_ref().parse().unwrap_or_else(|_| {
            rep.at(
                s.span(),
                format!(
                    "`{}` is not an IP:port address (e.g. 0.0.0.0:8443)",
                    s.get_ref()
                ),
            );
            fallback
        }),
        None => default.parse().unwrap_or(fallback),
    }
}

fn proxy(raw: RawProxy, rep: &mut Reporter<'_>) -> Proxy {
    let mut trusted_proxies = Vec::new();
    for cidr in &raw.trusted_proxies {
        let text = cidr.get_ref();
        // A bare address means that one host.
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => rep.at(
                cidr.span(),
                format!("`{text}` is not a CIDR (e.g. 10.0.0.0/8)"),
            ),
        }
    }
    let mut millis = |v: &Option<Spanned<u64>>, default: u64, name: &str| match v {
        Some(ms) if *ms.get_ref() == 0 => {
            rep.at(ms.span(), format!("{name} must be greater than 0"));
            Duration::from_millis(default)
        }
        // Past a day no timeout is a sensible limit: most likely a typo.
        Some(ms) if *ms.get_ref() > MAX_TIMEOUT_MS => {
            rep.at(
                ms.span(),
                format!("{name} must be at most {MAX_TIMEOUT_MS} (one day)"),
            );
            Duration::from_millis(default)
        }
        Some(ms) => Duration::from_millis(*ms.get_ref()),
        None => Duration::from_millis(default),
    };
    let connect_timeout = millis(&raw.connect_timeout_ms, 3_000, "connect_timeout_ms");
    let read_timeout = millis(&raw.read_timeout_ms, 30_000, "read_timeout_ms");
    let write_timeout = millis(&raw.write_timeout_ms, 30_000, "write_timeout_ms");
    let idle_timeout = millis(&raw.idle_timeout_ms, 60_000, "idle_timeout_ms");
    let client_send_timeout = millis(
        &raw.client_send_timeout_ms,
        60_000,
        "client_send_timeout_ms",
    );
    let client_header_timeout = millis(
        &raw.client_header_timeout_ms,
        60_000,
        "client_header_timeout_ms",
    );
    let client_idle_timeout = millis(
        &raw.client_idle_timeout_ms,
        60_000,
        "client_idle_timeout_ms",
    );
    let client_body_timeout = millis(
        &raw.client_body_timeout_ms,
        60_000,
        "client_body_timeout_ms",
    );
    let client_body_min_rate = match &raw.client_body_min_rate {
        Some(rate) if *rate.get_ref() > MAX_BODY_MIN_RATE => {
            rep.at(
                rate.span(),
                format!(
                    "client_body_min_rate must be at most {MAX_BODY_MIN_RATE} (bytes per second)"
                ),
            );
            DEFAULT_BODY_MIN_RATE
        }
        Some(rate) => *rate.get_ref(),
        None => DEFAULT_BODY_MIN_RATE,
    };
    let max_header_bytes = match raw.max_header_bytes {
        Some(n) if !(1024..=MAX_HEADER_BYTES_LIMIT).contains(n.get_ref()) => {
            rep.at(
                n.span(),
                format!("max_header_bytes must be between 1024 and {MAX_HEADER_BYTES_LIMIT}"),
            );
            16_384
        }
        Some(n) => n.into_inner(),
        None => 16_384,
    };
    Proxy {
        trusted_proxies,
        connect_timeout,
        read_timeout,
        write_timeout,
        idle_timeout,
        client_send_timeout,
        client_header_timeout,
        client_idle_timeout,
        client_body_timeout,
        client_body_min_rate,
        max_body_bytes: raw.max_body_bytes.unwrap_or(10 * 1024 * 1024),
        max_header_bytes,
    }
}

fn keys(raw: RawKeys, base: &Path, data_dir: &Path, rep: &mut Reporter<'_>) -> Keys {
    let path = |v: Option<String>, default: &str| match v {
        Some(p) => join(base, &p),
        None => data_dir.join("keys").join(default),
    };
    let jwt_ttl = match raw.jwt_ttl_secs {
        Some(t) if !(1..=crate::auth::jwt::MAX_TTL_SECS).contains(t.get_ref()) => {
            rep.at(
                t.span(),
                format!(
                    "jwt_ttl_secs must be between 1 and {}",
                    crate::auth::jwt::MAX_TTL_SECS
                ),
            );
            crate::auth::jwt::MAX_TTL_SECS
        }
        Some(t) => t.into_inner(),
        None => crate::auth::jwt::MAX_TTL_SECS,
    };
    Keys {
        master_key: path(raw.master_key, "master.key"),
        jwt_keys: path(raw.jwt_keys, "jwt-keys.json"),
        // A day: longer than any sensible backend JWKS cache.
        jwt_grace: Duration::from_secs(raw.jwt_grace_secs.unwrap_or(86_400)),
        jwt_ttl: Duration::from_secs(jwt_ttl),
    }
}

fn ratelimit(raw: RawRateLimit, rep: &mut Reporter<'_>) -> RateLimit {
    let login_store = match &raw.login_store {
        None => LimiterStore::Memory,
        Some(s) if s.get_ref() == "memory" => LimiterStore::Memory,
        Some(s) if s.get_ref().starts_with("redis://") => {
            match crate::ratelimit::RedisLimiter::new(s.get_ref()) {
                Ok(_) => LimiterStore::Redis(s.get_ref().clone()),
                Err(e) => {
                    rep.at(s.span(), e.to_string());
                    LimiterStore::Memory
                }
            }
        }
        Some(s) => {
            // Never echo the value: it may be a URL with a password.
            rep.at(
                s.span(),
                "login_store must be \"memory\" or redis://host:port[/db]",
            );
            LimiterStore::Memory
        }
    };
    let defaults = crate::ratelimit::IpBudget::default();
    let login_ip_burst = match &raw.login_ip_burst {
        Some(b) => std::num::NonZeroU32::new(*b.get_ref()).unwrap_or_else(|| {
            rep.at(b.span(), "login_ip_burst must be at least 1");
            defaults.burst
        }),
        None => defaults.burst,
    };
    let login_ip_refill = match &raw.login_ip_refill_secs {
        Some(r) if *r.get_ref() == 0 => {
            rep.at(r.span(), "login_ip_refill_secs must be at least 1");
            defaults.refill
        }
        Some(r) => Duration::from_secs(*r.get_ref()),
        None => defaults.refill,
    };
    RateLimit {
        login_store,
        login_ip_burst,
        login_ip_refill,
        connections_per_ip_per_second: raw.connections_per_ip_per_second.unwrap_or(0),
        connection_burst: raw.connection_burst.unwrap_or(
            raw.connections_per_ip_per_second
                .unwrap_or(0)
                .saturating_mul(2),
        ),
    }
}

fn certificates(
    raw: Vec<Spanned<RawCertificate>>,
    base: &Path,
    rep: &mut Reporter<'_>,
) -> Vec<Certificate> {
    let mut out: Vec<Certificate> = Vec::new();
    for entry in raw {
        let span = entry.span();
        let entry = entry.into_inner();
        let mut hosts = Vec::new();
        for h in &entry.hosts {
            match policy::validate_host(h.get_ref()) {
                Ok(()) if out.iter().any(|c| c.hosts.contains(h.get_ref())) => rep.at(
                    h.span(),
                    format!("host `{}` already has a certificate", h.get_ref()),
                ),
                Ok(()) => hosts.push(h.get_ref().clone()),
                Err(msg) => rep.at(h.span(), msg),
            }
        }
        if entry.hosts.is_empty() {
            rep.at(span.clone(), "a certificate needs at least one host");
        }
        let cert_path = join(base, entry.cert.get_ref());
        let key_path = join(base, entry.key.get_ref());
        match crate::tls::load_certified_key(&cert_path, &key_path) {
            Ok(key) => out.push(Certificate {
                hosts,
                cert_path,
                key_path,
                key,
            }),
            Err(e) => rep.at(entry.cert.span(), e.to_string()),
        }
    }
    out
}

fn check_hosts_have_certificates(
    path: &Path,
    tenants: &[Tenant],
    certificates: &[Certificate],
    errors: &mut Vec<ConfigError>,
) {
    for tenant in tenants {
        for host in &tenant.hosts {
            if !certificates.iter().any(|c| c.hosts.contains(host)) {
                errors.push(ConfigError {
                    file: path.to_path_buf(),
                    at: None,
                    message: format!(
                        "tenant `{}` serves host `{host}` but no [[tls.certificates]] entry lists it",
                        tenant.id
                    ),
                });
            }
        }
    }
}

/// `base` joined with `rel`, with `.` and `..` resolved by name rather than by the file
/// system, so `../policies` works even when `base` does not exist (the embedded demo config).
fn join(base: &Path, rel: &str) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in base.join(rel).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_by_name() {
        assert_eq!(
            join(Path::new("demo"), "../policies"),
            PathBuf::from("policies")
        );
        assert_eq!(
            join(Path::new("/etc/p"), "./certs/a.crt"),
            PathBuf::from("/etc/p/certs/a.crt")
        );
        assert_eq!(join(Path::new("/etc"), "/abs"), PathBuf::from("/abs"));
    }
}
