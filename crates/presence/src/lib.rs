//! Who is online where, and how a message reaches them.
//!
//! A [`Backend`] keeps presence (user -> connections -> nodes), the inbox of
//! each user, the dedupe record of each sender, and routes messages and
//! receipts to the node that holds the recipient's connections. It speaks no
//! WebSocket: connections on this node are reached through the [`Local`]
//! trait, which the gateway implements.
//!
//! Two implementations sit behind one type: an in-process one for a single
//! node (no Redis needed), and one over Redis for a cluster.

mod memory;

pub use memory::unix_micros;

use std::sync::Arc;
use std::time::Duration;

use switchboard_protocol::{AcceptStatus, Body, ClientMsgId, Delivery, MsgId, Receipt, UserId};
use uuid::Uuid;

pub use memory::MemoryBackend;

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
    #[error("backend unavailable: {0}")]
    Unavailable(String),
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
}

/// What the backend hands to a local connection.
#[derive(Clone, Debug)]
pub enum Push {
    Message(Letter),
    Receipt(Arc<Receipt>),
}

/// The connections of this node, as the backend sees them.
pub trait Local: Send + Sync + 'static {
    /// Queues `push` on every local connection of `user`; returns how many.
    fn push(&self, user: &UserId, push: &Push) -> usize;
    /// How many connections `user` has on this node.
    fn connections(&self, user: &UserId) -> usize;
}

/// A message as a sender hands it in.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub from: UserId,
    /// The sender's idempotency key; dedupes within [`DEDUPE_WINDOW`].
    pub id: Option<ClientMsgId>,
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

/// A user's acknowledgement of a message it received.
#[derive(Clone, Debug)]
pub struct Ack {
    pub user: UserId,
    pub msg: MsgId,
    /// The original sender and its `send` id, when a receipt is due.
    pub reply: Option<(UserId, ClientMsgId)>,
}

/// The backend of one node.
pub enum Backend {
    Memory(MemoryBackend),
}

impl Backend {
    /// The single-node backend: everything in this process.
    pub fn memory(settings: Settings, local: Arc<dyn Local>, counters: Counters) -> Self {
        Self::Memory(MemoryBackend::new(settings, local, counters))
    }

    pub fn node_id(&self) -> &str {
        match self {
            Self::Memory(m) => m.node_id(),
        }
    }

    /// The life of the stored state: changes only when that state was lost.
    pub fn epoch(&self) -> Uuid {
        match self {
            Self::Memory(m) => m.epoch(),
        }
    }

    /// Whether this node can take traffic: registered and reachable.
    pub fn is_ready(&self) -> bool {
        match self {
            Self::Memory(_) => true,
        }
    }

    /// Registers a connection (already reachable through [`Local`]) and then
    /// reads the user's inbox, oldest first. In this order, a message
    /// accepted meanwhile reaches the connection live or by the inbox.
    pub async fn connect(&self, user: &UserId, conn: Uuid) -> Result<Vec<Letter>, BackendError> {
        match self {
            Self::Memory(m) => Ok(m.connect(user, conn)),
        }
    }

    pub async fn disconnect(&self, user: &UserId, conn: Uuid) -> Result<(), BackendError> {
        match self {
            Self::Memory(m) => {
                m.disconnect(user, conn);
                Ok(())
            }
        }
    }

    /// Takes responsibility for a message: dedupes, stores as the mode says,
    /// and routes it to every connection of the recipient.
    pub async fn send(&self, outgoing: Outgoing) -> Result<Accepted, BackendError> {
        match self {
            Self::Memory(m) => Ok(m.send(outgoing)),
        }
    }

    /// Removes an acked message from the inbox and routes the receipt.
    pub async fn ack(&self, ack: Ack) -> Result<(), BackendError> {
        match self {
            Self::Memory(m) => {
                m.ack(ack);
                Ok(())
            }
        }
    }

    /// How many connections each user has, anywhere.
    pub async fn online(&self, users: &[UserId]) -> Result<Vec<usize>, BackendError> {
        match self {
            Self::Memory(m) => Ok(m.online(users)),
        }
    }

    /// Periodic upkeep: expiry of inboxes and dedupe records.
    pub async fn maintain(&self) {
        match self {
            Self::Memory(m) => m.maintain(),
        }
    }
}
