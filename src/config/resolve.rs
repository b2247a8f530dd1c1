//! Turns the raw YAML mirror into a checked `Config`: listeners, timeouts and TLS here;
//! routes and their keys in `route`, client admission and limits in `gateway`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::gateway::{clients, limits, networks, refuse_exposed_listeners};
use super::raw;
use super::route::{KeyCache, resolve_route};

use super::{Config, Destinations, Error, Origin, Reverse, Timeouts, Tls, Unmatched};
use crate::routes;
use crate::tls::intercept::{self, Authority};

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
pub(super) struct Ctx<'a> {
    pub(super) file: &'a Path,
    base_dir: PathBuf,
    /// Files read while resolving, for reloads to watch.
    pub(super) read: RefCell<Vec<PathBuf>>,
}

impl Ctx<'_> {
    pub(super) fn error(
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

    pub(super) fn at<T>(
        &self,
        key: impl Into<String>,
        value: &Spanned<T>,
        message: impl Into<String>,
    ) -> Error {
        self.error(key, Some(&value.referenced), message)
    }

    /// Relative paths in the file are relative to the file's own directory. The path is
    /// remembered as one the configuration depends on.
    pub(super) fn path(&self, value: &str) -> PathBuf {
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
pub(super) fn seconds(
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
