//! Login attempt limits: who may have a credential checked, and when.
//!
//! Every credential check (password, TOTP, recovery code) first calls [`Limiter::begin`],
//! *before* any hashing. `begin` checks the four rules below and, if they all pass,
//! atomically **reserves** the attempt: it is counted as a failure up front. So N parallel
//! attempts on M gateway instances can never verify more than the budget, and a failed check
//! needs no second call. A verified credential hands the [`Ticket`] back to
//! [`Limiter::success`], which clears the streaks it belongs to.
//!
//! # Rules (NIST SP 800-63B §5.2.2, OWASP ASVS 2.2.1)
//!
//! 1. **Per client IP, across all accounts and tenants** (password spraying): a token bucket of
//!    [`IP_BURST`] attempts, one more every [`IP_REFILL`]. IPv6 clients count per /64 (one
//!    subscriber's prefix), IPv4-mapped IPv6 as IPv4, so rotating addresses does not evade.
//! 2. **Per (account, IP) pair**: [`PAIR_FREE_FAILURES`] free consecutive failures, then each
//!    attempt waits `1 s · 2^(n−5)` after the last failure, capped at [`PAIR_BACKOFF_CAP`].
//! 3. **Per account, from IPs not known for it**: [`ACCOUNT_FREE_FAILURES`] free consecutive
//!    failures, then `1 s · 2^(n−10)` after the last one, capped at [`ACCOUNT_BACKOFF_CAP`].
//!    An IP is *known* for an account for [`KNOWN_IP_TTL`] after a success from it
//!    (NIST §5.2.2: "accepting only authentication requests that come from a white list of IP
//!    addresses at which the subscriber has been successfully authenticated before").
//! 4. **Hard cap**: after [`HARD_CAP`] consecutive failures the account is locked for everyone
//!    until an operator calls [`Limiter::unlock`]. Never more than 100 consecutive failures are
//!    verified (NIST §5.2.2 "no more than 100").
//!
//! An account is `(tenant, lowercased username)`. Unknown usernames are limited exactly like
//! real ones: the limiter never learns which usernames exist, so its answers cannot leak it.
//! Throttled attempts reserve nothing: hammering a throttled account neither extends its
//! back-off nor brings it closer to the lock.
//!
//! # Account states
//!
//! ```text
//!            failure            failure                 failure
//!  ┌───────┐  n<10  ┌────────┐ 10≤n<100 ┌─────────────┐  n=100  ┌──────────────┐
//!  │ Clean ├───────▶│Counting├─────────▶│ Backing off ├────────▶│    Locked    │
//!  │  n=0  │        │all free│          │unknown IPs  │         │ for everyone │
//!  └───────┘        └───┬────┘          │wait 2^(n−10)│         └──────┬───────┘
//!    ▲   ▲              │               │s (≤ 1 h)    │                │
//!    │   └── success ───┘               │known IPs    │                │
//!    │   or 30 days                     │do not wait  │                │
//!    │   without a failure              └──────┬──────┘                │
//!    ├─ success, or 30 days without a failure ─┘                       │
//!    └──────────────────────── unlock (operator) ──────────────────────┘
//!
//!  per (account, IP) pair, beside it, for every IP (known or not):
//!  ┌───────┐ 5 failures ┌──────────────────────────────────┐
//!  │ Clean ├───────────▶│ Backing off: 2^(p−5) s, ≤ 15 min │
//!  └───────┘            └─────────────────┬────────────────┘
//!      ▲  success from that IP, unlock,   │
//!      └── or 24 h without a failure ─────┘
//! ```
//!
//! `begin` evaluates, in order: Locked → account back-off (unknown IP only) and pair back-off
//! (the longer wait wins) → the IP bucket → reserve. Reservation increments the account and
//! pair streaks and takes one IP token, all in one atomic step (one mutex in
//! [`MemoryLimiter`], one Lua script in [`RedisLimiter`]).
//!
//! # The trade-off: lock-out vs guessing
//!
//! A hard cap lets anyone who knows a username lock it. This design makes that slow and
//! survivable instead of impossible:
//!
//! - From IPs the user has not signed in from, the account back-off means the 100th failure
//!   comes after about **3.3 days** of sustained attempts (10 free, then waits of 1 s, 2 s,
//!   … 1 h, 1 h, …; see `reaching_the_lock_from_unknown_ips_takes_days`).
//! - Meanwhile the real user is *not* slowed at their usual places (known IPs skip the
//!   account back-off), and any success of theirs resets the streak to zero.
//! - Known IPs still count towards the cap and still get the pair back-off, so an attacker
//!   sharing the user's network gains only the pair budget.
//! - If an attacker does sustain the attack for days without the user signing in, the cap
//!   wins over availability: the account stays locked until an operator unlocks it (the
//!   audit log shows the streak long before).
//!
//! A streak is forgotten after [`FAILURE_MEMORY`] without a failed attempt (a lock never is),
//! so memory stays bounded even though unknown usernames are tracked: an attacker pacing to
//! stay under the cap gets fewer than 100 guesses per 30 days per account.
//!
//! # Time
//!
//! Time is passed in (`now`, since the Unix epoch, from [`crate::clock::Clock`]), never read
//! here, so tests move it. Redis is given the same `now`, never its own `TIME`; gateway
//! instances sharing a Redis must keep their clocks in sync (NTP).

// Test scenarios first: they define `promise_tests!`, which both limiters expand.
#[cfg(test)]
#[macro_use]
mod promises;

mod memory;
mod redis;
pub mod requests;

pub use memory::MemoryLimiter;
pub use redis::RedisLimiter;

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

/// Rule 1: attempts one client IP may make in a burst, across all accounts and tenants.
pub const IP_BURST: NonZeroU32 = match NonZeroU32::new(20) {
    Some(n) => n,
    None => panic!("IP_BURST must not be zero"),
};
/// Rule 1: the IP bucket regains one attempt per this interval (20 per minute).
pub const IP_REFILL: Duration = Duration::from_secs(3);

/// Rule 2: consecutive failures of one (account, IP) pair before its back-off starts.
pub const PAIR_FREE_FAILURES: u32 = 5;
/// Rule 2: the first pair back-off; it doubles with every further failure.
pub const PAIR_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Rule 2: the longest pair back-off.
pub const PAIR_BACKOFF_CAP: Duration = Duration::from_secs(15 * 60);
/// Rule 2: a pair streak is forgotten this long after its last failure (longer than any
/// pair back-off, so forgetting never shortens one).
pub const PAIR_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// Rule 3: consecutive account failures before unknown IPs must back off.
pub const ACCOUNT_FREE_FAILURES: u32 = 10;
/// Rule 3: the first account back-off; it doubles with every further failure.
pub const ACCOUNT_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Rule 3: the longest account back-off.
pub const ACCOUNT_BACKOFF_CAP: Duration = Duration::from_secs(3600);
/// Rule 3: how long a success makes its IP known for the account.
pub const KNOWN_IP_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Rule 4: consecutive failures per account that lock it (NIST SP 800-63B §5.2.2).
pub const HARD_CAP: u32 = 100;
/// Rule 4: the `Retry-After` given for a locked account. Only an operator unlock helps, but a
/// locked account answers like a long back-off so the answer does not single it out.
pub const LOCKED_RETRY_AFTER: Duration = ACCOUNT_BACKOFF_CAP;

/// An account streak (below the cap) is forgotten this long after its last failure.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(30 * 24 * 3600);

/// Most (account, IP) pair streaks kept per account; beyond it the oldest go first (the
/// account streak still counts them).
pub const MAX_PAIRS_PER_ACCOUNT: usize = 128;
/// Most known IPs kept per account; beyond it the ones that expire soonest go first.
pub const MAX_KNOWN_IPS_PER_ACCOUNT: usize = 32;

/// Why an attempt was refused before any credential was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThrottleReason {
    /// Rule 1: the client IP used up its attempt budget.
    IpRate,
    /// Rule 3: the account is backing off for IPs not known for it.
    AccountBackoff,
    /// Rule 2: this (account, IP) pair is backing off.
    PairBackoff,
    /// Rule 4: the account reached the hard cap and waits for an operator.
    Locked,
}

impl ThrottleReason {
    /// A stable name for audit reasons and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ThrottleReason::IpRate => "ip_rate",
            ThrottleReason::AccountBackoff => "account_backoff",
            ThrottleReason::PairBackoff => "pair_backoff",
            ThrottleReason::Locked => "locked",
        }
    }
}

impl fmt::Display for ThrottleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer of [`Limiter::begin`].
#[derive(Debug)]
#[must_use = "a throttled attempt must not reach credential verification"]
pub enum Decision {
    /// Check the credential; the attempt is already counted as a failure.
    Allowed(Ticket),
    /// Answer 429 with `Retry-After` (see [`retry_after_secs`]) without checking anything.
    Throttled {
        /// How long until the rule that refused would allow an attempt.
        retry_after: Duration,
        /// Which rule refused.
        reason: ThrottleReason,
    },
}

/// One reserved attempt, returned by [`Limiter::begin`] and handed back exactly once to
/// [`Limiter::success`] or [`Limiter::failure`].
#[derive(Debug)]
#[must_use = "report the outcome with Limiter::success or Limiter::failure"]
pub struct Ticket {
    account: AccountKey,
    client: IpAddr,
    /// The account's consecutive failures, this attempt included.
    failures: u32,
}

impl Ticket {
    /// Whether this attempt took the last of the account's budget: if the credential turns
    /// out wrong, the account is now locked (the moment to audit "locked", once).
    pub fn locks_account_if_wrong(&self) -> bool {
        self.failures >= HARD_CAP
    }
}

/// Why the limiter could not decide. Callers fail closed: answer 503, check nothing.
#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    /// The shared store (Redis) failed or did not answer in time.
    #[error("login limiter unavailable: {0}")]
    Unavailable(String),
    /// The Redis URL is not usable. The URL itself is never echoed: it can hold a password.
    #[error(
        "login limiter: unusable redis URL (expected redis://[:password@]host[:port][/db]; \
         rediss:// is not supported)"
    )]
    InvalidUrl,
}

/// The per-IP attempt budget (rule 1): a bucket of `burst` attempts, one more every `refill`.
/// Operators behind large NATs may need a bigger one; the defaults are [`IP_BURST`] and
/// [`IP_REFILL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBudget {
    /// Attempts available at once.
    pub burst: NonZeroU32,
    /// Time for one attempt to come back.
    pub refill: Duration,
}

impl Default for IpBudget {
    fn default() -> Self {
        Self {
            burst: IP_BURST,
            refill: IP_REFILL,
        }
    }
}

/// The login limiter: [`MemoryLimiter`] in one process, [`RedisLimiter`] across instances.
#[async_trait]
pub trait Limiter: Send + Sync {
    /// Called before any credential is checked: applies the rules and, if they allow it,
    /// reserves the attempt (counted as a failure until [`success`](Limiter::success)).
    ///
    /// `ip` is the client under the trusted-proxy rules; `account` the username as entered
    /// (trimmed); it is lowercased here and never stored in the clear.
    async fn begin(
        &self,
        ip: IpAddr,
        tenant: &str,
        account: &str,
        now: Duration,
    ) -> Result<Decision, LimiterError>;

    /// The credential checked with `ticket` was right: clears the account's streak and the
    /// pair's streak, and makes the IP known for the account for [`KNOWN_IP_TTL`].
    ///
    /// Call it once the whole authentication succeeded (after the last factor), so a correct
    /// password cannot be used to reset the streak of a second-factor guesser.
    async fn success(&self, ticket: Ticket, now: Duration) -> Result<(), LimiterError>;

    /// The credential checked with `ticket` was wrong. Nothing to do: `begin` already counted
    /// it. Taking the ticket keeps each one used exactly once.
    fn failure(&self, ticket: Ticket) {
        drop(ticket);
    }

    /// Operator unlock: clears the account's streak (and lock) and its pair streaks; known
    /// IPs stay known. Returns whether the account was locked.
    async fn unlock(&self, tenant: &str, account: &str) -> Result<bool, LimiterError>;
}

/// `Retry-After` delay-seconds for a wait (RFC 9110 §10.2.3): whole seconds, rounded up so a
/// client that obeys is not refused again, and at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// An account as the limiter knows it: SHA-256 of tenant, NUL, lowercased username, so
/// neither memory dumps nor Redis keys list account names.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct AccountKey([u8; 32]);

impl AccountKey {
    fn new(tenant: &str, username: &str) -> Self {
        let mut hash = Sha256::new();
        hash.update(tenant.as_bytes());
        // Validated tenant ids never hold NUL, so ("a", "bc") and ("ab", "c") differ.
        hash.update([0u8]);
        hash.update(username.to_lowercase().as_bytes());
        AccountKey(hash.finalize().into())
    }

    fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountKey({}…)", hex::encode(&self.0[..6]))
    }
}

/// The address a client is counted under: IPv4 as is (also when IPv4-mapped), IPv6 by its
/// /64 prefix, since one subscriber gets a whole /64 (RFC 6177) and can rotate within it.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)))),
        },
    }
}

/// The wait after a streak of `failures`: none while within `free`, then
/// `base · 2^(failures − free)`, capped.
fn backoff(failures: u32, free: u32, base: Duration, cap: Duration) -> Option<Duration> {
    let excess = failures.checked_sub(free)?;
    let factor = 1u32.checked_shl(excess).unwrap_or(u32::MAX);
    Some(base.saturating_mul(factor).min(cap))
}

/// A run of consecutive failures and when the last one was reserved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Streak {
    failures: u32,
    last: Duration,
}

impl Streak {
    /// The failure count still in force at `now`, given how long streaks are remembered.
    fn failures_at(self, now: Duration, memory: Duration) -> u32 {
        if now.saturating_sub(self.last) >= memory {
            0
        } else {
            self.failures
        }
    }
}

/// Rules 2–4 for one attempt, before the IP bucket: what refuses it, if anything.
///
/// The Lua script in `begin.lua` is the same function for Redis; both are pinned by the same
/// tests.
fn judge(
    account: Streak,
    pair: Streak,
    known_ip: bool,
    now: Duration,
) -> Option<(ThrottleReason, Duration)> {
    if account.failures >= HARD_CAP {
        return Some((ThrottleReason::Locked, LOCKED_RETRY_AFTER));
    }
    let wait_after = |streak: Streak, failures: u32, free, base, cap| {
        backoff(failures, free, base, cap)
            .map(|wait| (streak.last + wait).saturating_sub(now))
            .filter(|left| !left.is_zero())
    };
    let account_wait = if known_ip {
        None
    } else {
        wait_after(
            account,
            account.failures_at(now, FAILURE_MEMORY),
            ACCOUNT_FREE_FAILURES,
            ACCOUNT_BACKOFF_BASE,
            ACCOUNT_BACKOFF_CAP,
        )
    };
    let pair_wait = wait_after(
        pair,
        pair.failures_at(now, PAIR_MEMORY),
        PAIR_FREE_FAILURES,
        PAIR_BACKOFF_BASE,
        PAIR_BACKOFF_CAP,
    );
    match (account_wait, pair_wait) {
        (Some(a), Some(p)) if p > a => Some((ThrottleReason::PairBackoff, p)),
        (Some(a), _) => Some((ThrottleReason::AccountBackoff, a)),
        (None, Some(p)) => Some((ThrottleReason::PairBackoff, p)),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_free_then_doubles_then_caps() {
        let s = Duration::from_secs;
        assert_eq!(backoff(4, 5, s(1), s(900)), None);
        assert_eq!(backoff(5, 5, s(1), s(900)), Some(s(1)));
        assert_eq!(backoff(6, 5, s(1), s(900)), Some(s(2)));
        assert_eq!(backoff(14, 5, s(1), s(900)), Some(s(512)));
        assert_eq!(backoff(15, 5, s(1), s(900)), Some(s(900)));
        assert_eq!(backoff(u32::MAX, 5, s(1), s(900)), Some(s(900)));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::from_millis(3001)), 4);
    }

    #[test]
    fn account_key_hides_the_name_and_ignores_case() {
        let key = AccountKey::new("acme", "Alice");
        assert_eq!(key, AccountKey::new("acme", "alice"));
        assert_ne!(key, AccountKey::new("globex", "alice"));
        assert_ne!(AccountKey::new("a", "bc"), AccountKey::new("ab", "c"));
        assert_eq!(key.hex().len(), 64);
        assert!(!format!("{key:?}").contains("alice"));
    }

    #[test]
    fn client_key_groups_ipv6_by_slash_64_and_unmaps_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("test address");
        assert_eq!(client_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn the_longer_of_account_and_pair_backoff_wins() {
        let now = Duration::from_secs(1_000);
        let account = Streak {
            failures: 12,
            last: now,
        };
        let pair = Streak {
            failures: 5,
            last: now,
        };
        assert_eq!(
            judge(account, pair, false, now),
            Some((ThrottleReason::AccountBackoff, Duration::from_secs(4)))
        );
        let pair = Streak {
            failures: 8,
            last: now,
        };
        assert_eq!(
            judge(account, pair, false, now),
            Some((ThrottleReason::PairBackoff, Duration::from_secs(8)))
        );
        assert_eq!(
            judge(account, Streak::default(), true, now),
            None,
            "known IPs skip the account back-off"
        );
    }
}
