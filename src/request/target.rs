//! Request-target normalization: one unambiguous path for routing and for the upstream.
//!
//! The gateway decides on a path and the backend acts on a path. If the two can read the same
//! bytes differently (an encoded `/`, a `..` the backend resolves, a `;` parameter a servlet
//! container strips) a request can be allowed for one resource and served as another. So every
//! spelling that some server might resolve differently is rejected, never repaired, and the
//! remaining harmless variations (duplicate `/`, escaped unreserved characters, lowercase hex)
//! are normalized to one canonical form that is used for both the decision and the forwarding.

/// A request target after normalization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The normalized absolute path; always starts with `/`.
    pub path: String,
    /// The query exactly as received, without the leading `?`.
    pub query: Option<String>,
}

impl Target {
    /// The origin-form target to send upstream: the normalized path plus the raw query.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{}", self.path, query),
            None => self.path.clone(),
        }
    }

    /// Whether `raw` (a request-target as received) is exactly [`Self::path_and_query`], so
    /// the request can go upstream with its target untouched.
    pub fn is_exactly(&self, raw: &[u8]) -> bool {
        let Some(rest) = raw.strip_prefix(self.path.as_bytes()) else {
            return false;
        };
        match &self.query {
            Some(query) => rest.strip_prefix(b"?") == Some(query.as_bytes()),
            None => rest.is_empty(),
        }
    }
}

/// Why a request target was refused. Every variant answers 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// Empty, asterisk-form, authority-form, a scheme other than http(s), or a malformed
    /// authority: nothing a reverse proxy in front of web apps should route.
    #[error("request target is not origin-form or http(s) absolute-form")]
    BadTarget,
    /// A control character, space or DEL.
    #[error("request target contains a control character or space")]
    ControlChar,
    /// A byte outside ASCII: only percent-encoded octets are allowed.
    #[error("request target contains a raw non-ASCII byte")]
    NonAscii,
    /// A `#`: fragments never travel in a request.
    #[error("request target contains a fragment")]
    Fragment,
    /// A raw `\`, which some servers treat as a path separator.
    #[error("path contains a backslash")]
    Backslash,
    /// `%2F` or `%5C`: a separator the gateway would not see but the backend might.
    #[error("path contains an encoded slash or backslash")]
    EncodedSlash,
    /// `%00`, which truncates paths in C-based backends.
    #[error("path contains an encoded NUL")]
    Nul,
    /// `%25`: an escape of an escape, decoded twice by some stacks.
    #[error("path contains a double-encoded percent sign")]
    DoubleEncoding,
    /// `%` not followed by two hex digits.
    #[error("path contains a malformed percent escape")]
    BadEscape,
    /// A `.` or `..` segment, raw, encoded, or followed by `;` parameters.
    #[error("path contains a dot segment")]
    DotSegment,
    /// A segment that is only `;` parameters, which servlet containers reduce to an empty
    /// segment and then collapse, moving the rest of the path up one level.
    #[error("path contains a segment made only of parameters")]
    ParamOnlySegment,
    /// Credentials in an absolute-form authority.
    #[error("absolute-form target contains userinfo")]
    Userinfo,
    /// An absolute-form target naming a host other than the request's Host.
    #[error("absolute-form target host does not match Host")]
    AbsoluteFormHostMismatch,
}

impl TargetError {
    /// A stable short reason code for logs, audit events and JSON errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadTarget => "bad_target",
            Self::ControlChar => "control_char",
            Self::NonAscii => "non_ascii",
            Self::Fragment => "fragment",
            Self::Backslash => "backslash",
            Self::EncodedSlash => "encoded_slash",
            Self::Nul => "nul",
            Self::DoubleEncoding => "double_encoding",
            Self::BadEscape => "bad_escape",
            Self::DotSegment => "dot_segment",
            Self::ParamOnlySegment => "param_only_segment",
            Self::Userinfo => "userinfo",
            Self::AbsoluteFormHostMismatch => "absolute_form_host_mismatch",
        }
    }
}

/// Normalize a request target, or say why it is refused.
///
/// `raw` is the request-target bytes exactly as received (origin-form `/a?b` or absolute-form
/// `https://host/a`); `host` is the request's Host (lowercase, without port).
pub fn normalize(raw: &[u8], host: &str) -> Result<Target, TargetError> {
    // RFC 3986 §2: a URI is ASCII; anything else must arrive percent-encoded.
    let text = std::str::from_utf8(raw).map_err(|_| TargetError::NonAscii)?;
    check_characters(text)?;

    let origin = origin_form(text, host)?;
    let (path, query) = match origin.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (origin.as_str(), None),
    };
    Ok(Target {
        path: normalize_path(path)?,
        query,
    })
}

/// Segment-aware prefix match: prefix `/api` matches `/api`, `/api/`, `/api/x` but not `/apix`;
/// prefix `/` matches everything.
///
/// A trailing `/` on the prefix does not change what it matches, and `;` parameters on a path
/// segment are ignored: servlet containers serve `/admin;x/y` as `/admin/y`, so a route that
/// protects `/admin` must also govern `/admin;x/y` (RFC 3986 §3.3 leaves parameter syntax to
/// the server).
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    let mut names = path
        .split('/')
        .filter(|segment| !segment.is_empty())
        .map(segment_name);
    prefix
        .split('/')
        .filter(|segment| !segment.is_empty())
        .all(|wanted| names.next() == Some(wanted))
}

/// The part of a segment before any `;` parameters (raw, or encoded as a normalized `%3B`).
fn segment_name(segment: &str) -> &str {
    // One pass over the bytes: this runs for every segment of every route tried.
    let bytes = segment.as_bytes();
    let end = (0..bytes.len())
        .find(|&i| bytes[i] == b';' || bytes[i..].starts_with(b"%3B"))
        .unwrap_or(bytes.len());
    // `end` is at an ASCII byte or the end, so a char boundary.
    segment.get(..end).unwrap_or(segment)
}

/// Refuse bytes that have no place anywhere in a request target.
fn check_characters(text: &str) -> Result<(), TargetError> {
    for byte in text.bytes() {
        match byte {
            // RFC 3986 §2: only ASCII graphic characters appear in a URI.
            0x80.. => return Err(TargetError::NonAscii),
            // RFC 9112 §3.2: the target is followed by SP, so CTL, SP and DEL cannot be
            // part of it; a lenient parser letting them through must not pass them on.
            0x00..=0x20 | 0x7f => return Err(TargetError::ControlChar),
            // RFC 9112 §3.2 / RFC 3986 §3.5: the fragment is client-side only.
            b'#' => return Err(TargetError::Fragment),
            _ => {}
        }
    }
    Ok(())
}

/// Reduce the target to origin-form (`/path?query`, the query possibly absent).
fn origin_form(text: &str, host: &str) -> Result<String, TargetError> {
    // RFC 9112 §3.2.1: origin-form is an absolute path, optionally with a query.
    if text.starts_with('/') {
        return Ok(text.to_owned());
    }
    // RFC 9112 §3.2.2: absolute-form; the scheme is case-insensitive (RFC 3986 §3.1). Other
    // schemes, authority-form (§3.2.3, CONNECT) and asterisk-form (§3.2.4, OPTIONS *) are
    // never routed to an app.
    let rest = strip_prefix_ignore_case(text, "https://")
        .or_else(|| strip_prefix_ignore_case(text, "http://"))
        .ok_or(TargetError::BadTarget)?;
    // RFC 3986 §3.2: the authority ends at the first '/', '?' or '#' ('#' is already refused).
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(end);
    check_authority(authority, host)?;
    // RFC 9112 §3.2.1: an empty path is sent as "/".
    if path_and_query.starts_with('/') {
        Ok(path_and_query.to_owned())
    } else {
        Ok(format!("/{path_and_query}"))
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// The absolute-form authority must name the request's own Host.
fn check_authority(authority: &str, host: &str) -> Result<(), TargetError> {
    // RFC 9110 §4.2.4: userinfo is deprecated in http(s) URIs and used for phishing; a
    // recipient should treat it as an error.
    if authority.contains('@') {
        return Err(TargetError::Userinfo);
    }
    // RFC 3986 §3.2.2: an IPv6 literal is bracketed and may itself contain ':'.
    let (target_host, port) = if authority.starts_with('[') {
        let close = authority.find(']').ok_or(TargetError::BadTarget)?;
        authority.split_at(close + 1)
    } else {
        authority.split_at(authority.find(':').unwrap_or(authority.len()))
    };
    if target_host.is_empty() {
        return Err(TargetError::BadTarget);
    }
    // RFC 3986 §3.2.3: port = *DIGIT; an empty or oversized port is refused as ambiguous.
    if let Some(digits) = port.strip_prefix(':') {
        if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.parse::<u16>().is_err() {
            return Err(TargetError::BadTarget);
        }
    } else if !port.is_empty() {
        return Err(TargetError::BadTarget);
    }
    // RFC 9112 §3.2.2: a server receiving absolute-form ignores Host in favour of the
    // target; the tenant was chosen from Host, so the two must agree (case-insensitively,
    // RFC 3986 §3.2.2; the port does not select a tenant).
    if unbracket(target_host).eq_ignore_ascii_case(unbracket(host)) {
        Ok(())
    } else {
        Err(TargetError::AbsoluteFormHostMismatch)
    }
}

/// An IPv6 literal compares equal with or without its brackets.
fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host)
}

/// Collapse empty segments and normalize each segment; keep a trailing `/`.
fn normalize_path(path: &str) -> Result<String, TargetError> {
    let mut out = String::with_capacity(path.len());
    for segment in path.split('/').filter(|segment| !segment.is_empty()) {
        out.push('/');
        out.push_str(&normalize_segment(segment)?);
    }
    if out.is_empty() || path.ends_with('/') {
        out.push('/');
    }
    Ok(out)
}

/// Decode escaped unreserved characters, uppercase every other escape, and refuse anything
/// that could read differently to another server.
fn normalize_segment(segment: &str) -> Result<String, TargetError> {
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(segment.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            // WHATWG URL and Windows backends read '\' as '/'.
            b'\\' => return Err(TargetError::Backslash),
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|&b| hex_value(b));
                let lo = bytes.get(i + 2).and_then(|&b| hex_value(b));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    // RFC 3986 §2.1: pct-encoded = "%" HEXDIG HEXDIG.
                    return Err(TargetError::BadEscape);
                };
                match (hi << 4) | lo {
                    0x00 => return Err(TargetError::Nul),
                    // pingora re-encodes raw control bytes in the request line before any
                    // filter runs, so an encoded control character may have arrived raw: no
                    // path needs one, and backends that decode them disagree on what they
                    // mean (CRLF injection into logs and redirects).
                    0x01..=0x1f | 0x7f => return Err(TargetError::ControlChar),
                    // RFC 3986 §2.2: an escaped delimiter is data, not a separator, but many
                    // backends decode before splitting.
                    b'/' | b'\\' => return Err(TargetError::EncodedSlash),
                    // A second decoding pass would turn "%252F" into "/".
                    b'%' => return Err(TargetError::DoubleEncoding),
                    // RFC 3986 §2.3 / §6.2.2.2: escaped unreserved characters are equivalent
                    // to the characters themselves and should be decoded.
                    octet if is_unreserved(octet) => out.push(char::from(octet)),
                    // RFC 3986 §6.2.2.1: hex digits of an escape are case-insensitive;
                    // uppercase is the normal form.
                    _ => {
                        out.push('%');
                        out.push(char::from(HEX_UPPER[usize::from(hi)]));
                        out.push(char::from(HEX_UPPER[usize::from(lo)]));
                    }
                }
                i += 3;
            }
            other => {
                out.push(char::from(other));
                i += 1;
            }
        }
    }
    // RFC 3986 §5.2.4: "." and ".." are removed by resolution, after decoding of unreserved
    // characters (§6.2.2.3) — and servlet containers do it after dropping ";params", so
    // "..;x" is a dot segment too. Refused rather than resolved: what the backend resolves
    // relative to is not ours to guess.
    match segment_name(&out) {
        "." | ".." => Err(TargetError::DotSegment),
        "" => Err(TargetError::ParamOnlySegment),
        _ => Ok(out),
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3: unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~".
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "acme.localhost";

    fn path_of(raw: &str) -> String {
        match normalize(raw.as_bytes(), HOST) {
            Ok(target) => target.path,
            Err(err) => panic!("{raw:?} was refused: {err}"),
        }
    }

    fn refused(raw: &[u8]) -> TargetError {
        match normalize(raw, HOST) {
            Ok(target) => panic!(
                "{:?} was accepted as {target:?}",
                String::from_utf8_lossy(raw)
            ),
            Err(err) => err,
        }
    }

    fn assert_refused(cases: &[&str], expected: TargetError) {
        for raw in cases {
            assert_eq!(refused(raw.as_bytes()), expected, "{raw:?}");
        }
    }

    #[test]
    fn plain_origin_form_passes_unchanged() {
        let target = normalize(b"/api/v1/users?id=7&x=y", HOST).unwrap();
        assert_eq!(target.path, "/api/v1/users");
        assert_eq!(target.query.as_deref(), Some("id=7&x=y"));
        assert_eq!(target.path_and_query(), "/api/v1/users?id=7&x=y");
    }

    #[test]
    fn is_exactly_holds_only_for_the_target_that_goes_upstream() {
        for raw in ["/", "/a/b", "/a?", "/a?x=1&y=%2f", "/api/v1/users?id=7"] {
            let target = normalize(raw.as_bytes(), HOST).unwrap();
            assert!(target.is_exactly(raw.as_bytes()), "{raw}");
            assert!(target.is_exactly(target.path_and_query().as_bytes()));
        }
        // Rewritten by normalization, or not the same bytes: the target must be set again.
        for (raw, other) in [
            ("//a///b", "//a///b"),
            ("/%61dmin", "/%61dmin"),
            ("/caf%c3%a9", "/caf%c3%a9"),
            ("/a", "/a?"),
            ("/a?", "/a"),
            ("/a?x=1", "/a?x=2"),
            ("/a", "/ab"),
            ("/a", "http://acme.localhost/a"),
        ] {
            let target = normalize(raw.as_bytes(), HOST).unwrap();
            assert!(!target.is_exactly(other.as_bytes()), "{raw} vs {other}");
        }
    }

    #[test]
    fn root_is_root() {
        assert_eq!(path_of("/"), "/");
        assert_eq!(normalize(b"/", HOST).unwrap().query, None);
    }

    #[test]
    fn duplicate_slashes_are_collapsed() {
        assert_eq!(path_of("//a///b//"), "/a/b/");
        assert_eq!(path_of("//"), "/");
        assert_eq!(path_of("//evil.example/x"), "/evil.example/x");
    }

    #[test]
    fn trailing_slash_is_kept() {
        assert_eq!(path_of("/a/"), "/a/");
        assert_eq!(path_of("/a"), "/a");
    }

    #[test]
    fn escaped_unreserved_characters_are_decoded() {
        assert_eq!(path_of("/%61dm%69n"), "/admin");
        assert_eq!(path_of("/%41%5a%30%39%2D%5F%7E"), "/AZ09-_~");
        assert_eq!(path_of("/file%2ejs"), "/file.js");
        assert_eq!(path_of("/%2e%2e%2e"), "/...");
    }

    #[test]
    fn other_escapes_are_uppercased_not_decoded() {
        assert_eq!(path_of("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(path_of("/a%3fb%23c%3b"), "/a%3Fb%23c%3B");
        assert_eq!(path_of("/a%20b"), "/a%20b");
    }

    #[test]
    fn query_is_passed_unchanged() {
        let target = normalize(b"/a//b?x=%2f..%2F&y=%zz&z=100%25&w=/../", HOST).unwrap();
        assert_eq!(target.path, "/a/b");
        assert_eq!(
            target.query.as_deref(),
            Some("x=%2f..%2F&y=%zz&z=100%25&w=/../")
        );
    }

    #[test]
    fn empty_query_is_kept() {
        let target = normalize(b"/a?", HOST).unwrap();
        assert_eq!(target.query.as_deref(), Some(""));
        assert_eq!(target.path_and_query(), "/a?");
    }

    #[test]
    fn encoded_slash_is_rejected() {
        assert_refused(
            &["/a%2Fb", "/a%2fb", "/%2F", "/a/%2f/b"],
            TargetError::EncodedSlash,
        );
    }

    #[test]
    fn encoded_backslash_is_rejected() {
        assert_refused(
            &["/a%5Cb", "/a%5cb", "/%5c..%5c"],
            TargetError::EncodedSlash,
        );
    }

    #[test]
    fn raw_backslash_is_rejected() {
        assert_refused(&["/a\\b", "/\\", "/a/..\\b"], TargetError::Backslash);
    }

    #[test]
    fn encoded_nul_is_rejected() {
        assert_refused(&["/a%00", "/a%00.html", "/%00/b"], TargetError::Nul);
        assert_refused(
            &["/a%0d%0aSet-Cookie:x", "/a%09b", "/a%7Fb", "/a%1f"],
            TargetError::ControlChar,
        );
    }

    #[test]
    fn double_encoding_is_rejected() {
        assert_refused(
            &["/a%252Fb", "/a%252e%252e/", "/%25", "/100%25"],
            TargetError::DoubleEncoding,
        );
    }

    #[test]
    fn malformed_escape_is_rejected() {
        assert_refused(
            &[
                "/a%G1",
                "/a%1G",
                "/a%",
                "/a%2",
                "/a%%32%65",
                "/%/b",
                "/a%2?x",
            ],
            TargetError::BadEscape,
        );
    }

    #[test]
    fn raw_dot_segment_is_rejected() {
        assert_refused(
            &[
                "/a/../b", "/a/./b", "/..", "/.", "/a/..", "/a/.", "/../", "/./",
            ],
            TargetError::DotSegment,
        );
    }

    #[test]
    fn encoded_dot_segment_is_rejected() {
        assert_refused(
            &[
                "/a/%2e%2e/b",
                "/a/%2E%2E/b",
                "/a/%2E%2e/b",
                "/a/.%2e/b",
                "/a/%2e./b",
                "/a/%2E/b",
                "/%2e",
                "/a/%2e%2e",
            ],
            TargetError::DotSegment,
        );
    }

    #[test]
    fn dot_segment_with_semicolon_is_rejected() {
        assert_refused(
            &[
                "/a/..;/b",
                "/a/.;/b",
                "/a/..;x=1/b",
                "/a/.;x",
                "/a/%2e%2e;/b",
                "/a/..%3b/b",
                "/a/..%3Bjsessionid=1/b",
            ],
            TargetError::DotSegment,
        );
    }

    #[test]
    fn dot_segment_hidden_by_slash_runs_is_rejected() {
        assert_refused(&["/a//..//b", "//./a"], TargetError::DotSegment);
    }

    #[test]
    fn param_only_segment_is_rejected() {
        assert_refused(
            &["/;/admin", "/;x=1/admin", "/a/;/b", "/%3b/admin"],
            TargetError::ParamOnlySegment,
        );
    }

    #[test]
    fn dots_inside_names_are_allowed() {
        assert_eq!(
            path_of("/a/..b/c./.well-known/x...y"),
            "/a/..b/c./.well-known/x...y"
        );
        assert_eq!(path_of("/a;b=1/c"), "/a;b=1/c");
    }

    #[test]
    fn control_characters_are_rejected() {
        for raw in [
            &b"/a\x00b"[..],
            b"/a\tb",
            b"/a\rb",
            b"/a\nb",
            b"/a b",
            b"/a\x7fb",
            b"/a?q=\x01",
            b"/a?q=1 HTTP/1.1",
        ] {
            assert_eq!(refused(raw), TargetError::ControlChar, "{raw:?}");
        }
    }

    #[test]
    fn raw_non_ascii_is_rejected() {
        for raw in [
            "/café".as_bytes(),
            b"/a\x80",
            b"/a\xff\xfe",
            b"/a?q=\xc3\xa9",
        ] {
            assert_eq!(refused(raw), TargetError::NonAscii, "{raw:?}");
        }
    }

    #[test]
    fn fragment_is_rejected() {
        assert_refused(
            &["/a#b", "/a?b#c", "/#", "https://acme.localhost/#x"],
            TargetError::Fragment,
        );
    }

    #[test]
    fn asterisk_and_authority_form_are_rejected() {
        assert_refused(
            &["*", "acme.localhost:443", "acme.localhost", "[::1]:443"],
            TargetError::BadTarget,
        );
    }

    #[test]
    fn relative_and_empty_targets_are_rejected() {
        assert_eq!(refused(b""), TargetError::BadTarget);
        assert_refused(&["a/b", "?x=1", "./a", "%2Fa"], TargetError::BadTarget);
    }

    #[test]
    fn unknown_schemes_are_rejected() {
        assert_refused(
            &[
                "ftp://acme.localhost/a",
                "ws://acme.localhost/a",
                "file:///etc/passwd",
                "foo:bar://acme.localhost/admin",
                "https:/acme.localhost/a",
                "http:acme.localhost/a",
            ],
            TargetError::BadTarget,
        );
    }

    #[test]
    fn absolute_form_for_own_host_is_reduced_to_origin_form() {
        let target = normalize(b"https://acme.localhost/a//b?x=1", HOST).unwrap();
        assert_eq!(target.path, "/a/b");
        assert_eq!(target.query.as_deref(), Some("x=1"));
        assert_eq!(path_of("http://acme.localhost:8443/a"), "/a");
    }

    #[test]
    fn absolute_form_scheme_and_host_are_case_insensitive() {
        assert_eq!(path_of("HTTPS://ACME.localhost/a"), "/a");
        assert_eq!(path_of("HtTp://Acme.Localhost:80/a"), "/a");
    }

    #[test]
    fn absolute_form_empty_path_becomes_root() {
        assert_eq!(path_of("https://acme.localhost"), "/");
        assert_eq!(path_of("https://acme.localhost:8443"), "/");
        let target = normalize(b"https://acme.localhost?x=1", HOST).unwrap();
        assert_eq!(target.path_and_query(), "/?x=1");
    }

    #[test]
    fn absolute_form_host_mismatch_is_rejected() {
        assert_refused(
            &[
                "https://globex.localhost/a",
                "https://acme.localhost.evil.example/a",
                "https://acme.localhost./a",
                "https://xacme.localhost/a",
                "http://127.0.0.1/a",
                "https://acme.localhost%2eevil/a",
            ],
            TargetError::AbsoluteFormHostMismatch,
        );
    }

    #[test]
    fn absolute_form_userinfo_is_rejected() {
        assert_refused(
            &[
                "https://a@acme.localhost/",
                "https://user:pass@acme.localhost/a",
                "https://acme.localhost@globex.localhost/a",
                "https://@acme.localhost/",
            ],
            TargetError::Userinfo,
        );
    }

    #[test]
    fn absolute_form_malformed_authority_is_rejected() {
        assert_refused(
            &[
                "https:///a",
                "https://:443/a",
                "https://acme.localhost:/a",
                "https://acme.localhost:x/a",
                "https://acme.localhost:65536/a",
                "https://acme.localhost:443:443/a",
                "https://[::1/a",
                "https://[::1]x/a",
            ],
            TargetError::BadTarget,
        );
    }

    #[test]
    fn absolute_form_ipv6_literal_matches_host() {
        assert_eq!(
            normalize(b"https://[::1]:8443/a", "[::1]").unwrap().path,
            "/a"
        );
        assert_eq!(normalize(b"https://[::1]/a", "::1").unwrap().path, "/a");
        assert_eq!(
            normalize(b"https://[::2]/a", "::1"),
            Err(TargetError::AbsoluteFormHostMismatch)
        );
    }

    #[test]
    fn absolute_form_path_gets_the_same_checks() {
        assert_eq!(
            normalize(b"https://acme.localhost/a/%2e%2e/b", HOST),
            Err(TargetError::DotSegment)
        );
        assert_eq!(
            normalize(b"https://acme.localhost/a%2fb", HOST),
            Err(TargetError::EncodedSlash)
        );
    }

    #[test]
    fn normalization_is_idempotent() {
        for raw in [
            "/a//b/%7euser/caf%c3%a9?q",
            "/%41/",
            "https://acme.localhost",
        ] {
            let once = normalize(raw.as_bytes(), HOST).unwrap().path_and_query();
            let twice = normalize(once.as_bytes(), HOST).unwrap().path_and_query();
            assert_eq!(once, twice, "{raw:?}");
        }
    }

    #[test]
    fn error_codes_are_stable() {
        let cases = [
            (TargetError::BadTarget, "bad_target"),
            (TargetError::ControlChar, "control_char"),
            (TargetError::NonAscii, "non_ascii"),
            (TargetError::Fragment, "fragment"),
            (TargetError::Backslash, "backslash"),
            (TargetError::EncodedSlash, "encoded_slash"),
            (TargetError::Nul, "nul"),
            (TargetError::DoubleEncoding, "double_encoding"),
            (TargetError::BadEscape, "bad_escape"),
            (TargetError::DotSegment, "dot_segment"),
            (TargetError::ParamOnlySegment, "param_only_segment"),
            (TargetError::Userinfo, "userinfo"),
            (
                TargetError::AbsoluteFormHostMismatch,
                "absolute_form_host_mismatch",
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code);
        }
    }

    #[test]
    fn prefix_matches_whole_segments_only() {
        let cases = [
            ("/api", "/api", true),
            ("/api/", "/api", true),
            ("/api/x", "/api", true),
            ("/api/x/y", "/api/x", true),
            ("/apix", "/api", false),
            ("/ap", "/api", false),
            ("/", "/api", false),
            ("/x/api", "/api", false),
            ("/api/xy", "/api/x", false),
        ];
        for (path, prefix, expected) in cases {
            assert_eq!(
                path_has_prefix(path, prefix),
                expected,
                "{path} vs {prefix}"
            );
        }
    }

    #[test]
    fn root_prefix_matches_everything() {
        for path in ["/", "/a", "/a/b/", "/apix;y"] {
            assert!(path_has_prefix(path, "/"), "{path}");
        }
    }

    #[test]
    fn prefix_trailing_slash_is_ignored() {
        assert!(path_has_prefix("/api", "/api/"));
        assert!(path_has_prefix("/api/x", "/api/"));
        assert!(!path_has_prefix("/apix", "/api/"));
    }

    #[test]
    fn segment_params_cannot_dodge_a_prefix() {
        assert!(path_has_prefix("/admin;x", "/admin"));
        assert!(path_has_prefix("/admin;jsessionid=1/users", "/admin"));
        assert!(path_has_prefix("/admin%3Bx/users", "/admin/users"));
        assert!(path_has_prefix("/admin/users;v=2", "/admin/users"));
        assert!(!path_has_prefix("/adminx;y", "/admin"));
    }

    #[test]
    fn encoded_spelling_of_a_prefix_matches_after_normalization() {
        let path = path_of("/%61dmin//secret");
        assert!(path_has_prefix(&path, "/admin"));
    }
}
