//! What must hold of anything Switchboard's decoders accept, checked by the
//! fuzz targets in `fuzz_targets/`.
//!
//! Decoding without a panic is not enough: a value the decoder lets through
//! is handed on, re-encoded for a recipient of either encoding, stored in an
//! inbox and published to other nodes. So every check here follows a decoded
//! value along those paths and asserts that it arrives unchanged.
//!
//! Every target also runs with a bounded heap (`heap.rs`), which fails the
//! run when an input makes the process hold more heap than any frame needs.

mod heap;

use std::fmt::Debug;
use std::sync::Arc;

use switchboard_protocol::{
    ClientFrame, ClientMsgId, Codec, Delivery, Encoded, MAX_PRESENCE_QUERY, MsgId, Routed, ServerFrame, UserId,
};

const CODECS: [Codec; 2] = [Codec::Json, Codec::MsgPack];

/// Decodes `bytes` as a client frame in `codec` and checks what the gateway
/// relies on when the frame is accepted.
pub fn client_frame(codec: Codec, bytes: &[u8]) {
    let Ok(frame) = codec.decode(bytes) else { return };
    match &frame {
        ClientFrame::Send { id, to, body } => {
            assert!((1..=ClientMsgId::MAX_LEN).contains(&id.as_str().len()), "send id {id:?}");
            assert_eq!(UserId::parse(to.as_str()).as_ref(), Ok(to));
            let delivery = Delivery {
                msg: MsgId::parse("0193a1c2-7b1e-7c3d-8e4f-5a6b7c8d9e0f").expect("a valid UUID"),
                from: to.clone(),
                to: to.clone(),
                body: body.clone(),
                ts: 0,
            };
            // The recipient gets the same message in either encoding...
            let message = ServerFrame::Message(Arc::new(delivery.clone()));
            for out in CODECS {
                assert_eq!(out.decode_server(&bytes_of(out.encode(&message))), Ok(message.clone()), "{out:?}");
            }
            // ...from its inbox and from another node too.
            let routed = Routed::Deliver { delivery, reply_to: Some(id.clone()), received_us: 0, stored_as: None };
            round_trips(&routed, Routed::encode, Routed::decode);
        }
        ClientFrame::Presence { users } => assert!(users.len() <= MAX_PRESENCE_QUERY, "{} users", users.len()),
        ClientFrame::Ack { .. } | ClientFrame::Ping => {}
    }
    // What a client meant by the frame, written again in either encoding,
    // is read back as the same frame.
    for out in CODECS {
        assert_eq!(out.decode(&bytes_of(out.encode_client(&frame))), Ok(frame.clone()), "{out:?}");
    }
}

/// Decodes `bytes` with `decode` and, when that succeeds, checks that the
/// value encodes and decodes back to an equal value: what a node reads from
/// Redis it can write again.
pub fn decoded_round_trips<T: PartialEq + Debug, E: Debug>(
    bytes: &[u8],
    decode: fn(&[u8]) -> Result<T, E>,
    encode: fn(&T) -> Result<Vec<u8>, E>,
) {
    if let Ok(value) = decode(bytes) {
        round_trips(&value, encode, decode);
    }
}

fn round_trips<T: PartialEq + Debug, E: Debug>(
    value: &T,
    encode: fn(&T) -> Result<Vec<u8>, E>,
    decode: fn(&[u8]) -> Result<T, E>,
) {
    let bytes = encode(value).expect("a decoded value encodes");
    assert_eq!(&decode(&bytes).expect("an encoded value decodes"), value);
}

fn bytes_of(encoded: Encoded) -> Vec<u8> {
    match encoded {
        Encoded::Text(text) => text.into_bytes(),
        Encoded::Binary(bytes) => bytes,
    }
}
