//! `return_to`: where to send a user after login. Only a same-host relative path is accepted,
//! anything else falls back to `/` (an open redirect is a phishing tool: OWASP ASVS 5.1.5).

use crate::request::target;

/// The safe path to return to, or `None` if `raw` (already URL-decoded once, as a form or
/// query value is) could lead anywhere but this host.
pub fn safe(raw: &str, host: &str) -> Option<String> {
    // Browsers treat `\` as `/` and strip tabs and newlines from URLs (WHATWG URL §4.4), so
    // `/\evil.com` and `/\t/evil.com` are protocol-relative: refuse every such byte.
    let suspicious = raw
        .bytes()
        .any(|b| b == b'\\' || b.is_ascii_control() || b == b' ' || b >= 0x80);
    if suspicious || !raw.starts_with('/') || raw.starts_with("//") {
        return None;
    }
    // A path whose decoding would begin with `//`, `/\` or hide a scheme is refused as well.
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?;
    if decoded.starts_with("//")
        || decoded.contains('\\')
        || decoded.bytes().any(|b| b.is_ascii_control())
    {
        return None;
    }
    // The same normalization as every request: no dot segments, encoded slashes, etc.
    let t = target::normalize(raw.as_bytes(), host).ok()?;
    let out = t.path_and_query();
    // Never send someone back into the login machinery itself; the pages a signed-in user
    // visits (tenant admin, two-step settings) are fine.
    let gateway_page = out.starts_with("/.auth/admin") || out.starts_with("/.auth/mfa/enroll");
    (!out.starts_with("/.auth/") || gateway_page).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_host_paths_are_kept() {
        assert_eq!(safe("/app/x?y=1", "h").as_deref(), Some("/app/x?y=1"));
        assert_eq!(safe("/", "h").as_deref(), Some("/"));
    }

    #[test]
    fn signed_in_gateway_pages_are_allowed_back() {
        assert_eq!(
            safe("/.auth/admin/audit", "h").as_deref(),
            Some("/.auth/admin/audit")
        );
        assert_eq!(safe("/.auth/logout", "h"), None);
    }

    #[test]
    fn every_open_redirect_variant_is_refused() {
        for bad in [
            "//evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "https://evil.com",
            "http:evil.com",
            "javascript:alert(1)",
            "evil.com",
            "/%2F%2Fevil.com",
            "/%2fevil.com",
            "/%5Cevil.com",
            "%2F%2Fevil.com",
            "/\t/evil.com",
            "/\n/evil.com",
            " /evil",
            "/%09/evil.com",
            "/%0a/evil.com",
            "/a/../..//evil.com",
            "///evil.com",
            "",
            "/.auth/login",
        ] {
            assert_eq!(safe(bad, "h"), None, "{bad:?}");
        }
    }
}
