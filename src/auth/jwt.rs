//! The identity sent upstream: a short-lived JWT (RFC 7519) in compact JWS form (RFC 7515),
//! signed with Ed25519 (`EdDSA`, RFC 8037) and nothing else.
//!
//! - [`Keyring`]: the signing keys, kept in a JSON file with each private key sealed under the
//!   master key ([`crate::keys`]). The newest key signs; after a rotation the older one stays
//!   in the JWKS for a grace period so tokens and backend JWKS caches drain.
//! - [`verify`]: the strict reference verifier a backend can copy; our tests use it too.
//! - [`TokenCache`]: reuses a still-fresh token per (session, route) so the hot path rarely signs.
//!
//! A token is sent once per request, so none is ever logged, and the errors below never quote
//! one.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use http::HeaderValue;
use rand::rngs::OsRng;
use rand::RngCore;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::keys::{file, FieldBinding, KeyError, Sealer};

/// The one JWS algorithm we sign with and accept (RFC 8037 §3.1).
pub const ALG: &str = "EdDSA";
/// Longest token [`verify`] reads; ours are well under 1 KiB.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Longest lifetime [`TokenCache`] gives a token: it is a bearer credential in every request.
pub const MAX_TTL_SECS: u64 = 60;
/// Default bound on [`TokenCache`] entries.
pub const DEFAULT_CACHE_ENTRIES: usize = 100_000;

/// Signing keys are the gateway's own secret, bound to no tenant or user.
const OPERATOR_TENANT: &str = "_operator";
/// A keyring is a few hundred bytes per key.
const MAX_KEYRING_FILE_LEN: u64 = 1 << 20;
/// Lock shards of the token cache, so worker threads rarely wait on one another.
const CACHE_SHARDS: usize = 16;

/// Why a token could not be made or verified, or a keyring not used.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token longer than {MAX_TOKEN_LEN} bytes")]
    TooLarge,
    /// Not three base64url parts holding JSON of the expected shape.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header names an algorithm other than `EdDSA`.
    #[error("token algorithm is not EdDSA")]
    Algorithm,
    /// The header carries a parameter that points at or embeds a key, or `crit`.
    #[error("token header carries forbidden parameter `{0}`")]
    ForbiddenHeader(&'static str),
    /// No key in the key set has the token's `kid`.
    #[error("token key id is not in the key set")]
    UnknownKey,
    /// The key set is not a JWKS of Ed25519 keys.
    #[error("invalid key set: {0}")]
    Jwks(&'static str),
    /// The signature does not verify.
    #[error("token signature does not verify")]
    Signature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `iat` lies in the future.
    #[error("token issued in the future")]
    NotYetValid,
    /// `iss` is not the expected issuer.
    #[error("token issuer does not match")]
    Issuer,
    /// `aud` is not the expected audience.
    #[error("token audience does not match")]
    Audience,
    /// The keyring file is not there.
    #[error("signing keyring {} does not exist; create it with `portcullis keygen`", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// Creating a keyring would replace an existing one.
    #[error("signing keyring {} already exists; refusing to overwrite it", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The keyring file could not be read or written.
    #[error("cannot access signing keyring {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The keyring file is not a valid keyring.
    #[error("signing keyring {} is invalid: {reason}", path.display())]
    Keyring {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the file's content).
        reason: String,
    },
    /// A private key in the keyring does not open: another master key, or the file was altered.
    #[error("signing key {kid} in {} does not open: {source}", path.display())]
    Unseal {
        /// The file.
        path: PathBuf,
        /// The key.
        kid: String,
        /// Why.
        source: KeyError,
    },
    /// Randomness or sealing failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// JSON could not be produced.
    #[error("cannot encode JSON: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The claims of an upstream identity token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer (RFC 7519 §4.1.1).
    pub iss: String,
    /// The user id (RFC 7519 §4.1.2).
    pub sub: String,
    /// The route the request goes to; see [`audience`] (RFC 7519 §4.1.3). A single string:
    /// a token is for one route only.
    pub aud: String,
    /// The tenant id.
    pub tenant: String,
    /// The user's roles.
    pub roles: Vec<String>,
    /// How the user authenticated, e.g. `pwd`, `otp` (RFC 8176).
    pub amr: Vec<String>,
    /// The session's public id: never the session cookie's token.
    pub sid: String,
    /// Issued at, Unix seconds (RFC 7519 §4.1.6).
    pub iat: u64,
    /// Expiry, Unix seconds (RFC 7519 §4.1.4).
    pub exp: u64,
}

/// Who a token speaks for, borrowed: what a cached token must still say to be handed out
/// again (its session and audience are the cache's keys).
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The user (`sub`).
    pub sub: &'a str,
    /// The tenant id.
    pub tenant: &'a str,
    /// The host the issuer is named after (`iss` = `https://<host>`).
    pub host: &'a str,
    /// The user's roles, in order.
    pub roles: &'a [String],
    /// How the user signed in.
    pub amr: &'a [String],
}

impl<'a> Subject<'a> {
    /// The subject of a claim set we build (`iss` always `https://<host>`).
    fn of(claims: &'a Claims) -> Option<Self> {
        Some(Self {
            sub: &claims.sub,
            tenant: &claims.tenant,
            host: claims.iss.strip_prefix(ISSUER_SCHEME)?,
            roles: &claims.roles,
            amr: &claims.amr,
        })
    }

    /// Whether `claims` say the same about who the user is; `iat` and `exp` aside.
    fn matches(&self, claims: &Claims) -> bool {
        claims.sub == self.sub
            && claims.tenant == self.tenant
            && claims.iss.strip_prefix(ISSUER_SCHEME) == Some(self.host)
            && claims.roles == self.roles
            && claims.amr == self.amr
    }
}

/// Issuers are `https://<host>`.
const ISSUER_SCHEME: &str = "https://";

/// The audience for `route_id` of `tenant`: `<tenant>/<route id>`. Route ids are unique only
/// within a tenant, so the tenant is part of the audience: a backend checking its audience
/// then refuses another tenant's token for a route of the same name. Tenant ids hold no `/`,
/// so the split is unambiguous.
pub fn audience(tenant: &str, route_id: &str) -> String {
    // Built by hand: every signed-in request makes one, and `format!` costs more than the
    // copy itself.
    let mut aud = String::with_capacity(tenant.len() + 1 + route_id.len());
    aud.push_str(tenant);
    aud.push('/');
    aud.push_str(route_id);
    aud
}

/// One signing key.
pub struct Key {
    kid: String,
    created: u64,
    signing: SigningKey,
    /// The base64url JOSE header, the same for every token this key signs.
    header: String,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// A new key from the operating system's CSPRNG.
    fn generate(created: u64) -> Result<Key, JwtError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        OsRng
            .try_fill_bytes(&mut seed[..])
            .map_err(KeyError::Random)?;
        Ok(Key::from_seed(&seed, created))
    }

    /// The key for a 32-byte Ed25519 private key (RFC 8032 §5.1.5).
    fn from_seed(seed: &[u8; 32], created: u64) -> Key {
        let signing = SigningKey::from_bytes(seed);
        let kid = hex::encode(&Sha256::digest(signing.verifying_key().as_bytes())[..8]);
        // The kid is hex, so the header needs no escaping.
        let header =
            URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{ALG}","typ":"JWT","kid":"{kid}"}}"#));
        Key {
            kid,
            created,
            signing,
            header,
        }
    }

    /// The key id: the first 16 hex digits of SHA-256 of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// When the key was made, Unix seconds.
    pub fn created(&self) -> u64 {
        self.created
    }

    /// The public key as a JWK (RFC 8037 §2): `kty` OKP, `crv` Ed25519, `x` the raw key.
    pub fn jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.signing.verifying_key().as_bytes()),
            "kid": self.kid,
            "alg": ALG,
            "use": "sig",
        })
    }

    /// Where this key's sealed private half belongs; the kid is bound in, so sealed keys
    /// cannot be swapped between entries.
    fn binding_field(kid: &str) -> String {
        format!("jwt-signing-key/{kid}")
    }
}

/// The keyring file's schema.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    kid: String,
    alg: String,
    created: u64,
    /// The sealed 32-byte private key.
    secret: String,
}

/// The upstream-JWT signing keys: the newest signs, older ones are only published.
pub struct Keyring {
    newest: Key,
    /// Oldest first.
    older: Vec<Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("newest", &self.newest)
            .field("older", &self.older)
            .finish()
    }
}

impl Keyring {
    /// Make a keyring with one new key and write it to `path` (mode 0600). Refuses to
    /// replace an existing file.
    pub fn create(path: &Path, sealer: &Sealer, now_unix: u64) -> Result<Keyring, JwtError> {
        let ring = Keyring {
            newest: Key::generate(now_unix)?,
            older: Vec::new(),
        };
        let bytes = ring.to_file(sealer)?;
        file::create_private(path, &bytes).map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                JwtError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                JwtError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Ok(ring)
    }

    /// Read the keyring at `path`, opening every private key with `sealer`.
    pub fn load(path: &Path, sealer: &Sealer) -> Result<Keyring, JwtError> {
        let invalid = |reason: String| JwtError::Keyring {
            path: path.to_path_buf(),
            reason,
        };
        let (content, _) = file::read_capped(path, MAX_KEYRING_FILE_LEN).map_err(|source| {
            match source.kind() {
                io::ErrorKind::NotFound => JwtError::Missing {
                    path: path.to_path_buf(),
                },
                io::ErrorKind::InvalidData => invalid("larger than 1 MiB".into()),
                _ => JwtError::Io {
                    path: path.to_path_buf(),
                    source,
                },
            }
        })?;
        // Only the position: serde's messages can quote values.
        let parsed: KeyringFile = serde_json::from_slice(&content).map_err(|e| {
            invalid(format!(
                "not a keyring (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let mut keys: Vec<Key> = Vec::with_capacity(parsed.keys.len());
        for entry in parsed.keys {
            if entry.alg != ALG {
                return Err(invalid(format!("key {} is not EdDSA", entry.kid)));
            }
            if keys.iter().any(|k| k.kid == entry.kid) {
                return Err(invalid(format!("key {} appears twice", entry.kid)));
            }
            let field = Key::binding_field(&entry.kid);
            let binding = FieldBinding {
                tenant: OPERATOR_TENANT,
                user: "",
                field: &field,
            };
            let seed = sealer
                .open(&entry.secret, &binding)
                .map_err(|source| JwtError::Unseal {
                    path: path.to_path_buf(),
                    kid: entry.kid.clone(),
                    source,
                })?;
            let seed: &[u8; 32] = seed
                .as_slice()
                .try_into()
                .map_err(|_| invalid(format!("key {} is not an Ed25519 key", entry.kid)))?;
            let key = Key::from_seed(seed, entry.created);
            if key.kid != entry.kid {
                return Err(invalid(format!(
                    "key {} does not match its key id",
                    entry.kid
                )));
            }
            keys.push(key);
        }
        // Stable: among keys made in the same second, the later entry is the newer.
        keys.sort_by_key(|k| k.created);
        let newest = keys.pop().ok_or_else(|| invalid("holds no key".into()))?;
        Ok(Keyring {
            newest,
            older: keys,
        })
    }

    /// Add a new key to the keyring at `path`; from the next load it signs, and the key it
    /// replaces stays published for the grace period. Returns the new kid.
    pub fn rotate(path: &Path, sealer: &Sealer, now_unix: u64) -> Result<String, JwtError> {
        let mut ring = Keyring::load(path, sealer)?;
        // Never older than its predecessor, so "newest" stays the key made last even if the
        // clock stepped back.
        let created = now_unix.max(ring.newest.created);
        let previous = std::mem::replace(&mut ring.newest, Key::generate(created)?);
        ring.older.push(previous);
        let bytes = ring.to_file(sealer)?;
        file::replace_private(path, &bytes).map_err(|source| JwtError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ring.newest.kid.clone())
    }

    /// The file content, with every private key sealed.
    fn to_file(&self, sealer: &Sealer) -> Result<Vec<u8>, JwtError> {
        let mut keys = Vec::with_capacity(self.older.len() + 1);
        for key in self.older.iter().chain([&self.newest]) {
            let field = Key::binding_field(&key.kid);
            let binding = FieldBinding {
                tenant: OPERATOR_TENANT,
                user: "",
                field: &field,
            };
            keys.push(KeyEntry {
                kid: key.kid.clone(),
                alg: ALG.to_string(),
                created: key.created,
                secret: sealer.seal(key.signing.as_bytes(), &binding)?,
            });
        }
        let mut bytes = serde_json::to_vec_pretty(&KeyringFile { keys })?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// The key that signs.
    pub fn active(&self) -> &Key {
        &self.newest
    }

    /// The keys to publish: the newest, plus each older key whose successor was made less than
    /// `grace_secs` ago (tokens it signed, and backends' cached key sets, are still about).
    /// Keys past their grace are neither used nor published. Newest first.
    pub fn published(&self, now_unix: u64, grace_secs: u64) -> Vec<&Key> {
        let mut keys = vec![&self.newest];
        let mut successor_created = self.newest.created;
        for key in self.older.iter().rev() {
            if now_unix.saturating_sub(successor_created) < grace_secs {
                keys.push(key);
            }
            successor_created = key.created;
        }
        keys
    }

    /// The JWK Set (RFC 7517 §5) for `/.auth/jwks.json`: public keys only.
    pub fn jwks(&self, now_unix: u64, grace_secs: u64) -> Value {
        let keys: Vec<Value> = self
            .published(now_unix, grace_secs)
            .into_iter()
            .map(Key::jwk)
            .collect();
        json!({ "keys": keys })
    }

    /// Sign `claims` with the newest key: compact JWS (RFC 7515 §7.1), header
    /// `{"alg":"EdDSA","typ":"JWT","kid":…}`.
    pub fn sign(&self, claims: &Claims) -> Result<String, JwtError> {
        let key = &self.newest;
        let payload = serde_json::to_vec(claims)?;
        let mut token = String::with_capacity(key.header.len() + payload.len() * 4 / 3 + 92);
        token.push_str(&key.header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        // RFC 7515 §5.1: the signing input is the ASCII of header '.' payload.
        let signature = key.signing.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut token);
        Ok(token)
    }
}

/// The JOSE header fields the verifier looks at. Declared fields appear at most once (serde
/// refuses duplicates), per RFC 7515 §5.2 step 4.
#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
    #[serde(default, deserialize_with = "present")]
    jwk: bool,
    #[serde(default, deserialize_with = "present")]
    jku: bool,
    #[serde(default, deserialize_with = "present")]
    x5u: bool,
    #[serde(default, deserialize_with = "present")]
    x5c: bool,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

/// True for a member that is there at all, whatever its value (`null` included).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// Verify an upstream identity token against a JWK Set (as served at `/.auth/jwks.json`) and
/// return its claims. Strict, in this order:
///
/// 1. At most [`MAX_TOKEN_LEN`] bytes; exactly three unpadded base64url parts.
/// 2. Header `alg` exactly `EdDSA` (RFC 8725 §2.1, §3.1: the verifier fixes the algorithm, so
///    `none`, `HS256` keyed with our public key, and every other swap fail); no `jwk`, `jku`,
///    `x5u`, `x5c` (keys chosen by the token) and no `crit` (RFC 7515 §4.1.11: we understand no
///    extension).
/// 3. `kid` names exactly one Ed25519 key (`kty` OKP, `crv` Ed25519) of the set.
/// 4. The signature verifies (strict Ed25519: no small-order keys, no malleable signatures).
/// 5. `exp > now - leeway`, `iat <= now + leeway`, `iss` and `aud` (a single string) equal the
///    expected values.
pub fn verify(
    token: &str,
    jwks: &Value,
    expected_iss: &str,
    expected_aud: &str,
    now_unix: u64,
    leeway_secs: u64,
) -> Result<Claims, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three dot-separated parts"));
    };

    let header: Header = decode_json(header_b64, "header")?;
    if header.alg != ALG {
        return Err(JwtError::Algorithm);
    }
    for (found, name) in [
        (header.jwk, "jwk"),
        (header.jku, "jku"),
        (header.x5u, "x5u"),
        (header.x5c, "x5c"),
        (header.crit, "crit"),
    ] {
        if found {
            return Err(JwtError::ForbiddenHeader(name));
        }
    }
    // RFC 8725 §3.11: explicit typing, so another kind of JWS signed by the key cannot pass.
    if header
        .typ
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("JWT"))
    {
        return Err(JwtError::Malformed("typ is not JWT"));
    }
    let kid = header.kid.ok_or(JwtError::UnknownKey)?;
    let key = find_key(jwks, &kid)?;

    let signature: [u8; 64] = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or(JwtError::Malformed("signature"))?;
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    key.verify_strict(signing_input.as_bytes(), &Signature::from_bytes(&signature))
        .map_err(|_| JwtError::Signature)?;

    // Only now, with the signature checked, is the payload read.
    let claims: Claims = decode_json(payload_b64, "claims")?;
    if claims.exp <= now_unix.saturating_sub(leeway_secs) {
        return Err(JwtError::Expired);
    }
    if claims.iat > now_unix.saturating_add(leeway_secs) {
        return Err(JwtError::NotYetValid);
    }
    if claims.iss != expected_iss {
        return Err(JwtError::Issuer);
    }
    if claims.aud != expected_aud {
        return Err(JwtError::Audience);
    }
    Ok(claims)
}

/// Decode one unpadded base64url part holding JSON.
fn decode_json<T: DeserializeOwned>(part: &str, what: &'static str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed(what))?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed(what))
}

/// The Ed25519 public key with `kid` in `jwks` (RFC 7517 §5, RFC 8037 §2).
fn find_key(jwks: &Value, kid: &str) -> Result<VerifyingKey, JwtError> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwtError::Jwks("no `keys` array"))?;
    let mut matching = keys
        .iter()
        .filter(|k| k.get("kid").and_then(Value::as_str) == Some(kid));
    let jwk = matching.next().ok_or(JwtError::UnknownKey)?;
    if matching.next().is_some() {
        return Err(JwtError::Jwks("two keys share a kid"));
    }
    let member = |name: &str| jwk.get(name).and_then(Value::as_str);
    if member("kty") != Some("OKP") || member("crv") != Some("Ed25519") {
        return Err(JwtError::Jwks("key is not Ed25519"));
    }
    if jwk.get("alg").is_some_and(|a| a.as_str() != Some(ALG)) {
        return Err(JwtError::Jwks("key is not for EdDSA"));
    }
    if jwk.get("use").is_some_and(|u| u.as_str() != Some("sig")) {
        return Err(JwtError::Jwks("key is not for signatures"));
    }
    let x: [u8; 32] = member("x")
        .and_then(|x| URL_SAFE_NO_PAD.decode(x).ok())
        .and_then(|x| x.try_into().ok())
        .ok_or(JwtError::Jwks("key has no 32-byte `x`"))?;
    VerifyingKey::from_bytes(&x).map_err(|_| JwtError::Jwks("key is not a valid Ed25519 point"))
}

/// Signed tokens by session and route, so a busy session costs one signature per route per
/// half token lifetime instead of one per request.
pub struct TokenCache {
    shards: Box<[Mutex<Shard>]>,
    hasher: FastHash,
    shard_capacity: usize,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tokens are credentials: only the count is shown.
        f.debug_struct("TokenCache")
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new(DEFAULT_CACHE_ENTRIES)
    }
}

/// Seeded, fast hashing: the keys are session ids the gateway generated and route ids from the
/// configuration, so no client chooses them, and SipHash's cost (three hashes per signed-in
/// request) buys nothing here.
type FastHash = foldhash::fast::RandomState;

/// One lock's worth of the cache: sid → route (aud) → token.
#[derive(Default)]
struct Shard {
    by_sid: HashMap<String, HashMap<String, Cached, FastHash>, FastHash>,
    len: usize,
}

struct Cached {
    /// Ready to send: handing it out is a reference-count increment, not a copy.
    token: HeaderValue,
    kid: String,
    /// The claims as signed.
    claims: Claims,
}

impl Cached {
    /// At least half its lifetime left: a backend still has time to use it. A clock that went
    /// back (iat in the future) also means sign anew.
    fn fresh(&self, now: u64) -> bool {
        let Claims { iat, exp, .. } = self.claims;
        iat <= now && now < exp && exp - now >= (exp - iat).div_ceil(2)
    }
}

impl Shard {
    fn insert(&mut self, cached: Cached, capacity: usize, now: u64) {
        let (sid, aud) = (&cached.claims.sid, &cached.claims.aud);
        let replacing = self
            .by_sid
            .get(sid)
            .is_some_and(|routes| routes.contains_key(aud));
        if !replacing && self.len >= capacity {
            // Tokens past their half-life are never handed out again, so they go first; if
            // that frees nothing, start over rather than scan for the oldest on a hot path.
            self.by_sid.retain(|_, routes| {
                routes.retain(|_, c| c.fresh(now));
                !routes.is_empty()
            });
            self.len = self.by_sid.values().map(HashMap::len).sum();
            if self.len >= capacity {
                self.by_sid.clear();
                self.len = 0;
            }
        }
        let (sid, aud) = (cached.claims.sid.clone(), cached.claims.aud.clone());
        if self
            .by_sid
            .entry(sid)
            .or_default()
            .insert(aud, cached)
            .is_none()
        {
            self.len += 1;
        }
    }
}

impl TokenCache {
    /// A cache holding about `max_entries` tokens at most.
    pub fn new(max_entries: usize) -> TokenCache {
        TokenCache {
            shards: (0..CACHE_SHARDS)
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            hasher: FastHash::default(),
            shard_capacity: max_entries.div_ceil(CACHE_SHARDS).max(1),
        }
    }

    /// The cached token of session `sid` for audience `aud`, if its key still signs, it has at
    /// least half its lifetime left and it speaks for `who`. Builds nothing: the hot path of
    /// every signed-in request.
    pub fn cached(
        &self,
        keyring: &Keyring,
        sid: &str,
        aud: &str,
        now_unix: u64,
        who: &Subject<'_>,
    ) -> Option<HeaderValue> {
        let active = keyring.active().kid();
        lock(self.shard(sid))
            .by_sid
            .get(sid)
            .and_then(|routes| routes.get(aud))
            .filter(|c| c.kid == active && who.matches(&c.claims) && c.fresh(now_unix))
            .map(|c| c.token.clone())
    }

    /// A token for `template` (its `iat`/`exp` are ignored): the cached one for the same
    /// session, route and identity if it still has at least half its lifetime left and its
    /// key still signs; otherwise a new one valid for `ttl_secs` (1 to [`MAX_TTL_SECS`]).
    pub fn get_or_sign(
        &self,
        keyring: &Keyring,
        template: &Claims,
        now_unix: u64,
        ttl_secs: u64,
    ) -> Result<HeaderValue, JwtError> {
        let hit = Subject::of(template)
            .and_then(|who| self.cached(keyring, &template.sid, &template.aud, now_unix, &who));
        if let Some(token) = hit {
            return Ok(token);
        }
        let active = keyring.active().kid();
        let shard = self.shard(&template.sid);
        // Signed outside the lock; two requests racing both sign, which is harmless.
        let mut claims = template.clone();
        claims.iat = now_unix;
        claims.exp = now_unix.saturating_add(ttl_secs.clamp(1, MAX_TTL_SECS));
        let token = HeaderValue::try_from(keyring.sign(&claims)?)
            .map_err(|_| JwtError::Malformed("signed token is not a header value"))?;
        let cached = Cached {
            token: token.clone(),
            kid: active.to_string(),
            claims,
        };
        lock(shard).insert(cached, self.shard_capacity, now_unix);
        Ok(token)
    }

    /// Forget every token of session `sid` (logout, revocation). A request of that session
    /// already past authentication may still put one back; it is never handed out, because
    /// the session is checked before the cache is asked.
    pub fn invalidate_sid(&self, sid: &str) {
        let mut shard = lock(self.shard(sid));
        if let Some(routes) = shard.by_sid.remove(sid) {
            shard.len = shard.len.saturating_sub(routes.len());
        }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len).sum()
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, sid: &str) -> &Mutex<Shard> {
        let index = self.hasher.hash_one(sid) as usize % self.shards.len();
        &self.shards[index]
    }
}

/// A panic elsewhere while holding the lock leaves at worst a missing or stale entry, which the
/// checks above treat as a miss; serving on is safe.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    const ISS: &str = "https://acme.example.com";
    const T0: u64 = 1_700_000_000;
    const LEEWAY: u64 = 5;
    const GRACE: u64 = 3600;

    fn sealer() -> Sealer {
        Sealer::new(&MasterKey::generate().unwrap())
    }

    fn ring(now: u64) -> Keyring {
        Keyring {
            newest: Key::generate(now).unwrap(),
            older: Vec::new(),
        }
    }

    fn claims(aud: &str, now: u64) -> Claims {
        Claims {
            iss: ISS.into(),
            sub: "alice".into(),
            aud: aud.into(),
            tenant: "acme".into(),
            roles: vec!["staff".into()],
            amr: vec!["pwd".into()],
            sid: "s-1234".into(),
            iat: now,
            exp: now + 60,
        }
    }

    fn app() -> String {
        audience("acme", "app")
    }

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token with any header text and payload, signed by `key`, so only the rule under
    /// test can reject it.
    fn sign_text(key: &Key, header: &str, payload: &impl Serialize) -> String {
        let input = format!(
            "{}.{}",
            b64(header),
            b64(serde_json::to_vec(payload).unwrap())
        );
        let signature = key.signing.sign(input.as_bytes());
        format!("{input}.{}", b64(signature.to_bytes()))
    }

    fn sign_raw(key: &Key, header: &Value, payload: &impl Serialize) -> String {
        sign_text(key, &header.to_string(), payload)
    }

    fn text(token: &HeaderValue) -> &str {
        token.to_str().unwrap()
    }

    fn check(ring: &Keyring, token: &str, now: u64) -> Result<Claims, JwtError> {
        verify(token, &ring.jwks(now, GRACE), ISS, &app(), now, LEEWAY)
    }

    #[test]
    fn signed_token_verifies_with_our_jwks() {
        let ring = ring(T0);
        let sent = claims(&app(), T0);
        let token = ring.sign(&sent).unwrap();
        assert_eq!(check(&ring, &token, T0 + 1).unwrap(), sent);
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            header,
            json!({"alg": "EdDSA", "typ": "JWT", "kid": ring.active().kid()})
        );
        assert_eq!(ring.active().kid().len(), 16);
    }

    #[test]
    fn signed_token_verifies_with_the_independent_jsonwebtoken_crate() {
        use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
        // jsonwebtoken reads the real clock for `exp`.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let ring = ring(now);
        let sent = claims(&app(), now);
        let token = ring.sign(&sent).unwrap();
        let jwks = ring.jwks(now, GRACE);
        let x = jwks["keys"][0]["x"].as_str().unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[app()]);
        validation.set_issuer(&[ISS]);
        let from_x = decode::<Claims>(
            &token,
            &DecodingKey::from_ed_components(x).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(from_x.claims, sent);
        assert_eq!(from_x.header.kid.as_deref(), Some(ring.active().kid()));
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
        let from_jwk =
            decode::<Claims>(&token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation).unwrap();
        assert_eq!(from_jwk.claims, sent);
    }

    #[test]
    fn alg_none_token_is_rejected() {
        let ring = ring(T0);
        let c = claims(&app(), T0);
        let header = json!({"alg": "none", "typ": "JWT", "kid": ring.active().kid()});
        let unsigned = format!(
            "{}.{}.",
            b64(header.to_string()),
            b64(serde_json::to_vec(&c).unwrap())
        );
        assert!(matches!(
            check(&ring, &unsigned, T0),
            Err(JwtError::Algorithm)
        ));
        // Also with a real signature attached, and in other spellings.
        for alg in ["none", "None", "NONE", "nOnE"] {
            let header = json!({"alg": alg, "kid": ring.active().kid()});
            let token = sign_raw(ring.active(), &header, &c);
            assert!(matches!(check(&ring, &token, T0), Err(JwtError::Algorithm)));
        }
    }

    #[test]
    fn hs256_token_keyed_with_our_public_key_is_rejected() {
        use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
        let ring = ring(T0);
        let jwks = ring.jwks(T0, GRACE);
        let x = jwks["keys"][0]["x"].as_str().unwrap().to_string();
        let public = ring.active().signing.verifying_key().to_bytes();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(ring.active().kid().to_string());
        let c = claims(&app(), T0);
        // Every form of "the public key" an attacker might feed to HMAC.
        for secret in [
            public.to_vec(),
            x.clone().into_bytes(),
            jwks.to_string().into_bytes(),
            jwks["keys"][0].to_string().into_bytes(),
        ] {
            let token = encode(&header, &c, &EncodingKey::from_secret(&secret)).unwrap();
            assert!(matches!(
                verify(&token, &jwks, ISS, &app(), T0, LEEWAY),
                Err(JwtError::Algorithm)
            ));
        }
    }

    #[test]
    fn other_algorithms_are_rejected() {
        let ring = ring(T0);
        let c = claims(&app(), T0);
        for alg in [
            "HS256", "HS512", "RS256", "ES256", "PS256", "Ed25519", "eddsa", "EDDSA", "",
        ] {
            let header = json!({"alg": alg, "typ": "JWT", "kid": ring.active().kid()});
            let token = sign_raw(ring.active(), &header, &c);
            assert!(
                matches!(check(&ring, &token, T0), Err(JwtError::Algorithm)),
                "{alg}"
            );
        }
    }

    #[test]
    fn headers_that_bring_their_own_key_are_rejected() {
        let ring = ring(T0);
        let attacker = Key::generate(T0).unwrap();
        let c = claims(&app(), T0);
        for name in ["jwk", "jku", "x5u", "x5c", "crit"] {
            let mut header = json!({"alg": "EdDSA", "typ": "JWT", "kid": ring.active().kid()});
            header[name] = match name {
                "jwk" => attacker.jwk(),
                "crit" => json!(["exp"]),
                _ => Value::Null,
            };
            // Signed by the real key: the header rule alone must reject it.
            let token = sign_raw(ring.active(), &header, &c);
            assert!(
                matches!(check(&ring, &token, T0), Err(JwtError::ForbiddenHeader(n)) if n == name),
                "{name}"
            );
        }
    }

    #[test]
    fn unknown_kid_is_rejected() {
        let ring = ring(T0);
        let stranger = self::ring(T0);
        let token = stranger.sign(&claims(&app(), T0)).unwrap();
        assert!(matches!(
            check(&ring, &token, T0),
            Err(JwtError::UnknownKey)
        ));
        // A stranger's key under our kid fails the signature.
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": ring.active().kid()});
        let forged = sign_raw(stranger.active(), &header, &claims(&app(), T0));
        assert!(matches!(
            check(&ring, &forged, T0),
            Err(JwtError::Signature)
        ));
        let no_kid = sign_raw(ring.active(), &json!({"alg": "EdDSA"}), &claims(&app(), T0));
        assert!(matches!(
            check(&ring, &no_kid, T0),
            Err(JwtError::UnknownKey)
        ));
    }

    #[test]
    fn token_for_another_route_is_rejected() {
        let ring = ring(T0);
        let token = ring
            .sign(&claims(&audience("acme", "billing"), T0))
            .unwrap();
        assert!(matches!(check(&ring, &token, T0), Err(JwtError::Audience)));
    }

    #[test]
    fn token_for_another_tenants_route_of_the_same_name_is_rejected() {
        let ring = ring(T0);
        let mut theirs = claims(&audience("globex", "app"), T0);
        theirs.tenant = "globex".into();
        let token = ring.sign(&theirs).unwrap();
        assert!(matches!(check(&ring, &token, T0), Err(JwtError::Audience)));
    }

    #[test]
    fn token_from_another_issuer_is_rejected() {
        let ring = ring(T0);
        let mut c = claims(&app(), T0);
        c.iss = "https://globex.example.com".into();
        let token = ring.sign(&c).unwrap();
        assert!(matches!(check(&ring, &token, T0), Err(JwtError::Issuer)));
    }

    #[test]
    fn expired_token_is_rejected() {
        let ring = ring(T0);
        let token = ring.sign(&claims(&app(), T0)).unwrap();
        let exp = T0 + 60;
        assert!(check(&ring, &token, exp + LEEWAY - 1).is_ok());
        assert!(matches!(
            check(&ring, &token, exp + LEEWAY),
            Err(JwtError::Expired)
        ));
        assert!(matches!(
            check(&ring, &token, T0 + 3600),
            Err(JwtError::Expired)
        ));
    }

    #[test]
    fn token_issued_in_the_future_is_rejected() {
        let ring = ring(T0);
        let token = ring.sign(&claims(&app(), T0 + 60)).unwrap();
        assert!(matches!(
            check(&ring, &token, T0),
            Err(JwtError::NotYetValid)
        ));
        assert!(check(&ring, &token, T0 + 60 - LEEWAY).is_ok());
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let ring = ring(T0);
        let token = ring.sign(&claims(&app(), T0)).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut promoted = claims(&app(), T0);
        promoted.roles = vec!["admin".into()];
        let swapped = format!(
            "{}.{}.{}",
            parts[0],
            b64(serde_json::to_vec(&promoted).unwrap()),
            parts[2]
        );
        assert!(matches!(
            check(&ring, &swapped, T0),
            Err(JwtError::Signature)
        ));
        let mut bad_sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        bad_sig[10] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], b64(bad_sig));
        assert!(matches!(
            check(&ring, &flipped, T0),
            Err(JwtError::Signature)
        ));
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let ring = ring(T0);
        let key = ring.active();
        let token = ring.sign(&claims(&app(), T0)).unwrap();
        let (head, sig) = token.rsplit_once('.').unwrap();
        let c = claims(&app(), T0);
        let duplicate_alg = sign_text(
            key,
            &format!(r#"{{"alg":"EdDSA","alg":"none","kid":"{}"}}"#, key.kid()),
            &c,
        );
        let mut array_aud = serde_json::to_value(&c).unwrap();
        array_aud["aud"] = json!([app()]);
        let array_aud = sign_raw(key, &json!({"alg": "EdDSA", "kid": key.kid()}), &array_aud);
        let jws_typ = sign_raw(
            key,
            &json!({"alg": "EdDSA", "typ": "at+jwt", "kid": key.kid()}),
            &c,
        );
        for bad in [
            String::new(),
            head.to_string(),
            format!("{token}."),
            format!("{token}.{sig}"),
            format!("{head}.{sig}="),
            format!("{head}.{sig}A"),
            duplicate_alg,
            array_aud,
            jws_typ,
        ] {
            assert!(
                matches!(check(&ring, &bad, T0), Err(JwtError::Malformed(_))),
                "{bad}"
            );
        }
        let huge = format!("{token}{}", " ".repeat(MAX_TOKEN_LEN));
        assert!(matches!(check(&ring, &huge, T0), Err(JwtError::TooLarge)));
    }

    #[test]
    fn rotated_out_key_verifies_within_grace_and_not_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt-keys.json");
        let sealer = sealer();
        let old = Keyring::create(&path, &sealer, T0).unwrap();
        let mut long_lived = claims(&app(), T0);
        long_lived.exp = T0 + 10 * GRACE;
        let old_token = old.sign(&long_lived).unwrap();

        let rotated_at = T0 + 100;
        let new_kid = Keyring::rotate(&path, &sealer, rotated_at).unwrap();
        let ring = Keyring::load(&path, &sealer).unwrap();
        assert_eq!(ring.active().kid(), new_kid);
        assert_ne!(new_kid, old.active().kid());

        let within = rotated_at + GRACE - 1;
        assert_eq!(ring.published(within, GRACE).len(), 2);
        assert!(check(&ring, &old_token, within).is_ok());

        let after = rotated_at + GRACE;
        let published = ring.published(after, GRACE);
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].kid(), new_kid);
        assert!(matches!(
            check(&ring, &old_token, after),
            Err(JwtError::UnknownKey)
        ));
        // The newest key signs, and what it signs verifies.
        let fresh = ring.sign(&claims(&app(), after)).unwrap();
        assert!(check(&ring, &fresh, after).is_ok());
        assert!(fresh.starts_with(&ring.active().header));
    }

    #[test]
    fn only_keys_within_grace_of_their_successor_are_published() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt-keys.json");
        let sealer = sealer();
        let first = Keyring::create(&path, &sealer, T0).unwrap();
        let second = Keyring::rotate(&path, &sealer, T0 + 10 * GRACE).unwrap();
        let third = Keyring::rotate(&path, &sealer, T0 + 20 * GRACE).unwrap();
        let ring = Keyring::load(&path, &sealer).unwrap();
        let kids = |now: u64| -> Vec<String> {
            ring.published(now, GRACE)
                .iter()
                .map(|k| k.kid().to_string())
                .collect()
        };
        assert_eq!(kids(T0 + 20 * GRACE + 1), [third.clone(), second]);
        assert_eq!(kids(T0 + 21 * GRACE), [third]);
        assert!(!kids(T0 + 20 * GRACE).contains(&first.active().kid().to_string()));
        // A clock that stepped back does not make the new key older than the active one.
        let fourth = Keyring::rotate(&path, &sealer, T0).unwrap();
        assert_eq!(
            Keyring::load(&path, &sealer).unwrap().active().kid(),
            fourth
        );
    }

    #[test]
    fn jwks_holds_only_public_ed25519_keys() {
        let ring = ring(T0);
        let jwks = ring.jwks(T0, GRACE);
        let key = &jwks["keys"][0];
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["crv"], "Ed25519");
        assert_eq!(key["alg"], "EdDSA");
        assert_eq!(key["use"], "sig");
        assert_eq!(key["kid"], ring.active().kid());
        assert!(key.get("d").is_none());
        let text = jwks.to_string();
        assert!(!text.contains(&b64(ring.active().signing.as_bytes())));
    }

    #[test]
    fn keyring_file_does_not_hold_the_private_key_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt-keys.json");
        let ring = Keyring::create(&path, &sealer(), T0).unwrap();
        let bytes = fs::read(&path).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let secret = ring.active().signing.to_bytes();
        assert!(!bytes.windows(32).any(|w| w == secret));
        assert!(!text.contains(&b64(secret)));
        assert!(!text.contains(&base64::engine::general_purpose::STANDARD.encode(secret)));
        assert!(!text.to_lowercase().contains(&hex::encode(secret)));
        assert!(!text.contains(&b64(ring.active().signing.to_keypair_bytes())));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let file: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(file["keys"][0]["kid"], ring.active().kid());
        assert_eq!(file["keys"][0]["alg"], "EdDSA");
        assert!(file["keys"][0]["secret"]
            .as_str()
            .unwrap()
            .starts_with("v1."));
    }

    #[test]
    fn keyring_does_not_open_with_another_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt-keys.json");
        Keyring::create(&path, &sealer(), T0).unwrap();
        assert!(matches!(
            Keyring::load(&path, &sealer()),
            Err(JwtError::Unseal {
                source: KeyError::Open,
                ..
            })
        ));
    }

    #[test]
    fn keyring_survives_a_reload_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt-keys.json");
        let sealer = sealer();
        let made = Keyring::create(&path, &sealer, T0).unwrap();
        let loaded = Keyring::load(&path, &sealer).unwrap();
        assert_eq!(loaded.active().kid(), made.active().kid());
        assert_eq!(loaded.active().created(), T0);
        let token = made.sign(&claims(&app(), T0)).unwrap();
        assert!(check(&loaded, &token, T0).is_ok());
        let before = fs::read(&path).unwrap();
        assert!(matches!(
            Keyring::create(&path, &sealer, T0),
            Err(JwtError::Exists { .. })
        ));
        assert_eq!(fs::read(&path).unwrap(), before);
        assert!(matches!(
            Keyring::load(&dir.path().join("absent.json"), &sealer),
            Err(JwtError::Missing { .. })
        ));
    }

    #[test]
    fn sealed_key_moved_to_another_kid_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt-keys.json");
        let sealer = sealer();
        Keyring::create(&path, &sealer, T0).unwrap();
        Keyring::rotate(&path, &sealer, T0 + 1).unwrap();
        let mut file: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        let first = file["keys"][0]["secret"].clone();
        file["keys"][0]["secret"] = file["keys"][1]["secret"].clone();
        file["keys"][1]["secret"] = first;
        fs::write(&path, file.to_string()).unwrap();
        assert!(matches!(
            Keyring::load(&path, &sealer),
            Err(JwtError::Unseal { .. })
        ));
    }

    #[test]
    fn cache_reuses_a_token_within_half_its_life_and_signs_anew_after() {
        let ring = ring(T0);
        let cache = TokenCache::default();
        let template = claims(&app(), 0);
        let first = cache.get_or_sign(&ring, &template, T0, 60).unwrap();
        assert_eq!(check(&ring, text(&first), T0).unwrap().exp, T0 + 60);
        assert_eq!(
            cache.get_or_sign(&ring, &template, T0 + 30, 60).unwrap(),
            first
        );
        let second = cache.get_or_sign(&ring, &template, T0 + 31, 60).unwrap();
        assert_ne!(second, first);
        assert_eq!(check(&ring, text(&second), T0 + 31).unwrap().iat, T0 + 31);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn cache_keeps_tokens_apart_by_session_and_route() {
        let ring = ring(T0);
        let cache = TokenCache::default();
        let app_token = cache
            .get_or_sign(&ring, &claims(&app(), 0), T0, 60)
            .unwrap();
        let other_route = claims(&audience("acme", "billing"), 0);
        let billing = cache.get_or_sign(&ring, &other_route, T0, 60).unwrap();
        assert_ne!(app_token, billing);
        assert!(matches!(
            check(&ring, text(&billing), T0),
            Err(JwtError::Audience)
        ));
        let mut other_session = claims(&app(), 0);
        other_session.sid = "s-5678".into();
        let theirs = cache.get_or_sign(&ring, &other_session, T0, 60).unwrap();
        assert_eq!(check(&ring, text(&theirs), T0).unwrap().sid, "s-5678");
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn cache_signs_anew_when_the_identity_changes() {
        let ring = ring(T0);
        let cache = TokenCache::default();
        let template = claims(&app(), 0);
        let first = cache.get_or_sign(&ring, &template, T0, 60).unwrap();
        let mut stepped_up = template.clone();
        stepped_up.amr.push("otp".into());
        stepped_up.roles = vec!["admin".into()];
        let second = cache.get_or_sign(&ring, &stepped_up, T0 + 1, 60).unwrap();
        assert_ne!(second, first);
        assert_eq!(
            check(&ring, text(&second), T0 + 1).unwrap().roles,
            ["admin"]
        );
    }

    #[test]
    fn cache_signs_with_the_new_key_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt-keys.json");
        let sealer = sealer();
        let old = Keyring::create(&path, &sealer, T0).unwrap();
        let cache = TokenCache::default();
        let template = claims(&app(), 0);
        cache.get_or_sign(&old, &template, T0, 60).unwrap();
        Keyring::rotate(&path, &sealer, T0 + 1).unwrap();
        let new = Keyring::load(&path, &sealer).unwrap();
        let token = cache.get_or_sign(&new, &template, T0 + 2, 60).unwrap();
        assert!(text(&token).starts_with(&new.active().header));
    }

    #[test]
    fn a_cached_token_goes_only_to_the_subject_it_was_signed_for() {
        let ring = ring(T0);
        let cache = TokenCache::default();
        let template = claims(&app(), 0);
        let token = cache.get_or_sign(&ring, &template, T0, 60).unwrap();
        let who = Subject::of(&template).unwrap();
        let (sid, aud) = (template.sid.as_str(), template.aud.as_str());
        assert_eq!(cache.cached(&ring, sid, aud, T0 + 1, &who), Some(token));
        let admin = ["admin".to_string()];
        let otp = ["pwd".to_string(), "otp".to_string()];
        let others = [
            Subject {
                sub: "mallory",
                ..who
            },
            Subject {
                tenant: "globex",
                ..who
            },
            Subject {
                host: "evil.example",
                ..who
            },
            Subject {
                roles: &admin,
                ..who
            },
            Subject { amr: &otp, ..who },
        ];
        for other in &others {
            assert_eq!(
                cache.cached(&ring, sid, aud, T0 + 1, other),
                None,
                "{other:?}"
            );
        }
        assert_eq!(cache.cached(&ring, "s-other", aud, T0 + 1, &who), None);
        assert_eq!(cache.cached(&ring, sid, "acme/billing", T0 + 1, &who), None);
        assert_eq!(
            cache.cached(&ring, sid, aud, T0 + 31, &who),
            None,
            "past half-life"
        );
    }

    #[test]
    fn cache_forgets_a_session_on_logout() {
        let ring = ring(T0);
        let cache = TokenCache::default();
        let template = claims(&app(), 0);
        let first = cache.get_or_sign(&ring, &template, T0, 60).unwrap();
        cache
            .get_or_sign(&ring, &claims(&audience("acme", "billing"), 0), T0, 60)
            .unwrap();
        assert_eq!(cache.len(), 2);
        cache.invalidate_sid(&template.sid);
        assert!(cache.is_empty());
        assert_ne!(
            cache.get_or_sign(&ring, &template, T0 + 1, 60).unwrap(),
            first
        );
    }

    #[test]
    fn cache_lifetime_is_capped_at_sixty_seconds() {
        let ring = ring(T0);
        let cache = TokenCache::default();
        let token = cache
            .get_or_sign(&ring, &claims(&app(), 0), T0, 3600)
            .unwrap();
        assert_eq!(
            check(&ring, text(&token), T0).unwrap().exp,
            T0 + MAX_TTL_SECS
        );
    }

    #[test]
    fn cache_stays_bounded() {
        let ring = ring(T0);
        let cache = TokenCache::new(64);
        let mut template = claims(&app(), 0);
        for i in 0..1000 {
            template.sid = format!("s-{i}");
            cache.get_or_sign(&ring, &template, T0, 60).unwrap();
            assert!(cache.len() <= 64);
        }
        // Stale entries make room before live ones are dropped.
        for i in 0..1000 {
            template.sid = format!("t-{i}");
            cache.get_or_sign(&ring, &template, T0 + 31, 60).unwrap();
        }
        assert!(cache.len() <= 64);
        assert!(!format!("{cache:?}").contains("eyJ"));
    }

    #[test]
    fn debug_output_holds_no_key_material() {
        let ring = ring(T0);
        let shown = format!("{ring:?}");
        assert!(shown.contains(ring.active().kid()));
        assert!(!shown.contains(&b64(ring.active().signing.as_bytes())));
        assert!(!shown.contains("signing"));
    }
}
