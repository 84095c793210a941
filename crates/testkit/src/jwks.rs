//! A JWKS endpoint on 127.0.0.1 whose document a test changes while nodes
//! fetch it: it serves the document, or fails, and counts every request so
//! a test can wait for the next fetch instead of sleeping.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::within;

/// What the server answers.
#[derive(Clone, Debug)]
enum Answer {
    Document(String),
    Fail(StatusCode),
    Hang,
}

/// The path it serves the document at (any path is answered the same).
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// A running JWKS server; stopped when dropped.
pub struct JwksServer {
    pub addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    requests: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Serves `document` on a free port.
    pub async fn start(document: &serde_json::Value) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(Answer::Document(document.to_string())));
        let (count, requests) = watch::channel(0usize);
        let count = Arc::new(count);
        let shared = answer.clone();
        let task = tokio::spawn(async move {
            // Dropped with this task, which aborts the connections' tasks too.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (answer, count) = (shared.clone(), count.clone());
                connections.spawn(async move {
                    let service = service_fn(move |_request| {
                        let answer = answer.lock().unwrap().clone();
                        // Counted once the answer is decided, so a test that
                        // saw the count go up knows what that request got.
                        count.send_modify(|n| *n += 1);
                        async move {
                            let response = match answer {
                                Answer::Document(text) => Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(text))),
                                Answer::Fail(status) => {
                                    Response::builder().status(status).body(Full::new(Bytes::new()))
                                }
                                Answer::Hang => std::future::pending().await,
                            };
                            Ok::<_, Infallible>(response.unwrap())
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Self { addr, answer, requests, task }
    }

    /// `http://127.0.0.1:PORT/.well-known/jwks.json`
    pub fn url(&self) -> String {
        format!("http://{}{JWKS_PATH}", self.addr)
    }

    /// Serves `document` from now on.
    pub fn serve(&self, document: &serde_json::Value) {
        *self.answer.lock().unwrap() = Answer::Document(document.to_string());
    }

    /// Answers every request with `status` and no document from now on.
    pub fn fail(&self, status: u16) {
        *self.answer.lock().unwrap() = Answer::Fail(StatusCode::from_u16(status).unwrap());
    }

    /// Takes every request from now on and never answers it.
    pub fn hang(&self) {
        *self.answer.lock().unwrap() = Answer::Hang;
    }

    /// How many requests it has answered (or taken, when it hangs).
    pub fn requests(&self) -> usize {
        *self.requests.borrow()
    }

    /// Waits until it has answered at least `n` requests.
    pub async fn wait_for_requests(&self, n: usize) {
        let mut requests = self.requests.clone();
        within(&format!("{n} JWKS requests"), requests.wait_for(|count| *count >= n)).await.unwrap();
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
