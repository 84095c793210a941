//! Who may connect: every refusal happens before the upgrade, with 401 for
//! credentials (the whole matrix of bad tokens, for HS256, RS256 and ES256
//! keys from files and from a JWKS), 431 for oversized ones and 429 past the
//! per-address connection limit.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use serde_json::json;
use switchboard_protocol::Codec;
use switchboard_testkit::{
    Client, Connect, ConnectError, JwksServer, KeyDir, NodeProcess, SECRET, TestKey, eventually, get, jwks, now_secs,
    sign, token,
};

async fn refused(node: &NodeProcess, connect: Connect) -> (u16, serde_json::Value) {
    match Client::open(&node.ws_url(), connect).await {
        Err(ConnectError::Http { status, body }) => (status, serde_json::from_str(&body).unwrap_or_default()),
        Err(other) => panic!("expected an HTTP refusal, got {other:?}"),
        Ok(client) => panic!("expected a refusal, connected as {:?}", client.welcome.user),
    }
}

fn bearer(token: String) -> Connect {
    Connect { bearer: Some(token), ..Connect::default() }
}

#[tokio::test]
async fn bad_tokens_get_401_before_the_upgrade() {
    let node = NodeProcess::start(&[]).await;
    let exp = now_secs() + 600;
    let alg_none = {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&format!(r#"{{"sub":"alice","exp":{exp}}}"#)))
    };
    // Algorithm confusion: the header says RS256, the signature is an HMAC
    // with the node's secret, as if the secret were an RSA public key.
    let rs256_by_hmac = {
        let claims = serde_json::json!({"sub": "alice", "exp": exp});
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        let hs = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
        use base64::Engine;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
        let (_, rest) = hs.split_once('.').unwrap();
        format!("{header}.{rest}")
    };
    let cases = [
        ("no token", Connect::default()),
        ("expired", bearer(sign(&serde_json::json!({"sub":"alice","exp": now_secs() - 600}), SECRET))),
        ("no exp", bearer(sign(&serde_json::json!({"sub":"alice"}), SECRET))),
        ("not yet valid", bearer(sign(&serde_json::json!({"sub":"alice","exp": exp,"nbf": now_secs() + 300}), SECRET))),
        ("no sub", bearer(sign(&serde_json::json!({"exp": exp}), SECRET))),
        ("alg RS256", bearer(rs256_by_hmac)),
        ("aud, none configured", bearer(sign(&serde_json::json!({"sub":"alice","exp": exp,"aud":"chat"}), SECRET))),
        ("forged", bearer(sign(&serde_json::json!({"sub":"alice","exp": exp}), "not-the-secret"))),
        ("alg none", bearer(alg_none)),
        ("garbage", bearer("a.b.c".to_owned())),
        ("bad sub", bearer(sign(&serde_json::json!({"sub":"alice smith","exp": exp}), SECRET))),
        ("long sub", bearer(sign(&serde_json::json!({"sub":"a".repeat(129),"exp": exp}), SECRET))),
        ("dev auth off", Connect { query: Some("user=alice".to_owned()), ..Connect::default() }),
        ("bad token in the query", Connect { query: Some("token=a.b.c".to_owned()), ..Connect::default() }),
        (
            "valid query token, bad header token",
            Connect { query: Some(format!("token={}", token("alice"))), ..bearer("x.y.z".to_owned()) },
        ),
    ];
    for (case, connect) in cases {
        let (status, body) = refused(&node, connect).await;
        assert_eq!((case, status, body["error"].as_str()), (case, 401, Some("unauthorized")), "{body}");
    }
}

#[tokio::test]
async fn tokens_work_in_the_header_or_the_query() {
    let node = NodeProcess::start(&[]).await;
    let by_header = Client::open(&node.ws_url(), bearer(token("alice"))).await.unwrap();
    assert_eq!(by_header.welcome.user.as_str(), "alice");
    let query = Connect { query: Some(format!("token={}", token("bob"))), ..Connect::default() };
    let by_query = Client::open(&node.ws_url(), query).await.unwrap();
    assert_eq!((by_query.welcome.user.as_str(), by_query.codec), ("bob", Codec::Json));
}

#[tokio::test]
async fn dev_insecure_auth_takes_the_user_from_the_query() {
    let node = NodeProcess::start(&["--dev-insecure-auth"]).await;
    let dev = Connect { query: Some("user=carol%40example".to_owned()), ..Connect::default() };
    let client = Client::open(&node.ws_url(), dev).await.unwrap();
    assert_eq!(client.welcome.user.as_str(), "carol@example");
    let bad = Connect { query: Some("user=carol%20x".to_owned()), ..Connect::default() };
    assert_eq!(refused(&node, bad).await.0, 401);
}

#[tokio::test]
async fn subprotocols_are_negotiated() {
    let node = NodeProcess::start(&[]).await;
    let offer = |protocols: &[&str]| Connect {
        bearer: Some(token("alice")),
        protocols: protocols.iter().map(|p| (*p).to_owned()).collect(),
        ..Connect::default()
    };
    let both = Client::open(&node.ws_url(), offer(&["switchboard.v1.msgpack", "switchboard.v1.json"])).await.unwrap();
    assert_eq!(both.codec, Codec::MsgPack);
    let (status, body) = refused(&node, offer(&["mqtt"])).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unsupported_protocol")));
}

#[tokio::test]
async fn oversized_headers_get_431_and_plain_requests_to_ws_get_400() {
    let node = NodeProcess::start(&[]).await;
    let huge = Connect {
        bearer: Some(token("alice")),
        headers: vec![("x-padding".to_owned(), "p".repeat(9000))],
        ..Connect::default()
    };
    assert_eq!(refused(&node, huge).await.0, 431);
    let plain = switchboard_testkit::get(node.public, "/ws", &[]).await;
    assert_eq!((plain.status, plain.json()["error"].as_str()), (400, Some("not_websocket")));
}

#[tokio::test]
async fn tokens_must_name_the_configured_audience() {
    let node = NodeProcess::start(&["--jwt-audience", "chat"]).await;
    let exp = now_secs() + 600;
    let with_aud =
        |aud: serde_json::Value| bearer(sign(&serde_json::json!({"sub": "alice", "exp": exp, "aud": aud}), SECRET));
    let ok = Client::open(&node.ws_url(), with_aud(serde_json::json!("chat"))).await.unwrap();
    assert_eq!(ok.welcome.user.as_str(), "alice");
    let among = Client::open(&node.ws_url(), with_aud(serde_json::json!(["billing", "chat"]))).await.unwrap();
    assert_eq!(among.welcome.user.as_str(), "alice");
    for (case, connect) in
        [("another audience", with_aud(serde_json::json!("billing"))), ("no audience", bearer(token("alice")))]
    {
        let (status, body) = refused(&node, connect).await;
        assert_eq!((case, status, body["error"].as_str()), (case, 401, Some("unauthorized")), "{body}");
    }
}

#[tokio::test]
async fn oversized_tokens_get_431_in_the_header_or_the_query() {
    let node = NodeProcess::start(&[]).await;
    let claims = serde_json::json!({"sub": "alice", "exp": now_secs() + 600, "pad": "p".repeat(9000)});
    let huge = sign(&claims, SECRET);
    assert_eq!(refused(&node, bearer(huge.clone())).await.0, 431);
    let in_query = Connect { query: Some(format!("token={huge}")), ..Connect::default() };
    assert_eq!(refused(&node, in_query.clone()).await.0, 431);
    let in_protocols = Connect {
        protocols: vec![format!("switchboard.token.{huge}"), "switchboard.v1.json".into()],
        ..Connect::default()
    };
    assert_eq!(refused(&node, in_protocols).await.0, 431);
}

#[tokio::test]
async fn connections_per_address_are_limited_with_429() {
    let node = NodeProcess::start(&["--max-connections-per-ip", "2"]).await;
    let first = Client::connect(&node.ws_url(), "alice").await;
    let _second = Client::connect(&node.ws_url(), "bob").await;
    let (status, body) = refused(&node, bearer(token("carol"))).await;
    assert_eq!((status, body["error"].as_str()), (429, Some("too_many_connections")), "{body}");
    // A closed connection gives its place back.
    drop(first);
    switchboard_testkit::eventually("the closed connection to give its place back", || async {
        Client::open(&node.ws_url(), bearer(token("carol"))).await.is_ok()
    })
    .await;
}

// ---- RS256 and ES256 --------------------------------------------------------

/// The flags of a node on free ports, without the test secret.
fn exact(args: &[&str]) -> Vec<String> {
    let base = ["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];
    base.iter().chain(args).map(|s| (*s).to_owned()).collect()
}

async fn accepted(node: &NodeProcess, connect: Connect) -> Client {
    match Client::open(&node.ws_url(), connect).await {
        Ok(client) => client,
        Err(error) => panic!("expected to connect, got {error:?}"),
    }
}

async fn assert_all_refused(node: &NodeProcess, cases: Vec<(&str, Connect)>) {
    for (case, connect) in cases {
        let (status, body) = refused(node, connect).await;
        assert_eq!((case, status, body["error"].as_str()), (case, 401, Some("unauthorized")), "{body}");
    }
}

async fn ready(node: &NodeProcess) -> bool {
    get(node.public, "/readyz", &[]).await.status == 200
}

#[tokio::test]
async fn rs256_and_es256_tokens_signed_with_a_configured_key_are_accepted() {
    let (rsa, ec, dir) = (TestKey::rsa(), TestKey::ec(), KeyDir::new());
    let rsa_file = dir.write("rsa.pem", rsa.public_pem());
    let ec_file = dir.write("ec.pem", ec.public_pem());
    // The test secret stays configured: HS256 tokens keep working beside the key.
    let by_rsa = NodeProcess::start(&["--jwt-public-key", &rsa_file]).await;
    let by_ec = NodeProcess::start_exact(exact(&["--jwt-public-key", &ec_file])).await;

    // One key file answers to any kid, or none.
    for kid in [None, Some("anything")] {
        let client = accepted(&by_rsa, bearer(rsa.token("alice", kid))).await;
        assert_eq!(client.welcome.user.as_str(), "alice");
    }
    assert_eq!(accepted(&by_rsa, bearer(token("bob"))).await.welcome.user.as_str(), "bob");
    let client = accepted(&by_ec, bearer(ec.token("carol", None))).await;
    assert_eq!(client.welcome.user.as_str(), "carol");
    let claims = json!({"sub": "dave", "exp": now_secs() + 600, "device": "phone"});
    let client = accepted(&by_ec, bearer(ec.sign(&claims, Some("k")))).await;
    assert_eq!((client.welcome.user.as_str(), client.welcome.device.as_str()), ("dave", "phone"));
}

#[tokio::test]
async fn other_keys_and_mismatched_algorithms_get_401() {
    let (rsa, ec, other_rsa, other_ec, dir) =
        (TestKey::rsa(), TestKey::ec(), TestKey::rsa(), TestKey::ec(), KeyDir::new());
    let rsa_file = dir.write("rsa.pem", rsa.public_pem());
    let ec_file = dir.write("ec.pem", ec.public_pem());
    let by_rsa = NodeProcess::start(&["--jwt-public-key", &rsa_file]).await;
    let by_ec = NodeProcess::start(&["--jwt-public-key", &ec_file]).await;
    let no_secret = NodeProcess::start_exact(exact(&["--jwt-public-key", &rsa_file])).await;
    let exp = now_secs() + 600;
    let alice = json!({"sub": "alice", "exp": exp});

    // The classic confusion: an HS256 token whose HMAC secret is the RSA
    // public key, in the hope that the node takes its key for a secret.
    let confused = sign(&alice, rsa.public_pem());
    let alg_none = {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT","kid":"k"}"#), b64(&alice.to_string()))
    };
    assert_all_refused(
        &by_rsa,
        vec![
            ("signed with another RSA key", bearer(other_rsa.token("alice", None))),
            ("ES256 against an RSA key", bearer(ec.token("alice", None))),
            ("HS256 with the public key as secret", bearer(confused.clone())),
            ("alg none", bearer(alg_none)),
            ("expired", bearer(rsa.sign(&json!({"sub": "alice", "exp": now_secs() - 600}), None))),
            ("no exp", bearer(rsa.sign(&json!({"sub": "alice"}), None))),
            ("not yet valid", bearer(rsa.sign(&json!({"sub": "alice", "exp": exp, "nbf": now_secs() + 300}), None))),
            ("aud, none configured", bearer(rsa.sign(&json!({"sub": "alice", "exp": exp, "aud": "chat"}), None))),
            ("bad sub", bearer(rsa.sign(&json!({"sub": "alice smith", "exp": exp}), None))),
            ("bad device", bearer(rsa.sign(&json!({"sub": "alice", "exp": exp, "device": "a b"}), None))),
        ],
    )
    .await;
    assert_all_refused(
        &by_ec,
        vec![
            ("signed with another EC key", bearer(other_ec.token("alice", None))),
            ("RS256 against an EC key", bearer(rsa.token("alice", None))),
        ],
    )
    .await;
    assert_all_refused(&no_secret, vec![("HS256 with the public key as secret, no secret", bearer(confused))]).await;
    // The keys themselves work on these nodes: the refusals are the tokens'.
    accepted(&by_rsa, bearer(rsa.token("alice", None))).await;
    accepted(&by_ec, bearer(ec.token("alice", None))).await;
}

#[tokio::test]
async fn key_files_given_as_kid_file_answer_only_to_their_kid() {
    let (rsa, ec, dir) = (TestKey::rsa(), TestKey::ec(), KeyDir::new());
    let rsa_file = dir.write("rsa.pem", rsa.public_pem());
    let ec_file = dir.write("ec.pem", ec.public_pem());
    let by_flags = NodeProcess::start(&[
        "--jwt-public-key",
        &format!("r={rsa_file}"),
        "--jwt-public-key",
        &format!("e={ec_file}"),
    ])
    .await;
    // The variable takes a comma-separated list.
    let list = format!("r={rsa_file},e={ec_file}");
    let by_env = NodeProcess::start_exact_env(exact(&[]), &[("SWITCHBOARD_JWT_PUBLIC_KEY", &list)]).await;
    for node in [&by_flags, &by_env] {
        assert_eq!(accepted(node, bearer(rsa.token("alice", Some("r")))).await.welcome.user.as_str(), "alice");
        assert_eq!(accepted(node, bearer(ec.token("bob", Some("e")))).await.welcome.user.as_str(), "bob");
        assert_all_refused(
            node,
            vec![
                ("RS256 under the EC key's kid", bearer(rsa.token("alice", Some("e")))),
                ("ES256 under the RSA key's kid", bearer(ec.token("alice", Some("r")))),
                ("no kid", bearer(rsa.token("alice", None))),
                ("unknown kid", bearer(rsa.token("alice", Some("x")))),
            ],
        )
        .await;
    }
}

#[tokio::test]
async fn jwks_keys_verify_tokens_and_a_new_kid_is_fetched_at_once() {
    let (first, second, rotated, stranger) = (TestKey::rsa(), TestKey::ec(), TestKey::rsa(), TestKey::rsa());
    let server = JwksServer::start(&jwks(&[("k1", &first), ("k2", &second)])).await;
    // Refreshing hourly: only an unknown kid can bring the rotated key in time.
    let node = NodeProcess::start_exact(exact(&["--jwks-url", &server.url(), "--jwks-refresh", "1h"])).await;
    eventually("the node to fetch its keys and be ready", || ready(&node)).await;

    assert_eq!(accepted(&node, bearer(first.token("alice", Some("k1")))).await.welcome.user.as_str(), "alice");
    assert_eq!(accepted(&node, bearer(second.token("bob", Some("k2")))).await.welcome.user.as_str(), "bob");
    assert_all_refused(
        &node,
        vec![
            ("signed with another key under a known kid", bearer(stranger.token("alice", Some("k1")))),
            ("RS256 under an EC key's kid", bearer(first.token("alice", Some("k2")))),
            ("no kid", bearer(first.token("alice", None))),
            ("a kid not in the document yet", bearer(rotated.token("alice", Some("k3")))),
        ],
    )
    .await;

    server.serve(&jwks(&[("k1", &first), ("k2", &second), ("k3", &rotated)]));
    eventually("the rotated key to be fetched for its kid", || async {
        Client::open(&node.ws_url(), bearer(rotated.token("carol", Some("k3")))).await.is_ok()
    })
    .await;

    // Made-up kids do not turn into a fetch each: at most one per few seconds.
    let (before, started) = (server.requests(), Instant::now());
    for i in 0..20 {
        let (status, _) = refused(&node, bearer(stranger.token("mallory", Some(&format!("made-up-{i}"))))).await;
        assert_eq!(status, 401);
    }
    let fetches = server.requests() - before;
    let allowed = 1 + (started.elapsed().as_secs_f64() / 3.0).ceil() as usize;
    assert!(fetches <= allowed, "{fetches} fetches for 20 unknown kids in {:?}", started.elapsed());
}

#[tokio::test]
async fn a_failing_jwks_url_leaves_the_last_good_keys_in_use() {
    let key = TestKey::ec();
    let server = JwksServer::start(&jwks(&[("k1", &key)])).await;
    let node = NodeProcess::start(&["--jwks-url", &server.url(), "--jwks-refresh", "1s"]).await;
    eventually("the node to fetch its keys and be ready", || ready(&node)).await;
    accepted(&node, bearer(key.token("alice", Some("k1")))).await;

    server.fail(503);
    // Two failed fetches answered: the node has taken in at least the
    // first (it fetches one at a time).
    let failed = server.requests();
    server.wait_for_requests(failed + 2).await;
    assert_eq!(accepted(&node, bearer(key.token("alice", Some("k1")))).await.welcome.user.as_str(), "alice");
    assert!(ready(&node).await, "a node with keys from an earlier fetch stays ready");

    // A document that is not a key set counts as a failure too.
    server.serve(&json!({"keys": "none"}));
    let garbled = server.requests();
    server.wait_for_requests(garbled + 2).await;
    accepted(&node, bearer(key.token("bob", Some("k1")))).await;
}

#[tokio::test]
async fn a_node_that_never_fetched_its_jwks_is_not_ready() {
    let key = TestKey::rsa();
    let server = JwksServer::start(&jwks(&[("k1", &key)])).await;
    server.fail(500);
    let node = NodeProcess::start(&["--jwks-url", &server.url()]).await;
    server.wait_for_requests(1).await;
    assert_eq!(get(node.public, "/readyz", &[]).await.status, 503);
    assert_eq!(get(node.public, "/healthz", &[]).await.status, 200);
    assert_eq!(refused(&node, bearer(key.token("alice", Some("k1")))).await.0, 401);
    // HS256 clients are not held up by the JWKS.
    accepted(&node, bearer(token("bob"))).await;

    // Ready once a key set arrives (the retry after a failure is soon,
    // whatever --jwks-refresh says).
    server.serve(&jwks(&[("k1", &key)]));
    eventually("the node to be ready after its first good fetch", || ready(&node)).await;
    accepted(&node, bearer(key.token("alice", Some("k1")))).await;
}

// ---- The token in the subprotocol list --------------------------------------

fn protocols(list: &[&str]) -> Connect {
    Connect { protocols: list.iter().map(|p| (*p).to_owned()).collect(), ..Connect::default() }
}

#[tokio::test]
async fn a_token_in_the_subprotocol_list_is_accepted_and_never_echoed() {
    let (ec, dir) = (TestKey::ec(), KeyDir::new());
    let node = NodeProcess::start(&["--jwt-public-key", &dir.write("ec.pem", ec.public_pem())]).await;
    let entry = |token: String| format!("switchboard.token.{token}");

    let client = accepted(&node, protocols(&["switchboard.v1.msgpack", &entry(token("alice"))])).await;
    assert_eq!(client.welcome.user.as_str(), "alice");
    assert_eq!((client.protocol.as_deref(), client.codec), (Some("switchboard.v1.msgpack"), Codec::MsgPack));
    let client = accepted(&node, protocols(&[&entry(ec.token("bob", None)), "switchboard.v1.json"])).await;
    assert_eq!(client.welcome.user.as_str(), "bob");
    assert_eq!((client.protocol.as_deref(), client.codec), (Some("switchboard.v1.json"), Codec::Json));

    // Precedence: the header, then the subprotocol, then the query.
    let good = entry(token("carol"));
    let header_wins = Connect { bearer: Some("x.y.z".into()), ..protocols(&["switchboard.v1.json", &good]) };
    let bad = entry("x.y.z".into());
    let protocol_wins =
        Connect { query: Some(format!("token={}", token("carol"))), ..protocols(&["switchboard.v1.json", &bad]) };
    assert_all_refused(
        &node,
        vec![("bad header, good subprotocol", header_wins), ("bad subprotocol, good query", protocol_wins)],
    )
    .await;
    let over_query = Connect { query: Some("token=x.y.z".into()), ..protocols(&["switchboard.v1.json", &good]) };
    assert_eq!(accepted(&node, over_query).await.welcome.user.as_str(), "carol");
}

#[tokio::test]
async fn a_token_alone_in_the_subprotocol_list_gets_400() {
    let node = NodeProcess::start(&[]).await;
    let (status, body) = refused(&node, protocols(&[&format!("switchboard.token.{}", token("alice"))])).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unsupported_protocol")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("switchboard.v1.json"), "{body}");
}
