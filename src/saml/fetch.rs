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

    fn due(&self, tenant: &str, url: &str, refresh: Duration) -> bool {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .get(tenant)
            .is_none_or(|e| e.url != url || e.fetched.elapsed() >= refresh)
    }

    fn put(&self, tenant: &str, url: &str, idp: IdpMetadata) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.insert(
            tenant.to_string(),
            Entry {
                url: url.to_string(),
                idp: Arc::new(idp),
                fetched: Instant::now(),
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
            if !self.due(&t.id, url, *refresh) {
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
                    self.put(&t.id, url, idp);
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
    // The process-wide provider is our allowlist: the fetch negotiates nothing weaker.
    let tls = rustls::ClientConfig::builder()
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
