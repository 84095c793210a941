//! Every frame survives both codecs unchanged, and no input makes a
//! decoder panic.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use switchboard_protocol::{
    AcceptStatus, Addressee, Body, ClientFrame, ClientMsgId, Codec, Delivery, DeviceId, Encoded, Envelope, ErrorCode,
    Item, Letter, MsgId, Receipt, ReceiptStatus, ReplyTo, ServerFrame, To, UserId, Welcome,
};

fn user() -> impl Strategy<Value = UserId> {
    "[A-Za-z0-9_.:@-]{1,128}".prop_map(|s| UserId::parse(&s).unwrap())
}

fn client_id() -> impl Strategy<Value = ClientMsgId> {
    "\\PC{1,16}".prop_filter_map("1-64 bytes", |s| ClientMsgId::parse(&s).ok())
}

fn msg_id() -> impl Strategy<Value = MsgId> {
    any::<u128>().prop_map(|n| MsgId::from(uuid::Uuid::from_u128(n)))
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        "\\PC{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Body> {
    json_value().prop_map(|v| Body::from_value(&v))
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (client_id(), recipients(), body(), any::<bool>()).prop_map(|(id, to, body, ephemeral)| ClientFrame::Send {
            id,
            to,
            body,
            ephemeral
        }),
        msg_id().prop_map(|msg| ClientFrame::Ack { msg }),
        any::<u64>().prop_map(|seq| ClientFrame::AckUpTo { seq }),
        Just(ClientFrame::Ping),
        prop::collection::vec(user(), 0..100).prop_map(|users| ClientFrame::Presence { users }),
        "[A-Za-z0-9._-]{0,300}".prop_map(|token| ClientFrame::Refresh { token }),
    ]
}

fn recipients() -> impl Strategy<Value = To> {
    prop_oneof![
        user().prop_map(To::One),
        prop::collection::btree_set(user(), 1..5).prop_map(|users| To::Many(users.into_iter().collect())),
    ]
}

fn status() -> impl Strategy<Value = AcceptStatus> {
    prop_oneof![Just(AcceptStatus::Routed), Just(AcceptStatus::Stored), Just(AcceptStatus::Offline)]
}

fn delivery() -> impl Strategy<Value = Delivery> {
    (msg_id(), user(), user(), body(), any::<u64>(), prop::option::of(any::<u64>()))
        .prop_map(|(msg, from, to, body, ts, seq)| Delivery { msg, from, to, body, ts, seq })
}

fn receipt() -> impl Strategy<Value = Receipt> {
    (client_id(), msg_id(), prop::option::of(user())).prop_map(|(id, msg, user)| Receipt {
        id,
        msg,
        status: ReceiptStatus::Delivered,
        user,
    })
}

fn letter() -> impl Strategy<Value = Letter> {
    let reply = (client_id(), "[a-z0-9-]{1,20}", any::<bool>()).prop_map(|(id, node, list)| ReplyTo { id, node, list });
    (msg_id(), user(), body(), any::<u64>(), prop::option::of(reply), any::<u64>(), any::<bool>()).prop_map(
        |(msg, from, body, ts, reply, received_us, ephemeral)| Letter {
            msg,
            from,
            body,
            ts,
            reply,
            received_us,
            ephemeral,
        },
    )
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::BadFrame),
        Just(ErrorCode::TooLarge),
        Just(ErrorCode::RateLimited),
        Just(ErrorCode::InvalidRecipient),
        Just(ErrorCode::BadToken),
        Just(ErrorCode::Internal),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (client_id(), msg_id(), status(), prop::option::of(prop::collection::btree_map(user(), status(), 1..4)))
            .prop_map(|(id, msg, status, recipients)| ServerFrame::Accepted { id, msg, status, recipients }),
        delivery().prop_map(|d| ServerFrame::Message(Arc::new(d))),
        receipt().prop_map(|r| ServerFrame::Receipt(Arc::new(r))),
        prop::collection::btree_map(user(), any::<bool>(), 0..10)
            .prop_map(|online| { ServerFrame::Presence { online: online.into_iter().collect::<BTreeMap<_, _>>() } }),
        Just(ServerFrame::Pong),
        any::<u64>().prop_map(|exp| ServerFrame::Refreshed { exp }),
        (
            (user(), any::<u128>(), "[a-z0-9-]{1,20}", any::<u64>()),
            (any::<u128>(), "[a-z0-9]{1,64}", any::<u64>(), prop::option::of(any::<u64>()))
        )
            .prop_map(|((user, conn, node, heartbeat_ms), (epoch, device, seq, exp))| {
                ServerFrame::Welcome(Welcome {
                    user,
                    conn: uuid::Uuid::from_u128(conn),
                    node,
                    heartbeat_ms,
                    epoch: uuid::Uuid::from_u128(epoch),
                    device: DeviceId::parse(&device).unwrap(),
                    seq,
                    exp,
                })
            }),
        (prop::option::of(client_id()), error_code(), "\\PC{0,40}")
            .prop_map(|(id, code, message)| ServerFrame::Error { id, code, message }),
    ]
}

fn item() -> impl Strategy<Value = Item> {
    let addressee = (user(), prop::option::of(any::<u64>())).prop_map(|(user, seq)| Addressee { user, seq });
    prop_oneof![
        (letter(), prop::collection::vec(addressee, 1..4))
            .prop_map(|(letter, to)| Item::Deliver { letter: Arc::new(letter), to }),
        (user(), receipt()).prop_map(|(to, receipt)| Item::Receipt { to, receipt }),
        Just(Item::Probe),
        Just(Item::Hello),
        user().prop_map(|user| Item::Online { user }),
        user().prop_map(|user| Item::Offline { user }),
        any::<u64>().prop_map(|id| Item::Fence { id }),
        any::<u64>().prop_map(|id| Item::Fenced { id }),
        (any::<u64>(), user(), prop::option::of("[a-z0-9]{1,64}"), prop::option::of(any::<u64>())).prop_map(
            |(id, user, device, block_ms)| Item::Disconnect {
                id,
                user,
                device: device.map(|d| DeviceId::parse(&d).unwrap()),
                block_ms
            }
        ),
        (any::<u64>(), any::<u64>()).prop_map(|(id, closed)| Item::Disconnected { id, closed }),
    ]
}

fn bytes_of(encoded: Encoded) -> Vec<u8> {
    match encoded {
        Encoded::Text(text) => text.into_bytes(),
        Encoded::Binary(bytes) => bytes,
    }
}

proptest! {
    #[test]
    fn client_frames_round_trip(frame in client_frame()) {
        for codec in [Codec::Json, Codec::MsgPack] {
            let bytes = bytes_of(codec.encode_client(&frame));
            prop_assert_eq!(codec.decode(&bytes), Ok(frame.clone()));
        }
    }

    #[test]
    fn server_frames_round_trip(frame in server_frame()) {
        for codec in [Codec::Json, Codec::MsgPack] {
            let bytes = bytes_of(codec.encode(&frame));
            prop_assert_eq!(codec.decode_server(&bytes), Ok(frame.clone()));
        }
    }

    #[test]
    fn envelopes_round_trip(node in "[a-z0-9-]{1,20}", seq in any::<u64>(), items in prop::collection::vec(item(), 0..5)) {
        let envelope = Envelope { node, stream: uuid::Uuid::now_v7(), seq, items };
        let bytes = envelope.encode().unwrap();
        prop_assert_eq!(Envelope::decode(&bytes).unwrap(), envelope);
    }

    #[test]
    fn letters_round_trip_and_render_as_their_message_frame(letter in letter(), to in user(), seq in prop::option::of(any::<u64>())) {
        prop_assert_eq!(Letter::decode(&letter.encode().unwrap()).unwrap(), letter.clone());
        let frame = ServerFrame::Message(Arc::new(Delivery {
            msg: letter.msg, from: letter.from.clone(), to: to.clone(), body: letter.body.clone(), ts: letter.ts, seq,
        }));
        for codec in [Codec::Json, Codec::MsgPack] {
            prop_assert_eq!(codec.encode_message(&letter, &to, seq), codec.encode(&frame));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Codec::Json.decode(&bytes);
        let _ = Codec::MsgPack.decode(&bytes);
        let _ = Envelope::decode(&bytes);
        let _ = Letter::decode(&bytes);
    }

    #[test]
    fn mutated_frames_never_panic(frame in client_frame(), flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        for codec in [Codec::Json, Codec::MsgPack] {
            let mut bytes = bytes_of(codec.encode_client(&frame));
            for (at, byte) in &flips {
                if !bytes.is_empty() {
                    let len = bytes.len();
                    bytes[at % len] = *byte;
                }
            }
            let _ = codec.decode(&bytes);
        }
    }
}

#[test]
fn cross_codec_bodies_agree() {
    // A JSON sender's body reaches a MessagePack recipient as the same value.
    let body = Body::from_json(r#"{"text":"hi","n":[1,-2,3.5],"ok":true,"none":null}"#).unwrap();
    let frame = ServerFrame::Message(Arc::new(Delivery {
        msg: MsgId::new(),
        from: UserId::parse("alice").unwrap(),
        to: UserId::parse("bob").unwrap(),
        body,
        ts: 1,
        seq: Some(7),
    }));
    let Encoded::Binary(bytes) = Codec::MsgPack.encode(&frame) else { panic!("msgpack is binary") };
    let value: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(value["seq"], 7);
    assert_eq!(value["body"], serde_json::json!({"text":"hi","n":[1,-2,3.5],"ok":true,"none":null}));
    assert_eq!(value["type"], "message");
}

#[test]
fn msgpack_welcome_carries_ids_as_text() {
    let conn = uuid::Uuid::now_v7();
    let frame = ServerFrame::Welcome(Welcome {
        user: UserId::parse("alice").unwrap(),
        conn,
        node: "n1".to_owned(),
        heartbeat_ms: 25_000,
        epoch: conn,
        device: DeviceId::default_device(),
        seq: 0,
        exp: Some(1_900_000_000),
    });
    let Encoded::Binary(bytes) = Codec::MsgPack.encode(&frame) else { panic!("msgpack is binary") };
    let value: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(value["conn"], conn.to_string());
    assert_eq!(value["epoch"], conn.to_string());
}
