//! Who is connecting: a JWT whose `sub` is the user id, or `?user=` when
//! insecure development auth is on.
//!
//! A token comes in `Authorization: Bearer`, else in a
//! `switchboard.token.<jwt>` subprotocol entry (browsers cannot set
//! headers), else in `?token=`; the first one present is the only one
//! looked at.
//!
//! Three algorithms are accepted, each only with its own kind of key:
//! HS256 with `--jwt-secret`, RS256 with an RSA public key, ES256 with an EC
//! P-256 one (`--jwt-public-key` files or `--jwks-url` keys, see
//! [`crate::keys`]). A token's `alg` picks which of those applies; a key is
//! never used for another algorithm than its own, so `none`, any other
//! algorithm and every mismatch (an RS256 token against an EC key, an HS256
//! token "signed" with an RSA public key) are refused.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use switchboard_protocol::{DeviceId, IdError, UserId};

use crate::config::Config;
use crate::jwks::{Jwks, JwksError};
use crate::keys::{self, Lookup, PublicKey};

/// A subprotocol entry that carries a token rather than naming a protocol.
pub const TOKEN_PROTOCOL_PREFIX: &str = "switchboard.token.";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no token: send `Authorization: Bearer <jwt>`, a `switchboard.token.<jwt>` subprotocol entry or `?token=<jwt>`"
    )]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("alg {0:?} is not accepted: HS256, RS256 or ES256 only")]
    UnsupportedAlg(Algorithm),
    #[error("alg {token:?} does not match the key's type ({key:?})")]
    AlgMismatch { token: Algorithm, key: Algorithm },
    #[error("no key has kid `{0}`")]
    UnknownKid(String),
    #[error("no key for {0:?} tokens without a kid")]
    NoKey(Algorithm),
    #[error("HS256 tokens are not accepted: this node has no jwt-secret")]
    NoSecret,
    #[error("invalid user id: {0}")]
    BadSubject(IdError),
    #[error("invalid device claim: {0}")]
    BadDevice(IdError),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<String>,
}

/// Who connects: the user, and the device when the token names one.
#[derive(Debug)]
pub struct Identity {
    pub user: UserId,
    pub device: Option<DeviceId>,
    /// The token's `exp` (unix seconds); `None` for development auth.
    pub exp: Option<u64>,
}

/// What an upgrade request offers to prove who it is, each as sent.
#[derive(Debug, Default)]
pub struct Credentials<'a> {
    /// `Authorization: Bearer <this>`.
    pub bearer: Option<&'a str>,
    /// A `switchboard.token.<this>` subprotocol entry.
    pub subprotocol: Option<&'a str>,
    /// `?token=`.
    pub query_token: Option<&'a str>,
    /// `?user=`, for development auth.
    pub dev_user: Option<&'a str>,
}

impl<'a> Credentials<'a> {
    /// The token that counts: the header's, else the subprotocol's, else the query's.
    fn token(&self) -> Option<&'a str> {
        self.bearer.or(self.subprotocol).or(self.query_token)
    }
}

/// The checks of the claims, one per algorithm a token may use.
struct Validations {
    hs256: Validation,
    rs256: Validation,
    es256: Validation,
}

impl Validations {
    fn new(audience: Option<&str>) -> Self {
        let make = |alg| {
            let mut validation = Validation::new(alg);
            validation.leeway = 5;
            validation.validate_nbf = true;
            match audience {
                Some(audience) => {
                    validation.set_audience(&[audience]);
                    validation.set_required_spec_claims(&["exp", "sub", "aud"]);
                }
                None => validation.set_required_spec_claims(&["exp", "sub"]),
            }
            validation
        };
        Self { hs256: make(Algorithm::HS256), rs256: make(Algorithm::RS256), es256: make(Algorithm::ES256) }
    }

    fn get(&self, alg: Algorithm) -> &Validation {
        match alg {
            Algorithm::RS256 => &self.rs256,
            Algorithm::ES256 => &self.es256,
            _ => &self.hs256,
        }
    }
}

/// Checks client credentials; built once per node.
pub struct Authenticator {
    secret: Option<DecodingKey>,
    /// From `--jwt-public-key`.
    keys: Vec<PublicKey>,
    jwks: Option<Arc<Jwks>>,
    validations: Validations,
    dev_insecure: bool,
}

impl Authenticator {
    /// Tokens must be signed with one of the configured keys and, when
    /// `jwt-audience` is set, carry it in `aud`; without it, a token with an
    /// `aud` is refused. The JWKS keys arrive once [`Jwks::run`] runs.
    pub fn new(config: &Config) -> Result<Self, JwksError> {
        Ok(Self {
            secret: config.jwt_secret.as_deref().map(|s| DecodingKey::from_secret(s.as_bytes())),
            keys: config.jwt_public_keys.clone(),
            jwks: config.jwks_url.clone().map(Jwks::new).transpose()?.map(Arc::new),
            validations: Validations::new(config.jwt_audience.as_deref()),
            dev_insecure: config.dev_insecure_auth,
        })
    }

    /// The JWKS key set, whose refresh task the node runs.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    /// False while a configured JWKS was never fetched: no RS256 or ES256
    /// client of the identity provider could connect.
    pub fn is_ready(&self) -> bool {
        self.jwks.as_ref().is_none_or(|jwks| jwks.is_ready())
    }

    /// Who a WebSocket upgrade request speaks for.
    pub async fn authenticate(&self, credentials: &Credentials<'_>) -> Result<Identity, AuthError> {
        if let Some(token) = credentials.token() {
            let claims = self.verify(token.trim()).await?;
            let user = UserId::parse(&claims.sub).map_err(AuthError::BadSubject)?;
            let device = claims.device.as_deref().map(DeviceId::parse).transpose().map_err(AuthError::BadDevice)?;
            return Ok(Identity { user, device, exp: Some(claims.exp) });
        }
        match credentials.dev_user {
            Some(user) if self.dev_insecure => {
                Ok(Identity { user: UserId::parse(user).map_err(AuthError::BadSubject)?, device: None, exp: None })
            }
            _ => Err(AuthError::Missing),
        }
    }

    async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        // The header is read before any signature is checked, only to choose
        // the key; the key then fixes the algorithm the signature must have.
        let header = jsonwebtoken::decode_header(token)?;
        match header.alg {
            Algorithm::HS256 => {
                let secret = self.secret.as_ref().ok_or(AuthError::NoSecret)?;
                return Ok(
                    jsonwebtoken::decode::<Claims>(token, secret, self.validations.get(Algorithm::HS256))?.claims
                );
            }
            Algorithm::RS256 | Algorithm::ES256 => {}
            other => return Err(AuthError::UnsupportedAlg(other)),
        }
        let kid = header.kid.as_deref();
        let mut fetched = self.jwks.as_ref().map(|jwks| jwks.keys());
        if let (Some(kid), Some(jwks)) = (kid, &self.jwks) {
            let known = |fetched: &[PublicKey]| self.keys.iter().chain(fetched).any(|k| k.kid.as_deref() == Some(kid));
            if !fetched.as_deref().is_some_and(known) {
                jwks.refresh_for_unknown_kid().await;
                fetched = Some(jwks.keys());
            }
        }
        let all = self.keys.iter().chain(fetched.as_deref().unwrap_or_default());
        let candidates = match keys::lookup(all, kid, header.alg) {
            Lookup::Found(candidates) => candidates,
            Lookup::Mismatch(key) => return Err(AuthError::AlgMismatch { token: header.alg, key }),
            Lookup::UnknownKid => return Err(AuthError::UnknownKid(kid.unwrap_or_default().to_owned())),
            Lookup::NoKey => return Err(AuthError::NoKey(header.alg)),
        };
        let validation = self.validations.get(header.alg);
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, key.decoding_key(), validation) {
                Ok(data) => return Ok(data.claims),
                // Another key may have signed it.
                Err(error) if *error.kind() == jsonwebtoken::errors::ErrorKind::InvalidSignature => {}
                // The signature is good; a claim is not.
                Err(error) => return Err(error.into()),
            }
        }
        Err(jsonwebtoken::errors::Error::from(jsonwebtoken::errors::ErrorKind::InvalidSignature).into())
    }
}

/// Signs a client token for `user`, valid for `ttl`.
pub fn issue_token(secret: &str, user: &UserId, ttl: Duration) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let claims = Claims { sub: user.as_str().to_owned(), exp: now + ttl.as_secs(), device: None };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::ServeArgs;

    fn authenticator(args: &[&str]) -> Authenticator {
        let config = ServeArgs::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .unwrap()
            .validate()
            .unwrap();
        Authenticator::new(&config).unwrap()
    }

    fn bearer(token: &str) -> Credentials<'_> {
        Credentials { bearer: Some(token), ..Credentials::default() }
    }

    fn alice_token(secret: &str) -> String {
        issue_token(secret, &UserId::parse("alice").unwrap(), Duration::from_secs(60)).unwrap()
    }

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
    }

    #[test]
    fn tokens_come_from_the_header_the_subprotocol_or_the_query() {
        let auth = authenticator(&["--jwt-secret", "secret"]);
        let token = alice_token("secret");
        for credentials in [
            bearer(&token),
            Credentials { subprotocol: Some(&token), ..Credentials::default() },
            Credentials { query_token: Some(&token), ..Credentials::default() },
        ] {
            let identity = run(auth.authenticate(&credentials)).unwrap();
            assert_eq!(identity.user.as_str(), "alice");
            assert!(identity.exp.unwrap() > 0);
        }
    }

    #[test]
    fn the_header_wins_over_the_subprotocol_which_wins_over_the_query() {
        let auth = authenticator(&["--jwt-secret", "secret"]);
        let (good, bad) = (alice_token("secret"), alice_token("other"));
        let cases = [
            (
                Credentials { bearer: Some(&bad), subprotocol: Some(&good), query_token: Some(&good), dev_user: None },
                false,
            ),
            (
                Credentials { bearer: Some(&good), subprotocol: Some(&bad), query_token: Some(&bad), dev_user: None },
                true,
            ),
            (Credentials { bearer: None, subprotocol: Some(&bad), query_token: Some(&good), dev_user: None }, false),
            (Credentials { bearer: None, subprotocol: Some(&good), query_token: Some(&bad), dev_user: None }, true),
        ];
        for (credentials, accepted) in cases {
            assert_eq!(run(auth.authenticate(&credentials)).is_ok(), accepted, "{credentials:?}");
        }
    }

    #[test]
    fn refuses_what_it_must() {
        let auth = authenticator(&["--jwt-secret", "secret"]);
        let forged = alice_token("other");
        assert!(matches!(run(auth.authenticate(&bearer(&forged))), Err(AuthError::Invalid(_))));
        let dev = Credentials { dev_user: Some("alice"), ..Credentials::default() };
        assert!(matches!(run(auth.authenticate(&dev)), Err(AuthError::Missing)));
        assert!(matches!(run(auth.authenticate(&Credentials::default())), Err(AuthError::Missing)));
    }

    #[test]
    fn algorithms_other_than_the_three_are_refused_before_any_key_is_tried() {
        let auth = authenticator(&["--jwt-secret", "secret"]);
        let claims = serde_json::json!({"sub": "alice", "exp": 4_000_000_000u64});
        let key = EncodingKey::from_secret(b"secret");
        let hs512 = jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &key).unwrap();
        assert!(matches!(run(auth.authenticate(&bearer(&hs512))), Err(AuthError::UnsupportedAlg(Algorithm::HS512))));
        // RS256 with no public key configured: no key, whatever the signature.
        let (_, rest) = hs512.split_once('.').unwrap();
        use base64::Engine;
        let rs_header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#);
        let rs256 = format!("{rs_header}.{rest}");
        assert!(matches!(run(auth.authenticate(&bearer(&rs256))), Err(AuthError::NoKey(Algorithm::RS256))));
        let none = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let none = format!("{none}.{}", rest.split_once('.').unwrap().0);
        assert!(matches!(run(auth.authenticate(&bearer(&none))), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn without_a_secret_hs256_tokens_are_refused() {
        let auth = authenticator(&["--dev-insecure-auth"]);
        let token = alice_token("anything");
        assert!(matches!(run(auth.authenticate(&bearer(&token))), Err(AuthError::NoSecret)));
    }

    #[test]
    fn dev_auth_still_checks_the_user_id() {
        let auth = authenticator(&["--dev-insecure-auth"]);
        let dev = |user| Credentials { dev_user: Some(user), ..Credentials::default() };
        let identity = run(auth.authenticate(&dev("a@b"))).unwrap();
        assert_eq!((identity.user.as_str(), identity.exp), ("a@b", None));
        assert!(matches!(run(auth.authenticate(&dev("a b"))), Err(AuthError::BadSubject(_))));
    }
}
