//! Users and sessions: the records and the storage trait behind them.
//!
//! Users are keyed by (tenant, username): the same name in two tenants is two users, and every
//! lookup names its tenant. Sessions are keyed by the SHA-256 of their token; the token itself
//! is never stored.

use super::StoreError;

/// Whether `name` can be a username: 1–128 of ASCII letters, digits and `. _ @ + -` (safe in
/// headers, logs and URL paths). Checked before a name taken from a request reaches the store.
pub fn valid_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b))
}

/// A local account.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// The tenant the account belongs to.
    pub tenant: String,
    /// Unique within the tenant.
    pub username: String,
    /// argon2id PHC string; `None` for accounts that cannot sign in with a password.
    pub password_hash: Option<String>,
    /// Roles granted to the user.
    pub roles: Vec<String>,
    /// A disabled account cannot sign in and its sessions end.
    pub disabled: bool,
    /// Unix seconds of creation.
    pub created_at: u64,
    /// Unix seconds of the last password change.
    pub password_changed_at: u64,
    /// The TOTP secret, sealed; `None` when the user has no second factor.
    pub totp_secret: Option<String>,
    /// The entity ID of the SAML IdP this user signs in through; `None` for a local account.
    /// An IdP's assertion only ever signs in users carrying that IdP's entity ID.
    pub idp: Option<String>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash is not a password, but it is offline-crackable material: never print it.
        f.debug_struct("User")
            .field("tenant", &self.tenant)
            .field("username", &self.username)
            .field("roles", &self.roles)
            .field("disabled", &self.disabled)
            .field("totp", &self.totp_secret.is_some())
            .field("idp", &self.idp)
            .finish_non_exhaustive()
    }
}

/// Where a session stands in the login state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Password verified; the password has expired and must be changed before anything else.
    PasswordChange,
    /// Password verified; a second factor is still owed.
    SecondFactor,
    /// Password verified; the tenant requires a second factor the user has not set up yet.
    EnrollMfa,
    /// Fully authenticated: may use routes.
    Active,
}

impl Stage {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PasswordChange => "password_change",
            Self::SecondFactor => "second_factor",
            Self::EnrollMfa => "enroll_mfa",
            Self::Active => "active",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "password_change" => Some(Self::PasswordChange),
            "second_factor" => Some(Self::SecondFactor),
            "enroll_mfa" => Some(Self::EnrollMfa),
            "active" => Some(Self::Active),
            _ => None,
        }
    }
}

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// SHA-256 of the cookie token.
    pub token_hash: [u8; 32],
    /// Public session id (for the JWT `sid`, logs and revocation); not a credential.
    pub id: String,
    /// Tenant the session is bound to.
    pub tenant: String,
    /// User the session is bound to.
    pub username: String,
    /// Login state.
    pub stage: Stage,
    /// Authentication methods used so far (RFC 8176 values: `pwd`, `otp`, …).
    pub amr: Vec<String>,
    /// Anti-CSRF token for state-changing gateway forms while signed in.
    pub csrf: String,
    /// Where to go once the login finishes.
    pub return_to: String,
    /// Unix seconds of creation.
    pub created_at: u64,
    /// Unix seconds of the last use (moved forward at most once a minute).
    pub last_seen: u64,
    /// Unix seconds after which the session is over, whatever its use.
    pub expires_at: u64,
    /// Seconds of inactivity after which the session is over.
    pub idle_timeout: u64,
    /// A TOTP secret being enrolled (sealed), until the user confirms it with a code.
    pub pending_totp: Option<String>,
}

impl Session {
    /// Whether the session is still valid at `now` (idle and absolute timeouts).
    pub fn is_live(&self, now: u64) -> bool {
        now < self.expires_at && now < self.last_seen.saturating_add(self.idle_timeout)
    }
}

/// Storage of users and sessions.
pub trait AccountStore: Send + Sync {
    /// Add a user; fails with [`StoreError::Conflict`] if the name is taken in the tenant.
    fn create_user(&self, user: &User) -> Result<(), StoreError>;
    /// One user of one tenant.
    fn user(&self, tenant: &str, username: &str) -> Result<Option<User>, StoreError>;
    /// Every user of one tenant, by name.
    fn users(&self, tenant: &str) -> Result<Vec<User>, StoreError>;
    /// Replace a user's password hash; false if there is no such user.
    fn set_password(
        &self,
        tenant: &str,
        username: &str,
        phc: &str,
        changed_at: u64,
    ) -> Result<bool, StoreError>;
    /// Replace a user's roles; false if there is no such user.
    fn set_roles(&self, tenant: &str, username: &str, roles: &[String])
        -> Result<bool, StoreError>;
    /// Move the SSO users of `tenant` bound to IdP entity `from` (only `username`, if given) to
    /// the IdP entity `to`; returns the usernames moved. Local accounts are never touched.
    fn rebind_idp(
        &self,
        tenant: &str,
        from: &str,
        to: &str,
        username: Option<&str>,
    ) -> Result<Vec<String>, StoreError>;
    /// Disable or enable a user; false if there is no such user.
    fn set_disabled(
        &self,
        tenant: &str,
        username: &str,
        disabled: bool,
    ) -> Result<bool, StoreError>;

    /// Store a new session.
    fn create_session(&self, session: &Session) -> Result<(), StoreError>;
    /// The session with this token hash, live or not.
    fn session(&self, token_hash: &[u8; 32]) -> Result<Option<Session>, StoreError>;
    /// Record use of a session.
    fn touch_session(&self, token_hash: &[u8; 32], last_seen: u64) -> Result<(), StoreError>;
    /// End one session; false if it did not exist.
    fn delete_session(&self, token_hash: &[u8; 32]) -> Result<bool, StoreError>;
    /// End every session of a user, except `keep`; returns how many ended.
    fn delete_user_sessions(
        &self,
        tenant: &str,
        username: &str,
        keep: Option<&[u8; 32]>,
    ) -> Result<u64, StoreError>;
    /// Every stored session of `tenant` (of one user when `username` is given), live or not,
    /// oldest first. Callers show them with [`Session::is_live`] applied and never expose the
    /// token hash, CSRF token or pending secret.
    fn sessions_of(&self, tenant: &str, username: Option<&str>)
        -> Result<Vec<Session>, StoreError>;
    /// Remove sessions past their absolute expiry; returns how many.
    fn purge_sessions(&self, now: u64) -> Result<u64, StoreError>;

    /// Keep a TOTP secret being enrolled with the session (sealed), or forget it.
    fn set_pending_totp(
        &self,
        token_hash: &[u8; 32],
        sealed: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Turn TOTP on with `sealed` secret and these recovery-code hashes (replacing any), with
    /// `step` as the last used step; or off (`None`), removing the codes. False if no user.
    fn set_totp(
        &self,
        tenant: &str,
        username: &str,
        sealed: Option<&str>,
        recovery_hashes: &[String],
        step: u64,
    ) -> Result<bool, StoreError>;
    /// Atomically accept time step `step` if it is later than every step used before
    /// (RFC 6238 §5.2): true once per step, whichever instance asks first.
    fn use_totp_step(&self, tenant: &str, username: &str, step: u64) -> Result<bool, StoreError>;
    /// Consume a recovery code by its hash: true exactly once.
    fn use_recovery_code(
        &self,
        tenant: &str,
        username: &str,
        hash: &str,
    ) -> Result<bool, StoreError>;
    /// How many recovery codes the user has left.
    fn recovery_codes_left(&self, tenant: &str, username: &str) -> Result<u64, StoreError>;
}
