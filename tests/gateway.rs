//! Running as a shared gateway: who may use the proxy, loops, and limits.

mod support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use support::upstream::{self, MockUpstream};
use support::{ProxyUnderTest, wire};
use tokio::net::TcpStream;

fn config(upstream_port: u16, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nasap:\n  issuer: gw\n  kid: gw/ec\n  algorithm: ES256\n  \
         private_key_file: {{keys}}/ec-p256.pkcs8.pem\nroutes:\n  - host: 127.0.0.1:{upstream_port}\n    \
         audience: gw-audience\n{extra}"
    )
}

fn get(upstream: &MockUpstream, extra_headers: &str) -> String {
    format!(
        "GET http://{0}/ HTTP/1.1\r\nHost: {0}\r\n{extra_headers}Connection: close\r\n\r\n",
        upstream.addr
    )
}

fn basic(credentials: &str) -> String {
    format!(
        "Proxy-Authorization: Basic {}\r\n",
        STANDARD.encode(credentials)
    )
}

#[tokio::test]
async fn clients_outside_the_allowed_networks_get_403() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let proxy = ProxyUnderTest::start(&config(
        upstream.addr.port(),
        "clients:\n  allow: [10.0.0.0/8]\n",
    ))
    .await;

    let response = wire::send(proxy.forward(), &get(&upstream, "")).await;

    assert_eq!(response.status, 403);
    assert!(
        response
            .header("proxy-status")
            .expect("Proxy-Status")
            .contains("http_request_denied")
    );
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn credentials_are_required_checked_and_never_forwarded() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let proxy = ProxyUnderTest::start_with_files(
        &config(
            upstream.addr.port(),
            "clients:\n  allow: [127.0.0.0/8]\n  users:\n    - name: ci\n      password_file: ci-password\n",
        ),
        // Secret files usually end with a newline that is not part of the password.
        &[("ci-password", "correct horse\n")],
    )
    .await;

    let missing = wire::send(proxy.forward(), &get(&upstream, "")).await;
    assert_eq!(missing.status, 407);
    assert_eq!(
        missing.header("proxy-authenticate"),
        Some("Basic realm=\"asap-proxy\", charset=\"UTF-8\"")
    );
    let wrong = wire::send(proxy.forward(), &get(&upstream, &basic("ci:wrong"))).await;
    assert_eq!(wrong.status, 407);
    assert!(upstream.seen().is_empty());

    let right = wire::send(proxy.forward(), &get(&upstream, &basic("ci:correct horse"))).await;
    assert_eq!(right.status, 200, "{}", right.text());
    let seen = upstream.only_request();
    assert!(seen.header("proxy-authorization").is_none());
    assert!(
        seen.header("authorization")
            .is_some_and(|a| a.starts_with("Bearer "))
    );
}

#[tokio::test]
async fn a_request_that_comes_back_is_a_loop() {
    // Two proxies in front of each other: neither is the other's own listener, so only the
    // `Via` entry can tell that a request came back.
    let (a, b) = (support::closed_port().port(), support::closed_port().port());
    let reverse = |listen: u16, upstream: u16| {
        format!(
            "reverse:\n  - listen: 127.0.0.1:{listen}\n    upstream: http://localhost:{upstream}\nasap:\n  \
             issuer: gw\n  kid: gw/ec\n  algorithm: ES256\n  private_key_file: {{keys}}/ec-p256.pkcs8.pem\n\
             routes:\n  - host: localhost\n    audience: a\n"
        )
    };
    let first = ProxyUnderTest::start(&reverse(a, b)).await;
    let _second = ProxyUnderTest::start(&reverse(b, a)).await;

    let response = wire::send(
        first.reverse[0],
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;

    assert_eq!(response.status, 508, "{}", response.text());
    assert!(
        response
            .header("proxy-status")
            .expect("Proxy-Status")
            .contains("proxy_loop_detected")
    );
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let proxy = ProxyUnderTest::start(&config(
        upstream.addr.port(),
        "limits:\n  max_header_bytes: 16384\n  max_headers: 20\n",
    ))
    .await;

    let big = format!("X-Big: {}\r\n", "a".repeat(20_000));
    let too_large = wire::send(proxy.forward(), &get(&upstream, &big)).await;
    assert_eq!(too_large.status, 431);

    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let too_many = wire::send(proxy.forward(), &get(&upstream, &many)).await;
    assert_eq!(too_many.status, 431);

    let fine = wire::send(proxy.forward(), &get(&upstream, "X-Small: 1\r\n")).await;
    assert_eq!(fine.status, 200);
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_cleanly() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let proxy = ProxyUnderTest::start(&config(
        upstream.addr.port(),
        "limits:\n  max_connections: 2\n",
    ))
    .await;

    // Two idle connections hold both places.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(proxy.forward()).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET http://a.test/ HTTP/1.1\r\n")
            .await
            .expect("write");
        held.push(stream);
    }

    let refused = wire::send(proxy.forward(), &get(&upstream, "")).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused
            .header("proxy-status")
            .expect("Proxy-Status")
            .contains("connection_limit_reached")
    );

    drop(held);
    // Places come back once the held connections close.
    let mut served = None;
    for _ in 0..500 {
        let response = wire::send(proxy.forward(), &get(&upstream, "")).await;
        if response.status == 200 {
            served = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        served.is_some(),
        "served again after the held connections closed"
    );
}

#[tokio::test]
async fn unrouted_traffic_cannot_reach_internal_addresses() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let port = upstream.addr.port();
    let yaml = format!(
        "listen: 127.0.0.1:0\nunmatched: forward\nconnect_ports: [{port}]\nasap:\n  issuer: gw\n  kid: gw/ec\n  \
         algorithm: ES256\n  private_key_file: {{keys}}/ec-p256.pkcs8.pem\nroutes:\n  - host: routed.test\n    \
         audience: a\n"
    );
    let proxy = ProxyUnderTest::start(&yaml).await;

    // A name that resolves to loopback, the IPv4-mapped form of loopback, and loopback itself.
    for host in [
        format!("localhost:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("127.0.0.1:{port}"),
    ] {
        let plain =
            format!("GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let response = wire::send(proxy.forward(), &plain).await;
        assert_eq!(response.status, 403, "{host}: {}", response.text());
        let status = response.header("proxy-status").expect("Proxy-Status");
        assert!(
            status.contains("error=destination_ip_prohibited"),
            "{status}"
        );

        let tunnel = format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let response = wire::send(proxy.forward(), &tunnel).await;
        assert_eq!(response.status, 403, "CONNECT {host}: {}", response.text());
        assert!(response.text().contains("loopback"), "{}", response.text());
    }
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn requests_to_the_proxys_own_listener_are_refused() {
    let yaml = "listen: 127.0.0.1:0\nunmatched: forward\ndestinations:\n  allow: [127.0.0.0/8]\nasap:\n  \
                issuer: gw\n  kid: gw/ec\n  algorithm: ES256\n  private_key_file: {keys}/ec-p256.pkcs8.pem\n\
                routes:\n  - host: routed.test\n    audience: a\n";
    let proxy = ProxyUnderTest::start(yaml).await;
    let own = proxy.forward();

    let request = format!("GET http://{own}/ HTTP/1.1\r\nHost: {own}\r\nConnection: close\r\n\r\n");
    let response = wire::send(own, &request).await;

    assert_eq!(response.status, 403, "{}", response.text());
    assert!(
        response.text().contains("own listener"),
        "{}",
        response.text()
    );
}

#[tokio::test]
async fn a_routed_name_that_leads_back_to_the_proxy_is_refused_before_sending() {
    let yaml = "listen: 127.0.0.1:0\nasap:\n  issuer: gw\n  kid: gw/ec\n  algorithm: ES256\n  \
                private_key_file: {keys}/ec-p256.pkcs8.pem\nroutes:\n  - host: localhost\n    audience: a\n";
    let proxy = ProxyUnderTest::start(yaml).await;
    let own = proxy.forward();

    let request = format!(
        "GET http://localhost:{0}/metrics HTTP/1.1\r\nHost: localhost:{0}\r\nConnection: close\r\n\r\n",
        own.port()
    );
    let response = wire::send(own, &request).await;

    assert_eq!(response.status, 403, "{}", response.text());
    assert!(
        response.text().contains("own listener"),
        "{}",
        response.text()
    );
}
