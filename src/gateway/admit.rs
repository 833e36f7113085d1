//! The admission pipeline for one request, as a pure function of the request's facts and the
//! configuration in force: no pingora types, so every branch is testable without a server.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Version};

use crate::config::{Route, Tenant};
use crate::error::RequestError;
use crate::gateway::state::Runtime;
use crate::request::{framing, target};
use crate::{policy, tenant};

/// What the gateway knows about a request before deciding.
#[derive(Debug)]
pub struct RequestFacts<'a> {
    /// The TLS server name of the connection.
    pub sni: Option<&'a str>,
    /// HTTP version (framing rules differ).
    pub version: Version,
    /// Request headers as received.
    pub headers: &'a HeaderMap,
    /// The request target bytes as received.
    pub raw_target: &'a [u8],
    /// The URI authority (HTTP/2 `:authority` or absolute-form), if any.
    pub authority: Option<&'a str>,
    /// Size of the request line and header block in bytes.
    pub header_bytes: usize,
    /// The HTTP/1 header block as received (for what the parser hides).
    pub raw_header: Option<&'a [u8]>,
}

/// A request that passed the checks every request gets, before identity and routing.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The tenant it belongs to.
    pub tenant: Arc<Tenant>,
    /// The request host (lowercase, no port).
    pub host: String,
    /// The normalized target: decided on, and forwarded.
    pub target: target::Target,
}

impl Prepared {
    /// Whether the request is for the gateway's own endpoints rather than a route.
    pub fn is_gateway_endpoint(&self) -> bool {
        self.target.path == "/.auth" || self.target.path.starts_with("/.auth/")
    }
}

/// A request that may go upstream, and everything forwarding needs to know.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The checks every request gets.
    pub prepared: Prepared,
    /// Index of the route in `tenant.routes`.
    route: usize,
}

impl Admitted {
    /// The matched route.
    pub fn route(&self) -> &Route {
        // `route` was found in this same tenant's list, which is immutable.
        &self.prepared.tenant.routes[self.route]
    }
}

/// How far a refused request got, for labelling metrics and audit.
#[derive(Debug, Default, Clone)]
pub struct Reached {
    /// The tenant, once known.
    pub tenant: Option<Arc<Tenant>>,
    /// The route id, once known.
    pub route: Option<String>,
}

/// The checks every request gets, in DESIGN.md's order: sizes and framing, Host → tenant,
/// SNI agreement, one normalized path.
pub fn prepare(
    rt: &Runtime,
    req: &RequestFacts<'_>,
    reached: &mut Reached,
) -> Result<Prepared, RequestError> {
    if req.header_bytes > rt.config.proxy.max_header_bytes {
        return Err(RequestError::HeadersTooLarge);
    }
    if matches!(
        req.version,
        Version::HTTP_10 | Version::HTTP_11 | Version::HTTP_09
    ) {
        framing::check(req.headers, req.version)?;
        if let Some(raw) = req.raw_header {
            framing::check_raw(raw, req.headers)?;
        }
    }

    let host = tenant::request_host(
        req.headers
            .get_all(http::header::HOST)
            .iter()
            .map(|v| v.as_bytes()),
        req.authority,
    )?;
    let tenant = Arc::clone(rt.tenants.resolve(&host)?);
    reached.tenant = Some(Arc::clone(&tenant));
    tenant::check_sni(req.sni, &host)?;

    let target = target::normalize(req.raw_target, &host)?;
    if content_length(req.headers).is_some_and(|n| n > rt.config.proxy.max_body_bytes) {
        return Err(RequestError::BodyTooLarge);
    }
    Ok(Prepared {
        tenant,
        host,
        target,
    })
}

/// Route and access decision for a prepared request; `roles` is `None` when nobody is
/// signed in.
pub fn decide(
    prepared: Prepared,
    roles: Option<&[String]>,
    reached: &mut Reached,
) -> Result<Admitted, RequestError> {
    let choice = choose(&prepared, roles, reached)?;
    Ok(Admitted::new(prepared, choice))
}

/// The route a prepared request may use, decided without taking the request: the caller
/// still has it for its answer when the decision is no.
pub fn choose(
    prepared: &Prepared,
    roles: Option<&[String]>,
    reached: &mut Reached,
) -> Result<Choice, RequestError> {
    let route = policy::route(&prepared.tenant, &prepared.target.path)?;
    reached.route = Some(route.id.clone());
    policy::authorize(&route.access, roles)?;
    prepared
        .tenant
        .routes
        .iter()
        .position(|r| std::ptr::eq(r, route))
        .map(Choice)
        .ok_or(RequestError::Internal)
}

/// A route [`choose`] allowed, as an index into the same request's tenant.
#[derive(Debug, Clone, Copy)]
pub struct Choice(usize);

impl Admitted {
    /// The request with the route `choose` allowed for it.
    pub fn new(prepared: Prepared, choice: Choice) -> Self {
        Self {
            prepared,
            route: choice.0,
        }
    }
}

/// The declared body length; framing checks already refused duplicates and garbage.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Bytes in the request line and header block, as HTTP/1.1 would carry them.
pub fn header_bytes(method: &str, raw_target: &[u8], headers: &HeaderMap) -> usize {
    let line = method.len() + raw_target.len() + "  HTTP/1.1\r\n".len();
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
}

/// The client's address under the trusted-proxy rules.
pub fn client_ip(rt: &Runtime, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    crate::upstream::headers::client_ip(peer, headers, &rt.trusted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn runtime(dir: &std::path::Path) -> Runtime {
        let certs = dir.join("certs");
        crate::tls::devcerts::write(&certs, &["acme.localhost".into()]).expect("certs");
        std::fs::create_dir_all(dir.join("policies")).expect("dir");
        std::fs::write(
            dir.join("policies/acme.toml"),
            r#"hosts = ["acme.localhost"]
[[routes]]
id = "pub"
prefix = "/"
upstream = "http://127.0.0.1:9"
access = "public"
[[routes]]
id = "app"
prefix = "/app"
upstream = "http://127.0.0.1:9"
"#,
        )
        .expect("policy");
        let cfg = r#"[[tls.certificates]]
hosts = ["acme.localhost"]
cert = "certs/acme.localhost.crt"
key = "certs/acme.localhost.key"
[proxy]
max_body_bytes = 100
max_header_bytes = 2048
"#;
        let path = dir.join("portcullis.toml");
        std::fs::write(&path, cfg).expect("config");
        Runtime::new(Config::load(&path).expect("valid config"))
    }

    fn facts<'a>(
        headers: &'a HeaderMap,
        target: &'a [u8],
        sni: Option<&'a str>,
    ) -> RequestFacts<'a> {
        RequestFacts {
            sni,
            version: Version::HTTP_11,
            headers,
            raw_target: target,
            authority: None,
            header_bytes: header_bytes("GET", target, headers),
            raw_header: None,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, http::HeaderValue::from_static(v));
        }
        h
    }

    fn admit(
        rt: &Runtime,
        req: &RequestFacts<'_>,
        reached: &mut Reached,
    ) -> Result<Admitted, RequestError> {
        decide(prepare(rt, req, reached)?, None, reached)
    }

    #[test]
    fn public_route_is_admitted_with_normalized_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = runtime(dir.path());
        let h = headers(&[("host", "acme.localhost:8443")]);
        let ok = admit(
            &rt,
            &facts(&h, b"//docs//a", Some("acme.localhost")),
            &mut Reached::default(),
        )
        .expect("admitted");
        assert_eq!(ok.prepared.target.path, "/docs/a");
        assert_eq!(ok.route().id, "pub");
    }

    #[test]
    fn role_routes_need_the_role() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = runtime(dir.path());
        let h = headers(&[("host", "acme.localhost")]);
        let prepared = prepare(
            &rt,
            &facts(&h, b"/app", Some("acme.localhost")),
            &mut Reached::default(),
        )
        .expect("prepared");
        let roles = ["user".to_string()];
        assert!(
            decide(prepared, Some(&roles), &mut Reached::default()).is_ok(),
            "app needs any signed-in user"
        );
    }

    #[test]
    fn authenticated_route_fails_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = runtime(dir.path());
        let h = headers(&[("host", "acme.localhost")]);
        let mut reached = Reached::default();
        let err = admit(
            &rt,
            &facts(&h, b"/app/x", Some("acme.localhost")),
            &mut reached,
        );
        assert_eq!(err.err(), Some(RequestError::Unauthenticated));
        assert_eq!(reached.route.as_deref(), Some("app"));
    }

    #[test]
    fn refusals_come_in_flow_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = runtime(dir.path());
        let unknown = headers(&[("host", "evil.localhost")]);
        let acme = headers(&[("host", "acme.localhost")]);
        let big = headers(&[("host", "acme.localhost"), ("content-length", "101")]);
        let cases: [(&HeaderMap, &[u8], Option<&str>, RequestError); 4] = [
            (
                &unknown,
                b"/",
                Some("evil.localhost"),
                RequestError::UnknownHost,
            ),
            (
                &acme,
                b"/",
                Some("globex.localhost"),
                RequestError::Misdirected,
            ),
            (
                &acme,
                b"/a/../app",
                Some("acme.localhost"),
                RequestError::Target(target::TargetError::DotSegment),
            ),
            (
                &big,
                b"/",
                Some("acme.localhost"),
                RequestError::BodyTooLarge,
            ),
        ];
        for (h, t, sni, want) in cases {
            let got = admit(&rt, &facts(h, t, sni), &mut Reached::default()).err();
            assert_eq!(got, Some(want));
        }
    }

    #[test]
    fn oversized_header_block_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = runtime(dir.path());
        let mut h = headers(&[("host", "acme.localhost")]);
        h.insert(
            "x-big",
            http::HeaderValue::from_str(&"a".repeat(3000)).expect("value"),
        );
        let got = admit(
            &rt,
            &facts(&h, b"/", Some("acme.localhost")),
            &mut Reached::default(),
        );
        assert_eq!(got.err(), Some(RequestError::HeadersTooLarge));
    }
}
