//! This node's liveness, and the death of others.
//!
//! Every `node-ttl`/3 the heartbeat refreshes this node's liveness key and
//! its place in the node directory, adopts a new epoch when Redis lost its
//! state (and registers every local connection again), sweeps nodes whose
//! liveness lapsed out of presence, and publishes a probe through this
//! node's own channel: readiness needs that probe back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fred::interfaces::{HashesInterface, KeysInterface, SortedSetsInterface};
use fred::types::{Expiration, SetOptions};
use futures_util::StreamExt;
use switchboard_protocol::{Item, UserId};
use uuid::Uuid;

use super::{FAN_OUT, Inner, now_ms, ttl_i64};
use crate::BackendError;

impl Inner {
    pub(super) async fn heartbeat(self: Arc<Self>) {
        let every = self.settings.node_ttl / 3;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = ticks.tick() => {}
                () = self.beat_now.notified() => {}
            }
            if let Err(error) = self.beat().await {
                self.counters.backend_errors.inc();
                tracing::warn!(%error, "heartbeat failed");
            }
        }
    }

    /// One heartbeat: liveness, epoch, directory of live nodes, sweep of
    /// dead ones, and a probe through our own channel.
    pub(super) async fn beat(self: &Arc<Self>) -> Result<(), BackendError> {
        let now = now_ms();
        let me = self.me();
        let was_alive: Option<String> = self
            .client
            .set(self.keys.node_alive(me), now, Some(Expiration::PX(ttl_i64(self.ttl_ms()))), None, true)
            .await?;
        let _: () = self.client.zadd(self.keys.nodes(), None, None, false, false, (now as f64, me)).await?;

        let stored: Option<String> = self.client.get(self.keys.epoch()).await?;
        let swept: Option<String> = self.client.getdel(self.keys.node_swept(me)).await?;
        let lapsed = was_alive.is_none() && self.last_beat_ms.load(Ordering::Relaxed) != 0;
        // Redis lost its state, our liveness key had lapsed, or another node
        // swept us while we were presumed dead (perhaps after we had
        // registered again): register everything again, and hand over what
        // was stored for our users meanwhile.
        self.adopt_epoch(stored).await?;
        let new_epoch = self.epoch_changed.swap(false, Ordering::AcqRel);
        if new_epoch || lapsed || swept.is_some() {
            self.register_all().await?;
            self.repair();
        }
        let failed: Vec<(UserId, Uuid)> =
            std::mem::take(&mut *self.unregister_later.lock().unwrap_or_else(|e| e.into_inner()));
        for (user, conn) in failed {
            let _ = self.unregister(&user, conn).await;
        }

        let cutoff = now.saturating_sub(self.ttl_ms()) as f64;
        let dead: Vec<String> = self.client.zrangebyscore(self.keys.nodes(), "-inf", cutoff, false, None).await?;
        for node in dead.iter().filter(|n| *n != me) {
            self.sweep(node).await?;
        }
        let dead: HashSet<String> = dead.into_iter().filter(|n| n != me).collect();
        let previously = std::mem::replace(&mut *self.dead.write().unwrap_or_else(|e| e.into_inner()), dead.clone());
        if !dead.is_subset(&previously) {
            // A node died: what it had accepted but not yet published is in
            // the logs of users who may be connected here.
            self.repair();
        }
        for node in dead.difference(&previously) {
            self.replica.remove_peer(node);
            self.replica.forget_node(node);
        }
        let alive: Vec<String> =
            self.client.zrangebyscore(self.keys.nodes(), format!("({cutoff}"), "+inf", false, None).await?;
        for node in alive.into_iter().filter(|n| n != me) {
            if self.replica.add_peer(&node) && self.last_beat_ms.load(Ordering::Relaxed) != 0 {
                self.resnapshot(node);
            }
        }

        self.enqueue(me, Item::Probe);
        self.forget_recent();
        self.forget_refreshes();
        self.last_beat_ms.store(now, Ordering::Relaxed);
        Ok(())
    }

    /// Compares the stored epoch with ours. When it is missing or another,
    /// Redis lost its state: adopt the stored one, proposing a new one if
    /// there is none. True when ours changed.
    pub(super) async fn adopt_epoch(&self, stored: Option<String>) -> Result<bool, BackendError> {
        let known = *self.epoch.read().unwrap_or_else(|e| e.into_inner());
        if stored.as_deref().and_then(|s| Uuid::try_parse(s).ok()) == Some(known) {
            return Ok(false);
        }
        let proposed = Uuid::now_v7().to_string();
        let _: Option<String> = self.client.set(self.keys.epoch(), proposed, None, Some(SetOptions::NX), false).await?;
        let epoch = parse_epoch(self.client.get(self.keys.epoch()).await?)?;
        let mut current = self.epoch.write().unwrap_or_else(|e| e.into_inner());
        if *current == epoch {
            return Ok(false);
        }
        *current = epoch;
        self.epoch_changed.store(true, Ordering::Release);
        tracing::warn!(%epoch, "redis lost its state: new epoch");
        Ok(true)
    }

    /// Removes a dead node's presence entries, unless another node does,
    /// and leaves it a marker to register again should it be alive.
    async fn sweep(&self, node: &str) -> Result<(), BackendError> {
        let alive: bool = self.client.exists(self.keys.node_alive(node)).await?;
        if alive {
            return Ok(());
        }
        let lock = Some(Expiration::PX(ttl_i64(self.ttl_ms())));
        let holder: Option<String> =
            self.client.set(self.keys.node_sweep(node), self.me(), lock, Some(SetOptions::NX), true).await?;
        if holder.is_some() {
            return Ok(());
        }
        let count = self.remove_entries(node).await?;
        let _: () = self.client.zrem(self.keys.nodes(), node).await?;
        let marker = Some(Expiration::PX(ttl_i64(self.ttl_ms().saturating_mul(10))));
        let _: () = self.client.set(self.keys.node_swept(node), self.me(), marker, None, false).await?;
        self.routes.remove(node);
        self.heard.lock().unwrap_or_else(|e| e.into_inner()).remove(node);
        tracing::info!(node, connections = count, "swept a dead node out of presence");
        Ok(())
    }

    /// Removes every presence entry of `node`, through its reverse index
    /// (each user whose last connection that was goes offline); how many
    /// there were.
    pub(super) async fn remove_entries(&self, node: &str) -> Result<usize, BackendError> {
        let entries: HashMap<String, String> = self.client.hgetall(self.keys.node_conns(node)).await?;
        let count = entries.len();
        let results: Vec<Result<(), BackendError>> = futures_util::stream::iter(entries)
            .filter_map(|(conn, user)| async move { UserId::parse(&user).ok().map(|user| (conn, user)) })
            .map(|(conn, user)| async move { self.change_presence(&user, &conn, node, false).await })
            .buffer_unordered(FAN_OUT)
            .collect()
            .await;
        results.into_iter().collect::<Result<(), _>>()?;
        let _: () = self.client.del(self.keys.node_conns(node)).await?;
        Ok(count)
    }

    /// Takes this node out of presence on a clean shutdown.
    pub(super) async fn deregister(&self) -> Result<(), BackendError> {
        let me = self.me();
        self.remove_entries(me).await?;
        let _: () = self.client.del(self.keys.node_alive(me)).await?;
        let _: () = self.client.zrem(self.keys.nodes(), me).await?;
        Ok(())
    }
}

pub(super) fn parse_epoch(value: Option<String>) -> Result<Uuid, BackendError> {
    value
        .and_then(|v| Uuid::try_parse(&v).ok())
        .ok_or_else(|| BackendError::Corrupt("epoch missing or not a UUID".to_owned()))
}
