//! Limits on the proxy path, in this process: an optional per-IP request rate per route, and
//! a per-IP rate of new connections checked before the TLS handshake.
//!
//! pingora's connection filter sees accepts, not closes, so the connection limit is a rate of
//! new connections per IP (which is what a handshake flood consumes), not a concurrency count.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use pingora::listeners::ConnectionFilter;

use crate::config::{RequestRate, Tenant};

/// How many checks between sweeps of idle per-IP state (keeps memory bounded).
const SWEEP_EVERY: u64 = 4096;

fn quota(per_second: NonZeroU32, burst: NonZeroU32) -> Quota {
    Quota::per_second(per_second).allow_burst(burst)
}

/// A per-IP budget with periodic sweeping of idle entries.
struct PerIp {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU64,
}

impl PerIp {
    fn new(quota: Quota) -> Self {
        Self {
            limiter: RateLimiter::keyed(quota),
            checks: AtomicU64::new(0),
        }
    }

    /// `Ok` if `ip` may go ahead, else how long until it may.
    fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&crate::ratelimit::client_key(ip))
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// Per-IP SAML endpoint budget (sign-in starts and posted responses): each start stores a
/// request row and each post costs a signature check, so one address gets 10 a second with a
/// burst of 30 — far above what a person signing in needs.
pub const SAML_PER_SECOND: u32 = 10;
/// Burst of [`SAML_PER_SECOND`].
pub const SAML_BURST: u32 = 30;

/// Per-IP request budgets of every route that has one, and of the SAML endpoints; rebuilt on
/// reload.
pub struct RequestLimits {
    /// tenant → route → budget (nested so a lookup borrows, with no key built per request).
    by_route: HashMap<String, HashMap<String, PerIp>>,
    saml: PerIp,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl std::fmt::Debug for RequestLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLimits")
            .field(
                "routes",
                &self.by_route.values().map(HashMap::len).sum::<usize>(),
            )
            .finish()
    }
}

impl RequestLimits {
    /// Budgets for every route with a `requests_per_second`.
    pub fn new(tenants: &[Tenant]) -> Self {
        let by_route = tenants
            .iter()
            .map(|t| {
                let routes = t
                    .routes
                    .iter()
                    .filter_map(|r| {
                        let RequestRate { per_second, burst } = r.rate?;
                        Some((r.id.clone(), PerIp::new(quota(per_second, burst))))
                    })
                    .collect::<HashMap<_, _>>();
                (t.id.clone(), routes)
            })
            .filter(|(_, routes)| !routes.is_empty())
            .collect();
        let saml = PerIp::new(quota(
            NonZeroU32::new(SAML_PER_SECOND).unwrap_or(NonZeroU32::MIN),
            NonZeroU32::new(SAML_BURST).unwrap_or(NonZeroU32::MIN),
        ));
        Self { by_route, saml }
    }

    /// `Ok` if the client may make this request now, else how long to wait.
    pub fn check(&self, tenant: &str, route: &str, ip: IpAddr) -> Result<(), Duration> {
        match self
            .by_route
            .get(tenant)
            .and_then(|routes| routes.get(route))
        {
            Some(limit) => limit.check(ip),
            None => Ok(()),
        }
    }

    /// `Ok` if `ip` may use a SAML endpoint now, else how long until it may.
    pub fn check_saml(&self, ip: IpAddr) -> Result<(), Duration> {
        self.saml.check(ip)
    }
}

/// Drops new connections from an IP over its rate, before any TLS work.
pub struct ConnectionLimit {
    per_ip: PerIp,
    refused: AtomicU64,
}

impl ConnectionLimit {
    /// `per_second` new connections per IP, `burst` at once.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            per_ip: PerIp::new(quota(per_second, burst)),
            refused: AtomicU64::new(0),
        }
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for ConnectionLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionLimit")
            .field("refused", &self.refused())
            .finish()
    }
}

#[async_trait]
impl ConnectionFilter for ConnectionLimit {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        // Only TCP listeners are filtered; a peer without an address is not a network client.
        let Some(addr) = addr else { return true };
        let ok = self.per_ip.check(addr.ip()).is_ok();
        if !ok {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saml_endpoints_have_a_per_ip_budget() {
        let limits = RequestLimits::new(&[]);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..SAML_BURST {
            assert!(limits.check_saml(a).is_ok());
        }
        assert!(limits.check_saml(a).is_err(), "over the burst");
        assert!(
            limits.check_saml(b).is_ok(),
            "another address has its own budget"
        );
        assert!(
            limits.check("acme", "app", a).is_ok(),
            "routes without a rate pass"
        );
    }

    #[test]
    fn route_budget_refuses_after_the_burst_per_ip() {
        let nz = |n| NonZeroU32::new(n).expect("non-zero");
        let limit = PerIp::new(quota(nz(1), nz(3)));
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..3 {
            assert!(limit.check(a).is_ok());
        }
        let wait = limit.check(a).expect_err("over budget");
        assert!(wait <= Duration::from_secs(1));
        assert!(limit.check(b).is_ok(), "budgets are per IP");
    }

    #[tokio::test]
    async fn connection_flood_from_one_ip_is_dropped_before_tls() {
        let nz = |n| NonZeroU32::new(n).expect("non-zero");
        let filter = ConnectionLimit::new(nz(1), nz(2));
        let addr: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        assert!(filter.should_accept(Some(&addr)).await);
        assert!(filter.should_accept(Some(&addr)).await);
        assert!(!filter.should_accept(Some(&addr)).await);
        assert_eq!(filter.refused(), 1);
    }
}
