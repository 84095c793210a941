//! Test support: real `switchboard` and `redis-server` processes on free ports, real
//! WebSocket and HTTP clients, and helpers that wait for an event (a frame,
//! a line, a status) instead of sleeping.
//!
//! Every wait has a generous deadline that only turns a hang into a clear
//! failure; no test depends on timing to pass.

#![allow(clippy::unwrap_used)]

mod client;
mod http;
mod jwks;
mod keys;
mod metrics;
mod node;
mod proxy;
mod redis;
mod webhook;

pub use client::{Client, Connect, ConnectError, silent_client};
pub use http::{HttpResponse, get, post_json};
pub use jwks::{JWKS_PATH, JwksServer};
pub use keys::{KeyDir, TestKey, jwks};
pub use metrics::{Scrape, scrape};
pub use node::{NodeProcess, switchboard_bin};
pub use proxy::ChaosProxy;
pub use redis::{RedisCluster, RedisSentinel, RedisServer, SENTINEL_SERVICE, command_calls};
pub use webhook::{WEBHOOK_SECRET, WebhookReceiver};

use std::time::Duration;

/// The secret every test node signs tokens with.
pub const SECRET: &str = "switchboard-test-secret";

/// How long any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A valid client token for `user`, signed with [`SECRET`].
pub fn token(user: &str) -> String {
    sign(&serde_json::json!({ "sub": user, "exp": now_secs() + 3600 }), SECRET)
}

/// Any claims, signed HS256 with `secret`.
pub fn sign(claims: &serde_json::Value, secret: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).unwrap()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Polls `condition` every 20 ms until it holds, failing the test with
/// `what` past [`DEADLINE`]: for state that has no event to wait on.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    within(what, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Awaits `future`, failing the test with `what` if it takes past [`DEADLINE`].
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}
