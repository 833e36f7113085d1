//! Encryption at rest: the master key file and the [`Sealer`] that encrypts every secret field
//! (TOTP secrets, signing keys, …) before it reaches the store.
//!
//! A sealed value is `v1.<base64url(nonce ‖ ciphertext ‖ tag)>`, AES-256-GCM with a fresh
//! random 96-bit nonce each time and the [`FieldBinding`] (tenant, user, field) as associated
//! data, so a ciphertext copied to another tenant, user or field does not open.
//!
//! The master key lives in its own file (`portcullis keygen`), separate from the store: a copy
//! of the database alone reveals no secret.

pub(crate) mod file;
pub mod token;

use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of the master key: AES-256.
const KEY_LEN: usize = 32;
/// NIST SP 800-38D §5.2.1.1: 96-bit IVs are the recommended length.
const NONCE_LEN: usize = 12;
/// GCM tag length; the full 128 bits (NIST SP 800-38D §5.2.1.2).
const TAG_LEN: usize = 16;
/// The first and only line of a master key file, before the base64url key.
const FILE_PREFIX: &str = "portcullis-master-key-v1:";
/// Prefix of every sealed value; names the format so it can change later.
const SEALED_PREFIX: &str = "v1.";
/// Domain tag at the start of the associated data, so these bytes mean nothing elsewhere.
const AAD_TAG: &[u8] = b"portcullis-aad-v1";
/// A master key file is one short line; anything much larger is not one.
const MAX_KEY_FILE_LEN: u64 = 256;

/// Why a key could not be made, loaded or used. No message ever contains key material or
/// the file's content.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file is not there.
    #[error("master key file {} does not exist; create it with `portcullis keygen`", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be read or written.
    #[error("cannot access key file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// Creating a key would replace an existing one (and lose everything sealed under it).
    #[error("key file {} already exists; refusing to overwrite it", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The key file is readable or writable by group or others.
    #[error(
        "master key file {} is accessible to group or others (mode {mode:04o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a master key file of this version.
    #[error(
        "master key file {} is not a valid key (expected one line `{FILE_PREFIX}<32 bytes, base64url>`)",
        path.display()
    )]
    Format {
        /// The file.
        path: PathBuf,
    },
    /// The operating system's random source failed.
    #[error("the operating system gave no randomness")]
    Random(#[source] rand::Error),
    /// The sealed value is not `v1.<base64url>` of a plausible length.
    #[error("sealed value is malformed")]
    Malformed,
    /// Authentication failed: another key, another binding, or tampering.
    #[error("sealed value does not open with this key for this tenant, user and field")]
    Open,
    /// The plaintext exceeds what one GCM message may hold.
    #[error("value too large to seal")]
    TooLarge,
}

/// The data-encryption key: 32 random bytes, wiped from memory when dropped. Not `Clone`, so
/// copies do not spread.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    bytes: [u8; KEY_LEN],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(**redacted**)")
    }
}

impl MasterKey {
    /// A new random key from the operating system's CSPRNG.
    pub fn generate() -> Result<MasterKey, KeyError> {
        let mut key = MasterKey {
            bytes: [0; KEY_LEN],
        };
        OsRng
            .try_fill_bytes(&mut key.bytes)
            .map_err(KeyError::Random)?;
        Ok(key)
    }

    /// Make a new key and write it to `path` (mode 0600). Refuses to replace an existing
    /// file: that would orphan every value sealed under the old key.
    pub fn create(path: &Path) -> Result<MasterKey, KeyError> {
        let key = MasterKey::generate()?;
        let mut line = Zeroizing::new(String::with_capacity(FILE_PREFIX.len() + 44));
        line.push_str(FILE_PREFIX);
        URL_SAFE_NO_PAD.encode_string(key.bytes, &mut line);
        line.push('\n');
        file::create_private(path, line.as_bytes()).map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                KeyError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Ok(key)
    }

    /// Read the key at `path`. Refuses a file that group or others may access, and anything
    /// that is not exactly one `portcullis-master-key-v1:` line holding 32 bytes.
    pub fn load(path: &Path) -> Result<MasterKey, KeyError> {
        let (content, meta) =
            file::read_capped(path, MAX_KEY_FILE_LEN).map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => KeyError::Missing {
                    path: path.to_path_buf(),
                },
                io::ErrorKind::InvalidData => KeyError::Format {
                    path: path.to_path_buf(),
                },
                _ => KeyError::Io {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
        // Like ssh with private keys: a key others can read may already be theirs.
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        Self::parse(&content).ok_or_else(|| KeyError::Format {
            path: path.to_path_buf(),
        })
    }

    /// The key from the file's content: the prefix, exactly 32 bytes of unpadded base64url,
    /// and at most one trailing newline.
    fn parse(content: &[u8]) -> Option<MasterKey> {
        let line = content.strip_suffix(b"\n").unwrap_or(content);
        let encoded = line.strip_prefix(FILE_PREFIX.as_bytes())?;
        let decoded = Zeroizing::new(URL_SAFE_NO_PAD.decode(encoded).ok()?);
        let mut key = MasterKey {
            bytes: [0; KEY_LEN],
        };
        if decoded.len() != KEY_LEN {
            return None;
        }
        key.bytes.copy_from_slice(&decoded);
        Some(key)
    }
}

/// Where a sealed value belongs. It is the GCM associated data: opening succeeds only with the
/// same tenant, user and field it was sealed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldBinding<'a> {
    /// The tenant id; `_operator` for the gateway's own secrets.
    pub tenant: &'a str,
    /// The user id within the tenant; empty for secrets that belong to no user.
    pub user: &'a str,
    /// What the value is, e.g. `totp-secret` or `jwt-signing-key/<kid>`.
    pub field: &'a str,
}

impl FieldBinding<'_> {
    /// The associated data: the domain tag, then each part as its length (u64, big-endian)
    /// and bytes. Length prefixes make it injective: ("a|b", "c") and ("a", "b|c") differ.
    fn aad(&self) -> Vec<u8> {
        let parts = [self.tenant, self.user, self.field];
        let len = AAD_TAG.len() + parts.iter().map(|p| 8 + p.len()).sum::<usize>();
        let mut aad = Vec::with_capacity(len);
        aad.extend_from_slice(AAD_TAG);
        for part in parts {
            aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

/// Seals and opens secret fields under the master key.
pub struct Sealer {
    cipher: Aes256Gcm,
    /// A separate key for lookup digests, derived from the master key so the two uses never
    /// share a key (NIST SP 800-108 style: HMAC(master, label)).
    mac_key: zeroize::Zeroizing<[u8; 32]>,
}

/// HMAC-SHA-256 (RFC 2104).
fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    match <Hmac<sha2::Sha256> as Mac>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().into()
        }
        Err(_) => [0; 32],
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(**redacted**)")
    }
}

impl Sealer {
    /// A sealer using `key`.
    pub fn new(key: &MasterKey) -> Sealer {
        Sealer {
            // A borrowed view of the key, not a copy that would outlive `MasterKey`'s zeroizing.
            cipher: Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(&key.bytes)),
            mac_key: zeroize::Zeroizing::new(hmac_sha256(
                &key.bytes,
                b"portcullis-lookup-mac-key-v1",
            )),
        }
    }

    /// A keyed digest (HMAC-SHA-256, hex) for values that must be found by equality but must
    /// not be guessable from a copy of the store alone — recovery codes, whose 60 bits are
    /// below NIST SP 800-63B §5.1.2.2's 112-bit bar for a plain hash.
    pub fn lookup_digest(&self, data: &[u8]) -> String {
        hex::encode(hmac_sha256(self.mac_key.as_ref(), data))
    }

    /// Encrypt `plaintext` for `binding`: `v1.<base64url(nonce ‖ ciphertext ‖ tag)>`.
    ///
    /// NIST SP 800-38D §8.2.2: a random 96-bit nonce per message from a CSPRNG. With one key
    /// the collision bound allows 2^32 seals, far beyond the number of secret fields.
    pub fn seal(&self, plaintext: &[u8], binding: &FieldBinding) -> Result<String, KeyError> {
        let mut buf = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        buf.resize(NONCE_LEN, 0);
        OsRng
            .try_fill_bytes(&mut buf[..NONCE_LEN])
            .map_err(KeyError::Random)?;
        buf.extend_from_slice(plaintext);
        let (nonce, body) = buf.split_at_mut(NONCE_LEN);
        // Encrypting in place overwrites the copied plaintext; no stray copy is left behind.
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(nonce), &binding.aad(), body)
            .map_err(|_| KeyError::TooLarge)?;
        buf.extend_from_slice(&tag);
        let mut sealed = String::with_capacity(SEALED_PREFIX.len() + buf.len().div_ceil(3) * 4);
        sealed.push_str(SEALED_PREFIX);
        URL_SAFE_NO_PAD.encode_string(&buf, &mut sealed);
        Ok(sealed)
    }

    /// Decrypt a value sealed for `binding`. Fails with [`KeyError::Open`] for another key,
    /// another tenant, user or field, or any change to the sealed text.
    pub fn open(
        &self,
        sealed: &str,
        binding: &FieldBinding,
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let encoded = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or(KeyError::Malformed)?;
        let raw = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| KeyError::Malformed)?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(KeyError::Malformed);
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut plaintext = Zeroizing::new(ciphertext.to_vec());
        // aes-gcm checks the tag before decrypting, so a forgery never yields plaintext.
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                &binding.aad(),
                &mut plaintext,
                aes_gcm::Tag::from_slice(tag),
            )
            .map_err(|_| KeyError::Open)?;
        Ok(plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const ALICE_TOTP: FieldBinding = FieldBinding {
        tenant: "acme",
        user: "alice",
        field: "totp-secret",
    };

    fn sealer() -> Sealer {
        Sealer::new(&MasterKey::generate().unwrap())
    }

    fn write_mode(path: &Path, content: &[u8], mode: u32) {
        fs::write(path, content).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn sealed_field_round_trips() {
        let sealer = sealer();
        let sealed = sealer.seal(b"JBSWY3DPEHPK3PXP", &ALICE_TOTP).unwrap();
        assert!(sealed.starts_with("v1."));
        assert!(!sealed.contains("JBSWY3DPEHPK3PXP"));
        assert_eq!(
            &*sealer.open(&sealed, &ALICE_TOTP).unwrap(),
            b"JBSWY3DPEHPK3PXP"
        );
        let empty = sealer.seal(b"", &ALICE_TOTP).unwrap();
        assert!(sealer.open(&empty, &ALICE_TOTP).unwrap().is_empty());
    }

    #[test]
    fn ciphertext_copied_to_another_tenant_does_not_open() {
        let sealer = sealer();
        let sealed = sealer.seal(b"secret", &ALICE_TOTP).unwrap();
        let other = FieldBinding {
            tenant: "globex",
            ..ALICE_TOTP
        };
        assert!(matches!(sealer.open(&sealed, &other), Err(KeyError::Open)));
    }

    #[test]
    fn ciphertext_copied_to_another_user_does_not_open() {
        let sealer = sealer();
        let sealed = sealer.seal(b"secret", &ALICE_TOTP).unwrap();
        let other = FieldBinding {
            user: "mallory",
            ..ALICE_TOTP
        };
        assert!(matches!(sealer.open(&sealed, &other), Err(KeyError::Open)));
    }

    #[test]
    fn ciphertext_copied_to_another_field_does_not_open() {
        let sealer = sealer();
        let sealed = sealer.seal(b"secret", &ALICE_TOTP).unwrap();
        let other = FieldBinding {
            field: "recovery-codes",
            ..ALICE_TOTP
        };
        assert!(matches!(sealer.open(&sealed, &other), Err(KeyError::Open)));
    }

    #[test]
    fn binding_parts_cannot_be_shifted_across_the_separator() {
        let left = FieldBinding {
            tenant: "a|b",
            user: "c",
            field: "f",
        };
        let right = FieldBinding {
            tenant: "a",
            user: "b|c",
            field: "f",
        };
        assert_ne!(left.aad(), right.aad());
        let sealer = sealer();
        let sealed = sealer.seal(b"secret", &left).unwrap();
        assert!(matches!(sealer.open(&sealed, &right), Err(KeyError::Open)));
    }

    #[test]
    fn tampered_ciphertext_does_not_open() {
        let sealer = sealer();
        let sealed = sealer.seal(b"some secret value", &ALICE_TOTP).unwrap();
        let raw = URL_SAFE_NO_PAD.decode(&sealed[3..]).unwrap();
        // A flipped bit in the nonce, the ciphertext and the tag.
        for at in [0, NONCE_LEN + 2, raw.len() - 1] {
            let mut bad = raw.clone();
            bad[at] ^= 0x01;
            let bad = format!("v1.{}", URL_SAFE_NO_PAD.encode(&bad));
            assert!(matches!(
                sealer.open(&bad, &ALICE_TOTP),
                Err(KeyError::Open)
            ));
        }
        let truncated = format!("v1.{}", URL_SAFE_NO_PAD.encode(&raw[..raw.len() - 1]));
        assert!(sealer.open(&truncated, &ALICE_TOTP).is_err());
        for garbage in ["", "v1.", "v2.AAAA", "v1.!!!!", "v1.AAAA", &sealed[3..]] {
            assert!(matches!(
                sealer.open(garbage, &ALICE_TOTP),
                Err(KeyError::Malformed)
            ));
        }
    }

    #[test]
    fn sealing_the_same_value_twice_gives_different_ciphertexts() {
        let sealer = sealer();
        let a = sealer.seal(b"secret", &ALICE_TOTP).unwrap();
        let b = sealer.seal(b"secret", &ALICE_TOTP).unwrap();
        assert_ne!(a, b);
        assert_ne!(a[3..19], b[3..19], "fresh nonce each time");
    }

    #[test]
    fn value_sealed_under_another_master_key_does_not_open() {
        let sealed = sealer().seal(b"secret", &ALICE_TOTP).unwrap();
        assert!(matches!(
            sealer().open(&sealed, &ALICE_TOTP),
            Err(KeyError::Open)
        ));
    }

    #[test]
    fn key_file_is_created_owner_only_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let key = MasterKey::create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(FILE_PREFIX) && text.ends_with('\n'));
        assert_eq!(text.lines().count(), 1);
        let loaded = MasterKey::load(&path).unwrap();
        assert_eq!(key.bytes, loaded.bytes);
        // Only the key file itself is left, no temporary.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn key_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        MasterKey::create(&path).unwrap();
        let before = fs::read(&path).unwrap();
        assert!(matches!(
            MasterKey::create(&path),
            Err(KeyError::Exists { .. })
        ));
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    #[test]
    fn key_file_readable_by_group_or_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        MasterKey::create(&path).unwrap();
        let content = fs::read(&path).unwrap();
        for mode in [0o640, 0o604, 0o644, 0o660, 0o606] {
            write_mode(&path, &content, mode);
            let err = MasterKey::load(&path).unwrap_err();
            assert!(matches!(err, KeyError::Permissions { .. }), "{mode:o}");
            assert!(err.to_string().contains("chmod 600"));
        }
        write_mode(&path, &content, 0o400);
        assert!(MasterKey::load(&path).is_ok());
    }

    #[test]
    fn key_file_of_wrong_length_or_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let short = format!("{FILE_PREFIX}{}\n", URL_SAFE_NO_PAD.encode([7u8; 31]));
        let long = format!("{FILE_PREFIX}{}\n", URL_SAFE_NO_PAD.encode([7u8; 33]));
        let padded = format!("{FILE_PREFIX}{}=\n", URL_SAFE_NO_PAD.encode([7u8; 32]));
        let other_version = format!(
            "portcullis-master-key-v2:{}\n",
            URL_SAFE_NO_PAD.encode([7u8; 32])
        );
        let two_lines = format!("{FILE_PREFIX}{}\n\n", URL_SAFE_NO_PAD.encode([7u8; 32]));
        let huge = "A".repeat(4096);
        for content in [
            short,
            long,
            padded,
            other_version,
            two_lines,
            huge,
            String::new(),
        ] {
            write_mode(&path, content.as_bytes(), 0o600);
            let err = MasterKey::load(&path).unwrap_err();
            assert!(matches!(err, KeyError::Format { .. }));
            // The message names the file, never its content.
            assert!(!err.to_string().contains("BwcH"));
        }
        let good = format!("{FILE_PREFIX}{}", URL_SAFE_NO_PAD.encode([7u8; 32]));
        write_mode(&path, good.as_bytes(), 0o600);
        assert_eq!(MasterKey::load(&path).unwrap().bytes, [7u8; 32]);
    }

    #[test]
    fn missing_key_file_names_keygen() {
        let dir = tempfile::tempdir().unwrap();
        let err = MasterKey::load(&dir.path().join("absent.key")).unwrap_err();
        assert!(matches!(err, KeyError::Missing { .. }));
        assert!(err.to_string().contains("portcullis keygen"));
    }

    #[test]
    fn debug_output_redacts_the_key() {
        let key = MasterKey::generate().unwrap();
        assert_eq!(format!("{key:?}"), "MasterKey(**redacted**)");
        assert_eq!(format!("{:?}", Sealer::new(&key)), "Sealer(**redacted**)");
    }
}
