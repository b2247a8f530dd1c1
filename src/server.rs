//! Listeners: accepting connections, serving them with the proxy pipeline, and draining on
//! shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use std::time::Instant;

use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::proxy::{Conn, Entry, PROXY_NAME, Proxy};

/// The listeners of a configuration, bound and ready to serve.
#[derive(Debug)]
pub struct Listeners {
    forward: Option<TcpListener>,
    reverse: Vec<(TcpListener, Entry)>,
}

impl Listeners {
    /// Binds every listener the configuration names; port 0 picks a free port.
    pub async fn bind(config: &Config) -> io::Result<Listeners> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
        };
        let forward = match config.listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let mut reverse = Vec::with_capacity(config.reverse.len());
        for r in &config.reverse {
            reverse.push((bind(r.listen).await?, Entry::Reverse(r.upstream.clone())));
        }
        Ok(Listeners { forward, reverse })
    }

    pub fn forward_addr(&self) -> Option<SocketAddr> {
        self.forward.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Every bound address.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = self.forward_addr().into_iter().collect();
        addrs.extend(self.reverse_addrs());
        addrs
    }

    pub fn reverse_addrs(&self) -> Vec<SocketAddr> {
        self.reverse
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }
}

/// Serves all listeners until `shutdown` is cancelled, then lets requests, tunnels and
/// intercepted connections in flight finish for up to `drain`.
pub async fn run(
    proxy: Arc<Proxy>,
    listeners: Listeners,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let mut tasks = tokio::task::JoinSet::new();
    let places = Arc::new(Semaphore::new(proxy.config().limits.max_connections));
    let all = listeners
        .forward
        .map(|l| (l, Entry::Forward))
        .into_iter()
        .chain(listeners.reverse);
    for (listener, entry) in all {
        let proxy = proxy.clone();
        let shutdown = shutdown.clone();
        let places = places.clone();
        tasks.spawn(async move {
            serve(
                listener,
                entry,
                proxy,
                places,
                shutdown.cancelled_owned(),
                drain,
            )
            .await
        });
    }
    shutdown.cancelled().await;
    let deadline = tokio::time::Instant::now() + drain;
    while tasks.join_next().await.is_some() {}
    // Tunnels and intercepted connections get what is left of the same deadline.
    let tunnels = proxy.tunnels();
    tunnels.close();
    if !tunnels.is_empty() {
        tracing::info!(open = tunnels.len(), "waiting for tunnels to close");
    }
    if tokio::time::timeout_at(deadline, tunnels.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tunnels.len(),
            "drain deadline passed, closing remaining tunnels"
        );
    }
}

/// Accepts connections on one listener and serves each in its own task.
/// `places` bounds the client connections open at once, over all listeners that share it.
pub async fn serve(
    listener: TcpListener,
    entry: Entry,
    proxy: Arc<Proxy>,
    places: Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let local = listener.local_addr().ok();
    let kind = match &entry {
        Entry::Forward => "forward",
        Entry::Reverse(_) | Entry::Intercepted(_) => "reverse",
    };
    match (&entry, local) {
        (Entry::Reverse(upstream), Some(addr)) => {
            tracing::info!(%addr, %upstream, "reverse listener ready")
        }
        (_, Some(addr)) => tracing::info!(%addr, "forward listener ready"),
        _ => {}
    }
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached, refusing a client");
            proxy.metrics().denial("connection_limit");
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Built per connection, so that a reload's limits and timeouts apply to new clients.
        let builder = http1_builder(&proxy.config());
        let service = service(
            proxy.clone(),
            Conn {
                peer,
                entry: entry.clone(),
            },
        );
        let closing = closing.clone();
        let first_byte = proxy.config().timeouts.request_header;
        let open = proxy.metrics().connection_opened(kind);
        let span = tracing::debug_span!("connection", listener = kind, %peer);
        connections.spawn(
            async move {
                // hyper's header timer starts at the first byte of a request; a client that
                // connects and sends nothing would otherwise hold its socket forever.
                let mut peek = [0u8; 1];
                let first = tokio::select! {
                    first = tokio::time::timeout(first_byte, stream.peek(&mut peek)) => first,
                    () = closing.cancelled() => return,
                };
                if !matches!(first, Ok(Ok(1))) {
                    return tracing::debug!("closing a connection that sent nothing");
                }
                let connection = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                tokio::pin!(connection);
                let ended = tokio::select! {
                    ended = connection.as_mut() => ended,
                    () = closing.cancelled() => {
                        // Finish the request in flight, then close instead of keeping alive.
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(err) = ended {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                drop((place, open));
            }
            .instrument(span),
        );
    }

    drop(listener);
    tracing::info!(listener = kind, "draining connections");
    closing.cancel();
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = kind,
            ?drain,
            "drain deadline passed, closing remaining connections"
        );
    }
}

/// The next connection. Failures such as running out of descriptors must neither spin nor
/// end the listener: they are logged and retried after a pause.
pub(crate) async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Tells a client over the connection limit so, briefly, and closes.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = "the proxy has too many open connections; try again later\n";
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nProxy-Status: {PROXY_NAME}; error=connection_limit_reached\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let exchange = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent, so that closing does not reset the connection before
        // the client has read the answer.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), exchange).await;
}

/// HTTP/1.1 and HTTP/2 (HTTP/1.1 only on the forward listener, where clients speak the proxy
/// protocol), with the request-head timeout running on tokio's timer.
/// HTTP/1.1 for listeners: proxy clients speak it, and its request-head timeout also bounds
/// idle connections, which HTTP/2 has no equivalent for.
fn http1_builder(config: &Config) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.timeouts.request_header)
        .max_buf_size(config.limits.max_header_bytes)
        .max_headers(config.limits.max_headers);
    builder
}

/// HTTP/1.1 or HTTP/2 (by ALPN) inside an intercepted tunnel.
fn tunnel_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.timeouts.request_header)
        .max_buf_size(config.limits.max_header_bytes)
        .max_headers(config.limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

fn service(
    proxy: Arc<Proxy>,
    conn: Conn,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<crate::proxy::Body>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<http::Response<crate::proxy::Body>, std::convert::Infallible>>
             + Send,
> + Clone {
    let conn = Arc::new(conn);
    service_fn(move |request| {
        let proxy = proxy.clone();
        let conn = conn.clone();
        async move { Ok(proxy.handle(request, &conn).await) }
    })
}

/// Serves the decrypted inside of an intercepted tunnel until the client closes it, or until
/// it has had no request in flight for the request-head timeout. HTTP/2 has no timer of its
/// own for that, so idle connections are watched here. The task runs in the proxy's tunnel
/// set, which the drain on shutdown waits for.
///
/// Boxed with `Send` spelled out: the pipeline calls this from inside a request, so its
/// future type would otherwise contain itself.
pub(crate) fn serve_http<I>(
    io: I,
    conn: Conn,
    proxy: Arc<Proxy>,
) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    Box::pin(async move {
        let config = proxy.config();
        let idle_after = config.timeouts.request_header;
        let builder = tunnel_builder(&config);
        let activity = Arc::new(Activity::new());
        let service = {
            let activity = activity.clone();
            let conn = Arc::new(conn);
            service_fn(move |request| {
                let in_flight = activity.begin();
                let proxy = proxy.clone();
                let conn = conn.clone();
                async move {
                    let response = proxy.handle(request, &conn).await;
                    Ok::<_, std::convert::Infallible>(response.map(|inner| {
                        Tracked {
                            inner,
                            _in_flight: in_flight,
                        }
                        .boxed()
                    }))
                }
            })
        };
        let connection = builder.serve_connection(io, service);
        tokio::pin!(connection);
        let mut check = tokio::time::interval((idle_after / 4).max(Duration::from_millis(50)));
        let mut closing = false;
        loop {
            tokio::select! {
                ended = connection.as_mut() => {
                    if let Err(err) = ended {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                    return;
                }
                _ = check.tick(), if !closing => {
                    if activity.idle_for().is_some_and(|idle| idle >= idle_after) {
                        tracing::debug!("closing an idle intercepted connection");
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
    })
}

/// Requests in flight on one connection, and since when there have been none.
struct Activity {
    in_flight: AtomicUsize,
    idle_since: std::sync::Mutex<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            idle_since: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// How long the connection has been without a request in flight, if it is.
    fn idle_for(&self) -> Option<Duration> {
        let since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        (self.in_flight.load(Ordering::SeqCst) == 0).then(|| since.elapsed())
    }
}

/// One request, from its head until its response body is done.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> http_body::Body for Tracked<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
