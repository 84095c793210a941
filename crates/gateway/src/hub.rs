//! The connections of this node, by user, each with its bounded outbox.
//!
//! Producers (the backend, routing for any sender) never wait on a
//! connection: they queue and move on. An outbox counts the bytes it holds;
//! past its limit the connection is a slow consumer and is told to close,
//! never silently skipped. A kick tells a connection to close the same way.
//!
//! The hub also keeps the users whose upgrades this node refuses for a
//! while (`POST /v1/disconnect` with `block_s`): checked at every upgrade,
//! so it lives in memory, not one Redis round trip away.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dashmap::DashMap;
use switchboard_presence::{Kick, Local, Push};
use switchboard_protocol::{DeviceId, UserId};
use tokio::sync::Notify;
use uuid::Uuid;

/// One connection's queue, shared by its producers and the connection. It
/// is a few words until something is queued: an idle connection should
/// cost little, and most connections are idle.
#[derive(Default)]
struct Queue {
    pushes: Mutex<VecDeque<Push>>,
    /// Approximate bytes of the pushes waiting.
    bytes: AtomicUsize,
    /// Set when a producer found the queue over its limit.
    overflowed: AtomicBool,
    /// Set when the connection was kicked.
    kicked: AtomicBool,
    /// Set when the connection ended: producers stop queueing.
    closed: AtomicBool,
    /// Wakes the connection: a push arrived, the queue overflowed, or a
    /// kick came.
    wake: Notify,
}

/// The producers' side of one connection's queue.
#[derive(Clone)]
pub struct Outbox {
    conn: Uuid,
    device: DeviceId,
    queue: Arc<Queue>,
    limit: usize,
}

/// The connection's side.
pub struct Inbox {
    queue: Arc<Queue>,
}

/// Why a connection must stop taking pushes.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The queue was over its limit: the connection is a slow consumer.
    Overflowed,
    /// `POST /v1/disconnect` named it.
    Kicked,
}

/// The queue of connection `conn` of `device`: at most `limit` bytes of
/// pushes waiting.
pub fn outbox(conn: Uuid, device: DeviceId, limit: usize) -> (Outbox, Inbox) {
    let queue = Arc::new(Queue::default());
    (Outbox { conn, device, queue: queue.clone(), limit }, Inbox { queue })
}

/// Approximate bytes a push takes once encoded.
fn cost(push: &Push) -> usize {
    match push {
        Push::Message(arrival) => arrival.letter.body.json().len() + 256,
        Push::Receipt(_) => 128,
        Push::Repair => 0,
    }
}

impl Outbox {
    /// Queues `push`; false when the connection is gone or over its limit.
    pub fn push(&self, push: Push) -> bool {
        let queue = &self.queue;
        if queue.closed.load(Ordering::Relaxed) {
            return false;
        }
        let size = cost(&push);
        if queue.bytes.fetch_add(size, Ordering::Relaxed) + size > self.limit {
            queue.bytes.fetch_sub(size, Ordering::Relaxed);
            queue.overflowed.store(true, Ordering::Release);
            queue.wake.notify_one();
            return false;
        }
        queue.pushes.lock().unwrap_or_else(|e| e.into_inner()).push_back(push);
        queue.wake.notify_one();
        true
    }

    /// Tells the connection to close; false when it is gone already.
    fn kick(&self) -> bool {
        let queue = &self.queue;
        if queue.closed.load(Ordering::Relaxed) {
            return false;
        }
        queue.kicked.store(true, Ordering::Release);
        queue.wake.notify_one();
        true
    }
}

impl Inbox {
    /// The next push, waiting for one; an error once the connection must
    /// stop.
    pub async fn recv(&self) -> Result<Push, Stop> {
        loop {
            self.check()?;
            if let Some(push) = self.try_recv() {
                return Ok(push);
            }
            // A wake-up that comes before this wait is kept as a permit.
            self.queue.wake.notified().await;
        }
    }

    /// The next push, if one is waiting.
    pub fn try_recv(&self) -> Option<Push> {
        let push = self.queue.pushes.lock().unwrap_or_else(|e| e.into_inner()).pop_front()?;
        self.queue.bytes.fetch_sub(cost(&push), Ordering::Relaxed);
        Some(push)
    }

    /// Completes once the connection must stop.
    pub async fn stopped(&self) -> Stop {
        loop {
            if let Err(stop) = self.check() {
                return stop;
            }
            self.queue.wake.notified().await;
        }
    }

    /// Takes no more pushes and drops those waiting: the connection is
    /// ending and will write none of them.
    pub fn close(&self) {
        self.queue.closed.store(true, Ordering::Relaxed);
        let dropped = std::mem::take(&mut *self.queue.pushes.lock().unwrap_or_else(|e| e.into_inner()));
        self.queue.bytes.fetch_sub(dropped.iter().map(cost).sum(), Ordering::Relaxed);
    }

    fn check(&self) -> Result<(), Stop> {
        if self.queue.kicked.load(Ordering::Acquire) {
            Err(Stop::Kicked)
        } else if self.queue.overflowed.load(Ordering::Acquire) {
            Err(Stop::Overflowed)
        } else {
            Ok(())
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.queue.closed.store(true, Ordering::Relaxed);
    }
}

/// Every local connection, by user.
#[derive(Default)]
pub struct Hub {
    users: DashMap<UserId, Vec<Outbox>>,
    /// Users whose upgrades are refused, until when.
    blocked: DashMap<UserId, Instant>,
}

impl Hub {
    /// Adds a connection; whether it is the user's first here.
    pub fn insert(&self, user: &UserId, outbox: Outbox) -> bool {
        // Most users hold one connection: room for one until a second comes.
        let mut outboxes = self.users.entry(user.clone()).or_insert_with(|| Vec::with_capacity(1));
        outboxes.push(outbox);
        outboxes.len() == 1
    }

    /// Whether `user`'s upgrades are refused now.
    pub fn is_blocked(&self, user: &UserId) -> bool {
        if self.blocked.is_empty() {
            return false;
        }
        let now = Instant::now();
        self.blocked.remove_if(user, |_, until| *until <= now);
        self.blocked.contains_key(user)
    }

    /// Removes a connection; whether it was the user's last here.
    pub fn remove(&self, user: &UserId, conn: Uuid) -> bool {
        self.users
            .remove_if_mut(user, |_, outboxes| {
                outboxes.retain(|o| o.conn != conn);
                outboxes.is_empty()
            })
            .is_some()
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

    fn kick(&self, kick: &Kick) -> usize {
        if let Some(block) = kick.block {
            let now = Instant::now();
            self.blocked.retain(|_, until| *until > now);
            self.blocked.insert(kick.user.clone(), now + block);
        }
        let Some(outboxes) = self.users.get(&kick.user) else {
            return 0;
        };
        let named = |outbox: &&Outbox| kick.device.as_ref().is_none_or(|device| *device == outbox.device);
        outboxes.iter().filter(named).filter(|outbox| outbox.kick()).count()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use switchboard_presence::Arrival;
    use switchboard_protocol::{Body, Letter, MsgId};

    use super::*;

    fn message(body_len: usize) -> Push {
        let body = Body::from_json(&format!("\"{}\"", "x".repeat(body_len))).unwrap();
        let user = UserId::parse("bob").unwrap();
        let letter = Letter {
            msg: MsgId::new(),
            from: user.clone(),
            body,
            ts: 0,
            reply: None,
            received_us: 0,
            ephemeral: false,
        };
        Push::Message(Arc::new(Arrival { letter: Arc::new(letter), to: user, seq: None }))
    }

    #[tokio::test]
    async fn an_outbox_over_its_limit_overflows_and_drops_nothing_queued() {
        let (outbox, inbox) = outbox(Uuid::now_v7(), DeviceId::default_device(), 1000);
        assert!(outbox.push(message(100)));
        assert!(outbox.push(message(100)));
        assert!(inbox.check().is_ok());
        assert!(!outbox.push(message(600)));
        assert_eq!(inbox.stopped().await, Stop::Overflowed);
        assert_eq!(inbox.recv().await.err(), Some(Stop::Overflowed));
        assert!(inbox.try_recv().is_some());
        assert!(inbox.try_recv().is_some());
        assert!(inbox.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_push_wakes_a_waiting_connection_and_a_closed_one_takes_none() {
        let (outbox, inbox) = outbox(Uuid::now_v7(), DeviceId::default_device(), 1 << 20);
        let waiting = tokio::spawn(async move { (inbox.recv().await.is_ok(), inbox) });
        tokio::task::yield_now().await;
        assert!(outbox.push(message(10)));
        let (received, inbox) = waiting.await.unwrap();
        assert!(received);
        drop(inbox);
        assert!(!outbox.push(message(10)));
    }

    #[test]
    fn hub_reaches_every_connection_of_a_user() {
        let hub = Hub::default();
        let bob = UserId::parse("bob").unwrap();
        let (a, _ia) = outbox(Uuid::now_v7(), DeviceId::default_device(), 1 << 20);
        let (b, _ib) = outbox(Uuid::now_v7(), DeviceId::default_device(), 1 << 20);
        let b_conn = b.conn;
        assert!(hub.insert(&bob, a));
        assert!(!hub.insert(&bob, b));
        assert_eq!(hub.push(&bob, &message(1)), 2);
        assert!(!hub.remove(&bob, b_conn));
        assert_eq!(hub.connections(&bob), 1);
        assert_eq!(hub.push(&UserId::parse("carol").unwrap(), &message(1)), 0);
    }

    #[tokio::test]
    async fn a_kick_stops_the_named_device_and_a_block_refuses_the_user_until_it_ends() {
        let hub = Hub::default();
        let bob = UserId::parse("bob").unwrap();
        let (phone, laptop) = (DeviceId::parse("phone").unwrap(), DeviceId::parse("laptop").unwrap());
        let (a, ia) = outbox(Uuid::now_v7(), phone.clone(), 1 << 20);
        let (b, ib) = outbox(Uuid::now_v7(), laptop, 1 << 20);
        hub.insert(&bob, a);
        hub.insert(&bob, b);
        assert!(outbox_push(&hub, &bob));

        let kick = Kick { user: bob.clone(), device: Some(phone), block: None };
        assert_eq!(hub.kick(&kick), 1);
        assert_eq!(ia.stopped().await, Stop::Kicked);
        assert_eq!(ia.recv().await.err(), Some(Stop::Kicked), "a kick wins over what is queued");
        assert!(ib.check().is_ok());
        assert!(!hub.is_blocked(&bob));

        let kick = Kick { user: bob.clone(), device: None, block: Some(std::time::Duration::from_millis(50)) };
        ia.close();
        assert_eq!(hub.kick(&kick), 1, "a closed connection is not counted");
        assert_eq!(ib.stopped().await, Stop::Kicked);
        assert!(hub.is_blocked(&bob));
        assert!(!hub.is_blocked(&UserId::parse("carol").unwrap()));
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert!(!hub.is_blocked(&bob));
    }

    fn outbox_push(hub: &Hub, user: &UserId) -> bool {
        hub.push(user, &message(10)) == 2
    }
}
