//! Minting one signed ASAP token (a compact JWS) from a token spec.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use serde_json::{Map, Value, json};

use super::key::SignError;
use super::spec::TokenSpec;

/// Random bytes in each `jti`: 128 bits, enough that two tokens never share one.
const JTI_BYTES: usize = 16;

/// A signed token, ready for `Authorization: Bearer`.
///
/// Its `Debug` prints only the expiry: the token is a credential until then.
#[derive(Clone)]
pub struct Token {
    /// `Bearer <token>`, built once: a reused token is copied into many requests, and this
    /// makes each copy a reference count. Marked sensitive, so it is never printed.
    header: HeaderValue,
    issued_at: SystemTime,
    expires_at: SystemTime,
}

const BEARER: &str = "Bearer ";

impl Token {
    /// The compact serialisation `header.claims.signature`.
    pub fn as_str(&self) -> &str {
        // Built from ASCII in `mint`, so the conversion cannot fail.
        self.header.to_str().map_or("", |h| &h[BEARER.len()..])
    }

    /// The `Authorization` value carrying this token.
    pub fn authorization(&self) -> &HeaderValue {
        &self.header
    }

    /// The `iat` (and `nbf`) instant, whole seconds.
    pub fn issued_at(&self) -> SystemTime {
        self.issued_at
    }

    /// The `exp` instant, whole seconds.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// How long the token is valid for in total, `exp - iat`.
    pub fn lifetime(&self) -> Duration {
        self.expires_at
            .duration_since(self.issued_at)
            .unwrap_or_default()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Signs a token from `spec` issued at `now` (truncated to whole seconds).
///
/// This is CPU work of milliseconds for RSA keys: async callers go through
/// [`super::Minter`], which runs it on the blocking pool.
pub fn mint(spec: &TokenSpec, now: SystemTime) -> Result<Token, SignError> {
    let iat = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| SignError::Clock)?
        .as_secs();
    let exp = iat + spec.lifetime().as_secs();

    let header = json!({
        "alg": spec.algorithm().as_str(),
        "kid": spec.kid().as_str(),
        "typ": "JWT",
    });
    let claims = claims(spec, iat, exp, &new_jti()?)?;

    let mut value = String::with_capacity(1024);
    value.push_str(BEARER);
    URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(&header)?, &mut value);
    value.push('.');
    URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(&claims)?, &mut value);
    let signature = spec
        .key()
        .sign(spec.algorithm(), &value.as_bytes()[BEARER.len()..])?;
    value.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut value);

    // Base64url and dots only, so always a valid header value.
    let mut header = HeaderValue::try_from(value).map_err(|_| SignError::Encoding)?;
    header.set_sensitive(true);
    Ok(Token {
        header,
        issued_at: UNIX_EPOCH + Duration::from_secs(iat),
        expires_at: UNIX_EPOCH + Duration::from_secs(exp),
    })
}

fn claims(spec: &TokenSpec, iat: u64, exp: u64, jti: &str) -> Result<Value, SignError> {
    let mut claims = Map::new();
    claims.insert("iss".to_owned(), Value::from(spec.issuer()));
    claims.insert("sub".to_owned(), Value::from(spec.subject()));
    claims.insert("aud".to_owned(), serde_json::to_value(spec.audience())?);
    claims.insert("jti".to_owned(), Value::from(jti));
    claims.insert("iat".to_owned(), Value::from(iat));
    claims.insert("nbf".to_owned(), Value::from(iat));
    claims.insert("exp".to_owned(), Value::from(exp));
    // The spec has refused extra claims that would clash with the ones above.
    for (name, value) in spec.extra_claims() {
        claims.insert(name.clone(), value.clone());
    }
    Ok(Value::Object(claims))
}

fn new_jti() -> Result<String, SignError> {
    let mut bytes = [0u8; JTI_BYTES];
    getrandom::fill(&mut bytes).map_err(SignError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
#[path = "mint_tests.rs"]
mod tests;
