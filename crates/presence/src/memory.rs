//! The single-node backend: presence is the node's own connection table,
//! inboxes and dedupe records live in this process and die with it (a new
//! process has a new epoch, so clients learn that unacked messages are gone).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use switchboard_protocol::{AcceptStatus, ClientMsgId, Delivery, MsgId, UserId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::{
    Accepted, Ack, Counters, DEDUPE_WINDOW, Delivered, Letter, Local, Mode, Outgoing, Push, Settings, reached,
    receipt_for,
};

/// How often expired inbox entries and dedupe records are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

pub struct MemoryBackend {
    state: Arc<State>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

struct State {
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
    pub fn start(settings: Settings, local: Arc<dyn Local>, counters: Counters) -> Self {
        let state = Arc::new(State {
            settings,
            epoch: Uuid::now_v7(),
            local,
            counters,
            inboxes: DashMap::new(),
            sent: DashMap::new(),
        });
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(sweep(state.clone(), stop.clone()));
        tasks.close();
        Self { state, stop, tasks }
    }

    pub fn node_id(&self) -> &str {
        &self.state.settings.node_id
    }

    pub fn epoch(&self) -> Uuid {
        self.state.epoch
    }

    pub fn connect(&self, user: &UserId) -> Vec<Letter> {
        let now = Instant::now();
        let Some(mut inbox) = self.state.inboxes.get_mut(user) else { return Vec::new() };
        inbox.retain(|kept| kept.expires > now);
        inbox.iter().map(|kept| kept.letter.clone()).collect()
    }

    pub fn send(&self, outgoing: Outgoing) -> Accepted {
        self.state.send(outgoing)
    }

    pub fn ack(&self, ack: Ack) {
        self.state.ack(ack);
    }

    pub fn online(&self, users: &[UserId]) -> Vec<usize> {
        users.iter().map(|user| self.state.local.connections(user)).collect()
    }

    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

async fn sweep(state: Arc<State>, stop: CancellationToken) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => state.sweep(),
        }
    }
}

impl State {
    fn send(&self, outgoing: Outgoing) -> Accepted {
        let Outgoing { from, id, receipt, to, body, received_us } = outgoing;
        let reply_to = id.clone().filter(|_| receipt);
        let delivery = Arc::new(Delivery { msg: MsgId::new(), from: from.clone(), to, body, ts: received_us / 1000 });
        let letter = Letter { delivery, reply_to, received_us, stored_as: None };
        let Some(id) = id else { return self.route(letter) };

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
                reached(self.local.push(&to, &Push::Message(Arc::new(letter))))
            }
            Mode::Fast => {
                let status = reached(self.local.push(&to, &Push::Message(Arc::new(letter.clone()))));
                if status == AcceptStatus::Stored {
                    // The recipient may have connected, and read its inbox,
                    // between the push and the store: push once more (a
                    // connection skips what its replay already wrote).
                    self.store(letter.clone());
                    self.local.push(&to, &Push::Message(Arc::new(letter)));
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

    fn ack(&self, ack: Ack) {
        let removed = self.inboxes.get_mut(&ack.user).and_then(|mut inbox| {
            let at = inbox.iter().position(|kept| kept.letter.delivery.msg == ack.msg)?;
            inbox.remove(at).map(|kept| Delivered::from(&kept.letter))
        });
        // In durable mode only the first ack (of several devices) removes
        // the message, and only that one sends a receipt.
        let delivered = match self.settings.mode {
            Mode::Durable => removed,
            Mode::Fast => removed.or(ack.delivered),
        };
        if let Some(Delivered { from, reply_to: Some(reply_to), .. }) = delivered {
            self.local.push(&from, &receipt_for(ack.msg, reply_to));
        }
    }

    fn sweep(&self) {
        let now = Instant::now();
        self.sent.retain(|_, remembered| remembered.expires > now);
        self.inboxes.retain(|_, inbox| {
            inbox.retain(|kept| kept.expires > now);
            !inbox.is_empty()
        });
    }
}
