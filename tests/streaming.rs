//! Bodies stream through the proxy in both directions: each side sees the first bytes
//! before the other has sent the rest, which a buffering proxy could never allow.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use support::ProxyUnderTest;
use support::upstream::{self, MockUpstream};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

const BULK: usize = 32 * 1024 * 1024;
const BLOCK: usize = 64 * 1024;
/// Generous bound on each wait, only so a broken proxy fails instead of hanging.
const STALL: Duration = Duration::from_secs(30);

fn config(port: u16) -> String {
    format!(
        "listen: 127.0.0.1:0\nasap:\n  issuer: s\n  kid: s/k\n  algorithm: ES256\n  \
         private_key_file: {{keys}}/ec-p256.pkcs8.pem\nroutes:\n  - host: 127.0.0.1:{port}\n    audience: a\n"
    )
}

type Channel = mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

fn channel_body() -> (Channel, upstream::Body) {
    let (tx, rx) = mpsc::channel(4);
    (tx, StreamBody::new(ReceiverStream::new(rx)).boxed())
}

async fn send_bulk(tx: &Channel) {
    let block = Bytes::from(vec![0x5a; BLOCK]);
    for _ in 0..BULK / BLOCK {
        tx.send(Ok(Frame::data(block.clone())))
            .await
            .expect("receiver alive");
    }
}

async fn client(proxy: &ProxyUnderTest) -> hyper::client::conn::http1::SendRequest<upstream::Body> {
    let stream = TcpStream::connect(proxy.forward()).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender
}

#[tokio::test]
async fn download_streams_before_the_upstream_finishes() {
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release_rx = std::sync::Mutex::new(Some(release_rx));
    let upstream = MockUpstream::with_handler(move |_| {
        let release = release_rx
            .lock()
            .expect("lock")
            .take()
            .expect("one request");
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
                    .await
                    .expect("send");
                // The rest waits until the client has seen the first bytes.
                release.await.expect("client saw the first chunk");
                send_bulk(&tx).await;
            });
            Response::new(body)
        }
    })
    .await;
    let proxy = ProxyUnderTest::start(&config(upstream.addr.port())).await;

    let mut sender = client(&proxy).await;
    let request = Request::get(format!("http://{}/download", upstream.addr))
        .body(upstream::full(""))
        .expect("request");
    let response = tokio::time::timeout(STALL, sender.send_request(request))
        .await
        .expect("head")
        .expect("response");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();

    let first = tokio::time::timeout(STALL, body.frame())
        .await
        .expect("first bytes arrive while the upstream still holds the rest")
        .expect("a frame")
        .expect("data");
    assert_eq!(first.into_data().expect("data frame").as_ref(), b"first");
    release_tx.send(()).expect("upstream waiting");

    let mut received = 0;
    while let Some(frame) = tokio::time::timeout(STALL, body.frame())
        .await
        .expect("progress")
    {
        received += frame.expect("frame").into_data().map_or(0, |d| d.len());
    }
    assert_eq!(received, BULK);
}

#[tokio::test]
async fn upload_streams_before_the_client_finishes() {
    let (first_tx, first_rx) = oneshot::channel::<()>();
    let first_tx = std::sync::Mutex::new(Some(first_tx));
    let upstream = MockUpstream::with_handler(move |request: Request<hyper::body::Incoming>| {
        let first_seen = first_tx.lock().expect("lock").take().expect("one request");
        async move {
            let mut body = request.into_body();
            let mut received = 0usize;
            let mut first_seen = Some(first_seen);
            while let Some(frame) = body.frame().await {
                received += frame.expect("frame").into_data().map_or(0, |d| d.len());
                if let Some(signal) = first_seen.take() {
                    signal.send(()).expect("client waiting");
                }
            }
            Response::new(upstream::full(received.to_string()))
        }
    })
    .await;
    let proxy = ProxyUnderTest::start(&config(upstream.addr.port())).await;

    let mut sender = client(&proxy).await;
    let (tx, body) = channel_body();
    let request = Request::post(format!("http://{}/upload", upstream.addr))
        .body(body)
        .expect("request");
    let feeder = tokio::spawn(async move {
        tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
            .await
            .expect("send");
        tokio::time::timeout(STALL, first_rx)
            .await
            .expect("upstream sees the first bytes while the client still holds the rest")
            .expect("signal");
        send_bulk(&tx).await;
    });
    let response = tokio::time::timeout(STALL * 2, sender.send_request(request))
        .await
        .expect("head")
        .expect("response");
    feeder.await.expect("feeder");
    assert_eq!(response.status(), 200);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, (BULK + 5).to_string());
}
