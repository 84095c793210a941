//! What every connection and request of a node shares: its settings, its
//! connections, its backend, its metrics; and the calls into the backend
//! that are timed and counted the same wherever they come from.

use std::sync::Arc;
use std::time::Duration;

use switchboard_metrics::Metrics;
use switchboard_presence::{Accepted, Backend, BackendError, Outgoing};
use switchboard_protocol::{AcceptStatus, UserId};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::hub::Hub;
use crate::limits::ConnectionsPerIp;

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
            Ok(accepted) => {
                self.metrics.send_recipients.observe(accepted.recipients.len() as f64);
                match accepted.status {
                    AcceptStatus::Routed => &self.metrics.messages_in_routed,
                    AcceptStatus::Stored => &self.metrics.messages_in_stored,
                    AcceptStatus::Offline => &self.metrics.messages_in_offline,
                }
            }
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

    /// Not while draining, nor while the backend is unreachable, nor while
    /// a configured JWKS was never fetched.
    pub fn is_ready(&self) -> bool {
        !self.drain.is_cancelled() && self.backend.is_ready() && self.auth.is_ready()
    }

    /// When, after the drain starts, one connection is closed: spread over
    /// the first half of the grace period.
    pub fn drain_delay(&self) -> Duration {
        self.config.shutdown_grace.mul_f64(rand::random::<f64>() * 0.5)
    }
}
