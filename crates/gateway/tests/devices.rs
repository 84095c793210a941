//! Per-device sync (contract section 8): each device of a user has its own
//! cursor in the user's log, in both backends (one node without Redis,
//! nodes over a standalone Redis, nodes over a Redis Cluster). Seqs and
//! message ids are checked exactly.

#![allow(clippy::unwrap_used)]

use serde_json::json;
use switchboard_protocol::{ClientFrame, MsgId, ServerFrame};
use switchboard_testkit::{
    Client, Connect, NodeProcess, RedisCluster, RedisServer, command_calls, eventually, get, sign, token,
};

/// Where the nodes keep their state.
enum Store {
    Memory,
    Standalone(Box<RedisServer>),
    Cluster(RedisCluster),
}

impl Store {
    async fn standalone() -> Self {
        Self::Standalone(Box::new(RedisServer::start().await))
    }

    async fn cluster() -> Self {
        Self::Cluster(RedisCluster::start().await)
    }

    /// `count` nodes on this store (one for memory), ready.
    async fn nodes(&self, count: usize, extra: &[&str]) -> Vec<NodeProcess> {
        let url = match self {
            Self::Memory => return vec![NodeProcess::start(extra).await],
            Self::Standalone(redis) => redis.url(),
            Self::Cluster(cluster) => cluster.url(),
        };
        let mut nodes = Vec::new();
        for i in 0..count {
            let id = format!("node-{i}");
            let mut args = vec!["--redis-url", url.as_str(), "--node-id", &id];
            args.extend_from_slice(extra);
            nodes.push(NodeProcess::start(&args).await);
        }
        for node in &nodes {
            eventually("the node to be ready", || async { get(node.public, "/readyz", &[]).await.status == 200 }).await;
        }
        nodes
    }

    /// A Redis command's answer, following Cluster redirections.
    async fn cli(&self, args: &[&str]) -> String {
        match self {
            Self::Memory => unreachable!("no Redis"),
            Self::Standalone(redis) => redis.cli(args).await,
            Self::Cluster(cluster) => cluster.cli(0, &[&["-c"], args].concat()).await,
        }
    }

    /// Waits until the acks `client` sent so far are recorded: the device's
    /// cursor reaches `up_to`.
    async fn acked(&self, client: &mut Client, user: &str, up_to: u64) {
        // Frames are handled in order: after the pong the acks were taken.
        client.send(&ClientFrame::Ping).await;
        assert_eq!(client.recv().await, ServerFrame::Pong);
        if matches!(self, Self::Memory) {
            return;
        }
        let (key, field) = (format!("sb:u:{{{user}}}:dev"), format!("c:{}", client.welcome.device));
        eventually(&format!("{user}'s {field} to reach {up_to}"), || async {
            let cursor = self.cli(&["HGET", &key, &field]).await;
            cursor.split(',').next().and_then(|s| s.parse::<u64>().ok()).is_some_and(|n| n >= up_to)
        })
        .await;
    }

    /// Script runs so far (the device scripts among them).
    async fn script_calls(&self) -> u64 {
        command_calls(&self.cli(&["INFO", "commandstats"]).await, "evalsha")
    }

    /// How many entries the user's log holds in Redis.
    async fn log_len(&self, user: &str) -> usize {
        self.cli(&["XLEN", &format!("sb:u:{{{user}}}:log")]).await.parse().unwrap()
    }
}

/// The next `count` messages: their ids and seqs.
async fn messages(client: &mut Client, count: usize) -> Vec<(MsgId, u64)> {
    let mut got = Vec::new();
    for _ in 0..count {
        let message = client.recv_message().await;
        got.push((message.msg, message.seq.expect("a logged message has a seq")));
    }
    got
}

/// The receipts of `sent`, in order, one each.
async fn receipts(client: &mut Client, sent: &[(MsgId, u64)]) {
    for (msg, _) in sent {
        match client.recv().await {
            ServerFrame::Receipt(receipt) => assert_eq!((receipt.msg, &receipt.user), (*msg, &None)),
            other => panic!("expected a receipt, got {other:?}"),
        }
    }
}

/// Nothing more is queued for `client`.
async fn nothing_more(client: &mut Client) {
    client.send(&ClientFrame::Ping).await;
    assert_eq!(client.recv().await, ServerFrame::Pong);
}

/// Two devices of bob's, one offline while the other acks; then a third
/// and a fourth device, `since`, and the log trimmed once all acked.
async fn devices_sync_on_their_own(store: Store) {
    let nodes = store.nodes(2, &[]).await;
    let url = |i: usize| nodes[i % nodes.len()].ws_url();
    let mut alice = Client::connect(&url(0), "alice").await;
    let phone = Client::connect_device(&url(1), "bob", "phone").await;
    let mut laptop = Client::connect_device(&url(0), "bob", "laptop").await;
    assert_eq!((phone.welcome.device.as_str(), phone.welcome.seq), ("phone", 0));
    drop(phone);

    let mut sent = Vec::new();
    for i in 1..=5u64 {
        sent.push((alice.send_message(&format!("a-{i}"), "bob", json!(i)).await.0, i));
    }
    assert_eq!(messages(&mut laptop, 5).await, sent);
    for (msg, _) in &sent {
        laptop.ack(*msg).await;
    }
    store.acked(&mut laptop, "bob", 5).await;
    // Receipts: one per message, on the first device's ack.
    receipts(&mut alice, &sent).await;

    // The phone was offline: it gets every message, in seq order.
    let mut phone = Client::connect_device(&url(1), "bob", "phone").await;
    assert_eq!(phone.welcome.seq, 5);
    assert_eq!(messages(&mut phone, 5).await, sent);
    nothing_more(&mut phone).await;
    phone.ack_up_to(3).await;
    store.acked(&mut phone, "bob", 3).await;
    drop(phone);

    for i in 6..=7u64 {
        sent.push((alice.send_message(&format!("a-{i}"), "bob", json!(i)).await.0, i));
    }
    assert_eq!(messages(&mut laptop, 2).await, sent[5..]);
    laptop.ack_up_to(7).await;
    store.acked(&mut laptop, "bob", 7).await;
    receipts(&mut alice, &sent[5..]).await;

    // Exactly the ones after its cursor.
    let mut phone = Client::connect_device(&url(0), "bob", "phone").await;
    assert_eq!(messages(&mut phone, 4).await, sent[3..]);
    nothing_more(&mut phone).await;

    // A new device starts at the oldest message still in the log: the
    // phone's cursor (3) holds the log back.
    let mut tablet = Client::connect_device(&url(1), "bob", "tablet").await;
    assert_eq!(messages(&mut tablet, 4).await, sent[3..]);
    nothing_more(&mut tablet).await;

    // `since` replays from its seq, acked or not.
    let mut again = Client::open(
        &url(1),
        Connect { bearer: Some(token("bob")), query: Some("device=laptop&since=5".into()), ..Connect::default() },
    )
    .await
    .unwrap();
    assert_eq!(messages(&mut again, 2).await, sent[5..]);
    drop(again);

    // Once every device seen acked everything, a new one gets nothing old,
    // and the log is trimmed.
    phone.ack_up_to(7).await;
    tablet.ack_up_to(7).await;
    store.acked(&mut phone, "bob", 7).await;
    store.acked(&mut tablet, "bob", 7).await;
    let mut watch = Client::connect_device(&url(0), "bob", "watch").await;
    assert_eq!(watch.welcome.seq, 7);
    nothing_more(&mut watch).await;
    if !matches!(store, Store::Memory) {
        assert_eq!(store.log_len("bob").await, 0);
    }
    // The other devices' acks sent no receipt again.
    nothing_more(&mut alice).await;
}

#[tokio::test]
async fn memory_devices_sync_on_their_own() {
    devices_sync_on_their_own(Store::Memory).await;
}

#[tokio::test]
async fn standalone_devices_sync_on_their_own() {
    devices_sync_on_their_own(Store::standalone().await).await;
}

#[tokio::test]
async fn cluster_devices_sync_on_their_own() {
    devices_sync_on_their_own(Store::cluster().await).await;
}

/// A device that connects after another device's connection opened holds
/// the trimming back: the log keeps what the new device has not acked.
async fn a_new_device_holds_the_trim_back(store: Store) {
    let nodes = store.nodes(2, &[]).await;
    let mut alice = Client::connect(&nodes[0].ws_url(), "alice").await;
    let mut laptop = Client::connect_device(&nodes[0].ws_url(), "bob", "laptop").await;
    let mut sent = Vec::new();
    for i in 1..=20u64 {
        sent.push((alice.send_message(&format!("a-{i}"), "bob", json!(i)).await.0, i));
    }
    assert_eq!(messages(&mut laptop, 20).await, sent);
    // Seen now, with nothing acked.
    let other = &nodes[nodes.len() - 1];
    drop(Client::connect_device(&other.ws_url(), "bob", "phone").await);

    let scripts = if matches!(store, Store::Memory) { 0 } else { store.script_calls().await };
    laptop.ack_up_to(20).await;
    store.acked(&mut laptop, "bob", 20).await;
    if !matches!(store, Store::Memory) {
        // Twenty acks ask for a trim: two script calls (the ack, then the
        // trim), and nothing trimmed.
        eventually("the trim to run", || async { store.script_calls().await == scripts + 2 }).await;
        assert_eq!(store.log_len("bob").await, 20);
    }
    let mut phone = Client::connect_device(&other.ws_url(), "bob", "phone").await;
    assert_eq!(messages(&mut phone, 20).await, sent);
    nothing_more(&mut phone).await;
}

#[tokio::test]
async fn memory_a_new_device_holds_the_trim_back() {
    a_new_device_holds_the_trim_back(Store::Memory).await;
}

#[tokio::test]
async fn standalone_a_new_device_holds_the_trim_back() {
    a_new_device_holds_the_trim_back(Store::standalone().await).await;
}

/// A thousand messages acked with one frame.
async fn a_cumulative_ack_of_1000_messages_is_one_frame(store: Store) {
    let nodes = store.nodes(2, &["--rate-limit", "100000", "--rate-limit-burst", "100000"]).await;
    let mut alice = Client::connect(&nodes[0].ws_url(), "alice").await;
    let mut sent = Vec::new();
    for i in 1..=1000u64 {
        sent.push((alice.send_message(&format!("m-{i}"), "bob", json!(i)).await.0, i));
    }
    let node = &nodes[nodes.len() - 1];
    let mut bob = Client::connect_device(&node.ws_url(), "bob", "phone").await;
    assert_eq!(bob.welcome.seq, 1000);
    assert_eq!(messages(&mut bob, 1000).await, sent);
    bob.ack_up_to(1000).await;
    store.acked(&mut bob, "bob", 1000).await;
    drop(bob);

    let mut bob = Client::connect_device(&node.ws_url(), "bob", "phone").await;
    nothing_more(&mut bob).await;
    if !matches!(store, Store::Memory) {
        assert_eq!(store.log_len("bob").await, 0);
    }
    // Each message's receipt, once.
    let mut receipted = std::collections::HashSet::new();
    for _ in 0..1000 {
        match alice.recv().await {
            ServerFrame::Receipt(receipt) => assert!(receipted.insert(receipt.msg), "{receipt:?} twice"),
            other => panic!("expected a receipt, got {other:?}"),
        }
    }
    assert_eq!(receipted.len(), 1000);
    nothing_more(&mut alice).await;
}

#[tokio::test]
async fn memory_a_cumulative_ack_of_1000_messages_is_one_frame() {
    a_cumulative_ack_of_1000_messages_is_one_frame(Store::Memory).await;
}

#[tokio::test]
async fn standalone_a_cumulative_ack_of_1000_messages_is_one_frame() {
    a_cumulative_ack_of_1000_messages_is_one_frame(Store::standalone().await).await;
}

#[tokio::test]
async fn devices_are_named_by_the_query_or_the_token() {
    let node = NodeProcess::start(&[]).await;
    let url = node.ws_url();
    let open = |connect: Connect| Client::open(&url, connect);
    let bearer = |claims: serde_json::Value| Some(sign(&claims, switchboard_testkit::SECRET));
    let exp = switchboard_testkit::now_secs() + 3600;

    let default = open(Connect { bearer: Some(token("bob")), ..Connect::default() }).await.unwrap();
    assert_eq!(default.welcome.device.as_str(), "default");
    // The claim wins over the query.
    let claimed = open(Connect {
        bearer: bearer(json!({"sub": "bob", "exp": exp, "device": "phone"})),
        query: Some("device=laptop".into()),
        ..Connect::default()
    })
    .await
    .unwrap();
    assert_eq!(claimed.welcome.device.as_str(), "phone");

    let refused = |connect| async { open(connect).await.err().map(|e| format!("{e:?}")).unwrap_or_default() };
    let bad_query =
        refused(Connect { bearer: Some(token("bob")), query: Some("device=my%20phone".into()), ..Connect::default() })
            .await;
    assert!(bad_query.contains("status: 400") && bad_query.contains("device"), "{bad_query}");
    let bad_claim = refused(Connect {
        bearer: bearer(json!({"sub": "bob", "exp": exp, "device": "my phone"})),
        ..Connect::default()
    })
    .await;
    assert!(bad_claim.contains("status: 401") && bad_claim.contains("device"), "{bad_claim}");
    let bad_since =
        refused(Connect { bearer: Some(token("bob")), query: Some("since=-1".into()), ..Connect::default() }).await;
    assert!(bad_since.contains("status: 400") && bad_since.contains("since"), "{bad_since}");
}
