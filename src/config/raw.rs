//! The YAML file as written: a serde mirror that rejects unknown keys.
//!
//! Nothing here is validated beyond its YAML type; `config::load` turns these into resolved
//! types and names the key path of anything wrong.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub listen: Option<Spanned<String>>,
    #[serde(default)]
    pub reverse: Vec<Reverse>,
    pub asap: Option<Asap>,
    #[serde(default)]
    pub routes: Vec<Route>,
    pub unmatched: Option<Spanned<String>>,
    pub tls: Option<Tls>,
    pub timeouts: Option<Timeouts>,
    pub intercept: Option<Intercept>,
    pub connect_ports: Option<Vec<Spanned<i64>>>,
    pub clients: Option<Spanned<Clients>>,
    pub destinations: Option<Destinations>,
    pub admin: Option<Spanned<String>>,
    #[serde(default)]
    pub admin_expose: bool,
    pub limits: Option<Limits>,
    pub shutdown_grace_seconds: Option<Spanned<f64>>,
    pub log_level: Option<Spanned<String>>,
    pub workers: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clients {
    pub allow: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub users: Vec<User>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: Spanned<String>,
    pub password_env: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destinations {
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_connections: Option<Spanned<i64>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub max_headers: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intercept {
    pub ca_cert_file: Spanned<String>,
    pub ca_key_file: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reverse {
    pub listen: Spanned<String>,
    pub upstream: Spanned<String>,
}

/// Signing settings; every field is optional so a route can override any subset.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asap {
    pub issuer: Option<Spanned<String>>,
    pub subject: Option<Spanned<String>>,
    pub kid: Option<Spanned<String>>,
    pub algorithm: Option<Spanned<String>>,
    pub private_key_file: Option<Spanned<String>>,
    pub private_key: Option<Spanned<String>>,
    pub private_key_env: Option<Spanned<String>>,
    pub private_key_dir: Option<Spanned<String>>,
    pub expiry: Option<Spanned<i64>>,
    pub additional_claims: Option<Spanned<BTreeMap<String, serde_json::Value>>>,
    pub reuse: Option<bool>,
}

// An inline private key may sit in this struct: print only which fields are present.
impl std::fmt::Debug for Asap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asap")
            .field("issuer", &self.issuer.as_ref().map(|s| &s.value))
            .field("kid", &self.kid.as_ref().map(|s| &s.value))
            .field("algorithm", &self.algorithm.as_ref().map(|s| &s.value))
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub host: Spanned<String>,
    pub path_prefix: Option<Spanned<String>>,
    pub audience: Option<Spanned<Audience>>,
    #[serde(default)]
    pub upstream_tls: bool,
    pub asap: Option<Asap>,
}

/// `audience: name` or `audience: [a, b]`.
#[derive(Debug)]
pub struct Audience(pub Vec<String>);

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Audience;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Audience, E> {
                Ok(Audience(vec![v.to_owned()]))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Audience, A::Error> {
                let mut all = Vec::new();
                while let Some(one) = seq.next_element::<String>()? {
                    all.push(one);
                }
                Ok(Audience(all))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub ca_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    pub connect_seconds: Option<Spanned<f64>>,
    pub response_seconds: Option<Spanned<f64>>,
    pub request_header_seconds: Option<Spanned<f64>>,
}
