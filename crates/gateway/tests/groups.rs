//! Sending to many users, and ephemeral sends (contract section 9): one
//! node without Redis, and three nodes over Redis.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::json;
use switchboard_protocol::{AcceptStatus, ClientFrame, ErrorCode, MsgId, ServerFrame};
use switchboard_testkit::{Client, NodeProcess, RedisServer, eventually, get, post_json, scrape, within};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "groups-test-key";

async fn redis_nodes(redis: &RedisServer, count: usize, extra: &[&str]) -> Vec<NodeProcess> {
    let url = redis.url();
    let mut nodes = Vec::new();
    for i in 0..count {
        let id = format!("node-{i}");
        let mut args = vec!["--redis-url", url.as_str(), "--node-id", &id, "--api-key", KEY];
        args.extend_from_slice(extra);
        nodes.push(NodeProcess::start(&args).await);
    }
    for node in &nodes {
        eventually("the node to be ready", || async { get(node.public, "/readyz", &[]).await.status == 200 }).await;
    }
    nodes
}

fn envelopes_out(scrape: &switchboard_testkit::Scrape) -> f64 {
    scrape.value("switchboard_envelopes_total", &[("direction", "out")])
}

/// `users` online, spread over `nodes`, `offline` more not connected; one
/// send from alice to all of them.
async fn one_send_to_many(nodes: &[NodeProcess], online: usize, offline: usize) {
    let users: Vec<String> = (0..online + offline).map(|i| format!("u{i}")).collect();
    let mut clients = Vec::new();
    for (i, user) in users[..online].iter().enumerate() {
        clients.push(Client::connect(&nodes[i % nodes.len()].ws_url(), user).await);
    }
    let mut alice = Client::connect(&nodes[0].ws_url(), "alice").await;
    // Every node knows where every user is.
    for node in nodes.iter().filter(|_| nodes.len() > 1) {
        eventually("presence on every node", || async {
            let auth = format!("Bearer {KEY}");
            let last = &users[online - 1];
            get(node.public, &format!("/v1/presence/{last}"), &[("authorization", &auth)]).await.json()["online"]
                == true
        })
        .await;
    }
    let before = scrape(nodes[0].metrics).await;
    let to: Vec<&str> = users.iter().map(String::as_str).collect();
    let (msg, status, recipients) = alice.send_to_many("g-1", &to, json!({"text": "all"})).await;
    assert_eq!(status, AcceptStatus::Routed);
    let expected: BTreeMap<String, AcceptStatus> = users
        .iter()
        .enumerate()
        .map(|(i, user)| (user.clone(), if i < online { AcceptStatus::Routed } else { AcceptStatus::Stored }))
        .collect();
    assert_eq!(recipients, expected);

    // Every online recipient gets it once, as its own, with its own seq.
    for (client, user) in clients.iter_mut().zip(&users) {
        let got = client.recv_message().await;
        assert_eq!(
            (got.msg, got.to.as_str(), got.seq, got.body.to_value()),
            (msg, user.as_str(), Some(1), json!({"text": "all"}))
        );
    }
    if nodes.len() > 1 {
        // One envelope to each other node, whatever the number of its recipients.
        let after = scrape(nodes[0].metrics).await;
        assert_eq!(envelopes_out(&after) - envelopes_out(&before), (nodes.len() - 1) as f64);
    }
    // The offline ones have it in their logs.
    for user in &users[online..] {
        let mut late = Client::connect(&nodes[nodes.len() - 1].ws_url(), user).await;
        let got = late.recv_message().await;
        assert_eq!((got.msg, got.to.as_str(), got.seq), (msg, user.as_str(), Some(1)));
        clients.push(late);
    }
    // A receipt per recipient, naming it.
    for client in &mut clients {
        client.ack_up_to(1).await;
    }
    a_receipt_per_recipient(&mut alice, "g-1", msg, &users).await;
    resent_to_nobody(&mut alice, "g-1", &users, msg, &mut clients).await;
}

/// `alice` gets one receipt of `msg` (sent as `id`) naming each of `users`.
async fn a_receipt_per_recipient(alice: &mut Client, id: &str, msg: MsgId, users: &[String]) {
    let mut receipted = HashSet::new();
    for _ in 0..users.len() {
        match alice.recv().await {
            ServerFrame::Receipt(receipt) => {
                assert_eq!((receipt.id.as_str(), receipt.msg), (id, msg));
                assert!(receipted.insert(receipt.user.clone().unwrap().as_str().to_owned()));
            }
            other => panic!("expected a receipt, got {other:?}"),
        }
    }
    assert_eq!(receipted, users.iter().cloned().collect::<HashSet<_>>());
}

/// Resent with the same id: the original answer, sent to none of the
/// recipients' `clients` again.
async fn resent_to_nobody(alice: &mut Client, id: &str, users: &[String], msg: MsgId, clients: &mut [Client]) {
    let to: Vec<&str> = users.iter().map(String::as_str).collect();
    let again = alice.send_to_many(id, &to, json!("again")).await;
    assert_eq!((again.0, again.2.len()), (msg, users.len()));
    for client in clients {
        client.send(&ClientFrame::Ping).await;
        assert_eq!(client.recv().await, ServerFrame::Pong);
    }
}

#[tokio::test]
async fn a_send_to_200_users_over_three_nodes_is_one_envelope_per_node() {
    let redis = RedisServer::start().await;
    let nodes = redis_nodes(&redis, 3, &["--max-recipients", "200"]).await;
    one_send_to_many(&nodes, 150, 50).await;
}

/// In fast mode, the dedupe records of a send to 100 live users are one
/// script call, not a command each; each recipient's ack still sends its
/// receipt once.
#[tokio::test]
async fn a_fast_send_to_100_live_users_is_one_script_call() {
    let redis = RedisServer::start().await;
    let nodes = redis_nodes(&redis, 2, &["--delivery", "fast"]).await;
    let users: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
    let mut clients = Vec::new();
    for (i, user) in users.iter().enumerate() {
        clients.push(Client::connect(&nodes[i % 2].ws_url(), user).await);
    }
    let mut alice = Client::connect(&nodes[0].ws_url(), "alice").await;
    let (sets, scripts) = (redis.command_calls("set").await, redis.command_calls("evalsha").await);
    let to: Vec<&str> = users.iter().map(String::as_str).collect();
    let (msg, status, recipients) = alice.send_to_many("f-1", &to, json!("hi")).await;
    // One script call for the window (two if the window closed while the
    // send was taken), running the hundred records' `SET`s (commandstats
    // counts a script's commands too).
    let scripts = redis.command_calls("evalsha").await - scripts;
    let sets = redis.command_calls("set").await - sets;
    assert!((1..=2).contains(&scripts) && sets >= 100, "{scripts} script calls, {sets} SET calls");
    assert_eq!((status, recipients.len()), (AcceptStatus::Routed, 100));
    assert!(recipients.values().all(|status| *status == AcceptStatus::Routed), "{recipients:?}");
    for (client, user) in clients.iter_mut().zip(&users) {
        let got = client.recv_message().await;
        assert_eq!((got.msg, got.to.as_str(), got.seq), (msg, user.as_str(), None));
        client.ack(got.msg).await;
    }
    a_receipt_per_recipient(&mut alice, "f-1", msg, &users).await;
    resent_to_nobody(&mut alice, "f-1", &users, msg, &mut clients).await;
}

#[tokio::test]
async fn memory_a_send_to_many_users() {
    let node = NodeProcess::start(&["--max-recipients", "200"]).await;
    one_send_to_many(std::slice::from_ref(&node), 150, 50).await;
}

#[tokio::test]
async fn an_invalid_or_repeated_recipient_or_too_many_refuse_the_whole_send() {
    let node = NodeProcess::start(&["--max-recipients", "3"]).await;
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    let mut bob = Client::connect(&node.ws_url(), "bob").await;
    let cases = [
        (json!(["bob", "bad user"]), ErrorCode::InvalidRecipient, "recipient \"bad user\": may only contain"),
        (json!(["bob", "bob"]), ErrorCode::InvalidRecipient, "recipient \"bob\" is listed twice"),
        (json!([]), ErrorCode::InvalidRecipient, "`to` lists no recipient"),
        (json!(["bob", "c", "d", "e"]), ErrorCode::TooLarge, "at most 3 recipients per send"),
    ];
    for (i, (to, code, message)) in cases.into_iter().enumerate() {
        let id = format!("x-{i}");
        alice.send_raw(Message::text(json!({"type":"send","id":id,"to":to,"body":1}).to_string())).await;
        match alice.recv().await {
            ServerFrame::Error { id: Some(got), code: got_code, message: got_message } => {
                assert_eq!((got.as_str(), got_code), (id.as_str(), code));
                assert!(got_message.starts_with(message), "{got_message}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
    // Bob got none of them.
    bob.send(&ClientFrame::Ping).await;
    assert_eq!(bob.recv().await, ServerFrame::Pong);
}

/// Ephemeral: to whoever is online now; no log, no receipt.
async fn ephemeral_sends(nodes: &[NodeProcess]) {
    let mut alice = Client::connect(&nodes[0].ws_url(), "alice").await;
    assert_eq!(alice.send_ephemeral("t-1", "bob", json!("typing")).await, AcceptStatus::Offline);
    let mut bob = Client::connect(&nodes[nodes.len() - 1].ws_url(), "bob").await;
    // Nothing was kept for bob.
    bob.send(&ClientFrame::Ping).await;
    assert_eq!(bob.recv().await, ServerFrame::Pong);
    // Until alice's node has heard that bob is online.
    within("an ephemeral send to reach bob", async {
        while alice.send_ephemeral(&format!("t-{}", MsgId::new()), "bob", json!("typing")).await != AcceptStatus::Routed
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let got = bob.recv_message().await;
    assert_eq!((got.seq, got.body.to_value()), (None, json!("typing")));
    bob.ack(got.msg).await;
    // No receipt for it, and nothing in bob's log.
    alice.send(&ClientFrame::Ping).await;
    assert_eq!(alice.recv().await, ServerFrame::Pong);
    drop(bob);
    let mut bob = Client::connect(&nodes[0].ws_url(), "bob").await;
    assert_eq!(bob.welcome.seq, 0);
    bob.send(&ClientFrame::Ping).await;
    assert_eq!(bob.recv().await, ServerFrame::Pong);
    let metrics = scrape(nodes[0].metrics).await;
    assert_eq!(metrics.value("switchboard_messages_total", &[("direction", "in"), ("outcome", "stored")]), 0.0);
    assert!(metrics.value("switchboard_messages_total", &[("direction", "in"), ("outcome", "offline")]) >= 1.0);
}

#[tokio::test]
async fn memory_ephemeral_sends_reach_only_who_is_online() {
    ephemeral_sends(&[NodeProcess::start(&[]).await]).await;
}

#[tokio::test]
async fn ephemeral_sends_reach_only_who_is_online_across_nodes() {
    let redis = RedisServer::start().await;
    ephemeral_sends(&redis_nodes(&redis, 2, &[]).await).await;
}

#[tokio::test]
async fn the_server_api_sends_to_lists() {
    let redis = RedisServer::start().await;
    let nodes = redis_nodes(&redis, 2, &["--max-recipients", "2"]).await;
    let mut bob = Client::connect(&nodes[1].ws_url(), "bob").await;
    let auth = format!("Bearer {KEY}");
    let headers = [("authorization", auth.as_str())];
    let sent = post_json(nodes[0].public, "/v1/send", &headers, &json!({"to": ["bob", "carol"], "body": 1})).await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    let answer = sent.json();
    assert_eq!(answer["status"], "routed");
    assert_eq!(answer["recipients"], json!({"bob": "routed", "carol": "stored"}));
    let got = bob.recv_message().await;
    assert_eq!((got.msg.to_string().as_str(), got.from.as_str()), (answer["msg"].as_str().unwrap(), "system"));
    // Ten times max-recipients for the API; more is too large.
    let many: Vec<String> = (0..21).map(|i| format!("u{i}")).collect();
    let too_many = post_json(nodes[0].public, "/v1/send", &headers, &json!({"to": many, "body": 1})).await;
    assert_eq!((too_many.status, too_many.json()["error"].as_str()), (400, Some("too_large")));
    let twenty = &many[..20];
    let ok = post_json(nodes[0].public, "/v1/send", &headers, &json!({"to": twenty, "body": 1})).await;
    assert_eq!(ok.status, 202);
    let statuses: HashMap<String, serde_json::Value> = serde_json::from_value(ok.json()["recipients"].clone()).unwrap();
    assert_eq!(statuses.len(), 20);
}
