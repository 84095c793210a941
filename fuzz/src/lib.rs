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
    Addressee, ClientFrame, ClientMsgId, Codec, Delivery, Encoded, Envelope, Item, Letter, MAX_PRESENCE_QUERY,
    MAX_TOKEN_LEN, MsgId, ReplyTo, ServerFrame, UserId,
};

const CODECS: [Codec; 2] = [Codec::Json, Codec::MsgPack];

/// Decodes `bytes` as a client frame in `codec` and checks what the gateway
/// relies on when the frame is accepted.
pub fn client_frame(codec: Codec, bytes: &[u8]) {
    let Ok(frame) = codec.decode(bytes) else { return };
    match &frame {
        ClientFrame::Send { id, to, body, ephemeral } => {
            assert!((1..=ClientMsgId::MAX_LEN).contains(&id.as_str().len()), "send id {id:?}");
            assert!(!to.users().is_empty(), "a send names a recipient");
            for user in to.users() {
                assert_eq!(UserId::parse(user.as_str()).as_ref(), Ok(user));
            }
            let msg = MsgId::parse("0193a1c2-7b1e-7c3d-8e4f-5a6b7c8d9e0f").expect("a valid UUID");
            let from = to.users()[0].clone();
            let reply = (!ephemeral).then(|| ReplyTo { id: id.clone(), node: "node-a".into(), list: to.is_list() });
            let letter = Letter {
                msg,
                from: from.clone(),
                body: body.clone(),
                ts: 0,
                reply,
                received_us: 0,
                ephemeral: *ephemeral,
            };
            for (seq, user) in to.users().iter().enumerate() {
                let seq = (!ephemeral).then_some(seq as u64 + 1);
                // The recipient gets the same message in either encoding,
                // whether it is written from the letter or from a delivery...
                let delivery = Delivery { msg, from: from.clone(), to: user.clone(), body: body.clone(), ts: 0, seq };
                let message = ServerFrame::Message(Arc::new(delivery));
                for out in CODECS {
                    assert_eq!(out.decode_server(&bytes_of(out.encode(&message))), Ok(message.clone()), "{out:?}");
                    let written = bytes_of(out.encode_message(&letter, user, seq));
                    assert_eq!(out.decode_server(&written), Ok(message.clone()), "{out:?} from the letter");
                }
            }
            // ...from its log and from another node too.
            round_trips(&letter, Letter::encode, Letter::decode);
            let to = to.users().iter().map(|user| Addressee { user: user.clone(), seq: None }).collect();
            let envelope = Envelope {
                node: "node-a".into(),
                stream: msg.uuid(),
                seq: 1,
                items: vec![Item::Deliver { letter: Arc::new(letter), to }],
            };
            round_trips(&envelope, Envelope::encode, Envelope::decode);
        }
        ClientFrame::Presence { users } => assert!(users.len() <= MAX_PRESENCE_QUERY, "{} users", users.len()),
        ClientFrame::Refresh { token } => assert!(token.len() <= MAX_TOKEN_LEN, "{} byte token", token.len()),
        ClientFrame::Ack { .. } | ClientFrame::AckUpTo { .. } | ClientFrame::Ping => {}
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
