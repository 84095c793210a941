//! Soak: one long, bounded run for what a benchmark of seconds cannot show:
//! memory and open files that creep up as connections come and go, and
//! latency that drifts. A leak of a few hundred bytes or one descriptor per
//! connection is invisible in ten seconds and takes a node down in a week.
//!
//! Long-lived users exchange 1:1 messages at a fixed rate, each to a user
//! on another node, and ack every one (as in chat, latency runs from the
//! moment a message is issued to its decoding by the recipient). Meanwhile
//! short-lived connections open at a fixed rate; each sends one message to
//! a long-lived user, waits for it to be accepted and leaves, one with a
//! clean close and the next by dropping the socket without a close frame,
//! the two ways a node must clean up after. Every interval the nodes' and
//! Redis' resident memory and open files are sampled, with the interval's
//! latency and deliveries. Every message is tracked by sequence number from
//! the moment it is issued until it is delivered, so a loss is a message
//! that never arrived, not a difference of counters.
//!
//! The baseline is taken after warm-up, when allocators and buffers have
//! reached their working size. At the end the churn stops and the nodes are
//! given a bounded time to let go of the churned connections; then the
//! verdict ([`shortfalls`]) compares the nodes with the baseline. Redis is
//! sampled but not judged: it keeps every message's dedupe record for 10
//! minutes, so it grows through the first 10 minutes of any run by design.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};
use switchboard_protocol::{Body, ClientFrame, ClientMsgId, Codec, ServerFrame, To, UserId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::chat::{self, Machine, Socket};
use crate::proc::{ensure_open_files, load_average, machine, open_fds, rss_bytes};
use crate::targets::{Process, Role, Targets};

const MAX_DURATION: Duration = Duration::from_secs(60 * 60);
const MAX_WARMUP: Duration = Duration::from_secs(10 * 60);
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_CHURN_RATE: f64 = 1_000.0;
/// Churn connections under way at once; one due beyond this is skipped, and counted.
const MAX_CHURN_IN_FLIGHT: usize = 1_000;
/// How long a churn connection may take to connect, send, and see its message accepted.
const CHURN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a clean close waits for the node's answering close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Churn connections log in as this many users in turn, numbered after the
/// long-lived ones, so that what the nodes and Redis keep per user is
/// bounded by the run's users rather than by its connections.
const CHURN_USERS: usize = 100;
/// A message not delivered this long after it was issued is overdue: lost,
/// unless it arrives later (then it is late).
const OVERDUE_AFTER: Duration = Duration::from_secs(10);
/// How long the nodes get, once churn stops, to let go of the churned connections.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait, after the last send, for the messages still on their way.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the long-lived connections get to close at the very end.
const CLOSE_ALL_TIMEOUT: Duration = Duration::from_secs(5);
const METRICS_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the end of the run checks whether what it waits for has happened.
const POLL: Duration = Duration::from_millis(250);
/// Messages waiting for a long-lived connection's task; one more is not sent, and counted.
const SEND_QUEUE: usize = 64;

/// What the verdict allows a node at the end compared with its baseline.
#[derive(Serialize)]
struct Criteria {
    /// Open files a node may hold above its baseline.
    max_open_files_growth: u64,
    /// A node's RSS may grow by this share of its baseline plus `max_rss_growth_bytes`.
    max_rss_growth_share: f64,
    max_rss_growth_bytes: u64,
    /// The last interval's p99 may be at most this many times the first's...
    max_p99_growth: f64,
    /// ...or at most this, whatever the first's.
    p99_floor_ms: f64,
}

const CRITERIA: Criteria = Criteria {
    max_open_files_growth: 16,
    max_rss_growth_share: 0.2,
    max_rss_growth_bytes: 8 << 20,
    max_p99_growth: 3.0,
    p99_floor_ms: 50.0,
};

/// The load of a soak run.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Load")]
pub struct Load {
    /// Long-lived users, one connection each for the whole run (ids u-0 .. u-N); at most 20000.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Messages per second between long-lived users, in all, each to a user on another node.
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// Short-lived connections opened per second, each sending one message to a long-lived
    /// user; 0 for none, at most 1000.
    #[arg(long, default_value_t = 50.0)]
    pub churn_rate: f64,
    /// Traffic and churn before the baseline sample, not in the intervals; at most 10 minutes.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Traffic and churn after the baseline; at most 60 minutes, and at least two intervals.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// How often to sample the processes and close an interval's latency and counts; at least 1s.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Size of each message body (JSON text) in bytes.
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// Seed of the choice of recipients; random when left out.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl Load {
    /// The checks that do not depend on the targets.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.users < 2 || self.users > chat::MAX_USERS {
            bail!("users must be 2 to {}", chat::MAX_USERS);
        }
        if self.rate.is_nan() || self.rate <= 0.0 || self.rate > chat::MAX_RATE {
            bail!("rate must be above 0 and at most {}", chat::MAX_RATE);
        }
        if self.churn_rate.is_nan() || self.churn_rate < 0.0 || self.churn_rate > MAX_CHURN_RATE {
            bail!("churn_rate must be 0 to {MAX_CHURN_RATE}");
        }
        if self.warmup > MAX_WARMUP {
            bail!("warmup must be at most {}", humantime::format_duration(MAX_WARMUP));
        }
        if self.interval < MIN_INTERVAL {
            bail!("interval must be at least {}", humantime::format_duration(MIN_INTERVAL));
        }
        if self.duration > MAX_DURATION || self.duration < self.interval * 2 {
            bail!(
                "duration must be at most {} and at least two intervals: the verdict compares the first with the last",
                humantime::format_duration(MAX_DURATION)
            );
        }
        if self.body_bytes > chat::MAX_BODY_BYTES {
            bail!("body_bytes must be at most {}", chat::MAX_BODY_BYTES);
        }
        Ok(())
    }
}

/// Where the nodes serve their metrics: the end of the run reads their
/// `switchboard_connections` to tell when the churned connections are gone.
#[derive(clap::Args)]
#[command(next_help_heading = "Targets")]
pub struct NodeMetrics {
    /// Metrics address of each node (host:port, loopback only), in --node order, repeatable;
    /// without it the end of the run waits for the nodes' open files instead.
    #[arg(long = "metrics")]
    pub addrs: Vec<SocketAddr>,
}

/// Counts of what happened, as a struct of numbers for reports and as a
/// struct of atomics for the tasks that count, from one list of names.
macro_rules! counts {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// How many of each event one period (warm-up, an interval, the end) saw.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
        pub struct Counts {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        /// [`Counts`] as they happen.
        #[derive(Default)]
        struct Counters {
            $($name: AtomicU64,)*
        }

        impl Counters {
            /// The counts so far, the next period starting from zero.
            fn take(&self) -> Counts {
                Counts { $($name: self.$name.swap(0, Ordering::SeqCst),)* }
            }
        }

        impl std::ops::AddAssign for Counts {
            fn add_assign(&mut self, other: Self) {
                $(self.$name += other.$name;)*
            }
        }
    };
}

counts! {
    /// Messages handed to a connection to send, long-lived and churn.
    sent,
    /// Messages delivered the first time.
    delivered,
    /// Deliveries of a message already delivered (at least once allows them).
    duplicates,
    /// Messages that became overdue: not delivered 10 s after they were issued.
    overdue,
    /// Overdue messages delivered after all.
    late,
    /// Error frames: sends refused, and errors that name no send.
    refused,
    /// Messages due that a long-lived connection's full queue did not take.
    not_sent,
    /// Frames that did not decode, and messages without the soak's body.
    undecodable,
    /// Churn connections that got their welcome.
    churn_opened,
    /// Churn connections that did not connect, send, and see their message accepted in time.
    churn_failed,
    /// Churn connections due while too many were under way, not opened.
    churn_skipped,
    /// Long-lived connections that ended before the run did.
    long_lived_closed,
}

/// The latency of the messages delivered in one interval, in milliseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LatencyMs {
    count: u64,
    p50: f64,
    p99: f64,
    max: f64,
}

/// One process at one moment.
#[derive(Clone, Serialize)]
pub struct ProcessSample {
    role: Role,
    name: String,
    pid: u32,
    rss_bytes: u64,
    open_files: u64,
}

/// The processes, and the connections each node counts when its metrics
/// address is known (empty otherwise).
struct Snapshot {
    processes: Vec<ProcessSample>,
    node_connections: Vec<u64>,
}

#[derive(Serialize)]
pub struct Interval {
    /// Seconds since the baseline when the interval ended.
    end_seconds: f64,
    #[serde(flatten)]
    counts: Counts,
    latency_ms: LatencyMs,
    processes: Vec<ProcessSample>,
    node_connections: Vec<u64>,
}

/// Every period's counts added up, and what the end of the run left undelivered.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Totals {
    #[serde(flatten)]
    counts: Counts,
    /// Accepted messages never delivered.
    lost: u64,
    /// Messages sent that were neither accepted, refused nor delivered.
    unanswered: u64,
}

/// The result of a soak run, printed as a Markdown table and written as JSON.
#[derive(Serialize)]
pub struct SoakReport {
    scenario: &'static str,
    label: Option<String>,
    nodes: Vec<String>,
    users: usize,
    rate: f64,
    churn_rate: f64,
    warmup_seconds: f64,
    duration_seconds: f64,
    interval_seconds: f64,
    body_bytes: usize,
    criteria: Criteria,
    warmup: Counts,
    baseline: Vec<ProcessSample>,
    baseline_node_connections: Vec<u64>,
    intervals: Vec<Interval>,
    /// Whether the churned connections were gone, and how long after churn stopped.
    settled: bool,
    settle_seconds: f64,
    /// The sample the verdict compares with the baseline: churn stopped and settled.
    after: Vec<ProcessSample>,
    after_node_connections: Vec<u64>,
    /// Counts from the end of the last interval to the end of the run.
    end: Counts,
    /// Whether every message was delivered or answered within the drain.
    drained: bool,
    totals: Totals,
    passed: bool,
    /// Why the run failed; empty when it passed.
    shortfalls: Vec<String>,
    machine: Machine,
}

/// Where the run is: each phase stops something the previous one did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Traffic and churn.
    Churn,
    /// Traffic only.
    Traffic,
    /// Nothing sent; the long-lived connections still read what arrives.
    Drain,
    /// The long-lived connections close.
    Close,
}

/// A message on its way.
struct Pending {
    issued: Instant,
    accepted: bool,
    overdue: bool,
}

/// What a frame from a node was, to the connection that read it.
enum Received {
    /// A message, to be acked with `ack`.
    Message {
        ack: Message,
    },
    /// The answer (`accepted` or `error`) to the send of this sequence number.
    Answered(u64),
    Other,
}

/// What the tasks share.
struct Shared {
    codec: Codec,
    /// Prefix of this run's send ids, so that a rerun within the nodes'
    /// 10-minute dedupe memory does not reuse ids.
    run: String,
    /// The long-lived users, the only recipients.
    user_ids: Vec<UserId>,
    padding: String,
    secret: String,
    next_seq: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    latency: Mutex<Histogram<u64>>,
    counters: Counters,
    churn_in_flight: AtomicUsize,
}

#[derive(Deserialize)]
struct BodyStamp {
    /// When the message was issued, Unix microseconds.
    t: u64,
    /// Its sequence number.
    s: u64,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new message for long-lived user `to`, tracked from now on.
    fn issue(&self, to: usize) -> anyhow::Result<(u64, Message)> {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let body = format!(r#"{{"t":{},"s":{seq},"p":"{}"}}"#, chat::now_us(), self.padding);
        let frame = ClientFrame::Send {
            id: ClientMsgId::parse(&format!("{}{seq}", self.run))?,
            to: To::One(self.user_ids[to].clone()),
            body: Body::from_json(&body)?,
            ephemeral: false,
        };
        self.pending().insert(seq, Pending { issued: Instant::now(), accepted: false, overdue: false });
        Ok((seq, chat::encoded(self.codec.encode_client(&frame))))
    }

    /// Stops tracking a message that was never written.
    fn withdraw(&self, seq: u64) {
        self.pending().remove(&seq);
    }

    /// Issues a message from a long-lived connection to `to` through its queue.
    fn offer(&self, queue: &mpsc::Sender<Message>, to: usize) {
        let queued = self.issue(to).map(|(seq, frame)| (seq, queue.try_send(frame)));
        let counter = match queued {
            Ok((_, Ok(()))) => &self.counters.sent,
            Ok((seq, Err(_))) => {
                self.withdraw(seq);
                &self.counters.not_sent
            }
            Err(_) => &self.counters.not_sent,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }

    fn seq_of(&self, id: &ClientMsgId) -> Option<u64> {
        id.as_str().strip_prefix(self.run.as_str())?.parse().ok()
    }

    /// Accounts for a WebSocket message from a node; none for control frames.
    fn receive_message(&self, message: &Message) -> Option<Received> {
        match message {
            Message::Text(text) => Some(self.receive(text.as_bytes())),
            Message::Binary(bytes) => Some(self.receive(bytes)),
            _ => None,
        }
    }

    /// Accounts for a frame from a node.
    fn receive(&self, bytes: &[u8]) -> Received {
        let now_us = chat::now_us();
        let Ok(frame) = self.codec.decode_server(bytes) else {
            self.counters.undecodable.fetch_add(1, Ordering::SeqCst);
            return Received::Other;
        };
        match frame {
            ServerFrame::Message(delivery) => {
                match serde_json::from_str::<BodyStamp>(delivery.body.json()) {
                    Ok(stamp) => self.delivered(stamp, now_us),
                    Err(_) => {
                        self.counters.undecodable.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let ack = chat::encoded(self.codec.encode_client(&ClientFrame::Ack { msg: delivery.msg }));
                Received::Message { ack }
            }
            ServerFrame::Accepted { id, .. } => match self.seq_of(&id) {
                Some(seq) => {
                    if let Some(pending) = self.pending().get_mut(&seq) {
                        pending.accepted = true;
                    }
                    Received::Answered(seq)
                }
                None => Received::Other,
            },
            ServerFrame::Error { id, .. } => {
                self.counters.refused.fetch_add(1, Ordering::SeqCst);
                match id.as_ref().and_then(|id| self.seq_of(id)) {
                    Some(seq) => {
                        self.withdraw(seq);
                        Received::Answered(seq)
                    }
                    None => Received::Other,
                }
            }
            _ => Received::Other,
        }
    }

    fn delivered(&self, stamp: BodyStamp, now_us: u64) {
        let Some(pending) = self.pending().remove(&stamp.s) else {
            self.counters.duplicates.fetch_add(1, Ordering::SeqCst);
            return;
        };
        self.counters.delivered.fetch_add(1, Ordering::SeqCst);
        if pending.overdue {
            self.counters.late.fetch_add(1, Ordering::SeqCst);
        }
        if let Ok(mut latency) = self.latency.lock() {
            latency.saturating_record(now_us.saturating_sub(stamp.t).max(1));
        }
    }

    /// Marks the messages issued more than [`OVERDUE_AFTER`] ago and not delivered.
    fn sweep(&self) {
        let now = Instant::now();
        let mut overdue = 0;
        for pending in self.pending().values_mut() {
            if !pending.overdue && now.duration_since(pending.issued) >= OVERDUE_AFTER {
                pending.overdue = true;
                overdue += 1;
            }
        }
        self.counters.overdue.fetch_add(overdue, Ordering::SeqCst);
    }

    /// The latency since the last call.
    fn take_latency(&self) -> LatencyMs {
        let Ok(mut histogram) = self.latency.lock() else {
            return LatencyMs { count: 0, p50: f64::NAN, p99: f64::NAN, max: f64::NAN };
        };
        let ms = |us: u64| us as f64 / 1000.0;
        let quantile = |q: f64| if histogram.is_empty() { 0.0 } else { ms(histogram.value_at_quantile(q)) };
        let latency =
            LatencyMs { count: histogram.len(), p50: quantile(0.5), p99: quantile(0.99), max: ms(histogram.max()) };
        histogram.reset();
        latency
    }

    /// What is still on its way: (accepted, never answered).
    fn undelivered(&self) -> (u64, u64) {
        let pending = self.pending();
        let accepted = pending.values().filter(|p| p.accepted).count() as u64;
        (accepted, pending.len() as u64 - accepted)
    }
}

/// Runs the soak and judges it; an error is a run that could not be done
/// (a node that cannot be reached or sampled), not a failed verdict.
pub async fn run(
    targets: &Targets,
    metrics: &NodeMetrics,
    load: &Load,
    label: Option<&str>,
) -> anyhow::Result<SoakReport> {
    validate(targets, metrics, load)?;
    let processes = targets.processes();
    let loadavg_start = load_average();
    let codec = Codec::Json;
    // A body without its padding, with a sequence number as wide as any a
    // run reaches, so that no body is longer than `body_bytes`.
    let overhead = format!(r#"{{"t":{},"s":{},"p":""}}"#, chat::now_us(), u32::MAX).len();
    let shared = Arc::new(Shared {
        codec,
        run: format!("{:x}-", chat::now_us()),
        user_ids: (0..load.users).map(|i| UserId::parse(&format!("u-{i}"))).collect::<Result<_, _>>()?,
        padding: "x".repeat(load.body_bytes.saturating_sub(overhead)),
        secret: targets.jwt_secret.clone(),
        next_seq: AtomicU64::new(0),
        pending: Mutex::new(HashMap::new()),
        latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        counters: Counters::default(),
        churn_in_flight: AtomicUsize::new(0),
    });
    // Fail on a wrong pid or metrics address before connecting.
    snapshot(&processes, &metrics.addrs).await?;

    let sockets = chat::connect_users(targets, load.users, codec).await?;
    let (phase_tx, phase_rx) = watch::channel(Phase::Churn);
    let mut queues = Vec::with_capacity(load.users);
    let mut connections: Vec<JoinHandle<()>> = Vec::with_capacity(load.users);
    for socket in sockets {
        let (queue_tx, queue_rx) = mpsc::channel(SEND_QUEUE);
        queues.push(queue_tx);
        connections.push(tokio::spawn(hold(socket, queue_rx, shared.clone(), phase_rx.clone())));
    }
    // Progress on stderr; the report is printed at the end.
    eprintln!(
        "soak: {} users, {}/s between them, {} churn connections/s, {} warm-up, then {} in intervals of {}",
        load.users,
        load.rate,
        load.churn_rate,
        humantime::format_duration(load.warmup),
        humantime::format_duration(load.duration),
        humantime::format_duration(load.interval)
    );

    let supervisor = Supervisor { targets, metrics, load, shared: &shared, processes: &processes, phase: &phase_tx };
    let (_, observed) = tokio::join!(schedule(targets, load, &shared, queues, phase_rx), async {
        let observed = supervisor.observe(connections).await;
        // Whatever happened, the scheduler and the connections stop.
        phase_tx.send_replace(Phase::Close);
        observed
    });
    let observed = observed?;

    let first_p99 = observed.intervals.first().map_or(0.0, |i| i.latency_ms.p99);
    let last_p99 = observed.intervals.last().map_or(0.0, |i| i.latency_ms.p99);
    let mut totals = Totals { counts: observed.warmup, lost: observed.lost, unanswered: observed.unanswered };
    for interval in &observed.intervals {
        totals.counts += interval.counts;
    }
    totals.counts += observed.end;
    let shortfalls = shortfalls(&Evidence {
        baseline: &observed.baseline.processes,
        after: &observed.after.processes,
        first_p99_ms: first_p99,
        last_p99_ms: last_p99,
        totals: &totals,
        settled: observed.settled,
    });
    let (nproc, cpu_model) = machine();
    Ok(SoakReport {
        scenario: "soak",
        label: label.map(str::to_owned),
        nodes: targets.nodes.iter().map(ToString::to_string).collect(),
        users: load.users,
        rate: load.rate,
        churn_rate: load.churn_rate,
        warmup_seconds: load.warmup.as_secs_f64(),
        duration_seconds: load.duration.as_secs_f64(),
        interval_seconds: load.interval.as_secs_f64(),
        body_bytes: load.body_bytes,
        criteria: CRITERIA,
        warmup: observed.warmup,
        baseline: observed.baseline.processes,
        baseline_node_connections: observed.baseline.node_connections,
        intervals: observed.intervals,
        settled: observed.settled,
        settle_seconds: observed.settle_seconds,
        after: observed.after.processes,
        after_node_connections: observed.after.node_connections,
        end: observed.end,
        drained: observed.drained,
        totals,
        passed: shortfalls.is_empty(),
        shortfalls,
        machine: Machine { nproc, cpu_model, loadavg_start, loadavg_end: load_average() },
    })
}

fn validate(targets: &Targets, metrics: &NodeMetrics, load: &Load) -> anyhow::Result<()> {
    targets.validate()?;
    load.validate()?;
    if targets.pids.is_empty() {
        bail!("give each node's --pid: the soak judges the nodes' memory and open files");
    }
    if !metrics.addrs.is_empty() && metrics.addrs.len() != targets.nodes.len() {
        bail!(
            "{} --metrics for {} --node: give one per node, in the same order, or none",
            metrics.addrs.len(),
            targets.nodes.len()
        );
    }
    if let Some(addr) = metrics.addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!("--metrics {addr} is not a loopback address");
    }
    chat::ensure_fits_targets(targets, load.rate, load.users)?;
    ensure_open_files(load.users + MAX_CHURN_IN_FLIGHT)
}

/// Issues the long-lived traffic and opens the churn connections on a
/// fixed timetable (number n is due n / rate seconds after the start),
/// whatever the nodes answer, until the phase says to stop.
async fn schedule(
    targets: &Targets,
    load: &Load,
    shared: &Arc<Shared>,
    queues: Vec<mpsc::Sender<Message>>,
    mut phase: watch::Receiver<Phase>,
) {
    let nodes = targets.nodes.len();
    let mut rng = load.seed.map_or_else(|| SmallRng::from_rng(&mut rand::rng()), SmallRng::seed_from_u64);
    let (mut messages, mut churned) = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    loop {
        tick.tick().await;
        let now = *phase.borrow_and_update();
        if now >= Phase::Drain {
            return;
        }
        let elapsed = started.elapsed().as_secs_f64();
        while messages < (elapsed * load.rate) as u64 {
            // Senders in turn, so that none gets more than its share of the rate.
            let from = (messages % load.users as u64) as usize;
            shared.offer(&queues[from], chat::recipient(&mut rng, from, load.users, nodes) as usize);
            messages += 1;
        }
        while now == Phase::Churn && churned < (elapsed * load.churn_rate) as u64 {
            if shared.churn_in_flight.load(Ordering::SeqCst) >= MAX_CHURN_IN_FLIGHT {
                shared.counters.churn_skipped.fetch_add(1, Ordering::SeqCst);
            } else {
                // Churn connection k goes where long-lived user k % users is,
                // and sends to a user on another node.
                let from = (churned % load.users as u64) as usize;
                let (node, source) = targets.route(from);
                let to = chat::recipient(&mut rng, from, load.users, nodes) as usize;
                let user = load.users + (churned as usize % CHURN_USERS);
                let clean_close = churned % 2 == 0;
                // Tracked by `churn_in_flight`, which the end of the run waits on.
                shared.churn_in_flight.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(churn(user, node, source, to, clean_close, shared.clone()));
            }
            churned += 1;
        }
    }
}

/// One long-lived connection: sends what the scheduler queues, acks every
/// message, and accounts for every frame, until the phase is [`Phase::Close`].
async fn hold(
    mut socket: Socket,
    mut queue: mpsc::Receiver<Message>,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
) {
    let mut queue_open = true;
    let mut closing = false;
    while !closing {
        let to_write = tokio::select! {
            frame = socket.next() => match frame {
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    shared.counters.long_lived_closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Some(Ok(message)) => match shared.receive_message(&message) {
                    Some(Received::Message { ack }) => ack,
                    _ => continue,
                },
            },
            out = queue.recv(), if queue_open => match out {
                Some(send) => send,
                None => {
                    queue_open = false;
                    continue;
                }
            },
            _ = phase.wait_for(|phase| *phase >= Phase::Close) => {
                closing = true;
                continue;
            }
        };
        if socket.send(to_write).await.is_err() {
            shared.counters.long_lived_closed.fetch_add(1, Ordering::SeqCst);
            return;
        }
    }
    let _ = socket.close(None).await;
}

/// One churn connection as user u-`user`: connect, send one message to `to`,
/// wait for it to be accepted, then leave with a clean close or by
/// dropping the socket without a close frame.
async fn churn(user: usize, node: SocketAddr, source: IpAddr, to: usize, clean_close: bool, shared: Arc<Shared>) {
    match tokio::time::timeout(CHURN_TIMEOUT, send_one(user, node, source, to, &shared)).await {
        Ok(Ok(mut socket)) => {
            if clean_close {
                let _ = socket.close(None).await;
                // Read until the node's close frame ends the handshake.
                let _ =
                    tokio::time::timeout(CLOSE_TIMEOUT, async { while let Some(Ok(_)) = socket.next().await {} }).await;
            }
        }
        Ok(Err(_)) | Err(_) => {
            shared.counters.churn_failed.fetch_add(1, Ordering::SeqCst);
        }
    }
    shared.churn_in_flight.fetch_sub(1, Ordering::SeqCst);
}

async fn send_one(user: usize, node: SocketAddr, source: IpAddr, to: usize, shared: &Shared) -> anyhow::Result<Socket> {
    let mut socket = chat::open(user, node, source, &shared.secret, shared.codec).await?;
    shared.counters.churn_opened.fetch_add(1, Ordering::SeqCst);
    let (seq, frame) = shared.issue(to)?;
    if let Err(error) = socket.send(frame).await {
        shared.withdraw(seq);
        return Err(error.into());
    }
    shared.counters.sent.fetch_add(1, Ordering::SeqCst);
    while let Some(message) = socket.next().await {
        if matches!(shared.receive_message(&message?), Some(Received::Answered(answered)) if answered == seq) {
            return Ok(socket);
        }
    }
    bail!("closed before its message was answered")
}

/// What [`Supervisor::observe`] saw.
struct Observed {
    warmup: Counts,
    baseline: Snapshot,
    intervals: Vec<Interval>,
    settled: bool,
    settle_seconds: f64,
    after: Snapshot,
    end: Counts,
    drained: bool,
    lost: u64,
    unanswered: u64,
}

/// Moves the run through its phases and samples it.
struct Supervisor<'a> {
    targets: &'a Targets,
    metrics: &'a NodeMetrics,
    load: &'a Load,
    shared: &'a Shared,
    processes: &'a [Process],
    phase: &'a watch::Sender<Phase>,
}

impl Supervisor<'_> {
    async fn observe(&self, connections: Vec<JoinHandle<()>>) -> anyhow::Result<Observed> {
        let (load, shared) = (self.load, self.shared);
        tokio::time::sleep(load.warmup).await;
        shared.sweep();
        let warmup = shared.counters.take();
        shared.take_latency();
        let baseline = self.snapshot().await?;
        eprintln!("baseline: {}\n{TABLE_HEADER}", describe(&baseline.processes));

        let started = tokio::time::Instant::now();
        let mut intervals = Vec::new();
        let mut end = Duration::ZERO;
        while end < load.duration {
            end = (end + load.interval).min(load.duration);
            tokio::time::sleep_until(started + end).await;
            shared.sweep();
            let counts = shared.counters.take();
            let latency_ms = shared.take_latency();
            let Snapshot { processes, node_connections } = self.snapshot().await?;
            let interval = Interval { end_seconds: end.as_secs_f64(), counts, latency_ms, processes, node_connections };
            eprintln!("{}", interval.row());
            intervals.push(interval);
        }

        // Churn stops; the long-lived traffic goes on while the nodes let go
        // of the churned connections, so that the sample after compares with
        // the baseline, which had the same traffic.
        self.phase.send_replace(Phase::Traffic);
        let settle_started = Instant::now();
        let settled = self.settle(&baseline).await?;
        let settle_seconds = settle_started.elapsed().as_secs_f64();
        let after = self.snapshot().await?;

        self.phase.send_replace(Phase::Drain);
        let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
        let drained = loop {
            if shared.pending().is_empty() {
                break true;
            }
            if Instant::now() >= drain_deadline {
                break false;
            }
            tokio::time::sleep(POLL).await;
        };
        shared.sweep();
        let (lost, unanswered) = shared.undelivered();
        self.phase.send_replace(Phase::Close);
        let close_deadline = tokio::time::Instant::now() + CLOSE_ALL_TIMEOUT;
        for connection in connections {
            let abort = connection.abort_handle();
            if tokio::time::timeout_at(close_deadline, connection).await.is_err() {
                abort.abort();
            }
        }
        Ok(Observed {
            warmup,
            baseline,
            intervals,
            settled,
            settle_seconds,
            after,
            end: shared.counters.take(),
            drained,
            lost,
            unanswered,
        })
    }

    /// Waits, at most [`SETTLE_TIMEOUT`], until no churn connection is under
    /// way and the nodes hold no more than their long-lived connections (by
    /// their metrics) or, without metrics, no more open files than the
    /// verdict allows.
    async fn settle(&self, baseline: &Snapshot) -> anyhow::Result<bool> {
        let nodes = self.targets.nodes.len();
        let long_lived = |node: usize| (0..self.load.users).filter(|i| i % nodes == node).count() as u64;
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let now = self.snapshot().await?;
            let churn_done = self.shared.churn_in_flight.load(Ordering::SeqCst) == 0;
            let nodes_done = if now.node_connections.is_empty() {
                now.processes
                    .iter()
                    .zip(&baseline.processes)
                    .filter(|(p, _)| p.role == Role::Node)
                    .all(|(p, base)| p.open_files <= base.open_files + CRITERIA.max_open_files_growth)
            } else {
                now.node_connections.iter().enumerate().all(|(node, &held)| held <= long_lived(node))
            };
            if churn_done && nodes_done {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        snapshot(self.processes, &self.metrics.addrs).await
    }
}

/// The processes from /proc, then the nodes' connections from their metrics
/// (in that order, so that the metrics request is not among the open files).
async fn snapshot(processes: &[Process], metrics: &[SocketAddr]) -> anyhow::Result<Snapshot> {
    let processes = processes
        .iter()
        .map(|p| {
            Ok(ProcessSample {
                role: p.role,
                name: p.name.clone(),
                pid: p.pid,
                rss_bytes: rss_bytes(p.pid)?,
                open_files: open_fds(p.pid)?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut node_connections = Vec::with_capacity(metrics.len());
    for &addr in metrics {
        node_connections.push(node_connections_of(addr).await?);
    }
    Ok(Snapshot { processes, node_connections })
}

/// The `switchboard_connections` gauge of the node whose metrics are at `addr`.
async fn node_connections_of(addr: SocketAddr) -> anyhow::Result<u64> {
    let fetch = async {
        let mut stream = TcpStream::connect(addr).await?;
        // HTTP/1.0: the node closes the connection after the response, and
        // does not chunk it.
        stream.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(METRICS_TIMEOUT, fetch)
        .await
        .with_context(|| format!("no answer from {addr}/metrics within {METRICS_TIMEOUT:?}"))?
        .with_context(|| format!("reading {addr}/metrics"))?;
    connections_gauge(&response).with_context(|| format!("no switchboard_connections in {addr}/metrics"))
}

/// The value of `switchboard_connections` in a Prometheus text exposition.
fn connections_gauge(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        if fields.next()? != "switchboard_connections" {
            return None;
        }
        let value: f64 = fields.next()?.parse().ok()?;
        (value >= 0.0 && value.fract() == 0.0).then_some(value as u64)
    })
}

/// What the verdict weighs.
struct Evidence<'a> {
    baseline: &'a [ProcessSample],
    after: &'a [ProcessSample],
    first_p99_ms: f64,
    last_p99_ms: f64,
    totals: &'a Totals,
    settled: bool,
}

/// Why a run with this evidence fails; empty when it passes. A node fails
/// when its open files or RSS grew past [`CRITERIA`] from the baseline;
/// the run fails when latency drifted up, when a message was lost, refused,
/// left unanswered or not sent, when a connection failed or closed early,
/// or when the churned connections were not gone in time.
fn shortfalls(evidence: &Evidence<'_>) -> Vec<String> {
    let mut found = Vec::new();
    let nodes = evidence.baseline.iter().zip(evidence.after).filter(|(base, _)| base.role == Role::Node);
    for (base, after) in nodes {
        let max_files = base.open_files + CRITERIA.max_open_files_growth;
        if after.open_files > max_files {
            found.push(format!(
                "node {}: open files {} -> {} (at most {max_files})",
                base.name, base.open_files, after.open_files
            ));
        }
        let max_rss =
            (base.rss_bytes as f64 * (1.0 + CRITERIA.max_rss_growth_share)) as u64 + CRITERIA.max_rss_growth_bytes;
        if after.rss_bytes > max_rss {
            found.push(format!(
                "node {}: RSS {:.1} -> {:.1} MiB (at most {:.1})",
                base.name,
                mib(base.rss_bytes),
                mib(after.rss_bytes),
                mib(max_rss)
            ));
        }
    }
    let (first, last) = (evidence.first_p99_ms, evidence.last_p99_ms);
    if last.is_nan() || (last > first * CRITERIA.max_p99_growth && last > CRITERIA.p99_floor_ms) {
        found.push(format!("p99 {last:.1} ms in the last interval, {first:.1} ms in the first"));
    }
    let totals = evidence.totals;
    let counts = &totals.counts;
    let failures = [
        (totals.lost, "accepted and never delivered"),
        (totals.unanswered, "sent and never answered"),
        (counts.refused, "refused with an error"),
        (counts.not_sent, "not sent: a connection's queue was full"),
        (counts.churn_failed, "churn connections failed"),
        (counts.churn_skipped, "churn connections skipped: too many under way"),
        (counts.long_lived_closed, "long-lived connections closed early"),
    ];
    for (count, what) in failures {
        if count > 0 {
            found.push(format!("{count} {what}"));
        }
    }
    if counts.delivered == 0 {
        found.push("nothing delivered".to_owned());
    }
    if !evidence.settled {
        found.push(format!("churned connections still open {}s after churn stopped", SETTLE_TIMEOUT.as_secs()));
    }
    found
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// The processes on one line: each with its RSS and open files.
fn describe(processes: &[ProcessSample]) -> String {
    let each = processes
        .iter()
        .map(|p| format!("{} {} RSS {:.1} MiB, {} open files", p.role, p.name, mib(p.rss_bytes), p.open_files));
    each.collect::<Vec<_>>().join("; ")
}

/// One value per process of `role`, joined with " / ".
fn per_process(processes: &[ProcessSample], role: Role, value: impl Fn(&ProcessSample) -> String) -> String {
    let values: Vec<String> = processes.iter().filter(|p| p.role == role).map(value).collect();
    if values.is_empty() { "-".to_owned() } else { values.join(" / ") }
}

const TABLE_HEADER: &str = "| end s | sent | delivered | overdue | p50 ms | p99 ms | max ms | churn opened (failed) \
                            | node RSS MiB | node open files | node connections | Redis RSS MiB |\n\
                            | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |";

impl Interval {
    /// The interval as a row of the Markdown table under [`TABLE_HEADER`].
    fn row(&self) -> String {
        let (c, l) = (&self.counts, &self.latency_ms);
        let rss = |p: &ProcessSample| format!("{:.1}", mib(p.rss_bytes));
        let connections = if self.node_connections.is_empty() {
            "-".to_owned()
        } else {
            self.node_connections.iter().map(ToString::to_string).collect::<Vec<_>>().join(" / ")
        };
        format!(
            "| {:.0} | {} | {} | {} | {:.2} | {:.1} | {:.1} | {} ({}) | {} | {} | {connections} | {} |",
            self.end_seconds,
            c.sent,
            c.delivered,
            c.overdue,
            l.p50,
            l.p99,
            l.max,
            c.churn_opened,
            c.churn_failed,
            per_process(&self.processes, Role::Node, rss),
            per_process(&self.processes, Role::Node, |p| p.open_files.to_string()),
            per_process(&self.processes, Role::Redis, rss),
        )
    }
}

impl SoakReport {
    /// The intervals as a Markdown table, then the comparison and the verdict.
    pub fn print(&self) {
        println!();
        println!(
            "Soak: {} node(s), {} long-lived users, {}/s between them, {} churn connections/s (clean close and \
             dropped socket in turn), {:.0}s warm-up, {:.0}s in {:.0}s intervals.",
            self.nodes.len(),
            self.users,
            self.rate,
            self.churn_rate,
            self.warmup_seconds,
            self.duration_seconds,
            self.interval_seconds
        );
        println!();
        println!("{TABLE_HEADER}");
        for interval in &self.intervals {
            println!("{}", interval.row());
        }
        println!();
        println!("- baseline (after warm-up): {}", describe(&self.baseline));
        println!(
            "- after churn stopped ({} in {:.1}s): {}",
            if self.settled { "settled" } else { "not settled" },
            self.settle_seconds,
            describe(&self.after)
        );
        let t = &self.totals;
        let c = &t.counts;
        println!(
            "- totals: sent {}, delivered {}, lost {}, unanswered {}, refused {}, not sent {}, overdue {} (late {}), \
             duplicates {}, undecodable {}; churn connections opened {}, failed {}, skipped {}; long-lived \
             connections closed early {}; {}",
            c.sent,
            c.delivered,
            t.lost,
            t.unanswered,
            c.refused,
            c.not_sent,
            c.overdue,
            c.late,
            c.duplicates,
            c.undecodable,
            c.churn_opened,
            c.churn_failed,
            c.churn_skipped,
            c.long_lived_closed,
            if self.drained { "all drained" } else { "drain timed out" }
        );
        let load = |l: Option<[f64; 3]>| l.map_or_else(|| "?".to_owned(), |[a, b, c]| format!("{a} {b} {c}"));
        println!(
            "- machine: {} x {}; load average {} before, {} after",
            self.machine.nproc,
            self.machine.cpu_model,
            load(self.machine.loadavg_start),
            load(self.machine.loadavg_end)
        );
        println!(
            "- verdict: {}",
            if self.passed { "pass".to_owned() } else { format!("fail: {}", self.shortfalls.join("; ")) }
        );
    }

    /// Fails when the verdict did, so that the process exits non-zero.
    pub fn ensure_passed(&self) -> anyhow::Result<()> {
        if !self.passed {
            bail!("soak failed: {}", self.shortfalls.join("; "));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn process(role: Role, name: &str, rss_bytes: u64, open_files: u64) -> ProcessSample {
        ProcessSample { role, name: name.to_owned(), pid: 1, rss_bytes, open_files }
    }

    /// Two nodes and Redis at the baseline.
    fn baseline() -> Vec<ProcessSample> {
        vec![
            process(Role::Node, "a", 40 * MIB, 230),
            process(Role::Node, "b", 40 * MIB, 230),
            process(Role::Redis, "redis", 10 * MIB, 20),
        ]
    }

    fn clean_totals() -> Totals {
        Totals { counts: Counts { sent: 1000, delivered: 1000, ..Counts::default() }, lost: 0, unanswered: 0 }
    }

    fn judge(after: &[ProcessSample], first_p99_ms: f64, last_p99_ms: f64, totals: &Totals) -> Vec<String> {
        shortfalls(&Evidence { baseline: &baseline(), after, first_p99_ms, last_p99_ms, totals, settled: true })
    }

    #[test]
    fn a_run_back_at_its_baseline_passes() {
        assert!(judge(&baseline(), 20.0, 22.0, &clean_totals()).is_empty());
    }

    #[test]
    fn growth_within_the_allowances_passes() {
        // 16 more files; 20% + 8 MiB more RSS, exactly.
        let after = vec![
            process(Role::Node, "a", 56 * MIB, 246),
            process(Role::Node, "b", 40 * MIB, 200),
            process(Role::Redis, "redis", 10 * MIB, 20),
        ];
        assert!(judge(&after, 20.0, 22.0, &clean_totals()).is_empty());
    }

    #[test]
    fn a_node_that_keeps_files_or_memory_fails() {
        let files = vec![
            process(Role::Node, "a", 40 * MIB, 247),
            process(Role::Node, "b", 40 * MIB, 230),
            process(Role::Redis, "redis", 10 * MIB, 20),
        ];
        assert_eq!(judge(&files, 20.0, 20.0, &clean_totals()), ["node a: open files 230 -> 247 (at most 246)"]);
        let memory = vec![
            process(Role::Node, "a", 40 * MIB, 230),
            process(Role::Node, "b", 56 * MIB + 1, 230),
            process(Role::Redis, "redis", 10 * MIB, 20),
        ];
        assert_eq!(judge(&memory, 20.0, 20.0, &clean_totals()), ["node b: RSS 40.0 -> 56.0 MiB (at most 56.0)"]);
    }

    #[test]
    fn redis_growth_is_not_judged() {
        let after = vec![
            process(Role::Node, "a", 40 * MIB, 230),
            process(Role::Node, "b", 40 * MIB, 230),
            process(Role::Redis, "redis", 100 * MIB, 500),
        ];
        assert!(judge(&after, 20.0, 20.0, &clean_totals()).is_empty());
    }

    #[test]
    fn latency_fails_only_when_it_triples_and_passes_the_floor() {
        assert!(judge(&baseline(), 10.0, 45.0, &clean_totals()).is_empty(), "4.5x, but under 50 ms");
        assert!(judge(&baseline(), 20.0, 60.0, &clean_totals()).is_empty(), "3x exactly");
        assert_eq!(
            judge(&baseline(), 20.0, 61.0, &clean_totals()),
            ["p99 61.0 ms in the last interval, 20.0 ms in the first"]
        );
        assert_eq!(judge(&baseline(), 20.0, f64::NAN, &clean_totals()).len(), 1);
    }

    #[test]
    fn every_message_and_connection_must_go_through() {
        let with =
            |counts: Counts| Totals { counts: Counts { sent: 1000, delivered: 1000, ..counts }, ..clean_totals() };
        let none = Counts::default();
        let cases = [
            (Totals { lost: 1, ..clean_totals() }, "1 accepted and never delivered"),
            (Totals { unanswered: 2, ..clean_totals() }, "2 sent and never answered"),
            (with(Counts { refused: 3, ..none }), "3 refused with an error"),
            (with(Counts { not_sent: 4, ..none }), "4 not sent: a connection's queue was full"),
            (with(Counts { churn_failed: 5, ..none }), "5 churn connections failed"),
            (with(Counts { churn_skipped: 6, ..none }), "6 churn connections skipped: too many under way"),
            (with(Counts { long_lived_closed: 7, ..none }), "7 long-lived connections closed early"),
        ];
        for (totals, expected) in cases {
            assert_eq!(judge(&baseline(), 20.0, 20.0, &totals), [expected]);
        }
        // Late and duplicate deliveries are reported, not failed: the message arrived.
        let mut totals = clean_totals();
        totals.counts.late = 1;
        totals.counts.duplicates = 1;
        assert!(judge(&baseline(), 20.0, 20.0, &totals).is_empty());
        let nothing = Totals::default();
        assert_eq!(judge(&baseline(), 0.0, 0.0, &nothing), ["nothing delivered"]);
    }

    #[test]
    fn connections_not_gone_in_time_fail() {
        let baseline = baseline();
        let evidence = Evidence {
            baseline: &baseline,
            after: &baseline,
            first_p99_ms: 20.0,
            last_p99_ms: 20.0,
            totals: &clean_totals(),
            settled: false,
        };
        assert_eq!(shortfalls(&evidence), ["churned connections still open 30s after churn stopped"]);
    }

    #[test]
    fn counts_add_up_by_name() {
        let counters = Counters::default();
        counters.sent.fetch_add(3, Ordering::SeqCst);
        counters.late.fetch_add(1, Ordering::SeqCst);
        let mut total = counters.take();
        assert_eq!(counters.take(), Counts::default(), "taking starts the next period from zero");
        total += Counts { sent: 2, churn_failed: 1, ..Counts::default() };
        assert_eq!(total, Counts { sent: 5, late: 1, churn_failed: 1, ..Counts::default() });
    }

    #[test]
    fn the_connections_gauge_is_read_from_the_exposition() {
        let text = "HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n\
                    # HELP switchboard_connections Open client WebSocket connections\n\
                    # TYPE switchboard_connections gauge\n\
                    switchboard_connections 187\n\
                    switchboard_connections_total 30412\n";
        assert_eq!(connections_gauge(text), Some(187));
        assert_eq!(connections_gauge("switchboard_connections_total 5\n"), None);
        assert_eq!(connections_gauge("switchboard_connections -1\n"), None);
        assert_eq!(connections_gauge("switchboard_connections many\n"), None);
    }

    fn load() -> Load {
        Load {
            users: 200,
            rate: 1000.0,
            churn_rate: 50.0,
            warmup: Duration::from_secs(30),
            duration: Duration::from_secs(600),
            interval: Duration::from_secs(30),
            body_bytes: 100,
            seed: None,
        }
    }

    #[test]
    fn loads_are_bounded() {
        assert!(load().validate().is_ok());
        assert!(Load { churn_rate: 0.0, ..load() }.validate().is_ok());
        assert!(Load { duration: Duration::from_secs(60), ..load() }.validate().is_ok());
        let bad = [
            Load { users: 1, ..load() },
            Load { rate: 0.0, ..load() },
            Load { churn_rate: -1.0, ..load() },
            Load { churn_rate: 1001.0, ..load() },
            Load { duration: Duration::from_secs(3601), ..load() },
            Load { duration: Duration::from_secs(59), ..load() },
            Load { interval: Duration::from_millis(500), ..load() },
            Load { warmup: Duration::from_secs(601), ..load() },
            Load { body_bytes: 1_000_000, ..load() },
        ];
        for load in bad {
            assert!(load.validate().is_err(), "accepted {load:?}");
        }
    }

    fn shared() -> Shared {
        Shared {
            codec: Codec::Json,
            run: "r-".to_owned(),
            user_ids: vec![UserId::parse("u-0").expect("valid"), UserId::parse("u-1").expect("valid")],
            padding: String::new(),
            secret: String::new(),
            next_seq: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")),
            counters: Counters::default(),
            churn_in_flight: AtomicUsize::new(0),
        }
    }

    fn delivery(seq: u64, t: u64) -> String {
        format!(
            r#"{{"type":"message","msg":"0193a6c2-7c1e-7cc5-8f3e-3b5a0e1c9d01","from":"u-1","to":"u-0","body":{{"t":{t},"s":{seq},"p":""}},"ts":1}}"#
        )
    }

    #[test]
    fn a_message_is_tracked_from_issue_to_delivery() {
        let shared = shared();
        let (seq, _) = shared.issue(0).expect("issued");
        let accepted = format!(
            r#"{{"type":"accepted","id":"r-{seq}","msg":"0193a6c2-7c1e-7cc5-8f3e-3b5a0e1c9d01","status":"routed"}}"#
        );
        assert!(matches!(shared.receive(accepted.as_bytes()), Received::Answered(s) if s == seq));
        assert_eq!(shared.undelivered(), (1, 0), "accepted, on its way");
        assert!(matches!(shared.receive(delivery(seq, chat::now_us()).as_bytes()), Received::Message { .. }));
        assert_eq!(shared.undelivered(), (0, 0));
        assert!(matches!(shared.receive(delivery(seq, chat::now_us()).as_bytes()), Received::Message { .. }));
        let counts = shared.counters.take();
        assert_eq!((counts.delivered, counts.duplicates, counts.late), (1, 1, 0));
        assert_eq!(shared.take_latency().count, 1);
    }

    #[test]
    fn refused_and_unanswered_messages_are_told_apart_from_lost_ones() {
        let shared = shared();
        let (refused, _) = shared.issue(1).expect("issued");
        let (unanswered, _) = shared.issue(1).expect("issued");
        let error = format!(r#"{{"type":"error","id":"r-{refused}","code":"internal","message":"redis"}}"#);
        assert!(matches!(shared.receive(error.as_bytes()), Received::Answered(s) if s == refused));
        assert_eq!(shared.undelivered(), (0, 1));
        shared.withdraw(unanswered);
        assert_eq!(shared.undelivered(), (0, 0));
        assert!(matches!(shared.receive(b"not json"), Received::Other));
        let counts = shared.counters.take();
        assert_eq!((counts.refused, counts.undecodable), (1, 1));
    }

    #[test]
    fn an_overdue_message_that_arrives_is_late() {
        let shared = shared();
        let (seq, _) = shared.issue(0).expect("issued");
        if let Some(pending) = shared.pending().get_mut(&seq) {
            pending.issued -= OVERDUE_AFTER;
        }
        shared.sweep();
        shared.sweep();
        assert_eq!(shared.counters.take().overdue, 1, "counted once");
        shared.receive(delivery(seq, chat::now_us()).as_bytes());
        let counts = shared.counters.take();
        assert_eq!((counts.delivered, counts.late), (1, 1));
    }
}
