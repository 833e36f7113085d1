//! One scenario per promise of the limiter, run against every implementation: `memory.rs`
//! and `redis.rs` expand `promise_tests!` with their own setup, and call the `parallel_*`
//! scenarios with one or several instances. Time moves with a [`ManualClock`]; nothing
//! sleeps.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;

use super::*;
use crate::clock::{Clock, ManualClock};

/// The same test per promise for every limiter: `memory.rs` and `redis.rs` each expand
/// `promise_tests!` with their own setup (an async fn returning the limiter and whatever must
/// live as long as it, such as a redis-server).
macro_rules! promise_tests {
    ($setup:path) => {
        promise_tests!(@each $setup;
            ip_budget_empties_after_the_burst_and_refills,
            pair_backoff_starts_after_five_failures_and_doubles_up_to_fifteen_minutes,
            account_backoff_applies_to_unknown_ips_after_ten_failures,
            account_backoff_skips_known_ips,
            account_backoff_doubles_up_to_one_hour,
            hundred_consecutive_failures_lock_the_account_until_unlocked,
            success_resets_account_and_pair_and_makes_the_ip_known,
            known_ip_status_expires_after_thirty_days,
            unknown_usernames_are_throttled_exactly_like_real_ones,
            usernames_are_case_insensitive_and_tenants_separate,
            throttled_attempts_are_not_counted,
            a_streak_is_forgotten_after_thirty_days_without_failures,
            reaching_the_lock_from_unknown_ips_takes_days,
            ipv6_clients_count_per_slash_64_and_mapped_ipv4_as_ipv4,
        );
    };
    (@each $setup:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (limiter, _guard) = $setup().await;
                crate::ratelimit::promises::$name(&limiter).await;
            }
        )*
    };
}

/// The tenant every scenario uses unless it tests tenants.
pub(crate) const TENANT: &str = "acme";

/// A clock at a realistic time (November 2023), so nothing is near the epoch.
pub(crate) fn clock() -> ManualClock {
    ManualClock::at(Duration::from_secs(1_700_000_000))
}

/// A distinct IPv4 client per `n`.
pub(crate) fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| panic!("test address {s}"))
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub(crate) async fn attempt(
    l: &dyn Limiter,
    client: IpAddr,
    user: &str,
    clock: &ManualClock,
) -> Decision {
    l.begin(client, TENANT, user, clock.now())
        .await
        .expect("limiter available")
}

pub(crate) async fn allowed(
    l: &dyn Limiter,
    client: IpAddr,
    user: &str,
    clock: &ManualClock,
) -> Ticket {
    match attempt(l, client, user, clock).await {
        Decision::Allowed(ticket) => ticket,
        other => panic!("{user} from {client}: expected Allowed, got {other:?}"),
    }
}

/// An attempt that is allowed and then turns out wrong.
pub(crate) async fn fail(l: &dyn Limiter, client: IpAddr, user: &str, clock: &ManualClock) {
    let ticket = allowed(l, client, user, clock).await;
    l.failure(ticket);
}

/// An attempt that is allowed and then turns out right.
pub(crate) async fn succeed(l: &dyn Limiter, client: IpAddr, user: &str, clock: &ManualClock) {
    let ticket = allowed(l, client, user, clock).await;
    l.success(ticket, clock.now())
        .await
        .expect("limiter available");
}

pub(crate) async fn throttled(
    l: &dyn Limiter,
    client: IpAddr,
    user: &str,
    clock: &ManualClock,
) -> (ThrottleReason, Duration) {
    match attempt(l, client, user, clock).await {
        Decision::Throttled {
            reason,
            retry_after,
        } => (reason, retry_after),
        Decision::Allowed(ticket) => {
            panic!("{user} from {client}: expected Throttled, got {ticket:?}")
        }
    }
}

pub(crate) async fn ip_budget_empties_after_the_burst_and_refills(l: &dyn Limiter) {
    let c = clock();
    let client = ip(1);
    for n in 0..IP_BURST.get() {
        fail(l, client, &format!("user{n}"), &c).await;
    }
    assert_eq!(
        throttled(l, client, "someone-else", &c).await,
        (ThrottleReason::IpRate, IP_REFILL)
    );
    c.advance(secs(1));
    assert_eq!(
        throttled(l, client, "someone-else", &c).await,
        (ThrottleReason::IpRate, secs(2))
    );
    c.advance(secs(2));
    fail(l, client, "refilled", &c).await;
    assert_eq!(
        throttled(l, client, "someone-else", &c).await,
        (ThrottleReason::IpRate, IP_REFILL)
    );
    // Other clients have their own buckets.
    fail(l, ip(2), "user0", &c).await;
    // A bucket left alone long enough is full again.
    c.advance(IP_REFILL * IP_BURST.get());
    for n in 0..IP_BURST.get() {
        fail(l, client, &format!("later{n}"), &c).await;
    }
    assert_eq!(
        throttled(l, client, "someone-else", &c).await.0,
        ThrottleReason::IpRate
    );
}

pub(crate) async fn pair_backoff_starts_after_five_failures_and_doubles_up_to_fifteen_minutes(
    l: &dyn Limiter,
) {
    let c = clock();
    let client = ip(1);
    for _ in 0..PAIR_FREE_FAILURES {
        fail(l, client, "alice", &c).await;
    }
    let mut wait = PAIR_BACKOFF_BASE;
    for _ in 0..13 {
        assert_eq!(
            throttled(l, client, "alice", &c).await,
            (ThrottleReason::PairBackoff, wait)
        );
        c.advance(wait - Duration::from_millis(1));
        assert_eq!(
            throttled(l, client, "alice", &c).await,
            (ThrottleReason::PairBackoff, Duration::from_millis(1))
        );
        c.advance(Duration::from_millis(1));
        fail(l, client, "alice", &c).await;
        wait = (wait * 2).min(PAIR_BACKOFF_CAP);
    }
    assert_eq!(wait, PAIR_BACKOFF_CAP, "the loop reached the cap");
    assert_eq!(
        throttled(l, client, "alice", &c).await,
        (ThrottleReason::PairBackoff, secs(15 * 60))
    );
}

pub(crate) async fn account_backoff_applies_to_unknown_ips_after_ten_failures(l: &dyn Limiter) {
    let c = clock();
    for n in 0..ACCOUNT_FREE_FAILURES {
        fail(l, ip(n), "alice", &c).await;
    }
    assert_eq!(
        throttled(l, ip(100), "alice", &c).await,
        (ThrottleReason::AccountBackoff, secs(1))
    );
    assert_eq!(
        throttled(l, ip(0), "alice", &c).await,
        (ThrottleReason::AccountBackoff, secs(1)),
        "an IP that only failed is not known"
    );
    c.advance(secs(1));
    fail(l, ip(101), "alice", &c).await;
    assert_eq!(
        throttled(l, ip(102), "alice", &c).await,
        (ThrottleReason::AccountBackoff, secs(2))
    );
    c.advance(secs(2));
    fail(l, ip(103), "alice", &c).await;
    assert_eq!(
        throttled(l, ip(104), "alice", &c).await,
        (ThrottleReason::AccountBackoff, secs(4))
    );
    // Other accounts are untouched by alice's streak.
    fail(l, ip(104), "bob", &c).await;
}

pub(crate) async fn account_backoff_skips_known_ips(l: &dyn Limiter) {
    let c = clock();
    let home = ip(0);
    succeed(l, home, "alice", &c).await;
    for n in 1..=ACCOUNT_FREE_FAILURES {
        fail(l, ip(n), "alice", &c).await;
    }
    assert_eq!(
        throttled(l, ip(50), "alice", &c).await,
        (ThrottleReason::AccountBackoff, secs(1))
    );
    // The real user at their usual place is not slowed by the attack elsewhere...
    fail(l, home, "alice", &c).await;
    // ...but the failure still counts towards the account streak...
    assert_eq!(
        throttled(l, ip(50), "alice", &c).await,
        (ThrottleReason::AccountBackoff, secs(2))
    );
    // ...and a known IP still gets the pair back-off.
    for _ in 1..PAIR_FREE_FAILURES {
        fail(l, home, "alice", &c).await;
    }
    assert_eq!(
        throttled(l, home, "alice", &c).await,
        (ThrottleReason::PairBackoff, secs(1))
    );
}

pub(crate) async fn account_backoff_doubles_up_to_one_hour(l: &dyn Limiter) {
    let c = clock();
    // A fresh IP per attempt, so only the account rule applies.
    let mut next = 0;
    let mut fresh = || {
        next += 1;
        ip(next)
    };
    for _ in 0..ACCOUNT_FREE_FAILURES {
        fail(l, fresh(), "alice", &c).await;
    }
    let mut wait = ACCOUNT_BACKOFF_BASE;
    for _ in 0..14 {
        assert_eq!(
            throttled(l, fresh(), "alice", &c).await,
            (ThrottleReason::AccountBackoff, wait)
        );
        c.advance(wait);
        fail(l, fresh(), "alice", &c).await;
        wait = (wait * 2).min(ACCOUNT_BACKOFF_CAP);
    }
    assert_eq!(wait, ACCOUNT_BACKOFF_CAP, "the loop reached the cap");
    assert_eq!(
        throttled(l, fresh(), "alice", &c).await,
        (ThrottleReason::AccountBackoff, secs(3600))
    );
}

/// Locks `user` the fastest way: known IPs skip the account back-off, so the hard cap is all
/// that stops them.
pub(crate) async fn lock_account(l: &dyn Limiter, user: &str, c: &ManualClock) -> Vec<IpAddr> {
    let clients: Vec<IpAddr> = (0..HARD_CAP / PAIR_FREE_FAILURES).map(ip).collect();
    make_known(l, &clients, user, c).await;
    let mut locking = 0;
    for &client in &clients {
        for _ in 0..PAIR_FREE_FAILURES {
            let ticket = allowed(l, client, user, c).await;
            locking += usize::from(ticket.locks_account_if_wrong());
            l.failure(ticket);
        }
    }
    assert_eq!(locking, 1, "exactly the hundredth attempt says it locks");
    clients
}

/// Makes `clients` known for `user` (a success from each), which resets its streaks.
async fn make_known(l: &dyn Limiter, clients: &[IpAddr], user: &str, c: &ManualClock) {
    for &client in clients {
        succeed(l, client, user, c).await;
    }
}

pub(crate) async fn hundred_consecutive_failures_lock_the_account_until_unlocked(l: &dyn Limiter) {
    let c = clock();
    let clients = lock_account(l, "alice", &c).await;
    let locked = (ThrottleReason::Locked, LOCKED_RETRY_AFTER);
    assert_eq!(throttled(l, clients[0], "alice", &c).await, locked);
    assert_eq!(
        throttled(l, ip(999), "alice", &c).await,
        locked,
        "locked for everyone"
    );
    // Time alone never unlocks.
    c.advance(FAILURE_MEMORY * 2);
    assert_eq!(throttled(l, clients[0], "alice", &c).await, locked);

    assert!(l.unlock(TENANT, "ALICE").await.expect("unlock"));
    fail(l, clients[0], "alice", &c).await;
    fail(l, ip(999), "alice", &c).await;
    assert!(
        !l.unlock(TENANT, "alice").await.expect("unlock"),
        "reports an account that was not locked"
    );
}

pub(crate) async fn success_resets_account_and_pair_and_makes_the_ip_known(l: &dyn Limiter) {
    let c = clock();
    let client = ip(1);
    for _ in 0..PAIR_FREE_FAILURES {
        fail(l, client, "alice", &c).await;
    }
    for n in 10..15 {
        fail(l, ip(n), "alice", &c).await;
    }
    assert_eq!(
        throttled(l, ip(50), "alice", &c).await,
        (ThrottleReason::AccountBackoff, secs(1))
    );
    c.advance(secs(1));
    succeed(l, client, "alice", &c).await;

    // The account streak is clear: ten free failures again from unknown IPs.
    for n in 20..30 {
        fail(l, ip(n), "alice", &c).await;
    }
    assert_eq!(
        throttled(l, ip(50), "alice", &c).await,
        (ThrottleReason::AccountBackoff, secs(1))
    );
    // The IP is known now (not slowed by that), and its pair streak starts from zero.
    for _ in 0..PAIR_FREE_FAILURES {
        fail(l, client, "alice", &c).await;
    }
    assert_eq!(
        throttled(l, client, "alice", &c).await,
        (ThrottleReason::PairBackoff, secs(1))
    );
}

pub(crate) async fn known_ip_status_expires_after_thirty_days(l: &dyn Limiter) {
    let c = clock();
    let home = ip(1);
    succeed(l, home, "alice", &c).await;
    c.advance(KNOWN_IP_TTL - secs(1));
    for n in 10..20 {
        fail(l, ip(n), "alice", &c).await;
    }
    fail(l, home, "alice", &c).await;
    c.advance(secs(1));
    // Eleven failures, the last a second ago: unknown IPs wait 2 s, so 1 s is left.
    assert_eq!(
        throttled(l, home, "alice", &c).await,
        (ThrottleReason::AccountBackoff, secs(1))
    );
}

/// The decisions for one scripted sequence of attempts on `user`, from `c.now()` on.
async fn script(l: &dyn Limiter, user: &str, first_ip: u32, c: &ManualClock) -> Vec<String> {
    let mut log = Vec::new();
    for step in 0..40 {
        // Mostly one IP (pair back-off), sometimes another (account back-off).
        let client = ip(first_ip + u32::from(step % 4 == 0));
        let entry = match attempt(l, client, user, c).await {
            Decision::Allowed(ticket) => {
                l.failure(ticket);
                "allowed".to_string()
            }
            Decision::Throttled {
                reason,
                retry_after,
            } => format!("{reason} {retry_after:?}"),
        };
        log.push(entry);
        c.advance(Duration::from_millis(700));
    }
    log
}

pub(crate) async fn unknown_usernames_are_throttled_exactly_like_real_ones(l: &dyn Limiter) {
    let c = clock();
    // "alice" has signed in before from elsewhere; the limiter still cannot tell her apart.
    succeed(l, ip(500), "alice", &c).await;
    let real = script(l, "alice", 0, &c).await;
    let unknown = script(l, "no-such-user", 100, &c).await;
    assert_eq!(real, unknown);
    assert!(
        real.iter().any(|d| d.starts_with("pair_backoff")),
        "{real:?}"
    );
    assert!(
        real.iter().any(|d| d.starts_with("account_backoff")),
        "{real:?}"
    );
}

pub(crate) async fn usernames_are_case_insensitive_and_tenants_separate(l: &dyn Limiter) {
    let c = clock();
    for _ in 0..PAIR_FREE_FAILURES {
        fail(l, ip(1), "Alice", &c).await;
    }
    for user in ["alice", "ALICE", "aLiCe"] {
        assert_eq!(
            throttled(l, ip(1), user, &c).await,
            (ThrottleReason::PairBackoff, secs(1))
        );
    }
    let other_tenant = l
        .begin(ip(1), "globex", "alice", c.now())
        .await
        .expect("limiter available");
    assert!(matches!(other_tenant, Decision::Allowed(_)));
}

pub(crate) async fn throttled_attempts_are_not_counted(l: &dyn Limiter) {
    let c = clock();
    let client = ip(1);
    for _ in 0..PAIR_FREE_FAILURES {
        fail(l, client, "alice", &c).await;
    }
    for _ in 0..50 {
        assert_eq!(
            throttled(l, client, "alice", &c).await,
            (ThrottleReason::PairBackoff, secs(1))
        );
    }
    c.advance(secs(1));
    fail(l, client, "alice", &c).await;
    assert_eq!(
        throttled(l, client, "alice", &c).await,
        (ThrottleReason::PairBackoff, secs(2)),
        "the back-off grew by one failure, not by fifty"
    );
    // Nor did they take IP tokens: 6 of 20 used, plus a third of one refilled.
    for n in 0..14 {
        fail(l, client, &format!("user{n}"), &c).await;
    }
    assert_eq!(
        throttled(l, client, "user-x", &c).await.0,
        ThrottleReason::IpRate
    );
}

pub(crate) async fn a_streak_is_forgotten_after_thirty_days_without_failures(l: &dyn Limiter) {
    let c = clock();
    for n in 0..ACCOUNT_FREE_FAILURES {
        fail(l, ip(n), "alice", &c).await;
    }
    c.advance(FAILURE_MEMORY - secs(1));
    // The 1 s wait is long over, but the count is remembered: the next wait is 2 s.
    fail(l, ip(50), "alice", &c).await;
    assert_eq!(
        throttled(l, ip(51), "alice", &c).await,
        (ThrottleReason::AccountBackoff, secs(2))
    );
    c.advance(FAILURE_MEMORY);
    for n in 20..20 + ACCOUNT_FREE_FAILURES {
        fail(l, ip(n), "alice", &c).await;
    }
    assert_eq!(
        throttled(l, ip(51), "alice", &c).await,
        (ThrottleReason::AccountBackoff, secs(1)),
        "ten free failures again"
    );
}

pub(crate) async fn reaching_the_lock_from_unknown_ips_takes_days(l: &dyn Limiter) {
    let c = clock();
    let start = c.now();
    let mut failures = 0u32;
    let mut next_ip = 0;
    loop {
        next_ip += 1;
        match attempt(l, ip(next_ip), "alice", &c).await {
            Decision::Allowed(ticket) => {
                l.failure(ticket);
                failures += 1;
            }
            Decision::Throttled {
                reason: ThrottleReason::AccountBackoff,
                retry_after,
            } => c.advance(retry_after),
            Decision::Throttled {
                reason: ThrottleReason::Locked,
                ..
            } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(failures, HARD_CAP);
    let expected: Duration = (ACCOUNT_FREE_FAILURES..HARD_CAP)
        .filter_map(|n| {
            backoff(
                n,
                ACCOUNT_FREE_FAILURES,
                ACCOUNT_BACKOFF_BASE,
                ACCOUNT_BACKOFF_CAP,
            )
        })
        .sum();
    assert_eq!(c.now() - start, expected);
    assert_eq!(expected, secs(284_895), "about 3.3 days");
    assert!(expected > secs(3 * 24 * 3600));
}

pub(crate) async fn ipv6_clients_count_per_slash_64_and_mapped_ipv4_as_ipv4(l: &dyn Limiter) {
    let c = clock();
    for n in 0..IP_BURST.get() {
        let rotating = addr(&format!("2001:db8:1:2::{:x}", n + 1));
        fail(l, rotating, &format!("user{n}"), &c).await;
    }
    assert_eq!(
        throttled(l, addr("2001:db8:1:2:ffff::1"), "x", &c).await.0,
        ThrottleReason::IpRate
    );
    fail(l, addr("2001:db8:1:3::1"), "x", &c).await;

    for _ in 0..PAIR_FREE_FAILURES {
        fail(l, addr("192.0.2.1"), "alice", &c).await;
    }
    assert_eq!(
        throttled(l, addr("::ffff:192.0.2.1"), "alice", &c).await,
        (ThrottleReason::PairBackoff, secs(1))
    );
}

/// Starts `attempts` at once (released together by a barrier), spread round-robin over
/// `instances` and `clients`; returns how many were allowed.
async fn race(
    instances: &[Arc<dyn Limiter>],
    clients: &[IpAddr],
    attempts: usize,
    now: Duration,
) -> usize {
    let barrier = Arc::new(Barrier::new(attempts));
    let tasks: Vec<_> = (0..attempts)
        .map(|i| {
            let limiter = Arc::clone(&instances[i % instances.len()]);
            let client = clients[i % clients.len()];
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                match limiter.begin(client, TENANT, "alice", now).await {
                    Ok(Decision::Allowed(ticket)) => {
                        limiter.failure(ticket);
                        true
                    }
                    Ok(Decision::Throttled { .. }) => false,
                    Err(e) => panic!("limiter unavailable: {e}"),
                }
            })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        if task.await.expect("task") {
            allowed += 1;
        }
    }
    allowed
}

const RACERS: usize = 200;

pub(crate) async fn parallel_attempts_from_many_ips_get_exactly_the_account_budget(
    instances: &[Arc<dyn Limiter>],
) {
    let c = clock();
    let clients: Vec<IpAddr> = (0..RACERS as u32).map(ip).collect();
    let allowed = race(instances, &clients, RACERS, c.now()).await;
    assert_eq!(allowed, ACCOUNT_FREE_FAILURES as usize);
}

pub(crate) async fn parallel_attempts_from_one_ip_get_exactly_the_pair_budget(
    instances: &[Arc<dyn Limiter>],
) {
    let c = clock();
    let allowed = race(instances, &[ip(1)], RACERS, c.now()).await;
    assert_eq!(allowed, PAIR_FREE_FAILURES as usize);
}

pub(crate) async fn parallel_attempts_never_pass_the_hard_cap(instances: &[Arc<dyn Limiter>]) {
    let c = clock();
    // Known IPs with more pair budget in total (30 × 5) than the cap: only the cap binds.
    let clients: Vec<IpAddr> = (0..30).map(ip).collect();
    make_known(instances[0].as_ref(), &clients, "alice", &c).await;
    let allowed = race(instances, &clients, RACERS, c.now()).await;
    assert_eq!(allowed, HARD_CAP as usize);
    assert_eq!(
        throttled(instances[0].as_ref(), ip(999), "alice", &c)
            .await
            .0,
        ThrottleReason::Locked
    );
}
