//! Why a request failed, whose fault it was, and the response the client gets for it.
//!
//! Every failure the proxy itself answers carries a `Proxy-Status` header (RFC 9209) naming
//! the error type, and a short plain-text body. Messages never contain a secret.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

use super::body::{self, Body};

/// Name this proxy uses for itself in `Proxy-Status`.
pub const PROXY_NAME: &str = "asap-proxy";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("this client address may not use the proxy")]
    ClientAddress,
    #[error("proxy authentication required")]
    ProxyAuthentication,
    #[error("loop detected: the request has already passed through this proxy")]
    Loop,
    #[error("bad request: the request body could not be read")]
    RequestBody,
    #[error("bad request target: {0}")]
    BadTarget(#[from] crate::config::OriginError),
    #[error("no route for {0} and unmatched requests are denied")]
    Unmatched(String),
    #[error("CONNECT to port {0} is not allowed: the port is not in connect_ports")]
    PortNotAllowed(u16),
    #[error(
        "{0} is routed, so its requests must carry a token, but TLS interception is not \
         configured: add an `intercept` section with a CA (`asap-proxy ca init` makes one), or \
         send http:// requests to a route with upstream_tls: true"
    )]
    NotIntercepted(String),
    #[error("cannot intercept TLS for {host}: {reason}")]
    Intercept { host: String, reason: String },
    #[error("{0}")]
    Destination(#[from] crate::destination::Denied),
    #[error("the token for route {route} could not be minted")]
    Mint { route: usize },
    #[error("upstream {authority} could not be reached: {reason}")]
    Connect { authority: String, reason: String },
    #[error("TLS with upstream {authority} failed: {reason}")]
    Tls { authority: String, reason: String },
    #[error("upstream {authority} presented an untrusted certificate: {reason}")]
    TlsCertificate { authority: String, reason: String },
    #[error("upstream {authority} did not connect in time")]
    ConnectTimeout { authority: String },
    #[error("upstream {authority} did not respond in time")]
    ResponseTimeout { authority: String },
    #[error("upstream {authority} failed: {reason}")]
    Upstream { authority: String, reason: String },
}

impl Error {
    /// Classifies a failed upstream exchange by walking the error's causes.
    pub fn from_upstream(authority: &str, err: &hyper_util::client::legacy::Error) -> Error {
        let authority = authority.to_owned();
        let mut reason = None;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
        if let Some(denied) = crate::destination::find_denied(err) {
            return Error::Destination(*denied);
        }
        while let Some(e) = cause {
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                let reason = tls.to_string();
                return match tls {
                    rustls::Error::InvalidCertificate(_) => {
                        Error::TlsCertificate { authority, reason }
                    }
                    _ => Error::Tls { authority, reason },
                };
            }
            if e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_user)
            {
                // The request body we were streaming from the client failed.
                return Error::RequestBody;
            }
            reason = Some(e.to_string());
            cause = match e.downcast_ref::<std::io::Error>() {
                Some(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                    return Error::ConnectTimeout { authority };
                }
                // Only a TLS handshake reads while connecting.
                Some(io) if io.kind() == std::io::ErrorKind::UnexpectedEof && err.is_connect() => {
                    let reason =
                        "the upstream closed the connection during the TLS handshake".to_owned();
                    return Error::Tls { authority, reason };
                }
                // An I/O error's `source` skips the error it wraps; look at that one itself.
                Some(io) => match io.get_ref() {
                    Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                    None => None,
                },
                None => e.source(),
            };
        }
        let reason = reason.unwrap_or_else(|| err.to_string());
        if err.is_connect() {
            Error::Connect { authority, reason }
        } else {
            Error::Upstream { authority, reason }
        }
    }

    /// The reason counted in the denials metric, for refusals made on purpose.
    pub fn denial(&self) -> Option<&'static str> {
        Some(match self {
            Error::Unmatched(_) => "unmatched",
            Error::ClientAddress => "client_address",
            Error::ProxyAuthentication => "client_credentials",
            Error::Destination(_) => "destination",
            Error::PortNotAllowed(_) => "connect_port",
            Error::NotIntercepted(_) => "not_intercepted",
            Error::Loop => "loop",
            _ => return None,
        })
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) | Error::BadTarget(_) | Error::RequestBody => {
                StatusCode::BAD_REQUEST
            }
            Error::Unmatched(_)
            | Error::PortNotAllowed(_)
            | Error::NotIntercepted(_)
            | Error::ClientAddress
            | Error::Destination(_) => StatusCode::FORBIDDEN,
            Error::ProxyAuthentication => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Error::Loop => StatusCode::LOOP_DETECTED,
            Error::Intercept { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Mint { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Connect { .. }
            | Error::Tls { .. }
            | Error::TlsCertificate { .. }
            | Error::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Error::ConnectTimeout { .. } | Error::ResponseTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    /// The RFC 9209 error type.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadRequest(_) | Error::BadTarget(_) | Error::RequestBody => "http_request_error",
            Error::Unmatched(_)
            | Error::PortNotAllowed(_)
            | Error::NotIntercepted(_)
            | Error::ClientAddress
            | Error::ProxyAuthentication => "http_request_denied",
            Error::Loop => "proxy_loop_detected",
            Error::Destination(_) => "destination_ip_prohibited",
            Error::Intercept { .. } => "proxy_internal_error",
            Error::Mint { .. } => "proxy_internal_error",
            Error::Connect { .. } => "destination_unavailable",
            Error::Tls { .. } => "tls_protocol_error",
            Error::TlsCertificate { .. } => "tls_certificate_error",
            Error::ConnectTimeout { .. } => "connection_timeout",
            Error::ResponseTimeout { .. } => "http_response_timeout",
            Error::Upstream { .. } => "http_protocol_error",
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let details = self.to_string();
        let proxy_status = format!(
            "{PROXY_NAME}; error={}; details={}",
            self.kind(),
            quoted_string(&details)
        );
        let mut response = Response::new(body::full(Bytes::from(format!("{details}\n"))));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Ok(value) = HeaderValue::from_str(&proxy_status) {
            headers.insert("proxy-status", value);
        }
        if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            let challenge = format!(
                "Basic realm=\"{}\", charset=\"UTF-8\"",
                crate::clients::REALM
            );
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                headers.insert(http::header::PROXY_AUTHENTICATE, value);
            }
        }
        response
    }
}

/// An RFC 8941 sf-string: printable ASCII with `"` and `\` escaped.
fn quoted_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_status_and_type() {
        let authority = || "api.test:443".to_owned();
        let reason = || "why".to_owned();
        let cases = [
            (Error::BadRequest("bad"), 400, "http_request_error"),
            (Error::RequestBody, 400, "http_request_error"),
            (Error::Unmatched(authority()), 403, "http_request_denied"),
            (Error::Mint { route: 3 }, 500, "proxy_internal_error"),
            (Error::PortNotAllowed(22), 403, "http_request_denied"),
            (Error::ClientAddress, 403, "http_request_denied"),
            (Error::ProxyAuthentication, 407, "http_request_denied"),
            (Error::Loop, 508, "proxy_loop_detected"),
            (
                Error::NotIntercepted(authority()),
                403,
                "http_request_denied",
            ),
            (
                Error::Intercept {
                    host: authority(),
                    reason: reason(),
                },
                500,
                "proxy_internal_error",
            ),
            (
                Error::Connect {
                    authority: authority(),
                    reason: reason(),
                },
                502,
                "destination_unavailable",
            ),
            (
                Error::Tls {
                    authority: authority(),
                    reason: reason(),
                },
                502,
                "tls_protocol_error",
            ),
            (
                Error::TlsCertificate {
                    authority: authority(),
                    reason: reason(),
                },
                502,
                "tls_certificate_error",
            ),
            (
                Error::Upstream {
                    authority: authority(),
                    reason: reason(),
                },
                502,
                "http_protocol_error",
            ),
            (
                Error::ConnectTimeout {
                    authority: authority(),
                },
                504,
                "connection_timeout",
            ),
            (
                Error::ResponseTimeout {
                    authority: authority(),
                },
                504,
                "http_response_timeout",
            ),
        ];
        for (error, status, kind) in cases {
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status);
            let proxy_status = response.headers()["proxy-status"].to_str().expect("ascii");
            assert!(
                proxy_status.starts_with(&format!("asap-proxy; error={kind}; details=")),
                "{proxy_status}"
            );
            assert_eq!(
                response.headers()[CONTENT_TYPE],
                "text/plain; charset=utf-8"
            );
        }
    }

    #[test]
    fn proxy_status_is_a_structured_field() {
        let response = Error::Connect {
            authority: "api.test:443".into(),
            reason: "connection refused \"quoted\" \u{e9}".into(),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let value = response.headers()["proxy-status"].to_str().expect("ascii");
        assert_eq!(
            value,
            "asap-proxy; error=destination_unavailable; details=\"upstream api.test:443 could not be \
             reached: connection refused \\\"quoted\\\" ?\""
        );
    }
}
