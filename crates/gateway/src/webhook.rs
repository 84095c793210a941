//! Delivery of events to the application backend (`--webhook-url`).
//!
//! One loop takes events from the backend's queue (the shards this node
//! holds) and puts each in its user's lane. A lane is worked by one task
//! that sends its events one after another: a user's later event is not
//! sent while an earlier one waits for a retry, while other users' lanes
//! go on. Each event is one POST of its queued bytes, signed with
//! HMAC-SHA256; a 2xx forgets it, anything else (an error status, a
//! refused connection, no answer within [`REQUEST_TIMEOUT`]) is retried
//! with exponential backoff and jitter until `--webhook-max-age`, past which
//! the event is dropped and counted. At most [`CONCURRENCY`] requests are in
//! flight; connections are kept and reused.
//!
//! Nothing on a message's path waits on this: the queue is written by the
//! backend's scripts, and this loop is a task of its own, ended by the
//! node's shutdown. What it holds and has not delivered stays queued (in
//! Redis, pending for whoever holds the shard next).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use switchboard_metrics::Metrics;
use switchboard_presence::{EventQueue, QueuedEvent};
use switchboard_protocol::EventType;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::WebhookConfig;

/// The header that carries the signature, `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-switchboard-signature";
/// Requests in flight at most.
const CONCURRENCY: usize = 32;
/// A request without an answer in this time failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Events held in lanes at most; the queue keeps the rest.
const HELD: usize = 4096;
/// The first retry comes after about this long, each next one twice as
/// late, up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often the queue's depth is read for its gauge.
const DEPTH_EVERY: Duration = Duration::from_secs(2);
/// After the queue failed, it is asked again this late.
const QUEUE_RETRY: Duration = Duration::from_secs(1);
/// A failing endpoint is logged at `warn` at most this often (ms).
const WARN_EVERY_MS: u64 = 10_000;
/// What is read of an answer's body (and then dropped), so that its
/// connection can be used again.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// What sends one event: the HTTP client with its pool, the URL, the key.
pub struct Poster {
    client: HttpClient,
    url: Uri,
    key: Hmac<Sha256>,
    max_age: Duration,
}

impl Poster {
    /// Fails only when `https` is asked for and there are no root certificates.
    pub fn new(config: &WebhookConfig) -> Result<Self, std::io::Error> {
        let connector = crate::outbound::connector(config.url.scheme() == Some(&http::uri::Scheme::HTTPS))?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(CONCURRENCY)
            .build(connector);
        // HMAC takes a key of any length.
        let key = Hmac::<Sha256>::new_from_slice(config.secret.as_bytes()).map_err(std::io::Error::other)?;
        Ok(Self { client, url: config.url.clone(), key, max_age: config.max_age })
    }
}

/// The delivery of one node.
pub struct Delivery {
    queue: EventQueue,
    poster: Poster,
    metrics: Metrics,
    permits: Semaphore,
    /// Per user, the events taken and not yet done, oldest first.
    lanes: Mutex<HashMap<String, VecDeque<QueuedEvent>>>,
    /// Woken when an event left a lane.
    room: Notify,
    /// When a failure was last logged at `warn` (ms).
    warned_ms: AtomicU64,
    workers: TaskTracker,
}

/// How an event left its lane.
enum Left {
    /// Delivered or dropped: forget it.
    Done,
    /// This node no longer delivers its shard, or it stops: leave it queued.
    Abandoned,
}

impl Delivery {
    pub fn new(queue: EventQueue, poster: Poster, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            queue,
            poster,
            metrics,
            permits: Semaphore::new(CONCURRENCY),
            lanes: Mutex::new(HashMap::new()),
            room: Notify::new(),
            warned_ms: AtomicU64::new(0),
            workers: TaskTracker::new(),
        })
    }

    /// Takes and delivers events until `stop`, then waits for its lanes.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        self.workers.spawn(self.clone().gauge(stop.clone()));
        loop {
            let held: usize = self.lock().values().map(VecDeque::len).sum();
            if held >= HELD {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = self.room.notified() => continue,
                }
            }
            let taken = tokio::select! {
                () = stop.cancelled() => break,
                taken = self.queue.take(HELD - held) => taken,
            };
            match taken {
                Ok(events) => {
                    for event in events {
                        self.hand(event, &stop);
                    }
                }
                Err(error) => {
                    self.metrics.redis_errors.inc();
                    tracing::warn!(%error, "cannot take events from the queue");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(QUEUE_RETRY) => {}
                    }
                }
            }
        }
        self.workers.close();
        self.workers.wait().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<QueuedEvent>>> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts an event at the end of its user's lane, starting the lane's
    /// worker when the lane was idle.
    fn hand(self: &Arc<Self>, event: QueuedEvent, stop: &CancellationToken) {
        let user = event.user.clone();
        let mut lanes = self.lock();
        let lane = lanes.entry(user.clone()).or_default();
        lane.push_back(event);
        if lane.len() == 1 {
            self.workers.spawn(self.clone().work(user, stop.clone()));
        }
    }

    /// Sends one user's events in order until its lane is empty.
    async fn work(self: Arc<Self>, user: String, stop: CancellationToken) {
        loop {
            let Some(event) = self.lock().get(&user).and_then(|lane| lane.front().cloned()) else { return };
            let left = self.deliver(&event, &stop).await;
            let mut lanes = self.lock();
            let Some(lane) = lanes.get_mut(&user) else { return };
            match left {
                Left::Done => drop(lane.pop_front()),
                // Every event of a lane is of one shard.
                Left::Abandoned => lane.clear(),
            }
            if lane.is_empty() {
                lanes.remove(&user);
                drop(lanes);
                self.room.notify_one();
                return;
            }
            drop(lanes);
            self.room.notify_one();
        }
    }

    /// Sends one event until it is delivered, expires or is abandoned.
    async fn deliver(&self, event: &QueuedEvent, stop: &CancellationToken) -> Left {
        let signature = self.sign(&event.body);
        let max_age = u64::try_from(self.poster.max_age.as_millis()).unwrap_or(u64::MAX);
        let mut attempt: u32 = 0;
        loop {
            if !self.queue.owns(event.shard) {
                return Left::Abandoned;
            }
            if switchboard_presence::unix_millis().saturating_sub(event.queued_ms) > max_age {
                self.count(event.kind, "expired");
                tracing::debug!(id = event.id, kind = event.kind.as_str(), "webhook event expired undelivered");
                return self.forget(event).await;
            }
            let sent = tokio::select! {
                () = stop.cancelled() => return Left::Abandoned,
                sent = self.post(event, &signature) => sent,
            };
            match sent {
                Ok(()) => {
                    self.count(event.kind, "delivered");
                    return self.forget(event).await;
                }
                Err(problem) => {
                    self.count(event.kind, "failed");
                    let now = switchboard_presence::unix_millis();
                    // One line per node every few seconds, not one per event.
                    if now.saturating_sub(self.warned_ms.swap(now, Ordering::Relaxed)) >= WARN_EVERY_MS {
                        tracing::warn!(%problem, kind = event.kind.as_str(), "webhook failed; retrying");
                    } else {
                        tracing::debug!(%problem, attempt, kind = event.kind.as_str(), "webhook failed");
                    }
                }
            }
            let wait = backoff(attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = stop.cancelled() => return Left::Abandoned,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn forget(&self, event: &QueuedEvent) -> Left {
        if let Err(error) = self.queue.done(event).await {
            // It stays pending and is sent again when its shard changes hands.
            self.metrics.redis_errors.inc();
            tracing::warn!(%error, id = event.id, "delivered event not removed from the queue");
        }
        Left::Done
    }

    /// One POST; `Ok` for a 2xx answer.
    async fn post(&self, event: &QueuedEvent, signature: &str) -> Result<(), String> {
        let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        let request = Request::post(self.poster.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .header(SIGNATURE_HEADER, signature)
            .body(Full::new(event.body.clone()))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self.poster.client.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let _ = Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await;
            if status.is_success() { Ok(()) } else { Err(format!("answered {status}")) }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
    }

    /// `sha256=<hex HMAC-SHA256 of the body>`.
    fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.poster.key.clone();
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        let mut text = String::with_capacity(7 + digest.len() * 2);
        text.push_str("sha256=");
        for byte in digest {
            text.push_str(&format!("{byte:02x}"));
        }
        text
    }

    fn count(&self, kind: EventType, outcome: &str) {
        self.metrics.webhook_events.with_label_values(&[kind.as_str(), outcome]).inc();
    }

    /// Keeps `switchboard_webhook_queue_depth` current.
    async fn gauge(self: Arc<Self>, stop: CancellationToken) {
        let mut every = tokio::time::interval(DEPTH_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            match self.queue.depth().await {
                Ok(depth) => self.metrics.webhook_queue_depth.set(i64::try_from(depth).unwrap_or(i64::MAX)),
                Err(error) => tracing::debug!(%error, "webhook queue depth not read"),
            }
        }
    }
}

/// The wait before retry `attempt + 1`: doubling from [`RETRY_MIN`] up to
/// [`RETRY_MAX`], each a random half to whole of that, so that the events
/// that failed together are not retried together.
fn backoff(attempt: u32) -> Duration {
    let full = RETRY_MIN.saturating_mul(2u32.saturating_pow(attempt.min(16))).min(RETRY_MAX);
    full.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        for _ in 0..100 {
            let first = backoff(0);
            assert!(first >= RETRY_MIN / 2 && first <= RETRY_MIN, "{first:?}");
            let third = backoff(2);
            assert!(third >= RETRY_MIN * 2 && third <= RETRY_MIN * 4, "{third:?}");
            let late = backoff(40);
            assert!(late >= RETRY_MAX / 2 && late <= RETRY_MAX, "{late:?}");
        }
    }
}
