//! The Redis harness itself: real servers on free ports, restarted empty,
//! and a three-master cluster that routes keys across its nodes.

#![allow(clippy::unwrap_used)]

use switchboard_testkit::{RedisCluster, RedisServer};

#[tokio::test]
async fn standalone_server_keeps_data_until_restarted_empty() {
    let mut redis = RedisServer::start().await;
    assert_ne!(redis.port(), 6379);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));

    assert_eq!(redis.cli(&["set", "k", "v"]).await, "OK");
    assert_eq!(redis.cli(&["get", "k"]).await, "v");

    let port = redis.port();
    redis.restart_empty().await;
    assert_eq!(redis.port(), port, "restart keeps the port");
    assert_eq!(redis.cli(&["exists", "k"]).await, "0");
    assert_eq!(redis.cli(&["get", "k"]).await, "");
    assert_eq!(redis.cli(&["ping"]).await, "PONG");

    redis.stop().await;
    assert_ne!(redis.cli(&["ping"]).await, "PONG", "stopped server still answers");
    redis.start_again().await;
    assert_eq!(redis.cli(&["ping"]).await, "PONG");
}

#[tokio::test]
async fn cluster_routes_keys_across_three_masters() {
    let cluster = RedisCluster::start().await;
    let ports = cluster.ports();
    assert_eq!(ports.len(), 3);
    assert_eq!(
        cluster.url(),
        format!("redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}", ports[0], ports[1], ports[2])
    );

    let info = cluster.cli(0, &["cluster", "info"]).await;
    assert!(info.lines().any(|l| l.trim() == "cluster_size:3"), "{info}");
    assert!(info.lines().any(|l| l.trim() == "cluster_state:ok"), "{info}");

    assert_eq!(cluster.cli(0, &["-c", "set", "{a}x", "1"]).await, "OK");
    for node in 0..3 {
        assert_eq!(cluster.cli(node, &["-c", "get", "{a}x"]).await, "1", "via node {node}");
    }

    // {a}, {b} and {c} hash to slots owned by three different masters.
    for tag in ["b", "c"] {
        let key = format!("{{{tag}}}x");
        assert_eq!(cluster.cli(0, &["-c", "set", &key, tag]).await, "OK");
        for node in 0..3 {
            assert_eq!(cluster.cli(node, &["-c", "get", &key]).await, tag, "{key} via node {node}");
        }
    }
    for node in 0..3 {
        assert_eq!(cluster.cli(node, &["dbsize"]).await, "1", "keys on node {node}");
    }
}
