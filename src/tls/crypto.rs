//! The TLS allowlist. This is the only file that names a cipher suite or key-exchange group.
//!
//! pingora 0.9.1 builds every rustls `ServerConfig` from the process-default `CryptoProvider`
//! and has no cipher setter, so the allowlist is enforced by installing this provider as the
//! process default before any listener exists, then reading back what got installed and
//! refusing to start if it is anything else (fail closed).
//!
//! Sources: RFC 8446 §9.1 (TLS 1.3 suites), RFC 9325 §4.2 (TLS 1.2: ECDHE with AEAD only —
//! no CBC, no static RSA, no finite-field DHE), draft-ietf-tls-ecdhe-mlkem (the hybrid
//! X25519MLKEM768 group, TLS 1.3 only, offered first so clients that support it — current
//! browsers — get a key exchange that also resists a future quantum computer). The primitives
//! come from rustls' `aws-lc-rs` provider: `ring` has no ML-KEM.

use std::sync::Arc;

use rustls::crypto::aws_lc_rs::{cipher_suite as suite, default_provider, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::{CipherSuite, NamedGroup, SupportedCipherSuite};

/// TLS 1.3 suites, strongest first.
const TLS13_SUITES: [SupportedCipherSuite; 3] = [
    suite::TLS13_AES_256_GCM_SHA384,
    suite::TLS13_AES_128_GCM_SHA256,
    suite::TLS13_CHACHA20_POLY1305_SHA256,
];

/// TLS 1.2 suites: ECDHE key exchange with an AEAD cipher, for ECDSA and RSA certificates.
const TLS12_SUITES: [SupportedCipherSuite; 6] = [
    suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// Key-exchange groups, preferred first. rustls never uses the hybrid group for TLS 1.2.
const KX_GROUPS: [&dyn SupportedKxGroup; 4] = [
    kx_group::X25519MLKEM768,
    kx_group::X25519,
    kx_group::SECP256R1,
    kx_group::SECP384R1,
];

/// Why the allowlisted provider could not be put in force.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Something else installed a process-default provider that differs from the allowlist.
    #[error("the process TLS provider is not the allowlisted one (suites {found_suites:?}, groups {found_groups:?}); refusing to start")]
    WrongProvider {
        /// What the installed provider offers.
        found_suites: Vec<CipherSuite>,
        /// Which groups the installed provider offers.
        found_groups: Vec<NamedGroup>,
    },
}

/// The allowlisted provider: `aws-lc-rs` primitives, restricted to the suites and groups above.
pub fn provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: TLS13_SUITES.iter().chain(&TLS12_SUITES).copied().collect(),
        kx_groups: KX_GROUPS.to_vec(),
        ..default_provider()
    }
}

/// The suites the allowlist permits, in preference order.
pub fn allowed_suites() -> Vec<CipherSuite> {
    TLS13_SUITES
        .iter()
        .chain(&TLS12_SUITES)
        .map(|s| s.suite())
        .collect()
}

/// The key-exchange groups the allowlist permits, in preference order.
pub fn allowed_groups() -> Vec<NamedGroup> {
    KX_GROUPS.iter().map(|g| g.name()).collect()
}

/// Install the allowlisted provider as the process default and verify it is what is now in
/// force. Idempotent; fails if another provider got there first.
pub fn install() -> Result<Arc<CryptoProvider>, CryptoError> {
    // An `Err` here only means a default already exists; the check below decides.
    let _ = provider().install_default();
    let installed = CryptoProvider::get_default().cloned();
    match installed {
        Some(p) if is_allowlisted(&p) => Ok(p),
        other => Err(CryptoError::WrongProvider {
            found_suites: other
                .as_ref()
                .map(|p| p.cipher_suites.iter().map(|s| s.suite()).collect())
                .unwrap_or_default(),
            found_groups: other
                .as_ref()
                .map(|p| p.kx_groups.iter().map(|g| g.name()).collect())
                .unwrap_or_default(),
        }),
    }
}

/// Whether `p` offers exactly the allowlisted suites and groups, in order.
fn is_allowlisted(p: &CryptoProvider) -> bool {
    let suites: Vec<CipherSuite> = p.cipher_suites.iter().map(|s| s.suite()).collect();
    let groups: Vec<NamedGroup> = p.kx_groups.iter().map(|g| g.name()).collect();
    suites == allowed_suites() && groups == allowed_groups()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_has_no_cbc_sha1_or_static_rsa_suite() {
        for s in allowed_suites() {
            let name = format!("{s:?}");
            assert!(
                name.contains("GCM") || name.contains("CHACHA20_POLY1305"),
                "{name}"
            );
            assert!(
                name.starts_with("TLS13_") || name.contains("ECDHE"),
                "{name}"
            );
        }
        assert_eq!(allowed_suites().len(), 9);
    }

    #[test]
    fn a_provider_with_other_groups_or_order_is_not_accepted_as_allowlisted() {
        // The stock providers offer nothing weaker today, but a provider with other groups
        // or order must still be refused: the check compares exactly.
        let mut p = provider();
        p.kx_groups.reverse();
        assert!(!is_allowlisted(&p));
        assert!(is_allowlisted(&provider()));
    }

    #[test]
    fn install_puts_the_allowlist_in_force() {
        let installed = install().expect("allowlisted provider installs");
        assert!(is_allowlisted(&installed));
    }
}
