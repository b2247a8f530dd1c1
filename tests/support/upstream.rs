//! Mock upstreams on loopback: real HTTP servers (plain or TLS) that record what reached
//! them.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::TestCa;

pub type Body = BoxBody<Bytes, std::io::Error>;
type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// What one request looked like when it reached the upstream.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body_len: u64,
    /// The proxy's end of the connection the request came on.
    pub peer: SocketAddr,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ASCII header"))
            .collect()
    }
}

pub struct MockUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    shutdown: CancellationToken,
}

impl MockUpstream {
    /// An upstream that reads each request body whole (counting, not keeping it), records
    /// the request and answers with `respond`.
    pub async fn recording(
        respond: impl Fn(&Seen) -> Response<Body> + Send + Sync + 'static,
    ) -> MockUpstream {
        Self::recording_on(None, respond).await
    }

    /// The same over TLS, with a certificate from `ca` and the given ALPN protocols.
    pub async fn recording_tls(
        ca: &TestCa,
        alpn: &[&[u8]],
        respond: impl Fn(&Seen) -> Response<Body> + Send + Sync + 'static,
    ) -> MockUpstream {
        Self::recording_on(Some(TlsAcceptor::from(ca.server_config(alpn))), respond).await
    }

    async fn recording_on(
        tls: Option<TlsAcceptor>,
        respond: impl Fn(&Seen) -> Response<Body> + Send + Sync + 'static,
    ) -> MockUpstream {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let respond = Arc::new(respond);
        let handler: Handler = Arc::new(move |request: Request<Incoming>| {
            let record = record.clone();
            let respond = respond.clone();
            Box::pin(async move {
                let (parts, mut body) = request.into_parts();
                let mut body_len = 0u64;
                // A body cut short is recorded as far as it came.
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data() {
                        body_len += data.len() as u64;
                    }
                }
                let seen = Seen {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    version: parts.version,
                    headers: parts.headers,
                    body_len,
                    peer: *parts.extensions.get::<SocketAddr>().expect("peer address"),
                };
                let response = respond(&seen);
                record.lock().expect("lock").push(seen);
                response
            })
        });
        let mut upstream = Self::serve(tls, handler).await;
        upstream.seen = seen;
        upstream
    }

    /// An upstream driven by an arbitrary async handler.
    pub async fn with_handler<F, Fut>(handler: F) -> MockUpstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        Self::serve(None, Arc::new(move |r| Box::pin(handler(r)))).await
    }

    async fn serve(tls: Option<TlsAcceptor>, handler: Handler) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    accepted = listener.accept() => accepted.expect("accept"),
                    () = stop.cancelled() => return,
                };
                let handler = handler.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |mut r: Request<Incoming>| {
                        let handler = handler.clone();
                        r.extensions_mut().insert(peer);
                        async move { Ok::<_, Infallible>(handler(r).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(tls) => {
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        MockUpstream {
            addr,
            seen: Arc::new(Mutex::new(Vec::new())),
            shutdown,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    pub fn only_request(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(
            seen.len(),
            1,
            "expected exactly one request upstream, got {seen:?}"
        );
        seen.into_iter().next().expect("one request")
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A plain 200 with a short body.
pub fn ok(_: &Seen) -> Response<Body> {
    Response::new(full("upstream ok\n"))
}

pub fn status(code: u16, headers: &[(&str, &str)]) -> Response<Body> {
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::from_u16(code).expect("status");
    for (name, value) in headers {
        response.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            http::HeaderValue::from_str(value).expect("value"),
        );
    }
    response
}
