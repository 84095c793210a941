//! The single-node backend: presence is the node's own connection table,
//! inboxes and dedupe records live in this process and die with it (a new
//! process has a new epoch, so clients learn that unacked messages are gone).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use switchboard_protocol::{AcceptStatus, ClientMsgId, Delivery, MsgId, Receipt, ReceiptStatus, UserId};
use uuid::Uuid;

use crate::{Accepted, Ack, Counters, DEDUPE_WINDOW, Letter, Local, Mode, Outgoing, Push, Settings};

pub struct MemoryBackend {
    settings: Settings,
    epoch: Uuid,
    local: Arc<dyn Local>,
    counters: Counters,
    inboxes: DashMap<UserId, VecDeque<Kept>>,
    sent: DashMap<(UserId, ClientMsgId), Remembered>,
}

struct Kept {
    letter: Letter,
    expires: Instant,
}

struct Remembered {
    accepted: Accepted,
    expires: Instant,
}

impl MemoryBackend {
    pub fn new(settings: Settings, local: Arc<dyn Local>, counters: Counters) -> Self {
        Self { settings, epoch: Uuid::now_v7(), local, counters, inboxes: DashMap::new(), sent: DashMap::new() }
    }

    pub fn node_id(&self) -> &str {
        &self.settings.node_id
    }

    pub fn epoch(&self) -> Uuid {
        self.epoch
    }

    pub fn connect(&self, user: &UserId, _conn: Uuid) -> Vec<Letter> {
        let now = Instant::now();
        let Some(mut inbox) = self.inboxes.get_mut(user) else {
            return Vec::new();
        };
        inbox.retain(|kept| kept.expires > now);
        inbox.iter().map(|kept| kept.letter.clone()).collect()
    }

    pub fn disconnect(&self, _user: &UserId, _conn: Uuid) {}

    pub fn send(&self, outgoing: Outgoing) -> Accepted {
        let Outgoing { from, id, to, body, received_us } = outgoing;
        let delivery = Arc::new(Delivery { msg: MsgId::new(), from: from.clone(), to, body, ts: received_us / 1000 });
        let letter = Letter { delivery, reply_to: id.clone(), received_us };
        let Some(id) = id else {
            return self.route(letter);
        };

        let now = Instant::now();
        // The dedupe entry stays locked while the message is routed, so two
        // concurrent sends with one id cannot both go through.
        let mut entry = self.sent.entry((from, id)).or_insert_with(|| Remembered {
            accepted: Accepted { msg: letter.delivery.msg, status: AcceptStatus::Stored, duplicate: false },
            expires: now,
        });
        if entry.expires > now {
            return Accepted { duplicate: true, ..entry.accepted };
        }
        let accepted = self.route(letter);
        *entry = Remembered { accepted, expires: now + DEDUPE_WINDOW };
        accepted
    }

    fn route(&self, letter: Letter) -> Accepted {
        let msg = letter.delivery.msg;
        let to = letter.delivery.to.clone();
        let status = match self.settings.mode {
            Mode::Durable => {
                self.store(letter.clone());
                reached(self.local.push(&to, &Push::Message(letter)))
            }
            Mode::Fast => {
                let status = reached(self.local.push(&to, &Push::Message(letter.clone())));
                if status == AcceptStatus::Stored {
                    self.store(letter);
                }
                status
            }
        };
        Accepted { msg, status, duplicate: false }
    }

    fn store(&self, letter: Letter) {
        let expires = Instant::now() + self.settings.inbox_ttl;
        let mut inbox = self.inboxes.entry(letter.delivery.to.clone()).or_default();
        inbox.push_back(Kept { letter, expires });
        while inbox.len() > self.settings.inbox_max_len {
            inbox.pop_front();
        }
        self.counters.inbox_stored.inc();
    }

    pub fn ack(&self, ack: Ack) {
        let removed = self.inboxes.get_mut(&ack.user).is_some_and(|mut inbox| {
            let before = inbox.len();
            inbox.retain(|kept| kept.letter.delivery.msg != ack.msg);
            inbox.len() < before
        });
        // In durable mode only the first ack (of several devices) removes
        // the message, and only that one sends a receipt.
        let due = removed || self.settings.mode == Mode::Fast;
        if let (true, Some((sender, id))) = (due, ack.reply) {
            let receipt = Receipt { id, msg: ack.msg, status: ReceiptStatus::Delivered };
            self.local.push(&sender, &Push::Receipt(Arc::new(receipt)));
        }
    }

    pub fn online(&self, users: &[UserId]) -> Vec<usize> {
        users.iter().map(|user| self.local.connections(user)).collect()
    }

    pub fn maintain(&self) {
        let now = Instant::now();
        self.sent.retain(|_, remembered| remembered.expires > now);
        self.inboxes.retain(|_, inbox| {
            inbox.retain(|kept| kept.expires > now);
            !inbox.is_empty()
        });
    }
}

fn reached(connections: usize) -> AcceptStatus {
    if connections > 0 { AcceptStatus::Routed } else { AcceptStatus::Stored }
}

/// Now, in microseconds since the Unix epoch.
pub fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
