//! Client and server frames (contract section 3).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::ids::{ClientMsgId, MsgId, UserId};

/// A message body: any JSON value, kept as its JSON text.
///
/// The text is passed through untouched between JSON clients; a MessagePack
/// client gets it transcoded on the way out, so a body is parsed at most once
/// per recipient format.
#[derive(Clone, Debug)]
pub struct Body(Box<RawValue>);

impl Body {
    pub fn null() -> Self {
        Self(RawValue::NULL.to_owned())
    }

    pub fn from_raw(raw: Box<RawValue>) -> Self {
        Self(raw)
    }

    /// Parses JSON text; fails when it is not exactly one JSON value.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text.to_owned()).map(Self)
    }

    pub fn from_value(value: &serde_json::Value) -> Self {
        // A `Value` always serializes; the fallback only keeps this total.
        serde_json::value::to_raw_value(value).map_or_else(|_| Self::null(), Self)
    }

    pub fn json(&self) -> &str {
        self.0.get()
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.json()).unwrap_or(serde_json::Value::Null)
    }
}

impl PartialEq for Body {
    fn eq(&self, other: &Self) -> bool {
        self.to_value() == other.to_value()
    }
}

impl Serialize for Body {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            // JSON: write the text as it came.
            self.0.serialize(s)
        } else {
            // MessagePack: the same value, re-encoded.
            let mut json = serde_json::Deserializer::from_str(self.0.get());
            serde_transcode::Transcoder::new(&mut json).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(d).map(|v| Self::from_value(&v))
    }
}

/// A frame from a client, validated.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientFrame {
    Send { id: ClientMsgId, to: UserId, body: Body },
    Ack { msg: MsgId },
    Ping,
    Presence { users: Vec<UserId> },
}

/// What the server did with an accepted message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AcceptStatus {
    /// On its way to at least one live connection of the recipient.
    Routed,
    /// The recipient is offline; the message waits in the inbox.
    Stored,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptStatus {
    Delivered,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadFrame,
    TooLarge,
    RateLimited,
    InvalidRecipient,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "bad_frame",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::InvalidRecipient => "invalid_recipient",
            Self::Internal => "internal",
        }
    }
}

/// A message as its recipient sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub msg: MsgId,
    /// The authenticated sender (or the API caller's `from`), never client input.
    pub from: UserId,
    pub to: UserId,
    pub body: Body,
    /// Milliseconds since the Unix epoch when the message was accepted.
    pub ts: u64,
}

/// A recipient confirmed a message; sent to the sender's connections.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// The sender's idempotency key of the original `send`.
    pub id: ClientMsgId,
    pub msg: MsgId,
    pub status: ReceiptStatus,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub user: UserId,
    #[serde(with = "uuid_text")]
    pub conn: Uuid,
    pub node: String,
    pub heartbeat_ms: u64,
    #[serde(with = "uuid_text")]
    pub epoch: Uuid,
}

/// UUIDs as hyphenated text in MessagePack too (uuid's own serde writes
/// bytes for binary formats), so both encodings carry the same objects.
mod uuid_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use uuid::Uuid;

    pub fn serialize<S: Serializer>(id: &Uuid, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = Uuid::encode_buffer();
        s.serialize_str(id.hyphenated().encode_lower(&mut buf))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Uuid::try_parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A frame from the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame {
    Welcome(Welcome),
    Accepted {
        id: ClientMsgId,
        msg: MsgId,
        status: AcceptStatus,
    },
    /// Shared: one delivery is written to every connection of the recipient.
    Message(Arc<Delivery>),
    Receipt(Arc<Receipt>),
    Presence {
        online: BTreeMap<UserId, bool>,
    },
    Pong,
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<ClientMsgId>,
        code: ErrorCode,
        message: String,
    },
}
