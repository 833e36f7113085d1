//! Brute-force defence (issue 4, item 6) against real processes: the login limiter's budgets
//! and back-off as a client sees them (429 + `Retry-After`, before any hashing), the
//! trusted-proxy rules for `X-Forwarded-For`, known IPs, reset on success, the hard cap and
//! the operator unlock, one budget shared by three gateways through a real `redis-server`,
//! failing closed while Redis is down, and the request and connection limits of the proxy
//! path.
//!
//! The gateway runs on the system clock, so these tests cannot move time: every scenario is
//! built so that its outcome does not depend on how fast the machine is. Parallel batches
//! are used where a window matters (the limiter reserves an attempt before hashing it, so a
//! batch is decided at once), back-offs are grown long before they are relied on, and where
//! a duration is measured the bound is computed from it.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::future::Future;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use cluster::{
    retry_after, session_of, tcp_connect_from, tls_connect_from, Redis, World, WorldOpts,
};
use common::{parse_response_strict, Response, SESSION_COOKIE};
use portcullis::ratelimit::{
    ACCOUNT_BACKOFF_BASE, ACCOUNT_BACKOFF_CAP, ACCOUNT_FREE_FAILURES, HARD_CAP, LOCKED_RETRY_AFTER,
    PAIR_FREE_FAILURES,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALICE_PW: &str = "alice-correct-horse-battery";
const BOB_PW: &str = "bob-staple-lantern-orchard";
const WRONG: &str = "wrong-password-guess-0000";
/// What every failed sign-in page says (src/auth/flow.rs `BAD_LOGIN`).
const BAD_LOGIN: &str = "Incorrect username or password.";

/// Runs the futures concurrently (spawned) and returns their answers in order.
async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<Response>
where
    F: Future<Output = Response> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut n = 0;
    for (i, f) in futures.into_iter().enumerate() {
        set.spawn(async move { (i, f.await) });
        n += 1;
    }
    let mut out: Vec<Option<Response>> = vec![None; n];
    while let Some(done) = set.join_next().await {
        let (i, resp) = done.expect("request task");
        out[i] = Some(resp);
    }
    out.into_iter().map(|r| r.expect("every answer")).collect()
}

fn statuses(responses: &[Response]) -> Vec<u16> {
    responses.iter().map(|r| r.status).collect()
}

fn count(responses: &[Response], status: u16) -> usize {
    responses.iter().filter(|r| r.status == status).count()
}

/// The text of the page's `role="alert"` error paragraph.
fn alert_text(html: &str) -> Option<String> {
    let at = html.find("class=\"error\"")?;
    let start = at + html[at..].find('>')? + 1;
    let end = start + html[start..].find("</p>")?;
    Some(html[start..end].trim().to_string())
}

fn assert_no_session(resp: &Response, what: &str) {
    let session = resp
        .set_cookie_value(SESSION_COOKIE)
        .filter(|v| !v.is_empty());
    assert!(session.is_none(), "{what} must not start a session");
}

/// Most failed attempts an account can have verified from IPs not known for it within
/// `window`: the free failures, then one more each time the doubling back-off has passed.
fn account_budget_within(window: Duration) -> u32 {
    let mut allowed = ACCOUNT_FREE_FAILURES;
    let mut waited = Duration::ZERO;
    let mut step = 0u32;
    while allowed < HARD_CAP {
        let wait = ACCOUNT_BACKOFF_BASE
            .saturating_mul(1u32.checked_shl(step).unwrap_or(u32::MAX))
            .min(ACCOUNT_BACKOFF_CAP);
        if waited + wait > window {
            break;
        }
        waited += wait;
        allowed += 1;
        step += 1;
    }
    allowed
}

fn opts(f: impl FnOnce(&mut WorldOpts)) -> WorldOpts {
    let mut o = WorldOpts::default();
    f(&mut o);
    o
}

fn lines(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Cheap rejection
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn throttled_attempts_are_answered_429_with_retry_after_before_any_hashing() {
    // A per-IP budget of 6 that does not come back during the test: after six verified
    // attempts every further one from 127.0.0.1 is throttled, whatever it carries.
    let world = World::start(opts(|o| {
        o.ratelimit = lines(&["login_ip_burst = 6", "login_ip_refill_secs = 3600"]);
    }));
    world.add_user("alice", ALICE_PW);
    let door = world.door(0);
    let warm = door.get("/api/warm-up", None, &[]).await;
    assert_eq!(warm.status, 200, "warm-up request: {}", warm.text());

    // Five verified wrong passwords (JSON) on a warm connection: what a hash costs.
    let mut verified = Vec::new();
    for i in 0..5 {
        let started = Instant::now();
        let resp = door.login_json(&format!("user{i}"), WRONG, &[]).await;
        verified.push(started.elapsed());
        assert_eq!(resp.status, 401, "attempt {i}: {}", resp.text());
    }
    // The sixth, as a browser: the failed-login page to compare wording with.
    let failed_page = door.login_form("user5", WRONG, &[]).await;
    assert_eq!(failed_page.status, 401, "{}", failed_page.text());
    let failed_alert = alert_text(&failed_page.text()).expect("failed-login page has an alert");
    assert_eq!(failed_alert, BAD_LOGIN);
    assert_eq!(
        world.decision(0, "allowed"),
        6.0,
        "six attempts were verified"
    );

    // Twenty throttled JSON attempts, half of them alice's *correct* password.
    let started = Instant::now();
    let mut throttled = Vec::new();
    for i in 0..20 {
        let (user, password) = if i % 2 == 0 {
            ("alice".to_string(), ALICE_PW)
        } else {
            (format!("user{i}"), WRONG)
        };
        throttled.push(door.login_json(&user, password, &[]).await);
    }
    let throttled_time = started.elapsed();

    let mut bodies = Vec::new();
    for (i, resp) in throttled.iter().enumerate() {
        assert_eq!(
            resp.status,
            429,
            "attempt {i} after the budget (a correct password included) must be throttled: {}",
            resp.text()
        );
        let wait = retry_after(resp);
        assert!((1..=3600).contains(&wait), "Retry-After {wait}");
        assert_no_session(resp, "a throttled attempt");
        let body = resp.json();
        assert_eq!(body["status"], 429);
        // Nothing about which rule refused, or about the account.
        let keys: Vec<&str> = body
            .as_object()
            .expect("a JSON object")
            .keys()
            .map(String::as_str)
            .collect();
        assert!(
            keys.iter()
                .all(|k| ["error", "status", "retry_after"].contains(k)),
            "throttled JSON fields: {keys:?}"
        );
        let code = body["error"].as_str().unwrap_or_default().to_string();
        for leak in ["ip", "pair", "account", "lock", "backoff", "alice"] {
            assert!(!code.contains(leak), "throttled JSON error {code:?}");
        }
        bodies.push(code);
    }
    bodies.dedup();
    assert_eq!(
        bodies.len(),
        1,
        "one generic error code for every throttled attempt (existing user or not): {bodies:?}"
    );

    // The browser gets the sign-in page again, 429, with the same words as a failed login.
    let page = door.login_form("alice", ALICE_PW, &[]).await;
    assert_eq!(page.status, 429, "{}", page.text());
    assert!(retry_after(&page) >= 1);
    assert_no_session(&page, "a throttled form sign-in");
    let html = page.text();
    assert_eq!(
        alert_text(&html).as_deref(),
        Some(BAD_LOGIN),
        "throttled page must say exactly what a failed login says"
    );
    let lower = html.to_lowercase();
    for leak in ["too many", "locked", "throttl", "rate limit", "slow down"] {
        assert!(!lower.contains(leak), "throttled page says {leak:?}");
    }

    // Nothing was verified: `allowed` did not move, every refusal was counted as ip_rate.
    let decisions = world.decisions(0);
    assert_eq!(
        decisions.get("allowed").copied(),
        Some(6.0),
        "{decisions:?}"
    );
    assert_eq!(
        decisions.get("ip_rate").copied(),
        Some(21.0),
        "{decisions:?}"
    );

    // And it shows in the time: a throttled answer costs a fraction of one verification.
    let fastest = *verified.iter().min().expect("five timings");
    eprintln!("verified wrong passwords: {verified:?}; 20 throttled: {throttled_time:?}");
    assert!(
        fastest >= Duration::from_millis(5),
        "a verified wrong password took only {fastest:?}: too fast to tell hashing apart"
    );
    assert!(
        throttled_time < fastest * 20 / 3,
        "20 throttled answers took {throttled_time:?}, but one verified wrong password \
         takes at least {fastest:?} (all: {verified:?}): throttled attempts seem to be hashed"
    );
}

// ---------------------------------------------------------------------------------------------
// Per-account budgets
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn after_the_free_failures_from_one_ip_that_account_is_429_while_another_account_still_gets_401(
) {
    let world = World::start(WorldOpts::default());
    world.add_user("alice", ALICE_PW);
    world.add_user("bob", BOB_PW);
    let door = world.door(0);

    for i in 1..PAIR_FREE_FAILURES {
        let resp = door.login_json("alice", WRONG, &[]).await;
        assert_eq!(resp.status, 401, "free failure {i}: {}", resp.text());
    }
    // The last free failure and two more for alice, and one for bob, all at once: the
    // limiter reserves before hashing, so exactly one of alice's goes through.
    let batch = join_all((0..4).map(|i| {
        let door = door.clone();
        async move {
            let user = if i == 3 { "bob" } else { "alice" };
            door.login_json(user, WRONG, &[]).await
        }
    }))
    .await;
    let alice = &batch[..3];
    assert_eq!(
        count(alice, 401),
        1,
        "alice: exactly the last free failure is verified: {:?}",
        statuses(alice)
    );
    assert_eq!(count(alice, 429), 2, "alice: {:?}", statuses(alice));
    for resp in alice.iter().filter(|r| r.status == 429) {
        assert_eq!(retry_after(resp), 1, "first back-off is one second");
    }
    assert_eq!(
        batch[3].status,
        401,
        "bob from the same IP is not throttled: {}",
        batch[3].text()
    );
    let d = world.decisions(0);
    assert_eq!(d.get("pair_backoff").copied(), Some(2.0), "{d:?}");
    assert_eq!(
        d.get("allowed").copied(),
        Some(f64::from(PAIR_FREE_FAILURES) + 1.0),
        "{d:?}"
    );
    // Bob signs in from that same IP meanwhile.
    session_of(&door.login_json("bob", BOB_PW, &[]).await);
}

#[tokio::test]
async fn the_pair_backoff_doubles_with_each_further_failure() {
    let world = World::start(WorldOpts::default());
    world.add_user("alice", ALICE_PW);
    let door = world.door(0);
    for i in 0..PAIR_FREE_FAILURES {
        let resp = door.login_json("alice", WRONG, &[]).await;
        assert_eq!(resp.status, 401, "free failure {i}: {}", resp.text());
    }
    // Waits of 1 s, then 2 s, then 4 s: each time, the first attempt after the wait is
    // verified and the very next one is told to wait twice as long.
    let mut expected = 1;
    for round in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(expected + 5);
        let verified = loop {
            let resp = door.login_json("alice", WRONG, &[]).await;
            match resp.status {
                401 => break resp,
                429 => {
                    let wait = retry_after(&resp);
                    assert!(
                        wait <= expected,
                        "round {round}: Retry-After {wait} > {expected}"
                    );
                    assert!(Instant::now() < deadline, "round {round}: still throttled");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => panic!("round {round}: {other} {}", resp.text()),
            }
        };
        assert_eq!(verified.status, 401);
        expected *= 2;
        let next = join_all((0..2).map(|_| {
            let door = door.clone();
            async move { door.login_json("alice", WRONG, &[]).await }
        }))
        .await;
        for resp in &next {
            assert_eq!(resp.status, 429, "round {round}: {}", resp.text());
            let wait = retry_after(resp);
            assert!(
                wait == expected || wait + 1 == expected,
                "round {round}: Retry-After {wait}, expected about {expected}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client addresses: untrusted and trusted X-Forwarded-For
// ---------------------------------------------------------------------------------------------

/// Client-address headers a spoofer rotates, for attempt `i`.
fn spoofed_headers(i: usize) -> Vec<(String, String)> {
    let a = format!("198.51.100.{}", i + 1);
    let b = format!("203.0.113.{}", i + 1);
    let mut h = vec![("x-forwarded-for".to_string(), format!("{a}, {b}"))];
    match i % 4 {
        0 => {}
        1 => h.push(("forwarded".into(), format!("for={b}"))),
        2 => h.push(("x-real-ip".into(), b)),
        _ => h.push(("true-client-ip".into(), b)),
    }
    h
}

async fn login_spoofed(door: &cluster::Door, i: usize, user: &str) -> Response {
    let h = spoofed_headers(i);
    let refs: Vec<(&str, &str)> = h.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    door.login_json(user, WRONG, &refs).await
}

#[tokio::test]
async fn rotating_x_forwarded_for_from_an_untrusted_peer_does_not_evade() {
    // Default trust (none): 127.0.0.1 is the client, whatever the headers say. An IP budget
    // of 13 that does not come back during the test.
    let world = World::start(opts(|o| {
        o.ratelimit = lines(&["login_ip_burst = 13", "login_ip_refill_secs = 3600"]);
    }));
    world.add_user("alice", ALICE_PW);
    world.add_user("carol", ALICE_PW);
    let door = world.door(0);

    // The same sequence for alice with a new spoofed address each time, and for carol with
    // none: the same answers.
    let mut outcomes = Vec::new();
    for (user, spoof) in [("alice", true), ("carol", false)] {
        let mut seq = Vec::new();
        for i in 0..PAIR_FREE_FAILURES as usize - 1 {
            let resp = if spoof {
                login_spoofed(&door, i, user).await
            } else {
                door.login_json(user, WRONG, &[]).await
            };
            seq.push(resp.status);
        }
        let batch = join_all((0..3).map(|k| {
            let door = door.clone();
            let user = user.to_string();
            async move {
                if spoof {
                    login_spoofed(&door, 10 + k, &user).await
                } else {
                    door.login_json(&user, WRONG, &[]).await
                }
            }
        }))
        .await;
        let mut tail = statuses(&batch);
        tail.sort_unstable();
        seq.extend(tail);
        outcomes.push(seq);
    }
    let expected = [401, 401, 401, 401, 401, 429, 429];
    assert_eq!(
        outcomes[0], expected,
        "alice with rotating spoofed addresses"
    );
    assert_eq!(outcomes[1], expected, "carol without any");
    assert_eq!(world.decision(0, "pair_backoff"), 4.0);

    // The per-IP budget: 10 verified so far, 3 left, whatever address each claims.
    for i in 0..3 {
        let resp = login_spoofed(&door, 20 + i, &format!("spray{i}")).await;
        assert_eq!(resp.status, 401, "spray {i}: {}", resp.text());
    }
    for i in 3..6 {
        let resp = login_spoofed(&door, 20 + i, &format!("spray{i}")).await;
        assert_eq!(
            resp.status,
            429,
            "spray {i} with a fresh spoofed address: {}",
            resp.text()
        );
    }
    let plain = door.login_json("spray9", WRONG, &[]).await;
    assert_eq!(plain.status, 429, "and without one");
    let d = world.decisions(0);
    assert_eq!(d.get("ip_rate").copied(), Some(4.0), "{d:?}");
    assert_eq!(d.get("allowed").copied(), Some(13.0), "{d:?}");
}

#[tokio::test]
async fn trusted_proxy_x_forwarded_for_makes_each_address_its_own_client() {
    let world = World::start(opts(|o| {
        o.trusted_proxies = lines(&["127.0.0.1/32"]);
        o.ratelimit = lines(&["login_ip_burst = 3", "login_ip_refill_secs = 3600"]);
    }));
    let door = world.door(0);
    let a = "198.51.100.10";
    for i in 0..3 {
        let resp = door.login_from(a, &format!("a{i}"), WRONG).await;
        assert_eq!(resp.status, 401, "{a} attempt {i}: {}", resp.text());
    }
    let over = door.login_from(a, "a3", WRONG).await;
    assert_eq!(over.status, 429, "{a} is over its budget: {}", over.text());
    // A client cannot escape by prepending addresses: our proxy appended the real one.
    let prepended = door
        .login_from(&format!("192.0.2.1, {a}"), "a4", WRONG)
        .await;
    assert_eq!(prepended.status, 429, "spoofed entry left of {a}");
    // Another address behind the proxy is another client.
    for b in ["198.51.100.11", "2001:db8:1:2::7"] {
        let resp = door.login_from(b, "b0", WRONG).await;
        assert_eq!(resp.status, 401, "{b} has its own budget: {}", resp.text());
    }
    // The proxy itself, without the header, is its own client too.
    let direct = door.login_json("c0", WRONG, &[]).await;
    assert_eq!(direct.status, 401, "127.0.0.1 itself: {}", direct.text());
    let d = world.decisions(0);
    assert_eq!(d.get("ip_rate").copied(), Some(2.0), "{d:?}");
    assert_eq!(d.get("allowed").copied(), Some(6.0), "{d:?}");
}

/// Makes `known` known for alice (a success from it), then has attackers at 10 unknown
/// addresses use the account's free failures, then grows the account streak from `known`
/// (known IPs skip the account back-off) to 14, so unknown IPs now wait 16 s.
async fn attacker_backs_off_alice_from_unknown_ips(world: &World, known: &str) {
    let door = world.door(0);
    session_of(&door.login_from(known, "alice", ALICE_PW).await);
    let free = ACCOUNT_FREE_FAILURES as usize;
    let batch = join_all((0..free + 5).map(|i| {
        let door = door.clone();
        async move {
            door.login_from(&format!("198.51.100.{}", i + 1), "alice", WRONG)
                .await
        }
    }))
    .await;
    assert_eq!(
        count(&batch, 401),
        free,
        "unknown IPs get exactly the free failures at once: {:?}",
        statuses(&batch)
    );
    assert_eq!(count(&batch, 429), 5, "{:?}", statuses(&batch));
    let before = world.decision(0, "account_backoff");
    for i in 0..4 {
        let resp = door.login_from(known, "alice", WRONG).await;
        assert_eq!(
            resp.status,
            401,
            "failure {i} from the known IP is not held by the account back-off: {}",
            resp.text()
        );
    }
    assert_eq!(world.decision(0, "account_backoff"), before);
    let unknown = door.login_from("198.51.100.200", "alice", WRONG).await;
    assert_eq!(unknown.status, 429, "{}", unknown.text());
    let wait = retry_after(&unknown);
    assert!(
        (10..=16).contains(&wait),
        "after 14 failures unknown IPs wait 2^4 s, Retry-After {wait}"
    );
}

#[tokio::test]
async fn an_attacker_elsewhere_does_not_lock_the_user_out_of_a_known_ip() {
    let world = World::start(opts(|o| o.trusted_proxies = lines(&["127.0.0.1/32"])));
    world.add_user("alice", ALICE_PW);
    let known = "203.0.113.7";
    attacker_backs_off_alice_from_unknown_ips(&world, known).await;
    let door = world.door(0);
    // The real user, at home, signs in while the attacker is being held off.
    let session = session_of(&door.login_from(known, "alice", ALICE_PW).await);
    let app = door.get("/app/home", Some(&session), &[]).await;
    assert_eq!(app.status, 200, "{}", app.text());
    // Their success cleared the streak: unknown IPs start from zero again.
    let after = door.login_from("198.51.100.201", "alice", WRONG).await;
    assert_eq!(after.status, 401, "{}", after.text());
}

// ---------------------------------------------------------------------------------------------
// Reset on success
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_correct_password_resets_that_ips_failures() {
    let world = World::start(WorldOpts::default());
    world.add_user("alice", ALICE_PW);
    let door = world.door(0);
    for i in 0..PAIR_FREE_FAILURES {
        let resp = door.login_json("alice", WRONG, &[]).await;
        assert_eq!(resp.status, 401, "free failure {i}: {}", resp.text());
    }
    // In back-off even the right password is not checked; once it passes, it signs in.
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut refused = 0;
    let session = loop {
        let resp = door.login_json("alice", ALICE_PW, &[]).await;
        match resp.status {
            200 => break session_of(&resp),
            429 => {
                refused += 1;
                assert!(Instant::now() < deadline, "still throttled after 6 s");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("correct password: {other} {}", resp.text()),
        }
    };
    assert!(!session.is_empty());
    // The streak is gone: the free failures are all there again, then the back-off.
    for i in 0..PAIR_FREE_FAILURES {
        let resp = door.login_json("alice", WRONG, &[]).await;
        assert_eq!(
            resp.status,
            401,
            "failure {i} after the success must not be throttled: {}",
            resp.text()
        );
    }
    let next = join_all((0..2).map(|_| {
        let door = door.clone();
        async move { door.login_json("alice", WRONG, &[]).await }
    }))
    .await;
    assert_eq!(statuses(&next), [429, 429], "the count restarted from zero");
    assert!(
        world.decision(0, "pair_backoff") >= f64::from(refused) + 2.0,
        "{:?}",
        world.decisions(0)
    );
}

// ---------------------------------------------------------------------------------------------
// Hard cap and operator unlock
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_hard_cap_locks_the_account_for_everyone_until_an_operator_unlocks_it() {
    const { assert!(HARD_CAP <= 100, "NIST SP 800-63B 5.2.2: at most 100") };
    let world = World::start(opts(|o| o.trusted_proxies = lines(&["127.0.0.1/32"])));
    world.add_user("alice", ALICE_PW);
    let door = world.door(0);

    // The fastest way to the cap: addresses known for alice skip the account back-off, so
    // HARD_CAP / PAIR_FREE_FAILURES known addresses with their free failures each reach it.
    let pairs = HARD_CAP.div_ceil(PAIR_FREE_FAILURES) as usize;
    let known: Vec<String> = (1..=pairs).map(|i| format!("203.0.113.{i}")).collect();
    // One after the other: an attempt counts as a failure until its success is recorded, so
    // twenty at once from unknown addresses would themselves meet the account back-off.
    for ip in &known {
        session_of(&door.login_from(ip, "alice", ALICE_PW).await);
    }

    let attempts = (0..HARD_CAP as usize).map(|i| known[i % pairs].clone());
    let failures = join_all(attempts.map(|ip| {
        let door = door.clone();
        async move { door.login_from(&ip, "alice", WRONG).await }
    }))
    .await;
    assert_eq!(
        count(&failures, 401),
        HARD_CAP as usize,
        "{} failures, none throttled: {:?}",
        HARD_CAP,
        statuses(&failures)
    );
    let allowed = world.decision(0, "allowed");
    assert_eq!(allowed, f64::from(HARD_CAP) + pairs as f64);

    // Locked: the right password from a known address, and anyone else, get 429.
    let after = join_all((0..6).map(|i| {
        let door = door.clone();
        async move {
            match i {
                0 => door.login_from("203.0.113.1", "alice", ALICE_PW).await,
                1 => door.login_json("alice", ALICE_PW, &[]).await,
                _ => {
                    door.login_from(&format!("192.0.2.{i}"), "alice", WRONG)
                        .await
                }
            }
        }
    }))
    .await;
    for resp in &after {
        assert_eq!(resp.status, 429, "locked account: {}", resp.text());
        assert_eq!(retry_after(resp), LOCKED_RETRY_AFTER.as_secs());
        assert_no_session(resp, "a locked account");
    }
    assert_eq!(world.decision(0, "locked"), 6.0);
    assert_eq!(
        world.decision(0, "allowed"),
        allowed,
        "no failure beyond the cap was verified"
    );
    // The operator API wants the bearer token; refused calls change nothing.
    let path = "/v1/tenants/acme/users/alice/unlock";
    let bare = world.operator_post(0, path, None);
    assert_eq!(bare.status, 401, "no token: {}", bare.text());
    assert_eq!(bare.header("www-authenticate"), Some("Bearer"));
    let wrong = world.operator_post(0, path, Some("Bearer not-the-token"));
    assert_eq!(wrong.status, 401, "wrong token: {}", wrong.text());
    let token = world.admin_token();
    let basic = world.operator_post(0, path, Some(&format!("Basic {token}")));
    assert_eq!(
        basic.status,
        401,
        "right secret, wrong scheme: {}",
        basic.text()
    );
    let still = door.login_from("203.0.113.1", "alice", ALICE_PW).await;
    assert_eq!(still.status, 429, "refused operator calls must not unlock");

    // `portcullis user unlock` (memory store: through the operator API with the token file).
    let out = world.user_cli("unlock", &["--tenant", "acme", "alice"], "");
    assert_eq!(out.code, Some(0), "user unlock:\n{out}");
    assert!(
        out.stdout.contains("alice unlocked") && !out.stdout.contains("not locked"),
        "unlock must report the account was locked:\n{out}"
    );
    let back = door.login_from("203.0.113.1", "alice", ALICE_PW).await;
    session_of(&back);
    let stranger = door.login_from("192.0.2.99", "alice", WRONG).await;
    assert_eq!(
        stranger.status,
        401,
        "the streak is gone: {}",
        stranger.text()
    );

    // The API itself with the token: 200, and this time it was not locked.
    let api = world.operator_post(0, path, Some(&format!("Bearer {token}")));
    assert_eq!(api.status, 200, "{}", api.text());
    let body: serde_json::Value = serde_json::from_slice(&api.body).expect("JSON");
    assert_eq!(body["was_locked"], false, "{body}");

    // Audit: every throttled attempt with its reason, the lock, both unlocks.
    let Some(throttled) =
        world.audit_reasons("login_throttled", "alice", 7, Duration::from_secs(10))
    else {
        eprintln!("note: sqlite3 CLI missing, audit events not checked");
        return;
    };
    let unlocked = world
        .audit_reasons("account_unlocked", "alice", 2, Duration::from_secs(10))
        .unwrap_or_default();
    let locked = world
        .audit_reasons("account_locked", "alice", 1, Duration::from_secs(5))
        .unwrap_or_default();
    let summary = world.audit_summary();
    assert_eq!(
        throttled, ["locked"; 7],
        "login_throttled events; audit log:\n{summary}"
    );
    assert_eq!(
        unlocked,
        ["was_locked", "was_not_locked"],
        "account_unlocked events; audit log:\n{summary}"
    );
    assert_eq!(
        locked.len(),
        1,
        "one account_locked event when the {HARD_CAP}th consecutive failure was verified; \
         audit log:\n{summary}"
    );
}

#[tokio::test]
async fn user_unlock_ends_a_backoff_at_once() {
    let world = World::start(opts(|o| o.trusted_proxies = lines(&["127.0.0.1/32"])));
    world.add_user("alice", ALICE_PW);
    attacker_backs_off_alice_from_unknown_ips(&world, "203.0.113.7").await;
    let out = world.user_cli("unlock", &["--tenant", "acme", "alice"], "");
    assert_eq!(out.code, Some(0), "user unlock:\n{out}");
    assert!(out.stdout.contains("not locked"), "{out}");
    // 16 s of back-off were left; it is over now.
    let resp = world
        .door(0)
        .login_from("198.51.100.202", "alice", WRONG)
        .await;
    assert_eq!(resp.status, 401, "after unlock: {}", resp.text());
}

// ---------------------------------------------------------------------------------------------
// Cluster: three gateways, one Redis
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn three_gateways_on_one_redis_never_verify_more_than_one_budget() {
    let redis_dir = tempfile::tempdir().expect("tempdir");
    let redis = Redis::start(redis_dir.path());
    let world = World::start(opts(|o| {
        o.nodes = 3;
        o.threads = 1;
        o.trusted_proxies = lines(&["127.0.0.1/32"]);
        o.ratelimit = vec![
            format!("login_store = \"{}\"", redis.url()),
            "login_ip_burst = 5".into(),
            "login_ip_refill_secs = 3600".into(),
        ];
    }));
    world.add_user("alice", ALICE_PW);

    // One client address spraying 9 usernames over the 3 instances: one IP budget of 5.
    let spray = join_all((0..9).map(|i| {
        let door = world.door(i % 3);
        async move {
            door.login_from("192.0.2.77", &format!("spray{i}"), WRONG)
                .await
        }
    }))
    .await;
    assert_eq!(count(&spray, 401), 5, "{:?}", statuses(&spray));
    assert_eq!(count(&spray, 429), 4, "{:?}", statuses(&spray));
    assert_eq!(world.decision_sum("ip_rate"), 4.0);

    // 200 wrong passwords for alice at once, round-robin over the instances, each from its
    // own address (so neither the IP nor the pair rule is what stops them).
    let n = 200;
    let started = Instant::now();
    let answers = join_all((0..n).map(|i| {
        let door = world.door(i % 3);
        async move {
            let ip = format!("10.{}.{}.{}", 1 + i / 65_536, (i / 256) % 256, i % 256);
            door.login_from(&ip, "alice", WRONG).await
        }
    }))
    .await;
    let window = started.elapsed();
    let verified = count(&answers, 401);
    let throttled = count(&answers, 429);
    assert_eq!(
        verified + throttled,
        n,
        "only 401 or 429: {:?}",
        statuses(&answers)
    );
    let budget = account_budget_within(window) as usize;
    eprintln!(
        "{n} attempts in {window:?}: {verified} verified (budget {budget}), {throttled} throttled"
    );
    assert!(
        verified <= budget,
        "{verified} wrong passwords verified in {window:?} across 3 instances; the shared \
         account budget allows at most {budget}"
    );
    assert!(
        verified >= ACCOUNT_FREE_FAILURES as usize,
        "the free failures are usable: {verified}"
    );
    let per_node: Vec<f64> = (0..3).map(|i| world.decision(i, "allowed")).collect();
    let allowed: f64 = per_node.iter().sum();
    assert_eq!(
        allowed,
        (5 + verified) as f64,
        "allowed decisions per instance {per_node:?}"
    );
    assert!(allowed - 5.0 <= budget as f64);
    assert_eq!(world.decision_sum("account_backoff"), throttled as f64);
    for i in 0..3 {
        let d = world.decisions(i);
        let total: f64 = d.values().sum();
        assert!(total >= 60.0, "node {i} took its share: {d:?}");
    }
}

#[tokio::test]
async fn redis_outage_fails_sign_in_closed_keeps_sessions_flowing_and_recovers() {
    let redis_dir = tempfile::tempdir().expect("tempdir");
    let mut redis = Redis::start(redis_dir.path());
    let world = World::start(opts(|o| {
        o.ratelimit = vec![format!("login_store = \"{}\"", redis.url())];
    }));
    world.add_user("alice", ALICE_PW);
    let door = world.door(0);
    let session = session_of(&door.login_json("alice", ALICE_PW, &[]).await);
    let app = door.get("/app/before", Some(&session), &[]).await;
    assert_eq!(app.status, 200, "{}", app.text());

    redis.kill();

    let mut answers = Vec::new();
    for (password, form) in [(ALICE_PW, false), (WRONG, false), (ALICE_PW, true)] {
        let started = Instant::now();
        let resp = if form {
            door.login_form("alice", password, &[]).await
        } else {
            door.login_json("alice", password, &[]).await
        };
        let took = started.elapsed();
        assert_eq!(
            resp.status,
            503,
            "Redis down: sign-in fails closed (form={form}, right password={}): {}",
            password == ALICE_PW,
            resp.text()
        );
        assert!(took < Duration::from_secs(5), "503 took {took:?}");
        assert_no_session(&resp, "sign-in without the limiter");
        answers.push(resp);
    }
    assert_eq!(answers[0].json()["error"], "unavailable");
    assert!(
        answers[2]
            .text()
            .contains("Sign-in is temporarily unavailable"),
        "the page says what is wrong: {}",
        answers[2].text()
    );
    assert!(world.decision(0, "unavailable") >= 3.0);
    assert_eq!(world.decision(0, "allowed"), 1.0);

    // Signed-in users are not affected.
    for i in 0..3 {
        let resp = door
            .get(&format!("/app/during{i}"), Some(&session), &[])
            .await;
        assert_eq!(
            resp.status,
            200,
            "session during the outage: {}",
            resp.text()
        );
        let echo = resp.expect_echo();
        assert_eq!(echo.header_once("x-portcullis-user"), "alice");
    }

    redis.restart();
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let resp = door.login_json("alice", ALICE_PW, &[]).await;
        seen.push(resp.status);
        if resp.status == 200 {
            break;
        }
        assert_eq!(resp.status, 503, "while recovering: {}", resp.text());
        assert!(
            Instant::now() < deadline,
            "sign-in did not recover within 20 s of Redis returning: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "sign-in recovered {:?} after Redis restarted: {seen:?}",
        restarted.elapsed()
    );
    let wrong = door.login_json("alice", WRONG, &[]).await;
    assert_eq!(wrong.status, 401, "{}", wrong.text());
}

// ---------------------------------------------------------------------------------------------
// Request and connection limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_route_request_rate_answers_429_with_retry_after_and_spares_other_routes() {
    let world = World::start(opts(|o| {
        o.trusted_proxies = lines(&["127.0.0.1/32"]);
        o.acme_extra = "\n[[routes]]\nid = \"limited\"\nprefix = \"/limited\"\n\
                        upstream = \"{upstream}\"\naccess = \"public\"\n\
                        requests_per_second = 1\nburst = 2\n"
            .into();
    }));
    let door = world.door(0);
    let warm = door.get("/api/warm-up", None, &[]).await;
    assert_eq!(warm.status, 200);

    let started = Instant::now();
    let mut answers = Vec::new();
    for i in 0..3 {
        answers.push(door.get(&format!("/limited/{i}"), None, &[]).await);
    }
    let json = door
        .get("/limited/3", None, &[("accept", "application/json")])
        .await;
    let took = started.elapsed();
    assert_eq!(
        statuses(&answers),
        [200, 200, 429],
        "burst 2 at 1/s (4 requests took {took:?})"
    );
    assert!(answers[0].echo().is_some());
    let refused = &answers[2];
    assert_eq!(retry_after(refused), 1);
    assert!(refused.echo().is_none(), "a refused request is not proxied");
    assert_eq!(json.status, 429, "{}", json.text());
    assert!(retry_after(&json) >= 1);
    assert_eq!(json.json()["status"], 429);

    for i in 0..5 {
        let resp = door.get(&format!("/api/{i}"), None, &[]).await;
        assert_eq!(resp.status, 200, "another route is not limited");
    }
    let other = door
        .get("/limited/x", None, &[("x-forwarded-for", "198.51.100.9")])
        .await;
    assert_eq!(other.status, 200, "another client has its own budget");
    assert!(world.decision(0, "route_rate") >= 2.0);
}

#[tokio::test]
async fn a_connection_rate_per_ip_drops_the_third_quick_connection_before_tls() {
    let world = World::start(opts(|o| {
        o.ratelimit = lines(&["connections_per_ip_per_second = 1", "connection_burst = 2"]);
    }));
    let port = world.nodes[0].https;
    let ca = world.ca_path();
    // The readiness probes were connections too: let the bucket fill up again (burst 2 at
    // 1/s is full after 2 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let local = Ipv4Addr::LOCALHOST;

    let started = Instant::now();
    let mut first = tls_connect_from(local, port, &ca)
        .await
        .expect("first connection: TLS handshake");
    let _second = tls_connect_from(local, port, &ca)
        .await
        .expect("second connection: TLS handshake");
    // The third: TCP is accepted by the kernel, then dropped without a byte, before the
    // server even waits for a ClientHello.
    let mut third = tcp_connect_from(local, port).await.expect("tcp connect");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), third.read(&mut byte)).await;
    let fourth = tls_connect_from(local, port, &ca).await;
    let took = started.elapsed();
    match read {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("third connection received {n} byte(s)"),
        Err(_) => panic!("third connection was kept open (waiting for a ClientHello)"),
    }
    assert!(
        fourth.is_err(),
        "a fourth quick connection completed its TLS handshake ({took:?} for all four)"
    );

    // The connections that were let in work.
    first
        .write_all(b"GET /api/ok HTTP/1.1\r\nHost: acme.localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), first.read_to_end(&mut buf)).await;
    let (resp, _) = parse_response_strict(&buf).expect("an HTTP response on the first connection");
    assert_eq!(resp.status, 200, "{}", resp.text());

    // Another address is another budget (Linux routes all of 127/8 to loopback).
    let other = Ipv4Addr::new(127, 0, 0, 2);
    match tcp_connect_from(other, port).await {
        Err(e) => eprintln!("note: cannot bind {other} ({e}); per-IP control skipped"),
        Ok(mut tcp) => {
            let waited =
                tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut byte)).await;
            assert!(
                waited.is_err(),
                "{other}: an accepted connection waits for the client"
            );
            tls_connect_from(other, port, &ca)
                .await
                .expect("TLS from another address");
        }
    }

    // And the budget comes back (1 per second).
    let mut recovered = false;
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(400)).await;
        if tls_connect_from(local, port, &ca).await.is_ok() {
            recovered = true;
            break;
        }
    }
    assert!(
        recovered,
        "new connections from 127.0.0.1 are accepted again"
    );
}
