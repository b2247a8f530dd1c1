//! Interoperability with the reference implementation: curl sends plain requests through
//! the proxy to an upstream where atlassian-jwt-auth verifies every token. Every algorithm,
//! every accepted key format, one audience and several.

mod support;

use std::path::PathBuf;
use std::process::Stdio;

use support::reference::ReferenceUpstream;
use support::{ProxyUnderTest, key};

const AUDIENCE: &str = "interop-service";

/// One route of the matrix: an algorithm, a key source and the public key that checks it.
struct Case {
    name: String,
    algorithm: &'static str,
    /// YAML lines for the key (and kid) of the route's `asap` section.
    key_yaml: String,
    kid: String,
    issuer: &'static str,
    public: PathBuf,
}

fn case(algorithm: &'static str, file: &str, public: &str, inline: bool) -> Case {
    let name = format!("{algorithm}-{file}{}", if inline { "-inline" } else { "" });
    let kid = format!("interop/{name}");
    let key_yaml = if inline {
        let text = std::fs::read_to_string(key(file)).expect("fixture");
        format!(
            "kid: {kid}\n      private_key: {}",
            serde_json::to_string(&text).expect("json string")
        )
    } else {
        format!(
            "kid: {kid}\n      private_key_file: {}",
            key(file).display()
        )
    };
    Case {
        name,
        algorithm,
        key_yaml,
        kid,
        issuer: "interop",
        public: key(public),
    }
}

/// A data URI brings its own kid; no kid is configured for it.
fn data_uri_case(algorithm: &'static str, file: &str, public: &str) -> Case {
    let uri = std::fs::read_to_string(key(file)).expect("fixture");
    let kid = percent_decode(
        uri.split(';')
            .nth(1)
            .and_then(|p| p.strip_prefix("kid="))
            .expect("kid in URI"),
    );
    Case {
        name: format!("{algorithm}-{file}"),
        algorithm,
        key_yaml: format!("private_key: {uri}"),
        kid,
        issuer: "fixture-issuer",
        public: key(public),
    }
}

fn percent_decode(s: &str) -> String {
    s.replace("%2F", "/").replace("%2f", "/")
}

fn matrix() -> Vec<Case> {
    let mut cases = Vec::new();
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        for file in [
            "rsa-2048.pkcs8.pem",
            "rsa-2048.pkcs1.pem",
            "rsa-2048.pkcs8.der.b64",
            "rsa-2048.pkcs1.der.b64",
            "rsa-2048.pkcs8.crlf.pem",
        ] {
            cases.push(case(alg, file, "rsa-2048.pub.pem", false));
        }
        cases.push(data_uri_case(alg, "rsa-2048.datauri", "rsa-2048.pub.pem"));
    }
    cases.push(case(
        "RS256",
        "rsa-2048.pkcs8.pem",
        "rsa-2048.pub.pem",
        true,
    ));
    for (alg, curve) in [("ES256", "p256"), ("ES384", "p384"), ("ES512", "p521")] {
        for form in [
            "pkcs8.pem",
            "sec1.pem",
            "sec1-params.pem",
            "pkcs8.der.b64",
            "sec1.der.b64",
        ] {
            let file = format!("ec-{curve}.{form}");
            cases.push(case(alg, &file, &format!("ec-{curve}.pub.pem"), false));
        }
        cases.push(case(
            alg,
            &format!("ec-{curve}.sec1-params.pem"),
            &format!("ec-{curve}.pub.pem"),
            true,
        ));
        cases.push(data_uri_case(
            alg,
            &format!("ec-{curve}.datauri"),
            &format!("ec-{curve}.pub.pem"),
        ));
    }
    cases.push(case(
        "ES256",
        "ec-p256.pkcs8.escaped-newlines.txt",
        "ec-p256.pub.pem",
        false,
    ));
    cases
}

fn proxy_config(
    upstream: &ReferenceUpstream,
    cases: &[Case],
    audience: &str,
    reuse: bool,
) -> String {
    let mut yaml = String::from("listen: 127.0.0.1:0\nroutes:\n");
    for case in cases {
        yaml.push_str(&format!(
            "  - host: {addr}\n    path_prefix: /{name}\n    audience: {audience}\n    asap:\n      \
             issuer: {issuer}\n      algorithm: {alg}\n      reuse: {reuse}\n      {key}\n",
            addr = upstream.addr,
            name = case.name,
            issuer = case.issuer,
            alg = case.algorithm,
            key = case.key_yaml,
        ));
    }
    yaml
}

/// Fetches every URL through the proxy with one curl process; returns one JSON body each.
async fn curl_through(proxy: &ProxyUnderTest, urls: &[String]) -> Vec<serde_json::Value> {
    let output = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--noproxy", "", "--proxy"])
        .arg(format!("http://{}", proxy.forward()))
        .args(["--write-out", "\n"])
        .args(urls)
        .stdout(Stdio::piped())
        .output()
        .await
        .expect("run curl");
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_verifier_accepts_every_algorithm_and_key_format() {
    let cases = matrix();
    let mut keys: Vec<_> = cases
        .iter()
        .map(|c| (c.kid.clone(), c.public.clone()))
        .collect();
    // The data-URI routes of one key share its kid.
    keys.sort();
    keys.dedup();
    let upstream = ReferenceUpstream::start(AUDIENCE, &keys, &[]).await;
    let several = format!("[first-other, {AUDIENCE}, last-other]");
    for audience in [AUDIENCE.to_owned(), several] {
        let proxy = ProxyUnderTest::start(&proxy_config(&upstream, &cases, &audience, true)).await;
        let urls: Vec<String> = cases
            .iter()
            .map(|c| format!("http://{}/{}/check", upstream.addr, c.name))
            .collect();

        let bodies = curl_through(&proxy, &urls).await;

        assert_eq!(bodies.len(), cases.len());
        for (case, body) in cases.iter().zip(&bodies) {
            assert_eq!(
                body["verified"], true,
                "{} (aud {audience}): {body}",
                case.name
            );
            assert_eq!(body["authorization_count"], 1, "{}", case.name);
            assert_eq!(body["header"]["alg"], case.algorithm, "{}", case.name);
            assert_eq!(body["header"]["kid"], case.kid.as_str(), "{}", case.name);
            assert_eq!(body["claims"]["iss"], case.issuer, "{}", case.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_tokens_pass_the_reference_replay_check() {
    let cases = vec![
        case("ES256", "ec-p256.pkcs8.pem", "ec-p256.pub.pem", false),
        case("PS256", "rsa-2048.pkcs8.pem", "rsa-2048.pub.pem", false),
    ];
    let keys: Vec<_> = cases
        .iter()
        .map(|c| (c.kid.clone(), c.public.clone()))
        .collect();
    let upstream = ReferenceUpstream::start(AUDIENCE, &keys, &["--check-jti-replay"]).await;
    let proxy = ProxyUnderTest::start(&proxy_config(&upstream, &cases, AUDIENCE, false)).await;
    let urls: Vec<String> = (0..5)
        .flat_map(|_| {
            cases
                .iter()
                .map(|c| format!("http://{}/{}/again", upstream.addr, c.name))
        })
        .collect();

    let bodies = curl_through(&proxy, &urls).await;

    assert_eq!(bodies.len(), urls.len());
    for body in &bodies {
        assert_eq!(
            body["verified"], true,
            "a repeated jti would be refused: {body}"
        );
    }
}
