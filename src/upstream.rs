//! The pooled clients that carry requests to upstreams, over TLS where the URI says https,
//! connecting only to addresses the destination policy allows.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::config::{Origin, Timeouts, Tls};
use crate::destination::{CheckedResolver, Policy, Scope};
use crate::proxy::{Error, RequestBody};

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

type Inner = HyperClient<HttpsConnector<Guarded>, RequestBody>;

/// The connector, with a check of the address it actually connected to. The resolver does
/// not know the port, so only here can a name that leads back to one of the proxy's own
/// listeners (the admin listener, say) be refused. The check runs before a byte is sent.
#[derive(Clone, Debug)]
struct Guarded {
    inner: HttpConnector<CheckedResolver>,
    policy: Arc<Policy>,
}

impl tower_service::Service<http::Uri> for Guarded {
    type Response = TokioIo<TcpStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let io = connecting.await?;
            if let Ok(peer) = io.inner().peer_addr() {
                // The remaining rules were applied to the name's addresses already.
                policy.check(peer, Scope::RoutedLiteral)?;
            }
            Ok(io)
        })
    }
}

/// One pool per scope: a resolver's checks depend on whether the request was routed.
#[derive(Clone, Debug)]
pub struct Client {
    routed: Inner,
    unrouted: Inner,
    policy: Arc<Policy>,
    response_timeout: Duration,
}

impl Client {
    pub fn new(
        tls: &Tls,
        timeouts: &Timeouts,
        policy: Arc<Policy>,
    ) -> Result<Client, crate::tls::Error> {
        let config = crate::tls::client_config(&tls.extra_roots)?;
        let inner = |scope: Scope| {
            let mut http =
                HttpConnector::new_with_resolver(CheckedResolver::new(policy.clone(), scope));
            http.enforce_http(false);
            http.set_nodelay(true);
            http.set_connect_timeout(Some(timeouts.connect));
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config.clone())
                .https_or_http()
                .enable_all_versions()
                .wrap_connector(Guarded {
                    inner: http,
                    policy: Arc::clone(&policy),
                });
            HyperClient::builder(TokioExecutor::new())
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(POOL_IDLE)
                .build(https)
        };
        Ok(Client {
            routed: inner(Scope::Routed),
            unrouted: inner(Scope::Unrouted),
            policy,
            response_timeout: timeouts.response,
        })
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Sends the request and waits for the response head; the body streams afterwards.
    pub async fn send(
        &self,
        request: Request<RequestBody>,
        origin: &Origin,
        authority: &str,
        scope: Scope,
    ) -> Result<Response<Incoming>, Error> {
        // The connector connects to IP literals without asking the resolver.
        if let Some(ip) = origin.host.ip() {
            self.policy.check(SocketAddr::new(ip, origin.port), scope)?;
        }
        let client = match scope {
            Scope::Unrouted => &self.unrouted,
            Scope::Routed | Scope::RoutedLiteral => &self.routed,
        };
        match tokio::time::timeout(self.response_timeout, client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => Err(Error::from_upstream(authority, &err)),
            Err(_) => Err(Error::ResponseTimeout {
                authority: authority.to_owned(),
            }),
        }
    }
}
