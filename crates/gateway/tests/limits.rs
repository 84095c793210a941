//! Bad input and abuse each get their answer, and nothing accepted is lost.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use switchboard_protocol::{AcceptStatus, ClientFrame, ErrorCode, ServerFrame};
use switchboard_testkit::{Client, NodeProcess, get, within};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

fn error_of(frame: &ServerFrame) -> (Option<&str>, ErrorCode) {
    match frame {
        ServerFrame::Error { id, code, .. } => (id.as_ref().map(|id| id.as_str()), *code),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_frames_get_bad_frame_and_the_connection_stays() {
    let node = NodeProcess::start(&[]).await;
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    let msgpack_without_body = rmp_serde::to_vec_named(&json!({"type":"send","id":"c-5","to":"bob"})).unwrap();
    let cases: [(Message, Option<&str>, ErrorCode); 10] = [
        (Message::text("{not json"), None, ErrorCode::BadFrame),
        (Message::text(r#"{"type":"teleport"}"#), None, ErrorCode::BadFrame),
        (Message::text(r#"{"id":"x"}"#), None, ErrorCode::BadFrame),
        (Message::text(r#"{"type":"send","id":"c-1","body":1}"#), Some("c-1"), ErrorCode::BadFrame),
        (Message::text(r#"{"type":"send","id":"","to":"bob"}"#), None, ErrorCode::BadFrame),
        (Message::text(r#"{"type":"send","id":"c-4","to":"bob"}"#), Some("c-4"), ErrorCode::BadFrame),
        (Message::binary(msgpack_without_body), Some("c-5"), ErrorCode::BadFrame),
        (Message::text(r#"{"type":"ack","msg":"not-a-uuid"}"#), None, ErrorCode::BadFrame),
        (Message::binary(vec![0xc1, 0xff, 0x00]), None, ErrorCode::BadFrame),
        (
            Message::text(r#"{"type":"send","id":"c-2","to":"bob smith","body":1}"#),
            Some("c-2"),
            ErrorCode::InvalidRecipient,
        ),
    ];
    for (message, id, code) in cases {
        alice.send_raw(message).await;
        assert_eq!(error_of(&alice.recv().await), (id, code));
    }
    let long_id = "x".repeat(65);
    alice.send_raw(Message::text(json!({"type":"send","id":long_id,"to":"bob","body":1}).to_string())).await;
    assert_eq!(error_of(&alice.recv().await), (None, ErrorCode::BadFrame));

    // Still open and working; `null` is a body.
    let (null_body, status) = alice.send_message("c-6", "bob", json!(null)).await;
    assert_eq!(status, AcceptStatus::Stored);
    let (fine, _) = alice.send_message("c-3", "bob", json!("fine")).await;

    // Nothing of the refused frames was stored: bob gets exactly the two.
    let mut bob = Client::connect(&node.ws_url(), "bob").await;
    let (first, second) = (bob.recv_message().await, bob.recv_message().await);
    assert_eq!((first.msg, first.body.json(), second.msg), (null_body, "null", fine));
    bob.send(&ClientFrame::Ping).await;
    assert_eq!(bob.recv().await, ServerFrame::Pong);
}

#[tokio::test]
async fn a_presence_query_over_100_users_is_too_large() {
    let node = NodeProcess::start(&[]).await;
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    let users: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    alice.send_raw(Message::text(json!({"type":"presence","users":users}).to_string())).await;
    assert_eq!(error_of(&alice.recv().await), (None, ErrorCode::TooLarge));
    alice.send(&ClientFrame::Ping).await;
    assert_eq!(alice.recv().await, ServerFrame::Pong);
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_with_1009() {
    let node = NodeProcess::start(&["--max-frame-bytes", "1024", "--send-queue-bytes", "65536"]).await;
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    let body = "x".repeat(2000);
    alice.send_raw(Message::text(json!({"type":"send","id":"big","to":"bob","body":body}).to_string())).await;
    let (close, frames) = alice.recv_close().await;
    assert_eq!(close.map(|c| c.0), Some(1009));
    assert!(frames.is_empty(), "{frames:?}");
}

#[tokio::test]
async fn over_the_rate_frames_are_refused_then_a_flood_is_closed_with_1008() {
    let node = NodeProcess::start(&["--rate-limit", "1", "--rate-limit-burst", "5"]).await;
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    // One batch, so the whole burst reaches the node at once.
    for i in 0..6 {
        let send = json!({"type":"send","id":format!("c-{i}"),"to":"bob","body":i}).to_string();
        alice.feed_raw(Message::text(send)).await.unwrap();
    }
    alice.flush().await.unwrap();
    for i in 0..5 {
        match alice.recv().await {
            ServerFrame::Accepted { id, .. } => assert_eq!(id.as_str(), format!("c-{i}")),
            other => panic!("expected accepted c-{i}, got {other:?}"),
        }
    }
    assert_eq!(error_of(&alice.recv().await), (Some("c-5"), ErrorCode::RateLimited));

    // Ten times the rate refused within a second: closed.
    for _ in 0..20 {
        alice.feed_raw(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    }
    alice.flush().await.unwrap();
    let (close, frames) = alice.recv_close().await;
    assert_eq!(close.map(|c| c.0), Some(1008));
    // Refusals 2..=9 were answered; the 10th closed the connection.
    assert_eq!(frames.len(), 8, "{frames:?}");
    assert!(frames.iter().all(|f| error_of(f) == (None, ErrorCode::RateLimited)));
}

#[tokio::test]
async fn a_slow_consumer_is_cut_with_1013_and_loses_nothing() {
    let node = NodeProcess::start(&[
        "--max-frame-bytes",
        "65536",
        "--send-queue-bytes",
        "65536",
        "--rate-limit",
        "100000",
        "--rate-limit-burst",
        "100000",
    ])
    .await;
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    // Bob connects and never reads.
    let sleepy_bob = Client::connect(&node.ws_url(), "bob").await;
    let body = json!("y".repeat(60_000));
    let mut sent = Vec::new();
    let mut i = 0;
    // Sending until the node reports the cut; every send is accepted.
    while slow_consumer_disconnects(&node).await == 0 {
        assert!(i < 2000, "bob was never cut");
        sent.push(alice.send_message(&format!("c-{i}"), "bob", body.clone()).await.0);
        i += 1;
    }
    drop(sleepy_bob);

    // Durable delivery: everything accepted is in bob's inbox, in order.
    let mut bob = Client::connect(&node.ws_url(), "bob").await;
    for msg in &sent {
        let got = bob.recv_message().await;
        assert_eq!(got.msg, *msg);
        bob.ack(got.msg).await;
    }
}

async fn slow_consumer_disconnects(node: &NodeProcess) -> u64 {
    let metrics = get(node.metrics, "/metrics", &[]).await.body;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_slow_consumer_disconnects_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_silent_client_is_closed_after_two_and_a_half_heartbeats() {
    let node = NodeProcess::start(&["--heartbeat", "200ms"]).await;
    // A raw client that completes the upgrade and then neither sends nor
    // answers pings.
    let mut tcp = switchboard_testkit::silent_client(node.public, "alice").await;
    let mut received = Vec::new();
    within("the node to close the connection", tcp.read_to_end(&mut received)).await.unwrap();
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    // The last frame is a close frame (0x88) with code 1000, "idle timeout".
    let reason = b"idle timeout";
    let close = [&[0x88, 2 + reason.len() as u8, 0x03, 0xe8][..], reason].concat();
    assert!(received.ends_with(&close), "{received:?}");
}

#[tokio::test]
async fn app_pings_keep_a_connection_open() {
    let node = NodeProcess::start(&["--heartbeat", "200ms"]).await;
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..10 {
        interval.tick().await;
        alice.send(&ClientFrame::Ping).await;
        assert_eq!(alice.recv().await, ServerFrame::Pong);
    }
}
