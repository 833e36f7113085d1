//! `/.auth/saml/…`: SP metadata, SP-initiated login, the Assertion Consumer Service.
//!
//! ```text
//!  browser ── GET /.auth/saml/login ──▶ request ID stored (tenant, return_to, expiry,
//!     │                                  hash of the browser's binding cookie) ──302──▶ IdP
//!     └── POST /.auth/saml/acs (SAMLResponse) ◀──────────────── IdP's auto-post form
//!           verify (validate.rs) → consume the request ID once, same browser →
//!           replay cache → map the identity (namespaced by IdP) → session
//! ```

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{error_reply, Auth, AuthError, AuthRequest};
use crate::audit::{EventKind, Outcome};
use crate::auth::cookie;
use crate::auth::reply::Reply;
use crate::auth::return_to;
use crate::auth::session::new_token;
use crate::config::{SamlPolicy, Tenant};
use crate::keys::FieldBinding;
use crate::saml::request::{
    authn_request_xml, load_sp_key, new_request_id, new_sp_key, redirect_url,
};
use crate::saml::validate::{self, Expect, Rejection, Verified};
use crate::saml::{metadata, IdpMetadata, SpUrls, REQUEST_TTL_SECS};
use crate::store::{valid_username, PendingRequest, SpKey, Stage, StoreError, User};

/// The cookie binding a login to the browser that started it. `SameSite=None`: the IdP posts
/// the response back cross-site, and a Lax cookie would not come with it.
pub const SAML_BROWSER: &str = "__Host-portcullis-saml";

/// The sealed-field name of the SP key.
const SP_KEY_FIELD: &str = "saml_sp_key";

/// An unusable or missing SSO setup, for people to read.
const SSO_UNAVAILABLE: &str =
    "Single sign-on is not available right now. Please try again in a moment.";

/// Why sign-in through the IdP failed, for people to read (the reason is in the audit log).
const SSO_FAILED: &str = "Sign-in through your identity provider could not be completed. \
                          Start again from the sign-in page; if it keeps failing, tell your \
                          administrator the time it happened.";

fn binding(tenant: &str) -> FieldBinding<'_> {
    FieldBinding {
        tenant,
        user: "",
        field: SP_KEY_FIELD,
    }
}

fn hash_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether a browser-binding cookie value has the shape we make (so a reused one is ours).
fn plausible_token(v: &str) -> bool {
    (32..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Outcome of the ACS before the session.
enum Accepted {
    Ok { username: String, return_to: String },
    Refused(&'static str, Option<String>),
}

impl Auth {
    /// The SP addresses of the request's tenant.
    fn sp_urls(req: &AuthRequest<'_>) -> SpUrls {
        let host = req.tenant.hosts.first().map_or(req.host, String::as_str);
        SpUrls::new(host, req.public_port)
    }

    /// The tenant's SAML setup when SSO sign-in is on.
    fn saml_policy(tenant: &Tenant) -> Option<&SamlPolicy> {
        tenant.saml.as_ref().filter(|_| tenant.login.saml)
    }

    /// The tenant's SP signing key and certificate, made and sealed on first use.
    async fn sp_key(
        &self,
        req: &AuthRequest<'_>,
    ) -> Result<(zeroize::Zeroizing<Vec<u8>>, Vec<u8>), AuthError> {
        let (store, tenant) = (Arc::clone(&self.store), req.tenant.id.clone());
        let sealer = Arc::clone(&self.sealer);
        let entity = Self::sp_urls(req).entity_id;
        Self::blocking(move || {
            let stored = match store.saml_sp_key(&tenant)? {
                Some(k) => k,
                None => {
                    let (pem, cert) = new_sp_key(&entity).map_err(StoreError::Corrupt)?;
                    let pem = zeroize::Zeroizing::new(pem);
                    let sealed = sealer
                        .seal(&pem, &binding(&tenant))
                        .map_err(|e| StoreError::Corrupt(format!("seal SP key: {e}")))?;
                    store.put_saml_sp_key(
                        &tenant,
                        &SpKey {
                            sealed_key: sealed,
                            cert_der: cert,
                        },
                    )?
                }
            };
            let pem = sealer
                .open(&stored.sealed_key, &binding(&tenant))
                .map_err(|_| StoreError::Corrupt("SP key does not open".into()))?;
            Ok((pem, stored.cert_der))
        })
        .await
    }

    /// `GET /.auth/saml/metadata`: our SP metadata, for the tenant's IdP admin.
    pub(super) async fn saml_metadata(&self, req: &AuthRequest<'_>) -> Result<Reply, AuthError> {
        let Some(policy) = Self::saml_policy(req.tenant) else {
            return Ok(not_configured(req));
        };
        let cert = if policy.sign_requests {
            Some(self.sp_key(req).await?.1)
        } else {
            None
        };
        let xml = metadata::sp_metadata(
            &Self::sp_urls(req),
            cert.as_deref(),
            policy.nameid_format.as_deref(),
        );
        Ok(Reply::xml(200, xml))
    }

    /// `GET /.auth/saml/login`: store a fresh request ID and send the browser to the IdP.
    pub(super) async fn saml_login(&self, req: &AuthRequest<'_>) -> Result<Reply, AuthError> {
        let Some(policy) = Self::saml_policy(req.tenant) else {
            return Ok(not_configured(req));
        };
        let Some(idp) = self.saml.resolve(req.tenant) else {
            return Ok(error_reply(req, 503, "sso_unavailable", SSO_UNAVAILABLE));
        };
        let return_to = req
            .query_param("return_to")
            .and_then(|r| return_to::safe(&r, req.host))
            .unwrap_or_else(|| "/".into());
        // The IdP answers at the first host's ACS: start there, so the browser-binding cookie
        // (host-only) and then the session are on the host the answer comes back to.
        let urls = Self::sp_urls(req);
        if req.tenant.hosts.first().is_some_and(|h| h != req.host) {
            let back: String = form_urlencoded::byte_serialize(return_to.as_bytes()).collect();
            return Ok(Reply::redirect(
                302,
                &format!("{}/.auth/saml/login?return_to={back}", urls.base),
            ));
        }
        let browser = cookie::single(req.headers, SAML_BROWSER)
            .filter(|v| plausible_token(v))
            .map_or_else(new_token, str::to_string);
        let id = new_request_id();
        let now = self.clock.unix_secs();
        let pending = PendingRequest {
            return_to,
            expires_at: now + REQUEST_TTL_SECS,
            browser: hash_hex(&browser),
        };
        let (store, tenant, rid) = (Arc::clone(&self.store), req.tenant.id.clone(), id.clone());
        Self::blocking(move || store.put_saml_request(&tenant, &rid, &pending)).await?;

        let instant = self
            .clock
            .now_utc()
            .replace_nanosecond(0)
            .unwrap_or_else(|_| self.clock.now_utc())
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let xml = authn_request_xml(
            &id,
            &instant,
            &idp.sso_url,
            &urls,
            policy.nameid_format.as_deref(),
        );
        let key = if policy.sign_requests {
            let (pem, _) = self.sp_key(req).await?;
            Some(load_sp_key(&pem).map_err(|e| AuthError::Store(StoreError::Corrupt(e)))?)
        } else {
            None
        };
        let location = redirect_url(&idp.sso_url, &xml, key.as_ref())
            .map_err(|e| AuthError::Store(StoreError::Corrupt(e)))?;
        let binding = format!(
            "{SAML_BROWSER}={browser}; Path=/; Secure; HttpOnly; SameSite=None; Max-Age={REQUEST_TTL_SECS}"
        );
        Ok(Reply::redirect(302, &location).cookie(binding))
    }

    /// `POST /.auth/saml/acs`: verify the response and sign the user in.
    pub(super) async fn saml_acs(&self, req: &AuthRequest<'_>) -> Result<Reply, AuthError> {
        let Some(policy) = Self::saml_policy(req.tenant) else {
            return Ok(not_configured(req));
        };
        let Some(idp) = self.saml.resolve(req.tenant) else {
            return Ok(error_reply(req, 503, "sso_unavailable", SSO_UNAVAILABLE));
        };
        if req.content_type() != "application/x-www-form-urlencoded" {
            return Ok(error_reply(
                req,
                415,
                "unsupported_media_type",
                "Send the identity provider's form.",
            ));
        }
        let mut response = None;
        let mut relay_state = None;
        for (k, v) in form_urlencoded::parse(&req.body) {
            match k.as_ref() {
                "SAMLResponse" if response.is_none() => response = Some(v.into_owned()),
                "SAMLResponse" => {
                    return Ok(self
                        .saml_refused(req, Rejection::Malformed.code(), None)
                        .await)
                }
                "RelayState" => relay_state = Some(v.into_owned()),
                _ => {}
            }
        }
        let Some(response) = response else {
            return Ok(error_reply(
                req,
                400,
                "bad_request",
                "No SAMLResponse was posted.",
            ));
        };
        match self
            .accept(req, policy, idp, &response, relay_state)
            .await?
        {
            Accepted::Ok {
                username,
                return_to,
            } => {
                let now = self.clock.unix_secs();
                let previous = self.lookup(req.tenant, req.headers, req.client_ip).await?;
                let (token, session) = self
                    .advance(
                        req,
                        previous,
                        &username,
                        Stage::Active,
                        vec!["saml".into()],
                        &return_to,
                        now,
                    )
                    .await?;
                self.audit(
                    req,
                    EventKind::SamlAssertionAccepted,
                    Outcome::Success,
                    Some(&username),
                    None,
                )
                .await;
                self.audit(
                    req,
                    EventKind::LoginSucceeded,
                    Outcome::Success,
                    Some(&username),
                    Some("saml"),
                )
                .await;
                Ok(self.next_step(req, &token, &session))
            }
            Accepted::Refused(code, subject) => Ok(self.saml_refused(req, code, subject).await),
        }
    }

    async fn saml_refused(
        &self,
        req: &AuthRequest<'_>,
        code: &'static str,
        subject: Option<String>,
    ) -> Reply {
        self.audit(
            req,
            EventKind::SamlAssertionRejected,
            Outcome::Denied,
            subject.as_deref(),
            Some(code),
        )
        .await;
        tracing::info!(tenant = %req.tenant.id, reason = code, "SAML response refused");
        error_reply(req, 403, "sso_failed", SSO_FAILED)
    }

    /// Every check from the posted field to a known, allowed user.
    async fn accept(
        &self,
        req: &AuthRequest<'_>,
        policy: &SamlPolicy,
        idp: Arc<IdpMetadata>,
        response: &str,
        relay_state: Option<String>,
    ) -> Result<Accepted, AuthError> {
        let urls = Self::sp_urls(req);
        let now = self.clock.unix_secs();
        let skew = policy.clock_skew.as_secs() as i64;
        let field = response.to_string();
        let verified = tokio::task::spawn_blocking(move || {
            let xml = validate::decode(&field)?;
            validate::verify(
                &xml,
                &Expect {
                    idp: &idp,
                    sp: &urls,
                    skew_secs: skew,
                    now: now as i64,
                },
            )
        })
        .await
        .map_err(|_| AuthError::Worker)?;
        let v = match verified {
            Ok(v) => v,
            Err(why) => return Ok(Accepted::Refused(why.code(), None)),
        };

        // InResponseTo: one of this tenant's outstanding requests, used once, from the browser
        // that started it; or, only where the tenant allows it, none at all.
        let return_to = match &v.in_response_to {
            Some(id) => {
                let (store, tenant, rid) =
                    (Arc::clone(&self.store), req.tenant.id.clone(), id.clone());
                let pending =
                    Self::blocking(move || store.take_saml_request(&tenant, &rid, now)).await?;
                let Some(pending) = pending else {
                    return Ok(Accepted::Refused(
                        Rejection::UnknownRequest.code(),
                        Some(v.name_id),
                    ));
                };
                let browser = cookie::single(req.headers, SAML_BROWSER).map(hash_hex);
                if !browser.is_some_and(|b| super::same_token(&b, &pending.browser)) {
                    return Ok(Accepted::Refused(
                        Rejection::WrongBrowser.code(),
                        Some(v.name_id),
                    ));
                }
                pending.return_to
            }
            None if policy.allow_idp_initiated => relay_state
                .and_then(|r| return_to::safe(&r, req.host))
                .unwrap_or_else(|| "/".into()),
            None => {
                return Ok(Accepted::Refused(
                    Rejection::UnsolicitedNotAllowed.code(),
                    Some(v.name_id),
                ))
            }
        };

        let (store, issuer, aid) = (
            Arc::clone(&self.store),
            v.issuer.clone(),
            v.assertion_id.clone(),
        );
        let keep = u64::try_from(v.keep_until).unwrap_or(now);
        let fresh =
            Self::blocking(move || store.remember_assertion(&issuer, &aid, keep, now)).await?;
        if !fresh {
            return Ok(Accepted::Refused(Rejection::Replay.code(), Some(v.name_id)));
        }

        match self.map_identity(req, policy, &v).await? {
            Ok(username) => Ok(Accepted::Ok {
                username,
                return_to,
            }),
            Err(reason) => Ok(Accepted::Refused(reason, Some(v.name_id))),
        }
    }

    /// The user an assertion signs in: its username (NameID or the configured attribute),
    /// roles from the groups attribute, provisioned just in time where allowed. A SAML
    /// identity only ever maps to a user of the same IdP: never to a local account.
    async fn map_identity(
        &self,
        req: &AuthRequest<'_>,
        policy: &SamlPolicy,
        v: &Verified,
    ) -> Result<Result<String, &'static str>, AuthError> {
        let username = match &policy.username_attribute {
            None => v.name_id.clone(),
            Some(attr) => match v.attribute(attr).as_slice() {
                [one] => one.clone(),
                [] => return Ok(Err("username_attribute_missing")),
                _ => return Ok(Err("username_attribute_ambiguous")),
            },
        };
        if !valid_username(&username) {
            return Ok(Err("unusable_username"));
        }
        let mut roles: Vec<String> = policy.default_roles.clone();
        if let Some(attr) = &policy.groups_attribute {
            for group in v.attribute(attr) {
                if let Some(mapped) = policy.role_map.get(&group) {
                    roles.extend(mapped.iter().cloned());
                }
            }
        }
        roles.sort();
        roles.dedup();

        let (store, tenant, name, issuer) = (
            Arc::clone(&self.store),
            req.tenant.id.clone(),
            username.clone(),
            v.issuer.clone(),
        );
        let jit = policy.jit_provisioning;
        let now = self.clock.unix_secs();
        let outcome = Self::blocking(move || match store.user(&tenant, &name)? {
            Some(u) if u.idp.as_deref() != Some(issuer.as_str()) => Ok(Err(if u.idp.is_none() {
                "local_account_conflict"
            } else {
                "other_idp_account"
            })),
            Some(u) if u.disabled => Ok(Err("account_disabled")),
            Some(_) => {
                store.set_roles(&tenant, &name, &roles)?;
                Ok(Ok(false))
            }
            None if !jit => Ok(Err("not_provisioned")),
            None => {
                store.create_user(&User {
                    tenant: tenant.clone(),
                    username: name.clone(),
                    password_hash: None,
                    roles,
                    disabled: false,
                    created_at: now,
                    password_changed_at: now,
                    totp_secret: None,
                    idp: Some(issuer),
                })?;
                Ok(Ok(true))
            }
        })
        .await?;
        match outcome {
            Ok(created) => {
                if created {
                    self.audit(
                        req,
                        EventKind::UserCreated,
                        Outcome::Success,
                        Some(&username),
                        Some("saml_jit"),
                    )
                    .await;
                }
                Ok(Ok(username))
            }
            Err(reason) => Ok(Err(reason)),
        }
    }

    /// What the tenant admin page shows: our addresses, the IdP in use, the settings.
    pub(super) fn saml_status(&self, req: &AuthRequest<'_>) -> serde_json::Value {
        let Some(policy) = req.tenant.saml.as_ref() else {
            return serde_json::json!({ "configured": false });
        };
        let sp = Self::sp_urls(req);
        let idp = self.saml.resolve(req.tenant);
        let source = match &policy.metadata {
            crate::config::MetadataSource::File { path, .. } => path
                .file_name()
                .map(|f| format!("file {}", f.to_string_lossy()))
                .unwrap_or_default(),
            crate::config::MetadataSource::Url { url, .. } => url.clone(),
        };
        let certs: Vec<serde_json::Value> = idp
            .as_ref()
            .map(|i| i.signing_certs.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|der| {
                let not_after = openssl::x509::X509::from_der(der)
                    .map(|c| c.not_after().to_string())
                    .unwrap_or_default();
                serde_json::json!({ "sha256": hex::encode(Sha256::digest(der)), "not_after": not_after })
            })
            .collect();
        let mut methods = Vec::new();
        if req.tenant.login.password {
            methods.push("password");
        }
        if req.tenant.login.saml {
            methods.push("saml");
        }
        serde_json::json!({
            "configured": true,
            "sp": { "entity_id": sp.entity_id, "acs_url": sp.acs, "metadata_url": sp.entity_id },
            "idp": {
                "available": idp.is_some(),
                "entity_id": idp.as_ref().map(|i| i.entity_id.clone()),
                "sso_url": idp.as_ref().map(|i| i.sso_url.clone()),
                "slo_url": idp.as_ref().and_then(|i| i.slo_url.clone()),
                "metadata_source": source,
                "certificates": certs,
            },
            "login_methods": methods,
            "break_glass": req.tenant.login.break_glass,
            "allow_idp_initiated": policy.allow_idp_initiated,
            "sign_authn_requests": policy.sign_requests,
            "jit_provisioning": policy.jit_provisioning,
            "clock_skew_seconds": policy.clock_skew.as_secs(),
        })
    }

    /// Where a SAML user goes after a local logout: the IdP's SingleLogoutService when the
    /// tenant asks for it.
    pub(super) fn saml_logout_target(&self, tenant: &Tenant, amr: &[String]) -> Option<String> {
        tenant.saml.as_ref().filter(|p| p.logout_redirect)?;
        if !amr.iter().any(|m| m == "saml") {
            return None;
        }
        self.saml.resolve(tenant)?.slo_url.clone()
    }
}

fn not_configured(req: &AuthRequest<'_>) -> Reply {
    error_reply(
        req,
        404,
        "not_found",
        "Single sign-on is not set up for this organisation.",
    )
}
