//! Real `redis-server` processes on free 127.0.0.1 ports, each in its own
//! temporary directory, driven with the real `redis-cli`.
//!
//! Tests never touch the shared instance on 6379: every server here is
//! started by the test, killed (SIGKILL) and its directory removed on drop.

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
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

    /// How many calls of `command` (lower case) succeeded so far.
    pub async fn command_calls(&self, command: &str) -> u64 {
        command_calls(&self.cli(&["INFO", "commandstats"]).await, command)
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
        let ready = answers_pong(&mut child, self.port, &format!("redis-server on port {port}")).await;
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
        tail(&self.log_path(), 20)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        kill_and_remove(&mut self.child, &self.dir);
    }
}

/// The last `count` lines of the file at `path`.
fn tail(path: &std::path::Path, count: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// Kills a test's process (SIGKILL) and removes its directory.
fn kill_and_remove(child: &mut Option<Child>, dir: &std::path::Path) {
    if let Some(child) = child.as_mut() {
        let _ = child.start_kill();
    }
    let _ = std::fs::remove_dir_all(dir);
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

/// The service name every [`RedisSentinel`] monitors its master as.
pub const SENTINEL_SERVICE: &str = "mymaster";

/// A master [`RedisServer`], optionally one replica of it, and one Redis
/// Sentinel (`redis-server sentinel.conf --sentinel`) monitoring the master as
/// [`SENTINEL_SERVICE`] with quorum 1, `down-after-milliseconds` 1000 and
/// `failover-timeout` 5000. Everything is killed (SIGKILL) and its directory
/// removed on drop.
pub struct RedisSentinel {
    /// Declared first so that it dies first, before it can notice the
    /// servers going away.
    sentinel: SentinelProcess,
    /// The master first, then the replica, if any. After [`Self::failover`]
    /// the roles swap: `master` says which one is the master now.
    servers: Vec<RedisServer>,
    master: usize,
    /// The ports of masters killed by [`Self::kill_master_and_fail_over`],
    /// held until drop.
    dead_ports: Vec<PortGuard>,
}

impl RedisSentinel {
    /// Starts a master and a sentinel, and waits until the sentinel is
    /// connected to the master and names it for [`SENTINEL_SERVICE`].
    pub async fn start() -> Self {
        Self::start_with_replicas(0).await
    }

    /// Like [`Self::start`], plus a replica of the master, synced and known to
    /// the sentinel before this returns, so that [`Self::failover`] can
    /// promote it.
    pub async fn start_with_replica() -> Self {
        Self::start_with_replicas(1).await
    }

    async fn start_with_replicas(replicas: usize) -> Self {
        let master = RedisServer::start().await;
        let master_port = master.port().to_string();
        let mut servers = vec![master];
        for _ in 0..replicas {
            servers.push(RedisServer::start_with(&["--replicaof", "127.0.0.1", &master_port]).await);
        }
        // Sentinel learns about replicas from the master's INFO, which it
        // reads as soon as it connects: have them online by then.
        let online = format!("connected_slaves:{replicas}");
        within("the replicas to sync with the master", async {
            loop {
                let info = servers[0].cli(&["info", "replication"]).await;
                let synced = info.lines().filter(|l| l.starts_with("slave") && l.contains("state=online")).count();
                if info.lines().any(|l| l.trim() == online) && synced == replicas {
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        let sentinel = SentinelProcess::start(servers[0].port()).await;
        let setup = Self { sentinel, servers, master: 0, dead_ports: Vec::new() };
        setup.wait_for_master().await;
        let replica_ports: Vec<u16> = setup.servers[1..].iter().map(RedisServer::port).collect();
        within("the sentinel to see every replica as a healthy slave", async {
            while !setup.sentinel_sees_replicas(&replica_ports).await {
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        setup
    }

    /// `redis-sentinel://127.0.0.1:SENTINEL_PORT?sentinelServiceName=mymaster`,
    /// the form `fred` parses: the host and port are the sentinel's, not the
    /// master's.
    pub fn url(&self) -> String {
        format!("redis-sentinel://127.0.0.1:{}?sentinelServiceName={SENTINEL_SERVICE}", self.sentinel.port)
    }

    /// The server the sentinel names as master now.
    pub fn master(&self) -> &RedisServer {
        &self.servers[self.master]
    }

    /// The current master, mutably (to stop or restart it).
    pub fn master_mut(&mut self) -> &mut RedisServer {
        &mut self.servers[self.master]
    }

    /// The replicas, if any: every server but the current master.
    pub fn replicas(&self) -> impl Iterator<Item = &RedisServer> {
        self.servers.iter().enumerate().filter(move |(i, _)| *i != self.master).map(|(_, s)| s)
    }

    pub fn sentinel_port(&self) -> u16 {
        self.sentinel.port
    }

    /// Runs `redis-cli -p SENTINEL_PORT args...` against the sentinel.
    pub async fn sentinel_cli(&self, args: &[&str]) -> String {
        cli(self.sentinel.port, args).await
    }

    /// The master's port as the sentinel reports it
    /// (`SENTINEL get-master-addr-by-name mymaster`), if it reports 127.0.0.1.
    pub async fn master_port_by_sentinel(&self) -> Option<u16> {
        let reply = self.sentinel_cli(&["sentinel", "get-master-addr-by-name", SENTINEL_SERVICE]).await;
        let lines: Vec<&str> = reply.lines().map(str::trim).collect();
        match lines.as_slice() {
            ["127.0.0.1", port] => port.parse().ok(),
            _ => None,
        }
    }

    /// Waits until the replica has every write the master took so far,
    /// forces a failover (`SENTINEL FAILOVER mymaster`) to it, and waits
    /// until the replica reports itself master and the sentinel names it.
    /// Needs [`Self::start_with_replica`]. The old master keeps running and
    /// takes writes until the sentinel turns it into a replica of the new one
    /// (seconds later; writes there meanwhile are lost), which is also when
    /// the sentinel kills its client connections so that clients look up
    /// the new master.
    pub async fn failover(&mut self) {
        let next = self.replica_index();
        self.catch_up(next).await;
        let reply = self.sentinel_cli(&["sentinel", "failover", SENTINEL_SERVICE]).await;
        assert_eq!(reply, "OK", "SENTINEL FAILOVER refused; sentinel log:\n{}", self.sentinel.log_tail());
        within("the replica to be promoted", async {
            while self.servers[next].cli(&["role"]).await.lines().next() != Some("master") {
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        self.master = next;
        self.wait_for_master().await;
    }

    /// Waits until the replica has applied every write the master took so
    /// far, SIGKILLs the master, as a crash, and waits until the
    /// sentinel notices (`down-after-milliseconds` 1000), promotes the
    /// replica and names it master. Needs [`Self::start_with_replica`]. The
    /// old master stays down, its port held (connections there are closed at
    /// once) so that no other server takes it; [`Self::replicas`] still
    /// lists it.
    pub async fn kill_master_and_fail_over(&mut self) {
        let next = self.replica_index();
        self.catch_up(next).await;
        self.master_mut().stop().await;
        // The sentinel names the dead address until it fails over, and
        // later tries to turn whatever answers there into a replica: keep
        // other tests' servers off the port.
        self.dead_ports.push(PortGuard::hold(self.master().port()));
        let what = "the sentinel to promote the replica after the master died";
        let promoted = tokio::time::timeout(crate::DEADLINE, async {
            while self.servers[next].cli(&["role"]).await.lines().next() != Some("master") {
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        if promoted.is_err() {
            panic!("timed out waiting for {what}; sentinel log:\n{}", self.sentinel.log_tail());
        }
        self.master = next;
        self.wait_for_master().await;
    }

    /// Waits until server `replica` has applied every write the master took
    /// so far. Right after its initial (diskless) sync a replica gets no
    /// command stream until its first `REPLCONF ACK`, up to a second later:
    /// promoted before that, it would lack those writes. Not `WAIT`, which
    /// only covers the waiting connection's own writes.
    async fn catch_up(&self, replica: usize) {
        let written = repl_offset(self.master()).await;
        let replica = &self.servers[replica];
        within("the replica to catch up with the master", async {
            while repl_offset(replica).await < written {
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
    }

    fn replica_index(&self) -> usize {
        assert!(self.servers.len() > 1, "no replica to fail over to: use RedisSentinel::start_with_replica");
        usize::from(self.master == 0)
    }

    /// Waits until the sentinel names the current master's port and is
    /// connected to it (flags exactly `master`: not down, not disconnected,
    /// no failover in progress).
    async fn wait_for_master(&self) {
        let port = self.master().port();
        let what = format!("the sentinel to name 127.0.0.1:{port} master of {SENTINEL_SERVICE}");
        let ready = tokio::time::timeout(crate::DEADLINE, async {
            loop {
                if self.master_port_by_sentinel().await == Some(port) {
                    let master = self.sentinel_cli(&["sentinel", "master", SENTINEL_SERVICE]).await;
                    if field(&master, "flags") == Some("master") {
                        return;
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        if ready.is_err() {
            panic!("timed out waiting for {what}; sentinel log:\n{}", self.sentinel.log_tail());
        }
    }

    /// Whether `SENTINEL REPLICAS` lists each of `ports` as a plain `slave`
    /// with its master link up.
    async fn sentinel_sees_replicas(&self, ports: &[u16]) -> bool {
        if ports.is_empty() {
            return true;
        }
        let reply = self.sentinel_cli(&["sentinel", "replicas", SENTINEL_SERVICE]).await;
        // redis-cli prints the nested reply flat: one `name`..`value` run per
        // replica, each starting at its `name` field.
        let lines: Vec<&str> = reply.lines().map(str::trim).collect();
        let replicas: Vec<String> = lines
            .split(|l| *l == "name")
            .filter(|r| !r.is_empty())
            .map(|r| std::iter::once("name").chain(r.iter().copied()).collect::<Vec<_>>().join("\n"))
            .collect();
        ports.iter().all(|port| {
            replicas.iter().any(|r| {
                field(r, "port") == Some(&port.to_string())
                    && field(r, "flags") == Some("slave")
                    && field(r, "master-link-status") == Some("ok")
            })
        })
    }
}

/// Keeps a port taken: accepts connections on it and closes them at once,
/// until dropped.
struct PortGuard(Option<tokio::task::JoinHandle<()>>);

impl PortGuard {
    /// Best effort: if another process took the port already, holds nothing.
    fn hold(port: u16) -> Self {
        let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) else { return Self(None) };
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        Self(Some(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream)
            }
        })))
    }
}

impl Drop for PortGuard {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// `master_repl_offset` from `INFO replication`: on a master, how far it
/// has written; on a replica, how far it has applied.
async fn repl_offset(server: &RedisServer) -> u64 {
    let info = server.cli(&["info", "replication"]).await;
    info.lines().find_map(|l| l.trim().strip_prefix("master_repl_offset:")).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The value after `key` in a flat key/value reply as redis-cli prints it,
/// one item a line.
fn field<'a>(reply: &'a str, key: &str) -> Option<&'a str> {
    let lines: Vec<&str> = reply.lines().map(str::trim).collect();
    lines.chunks(2).find(|pair| pair.len() == 2 && pair[0] == key).map(|pair| pair[1])
}

/// One `redis-server sentinel.conf --sentinel` process in its own directory;
/// killed and the directory removed when dropped.
struct SentinelProcess {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl SentinelProcess {
    /// Starts a sentinel monitoring 127.0.0.1:`master_port` on a free port,
    /// trying fresh ports if it fails to come up.
    async fn start(master_port: u16) -> Self {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let mut sentinel = Self { child: None, port, dir: fresh_dir(port) };
            match sentinel.launch(master_port).await {
                Ok(()) => return sentinel,
                Err(why) => failures.push(format!("port {port}: {why}")),
            }
        }
        panic!("redis sentinel did not start in {START_ATTEMPTS} attempts:\n{}", failures.join("\n"));
    }

    /// Writes the config (Sentinel rewrites it as it learns, so it must be
    /// writable, and so in a directory of its own), spawns the sentinel and
    /// waits until it answers PONG.
    async fn launch(&mut self, master_port: u16) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).unwrap();
        let config = self.dir.join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\n\
                 bind 127.0.0.1\n\
                 daemonize no\n\
                 dir \"{dir}\"\n\
                 sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
                 sentinel failover-timeout {SENTINEL_SERVICE} 5000\n",
                port = self.port,
                dir = self.dir.display(),
            ),
        )
        .unwrap();
        let log = File::options().create(true).append(true).open(self.log_path()).unwrap();
        // The config file must be the first argument.
        let mut child = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server --sentinel: {e}"));
        let ready = answers_pong(&mut child, self.port, &format!("redis sentinel on port {}", self.port)).await;
        match ready {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(why) => {
                let _ = child.kill().await;
                let tail = self.log_tail();
                let _ = std::fs::remove_dir_all(&self.dir);
                Err(format!("{why}; log:\n{tail}"))
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("sentinel.log")
    }

    fn log_tail(&self) -> String {
        tail(&self.log_path(), 30)
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        kill_and_remove(&mut self.child, &self.dir);
    }
}

/// Waits until the process `child` answers PING on `port`, making sure the
/// PONG came from it and not from a server another test started on the same
/// port; an error when it exits first or another server answers.
async fn answers_pong(child: &mut Child, port: u16, what: &str) -> Result<(), String> {
    let pid = child.id().unwrap_or_default();
    within(&format!("{what} to answer PONG"), async {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!("exited with {status}"));
            }
            if cli(port, &["ping"]).await == "PONG" {
                let info = cli(port, &["info", "server"]).await;
                return if info.lines().any(|l| l.trim() == format!("process_id:{pid}")) {
                    Ok(())
                } else {
                    Err("another server answers on this port".to_owned())
                };
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await
}

/// How many calls of `command` (lower case) succeeded, by the text of
/// `INFO commandstats`: its calls less its failed ones (a first `EVALSHA`
/// answered `NOSCRIPT` is one).
pub fn command_calls(commandstats: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:");
    let Some(line) = commandstats.lines().find_map(|line| line.strip_prefix(&prefix)) else { return 0 };
    let stat = |name: &str| -> u64 {
        line.split(',').find_map(|part| part.strip_prefix(name)).and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    stat("calls=") - stat("failed_calls=")
}
