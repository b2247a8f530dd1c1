//! Tests for the destination policy: every range classified without sending a packet.

use super::*;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower_service::Service;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address parses")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("test network parses")
}

fn reason(policy: &Policy, addr: &str, scope: Scope) -> Option<Reason> {
    policy.check_ip(ip(addr), scope).err().map(|d| d.reason)
}

#[test]
fn unrouted_ranges() {
    use Reason::*;
    let policy = Policy::default();
    let cases: &[(&str, Option<Reason>)] = &[
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.1", Some(Loopback)),
        ("127.255.255.254", Some(Loopback)),
        ("::1", Some(Loopback)),
        ("169.254.1.1", Some(LinkLocal)),
        ("fe80::1", Some(LinkLocal)),
        ("febf::1", Some(LinkLocal)),
        ("169.254.169.254", Some(Metadata)),
        ("169.254.170.2", Some(Metadata)),
        ("169.254.170.23", Some(Metadata)),
        ("100.100.100.200", Some(Metadata)),
        ("fd00:ec2::254", Some(Metadata)),
        ("fd00:ec2::23", Some(Metadata)),
        ("10.1.2.3", Some(Private)),
        ("172.16.0.0", Some(Private)),
        ("172.31.255.255", Some(Private)),
        ("172.15.255.255", None),
        ("172.32.0.0", None),
        ("192.168.1.1", Some(Private)),
        ("fec0::1", Some(Private)),
        ("fc00::1", Some(UniqueLocal)),
        ("fd12:3456::1", Some(UniqueLocal)),
        ("100.64.0.1", Some(SharedAddressSpace)),
        ("100.127.255.255", Some(SharedAddressSpace)),
        ("100.63.255.255", None),
        ("100.128.0.0", None),
        ("0.0.0.0", Some(Unspecified)),
        ("0.1.2.3", Some(Unspecified)),
        ("::", Some(Unspecified)),
        ("224.0.0.1", Some(Multicast)),
        ("239.255.255.250", Some(Multicast)),
        ("ff02::1", Some(Multicast)),
        ("255.255.255.255", Some(Broadcast)),
        ("240.0.0.1", Some(Reserved)),
        ("255.255.255.254", Some(Reserved)),
        ("192.0.0.8", Some(Reserved)),
        ("192.0.1.1", None),
        // Documentation and benchmarking ranges are allowed.
        ("192.0.2.1", None),
        ("198.18.0.1", None),
        ("2001:db8::1", None),
    ];
    for &(addr, want) in cases {
        assert_eq!(reason(&policy, addr, Scope::Unrouted), want, "{addr}");
    }
}

#[test]
fn embedded_ipv4_is_judged() {
    use Reason::*;
    let policy = Policy::default();
    let cases: &[(&str, Option<Reason>)] = &[
        // IPv4-mapped and IPv4-translated.
        ("::ffff:127.0.0.1", Some(Loopback)),
        ("::ffff:10.0.0.1", Some(Private)),
        ("::ffff:169.254.169.254", Some(Metadata)),
        ("::ffff:8.8.8.8", None),
        ("::ffff:0:192.168.0.1", Some(Private)),
        // IPv4-compatible.
        ("::127.0.0.1", Some(Loopback)),
        ("::100.64.0.1", Some(SharedAddressSpace)),
        ("::8.8.8.8", None),
        // NAT64, well-known and local-use prefixes.
        ("64:ff9b::a9fe:a9fe", Some(Metadata)),
        ("64:ff9b::7f00:1", Some(Loopback)),
        ("64:ff9b::808:808", None),
        ("64:ff9b:1::a00:1", Some(Private)),
        ("64:ff9b:1:7f00:0:100::", Some(Loopback)),
        ("64:ff9b:1::", Some(Unspecified)),
        ("64:ff9b:1::808:808", None),
        ("64:ff9b:1:0:8:808:800::", None),
        // 6to4.
        ("2002:a9fe:a9fe::1", Some(Metadata)),
        ("2002:c0a8:101::1", Some(Private)),
        ("2002:808:808::1", None),
        // Teredo: the client 127.0.0.1 inverted is 80ff:fffe.
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", Some(Loopback)),
        ("2001:0:4136:e378:8000:63bf:f5ff:fefe", Some(Private)),
        ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", None),
    ];
    for &(addr, want) in cases {
        assert_eq!(reason(&policy, addr, Scope::Unrouted), want, "{addr}");
    }
}

#[test]
fn routes_reach_private_but_not_metadata() {
    let policy = Policy::default();
    for addr in [
        "10.1.2.3",
        "192.168.1.1",
        "127.0.0.1",
        "fd12::1",
        "100.64.0.1",
    ] {
        assert_eq!(reason(&policy, addr, Scope::Routed), None, "{addr}");
        assert_eq!(reason(&policy, addr, Scope::RoutedLiteral), None, "{addr}");
    }
    for addr in ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"] {
        assert_eq!(reason(&policy, addr, Scope::Routed), Some(Reason::Metadata));
        assert_eq!(reason(&policy, addr, Scope::RoutedLiteral), None, "{addr}");
    }
}

#[test]
fn configured_allow_reopens_a_range() {
    let policy = Policy::new(vec![net("10.0.0.0/8")], vec![], vec![]);
    assert_eq!(reason(&policy, "10.1.2.3", Scope::Unrouted), None);
    assert_eq!(reason(&policy, "::ffff:10.1.2.3", Scope::Unrouted), None);
    assert_eq!(
        reason(&policy, "192.168.1.1", Scope::Unrouted),
        Some(Reason::Private)
    );

    // Allowing every IPv6 address does not open the IPv4 ranges they can carry.
    let policy = Policy::new(vec![net("::/0")], vec![], vec![]);
    assert_eq!(reason(&policy, "fd12::1", Scope::Unrouted), None);
    let mapped = reason(&policy, "::ffff:127.0.0.1", Scope::Unrouted);
    assert_eq!(mapped, Some(Reason::Loopback));

    // The allow list comes before the metadata rule.
    let policy = Policy::new(vec![net("169.254.169.254/32")], vec![], vec![]);
    assert_eq!(reason(&policy, "169.254.169.254", Scope::Unrouted), None);
}

#[test]
fn configured_deny_wins_in_every_scope() {
    let deny = vec![net("203.0.113.0/24"), net("10.0.0.0/8")];
    let policy = Policy::new(vec![net("10.0.0.0/8")], deny, vec![]);
    for scope in [Scope::Routed, Scope::RoutedLiteral, Scope::Unrouted] {
        for addr in [
            "203.0.113.7",
            "2002:cb00:7107::1",
            "::ffff:203.0.113.7",
            "10.0.0.1",
        ] {
            let got = reason(&policy, addr, scope);
            assert_eq!(got, Some(Reason::Configured), "{addr} {scope:?}");
        }
        assert_eq!(reason(&policy, "203.0.114.1", scope), None);
    }
}

#[test]
fn own_listener_is_denied_in_every_scope() {
    let listeners = vec![
        "127.0.0.1:8080".parse().expect("listener"),
        "0.0.0.0:3128".parse().expect("listener"),
        "[::]:9000".parse().expect("listener"),
    ];
    let policy = Policy::new(vec![net("0.0.0.0/0"), net("::/0")], vec![], listeners);
    let cases: &[(&str, bool)] = &[
        ("127.0.0.1:8080", true),
        ("[::ffff:127.0.0.1]:8080", true),
        ("0.0.0.0:8080", true),
        ("127.0.0.1:8081", false),
        ("127.0.0.2:8080", false),
        ("127.0.0.2:3128", true),
        ("[::1]:3128", true),
        ("[::]:3128", true),
        ("127.0.0.1:9000", true),
        ("[::1]:9000", true),
        // Not an address of this host, so the wildcard listener is not reached.
        ("192.0.2.1:3128", false),
        ("203.0.113.9:3128", false),
    ];
    for scope in [Scope::Routed, Scope::RoutedLiteral, Scope::Unrouted] {
        for &(addr, own) in cases {
            let addr: SocketAddr = addr.parse().expect("test socket address parses");
            let got = policy.check(addr, scope).err().map(|d| d.reason);
            let want = own.then_some(Reason::OwnListener);
            assert_eq!(got, want, "{addr} {scope:?}");
        }
    }
}

#[test]
fn messages() {
    let denied = Denied {
        addr: ip("169.254.169.254"),
        reason: Reason::Metadata,
    };
    assert_eq!(
        denied.to_string(),
        "destination 169.254.169.254 is denied: cloud metadata address"
    );
    let err = ResolveError::from(denied);
    assert_eq!(err.to_string(), denied.to_string());
    assert_eq!(find_denied(&err), Some(&denied));
}

#[test]
fn literals() {
    assert_eq!(parse_literal("[::1]"), Some(ip("::1")));
    assert_eq!(parse_literal("::1"), Some(ip("::1")));
    assert_eq!(parse_literal("10.0.0.1"), Some(ip("10.0.0.1")));
    assert_eq!(parse_literal("localhost"), None);
    assert_eq!(parse_literal("[localhost]"), None);
}

#[tokio::test]
async fn resolve_checked_literals_skip_dns() {
    let policy = Policy::default();
    let got = resolve_checked("[::1]", 443, &policy, Scope::Routed).await;
    assert_eq!(
        got.expect("routed loopback"),
        vec!["[::1]:443".parse().expect("addr")]
    );

    let err = resolve_checked("127.0.0.1", 443, &policy, Scope::Unrouted)
        .await
        .expect_err("unrouted loopback");
    assert_eq!(find_denied(&err).map(|d| d.reason), Some(Reason::Loopback));

    let literal = resolve_checked("169.254.169.254", 80, &policy, Scope::RoutedLiteral).await;
    assert!(literal.is_ok());
    let routed = resolve_checked("169.254.169.254", 80, &policy, Scope::Routed).await;
    assert!(matches!(routed, Err(ResolveError::Denied(_))));

    let own = Policy::new(vec![], vec![], vec!["0.0.0.0:3128".parse().expect("addr")]);
    let err = resolve_checked("127.0.0.1", 3128, &own, Scope::Routed)
        .await
        .expect_err("own listener");
    assert_eq!(
        find_denied(&err).map(|d| d.reason),
        Some(Reason::OwnListener)
    );
}

#[tokio::test]
async fn resolve_checked_localhost() {
    let policy = Policy::default();
    let addrs = resolve_checked("localhost", 8443, &policy, Scope::Routed)
        .await
        .expect("localhost resolves");
    assert!(!addrs.is_empty());
    assert!(
        addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8443)
    );

    let err = resolve_checked("localhost", 8443, &policy, Scope::Unrouted)
        .await
        .expect_err("unrouted localhost");
    assert_eq!(find_denied(&err).map(|d| d.reason), Some(Reason::Loopback));

    let own = Policy::new(vec![], vec![], vec!["[::]:8443".parse().expect("addr")]);
    let err = resolve_checked("localhost", 8443, &own, Scope::Routed)
        .await
        .expect_err("own listener");
    assert_eq!(
        find_denied(&err).map(|d| d.reason),
        Some(Reason::OwnListener)
    );
}

fn resolver(scope: Scope) -> CheckedResolver {
    CheckedResolver::new(Arc::new(Policy::default()), scope)
}

fn name(s: &str) -> Name {
    s.parse().expect("test name parses")
}

#[tokio::test]
async fn resolver_service() {
    let addrs: Vec<SocketAddr> = resolver(Scope::Routed)
        .call(name("localhost"))
        .await
        .expect("routed localhost")
        .collect();
    assert!(!addrs.is_empty());
    assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 0));

    let err = resolver(Scope::Unrouted)
        .call(name("localhost"))
        .await
        .expect_err("unrouted localhost");
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    let denied = find_denied(&err).expect("a Denied in the chain");
    assert_eq!(denied.reason, Reason::Loopback);
    assert!(denied.addr.is_loopback());
}

/// The denial reaches the caller through hyper-util's client, and nothing is connected:
/// the lookup fails before the connector has an address.
#[tokio::test]
async fn client_error_carries_the_denial() {
    let connector = HttpConnector::new_with_resolver(resolver(Scope::Unrouted));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let uri = "http://localhost:9/".parse().expect("uri");
    let err = client.get(uri).await.expect_err("denied");
    assert!(err.is_connect());
    let denied = find_denied(&err).expect("a Denied in the chain");
    assert_eq!(denied.reason, Reason::Loopback);
}
