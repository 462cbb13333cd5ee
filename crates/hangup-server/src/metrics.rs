//! The server's Prometheus metrics (`/metrics` on the admin endpoint).

use std::time::Duration;

use hangup_core::Cause;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// A `cause` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CauseLabel {
    cause: &'static str,
}

impl From<Cause> for CauseLabel {
    fn from(cause: Cause) -> Self {
        Self {
            cause: cause.as_str(),
        }
    }
}

/// Bucket bounds, in seconds, from 10 µs to about 5 min (×~3 a step): detection spans
/// microseconds (FIN, RST) to minutes (silent deaths with long budgets).
fn detection_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(1e-5, 3.0, 16)
}

fn histogram() -> Histogram {
    Histogram::new(detection_buckets())
}

#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub connections_opened: Counter,
    pub connections_open: Gauge,
    pub connections_refused: Counter,
    /// Admin connections closed at accept: the admin endpoint was at its limit.
    pub admin_refused: Counter,
    pub connections_closed: Family<CauseLabel, Counter>,
    pub sessions_started: Counter,
    pub sessions_open: Gauge,
    pub sessions_ended: Family<CauseLabel, Counter>,
    pub takeovers: Counter,
    pub jobs_started: Counter,
    pub jobs_done: Counter,
    pub jobs_cancelled: Family<CauseLabel, Counter>,
    /// Inbound silence when a connection ended, by cause.
    pub close_silence: Family<CauseLabel, Histogram, fn() -> Histogram>,
    /// From the moment a connection's end was decided to its running job stopping.
    pub job_stop: Histogram,
    /// Takeover: from the new `HELLO` to the old connection's `KICKED` being written.
    pub eviction: Histogram,
    /// Cluster mode: 1 while Redis is unreachable (local takeover only).
    pub cluster_degraded: Gauge,
    /// Cluster mode: round trips to Redis (one per pipeline).
    pub cluster_round_trips: Counter,
    /// Cluster mode: claims Redis granted an epoch.
    pub cluster_claims: Counter,
    /// Cluster mode: local sessions evicted for a newer owner on another node.
    pub cluster_evictions: Counter,
    /// Cluster mode: other nodes this node found dead (lease expired) and swept.
    pub cluster_nodes_lost: Counter,
}

impl Metrics {
    /// The metrics; in cluster mode (`node`), with the cluster's and a
    /// `hangup_node_info{node="…"}` naming the node.
    pub fn new(node: Option<&str>) -> Self {
        let mut registry = Registry::with_prefix("hangup");
        let metrics = Self {
            connections_opened: Counter::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            admin_refused: Counter::default(),
            connections_closed: Family::default(),
            sessions_started: Counter::default(),
            sessions_open: Gauge::default(),
            sessions_ended: Family::default(),
            takeovers: Counter::default(),
            jobs_started: Counter::default(),
            jobs_done: Counter::default(),
            jobs_cancelled: Family::default(),
            close_silence: Family::new_with_constructor(histogram),
            job_stop: histogram(),
            eviction: histogram(),
            cluster_degraded: Gauge::default(),
            cluster_round_trips: Counter::default(),
            cluster_claims: Counter::default(),
            cluster_evictions: Counter::default(),
            cluster_nodes_lost: Counter::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "connections_opened",
            "Connections accepted",
            metrics.connections_opened.clone(),
        );
        r.register(
            "connections_open",
            "Connections open now",
            metrics.connections_open.clone(),
        );
        r.register(
            "connections_refused",
            "Connections refused at the connection limit (ERR busy)",
            metrics.connections_refused.clone(),
        );
        r.register(
            "admin_refused",
            "Admin connections closed at accept: the admin endpoint was at its limit",
            metrics.admin_refused.clone(),
        );
        r.register(
            "connections_closed",
            "Connections ended, by cause",
            metrics.connections_closed.clone(),
        );
        r.register(
            "sessions_started",
            "Sessions opened by HELLO",
            metrics.sessions_started.clone(),
        );
        r.register(
            "sessions_open",
            "Sessions open now",
            metrics.sessions_open.clone(),
        );
        r.register(
            "sessions_ended",
            "Sessions ended, by cause",
            metrics.sessions_ended.clone(),
        );
        r.register(
            "takeovers",
            "Sessions evicted by a new HELLO for the same device",
            metrics.takeovers.clone(),
        );
        r.register(
            "jobs_started",
            "Jobs started on a worker",
            metrics.jobs_started.clone(),
        );
        r.register("jobs_done", "Jobs completed", metrics.jobs_done.clone());
        r.register(
            "jobs_cancelled",
            "Jobs cancelled, by cause",
            metrics.jobs_cancelled.clone(),
        );
        r.register_with_unit(
            "close_silence",
            "Inbound silence when a connection ended, by cause: for silent deaths \
             (timeout, heartbeat_missed, stalled) the time a dead peer went undetected",
            Unit::Seconds,
            metrics.close_silence.clone(),
        );
        r.register_with_unit(
            "job_stop",
            "From the decision to end a connection to its running job stopping",
            Unit::Seconds,
            metrics.job_stop.clone(),
        );
        r.register_with_unit(
            "eviction",
            "Takeover: from the new HELLO to KICKED queued on the old connection",
            Unit::Seconds,
            metrics.eviction.clone(),
        );
        if let Some(node) = node {
            r.register(
                "node",
                "This cluster node's id (--node-id)",
                Info::new(vec![("node".to_owned(), node.to_owned())]),
            );
            // Degraded until Redis first answers.
            metrics.cluster_degraded.set(1);
            r.register(
                "cluster_degraded",
                "1 while Redis is unreachable: local takeover only",
                metrics.cluster_degraded.clone(),
            );
            r.register(
                "cluster_round_trips",
                "Round trips to Redis (one per pipeline of claims and ends)",
                metrics.cluster_round_trips.clone(),
            );
            r.register(
                "cluster_claims",
                "Session claims Redis granted a fencing epoch",
                metrics.cluster_claims.clone(),
            );
            r.register(
                "cluster_evictions",
                "Local sessions evicted for a newer owner on another node",
                metrics.cluster_evictions.clone(),
            );
            r.register(
                "cluster_nodes_lost",
                "Other nodes found dead (lease expired) whose sessions this node ended",
                metrics.cluster_nodes_lost.clone(),
            );
        }
        Self {
            registry,
            ..metrics
        }
    }

    pub fn observe_close(&self, cause: Cause, silence: Duration) {
        self.connections_closed.get_or_create(&cause.into()).inc();
        self.close_silence
            .get_or_create(&cause.into())
            .observe(silence.as_secs_f64());
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
