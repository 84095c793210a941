//! Idle connections: open many, spread over nodes and source addresses,
//! hold them, and report each node's resident memory per connection.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::proc::rss_bytes;

#[derive(clap::Args)]
pub struct Args {
    /// Node address (host:port), repeatable; connections are spread evenly.
    #[arg(long = "node", required = true)]
    nodes: Vec<SocketAddr>,
    /// Process id of each node, in the same order, to read its memory.
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Source addresses to connect from, repeatable (127.0.0.x).
    #[arg(long = "source", default_value = "127.0.0.1")]
    sources: Vec<IpAddr>,
    /// Connections to open in all; at most 200,000.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections opening at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// How long to hold them before measuring.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// JWT secret of the nodes.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET")]
    jwt_secret: String,
}

type Socket = WebSocketStream<tokio::net::TcpStream>;

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.connections > 200_000 {
        bail!("at most 200000 connections");
    }
    let before: Vec<u64> = args.pids.iter().map(|pid| rss_bytes(*pid)).collect::<Result<_, _>>()?;
    let started = Instant::now();
    let targets: Vec<(usize, SocketAddr, IpAddr)> = (0..args.connections)
        .map(|i| (i, args.nodes[i % args.nodes.len()], args.sources[(i / args.nodes.len()) % args.sources.len()]))
        .collect();
    let secret = args.jwt_secret.clone();
    let opened: Vec<anyhow::Result<Socket>> = futures_util::stream::iter(targets)
        .map(|(i, node, source)| {
            let secret = secret.clone();
            async move { open(i, node, source, &secret).await }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let mut sockets = Vec::with_capacity(opened.len());
    let mut failed = 0usize;
    for result in opened {
        match result {
            Ok(socket) => sockets.push(socket),
            Err(error) => {
                if failed == 0 {
                    eprintln!("first failure: {error:#}");
                }
                failed += 1;
            }
        }
    }
    let open_time = started.elapsed();
    tokio::time::sleep(args.hold).await;
    let after: Vec<u64> = args.pids.iter().map(|pid| rss_bytes(*pid)).collect::<Result<_, _>>()?;

    let per_node = sockets.len() as f64 / args.nodes.len() as f64;
    let mut report = serde_json::json!({
        "scenario": "idle",
        "connections": sockets.len(),
        "failed": failed,
        "open_seconds": open_time.as_secs_f64(),
        "nodes": [],
    });
    println!("{} connections open ({failed} failed) in {:.1}s", sockets.len(), open_time.as_secs_f64());
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let per_conn = a.saturating_sub(*b) as f64 / per_node;
        println!(
            "node {} (pid {}): RSS {:.1} MiB -> {:.1} MiB, {:.0} bytes per connection",
            args.nodes[i],
            args.pids[i],
            *b as f64 / 1048576.0,
            *a as f64 / 1048576.0,
            per_conn
        );
        if let Some(nodes) = report["nodes"].as_array_mut() {
            nodes.push(serde_json::json!({
                "node": args.nodes[i].to_string(), "rss_before": b, "rss_after": a, "bytes_per_connection": per_conn,
            }));
        }
    }
    eprintln!("{report}");
    drop(sockets);
    Ok(())
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
