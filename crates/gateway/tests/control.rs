//! Token and connection control (contract section 10): tokens that expire
//! on live connections, in-band refresh, and closing a user's connections
//! on every node from the server API, with a block on reconnecting.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use switchboard_protocol::{ClientFrame, ErrorCode, ServerFrame};
use switchboard_testkit::{
    Client, Connect, ConnectError, NodeProcess, RedisServer, SECRET, Scrape, eventually, get, now_secs, post_json,
    scrape, sign,
};

const KEY: &str = "control-test-key";
const AUTH: (&str, &str) = ("authorization", "Bearer control-test-key");

fn token(user: &str, exp: u64) -> String {
    sign(&json!({ "sub": user, "exp": exp }), SECRET)
}

async fn open(node: &NodeProcess, user: &str, exp: u64, device: &str) -> Result<Client, ConnectError> {
    let connect =
        Connect { bearer: Some(token(user, exp)), query: Some(format!("device={device}")), ..Connect::default() };
    Client::open(&node.ws_url(), connect).await
}

async fn connect(node: &NodeProcess, user: &str, exp: u64) -> Client {
    open(node, user, exp, "default").await.unwrap()
}

async fn refresh(client: &mut Client, token: String) -> ServerFrame {
    client.send(&ClientFrame::Refresh { token }).await;
    client.recv().await
}

async fn ping(client: &mut Client) {
    client.send(&ClientFrame::Ping).await;
    assert_eq!(client.recv().await, ServerFrame::Pong);
}

fn disconnects(scrape: &Scrape, reason: &str) -> f64 {
    scrape.find("switchboard_disconnects_total", &[("reason", reason)]).unwrap_or(0.0)
}

fn bad_token(frame: ServerFrame, why: &str) {
    match frame {
        ServerFrame::Error { id: None, code: ErrorCode::BadToken, message } => {
            assert!(message.contains(why), "{message:?} does not say {why:?}");
        }
        other => panic!("expected bad_token ({why}), got {other:?}"),
    }
}

#[tokio::test]
async fn a_connection_is_closed_4001_when_its_token_expires_and_a_refused_refresh_changes_nothing() {
    let node = NodeProcess::start(&[]).await;
    let exp = now_secs() + 3;
    let mut bob = connect(&node, "bob", exp).await;
    assert_eq!(bob.welcome.exp, Some(exp));

    bad_token(refresh(&mut bob, token("alice", exp + 3600)).await, "another user");
    bad_token(refresh(&mut bob, token("bob", exp)).await, "does not expire later");
    bad_token(refresh(&mut bob, sign(&json!({ "sub": "bob", "exp": exp + 3600 }), "another secret")).await, "Invalid");
    bad_token(refresh(&mut bob, "not a token".to_owned()).await, "refresh refused");

    let (close, frames) = bob.recv_close().await;
    assert_eq!(close, Some((4001, "token expired".to_owned())));
    assert_eq!(frames, Vec::new());
    assert!(now_secs() >= exp, "closed before the token expired");
    let metrics = scrape(node.metrics).await;
    assert_eq!(disconnects(&metrics, "token_expired"), 1.0);
    assert_eq!(metrics.value("switchboard_client_errors_total", &[("code", "bad_token")]), 4.0);
}

#[tokio::test]
async fn a_refreshed_connection_stays_open_past_its_first_token() {
    let node = NodeProcess::start(&[]).await;
    let exp = now_secs() + 3;
    let mut bob = connect(&node, "bob", exp).await;
    let later = exp + 3600;
    assert_eq!(refresh(&mut bob, token("bob", later)).await, ServerFrame::Refreshed { exp: later });

    // Time itself is what this test waits for: past the first token's expiry.
    tokio::time::sleep(Duration::from_secs((exp + 1).saturating_sub(now_secs()))).await;
    ping(&mut bob).await;
    assert_eq!(disconnects(&scrape(node.metrics).await, "token_expired"), 0.0);
}

#[tokio::test]
async fn development_identities_have_no_expiry_to_refresh() {
    let node = NodeProcess::start(&["--dev-insecure-auth"]).await;
    let connect = Connect { query: Some("user=bob".to_owned()), ..Connect::default() };
    let mut bob = Client::open(&node.ws_url(), connect).await.unwrap();
    assert_eq!(bob.welcome.exp, None);
    bad_token(refresh(&mut bob, "anything".to_owned()).await, "refresh refused");
    ping(&mut bob).await;
}

#[tokio::test]
async fn a_disconnect_closes_the_named_device_only_and_a_block_refuses_the_user_until_it_ends() {
    let node = NodeProcess::start(&["--api-key", KEY]).await;
    let exp = now_secs() + 3600;
    let mut phones =
        vec![open(&node, "bob", exp, "phone").await.unwrap(), open(&node, "bob", exp, "phone").await.unwrap()];
    let mut laptop = open(&node, "bob", exp, "laptop").await.unwrap();
    let mut carol = connect(&node, "carol", exp).await;

    let answer = post_json(node.public, "/v1/disconnect", &[AUTH], &json!({"user": "bob", "device": "phone"})).await;
    assert_eq!((answer.status, answer.json()), (200, json!({"closed": 2})));
    for phone in &mut phones {
        assert_eq!(phone.recv_close().await, (Some((4003, "disconnected".to_owned())), Vec::new()));
    }
    ping(&mut laptop).await;
    // No block: the phone comes back at once.
    let mut phone = open(&node, "bob", exp, "phone").await.unwrap();

    let body = json!({"user": "bob", "reason": "abuse report 17", "block_s": 2});
    let answer = post_json(node.public, "/v1/disconnect", &[AUTH], &body).await;
    assert_eq!((answer.status, answer.json()), (200, json!({"closed": 2})));
    for bob in [&mut phone, &mut laptop] {
        assert_eq!(bob.recv_close().await.0, Some((4003, "disconnected".to_owned())));
    }
    match open(&node, "bob", exp, "phone").await {
        Err(ConnectError::Http { status: 403, body }) => assert!(body.contains("\"blocked\""), "{body}"),
        other => panic!("expected 403 while blocked, got {:?}", other.map(|c| c.welcome)),
    }
    ping(&mut carol).await;
    eventually("the block to end", || async { open(&node, "bob", exp, "phone").await.is_ok() }).await;
    assert_eq!(disconnects(&scrape(node.metrics).await, "disconnected"), 4.0);
}

#[tokio::test]
async fn a_disconnect_request_is_checked() {
    let node = NodeProcess::start(&["--api-key", KEY]).await;
    let post = |body: serde_json::Value, auth: (&'static str, &'static str)| {
        let public = node.public;
        async move { post_json(public, "/v1/disconnect", &[auth], &body).await }
    };
    let wrong = ("authorization", "Bearer wrong");
    assert_eq!(post(json!({"user": "bob"}), wrong).await.status, 401);
    let refused = [
        (json!({}), "bad_request"),
        (json!({"user": "no one"}), "invalid_user"),
        (json!({"user": "bob", "device": ""}), "bad_request"),
        (json!({"user": "bob", "block_s": 10_000_000}), "bad_request"),
        (json!({"user": "bob", "block_s": -1}), "bad_request"),
    ];
    for (body, error) in refused {
        let answer = post(body.clone(), AUTH).await;
        assert_eq!((answer.status, answer.json()["error"].as_str()), (400, Some(error)), "{body}");
    }
    let answer = get(node.public, "/v1/disconnect", &[AUTH]).await;
    assert_eq!(answer.status, 405);
    let answer = post(json!({"user": "nobody-here"}), AUTH).await;
    assert_eq!((answer.status, answer.json()), (200, json!({"closed": 0})));
}

async fn redis_node(redis: &RedisServer, id: &str) -> NodeProcess {
    let url = redis.url();
    let node = NodeProcess::start(&["--redis-url", &url, "--node-id", id, "--node-ttl", "2s", "--api-key", KEY]).await;
    eventually("the node to be ready", || async { get(node.public, "/readyz", &[]).await.status == 200 }).await;
    node
}

#[tokio::test]
async fn cluster_a_disconnect_closes_the_user_on_every_node_and_the_block_holds_on_every_node() {
    let redis = RedisServer::start().await;
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(redis_node(&redis, &format!("node-{i}")).await);
    }
    let exp = now_secs() + 3600;
    let mut bobs = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        bobs.push(open(node, "bob", exp, &format!("device-{i}")).await.unwrap());
    }
    let mut carol = connect(&nodes[1], "carol", exp).await;
    let mut before = Vec::new();
    for node in &nodes {
        before.push(disconnects(&scrape(node.metrics).await, "disconnected"));
    }

    let body = json!({"user": "bob", "reason": "banned", "block_s": 3});
    let answer = post_json(nodes[0].public, "/v1/disconnect", &[AUTH], &body).await;
    assert_eq!((answer.status, answer.json()), (200, json!({"closed": 3})), "every node answered within 1 s");
    for bob in &mut bobs {
        assert_eq!(bob.recv_close().await, (Some((4003, "disconnected".to_owned())), Vec::new()));
    }
    ping(&mut carol).await;
    for (node, before) in nodes.iter().zip(before) {
        assert_eq!(disconnects(&scrape(node.metrics).await, "disconnected") - before, 1.0);
    }

    for node in &nodes {
        match open(node, "bob", exp, "device-0").await {
            Err(ConnectError::Http { status: 403, .. }) => {}
            other => panic!("expected 403 on {}, got {:?}", node.public, other.map(|c| c.welcome)),
        }
    }
    // A node that starts after the block has not heard of it: the block's
    // key in Redis refuses the connection as it registers.
    let late = redis_node(&redis, "node-late").await;
    match open(&late, "bob", exp, "device-0").await {
        Err(ConnectError::Closed { code: 4003, reason }) => assert_eq!(reason, "disconnected"),
        other => panic!("expected a 4003 close on the late node, got {:?}", other.map(|c| c.welcome)),
    }
    for node in nodes.iter().chain([&late]) {
        eventually("the block to end", || async { open(node, "bob", exp, "device-0").await.is_ok() }).await;
    }
}
