//! The one body type of every response the proxy produces or relays, and a constructor for
//! fixed bodies. Nothing else lives here.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};

/// The body type of every response the proxy produces or relays.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// A fixed body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}
