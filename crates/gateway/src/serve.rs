//! A node's life from bound listeners to exit.
//!
//! Shutdown order (SIGTERM from Kubernetes or the operator): stop being
//! ready and refuse new upgrades, close every connection with 1012 spread
//! over half the grace period so clients do not reconnect all at once,
//! wait for them until the grace deadline, then stop the HTTP side.

use std::future::Future;
use std::sync::Arc;

use switchboard_metrics::Metrics;
use switchboard_presence::{Backend, Counters, EventSettings, Settings};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::http;
use crate::hub::Hub;
use crate::limits::ConnectionsPerIp;
use crate::node::Node;
use crate::webhook::{Delivery, Poster};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot start the backend: {0}")]
    Backend(#[from] switchboard_presence::BackendError),
    #[error("cannot fetch --jwks-url: {0}")]
    Jwks(crate::jwks::JwksError),
    #[error("cannot set up --webhook-url: {0}")]
    Webhook(std::io::Error),
}

/// Runs a node on already-bound listeners until `shutdown` resolves, then
/// drains it. Tests pass listeners bound to port 0 and their own signal.
pub async fn serve(
    config: Config,
    public: TcpListener,
    metrics_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    // Before the backend: nothing is left to stop if this fails.
    let auth = Authenticator::new(&config).map_err(ServeError::Jwks)?;
    let poster = config.webhook.as_ref().map(Poster::new).transpose().map_err(ServeError::Webhook)?;
    let metrics = Metrics::new(&config.node_id);
    let hub = Arc::new(Hub::default());
    let counters = Counters {
        inbox_stored: metrics.inbox_stored.clone(),
        backend_errors: metrics.redis_errors.clone(),
        route_gaps: metrics.route_gaps.clone(),
        envelope_items: metrics.envelope_items.clone(),
        envelopes_out: metrics.envelopes_out.clone(),
        envelopes_in: metrics.envelopes_in.clone(),
    };
    let settings = Settings {
        node_id: config.node_id.clone(),
        mode: config.mode,
        inbox_max_len: config.inbox_max_len,
        inbox_ttl: config.inbox_ttl,
        device_ttl: config.device_ttl,
        node_ttl: config.node_ttl,
        prefix: config.redis_prefix.clone(),
        batch_window: config.redis_batch_window,
        events: config.webhook.as_ref().map(|webhook| EventSettings { bodies: webhook.bodies }),
    };
    let backend = match &config.redis_url {
        Some(url) => Backend::redis(url, settings, hub.clone(), counters).await?,
        None => Backend::memory(settings, hub.clone(), counters),
    };
    if config.dev_insecure_auth {
        tracing::warn!("INSECURE: --dev-insecure-auth accepts ?user=ID without a token; never use it in production");
    }
    if let Some(url) = &config.jwks_url
        && url.scheme_str() == Some("http")
        && !is_loopback(url)
    {
        tracing::warn!(%url, "--jwks-url is plain http: whoever sits on the way can hand this node keys");
    }
    let node = Arc::new(Node {
        auth,
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
    if let Some(jwks) = node.auth.jwks() {
        background.spawn(jwks.clone().run(node.config.jwks_refresh, stop.clone()));
    }
    background.close();
    // Its own owner: it stops after the connections, before the backend
    // it reads from.
    let webhooks = CancellationToken::new();
    let delivery = TaskTracker::new();
    if let (Some(poster), Some(queue)) = (poster, node.backend.events()) {
        delivery.spawn(Delivery::new(queue, poster, node.metrics.clone()).run(webhooks.clone()));
    }
    delivery.close();

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
    webhooks.cancel();
    delivery.wait().await;
    node.backend.shutdown().await;
    stop.cancel();
    background.wait().await;
    tracing::info!("stopped");
    Ok(())
}

fn is_loopback(url: &::http::Uri) -> bool {
    let host = url.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
