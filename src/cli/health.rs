//! `egress-edge health`: the container health probe (GET /healthz on the admin listener).

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

/// Ok only on a 2xx answer within 5 seconds.
pub async fn health(admin: &str) -> Result<(), String> {
    let req = Request::get("/healthz")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(
        Duration::from_secs(5),
        super::admin_client::send(admin, req),
    )
    .await
    {
        Ok(Ok((status, _))) if status.is_success() => Ok(()),
        Ok(Ok((status, body))) => Err(format!("unhealthy: {status} {body}")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("{admin}: no answer within 5s")),
    }
}
