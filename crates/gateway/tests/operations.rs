//! What operators and application backends rely on: metrics that move by
//! exact amounts, the server API, and rolling restarts that lose nothing.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use switchboard_protocol::{AcceptStatus, Body, ClientFrame, ClientMsgId, MsgId, ServerFrame, To, UserId};
use switchboard_testkit::{
    Client, Connect, NodeProcess, RedisServer, Scrape, eventually, get, post_json, scrape, token, within,
};
use tokio_util::sync::CancellationToken;

const KEY: &str = "test-api-key";

fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

#[tokio::test]
async fn metrics_move_by_exactly_what_happened() {
    let node = NodeProcess::start(&[]).await;
    let before = scrape(node.metrics).await;
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    let mut bob = Client::connect(&node.ws_url(), "bob").await;
    for i in 0..3 {
        assert_eq!(alice.send_message(&format!("r-{i}"), "bob", json!(i)).await.1, AcceptStatus::Routed);
        bob.recv_message().await;
    }
    for i in 0..2 {
        assert_eq!(alice.send_message(&format!("s-{i}"), "carol", json!(i)).await.1, AcceptStatus::Stored);
    }
    alice.send_message("r-0", "bob", json!(0)).await;
    alice.send_raw(tokio_tungstenite::tungstenite::Message::text(r#"{"type":"send","id":"x","to":"no one"}"#)).await;
    assert!(matches!(alice.recv().await, ServerFrame::Error { .. }));
    let mut carol = Client::connect(&node.ws_url(), "carol").await;
    carol.recv_message().await;
    carol.recv_message().await;
    drop(carol);
    let mut dora = Client::connect(&node.ws_url(), "dora").await;
    dora.send(&ClientFrame::Ping).await;
    assert_eq!(dora.recv().await, ServerFrame::Pong);

    let after = scrape(node.metrics).await;
    let messages = "switchboard_messages_total";
    assert_eq!(delta(&before, &after, messages, &[("direction", "in"), ("outcome", "routed")]), 3.0);
    assert_eq!(delta(&before, &after, messages, &[("direction", "in"), ("outcome", "stored")]), 2.0);
    assert_eq!(delta(&before, &after, messages, &[("direction", "in"), ("outcome", "duplicate")]), 1.0);
    assert_eq!(delta(&before, &after, messages, &[("direction", "in"), ("outcome", "rejected")]), 1.0);
    assert_eq!(delta(&before, &after, messages, &[("direction", "out"), ("outcome", "delivered")]), 5.0);
    assert_eq!(delta(&before, &after, "switchboard_inbox_stored_total", &[]), 5.0, "durable: every message stored");
    assert_eq!(delta(&before, &after, "switchboard_inbox_replayed_total", &[]), 2.0);
    assert_eq!(delta(&before, &after, "switchboard_route_seconds_count", &[]), 3.0, "live deliveries only");
    assert_eq!(delta(&before, &after, "switchboard_backend_seconds_count", &[("op", "send")]), 6.0);
    assert_eq!(delta(&before, &after, "switchboard_connections_total", &[]), 4.0);
    assert_eq!(delta(&before, &after, "switchboard_client_errors_total", &[("code", "invalid_recipient")]), 1.0);
    // Carol's connection has gone, or is going: the gauge says 3 or 4.
    eventually("the connection gauge to settle", || async {
        scrape(node.metrics).await.value("switchboard_connections", &[]) == 3.0
    })
    .await;
    let after = scrape(node.metrics).await;
    assert_eq!(delta(&before, &after, "switchboard_disconnects_total", &[("reason", "client")]), 1.0);
    assert_eq!(after.value("switchboard_build_info", &[("node", &node_id(&alice))]), 1.0);
}

fn node_id(client: &Client) -> String {
    client.welcome.node.clone()
}

async fn two_nodes_with_api(redis: &RedisServer) -> Vec<NodeProcess> {
    let mut nodes = Vec::new();
    for id in ["api-0", "api-1"] {
        let url = redis.url();
        let args = ["--redis-url", url.as_str(), "--node-id", id, "--api-key", KEY, "--max-frame-bytes", "1024"];
        nodes.push(NodeProcess::start(&args).await);
    }
    for node in &nodes {
        eventually("readiness", || async { get(node.public, "/readyz", &[]).await.status == 200 }).await;
    }
    nodes
}

#[tokio::test]
async fn the_server_api_reaches_users_on_any_node() {
    let redis = RedisServer::start().await;
    let nodes = two_nodes_with_api(&redis).await;
    let auth = format!("Bearer {KEY}");
    let headers = [("authorization", auth.as_str())];
    let mut bob = Client::connect(&nodes[1].ws_url(), "bob").await;
    let _bob_laptop = Client::connect(&nodes[0].ws_url(), "bob").await;

    let sent = post_json(nodes[0].public, "/v1/send", &headers, &json!({"to":"bob","body":{"k":1},"id":"api-1"})).await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    let answer = sent.json();
    assert_eq!(answer["status"], "routed");
    let got = bob.recv_message().await;
    assert_eq!(
        (got.msg.to_string(), got.from.as_str(), got.body.to_value()),
        (answer["msg"].as_str().unwrap().to_owned(), "system", json!({"k": 1}))
    );
    // The same id again: the original answer, nothing delivered again.
    let again =
        post_json(nodes[1].public, "/v1/send", &headers, &json!({"to":"bob","body":{"k":1},"id":"api-1"})).await;
    assert_eq!((again.status, again.json()), (202, answer.clone()));
    let from_billing =
        post_json(nodes[1].public, "/v1/send", &headers, &json!({"to":"bob","from":"billing","body":2})).await;
    assert_eq!(from_billing.status, 202);
    let got = bob.recv_message().await;
    assert_eq!(
        (got.from.as_str(), got.msg.to_string()),
        ("billing", from_billing.json()["msg"].as_str().unwrap().to_owned())
    );
    // `null` is a body; only a missing one is refused (below).
    let null_body = post_json(nodes[0].public, "/v1/send", &headers, &json!({"to":"bob","body":null})).await;
    assert_eq!(null_body.status, 202, "{}", null_body.body);
    let got_null = bob.recv_message().await;
    assert_eq!(
        (got_null.msg.to_string().as_str(), got_null.body.json()),
        (null_body.json()["msg"].as_str().unwrap(), "null")
    );
    // No receipts for API messages: the ack produces none (nothing to check
    // on an API caller), and the node keeps working.
    bob.ack(got.msg).await;

    let presence = get(nodes[0].public, "/v1/presence/bob", &headers).await;
    assert_eq!((presence.status, presence.json()), (200, json!({"user":"bob","online":true,"connections":2})));
    let nobody = get(nodes[1].public, "/v1/presence/nobody", &headers).await;
    assert_eq!(nobody.json(), json!({"user":"nobody","online":false,"connections":0}));

    let cases: Vec<(u16, &str, switchboard_testkit::HttpResponse)> = vec![
        (401, "unauthorized", post_json(nodes[0].public, "/v1/send", &[], &json!({"to":"bob"})).await),
        (
            401,
            "unauthorized",
            post_json(nodes[0].public, "/v1/send", &[("authorization", "Bearer wrong")], &json!({"to":"bob"})).await,
        ),
        (400, "invalid_recipient", post_json(nodes[0].public, "/v1/send", &headers, &json!({"to":"b b"})).await),
        (400, "bad_request", post_json(nodes[0].public, "/v1/send", &headers, &json!({"body":1})).await),
        (400, "bad_request", post_json(nodes[0].public, "/v1/send", &headers, &json!({"to":"bob","id":"x"})).await),
        (
            413,
            "too_large",
            post_json(nodes[0].public, "/v1/send", &headers, &json!({"to":"bob","body":"x".repeat(4096)})).await,
        ),
        (400, "invalid_user", get(nodes[0].public, "/v1/presence/b%20b", &headers).await),
        (405, "method_not_allowed", get(nodes[0].public, "/v1/send", &headers).await),
        (404, "not_found", get(nodes[0].public, "/v1/nothing", &headers).await),
    ];
    for (status, error, response) in cases {
        assert_eq!((response.status, response.json()["error"].as_str()), (status, Some(error)), "{}", response.body);
    }
}

#[tokio::test]
async fn the_server_api_is_off_without_a_key() {
    let node = NodeProcess::start(&[]).await;
    let response =
        post_json(node.public, "/v1/send", &[("authorization", "Bearer anything")], &json!({"to":"bob"})).await;
    assert_eq!((response.status, response.json()["error"].as_str()), (403, Some("forbidden")));
}

/// What every client saw, shared by the client tasks.
#[derive(Default)]
struct Ledger {
    /// Accepted messages and their recipients.
    accepted: Mutex<HashMap<MsgId, String>>,
    /// Distinct messages each user received.
    received: Mutex<HashMap<String, HashSet<MsgId>>>,
    /// Every message frame, duplicates included.
    frames: Mutex<u64>,
    /// Sends not yet answered, by sender.
    pending: Mutex<HashMap<String, (String, String)>>,
}

/// One user: connects to any live node, sends every 50 ms while `sending`,
/// acks what it gets, and on a close reconnects elsewhere and resends an
/// unanswered send with the same id.
async fn user(
    name: String,
    peers: Vec<String>,
    urls: Arc<Mutex<Vec<String>>>,
    ledger: Arc<Ledger>,
    sending: CancellationToken,
    done: CancellationToken,
) {
    let mut seq = 0usize;
    let mut attempt = 0usize;
    'connect: while !done.is_cancelled() {
        attempt += 1;
        let url = {
            let urls = urls.lock().unwrap();
            urls[attempt % urls.len()].clone()
        };
        let connect = Connect { bearer: Some(token(&name)), ..Connect::default() };
        let Ok(mut client) = Client::open(&url, connect).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let resend = ledger.pending.lock().unwrap().get(&name).cloned();
        if let Some((id, to)) = resend
            && !client.try_send(&send_frame(&id, &to)).await
        {
            continue;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                () = done.cancelled() => break 'connect,
                _ = tick.tick(), if !sending.is_cancelled() && !ledger.pending.lock().unwrap().contains_key(&name) => {
                    seq += 1;
                    let id = format!("{name}-{seq}");
                    let to = peers[seq % peers.len()].clone();
                    ledger.pending.lock().unwrap().insert(name.clone(), (id.clone(), to.clone()));
                    if !client.try_send(&send_frame(&id, &to)).await {
                        continue 'connect;
                    }
                }
                frame = client.try_recv() => match frame {
                    None => continue 'connect,
                    Some(ServerFrame::Message(delivery)) => {
                        *ledger.frames.lock().unwrap() += 1;
                        ledger.received.lock().unwrap().entry(name.clone()).or_default().insert(delivery.msg);
                        client.try_send(&ClientFrame::Ack { msg: delivery.msg }).await;
                    }
                    Some(ServerFrame::Accepted { id, msg, .. }) => {
                        let mut pending = ledger.pending.lock().unwrap();
                        if let Some((_, to)) = pending.get(&name).filter(|(pending_id, _)| *pending_id == id.as_str()) {
                            ledger.accepted.lock().unwrap().insert(msg, to.clone());
                            pending.remove(&name);
                        }
                    }
                    // An internal error leaves the send pending: it is resent
                    // with the same id on the next connection.
                    Some(_) => {}
                },
            }
        }
    }
}

fn send_frame(id: &str, to: &str) -> ClientFrame {
    ClientFrame::Send {
        id: ClientMsgId::parse(id).unwrap(),
        to: To::One(UserId::parse(to).unwrap()),
        body: Body::from_value(&json!({"id": id})),
        ephemeral: false,
    }
}

#[tokio::test]
async fn a_rolling_restart_loses_nothing_accepted() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let start = |id: String| {
        let url = url.clone();
        async move {
            let args =
                ["--redis-url", url.as_str(), "--node-ttl", "1s", "--node-id", id.as_str(), "--shutdown-grace", "2s"];
            let node = NodeProcess::start(&args).await;
            eventually("readiness", || async { get(node.public, "/readyz", &[]).await.status == 200 }).await;
            node
        }
    };
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(start(format!("n{i}")).await);
    }
    let urls = Arc::new(Mutex::new(nodes.iter().map(NodeProcess::ws_url).collect::<Vec<_>>()));
    let ledger = Arc::new(Ledger::default());
    let (sending, done) = (CancellationToken::new(), CancellationToken::new());
    let names: Vec<String> = (0..6).map(|i| format!("user-{i}")).collect();
    let mut users = Vec::new();
    for name in &names {
        let peers = names.iter().filter(|n| *n != name).cloned().collect();
        users.push(tokio::spawn(user(
            name.clone(),
            peers,
            urls.clone(),
            ledger.clone(),
            sending.clone(),
            done.clone(),
        )));
    }

    let wait_for_accepted = |n: usize| {
        let ledger = ledger.clone();
        async move {
            eventually("messages to flow", || async { ledger.accepted.lock().unwrap().len() >= n }).await;
        }
    };
    wait_for_accepted(30).await;
    // Each node in turn: a replacement joins, then the old one drains.
    for (generation, node) in nodes.iter_mut().enumerate() {
        let replacement = start(format!("n{generation}-next")).await;
        let old = std::mem::replace(node, replacement);
        {
            let mut urls = urls.lock().unwrap();
            urls.retain(|u| *u != old.ws_url());
            urls.push(node.ws_url());
        }
        let mut old = old;
        old.terminate().await;
        assert_eq!(old.wait().await, Some(0));
        let so_far = ledger.accepted.lock().unwrap().len();
        wait_for_accepted(so_far + 20).await;
    }

    sending.cancel();
    eventually("every pending send answered and every accepted message received", || async {
        let accepted = ledger.accepted.lock().unwrap();
        let received = ledger.received.lock().unwrap();
        ledger.pending.lock().unwrap().is_empty()
            && accepted.iter().all(|(msg, to)| received.get(to).is_some_and(|got| got.contains(msg)))
    })
    .await;
    done.cancel();
    for user in users {
        within("the user tasks to end", user).await.unwrap();
    }

    let accepted = ledger.accepted.lock().unwrap();
    let received = ledger.received.lock().unwrap();
    let distinct: usize = received.values().map(HashSet::len).sum();
    assert!(accepted.len() >= 90, "traffic flowed: {}", accepted.len());
    assert_eq!(distinct, accepted.len(), "exactly the accepted messages, once each after dedupe");
    let frames = *ledger.frames.lock().unwrap();
    eprintln!(
        "rolling restart: {} accepted, {frames} message frames ({} duplicates)",
        accepted.len(),
        frames - distinct as u64
    );
}

#[tokio::test]
async fn the_demo_page_is_served_only_with_demo() {
    let off = NodeProcess::start(&[]).await;
    assert_eq!(get(off.public, "/demo/", &[]).await.status, 404);
    let on = NodeProcess::start(&["--demo"]).await;
    let page = get(on.public, "/demo/", &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<html"), "{}", page.body);
    assert_eq!(get(on.public, "/demo/nothing-here", &[]).await.status, 404);
}
