//! AuthnRequests (HTTP-Redirect binding) and the tenant's SP signing key.

use std::io::Write;

use base64::Engine as _;
use flate2::{write::DeflateEncoder, Compression};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use rand::RngCore;

use super::{xml_escape, SpUrls};

/// `SigAlg` of signed redirects.
pub const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";

/// A new AuthnRequest ID: `_` and 160 random bits in hex (an XML ID cannot start with a digit).
pub fn new_request_id() -> String {
    let mut bytes = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("_{}", hex::encode(bytes))
}

/// The AuthnRequest document.
pub fn authn_request_xml(
    id: &str,
    issue_instant: &str,
    sso_url: &str,
    urls: &SpUrls,
    nameid_format: Option<&str>,
) -> String {
    let policy = match nameid_format {
        Some(f) => format!(
            "<samlp:NameIDPolicy Format=\"{}\" AllowCreate=\"true\"/>",
            xml_escape(f)
        ),
        None => "<samlp:NameIDPolicy AllowCreate=\"true\"/>".to_string(),
    };
    format!(
        "<samlp:AuthnRequest xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" \
         xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\" ID=\"{}\" Version=\"2.0\" \
         IssueInstant=\"{}\" Destination=\"{}\" AssertionConsumerServiceURL=\"{}\" \
         ProtocolBinding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\">\
         <saml:Issuer>{}</saml:Issuer>{policy}</samlp:AuthnRequest>",
        xml_escape(id),
        xml_escape(issue_instant),
        xml_escape(sso_url),
        xml_escape(&urls.acs),
        xml_escape(&urls.entity_id),
    )
}

/// The URL that sends the browser to the IdP with `xml` (deflated, base64), signed with `key`
/// when given (SAML bindings §3.4.4.1: the signature covers the encoded query string).
pub fn redirect_url(
    sso_url: &str,
    xml: &str,
    key: Option<&PKey<Private>>,
) -> Result<String, String> {
    let mut deflater = DeflateEncoder::new(Vec::new(), Compression::default());
    deflater
        .write_all(xml.as_bytes())
        .map_err(|e| format!("deflate: {e}"))?;
    let deflated = deflater.finish().map_err(|e| format!("deflate: {e}"))?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(deflated);
    let mut query = format!("SAMLRequest={}", url_encode(&encoded));
    if let Some(key) = key {
        query.push_str(&format!("&SigAlg={}", url_encode(RSA_SHA256)));
        let mut signer = openssl::sign::Signer::new(MessageDigest::sha256(), key)
            .map_err(|e| format!("sign: {e}"))?;
        signer
            .update(query.as_bytes())
            .map_err(|e| format!("sign: {e}"))?;
        let signature = signer.sign_to_vec().map_err(|e| format!("sign: {e}"))?;
        let signature = base64::engine::general_purpose::STANDARD.encode(signature);
        query.push_str(&format!("&Signature={}", url_encode(&signature)));
    }
    let sep = if sso_url.contains('?') { '&' } else { '?' };
    Ok(format!("{sso_url}{sep}{query}"))
}

fn url_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A new SP signing key pair: RSA 2048 (what every IdP verifies) and a self-signed
/// certificate for the metadata, valid ten years (IdPs pin it; they do not check expiry).
/// Returns the private key (PKCS#8 PEM) and the certificate (DER).
pub fn new_sp_key(entity_id: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    let fail = |e: openssl::error::ErrorStack| format!("SP key: {e}");
    let rsa = openssl::rsa::Rsa::generate(2048).map_err(fail)?;
    let key = PKey::from_rsa(rsa).map_err(fail)?;
    let mut name = openssl::x509::X509NameBuilder::new().map_err(fail)?;
    let cn: String = entity_id.chars().take(64).collect();
    name.append_entry_by_text("CN", &cn).map_err(fail)?;
    let name = name.build();
    let mut builder = openssl::x509::X509Builder::new().map_err(fail)?;
    builder.set_version(2).map_err(fail)?;
    let mut serial = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut serial);
    serial[0] &= 0x7f;
    let serial = openssl::bn::BigNum::from_slice(&serial)
        .and_then(|b| b.to_asn1_integer())
        .map_err(fail)?;
    builder.set_serial_number(&serial).map_err(fail)?;
    builder.set_subject_name(&name).map_err(fail)?;
    builder.set_issuer_name(&name).map_err(fail)?;
    builder.set_pubkey(&key).map_err(fail)?;
    let not_before = openssl::asn1::Asn1Time::days_from_now(0).map_err(fail)?;
    let not_after = openssl::asn1::Asn1Time::days_from_now(3650).map_err(fail)?;
    builder.set_not_before(&not_before).map_err(fail)?;
    builder.set_not_after(&not_after).map_err(fail)?;
    builder.sign(&key, MessageDigest::sha256()).map_err(fail)?;
    let cert = builder.build().to_der().map_err(fail)?;
    let pem = key.private_key_to_pem_pkcs8().map_err(fail)?;
    Ok((pem, cert))
}

/// Read a private key made by [`new_sp_key`].
pub fn load_sp_key(pem: &[u8]) -> Result<PKey<Private>, String> {
    PKey::private_key_from_pem(pem).map_err(|_| "SP key is unreadable".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::DeflateDecoder;
    use std::io::Read;

    fn query_param(url: &str, name: &str) -> Option<String> {
        let query = url.split_once('?')?.1;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    #[test]
    fn request_ids_are_unique_xml_ids_with_160_bits() {
        let a = new_request_id();
        assert_eq!(a.len(), 41);
        assert!(a.starts_with('_'));
        assert_ne!(a, new_request_id());
    }

    #[test]
    fn the_redirect_carries_the_deflated_request() {
        let urls = SpUrls::new("acme.localhost", 8443);
        let xml = authn_request_xml(
            "_abc",
            "2026-01-01T00:00:00Z",
            "https://idp/sso",
            &urls,
            None,
        );
        let url = redirect_url("https://idp/sso?x=1", &xml, None).unwrap();
        assert!(url.starts_with("https://idp/sso?x=1&SAMLRequest="));
        let encoded = query_param(&url, "SAMLRequest").unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        let mut out = String::new();
        DeflateDecoder::new(&raw[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, xml);
        assert!(out.contains(
            r#"AssertionConsumerServiceURL="https://acme.localhost:8443/.auth/saml/acs""#
        ));
        assert!(query_param(&url, "Signature").is_none());
    }

    #[test]
    fn a_signed_redirect_verifies_with_the_published_certificate() {
        let (pem, cert) = new_sp_key("https://acme.localhost/.auth/saml/metadata").unwrap();
        let key = load_sp_key(&pem).unwrap();
        let urls = SpUrls::new("acme.localhost", 443);
        let xml = authn_request_xml(
            "_abc",
            "2026-01-01T00:00:00Z",
            "https://idp/sso",
            &urls,
            None,
        );
        let url = redirect_url("https://idp/sso", &xml, Some(&key)).unwrap();
        let query = url.split_once('?').unwrap().1;
        let (signed, sig) = query.split_once("&Signature=").unwrap();
        let sig: String = form_urlencoded::parse(format!("s={sig}").as_bytes())
            .next()
            .unwrap()
            .1
            .into_owned();
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .unwrap();
        let cert = openssl::x509::X509::from_der(&cert).unwrap();
        let public = cert.public_key().unwrap();
        let mut v = openssl::sign::Verifier::new(MessageDigest::sha256(), &public).unwrap();
        v.update(signed.as_bytes()).unwrap();
        assert!(v.verify(&sig).unwrap());
        assert_eq!(query_param(&url, "SigAlg").as_deref(), Some(RSA_SHA256));
    }
}
