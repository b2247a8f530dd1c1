//! Routes: each route's host rule and its token settings, merged from the defaults and the
//! route's own `asap` section, with its key loaded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::resolve::Ctx;
use super::{Error, Route, raw};
use crate::routes::{self, Rule};
use crate::token::{Algorithm, Minter, SigningKey, SpecFields, TokenSpec};

/// Parsed keys by where they were configured, so a key shared by many routes loads once.
#[derive(Default)]
pub(super) struct KeyCache {
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

pub(super) fn resolve_route(
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

    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| {
            ctx.at(
                &setting_key,
                value,
                format!("cannot read {}: {e}", path.display()),
            )
        })
    };
    let mut dir_kid = None;
    let text = zeroize::Zeroizing::new(match field {
        "private_key_file" => read(&ctx.path(&value.value))?,
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
            read(&path)?
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
