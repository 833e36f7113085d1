//! The cluster limiter: state in Redis, one Lua script per operation (`begin.lua`,
//! `success.lua`, `unlock.lua`), so check-and-reserve is atomic across every gateway
//! instance sharing the server. Redis runs scripts one at a time: N instances sharing it
//! share one budget exactly.
//!
//! Keys (all under [`KEY_PREFIX`], each with a TTL except a locked account's):
//!
//! | key                      | holds                                        | TTL          |
//! |--------------------------|----------------------------------------------|--------------|
//! | `ip:<ip>`                | rule-1 bucket (GCRA arrival time, ms)        | until full   |
//! | `acct:<sha256>`          | `f` failures, `t` last failure (ms)          | 30 d / none  |
//! | `pair:<sha256>`          | `n:<ip>`, `t:<ip>` per client IP             | 24 h         |
//! | `known:<sha256>`         | `<ip>` → known until (ms)                    | 30 d         |
//!
//! `<sha256>` is the hex [`AccountKey`]: a Redis dump lists no tenant or username. `<ip>` is
//! an IPv4 address or an IPv6 /64 (`2001:db8:1:2::/64`). Key TTLs only collect garbage; every
//! decision reads the timestamps inside, so the gateway's clock is the only one that counts.
//!
//! Any Redis failure (down, slow, script error) is [`LimiterError::Unavailable`]: the caller
//! answers 503 and checks no credential. The [`ConnectionManager`] reconnects by itself, so
//! the limiter works again as soon as Redis is back, without being recreated. A single Redis
//! (or a primary with replicas) is expected, not Redis Cluster: the scripts touch keys of
//! several hash slots.

use std::net::IpAddr;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, FromRedisValue, RedisError, Script, ScriptInvocation};
use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::{
    client_key, AccountKey, Decision, IpBudget, Limiter, LimiterError, ThrottleReason, Ticket,
    ACCOUNT_BACKOFF_BASE, ACCOUNT_BACKOFF_CAP, ACCOUNT_FREE_FAILURES, FAILURE_MEMORY, HARD_CAP,
    KNOWN_IP_TTL, LOCKED_RETRY_AFTER, MAX_KNOWN_IPS_PER_ACCOUNT, MAX_PAIRS_PER_ACCOUNT,
    PAIR_BACKOFF_BASE, PAIR_BACKOFF_CAP, PAIR_FREE_FAILURES, PAIR_MEMORY,
};

/// The namespace of every key the limiter writes.
pub const KEY_PREFIX: &str = "portcullis:rl:";
/// Longest one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest Redis may take to answer one command.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest one limiter call may take in all (connecting included): past it the login gets
/// its 503 rather than waiting.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);

const BEGIN_SCRIPT: &str = include_str!("begin.lua");
const SUCCESS_SCRIPT: &str = include_str!("success.lua");
const UNLOCK_SCRIPT: &str = include_str!("unlock.lua");

/// The login limiter shared by every gateway instance using the same Redis.
pub struct RedisLimiter {
    client: Client,
    /// Made on first use, so a gateway can start while Redis is down (logins answer 503
    /// until it is up); afterwards it reconnects by itself.
    connection: OnceCell<ConnectionManager>,
    begin: Script,
    success: Script,
    unlock: Script,
    budget: IpBudget,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No URL: it can hold a password.
        f.debug_struct("RedisLimiter").finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// A limiter over the Redis at `url` (`redis://[:password@]host[:port][/db]`). Parses the
    /// URL only; the connection is made on first use.
    pub fn new(url: &str) -> Result<Self, LimiterError> {
        let client = Client::open(url).map_err(|_| LimiterError::InvalidUrl)?;
        Ok(Self {
            client,
            connection: OnceCell::new(),
            begin: Script::new(BEGIN_SCRIPT),
            success: Script::new(SUCCESS_SCRIPT),
            unlock: Script::new(UNLOCK_SCRIPT),
            budget: IpBudget::default(),
        })
    }

    /// The same limiter with a per-IP budget other than the default. Every instance sharing
    /// one Redis must use the same budget.
    pub fn with_ip_budget(mut self, budget: IpBudget) -> Self {
        self.budget = budget;
        self
    }

    async fn connection(&self) -> Result<ConnectionManager, RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            // One connection attempt per reconnect: while Redis is down each login gets a
            // prompt 503 (and starts the next attempt) instead of waiting out retries.
            .set_number_of_retries(0);
        self.connection
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .cloned()
    }

    /// Runs one script within [`OPERATION_TIMEOUT`]; every failure is `Unavailable`.
    async fn run<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, LimiterError> {
        let work = async {
            let mut connection = self.connection().await?;
            // EVALSHA, falling back to loading the script (a restarted Redis has none).
            invocation.invoke_async(&mut connection).await
        };
        match tokio::time::timeout(OPERATION_TIMEOUT, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(LimiterError::Unavailable(e.to_string())),
            Err(_) => Err(LimiterError::Unavailable(format!(
                "redis did not answer within {} s",
                OPERATION_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// Milliseconds, as the scripts count time.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How a client appears in keys and hash fields.
fn ip_name(client: IpAddr) -> String {
    match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("{v6}/64"),
    }
}

fn account_keys(account: &AccountKey) -> (String, String, String) {
    let hex = account.hex();
    (
        format!("{KEY_PREFIX}acct:{hex}"),
        format!("{KEY_PREFIX}pair:{hex}"),
        format!("{KEY_PREFIX}known:{hex}"),
    )
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn begin(
        &self,
        ip: IpAddr,
        tenant: &str,
        account: &str,
        now: Duration,
    ) -> Result<Decision, LimiterError> {
        let client = client_key(ip);
        let account = AccountKey::new(tenant, account);
        let ip = ip_name(client);
        let (acct, pair, known) = account_keys(&account);
        let mut invocation = self.begin.prepare_invoke();
        invocation
            .key(format!("{KEY_PREFIX}ip:{ip}"))
            .key(acct)
            .key(pair)
            .key(known)
            .arg(millis(now))
            .arg(&ip)
            .arg(millis(self.budget.refill))
            .arg(self.budget.burst.get())
            .arg(PAIR_FREE_FAILURES)
            .arg(millis(PAIR_BACKOFF_BASE))
            .arg(millis(PAIR_BACKOFF_CAP))
            .arg(millis(PAIR_MEMORY))
            .arg(ACCOUNT_FREE_FAILURES)
            .arg(millis(ACCOUNT_BACKOFF_BASE))
            .arg(millis(ACCOUNT_BACKOFF_CAP))
            .arg(millis(FAILURE_MEMORY))
            .arg(HARD_CAP)
            .arg(millis(LOCKED_RETRY_AFTER))
            .arg(MAX_PAIRS_PER_ACCOUNT);
        // {0, failures so far} when allowed, {reason code, wait in ms} when throttled.
        let (code, value): (i64, i64) = self.run(&invocation).await?;
        let value = u64::try_from(value).unwrap_or(0);
        let reason = match code {
            0 => {
                return Ok(Decision::Allowed(Ticket {
                    account,
                    client,
                    failures: u32::try_from(value).unwrap_or(u32::MAX),
                }))
            }
            1 => ThrottleReason::IpRate,
            2 => ThrottleReason::AccountBackoff,
            3 => ThrottleReason::PairBackoff,
            4 => ThrottleReason::Locked,
            other => {
                return Err(LimiterError::Unavailable(format!(
                    "unexpected limiter script answer {other}"
                )))
            }
        };
        Ok(Decision::Throttled {
            retry_after: Duration::from_millis(value),
            reason,
        })
    }

    async fn success(&self, ticket: Ticket, now: Duration) -> Result<(), LimiterError> {
        let (acct, pair, known) = account_keys(&ticket.account);
        let mut invocation = self.success.prepare_invoke();
        invocation
            .key(acct)
            .key(pair)
            .key(known)
            .arg(millis(now))
            .arg(ip_name(ticket.client))
            .arg(millis(KNOWN_IP_TTL))
            .arg(MAX_KNOWN_IPS_PER_ACCOUNT);
        let _: i64 = self.run(&invocation).await?;
        Ok(())
    }

    async fn unlock(&self, tenant: &str, account: &str) -> Result<bool, LimiterError> {
        let (acct, pair, _) = account_keys(&AccountKey::new(tenant, account));
        let mut invocation = self.unlock.prepare_invoke();
        invocation.key(acct).key(pair).arg(HARD_CAP);
        let was_locked: i64 = self.run(&invocation).await?;
        Ok(was_locked == 1)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::clock::Clock;
    use crate::ratelimit::promises::{self, clock, fail, ip, succeed, throttled, TENANT};
    use crate::ratelimit::{IP_BURST, IP_REFILL};

    /// A redis-server of the test's own on a free loopback port, without persistence;
    /// killed on drop.
    struct RedisServer {
        port: u16,
        dir: tempfile::TempDir,
        child: Option<Child>,
    }

    impl RedisServer {
        fn start() -> Self {
            let mut last = String::new();
            for _ in 0..5 {
                let mut server = RedisServer {
                    port: unused_port(),
                    dir: tempfile::tempdir().expect("tempdir"),
                    child: None,
                };
                match server.try_spawn() {
                    Ok(()) => return server,
                    Err(e) => last = e,
                }
            }
            panic!("redis-server did not start: {last}");
        }

        /// Starts the server again on its port (after [`Self::kill`]), retrying while the
        /// port frees up.
        fn spawn(&mut self) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Err(e) = self.try_spawn() {
                assert!(
                    Instant::now() < deadline,
                    "redis-server did not restart: {e}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }

        /// Starts the server and waits until the process answering on the port is this one:
        /// a port someone else took meanwhile must not hand the test another test's Redis.
        fn try_spawn(&mut self) -> Result<(), String> {
            let mut child = Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(self.dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run redis-server ({e}): install it with \
                         scripts/install-deps.sh (make test does)"
                    )
                });
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "redis-server on port {} exited: {status}",
                        self.port
                    ));
                }
                if serving_pid(self.port) == Some(child.id()) {
                    self.child = Some(child);
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("redis-server on port {} did not answer", self.port));
                }
                // Waiting for a process to come up, not for the limiter's clock.
                std::thread::sleep(Duration::from_millis(10));
            }
        }

        fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/", self.port)
        }

        fn limiter(&self) -> RedisLimiter {
            RedisLimiter::new(&self.url()).expect("valid URL")
        }

        fn instances(&self, n: usize) -> Vec<Arc<dyn Limiter>> {
            (0..n)
                .map(|_| Arc::new(self.limiter()) as Arc<dyn Limiter>)
                .collect()
        }

        async fn raw(&self) -> ::redis::aio::MultiplexedConnection {
            Client::open(self.url())
                .expect("valid URL")
                .get_multiplexed_async_connection()
                .await
                .expect("connect")
        }
    }

    /// A loopback port no other test of this process was given.
    fn unused_port() -> u16 {
        static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
        loop {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
            if !given.contains(&port) {
                given.push(port);
                return port;
            }
        }
    }

    /// The process id of the Redis answering on `port`, from `INFO server`.
    fn serving_pid(port: u16) -> Option<u32> {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream
            .write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
            .ok()?;
        // The reply is one bulk string: `$<length>\r\n<text>\r\n`.
        let mut reply = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&reply);
            if let Some((header, body)) = text.split_once("\r\n") {
                let length: usize = header.strip_prefix('$')?.parse().ok()?;
                if body.len() >= length {
                    break;
                }
            }
            let n = stream.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            reply.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&reply)
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            self.kill();
        }
    }

    async fn setup() -> (RedisLimiter, RedisServer) {
        let server = RedisServer::start();
        (server.limiter(), server)
    }

    promise_tests!(setup);

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn parallel_attempts_from_many_ips_get_exactly_the_account_budget_across_three_instances()
    {
        let server = RedisServer::start();
        promises::parallel_attempts_from_many_ips_get_exactly_the_account_budget(
            &server.instances(3),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn parallel_attempts_from_one_ip_get_exactly_the_pair_budget_across_three_instances() {
        let server = RedisServer::start();
        promises::parallel_attempts_from_one_ip_get_exactly_the_pair_budget(&server.instances(3))
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn parallel_attempts_never_pass_the_hard_cap_across_three_instances() {
        let server = RedisServer::start();
        promises::parallel_attempts_never_pass_the_hard_cap(&server.instances(3)).await;
    }

    #[tokio::test]
    async fn two_instances_share_one_budget_exactly() {
        let server = RedisServer::start();
        let (a, b) = (server.limiter(), server.limiter());
        let c = clock();
        let client = ip(1);
        for n in 0..PAIR_FREE_FAILURES {
            let instance = if n % 2 == 0 { &a } else { &b };
            fail(instance, client, "alice", &c).await;
        }
        for instance in [&a, &b] {
            assert_eq!(
                throttled(instance, client, "alice", &c).await,
                (ThrottleReason::PairBackoff, Duration::from_secs(1))
            );
        }
        // The IP bucket is shared too: 5 of 20 tokens are gone.
        for n in 0..IP_BURST.get() - PAIR_FREE_FAILURES {
            let instance = if n % 2 == 0 { &b } else { &a };
            fail(instance, client, &format!("user{n}"), &c).await;
        }
        for instance in [&a, &b] {
            assert_eq!(
                throttled(instance, client, "someone", &c).await,
                (ThrottleReason::IpRate, IP_REFILL)
            );
        }
        // A success through one instance clears the streak for the other.
        c.advance(IP_REFILL);
        succeed(&a, client, "alice", &c).await;
        c.advance(IP_REFILL);
        fail(&b, client, "alice", &c).await;
    }

    #[tokio::test]
    async fn killed_redis_fails_closed_promptly_and_recovers_on_restart() {
        let mut server = RedisServer::start();
        let limiter = server.limiter();
        let c = clock();
        fail(&limiter, ip(1), "alice", &c).await;

        server.kill();
        for _ in 0..3 {
            let started = Instant::now();
            let answer = limiter.begin(ip(1), TENANT, "alice", c.now()).await;
            assert!(
                matches!(answer, Err(LimiterError::Unavailable(_))),
                "fails closed: {answer:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(3), "promptly");
        }

        server.spawn();
        assert_recovers(&limiter, &c).await;
    }

    #[tokio::test]
    async fn a_limiter_made_while_redis_is_down_fails_closed_until_it_is_up() {
        let mut server = RedisServer::start();
        server.kill();
        let limiter = server.limiter();
        let c = clock();
        let answer = limiter.begin(ip(1), TENANT, "alice", c.now()).await;
        assert!(matches!(answer, Err(LimiterError::Unavailable(_))));
        server.spawn();
        assert_recovers(&limiter, &c).await;
    }

    /// The same limiter answers again once Redis is back (its reconnect runs in the
    /// background, so allow it a few tries).
    async fn assert_recovers(limiter: &RedisLimiter, c: &crate::clock::ManualClock) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match limiter.begin(ip(2), TENANT, "bob", c.now()).await {
                Ok(Decision::Allowed(ticket)) => {
                    limiter.failure(ticket);
                    return;
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => {
                    assert!(Instant::now() < deadline, "did not recover: {e}");
                    // Waiting for the reconnect, not for the limiter's clock.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    #[tokio::test]
    async fn keys_are_namespaced_hold_no_names_and_expire_except_locks() {
        let server = RedisServer::start();
        let limiter = server.limiter();
        let c = clock();
        fail(&limiter, ip(1), "Alice.Smith", &c).await;
        succeed(&limiter, ip(2), "bob.jones", &c).await;
        promises::lock_account(&limiter, "mallory", &c).await;

        let mut raw = server.raw().await;
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut raw)
            .await
            .expect("KEYS");
        assert!(!keys.is_empty());
        let locked = account_keys(&AccountKey::new(TENANT, "mallory")).0;
        for key in &keys {
            assert!(key.starts_with(KEY_PREFIX), "{key}");
            for name in ["alice", "bob", "mallory", TENANT] {
                assert!(!key.to_lowercase().contains(name), "{key} names {name}");
            }
            let pttl: i64 = ::redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut raw)
                .await
                .expect("PTTL");
            if *key == locked {
                assert_eq!(pttl, -1, "a lock does not expire");
            } else {
                assert!(pttl > 0, "{key} has no TTL");
            }
        }
        assert!(keys.contains(&locked));
    }

    #[test]
    fn a_bad_redis_url_is_refused_without_echoing_it() {
        for url in [
            "http://:hunter2@10.0.0.1/",
            "redis://:hunter2@[::1",
            "rediss://:hunter2@10.0.0.1/",
        ] {
            let err = RedisLimiter::new(url).expect_err("refused");
            assert!(matches!(err, LimiterError::InvalidUrl));
            assert!(!err.to_string().contains("hunter2"));
        }
        let limiter = RedisLimiter::new("redis://:hunter2@10.0.0.1/").expect("valid");
        assert!(!format!("{limiter:?}").contains("hunter2"));
    }
}
