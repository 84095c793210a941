//! The words Switchboard speaks: frames between clients and a node, envelopes
//! between nodes, the codecs for both, and the events a node sends to the
//! application backend.
//!
//! This crate is pure: no I/O, no runtime. It is the only place that derives
//! `Serialize`/`Deserialize` for anything that crosses a process boundary, so
//! the wire format can be read (and fuzzed) in one place.

mod api;
mod codec;
mod envelope;
mod event;
mod frame;
mod ids;

pub use api::{ApiDisconnect, ApiSend};
pub use codec::{Codec, DecodeError, Encoded, MAX_PRESENCE_QUERY, MAX_TOKEN_LEN};
pub use envelope::{Addressee, Envelope, EnvelopeError, Item, Letter, ReplyTo};
pub use event::{EventType, StoredEvent, presence_event};
pub use frame::{
    AcceptStatus, Body, ClientFrame, Delivery, ErrorCode, Receipt, ReceiptStatus, ServerFrame, To, Welcome,
};
pub use ids::{ClientMsgId, DeviceId, IdError, MsgId, UserId};
