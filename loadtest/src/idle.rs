//! Idle connections: open many, spread over nodes and source addresses,
//! hold them, and report the resident memory each one costs the nodes (and
//! Redis, which keeps the presence of every connection).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::proc::{ensure_open_files, rss_bytes};
use crate::targets::{Role, Targets};

const MAX_CONNECTIONS: usize = 200_000;
const MAX_CONCURRENCY: usize = 10_000;
const MAX_HOLD: Duration = Duration::from_secs(600);

/// The load of an idle run, from flags or from a scenario file's `[idle]`
/// table (where every field must be given).
#[derive(Clone, Debug, clap::Args, Deserialize)]
#[command(next_help_heading = "Load")]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// Connections to open in all; at most 200000.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Connections opening at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// How long to hold them before measuring; at most 10 minutes.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    #[serde(deserialize_with = "crate::scenario::duration")]
    pub hold: Duration,
}

impl Load {
    /// The checks that do not depend on the targets.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            bail!("connections must be 1 to {MAX_CONNECTIONS}");
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            bail!("concurrency must be 1 to {MAX_CONCURRENCY}");
        }
        if self.hold > MAX_HOLD {
            bail!("hold must be at most {}", humantime::format_duration(MAX_HOLD));
        }
        Ok(())
    }
}

/// The result of an idle run, printed as lines and written as JSON.
#[derive(Serialize)]
pub struct IdleReport {
    scenario: &'static str,
    label: Option<String>,
    connections: usize,
    failed: usize,
    open_seconds: f64,
    processes: Vec<MemoryCost>,
}

#[derive(Serialize)]
struct MemoryCost {
    role: Role,
    name: String,
    pid: u32,
    /// Connections it holds: a node its share, Redis all of them.
    connections: f64,
    rss_bytes_before: u64,
    rss_bytes_after: u64,
    bytes_per_connection: f64,
}

type Socket = WebSocketStream<tokio::net::TcpStream>;

/// Opens `load.connections`, holds them for `load.hold`, and measures.
pub async fn run(targets: &Targets, load: &Load, label: Option<&str>) -> anyhow::Result<IdleReport> {
    targets.validate()?;
    load.validate()?;
    ensure_open_files(load.connections)?;
    let processes = targets.processes();
    let rss = || processes.iter().map(|p| rss_bytes(p.pid)).collect::<anyhow::Result<Vec<u64>>>();
    let before = rss()?;
    let started = Instant::now();
    // Each connection is read from the moment it is open, so that the
    // node's pings are answered and it does not close the connection as
    // idle while the others are still opening or while they are held.
    let opened: Vec<anyhow::Result<JoinHandle<()>>> = futures_util::stream::iter(0..load.connections)
        .map(|i| {
            let (node, source) = targets.route(i);
            let socket = open(i, node, source, &targets.jwt_secret);
            async move {
                let mut socket = socket.await?;
                Ok(tokio::spawn(async move { while let Some(Ok(_)) = socket.next().await {} }))
            }
        })
        .buffer_unordered(load.concurrency)
        .collect()
        .await;
    let open_seconds = started.elapsed().as_secs_f64();
    let mut readers = Vec::with_capacity(opened.len());
    let mut failed = 0usize;
    for result in opened {
        match result {
            Ok(reader) => readers.push(reader),
            Err(error) => {
                if failed == 0 {
                    eprintln!("first failure: {error:#}");
                }
                failed += 1;
            }
        }
    }
    tokio::time::sleep(load.hold).await;
    let after = rss()?;
    // A reader that ended had its connection closed while held.
    let closed = readers.iter().filter(|reader| reader.is_finished()).count();
    if closed > 0 {
        eprintln!("{closed} connections were closed while held");
    }
    let held = (readers.len() - closed) as f64;
    readers.iter().for_each(JoinHandle::abort);

    let per_node = held / targets.nodes.len() as f64;
    let costs = processes
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(p, (&before, &after))| {
            let connections = if p.role == Role::Node { per_node } else { held };
            MemoryCost {
                role: p.role,
                name: p.name.clone(),
                pid: p.pid,
                connections,
                rss_bytes_before: before,
                rss_bytes_after: after,
                bytes_per_connection: after.saturating_sub(before) as f64 / connections.max(1.0),
            }
        })
        .collect();
    Ok(IdleReport {
        scenario: "idle",
        label: label.map(str::to_owned),
        connections: held as usize,
        failed,
        open_seconds,
        processes: costs,
    })
}

impl IdleReport {
    /// The report as a few readable lines.
    pub fn print(&self) {
        println!("{} connections open ({} failed) in {:.1}s", self.connections, self.failed, self.open_seconds);
        for p in &self.processes {
            println!(
                "{} {} (pid {}): RSS {:.1} MiB -> {:.1} MiB, {:.0} bytes per connection",
                p.role,
                p.name,
                p.pid,
                p.rss_bytes_before as f64 / 1048576.0,
                p.rss_bytes_after as f64 / 1048576.0,
                p.bytes_per_connection
            );
        }
    }
}

async fn open(i: usize, node: SocketAddr, source: IpAddr, secret: &str) -> anyhow::Result<Socket> {
    let socket = if source.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(node).await.with_context(|| format!("connect to {node} from {source}"))?;
    let mut request = format!("ws://{node}/ws").into_client_request()?;
    let token = crate::token(secret, &format!("idle-{i}"))?;
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) = client_async_with_config(request, stream, Some(config)).await?;
    // The welcome frame proves the node took the connection.
    match ws.next().await {
        Some(Ok(_)) => Ok(ws),
        other => bail!("no welcome: {other:?}"),
    }
}
