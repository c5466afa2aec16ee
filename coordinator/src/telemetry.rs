//! Prometheus metrics of the coordinator, served as text on `GET /metrics` (axum) on
//! their own port (`metrics_listen`). [`Telemetry`] is a cheap-to-clone handle: the gRPC
//! services and the background loops record into it; the gauges loop refreshes the
//! per-sweep task gauges from Redis.
//!
//! Two formats, by the scrape's `Accept` header: OpenMetrics 1.0 when asked for
//! (`application/openmetrics-text`, what a Prometheus server prefers), otherwise the
//! Prometheus text format 0.0.4 (curl, `promtool check metrics`, older scrapers), in which
//! a counter's `# HELP`/`# TYPE` name the sample (`..._total`) and there is no `# EOF`
//! ([`openmetrics_to_prometheus_text`]).
//!
//! Exported (all prefixed `tsweep_`):
//! - `tsweep_tasks{sweep, state}` gauge: tasks per sweep and state
//!   (pending | leased | running | succeeded | failed | cancelled)
//! - `tsweep_queue_depth` gauge: pending + leased + running over all active sweeps (the
//!   autoscaling signal: scale workers to zero when it is 0)
//! - `tsweep_workers_registered` gauge
//! - `tsweep_lease_expiries_total` counter: leases the reaper took back
//! - `tsweep_control_plane_outages_total` counter: outages this coordinator's beat found
//!   (a gap with no coordinator beat, or a Redis restart; leases get that time back)
//! - `tsweep_stale_reports_total{kind}` counter: fenced reports (complete | fail | metrics)
//! - `tsweep_acquire_latency_seconds` histogram: AcquireTask handling time
//! - `tsweep_metrics_entries_total` counter: metrics stream entries applied
//! - `tsweep_redis_up` gauge: 1 while Redis answers, else 0

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tsweep_proto::v1::TaskCounts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SweepStateLabels {
    pub sweep: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Which fenced report was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaleKind {
    Complete,
    Fail,
    Metrics,
}

impl StaleKind {
    fn name(self) -> &'static str {
        match self {
            StaleKind::Complete => "complete",
            StaleKind::Fail => "fail",
            StaleKind::Metrics => "metrics",
        }
    }
}

struct Metrics {
    registry: Registry,
    tasks: Family<SweepStateLabels, Gauge>,
    queue_depth: Gauge,
    workers_registered: Gauge,
    lease_expiries: Counter,
    control_plane_outages: Counter,
    stale_reports: Family<KindLabels, Counter>,
    acquire_latency: Histogram,
    metrics_entries: Counter,
    redis_up: Gauge,
}

/// Handle to the coordinator's metrics; clone freely.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Metrics>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tsweep");
        let tasks = Family::<SweepStateLabels, Gauge>::default();
        registry.register("tasks", "Tasks per sweep and state", tasks.clone());
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Pending plus leased plus running tasks over all active sweeps",
            queue_depth.clone(),
        );
        let workers_registered = Gauge::default();
        registry.register("workers_registered", "Workers registered", workers_registered.clone());
        let lease_expiries = Counter::default();
        registry.register("lease_expiries", "Leases taken back by the reaper", lease_expiries.clone());
        let control_plane_outages = Counter::default();
        registry.register(
            "control_plane_outages",
            "Control-plane outages found by this coordinator's liveness beat",
            control_plane_outages.clone(),
        );
        let stale_reports = Family::<KindLabels, Counter>::default();
        registry.register(
            "stale_reports",
            "Reports of an attempt that no longer holds the lease, refused",
            stale_reports.clone(),
        );
        let acquire_latency = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        registry.register("acquire_latency_seconds", "AcquireTask handling time in seconds", acquire_latency.clone());
        let metrics_entries = Counter::default();
        registry.register(
            "metrics_entries",
            "Metrics stream entries applied to task progress",
            metrics_entries.clone(),
        );
        let redis_up = Gauge::default();
        registry.register("redis_up", "1 while Redis answers, else 0", redis_up.clone());
        Self {
            inner: Arc::new(Metrics {
                registry,
                tasks,
                queue_depth,
                workers_registered,
                lease_expiries,
                control_plane_outages,
                stale_reports,
                acquire_latency,
                metrics_entries,
                redis_up,
            }),
        }
    }

    /// Replaces every per-sweep gauge with `sweeps` (sweeps not listed disappear) and
    /// recomputes the queue depth.
    pub fn set_sweep_counts<'a>(&self, sweeps: impl IntoIterator<Item = (&'a str, &'a TaskCounts)>) {
        let metrics = &self.inner;
        metrics.tasks.clear();
        let mut depth: u64 = 0;
        for (sweep, counts) in sweeps {
            for (state, value) in [
                ("pending", counts.pending),
                ("leased", counts.leased),
                ("running", counts.running),
                ("succeeded", counts.succeeded),
                ("failed", counts.failed),
                ("cancelled", counts.cancelled),
            ] {
                let labels = SweepStateLabels { sweep: sweep.to_string(), state };
                metrics.tasks.get_or_create(&labels).set(clamp_i64(value));
            }
            depth = depth.saturating_add(counts.pending + counts.leased + counts.running);
        }
        metrics.queue_depth.set(clamp_i64(depth));
    }

    pub fn set_workers_registered(&self, workers: u64) {
        self.inner.workers_registered.set(clamp_i64(workers));
    }

    pub fn add_lease_expiries(&self, expired: u64) {
        self.inner.lease_expiries.inc_by(expired);
    }

    pub fn add_control_plane_outage(&self) {
        self.inner.control_plane_outages.inc();
    }

    pub fn add_stale_reports(&self, kind: StaleKind, count: u64) {
        self.inner.stale_reports.get_or_create(&KindLabels { kind: kind.name() }).inc_by(count);
    }

    pub fn observe_acquire(&self, elapsed: Duration) {
        self.inner.acquire_latency.observe(elapsed.as_secs_f64());
    }

    pub fn add_metrics_entries(&self, count: u64) {
        self.inner.metrics_entries.inc_by(count);
    }

    pub fn set_redis_up(&self, up: bool) {
        self.inner.redis_up.set(i64::from(up));
    }

    /// The OpenMetrics exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry) {
            tracing::warn!(%error, "encoding metrics failed");
        }
        text
    }

    /// The Prometheus text format (0.0.4) exposition of every metric.
    pub fn encode_prometheus_text(&self) -> String {
        openmetrics_to_prometheus_text(&self.encode())
    }
}

/// Content type of [`Telemetry::encode`].
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of [`Telemetry::encode_prometheus_text`].
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites an OpenMetrics exposition as the Prometheus text format 0.0.4: a counter
/// family `x` (samples `x_total`) is announced as `# HELP x_total` / `# TYPE x_total
/// counter`, `unknown` becomes `untyped`, and `# UNIT` and `# EOF` lines go (the text
/// format has neither). Sample lines are the same in both formats.
pub fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let tail = if *prefix == "# TYPE " && tail == "unknown" { "untyped" } else { tail };
            let name = if counters.contains(name) { format!("{name}_total") } else { name.to_string() };
            Some(format!("{prefix}{name} {tail}"))
        });
        match rewritten {
            Some(line) => text.push_str(line.trim_end()),
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    telemetry: Telemetry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::{header, HeaderMap};
    use axum::routing::get;
    let router = axum::Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let telemetry = telemetry.clone();
            async move {
                let openmetrics = headers
                    .get_all(header::ACCEPT)
                    .iter()
                    .filter_map(|value| value.to_str().ok())
                    .any(|accept| accept.contains("application/openmetrics-text"));
                if openmetrics {
                    ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], telemetry.encode())
                } else {
                    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE)], telemetry.encode_prometheus_text())
                }
            }
        }),
    );
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// Binds the metrics listener (separate so that `serve` can report a bind error at once).
pub async fn bind_metrics(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_depth_sums_pending_leased_running_over_sweeps() {
        let telemetry = Telemetry::new();
        let a = TaskCounts { pending: 3, leased: 1, running: 2, succeeded: 7, ..Default::default() };
        let b = TaskCounts { pending: 4, ..Default::default() };
        telemetry.set_sweep_counts([("a", &a), ("b", &b)]);
        telemetry.add_stale_reports(StaleKind::Complete, 2);
        telemetry.observe_acquire(Duration::from_micros(300));
        let text = telemetry.encode();
        assert!(text.contains("tsweep_queue_depth 10"), "{text}");
        assert!(text.contains(r#"tsweep_tasks{sweep="a",state="succeeded"} 7"#), "{text}");
        assert!(text.contains(r#"tsweep_stale_reports_total{kind="complete"} 2"#), "{text}");
        assert!(text.contains("tsweep_acquire_latency_seconds_count 1"), "{text}");

        let plain = telemetry.encode_prometheus_text();
        assert!(plain.contains("# TYPE tsweep_stale_reports_total counter\n"), "{plain}");
        assert!(plain.contains("# HELP tsweep_lease_expiries_total "), "{plain}");
        assert!(plain.contains("# TYPE tsweep_queue_depth gauge\n"), "{plain}");
        assert!(plain.contains("# TYPE tsweep_acquire_latency_seconds histogram\n"), "{plain}");
        assert!(!plain.contains("# EOF"), "{plain}");
    }
}
