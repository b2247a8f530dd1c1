//! The forward listener, end to end: a real proxy on port 0 in front of real upstreams on
//! loopback, driven by raw HTTP/1.1 so the wire format is what is asserted.

mod support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use support::upstream::{self, MockUpstream};
use support::wire;
use support::{ProxyUnderTest, TestCa, decode_bearer};

/// One route for `127.0.0.1:<port>` signing with the fixture EC key.
fn config(upstream_port: u16, extra: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
asap:
  issuer: test-issuer
  kid: test-issuer/ec-p256
  algorithm: ES256
  private_key_file: {{keys}}/ec-p256.pkcs8.pem
routes:
  - host: 127.0.0.1:{upstream_port}
    audience: test-audience
{extra}"#
    )
}

fn get(upstream: &MockUpstream, path: &str, extra_headers: &str) -> String {
    format!(
        "GET http://{}{path} HTTP/1.1\r\nHost: {}\r\n{extra_headers}Connection: close\r\n\r\n",
        upstream.addr, upstream.addr
    )
}

#[tokio::test]
async fn routed_request_carries_exactly_one_fresh_bearer_token() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let proxy = ProxyUnderTest::start(&config(upstream.addr.port(), "")).await;

    let response = wire::send(
        proxy.forward(),
        &get(
            &upstream,
            "/items?id=7",
            "Authorization: Basic dXNlcjpwdw==\r\nAuthorization: Bearer client\r\n",
        ),
    )
    .await;

    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), "upstream ok\n");
    let seen = upstream.only_request();
    assert_eq!(seen.uri, "/items?id=7");
    let authorizations = seen.all("authorization");
    assert_eq!(authorizations.len(), 1, "{authorizations:?}");
    let jwt = decode_bearer(authorizations[0]);
    assert_eq!(jwt.header["alg"], "ES256");
    assert_eq!(jwt.header["kid"], "test-issuer/ec-p256");
    assert_eq!(jwt.header["typ"], "JWT");
    assert_eq!(jwt.claims["iss"], "test-issuer");
    assert_eq!(jwt.claims["sub"], "test-issuer");
    assert_eq!(jwt.claims["aud"], "test-audience");
    assert_eq!(jwt.signature.len(), 64);
    let iat = jwt.claims["iat"].as_u64().expect("integer iat");
    assert_eq!(jwt.claims["exp"].as_u64(), Some(iat + 3600));
    assert_eq!(jwt.claims["nbf"].as_u64(), Some(iat));
}

#[tokio::test]
async fn host_is_regenerated_from_the_request_target() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let proxy = ProxyUnderTest::start(&config(upstream.addr.port(), "")).await;

    let request = format!(
        "GET http://{}/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        upstream.addr
    );
    let response = wire::send(proxy.forward(), &request).await;

    assert_eq!(response.status, 200);
    let seen = upstream.only_request();
    assert_eq!(seen.all("host"), [upstream.addr.to_string()]);
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways_and_via_added() {
    let upstream = MockUpstream::recording(|_| {
        upstream::status(
            200,
            &[
                ("connection", "x-upstream-hop"),
                ("x-upstream-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authenticate", "Basic realm=upstream"),
                ("x-end-to-end", "kept"),
            ],
        )
    })
    .await;
    let proxy = ProxyUnderTest::start(&config(upstream.addr.port(), "")).await;

    let request = format!(
        "GET http://{addr}/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close, X-Client-Hop\r\n\
         Connection: x-second-hop\r\nX-Client-Hop: 1\r\nX-Second-Hop: 2\r\nKeep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic dXNlcjpwdw==\r\nTE: trailers\r\n\
         Upgrade: websocket\r\nX-Kept: yes\r\n\r\n",
        addr = upstream.addr
    );
    let response = wire::send(proxy.forward(), &request).await;

    assert_eq!(response.status, 200);
    let seen = upstream.only_request();
    for hop in [
        "x-client-hop",
        "x-second-hop",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert!(seen.header(hop).is_none(), "{hop} reached the upstream");
    }
    assert_eq!(seen.header("x-kept"), Some("yes"));
    let via = seen.header("via").expect("Via upstream");
    assert!(via.starts_with("1.1 asap-proxy-"), "{via}");

    for hop in ["x-upstream-hop", "keep-alive", "proxy-authenticate"] {
        assert!(!response.has(hop), "{hop} reached the client");
    }
    assert_eq!(response.header("x-end-to-end"), Some("kept"));
    assert_eq!(
        response.header("via"),
        Some(via),
        "the same pseudonym both ways"
    );
}

#[tokio::test]
async fn unmatched_host_is_denied_by_default() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let proxy = ProxyUnderTest::start(&config(1, "")).await;

    let response = wire::send(proxy.forward(), &get(&upstream, "/", "")).await;

    assert_eq!(response.status, 403);
    let status = response.header("proxy-status").expect("Proxy-Status");
    assert!(
        status.starts_with("asap-proxy; error=http_request_denied"),
        "{status}"
    );
    assert!(response.text().contains("no route"), "{}", response.text());
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn unmatched_host_is_forwarded_without_a_token_when_configured() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    // The upstream is on loopback, which unrouted requests may not reach unless allowed.
    let extra = "unmatched: forward\ndestinations:\n  allow: [127.0.0.1/32]\n";
    let proxy = ProxyUnderTest::start(&config(1, extra)).await;

    let response = wire::send(
        proxy.forward(),
        &get(&upstream, "/", "Authorization: Bearer mine\r\n"),
    )
    .await;

    assert_eq!(response.status, 200);
    let seen = upstream.only_request();
    // Not ours to sign or to strip: the client's own credentials pass through.
    assert_eq!(seen.all("authorization"), ["Bearer mine"]);
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let closed = support::closed_port();
    let proxy = ProxyUnderTest::start(&config(closed.port(), "")).await;

    let request = format!("GET http://{closed}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let response = wire::send(proxy.forward(), &request).await;

    assert_eq!(response.status, 502);
    let status = response.header("proxy-status").expect("Proxy-Status");
    assert!(status.contains("error=destination_unavailable"), "{status}");
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let upstream = MockUpstream::with_handler(|_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        upstream::status(200, &[])
    })
    .await;
    let proxy = ProxyUnderTest::start(&config(
        upstream.addr.port(),
        "timeouts:\n  response_seconds: 0.3\n",
    ))
    .await;

    let response = wire::send(proxy.forward(), &get(&upstream, "/", "")).await;

    assert_eq!(response.status, 504);
    let status = response.header("proxy-status").expect("Proxy-Status");
    assert!(status.contains("error=http_response_timeout"), "{status}");
}

#[tokio::test]
async fn redirects_go_back_to_the_client() {
    let upstream = MockUpstream::recording(|_| {
        upstream::status(302, &[("location", "http://elsewhere.test/")])
    })
    .await;
    let proxy = ProxyUnderTest::start(&config(upstream.addr.port(), "")).await;

    let response = wire::send(proxy.forward(), &get(&upstream, "/", "")).await;

    assert_eq!(response.status, 302);
    assert_eq!(response.header("location"), Some("http://elsewhere.test/"));
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test]
async fn malformed_ports_are_400_and_mint_nothing() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let proxy = ProxyUnderTest::start(&config(upstream.addr.port(), "").replace(
        "  - host: 127.0.0.1:",
        "  - host: 127.0.0.1\n    audience: any-port\n  - host: 127.0.0.1:",
    ))
    .await;

    for port in ["99999", "abc", "", "0", "83537"] {
        let request = format!(
            "GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let response = wire::send(proxy.forward(), &request).await;
        assert_eq!(response.status, 400, "port {port:?}: {}", response.text());
        assert!(response.text().contains("port"), "{}", response.text());
    }
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn dot_segments_cannot_step_outside_a_path_prefix() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let yaml = config(upstream.addr.port(), "").replace(
        "    audience: test-audience\n",
        "    path_prefix: /public\n    audience: public-only\n",
    );
    let proxy = ProxyUnderTest::start(&yaml).await;

    let inside = wire::send(proxy.forward(), &get(&upstream, "/public/page", "")).await;
    assert_eq!(inside.status, 200);
    for sneaky in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/..%2fadmin",
        "/public/./x",
    ] {
        let response = wire::send(proxy.forward(), &get(&upstream, sneaky, "")).await;
        assert_eq!(response.status, 400, "{sneaky}");
    }
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test]
async fn origin_form_request_is_400() {
    let proxy = ProxyUnderTest::start(&config(1, "")).await;

    let response = wire::send(
        proxy.forward(),
        "GET /path HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;

    assert_eq!(response.status, 400);
    assert!(
        response
            .header("proxy-status")
            .expect("Proxy-Status")
            .contains("http_request_error")
    );
    assert!(
        response.text().contains("absolute URL"),
        "{}",
        response.text()
    );
}

#[tokio::test]
async fn tokens_are_reused_by_default_and_fresh_when_reuse_is_off() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let reusing = ProxyUnderTest::start(&config(upstream.addr.port(), "")).await;
    let fresh = ProxyUnderTest::start(
        &config(upstream.addr.port(), "")
            .replace("algorithm: ES256\n", "algorithm: ES256\n  reuse: false\n"),
    )
    .await;

    for proxy in [&reusing, &reusing, &fresh, &fresh] {
        let response = wire::send(proxy.forward(), &get(&upstream, "/", "")).await;
        assert_eq!(response.status, 200);
    }

    let jti: Vec<String> = upstream
        .seen()
        .iter()
        .map(|s| decode_bearer(s.header("authorization").expect("token")).claims["jti"].to_string())
        .collect();
    assert_eq!(jti[0], jti[1], "reuse: true sends the same token");
    assert_ne!(jti[2], jti[3], "reuse: false mints per request");
    assert_ne!(jti[1], jti[2]);
}

#[tokio::test]
async fn upstream_tls_sends_plain_requests_over_verified_tls_with_h2() {
    let ca = TestCa::new();
    let upstream = MockUpstream::recording_tls(&ca, &[b"h2", b"http/1.1"], upstream::ok).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = ca.write_ca(dir.path());
    let yaml = config(
        upstream.addr.port(),
        &format!("tls:\n  ca_file: {}\n", ca_file.display()),
    )
    .replace(
        "audience: test-audience\n",
        "audience: test-audience\n    upstream_tls: true\n",
    );
    let proxy = ProxyUnderTest::start(&yaml).await;

    let response = wire::send(proxy.forward(), &get(&upstream, "/secure", "")).await;

    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.only_request();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.uri, format!("https://{}/secure", upstream.addr));
    assert!(
        seen.header("authorization")
            .is_some_and(|a| a.starts_with("Bearer "))
    );
}

#[tokio::test]
async fn untrusted_upstream_certificate_is_502() {
    let ca = TestCa::new();
    let upstream = MockUpstream::recording_tls(&ca, &[b"http/1.1"], upstream::ok).await;
    let yaml = config(upstream.addr.port(), "").replace(
        "audience: test-audience\n",
        "audience: test-audience\n    upstream_tls: true\n",
    );
    let proxy = ProxyUnderTest::start(&yaml).await;

    let response = wire::send(proxy.forward(), &get(&upstream, "/", "")).await;

    assert_eq!(response.status, 502);
    let status = response.header("proxy-status").expect("Proxy-Status");
    assert!(status.contains("error=tls_"), "{status}");
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn client_stalling_in_its_request_head_is_disconnected() {
    let proxy =
        ProxyUnderTest::start(&config(1, "timeouts:\n  request_header_seconds: 0.3\n")).await;
    let mut stalled = TcpStream::connect(proxy.forward()).await.expect("connect");
    stalled
        .write_all(b"GET http://a.test/ HTTP/1.1\r\nHost: a.te")
        .await
        .expect("half a head");

    // Other clients are served meanwhile.
    let other = wire::send(
        proxy.forward(),
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(other.status, 400);

    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stalled.read_to_end(&mut rest))
        .await
        .expect("the proxy closes the stalled connection")
        .expect("read");
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || rest.starts_with("HTTP/1.1 408"),
        "{rest}"
    );
}

#[tokio::test]
async fn client_that_never_sends_a_byte_is_disconnected() {
    let proxy =
        ProxyUnderTest::start(&config(1, "timeouts:\n  request_header_seconds: 0.3\n")).await;
    let mut silent = TcpStream::connect(proxy.forward()).await.expect("connect");

    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), silent.read_to_end(&mut rest))
        .await
        .expect("the proxy closes the silent connection")
        .expect("read");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

#[tokio::test]
async fn upstream_that_never_accepts_the_connection_is_504() {
    // A listener whose accept queue is full drops further SYNs, so connecting hangs.
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    let _listener = socket.listen(1).expect("listen");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            fillers.push(stream);
        }
    }
    let proxy =
        ProxyUnderTest::start(&config(addr.port(), "timeouts:\n  connect_seconds: 0.3\n")).await;

    let request = format!("GET http://{addr}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let response = wire::send(proxy.forward(), &request).await;

    assert_eq!(response.status, 504, "{}", response.text());
    let status = response.header("proxy-status").expect("Proxy-Status");
    assert!(status.contains("error=connection_timeout"), "{status}");
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let proxy = ProxyUnderTest::start(&config(upstream.addr.port(), "")).await;

    for _ in 0..3 {
        let response = wire::send(proxy.forward(), &get(&upstream, "/", "")).await;
        assert_eq!(response.status, 200);
    }

    let peers: Vec<_> = upstream.seen().iter().map(|s| s.peer).collect();
    assert_eq!(peers.len(), 3);
    assert!(
        peers.iter().all(|p| *p == peers[0]),
        "one pooled connection: {peers:?}"
    );
}

#[tokio::test]
async fn broken_request_body_is_the_clients_fault() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let proxy = ProxyUnderTest::start(&config(upstream.addr.port(), "")).await;

    let request = format!(
        "POST http://{addr}/ HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n5\r\nhello\r\nnot-a-chunk-size\r\n\r\n",
        addr = upstream.addr
    );
    let response = wire::send(proxy.forward(), &request).await;

    assert_eq!(response.status, 400, "{}", response.text());
    assert!(
        response
            .header("proxy-status")
            .expect("Proxy-Status")
            .contains("http_request_error")
    );
}

#[tokio::test]
async fn unrequested_protocol_switch_is_502() {
    let upstream =
        MockUpstream::recording(|_| upstream::status(101, &[("upgrade", "websocket")])).await;
    let proxy = ProxyUnderTest::start(&config(upstream.addr.port(), "")).await;

    let response = wire::send(proxy.forward(), &get(&upstream, "/", "")).await;

    assert_eq!(response.status, 502, "{}", response.text());
    assert!(response.text().contains("101"), "{}", response.text());
}

#[tokio::test]
async fn upstream_closing_during_the_tls_handshake_is_a_tls_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let yaml = config(addr.port(), "").replace(
        "audience: test-audience\n",
        "audience: test-audience\n    upstream_tls: true\n",
    );
    let proxy = ProxyUnderTest::start(&yaml).await;

    let request = format!("GET http://{addr}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let response = wire::send(proxy.forward(), &request).await;

    assert_eq!(response.status, 502);
    let status = response.header("proxy-status").expect("Proxy-Status");
    assert!(status.contains("error=tls_protocol_error"), "{status}");
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let proxy = ProxyUnderTest::start(&config(
        upstream.addr.port(),
        "timeouts:\n  request_header_seconds: 0.3\n",
    ))
    .await;
    let mut stream = TcpStream::connect(proxy.forward()).await.expect("connect");
    let request = format!(
        "GET http://{0}/ HTTP/1.1\r\nHost: {0}\r\n\r\n",
        upstream.addr
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let response = wire::read_response(&mut stream).await;
    assert_eq!(response.status, 200);

    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut rest))
        .await
        .expect("the idle connection is closed")
        .expect("read");
    assert!(rest.is_empty());
}

#[tokio::test]
async fn an_http_1_0_upstream_does_not_end_the_clients_keep_alive() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                    .await;
            });
        }
    });
    let proxy = ProxyUnderTest::start(&config(addr.port(), "")).await;
    let mut stream = TcpStream::connect(proxy.forward()).await.expect("connect");
    let request = format!("GET http://{addr}/ HTTP/1.1\r\nHost: {addr}\r\n\r\n");

    for _ in 0..2 {
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send on the same connection");
        let response = wire::read_response(&mut stream).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "ok\n");
        assert_eq!(
            response.minor_version, 1,
            "the proxy answers in its own version, HTTP/1.1"
        );
        assert_ne!(response.header("connection"), Some("close"));
    }
}
