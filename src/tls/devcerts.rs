//! Development certificates: a local CA and leaf certificates for the demo hosts.
//! Never used unless a config names them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The hosts `portcullis dev-certs` makes certificates for by default.
pub const DEMO_HOSTS: [&str; 3] = ["acme.localhost", "globex.localhost", "localhost"];

/// Why dev certificates could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    /// Key or certificate generation failed.
    #[error("generating certificates failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Write `ca.crt`, `ca.key` and `<host>.crt` (leaf then CA) / `<host>.key` for each host into
/// `out`. Key files are created readable by the owner only.
pub fn write(out: &Path, hosts: &[String]) -> Result<Vec<PathBuf>, DevCertError> {
    create_dir(out)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Portcullis development CA");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let mut written = vec![
        write_file(&out.join("ca.crt"), ca_cert.pem().as_bytes(), false)?,
        write_file(&out.join("ca.key"), ca_key.serialize_pem().as_bytes(), true)?,
    ];
    for host in hosts {
        let mut params = CertificateParams::new(vec![host.clone()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host.as_str());
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
        let chain = format!("{}{}", cert.pem(), ca_cert.pem());
        written.push(write_file(
            &out.join(format!("{host}.crt")),
            chain.as_bytes(),
            false,
        )?);
        written.push(write_file(
            &out.join(format!("{host}.key")),
            key.serialize_pem().as_bytes(),
            true,
        )?);
    }
    Ok(written)
}

fn create_dir(dir: &Path) -> Result<(), DevCertError> {
    std::fs::create_dir_all(dir).map_err(|source| DevCertError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<PathBuf, DevCertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| DevCertError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certs_load_as_matching_chain_and_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), &["acme.localhost".to_string()]).expect("written");
        let key = crate::tls::load_certified_key(
            &dir.path().join("acme.localhost.crt"),
            &dir.path().join("acme.localhost.key"),
        )
        .expect("loads");
        assert_eq!(key.cert.len(), 2, "leaf and CA");
    }

    #[test]
    fn a_key_from_another_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), &["a.localhost".into(), "b.localhost".into()]).expect("written");
        let mixed = crate::tls::load_certified_key(
            &dir.path().join("a.localhost.crt"),
            &dir.path().join("b.localhost.key"),
        );
        assert!(matches!(mixed, Err(crate::tls::CertError::Mismatch(_))));
    }
}
