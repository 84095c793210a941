//! Switchboard's metrics: one explicit [`prometheus::Registry`] per node,
//! the handles the hot path increments (label values resolved once, so an
//! update is one atomic add, no lock, no allocation), and the exporter that
//! serves them on the internal port.
//!
//! Label values are bounded: never a user or connection id.

mod exporter;

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub use exporter::serve;

/// Buckets for counts of things per batch: 1 to 1024.
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// Buckets for latencies: 50 us to 5 s.
const LATENCY_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Why a connection ended, as counted in `switchboard_disconnects_total`.
pub const DISCONNECT_REASONS: [&str; 8] =
    ["client", "idle", "protocol", "too_large", "abuse", "slow_consumer", "draining", "internal"];

/// Error codes sent to clients, as counted in `switchboard_client_errors_total`.
pub const ERROR_CODES: [&str; 5] = ["bad_frame", "too_large", "rate_limited", "invalid_recipient", "internal"];

/// Backend operations timed in `switchboard_backend_seconds`.
pub const BACKEND_OPS: [&str; 4] = ["send", "connect", "ack", "presence"];

/// Event types counted in `switchboard_webhook_events_total`.
pub const WEBHOOK_TYPES: [&str; 3] = ["user.online", "user.offline", "message.stored"];

/// What became of a webhook delivery attempt, as counted in
/// `switchboard_webhook_events_total`: `delivered` (a 2xx), `failed` (an
/// attempt that will be retried), `expired` (dropped past
/// `webhook-max-age`).
pub const WEBHOOK_OUTCOMES: [&str; 3] = ["delivered", "failed", "expired"];

/// Every metric of one node, registered in its own registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub connections: IntGauge,
    pub connections_total: IntCounter,
    pub messages_in_routed: IntCounter,
    pub messages_in_stored: IntCounter,
    pub messages_in_duplicate: IntCounter,
    pub messages_in_rejected: IntCounter,
    /// Ephemeral sends that found nobody live.
    pub messages_in_offline: IntCounter,
    pub messages_out_delivered: IntCounter,
    pub route_seconds: Histogram,
    pub redis_errors: IntCounter,
    pub slow_consumer_disconnects: IntCounter,
    pub inbox_stored: IntCounter,
    pub inbox_replayed: IntCounter,
    pub route_gaps: IntCounter,
    /// Recipients per accepted send.
    pub send_recipients: Histogram,
    /// Items per envelope published to another node.
    pub envelope_items: Histogram,
    /// Envelopes published to other nodes and received from them (the
    /// node's probe of its own channel not counted).
    pub envelopes_out: IntCounter,
    pub envelopes_in: IntCounter,
    /// By [`DISCONNECT_REASONS`].
    pub disconnects: IntCounterVec,
    /// By [`ERROR_CODES`].
    pub client_errors: IntCounterVec,
    /// `switchboard_backend_seconds`, one per operation of [`BACKEND_OPS`].
    pub backend_send: Histogram,
    pub backend_connect: Histogram,
    pub backend_ack: Histogram,
    pub backend_presence: Histogram,
    /// By type ([`WEBHOOK_TYPES`]) and outcome ([`WEBHOOK_OUTCOMES`]).
    pub webhook_events: IntCounterVec,
    /// Events queued for the application backend and not yet delivered,
    /// in the whole cluster.
    pub webhook_queue_depth: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric, at zero, for node `node`.
    pub fn new(node: &str) -> Self {
        let registry = Registry::new();
        let r = &registry;
        let messages = register(
            r,
            IntCounterVec::new(
                Opts::new("switchboard_messages_total", "Messages in (send frames, API sends) and out, by outcome"),
                &["direction", "outcome"],
            ),
        );
        let build_info = register(
            r,
            IntGaugeVec::new(
                Opts::new("switchboard_build_info", "Build and node of this process, always 1"),
                &["version", "node"],
            ),
        );
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), node]).set(1);
        let envelopes = register(
            r,
            IntCounterVec::new(
                Opts::new("switchboard_envelopes_total", "Envelopes published to other nodes (out) and from them (in)"),
                &["direction"],
            ),
        );
        let disconnects = register(
            r,
            IntCounterVec::new(Opts::new("switchboard_disconnects_total", "Connections ended, by reason"), &["reason"]),
        );
        let client_errors = register(
            r,
            IntCounterVec::new(
                Opts::new("switchboard_client_errors_total", "Error frames sent to clients, by code"),
                &["code"],
            ),
        );
        let backend_seconds = register(
            r,
            HistogramVec::new(
                HistogramOpts::new("switchboard_backend_seconds", "Time of backend (Redis) operations, by operation")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["op"],
            ),
        );
        let webhook_events = register(
            r,
            IntCounterVec::new(
                Opts::new("switchboard_webhook_events_total", "Webhook delivery attempts, by event type and outcome"),
                &["type", "outcome"],
            ),
        );
        // Every label value exists from the start, at zero.
        for kind in WEBHOOK_TYPES {
            for outcome in WEBHOOK_OUTCOMES {
                webhook_events.with_label_values(&[kind, outcome]);
            }
        }
        for reason in DISCONNECT_REASONS {
            disconnects.with_label_values(&[reason]);
        }
        for code in ERROR_CODES {
            client_errors.with_label_values(&[code]);
        }
        let [backend_send, backend_connect, backend_ack, backend_presence] =
            BACKEND_OPS.map(|op| backend_seconds.with_label_values(&[op]));
        Self {
            connections: register(r, IntGauge::new("switchboard_connections", "Open client WebSocket connections")),
            connections_total: register(
                r,
                IntCounter::new("switchboard_connections_total", "Client WebSocket connections opened"),
            ),
            messages_in_routed: messages.with_label_values(&["in", "routed"]),
            messages_in_stored: messages.with_label_values(&["in", "stored"]),
            messages_in_duplicate: messages.with_label_values(&["in", "duplicate"]),
            messages_in_rejected: messages.with_label_values(&["in", "rejected"]),
            messages_in_offline: messages.with_label_values(&["in", "offline"]),
            messages_out_delivered: messages.with_label_values(&["out", "delivered"]),
            route_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "switchboard_route_seconds",
                        "From a send received to the message frame written on the recipient's node",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                ),
            ),
            redis_errors: register(
                r,
                IntCounter::new("switchboard_redis_errors_total", "Failed backend (Redis) operations"),
            ),
            slow_consumer_disconnects: register(
                r,
                IntCounter::new(
                    "switchboard_slow_consumer_disconnects_total",
                    "Connections closed because their send queue overflowed",
                ),
            ),
            inbox_stored: register(
                r,
                IntCounter::new("switchboard_inbox_stored_total", "Messages written to an inbox"),
            ),
            inbox_replayed: register(
                r,
                IntCounter::new("switchboard_inbox_replayed_total", "Inbox messages replayed to connecting clients"),
            ),
            route_gaps: register(
                r,
                IntCounter::new(
                    "switchboard_route_gaps_total",
                    "Envelopes from other nodes detected missing by sequence number",
                ),
            ),
            send_recipients: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new("switchboard_send_recipients", "Recipients per accepted send")
                        .buckets(COUNT_BUCKETS.to_vec()),
                ),
            ),
            envelope_items: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new("switchboard_envelope_items", "Items per envelope published to another node")
                        .buckets(COUNT_BUCKETS.to_vec()),
                ),
            ),
            envelopes_out: envelopes.with_label_values(&["out"]),
            envelopes_in: envelopes.with_label_values(&["in"]),
            disconnects,
            client_errors,
            backend_send,
            backend_connect,
            backend_ack,
            backend_presence,
            webhook_events,
            webhook_queue_depth: register(
                r,
                IntGauge::new(
                    "switchboard_webhook_queue_depth",
                    "Events queued for the application backend and not yet delivered (whole cluster)",
                ),
            ),
            registry,
        }
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Text encoding of well-formed families into a String cannot fail.
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut text);
        text
    }
}

/// Registers `metric` (created from constant names and labels, so neither
/// step can fail for this fixed set) and returns it.
fn register<M: Collector + Clone + 'static>(registry: &Registry, metric: prometheus::Result<M>) -> M {
    #[allow(clippy::expect_used)]
    let metric = metric.expect("metric definitions are constant and valid");
    #[allow(clippy::expect_used)]
    registry.register(Box::new(metric.clone())).expect("metric names are unique");
    metric
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_metric_exists_at_start() {
        let text = Metrics::new("n1").render();
        for name in [
            "switchboard_connections 0",
            "switchboard_connections_total 0",
            "switchboard_messages_total{direction=\"in\",outcome=\"routed\"} 0",
            "switchboard_messages_total{direction=\"in\",outcome=\"stored\"} 0",
            "switchboard_messages_total{direction=\"in\",outcome=\"duplicate\"} 0",
            "switchboard_messages_total{direction=\"in\",outcome=\"rejected\"} 0",
            "switchboard_messages_total{direction=\"in\",outcome=\"offline\"} 0",
            "switchboard_send_recipients_bucket{le=\"1\"} 0",
            "switchboard_envelope_items_count 0",
            "switchboard_envelopes_total{direction=\"out\"} 0",
            "switchboard_messages_total{direction=\"out\",outcome=\"delivered\"} 0",
            "switchboard_route_seconds_bucket{le=\"0.001\"} 0",
            "switchboard_redis_errors_total 0",
            "switchboard_slow_consumer_disconnects_total 0",
            "switchboard_inbox_stored_total 0",
            "switchboard_route_gaps_total 0",
            "switchboard_build_info{node=\"n1\",version=",
            "switchboard_disconnects_total{reason=\"slow_consumer\"} 0",
            "switchboard_client_errors_total{code=\"rate_limited\"} 0",
            "switchboard_backend_seconds_count{op=\"send\"} 0",
            "switchboard_webhook_events_total{outcome=\"expired\",type=\"message.stored\"} 0",
            "switchboard_webhook_queue_depth 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
