//! The single-node backend: presence is the node's own connection table;
//! logs, device cursors and dedupe records live in this process and die
//! with it (a new process has a new epoch, so clients learn that what was
//! not acked is gone).

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use switchboard_protocol::{
    AcceptStatus, ClientMsgId, DeviceId, EventType, Letter, MsgId, StoredEvent, UserId, presence_event,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::cursor::Cursor;
use crate::events::{EventQueue, MemoryEvents, MemorySink};
use crate::{
    Accepted, Arrival, Connected, Connecting, Counters, DEDUPE_WINDOW, DeviceAck, Kick, Local, Mode, Outgoing, Push,
    Settings, expired, letter_of, reached, receipt_for,
};

/// How often expired log entries, devices and dedupe records are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

pub struct MemoryBackend {
    state: Arc<State>,
    /// The reading end of the event queue, until the delivery loop takes it.
    events: Mutex<Option<MemoryEvents>>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

struct State {
    settings: Settings,
    epoch: Uuid,
    local: Arc<dyn Local>,
    counters: Counters,
    logs: DashMap<UserId, Log>,
    /// Dedupe records by recipient, sender and send id.
    sent: DashMap<(UserId, UserId, ClientMsgId), Remembered>,
    /// Connections per user, counted apart from the hub so that a user's
    /// `user.online` and `user.offline` are decided, and queued, in one
    /// step with the count.
    present: DashMap<UserId, usize>,
    events: Option<MemorySink>,
}

/// One user's log. `seq` stays when the entries are gone, so seqs never
/// repeat in this process.
#[derive(Default)]
struct Log {
    /// The last seq given out.
    seq: u64,
    entries: VecDeque<(u64, Arc<Letter>)>,
    /// A user has a few devices: a list searched in order costs less
    /// memory per idle user than a map.
    devices: Vec<(DeviceId, Device)>,
    /// What the user's devices acked together: a message's receipt goes
    /// out when it first enters this.
    receipted: Cursor,
}

struct Device {
    cursor: Cursor,
    seen: Instant,
}

struct Remembered {
    msg: MsgId,
    status: AcceptStatus,
    expires: Instant,
    /// A device acked the message, which was not logged: its receipt went.
    receipted: bool,
}

impl MemoryBackend {
    pub fn start(settings: Settings, local: Arc<dyn Local>, counters: Counters) -> Self {
        let (sink, events) = match settings.events {
            Some(_) => {
                let (sink, events) = MemorySink::new();
                (Some(sink), Some(events))
            }
            None => (None, None),
        };
        let state = Arc::new(State {
            settings,
            epoch: Uuid::now_v7(),
            local,
            counters,
            logs: DashMap::new(),
            sent: DashMap::new(),
            present: DashMap::new(),
            events: sink,
        });
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(sweep(state.clone(), stop.clone()));
        tasks.close();
        Self { state, events: Mutex::new(events), stop, tasks }
    }

    /// The event queue, once (the delivery loop takes it); none when
    /// events are off.
    pub fn events(&self) -> Option<EventQueue> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).take().map(EventQueue::Memory)
    }

    pub fn node_id(&self) -> &str {
        &self.state.settings.node_id
    }

    pub fn epoch(&self) -> Uuid {
        self.state.epoch
    }

    pub fn connect(&self, connecting: &Connecting) -> Connected {
        let state = &self.state;
        state.count_presence(&connecting.user, true);
        let mut log = state.logs.entry(connecting.user.clone()).or_default();
        log.prune(&state.settings);
        let now = Instant::now();
        let mut cursor = match log.device(&connecting.device) {
            Some(device) => device.cursor.clone(),
            // New: it starts where every device seen lately has acked.
            None => log.acked_by_all().unwrap_or_default(),
        };
        // What is no longer in the log counts as acked: nothing would ever
        // fill the gap.
        let first = log.entries.iter().map(|(seq, _)| *seq).find(|seq| *seq > cursor.up_to);
        cursor.ack_up_to(first.map_or(log.seq, |seq| seq - 1));
        *log.device_mut(&connecting.device) = Device { cursor: cursor.clone(), seen: now };
        let from = connecting.since.map_or_else(|| cursor.clone(), Cursor::at);
        let replay = log.after(&from, &connecting.user);
        // Blocks live in `Local`, which refuses the upgrade on this, the only node.
        Connected { replay, epoch: state.epoch, seq: log.seq, cursor, blocked: false }
    }

    pub fn kick(&self, kick: &Kick) -> usize {
        self.state.local.kick(kick)
    }

    pub fn disconnect(&self, user: &UserId) {
        self.state.count_presence(user, false);
    }

    pub fn send(&self, outgoing: Outgoing) -> Accepted {
        self.state.send(outgoing)
    }

    pub fn ack(&self, ack: DeviceAck) {
        self.state.ack(ack);
    }

    pub fn read_log(&self, user: &UserId, after: u64) -> Vec<Arrival> {
        self.state.logs.get(user).map(|log| log.after(&Cursor::at(after), user)).unwrap_or_default()
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
    /// Counts a connection in or out of presence, and queues `user.online`
    /// or `user.offline` when that is the user's first or last one.
    fn count_presence(&self, user: &UserId, connected: bool) {
        let Some(events) = &self.events else { return };
        let node = &self.settings.node_id;
        // Queued while the count's entry is held, so a user's events are
        // queued in the order of its counts.
        let queue =
            |kind| events.push(user, kind, presence_event(kind, Uuid::now_v7(), crate::unix_millis(), user, node));
        match self.present.entry(user.clone()) {
            dashmap::Entry::Occupied(mut count) if connected => *count.get_mut() += 1,
            dashmap::Entry::Occupied(count) if *count.get() > 1 => *count.into_ref() -= 1,
            dashmap::Entry::Occupied(count) => {
                queue(EventType::UserOffline);
                count.remove();
            }
            dashmap::Entry::Vacant(vacant) if connected => {
                let _count = vacant.insert(1);
                queue(EventType::UserOnline);
            }
            dashmap::Entry::Vacant(_) => {}
        }
    }

    fn send(&self, outgoing: Outgoing) -> Accepted {
        let msg = MsgId::new();
        let letter = Arc::new(letter_of(&outgoing, msg, &self.settings.node_id));
        let mut duplicate = None;
        let recipients = outgoing
            .to
            .users()
            .iter()
            .map(|to| {
                let status = match (&outgoing.id, outgoing.ephemeral) {
                    (_, true) => self.deliver_live(to, &letter),
                    (None, false) => self.take(to, &letter),
                    (Some(id), false) => {
                        // The record stays locked while the message is
                        // taken, so two concurrent sends with one id cannot
                        // both go through.
                        let now = Instant::now();
                        let key = (to.clone(), outgoing.from.clone(), id.clone());
                        let mut record = self.sent.entry(key).or_insert_with(|| Remembered {
                            msg,
                            status: AcceptStatus::Stored,
                            expires: now,
                            receipted: false,
                        });
                        if record.expires > now {
                            duplicate = Some(record.msg);
                            record.status
                        } else {
                            let status = self.take(to, &letter);
                            *record = Remembered { msg, status, expires: now + DEDUPE_WINDOW, receipted: false };
                            status
                        }
                    }
                };
                (to.clone(), status)
            })
            .collect();
        Accepted::of(duplicate.unwrap_or(msg), recipients, duplicate.is_some())
    }

    /// An ephemeral letter: to whoever is connected now, and nowhere else.
    fn deliver_live(&self, to: &UserId, letter: &Arc<Letter>) -> AcceptStatus {
        let arrival = Arc::new(Arrival { letter: letter.clone(), to: to.clone(), seq: None });
        match self.local.push(to, &Push::Message(arrival)) {
            0 => AcceptStatus::Offline,
            _ => AcceptStatus::Routed,
        }
    }

    /// Logs the letter as the mode says and hands it to `to`'s connections.
    fn take(&self, to: &UserId, letter: &Arc<Letter>) -> AcceptStatus {
        let push = |seq| {
            self.local.push(to, &Push::Message(Arc::new(Arrival { letter: letter.clone(), to: to.clone(), seq })))
        };
        match self.settings.mode {
            Mode::Durable => reached(push(Some(self.append(to, letter)))),
            Mode::Fast => {
                let status = reached(push(None));
                if status == AcceptStatus::Stored {
                    // The recipient may have connected, and read its log,
                    // between the push and the append: push once more (a
                    // connection skips what its replay already wrote).
                    push(Some(self.append(to, letter)));
                }
                status
            }
        }
    }

    fn append(&self, to: &UserId, letter: &Arc<Letter>) -> u64 {
        let mut log = self.logs.entry(to.clone()).or_default();
        log.seq += 1;
        let seq = log.seq;
        log.entries.push_back((seq, letter.clone()));
        while log.entries.len() > self.settings.inbox_max_len {
            log.entries.pop_front();
        }
        self.counters.inbox_stored.inc();
        if let (Some(events), Some(settings)) = (&self.events, &self.settings.events)
            && self.local.connections(to) == 0
        {
            // Queued while the log is held, so in seq order.
            let body = settings.bodies.then_some(&letter.body);
            let event = StoredEvent::new(Uuid::now_v7(), crate::unix_millis(), letter.msg, &letter.from, to, body);
            events.push(to, EventType::MessageStored, event.render(seq));
        }
        seq
    }

    fn ack(&self, ack: DeviceAck) {
        let due = {
            let mut log = self.logs.entry(ack.user.clone()).or_default();
            let log = &mut *log;
            let device = log.device_mut(&ack.device);
            device.cursor.merge(&ack.cursor);
            device.seen = Instant::now();
            let cursor = device.cursor.clone();
            let earlier = log.receipted.clone();
            log.receipted.merge(&cursor);
            let due: BTreeSet<u64> = log.receipted.newly_acked(&earlier).into_iter().collect();
            log.prune(&self.settings);
            due
        };
        for acked in &ack.acked {
            let Some(reply) = &acked.reply else { continue };
            let first = match acked.seq {
                Some(seq) => due.contains(&seq),
                None => self.claim_receipt(&ack.user, &acked.from, &reply.id),
            };
            if first {
                self.local.push(&acked.from, &Push::Receipt(receipt_for(acked.msg, reply, &ack.user)));
            }
        }
    }

    /// Whether the ack of a live-only message is the first one, by its
    /// dedupe record: true once, and always once the record expired.
    fn claim_receipt(&self, to: &UserId, from: &UserId, id: &ClientMsgId) -> bool {
        match self.sent.get_mut(&(to.clone(), from.clone(), id.clone())) {
            Some(mut record) if record.expires > Instant::now() => !std::mem::replace(&mut record.receipted, true),
            _ => true,
        }
    }

    fn sweep(&self) {
        let now = Instant::now();
        self.sent.retain(|_, remembered| remembered.expires > now);
        for mut log in self.logs.iter_mut() {
            log.prune(&self.settings);
        }
    }
}

impl Log {
    fn device(&self, id: &DeviceId) -> Option<&Device> {
        self.devices.iter().find(|(known, _)| known == id).map(|(_, device)| device)
    }

    /// The device's entry, added (acked nothing, seen now) when it is new.
    fn device_mut(&mut self, id: &DeviceId) -> &mut Device {
        let at = match self.devices.iter().position(|(known, _)| known == id) {
            Some(at) => at,
            None => {
                self.devices.reserve_exact(1);
                self.devices.push((id.clone(), Device { cursor: Cursor::default(), seen: Instant::now() }));
                self.devices.len() - 1
            }
        };
        &mut self.devices[at].1
    }

    /// What every device seen lately acked; `None` when none was seen.
    fn acked_by_all(&self) -> Option<Cursor> {
        self.devices.iter().map(|(_, device)| device.cursor.clone()).reduce(|all, cursor| all.intersect(&cursor))
    }

    /// Forgets devices not seen within `device-ttl`, and drops what waited
    /// past `inbox-ttl` or what every remaining device acked.
    fn prune(&mut self, settings: &Settings) {
        self.devices.retain(|(_, device)| device.seen.elapsed() < settings.device_ttl);
        let trimmed = self.acked_by_all().map_or(0, |cursor| cursor.up_to);
        self.entries.retain(|(seq, letter)| *seq > trimmed && !expired(letter.ts, settings.inbox_ttl));
    }

    /// The entries `cursor` does not hold, oldest first.
    fn after(&self, cursor: &Cursor, user: &UserId) -> Vec<Arrival> {
        self.entries
            .iter()
            .filter(|(seq, _)| !cursor.contains(*seq))
            .map(|(seq, letter)| Arrival { letter: letter.clone(), to: user.clone(), seq: Some(*seq) })
            .collect()
    }
}
