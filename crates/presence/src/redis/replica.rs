//! Where the other nodes' users are, as this node has heard: fast mode
//! routes a message to a live recipient without asking Redis.
//!
//! Every node tells every other node when a user's first connection on it
//! opens and when its last one closes (`Online`/`Offline` items in the
//! ordinary envelopes). A node starting reads each live node's reverse
//! index once, and reads a node's index again after envelopes from it went
//! missing. The replica is a hint, never the truth: a message routed to a
//! node where its recipient no longer is gets stored there, and a send that
//! finds nobody stores the message and routes it with what Redis says,
//! which corrects the replica (read repair).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use fred::interfaces::HashesInterface;
use switchboard_protocol::{Item, UserId};

use super::Inner;
use crate::BackendError;

/// User -> the other nodes holding its connections.
#[derive(Default)]
pub(super) struct Replica {
    users: DashMap<UserId, Vec<Arc<str>>>,
    /// Every node known to be alive but this one: who hears of our users.
    peers: RwLock<HashSet<Arc<str>>>,
}

impl Replica {
    /// The nodes `user` is on, as last heard.
    pub(super) fn nodes(&self, user: &UserId) -> Vec<Arc<str>> {
        self.users.get(user).map(|nodes| nodes.clone()).unwrap_or_default()
    }

    pub(super) fn online(&self, user: UserId, node: &str) {
        let mut nodes = self.users.entry(user).or_default();
        if !nodes.iter().any(|n| &**n == node) {
            nodes.push(Arc::from(node));
        }
    }

    pub(super) fn offline(&self, user: &UserId, node: &str) {
        self.users.remove_if_mut(user, |_, nodes| {
            nodes.retain(|n| &**n != node);
            nodes.is_empty()
        });
    }

    /// What Redis says of `user`'s nodes (other than `me`) replaces what
    /// was heard.
    pub(super) fn repair(&self, user: &UserId, nodes: &[Arc<str>], me: &str) {
        let others: Vec<Arc<str>> = nodes.iter().filter(|n| &***n != me).cloned().collect();
        if others.is_empty() {
            self.users.remove(user);
        } else {
            self.users.insert(user.clone(), others);
        }
    }

    /// Takes `node` out of every entry, then puts it back for `users`.
    pub(super) fn replace_node(&self, node: &str, users: impl IntoIterator<Item = UserId>) {
        self.forget_node(node);
        for user in users {
            self.online(user, node);
        }
    }

    pub(super) fn forget_node(&self, node: &str) {
        self.users.retain(|_, nodes| {
            nodes.retain(|n| &**n != node);
            !nodes.is_empty()
        });
    }

    pub(super) fn peers(&self) -> Vec<Arc<str>> {
        self.peers.read().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// A node heard from, or found alive in the directory; whether it is new.
    pub(super) fn add_peer(&self, node: &str) -> bool {
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        !peers.contains(node) && peers.insert(Arc::from(node))
    }

    pub(super) fn remove_peer(&self, node: &str) {
        self.peers.write().unwrap_or_else(|e| e.into_inner()).remove(node);
    }
}

impl Inner {
    /// Tells every peer `item` (a user's first connection here opened, or
    /// its last one closed; or this node started).
    pub(super) fn announce(self: &Arc<Self>, item: &Item) {
        for peer in self.replica.peers() {
            self.enqueue(&peer, item.clone());
        }
    }

    /// Reads `node`'s reverse index into the replica, in the background.
    pub(super) fn resnapshot(self: &Arc<Self>, node: String) {
        let inner = self.clone();
        self.tasks.spawn(async move {
            if let Err(error) = inner.snapshot(&node).await {
                inner.counters.backend_errors.inc();
                tracing::warn!(%error, node, "could not read a node's connections");
            }
        });
    }

    /// Reads `node`'s reverse index into the replica: what `node` holds
    /// now, as far as Redis says.
    pub(super) async fn snapshot(&self, node: &str) -> Result<(), BackendError> {
        let entries: HashMap<String, String> = Box::pin(self.client.hgetall(self.keys.node_conns(node))).await?;
        let users = entries.into_values().filter_map(|user| UserId::parse(&user).ok());
        self.replica.replace_node(node, users);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn online_offline_and_repairs() {
        let replica = Replica::default();
        replica.online(user("bob"), "b");
        replica.online(user("bob"), "c");
        replica.online(user("bob"), "b");
        assert_eq!(replica.nodes(&user("bob")).len(), 2);
        replica.offline(&user("bob"), "b");
        assert_eq!(replica.nodes(&user("bob")), vec![Arc::<str>::from("c")]);
        replica.repair(&user("bob"), &[Arc::from("a"), Arc::from("d")], "a");
        assert_eq!(replica.nodes(&user("bob")), vec![Arc::<str>::from("d")]);
        replica.replace_node("d", [user("carol")]);
        assert!(replica.nodes(&user("bob")).is_empty());
        assert_eq!(replica.nodes(&user("carol")).len(), 1);
        assert!(replica.add_peer("d") && !replica.add_peer("d"));
    }
}
