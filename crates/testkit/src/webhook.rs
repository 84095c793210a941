//! A webhook receiver on 127.0.0.1: it checks the signature of every
//! request, records what it accepted, and can be told to fail (500) for a
//! while or to never answer, as an application backend that is down or
//! hangs. Tests wait on its record instead of sleeping.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::within;

/// The secret test nodes sign their events with.
pub const WEBHOOK_SECRET: &str = "switchboard-webhook-secret";

#[derive(Clone, Copy, Debug)]
enum Answer {
    Ok,
    /// 500 until then.
    FailUntil(Instant),
    Hang,
}

#[derive(Default)]
struct Record {
    /// Events answered 200, in arrival order.
    accepted: Vec<serde_json::Value>,
    /// Every request, answered or not.
    requests: usize,
    /// Requests whose signature was missing or wrong (answered 401).
    forged: usize,
}

/// A running receiver; stopped when dropped.
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    record: Arc<Mutex<Record>>,
    changed: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(Answer::Ok));
        let record = Arc::new(Mutex::new(Record::default()));
        let (tick, changed) = watch::channel(0usize);
        let tick = Arc::new(tick);
        let (shared_answer, shared_record) = (answer.clone(), record.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (answer, record, tick) = (shared_answer.clone(), shared_record.clone(), tick.clone());
                connections.spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (answer, record, tick) = (answer.clone(), record.clone(), tick.clone());
                        async move {
                            let status = receive(request, &answer, &record).await;
                            tick.send_modify(|n| *n += 1);
                            let Some(status) = status else { return std::future::pending().await };
                            Ok::<_, Infallible>(
                                Response::builder().status(status).body(Full::new(Bytes::new())).unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Self { addr, answer, record, changed, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    /// The node flags that send events here.
    pub fn args(&self) -> Vec<String> {
        ["--webhook-url".to_owned(), self.url(), "--webhook-secret".to_owned(), WEBHOOK_SECRET.to_owned()].to_vec()
    }

    /// Answers 500 for `how_long` from now, then 200 again.
    pub fn fail_for(&self, how_long: Duration) {
        *self.answer.lock().unwrap() = Answer::FailUntil(Instant::now() + how_long);
    }

    /// Answers 500 until told otherwise.
    pub fn fail(&self) {
        self.fail_for(Duration::from_secs(86_400));
    }

    /// Takes every request from now on and never answers it.
    pub fn hang(&self) {
        *self.answer.lock().unwrap() = Answer::Hang;
    }

    /// Answers 200 from now on.
    pub fn succeed(&self) {
        *self.answer.lock().unwrap() = Answer::Ok;
    }

    /// The events answered 200 so far, in arrival order.
    pub fn accepted(&self) -> Vec<serde_json::Value> {
        self.record.lock().unwrap().accepted.clone()
    }

    /// Every request so far, answered or not.
    pub fn requests(&self) -> usize {
        self.record.lock().unwrap().requests
    }

    /// Requests with a missing or wrong signature.
    pub fn forged(&self) -> usize {
        self.record.lock().unwrap().forged
    }

    /// Waits until `condition` holds for the accepted events, and returns
    /// them.
    pub async fn wait_for(
        &self,
        what: &str,
        condition: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let mut changed = self.changed.clone();
        within(what, async {
            loop {
                let accepted = self.accepted();
                if condition(&accepted) {
                    return accepted;
                }
                let _ = changed.changed().await;
            }
        })
        .await
    }

    /// Waits until at least `n` requests came, answered or not.
    pub async fn wait_for_requests(&self, n: usize) {
        let mut changed = self.changed.clone();
        within(&format!("{n} webhook requests"), async {
            while self.requests() < n {
                let _ = changed.changed().await;
            }
        })
        .await;
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request and decides its answer; none: never answer.
async fn receive(
    request: Request<hyper::body::Incoming>,
    answer: &Mutex<Answer>,
    record: &Mutex<Record>,
) -> Option<StatusCode> {
    let signature = request
        .headers()
        .get("x-switchboard-signature")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_default();
    let body = request.into_body().collect().await.map(|body| body.to_bytes()).unwrap_or_default();
    let answer = *answer.lock().unwrap();
    let mut record = record.lock().unwrap();
    record.requests += 1;
    if signature != sign(&body) {
        record.forged += 1;
        return Some(StatusCode::UNAUTHORIZED);
    }
    match answer {
        Answer::Hang => None,
        Answer::FailUntil(until) if Instant::now() < until => Some(StatusCode::INTERNAL_SERVER_ERROR),
        Answer::Ok | Answer::FailUntil(_) => match serde_json::from_slice(&body) {
            Ok(event) => {
                record.accepted.push(event);
                Some(StatusCode::OK)
            }
            Err(_) => Some(StatusCode::BAD_REQUEST),
        },
    }
}

/// `sha256=<hex HMAC-SHA256>` of `body` with [`WEBHOOK_SECRET`].
fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256={hex}")
}
