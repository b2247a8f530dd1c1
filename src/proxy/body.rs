//! Body types: requests stream upstream as they came; responses are an upstream's streamed
//! body or a short one the proxy writes.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

pub type Body = BoxBody<Bytes, hyper::Error>;

/// A client's request body on its way upstream, counted for the access log.
pub type RequestBody = super::access::Counted<hyper::body::Incoming>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn stream(incoming: hyper::body::Incoming) -> Body {
    incoming.boxed()
}
