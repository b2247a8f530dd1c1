//! TLS: the roots trusted for upstream connections, and the interception CA.

pub mod intercept;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("{path} holds no PEM certificate")]
    EmptyCaFile { path: PathBuf },
    #[error("{path}: certificate {index} is not usable as a root: {reason}")]
    BadRoot {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("no trusted root certificates: the system store is empty and no tls.ca_file is set")]
    NoRoots,
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the PEM certificates of an extra CA file, checking that each can be a trust anchor.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bad = |reason: String| Error::CaFile {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(Error::EmptyCaFile {
            path: path.to_owned(),
        });
    }
    let mut check = RootCertStore::empty();
    for (index, cert) in certs.iter().enumerate() {
        check.add(cert.clone()).map_err(|e| Error::BadRoot {
            path: path.to_owned(),
            index,
            reason: e.to_string(),
        })?;
    }
    Ok(certs)
}

/// The system's trusted roots plus `extra`.
pub fn roots(extra: &[CertificateDer<'static>]) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        tracing::debug!(error = %err, "skipping part of the system trust store");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "loaded system trust store");
    roots.add_parsable_certificates(extra.iter().cloned());
    if roots.is_empty() {
        return Err(Error::NoRoots);
    }
    Ok(roots)
}

/// Client configuration for upstream connections; ALPN is left to the connector.
pub fn client_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, Error> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(extra_roots)?)
        .with_no_client_auth())
}
