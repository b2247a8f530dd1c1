//! The access log: one line per request, on its own target, written when the response
//! body is done (or abandoned), so that it can say how many bytes went each way.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request};
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::metrics::Metrics;

/// The `tracing` target of access-log lines.
pub const TARGET: &str = "asap_proxy::access";

/// What one request did. Holds no header values, no query string and no token.
#[derive(Debug)]
pub struct Record {
    client: SocketAddr,
    method: Method,
    scheme: &'static str,
    host: String,
    path: String,
    pub route: Option<usize>,
    pub token: &'static str,
    pub error: Option<&'static str>,
    status: u16,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl Record {
    pub fn start<B>(client: SocketAddr, request: &Request<B>, metrics: Arc<Metrics>) -> Record {
        Record {
            client,
            method: request.method().clone(),
            scheme: "",
            host: String::new(),
            path: request.uri().path().to_owned(),
            route: None,
            token: "none",
            error: None,
            status: 0,
            started: Instant::now(),
            bytes_in: Arc::default(),
            metrics,
        }
    }

    /// Names where the request is going, once that is known.
    pub fn target(&mut self, scheme: &'static str, authority: String) {
        self.scheme = scheme;
        self.host = authority;
    }

    /// Counts the bytes of a request body as they are sent upstream.
    pub fn count_request<B>(&self, body: B) -> Counted<B> {
        Counted {
            inner: body,
            bytes: self.bytes_in.clone(),
            record: None,
        }
    }

    /// Attaches the record to the response body; the line is written when that body ends.
    pub fn finish<B>(mut self, status: u16, body: B) -> Counted<B> {
        self.status = status;
        Counted {
            inner: body,
            bytes: Arc::default(),
            record: Some(self),
        }
    }

    fn write(&self, bytes_out: u64) {
        if let Ok(status) = http::StatusCode::from_u16(self.status) {
            self.metrics.request(self.route, &self.method, status);
        }
        tracing::info!(
            target: TARGET,
            client = %self.client,
            method = %self.method,
            scheme = self.scheme,
            host = %self.host,
            path = %self.path,
            route = self.route.map_or_else(|| "-".to_owned(), |r| r.to_string()),
            status = self.status,
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            bytes_out,
            duration_ms = self.started.elapsed().as_micros() as f64 / 1000.0,
            token = self.token,
            error = self.error.unwrap_or("-"),
        );
    }
}

/// A body that counts the data passing through it and, for responses, writes the access
/// log line when dropped.
#[derive(Debug)]
pub struct Counted<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
    record: Option<Record>,
}

impl<B> HttpBody for Counted<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            record.write(self.bytes.load(Ordering::Relaxed));
        }
    }
}
