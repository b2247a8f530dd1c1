//! What a route's tokens say: validated issuer, kid, subject, audience, lifetime and claims.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use super::algorithm::Algorithm;
use super::key::{KeyError, SigningKey};

/// The longest lifetime ASAP allows a token.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);

/// Claims the minter sets itself and configuration may not override.
const RESERVED_CLAIMS: [&str; 4] = ["exp", "iat", "nbf", "jti"];

/// A configured field the proxy refused, naming which one so the config layer can point at it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    #[error("kid {kid:?} is invalid: {reason}")]
    Kid { kid: String, reason: String },
    #[error("issuer is invalid: {0}")]
    Issuer(&'static str),
    #[error("subject is invalid: {0}")]
    Subject(&'static str),
    #[error("audience is invalid: {0}")]
    Audience(&'static str),
    #[error("lifetime is invalid: {0}")]
    Lifetime(&'static str),
    #[error("additional claim {name:?} is invalid: {reason}")]
    AdditionalClaim { name: String, reason: &'static str },
    #[error("key does not fit the algorithm: {0}")]
    Key(KeyError),
}

impl SpecError {
    /// The route field at fault: `kid`, `issuer`, `subject`, `audience`, `expiry`,
    /// `additional_claims` or `key`. [`SpecError::key_path`] adds the claim name.
    pub fn field(&self) -> &'static str {
        match self {
            SpecError::Kid { .. } => "kid",
            SpecError::Issuer(_) => "issuer",
            SpecError::Subject(_) => "subject",
            SpecError::Audience(_) => "audience",
            SpecError::Lifetime(_) => "expiry",
            SpecError::AdditionalClaim { .. } => "additional_claims",
            SpecError::Key(_) => "key",
        }
    }

    /// Like [`SpecError::field`], but `additional_claims.<name>` for a bad additional claim.
    pub fn key_path(&self) -> String {
        match self {
            SpecError::AdditionalClaim { name, .. } => format!("additional_claims.{name}"),
            other => other.field().to_owned(),
        }
    }
}

/// A validated `kid`: the path under the issuer where the verifier fetches the public key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// Checks `kid` against the ASAP rules: only ASCII letters, digits and `_ . - + /`;
    /// `/`-separated segments, none empty, `.` or `..`; and it starts with `issuer/`.
    pub fn new(kid: impl Into<String>, issuer: &str) -> Result<KeyId, SpecError> {
        let kid = kid.into();
        let invalid = |reason: String| SpecError::Kid {
            kid: kid.clone(),
            reason,
        };
        if kid.is_empty() {
            return Err(invalid("must not be empty".to_owned()));
        }
        if let Some(bad) = kid
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '+' | '/')))
        {
            return Err(invalid(format!(
                "character {bad:?} is not allowed; use ASCII letters, digits and _ . - + /"
            )));
        }
        if kid
            .split('/')
            .any(|segment| matches!(segment, "" | "." | ".."))
        {
            return Err(invalid(
                "segments between slashes must not be empty, \".\" or \"..\"".to_owned(),
            ));
        }
        let under_issuer = kid
            .strip_prefix(issuer)
            .is_some_and(|rest| rest.starts_with('/'));
        if issuer.is_empty() || !under_issuer {
            return Err(invalid(format!(
                "must start with the issuer {issuer:?} followed by /"
            )));
        }
        Ok(KeyId(kid))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `aud` claim: one or more non-empty audiences.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audience(Vec<String>);

impl Audience {
    pub fn new(audiences: Vec<String>) -> Result<Audience, SpecError> {
        if audiences.is_empty() {
            return Err(SpecError::Audience("at least one audience is required"));
        }
        if audiences.iter().any(String::is_empty) {
            return Err(SpecError::Audience("an audience must not be empty"));
        }
        Ok(Audience(audiences))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// One audience is written as a string, several as an array, as ASAP verifiers expect.
impl Serialize for Audience {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => serializer.serialize_str(one),
            many => many.serialize(serializer),
        }
    }
}

/// The raw fields of a route's token, as configuration gives them.
#[derive(Debug)]
pub struct SpecFields {
    pub algorithm: Algorithm,
    pub kid: String,
    pub issuer: String,
    pub subject: Option<String>,
    pub audience: Vec<String>,
    pub lifetime: Duration,
    pub additional_claims: Map<String, Value>,
    pub key: Arc<SigningKey>,
}

/// A validated description of the tokens one route mints.
#[derive(Debug)]
pub struct TokenSpec {
    algorithm: Algorithm,
    kid: KeyId,
    issuer: String,
    subject: String,
    audience: Audience,
    lifetime: Duration,
    /// Custom claims, without `iss`, `sub` and `aud`, which are folded into the fields above.
    extra_claims: Map<String, Value>,
    key: Arc<SigningKey>,
}

impl TokenSpec {
    /// Validates `fields`. Additional claims win over `issuer`, `subject` and `audience`, and
    /// the kid is checked against the issuer that ends up in the token.
    pub fn new(fields: SpecFields) -> Result<TokenSpec, SpecError> {
        let SpecFields {
            algorithm,
            kid,
            issuer,
            subject,
            audience,
            lifetime,
            mut additional_claims,
            key,
        } = fields;

        if lifetime.is_zero() || lifetime > MAX_LIFETIME {
            return Err(SpecError::Lifetime("must be between 1 and 3600 seconds"));
        }
        if lifetime.subsec_nanos() != 0 {
            return Err(SpecError::Lifetime("must be a whole number of seconds"));
        }
        if let Some(name) = RESERVED_CLAIMS
            .iter()
            .find(|name| additional_claims.contains_key(**name))
        {
            return Err(SpecError::AdditionalClaim {
                name: (*name).to_owned(),
                reason: "is set by the proxy for every token and cannot be configured",
            });
        }

        let issuer = match additional_claims.remove("iss") {
            Some(Value::String(iss)) if !iss.is_empty() => iss,
            Some(_) => return Err(claim_error("iss", "must be a non-empty string")),
            None if issuer.is_empty() => return Err(SpecError::Issuer("must not be empty")),
            None => issuer,
        };
        let subject = match additional_claims.remove("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub,
            Some(_) => return Err(claim_error("sub", "must be a non-empty string")),
            None => match subject {
                Some(sub) if sub.is_empty() => return Err(SpecError::Subject("must not be empty")),
                Some(sub) => sub,
                None => issuer.clone(),
            },
        };
        let audience = match additional_claims.remove("aud") {
            Some(value) => audience_claim(value)?,
            None => Audience::new(audience)?,
        };
        let kid = KeyId::new(kid, &issuer)?;
        key.check_algorithm(algorithm).map_err(SpecError::Key)?;

        Ok(TokenSpec {
            algorithm,
            kid,
            issuer,
            subject,
            audience,
            lifetime,
            extra_claims: additional_claims,
            key,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn kid(&self) -> &KeyId {
        &self.kid
    }

    /// The issuer the token carries, after any `additional_claims.iss` override.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The subject the token carries: configured, overridden, or else the issuer.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn audience(&self) -> &Audience {
        &self.audience
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Custom claims added to every token, other than `iss`, `sub` and `aud`.
    pub fn extra_claims(&self) -> &Map<String, Value> {
        &self.extra_claims
    }

    pub fn key(&self) -> &Arc<SigningKey> {
        &self.key
    }
}

fn claim_error(name: &str, reason: &'static str) -> SpecError {
    SpecError::AdditionalClaim {
        name: name.to_owned(),
        reason,
    }
}

fn audience_claim(value: Value) -> Result<Audience, SpecError> {
    let reason = "must be a non-empty string or a non-empty array of non-empty strings";
    let audiences = match value {
        Value::String(one) => vec![one],
        Value::Array(many) => many
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                _ => Err(claim_error("aud", reason)),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(claim_error("aud", reason)),
    };
    Audience::new(audiences).map_err(|_| claim_error("aud", reason))
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
