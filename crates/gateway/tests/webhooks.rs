//! Events for the application backend (contract section 11), end to end:
//! real nodes, a real Redis (standalone and Cluster) or none, and a real
//! HTTP receiver that checks every signature. Events are checked exactly,
//! per user and in order.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_protocol::AcceptStatus;
use switchboard_testkit::{Client, NodeProcess, RedisCluster, RedisServer, WebhookReceiver, eventually, get, scrape};

const NODE_TTL: Duration = Duration::from_secs(2);

/// Starts `count` nodes on `url` that send their events to `receiver`.
async fn nodes(url: &str, first: usize, count: usize, receiver: &WebhookReceiver, extra: &[&str]) -> Vec<NodeProcess> {
    let mut nodes = Vec::new();
    for i in first..first + count {
        let id = format!("node-{i}");
        let mut args: Vec<String> =
            ["--redis-url", url, "--node-ttl", "2s", "--node-id", &id].iter().map(|s| (*s).to_owned()).collect();
        args.extend(receiver.args());
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        nodes.push(NodeProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await);
    }
    for node in &nodes {
        eventually("the node to be ready", || async { get(node.public, "/readyz", &[]).await.status == 200 }).await;
    }
    nodes
}

/// The events about `user`, each once (receivers dedupe by id), in
/// arrival order.
fn about<'a>(events: &'a [Value], user: &str) -> Vec<&'a Value> {
    let mut seen = HashSet::new();
    events
        .iter()
        .filter(|event| event.get("user").or_else(|| event.get("to")) == Some(&json!(user)))
        .filter(|event| seen.insert(event["id"].as_str().unwrap().to_owned()))
        .collect()
}

fn kinds(events: &[Value], user: &str) -> Vec<String> {
    about(events, user).iter().map(|event| event["type"].as_str().unwrap().to_owned()).collect()
}

fn assert_event(event: &Value, kind: &str, fields: &[(&str, Value)]) {
    assert_eq!(event["type"], json!(kind), "{event}");
    let id = uuid::Uuid::parse_str(event["id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7, "{event}");
    assert!(event["ts"].as_u64().unwrap() > 1_700_000_000_000, "{event}");
    for (name, value) in fields {
        assert_eq!(&event[*name], value, "{name} of {event}");
    }
}

async fn one_online_and_one_offline_across_nodes(url: &str) {
    let receiver = WebhookReceiver::start().await;
    let nodes = nodes(url, 0, 2, &receiver, &[]).await;
    let phone = Client::connect(&nodes[0].ws_url(), "bob").await;
    let events = receiver.wait_for("bob online", |events| !kinds(events, "bob").is_empty()).await;
    assert_event(about(&events, "bob")[0], "user.online", &[("user", json!("bob")), ("node", json!("node-0"))]);
    let laptop = Client::connect(&nodes[1].ws_url(), "bob").await;
    drop(phone);
    let mut watcher = Client::connect(&nodes[1].ws_url(), "watcher").await;
    watcher.until_online("bob", true).await;
    drop(laptop);
    let events = receiver.wait_for("bob offline", |events| kinds(events, "bob").len() >= 2).await;
    // A second online, had there been one, would have come before this.
    assert_eq!(kinds(&events, "bob"), ["user.online", "user.offline"]);
    assert_event(about(&events, "bob")[1], "user.offline", &[("user", json!("bob")), ("node", json!("node-1"))]);
    assert_eq!(receiver.forged(), 0);
}

#[tokio::test]
async fn standalone_a_user_on_two_nodes_is_online_once_and_offline_once() {
    let redis = RedisServer::start().await;
    one_online_and_one_offline_across_nodes(&redis.url()).await;
}

#[tokio::test]
async fn cluster_a_user_on_two_nodes_is_online_once_and_offline_once() {
    let cluster = RedisCluster::start().await;
    one_online_and_one_offline_across_nodes(&cluster.url()).await;
}

#[tokio::test]
async fn a_killed_nodes_user_goes_offline_within_two_node_ttls() {
    let redis = RedisServer::start().await;
    let receiver = WebhookReceiver::start().await;
    let mut nodes = nodes(&redis.url(), 0, 2, &receiver, &[]).await;
    let _bob = Client::connect(&nodes[0].ws_url(), "bob").await;
    receiver.wait_for("bob online", |events| kinds(events, "bob") == ["user.online"]).await;
    nodes[0].kill().await;
    let killed = Instant::now();
    let events = receiver.wait_for("bob offline", |events| kinds(events, "bob").len() >= 2).await;
    let took = killed.elapsed();
    assert!(took < NODE_TTL * 2 + Duration::from_secs(3), "user.offline {took:?} after the kill");
    assert_eq!(kinds(&events, "bob"), ["user.online", "user.offline"]);
    assert_event(about(&events, "bob")[1], "user.offline", &[("user", json!("bob")), ("node", json!("node-0"))]);
}

async fn stored_events_for_offline_recipients(url: &str, extra: &[&str]) {
    let receiver = WebhookReceiver::start().await;
    let nodes = nodes(url, 0, 2, &receiver, extra).await;
    let mut alice = Client::connect(&nodes[0].ws_url(), "alice").await;
    let mut dave = Client::connect(&nodes[1].ws_url(), "dave").await;
    let (live, status) = alice.send_message("a-1", "dave", json!("live")).await;
    assert_eq!(status, AcceptStatus::Routed);
    let got = dave.recv_message().await;
    assert_eq!(got.msg, live);
    drop(dave);
    alice.until_online("dave", false).await;
    let (stored, status) = alice.send_message("a-2", "dave", json!({"text": "later"})).await;
    // In fast mode the sender's node may not have heard yet that dave left
    // and route it to dave's old node, which logs it.
    if !extra.contains(&"fast") {
        assert_eq!(status, AcceptStatus::Stored);
    }
    let (never, _) = alice.send_message("a-3", "carol", json!(3)).await;

    let events = receiver
        .wait_for("the stored events", |events| kinds(events, "dave").len() >= 3 && kinds(events, "carol").len() == 1)
        .await;
    assert_eq!(kinds(&events, "dave"), ["user.online", "user.offline", "message.stored"]);
    // The live message is logged in durable mode; in fast mode only when
    // the sender's node did not yet know where dave was.
    let seq = got.seq.map_or(1, |seq| seq + 1);
    let fields =
        [("msg", json!(stored.to_string())), ("from", json!("alice")), ("to", json!("dave")), ("seq", json!(seq))];
    assert_event(about(&events, "dave")[2], "message.stored", &fields);
    assert!(about(&events, "dave")[2].get("body").is_none());
    let fields =
        [("msg", json!(never.to_string())), ("from", json!("alice")), ("to", json!("carol")), ("seq", json!(1))];
    assert_event(about(&events, "carol")[0], "message.stored", &fields);
    assert_eq!(receiver.forged(), 0);
}

#[tokio::test]
async fn durable_a_message_to_an_offline_user_is_a_stored_event() {
    let redis = RedisServer::start().await;
    stored_events_for_offline_recipients(&redis.url(), &[]).await;
}

#[tokio::test]
async fn fast_a_message_to_an_offline_user_is_a_stored_event() {
    let redis = RedisServer::start().await;
    stored_events_for_offline_recipients(&redis.url(), &["--delivery", "fast"]).await;
}

#[tokio::test]
async fn cluster_a_message_to_an_offline_user_is_a_stored_event() {
    let cluster = RedisCluster::start().await;
    stored_events_for_offline_recipients(&cluster.url(), &[]).await;
}

/// Each of `users` comes online on a node, leaves, and gets a message
/// while offline, `rounds` times; the expected events of each, in order.
async fn churn(nodes: &[NodeProcess], sender: &mut Client, users: &[String], rounds: usize) {
    for round in 0..rounds {
        for (i, user) in users.iter().enumerate() {
            let client = Client::connect(&nodes[(i + round) % nodes.len()].ws_url(), user).await;
            sender.until_online(user, true).await;
            drop(client);
            sender.until_online(user, false).await;
            let (_, status) = sender.send_message(&format!("{user}-{round}"), user, json!(round)).await;
            assert_eq!(status, AcceptStatus::Stored);
        }
    }
}

fn assert_churned(events: &[Value], users: &[String], rounds: usize) {
    for user in users {
        let expected: Vec<&str> = (0..rounds).flat_map(|_| ["user.online", "user.offline", "message.stored"]).collect();
        assert_eq!(kinds(events, user), expected, "{user}");
        let seqs: Vec<u64> = about(events, user)
            .iter()
            .filter(|event| event["type"] == "message.stored")
            .map(|event| event["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=rounds as u64).collect::<Vec<_>>(), "{user}");
    }
}

#[tokio::test]
async fn a_failing_receiver_gets_every_event_in_order_once_it_recovers() {
    let redis = RedisServer::start().await;
    let receiver = WebhookReceiver::start().await;
    receiver.fail_for(Duration::from_secs(5));
    let nodes = nodes(&redis.url(), 0, 2, &receiver, &[]).await;
    let mut sender = Client::connect(&nodes[0].ws_url(), "sender").await;
    let users: Vec<String> = (0..4).map(|i| format!("u{i}")).collect();
    churn(&nodes, &mut sender, &users, 3).await;
    let events =
        receiver.wait_for("every event", |events| users.iter().all(|user| about(events, user).len() == 9)).await;
    assert_churned(&events, &users, 3);
    let mut failed = 0.0;
    for node in &nodes {
        let metrics = scrape(node.metrics).await;
        for kind in ["user.online", "user.offline", "message.stored"] {
            failed += metrics.value("switchboard_webhook_events_total", &[("type", kind), ("outcome", "failed")]);
        }
    }
    assert!(failed > 0.0, "the receiver failed some attempts");
    assert_eq!(receiver.forged(), 0);
}

#[tokio::test]
async fn a_dead_nodes_queued_events_are_delivered_by_another() {
    let redis = RedisServer::start().await;
    let receiver = WebhookReceiver::start().await;
    receiver.fail();
    let mut first = nodes(&redis.url(), 0, 1, &receiver, &[]).await;
    let mut sender = Client::connect(&first[0].ws_url(), "sender").await;
    let users: Vec<String> = (0..3).map(|i| format!("u{i}")).collect();
    churn(&first, &mut sender, &users, 2).await;
    // The only node has taken them and keeps failing.
    receiver.wait_for_requests(users.len()).await;

    let second = nodes(&redis.url(), 1, 1, &receiver, &[]).await;
    first[0].kill().await;
    drop(sender);
    receiver.succeed();
    let events = receiver
        .wait_for("every event, from the other node", |events| {
            users.iter().all(|user| about(events, user).len() == 6) && about(events, "sender").len() == 2
        })
        .await;
    assert_churned(&events, &users, 2);
    assert_eq!(kinds(&events, "sender"), ["user.online", "user.offline"]);
    assert_eq!(about(&events, "sender")[1]["node"], json!("node-0"));
    let metrics = scrape(second[0].metrics).await;
    let delivered =
        metrics.value("switchboard_webhook_events_total", &[("type", "user.online"), ("outcome", "delivered")]);
    assert_eq!(delivered, 7.0, "every user.online came through node-1");
}

#[tokio::test]
async fn single_node_mode_sends_the_same_events() {
    let receiver = WebhookReceiver::start().await;
    let mut args = receiver.args();
    args.extend(["--delivery", "fast", "--webhook-bodies"].map(str::to_owned));
    let node = NodeProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let phone = Client::connect(&node.ws_url(), "bob").await;
    let laptop = Client::connect(&node.ws_url(), "bob").await;
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    let (msg, status) = alice.send_message("a-1", "carol", json!({"text": "hi"})).await;
    assert_eq!(status, AcceptStatus::Stored);
    let (_, status) = alice.send_message("a-2", "bob", json!("live")).await;
    assert_eq!(status, AcceptStatus::Routed);
    drop(phone);
    drop(laptop);
    let events = receiver
        .wait_for("bob offline and carol's message", |events| {
            kinds(events, "bob").len() >= 2 && !kinds(events, "carol").is_empty()
        })
        .await;
    assert_eq!(kinds(&events, "bob"), ["user.online", "user.offline"]);
    let node_id = about(&events, "bob")[0]["node"].clone();
    assert!(node_id.is_string());
    assert_eq!(kinds(&events, "carol"), ["message.stored"]);
    let fields = [
        ("msg", json!(msg.to_string())),
        ("from", json!("alice")),
        ("to", json!("carol")),
        ("seq", json!(1)),
        ("body", json!({"text": "hi"})),
    ];
    assert_event(about(&events, "carol")[0], "message.stored", &fields);
    assert_eq!(receiver.forged(), 0);
}

#[tokio::test]
async fn an_event_past_max_age_is_dropped_and_counted() {
    let receiver = WebhookReceiver::start().await;
    receiver.fail();
    let mut args = receiver.args();
    args.extend(["--webhook-max-age", "1s"].map(str::to_owned));
    let node = NodeProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let bob = Client::connect(&node.ws_url(), "bob").await;
    let expired = |metrics: &switchboard_testkit::Scrape| {
        metrics.value("switchboard_webhook_events_total", &[("type", "user.online"), ("outcome", "expired")])
    };
    eventually("user.online to expire", || async { expired(&scrape(node.metrics).await) == 1.0 }).await;
    // Dropped: the next event of bob's comes through once the receiver is back.
    receiver.succeed();
    drop(bob);
    let events = receiver.wait_for("bob offline", |events| !kinds(events, "bob").is_empty()).await;
    assert_eq!(kinds(&events, "bob"), ["user.offline"]);
    let metrics = scrape(node.metrics).await;
    assert_eq!(expired(&metrics), 1.0);
    assert!(
        metrics.value("switchboard_webhook_events_total", &[("type", "user.online"), ("outcome", "failed")]) >= 1.0
    );
    eventually("the queue depth to read 0", || async {
        scrape(node.metrics).await.value("switchboard_webhook_queue_depth", &[]) == 0.0
    })
    .await;
}
