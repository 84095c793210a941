//! The public keys that verify client tokens, read from PEM files at start
//! (`--jwt-public-key`) or from a JWKS document (`--jwks-url`).
//!
//! Each key is bound, when it is read, to the one algorithm its type allows:
//! RS256 for an RSA key, ES256 for an EC P-256 key. A token's `alg` only
//! selects among keys; it never decides how a key is used, so a token cannot
//! have an RSA public key taken for an HMAC secret. Keys of other types
//! (P-384, Ed25519, symmetric keys in a JWKS) are not read at all.

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPublicKey};

/// RSA keys shorter than this are refused (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: not a PEM file")]
    NotPem { path: String },
    #[error("{path}: a private key; give its public key (`openssl pkey -in KEY -pubout`)")]
    Private { path: String },
    #[error("{path}: a PEM `{label}`, not a public key")]
    NotPublic { path: String, label: String },
    #[error("{path}: {problem}")]
    Unusable { path: String, problem: String },
    #[error("`{0}`: expected FILE, or KID=FILE with a non-empty KID and FILE")]
    BadForm(String),
    #[error("one FILE (used for any kid), or every value as KID=FILE")]
    Mixed,
    #[error("kid `{0}` is given twice")]
    DuplicateKid(String),
}

/// Why a JWK of a JWKS document is not used; the key is then skipped.
#[derive(Debug, thiserror::Error)]
pub enum JwkError {
    #[error("not a signing key")]
    NotForSigning,
    #[error("a key of type {0}: only RSA (RS256) and EC P-256 (ES256) keys are used")]
    Unsupported(&'static str),
    #[error("its alg {0} does not fit its key type")]
    AlgMismatch(KeyAlgorithm),
    #[error("an invalid key: {0}")]
    Invalid(String),
}

/// One public key and the algorithm it verifies.
#[derive(Clone, Debug)]
pub struct PublicKey {
    /// The `kid` this key answers to; `None`: any token (with or without a `kid`).
    pub kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

impl PublicKey {
    /// Reads a PEM public key: an RSA key (`PUBLIC KEY` or `RSA PUBLIC
    /// KEY`) or an EC P-256 key (`PUBLIC KEY`).
    pub fn from_pem(kid: Option<String>, path: &str, pem: &str) -> Result<Self, KeyError> {
        let pem = pem.trim();
        let label = rsa::pkcs8::der::pem::decode_label(pem.as_bytes())
            .map_err(|_| KeyError::NotPem { path: path.to_owned() })?;
        let unusable = |problem: String| KeyError::Unusable { path: path.to_owned(), problem };
        match label {
            "PUBLIC KEY" => {
                if let Ok(key) = RsaPublicKey::from_public_key_pem(pem) {
                    return Self::rsa(kid, &key).map_err(unusable);
                }
                match p256::PublicKey::from_public_key_pem(pem) {
                    Ok(key) => Ok(Self::ec(kid, &key)),
                    Err(_) => Err(unusable("neither an RSA nor an EC P-256 public key".to_owned())),
                }
            }
            "RSA PUBLIC KEY" => {
                let key = RsaPublicKey::from_pkcs1_pem(pem).map_err(|e| unusable(format!("bad RSA key: {e}")))?;
                Self::rsa(kid, &key).map_err(unusable)
            }
            label if label.ends_with("PRIVATE KEY") => Err(KeyError::Private { path: path.to_owned() }),
            label => Err(KeyError::NotPublic { path: path.to_owned(), label: label.to_owned() }),
        }
    }

    /// A key of a JWKS document: RSA (RS256) or EC P-256 (ES256), for
    /// signatures. Its `kid`, when it has one, is the only `kid` it answers to.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, JwkError> {
        if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != PublicKeyUse::Signature) {
            return Err(JwkError::NotForSigning);
        }
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
            AlgorithmParameters::EllipticCurve(_) => return Err(JwkError::Unsupported("EC on another curve")),
            AlgorithmParameters::OctetKey(_) => return Err(JwkError::Unsupported("oct (a shared secret)")),
            AlgorithmParameters::OctetKeyPair(_) => return Err(JwkError::Unsupported("OKP")),
            _ => return Err(JwkError::Unsupported("unknown")),
        };
        if let Some(declared) = jwk.common.key_algorithm
            && declared != KeyAlgorithm::from(alg)
        {
            return Err(JwkError::AlgMismatch(declared));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| JwkError::Invalid(e.to_string()))?;
        // Checked now, so that a broken key is skipped instead of failing
        // every token it is tried on.
        match (alg, key.kind()) {
            (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, e }) => {
                let rsa = RsaPublicKey::new(BigUint::from_bytes_be(n), BigUint::from_bytes_be(e))
                    .map_err(|e| JwkError::Invalid(e.to_string()))?;
                check_rsa_size(&rsa).map_err(JwkError::Invalid)?;
            }
            (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) => {
                p256::PublicKey::from_sec1_bytes(point).map_err(|_| JwkError::Invalid("not a P-256 point".into()))?;
            }
            _ => return Err(JwkError::Invalid("unexpected key form".to_owned())),
        }
        Ok(Self { kid: jwk.common.key_id.clone(), alg, key })
    }

    fn rsa(kid: Option<String>, key: &RsaPublicKey) -> Result<Self, String> {
        check_rsa_size(key)?;
        let decoding = DecodingKey::from_rsa_raw_components(&key.n().to_bytes_be(), &key.e().to_bytes_be());
        Ok(Self { kid, alg: Algorithm::RS256, key: decoding })
    }

    fn ec(kid: Option<String>, key: &p256::PublicKey) -> Self {
        // The verifier reads an EC key as its SEC1 point.
        let point = key.to_encoded_point(false);
        Self { kid, alg: Algorithm::ES256, key: DecodingKey::from_ec_der(point.as_bytes()) }
    }

    /// The one algorithm this key verifies.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}

fn check_rsa_size(key: &RsaPublicKey) -> Result<(), String> {
    let bits = key.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(format!("an RSA key of {bits} bits; at least {MIN_RSA_BITS} are required"));
    }
    Ok(())
}

/// Reads the `--jwt-public-key` values: one `FILE`, used for any `kid`, or
/// any number of `KID=FILE`, each used only for its `kid`.
pub fn read_key_files(values: &[String]) -> Result<Vec<PublicKey>, KeyError> {
    let read = |kid: Option<String>, path: &str| {
        let pem = std::fs::read_to_string(Path::new(path))
            .map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
        PublicKey::from_pem(kid, path, &pem)
    };
    let mut keys: Vec<PublicKey> = Vec::with_capacity(values.len());
    for value in values {
        match value.split_once('=') {
            None if values.len() == 1 => keys.push(read(None, value)?),
            None => return Err(KeyError::Mixed),
            Some((kid, path)) if kid.is_empty() || path.is_empty() => return Err(KeyError::BadForm(value.clone())),
            Some((kid, _)) if keys.iter().any(|k| k.kid.as_deref() == Some(kid)) => {
                return Err(KeyError::DuplicateKid(kid.to_owned()));
            }
            Some((kid, path)) => keys.push(read(Some(kid.to_owned()), path)?),
        }
    }
    Ok(keys)
}

/// What a set of keys offers a token with this `kid` and `alg`.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// The keys to try, in order; the token is good if one verifies it.
    Found(Vec<&'a PublicKey>),
    /// The key the token names (by `kid`, or the only kind there is) is of
    /// another type than `alg` says.
    Mismatch(Algorithm),
    /// No key answers to this `kid`.
    UnknownKid,
    /// The token has no `kid` and no key answers to every `kid`.
    NoKey,
}

/// Finds the keys for a token among `keys`: the ones with its `kid` when
/// it has one and a key answers to it, else the keys that answer to every
/// `kid`. Only keys for `alg` are offered.
pub fn lookup<'a>(keys: impl Iterator<Item = &'a PublicKey> + Clone, kid: Option<&str>, alg: Algorithm) -> Lookup<'a> {
    let named: Vec<&PublicKey> = match kid {
        Some(kid) => keys.clone().filter(|k| k.kid.as_deref() == Some(kid)).collect(),
        None => Vec::new(),
    };
    let candidates = if named.is_empty() { keys.filter(|k| k.kid.is_none()).collect() } else { named };
    if candidates.is_empty() {
        return if kid.is_some() { Lookup::UnknownKid } else { Lookup::NoKey };
    }
    let (fit, other): (Vec<&PublicKey>, Vec<&PublicKey>) = candidates.into_iter().partition(|k| k.alg == alg);
    match other.first() {
        Some(other) if fit.is_empty() => Lookup::Mismatch(other.alg),
        _ => Lookup::Found(fit),
    }
}

/// What a JWKS document holds.
#[derive(Debug)]
pub struct JwksKeys {
    pub keys: Vec<PublicKey>,
    /// The keys not used: their `kid`, and why.
    pub skipped: Vec<(Option<String>, JwkError)>,
}

/// The usable keys of a JWKS document (`{"keys":[...]}`), each unusable one
/// with the reason it is skipped.
pub fn parse_jwks(document: &[u8]) -> Result<JwksKeys, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(document)?;
    let (mut keys, mut skipped) = (Vec::new(), Vec::new());
    for value in document.keys {
        let kid = value.get("kid").and_then(serde_json::Value::as_str).map(str::to_owned);
        // One key this crate cannot read (an unknown `alg`, say) must not
        // take the others down with it.
        match serde_json::from_value::<Jwk>(value) {
            Ok(jwk) => match PublicKey::from_jwk(&jwk) {
                Ok(key) => keys.push(key),
                Err(error) => skipped.push((kid, error)),
            },
            Err(error) => skipped.push((kid, JwkError::Invalid(error.to_string()))),
        }
    }
    Ok(JwksKeys { keys, skipped })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use p256::pkcs8::EncodePublicKey;
    use rsa::pkcs1::EncodeRsaPublicKey;
    use rsa::pkcs8::LineEnding;

    // Test keys, made once: RSA key generation is slow.
    fn rsa_public() -> &'static RsaPublicKey {
        static KEY: std::sync::OnceLock<RsaPublicKey> = std::sync::OnceLock::new();
        KEY.get_or_init(|| {
            let mut rng = rsa::rand_core::OsRng;
            RsaPublicKey::from(rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap())
        })
    }

    fn ec_public() -> p256::PublicKey {
        p256::SecretKey::random(&mut rsa::rand_core::OsRng).public_key()
    }

    #[test]
    fn pem_keys_are_bound_to_their_algorithm() {
        let spki = rsa_public().to_public_key_pem(LineEnding::LF).unwrap();
        assert_eq!(PublicKey::from_pem(None, "k", &spki).unwrap().alg(), Algorithm::RS256);
        let pkcs1 = rsa_public().to_pkcs1_pem(LineEnding::LF).unwrap();
        assert_eq!(PublicKey::from_pem(None, "k", &pkcs1).unwrap().alg(), Algorithm::RS256);
        let ec = ec_public().to_public_key_pem(LineEnding::LF).unwrap();
        assert_eq!(PublicKey::from_pem(Some("a".into()), "k", &ec).unwrap().alg(), Algorithm::ES256);
    }

    #[test]
    fn pem_files_that_are_not_public_keys_are_refused() {
        let private = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(PublicKey::from_pem(None, "k", private), Err(KeyError::Private { .. })));
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(PublicKey::from_pem(None, "k", cert), Err(KeyError::NotPublic { .. })));
        assert!(matches!(PublicKey::from_pem(None, "k", "hello"), Err(KeyError::NotPem { .. })));
        let junk = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(matches!(PublicKey::from_pem(None, "k", junk), Err(KeyError::Unusable { .. })));
        let small = RsaPublicKey::from(rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap());
        let small = small.to_public_key_pem(LineEnding::LF).unwrap();
        let error = PublicKey::from_pem(None, "k", &small).unwrap_err().to_string();
        assert!(error.contains("1024 bits"), "{error}");
    }

    #[test]
    fn key_file_values_take_one_form() {
        assert!(matches!(read_key_files(&["=x".into()]), Err(KeyError::BadForm(_))));
        assert!(matches!(read_key_files(&["a=".into()]), Err(KeyError::BadForm(_))));
        assert!(matches!(read_key_files(&["x".into(), "a=y".into()]), Err(KeyError::Mixed)));
        assert!(matches!(read_key_files(&["/no/such/file".into()]), Err(KeyError::Read { .. })));
        let dir = std::env::temp_dir().join(format!("switchboard-keys-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ec.pem");
        std::fs::write(&path, ec_public().to_public_key_pem(LineEnding::LF).unwrap()).unwrap();
        let path = path.to_str().unwrap();
        let keys = read_key_files(&[format!("a={path}"), format!("b={path}")]).unwrap();
        assert_eq!(keys.iter().map(|k| k.kid.as_deref()).collect::<Vec<_>>(), [Some("a"), Some("b")]);
        assert!(matches!(read_key_files(&[format!("a={path}"), format!("a={path}")]), Err(KeyError::DuplicateKid(_))));
        assert_eq!(read_key_files(&[path.to_owned()]).unwrap()[0].kid, None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn key(kid: Option<&str>, alg: Algorithm) -> PublicKey {
        PublicKey { kid: kid.map(str::to_owned), alg, key: DecodingKey::from_ec_der(&[4]) }
    }

    fn found(lookup: Lookup<'_>) -> Vec<Option<&str>> {
        match lookup {
            Lookup::Found(keys) => keys.iter().map(|k| k.kid.as_deref()).collect(),
            other => panic!("expected keys, got {other:?}"),
        }
    }

    #[test]
    fn lookup_prefers_the_named_key_and_checks_its_type() {
        let keys = [key(Some("r"), Algorithm::RS256), key(Some("e"), Algorithm::ES256), key(None, Algorithm::ES256)];
        assert_eq!(found(lookup(keys.iter(), Some("r"), Algorithm::RS256)), [Some("r")]);
        assert!(matches!(lookup(keys.iter(), Some("r"), Algorithm::ES256), Lookup::Mismatch(Algorithm::RS256)));
        // A kid no key has falls back to the keys for any kid.
        assert_eq!(found(lookup(keys.iter(), Some("x"), Algorithm::ES256)), [None]);
        assert_eq!(found(lookup(keys.iter(), None, Algorithm::ES256)), [None]);
        assert!(matches!(lookup(keys.iter(), None, Algorithm::RS256), Lookup::Mismatch(Algorithm::ES256)));
        let named = [key(Some("r"), Algorithm::RS256)];
        assert!(matches!(lookup(named.iter(), Some("x"), Algorithm::RS256), Lookup::UnknownKid));
        assert!(matches!(lookup(named.iter(), None, Algorithm::RS256), Lookup::NoKey));
    }

    #[test]
    fn jwks_documents_keep_only_signing_keys_of_known_types() {
        use base64::Engine;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let rsa = rsa_public();
        let point = ec_public().to_encoded_point(false);
        let document = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r", "use": "sig", "alg": "RS256", "n": b64(&rsa.n().to_bytes_be()), "e": b64(&rsa.e().to_bytes_be())},
            {"kty": "EC", "kid": "e", "crv": "P-256", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": b64(&rsa.n().to_bytes_be()), "e": "AQAB"},
            {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": b64(&rsa.n().to_bytes_be()), "e": "AQAB"},
            {"kty": "EC", "kid": "es", "alg": "RS256", "crv": "P-256", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())},
            {"kty": "oct", "kid": "hs", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "bad", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
            {"kty": "RSA", "kid": "short", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "odd", "alg": "RSA-OAEP-9000", "n": "AQAB", "e": "AQAB"},
            {"kty": "weird", "kid": "w"}
        ]});
        let JwksKeys { keys, skipped } = parse_jwks(document.to_string().as_bytes()).unwrap();
        let kids = keys.iter().map(|k| (k.kid.as_deref(), k.alg())).collect::<Vec<_>>();
        assert_eq!(kids, [(Some("r"), Algorithm::RS256), (Some("e"), Algorithm::ES256)]);
        let skipped = skipped.into_iter().map(|(kid, _)| kid.unwrap()).collect::<Vec<_>>();
        assert_eq!(skipped, ["enc", "ps", "es", "hs", "bad", "short", "odd", "w"]);
        assert!(parse_jwks(b"{\"no\":[]}").is_err());
    }
}
