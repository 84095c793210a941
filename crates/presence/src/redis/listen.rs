//! From the other nodes to this one: the subscriber reads this node's
//! channel, each envelope's sequence number is checked against the last one
//! heard from its node, and its items are handed to local connections.
//!
//! The subscriber is read on the node's own runtime: fred's reader moves
//! each payload into the subscriber's broadcast buffer, and this task
//! takes it from there. If the buffer overflowed anyway, or the subscriber
//! reconnected, envelopes are gone: every local connection reads its log
//! again past what it has (a repair).
//!
//! A live-only message whose recipient has no connection here any more is
//! stored by the bouncer task, in arrival order; a fence from another node
//! is answered by the bouncer too, once everything before it is stored and
//! routed on.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fred::interfaces::{EventInterface, PubsubInterface};
use fred::types::Message;
use switchboard_protocol::{Envelope, Item, Letter, Receipt, UserId};
use tokio::sync::{broadcast, mpsc};

use super::store::Taken;
use super::{Inner, now_ms};
use crate::{Arrival, Kick, Push};

/// Envelopes handled in one turn of the listener, between moves of what
/// the subscriber buffered.
const LISTEN_TURN: usize = 64;

/// What the listener leaves to the bouncer.
pub(super) enum Bounce {
    /// A live-only letter whose recipient has no connection here, from
    /// `node`, whose replica is wrong.
    Letter { letter: Arc<Letter>, to: UserId, node: String },
    /// A receipt whose sender is not on the node it sent from.
    Receipt { to: UserId, receipt: Arc<Receipt> },
    /// To be answered with `Fenced` once what came before is handled.
    Fence { node: String, id: u64 },
}

impl Inner {
    /// Reads this node's channel until the backend stops. `messages` is
    /// the subscriber's stream, opened before the first heartbeat so that
    /// its probe, published at once, is not missed.
    ///
    /// Every turn first moves whatever the subscriber buffered into a queue
    /// of its own, then handles a bounded number of envelopes and lets the
    /// other tasks run: fred's reader fills its fixed buffer a socket read
    /// at a time, and a burst handled envelope by envelope would overtake
    /// the buffer; moving them only keeps up with the reader.
    pub(super) async fn listen(self: Arc<Self>, mut messages: broadcast::Receiver<Message>) {
        let mut reconnects = self.subscriber.reconnect_rx();
        let mut backlog: VecDeque<Message> = VecDeque::new();
        loop {
            if backlog.is_empty() {
                tokio::select! {
                    biased;
                    () = self.stop.cancelled() => return,
                    message = messages.recv() => match message {
                        Ok(message) => backlog.push_back(message),
                        Err(broadcast::error::RecvError::Lagged(missed)) => self.lagged(missed),
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = reconnects.recv() => self.reconnected().await,
                }
            }
            loop {
                match messages.try_recv() {
                    Ok(message) => backlog.push_back(message),
                    Err(broadcast::error::TryRecvError::Lagged(missed)) => self.lagged(missed),
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Closed) => return,
                }
            }
            if reconnects.try_recv().is_ok() {
                self.reconnected().await;
            }
            for message in backlog.drain(..backlog.len().min(LISTEN_TURN)) {
                self.read(&message);
            }
            if !backlog.is_empty() {
                tokio::task::yield_now().await;
            }
        }
    }

    fn lagged(&self, missed: u64) {
        // The sequence check counts the gap; repair now in case nothing
        // follows the lost envelopes.
        tracing::warn!(missed, "subscriber fell behind: envelopes lost");
        self.repair();
    }

    /// Subscribes to this node's channel. Also on every reconnect: fred's
    /// own resubscriber sends a `SUBSCRIBE` for the plain channels first,
    /// which fails when there are none.
    pub(super) async fn subscribe(&self) -> Result<(), fred::error::Error> {
        self.subscriber.ssubscribe(self.keys.node_channel(&self.settings.node_id)).await
    }

    async fn reconnected(&self) {
        // Whatever was published while disconnected is gone.
        tracing::info!("redis subscriber reconnected");
        if let Err(error) = self.subscribe().await {
            // The next reconnect tries again; meanwhile other nodes find no
            // subscriber on the channel and store what they route here.
            tracing::warn!(%error, "could not subscribe to the node channel again");
        }
        self.repair();
    }

    fn read(self: &Arc<Self>, message: &Message) {
        match message.value.as_bytes().map(Envelope::decode) {
            Some(Ok(envelope)) => self.receive(envelope),
            Some(Err(error)) => tracing::warn!(%error, "ignoring a malformed envelope"),
            None => tracing::warn!(channel = %message.channel, "ignoring a non-binary envelope"),
        }
    }

    fn receive(self: &Arc<Self>, envelope: Envelope) {
        if envelope.node != self.me() {
            self.counters.envelopes_in.inc();
        }
        let gap = {
            let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
            let last = heard.entry(envelope.node.clone()).or_insert((envelope.stream, envelope.seq - 1));
            let gap = if last.0 == envelope.stream { envelope.seq.saturating_sub(last.1 + 1) } else { 0 };
            if last.0 != envelope.stream || envelope.seq > last.1 {
                *last = (envelope.stream, envelope.seq);
            }
            gap
        };
        if gap > 0 {
            self.counters.route_gaps.inc_by(gap);
            tracing::warn!(node = envelope.node, gap, "envelopes missing from a node");
            self.repair();
        }
        // A node heard of for the first time, or whose news went missing:
        // what it holds, from Redis.
        if (self.replica.add_peer(&envelope.node) || gap > 0) && envelope.node != self.me() {
            self.resnapshot(envelope.node.clone());
        }
        for item in envelope.items {
            match item {
                Item::Deliver { letter, to } => {
                    for addressee in to {
                        let arrival =
                            Arrival { letter: letter.clone(), to: addressee.user.clone(), seq: addressee.seq };
                        let reached = self.local.push(&addressee.user, &Push::Message(Arc::new(arrival)));
                        // A logged message waits in the log; a live-only one
                        // is stored here, unless it is ephemeral.
                        if reached == 0 && addressee.seq.is_none() && !letter.ephemeral {
                            let (letter, to, node) = (letter.clone(), addressee.user, envelope.node.clone());
                            let _ = self.bounces.send(Bounce::Letter { letter, to, node });
                        }
                    }
                }
                Item::Receipt { to, receipt } => {
                    self.local.push(&to, &Push::Receipt(Arc::new(receipt)));
                }
                Item::Probe => self.last_probe_ms.store(now_ms(), Ordering::Relaxed),
                Item::Fence { id } => {
                    let _ = self.bounces.send(Bounce::Fence { node: envelope.node.clone(), id });
                }
                Item::Fenced { id } => self.fenced(id),
                Item::Disconnect { id, user, device, block_ms } => {
                    let closed = self.local.kick(&Kick { user, device, block: block_ms.map(Duration::from_millis) });
                    self.enqueue(&envelope.node, Item::Disconnected { id, closed: closed as u64 });
                }
                Item::Disconnected { id, closed } => {
                    if let Some(answers) = self.kicks.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
                        let _ = answers.send(closed);
                    }
                }
                Item::Online { user } => self.replica.online(user, &envelope.node),
                Item::Offline { user } => self.replica.offline(&user, &envelope.node),
                Item::Hello => {}
            }
        }
    }

    /// Handles what the listener left, one at a time, in order.
    pub(super) async fn bouncer(self: Arc<Self>, mut queue: mpsc::UnboundedReceiver<Bounce>) {
        // Nodes bounced messages were routed on to since the last fence.
        let mut routed: HashSet<Arc<str>> = HashSet::new();
        loop {
            let bounce = tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                bounce = queue.recv() => match bounce {
                    Some(bounce) => bounce,
                    None => return,
                },
            };
            match bounce {
                Bounce::Letter { letter, to, node } => match self.store_bounced(&letter, &to).await {
                    Ok(Taken::Route { seq, nodes }) => {
                        // The sender's node took `to` to be here: it is not.
                        self.enqueue(&node, Item::Offline { user: to.clone() });
                        self.replica.repair(&to, &nodes, self.me());
                        let nodes: Vec<Arc<str>> = nodes.into_iter().filter(|node| self.is_alive(node)).collect();
                        routed.extend(nodes.iter().filter(|node| ***node != *self.me()).cloned());
                        self.deliver(&letter, vec![(to, seq, nodes)]);
                    }
                    Ok(Taken::Duplicate { .. }) => {}
                    Err(error) => {
                        self.counters.backend_errors.inc();
                        tracing::warn!(%error, msg = %letter.msg, "fast-mode message lost: cannot store it");
                    }
                },
                Bounce::Receipt { to, receipt } => match self.nodes_of(&to).await {
                    Ok(nodes) => {
                        for node in nodes.iter().filter(|node| ***node != *self.me() && self.is_alive(node)) {
                            self.enqueue(node, Item::Receipt { to: to.clone(), receipt: (*receipt).clone() });
                        }
                    }
                    Err(error) => {
                        self.counters.backend_errors.inc();
                        tracing::warn!(%error, "receipt lost: cannot look up its sender");
                    }
                },
                Bounce::Fence { node, id } => {
                    self.publishers_caught_up(routed.iter().map(|node| &**node)).await;
                    routed.clear();
                    self.enqueue(&node, Item::Fenced { id });
                }
            }
        }
    }

    /// Asks every local connection to read its log again past what it has:
    /// envelopes may have been lost.
    pub(super) fn repair(&self) {
        let users: HashSet<UserId> = self.local.registrations().into_iter().map(|(user, _)| user).collect();
        for user in &users {
            self.local.push(user, &Push::Repair);
        }
        tracing::info!(users = users.len(), "local connections read their logs again");
    }
}
