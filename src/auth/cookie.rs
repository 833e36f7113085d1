//! The gateway's cookies: reading them from a request, writing `Set-Cookie`, and removing
//! them before a request goes upstream.
//!
//! Both cookies carry the `__Host-` prefix (RFC 6265bis §4.1.3.2): browsers accept them only
//! with `Secure`, `Path=/` and no `Domain`, so a sibling subdomain cannot toss a cookie of the
//! same name onto a tenant host.

use http::HeaderMap;

/// The session cookie.
pub const SESSION: &str = "__Host-portcullis";
/// The pre-login anti-CSRF cookie (double-submit with the login form).
pub const LOGIN_CSRF: &str = "__Host-portcullis-csrf";

/// The `;`-separated pairs of every `Cookie` field, trimmed, empty ones skipped. A field with
/// a byte outside visible ASCII (tab allowed) is skipped whole: `to_str` refuses it. Trimming
/// ASCII whitespace is all `str::trim` would do here: tab and space are the only whitespace
/// such a field holds.
fn pairs(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim_ascii)
        .filter(|pair| !pair.is_empty())
}

/// Every value of the cookie `name` in the request (several `Cookie` headers and several
/// pairs per header are allowed by RFC 6265 §5.4 for HTTP/2). A pair is `name` when what comes
/// before its first `=` is exactly `name` (which holds no `=`), so `name =v` is another cookie.
pub fn values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    pairs(headers)
        .filter_map(move |pair| Some(pair.strip_prefix(name)?.strip_prefix('=')?.trim_ascii()))
}

/// The single value of cookie `name`. Two values (a tossed duplicate) count as none: which
/// one a server would pick is not defined, so neither is trusted.
pub fn single<'a>(headers: &'a HeaderMap, name: &'a str) -> Option<&'a str> {
    let mut it = values(headers, name);
    match (it.next(), it.next()) {
        (Some(v), None) if !v.is_empty() => Some(v),
        _ => None,
    }
}

/// `Set-Cookie` for a session-scoped cookie (no Max-Age: it ends with the browser session;
/// the server enforces idle and absolute timeouts).
pub fn set(name: &str, value: &str, same_site: &str) -> String {
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite={same_site}")
}

/// `Set-Cookie` that deletes the cookie.
pub fn clear(name: &str) -> String {
    format!("{name}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// The `Cookie` header to forward upstream: every pair except the gateway's own cookies
/// (the session token must never reach a backend). `None` when nothing is left.
pub fn without_gateway_cookies(headers: &HeaderMap) -> Option<String> {
    // Any spelling a backend might fold to ours is dropped too: every pair whose name starts
    // with it. The prefix holds no `=`, so a pair that starts with it has a name that does.
    const OURS: &str = "__host-portcullis";
    let kept: Vec<&str> = pairs(headers)
        .filter(|pair| {
            !pair
                .get(..OURS.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(OURS))
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookies: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(http::header::COOKIE, http::HeaderValue::from_static(c));
        }
        h
    }

    #[test]
    fn session_cookie_is_found_among_others() {
        let h = headers(&["a=1; __Host-portcullis=tok; b=2"]);
        assert_eq!(single(&h, SESSION), Some("tok"));
    }

    #[test]
    fn tossed_duplicate_session_cookie_is_trusted_by_neither() {
        let h = headers(&["__Host-portcullis=mine", "__Host-portcullis=tossed"]);
        assert_eq!(single(&h, SESSION), None);
    }

    #[test]
    fn unprefixed_lookalike_is_not_the_session_cookie() {
        let h = headers(&["portcullis=tok; __host-portcullis=tok2"]);
        assert_eq!(single(&h, SESSION), None);
    }

    #[test]
    fn session_cookie_is_never_forwarded() {
        let h = headers(&[
            "a=1; __Host-portcullis=tok",
            "__Host-portcullis-csrf=c; b=2; __HOST-PORTCULLIS=x",
        ]);
        assert_eq!(without_gateway_cookies(&h).as_deref(), Some("a=1; b=2"));
        assert_eq!(
            without_gateway_cookies(&headers(&["__Host-portcullis=t"])),
            None
        );
    }

    #[test]
    fn pairs_are_trimmed_and_empty_ones_skipped() {
        let h = headers(&[
            " a= 1 ;; \tb=2;;",
            "c;d=;  ",
            "=e; __Host-portcullis = tok ",
        ]);
        assert_eq!(single(&h, "a"), Some("1"));
        assert_eq!(single(&h, "b"), Some("2"));
        assert_eq!(single(&h, "d"), None, "an empty value is no value");
        assert_eq!(
            values(&h, "c").count(),
            0,
            "a pair without `=` has no value"
        );
        // A space before `=` makes another name: not our session, but never forwarded either.
        assert_eq!(single(&h, SESSION), None);
        assert_eq!(
            without_gateway_cookies(&h).as_deref(),
            Some("a= 1; b=2; c; d=; =e")
        );
    }

    #[test]
    fn a_header_with_bytes_outside_visible_ascii_is_skipped_whole() {
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            http::HeaderValue::from_bytes(b"__Host-portcullis=\xfftok; a=1").expect("obs-text"),
        );
        h.append(http::header::COOKIE, http::HeaderValue::from_static("b=2"));
        assert_eq!(single(&h, SESSION), None);
        assert_eq!(without_gateway_cookies(&h).as_deref(), Some("b=2"));
    }

    #[test]
    fn set_cookie_has_every_protection() {
        let c = set(SESSION, "v", "Lax");
        for part in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"] {
            assert!(c.contains(part), "{c}");
        }
        assert!(!c.contains("Domain"));
    }

    /// The first implementation, kept as the reference: every cookie scan above must agree
    /// with it.
    mod reference {
        use http::HeaderMap;

        pub fn values<'a>(headers: &'a HeaderMap, name: &'a str) -> Vec<&'a str> {
            headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(move |pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then_some(v.trim())
                })
                .collect()
        }

        pub fn without_gateway_cookies(headers: &HeaderMap) -> Option<String> {
            let kept: Vec<&str> = headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .map(str::trim)
                .filter(|pair| !pair.is_empty())
                .filter(|pair| {
                    let name = pair.split_once('=').map_or(*pair, |(k, _)| k).trim();
                    const OURS: &str = "__host-portcullis";
                    !name
                        .get(..OURS.len())
                        .is_some_and(|start| start.eq_ignore_ascii_case(OURS))
                })
                .collect();
            (!kept.is_empty()).then(|| kept.join("; "))
        }
    }

    /// Random `Cookie` fields built from the pieces that matter (our names in other cases,
    /// spaces, tabs, `=`, `;`, empty pairs, bytes outside visible ASCII) read the same as by
    /// the reference.
    #[test]
    fn scans_agree_with_the_reference_on_random_fields() {
        let pieces: [&[u8]; 16] = [
            b"__Host-portcullis",
            b"__HOST-PORTCULLIS",
            b"__Host-portcullis-csrf",
            b"__Host-portcul",
            b"portcullis",
            b"=",
            b";",
            b" ",
            b"\t",
            b"tok",
            b"a",
            b"\xff",
            b"\x7f",
            b"==",
            b"; ",
            b"-",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut checked = 0;
        for _ in 0..20_000 {
            let mut h = HeaderMap::new();
            for _ in 0..1 + next() % 3 {
                let mut field = Vec::new();
                for _ in 0..next() % 12 {
                    field.extend_from_slice(pieces[(next() % 16) as usize]);
                }
                // Fields a request could carry: HeaderValue refuses control bytes but tab.
                if let Ok(v) = http::HeaderValue::from_bytes(&field) {
                    h.append(http::header::COOKIE, v);
                }
            }
            for name in [SESSION, LOGIN_CSRF, "a", "portcullis"] {
                assert_eq!(
                    values(&h, name).collect::<Vec<_>>(),
                    reference::values(&h, name),
                    "{h:?}"
                );
            }
            assert_eq!(
                without_gateway_cookies(&h),
                reference::without_gateway_cookies(&h),
                "{h:?}"
            );
            checked += 1;
        }
        assert!(checked > 10_000);
    }
}
