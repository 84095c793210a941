//! A `switchboard serve` process bound to free ports on 127.0.0.1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::{SECRET, within};

/// The binary under test: `CARGO_BIN_EXE_switchboard` when cargo sets it,
/// else next to the test executable.
pub fn switchboard_bin() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_switchboard") {
        return PathBuf::from(path);
    }
    let mut path = std::env::current_exe().unwrap();
    path.pop();
    if path.ends_with("deps") {
        path.pop();
    }
    path.join("switchboard")
}

/// A running node; killed (SIGKILL) when dropped.
pub struct NodeProcess {
    child: Child,
    pub public: SocketAddr,
    pub metrics: SocketAddr,
    pub args: Vec<String>,
}

impl NodeProcess {
    /// Starts a node with the test secret on free ports plus `args`, and
    /// waits until it listens.
    pub async fn start(args: &[&str]) -> Self {
        let mut all: Vec<String> =
            ["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--jwt-secret", SECRET]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
        all.extend(args.iter().map(|s| (*s).to_owned()));
        Self::start_exact(all).await
    }

    /// Starts `switchboard` with exactly `args`.
    pub async fn start_exact(args: Vec<String>) -> Self {
        Self::start_exact_env(args, &[]).await
    }

    /// Starts `switchboard` with exactly `args` and these variables set.
    pub async fn start_exact_env(args: Vec<String>, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(switchboard_bin())
            .args(&args)
            .envs(env.iter().copied())
            .env("RUST_LOG", std::env::var("SWITCHBOARD_TEST_LOG").unwrap_or_else(|_| "warn,fred=error".to_owned()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", switchboard_bin().display()));
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = within("the node to listen", lines.next_line()).await.unwrap().unwrap_or_default();
        let addr = |key: &str| -> SocketAddr {
            let value = line.split_whitespace().find_map(|w| w.strip_prefix(key));
            value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {key} in {line:?}"))
        };
        let (public, metrics) = (addr("public="), addr("metrics="));
        // Keep draining stdout so the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, public, metrics, args }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.public)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    /// Sends SIGTERM: the node drains.
    pub async fn terminate(&self) {
        self.signal("TERM").await;
    }

    /// SIGSTOP: the node freezes (a long GC pause, a stalled VM).
    pub async fn pause(&self) {
        self.signal("STOP").await;
    }

    /// SIGCONT after [`Self::pause`].
    pub async fn resume(&self) {
        self.signal("CONT").await;
    }

    async fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().await.unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// SIGKILL, as a crash.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits for the process to exit; its exit code.
    pub async fn wait(&mut self) -> Option<i32> {
        within("the node to exit", self.child.wait()).await.unwrap().code()
    }
}
