//! Reading private keys from the text forms operators paste into configuration.
//!
//! Accepted: PEM `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY` (PKCS#1) and `EC PRIVATE KEY`
//! (SEC1, optionally after an `EC PARAMETERS` block); the same DER as bare base64; and the
//! `data:application/pkcs8;kid=<kid>;base64,<DER>` URI of the ASAP tooling. CRLF line ends,
//! surrounding whitespace and newlines written as the two characters `\n` are tolerated.

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use p256::pkcs8::der::asn1::AnyRef;
use p256::pkcs8::der::{Decode, Tag, TagNumber, Tagged};
use p256::pkcs8::{DecodePrivateKey, ObjectIdentifier, PrivateKeyInfoRef};
use percent_encoding::percent_decode_str;
use rsa::pkcs1::DecodeRsaPrivateKey;
use zeroize::Zeroizing;

use super::key::{Inner, KeyError, ParsedKey, SigningKey};

const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_RSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const OID_EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");

/// Key types people commonly try, named so the error says what was found.
const KNOWN_OTHERS: [(&str, &str); 7] = [
    ("1.3.132.0.10", "EC secp256k1"),
    ("1.3.101.110", "X25519"),
    ("1.3.101.111", "X448"),
    ("1.3.101.112", "Ed25519"),
    ("1.3.101.113", "Ed448"),
    ("1.2.840.10040.4.1", "DSA"),
    ("1.2.156.10197.1.301", "SM2"),
];

const PKCS8: &str = "pkcs#8";
const PKCS1: &str = "pkcs#1 rsa";
const SEC1: &str = "sec1 ec";

pub(super) fn parse(text: &str) -> Result<ParsedKey, KeyError> {
    let text = normalise(text);
    if text.is_empty() {
        return Err(KeyError::Empty);
    }
    if text.contains("-----BEGIN") {
        let key = parse_pem(&text)?;
        return Ok(ParsedKey { key, kid: None });
    }
    if let Some(uri) = text.strip_prefix("data:") {
        return parse_data_uri(uri);
    }
    let der = decode_base64(&text).ok_or(KeyError::Unrecognised)?;
    let key = parse_der(&der)?;
    Ok(ParsedKey { key, kid: None })
}

/// Undoes what copying a key through env vars, YAML and Windows tends to do to it.
fn normalise(text: &str) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(text.len()));
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            // A PEM never holds a backslash, so `\n` written out can only be an escaped
            // newline; carriage returns, escaped or not, carry nothing.
            ('\\', Some('n')) => {
                chars.next();
                out.push('\n');
            }
            ('\\', Some('r')) => {
                chars.next();
            }
            ('\r', _) => {}
            (c, _) => out.push(c),
        }
    }
    Zeroizing::new(out.trim().to_owned())
}

/// Decodes standard or URL-safe base64, padded or not, ignoring whitespace.
fn decode_base64(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let mut compact = Zeroizing::new(String::with_capacity(text.len()));
    compact.extend(text.chars().filter(|c| !c.is_ascii_whitespace()));
    if compact.is_empty() {
        return None;
    }
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    // Reserved up front so decoding never reallocates and leaves unwiped copies behind.
    let mut out = Zeroizing::new(Vec::with_capacity(compact.len() / 4 * 3 + 3));
    for abc in [alphabet::STANDARD, alphabet::URL_SAFE] {
        out.clear();
        if GeneralPurpose::new(&abc, config)
            .decode_vec(compact.as_bytes(), &mut out)
            .is_ok()
        {
            return Some(out);
        }
    }
    None
}

struct PemBlock<'a> {
    label: &'a str,
    body: &'a str,
}

fn pem_blocks(text: &str) -> Result<Vec<PemBlock<'_>>, KeyError> {
    let malformed = |reason: String| KeyError::Malformed {
        format: "pem",
        reason,
    };
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let close = after
            .find("-----")
            .ok_or_else(|| malformed("BEGIN line is not closed".to_owned()))?;
        let label = after[..close].trim();
        let inside = &after[close + "-----".len()..];
        let end_line = format!("-----END {label}-----");
        let end = inside
            .find(&end_line)
            .ok_or_else(|| malformed(format!("no END line for {label:?}")))?;
        blocks.push(PemBlock {
            label,
            body: &inside[..end],
        });
        rest = &inside[end + end_line.len()..];
    }
    Ok(blocks)
}

fn parse_pem(text: &str) -> Result<SigningKey, KeyError> {
    let mut key_block = None;
    let mut ec_parameters = None;
    let mut other = None;
    for block in pem_blocks(text)? {
        match block.label {
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => {
                if key_block.replace(block).is_some() {
                    return Err(KeyError::MultipleKeys);
                }
            }
            "EC PARAMETERS" => ec_parameters = Some(block),
            label => {
                other.get_or_insert(label);
            }
        }
    }
    let Some(block) = key_block else {
        return Err(match other {
            Some("CERTIFICATE" | "TRUSTED CERTIFICATE" | "X509 CERTIFICATE") => {
                KeyError::NotPrivateKey("certificate")
            }
            Some("CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST") => {
                KeyError::NotPrivateKey("certificate request")
            }
            Some("PUBLIC KEY" | "RSA PUBLIC KEY") => KeyError::NotPrivateKey("public key"),
            Some("DSA PRIVATE KEY") => KeyError::UnsupportedType("DSA".to_owned()),
            Some(label) => KeyError::UnsupportedPemLabel(label.to_owned()),
            None => KeyError::Malformed {
                format: "pem",
                reason: "no private key block".to_owned(),
            },
        });
    };

    // Legacy OpenSSL encryption keeps the label and adds RFC 1421 headers before the body.
    let mut encrypted = block.label == "ENCRYPTED PRIVATE KEY";
    let mut base64_lines = Zeroizing::new(String::with_capacity(block.body.len()));
    for line in block.body.lines() {
        if let Some((name, value)) = line.split_once(':') {
            encrypted |= name.trim() == "Proc-Type" && value.contains("ENCRYPTED");
        } else {
            base64_lines.push_str(line);
        }
    }
    if encrypted {
        return Err(KeyError::Encrypted);
    }

    let format = match block.label {
        "RSA PRIVATE KEY" => PKCS1,
        "EC PRIVATE KEY" => SEC1,
        _ => PKCS8,
    };
    let der = decode_base64(&base64_lines).ok_or_else(|| KeyError::Malformed {
        format,
        reason: "body is not base64".to_owned(),
    })?;
    match format {
        PKCS1 => parse_pkcs1(&der),
        SEC1 => {
            let curve = match ec_parameters {
                Some(params) => Some(named_curve_from_parameters(params.body)?),
                None => None,
            };
            parse_sec1(&der, curve)
        }
        _ => parse_pkcs8(&der),
    }
}

fn named_curve_from_parameters(body: &str) -> Result<ObjectIdentifier, KeyError> {
    let malformed = || KeyError::Malformed {
        format: "pem",
        reason: "EC PARAMETERS is not a named curve".to_owned(),
    };
    let der = decode_base64(body).ok_or_else(malformed)?;
    ObjectIdentifier::from_der(&der).map_err(|_| malformed())
}

fn parse_data_uri(uri: &str) -> Result<ParsedKey, KeyError> {
    let (meta, payload) = uri
        .split_once(',')
        .ok_or(KeyError::DataUri("no comma before the key data"))?;
    let mut params = meta.split(';');
    let media_type = params.next().unwrap_or_default();
    if !media_type.eq_ignore_ascii_case("application/pkcs8") {
        return Err(KeyError::DataUri("media type must be application/pkcs8"));
    }
    let mut kid = None;
    let mut base64 = false;
    for param in params {
        if param == "base64" {
            base64 = true;
        } else if let Some(value) = param.strip_prefix("kid=") {
            let decoded = percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| KeyError::DataUri("kid is not utf-8 once percent-decoded"))?;
            if decoded.is_empty() {
                return Err(KeyError::DataUri("kid is empty"));
            }
            kid = Some(decoded.into_owned());
        }
    }
    if !base64 {
        return Err(KeyError::DataUri("key data must be base64"));
    }
    // Some tools percent-encode `+`, `/` and `=`; base64 itself never holds a `%`.
    let mut decoded = Zeroizing::new(Vec::with_capacity(payload.len()));
    decoded.extend(percent_decode_str(payload));
    let der = std::str::from_utf8(&decoded)
        .ok()
        .and_then(decode_base64)
        .ok_or(KeyError::DataUri("key data is not base64"))?;
    // ASAP tooling labels SEC1 and PKCS#1 DER as pkcs8 too, so the DER decides.
    let key = parse_der(&der)?;
    Ok(ParsedKey { key, kid })
}

/// What a DER document looks like from its outer SEQUENCE, before any real decoding.
#[derive(Debug, PartialEq, Eq)]
enum Shape {
    Pkcs8,
    EncryptedPkcs8,
    Pkcs1,
    Sec1,
    PublicKey,
    Certificate,
    Unknown,
}

fn shape(der: &[u8]) -> Shape {
    let Ok(items) = Vec::<AnyRef<'_>>::from_der(der) else {
        return Shape::Unknown;
    };
    let tags: Vec<Tag> = items.iter().map(Tagged::tag).collect();
    match tags.as_slice() {
        [Tag::Integer, Tag::Sequence, Tag::OctetString, ..] => Shape::Pkcs8,
        [Tag::Integer, Tag::OctetString, ..] => Shape::Sec1,
        [Tag::Integer, Tag::Integer, ..] => Shape::Pkcs1,
        [Tag::Sequence, Tag::OctetString] => Shape::EncryptedPkcs8,
        [Tag::Sequence, Tag::BitString] => Shape::PublicKey,
        [Tag::Sequence, Tag::Sequence, Tag::BitString] => Shape::Certificate,
        _ => Shape::Unknown,
    }
}

fn parse_der(der: &[u8]) -> Result<SigningKey, KeyError> {
    match shape(der) {
        Shape::Pkcs8 => parse_pkcs8(der),
        Shape::Pkcs1 => parse_pkcs1(der),
        Shape::Sec1 => parse_sec1(der, None),
        Shape::EncryptedPkcs8 => Err(KeyError::Encrypted),
        Shape::PublicKey => Err(KeyError::NotPrivateKey("public key")),
        Shape::Certificate => Err(KeyError::NotPrivateKey("certificate")),
        Shape::Unknown => Err(KeyError::Unrecognised),
    }
}

fn malformed(format: &'static str) -> impl Fn(&dyn std::fmt::Display) -> KeyError {
    move |e| KeyError::Malformed {
        format,
        reason: e.to_string(),
    }
}

fn parse_pkcs8(der: &[u8]) -> Result<SigningKey, KeyError> {
    let info = PrivateKeyInfoRef::from_der(der).map_err(|e| malformed(PKCS8)(&e))?;
    let algorithm = info.algorithm.oid;
    if algorithm == OID_RSA || algorithm == OID_RSA_PSS {
        let key = rsa::PrivateKey::from_pkcs8_der(der).map_err(|e| malformed(PKCS8)(&e))?;
        return SigningKey::from_rsa(key);
    }
    if algorithm != OID_EC {
        return Err(KeyError::UnsupportedType(type_name(algorithm)));
    }
    let curve = info
        .algorithm
        .parameters_oid()
        .map_err(|e| malformed(PKCS8)(&e))?;
    let inner = if curve == OID_P256 {
        Inner::P256(p256::ecdsa::SigningKey::from_pkcs8_der(der).map_err(|e| malformed(PKCS8)(&e))?)
    } else if curve == OID_P384 {
        Inner::P384(p384::ecdsa::SigningKey::from_pkcs8_der(der).map_err(|e| malformed(PKCS8)(&e))?)
    } else if curve == OID_P521 {
        Inner::P521(p521::ecdsa::SigningKey::from_pkcs8_der(der).map_err(|e| malformed(PKCS8)(&e))?)
    } else {
        return Err(KeyError::UnsupportedType(curve_name(curve)));
    };
    Ok(SigningKey::from_inner(inner))
}

fn parse_pkcs1(der: &[u8]) -> Result<SigningKey, KeyError> {
    let key = rsa::PrivateKey::from_pkcs1_der(der).map_err(|e| malformed(PKCS1)(&e))?;
    SigningKey::from_rsa(key)
}

/// Parses SEC1 `ECPrivateKey`. The curve comes from the key's own parameters, else from a
/// preceding `EC PARAMETERS` block, else from the length of the private scalar.
fn parse_sec1(der: &[u8], curve: Option<ObjectIdentifier>) -> Result<SigningKey, KeyError> {
    let items = Vec::<AnyRef<'_>>::from_der(der).map_err(|e| malformed(SEC1)(&e))?;
    let parameters = items.iter().skip(2).find(
        |item| matches!(item.tag(), Tag::ContextSpecific { number, .. } if number == TagNumber(0)),
    );
    let curve = match parameters {
        Some(item) => {
            Some(ObjectIdentifier::from_der(item.value()).map_err(|e| malformed(SEC1)(&e))?)
        }
        None => curve,
    };
    let curve = match curve {
        Some(curve) => curve,
        None => match items.get(1).map(|scalar| scalar.value().len()) {
            Some(32) => OID_P256,
            Some(48) => OID_P384,
            Some(65 | 66) => OID_P521,
            _ => {
                return Err(KeyError::Malformed {
                    format: SEC1,
                    reason: "curve is not named and cannot be told from the key size".to_owned(),
                });
            }
        },
    };
    let inner = if curve == OID_P256 {
        Inner::P256(
            p256::SecretKey::from_sec1_der(der)
                .map_err(|e| malformed(SEC1)(&e))?
                .into(),
        )
    } else if curve == OID_P384 {
        Inner::P384(
            p384::SecretKey::from_sec1_der(der)
                .map_err(|e| malformed(SEC1)(&e))?
                .into(),
        )
    } else if curve == OID_P521 {
        Inner::P521(
            p521::SecretKey::from_sec1_der(der)
                .map_err(|e| malformed(SEC1)(&e))?
                .into(),
        )
    } else {
        return Err(KeyError::UnsupportedType(curve_name(curve)));
    };
    Ok(SigningKey::from_inner(inner))
}

fn type_name(oid: ObjectIdentifier) -> String {
    let dotted = oid.to_string();
    KNOWN_OTHERS
        .iter()
        .find(|(known, _)| *known == dotted)
        .map_or_else(
            || format!("with algorithm {dotted}"),
            |(_, name)| (*name).to_owned(),
        )
}

fn curve_name(oid: ObjectIdentifier) -> String {
    let dotted = oid.to_string();
    KNOWN_OTHERS
        .iter()
        .find(|(known, _)| *known == dotted)
        .map_or_else(
            || format!("EC on curve {dotted}"),
            |(_, name)| (*name).to_owned(),
        )
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
