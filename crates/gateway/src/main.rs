//! `switchboard`: parse the command line, then serve or print a token.
//! Bad settings exit with status 64 and a message naming the setting.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use switchboard_gateway::{Cli, Command, Config, TokenArgs, issue_token};
use switchboard_protocol::UserId;
use tokio::net::TcpListener;

/// `EX_USAGE` from sysexits.h.
const USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() { ExitCode::from(USAGE) } else { ExitCode::SUCCESS };
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve(Box::new(cli.serve))) {
        Command::Token(args) => token(args),
        Command::Serve(args) => match args.validate() {
            Ok(config) => serve(config),
            Err(error) => {
                eprintln!("switchboard: {error}");
                return ExitCode::from(USAGE);
            }
        },
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("switchboard: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let Some(secret) = args.jwt_secret.filter(|s| !s.is_empty()) else {
        eprintln!("switchboard: invalid setting --jwt-secret: required to sign a token");
        return Ok(ExitCode::from(USAGE));
    };
    let user = match UserId::parse(&args.user) {
        Ok(user) => user,
        Err(error) => {
            eprintln!("switchboard: invalid setting --user: {error}");
            return Ok(ExitCode::from(USAGE));
        }
    };
    println!("{}", issue_token(&secret, &user, args.ttl)?);
    Ok(ExitCode::SUCCESS)
}

fn serve(config: Config) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match config.threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        threads => tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?,
    };
    runtime.block_on(async {
        let public = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let metrics = TcpListener::bind(config.metrics_listen)
            .await
            .with_context(|| format!("binding {}", config.metrics_listen))?;
        // One line on stdout for scripts and tests that bind port 0.
        println!("listening public={} metrics={}", public.local_addr()?, metrics.local_addr()?);
        switchboard_gateway::serve(config, public, metrics, shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Resolves on SIGTERM (Kubernetes starting a graceful shutdown) or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot listen for signals; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
