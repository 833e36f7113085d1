//! SAML 2.0 Web SSO for one tenant at a time: our SP metadata, AuthnRequests over the
//! HTTP-Redirect binding, and responses over HTTP-POST validated by samael (xmlsec) plus the
//! checks samael leaves out (see [`validate`]).
//!
//! Every tenant is its own SP: entity ID `https://<first host>/.auth/saml/metadata`, ACS
//! `https://<first host>/.auth/saml/acs`. A response is only ever checked against the tenant
//! whose ACS it was posted to, with that tenant's IdP certificate, audience and requests.

pub mod fetch;
pub mod metadata;
pub mod request;
pub mod validate;

pub use metadata::IdpMetadata;

/// Largest SAMLResponse POST body read (before any parsing): real responses are a few KiB,
/// 64 KiB with long group lists and certificate chains.
pub const MAX_POST_BYTES: usize = 256 * 1024;

/// How long an AuthnRequest can be answered.
pub const REQUEST_TTL_SECS: u64 = 10 * 60;

/// The SP's own addresses for a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpUrls {
    /// `https://host[:port]`.
    pub base: String,
    /// Our entity ID (also where the metadata is served).
    pub entity_id: String,
    /// Assertion Consumer Service (HTTP-POST).
    pub acs: String,
}

impl SpUrls {
    /// The addresses of the tenant whose first host is `host`, served on `public_port`.
    pub fn new(host: &str, public_port: u16) -> SpUrls {
        let base = if public_port == 443 {
            format!("https://{host}")
        } else {
            format!("https://{host}:{public_port}")
        };
        SpUrls {
            entity_id: format!("{base}/.auth/saml/metadata"),
            acs: format!("{base}/.auth/saml/acs"),
            base,
        }
    }
}

/// Escape text for an XML attribute or element.
pub(crate) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Text that must never appear in SAML XML we accept: a document type (entity expansion,
/// XXE) or an entity declaration. Checked on the raw bytes before any XML parser sees them.
pub(crate) fn has_doctype(xml: &str) -> bool {
    let lower = xml.to_ascii_lowercase();
    lower.contains("<!doctype") || lower.contains("<!entity")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sp_urls_leave_out_the_default_port() {
        let u = SpUrls::new("acme.example", 443);
        assert_eq!(u.entity_id, "https://acme.example/.auth/saml/metadata");
        assert_eq!(u.acs, "https://acme.example/.auth/saml/acs");
        let u = SpUrls::new("acme.localhost", 8443);
        assert_eq!(u.acs, "https://acme.localhost:8443/.auth/saml/acs");
    }

    #[test]
    fn doctype_is_found_in_any_case() {
        assert!(has_doctype("<?xml version='1.0'?><!DoCtYpE x []><x/>"));
        assert!(has_doctype("<x><!ENTITY a 'b'></x>"));
        assert!(!has_doctype("<x>doctype</x>"));
    }

    #[test]
    fn xml_escape_covers_markup() {
        assert_eq!(xml_escape("a&<>\"'"), "a&amp;&lt;&gt;&quot;&apos;");
    }
}
