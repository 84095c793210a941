//! The words Switchboard speaks: frames between clients and a node, envelopes
//! between nodes, and the codecs for both.
//!
//! This crate is pure: no I/O, no runtime. It is the only place that derives
//! `Serialize`/`Deserialize` for anything that crosses a process boundary, so
//! the wire format can be read (and fuzzed) in one place.

mod api;
mod codec;
mod envelope;
mod frame;
mod ids;

pub use api::{ApiDisconnect, ApiSend};
pub use codec::{Codec, DecodeError, Encoded, MAX_PRESENCE_QUERY, MAX_TOKEN_LEN};
pub use envelope::{Addressee, Envelope, EnvelopeError, Item, Letter, ReplyTo};
pub use frame::{
    AcceptStatus, Body, ClientFrame, Delivery, ErrorCode, Receipt, ReceiptStatus, ServerFrame, To, Welcome,
};
pub use ids::{ClientMsgId, DeviceId, IdError, MsgId, UserId};
