//! Real `redis-server` processes on free 127.0.0.1 ports, each in its own
//! temporary directory, driven with the real `redis-cli`.
//!
//! Tests never touch the shared instance on 6379: every server here is
//! started by the test, killed (SIGKILL) and its directory removed on drop.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::within;

/// How many fresh ports [`RedisServer::start_with`] tries before giving up.
const START_ATTEMPTS: usize = 5;

/// How long a restart on the same port keeps retrying while the port is busy.
const REBIND_FOR: Duration = Duration::from_secs(5);

/// How often a readiness condition is polled.
const POLL: Duration = Duration::from_millis(20);

/// A running `redis-server`; killed and its directory removed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// Server flags after the fixed ones (`--port`, `--dir`, ...).
    args: Vec<String>,
}

impl RedisServer {
    /// Starts a standalone server with no persistence on a free port.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts a server with `args` appended to the standard flags.
    pub async fn start_with(args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        Self::start_on_free_port(args, false).await
    }

    /// Picks a free port (and, for a cluster node, a free cluster bus port)
    /// and starts there, trying fresh ports if the server fails to come up.
    async fn start_on_free_port(args: Vec<String>, cluster_bus: bool) -> Self {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let mut args = args.clone();
            if cluster_bus {
                args.extend(["--cluster-port".to_owned(), free_port().to_string()]);
            }
            let dir = fresh_dir(port);
            let mut server = Self { child: None, port, dir, args };
            match server.launch().await {
                Ok(()) => return server,
                Err(why) => failures.push(format!("port {port}: {why}")),
            }
        }
        panic!("redis-server did not start in {START_ATTEMPTS} attempts:\n{}", failures.join("\n"));
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's own directory (working dir, log file).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SIGKILL, as a crash; waits until the process is gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = within("redis-server to die", child.kill()).await;
        }
    }

    /// Starts again on the same port (and directory) after [`Self::stop`].
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server on port {} is still running", self.port);
        let deadline = tokio::time::Instant::now() + REBIND_FOR;
        loop {
            match self.launch().await {
                Ok(()) => return,
                Err(why) if tokio::time::Instant::now() >= deadline => {
                    panic!("redis-server did not restart on port {}: {why}", self.port)
                }
                // The port may be briefly busy after the kill: retry.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// SIGKILL, then a new server with no data on the same port.
    pub async fn restart_empty(&mut self) {
        self.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).unwrap();
        self.start_again().await;
    }

    /// Runs `redis-cli -p PORT args...`; its trimmed stdout.
    pub async fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args).await
    }

    /// Sends `commands` (each a list of binary arguments) pipelined over one
    /// connection, as fast as Redis takes them; the integer replies, in order
    /// (-1 for a reply that is not an integer).
    pub async fn pipeline(&self, commands: Vec<Vec<Vec<u8>>>) -> Vec<i64> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let (read, mut write) = stream.into_split();
        let count = commands.len();
        let writer = tokio::spawn(async move {
            let mut buf = Vec::new();
            for command in commands {
                buf.extend_from_slice(format!("*{}\r\n", command.len()).as_bytes());
                for arg in command {
                    buf.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                    buf.extend_from_slice(&arg);
                    buf.extend_from_slice(b"\r\n");
                }
                if buf.len() > 1 << 16 {
                    write.write_all(&buf).await.unwrap();
                    buf.clear();
                }
            }
            write.write_all(&buf).await.unwrap();
            write
        });
        let mut lines = BufReader::new(read).lines();
        let mut replies = Vec::with_capacity(count);
        while replies.len() < count {
            let line = within("redis replies", lines.next_line()).await.unwrap().unwrap();
            replies.push(line.strip_prefix(':').and_then(|n| n.parse().ok()).unwrap_or(-1));
        }
        drop(writer.await.unwrap());
        replies
    }

    /// Spawns the server and waits until it answers PONG. On failure the
    /// process is gone and the error carries the end of its log.
    async fn launch(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = File::options().create(true).append(true).open(self.log_path()).unwrap();
        let port = self.port.to_string();
        let mut child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--daemonize", "no", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        let pid = child.id().unwrap_or_default();
        let what = format!("redis-server on port {port} to answer PONG");
        let ready = within(&what, async {
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    return Err(format!("exited with {status}"));
                }
                if cli(self.port, &["ping"]).await == "PONG" {
                    // Make sure the PONG came from our process, not from a
                    // server another test started on the same port.
                    let info = cli(self.port, &["info", "server"]).await;
                    return if info.lines().any(|l| l.trim() == format!("process_id:{pid}")) {
                        Ok(())
                    } else {
                        Err("another server answers on this port".to_owned())
                    };
                }
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        match ready {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(why) => {
                let _ = child.kill().await;
                Err(format!("{why}; log:\n{}", self.log_tail()))
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three cluster masters covering all slots, no replicas.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them with
    /// `redis-cli --cluster create`, and waits until every node reports
    /// `cluster_state:ok`.
    pub async fn start() -> Self {
        let args: Vec<String> =
            ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
        let mut nodes = Vec::new();
        for _ in 0..3 {
            // Each node also gets its own free cluster bus port, since
            // PORT + 10000 may be past 65535 or taken.
            nodes.push(RedisServer::start_on_free_port(args.clone(), true).await);
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let output = within(
            "redis-cli --cluster create",
            Command::new("redis-cli")
                .arg("--cluster")
                .arg("create")
                .args(&addrs)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap();
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = Self { nodes };
        within("every cluster node to report cluster_state:ok", async {
            for node in &cluster.nodes {
                while !node.cli(&["cluster", "info"]).await.lines().any(|l| l.trim() == "cluster_state:ok") {
                    tokio::time::sleep(POLL).await;
                }
            }
        })
        .await;
        cluster
    }

    /// `redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&node=127.0.0.1:P3`,
    /// the form `fred` parses.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port);
        for (i, node) in self.nodes[1..].iter().enumerate() {
            let sep = if i == 0 { '?' } else { '&' };
            url.push_str(&format!("{sep}node=127.0.0.1:{}", node.port));
        }
        url
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The node at `index` (0..3).
    pub fn node(&self, index: usize) -> &RedisServer {
        &self.nodes[index]
    }

    /// Runs `redis-cli -p PORT args...` against node `index`; pass `-c` to
    /// follow redirections.
    pub async fn cli(&self, index: usize, args: &[&str]) -> String {
        self.nodes[index].cli(args).await
    }
}

/// Runs `redis-cli -p PORT args...`; its trimmed stdout.
async fn cli(port: u16, args: &[&str]) -> String {
    let output = within(
        "redis-cli",
        Command::new("redis-cli")
            .arg("-p")
            .arg(port.to_string())
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A port the OS just had free on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A new, unique, not yet created directory under the system temp dir.
fn fresh_dir(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("switchboard-redis-{port}-{}", uuid::Uuid::new_v4().simple()))
}
