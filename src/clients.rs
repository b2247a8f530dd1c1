//! Who may use the proxy: client addresses, and `Proxy-Authorization` Basic credentials.
//!
//! A proxy that signs with a service's key is that service's identity, so by default only
//! loopback clients are admitted.

use std::fmt;
use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderValue;
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Realm named in `Proxy-Authenticate` challenges.
pub const REALM: &str = "asap-proxy";

/// The admission rules of one configuration.
pub struct Admission {
    /// Client networks admitted; loopback only when the configuration names none.
    allow: Vec<IpNet>,
    /// When not empty, every client must also present one of these credentials.
    users: Vec<User>,
}

/// A user, with the SHA-256 of the password rather than the password itself.
pub struct User {
    name: String,
    password_sha256: [u8; 32],
}

impl User {
    pub fn new(name: String, password: &str) -> User {
        User {
            name,
            password_sha256: Sha256::digest(password.as_bytes()).into(),
        }
    }
}

/// Why a client was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its address is not in `clients.allow`: 403.
    Address,
    /// Missing or wrong credentials: 407 with a challenge.
    Credentials,
}

impl Admission {
    pub fn new(allow: Vec<IpNet>, users: Vec<User>) -> Admission {
        // Peers are compared in canonical form, so IPv4-mapped networks are too.
        let allow = allow.into_iter().map(canonical).collect();
        Admission { allow, users }
    }

    /// The default: loopback clients, no credentials.
    pub fn loopback_only() -> Admission {
        Admission::new(loopback_networks(), Vec::new())
    }

    pub fn requires_credentials(&self) -> bool {
        !self.users.is_empty()
    }

    /// Admits a client by address and, when users are configured, by credentials: every
    /// `Proxy-Authorization` value the request carried. Returns the user name, if any.
    pub fn admit(
        &self,
        peer: IpAddr,
        proxy_authorization: &[&HeaderValue],
    ) -> Result<Option<&str>, Refusal> {
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
        let peer = peer.to_canonical();
        if !self.allow.iter().any(|net| net.contains(&peer)) {
            return Err(Refusal::Address);
        }
        if self.users.is_empty() {
            return Ok(None);
        }
        // Several credentials are ambiguous: refuse rather than pick one.
        let [value] = proxy_authorization else {
            return Err(Refusal::Credentials);
        };
        let (name, password) = basic_credentials(value.as_bytes()).ok_or(Refusal::Credentials)?;
        let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        // Every user is compared, in constant time, so timing tells nothing about which
        // part was wrong.
        let mut found = None;
        for user in &self.users {
            let matches =
                user.name.as_bytes().ct_eq(name.as_bytes()) & user.password_sha256.ct_eq(&digest);
            if bool::from(matches) {
                found = Some(user.name.as_str());
            }
        }
        found.map(Some).ok_or(Refusal::Credentials)
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let users: Vec<&str> = self.users.iter().map(|u| u.name.as_str()).collect();
        f.debug_struct("Admission")
            .field("allow", &self.allow)
            .field("users", &users)
            .finish()
    }
}

/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) as the IPv4 network it stands for.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// 127.0.0.0/8 and ::1.
pub fn loopback_networks() -> Vec<IpNet> {
    vec![
        IpNet::V4(
            ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(127, 0, 0, 0), 8)
                .expect("8 is a valid prefix"),
        ),
        IpNet::from(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
    ]
}

/// `Basic base64(name:password)`, the scheme compared without case.
fn basic_credentials(value: &[u8]) -> Option<(String, zeroize::Zeroizing<String>)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = zeroize::Zeroizing::new(STANDARD.decode(encoded.trim()).ok()?);
    let text = std::str::from_utf8(&decoded).ok()?;
    let (name, password) = text.split_once(':')?;
    Some((
        name.to_owned(),
        zeroize::Zeroizing::new(password.to_owned()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(credentials: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(credentials))).expect("header")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn loopback_only_by_default() {
        let admission = Admission::loopback_only();
        for ok in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(admission.admit(ip(ok), &[]), Ok(None), "{ok}");
        }
        for refused in ["10.0.0.1", "192.168.1.1", "::2", "::ffff:10.0.0.1"] {
            assert_eq!(
                admission.admit(ip(refused), &[]),
                Err(Refusal::Address),
                "{refused}"
            );
        }
    }

    #[test]
    fn networks_and_credentials() {
        let admission = Admission::new(
            vec!["10.0.0.0/8".parse().expect("net")],
            vec![
                User::new("ci".into(), "s3cret:with:colons"),
                User::new("ops".into(), "other"),
            ],
        );
        assert_eq!(
            admission.admit(ip("10.1.2.3"), &[&basic("ci:s3cret:with:colons")]),
            Ok(Some("ci"))
        );
        assert_eq!(
            admission.admit(ip("10.1.2.3"), &[&basic("ops:other")]),
            Ok(Some("ops"))
        );
        let lower = HeaderValue::from_str(&format!("basic {}", STANDARD.encode("ops:other")))
            .expect("header");
        assert_eq!(admission.admit(ip("10.1.2.3"), &[&lower]), Ok(Some("ops")));
        for wrong in [
            Some(basic("ci:wrong")),
            Some(basic("ops:s3cret:with:colons")),
            Some(basic("nobody:other")),
            Some(basic("ci")),
            Some(HeaderValue::from_static("Bearer abc")),
            Some(HeaderValue::from_static("Basic !!!")),
            None,
        ] {
            let values: Vec<&HeaderValue> = wrong.iter().collect();
            assert_eq!(
                admission.admit(ip("10.1.2.3"), &values),
                Err(Refusal::Credentials),
                "{wrong:?}"
            );
        }
        // The address is checked first: right credentials from elsewhere are still refused.
        assert_eq!(
            admission.admit(ip("11.0.0.1"), &[&basic("ops:other")]),
            Err(Refusal::Address)
        );
        let (right, wrong) = (basic("ops:other"), basic("ci:wrong"));
        assert_eq!(
            admission.admit(ip("10.1.2.3"), &[&right, &wrong]),
            Err(Refusal::Credentials),
            "two credentials"
        );
    }

    #[test]
    fn mapped_networks_match_ipv4_peers() {
        let admission = Admission::new(
            vec!["::ffff:10.0.0.0/104".parse().expect("net")],
            Vec::new(),
        );
        assert_eq!(admission.admit(ip("10.9.9.9"), &[]), Ok(None));
        assert_eq!(admission.admit(ip("::ffff:10.9.9.9"), &[]), Ok(None));
        assert_eq!(admission.admit(ip("11.0.0.1"), &[]), Err(Refusal::Address));
    }

    #[test]
    fn debug_shows_no_password() {
        let admission = Admission::new(Vec::new(), vec![User::new("ci".into(), "hunter2")]);
        let debug = format!("{admission:?}");
        assert!(
            debug.contains("ci") && !debug.contains("hunter2"),
            "{debug}"
        );
    }
}
