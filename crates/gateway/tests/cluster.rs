//! Several real nodes over a real Redis: standalone, and a 3-master Redis
//! Cluster for the core scenarios. Message ids are checked exactly.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::json;
use switchboard_protocol::{
    AcceptStatus, Addressee, Body, ClientFrame, Envelope, ErrorCode, Item, Letter, MsgId, ServerFrame, To, UserId,
};
use switchboard_testkit::{Client, NodeProcess, RedisCluster, RedisServer, eventually, get, scrape, within};

/// Starts `count` nodes on `url`, with a short node TTL so that dead nodes
/// are swept quickly.
async fn nodes(url: &str, count: usize, extra: &[&str]) -> Vec<NodeProcess> {
    let mut nodes = Vec::new();
    for i in 0..count {
        let id = format!("node-{i}");
        let mut args = vec!["--redis-url", url, "--node-ttl", "1s", "--node-id", &id];
        args.extend_from_slice(extra);
        nodes.push(NodeProcess::start(&args).await);
    }
    for node in &nodes {
        eventually("the node to be ready", || async { get(node.public, "/readyz", &[]).await.status == 200 }).await;
    }
    nodes
}

async fn expect_receipt(client: &mut Client, id: &str, msg: MsgId) {
    match client.recv().await {
        ServerFrame::Receipt(receipt) => assert_eq!((receipt.id.as_str(), receipt.msg), (id, msg)),
        other => panic!("expected a receipt for {id}, got {other:?}"),
    }
}

async fn cross_node_messages_receipts_and_presence(url: &str) {
    let nodes = nodes(url, 2, &[]).await;
    let mut alice = Client::connect(&nodes[0].ws_url(), "alice").await;
    let mut bob = Client::connect(&nodes[1].ws_url(), "bob").await;
    assert_eq!((alice.welcome.node.as_str(), bob.welcome.node.as_str()), ("node-0", "node-1"));
    assert_eq!(alice.welcome.epoch, bob.welcome.epoch);

    let (msg, status) = alice.send_message("a-1", "bob", json!({"text": "across"})).await;
    assert_eq!(status, AcceptStatus::Routed);
    let got = bob.recv_message().await;
    assert_eq!((got.msg, got.from.as_str(), got.body.to_value()), (msg, "alice", json!({"text": "across"})));
    bob.ack(msg).await;
    expect_receipt(&mut alice, "a-1", msg).await;

    let (reply, _) = bob.send_message("b-1", "alice", json!("back")).await;
    assert_eq!(alice.recv_message().await.msg, reply);

    // A second device of bob's on the other node gets the next message too.
    let mut bob_laptop = Client::connect(&nodes[0].ws_url(), "bob").await;
    let (msg, _) = alice.send_message("a-2", "bob", json!(2)).await;
    assert_eq!(bob.recv_message().await.msg, msg);
    assert_eq!(bob_laptop.recv_message().await.msg, msg);
    bob_laptop.ack(msg).await;
    expect_receipt(&mut alice, "a-2", msg).await;

    let mut carol = Client::connect(&nodes[1].ws_url(), "carol").await;
    assert_eq!(carol.online(&["alice", "bob", "dave"]).await, [true, true, false]);
}

async fn offline_messages_wait_for_any_node(url: &str) {
    let nodes = nodes(url, 2, &[]).await;
    let mut alice = Client::connect(&nodes[0].ws_url(), "alice").await;
    let mut sent = Vec::new();
    for i in 0..3 {
        let (msg, status) = alice.send_message(&format!("a-{i}"), "bob", json!(i)).await;
        assert_eq!(status, AcceptStatus::Stored);
        sent.push(msg);
    }
    let mut bob = Client::connect(&nodes[1].ws_url(), "bob").await;
    for msg in &sent {
        assert_eq!(bob.recv_message().await.msg, *msg);
    }
    bob.ack(sent[0]).await;
    expect_receipt(&mut alice, "a-0", sent[0]).await;
    drop(bob);

    let mut bob = Client::connect(&nodes[0].ws_url(), "bob").await;
    assert_eq!(bob.recv_message().await.msg, sent[1]);
    assert_eq!(bob.recv_message().await.msg, sent[2]);
    bob.send(&ClientFrame::Ping).await;
    assert_eq!(bob.recv().await, ServerFrame::Pong);

    // A resend with the same id, through the other node, is not sent again,
    // and gets the original answer, acked or not.
    let mut alice_again = Client::connect(&nodes[1].ws_url(), "alice").await;
    assert_eq!(alice_again.send_message("a-1", "bob", json!(1)).await, (sent[1], AcceptStatus::Stored));
    assert_eq!(alice_again.send_message("a-0", "bob", json!(0)).await, (sent[0], AcceptStatus::Stored));
}

/// Kills the node of bob's phone while alice keeps sending and bob's
/// laptop, on the other node, acks everything; in durable mode every
/// accepted message reaches the phone, in order and with its seq, when it
/// reconnects elsewhere: the laptop's acks do not count for the phone.
async fn a_killed_node_loses_nothing_accepted(url: &str) {
    let mut nodes = nodes(url, 2, &[]).await;
    let mut alice = Client::connect(&nodes[0].ws_url(), "alice").await;
    let mut laptop = Client::connect_device(&nodes[0].ws_url(), "bob", "laptop").await;
    let mut phone = Client::connect_device(&nodes[1].ws_url(), "bob", "phone").await;
    let mut accepted = Vec::new();
    for i in 0..5 {
        let (msg, status) = alice.send_message(&format!("a-{i}"), "bob", json!(i)).await;
        assert_eq!(status, AcceptStatus::Routed);
        accepted.push(msg);
        assert_eq!(phone.recv_message().await.msg, msg);
    }
    nodes[1].kill().await;
    for i in 5..30 {
        accepted.push(alice.send_message(&format!("a-{i}"), "bob", json!(i)).await.0);
    }
    let mut seqs = Vec::new();
    for msg in &accepted {
        let delivery = laptop.recv_message().await;
        assert_eq!(delivery.msg, *msg);
        seqs.push(delivery.seq.unwrap());
    }
    assert_eq!(seqs, (1..=30).collect::<Vec<u64>>(), "one seq per message, in order");
    laptop.ack_up_to(30).await;

    let mut phone = Client::connect_device(&nodes[0].ws_url(), "bob", "phone").await;
    assert_eq!((phone.welcome.device.as_str(), phone.welcome.seq), ("phone", 30));
    let mut received = Vec::new();
    for _ in 0..accepted.len() {
        let delivery = phone.recv_message().await;
        received.push((delivery.msg, delivery.seq.unwrap()));
    }
    let expected: Vec<(MsgId, u64)> = accepted.into_iter().zip(1..).collect();
    assert_eq!(received, expected, "every accepted message, once each, in order");
}

/// Two nodes, alice on node-0 and bob on node-1. Bob's node is frozen past
/// its TTL and swept while alice sends him a message, then woken: returns
/// once bob has that message, handed over without a reconnect.
async fn bob_back_from_the_dead(redis: &RedisServer) -> (Vec<NodeProcess>, Client, Client) {
    let nodes = nodes(&redis.url(), 2, &[]).await;
    let mut alice = Client::connect(&nodes[0].ws_url(), "alice").await;
    let mut bob = Client::connect(&nodes[1].ws_url(), "bob").await;
    nodes[1].pause().await;
    alice.until_online("bob", false).await;
    let (meanwhile, status) = alice.send_message("m-0", "bob", json!("while you slept")).await;
    assert_eq!(status, AcceptStatus::Stored);
    nodes[1].resume().await;
    assert_eq!(bob.recv_message().await.msg, meanwhile);
    (nodes, alice, bob)
}

/// A node frozen past its TTL is swept; when it wakes it registers its
/// connections again and hands over what was stored for them meanwhile,
/// without the clients reconnecting.
#[tokio::test]
async fn a_node_presumed_dead_comes_back_whole() {
    let redis = RedisServer::start().await;
    let (_nodes, mut alice, mut bob) = bob_back_from_the_dead(&redis).await;
    alice.until_online("bob", true).await;
    let (msg, status) = alice.send_message("m-1", "bob", json!("awake")).await;
    assert_eq!(status, AcceptStatus::Routed);
    assert_eq!(bob.recv_message().await.msg, msg);
}

/// A node that comes back is reached at once, also by a node that still
/// takes it for dead until its own next heartbeat: what that node stores
/// meanwhile is published to it anyway, not left in the inbox.
#[tokio::test]
async fn a_node_back_from_the_dead_gets_what_is_sent_before_others_notice() {
    let redis = RedisServer::start().await;
    // node-1 has registered again and repaired; node-0 may not know yet.
    let (_nodes, mut alice, mut bob) = bob_back_from_the_dead(&redis).await;
    let mut sent = HashSet::new();
    for i in 1..=5 {
        sent.insert(alice.send_message(&format!("m-{i}"), "bob", json!(i)).await.0);
    }
    let mut got = HashSet::new();
    while got.len() < 5 {
        got.insert(bob.recv_message().await.msg);
    }
    assert_eq!(got, sent);
}

/// A crashed node restarted under the same id at once, before any sweep,
/// drops the presence entries of its earlier life.
#[tokio::test]
async fn a_node_restarted_under_its_id_drops_its_old_entries() {
    let redis = RedisServer::start().await;
    let mut nodes = nodes(&redis.url(), 2, &[]).await;
    let mut alice = Client::connect(&nodes[0].ws_url(), "alice").await;
    let _bob = Client::connect(&nodes[1].ws_url(), "bob").await;
    assert_eq!(redis.cli(&["hlen", "sb:u:{bob}:conns"]).await, "1");
    nodes[1].kill().await;
    let url = redis.url();
    let restarted = NodeProcess::start(&["--redis-url", &url, "--node-ttl", "1s", "--node-id", "node-1"]).await;
    eventually("the restarted node to be ready", || async {
        get(restarted.public, "/readyz", &[]).await.status == 200
    })
    .await;
    assert_eq!(redis.cli(&["hlen", "sb:u:{bob}:conns"]).await, "0");
    assert_eq!(alice.online(&["bob"]).await, [false]);
    let (_, status) = alice.send_message("a-1", "bob", json!(1)).await;
    assert_eq!(status, AcceptStatus::Stored);
    drop(restarted);
}

#[tokio::test]
async fn standalone_cross_node_messages_receipts_and_presence() {
    let redis = RedisServer::start().await;
    cross_node_messages_receipts_and_presence(&redis.url()).await;
}

#[tokio::test]
async fn standalone_offline_messages_wait_for_any_node() {
    let redis = RedisServer::start().await;
    offline_messages_wait_for_any_node(&redis.url()).await;
}

#[tokio::test]
async fn standalone_a_killed_node_loses_nothing_accepted() {
    let redis = RedisServer::start().await;
    a_killed_node_loses_nothing_accepted(&redis.url()).await;
}

#[tokio::test]
async fn cluster_cross_node_messages_receipts_and_presence() {
    let redis = RedisCluster::start().await;
    cross_node_messages_receipts_and_presence(&redis.url()).await;
}

#[tokio::test]
async fn cluster_offline_messages_wait_for_any_node() {
    let redis = RedisCluster::start().await;
    offline_messages_wait_for_any_node(&redis.url()).await;
}

#[tokio::test]
async fn cluster_a_killed_node_loses_nothing_accepted() {
    let redis = RedisCluster::start().await;
    a_killed_node_loses_nothing_accepted(&redis.url()).await;
}

#[tokio::test]
async fn fast_mode_stores_what_a_dead_node_cannot_take() {
    let redis = RedisServer::start().await;
    let mut nodes = nodes(&redis.url(), 2, &["--delivery", "fast"]).await;
    let mut alice = Client::connect(&nodes[0].ws_url(), "alice").await;
    let mut bob = Client::connect(&nodes[1].ws_url(), "bob").await;
    let (msg, status) = alice.send_message("a-0", "bob", json!(0)).await;
    assert_eq!(status, AcceptStatus::Routed);
    assert_eq!(bob.recv_message().await.msg, msg);
    // Live delivery in fast mode stores nothing: the acked message is gone.
    bob.ack(msg).await;
    expect_receipt(&mut alice, "a-0", msg).await;

    nodes[1].kill().await;
    // Once Redis has seen its subscriber go (a message published before
    // that was in flight, lost with the node)...
    eventually("node-1's channel to lose its subscriber", || async {
        redis.cli(&["PUBSUB", "SHARDNUMSUB", "sb:n:{node-1}:ch"]).await.lines().nth(1) == Some("0")
    })
    .await;
    // ...what is sent while node-1 still looks alive finds no subscriber on
    // its channel, so it falls back to the log.
    let mut accepted = Vec::new();
    for i in 1..6 {
        accepted.push(alice.send_message(&format!("a-{i}"), "bob", json!(i)).await.0);
    }
    let mut bob = Client::connect(&nodes[0].ws_url(), "bob").await;
    for msg in &accepted {
        assert_eq!(bob.recv_message().await.msg, *msg);
    }
}

#[tokio::test]
async fn redis_restarted_empty_is_repopulated_without_restarting_nodes() {
    let mut redis = RedisServer::start().await;
    let nodes = nodes(&redis.url(), 2, &[]).await;
    let mut alice = Client::connect(&nodes[0].ws_url(), "alice").await;
    let mut bob = Client::connect(&nodes[1].ws_url(), "bob").await;
    let old_epoch = alice.welcome.epoch;

    redis.restart_empty().await;
    // Both nodes register their connections again: presence comes back.
    eventually("presence to be rebuilt", || async {
        redis.cli(&["hlen", "sb:u:{bob}:conns"]).await == "1" && redis.cli(&["hlen", "sb:u:{alice}:conns"]).await == "1"
    })
    .await;
    for node in &nodes {
        eventually("the node to be ready again", || async { get(node.public, "/readyz", &[]).await.status == 200 })
            .await;
    }
    let (msg, status) = alice.send_message("after", "bob", json!("still here")).await;
    assert_eq!(status, AcceptStatus::Routed);
    assert_eq!(bob.recv_message().await.msg, msg);

    // New connections learn that the stored state was lost.
    let carol = Client::connect(&nodes[0].ws_url(), "carol").await;
    assert_ne!(carol.welcome.epoch, old_epoch);
}

#[tokio::test]
async fn redis_down_means_not_ready_and_errors_then_recovery() {
    let mut redis = RedisServer::start().await;
    let nodes = nodes(&redis.url(), 1, &[]).await;
    let mut alice = Client::connect(&nodes[0].ws_url(), "alice").await;

    redis.stop().await;
    eventually("readyz to fail", || async { get(nodes[0].public, "/readyz", &[]).await.status == 503 }).await;
    alice
        .send(&ClientFrame::Send {
            ephemeral: false,
            id: "lost".parse_id(),
            to: To::One(UserId::parse("bob").unwrap()),
            body: Body::from_value(&json!(1)),
        })
        .await;
    match alice.recv().await {
        ServerFrame::Error { id, code, .. } => assert_eq!((id.unwrap().as_str(), code), ("lost", ErrorCode::Internal)),
        other => panic!("expected an internal error, got {other:?}"),
    }

    redis.start_again().await;
    eventually("readyz to recover", || async { get(nodes[0].public, "/readyz", &[]).await.status == 200 }).await;
    let (_, status) = alice.send_message("lost", "bob", json!(1)).await;
    assert_eq!(status, AcceptStatus::Stored);
    assert!(scrape(nodes[0].metrics).await.value("switchboard_redis_errors_total", &[]) >= 1.0);
}

#[tokio::test]
async fn a_node_drains_and_exits_while_redis_is_down() {
    let mut redis = RedisServer::start().await;
    let mut nodes = nodes(&redis.url(), 1, &["--shutdown-grace", "1s"]).await;
    let mut alice = Client::connect(&nodes[0].ws_url(), "alice").await;
    redis.stop().await;
    nodes[0].terminate().await;
    let (close, _) = alice.recv_close().await;
    assert_eq!(close.map(|c| c.0), Some(1012));
    let _ = alice.flush().await;
    assert_eq!(nodes[0].wait().await, Some(0));
}

trait ParseId {
    fn parse_id(self) -> switchboard_protocol::ClientMsgId;
}

impl ParseId for &str {
    fn parse_id(self) -> switchboard_protocol::ClientMsgId {
        switchboard_protocol::ClientMsgId::parse(self).unwrap()
    }
}

fn letter(i: u64) -> Arc<Letter> {
    let from = UserId::parse("burst").unwrap();
    let ts = switchboard_testkit::now_secs() * 1000;
    let body = Body::from_value(&json!(i));
    Arc::new(Letter { msg: MsgId::new(), from, body, ts, reply: None, received_us: 0, ephemeral: false })
}

fn deliver(to: &str, letter: &Arc<Letter>) -> Item {
    Item::Deliver { letter: letter.clone(), to: vec![Addressee { user: UserId::parse(to).unwrap(), seq: None }] }
}

fn spublish(channel: &str, envelope: &Envelope) -> Vec<Vec<u8>> {
    vec![b"SPUBLISH".to_vec(), channel.as_bytes().to_vec(), envelope.encode().unwrap()]
}

#[tokio::test]
async fn a_burst_of_100_000_envelopes_arrives_whole() {
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis.url(), 1, &["--send-queue-bytes", "268435456"]).await;
    let mut bob = Client::connect(&nodes[0].ws_url(), "bob").await;
    let stream = uuid::Uuid::now_v7();
    let mut expected = Vec::new();
    let commands: Vec<_> = (1..=100_000u64)
        .map(|seq| {
            let letter = letter(seq);
            expected.push(letter.msg);
            let envelope = Envelope { node: "burst".to_owned(), stream, seq, items: vec![deliver("bob", &letter)] };
            spublish("sb:n:{node-0}:ch", &envelope)
        })
        .collect();
    let receivers = redis.pipeline(commands).await;
    assert!(receivers.iter().all(|n| *n == 1), "every publish reached the node");

    let received = within("100,000 messages", async {
        let mut received = Vec::with_capacity(expected.len());
        while received.len() < expected.len() {
            received.push(bob.recv_message().await.msg);
        }
        received
    })
    .await;
    assert_eq!(received, expected);
    assert_eq!(scrape(nodes[0].metrics).await.value("switchboard_route_gaps_total", &[]), 0.0);
}

#[tokio::test]
async fn a_letter_for_a_user_gone_from_the_node_is_stored_unless_it_is_ephemeral() {
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis.url(), 1, &["--delivery", "fast"]).await;
    // Sent by a node whose replica still placed bob on node-0: one fast
    // live-only letter, one ephemeral.
    let (fast, ephemeral) = (letter(1), Arc::new(Letter { ephemeral: true, ..(*letter(2)).clone() }));
    let envelope = Envelope {
        node: "other".to_owned(),
        stream: uuid::Uuid::now_v7(),
        seq: 1,
        items: vec![deliver("bob", &ephemeral), deliver("bob", &fast)],
    };
    redis.pipeline(vec![spublish("sb:n:{node-0}:ch", &envelope)]).await;
    eventually("the fast letter to be stored", || async { redis.cli(&["XLEN", "sb:u:{bob}:log"]).await == "1" }).await;

    let mut bob = Client::connect(&nodes[0].ws_url(), "bob").await;
    let replayed = bob.recv_message().await;
    assert_eq!((replayed.msg, replayed.seq), (fast.msg, Some(1)));
    bob.send(&ClientFrame::Ping).await;
    assert_eq!(bob.recv().await, ServerFrame::Pong, "the ephemeral letter is never replayed");
}

#[tokio::test]
async fn a_sequence_gap_is_counted_and_repaired_from_the_log() {
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis.url(), 1, &[]).await;
    let mut bob = Client::connect(&nodes[0].ws_url(), "bob").await;

    // A message is in bob's log, and its envelope is "lost": the
    // publisher's next envelopes skip a sequence number.
    let (lost, first, third) = (letter(7), letter(1), letter(3));
    let stored =
        vec![b"XADD".to_vec(), b"sb:u:{bob}:log".to_vec(), b"0-1".to_vec(), b"m".to_vec(), lost.encode().unwrap()];
    let stream = uuid::Uuid::now_v7();
    let envelope = |seq, item| Envelope { node: "other".to_owned(), stream, seq, items: vec![item] };
    redis
        .pipeline(vec![
            stored,
            spublish("sb:n:{node-0}:ch", &envelope(1, deliver("bob", &first))),
            spublish("sb:n:{node-0}:ch", &envelope(3, deliver("bob", &third))),
        ])
        .await;

    let mut got = HashMap::new();
    for _ in 0..3 {
        let message = bob.recv_message().await;
        got.insert(message.msg, message.seq);
    }
    assert_eq!(got, HashMap::from([(first.msg, None), (third.msg, None), (lost.msg, Some(1))]));
    assert_eq!(scrape(nodes[0].metrics).await.value("switchboard_route_gaps_total", &[]), 1.0);
}
