//! What nodes hand each other, and what a user's log keeps. Always
//! MessagePack.
//!
//! A node publishes envelopes to another node's channel. Every envelope
//! carries the next number of its publisher's sequence (one publisher per
//! sending node and destination), so a receiver can tell when envelopes
//! went missing on the way (Redis pub/sub drops messages on reconnect or
//! under memory pressure).
//!
//! A message travels as a [`Letter`]: everything but its recipients, who
//! are named next to it (an envelope's [`Item::Deliver`]) or implied (a log
//! is its user's). A letter to many users on one node travels once.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::codec::from_msgpack;
use crate::frame::{Body, Receipt};
use crate::ids::{ClientMsgId, DeviceId, MsgId, UserId};

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("does not encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// A message as nodes pass it on and logs keep it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Letter {
    pub msg: MsgId,
    /// The authenticated sender (or the API caller's `from`).
    pub from: UserId,
    /// As JSON text, untouched: the node that accepted it checked it, and
    /// JSON clients get it as it is.
    #[serde(with = "json_text")]
    pub body: Body,
    /// Milliseconds since the Unix epoch when the message was accepted.
    pub ts: u64,
    /// Where the receipt goes; none when nobody waits for one (server API
    /// and ephemeral sends).
    pub reply: Option<ReplyTo>,
    /// When the sender's node received it (Unix microseconds).
    pub received_us: u64,
    /// Live only: never logged, dropped where its recipient is not.
    #[serde(default)]
    pub ephemeral: bool,
}

/// Where a recipient's node sends the receipt: the `send` id, on the node
/// that accepted the send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTo {
    pub id: ClientMsgId,
    pub node: String,
    /// The send named a list of recipients: receipts name the recipient.
    pub list: bool,
}

/// One recipient of a delivered letter, and the letter's place in that
/// recipient's log (none for a live-only message).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addressee {
    pub user: UserId,
    pub seq: Option<u64>,
}

/// One thing a node asks another to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Item {
    /// A letter for every local connection of each recipient.
    Deliver {
        letter: Arc<Letter>,
        to: Vec<Addressee>,
    },
    /// A receipt for every local connection of `to`.
    Receipt {
        to: UserId,
        receipt: Receipt,
    },
    /// The node's own liveness probe of its channel.
    Probe,
    /// `user`'s first connection on the sending node opened.
    Online {
        user: UserId,
    },
    /// `user`'s last connection on the sending node closed (or a message
    /// for `user` reached the sending node after it had).
    Offline {
        user: UserId,
    },
    /// The sending node started: tell it of your users from now on.
    Hello,
    /// Answered with `Fenced` once everything this node sent before it has
    /// been handled, stored messages included.
    Fence {
        id: u64,
    },
    Fenced {
        id: u64,
    },
    /// Close `user`'s connections here (those of `device` only, when
    /// named), refuse the user's upgrades for `block_ms` when set, and
    /// answer `Disconnected`.
    Disconnect {
        id: u64,
        user: UserId,
        device: Option<DeviceId>,
        block_ms: Option<u64>,
    },
    /// How many connections a `Disconnect` closed here.
    Disconnected {
        id: u64,
        closed: u64,
    },
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
    pub items: Vec<Item>,
}

impl Envelope {
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        Ok(rmp_serde::to_vec(self)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Ok(from_msgpack(bytes)?)
    }
}

impl Letter {
    /// The form a log entry keeps.
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        Ok(rmp_serde::to_vec(self)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Ok(from_msgpack(bytes)?)
    }
}

/// A body as a MessagePack string holding its JSON text: decoding it checks
/// the syntax, not the body rules of client input.
mod json_text {
    use super::*;

    pub fn serialize<S: Serializer>(body: &Body, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(body.json())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Body, D::Error> {
        let text = <Cow<'de, str>>::deserialize(d)?;
        RawValue::from_string(text.into_owned()).map(Body::from_raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_letter_keeps_its_body_as_json_text() {
        let letter = Letter {
            msg: MsgId::new(),
            from: UserId::parse("alice").unwrap_or_else(|_| unreachable!()),
            body: Body::from_json(r#"{"text": "hi", "n": [1, 2.5]}"#).unwrap_or_else(|_| unreachable!()),
            ts: 1,
            reply: None,
            received_us: 2,
            ephemeral: false,
        };
        let bytes = letter.encode().unwrap_or_default();
        let back = Letter::decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.body.json(), r#"{"text": "hi", "n": [1, 2.5]}"#);
        assert_eq!(back, letter);
    }
}
