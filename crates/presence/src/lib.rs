//! Who is online where, each user's log, and how a message reaches them.
//!
//! A [`Backend`] keeps presence (user -> connections -> nodes), each user's
//! log (every stored message with its `seq`, and a cursor per device), the
//! dedupe record of each send, and routes messages and receipts to the node
//! that holds the recipient's connections. It speaks no WebSocket:
//! connections on this node are reached through the [`Local`] trait, which
//! the gateway implements.
//!
//! Two implementations sit behind one type: an in-process one for a single
//! node (no Redis needed), and one over Redis for a cluster. Each owns its
//! background tasks and ends them in [`Backend::shutdown`].

mod cursor;
mod events;
mod keys;
mod memory;
mod redis;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard_protocol::{AcceptStatus, Body, ClientMsgId, DeviceId, Letter, MsgId, Receipt, ReplyTo, To, UserId};
use uuid::Uuid;

pub use cursor::Cursor;
pub use events::{EventQueue, EventSettings, QueuedEvent};
pub use memory::MemoryBackend;
pub use redis::RedisBackend;

/// When a message is written to the recipient's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Always, before the sender hears `accepted`.
    Durable,
    /// Only when no live connection of the recipient could be reached.
    Fast,
}

/// How long a repeated `send` id is recognised.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(600);

/// How long a kick waits for the other nodes to say what they closed.
pub const KICK_WAIT: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct Settings {
    pub node_id: String,
    pub mode: Mode,
    pub inbox_max_len: usize,
    pub inbox_ttl: Duration,
    /// A device neither connected nor acked for this long is forgotten: it
    /// no longer holds back the trimming of its user's log.
    pub device_ttl: Duration,
    /// A node whose liveness key is older than this is dead.
    pub node_ttl: Duration,
    /// Prefix of every Redis key and channel.
    pub prefix: String,
    /// Redis commands of the hot path issued within this long go out in
    /// one write; zero: each as soon as it is issued.
    pub batch_window: Duration,
    /// Events for the application backend; none: off.
    pub events: Option<EventSettings>,
}

/// The counters a backend moves; registered by the caller.
#[derive(Clone, Debug)]
pub struct Counters {
    pub inbox_stored: prometheus::IntCounter,
    pub backend_errors: prometheus::IntCounter,
    pub route_gaps: prometheus::IntCounter,
    /// Items per envelope published to another node.
    pub envelope_items: prometheus::Histogram,
    /// Envelopes published to other nodes, and received from them.
    pub envelopes_out: prometheus::IntCounter,
    pub envelopes_in: prometheus::IntCounter,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum BackendError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("stored state is malformed: {0}")]
    Corrupt(String),
}

/// A message for one recipient, as a local connection gets it. The letter
/// is shared by every recipient of a send on this node.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub letter: Arc<Letter>,
    pub to: UserId,
    /// Its place in the recipient's log; none for a live-only message.
    pub seq: Option<u64>,
}

/// What the backend hands to a local connection. Each kind is shared
/// between the connections of a user, and a push is small: every
/// connection's queue preallocates room for a few dozen of them.
#[derive(Clone, Debug)]
pub enum Push {
    Message(Arc<Arrival>),
    Receipt(Arc<Receipt>),
    /// Envelopes may have been lost on the way here: read the user's log
    /// again past what the connection has.
    Repair,
}

/// The connections of this node, as the backend sees them.
pub trait Local: Send + Sync + 'static {
    /// Queues `push` on every local connection of `user`; returns how many.
    fn push(&self, user: &UserId, push: &Push) -> usize;
    /// How many connections `user` has on this node.
    fn connections(&self, user: &UserId) -> usize;
    /// Every local connection, to register again after Redis lost them.
    fn registrations(&self) -> Vec<(UserId, Uuid)>;
    /// Closes the local connections `kick` names and, when it blocks,
    /// refuses the user's upgrades here until the block ends; returns how
    /// many connections it closed.
    fn kick(&self, kick: &Kick) -> usize;
}

/// Closes a user's connections (those of one device, when named) on every
/// node: `POST /v1/disconnect`.
#[derive(Clone, Debug)]
pub struct Kick {
    pub user: UserId,
    pub device: Option<DeviceId>,
    /// Also refuse the user's upgrades this long, on every node.
    pub block: Option<Duration>,
}

/// A message as a sender hands it in.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub from: UserId,
    /// The sender's idempotency key; dedupes within [`DEDUPE_WINDOW`].
    pub id: Option<ClientMsgId>,
    /// Whether the sender wants receipts (by `id`) when recipients ack.
    pub receipt: bool,
    pub to: To,
    pub body: Body,
    /// Live only: no log, no dedupe record, no receipt.
    pub ephemeral: bool,
    /// When this node received it (Unix microseconds).
    pub received_us: u64,
}

/// The answer to a send, as the sender sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub msg: MsgId,
    /// `routed` when any recipient was reached live.
    pub status: AcceptStatus,
    /// Each recipient's outcome, in the order of the send's list.
    pub recipients: Vec<(UserId, AcceptStatus)>,
    /// The id was seen before: this is the original answer, nothing was sent.
    pub duplicate: bool,
}

impl Accepted {
    fn of(msg: MsgId, recipients: Vec<(UserId, AcceptStatus)>, duplicate: bool) -> Self {
        let status = recipients.iter().map(|(_, status)| *status).min().unwrap_or(AcceptStatus::Stored);
        Self { msg, status, recipients, duplicate }
    }
}

/// A connection about to be served.
#[derive(Clone, Debug)]
pub struct Connecting {
    pub user: UserId,
    pub device: DeviceId,
    pub conn: Uuid,
    /// Replay after this seq instead of after the device's cursor.
    pub since: Option<u64>,
    /// The user's first connection on this node.
    pub first: bool,
}

/// A registered connection: what it must be told first.
#[derive(Clone, Debug)]
pub struct Connected {
    /// What the device has not acked yet, oldest first.
    pub replay: Vec<Arrival>,
    /// The epoch as of the registration.
    pub epoch: Uuid,
    /// The user's latest seq.
    pub seq: u64,
    /// What the device has acked so far.
    pub cursor: Cursor,
    /// The user is blocked: the connection must close at once. Nodes hear
    /// of a block when it is set; this catches a node that started since.
    pub blocked: bool,
}

/// A message a connection wrote and its client acked: what the receipt
/// needs, and where it is in the log.
#[derive(Clone, Debug)]
pub struct Acked {
    pub msg: MsgId,
    pub seq: Option<u64>,
    pub from: UserId,
    pub reply: Option<ReplyTo>,
}

/// A device's acks, as one connection saw them in one burst.
#[derive(Clone, Debug)]
pub struct DeviceAck {
    pub user: UserId,
    pub device: DeviceId,
    /// Everything the device has acked, as this connection knows it.
    pub cursor: Cursor,
    /// The messages acked in this burst.
    pub acked: Vec<Acked>,
    /// The device's cursor moved far enough since its connection last
    /// asked: trim what every device seen lately has acked (the backend
    /// may also trim by its own count).
    pub trim: bool,
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
    /// reads what its device has not acked, oldest first. In this order, a
    /// message accepted meanwhile reaches the connection live or by replay.
    pub async fn connect(&self, connecting: &Connecting) -> Result<Connected, BackendError> {
        match self {
            Self::Memory(m) => Ok(m.connect(connecting)),
            Self::Redis(r) => Box::pin(r.connect(connecting)).await,
        }
    }

    /// Unregisters a connection; `last` when it was the user's last one on
    /// this node.
    pub async fn disconnect(&self, user: &UserId, conn: Uuid, last: bool) -> Result<(), BackendError> {
        match self {
            Self::Memory(m) => {
                m.disconnect(user);
                Ok(())
            }
            Self::Redis(r) => Box::pin(r.disconnect(user, conn, last)).await,
        }
    }

    /// Takes responsibility for a message: dedupes, logs as the mode says,
    /// and routes it to every connection of each recipient.
    pub async fn send(&self, outgoing: Outgoing) -> Result<Accepted, BackendError> {
        match self {
            Self::Memory(m) => Ok(m.send(outgoing)),
            Self::Redis(r) => Box::pin(r.send(outgoing)).await,
        }
    }

    /// Records a device's acks, trims what every device has acked, and
    /// sends the receipts of messages no other device acked before. Never
    /// waits: over Redis the acks are queued, and those of one device
    /// queued meanwhile are written together. An ack that cannot be
    /// written is counted and logged; its messages are replayed to the
    /// device at its next connection.
    pub fn ack(&self, ack: DeviceAck) {
        match self {
            Self::Memory(m) => m.ack(ack),
            Self::Redis(r) => r.ack(ack),
        }
    }

    /// The user's logged messages after `seq`, oldest first: what a
    /// connection reads again when envelopes may have been lost.
    pub async fn read_log(&self, user: &UserId, after: u64) -> Result<Vec<Arrival>, BackendError> {
        match self {
            Self::Memory(m) => Ok(m.read_log(user, after)),
            Self::Redis(r) => Box::pin(r.read_log(user, after)).await,
        }
    }

    /// How many connections each user has, anywhere.
    pub async fn online(&self, users: &[UserId]) -> Result<Vec<usize>, BackendError> {
        match self {
            Self::Memory(m) => Ok(m.online(users)),
            Self::Redis(r) => Box::pin(r.online(users)).await,
        }
    }

    /// Closes the connections `kick` names on every node, waiting at most
    /// [`KICK_WAIT`] for the other nodes to answer; how many were closed,
    /// as far as the answers tell.
    pub async fn kick(&self, kick: &Kick) -> Result<usize, BackendError> {
        match self {
            Self::Memory(m) => Ok(m.kick(kick)),
            Self::Redis(r) => Box::pin(r.kick(kick)).await,
        }
    }

    /// The queue of events this node delivers, once; none when events are
    /// off (or it was taken).
    pub fn events(&self) -> Option<EventQueue> {
        match self {
            Self::Memory(m) => m.events(),
            Self::Redis(r) => r.events(),
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

/// Now, in milliseconds since the Unix epoch.
pub fn unix_millis() -> u64 {
    unix_micros() / 1000
}

fn reached(connections: usize) -> AcceptStatus {
    if connections > 0 { AcceptStatus::Routed } else { AcceptStatus::Stored }
}

/// The letter of `outgoing`, accepted by `node` as `msg`.
fn letter_of(outgoing: &Outgoing, msg: MsgId, node: &str) -> Letter {
    let reply = match (&outgoing.id, outgoing.receipt && !outgoing.ephemeral) {
        (Some(id), true) => Some(ReplyTo { id: id.clone(), node: node.to_owned(), list: outgoing.to.is_list() }),
        _ => None,
    };
    Letter {
        msg,
        from: outgoing.from.clone(),
        body: outgoing.body.clone(),
        ts: outgoing.received_us / 1000,
        reply,
        received_us: outgoing.received_us,
        ephemeral: outgoing.ephemeral,
    }
}

/// Whether a letter logged at `ts` (ms) has waited past `ttl`.
fn expired(ts: u64, ttl: Duration) -> bool {
    unix_micros() / 1000 > ts.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

/// The receipt of `msg` for its recipient `user`.
fn receipt_for(msg: MsgId, reply: &ReplyTo, user: &UserId) -> Arc<Receipt> {
    Arc::new(Receipt {
        id: reply.id.clone(),
        msg,
        status: switchboard_protocol::ReceiptStatus::Delivered,
        user: reply.list.then(|| user.clone()),
    })
}
