//! The cluster backend over Redis: standalone, Sentinel or Cluster (the
//! layout is in `keys.rs`).
//!
//! A message crosses the cluster in hops, one module each:
//!
//! - `store`: what must be in Redis before the sender hears `accepted`:
//!   the dedupe record and, when the message is logged, the log entry with
//!   its seq (the `append` script, atomic on the recipient's slot); what a
//!   device's acks change: its cursor, the receipts they make due (claimed
//!   on the dedupe record), the trim of the log (the `trim` script), and
//!   what a connecting device reads (the `connect` script).
//! - `route`: one publisher task per destination node batches what is
//!   queued for that node into one MessagePack envelope per publish.
//! - `listen`: each node reads its own sharded channel, checks each
//!   envelope's sequence number (a gap makes every local connection read
//!   its log again), and hands the items to local connections; a live-only
//!   message whose recipient left is stored here, in order (`Fence`).
//! - `presence`: registrations, and who is online; a user's first and
//!   last connection in the cluster are decided in the script that
//!   changes its presence (`presence.lua`).
//! - `events`: the event queue for the application backend, sharded
//!   streams each delivered by the node that holds its lease.
//! - `liveness`: the heartbeat keeps this node's liveness key, adopts a new
//!   epoch and registers every live connection again when Redis lost its
//!   state, sweeps dead nodes out of presence, and sends a probe through
//!   the node's own channel so that readiness proves the channel delivers.

mod events;
mod listen;
mod liveness;
mod presence;
mod replica;
mod route;
mod store;
mod window;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, KeysInterface};
use fred::prelude::{Builder, Config, ReconnectPolicy, TcpConfig};
use fred::types::{Expiration, SetOptions};
use switchboard_protocol::UserId;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::keys::Keys;
use crate::{
    Accepted, Arrival, BackendError, Connected, Connecting, Counters, DeviceAck, KICK_WAIT, Kick, Local, Outgoing,
    Settings,
};

use events::EventState;
pub use events::RedisEvents;
use listen::Bounce;
use replica::Replica;
use route::Queued;
use store::Scripts;
use window::Window;

/// A command that has not completed in this time fails; the client gets an
/// `internal` error instead of waiting on a Redis that is gone.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Pub/sub messages buffered for the subscriber before it lags.
const SUBSCRIBER_BUFFER: usize = 1 << 14;
/// Concurrent commands when re-registering or sweeping many entries.
const FAN_OUT: usize = 64;

pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    /// This node's id, shared with the routes that name it.
    node: Arc<str>,
    keys: Keys,
    client: Client,
    subscriber: SubscriberClient,
    local: Arc<dyn Local>,
    counters: Counters,
    scripts: Scripts,
    /// The event queue's state on this node; none when events are off.
    events: Option<Arc<EventState>>,
    epoch: RwLock<Uuid>,
    /// Nodes whose heartbeat is older than the node TTL, as of our last
    /// heartbeat, or whose channel had no subscriber. Every other node is
    /// taken to be alive: a node that just started, or that registered
    /// again after Redis lost its state, is reachable at once.
    dead: RwLock<HashSet<String>>,
    /// Publisher queue per destination node.
    routes: DashMap<String, mpsc::UnboundedSender<Queued>>,
    /// Last sequence number heard per sending node, and the stream it is in.
    heard: Mutex<HashMap<String, (Uuid, u64)>>,
    /// Fast mode: the nodes a live-only message for a user was last sent
    /// to, and when; a later send that stores the user's messages waits
    /// until those nodes have handled (and, if the user left, stored) it.
    recent: Mutex<HashMap<UserId, route::Recent>>,
    /// Fences this node waits on, by id.
    fences: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    /// Kicks this node waits on, by id: where the answers go.
    kicks: Mutex<HashMap<u64, mpsc::UnboundedSender<u64>>>,
    /// Ids of fences and kicks.
    next_fence: AtomicU64,
    /// What the listener hands to the bouncer, in arrival order.
    bounces: mpsc::UnboundedSender<Bounce>,
    /// Acks waiting to be written.
    acks: mpsc::UnboundedSender<DeviceAck>,
    /// Appends waiting for the flush window.
    appends: Mutex<Vec<store::Append>>,
    /// Where other nodes' users are, as heard from them.
    replica: Replica,
    /// Gathers the hot path's commands into one write.
    window: Window,
    /// When this node last refreshed the expiry of a user's log.
    refreshed: Mutex<HashMap<UserId, tokio::time::Instant>>,
    last_beat_ms: AtomicU64,
    last_probe_ms: AtomicU64,
    /// Wakes the heartbeat before its time (a new epoch was seen).
    beat_now: Notify,
    /// Set when a new epoch was adopted, until the heartbeat registered
    /// every connection again.
    epoch_changed: AtomicBool,
    /// Unregistrations that failed, retried on every heartbeat.
    unregister_later: Mutex<Vec<(UserId, Uuid)>>,
    /// Cancelled first on shutdown: nothing new is queued for publishing.
    closing: CancellationToken,
    stop: CancellationToken,
    tasks: TaskTracker,
    publishers: TaskTracker,
}

impl RedisBackend {
    pub async fn start(
        url: &str,
        settings: Settings,
        local: Arc<dyn Local>,
        counters: Counters,
    ) -> Result<Self, BackendError> {
        let config = Config::from_url(url)?;
        let build = |buffer: Option<usize>| {
            let mut builder = Builder::from_config(config.clone());
            builder
                .with_performance_config(|p| {
                    p.default_command_timeout = COMMAND_TIMEOUT;
                    if let Some(buffer) = buffer {
                        p.broadcast_channel_capacity = buffer;
                    }
                })
                .with_connection_config(|c| {
                    c.connection_timeout = COMMAND_TIMEOUT;
                    c.internal_command_timeout = COMMAND_TIMEOUT;
                    c.tcp = TcpConfig { nodelay: Some(true), ..TcpConfig::default() };
                })
                .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
            builder
        };
        // fred allocates every broadcast channel of a client at this size:
        // only the subscriber needs a deep one.
        let client = build(None).build()?;
        let subscriber = build(Some(SUBSCRIBER_BUFFER)).build_subscriber_client()?;
        client.init().await?;
        subscriber.init().await?;

        let keys = Keys::new(&settings.prefix);
        let proposed = Uuid::now_v7();
        let _: Option<String> =
            client.set(keys.epoch(), proposed.to_string(), None, Some(SetOptions::NX), false).await?;
        let epoch = liveness::parse_epoch(client.get(keys.epoch()).await?)?;

        let (bounces, bounced) = mpsc::unbounded_channel();
        let (acks, acked) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            scripts: Scripts::new(),
            events: settings.events.as_ref().map(|_| Arc::new(EventState::new())),
            epoch: RwLock::new(epoch),
            dead: RwLock::new(HashSet::new()),
            routes: DashMap::new(),
            heard: Mutex::new(HashMap::new()),
            recent: Mutex::new(HashMap::new()),
            fences: Mutex::new(HashMap::new()),
            kicks: Mutex::new(HashMap::new()),
            next_fence: AtomicU64::new(0),
            bounces,
            acks,
            appends: Mutex::new(Vec::new()),
            refreshed: Mutex::new(HashMap::new()),
            replica: Replica::default(),
            window: Window::new(settings.batch_window),
            last_beat_ms: AtomicU64::new(0),
            last_probe_ms: AtomicU64::new(0),
            beat_now: Notify::new(),
            epoch_changed: AtomicBool::new(false),
            unregister_later: Mutex::new(Vec::new()),
            closing: CancellationToken::new(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            publishers: TaskTracker::new(),
            keys,
            node: Arc::from(settings.node_id.as_str()),
            settings,
            client,
            subscriber,
            local,
            counters,
        });
        inner.subscribe().await?;
        // Entries under our id from an earlier life of a node with this id
        // (it crashed and was restarted before anyone swept it).
        let stale = inner.remove_entries(inner.me()).await?;
        if stale > 0 {
            tracing::info!(connections = stale, "removed presence entries of an earlier life of this node id");
        }
        // Opened before the first heartbeat, so that its probe is not missed.
        let messages = inner.subscriber.message_rx();
        inner.beat().await?;
        // What every node holds now, then tell them to keep us posted.
        for peer in inner.replica.peers() {
            inner.snapshot(&peer).await?;
        }
        inner.announce(&switchboard_protocol::Item::Hello);
        inner.tasks.spawn(inner.clone().listen(messages));
        inner.tasks.spawn(inner.clone().bouncer(bounced));
        inner.tasks.spawn(inner.clone().acker(acked));
        inner.tasks.spawn(inner.clone().heartbeat());
        inner.tasks.spawn({
            let inner = inner.clone();
            async move { inner.window.run(inner.stop.clone()).await }
        });
        Ok(Self { inner })
    }

    pub fn node_id(&self) -> &str {
        &self.inner.settings.node_id
    }

    pub fn epoch(&self) -> Uuid {
        *self.inner.epoch.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_ready(&self) -> bool {
        let now = now_ms();
        let fresh = |at: &AtomicU64| now.saturating_sub(at.load(Ordering::Relaxed)) < self.inner.ttl_ms();
        self.inner.client.is_connected() && fresh(&self.inner.last_beat_ms) && fresh(&self.inner.last_probe_ms)
    }

    pub async fn connect(&self, connecting: &Connecting) -> Result<Connected, BackendError> {
        let inner = &self.inner;
        let user = &connecting.user;
        let (registered, stored) =
            tokio::join!(inner.register(user, connecting.conn), inner.client.get(inner.keys.epoch()));
        registered?;
        if connecting.first {
            inner.announce(&switchboard_protocol::Item::Online { user: user.clone() });
        }
        // A new connection learns at once when Redis lost its state, not at
        // the next heartbeat; the heartbeat then registers the others again.
        if inner.adopt_epoch(stored?).await? {
            inner.beat_now.notify_one();
        }
        let connected = inner.open_log(connecting).await?;
        Ok(Connected { epoch: self.epoch(), ..connected })
    }

    pub async fn disconnect(&self, user: &UserId, conn: Uuid, last: bool) -> Result<(), BackendError> {
        if last {
            self.inner.announce(&switchboard_protocol::Item::Offline { user: user.clone() });
        }
        self.inner.unregister(user, conn).await
    }

    pub async fn send(&self, outgoing: Outgoing) -> Result<Accepted, BackendError> {
        self.inner.send(outgoing).await
    }

    pub fn ack(&self, ack: DeviceAck) {
        let _ = self.inner.acks.send(ack);
    }

    pub async fn read_log(&self, user: &UserId, after: u64) -> Result<Vec<Arrival>, BackendError> {
        self.inner.read_log(user, after).await
    }

    pub async fn online(&self, users: &[UserId]) -> Result<Vec<usize>, BackendError> {
        self.inner.online(users).await
    }

    /// Sets the block first, so that a node that misses the kick (or starts
    /// after it) still refuses the user when it registers a connection;
    /// then every node known alive, and every node presence says holds a
    /// connection of the user, closes what it holds.
    pub async fn kick(&self, kick: &Kick) -> Result<usize, BackendError> {
        let inner = &self.inner;
        let block_ms = kick.block.map(millis).filter(|ms| *ms > 0);
        if let Some(ms) = block_ms {
            let expiry = Expiration::PX(i64::try_from(ms).unwrap_or(i64::MAX));
            let _: () = inner.client.set(inner.keys.block(&kick.user), "1", Some(expiry), None, false).await?;
        }
        let mut peers: HashSet<Arc<str>> = inner.nodes_of(&kick.user).await?.into_iter().collect();
        peers.extend(inner.replica.peers());
        peers.retain(|node| **node != *inner.me() && inner.is_alive(node));
        let id = inner.next_fence.fetch_add(1, Ordering::Relaxed);
        let (answers, mut answered) = mpsc::unbounded_channel();
        inner.kicks.lock().unwrap_or_else(|e| e.into_inner()).insert(id, answers);
        for peer in &peers {
            let (user, device) = (kick.user.clone(), kick.device.clone());
            inner.enqueue(peer, switchboard_protocol::Item::Disconnect { id, user, device, block_ms });
        }
        let mut closed = inner.local.kick(kick);
        let _ = tokio::time::timeout(KICK_WAIT, async {
            for _ in &peers {
                let Some(count) = answered.recv().await else { break };
                closed += usize::try_from(count).unwrap_or(usize::MAX);
            }
        })
        .await;
        inner.kicks.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        Ok(closed)
    }

    pub fn events(&self) -> Option<crate::EventQueue> {
        RedisEvents::queue(self.inner.clone())
    }

    pub async fn shutdown(&self) {
        let inner = &self.inner;
        // Publishers send what they hold, then end as their queues close.
        inner.closing.cancel();
        inner.routes.clear();
        inner.publishers.close();
        if tokio::time::timeout(COMMAND_TIMEOUT * 2, inner.publishers.wait()).await.is_err() {
            tracing::warn!("publishers did not finish in time; the recipients' logs hold their messages");
        }
        inner.stop.cancel();
        inner.tasks.close();
        inner.tasks.wait().await;
        inner.publishers.wait().await;
        if let Err(error) = inner.deregister().await {
            tracing::warn!(%error, "could not remove this node from presence; the sweeper will");
        }
        inner.release_leases().await;
        let _ = tokio::join!(inner.subscriber.quit(), inner.client.quit());
    }
}

impl Inner {
    fn me(&self) -> &str {
        &self.node
    }

    fn me_shared(&self) -> Arc<str> {
        self.node.clone()
    }

    fn ttl_ms(&self) -> u64 {
        millis(self.settings.node_ttl)
    }

    fn is_alive(&self, node: &str) -> bool {
        node == self.me() || !self.dead.read().unwrap_or_else(|e| e.into_inner()).contains(node)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn ttl_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn now_ms() -> u64 {
    crate::unix_millis()
}
