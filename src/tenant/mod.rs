//! Which tenant a request belongs to: chosen by Host, never by default, and only if the TLS
//! connection was set up for that same host.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Tenant;
use crate::error::RequestError;

/// Host → tenant, built once per configuration. Looked up on every request, never added to
/// from a request, so a fast seeded hash (not SipHash) is enough.
#[derive(Debug, Default)]
pub struct TenantIndex {
    by_host: HashMap<String, Arc<Tenant>, foldhash::fast::RandomState>,
}

impl TenantIndex {
    /// Index the tenants of a validated configuration (hosts are unique across tenants).
    pub fn new(tenants: &[Tenant]) -> Self {
        let by_host = tenants
            .iter()
            .flat_map(|t| {
                let t = Arc::new(t.clone());
                t.hosts
                    .clone()
                    .into_iter()
                    .map(move |h| (h, Arc::clone(&t)))
            })
            .collect();
        Self { by_host }
    }

    /// The tenant serving `host` (lowercase, no port). There is no default tenant.
    pub fn resolve(&self, host: &str) -> Result<&Arc<Tenant>, RequestError> {
        self.by_host.get(host).ok_or(RequestError::UnknownHost)
    }
}

/// The request's host, lowercase and without port, from the `Host` header values (HTTP/1.1)
/// and the URI authority (HTTP/2 `:authority`, or an absolute-form target).
///
/// RFC 9112 §3.2: a request with no Host, several Host fields, or an invalid one is a 400.
/// When both are present they must agree, so routing and the backend see one host.
pub fn request_host<'a>(
    mut host_headers: impl Iterator<Item = &'a [u8]>,
    authority: Option<&str>,
) -> Result<String, RequestError> {
    let header = match (host_headers.next(), host_headers.next()) {
        (Some(h), None) => Some(parse_host(
            std::str::from_utf8(h).map_err(|_| RequestError::BadHost)?,
        )?),
        (None, _) => None,
        (Some(_), Some(_)) => return Err(RequestError::BadHost),
    };
    let authority = authority.map(parse_host).transpose()?;
    match (header, authority) {
        (Some(h), Some(a)) if h != a => Err(RequestError::BadHost),
        (Some(h), _) => Ok(h),
        (None, Some(a)) => Ok(a),
        (None, None) => Err(RequestError::BadHost),
    }
}

/// RFC 9110 §15.5.20: answer 421 when the connection's TLS server name is not this request's
/// host, so one tenant's TLS session never carries another tenant's requests.
pub fn check_sni(sni: Option<&str>, host: &str) -> Result<(), RequestError> {
    match sni {
        Some(name) if name.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(RequestError::Misdirected),
    }
}

/// `host[:port]` → lowercase host. Only DNS names: tenants are never addressed by IP.
fn parse_host(value: &str) -> Result<String, RequestError> {
    let value = value.trim_matches([' ', '\t']);
    let host = match value.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        Some(_) => return Err(RequestError::BadHost),
        None => value,
    };
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid {
        Ok(host.to_ascii_lowercase())
    } else {
        Err(RequestError::BadHost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(headers: &[&str], authority: Option<&str>) -> Result<String, RequestError> {
        request_host(headers.iter().map(|h| h.as_bytes()), authority)
    }

    #[test]
    fn host_is_lowercased_without_port() {
        assert_eq!(
            host(&["Acme.Localhost:8443"], None).as_deref(),
            Ok("acme.localhost")
        );
        assert_eq!(
            host(&[], Some("acme.localhost")).as_deref(),
            Ok("acme.localhost")
        );
    }

    #[test]
    fn missing_duplicate_or_conflicting_host_is_rejected() {
        assert_eq!(host(&[], None), Err(RequestError::BadHost));
        assert_eq!(
            host(&["a.localhost", "a.localhost"], None),
            Err(RequestError::BadHost)
        );
        assert_eq!(
            host(&["a.localhost"], Some("b.localhost")),
            Err(RequestError::BadHost)
        );
        for bad in ["a.localhost:x", "a b", "a/b", "user@a", "", "[::1]:443"] {
            assert_eq!(host(&[bad], None), Err(RequestError::BadHost), "{bad}");
        }
    }

    #[test]
    fn sni_for_another_host_is_misdirected() {
        assert_eq!(check_sni(Some("acme.localhost"), "acme.localhost"), Ok(()));
        assert_eq!(
            check_sni(Some("acme.localhost"), "globex.localhost"),
            Err(RequestError::Misdirected)
        );
        assert_eq!(
            check_sni(None, "acme.localhost"),
            Err(RequestError::Misdirected)
        );
    }

    #[test]
    fn unknown_host_has_no_default_tenant() {
        let index = TenantIndex::new(&[]);
        assert!(matches!(
            index.resolve("acme.localhost"),
            Err(RequestError::UnknownHost)
        ));
    }
}
