//! What every request reads: the current configuration, swapped atomically on reload, and the
//! process-wide parts that outlive a reload (metrics, audit, certificate resolver).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::audit::AuditSink;
use crate::auth::flow::Auth;
use crate::clock::Clock;
use crate::config::{Config, ConfigErrors};
use crate::metrics::Metrics;
use crate::tenant::TenantIndex;
use crate::tls::SniResolver;
use crate::upstream::headers::TrustedProxies;

/// Where the configuration comes from, so a reload reads it the same way again.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A file on disk.
    File(PathBuf),
    /// Text built into the binary (the demo), with the folder its relative paths start from.
    Embedded {
        /// The config text.
        text: &'static str,
        /// The name used in error messages.
        name: PathBuf,
        /// The folder relative paths are taken from.
        base: PathBuf,
    },
}

impl ConfigSource {
    /// Read and validate the configuration.
    pub fn load(&self) -> Result<Config, ConfigErrors> {
        match self {
            Self::File(path) => Config::load(path),
            Self::Embedded { text, name, base } => Config::parse(text, name, base),
        }
    }

    /// The config file, if there is one to watch.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Self::File(path) => Some(path),
            Self::Embedded { .. } => None,
        }
    }
}

/// One validated configuration, ready to serve. Replaced whole on reload.
#[derive(Debug)]
pub struct Runtime {
    /// The configuration.
    pub config: Config,
    /// Host → tenant.
    pub tenants: TenantIndex,
    /// Peers whose forwarding headers are believed.
    pub trusted: TrustedProxies,
    /// The `Strict-Transport-Security` value.
    pub hsts: HeaderValue,
    /// Per-IP request budgets of routes that have one.
    pub request_limits: crate::ratelimit::requests::RequestLimits,
}

impl Runtime {
    /// Compile a validated configuration for serving.
    pub fn new(config: Config) -> Self {
        let hsts = HeaderValue::from_str(&format!(
            "max-age={}; includeSubDomains",
            config.server.hsts_max_age
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("max-age=31536000; includeSubDomains"));
        Self {
            tenants: TenantIndex::new(&config.tenants),
            request_limits: crate::ratelimit::requests::RequestLimits::new(&config.tenants),
            trusted: TrustedProxies::new(config.proxy.trusted_proxies.clone()),
            hsts,
            config,
        }
    }
}

/// State shared by the data plane, the operator listener and the reloader.
pub struct Shared {
    /// The configuration in force.
    pub runtime: ArcSwap<Runtime>,
    /// Where it came from.
    pub source: ConfigSource,
    /// Certificates by SNI; updated together with `runtime`.
    pub resolver: Arc<SniResolver>,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// The audit trail.
    pub audit: AuditSink,
    /// Accounts, sessions and audit records.
    pub store: Arc<dyn crate::store::Store>,
    /// Sign-in, sessions and upstream identity.
    pub auth: Arc<Auth>,
    /// Seals and opens secrets at rest (the signing keys are re-read on reload).
    pub sealer: Arc<crate::keys::Sealer>,
    /// Wall-clock time.
    pub clock: Arc<dyn Clock>,
}

impl Shared {
    /// Put a new validated configuration in force: certificates first, so a request for a new
    /// host never finds its tenant before its certificate.
    pub fn install(&self, config: Config) {
        self.resolver.replace(&config.certificates);
        self.runtime.store(Arc::new(Runtime::new(config)));
    }
}
