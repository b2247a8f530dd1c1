//! Turns the raw YAML mirror into a checked `Config`: values, keys, routes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::raw;
use ipnet::IpNet;

use super::{
    Config, Destinations, Error, Limits, Origin, Reverse, Route, Timeouts, Tls, Unmatched,
};
use crate::clients::{Admission, User};
use crate::routes::{self, Rule};
use crate::tls::intercept::{self, Authority};
use crate::token::{Algorithm, Minter, SigningKey, SpecFields, TokenSpec};

/// Parses YAML text into the raw mirror, locating any error by line, column and key path.
pub(super) fn read_yaml(text: &str, path: &Path) -> Result<raw::File, Error> {
    let mut key = None;
    // YAML 1.2 booleans only: `audience: no` is the string "no", never false.
    let options = serde_saphyr::options! { strict_booleans: true };
    let parsed = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            // `Spanned` wraps values in a `value` field the file never names.
            let path = e.path().to_string();
            key = Some(
                path.split('.')
                    .filter(|s| *s != "value")
                    .collect::<Vec<_>>()
                    .join("."),
            );
            e.into_inner()
        })
    });
    parsed.map_err(|e| {
        let e = e.without_snippet();
        let position = e.location().map(|l| (l.line(), l.column()));
        // The library appends the position to its message; it is already in our prefix.
        let mut message = e.to_string();
        if let Some(at) = message.rfind(" at line ") {
            message.truncate(at);
        }
        // Advice meant for programs using the library, not for people writing the file.
        if let Some(at) = message.find(", set DuplicateKeyPolicy") {
            message.truncate(at);
        }
        Error {
            file: path.to_owned(),
            position,
            key: key.filter(|k| k != "." && k != "?"),
            message,
        }
    })
}

/// Builds errors that point into one file.
struct Ctx<'a> {
    file: &'a Path,
    base_dir: PathBuf,
    /// Files read while resolving, for reloads to watch.
    read: RefCell<Vec<PathBuf>>,
}

impl Ctx<'_> {
    fn error(
        &self,
        key: impl Into<String>,
        at: Option<&Location>,
        message: impl Into<String>,
    ) -> Error {
        Error {
            file: self.file.to_owned(),
            position: at.map(|l| (l.line(), l.column())),
            key: Some(key.into()),
            message: message.into(),
        }
    }

    fn at<T>(
        &self,
        key: impl Into<String>,
        value: &Spanned<T>,
        message: impl Into<String>,
    ) -> Error {
        self.error(key, Some(&value.referenced), message)
    }

    /// Relative paths in the file are relative to the file's own directory. The path is
    /// remembered as one the configuration depends on.
    fn path(&self, value: &str) -> PathBuf {
        let path = self.base_dir.join(value);
        self.read.borrow_mut().push(path.clone());
        path
    }
}

pub(super) fn resolve(file: raw::File, path: &Path) -> Result<Config, Error> {
    let ctx = Ctx {
        file: path,
        base_dir: path.parent().map(Path::to_owned).unwrap_or_default(),
        read: RefCell::default(),
    };

    let listen = file
        .listen
        .as_ref()
        .map(|l| socket_addr(&ctx, "listen", l))
        .transpose()?;
    let reverse = file
        .reverse
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Ok(Reverse {
                listen: socket_addr(&ctx, format!("reverse[{i}].listen"), &r.listen)?,
                upstream: origin(&ctx, format!("reverse[{i}].upstream"), &r.upstream)?,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    if listen.is_none() && reverse.is_empty() {
        return Err(ctx.error(
            "listen",
            None,
            "no listener configured: set `listen` (forward proxy) or add a `reverse` listener",
        ));
    }
    check_listeners(&ctx, listen, &reverse)?;

    let unmatched = match file.unmatched.as_ref() {
        None => Unmatched::Deny,
        Some(u) => match u.value.as_str() {
            "deny" => Unmatched::Deny,
            "forward" => Unmatched::Forward,
            other => {
                return Err(ctx.at(
                    "unmatched",
                    u,
                    format!("unknown value {other:?}, expected \"deny\" or \"forward\""),
                ));
            }
        },
    };

    let tls = match file.tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
        None => Tls::default(),
        Some(ca) => {
            let path = ctx.path(&ca.value);
            let extra_roots = crate::tls::read_ca_file(&path)
                .map_err(|e| ctx.at("tls.ca_file", ca, e.to_string()))?;
            Tls {
                ca_file: Some(path),
                extra_roots,
            }
        }
    };

    let timeouts = timeouts(&ctx, file.timeouts.as_ref())?;
    let clients = clients(&ctx, file.clients.as_ref())?;
    if file.clients.is_none() {
        refuse_exposed_listeners(&ctx, listen, &reverse)?;
    }
    let destinations = Destinations {
        allow: networks(
            &ctx,
            "destinations.allow",
            file.destinations.as_ref().map_or(&[][..], |d| &d.allow),
        )?,
        deny: networks(
            &ctx,
            "destinations.deny",
            file.destinations.as_ref().map_or(&[][..], |d| &d.deny),
        )?,
    };
    let admin = file
        .admin
        .as_ref()
        .map(|a| socket_addr(&ctx, "admin", a))
        .transpose()?;
    if let (Some(addr), Some(raw)) = (admin, &file.admin)
        && !addr.ip().is_loopback()
        && !file.admin_expose
    {
        return Err(ctx.at(
            "admin",
            raw,
            format!(
                "{addr} is reachable from other machines; health and metrics hold no secrets, but \
                 exposing them must be deliberate: set admin_expose: true"
            ),
        ));
    }
    let limits = limits(&ctx, file.limits.as_ref())?;
    let shutdown_grace = match &file.shutdown_grace_seconds {
        None => Duration::from_secs(30),
        Some(grace) => seconds(&ctx, "shutdown_grace_seconds", grace, true)?,
    };
    let log_level = match &file.log_level {
        None => None,
        Some(level) => {
            tracing_subscriber::EnvFilter::try_new(&level.value).map_err(|e| {
                ctx.at(
                    "log_level",
                    level,
                    format!("not a log filter such as info or asap_proxy=debug: {e}"),
                )
            })?;
            Some(level.value.clone())
        }
    };
    let connect_ports = connect_ports(&ctx, file.connect_ports.as_deref())?;
    let intercept = file
        .intercept
        .as_ref()
        .map(|i| intercept(&ctx, i))
        .transpose()?;

    let mut keys = KeyCache::default();
    let mut table = Vec::with_capacity(file.routes.len());
    // Verifiers fetch a public key by kid, so one kid must always name the same key.
    let mut kids: HashMap<String, (String, usize)> = HashMap::new();
    for (index, route) in file.routes.iter().enumerate() {
        let (rule, resolved) = resolve_route(&ctx, &mut keys, file.asap.as_ref(), index, route)?;
        let spec = resolved.minter.spec();
        let public = spec.key().public_key_pem();
        let kid = spec.kid().to_string();
        match kids.get(&kid) {
            Some((other, first)) if *other != public => {
                return Err(ctx.at(
                    format!("routes[{index}].asap.kid"),
                    &route.host,
                    format!(
                        "kid {kid:?} already names a different key in route {first}: give each key its own kid"
                    ),
                ));
            }
            Some(_) => {}
            None => {
                kids.insert(kid, (public, index));
            }
        }
        table.push((rule, resolved));
    }
    let routes = routes::Table::new(table).map_err(|c| {
        let host = &file.routes[c.second].host;
        ctx.at(format!("routes[{}].host", c.second), host, c.to_string())
    })?;

    Ok(Config {
        listen,
        reverse,
        routes,
        unmatched,
        tls,
        timeouts,
        intercept,
        connect_ports,
        clients,
        destinations,
        admin,
        limits,
        shutdown_grace,
        log_level,
        workers: match &file.workers {
            None => None,
            Some(w) => Some(
                usize::try_from(w.value)
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| ctx.at("workers", w, "must be from 1 to 1024"))?,
            ),
        },
        files: ctx.read.into_inner(),
        fingerprint: [0; 32],
    })
}

fn networks(ctx: &Ctx<'_>, key: &str, raw: &[Spanned<String>]) -> Result<Vec<IpNet>, Error> {
    raw.iter()
        .enumerate()
        .map(|(i, net)| {
            // A bare address is a network of one.
            net.value
                .parse::<IpNet>()
                .or_else(|_| net.value.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    ctx.at(
                        format!("{key}[{i}]"),
                        net,
                        format!("{:?} is not a CIDR such as 10.0.0.0/8", net.value),
                    )
                })
        })
        .collect()
}

fn clients(ctx: &Ctx<'_>, raw: Option<&Spanned<raw::Clients>>) -> Result<Admission, Error> {
    let Some(raw) = raw else {
        return Ok(Admission::loopback_only());
    };
    let allow = match &raw.value.allow {
        Some(allow) if allow.is_empty() => {
            return Err(ctx.at(
                "clients",
                raw,
                "clients.allow is empty, so no client could use the proxy",
            ));
        }
        Some(allow) => networks(ctx, "clients.allow", allow)?,
        // Credentials alone admit from anywhere; they are the access control.
        None if !raw.value.users.is_empty() => vec![
            "0.0.0.0/0".parse().expect("valid"),
            "::/0".parse().expect("valid"),
        ],
        None => {
            return Err(ctx.at(
                "clients",
                raw,
                "set allow (client networks), users (credentials), or both",
            ));
        }
    };
    let mut users = Vec::with_capacity(raw.value.users.len());
    for (i, user) in raw.value.users.iter().enumerate() {
        let here = format!("clients.users[{i}]");
        let password = match (&user.password_env, &user.password_file) {
            (Some(var), None) => std::env::var(&var.value).map_err(|_| {
                ctx.at(
                    format!("{here}.password_env"),
                    var,
                    format!("the environment variable {} is not set", var.value),
                )
            })?,
            (None, Some(file)) => {
                let path = ctx.path(&file.value);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ctx.at(
                        format!("{here}.password_file"),
                        file,
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                // Secret files conventionally end with a newline that is not part of the secret.
                text.trim_end_matches(['\r', '\n']).to_owned()
            }
            _ => {
                return Err(ctx.at(
                    here,
                    &user.name,
                    "set exactly one of password_env and password_file",
                ));
            }
        };
        let password = zeroize::Zeroizing::new(password);
        if password.is_empty() || user.name.value.is_empty() || user.name.value.contains(':') {
            return Err(ctx.at(
                here,
                &user.name,
                "the name must be non-empty without ':', and the password non-empty",
            ));
        }
        users.push(User::new(user.name.value.clone(), &password));
    }
    Ok(Admission::new(allow, users))
}

/// Anyone who can reach a listener can act as the configured services, so a listener on a
/// non-loopback address needs an explicit `clients` section.
fn refuse_exposed_listeners(
    ctx: &Ctx<'_>,
    listen: Option<SocketAddr>,
    reverse: &[Reverse],
) -> Result<(), Error> {
    let listeners = listen.map(|a| ("listen".to_owned(), a)).into_iter().chain(
        reverse
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("reverse[{i}].listen"), r.listen)),
    );
    for (key, addr) in listeners {
        if !addr.ip().is_loopback() {
            return Err(ctx.error(
                key,
                None,
                format!(
                    "{addr} is reachable from other machines, and whoever reaches it can sign \
                     requests as the configured services: add a clients section (allow: client \
                     networks, users: credentials); for an open proxy, allow 0.0.0.0/0 and ::/0 \
                     explicitly"
                ),
            ));
        }
    }
    Ok(())
}

fn limits(ctx: &Ctx<'_>, raw: Option<&raw::Limits>) -> Result<Limits, Error> {
    let mut limits = Limits::default();
    let Some(raw) = raw else { return Ok(limits) };
    let fields = [
        (
            "limits.max_connections",
            &raw.max_connections,
            &mut limits.max_connections,
            1,
            1_000_000,
        ),
        (
            "limits.max_header_bytes",
            &raw.max_header_bytes,
            &mut limits.max_header_bytes,
            8192,
            1 << 24,
        ),
        (
            "limits.max_headers",
            &raw.max_headers,
            &mut limits.max_headers,
            1,
            10_000,
        ),
    ];
    for (key, value, slot, min, max) in fields {
        if let Some(value) = value {
            *slot = usize::try_from(value.value)
                .ok()
                .filter(|v| (min..=max).contains(v))
                .ok_or_else(|| ctx.at(key, value, format!("must be from {min} to {max}")))?;
        }
    }
    Ok(limits)
}

fn connect_ports(ctx: &Ctx<'_>, raw: Option<&[Spanned<i64>]>) -> Result<Vec<u16>, Error> {
    let Some(raw) = raw else { return Ok(vec![443]) };
    raw.iter()
        .enumerate()
        .map(|(i, port)| match u16::try_from(port.value) {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(ctx.at(
                format!("connect_ports[{i}]"),
                port,
                "must be a port from 1 to 65535",
            )),
        })
        .collect()
}

fn intercept(ctx: &Ctx<'_>, raw: &raw::Intercept) -> Result<Arc<Authority>, Error> {
    let cert = ctx.path(&raw.ca_cert_file.value);
    let key = ctx.path(&raw.ca_key_file.value);
    Authority::load(&cert, &key).map(Arc::new).map_err(|e| {
        let (name, at) = match e {
            intercept::Error::Key { .. } | intercept::Error::KeyMismatch => {
                ("ca_key_file", &raw.ca_key_file)
            }
            intercept::Error::Read { ref path, .. } if *path == key => {
                ("ca_key_file", &raw.ca_key_file)
            }
            _ => ("ca_cert_file", &raw.ca_cert_file),
        };
        ctx.at(format!("intercept.{name}"), at, e.to_string())
    })
}

fn socket_addr(
    ctx: &Ctx<'_>,
    key: impl Into<String>,
    value: &Spanned<String>,
) -> Result<SocketAddr, Error> {
    value.value.parse().map_err(|_| {
        ctx.at(
            key,
            value,
            format!(
                "{:?} is not an IP address with a port, such as 127.0.0.1:8080 or [::1]:8080",
                value.value
            ),
        )
    })
}

fn origin(ctx: &Ctx<'_>, key: String, value: &Spanned<String>) -> Result<Origin, Error> {
    let bad = |why: &str| ctx.at(key.clone(), value, format!("{:?}: {why}", value.value));
    let uri: http::Uri = value
        .value
        .parse()
        .map_err(|_| bad("not a URL such as https://api.example.com"))?;
    let origin = Origin::from_uri(&uri).map_err(|e| bad(&e.to_string()))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(
            "the upstream must be an origin, without a path or query",
        ));
    }
    Ok(origin)
}

/// Listeners must not overlap (`0.0.0.0:80` takes port 80 on every address), and a
/// reverse listener must not send requests to the proxy itself.
fn check_listeners(
    ctx: &Ctx<'_>,
    listen: Option<SocketAddr>,
    reverse: &[Reverse],
) -> Result<(), Error> {
    let overlap = |a: &SocketAddr, b: &SocketAddr| {
        // Port 0 asks the system for a free port, so it never collides.
        a.port() == b.port()
            && a.port() != 0
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    };
    let listeners: Vec<(SocketAddr, String)> = listen
        .map(|a| (a, "listen".to_owned()))
        .into_iter()
        .chain(
            reverse
                .iter()
                .enumerate()
                .map(|(i, r)| (r.listen, format!("reverse[{i}].listen"))),
        )
        .collect();
    for (i, (addr, key)) in listeners.iter().enumerate() {
        if let Some((other, first)) = listeners[..i].iter().find(|(a, _)| overlap(a, addr)) {
            return Err(ctx.error(
                key.clone(),
                None,
                format!("{addr} overlaps {other}, used by {first}"),
            ));
        }
    }
    for (i, r) in reverse.iter().enumerate() {
        let Some(ip) = r.upstream.host.ip() else {
            continue;
        };
        let target = SocketAddr::new(ip, r.upstream.port);
        if let Some((_, key)) = listeners.iter().find(|(a, _)| overlap(a, &target)) {
            return Err(ctx.error(
                format!("reverse[{i}].upstream"),
                None,
                format!(
                    "{} is the proxy's own listener ({key}): requests would loop",
                    r.upstream
                ),
            ));
        }
    }
    Ok(())
}

fn timeouts(ctx: &Ctx<'_>, raw: Option<&raw::Timeouts>) -> Result<Timeouts, Error> {
    let mut timeouts = Timeouts::default();
    let Some(raw) = raw else { return Ok(timeouts) };
    let fields = [
        (
            "timeouts.connect_seconds",
            &raw.connect_seconds,
            &mut timeouts.connect,
        ),
        (
            "timeouts.response_seconds",
            &raw.response_seconds,
            &mut timeouts.response,
        ),
        (
            "timeouts.request_header_seconds",
            &raw.request_header_seconds,
            &mut timeouts.request_header,
        ),
    ];
    for (key, value, slot) in fields {
        if let Some(value) = value {
            *slot = seconds(ctx, key, value, false)?;
        }
    }
    Ok(timeouts)
}

/// A number of seconds, above 0 (or 0 itself when `zero_ok`) and at most a day.
fn seconds(
    ctx: &Ctx<'_>,
    key: &str,
    value: &Spanned<f64>,
    zero_ok: bool,
) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(value.value)
        .ok()
        .filter(|d| (zero_ok || !d.is_zero()) && d.as_secs() <= 24 * 3600)
        .ok_or_else(|| {
            let least = if zero_ok { "0 or more" } else { "above 0" };
            ctx.at(
                key,
                value,
                format!("must be a number of seconds {least} and at most 86400"),
            )
        })
}

/// Parsed keys by where they were configured, so a key shared by many routes loads once.
#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, (Arc<SigningKey>, Option<String>)>,
}

/// One `asap` setting after merging defaults with a route's overrides, with the key path
/// of the level it came from.
struct Setting<'a, T> {
    key: String,
    value: &'a Spanned<T>,
}

fn pick<'a, T>(
    route: Option<&'a raw::Asap>,
    route_key: &str,
    defaults: Option<&'a raw::Asap>,
    field: &str,
    get: impl Fn(&'a raw::Asap) -> Option<&'a Spanned<T>>,
) -> Option<Setting<'a, T>> {
    if let Some(value) = route.and_then(&get) {
        return Some(Setting {
            key: format!("{route_key}.{field}"),
            value,
        });
    }
    defaults.and_then(get).map(|value| Setting {
        key: format!("asap.{field}"),
        value,
    })
}

fn resolve_route(
    ctx: &Ctx<'_>,
    keys: &mut KeyCache,
    defaults: Option<&raw::Asap>,
    index: usize,
    route: &raw::Route,
) -> Result<(Rule, Route), Error> {
    let here = format!("routes[{index}]");
    let asap_key = format!("{here}.asap");
    let own = route.asap.as_ref();
    let setting = |field: &str, get: fn(&raw::Asap) -> Option<&Spanned<String>>| {
        pick(own, &asap_key, defaults, field, get)
    };
    let missing = |field: &str| {
        ctx.error(
            format!("{asap_key}.{field}"),
            Some(&route.host.referenced),
            format!("no {field} for this route: set asap.{field}, or {field} in the route's own asap section"),
        )
    };

    let (host, port) = Rule::parse_host(&route.host.value).map_err(|e| {
        ctx.at(
            format!("{here}.host"),
            &route.host,
            format!("{:?}: {e}", route.host.value),
        )
    })?;
    let path_prefix = match &route.path_prefix {
        None => None,
        Some(p)
            if p.value.starts_with('/')
                && !p.value.contains(['?', '#'])
                && !routes::has_dot_segments(&p.value) =>
        {
            Some(p.value.clone())
        }
        Some(p) => {
            return Err(ctx.at(
                format!("{here}.path_prefix"),
                p,
                "must start with / and contain no query, fragment, . or .. segment",
            ));
        }
    };

    let audience = match &route.audience {
        None => {
            return Err(ctx.error(
                format!("{here}.audience"),
                Some(&route.host.referenced),
                "every route needs an audience: the name the upstream service expects in `aud`",
            ));
        }
        Some(a) => a.value.0.clone(),
    };

    let issuer = setting("issuer", |a| a.issuer.as_ref()).ok_or_else(|| missing("issuer"))?;
    let algorithm_setting =
        setting("algorithm", |a| a.algorithm.as_ref()).ok_or_else(|| missing("algorithm"))?;
    let algorithm: Algorithm = algorithm_setting.value.value.parse().map_err(|e| {
        ctx.at(
            &algorithm_setting.key,
            algorithm_setting.value,
            format!("{e}"),
        )
    })?;

    let (key, key_kid, key_setting) =
        load_key(ctx, keys, own, &asap_key, defaults, &issuer.value.value)?;
    let kid_setting = setting("kid", |a| a.kid.as_ref());
    let kid = match (&kid_setting, key_kid) {
        (Some(k), Some(from_key)) if k.value.value != from_key => {
            return Err(ctx.at(
                &k.key,
                k.value,
                format!(
                    "kid {:?} differs from the kid {from_key:?} in the key's data URI",
                    k.value.value
                ),
            ));
        }
        (Some(k), _) => k.value.value.clone(),
        (None, Some(from_key)) => from_key,
        (None, None) => return Err(missing("kid")),
    };

    if let Err(e) = key.check_algorithm(algorithm) {
        return Err(ctx.at(
            &algorithm_setting.key,
            algorithm_setting.value,
            format!("{e} (key from {})", key_setting),
        ));
    }

    let expiry = pick(own, &asap_key, defaults, "expiry", |a| a.expiry.as_ref());
    let lifetime = match &expiry {
        None => Duration::from_secs(3600),
        Some(e) if (1..=3600).contains(&e.value.value) => {
            Duration::from_secs(e.value.value.unsigned_abs())
        }
        Some(e) => return Err(ctx.at(&e.key, e.value, "must be between 1 and 3600 seconds")),
    };
    let claims = pick(own, &asap_key, defaults, "additional_claims", |a| {
        a.additional_claims.as_ref()
    });
    let additional_claims = claims
        .as_ref()
        .map(|c| c.value.value.clone().into_iter().collect())
        .unwrap_or_default();
    let reuse = own
        .and_then(|a| a.reuse)
        .or(defaults.and_then(|a| a.reuse))
        .unwrap_or(true);

    let subject = setting("subject", |a| a.subject.as_ref());
    let spec = TokenSpec::new(SpecFields {
        algorithm,
        kid,
        issuer: issuer.value.value.clone(),
        subject: subject.as_ref().map(|s| s.value.value.clone()),
        audience,
        lifetime,
        additional_claims,
        key,
    })
    .map_err(|e| {
        // Point at the setting the error is about, falling back to the route itself.
        let (key, at) = match e.field() {
            "kid" => kid_setting
                .as_ref()
                .map_or((format!("{asap_key}.kid"), None), |k| {
                    (k.key.clone(), Some(&k.value.referenced))
                }),
            "issuer" => (issuer.key.clone(), Some(&issuer.value.referenced)),
            "subject" => subject
                .as_ref()
                .map_or((format!("{asap_key}.subject"), None), |s| {
                    (s.key.clone(), Some(&s.value.referenced))
                }),
            "audience" => (
                format!("{here}.audience"),
                route.audience.as_ref().map(|a| &a.referenced),
            ),
            "additional_claims" => claims
                .as_ref()
                .map_or((format!("{asap_key}.additional_claims"), None), |c| {
                    (c.key.clone(), Some(&c.value.referenced))
                }),
            _ => (asap_key.clone(), None),
        };
        ctx.error(key, at.or(Some(&route.host.referenced)), e.to_string())
    })?;

    let rule = Rule {
        host,
        port,
        path_prefix,
    };
    let route = Route {
        index,
        upstream_tls: route.upstream_tls,
        minter: Arc::new(Minter::new(Arc::new(spec), reuse)),
    };
    Ok((rule, route))
}

/// Loads the route's key: from the route's own `asap` if it names a key source there, else
/// from the defaults. Returns the key, a kid carried by a data URI, and the key path used.
fn load_key(
    ctx: &Ctx<'_>,
    cache: &mut KeyCache,
    own: Option<&raw::Asap>,
    own_key: &str,
    defaults: Option<&raw::Asap>,
    issuer: &str,
) -> Result<(Arc<SigningKey>, Option<String>, String), Error> {
    let level = [(own, own_key), (defaults, "asap")]
        .into_iter()
        .find_map(|(asap, key)| asap.filter(|a| has_key_source(a)).map(|a| (a, key)));
    let Some((asap, level_key)) = level else {
        return Err(ctx.error(
            format!("{own_key}.private_key_file"),
            None,
            "no private key: set one of private_key_file, private_key, private_key_env or private_key_dir",
        ));
    };

    let sources = [
        ("private_key_file", &asap.private_key_file),
        ("private_key", &asap.private_key),
        ("private_key_env", &asap.private_key_env),
        ("private_key_dir", &asap.private_key_dir),
    ];
    let mut given = sources
        .iter()
        .filter_map(|(name, v)| v.as_ref().map(|v| (*name, v)));
    let (field, value) = given.next().expect("has_key_source found one");
    let setting_key = format!("{level_key}.{field}");
    if let Some((other, v)) = given.next() {
        return Err(ctx.at(
            format!("{level_key}.{other}"),
            v,
            format!(
                "set only one of private_key_file, private_key, private_key_env and private_key_dir ({field} is set too)"
            ),
        ));
    }
    // A key directory holds a key per issuer.
    let cache_key = format!("{setting_key} {issuer}");
    if let Some((key, kid)) = cache.keys.get(&cache_key) {
        return Ok((key.clone(), kid.clone(), setting_key));
    }

    let mut dir_kid = None;
    let text = zeroize::Zeroizing::new(match field {
        "private_key_file" => {
            let path = ctx.path(&value.value);
            std::fs::read_to_string(&path).map_err(|e| {
                ctx.at(
                    &setting_key,
                    value,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?
        }
        "private_key_env" => std::env::var(&value.value).map_err(|_| {
            ctx.at(
                &setting_key,
                value,
                format!(
                    "the environment variable {} is not set or not valid UTF-8",
                    value.value
                ),
            )
        })?,
        "private_key_dir" => {
            let (path, kid) = active_key(ctx, &ctx.path(&value.value), issuer)
                .map_err(|why| ctx.at(&setting_key, value, why))?;
            dir_kid = Some(kid);
            std::fs::read_to_string(&path).map_err(|e| {
                ctx.at(
                    &setting_key,
                    value,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?
        }
        _ => value.value.clone(),
    });
    let parsed =
        SigningKey::parse(&text).map_err(|e| ctx.at(&setting_key, value, e.to_string()))?;
    let kid = dir_kid.or(parsed.kid);
    let key = Arc::new(parsed.key);
    cache.keys.insert(cache_key, (key.clone(), kid.clone()));
    Ok((key, kid, setting_key))
}

fn has_key_source(asap: &raw::Asap) -> bool {
    asap.private_key_file.is_some()
        || asap.private_key.is_some()
        || asap.private_key_env.is_some()
        || asap.private_key_dir.is_some()
}

/// The key directory convention of ASAP tooling: `<dir>/<issuer>/<name>.pem`, the last name
/// in order is the active key, and its kid is `<issuer>/<name>.pem`. Adding a later file
/// rotates the key.
fn active_key(ctx: &Ctx<'_>, dir: &Path, issuer: &str) -> Result<(PathBuf, String), String> {
    let issuer_dir = dir.join(issuer);
    ctx.read.borrow_mut().push(issuer_dir.clone());
    let entries = std::fs::read_dir(&issuer_dir)
        .map_err(|e| format!("cannot read {}: {e}", issuer_dir.display()))?;
    let newest = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().is_file())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.ends_with(".pem") && !name.starts_with('.'))
        .max()
        .ok_or_else(|| format!("{} holds no .pem key", issuer_dir.display()))?;
    Ok((issuer_dir.join(&newest), format!("{issuer}/{newest}")))
}
