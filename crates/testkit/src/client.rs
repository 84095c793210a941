//! A real WebSocket client speaking the Switchboard protocol.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use std::collections::BTreeMap;

use switchboard_protocol::{
    AcceptStatus, Body, ClientFrame, ClientMsgId, Codec, Delivery, DeviceId, Encoded, MsgId, ServerFrame, To, UserId,
    Welcome,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::within;

/// How to open a connection.
#[derive(Clone, Debug, Default)]
pub struct Connect {
    /// Sent as `Authorization: Bearer`.
    pub bearer: Option<String>,
    /// Appended to the URL as is (`token=...`, `user=...`).
    pub query: Option<String>,
    /// Offered in `Sec-WebSocket-Protocol`.
    pub protocols: Vec<String>,
    /// Any other request headers.
    pub headers: Vec<(String, String)>,
    /// The socket's receive buffer (`SO_RCVBUF`), for a client whose
    /// reading falls behind; the system default when unset.
    pub recv_buffer: Option<u32>,
}

#[derive(Debug)]
pub enum ConnectError {
    /// The server answered the upgrade with this status and body.
    Http {
        status: u16,
        body: String,
    },
    /// The upgrade succeeded, then the server closed before its welcome.
    Closed {
        code: u16,
        reason: String,
    },
    Other(String),
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub codec: Codec,
    /// The server's `Sec-WebSocket-Protocol`, when it sent one.
    pub protocol: Option<String>,
    pub welcome: Welcome,
}

impl Client {
    /// Connects as `user` with a valid token, speaking JSON.
    pub async fn connect(url: &str, user: &str) -> Self {
        Self::connect_with(url, user, Codec::Json).await
    }

    /// Connects as `user` from `device` (the `device` query parameter).
    pub async fn connect_device(url: &str, user: &str, device: &str) -> Self {
        let connect =
            Connect { bearer: Some(crate::token(user)), query: Some(format!("device={device}")), ..Connect::default() };
        Self::open(url, connect).await.unwrap_or_else(|e| panic!("connect as {user} from {device}: {e:?}"))
    }

    pub async fn connect_with(url: &str, user: &str, codec: Codec) -> Self {
        let connect = Connect {
            bearer: Some(crate::token(user)),
            protocols: vec![codec.protocol().to_owned()],
            ..Connect::default()
        };
        Self::open(url, connect).await.unwrap_or_else(|e| panic!("connect as {user}: {e:?}"))
    }

    /// Opens a connection and reads the `welcome` frame.
    pub async fn open(url: &str, connect: Connect) -> Result<Self, ConnectError> {
        let url = match &connect.query {
            Some(query) => format!("{url}?{query}"),
            None => url.to_owned(),
        };
        let mut request = url.into_client_request().map_err(|e| ConnectError::Other(e.to_string()))?;
        let headers = request.headers_mut();
        if let Some(token) = &connect.bearer {
            headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        if !connect.protocols.is_empty() {
            headers.insert("sec-websocket-protocol", connect.protocols.join(", ").parse().unwrap());
        }
        for (name, value) in &connect.headers {
            headers.insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
        let upgrade = async {
            let Some(size) = connect.recv_buffer else {
                return tokio_tungstenite::connect_async_with_config(request, Some(config), true).await;
            };
            let uri = request.uri();
            let addr = format!("{}:{}", uri.host().unwrap_or_default(), uri.port_u16().unwrap_or(80));
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_recv_buffer_size(size)?;
            let stream = socket.connect(addr.parse().map_err(|_| std::io::Error::other(addr))?).await?;
            tokio_tungstenite::client_async_with_config(request, MaybeTlsStream::Plain(stream), Some(config)).await
        };
        let (ws, response) = within("the upgrade", upgrade).await.map_err(|e| match e {
            WsError::Http(response) => ConnectError::Http {
                status: response.status().as_u16(),
                body: response.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default(),
            },
            other => ConnectError::Other(other.to_string()),
        })?;
        let protocol =
            response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let codec = protocol.as_deref().and_then(Codec::from_protocol).unwrap_or(Codec::Json);
        let mut client = Self { ws, codec, protocol, welcome: placeholder_welcome() };
        let first = loop {
            match within("the welcome", client.ws.next()).await {
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame.map_or((1005, String::new()), |f| (f.code.into(), f.reason.to_string()));
                    return Err(ConnectError::Closed { code, reason });
                }
                Some(Ok(Message::Text(text))) => break text.as_bytes().to_vec(),
                Some(Ok(Message::Binary(bytes))) => break bytes.to_vec(),
                Some(Ok(_)) => {}
                other => return Err(ConnectError::Other(format!("no welcome: {other:?}"))),
            }
        };
        match client.codec.decode_server(&first) {
            Ok(ServerFrame::Welcome(welcome)) => client.welcome = welcome,
            other => panic!("expected welcome, got {other:?}"),
        }
        Ok(client)
    }

    pub async fn send(&mut self, frame: &ClientFrame) {
        let message = match self.codec.encode_client(frame) {
            Encoded::Text(text) => Message::text(text),
            Encoded::Binary(bytes) => Message::binary(bytes),
        };
        self.ws.send(message).await.unwrap();
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.unwrap();
    }

    /// Feeds without flushing, for floods.
    pub async fn feed_raw(&mut self, message: Message) -> Result<(), WsError> {
        self.ws.feed(message).await
    }

    pub async fn flush(&mut self) -> Result<(), WsError> {
        self.ws.flush().await
    }

    /// Sends a message and returns the server's `accepted` answer.
    pub async fn send_message(&mut self, id: &str, to: &str, body: serde_json::Value) -> (MsgId, AcceptStatus) {
        let (msg, status, _) = self.send_to(id, To::One(UserId::parse(to).unwrap()), body, false).await;
        (msg, status)
    }

    /// Sends to a list of users; the `accepted` answer and its map of
    /// each recipient's outcome.
    pub async fn send_to_many(
        &mut self,
        id: &str,
        to: &[&str],
        body: serde_json::Value,
    ) -> (MsgId, AcceptStatus, BTreeMap<String, AcceptStatus>) {
        let to = To::Many(to.iter().map(|user| UserId::parse(user).unwrap()).collect());
        let (msg, status, recipients) = self.send_to(id, to, body, false).await;
        let recipients = recipients.expect("a recipients map for a list");
        (msg, status, recipients.into_iter().map(|(user, status)| (user.as_str().to_owned(), status)).collect())
    }

    /// An ephemeral send; the `accepted` status.
    pub async fn send_ephemeral(&mut self, id: &str, to: &str, body: serde_json::Value) -> AcceptStatus {
        self.send_to(id, To::One(UserId::parse(to).unwrap()), body, true).await.1
    }

    async fn send_to(
        &mut self,
        id: &str,
        to: To,
        body: serde_json::Value,
        ephemeral: bool,
    ) -> (MsgId, AcceptStatus, Option<BTreeMap<UserId, AcceptStatus>>) {
        let send =
            ClientFrame::Send { id: ClientMsgId::parse(id).unwrap(), to, body: Body::from_value(&body), ephemeral };
        self.send(&send).await;
        match self.recv().await {
            ServerFrame::Accepted { id: got, msg, status, recipients } if got.as_str() == id => {
                (msg, status, recipients)
            }
            other => panic!("expected accepted for {id}, got {other:?}"),
        }
    }

    pub async fn ack(&mut self, msg: MsgId) {
        self.send(&ClientFrame::Ack { msg }).await;
    }

    /// Acks everything up to `seq`, for this connection's device.
    pub async fn ack_up_to(&mut self, seq: u64) {
        self.send(&ClientFrame::AckUpTo { seq }).await;
    }

    /// The next data frame from the server, skipping WebSocket pings.
    pub async fn recv(&mut self) -> ServerFrame {
        loop {
            let message = within("a server frame", self.ws.next()).await;
            let bytes = match message {
                Some(Ok(Message::Text(text))) => text.as_bytes().to_vec(),
                Some(Ok(Message::Binary(bytes))) => bytes.to_vec(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a data frame, got {other:?}"),
            };
            return self.codec.decode_server(&bytes).unwrap_or_else(|e| panic!("undecodable frame: {e}"));
        }
    }

    /// The next data frame, or `None` once the connection is closed or
    /// broken; for clients that reconnect instead of failing the test.
    pub async fn try_recv(&mut self) -> Option<ServerFrame> {
        loop {
            let bytes = match self.ws.next().await {
                Some(Ok(Message::Text(text))) => text.as_bytes().to_vec(),
                Some(Ok(Message::Binary(bytes))) => bytes.to_vec(),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
            };
            return self.codec.decode_server(&bytes).ok();
        }
    }

    /// Sends without failing the test when the connection is gone.
    pub async fn try_send(&mut self, frame: &ClientFrame) -> bool {
        let message = match self.codec.encode_client(frame) {
            Encoded::Text(text) => Message::text(text),
            Encoded::Binary(bytes) => Message::binary(bytes),
        };
        self.ws.send(message).await.is_ok()
    }

    /// Who of `users` is online, by a presence query.
    pub async fn online(&mut self, users: &[&str]) -> Vec<bool> {
        self.send(&ClientFrame::Presence { users: users.iter().map(|u| UserId::parse(u).unwrap()).collect() }).await;
        match self.recv().await {
            ServerFrame::Presence { online } => users.iter().map(|u| online[&UserId::parse(u).unwrap()]).collect(),
            other => panic!("expected presence, got {other:?}"),
        }
    }

    /// Asks until `user`'s presence is `online`: presence is a state that
    /// changes on other nodes, with no event here to wait on.
    pub async fn until_online(&mut self, user: &str, online: bool) {
        within(&format!("{user} to be online: {online}"), async {
            while self.online(&[user]).await != [online] {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// The next `message` frame.
    pub async fn recv_message(&mut self) -> Arc<Delivery> {
        match self.recv().await {
            ServerFrame::Message(delivery) => delivery,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Reads until the server closes; its close code and reason. Data frames
    /// on the way are returned too, for the caller to check.
    pub async fn recv_close(&mut self) -> (Option<(u16, String)>, Vec<ServerFrame>) {
        let mut frames = Vec::new();
        loop {
            match within("the close frame", self.ws.next()).await {
                Some(Ok(Message::Close(frame))) => {
                    return (frame.map(|f| (u16::from(f.code), f.reason.to_string())), frames);
                }
                Some(Ok(Message::Text(text))) => frames.push(self.codec.decode_server(text.as_bytes()).unwrap()),
                Some(Ok(Message::Binary(bytes))) => frames.push(self.codec.decode_server(&bytes).unwrap()),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
                None => return (None, frames),
            }
        }
    }
}

fn placeholder_welcome() -> Welcome {
    Welcome {
        user: UserId::parse("unknown").unwrap(),
        conn: uuid::Uuid::nil(),
        node: String::new(),
        heartbeat_ms: 0,
        epoch: uuid::Uuid::nil(),
        device: DeviceId::default_device(),
        seq: 0,
        exp: None,
    }
}

/// A client that completes the WebSocket upgrade as `user` on a raw socket
/// and then does nothing: it neither sends nor reads, so it never answers a
/// ping or a close. For idle timeouts and drains.
pub async fn silent_client(addr: std::net::SocketAddr, user: &str) -> TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {}\r\n\r\n",
        crate::token(user)
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp
}
