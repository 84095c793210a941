//! Command line and environment: every setting is a flag with a
//! `SWITCHBOARD_*` variable, parsed and validated before any port is bound.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use http::Uri;
use switchboard_presence::Mode;

use crate::keys::{self, PublicKey};

#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about = "WebSocket gateway for per-user messaging")]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one gateway node (the default).
    Serve(Box<ServeArgs>),
    /// Print a client JWT signed with the configured secret.
    Token(TokenArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Delivery {
    Durable,
    Fast,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Public address: WebSocket at /ws, server API, /healthz, /readyz.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Internal address: Prometheus /metrics and /healthz.
    #[arg(long, env = "SWITCHBOARD_METRICS_LISTEN", default_value = "0.0.0.0:9091")]
    pub metrics_listen: SocketAddr,
    /// Redis URL; unset runs a single node with an in-process backend.
    #[arg(long, env = "SWITCHBOARD_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "SWITCHBOARD_REDIS_PREFIX", default_value = "sb:")]
    pub redis_prefix: String,
    /// This node's id in Redis keys and channels [default: host name + random suffix].
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    pub node_id: Option<String>,
    /// A node whose liveness key is older than this is dead.
    #[arg(long, env = "SWITCHBOARD_NODE_TTL", default_value = "10s", value_parser = duration)]
    pub node_ttl: Duration,
    /// Redis commands of many messages issued within this long go out in one write ("0s": each at once).
    #[arg(long, env = "SWITCHBOARD_REDIS_BATCH_WINDOW", default_value = "1ms", value_parser = duration)]
    pub redis_batch_window: Duration,
    /// HS256 secret for client tokens.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// The `aud` client tokens must carry; unset: tokens that carry an `aud` are refused.
    #[arg(long, env = "SWITCHBOARD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// PEM public key (RSA: RS256, EC P-256: ES256) for client tokens: one FILE,
    /// used whatever the token's `kid`, or KID=FILE, repeated, each used only
    /// for its `kid` (the variable takes a comma-separated list).
    #[arg(long, env = "SWITCHBOARD_JWT_PUBLIC_KEY", value_name = "[KID=]FILE", value_delimiter = ',')]
    pub jwt_public_key: Vec<String>,
    /// URL of a JWKS document whose RSA and EC P-256 keys verify client tokens.
    #[arg(long, env = "SWITCHBOARD_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// How often the JWKS document is fetched again (also at once, at most
    /// every few seconds, when a token names an unknown `kid`).
    #[arg(long, env = "SWITCHBOARD_JWKS_REFRESH", default_value = "5m", value_parser = duration)]
    pub jwks_refresh: Duration,
    /// Bearer key for /v1/*; unset: the server API answers 403.
    #[arg(long, env = "SWITCHBOARD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Accept ?user=ID without a token. For development only.
    #[arg(long, env = "SWITCHBOARD_DEV_INSECURE_AUTH")]
    pub dev_insecure_auth: bool,
    /// Serve the demo chat page at /demo/. For development only.
    #[arg(long, env = "SWITCHBOARD_DEMO")]
    pub demo: bool,
    /// durable: in the inbox before `accepted`; fast: stored only when undeliverable.
    #[arg(long, env = "SWITCHBOARD_DELIVERY", value_enum, default_value_t = Delivery::Durable)]
    pub delivery: Delivery,
    /// Heartbeat sent to clients; 2.5 heartbeats of silence close a connection.
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT", default_value = "25s", value_parser = duration)]
    pub heartbeat: Duration,
    /// Largest client frame; larger ones close the connection with 1009.
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME_BYTES", default_value_t = 65536)]
    pub max_frame_bytes: usize,
    /// Bytes queued for one connection before it is closed as a slow consumer (1013).
    #[arg(long, env = "SWITCHBOARD_SEND_QUEUE_BYTES", default_value_t = 1 << 20)]
    pub send_queue_bytes: usize,
    /// Frames per second per connection.
    #[arg(long, env = "SWITCHBOARD_RATE_LIMIT", default_value_t = 100)]
    pub rate_limit: u32,
    /// Frames a connection may send at once above the rate.
    #[arg(long, env = "SWITCHBOARD_RATE_LIMIT_BURST", default_value_t = 200)]
    pub rate_limit_burst: u32,
    /// Messages kept per user inbox.
    #[arg(long, env = "SWITCHBOARD_INBOX_MAX_LEN", default_value_t = 1000)]
    pub inbox_max_len: usize,
    /// How long a kept message waits.
    #[arg(long, env = "SWITCHBOARD_INBOX_TTL", default_value = "7d", value_parser = duration)]
    pub inbox_ttl: Duration,
    /// A device neither connected nor acked for this long no longer holds back its user's log.
    #[arg(long, env = "SWITCHBOARD_DEVICE_TTL", default_value = "30d", value_parser = duration)]
    pub device_ttl: Duration,
    /// Most recipients of one client send; the server API takes ten times as many.
    #[arg(long, env = "SWITCHBOARD_MAX_RECIPIENTS", default_value_t = 100)]
    pub max_recipients: usize,
    /// Drain time on SIGTERM.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE", default_value = "20s", value_parser = duration)]
    pub shutdown_grace: Duration,
    /// Threads that serve connections. 1 (the default) runs the whole node on
    /// one thread: its tasks hand each other work without waking another
    /// thread, and the Redis commands of one turn go out in one write; run
    /// a node per core. More: a work-stealing pool of that many threads.
    #[arg(long, env = "SWITCHBOARD_THREADS", default_value_t = 1)]
    pub threads: usize,
    /// Most client connections this node holds; more get HTTP 503.
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Most client connections from one IP address; more get HTTP 429. 0: no limit
    /// (behind a proxy every client has the proxy's address).
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,
    #[command(flatten)]
    pub webhook: WebhookArgs,
}

/// Events for the application backend (contract section 11).
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// URL the events are POSTed to; unset: no events.
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Key of the HMAC-SHA256 signature of each event (required with --webhook-url).
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// `message.stored` events carry the message body.
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_BODIES")]
    pub webhook_bodies: bool,
    /// An event not delivered within this long is dropped (and counted).
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_MAX_AGE", default_value = "1h", value_parser = duration)]
    pub webhook_max_age: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    pub user: String,
    /// Lifetime of the token.
    #[arg(long, default_value = "1h", value_parser = duration)]
    pub ttl: Duration,
    /// HS256 secret, the same as the nodes'.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

fn duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// A setting that parsed but makes no sense.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting --{setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

/// A node's settings, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    pub node_id: String,
    pub node_ttl: Duration,
    pub redis_batch_window: Duration,
    pub jwt_secret: Option<String>,
    pub jwt_audience: Option<String>,
    /// From `--jwt-public-key`, read and checked.
    pub jwt_public_keys: Vec<PublicKey>,
    pub jwks_url: Option<Uri>,
    pub jwks_refresh: Duration,
    pub api_key: Option<String>,
    pub dev_insecure_auth: bool,
    pub demo: bool,
    pub mode: Mode,
    pub heartbeat: Duration,
    pub max_frame_bytes: usize,
    pub send_queue_bytes: usize,
    pub rate_limit: u32,
    pub rate_limit_burst: u32,
    pub inbox_max_len: usize,
    pub inbox_ttl: Duration,
    pub device_ttl: Duration,
    pub max_recipients: usize,
    pub shutdown_grace: Duration,
    pub threads: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Events for the application backend; none: off.
    pub webhook: Option<WebhookConfig>,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: Uri,
    pub secret: String,
    pub bodies: bool,
    pub max_age: Duration,
}

impl WebhookArgs {
    fn validate(self) -> Result<Option<WebhookConfig>, ConfigError> {
        let bad = |setting, problem: &str| Err(ConfigError { setting, problem: problem.to_owned() });
        if self.webhook_max_age < Duration::from_secs(1) {
            return bad("webhook-max-age", "must be at least 1s");
        }
        let Some(url) = self.webhook_url else {
            return Ok(None);
        };
        let url = http_url(&url, "webhook-url")?;
        let secret = match self.webhook_secret {
            Some(secret) if !secret.is_empty() => secret,
            _ => return bad("webhook-secret", "required with --webhook-url, not empty: receivers check signatures"),
        };
        Ok(Some(WebhookConfig { url, secret, bodies: self.webhook_bodies, max_age: self.webhook_max_age }))
    }
}

impl ServeArgs {
    /// Parses `serve` flags alone, as the binary would after `serve`.
    pub fn try_parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        Serve::try_parse_from(args).map(|s| s.args)
    }

    pub fn validate(self) -> Result<Config, ConfigError> {
        let bad = |setting, problem: &str| Err(ConfigError { setting, problem: problem.to_owned() });
        if self.jwt_secret.is_none()
            && self.jwt_public_key.is_empty()
            && self.jwks_url.is_none()
            && !self.dev_insecure_auth
        {
            let problem = "set a secret, --jwt-public-key or --jwks-url (or --dev-insecure-auth for development): \
                           no client could log in";
            return bad("jwt-secret", problem);
        }
        if self.jwt_secret.as_deref() == Some("") {
            return bad("jwt-secret", "must not be empty");
        }
        if self.jwt_audience.as_deref() == Some("") {
            return bad("jwt-audience", "must not be empty");
        }
        let jwt_public_keys = keys::read_key_files(&self.jwt_public_key)
            .map_err(|e| ConfigError { setting: "jwt-public-key", problem: e.to_string() })?;
        let jwks_url = self.jwks_url.as_deref().map(|url| http_url(url, "jwks-url")).transpose()?;
        let webhook = self.webhook.validate()?;
        if self.jwks_refresh < Duration::from_secs(1) {
            return bad("jwks-refresh", "must be at least 1s");
        }
        if self.api_key.as_deref() == Some("") {
            return bad("api-key", "must not be empty");
        }
        if self.heartbeat < Duration::from_millis(100) {
            return bad("heartbeat", "must be at least 100ms");
        }
        if self.node_ttl < Duration::from_secs(1) {
            return bad("node-ttl", "must be at least 1s");
        }
        if self.redis_batch_window > Duration::from_millis(100) {
            return bad("redis-batch-window", "must be at most 100ms");
        }
        if self.max_frame_bytes < 256 {
            return bad("max-frame-bytes", "must be at least 256");
        }
        if self.send_queue_bytes < self.max_frame_bytes {
            return bad("send-queue-bytes", "must be at least max-frame-bytes");
        }
        if self.rate_limit == 0 {
            return bad("rate-limit", "must be at least 1");
        }
        if self.rate_limit_burst < self.rate_limit {
            return bad("rate-limit-burst", "must be at least rate-limit");
        }
        if self.inbox_max_len == 0 {
            return bad("inbox-max-len", "must be at least 1");
        }
        if self.inbox_ttl < Duration::from_secs(1) {
            return bad("inbox-ttl", "must be at least 1s");
        }
        if self.device_ttl < Duration::from_secs(1) {
            return bad("device-ttl", "must be at least 1s");
        }
        if self.max_recipients == 0 {
            return bad("max-recipients", "must be at least 1");
        }
        if self.threads == 0 {
            return bad("threads", "must be at least 1");
        }
        if self.max_connections == 0 {
            return bad("max-connections", "must be at least 1");
        }
        if let Some(url) = &self.redis_url {
            let schemes = ["redis://", "rediss://", "redis-sentinel://", "redis-cluster://"];
            if !schemes.iter().any(|scheme| url.starts_with(scheme)) {
                return bad("redis-url", "must start with redis://, rediss://, redis-sentinel:// or redis-cluster://");
            }
        }
        if self.redis_prefix.contains(['{', '}']) {
            return bad("redis-prefix", "must not contain braces");
        }
        let node_id = match self.node_id {
            Some(id)
                if id.is_empty()
                    || id.len() > 64
                    || !id.bytes().all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}') =>
            {
                return bad("node-id", "1 to 64 printable ASCII characters, no braces");
            }
            Some(id) => id,
            None => default_node_id(),
        };
        Ok(Config {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            redis_url: self.redis_url,
            redis_prefix: self.redis_prefix,
            node_id,
            node_ttl: self.node_ttl,
            redis_batch_window: self.redis_batch_window,
            jwt_secret: self.jwt_secret,
            jwt_audience: self.jwt_audience,
            jwt_public_keys,
            jwks_url,
            jwks_refresh: self.jwks_refresh,
            api_key: self.api_key,
            dev_insecure_auth: self.dev_insecure_auth,
            demo: self.demo,
            mode: match self.delivery {
                Delivery::Durable => Mode::Durable,
                Delivery::Fast => Mode::Fast,
            },
            heartbeat: self.heartbeat,
            max_frame_bytes: self.max_frame_bytes,
            send_queue_bytes: self.send_queue_bytes,
            rate_limit: self.rate_limit,
            rate_limit_burst: self.rate_limit_burst,
            inbox_max_len: self.inbox_max_len,
            inbox_ttl: self.inbox_ttl,
            device_ttl: self.device_ttl,
            max_recipients: self.max_recipients,
            shutdown_grace: self.shutdown_grace,
            threads: self.threads,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            webhook,
        })
    }
}

impl Config {
    /// A connection from which nothing arrives for this long is closed
    /// (2.5 heartbeats); also how long a close frame may wait for a peer
    /// that does not read.
    pub fn idle_after(&self) -> Duration {
        self.heartbeat.mul_f32(2.5)
    }
}

/// An `http` or `https` URL with a host and no user info.
fn http_url(text: &str, setting: &'static str) -> Result<Uri, ConfigError> {
    let bad = || ConfigError { setting, problem: "must be an http:// or https:// URL with a host".to_owned() };
    let url: Uri = text.parse().map_err(|_| bad())?;
    let scheme_ok = matches!(url.scheme_str(), Some("http" | "https"));
    let authority = url.authority().ok_or_else(bad)?;
    if !scheme_ok || authority.host().is_empty() || authority.as_str().contains('@') {
        return Err(bad());
    }
    Ok(url)
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(40).collect::<String>())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let args = std::iter::once("serve").chain(args.iter().copied());
        ServeArgs::try_parse_from(args).map_err(|e| e.to_string())?.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_contract() {
        let config = parse(&["--jwt-secret", "s"]).unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(config.metrics_listen.to_string(), "0.0.0.0:9091");
        assert_eq!(config.node_ttl, Duration::from_secs(10));
        assert_eq!(config.mode, Mode::Durable);
        assert_eq!(config.heartbeat, Duration::from_secs(25));
        assert_eq!((config.max_frame_bytes, config.send_queue_bytes), (65536, 1 << 20));
        assert_eq!((config.rate_limit, config.rate_limit_burst), (100, 200));
        assert_eq!((config.inbox_max_len, config.inbox_ttl), (1000, Duration::from_secs(7 * 86400)));
        assert_eq!((config.device_ttl, config.max_recipients), (Duration::from_secs(30 * 86400), 100));
        assert_eq!(config.shutdown_grace, Duration::from_secs(20));
        assert!(!config.dev_insecure_auth);
        assert!(config.redis_url.is_none());
    }

    #[test]
    fn bad_values_name_the_setting() {
        assert!(parse(&["--jwt-secret", "s", "--heartbeat", "soon"]).unwrap_err().contains("--heartbeat"));
        assert!(parse(&["--jwt-secret", "s", "--delivery", "maybe"]).unwrap_err().contains("--delivery"));
        assert!(parse(&["--jwt-secret", "s", "--rate-limit", "0"]).unwrap_err().contains("--rate-limit"));
        assert!(parse(&[]).unwrap_err().contains("--jwt-secret"));
        assert!(parse(&["--dev-insecure-auth", "--node-id", "a{b}"]).unwrap_err().contains("--node-id"));
    }

    #[test]
    fn public_keys_and_jwks_are_checked_at_start() {
        for (args, setting) in [
            (&["--jwt-public-key", "/no/such.pem"][..], "--jwt-public-key"),
            (&["--jwt-public-key", "a=/x.pem,=/y.pem"], "--jwt-public-key"),
            (&["--jwt-public-key", "/x.pem", "--jwt-public-key", "b=/y.pem"], "--jwt-public-key"),
            (&["--jwks-url", "ftp://keys.example/jwks.json"], "--jwks-url"),
            (&["--jwks-url", "keys.example/jwks.json"], "--jwks-url"),
            (&["--jwks-url", "https://user:pw@keys.example/jwks.json"], "--jwks-url"),
            (&["--jwks-url", "http://127.0.0.1:1/", "--jwks-refresh", "10ms"], "--jwks-refresh"),
            (&["--jwks-url", "http://127.0.0.1:1/", "--jwks-refresh", "soon"], "--jwks-refresh"),
        ] {
            let error = parse(args).unwrap_err();
            assert!(error.contains(setting), "{args:?}: {error}");
        }
        // A JWKS alone is enough to let clients in.
        let config = parse(&["--jwks-url", "https://keys.example/.well-known/jwks.json"]).unwrap();
        assert_eq!(config.jwks_url.unwrap().host(), Some("keys.example"));
        assert_eq!(config.jwks_refresh, Duration::from_secs(300));
        assert!(config.jwt_public_keys.is_empty() && config.jwt_secret.is_none());
    }

    #[test]
    fn webhooks_need_a_url_and_a_secret() {
        assert!(parse(&["--jwt-secret", "s"]).unwrap().webhook.is_none());
        for (args, setting) in [
            (&["--webhook-url", "http://127.0.0.1:9/hook"][..], "--webhook-secret"),
            (&["--webhook-url", "http://127.0.0.1:9/hook", "--webhook-secret", ""], "--webhook-secret"),
            (&["--webhook-url", "hooks.example/in", "--webhook-secret", "k"], "--webhook-url"),
            (&["--webhook-max-age", "0s"], "--webhook-max-age"),
            (&["--webhook-max-age", "later"], "--webhook-max-age"),
        ] {
            let args: Vec<&str> = ["--jwt-secret", "s"].iter().chain(args).copied().collect();
            let error = parse(&args).unwrap_err();
            assert!(error.contains(setting), "{args:?}: {error}");
        }
        let config =
            parse(&["--jwt-secret", "s", "--webhook-url", "https://app.example/events", "--webhook-secret", "k"])
                .unwrap()
                .webhook
                .unwrap();
        assert_eq!((config.max_age, config.bodies), (Duration::from_secs(3600), false));
    }
}
