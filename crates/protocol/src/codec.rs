//! The two client encodings, `switchboard.v1.json` (text frames) and
//! `switchboard.v1.msgpack` (binary frames holding the same objects as maps).
//!
//! Decoding goes through one flat shape with every field optional, so that a
//! malformed frame gets an error that names what is wrong and, when it can
//! be read, the `id` of the frame it refers to.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::envelope::Letter;
use crate::frame::{Body, ClientFrame, ErrorCode, ServerFrame, To};
use crate::ids::{ClientMsgId, MsgId, UserId};

/// At most this many users in one presence query.
pub const MAX_PRESENCE_QUERY: usize = 100;

/// The longest token a `refresh` may carry, as long as the longest the
/// upgrade takes in a header.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// How deeply MessagePack may nest, in containers: the deepest body
/// ([`Body::MAX_DEPTH`]) inside the deepest wrapper around a body (an
/// envelope: 5 levels), plus one for rmp-serde's count.
///
/// rmp-serde's own limit, 1024, lets a frame of a few KiB build a value whose
/// recursive decoding, re-encoding and dropping overflows the 2 MiB stack of
/// a tokio worker in a debug build, before the body check could refuse it.
const MSGPACK_MAX_DEPTH: usize = Body::MAX_DEPTH + 6;

/// Decodes MessagePack no deeper than [`MSGPACK_MAX_DEPTH`]; every
/// MessagePack decoder in this crate goes through here.
pub(crate) fn from_msgpack<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut decoder = rmp_serde::Deserializer::from_read_ref(bytes);
    decoder.set_max_depth(MSGPACK_MAX_DEPTH);
    T::deserialize(&mut decoder)
}

/// The encoding a connection negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Json,
    MsgPack,
}

/// An encoded server frame, ready for a WebSocket text or binary frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encoded {
    Text(String),
    Binary(Vec<u8>),
}

/// Why a client frame was refused; becomes an `error` frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub code: ErrorCode,
    /// The `id` of the refused frame, when it had a readable one.
    pub id: Option<ClientMsgId>,
    pub message: String,
}

impl DecodeError {
    fn bad_frame(id: Option<ClientMsgId>, message: impl Into<String>) -> Self {
        Self { code: ErrorCode::BadFrame, id, message: message.into() }
    }
}

impl Codec {
    pub const JSON_PROTOCOL: &'static str = "switchboard.v1.json";
    pub const MSGPACK_PROTOCOL: &'static str = "switchboard.v1.msgpack";

    /// The codec for a `Sec-WebSocket-Protocol` name.
    pub fn from_protocol(name: &str) -> Option<Self> {
        match name {
            Self::JSON_PROTOCOL => Some(Self::Json),
            Self::MSGPACK_PROTOCOL => Some(Self::MsgPack),
            _ => None,
        }
    }

    pub fn protocol(self) -> &'static str {
        match self {
            Self::Json => Self::JSON_PROTOCOL,
            Self::MsgPack => Self::MSGPACK_PROTOCOL,
        }
    }

    pub fn decode(self, bytes: &[u8]) -> Result<ClientFrame, DecodeError> {
        match self {
            Self::Json => {
                let wire: WireFrame<'_, Box<RawValue>> = serde_json::from_slice(bytes)
                    .map_err(|e| DecodeError::bad_frame(None, format!("invalid JSON frame: {e}")))?;
                wire.validate(Body::from_raw)
            }
            Self::MsgPack => {
                let wire: WireFrame<'_, serde_json::Value> = from_msgpack(bytes)
                    .map_err(|e| DecodeError::bad_frame(None, format!("invalid MessagePack frame: {e}")))?;
                wire.validate(|v| Body::from_value(&v))
            }
        }
    }

    pub fn encode(self, frame: &ServerFrame) -> Encoded {
        self.encode_value(frame)
    }

    /// The `message` frame of `letter` for `to`: the same frame as
    /// [`ServerFrame::Message`] holds, written from the letter as it is.
    pub fn encode_message(self, letter: &Letter, to: &UserId, seq: Option<u64>) -> Encoded {
        self.encode_value(&MessageFrame {
            kind: "message",
            msg: letter.msg,
            from: &letter.from,
            to,
            body: &letter.body,
            ts: letter.ts,
            seq,
        })
    }

    fn encode_value(self, frame: &impl Serialize) -> Encoded {
        // Server frames hold only strings, numbers, maps and bodies that
        // passed `Body::check`, which both serializers always accept.
        match self {
            Self::Json => Encoded::Text(serde_json::to_string(frame).unwrap_or_default()),
            Self::MsgPack => Encoded::Binary(rmp_serde::to_vec_named(frame).unwrap_or_default()),
        }
    }

    /// Decodes a server frame; for clients and tests.
    pub fn decode_server(self, bytes: &[u8]) -> Result<ServerFrame, DecodeError> {
        match self {
            Self::Json => serde_json::from_slice(bytes).map_err(|e| DecodeError::bad_frame(None, e.to_string())),
            Self::MsgPack => from_msgpack(bytes).map_err(|e| DecodeError::bad_frame(None, e.to_string())),
        }
    }

    /// Encodes a client frame; for clients and tests.
    pub fn encode_client(self, frame: &ClientFrame) -> Encoded {
        let value = match frame {
            ClientFrame::Send { id, to, body, ephemeral } => {
                let to = match to {
                    To::One(user) => serde_json::json!(user),
                    To::Many(users) => serde_json::json!(users),
                };
                let mut send = serde_json::json!({"type": "send", "id": id, "to": to, "body": body.to_value()});
                if *ephemeral {
                    send["ephemeral"] = true.into();
                }
                send
            }
            ClientFrame::Ack { msg } => serde_json::json!({"type": "ack", "msg": msg}),
            ClientFrame::AckUpTo { seq } => serde_json::json!({"type": "ack", "seq": seq}),
            ClientFrame::Ping => serde_json::json!({"type": "ping"}),
            ClientFrame::Refresh { token } => serde_json::json!({"type": "refresh", "token": token}),
            ClientFrame::Presence { users } => {
                serde_json::json!({"type": "presence", "users": users})
            }
        };
        match self {
            Self::Json => Encoded::Text(value.to_string()),
            Self::MsgPack => Encoded::Binary(rmp_serde::to_vec_named(&value).unwrap_or_default()),
        }
    }
}

/// Deserializes a field that is there as `Some`, even when it is `null`
/// (serde reads a `null` option as `None`); with `#[serde(default)]`, a
/// missing field stays `None`.
pub(crate) fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Every field any client frame has, all optional; unknown fields ignored.
#[derive(Deserialize)]
#[serde(bound(deserialize = "B: Deserialize<'de>"))]
struct WireFrame<'a, B> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    to: Option<WireTo<'a>>,
    /// `Some` whenever the field is there, `null` included: only a missing
    /// body is refused.
    #[serde(default, deserialize_with = "present")]
    body: Option<B>,
    #[serde(default)]
    ephemeral: Option<bool>,
    #[serde(borrow)]
    msg: Option<Cow<'a, str>>,
    seq: Option<u64>,
    #[serde(borrow)]
    users: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
}

/// A `send`'s `to`: a user id or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum WireTo<'a> {
    #[serde(borrow)]
    One(Cow<'a, str>),
    #[serde(borrow)]
    Many(Vec<Cow<'a, str>>),
}

impl<B> WireFrame<'_, B> {
    fn validate(self, body: impl FnOnce(B) -> Body) -> Result<ClientFrame, DecodeError> {
        let Some(kind) = self.kind else {
            return Err(DecodeError::bad_frame(None, "missing field `type`"));
        };
        match kind.as_ref() {
            "send" => {
                let id = self.id.ok_or_else(|| DecodeError::bad_frame(None, "missing field `id`"))?;
                let id =
                    ClientMsgId::parse(&id).map_err(|e| DecodeError::bad_frame(None, format!("field `id` {e}")))?;
                let to = self.to.ok_or_else(|| DecodeError::bad_frame(Some(id.clone()), "missing field `to`"))?;
                let to = recipients(to).map_err(|message| DecodeError {
                    code: ErrorCode::InvalidRecipient,
                    id: Some(id.clone()),
                    message,
                })?;
                let body = self
                    .body
                    .map(body)
                    .ok_or_else(|| DecodeError::bad_frame(Some(id.clone()), "missing field `body`"))?;
                body.check().map_err(|e| DecodeError::bad_frame(Some(id.clone()), format!("field `body`: {e}")))?;
                Ok(ClientFrame::Send { id, to, body, ephemeral: self.ephemeral.unwrap_or(false) })
            }
            "ack" => match (self.msg, self.seq) {
                (Some(msg), None) => {
                    let msg =
                        MsgId::parse(&msg).map_err(|e| DecodeError::bad_frame(None, format!("field `msg` is {e}")))?;
                    Ok(ClientFrame::Ack { msg })
                }
                (None, Some(seq)) => Ok(ClientFrame::AckUpTo { seq }),
                (Some(_), Some(_)) => Err(DecodeError::bad_frame(None, "an ack takes `msg` or `seq`, not both")),
                (None, None) => Err(DecodeError::bad_frame(None, "missing field `msg` or `seq`")),
            },
            "ping" => Ok(ClientFrame::Ping),
            "refresh" => {
                let token = self.token.ok_or_else(|| DecodeError::bad_frame(None, "missing field `token`"))?;
                if token.len() > MAX_TOKEN_LEN {
                    return Err(DecodeError {
                        code: ErrorCode::TooLarge,
                        id: None,
                        message: format!("a token holds at most {MAX_TOKEN_LEN} bytes"),
                    });
                }
                Ok(ClientFrame::Refresh { token: token.into_owned() })
            }
            "presence" => {
                let users = self.users.ok_or_else(|| DecodeError::bad_frame(None, "missing field `users`"))?;
                if users.len() > MAX_PRESENCE_QUERY {
                    return Err(DecodeError {
                        code: ErrorCode::TooLarge,
                        id: None,
                        message: format!("at most {MAX_PRESENCE_QUERY} users per presence query"),
                    });
                }
                let users = users
                    .iter()
                    .map(|u| UserId::parse(u))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| DecodeError::bad_frame(None, format!("field `users`: user id {e}")))?;
                Ok(ClientFrame::Presence { users })
            }
            other => Err(DecodeError::bad_frame(None, format!("unknown frame type `{other}`"))),
        }
    }
}

/// The recipients of a `send`, or why they are refused: a list must hold
/// at least one user, each valid, none twice.
pub(crate) fn recipients(to: WireTo<'_>) -> Result<To, String> {
    let parse = |user: &str| UserId::parse(user).map_err(|e| format!("recipient {user:?}: {e}"));
    match to {
        WireTo::One(user) => parse(&user).map(To::One),
        WireTo::Many(users) if users.is_empty() => Err("`to` lists no recipient".to_owned()),
        WireTo::Many(users) => {
            let mut seen = std::collections::HashSet::with_capacity(users.len());
            let mut parsed = Vec::with_capacity(users.len());
            for user in &users {
                if !seen.insert(user.as_ref()) {
                    return Err(format!("recipient {user:?} is listed twice"));
                }
                parsed.push(parse(user)?);
            }
            Ok(To::Many(parsed))
        }
    }
}

/// A `message` frame, borrowed from a letter.
#[derive(Serialize)]
struct MessageFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    msg: MsgId,
    from: &'a UserId,
    to: &'a UserId,
    body: &'a Body,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Result<ClientFrame, DecodeError> {
        Codec::Json.decode(text.as_bytes())
    }

    #[test]
    fn decodes_send_and_keeps_body_text() {
        let frame = json(r#"{"type":"send","id":"c-1","to":"bob","body":{"text":"hi","n":[1,2]},"extra":1}"#);
        let Ok(ClientFrame::Send { id, to, body, ephemeral: false }) = frame else { panic!("{frame:?}") };
        assert_eq!(id.as_str(), "c-1");
        assert_eq!(to, To::One(UserId::parse("bob").unwrap()));
        assert_eq!(body.json(), r#"{"text":"hi","n":[1,2]}"#);
    }

    #[test]
    fn refresh_takes_one_token_of_bounded_length() {
        let frame = json(r#"{"type":"refresh","token":"a.b.c"}"#);
        assert_eq!(frame, Ok(ClientFrame::Refresh { token: "a.b.c".to_owned() }));
        let err = json(r#"{"type":"refresh"}"#).unwrap_err();
        assert_eq!((err.code, err.message.as_str()), (ErrorCode::BadFrame, "missing field `token`"));
        let long = format!(r#"{{"type":"refresh","token":"{}"}}"#, "a".repeat(MAX_TOKEN_LEN + 1));
        assert_eq!(json(&long).unwrap_err().code, ErrorCode::TooLarge);
    }

    #[test]
    fn errors_name_the_problem_and_the_frame() {
        let err = json(r#"{"type":"send","id":"c-2","to":"bad user","body":1}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRecipient);
        assert_eq!(err.id.as_ref().map(ClientMsgId::as_str), Some("c-2"));

        let err = json(r#"{"type":"send","id":"c-3","body":1}"#).unwrap_err();
        assert_eq!((err.code, err.message.as_str()), (ErrorCode::BadFrame, "missing field `to`"));

        let err = json(r#"{"type":"teleport"}"#).unwrap_err();
        assert_eq!((err.code, err.message.as_str()), (ErrorCode::BadFrame, "unknown frame type `teleport`"));

        let err = json(r#"{"type":"send","id":"","to":"bob"}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadFrame);

        let err = json("{not json").unwrap_err();
        assert_eq!((err.code, err.id), (ErrorCode::BadFrame, None));
    }

    #[test]
    fn a_send_takes_a_list_of_distinct_valid_recipients() {
        let frame = json(r#"{"type":"send","id":"g-1","to":["bob","carol"],"body":1,"ephemeral":true}"#);
        let Ok(ClientFrame::Send { to: To::Many(users), ephemeral: true, .. }) = frame else { panic!("{frame:?}") };
        assert_eq!(users.iter().map(UserId::as_str).collect::<Vec<_>>(), ["bob", "carol"]);
        for (to, message) in [
            (r#"[]"#, "`to` lists no recipient"),
            (r#"["bob","bob"]"#, r#"recipient "bob" is listed twice"#),
            (r#"["bob","c d"]"#, r#"recipient "c d": may only contain A-Z a-z 0-9 _ . : @ -"#),
        ] {
            let err = json(&format!(r#"{{"type":"send","id":"g-2","to":{to},"body":1}}"#)).unwrap_err();
            assert_eq!((err.code, err.message.as_str()), (ErrorCode::InvalidRecipient, message));
            assert_eq!(err.id.as_ref().map(ClientMsgId::as_str), Some("g-2"));
        }
    }

    #[test]
    fn acks_name_a_message_or_a_seq() {
        assert_eq!(json(r#"{"type":"ack","seq":1000}"#), Ok(ClientFrame::AckUpTo { seq: 1000 }));
        let both = json(r#"{"type":"ack","seq":1,"msg":"0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee"}"#).unwrap_err();
        assert_eq!(both.code, ErrorCode::BadFrame);
        assert_eq!(json(r#"{"type":"ack"}"#).unwrap_err().message, "missing field `msg` or `seq`");
    }

    #[test]
    fn a_send_needs_a_body_and_null_is_one() {
        let err = json(r#"{"type":"send","id":"c-1","to":"bob"}"#).unwrap_err();
        assert_eq!((err.code, err.id.as_ref().map(ClientMsgId::as_str)), (ErrorCode::BadFrame, Some("c-1")));
        assert_eq!(err.message, "missing field `body`");
        let Ok(ClientFrame::Send { body, .. }) = json(r#"{"type":"send","id":"c-2","to":"bob","body":null}"#) else {
            panic!()
        };
        assert_eq!(body.json(), "null");

        let without = rmp_serde::to_vec_named(&serde_json::json!({"type":"send","id":"c-3","to":"bob"})).unwrap();
        let err = Codec::MsgPack.decode(&without).unwrap_err();
        assert_eq!((err.code, err.id.as_ref().map(ClientMsgId::as_str)), (ErrorCode::BadFrame, Some("c-3")));
        let nil =
            rmp_serde::to_vec_named(&serde_json::json!({"type":"send","id":"c-4","to":"bob","body":null})).unwrap();
        let Ok(ClientFrame::Send { body, .. }) = Codec::MsgPack.decode(&nil) else { panic!() };
        assert_eq!(body.json(), "null");
    }

    #[test]
    fn presence_query_is_bounded() {
        let users: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
        let text = serde_json::json!({"type":"presence","users":users}).to_string();
        assert_eq!(json(&text).unwrap_err().code, ErrorCode::TooLarge);
        let text = serde_json::json!({"type":"presence","users":&users[..100]}).to_string();
        assert!(matches!(json(&text), Ok(ClientFrame::Presence { users }) if users.len() == 100));
    }

    #[test]
    fn msgpack_frames_are_maps_with_the_same_names() {
        let frame = ServerFrame::Pong;
        let Encoded::Binary(bytes) = Codec::MsgPack.encode(&frame) else { panic!() };
        let value: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(value, serde_json::json!({"type":"pong"}));
    }
}
