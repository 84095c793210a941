//! Who is connecting: a JWT (`Authorization: Bearer` or `?token=`) whose
//! `sub` is the user id, or `?user=` when insecure development auth is on.
//!
//! Only HS256 is accepted, whatever the token's header claims: a token that
//! names another algorithm (`none`, or RS256 in the hope that the secret is
//! taken for a public key) is refused before its signature is looked at.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use switchboard_protocol::{DeviceId, IdError, UserId};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send `Authorization: Bearer <jwt>` or `?token=<jwt>`")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("invalid user id: {0}")]
    BadSubject(IdError),
    #[error("invalid device claim: {0}")]
    BadDevice(IdError),
    #[error("tokens are not accepted: this node has no jwt-secret")]
    NoSecret,
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
}

/// Checks client credentials; built once per node.
pub struct Authenticator {
    key: Option<DecodingKey>,
    validation: Validation,
    dev_insecure: bool,
}

impl Authenticator {
    /// Tokens must be signed with `jwt_secret` and, when `audience` is set,
    /// carry it in `aud`; without `audience`, a token with an `aud` is refused.
    pub fn new(jwt_secret: Option<&str>, audience: Option<&str>, dev_insecure: bool) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_nbf = true;
        match audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.set_required_spec_claims(&["exp", "sub", "aud"]);
            }
            None => validation.set_required_spec_claims(&["exp", "sub"]),
        }
        Self { key: jwt_secret.map(|s| DecodingKey::from_secret(s.as_bytes())), validation, dev_insecure }
    }

    /// Who a WebSocket upgrade request speaks for.
    pub fn authenticate(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Identity, AuthError> {
        let query_value = |name: &str| {
            form_urlencoded::parse(query.unwrap_or("").as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v)
        };
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_owned());
        if let Some(token) = bearer.or_else(|| query_value("token").map(|t| t.into_owned())) {
            let key = self.key.as_ref().ok_or(AuthError::NoSecret)?;
            let claims = jsonwebtoken::decode::<Claims>(&token, key, &self.validation)?.claims;
            let user = UserId::parse(&claims.sub).map_err(AuthError::BadSubject)?;
            let device = claims.device.as_deref().map(DeviceId::parse).transpose().map_err(AuthError::BadDevice)?;
            return Ok(Identity { user, device });
        }
        match query_value("user") {
            Some(user) if self.dev_insecure => {
                Ok(Identity { user: UserId::parse(&user).map_err(AuthError::BadSubject)?, device: None })
            }
            _ => Err(AuthError::Missing),
        }
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
    use super::*;

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        headers
    }

    #[test]
    fn header_and_query_tokens() {
        let auth = Authenticator::new(Some("secret"), None, false);
        let token = issue_token("secret", &UserId::parse("alice").unwrap(), Duration::from_secs(60)).unwrap();
        assert_eq!(auth.authenticate(&bearer(&token), None).unwrap().user.as_str(), "alice");
        let query = format!("token={token}");
        assert_eq!(auth.authenticate(&HeaderMap::new(), Some(&query)).unwrap().user.as_str(), "alice");
    }

    #[test]
    fn refuses_what_it_must() {
        let auth = Authenticator::new(Some("secret"), None, false);
        let alice = UserId::parse("alice").unwrap();
        let forged = issue_token("other", &alice, Duration::from_secs(60)).unwrap();
        assert!(matches!(auth.authenticate(&bearer(&forged), None), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.authenticate(&HeaderMap::new(), Some("user=alice")), Err(AuthError::Missing)));
        assert!(matches!(auth.authenticate(&HeaderMap::new(), None), Err(AuthError::Missing)));
    }

    #[test]
    fn dev_auth_still_checks_the_user_id() {
        let auth = Authenticator::new(None, None, true);
        assert_eq!(auth.authenticate(&HeaderMap::new(), Some("user=a%40b")).unwrap().user.as_str(), "a@b");
        assert!(matches!(auth.authenticate(&HeaderMap::new(), Some("user=a%20b")), Err(AuthError::BadSubject(_))));
    }
}
