//! Who is online where, and how a message reaches them.
//!
//! A [`Backend`] keeps presence (user -> connections -> nodes), the inbox of
//! each user, the dedupe record of each sender, and routes messages and
//! receipts to the node that holds the recipient's connections. It speaks no
//! WebSocket: connections on this node are reached through the [`Local`]
//! trait, which the gateway implements.
//!
//! Two implementations sit behind one type: an in-process one for a single
//! node (no Redis needed), and one over Redis for a cluster. Each owns its
//! background tasks and ends them in [`Backend::shutdown`].

mod keys;
mod memory;
mod redis;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard_protocol::{AcceptStatus, Body, ClientMsgId, Delivery, MsgId, Receipt, UserId};
use uuid::Uuid;

pub use memory::MemoryBackend;
pub use redis::RedisBackend;

/// When a message is written to the recipient's inbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Always, before the sender hears `accepted`; removed on ack.
    Durable,
    /// Only when no live connection of the recipient could be reached.
    Fast,
}

/// How long a repeated `send` id is recognised.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct Settings {
    pub node_id: String,
    pub mode: Mode,
    pub inbox_max_len: usize,
    pub inbox_ttl: Duration,
    /// A node whose liveness key is older than this is dead.
    pub node_ttl: Duration,
    /// Prefix of every Redis key and channel.
    pub prefix: String,
}

/// The counters a backend moves; registered by the caller.
#[derive(Clone, Debug)]
pub struct Counters {
    pub inbox_stored: prometheus::IntCounter,
    pub backend_errors: prometheus::IntCounter,
    pub route_gaps: prometheus::IntCounter,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("stored state is malformed: {0}")]
    Corrupt(String),
}

/// A message on its way to its recipient's connections.
#[derive(Clone, Debug)]
pub struct Letter {
    pub delivery: Arc<Delivery>,
    /// The sender's `send` id, so the recipient's ack can become a receipt;
    /// none for server API sends.
    pub reply_to: Option<ClientMsgId>,
    /// When the sender's node received it (Unix microseconds), for the
    /// routing latency histogram.
    pub received_us: u64,
    /// Its entry in the recipient's inbox, when the backend stored it there.
    pub stored_as: Option<Arc<str>>,
}

/// What the backend hands to a local connection. Both kinds are shared
/// between the connections of a user, and a push is small: every
/// connection's queue preallocates room for a few dozen of them.
#[derive(Clone, Debug)]
pub enum Push {
    Message(Arc<Letter>),
    Receipt(Arc<Receipt>),
}

/// The connections of this node, as the backend sees them.
pub trait Local: Send + Sync + 'static {
    /// Queues `push` on every local connection of `user`; returns how many.
    fn push(&self, user: &UserId, push: &Push) -> usize;
    /// How many connections `user` has on this node.
    fn connections(&self, user: &UserId) -> usize;
    /// Every local connection, to register again after Redis lost them.
    fn registrations(&self) -> Vec<(UserId, Uuid)>;
}

/// A message as a sender hands it in.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub from: UserId,
    /// The sender's idempotency key; dedupes within [`DEDUPE_WINDOW`].
    pub id: Option<ClientMsgId>,
    /// Whether the sender wants a receipt (by `id`) when the recipient acks.
    pub receipt: bool,
    pub to: UserId,
    pub body: Body,
    /// When this node received it (Unix microseconds).
    pub received_us: u64,
}

/// The answer to a send, as the sender sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub msg: MsgId,
    pub status: AcceptStatus,
    /// The id was seen before: this is the original answer, nothing was sent.
    pub duplicate: bool,
}

/// A registered connection: what it must be told first.
#[derive(Clone, Debug)]
pub struct Connected {
    /// The user's stored messages, oldest first.
    pub letters: Vec<Letter>,
    /// The epoch as of the registration.
    pub epoch: Uuid,
}

/// A user's acknowledgement of a message it received.
#[derive(Clone, Debug)]
pub struct Ack {
    pub user: UserId,
    pub msg: MsgId,
    /// What this connection remembers of the acked message, when it does.
    pub delivered: Option<Delivered>,
}

/// What a connection remembers of a message it wrote, until it is acked:
/// whom to send the receipt, and where the message is stored; never the
/// body, so that a client that does not ack costs little.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub from: UserId,
    pub reply_to: Option<ClientMsgId>,
    pub stored_as: Option<Arc<str>>,
}

impl From<&Letter> for Delivered {
    fn from(letter: &Letter) -> Self {
        Self {
            from: letter.delivery.from.clone(),
            reply_to: letter.reply_to.clone(),
            stored_as: letter.stored_as.clone(),
        }
    }
}

/// The backend of one node.
///
/// The Redis operations are boxed while they run: their futures are large,
/// and unboxed they would be part of every connection task's state, idle
/// or not.
pub enum Backend {
    Memory(MemoryBackend),
    Redis(RedisBackend),
}

impl Backend {
    /// The single-node backend: everything in this process.
    pub fn memory(settings: Settings, local: Arc<dyn Local>, counters: Counters) -> Self {
        Self::Memory(MemoryBackend::start(settings, local, counters))
    }

    /// The cluster backend over the Redis at `url`; fails when Redis cannot
    /// be reached at start.
    pub async fn redis(
        url: &str,
        settings: Settings,
        local: Arc<dyn Local>,
        counters: Counters,
    ) -> Result<Self, BackendError> {
        Ok(Self::Redis(RedisBackend::start(url, settings, local, counters).await?))
    }

    pub fn node_id(&self) -> &str {
        match self {
            Self::Memory(m) => m.node_id(),
            Self::Redis(r) => r.node_id(),
        }
    }

    /// The life of the stored state: changes only when that state was lost.
    pub fn epoch(&self) -> Uuid {
        match self {
            Self::Memory(m) => m.epoch(),
            Self::Redis(r) => r.epoch(),
        }
    }

    /// Whether this node can take traffic: registered, reachable, and its
    /// own channel delivers.
    pub fn is_ready(&self) -> bool {
        match self {
            Self::Memory(_) => true,
            Self::Redis(r) => r.is_ready(),
        }
    }

    /// Registers a connection (already reachable through [`Local`]) and then
    /// reads the user's inbox, oldest first. In this order, a message
    /// accepted meanwhile reaches the connection live or by the inbox.
    pub async fn connect(&self, user: &UserId, conn: Uuid) -> Result<Connected, BackendError> {
        match self {
            Self::Memory(m) => Ok(Connected { letters: m.connect(user), epoch: m.epoch() }),
            Self::Redis(r) => Box::pin(r.connect(user, conn)).await,
        }
    }

    pub async fn disconnect(&self, user: &UserId, conn: Uuid) -> Result<(), BackendError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(r) => Box::pin(r.disconnect(user, conn)).await,
        }
    }

    /// Takes responsibility for a message: dedupes, stores as the mode says,
    /// and routes it to every connection of the recipient.
    pub async fn send(&self, outgoing: Outgoing) -> Result<Accepted, BackendError> {
        match self {
            Self::Memory(m) => Ok(m.send(outgoing)),
            Self::Redis(r) => Box::pin(r.send(outgoing)).await,
        }
    }

    /// Removes an acked message from the inbox and routes the receipt.
    pub async fn ack(&self, ack: Ack) -> Result<(), BackendError> {
        match self {
            Self::Memory(m) => {
                m.ack(ack);
                Ok(())
            }
            Self::Redis(r) => Box::pin(r.ack(ack)).await,
        }
    }

    /// How many connections each user has, anywhere.
    pub async fn online(&self, users: &[UserId]) -> Result<Vec<usize>, BackendError> {
        match self {
            Self::Memory(m) => Ok(m.online(users)),
            Self::Redis(r) => Box::pin(r.online(users)).await,
        }
    }

    /// Ends the background tasks and removes this node from presence.
    pub async fn shutdown(&self) {
        match self {
            Self::Memory(m) => m.shutdown().await,
            Self::Redis(r) => r.shutdown().await,
        }
    }
}

/// Now, in microseconds since the Unix epoch.
pub fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn reached(connections: usize) -> AcceptStatus {
    if connections > 0 { AcceptStatus::Routed } else { AcceptStatus::Stored }
}

fn receipt_for(msg: MsgId, reply_to: ClientMsgId) -> Push {
    Push::Receipt(Arc::new(Receipt { id: reply_to, msg, status: switchboard_protocol::ReceiptStatus::Delivered }))
}
