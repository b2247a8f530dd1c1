//! Loading the committed key fixtures in unit tests.

use std::sync::Arc;

use p256::ecdsa::signature::Verifier;
use p256::pkcs8::DecodePublicKey;
use rsa::Pss;
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::{Algorithm, SigningKey};

/// The text of `tests/fixtures/keys/<name>`.
pub(crate) fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The parsed key in `tests/fixtures/keys/<name>`.
pub(crate) fn key(name: &str) -> SigningKey {
    SigningKey::parse(&fixture(name))
        .unwrap_or_else(|e| panic!("parsing {name}: {e}"))
        .key
}

/// A fixture key that fits `algorithm`.
pub(crate) fn key_for(algorithm: Algorithm) -> Arc<SigningKey> {
    let name = match algorithm {
        Algorithm::Es256 => "ec-p256.pkcs8.pem",
        Algorithm::Es384 => "ec-p384.pkcs8.pem",
        Algorithm::Es512 => "ec-p521.pkcs8.pem",
        _ => "rsa-2048.pkcs8.pem",
    };
    Arc::new(key(name))
}

/// The public key fixture of the key [`key_for`] returns.
pub(crate) fn public_fixture(algorithm: Algorithm) -> String {
    fixture(match algorithm {
        Algorithm::Es256 => "ec-p256.pub.pem",
        Algorithm::Es384 => "ec-p384.pub.pem",
        Algorithm::Es512 => "ec-p521.pub.pem",
        _ => "rsa-2048.pub.pem",
    })
}

/// Whether `signature` of `message` verifies under the public key in `public_pem`, checked
/// as a relying party would, with the RustCrypto verifiers.
pub(crate) fn verifies(
    algorithm: Algorithm,
    public_pem: &str,
    message: &[u8],
    signature: &[u8],
) -> bool {
    use rsa::pkcs1v15::{Signature as RsaSignature, VerifyingKey as RsaVerifier};
    let rsa_public = || rsa::PublicKey::from_public_key_pem(public_pem).expect("rsa public key");
    let pkcs1 = |s: &[u8]| RsaSignature::try_from(s).expect("pkcs1 signature");
    match algorithm {
        Algorithm::Rs256 => RsaVerifier::<Sha256>::new(rsa_public())
            .verify(message, &pkcs1(signature))
            .is_ok(),
        Algorithm::Rs384 => RsaVerifier::<Sha384>::new(rsa_public())
            .verify(message, &pkcs1(signature))
            .is_ok(),
        Algorithm::Rs512 => RsaVerifier::<Sha512>::new(rsa_public())
            .verify(message, &pkcs1(signature))
            .is_ok(),
        // `Pss::new` insists on a salt as long as the hash, which is what JWS requires.
        Algorithm::Ps256 => rsa_public()
            .verify(Pss::<Sha256>::new(), &Sha256::digest(message), signature)
            .is_ok(),
        Algorithm::Ps384 => rsa_public()
            .verify(Pss::<Sha384>::new(), &Sha384::digest(message), signature)
            .is_ok(),
        Algorithm::Ps512 => rsa_public()
            .verify(Pss::<Sha512>::new(), &Sha512::digest(message), signature)
            .is_ok(),
        Algorithm::Es256 => p256::ecdsa::VerifyingKey::from_public_key_pem(public_pem)
            .expect("p256 public key")
            .verify(
                message,
                &p256::ecdsa::Signature::from_slice(signature).expect("r||s"),
            )
            .is_ok(),
        Algorithm::Es384 => p384::ecdsa::VerifyingKey::from_public_key_pem(public_pem)
            .expect("p384 public key")
            .verify(
                message,
                &p384::ecdsa::Signature::from_slice(signature).expect("r||s"),
            )
            .is_ok(),
        Algorithm::Es512 => p521::ecdsa::VerifyingKey::from_public_key_pem(public_pem)
            .expect("p521 public key")
            .verify(
                message,
                &p521::ecdsa::Signature::from_slice(signature).expect("r||s"),
            )
            .is_ok(),
    }
}
