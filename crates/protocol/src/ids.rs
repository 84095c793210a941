//! Validated identifiers. A value of these types is known to be well formed,
//! so code past the decoder never re-checks them.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must be {min} to {max} bytes long")]
    Length { min: usize, max: usize },
    #[error("may only contain A-Z a-z 0-9 _ . : @ -")]
    Charset,
    #[error("not a UUID")]
    NotUuid,
}

/// A user id: 1 to 128 bytes of `A-Z a-z 0-9 _ . : @ -`.
///
/// Cheap to clone: user ids are copied into every frame and routing table.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

impl UserId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<Self, IdError> {
        check_name(s, Self::MAX_LEN).map(|()| Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A device of a user (`?device=` or the token's `device` claim): 1 to 64
/// bytes of the user id's characters. Each device of a user has a cursor
/// of its own in the user's log.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(Arc<str>);

impl DeviceId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, IdError> {
        check_name(s, Self::MAX_LEN).map(|()| Self(Arc::from(s)))
    }

    /// The device of a connection that names none.
    pub fn default_device() -> Self {
        Self(Arc::from("default"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 1 to `max` bytes of `A-Z a-z 0-9 _ . : @ -`.
fn check_name(s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() || s.len() > max {
        return Err(IdError::Length { min: 1, max });
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-');
    if !s.bytes().all(allowed) {
        return Err(IdError::Charset);
    }
    Ok(())
}

/// The client's idempotency key of a `send`: 1 to 64 bytes, any characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClientMsgId(Arc<str>);

impl ClientMsgId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(IdError::Length { min: 1, max: Self::MAX_LEN });
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A message id assigned by the node that accepted the message: a UUID v7,
/// so ids sort by acceptance time. Always written as a hyphenated string,
/// in MessagePack too.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId(Uuid);

impl MsgId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(s: &str) -> Result<Self, IdError> {
        Uuid::try_parse(s).map(Self).map_err(|_| IdError::NotUuid)
    }

    pub fn uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for MsgId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for MsgId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

macro_rules! string_id {
    ($ty:ty) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(UserId);
string_id!(DeviceId);
string_id!(ClientMsgId);

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for MsgId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = Uuid::encode_buffer();
        s.serialize_str(self.0.hyphenated().encode_lower(&mut buf))
    }
}

impl<'de> Deserialize<'de> for MsgId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_rules() {
        assert!(UserId::parse("alice").is_ok());
        assert!(UserId::parse("a.b:c@d-e_f9").is_ok());
        assert!(UserId::parse(&"x".repeat(128)).is_ok());
        assert_eq!(UserId::parse(""), Err(IdError::Length { min: 1, max: 128 }));
        assert_eq!(UserId::parse(&"x".repeat(129)), Err(IdError::Length { min: 1, max: 128 }));
        assert_eq!(UserId::parse("bob smith"), Err(IdError::Charset));
        assert_eq!(UserId::parse("bób"), Err(IdError::Charset));
        assert_eq!(UserId::parse("a/b"), Err(IdError::Charset));
    }

    #[test]
    fn device_id_rules() {
        assert!(DeviceId::parse("phone-1").is_ok());
        assert!(DeviceId::parse(&"d".repeat(64)).is_ok());
        assert_eq!(DeviceId::parse(&"d".repeat(65)), Err(IdError::Length { min: 1, max: 64 }));
        assert_eq!(DeviceId::parse("my phone"), Err(IdError::Charset));
        assert_eq!(DeviceId::default_device().as_str(), "default");
    }

    #[test]
    fn client_msg_id_length() {
        assert!(ClientMsgId::parse("c-1").is_ok());
        assert!(ClientMsgId::parse(&"é".repeat(32)).is_ok());
        assert!(ClientMsgId::parse("").is_err());
        assert!(ClientMsgId::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn msg_ids_are_v7_and_time_ordered() {
        let a = MsgId::new();
        let b = MsgId::new();
        assert_eq!(a.uuid().get_version_num(), 7);
        assert!(a < b);
        assert_eq!(MsgId::parse(&a.to_string()), Ok(a));
    }
}
