//! Envelopes between nodes, as a node reads them from its Redis channel.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::Envelope;

fuzz_target!(|bytes: &[u8]| switchboard_fuzz::decoded_round_trips(bytes, Envelope::decode, Envelope::encode));
