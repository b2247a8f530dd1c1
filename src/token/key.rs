//! Private signing keys: what kind each is, which algorithms it fits, and signing with it.

use std::fmt;

use p256::ecdsa::signature::Signer;
use p256::elliptic_curve::Generate;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::rand_core::{TryCryptoRng, TryRng};
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, Pss};
use sha2::{Digest, Sha256, Sha384, Sha512};

use zeroize::Zeroizing;

use super::algorithm::{Algorithm, Family};

/// The smallest RSA modulus the proxy signs with, in bits.
pub const MIN_RSA_BITS: u32 = 2048;

/// A private key the proxy signs tokens with.
///
/// Its `Debug` prints only the key's kind, never key material, and the RustCrypto key types
/// inside wipe their secrets when dropped. Share one through an `Arc`; it is not `Clone`.
pub struct SigningKey {
    inner: Inner,
}

pub(super) enum Inner {
    Rsa(Box<rsa::PrivateKey>),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    P521(p521::ecdsa::SigningKey),
}

/// A key parsed from configuration, with the `kid` a data URI carried, if any.
#[derive(Debug)]
pub struct ParsedKey {
    pub key: SigningKey,
    /// The percent-decoded `kid` parameter of a data URI; `None` for PEM and bare DER.
    pub kid: Option<String>,
}

/// The public description of a key: its type and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA with a modulus of `bits` bits, for RS* and PS*.
    Rsa { bits: u32 },
    /// ECDSA on P-256 (prime256v1), for ES256.
    EcP256,
    /// ECDSA on P-384 (secp384r1), for ES384.
    EcP384,
    /// ECDSA on P-521 (secp521r1), for ES512.
    EcP521,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Rsa { bits } => write!(f, "RSA {bits}-bit"),
            KeyKind::EcP256 => f.write_str("EC P-256"),
            KeyKind::EcP384 => f.write_str("EC P-384"),
            KeyKind::EcP521 => f.write_str("EC P-521"),
        }
    }
}

/// Why a key could not be read, made or used. No message carries key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("key is empty")]
    Empty,
    #[error("encrypted private keys are not supported")]
    Encrypted,
    #[error(
        "unsupported key type {0}: use an RSA key of at least 2048 bits or an EC P-256, P-384 \
         or P-521 key"
    )]
    UnsupportedType(String),
    #[error("rsa key is {bits} bits: at least 2048 are required")]
    RsaTooSmall { bits: u32 },
    #[error("found a {0}, not a private key")]
    NotPrivateKey(&'static str),
    #[error("unsupported pem block {0:?}: expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY")]
    UnsupportedPemLabel(String),
    #[error("pem holds more than one private key")]
    MultipleKeys,
    #[error("malformed {format} key: {reason}")]
    Malformed {
        format: &'static str,
        reason: String,
    },
    #[error("malformed data uri: {0}")]
    DataUri(&'static str),
    #[error(
        "unrecognised key format: expected a PEM private key, base64 DER or a \
         data:application/pkcs8 uri"
    )]
    Unrecognised,
    #[error("{algorithm} needs {needs}, but the key is {kind}")]
    AlgorithmMismatch {
        algorithm: Algorithm,
        kind: KeyKind,
        needs: &'static str,
    },
    #[error("key generation failed: {0}")]
    Generate(String),
    #[error("key encoding failed: {0}")]
    Encode(String),
}

/// Why a signature (or a token around it) could not be made. Like every error here, the
/// message includes its cause instead of chaining it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    #[error("cannot sign: {0}")]
    Key(KeyError),
    #[error("rsa signing failed: {0}")]
    Rsa(rsa::Error),
    #[error("ecdsa signing failed: {0}")]
    Ecdsa(p256::ecdsa::Error),
    #[error("system random number generator failed: {0}")]
    Random(getrandom::Error),
    #[error("system clock is before 1970")]
    Clock,
    #[error("token encoding failed: {0}")]
    Json(serde_json::Error),
    #[error("token encoding failed: not a valid header value")]
    Encoding,
}

impl From<KeyError> for SignError {
    fn from(e: KeyError) -> Self {
        SignError::Key(e)
    }
}

impl From<serde_json::Error> for SignError {
    fn from(e: serde_json::Error) -> Self {
        SignError::Json(e)
    }
}

impl SigningKey {
    /// Parses a key in any format the proxy accepts; see the `parse` module for the list.
    pub fn parse(text: &str) -> Result<ParsedKey, KeyError> {
        super::parse::parse(text)
    }

    /// Wraps an RSA key, refusing one too small to sign with.
    pub(super) fn from_rsa(key: rsa::PrivateKey) -> Result<SigningKey, KeyError> {
        let bits = key.n().bit_width_vartime();
        if bits < MIN_RSA_BITS {
            return Err(KeyError::RsaTooSmall { bits });
        }
        Ok(SigningKey {
            inner: Inner::Rsa(Box::new(key)),
        })
    }

    pub(super) fn from_inner(inner: Inner) -> SigningKey {
        SigningKey { inner }
    }

    /// The key's type and size, safe to log.
    pub fn kind(&self) -> KeyKind {
        match &self.inner {
            Inner::Rsa(key) => KeyKind::Rsa {
                bits: key.n().bit_width_vartime(),
            },
            Inner::P256(_) => KeyKind::EcP256,
            Inner::P384(_) => KeyKind::EcP384,
            Inner::P521(_) => KeyKind::EcP521,
        }
    }

    /// Checks that this key can sign with `algorithm`: RS* and PS* need RSA of at least
    /// 2048 bits, ES256 needs P-256, ES384 P-384 and ES512 P-521.
    pub fn check_algorithm(&self, algorithm: Algorithm) -> Result<(), KeyError> {
        let kind = self.kind();
        let needs = match algorithm {
            Algorithm::Es256 => "an EC P-256 key",
            Algorithm::Es384 => "an EC P-384 key",
            Algorithm::Es512 => "an EC P-521 key",
            _ => "an RSA key of at least 2048 bits",
        };
        let fits = match (algorithm.family(), kind) {
            (Family::RsaPkcs1v15 | Family::RsaPss, KeyKind::Rsa { bits }) => bits >= MIN_RSA_BITS,
            (Family::Ecdsa, KeyKind::EcP256) => algorithm == Algorithm::Es256,
            (Family::Ecdsa, KeyKind::EcP384) => algorithm == Algorithm::Es384,
            (Family::Ecdsa, KeyKind::EcP521) => algorithm == Algorithm::Es512,
            _ => false,
        };
        if fits {
            Ok(())
        } else {
            Err(KeyError::AlgorithmMismatch {
                algorithm,
                kind,
                needs,
            })
        }
    }

    /// The public half as SubjectPublicKeyInfo PEM, what a key server would publish.
    pub fn public_key_pem(&self) -> String {
        let pem = match &self.inner {
            Inner::Rsa(key) => key.to_public_key().to_public_key_pem(LineEnding::LF),
            Inner::P256(key) => key.verifying_key().to_public_key_pem(LineEnding::LF),
            Inner::P384(key) => key.verifying_key().to_public_key_pem(LineEnding::LF),
            Inner::P521(key) => key.verifying_key().to_public_key_pem(LineEnding::LF),
        };
        // Encoding a public key we already hold only fails on allocation or a bug in `spki`.
        pem.expect("a valid public key always encodes as SubjectPublicKeyInfo")
    }

    /// Makes a fresh key for `algorithm`: RSA 2048 for RS* and PS*, the matching curve for ES*.
    pub fn generate(algorithm: Algorithm) -> Result<SigningKey, KeyError> {
        let failed = |e: &dyn fmt::Display| KeyError::Generate(e.to_string());
        let inner = match algorithm {
            Algorithm::Es256 => Inner::P256(
                p256::ecdsa::SigningKey::try_generate_from_rng(&mut OsRng)
                    .map_err(|e| failed(&e))?,
            ),
            Algorithm::Es384 => Inner::P384(
                p384::ecdsa::SigningKey::try_generate_from_rng(&mut OsRng)
                    .map_err(|e| failed(&e))?,
            ),
            Algorithm::Es512 => Inner::P521(
                p521::ecdsa::SigningKey::try_generate_from_rng(&mut OsRng)
                    .map_err(|e| failed(&e))?,
            ),
            _ => {
                let key = rsa::PrivateKey::new(&mut OsRng, MIN_RSA_BITS as usize)
                    .map_err(|e| failed(&e))?;
                Inner::Rsa(Box::new(key))
            }
        };
        Ok(SigningKey { inner })
    }

    /// The private key as unencrypted PKCS#8 PEM, wiped from memory when dropped.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        let pem = match &self.inner {
            Inner::Rsa(key) => key.to_pkcs8_pem(LineEnding::LF),
            Inner::P256(key) => key.to_pkcs8_pem(LineEnding::LF),
            Inner::P384(key) => key.to_pkcs8_pem(LineEnding::LF),
            Inner::P521(key) => key.to_pkcs8_pem(LineEnding::LF),
        };
        pem.map_err(|e| KeyError::Encode(e.to_string()))
    }

    /// Signs `message` as JWS `algorithm` requires: PKCS#1 v1.5 or PSS (salt as long as the
    /// hash) for RSA, and for ECDSA the fixed-width `r || s` bytes, never DER.
    pub fn sign(&self, algorithm: Algorithm, message: &[u8]) -> Result<Vec<u8>, SignError> {
        self.check_algorithm(algorithm)?;
        let rsa = |r: rsa::Result<Vec<u8>>| r.map_err(SignError::Rsa);
        match (&self.inner, algorithm) {
            (Inner::Rsa(key), Algorithm::Rs256) => {
                rsa(key.sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(message)))
            }
            (Inner::Rsa(key), Algorithm::Rs384) => {
                rsa(key.sign(Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(message)))
            }
            (Inner::Rsa(key), Algorithm::Rs512) => {
                rsa(key.sign(Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(message)))
            }
            (Inner::Rsa(key), Algorithm::Ps256) => {
                rsa(key.sign(Pss::<Sha256>::new(), &Sha256::digest(message)))
            }
            (Inner::Rsa(key), Algorithm::Ps384) => {
                rsa(key.sign(Pss::<Sha384>::new(), &Sha384::digest(message)))
            }
            (Inner::Rsa(key), Algorithm::Ps512) => {
                rsa(key.sign(Pss::<Sha512>::new(), &Sha512::digest(message)))
            }
            (Inner::P256(key), Algorithm::Es256) => {
                let signature: p256::ecdsa::Signature =
                    key.try_sign(message).map_err(SignError::Ecdsa)?;
                Ok(signature.to_vec())
            }
            (Inner::P384(key), Algorithm::Es384) => {
                let signature: p384::ecdsa::Signature =
                    key.try_sign(message).map_err(SignError::Ecdsa)?;
                Ok(signature.to_vec())
            }
            (Inner::P521(key), Algorithm::Es512) => {
                let signature: p521::ecdsa::Signature =
                    key.try_sign(message).map_err(SignError::Ecdsa)?;
                Ok(signature.to_vec())
            }
            // `check_algorithm` has already refused every other pairing.
            _ => Err(SignError::Key(KeyError::AlgorithmMismatch {
                algorithm,
                kind: self.kind(),
                needs: "a key that fits the algorithm",
            })),
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kind", &self.kind().to_string())
            .finish()
    }
}

/// The operating system's random number generator, in the shape the RustCrypto crates take.
pub(crate) struct OsRng;

impl TryRng for OsRng {
    type Error = getrandom::Error;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        getrandom::u32()
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        getrandom::u64()
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        getrandom::fill(dst)
    }
}

impl TryCryptoRng for OsRng {}

#[cfg(test)]
#[path = "key_tests.rs"]
mod tests;
