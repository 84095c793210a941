//! Client and server frames (contract section 3).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::ids::{ClientMsgId, DeviceId, MsgId, UserId};

/// A message body: any JSON value, kept as its JSON text.
///
/// The text is passed through untouched between JSON clients; a MessagePack
/// client gets it transcoded on the way out, so a body is parsed at most once
/// per recipient format.
///
/// Valid JSON syntax is not enough for a body: transcoding reads the value,
/// and reading fails on a number past the range of an `f64` (`1e400`) and on
/// nesting past serde_json's recursion limit, where checking the syntax does
/// not. [`Body::check`] tells such a body apart; the decoders refuse one, so
/// every body they return reaches recipients of either encoding.
#[derive(Clone, Debug)]
pub struct Body(Box<RawValue>);

impl Body {
    /// How many levels of arrays and objects a body may nest: one less than
    /// serde_json reads by default (127 levels, all told), so that a server
    /// frame, one level around the body, is still read by clients that use
    /// serde_json, this crate's `Codec::decode_server` among them.
    pub const MAX_DEPTH: usize = 126;

    pub fn null() -> Self {
        Self(RawValue::NULL.to_owned())
    }

    /// Takes JSON text as it is, unchecked: see [`Body::check`].
    pub fn from_raw(raw: Box<RawValue>) -> Self {
        Self(raw)
    }

    /// Parses JSON text; fails when it is not exactly one JSON value or
    /// fails [`Body::check`].
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        let body = RawValue::from_string(text.to_owned()).map(Self)?;
        body.check()?;
        Ok(body)
    }

    /// Whether every encoding can carry this body: reads the value once,
    /// keeping nothing, as transcoding it will.
    pub fn check(&self) -> Result<(), serde_json::Error> {
        let mut reader = serde_json::Deserializer::from_str(self.json());
        ReadValue { depth_left: Self::MAX_DEPTH }.deserialize(&mut reader)?;
        reader.end()
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
        let body = Self::from_value(&serde_json::Value::deserialize(d)?);
        body.check().map_err(serde::de::Error::custom)?;
        Ok(body)
    }
}

/// Reads a JSON value through and drops it: reading, unlike skipping,
/// parses each number and counts the nesting.
#[derive(Clone, Copy)]
struct ReadValue {
    /// How many more levels of arrays and objects may open.
    depth_left: usize,
}

impl ReadValue {
    fn inner<E: de::Error>(self) -> Result<Self, E> {
        match self.depth_left.checked_sub(1) {
            Some(depth_left) => Ok(Self { depth_left }),
            None => Err(E::custom(format_args!("nested deeper than {} levels", Body::MAX_DEPTH))),
        }
    }
}

impl<'de> DeserializeSeed<'de> for ReadValue {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ReadValue {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        let item = self.inner()?;
        while items.next_element_seed(item)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<(), A::Error> {
        let value = self.inner()?;
        while entries.next_key::<IgnoredAny>()?.is_some() {
            entries.next_value_seed(value)?;
        }
        Ok(())
    }
}

/// A frame from a client, validated.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientFrame {
    Send {
        id: ClientMsgId,
        to: To,
        body: Body,
        /// Live only: no log, no dedupe record, no receipt.
        ephemeral: bool,
    },
    /// One message, by id.
    Ack {
        msg: MsgId,
    },
    /// Every message of the user's log up to `seq`, for this device.
    AckUpTo {
        seq: u64,
    },
    Ping,
    Presence {
        users: Vec<UserId>,
    },
    /// A new token for this connection: same user, later expiry.
    Refresh {
        token: String,
    },
}

/// The recipients of a `send`: one user, or a list of distinct users (the
/// answer then names each one's outcome).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum To {
    One(UserId),
    Many(Vec<UserId>),
}

impl To {
    pub fn users(&self) -> &[UserId] {
        match self {
            Self::One(user) => std::slice::from_ref(user),
            Self::Many(users) => users,
        }
    }

    pub fn is_list(&self) -> bool {
        matches!(self, Self::Many(_))
    }
}

/// What the server did with an accepted message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AcceptStatus {
    /// On its way to at least one live connection of the recipient.
    Routed,
    /// The recipient is offline; the message waits in the log.
    Stored,
    /// An ephemeral send that found no live connection: dropped.
    Offline,
}

impl AcceptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Routed => "routed",
            Self::Stored => "stored",
            Self::Offline => "offline",
        }
    }
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
    BadToken,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "bad_frame",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::InvalidRecipient => "invalid_recipient",
            Self::BadToken => "bad_token",
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
    /// Its place in the recipient's log; none for a live-only message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// A recipient confirmed a message; sent to the sender's connections.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// The sender's idempotency key of the original `send`.
    pub id: ClientMsgId,
    pub msg: MsgId,
    pub status: ReceiptStatus,
    /// The recipient, for a send to a list of users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserId>,
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
    pub device: DeviceId,
    /// The user's latest `seq`: what the replay that follows leads up to.
    pub seq: u64,
    /// When the connection's token expires (Unix seconds); none when it
    /// does not (development auth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
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
        /// Each recipient's outcome, for a send to a list of users.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recipients: Option<BTreeMap<UserId, AcceptStatus>>,
    },
    /// Shared: one delivery is written to every connection of the recipient.
    Message(Arc<Delivery>),
    Receipt(Arc<Receipt>),
    Presence {
        online: BTreeMap<UserId, bool>,
    },
    Pong,
    /// The connection's token was replaced; it now expires at `exp`.
    Refreshed {
        exp: u64,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<ClientMsgId>,
        code: ErrorCode,
        message: String,
    },
}
