//! The request pipeline shared by every listener.
//!
//! A request goes through the same steps, in this order: find its target (from the
//! absolute-form URI on the forward listener, from the configured upstream on a reverse
//! listener), match the route, mint the route's token, forward it upstream with the header
//! rules applied, and hand the response back.

mod body;
mod connect;
mod error;
pub mod headers;

use std::sync::Arc;
use std::time::Instant;

use http::header::HeaderValue;
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use tracing::Instrument;

pub use self::body::Body;
pub use self::error::{Error, PROXY_NAME};
use crate::config::{Config, Origin, Route, Unmatched};
use crate::routes;
use crate::upstream;

/// Which listener a request arrived on.
#[derive(Clone, Debug)]
pub enum Entry {
    /// The forward proxy: requests name their target in absolute form.
    Forward,
    /// A local listener in front of one upstream.
    Reverse(Origin),
    /// Inside an intercepted CONNECT tunnel to this origin.
    Intercepted(Origin),
}

/// Everything a request needs: routes, policy and the upstream client.
#[derive(Debug)]
pub struct Proxy {
    config: Arc<Config>,
    client: upstream::Client,
}

/// Where a request is going, before route-specific rewriting.
#[derive(Debug)]
struct Target {
    origin: Origin,
    path_and_query: PathAndQuery,
}

impl Proxy {
    pub fn new(config: Arc<Config>) -> Result<Proxy, crate::tls::Error> {
        let client = upstream::Client::new(&config.tls, &config.timeouts)?;
        Ok(Proxy { config, client })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Serves one request; failures become responses with a `Proxy-Status` header.
    pub async fn handle(
        self: &Arc<Self>,
        request: Request<Incoming>,
        entry: &Entry,
    ) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let result = if method == Method::CONNECT {
            match entry {
                Entry::Forward => self.connect(request).await,
                _ => Err(Error::BadRequest(
                    "CONNECT is only accepted on the forward listener",
                )),
            }
        } else {
            match target(&request, entry) {
                Ok(target) => {
                    let span = tracing::debug_span!(
                        "request",
                        %method,
                        host = %target.origin.host,
                        port = target.origin.port,
                    );
                    self.forward(request, target).instrument(span).await
                }
                Err(err) => Err(err),
            }
        };
        let elapsed = started.elapsed();
        match result {
            Ok(response) => {
                tracing::debug!(%method, status = response.status().as_u16(), ?elapsed, "forwarded");
                response
            }
            Err(err) => {
                tracing::debug!(%method, error = %err, ?elapsed, "request refused");
                err.into_response()
            }
        }
    }

    /// Matches the route, mints its token and exchanges the request with the upstream.
    async fn forward(
        &self,
        request: Request<Incoming>,
        target: Target,
    ) -> Result<Response<Body>, Error> {
        let path = target.path_and_query.path();
        if routes::has_dot_segments(path) {
            return Err(Error::BadRequest(
                "the path has . or .. segments, which could step outside a route's path_prefix",
            ));
        }
        let (origin, authorization) =
            match self
                .config
                .routes
                .find(&target.origin.host, target.origin.port, path)
            {
                Some(route) => (
                    upstream_origin(&target.origin, route),
                    Some(authorization(route).await?),
                ),
                None if self.config.unmatched == Unmatched::Forward => {
                    (target.origin.clone(), None)
                }
                None => return Err(Error::Unmatched(target.origin.authority())),
            };

        let authority = origin.authority();
        let (mut parts, body) = request.into_parts();
        let client_version = parts.version;
        parts.uri = Uri::builder()
            .scheme(if origin.tls {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            })
            .authority(authority.as_str())
            .path_and_query(target.path_and_query)
            .build()
            .map_err(|_| Error::BadRequest("the request target cannot be rebuilt"))?;
        parts.version = Version::HTTP_11;
        headers::remove_hop_by_hop(&mut parts.headers);
        headers::set_host(&mut parts.headers, &authority)
            .map_err(|_| Error::BadRequest("invalid host"))?;
        if let Some(authorization) = authorization {
            // Replaces every Authorization line the client sent.
            parts
                .headers
                .insert(http::header::AUTHORIZATION, authorization);
        }
        headers::append_via(&mut parts.headers, client_version, PROXY_NAME);

        let response = self
            .client
            .send(Request::from_parts(parts, body), &authority)
            .await?;

        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // Upgrade headers never travel upstream, so no client asked for this.
            return Err(Error::Upstream {
                authority,
                reason: "unexpected 101 Switching Protocols: upgrades are not proxied".to_owned(),
            });
        }
        let (mut parts, body) = response.into_parts();
        let upstream_version = parts.version;
        headers::remove_hop_by_hop(&mut parts.headers);
        headers::append_via(&mut parts.headers, upstream_version, PROXY_NAME);
        Ok(Response::from_parts(parts, body::stream(body)))
    }
}

/// Reads the target of a request as its listener defines it.
fn target(request: &Request<Incoming>, entry: &Entry) -> Result<Target, Error> {
    let uri = request.uri();
    let path_and_query = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match entry {
        Entry::Reverse(origin) | Entry::Intercepted(origin) => Ok(Target {
            origin: origin.clone(),
            path_and_query,
        }),
        Entry::Forward => Ok(Target {
            origin: Origin::from_uri(uri)?,
            path_and_query,
        }),
    }
}

/// The origin a routed request is sent to: `upstream_tls` moves plain http to TLS, and the
/// http default port to the https one.
fn upstream_origin(target: &Origin, route: &Route) -> Origin {
    if !route.upstream_tls || target.tls {
        return target.clone();
    }
    Origin {
        tls: true,
        host: target.host.clone(),
        port: if target.port == default_port(false) {
            default_port(true)
        } else {
            target.port
        },
    }
}

fn default_port(tls: bool) -> u16 {
    if tls { 443 } else { 80 }
}

/// The route's token as an `Authorization` value, marked sensitive so it is never printed.
async fn authorization(route: &Route) -> Result<HeaderValue, Error> {
    let refused = |err: &dyn std::fmt::Display| {
        tracing::error!(route = route.index, error = %err, "cannot mint a token");
        Error::Mint { route: route.index }
    };
    let (token, provenance) = route.minter.token().await.map_err(|e| refused(&e))?;
    tracing::trace!(
        route = route.index,
        token = provenance.as_str(),
        "token ready"
    );
    headers::bearer(token.as_str()).map_err(|e| refused(&e))
}
