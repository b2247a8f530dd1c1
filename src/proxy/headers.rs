//! Header rules for both directions: hop-by-hop removal, `Via`, and the upstream `Host`.

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1), plus the
/// proxy's own credentials and the obsolete `Proxy-Connection`.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including every header named by any `Connection` line.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// This proxy's `Via` entries (RFC 9110 section 7.6.3), one per protocol version, made
/// once rather than for every message.
#[derive(Clone, Debug)]
pub struct Via {
    pseudonym: String,
    http10: HeaderValue,
    http11: HeaderValue,
    http2: HeaderValue,
    http3: HeaderValue,
}

impl Via {
    /// `pseudonym` must be a header-safe token, such as `asap-proxy-0a1b2c3d`.
    pub fn new(pseudonym: String) -> Via {
        let entry = |protocol: &str| {
            HeaderValue::try_from(format!("{protocol} {pseudonym}"))
                .unwrap_or(HeaderValue::from_static("1.1 asap-proxy"))
        };
        Via {
            http10: entry("1.0"),
            http11: entry("1.1"),
            http2: entry("2"),
            http3: entry("3"),
            pseudonym,
        }
    }

    pub fn pseudonym(&self) -> &str {
        &self.pseudonym
    }

    /// Appends this proxy's entry for a message received over `version`, keeping earlier ones.
    pub fn append(&self, headers: &mut HeaderMap, version: Version) {
        let entry = match version {
            Version::HTTP_10 => &self.http10,
            Version::HTTP_2 => &self.http2,
            Version::HTTP_3 => &self.http3,
            _ => &self.http11,
        };
        headers.append(header::VIA, entry.clone());
    }
}

/// Whether any `Via` entry was added by the proxy named `pseudonym`: a request that has
/// been through this proxy before is in a loop.
pub fn via_names(headers: &HeaderMap, pseudonym: &str) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|entry| entry.split_whitespace().nth(1))
        .any(|received_by| received_by.eq_ignore_ascii_case(pseudonym))
}

/// Sets `Host` to the upstream authority, replacing any value the client sent.
pub fn set_host(
    headers: &mut HeaderMap,
    authority: &str,
) -> Result<(), http::header::InvalidHeaderValue> {
    headers.insert(header::HOST, HeaderValue::from_str(authority)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("valid name"),
                HeaderValue::from_str(value).expect("valid value"),
            );
        }
        headers
    }

    fn names(headers: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn removes_fixed_and_connection_named_headers() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "x-other-hop"),
            ("x-secret-hop", "1"),
            ("x-other-hop", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic dXNlcjpwYXNz"),
            ("proxy-authenticate", "Basic"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
            ("x-end-to-end", "kept"),
        ]);
        remove_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["accept", "x-end-to-end"]);
    }

    #[test]
    fn connection_tokens_tolerate_spaces_and_junk() {
        let mut headers = map(&[
            ("connection", " ,x-a ,, bad header ,"),
            ("x-a", "1"),
            ("x-b", "2"),
        ]);
        remove_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["x-b"]);
    }

    #[test]
    fn via_appends() {
        let mut headers = map(&[("via", "1.0 fred")]);
        Via::new("asap-proxy".to_owned()).append(&mut headers, Version::HTTP_11);
        let vias: Vec<_> = headers.get_all(header::VIA).iter().collect();
        assert_eq!(vias, ["1.0 fred", "1.1 asap-proxy"]);
    }

    #[test]
    fn via_loop_detection() {
        let headers = map(&[
            ("via", "1.0 fred, 1.1 asap-proxy-0a0b0c0d (comment)"),
            ("via", "2 other"),
        ]);
        assert!(via_names(&headers, "asap-proxy-0a0b0c0d"));
        assert!(!via_names(&headers, "asap-proxy-ffffffff"));
        assert!(!via_names(&headers, "fred "));
        assert!(!via_names(&map(&[]), "asap-proxy-0a0b0c0d"));
    }
}
