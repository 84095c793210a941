//! Chaos between nodes and Redis, in `durable` mode: users keep messaging
//! each other through three nodes while the links to Redis slow down, fall
//! into a blackhole and are cut, nodes are killed (SIGKILL) and Redis is
//! restarted from its append-only file. Every user is connected from two
//! devices, each with its own cursor in the user's log: every message a
//! sender saw `accepted` must reach both devices of its recipient, live or
//! by replay when the device connects again; a device may see one twice
//! (at-least-once) and dedupes by `msg`.
//!
//! Each node reaches Redis through a `ChaosProxy` of its own, so one node's
//! link can fail while the others work. Redis runs with
//! `--appendfsync always`: a restart keeps every write it answered, so a
//! restart loses nothing accepted and keeps the epoch.
//!
//! The devices follow the contract's client rules: one `send` in flight at a
//! time per device; a send answered with an `error` is sent again with the same `id`
//! and recipient, and so is one left unanswered when the connection drops;
//! a dropped connection is opened again on any live node; every message is
//! acked. The ledger they share records every `accepted` and every arrival
//! on every device.
//!
//! `one_of_each_fault_loses_nothing_accepted` runs a fixed sequence in
//! under a minute. `random_faults_for_minutes` (ignored; `scripts/chaos`)
//! draws faults, targets, durations and pauses from a seed it prints, for
//! `SWITCHBOARD_CHAOS_MINUTES` minutes.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use switchboard_protocol::{AcceptStatus, Body, ClientFrame, ClientMsgId, MsgId, ServerFrame, To, UserId};
use switchboard_testkit::{
    ChaosProxy, Client, Connect, DEADLINE, NodeProcess, RedisServer, eventually, get, token, within,
};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const NODES: usize = 3;
const USERS: usize = 6;

/// The devices every user connects from.
const DEVICES: [&str; 2] = ["phone", "laptop"];

/// How often a user sends when it has nothing in flight.
const PACE: Duration = Duration::from_millis(50);

/// A send with no answer for this long is given up on that connection: the
/// user reconnects and sends it again. Redis commands time out after 2
/// seconds, so a node answers well within it.
const UNANSWERED_AFTER: Duration = Duration::from_secs(15);

/// How long a user keeps trying to connect to some live node before the
/// test fails: a cluster that never takes a connection again has not recovered.
const RECONNECT_FOR: Duration = Duration::from_secs(30);

/// Longer than the nodes' 2 second Redis command timeout, so commands fail.
const BLACKHOLE_FOR: Duration = Duration::from_secs(3);

/// A message that arrives this long after its `accepted` is reported as
/// late: longer than the longest fault (6 seconds) plus a node TTL, so
/// it waited for something other than the fault to end, such as its
/// recipient's next connection.
const LATE: Duration = Duration::from_secs(10);

/// A message sent, as its sender knows it.
#[derive(Clone, Debug)]
struct Sent {
    from: String,
    id: String,
    to: String,
}

/// An `accepted` answer and where things stood when it came.
struct Acceptance {
    sent: Sent,
    /// Since the start of the test.
    at: Duration,
    status: AcceptStatus,
    /// The node that accepted it.
    node: String,
    /// The nodes of the latest connections of the recipient's devices.
    recipient_nodes: Vec<String>,
}

/// A message received, as one device saw it first.
struct Arrival {
    /// Since the start of the test.
    at: Duration,
    /// The user whose device received it.
    by: String,
    from: String,
    id: Option<String>,
    to: String,
    frames: u64,
}

/// Counters of what the users went through.
#[derive(Clone, Debug, Default)]
struct Tally {
    sends: u64,
    resent_after_error: u64,
    resent_after_reconnect: u64,
    connections: u64,
    failed_connects: u64,
    disconnects: u64,
    unanswered: u64,
    /// Error frames by code, whatever they answered.
    errors: BTreeMap<&'static str, u64>,
    receipts: u64,
    /// An `accepted` whose `id` was not the send in flight.
    stray_accepted: u64,
    /// A message that reached a user it was not sent to.
    misrouted: u64,
}

/// A message on one device of its recipient.
type Delivery = (MsgId, &'static str);

/// What every device saw, in one place. Devices are named `user/device`.
#[derive(Default)]
struct Ledger {
    accepted: HashMap<MsgId, Acceptance>,
    /// Accepted sends, by sending device.
    accepted_by: HashMap<String, u64>,
    /// The send each device has in flight.
    pending: HashMap<String, Sent>,
    /// The node of each device's latest connection.
    nodes: HashMap<String, String>,
    arrivals: HashMap<Delivery, Arrival>,
    epochs: HashSet<uuid::Uuid>,
    tally: Tally,
}

/// What the users share with the test.
struct World {
    /// `ws://` URLs of the nodes users may connect to.
    directory: Mutex<Vec<String>>,
    ledger: Mutex<Ledger>,
    started: Instant,
    /// The wall clock at `started`, to line events up with the nodes' logs.
    started_wall: std::time::SystemTime,
}

impl Ledger {
    /// Accepted messages not yet on every device of their recipient.
    fn missing(&self) -> HashSet<Delivery> {
        self.accepted
            .keys()
            .flat_map(|msg| DEVICES.map(|device| (*msg, device)))
            .filter(|delivery| !self.arrivals.contains_key(delivery))
            .collect()
    }
}

impl World {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap()
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// `at` after the start, in seconds and as the UTC time of day the
    /// nodes' log lines carry.
    fn stamp(&self, at: Duration) -> String {
        let wall = (self.started_wall + at).duration_since(std::time::UNIX_EPOCH).unwrap();
        let (secs, millis) = (wall.as_secs() % 86_400, wall.subsec_millis());
        format!("t={:.1}s ({:02}:{:02}:{:02}.{millis:03}Z)", at.as_secs_f64(), secs / 3600, secs / 60 % 60, secs % 60)
    }
}

/// One slot of the cluster: a link to Redis and the node using it, if any.
struct Slot {
    proxy: ChaosProxy,
    node: Option<NodeProcess>,
    generation: usize,
}

/// The cluster, its users, and the faults injected so far.
struct Chaos {
    redis: RedisServer,
    slots: Vec<Slot>,
    world: Arc<World>,
    users: JoinSet<()>,
    /// Cancelled when users stop starting new sends.
    sending: CancellationToken,
    /// Cancelled when users stop.
    done: CancellationToken,
    /// Bumped to make every user reconnect.
    reconnect: watch::Sender<u64>,
    faults: BTreeMap<&'static str, u64>,
}

/// The outcome, over every accepted message and every device of its
/// recipient (a delivery).
#[derive(Debug)]
struct Summary {
    accepted: usize,
    /// Deliveries that arrived.
    delivered: usize,
    /// Deliveries that arrived only after every device reconnected: in the
    /// log, but not handed to the live connection of the device.
    stranded: usize,
    /// Deliveries that never arrived, reconnect or not.
    lost: usize,
    /// Frames beyond the first of each delivery.
    duplicates: u64,
    /// Messages received that no sender saw accepted: a send stored twice.
    phantoms: usize,
    /// Arrivals whose sender, id or recipient differ from the accepted send.
    garbled: usize,
    /// Sends never answered by the end.
    unresolved: usize,
    /// The longest wait from `accepted` to the first arrival on a device.
    slowest: Duration,
    /// Deliveries that arrived [`LATE`] or later.
    late: usize,
    epochs: usize,
    tally: Tally,
}

impl Chaos {
    async fn start() -> Self {
        let redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
        let target = SocketAddr::from(([127, 0, 0, 1], redis.port()));
        let mut slots = Vec::new();
        for _ in 0..NODES {
            slots.push(Slot { proxy: ChaosProxy::start(target).await, node: None, generation: 0 });
        }
        let world = Arc::new(World {
            directory: Mutex::new(Vec::new()),
            ledger: Mutex::new(Ledger::default()),
            started: Instant::now(),
            started_wall: std::time::SystemTime::now(),
        });
        let mut chaos = Self {
            redis,
            slots,
            world,
            users: JoinSet::new(),
            sending: CancellationToken::new(),
            done: CancellationToken::new(),
            reconnect: watch::Sender::new(0),
            faults: BTreeMap::new(),
        };
        for slot in 0..NODES {
            chaos.start_node(slot).await;
        }
        let names: Vec<String> = (0..USERS).map(|i| format!("user-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            for (d, device) in DEVICES.into_iter().enumerate() {
                let peers = names.iter().filter(|n| *n != name).cloned().collect();
                let user = User {
                    name: name.clone(),
                    device,
                    peers,
                    world: chaos.world.clone(),
                    first_node: i + d,
                    sending: chaos.sending.clone(),
                    done: chaos.done.clone(),
                    reconnect: chaos.reconnect.subscribe(),
                };
                chaos.users.spawn(user.run());
            }
        }
        chaos
    }

    /// Starts a node in `slot` under a new id, waits until it is ready, and
    /// lists it for users.
    async fn start_node(&mut self, slot: usize) {
        let entry = &mut self.slots[slot];
        let id = format!("chaos-{slot}-{}", entry.generation);
        entry.generation += 1;
        let url = entry.proxy.redis_url();
        let node =
            NodeProcess::start(&["--redis-url", &url, "--delivery", "durable", "--node-ttl", "1s", "--node-id", &id])
                .await;
        eventually(&format!("{id} to be ready"), || async { get(node.public, "/readyz", &[]).await.status == 200 })
            .await;
        self.world.directory.lock().unwrap().push(node.ws_url());
        self.slots[slot].node = Some(node);
    }

    fn note_fault(&mut self, kind: &'static str, what: &str) {
        *self.faults.entry(kind).or_default() += 1;
        println!("chaos: {} {kind}: {what}", self.world.stamp(self.world.elapsed()));
    }

    fn live_slots(&self) -> Vec<usize> {
        (0..NODES).filter(|slot| self.slots[*slot].node.is_some()).collect()
    }

    async fn latency(&mut self, links: &[usize], latency: Duration, hold: Duration) {
        self.note_fault("latency", &format!("{latency:?} each way on links {links:?} for {hold:?}"));
        for link in links {
            self.slots[*link].proxy.set_latency(latency);
        }
        tokio::time::sleep(hold).await;
        for link in links {
            self.slots[*link].proxy.set_latency(Duration::ZERO);
        }
    }

    async fn blackhole(&mut self, link: usize, hold: Duration) {
        self.note_fault("blackhole", &format!("link {link} for {hold:?}"));
        self.slots[link].proxy.blackhole(true);
        tokio::time::sleep(hold).await;
        self.slots[link].proxy.blackhole(false);
    }

    /// Cuts every connection of `links`; with a `refuse_for`, the links
    /// also refuse new connections that long.
    async fn cut(&mut self, links: &[usize], refuse_for: Duration) {
        let refusing = if refuse_for.is_zero() { String::new() } else { format!(", refusing for {refuse_for:?}") };
        self.note_fault("cut", &format!("links {links:?}{refusing}"));
        for link in links {
            let proxy = &self.slots[*link].proxy;
            proxy.refuse(!refuse_for.is_zero());
            proxy.cut();
        }
        if !refuse_for.is_zero() {
            tokio::time::sleep(refuse_for).await;
            for link in links {
                self.slots[*link].proxy.refuse(false);
            }
        }
    }

    /// SIGKILL for the node in `slot`; its users reconnect elsewhere.
    async fn kill(&mut self, slot: usize) {
        let mut node = self.slots[slot].node.take().unwrap();
        self.note_fault("kill", &format!("node in slot {slot} (pid {})", node.pid()));
        self.world.directory.lock().unwrap().retain(|url| *url != node.ws_url());
        node.kill().await;
    }

    /// Stops Redis (SIGKILL) and starts it again on the same port and
    /// append-only file.
    async fn restart_redis(&mut self, down_for: Duration) {
        self.note_fault("redis_restart", &format!("down for {down_for:?}"));
        self.redis.stop().await;
        tokio::time::sleep(down_for).await;
        self.redis.start_again().await;
    }

    /// Waits until every device has had a send accepted since now: the
    /// cluster serves everyone again.
    async fn until_everyone_sends(&self) {
        let before = self.world.ledger().accepted_by.clone();
        eventually("every device to have a send accepted", || async {
            let ledger = self.world.ledger();
            (0..USERS).flat_map(|i| DEVICES.map(|device| format!("user-{i}/{device}"))).all(|name| {
                ledger.accepted_by.get(&name).copied().unwrap_or(0) > before.get(&name).copied().unwrap_or(0)
            })
        })
        .await;
    }

    /// Stops new sends, waits for every accepted message to arrive on both
    /// devices of its recipient, and stops the devices. What has not
    /// arrived by then is reported, every device reconnects, and what
    /// arrives by replay is counted as stranded, the rest as lost.
    async fn finish(mut self) -> Summary {
        self.until_everyone_sends().await;
        for slot in self.live_slots() {
            let node = self.slots[slot].node.as_ref().unwrap();
            eventually("every live node to be ready", || async {
                get(node.public, "/readyz", &[]).await.status == 200
            })
            .await;
        }
        self.sending.cancel();
        let settled = tokio::time::timeout(DEADLINE, self.until_settled()).await.is_ok();
        let stranded = if settled {
            HashSet::new()
        } else {
            let missing = self.missing();
            self.report("not delivered to live connections", &missing);
            self.reconnect.send_modify(|generation| *generation += 1);
            let _ = tokio::time::timeout(DEADLINE, self.until_settled()).await;
            let still = self.missing();
            self.report("not delivered after every user reconnected", &still);
            missing.difference(&still).copied().collect()
        };
        self.done.cancel();
        while let Some(user) = within("the users to stop", self.users.join_next()).await {
            user.unwrap();
        }
        self.summarize(&stranded)
    }

    async fn until_settled(&self) {
        loop {
            {
                let ledger = self.world.ledger();
                if ledger.pending.is_empty() && ledger.missing().is_empty() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn missing(&self) -> HashSet<Delivery> {
        self.world.ledger().missing()
    }

    /// Prints `deliveries` with what the ledger knows of them, then the
    /// sends still unanswered.
    fn report(&self, what: &str, deliveries: &HashSet<Delivery>) {
        let ledger = self.world.ledger();
        println!("chaos: {} deliveries of accepted messages {what}", deliveries.len());
        for (msg, device) in deliveries {
            let Acceptance { sent, at, status, node, recipient_nodes } = &ledger.accepted[msg];
            let arrived = ledger
                .arrivals
                .get(&(*msg, device))
                .map_or_else(String::new, |a| format!("; arrived at {}", self.world.stamp(a.at)));
            println!(
                "chaos:   {msg} {} -> {}/{device} id {}: accepted at {}, {status:?}, by {node}; recipient on {:?}{arrived}",
                sent.from,
                sent.to,
                sent.id,
                self.world.stamp(*at),
                recipient_nodes
            );
        }
        for sent in ledger.pending.values() {
            println!("chaos:   unanswered send {sent:?}");
        }
    }

    fn summarize(&self, stranded: &HashSet<Delivery>) -> Summary {
        let ledger = self.world.ledger();
        let expected = ledger.accepted.len() * DEVICES.len();
        let delivered = expected - ledger.missing().len();
        let garbled = ledger
            .arrivals
            .iter()
            .filter_map(|((msg, _), arrival)| ledger.accepted.get(msg).map(|acceptance| (&acceptance.sent, arrival)))
            .filter(|(sent, arrival)| {
                (arrival.by.as_str(), arrival.to.as_str(), arrival.from.as_str(), arrival.id.as_deref())
                    != (sent.to.as_str(), sent.to.as_str(), sent.from.as_str(), Some(sent.id.as_str()))
            })
            .count();
        let waits: Vec<(Delivery, Duration)> = ledger
            .arrivals
            .iter()
            .filter_map(|(delivery, arrival)| {
                ledger.accepted.get(&delivery.0).map(|acceptance| (*delivery, arrival.at.saturating_sub(acceptance.at)))
            })
            .collect();
        let late: HashSet<Delivery> =
            waits.iter().filter(|(_, wait)| *wait >= LATE).map(|(delivery, _)| *delivery).collect();
        drop(ledger);
        let late_only: HashSet<Delivery> = late.difference(stranded).copied().collect();
        if !late_only.is_empty() {
            self.report("arrived late, besides those reported above", &late_only);
        }
        let ledger = self.world.ledger();
        let summary = Summary {
            accepted: ledger.accepted.len(),
            delivered: delivered - stranded.len(),
            stranded: stranded.len(),
            lost: expected - delivered,
            duplicates: ledger.arrivals.values().map(|a| a.frames - 1).sum(),
            phantoms: ledger
                .arrivals
                .keys()
                .map(|(msg, _)| msg)
                .filter(|msg| !ledger.accepted.contains_key(msg))
                .collect::<HashSet<_>>()
                .len(),
            garbled,
            unresolved: ledger.pending.len(),
            slowest: waits.iter().map(|(_, wait)| *wait).max().unwrap_or_default(),
            late: late.len(),
            epochs: ledger.epochs.len(),
            tally: ledger.tally.clone(),
        };
        let faults: Vec<String> = self.faults.iter().map(|(kind, n)| format!("{kind}={n}")).collect();
        println!(
            "chaos: accepted={} delivered={} stranded={} lost={} duplicates={} phantoms={} garbled={} unresolved={} \
             epochs={} slowest={:.1}s late={}",
            summary.accepted,
            summary.delivered,
            summary.stranded,
            summary.lost,
            summary.duplicates,
            summary.phantoms,
            summary.garbled,
            summary.unresolved,
            summary.epochs,
            summary.slowest.as_secs_f64(),
            summary.late,
        );
        println!("chaos: faults {}", faults.join(" "));
        println!("chaos: clients {:?}", summary.tally);
        summary
    }
}

/// Asserts the contract: nothing accepted lost or left undelivered to a
/// connected recipient, no message stored twice or delivered to the wrong
/// user, every send answered once, one epoch throughout (Redis kept its data).
fn assert_nothing_accepted_lost(summary: &Summary) {
    let Summary { lost, stranded, phantoms, garbled, unresolved, epochs, tally, .. } = summary;
    assert_eq!(
        (*lost, *stranded, *phantoms, *garbled, *unresolved, tally.misrouted, tally.stray_accepted, *epochs),
        (0, 0, 0, 0, 0, 0, 0, 1),
        "(lost, stranded, phantoms, garbled, unresolved, misrouted, stray accepted, epochs) in {summary:?}"
    );
}

/// One device of a user, driven as the contract tells clients to behave.
struct User {
    name: String,
    device: &'static str,
    peers: Vec<String>,
    world: Arc<World>,
    /// Index in the directory of the node to try first.
    first_node: usize,
    sending: CancellationToken,
    done: CancellationToken,
    reconnect: watch::Receiver<u64>,
}

impl User {
    /// The device's name in the ledger.
    fn key(&self) -> String {
        format!("{}/{}", self.name, self.device)
    }

    async fn run(mut self) {
        let key = self.key();
        let mut seq = 0u64;
        let mut attempt = self.first_node;
        'connect: while !self.done.is_cancelled() {
            let Some(mut client) = self.connect_anywhere(&mut attempt).await else { return };
            self.reconnect.borrow_and_update();
            let in_flight = self.world.ledger().pending.get(&key).cloned();
            let mut since = Instant::now();
            // Set when the send in flight was refused and waits for the next tick.
            let mut refused = false;
            if let Some(sent) = in_flight {
                self.world.ledger().tally.resent_after_reconnect += 1;
                if !client.try_send(&send_frame(&sent)).await {
                    continue 'connect;
                }
            }
            let mut tick = tokio::time::interval(PACE);
            loop {
                tokio::select! {
                    () = self.done.cancelled() => return,
                    Ok(()) = self.reconnect.changed() => continue 'connect,
                    _ = tick.tick() => {
                        let in_flight = self.world.ledger().pending.get(&key).cloned();
                        let frame = match in_flight {
                            Some(sent) if refused => {
                                refused = false;
                                self.world.ledger().tally.resent_after_error += 1;
                                send_frame(&sent)
                            }
                            Some(_) if since.elapsed() > UNANSWERED_AFTER => {
                                self.world.ledger().tally.unanswered += 1;
                                continue 'connect;
                            }
                            Some(_) => continue,
                            None if self.sending.is_cancelled() => continue,
                            None => {
                                seq += 1;
                                let sent = Sent {
                                    from: self.name.clone(),
                                    id: format!("{}-{}-{seq}", self.name, self.device),
                                    to: self.peers[seq as usize % self.peers.len()].clone(),
                                };
                                let mut ledger = self.world.ledger();
                                ledger.tally.sends += 1;
                                ledger.pending.insert(key.clone(), sent.clone());
                                send_frame(&sent)
                            }
                        };
                        since = Instant::now();
                        if !client.try_send(&frame).await {
                            continue 'connect;
                        }
                    }
                    frame = client.try_recv() => match frame {
                        None => {
                            self.world.ledger().tally.disconnects += 1;
                            continue 'connect;
                        }
                        Some(frame) => {
                            if let Some(ack) = self.take(frame, &mut refused) {
                                // A failed write shows as a closed connection at the next read.
                                client.try_send(&ack).await;
                            }
                        }
                    },
                }
            }
        }
    }

    /// Records one frame from the server; the ack to send, for a message.
    fn take(&self, frame: ServerFrame, refused: &mut bool) -> Option<ClientFrame> {
        let key = self.key();
        let mut ledger = self.world.ledger();
        match frame {
            ServerFrame::Accepted { id, msg, status, .. } => {
                let in_flight = ledger.pending.get(&key).filter(|sent| sent.id == id.as_str()).cloned();
                match in_flight {
                    Some(sent) => {
                        ledger.pending.remove(&key);
                        *ledger.accepted_by.entry(key.clone()).or_default() += 1;
                        let acceptance = Acceptance {
                            at: self.world.elapsed(),
                            status,
                            node: ledger.nodes.get(&key).cloned().unwrap_or_default(),
                            recipient_nodes: DEVICES
                                .iter()
                                .filter_map(|device| ledger.nodes.get(&format!("{}/{device}", sent.to)).cloned())
                                .collect(),
                            sent,
                        };
                        ledger.accepted.insert(msg, acceptance);
                    }
                    None => ledger.tally.stray_accepted += 1,
                }
                None
            }
            ServerFrame::Message(delivery) => {
                let body = delivery.body.to_value();
                let at = self.world.elapsed();
                let arrival = ledger.arrivals.entry((delivery.msg, self.device)).or_insert_with(|| Arrival {
                    at,
                    by: self.name.clone(),
                    from: delivery.from.as_str().to_owned(),
                    id: body["id"].as_str().map(str::to_owned),
                    to: delivery.to.as_str().to_owned(),
                    frames: 0,
                });
                arrival.frames += 1;
                if arrival.by != self.name {
                    ledger.tally.misrouted += 1;
                }
                Some(ClientFrame::Ack { msg: delivery.msg })
            }
            ServerFrame::Error { id, code, .. } => {
                *ledger.tally.errors.entry(code.as_str()).or_default() += 1;
                let ours = ledger.pending.get(&key).is_some_and(|sent| id.is_some_and(|id| sent.id == id.as_str()));
                if ours {
                    *refused = true;
                }
                None
            }
            ServerFrame::Receipt(_) => {
                ledger.tally.receipts += 1;
                None
            }
            ServerFrame::Welcome(_)
            | ServerFrame::Presence { .. }
            | ServerFrame::Pong
            | ServerFrame::Refreshed { .. } => None,
        }
    }

    /// Connects to the live nodes in turn, starting at `attempt`, until one
    /// welcomes the device; `None` once the device is told to stop.
    async fn connect_anywhere(&self, attempt: &mut usize) -> Option<Client> {
        let started = Instant::now();
        loop {
            if self.done.is_cancelled() {
                return None;
            }
            let url = {
                let directory = self.world.directory.lock().unwrap();
                directory[*attempt % directory.len()].clone()
            };
            *attempt += 1;
            if let Some(client) = open(&url, &self.name, self.device).await {
                assert_eq!(client.welcome.device.as_str(), self.device, "welcome names the device");
                let mut ledger = self.world.ledger();
                ledger.tally.connections += 1;
                ledger.epochs.insert(client.welcome.epoch);
                ledger.nodes.insert(self.key(), client.welcome.node.clone());
                return Some(client);
            }
            self.world.ledger().tally.failed_connects += 1;
            assert!(
                started.elapsed() < RECONNECT_FOR,
                "{} found no node to connect to for {RECONNECT_FOR:?}",
                self.key()
            );
            // Refused or closed before welcome (the node cannot reach Redis): the next node, after a pause.
            tokio::time::sleep(PACE).await;
        }
    }
}

/// One attempt to connect as `user` from `device`. `Client::open` fails the
/// calling task when the node closes the connection before `welcome` (1011
/// while it cannot reach Redis), so the attempt runs as a task of its own
/// and such a failure is one failed attempt.
async fn open(url: &str, user: &str, device: &str) -> Option<Client> {
    let url = url.to_owned();
    let connect = Connect { bearer: Some(token(user)), query: Some(format!("device={device}")), ..Connect::default() };
    match tokio::spawn(async move { Client::open(&url, connect).await }).await {
        Ok(Ok(client)) => Some(client),
        Ok(Err(_)) | Err(_) => None,
    }
}

fn send_frame(sent: &Sent) -> ClientFrame {
    ClientFrame::Send {
        id: ClientMsgId::parse(&sent.id).unwrap(),
        to: To::One(UserId::parse(&sent.to).unwrap()),
        body: Body::from_value(&json!({ "id": sent.id })),
        ephemeral: false,
    }
}

/// Waits until `count` more messages were accepted, all users together.
async fn until_accepted(world: &World, count: usize) {
    let target = world.ledger().accepted.len() + count;
    eventually(&format!("{count} more accepted messages"), || async { world.ledger().accepted.len() >= target }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_each_fault_loses_nothing_accepted() {
    let mut chaos = Chaos::start().await;
    let all: Vec<usize> = (0..NODES).collect();
    until_accepted(&chaos.world, 30).await;

    chaos.latency(&all, Duration::from_millis(200), Duration::from_secs(3)).await;
    chaos.until_everyone_sends().await;
    // A send on the blackholed node, made while the blackhole holds, to a
    // user outside the world, is answered: accepted once the Redis client
    // gave up on the dead connection and opened a new one, or refused as
    // internal when the command timed out first; never left hanging.
    let url = chaos.slots[0].node.as_ref().unwrap().ws_url();
    let mut probe = Client::connect(&url, "probe").await;
    let (_, answer) = tokio::join!(biased; chaos.blackhole(0, BLACKHOLE_FOR), async {
        probe.send(&ClientFrame::Send {
            id: ClientMsgId::parse("probe-1").unwrap(),
            to: To::One(UserId::parse("probe-sink").unwrap()),
            body: Body::null(),
            ephemeral: false,
        })
        .await;
        probe.recv().await
    });
    match answer {
        ServerFrame::Accepted { id, status: AcceptStatus::Stored, .. } => assert_eq!(id.as_str(), "probe-1"),
        ServerFrame::Error { id: Some(id), code: switchboard_protocol::ErrorCode::Internal, .. } => {
            assert_eq!(id.as_str(), "probe-1");
        }
        other => panic!("a send during the blackhole: {other:?}"),
    }
    drop(probe);
    chaos.until_everyone_sends().await;
    chaos.cut(&all, Duration::ZERO).await;
    chaos.until_everyone_sends().await;
    chaos.kill(2).await;
    chaos.until_everyone_sends().await;
    chaos.restart_redis(Duration::from_secs(1)).await;

    let summary = chaos.finish().await;
    assert_nothing_accepted_lost(&summary);
    assert!(summary.accepted >= 200, "traffic flowed: {summary:?}");
    let tally = &summary.tally;
    assert!(tally.disconnects >= 2, "the kill dropped the connections of its devices: {tally:?}");
}

/// Random faults at random times for `SWITCHBOARD_CHAOS_MINUTES` minutes
/// (default 3), drawn from `SWITCHBOARD_CHAOS_SEED` (default: the clock),
/// which it prints first: the same seed draws the same faults, targets,
/// durations and pauses. Run by `scripts/chaos`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: run by scripts/chaos"]
async fn random_faults_for_minutes() {
    let minutes: f64 = std::env::var("SWITCHBOARD_CHAOS_MINUTES").map_or(3.0, |m| m.parse().unwrap());
    let seed: u64 = std::env::var("SWITCHBOARD_CHAOS_SEED").map_or_else(
        |_| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
        |s| s.parse().unwrap(),
    );
    println!("chaos: seed={seed} minutes={minutes} nodes={NODES} users={USERS}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut chaos = Chaos::start().await;
    let until = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    until_accepted(&chaos.world, 30).await;

    while Instant::now() < until {
        tokio::time::sleep(millis(&mut rng, 200..4000)).await;
        // Faults on links hit the links of live nodes.
        let live = chaos.live_slots();
        let link = live[rng.random_range(0..live.len())];
        match rng.random_range(0..5) {
            0 => {
                let links = if rng.random_bool(0.5) { vec![link] } else { live };
                let latency = millis(&mut rng, 20..400);
                let hold = millis(&mut rng, 1000..6000);
                chaos.latency(&links, latency, hold).await;
            }
            1 => {
                let hold = millis(&mut rng, 500..6000);
                chaos.blackhole(link, hold).await;
            }
            2 => {
                let links = if rng.random_bool(0.5) { vec![link] } else { live };
                let refuse_for = if rng.random_bool(0.5) { millis(&mut rng, 100..3000) } else { Duration::ZERO };
                chaos.cut(&links, refuse_for).await;
            }
            3 => {
                // One node always stays up; a slot left empty is filled again.
                match chaos.slots.iter().position(|slot| slot.node.is_none()) {
                    Some(empty) if live.len() == 1 || rng.random_bool(0.5) => {
                        chaos.note_fault("replace", &format!("node in slot {empty}"));
                        chaos.start_node(empty).await;
                    }
                    _ if live.len() > 1 => {
                        let slot = live[rng.random_range(0..live.len())];
                        chaos.kill(slot).await;
                    }
                    _ => {}
                }
            }
            _ => {
                let down_for = millis(&mut rng, 100..3000);
                chaos.restart_redis(down_for).await;
            }
        }
    }
    for slot in 0..NODES {
        if chaos.slots[slot].node.is_none() {
            chaos.start_node(slot).await;
        }
    }
    let summary = chaos.finish().await;
    println!("chaos: seed={seed}");
    assert_nothing_accepted_lost(&summary);
}

fn millis(rng: &mut StdRng, range: std::ops::Range<u64>) -> Duration {
    Duration::from_millis(rng.random_range(range))
}
