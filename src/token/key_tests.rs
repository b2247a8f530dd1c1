//! Tests for signing: every algorithm verifies under the fixture's public key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::*;
use crate::token::test_keys::{fixture, key, key_for, public_fixture, verifies};

const MESSAGE: &[u8] = b"asap-proxy known answer";

/// `printf 'asap-proxy known answer' | openssl dgst -sha256 -sign rsa-2048.pkcs8.pem`,
/// base64url without padding.
const RS256_KNOWN_ANSWER: &str = "ltayxEHkaaj4sKRrG5UQiNgUCvsPtBH1MxYsTclZZWgCnfnioAfhl2OQI_4JClDF0\
    yNIkCjW_9X4sxhd3m9Bj5QRMMfVLAiVyCBeSX9a7xyWhOgZDmMlMCpQzOl-wQ-gAWTZJkpypcuSovUnScRejiguvzfuvA\
    VRMaJTLYcMDey2YrBl3Ca53kMKYYMwCevxOdtljoPVFfhE5HBzzYrKT1K2qti7GfmvcWOk3b6SHtoG7KGvtuXDNm9ucZks\
    0vNPpkP8HdXU6nReg4A0WCCsYCLI2ZFvCmhEJ8BA1FDDcJTACm4lU1PVsI5hNUY3kH1Kp4Uf3Q8sUQo4y7QqXOBUEg";

#[test]
fn every_algorithm_signs_what_its_verifier_accepts() {
    for algorithm in Algorithm::ALL {
        let key = key_for(algorithm);
        let signature = key.sign(algorithm, MESSAGE).expect("sign");
        assert!(
            verifies(algorithm, &public_fixture(algorithm), MESSAGE, &signature),
            "{algorithm}"
        );

        let expected_len = match algorithm {
            Algorithm::Es256 => 64,
            Algorithm::Es384 => 96,
            Algorithm::Es512 => 132,
            _ => 256,
        };
        assert_eq!(signature.len(), expected_len, "{algorithm}");
        // A verifier must notice a changed message, or the check above proves nothing.
        let tampered = verifies(
            algorithm,
            &public_fixture(algorithm),
            b"another message",
            &signature,
        );
        assert!(!tampered, "{algorithm} verified a different message");
    }
}

#[test]
fn rs256_matches_openssl() {
    let signature = key("rsa-2048.pkcs8.pem")
        .sign(Algorithm::Rs256, MESSAGE)
        .expect("sign");
    let expected: String = RS256_KNOWN_ANSWER.split_whitespace().collect();
    assert_eq!(URL_SAFE_NO_PAD.encode(signature), expected);
}

#[test]
fn pss_signatures_are_randomised() {
    let key = key_for(Algorithm::Ps256);
    let first = key.sign(Algorithm::Ps256, MESSAGE).expect("sign");
    let second = key.sign(Algorithm::Ps256, MESSAGE).expect("sign");
    assert_ne!(first, second, "PSS uses a random salt");
}

#[test]
fn keys_only_sign_with_algorithms_that_fit() {
    let rsa = key("rsa-2048.pkcs1.pem");
    let p256 = key("ec-p256.sec1.pem");
    let p384 = key("ec-p384.sec1.pem");
    let p521 = key("ec-p521.sec1.pem");
    for algorithm in Algorithm::ALL {
        let fits = [
            (&rsa, !algorithm.as_str().starts_with("ES")),
            (&p256, algorithm == Algorithm::Es256),
            (&p384, algorithm == Algorithm::Es384),
            (&p521, algorithm == Algorithm::Es512),
        ];
        for (key, expected) in fits {
            assert_eq!(
                key.check_algorithm(algorithm).is_ok(),
                expected,
                "{algorithm} {key:?}"
            );
            if !expected {
                let err = key.sign(algorithm, MESSAGE).expect_err("mismatched sign");
                assert!(matches!(
                    err,
                    SignError::Key(KeyError::AlgorithmMismatch { .. })
                ));
            }
        }
    }
    let err = p256
        .check_algorithm(Algorithm::Es384)
        .expect_err("mismatch");
    assert_eq!(
        err.to_string(),
        "ES384 needs an EC P-384 key, but the key is EC P-256"
    );
    let err = p384
        .check_algorithm(Algorithm::Rs256)
        .expect_err("mismatch");
    assert_eq!(
        err.to_string(),
        "RS256 needs an RSA key of at least 2048 bits, but the key is EC P-384"
    );
}

#[test]
fn debug_shows_only_the_kind() {
    assert_eq!(
        format!("{:?}", key("rsa-2048.pkcs8.pem")),
        r#"SigningKey { kind: "RSA 2048-bit" }"#
    );
    assert_eq!(
        format!("{:?}", key("ec-p256.sec1.pem")),
        r#"SigningKey { kind: "EC P-256" }"#
    );
    assert_eq!(
        format!("{:#?}", key("ec-p521.sec1.pem")),
        "SigningKey {\n    kind: \"EC P-521\",\n}"
    );
    let parsed = SigningKey::parse(&fixture("ec-p384.datauri")).expect("parse");
    let shown = format!("{parsed:?}");
    assert!(
        shown.contains("EC P-384") && shown.contains("fixture-issuer/ec-p384"),
        "{shown}"
    );
    assert!(!shown.contains("MIG"), "{shown}");
}

#[test]
fn public_key_pem_matches_openssl() {
    for name in ["rsa-2048", "ec-p256", "ec-p384", "ec-p521"] {
        let key = key(&format!("{name}.pkcs8.pem"));
        assert_eq!(
            key.public_key_pem(),
            fixture(&format!("{name}.pub.pem")),
            "{name}"
        );
    }
}

#[test]
fn pkcs8_export_round_trips() {
    for name in [
        "rsa-2048.pkcs1.pem",
        "ec-p256.sec1.pem",
        "ec-p384.sec1.pem",
        "ec-p521.sec1.pem",
    ] {
        let key = key(name);
        let pem = key.to_pkcs8_pem().expect("export");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{name}");
        let again = SigningKey::parse(&pem).expect("re-parse").key;
        assert_eq!(again.public_key_pem(), key.public_key_pem(), "{name}");
    }
}

#[test]
fn generated_ec_keys_fit_their_algorithm() {
    for (algorithm, kind) in [
        (Algorithm::Es256, KeyKind::EcP256),
        (Algorithm::Es384, KeyKind::EcP384),
        (Algorithm::Es512, KeyKind::EcP521),
    ] {
        let key = SigningKey::generate(algorithm).expect("generate");
        assert_eq!(key.kind(), kind);
        let signature = key.sign(algorithm, MESSAGE).expect("sign");
        assert!(
            verifies(algorithm, &key.public_key_pem(), MESSAGE, &signature),
            "{algorithm}"
        );
        let other = SigningKey::generate(algorithm).expect("generate");
        assert_ne!(other.public_key_pem(), key.public_key_pem());
    }
}

#[test]
fn generated_rsa_keys_are_2048_bits_and_sign() {
    let key = SigningKey::generate(Algorithm::Ps256).expect("generate");
    assert_eq!(key.kind(), KeyKind::Rsa { bits: 2048 });
    assert_eq!(key.kind().to_string(), "RSA 2048-bit");
    let again = SigningKey::parse(&key.to_pkcs8_pem().expect("export"))
        .expect("parse")
        .key;
    for algorithm in [Algorithm::Rs256, Algorithm::Ps256] {
        let signature = again.sign(algorithm, MESSAGE).expect("sign");
        assert!(
            verifies(algorithm, &key.public_key_pem(), MESSAGE, &signature),
            "{algorithm}"
        );
    }
}
