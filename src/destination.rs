//! Which upstream addresses the proxy may connect to, and a resolver that checks every answer.
//!
//! The proxy signs requests with a service's identity, so it must not become a way into the
//! network it stands in. A name is resolved once, every address it resolves to is checked
//! against the [`Policy`], and the connector is handed only those checked addresses: there is
//! no second lookup that DNS rebinding could answer differently.
//!
//! [`Policy::check`] applies these rules in order; the first that matches decides:
//!
//! 1. an address one of the proxy's own listeners accepts on is denied, in every scope;
//! 2. an address in `destinations.deny` is denied, in every scope;
//! 3. an address in `destinations.allow` is allowed, in every scope;
//! 4. a cloud metadata address is denied, unless the route names it as its IP literal host;
//! 5. a routed request may reach anything else, private networks included;
//! 6. an unrouted request may not reach loopback, link-local, private, unique local, shared
//!    (carrier-grade NAT), unspecified, multicast, broadcast or reserved addresses.
//!
//! An IPv6 address that carries an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) is
//! judged by the IPv4 address it carries, since that is where the packets end up. The
//! documentation and benchmarking ranges are allowed: they are harmless either way.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use ipnet::IpNet;

/// Why an address is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// 127.0.0.0/8 or ::1.
    Loopback,
    /// 169.254.0.0/16 or fe80::/10.
    LinkLocal,
    /// A cloud provider's instance or task metadata service.
    Metadata,
    /// 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, or the deprecated IPv6 site-local fec0::/10.
    Private,
    /// fc00::/7.
    UniqueLocal,
    /// 100.64.0.0/10, the carrier-grade NAT range (RFC 6598).
    SharedAddressSpace,
    /// 0.0.0.0/8 or ::.
    Unspecified,
    /// 224.0.0.0/4 or ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 192.0.0.0/24 (IETF protocol assignments) or 240.0.0.0/4.
    Reserved,
    /// A range in the config's `destinations.deny`.
    Configured,
    /// The proxy's own listener: connecting there would loop the request back to us.
    OwnListener,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Loopback => "loopback address",
            Reason::LinkLocal => "link-local address",
            Reason::Metadata => "cloud metadata address",
            Reason::Private => "private address",
            Reason::UniqueLocal => "unique local address",
            Reason::SharedAddressSpace => "shared address space (carrier-grade NAT)",
            Reason::Unspecified => "unspecified address",
            Reason::Multicast => "multicast address",
            Reason::Broadcast => "broadcast address",
            Reason::Reserved => "reserved address",
            Reason::Configured => "listed in destinations.deny",
            Reason::OwnListener => "the proxy's own listener",
        })
    }
}

/// An address the policy refuses, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("destination {addr} is denied: {reason}")]
pub struct Denied {
    /// The address as resolved, before any embedded IPv4 address was taken out of it.
    pub addr: IpAddr,
    pub reason: Reason,
}

/// How the request came to be sent to an address; routes are explicit allow-listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The request matched a route whose host is a name.
    Routed,
    /// The request matched a route whose host is exactly this IP literal. The operator named
    /// the address outright, so even a metadata address is allowed (rule 4 is skipped). A name
    /// never has this scope: [`resolve_checked`] and [`CheckedResolver`] treat it as
    /// [`Scope::Routed`] when the host turns out not to be a literal.
    RoutedLiteral,
    /// The request matched no route and is forwarded as is.
    Unrouted,
}

impl Scope {
    /// The scope that applies to addresses a name resolved to.
    fn for_name(self) -> Scope {
        match self {
            Scope::RoutedLiteral => Scope::Routed,
            scope => scope,
        }
    }
}

/// The destination rules: the config's `destinations:` section plus the proxy's own
/// listeners.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    own_listeners: Vec<SocketAddr>,
}

impl Policy {
    /// `extra_allow` and `extra_deny` come from the config's `destinations:` section;
    /// `own_listeners` are the socket addresses the proxy's listeners are bound to.
    pub fn new(
        extra_allow: Vec<IpNet>,
        extra_deny: Vec<IpNet>,
        own_listeners: Vec<SocketAddr>,
    ) -> Policy {
        let own_listeners = own_listeners
            .into_iter()
            .map(|l| SocketAddr::new(l.ip().to_canonical(), l.port()))
            .collect();
        Policy {
            allow: extra_allow,
            deny: extra_deny,
            own_listeners,
        }
    }

    /// Applies every rule to the address the proxy is about to connect to.
    pub fn check(&self, addr: SocketAddr, scope: Scope) -> Result<(), Denied> {
        if self.is_own_listener(addr) {
            return Err(Denied {
                addr: addr.ip(),
                reason: Reason::OwnListener,
            });
        }
        self.check_ip(addr.ip(), scope)
    }

    /// Applies every rule but the own-listener one, which needs the port. The resolver uses
    /// this, since a name is resolved before the port is known to it.
    pub fn check_ip(&self, ip: IpAddr, scope: Scope) -> Result<(), Denied> {
        let deny = |reason| Err(Denied { addr: ip, reason });
        let targets = targets(ip);
        let targets = targets.as_slice();

        // Denying looks at the address itself too, so an operator can shut off, say, 6to4.
        let denied = |net: &IpNet| net.contains(&ip) || targets.iter().any(|t| net.contains(t));
        if self.deny.iter().any(denied) {
            return deny(Reason::Configured);
        }
        // Allowing looks only at where the packets end up: allowing 10.0.0.0/8 also opens
        // ::ffff:10.1.2.3, but allowing ::/0 must not open ::ffff:127.0.0.1.
        let allowed = |t: &IpAddr| self.allow.iter().any(|net| net.contains(t));
        if targets.iter().all(allowed) {
            return Ok(());
        }
        if scope != Scope::RoutedLiteral && (is_metadata(&ip) || targets.iter().any(is_metadata)) {
            return deny(Reason::Metadata);
        }
        if scope == Scope::Unrouted
            && let Some(reason) = targets.iter().find_map(|&t| special(t))
        {
            return deny(reason);
        }
        Ok(())
    }

    fn is_own_listener(&self, addr: SocketAddr) -> bool {
        let targets = targets(addr.ip());
        self.own_listeners
            .iter()
            .filter(|l| l.port() == addr.port())
            .any(|l| {
                targets.as_slice().iter().any(|&t| {
                    // Connecting to an unspecified address reaches this host.
                    t == l.ip() || t.is_unspecified() || (l.ip().is_unspecified() && is_local(t))
                })
            })
    }
}

/// Whether `ip` belongs to this host. A listener on 0.0.0.0 or :: (which on Linux also takes
/// IPv4) accepts on all of them, whatever the family.
fn is_local(ip: IpAddr) -> bool {
    if ip.is_loopback() {
        return true;
    }
    // A socket binds only to an address one of our interfaces has, and binding sends nothing.
    // Multicast groups bind too without being ours. Where the kernel allows non-local binds
    // this says yes too often, which only denies more.
    let group = match ip {
        IpAddr::V4(v4) => v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_multicast(),
    };
    !group && UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Cloud metadata services: AWS, GCP, Azure and others on 169.254.169.254, the AWS ECS task
/// metadata endpoint, the EKS Pod Identity agent, and Alibaba Cloud.
const METADATA_V4: [Ipv4Addr; 4] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(169, 254, 170, 23),
    Ipv4Addr::new(100, 100, 100, 200),
];

/// The AWS instance metadata service and the EKS Pod Identity agent over IPv6.
const METADATA_V6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23),
];

fn is_metadata(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => METADATA_V4.contains(v4),
        IpAddr::V6(v6) => METADATA_V6.contains(v6),
    }
}

/// The special range `ip` falls in, if an unrouted request may not reach it.
fn special(ip: IpAddr) -> Option<Reason> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<Reason> {
    let [a, b, c, _] = ip.octets();
    let reason = match (a, b, c) {
        (0, ..) => Reason::Unspecified,
        (127, ..) => Reason::Loopback,
        (10, ..) | (192, 168, _) => Reason::Private,
        (172, b, _) if b & 0xf0 == 16 => Reason::Private,
        (100, b, _) if b & 0xc0 == 64 => Reason::SharedAddressSpace,
        (169, 254, _) => Reason::LinkLocal,
        (192, 0, 0) => Reason::Reserved,
        (224..=239, ..) => Reason::Multicast,
        _ if ip.is_broadcast() => Reason::Broadcast,
        (240.., ..) => Reason::Reserved,
        _ => return None,
    };
    Some(reason)
}

fn special_v6(ip: Ipv6Addr) -> Option<Reason> {
    let first = ip.segments()[0];
    let reason = if ip.is_unspecified() {
        Reason::Unspecified
    } else if ip.is_loopback() {
        Reason::Loopback
    } else if first & 0xffc0 == 0xfe80 {
        Reason::LinkLocal
    } else if first & 0xffc0 == 0xfec0 {
        // Site-local was deprecated (RFC 3879) but some networks still route it internally.
        Reason::Private
    } else if first & 0xfe00 == 0xfc00 {
        Reason::UniqueLocal
    } else if first & 0xff00 == 0xff00 {
        Reason::Multicast
    } else {
        return None;
    };
    Some(reason)
}

/// Where a connection to an address ends up, as far as can be told from the address: the
/// IPv4 address an IPv6 address carries, or else the address itself.
struct Targets {
    addrs: [IpAddr; 4],
    len: usize,
}

impl Targets {
    fn one(ip: IpAddr) -> Targets {
        Targets {
            addrs: [ip; 4],
            len: 1,
        }
    }

    fn as_slice(&self) -> &[IpAddr] {
        &self.addrs[..self.len]
    }
}

fn targets(ip: IpAddr) -> Targets {
    let v6 = match ip {
        IpAddr::V4(_) => return Targets::one(ip),
        IpAddr::V6(v6) => v6,
    };
    let o = v6.octets();
    let v4 =
        |a: usize, b: usize, c: usize, d: usize| IpAddr::V4(Ipv4Addr::new(o[a], o[b], o[c], o[d]));
    let last = v4(12, 13, 14, 15);
    match v6.segments() {
        // IPv4-mapped ::ffff:a.b.c.d, and IPv4-translated ::ffff:0:a.b.c.d (RFC 2765).
        [0, 0, 0, 0, 0, 0xffff, ..] | [0, 0, 0, 0, 0xffff, 0, ..] => Targets::one(last),
        // `::` and `::1` keep their IPv6 meaning rather than read as 0.0.0.0 and 0.0.0.1.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => Targets::one(ip),
        // The deprecated IPv4-compatible ::a.b.c.d.
        [0, 0, 0, 0, 0, 0, ..] => Targets::one(last),
        // The NAT64 well-known prefix 64:ff9b::/96 (RFC 6052).
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => Targets::one(last),
        // Local-use NAT64, 64:ff9b:1::/48 (RFC 8215). Its operator picks the prefix length,
        // which moves the IPv4 address around (skipping bits 64..72), so every RFC 6052 layout
        // that fits is judged. The zero padding of the other layouts reads as 0.0.0.0/8, where
        // no translator sends anything, so such readings are dropped unless all are.
        [0x64, 0xff9b, 1, ..] => {
            let layouts = [v4(6, 7, 9, 10), v4(7, 9, 10, 11), v4(9, 10, 11, 12), last];
            let mut found = Targets {
                addrs: [last; 4],
                len: 0,
            };
            for t in layouts
                .into_iter()
                .filter(|t| special(*t) != Some(Reason::Unspecified))
            {
                found.addrs[found.len] = t;
                found.len += 1;
            }
            if found.len == 0 {
                Targets::one(last)
            } else {
                found
            }
        }
        // 6to4, 2002:aabb:ccdd::/48 (RFC 3056).
        [0x2002, ..] => Targets::one(v4(2, 3, 4, 5)),
        // Teredo, 2001:0::/32 (RFC 4380): the client's address is the last 32 bits, inverted.
        // The Teredo server in bits 32..64 is not where the packets go.
        [0x2001, 0, ..] => {
            let client = u32::from_be_bytes([o[12], o[13], o[14], o[15]]) ^ u32::MAX;
            Targets::one(IpAddr::V4(Ipv4Addr::from(client)))
        }
        _ => Targets::one(ip),
    }
}

/// Why [`resolve_checked`] found nothing to connect to.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("could not resolve {host}: {source}")]
    Dns { host: String, source: io::Error },
    #[error("{host} resolved to no addresses")]
    NoAddresses { host: String },
}

/// The IP address in `host`, with or without the brackets an IPv6 literal has in a URI.
pub fn parse_literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// Resolves `host` once and checks every address with every rule, the own-listener one
/// included, for a CONNECT tunnel. An IP literal is checked without a lookup. If any address is
/// denied the whole answer is, so a name cannot slip one bad address in among good ones.
pub async fn resolve_checked(
    host: &str,
    port: u16,
    policy: &Policy,
    scope: Scope,
) -> Result<Vec<SocketAddr>, ResolveError> {
    if let Some(ip) = parse_literal(host) {
        let addr = SocketAddr::new(ip, port);
        policy.check(addr, scope)?;
        return Ok(vec![addr]);
    }
    let scope = scope.for_name();
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| ResolveError::Dns {
            host: host.to_owned(),
            source,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(ResolveError::NoAddresses {
            host: host.to_owned(),
        });
    }
    for &addr in &addrs {
        if let Err(denied) = policy.check(addr, scope) {
            tracing::debug!(host, %addr, reason = %denied.reason, "resolved address denied");
            return Err(denied.into());
        }
    }
    Ok(addrs)
}

/// A resolver for hyper-util's `HttpConnector` that fails a lookup if any address it returns
/// is denied; the error is an `io::Error` of kind `PermissionDenied` wrapping the [`Denied`]
/// (see [`find_denied`]).
///
/// It cannot apply the own-listener rule, since a resolver is not told the port: callers that
/// need it check the address they connect to with [`Policy::check`]. `HttpConnector` never
/// asks the resolver about an IP literal host either, so callers check those themselves, with
/// [`parse_literal`] and [`Policy::check`], before sending.
#[derive(Clone, Debug)]
pub struct CheckedResolver {
    pub policy: Arc<Policy>,
    pub scope: Scope,
}

impl CheckedResolver {
    pub fn new(policy: Arc<Policy>, scope: Scope) -> CheckedResolver {
        CheckedResolver { policy, scope }
    }
}

/// What [`CheckedResolver`] answers with: like hyper-util's own resolver, addresses with port
/// 0, which the connector replaces with the request's port.
pub type ResolvedAddrs = std::vec::IntoIter<SocketAddr>;

pub type ResolveFuture = Pin<Box<dyn Future<Output = io::Result<ResolvedAddrs>> + Send>>;

impl tower_service::Service<Name> for CheckedResolver {
    type Response = ResolvedAddrs;
    type Error = io::Error;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> ResolveFuture {
        let policy = Arc::clone(&self.policy);
        let scope = self.scope;
        Box::pin(async move {
            let host = name.as_str();
            let scope = match parse_literal(host) {
                Some(_) => scope,
                None => scope.for_name(),
            };
            // The lookup runs getaddrinfo on tokio's blocking pool.
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
            for addr in &addrs {
                if let Err(denied) = policy.check_ip(addr.ip(), scope) {
                    let reason = denied.reason;
                    tracing::debug!(host, %addr, %reason, "resolved address denied");
                    return Err(io::Error::new(io::ErrorKind::PermissionDenied, denied));
                }
            }
            Ok(addrs.into_iter())
        })
    }
}

/// Finds a [`Denied`] among an error's causes, looking inside the `io::Error`s whose `source`
/// skips the error they wrap, and inside [`ResolveError`], whose `Denied` case is transparent.
pub fn find_denied<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Denied> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(denied) = e.downcast_ref::<Denied>() {
            return Some(denied);
        }
        if let Some(ResolveError::Denied(denied)) = e.downcast_ref::<ResolveError>() {
            return Some(denied);
        }
        cause = match e.downcast_ref::<io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

#[cfg(test)]
#[path = "destination_tests.rs"]
mod tests;
