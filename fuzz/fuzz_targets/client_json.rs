//! Client frames in JSON, as the gateway reads text WebSocket frames
//! (`Codec::Json.decode`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::Codec;

fuzz_target!(|bytes: &[u8]| switchboard_fuzz::client_frame(Codec::Json, bytes));
