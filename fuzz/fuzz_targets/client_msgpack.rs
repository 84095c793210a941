//! Client frames in MessagePack, as the gateway reads binary WebSocket
//! frames (`Codec::MsgPack.decode`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::Codec;

fuzz_target!(|bytes: &[u8]| switchboard_fuzz::client_frame(Codec::MsgPack, bytes));
