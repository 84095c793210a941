//! Nodes that find their Redis through Redis Sentinel: a real master and a
//! real sentinel, the nodes given only the sentinel's address and the
//! service name. Message ids are checked exactly.

#![allow(clippy::unwrap_used)]

use serde_json::json;
use switchboard_protocol::{AcceptStatus, ServerFrame};
use switchboard_testkit::{Client, NodeProcess, RedisSentinel, SENTINEL_SERVICE, eventually, get};

/// Starts `count` nodes on `url` with a short node TTL, and waits until
/// each is ready.
async fn nodes(url: &str, count: usize) -> Vec<NodeProcess> {
    let mut nodes = Vec::new();
    for i in 0..count {
        let id = format!("node-{i}");
        nodes.push(NodeProcess::start(&["--redis-url", url, "--node-ttl", "1s", "--node-id", &id]).await);
    }
    for node in &nodes {
        eventually("the node to be ready", || async { get(node.public, "/readyz", &[]).await.status == 200 }).await;
    }
    nodes
}

#[tokio::test]
async fn sentinel_harness_names_its_master() {
    let redis = RedisSentinel::start().await;
    let port = redis.sentinel_port();
    assert_ne!(port, redis.master().port());
    assert_eq!(redis.url(), format!("redis-sentinel://127.0.0.1:{port}?sentinelServiceName={SENTINEL_SERVICE}"));
    assert_eq!(redis.master_port_by_sentinel().await, Some(redis.master().port()));
    assert_eq!(redis.master().cli(&["role"]).await.lines().next(), Some("master"));
}

#[tokio::test]
async fn cross_node_message_and_receipt_through_sentinel() {
    let redis = RedisSentinel::start().await;
    let nodes = nodes(&redis.url(), 2).await;
    let mut alice = Client::connect(&nodes[0].ws_url(), "alice").await;
    let mut bob = Client::connect(&nodes[1].ws_url(), "bob").await;
    assert_eq!((alice.welcome.node.as_str(), bob.welcome.node.as_str()), ("node-0", "node-1"));
    assert_eq!(alice.welcome.epoch, bob.welcome.epoch);

    // The nodes registered on the master the sentinel names.
    assert_eq!(redis.master().cli(&["exists", "sb:u:{bob}:conns"]).await, "1");
    assert_eq!(redis.master().cli(&["hlen", "sb:u:{bob}:conns"]).await, "1");

    let (msg, status) = alice.send_message("a-1", "bob", json!({"text": "via sentinel"})).await;
    assert_eq!(status, AcceptStatus::Routed);
    let got = bob.recv_message().await;
    assert_eq!((got.msg, got.from.as_str(), got.body.to_value()), (msg, "alice", json!({"text": "via sentinel"})));
    bob.ack(msg).await;
    match alice.recv().await {
        ServerFrame::Receipt(receipt) => assert_eq!((receipt.id.as_str(), receipt.msg), ("a-1", msg)),
        other => panic!("expected a receipt for a-1, got {other:?}"),
    }
}

#[tokio::test]
async fn sentinel_harness_fails_over_on_request() {
    let mut redis = RedisSentinel::start_with_replica().await;
    let (old, new) = (redis.master().port(), redis.replicas().next().unwrap().port());
    assert_eq!(redis.master().cli(&["set", "k", "v"]).await, "OK");
    redis.failover().await;
    assert_eq!(redis.master().port(), new);
    assert_eq!(redis.master_port_by_sentinel().await, Some(new));
    assert_eq!(redis.master().cli(&["get", "k"]).await, "v");
    assert_eq!(redis.replicas().next().unwrap().port(), old);
}

#[tokio::test]
async fn nodes_follow_the_sentinel_to_the_promoted_replica() {
    let mut redis = RedisSentinel::start_with_replica().await;
    let nodes = nodes(&redis.url(), 2).await;
    let mut alice = Client::connect(&nodes[0].ws_url(), "alice").await;
    let mut bob = Client::connect(&nodes[1].ws_url(), "bob").await;
    let epoch = alice.welcome.epoch;
    let (msg, status) = alice.send_message("a-1", "bob", json!(1)).await;
    assert_eq!(status, AcceptStatus::Routed);
    assert_eq!(bob.recv_message().await.msg, msg);

    redis.kill_master_and_fail_over().await;
    let new_master = redis.master();
    // Each node subscribes to its channel again, on the new master.
    for node in ["node-0", "node-1"] {
        let channel = format!("sb:n:{{{node}}}:ch");
        eventually("the node to subscribe on the new master", || async {
            new_master.cli(&["pubsub", "shardnumsub", &channel]).await.lines().nth(1) == Some("1")
        })
        .await;
    }
    for node in &nodes {
        eventually("the node to be ready again", || async { get(node.public, "/readyz", &[]).await.status == 200 })
            .await;
    }
    // Presence is on the new master: replicated, or registered again by
    // nodes that were presumed dead during the outage.
    eventually("presence on the new master", || async {
        new_master.cli(&["hlen", "sb:u:{bob}:conns"]).await == "1"
            && new_master.cli(&["hlen", "sb:u:{alice}:conns"]).await == "1"
    })
    .await;

    let (msg, status) = alice.send_message("a-2", "bob", json!(2)).await;
    assert_eq!(status, AcceptStatus::Routed);
    assert_eq!(bob.recv_message().await.msg, msg);
    bob.ack(msg).await;
    match alice.recv().await {
        ServerFrame::Receipt(receipt) => assert_eq!((receipt.id.as_str(), receipt.msg), ("a-2", msg)),
        other => panic!("expected a receipt for a-2, got {other:?}"),
    }
    // The replica had everything: the stored state, epoch included, survived.
    let carol = Client::connect(&nodes[1].ws_url(), "carol").await;
    assert_eq!(carol.welcome.epoch, epoch);
}
