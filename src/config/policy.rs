//! `policies/<tenant>.toml`: one tenant per file, the file stem is the tenant id.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use std::time::Duration;

use serde::Deserialize;

use crate::auth::password::{PasswordPolicy, MAX_LENGTH, MIN_LENGTH_FLOOR};
use toml::Spanned;

use super::error::{ConfigError, Reporter};
use super::saml::{login_policy, saml_policy, LoginPolicy, RawLogin, RawSaml, SamlPolicy};

/// A validated tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// `[a-z0-9-]{1,63}`, equal to the policy file's stem.
    pub id: String,
    /// Shown to people (login pages, authenticator apps).
    pub display_name: String,
    /// Hosts this tenant answers on; no host belongs to two tenants.
    pub hosts: Vec<String>,
    /// Routes, longest prefix first.
    pub routes: Vec<Route>,
    /// Session lifetimes.
    pub session: SessionPolicy,
    /// Password rules for local accounts.
    pub password: PasswordPolicy,
    /// Whether a second factor is used.
    pub mfa: MfaPolicy,
    /// How long this tenant's audit records are kept.
    pub audit_retention: Duration,
    /// Sign-in methods.
    pub login: LoginPolicy,
    /// SAML SSO, when configured.
    pub saml: Option<SamlPolicy>,
    /// The policy file.
    pub source: PathBuf,
}

/// `mfa = "off" | "optional" | "required"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MfaPolicy {
    /// No second factor, even for users who set one up.
    Off,
    /// Users may set up TOTP at `/.auth/mfa/enroll`; those who did must use it.
    #[default]
    Optional,
    /// Every user must use TOTP; those without are taken through enrolment at login.
    Required,
}

/// How long sessions last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPolicy {
    /// Inactivity after which a session ends.
    pub idle_timeout: Duration,
    /// Age after which a session ends, however busy.
    pub absolute_timeout: Duration,
}

impl Default for SessionPolicy {
    /// 30 minutes idle, 12 hours absolute (OWASP ASVS 3.3.2 for level 2 applications).
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30 * 60),
            absolute_timeout: Duration::from_secs(12 * 3600),
        }
    }
}

/// One route: a path prefix, where it goes, and who may pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Unique within the tenant; the upstream JWT's audience and a metrics label.
    pub id: String,
    /// Matched on whole path segments.
    pub prefix: String,
    /// Where matching requests go.
    pub upstream: Upstream,
    /// Who may pass.
    pub access: Access,
    /// Per-client-IP request rate on this route (the tenant's when not set).
    pub rate: Option<RequestRate>,
}

/// A per-IP request budget: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRate {
    /// Sustained requests per second.
    pub per_second: std::num::NonZeroU32,
    /// Requests at once.
    pub burst: std::num::NonZeroU32,
}

/// Who may use a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not.
    Public,
    /// Any signed-in user of the tenant.
    Authenticated,
    /// Signed-in users holding at least one of these roles.
    Roles(Vec<String>),
}

/// An upstream address, resolved when the configuration is loaded (so the hot path never
/// waits on DNS; a reload re-resolves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Whether to speak TLS to the upstream.
    pub tls: bool,
    /// The host name, for SNI and certificate checks.
    pub host: String,
    /// The resolved address.
    pub addr: SocketAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    id: Option<Spanned<String>>,
    display_name: Option<String>,
    hosts: Spanned<Vec<Spanned<String>>>,
    mfa: Option<Spanned<String>>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    session: RawSession,
    #[serde(default)]
    password: RawPassword,
    #[serde(default)]
    ratelimit: RawTenantRate,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    login: RawLogin,
    saml: Option<RawSaml>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAudit {
    retention_days: Option<Spanned<u64>>,
}

/// Audit records are kept 90 days unless a tenant says otherwise (Okta's default, and what
/// customers' security pages promise).
pub const DEFAULT_AUDIT_RETENTION_DAYS: u64 = 90;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTenantRate {
    requests_per_second: Option<Spanned<u32>>,
    burst: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSession {
    idle_timeout_minutes: Option<Spanned<u64>>,
    absolute_timeout_hours: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPassword {
    min_length: Option<Spanned<usize>>,
    max_age_days: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    id: Spanned<String>,
    prefix: Spanned<String>,
    upstream: Spanned<String>,
    access: Option<Spanned<String>>,
    roles: Option<Spanned<Vec<Spanned<String>>>>,
    requests_per_second: Option<Spanned<u32>>,
    burst: Option<Spanned<u32>>,
}

/// Read every `*.toml` in `dir` (in name order) as a tenant policy.
pub(super) fn load_dir(dir: &Path, errors: &mut Vec<ConfigError>) -> Vec<Tenant> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(ConfigError {
                file: dir.to_path_buf(),
                at: None,
                message: format!("cannot read policies folder: {e}"),
            });
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();

    let mut tenants: Vec<Tenant> = Vec::new();
    // host → (tenant id, file) of its first owner, to name both sides of a clash.
    let mut owners: HashMap<String, String> = HashMap::new();
    for file in files {
        let src = match std::fs::read_to_string(&file) {
            Ok(s) => s,
            Err(e) => {
                errors.push(ConfigError {
                    file: file.clone(),
                    at: None,
                    message: format!("cannot read policy: {e}"),
                });
                continue;
            }
        };
        let mut rep = Reporter::new(&file, &src, errors);
        let Some(tenant) = parse(&file, &src, &mut rep, &mut owners) else {
            continue;
        };
        tenants.push(tenant);
    }
    tenants
}

fn parse(
    file: &Path,
    src: &str,
    rep: &mut Reporter<'_>,
    owners: &mut HashMap<String, String>,
) -> Option<Tenant> {
    let raw: RawPolicy = match toml::from_str(src) {
        Ok(raw) => raw,
        Err(e) => {
            rep.toml(&e);
            return None;
        }
    };
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let mut ok = true;
    if let Err(msg) = validate_id(&stem, 63) {
        rep.whole(format!("policy file name: tenant {msg}"));
        ok = false;
    }
    if let Some(id) = &raw.id {
        if *id.get_ref() != stem {
            rep.at(
                id.span(),
                format!("id `{}` must equal the file name `{stem}`", id.get_ref()),
            );
            ok = false;
        }
    }

    let mut hosts = Vec::new();
    if raw.hosts.get_ref().is_empty() {
        rep.at(raw.hosts.span(), "a tenant needs at least one host");
        ok = false;
    }
    for h in raw.hosts.get_ref() {
        let host = h.get_ref();
        if let Err(msg) = validate_host(host) {
            rep.at(h.span(), msg);
            ok = false;
        } else if let Some(owner) = owners.get(host) {
            rep.at(
                h.span(),
                format!("host `{host}` already belongs to tenant `{owner}`"),
            );
            ok = false;
        } else {
            owners.insert(host.clone(), stem.clone());
            hosts.push(host.clone());
        }
    }

    let tenant_rate = request_rate(
        &raw.ratelimit.requests_per_second,
        &raw.ratelimit.burst,
        rep,
        &mut ok,
    );
    let mut routes: Vec<Route> = Vec::new();
    for raw_route in raw.routes {
        match route(raw_route.into_inner(), &routes, tenant_rate, rep) {
            Some(r) => routes.push(r),
            None => ok = false,
        }
    }
    let session = session_policy(&raw.session, rep, &mut ok);
    let retention_days = match &raw.audit.retention_days {
        Some(d) if (1..=3650).contains(d.get_ref()) => *d.get_ref(),
        Some(d) => {
            rep.at(d.span(), "retention_days must be between 1 and 3650");
            ok = false;
            DEFAULT_AUDIT_RETENTION_DAYS
        }
        None => DEFAULT_AUDIT_RETENTION_DAYS,
    };
    let mfa = match raw.mfa.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None => MfaPolicy::default(),
        Some(("off", _)) => MfaPolicy::Off,
        Some(("optional", _)) => MfaPolicy::Optional,
        Some(("required", _)) => MfaPolicy::Required,
        Some((other, span)) => {
            rep.at(
                span,
                format!("mfa `{other}` is not one of off, optional, required"),
            );
            ok = false;
            MfaPolicy::default()
        }
    };
    let password = password_policy(&raw.password, rep, &mut ok);
    let saml = raw
        .saml
        .as_ref()
        .and_then(|s| saml_policy(s, file, rep, &mut ok));
    let login = login_policy(&raw.login, raw.saml.is_some(), rep, &mut ok);
    // Longest prefix first, so the first match is the most specific.
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));

    ok.then(|| Tenant {
        display_name: raw.display_name.unwrap_or_else(|| stem.clone()),
        id: stem,
        hosts,
        routes,
        session,
        password,
        mfa,
        audit_retention: Duration::from_secs(retention_days * 86_400),
        login,
        saml,
        source: file.to_path_buf(),
    })
}

fn session_policy(raw: &RawSession, rep: &mut Reporter<'_>, ok: &mut bool) -> SessionPolicy {
    let mut policy = SessionPolicy::default();
    if let Some(m) = &raw.idle_timeout_minutes {
        if (1..=24 * 60).contains(m.get_ref()) {
            policy.idle_timeout = Duration::from_secs(m.get_ref() * 60);
        } else {
            rep.at(m.span(), "idle_timeout_minutes must be between 1 and 1440");
            *ok = false;
        }
    }
    if let Some(h) = &raw.absolute_timeout_hours {
        if (1..=24 * 30).contains(h.get_ref()) {
            policy.absolute_timeout = Duration::from_secs(h.get_ref() * 3600);
        } else {
            rep.at(h.span(), "absolute_timeout_hours must be between 1 and 720");
            *ok = false;
        }
    }
    policy
}

fn password_policy(raw: &RawPassword, rep: &mut Reporter<'_>, ok: &mut bool) -> PasswordPolicy {
    let mut policy = PasswordPolicy::default();
    if let Some(n) = &raw.min_length {
        if (MIN_LENGTH_FLOOR..=MAX_LENGTH).contains(n.get_ref()) {
            policy.min_length = *n.get_ref();
        } else {
            rep.at(
                n.span(),
                format!("min_length must be between {MIN_LENGTH_FLOOR} and {MAX_LENGTH}"),
            );
            *ok = false;
        }
    }
    policy.max_age = raw
        .max_age_days
        .filter(|d| *d > 0)
        .map(|d| Duration::from_secs(d * 86_400));
    policy
}

fn request_rate(
    per_second: &Option<Spanned<u32>>,
    burst: &Option<Spanned<u32>>,
    rep: &mut Reporter<'_>,
    ok: &mut bool,
) -> Option<RequestRate> {
    use std::num::NonZeroU32;
    let per_second_value = per_second.as_ref()?;
    let Some(rate) = NonZeroU32::new(*per_second_value.get_ref()) else {
        rep.at(
            per_second_value.span(),
            "requests_per_second must be at least 1",
        );
        *ok = false;
        return None;
    };
    let burst = match burst {
        Some(b) => NonZeroU32::new(*b.get_ref()).unwrap_or_else(|| {
            rep.at(b.span(), "burst must be at least 1");
            *ok = false;
            rate
        }),
        None => rate.saturating_mul(NonZeroU32::MIN.saturating_add(1)),
    };
    Some(RequestRate {
        per_second: rate,
        burst,
    })
}

fn route(
    raw: RawRoute,
    earlier: &[Route],
    tenant_rate: Option<RequestRate>,
    rep: &mut Reporter<'_>,
) -> Option<Route> {
    let mut ok = true;
    let rate = request_rate(&raw.requests_per_second, &raw.burst, rep, &mut ok).or(tenant_rate);
    let id = raw.id.get_ref().clone();
    if let Err(msg) = validate_id(&id.replace('_', "-"), 63) {
        rep.at(raw.id.span(), format!("route {msg}"));
        ok = false;
    } else if earlier.iter().any(|r| r.id == id) {
        rep.at(raw.id.span(), format!("route id `{id}` is used twice"));
        ok = false;
    }

    let prefix = normalize_prefix(raw.prefix.get_ref());
    match &prefix {
        Err(msg) => {
            rep.at(raw.prefix.span(), msg.clone());
            ok = false;
        }
        Ok(p) if earlier.iter().any(|r| &r.prefix == p) => {
            rep.at(
                raw.prefix.span(),
                format!("prefix `{p}` is used by another route"),
            );
            ok = false;
        }
        Ok(_) => {}
    }

    let upstream = match parse_upstream(raw.upstream.get_ref()) {
        Ok(u) => Some(u),
        Err(msg) => {
            rep.at(raw.upstream.span(), msg);
            None
        }
    };

    let roles: Vec<String> = raw
        .roles
        .as_ref()
        .map(|r| r.get_ref().iter().map(|s| s.get_ref().clone()).collect())
        .unwrap_or_default();
    let access = match raw.access.as_ref().map(|a| a.get_ref().as_str()) {
        // Forgetting `access` must not publish an app: the default is the safe one.
        None | Some("authenticated") => Some(Access::Authenticated),
        Some("public") => Some(Access::Public),
        Some("roles") => Some(Access::Roles(roles.clone())),
        Some(other) => {
            if let Some(a) = &raw.access {
                rep.at(
                    a.span(),
                    format!("access `{other}` is not one of public, authenticated, roles"),
                );
            }
            None
        }
    };
    match (&access, &raw.roles) {
        (Some(Access::Roles(r)), Some(span)) if r.is_empty() => {
            rep.at(span.span(), "access = \"roles\" needs at least one role");
            ok = false;
        }
        (Some(Access::Roles(_)), None) => {
            rep.at(raw.id.span(), "access = \"roles\" needs a `roles` list");
            ok = false;
        }
        (Some(Access::Public | Access::Authenticated), Some(span)) => {
            rep.at(
                span.span(),
                "`roles` is only allowed with access = \"roles\"",
            );
            ok = false;
        }
        _ => {}
    }
    if let Some(span) = &raw.roles {
        for role in span.get_ref() {
            let r = role.get_ref();
            let valid = !r.is_empty()
                && r.len() <= 64
                && r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
            if !valid {
                rep.at(
                    role.span(),
                    format!("role `{r}` must be 1-64 of A-Z a-z 0-9 - _ . :"),
                );
                ok = false;
            }
        }
    }

    match (ok, prefix, upstream, access) {
        (true, Ok(prefix), Some(upstream), Some(access)) => Some(Route {
            id,
            prefix,
            upstream,
            access,
            rate,
        }),
        _ => None,
    }
}

/// `[a-z0-9-]{1,max}`, not starting or ending with `-`.
fn validate_id(id: &str, max: usize) -> Result<(), String> {
    let valid = !id.is_empty()
        && id.len() <= max
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(format!("id `{id}` must be 1-{max} of a-z 0-9 -"))
    }
}

/// A lowercase DNS name without port or trailing dot.
pub(super) fn validate_host(host: &str) -> Result<(), String> {
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    if !host.is_empty() && host.len() <= 253 && labels_ok {
        Ok(())
    } else {
        Err(format!(
            "host `{host}` must be a lowercase DNS name without port (e.g. app.example.com)"
        ))
    }
}

/// Prefixes are compared against normalized request paths, so they must be normalized too.
fn normalize_prefix(prefix: &str) -> Result<String, String> {
    let clean = prefix.starts_with('/')
        && prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"%?#\\;".contains(&b))
        && !prefix.contains("//")
        && !prefix.split('/').any(|s| s == "." || s == "..");
    if !clean {
        return Err(format!(
            "prefix `{prefix}` must start with `/` and contain no `//`, dot segments, `%`, `?`, `#`, `\\` or `;`"
        ));
    }
    let trimmed = prefix.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    })
}

fn parse_upstream(text: &str) -> Result<Upstream, String> {
    let bad = || format!("upstream `{text}` must be http://host:port or https://host:port");
    let (tls, rest) = if let Some(rest) = text.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = text.strip_prefix("https://") {
        (true, rest)
    } else {
        return Err(bad());
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(bad());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (authority, if tls { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    let addr = (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("upstream host `{host}` does not resolve"))?;
    Ok(Upstream {
        tls,
        host: host.to_string(),
        addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_normalized_or_refused() {
        assert_eq!(normalize_prefix("/api/").as_deref(), Ok("/api"));
        assert_eq!(normalize_prefix("/").as_deref(), Ok("/"));
        for bad in ["api", "/a//b", "/a/../b", "/a%2f", "/a?b", "/a\\b", "/a;x"] {
            assert!(normalize_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upstreams_parse_and_resolve() {
        let u = parse_upstream("http://127.0.0.1:18080").expect("valid");
        assert!(!u.tls);
        assert_eq!(u.addr, "127.0.0.1:18080".parse().expect("addr"));
        let u = parse_upstream("https://127.0.0.1").expect("valid");
        assert!(u.tls);
        assert_eq!(u.addr.port(), 443);
        let u = parse_upstream("http://[::1]:81").expect("valid");
        assert_eq!(u.addr.port(), 81);
        for bad in [
            "ftp://x",
            "http://",
            "http://a:b",
            "http://h:1/path",
            "http://u@h:1",
            "http://h:0",
        ] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_must_be_lowercase_dns_names() {
        assert!(validate_host("acme.localhost").is_ok());
        for bad in [
            "Acme.localhost",
            "a..b",
            "a:443",
            "",
            "-a.b",
            "a_b.c",
            "a.b.",
        ] {
            assert!(validate_host(bad).is_err(), "{bad}");
        }
    }
}
