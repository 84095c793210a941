//! `sb-load`: drives real Switchboard nodes over loopback and reports what
//! they cost. Every run is bounded in connections and time. The load comes
//! from flags for an ad-hoc run (`idle`, `chat`, `saturate`, `soak`) or from
//! a scenario file (`run`); the targets always come from flags.

mod chat;
mod idle;
mod proc;
mod saturate;
mod scenario;
mod soak;
mod targets;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::scenario::{Plan, Scenario};
use crate::targets::Targets;

#[derive(Parser)]
#[command(name = "sb-load", about = "Load generator for Switchboard")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open idle connections and report the memory each costs the nodes and Redis.
    Idle {
        #[command(flatten)]
        targets: Targets,
        #[command(flatten)]
        load: idle::Load,
        #[command(flatten)]
        output: Output,
    },
    /// Open-loop 1:1 messages at a fixed rate, cross-node; latency, losses and server CPU per message.
    Chat {
        #[command(flatten)]
        targets: Targets,
        #[command(flatten)]
        load: chat::Load,
        #[command(flatten)]
        output: Output,
    },
    /// Chat steps at rising rates, the first at --rate, until one fails: the highest rate that
    /// delivers 99.9% of the messages offered, loses none and keeps p99 under 100 ms.
    Saturate {
        #[command(flatten)]
        targets: Targets,
        #[command(flatten)]
        load: chat::Load,
        #[command(flatten)]
        search: saturate::Search,
        #[command(flatten)]
        output: Output,
    },
    /// Steady chat traffic plus connection churn for a bounded time (at most 60 minutes),
    /// sampling the nodes' memory and open files: fails when they do not come back to the
    /// baseline taken after warm-up, when latency drifts up, or when a message is lost.
    Soak {
        #[command(flatten)]
        targets: Targets,
        #[command(flatten)]
        metrics: soak::NodeMetrics,
        #[command(flatten)]
        load: soak::Load,
        #[command(flatten)]
        output: Output,
    },
    /// Run a scenario file (loadtest/scenarios/*.toml) against the nodes given by flags.
    Run {
        /// The scenario file.
        file: PathBuf,
        #[command(flatten)]
        targets: Targets,
        #[command(flatten)]
        output: Output,
    },
    /// Print what a scenario file needs of the nodes, for scripts: kind=, nodes= and delivery=, one a line.
    ScenarioInfo {
        /// The scenario file.
        file: PathBuf,
    },
}

#[derive(clap::Args)]
#[command(next_help_heading = "Report")]
struct Output {
    /// Free text stored in the report; `run` uses the scenario's name when it is left out.
    #[arg(long)]
    label: Option<String>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Idle { targets, load, output } => execute(&Plan::Idle(load), &targets, &output).await,
        Command::Chat { targets, load, output } => execute(&Plan::Chat(load), &targets, &output).await,
        Command::Saturate { targets, load, search, output } => {
            execute(&Plan::Saturate(load, search), &targets, &output).await
        }
        Command::Soak { targets, metrics, load, output } => {
            let report = soak::run(&targets, &metrics, &load, output.label.as_deref()).await?;
            report.print();
            write_json(output.json.as_deref(), &report)?;
            report.ensure_passed()
        }
        Command::Run { file, targets, output } => {
            let scenario = Scenario::read(&file)?;
            scenario.check(&targets)?;
            let output = Output { label: output.label.or(Some(scenario.name)), ..output };
            execute(&scenario.plan, &targets, &output).await
        }
        Command::ScenarioInfo { file } => {
            print!("{}", Scenario::read(&file)?.shell_info());
            Ok(())
        }
    }
}

/// Runs `plan` against `targets`, prints its report and writes it as JSON when asked.
async fn execute(plan: &Plan, targets: &Targets, output: &Output) -> anyhow::Result<()> {
    let label = output.label.as_deref();
    let json = output.json.as_deref();
    match plan {
        Plan::Idle(load) => {
            let report = idle::run(targets, load, label).await?;
            report.print();
            write_json(json, &report)
        }
        Plan::Chat(load) => {
            let report = chat::run(targets, load, label).await?;
            report.print();
            write_json(json, &report)
        }
        Plan::Saturate(load, search) => {
            let report = saturate::run(targets, load, search, label).await?;
            report.print();
            write_json(json, &report)
        }
    }
}

fn write_json(path: Option<&Path>, report: &impl Serialize) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    std::fs::write(path, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
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
