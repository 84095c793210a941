//! Envelopes between nodes: what one node publishes to another node's
//! channel. Always MessagePack.
//!
//! Every envelope carries the next number of its publisher's sequence (one
//! publisher per sending node and destination), so a receiver can tell when
//! envelopes went missing on the way (Redis pub/sub drops messages on
//! reconnect or under memory pressure).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::from_msgpack;
use crate::frame::{Delivery, Receipt};
use crate::ids::{ClientMsgId, UserId};

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope does not encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("envelope does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// A batch of items from one node to another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The publishing node.
    pub node: String,
    /// The publisher's stream: the sequence restarts when this changes.
    pub stream: Uuid,
    /// Position in the stream, from 1.
    pub seq: u64,
    pub items: Vec<Routed>,
}

/// One thing a node asks another to hand to its local connections.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Routed {
    /// A message for every local connection of `delivery.to`.
    Deliver {
        delivery: Delivery,
        /// The sender's idempotency key, for the receipt; none for API sends.
        reply_to: Option<ClientMsgId>,
        /// When the sender's node received it (Unix microseconds).
        received_us: u64,
        /// Its entry id in the recipient's inbox, when it is stored there.
        stored_as: Option<String>,
    },
    /// A receipt for every local connection of `to`.
    Receipt { to: UserId, receipt: Receipt },
    /// The node's own liveness probe of its channel.
    Probe,
}

impl Routed {
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        Ok(rmp_serde::to_vec(self)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Ok(from_msgpack(bytes)?)
    }
}

impl Envelope {
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        Ok(rmp_serde::to_vec(self)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Ok(from_msgpack(bytes)?)
    }
}
