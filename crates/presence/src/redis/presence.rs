//! Registrations: which connection of which user is on which node, in
//! the user's presence hash and the node's reverse index.
//!
//! The presence hash changes in `presence.lua`, which also decides whether
//! the change was the user's first connection in the cluster or its last,
//! and queues `user.online` or `user.offline` in the same step.

use fred::interfaces::HashesInterface;
use futures_util::StreamExt;
use switchboard_protocol::{EventType, UserId, presence_event};
use uuid::Uuid;

use super::{FAN_OUT, Inner, now_ms};
use crate::BackendError;

impl Inner {
    /// Adds (`added`) or removes connection `conn` of `user` on `node` in
    /// the user's presence hash, with the event that makes due.
    pub(super) async fn change_presence(
        &self,
        user: &UserId,
        conn: &str,
        node: &str,
        added: bool,
    ) -> Result<(), BackendError> {
        let kind = if added { EventType::UserOnline } else { EventType::UserOffline };
        let body = match self.settings.events {
            Some(_) => presence_event(kind, Uuid::now_v7(), now_ms(), user, node),
            None => String::new(),
        };
        let keys = vec![self.keys.user_conns(user), self.event_stream(user)];
        let args = vec![
            if added { "+" } else { "-" },
            conn,
            node,
            if body.is_empty() { "" } else { kind.as_str() },
            body.as_str(),
            user.as_str(),
        ];
        let due: i64 = Box::pin(self.scripts.presence.evalsha_with_reload(&self.client, keys, args)).await?;
        if due == 1 {
            self.queue_event(user, kind, &body).await?;
        }
        Ok(())
    }

    /// Adds a connection to presence.
    pub(super) async fn register(&self, user: &UserId, conn: Uuid) -> Result<(), BackendError> {
        let conn = conn.to_string();
        let (a, b) = tokio::join!(
            self.change_presence(user, &conn, self.me(), true),
            self.client.hset::<(), _, _>(self.keys.node_conns(self.me()), (conn.as_str(), user.as_str())),
        );
        a?;
        b?;
        Ok(())
    }

    /// Removes a connection from presence; a failure is retried on the
    /// following heartbeats.
    pub(super) async fn unregister(&self, user: &UserId, conn: Uuid) -> Result<(), BackendError> {
        let id = conn.to_string();
        let (a, b) = tokio::join!(
            self.change_presence(user, &id, self.me(), false),
            self.client.hdel::<(), _, _>(self.keys.node_conns(self.me()), &id),
        );
        if let Err(error) = a.and(b.map_err(BackendError::from)) {
            self.unregister_later.lock().unwrap_or_else(|e| e.into_inner()).push((user.clone(), conn));
            return Err(error);
        }
        Ok(())
    }

    /// How many connections each user has on nodes taken for alive.
    pub(super) async fn online(&self, users: &[UserId]) -> Result<Vec<usize>, BackendError> {
        let lookups = users.iter().map(|user| async move {
            let nodes = self.nodes_of(user).await?;
            Ok::<_, BackendError>(nodes.iter().filter(|node| self.is_alive(node)).count())
        });
        futures_util::future::try_join_all(lookups).await
    }

    /// Puts every local connection back into presence.
    pub(super) async fn register_all(&self) -> Result<(), BackendError> {
        let registrations = self.local.registrations();
        let count = registrations.len();
        let results: Vec<Result<(), BackendError>> = futures_util::stream::iter(registrations)
            .map(|(user, conn)| async move { self.register(&user, conn).await })
            .buffer_unordered(FAN_OUT)
            .collect()
            .await;
        results.into_iter().collect::<Result<(), _>>()?;
        tracing::info!(connections = count, "registered local connections again");
        Ok(())
    }
}
