//! Passwords: the per-tenant policy a new password must meet, and argon2id hashing run off the
//! async workers with bounded concurrency.
//!
//! Sources: NIST SP 800-63B-4 §3.1.1.2 (password verifiers: length, blocklist, no composition
//! rules, no truncation); OWASP Password Storage Cheat Sheet and RFC 9106 (argon2id with
//! m = 19 MiB, t = 2, p = 1); OWASP ASVS V2.2 and CWE-208 (unknown users cost the same as wrong
//! passwords).
//!
//! Passwords travel as [`Zeroizing`] strings, are never logged, and no error carries one.
//! Before any check or hash a password is put in Unicode Normalization Form KC (SP 800-63B-4
//! §3.1.1.2 asks for NFKC or NFKD), so the same password typed on two keyboards — precomposed
//! or decomposed accents, full-width or ligature forms — is the same password. Nothing else
//! changes it: no trimming, no truncation, no case folding.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::rngs::OsRng;
use rand::RngCore;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

/// The longest password accepted, in characters. Fixed: long enough for any passphrase,
/// short enough that nobody is surprised by a silent cut (there is none) or a slow hash.
pub const MAX_LENGTH: usize = 128;

/// The lowest minimum length a tenant may configure: NIST SP 800-63B-4 §3.1.1.2 allows 8 only
/// when the password is one factor of several (tenant MFA `required`).
pub const MIN_LENGTH_FLOOR: usize = 8;

/// The default minimum length; see [`PasswordPolicy`].
pub const DEFAULT_MIN_LENGTH: usize = 15;

// OWASP Password Storage Cheat Sheet, first argon2id option; RFC 9106 §4 version 0x13.
const M_COST_KIB: u32 = 19_456;
const T_COST: u32 = 2;
const P_COST: u32 = 1;
const SALT_LEN: usize = 16;
const OUTPUT_LEN: usize = 32;

const BLOCKLIST: &str = include_str!("common-passwords.txt");

/// What a tenant demands of a new password.
///
/// The default minimum is 15 characters. NIST SP 800-63B-4 §3.1.1.2 requires at least 15 when
/// the password is the only factor and at least 8 when it is used with a second factor. A tenant
/// whose MFA is `off` or `optional` lets a password alone sign in, so 15 is the only default that
/// is correct in every MFA mode; a tenant with MFA `required` may lower it to
/// [`MIN_LENGTH_FLOOR`]. Long passphrases are easy to remember, and there are no composition
/// rules (§3.1.1.2: verifiers SHALL NOT impose them).
///
/// Length is counted in Unicode code points (`str::chars().count()`), as §3.1.1.2 asks, of the
/// NFKC form (see [`stabilize`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Fewest characters accepted.
    pub min_length: usize,
    /// Most characters accepted; always [`MAX_LENGTH`].
    pub max_length: usize,
    /// After this long a password must be changed at the next sign-in; `None` never expires
    /// (NIST advises against periodic changes, so this is off by default).
    pub max_age: Option<Duration>,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_length: DEFAULT_MIN_LENGTH,
            max_length: MAX_LENGTH,
            max_age: None,
        }
    }
}

/// Why a new password was refused. The messages are written for the person choosing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordRejected {
    /// Empty, or nothing but whitespace.
    #[error("Enter a password.")]
    Empty,
    /// Fewer characters than the policy's minimum.
    #[error("Use at least {min} characters.")]
    TooShort {
        /// The minimum.
        min: usize,
    },
    /// More characters than the maximum; refused rather than cut.
    #[error("Use at most {max} characters.")]
    TooLong {
        /// The maximum.
        max: usize,
    },
    /// The password is the username.
    #[error("Your password must not be your username.")]
    SameAsUsername,
    /// On the common-password list, or a trivially guessable run.
    #[error("This password is too common. Choose another one.")]
    Common,
}

impl PasswordRejected {
    /// A stable machine-readable code for JSON errors and audit reasons.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "password_empty",
            Self::TooShort { .. } => "password_too_short",
            Self::TooLong { .. } => "password_too_long",
            Self::SameAsUsername => "password_is_username",
            Self::Common => "password_common",
        }
    }
}

impl PasswordPolicy {
    /// Whether `password` may be set for `username`.
    pub fn check(&self, password: &str, username: &str) -> Result<(), PasswordRejected> {
        let password = stabilize(password);
        let password = password.as_str();
        if password.trim().is_empty() {
            return Err(PasswordRejected::Empty);
        }
        let length = password.chars().count();
        if length > self.max_length {
            return Err(PasswordRejected::TooLong {
                max: self.max_length,
            });
        }
        if length < self.min_length {
            return Err(PasswordRejected::TooShort {
                min: self.min_length,
            });
        }
        let lower = Zeroizing::new(password.to_lowercase());
        // SP 800-63B-4 §3.1.1.2: refuse context-specific words such as the username.
        let username = username.trim();
        if !username.is_empty() && *lower == username.to_lowercase() {
            return Err(PasswordRejected::SameAsUsername);
        }
        if is_common_lowercase(&lower) {
            return Err(PasswordRejected::Common);
        }
        Ok(())
    }

    /// Whether a password last changed at `changed_at` must be changed now (both times since
    /// the Unix epoch, from the [`crate::clock::Clock`]).
    pub fn is_expired(&self, changed_at: Duration, now: Duration) -> bool {
        self.max_age
            .is_some_and(|max_age| now.saturating_sub(changed_at) >= max_age)
    }
}

/// `password` in Unicode Normalization Form KC: what is checked, hashed and compared.
///
/// SP 800-63B-4 §3.1.1.2: verifiers SHOULD normalize (NFKC or NFKD) before hashing, so that
/// one password has one byte form whatever produced it. NFKC maps compatibility forms to their
/// plain letters (`ﬁ` → `fi`, full-width `Ａ` → `A`) and composes accents (`e` + U+0301 →
/// `é`); ASCII is unchanged.
pub fn stabilize(password: &str) -> Zeroizing<String> {
    let nfkc = icu_normalizer::ComposingNormalizerBorrowed::new_nfkc();
    Zeroizing::new(nfkc.normalize(password).into_owned())
}

/// Whether two passwords are the same password (equal once normalized).
pub fn same_password(a: &str, b: &str) -> bool {
    *stabilize(a) == *stabilize(b)
}

/// Whether `password` is on the bundled common-password list (case-insensitively), or is one
/// repeated character or an ascending or descending run such as `123456789012` or `zyxwvu`
/// (SP 800-63B §5.1.1.2 names "repetitive or sequential characters" among values to refuse).
pub fn is_common(password: &str) -> bool {
    is_common_lowercase(&Zeroizing::new(stabilize(password).to_lowercase()))
}

fn is_common_lowercase(lower: &str) -> bool {
    if blocklist().contains(lower) || is_run(lower) {
        return true;
    }
    // NIST SP 800-63B §5.1.1.2 names dictionary words and sequential characters: a listed
    // password with digits or symbols tacked on either end ("password123456789",
    // "2024!dragon") is no stronger than the listed one.
    let core = lower.trim_matches(|c: char| c.is_ascii_digit() || c.is_ascii_punctuation());
    core.len() >= 4 && core.len() < lower.len() && blocklist().contains(core)
}

/// How many passwords the bundled list holds.
pub fn blocklist_len() -> usize {
    blocklist().len()
}

fn blocklist() -> &'static HashSet<&'static str> {
    static LIST: OnceLock<HashSet<&'static str>> = OnceLock::new();
    LIST.get_or_init(|| {
        BLOCKLIST
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect()
    })
}

/// One character repeated, or every step +1 or every step −1 (digits wrap 9 → 0, so
/// `1234567890` and `123456789012` are runs; letters do not wrap).
fn is_run(lower: &str) -> bool {
    let mut chars = lower.chars();
    let Some(mut previous) = chars.next() else {
        return false;
    };
    let mut direction = None;
    for next in chars {
        let Some(delta) = step(previous, next) else {
            return false;
        };
        if *direction.get_or_insert(delta) != delta {
            return false;
        }
        previous = next;
    }
    direction.is_some()
}

fn step(from: char, to: char) -> Option<i8> {
    if from == to {
        return Some(0);
    }
    if let (Some(a), Some(b)) = (from.to_digit(10), to.to_digit(10)) {
        return match (b + 10 - a) % 10 {
            1 => Some(1),
            9 => Some(-1),
            _ => None,
        };
    }
    if from.is_ascii_lowercase() && to.is_ascii_lowercase() {
        return match i16::from(to as u8) - i16::from(from as u8) {
            1 => Some(1),
            -1 => Some(-1),
            _ => None,
        };
    }
    None
}

/// Why a password could not be hashed. Never contains the password.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The operating system's random source failed.
    #[error("random source unavailable")]
    Random,
    /// argon2 refused the parameters or the input.
    #[error("password hashing failed: {0}")]
    Hash(#[from] argon2::password_hash::Error),
    /// The blocking worker did not run or did not finish.
    #[error("password worker failed")]
    Worker,
}

fn argon2id() -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, Some(OUTPUT_LEN))
        .map_err(argon2::password_hash::Error::from)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hash a password (its NFKC form, see [`stabilize`]) with argon2id (m = 19456 KiB, t = 2,
/// p = 1) and a fresh 16-byte salt from the OS; the result is a PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`). Blocks for tens of milliseconds: async
/// code uses [`Hasher::hash`].
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    hash_bytes(stabilize(password).as_bytes())
}

fn hash_bytes(password: &[u8]) -> Result<String, PasswordError> {
    let mut salt = [0u8; SALT_LEN];
    OsRng
        .try_fill_bytes(&mut salt)
        .map_err(|_| PasswordError::Random)?;
    let salt = SaltString::encode_b64(&salt)?;
    let hash = argon2id()?.hash_password(password, &salt)?;
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `phc`. The comparison is constant-time (argon2's
/// verifier). A malformed string, or a hash weaker than our minimum (not argon2id v19,
/// m < 19456, t < 2, salt < 16 bytes, output < 32 bytes), never matches. Blocks: async code uses
/// [`Hasher::verify`].
///
/// The NFKC form is tried first. A hash stored before passwords were normalized was made from
/// the bytes as typed, so when those differ from the NFKC form they are tried second: how many
/// hashes run depends only on the password submitted, never on the account.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    if !meets_minimum(&hash) {
        return false;
    }
    let matches = |bytes: &[u8]| Argon2::default().verify_password(bytes, &hash).is_ok();
    let stable = stabilize(password);
    matches(stable.as_bytes()) || (*stable != password && matches(password.as_bytes()))
}

/// Whether a stored hash should be replaced (after a successful sign-in, while the password is
/// at hand) because it was not made with exactly today's algorithm and parameters.
pub fn needs_rehash(phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return true;
    };
    let Some((params, salt_len)) = strength(&hash) else {
        return true;
    };
    !(params.m_cost() == M_COST_KIB
        && params.t_cost() == T_COST
        && params.p_cost() == P_COST
        && params.output_len() == Some(OUTPUT_LEN)
        && salt_len >= SALT_LEN)
}

fn meets_minimum(hash: &PasswordHash<'_>) -> bool {
    strength(hash).is_some_and(|(params, salt_len)| {
        params.m_cost() >= M_COST_KIB
            && params.t_cost() >= T_COST
            && params.output_len().is_some_and(|len| len >= OUTPUT_LEN)
            && salt_len >= SALT_LEN
    })
}

/// The parameters and salt length of an argon2id v19 hash; `None` for anything else.
fn strength(hash: &PasswordHash<'_>) -> Option<(Params, usize)> {
    if Algorithm::try_from(hash.algorithm).ok()? != Algorithm::Argon2id
        || hash.version != Some(Version::V0x13.into())
    {
        return None;
    }
    let params = Params::try_from(hash).ok()?;
    let mut buf = [0u8; 64];
    let salt_len = hash.salt?.decode_b64(&mut buf).ok()?.len();
    Some((params, salt_len))
}

/// Runs hashing and verification on tokio's blocking pool, at most `max_concurrent` at a time,
/// so sign-in floods cannot starve the proxy's async workers or exhaust memory (each hash
/// holds 19 MiB). Cheap to clone; clones share the bound.
#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// Made once at startup from a random password nobody knows; verified against when there is
    /// no usable stored hash, so unknown and disabled users cost the same as a wrong password
    /// (CWE-208).
    dummy: Arc<str>,
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("available_permits", &self.available_permits())
            .finish_non_exhaustive()
    }
}

impl Hasher {
    /// A hasher running at most `max_concurrent` (at least 1) hashes at once. Computes the
    /// dummy hash, so it blocks for one hash.
    pub fn new(max_concurrent: usize) -> Result<Self, PasswordError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        OsRng
            .try_fill_bytes(secret.as_mut())
            .map_err(|_| PasswordError::Random)?;
        let dummy = hash_bytes(secret.as_ref())?;
        Ok(Self {
            permits: Arc::new(Semaphore::new(
                max_concurrent.clamp(1, Semaphore::MAX_PERMITS),
            )),
            dummy: Arc::from(dummy),
        })
    }

    /// How many more hashes could start now; for metrics and tests.
    pub fn available_permits(&self) -> usize {
        self.permits.available_permits()
    }

    /// [`hash_password`] off the async workers.
    pub async fn hash(&self, password: Zeroizing<String>) -> Result<String, PasswordError> {
        self.run_blocking(move || hash_password(&password)).await?
    }

    /// [`verify_password`] off the async workers. `phc` is the user's stored hash, or `None`
    /// for an unknown or disabled user: then, as for a malformed or too-weak hash, the password
    /// is verified against the dummy hash and the answer is `false`, taking the same time.
    pub async fn verify(&self, password: Zeroizing<String>, phc: Option<String>) -> bool {
        let dummy = Arc::clone(&self.dummy);
        let usable = phc.filter(|phc| PasswordHash::new(phc).is_ok_and(|h| meets_minimum(&h)));
        let outcome = self
            .run_blocking(move || match usable {
                Some(phc) => verify_password(&password, &phc),
                None => {
                    // Same work, fixed answer: even the dummy's own password must not pass.
                    let _ = verify_password(&password, &dummy);
                    false
                }
            })
            .await;
        match outcome {
            Ok(matched) => matched,
            Err(error) => {
                tracing::error!(%error, "password verification did not run");
                false
            }
        }
    }

    /// Run `work` on the blocking pool once a permit is free. The permit moves into the
    /// blocking task, so it is held until the work ends even if the caller stops waiting (a
    /// client that disconnects does not free a slot while its hash still runs).
    async fn run_blocking<T, F>(&self, work: F) -> Result<T, PasswordError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| PasswordError::Worker)?;
        tokio::task::spawn_blocking(move || {
            let outcome = work();
            drop(permit);
            outcome
        })
        .await
        .map_err(|_| PasswordError::Worker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const SAMPLE: &str = "correct horse battery staple";

    /// One real hash shared by the tests that only read it: argon2 is slow in debug builds.
    fn sample_hash() -> &'static str {
        static HASH: OnceLock<String> = OnceLock::new();
        HASH.get_or_init(|| hash_password(SAMPLE).expect("hash"))
    }

    /// A hasher reusing the sample hash as its dummy, to skip one hash per test.
    fn cheap_hasher(max_concurrent: usize) -> Hasher {
        Hasher {
            permits: Arc::new(Semaphore::new(max_concurrent)),
            dummy: Arc::from(sample_hash()),
        }
    }

    fn policy(min_length: usize) -> PasswordPolicy {
        PasswordPolicy {
            min_length,
            ..PasswordPolicy::default()
        }
    }

    /// A weak but well-formed argon2 hash of `password`.
    fn hash_with(algorithm: Algorithm, m: u32, t: u32, password: &str) -> String {
        let params = Params::new(m, t, 1, Some(OUTPUT_LEN)).expect("params");
        let salt = SaltString::encode_b64(&[7u8; SALT_LEN]).expect("salt");
        Argon2::new(algorithm, Version::V0x13, params)
            .hash_password(password.as_bytes(), &salt)
            .expect("hash")
            .to_string()
    }

    #[test]
    fn hash_round_trip_verifies_the_right_password_only() {
        assert!(verify_password(SAMPLE, sample_hash()));
        assert!(!verify_password(
            "correct horse battery stapler",
            sample_hash()
        ));
        assert!(!needs_rehash(sample_hash()));
    }

    #[test]
    fn hash_uses_argon2id_v19_with_the_promised_parameters() {
        let phc = sample_hash();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let hash = PasswordHash::new(phc).expect("phc");
        let mut buf = [0u8; 64];
        let salt = hash.salt.expect("salt").decode_b64(&mut buf).expect("b64");
        assert_eq!(salt.len(), 16);
        assert_eq!(hash.hash.expect("output").len(), 32);
    }

    #[test]
    fn each_hash_gets_a_fresh_salt() {
        let again = hash_password(SAMPLE).expect("hash");
        assert_ne!(again, sample_hash());
        let salt = |phc: &str| {
            PasswordHash::new(phc)
                .expect("phc")
                .salt
                .map(|s| s.to_string())
        };
        assert_ne!(salt(&again), salt(sample_hash()));
    }

    #[test]
    fn long_passwords_are_not_truncated() {
        let first = "a".repeat(99) + "b";
        let second = "a".repeat(99) + "c";
        let phc = hash_password(&first).expect("hash");
        assert!(verify_password(&first, &phc));
        assert!(!verify_password(&second, &phc));
    }

    #[test]
    fn weaker_hashes_are_refused_even_with_the_right_password() {
        let weak = hash_with(Algorithm::Argon2id, 1024, 1, SAMPLE);
        assert!(!verify_password(SAMPLE, &weak));
        assert!(needs_rehash(&weak));
        let argon2i = hash_with(Algorithm::Argon2i, 64, 2, SAMPLE);
        assert!(!verify_password(SAMPLE, &argon2i));
    }

    #[test]
    fn minimum_strength_checks_algorithm_version_and_costs() {
        let good = sample_hash();
        let variants = [
            good.replacen("$argon2id$", "$argon2i$", 1),
            good.replacen("$argon2id$", "$argon2d$", 1),
            good.replacen("$v=19$", "$v=16$", 1),
            good.replacen("m=19456", "m=19455", 1),
            good.replacen("t=2", "t=1", 1),
        ];
        for phc in &variants {
            let hash = PasswordHash::new(phc).expect("phc");
            assert!(!meets_minimum(&hash), "{phc}");
            assert!(needs_rehash(phc), "{phc}");
        }
        let stronger = good.replacen("t=2", "t=3", 1);
        assert!(meets_minimum(&PasswordHash::new(&stronger).expect("phc")));
        assert!(needs_rehash(&stronger));
    }

    #[test]
    fn malformed_hashes_never_match_and_never_panic() {
        let good = sample_hash();
        let cases = [
            String::new(),
            "not a hash".to_owned(),
            "$argon2id$v=19$m=19456,t=2,p=1$".to_owned(),
            good[..good.len() - 5].to_owned(),
            good.replacen("m=19456", "m=abc", 1),
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW".to_owned(),
        ];
        for phc in &cases {
            assert!(!verify_password(SAMPLE, phc), "{phc}");
            assert!(needs_rehash(phc), "{phc}");
        }
    }

    #[test]
    fn blocklist_holds_at_least_ten_thousand_lowercase_entries() {
        assert!(blocklist_len() >= 10_000, "{}", blocklist_len());
        assert!(blocklist().iter().all(|p| *p == p.to_lowercase()));
    }

    #[test]
    fn common_passwords_are_rejected_case_insensitively() {
        let policy = policy(MIN_LENGTH_FLOOR);
        for password in ["password", "Password", "PASSWORD", "iloveyou", "qwertyuiop"] {
            assert_eq!(
                policy.check(password, "alice"),
                Err(PasswordRejected::Common),
                "{password}"
            );
        }
    }

    #[test]
    fn repeated_and_sequential_runs_are_rejected_as_common() {
        let policy = policy(12);
        for password in [
            "123456789012",
            "aaaaaaaaaaaa",
            "abcdefghijkl",
            "987654321098",
        ] {
            assert_eq!(
                policy.check(password, "alice"),
                Err(PasswordRejected::Common),
                "{password}"
            );
        }
        assert!(!is_common("1234567890ab"));
    }

    #[test]
    fn minimum_length_is_enforced_in_characters() {
        let policy = PasswordPolicy::default();
        assert_eq!(policy.min_length, 15);
        assert_eq!(
            policy.check("plum tree chair", "alice"),
            Ok(()),
            "15 characters"
        );
        assert_eq!(
            policy.check("plum tree chai", "alice"),
            Err(PasswordRejected::TooShort { min: 15 })
        );
        // 15 code points in 28 bytes: counted as 15.
        let cyrillic = "пароль для почт";
        assert_eq!(cyrillic.len(), 28);
        assert_eq!(policy.check(cyrillic, "alice"), Ok(()));
    }

    #[test]
    fn maximum_length_is_128_characters() {
        let policy = PasswordPolicy::default();
        let base = "plum tree chair ";
        let at_max: String = base.chars().cycle().take(128).collect();
        let over: String = base.chars().cycle().take(129).collect();
        assert_eq!(policy.check(&at_max, "alice"), Ok(()));
        assert_eq!(
            policy.check(&over, "alice"),
            Err(PasswordRejected::TooLong { max: 128 })
        );
    }

    #[test]
    fn the_username_is_not_a_password() {
        let policy = policy(MIN_LENGTH_FLOOR);
        assert_eq!(
            policy.check("Marguerite.Okafor", "marguerite.okafor"),
            Err(PasswordRejected::SameAsUsername)
        );
    }

    #[test]
    fn empty_and_whitespace_passwords_are_rejected() {
        let policy = policy(0);
        assert_eq!(policy.check("", "alice"), Err(PasswordRejected::Empty));
        assert_eq!(
            policy.check(" \t\n ", "alice"),
            Err(PasswordRejected::Empty)
        );
    }

    #[test]
    fn listed_password_with_affixes_is_common() {
        assert!(is_common("password123456789"));
        assert!(is_common("Dragon!!2024"));
        assert!(is_common("123456monkey"));
        assert!(!is_common("correct horse battery staple"));
    }

    #[test]
    fn composition_is_not_required() {
        assert_eq!(
            PasswordPolicy::default().check("lowercase words only here", "alice"),
            Ok(())
        );
    }

    #[test]
    fn max_age_expires_passwords() {
        let day = Duration::from_secs(86_400);
        let never = PasswordPolicy::default();
        assert!(!never.is_expired(Duration::ZERO, day * 10_000));
        let policy = PasswordPolicy {
            max_age: Some(day * 90),
            ..PasswordPolicy::default()
        };
        assert!(!policy.is_expired(day, day * 90));
        assert!(policy.is_expired(day, day * 91));
    }

    #[test]
    fn rejection_messages_never_echo_the_password() {
        let policy = policy(MIN_LENGTH_FLOOR);
        for password in ["qwertyuiop", "xk3", "Marguerite.Okafor"] {
            let err = policy
                .check(password, "marguerite.okafor")
                .expect_err("rejected");
            assert!(!err.to_string().contains(password), "{err}");
        }
    }

    #[tokio::test]
    async fn hasher_verifies_known_wrong_and_unknown_users() {
        let hasher = Hasher::new(2).expect("hasher");
        let password = || Zeroizing::new(SAMPLE.to_owned());
        let stored = Some(sample_hash().to_owned());
        assert!(hasher.verify(password(), stored).await);
        let wrong = Zeroizing::new("not the password".to_owned());
        assert!(!hasher.verify(wrong, Some(sample_hash().to_owned())).await);
        assert!(!hasher.verify(password(), None).await);
        assert_eq!(hasher.available_permits(), 2);
    }

    #[tokio::test]
    async fn hasher_hashes_off_the_async_workers() {
        let hasher = cheap_hasher(1);
        let phc = hasher
            .hash(Zeroizing::new(SAMPLE.to_owned()))
            .await
            .expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    }

    #[tokio::test]
    async fn the_dummy_hash_never_matches_even_its_own_password() {
        let hasher = cheap_hasher(1);
        // The dummy here is the sample hash, so SAMPLE is its password.
        assert!(!hasher.verify(Zeroizing::new(SAMPLE.to_owned()), None).await);
        let weak = Some(hash_with(Algorithm::Argon2id, 1024, 1, SAMPLE));
        assert!(!hasher.verify(Zeroizing::new(SAMPLE.to_owned()), weak).await);
    }

    #[tokio::test]
    async fn hashing_concurrency_is_bounded() {
        let hasher = cheap_hasher(1);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..4)
            .map(|_| {
                let (hasher, in_flight, peak) =
                    (hasher.clone(), Arc::clone(&in_flight), Arc::clone(&peak));
                tokio::spawn(async move {
                    hasher
                        .run_blocking(move || {
                            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(20));
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                        })
                        .await
                })
            })
            .collect();
        for job in jobs {
            job.await.expect("joined").expect("ran");
        }
        assert_eq!(peak.load(Ordering::SeqCst), 1);
        assert_eq!(hasher.available_permits(), 1);
    }

    #[tokio::test]
    async fn an_abandoned_hash_keeps_its_permit_until_it_ends() {
        let hasher = cheap_hasher(1);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let abandoned = tokio::time::timeout(
            Duration::from_millis(50),
            hasher.run_blocking(move || wait.recv().is_ok()),
        )
        .await;
        assert!(abandoned.is_err(), "the caller gave up");
        assert_eq!(hasher.available_permits(), 0, "the work still runs");
        release.send(()).expect("release");
        for _ in 0..200 {
            if hasher.available_permits() == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the permit was not returned");
    }

    // U+00E9 precomposed, and e + U+0301 COMBINING ACUTE ACCENT.
    const CAFE_NFC: &str = "caf\u{e9} au lait, sans sucre";
    const CAFE_NFD: &str = "cafe\u{301} au lait, sans sucre";

    #[test]
    fn stabilize_is_nfkc() {
        // Examples from UAX #15 and the Unicode character database.
        assert_eq!(*stabilize("e\u{301}"), "\u{e9}");
        assert_eq!(*stabilize("\u{fb01}sh"), "fish"); // LATIN SMALL LIGATURE FI
        assert_eq!(*stabilize("\u{ff21}\u{ff42}\u{ff43}"), "Abc"); // full-width
        assert_eq!(*stabilize("x\u{b2}"), "x2"); // SUPERSCRIPT TWO
        assert_eq!(*stabilize("\u{212b}"), "\u{c5}"); // ANGSTROM SIGN
                                                      // Nothing else changes: no trimming, no case folding.
        assert_eq!(*stabilize(" Tr0ub4dor&3 "), " Tr0ub4dor&3 ");
        assert_eq!(*stabilize(CAFE_NFC), CAFE_NFC);
    }

    #[test]
    fn one_password_typed_two_ways_verifies_either_way() {
        let hash = hash_password(CAFE_NFD).expect("hash");
        assert!(verify_password(CAFE_NFC, &hash));
        assert!(verify_password(CAFE_NFD, &hash));
        assert!(!verify_password("cafe au lait, sans sucre", &hash));
        let wide = hash_password("\u{ff43}orrect horse battery").expect("hash");
        assert!(verify_password("correct horse battery", &wide));
        assert!(
            !verify_password("Correct horse battery", &wide),
            "no case folding"
        );
    }

    #[test]
    fn a_hash_made_before_normalization_still_verifies() {
        // Stored from the raw bytes of a decomposed password, as earlier versions did.
        let legacy = hash_bytes(CAFE_NFD.as_bytes()).expect("hash");
        assert!(verify_password(CAFE_NFD, &legacy));
        assert!(!verify_password("cafe\u{300} au lait, sans sucre", &legacy));
        assert!(!verify_password("caf au lait, sans sucre", &legacy));
    }

    #[test]
    fn policy_counts_and_compares_the_normalized_password() {
        let policy = PasswordPolicy::default();
        // 14 accented letters: 28 code points as typed decomposed, 14 once composed.
        let short = "e\u{301}".repeat(14);
        assert_eq!(
            policy.check(&short, "alice"),
            Err(PasswordRejected::TooShort { min: 15 })
        );
        // The username spelled in full-width letters is still the username.
        assert_eq!(
            policy.check(
                "\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}alicealicealice",
                "alicealicealicealice"
            ),
            Err(PasswordRejected::SameAsUsername)
        );
        assert!(same_password(CAFE_NFC, CAFE_NFD));
        assert!(!same_password(CAFE_NFC, "cafe au lait, sans sucre"));
    }

    #[test]
    fn compatibility_forms_do_not_slip_past_the_blocklist() {
        // "password" in full-width letters, and "qwerty" with a ligature-free twin.
        let wide: String = "password"
            .chars()
            .map(|c| char::from_u32(c as u32 - 0x61 + 0xff41).expect("full-width"))
            .collect();
        assert!(is_common(&wide), "{wide}");
        assert_eq!(
            PasswordPolicy {
                min_length: 8,
                ..PasswordPolicy::default()
            }
            .check(&wide, "alice"),
            Err(PasswordRejected::Common)
        );
    }
}
