//! The cluster backend over Redis: standalone, Sentinel or Cluster (the
//! layout is in `keys.rs`).
//!
//! Each node subscribes to its own sharded channel. A message for a user on
//! other nodes is queued to one publisher task per destination node, which
//! batches whatever is pending into one MessagePack envelope per publish.
//! Envelopes carry a per-destination sequence number: a receiver that sees
//! a gap counts it and, in durable mode, re-reads the inboxes of its users.
//!
//! A heartbeat task keeps this node's liveness key, adopts a new epoch and
//! registers every live connection again when Redis lost its state, sweeps
//! dead nodes out of presence, and sends a probe through the node's own
//! channel so that readiness proves the channel delivers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use fred::bytes::Bytes;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{
    ClientLike, EventInterface, HashesInterface, KeysInterface, PubsubInterface, SortedSetsInterface, StreamsInterface,
};
use fred::prelude::{Builder, Config, ReconnectPolicy, TcpConfig};
use fred::types::scripts::Script;
use fred::types::{Expiration, Message, SetOptions, Value};
use futures_util::StreamExt;
use switchboard_protocol::{AcceptStatus, Delivery, Envelope, MsgId, Routed, UserId};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::keys::Keys;
use crate::{
    Accepted, Ack, BackendError, Connected, Counters, DEDUPE_WINDOW, Delivered, Letter, Local, Mode, Outgoing, Push,
    Settings, reached, receipt_for,
};

/// A command that has not completed in this time fails; the client gets an
/// `internal` error instead of waiting on a Redis that is gone.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Pub/sub messages buffered for the subscriber task before it lags.
const SUBSCRIBER_BUFFER: usize = 1 << 13;
/// Items in one envelope at most.
const MAX_BATCH: usize = 256;
/// Concurrent commands when re-registering or sweeping many entries.
const FAN_OUT: usize = 64;

pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    keys: Keys,
    client: Client,
    subscriber: SubscriberClient,
    local: Arc<dyn Local>,
    counters: Counters,
    store_script: Script,
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
    last_beat_ms: AtomicU64,
    last_probe_ms: AtomicU64,
    /// Wakes the repair task; requests made while it runs coalesce into one
    /// more run.
    repair_wanted: Notify,
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

/// What a publisher's queue holds.
enum Queued {
    Item(Routed),
    /// Answered once everything queued before it has been handled.
    CaughtUp(oneshot::Sender<()>),
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
        let epoch = parse_epoch(client.get(keys.epoch()).await?)?;

        let inner = Arc::new(Inner {
            store_script: Script::from_lua(include_str!("store.lua")),
            epoch: RwLock::new(epoch),
            dead: RwLock::new(HashSet::new()),
            routes: DashMap::new(),
            heard: Mutex::new(HashMap::new()),
            last_beat_ms: AtomicU64::new(0),
            last_probe_ms: AtomicU64::new(0),
            repair_wanted: Notify::new(),
            beat_now: Notify::new(),
            epoch_changed: AtomicBool::new(false),
            unregister_later: Mutex::new(Vec::new()),
            closing: CancellationToken::new(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            publishers: TaskTracker::new(),
            keys,
            settings,
            client,
            subscriber,
            local,
            counters,
        });
        inner.subscriber.ssubscribe(inner.keys.node_channel(&inner.settings.node_id)).await?;
        let resubscriber = inner.subscriber.manage_subscriptions();
        inner.tasks.spawn({
            let stop = inner.stop.clone();
            async move {
                stop.cancelled().await;
                resubscriber.abort();
            }
        });
        // Entries under our id from an earlier life of a node with this id
        // (it crashed and was restarted before anyone swept it).
        let stale = inner.remove_entries(inner.me()).await?;
        if stale > 0 {
            tracing::info!(connections = stale, "removed presence entries of an earlier life of this node id");
        }
        let messages = inner.subscriber.message_rx();
        inner.beat().await?;
        inner.tasks.spawn(inner.clone().listen(messages));
        inner.tasks.spawn(inner.clone().heartbeat());
        inner.tasks.spawn(inner.clone().repairs());
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

    pub async fn connect(&self, user: &UserId, conn: Uuid) -> Result<Connected, BackendError> {
        let inner = &self.inner;
        let (registered, stored) = tokio::join!(inner.register(user, conn), inner.client.get(inner.keys.epoch()));
        registered?;
        // A new connection learns at once when Redis lost its state, not at
        // the next heartbeat; the heartbeat then registers the others again.
        if inner.adopt_epoch(stored?).await? {
            inner.beat_now.notify_one();
        }
        let letters = inner.inbox(user).await?;
        Ok(Connected { letters, epoch: self.epoch() })
    }

    pub async fn disconnect(&self, user: &UserId, conn: Uuid) -> Result<(), BackendError> {
        self.inner.unregister(user, conn).await
    }

    pub async fn send(&self, outgoing: Outgoing) -> Result<Accepted, BackendError> {
        self.inner.send(outgoing).await
    }

    pub async fn ack(&self, ack: Ack) -> Result<(), BackendError> {
        self.inner.ack(ack).await
    }

    pub async fn online(&self, users: &[UserId]) -> Result<Vec<usize>, BackendError> {
        let inner = &self.inner;
        let lookups = users.iter().map(|user| async move {
            let nodes: Vec<String> = inner.client.hvals(inner.keys.user_conns(user)).await?;
            Ok::<_, BackendError>(nodes.iter().filter(|node| inner.is_alive(node)).count())
        });
        futures_util::future::try_join_all(lookups).await
    }

    pub async fn shutdown(&self) {
        let inner = &self.inner;
        // Publishers send what they hold, then end as their queues close.
        inner.closing.cancel();
        inner.routes.clear();
        inner.publishers.close();
        if tokio::time::timeout(COMMAND_TIMEOUT * 2, inner.publishers.wait()).await.is_err() {
            tracing::warn!("publishers did not finish in time; the recipients' inboxes hold their messages");
        }
        inner.stop.cancel();
        inner.tasks.close();
        inner.tasks.wait().await;
        inner.publishers.wait().await;
        if let Err(error) = inner.deregister().await {
            tracing::warn!(%error, "could not remove this node from presence; the sweeper will");
        }
        let _ = tokio::join!(inner.subscriber.quit(), inner.client.quit());
    }
}

impl Inner {
    fn me(&self) -> &str {
        &self.settings.node_id
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.settings.node_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    fn is_alive(&self, node: &str) -> bool {
        node == self.me() || !self.dead.read().unwrap_or_else(|e| e.into_inner()).contains(node)
    }

    async fn register(&self, user: &UserId, conn: Uuid) -> Result<(), BackendError> {
        let conn = conn.to_string();
        let (a, b) = tokio::join!(
            self.client.hset::<(), _, _>(self.keys.user_conns(user), (conn.as_str(), self.me())),
            self.client.hset::<(), _, _>(self.keys.node_conns(self.me()), (conn.as_str(), user.as_str())),
        );
        a?;
        b?;
        Ok(())
    }

    /// Removes a connection from presence; a failure is retried on the
    /// following heartbeats.
    async fn unregister(&self, user: &UserId, conn: Uuid) -> Result<(), BackendError> {
        let id = conn.to_string();
        let (a, b) = tokio::join!(
            self.client.hdel::<(), _, _>(self.keys.user_conns(user), &id),
            self.client.hdel::<(), _, _>(self.keys.node_conns(self.me()), &id),
        );
        if let Err(error) = a.and(b) {
            self.unregister_later.lock().unwrap_or_else(|e| e.into_inner()).push((user.clone(), conn));
            return Err(error.into());
        }
        Ok(())
    }

    /// The user's stored messages, oldest first, without expired ones.
    async fn inbox(&self, user: &UserId) -> Result<Vec<Letter>, BackendError> {
        let count = u64::try_from(self.settings.inbox_max_len).unwrap_or(u64::MAX);
        let entries: Vec<(String, HashMap<String, Bytes>)> =
            self.client.xrange_values(self.keys.inbox(user), "-", "+", Some(count)).await?;
        let oldest_ms = now_ms().saturating_sub(u64::try_from(self.settings.inbox_ttl.as_millis()).unwrap_or(0));
        let mut letters = Vec::with_capacity(entries.len());
        for (entry, fields) in entries {
            let entry_ms = entry.split('-').next().and_then(|ms| ms.parse::<u64>().ok()).unwrap_or(0);
            if entry_ms < oldest_ms {
                continue;
            }
            let Some(payload) = fields.get("m") else { continue };
            match Routed::decode(payload) {
                Ok(Routed::Deliver { delivery, reply_to, received_us, .. }) => letters.push(Letter {
                    delivery: Arc::new(delivery),
                    reply_to,
                    received_us,
                    stored_as: Some(Arc::from(entry.as_str())),
                }),
                Ok(_) | Err(_) => tracing::warn!(user = %user, entry, "skipping a malformed inbox entry"),
            }
        }
        Ok(letters)
    }

    async fn send(self: &Arc<Self>, outgoing: Outgoing) -> Result<Accepted, BackendError> {
        let Outgoing { from, id, receipt, to, body, received_us } = outgoing;
        let reply_to = id.clone().filter(|_| receipt);
        let msg = MsgId::new();
        let delivery = Delivery { msg, from: from.clone(), to: to.clone(), body, ts: received_us / 1000 };
        let durable = self.settings.mode == Mode::Durable;
        let mut letter = Letter { delivery: Arc::new(delivery), reply_to, received_us, stored_as: None };
        let sent_key = id.as_ref().map(|id| self.keys.sent(&to, &from, id));
        let StoreReply { previous, entry, conns } = self.store(&letter, durable, sent_key.as_deref()).await?;
        if let Some(previous) = previous {
            return parse_sent_record(&previous);
        }
        letter.stored_as = entry;
        let nodes: HashSet<&str> = conns.iter().map(|(_, node)| node.as_str()).collect();
        let status = reached(self.route(&to, &Push::Message(Arc::new(letter.clone())), &nodes));
        if status == AcceptStatus::Stored && !durable {
            // What was queued earlier for a node now taken for dead is stored
            // by its publisher: wait for that first, so that this message
            // does not overtake those in the inbox.
            self.publishers_caught_up(&nodes).await;
            // The script reads presence after it stores: a recipient that
            // registered since the first lookup is found now and gets the
            // message live, or else it reads its inbox after the store.
            let reply = self.store(&letter, true, None).await?;
            letter.stored_as = reply.entry;
            let nodes: HashSet<&str> = reply.conns.iter().map(|(_, node)| node.as_str()).collect();
            self.route(&to, &Push::Message(Arc::new(letter)), &nodes);
        }
        // The script recorded its guess from the presence entries; correct
        // it when those entries belonged to dead nodes.
        if let (Some(sent_key), true) = (sent_key, status != reached(conns.len())) {
            let record = format!("{msg}:{}", status_name(status));
            let _: Option<String> =
                self.client.set(sent_key, record, Some(Expiration::KEEPTTL), Some(SetOptions::XX), false).await?;
        }
        Ok(Accepted { msg, status, duplicate: false })
    }

    /// Runs the store script for `letter`: stores it when `store`, records
    /// `sent_key` when given, and returns the recipient's connections.
    async fn store(&self, letter: &Letter, store: bool, sent_key: Option<&str>) -> Result<StoreReply, BackendError> {
        let to = &letter.delivery.to;
        let payload = if store { stored_form(letter)? } else { Vec::new() };
        let keys = vec![self.keys.inbox(to), self.keys.user_conns(to), sent_key.unwrap_or_default().to_owned()];
        let args: Vec<Value> = vec![
            letter.delivery.msg.to_string().into(),
            flag(store),
            self.settings.inbox_max_len.to_string().into(),
            millis(self.settings.inbox_ttl).to_string().into(),
            Value::Bytes(payload.into()),
            millis(DEDUPE_WINDOW).to_string().into(),
            flag(sent_key.is_some()),
        ];
        let reply = StoreReply::parse(self.store_script.evalsha_with_reload(&self.client, keys, args).await?)?;
        if reply.entry.is_some() {
            self.counters.inbox_stored.inc();
        }
        Ok(reply)
    }

    /// Hands `push` to the local connections of `user` and queues it for
    /// every other live node in `nodes`; how many places it went to. A node
    /// taken for dead is tried too when what it would get is safe in the
    /// inbox already (or is a receipt): it may be back before this node's
    /// next heartbeat says so, after its own repair read the inbox. A
    /// publish that finds nobody leaves the message where it is.
    fn route(self: &Arc<Self>, user: &UserId, push: &Push, nodes: &HashSet<&str>) -> usize {
        let mut reached = self.local.push(user, push);
        let stored = match push {
            Push::Message(letter) => letter.stored_as.is_some(),
            Push::Receipt(_) => true,
        };
        for node in nodes.iter().filter(|node| **node != self.me()) {
            let alive = self.is_alive(node);
            if alive || stored {
                self.enqueue(node, routed_form(user, push));
            }
            reached += usize::from(alive);
        }
        reached
    }

    /// Queues `item` for `node`'s publisher, starting it on first use.
    fn enqueue(self: &Arc<Self>, node: &str, item: Routed) {
        if self.closing.is_cancelled() {
            return;
        }
        let tx = self
            .routes
            .entry(node.to_owned())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                self.publishers.spawn(self.clone().publish(node.to_owned(), rx));
                tx
            })
            .clone();
        let _ = tx.send(Queued::Item(item));
    }

    /// Completes once the publishers of `nodes` have handled everything
    /// queued to them so far (or after two command timeouts).
    async fn publishers_caught_up(&self, nodes: &HashSet<&str>) {
        let waits: Vec<_> = nodes
            .iter()
            .filter_map(|node| {
                let queue = self.routes.get(*node)?;
                let (done, caught_up) = oneshot::channel();
                queue.send(Queued::CaughtUp(done)).ok()?;
                Some(caught_up)
            })
            .collect();
        let _ = tokio::time::timeout(COMMAND_TIMEOUT * 2, futures_util::future::join_all(waits)).await;
    }

    async fn ack(self: &Arc<Self>, ack: Ack) -> Result<(), BackendError> {
        let inbox = self.keys.inbox(&ack.user);
        let delivered = match ack.delivered {
            Some(delivered) if delivered.stored_as.is_some() || self.settings.mode == Mode::Fast => Some(delivered),
            _ => self.inbox(&ack.user).await?.iter().find(|l| l.delivery.msg == ack.msg).map(Delivered::from),
        };
        let Some(delivered) = delivered else { return Ok(()) };
        let removed: i64 = match &delivered.stored_as {
            Some(entry) => self.client.xdel(&inbox, entry.as_ref()).await?,
            None => 0,
        };
        let due = removed > 0 || self.settings.mode == Mode::Fast;

        if let (true, Some(reply_to)) = (due, delivered.reply_to.clone()) {
            let sender = &delivered.from;
            let nodes: Vec<String> = self.client.hvals(self.keys.user_conns(sender)).await?;
            let nodes: HashSet<&str> = nodes.iter().map(String::as_str).collect();
            self.route(sender, &receipt_for(ack.msg, reply_to), &nodes);
        }
        Ok(())
    }
}

impl Inner {
    /// One destination's publisher: batches what is queued, publishes, and
    /// hands back to the inbox what a gone node can no longer take.
    async fn publish(self: Arc<Self>, node: String, mut queue: mpsc::UnboundedReceiver<Queued>) {
        let channel = self.keys.node_channel(&node);
        // A new stream for every publisher: a receiver restarts its sequence
        // check instead of mistaking a restarted publisher for an old one.
        let stream = Uuid::now_v7();
        let mut seq = 0u64;
        loop {
            let first = tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                queued = queue.recv() => match queued {
                    Some(queued) => queued,
                    None => return,
                },
            };
            let mut items = Vec::new();
            let mut caught_up = None;
            let mut next = Some(first);
            while let Some(queued) = next {
                match queued {
                    Queued::Item(item) => items.push(item),
                    Queued::CaughtUp(done) => {
                        caught_up = Some(done);
                        break;
                    }
                }
                next = if items.len() < MAX_BATCH { queue.try_recv().ok() } else { None };
            }
            if !items.is_empty() {
                seq += 1;
                self.publish_batch(&node, &channel, Envelope { node: self.me().to_owned(), stream, seq, items }).await;
            }
            if let Some(done) = caught_up {
                let _ = done.send(());
            }
        }
    }

    /// Publishes one envelope to `node`, and hands what it could not take
    /// to `undeliverable`.
    async fn publish_batch(&self, node: &str, channel: &str, envelope: Envelope) {
        let bytes = match envelope.encode() {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, "envelope does not encode");
                return;
            }
        };
        match self.client.spublish::<i64, _, _>(channel, Value::Bytes(bytes.into())).await {
            Ok(0) if node != self.me() => {
                tracing::info!(node, "no subscriber on the node's channel: treating it as gone");
                self.dead.write().unwrap_or_else(|e| e.into_inner()).insert(node.to_owned());
                self.undeliverable(envelope.items).await;
            }
            Ok(_) => {}
            Err(error) => {
                self.counters.backend_errors.inc();
                tracing::warn!(%error, node, "publish failed");
                self.undeliverable(envelope.items).await;
            }
        }
    }

    /// Messages that could not be handed to their node. Those in the inbox
    /// already (every one in durable mode) stay there; the others are
    /// stored now, in order, until the backend stops: a node shutting down
    /// with Redis gone does not wait out a timeout per message.
    async fn undeliverable(&self, items: Vec<Routed>) {
        let mut letters = items.into_iter().filter_map(|item| match item {
            Routed::Deliver { delivery, reply_to, received_us, stored_as: None } => {
                Some(Letter { delivery: Arc::new(delivery), reply_to, received_us, stored_as: None })
            }
            Routed::Deliver { stored_as: Some(_), .. } | Routed::Receipt { .. } | Routed::Probe => None,
        });
        while let Some(letter) = letters.next() {
            let stored = tokio::select! {
                biased;
                () = self.stop.cancelled() => {
                    self.counters.backend_errors.inc();
                    let count = 1 + letters.count();
                    tracing::warn!(count, "shutting down: fast-mode messages for a gone node not stored");
                    return;
                }
                stored = self.store(&letter, true, None) => stored,
            };
            if let Err(error) = stored {
                self.counters.backend_errors.inc();
                tracing::warn!(%error, msg = %letter.delivery.msg, "fast-mode message lost: cannot store it");
            }
        }
    }

    /// Reads this node's channel on a thread of its own that only moves
    /// each payload to an unbounded queue: the scheduler cannot starve it,
    /// so the client's preallocated pub/sub buffer does not overflow in a
    /// burst, and the queue grows only while a burst is being delivered.
    /// Takes `messages`, the subscriber's stream, opened before the first
    /// heartbeat so that its probe, published at once, is not missed.
    async fn listen(self: Arc<Self>, mut messages: broadcast::Receiver<Message>) {
        let (arrived, mut queue) = mpsc::unbounded_channel::<Bytes>();
        let inner = self.clone();
        let runtime = tokio::runtime::Handle::current();
        self.tasks.spawn_blocking(move || {
            runtime.block_on(async {
                loop {
                    let message = tokio::select! {
                        biased;
                        () = inner.stop.cancelled() => return,
                        message = messages.recv() => message,
                    };
                    match message {
                        Ok(message) => match message.value.into_bytes() {
                            Some(payload) => {
                                let _ = arrived.send(payload);
                            }
                            None => tracing::warn!(channel = %message.channel, "ignoring a non-binary envelope"),
                        },
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                            // The sequence check counts the gap; repair now in
                            // case nothing follows the lost envelopes.
                            tracing::warn!(missed, "subscriber fell behind: envelopes lost");
                            inner.repair();
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        });
        let mut reconnects = self.subscriber.reconnect_rx();
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                payload = queue.recv() => match payload.map(|p| Envelope::decode(&p)) {
                    Some(Ok(envelope)) => self.receive(envelope),
                    Some(Err(error)) => tracing::warn!(%error, "ignoring a malformed envelope"),
                    None => return,
                },
                _ = reconnects.recv() => {
                    // Whatever was published while disconnected is gone.
                    tracing::info!("redis subscriber reconnected");
                    self.repair();
                }
            }
        }
    }

    fn receive(self: &Arc<Self>, envelope: Envelope) {
        let gap = {
            let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
            let last = heard.entry(envelope.node.clone()).or_insert((envelope.stream, envelope.seq - 1));
            let gap = if last.0 == envelope.stream { envelope.seq.saturating_sub(last.1 + 1) } else { 0 };
            if last.0 != envelope.stream || envelope.seq > last.1 {
                *last = (envelope.stream, envelope.seq);
            }
            gap
        };
        if gap > 0 {
            self.counters.route_gaps.inc_by(gap);
            tracing::warn!(node = envelope.node, gap, "envelopes missing from a node");
            self.repair();
        }
        for item in envelope.items {
            match item {
                Routed::Deliver { delivery, reply_to, received_us, stored_as } => {
                    let to = delivery.to.clone();
                    let stored_as = stored_as.map(|s| Arc::from(s.as_str()));
                    let letter = Letter { delivery: Arc::new(delivery), reply_to, received_us, stored_as };
                    self.local.push(&to, &Push::Message(Arc::new(letter)));
                }
                Routed::Receipt { to, receipt } => {
                    self.local.push(&to, &Push::Receipt(Arc::new(receipt)));
                }
                Routed::Probe => self.last_probe_ms.store(now_ms(), Ordering::Relaxed),
            }
        }
    }

    /// Asks for a repair: every local user's inbox handed to its
    /// connections again (durable mode; the connections skip what they
    /// already have), after envelopes may have been lost.
    fn repair(&self) {
        if self.settings.mode == Mode::Durable {
            self.repair_wanted.notify_one();
        }
    }

    /// Runs the repairs asked for, one at a time.
    async fn repairs(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = self.repair_wanted.notified() => {}
            }
            let users: HashSet<UserId> = self.local.registrations().into_iter().map(|(user, _)| user).collect();
            let count = users.len();
            let inner = &*self;
            futures_util::stream::iter(users)
                .for_each_concurrent(FAN_OUT, |user| async move {
                    match inner.inbox(&user).await {
                        Ok(letters) => {
                            for letter in letters {
                                inner.local.push(&user, &Push::Message(Arc::new(letter)));
                            }
                        }
                        Err(error) => {
                            inner.counters.backend_errors.inc();
                            tracing::warn!(%error, %user, "inbox repair failed");
                        }
                    }
                })
                .await;
            tracing::info!(users = count, "handed stored messages to local connections again");
        }
    }

    async fn heartbeat(self: Arc<Self>) {
        let every = self.settings.node_ttl / 3;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = ticks.tick() => {}
                () = self.beat_now.notified() => {}
            }
            if let Err(error) = self.beat().await {
                self.counters.backend_errors.inc();
                tracing::warn!(%error, "heartbeat failed");
            }
        }
    }

    /// One heartbeat: liveness, epoch, directory of live nodes, sweep of
    /// dead ones, and a probe through our own channel.
    async fn beat(self: &Arc<Self>) -> Result<(), BackendError> {
        let now = now_ms();
        let me = self.me();
        let was_alive: Option<String> = self
            .client
            .set(self.keys.node_alive(me), now, Some(Expiration::PX(ttl_i64(self.ttl_ms()))), None, true)
            .await?;
        let _: () = self.client.zadd(self.keys.nodes(), None, None, false, false, (now as f64, me)).await?;

        let stored: Option<String> = self.client.get(self.keys.epoch()).await?;
        let swept: Option<String> = self.client.getdel(self.keys.node_swept(me)).await?;
        let lapsed = was_alive.is_none() && self.last_beat_ms.load(Ordering::Relaxed) != 0;
        // Redis lost its state, our liveness key had lapsed, or another node
        // swept us while we were presumed dead (perhaps after we had
        // registered again): register everything again, and hand over what
        // was stored for our users meanwhile.
        self.adopt_epoch(stored).await?;
        let new_epoch = self.epoch_changed.swap(false, Ordering::AcqRel);
        if new_epoch || lapsed || swept.is_some() {
            self.register_all().await?;
            self.repair();
        }
        let failed: Vec<(UserId, Uuid)> =
            std::mem::take(&mut *self.unregister_later.lock().unwrap_or_else(|e| e.into_inner()));
        for (user, conn) in failed {
            let _ = self.unregister(&user, conn).await;
        }

        let cutoff = now.saturating_sub(self.ttl_ms()) as f64;
        let dead: Vec<String> = self.client.zrangebyscore(self.keys.nodes(), "-inf", cutoff, false, None).await?;
        for node in dead.iter().filter(|n| *n != me) {
            self.sweep(node).await?;
        }
        let dead: HashSet<String> = dead.into_iter().filter(|n| n != me).collect();
        let previously = std::mem::replace(&mut *self.dead.write().unwrap_or_else(|e| e.into_inner()), dead.clone());
        if !dead.is_subset(&previously) {
            // A node died: what it had accepted but not yet published is in
            // the inboxes of users who may be connected here.
            self.repair();
        }

        self.enqueue(me, Routed::Probe);
        self.last_beat_ms.store(now, Ordering::Relaxed);
        Ok(())
    }

    /// Puts every local connection back into presence.
    async fn register_all(&self) -> Result<(), BackendError> {
        let registrations = self.local.registrations();
        let count = registrations.len();
        let results: Vec<Result<(), BackendError>> = futures_util::stream::iter(registrations)
            .map(|(user, conn)| async move { self.register(&user, conn).await })
            .buffer_unordered(FAN_OUT)
            .collect()
            .await;
        results.into_iter().collect::<Result<(), _>>()?;
        tracing::info!(connections = count, "registered local connections again");
        Ok(())
    }

    /// Compares the stored epoch with ours. When it is missing or another,
    /// Redis lost its state: adopt the stored one, proposing a new one if
    /// there is none. True when ours changed.
    async fn adopt_epoch(&self, stored: Option<String>) -> Result<bool, BackendError> {
        let known = *self.epoch.read().unwrap_or_else(|e| e.into_inner());
        if stored.as_deref().and_then(|s| Uuid::try_parse(s).ok()) == Some(known) {
            return Ok(false);
        }
        let proposed = Uuid::now_v7().to_string();
        let _: Option<String> = self.client.set(self.keys.epoch(), proposed, None, Some(SetOptions::NX), false).await?;
        let epoch = parse_epoch(self.client.get(self.keys.epoch()).await?)?;
        let mut current = self.epoch.write().unwrap_or_else(|e| e.into_inner());
        if *current == epoch {
            return Ok(false);
        }
        *current = epoch;
        self.epoch_changed.store(true, Ordering::Release);
        tracing::warn!(%epoch, "redis lost its state: new epoch");
        Ok(true)
    }

    /// Removes a dead node's presence entries, unless another node does,
    /// and leaves it a marker to register again should it be alive.
    async fn sweep(&self, node: &str) -> Result<(), BackendError> {
        let alive: bool = self.client.exists(self.keys.node_alive(node)).await?;
        if alive {
            return Ok(());
        }
        let lock = Some(Expiration::PX(ttl_i64(self.ttl_ms())));
        let holder: Option<String> =
            self.client.set(self.keys.node_sweep(node), self.me(), lock, Some(SetOptions::NX), true).await?;
        if holder.is_some() {
            return Ok(());
        }
        let count = self.remove_entries(node).await?;
        let _: () = self.client.zrem(self.keys.nodes(), node).await?;
        let marker = Some(Expiration::PX(ttl_i64(self.ttl_ms().saturating_mul(10))));
        let _: () = self.client.set(self.keys.node_swept(node), self.me(), marker, None, false).await?;
        self.routes.remove(node);
        self.heard.lock().unwrap_or_else(|e| e.into_inner()).remove(node);
        tracing::info!(node, connections = count, "swept a dead node out of presence");
        Ok(())
    }

    /// Removes every presence entry of `node`, through its reverse index;
    /// how many there were.
    async fn remove_entries(&self, node: &str) -> Result<usize, BackendError> {
        let entries: HashMap<String, String> = self.client.hgetall(self.keys.node_conns(node)).await?;
        let count = entries.len();
        let results: Vec<Result<(), fred::error::Error>> = futures_util::stream::iter(entries)
            .filter_map(|(conn, user)| async move { UserId::parse(&user).ok().map(|user| (conn, user)) })
            .map(|(conn, user)| async move { self.client.hdel::<(), _, _>(self.keys.user_conns(&user), conn).await })
            .buffer_unordered(FAN_OUT)
            .collect()
            .await;
        results.into_iter().collect::<Result<(), _>>()?;
        let _: () = self.client.del(self.keys.node_conns(node)).await?;
        Ok(count)
    }

    /// Takes this node out of presence on a clean shutdown.
    async fn deregister(&self) -> Result<(), BackendError> {
        let me = self.me();
        self.remove_entries(me).await?;
        let _: () = self.client.del(self.keys.node_alive(me)).await?;
        let _: () = self.client.zrem(self.keys.nodes(), me).await?;
        Ok(())
    }
}

/// The store script's answer.
struct StoreReply {
    previous: Option<String>,
    entry: Option<Arc<str>>,
    conns: Vec<(String, String)>,
}

impl StoreReply {
    fn parse(reply: Value) -> Result<Self, BackendError> {
        let corrupt = || BackendError::Corrupt("unexpected store script reply".to_owned());
        let Value::Array(mut parts) = reply else { return Err(corrupt()) };
        if parts.len() != 3 {
            return Err(corrupt());
        }
        let conns = match parts.pop() {
            Some(Value::Array(flat)) => {
                let flat: Vec<String> = flat.into_iter().filter_map(|v| v.as_string()).collect();
                flat.chunks_exact(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect()
            }
            _ => Vec::new(),
        };
        let entry = parts.pop().and_then(|v| v.as_string()).map(|e| Arc::from(e.as_str()));
        let previous = parts.pop().and_then(|v| v.as_string());
        Ok(Self { previous, entry, conns })
    }
}

/// How a message is kept in an inbox entry.
fn stored_form(letter: &Letter) -> Result<Vec<u8>, BackendError> {
    let routed = Routed::Deliver {
        delivery: (*letter.delivery).clone(),
        reply_to: letter.reply_to.clone(),
        received_us: letter.received_us,
        stored_as: None,
    };
    routed.encode().map_err(|e| BackendError::Corrupt(e.to_string()))
}

/// How a push travels to another node.
fn routed_form(user: &UserId, push: &Push) -> Routed {
    match push {
        Push::Message(letter) => Routed::Deliver {
            delivery: (*letter.delivery).clone(),
            reply_to: letter.reply_to.clone(),
            received_us: letter.received_us,
            stored_as: letter.stored_as.as_deref().map(str::to_owned),
        },
        Push::Receipt(receipt) => Routed::Receipt { to: user.clone(), receipt: (**receipt).clone() },
    }
}

fn parse_sent_record(record: &str) -> Result<Accepted, BackendError> {
    let corrupt = || BackendError::Corrupt(format!("dedupe record {record:?}"));
    let (msg, status) = record.split_once(':').ok_or_else(corrupt)?;
    let msg = MsgId::parse(msg).map_err(|_| corrupt())?;
    let status = match status {
        "routed" => AcceptStatus::Routed,
        "stored" => AcceptStatus::Stored,
        _ => return Err(corrupt()),
    };
    Ok(Accepted { msg, status, duplicate: true })
}

fn status_name(status: AcceptStatus) -> &'static str {
    match status {
        AcceptStatus::Routed => "routed",
        AcceptStatus::Stored => "stored",
    }
}

fn parse_epoch(value: Option<String>) -> Result<Uuid, BackendError> {
    value
        .and_then(|v| Uuid::try_parse(&v).ok())
        .ok_or_else(|| BackendError::Corrupt("epoch missing or not a UUID".to_owned()))
}

fn flag(on: bool) -> Value {
    if on { "1" } else { "0" }.into()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn ttl_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn now_ms() -> u64 {
    crate::unix_micros() / 1000
}
