//! Audit: structured, per-tenant security events.
//!
//! The last stage of the request flow. Request handlers build an [`AuditEvent`] (with the time
//! taken from their clock) and hand it to an [`AuditSink`], which never blocks them; one writer
//! thread stores events in batches through a [`crate::store::AuditStore`].
//!
//! Every stored event is first passed through [`AuditEvent::sanitized`], so control characters
//! cannot forge log lines and attacker-sized fields cannot bloat the store. Each tenant's events
//! form a hash chain (see [`chain`]) so that edits, deletions and reordering are detectable.
//!
//! Events carry no secrets by construction: there is no field for request bodies, cookies or
//! headers other than the user agent. Callers must not put secrets into `reason` or `subject`.

pub mod chain;
pub mod filter;
pub mod retention;
mod sink;

pub use sink::{AuditSink, DEFAULT_QUEUE_CAPACITY};

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Tenant id under which operator-level events (config reload, …) are stored.
///
/// Tenant ids are `[a-z0-9-]{1,63}`, so the leading underscore can never collide with a tenant.
pub const OPERATOR_TENANT: &str = "_operator";

/// Longest stored free-text field, in bytes (after escaping, including the truncation mark).
pub const MAX_FIELD_BYTES: usize = 512;

/// Appended to a field that was cut to [`MAX_FIELD_BYTES`], so readers know it was cut.
const TRUNCATION_MARK: char = '…';

/// What happened. The snake_case names are stored and exported: never rename a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A new configuration was validated and swapped in.
    ConfigReloaded,
    /// A changed configuration failed validation; the previous one keeps serving.
    ConfigRejected,
    /// A request was refused by the access decision (e.g. an unauthenticated request to an
    /// `authenticated` route).
    RequestDenied,
    /// A malformed or ambiguous request (path encoding, framing) was refused with 400.
    BadRequestRejected,
    /// A user signed in (or passed the password step of a longer login).
    LoginSucceeded,
    /// A sign-in attempt failed; `reason` says why (never the password).
    LoginFailed,
    /// A user signed out; the session ended server-side.
    Logout,
    /// A session was presented after its idle or absolute timeout.
    SessionExpired,
    /// Sessions were ended by an operator, a password change or a disabled account.
    SessionRevoked,
    /// A password was set or changed.
    PasswordChanged,
    /// An account was created.
    UserCreated,
    /// An account was disabled.
    UserDisabled,
    /// An account was enabled again.
    UserEnabled,
    /// A sign-in attempt was refused by the brute-force limiter before any password check.
    LoginThrottled,
    /// An account reached the consecutive-failure cap and is locked until an operator unlocks it.
    AccountLocked,
    /// An operator unlocked an account.
    AccountUnlocked,
    /// A user turned on TOTP two-step verification.
    MfaEnrolled,
    /// A second factor was accepted.
    MfaVerified,
    /// A wrong second-factor code was entered.
    MfaFailed,
    /// A TOTP code was presented again for a time step already used.
    MfaReplayRejected,
    /// A recovery code was used in place of the authenticator.
    RecoveryCodeUsed,
    /// A user turned TOTP off.
    MfaRemoved,
    /// An operator removed a user's second factor (lost device).
    MfaReset,
    /// An operator asked the running gateway to reload its configuration (the result follows
    /// as `config_reloaded` or `config_rejected`).
    ConfigReloadRequested,
    /// A SAML assertion was verified and signed a user in.
    SamlAssertionAccepted,
    /// A SAML response was refused (the reason code says why; the response is never stored).
    SamlAssertionRejected,
    /// An operator moved an SSO account to the tenant's new IdP (the reason names both).
    UserIdpChanged,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 27] = [
        EventKind::ConfigReloaded,
        EventKind::ConfigRejected,
        EventKind::RequestDenied,
        EventKind::BadRequestRejected,
        EventKind::LoginSucceeded,
        EventKind::LoginFailed,
        EventKind::Logout,
        EventKind::SessionExpired,
        EventKind::SessionRevoked,
        EventKind::PasswordChanged,
        EventKind::UserCreated,
        EventKind::UserDisabled,
        EventKind::UserEnabled,
        EventKind::LoginThrottled,
        EventKind::AccountLocked,
        EventKind::AccountUnlocked,
        EventKind::MfaEnrolled,
        EventKind::MfaVerified,
        EventKind::MfaFailed,
        EventKind::MfaReplayRejected,
        EventKind::RecoveryCodeUsed,
        EventKind::MfaRemoved,
        EventKind::MfaReset,
        EventKind::ConfigReloadRequested,
        EventKind::SamlAssertionAccepted,
        EventKind::SamlAssertionRejected,
        EventKind::UserIdpChanged,
    ];

    /// The stable snake_case name (same as the serde name).
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::ConfigReloaded => "config_reloaded",
            EventKind::ConfigRejected => "config_rejected",
            EventKind::RequestDenied => "request_denied",
            EventKind::BadRequestRejected => "bad_request_rejected",
            EventKind::LoginSucceeded => "login_succeeded",
            EventKind::LoginFailed => "login_failed",
            EventKind::Logout => "logout",
            EventKind::SessionExpired => "session_expired",
            EventKind::SessionRevoked => "session_revoked",
            EventKind::PasswordChanged => "password_changed",
            EventKind::UserCreated => "user_created",
            EventKind::UserDisabled => "user_disabled",
            EventKind::UserEnabled => "user_enabled",
            EventKind::LoginThrottled => "login_throttled",
            EventKind::AccountLocked => "account_locked",
            EventKind::AccountUnlocked => "account_unlocked",
            EventKind::MfaEnrolled => "mfa_enrolled",
            EventKind::MfaVerified => "mfa_verified",
            EventKind::MfaFailed => "mfa_failed",
            EventKind::MfaReplayRejected => "mfa_replay_rejected",
            EventKind::RecoveryCodeUsed => "recovery_code_used",
            EventKind::MfaRemoved => "mfa_removed",
            EventKind::MfaReset => "mfa_reset",
            EventKind::ConfigReloadRequested => "config_reload_requested",
            EventKind::SamlAssertionAccepted => "saml_assertion_accepted",
            EventKind::SamlAssertionRejected => "saml_assertion_rejected",
            EventKind::UserIdpChanged => "user_idp_changed",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of the [`EventKind`] names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown audit event type '{0}'")]
pub struct UnknownEventKind(pub String);

impl FromStr for EventKind {
    type Err = UnknownEventKind;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| UnknownEventKind(sanitize_text(name)))
    }
}

/// How the audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The action was carried out.
    Success,
    /// The action was attempted and failed (bad credentials, invalid config, …).
    Failure,
    /// A policy refused the action.
    Denied,
}

impl Outcome {
    /// Every outcome, in declaration order.
    pub const ALL: [Outcome; 3] = [Outcome::Success, Outcome::Failure, Outcome::Denied];

    /// The stable snake_case name (same as the serde name).
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }

    /// Parses a stored name.
    pub fn from_name(name: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == name)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One security event, as handed to the sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// When it happened, from the caller's clock (stored with millisecond precision, UTC).
    #[serde(serialize_with = "serialize_rfc3339")]
    pub time: OffsetDateTime,
    /// Tenant id, or [`OPERATOR_TENANT`] for operator-level events.
    pub tenant: String,
    /// What happened.
    pub event: EventKind,
    /// Who acted (user id), when known.
    pub actor: Option<String>,
    /// What the action was about (user, route, file…), when relevant.
    pub subject: Option<String>,
    /// Client address as decided by the trusted-proxy rules.
    pub client_ip: Option<IpAddr>,
    /// The client's `User-Agent`, verbatim (it is escaped and truncated before storing).
    pub user_agent: Option<String>,
    /// Request id, to correlate with access logs.
    pub request_id: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Machine-readable reason code or short explanation. Never a secret.
    pub reason: Option<String>,
}

impl AuditEvent {
    /// An event with only the required fields; set the others with struct update syntax:
    /// `AuditEvent { reason: Some(..), ..AuditEvent::new(now, tenant, kind, outcome) }`.
    pub fn new(
        time: OffsetDateTime,
        tenant: impl Into<String>,
        event: EventKind,
        outcome: Outcome,
    ) -> Self {
        AuditEvent {
            time,
            tenant: tenant.into(),
            event,
            actor: None,
            subject: None,
            client_ip: None,
            user_agent: None,
            request_id: None,
            outcome,
            reason: None,
        }
    }

    /// The event exactly as stores keep it: every text field escaped and truncated by
    /// [`sanitize_text`], time cut to whole milliseconds in UTC. Apply it once, to the event
    /// as received: escaping is not idempotent (`\\` doubles again).
    pub fn sanitized(&self) -> AuditEvent {
        let clean = |field: &Option<String>| field.as_deref().map(sanitize_text);
        AuditEvent {
            time: from_unix_ms(unix_ms(self.time)).unwrap_or(self.time),
            tenant: sanitize_text(&self.tenant),
            event: self.event,
            actor: clean(&self.actor),
            subject: clean(&self.subject),
            client_ip: self.client_ip,
            user_agent: clean(&self.user_agent),
            request_id: clean(&self.request_id),
            outcome: self.outcome,
            reason: clean(&self.reason),
        }
    }
}

/// A stored event with its place in the tenant's hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Position in the tenant's chain (1, 2, …); also the paging cursor.
    pub seq: u64,
    /// Chain hash of this record (see [`chain::link`]).
    pub hash: chain::ChainHash,
    /// The stored (sanitized) event.
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// Escapes control and invisible bidi characters and truncates to [`MAX_FIELD_BYTES`].
///
/// Output is one line of printable text: a C0/C1 control or DEL becomes `\xNN`, a bidi
/// control or line/paragraph separator becomes `\u{NNNN}` (CVE-2021-42574, "Trojan Source":
/// they reorder what a reader sees), and `\` becomes `\\` so an attacker cannot pre-write
/// text that looks like an escape. Truncation happens between escapes, never inside a
/// character or an escape sequence, and is marked with `…`.
pub fn sanitize_text(input: &str) -> String {
    let budget = MAX_FIELD_BYTES - TRUNCATION_MARK.len_utf8();
    let mut out = String::with_capacity(input.len().min(MAX_FIELD_BYTES));
    // Length of `out` at the last escape boundary that still leaves room for the mark.
    let mut keep = 0;
    for ch in input.chars() {
        push_escaped(&mut out, ch);
        if out.len() <= budget {
            keep = out.len();
        }
        if out.len() > MAX_FIELD_BYTES {
            out.truncate(keep);
            out.push(TRUNCATION_MARK);
            return out;
        }
    }
    out
}

fn push_escaped(out: &mut String, ch: char) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match ch {
        '\\' => out.push_str("\\\\"),
        // Every `char::is_control` character (C0, DEL, C1) is below U+0100.
        c if c.is_control() => {
            let byte = u32::from(c);
            out.push_str("\\x");
            out.push(char::from(HEX[((byte >> 4) & 0xf) as usize]));
            out.push(char::from(HEX[(byte & 0xf) as usize]));
        }
        '\u{061c}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}'
        | '\u{2028}'
        | '\u{2029}' => out.extend(ch.escape_unicode()),
        c => out.push(c),
    }
}

/// Milliseconds since the Unix epoch: the stored form of event times.
pub(crate) fn unix_ms(time: OffsetDateTime) -> i64 {
    // Cannot overflow: `time` spans ±9999 years, about 3.2e14 ms.
    time.unix_timestamp() * 1000 + i64::from(time.millisecond())
}

/// Inverse of [`unix_ms`]; `None` if outside the supported date range.
pub(crate) fn from_unix_ms(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

fn serialize_rfc3339<S: Serializer>(
    time: &OffsetDateTime,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let text = time.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
    serializer.serialize_str(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64, nanos: u32) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs)
            .and_then(|t| t.replace_nanosecond(nanos))
            .expect("valid test time")
    }

    #[test]
    fn control_characters_are_escaped_in_free_text() {
        assert_eq!(sanitize_text("bell\u{7}"), "bell\\x07");
        assert_eq!(
            sanitize_text("a\r\nforged: line\tx\u{1b}[31m\u{7f}\u{85}"),
            "a\\x0d\\x0aforged: line\\x09x\\x1b[31m\\x7f\\x85"
        );
        assert_eq!(
            sanitize_text("Mozilla/5.0 (X11; Linux) été"),
            "Mozilla/5.0 (X11; Linux) été"
        );
    }

    #[test]
    fn backslashes_are_escaped_so_escapes_are_unambiguous() {
        // A literal "\x07" typed by an attacker must not read back as an escaped BEL.
        assert_eq!(sanitize_text("\\x07"), "\\\\x07");
    }

    #[test]
    fn bidi_controls_and_line_separators_are_escaped() {
        assert_eq!(sanitize_text("admin\u{202e}nimda"), "admin\\u{202e}nimda");
        assert_eq!(sanitize_text("a\u{2028}b\u{2066}"), "a\\u{2028}b\\u{2066}");
    }

    #[test]
    fn long_fields_are_truncated_on_a_char_boundary_with_a_mark() {
        let short = "é".repeat(MAX_FIELD_BYTES / 2);
        assert_eq!(
            sanitize_text(&short),
            short,
            "exactly the limit is kept whole"
        );

        let long = "é".repeat(MAX_FIELD_BYTES);
        let cut = sanitize_text(&long);
        assert!(cut.len() <= MAX_FIELD_BYTES);
        assert!(cut.ends_with('…'));
        assert!(cut.trim_end_matches('…').chars().all(|c| c == 'é'));
    }

    #[test]
    fn truncation_never_splits_an_escape_sequence() {
        let cut = sanitize_text(&"\u{1}".repeat(1000));
        assert!(cut.len() <= MAX_FIELD_BYTES);
        let body = cut.strip_suffix('…').expect("truncation mark");
        assert_eq!(body.len() % 4, 0, "only whole \\xNN escapes: {body}");
        assert!(body.split("\\x01").all(str::is_empty));
    }

    #[test]
    fn sanitized_event_escapes_every_text_field_and_keeps_milliseconds_in_utc() {
        let offset = time::UtcOffset::from_hms(2, 0, 0).expect("valid offset");
        let event = AuditEvent {
            actor: Some("al\u{7}ice".into()),
            subject: Some("bob\n".into()),
            user_agent: Some("ua\u{0}".into()),
            request_id: Some("r\u{1b}".into()),
            reason: Some("why\r".into()),
            ..AuditEvent::new(
                at(1_700_000_000, 123_456_789).to_offset(offset),
                "acme",
                EventKind::RequestDenied,
                Outcome::Denied,
            )
        };
        let clean = event.sanitized();
        assert_eq!(clean.actor.as_deref(), Some("al\\x07ice"));
        assert_eq!(clean.subject.as_deref(), Some("bob\\x0a"));
        assert_eq!(clean.user_agent.as_deref(), Some("ua\\x00"));
        assert_eq!(clean.request_id.as_deref(), Some("r\\x1b"));
        assert_eq!(clean.reason.as_deref(), Some("why\\x0d"));
        assert_eq!(clean.time, at(1_700_000_000, 123_000_000));
        assert_eq!(clean.time.offset(), time::UtcOffset::UTC);
    }

    #[test]
    fn event_kind_names_are_stable_snake_case() {
        let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "config_reloaded",
                "config_rejected",
                "request_denied",
                "bad_request_rejected",
                "login_succeeded",
                "login_failed",
                "logout",
                "session_expired",
                "session_revoked",
                "password_changed",
                "user_created",
                "user_disabled",
                "user_enabled",
                "login_throttled",
                "account_locked",
                "account_unlocked",
                "mfa_enrolled",
                "mfa_verified",
                "mfa_failed",
                "mfa_replay_rejected",
                "recovery_code_used",
                "mfa_removed",
                "mfa_reset",
                "config_reload_requested",
                "saml_assertion_accepted",
                "saml_assertion_rejected",
                "user_idp_changed",
            ]
        );
        for kind in EventKind::ALL {
            let json = serde_json::to_string(&kind).expect("serialize");
            assert_eq!(json, format!("\"{kind}\""));
            assert_eq!(
                serde_json::from_str::<EventKind>(&json).expect("deserialize"),
                kind
            );
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
        }
        assert!("ConfigReloaded".parse::<EventKind>().is_err());
        for outcome in Outcome::ALL {
            assert_eq!(Outcome::from_name(outcome.as_str()), Some(outcome));
            let json = serde_json::to_string(&outcome).expect("serialize");
            assert_eq!(json, format!("\"{outcome}\""));
        }
    }

    #[test]
    fn event_serializes_time_as_rfc3339() {
        let event = AuditEvent::new(
            at(0, 0),
            OPERATOR_TENANT,
            EventKind::ConfigReloaded,
            Outcome::Success,
        );
        let json = serde_json::to_value(&event).expect("serialize");
        assert_eq!(json["time"], "1970-01-01T00:00:00Z");
        assert_eq!(json["tenant"], "_operator");
        assert_eq!(json["event"], "config_reloaded");
        assert_eq!(json["outcome"], "success");
    }
}
