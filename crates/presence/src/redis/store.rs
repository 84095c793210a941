//! What must be in Redis before the sender hears `accepted`, and what acks
//! change there.
//!
//! A logged message is one entry of the `append` script: its dedupe check,
//! its seq, its log entry and, for a recipient with no live connection
//! while events are on, its `message.stored` event, in one atomic step on
//! the recipient's slot,
//! followed in the same step by a lookup of where the recipient is,
//! so that a message stored while its recipient connects is found by the
//! recipient's replay or routed to its new connection. The appends of one
//! flush window go in one script call (per slot on Redis Cluster). A
//! fast-mode message to a live recipient costs its dedupe record alone: a
//! plain `SET NX GET`, or, for a send to many users, a line of the
//! window's script call, so that a hundred recipients are one command, not
//! a hundred.
//!
//! The acks of one window are one script call too (per slot): each device's
//! cursor and a claim on the dedupe record of each message whose sender
//! waits for a receipt (the first claim sends it); from time to time a trim
//! of the log follows.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fred::bytes::Bytes;
use fred::error::ErrorKind;
use fred::interfaces::{ClientLike, HashesInterface, KeysInterface, LuaInterface, StreamsInterface};
use fred::types::scripts::Script;
use fred::types::{Expiration, SetOptions, Value};
use futures_util::future::try_join_all;
use switchboard_protocol::{AcceptStatus, DeviceId, EventType, Letter, MsgId, StoredEvent, UserId};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{COMMAND_TIMEOUT, Inner, millis, now_ms};
use crate::cursor::Cursor;
use crate::{
    Accepted, Arrival, BackendError, Connected, Connecting, DEDUPE_WINDOW, DeviceAck, Mode, Outgoing, expired,
    letter_of, receipt_for,
};

/// A user's log expiry is refreshed at most this often by one node (and
/// set this much past `inbox-ttl`); entries older than `inbox-ttl` are
/// skipped when read.
const REFRESH_EVERY: Duration = Duration::from_secs(3600);

/// Appends in one script call at most.
const MAX_APPENDS: usize = 128;

pub(super) struct Scripts {
    pub(super) presence: Script,
    append: Script,
    ack: Script,
    connect: Script,
    trim: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            presence: Script::from_lua(include_str!("presence.lua")),
            append: Script::from_lua(include_str!("append.lua")),
            ack: Script::from_lua(include_str!("ack.lua")),
            connect: Script::from_lua(concat!(include_str!("cursors.lua"), include_str!("connect.lua"))),
            trim: Script::from_lua(concat!(include_str!("cursors.lua"), include_str!("trim.lua"))),
        }
    }
}

/// A write waiting for its flush window: a log entry, its dedupe record,
/// or both.
pub(super) struct Append {
    user: UserId,
    /// The dedupe key and the record to leave there.
    dedupe: Option<(String, String)>,
    /// None for a dedupe record alone.
    entry: Option<Bytes>,
    /// Its `message.stored` event, queued if the recipient has no live
    /// connection; none when events are off.
    event: Option<StoredEvent>,
    done: oneshot::Sender<Result<Appended, BackendError>>,
}

/// What the script did with one write, and where its recipient is.
enum Appended {
    /// A repeated send id: nothing was logged.
    Duplicate(String),
    /// A new dedupe record, with no entry to log.
    Recorded,
    Logged {
        seq: u64,
        nodes: Vec<Arc<str>>,
    },
}

/// What became of a send for one recipient.
pub(super) enum Taken {
    /// The id was seen before: the original answer.
    Duplicate { msg: MsgId, status: AcceptStatus },
    /// To hand to the recipient's connections on `nodes` (this node among
    /// them, when it holds some).
    Route { seq: Option<u64>, nodes: Vec<Arc<str>> },
}

impl Inner {
    pub(super) async fn send(self: &Arc<Self>, outgoing: Outgoing) -> Result<Accepted, BackendError> {
        let msg = MsgId::new();
        let letter = Arc::new(letter_of(&outgoing, msg, self.me()));
        let logs = !outgoing.ephemeral;
        // Encoded once for every recipient it is logged for, if any.
        let entry = LogEntry { letter: &letter, bytes: OnceLock::new() };
        let users = outgoing.to.users();
        let taken = match users {
            [to] => vec![self.take(&outgoing, to, &entry).await?],
            _ => try_join_all(users.iter().map(|to| self.take(&outgoing, to, &entry))).await?,
        };
        let mut duplicate = None;
        let mut recipients = Vec::with_capacity(users.len());
        let mut routes = Vec::with_capacity(users.len());
        // Recipients whose dedupe record guessed `routed`, from presence.
        let mut guessed = Vec::new();
        for (to, taken) in users.iter().zip(taken) {
            match taken {
                Taken::Duplicate { msg, status } => {
                    duplicate = Some(msg);
                    recipients.push((to.clone(), status));
                }
                Taken::Route { seq, nodes } => {
                    if !nodes.is_empty() {
                        guessed.push(to);
                    }
                    recipients.push((to.clone(), if logs { AcceptStatus::Stored } else { AcceptStatus::Offline }));
                    routes.push((to.clone(), seq, nodes));
                }
            }
        }
        let reached = self.deliver(&letter, routes);
        for (to, status) in &mut recipients {
            if reached.get(to).is_some_and(|count| *count > 0) {
                *status = AcceptStatus::Routed;
            }
        }
        if let (Some(id), true) = (&outgoing.id, logs) {
            // Those whose presence entries all belonged to dead nodes.
            let wrong =
                recipients.iter().filter(|(to, status)| *status == AcceptStatus::Stored && guessed.contains(&to));
            for (to, _) in wrong {
                self.correct_record(&self.keys.sent(to, &outgoing.from, id), msg).await;
            }
        }
        Ok(Accepted::of(duplicate.unwrap_or(msg), recipients, duplicate.is_some()))
    }

    /// Dedupes, logs as the mode says, and finds one recipient.
    ///
    /// Fast mode asks Redis only for the dedupe record when the replica
    /// knows where the recipient is; otherwise the message is logged, and
    /// routed where Redis says the recipient is.
    async fn take(
        self: &Arc<Self>,
        outgoing: &Outgoing,
        to: &UserId,
        entry: &LogEntry<'_>,
    ) -> Result<Taken, BackendError> {
        let sent = outgoing.id.as_ref().map(|id| self.keys.sent(to, &outgoing.from, id));
        let live = self.live_nodes(to);
        if outgoing.ephemeral {
            // Where the recipient is now, and nothing else.
            return Ok(Taken::Route { seq: None, nodes: live });
        }
        // The dedupe record's status is a guess from the replica, checked
        // once the message is routed.
        let guess = if live.is_empty() { AcceptStatus::Stored } else { AcceptStatus::Routed };
        let record = |key: String| (key, format!("{}:{}", entry.letter.msg, guess.as_str()));
        if self.settings.mode == Mode::Durable {
            return self.append(to, entry, sent.map(record), live.is_empty()).await;
        }
        if live.is_empty() {
            // Nobody live: stored, after whatever this node sent the user
            // live before has been handled, so that it does not overtake it.
            Box::pin(self.settle(to)).await;
            let taken = self.append(to, entry, sent.map(record), true).await?;
            if let Taken::Route { nodes, .. } = &taken {
                self.replica.repair(to, nodes, self.me());
            }
            return Ok(taken);
        }
        if let Some(dedupe) = sent.map(record)
            && let Some(previous) = self.record(to, dedupe, outgoing.to.users().len() > 1).await?
        {
            return parse_record(&previous);
        }
        self.sent_live(to, &live);
        Ok(Taken::Route { seq: None, nodes: live })
    }

    /// Leaves a dedupe record unless there is one: the previous record if
    /// so. A plain `SET NX GET` costs Redis less than a line of a script;
    /// the records of a send to many users (`listed`) go with the window's
    /// script call instead of one command each.
    async fn record(
        &self,
        to: &UserId,
        (key, record): (String, String),
        listed: bool,
    ) -> Result<Option<String>, BackendError> {
        if listed {
            return match Box::pin(self.write(to, Some((key, record)), None, None)).await? {
                Appended::Duplicate(previous) => Ok(Some(previous)),
                Appended::Recorded => Ok(None),
                Appended::Logged { .. } => Err(corrupt("append reply")),
            };
        }
        let expiry = Some(Expiration::PX(super::ttl_i64(millis(DEDUPE_WINDOW))));
        self.window.wait().await;
        Ok(Box::pin(self.client.set(key, record, expiry, Some(SetOptions::NX), true)).await?)
    }

    /// Where `to`'s connections are, by this node's hub and its replica,
    /// without the nodes taken for dead.
    fn live_nodes(&self, to: &UserId) -> Vec<Arc<str>> {
        let mut nodes = self.replica.nodes(to);
        nodes.retain(|node| self.is_alive(node));
        if self.local.connections(to) > 0 {
            nodes.push(self.me_shared());
        }
        nodes
    }

    /// Logs `entry` for `to` (with the flush window's other appends), then
    /// looks `to` up. `offline`: this node knows of no live connection of
    /// `to`, so its `message.stored` event is likely and goes with the
    /// append, to be queued in the script.
    async fn append(
        &self,
        to: &UserId,
        entry: &LogEntry<'_>,
        dedupe: Option<(String, String)>,
        offline: bool,
    ) -> Result<Taken, BackendError> {
        let event = offline.then(|| self.stored_event(to, entry.letter)).flatten();
        match self.write(to, dedupe, Some(entry.bytes()?), event).await? {
            Appended::Duplicate(previous) => parse_record(&previous),
            Appended::Logged { seq, nodes } => {
                self.counters.inbox_stored.inc();
                Ok(Taken::Route { seq: Some(seq), nodes })
            }
            Appended::Recorded => Err(corrupt("append reply")),
        }
    }

    /// Queues a write for the flush window and waits for the script's
    /// answer to it.
    async fn write(
        &self,
        to: &UserId,
        dedupe: Option<(String, String)>,
        entry: Option<Bytes>,
        event: Option<StoredEvent>,
    ) -> Result<Appended, BackendError> {
        let (done, appended) = oneshot::channel();
        let append = Append { user: to.clone(), dedupe, entry, event, done };
        self.appends.lock().unwrap_or_else(|e| e.into_inner()).push(append);
        self.window.wait().await;
        // The first of the window to get here writes them all.
        let batch = std::mem::take(&mut *self.appends.lock().unwrap_or_else(|e| e.into_inner()));
        if !batch.is_empty() {
            Box::pin(self.run_appends(batch)).await;
        }
        appended.await.unwrap_or_else(|_| Err(corrupt("append dropped")))
    }

    /// Runs one window's appends: one script call per slot (all of them in
    /// one without Cluster), which also reads where each recipient is.
    async fn run_appends(&self, batch: Vec<Append>) {
        let groups = self.by_slot(batch, |append| &append.user);
        futures_util::future::join_all(groups.into_iter().map(|group| self.run_append_group(group))).await;
    }

    /// Splits a window's writes into those for one script call each: by
    /// the slot of their users (all in one without Cluster), at most
    /// `MAX_APPENDS` in one.
    fn by_slot<T>(&self, items: Vec<T>, user: impl Fn(&T) -> &UserId) -> Vec<Vec<T>> {
        let mut groups: HashMap<u16, Vec<T>> = HashMap::new();
        let clustered = self.client.is_clustered();
        for item in items {
            let slot = if clustered { fred::util::redis_keyslot(self.keys.log(user(&item)).as_bytes()) } else { 0 };
            groups.entry(slot).or_default().push(item);
        }
        groups
            .into_values()
            .flat_map(|group| {
                let mut chunks = Vec::new();
                let mut group = group.into_iter().peekable();
                while group.peek().is_some() {
                    chunks.push(group.by_ref().take(MAX_APPENDS).collect());
                }
                chunks
            })
            .collect()
    }

    async fn run_append_group(&self, group: Vec<Append>) {
        let mut keys = Vec::with_capacity(group.len() * 5);
        let mut args: Vec<Value> = Vec::with_capacity(group.len() * 7 + 1);
        for append in &group {
            let (seq, log) = (self.keys.seq(&append.user), self.keys.log(&append.user));
            let (dedupe, record) = match &append.dedupe {
                Some((key, record)) => (key.clone(), record.clone()),
                None => (seq.clone(), String::new()),
            };
            let (head, tail) =
                append.event.as_ref().map_or_else(Default::default, |e| (e.head.clone(), e.tail.clone()));
            args.extend([
                record.into(),
                append.entry.clone().map_or_else(|| "".into(), Value::Bytes),
                self.settings.inbox_max_len.to_string().into(),
                self.log_expiry(&append.user).into(),
                append.user.as_str().into(),
                head.into(),
                tail.into(),
            ]);
            keys.extend([log, seq, dedupe, self.keys.user_conns(&append.user), self.event_stream(&append.user)]);
        }
        args.push(millis(DEDUPE_WINDOW).to_string().into());
        if self.settings.events.is_some() {
            args.push("1".into());
            args.extend(self.dead.read().unwrap_or_else(|e| e.into_inner()).iter().map(|node| node.as_str().into()));
        } else {
            args.push("0".into());
        }
        let answers = loop {
            let run = self.client.evalsha::<Vec<Value>, _, _, _>(
                self.scripts.append.sha1().clone(),
                keys.clone(),
                args.clone(),
            );
            // Bounded here too: a send is answered within the command
            // timeout even when the client retries the call on a new
            // connection (a resend with the same id is deduped).
            let run = tokio::time::timeout(COMMAND_TIMEOUT, Box::pin(run));
            let answered = run.await.unwrap_or_else(|_| Err(fred::error::Error::new(ErrorKind::Timeout, "append")));
            match answered {
                Err(error) if error.details().starts_with("NOSCRIPT") => {
                    if let Err(error) = Box::pin(self.scripts.append.load(&self.client)).await {
                        break Err(error.into());
                    }
                }
                answers => break answers.map_err(BackendError::from),
            }
        };
        match answers {
            Ok(answers) if answers.len() == group.len() => {
                for (append, answer) in group.into_iter().zip(answers) {
                    let appended = match answer {
                        Value::Array(logged) => match parse_logged(logged) {
                            Some((seq, due, nodes)) => {
                                // An event is due that the script could not
                                // queue: on Cluster, or the recipient left a
                                // moment ago.
                                if due {
                                    self.queue_due(&append, seq).await;
                                }
                                Ok(Appended::Logged { seq, nodes })
                            }
                            None => Err(corrupt("append reply")),
                        },
                        Value::Integer(0) if append.entry.is_none() => Ok(Appended::Recorded),
                        previous => {
                            previous.into_string().map(Appended::Duplicate).ok_or_else(|| corrupt("append reply"))
                        }
                    };
                    let _ = append.done.send(appended);
                }
            }
            Ok(_) => group.into_iter().for_each(|append| drop(append.done.send(Err(corrupt("append reply"))))),
            Err(error) => group.into_iter().for_each(|append| drop(append.done.send(Err(error.clone())))),
        }
    }

    /// Queues the `message.stored` event the append script found due and
    /// could not queue. The message is logged whatever becomes of it.
    async fn queue_due(&self, append: &Append, seq: u64) {
        let event = append.event.clone().or_else(|| {
            let letter = Letter::decode(append.entry.as_ref()?).ok()?;
            self.stored_event(&append.user, &letter)
        });
        let Some(event) = event else { return };
        let body = event.render(seq);
        if let Err(error) = self.queue_event(&append.user, EventType::MessageStored, &body).await {
            self.counters.backend_errors.inc();
            tracing::warn!(%error, "message.stored event not queued");
        }
    }

    /// The `message.stored` event of `letter` for `to`; none when events
    /// are off.
    fn stored_event(&self, to: &UserId, letter: &Letter) -> Option<StoredEvent> {
        let events = self.settings.events.as_ref()?;
        let body = events.bodies.then_some(&letter.body);
        Some(StoredEvent::new(Uuid::now_v7(), now_ms(), letter.msg, &letter.from, to, body))
    }

    /// Logs a live-only message whose recipient was not where it was sent:
    /// no dedupe (the sender's node recorded it), routed where the
    /// recipient is now.
    pub(super) async fn store_bounced(&self, letter: &Letter, to: &UserId) -> Result<Taken, BackendError> {
        Box::pin(self.append(to, &LogEntry { letter, bytes: OnceLock::new() }, None, true)).await
    }

    /// The nodes holding `to`'s connections, as presence lists them.
    pub(super) async fn nodes_of(&self, to: &UserId) -> Result<Vec<Arc<str>>, BackendError> {
        let nodes: Vec<String> = Box::pin(self.client.hvals(self.keys.user_conns(to))).await?;
        Ok(nodes.into_iter().map(Arc::from).collect())
    }

    /// A dedupe record that guessed `routed` for a send that reached nobody.
    async fn correct_record(&self, key: &str, msg: MsgId) {
        let record = format!("{msg}:{}", AcceptStatus::Stored.as_str());
        let corrected: Result<Option<String>, _> =
            Box::pin(self.client.set(key, record, Some(Expiration::KEEPTTL), Some(SetOptions::XX), false)).await;
        if let Err(error) = corrected {
            self.counters.backend_errors.inc();
            tracing::warn!(%error, "dedupe record not corrected");
        }
    }

    /// The log's expiry to set with this append: none when this node set
    /// it lately.
    fn log_expiry(&self, to: &UserId) -> String {
        let every = REFRESH_EVERY.min(self.settings.inbox_ttl / 4);
        let now = tokio::time::Instant::now();
        let mut refreshed = self.refreshed.lock().unwrap_or_else(|e| e.into_inner());
        if refreshed.get(to).is_some_and(|at| now.duration_since(*at) < every) {
            return "0".to_owned();
        }
        refreshed.insert(to.clone(), now);
        millis(self.settings.inbox_ttl + every).to_string()
    }

    /// Forgets refreshes older than the refresh interval.
    pub(super) fn forget_refreshes(&self) {
        let every = REFRESH_EVERY.min(self.settings.inbox_ttl / 4);
        let now = tokio::time::Instant::now();
        self.refreshed.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, at| now.duration_since(*at) < every);
    }

    /// Marks a device seen and reads what it has not acked: the user's
    /// latest seq, the device's cursor and the replay.
    pub(super) async fn open_log(&self, connecting: &Connecting) -> Result<Connected, BackendError> {
        let user = &connecting.user;
        let keys = vec![self.keys.devices(user), self.keys.log(user), self.keys.seq(user), self.keys.block(user)];
        let args: Vec<Value> = vec![
            connecting.device.as_str().into(),
            now_ms().to_string().into(),
            connecting.since.map_or_else(String::new, |since| since.to_string()).into(),
            millis(self.settings.device_ttl).to_string().into(),
            self.settings.inbox_max_len.to_string().into(),
        ];
        let reply: Value = Box::pin(self.scripts.connect.evalsha_with_reload(&self.client, keys, args)).await?;
        let mut parts = match reply {
            Value::Array(parts) => parts,
            Value::Null => {
                return Ok(Connected {
                    replay: Vec::new(),
                    epoch: Uuid::nil(),
                    seq: 0,
                    cursor: Cursor::default(),
                    blocked: true,
                });
            }
            _ => return Err(corrupt("connect reply")),
        };
        let entries = parts.pop().ok_or_else(|| corrupt("connect reply"))?;
        let cursor = parts.pop().and_then(|v| v.into_string()).and_then(|text| Cursor::from_text(&text));
        let cursor = cursor.ok_or_else(|| corrupt("connect reply"))?;
        let seq = parts.pop().and_then(|v| v.as_u64()).ok_or_else(|| corrupt("connect reply"))?;
        let skip = if connecting.since.is_some() { Cursor::default() } else { cursor.clone() };
        let replay = self.arrivals(user, entries)?.into_iter().filter(|a| a.seq.is_none_or(|s| !skip.contains(s)));
        Ok(Connected { replay: replay.collect(), epoch: Uuid::nil(), seq, cursor, blocked: false })
    }

    /// The user's logged messages after `after`, oldest first.
    pub(super) async fn read_log(&self, user: &UserId, after: u64) -> Result<Vec<Arrival>, BackendError> {
        let count = u64::try_from(self.settings.inbox_max_len).unwrap_or(u64::MAX);
        let entries: Value = self.client.xrange(self.keys.log(user), format!("(0-{after}"), "+", Some(count)).await?;
        self.arrivals(user, entries)
    }

    /// Log entries as arrivals, without those that waited past `inbox-ttl`.
    fn arrivals(&self, user: &UserId, entries: Value) -> Result<Vec<Arrival>, BackendError> {
        let Value::Array(entries) = entries else { return Ok(Vec::new()) };
        let mut arrivals = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(mut entry) = entry else { return Err(corrupt("log entry")) };
            let fields = entry.pop();
            let id = entry.pop().and_then(|v| v.into_string()).unwrap_or_default();
            let seq = id.strip_prefix("0-").and_then(|seq| seq.parse().ok());
            let payload = match fields {
                Some(Value::Array(mut fields)) if fields.len() == 2 => fields.pop().and_then(|v| v.into_bytes()),
                _ => None,
            };
            match (seq, payload.map(|bytes| Letter::decode(&bytes))) {
                (Some(seq), Some(Ok(letter))) if !expired(letter.ts, self.settings.inbox_ttl) => {
                    arrivals.push(Arrival { letter: Arc::new(letter), to: user.clone(), seq: Some(seq) });
                }
                (Some(_), Some(Ok(_))) => {}
                _ => tracing::warn!(%user, id, "skipping a malformed log entry"),
            }
        }
        Ok(arrivals)
    }

    /// Writes the queued acks until the backend stops: whatever is queued
    /// at once is merged per device, and the devices are written together.
    pub(super) async fn acker(self: Arc<Self>, mut queue: mpsc::UnboundedReceiver<DeviceAck>) {
        // When this node last refreshed a device's expiry, by device.
        let mut refreshed: HashMap<(UserId, DeviceId), tokio::time::Instant> = HashMap::new();
        loop {
            let first = tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                ack = queue.recv() => match ack {
                    Some(ack) => ack,
                    None => return,
                },
            };
            self.window.wait().await;
            let mut devices: HashMap<(UserId, DeviceId), DeviceAck> = HashMap::new();
            let mut next = Some(first);
            while let Some(ack) = next {
                match devices.entry((ack.user.clone(), ack.device.clone())) {
                    Entry::Occupied(mut queued) => {
                        let queued = queued.get_mut();
                        queued.cursor.merge(&ack.cursor);
                        queued.acked.extend(ack.acked);
                        queued.trim |= ack.trim;
                    }
                    Entry::Vacant(vacant) => {
                        vacant.insert(ack);
                    }
                }
                next = queue.try_recv().ok();
            }
            let now = tokio::time::Instant::now();
            refreshed.retain(|_, at| now.duration_since(*at) < REFRESH_EVERY);
            let acks = devices.into_iter().map(|(device, ack)| {
                let refresh = !refreshed.contains_key(&device);
                if refresh {
                    refreshed.insert(device, now);
                }
                (ack, refresh)
            });
            let groups = self.by_slot(acks.collect(), |(ack, _)| &ack.user);
            let written = futures_util::future::join_all(groups.into_iter().map(|group| self.write_acks(group))).await;
            for error in written.into_iter().filter_map(Result::err) {
                self.counters.backend_errors.inc();
                tracing::warn!(%error, "acks not recorded; their messages will be replayed");
            }
        }
    }

    /// Records the acks of devices whose users share a slot, in one script
    /// call, and sends the receipts they make due: each device's cursor as
    /// its connection knows it (`refresh`: and its expiry), a claim on the
    /// dedupe record of each message a sender waits on, and, for a device
    /// whose ack makes one due, a trim of what every device seen lately
    /// acked.
    async fn write_acks(self: &Arc<Self>, acks: Vec<(DeviceAck, bool)>) -> Result<(), BackendError> {
        let mut keys = Vec::new();
        let mut args: Vec<Value> = vec![Value::Null];
        let now = now_ms().to_string();
        // Cumulative acks and acks of logged messages move the cursor;
        // acks of live-only ones do not.
        let moves = |ack: &DeviceAck| ack.acked.is_empty() || ack.acked.iter().any(|acked| acked.seq.is_some());
        for (ack, refresh) in acks.iter().filter(|(ack, _)| moves(ack)) {
            keys.push(self.keys.devices(&ack.user));
            let ttl = if *refresh { millis(self.settings.device_ttl) } else { 0 };
            args.extend([
                format!("c:{}", ack.device).into(),
                ack.cursor.to_text().into(),
                format!("t:{}", ack.device).into(),
                now.as_str().into(),
                ttl.to_string().into(),
            ]);
        }
        args[0] = keys.len().to_string().into();
        let claims: Vec<_> = acks
            .iter()
            .flat_map(|(ack, _)| {
                ack.acked.iter().filter_map(move |acked| Some((&ack.user, acked, acked.reply.as_ref()?)))
            })
            .collect();
        for (user, acked, reply) in &claims {
            keys.push(self.keys.sent(user, &acked.from, &reply.id));
            args.push(format!("{}:{}:r", acked.msg, AcceptStatus::Routed.as_str()).into());
        }
        // Acks of live-only messages nobody waits on change nothing.
        if keys.is_empty() {
            return Ok(());
        }
        let answers: Vec<u64> = Box::pin(self.scripts.ack.evalsha_with_reload(&self.client, keys, args)).await?;
        for ((user, acked, reply), answer) in claims.into_iter().zip(answers) {
            if answer == 1 {
                self.send_receipt(&reply.node, acked.from.clone(), receipt_for(acked.msg, reply, user));
            }
        }
        let trims = acks.iter().filter(|(ack, _)| ack.trim && moves(ack)).map(|(ack, _)| {
            let keys = vec![self.keys.devices(&ack.user), self.keys.log(&ack.user)];
            let args: Vec<Value> = vec![now.as_str().into(), millis(self.settings.device_ttl).to_string().into()];
            Box::pin(self.scripts.trim.evalsha_with_reload::<Value, _, _>(&self.client, keys, args))
        });
        futures_util::future::try_join_all(trims).await?;
        Ok(())
    }
}

/// A letter and, once it is logged, its log entry.
struct LogEntry<'a> {
    letter: &'a Letter,
    bytes: OnceLock<Bytes>,
}

impl LogEntry<'_> {
    fn bytes(&self) -> Result<Bytes, BackendError> {
        if let Some(bytes) = self.bytes.get() {
            return Ok(bytes.clone());
        }
        let bytes = Bytes::from(self.letter.encode().map_err(corrupt)?);
        Ok(self.bytes.get_or_init(|| bytes).clone())
    }
}

/// Reads the append script's answer for a logged message: its seq,
/// whether the caller queues its event, and the recipient's nodes.
fn parse_logged(answer: Vec<Value>) -> Option<(u64, bool, Vec<Arc<str>>)> {
    let mut parts = answer.into_iter();
    let seq = parts.next()?.as_u64()?;
    let due = parts.next()?.as_u64()? == 1;
    let nodes = parts.map(|node| node.into_string().map(Arc::from)).collect::<Option<_>>()?;
    Some((seq, due, nodes))
}

/// Reads a dedupe record, `msg:status`.
fn parse_record(record: &str) -> Result<Taken, BackendError> {
    let corrupt = || corrupt(format!("dedupe record {record:?}"));
    // `msg:status`, and `:r` after it once a recipient acked it.
    let record = record.strip_suffix(":r").unwrap_or(record);
    let (msg, status) = record.split_once(':').ok_or_else(corrupt)?;
    let msg = MsgId::parse(msg).map_err(|_| corrupt())?;
    let status = match status {
        "routed" => AcceptStatus::Routed,
        "stored" => AcceptStatus::Stored,
        _ => return Err(corrupt()),
    };
    Ok(Taken::Duplicate { msg, status })
}

fn corrupt(what: impl std::fmt::Display) -> BackendError {
    BackendError::Corrupt(what.to_string())
}

/// How many of each recipient's connections a send reached, by recipient.
pub(super) type Reached = HashMap<UserId, usize>;
