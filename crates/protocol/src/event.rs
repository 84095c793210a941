//! Events for the application backend (contract section 11): the JSON a
//! node POSTs to `webhook-url`, one event per request.
//!
//! `{"id":"<uuid v7>","type":"user.online","ts":ms,"user":"bob","node":"n1"}`;
//! `message.stored` carries `msg`, `from`, `to`, `seq` and, when bodies are
//! on, `body`. The text is built once, when the event is decided, and sent
//! byte for byte as it was queued: the signature covers exactly those bytes.

use uuid::Uuid;

use crate::frame::Body;
use crate::ids::{MsgId, UserId};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// The user's first connection in the cluster.
    UserOnline,
    /// The user's last connection closed, or was swept with a dead node.
    UserOffline,
    /// A message was logged for a recipient with no live connection.
    MessageStored,
}

impl EventType {
    pub const ALL: [Self; 3] = [Self::UserOnline, Self::UserOffline, Self::MessageStored];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserOnline => "user.online",
            Self::UserOffline => "user.offline",
            Self::MessageStored => "message.stored",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// `user.online` or `user.offline` of `user`, decided on `node`.
pub fn presence_event(kind: EventType, id: Uuid, ts: u64, user: &UserId, node: &str) -> String {
    // A node id may hold any printable character; user ids need no escaping.
    let node = serde_json::Value::from(node);
    format!(r#"{{"id":"{id}","type":"{}","ts":{ts},"user":"{user}","node":{node}}}"#, kind.as_str())
}

/// A `message.stored` event before its seq is known: the seq is given in
/// the same step that logs the message (in Redis, inside the script), and
/// the text is `head`, the seq, `tail`. Built for every logged message
/// while events are on, so written directly: ids need no escaping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub head: String,
    pub tail: String,
}

impl StoredEvent {
    pub fn new(id: Uuid, ts: u64, msg: MsgId, from: &UserId, to: &UserId, body: Option<&Body>) -> Self {
        let head = format!(
            r#"{{"id":"{id}","type":"message.stored","ts":{ts},"msg":"{msg}","from":"{from}","to":"{to}","seq":"#
        );
        let tail = match body {
            Some(body) => format!(",\"body\":{}}}", body.json()),
            None => "}".to_owned(),
        };
        Self { head, tail }
    }

    pub fn render(&self, seq: u64) -> String {
        format!("{}{seq}{}", self.head, self.tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_flat_json_objects() {
        let id = Uuid::now_v7();
        let bob = UserId::parse("bob").unwrap();
        let online: serde_json::Value =
            serde_json::from_str(&presence_event(EventType::UserOnline, id, 7, &bob, "n1")).unwrap();
        assert_eq!(
            online,
            serde_json::json!({"id": id.to_string(), "type": "user.online", "ts": 7, "user": "bob", "node": "n1"})
        );
        let msg = MsgId::new();
        let alice = UserId::parse("alice").unwrap();
        let body = Body::from_json(r#"{"text":"hi"}"#).unwrap();
        for (body, expected) in [(None, None), (Some(&body), Some(serde_json::json!({"text": "hi"})))] {
            let text = StoredEvent::new(id, 9, msg, &alice, &bob, body).render(42);
            let stored: serde_json::Value = serde_json::from_str(&text).unwrap();
            let mut want = serde_json::json!({
                "id": id.to_string(), "type": "message.stored", "ts": 9,
                "msg": msg.to_string(), "from": "alice", "to": "bob", "seq": 42,
            });
            if let Some(expected) = expected {
                want["body"] = expected;
            }
            assert_eq!(stored, want);
        }
        assert_eq!(EventType::parse("user.offline"), Some(EventType::UserOffline));
        let odd: serde_json::Value =
            serde_json::from_str(&presence_event(EventType::UserOffline, id, 7, &bob, r#"n"1\"#)).unwrap();
        assert_eq!(odd["node"], r#"n"1\"#);
    }
}
