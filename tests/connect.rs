//! HTTPS through the proxy: CONNECT tunnels for hosts it must not touch, and interception
//! for routed hosts, driven by curl and Python requests as real clients.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use asap_proxy::tls::intercept;
use sha2::{Digest, Sha256};
use support::reference::{ReferenceUpstream, python};
use support::upstream::{self, MockUpstream};
use support::{ProxyUnderTest, TestCa, decode_bearer, key, wire};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const STALL: Duration = Duration::from_secs(30);

/// The interception CA the proxy signs leaves with, written to `dir`.
fn proxy_ca(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = intercept::create_ca("test interception CA").expect("CA");
    let cert_path = dir.join("proxy-ca.pem");
    let key_path = dir.join("proxy-ca-key.pem");
    std::fs::write(&cert_path, cert).expect("write CA");
    std::fs::write(&key_path, key.as_bytes()).expect("write CA key");
    (cert_path, key_path)
}

/// A proxy intercepting CONNECT to `localhost:<port>`, trusting `upstream_ca` upstream.
async fn intercepting_proxy(
    dir: &Path,
    port: u16,
    upstream_ca: &Path,
    asap: &str,
) -> ProxyUnderTest {
    let (cert, ca_key) = proxy_ca(dir);
    ProxyUnderTest::start(&format!(
        "listen: 127.0.0.1:0\n{asap}routes:\n  - host: localhost:{port}\n    audience: tls-audience\n\
         connect_ports: [{port}]\nintercept:\n  ca_cert_file: {}\n  ca_key_file: {}\n\
         tls:\n  ca_file: {}\n",
        cert.display(),
        ca_key.display(),
        upstream_ca.display(),
    ))
    .await
}

const EC_ASAP: &str = "asap:\n  issuer: tls-issuer\n  kid: tls-issuer/ec\n  algorithm: ES256\n  \
                       private_key_file: {keys}/ec-p256.pkcs8.pem\n";

async fn curl(args: &[&str], proxy: SocketAddr) -> (String, String) {
    let output = tokio::process::Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--write-out",
            "\\n%{http_version}",
        ])
        .args(args)
        .env("HTTPS_PROXY", format!("http://{proxy}"))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .await
        .expect("run curl");
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out = String::from_utf8(output.stdout).expect("utf-8");
    let (body, version) = out.rsplit_once('\n').expect("version line");
    (body.to_owned(), version.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_a_tls_upstream_through_interception_with_http1_and_http2() {
    let upstream_ca = TestCa::new();
    let upstream =
        MockUpstream::recording_tls(&upstream_ca, &[b"h2", b"http/1.1"], upstream::ok).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream_ca_file = upstream_ca.write_ca(dir.path());
    let port = upstream.addr.port();
    let proxy = intercepting_proxy(dir.path(), port, &upstream_ca_file, EC_ASAP).await;
    let proxy_ca = dir.path().join("proxy-ca.pem").display().to_string();
    let url = format!("https://localhost:{port}/v1/items?page=2");

    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (body, got) = curl(&["--cacert", &proxy_ca, flag, &url], proxy.forward()).await;
        assert_eq!(body, "upstream ok\n");
        assert_eq!(got, version, "client to proxy protocol");
    }

    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert!(request.uri.ends_with("/v1/items?page=2"), "{}", request.uri);
        let authorization = request.all("authorization");
        assert_eq!(authorization.len(), 1);
        let jwt = decode_bearer(authorization[0]);
        assert_eq!(jwt.claims["aud"], "tls-audience");
        assert_eq!(jwt.header["kid"], "tls-issuer/ec");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_reaches_the_reference_verifier_through_interception() {
    let upstream_ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream_ca_file = upstream_ca.write_ca(dir.path());
    let (chain, leaf_key) = upstream_ca.write_leaf(dir.path());
    let upstream = ReferenceUpstream::start(
        "tls-audience",
        &[("tls-issuer/rsa".to_owned(), key("rsa-2048.pub.pem"))],
        &[
            "--tls-cert",
            &chain.display().to_string(),
            "--tls-key",
            &leaf_key.display().to_string(),
        ],
    )
    .await;
    let asap = "asap:\n  issuer: tls-issuer\n  kid: tls-issuer/rsa\n  algorithm: PS256\n  \
                private_key_file: {keys}/rsa-2048.pkcs8.pem\n";
    let proxy = intercepting_proxy(dir.path(), upstream.addr.port(), &upstream_ca_file, asap).await;

    let script = "import requests, sys\n\
                  r = requests.get(sys.argv[1], timeout=30)\n\
                  print(r.status_code)\n\
                  print(r.text)\n";
    let output = tokio::process::Command::new(python())
        .args([
            "-c",
            script,
            &format!("https://localhost:{}/hello", upstream.addr.port()),
        ])
        .env("HTTPS_PROXY", format!("http://{}", proxy.forward()))
        .env("REQUESTS_CA_BUNDLE", dir.path().join("proxy-ca.pem"))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdout(Stdio::piped())
        .output()
        .await
        .expect("run python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out = String::from_utf8(output.stdout).expect("utf-8");
    let (status, body) = out.split_once('\n').expect("status line");
    assert_eq!(status, "200", "{body}");
    let body: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(body["verified"], true, "{body}");
    assert_eq!(body["header"]["alg"], "PS256");
    assert_eq!(body["path"], "/hello");
}

/// A deterministic byte stream, different for each seed.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

async fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    tokio::time::timeout(STALL, stream.read_exact(&mut buf))
        .await
        .expect("bytes arrive")
        .expect("read");
    buf
}

/// Sends a CONNECT and returns the stream after the proxy's 200, with the response head.
async fn open_tunnel(proxy: SocketAddr, target: &str, early: &[u8]) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").into_bytes();
    request.extend_from_slice(early);
    // One write: the early bytes travel in the same segment as the request.
    stream.write_all(&request).await.expect("send CONNECT");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(STALL, stream.read(&mut byte))
            .await
            .expect("response")
            .expect("read");
        assert_eq!(
            n,
            1,
            "closed before the response head ended: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    (stream, String::from_utf8(head).expect("ASCII head"))
}

fn tunnel_config(port: u16) -> String {
    format!(
        "listen: 127.0.0.1:0\nunmatched: forward\nconnect_ports: [{port}]\n\
         # The test servers are on loopback, which unrouted traffic may not reach by default.\n\
         destinations:\n  allow: [127.0.0.0/8, \"::1/128\"]\n{EC_ASAP}routes:\n  \
         - host: routed.test\n    audience: a\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_tunnel_carries_8_mib_each_way_unchanged_including_early_data() {
    const SIZE: usize = 8 * 1024 * 1024;
    let upload = pattern(1, SIZE);
    let download = pattern(2, SIZE);
    let early = b"early bytes in the CONNECT segment";

    let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let expected_upload = Sha256::digest(&upload);
    let to_send = download.clone();
    let server_task = tokio::spawn(async move {
        let (mut stream, _) = server.accept().await.expect("accept");
        let first = read_exactly(&mut stream, early.len()).await;
        let (mut reader, mut writer) = stream.into_split();
        let writing = tokio::spawn(async move {
            writer.write_all(&to_send).await.expect("server writes");
            writer.shutdown().await.expect("server shuts down");
        });
        let mut received = Vec::new();
        tokio::time::timeout(STALL, reader.read_to_end(&mut received))
            .await
            .expect("upload")
            .expect("read");
        writing.await.expect("writer");
        (first, Sha256::digest(&received), received.len())
    });

    let proxy = ProxyUnderTest::start(&tunnel_config(addr.port())).await;
    let (stream, head) = open_tunnel(proxy.forward(), &addr.to_string(), early).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        writer.write_all(&upload).await.expect("client writes");
        writer.shutdown().await.expect("client shuts down");
    });
    let mut received = Vec::new();
    tokio::time::timeout(STALL, reader.read_to_end(&mut received))
        .await
        .expect("download")
        .expect("read");
    writing.await.expect("writer");

    let (first, upload_digest, upload_len) = server_task.await.expect("server");
    assert_eq!(first, early, "the early bytes arrive first, unchanged");
    assert_eq!(upload_len, SIZE);
    assert_eq!(upload_digest, expected_upload);
    assert_eq!(received.len(), SIZE);
    assert!(received == download, "download unchanged");
}

#[tokio::test]
async fn refused_connects_say_why() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let open_port = listener.local_addr().expect("addr").port();
    let deny = tunnel_config(open_port).replace("unmatched: forward\n", "");
    let proxy = ProxyUnderTest::start(&deny).await;
    let connect = |target: &str| format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");

    let unlisted = wire::send(proxy.forward(), &connect("127.0.0.1:22")).await;
    assert_eq!(unlisted.status, 403);
    assert!(
        unlisted
            .text()
            .contains("CONNECT to port 22 is not allowed"),
        "{}",
        unlisted.text()
    );

    let unmatched = wire::send(proxy.forward(), &connect(&format!("127.0.0.1:{open_port}"))).await;
    assert_eq!(unmatched.status, 403);
    assert!(
        unmatched
            .header("proxy-status")
            .expect("Proxy-Status")
            .contains("http_request_denied")
    );

    let routed = wire::send(
        proxy.forward(),
        &connect(&format!("routed.test:{open_port}")),
    )
    .await;
    assert_eq!(routed.status, 403);
    assert!(
        routed.text().contains("TLS interception is not configured"),
        "{}",
        routed.text()
    );
    assert!(routed.text().contains("upstream_tls"), "{}", routed.text());

    for bad in ["routed.test", "a..b:443", "[::1:443"] {
        let response = wire::send(proxy.forward(), &connect(bad)).await;
        assert_eq!(response.status, 400, "{bad}: {}", response.text());
    }
}

#[tokio::test]
async fn ipv6_literal_authority_tunnels() {
    let Ok(server) = TcpListener::bind("[::1]:0").await else {
        // No IPv6 loopback on this machine: nothing to tunnel to.
        return;
    };
    let addr = server.local_addr().expect("addr");
    let proxy = ProxyUnderTest::start(&tunnel_config(addr.port())).await;
    let accept = tokio::spawn(async move {
        let (mut stream, _) = server.accept().await.expect("accept");
        read_exactly(&mut stream, 4).await
    });

    let (mut stream, head) =
        open_tunnel(proxy.forward(), &format!("[::1]:{}", addr.port()), b"").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream.write_all(b"ping").await.expect("write");
    assert_eq!(accept.await.expect("server"), b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_inside_a_tunnel_are_closed() {
    let upstream_ca = TestCa::new();
    let upstream =
        MockUpstream::recording_tls(&upstream_ca, &[b"h2", b"http/1.1"], upstream::ok).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream_ca_file = upstream_ca.write_ca(dir.path());
    let port = upstream.addr.port();
    let asap = format!("{EC_ASAP}timeouts:\n  request_header_seconds: 0.3\n");
    let proxy = intercepting_proxy(dir.path(), port, &upstream_ca_file, &asap).await;

    let (stream, head) = open_tunnel(proxy.forward(), &format!("localhost:{port}"), b"").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = std::fs::read(dir.path().join("proxy-ca.pem")).expect("proxy CA");
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca_pem) {
        roots.add(cert.expect("certificate")).expect("root");
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, stream)
        .await
        .expect("TLS with the interception leaf");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    let closed = tokio::spawn(connection);

    let request = http::Request::get(format!("https://localhost:{port}/once"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    drop(response);

    // Nothing more is sent: the proxy closes the connection once it has been idle.
    tokio::time::timeout(STALL, closed)
        .await
        .expect("the idle HTTP/2 connection is closed")
        .expect("task")
        .expect("a clean close");
    assert_eq!(upstream.seen().len(), 1);
}
