//! SAML state shared by every instance: outstanding AuthnRequest IDs, the assertion replay
//! cache, and each tenant's SP signing key.
//!
//! Request IDs are bound to their tenant and consumed exactly once; assertion IDs are kept
//! until the assertion's own `NotOnOrAfter` (plus skew), so a captured response cannot be
//! posted a second time to any instance sharing the store.

use super::StoreError;

/// An AuthnRequest we sent and have not seen answered yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRequest {
    /// Where the user goes after signing in (a validated same-host path).
    pub return_to: String,
    /// Unix seconds after which the request can no longer be answered.
    pub expires_at: u64,
    /// SHA-256 (hex) of the browser-binding cookie of the browser that started the login: the
    /// answer is accepted only from that browser (no login CSRF with a stolen response).
    pub browser: String,
}

/// A tenant's SP key pair for signing AuthnRequests.
#[derive(Clone, PartialEq, Eq)]
pub struct SpKey {
    /// The PKCS#8 private key, PEM, sealed (AES-256-GCM bound to tenant and field).
    pub sealed_key: String,
    /// The self-signed certificate published in the SP metadata, DER.
    pub cert_der: Vec<u8>,
}

impl std::fmt::Debug for SpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpKey").finish_non_exhaustive()
    }
}

/// The most AuthnRequests one tenant keeps outstanding. Anyone can start a sign-in, so without
/// a bound many addresses (each within its per-IP rate) could grow the table for the whole
/// request lifetime. Past the bound the requests closest to expiry are forgotten: their sign-in
/// fails at the ACS and is simply started again, while new sign-ins keep working. 50,000
/// requests (a few MB) is far above what a tenant starts in one request lifetime.
pub const MAX_PENDING_REQUESTS: u64 = 50_000;

/// Storage of SAML protocol state.
pub trait SamlStore: Send + Sync {
    /// Remember an AuthnRequest ID of `tenant`, keeping at most [`MAX_PENDING_REQUESTS`] for
    /// the tenant (the ones closest to expiry make room).
    fn put_saml_request(
        &self,
        tenant: &str,
        id: &str,
        request: &PendingRequest,
    ) -> Result<(), StoreError>;
    /// Consume the request `id` of `tenant`: returns it once if it exists and has not expired
    /// at `now`; never again, whichever instance asks.
    fn take_saml_request(
        &self,
        tenant: &str,
        id: &str,
        now: u64,
    ) -> Result<Option<PendingRequest>, StoreError>;
    /// Record that assertion `assertion_id` from `issuer` was used, keeping it until
    /// `keep_until`: true the first time, false for a replay (while remembered).
    fn remember_assertion(
        &self,
        issuer: &str,
        assertion_id: &str,
        keep_until: u64,
        now: u64,
    ) -> Result<bool, StoreError>;
    /// Forget expired requests and assertions; returns how many rows went.
    fn purge_saml(&self, now: u64) -> Result<u64, StoreError>;
    /// The SP signing key of `tenant`, if one was made.
    fn saml_sp_key(&self, tenant: &str) -> Result<Option<SpKey>, StoreError>;
    /// Store the SP signing key of `tenant` unless one exists; returns the one kept (so two
    /// instances racing to make a key agree on one).
    fn put_saml_sp_key(&self, tenant: &str, key: &SpKey) -> Result<SpKey, StoreError>;
}
