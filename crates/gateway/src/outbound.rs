//! Requests this node makes to other services (the JWKS URL, the webhook
//! URL): one TLS setup, rustls with the ring provider.

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{ConfigBuilderExt, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connector for `http` and `https` URLs; with `https`, the system's
/// root certificates must be there.
pub fn connector(https: bool) -> Result<HttpsConnector<HttpConnector>, std::io::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?;
    // Roots are only needed (and only required to exist) for https.
    let tls = if https {
        tls.with_native_roots()?.with_no_client_auth()
    } else {
        tls.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth()
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    Ok(HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(http))
}
