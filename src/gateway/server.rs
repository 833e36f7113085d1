//! Process start-up: validate everything, put the TLS allowlist in force, then hand the
//! listeners to pingora.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::ConnectionFilter;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::AdminService;
use crate::audit::{AuditSink, DEFAULT_QUEUE_CAPACITY};
use crate::auth::flow::{Auth, AuthParts};
use crate::auth::jwt::{JwtError, Keyring};
use crate::auth::password::Hasher;
use crate::clock::{Clock, SystemClock};
use crate::config::ConfigErrors;
use crate::config::{Config, LimiterStore};
use crate::gateway::front::Front;
use crate::gateway::redirect::RedirectApp;
use crate::gateway::reload::Reloader;
use crate::gateway::retention::Pruner;
use crate::gateway::state::{ConfigSource, Runtime, Shared};
use crate::keys::{KeyError, MasterKey, Sealer};
use crate::metrics::Metrics;
use crate::ratelimit::requests::ConnectionLimit;
use crate::ratelimit::{IpBudget, Limiter, MemoryLimiter, RedisLimiter};
use crate::store;
use crate::tls::{crypto, HandshakeObserver, SniResolver};

/// Why the gateway did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid; every problem is listed.
    #[error("invalid configuration:\n{0}")]
    Config(ConfigErrors),
    /// The TLS allowlist could not be put in force.
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    /// A listener address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open store: {0}")]
    Store(#[from] store::StoreError),
    /// The master key is missing or unusable.
    #[error("master key: {0}")]
    Key(#[from] KeyError),
    /// The upstream-JWT signing keys are missing or unusable.
    #[error("JWT signing keys: {0}")]
    Jwt(#[from] JwtError),
    /// The password hasher could not be set up.
    #[error("password hasher: {0}")]
    Hasher(crate::auth::password::PasswordError),
    /// The login limiter could not be set up.
    #[error("login limiter: {0}")]
    Limiter(String),
    /// The audit writer could not be started.
    #[error("cannot start audit writer: {0}")]
    Audit(std::io::Error),
    /// Metrics could not be registered.
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// TLS listener settings were refused.
    #[error("cannot set up TLS listener: {0}")]
    Tls(String),
}

/// Validate the configuration and run the gateway until the process is told to stop.
pub fn run(source: ConfigSource) -> Result<(), StartError> {
    // The allowlist goes in before anything can build a TLS config from the default.
    crypto::install()?;
    let config = source.load().map_err(StartError::Config)?;

    // Bind-check every listener now so a taken port is one clear line, not a pingora panic.
    let admin_listener = bind(config.admin.listen)?;
    drop(bind(config.server.https_listen)?);
    if let Some(addr) = config.server.http_redirect_listen {
        drop(bind(addr)?);
    }

    let master = MasterKey::load(&config.keys.master_key)?;
    let sealer = Arc::new(Sealer::new(&master));
    let keyring = Keyring::load(&config.keys.jwt_keys, &sealer)?;
    let store = store::open(&config.server.store)?;
    let audit =
        AuditSink::start(store.clone(), DEFAULT_QUEUE_CAPACITY).map_err(StartError::Audit)?;
    // Each argon2id hash holds 19 MiB and a core for tens of milliseconds: at most half the
    // worker threads hash at once, so a sign-in flood can starve neither proxied traffic of
    // CPU nor the host of memory.
    let hasher = Hasher::new((config.server.threads / 2).max(1)).map_err(StartError::Hasher)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metrics = Arc::new(Metrics::new()?);
    let auth = Arc::new(Auth::new(AuthParts {
        store: Arc::clone(&store),
        hasher,
        keyring,
        limiter: limiter(&config)?,
        audit: audit.clone(),
        metrics: Arc::clone(&metrics),
        clock: Arc::clone(&clock),
        sealer: Arc::clone(&sealer),
    }));
    let resolver = Arc::new(SniResolver::default());
    resolver.replace(&config.certificates);
    let shared = Arc::new(Shared {
        runtime: ArcSwap::from_pointee(Runtime::new(config.clone())),
        source,
        resolver: Arc::clone(&resolver),
        metrics: Arc::clone(&metrics),
        audit,
        store,
        auth,
        sealer,
        clock,
    });

    let mut conf = ServerConf {
        threads: config.server.threads,
        // Stop quickly on SIGTERM/SIGINT; in-flight requests get a short grace.
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(5),
        // Each connection stays on the thread that accepted it: no cross-thread wake-ups per
        // request (measured: fewer futex calls, higher throughput on small machines).
        work_stealing: false,
        ..ServerConf::default()
    };
    let data = config.server.data_dir.display().to_string();
    conf.pid_file = format!("{data}/portcullis.pid");
    conf.upgrade_sock = format!("{data}/portcullis-upgrade.sock");
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    // One single-threaded data-plane service per worker, all accepting on the one HTTPS
    // socket (pingora shares a listening socket between services bound to the same address).
    // Each service has its own upstream keep-alive pool, so a pooled connection is handed
    // back and picked up on the thread that uses it: pingora's pool spawns its idle watcher
    // on a random thread of a multi-threaded no-steal runtime, which cost two cross-thread
    // wake-ups per request (measured with strace: eventfd writes, about a fifth of the CPU).
    let rl = &config.ratelimit;
    let connection_limit = match (
        std::num::NonZeroU32::new(rl.connections_per_ip_per_second),
        std::num::NonZeroU32::new(rl.connection_burst.max(rl.connections_per_ip_per_second)),
    ) {
        // One budget per client for the whole gateway, whichever worker accepts.
        (Some(rate), Some(burst)) => Some(Arc::new(ConnectionLimit::new(rate, burst))),
        _ => None,
    };
    for worker in 0..config.server.threads.max(1) {
        let mut proxy = Service::new(
            format!("portcullis data plane {worker}"),
            Front::new(Arc::clone(&shared), &server.configuration),
        );
        proxy.threads = Some(1);
        let mut tls =
            TlsSettings::with_callbacks(Box::new(HandshakeObserver::new(Arc::clone(&metrics))))
                .map_err(|e| StartError::Tls(e.to_string()))?;
        tls.set_cert_resolver(Arc::clone(&resolver) as _);
        tls.enable_h2();
        proxy.add_tls_with_settings(&config.server.https_listen.to_string(), None, tls);
        proxy.set_connection_filter(Arc::new(AcceptGate {
            limit: connection_limit.clone(),
        }));
        server.add_service(proxy);
    }

    if let Some(addr) = config.server.http_redirect_listen {
        let mut redirect = Service::new(
            "portcullis http redirect".into(),
            RedirectApp::new(Arc::clone(&shared)),
        );
        redirect.add_tcp(&addr.to_string());
        server.add_service(redirect);
    }
    server.add_service(background_service(
        "portcullis operator listener",
        AdminService::new(Arc::clone(&shared), admin_listener),
    ));
    server.add_service(background_service(
        "portcullis audit retention",
        Pruner::new(Arc::clone(&shared)),
    ));
    server.add_service(background_service(
        "portcullis saml metadata",
        crate::gateway::idp_refresh::IdpRefresher::new(Arc::clone(&shared)),
    ));
    server.add_service(background_service(
        "portcullis config reloader",
        Reloader::new(shared),
    ));

    tracing::info!(
        https = %config.server.https_listen,
        admin = %config.admin.listen,
        tenants = config.tenants.len(),
        "portcullis starting"
    );
    server.run_forever()
}

/// The login limiter the configuration asks for.
pub fn limiter(config: &Config) -> Result<Arc<dyn Limiter>, StartError> {
    let budget = IpBudget {
        burst: config.ratelimit.login_ip_burst,
        refill: config.ratelimit.login_ip_refill,
    };
    Ok(match &config.ratelimit.login_store {
        LimiterStore::Memory => Arc::new(MemoryLimiter::with_ip_budget(budget)),
        LimiterStore::Redis(url) => Arc::new(
            RedisLimiter::new(url)
                .map_err(|e| StartError::Limiter(e.to_string()))?
                .with_ip_budget(budget),
        ),
    })
}

fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).map_err(|source| StartError::Bind { addr, source })
}

/// Every accepted connection passes here, on the accepting worker's thread: the per-IP
/// connection budget, then a yield. All workers accept from one socket, and a worker that has
/// connections ready drains the whole backlog in one go, so a burst of new clients (a page
/// load, a load balancer's connection pool) used to land on one worker while the others
/// idled; measured, one of two workers often held all 64 of a benchmark's connections. The
/// yield lets the accepting worker serve what it already has before taking the next
/// connection, so a worker with spare time takes it instead: a busy worker accepts slower.
#[derive(Debug)]
struct AcceptGate {
    limit: Option<Arc<ConnectionLimit>>,
}

#[async_trait::async_trait]
impl ConnectionFilter for AcceptGate {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        if let Some(limit) = &self.limit {
            if !limit.should_accept(addr).await {
                return false;
            }
        }
        tokio::task::yield_now().await;
        true
    }
}
