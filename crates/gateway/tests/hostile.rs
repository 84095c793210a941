//! Hostile clients: each gets a clear answer and costs the node a bounded
//! amount. (Floods of frames, oversized frames and headers, bad tokens and
//! silent peers are in limits.rs and auth.rs.)

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use switchboard_protocol::ServerFrame;
use switchboard_testkit::{Client, Connect, NodeProcess, get, post_json, scrape, silent_client, token, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const API_KEY: &str = "hostile-test-key";

/// The node's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap();
    kib * 1024
}

async fn metric(node: &NodeProcess, name: &str) -> f64 {
    scrape(node.metrics).await.value(name, &[])
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_and_costs_a_bounded_amount_of_memory() {
    let node = NodeProcess::start(&[
        "--send-queue-bytes",
        "65536",
        "--inbox-max-len",
        "10",
        "--rate-limit",
        "100000",
        "--rate-limit-burst",
        "100000",
    ])
    .await;
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    // Bob upgrades and never reads a byte, not even the 101.
    let _bob = silent_client(node.public, "bob").await;
    switchboard_testkit::eventually("bob to be online", || async {
        metric(&node, "switchboard_connections").await == 2.0
    })
    .await;
    let before = rss_bytes(node.pid());
    let body = json!("z".repeat(60_000));
    // 400 messages of 60 KB: 24 MB for a peer that takes none of it.
    for i in 0..400 {
        alice.send_message(&format!("m-{i}"), "bob", body.clone()).await;
    }
    switchboard_testkit::eventually("bob to be cut as a slow consumer", || async {
        metric(&node, "switchboard_slow_consumer_disconnects_total").await == 1.0
    })
    .await;
    let grown = rss_bytes(node.pid()).saturating_sub(before);
    // The queue (64 KiB), the socket's write buffer and the 10 kept
    // messages are all the node holds for bob.
    assert!(grown < 8 << 20, "the node grew by {grown} bytes");
}

#[tokio::test]
async fn compression_is_never_negotiated_and_a_compressed_frame_is_closed_with_1002() {
    let node = NodeProcess::start(&[]).await;
    let mut tcp = TcpStream::connect(node.public).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
         Authorization: Bearer {}\r\n\r\n",
        token("alice")
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(within("the upgrade response", tcp.read_u8()).await.unwrap());
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains("sec-websocket-extensions"), "{head}");

    // A masked text frame with RSV1 set, as a deflate sender would write it.
    let payload = b"\xf2\x48\xcd\xc9\xc9\x07\x00";
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x80 | 0x40 | 0x01, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).await.unwrap();
    let mut rest = Vec::new();
    within("the node to close the connection", tcp.read_to_end(&mut rest)).await.unwrap();
    // The welcome, then a close frame with 1002, "protocol error".
    let reason = b"protocol error";
    let close = [&[0x88, 2 + reason.len() as u8, 0x03, 0xea][..], reason].concat();
    assert!(rest.ends_with(&close), "{rest:?}");
}

#[tokio::test]
async fn upgrades_without_the_websocket_headers_get_400() {
    let node = NodeProcess::start(&[]).await;
    let bearer = format!("Bearer {}", token("alice"));
    let base = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("authorization", bearer.as_str()),
    ];
    for missing in ["connection", "upgrade", "sec-websocket-version", "sec-websocket-key"] {
        let headers: Vec<_> = base.iter().filter(|(name, _)| *name != missing).copied().collect();
        let answer = get(node.public, "/ws", &headers).await;
        assert_eq!((missing, answer.status, answer.json()["error"].as_str()), (missing, 400, Some("not_websocket")));
    }
    let old_version: Vec<_> = base
        .iter()
        .map(|&(name, value)| if name == "sec-websocket-version" { (name, "8") } else { (name, value) })
        .collect();
    let answer = get(node.public, "/ws", &old_version).await;
    assert_eq!((answer.status, answer.json()["error"].as_str()), (400, Some("not_websocket")));
    // The node still serves a proper client.
    Client::connect(&node.ws_url(), "alice").await;
}

#[tokio::test]
async fn a_forged_from_is_ignored() {
    let node = NodeProcess::start(&[]).await;
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    let mut bob = Client::connect(&node.ws_url(), "bob").await;
    let forged = json!({"type": "send", "id": "f-1", "to": "bob", "from": "mallory", "body": "hi"});
    alice.send_raw(Message::text(forged.to_string())).await;
    let got = bob.recv_message().await;
    assert_eq!((got.from.as_str(), got.to.as_str(), got.body.to_value()), ("alice", "bob", json!("hi")));
}

/// A client whose reading falls behind: a 4 KiB receive buffer, and it
/// reads only when the test says so.
async fn lagging_client(node: &NodeProcess, user: &str) -> Client {
    let connect = Connect { bearer: Some(token(user)), recv_buffer: Some(4096), ..Connect::default() };
    Client::open(&node.ws_url(), connect).await.unwrap()
}

async fn api_send(node: &NodeProcess, to: &str, body: &serde_json::Value) {
    let auth = format!("Bearer {API_KEY}");
    let sent =
        post_json(node.public, "/v1/send", &[("authorization", auth.as_str())], &json!({"to": to, "body": body})).await;
    assert_eq!(sent.status, 202, "{}", sent.body);
}

const QUEUE_8_MIB: &str = "8388608";

/// Five megabytes for `user`: under an 8 MiB queue limit, far over what the
/// sockets' buffers take, so some of it waits in the node.
async fn fill(node: &NodeProcess, user: &str, body: &serde_json::Value) {
    for _ in 0..1200 {
        api_send(node, user, body).await;
    }
}

/// The client stays away this long after the node gave up on it: longer
/// than a close frame used to be given to get out.
const AWAY: Duration = Duration::from_secs(2);

/// What a lagging client reads once it reads again: every data frame, then
/// the close code; a connection that ends without a close frame fails.
async fn read_to_the_close(client: &mut Client) -> (u16, Vec<ServerFrame>) {
    let (close, frames) = client.recv_close().await;
    (close.expect("a close frame").0, frames)
}

#[tokio::test]
async fn a_slow_consumer_hears_1013_once_it_reads_again_and_costs_a_bounded_amount() {
    let node = NodeProcess::start(&["--api-key", API_KEY, "--inbox-max-len", "10"]).await;
    let body = json!("q".repeat(4096));
    // The same traffic to a client that reads, first: the node's allocator
    // grows by a few MiB for that alone, whoever reads.
    let mut carol = Client::connect(&node.ws_url(), "carol").await;
    for _ in 0..1000 {
        api_send(&node, "carol", &body).await;
        carol.recv_message().await;
    }
    let mut bob = lagging_client(&node, "bob").await;
    let before = rss_bytes(node.pid());
    // 4 KiB messages until the node cuts bob: the 1 MiB queue overflows
    // long before 20 MiB.
    let mut sent = 0;
    while metric(&node, "switchboard_slow_consumer_disconnects_total").await == 0.0 {
        assert!(sent < 5120, "bob was never cut");
        api_send(&node, "bob", &body).await;
        sent += 1;
    }
    let grown = rss_bytes(node.pid()).saturating_sub(before);
    // The queue's 1 MiB, and the socket layer's buffer.
    assert!(grown < (1 << 20) + (2 << 20), "the node grew by {grown} bytes");

    tokio::time::sleep(AWAY).await;
    let (code, frames) = read_to_the_close(&mut bob).await;
    assert_eq!(code, 1013);
    // What was in the socket's buffers when bob was cut, then nothing more.
    assert!(!frames.is_empty() && frames.len() < sent, "{} frames of {sent} sent", frames.len());
    assert!(frames.iter().all(|f| matches!(f, ServerFrame::Message(m) if m.body.to_value() == body)));
}

#[tokio::test]
async fn a_draining_node_tells_a_client_that_does_not_read_1012() {
    let args = ["--api-key", API_KEY, "--shutdown-grace", "10s", "--send-queue-bytes", QUEUE_8_MIB];
    let mut node = NodeProcess::start(&args).await;
    let mut bob = lagging_client(&node, "bob").await;
    let body = json!("d".repeat(4096));
    fill(&node, "bob", &body).await;
    node.terminate().await;
    switchboard_testkit::eventually("bob's connection to be closed for the drain", || async {
        scrape(node.metrics).await.value("switchboard_disconnects_total", &[("reason", "draining")]) == 1.0
    })
    .await;
    tokio::time::sleep(AWAY).await;
    let (code, frames) = read_to_the_close(&mut bob).await;
    assert_eq!(code, 1012);
    assert!(frames.iter().all(|f| matches!(f, ServerFrame::Message(_))), "{frames:?}");
    assert_eq!(node.wait().await, Some(0));
}

#[tokio::test]
async fn a_flood_from_a_client_that_does_not_read_is_closed_with_1008_once_it_reads() {
    let args =
        ["--api-key", API_KEY, "--rate-limit", "1", "--rate-limit-burst", "5", "--send-queue-bytes", QUEUE_8_MIB];
    let node = NodeProcess::start(&args).await;
    let mut bob = lagging_client(&node, "bob").await;
    fill(&node, "bob", &json!("f".repeat(4096))).await;
    // Pings far over the rate, while bob reads nothing: the node, which
    // cannot write to bob, reads none of them meanwhile.
    for _ in 0..40 {
        bob.feed_raw(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    }
    bob.flush().await.unwrap();
    tokio::time::sleep(AWAY).await;
    let abuse = || async { scrape(node.metrics).await.value("switchboard_disconnects_total", &[("reason", "abuse")]) };
    assert_eq!(abuse().await, 0.0);
    // Once bob reads, the node gets to the flood, and bob to the 1008.
    let (code, frames) = read_to_the_close(&mut bob).await;
    assert_eq!(code, 1008);
    assert_eq!(frames.iter().filter(|f| matches!(f, ServerFrame::Message(_))).count(), 1200);
    assert_eq!(abuse().await, 1.0);
}
