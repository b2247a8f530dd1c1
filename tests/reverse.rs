//! Reverse listeners: a local port in front of one fixed upstream.

mod support;

use support::upstream::{self, MockUpstream};
use support::wire;
use support::{ProxyUnderTest, TestCa, decode_bearer};

fn config(upstream: &str, route_host: &str, extra: &str) -> String {
    format!(
        r#"
reverse:
  - listen: 127.0.0.1:0
    upstream: {upstream}
asap:
  issuer: dev
  kid: dev/rsa
  algorithm: RS256
  private_key_file: {{keys}}/rsa-2048.pkcs1.pem
routes:
  - host: {route_host}
    audience: [first-audience, second-audience]
{extra}"#
    )
}

#[tokio::test]
async fn reverse_listener_signs_and_rewrites_host() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let base = format!("http://{}", upstream.addr);
    let proxy = ProxyUnderTest::start(&config(&base, &upstream.addr.to_string(), "")).await;

    let response = wire::send(
        proxy.reverse[0],
        "POST /v1/things?x=1 HTTP/1.1\r\nHost: localhost:9000\r\nContent-Length: 5\r\n\
         Authorization: Bearer client-token\r\nConnection: close\r\n\r\nhello",
    )
    .await;

    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.only_request();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/v1/things?x=1");
    assert_eq!(seen.body_len, 5);
    assert_eq!(seen.all("host"), [upstream.addr.to_string()]);
    let authorization = seen.all("authorization");
    assert_eq!(authorization.len(), 1);
    let jwt = decode_bearer(authorization[0]);
    assert_eq!(
        jwt.claims["aud"],
        serde_json::json!(["first-audience", "second-audience"])
    );
    assert_eq!(jwt.header["alg"], "RS256");
    assert_eq!(jwt.signature.len(), 256);
}

#[tokio::test]
async fn reverse_listener_uses_the_route_of_its_upstream_path() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let base = format!("http://{}", upstream.addr);
    let route = format!("{}\n    path_prefix: /api", upstream.addr);
    let proxy = ProxyUnderTest::start(&config(&base, &route, "")).await;

    let inside = wire::send(
        proxy.reverse[0],
        "GET /api/x HTTP/1.1\r\nHost: l\r\nConnection: close\r\n\r\n",
    )
    .await;
    let outside = wire::send(
        proxy.reverse[0],
        "GET /other HTTP/1.1\r\nHost: l\r\nConnection: close\r\n\r\n",
    )
    .await;

    assert_eq!(inside.status, 200);
    assert_eq!(
        outside.status, 403,
        "no route covers /other and unmatched requests are denied"
    );
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test]
async fn reverse_listener_reaches_a_tls_upstream() {
    let ca = TestCa::new();
    let upstream = MockUpstream::recording_tls(&ca, &[b"http/1.1"], upstream::ok).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = ca.write_ca(dir.path());
    let base = format!("https://localhost:{}", upstream.addr.port());
    let proxy = ProxyUnderTest::start(&config(
        &base,
        "localhost",
        &format!("tls:\n  ca_file: {}\n", ca_file.display()),
    ))
    .await;

    let response = wire::send(
        proxy.reverse[0],
        "GET / HTTP/1.1\r\nHost: l\r\nConnection: close\r\n\r\n",
    )
    .await;

    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.only_request();
    assert_eq!(
        seen.all("host"),
        [format!("localhost:{}", upstream.addr.port())]
    );
    assert!(seen.header("authorization").is_some());
}
