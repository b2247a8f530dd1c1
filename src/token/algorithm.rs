//! The JWS signature algorithms an ASAP token can be signed with.

use std::fmt;
use std::str::FromStr;

/// A JWS `alg` value the proxy can sign with (RFC 7518 section 3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256, MGF1 with SHA-256 and a 32-byte salt.
    Ps256,
    /// RSASSA-PSS with SHA-384, MGF1 with SHA-384 and a 48-byte salt.
    Ps384,
    /// RSASSA-PSS with SHA-512, MGF1 with SHA-512 and a 64-byte salt.
    Ps512,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// ECDSA on P-384 with SHA-384.
    Es384,
    /// ECDSA on P-521 with SHA-512.
    Es512,
}

/// The family of key an algorithm signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    RsaPkcs1v15,
    RsaPss,
    Ecdsa,
}

impl Algorithm {
    /// Every supported algorithm, in the order JWS lists them.
    pub const ALL: [Algorithm; 9] = [
        Algorithm::Rs256,
        Algorithm::Rs384,
        Algorithm::Rs512,
        Algorithm::Ps256,
        Algorithm::Ps384,
        Algorithm::Ps512,
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::Es512,
    ];

    /// The JWS name, as written in a token header's `alg`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Rs384 => "RS384",
            Algorithm::Rs512 => "RS512",
            Algorithm::Ps256 => "PS256",
            Algorithm::Ps384 => "PS384",
            Algorithm::Ps512 => "PS512",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::Es512 => "ES512",
        }
    }

    pub(crate) const fn family(self) -> Family {
        match self {
            Algorithm::Rs256 | Algorithm::Rs384 | Algorithm::Rs512 => Family::RsaPkcs1v15,
            Algorithm::Ps256 | Algorithm::Ps384 | Algorithm::Ps512 => Family::RsaPss,
            Algorithm::Es256 | Algorithm::Es384 | Algorithm::Es512 => Family::Ecdsa,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no supported algorithm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown algorithm {name:?}: expected one of RS256, RS384, RS512, PS256, PS384, PS512, \
     ES256, ES384, ES512"
)]
pub struct UnknownAlgorithm {
    name: String,
}

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    /// Accepts exactly the JWS names; `rs256` or `none` are refused so a typo cannot pick an
    /// algorithm the verifier does not expect.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|alg| alg.as_str() == s)
            .ok_or_else(|| UnknownAlgorithm { name: s.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for alg in Algorithm::ALL {
            assert_eq!(alg.as_str().parse::<Algorithm>(), Ok(alg));
            assert_eq!(alg.to_string(), alg.as_str());
        }
    }

    #[test]
    fn refuses_other_spellings() {
        for name in [
            "rs256", "Rs256", "HS256", "none", "", " RS256", "ES256K", "EdDSA",
        ] {
            let err = name.parse::<Algorithm>().expect_err(name);
            let message = err.to_string();
            assert!(message.starts_with("unknown algorithm"), "{message}");
            assert!(
                message.contains("RS256") && message.contains("ES512"),
                "{message}"
            );
        }
    }
}
