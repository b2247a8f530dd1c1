//! Configuration checking: the shipped example loads, and every kind of mistake is refused
//! with one error that names the file, the position and the key path.

mod support;

use std::path::Path;

use asap_proxy::config::{self, Unmatched};
use asap_proxy::routes::Host;
use support::key;

fn parse(yaml: &str) -> Result<config::Config, config::Error> {
    let yaml = yaml.replace("{keys}", &key("").display().to_string());
    config::parse(&yaml, Path::new("proxy.yaml"))
}

fn error(yaml: &str) -> String {
    match parse(yaml) {
        Ok(_) => panic!("config was accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

const DEFAULTS: &str = "listen: 127.0.0.1:8080\nasap:\n  issuer: svc\n  kid: svc/k1\n  algorithm: ES256\n  \
                        private_key_file: {keys}/ec-p256.pkcs8.pem\n";

#[test]
fn shipped_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.yaml.example");
    let config = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.listen, Some("127.0.0.1:8080".parse().expect("addr")));
    assert_eq!(config.reverse.len(), 1);
    assert_eq!(config.unmatched, Unmatched::Deny);
    let httpbin = config
        .routes
        .find(&Host::parse("httpbin.org").expect("host"), 80, "/headers");
    assert!(httpbin.is_some_and(|r| r.upstream_tls));
    let internal = config
        .routes
        .find(
            &Host::parse("db.internal.example").expect("host"),
            80,
            "/v2/x",
        )
        .expect("wildcard route");
    assert_eq!(internal.minter.spec().algorithm().as_str(), "ES256");
    assert_eq!(
        internal.minter.spec().audience().as_slice(),
        ["internal-gateway", "audit"]
    );
}

#[test]
fn route_settings_override_the_defaults() {
    let yaml = format!(
        "{DEFAULTS}  expiry: 60\nroutes:\n  - host: a.test\n    audience: one\n  - host: b.test\n    \
         audience: two\n    asap:\n      issuer: other\n      kid: other/rsa\n      algorithm: PS384\n      \
         private_key_file: {{keys}}/rsa-2048.pkcs1.pem\n      reuse: false\n"
    );
    let config = parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let a = config
        .routes
        .find(&Host::parse("a.test").expect("host"), 80, "/")
        .expect("a");
    let b = config
        .routes
        .find(&Host::parse("b.test").expect("host"), 80, "/")
        .expect("b");
    assert_eq!(
        (
            a.minter.spec().issuer(),
            a.minter.spec().lifetime().as_secs()
        ),
        ("svc", 60)
    );
    assert!(a.minter.reuse());
    let spec = b.minter.spec();
    assert_eq!(
        (
            spec.issuer(),
            spec.kid().as_str(),
            spec.algorithm().as_str()
        ),
        ("other", "other/rsa", "PS384")
    );
    assert_eq!(
        spec.lifetime().as_secs(),
        60,
        "expiry still comes from the defaults"
    );
    assert!(!b.minter.reuse());
}

#[test]
fn data_uri_supplies_the_kid() {
    let uri = std::fs::read_to_string(key("ec-p256.datauri")).expect("fixture");
    let yaml = format!(
        "listen: 127.0.0.1:0\nasap:\n  issuer: fixture-issuer\n  algorithm: ES256\n  private_key: {uri}\n\
         routes:\n  - host: a.test\n    audience: x\n"
    );
    let config = parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let (_, route) = config.routes.iter().next().expect("one route");
    assert_eq!(route.minter.spec().kid().as_str(), "fixture-issuer/ec-p256");

    let clash = yaml.replace(
        "  algorithm: ES256\n",
        "  algorithm: ES256\n  kid: fixture-issuer/other\n",
    );
    let err = error(&clash);
    assert!(err.starts_with("proxy.yaml:5:8: asap.kid:"), "{err}");
    assert!(
        err.contains("differs from the kid \"fixture-issuer/ec-p256\""),
        "{err}"
    );
}

/// Each bad file gives one error; the expected text is the start of the message (position
/// and key path included) and a part of its explanation.
#[test]
fn mistakes_are_refused_with_their_location() {
    let route = "routes:\n  - host: a.test\n    audience: x\n";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("{DEFAULTS}{route}  - host: b.test\n    audiense: y\n"),
            "proxy.yaml:11:5: routes[1].audiense:",
            "unknown field",
        ),
        (
            format!("{DEFAULTS}  isuer: x\n{route}"),
            "proxy.yaml:7:3: asap.isuer:",
            "unknown field",
        ),
        (
            format!("{DEFAULTS}{route}extra: 1\n"),
            "proxy.yaml:10:1: extra:",
            "unknown field",
        ),
        (
            format!("{DEFAULTS}{route}").replace("svc/k1", "other/k1"),
            "proxy.yaml:4:8: asap.kid:",
            "must start with the issuer",
        ),
        (
            format!("{DEFAULTS}{route}").replace("svc/k1", "svc/../k1"),
            "proxy.yaml:4:8: asap.kid:",
            "kid",
        ),
        (
            format!("{DEFAULTS}{route}").replace("svc/k1", "svc/k 1"),
            "proxy.yaml:4:8: asap.kid:",
            "kid",
        ),
        (
            format!("{DEFAULTS}{route}").replace("ES256", "HS256"),
            "proxy.yaml:5:14: asap.algorithm:",
            "unknown algorithm",
        ),
        (
            format!("{DEFAULTS}{route}").replace("ES256", "RS256"),
            "proxy.yaml:5:14: asap.algorithm:",
            "RSA",
        ),
        (
            format!("{DEFAULTS}{route}").replace("ES256", "ES384"),
            "proxy.yaml:5:14: asap.algorithm:",
            "P-384",
        ),
        (
            format!("{DEFAULTS}  expiry: 3601\n{route}"),
            "proxy.yaml:7:11: asap.expiry:",
            "between 1 and 3600",
        ),
        (
            format!("{DEFAULTS}  expiry: 0\n{route}"),
            "proxy.yaml:7:11: asap.expiry:",
            "between 1 and 3600",
        ),
        (
            format!("{DEFAULTS}  expiry: soon\n{route}"),
            "proxy.yaml:7:11: asap.expiry:",
            "",
        ),
        (
            format!("{DEFAULTS}  additional_claims: {{jti: x}}\n{route}"),
            "proxy.yaml:7:22: asap.additional_claims:",
            "jti",
        ),
        (
            format!("{DEFAULTS}  additional_claims: {{sub: 5}}\n{route}"),
            "proxy.yaml:7:22: asap.additional_claims:",
            "sub",
        ),
        (
            format!("{DEFAULTS}  private_key: x\n{route}"),
            "proxy.yaml:7:16: asap.private_key:",
            "set only one of",
        ),
        (
            format!("{DEFAULTS}{route}").replace("ec-p256.pkcs8.pem", "rsa-2048.encrypted.pem"),
            "proxy.yaml:6:21: asap.private_key_file:",
            "encrypted private keys are not supported",
        ),
        (
            format!("{DEFAULTS}{route}").replace("ec-p256.pkcs8.pem", "ec-p256.encrypted-sec1.pem"),
            "proxy.yaml:6:21: asap.private_key_file:",
            "encrypted private keys are not supported",
        ),
        (
            format!("{DEFAULTS}{route}").replace("ec-p256.pkcs8.pem", "missing.pem"),
            "proxy.yaml:6:21: asap.private_key_file:",
            "cannot read",
        ),
        (
            format!("{DEFAULTS}{route}").replace("ec-p256.pkcs8.pem", "ed25519.pkcs8.pem"),
            "proxy.yaml:6:21: asap.private_key_file:",
            "",
        ),
        (
            format!("{DEFAULTS}{route}")
                .replace("ES256", "RS256")
                .replace("ec-p256.pkcs8.pem", "rsa-1024.pkcs8.pem"),
            "proxy.yaml:6:21: asap.private_key_file:",
            "2048",
        ),
        (
            format!("{DEFAULTS}{route}").replace("a.test", "a..test"),
            "proxy.yaml:8:11: routes[0].host:",
            "not a valid host",
        ),
        (
            format!("{DEFAULTS}{route}").replace("a.test", "a.*.test"),
            "proxy.yaml:8:11: routes[0].host:",
            "wildcard",
        ),
        (
            format!("{DEFAULTS}{route}").replace("a.test", "a.test:99999"),
            "proxy.yaml:8:11: routes[0].host:",
            "port",
        ),
        (
            format!("{DEFAULTS}{route}  - host: A.TEST.\n    audience: other\n"),
            "proxy.yaml:10:11: routes[1].host:",
            "same requests as route 0",
        ),
        (
            format!("{DEFAULTS}routes:\n  - host: a.test\n"),
            "proxy.yaml:8:11: routes[0].audience:",
            "needs an audience",
        ),
        (
            format!("{DEFAULTS}routes:\n  - host: a.test\n    audience: []\n"),
            "proxy.yaml:9:15: routes[0].audience:",
            "",
        ),
        (
            format!("{DEFAULTS}routes:\n  - host: a.test\n    audience: {{a: b}}\n"),
            "proxy.yaml:9:15: routes[0].audience:",
            "a string or a list of strings",
        ),
        (
            format!("{DEFAULTS}{route}    path_prefix: v2\n"),
            "proxy.yaml:10:18: routes[0].path_prefix:",
            "must start with /",
        ),
        (
            format!("{DEFAULTS}{route}    path_prefix: /v2/../admin\n"),
            "proxy.yaml:10:18: routes[0].path_prefix:",
            ". or .. segment",
        ),
        (
            format!("{DEFAULTS}{route}unmatched: allow\n"),
            "proxy.yaml:10:12: unmatched:",
            "\"deny\" or \"forward\"",
        ),
        (
            format!("{DEFAULTS}{route}").replace("127.0.0.1:8080", "localhost:80"),
            "proxy.yaml:1:9: listen:",
            "IP address with a port",
        ),
        (
            format!(
                "{DEFAULTS}{route}reverse:\n  - listen: 127.0.0.1:9000\n    upstream: ftp://x\n"
            ),
            "proxy.yaml:12:15: reverse[0].upstream:",
            "only http and https",
        ),
        (
            format!(
                "{DEFAULTS}{route}reverse:\n  - listen: 127.0.0.1:8080\n    upstream: http://x\n"
            ),
            "proxy.yaml: reverse[0].listen:",
            "overlaps 127.0.0.1:8080, used by listen",
        ),
        (
            format!(
                "{DEFAULTS}{route}reverse:\n  - listen: 0.0.0.0:8080\n    upstream: http://x\n"
            ),
            "proxy.yaml: reverse[0].listen:",
            "overlaps",
        ),
        (
            format!(
                "{DEFAULTS}{route}reverse:\n  - listen: 127.0.0.1:9000\n    upstream: http://127.0.0.1:9000\n"
            ),
            "proxy.yaml: reverse[0].upstream:",
            "requests would loop",
        ),
        (
            format!("{DEFAULTS}{route}tls:\n  ca_file: /no/such/ca.pem\n"),
            "proxy.yaml:11:12: tls.ca_file:",
            "cannot read /no/such/ca.pem",
        ),
        (
            format!("{DEFAULTS}{route}tls:\n  ca_file: {{keys}}/README.md\n"),
            "proxy.yaml:11:12: tls.ca_file:",
            "holds no PEM certificate",
        ),
        (
            format!(
                "{DEFAULTS}{route}  - host: b.test\n    audience: x\n    asap:\n      \
                 private_key_file: {{keys}}/ec-p256.sec1-params.pem\n  - host: c.test\n    \
                 audience: x\n    asap:\n      private_key_file: {{keys}}/rsa-2048.pkcs1.pem\n      \
                 algorithm: RS256\n"
            ),
            "proxy.yaml:14:11: routes[2].asap.kid:",
            "already names a different key in route 0",
        ),
        (
            format!("{DEFAULTS}{route}timeouts:\n  connect_seconds: -1\n"),
            "proxy.yaml:11:20: timeouts.connect_seconds:",
            "above 0",
        ),
        (
            "routes: []\n".to_owned(),
            "proxy.yaml: listen:",
            "no listener",
        ),
        (
            format!("{DEFAULTS}{route}").replace("127.0.0.1:8080", "0.0.0.0:8080"),
            "proxy.yaml: listen:",
            "reachable from other machines",
        ),
        (
            format!(
                "{DEFAULTS}{route}reverse:\n  - listen: \"[::]:9000\"\n    upstream: http://x\n"
            ),
            "proxy.yaml: reverse[0].listen:",
            "add a clients section",
        ),
        (
            format!("{DEFAULTS}{route}clients: {{}}\n"),
            "proxy.yaml:10:10: clients:",
            "set allow",
        ),
        (
            format!("{DEFAULTS}{route}clients:\n  allow: [10.0.0.0/33]\n"),
            "proxy.yaml:11:11: clients.allow[0]:",
            "not a CIDR",
        ),
        (
            format!(
                "{DEFAULTS}{route}clients:\n  users:\n    - name: a\n      password_env: X\n      password_file: y\n"
            ),
            "proxy.yaml:12:13: clients.users[0]:",
            "exactly one of password_env and password_file",
        ),
        (
            format!(
                "{DEFAULTS}{route}clients:\n  users:\n    - name: a\n      password_env: ASAP_PROXY_TEST_UNSET_VARIABLE\n"
            ),
            "proxy.yaml:13:21: clients.users[0].password_env:",
            "is not set",
        ),
        (
            format!("{DEFAULTS}{route}admin: 0.0.0.0:9901\n"),
            "proxy.yaml:10:8: admin:",
            "admin_expose: true",
        ),
        (
            format!("{DEFAULTS}{route}workers: 0\n"),
            "proxy.yaml:10:10: workers:",
            "from 1 to 1024",
        ),
        (
            format!("{DEFAULTS}{route}limits:\n  max_header_bytes: 100\n"),
            "proxy.yaml:11:21: limits.max_header_bytes:",
            "from 8192",
        ),
        (
            format!("{DEFAULTS}{route}log_level: \"asap_proxy=loud\"\n"),
            "proxy.yaml:10:12: log_level:",
            "not a log filter",
        ),
        (
            format!("{DEFAULTS}{route}destinations:\n  deny: [nope]\n"),
            "proxy.yaml:11:10: destinations.deny[0]:",
            "not a CIDR",
        ),
        ("listen: [127.0.0.1\n".to_owned(), "proxy.yaml:", ""),
        (
            format!("listen: 127.0.0.1:0\n{route}"),
            "proxy.yaml:3:11: routes[0].asap.issuer:",
            "no issuer",
        ),
    ];
    let mut wrong = Vec::new();
    for (yaml, prefix, explanation) in cases {
        let err = error(&yaml);
        if !err.starts_with(prefix) || !err.contains(explanation) {
            wrong.push(format!(
                "expected {prefix:?} with {explanation:?}, got {err:?}"
            ));
        }
        assert!(!err.contains("BEGIN"), "no key material in errors: {err}");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn inline_key_errors_never_echo_the_key() {
    let pem = std::fs::read_to_string(key("ec-p256.pkcs8.pem")).expect("fixture");
    // A valid key body with its armour damaged.
    let damaged = pem.replace("-----END PRIVATE KEY-----", "-----END PRIVATE KEY----");
    let yaml = format!(
        "listen: 127.0.0.1:0\nasap:\n  issuer: s\n  kid: s/k\n  algorithm: ES256\n  private_key: {}\n\
         routes:\n  - host: a.test\n    audience: x\n",
        serde_json::to_string(&damaged).expect("json")
    );
    let err = error(&yaml);
    let body_line = pem.lines().nth(1).expect("base64 line");
    assert!(!err.contains(body_line), "{err}");
    assert!(
        err.starts_with("proxy.yaml:6:16: asap.private_key:"),
        "{err}"
    );
}

#[test]
fn exposed_listener_is_accepted_with_a_clients_section() {
    let yaml = format!(
        "{}routes:\n  - host: a.test\n    audience: x\nclients:\n  allow: [10.0.0.0/8, \"::/0\"]\nadmin: 0.0.0.0:9901\nadmin_expose: true\n",
        DEFAULTS.replace("127.0.0.1:8080", "0.0.0.0:8080")
    );
    parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn yaml_1_1_booleans_are_plain_strings() {
    let yaml = format!("{DEFAULTS}routes:\n  - host: a.test\n    audience: on\n");
    let config = parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let (_, route) = config.routes.iter().next().expect("route");
    assert_eq!(route.minter.spec().audience().as_slice(), ["on"]);

    let err = error(&format!(
        "{DEFAULTS}routes:\n  - host: a.test\n    audience: x\n    upstream_tls: yes\n"
    ));
    assert!(
        err.starts_with("proxy.yaml:10:19: routes[0].upstream_tls:"),
        "{err}"
    );
}
