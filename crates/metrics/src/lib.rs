//! Switchboard's metrics: one explicit [`prometheus::Registry`] per node,
//! the handles the hot path increments (pre-resolved, so an update is one
//! atomic add), and the exporter that serves them on the internal port.
//!
//! Label values are bounded: never a user or connection id.

mod exporter;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub use exporter::serve;

/// Buckets for routing latency: 100 us to 5 s.
const ROUTE_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

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
    pub messages_out_delivered: IntCounter,
    pub route_seconds: Histogram,
    pub redis_errors: IntCounter,
    pub slow_consumer_disconnects: IntCounter,
    pub inbox_stored: IntCounter,
    pub route_gaps: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric, at zero, for node `node`.
    pub fn new(node: &str) -> Self {
        let registry = Registry::new();
        let connections = IntGauge::new("switchboard_connections", "Open client WebSocket connections");
        let connections_total = IntCounter::new("switchboard_connections_total", "Client WebSocket connections opened");
        let messages = IntCounterVec::new(
            Opts::new("switchboard_messages_total", "Messages by direction and outcome"),
            &["direction", "outcome"],
        );
        let route_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "switchboard_route_seconds",
                "From a send received to the message frame written on the recipient's node",
            )
            .buckets(ROUTE_BUCKETS.to_vec()),
        );
        let redis_errors = IntCounter::new("switchboard_redis_errors_total", "Failed backend (Redis) operations");
        let slow_consumer_disconnects = IntCounter::new(
            "switchboard_slow_consumer_disconnects_total",
            "Connections closed because their send queue overflowed",
        );
        let inbox_stored = IntCounter::new("switchboard_inbox_stored_total", "Messages written to an inbox");
        let route_gaps = IntCounter::new(
            "switchboard_route_gaps_total",
            "Envelopes from other nodes detected missing by sequence number",
        );
        let build_info = IntGaugeVec::new(
            Opts::new("switchboard_build_info", "Build and node of this process, always 1"),
            &["version", "node"],
        );

        // Names and label sets are constants: creation and registration of
        // this fixed set cannot fail.
        #[allow(clippy::expect_used)]
        let metrics = (|| -> prometheus::Result<Self> {
            let messages = messages?;
            let build_info = build_info?;
            build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), node]).set(1);
            let metrics = Self {
                connections: connections?,
                connections_total: connections_total?,
                messages_in_routed: messages.with_label_values(&["in", "routed"]),
                messages_in_stored: messages.with_label_values(&["in", "stored"]),
                messages_in_duplicate: messages.with_label_values(&["in", "duplicate"]),
                messages_in_rejected: messages.with_label_values(&["in", "rejected"]),
                messages_out_delivered: messages.with_label_values(&["out", "delivered"]),
                route_seconds: route_seconds?,
                redis_errors: redis_errors?,
                slow_consumer_disconnects: slow_consumer_disconnects?,
                inbox_stored: inbox_stored?,
                route_gaps: route_gaps?,
                registry,
            };
            let r = &metrics.registry;
            r.register(Box::new(metrics.connections.clone()))?;
            r.register(Box::new(metrics.connections_total.clone()))?;
            r.register(Box::new(messages))?;
            r.register(Box::new(metrics.route_seconds.clone()))?;
            r.register(Box::new(metrics.redis_errors.clone()))?;
            r.register(Box::new(metrics.slow_consumer_disconnects.clone()))?;
            r.register(Box::new(metrics.inbox_stored.clone()))?;
            r.register(Box::new(metrics.route_gaps.clone()))?;
            r.register(Box::new(build_info))?;
            Ok(metrics)
        })()
        .expect("the fixed metric set registers");
        metrics
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Text encoding of well-formed families into a String cannot fail.
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut text);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_metric_exists_at_start() {
        let text = Metrics::new("n1").render();
        for name in [
            "switchboard_connections ",
            "switchboard_connections_total ",
            "switchboard_messages_total{direction=\"in\",outcome=\"routed\"} 0",
            "switchboard_messages_total{direction=\"in\",outcome=\"stored\"} 0",
            "switchboard_messages_total{direction=\"in\",outcome=\"duplicate\"} 0",
            "switchboard_messages_total{direction=\"in\",outcome=\"rejected\"} 0",
            "switchboard_messages_total{direction=\"out\",outcome=\"delivered\"} 0",
            "switchboard_route_seconds_bucket",
            "switchboard_redis_errors_total 0",
            "switchboard_slow_consumer_disconnects_total 0",
            "switchboard_inbox_stored_total 0",
            "switchboard_route_gaps_total 0",
            "switchboard_build_info{node=\"n1\",version=",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
