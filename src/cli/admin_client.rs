//! A minimal HTTP/1.1 client for the admin API, over TCP (`http://host:port`) or a unix socket
//! (`unix:///path`), shared by the `handle` and `health` commands.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Sends `req` to the admin listener at `base`; the status and the body as text.
pub async fn send(
    base: &str,
    req: Request<Full<Bytes>>,
) -> Result<(http::StatusCode, String), String> {
    if let Some(p) = base.strip_prefix("unix://") {
        let s = tokio::net::UnixStream::connect(p)
            .await
            .map_err(|e| format!("{base}: {e}"))?;
        send_on(s, req).await
    } else {
        let authority = base.trim_start_matches("http://").trim_end_matches('/');
        let s = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| format!("{base}: {e}"))?;
        send_on(s, req).await
    }
}

async fn send_on<S>(io: S, req: Request<Full<Bytes>>) -> Result<(http::StatusCode, String), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
