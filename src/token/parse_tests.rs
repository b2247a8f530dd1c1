//! Tests for reading keys: every accepted format, and the specific error for each refusal.

use super::*;
use crate::token::KeyKind;
use crate::token::test_keys::fixture;

/// A self-signed certificate for the P-256 fixture key (`openssl req -x509 -new`).
const CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----
MIIBeTCCAR+gAwIBAgIUdq/lH7Ixd8kFgFuzOZJD8LIO4a4wCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHZml4dHVyZTAeFw0yNjEyMDQxNTMxMjlaFw0yNjEyMDUxNTMx
MjlaMBIxEDAOBgNVBAMMB2ZpeHR1cmUwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AAQBQoV72FQ/3BGdm6HOvdbdECboe5eUypv/5VyCRt8ez7YuXz9P7mlU3tMwf9u9
DSvn2zOoEZzXXPmXeT5a2yQKo1MwUTAdBgNVHQ4EFgQUwcn5mOOdu1zwegQX2Ihn
FhwkaW0wHwYDVR0jBBgwFoAUwcn5mOOdu1zwegQX2IhnFhwkaW0wDwYDVR0TAQH/
BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiA6Ry0ElrGktVs9nEuLMTyA1K198ZTc
Epvdq2SlsISIzQIhAOneFnJQQDWnYjkyXELZS2lnyP2L2jcx/1HfAaFoZNWj
-----END CERTIFICATE-----
";

const RSA: KeyKind = KeyKind::Rsa { bits: 2048 };

fn parse_ok(text: &str) -> ParsedKey {
    parse(text).unwrap_or_else(|e| panic!("expected a key, got: {e}"))
}

fn parse_err(text: &str) -> KeyError {
    match parse(text) {
        Ok(parsed) => panic!("expected an error, parsed {:?}", parsed.key),
        Err(e) => e,
    }
}

/// The base64 body of a PEM file, on one line: true PKCS#8 DER for `*.pkcs8.pem`.
fn pem_body(pem: &str) -> String {
    pem.lines()
        .filter(|line| !line.starts_with("-----"))
        .collect()
}

#[test]
fn every_fixture_format_parses_to_its_kind() {
    let cases = [
        ("rsa-2048.pkcs8.pem", RSA),
        ("rsa-2048.pkcs1.pem", RSA),
        ("rsa-2048.pkcs8.crlf.pem", RSA),
        ("rsa-2048.pkcs8.der.b64", RSA),
        ("rsa-2048.pkcs1.der.b64", RSA),
        ("rsa-2048.datauri", RSA),
        ("ec-p256.pkcs8.pem", KeyKind::EcP256),
        ("ec-p256.sec1.pem", KeyKind::EcP256),
        ("ec-p256.sec1-params.pem", KeyKind::EcP256),
        ("ec-p256.pkcs8.der.b64", KeyKind::EcP256),
        ("ec-p256.sec1.der.b64", KeyKind::EcP256),
        ("ec-p256.pkcs8.escaped-newlines.txt", KeyKind::EcP256),
        ("ec-p256.datauri", KeyKind::EcP256),
        ("ec-p384.pkcs8.pem", KeyKind::EcP384),
        ("ec-p384.sec1.pem", KeyKind::EcP384),
        ("ec-p384.sec1-params.pem", KeyKind::EcP384),
        ("ec-p384.pkcs8.der.b64", KeyKind::EcP384),
        ("ec-p384.sec1.der.b64", KeyKind::EcP384),
        ("ec-p384.datauri", KeyKind::EcP384),
        ("ec-p521.pkcs8.pem", KeyKind::EcP521),
        ("ec-p521.sec1.pem", KeyKind::EcP521),
        ("ec-p521.sec1-params.pem", KeyKind::EcP521),
        ("ec-p521.pkcs8.der.b64", KeyKind::EcP521),
        ("ec-p521.sec1.der.b64", KeyKind::EcP521),
        ("ec-p521.datauri", KeyKind::EcP521),
    ];
    for (name, kind) in cases {
        let parsed = parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(parsed.key.kind(), kind, "{name}");
        let expected_kid = name
            .strip_suffix(".datauri")
            .map(|stem| format!("fixture-issuer/{stem}"));
        assert_eq!(parsed.kid, expected_kid, "{name}");
    }
}

#[test]
fn every_format_of_one_key_is_the_same_key() {
    let public = fixture("rsa-2048.pub.pem");
    for name in [
        "rsa-2048.pkcs1.pem",
        "rsa-2048.pkcs8.der.b64",
        "rsa-2048.datauri",
    ] {
        assert_eq!(
            parse_ok(&fixture(name)).key.public_key_pem(),
            public,
            "{name}"
        );
    }
    for curve in ["p256", "p384", "p521"] {
        let public = fixture(&format!("ec-{curve}.pub.pem"));
        for form in [
            "pkcs8.pem",
            "sec1.pem",
            "sec1-params.pem",
            "sec1.der.b64",
            "datauri",
        ] {
            let name = format!("ec-{curve}.{form}");
            assert_eq!(
                parse_ok(&fixture(&name)).key.public_key_pem(),
                public,
                "{name}"
            );
        }
    }
}

#[test]
fn true_pkcs8_der_parses_bare_and_in_a_data_uri() {
    // The committed `*.pkcs8.der.b64` and `*.datauri` hold PKCS#1/SEC1 DER, so build real
    // PKCS#8 DER from the PEM bodies as well.
    for (name, kind) in [
        ("rsa-2048.pkcs8.pem", RSA),
        ("ec-p256.pkcs8.pem", KeyKind::EcP256),
        ("ec-p384.pkcs8.pem", KeyKind::EcP384),
        ("ec-p521.pkcs8.pem", KeyKind::EcP521),
    ] {
        let body = pem_body(&fixture(name));
        assert_eq!(parse_ok(&body).key.kind(), kind, "{name} as bare base64");
        let uri = format!("data:application/pkcs8;kid=iss%2Fsub%2Fk-1;base64,{body}");
        let parsed = parse_ok(&uri);
        assert_eq!(parsed.key.kind(), kind, "{name} in a data uri");
        assert_eq!(parsed.kid.as_deref(), Some("iss/sub/k-1"));
    }
}

#[test]
fn tolerates_whitespace_crlf_escaped_newlines_and_one_line_pem() {
    let pem = fixture("ec-p256.pkcs8.pem");
    let variants = [
        format!("\n\n   {pem}\n\t  "),
        pem.replace('\n', "\r\n"),
        pem.replace('\n', "\\n"),
        pem.replace('\n', "\\r\\n"),
        pem.replace('\n', " "),
        format!("Bag Attributes: none\n{pem}"),
        pem_body(&pem).replace('+', "-").replace('/', "_"),
    ];
    for text in variants {
        assert_eq!(parse_ok(&text).key.kind(), KeyKind::EcP256, "{text:?}");
    }
    let der = fixture("rsa-2048.pkcs1.der.b64");
    let wrapped: String = der
        .as_bytes()
        .chunks(64)
        .map(|chunk| format!("{}\r\n", String::from_utf8_lossy(chunk)))
        .collect();
    assert_eq!(parse_ok(&wrapped).key.kind(), RSA);
}

#[test]
fn encrypted_keys_are_refused_as_encrypted() {
    for name in ["rsa-2048.encrypted.pem", "ec-p256.encrypted-sec1.pem"] {
        let err = parse_err(&fixture(name));
        assert!(matches!(err, KeyError::Encrypted), "{name}: {err}");
        assert_eq!(err.to_string(), "encrypted private keys are not supported");
    }
    // The same EncryptedPrivateKeyInfo without its armour.
    let bare = pem_body(&fixture("rsa-2048.encrypted.pem"));
    assert!(matches!(parse_err(&bare), KeyError::Encrypted));
}

#[test]
fn small_rsa_keys_are_refused() {
    let err = parse_err(&fixture("rsa-1024.pkcs8.pem"));
    assert!(matches!(err, KeyError::RsaTooSmall { bits: 1024 }), "{err}");
    assert_eq!(
        err.to_string(),
        "rsa key is 1024 bits: at least 2048 are required"
    );
}

#[test]
fn unsupported_key_types_are_named() {
    for (name, found) in [
        ("ec-secp256k1.pkcs8.pem", "EC secp256k1"),
        ("ed25519.pkcs8.pem", "Ed25519"),
    ] {
        let err = parse_err(&fixture(name));
        match &err {
            KeyError::UnsupportedType(what) => assert_eq!(what, found, "{name}"),
            other => panic!("{name}: unexpected {other}"),
        }
        assert!(
            err.to_string()
                .starts_with(&format!("unsupported key type {found}:"))
        );
    }
}

#[test]
fn things_that_are_not_private_keys() {
    assert!(matches!(parse_err(""), KeyError::Empty));
    assert!(matches!(parse_err(" \r\n\t "), KeyError::Empty));
    assert!(matches!(
        parse_err("not a key at all!"),
        KeyError::Unrecognised
    ));
    assert!(matches!(
        parse_err("aGVsbG8gd29ybGQ="),
        KeyError::Unrecognised
    ));
    assert!(matches!(
        parse_err(CERTIFICATE),
        KeyError::NotPrivateKey("certificate")
    ));
    assert!(matches!(
        parse_err(&pem_body(CERTIFICATE)),
        KeyError::NotPrivateKey("certificate")
    ));
    for name in ["rsa-2048.pub.pem", "ec-p384.pub.pem"] {
        let public = fixture(name);
        assert!(matches!(
            parse_err(&public),
            KeyError::NotPrivateKey("public key")
        ));
        assert!(matches!(
            parse_err(&pem_body(&public)),
            KeyError::NotPrivateKey("public key")
        ));
    }
    let ssh =
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaA==\n-----END OPENSSH PRIVATE KEY-----";
    assert!(
        matches!(parse_err(ssh), KeyError::UnsupportedPemLabel(label) if label == "OPENSSH PRIVATE KEY")
    );
}

#[test]
fn broken_pem_is_malformed() {
    let pem = fixture("ec-p256.pkcs8.pem");
    let truncated = &pem[..pem.len() / 2];
    assert!(matches!(
        parse_err(truncated),
        KeyError::Malformed { format: "pem", .. }
    ));

    let body = pem_body(&pem);
    let short = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----",
        &body[..40]
    );
    assert!(matches!(
        parse_err(&short),
        KeyError::Malformed { format: PKCS8, .. }
    ));

    let relabelled = fixture("ec-p256.sec1.pem").replace("EC PRIVATE KEY", "RSA PRIVATE KEY");
    assert!(matches!(
        parse_err(&relabelled),
        KeyError::Malformed { format: PKCS1, .. }
    ));

    let not_base64 = "-----BEGIN EC PRIVATE KEY-----\n!!!!\n-----END EC PRIVATE KEY-----";
    assert!(matches!(
        parse_err(not_base64),
        KeyError::Malformed { format: SEC1, .. }
    ));

    let two = format!("{pem}\n{}", fixture("rsa-2048.pkcs8.pem"));
    assert!(matches!(parse_err(&two), KeyError::MultipleKeys));
}

#[test]
fn bad_data_uris_say_what_is_wrong() {
    let body = pem_body(&fixture("ec-p256.pkcs8.pem"));
    let cases = [
        (
            "data:application/pkcs8;kid=a%2Fb;base64".to_owned(),
            "no comma before the key data",
        ),
        (
            format!("data:text/plain;kid=a;base64,{body}"),
            "media type must be application/pkcs8",
        ),
        (
            format!("data:application/pkcs8;kid=a,{body}"),
            "key data must be base64",
        ),
        (
            "data:application/pkcs8;kid=a;base64,!!!".to_owned(),
            "key data is not base64",
        ),
        (
            format!("data:application/pkcs8;kid=%FF;base64,{body}"),
            "kid is not utf-8 once percent-decoded",
        ),
        (
            format!("data:application/pkcs8;kid=;base64,{body}"),
            "kid is empty",
        ),
    ];
    for (uri, expected) in cases {
        match parse_err(&uri) {
            KeyError::DataUri(reason) => assert_eq!(reason, expected, "{uri}"),
            other => panic!("{uri}: unexpected {other}"),
        }
    }
    let no_kid = parse_ok(&format!("data:application/pkcs8;base64,{body}"));
    assert_eq!(no_kid.kid, None);
    let escaped = body.replace('+', "%2B").replace('/', "%2F");
    assert!(
        parse_ok(&format!("data:application/pkcs8;kid=k;base64,{escaped}"))
            .kid
            .is_some()
    );
}

#[test]
fn no_error_message_contains_key_material() {
    let rejected = [
        fixture("rsa-1024.pkcs8.pem"),
        fixture("ed25519.pkcs8.pem"),
        fixture("ec-secp256k1.pkcs8.pem"),
        fixture("rsa-2048.encrypted.pem"),
        fixture("ec-p256.encrypted-sec1.pem"),
        fixture("ec-p256.sec1.pem").replace("EC PRIVATE KEY", "RSA PRIVATE KEY"),
        fixture("ec-p256.pkcs8.pem")[..150].to_owned(),
        format!(
            "data:application/pkcs8;kid=k;base64,{}",
            &pem_body(&fixture("rsa-1024.pkcs8.pem"))
        ),
    ];
    for text in rejected {
        let message = format!("{} / {:?}", parse_err(&text), parse_err(&text));
        let body = pem_body(&text.replace("\\n", "\n"));
        for window in body.as_bytes().windows(12).step_by(12) {
            let piece = String::from_utf8_lossy(window);
            assert!(!message.contains(piece.as_ref()), "{message} leaks {piece}");
        }
    }
}

#[test]
fn shapes_of_der() {
    let der = |text: &str| decode_base64(&pem_body(text)).expect("fixture base64");
    assert_eq!(shape(&der(&fixture("rsa-2048.pkcs8.pem"))), Shape::Pkcs8);
    assert_eq!(shape(&der(&fixture("rsa-2048.pkcs1.pem"))), Shape::Pkcs1);
    assert_eq!(shape(&der(&fixture("ec-p521.sec1.pem"))), Shape::Sec1);
    assert_eq!(
        shape(&der(&fixture("rsa-2048.encrypted.pem"))),
        Shape::EncryptedPkcs8
    );
    assert_eq!(shape(&der(&fixture("ec-p256.pub.pem"))), Shape::PublicKey);
    assert_eq!(shape(&der(CERTIFICATE)), Shape::Certificate);
    assert_eq!(shape(b"\x30\x03\x02\x01"), Shape::Unknown);
    assert_eq!(shape(b""), Shape::Unknown);
}
