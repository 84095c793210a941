//! Keys from a JWKS document (`--jwks-url`), kept fresh.
//!
//! The document is fetched at start and every `--jwks-refresh`, and at once
//! when a token names a `kid` the node does not know (the identity provider
//! rotated its keys), but never twice within [`COOLDOWN`]: made-up `kid`s
//! must not turn clients into a flood on the URL. While the URL fails, the
//! last good key set stays in use; until the first good fetch the node is not
//! ready, since it could refuse every client.
//!
//! A fetch is one HTTP/1.1 request on a connection of its own, driven in the
//! task that asked for it: nothing outlives a fetch, and dropping it (a
//! timeout, the shutdown) ends its connection.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::keys::{self, PublicKey};

/// At most one fetch starts within this long, whatever asks for it.
pub const COOLDOWN: Duration = Duration::from_secs(3);
/// A fetch that takes longer fails.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Larger documents are refused; real ones hold a few keys.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// After a failed fetch, the next is tried this soon, then twice as late
/// each time up to [`RETRY_MAX`] (or `--jwks-refresh`, if shorter).
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error and its causes, on one line.
fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("no root certificates for https (install CA certificates or set SSL_CERT_FILE): {0}")]
    Roots(std::io::Error),
    /// With the causes, which the connector's errors keep to themselves.
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("cannot read the document: {0}")]
    Body(BoxError),
    #[error("not a JWKS document: {0}")]
    Document(#[from] serde_json::Error),
    #[error("no usable key (RS256 with RSA, ES256 with EC P-256) among {0}")]
    NoKeys(usize),
    #[error("no answer within {FETCH_TIMEOUT:?}")]
    Timeout,
}

/// The key set of one JWKS URL.
pub struct Jwks {
    url: Uri,
    connector: HttpsConnector<HttpConnector>,
    /// `None` until the first good fetch.
    keys: RwLock<Option<Arc<[PublicKey]>>>,
    /// When the last fetch started; held while a fetch runs, so that
    /// callers who arrive meanwhile wait for its keys instead of fetching.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl Jwks {
    /// Ready to fetch from `url` (`http` or `https`, validated by the config).
    pub fn new(url: Uri) -> Result<Self, JwksError> {
        let connector =
            crate::outbound::connector(url.scheme() == Some(&http::uri::Scheme::HTTPS)).map_err(JwksError::Roots)?;
        Ok(Self { url, connector, keys: RwLock::new(None), last_fetch: tokio::sync::Mutex::new(None) })
    }

    /// The last good key set; empty before the first good fetch.
    pub fn keys(&self) -> Arc<[PublicKey]> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_else(|| Arc::new([]))
    }

    /// Whether a key set was ever fetched.
    pub fn is_ready(&self) -> bool {
        self.keys.read().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// Fetches the document now for a token whose `kid` no key has, unless
    /// a fetch started within [`COOLDOWN`]. Returns once the keys are as
    /// fresh as they will get: a caller that waited for another's fetch
    /// gets its keys.
    pub async fn refresh_for_unknown_kid(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < COOLDOWN) {
            return;
        }
        if let Err(error) = self.refresh(&mut last).await {
            tracing::warn!(url = %self.url, %error, "JWKS fetch for an unknown kid failed; keeping the last key set");
        }
    }

    /// Fetches at once, then every `every`, sooner after a failure, until
    /// `stop`.
    pub async fn run(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut retry = RETRY_MIN;
        loop {
            let fetched = async {
                let mut last = self.last_fetch.lock().await;
                self.refresh(&mut last).await
            };
            let result = tokio::select! {
                () = stop.cancelled() => break,
                result = fetched => result,
            };
            let wait = match result {
                Ok(()) => {
                    retry = RETRY_MIN;
                    every
                }
                Err(error) => {
                    let wait = retry.min(every);
                    retry = (retry * 2).min(RETRY_MAX);
                    let since =
                        if self.is_ready() { "keeping the last key set" } else { "not ready until one arrives" };
                    tracing::warn!(url = %self.url, %error, retry_in = ?wait, "JWKS fetch failed; {since}");
                    wait
                }
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One fetch; its keys replace the current ones when it succeeds.
    async fn refresh(&self, last: &mut Option<Instant>) -> Result<(), JwksError> {
        *last = Some(Instant::now());
        let document = tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await.map_err(|_| JwksError::Timeout)??;
        let keys::JwksKeys { keys, skipped } = keys::parse_jwks(&document)?;
        for (kid, why) in &skipped {
            tracing::debug!(url = %self.url, kid = kid.as_deref().unwrap_or(""), %why, "JWKS key not used");
        }
        if keys.is_empty() {
            return Err(JwksError::NoKeys(skipped.len()));
        }
        let first = !self.is_ready();
        let count = keys.len();
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Some(keys.into());
        if first {
            tracing::info!(url = %self.url, keys = count, skipped = skipped.len(), "JWKS fetched");
        } else {
            tracing::debug!(url = %self.url, keys = count, skipped = skipped.len(), "JWKS refreshed");
        }
        Ok(())
    }

    async fn fetch(&self) -> Result<Bytes, JwksError> {
        let mut connector = self.connector.clone();
        let connect_error = |error: BoxError| JwksError::Connect(with_causes(error.as_ref()));
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await.map_err(connect_error)?;
        let io = connector.call(self.url.clone()).await.map_err(connect_error)?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        let path = self.url.path_and_query().map_or("/", |p| p.as_str());
        let host = self.url.authority().map_or("", |a| a.as_str());
        let request = Request::get(path)
            .header(header::HOST, host)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| JwksError::Connect(e.to_string()))?;
        let exchange = async move {
            let response = sender.send_request(request).await?;
            if !response.status().is_success() {
                return Err(JwksError::Status(response.status()));
            }
            let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES).collect().await;
            Ok(body.map_err(JwksError::Body)?.to_bytes())
            // `sender` is dropped here, which lets the connection finish.
        };
        // The connection runs here, beside the exchange, not on a task of its own.
        let (document, _) = tokio::join!(exchange, connection);
        document
    }
}
