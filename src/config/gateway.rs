//! Who may use the proxy and how much: the `clients`, `destinations` and `limits` sections.

use std::net::SocketAddr;

use ipnet::IpNet;
use serde_saphyr::Spanned;

use super::resolve::Ctx;
use super::{Error, Limits, Reverse, raw};
use crate::clients::{Admission, User};

pub(super) fn networks(
    ctx: &Ctx<'_>,
    key: &str,
    raw: &[Spanned<String>],
) -> Result<Vec<IpNet>, Error> {
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

pub(super) fn clients(
    ctx: &Ctx<'_>,
    raw: Option<&Spanned<raw::Clients>>,
) -> Result<Admission, Error> {
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
pub(super) fn refuse_exposed_listeners(
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

pub(super) fn limits(ctx: &Ctx<'_>, raw: Option<&raw::Limits>) -> Result<Limits, Error> {
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
