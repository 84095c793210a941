//! Open-loop chat traffic: messages at a fixed rate between connected users,
//! 1:1 or to a group (one send to a list of recipients), cross-node where
//! there are several nodes, measured end to end (latency, losses,
//! duplicates, per delivery: one message on one recipient's connection)
//! together with what the servers spent on it (CPU time and memory of the
//! node and Redis processes).
//!
//! Open loop: a scheduler issues sends on a fixed timetable whatever the
//! server answers. Each connection has a writer task fed through a bounded
//! queue; a message whose writer is that far behind is counted as not sent
//! instead of delaying the timetable. Latency runs from the moment the
//! scheduler issued a message (its body's `t`) to the moment the recipient's
//! reader decoded it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use switchboard_protocol::{
    AcceptStatus, Body, ClientFrame, ClientMsgId, Codec, Encoded, MsgId, ServerFrame, To, UserId,
};
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{WebSocketStream, client_async};

use crate::proc::{cpu_seconds, ensure_open_files, load_average, machine, rss_bytes};
use crate::targets::{Process, Role, Targets};

pub(crate) const MAX_USERS: usize = 20_000;
pub const MAX_RATE: f64 = 1_000_000.0;
const MAX_DURATION: Duration = Duration::from_secs(600);
pub(crate) const MAX_BODY_BYTES: usize = 60_000;
/// Messages waiting for one connection's writer before further ones are dropped.
const SEND_QUEUE: usize = 64;
/// Acks waiting for one connection's writer (the server tracks 4096 unacked).
const ACK_QUEUE: usize = 4096;
/// How long to wait for messages still on their way after sending stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Readers record latencies into this many histograms, to keep locks uncontended.
const HISTOGRAM_SHARDS: usize = 16;
/// Share of the nodes' per-connection rate limit a connection may be offered.
const RATE_LIMIT_HEADROOM: f64 = 0.9;

#[derive(Clone, Copy, Debug, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Json,
    Msgpack,
}

impl Protocol {
    fn codec(self) -> Codec {
        match self {
            Self::Json => Codec::Json,
            Self::Msgpack => Codec::MsgPack,
        }
    }
}

/// The load of a chat run, from flags or from a scenario file's `[chat]`
/// table (where every field but `seed` must be given).
#[derive(Clone, Debug, clap::Args, Deserialize)]
#[command(next_help_heading = "Load")]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// Users, one connection each (ids u-0 .. u-N); at most 20000.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Messages per second offered in all; at most 1000000.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// The measured window; at most 10 minutes.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    #[serde(deserialize_with = "crate::scenario::duration")]
    pub duration: Duration,
    /// Traffic before the measured window, not counted; at most 10 minutes.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    #[serde(deserialize_with = "crate::scenario::duration")]
    pub warmup: Duration,
    /// Size of each message body (JSON text) in bytes.
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// Recipients ack every message (in durable mode this empties the logs).
    #[arg(long)]
    pub ack: bool,
    /// Recipients of each send, distinct users other than the sender spread over every node; more
    /// than 1 sends to a list (the nodes' --max-recipients must allow it).
    #[arg(long, default_value_t = 1)]
    #[serde(default = "one")]
    pub recipients: usize,
    /// Client encoding.
    #[arg(long, value_enum, default_value = "json")]
    pub protocol: Protocol,
    /// Seed of the choice of senders and recipients; random when left out.
    #[arg(long)]
    pub seed: Option<u64>,
}

fn one() -> usize {
    1
}

impl Load {
    /// The same load offered at `rate`.
    pub fn at_rate(&self, rate: f64) -> Self {
        Self { rate, ..self.clone() }
    }

    /// The checks that do not depend on the targets.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.users < 2 || self.users > MAX_USERS {
            bail!("users must be 2 to {MAX_USERS}");
        }
        if self.rate.is_nan() || self.rate <= 0.0 || self.rate > MAX_RATE {
            bail!("rate must be above 0 and at most {MAX_RATE}");
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION || self.warmup > MAX_DURATION {
            bail!(
                "duration must be above 0, and duration and warmup at most {}",
                humantime::format_duration(MAX_DURATION)
            );
        }
        if self.body_bytes > MAX_BODY_BYTES {
            bail!("body_bytes must be at most {MAX_BODY_BYTES}");
        }
        if self.recipients == 0 || self.recipients >= self.users {
            bail!("recipients must be 1 to users - 1");
        }
        Ok(())
    }
}

pub(crate) type Socket = WebSocketStream<tokio::net::TcpStream>;

/// One message for a writer to send.
struct Outgoing {
    seq: u64,
    /// One user, or the list of a group send.
    to: Vec<u32>,
    /// When the scheduler issued it, Unix microseconds; goes into the body.
    t_us: u64,
}

/// What the tasks share while traffic runs.
struct Shared {
    codec: Codec,
    ack: bool,
    /// Recipients per send: deliveries per accepted message.
    recipients: u64,
    /// Prefix of this run's send ids, so that a rerun within the server's
    /// 10-minute dedupe memory does not reuse ids.
    run: String,
    /// First sequence number of the measured window.
    window_first_seq: u64,
    /// Unix microseconds when the window began; `u64::MAX` before.
    window_start_us: AtomicU64,
    user_ids: Vec<UserId>,
    /// Padding that makes a body `--body-bytes` long.
    padding: String,
    /// Window messages handed to writers and not yet written (or failed).
    pending_window: AtomicU64,
    sent_window: AtomicU64,
    /// Window messages a writer could not write.
    write_failures: AtomicU64,
    routed_window: AtomicU64,
    stored_window: AtomicU64,
    /// Window sends answered, by `accepted` or by `error`.
    answered_window: AtomicU64,
    /// Distinct deliveries (message, recipient) of the window.
    delivered_window: AtomicU64,
    latency: Vec<Mutex<Histogram<u64>>>,
}

impl Shared {
    fn accepted_window(&self) -> u64 {
        self.routed_window.load(Ordering::Relaxed) + self.stored_window.load(Ordering::Relaxed)
    }

    /// Deliveries the accepted messages of the window owe.
    fn owed_window(&self) -> u64 {
        self.accepted_window() * self.recipients
    }

    fn in_window_seq(&self, id: &ClientMsgId) -> Option<bool> {
        let seq: u64 = id.as_str().strip_prefix(self.run.as_str())?.parse().ok()?;
        Some(seq >= self.window_first_seq)
    }
}

/// What one reader saw.
#[derive(Default)]
struct ConnStats {
    delivered_warmup: u64,
    duplicates: u64,
    receipts: u64,
    undecodable: u64,
    bad_bodies: u64,
    acks_dropped: u64,
    errors_window: HashMap<&'static str, u64>,
    errors_warmup: u64,
    close: Option<String>,
}

/// CPU and memory of the measured processes at one moment.
struct Sample {
    cpu: Vec<f64>,
    rss: Vec<u64>,
    own_cpu: f64,
}

/// Runs `load` against `targets` and measures it; the report's `label` is `label`.
pub async fn run(targets: &Targets, load: &Load, label: Option<&str>) -> anyhow::Result<ChatReport> {
    validate(targets, load)?;
    let codec = load.protocol.codec();
    let nodes = targets.nodes.len();
    let processes = targets.processes();
    // Fail early on a wrong pid.
    sample(&processes)?;
    let load_before = load_average();

    let run_id = format!("{:x}-", now_us());
    let window_first_seq = (load.warmup.as_secs_f64() * load.rate) as u64;
    let total_seq = ((load.warmup + load.duration).as_secs_f64() * load.rate) as u64;
    let overhead = format!(r#"{{"t":{},"p":""}}"#, now_us()).len();
    let latency = (0..HISTOGRAM_SHARDS)
        .map(|_| Histogram::new_with_bounds(1, 60_000_000, 3).map(Mutex::new))
        .collect::<Result<Vec<_>, _>>()?;
    let shared = Arc::new(Shared {
        codec,
        ack: load.ack,
        recipients: load.recipients as u64,
        run: run_id,
        window_first_seq,
        window_start_us: AtomicU64::new(u64::MAX),
        user_ids: (0..load.users).map(|i| UserId::parse(&format!("u-{i}"))).collect::<Result<_, _>>()?,
        padding: "x".repeat(load.body_bytes.saturating_sub(overhead)),
        pending_window: AtomicU64::new(0),
        sent_window: AtomicU64::new(0),
        write_failures: AtomicU64::new(0),
        routed_window: AtomicU64::new(0),
        stored_window: AtomicU64::new(0),
        answered_window: AtomicU64::new(0),
        delivered_window: AtomicU64::new(0),
        latency,
    });

    let sockets = connect_users(targets, load.users, codec).await?;

    // A writer and a reader per connection.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut queues = Vec::with_capacity(load.users);
    let mut writers: Vec<JoinHandle<()>> = Vec::with_capacity(load.users);
    let mut readers: Vec<JoinHandle<ConnStats>> = Vec::with_capacity(load.users);
    for (i, socket) in sockets.into_iter().enumerate() {
        let (sink, stream) = socket.split();
        let (queue_tx, queue_rx) = mpsc::channel(SEND_QUEUE);
        let (ack_tx, ack_rx) = mpsc::channel(ACK_QUEUE);
        queues.push(queue_tx);
        writers.push(tokio::spawn(write_loop(sink, queue_rx, ack_rx, shared.clone())));
        readers.push(tokio::spawn(read_loop(i, stream, ack_tx, shared.clone(), stop_rx.clone())));
    }

    // The scheduler: sequence number n is due at n / rate seconds.
    let mut rng = load.seed.map_or_else(|| SmallRng::from_rng(&mut rand::rng()), SmallRng::seed_from_u64);
    let mut order: Vec<u32> = (0..load.users as u32).collect();
    let mut next = order.len();
    let mut not_sent_full = 0u64;
    let mut not_sent_closed = 0u64;
    let mut max_lag = Duration::ZERO;
    let mut issued = 0u64;
    let mut window: Option<(Instant, Sample)> = None;
    let warmup = load.warmup.as_secs_f64();
    let total = (load.warmup + load.duration).as_secs_f64();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    loop {
        tick.tick().await;
        let elapsed = started.elapsed().as_secs_f64();
        if window.is_none() && elapsed >= warmup {
            // Every warmup message was issued on an earlier tick, so its `t`
            // is below the window's start.
            shared.window_start_us.store(now_us(), Ordering::SeqCst);
            window = Some((Instant::now(), sample(&processes)?));
        }
        let cap = if window.is_some() { total_seq } else { window_first_seq };
        let due = ((elapsed * load.rate) as u64).min(cap);
        if due > issued {
            let behind = Duration::from_secs_f64((elapsed - issued as f64 / load.rate).max(0.0));
            max_lag = max_lag.max(behind);
        }
        let t_us = now_us();
        // Warmup messages issued on the tick that opens the window keep a
        // `t` below the window's start, so that readers do not count them.
        let warmup_t_us = t_us.min(shared.window_start_us.load(Ordering::SeqCst).saturating_sub(1));
        while issued < due {
            // Senders in shuffled rounds: random, yet no connection gets more
            // than its share of the rate.
            if next == order.len() {
                order.shuffle(&mut rng);
                next = 0;
            }
            let from = order[next] as usize;
            next += 1;
            let to = if load.recipients == 1 {
                vec![recipient(&mut rng, from, load.users, nodes)]
            } else {
                group(&mut rng, from, load.users, load.recipients)
            };
            let t_us = if issued < window_first_seq { warmup_t_us } else { t_us };
            match queues[from].try_send(Outgoing { seq: issued, to, t_us }) {
                Ok(()) => {
                    if issued >= window_first_seq {
                        shared.pending_window.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Err(mpsc::error::TrySendError::Full(_)) => not_sent_full += u64::from(issued >= window_first_seq),
                Err(mpsc::error::TrySendError::Closed(_)) => not_sent_closed += u64::from(issued >= window_first_seq),
            }
            issued += 1;
        }
        if issued >= total_seq && elapsed >= total {
            break;
        }
    }
    drop(queues);
    let send_end = Instant::now();
    let (window_start, before) = match window {
        Some(w) => w,
        None => (send_end, sample(&processes)?),
    };
    let send_seconds = send_end.duration_since(window_start).as_secs_f64();
    let at_send_end = sample(&processes)?;

    // Wait for what is still on its way.
    let drain_deadline = send_end + DRAIN_TIMEOUT;
    let drained = loop {
        let pending = shared.pending_window.load(Ordering::SeqCst);
        let sent = shared.sent_window.load(Ordering::SeqCst);
        let answered = shared.answered_window.load(Ordering::SeqCst);
        if pending == 0 && answered >= sent && shared.delivered_window.load(Ordering::SeqCst) >= shared.owed_window() {
            break true;
        }
        if Instant::now() >= drain_deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let drain_seconds = send_end.elapsed().as_secs_f64();
    let after = sample(&processes)?;

    // Stop the readers, then the writers (they end once their queues close).
    let _ = stop_tx.send(true);
    let mut stats = Vec::with_capacity(readers.len());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for reader in readers {
        let abort = reader.abort_handle();
        match tokio::time::timeout_at(deadline, reader).await {
            Ok(Ok(s)) => stats.push(s),
            Ok(Err(_)) => {}
            Err(_) => abort.abort(),
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    for writer in writers {
        let abort = writer.abort_handle();
        if tokio::time::timeout_at(deadline, writer).await.is_err() {
            abort.abort();
        }
    }

    Measured {
        targets,
        load,
        label,
        shared: &shared,
        stats: &stats,
        processes: &processes,
        before: &before,
        at_send_end: &at_send_end,
        after: &after,
        send_seconds,
        drain_seconds,
        drained,
        not_sent_full,
        not_sent_closed,
        max_lag,
        load_average: [load_before, load_average()],
    }
    .report()
}

/// Checks `load` against the targets before anything connects.
pub fn validate(targets: &Targets, load: &Load) -> anyhow::Result<()> {
    targets.validate()?;
    load.validate()?;
    ensure_fits_targets(targets, load.rate, load.users)?;
    ensure_open_files(load.users)
}

/// Fails when `users` connections spread over the nodes cannot carry `rate`
/// messages/s in all: fewer users than nodes, or more per connection than
/// the nodes' rate limit allows with headroom.
pub(crate) fn ensure_fits_targets(targets: &Targets, rate: f64, users: usize) -> anyhow::Result<()> {
    if users < targets.nodes.len() {
        bail!("users must be at least the number of nodes ({})", targets.nodes.len());
    }
    let per_connection = rate / users as f64;
    let allowed = targets.rate_limit * RATE_LIMIT_HEADROOM;
    if per_connection > allowed {
        let enough_users = (rate / allowed).ceil() as u64;
        let limit = (per_connection / RATE_LIMIT_HEADROOM).ceil() as u64;
        bail!(
            "rate {rate} over {users} users offers {per_connection:.0} messages/s per connection, more than 90% of \
             the nodes' per-connection rate limit ({}/s): the nodes would answer rate_limited. Use {enough_users} \
             users or more, or start the nodes with --rate-limit {limit} (and a matching --rate-limit-burst) and \
             pass --rate-limit {limit} to sb-load too.",
            targets.rate_limit
        );
    }
    Ok(())
}

/// `count` distinct recipients for `from`, drawn from every other user: since
/// users are spread over the nodes in turn, so are they.
fn group(rng: &mut SmallRng, from: usize, users: usize, count: usize) -> Vec<u32> {
    rand::seq::index::sample(rng, users - 1, count)
        .into_iter()
        .map(|to| (if to >= from { to + 1 } else { to }) as u32)
        .collect()
}

/// Connects users u-0 .. u-`users` as [`Targets::route`] spreads them, and
/// returns their connections in that order; fails unless all connect, since
/// a run needs every one of them.
pub(crate) async fn connect_users(targets: &Targets, users: usize, codec: Codec) -> anyhow::Result<Vec<Socket>> {
    let started = Instant::now();
    let mut opened: Vec<(usize, anyhow::Result<Socket>)> = futures_util::stream::iter(0..users)
        .map(|i| {
            let (node, source) = targets.route(i);
            let secret = targets.jwt_secret.as_str();
            async move {
                let result = tokio::time::timeout(CONNECT_TIMEOUT, open(i, node, source, secret, codec))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("no welcome within {CONNECT_TIMEOUT:?}")));
                (i, result)
            }
        })
        .buffer_unordered(200)
        .collect()
        .await;
    opened.sort_by_key(|(i, _)| *i);
    let failed = opened.iter().filter(|(_, r)| r.is_err()).count();
    if let Some((i, Err(error))) = opened.iter().find(|(_, r)| r.is_err()) {
        bail!("{failed} of {users} connections failed; the first, user u-{i}: {error:#}");
    }
    println!("{users} users connected to {} node(s) in {:.1}s", targets.nodes.len(), started.elapsed().as_secs_f64());
    Ok(opened.into_iter().filter_map(|(_, result)| result.ok()).collect())
}

/// A random recipient for `from`: on another node when there are several, else any other user.
pub(crate) fn recipient(rng: &mut SmallRng, from: usize, users: usize, nodes: usize) -> u32 {
    if nodes >= 2 {
        let node = (from % nodes + rng.random_range(1..nodes)) % nodes;
        // Users node, node + nodes, node + 2 * nodes, ... live on `node`.
        let on_node = (users - node).div_ceil(nodes);
        (node + nodes * rng.random_range(0..on_node)) as u32
    } else {
        let to = rng.random_range(0..users - 1);
        (if to >= from { to + 1 } else { to }) as u32
    }
}

fn sample(processes: &[Process]) -> anyhow::Result<Sample> {
    Ok(Sample {
        cpu: processes.iter().map(|p| cpu_seconds(p.pid)).collect::<Result<_, _>>()?,
        rss: processes.iter().map(|p| rss_bytes(p.pid)).collect::<Result<_, _>>()?,
        own_cpu: cpu_seconds(std::process::id())?,
    })
}

pub(crate) fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

pub(crate) async fn open(
    i: usize,
    node: SocketAddr,
    source: IpAddr,
    secret: &str,
    codec: Codec,
) -> anyhow::Result<Socket> {
    let socket = if source.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(node).await.with_context(|| format!("connect to {node} from {source}"))?;
    stream.set_nodelay(true)?;
    let mut request = format!("ws://{node}/ws").into_client_request()?;
    let token = crate::token(secret, &format!("u-{i}"))?;
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
    request.headers_mut().insert("sec-websocket-protocol", codec.protocol().parse()?);
    let (mut ws, _) = client_async(request, stream).await.with_context(|| format!("upgrade at {node}"))?;
    match ws.next().await {
        Some(Ok(Message::Text(_) | Message::Binary(_))) => Ok(ws),
        other => bail!("no welcome: {other:?}"),
    }
}

async fn write_loop(
    mut sink: SplitSink<Socket, Message>,
    mut queue: mpsc::Receiver<Outgoing>,
    mut acks: mpsc::Receiver<MsgId>,
    shared: Arc<Shared>,
) {
    let mut queue_open = true;
    let mut acks_open = true;
    let mut batch: Vec<Message> = Vec::new();
    // Window messages in the batch.
    let mut window_sends = 0u64;
    let push_send = |batch: &mut Vec<Message>, window_sends: &mut u64, out: Outgoing| {
        let in_window = out.seq >= shared.window_first_seq;
        match send_frame(&shared, &out) {
            Some(frame) => {
                batch.push(frame);
                *window_sends += u64::from(in_window);
            }
            None if in_window => {
                shared.write_failures.fetch_add(1, Ordering::SeqCst);
                shared.pending_window.fetch_sub(1, Ordering::SeqCst);
            }
            None => {}
        }
    };
    while queue_open || acks_open {
        tokio::select! {
            ack = acks.recv(), if acks_open => match ack {
                Some(msg) => batch.push(ack_frame(&shared, msg)),
                None => acks_open = false,
            },
            out = queue.recv(), if queue_open => match out {
                Some(out) => push_send(&mut batch, &mut window_sends, out),
                None => queue_open = false,
            },
        }
        // Take whatever else is ready, then write it in one flush.
        while batch.len() < 256 {
            if let Ok(msg) = acks.try_recv() {
                batch.push(ack_frame(&shared, msg));
            } else if let Ok(out) = queue.try_recv() {
                push_send(&mut batch, &mut window_sends, out);
            } else {
                break;
            }
        }
        if batch.is_empty() {
            continue;
        }
        let mut result = Ok(());
        for frame in batch.drain(..) {
            result = sink.feed(frame).await;
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = sink.flush().await;
        }
        let written = std::mem::take(&mut window_sends);
        if result.is_err() {
            // The connection is gone: account for this batch and whatever waits.
            queue.close();
            let mut failed = written;
            while let Ok(out) = queue.try_recv() {
                failed += u64::from(out.seq >= shared.window_first_seq);
            }
            shared.write_failures.fetch_add(failed, Ordering::SeqCst);
            shared.pending_window.fetch_sub(failed, Ordering::SeqCst);
            return;
        }
        shared.sent_window.fetch_add(written, Ordering::SeqCst);
        shared.pending_window.fetch_sub(written, Ordering::SeqCst);
    }
    let _ = sink.close().await;
}

/// The frame of a `send`; none if its id came out invalid (it cannot: a hex
/// timestamp, a dash and at most 20 digits are far below 64 bytes).
fn send_frame(shared: &Shared, out: &Outgoing) -> Option<Message> {
    let body = format!(r#"{{"t":{},"p":"{}"}}"#, out.t_us, shared.padding);
    let user = |to: &u32| shared.user_ids[*to as usize].clone();
    let to = match out.to.as_slice() {
        [one] => To::One(user(one)),
        many => To::Many(many.iter().map(user).collect()),
    };
    let frame = ClientFrame::Send {
        id: ClientMsgId::parse(&format!("{}{}", shared.run, out.seq)).ok()?,
        to,
        body: Body::from_json(&body).ok()?,
        ephemeral: false,
    };
    Some(encoded(shared.codec.encode_client(&frame)))
}

fn ack_frame(shared: &Shared, msg: MsgId) -> Message {
    encoded(shared.codec.encode_client(&ClientFrame::Ack { msg }))
}

pub(crate) fn encoded(encoded: Encoded) -> Message {
    match encoded {
        Encoded::Text(text) => Message::Text(text.into()),
        Encoded::Binary(bytes) => Message::Binary(bytes.into()),
    }
}

#[derive(Deserialize)]
struct BodyTime {
    t: u64,
}

async fn read_loop(
    i: usize,
    mut stream: SplitStream<Socket>,
    acks: mpsc::Sender<MsgId>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> ConnStats {
    let mut stats = ConnStats::default();
    let mut seen: HashSet<MsgId> = HashSet::new();
    let shard = &shared.latency[i % HISTOGRAM_SHARDS];
    loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let decoded = match frame {
            Some(Ok(Message::Text(text))) => shared.codec.decode_server(text.as_bytes()),
            Some(Ok(Message::Binary(bytes))) => shared.codec.decode_server(&bytes),
            Some(Ok(Message::Close(close))) => {
                stats.close =
                    Some(close.map_or_else(|| "close".to_owned(), |c| format!("{} {}", u16::from(c.code), c.reason)));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => {
                stats.close = Some(format!("error: {error}"));
                break;
            }
            None => {
                stats.close = Some("eof".to_owned());
                break;
            }
        };
        let now = now_us();
        let Ok(frame) = decoded else {
            stats.undecodable += 1;
            continue;
        };
        match frame {
            ServerFrame::Message(delivery) => {
                if shared.ack && acks.try_send(delivery.msg).is_err() {
                    stats.acks_dropped += 1;
                }
                if !seen.insert(delivery.msg) {
                    stats.duplicates += 1;
                    continue;
                }
                let Ok(BodyTime { t }) = serde_json::from_str(delivery.body.json()) else {
                    stats.bad_bodies += 1;
                    continue;
                };
                if t >= shared.window_start_us.load(Ordering::SeqCst) {
                    shared.delivered_window.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut histogram) = shard.lock() {
                        histogram.saturating_record(now.saturating_sub(t).max(1));
                    }
                } else {
                    stats.delivered_warmup += 1;
                }
            }
            ServerFrame::Accepted { id, status, .. } if shared.in_window_seq(&id) == Some(true) => {
                match status {
                    AcceptStatus::Routed => shared.routed_window.fetch_add(1, Ordering::SeqCst),
                    AcceptStatus::Stored | AcceptStatus::Offline => shared.stored_window.fetch_add(1, Ordering::SeqCst),
                };
                shared.answered_window.fetch_add(1, Ordering::SeqCst);
            }
            ServerFrame::Error { id, code, .. } => {
                let in_window = match &id {
                    Some(id) => shared.in_window_seq(id) == Some(true),
                    None => now >= shared.window_start_us.load(Ordering::SeqCst),
                };
                if in_window {
                    *stats.errors_window.entry(code.as_str()).or_default() += 1;
                    if id.is_some() {
                        shared.answered_window.fetch_add(1, Ordering::SeqCst);
                    }
                } else {
                    stats.errors_warmup += 1;
                }
            }
            ServerFrame::Receipt(_) => stats.receipts += 1,
            _ => {}
        }
    }
    stats
}

/// What a run measured, before it is summed up into a [`ChatReport`].
struct Measured<'a> {
    targets: &'a Targets,
    load: &'a Load,
    label: Option<&'a str>,
    shared: &'a Shared,
    stats: &'a [ConnStats],
    processes: &'a [Process],
    before: &'a Sample,
    at_send_end: &'a Sample,
    after: &'a Sample,
    send_seconds: f64,
    drain_seconds: f64,
    drained: bool,
    not_sent_full: u64,
    not_sent_closed: u64,
    max_lag: Duration,
    /// Load averages before connecting and at the end.
    load_average: [Option<[f64; 3]>; 2],
}

/// The result of a chat run: printed as a table, written as JSON (these
/// field names), and judged step by step by the saturation search.
#[derive(Serialize)]
pub struct ChatReport {
    scenario: &'static str,
    label: Option<String>,
    nodes: Vec<String>,
    users: usize,
    protocol: &'static str,
    ack: bool,
    recipients_per_send: usize,
    body_bytes: usize,
    warmup_seconds: f64,
    pub duration_seconds: f64,
    pub offered_rate: f64,
    /// Messages due in the measured window.
    pub offered: u64,
    sent: u64,
    send_rate: f64,
    not_sent: u64,
    not_sent_queue_full: u64,
    not_sent_connection_gone: u64,
    write_failures: u64,
    max_schedule_lag_ms: f64,
    accepted: u64,
    accepted_routed: u64,
    accepted_stored: u64,
    unanswered: u64,
    /// Distinct deliveries (message, recipient) of the window.
    pub delivered: u64,
    pub delivered_rate: f64,
    duplicates: u64,
    /// Deliveries owed by the accepted messages of the window and not made
    /// by the end of the drain.
    pub lost: u64,
    delivered_from_warmup_or_earlier: u64,
    errors: BTreeMap<String, u64>,
    errors_in_warmup: u64,
    closes: BTreeMap<String, u64>,
    receipts_whole_run: u64,
    undecodable_frames: u64,
    bodies_without_t: u64,
    acks_dropped: u64,
    drained: bool,
    drain_seconds: f64,
    pub latency_ms: Latency,
    /// Server CPU (nodes and Redis) per delivery.
    pub cpu_us_per_message: f64,
    processes: Vec<ProcessCost>,
    load_generator_cpu_seconds: f64,
    machine: Machine,
}

#[derive(Serialize)]
pub struct Latency {
    count: u64,
    pub p50: f64,
    p90: f64,
    pub p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

#[derive(Serialize)]
struct ProcessCost {
    role: Role,
    name: String,
    pid: u32,
    cpu_seconds: f64,
    cpu_seconds_while_sending: f64,
    cpu_us_per_message: f64,
    cpu_cores_while_sending: f64,
    rss_bytes_start: u64,
    rss_bytes_end: u64,
}

/// The machine a run had, and how busy it was.
#[derive(Serialize)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) cpu_model: String,
    pub(crate) loadavg_start: Option<[f64; 3]>,
    pub(crate) loadavg_end: Option<[f64; 3]>,
}

impl Measured<'_> {
    fn report(&self) -> anyhow::Result<ChatReport> {
        let (load, shared) = (self.load, self.shared);
        let offered = ((load.warmup + load.duration).as_secs_f64() * load.rate) as u64 - shared.window_first_seq;
        let sent = shared.sent_window.load(Ordering::SeqCst);
        let routed = shared.routed_window.load(Ordering::SeqCst);
        let stored = shared.stored_window.load(Ordering::SeqCst);
        let accepted = routed + stored;
        let delivered = shared.delivered_window.load(Ordering::SeqCst);
        let sum = |f: fn(&ConnStats) -> u64| self.stats.iter().map(f).sum::<u64>();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let mut closes: BTreeMap<String, u64> = BTreeMap::new();
        for s in self.stats {
            for (code, n) in &s.errors_window {
                *errors.entry((*code).to_owned()).or_default() += n;
            }
            if let Some(close) = &s.close {
                *closes.entry(close.clone()).or_default() += 1;
            }
        }
        let per_message = |seconds: f64| if delivered == 0 { 0.0 } else { seconds * 1e6 / delivered as f64 };
        let processes: Vec<ProcessCost> = self
            .processes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let cpu = self.after.cpu[i] - self.before.cpu[i];
                let cpu_sending = self.at_send_end.cpu[i] - self.before.cpu[i];
                ProcessCost {
                    role: p.role,
                    name: p.name.clone(),
                    pid: p.pid,
                    cpu_seconds: cpu,
                    cpu_seconds_while_sending: cpu_sending,
                    cpu_us_per_message: per_message(cpu),
                    cpu_cores_while_sending: cpu_sending / self.send_seconds.max(1e-9),
                    rss_bytes_start: self.before.rss[i],
                    rss_bytes_end: self.after.rss[i],
                }
            })
            .collect();
        let total_cpu: f64 = processes.iter().map(|p| p.cpu_seconds).sum();
        let (nproc, cpu_model) = machine();
        Ok(ChatReport {
            scenario: "chat",
            label: self.label.map(str::to_owned),
            nodes: self.targets.nodes.iter().map(ToString::to_string).collect(),
            users: load.users,
            protocol: load.protocol.codec().protocol(),
            ack: load.ack,
            recipients_per_send: load.recipients,
            body_bytes: load.body_bytes,
            warmup_seconds: load.warmup.as_secs_f64(),
            duration_seconds: load.duration.as_secs_f64(),
            offered_rate: load.rate,
            offered,
            sent,
            send_rate: sent as f64 / self.send_seconds.max(1e-9),
            not_sent: self.not_sent_full + self.not_sent_closed,
            not_sent_queue_full: self.not_sent_full,
            not_sent_connection_gone: self.not_sent_closed,
            write_failures: shared.write_failures.load(Ordering::SeqCst),
            max_schedule_lag_ms: self.max_lag.as_secs_f64() * 1000.0,
            accepted,
            accepted_routed: routed,
            accepted_stored: stored,
            unanswered: sent.saturating_sub(shared.answered_window.load(Ordering::SeqCst)),
            delivered,
            delivered_rate: delivered as f64 / load.duration.as_secs_f64(),
            duplicates: sum(|s| s.duplicates),
            lost: shared.owed_window().saturating_sub(delivered),
            delivered_from_warmup_or_earlier: sum(|s| s.delivered_warmup),
            errors,
            errors_in_warmup: sum(|s| s.errors_warmup),
            closes,
            receipts_whole_run: sum(|s| s.receipts),
            undecodable_frames: sum(|s| s.undecodable),
            bodies_without_t: sum(|s| s.bad_bodies),
            acks_dropped: sum(|s| s.acks_dropped),
            drained: self.drained,
            drain_seconds: self.drain_seconds,
            latency_ms: self.latency()?,
            cpu_us_per_message: per_message(total_cpu),
            processes,
            load_generator_cpu_seconds: self.after.own_cpu - self.before.own_cpu,
            machine: Machine {
                nproc,
                cpu_model,
                loadavg_start: self.load_average[0],
                loadavg_end: self.load_average[1],
            },
        })
    }

    /// The readers' histograms merged, in milliseconds.
    fn latency(&self) -> anyhow::Result<Latency> {
        let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for shard in &self.shared.latency {
            if let Ok(shard) = shard.lock() {
                latency.add(&*shard)?;
            }
        }
        let ms = |us: u64| us as f64 / 1000.0;
        let q = |quantile: f64| if latency.is_empty() { 0.0 } else { ms(latency.value_at_quantile(quantile)) };
        Ok(Latency {
            count: latency.len(),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: ms(latency.max()),
            mean: latency.mean() / 1000.0,
        })
    }
}

impl ChatReport {
    /// The report as a few readable lines.
    pub fn print(&self) {
        println!(
            "chat: {} node(s), {} users, {}, offered {}/s to {} recipient(s) each for {:.1}s after {:.1}s warmup, \
             body {} B, ack {}",
            self.nodes.len(),
            self.users,
            self.protocol,
            self.offered_rate,
            self.recipients_per_send,
            self.duration_seconds,
            self.warmup_seconds,
            self.body_bytes,
            if self.ack { "on" } else { "off" }
        );
        println!(
            "  sent       {} of {} ({:.1}/s); not sent {} (queue full {}, connection gone {}); \
             write failures {}; max schedule lag {:.1} ms",
            self.sent,
            self.offered,
            self.send_rate,
            self.not_sent,
            self.not_sent_queue_full,
            self.not_sent_connection_gone,
            self.write_failures,
            self.max_schedule_lag_ms
        );
        println!(
            "  accepted   {} (routed {}, stored {}); unanswered {}",
            self.accepted, self.accepted_routed, self.accepted_stored, self.unanswered
        );
        println!(
            "  delivered  {} distinct deliveries ({:.1}/s); duplicates {}; lost {}; {} (after {:.2}s)",
            self.delivered,
            self.delivered_rate,
            self.duplicates,
            self.lost,
            if self.drained { "all in" } else { "drain timed out" },
            self.drain_seconds
        );
        let counts = |map: &BTreeMap<String, u64>| if map.is_empty() { "none".to_owned() } else { format!("{map:?}") };
        println!("  errors     {}; closes {}", counts(&self.errors), counts(&self.closes));
        let l = &self.latency_ms;
        println!(
            "  latency ms p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        for p in &self.processes {
            println!(
                "  cpu        {:<5} {:<21} pid {:<7} {:6.2}s  {:8.1} us/msg  RSS {:.1} -> {:.1} MiB",
                p.role,
                p.name,
                p.pid,
                p.cpu_seconds,
                p.cpu_us_per_message,
                p.rss_bytes_start as f64 / 1048576.0,
                p.rss_bytes_end as f64 / 1048576.0
            );
        }
        println!(
            "  cpu        total {:.2}s, {:.1} us per delivery; load generator {:.2}s",
            self.processes.iter().map(|p| p.cpu_seconds).sum::<f64>(),
            self.cpu_us_per_message,
            self.load_generator_cpu_seconds
        );
        let load = |l: Option<[f64; 3]>| l.map_or_else(|| "?".to_owned(), |[a, b, c]| format!("{a} {b} {c}"));
        println!(
            "  machine    {} x {}; load average {} before, {} after",
            self.machine.nproc,
            self.machine.cpu_model,
            load(self.machine.loadavg_start),
            load(self.machine.loadavg_end)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_on_other_nodes() {
        let mut rng = SmallRng::seed_from_u64(7);
        for nodes in 2..5 {
            for users in [nodes, nodes + 1, 10, 11] {
                for from in 0..users {
                    for _ in 0..50 {
                        let to = recipient(&mut rng, from, users, nodes) as usize;
                        assert!(to < users);
                        assert_ne!(to % nodes, from % nodes);
                    }
                }
            }
        }
    }

    #[test]
    fn single_node_recipients_are_other_users() {
        let mut rng = SmallRng::seed_from_u64(7);
        for from in 0..3 {
            for _ in 0..50 {
                let to = recipient(&mut rng, from, 3, 1) as usize;
                assert!(to < 3 && to != from);
            }
        }
    }
}
