//! The pooled clients that carry requests to upstreams, over TLS where the URI says https,
//! connecting only to addresses the destination policy allows.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Origin, Timeouts, Tls};
use crate::destination::{CheckedResolver, Policy, Scope};
use crate::proxy::{Error, RequestBody};

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

type Inner = HyperClient<HttpsConnector<HttpConnector<CheckedResolver>>, RequestBody>;

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
                .wrap_connector(http);
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
        scope: Scope,
    ) -> Result<Response<Incoming>, Error> {
        let authority = origin.authority();
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
            Ok(Err(err)) => Err(Error::from_upstream(&authority, &err)),
            Err(_) => Err(Error::ResponseTimeout { authority }),
        }
    }
}
