//! Two users and their devices talking through one real node.

#![allow(clippy::unwrap_used)]

use serde_json::json;
use switchboard_protocol::{AcceptStatus, ClientFrame, Codec, ReceiptStatus, ServerFrame, UserId};
use switchboard_testkit::{Client, NodeProcess};

#[tokio::test]
async fn alice_and_bob_exchange_messages_in_json() {
    let node = NodeProcess::start(&[]).await;
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    let mut bob = Client::connect(&node.ws_url(), "bob").await;
    assert_eq!(alice.welcome.user.as_str(), "alice");
    assert_eq!(alice.welcome.heartbeat_ms, 25_000);
    assert_eq!(alice.welcome.epoch, bob.welcome.epoch);
    assert_ne!(alice.welcome.conn, bob.welcome.conn);

    let (msg, status) = alice.send_message("c-1", "bob", json!({"text": "hi bob"})).await;
    assert_eq!(status, AcceptStatus::Routed);
    assert_eq!(msg.uuid().get_version_num(), 7);
    let got = bob.recv_message().await;
    assert_eq!((got.msg, got.from.as_str(), got.to.as_str()), (msg, "alice", "bob"));
    assert_eq!(got.body.to_value(), json!({"text": "hi bob"}));

    let (reply, _) = bob.send_message("b-1", "alice", json!("hi alice")).await;
    let got = alice.recv_message().await;
    assert_eq!((got.msg, got.from.as_str(), got.body.to_value()), (reply, "bob", json!("hi alice")));
}

#[tokio::test]
async fn msgpack_and_json_clients_understand_each_other() {
    let node = NodeProcess::start(&[]).await;
    let mut alice = Client::connect_with(&node.ws_url(), "alice", Codec::MsgPack).await;
    let mut bob = Client::connect_with(&node.ws_url(), "bob", Codec::Json).await;
    assert_eq!(alice.codec, Codec::MsgPack);

    let body = json!({"text": "from msgpack", "n": [1, 2, 3], "nested": {"ok": true}});
    let (msg, _) = alice.send_message("m-1", "bob", body.clone()).await;
    let got = bob.recv_message().await;
    assert_eq!((got.msg, got.body.to_value()), (msg, body));

    let (msg, _) = bob.send_message("j-1", "alice", json!({"text": "from json"})).await;
    let got = alice.recv_message().await;
    assert_eq!((got.msg, got.body.to_value()), (msg, json!({"text": "from json"})));
}

/// Both devices of bob's get alice's message and ack it; alice gets one
/// receipt, from the first ack.
async fn every_device_gets_the_message_and_the_sender_one_receipt(delivery: &str) {
    let node = NodeProcess::start(&["--delivery", delivery]).await;
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    let mut phone = Client::connect_device(&node.ws_url(), "bob", "phone").await;
    let mut laptop = Client::connect_device(&node.ws_url(), "bob", "laptop").await;

    let (msg, status) = alice.send_message("c-1", "bob", json!(1)).await;
    assert_eq!(status, AcceptStatus::Routed);
    assert_eq!(phone.recv_message().await.msg, msg);
    assert_eq!(laptop.recv_message().await.msg, msg);

    phone.ack(msg).await;
    match alice.recv().await {
        ServerFrame::Receipt(receipt) => {
            assert_eq!((receipt.id.as_str(), receipt.msg, receipt.status), ("c-1", msg, ReceiptStatus::Delivered));
        }
        other => panic!("expected a receipt, got {other:?}"),
    }
    // The laptop's ack is taken before its pong; alice's pong proves no
    // second receipt was queued before it.
    laptop.ack(msg).await;
    laptop.send(&ClientFrame::Ping).await;
    assert_eq!(laptop.recv().await, ServerFrame::Pong);
    alice.send(&ClientFrame::Ping).await;
    assert_eq!(alice.recv().await, ServerFrame::Pong);
}

#[tokio::test]
async fn every_device_gets_a_durable_message_and_the_sender_one_receipt() {
    every_device_gets_the_message_and_the_sender_one_receipt("durable").await;
}

#[tokio::test]
async fn every_device_gets_a_fast_message_and_the_sender_one_receipt() {
    every_device_gets_the_message_and_the_sender_one_receipt("fast").await;
}

#[tokio::test]
async fn offline_messages_wait_in_the_inbox_until_acked() {
    let node = NodeProcess::start(&[]).await;
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    let mut sent = Vec::new();
    for i in 0..3 {
        let (msg, status) = alice.send_message(&format!("c-{i}"), "bob", json!({"i": i})).await;
        assert_eq!(status, AcceptStatus::Stored);
        sent.push(msg);
    }

    // Replayed oldest first; only the first is acked.
    let mut bob = Client::connect(&node.ws_url(), "bob").await;
    let replayed: Vec<_> =
        [bob.recv_message().await, bob.recv_message().await, bob.recv_message().await].iter().map(|d| d.msg).collect();
    assert_eq!(replayed, sent);
    bob.ack(sent[0]).await;
    match alice.recv().await {
        ServerFrame::Receipt(receipt) => {
            assert_eq!((receipt.id.as_str(), receipt.msg), ("c-0", sent[0]))
        }
        other => panic!("expected a receipt, got {other:?}"),
    }
    drop(bob);

    // The unacked two come back, the acked one never does.
    let mut bob = Client::connect(&node.ws_url(), "bob").await;
    assert_eq!(bob.recv_message().await.msg, sent[1]);
    assert_eq!(bob.recv_message().await.msg, sent[2]);
    bob.send(&ClientFrame::Ping).await;
    assert_eq!(bob.recv().await, ServerFrame::Pong);
}

#[tokio::test]
async fn a_repeated_send_id_is_answered_but_not_delivered_again() {
    let node = NodeProcess::start(&[]).await;
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    let mut bob = Client::connect(&node.ws_url(), "bob").await;

    let first = alice.send_message("same", "bob", json!("once")).await;
    assert_eq!(bob.recv_message().await.msg, first.0);

    // After a reconnect too: the id belongs to the sender, not the connection.
    drop(alice);
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    assert_eq!(alice.send_message("same", "bob", json!("twice")).await, first);
    let (other, _) = alice.send_message("other", "bob", json!("new")).await;
    // The next thing bob sees is the new message, not the repeat.
    assert_eq!(bob.recv_message().await.msg, other);

    // Another sender may use the same id.
    let mut carol = Client::connect(&node.ws_url(), "carol").await;
    let (carols, _) = carol.send_message("same", "bob", json!("carol")).await;
    assert_ne!(carols, first.0);
    assert_eq!(bob.recv_message().await.msg, carols);
}

#[tokio::test]
async fn messages_from_one_connection_arrive_in_send_order() {
    let node = NodeProcess::start(&["--rate-limit", "1000", "--rate-limit-burst", "1000"]).await;
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    let mut bob = Client::connect(&node.ws_url(), "bob").await;
    let mut sent = Vec::new();
    for i in 0..200 {
        sent.push(alice.send_message(&format!("c-{i}"), "bob", json!(i)).await.0);
    }
    for (i, msg) in sent.iter().enumerate() {
        let got = bob.recv_message().await;
        assert_eq!((got.msg, got.body.to_value()), (*msg, json!(i)));
    }
}

#[tokio::test]
async fn presence_answers_who_is_online() {
    let node = NodeProcess::start(&[]).await;
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    let _bob = Client::connect(&node.ws_url(), "bob").await;
    let users = ["bob", "carol", "alice"].map(|u| UserId::parse(u).unwrap()).to_vec();
    alice.send(&ClientFrame::Presence { users }).await;
    let ServerFrame::Presence { online } = alice.recv().await else { panic!("expected presence") };
    let online: Vec<_> = online.iter().map(|(u, on)| (u.as_str(), *on)).collect();
    assert_eq!(online, [("alice", true), ("bob", true), ("carol", false)]);
}

#[tokio::test]
async fn app_level_ping_gets_pong() {
    let node = NodeProcess::start(&[]).await;
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    alice.send_raw(tokio_tungstenite::tungstenite::Message::text(r#"{"type":"ping"}"#)).await;
    assert_eq!(alice.recv().await, ServerFrame::Pong);
}
