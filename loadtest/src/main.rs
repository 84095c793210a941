//! `sb-load`: drives real Switchboard nodes over loopback and reports what
//! they cost. Every run is bounded in connections and time.

mod chat;
mod idle;
mod proc;

use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sb-load", about = "Load generator for Switchboard")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Open idle connections and report the nodes' memory per connection.
    Idle(idle::Args),
    /// Open-loop 1:1 messages at a fixed rate, cross-node; latency, losses and server CPU per message.
    Chat(chat::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Idle(args) => idle::run(args).await,
        Scenario::Chat(args) => chat::run(args).await,
    }
}

/// A client token for `user`, valid for an hour.
pub fn token(secret: &str, user: &str) -> anyhow::Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let claims = serde_json::json!({ "sub": user, "exp": exp });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}
