//! The server API for application backends: `POST /v1/send`,
//! `GET /v1/presence/{user}` and `POST /v1/disconnect`, behind a bearer key
//! compared in constant time.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Bytes;
use hyper::body::Incoming;
use subtle::ConstantTimeEq;
use switchboard_presence::{Kick, Outgoing, unix_micros};
use switchboard_protocol::{ApiDisconnect, ApiSend, Body, ClientMsgId, DeviceId, UserId};

use crate::node::Node;
use crate::respond::{HttpBody, json, json_error};

/// Largest request body accepted, beyond the largest client frame.
const BODY_OVERHEAD: usize = 1024;
/// The server API takes lists of recipients this many times longer than
/// clients may send.
pub const API_RECIPIENTS_FACTOR: usize = 10;
/// The longest block `POST /v1/disconnect` sets: a week.
const MAX_BLOCK_S: u64 = 7 * 24 * 3600;

pub async fn handle(node: &Arc<Node>, req: Request<Incoming>) -> Response<HttpBody> {
    if let Some(refusal) = refuse(node, &req) {
        return refusal;
    }
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::POST, "/v1/send") => send(node, req).await,
        (&Method::POST, "/v1/disconnect") => disconnect(node, req).await,
        (&Method::GET, p) if p.starts_with("/v1/presence/") => presence(node, &p["/v1/presence/".len()..]).await,
        (_, "/v1/send" | "/v1/disconnect") => {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use POST")
        }
        (_, p) if p.starts_with("/v1/presence/") => {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET")
        }
        _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such path"),
    }
}

/// 403 when no key is configured; 401 unless the bearer key matches.
fn refuse<B>(node: &Node, req: &Request<B>) -> Option<Response<HttpBody>> {
    let Some(key) = &node.config.api_key else {
        return Some(json_error(StatusCode::FORBIDDEN, "forbidden", "the server API is off: no api-key configured"));
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    let matches = key_matches(given, key.as_bytes());
    (!matches).then(|| json_error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer key"))
}

/// Whether `given` is the key. Every byte of a key of the right length is
/// compared, wherever the first difference is (`subtle`), so the time taken
/// does not tell an attacker how much of a guess was right; only the key's
/// length is not hidden.
fn key_matches(given: &[u8], key: &[u8]) -> bool {
    bool::from(given.ct_eq(key))
}

/// Why a request body is refused.
enum Unreadable {
    TooLarge(usize),
    NotJson(serde_json::Error),
}

impl Unreadable {
    fn answer(self) -> Response<HttpBody> {
        match self {
            Self::TooLarge(limit) => {
                json_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", &format!("request body over {limit} bytes"))
            }
            Self::NotJson(error) => {
                json_error(StatusCode::BAD_REQUEST, "bad_request", &format!("invalid JSON: {error}"))
            }
        }
    }
}

/// The request's body, up to `limit` bytes.
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Unreadable> {
    Ok(Limited::new(req.into_body(), limit).collect().await.map_err(|_| Unreadable::TooLarge(limit))?.to_bytes())
}

fn parse<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Unreadable> {
    serde_json::from_slice(bytes).map_err(Unreadable::NotJson)
}

async fn send(node: &Arc<Node>, req: Request<Incoming>) -> Response<HttpBody> {
    let bytes = match read_body(req, node.config.max_frame_bytes + BODY_OVERHEAD).await {
        Ok(bytes) => bytes,
        Err(refusal) => return refusal.answer(),
    };
    let mut request: ApiSend<'_> = match parse(&bytes) {
        Ok(request) => request,
        Err(refusal) => return refusal.answer(),
    };
    let to = match request.to() {
        Some(Ok(to)) => to,
        Some(Err(message)) => return json_error(StatusCode::BAD_REQUEST, "invalid_recipient", &message),
        None => return json_error(StatusCode::BAD_REQUEST, "bad_request", "missing field `to`"),
    };
    let most = node.config.max_recipients * API_RECIPIENTS_FACTOR;
    if to.users().len() > most {
        return json_error(StatusCode::BAD_REQUEST, "too_large", &format!("at most {most} recipients per send"));
    }
    let from = match UserId::parse(request.from.as_deref().unwrap_or("system")) {
        Ok(from) => from,
        Err(error) => return json_error(StatusCode::BAD_REQUEST, "bad_request", &format!("`from` {error}")),
    };
    let id = match request.id.as_deref().map(ClientMsgId::parse).transpose() {
        Ok(id) => id,
        Err(error) => return json_error(StatusCode::BAD_REQUEST, "bad_request", &format!("`id` {error}")),
    };
    let Some(body) = request.body.take().map(Body::from_raw) else {
        return json_error(StatusCode::BAD_REQUEST, "bad_request", "missing field `body`");
    };
    if let Err(error) = body.check() {
        return json_error(StatusCode::BAD_REQUEST, "bad_request", &format!("field `body`: {error}"));
    }
    let list = to.is_list();
    let outgoing =
        Outgoing { from, id, receipt: false, to, body, ephemeral: request.ephemeral, received_us: unix_micros() };
    match node.send(outgoing).await {
        Ok(accepted) => {
            let mut answer = serde_json::json!({ "msg": accepted.msg, "status": accepted.status.as_str() });
            if list {
                let recipients: serde_json::Map<String, serde_json::Value> = accepted
                    .recipients
                    .iter()
                    .map(|(user, status)| (user.as_str().to_owned(), status.as_str().into()))
                    .collect();
                answer["recipients"] = recipients.into();
            }
            json(StatusCode::ACCEPTED, &answer)
        }
        Err(_) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, "internal", "backend unavailable; retry with the same id")
        }
    }
}

/// Closes the user's connections (of one device, when named) on every
/// node with 4003, and with `block_s` refuses their upgrades for that long;
/// answers how many connections were closed.
async fn disconnect(node: &Arc<Node>, req: Request<Incoming>) -> Response<HttpBody> {
    let bytes = match read_body(req, BODY_OVERHEAD).await {
        Ok(bytes) => bytes,
        Err(refusal) => return refusal.answer(),
    };
    let request: ApiDisconnect<'_> = match parse(&bytes) {
        Ok(request) => request,
        Err(refusal) => return refusal.answer(),
    };
    let user = match request.user.as_deref().map(UserId::parse) {
        Some(Ok(user)) => user,
        Some(Err(error)) => return json_error(StatusCode::BAD_REQUEST, "invalid_user", &format!("`user` {error}")),
        None => return json_error(StatusCode::BAD_REQUEST, "bad_request", "missing field `user`"),
    };
    let device = match request.device.as_deref().map(DeviceId::parse).transpose() {
        Ok(device) => device,
        Err(error) => return json_error(StatusCode::BAD_REQUEST, "bad_request", &format!("`device` {error}")),
    };
    if request.block_s.is_some_and(|s| s > MAX_BLOCK_S) {
        let message = format!("`block_s` is at most {MAX_BLOCK_S}");
        return json_error(StatusCode::BAD_REQUEST, "bad_request", &message);
    }
    let block = request.block_s.map(Duration::from_secs);
    let reason = request.reason.as_deref().unwrap_or_default();
    tracing::info!(%user, device = ?device.as_ref().map(DeviceId::as_str), ?block, reason, "disconnect");
    match node.backend.kick(&Kick { user, device, block }).await {
        Ok(closed) => json(StatusCode::OK, &serde_json::json!({ "closed": closed })),
        Err(_) => json_error(StatusCode::SERVICE_UNAVAILABLE, "internal", "backend unavailable; retry"),
    }
}

async fn presence(node: &Arc<Node>, user: &str) -> Response<HttpBody> {
    let user = match UserId::parse(user) {
        Ok(user) => user,
        Err(error) => return json_error(StatusCode::BAD_REQUEST, "invalid_user", &format!("user id {error}")),
    };
    match node.online(std::slice::from_ref(&user)).await {
        Ok(counts) => {
            let connections = counts.first().copied().unwrap_or(0);
            json(
                StatusCode::OK,
                &serde_json::json!({ "user": user, "online": connections > 0, "connections": connections }),
            )
        }
        Err(_) => json_error(StatusCode::SERVICE_UNAVAILABLE, "internal", "backend unavailable"),
    }
}

#[cfg(test)]
mod tests {
    use super::key_matches;

    #[test]
    fn only_the_exact_key_matches() {
        let key = b"0123456789abcdef";
        assert!(key_matches(key, key));
        for wrong in [&b""[..], b"0123456789abcdeF", b"x123456789abcdef", b"0123456789abcde", b"0123456789abcdef0"] {
            assert!(!key_matches(wrong, key), "{:?}", String::from_utf8_lossy(wrong));
        }
    }
}
