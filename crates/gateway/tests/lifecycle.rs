//! The process: settings, the token command, and a graceful drain.

#![allow(clippy::unwrap_used)]

use serde_json::json;
use switchboard_protocol::{AcceptStatus, Codec};
use switchboard_testkit::{
    Client, Connect, ConnectError, JwksServer, KeyDir, NodeProcess, SECRET, TestKey, eventually, get, jwks,
    switchboard_bin, within,
};
use tokio::process::Command;

async fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let output = within("switchboard to exit", Command::new(switchboard_bin()).args(args).output()).await.unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

#[tokio::test]
async fn bad_settings_exit_64_naming_the_setting() {
    for (args, setting) in [
        (vec!["serve", "--jwt-secret", "s", "--heartbeat", "often"], "--heartbeat"),
        (vec!["serve", "--jwt-secret", "s", "--delivery", "maybe"], "--delivery"),
        (vec!["serve", "--jwt-secret", "s", "--max-frame-bytes", "lots"], "--max-frame-bytes"),
        (vec!["serve", "--jwt-secret", "s", "--rate-limit", "0"], "--rate-limit"),
        (vec!["serve"], "--jwt-secret"),
        (vec!["token", "--user", "bad user", "--jwt-secret", "s"], "--user"),
        (vec!["token", "--user", "alice"], "--jwt-secret"),
    ] {
        let (code, _, stderr) = run(&args).await;
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(setting), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn bad_token_keys_exit_64_naming_the_setting() {
    let (dir, key) = (KeyDir::new(), TestKey::ec());
    let not_pem = dir.write("junk.pem", "not a key\n");
    let private = dir.write("private.pem", key.private_pem());
    let public = dir.write("public.pem", key.public_pem());
    let kid_file = |kid: &str, file: &str| format!("{kid}={file}");
    for (args, setting, problem) in [
        (vec!["--jwt-public-key", &not_pem], "--jwt-public-key", "not a PEM file"),
        (vec!["--jwt-public-key", &private], "--jwt-public-key", "a private key"),
        (vec!["--jwt-public-key", "/no/such/key.pem"], "--jwt-public-key", "/no/such/key.pem"),
        (vec!["--jwt-public-key", &kid_file("", &public)], "--jwt-public-key", "KID=FILE"),
        (
            vec!["--jwt-public-key", &public, "--jwt-public-key", &kid_file("b", &public)],
            "--jwt-public-key",
            "KID=FILE",
        ),
        (vec!["--jwks-url", "not a url"], "--jwks-url", "http"),
        (vec!["--jwks-url", "ftp://keys.example/jwks.json"], "--jwks-url", "http"),
        (vec!["--jwks-url", "http://127.0.0.1:1/jwks.json", "--jwks-refresh", "0s"], "--jwks-refresh", "1s"),
    ] {
        let args: Vec<&str> = ["serve"].into_iter().chain(args).collect();
        let (code, _, stderr) = run(&args).await;
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(setting) && stderr.contains(problem), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn the_token_command_signs_tokens_the_node_accepts() {
    let (code, stdout, stderr) = run(&["token", "--user", "dora", "--ttl", "5m", "--jwt-secret", SECRET]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let node = NodeProcess::start(&[]).await;
    let connect = Connect { bearer: Some(stdout.trim().to_owned()), ..Connect::default() };
    let client = Client::open(&node.ws_url(), connect).await.unwrap();
    assert_eq!(client.welcome.user.as_str(), "dora");
}

#[tokio::test]
async fn settings_come_from_the_environment_too() {
    let mut child = Command::new(switchboard_bin())
        .env("SWITCHBOARD_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_METRICS_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .env("SWITCHBOARD_HEARTBEAT", "7s")
        .env("SWITCHBOARD_NODE_ID", "env-node")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    within("the node to listen", tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line)).await.unwrap();
    let public = line.split_whitespace().find_map(|w| w.strip_prefix("public=")).unwrap();
    let client = Client::connect_with(&format!("ws://{public}/ws"), "alice", Codec::Json).await;
    assert_eq!((client.welcome.heartbeat_ms, client.welcome.node.as_str()), (7000, "env-node"));
}

#[tokio::test]
async fn sigterm_drains_with_1012_and_exits_cleanly() {
    let mut node = NodeProcess::start(&["--shutdown-grace", "2s"]).await;
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    let mut bob = Client::connect(&node.ws_url(), "bob").await;
    // A client that upgrades and then never reads nor answers the close:
    // it holds the node in its drain long enough to look at it.
    let stuck = switchboard_testkit::silent_client(node.public, "stuck").await;
    assert_eq!(get(node.public, "/readyz", &[]).await.status, 200);
    let (_, status) = alice.send_message("c-1", "bob", json!("before the drain")).await;
    assert_eq!(status, AcceptStatus::Routed);
    assert_eq!(bob.recv_message().await.body.to_value(), json!("before the drain"));

    node.terminate().await;
    let mut readyz = get(node.public, "/readyz", &[]).await;
    while readyz.status == 200 {
        readyz = get(node.public, "/readyz", &[]).await;
    }
    assert_eq!(readyz.status, 503);
    assert_eq!(get(node.public, "/healthz", &[]).await.status, 200);
    match Client::open(
        &node.ws_url(),
        Connect { bearer: Some(switchboard_testkit::token("late")), ..Connect::default() },
    )
    .await
    {
        Err(ConnectError::Http { status, .. }) => assert_eq!(status, 503),
        other => panic!("expected 503 while draining, got {:?}", other.map(|c| c.welcome)),
    }

    for client in [&mut alice, &mut bob] {
        let (close, _) = client.recv_close().await;
        assert_eq!(close, Some((1012, "node restarting".to_owned())));
        // Answers the close, as every WebSocket client does.
        let _ = client.flush().await;
    }
    // The stuck client is cut at the grace deadline; then the node exits 0.
    assert_eq!(node.wait().await, Some(0));
    drop(stuck);
}

#[tokio::test]
async fn sigterm_ends_a_jwks_fetch_in_flight() {
    let key = TestKey::ec();
    let server = JwksServer::start(&jwks(&[("k1", &key)])).await;
    let mut node =
        NodeProcess::start(&["--jwks-url", &server.url(), "--jwks-refresh", "1s", "--shutdown-grace", "1s"]).await;
    eventually("the node to fetch its keys", || async { get(node.public, "/readyz", &[]).await.status == 200 }).await;
    // The next refresh waits for an answer that never comes (up to the
    // fetch's own 10 s timeout); the shutdown must not wait for it.
    server.hang();
    let taken = server.requests();
    server.wait_for_requests(taken + 1).await;
    let signalled = std::time::Instant::now();
    node.terminate().await;
    assert_eq!(node.wait().await, Some(0));
    assert!(signalled.elapsed() < std::time::Duration::from_secs(8), "stopped after {:?}", signalled.elapsed());
}
