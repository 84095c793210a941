//! The public port: WebSocket upgrades at `/ws`, the server API at `/v1/*`,
//! health at `/healthz` and `/readyz`. Everything about an upgrade is settled
//! here (auth, protocol, capacity) so the connection task starts with a known
//! user.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::{TokioIo, TokioTimer};
use switchboard_protocol::{Codec, DeviceId};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::api;
use crate::auth::{Credentials, TOKEN_PROTOCOL_PREFIX};
use crate::connection::{self, Session};
use crate::demo;
use crate::node::Node;
use crate::respond::{HttpBody, json_error, text};

/// Request line and headers larger than this get 431.
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Socket read buffer per connection: small, since most frames are small
/// and an idle connection should cost little; larger frames still arrive
/// whole, in several reads.
const READ_BUFFER_BYTES: usize = 512;
/// Frames of one connection are gathered up to this size and written in one
/// syscall (a connection flushes after each batch of frames it writes).
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// Accepts connections until `stop`; each is served on its own task.
pub async fn accept(listener: TcpListener, node: Arc<Node>, stop: CancellationToken) {
    let requests = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let stop = stop.clone();
        requests.spawn(async move {
            let service = service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(route(&node, peer.ip(), req).await) }
            });
            let conn = http1::Builder::new()
                .max_buf_size(MAX_HEADER_BYTES)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    requests.close();
    requests.wait().await;
}

async fn route(node: &Arc<Node>, peer: IpAddr, req: Request<Incoming>) -> Response<HttpBody> {
    match req.uri().path() {
        "/ws" => upgrade(node, peer, req).await,
        path if path.starts_with("/v1/") => api::handle(node, req).await,
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if node.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        path if node.config.demo && (path == "/demo" || path.starts_with("/demo/")) => {
            demo::respond(path).unwrap_or_else(|| json_error(StatusCode::NOT_FOUND, "not_found", "no such path"))
        }
        _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such path"),
    }
}

async fn upgrade(node: &Arc<Node>, peer: IpAddr, mut req: Request<Incoming>) -> Response<HttpBody> {
    if node.drain.is_cancelled() {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "draining", "node is restarting; connect to another");
    }
    let Some(key) = websocket_key(&req) else {
        return json_error(StatusCode::BAD_REQUEST, "not_websocket", "expected a WebSocket upgrade (version 13)");
    };
    let query = |name: &str| {
        form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    };
    let (query_token, dev_user) = (query("token"), query("user"));
    let credentials = Credentials {
        bearer: req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ")),
        subprotocol: offered_protocols(req.headers()).find_map(|p| p.strip_prefix(TOKEN_PROTOCOL_PREFIX)),
        query_token: query_token.as_deref(),
        dev_user: dev_user.as_deref(),
    };
    let identity = match node.auth.authenticate(&credentials).await {
        Ok(identity) => identity,
        Err(error) => {
            return json_error(StatusCode::UNAUTHORIZED, "unauthorized", &error.to_string());
        }
    };
    if node.hub.is_blocked(&identity.user) {
        return json_error(StatusCode::FORBIDDEN, "blocked", "this user may not connect for now");
    }
    let (device, since) = match upgrade_options(req.uri().query()) {
        Ok(options) => options,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, "bad_request", &message),
    };
    // The token's device claim wins over the query's.
    let device = identity.device.or(device).unwrap_or_else(DeviceId::default_device);
    let codec = match negotiate(req.headers()) {
        Ok(codec) => codec,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, "unsupported_protocol", message),
    };
    let Ok(permit) = node.capacity.clone().try_acquire_owned() else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "node is full; connect to another");
    };
    let Some(ip_permit) = node.per_ip.try_acquire(peer) else {
        let message = "too many connections from this address; close some first";
        return json_error(StatusCode::TOO_MANY_REQUESTS, "too_many_connections", message);
    };

    let on_upgrade = hyper::upgrade::on(&mut req);
    let node_for_task = node.clone();
    let max_frame = node.config.max_frame_bytes;
    node.connections.spawn(async move {
        let _permits = (permit, ip_permit);
        // Boxed, so the task keeps no room for the handshake's state for
        // the whole life of the connection.
        let Some(ws) = Box::pin(websocket(on_upgrade, max_frame)).await else { return };
        let session = Session { user: identity.user, device, conn: Uuid::now_v7(), codec, since, exp: identity.exp };
        connection::run(node_for_task, session, ws).await;
    });

    let mut response = Response::new(HttpBody::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    // Only the codec is named: a token entry is never echoed back.
    if offered_codecs(req.headers()).next().is_some() {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(codec.protocol()));
    }
    response
}

/// The WebSocket over the upgraded connection, once hyper hands it over.
/// It runs on the TCP stream itself, taken back from hyper with whatever
/// hyper read past the request: no boxed I/O layer stays in between.
async fn websocket(on_upgrade: OnUpgrade, max_frame: usize) -> Option<WebSocketStream<TcpStream>> {
    let parts = match on_upgrade.await.map(Upgraded::downcast::<TokioIo<TcpStream>>) {
        Ok(Ok(parts)) => parts,
        Ok(Err(_)) => {
            tracing::error!("upgraded connection is not a TCP stream");
            return None;
        }
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return None;
        }
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size((max_frame * 4).max(WRITE_BUFFER_BYTES + max_frame))
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame));
    let (stream, read) = (parts.io.into_inner(), parts.read_buf.to_vec());
    Some(WebSocketStream::from_partially_read(stream, read, Role::Server, Some(config)).await)
}

/// The upgrade's `?device=` and `?since=`, each when given.
fn upgrade_options(query: Option<&str>) -> Result<(Option<DeviceId>, Option<u64>), String> {
    let (mut device, mut since) = (None, None);
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "device" => device = Some(DeviceId::parse(&value).map_err(|e| format!("`device` {e}"))?),
            "since" => since = Some(value.parse().map_err(|_| "`since` must be a seq (a whole number)".to_owned())?),
            _ => {}
        }
    }
    Ok((device, since))
}

/// The `Sec-WebSocket-Key` of a well-formed version 13 upgrade request.
fn websocket_key(req: &Request<Incoming>) -> Option<String> {
    let headers = req.headers();
    let has_token = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
    };
    let upgrade = req.method() == http::Method::GET
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
        && headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    upgrade.then(|| headers.get(header::SEC_WEBSOCKET_KEY)?.to_str().ok().map(str::to_owned)).flatten()
}

fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// The offered entries that name a protocol, not a token.
fn offered_codecs(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    offered_protocols(headers).filter(|p| !p.starts_with(TOKEN_PROTOCOL_PREFIX))
}

/// The first offered protocol we speak; JSON when none is offered. A token
/// entry alone does not do: a browser that offers protocols fails the
/// handshake unless the server selects one of them, and a token is not one
/// to select.
fn negotiate(headers: &HeaderMap) -> Result<Codec, &'static str> {
    let mut offered = offered_codecs(headers).peekable();
    if offered.peek().is_none() {
        if offered_protocols(headers).next().is_some() {
            return Err("a switchboard.token.<jwt> entry needs a protocol beside it: \
                        switchboard.v1.json or switchboard.v1.msgpack");
        }
        return Ok(Codec::Json);
    }
    offered.find_map(Codec::from_protocol).ok_or("supported subprotocols: switchboard.v1.json, switchboard.v1.msgpack")
}
