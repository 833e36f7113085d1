//! The operator API bearer token: 256 random bits in a 0600 file made by `portcullis keygen`.
//! The gateway keeps only its SHA-256 in memory and compares in constant time.

use std::path::Path;

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::file::{create_private, read_capped};
use super::KeyError;

/// Longest token file read.
const MAX_LEN: u64 = 256;

/// Make a new token file at `path` (never overwrites).
pub fn create(path: &Path) -> Result<(), KeyError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng
        .try_fill_bytes(bytes.as_mut())
        .map_err(KeyError::Random)?;
    let text =
        Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref()));
    create_private(path, format!("{}\n", text.as_str()).as_bytes()).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => KeyError::Exists {
            path: path.to_path_buf(),
        },
        _ => KeyError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })
}

/// Read the token (for the CLI, which presents it).
pub fn read(path: &Path) -> Result<Zeroizing<String>, KeyError> {
    let (bytes, meta) = read_capped(path, MAX_LEN).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => KeyError::Missing {
            path: path.to_path_buf(),
        },
        _ => KeyError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| KeyError::Format {
            path: path.to_path_buf(),
        })?
        .trim();
    if text.len() < 32 {
        return Err(KeyError::Format {
            path: path.to_path_buf(),
        });
    }
    Ok(Zeroizing::new(text.to_string()))
}

/// What the server keeps: the token's digest.
#[derive(Clone)]
pub struct TokenDigest([u8; 32]);

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(**redacted**)")
    }
}

impl TokenDigest {
    /// The digest of the token in `path`.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        Ok(Self(Sha256::digest(read(path)?.as_bytes()).into()))
    }

    /// Whether `presented` is the token (constant time).
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(digest.ct_eq(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_private_and_matches_only_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.token");
        create(&path).expect("created");
        assert!(
            matches!(create(&path), Err(KeyError::Exists { .. })),
            "never overwritten"
        );
        let token = read(&path).expect("read");
        let digest = TokenDigest::load(&path).expect("digest");
        assert!(digest.matches(&token));
        assert!(!digest.matches("wrong"));
        assert!(!digest.matches(""));
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        assert!(matches!(read(&path), Err(KeyError::Permissions { .. })));
    }
}
