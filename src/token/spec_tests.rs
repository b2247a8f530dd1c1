//! Tests for validating a route's token fields: kid rules, overrides and refusals.

use serde_json::json;

use super::*;
use crate::token::test_keys::key_for;

pub(crate) fn fields() -> SpecFields {
    SpecFields {
        algorithm: Algorithm::Es256,
        kid: "svc/key-1".to_owned(),
        issuer: "svc".to_owned(),
        subject: None,
        audience: vec!["upstream".to_owned()],
        lifetime: Duration::from_secs(60),
        additional_claims: Map::new(),
        key: key_for(Algorithm::Es256),
    }
}

fn with_claims(claims: Value) -> SpecFields {
    let Value::Object(additional_claims) = claims else {
        panic!("claims must be an object");
    };
    SpecFields {
        additional_claims,
        ..fields()
    }
}

fn spec_err(fields: SpecFields) -> SpecError {
    TokenSpec::new(fields).expect_err("spec should be refused")
}

#[test]
fn kid_rules() {
    let valid = [
        ("svc/key-1", "svc"),
        ("svc/a/b/c", "svc"),
        ("svc/Key_1.2+3-4", "svc"),
        ("micros/svc/key", "micros/svc"),
        ("svc/..x", "svc"),
        ("svc/.hidden", "svc"),
        ("a.b-c_d+e/k", "a.b-c_d+e"),
    ];
    for (kid, issuer) in valid {
        let id = KeyId::new(kid, issuer).unwrap_or_else(|e| panic!("{kid}: {e}"));
        assert_eq!(id.as_str(), kid);
        assert_eq!(id.to_string(), kid);
    }

    let invalid = [
        ("", "svc", "must not be empty"),
        ("svc", "svc", "must start with the issuer"),
        ("svc/", "svc", "must not be empty, \".\" or \"..\""),
        ("svc//key", "svc", "must not be empty, \".\" or \"..\""),
        ("/svc/key", "svc", "must not be empty, \".\" or \"..\""),
        ("svc/./key", "svc", "must not be empty, \".\" or \"..\""),
        ("svc/../key", "svc", "must not be empty, \".\" or \"..\""),
        ("svc/key/..", "svc", "must not be empty, \".\" or \"..\""),
        ("svc/key 1", "svc", "character ' ' is not allowed"),
        ("svc/key%2F", "svc", "character '%' is not allowed"),
        ("svc/kéy", "svc", "character 'é' is not allowed"),
        ("svc\\key", "svc", "character '\\\\' is not allowed"),
        ("svc/key?x", "svc", "character '?' is not allowed"),
        (
            "other/key",
            "svc",
            "must start with the issuer \"svc\" followed by /",
        ),
        ("svcx/key", "svc", "must start with the issuer"),
        ("svc/key", "", "must start with the issuer"),
    ];
    for (kid, issuer, expected) in invalid {
        let err = KeyId::new(kid, issuer).expect_err(kid);
        assert!(
            matches!(&err, SpecError::Kid { kid: k, .. } if k == kid),
            "{kid}: {err}"
        );
        assert!(err.to_string().contains(expected), "{kid}: {err}");
        assert_eq!(err.field(), "kid");
    }
}

#[test]
fn defaults_and_accessors() {
    let spec = TokenSpec::new(fields()).expect("valid spec");
    assert_eq!(spec.algorithm(), Algorithm::Es256);
    assert_eq!(spec.kid().as_str(), "svc/key-1");
    assert_eq!(spec.issuer(), "svc");
    assert_eq!(spec.subject(), "svc", "subject defaults to the issuer");
    assert_eq!(spec.audience().as_slice(), ["upstream"]);
    assert_eq!(spec.lifetime(), Duration::from_secs(60));
    assert!(spec.extra_claims().is_empty());

    let spec = TokenSpec::new(SpecFields {
        subject: Some("user-1".to_owned()),
        ..fields()
    })
    .expect("valid spec");
    assert_eq!(spec.subject(), "user-1");
}

#[test]
fn audience_serialises_as_string_or_array() {
    let one = Audience::new(vec!["a".to_owned()]).expect("one");
    assert_eq!(serde_json::to_value(&one).expect("json"), json!("a"));
    let two = Audience::new(vec!["a".to_owned(), "b".to_owned()]).expect("two");
    assert_eq!(serde_json::to_value(&two).expect("json"), json!(["a", "b"]));
    assert_eq!(two.to_string(), "a,b");
    assert!(matches!(Audience::new(vec![]), Err(SpecError::Audience(_))));
    assert!(matches!(
        Audience::new(vec![String::new()]),
        Err(SpecError::Audience(_))
    ));
}

#[test]
fn additional_claims_override_iss_sub_aud() {
    let spec = TokenSpec::new(SpecFields {
        kid: "other-issuer/key".to_owned(),
        ..with_claims(json!({
            "iss": "other-issuer",
            "sub": "someone",
            "aud": ["x", "y"],
            "scope": ["read"],
        }))
    })
    .expect("valid spec");
    assert_eq!(spec.issuer(), "other-issuer");
    assert_eq!(spec.subject(), "someone");
    assert_eq!(spec.audience().as_slice(), ["x", "y"]);
    assert_eq!(spec.extra_claims().len(), 1);
    assert_eq!(spec.extra_claims()["scope"], json!(["read"]));

    // Without its own sub, the subject follows the final issuer.
    let spec = TokenSpec::new(SpecFields {
        kid: "other-issuer/key".to_owned(),
        audience: vec![],
        ..with_claims(json!({ "iss": "other-issuer", "aud": "only" }))
    })
    .expect("valid spec");
    assert_eq!(spec.subject(), "other-issuer");
    assert_eq!(spec.audience().as_slice(), ["only"]);
}

#[test]
fn kid_is_checked_against_the_final_issuer() {
    let err = spec_err(with_claims(json!({ "iss": "other-issuer" })));
    assert!(err.to_string().contains("\"other-issuer\""), "{err}");
    assert_eq!(err.field(), "kid");
}

#[test]
fn reserved_and_mistyped_claims_are_refused() {
    let cases = [
        (json!({ "exp": 1 }), "exp"),
        (json!({ "iat": 1 }), "iat"),
        (json!({ "nbf": 1 }), "nbf"),
        (json!({ "jti": "fixed" }), "jti"),
        (json!({ "iss": 7 }), "iss"),
        (json!({ "iss": "" }), "iss"),
        (json!({ "sub": null }), "sub"),
        (json!({ "sub": ["a"] }), "sub"),
        (json!({ "aud": [] }), "aud"),
        (json!({ "aud": ["a", 1] }), "aud"),
        (json!({ "aud": [""] }), "aud"),
        (json!({ "aud": { "a": 1 } }), "aud"),
    ];
    for (claims, name) in cases {
        let err = spec_err(with_claims(claims.clone()));
        assert!(
            matches!(&err, SpecError::AdditionalClaim { name: n, .. } if n == name),
            "{claims}: {err}"
        );
        assert_eq!(err.field(), "additional_claims");
        assert_eq!(err.key_path(), format!("additional_claims.{name}"));
        assert!(
            err.to_string()
                .starts_with(&format!("additional claim {name:?} is invalid"))
        );
    }
}

#[test]
fn each_bad_field_is_named() {
    let lifetime = |secs: f64| SpecFields {
        lifetime: Duration::from_secs_f64(secs),
        ..fields()
    };
    for secs in [0.0, 3601.0, 86400.0, 1.5] {
        assert_eq!(spec_err(lifetime(secs)).field(), "expiry", "{secs}");
    }
    for secs in [1.0, 3600.0] {
        TokenSpec::new(lifetime(secs)).unwrap_or_else(|e| panic!("{secs}: {e}"));
    }

    let cases: [(SpecFields, &str); 5] = [
        (
            SpecFields {
                issuer: String::new(),
                ..fields()
            },
            "issuer",
        ),
        (
            SpecFields {
                subject: Some(String::new()),
                ..fields()
            },
            "subject",
        ),
        (
            SpecFields {
                audience: vec![],
                ..fields()
            },
            "audience",
        ),
        (
            SpecFields {
                kid: "svc/a b".to_owned(),
                ..fields()
            },
            "kid",
        ),
        (
            SpecFields {
                key: key_for(Algorithm::Rs256),
                ..fields()
            },
            "key",
        ),
    ];
    for (fields, field) in cases {
        let err = spec_err(fields);
        assert_eq!(err.field(), field, "{err}");
        assert_eq!(err.key_path(), field);
    }
    let err = spec_err(SpecFields {
        algorithm: Algorithm::Es384,
        ..fields()
    });
    assert_eq!(
        err.to_string(),
        "key does not fit the algorithm: ES384 needs an EC P-384 key, but the key is EC P-256"
    );
}
