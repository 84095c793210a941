//! A TCP proxy that stands on the link between a node and Redis and breaks
//! it on command, while connections are open: it slows the link down, turns
//! it into a blackhole, cuts it, or refuses new connections. Chaos tests put
//! one in front of Redis for each node, so that one node's link can fail
//! while the others keep working.
//!
//! What each fault does to the bytes:
//!
//! - latency: every chunk waits `latency` in each direction (a round trip
//!   grows by twice that), and chunks keep their order;
//! - blackhole: chunks vanish in both directions, as packets do in a network
//!   partition, and the connections stay open. Lost bytes leave a hole in
//!   the stream that TCP would never leave, so a connection that lost any
//!   forwards nothing more, and the heal cuts it: the partition outlived
//!   TCP. A connection that carried nothing during the blackhole lost
//!   nothing and survives the heal;
//! - cut: every open connection is closed at once; new ones are forwarded;
//! - refuse: new connections are accepted and closed at once; open ones
//!   carry on.
//!
//! Memory is bounded: each direction of a connection holds at most
//! [`CHUNKS_IN_FLIGHT`] chunks of at most [`CHUNK_BYTES`]; past that it
//! stops reading, and TCP pushes back on the sender. Every task belongs to
//! the proxy and ends when it is dropped, closing every connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

/// The most bytes one read takes off a socket.
const CHUNK_BYTES: usize = 16 * 1024;

/// Chunks read but not yet written, per direction of a connection.
const CHUNKS_IN_FLIGHT: usize = 16;

/// A proxy on a free 127.0.0.1 port, forwarding to one target address.
pub struct ChaosProxy {
    addr: SocketAddr,
    faults: Arc<Faults>,
    /// The accept loop, which owns the connection tasks: aborted on drop.
    _accept: JoinSet<()>,
}

/// What the proxy is told to do, read by every connection on every chunk.
#[derive(Default)]
struct Faults {
    latency_us: AtomicU64,
    blackholed: AtomicBool,
    refusing: AtomicBool,
    /// Open connections by a number of their own.
    links: Mutex<HashMap<u64, Link>>,
}

/// One open connection, as the controls see it.
struct Link {
    task: AbortHandle,
    /// Set once any byte of this connection vanished.
    lost: Arc<AtomicBool>,
}

impl ChaosProxy {
    /// Listens on a free port and forwards every connection to `target`,
    /// with no fault.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy to a free port");
        let addr = listener.local_addr().expect("the proxy's address");
        let faults = Arc::new(Faults::default());
        let mut accept = JoinSet::new();
        accept.spawn(accept_loop(listener, target, faults.clone()));
        Self { addr, faults, _accept: accept }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://ADDR`, for a proxy in front of Redis.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Delays every chunk read from now on by `latency`, in each direction;
    /// zero ends the delay. Chunks already waiting keep their time.
    pub fn set_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.faults.latency_us.store(micros, Ordering::SeqCst);
    }

    /// `true`: chunks vanish from now on, connections stay open. `false`:
    /// heals, and cuts every connection that lost bytes.
    pub fn blackhole(&self, on: bool) {
        self.faults.blackholed.store(on, Ordering::SeqCst);
        if !on {
            self.faults.links().retain(|_, link| {
                let lost = link.lost.load(Ordering::SeqCst);
                if lost {
                    link.task.abort();
                }
                !lost
            });
        }
    }

    /// Closes every open connection at once.
    pub fn cut(&self) {
        for (_, link) in self.faults.links().drain() {
            link.task.abort();
        }
    }

    /// `true`: new connections are closed as soon as they are accepted.
    pub fn refuse(&self, on: bool) {
        self.faults.refusing.store(on, Ordering::SeqCst);
    }

    /// How many connections are open through the proxy.
    pub fn open_connections(&self) -> usize {
        self.faults.links().len()
    }
}

impl Faults {
    fn links(&self) -> MutexGuard<'_, HashMap<u64, Link>> {
        self.links.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::SeqCst))
    }

    /// What happens to a chunk of the link whose flag is `lost`; marks the
    /// link when the chunk vanishes.
    fn fate(&self, lost: &AtomicBool) -> Fate {
        if self.blackholed.load(Ordering::SeqCst) {
            lost.store(true, Ordering::SeqCst);
            Fate::Vanishes
        } else if lost.load(Ordering::SeqCst) {
            Fate::Cut
        } else {
            Fate::Passes
        }
    }
}

enum Fate {
    Passes,
    Vanishes,
    /// The link lost bytes in a blackhole that has healed since: the heal
    /// cuts such links, and this catches one that lost its first bytes
    /// while the heal was under way.
    Cut,
}

fn cut_after_blackhole() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "the link lost bytes in a blackhole")
}

/// Accepts connections and runs one task for each, until dropped; the
/// tasks end with it.
async fn accept_loop(listener: TcpListener, target: SocketAddr, faults: Arc<Faults>) {
    let mut connections = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        let Ok((client, _)) = accepted else {
            // Out of file descriptors, or a connection reset while queued:
            // the listener itself is fine.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if faults.refusing.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        next_id += 1;
        let id = next_id;
        let lost = Arc::new(AtomicBool::new(false));
        // The entry goes in before the task can run its end, which removes it.
        let mut links = faults.links();
        let task = connections.spawn(forward(id, client, target, faults.clone(), lost.clone()));
        links.insert(id, Link { task, lost });
    }
}

/// Removes a connection from the open ones when its task ends or is aborted.
struct Unlisted {
    id: u64,
    faults: Arc<Faults>,
}

impl Drop for Unlisted {
    fn drop(&mut self) {
        self.faults.links().remove(&self.id);
    }
}

/// One connection's life: dials the target, then forwards both ways until
/// either side closes or fails.
async fn forward(id: u64, client: TcpStream, target: SocketAddr, faults: Arc<Faults>, lost: Arc<AtomicBool>) {
    let _unlisted = Unlisted { id, faults: faults.clone() };
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    // Redis traffic is small requests and replies: Nagle would add its own delay.
    let (Ok(()), Ok(())) = (client.set_nodelay(true), server.set_nodelay(true)) else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let _ = tokio::try_join!(
        pump(client_read, server_write, &faults, &lost),
        pump(server_read, client_write, &faults, &lost),
    );
}

/// One direction: reads chunks, stamps each with the time it may leave, and
/// writes them in order at that time, unless they vanish. An end of stream
/// is passed on after the last chunk.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    faults: &Faults,
    lost: &AtomicBool,
) -> std::io::Result<()> {
    let (queue, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let read = async move {
        let mut buf = vec![0; CHUNK_BYTES];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            match faults.fate(lost) {
                Fate::Passes => {}
                Fate::Vanishes => continue,
                Fate::Cut => return Err(cut_after_blackhole()),
            }
            if queue.send((Instant::now() + faults.latency(), buf[..n].to_vec())).await.is_err() {
                return Ok(());
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            match faults.fate(lost) {
                Fate::Passes => to.write_all(&chunk).await?,
                Fate::Vanishes => {}
                Fate::Cut => return Err(cut_after_blackhole()),
            }
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server that also counts the bytes it received.
    struct Echo {
        addr: SocketAddr,
        received: Arc<AtomicU64>,
        _tasks: JoinSet<()>,
    }

    impl Echo {
        async fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let received = Arc::new(AtomicU64::new(0));
            let mut tasks = JoinSet::new();
            let counter = received.clone();
            tasks.spawn(async move {
                let mut echoes = JoinSet::new();
                loop {
                    let (mut socket, _) = tokio::select! {
                        accepted = listener.accept() => accepted.unwrap(),
                        Some(_) = echoes.join_next() => continue,
                    };
                    let counter = counter.clone();
                    echoes.spawn(async move {
                        let mut buf = vec![0; 4096];
                        while let Ok(n @ 1..) = socket.read(&mut buf).await {
                            counter.fetch_add(n as u64, Ordering::SeqCst);
                            if socket.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
            Self { addr, received, _tasks: tasks }
        }
    }

    async fn proxied() -> (Echo, ChaosProxy) {
        let echo = Echo::start().await;
        let proxy = ChaosProxy::start(echo.addr).await;
        (echo, proxy)
    }

    async fn connect(proxy: &ChaosProxy) -> TcpStream {
        let stream = TcpStream::connect(proxy.addr()).await.unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }

    /// Writes `data` and reads back as many bytes.
    async fn round_trip(stream: &mut TcpStream, data: &[u8]) -> Vec<u8> {
        stream.write_all(data).await.unwrap();
        let mut back = vec![0; data.len()];
        crate::within("the echo", stream.read_exact(&mut back)).await.unwrap();
        back
    }

    /// Reads until the proxy closes the connection; whatever arrived first.
    async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
        let mut rest = Vec::new();
        // A reset counts as closed, as an end of stream does.
        let _ = crate::within("the proxy to close the connection", stream.read_to_end(&mut rest)).await;
        rest
    }

    async fn until_open_connections(proxy: &ChaosProxy, count: usize) {
        crate::eventually(&format!("{count} open connections"), || async { proxy.open_connections() == count }).await;
    }

    #[tokio::test]
    async fn forwards_both_ways_byte_for_byte() {
        let (echo, proxy) = proxied().await;
        let mut stream = connect(&proxy).await;
        // Well past the buffers of both directions, so back pressure is at work.
        let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let (mut read, mut write) = stream.split();
        let sent = async {
            write.write_all(&data).await.unwrap();
        };
        let mut back = vec![0; data.len()];
        let received = async { crate::within("4 MiB back", read.read_exact(&mut back)).await.unwrap() };
        tokio::join!(sent, received);
        assert!(back == data, "the echo came back intact");
        assert_eq!(echo.received.load(Ordering::SeqCst), data.len() as u64);
        assert_eq!(proxy.open_connections(), 1);
        drop(stream);
        until_open_connections(&proxy, 0).await;
    }

    #[tokio::test]
    async fn latency_delays_each_direction_in_order_on_open_connections() {
        let (_echo, proxy) = proxied().await;
        let mut stream = connect(&proxy).await;
        assert_eq!(round_trip(&mut stream, b"before").await, b"before");

        let latency = Duration::from_millis(150);
        proxy.set_latency(latency);
        let started = Instant::now();
        for piece in [&b"one "[..], b"two ", b"three"] {
            stream.write_all(piece).await.unwrap();
        }
        let mut back = [0u8; 13];
        crate::within("the echo", stream.read_exact(&mut back)).await.unwrap();
        assert_eq!(&back, b"one two three");
        let took = started.elapsed();
        assert!(took >= 2 * latency, "a round trip took {took:?}, under twice {latency:?}");

        proxy.set_latency(Duration::ZERO);
        assert_eq!(round_trip(&mut stream, b"after").await, b"after");
    }

    #[tokio::test]
    async fn a_blackhole_swallows_bytes_then_the_heal_cuts_what_lost_any() {
        let (echo, proxy) = proxied().await;
        let mut talking = connect(&proxy).await;
        let mut idle = connect(&proxy).await;
        assert_eq!(round_trip(&mut talking, b"hello").await, b"hello");
        assert_eq!(round_trip(&mut idle, b"hi").await, b"hi");
        until_open_connections(&proxy, 2).await;

        proxy.blackhole(true);
        talking.write_all(b"into the void").await.unwrap();
        let mut during = connect(&proxy).await;
        during.write_all(b"also lost").await.unwrap();
        until_open_connections(&proxy, 3).await;
        // Nothing reaches the server: what it got is what it got before.
        let mut nothing = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(300), talking.read(&mut nothing)).await;
        assert!(read.is_err(), "the blackhole let something through: {read:?}");
        assert_eq!(echo.received.load(Ordering::SeqCst), 7);

        proxy.blackhole(false);
        assert_eq!(until_closed(&mut talking).await, b"");
        assert_eq!(until_closed(&mut during).await, b"");
        until_open_connections(&proxy, 1).await;
        assert_eq!(echo.received.load(Ordering::SeqCst), 7, "lost bytes stay lost");
        // The connection that carried nothing meanwhile is whole.
        assert_eq!(round_trip(&mut idle, b"still here").await, b"still here");
        let mut fresh = connect(&proxy).await;
        assert_eq!(round_trip(&mut fresh, b"new").await, b"new");
    }

    #[tokio::test]
    async fn a_cut_closes_every_open_connection_and_new_ones_work() {
        let (_echo, proxy) = proxied().await;
        let mut first = connect(&proxy).await;
        let mut second = connect(&proxy).await;
        assert_eq!(round_trip(&mut first, b"1").await, b"1");
        assert_eq!(round_trip(&mut second, b"2").await, b"2");

        proxy.cut();
        assert_eq!(proxy.open_connections(), 0);
        assert_eq!(until_closed(&mut first).await, b"");
        assert_eq!(until_closed(&mut second).await, b"");
        let mut third = connect(&proxy).await;
        assert_eq!(round_trip(&mut third, b"3").await, b"3");
        assert_eq!(proxy.open_connections(), 1);
    }

    #[tokio::test]
    async fn refusing_closes_new_connections_and_keeps_open_ones() {
        let (echo, proxy) = proxied().await;
        let mut open = connect(&proxy).await;
        assert_eq!(round_trip(&mut open, b"a").await, b"a");

        proxy.refuse(true);
        let mut refused = connect(&proxy).await;
        // The write may land before the close; it never reaches the server.
        let _ = refused.write_all(b"knock").await;
        assert_eq!(until_closed(&mut refused).await, b"");
        assert_eq!(round_trip(&mut open, b"b").await, b"b");
        assert_eq!(echo.received.load(Ordering::SeqCst), 2);
        assert_eq!(proxy.open_connections(), 1);

        proxy.refuse(false);
        let mut welcome = connect(&proxy).await;
        assert_eq!(round_trip(&mut welcome, b"c").await, b"c");
    }

    #[tokio::test]
    async fn a_dead_target_closes_the_connection() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let proxy = ChaosProxy::start(addr).await;
        let mut stream = connect(&proxy).await;
        assert_eq!(until_closed(&mut stream).await, b"");
        until_open_connections(&proxy, 0).await;
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_connections_and_port() {
        let (_echo, proxy) = proxied().await;
        let mut stream = connect(&proxy).await;
        assert_eq!(round_trip(&mut stream, b"x").await, b"x");
        let addr = proxy.addr();
        drop(proxy);
        assert_eq!(until_closed(&mut stream).await, b"");
        crate::eventually("the proxy port to close", || async { TcpStream::connect(addr).await.is_err() }).await;
    }
}
