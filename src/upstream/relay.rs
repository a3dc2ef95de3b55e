//! Sending one request upstream through a pooled client and taking its response headers.
//!
//! Shared by absolute-form plain HTTP, bumped requests and upgrades: applies the
//! response-header timeout and strips hop-by-hop headers (and `Alt-Svc`) from the response.
//! Failures come back typed ([`SendError`]); turning them into guest-facing refusals is the
//! refusal module's job. Policy, credentials, metering and logging are the caller's.

use std::time::Duration;

use http::{Request, Response, header};
use hyper::body::Incoming;

use crate::body::Body;
use crate::upstream::client::HttpClient;
use crate::upstream::hop;

/// Why no response headers came back.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Client(#[from] hyper_util::client::legacy::Error),
    #[error("no response headers within {0:?}")]
    Timeout(Duration),
}

/// Sends `req` and returns the response untouched (an upgrade's 101 keeps `Upgrade`).
pub async fn request(
    client: &HttpClient,
    req: Request<Body>,
    timeout: Duration,
) -> Result<Response<Incoming>, SendError> {
    Ok(tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| SendError::Timeout(timeout))??)
}

/// Sends `req` (already rewritten: absolute URI, Host, credentials) and returns the response
/// with hop-by-hop headers removed.
pub async fn send(
    client: &HttpClient,
    req: Request<Body>,
    timeout: Duration,
) -> Result<Response<Incoming>, SendError> {
    let mut resp = request(client, req, timeout).await?;
    hop::strip(resp.headers_mut(), true);
    resp.headers_mut().remove(header::ALT_SVC);
    Ok(resp)
}
