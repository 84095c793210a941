//! Registrations: which connection of which user is on which node, in
//! the user's presence hash and the node's reverse index.

use fred::interfaces::HashesInterface;
use futures_util::StreamExt;
use switchboard_protocol::UserId;
use uuid::Uuid;

use super::{FAN_OUT, Inner};
use crate::BackendError;

impl Inner {
    /// Adds a connection to presence.
    pub(super) async fn register(&self, user: &UserId, conn: Uuid) -> Result<(), BackendError> {
        let conn = conn.to_string();
        let (a, b) = tokio::join!(
            self.client.hset::<(), _, _>(self.keys.user_conns(user), (conn.as_str(), self.me())),
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
            self.client.hdel::<(), _, _>(self.keys.user_conns(user), &id),
            self.client.hdel::<(), _, _>(self.keys.node_conns(self.me()), &id),
        );
        if let Err(error) = a.and(b) {
            self.unregister_later.lock().unwrap_or_else(|e| e.into_inner()).push((user.clone(), conn));
            return Err(error.into());
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
