//! CONNECT on the forward listener. Hosts no route names get a plain byte tunnel (when
//! `unmatched: forward`); routed hosts are intercepted: the proxy terminates the client's TLS
//! with a leaf from its CA and serves the requests inside through the same pipeline as
//! plain forward requests, re-originating TLS to the real upstream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::{Body, Conn, Entry, Error, Proxy, State, access, body};
use crate::config::{Origin, OriginError, Unmatched};
use crate::destination::{ResolveError, Scope, resolve_checked};

impl Proxy {
    /// Answers a CONNECT request and, on success, takes over the connection once the 200
    /// response has gone out.
    pub(super) async fn connect(
        self: &Arc<Self>,
        state: &State,
        request: Request<Incoming>,
        conn: &Conn,
        record: &mut access::Record,
    ) -> Result<Response<Body>, Error> {
        let origin = connect_target(&request)?;
        let authority = origin.authority();
        record.target("https", authority.clone());
        let config = &state.config;
        if !config.connect_ports.contains(&origin.port) {
            return Err(Error::PortNotAllowed(origin.port));
        }

        if config.routes.covers(&origin.host, origin.port) {
            let Some(ca) = &config.intercept else {
                return Err(Error::NotIntercepted(authority));
            };
            let tls = ca
                .server_config(&origin.host)
                .map_err(|e| Error::Intercept {
                    host: origin.host.to_string(),
                    reason: e.to_string(),
                })?;
            let proxy = self.clone();
            let peer = conn.peer;
            let handshake = config.timeouts.request_header;
            let upgrade = hyper::upgrade::on(request);
            let span = tracing::debug_span!("intercept", host = %origin.host, port = origin.port);
            let open = self.metrics.tunnel_opened("intercept");
            self.tunnels.spawn(
                async move {
                    let _open = open;
                    let client = match upgrade.await {
                        Ok(client) => client,
                        Err(err) => return tracing::debug!(error = %err, "CONNECT upgrade failed"),
                    };
                    let accept = TlsAcceptor::from(tls).accept(TokioIo::new(client));
                    let stream = match tokio::time::timeout(handshake, accept).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            return tracing::debug!(error = %err, "client TLS handshake failed");
                        }
                        Err(_) => return tracing::debug!("client TLS handshake timed out"),
                    };
                    let conn = Conn {
                        peer,
                        entry: Entry::Intercepted(origin),
                    };
                    crate::server::serve_http(TokioIo::new(stream), conn, proxy).await;
                }
                .instrument(span),
            );
            return Ok(Response::new(body::full("")));
        }

        if config.unmatched == Unmatched::Deny {
            return Err(Error::Unmatched(authority));
        }
        // Connect before answering, so that a client learns of failure from the status.
        let policy = state.client.policy();
        let addrs = resolve_checked(origin.host.as_str(), origin.port, policy, Scope::Unrouted)
            .await
            .map_err(|err| match err {
                ResolveError::Denied(denied) => Error::Destination(denied),
                other => Error::Connect {
                    authority: authority.clone(),
                    reason: other.to_string(),
                },
            })?;
        let mut upstream = connect_any(&addrs, config.timeouts.connect, &authority).await?;
        let _ = upstream.set_nodelay(true);
        let upgrade = hyper::upgrade::on(request);
        let span = tracing::debug_span!("tunnel", host = %origin.host, port = origin.port);
        let open = self.metrics.tunnel_opened("tunnel");
        self.tunnels.spawn(
            async move {
                let _open = open;
                let mut client = match upgrade.await {
                    Ok(client) => TokioIo::new(client),
                    Err(err) => return tracing::debug!(error = %err, "CONNECT upgrade failed"),
                };
                match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    Ok((sent, received)) => tracing::debug!(sent, received, "tunnel closed"),
                    Err(err) => tracing::debug!(error = %err, "tunnel ended with an error"),
                }
            }
            .instrument(span),
        );
        Ok(Response::new(body::full("")))
    }
}

/// Connects to the first of the checked addresses that answers, within `timeout` in all.
async fn connect_any(
    addrs: &[SocketAddr],
    timeout: Duration,
    authority: &str,
) -> Result<TcpStream, Error> {
    let attempts = async {
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(err) => last = Some(err),
            }
        }
        Err(last.map_or_else(|| "no address".to_owned(), |e| e.to_string()))
    };
    match tokio::time::timeout(timeout, attempts).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(reason)) => Err(Error::Connect {
            authority: authority.to_owned(),
            reason,
        }),
        Err(_) => Err(Error::ConnectTimeout {
            authority: authority.to_owned(),
        }),
    }
}

/// The `host:port` of a CONNECT request; both parts are required.
fn connect_target(request: &Request<Incoming>) -> Result<Origin, Error> {
    let uri = request.uri();
    // The authority form only: `CONNECT http://host:443` is malformed.
    if uri.scheme().is_some()
        || uri
            .path_and_query()
            .is_some_and(|p| !p.as_str().is_empty() && p.as_str() != "/")
    {
        return Err(OriginError::NoPort.into());
    }
    let authority = uri.authority().ok_or(OriginError::NoPort)?;
    Ok(Origin::from_connect(authority)?)
}
