//! The second factor: `/.auth/mfa` (TOTP or recovery code) and `/.auth/mfa/enroll`.
//!
//! TOTP per RFC 6238 (SHA-1, 6 digits, 30 s, ±1 step). Each time step is accepted at most once
//! per user through an atomic check-and-set in the store, so a shared store enforces it across
//! instances (RFC 6238 §5.2). Every code check goes through the brute-force limiter. The secret
//! is sealed at rest, bound to tenant, user and field; it is shown only during enrolment.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::{
    error_reply, login_redirect, not_signed_in, Auth, AuthError, AuthRequest, Fields, Gate,
};
use crate::audit::{EventKind, Outcome};
use crate::auth::pages;
use crate::auth::reply::Reply;
use crate::auth::session::{Identity, Lookup};
use crate::auth::totp;
use crate::config::MfaPolicy;
use crate::keys::FieldBinding;
use crate::store::{Session, Stage};

/// Field name of the enrolled secret, part of its sealing binding.
const SECRET_FIELD: &str = "totp-secret";
/// Field name of a secret being enrolled, so it can never pass for an enrolled one.
const PENDING_FIELD: &str = "totp-secret-pending";

/// What a checked second factor turned out to be.
enum Checked {
    /// A TOTP code for a new time step.
    Totp,
    /// An unused recovery code (now used).
    Recovery,
    /// A TOTP code for a step already used: a replay.
    Replay,
    /// Wrong.
    Wrong,
}

impl Auth {
    fn binding<'a>(&self, session: &'a Session, field: &'a str) -> FieldBinding<'a> {
        FieldBinding {
            tenant: &session.tenant,
            user: &session.username,
            field,
        }
    }

    /// The live session of the request at one of `stages`, read from the store (not the
    /// cache: enrolment state lives in the session row).
    async fn session_at(
        &self,
        req: &AuthRequest<'_>,
        stages: &[Stage],
    ) -> Result<Option<Identity>, AuthError> {
        Ok(
            match self.lookup(req.tenant, req.headers, req.client_ip).await? {
                Lookup::Live(id) if stages.contains(&id.session.stage) => {
                    let store = Arc::clone(&self.store);
                    let hash = id.session.token_hash;
                    let fresh = Self::blocking(move || store.session(&hash)).await?;
                    fresh.map(|session| Identity::new(session, id.roles.clone()))
                }
                _ => None,
            },
        )
    }

    /// Check a TOTP code (or, when given, a recovery code) for the session's user.
    async fn check_second_factor(
        &self,
        session: &Session,
        fields: &Fields,
    ) -> Result<Checked, AuthError> {
        let (tenant, user) = (session.tenant.clone(), session.username.clone());
        if !fields.recovery_code.trim().is_empty() {
            let Some(normalized) = totp::normalize_recovery_code(&fields.recovery_code) else {
                return Ok(Checked::Wrong);
            };
            let hash = self
                .sealer
                .lookup_digest(totp::hash_recovery_code(&tenant, &user, &normalized).as_bytes());
            let store = Arc::clone(&self.store);
            let used =
                Self::blocking(move || store.use_recovery_code(&tenant, &user, &hash)).await?;
            return Ok(if used {
                Checked::Recovery
            } else {
                Checked::Wrong
            });
        }
        let Some(code) = totp::parse_code(&fields.code) else {
            return Ok(Checked::Wrong);
        };
        let store = Arc::clone(&self.store);
        let (t, u) = (tenant.clone(), user.clone());
        let Some(sealed) = Self::blocking(move || store.user(&t, &u))
            .await?
            .and_then(|u| u.totp_secret)
        else {
            return Ok(Checked::Wrong);
        };
        let Ok(secret) = self
            .sealer
            .open(&sealed, &self.binding(session, SECRET_FIELD))
        else {
            tracing::error!("a stored TOTP secret does not open: wrong master key or moved row");
            return Ok(Checked::Wrong);
        };
        let Some(step) = totp::matching_step(&secret, code, self.clock.unix_secs()) else {
            return Ok(Checked::Wrong);
        };
        let store = Arc::clone(&self.store);
        let fresh = Self::blocking(move || store.use_totp_step(&tenant, &user, step)).await?;
        Ok(if fresh {
            Checked::Totp
        } else {
            Checked::Replay
        })
    }

    /// `GET /.auth/mfa`: the code form, for a session that owes its second factor.
    pub(super) async fn mfa_form(&self, req: &AuthRequest<'_>) -> Result<Reply, AuthError> {
        Ok(
            match self.lookup(req.tenant, req.headers, req.client_ip).await? {
                Lookup::Live(id) if id.session.stage == Stage::SecondFactor => {
                    Reply::html(200, pages::mfa_page(&id.session.csrf, None))
                }
                _ => login_redirect(req, "/"),
            },
        )
    }

    /// `POST /.auth/mfa`: verify the second factor; only now does an active session exist.
    pub(super) async fn mfa_verify(&self, req: &AuthRequest<'_>) -> Result<Reply, AuthError> {
        let json = req.wants_json();
        let Some(id) = self.session_at(req, &[Stage::SecondFactor]).await? else {
            return Ok(not_signed_in(req, "/"));
        };
        let fields = match self.session_form(req, &id, "verification") {
            Ok(fields) => fields,
            Err(reply) => return Ok(reply),
        };
        let session = id.session.clone();
        let ticket = match self.gate(req, &session.username).await {
            Gate::Check(ticket) => ticket,
            Gate::Refused(reply) => return Ok(reply),
        };
        let checked = self.check_second_factor(&session, &fields).await?;
        let user = Some(session.username.as_str());
        let (amr_extra, event) = match checked {
            Checked::Totp => ("otp", EventKind::MfaVerified),
            Checked::Recovery => ("mfa", EventKind::RecoveryCodeUsed),
            Checked::Replay | Checked::Wrong => {
                let (event, reason) = match checked {
                    Checked::Replay => (EventKind::MfaReplayRejected, "replayed_code"),
                    _ => (EventKind::MfaFailed, "wrong_code"),
                };
                self.audit(req, event, Outcome::Failure, user, Some(reason))
                    .await;
                self.settle(req, ticket, &session.username, false).await;
                return Ok(if json {
                    Reply::json_error(401, "invalid_code")
                } else {
                    Reply::html(
                        401,
                        pages::mfa_page(
                            &session.csrf,
                            Some("That code is not valid. Try the next one."),
                        ),
                    )
                });
            }
        };
        self.settle(req, ticket, &session.username, true).await;
        self.audit(req, event, Outcome::Success, user, None).await;
        let mut amr = session.amr.clone();
        amr.push(amr_extra.to_string());
        let (token, next) = self
            .advance(
                req,
                Lookup::Live(Arc::new(id)),
                &session.username,
                Stage::Active,
                amr,
                &session.return_to,
                self.clock.unix_secs(),
            )
            .await?;
        Ok(self.next_step(req, &token, &next))
    }

    /// `GET /.auth/mfa/enroll`: a new secret to scan, or (when TOTP is on) the page to
    /// manage it.
    pub(super) async fn enroll_form(&self, req: &AuthRequest<'_>) -> Result<Reply, AuthError> {
        let Some(id) = self
            .session_at(req, &[Stage::EnrollMfa, Stage::Active])
            .await?
        else {
            return Ok(login_redirect(req, "/.auth/mfa/enroll"));
        };
        if req.tenant.mfa == MfaPolicy::Off {
            return Ok(error_reply(
                req,
                404,
                "mfa_off",
                "Two-step verification is not used here.",
            ));
        }
        let session = id.session.clone();
        let store = Arc::clone(&self.store);
        let (t, u) = (session.tenant.clone(), session.username.clone());
        let user = Self::blocking(move || store.user(&t, &u)).await?;
        if user.as_ref().is_some_and(|u| u.totp_secret.is_some()) {
            let store = Arc::clone(&self.store);
            let (t, u) = (session.tenant.clone(), session.username.clone());
            let left = Self::blocking(move || store.recovery_codes_left(&t, &u)).await?;
            let can_remove = req.tenant.mfa != MfaPolicy::Required;
            return Ok(Reply::html(
                200,
                pages::mfa_manage_page(&session.csrf, left, can_remove, None),
            ));
        }
        self.new_enrolment(req, &session, None).await
    }

    /// Make a secret for `session`, keep it sealed with the session, show it.
    async fn new_enrolment(
        &self,
        req: &AuthRequest<'_>,
        session: &Session,
        error: Option<&str>,
    ) -> Result<Reply, AuthError> {
        let secret = totp::new_secret();
        let sealed = self
            .sealer
            .seal(&secret, &self.binding(session, PENDING_FIELD))
            .map_err(|_| AuthError::Worker)?;
        let store = Arc::clone(&self.store);
        let hash = session.token_hash;
        Self::blocking(move || store.set_pending_totp(&hash, Some(&sealed))).await?;
        // The issuer is the tenant's name, so the user's app labels the entry recognisably.
        let uri = Zeroizing::new(totp::otpauth_uri(
            &req.tenant.display_name,
            &session.username,
            &secret,
        ));
        let qr = totp::qr_svg(&uri).map_err(|_| AuthError::Worker)?;
        let key = Zeroizing::new(totp::grouped(&totp::base32(&secret)));
        Ok(Reply::html(
            200,
            pages::enroll_page(&session.csrf, &qr, &key, error),
        ))
    }

    /// `POST /.auth/mfa/enroll`: `action=confirm` turns TOTP on with a first valid code;
    /// `action=remove` turns it off with a current code (not where it is required).
    pub(super) async fn enroll_post(&self, req: &AuthRequest<'_>) -> Result<Reply, AuthError> {
        let json = req.wants_json();
        let Some(id) = self
            .session_at(req, &[Stage::EnrollMfa, Stage::Active])
            .await?
        else {
            return Ok(if json {
                Reply::json_error(401, "unauthenticated")
            } else {
                login_redirect(req, "/.auth/mfa/enroll")
            });
        };
        if req.tenant.mfa == MfaPolicy::Off {
            return Ok(error_reply(
                req,
                404,
                "mfa_off",
                "Two-step verification is not used here.",
            ));
        }
        let fields = match self.session_form(req, &id, "two-step") {
            Ok(fields) => fields,
            Err(reply) => return Ok(reply),
        };
        let session = id.session.clone();
        let ticket = match self.gate(req, &session.username).await {
            Gate::Check(ticket) => ticket,
            Gate::Refused(reply) => return Ok(reply),
        };
        let user = Some(session.username.as_str());
        if fields.action == "remove" {
            let removable = session.stage == Stage::Active && req.tenant.mfa != MfaPolicy::Required;
            let checked = if removable {
                self.check_second_factor(&session, &fields).await?
            } else {
                Checked::Wrong
            };
            if !matches!(checked, Checked::Totp) {
                self.settle(req, ticket, &session.username, false).await;
                if matches!(checked, Checked::Replay) {
                    self.audit(
                        req,
                        EventKind::MfaReplayRejected,
                        Outcome::Failure,
                        user,
                        Some("replayed_code"),
                    )
                    .await;
                }
                self.audit(
                    req,
                    EventKind::MfaRemoved,
                    Outcome::Failure,
                    user,
                    Some("code_not_accepted"),
                )
                .await;
                return Ok(error_reply(
                    req,
                    400,
                    "invalid_code",
                    "That code is not valid; two-step verification stays on.",
                ));
            }
            self.settle(req, ticket, &session.username, true).await;
            let store = Arc::clone(&self.store);
            let (t, u) = (session.tenant.clone(), session.username.clone());
            Self::blocking(move || store.set_totp(&t, &u, None, &[], 0)).await?;
            self.audit(req, EventKind::MfaRemoved, Outcome::Success, user, None)
                .await;
            return Ok(if json {
                Reply::json(200, &serde_json::json!({ "mfa": "off" }))
            } else {
                Reply::html(
                    200,
                    pages::message_page(
                        "Two-step verification is off",
                        "You can turn it on again at any time.",
                    ),
                )
            });
        }

        // Confirm: the first code proves the app holds the secret (RFC 6238 has no other
        // way to know), and its step is recorded as used.
        let pending = session.pending_totp.as_deref().and_then(|sealed| {
            self.sealer
                .open(sealed, &self.binding(&session, PENDING_FIELD))
                .ok()
        });
        let step = match (&pending, totp::parse_code(&fields.code)) {
            (Some(secret), Some(code)) => totp::matching_step(secret, code, self.clock.unix_secs()),
            _ => None,
        };
        let (Some(secret), Some(step)) = (pending, step) else {
            self.settle(req, ticket, &session.username, false).await;
            self.audit(
                req,
                EventKind::MfaFailed,
                Outcome::Failure,
                user,
                Some("enrolment_code_wrong"),
            )
            .await;
            return Ok(if json {
                Reply::json_error(400, "invalid_code")
            } else {
                let mut reply = self
                    .new_enrolment(
                        req,
                        &session,
                        Some("That code did not match. Scan the new code and try again."),
                    )
                    .await?;
                reply.status = 400;
                reply
            });
        };
        self.settle(req, ticket, &session.username, true).await;
        let sealed = self
            .sealer
            .seal(&secret, &self.binding(&session, SECRET_FIELD))
            .map_err(|_| AuthError::Worker)?;
        let codes = totp::new_recovery_codes();
        let hashes: Vec<String> = codes
            .iter()
            .filter_map(|c| totp::normalize_recovery_code(c))
            .map(|n| {
                self.sealer.lookup_digest(
                    totp::hash_recovery_code(&session.tenant, &session.username, &n).as_bytes(),
                )
            })
            .collect();
        let store = Arc::clone(&self.store);
        let (t, u, hash) = (
            session.tenant.clone(),
            session.username.clone(),
            session.token_hash,
        );
        Self::blocking(move || {
            store.set_totp(&t, &u, Some(&sealed), &hashes, step)?;
            store.set_pending_totp(&hash, None)
        })
        .await?;
        self.audit(req, EventKind::MfaEnrolled, Outcome::Success, user, None)
            .await;

        // Enrolling is an authentication step: the session is rotated, and a login that was
        // waiting on enrolment becomes active now.
        let mut amr = session.amr.clone();
        if !amr.iter().any(|a| a == "otp") {
            amr.push("otp".into());
        }
        let return_to = session.return_to.clone();
        let (token, next) = self
            .advance(
                req,
                Lookup::Live(Arc::new(id)),
                &session.username,
                Stage::Active,
                amr,
                &return_to,
                self.clock.unix_secs(),
            )
            .await?;
        let shown: Vec<Zeroizing<String>> = codes;
        let reply = if json {
            let list: Vec<&str> = shown.iter().map(|c| c.as_str()).collect();
            Reply::json(
                200,
                &serde_json::json!({ "next": "done", "return_to": next.return_to, "recovery_codes": list }),
            )
        } else {
            let list: Vec<String> = shown.iter().map(|c| c.to_string()).collect();
            Reply::html(200, pages::recovery_codes_page(&list, &next.return_to))
        };
        Ok(reply.cookie(crate::auth::cookie::set(
            crate::auth::cookie::SESSION,
            &token,
            "Lax",
        )))
    }
}
