//! From this node to the others: one publisher task per destination node
//! batches whatever is queued for it into one envelope per `SPUBLISH`, so
//! under load envelopes grow instead of publishes multiplying. A send's
//! recipients on one node travel as one item: one envelope per node per
//! send, whatever the number of recipients there. A publisher waits for no
//! flush window of its own: the sends that feed it were woken together by
//! one (the replies to a window's writes come back together), and while a
//! publish waits for its reply the next envelope fills. A second window
//! would only add its width to every message's latency.
//!
//! Fast mode sends live-only messages; when the recipient turns out to be
//! gone, the node that got the message stores it. A later send to that
//! user that this node stores itself first waits, through a fence, until
//! the other node is done, so the log keeps the send order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fred::interfaces::PubsubInterface;
use fred::types::Value;
use switchboard_protocol::{Addressee, Envelope, Item, Letter, Receipt, UserId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use super::store::{Reached, Taken};
use super::{COMMAND_TIMEOUT, Inner};
use crate::{Arrival, Push};

/// Items in one envelope at most.
const MAX_BATCH: usize = 256;

/// What a publisher's queue holds.
pub(super) enum Queued {
    Item(Item),
    /// Answered once everything queued before it has been handled.
    CaughtUp(oneshot::Sender<()>),
}

/// Where a user's live-only messages went lately.
pub(super) struct Recent {
    nodes: Vec<Arc<str>>,
    at: Instant,
}

impl Inner {
    /// Hands `letter` to each recipient's connections: on this node
    /// directly, on every other node in one item per node. How many places
    /// each recipient was reached at (a node taken for dead counts for
    /// none).
    ///
    /// A node taken for dead gets the item all the same: it may be back
    /// before this node's next heartbeat says so. A publish that finds
    /// nobody leaves a logged message in the log, and has the publisher
    /// store a live-only one (in order, after what it stored before).
    pub(super) fn deliver(
        self: &Arc<Self>,
        letter: &Arc<Letter>,
        routes: Vec<(UserId, Option<u64>, Vec<Arc<str>>)>,
    ) -> Reached {
        let mut reached = Reached::with_capacity(routes.len());
        let mut remote: HashMap<Arc<str>, Vec<Addressee>> = HashMap::new();
        for (user, seq, nodes) in routes {
            let mut count = 0;
            for node in nodes {
                if *node == *self.me() {
                    let arrival = Arrival { letter: letter.clone(), to: user.clone(), seq };
                    count += self.local.push(&user, &Push::Message(Arc::new(arrival)));
                } else {
                    count += usize::from(self.is_alive(&node));
                    remote.entry(node).or_default().push(Addressee { user: user.clone(), seq });
                }
            }
            reached.insert(user, count);
        }
        for (node, to) in remote {
            self.enqueue(&node, Item::Deliver { letter: letter.clone(), to });
        }
        reached
    }

    /// Sends a receipt to its sender on `node`, where the send came from.
    pub(super) fn send_receipt(self: &Arc<Self>, node: &str, to: UserId, receipt: Arc<Receipt>) {
        if node == self.me() {
            if self.local.push(&to, &Push::Receipt(receipt.clone())) > 0 {
                return;
            }
        } else if self.is_alive(node) {
            self.enqueue(node, Item::Receipt { to, receipt: (*receipt).clone() });
            return;
        }
        // The sender is no longer where it sent from: wherever it is now.
        let _ = self.bounces.send(super::Bounce::Receipt { to, receipt });
    }

    /// Queues `item` for `node`'s publisher, starting it on first use.
    pub(super) fn enqueue(self: &Arc<Self>, node: &str, item: Item) {
        if self.closing.is_cancelled() {
            return;
        }
        let tx = self
            .routes
            .entry(node.to_owned())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                self.publishers.spawn(self.clone().publish(node.to_owned(), rx));
                tx
            })
            .clone();
        let _ = tx.send(Queued::Item(item));
    }

    /// Completes once the publishers of `nodes` have handled everything
    /// queued to them so far (or after two command timeouts).
    pub(super) async fn publishers_caught_up(&self, nodes: impl Iterator<Item = &str>) {
        let waits: Vec<_> = nodes
            .filter_map(|node| {
                let queue = self.routes.get(node)?;
                let (done, caught_up) = oneshot::channel();
                queue.send(Queued::CaughtUp(done)).ok()?;
                Some(caught_up)
            })
            .collect();
        let _ = tokio::time::timeout(COMMAND_TIMEOUT * 2, futures_util::future::join_all(waits)).await;
    }

    /// Notes that live-only messages for `user` went to `nodes`.
    pub(super) fn sent_live(&self, user: &UserId, nodes: &[Arc<str>]) {
        let remote: Vec<Arc<str>> = nodes.iter().filter(|node| ***node != *self.me()).cloned().collect();
        if remote.is_empty() {
            return;
        }
        let recent = Recent { nodes: remote, at: Instant::now() };
        self.recent.lock().unwrap_or_else(|e| e.into_inner()).insert(user.clone(), recent);
    }

    /// Waits until the nodes that lately got live-only messages for `user`
    /// have handled them: a dead one's messages are stored by this node's
    /// publisher, a live one stores them itself and answers a fence.
    pub(super) async fn settle(self: &Arc<Self>, user: &UserId) {
        let Some(recent) = self.recent.lock().unwrap_or_else(|e| e.into_inner()).remove(user) else { return };
        if recent.at.elapsed() > COMMAND_TIMEOUT * 2 {
            return;
        }
        let (dead, alive): (Vec<Arc<str>>, Vec<Arc<str>>) = recent.nodes.into_iter().partition(|n| !self.is_alive(n));
        let fences: Vec<_> = alive
            .iter()
            .map(|node| {
                let id = self.next_fence.fetch_add(1, Ordering::Relaxed);
                let (done, fenced) = oneshot::channel();
                self.fences.lock().unwrap_or_else(|e| e.into_inner()).insert(id, done);
                self.enqueue(node, Item::Fence { id });
                (id, fenced)
            })
            .collect();
        let ids: Vec<u64> = fences.iter().map(|(id, _)| *id).collect();
        let waits = fences.into_iter().map(|(_, fenced)| fenced);
        let all = async {
            tokio::join!(
                self.publishers_caught_up(dead.iter().map(|node| &**node)),
                futures_util::future::join_all(waits)
            )
        };
        let _ = tokio::time::timeout(COMMAND_TIMEOUT * 2, all).await;
        let mut fences = self.fences.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            fences.remove(&id);
        }
    }

    /// A fence this node sent was answered.
    pub(super) fn fenced(&self, id: u64) {
        if let Some(done) = self.fences.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
            let _ = done.send(());
        }
    }

    /// Forgets where live-only messages went, once too long ago to matter.
    pub(super) fn forget_recent(&self) {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, recent| recent.at.elapsed() < COMMAND_TIMEOUT * 2);
    }

    /// One destination's publisher: batches what is queued, publishes, and
    /// stores what a gone node can no longer take.
    async fn publish(self: Arc<Self>, node: String, mut queue: mpsc::UnboundedReceiver<Queued>) {
        let channel = self.keys.node_channel(&node);
        // A new stream for every publisher: a receiver restarts its sequence
        // check instead of mistaking a restarted publisher for an old one.
        let stream = Uuid::now_v7();
        let mut seq = 0u64;
        loop {
            let first = tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                queued = queue.recv() => match queued {
                    Some(queued) => queued,
                    None => return,
                },
            };
            let mut items = Vec::new();
            let mut caught_up = None;
            let mut next = Some(first);
            while let Some(queued) = next {
                match queued {
                    Queued::Item(item) => items.push(item),
                    Queued::CaughtUp(done) => {
                        caught_up = Some(done);
                        break;
                    }
                }
                next = if items.len() < MAX_BATCH { queue.try_recv().ok() } else { None };
            }
            if !items.is_empty() {
                seq += 1;
                if node != self.me() {
                    self.counters.envelope_items.observe(items.len() as f64);
                    self.counters.envelopes_out.inc();
                }
                self.publish_batch(&node, &channel, Envelope { node: self.me().to_owned(), stream, seq, items }).await;
            }
            if let Some(done) = caught_up {
                let _ = done.send(());
            }
        }
    }

    /// Publishes one envelope to `node`; what a gone node could not take
    /// is handled here.
    async fn publish_batch(self: &Arc<Self>, node: &str, channel: &str, envelope: Envelope) {
        let bytes = match envelope.encode() {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, "envelope does not encode");
                return;
            }
        };
        match Box::pin(self.client.spublish::<i64, _, _>(channel, Value::Bytes(bytes.into()))).await {
            Ok(0) if node != self.me() => {
                tracing::info!(node, "no subscriber on the node's channel: treating it as gone");
                self.dead.write().unwrap_or_else(|e| e.into_inner()).insert(node.to_owned());
                self.undeliverable(envelope.items).await;
            }
            Ok(_) => {}
            Err(error) => {
                self.counters.backend_errors.inc();
                tracing::warn!(%error, node, "publish failed");
                self.undeliverable(envelope.items).await;
            }
        }
    }

    /// What could not be handed to a gone node. Logged messages stay in the
    /// logs; live-only ones are stored now, in order, until the backend
    /// stops (a node shutting down with Redis gone does not wait out a
    /// timeout per message); receipts go wherever their sender is now;
    /// fences are answered, since nothing more will happen there; an
    /// ephemeral message is dropped; a kick has nothing to close there.
    async fn undeliverable(self: &Arc<Self>, items: Vec<Item>) {
        for item in items {
            match item {
                Item::Deliver { letter, to } if !letter.ephemeral => {
                    for addressee in to.into_iter().filter(|a| a.seq.is_none()) {
                        let kept = tokio::select! {
                            biased;
                            () = self.stop.cancelled() => {
                                self.counters.backend_errors.inc();
                                tracing::warn!("shutting down: a fast-mode message for a gone node not stored");
                                continue;
                            }
                            kept = self.store_bounced(&letter, &addressee.user) => kept,
                        };
                        match kept {
                            Ok(Taken::Route { seq, nodes }) => {
                                self.replica.repair(&addressee.user, &nodes, self.me());
                                let nodes = nodes.into_iter().filter(|n| self.is_alive(n)).collect();
                                self.deliver(&letter, vec![(addressee.user, seq, nodes)]);
                            }
                            Ok(Taken::Duplicate { .. }) => {}
                            Err(error) => {
                                self.counters.backend_errors.inc();
                                tracing::warn!(%error, msg = %letter.msg, "fast-mode message lost: cannot store it");
                            }
                        }
                    }
                }
                Item::Receipt { to, receipt } => {
                    let _ = self.bounces.send(super::Bounce::Receipt { to, receipt: Arc::new(receipt) });
                }
                // Our own fence: what preceded it is handled above.
                Item::Fence { id } => self.fenced(id),
                Item::Deliver { .. }
                | Item::Fenced { .. }
                | Item::Probe
                | Item::Online { .. }
                | Item::Offline { .. }
                | Item::Hello
                | Item::Disconnect { .. }
                | Item::Disconnected { .. } => {}
            }
        }
    }
}
