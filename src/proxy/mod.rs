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
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{HeaderValue, PROXY_AUTHORIZATION};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use self::body::{Body, RequestBody};
pub use self::error::{Error, PROXY_NAME};
use crate::clients::Refusal;
use crate::config::{Config, Origin, Route, Unmatched};
use crate::destination::{Policy, Scope};
use crate::metrics::Metrics;
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

/// The pipeline: the current configuration with its upstream client, swapped whole on
/// reload, plus what lives as long as the process.
#[derive(Debug)]
pub struct Proxy {
    state: ArcSwap<State>,
    metrics: Arc<Metrics>,
    /// The proxy's own listeners, never a destination.
    own_listeners: Vec<SocketAddr>,
    /// Unique per process, so a request that comes back through this proxy is recognised.
    via: headers::Via,
    /// Tunnels and intercepted connections, which outlive the request that opened them.
    tunnels: TaskTracker,
    startup: Startup,
}

/// What a reload cannot change: the listeners are bound, and the connection limit sized,
/// when the process starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Startup {
    listen: Option<SocketAddr>,
    reverse: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    max_connections: usize,
}

impl Startup {
    pub fn of(config: &Config) -> Startup {
        Startup {
            listen: config.listen,
            reverse: config.reverse.iter().map(|r| r.listen).collect(),
            admin: config.admin,
            max_connections: config.limits.max_connections,
        }
    }
}

/// One configuration and the client built for it. A request keeps the state it started
/// with, so a reload never changes the rules under a request in flight.
#[derive(Debug)]
pub struct State {
    pub config: Arc<Config>,
    client: upstream::Client,
}

/// Where a request is going, before route-specific rewriting.
#[derive(Debug)]
struct Target {
    origin: Origin,
    path_and_query: PathAndQuery,
}

impl Proxy {
    /// The pipeline for `config`; `own_listeners` are the addresses the proxy serves on.
    pub fn new(
        config: Config,
        metrics: Arc<Metrics>,
        own_listeners: Vec<SocketAddr>,
    ) -> Result<Proxy, crate::tls::Error> {
        let mut id = [0u8; 4];
        // A fixed suffix only weakens loop detection between two proxies; it is not a secret.
        let _ = getrandom::fill(&mut id);
        let pseudonym = format!(
            "{PROXY_NAME}-{}",
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let startup = Startup::of(&config);
        let state = State::new(config, &own_listeners)?;
        record_keys(&metrics, &state.config);
        Ok(Proxy {
            state: ArcSwap::from_pointee(state),
            metrics,
            own_listeners,
            via: headers::Via::new(pseudonym),
            tunnels: TaskTracker::new(),
            startup,
        })
    }

    /// The configuration new requests use.
    pub fn config(&self) -> Arc<Config> {
        self.state.load().config.clone()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Puts a new configuration in place for the requests that start from now on.
    pub fn reload(&self, config: Config) -> Result<(), crate::tls::Error> {
        let state = State::new(config, &self.own_listeners)?;
        record_keys(&self.metrics, &state.config);
        self.state.store(Arc::new(state));
        Ok(())
    }

    /// The settings fixed at start-up.
    pub fn startup(&self) -> &Startup {
        &self.startup
    }

    /// Tunnels and intercepted connections still open.
    pub fn tunnels(&self) -> &TaskTracker {
        &self.tunnels
    }

    /// Serves one request; failures become responses with a `Proxy-Status` header. The
    /// access-log line is written when the response body is done.
    pub async fn handle(
        self: &Arc<Self>,
        request: Request<Incoming>,
        conn: &Conn,
    ) -> Response<Body> {
        let state = self.state.load_full();
        let mut record = access::Record::start(conn.peer, &request, self.metrics.clone());
        let method = request.method().clone();
        let span = tracing::debug_span!("request", %method, client = %conn.peer);
        let response = match self
            .serve(&state, request, conn, &mut record)
            .instrument(span)
            .await
        {
            Ok(response) => response,
            Err(err) => {
                tracing::debug!(%method, error = %err, "request refused");
                record.error = Some(err.kind());
                if let Some(reason) = err.denial() {
                    self.metrics.denial(reason);
                }
                err.into_response()
            }
        };
        let (parts, body) = response.into_parts();
        let body = record.finish(parts.status.as_u16(), body).boxed();
        Response::from_parts(parts, body)
    }

    async fn serve(
        self: &Arc<Self>,
        state: &State,
        request: Request<Incoming>,
        conn: &Conn,
        record: &mut access::Record,
    ) -> Result<Response<Body>, Error> {
        admit(&state.config, &request, conn)?;
        if headers::via_names(request.headers(), self.via.pseudonym()) {
            return Err(Error::Loop);
        }
        if request.method() == Method::CONNECT {
            return match conn.entry {
                Entry::Forward => self.connect(state, request, conn, record).await,
                _ => Err(Error::BadRequest(
                    "CONNECT is only accepted on the forward listener",
                )),
            };
        }
        let target = target(&request, &conn.entry)?;
        record.target(target.origin.scheme(), target.origin.authority());
        self.forward(state, request, target, record).await
    }

    /// Matches the route, mints its token and exchanges the request with the upstream.
    async fn forward(
        &self,
        state: &State,
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
        let route = state
            .config
            .routes
            .find(&target.origin.host, target.origin.port, path);
        let (origin, authorization) = match route {
            Some(route) => {
                record.route = Some(route.index);
                let (authorization, provenance) = authorization(route, &self.metrics).await?;
                record.token = provenance.as_str();
                (upstream_origin(&target.origin, route), Some(authorization))
            }
            None if state.config.unmatched == Unmatched::Forward => (target.origin.clone(), None),
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
        self.via.append(&mut parts.headers, client_version);

        let request = Request::from_parts(parts, record.count_request(body));
        let scope = match (route, origin.host.ip()) {
            // Only an exact route can match an IP literal: the route names it outright.
            (Some(_), Some(_)) => Scope::RoutedLiteral,
            (Some(_), None) => Scope::Routed,
            (None, _) => Scope::Unrouted,
        };
        let sent = Instant::now();
        let response = state.client.send(request, &origin, &authority, scope).await;
        self.metrics.upstream_latency(record.route, sent.elapsed());
        let response = response.inspect_err(|err| self.metrics.upstream_error(err.kind()))?;

        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // Upgrade headers never travel upstream, so no client asked for this.
            return Err(Error::Upstream {
                authority,
                reason: "unexpected 101 Switching Protocols: upgrades are not proxied".to_owned(),
            });
        }
        let (mut parts, body) = response.into_parts();
        let upstream_version = parts.version;
        // An intermediary speaks its own HTTP version: an HTTP/1.0 upstream must not end the
        // client's keep-alive connection.
        parts.version = client_version;
        headers::remove_hop_by_hop(&mut parts.headers);
        self.via.append(&mut parts.headers, upstream_version);
        Ok(Response::from_parts(parts, body::stream(body)))
    }
}

/// Admits the client by address and, when users are configured, by credentials.
fn admit(config: &Config, request: &Request<Incoming>, conn: &Conn) -> Result<(), Error> {
    if matches!(conn.entry, Entry::Intercepted(_)) {
        return Ok(());
    }
    let credentials: Vec<&HeaderValue> = request
        .headers()
        .get_all(PROXY_AUTHORIZATION)
        .iter()
        .collect();
    match config.clients.admit(conn.peer.ip(), &credentials) {
        Ok(user) => {
            tracing::trace!(user = user.unwrap_or("-"), "client admitted");
            Ok(())
        }
        Err(Refusal::Address) => Err(Error::ClientAddress),
        Err(Refusal::Credentials) => Err(Error::ProxyAuthentication),
    }
}

/// Notes when each configured key was loaded, for the key-age metric.
fn record_keys(metrics: &Metrics, config: &Config) {
    let now = std::time::Instant::now();
    let kids: Vec<String> = config
        .routes
        .iter()
        .map(|(_, route)| route.minter.spec().kid().to_string())
        .collect();
    for kid in &kids {
        metrics.set_key_loaded(kid, now);
    }
    metrics.forget_keys_except(&kids);
}

impl State {
    fn new(config: Config, own_listeners: &[SocketAddr]) -> Result<State, crate::tls::Error> {
        let policy = Policy::new(
            config.destinations.allow.clone(),
            config.destinations.deny.clone(),
            own_listeners.to_vec(),
        );
        let client = upstream::Client::new(&config.tls, &config.timeouts, Arc::new(policy))?;
        for (_, route) in config.routes.iter() {
            route.minter.keep_ready();
        }
        Ok(State {
            config: Arc::new(config),
            client,
        })
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
async fn authorization(
    route: &Route,
    metrics: &Metrics,
) -> Result<(HeaderValue, Provenance), Error> {
    let refused = |err: &dyn std::fmt::Display| {
        tracing::error!(route = route.index, error = %err, "cannot mint a token");
        metrics.signing_failure(route.index);
        Error::Mint { route: route.index }
    };
    let (token, provenance) = route.minter.token().await.map_err(|e| refused(&e))?;
    let value = token.authorization().clone();
    let algorithm = route.minter.spec().algorithm();
    metrics.token(route.index, algorithm.as_str(), provenance.as_str());
    Ok((value, provenance))
}
