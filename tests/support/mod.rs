//! Shared pieces of the integration tests: the proxy on port 0, mock upstreams on loopback,
//! a test certificate authority, a raw HTTP/1.1 client and a JWT reader.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support module"
)]

pub mod reference;
pub mod upstream;
pub mod wire;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use asap_proxy::config;
use asap_proxy::metrics::Metrics;
use asap_proxy::proxy::Proxy;
use asap_proxy::server::{self, Listeners};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio_util::sync::CancellationToken;

/// Absolute path of a committed fixture key.
pub fn key(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

/// The proxy, started in this process from YAML text, on ports chosen by the system.
pub struct ProxyUnderTest {
    pub forward: Option<SocketAddr>,
    pub reverse: Vec<SocketAddr>,
    shutdown: CancellationToken,
    pub dir: tempfile::TempDir,
    pub proxy: Arc<Proxy>,
    /// The configuration file, for reload tests to change.
    pub path: PathBuf,
}

impl ProxyUnderTest {
    /// Writes `yaml` to a temporary `proxy.yaml` and runs the proxy on it. The text may use
    /// `{keys}` for the fixture key directory and `{dir}` for the temporary directory.
    pub async fn start(yaml: &str) -> ProxyUnderTest {
        Self::start_with_files(yaml, &[]).await
    }

    /// As `start`, first writing `(name, contents)` files into the temporary directory.
    pub async fn start_with_files(yaml: &str, files: &[(&str, &str)]) -> ProxyUnderTest {
        let dir = tempfile::tempdir().expect("temporary directory");
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).expect("write test file");
        }
        let yaml = yaml
            .replace("{keys}", &key("").display().to_string())
            .replace("{dir}", &dir.path().display().to_string());
        let path = dir.path().join("proxy.yaml");
        std::fs::write(&path, yaml).expect("write proxy.yaml");
        let config = config::load(&path).unwrap_or_else(|e| panic!("test config is invalid: {e}"));
        let listeners = Listeners::bind(&config).await.expect("bind listeners");
        let forward = listeners.forward_addr();
        let reverse = listeners.reverse_addrs();
        let proxy = Arc::new(
            Proxy::new(config, Arc::new(Metrics::new()), listeners.addrs()).expect("proxy"),
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(server::run(
            proxy.clone(),
            listeners,
            shutdown.clone(),
            Duration::from_secs(5),
        ));
        ProxyUnderTest {
            forward,
            reverse,
            shutdown,
            dir,
            proxy,
            path,
        }
    }

    pub fn forward(&self) -> SocketAddr {
        self.forward
            .expect("the test config has a forward listener")
    }
}

impl Drop for ProxyUnderTest {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A decoded (not verified) JWT: header and claims as JSON.
#[derive(Debug)]
pub struct Jwt {
    pub header: serde_json::Value,
    pub claims: serde_json::Value,
    pub signature: Vec<u8>,
}

/// Reads the token out of an `Authorization: Bearer` value.
pub fn decode_bearer(value: &str) -> Jwt {
    let token = value
        .strip_prefix("Bearer ")
        .expect("a Bearer authorization");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three segments");
    let json = |segment: &str| -> serde_json::Value {
        let bytes = URL_SAFE_NO_PAD
            .decode(segment)
            .expect("base64url without padding");
        serde_json::from_slice(&bytes).expect("JSON segment")
    };
    Jwt {
        header: json(parts[0]),
        claims: json(parts[1]),
        signature: URL_SAFE_NO_PAD
            .decode(parts[2])
            .expect("base64url signature"),
    }
}

/// An address on loopback where nothing listens.
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local address")
}

/// A throw-away certificate authority and a leaf for `localhost` and 127.0.0.1.
pub struct TestCa {
    pub ca_pem: String,
    pub leaf_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub leaf_key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "asap-proxy test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("leaf params");
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("leaf certificate");
        TestCa {
            ca_pem: ca_cert.pem(),
            leaf_chain: vec![leaf.der().clone()],
            leaf_key: rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        }
    }

    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write CA");
        path
    }

    /// Writes the leaf's chain and key as PEM files, for servers outside this process.
    pub fn write_leaf(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let b64 = |der: &[u8]| {
            let text = base64::engine::general_purpose::STANDARD.encode(der);
            text.as_bytes()
                .chunks(64)
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let chain = self
            .leaf_chain
            .iter()
            .map(|c| {
                format!(
                    "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                    b64(c)
                )
            })
            .collect::<String>();
        let key = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            b64(self.leaf_key.secret_der())
        );
        let chain_path = dir.join("upstream-chain.pem");
        let key_path = dir.join("upstream-key.pem");
        std::fs::write(&chain_path, chain).expect("write chain");
        std::fs::write(&key_path, key).expect("write key");
        (chain_path, key_path)
    }

    /// Server configuration offering the given ALPN protocols.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(self.leaf_chain.clone(), self.leaf_key.clone_key())
        .expect("server certificate");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}
