//! Who may connect: every refusal happens before the upgrade, with 401 for
//! credentials (the whole matrix of bad tokens), 431 for oversized ones and
//! 429 past the per-address connection limit.

#![allow(clippy::unwrap_used)]

use switchboard_protocol::Codec;
use switchboard_testkit::{Client, Connect, ConnectError, NodeProcess, SECRET, now_secs, sign, token};

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
    assert_eq!(refused(&node, in_query).await.0, 431);
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
