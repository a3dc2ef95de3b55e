//! The one body type of every response the proxy produces or relays (and of every request it
//! sends upstream), its error type, and a constructor for fixed bodies. Nothing else lives here.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};

/// A relayed body's error: hyper's, or the proxy's own (an upload cut off after the response).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the proxy produces or relays.
pub type Body = BoxBody<Bytes, BoxError>;

/// A fixed body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Boxes a body whose error converts into [`BoxError`] (hyper's `Incoming`, for one).
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}
