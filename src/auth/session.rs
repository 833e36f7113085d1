//! Sessions: issuing, finding and ending them.
//!
//! A session token is 256 random bits, sent only in the `__Host-` cookie and stored only as its
//! SHA-256 (OWASP ASVS 3.2.2, 3.2.3): a copy of the store lets nobody sign in. Every
//! authentication step issues a brand-new token and ends the previous one (ASVS 3.2.1), so a
//! token planted before login (session fixation) is worth nothing after it.
//!
//! Looking a session up on every proxied request would put the store on the hot path, so a
//! validated session is cached for at most [`CACHE_TTL`]. Ending a session through this
//! process removes it from the cache at once; an operator revoking sessions from the CLI (a
//! different process) takes effect within [`CACHE_TTL`].
//!
//! When a busy session's cached validation expires, the requests that arrive while it is being
//! checked again wait for that one store lookup ([`Sessions::miss`]) instead of each making
//! their own: without this, every second each busy session sent a burst of identical lookups
//! to the store, each on a blocking thread of its own.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine;
use http::HeaderValue;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use crate::config::Tenant;
use crate::store::{Session, Stage, Store, StoreError};

/// How long a validated session is trusted without asking the store again.
pub const CACHE_TTL: u64 = 1;
/// Last-use times are written at most this often (seconds), so idle tracking costs one write
/// a minute per active session rather than one per request; for short idle timeouts, at most
/// a tenth of the timeout, so the stored time never lags enough to end a busy session early.
pub const TOUCH_EVERY: u64 = 60;

/// How stale a session's stored last-use time may get before it is written again.
fn touch_interval(idle_timeout: u64) -> u64 {
    TOUCH_EVERY.min(idle_timeout / 10).max(1)
}
/// Cache size bound; past it the cache is cleared rather than grown.
const CACHE_MAX: usize = 100_000;

/// A fresh random token (base64url, 256 bits).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of a token, the only form in which it is stored.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether a cookie value could be one of our tokens at all (cheap rejection of junk before
/// any store lookup).
fn well_formed(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A signed-in caller, as the access decision and the upstream identity need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The session (stage and tenant already checked).
    pub session: Session,
    /// The user's current roles.
    pub roles: Vec<String>,
    /// `X-Portcullis-User` and `X-Portcullis-Roles` as they go upstream, made once per
    /// validation instead of once per request. `None` when the name or a role cannot be a
    /// header value; such an identity is never forwarded.
    pub upstream_headers: Option<(HeaderValue, HeaderValue)>,
}

impl Identity {
    /// The identity of `session`'s user holding `roles`.
    pub fn new(session: Session, roles: Vec<String>) -> Self {
        let user = HeaderValue::from_str(&session.username).ok();
        let listed = HeaderValue::from_str(&roles.join(",")).ok();
        Self {
            upstream_headers: user.zip(listed),
            session,
            roles,
        }
    }
}

/// What a presented session cookie turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No cookie, a malformed one, or one no store knows.
    None,
    /// A known session that is no longer valid (timed out, other tenant, user disabled).
    Ended(Box<Session>),
    /// A valid session of this tenant at some stage of the login.
    Live(Arc<Identity>),
}

#[derive(Clone)]
struct Cached {
    identity: Arc<Identity>,
    checked_at: u64,
}

type FastMap<V> = HashMap<[u8; 32], V, foldhash::fast::RandomState>;

/// Issues, finds and ends sessions.
pub struct Sessions {
    store: Arc<dyn Store>,
    /// Keyed by SHA-256 of the token: no client can aim keys at a bucket, so a fast seeded
    /// hash is enough.
    cache: Mutex<FastMap<Cached>>,
    /// Store lookups under way, by token hash, with the requests waiting for them.
    in_flight: Mutex<FastMap<Arc<Notify>>>,
}

/// What a request does when [`Sessions::cached`] has no answer for its token.
#[derive(Debug)]
pub enum Miss {
    /// The token cannot be one of ours: no session, without asking the store.
    Malformed,
    /// Ask the store ([`Sessions::lookup`]); dropping the guard lets the waiting requests go.
    Lead(InFlight),
    /// Another request is asking the store for this token: wait, then try the cache again.
    Wait(OwnedNotified),
}

/// A store lookup under way. Dropped when it ends (or is abandoned), which wakes the requests
/// waiting for it; they find its result in the cache or, failing that, look again themselves.
#[derive(Debug)]
pub struct InFlight {
    sessions: Arc<Sessions>,
    hash: [u8; 32],
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let waiting = lock(&self.sessions.in_flight).remove(&self.hash);
        if let Some(waiting) = waiting {
            waiting.notify_waiters();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys are token hashes: only counts are shown.
        f.debug_struct("Sessions")
            .field("cached", &lock(&self.cache).len())
            .field("in_flight", &lock(&self.in_flight).len())
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            cache: Mutex::new(HashMap::default()),
            in_flight: Mutex::new(HashMap::default()),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, FastMap<Cached>> {
        lock(&self.cache)
    }

    /// After a cache miss for `token`: lead the store lookup for it, or wait for the one
    /// already under way.
    pub fn miss(self: &Arc<Self>, token: &str) -> Miss {
        if !well_formed(token) {
            return Miss::Malformed;
        }
        let hash = token_hash(token);
        let mut in_flight = lock(&self.in_flight);
        if let Some(waiting) = in_flight.get(&hash) {
            // Registered before the lookup's guard can remove the entry and notify, so the
            // wake-up cannot be missed.
            return Miss::Wait(Arc::clone(waiting).notified_owned());
        }
        in_flight.insert(hash, Arc::new(Notify::new()));
        Miss::Lead(InFlight {
            sessions: Arc::clone(self),
            hash,
        })
    }

    /// Start a session for `username` of `tenant` at `stage`; returns the cookie token.
    /// Blocking (store write): call off the async workers.
    pub fn issue(
        &self,
        tenant: &Tenant,
        username: &str,
        stage: Stage,
        amr: Vec<String>,
        return_to: &str,
        now: u64,
    ) -> Result<(String, Session), StoreError> {
        let token = new_token();
        let session = Session {
            token_hash: token_hash(&token),
            id: new_token(),
            tenant: tenant.id.clone(),
            username: username.to_string(),
            stage,
            amr,
            csrf: new_token(),
            return_to: return_to.to_string(),
            created_at: now,
            last_seen: now,
            expires_at: now + tenant.session.absolute_timeout.as_secs(),
            idle_timeout: tenant.session.idle_timeout.as_secs(),
            pending_totp: None,
        };
        self.store.create_session(&session)?;
        Ok((token, session))
    }

    /// The session behind a cookie token, checked against `tenant` and the clock.
    /// Blocking on a cache miss: call off the async workers (see [`Self::cached`]).
    pub fn lookup(&self, tenant: &Tenant, token: &str, now: u64) -> Result<Lookup, StoreError> {
        if !well_formed(token) {
            return Ok(Lookup::None);
        }
        let hash = token_hash(token);
        let Some(session) = self.store.session(&hash)? else {
            self.cache().remove(&hash);
            return Ok(Lookup::None);
        };
        // A session of another tenant is no session here (DESIGN: tenants never cross).
        if session.tenant != tenant.id {
            return Ok(Lookup::None);
        }
        let user = self.store.user(&session.tenant, &session.username)?;
        let user = match user {
            Some(u) if !u.disabled && session.is_live(now) => u,
            _ => {
                self.end(&session)?;
                return Ok(Lookup::Ended(Box::new(session)));
            }
        };
        let mut session = session;
        if now.saturating_sub(session.last_seen) >= touch_interval(session.idle_timeout) {
            self.store.touch_session(&hash, now)?;
            session.last_seen = now;
        }
        let identity = Arc::new(Identity::new(session, user.roles));
        if identity.session.stage == Stage::Active {
            let mut cache = self.cache();
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(
                hash,
                Cached {
                    identity: Arc::clone(&identity),
                    checked_at: now,
                },
            );
        }
        Ok(Lookup::Live(identity))
    }

    /// A recently validated active session, without touching the store. `None` means "ask
    /// [`Self::lookup`]", not "no session".
    pub fn cached(&self, tenant: &Tenant, token: &str, now: u64) -> Option<Arc<Identity>> {
        if !well_formed(token) {
            return None;
        }
        let hash = token_hash(token);
        let cache = self.cache();
        let hit = cache.get(&hash)?;
        let fresh = now.saturating_sub(hit.checked_at) < CACHE_TTL
            && hit.identity.session.tenant == tenant.id
            && hit.identity.session.is_live(now);
        fresh.then(|| Arc::clone(&hit.identity))
    }

    /// End one session. Blocking.
    pub fn end(&self, session: &Session) -> Result<bool, StoreError> {
        self.cache().remove(&session.token_hash);
        self.store.delete_session(&session.token_hash)
    }

    /// End every session of a user except `keep`. Blocking.
    pub fn end_all(
        &self,
        tenant: &str,
        username: &str,
        keep: Option<&[u8; 32]>,
    ) -> Result<u64, StoreError> {
        self.cache().retain(|h, c| {
            Some(h) == keep
                || c.identity.session.tenant != tenant
                || c.identity.session.username != username
        });
        self.store.delete_user_sessions(tenant, username, keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AccountStore, SqliteStore, User};

    fn tenant(id: &str) -> Tenant {
        Tenant {
            id: id.into(),
            display_name: id.into(),
            hosts: vec![],
            routes: vec![],
            session: Default::default(),
            password: Default::default(),
            mfa: Default::default(),
            audit_retention: std::time::Duration::from_secs(90 * 86_400),
            login: Default::default(),
            saml: None,
            source: "t.toml".into(),
        }
    }

    fn sessions_with_user(tenant: &str) -> Sessions {
        let store = SqliteStore::open_in_memory().expect("store");
        store
            .create_user(&User {
                tenant: tenant.into(),
                username: "alice".into(),
                password_hash: None,
                roles: vec!["admin".into()],
                disabled: false,
                created_at: 0,
                password_changed_at: 0,
                totp_secret: None,
                idp: None,
            })
            .expect("user");
        Sessions::new(Arc::new(store))
    }

    #[tokio::test]
    async fn one_store_lookup_at_a_time_per_token() {
        use std::time::Duration;
        let sessions = Arc::new(sessions_with_user("acme"));
        let token = new_token();
        let Miss::Lead(lead) = sessions.miss(&token) else {
            panic!("the first miss asks the store");
        };
        let Miss::Wait(waiting) = sessions.miss(&token) else {
            panic!("a second miss for the same token waits for it");
        };
        let Miss::Wait(also_waiting) = sessions.miss(&token) else {
            panic!("so does a third");
        };
        assert!(
            matches!(sessions.miss(&new_token()), Miss::Lead(_)),
            "another token has its own lookup"
        );
        assert!(matches!(sessions.miss("not-a-token"), Miss::Malformed));

        let mut waiting = Box::pin(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut waiting)
                .await
                .is_err(),
            "nobody is let go while the lookup runs"
        );
        drop(lead);
        for w in [waiting, Box::pin(also_waiting)] {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("every waiter is let go when the lookup ends");
        }
        assert!(
            matches!(sessions.miss(&token), Miss::Lead(_)),
            "once it has ended, the next miss asks the store again"
        );
    }

    #[test]
    fn tokens_are_256_bit_and_unique() {
        let a = new_token();
        assert_eq!(a.len(), 43);
        assert!(well_formed(&a));
        assert_ne!(a, new_token());
    }

    #[test]
    fn only_the_hash_of_the_token_is_stored() {
        let s = sessions_with_user("acme");
        let (token, session) = s
            .issue(
                &tenant("acme"),
                "alice",
                Stage::Active,
                vec!["pwd".into()],
                "/",
                100,
            )
            .expect("issued");
        assert_eq!(session.token_hash, token_hash(&token));
        assert_ne!(session.id, token);
        assert!(matches!(
            s.lookup(&tenant("acme"), &token, 101),
            Ok(Lookup::Live(_))
        ));
    }

    #[test]
    fn another_tenants_session_is_no_session() {
        let s = sessions_with_user("acme");
        let (token, _) = s
            .issue(&tenant("acme"), "alice", Stage::Active, vec![], "/", 100)
            .expect("issued");
        assert_eq!(
            s.lookup(&tenant("globex"), &token, 101).expect("lookup"),
            Lookup::None
        );
        assert!(s.lookup(&tenant("acme"), &token, 101).is_ok());
        assert!(s.cached(&tenant("globex"), &token, 101).is_none());
    }

    #[test]
    fn idle_and_absolute_timeouts_end_sessions() {
        let s = sessions_with_user("acme");
        let t = tenant("acme");
        let (token, _) = s
            .issue(&t, "alice", Stage::Active, vec![], "/", 0)
            .expect("issued");
        let idle = t.session.idle_timeout.as_secs();
        assert!(matches!(
            s.lookup(&t, &token, idle + 1),
            Ok(Lookup::Ended(_))
        ));
        assert_eq!(
            s.lookup(&t, &token, idle + 2).expect("lookup"),
            Lookup::None,
            "ended for good"
        );

        let (token, _) = s
            .issue(&t, "alice", Stage::Active, vec![], "/", 0)
            .expect("issued");
        let step = idle / 2;
        let mut now = 0;
        while now + step < t.session.absolute_timeout.as_secs() {
            now += step;
            assert!(
                matches!(s.lookup(&t, &token, now), Ok(Lookup::Live(_))),
                "busy at {now}"
            );
        }
        let end = t.session.absolute_timeout.as_secs();
        assert!(matches!(s.lookup(&t, &token, end), Ok(Lookup::Ended(_))));
    }

    #[test]
    fn a_busy_session_with_a_short_idle_timeout_stays_alive() {
        let s = sessions_with_user("acme");
        let mut t = tenant("acme");
        t.session.idle_timeout = std::time::Duration::from_secs(60);
        let (token, _) = s
            .issue(&t, "alice", Stage::Active, vec![], "/", 0)
            .expect("issued");
        for now in (5..=300).step_by(5) {
            assert!(
                matches!(s.lookup(&t, &token, now), Ok(Lookup::Live(_))),
                "used every 5 s, alive at {now}"
            );
        }
        assert_eq!(touch_interval(60), 6);
        assert_eq!(touch_interval(1800), 60);
    }

    #[test]
    fn ending_all_sessions_clears_the_cache_too() {
        let s = sessions_with_user("acme");
        let t = tenant("acme");
        let (token, _) = s
            .issue(&t, "alice", Stage::Active, vec![], "/", 10)
            .expect("issued");
        assert!(matches!(s.lookup(&t, &token, 10), Ok(Lookup::Live(_))));
        assert!(s.cached(&t, &token, 10).is_some());
        assert_eq!(s.end_all("acme", "alice", None).expect("ended"), 1);
        assert!(s.cached(&t, &token, 10).is_none());
        assert_eq!(s.lookup(&t, &token, 10).expect("lookup"), Lookup::None);
    }

    #[test]
    fn junk_cookies_never_reach_the_store() {
        let s = sessions_with_user("acme");
        for junk in ["", "x", "../../etc", &"a".repeat(44), "a b"] {
            assert_eq!(
                s.lookup(&tenant("acme"), junk, 0).expect("lookup"),
                Lookup::None
            );
        }
    }
}
