//! Tests for minted tokens: the exact header, the claims, and signatures a verifier accepts.

use std::collections::HashSet;

use serde_json::json;

use super::*;
use crate::token::test_keys::{key_for, public_fixture, verifies};
use crate::token::{Algorithm, SpecFields};

const NOW_SECS: u64 = 1_800_000_000;

fn now() -> SystemTime {
    // A fraction of a second past NOW_SECS, which `iat` must drop.
    UNIX_EPOCH + Duration::from_millis(NOW_SECS * 1000 + 750)
}

fn spec_with(algorithm: Algorithm, audience: &[&str], claims: serde_json::Value) -> TokenSpec {
    let serde_json::Value::Object(additional_claims) = claims else {
        panic!("claims must be an object");
    };
    TokenSpec::new(SpecFields {
        algorithm,
        kid: "svc/key-1".to_owned(),
        issuer: "svc".to_owned(),
        subject: None,
        audience: audience.iter().map(|a| (*a).to_owned()).collect(),
        lifetime: Duration::from_secs(300),
        additional_claims,
        key: key_for(algorithm),
    })
    .expect("valid spec")
}

fn spec() -> TokenSpec {
    spec_with(Algorithm::Es256, &["upstream"], json!({}))
}

/// The three segments of a compact JWS, decoded.
struct Parts {
    header: Vec<u8>,
    claims: Value,
    signing_input: String,
    signature: Vec<u8>,
}

fn split(token: &Token) -> Parts {
    let segments: Vec<&str> = token.as_str().split('.').collect();
    assert_eq!(segments.len(), 3, "three segments");
    for segment in &segments {
        assert!(
            segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "segment is not unpadded base64url: {segment}"
        );
    }
    let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).expect("base64url");
    Parts {
        header: decode(segments[0]),
        claims: serde_json::from_slice(&decode(segments[1])).expect("claims json"),
        signing_input: format!("{}.{}", segments[0], segments[1]),
        signature: decode(segments[2]),
    }
}

#[test]
fn header_is_exactly_alg_kid_typ() {
    let token = mint(&spec(), now()).expect("mint");
    assert_eq!(
        String::from_utf8(split(&token).header).expect("utf-8"),
        r#"{"alg":"ES256","kid":"svc/key-1","typ":"JWT"}"#
    );
}

#[test]
fn claims_carry_times_identity_and_a_random_jti() {
    let token = mint(&spec(), now()).expect("mint");
    let claims = split(&token).claims;
    assert_eq!(claims["iss"], json!("svc"));
    assert_eq!(claims["sub"], json!("svc"));
    assert_eq!(claims["aud"], json!("upstream"));
    assert_eq!(claims["iat"], json!(NOW_SECS));
    assert_eq!(claims["nbf"], claims["iat"]);
    assert_eq!(claims["exp"], json!(NOW_SECS + 300));
    let jti = claims["jti"].as_str().expect("jti is a string");
    assert_eq!(
        URL_SAFE_NO_PAD.decode(jti).expect("jti base64url").len(),
        16
    );
    assert_eq!(claims.as_object().expect("object").len(), 7);

    assert_eq!(
        token.issued_at(),
        UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    );
    assert_eq!(
        token.expires_at(),
        UNIX_EPOCH + Duration::from_secs(NOW_SECS + 300)
    );
    assert_eq!(token.lifetime(), Duration::from_secs(300));
}

#[test]
fn several_audiences_and_additional_claims() {
    let spec = spec_with(
        Algorithm::Es256,
        &["a", "b"],
        json!({ "sub": "user-7", "scope": "read", "n": 3 }),
    );
    let claims = split(&mint(&spec, now()).expect("mint")).claims;
    assert_eq!(claims["aud"], json!(["a", "b"]));
    assert_eq!(claims["sub"], json!("user-7"));
    assert_eq!(claims["scope"], json!("read"));
    assert_eq!(claims["n"], json!(3));
}

#[test]
fn jti_is_unique_per_token() {
    let spec = spec();
    let jtis: HashSet<String> = (0..200)
        .map(|_| {
            let claims = split(&mint(&spec, now()).expect("mint")).claims;
            claims["jti"].as_str().expect("jti").to_owned()
        })
        .collect();
    assert_eq!(jtis.len(), 200);
}

#[test]
fn every_algorithm_mints_a_verifiable_token() {
    for algorithm in Algorithm::ALL {
        let spec = spec_with(algorithm, &["upstream"], json!({}));
        let parts = split(&mint(&spec, now()).expect("mint"));
        let header: Value = serde_json::from_slice(&parts.header).expect("header json");
        assert_eq!(header["alg"], json!(algorithm.as_str()));
        assert!(
            verifies(
                algorithm,
                &public_fixture(algorithm),
                parts.signing_input.as_bytes(),
                &parts.signature
            ),
            "{algorithm}"
        );
    }
}

#[test]
fn debug_hides_the_token() {
    let token = mint(&spec(), now()).expect("mint");
    let shown = format!("{token:?}");
    assert!(shown.starts_with("Token { expires_at: "), "{shown}");
    assert!(!shown.contains(token.as_str()));
    assert!(!shown.contains("eyJ"), "{shown}");
}

#[test]
fn a_clock_before_1970_is_an_error() {
    let before = UNIX_EPOCH - Duration::from_secs(1);
    assert!(matches!(mint(&spec(), before), Err(SignError::Clock)));
}

#[test]
fn the_authorization_value_is_sensitive_and_carries_the_token() {
    let token = mint(&spec(), now()).expect("mint");
    let header = token.authorization();
    assert!(header.is_sensitive());
    assert_eq!(format!("{header:?}"), "Sensitive");
    assert_eq!(
        header.to_str().expect("ascii"),
        format!("Bearer {}", token.as_str())
    );
    assert_eq!(token.as_str().split('.').count(), 3);
}
