//! The request pipeline shared by every listener.
//!
//! Every request goes through the same steps, in this order: admit the client, find the
//! target (from the absolute-form URI on the forward listener, the configured upstream on a
//! reverse listener, the tunnel's origin when intercepted), match the route, mint the
//! route's token, forward with the header rules applied, respond and log.

pub mod access;
mod body;
mod connect;
mod error;
pub mod headers;

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderValue, PROXY_AUTHORIZATION};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::Instrument;

pub use self::body::{Body, RequestBody};
pub use self::error::{Error, PROXY_NAME};
use crate::clients::Refusal;
use crate::config::{Config, Origin, Route, Unmatched};
use crate::routes;
use crate::token::Provenance;
use crate::upstream;

/// Which listener a request arrived on.
#[derive(Clone, Debug)]
pub enum Entry {
    /// The forward proxy: requests name their target in absolute form.
    Forward,
    /// A local listener in front of one upstream.
    Reverse(Origin),
    /// Inside an intercepted CONNECT tunnel to this origin; the client was admitted when
    /// it opened the tunnel.
    Intercepted(Origin),
}

/// The connection a request came on.
#[derive(Clone, Debug)]
pub struct Conn {
    pub peer: SocketAddr,
    pub entry: Entry,
}

/// Everything a request needs: configuration, the upstream client, and this process's
/// name in `Via`.
#[derive(Debug)]
pub struct Proxy {
    config: Arc<Config>,
    client: upstream::Client,
    /// Unique per process, so a request that comes back through this proxy is recognised.
    pseudonym: String,
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
        let mut id = [0u8; 4];
        // A fixed suffix only weakens loop detection between two proxies; it is not a secret.
        let _ = getrandom::fill(&mut id);
        let pseudonym = format!(
            "{PROXY_NAME}-{}",
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        Ok(Proxy {
            config,
            client,
            pseudonym,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Serves one request; failures become responses with a `Proxy-Status` header. The
    /// access-log line is written when the response body is done.
    pub async fn handle(
        self: &Arc<Self>,
        request: Request<Incoming>,
        conn: &Conn,
    ) -> Response<Body> {
        let mut record = access::Record::start(conn.peer, &request);
        let method = request.method().clone();
        let span = tracing::debug_span!("request", %method, client = %conn.peer);
        let response = match self
            .serve(request, conn, &mut record)
            .instrument(span)
            .await
        {
            Ok(response) => response,
            Err(err) => {
                tracing::debug!(%method, error = %err, "request refused");
                record.error = Some(err.kind());
                err.into_response()
            }
        };
        let (parts, body) = response.into_parts();
        let body = record.finish(parts.status.as_u16(), body).boxed();
        Response::from_parts(parts, body)
    }

    async fn serve(
        self: &Arc<Self>,
        request: Request<Incoming>,
        conn: &Conn,
        record: &mut access::Record,
    ) -> Result<Response<Body>, Error> {
        self.admit(&request, conn)?;
        if headers::via_names(request.headers(), &self.pseudonym) {
            return Err(Error::Loop);
        }
        if request.method() == Method::CONNECT {
            return match conn.entry {
                Entry::Forward => self.connect(request, conn, record).await,
                _ => Err(Error::BadRequest(
                    "CONNECT is only accepted on the forward listener",
                )),
            };
        }
        let target = target(&request, &conn.entry)?;
        record.target(target.origin.scheme(), target.origin.authority());
        self.forward(request, target, record).await
    }

    /// Admits the client by address and, when users are configured, by credentials.
    fn admit(&self, request: &Request<Incoming>, conn: &Conn) -> Result<(), Error> {
        if matches!(conn.entry, Entry::Intercepted(_)) {
            return Ok(());
        }
        match self
            .config
            .clients
            .admit(conn.peer.ip(), request.headers().get(PROXY_AUTHORIZATION))
        {
            Ok(user) => {
                tracing::trace!(user = user.unwrap_or("-"), "client admitted");
                Ok(())
            }
            Err(Refusal::Address) => Err(Error::ClientAddress),
            Err(Refusal::Credentials) => Err(Error::ProxyAuthentication),
        }
    }

    /// Matches the route, mints its token and exchanges the request with the upstream.
    async fn forward(
        &self,
        request: Request<Incoming>,
        target: Target,
        record: &mut access::Record,
    ) -> Result<Response<Body>, Error> {
        let path = target.path_and_query.path();
        if routes::has_dot_segments(path) {
            return Err(Error::BadRequest(
                "the path has . or .. segments, which could step outside a route's path_prefix",
            ));
        }
        let route = self
            .config
            .routes
            .find(&target.origin.host, target.origin.port, path);
        let (origin, authorization) = match route {
            Some(route) => {
                record.route = Some(route.index);
                let (authorization, provenance) = authorization(route).await?;
                record.token = provenance.as_str();
                (upstream_origin(&target.origin, route), Some(authorization))
            }
            None if self.config.unmatched == Unmatched::Forward => (target.origin.clone(), None),
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
        headers::append_via(&mut parts.headers, client_version, &self.pseudonym);

        let request = Request::from_parts(parts, record.count_request(body));
        let response = self.client.send(request, &authority).await?;

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
        headers::append_via(&mut parts.headers, upstream_version, &self.pseudonym);
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

/// The route's token as an `Authorization` value, marked sensitive so it is never printed,
/// and whether it was minted or reused.
async fn authorization(route: &Route) -> Result<(HeaderValue, Provenance), Error> {
    let refused = |err: &dyn std::fmt::Display| {
        tracing::error!(route = route.index, error = %err, "cannot mint a token");
        Error::Mint { route: route.index }
    };
    let (token, provenance) = route.minter.token().await.map_err(|e| refused(&e))?;
    let value = headers::bearer(token.as_str()).map_err(|e| refused(&e))?;
    Ok((value, provenance))
}
