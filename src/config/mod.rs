//! The proxy's configuration: reading `proxy.yaml` and resolving it into checked types.
//!
//! Loading happens in two steps. `raw` mirrors the YAML and rejects unknown keys; `resolve`
//! checks every value, loads the keys and compiles the route table. Any error names the file,
//! the line and column when known, and the key path, and no part of a bad file is used.

mod gateway;
mod raw;
mod resolve;
mod route;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::clients::Admission;
use crate::routes::{self, Host};
use crate::tls::intercept::Authority;
use crate::token::Minter;

/// A fully checked configuration.
#[derive(Debug)]
pub struct Config {
    /// The forward-proxy listener, used as `HTTP_PROXY`.
    pub listen: Option<SocketAddr>,
    /// Local listeners that send everything to one upstream.
    pub reverse: Vec<Reverse>,
    pub routes: routes::Table<Route>,
    pub unmatched: Unmatched,
    pub tls: Tls,
    pub timeouts: Timeouts,
    /// The CA that lets CONNECT tunnels to routed hosts be opened and signed.
    pub intercept: Option<Arc<Authority>>,
    /// Ports a CONNECT request may name.
    pub connect_ports: Vec<u16>,
    /// Which clients may use the listeners.
    pub clients: Admission,
    /// Extra allowed and denied destination networks.
    pub destinations: Destinations,
    /// The admin listener: health and metrics.
    pub admin: Option<SocketAddr>,
    pub limits: Limits,
    /// How long requests and tunnels in flight may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// A `tracing` filter such as `info` or `asap_proxy=debug`; `RUST_LOG` overrides it.
    pub log_level: Option<String>,
    /// Threads serving connections; `None` means one per core. Signing runs on tokio's
    /// blocking pool, apart from these.
    pub workers: Option<usize>,
    /// Every file and directory the configuration read, to watch for changes.
    pub files: Vec<PathBuf>,
    /// A digest of those files as loaded, to tell later whether any changed.
    pub fingerprint: [u8; 32],
}

#[derive(Debug, Default)]
pub struct Destinations {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Client connections open at once, over all listeners; more are refused with 503.
    pub max_connections: usize,
    /// Bytes of one request head; more gets 431.
    pub max_header_bytes: usize,
    /// Header lines in one request head; more gets 431.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
        }
    }
}

#[derive(Debug)]
pub struct Reverse {
    pub listen: SocketAddr,
    pub upstream: Origin,
}

/// Scheme, host and port of an upstream, as in `https://api.example.com`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub tls: bool,
    pub host: Host,
    pub port: u16,
}

/// Why a URL or authority does not name a usable origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("only http and https URLs are supported")]
    Scheme,
    #[error("an absolute URL such as http://host/path is required")]
    NotAbsolute,
    #[error("user information in the URL is not supported")]
    UserInfo,
    #[error("the host is not a valid name or IP address")]
    Host,
    #[error("the port is not a number from 1 to 65535")]
    Port,
    #[error("a host:port target is required")]
    NoPort,
}

impl Origin {
    /// The origin of an absolute `http://` or `https://` URI; a missing port is the scheme's
    /// default, a malformed one an error.
    pub fn from_uri(uri: &http::Uri) -> Result<Origin, OriginError> {
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(_) => return Err(OriginError::Scheme),
            None => return Err(OriginError::NotAbsolute),
        };
        let authority = uri.authority().ok_or(OriginError::NotAbsolute)?;
        let (host, port) = split_authority(authority)?;
        Ok(Origin {
            tls,
            host,
            port: port.unwrap_or(if tls { 443 } else { 80 }),
        })
    }

    /// The origin a CONNECT request names: `host:port`, the port required.
    pub fn from_connect(authority: &http::uri::Authority) -> Result<Origin, OriginError> {
        let (host, port) = split_authority(authority)?;
        Ok(Origin {
            tls: true,
            host,
            port: port.ok_or(OriginError::NoPort)?,
        })
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// `host[:port]`, leaving out the scheme's default port as URIs conventionally do.
    pub fn authority(&self) -> String {
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            self.host.to_string()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme(), self.authority())
    }
}

/// Host and explicit port of an authority. The `http` crate reads a malformed port as no
/// port at all, so the port text is checked here.
fn split_authority(authority: &http::uri::Authority) -> Result<(Host, Option<u16>), OriginError> {
    let text = authority.as_str();
    if text.contains('@') {
        return Err(OriginError::UserInfo);
    }
    let host = Host::parse(authority.host()).map_err(|_| OriginError::Host)?;
    let after_host = text.rsplit_once(']').map_or(text, |(_, rest)| rest);
    let port = match after_host.rsplit_once(':') {
        None => None,
        // `u16::from_str` would also take "+80".
        Some((_, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            match port.parse::<u16>() {
                Ok(0) | Err(_) => return Err(OriginError::Port),
                Ok(port) => Some(port),
            }
        }
        Some(_) => return Err(OriginError::Port),
    };
    Ok((host, port))
}

/// One route: where its requests go and the token they carry.
#[derive(Debug)]
pub struct Route {
    /// Position in the file's `routes` list, for logs and errors.
    pub index: usize,
    /// Plain `http://` requests for this route travel upstream over TLS.
    pub upstream_tls: bool,
    pub minter: Arc<Minter>,
}

/// What happens to a request that matches no route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmatched {
    /// Refuse with 403.
    Deny,
    /// Send it on unchanged, without a token.
    Forward,
}

#[derive(Debug, Default)]
pub struct Tls {
    /// Extra roots trusted for upstream TLS, besides the system store.
    pub ca_file: Option<PathBuf>,
    /// The certificates read from `ca_file`.
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the TCP connection (and TLS handshake) to an upstream.
    pub connect: Duration,
    /// From sending the request upstream to receiving the response head.
    pub response: Duration,
    /// For a client to send a complete request head.
    pub request_header: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            response: Duration::from_secs(60),
            request_header: Duration::from_secs(30),
        }
    }
}

/// Reads, checks and resolves a configuration file.
pub fn load(path: &Path) -> Result<Config, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error {
        file: path.to_owned(),
        position: None,
        key: None,
        message: format!("cannot read the file: {e}"),
    })?;
    let mut config = parse(&text, path)?;
    config.fingerprint = fingerprint(path, &config.files);
    Ok(config)
}

/// A digest of the configuration and every file it names (directories by their entries).
pub fn fingerprint(path: &Path, files: &[PathBuf]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for file in std::iter::once(path).chain(files.iter().map(PathBuf::as_path)) {
        hash.update(file.as_os_str().as_encoded_bytes());
        if let Ok(entries) = std::fs::read_dir(file) {
            let mut names: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            names.sort();
            for name in names {
                hash.update(name.as_os_str().as_encoded_bytes());
                hash.update(std::fs::read(&name).unwrap_or_default());
            }
        } else {
            hash.update(std::fs::read(file).unwrap_or_default());
        }
    }
    hash.finalize().into()
}

/// Checks and resolves configuration text that `${NAME}` references must not touch, such
/// as one made from environment values. `label` names it in errors.
pub fn parse_text(text: &str, label: &Path) -> Result<Config, Error> {
    let file = resolve::read_yaml(text, label)?;
    resolve::resolve(file, label)
}

/// Checks and resolves configuration text; `path` names it in errors and anchors relative
/// paths in it.
pub fn parse(text: &str, path: &Path) -> Result<Config, Error> {
    let text =
        expand_env(text, |name| std::env::var(name).ok()).map_err(|(position, message)| Error {
            file: path.to_owned(),
            position: Some(position),
            key: None,
            message,
        })?;
    let file = resolve::read_yaml(&text, path)?;
    resolve::resolve(file, path)
}

/// Replaces `${NAME}` with the environment variable `NAME`; `$${` stands for a literal
/// `${`. A variable that is not set is an error at its line and column.
fn expand_env(
    text: &str,
    var: impl Fn(&str) -> Option<String>,
) -> Result<String, ((u64, u64), String)> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        if rest[..at].ends_with('$') {
            out.push_str(&rest[..at]);
            out.push('{');
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let offset = text.len() - rest.len() + at;
        let before = &text[..offset];
        let line = before.matches('\n').count() as u64 + 1;
        let column = (before.len() - before.rfind('\n').map_or(0, |n| n + 1)) as u64 + 1;
        let end = rest[at..]
            .find('}')
            .ok_or(((line, column), "unterminated ${".to_owned()))?;
        let name = &rest[at + 2..at + end];
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err((
                (line, column),
                format!("${{{name}}} is not a variable name"),
            ));
        }
        let value = var(name).ok_or((
            (line, column),
            format!("the environment variable {name} is not set"),
        ))?;
        out.push_str(&value);
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A configuration error, located as precisely as the input allows. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    pub file: PathBuf,
    /// One-based line and column.
    pub position: Option<(u64, u64)>,
    /// Key path such as `routes[2].asap.kid`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_from_urls() {
        let ok = [
            ("http://a.test/x", "http://a.test", 80),
            ("https://A.TEST.:8443/", "https://a.test:8443", 8443),
            ("http://[::1]:8080/", "http://[::1]:8080", 8080),
            ("http://127.0.0.1", "http://127.0.0.1", 80),
        ];
        for (uri, display, port) in ok {
            let origin = Origin::from_uri(&uri.parse().expect("uri")).expect(uri);
            assert_eq!((origin.to_string().as_str(), origin.port), (display, port));
        }
        let bad = [
            ("ftp://a.test/", OriginError::Scheme),
            ("/path", OriginError::NotAbsolute),
            ("http://user:pw@a.test/", OriginError::UserInfo),
            ("http://a..test/", OriginError::Host),
            ("http://a.test:99999/", OriginError::Port),
            ("http://a.test:0/", OriginError::Port),
            ("http://a.test:/", OriginError::Port),
            ("http://[::1]:/", OriginError::Port),
            ("http://a.test:+80/", OriginError::Port),
        ];
        for (uri, want) in bad {
            assert_eq!(
                Origin::from_uri(&uri.parse().expect("uri")),
                Err(want),
                "{uri}"
            );
        }
    }

    #[test]
    fn environment_references_expand() {
        let env = |name: &str| (name == "PORT").then(|| "8443".to_owned());
        assert_eq!(
            expand_env("a: ${PORT}\nb: x${PORT}y", env).expect("ok"),
            "a: 8443\nb: x8443y"
        );
        assert_eq!(
            expand_env("a: $${PORT} $5", env).expect("ok"),
            "a: ${PORT} $5"
        );
        assert_eq!(
            expand_env("a: 1\nb: ${MISSING}", env),
            Err(((2, 4), "the environment variable MISSING is not set".into()))
        );
        assert_eq!(expand_env("a: ${1X}", env).map_err(|e| e.0), Err((1, 4)));
        assert_eq!(expand_env("a: ${OPEN", env).map_err(|e| e.0), Err((1, 4)));
    }

    #[test]
    fn connect_targets_need_a_port() {
        let authority = |a: &str| a.parse::<http::uri::Authority>().expect("authority");
        assert_eq!(
            Origin::from_connect(&authority("[::1]:443"))
                .expect("ok")
                .port,
            443
        );
        assert_eq!(
            Origin::from_connect(&authority("a.test")),
            Err(OriginError::NoPort)
        );
        assert_eq!(
            Origin::from_connect(&authority("a.test:70000")),
            Err(OriginError::Port)
        );
    }
}
