//! Inputs the decoders got wrong, found while fuzzing them (`fuzz/`,
//! `scripts/fuzz`), each kept with what the decoder must do with it now.
//!
//! Most share one cause: a decoder accepted a body that could not be handed
//! on. Checking JSON syntax does not read numbers or count nesting, and
//! re-encoding a body does, so such a body reached a JSON recipient but not
//! a MessagePack one, nor an inbox or another node. A MessagePack body nested
//! deep enough did worse: it overflowed the decoding thread's stack.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use switchboard_protocol::{
    Addressee, Body, ClientFrame, ClientMsgId, Codec, DecodeError, Delivery, Encoded, Envelope, EnvelopeError,
    ErrorCode, Item, Letter, MsgId, ServerFrame, UserId,
};

/// The stack of a tokio worker thread, where a node decodes frames.
const WORKER_STACK_BYTES: usize = 2 << 20;

fn nested_json(depth: usize) -> String {
    format!("{}null{}", "[".repeat(depth), "]".repeat(depth))
}

fn json_send(body: &str) -> Vec<u8> {
    format!(r#"{{"type":"send","id":"c-43","to":"bob","body":{body}}}"#).into_bytes()
}

/// A MessagePack `send` whose body is `depth` nested one-element arrays
/// around a nil.
fn msgpack_send(depth: usize) -> Vec<u8> {
    let mut bytes = vec![0x84]; // a map of 4
    for (key, value) in [("type", "send"), ("id", "c-43"), ("to", "bob")] {
        for text in [key, value] {
            bytes.push(0xa0 | u8::try_from(text.len()).unwrap()); // a fixstr
            bytes.extend(text.as_bytes());
        }
    }
    bytes.extend(b"\xa4body");
    bytes.extend(std::iter::repeat_n(0x91, depth)); // an array of 1
    bytes.push(0xc0); // nil
    bytes
}

fn refused(message: &str) -> Result<ClientFrame, DecodeError> {
    Err(DecodeError {
        code: ErrorCode::BadFrame,
        id: Some(ClientMsgId::parse("c-43").unwrap()),
        message: message.to_owned(),
    })
}

/// Decodes on a thread with a worker's stack, where a stack overflow
/// aborts the test binary.
fn decode_on_worker_stack(codec: Codec, bytes: Vec<u8>) -> Result<ClientFrame, DecodeError> {
    std::thread::Builder::new()
        .stack_size(WORKER_STACK_BYTES)
        .spawn(move || codec.decode(&bytes))
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn a_body_number_past_the_f64_range_is_refused() {
    // Found by client_json: `15e5555` was taken as a body, which a
    // MessagePack recipient got as an empty frame.
    assert_eq!(
        Codec::Json.decode(&json_send("[1,15e5555]")),
        refused("field `body`: number out of range at line 1 column 10")
    );
    assert_eq!(Body::from_json("-1e400").unwrap_err().to_string(), "number out of range at line 1 column 6");
    // The largest finite numbers and anything that rounds to zero pass.
    for text in ["1.7976931348623157e308", "-1.7976931348623157e308", "5e-324", "1e-400", "18446744073709551616"] {
        let Ok(ClientFrame::Send { body, .. }) = Codec::Json.decode(&json_send(text)) else { panic!("{text}") };
        assert_eq!(body.json(), text);
    }
}

#[test]
fn a_json_body_nested_past_the_limit_is_refused() {
    // The frame's syntax check counts no nesting inside a body; transcoding
    // the body for a MessagePack recipient failed past 127 levels, and a
    // client reading it with serde_json failed past 126.
    let deepest = nested_json(Body::MAX_DEPTH);
    let Ok(ClientFrame::Send { body, .. }) = Codec::Json.decode(&json_send(&deepest)) else { panic!() };
    assert_eq!(body.json(), deepest);
    assert_eq!(
        Codec::Json.decode(&json_send(&nested_json(Body::MAX_DEPTH + 1))),
        refused("field `body`: nested deeper than 126 levels at line 1 column 127")
    );
}

#[test]
fn the_deepest_body_reaches_clients_of_either_encoding() {
    let message = ServerFrame::Message(Arc::new(delivery(Body::from_json(&nested_json(Body::MAX_DEPTH)).unwrap())));
    for codec in [Codec::Json, Codec::MsgPack] {
        let bytes = match codec.encode(&message) {
            Encoded::Text(text) => text.into_bytes(),
            Encoded::Binary(bytes) => bytes,
        };
        assert_eq!(codec.decode_server(&bytes), Ok(message.clone()), "{codec:?}");
    }
}

#[test]
fn a_deep_msgpack_body_is_refused_within_a_worker_stack() {
    // 1022 levels was the most rmp-serde allowed: decoding that into a value
    // overflowed a worker's stack in a debug build, aborting the node.
    for depth in [1022, 131] {
        assert_eq!(
            decode_on_worker_stack(Codec::MsgPack, msgpack_send(depth)),
            Err(DecodeError {
                code: ErrorCode::BadFrame,
                id: None,
                message: "invalid MessagePack frame: depth limit exceeded".to_owned()
            }),
            "{depth} levels"
        );
    }
    assert_eq!(
        decode_on_worker_stack(Codec::MsgPack, msgpack_send(130)),
        refused("field `body`: nested deeper than 126 levels at line 1 column 127")
    );
    let Ok(ClientFrame::Send { body, .. }) = decode_on_worker_stack(Codec::MsgPack, msgpack_send(Body::MAX_DEPTH))
    else {
        panic!()
    };
    assert_eq!(body.json(), nested_json(Body::MAX_DEPTH));
}

#[test]
fn an_envelope_carries_the_deepest_body_as_its_json_text() {
    let deepest = Body::from_json(&nested_json(Body::MAX_DEPTH)).unwrap();
    let letter = Letter {
        msg: MsgId::new(),
        from: UserId::parse("alice").unwrap(),
        body: deepest,
        ts: 1,
        reply: None,
        received_us: 1,
        ephemeral: false,
    };
    let to = vec![Addressee { user: UserId::parse("bob").unwrap(), seq: Some(1) }];
    let envelope = Envelope {
        node: "node-a".to_owned(),
        stream: uuid::Uuid::now_v7(),
        seq: 1,
        items: vec![Item::Deliver { letter: Arc::new(letter), to }],
    };
    let bytes = envelope.encode().unwrap();
    let back = Envelope::decode(&bytes).unwrap();
    assert_eq!(back, envelope);
    let Item::Deliver { letter, .. } = &back.items[0] else { panic!() };
    assert_eq!(letter.body.json(), nested_json(Body::MAX_DEPTH));

    // A body that is not JSON text is refused with the envelope.
    let text = nested_json(Body::MAX_DEPTH);
    let at = bytes.windows(text.len()).position(|w| w == text.as_bytes()).unwrap();
    let mut broken = bytes.clone();
    broken[at] = b'{';
    let Err(EnvelopeError::Decode(_)) = Envelope::decode(&broken) else { panic!("a broken body decoded") };
}

fn delivery(body: Body) -> Delivery {
    Delivery {
        msg: MsgId::new(),
        from: UserId::parse("alice").unwrap(),
        to: UserId::parse("bob").unwrap(),
        body,
        ts: 1,
        seq: None,
    }
}

/// The number a MessagePack recipient reads as the body of `body`'s message.
fn msgpack_number(body: Body) -> f64 {
    let Encoded::Binary(bytes) = Codec::MsgPack.encode(&ServerFrame::Message(Arc::new(delivery(body)))) else {
        panic!("msgpack is binary")
    };
    let frame: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
    frame["body"].as_f64().unwrap()
}

#[test]
fn a_float_body_keeps_its_value_in_either_encoding() {
    // Found by every target: without serde_json's `float_roundtrip`, some
    // decimals were read one unit in the last place off, so a float changed
    // between a JSON sender and a MessagePack recipient, and between two
    // MessagePack clients (the body's JSON text read again).
    let text = "3.440773095516150955161";
    let Ok(ClientFrame::Send { body, .. }) =
        Codec::Json.decode(format!(r#"{{"type":"send","id":"c-1","to":"bob","body":{text}}}"#).as_bytes())
    else {
        panic!()
    };
    assert_eq!(msgpack_number(body), text.parse::<f64>().unwrap());

    let sent = -2.3158417847463237e77_f64;
    let mut frame = b"\x84\xa4type\xa4send\xa2id\xa3c-1\xa2to\xa3bob\xa4body\xcb".to_vec();
    frame.extend(sent.to_be_bytes());
    let Ok(ClientFrame::Send { body, .. }) = Codec::MsgPack.decode(&frame) else { panic!() };
    assert_eq!(msgpack_number(body), sent);
}
