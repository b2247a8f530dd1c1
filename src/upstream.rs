//! The pooled client that carries requests to upstreams, over TLS where the URI says https.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Timeouts, Tls};
use crate::proxy::{Error, RequestBody};

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

#[derive(Clone, Debug)]
pub struct Client {
    inner: HyperClient<HttpsConnector<HttpConnector>, RequestBody>,
    response_timeout: Duration,
}

impl Client {
    pub fn new(tls: &Tls, timeouts: &Timeouts) -> Result<Client, crate::tls::Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeouts.connect));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::tls::client_config(&tls.extra_roots)?)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let inner = HyperClient::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(https);
        Ok(Client {
            inner,
            response_timeout: timeouts.response,
        })
    }

    /// Sends the request and waits for the response head; the body streams afterwards.
    pub async fn send(
        &self,
        request: Request<RequestBody>,
        authority: &str,
    ) -> Result<Response<Incoming>, Error> {
        match tokio::time::timeout(self.response_timeout, self.inner.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => Err(Error::from_upstream(authority, &err)),
            Err(_) => Err(Error::ResponseTimeout {
                authority: authority.to_owned(),
            }),
        }
    }
}
