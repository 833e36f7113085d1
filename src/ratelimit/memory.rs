//! The in-process limiter: all state behind one mutex, `governor` buckets for rule 1.
//!
//! One mutex makes check-and-reserve atomic without further thought; the critical section
//! is a few hash-map operations (no I/O, no hashing beyond the key), far shorter than the
//! argon2 verification it guards. Memory is bounded: idle entries are swept out every
//! [`SWEEP_INTERVAL`], and maps over their caps drop their least valuable entries.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::{
    client_key, judge, AccountKey, Decision, IpBudget, Limiter, LimiterError, Streak,
    ThrottleReason, Ticket, FAILURE_MEMORY, HARD_CAP, KNOWN_IP_TTL, MAX_KNOWN_IPS_PER_ACCOUNT,
    MAX_PAIRS_PER_ACCOUNT, PAIR_MEMORY,
};

/// Most client IPs with a partly used bucket kept at once (about 100 bytes each). Beyond
/// it the least recently allowed go first: they get a fresh burst, rules 2–4 still hold.
pub const MAX_IPS: usize = 100_000;
/// Most accounts with state kept at once (a few hundred bytes each). Beyond it the weakest
/// go first: fewest failures, then oldest, so locks go last.
pub const MAX_ACCOUNTS: usize = 100_000;
/// How often (in passed-in time) idle entries are swept out.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// governor's clock: the `now` of the current call, set under the state lock just before a
/// bucket is used, so rule 1 runs on the same passed-in time as rules 2–4.
#[derive(Debug, Clone, Default)]
struct PassedTime(Arc<AtomicU64>);

impl PassedTime {
    fn set(&self, now: Duration) {
        let nanos = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        // Relaxed is enough: every set and read happens under the state mutex.
        self.0.store(nanos, Ordering::Relaxed);
    }
}

impl governor::clock::Clock for PassedTime {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, PassedTime, NoOpMiddleware<Duration>>;

/// One client's rule-1 bucket.
struct IpEntry {
    bucket: Bucket,
    /// When the bucket last gave a token; a full refill later it is as good as new.
    last_allowed: Duration,
}

/// Everything the limiter knows about one account.
#[derive(Debug, Default)]
struct Account {
    streak: Streak,
    pairs: HashMap<IpAddr, Streak>,
    /// IP → known until.
    known: HashMap<IpAddr, Duration>,
}

impl Account {
    /// Drops what has expired by `now`. A lock never expires.
    fn forget(&mut self, now: Duration) {
        if self.streak.failures < HARD_CAP && self.streak.failures_at(now, FAILURE_MEMORY) == 0 {
            self.streak = Streak::default();
        }
        self.pairs
            .retain(|_, pair| pair.failures_at(now, PAIR_MEMORY) > 0);
        self.known.retain(|_, until| *until > now);
    }

    fn is_empty(&self) -> bool {
        self.streak.failures == 0 && self.pairs.is_empty() && self.known.is_empty()
    }
}

/// Size limits of the maps; [`MAX_IPS`] and [`MAX_ACCOUNTS`] outside tests.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    ips: usize,
    accounts: usize,
}

#[derive(Default)]
struct State {
    /// The latest `now` seen: time here never runs backwards, so a caller's clock step back
    /// cannot refill a bucket or shorten a back-off.
    latest: Duration,
    last_sweep: Duration,
    ips: HashMap<IpAddr, IpEntry>,
    accounts: HashMap<AccountKey, Account>,
}

impl State {
    fn advance(&mut self, now: Duration) -> Duration {
        self.latest = self.latest.max(now);
        self.latest
    }

    fn sweep(&mut self, now: Duration, budget: IpBudget) {
        let refill_all = budget.refill.saturating_mul(budget.burst.get());
        self.ips
            .retain(|_, entry| now < entry.last_allowed + refill_all);
        self.accounts.retain(|_, account| {
            account.forget(now);
            !account.is_empty()
        });
        self.last_sweep = now;
    }

    fn enforce(&mut self, now: Duration, bounds: Bounds, budget: IpBudget) {
        if self.ips.len() <= bounds.ips && self.accounts.len() <= bounds.accounts {
            return;
        }
        self.sweep(now, budget);
        evict(&mut self.ips, bounds.ips, |entry| entry.last_allowed);
        evict(&mut self.accounts, bounds.accounts, |account| {
            (account.streak.failures, account.streak.last)
        });
    }
}

/// Removes the lowest-ranked entries of a map over `cap`, down to 90% of it, so this O(n)
/// pass runs once per tenth of the cap of new entries rather than on every one.
fn evict<K, V, R>(map: &mut HashMap<K, V>, cap: usize, rank: impl Fn(&V) -> R)
where
    K: Copy + Eq + Hash,
    R: Ord,
{
    if map.len() <= cap {
        return;
    }
    let keep = cap - cap / 10;
    let mut ranked: Vec<(R, K)> = map.iter().map(|(k, v)| (rank(v), *k)).collect();
    let excess = ranked.len() - keep;
    ranked.select_nth_unstable_by(excess - 1, |a, b| a.0.cmp(&b.0));
    for (_, key) in &ranked[..excess] {
        map.remove(key);
    }
}

/// Keeps at most `max` entries, dropping the lowest-ranked first.
fn trim<V, R: Ord>(map: &mut HashMap<IpAddr, V>, max: usize, rank: impl Fn(&V) -> R) {
    while map.len() > max {
        let Some(lowest) = map.iter().min_by_key(|(_, v)| rank(v)).map(|(k, _)| *k) else {
            break;
        };
        map.remove(&lowest);
    }
}

/// The login limiter for a single gateway instance.
pub struct MemoryLimiter {
    state: Mutex<State>,
    time: PassedTime,
    quota: Quota,
    budget: IpBudget,
    bounds: Bounds,
}

fn quota(budget: IpBudget) -> Quota {
    // `with_period` refuses only a zero period; should one get here, the slower refill of
    // `burst` per hour fails safe.
    Quota::with_period(budget.refill)
        .unwrap_or(Quota::per_hour(budget.burst))
        .allow_burst(budget.burst)
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLimiter").finish_non_exhaustive()
    }
}

impl MemoryLimiter {
    /// An empty limiter with the rules of [`super`] and the default bounds.
    pub fn new() -> Self {
        Self::with_bounds(Bounds {
            ips: MAX_IPS,
            accounts: MAX_ACCOUNTS,
        })
    }

    /// An empty limiter with a per-IP budget other than the default.
    pub fn with_ip_budget(budget: IpBudget) -> Self {
        let mut limiter = Self::new();
        limiter.quota = quota(budget);
        limiter.budget = budget;
        limiter
    }

    fn with_bounds(bounds: Bounds) -> Self {
        let budget = IpBudget::default();
        Self {
            state: Mutex::new(State::default()),
            time: PassedTime::default(),
            quota: quota(budget),
            budget,
            bounds,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under this lock can panic halfway through a multi-field update (no
        // unwraps, no I/O), so a poisoned lock still guards consistent counters: keep going
        // rather than refuse every login.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn begin_now(&self, client: IpAddr, account: AccountKey, now: Duration) -> Decision {
        let mut guard = self.lock();
        let st = &mut *guard;
        let now = st.advance(now);
        if now >= st.last_sweep + SWEEP_INTERVAL {
            st.sweep(now, self.budget);
        }

        let (streak, pair, known) = match st.accounts.get(&account) {
            Some(a) => (
                a.streak,
                a.pairs.get(&client).copied().unwrap_or_default(),
                a.known.get(&client).is_some_and(|until| *until > now),
            ),
            None => (Streak::default(), Streak::default(), false),
        };
        if let Some((reason, retry_after)) = judge(streak, pair, known, now) {
            return Decision::Throttled {
                retry_after,
                reason,
            };
        }

        self.time.set(now);
        let entry = st.ips.entry(client).or_insert_with(|| IpEntry {
            bucket: RateLimiter::direct_with_clock(self.quota, self.time.clone()),
            last_allowed: now,
        });
        if let Err(not_until) = entry.bucket.check() {
            return Decision::Throttled {
                retry_after: not_until.wait_time_from(now),
                reason: ThrottleReason::IpRate,
            };
        }
        entry.last_allowed = now;

        // Reserve: the attempt counts as a failure until `success` says otherwise.
        let acct = st.accounts.entry(account).or_default();
        let failures = acct.streak.failures_at(now, FAILURE_MEMORY) + 1;
        acct.streak = Streak {
            failures,
            last: now,
        };
        let pair = acct.pairs.entry(client).or_default();
        *pair = Streak {
            failures: pair.failures_at(now, PAIR_MEMORY) + 1,
            last: now,
        };
        if acct.pairs.len() > MAX_PAIRS_PER_ACCOUNT {
            acct.forget(now);
            trim(&mut acct.pairs, MAX_PAIRS_PER_ACCOUNT, |pair| pair.last);
        }
        st.enforce(now, self.bounds, self.budget);
        Decision::Allowed(Ticket {
            account,
            client,
            failures,
        })
    }

    fn success_now(&self, ticket: Ticket, now: Duration) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let now = st.advance(now);
        let acct = st.accounts.entry(ticket.account).or_default();
        acct.streak = Streak::default();
        acct.pairs.remove(&ticket.client);
        acct.known
            .insert(ticket.client, now.saturating_add(KNOWN_IP_TTL));
        if acct.known.len() > MAX_KNOWN_IPS_PER_ACCOUNT {
            acct.forget(now);
            trim(&mut acct.known, MAX_KNOWN_IPS_PER_ACCOUNT, |until| *until);
        }
        st.enforce(now, self.bounds, self.budget);
    }

    fn unlock_now(&self, account: AccountKey) -> bool {
        let mut st = self.lock();
        match st.accounts.get_mut(&account) {
            Some(acct) => {
                let was_locked = acct.streak.failures >= HARD_CAP;
                acct.streak = Streak::default();
                acct.pairs.clear();
                was_locked
            }
            None => false,
        }
    }
}

#[async_trait]
impl Limiter for MemoryLimiter {
    async fn begin(
        &self,
        ip: IpAddr,
        tenant: &str,
        account: &str,
        now: Duration,
    ) -> Result<Decision, LimiterError> {
        Ok(self.begin_now(client_key(ip), AccountKey::new(tenant, account), now))
    }

    async fn success(&self, ticket: Ticket, now: Duration) -> Result<(), LimiterError> {
        self.success_now(ticket, now);
        Ok(())
    }

    async fn unlock(&self, tenant: &str, account: &str) -> Result<bool, LimiterError> {
        Ok(self.unlock_now(AccountKey::new(tenant, account)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::ratelimit::promises::{self, clock, fail, ip, succeed, throttled};

    async fn setup() -> (MemoryLimiter, ()) {
        (MemoryLimiter::new(), ())
    }

    promise_tests!(setup);

    impl MemoryLimiter {
        fn sizes(&self) -> (usize, usize) {
            let st = self.lock();
            (st.ips.len(), st.accounts.len())
        }
    }

    fn shared() -> Vec<Arc<dyn Limiter>> {
        vec![Arc::new(MemoryLimiter::new())]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn parallel_attempts_from_many_ips_get_exactly_the_account_budget() {
        promises::parallel_attempts_from_many_ips_get_exactly_the_account_budget(&shared()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn parallel_attempts_from_one_ip_get_exactly_the_pair_budget() {
        promises::parallel_attempts_from_one_ip_get_exactly_the_pair_budget(&shared()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn parallel_attempts_never_pass_the_hard_cap() {
        promises::parallel_attempts_never_pass_the_hard_cap(&shared()).await;
    }

    #[tokio::test]
    async fn idle_entries_are_forgotten() {
        let l = MemoryLimiter::new();
        let c = clock();
        for n in 0..5_000 {
            fail(&l, ip(n), &format!("user{n}"), &c).await;
        }
        succeed(&l, ip(9_000), "known", &c).await;
        assert_eq!(l.sizes(), (5_001, 5_001));

        // A full bucket is as good as none.
        c.advance(super::super::IP_REFILL * super::super::IP_BURST.get() + Duration::from_secs(1));
        fail(&l, ip(10_000), "late", &c).await;
        assert_eq!(l.sizes(), (1, 5_002));

        // Streaks and known IPs are forgotten after 30 days.
        c.advance(FAILURE_MEMORY);
        fail(&l, ip(10_001), "later", &c).await;
        assert_eq!(l.sizes(), (1, 1));
    }

    #[tokio::test]
    async fn maps_never_exceed_their_caps() {
        let l = MemoryLimiter::with_bounds(Bounds {
            ips: 1_000,
            accounts: 500,
        });
        let c = clock();
        for n in 0..5_000 {
            fail(&l, ip(n), &format!("user{n}"), &c).await;
            let (ips, accounts) = l.sizes();
            assert!(
                ips <= 1_000 && accounts <= 500,
                "{ips} IPs, {accounts} accounts"
            );
        }
        // Per-account maps are capped too (one second later, so the roamer outranks the rest).
        c.advance(Duration::from_secs(1));
        for n in 0..200 {
            succeed(&l, ip(20_000 + n), "roamer", &c).await;
            fail(&l, ip(30_000 + n), "roamer", &c).await;
        }
        let st = l.lock();
        let roamer = st
            .accounts
            .get(&AccountKey::new(promises::TENANT, "roamer"))
            .expect("roamer tracked");
        assert_eq!(roamer.known.len(), MAX_KNOWN_IPS_PER_ACCOUNT);
        assert!(roamer.pairs.len() <= MAX_PAIRS_PER_ACCOUNT);
    }

    #[tokio::test]
    async fn junk_usernames_cannot_evict_a_lock() {
        let l = MemoryLimiter::with_bounds(Bounds {
            ips: 1_000,
            accounts: 100,
        });
        let c = clock();
        promises::lock_account(&l, "alice", &c).await;
        for n in 0..2_000 {
            fail(&l, ip(1_000 + n), &format!("junk{n}"), &c).await;
        }
        assert_eq!(
            throttled(&l, ip(5_000), "alice", &c).await.0,
            ThrottleReason::Locked
        );
    }

    #[tokio::test]
    async fn a_clock_stepping_back_does_not_refill_or_shorten_anything() {
        let l = MemoryLimiter::new();
        let c = clock();
        for _ in 0..crate::ratelimit::PAIR_FREE_FAILURES {
            fail(&l, ip(1), "alice", &c).await;
        }
        let before = c.now();
        c.set(before - Duration::from_secs(3600));
        assert_eq!(
            throttled(&l, ip(1), "alice", &c).await,
            (ThrottleReason::PairBackoff, Duration::from_secs(1))
        );
    }
}
