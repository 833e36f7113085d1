//! `[login]` and `[saml]` in a tenant policy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::error::Reporter;
use crate::saml::IdpMetadata;
use crate::store::valid_username;

/// How a tenant's users sign in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginPolicy {
    /// Local accounts with a password (and TOTP).
    pub password: bool,
    /// SAML SSO through the tenant's IdP.
    pub saml: bool,
    /// Local accounts that may still sign in with a password when `password` is off: the
    /// break-glass administrators for when the IdP is down or misconfigured.
    pub break_glass: Vec<String>,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        Self {
            password: true,
            saml: false,
            break_glass: Vec::new(),
        }
    }
}

impl LoginPolicy {
    /// Whether `username` may sign in with a password.
    pub fn password_allowed_for(&self, username: &str) -> bool {
        self.password || self.break_glass.iter().any(|b| b == username)
    }
}

/// Where the IdP's metadata comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataSource {
    /// A file, read (and checked) with the policy.
    File {
        path: PathBuf,
        idp: Arc<IdpMetadata>,
    },
    /// An URL, fetched at start and every `refresh`, the last good copy kept on disk.
    Url {
        url: String,
        /// Extra CA certificates (PEM) trusted for this fetch, beside the system roots.
        ca_file: Option<PathBuf>,
        refresh: Duration,
    },
}

/// A tenant's SAML settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamlPolicy {
    pub metadata: MetadataSource,
    /// Sign AuthnRequests with the tenant's SP key (made on first use, sealed in the store).
    pub sign_requests: bool,
    /// Accept unsolicited responses (no InResponseTo) from the IdP.
    pub allow_idp_initiated: bool,
    /// Allowed clock difference with the IdP.
    pub clock_skew: Duration,
    /// The attribute holding the username; the NameID when `None`.
    pub username_attribute: Option<String>,
    /// The attribute holding group names.
    pub groups_attribute: Option<String>,
    /// IdP group → Portcullis roles.
    pub role_map: BTreeMap<String, Vec<String>>,
    /// Roles every SAML user gets.
    pub default_roles: Vec<String>,
    /// Create users on their first SAML sign-in; when off, only users an admin added with
    /// `portcullis user add --sso` may sign in.
    pub jit_provisioning: bool,
    /// After a local logout, send the browser to the IdP's SingleLogoutService.
    pub logout_redirect: bool,
    /// The NameID format asked for.
    pub nameid_format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLogin {
    methods: Option<Spanned<Vec<Spanned<String>>>>,
    break_glass: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSaml {
    idp_metadata_file: Option<Spanned<String>>,
    idp_metadata_url: Option<Spanned<String>>,
    metadata_ca_file: Option<Spanned<String>>,
    metadata_refresh_minutes: Option<Spanned<u64>>,
    sign_authn_requests: Option<bool>,
    allow_idp_initiated: Option<bool>,
    clock_skew_seconds: Option<Spanned<u64>>,
    username_attribute: Option<Spanned<String>>,
    groups_attribute: Option<Spanned<String>>,
    #[serde(default)]
    role_map: BTreeMap<String, Spanned<Vec<String>>>,
    #[serde(default)]
    default_roles: Vec<String>,
    jit_provisioning: Option<bool>,
    logout_redirect: Option<bool>,
    nameid_format: Option<Spanned<String>>,
}

/// Default allowed clock difference with an IdP.
pub const DEFAULT_SKEW_SECS: u64 = 60;
/// Default metadata refresh.
pub const DEFAULT_REFRESH_MINUTES: u64 = 60;

pub(super) fn login_policy(
    raw: &RawLogin,
    saml_configured: bool,
    rep: &mut Reporter<'_>,
    ok: &mut bool,
) -> LoginPolicy {
    let mut policy = LoginPolicy {
        password: true,
        saml: saml_configured,
        break_glass: Vec::new(),
    };
    if let Some(methods) = &raw.methods {
        policy.password = false;
        policy.saml = false;
        if methods.get_ref().is_empty() {
            rep.at(
                methods.span(),
                "methods needs at least one of password, saml",
            );
            *ok = false;
        }
        for m in methods.get_ref() {
            match m.get_ref().as_str() {
                "password" => policy.password = true,
                "saml" => policy.saml = true,
                other => {
                    rep.at(
                        m.span(),
                        format!("login method `{other}` is not one of password, saml"),
                    );
                    *ok = false;
                }
            }
        }
        if policy.saml && !saml_configured {
            rep.at(methods.span(), "login method `saml` needs a [saml] table");
            *ok = false;
        }
        if saml_configured
            && !policy.saml
            && methods.get_ref().iter().all(|m| m.get_ref() != "saml")
        {
            rep.at(
                methods.span(),
                "[saml] is configured but methods does not include `saml`",
            );
            *ok = false;
        }
    }
    if let Some(list) = &raw.break_glass {
        if policy.password && !list.get_ref().is_empty() {
            rep.at(
                list.span(),
                "break_glass applies only when `password` is not a login method",
            );
            *ok = false;
        }
        for name in list.get_ref() {
            if valid_username(name.get_ref()) {
                policy.break_glass.push(name.get_ref().clone());
            } else {
                rep.at(
                    name.span(),
                    format!("`{}` is not a valid username", name.get_ref()),
                );
                *ok = false;
            }
        }
    }
    policy
}

pub(super) fn saml_policy(
    raw: &RawSaml,
    policy_file: &Path,
    rep: &mut Reporter<'_>,
    ok: &mut bool,
) -> Option<SamlPolicy> {
    let dir = policy_file.parent().unwrap_or(Path::new("."));
    let refresh_minutes = match &raw.metadata_refresh_minutes {
        Some(m) if (5..=7 * 24 * 60).contains(m.get_ref()) => *m.get_ref(),
        Some(m) => {
            rep.at(
                m.span(),
                "metadata_refresh_minutes must be between 5 and 10080",
            );
            *ok = false;
            DEFAULT_REFRESH_MINUTES
        }
        None => DEFAULT_REFRESH_MINUTES,
    };
    let metadata = match (&raw.idp_metadata_file, &raw.idp_metadata_url) {
        (Some(file), None) => {
            if let Some(ca) = &raw.metadata_ca_file {
                rep.at(
                    ca.span(),
                    "metadata_ca_file applies only to idp_metadata_url",
                );
                *ok = false;
            }
            let path = dir.join(file.get_ref());
            match std::fs::read_to_string(&path) {
                Err(e) => {
                    rep.at(
                        file.span(),
                        format!("cannot read IdP metadata `{}`: {e}", path.display()),
                    );
                    None
                }
                Ok(xml) => match IdpMetadata::parse(&xml) {
                    Ok(idp) => Some(MetadataSource::File {
                        path,
                        idp: Arc::new(idp),
                    }),
                    Err(msg) => {
                        rep.at(file.span(), msg);
                        None
                    }
                },
            }
        }
        (None, Some(url)) => match check_metadata_url(url.get_ref()) {
            Ok(()) => Some(MetadataSource::Url {
                url: url.get_ref().clone(),
                ca_file: raw.metadata_ca_file.as_ref().map(|c| dir.join(c.get_ref())),
                refresh: Duration::from_secs(refresh_minutes * 60),
            }),
            Err(msg) => {
                rep.at(url.span(), msg);
                None
            }
        },
        (Some(file), Some(_)) => {
            rep.at(
                file.span(),
                "give either idp_metadata_file or idp_metadata_url, not both",
            );
            None
        }
        (None, None) => {
            rep.whole("[saml] needs idp_metadata_file or idp_metadata_url");
            None
        }
    };
    if metadata.is_none() {
        *ok = false;
    }
    if let Some(ca) = &raw.metadata_ca_file {
        let path = dir.join(ca.get_ref());
        if !path.is_file() {
            rep.at(ca.span(), format!("cannot read `{}`", path.display()));
            *ok = false;
        }
    }
    let skew = match &raw.clock_skew_seconds {
        Some(s) if *s.get_ref() <= 600 => *s.get_ref(),
        Some(s) => {
            rep.at(s.span(), "clock_skew_seconds must be at most 600");
            *ok = false;
            DEFAULT_SKEW_SECS
        }
        None => DEFAULT_SKEW_SECS,
    };
    let non_empty =
        |v: &Option<Spanned<String>>, what: &str, rep: &mut Reporter<'_>, ok: &mut bool| {
            v.as_ref().and_then(|s| {
                if s.get_ref().trim().is_empty() {
                    rep.at(s.span(), format!("{what} must not be empty"));
                    *ok = false;
                    None
                } else {
                    Some(s.get_ref().trim().to_string())
                }
            })
        };
    let username_attribute = non_empty(&raw.username_attribute, "username_attribute", rep, ok);
    let groups_attribute = non_empty(&raw.groups_attribute, "groups_attribute", rep, ok);
    let nameid_format = non_empty(&raw.nameid_format, "nameid_format", rep, ok);
    if let (Some(f), Some(span)) = (&nameid_format, &raw.nameid_format) {
        if !f.starts_with("urn:oasis:names:tc:SAML:") {
            rep.at(
                span.span(),
                "nameid_format must be a SAML NameID format URN",
            );
            *ok = false;
        }
    }
    let mut role_map = BTreeMap::new();
    for (group, roles) in &raw.role_map {
        if roles.get_ref().iter().any(|r| r.trim().is_empty()) {
            rep.at(
                roles.span(),
                format!("role_map `{group}` has an empty role"),
            );
            *ok = false;
        }
        role_map.insert(group.clone(), roles.get_ref().clone());
    }
    if !role_map.is_empty() && groups_attribute.is_none() {
        rep.whole("[saml] role_map needs groups_attribute (the attribute carrying groups)");
        *ok = false;
    }
    Some(SamlPolicy {
        metadata: metadata?,
        sign_requests: raw.sign_authn_requests.unwrap_or(false),
        allow_idp_initiated: raw.allow_idp_initiated.unwrap_or(false),
        clock_skew: Duration::from_secs(skew),
        username_attribute,
        groups_attribute,
        role_map,
        default_roles: raw.default_roles.clone(),
        jit_provisioning: raw.jit_provisioning.unwrap_or(true),
        logout_redirect: raw.logout_redirect.unwrap_or(false),
        nameid_format,
    })
}

/// Metadata is fetched over https; plain http only from this machine (development IdPs).
pub fn check_metadata_url(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Ok(());
    }
    if let Some(rest) = lower.strip_prefix("http://") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        if matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
            return Ok(());
        }
    }
    Err(format!(
        "idp_metadata_url `{url}` must be https (plain http only for loopback IdPs)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_urls_must_be_https_except_on_loopback() {
        assert!(check_metadata_url("https://idp.example/metadata").is_ok());
        assert!(check_metadata_url("http://127.0.0.1:9000/metadata").is_ok());
        assert!(check_metadata_url("http://localhost/metadata").is_ok());
        assert!(check_metadata_url("http://idp.example/metadata").is_err());
        assert!(check_metadata_url("http://127.0.0.1.evil.example/m").is_err());
        assert!(check_metadata_url("ftp://idp.example/metadata").is_err());
    }

    #[test]
    fn break_glass_accounts_keep_password_sign_in() {
        let p = LoginPolicy {
            password: false,
            saml: true,
            break_glass: vec!["root".into()],
        };
        assert!(p.password_allowed_for("root"));
        assert!(!p.password_allowed_for("alice"));
        assert!(LoginPolicy::default().password_allowed_for("alice"));
    }
}
