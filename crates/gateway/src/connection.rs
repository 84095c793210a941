//! One client connection, its whole life in one place: register, welcome,
//! the replay of what its device has not acked, then one loop over the
//! socket, the outbox, heartbeats, token expiry and drain, then a close
//! frame that says why, then cleanup.
//!
//! The connection keeps its device's cursor as far as it knows it: what it
//! writes and what its client acks move it, and every ack hands the
//! backend the whole cursor, so acks may be lost or merged on the way and
//! the device's cursor still only moves forward.
//!
//! The handler is written over any `Stream + Sink` of WebSocket messages,
//! so it runs the same over a socket or an in-memory pair.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use switchboard_presence::{Acked, Arrival, Connected, Connecting, Cursor, DeviceAck, Outgoing, Push, unix_micros};
use switchboard_protocol::{
    ClientFrame, ClientMsgId, Codec, DecodeError, DeviceId, Encoded, ErrorCode, MsgId, ServerFrame, UserId, Welcome,
};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use uuid::Uuid;

use crate::auth::Credentials;
use crate::hub::{self, Inbox, Outbox, Stop};
use crate::limits::{RateLimit, Verdict};
use crate::node::Node;

/// Frames written before one flush.
const WRITE_BATCH: usize = 64;
/// Delivered messages remembered for receipts until acked.
const UNACKED_CAP: usize = 4096;
/// A connection asks for a trim of what every device acked once its
/// device acked this many more messages (and a connecting device trims).
const TRIM_EVERY: u64 = 16;

/// Who is on the other end, settled by the upgrade.
pub struct Session {
    pub user: UserId,
    pub device: DeviceId,
    pub conn: Uuid,
    pub codec: Codec,
    /// Replay after this seq instead of after the device's cursor.
    pub since: Option<u64>,
    /// When the token expires (Unix seconds); a `refresh` moves it.
    pub exp: Option<u64>,
}

/// Why a connection ended; decides the close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed or the socket failed: nothing left to say.
    Gone,
    Idle,
    /// A frame that breaks the WebSocket protocol (say, a compressed frame
    /// where no compression was negotiated).
    Protocol,
    TooLarge,
    Abuse,
    SlowConsumer,
    Draining,
    /// The token expired.
    Expired,
    /// `POST /v1/disconnect` named it, or its user is blocked.
    Kicked,
    Internal,
}

impl End {
    /// The `reason` label of `switchboard_disconnects_total`.
    fn label(self) -> &'static str {
        match self {
            Self::Gone => "client",
            Self::Idle => "idle",
            Self::Protocol => "protocol",
            Self::TooLarge => "too_large",
            Self::Abuse => "abuse",
            Self::SlowConsumer => "slow_consumer",
            Self::Draining => "draining",
            Self::Expired => "token_expired",
            Self::Kicked => "disconnected",
            Self::Internal => "internal",
        }
    }

    fn close_frame(self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Self::Gone => return None,
            Self::Idle => (CloseCode::Normal, "idle timeout"),
            Self::Protocol => (CloseCode::Protocol, "protocol error"),
            Self::TooLarge => (CloseCode::Size, "frame too large"),
            Self::Abuse => (CloseCode::Policy, "rate limit exceeded"),
            Self::SlowConsumer => (CloseCode::Again, "slow consumer"),
            Self::Draining => (CloseCode::Restart, "node restarting"),
            Self::Expired => (CloseCode::from(4001), "token expired"),
            Self::Kicked => (CloseCode::from(4003), "disconnected"),
            Self::Internal => (CloseCode::Error, "internal error"),
        };
        Some(CloseFrame { code, reason: reason.into() })
    }
}

/// Serves one upgraded connection until it ends. The connection is built
/// here, outside the future, so the task holds it once.
pub fn run<S>(node: Arc<Node>, session: Session, ws: S) -> impl Future<Output = ()>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let (outbox, inbox) = hub::outbox(session.conn, session.device.clone(), node.config.send_queue_bytes);
    // Held once, by the future: `live` borrows it where a method taking
    // `self` would copy it into its own state beside the argument.
    let mut connection = Connection::new(node, session, ws, inbox);
    async move { connection.live(outbox).await }
}

struct Connection<S> {
    node: Arc<Node>,
    session: Session,
    ws: S,
    inbox: Inbox,
    limit: RateLimit,
    last_heard: Instant,
    /// The socket layer holds frames the peer has not taken yet.
    backlogged: bool,
    /// What the device has acked, as far as this connection knows.
    cursor: Cursor,
    /// The highest seq written here: a cumulative ack reaches no further.
    highest: u64,
    /// Where the cursor was when this connection last asked for a trim.
    trim_asked: u64,
    /// Written and not yet acked: for the ack and its receipt, and to skip
    /// a message that arrives twice (live and by replay).
    unacked: BTreeMap<MsgId, Acked>,
}

impl<S> Connection<S>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    fn new(node: Arc<Node>, session: Session, ws: S, inbox: Inbox) -> Self {
        let now = Instant::now();
        let limit = RateLimit::new(node.config.rate_limit, node.config.rate_limit_burst, now);
        Self {
            node,
            session,
            ws,
            inbox,
            limit,
            last_heard: now,
            backlogged: false,
            cursor: Cursor::default(),
            highest: 0,
            trim_asked: 0,
            unacked: BTreeMap::new(),
        }
    }

    /// The whole life: in the hub, served, closed with a reason, cleaned up.
    async fn live(&mut self, outbox: Outbox) {
        let Session { user, conn, .. } = &self.session;
        let first = self.node.hub.insert(user, outbox);
        self.node.metrics.connections.inc();
        self.node.metrics.connections_total.inc();
        tracing::debug!(%conn, %user, "open");

        let end = self.serve(first).await;
        // Out of the hub, and out of presence while the close handshake
        // runs, which may wait long on a peer that does not read: meanwhile
        // its messages go to its other connections or its inbox, not into a
        // dead queue.
        self.inbox.close();
        let (node, Session { user, conn, .. }) = (&self.node, &self.session);
        let last = node.hub.remove(user, *conn);
        let (_, left) = tokio::join!(close(&mut self.ws, node, end), node.backend.disconnect(user, *conn, last));
        if let Err(error) = left {
            node.metrics.redis_errors.inc();
            tracing::warn!(%conn, %user, %error, "presence entry left for the sweeper");
        }
        node.metrics.connections.dec();
        tracing::debug!(%conn, %user, ?end, "closed");
    }

    async fn serve(&mut self, first: bool) -> End {
        // Boxed while it runs: what opening needs is not kept for the life
        // of the connection.
        if let Err(end) = Box::pin(self.open(first)).await {
            return end;
        }
        self.until_end().await
    }

    /// Registers the connection, writes the welcome and the replay.
    async fn open(&mut self, first: bool) -> Result<(), End> {
        // Registered (in the hub, then in presence) before the log is read:
        // a message accepted meanwhile arrives live or in this replay. The
        // welcome follows, so a client that has it is reachable.
        let session = &self.session;
        let connecting = Connecting {
            user: session.user.clone(),
            device: session.device.clone(),
            conn: session.conn,
            since: session.since,
            first,
        };
        let timer = self.node.metrics.backend_connect.start_timer();
        let connected = self.node.backend.connect(&connecting).await;
        timer.observe_duration();
        let Connected { replay, epoch, seq, cursor, .. } = match connected {
            Ok(Connected { blocked: true, .. }) => return Err(End::Kicked),
            Ok(connected) => connected,
            Err(error) => {
                self.node.metrics.redis_errors.inc();
                tracing::warn!(conn = %self.session.conn, user = %self.session.user, %error, "cannot register");
                return Err(End::Internal);
            }
        };
        // Connecting trimmed what every device had acked.
        self.trim_asked = cursor.up_to;
        self.cursor = cursor;
        let welcome = ServerFrame::Welcome(Welcome {
            user: self.session.user.clone(),
            conn: self.session.conn,
            node: self.node.backend.node_id().to_owned(),
            heartbeat_ms: u64::try_from(self.node.config.heartbeat.as_millis()).unwrap_or(u64::MAX),
            epoch,
            device: self.session.device.clone(),
            seq,
            exp: self.session.exp,
        });
        self.offer(&welcome)?;
        self.node.metrics.inbox_replayed.inc_by(replay.len() as u64);
        // What the backend chose: past the device's cursor, or past `since`
        // (acked or not).
        self.replay(replay, Skip::Written).await
    }

    /// Serves the open connection until something ends it.
    async fn until_end(&mut self) -> End {
        let heartbeat = self.node.config.heartbeat;
        let idle_after = self.node.config.idle_after();
        // One timer, due every quarter heartbeat, at the drain's close time
        // or at the token's expiry, checks for silence, sends the pings and
        // ends a draining or expired connection: no timer is armed per
        // frame. A refresh moves the expiry later, which the next turn of
        // the timer finds.
        let quarter = heartbeat / 4;
        let timer = sleep_until(earliest(Instant::now() + quarter, [self.session.exp.map(instant_of)]));
        let mut pinged = Instant::now();
        let mut close_at: Option<Instant> = None;
        // The futures that outlive one turn of the loop are created once.
        let (drain, abort) = (self.node.drain.clone(), self.node.abort.clone());
        let (drain, abort) = (drain.cancelled(), abort.cancelled());
        tokio::pin!(drain, abort, timer);

        loop {
            // Not biased: a busy outbox must not starve the socket's reads,
            // nor a busy client the outbox.
            let step = tokio::select! {
                () = &mut abort => Err(End::Draining),
                () = &mut drain, if close_at.is_none() => {
                    let at = Instant::now() + self.node.drain_delay();
                    close_at = Some(at);
                    let due = timer.deadline().min(at);
                    timer.as_mut().reset(due);
                    Ok(())
                }
                () = &mut timer => {
                    let now = Instant::now();
                    timer.as_mut().reset(earliest(now + quarter, [close_at, self.session.exp.map(instant_of)]));
                    if close_at.is_some_and(|at| now >= at) {
                        Err(End::Draining)
                    } else if self.session.exp.is_some_and(expired) {
                        Err(End::Expired)
                    } else if now >= self.last_heard + idle_after {
                        Err(End::Idle)
                    } else if now >= pinged + heartbeat && !self.backlogged {
                        pinged = now;
                        self.send(Message::Ping(Bytes::new()))
                    } else {
                        Ok(())
                    }
                }
                next = self.inbox.recv(), if !self.backlogged => match next {
                    Ok(push) => match self.write_pushes(push) {
                        Ok(Repair::Due) => Box::pin(self.repair()).await,
                        Ok(Repair::NotDue) => Ok(()),
                        Err(end) => Err(end),
                    },
                    Err(stop) => Err(End::from(stop)),
                },
                stop = self.inbox.stopped(), if self.backlogged => Err(End::from(stop)),
                event = socket(&mut self.ws, self.backlogged) => match event {
                    Socket::Drained(Ok(())) => {
                        self.backlogged = false;
                        Ok(())
                    }
                    Socket::Drained(Err(_)) => Err(End::Gone),
                    // Boxed while it runs: the connection's idle state stays
                    // small instead of reserving room for its largest await.
                    Socket::Read(incoming) => Box::pin(self.receive(incoming)).await,
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Writes `first` and whatever else is already queued, while the socket
    /// takes it, then flushes once. Whether a repair was asked for.
    fn write_pushes(&mut self, first: Push) -> Result<Repair, End> {
        let mut repair = Repair::NotDue;
        let mut next = Some(first);
        let mut written = 0;
        while let Some(push) = next {
            match push {
                Push::Message(arrival) => {
                    if self.write_arrival(&arrival, Skip::Acked)? {
                        let routed = unix_micros().saturating_sub(arrival.letter.received_us);
                        self.node.metrics.route_seconds.observe(Duration::from_micros(routed).as_secs_f64());
                    }
                }
                Push::Receipt(receipt) => self.offer(&ServerFrame::Receipt(receipt))?,
                Push::Repair => repair = Repair::Due,
            }
            written += 1;
            next = if written < WRITE_BATCH && !self.backlogged { self.inbox.try_recv() } else { None };
        }
        self.flush()?;
        Ok(repair)
    }

    /// Writes one message unless this connection wrote it already or (when
    /// `unless_acked`) its device acked it; whether it was written.
    fn write_arrival(&mut self, arrival: &Arrival, unless_acked: Skip) -> Result<bool, End> {
        let Arrival { letter, to, seq } = arrival;
        let acked = unless_acked == Skip::Acked && seq.is_some_and(|seq| self.cursor.contains(seq));
        if acked || self.unacked.contains_key(&letter.msg) {
            return Ok(false);
        }
        // Remembered until acked, when there is anything to ack: a seq to
        // move the cursor, a sender waiting for a receipt.
        if seq.is_some() || letter.reply.is_some() {
            let acked = Acked { msg: letter.msg, seq: *seq, from: letter.from.clone(), reply: letter.reply.clone() };
            self.unacked.insert(letter.msg, acked);
            if self.unacked.len() > UNACKED_CAP {
                self.unacked.pop_first();
            }
        }
        self.highest = self.highest.max(seq.unwrap_or(0));
        self.send_encoded(self.session.codec.encode_message(letter, to, *seq))?;
        self.node.metrics.messages_out_delivered.inc();
        Ok(true)
    }

    /// Writes log entries oldest first, waiting for the socket between
    /// messages rather than queueing them all.
    async fn replay(&mut self, arrivals: Vec<Arrival>, skip: Skip) -> Result<(), End> {
        for arrival in &arrivals {
            self.drained().await?;
            self.write_arrival(arrival, skip)?;
        }
        self.flush()
    }

    /// Envelopes for this node may have been lost: reads the user's log
    /// past the device's cursor again and writes what this connection has
    /// not written yet.
    async fn repair(&mut self) -> Result<(), End> {
        match self.node.backend.read_log(&self.session.user, self.cursor.up_to).await {
            Ok(arrivals) => self.replay(arrivals, Skip::Acked).await,
            Err(error) => {
                self.node.metrics.redis_errors.inc();
                tracing::warn!(conn = %self.session.conn, user = %self.session.user, %error, "log not read for a repair");
                Ok(())
            }
        }
    }

    async fn receive(&mut self, incoming: Option<Result<Message, WsError>>) -> Result<(), End> {
        let message = match incoming {
            None => return Err(End::Gone),
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                return Err(End::TooLarge);
            }
            // A peer that went away without a close frame is gone, not wrong.
            Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => return Err(End::Gone),
            Some(Err(WsError::Protocol(error))) => {
                tracing::debug!(conn = %self.session.conn, %error, "protocol error");
                return Err(End::Protocol);
            }
            Some(Err(error)) => {
                tracing::debug!(conn = %self.session.conn, %error, "socket error");
                return Err(End::Gone);
            }
            Some(Ok(message)) => message,
        };
        self.last_heard = Instant::now();
        let decoded = match &message {
            Message::Text(text) => Codec::Json.decode(text.as_bytes()),
            Message::Binary(bytes) => Codec::MsgPack.decode(bytes),
            // Pings are answered by the WebSocket layer; a close is answered
            // there too, and the next read ends the stream.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {
                return Ok(());
            }
        };
        // Acks are as many as the messages this node delivered; every other
        // frame, malformed ones too, counts against the rate limit.
        match decoded {
            Ok(ClientFrame::Ack { msg }) => return self.ack(msg),
            Ok(ClientFrame::AckUpTo { seq }) => return self.ack_up_to(seq),
            _ => {}
        }
        match (self.limit.check(Instant::now()), decoded) {
            (Verdict::Abuse, _) => Err(End::Abuse),
            (Verdict::Allow, Ok(frame)) => self.handle(frame).await,
            (Verdict::Limited, frame) => {
                let id = match frame {
                    Ok(ClientFrame::Send { id, .. }) | Err(DecodeError { id: Some(id), .. }) => Some(id),
                    _ => None,
                };
                if id.is_some() {
                    self.node.metrics.messages_in_rejected.inc();
                }
                self.error(id, ErrorCode::RateLimited, "over the rate limit: slow down")
            }
            (Verdict::Allow, Err(DecodeError { code, id, message })) => {
                if id.is_some() {
                    self.node.metrics.messages_in_rejected.inc();
                }
                self.error(id, code, &message)
            }
        }
    }

    async fn handle(&mut self, frame: ClientFrame) -> Result<(), End> {
        match frame {
            ClientFrame::Send { id, to, body, ephemeral } => {
                let most = self.node.config.max_recipients;
                if to.users().len() > most {
                    self.node.metrics.messages_in_rejected.inc();
                    return self.error(Some(id), ErrorCode::TooLarge, &format!("at most {most} recipients per send"));
                }
                let list = to.is_list();
                let outgoing = Outgoing {
                    from: self.session.user.clone(),
                    id: Some(id.clone()),
                    receipt: true,
                    to,
                    body,
                    ephemeral,
                    received_us: unix_micros(),
                };
                match self.node.send(outgoing).await {
                    Ok(accepted) => {
                        let recipients = list.then(|| accepted.recipients.into_iter().collect());
                        self.write(&ServerFrame::Accepted {
                            id,
                            msg: accepted.msg,
                            status: accepted.status,
                            recipients,
                        })
                    }
                    Err(_) => {
                        let message = "not accepted: backend unavailable; resend with the same id";
                        self.error(Some(id), ErrorCode::Internal, message)
                    }
                }
            }
            ClientFrame::Presence { users } => match self.node.online(&users).await {
                Ok(counts) => {
                    let online = users.into_iter().zip(counts).map(|(user, n)| (user, n > 0)).collect();
                    self.write(&ServerFrame::Presence { online })
                }
                Err(_) => self.error(None, ErrorCode::Internal, "presence unavailable"),
            },
            ClientFrame::Ping => self.write(&ServerFrame::Pong),
            ClientFrame::Refresh { token } => self.refresh(&token).await,
            ClientFrame::Ack { msg } => self.ack(msg),
            ClientFrame::AckUpTo { seq } => self.ack_up_to(seq),
        }
    }

    /// Takes a new token for this connection: it must be valid, for the
    /// same user (and device, when it names one), and expire later than
    /// the one it replaces. A refused one changes nothing: the connection
    /// still closes at the old expiry.
    async fn refresh(&mut self, token: &str) -> Result<(), End> {
        let credentials = Credentials { bearer: Some(token), ..Credentials::default() };
        let refused = match self.node.auth.authenticate(&credentials).await {
            Err(error) => error.to_string(),
            Ok(identity) if identity.user != self.session.user => "the token is for another user".to_owned(),
            Ok(identity) if identity.device.as_ref().is_some_and(|device| *device != self.session.device) => {
                "the token is for another device".to_owned()
            }
            Ok(identity) => match (identity.exp, self.session.exp) {
                (Some(exp), Some(old)) if exp > old => {
                    self.session.exp = Some(exp);
                    return self.write(&ServerFrame::Refreshed { exp });
                }
                (Some(_), Some(_)) => "the token does not expire later than the current one".to_owned(),
                // Development auth: nothing expires, nothing to refresh.
                _ => "this connection's identity has no token to refresh".to_owned(),
            },
        };
        self.error(None, ErrorCode::BadToken, &format!("refresh refused: {refused}"))
    }

    /// One message acked by id; an id this connection did not write (or
    /// no longer remembers) acks nothing.
    fn ack(&mut self, msg: MsgId) -> Result<(), End> {
        let Some(acked) = self.unacked.remove(&msg) else { return Ok(()) };
        if let Some(seq) = acked.seq {
            self.cursor.ack(seq);
        }
        self.hand_acks(vec![acked]);
        Ok(())
    }

    /// Every message of the log up to `seq` acked, as far as this
    /// connection wrote them.
    fn ack_up_to(&mut self, seq: u64) -> Result<(), End> {
        let seq = seq.min(self.highest);
        let before = self.cursor.clone();
        self.cursor.ack_up_to(seq);
        let mut acked = Vec::new();
        self.unacked.retain(|_, message| match message.seq {
            Some(s) if s <= seq => {
                acked.push(message.clone());
                false
            }
            _ => true,
        });
        if self.cursor != before || !acked.is_empty() {
            self.hand_acks(acked);
        }
        Ok(())
    }

    fn hand_acks(&mut self, acked: Vec<Acked>) {
        let trim = self.cursor.up_to >= self.trim_asked + TRIM_EVERY;
        if trim {
            self.trim_asked = self.cursor.up_to;
        }
        let Session { user, device, .. } = &self.session;
        let ack = DeviceAck { user: user.clone(), device: device.clone(), cursor: self.cursor.clone(), acked, trim };
        self.node.backend.ack(ack);
    }

    fn error(&mut self, id: Option<ClientMsgId>, code: ErrorCode, message: &str) -> Result<(), End> {
        self.node.metrics.client_errors.with_label_values(&[code.as_str()]).inc();
        self.write(&ServerFrame::Error { id, code, message: message.to_owned() })
    }

    fn write(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.offer(frame)?;
        self.flush()
    }

    /// Hands `frame` to the socket layer without waiting on the peer: the
    /// layer buffers it, or writes it when its buffer is full. When the
    /// peer is not taking what is written, the connection is backlogged:
    /// it writes and reads nothing more until the layer has drained.
    fn offer(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.send_encoded(self.session.codec.encode(frame))
    }

    fn send_encoded(&mut self, encoded: Encoded) -> Result<(), End> {
        let message = match encoded {
            Encoded::Text(text) => Message::text(text),
            Encoded::Binary(bytes) => Message::binary(bytes),
        };
        self.send_now(message)
    }

    fn send_now(&mut self, message: Message) -> Result<(), End> {
        Pin::new(&mut self.ws).start_send(message).map_err(|_| End::Gone)?;
        // Polled without a waker: a full socket only sets the flag here,
        // and the loop's socket arm waits for it to drain.
        let mut cx = Context::from_waker(Waker::noop());
        if Pin::new(&mut self.ws).poll_ready(&mut cx).is_pending() {
            self.backlogged = true;
        }
        Ok(())
    }

    /// Writes out what the socket layer buffers, as far as the socket takes it.
    fn flush(&mut self) -> Result<(), End> {
        if self.backlogged {
            return Ok(());
        }
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut self.ws).poll_flush(&mut cx) {
            Poll::Ready(Ok(())) => Ok(()),
            Poll::Ready(Err(_)) => Err(End::Gone),
            Poll::Pending => {
                self.backlogged = true;
                Ok(())
            }
        }
    }

    fn send(&mut self, message: Message) -> Result<(), End> {
        self.send_now(message)?;
        self.flush()
    }

    /// Waits until the socket layer has drained, for a writer that must not
    /// queue more meanwhile (the replay).
    async fn drained(&mut self) -> Result<(), End> {
        if !self.backlogged {
            return Ok(());
        }
        let abort = self.node.abort.clone();
        tokio::select! {
            () = abort.cancelled() => Err(End::Draining),
            stop = self.inbox.stopped() => Err(End::from(stop)),
            drained = socket(&mut self.ws, true) => match drained {
                Socket::Drained(Ok(())) => {
                    self.backlogged = false;
                    Ok(())
                }
                _ => Err(End::Gone),
            },
        }
    }
}

/// Says why the connection ends, then reads until the client answers
/// the close, so that frames it still had in flight do not turn the
/// close into a reset that could swallow the close frame.
///
/// The close frame goes out after whatever the socket layer holds
/// already (nothing more from the outbox, which is closed by now). A peer
/// that does not read (a slow consumer, most of all) is given as long as
/// the idle timeout gives a silent one, or until the drain deadline, to
/// take it: a client that hears 1013 backs off, where a reset would make
/// it reconnect at once.
async fn close<S>(ws: &mut S, node: &Node, end: End)
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    node.metrics.disconnects.with_label_values(&[end.label()]).inc();
    if end == End::SlowConsumer {
        node.metrics.slow_consumer_disconnects.inc();
    }
    let Some(frame) = end.close_frame() else {
        return;
    };
    // Tried first, so that past the drain deadline it still gets one try
    // that waits for nothing.
    let abort = node.abort.clone();
    let sent = tokio::select! {
        biased;
        sent = timeout(node.config.idle_after(), ws.send(Message::Close(Some(frame)))) => {
            matches!(sent, Ok(Ok(())))
        }
        () = abort.cancelled() => false,
    };
    if sent {
        let _ = timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = ws.next().await {} }).await;
    }
}

impl From<Stop> for End {
    fn from(stop: Stop) -> Self {
        match stop {
            Stop::Overflowed => Self::SlowConsumer,
            Stop::Kicked => Self::Kicked,
        }
    }
}

/// The earliest of `first` and the deadlines that are set.
fn earliest<const N: usize>(first: Instant, others: [Option<Instant>; N]) -> Instant {
    others.into_iter().flatten().fold(first, Instant::min)
}

/// Whether the Unix time `unix_s` (seconds) has passed.
fn expired(unix_s: u64) -> bool {
    unix_micros() >= unix_s.saturating_mul(1_000_000)
}

/// A Unix time in seconds as an instant on this process's clock.
fn instant_of(unix_s: u64) -> Instant {
    let left = Duration::from_secs(unix_s).saturating_sub(Duration::from_micros(unix_micros()));
    Instant::now() + left
}

/// Which messages a connection does not write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// Those it wrote already.
    Written,
    /// Those it wrote already and those its device acked.
    Acked,
}

/// Whether a connection must read its log again.
enum Repair {
    Due,
    NotDue,
}

/// What the socket has for a connection.
enum Socket {
    /// A frame, the end of the stream, or a failure.
    Read(Option<Result<Message, WsError>>),
    /// The backlog was written out, or writing failed.
    Drained(Result<(), WsError>),
}

/// The next thing the socket has: while backlogged, the backlog written out
/// (a connection whose peer does not take what it is sent reads nothing
/// more from it meanwhile); otherwise the next frame.
fn socket<S>(ws: &mut S, backlogged: bool) -> impl Future<Output = Socket> + '_
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    std::future::poll_fn(move |cx| {
        if backlogged {
            Pin::new(&mut *ws).poll_flush(cx).map(Socket::Drained)
        } else {
            Pin::new(&mut *ws).poll_next(cx).map(Socket::Read)
        }
    })
}
