//! Route matching: which configured route, if any, a request's host, port and path select.
//!
//! Precedence, from strongest to weakest: an exact host beats any wildcard and a longer
//! wildcard beats a shorter one; then a route that names a port beats one that does not; then
//! the longest matching `path_prefix` wins. Two routes equal on all three are refused when the
//! table is built, so the choice never depends on the order of the file.

use std::fmt;
use std::net::IpAddr;

/// A normalised host: lowercase, no trailing dot, IP literals in canonical form without
/// brackets.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Host {
    name: String,
    /// The address, for IP literals: parsed once, asked for on every request.
    ip: Option<IpAddr>,
}

impl Host {
    /// Normalises a host as it appears in a URI authority (`Example.COM.`, `[::1]`).
    pub fn parse(raw: &str) -> Result<Host, HostError> {
        let unbracketed = raw
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(raw);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(Host {
                name: ip.to_string(),
                ip: Some(ip),
            });
        }
        let name = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(HostError::Invalid);
        }
        Ok(Host { name, ip: None })
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(_)) => write!(f, "[{}]", self.name),
            _ => f.write_str(&self.name),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    #[error("not a valid host name or IP address")]
    Invalid,
    #[error("not a valid port (1-65535)")]
    Port,
    #[error("a wildcard must be the whole first label, as in \"*.example.com\"")]
    Wildcard,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(Host),
    /// `*.example.com`: any name with at least one label in front of `example.com`.
    Subdomains(Host),
}

impl HostPattern {
    fn matches(&self, host: &Host) -> bool {
        match self {
            HostPattern::Exact(exact) => exact == host,
            HostPattern::Subdomains(parent) => {
                host.ip().is_none() && {
                    let name = host.as_str();
                    name.len() > parent.name.len() + 1
                        && name.ends_with(parent.as_str())
                        && name.as_bytes()[name.len() - parent.name.len() - 1] == b'.'
                }
            }
        }
    }

    /// Larger is more specific: exact hosts first, then wildcards by the labels they fix.
    fn specificity(&self) -> usize {
        match self {
            HostPattern::Exact(_) => usize::MAX,
            HostPattern::Subdomains(parent) => parent.as_str().split('.').count(),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(host) => host.fmt(f),
            HostPattern::Subdomains(parent) => write!(f, "*.{parent}"),
        }
    }
}

/// What a route selects on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub host: HostPattern,
    pub port: Option<u16>,
    pub path_prefix: Option<String>,
}

impl Rule {
    /// Parses a route's `host` key: `name`, `*.name`, `name:port`, `1.2.3.4:80`, `[::1]:8080`.
    pub fn parse_host(spec: &str) -> Result<(HostPattern, Option<u16>), HostError> {
        let (host, port) = split_host_port(spec)?;
        let pattern = match host.strip_prefix("*.") {
            Some(parent) => HostPattern::Subdomains(Host::parse(parent)?),
            None if host.contains('*') => return Err(HostError::Wildcard),
            None => HostPattern::Exact(Host::parse(host)?),
        };
        if let HostPattern::Subdomains(parent) = &pattern
            && parent.ip().is_some()
        {
            return Err(HostError::Wildcard);
        }
        Ok((pattern, port))
    }

    fn matches(&self, host: &Host, port: u16, path: &str) -> bool {
        self.host.matches(host)
            && self.port.is_none_or(|p| p == port)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|prefix| path_has_prefix(path, prefix))
    }

    fn precedence(&self) -> (usize, bool, usize) {
        (
            self.host.specificity(),
            self.port.is_some(),
            self.path_prefix.as_ref().map_or(0, String::len),
        )
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.host.fmt(f)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        if let Some(prefix) = &self.path_prefix {
            f.write_str(prefix)?;
        }
        Ok(())
    }
}

/// Splits `host[:port]`, keeping IPv6 literals whole (`[::1]:80`, or a bare `::1`).
fn split_host_port(spec: &str) -> Result<(&str, Option<u16>), HostError> {
    let parse_port = |p: &str| match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(HostError::Port),
        Ok(port) => Ok(Some(port)),
    };
    if let Some(rest) = spec.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or(HostError::Invalid)?;
        return match after {
            "" => Ok((&spec[..inside.len() + 2], None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((&spec[..inside.len() + 2], parse_port(port)?)),
                None => Err(HostError::Invalid),
            },
        };
    }
    match spec.rsplit_once(':') {
        // More than one colon and no brackets: a bare IPv6 address.
        Some((host, _)) if host.contains(':') => Ok((spec, None)),
        Some((host, port)) => Ok((host, parse_port(port)?)),
        None => Ok((spec, None)),
    }
}

/// A prefix matches whole path segments: `/v2` matches `/v2` and `/v2/users`, not `/v20`.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?']),
        None => false,
    }
}

/// Whether a path has `.` or `..` segments, also when percent-encoded or separated by
/// backslashes. Upstreams resolve them, so `/public/../admin` would reach `/admin` with the
/// token of a route for `/public`: such paths are refused rather than matched.
pub fn has_dot_segments(path: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    decoded
        .split(['/', '\\'])
        .any(|segment| segment == "." || segment == "..")
}

/// The routes of a configuration, each with what the caller attaches to it.
#[derive(Debug)]
pub struct Table<T> {
    routes: Vec<(Rule, T)>,
}

/// Two routes that select exactly the same requests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("route {second} selects the same requests as route {first} ({rule})")]
pub struct Conflict {
    pub first: usize,
    pub second: usize,
    pub rule: String,
}

impl<T> Table<T> {
    pub fn new(routes: Vec<(Rule, T)>) -> Result<Table<T>, Conflict> {
        for (second, (rule, _)) in routes.iter().enumerate() {
            if let Some(first) = routes[..second].iter().position(|(r, _)| r == rule) {
                return Err(Conflict {
                    first,
                    second,
                    rule: rule.to_string(),
                });
            }
        }
        Ok(Table { routes })
    }

    /// The most specific route for a request to `host:port` with this path.
    pub fn find(&self, host: &Host, port: u16, path: &str) -> Option<&T> {
        self.routes
            .iter()
            .filter(|(rule, _)| rule.matches(host, port, path))
            .max_by_key(|(rule, _)| rule.precedence())
            .map(|(_, target)| target)
    }

    /// Whether any route selects requests to `host:port`, whatever their path. A CONNECT
    /// tunnel hides the paths, so this decides whether to open it.
    pub fn covers(&self, host: &Host, port: u16) -> bool {
        self.routes
            .iter()
            .any(|(rule, _)| rule.host.matches(host) && rule.port.is_none_or(|p| p == port))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Rule, &T)> {
        self.routes.iter().map(|(rule, target)| (rule, target))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(host: &str, path_prefix: Option<&str>) -> Rule {
        let (host, port) = Rule::parse_host(host).expect("valid host in test");
        Rule {
            host,
            port,
            path_prefix: path_prefix.map(str::to_owned),
        }
    }

    fn table() -> Table<&'static str> {
        Table::new(vec![
            (rule("api.example.com", None), "exact"),
            (rule("api.example.com:8443", None), "exact-port"),
            (rule("api.example.com", Some("/v2")), "exact-v2"),
            (rule("*.example.com", None), "wild"),
            (rule("*.internal.example.com", None), "wild-longer"),
            (
                rule("*.internal.example.com", Some("/admin/")),
                "wild-longer-admin",
            ),
            (rule("127.0.0.1", None), "v4"),
            (rule("[::1]:8080", None), "v6-port"),
        ])
        .expect("no conflicts")
    }

    #[test]
    fn precedence_and_matching() {
        let table = table();
        let cases: &[(&str, u16, &str, Option<&str>)] = &[
            ("api.example.com", 80, "/", Some("exact")),
            ("API.Example.COM.", 80, "/", Some("exact")),
            ("api.example.com", 8443, "/", Some("exact-port")),
            // With the host tied, a named port outranks a path prefix.
            ("api.example.com", 8443, "/v2/x", Some("exact-port")),
            ("api.example.com", 80, "/v2", Some("exact-v2")),
            ("api.example.com", 80, "/v2?q=1", Some("exact-v2")),
            ("api.example.com", 80, "/v20", Some("exact")),
            ("www.example.com", 443, "/", Some("wild")),
            ("a.b.example.com", 80, "/", Some("wild")),
            ("db.internal.example.com", 80, "/", Some("wild-longer")),
            (
                "db.internal.example.com",
                80,
                "/admin/users",
                Some("wild-longer-admin"),
            ),
            ("db.internal.example.com", 80, "/admin", Some("wild-longer")),
            ("example.com", 80, "/", None),
            ("badexample.com", 80, "/", None),
            ("internal.example.com", 80, "/", Some("wild")),
            ("127.0.0.1", 80, "/", Some("v4")),
            ("[::1]", 8080, "/", Some("v6-port")),
            ("[0:0::1]", 8080, "/", Some("v6-port")),
            ("[::1]", 80, "/", None),
            ("other.test", 80, "/", None),
        ];
        for &(host, port, path, want) in cases {
            let host = Host::parse(host).expect("valid request host");
            assert_eq!(
                table.find(&host, port, path).copied(),
                want,
                "{host}:{port}{path}"
            );
        }
    }

    #[test]
    fn covers_ignores_paths() {
        let table = table();
        let host = |h| Host::parse(h).expect("valid");
        assert!(table.covers(&host("db.internal.example.com"), 443));
        assert!(table.covers(&host("api.example.com"), 8443));
        assert!(table.covers(&host("::1"), 8080));
        assert!(!table.covers(&host("::1"), 443));
        assert!(!table.covers(&host("example.com"), 443));
    }

    #[test]
    fn port_beats_no_port_for_same_host() {
        let table = Table::new(vec![
            (rule("svc.test", Some("/api")), "prefix"),
            (rule("svc.test:80", None), "port"),
        ])
        .expect("no conflicts");
        let host = Host::parse("svc.test").expect("valid");
        assert_eq!(table.find(&host, 80, "/api/x"), Some(&"port"));
        assert_eq!(table.find(&host, 81, "/api/x"), Some(&"prefix"));
    }

    #[test]
    fn host_specs() {
        let ok: &[(&str, &str, Option<u16>)] = &[
            ("Api.Example.com.", "api.example.com", None),
            ("api.example.com:8443", "api.example.com", Some(8443)),
            ("*.example.com", "*.example.com", None),
            ("*.example.com:443", "*.example.com", Some(443)),
            ("10.0.0.1:80", "10.0.0.1", Some(80)),
            ("[::1]", "[::1]", None),
            ("[::1]:8080", "[::1]", Some(8080)),
            ("::1", "[::1]", None),
            ("[0:0:0:0:0:0:0:1]", "[::1]", None),
        ];
        for &(spec, host, port) in ok {
            let (pattern, got_port) = Rule::parse_host(spec).expect(spec);
            assert_eq!(
                (pattern.to_string().as_str(), got_port),
                (host, port),
                "{spec}"
            );
        }
        let bad: &[(&str, HostError)] = &[
            ("", HostError::Invalid),
            ("a..b", HostError::Invalid),
            ("exa mple.com", HostError::Invalid),
            ("host:0", HostError::Port),
            ("host:99999", HostError::Port),
            ("host:http", HostError::Port),
            ("api.*.example.com", HostError::Wildcard),
            ("*example.com", HostError::Wildcard),
            ("*.10.0.0.1", HostError::Wildcard),
            ("[::1", HostError::Invalid),
            ("[::1]x", HostError::Invalid),
        ];
        for (spec, want) in bad {
            assert_eq!(
                Rule::parse_host(spec).err().as_ref(),
                Some(want),
                "{spec:?}"
            );
        }
    }

    #[test]
    fn dot_segments_in_any_spelling() {
        for path in [
            "/a/../b",
            "/..",
            "/a/./b",
            "/a/%2e%2E/b",
            "/a/%2E/b",
            "/a\\..\\b",
            "/a/..%2fb",
            "/a/.%2e",
        ] {
            assert!(has_dot_segments(path), "{path}");
        }
        for path in [
            "/",
            "/a/b",
            "/a..b",
            "/.well-known/x",
            "/a/...",
            "/%2e%2e%2e",
        ] {
            assert!(!has_dot_segments(path), "{path}");
        }
    }

    #[test]
    fn duplicate_rules_conflict() {
        let err = Table::new(vec![
            (rule("a.test", None), 0),
            (rule("b.test", None), 1),
            (rule("A.TEST.", None), 2),
        ])
        .expect_err("a.test twice");
        assert_eq!((err.first, err.second), (0, 2));
    }
}
