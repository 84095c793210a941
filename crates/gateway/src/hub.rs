//! The connections of this node, by user, each with its bounded outbox.
//!
//! Producers (the backend, routing for any sender) never wait on a
//! connection: they queue and move on. An outbox counts the bytes it holds;
//! past its limit the connection is a slow consumer and is told to close,
//! never silently skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use switchboard_presence::{Local, Push};
use switchboard_protocol::UserId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The sending half of one connection's queue.
#[derive(Clone)]
pub struct Outbox {
    conn: Uuid,
    tx: mpsc::UnboundedSender<Push>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    overflowed: CancellationToken,
}

/// The receiving half, owned by the connection task.
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Push>,
    queued: Arc<AtomicUsize>,
    /// Cancelled when a producer found the queue over its limit.
    pub overflowed: CancellationToken,
}

/// A connection's queue: at most `limit` bytes of pushes waiting.
pub fn outbox(conn: Uuid, limit: usize) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let overflowed = CancellationToken::new();
    (
        Outbox { conn, tx, queued: queued.clone(), limit, overflowed: overflowed.clone() },
        Inbox { rx, queued, overflowed },
    )
}

/// Approximate bytes a push takes once encoded.
fn cost(push: &Push) -> usize {
    match push {
        Push::Message(letter) => letter.delivery.body.json().len() + 256,
        Push::Receipt(_) => 128,
    }
}

impl Outbox {
    /// Queues `push`; false when the connection is gone or over its limit.
    pub fn push(&self, push: Push) -> bool {
        let size = cost(&push);
        if self.queued.fetch_add(size, Ordering::Relaxed) + size > self.limit {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            self.overflowed.cancel();
            return false;
        }
        self.tx.send(push).is_ok()
    }
}

impl Inbox {
    pub async fn recv(&mut self) -> Option<Push> {
        let push = self.rx.recv().await?;
        self.queued.fetch_sub(cost(&push), Ordering::Relaxed);
        Some(push)
    }

    pub fn try_recv(&mut self) -> Option<Push> {
        let push = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(cost(&push), Ordering::Relaxed);
        Some(push)
    }
}

/// Every local connection, by user.
#[derive(Default)]
pub struct Hub {
    users: DashMap<UserId, Vec<Outbox>>,
}

impl Hub {
    pub fn insert(&self, user: &UserId, outbox: Outbox) {
        self.users.entry(user.clone()).or_default().push(outbox);
    }

    pub fn remove(&self, user: &UserId, conn: Uuid) {
        self.users.remove_if_mut(user, |_, outboxes| {
            outboxes.retain(|o| o.conn != conn);
            outboxes.is_empty()
        });
    }
}

impl Local for Hub {
    fn push(&self, user: &UserId, push: &Push) -> usize {
        let Some(outboxes) = self.users.get(user) else {
            return 0;
        };
        outboxes.iter().filter(|outbox| outbox.push(push.clone())).count()
    }

    fn connections(&self, user: &UserId) -> usize {
        self.users.get(user).map_or(0, |outboxes| outboxes.len())
    }

    fn registrations(&self) -> Vec<(UserId, Uuid)> {
        self.users
            .iter()
            .flat_map(|entry| entry.value().iter().map(|o| (entry.key().clone(), o.conn)).collect::<Vec<_>>())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use switchboard_presence::Letter;
    use switchboard_protocol::{Body, Delivery, MsgId};

    use super::*;

    fn message(body_len: usize) -> Push {
        let body = Body::from_json(&format!("\"{}\"", "x".repeat(body_len))).unwrap();
        let user = UserId::parse("bob").unwrap();
        let delivery = Delivery { msg: MsgId::new(), from: user.clone(), to: user, body, ts: 0 };
        Push::Message(Arc::new(Letter {
            delivery: Arc::new(delivery),
            reply_to: None,
            received_us: 0,
            stored_as: None,
        }))
    }

    #[tokio::test]
    async fn an_outbox_over_its_limit_overflows_and_drops_nothing_queued() {
        let (outbox, mut inbox) = outbox(Uuid::now_v7(), 1000);
        assert!(outbox.push(message(100)));
        assert!(outbox.push(message(100)));
        assert!(!inbox.overflowed.is_cancelled());
        assert!(!outbox.push(message(600)));
        assert!(inbox.overflowed.is_cancelled());
        assert!(inbox.recv().await.is_some());
        assert!(inbox.try_recv().is_some());
        assert!(inbox.try_recv().is_none());
    }

    #[test]
    fn hub_reaches_every_connection_of_a_user() {
        let hub = Hub::default();
        let bob = UserId::parse("bob").unwrap();
        let (a, _ia) = outbox(Uuid::now_v7(), 1 << 20);
        let (b, _ib) = outbox(Uuid::now_v7(), 1 << 20);
        let b_conn = b.conn;
        hub.insert(&bob, a);
        hub.insert(&bob, b);
        assert_eq!(hub.push(&bob, &message(1)), 2);
        hub.remove(&bob, b_conn);
        assert_eq!(hub.connections(&bob), 1);
        assert_eq!(hub.push(&UserId::parse("carol").unwrap(), &message(1)), 0);
    }
}
