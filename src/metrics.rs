//! Prometheus metrics: the families the proxy exports and typed methods to record them.
//!
//! Every label value is a route index, a key id or one of a few fixed words, so nothing a
//! client sends and no secret ever reaches a scrape.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const NAMESPACE: &str = "asap_proxy";

/// Upstream latency buckets in seconds: from a loopback hop (0.5 ms) to the longest
/// response head wait worth telling apart (30 s).
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The proxy's metric families, in a registry of their own so that several proxies (as in
/// tests) never share counts.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    upstream_latency: HistogramVec,
    tokens: IntCounterVec,
    signing_failures: IntCounterVec,
    upstream_errors: IntCounterVec,
    denials: IntCounterVec,
    open_connections: IntGaugeVec,
    open_tunnels: IntGaugeVec,
    config_reloads: IntCounterVec,
    key_age: GaugeVec,
    /// When each key in use was loaded; ages are computed from these at scrape time.
    keys_loaded: Mutex<HashMap<String, Instant>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = counter(
            &registry,
            "requests_total",
            "Requests answered, by route, method class and status code.",
            &["route", "method_class", "status"],
        );
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new(
                "upstream_latency_seconds",
                "Time from sending a request upstream to receiving its response head.",
            )
            .namespace(NAMESPACE)
            .buckets(LATENCY_BUCKETS_SECONDS.to_vec()),
            &["route"],
        )
        .expect("the histogram's name, labels and buckets are fixed and valid");
        register(&registry, upstream_latency.clone());
        let tokens = counter(
            &registry,
            "tokens_total",
            "Tokens attached to requests, by route, algorithm and whether minted or reused.",
            &["route", "algorithm", "provenance"],
        );
        let signing_failures = counter(
            &registry,
            "signing_failures_total",
            "Requests refused because no token could be signed.",
            &["route"],
        );
        let upstream_errors = counter(
            &registry,
            "upstream_errors_total",
            "Upstream failures, by RFC 9209 error type.",
            &["kind"],
        );
        let denials = counter(
            &registry,
            "denials_total",
            "Requests or connections refused by policy, by reason.",
            &["reason"],
        );
        let open_connections = gauge(
            &registry,
            "open_connections",
            "Client connections open, by listener.",
            &["listener"],
        );
        let open_tunnels = gauge(
            &registry,
            "open_tunnels",
            "CONNECT tunnels open, by whether they are passed through or intercepted.",
            &["kind"],
        );
        let config_reloads = counter(
            &registry,
            "config_reloads_total",
            "Configuration reloads, by result.",
            &["result"],
        );
        let key_age = GaugeVec::new(
            Opts::new(
                "key_age_seconds",
                "Seconds since each signing key was loaded.",
            )
            .namespace(NAMESPACE),
            &["kid"],
        )
        .expect("the gauge's name and labels are fixed and valid");
        register(&registry, key_age.clone());

        // Series with a fixed, known set of labels start at zero so that dashboards and
        // alerts see them before the first event rather than a gap.
        for listener in ["forward", "reverse"] {
            open_connections.with_label_values(&[listener]);
        }
        for kind in ["tunnel", "intercept"] {
            open_tunnels.with_label_values(&[kind]);
        }
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }

        Metrics {
            registry,
            requests,
            upstream_latency,
            tokens,
            signing_failures,
            upstream_errors,
            denials,
            open_connections,
            open_tunnels,
            config_reloads,
            key_age,
            keys_loaded: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an answered request; `route` is `None` when it was refused before routing.
    pub fn request(&self, route: Option<usize>, method: &http::Method, status: http::StatusCode) {
        let route = route_label(route);
        self.requests
            .with_label_values(&[route.as_str(), method_class(method), status.as_str()])
            .inc();
    }

    /// Records the wait from sending a request upstream to its response head.
    pub fn upstream_latency(&self, route: Option<usize>, d: Duration) {
        self.upstream_latency
            .with_label_values(&[route_label(route)])
            .observe(d.as_secs_f64());
    }

    /// Counts a token attached to a request; `provenance` is `"minted"` or `"reused"`.
    pub fn token(&self, route: usize, algorithm: &str, provenance: &str) {
        self.tokens
            .with_label_values(&[route.to_string().as_str(), algorithm, provenance])
            .inc();
    }

    pub fn signing_failure(&self, route: usize) {
        self.signing_failures
            .with_label_values(&[route.to_string()])
            .inc();
    }

    /// Counts an upstream failure by its RFC 9209 error type, such as
    /// `"destination_unavailable"`.
    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors.with_label_values(&[kind]).inc();
    }

    /// Counts a refusal by a short fixed reason, such as `"unmatched"` or `"loop"`.
    pub fn denial(&self, reason: &'static str) {
        self.denials.with_label_values(&[reason]).inc();
    }

    /// Counts a connection on `listener` (`"forward"` or `"reverse"`) as open until the
    /// guard is dropped.
    #[must_use = "the connection counts as open only while the guard lives"]
    pub fn connection_opened(&self, listener: &'static str) -> ConnectionGuard {
        ConnectionGuard::open(self.open_connections.with_label_values(&[listener]))
    }

    /// Counts a tunnel of `kind` (`"tunnel"` or `"intercept"`) as open until the guard is
    /// dropped.
    #[must_use = "the tunnel counts as open only while the guard lives"]
    pub fn tunnel_opened(&self, kind: &'static str) -> ConnectionGuard {
        ConnectionGuard::open(self.open_tunnels.with_label_values(&[kind]))
    }

    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
    }

    /// Notes when the key `kid` was loaded; its age is reported from then on.
    pub fn set_key_loaded(&self, kid: &str, at: Instant) {
        self.keys().insert(kid.to_owned(), at);
    }

    /// Stops reporting the age of every key not in `kids`, as after a reload drops keys.
    pub fn forget_keys_except(&self, kids: &[String]) {
        let mut keys = self.keys();
        keys.retain(|kid, _| {
            let keep = kids.contains(kid);
            if !keep {
                // The series may not exist yet if no scrape happened since it was loaded.
                let _ = self.key_age.remove_label_values(&[kid.as_str()]);
            }
            keep
        });
    }

    /// The text exposition of every family, with key ages brought up to date.
    pub fn render(&self) -> String {
        {
            // Updating under the lock keeps a concurrent `forget_keys_except` from having
            // its removed series set again here.
            let keys = self.keys();
            let now = Instant::now();
            for (kid, loaded) in keys.iter() {
                self.key_age
                    .with_label_values(&[kid.as_str()])
                    .set(now.saturating_duration_since(*loaded).as_secs_f64());
            }
        }
        match TextEncoder::new().encode_to_string(&self.registry.gather()) {
            Ok(text) => text,
            Err(err) => {
                // The registry drops empty families before encoding, so this would be a bug
                // in the client library rather than anything an operator can fix.
                tracing::error!(error = %err, "cannot encode metrics");
                String::new()
            }
        }
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // The map holds plain values that no panic can leave half-written.
        self.keys_loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("keys", &self.keys().len())
            .finish_non_exhaustive()
    }
}

/// Keeps a connection or tunnel counted as open; dropping it counts it as closed.
#[must_use = "the connection counts as open only while the guard lives"]
pub struct ConnectionGuard {
    gauge: IntGauge,
}

impl ConnectionGuard {
    fn open(gauge: IntGauge) -> ConnectionGuard {
        gauge.inc();
        ConnectionGuard { gauge }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl fmt::Debug for ConnectionGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionGuard").finish_non_exhaustive()
    }
}

fn route_label(route: Option<usize>) -> String {
    match route {
        Some(index) => index.to_string(),
        None => "none".to_owned(),
    }
}

fn method_class(method: &http::Method) -> &'static str {
    if method == http::Method::CONNECT {
        "connect"
    } else if method.is_safe() {
        "safe"
    } else {
        "unsafe"
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let family = IntCounterVec::new(Opts::new(name, help).namespace(NAMESPACE), labels)
        .expect("counter names and labels are fixed and valid");
    register(registry, family.clone());
    family
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let family = IntGaugeVec::new(Opts::new(name, help).namespace(NAMESPACE), labels)
        .expect("gauge names and labels are fixed and valid");
    register(registry, family.clone());
    family
}

fn register(registry: &Registry, collector: impl prometheus::core::Collector + 'static) {
    registry
        .register(Box::new(collector))
        .expect("each family is registered once in a registry of its own");
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::{Method, StatusCode};

    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Metrics>();
        check::<ConnectionGuard>();
    }

    #[test]
    fn every_family_is_rendered() {
        let metrics = Metrics::new();
        metrics.request(Some(0), &Method::GET, StatusCode::OK);
        metrics.upstream_latency(Some(0), Duration::from_millis(3));
        metrics.token(0, "RS256", "minted");
        metrics.signing_failure(1);
        metrics.upstream_error("connection_timeout");
        metrics.denial("unmatched");
        let _connection = metrics.connection_opened("forward");
        let _tunnel = metrics.tunnel_opened("intercept");
        metrics.config_reload(true);
        metrics.set_key_loaded("svc/key1", Instant::now());

        let text = metrics.render();
        let lines = lines(&text);
        for expected in [
            r#"asap_proxy_requests_total{method_class="safe",route="0",status="200"} 1"#,
            r#"asap_proxy_upstream_latency_seconds_count{route="0"} 1"#,
            r#"asap_proxy_tokens_total{algorithm="RS256",provenance="minted",route="0"} 1"#,
            r#"asap_proxy_signing_failures_total{route="1"} 1"#,
            r#"asap_proxy_upstream_errors_total{kind="connection_timeout"} 1"#,
            r#"asap_proxy_denials_total{reason="unmatched"} 1"#,
            r#"asap_proxy_open_connections{listener="forward"} 1"#,
            r#"asap_proxy_open_connections{listener="reverse"} 0"#,
            r#"asap_proxy_open_tunnels{kind="intercept"} 1"#,
            r#"asap_proxy_open_tunnels{kind="tunnel"} 0"#,
            r#"asap_proxy_config_reloads_total{result="success"} 1"#,
            r#"asap_proxy_config_reloads_total{result="failure"} 0"#,
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
        }
        assert!(text.contains("asap_proxy_key_age_seconds{kid=\"svc/key1\"} "));
        for family in [
            "requests_total",
            "upstream_latency_seconds",
            "tokens_total",
            "signing_failures_total",
            "upstream_errors_total",
            "denials_total",
            "open_connections",
            "open_tunnels",
            "config_reloads_total",
            "key_age_seconds",
        ] {
            assert!(
                text.contains(&format!("# TYPE asap_proxy_{family} ")),
                "{family}"
            );
        }
    }

    #[test]
    fn methods_are_classed() {
        let metrics = Metrics::new();
        for method in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
            metrics.request(None, &method, StatusCode::OK);
        }
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            metrics.request(None, &method, StatusCode::BAD_GATEWAY);
        }
        let custom = Method::from_bytes(b"PURGE").expect("a valid token");
        metrics.request(None, &custom, StatusCode::BAD_GATEWAY);
        metrics.request(None, &Method::CONNECT, StatusCode::FORBIDDEN);

        let text = metrics.render();
        let lines = lines(&text);
        for expected in [
            r#"asap_proxy_requests_total{method_class="safe",route="none",status="200"} 4"#,
            r#"asap_proxy_requests_total{method_class="unsafe",route="none",status="502"} 5"#,
            r#"asap_proxy_requests_total{method_class="connect",route="none",status="403"} 1"#,
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn latency_has_the_whole_bucket_range() {
        let metrics = Metrics::new();
        metrics.upstream_latency(None, Duration::from_micros(200));
        metrics.upstream_latency(None, Duration::from_secs(20));
        metrics.upstream_latency(None, Duration::from_secs(60));

        let text = metrics.render();
        let lines = lines(&text);
        for expected in [
            r#"asap_proxy_upstream_latency_seconds_bucket{route="none",le="0.0005"} 1"#,
            r#"asap_proxy_upstream_latency_seconds_bucket{route="none",le="10"} 1"#,
            r#"asap_proxy_upstream_latency_seconds_bucket{route="none",le="30"} 2"#,
            r#"asap_proxy_upstream_latency_seconds_bucket{route="none",le="+Inf"} 3"#,
            r#"asap_proxy_upstream_latency_seconds_count{route="none"} 3"#,
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
        }
    }

    fn key_age(text: &str, kid: &str) -> Option<f64> {
        let prefix = format!("asap_proxy_key_age_seconds{{kid=\"{kid}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.parse().expect("a number"))
    }

    #[test]
    fn key_age_is_computed_at_scrape_time() {
        let metrics = Metrics::new();
        let two_seconds_ago = Instant::now()
            .checked_sub(Duration::from_secs(2))
            .expect("the monotonic clock is more than two seconds past its origin");
        metrics.set_key_loaded("old", two_seconds_ago);
        metrics.set_key_loaded("new", Instant::now());

        let first = metrics.render();
        let old = key_age(&first, "old").expect("old key reported");
        assert!((2.0..60.0).contains(&old), "{old}");
        let new = key_age(&first, "new").expect("new key reported");
        assert!((0.0..2.0).contains(&new), "{new}");

        let again = key_age(&metrics.render(), "old").expect("old key reported");
        assert!(again >= old, "{again} < {old}");

        metrics.forget_keys_except(&["new".to_owned()]);
        let after = metrics.render();
        assert_eq!(key_age(&after, "old"), None, "{after}");
        assert!(key_age(&after, "new").is_some());

        // Forgetting a key that was never scraped has no series to remove.
        metrics.set_key_loaded("unscraped", Instant::now());
        metrics.forget_keys_except(&[]);
        assert!(!metrics.render().contains("key_age_seconds{"));
    }

    #[test]
    fn guards_count_while_alive() {
        let metrics = Metrics::new();
        let open = |family: &IntGaugeVec, label: &str| family.with_label_values(&[label]).get();

        let first = metrics.connection_opened("reverse");
        let second = metrics.connection_opened("reverse");
        let tunnel = metrics.tunnel_opened("tunnel");
        assert_eq!(open(&metrics.open_connections, "reverse"), 2);
        assert_eq!(open(&metrics.open_tunnels, "tunnel"), 1);

        drop(first);
        assert_eq!(open(&metrics.open_connections, "reverse"), 1);
        drop(second);
        drop(tunnel);
        let text = metrics.render();
        let lines = lines(&text);
        assert!(lines.contains(&r#"asap_proxy_open_connections{listener="reverse"} 0"#));
        assert!(lines.contains(&r#"asap_proxy_open_tunnels{kind="tunnel"} 0"#));
    }

    #[test]
    fn registries_are_independent() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.denial("loop");
        assert!(
            a.render()
                .contains("asap_proxy_denials_total{reason=\"loop\"} 1")
        );
        assert!(!b.render().contains("denials_total{"));
    }

    #[test]
    fn debug_is_short() {
        let metrics = Metrics::new();
        metrics.set_key_loaded("k", Instant::now());
        assert_eq!(format!("{metrics:?}"), "Metrics { keys: 1, .. }");
    }
}
