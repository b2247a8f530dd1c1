//! The response body type: an upstream's streamed body, or a short one the proxy writes.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

pub type Body = BoxBody<Bytes, hyper::Error>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn stream(incoming: hyper::body::Incoming) -> Body {
    incoming.boxed()
}
