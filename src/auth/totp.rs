//! The TOTP second factor: one-time codes, what enrolment shows (secret, `otpauth://` URI, QR
//! code, key for manual entry), checking a typed code, and single-use recovery codes.
//!
//! Pure functions: the time is passed in (from the [`crate::clock::Clock`]) and nothing here
//! touches the store. Replay protection belongs to the store: [`matching_step`] says which time
//! step a code belongs to, and the store accepts it only if that step is later than the last
//! step the user used, in one atomic check-and-set (RFC 6238 §5.2: accept each code once).
//!
//! Sources: RFC 4226 (HOTP), RFC 6238 (TOTP), RFC 2104 (HMAC), RFC 4648 §6 (base32), the Key
//! Uri Format of Google Authenticator (`otpauth://`), NIST SP 800-63B §5.1.2 (look-up secrets)
//! and §5.1.4–5.1.5 (OTP authenticators).
//!
//! Secrets and codes are never logged, and no error carries one.

use data_encoding::BASE32_NOPAD;
use hmac::digest::core_api::BlockSizeUser;
use hmac::digest::{Digest, Key, KeyInit, Output};
use hmac::{Mac, SimpleHmac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use qrcode::render::svg;
use qrcode::types::QrError;
use qrcode::{EcLevel, QrCode};
use rand::rngs::OsRng;
use rand::RngCore;
use sha1::Sha1;
use sha2::{Sha256, Sha512};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::{Zeroize, Zeroizing};

/// Digits in a code: the standard authenticator apps' setting (RFC 4226 §4 R4: at least 6).
pub const DIGITS: u32 = 6;
/// Seconds per time step: RFC 6238 §5.2 recommends 30.
pub const STEP_SECS: u64 = 30;
/// Time steps accepted either side of now, for clock drift and typing time (RFC 6238 §5.2
/// recommends at most one).
pub const SKEW_STEPS: u64 = 1;
/// Length of a new secret: 160 bits (RFC 4226 §4 R6 recommends 160, NIST SP 800-63B §5.1.4.1
/// asks for at least 112).
pub const SECRET_BYTES: usize = 20;
/// How many recovery codes a user gets at enrolment.
pub const RECOVERY_CODES: usize = 10;

/// RFC 4226 §5.3: implementations extract 6, 7 or 8 digits.
const MIN_DIGITS: u32 = 6;
const MAX_DIGITS: u32 = 8;

/// Crockford's base32 alphabet: digits and lowercase letters without i, l, o and u, so a code
/// read off paper is never ambiguous.
const RECOVERY_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Characters in a recovery code: 12 × 5 = 60 bits (NIST SP 800-63B §5.1.2.1 asks for at least
/// 20 bits from an approved random generator). Under 64 bits, so §5.1.2.2 requires attempts to
/// be rate-limited: recovery codes go through the brute-force limiter like TOTP codes.
const RECOVERY_LEN: usize = 12;
/// Characters between dashes when a recovery code is shown: `xxxx-xxxx-xxxx`.
const RECOVERY_GROUP: usize = 4;
/// Characters between spaces in a key written out for manual entry.
const KEY_GROUP: usize = 4;
/// Longer typed input is not a recovery code however it is spaced; refused before any work.
const MAX_RECOVERY_INPUT: usize = 64;
/// Domain tag at the start of a recovery-code hash, so the digest means nothing elsewhere.
const RECOVERY_HASH_TAG: &[u8] = b"portcullis-recovery-code-v1";

/// RFC 3986 §2.3: everything but the unreserved characters is percent-encoded (spaces as
/// `%20`, as the Key Uri Format asks, never `+`).
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The HMAC hash function; RFC 6238 §1.2 allows these three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA-1: what authenticator apps use, and the only one enrolment offers.
    Sha1,
    /// HMAC-SHA-256.
    Sha256,
    /// HMAC-SHA-512.
    Sha512,
}

/// Why enrolment material could not be made. Never contains a secret or a code.
#[derive(Debug, thiserror::Error)]
pub enum TotpError {
    /// The data does not fit in a QR code.
    #[error("QR code could not be made: {0}")]
    Qr(#[from] QrError),
}

/// RFC 4226 §5.3 HOTP with the RFC 6238 algorithms: HMAC over the 8-byte big-endian counter,
/// dynamic truncation to 31 bits, the last `digits` decimal digits. `digits` outside 6..=8 is
/// brought to the nearest end of that range.
pub fn hotp(secret: &[u8], counter: u64, digits: u32, alg: Algorithm) -> u32 {
    // RFC 4226 §5.1: the counter is 8 bytes, high-order byte first.
    let message = counter.to_be_bytes();
    let snum = match alg {
        Algorithm::Sha1 => truncate(&hmac::<Sha1>(secret, &message)),
        Algorithm::Sha256 => truncate(&hmac::<Sha256>(secret, &message)),
        Algorithm::Sha512 => truncate(&hmac::<Sha512>(secret, &message)),
    };
    snum % 10u32.pow(digits.clamp(MIN_DIGITS, MAX_DIGITS))
}

/// RFC 6238 §4: the HOTP code for the time step holding `unix_secs`.
pub fn totp_at(secret: &[u8], unix_secs: u64, alg: Algorithm, digits: u32) -> u32 {
    hotp(secret, step_at(unix_secs), digits, alg)
}

/// A fresh secret of [`SECRET_BYTES`] from the operating system's random source. Like every
/// `OsRng` draw, panics only if the OS cannot supply randomness, when no secret is safe to make.
pub fn new_secret() -> Zeroizing<Vec<u8>> {
    let mut secret = Zeroizing::new(vec![0u8; SECRET_BYTES]);
    OsRng.fill_bytes(&mut secret);
    secret
}

/// The secret as authenticator apps expect it: RFC 4648 §6 base32, uppercase, no padding.
pub fn base32(secret: &[u8]) -> String {
    BASE32_NOPAD.encode(secret)
}

/// A base32 key in groups of four (`GEZD GNBV …`) for typing into an app by hand; the apps
/// ignore the spaces.
pub fn grouped(secret_b32: &str) -> String {
    let mut out = String::with_capacity(secret_b32.len() + secret_b32.len() / KEY_GROUP);
    for (i, c) in secret_b32.chars().enumerate() {
        if i > 0 && i % KEY_GROUP == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// The Key Uri Format URI for enrolment:
/// `otpauth://totp/<Issuer>:<account>?secret=…&issuer=…&algorithm=SHA1&digits=6&period=30`.
///
/// Issuer and account are percent-encoded (RFC 3986 §2.3), so a space, `&`, `?`, `#` or `/`
/// cannot end the label or add a parameter. A colon inside either is encoded too, but the
/// format forbids it there and some apps split the decoded label at the first colon; the
/// `issuer` parameter, which apps prefer, still carries the exact issuer.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let issuer = utf8_percent_encode(issuer, URI_COMPONENT).to_string();
    let account = utf8_percent_encode(account, URI_COMPONENT);
    format!(
        "otpauth://totp/{issuer}:{account}?secret={}&issuer={issuer}&algorithm=SHA1\
         &digits={DIGITS}&period={STEP_SECS}",
        base32(secret)
    )
}

/// `data` as a QR code in an `<svg>` element for inline use in a page: no XML declaration, no
/// script, no style attribute, no external reference (so a strict CSP needs no exception).
/// Error correction level M (15 % of the code may be lost).
pub fn qr_svg(data: &str) -> Result<String, TotpError> {
    let code = QrCode::with_error_correction_level(data.as_bytes(), EcLevel::M)?;
    let mut svg = code.render::<svg::Color>().min_dimensions(200, 200).build();
    // The renderer starts with `<?xml …?>`, which HTML reads as a bogus comment.
    Ok(match svg.find("<svg") {
        Some(start) if start > 0 => svg.split_off(start),
        _ => svg,
    })
}

/// A code as the user typed it: spaces and other ASCII whitespace anywhere are ignored
/// (`123 456`), and what remains must be exactly [`DIGITS`] ASCII digits. Anything else is `None`.
pub fn parse_code(input: &str) -> Option<u32> {
    let mut code = 0u32;
    let mut count = 0u32;
    for c in input.chars().filter(|c| !c.is_ascii_whitespace()) {
        if !c.is_ascii_digit() || count == DIGITS {
            return None;
        }
        code = code * 10 + (u32::from(c) - u32::from('0'));
        count += 1;
    }
    (count == DIGITS).then_some(code)
}

/// The time step within now ± [`SKEW_STEPS`] whose SHA-1, [`DIGITS`]-digit code is `code`,
/// or `None`.
///
/// Every candidate step is computed and compared in constant time, with no early exit, so the
/// time taken says nothing about which step (if any) matched. If two steps give the same code
/// the later is returned: the store then refuses the code at the earlier step as well.
///
/// The caller must still accept the step only if it is later than the user's last used step,
/// atomically in the store (RFC 6238 §5.2: a verifier must not accept a code twice).
pub fn matching_step(secret: &[u8], code: u32, unix_secs: u64) -> Option<u64> {
    let now = step_at(unix_secs);
    let mut found = Choice::from(0);
    let mut step = 0u64;
    // RFC 6238 §5.2: the validation window is the current step and SKEW_STEPS either side.
    for candidate in now.saturating_sub(SKEW_STEPS)..=now.saturating_add(SKEW_STEPS) {
        let matches = hotp(secret, candidate, DIGITS, Algorithm::Sha1).ct_eq(&code);
        step.conditional_assign(&candidate, matches);
        found |= matches;
    }
    bool::from(found).then_some(step)
}

/// [`RECOVERY_CODES`] distinct recovery codes, each 12 characters (60 bits) from Crockford's
/// base32 alphabet, shown as `xxxx-xxxx-xxxx`. NIST SP 800-63B §5.1.2: look-up secrets from
/// an approved random generator, each usable once. Shown once; only
/// [`hash_recovery_code`] of each is stored. Panics only as [`new_secret`] does.
pub fn new_recovery_codes() -> Vec<Zeroizing<String>> {
    let mut codes: Vec<Zeroizing<String>> = Vec::with_capacity(RECOVERY_CODES);
    let mut random = Zeroizing::new([0u8; RECOVERY_LEN]);
    while codes.len() < RECOVERY_CODES {
        OsRng.fill_bytes(random.as_mut());
        // Sized exactly, so the string never reallocates and leaves an unzeroized copy behind.
        let mut code = Zeroizing::new(String::with_capacity(
            RECOVERY_LEN + RECOVERY_LEN / RECOVERY_GROUP - 1,
        ));
        for (i, byte) in random.iter().enumerate() {
            if i > 0 && i % RECOVERY_GROUP == 0 {
                code.push('-');
            }
            // 256 is a multiple of 32, so the low five bits of a random byte are uniform.
            code.push(char::from(RECOVERY_ALPHABET[usize::from(byte & 0x1f)]));
        }
        // Two equal codes would be one code usable twice. At 60 bits this all but never
        // happens, but excluding it costs nothing.
        if !codes.contains(&code) {
            codes.push(code);
        }
    }
    codes
}

/// A recovery code as the user typed it, in the form that is hashed: lowercase, without
/// dashes and whitespace, and with `i`/`l` read as `1` and `o` as `0` (Crockford's decoding
/// rule, for codes copied by hand). `None` unless exactly 12 characters of the alphabet remain.
pub fn normalize_recovery_code(input: &str) -> Option<Zeroizing<String>> {
    if input.len() > MAX_RECOVERY_INPUT {
        return None;
    }
    let mut code = Zeroizing::new(String::with_capacity(RECOVERY_LEN));
    for c in input.chars() {
        let c = match c.to_ascii_lowercase() {
            '-' => continue,
            c if c.is_ascii_whitespace() => continue,
            'i' | 'l' => '1',
            'o' => '0',
            c if u8::try_from(c).is_ok_and(|b| RECOVERY_ALPHABET.contains(&b)) => c,
            _ => return None,
        };
        if code.len() == RECOVERY_LEN {
            return None;
        }
        code.push(c);
    }
    (code.len() == RECOVERY_LEN).then_some(code)
}

/// The stored form of a recovery code, bound to its tenant and user: lowercase hex of SHA-256
/// over a domain tag, then tenant, user and code each as its length (u64, big-endian) and
/// bytes, so no two different triples hash alike. `normalized` is what
/// [`normalize_recovery_code`] returned.
///
/// Deterministic, so the store can find and delete a used code by its hash in one atomic step
/// (NIST SP 800-63B §5.1.2.2: each look-up secret used successfully only once); the tenant and
/// user act as a unique salt, so one guess tests one user's codes only. The store compares
/// digests, so its timing reveals nothing about codes.
///
/// A known gap: SHA-256 is fast, and §5.1.2.2 asks look-up secrets with fewer than 112 bits of
/// entropy (these have 60) to be hashed with a salted, slow key derivation function. Someone
/// holding a copy of the store could search one user's 2^60 codes offline with enough GPU
/// time; a key kept outside the store (HMAC under a key derived from the master key) would
/// close that.
pub fn hash_recovery_code(tenant: &str, user: &str, normalized: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(RECOVERY_HASH_TAG);
    for part in [tenant, user, normalized] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// RFC 6238 §4.2: T = floor((unix time − T0) / X), with T0 = 0 and X = [`STEP_SECS`].
fn step_at(unix_secs: u64) -> u64 {
    unix_secs / STEP_SECS
}

/// HMAC (RFC 2104) of `message` under `key`. The key is first brought to the hash's block size
/// as RFC 2104 §2 says (hashed if longer, then zero-padded), exactly what the `hmac` crate
/// does for a key of any length; doing it here makes the construction infallible.
fn hmac<D: Digest + BlockSizeUser>(key: &[u8], message: &[u8]) -> Output<D> {
    let mut block = Key::<SimpleHmac<D>>::default();
    let hashed;
    let key = if key.len() > block.len() {
        hashed = D::digest(key);
        hashed.as_slice()
    } else {
        key
    };
    for (to, from) in block.iter_mut().zip(key) {
        *to = *from;
    }
    let mut mac = <SimpleHmac<D> as KeyInit>::new(&block);
    block.as_mut_slice().zeroize();
    mac.update(message);
    mac.finalize().into_bytes()
}

/// RFC 4226 §5.3 dynamic truncation: the low nibble of the last byte is an offset, and the 31
/// bits from there (top bit masked, so the value is the same signed or unsigned) are the code
/// before reduction. Every HMAC here is at least 20 bytes, so offset + 3 ≤ 18 is in range.
fn truncate(hs: &[u8]) -> u32 {
    let offset = usize::from(hs[hs.len() - 1] & 0x0f);
    u32::from_be_bytes([
        hs[offset] & 0x7f,
        hs[offset + 1],
        hs[offset + 2],
        hs[offset + 3],
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::process::Command;

    /// RFC 4226 Appendix D and RFC 6238 Appendix B: the SHA-1 seed.
    const SEED_SHA1: &[u8] = b"12345678901234567890";
    /// RFC 6238 Appendix B's SHA-256 rows only reproduce with this 32-byte seed (its reference
    /// code's), not the 20-byte seed the text names.
    const SEED_SHA256: &[u8] = b"12345678901234567890123456789012";
    /// Likewise the 64-byte seed for the SHA-512 rows.
    const SEED_SHA512: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";
    /// RFC 6238 Appendix B's times.
    const TIMES: [u64; 6] = [
        59,
        1_111_111_109,
        1_111_111_111,
        1_234_567_890,
        2_000_000_000,
        20_000_000_000,
    ];

    fn assert_rfc6238(seed: &[u8], alg: Algorithm, expected: [u32; 6]) {
        for (time, code) in TIMES.into_iter().zip(expected) {
            assert_eq!(totp_at(seed, time, alg, 8), code, "{alg:?} at {time}");
        }
    }

    #[test]
    fn totp_matches_rfc6238_appendix_b_sha1() {
        assert_rfc6238(
            SEED_SHA1,
            Algorithm::Sha1,
            [
                94_287_082, 7_081_804, 14_050_471, 89_005_924, 69_279_037, 65_353_130,
            ],
        );
    }

    #[test]
    fn totp_matches_rfc6238_appendix_b_sha256() {
        assert_rfc6238(
            SEED_SHA256,
            Algorithm::Sha256,
            [
                46_119_246, 68_084_774, 67_062_674, 91_819_424, 90_698_825, 77_737_706,
            ],
        );
    }

    #[test]
    fn totp_matches_rfc6238_appendix_b_sha512() {
        assert_rfc6238(
            SEED_SHA512,
            Algorithm::Sha512,
            [
                90_693_936, 25_091_201, 99_943_326, 93_441_116, 38_618_901, 47_863_826,
            ],
        );
    }

    #[test]
    fn hotp_matches_rfc4226_appendix_d() {
        let expected = [
            755_224, 287_082, 359_152, 969_429, 338_314, 254_676, 287_922, 162_583, 399_871,
            520_489,
        ];
        for (counter, code) in expected.into_iter().enumerate() {
            assert_eq!(
                hotp(SEED_SHA1, counter as u64, DIGITS, Algorithm::Sha1),
                code
            );
        }
    }

    #[test]
    fn digits_outside_six_to_eight_are_clamped() {
        let six = hotp(SEED_SHA1, 0, 6, Algorithm::Sha1);
        let eight = hotp(SEED_SHA1, 0, 8, Algorithm::Sha1);
        assert_eq!(hotp(SEED_SHA1, 0, 0, Algorithm::Sha1), six);
        assert_eq!(hotp(SEED_SHA1, 0, 40, Algorithm::Sha1), eight);
    }

    #[test]
    fn hmac_matches_the_hmac_crate_for_keys_of_any_length() {
        for len in [0, 1, 20, 64, 65, 128, 129, 300] {
            let key: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let ours = hmac::<Sha1>(&key, b"message");
            let mut theirs = <hmac::Hmac<Sha1> as Mac>::new_from_slice(&key).unwrap();
            theirs.update(b"message");
            assert_eq!(
                ours,
                theirs.finalize().into_bytes(),
                "SHA-1, {len}-byte key"
            );
            let ours = hmac::<Sha512>(&key, b"message");
            let mut theirs = <hmac::Hmac<Sha512> as Mac>::new_from_slice(&key).unwrap();
            theirs.update(b"message");
            assert_eq!(
                ours,
                theirs.finalize().into_bytes(),
                "SHA-512, {len}-byte key"
            );
        }
    }

    #[test]
    fn code_one_step_early_or_late_is_accepted() {
        let now = 1_111_111_111;
        let step = now / STEP_SECS;
        for at in [step - 1, step, step + 1] {
            let code = hotp(SEED_SHA1, at, DIGITS, Algorithm::Sha1);
            assert_eq!(matching_step(SEED_SHA1, code, now), Some(at));
        }
    }

    #[test]
    fn code_two_steps_away_is_rejected() {
        let now = 1_111_111_111;
        let step = now / STEP_SECS;
        for at in [step - 2, step + 2] {
            let code = hotp(SEED_SHA1, at, DIGITS, Algorithm::Sha1);
            assert_eq!(matching_step(SEED_SHA1, code, now), None, "step {at}");
        }
        assert_eq!(matching_step(SEED_SHA1, 1_000_000, now), None);
    }

    #[test]
    fn code_shared_by_two_steps_matches_the_later_one() {
        // Found by search: the RFC seed gives 911617 at both counters 910737 and 910738
        // (`oathtool -c 910737 <hex seed>` agrees).
        let (earlier, later) = (910_737, 910_738);
        assert_eq!(hotp(SEED_SHA1, earlier, DIGITS, Algorithm::Sha1), 911_617);
        assert_eq!(hotp(SEED_SHA1, later, DIGITS, Algorithm::Sha1), 911_617);
        for now in [earlier * STEP_SECS, later * STEP_SECS] {
            assert_eq!(matching_step(SEED_SHA1, 911_617, now), Some(later));
        }
    }

    #[test]
    fn first_time_step_has_no_earlier_neighbour() {
        let code = hotp(SEED_SHA1, 0, DIGITS, Algorithm::Sha1);
        assert_eq!(matching_step(SEED_SHA1, code, 0), Some(0));
        let next = hotp(SEED_SHA1, 1, DIGITS, Algorithm::Sha1);
        assert_eq!(matching_step(SEED_SHA1, next, 0), Some(1));
    }

    #[test]
    fn typed_code_with_spaces_is_parsed() {
        assert_eq!(parse_code("123456"), Some(123_456));
        assert_eq!(parse_code("12 34 56"), Some(123_456));
        assert_eq!(parse_code(" 123 456\n"), Some(123_456));
        assert_eq!(parse_code("000042"), Some(42));
    }

    #[test]
    fn typed_code_of_wrong_length_or_with_other_characters_is_rejected() {
        for bad in [
            "",
            "   ",
            "12345",
            "1234567",
            "12345a",
            "abcdef",
            "+12345",
            "-12345",
            "12-345",
            "１２３４５６",
            "١٢٣٤٥٦",
            "1234567890123",
        ] {
            assert_eq!(parse_code(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn new_secret_is_160_random_bits() {
        let a = new_secret();
        let b = new_secret();
        assert_eq!(a.len(), SECRET_BYTES);
        assert_eq!(SECRET_BYTES * 8, 160);
        assert_ne!(a, b);
    }

    #[test]
    fn base32_of_the_rfc_seed_is_what_apps_expect() {
        assert_eq!(base32(SEED_SHA1), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        // A secret that is not a multiple of 5 bytes still has no padding.
        assert_eq!(base32(b"f"), "MY");
    }

    #[test]
    fn key_for_manual_entry_is_grouped_in_fours() {
        assert_eq!(
            grouped("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"),
            "GEZD GNBV GY3T QOJQ GEZD GNBV GY3T QOJQ"
        );
        assert_eq!(grouped("ABCDEF"), "ABCD EF");
        assert_eq!(grouped(""), "");
    }

    #[test]
    fn otpauth_uri_has_the_standard_parameters() {
        assert_eq!(
            otpauth_uri("Acme", "alice@example.com", SEED_SHA1),
            "otpauth://totp/Acme:alice%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=Acme&algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn otpauth_uri_escapes_issuer_and_account() {
        let uri = otpauth_uri("Acme: R&D?#/ Ltd", "bob:x&secret=AAAA", SEED_SHA1);
        assert_eq!(
            uri,
            "otpauth://totp/Acme%3A%20R%26D%3F%23%2F%20Ltd:bob%3Ax%26secret%3DAAAA\
             ?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Acme%3A%20R%26D%3F%23%2F%20Ltd\
             &algorithm=SHA1&digits=6&period=30"
        );
        // One label separator, one query, and only our parameters.
        let label = uri.trim_start_matches("otpauth://totp/");
        assert_eq!(label.matches(':').count(), 1);
        assert_eq!(uri.matches('?').count(), 1);
        assert_eq!(uri.matches("secret=").count(), 1);
        assert!(!uri.contains(' ') && !uri.contains('#'));
        assert!(otpauth_uri("Ünïcode", "x", SEED_SHA1).contains("%C3%9Cn%C3%AFcode"));
    }

    #[test]
    fn qr_svg_is_safe_to_inline_under_a_strict_csp() {
        let svg = qr_svg(&otpauth_uri("Acme", "alice", SEED_SHA1)).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(svg.ends_with("</svg>"));
        for forbidden in [
            "<script", "<?xml", "style", "href", "<image", "<foreign", " on",
        ] {
            assert!(!svg.contains(forbidden), "{forbidden}");
        }
    }

    #[test]
    fn qr_svg_of_too_much_data_is_an_error() {
        let huge = "A".repeat(10_000);
        assert!(matches!(qr_svg(&huge), Err(TotpError::Qr(_))));
    }

    #[test]
    fn ten_unique_recovery_codes_of_the_right_shape() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let unique: HashSet<&str> = codes.iter().map(|c| c.as_str()).collect();
        assert_eq!(unique.len(), RECOVERY_CODES);
        for code in &codes {
            let groups: Vec<&str> = code.split('-').collect();
            assert_eq!(groups.len(), 3, "{}", code.as_str());
            for group in groups {
                assert_eq!(group.len(), 4);
                assert!(group.bytes().all(|b| RECOVERY_ALPHABET.contains(&b)));
            }
            let normalized = normalize_recovery_code(code).unwrap();
            assert_eq!(normalized.as_str(), code.replace('-', ""));
        }
        // 12 characters of a 32-letter alphabet: 60 bits.
        const { assert!(RECOVERY_ALPHABET.len() == 32 && RECOVERY_LEN * 5 >= 60) };
    }

    #[test]
    fn recovery_code_normalization_ignores_case_dashes_and_spaces() {
        let expected = "abcd0123wxyz";
        for typed in [
            "abcd-0123-wxyz",
            "ABCD-0123-WXYZ",
            "abcd 0123 wxyz",
            " AbCd0123WxYz ",
            "abcd-o123-wxyz",
        ] {
            assert_eq!(
                normalize_recovery_code(typed)
                    .as_deref()
                    .map(String::as_str),
                Some(expected),
                "{typed:?}"
            );
        }
        // Crockford's decoding: i and l are read as one, o as zero.
        assert_eq!(
            normalize_recovery_code("ILO0-iloO-0000")
                .as_deref()
                .map(String::as_str),
            Some("110011000000")
        );
    }

    #[test]
    fn malformed_recovery_codes_are_rejected() {
        let too_long = "a".repeat(MAX_RECOVERY_INPUT + 1);
        for bad in [
            "",
            "abcd-0123-wxy",
            "abcd-0123-wxyzz",
            "abcd-0123-wxyu",
            "abcd_0123_wxyz",
            "abcd-0123-wxy!",
            "abcd-0123-wxyé",
            too_long.as_str(),
        ] {
            assert!(normalize_recovery_code(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn recovery_hash_is_bound_to_tenant_and_user() {
        let code = "abcd0123wxyz";
        let base = hash_recovery_code("acme", "alice", code);
        assert_eq!(base.len(), 64);
        assert!(base
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(base, hash_recovery_code("acme", "alice", code));
        assert_ne!(base, hash_recovery_code("globex", "alice", code));
        assert_ne!(base, hash_recovery_code("acme", "bob", code));
        assert_ne!(base, hash_recovery_code("acme", "alice", "abcd0123wxy0"));
        // Length prefixes: the parts cannot shift into one another.
        assert_ne!(
            hash_recovery_code("ab", "c", code),
            hash_recovery_code("a", "bc", code)
        );
    }

    #[test]
    fn recovery_hash_of_typed_code_matches_the_stored_one() {
        let shown = &new_recovery_codes()[0];
        let stored = hash_recovery_code("acme", "alice", &normalize_recovery_code(shown).unwrap());
        let typed = format!(" {} ", shown.to_uppercase().replace('-', " "));
        let entered =
            hash_recovery_code("acme", "alice", &normalize_recovery_code(&typed).unwrap());
        assert_eq!(stored, entered);
    }

    fn oathtool(args: &[&str]) -> String {
        let output = Command::new("oathtool")
            .args(args)
            .output()
            .expect("oathtool must be installed (apt-get install -y oathtool)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    #[test]
    fn codes_agree_with_oathtool() {
        let secret = new_secret();
        let key = base32(&secret);
        for time in std::iter::once(0).chain(TIMES) {
            let now = format!("@{time}");
            let theirs = oathtool(&["--totp", "-b", "-N", &now, &key]);
            let ours = totp_at(&secret, time, Algorithm::Sha1, DIGITS);
            assert_eq!(theirs, format!("{ours:06}"), "at {time}");
            let code = parse_code(&theirs).unwrap();
            assert_eq!(matching_step(&secret, code, time), Some(time / STEP_SECS));
        }
        for (mode, alg, seed) in [
            ("--totp=SHA256", Algorithm::Sha256, SEED_SHA256),
            ("--totp=SHA512", Algorithm::Sha512, SEED_SHA512),
        ] {
            let theirs = oathtool(&[mode, "-b", "-d", "8", "-N", "@1234567890", &base32(seed)]);
            let ours = totp_at(seed, 1_234_567_890, alg, 8);
            assert_eq!(theirs, format!("{ours:08}"), "{mode}");
        }
        let theirs = oathtool(&["-b", "-c", "910737", &key]);
        assert_eq!(
            theirs,
            format!("{:06}", hotp(&secret, 910_737, DIGITS, Algorithm::Sha1))
        );
    }
}
