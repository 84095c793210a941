//! Key pairs made at test time for RS256 and ES256 tokens, their public
//! halves as PEM files or JWKs, and tokens signed with them. No key is ever
//! committed.

use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::rand_core::OsRng;

/// A private key and what tests need of it.
pub struct TestKey {
    alg: Algorithm,
    encoding: EncodingKey,
    public_pem: String,
    private_pem: String,
}

impl TestKey {
    /// A new RSA key pair (2048 bits), for RS256.
    pub fn rsa() -> Self {
        let private = rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
        let public_pem = rsa::RsaPublicKey::from(&private).to_public_key_pem(LineEnding::LF).unwrap();
        let encoding = EncodingKey::from_rsa_der(private.to_pkcs1_der().unwrap().as_bytes());
        let private_pem = private.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        Self { alg: Algorithm::RS256, encoding, public_pem, private_pem }
    }

    /// A new EC P-256 key pair, for ES256.
    pub fn ec() -> Self {
        let private = p256::SecretKey::random(&mut OsRng);
        let public_pem = private.public_key().to_public_key_pem(LineEnding::LF).unwrap();
        let encoding = EncodingKey::from_ec_der(private.to_pkcs8_der().unwrap().as_bytes());
        let private_pem = private.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        Self { alg: Algorithm::ES256, encoding, public_pem, private_pem }
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The public key as a PEM `PUBLIC KEY` (SPKI).
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// The private key as a PEM `PRIVATE KEY` (PKCS#8), for tests of what
    /// a node refuses to take for a public key.
    pub fn private_pem(&self) -> &str {
        &self.private_pem
    }

    /// The public key as a JWK with `kid`, `use` and `alg`.
    pub fn jwk(&self, kid: &str) -> serde_json::Value {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        serde_json::to_value(jwk).unwrap()
    }

    /// `claims` signed with this key's algorithm, with `kid` in the header when given.
    pub fn sign(&self, claims: &serde_json::Value, kid: Option<&str>) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    /// A token for `user` valid for an hour, with `kid` when given.
    pub fn token(&self, user: &str, kid: Option<&str>) -> String {
        self.sign(&serde_json::json!({ "sub": user, "exp": crate::now_secs() + 3600 }), kid)
    }
}

/// A JWKS document of `keys`, each under its `kid`.
pub fn jwks(keys: &[(&str, &TestKey)]) -> serde_json::Value {
    serde_json::json!({ "keys": keys.iter().map(|(kid, key)| key.jwk(kid)).collect::<Vec<_>>() })
}

/// A temporary directory for key files, removed on drop.
pub struct KeyDir {
    dir: PathBuf,
}

impl KeyDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("switchboard-keys-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    /// Writes `contents` to the file `name`; its path, as a string for flags.
    pub fn write(&self, name: &str, contents: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_owned()
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Default for KeyDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
