//! What a run drives and measures: the nodes, the processes whose cost is
//! read from /proc, and the addresses to connect from. Every subcommand takes
//! these from the command line, whether its load comes from flags or from a
//! scenario file, since only the caller knows where the nodes are.

use std::net::{IpAddr, SocketAddr};

use anyhow::bail;
use serde::Serialize;

#[derive(clap::Args)]
#[command(next_help_heading = "Targets")]
pub struct Targets {
    /// Node address (host:port, loopback only), repeatable; connection i goes to node i % nodes.
    #[arg(long = "node", required = true)]
    pub nodes: Vec<SocketAddr>,
    /// Process id of each node, in --node order, repeatable: its CPU time and memory are measured.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Process id of Redis, measured like the nodes.
    #[arg(long)]
    pub redis_pid: Option<u32>,
    /// Source addresses to connect from, repeatable (loopback only, 127.0.0.x).
    #[arg(long = "source", default_value = "127.0.0.1")]
    pub sources: Vec<IpAddr>,
    /// The nodes' --rate-limit (messages per second per connection); chat traffic offers a
    /// connection at most 90% of it.
    #[arg(long, default_value_t = 100.0)]
    pub rate_limit: f64,
    /// JWT secret of the nodes.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET")]
    pub jwt_secret: String,
}

/// A process whose CPU time and memory a report shows.
pub struct Process {
    pub role: Role,
    /// The node's address, or "redis".
    pub name: String,
    pub pid: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Node,
    Redis,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Self::Node => "node",
            Self::Redis => "redis",
        })
    }
}

impl Targets {
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(node) = self.nodes.iter().find(|n| !n.ip().is_loopback()) {
            bail!("--node {node} is not a loopback address: sb-load only drives nodes on this machine");
        }
        if let Some(source) = self.sources.iter().find(|s| !s.is_loopback()) {
            bail!("--source {source} is not a loopback address");
        }
        if !self.pids.is_empty() && self.pids.len() != self.nodes.len() {
            bail!(
                "{} --pid for {} --node: give one per node, in the same order, or none",
                self.pids.len(),
                self.nodes.len()
            );
        }
        if self.rate_limit.is_nan() || self.rate_limit <= 0.0 {
            bail!("--rate-limit must be above 0");
        }
        Ok(())
    }

    /// The node and the source address of connection `i`: nodes in turn, and
    /// a new source once every node has had a connection from the previous one.
    pub fn route(&self, i: usize) -> (SocketAddr, IpAddr) {
        let nodes = self.nodes.len();
        (self.nodes[i % nodes], self.sources[(i / nodes) % self.sources.len()])
    }

    /// The nodes with a --pid, then Redis.
    pub fn processes(&self) -> Vec<Process> {
        let nodes = self.nodes.iter().zip(&self.pids).map(|(node, pid)| Process {
            role: Role::Node,
            name: node.to_string(),
            pid: *pid,
        });
        let redis = self.redis_pid.map(|pid| Process { role: Role::Redis, name: "redis".to_owned(), pid });
        nodes.chain(redis).collect()
    }
}
