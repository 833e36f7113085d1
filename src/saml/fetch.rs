//! IdP metadata from an URL: fetched at start and every refresh period, the last good copy
//! kept in memory and on disk (`<data_dir>/saml/<tenant>.xml`), so a restart while the IdP's
//! metadata endpoint is down still signs people in. A fetch that fails or returns metadata
//! that does not pass [`IdpMetadata::parse`] changes nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::config::{MetadataSource, Tenant};

use super::metadata::MAX_METADATA_BYTES;
use super::IdpMetadata;

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

struct Entry {
    url: String,
    idp: Arc<IdpMetadata>,
    fetched: Instant,
}

/// The IdP metadata of tenants whose metadata comes from an URL.
#[derive(Default)]
pub struct IdpDirectory {
    entries: RwLock<HashMap<String, Entry>>,
}

impl IdpDirectory {
    /// The tenant's IdP, from its policy (file) or the last good fetch (URL).
    pub fn resolve(&self, tenant: &Tenant) -> Option<Arc<IdpMetadata>> {
        match &tenant.saml.as_ref()?.metadata {
            MetadataSource::File { idp, .. } => Some(Arc::clone(idp)),
            MetadataSource::Url { url, .. } => {
                let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
                entries
                    .get(&tenant.id)
                    .filter(|e| e.url == *url)
                    .map(|e| Arc::clone(&e.idp))
            }
        }
    }

    fn due(&self, tenant: &str, url: &str, refresh: Duration, now: Instant) -> bool {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .get(tenant)
            .is_none_or(|e| e.url != url || now.saturating_duration_since(e.fetched) >= refresh)
    }

    fn put(&self, tenant: &str, url: &str, idp: IdpMetadata, now: Instant) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.insert(
            tenant.to_string(),
            Entry {
                url: url.to_string(),
                idp: Arc::new(idp),
                fetched: now,
            },
        );
    }

    /// Load the copies kept on disk (at start), for tenants whose URL still matches.
    pub fn load_cached(&self, tenants: &[Tenant], data_dir: &Path) {
        for t in tenants {
            let Some(MetadataSource::Url { url, .. }) = t.saml.as_ref().map(|s| &s.metadata) else {
                continue;
            };
            let (xml_path, url_path) = cache_paths(data_dir, &t.id);
            let same_url = std::fs::read_to_string(&url_path).is_ok_and(|u| u.trim() == url);
            let Ok(xml) = std::fs::read_to_string(&xml_path) else {
                continue;
            };
            match IdpMetadata::parse(&xml) {
                Ok(idp) if same_url => {
                    let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
                    entries.insert(
                        t.id.clone(),
                        Entry {
                            url: url.clone(),
                            idp: Arc::new(idp),
                            // Cached copies are refreshed at the first chance.
                            fetched: Instant::now()
                                .checked_sub(Duration::from_secs(365 * 86_400))
                                .unwrap_or_else(Instant::now),
                        },
                    );
                }
                _ => {}
            }
        }
    }

    /// Fetch every URL-sourced tenant whose copy is missing or older than its refresh period.
    pub async fn refresh_due(&self, tenants: &[Tenant], data_dir: &Path) {
        self.refresh_due_at(tenants, data_dir, Instant::now()).await;
    }

    async fn refresh_due_at(&self, tenants: &[Tenant], data_dir: &Path, now: Instant) {
        for t in tenants {
            let Some(MetadataSource::Url {
                url,
                ca_file,
                refresh,
            }) = t.saml.as_ref().map(|s| &s.metadata)
            else {
                continue;
            };
            // A failed fetch is retried on the next pass (a minute), not after `refresh`.
            if !self.due(&t.id, url, *refresh, now) {
                continue;
            }
            match fetch(url, ca_file.as_deref()).await.and_then(|xml| {
                let idp = IdpMetadata::parse(&xml)?;
                Ok((xml, idp))
            }) {
                Ok((xml, idp)) => {
                    tracing::info!(tenant = %t.id, entity_id = %idp.entity_id, "IdP metadata fetched");
                    let (xml_path, url_path) = cache_paths(data_dir, &t.id);
                    if let Err(e) = write_cache(&xml_path, &url_path, &xml, url) {
                        tracing::warn!(tenant = %t.id, "cannot keep IdP metadata on disk: {e}");
                    }
                    self.put(&t.id, url, idp, now);
                }
                Err(e) => {
                    tracing::warn!(tenant = %t.id, url = %url, "IdP metadata not updated: {e}");
                }
            }
        }
    }
}

fn cache_paths(data_dir: &Path, tenant: &str) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("saml");
    (
        dir.join(format!("{tenant}.xml")),
        dir.join(format!("{tenant}.url")),
    )
}

fn write_cache(xml_path: &Path, url_path: &Path, xml: &str, url: &str) -> std::io::Result<()> {
    if let Some(dir) = xml_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = xml_path.with_extension("xml.tmp");
    std::fs::write(&tmp, xml)?;
    std::fs::rename(&tmp, xml_path)?;
    std::fs::write(url_path, url)
}

/// GET `url` (https with the system roots plus `ca_file`; http only for loopback, as the
/// config allows), at most [`MAX_METADATA_BYTES`], no redirects off https.
pub async fn fetch(url: &str, ca_file: Option<&Path>) -> Result<String, String> {
    crate::config::check_metadata_url(url)?;
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(native) = rustls_native_certs::load_native_certs() {
        for cert in native {
            let _ = roots.add(cert);
        }
    }
    if let Some(path) = ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    // Our allowlist, named here rather than taken from the process default (which a CLI
    // command or a test may not have installed): the fetch negotiates nothing weaker.
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(crate::tls::crypto::provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() >= 3 || attempt.url().scheme() != "https" {
                attempt.stop()
            } else {
                attempt.follow()
            }
        }))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("fetch failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("fetch answered {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("fetch failed: {e}"))?
    {
        if body.len() + chunk.len() > MAX_METADATA_BYTES {
            return Err(format!(
                "metadata is larger than {MAX_METADATA_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| "metadata is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use base64::Engine as _;

    use super::*;
    use crate::config::SamlPolicy;
    use crate::saml::metadata::fixtures::{cert_b64, idp_xml, key_descriptor};

    const REFRESH: Duration = Duration::from_secs(3600);

    /// A loopback HTTP server answering every request with the current (status, body).
    struct MetadataServer {
        url: String,
        answer: Arc<Mutex<(u16, String)>>,
        hits: Arc<AtomicUsize>,
    }

    impl MetadataServer {
        fn start(body: &str) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let url = format!(
                "http://127.0.0.1:{}/metadata",
                listener.local_addr().expect("addr").port()
            );
            let answer = Arc::new(Mutex::new((200, body.to_string())));
            let hits = Arc::new(AtomicUsize::new(0));
            let (a, h) = (Arc::clone(&answer), Arc::clone(&hits));
            std::thread::spawn(move || {
                for mut stream in listener.incoming().flatten() {
                    let mut request = [0u8; 4096];
                    let _ = stream.read(&mut request);
                    h.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = a.lock().expect("answer").clone();
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} X\r\ncontent-type: application/xml\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
            Self { url, answer, hits }
        }

        fn serve(&self, status: u16, body: &str) {
            *self.answer.lock().expect("answer") = (status, body.to_string());
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    fn tenant(url: &str) -> Tenant {
        Tenant {
            id: "acme".into(),
            display_name: "Acme".into(),
            hosts: vec!["acme.localhost".into()],
            routes: vec![],
            session: Default::default(),
            password: Default::default(),
            mfa: Default::default(),
            audit_retention: Duration::from_secs(90 * 86_400),
            login: Default::default(),
            saml: Some(SamlPolicy {
                metadata: MetadataSource::Url {
                    url: url.into(),
                    ca_file: None,
                    refresh: REFRESH,
                },
                sign_requests: false,
                allow_idp_initiated: false,
                clock_skew: Duration::from_secs(60),
                username_attribute: None,
                groups_attribute: None,
                role_map: Default::default(),
                default_roles: vec![],
                jit_provisioning: true,
                logout_redirect: false,
                nameid_format: None,
            }),
            source: "acme.toml".into(),
        }
    }

    fn metadata(cert: &str) -> String {
        idp_xml(&key_descriptor(cert), false)
    }

    /// The DER of the one signing certificate the directory holds for the tenant.
    fn signing_cert(dir: &IdpDirectory, t: &Tenant) -> Option<Vec<u8>> {
        let idp = dir.resolve(t)?;
        assert_eq!(idp.signing_certs.len(), 1);
        Some(idp.signing_certs[0].clone())
    }

    fn der(b64: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64")
    }

    #[tokio::test]
    async fn metadata_is_fetched_kept_on_disk_and_refetched_only_when_due() {
        let (old, new) = (cert_b64(2048), cert_b64(2048));
        let server = MetadataServer::start(&metadata(&old));
        let data = tempfile::tempdir().expect("tempdir");
        let tenants = [tenant(&server.url)];
        let dir = IdpDirectory::default();
        let t0 = Instant::now();

        assert_eq!(
            signing_cert(&dir, &tenants[0]),
            None,
            "nothing before the fetch"
        );
        dir.refresh_due_at(&tenants, data.path(), t0).await;
        assert_eq!(signing_cert(&dir, &tenants[0]), Some(der(&old)));
        let on_disk = std::fs::read_to_string(data.path().join("saml/acme.xml")).expect("copy");
        assert!(on_disk.contains(&old), "the fetched copy is on disk");

        // The IdP rolls its key; nothing is fetched before the refresh period is over.
        server.serve(200, &metadata(&new));
        dir.refresh_due_at(&tenants, data.path(), t0 + REFRESH / 2)
            .await;
        assert_eq!(server.hits(), 1, "not fetched again before it is due");
        assert_eq!(signing_cert(&dir, &tenants[0]), Some(der(&old)));

        dir.refresh_due_at(&tenants, data.path(), t0 + REFRESH)
            .await;
        assert_eq!(server.hits(), 2);
        assert_eq!(signing_cert(&dir, &tenants[0]), Some(der(&new)));
        let on_disk = std::fs::read_to_string(data.path().join("saml/acme.xml")).expect("copy");
        assert!(on_disk.contains(&new), "the disk copy follows");
    }

    #[tokio::test]
    async fn a_failed_or_refused_fetch_keeps_the_last_good_copy_and_retries() {
        let good = cert_b64(2048);
        let server = MetadataServer::start(&metadata(&good));
        let data = tempfile::tempdir().expect("tempdir");
        let tenants = [tenant(&server.url)];
        let dir = IdpDirectory::default();
        let t0 = Instant::now();
        dir.refresh_due_at(&tenants, data.path(), t0).await;

        let mut at = t0;
        for (status, body) in [
            (200, idp_xml("", false)),        // no signing certificate
            (200, metadata(&cert_b64(1024))), // weak key
            (200, format!("<!DOCTYPE x>{}", metadata(&cert_b64(2048)))),
            (200, "not xml".to_string()),
            (500, metadata(&cert_b64(2048))),
            (200, "x".repeat(MAX_METADATA_BYTES + 1)),
        ] {
            server.serve(status, &body);
            at += REFRESH;
            let hits = server.hits();
            dir.refresh_due_at(&tenants, data.path(), at).await;
            assert_eq!(server.hits(), hits + 1, "fetched when due ({status})");
            assert_eq!(
                signing_cert(&dir, &tenants[0]),
                Some(der(&good)),
                "a bad answer changes nothing ({status}, {} bytes)",
                body.len()
            );
            let on_disk = std::fs::read_to_string(data.path().join("saml/acme.xml")).expect("copy");
            assert!(on_disk.contains(&good), "the disk copy is kept");
        }
        // A failed fetch is retried on the next pass, not a refresh period later.
        let hits = server.hits();
        dir.refresh_due_at(&tenants, data.path(), at).await;
        assert_eq!(server.hits(), hits + 1, "retried at once");
    }

    #[tokio::test]
    async fn a_restart_uses_the_disk_copy_for_the_same_url_only() {
        let cert = cert_b64(2048);
        let server = MetadataServer::start(&metadata(&cert));
        let data = tempfile::tempdir().expect("tempdir");
        let tenants = [tenant(&server.url)];
        IdpDirectory::default()
            .refresh_due_at(&tenants, data.path(), Instant::now())
            .await;

        // The IdP's endpoint is down after the restart: the disk copy signs people in.
        server.serve(503, "");
        let restarted = IdpDirectory::default();
        restarted.load_cached(&tenants, data.path());
        assert_eq!(signing_cert(&restarted, &tenants[0]), Some(der(&cert)));
        let hits = server.hits();
        restarted.refresh_due(&tenants, data.path()).await;
        assert_eq!(
            server.hits(),
            hits + 1,
            "a cached copy is refreshed at once"
        );
        assert_eq!(signing_cert(&restarted, &tenants[0]), Some(der(&cert)));

        // The policy now names another URL: the old IdP's copy is not used for it.
        let moved = [tenant("http://127.0.0.1:9/elsewhere")];
        let other = IdpDirectory::default();
        other.load_cached(&moved, data.path());
        assert_eq!(signing_cert(&other, &moved[0]), None);
        assert_eq!(signing_cert(&restarted, &moved[0]), None);
    }
}
