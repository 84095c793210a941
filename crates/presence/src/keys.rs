//! The Redis layout, cluster-ready: every per-user key carries the user id
//! as its hash tag and every per-node key the node id, so each multi-key
//! script stays on one slot and no single key is hot for all users.
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `{p}u:{user}:conns` | hash | connection id -> node id |
//! | `{p}u:{user}:log` | stream | logged messages, entry id `0-<seq>`, field `m` = MessagePack `Letter` |
//! | `{p}u:{user}:seq` | string | the user's last seq (kept while the log may expire) |
//! | `{p}u:{user}:dev` | hash | per device `c:<device>` cursor, `t:<device>` last seen (ms); expires `device-ttl` after the last refresh |
//! | `{p}u:{user}:sent:{from}:{id}` | string | dedupe record `msg:status`, 10 min |
//! | `{p}u:{user}:block` | string | the user's upgrades are refused; expires with the block |
//! | `{p}n:{node}:alive` | string | liveness, expires after `node-ttl` |
//! | `{p}n:{node}:conns` | hash | connection id -> user id (reverse index) |
//! | `{p}n:{node}:sweep` | string | lock of the one node sweeping this dead node |
//! | `{p}n:{node}:swept` | string | left by a sweep: the node, if alive, registers again |
//! | `{p}n:{node}:ch` | channel | sharded pub/sub channel of the node |
//! | `{p}wh:{shard}:q` | stream | queued events of the users of one shard, fields `u` user, `t` type, `e` body; consumer group `switchboard` |
//! | `{p}wh:{shard}:lease` | string | the node delivering the shard's events, expires after `node-ttl` |
//! | `{p}nodes` | sorted set | node id -> last heartbeat (ms), the node directory |
//! | `{p}epoch` | string | the life of the stored state |

use switchboard_protocol::{ClientMsgId, UserId};

pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    pub fn user_conns(&self, user: &UserId) -> String {
        format!("{}u:{{{user}}}:conns", self.prefix)
    }

    pub fn log(&self, user: &UserId) -> String {
        format!("{}u:{{{user}}}:log", self.prefix)
    }

    pub fn seq(&self, user: &UserId) -> String {
        format!("{}u:{{{user}}}:seq", self.prefix)
    }

    pub fn devices(&self, user: &UserId) -> String {
        format!("{}u:{{{user}}}:dev", self.prefix)
    }

    pub fn block(&self, user: &UserId) -> String {
        format!("{}u:{{{user}}}:block", self.prefix)
    }

    /// Kept in the recipient's slot, so that the dedupe check, the log
    /// write and the presence lookup are one atomic script.
    pub fn sent(&self, to: &UserId, from: &UserId, id: &ClientMsgId) -> String {
        format!("{}u:{{{to}}}:sent:{from}:{id}", self.prefix)
    }

    pub fn node_alive(&self, node: &str) -> String {
        format!("{}n:{{{node}}}:alive", self.prefix)
    }

    pub fn node_conns(&self, node: &str) -> String {
        format!("{}n:{{{node}}}:conns", self.prefix)
    }

    pub fn node_sweep(&self, node: &str) -> String {
        format!("{}n:{{{node}}}:sweep", self.prefix)
    }

    pub fn node_swept(&self, node: &str) -> String {
        format!("{}n:{{{node}}}:swept", self.prefix)
    }

    pub fn node_channel(&self, node: &str) -> String {
        format!("{}n:{{{node}}}:ch", self.prefix)
    }

    /// One shard of the event queue; its own hash tag, so the shards spread
    /// over a Cluster's masters.
    pub fn events(&self, shard: u16) -> String {
        format!("{}wh:{{{shard}}}:q", self.prefix)
    }

    pub fn events_lease(&self, shard: u16) -> String {
        format!("{}wh:{{{shard}}}:lease", self.prefix)
    }

    pub fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    pub fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = open + key[open..].find('}').unwrap();
        &key[open + 1..close]
    }

    #[test]
    fn per_user_keys_share_the_user_slot() {
        let keys = Keys::new("sb:");
        let (bob, alice) = (UserId::parse("bob").unwrap(), UserId::parse("alice").unwrap());
        let id = ClientMsgId::parse("{evil}").unwrap();
        assert_eq!(keys.log(&bob), "sb:u:{bob}:log");
        for key in
            [keys.log(&bob), keys.seq(&bob), keys.devices(&bob), keys.user_conns(&bob), keys.sent(&bob, &alice, &id)]
        {
            assert_eq!(tag(&key), "bob", "{key}");
        }
        for key in [keys.node_alive("n1"), keys.node_conns("n1"), keys.node_channel("n1"), keys.node_sweep("n1")] {
            assert_eq!(tag(&key), "n1", "{key}");
        }
        assert_eq!((tag(&keys.events(3)), tag(&keys.events_lease(3))), ("3", "3"));
    }
}
