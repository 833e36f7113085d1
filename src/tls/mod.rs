//! TLS termination: the allowlist ([`crypto`]), certificates chosen by SNI, and what the
//! handshake tells the HTTP layer.

pub mod crypto;
pub mod devcerts;

use std::any::Any;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::metrics::Metrics;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The chain file holds no certificate.
    #[error("{0}: no PEM certificate found")]
    NoCertificate(String),
    /// The key file holds no (or an unusable) private key.
    #[error("{0}: no usable PEM private key found")]
    NoKey(String),
    /// The key does not belong to the certificate.
    #[error("{0}: private key does not match the certificate")]
    Mismatch(String),
}

/// Load a PEM chain and private key and check that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CertError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| CertError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|_| CertError::NoCertificate(cert.display().to_string()))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate(cert.display().to_string()));
    }
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| CertError::NoKey(key.display().to_string()))?;
    let signing_key = crypto::provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|_| CertError::NoKey(key.display().to_string()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|_| CertError::Mismatch(key.display().to_string()))?;
    Ok(Arc::new(certified))
}

/// Chooses the certificate by SNI. A name with no certificate, or no SNI at all, gets no
/// certificate and the handshake fails: there is no default certificate to leak host names.
#[derive(Debug, Default)]
pub struct SniResolver {
    by_host: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl SniResolver {
    /// Swap in a new host → certificate map (at start and on reload).
    pub fn replace(&self, certs: &[crate::config::Certificate]) {
        let map = certs
            .iter()
            .flat_map(|c| c.hosts.iter().map(|h| (h.clone(), c.key.clone())))
            .collect();
        self.by_host.store(Arc::new(map));
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls hands over SNI already lowercased and validated as a DNS name.
        let name = hello.server_name()?;
        self.by_host.load().get(name).cloned()
    }
}

/// What the handshake learned that the HTTP layer needs: the SNI, to check it against Host.
#[derive(Debug, Clone)]
pub struct HandshakeInfo {
    /// The server name the client asked for.
    pub sni: Option<String>,
}

/// Records every completed handshake's version and suite, and keeps the SNI for the request.
pub struct HandshakeObserver {
    metrics: Arc<Metrics>,
}

impl HandshakeObserver {
    /// An observer reporting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

#[async_trait]
impl TlsAccept for HandshakeObserver {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        self.metrics.tls_handshake(
            tls.version().unwrap_or("unknown"),
            tls.current_cipher_name().unwrap_or("unknown"),
        );
        Some(Arc::new(HandshakeInfo {
            sni: tls.server_name().map(str::to_ascii_lowercase),
        }))
    }
}
