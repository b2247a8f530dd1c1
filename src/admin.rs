//! The admin listener: liveness and readiness probes and the Prometheus scrape endpoint.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::metrics::{self, Metrics};

/// How long a client may take to send a request head, and how long a kept-alive connection
/// may sit idle between requests.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long requests in flight at shutdown get to finish. Every answer is computed in
/// memory, so only a client that reads very slowly can use it up.
const DRAIN: Duration = Duration::from_secs(5);

const TEXT: &str = "text/plain; charset=utf-8";

/// What the admin endpoints report: the proxy's metrics and whether it is ready for traffic.
#[derive(Debug)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
}

impl AdminState {
    /// A state that reports not ready until [`AdminState::set_ready`] says otherwise.
    pub fn new(metrics: Arc<Metrics>) -> AdminState {
        AdminState {
            metrics,
            ready: AtomicBool::new(false),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` completes, then stops
/// accepting and lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, state, shutdown, HEADER_READ_TIMEOUT).await
}

/// [`serve`] with the request head timeout as a parameter, so a test need not wait for
/// the real one.
async fn serve_with(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()>,
    header_read_timeout: Duration,
) {
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, "admin listener ready"),
        Err(_) => tracing::info!("admin listener ready"),
    }
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = crate::server::accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        let state = state.clone();
        let service = service_fn(move |request| {
            let response = respond(&state, &request);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(
            async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "admin connection ended with an error");
                }
            }
            .instrument(tracing::debug_span!("admin_connection", %peer)),
        );
    }

    drop(listener);
    tracing::info!("admin listener draining connections");
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?DRAIN,
            "admin drain deadline passed, closing remaining connections"
        );
    }
}

fn respond<B>(state: &AdminState, request: &Request<B>) -> Response<Full<Bytes>> {
    let method = request.method();
    // Only the path: a query string may carry anything and never reaches the log.
    let path = request.uri().path();
    let response = if !matches!(path, "/livez" | "/readyz" | "/metrics") {
        text(StatusCode::NOT_FOUND, "not found\n")
    } else if method != Method::GET && method != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        response
    } else {
        // hyper sends the head of a HEAD answer, Content-Length included, without its body.
        match path {
            "/livez" => text(StatusCode::OK, "ok\n"),
            "/readyz" if state.is_ready() => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            _ => body(
                StatusCode::OK,
                metrics::CONTENT_TYPE,
                state.metrics.render().into(),
            ),
        }
    };
    tracing::debug!(%method, path, status = response.status().as_u16(), "admin request");
    response
}

fn text(status: StatusCode, message: &'static str) -> Response<Full<Bytes>> {
    body(status, TEXT, Bytes::from_static(message.as_bytes()))
}

fn body(status: StatusCode, content_type: &'static str, bytes: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Probes and scrapes must see the live answer, never a cached one.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::SocketAddr;
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    const DEADLINE: Duration = Duration::from_secs(10);

    struct Admin {
        addr: SocketAddr,
        state: Arc<AdminState>,
        stop: oneshot::Sender<()>,
        task: JoinHandle<()>,
    }

    async fn start() -> Admin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(AdminState::new(Arc::new(Metrics::new())));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, state.clone(), async {
            let _ = stopped.await;
        }));
        Admin {
            addr,
            state,
            stop,
            task,
        }
    }

    #[derive(Debug)]
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    fn parse(raw: &[u8]) -> Answer {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(raw).expect("a valid response head") {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => panic!("partial response: {raw:?}"),
        };
        Answer {
            status: response.code.expect("a status"),
            headers: response
                .headers
                .iter()
                .map(|h| {
                    let value = String::from_utf8(h.value.to_vec()).expect("ascii header");
                    (h.name.to_owned(), value)
                })
                .collect(),
            body: String::from_utf8(raw[head..].to_vec()).expect("utf-8 body"),
        }
    }

    /// Sends one request on a fresh connection that the server closes after answering.
    async fn exchange(addr: SocketAddr, method: &str, target: &str) -> Answer {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request =
            format!("{method} {target} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut raw = Vec::new();
        tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
            .await
            .expect("answer in time")
            .expect("read answer");
        parse(&raw)
    }

    async fn get(addr: SocketAddr, target: &str) -> Answer {
        exchange(addr, "GET", target).await
    }

    #[tokio::test]
    async fn livez_is_always_ok() {
        let admin = start().await;
        let answer = get(admin.addr, "/livez").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "ok\n");
        assert_eq!(answer.header("content-type"), Some(TEXT));
        assert_eq!(answer.header("cache-control"), Some("no-store"));
    }

    #[tokio::test]
    async fn readyz_follows_the_ready_flag() {
        let admin = start().await;
        assert!(!admin.state.is_ready());
        let answer = get(admin.addr, "/readyz").await;
        assert_eq!((answer.status, answer.body.as_str()), (503, "not ready\n"));

        admin.state.set_ready(true);
        let answer = get(admin.addr, "/readyz").await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "ready\n"));

        admin.state.set_ready(false);
        assert_eq!(get(admin.addr, "/readyz").await.status, 503);
    }

    #[tokio::test]
    async fn metrics_are_scraped() {
        let admin = start().await;
        let metrics = &admin.state.metrics;
        metrics.request(Some(0), &Method::GET, StatusCode::OK);
        metrics.upstream_latency(Some(0), Duration::from_millis(12));
        metrics.token(0, "ES256", "reused");
        metrics.signing_failure(0);
        metrics.upstream_error("destination_unavailable");
        metrics.denial("client_address");
        let connection = metrics.connection_opened("forward");
        let tunnel = metrics.tunnel_opened("tunnel");
        metrics.config_reload(false);
        let loaded = Instant::now()
            .checked_sub(Duration::from_secs(2))
            .expect("the monotonic clock is more than two seconds past its origin");
        metrics.set_key_loaded("svc/k1", loaded);

        let answer = get(admin.addr, "/metrics?name[]=ignored").await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let lines: Vec<&str> = answer.body.lines().collect();
        for expected in [
            r#"asap_proxy_requests_total{method_class="safe",route="0",status="200"} 1"#,
            r#"asap_proxy_upstream_latency_seconds_bucket{route="0",le="0.01"} 0"#,
            r#"asap_proxy_upstream_latency_seconds_bucket{route="0",le="0.025"} 1"#,
            r#"asap_proxy_upstream_latency_seconds_bucket{route="0",le="+Inf"} 1"#,
            r#"asap_proxy_tokens_total{algorithm="ES256",provenance="reused",route="0"} 1"#,
            r#"asap_proxy_signing_failures_total{route="0"} 1"#,
            r#"asap_proxy_upstream_errors_total{kind="destination_unavailable"} 1"#,
            r#"asap_proxy_denials_total{reason="client_address"} 1"#,
            r#"asap_proxy_open_connections{listener="forward"} 1"#,
            r#"asap_proxy_open_tunnels{kind="tunnel"} 1"#,
            r#"asap_proxy_config_reloads_total{result="failure"} 1"#,
        ] {
            assert!(
                lines.contains(&expected),
                "missing {expected:?} in\n{}",
                answer.body
            );
        }
        let age: f64 = lines
            .iter()
            .find_map(|l| l.strip_prefix(r#"asap_proxy_key_age_seconds{kid="svc/k1"} "#))
            .expect("key age reported")
            .parse()
            .expect("a number");
        assert!(age >= 2.0, "{age}");

        drop(connection);
        drop(tunnel);
        let answer = get(admin.addr, "/metrics").await;
        let lines: Vec<&str> = answer.body.lines().collect();
        assert!(lines.contains(&r#"asap_proxy_open_connections{listener="forward"} 0"#));
        assert!(lines.contains(&r#"asap_proxy_open_tunnels{kind="tunnel"} 0"#));
    }

    #[tokio::test]
    async fn head_answers_without_a_body() {
        let admin = start().await;
        admin.state.metrics.denial("loop");
        for path in ["/livez", "/readyz", "/metrics"] {
            let full = get(admin.addr, path).await;
            let head = exchange(admin.addr, "HEAD", path).await;
            assert_eq!(head.status, full.status, "{path}");
            assert_eq!(head.body, "", "{path}");
            assert_eq!(head.header("content-type"), full.header("content-type"));
            assert_eq!(
                head.header("content-length"),
                Some(full.body.len().to_string().as_str()),
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn unknown_paths_are_not_found() {
        let admin = start().await;
        for (method, target) in [
            ("GET", "/"),
            ("GET", "/metrics/"),
            ("GET", "/livez/extra"),
            ("POST", "/nope"),
        ] {
            let answer = exchange(admin.addr, method, target).await;
            assert_eq!(answer.status, 404, "{method} {target}");
            assert_eq!(answer.header("allow"), None);
        }
    }

    #[tokio::test]
    async fn other_methods_are_not_allowed() {
        let admin = start().await;
        for (method, path) in [
            ("POST", "/metrics"),
            ("PUT", "/livez"),
            ("DELETE", "/readyz"),
            ("OPTIONS", "/metrics"),
        ] {
            let answer = exchange(admin.addr, method, path).await;
            assert_eq!(answer.status, 405, "{method} {path}");
            assert_eq!(answer.header("allow"), Some("GET, HEAD"), "{method} {path}");
        }
    }

    #[tokio::test]
    async fn keep_alive_serves_several_requests() {
        let admin = start().await;
        let mut stream = TcpStream::connect(admin.addr).await.expect("connect");
        let two = "GET /livez HTTP/1.1\r\nHost: admin\r\n\r\n\
                   GET /livez HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
        stream.write_all(two.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
            .await
            .expect("answers in time")
            .expect("read answers");
        let raw = String::from_utf8(raw).expect("utf-8");
        assert_eq!(raw.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{raw}");
    }

    #[tokio::test]
    async fn shutdown_finishes_a_request_in_flight_then_stops() {
        let admin = start().await;

        // An idle kept-alive connection must not hold up the shutdown.
        let mut idle = TcpStream::connect(admin.addr).await.expect("connect");
        idle.write_all(b"GET /livez HTTP/1.1\r\nHost: admin\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 512];
        let n = idle.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));

        // A request whose head is half sent when the shutdown begins.
        let mut busy = TcpStream::connect(admin.addr).await.expect("connect");
        busy.write_all(b"GET /readyz HTTP/1.1\r\n")
            .await
            .expect("write");
        // Let the server read the first half before it is told to stop: a connection with
        // nothing read yet is closed at once, which is right but not what this tests.
        tokio::time::sleep(Duration::from_millis(300)).await;

        admin.stop.send(()).expect("server running");
        busy.write_all(b"Host: admin\r\n\r\n").await.expect("write");
        let mut raw = Vec::new();
        tokio::time::timeout(DEADLINE, busy.read_to_end(&mut raw))
            .await
            .expect("answer in time")
            .expect("read answer");
        assert_eq!(parse(&raw).status, 503);

        tokio::time::timeout(DEADLINE, admin.task)
            .await
            .expect("serve returns after draining")
            .expect("serve does not panic");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(DEADLINE, idle.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
        assert!(TcpStream::connect(admin.addr).await.is_err());
    }

    #[tokio::test]
    async fn silent_connections_are_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(AdminState::new(Arc::new(Metrics::new())));
        let timeout = Duration::from_millis(200);
        tokio::spawn(serve_with(listener, state, std::future::pending(), timeout));

        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let started = std::time::Instant::now();
        let mut raw = Vec::new();
        let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
            .await
            .expect("closed before the test deadline");
        // hyper may answer a head that never came with a 408 or just close; either will do.
        assert!(read.is_ok(), "{read:?}");
        assert!(
            raw.is_empty() || raw.starts_with(b"HTTP/1.1 408"),
            "{raw:?}"
        );
        assert!(started.elapsed() >= timeout);
    }
}
