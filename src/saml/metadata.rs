//! IdP metadata in, SP metadata out.

use std::str::FromStr;

use base64::Engine as _;
use samael::metadata::{EntityDescriptor, HTTP_REDIRECT_BINDING};
use samael::service_provider::ServiceProvider;

use super::{has_doctype, xml_escape, SpUrls};

/// Largest IdP metadata document accepted (aggregates of thousands of IdPs are not supported:
/// a tenant names its own IdP).
pub const MAX_METADATA_BYTES: usize = 1024 * 1024;

/// What we need from an IdP's metadata, checked.
#[derive(Clone, PartialEq, Eq)]
pub struct IdpMetadata {
    /// The IdP's entity ID: the only accepted Issuer.
    pub entity_id: String,
    /// SingleSignOnService, HTTP-Redirect binding.
    pub sso_url: String,
    /// SingleLogoutService, HTTP-Redirect binding, if the IdP has one.
    pub slo_url: Option<String>,
    /// Signing certificates (DER); at least one.
    pub signing_certs: Vec<Vec<u8>>,
    /// samael's parsed view of the document, kept so each response is checked without parsing
    /// the metadata again.
    descriptor: EntityDescriptor,
}

impl std::fmt::Debug for IdpMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdpMetadata")
            .field("entity_id", &self.entity_id)
            .field("sso_url", &self.sso_url)
            .field("slo_url", &self.slo_url)
            .field("signing_certs", &self.signing_certs.len())
            .finish_non_exhaustive()
    }
}

impl IdpMetadata {
    /// Parse and check an IdP metadata document (an `EntityDescriptor` with an
    /// `IDPSSODescriptor`). Refuses metadata without a signing certificate: samael would then
    /// skip signature checks entirely.
    pub fn parse(xml: &str) -> Result<IdpMetadata, String> {
        if xml.len() > MAX_METADATA_BYTES {
            return Err(format!(
                "IdP metadata is larger than {MAX_METADATA_BYTES} bytes"
            ));
        }
        if has_doctype(xml) {
            return Err("IdP metadata must not contain a DOCTYPE or entity declaration".into());
        }
        let descriptor = EntityDescriptor::from_str(xml).map_err(|e| {
            format!(
                "IdP metadata is not a SAML EntityDescriptor: {}",
                first_line(&e.to_string())
            )
        })?;
        let entity_id = descriptor
            .entity_id
            .clone()
            .filter(|e| !e.trim().is_empty())
            .ok_or("IdP metadata has no entityID")?;
        let idps = descriptor
            .idp_sso_descriptors
            .as_deref()
            .filter(|d| !d.is_empty())
            .ok_or("IdP metadata has no IDPSSODescriptor (is this an SP's metadata?)")?;
        let find = |slo: bool| {
            idps.iter().find_map(|d| {
                let services = if slo {
                    &d.single_logout_services
                } else {
                    &d.single_sign_on_services
                };
                services
                    .iter()
                    .find(|s| s.binding == HTTP_REDIRECT_BINDING)
                    .map(|s| s.location.clone())
            })
        };
        let sso_url = find(false)
            .ok_or("IdP metadata has no SingleSignOnService with the HTTP-Redirect binding")?;
        check_idp_url(&sso_url, "SingleSignOnService")?;
        let slo_url = find(true);
        if let Some(slo) = &slo_url {
            check_idp_url(slo, "SingleLogoutService")?;
        }
        let sp = ServiceProvider {
            idp_metadata: descriptor.clone(),
            ..ServiceProvider::default()
        };
        let certs = sp
            .idp_signing_certs()
            .map_err(|e| format!("IdP metadata has an unreadable certificate: {e}"))?
            .unwrap_or_default();
        if certs.is_empty() {
            return Err(
                "IdP metadata has no signing certificate; Portcullis accepts only \
                        signed assertions and will not trust an IdP without one"
                    .into(),
            );
        }
        let mut signing_certs = Vec::new();
        for cert in certs {
            let der = cert.der_data().to_vec();
            check_cert(&der)?;
            signing_certs.push(der);
        }
        Ok(IdpMetadata {
            entity_id,
            sso_url,
            slo_url,
            signing_certs,
            descriptor,
        })
    }

    /// samael's view of the document (a copy: samael takes it by value).
    pub fn descriptor(&self) -> EntityDescriptor {
        self.descriptor.clone()
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// IdP endpoints are where browsers are sent: http(s) only, no credentials, no fragments.
fn check_idp_url(url: &str, what: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
        return Err(format!("IdP {what} `{url}` is not an http(s) URL"));
    }
    if url.contains('#') || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("IdP {what} `{url}` is not a usable URL"));
    }
    Ok(())
}

/// A signing certificate must parse and carry an RSA key of at least 2048 bits or an EC key.
fn check_cert(der: &[u8]) -> Result<(), String> {
    let cert = openssl::x509::X509::from_der(der)
        .map_err(|_| "IdP metadata has a signing certificate that is not X.509".to_string())?;
    let key = cert
        .public_key()
        .map_err(|_| "IdP signing certificate has an unreadable public key".to_string())?;
    if let Ok(rsa) = key.rsa() {
        if rsa.size() * 8 < 2048 {
            return Err(format!(
                "IdP signing certificate has a {}-bit RSA key; at least 2048 bits are required",
                rsa.size() * 8
            ));
        }
        return Ok(());
    }
    if key.ec_key().is_ok() {
        return Ok(());
    }
    Err("IdP signing certificate must have an RSA or EC key".into())
}

/// Our SP metadata for one tenant.
pub fn sp_metadata(
    urls: &SpUrls,
    signing_cert: Option<&[u8]>,
    nameid_format: Option<&str>,
) -> String {
    let mut out = String::new();
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<md:EntityDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\" \
         xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\" entityID=\"{}\">\n",
        xml_escape(&urls.entity_id)
    ));
    out.push_str(&format!(
        "  <md:SPSSODescriptor AuthnRequestsSigned=\"{}\" WantAssertionsSigned=\"true\" \
         protocolSupportEnumeration=\"urn:oasis:names:tc:SAML:2.0:protocol\">\n",
        signing_cert.is_some()
    ));
    if let Some(der) = signing_cert {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        out.push_str(&format!(
            "    <md:KeyDescriptor use=\"signing\"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>\
             {b64}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>\n"
        ));
    }
    if let Some(format) = nameid_format {
        out.push_str(&format!(
            "    <md:NameIDFormat>{}</md:NameIDFormat>\n",
            xml_escape(format)
        ));
    }
    out.push_str(&format!(
        "    <md:AssertionConsumerService index=\"0\" isDefault=\"true\" \
         Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\" Location=\"{}\"/>\n",
        xml_escape(&urls.acs)
    ));
    out.push_str("  </md:SPSSODescriptor>\n</md:EntityDescriptor>\n");
    out
}

/// IdP metadata documents for tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use base64::Engine as _;

    /// A self-signed certificate with an RSA key of `bits`, as metadata carries it (base64 DER).
    pub(crate) fn cert_b64(bits: u32) -> String {
        let rsa = openssl::rsa::Rsa::generate(bits).unwrap();
        let key = openssl::pkey::PKey::from_rsa(rsa).unwrap();
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "idp").unwrap();
        let name = name.build();
        let mut b = openssl::x509::X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(&key, openssl::hash::MessageDigest::sha256())
            .unwrap();
        base64::engine::general_purpose::STANDARD.encode(b.build().to_der().unwrap())
    }

    /// IdP metadata with `key_descriptor` (none when empty) and optionally an SLO endpoint.
    pub(crate) fn idp_xml(key_descriptor: &str, slo: bool) -> String {
        let slo = if slo {
            r#"<md:SingleLogoutService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="https://idp.example/slo"/>"#
        } else {
            ""
        };
        format!(
            r#"<?xml version="1.0"?>
<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" entityID="https://idp.example/meta">
  <md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
    {key_descriptor}
    {slo}
    <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="https://idp.example/sso"/>
  </md:IDPSSODescriptor>
</md:EntityDescriptor>"#
        )
    }

    /// A signing KeyDescriptor for the certificate `b64`.
    pub(crate) fn key_descriptor(b64: &str) -> String {
        format!(
            r#"<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{b64}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"#
        )
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn metadata_with_a_signing_certificate_is_read() {
        let m = IdpMetadata::parse(&idp_xml(&key_descriptor(&cert_b64(2048)), true)).unwrap();
        assert_eq!(m.entity_id, "https://idp.example/meta");
        assert_eq!(m.sso_url, "https://idp.example/sso");
        assert_eq!(m.slo_url.as_deref(), Some("https://idp.example/slo"));
        assert_eq!(m.signing_certs.len(), 1);
    }

    #[test]
    fn metadata_without_a_signing_certificate_is_refused() {
        let err = IdpMetadata::parse(&idp_xml("", false)).unwrap_err();
        assert!(err.contains("no signing certificate"), "{err}");
    }

    #[test]
    fn weak_or_broken_certificates_are_refused() {
        let err =
            IdpMetadata::parse(&idp_xml(&key_descriptor(&cert_b64(1024)), false)).unwrap_err();
        assert!(err.contains("1024-bit"), "{err}");
        let err = IdpMetadata::parse(&idp_xml(&key_descriptor("AAAA"), false)).unwrap_err();
        assert!(err.contains("not X.509"), "{err}");
    }

    #[test]
    fn doctype_and_non_metadata_are_refused() {
        let doc = idp_xml(&key_descriptor(&cert_b64(2048)), false).replace(
            "<?xml version=\"1.0\"?>",
            "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"b\">]>",
        );
        assert!(IdpMetadata::parse(&doc).unwrap_err().contains("DOCTYPE"));
        assert!(IdpMetadata::parse("<html/>").is_err());
        assert!(IdpMetadata::parse("not xml").is_err());
    }

    #[test]
    fn sp_metadata_names_our_urls_and_escapes_them() {
        let urls = SpUrls::new("acme.localhost", 8443);
        let xml = sp_metadata(&urls, None, None);
        assert!(xml.contains(r#"entityID="https://acme.localhost:8443/.auth/saml/metadata""#));
        assert!(xml.contains(r#"Location="https://acme.localhost:8443/.auth/saml/acs""#));
        assert!(xml.contains(r#"AuthnRequestsSigned="false""#));
        let xml = sp_metadata(&urls, Some(&[1, 2, 3]), Some("a&b"));
        assert!(xml.contains(r#"AuthnRequestsSigned="true""#));
        assert!(xml.contains("<ds:X509Certificate>AQID</ds:X509Certificate>"));
        assert!(xml.contains("a&amp;b"));
    }
}
