//! The queue of events for the application backend (contract section 11).
//!
//! Events are decided where presence and logs change, in the same step:
//! `user.online` when a user's presence goes from no connection to one,
//! `user.offline` when it goes back to none (a dead node's sweep included),
//! `message.stored` when a message is logged for a recipient with no live
//! connection. Each user's events go to one shard, always the same, so a
//! shard's order is each of its users' order.
//!
//! The queue hands events to this node's delivery loop ([`EventQueue`]) and
//! forgets each one when the loop says it is done with it. In memory the
//! queue is a channel; in Redis, one stream per shard read through a
//! consumer group by the one node that holds the shard's lease
//! (`redis/events.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fred::bytes::Bytes;
use switchboard_protocol::{EventType, UserId};
use tokio::sync::mpsc;

use crate::BackendError;
use crate::redis::RedisEvents;

/// Shards of the event queue: enough that no stream is hot and that the
/// nodes of a cluster share the delivery, few enough to poll.
pub const SHARDS: u16 = 16;

/// Which shard `user`'s events go to.
pub fn shard_of(user: &UserId) -> u16 {
    fred::util::redis_keyslot(user.as_str().as_bytes()) % SHARDS
}

/// What the backend does about events.
#[derive(Clone, Debug)]
pub struct EventSettings {
    /// `message.stored` carries the message's body.
    pub bodies: bool,
}

/// One queued event, as the delivery loop gets it.
#[derive(Clone, Debug)]
pub struct QueuedEvent {
    pub shard: u16,
    /// Its place in its shard (a stream entry id in Redis).
    pub id: String,
    pub user: String,
    pub kind: EventType,
    /// The request body, exactly as signed and sent.
    pub body: Bytes,
    /// When it was queued (ms since the Unix epoch).
    pub queued_ms: u64,
}

/// The events this node delivers.
pub enum EventQueue {
    Memory(MemoryEvents),
    Redis(RedisEvents),
}

impl EventQueue {
    /// Waits for events and returns about `room` of them at most, each
    /// shard's in its order. Only the delivery loop calls it.
    pub async fn take(&self, room: usize) -> Result<Vec<QueuedEvent>, BackendError> {
        match self {
            Self::Memory(m) => Ok(m.take(room).await),
            Self::Redis(r) => r.take(room).await,
        }
    }

    /// Forgets a delivered (or expired) event.
    pub async fn done(&self, event: &QueuedEvent) -> Result<(), BackendError> {
        match self {
            Self::Memory(m) => {
                m.depth.fetch_sub(1, Ordering::Relaxed);
                Ok(())
            }
            Self::Redis(r) => r.done(event).await,
        }
    }

    /// Whether this node may still deliver `shard`'s events: in Redis,
    /// while it holds the shard's lease.
    pub fn owns(&self, shard: u16) -> bool {
        match self {
            Self::Memory(_) => true,
            Self::Redis(r) => r.owns(shard),
        }
    }

    /// How many events wait in the whole queue (in Redis: every shard),
    /// being delivered or not yet.
    pub async fn depth(&self) -> Result<u64, BackendError> {
        match self {
            Self::Memory(m) => Ok(m.depth.load(Ordering::Relaxed)),
            Self::Redis(r) => r.depth().await,
        }
    }
}

/// The in-memory queue's writing end, held by the single-node backend.
pub(crate) struct MemorySink {
    queue: mpsc::UnboundedSender<QueuedEvent>,
    depth: Arc<AtomicU64>,
    next: AtomicU64,
}

impl MemorySink {
    pub(crate) fn new() -> (Self, MemoryEvents) {
        let (queue, events) = mpsc::unbounded_channel();
        let depth = Arc::new(AtomicU64::new(0));
        let events = MemoryEvents { events: tokio::sync::Mutex::new(events), depth: depth.clone() };
        (Self { queue, depth, next: AtomicU64::new(0) }, events)
    }

    pub(crate) fn push(&self, user: &UserId, kind: EventType, body: String) {
        let event = QueuedEvent {
            shard: 0,
            id: self.next.fetch_add(1, Ordering::Relaxed).to_string(),
            user: user.as_str().to_owned(),
            kind,
            body: Bytes::from(body),
            queued_ms: crate::unix_millis(),
        };
        if self.queue.send(event).is_ok() {
            self.depth.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The in-memory queue's reading end.
pub struct MemoryEvents {
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<QueuedEvent>>,
    depth: Arc<AtomicU64>,
}

impl MemoryEvents {
    async fn take(&self, room: usize) -> Vec<QueuedEvent> {
        let mut events = self.events.lock().await;
        let mut taken = Vec::new();
        // The sender lives as long as the backend; past it, nothing comes.
        match events.recv().await {
            Some(event) => taken.push(event),
            None => return std::future::pending().await,
        }
        while taken.len() < room.max(1) {
            match events.try_recv() {
                Ok(event) => taken.push(event),
                Err(_) => break,
            }
        }
        taken
    }
}
