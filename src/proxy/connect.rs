//! CONNECT on the forward listener. Hosts no route names get a plain byte tunnel (when
//! `unmatched: forward`); routed hosts are intercepted: the proxy terminates the client's TLS
//! with a leaf from its CA and serves the requests inside through the same pipeline as
//! plain forward requests, re-originating TLS to the real upstream.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::{Body, Conn, Entry, Error, Proxy, access, body};
use crate::config::{Origin, OriginError, Unmatched};

impl Proxy {
    /// Answers a CONNECT request and, on success, takes over the connection once the 200
    /// response has gone out.
    pub(super) async fn connect(
        self: &Arc<Self>,
        request: Request<Incoming>,
        conn: &Conn,
        record: &mut access::Record,
    ) -> Result<Response<Body>, Error> {
        let origin = connect_target(&request)?;
        let authority = origin.authority();
        record.target("https", authority.clone());
        let config = self.config();
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
            let upgrade = hyper::upgrade::on(request);
            let span = tracing::debug_span!("intercept", host = %origin.host, port = origin.port);
            tokio::spawn(
                async move {
                    let client = match upgrade.await {
                        Ok(client) => client,
                        Err(err) => return tracing::debug!(error = %err, "CONNECT upgrade failed"),
                    };
                    let stream = match TlsAcceptor::from(tls).accept(TokioIo::new(client)).await {
                        Ok(stream) => stream,
                        Err(err) => {
                            return tracing::debug!(error = %err, "client TLS handshake failed");
                        }
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
        let connect = TcpStream::connect((origin.host.as_str(), origin.port));
        let mut upstream = match tokio::time::timeout(config.timeouts.connect, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                return Err(Error::Connect {
                    authority,
                    reason: err.to_string(),
                });
            }
            Err(_) => return Err(Error::ConnectTimeout { authority }),
        };
        let _ = upstream.set_nodelay(true);
        let upgrade = hyper::upgrade::on(request);
        let span = tracing::debug_span!("tunnel", host = %origin.host, port = origin.port);
        tokio::spawn(
            async move {
                // TODO(#4): count open tunnels and let them finish within the drain deadline.
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

/// The `host:port` of a CONNECT request; both parts are required.
fn connect_target(request: &Request<Incoming>) -> Result<Origin, Error> {
    let authority = request.uri().authority().ok_or(OriginError::NoPort)?;
    Ok(Origin::from_connect(authority)?)
}
