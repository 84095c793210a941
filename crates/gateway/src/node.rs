//! One gateway node: its shared state, and its life from bind to exit.
//!
//! Shutdown order (SIGTERM from Kubernetes or the operator): stop being
//! ready and refuse new upgrades, close every connection with 1012 spread
//! over half the grace period so clients do not reconnect all at once,
//! wait for them until the grace deadline, then stop the HTTP side.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use switchboard_metrics::Metrics;
use switchboard_presence::{Accepted, Backend, BackendError, Counters, Outgoing, Settings};
use switchboard_protocol::{AcceptStatus, UserId};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::http;
use crate::hub::Hub;
use crate::limits::ConnectionsPerIp;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot start the backend: {0}")]
    Backend(#[from] switchboard_presence::BackendError),
}

/// What every connection and request of a node shares.
pub struct Node {
    pub config: Config,
    pub hub: Arc<Hub>,
    pub backend: Backend,
    pub metrics: Metrics,
    pub auth: Authenticator,
    /// Client connections this node may still take.
    pub capacity: Arc<Semaphore>,
    /// Client connections by source address.
    pub per_ip: Arc<ConnectionsPerIp>,
    /// Cancelled when the node starts to drain.
    pub drain: CancellationToken,
    /// Cancelled when the drain deadline passed: connections end at once.
    pub abort: CancellationToken,
    /// Every WebSocket connection task.
    pub connections: TaskTracker,
}

impl Node {
    /// Hands a message (from a client or the server API) to the backend and
    /// counts the outcome.
    pub async fn send(&self, outgoing: Outgoing) -> Result<Accepted, BackendError> {
        let timer = self.metrics.backend_send.start_timer();
        let result = self.backend.send(outgoing).await;
        timer.observe_duration();
        let counter = match &result {
            Ok(Accepted { duplicate: true, .. }) => &self.metrics.messages_in_duplicate,
            Ok(Accepted { status: AcceptStatus::Routed, .. }) => &self.metrics.messages_in_routed,
            Ok(Accepted { status: AcceptStatus::Stored, .. }) => &self.metrics.messages_in_stored,
            Err(error) => {
                self.metrics.redis_errors.inc();
                tracing::warn!(%error, "send not accepted");
                &self.metrics.messages_in_rejected
            }
        };
        counter.inc();
        result
    }

    /// How many connections each user has, anywhere; timed and counted.
    pub async fn online(&self, users: &[UserId]) -> Result<Vec<usize>, BackendError> {
        let timer = self.metrics.backend_presence.start_timer();
        let result = self.backend.online(users).await;
        timer.observe_duration();
        if let Err(error) = &result {
            self.metrics.redis_errors.inc();
            tracing::warn!(%error, "presence lookup failed");
        }
        result
    }

    pub fn is_ready(&self) -> bool {
        !self.drain.is_cancelled() && self.backend.is_ready()
    }

    /// When, after the drain starts, one connection is closed: spread over
    /// the first half of the grace period.
    pub fn drain_delay(&self) -> Duration {
        self.config.shutdown_grace.mul_f64(rand::random::<f64>() * 0.5)
    }
}

/// Runs a node on already-bound listeners until `shutdown` resolves, then
/// drains it. Tests pass listeners bound to port 0 and their own signal.
pub async fn serve(
    config: Config,
    public: TcpListener,
    metrics_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let metrics = Metrics::new(&config.node_id);
    let hub = Arc::new(Hub::default());
    let counters = Counters {
        inbox_stored: metrics.inbox_stored.clone(),
        backend_errors: metrics.redis_errors.clone(),
        route_gaps: metrics.route_gaps.clone(),
    };
    let settings = Settings {
        node_id: config.node_id.clone(),
        mode: config.mode,
        inbox_max_len: config.inbox_max_len,
        inbox_ttl: config.inbox_ttl,
        node_ttl: config.node_ttl,
        prefix: config.redis_prefix.clone(),
    };
    let backend = match &config.redis_url {
        Some(url) => Backend::redis(url, settings, hub.clone(), counters).await?,
        None => Backend::memory(settings, hub.clone(), counters),
    };
    if config.dev_insecure_auth {
        tracing::warn!("INSECURE: --dev-insecure-auth accepts ?user=ID without a token; never use it in production");
    }
    let node = Arc::new(Node {
        auth: Authenticator::new(
            config.jwt_secret.as_deref(),
            config.jwt_audience.as_deref(),
            config.dev_insecure_auth,
        ),
        capacity: Arc::new(Semaphore::new(config.max_connections)),
        per_ip: Arc::new(ConnectionsPerIp::new(config.max_connections_per_ip)),
        config,
        hub,
        backend,
        metrics,
        drain: CancellationToken::new(),
        abort: CancellationToken::new(),
        connections: TaskTracker::new(),
    });
    tracing::info!(node = %node.backend.node_id(), mode = ?node.config.mode, redis = node.config.redis_url.is_some(), "serving");

    let stop = CancellationToken::new();
    let background = TaskTracker::new();
    background.spawn(http::accept(public, node.clone(), stop.clone()));
    background.spawn(switchboard_metrics::serve(metrics_listener, node.metrics.clone(), stop.clone()));
    background.close();

    shutdown.await;
    let open = node.connections.len();
    tracing::info!(open, grace = ?node.config.shutdown_grace, "draining");
    node.drain.cancel();
    node.connections.close();
    if tokio::time::timeout(node.config.shutdown_grace, node.connections.wait()).await.is_err() {
        tracing::warn!(open = node.connections.len(), "drain deadline passed; closing the rest now");
        node.abort.cancel();
        node.connections.wait().await;
    }
    node.backend.shutdown().await;
    stop.cancel();
    background.wait().await;
    tracing::info!("stopped");
    Ok(())
}
