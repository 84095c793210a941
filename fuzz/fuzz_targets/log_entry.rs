//! Log entries, as a node reads a user's stored messages from Redis.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::Letter;

fuzz_target!(|bytes: &[u8]| switchboard_fuzz::decoded_round_trips(bytes, Letter::decode, Letter::encode));
