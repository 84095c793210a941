//! A line-oriented chat client for trying a node by hand.
//!
//! ```text
//! cargo run -p switchboard-testkit --example chat -- ws://127.0.0.1:8080/ws alice
//! ```
//!
//! Connects as `alice` with development auth (`?user=alice`, for a node
//! started with `--dev-insecure-auth`), or with the token in
//! `SWITCHBOARD_TOKEN` when that is set (the token then names the user).
//! Every frame from the server is printed to stdout as one JSON line, and
//! every `message` is acked at once. Lines read from stdin:
//!
//! - `bob hello there` sends the text `hello there` to `bob`;
//! - `?bob carol` asks whether `bob` and `carol` are online.
//!
//! At the end of stdin the client waits for the answers to its sends, then
//! closes the connection.

use std::collections::HashSet;
use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_protocol::{Codec, UserId};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const USAGE: &str = "usage: chat URL USER   (USER may be left out when SWITCHBOARD_TOKEN is set)";

#[tokio::main]
async fn main() -> ExitCode {
    match chat().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chat: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn chat() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().context(USAGE)?;
    let user = args.next();
    let token = std::env::var("SWITCHBOARD_TOKEN").ok().filter(|t| !t.is_empty());

    let url = match (&token, &user) {
        (Some(_), _) => url,
        (None, Some(user)) => {
            // Checked here for a clear message; the characters allowed need no escaping.
            let user = UserId::parse(user).with_context(|| format!("user id {user:?}"))?;
            let separator = if url.contains('?') { '&' } else { '?' };
            format!("{url}{separator}user={user}")
        }
        (None, None) => bail!(USAGE),
    };
    let mut request = url.as_str().into_client_request().with_context(|| format!("bad URL {url}"))?;
    if let Some(token) = &token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .context("SWITCHBOARD_TOKEN is not a valid header value")?;
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.map_err(|error| match error {
        WsError::Http(response) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            anyhow::anyhow!("the server refused the connection: HTTP {} {}", response.status(), body.trim())
        }
        other => anyhow::Error::new(other).context(format!("cannot connect to {url}")),
    })?;

    let mut lines = stdin_lines();
    let mut stdin_open = true;
    let mut next_id = 1u64;
    // Ids made unique per run: the node remembers a sender's ids for ten
    // minutes and would take a restarted counter's `1` for a resend.
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    // Sends not yet answered with `accepted` or `error`.
    let mut pending = HashSet::new();
    let mut closing = false;

    loop {
        tokio::select! {
            line = lines.recv(), if stdin_open && !closing => match line {
                Some(line) => {
                    let Some(frame) = parse_line(&line, || format!("{run}-{next_id}")) else { continue };
                    if frame["type"] == "send" {
                        pending.insert(frame["id"].as_str().unwrap_or_default().to_owned());
                        next_id += 1;
                    }
                    ws.send(Message::text(frame.to_string())).await.context("sending to the server")?;
                }
                None => stdin_open = false,
            },
            incoming = ws.next() => match incoming {
                None => return Ok(()),
                Some(Err(_)) if closing => return Ok(()),
                Some(Err(error)) => return Err(error).context("reading from the server"),
                Some(Ok(Message::Close(frame))) => {
                    if !closing {
                        match frame {
                            Some(frame) => {
                                eprintln!("closed by the server: {} {}", u16::from(frame.code), frame.reason);
                            }
                            None => eprintln!("closed by the server"),
                        }
                    }
                    closing = true;
                }
                Some(Ok(message)) => {
                    let Some(frame) = server_frame(&message)? else { continue };
                    writeln!(std::io::stdout().lock(), "{frame}").context("writing to stdout")?;
                    match frame["type"].as_str() {
                        // Once our close is sent nothing more may be; an unacked
                        // message comes again on the next connection.
                        Some("message") if !closing => {
                            let ack = json!({"type": "ack", "msg": frame["msg"]});
                            ws.send(Message::text(ack.to_string())).await.context("sending an ack")?;
                        }
                        Some("accepted" | "error") => {
                            if let Some(id) = frame["id"].as_str() {
                                pending.remove(id);
                            }
                        }
                        _ => {}
                    }
                }
            },
        }
        if !stdin_open && pending.is_empty() && !closing {
            closing = true;
            ws.close(None).await.context("closing the connection")?;
        }
    }
}

/// Stdin, line by line. Read on a thread of its own: a blocking read of a
/// terminal cannot be cancelled, and the process may end while it waits.
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The client frame a line of input asks for; `None` (with a hint on
/// stderr) for a line that asks for nothing.
fn parse_line(line: &str, id: impl FnOnce() -> String) -> Option<Value> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    if let Some(users) = line.strip_prefix('?') {
        return Some(json!({"type": "presence", "users": users.split_whitespace().collect::<Vec<_>>()}));
    }
    match line.split_once(char::is_whitespace) {
        Some((to, text)) => Some(json!({"type": "send", "id": id(), "to": to, "body": text.trim_start()})),
        None => {
            eprintln!("type `USER TEXT` to send, or `?USER...` to ask who is online");
            None
        }
    }
}

/// A data frame from the server as JSON; `None` for control frames.
fn server_frame(message: &Message) -> anyhow::Result<Option<Value>> {
    let frame = match message {
        Message::Text(text) => {
            serde_json::from_str(text.as_str()).context("the server sent a frame that is not JSON")?
        }
        // Only if MessagePack were negotiated; decoded for printing all the same.
        Message::Binary(bytes) => serde_json::to_value(Codec::MsgPack.decode_server(bytes)?)?,
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => return Ok(None),
    };
    Ok(Some(frame))
}
