//! Changing a running proxy: reloads, key rotation, and what operators see in metrics.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use asap_proxy::reload;
use support::upstream::{self, MockUpstream};
use support::{ProxyUnderTest, decode_bearer, key, wire};
use tokio_util::sync::CancellationToken;

fn config(port: u16, audience: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nasap:\n  issuer: ops\n  kid: ops/ec\n  algorithm: ES256\n  \
         private_key_file: {}\nroutes:\n  - host: 127.0.0.1:{port}\n    audience: {audience}\n",
        key("ec-p256.pkcs8.pem").display()
    )
}

fn get(upstream: &MockUpstream) -> String {
    format!(
        "GET http://{0}/ HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n",
        upstream.addr
    )
}

fn audiences(upstream: &MockUpstream) -> Vec<String> {
    upstream
        .seen()
        .iter()
        .map(|s| decode_bearer(s.header("authorization").expect("token")).claims["aud"].to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_changes_the_route_without_failing_a_request() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let proxy = ProxyUnderTest::start(&config(upstream.addr.port(), "before")).await;
    let forward = proxy.forward();
    let request = get(&upstream);

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) || statuses.len() < 20 {
                statuses.push(wire::send(forward, &request).await.status);
            }
            statuses
        })
    };
    while upstream.seen().len() < 10 {
        tokio::task::yield_now().await;
    }
    std::fs::write(&proxy.path, config(upstream.addr.port(), "after")).expect("rewrite config");
    assert!(reload::reload(&proxy.path, &proxy.proxy));
    let reloaded_at = upstream.seen().len();
    while upstream.seen().len() < reloaded_at + 10 {
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Relaxed);

    let statuses = load.await.expect("load");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let seen = audiences(&upstream);
    let first_after = seen
        .iter()
        .position(|a| a == "\"after\"")
        .expect("the new audience is used");
    // One request may have started under the old configuration as the reload finished.
    assert!(
        first_after >= 10 && first_after <= reloaded_at + 1,
        "first after {first_after}, reloaded at {reloaded_at}: {seen:?}"
    );
    assert!(
        seen[first_after..].iter().all(|a| a == "\"after\""),
        "no request goes back to the old config"
    );
    assert!(
        proxy
            .proxy
            .metrics()
            .render()
            .contains("asap_proxy_config_reloads_total{result=\"success\"} 1")
    );
}

#[tokio::test]
async fn a_broken_reload_leaves_the_old_configuration_serving() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let proxy = ProxyUnderTest::start(&config(upstream.addr.port(), "kept")).await;

    for broken in [
        "listen: [oops\n".to_owned(),
        config(upstream.addr.port(), "x").replace("ops/ec", "other/ec"),
    ] {
        std::fs::write(&proxy.path, broken).expect("rewrite config");
        assert!(!reload::reload(&proxy.path, &proxy.proxy));
    }
    let response = wire::send(proxy.forward(), &get(&upstream)).await;

    assert_eq!(response.status, 200);
    assert_eq!(audiences(&upstream), ["\"kept\""]);
    assert!(
        proxy
            .proxy
            .metrics()
            .render()
            .contains("asap_proxy_config_reloads_total{result=\"failure\"} 2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_file_in_the_key_directory_rotates_the_key_without_a_restart() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let keys = tempfile::tempdir().expect("key dir");
    std::fs::create_dir(keys.path().join("ops")).expect("issuer dir");
    let first = std::fs::read(key("ec-p256.pkcs8.pem")).expect("fixture");
    std::fs::write(keys.path().join("ops/2026-11-01.pem"), &first).expect("first key");
    let yaml = format!(
        "listen: 127.0.0.1:0\nasap:\n  issuer: ops\n  algorithm: ES256\n  private_key_dir: {}\nroutes:\n  \
         - host: 127.0.0.1:{}\n    audience: a\n",
        keys.path().display(),
        upstream.addr.port()
    );
    let proxy = ProxyUnderTest::start(&yaml).await;
    let watching = CancellationToken::new();
    tokio::spawn(reload::watch(
        proxy.path.clone(),
        proxy.proxy.clone(),
        watching.clone(),
    ));
    let kid = |upstream: &MockUpstream| {
        let seen = upstream.seen();
        let last = seen.last().expect("a request");
        decode_bearer(last.header("authorization").expect("token")).header["kid"].to_string()
    };

    assert_eq!(
        wire::send(proxy.forward(), &get(&upstream)).await.status,
        200
    );
    assert_eq!(kid(&upstream), "\"ops/2026-11-01.pem\"");

    // The same key material under a later name: a rotation the verifier sees by kid.
    std::fs::write(keys.path().join("ops/2026-12-01.pem"), &first).expect("second key");
    let mut rotated = false;
    for _ in 0..300 {
        assert_eq!(
            wire::send(proxy.forward(), &get(&upstream)).await.status,
            200
        );
        if kid(&upstream) == "\"ops/2026-12-01.pem\"" {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watching.cancel();
    let kids: Vec<String> = upstream
        .seen()
        .iter()
        .map(|s| decode_bearer(s.header("authorization").expect("token")).header["kid"].to_string())
        .collect();
    assert!(rotated, "the watcher picked up the new key file: {kids:?}");
}

#[tokio::test]
async fn metrics_count_requests_tokens_denials_and_latency() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let yaml = config(upstream.addr.port(), "m")
        .replace("algorithm: ES256\n", "algorithm: ES256\n  reuse: false\n");
    let proxy = ProxyUnderTest::start(&yaml).await;

    for _ in 0..3 {
        assert_eq!(
            wire::send(proxy.forward(), &get(&upstream)).await.status,
            200
        );
    }
    let denied = wire::send(
        proxy.forward(),
        "GET http://unrouted.test/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(denied.status, 403);

    let text = proxy.proxy.metrics().render();
    for line in [
        "asap_proxy_requests_total{method_class=\"safe\",route=\"0\",status=\"200\"} 3",
        "asap_proxy_requests_total{method_class=\"safe\",route=\"none\",status=\"403\"} 1",
        "asap_proxy_tokens_total{algorithm=\"ES256\",provenance=\"minted\",route=\"0\"} 3",
        "asap_proxy_denials_total{reason=\"unmatched\"} 1",
        "asap_proxy_upstream_latency_seconds_count{route=\"0\"} 3",
        "asap_proxy_key_age_seconds{kid=\"ops/ec\"}",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}
