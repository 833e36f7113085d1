//! Prometheus metrics, served by the operator listener at `/metrics`.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

/// Why the gateway ends a client connection at a limit: a request header not whole in time,
/// one past `max_header_bytes`, an answer the client stopped reading.
pub const CUT_REASONS: [&str; 4] = [
    "header_timeout",
    "header_too_large",
    "send_timeout",
    "body_timeout",
];

/// Every metric the gateway exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Tells this set's handles apart from another's in [`HANDLES`] (clones share it, as they
    /// share the metrics themselves).
    id: u64,
    registry: Registry,
    requests: IntCounterVec,
    upstream_latency: HistogramVec,
    tls_handshakes: IntCounterVec,
    config_reloads: IntCounterVec,
    login_decisions: IntCounterVec,
    client_cuts: IntCounterVec,
}

impl Metrics {
    /// A fresh set of metrics in its own registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "portcullis_requests_total",
                "Requests answered, by tenant, route and status.",
            ),
            &["tenant", "route", "status"],
        )?;
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_upstream_latency_seconds",
                "Time from sending a request upstream to its response header.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["tenant", "route"],
        )?;
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "portcullis_tls_handshakes_total",
                "Completed TLS handshakes by version and cipher suite.",
            ),
            &["version", "cipher"],
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "portcullis_config_reloads_total",
                "Configuration reload attempts by result.",
            ),
            &["result"],
        )?;
        let login_decisions = IntCounterVec::new(
            Opts::new(
                "portcullis_login_limiter_decisions_total",
                "Brute-force limiter decisions on credential checks.",
            ),
            &["decision"],
        )?;
        let client_cuts = IntCounterVec::new(
            Opts::new(
                "portcullis_client_connections_cut_total",
                "Client connections ended by a slow-client or size limit, by reason.",
            ),
            &["reason"],
        )?;
        // Shown at 0 from the start, so a rate over them needs no first cut to exist.
        for reason in CUT_REASONS {
            client_cuts.with_label_values(&[reason]);
        }
        registry.register(Box::new(login_decisions.clone()))?;
        registry.register(Box::new(client_cuts.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(upstream_latency.clone()))?;
        registry.register(Box::new(tls_handshakes.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry,
            requests,
            upstream_latency,
            tls_handshakes,
            config_reloads,
            login_decisions,
            client_cuts,
        })
    }

    /// Count one answered request. Unknown tenants and routes are labelled `-` so a scan of
    /// random hosts cannot grow the label set without bound.
    pub fn request(&self, tenant: &str, route: &str, status: u16) {
        HANDLES.with(|h| {
            let mut handles = h.borrow_mut();
            let key = |k: &Key| k.is(self.id, tenant, route, status);
            if let Some((_, counter)) = handles.requests.iter().find(|(k, _)| key(k)) {
                counter.inc();
                return;
            }
            let counter = self
                .requests
                .with_label_values(&[tenant, route, status_label(status)]);
            counter.inc();
            remember(
                &mut handles.requests,
                Key::new(self.id, tenant, route, status),
                counter,
            );
        });
    }

    /// Record how long the upstream took to answer.
    pub fn upstream_latency(&self, tenant: &str, route: &str, seconds: f64) {
        HANDLES.with(|h| {
            let mut handles = h.borrow_mut();
            let key = |k: &Key| k.is(self.id, tenant, route, 0);
            if let Some((_, histogram)) = handles.latency.iter().find(|(k, _)| key(k)) {
                histogram.observe(seconds);
                return;
            }
            let histogram = self.upstream_latency.with_label_values(&[tenant, route]);
            histogram.observe(seconds);
            remember(
                &mut handles.latency,
                Key::new(self.id, tenant, route, 0),
                histogram,
            );
        });
    }

    /// Count one completed TLS handshake.
    pub fn tls_handshake(&self, version: &str, cipher: &str) {
        self.tls_handshakes
            .with_label_values(&[version, cipher])
            .inc();
    }

    /// Count one reload attempt (`applied` or `rejected`).
    pub fn config_reload(&self, result: &str) {
        self.config_reloads.with_label_values(&[result]).inc();
    }

    /// Count one limiter decision (`allowed`, a throttle reason, `unavailable`, or a
    /// request-rate refusal).
    pub fn limiter_decision(&self, decision: &str) {
        self.login_decisions.with_label_values(&[decision]).inc();
    }

    /// Count one client connection the gateway ended at a limit: one of [`CUT_REASONS`].
    pub fn client_cut(&self, reason: &'static str) {
        self.client_cuts.with_label_values(&[reason]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            out.clear();
        }
        out
    }
}

/// Status codes as labels: the real code for 100–599, anything else one bucket, so a label
/// set can never grow without bound.
/// Handles per thread kept for the two metrics every request touches.
const HANDLES_KEPT: usize = 32;

thread_local! {
    /// The label handles this thread used last. Finding a handle through prometheus hashes
    /// the label values and takes a lock and a reference count that every worker shares; a
    /// handle kept here is used with no more than the metric's own atomic update.
    static HANDLES: RefCell<Handles> = RefCell::new(Handles::default());
}

#[derive(Default)]
struct Handles {
    requests: Vec<(Key, IntCounter)>,
    latency: Vec<(Key, Histogram)>,
}

/// Which label set a kept handle is for (status 0 for the latency histogram).
struct Key {
    metrics: u64,
    status: u16,
    tenant: Box<str>,
    route: Box<str>,
}

impl Key {
    fn new(metrics: u64, tenant: &str, route: &str, status: u16) -> Self {
        Self {
            metrics,
            status,
            tenant: tenant.into(),
            route: route.into(),
        }
    }

    fn is(&self, metrics: u64, tenant: &str, route: &str, status: u16) -> bool {
        self.metrics == metrics
            && self.status == status
            && *self.tenant == *tenant
            && *self.route == *route
    }
}

/// Keep a handle, forgetting the oldest past [`HANDLES_KEPT`].
fn remember<T>(kept: &mut Vec<(Key, T)>, key: Key, handle: T) {
    if kept.len() >= HANDLES_KEPT {
        kept.remove(0);
    }
    kept.push((key, handle));
}

fn status_label(status: u16) -> &'static str {
    static LABELS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let labels = LABELS.get_or_init(|| (100..600).map(|s: u16| s.to_string()).collect());
    status
        .checked_sub(100)
        .and_then(|i| labels.get(usize::from(i)))
        .map_or("other", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_bounded() {
        assert_eq!(status_label(404), "404");
        assert_eq!(status_label(0), "other");
        assert_eq!(status_label(999), "other");
    }

    #[test]
    fn kept_handles_count_for_their_own_metrics_and_labels() {
        let a = Metrics::new().expect("metrics");
        let b = Metrics::new().expect("metrics");
        for _ in 0..3 {
            a.request("acme", "public", 200);
        }
        a.request("acme", "public", 404);
        a.request("acme", "app", 200);
        b.request("acme", "public", 200);
        a.upstream_latency("acme", "public", 0.001);
        a.upstream_latency("acme", "public", 0.002);
        b.upstream_latency("acme", "app", 0.001);
        // More label sets than are kept: the oldest handles are dropped, counts stay right.
        for i in 0..(HANDLES_KEPT + 5) {
            a.request("globex", &format!("r{i}"), 200);
        }
        a.request("acme", "public", 200);
        let count = |m: &Metrics, labels: &[&str]| m.requests.with_label_values(labels).get();
        assert_eq!(count(&a, &["acme", "public", "200"]), 4);
        assert_eq!(count(&a, &["acme", "public", "404"]), 1);
        assert_eq!(count(&a, &["acme", "app", "200"]), 1);
        assert_eq!(count(&b, &["acme", "public", "200"]), 1);
        assert_eq!(count(&a, &["globex", "r0", "200"]), 1);
        let samples = |m: &Metrics, labels: &[&str]| {
            m.upstream_latency
                .with_label_values(labels)
                .get_sample_count()
        };
        assert_eq!(samples(&a, &["acme", "public"]), 2);
        assert_eq!(samples(&b, &["acme", "app"]), 1);
        assert_eq!(samples(&a, &["acme", "app"]), 0);
        // A clone is the same set of metrics.
        a.clone().request("acme", "public", 200);
        assert_eq!(count(&a, &["acme", "public", "200"]), 5);
    }

    #[test]
    fn rendered_metrics_carry_the_labels() {
        let m = Metrics::new().expect("metrics");
        m.request("acme", "public", 200);
        m.tls_handshake("TLSv1.3", "TLS13_AES_256_GCM_SHA384");
        let text = String::from_utf8(m.render()).expect("utf8");
        assert!(
            text.contains(
                r#"portcullis_requests_total{route="public",status="200",tenant="acme"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"cipher="TLS13_AES_256_GCM_SHA384""#));
    }
}
