//! TLS interception: a local certificate authority that issues a leaf certificate for each
//! host a client tunnels to, so the proxy can read, sign and re-originate its requests.

use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use crate::routes::Host;

/// Leaves kept ready; beyond this the least recently used is issued again when needed.
const LEAF_CACHE: usize = 1024;
/// How long a leaf is valid. Clients check validity, so a cached leaf is reissued a day
/// before it ends.
const LEAF_VALIDITY: Duration = Duration::days(30);
const LEAF_RENEW_BEFORE: Duration = Duration::days(1);
/// Clocks of clients may run a little behind ours.
const BACKDATE: Duration = Duration::hours(1);
/// Validity of a CA made by `ca init`.
const CA_VALIDITY: Duration = Duration::days(3 * 365);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} is not a PEM certificate: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("{path} is not a certificate authority (its basic constraints do not allow issuing)")]
    NotCa { path: PathBuf },
    #[error("{path} is not a PKCS#8 PEM private key, as `asap-proxy ca init` writes")]
    Key { path: PathBuf },
    #[error("the CA key does not belong to the CA certificate")]
    KeyMismatch,
    #[error("cannot issue a certificate: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("cannot build the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The interception CA, with the leaves it has issued.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    subject: String,
    /// One key serves every leaf: issuing is then a signature, not a key generation.
    leaf_key: KeyPair,
    leaves: Mutex<lru::LruCache<Host, Leaf>>,
}

#[derive(Clone)]
struct Leaf {
    config: Arc<ServerConfig>,
    renew_at: OffsetDateTime,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads a CA certificate and its PKCS#8 key, checking that they belong together.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Authority, Error> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| Error::Read {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        };
        let cert_pem = read(cert_path)?;
        let key_pem = zeroize::Zeroizing::new(read(key_path)?);
        let bad_cert = |reason: String| Error::Certificate {
            path: cert_path.to_owned(),
            reason,
        };

        let ca_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad_cert(e.to_string()))?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&ca_der).map_err(|e| bad_cert(e.to_string()))?;
        if !parsed.is_ca() {
            return Err(Error::NotCa {
                path: cert_path.to_owned(),
            });
        }
        let subject = parsed.subject().to_string();
        let key = KeyPair::from_pem(&key_pem).map_err(|_| Error::Key {
            path: key_path.to_owned(),
        })?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(Error::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&ca_der, key).map_err(|e| bad_cert(e.to_string()))?;
        Ok(Authority {
            issuer,
            ca_der,
            subject,
            leaf_key: KeyPair::generate()?,
            leaves: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(LEAF_CACHE).expect("non-zero"),
            )),
        })
    }

    /// The CA certificate's subject, for display.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// A TLS server configuration presenting a leaf for `host`, offering h2 and http/1.1.
    pub fn server_config(&self, host: &Host) -> Result<Arc<ServerConfig>, Error> {
        let now = OffsetDateTime::now_utc();
        if let Some(leaf) = self.cached(host)
            && now < leaf.renew_at
        {
            return Ok(leaf.config);
        }
        let (der, not_after) = self.issue(host, now)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![der, self.ca_der.clone()], key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let leaf = Leaf {
            config: Arc::new(config),
            renew_at: not_after - LEAF_RENEW_BEFORE,
        };
        self.leaves
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(host.clone(), leaf.clone());
        Ok(leaf.config)
    }

    fn cached(&self, host: &Host) -> Option<Leaf> {
        self.leaves
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .cloned()
    }

    /// Issues a leaf naming `host` (a DNS or an IP subject alternative name).
    fn issue(
        &self,
        host: &Host,
        now: OffsetDateTime,
    ) -> Result<(CertificateDer<'static>, OffsetDateTime), Error> {
        let mut params = CertificateParams::new(vec![host.as_str().to_owned()])?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, host.as_str());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        let cert = params.signed_by(&self.leaf_key, &self.issuer)?;
        Ok((cert.der().clone(), params.not_after))
    }
}

/// A new CA: its certificate and its private key, both PEM. The key is PKCS#8.
pub fn create_ca(common_name: &str) -> Result<(String, zeroize::Zeroizing<String>), Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "asap-proxy");
    // It issues leaves only, never other CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), zeroize::Zeroizing::new(key.serialize_pem())))
}

/// 16 random bytes, positive as DER integers must be for serial numbers.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // Without randomness a fixed serial still works; clients only reject reused serials
    // across different certificates, which the leaf cache avoids within one process.
    let _ = getrandom::fill(&mut bytes);
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    use std::net::IpAddr;
    use x509_parser::extensions::GeneralName;

    fn authority(dir: &Path) -> Authority {
        let (cert, key) = create_ca("test CA").expect("create CA");
        std::fs::write(dir.join("ca.pem"), cert).expect("write");
        std::fs::write(dir.join("ca-key.pem"), key.as_bytes()).expect("write");
        Authority::load(&dir.join("ca.pem"), &dir.join("ca-key.pem")).expect("load CA")
    }

    fn verify(
        ca_der: &CertificateDer<'static>,
        chain: &[CertificateDer<'static>],
        name: &str,
    ) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der.clone()).expect("root");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            super::super::provider(),
        )
        .build()
        .expect("verifier");
        let name = ServerName::try_from(name.to_owned()).expect("server name");
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn leaves_chain_to_the_ca_and_name_the_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = authority(dir.path());
        for host in ["api.example.test", "127.0.0.1", "::1"] {
            let host = Host::parse(host).expect("host");
            let (der, _) = ca.issue(&host, OffsetDateTime::now_utc()).expect("issue");
            let chain = vec![der.clone(), ca.ca_der.clone()];
            verify(&ca.ca_der, &chain, host.as_str()).expect("chains to the CA and names the host");
            assert!(
                verify(&ca.ca_der, &chain, "other.test").is_err(),
                "names only its host"
            );

            let (_, leaf) = x509_parser::parse_x509_certificate(&der).expect("parse leaf");
            let san = leaf
                .subject_alternative_name()
                .expect("extension")
                .expect("SAN");
            let [name] = san.value.general_names.as_slice() else {
                panic!("one name: {:?}", san.value.general_names);
            };
            match (name, host.ip()) {
                (GeneralName::IPAddress(bytes), Some(IpAddr::V4(ip))) => {
                    assert_eq!(*bytes, ip.octets())
                }
                (GeneralName::IPAddress(bytes), Some(IpAddr::V6(ip))) => {
                    assert_eq!(*bytes, ip.octets())
                }
                (GeneralName::DNSName(dns), None) => assert_eq!(*dns, host.as_str()),
                (other, _) => panic!("{host} got {other:?}"),
            }
            assert!(!leaf.is_ca());
        }
    }

    #[test]
    fn leaves_are_cached_per_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = authority(dir.path());
        let a = Host::parse("a.test").expect("host");
        let b = Host::parse("b.test").expect("host");
        let first = ca.server_config(&a).expect("config");
        assert!(Arc::ptr_eq(&first, &ca.server_config(&a).expect("config")));
        assert!(!Arc::ptr_eq(&first, &ca.server_config(&b).expect("config")));
        assert_eq!(first.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn mismatched_or_non_ca_material_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, _) = create_ca("one").expect("CA");
        let (_, other_key) = create_ca("two").expect("CA");
        std::fs::write(dir.path().join("ca.pem"), &cert).expect("write");
        std::fs::write(dir.path().join("other-key.pem"), other_key.as_bytes()).expect("write");
        let err = Authority::load(
            &dir.path().join("ca.pem"),
            &dir.path().join("other-key.pem"),
        )
        .expect_err("mismatch");
        assert!(matches!(err, Error::KeyMismatch), "{err}");

        let ca = authority(dir.path());
        let (leaf, _) = ca
            .issue(
                &Host::parse("leaf.test").expect("host"),
                OffsetDateTime::now_utc(),
            )
            .expect("leaf");
        let leaf_pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, leaf.as_ref())
        );
        std::fs::write(dir.path().join("leaf.pem"), leaf_pem).expect("write");
        let err = Authority::load(&dir.path().join("leaf.pem"), &dir.path().join("ca-key.pem"))
            .expect_err("not a CA");
        assert!(matches!(err, Error::NotCa { .. }), "{err}");

        let err = Authority::load(&dir.path().join("ca.pem"), &dir.path().join("ca.pem"))
            .expect_err("not a key");
        assert!(matches!(err, Error::Key { .. }), "{err}");
    }
}
