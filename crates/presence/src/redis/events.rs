//! The event queue in Redis: one stream per shard, each shard delivered by
//! the one node that holds its lease.
//!
//! Events are queued by the scripts that change presence and logs
//! (`presence.lua`, `append.lua`), in the same atomic step, when the shard's
//! stream can be in that step: always on standalone Redis and Sentinel. On
//! Cluster a script touches one slot, the user's, and the shard has a slot
//! of its own: there the script decides and the node queues the event with
//! an `XADD` right after the script's answer, before it answers its caller.
//!
//! Every node polls the shards whose lease it holds, a fair share of them
//! (`SHARDS` over the live nodes), through the consumer group `switchboard`
//! with itself as consumer (`take.lua`, which also keeps the lease). A lease
//! lasts `node-ttl` and is refreshed by every poll; a node that stops
//! polling loses it and whoever takes the shard next first claims the
//! shard's pending entries (`XAUTOCLAIM`), in entry order, before reading
//! new ones. A node delivers a shard's events only while its lease is
//! fresh, as it last saw it; an event is acknowledged and deleted after
//! delivery (or when it expired).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::bytes::Bytes;
use fred::interfaces::{ClientLike, StreamsInterface};
use fred::types::Value;
use fred::types::scripts::Script;
use switchboard_protocol::{EventType, UserId};
use tokio::time::Instant;

use super::{Inner, millis, now_ms};
use crate::events::{QueuedEvent, SHARDS, shard_of};
use crate::{BackendError, EventQueue};

/// The consumer group every node reads the shards through.
const GROUP: &str = "switchboard";
/// How often a node with nothing to deliver looks again.
const POLL: Duration = Duration::from_millis(100);
/// Entries one shard hands out per poll at most.
const PER_SHARD: usize = 256;

const DONE: &str = "redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])\nredis.call('XDEL', KEYS[1], ARGV[2])";
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end";

/// What this node knows of the shards it delivers.
pub(super) struct EventState {
    take: Script,
    done: Script,
    release: Script,
    /// Per shard, until when (ms) this node may deliver it: two thirds of
    /// a lease past the poll that last refreshed it; 0 when not held.
    held: [AtomicU64; SHARDS as usize],
    /// Shards being claimed after taking their lease, and where.
    claims: Mutex<HashMap<u16, String>>,
    /// When this node next tries to take free leases.
    next_acquire: Mutex<Instant>,
}

impl EventState {
    pub(super) fn new() -> Self {
        Self {
            take: Script::from_lua(include_str!("take.lua")),
            done: Script::from_lua(DONE),
            release: Script::from_lua(RELEASE),
            held: std::array::from_fn(|_| AtomicU64::new(0)),
            claims: Mutex::new(HashMap::new()),
            next_acquire: Mutex::new(Instant::now()),
        }
    }
}

/// The reading end of the Redis event queue.
pub struct RedisEvents {
    inner: Arc<Inner>,
    state: Arc<EventState>,
}

impl Inner {
    /// The stream key a script queues `user`'s events on, or the user's
    /// presence hash when the script cannot reach the shard (Cluster) and
    /// answers that the event is due instead.
    pub(super) fn event_stream(&self, user: &UserId) -> String {
        if self.client.is_clustered() { self.keys.user_conns(user) } else { self.keys.events(shard_of(user)) }
    }

    /// Queues an event the script decided on and could not queue itself.
    pub(super) async fn queue_event(&self, user: &UserId, kind: EventType, body: &str) -> Result<(), BackendError> {
        let fields = [("u", user.as_str()), ("t", kind.as_str()), ("e", body)];
        let stream = self.keys.events(shard_of(user));
        let _: Value = Box::pin(self.client.xadd(stream, false, None, "*", fields.to_vec())).await?;
        Ok(())
    }

    /// Gives up every lease this node holds, so that the others take the
    /// shards at once (on shutdown).
    pub(super) async fn release_leases(&self) {
        let Some(state) = &self.events else { return };
        for shard in 0..SHARDS {
            if state.held[usize::from(shard)].load(Ordering::Relaxed) != 0
                && let Err(error) = self.release_lease(state, shard).await
            {
                tracing::debug!(%error, shard, "event lease not released; it lapses");
            }
        }
    }

    /// Stops delivering `shard` and gives up its lease, if this node holds it.
    async fn release_lease(&self, state: &EventState, shard: u16) -> Result<(), BackendError> {
        state.held[usize::from(shard)].store(0, Ordering::Relaxed);
        let lease = self.keys.events_lease(shard);
        let _: Value = state.release.evalsha_with_reload(&self.client, vec![lease], vec![self.me()]).await?;
        Ok(())
    }
}

impl RedisEvents {
    pub(super) fn queue(inner: Arc<Inner>) -> Option<EventQueue> {
        let state = inner.events.clone()?;
        Some(EventQueue::Redis(Self { inner, state }))
    }

    pub(crate) fn owns(&self, shard: u16) -> bool {
        self.state.held.get(usize::from(shard)).is_some_and(|until| until.load(Ordering::Relaxed) > now_ms())
    }

    pub(crate) async fn take(&self, room: usize) -> Result<Vec<QueuedEvent>, BackendError> {
        let state = &self.state;
        loop {
            let held: Vec<u16> = (0..SHARDS).filter(|shard| self.owns(*shard)).collect();
            let count = (room / held.len().max(1)).clamp(1, PER_SHARD);
            let reads = held.iter().map(|shard| self.take_shard(*shard, count, false));
            let mut taken: Vec<QueuedEvent> =
                futures_util::future::try_join_all(reads).await?.into_iter().flatten().collect();
            let now = Instant::now();
            let acquiring = {
                let mut next = state.next_acquire.lock().unwrap_or_else(|e| e.into_inner());
                let due = *next <= now;
                if due {
                    *next = now + self.inner.settings.node_ttl / 3;
                }
                due
            };
            if acquiring {
                taken.extend(self.rebalance(held, count).await?);
            }
            if !taken.is_empty() {
                return Ok(taken);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Takes free leases up to this node's fair share, or gives up what is
    /// past it, so that the shards spread over the live nodes.
    async fn rebalance(&self, held: Vec<u16>, count: usize) -> Result<Vec<QueuedEvent>, BackendError> {
        let me = self.inner.me();
        let nodes = self.inner.replica.peers().iter().filter(|peer| &***peer != me).count() + 1;
        let fair = usize::from(SHARDS).div_ceil(nodes);
        let mut taken = Vec::new();
        if held.len() > fair {
            for shard in &held[fair..] {
                self.inner.release_lease(&self.state, *shard).await?;
            }
            return Ok(taken);
        }
        // Each node starts looking at its own place, so that nodes
        // starting together do not all reach for the same shards.
        let start = fred::util::redis_keyslot(me.as_bytes()) % SHARDS;
        let mut holding = held.len();
        for shard in (0..SHARDS).map(|i| (start + i) % SHARDS) {
            if holding >= fair {
                break;
            }
            if held.contains(&shard) {
                continue;
            }
            taken.extend(self.take_shard(shard, count, true).await?);
            if self.owns(shard) {
                holding += 1;
            }
        }
        Ok(taken)
    }

    /// One poll of one shard: keeps (or, with `acquire`, takes) its lease
    /// and hands out what is due.
    async fn take_shard(&self, shard: u16, count: usize, acquire: bool) -> Result<Vec<QueuedEvent>, BackendError> {
        let (inner, state) = (&self.inner, &self.state);
        let started = now_ms();
        let cursor = state.claims.lock().unwrap_or_else(|e| e.into_inner()).get(&shard).cloned().unwrap_or_default();
        let ttl = millis(inner.settings.node_ttl);
        let keys = vec![inner.keys.events(shard), inner.keys.events_lease(shard)];
        let args: Vec<Value> = vec![
            inner.me().into(),
            ttl.to_string().into(),
            GROUP.into(),
            count.to_string().into(),
            if acquire { "1" } else { "0" }.into(),
            cursor.into(),
        ];
        let reply: Value = Box::pin(state.take.evalsha_with_reload(&inner.client, keys, args)).await?;
        let held = &state.held[usize::from(shard)];
        let Value::Array(reply) = reply else {
            held.store(0, Ordering::Relaxed);
            state.claims.lock().unwrap_or_else(|e| e.into_inner()).remove(&shard);
            return Ok(Vec::new());
        };
        held.store(started + ttl * 2 / 3, Ordering::Relaxed);
        let mut reply = reply.into_iter().map(|value| value.into_string().unwrap_or_default());
        let cursor = reply.next().unwrap_or_default();
        {
            let mut claims = state.claims.lock().unwrap_or_else(|e| e.into_inner());
            if cursor.is_empty() {
                claims.remove(&shard);
            } else {
                claims.insert(shard, cursor);
            }
        }
        let mut events = Vec::new();
        while let (Some(id), Some(user), Some(kind), Some(body)) =
            (reply.next(), reply.next(), reply.next(), reply.next())
        {
            let queued_ms = id.split_once('-').and_then(|(ms, _)| ms.parse().ok()).unwrap_or(started);
            match EventType::parse(&kind) {
                Some(kind) => events.push(QueuedEvent { shard, id, user, kind, body: Bytes::from(body), queued_ms }),
                None => {
                    tracing::warn!(shard, id, "dropping a malformed event entry");
                    self.forget(shard, &id).await?;
                }
            }
        }
        Ok(events)
    }

    pub(crate) async fn done(&self, event: &QueuedEvent) -> Result<(), BackendError> {
        self.forget(event.shard, &event.id).await
    }

    async fn forget(&self, shard: u16, id: &str) -> Result<(), BackendError> {
        let keys = vec![self.inner.keys.events(shard)];
        let args = vec![GROUP.to_owned(), id.to_owned()];
        let _: Value = Box::pin(self.state.done.evalsha_with_reload(&self.inner.client, keys, args)).await?;
        Ok(())
    }

    pub(crate) async fn depth(&self) -> Result<u64, BackendError> {
        let lengths = (0..SHARDS).map(|shard| self.inner.client.xlen::<u64, _>(self.inner.keys.events(shard)));
        Ok(futures_util::future::try_join_all(lengths).await?.into_iter().sum())
    }
}
