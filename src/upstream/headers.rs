//! Header hygiene toward the upstream, and who the client really is.
//!
//! A backend trusts what the gateway sends it, so nothing a client wrote may look like
//! something the gateway vouches for: hop-by-hop headers end at this hop, every inbound
//! `X-Portcullis-*` (in any spelling a backend might fold into it) is dropped, forwarding
//! headers are believed only from configured proxies, and the gateway then writes its own
//! forwarding and tenant headers last, so no inbound header can remove or replace them.

use std::net::IpAddr;

use http::header::{self, HeaderName, HeaderValue};
use http::HeaderMap;
use ipnet::IpNet;
use pingora::http::RequestHeader;

/// The proxies whose forwarding headers are believed (config `proxy.trusted_proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Trust peers inside any of `nets`.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    /// Whether `ip` is a trusted proxy. An IPv4-mapped IPv6 address (a dual-stack listener's
    /// view of an IPv4 peer) is checked as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The real client.
///
/// If `peer` is a trusted proxy, walk X-Forwarded-For right-to-left skipping trusted hops; the
/// first untrusted hop is the client. A malformed entry stops the walk and the last trusted
/// hop seen is used: only hops vouched for by a trusted proxy are believed, and garbage is
/// never believed. Otherwise `peer`. Addresses are returned in canonical form (an
/// IPv4-mapped IPv6 address as IPv4), so one client has one key in rate limits and logs.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let mut client = peer.to_canonical();
    if !trusted.contains(client) {
        return client;
    }
    // X-Forwarded-For is de facto, in the append order RFC 7239 §4 standardizes for
    // Forwarded: each proxy appends the address it received from, so entries to the right
    // were written by proxies closer to us, and only an entry written by a trusted proxy
    // can be believed.
    let values: Vec<&HeaderValue> = headers.get_all(X_FORWARDED_FOR).iter().collect();
    // RFC 9110 §5.3: repeated field lines are one comma-separated list, in order.
    for value in values.into_iter().rev() {
        let Ok(list) = value.to_str() else {
            return client;
        };
        for entry in list.rsplit(',') {
            let Ok(hop) = entry.trim_matches([' ', '\t']).parse::<IpAddr>() else {
                return client;
            };
            client = hop.to_canonical();
            if !trusted.contains(client) {
                return client;
            }
        }
    }
    client
}

/// What the gateway knows about one request when forwarding it.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The TCP peer of the downstream connection.
    pub peer: IpAddr,
    /// The request's Host (as resolved to the tenant), sent as X-Forwarded-Host.
    pub host: &'a str,
    /// The tenant id, sent as X-Portcullis-Tenant.
    pub tenant: &'a str,
    /// The proxies whose forwarding headers are believed.
    pub trusted: &'a TrustedProxies,
    /// The request is a protocol upgrade (WebSocket) that must keep `Upgrade` and
    /// `Connection: upgrade` end to end.
    pub is_upgrade: bool,
}

/// A header the gateway must set could not be built; the request must not be forwarded
/// without it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrepareError {
    /// The value is not a valid field value (RFC 9110 §5.5).
    #[error("cannot set {name}: not a valid header value")]
    InvalidValue {
        /// The header that could not be set.
        name: &'static str,
    },
}

impl PrepareError {
    /// A stable short reason code for logs and audit events.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidValue { .. } => "invalid_forwarding_value",
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_PORTCULLIS_TENANT: HeaderName = HeaderName::from_static("x-portcullis-tenant");

/// The namespace of headers only the gateway may write.
const IDENTITY_PREFIX: &str = "x-portcullis-";

/// RFC 9110 §7.6.1: hop-by-hop fields, plus their well-known non-standard relatives
/// (`Keep-Alive`, `Proxy-Connection`), the proxy credentials meant for this hop only, and
/// `HTTP2-Settings` (RFC 7540 §3.2.1: connection-specific, part of an h2c upgrade).
/// `Upgrade` is listed separately because an upgrade request keeps it.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
    "http2-settings",
];

/// Headers a `Connection` option can never remove: they describe the message itself and
/// pingora frames the upstream request with them (RFC 9110 §7.6.1 forbids naming fields meant
/// for every recipient as connection options).
const FRAMING: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// Client-address headers believed only from trusted proxies; `x-forwarded-*` are matched by
/// prefix.
const FORWARDED_PREFIX: &str = "x-forwarded-";
const FORWARDED_NAMES: [&str; 5] = [
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
];

/// The fields of the request that goes upstream, computed once from `source` (the client's
/// request, or pingora's copy of it). Callers write them out one by one: into a fresh header
/// map for pingora_proxy (building one costs a fraction of editing a copy in place: pingora's
/// request header keeps a second, case-preserving map that every edit must update), or
/// straight onto the wire on the direct path. Field names go upstream in lowercase, as in
/// HTTP/2 (names are case-insensitive, RFC 9110 §5.1).
///
/// 1. Drop hop-by-hop headers (RFC 9110 §7.6.1), keeping `Upgrade` with
///    `Connection: upgrade` when `is_upgrade`, and every header named in `Connection` except
///    Content-Length, Transfer-Encoding and Host.
/// 2. Drop every header whose name, lowercased with `_` → `-`, starts with `x-portcullis-`.
/// 3. Drop forwarding headers (`x-forwarded-*`, `forwarded`, `x-real-ip`, `true-client-ip`,
///    `x-client-ip`, `cf-connecting-ip`) unless the peer is trusted; their `_` spellings always.
/// 4. Set Host, X-Forwarded-For (trusted peer: the inbound chain + ", " + peer; otherwise the
///    client address alone), X-Forwarded-Proto: https, X-Forwarded-Host and
///    X-Portcullis-Tenant.
///
/// Identity headers the caller adds (X-Portcullis-User, -Roles, -Jwt) come after these
/// fields. On error nothing may be forwarded.
pub struct Outgoing {
    policy: StripPolicy,
    upgrade: bool,
    /// Host, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, X-Portcullis-Tenant.
    set: [(HeaderName, HeaderValue); 5],
}

impl Outgoing {
    /// Decide what of `source` goes upstream and build the fields the gateway sets. On error
    /// nothing may be forwarded.
    pub fn new(source: &RequestHeader, fwd: &Forwarding<'_>) -> Result<Self, PrepareError> {
        let peer = fwd.peer.to_canonical();
        let policy = StripPolicy {
            is_upgrade: fwd.is_upgrade,
            peer_trusted: fwd.trusted.contains(peer),
            connection_options: connection_options(&source.headers),
        };
        // Read before anything is dropped: the chain must not be droppable by naming
        // X-Forwarded-For in Connection, and must agree with what `client_ip` saw. An untrusted
        // peer is its own client, so its inbound chain is not repeated.
        let forwarded_for = match inbound_chain(&source.headers) {
            Some(chain) if policy.peer_trusted => format!("{chain}, {peer}"),
            _ => ip_text(peer),
        };
        let value = |name: &'static str, text: &str| {
            HeaderValue::from_str(text).map_err(|_| PrepareError::InvalidValue { name })
        };
        let forwarded_for = value("X-Forwarded-For", &forwarded_for)?;
        // Host and X-Forwarded-Host carry the same value.
        let host = value("X-Forwarded-Host", fwd.host)?;
        Ok(Self {
            policy,
            upgrade: fwd.is_upgrade,
            set: [
                (header::HOST, host.clone()),
                (X_FORWARDED_FOR, forwarded_for),
                (X_FORWARDED_PROTO, HeaderValue::from_static("https")),
                (X_FORWARDED_HOST, host),
                (
                    X_PORTCULLIS_TENANT,
                    value("X-Portcullis-Tenant", fwd.tenant)?,
                ),
            ],
        })
    }

    /// Every field that goes upstream, once each, in order: what is kept of `source` (the
    /// request [`Outgoing::new`] was given), then the fields the gateway sets, which no kept
    /// field shares a name with.
    pub fn each(&self, source: &RequestHeader, mut field: impl FnMut(&HeaderName, &HeaderValue)) {
        for (name, value) in &source.headers {
            if self.policy.removes(name) || GATEWAY_SET.contains(name) {
                continue;
            }
            field(name, value);
        }
        // RFC 9110 §7.8: Upgrade is only acted on when Connection names it (the client's
        // Connection, hop-by-hop, was dropped above).
        if self.upgrade {
            field(&header::CONNECTION, &HeaderValue::from_static("upgrade"));
        }
        for (name, value) in &self.set {
            field(name, value);
        }
    }
}

/// Fields the gateway writes itself, so a client's copies are never forwarded.
/// (X-Portcullis-Tenant needs no place here: every inbound `x-portcullis-*` is dropped.)
const GATEWAY_SET: [HeaderName; 4] = [
    header::HOST,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
];

/// An address as X-Forwarded-For writes it; IPv4, nearly every client, without the
/// formatting machinery.
fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                if octet >= 100 {
                    text.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    text.push(char::from(b'0' + octet / 10 % 10));
                }
                text.push(char::from(b'0' + octet % 10));
            }
            text
        }
        IpAddr::V6(_) => ip.to_string(),
    }
}

/// The upstream response header as the client gets it, without the hop-by-hop fields of RFC
/// 9110 §7.6.1: those of [`HOP_BY_HOP`], `Upgrade`, and every field the response's
/// `Connection` names, except the framing fields pingora re-frames the body with. A `101
/// Switching Protocols` keeps `Upgrade` and `Connection`, which complete the upgrade. Built
/// fresh (see [`Outgoing`]) with room for `room` more fields.
pub fn client_response(upstream: &pingora::http::ResponseHeader, room: usize) -> ResponseParts {
    let switching = upstream.status == http::StatusCode::SWITCHING_PROTOCOLS;
    let named = if switching {
        Vec::new()
    } else {
        connection_options(&upstream.headers)
    };
    let mut headers = HeaderMap::with_capacity(upstream.headers.len() + room);
    for (name, value) in &upstream.headers {
        if switching || reaches_client(name.as_str(), &named) {
            headers.append(name.clone(), value.clone());
        }
    }
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = upstream.status;
    parts.version = upstream.version;
    parts.headers = headers;
    parts
}

/// Whether a field of an upstream response (not a `101`) reaches the client: not one of
/// [`HOP_BY_HOP`], not `Upgrade`, and not named in the response's `Connection` (`named`, as
/// [`connection_options_in`] lists them) unless it frames the body, which pingora re-frames.
pub fn reaches_client(name: &str, named: &[String]) -> bool {
    let hop_by_hop = name == "upgrade"
        || HOP_BY_HOP.contains(&name)
        || (named.iter().any(|option| option == name) && !FRAMING.contains(&name));
    !hop_by_hop
}

/// A response header's parts: status, version and one header map.
pub type ResponseParts = http::response::Parts;

/// Decides, header by header, what must not reach the upstream.
struct StripPolicy {
    is_upgrade: bool,
    peer_trusted: bool,
    /// The lowercased options listed in Connection.
    connection_options: Vec<String>,
}

impl StripPolicy {
    fn removes(&self, name: &HeaderName) -> bool {
        let name = name.as_str();
        if name == "upgrade" {
            return !self.is_upgrade;
        }
        if HOP_BY_HOP.contains(&name) {
            return true;
        }
        if self.connection_options.iter().any(|option| option == name) && !FRAMING.contains(&name) {
            return true;
        }
        // Backends behind CGI, PHP, WSGI and similar fold '_' into '-'
        // (HTTP_X_PORTCULLIS_USER), so every spelling of our namespace is ours alone.
        if folded_starts_with(name, IDENTITY_PREFIX) {
            return true;
        }
        let forwarding = folded_starts_with(name, FORWARDED_PREFIX)
            || FORWARDED_NAMES
                .iter()
                .any(|known| known.len() == name.len() && folded_starts_with(name, known));
        // A trusted proxy writes the canonical spelling; an underscore variant beside it
        // could shadow the real value in such a backend, so it is never believed.
        forwarding && (!self.peer_trusted || name.contains('_'))
    }
}

/// Whether `name` with every `_` read as `-` starts with `prefix` (which has no `_`). Runs on
/// every inbound header of every request, so it compares in place instead of building the
/// folded name.
fn folded_starts_with(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name
            .bytes()
            .zip(prefix.bytes())
            .all(|(n, p)| n == p || (n == b'_' && p == b'-'))
}

/// RFC 9110 §7.6.1: Connection lists further header names that are hop-by-hop. Options are
/// case-insensitive, comma-separated, with optional whitespace, over any number of lines.
fn connection_options(headers: &HeaderMap) -> Vec<String> {
    connection_options_in(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    )
}

/// The options, lowercased, that the given `Connection` lines list (see
/// [`connection_options`]); a line that is not visible ASCII names nothing.
pub fn connection_options_in<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    lines
        .filter_map(|line| std::str::from_utf8(line).ok())
        .filter(|line| {
            line.bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        })
        .flat_map(|line| line.split(','))
        .map(|option| option.trim_matches([' ', '\t']).to_ascii_lowercase())
        .filter(|option| !option.is_empty())
        .collect()
}

/// The inbound X-Forwarded-For lines joined into one list, or `None` if there are none.
fn inbound_chain(headers: &HeaderMap) -> Option<String> {
    let entries: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(|value| value.trim_matches([' ', '\t']))
        .filter(|value| !value.is_empty())
        .collect();
    (!entries.is_empty()).then(|| entries.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request as [`Outgoing`] makes it, in a header map (as the gateway builds it for
    /// pingora_proxy).
    fn forward(
        source: &RequestHeader,
        uri: http::Uri,
        fwd: &Forwarding<'_>,
    ) -> Result<http::request::Parts, PrepareError> {
        let outgoing = Outgoing::new(source, fwd)?;
        let mut headers = HeaderMap::new();
        outgoing.each(source, |name, value| {
            headers.append(name.clone(), value.clone());
        });
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = source.method.clone();
        parts.uri = uri;
        parts.headers = headers;
        Ok(parts)
    }

    const UNTRUSTED_PEER: &str = "203.0.113.9";
    const TRUSTED_PEER: &str = "10.0.0.1";

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn trusted() -> TrustedProxies {
        TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ])
    }

    fn map(fields: &[(&str, &str)]) -> HeaderMap {
        request(fields).headers.clone()
    }

    fn request(fields: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (name, value) in fields {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    /// Run `prepare` as the gateway would for a non-upgrade request to acme.
    fn prepared(peer: &str, fields: &[(&str, &str)]) -> RequestHeader {
        prepared_with(peer, fields, false)
    }

    fn prepared_with(peer: &str, fields: &[(&str, &str)], is_upgrade: bool) -> RequestHeader {
        let req = request(fields);
        let trusted = trusted();
        let fwd = Forwarding {
            peer: ip(peer),
            host: "acme.localhost",
            tenant: "acme",
            trusted: &trusted,
            is_upgrade,
        };
        let uri = req.uri.clone();
        RequestHeader::from(forward(&req, uri, &fwd).unwrap())
    }

    fn values(req: &RequestHeader, name: &str) -> Vec<String> {
        req.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    fn assert_absent(req: &RequestHeader, names: &[&str]) {
        for name in names {
            assert!(
                !req.headers.contains_key(*name),
                "{name} reached the upstream"
            );
        }
    }

    #[test]
    fn trusted_proxies_match_their_networks() {
        let trusted = trusted();
        assert!(trusted.contains(ip("10.1.2.3")));
        assert!(trusted.contains(ip("fd00::1")));
        assert!(!trusted.contains(ip("11.0.0.1")));
        assert!(!trusted.contains(ip("2001:db8::1")));
        assert!(!TrustedProxies::default().contains(ip("10.0.0.1")));
    }

    #[test]
    fn ipv4_mapped_peer_is_matched_as_ipv4() {
        assert!(trusted().contains(ip("::ffff:10.0.0.1")));
        assert!(!trusted().contains(ip("::ffff:11.0.0.1")));
    }

    #[test]
    fn xff_from_untrusted_peer_is_ignored() {
        let headers = map(&[("x-forwarded-for", "1.2.3.4"), ("x-real-ip", "1.2.3.4")]);
        assert_eq!(
            client_ip(ip(UNTRUSTED_PEER), &headers, &trusted()),
            ip(UNTRUSTED_PEER)
        );
    }

    #[test]
    fn trusted_peer_without_xff_is_the_client() {
        assert_eq!(
            client_ip(ip(TRUSTED_PEER), &HeaderMap::new(), &trusted()),
            ip(TRUSTED_PEER)
        );
    }

    #[test]
    fn other_client_headers_are_never_consulted() {
        let headers = map(&[("x-real-ip", "1.2.3.4"), ("forwarded", "for=1.2.3.4")]);
        assert_eq!(
            client_ip(ip(TRUSTED_PEER), &headers, &trusted()),
            ip(TRUSTED_PEER)
        );
    }

    #[test]
    fn client_is_the_rightmost_untrusted_hop() {
        let cases = [
            ("1.2.3.4", "1.2.3.4"),
            ("1.2.3.4, 10.0.0.2", "1.2.3.4"),
            ("1.2.3.4,10.0.0.2 ,\t10.0.0.3", "1.2.3.4"),
            ("2001:db8::1, fd00::2", "2001:db8::1"),
        ];
        for (xff, client) in cases {
            let headers = map(&[("x-forwarded-for", xff)]);
            assert_eq!(
                client_ip(ip(TRUSTED_PEER), &headers, &trusted()),
                ip(client),
                "{xff}"
            );
        }
    }

    #[test]
    fn spoofed_leftmost_xff_entry_is_ignored() {
        let headers = map(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.2")]);
        assert_eq!(
            client_ip(ip(TRUSTED_PEER), &headers, &trusted()),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn all_trusted_chain_yields_the_leftmost_hop() {
        let headers = map(&[("x-forwarded-for", "10.0.0.3, 10.0.0.2")]);
        assert_eq!(
            client_ip(ip(TRUSTED_PEER), &headers, &trusted()),
            ip("10.0.0.3")
        );
    }

    #[test]
    fn malformed_xff_entry_stops_at_last_trusted_hop() {
        let cases = [
            ("1.2.3.4, garbage, 10.0.0.2", "10.0.0.2"),
            ("1.2.3.4,,10.0.0.2", "10.0.0.2"),
            ("1.2.3.4, 10.0.0.2:443", TRUSTED_PEER),
            ("[2001:db8::1]", TRUSTED_PEER),
            ("unknown", TRUSTED_PEER),
            ("", TRUSTED_PEER),
            ("1.2.3.4 5.6.7.8", TRUSTED_PEER),
        ];
        for (xff, client) in cases {
            let headers = map(&[("x-forwarded-for", xff)]);
            assert_eq!(
                client_ip(ip(TRUSTED_PEER), &headers, &trusted()),
                ip(client),
                "{xff:?}"
            );
        }
    }

    #[test]
    fn non_utf8_xff_is_not_believed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"1.2.3.4\xff").unwrap(),
        );
        assert_eq!(
            client_ip(ip(TRUSTED_PEER), &headers, &trusted()),
            ip(TRUSTED_PEER)
        );
    }

    #[test]
    fn repeated_xff_lines_are_one_list() {
        let headers = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "1.2.3.4, 10.0.0.2"),
        ]);
        assert_eq!(
            client_ip(ip(TRUSTED_PEER), &headers, &trusted()),
            ip("1.2.3.4")
        );
        let headers = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        assert_eq!(
            client_ip(ip(TRUSTED_PEER), &headers, &trusted()),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn mapped_addresses_are_returned_canonical() {
        assert_eq!(
            client_ip(ip("::ffff:203.0.113.9"), &HeaderMap::new(), &trusted()),
            ip(UNTRUSTED_PEER)
        );
        let headers = map(&[("x-forwarded-for", "::ffff:1.2.3.4")]);
        assert_eq!(
            client_ip(ip(TRUSTED_PEER), &headers, &trusted()),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let req = prepared(
            UNTRUSTED_PEER,
            &[
                ("Connection", "keep-alive"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("TE", "trailers"),
                ("Trailer", "x-checksum"),
                ("Upgrade", "websocket"),
                ("Proxy-Authorization", "Basic YTpi"),
                ("Proxy-Authenticate", "Basic"),
                ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ],
        );
        assert_absent(
            &req,
            &[
                "connection",
                "keep-alive",
                "proxy-connection",
                "te",
                "trailer",
                "upgrade",
                "proxy-authorization",
                "proxy-authenticate",
                "http2-settings",
            ],
        );
    }

    #[test]
    fn headers_named_in_connection_are_removed() {
        let req = prepared(
            UNTRUSTED_PEER,
            &[
                ("Connection", " X-Foo ,\tx-bar"),
                ("Connection", "X-BAZ"),
                ("X-Foo", "1"),
                ("X-Bar", "2"),
                ("X-Baz", "3"),
                ("X-Kept", "4"),
            ],
        );
        assert_absent(&req, &["x-foo", "x-bar", "x-baz"]);
        assert_eq!(values(&req, "x-kept"), ["4"]);
    }

    #[test]
    fn connection_cannot_drop_framing_headers() {
        let req = prepared(
            UNTRUSTED_PEER,
            &[
                ("Connection", "content-length, Transfer-Encoding, host"),
                ("Host", "acme.localhost"),
                ("Content-Length", "5"),
            ],
        );
        assert_eq!(values(&req, "host"), ["acme.localhost"]);
        assert_eq!(values(&req, "content-length"), ["5"]);
    }

    #[test]
    fn connection_cannot_drop_identity_headers() {
        let req = prepared(
            UNTRUSTED_PEER,
            &[(
                "Connection",
                "X-Portcullis-Tenant, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host",
            )],
        );
        assert_eq!(values(&req, "x-portcullis-tenant"), ["acme"]);
        assert_eq!(values(&req, "x-forwarded-for"), [UNTRUSTED_PEER]);
        assert_eq!(values(&req, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&req, "x-forwarded-host"), ["acme.localhost"]);
    }

    #[test]
    fn connection_cannot_drop_trusted_forwarded_chain() {
        let req = prepared(
            TRUSTED_PEER,
            &[
                ("Connection", "x-forwarded-for"),
                ("X-Forwarded-For", "1.2.3.4"),
            ],
        );
        assert_eq!(values(&req, "x-forwarded-for"), ["1.2.3.4, 10.0.0.1"]);
    }

    #[test]
    fn websocket_upgrade_keeps_upgrade_and_connection() {
        let req = prepared_with(
            UNTRUSTED_PEER,
            &[
                ("Connection", "Upgrade, X-Foo"),
                ("Upgrade", "websocket"),
                ("X-Foo", "1"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            true,
        );
        assert_eq!(values(&req, "upgrade"), ["websocket"]);
        assert_eq!(values(&req, "connection"), ["upgrade"]);
        assert_eq!(
            values(&req, "sec-websocket-key"),
            ["dGhlIHNhbXBsZSBub25jZQ=="]
        );
        assert_absent(&req, &["x-foo"]);
    }

    #[test]
    fn upgrade_is_removed_from_a_plain_request() {
        let req = prepared(
            UNTRUSTED_PEER,
            &[("Connection", "upgrade"), ("Upgrade", "h2c")],
        );
        assert_absent(&req, &["upgrade", "connection"]);
    }

    #[test]
    fn inbound_identity_headers_are_stripped() {
        let req = prepared(
            UNTRUSTED_PEER,
            &[
                ("X-Portcullis-User", "admin"),
                ("x-portcullis-roles", "admin"),
                ("X-PORTCULLIS-JWT", "eyJ..."),
                ("X-Portcullis-Anything", "1"),
            ],
        );
        assert_absent(
            &req,
            &[
                "x-portcullis-user",
                "x-portcullis-roles",
                "x-portcullis-jwt",
                "x-portcullis-anything",
            ],
        );
    }

    #[test]
    fn underscore_lookalike_identity_header_is_stripped() {
        let req = prepared(
            TRUSTED_PEER,
            &[
                ("X_Portcullis_User", "admin"),
                ("x-portcullis_roles", "admin"),
                ("x_portcullis-jwt", "eyJ..."),
                ("X_PORTCULLIS_TENANT", "globex"),
            ],
        );
        assert_absent(
            &req,
            &[
                "x_portcullis_user",
                "x-portcullis_roles",
                "x_portcullis-jwt",
                "x_portcullis_tenant",
            ],
        );
    }

    #[test]
    fn identity_lookalikes_outside_the_namespace_pass() {
        let req = prepared(
            UNTRUSTED_PEER,
            &[("X-Portcullis", "1"), ("X-Not-Portcullis-User", "2")],
        );
        assert_eq!(values(&req, "x-portcullis"), ["1"]);
        assert_eq!(values(&req, "x-not-portcullis-user"), ["2"]);
    }

    #[test]
    fn response_hop_by_hop_fields_end_here_except_framing_and_upgrades() {
        let mut resp = pingora::http::ResponseHeader::build(200, None).unwrap();
        for (name, value) in [
            ("Connection", "close, X-Hop, Content-Length"),
            ("X-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Upgrade", "h2c"),
            ("Proxy-Authenticate", "Basic"),
            ("Content-Length", "2"),
            ("X-Kept", "yes"),
            ("X-Kept", "twice"),
        ] {
            resp.append_header(name.to_string(), value).unwrap();
        }
        let parts = client_response(&resp, 0);
        let mut names: Vec<&str> = parts.headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "x-kept"]);
        let kept: Vec<_> = parts.headers.get_all("x-kept").iter().collect();
        assert_eq!(kept, ["yes", "twice"], "repeated fields keep their order");
        assert_eq!(parts.status, 200);

        let mut switching = pingora::http::ResponseHeader::build(101, None).unwrap();
        switching.append_header("Connection", "Upgrade").unwrap();
        switching.append_header("Upgrade", "websocket").unwrap();
        let parts = client_response(&switching, 0);
        assert_eq!(parts.headers.len(), 2, "a 101 completes the upgrade");
    }

    #[test]
    fn forwarding_lookalikes_that_are_not_forwarding_headers_pass() {
        // Only the listed names (in any `_`/`-` spelling) are forwarding headers; a longer or
        // shorter name is an ordinary header, even from an untrusted peer.
        let req = prepared(
            UNTRUSTED_PEER,
            &[
                ("X-Real-IPs", "1"),
                ("Forwarded-By", "2"),
                ("X-Forwarde", "3"),
                ("x-client_i", "4"),
            ],
        );
        assert_eq!(values(&req, "x-real-ips"), ["1"]);
        assert_eq!(values(&req, "forwarded-by"), ["2"]);
        assert_eq!(values(&req, "x-forwarde"), ["3"]);
        assert_eq!(values(&req, "x-client_i"), ["4"]);
    }

    #[test]
    fn inbound_tenant_header_is_replaced() {
        let req = prepared(
            TRUSTED_PEER,
            &[
                ("X-Portcullis-Tenant", "globex"),
                ("X-Portcullis-Tenant", "acme2"),
            ],
        );
        assert_eq!(values(&req, "x-portcullis-tenant"), ["acme"]);
    }

    #[test]
    fn xff_from_untrusted_peer_is_replaced() {
        let req = prepared(
            UNTRUSTED_PEER,
            &[
                ("X-Forwarded-For", "1.2.3.4"),
                ("X-Forwarded-For", "5.6.7.8"),
            ],
        );
        assert_eq!(values(&req, "x-forwarded-for"), [UNTRUSTED_PEER]);
    }

    #[test]
    fn forwarding_headers_from_untrusted_peer_are_removed() {
        let req = prepared(
            UNTRUSTED_PEER,
            &[
                ("Forwarded", "for=1.2.3.4;proto=http"),
                ("X-Real-IP", "1.2.3.4"),
                ("True-Client-IP", "1.2.3.4"),
                ("X-Client-IP", "1.2.3.4"),
                ("CF-Connecting-IP", "1.2.3.4"),
                ("X-Forwarded-Port", "80"),
                ("X-Forwarded-Prefix", "/admin"),
                ("X-Forwarded-User", "admin"),
            ],
        );
        assert_absent(
            &req,
            &[
                "forwarded",
                "x-real-ip",
                "true-client-ip",
                "x-client-ip",
                "cf-connecting-ip",
                "x-forwarded-port",
                "x-forwarded-prefix",
                "x-forwarded-user",
            ],
        );
    }

    #[test]
    fn forwarding_headers_from_trusted_peer_are_kept() {
        let req = prepared(
            TRUSTED_PEER,
            &[
                ("Forwarded", "for=1.2.3.4"),
                ("X-Real-IP", "1.2.3.4"),
                ("X-Forwarded-Port", "443"),
            ],
        );
        assert_eq!(values(&req, "forwarded"), ["for=1.2.3.4"]);
        assert_eq!(values(&req, "x-real-ip"), ["1.2.3.4"]);
        assert_eq!(values(&req, "x-forwarded-port"), ["443"]);
    }

    #[test]
    fn underscore_forwarding_headers_are_always_removed() {
        let fields = [
            ("X_Forwarded_For", "6.6.6.6"),
            ("x_forwarded-host", "evil.example"),
            ("X_Real_IP", "6.6.6.6"),
            ("true_client_ip", "6.6.6.6"),
            ("X_Client_IP", "6.6.6.6"),
            ("CF_Connecting_IP", "6.6.6.6"),
        ];
        for peer in [TRUSTED_PEER, UNTRUSTED_PEER] {
            let req = prepared(peer, &fields);
            assert_absent(
                &req,
                &[
                    "x_forwarded_for",
                    "x_forwarded-host",
                    "x_real_ip",
                    "true_client_ip",
                    "x_client_ip",
                    "cf_connecting_ip",
                ],
            );
        }
    }

    #[test]
    fn trusted_peer_extends_the_chain() {
        let req = prepared(TRUSTED_PEER, &[("X-Forwarded-For", "1.2.3.4, 10.0.0.2")]);
        assert_eq!(
            values(&req, "x-forwarded-for"),
            ["1.2.3.4, 10.0.0.2, 10.0.0.1"]
        );
    }

    #[test]
    fn trusted_peer_repeated_xff_lines_are_joined() {
        let req = prepared(
            TRUSTED_PEER,
            &[
                ("X-Forwarded-For", "1.2.3.4"),
                ("X-Forwarded-For", " 10.0.0.2 "),
            ],
        );
        assert_eq!(
            values(&req, "x-forwarded-for"),
            ["1.2.3.4, 10.0.0.2, 10.0.0.1"]
        );
    }

    #[test]
    fn trusted_peer_without_chain_sends_itself() {
        let req = prepared(TRUSTED_PEER, &[]);
        assert_eq!(values(&req, "x-forwarded-for"), [TRUSTED_PEER]);
    }

    #[test]
    fn mapped_peer_is_forwarded_as_ipv4() {
        let req = prepared("::ffff:203.0.113.9", &[]);
        assert_eq!(values(&req, "x-forwarded-for"), [UNTRUSTED_PEER]);
    }

    #[test]
    fn ipv6_peer_is_forwarded_without_brackets() {
        let req = prepared("2001:db8::7", &[]);
        assert_eq!(values(&req, "x-forwarded-for"), ["2001:db8::7"]);
    }

    #[test]
    fn forwarded_proto_and_host_are_always_ours() {
        let req = prepared(
            TRUSTED_PEER,
            &[
                ("X-Forwarded-Proto", "http"),
                ("X-Forwarded-Host", "evil.example"),
            ],
        );
        assert_eq!(values(&req, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&req, "x-forwarded-host"), ["acme.localhost"]);
    }

    #[test]
    fn ordinary_headers_pass_untouched() {
        let fields = [
            ("Accept", "application/json"),
            ("Authorization", "Bearer abc"),
            ("Content-Type", "text/plain"),
            ("Content-Length", "5"),
            ("User-Agent", "curl/8"),
            ("Host", "acme.localhost"),
        ];
        let req = prepared(UNTRUSTED_PEER, &fields);
        for (name, value) in fields {
            assert_eq!(values(&req, &name.to_ascii_lowercase()), [value], "{name}");
        }
    }

    #[test]
    fn gateway_headers_are_on_the_wire_once_each() {
        let req = prepared(
            UNTRUSTED_PEER,
            &[
                ("x-portcullis-tenant", "globex"),
                ("X-Forwarded-Host", "evil.example"),
                ("Host", "evil.example"),
            ],
        );
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        for line in [
            "x-forwarded-for: 203.0.113.9\r\n",
            "x-forwarded-proto: https\r\n",
            "x-forwarded-host: acme.localhost\r\n",
            "x-portcullis-tenant: acme\r\n",
            "host: acme.localhost\r\n",
        ] {
            assert_eq!(wire.matches(line).count(), 1, "{line:?} in {wire:?}");
        }
        assert!(!wire.contains("globex"));
        assert!(!wire.contains("evil"));
    }

    #[test]
    fn forwarded_for_writes_addresses_as_display_does() {
        for text in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "100.200.255.9",
            "::1",
            "2001:db8::7",
        ] {
            assert_eq!(ip_text(ip(text)), text);
        }
    }

    #[test]
    fn invalid_forwarding_value_fails_closed() {
        let req = request(&[]);
        let trusted = trusted();
        let fwd = Forwarding {
            peer: ip(UNTRUSTED_PEER),
            host: "acme.localhost\r\nX-Portcullis-User: admin",
            tenant: "acme",
            trusted: &trusted,
            is_upgrade: false,
        };
        let uri = req.uri.clone();
        let err = forward(&req, uri, &fwd).unwrap_err();
        assert_eq!(
            err,
            PrepareError::InvalidValue {
                name: "X-Forwarded-Host"
            }
        );
        assert_eq!(err.code(), "invalid_forwarding_value");
    }
}
