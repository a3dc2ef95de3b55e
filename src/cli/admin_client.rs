//! A minimal HTTP/1.1 client for the admin API, over TCP (`http://host:port`) or a unix socket
//! (`unix:///path`), shared by the `handle` and `health` commands. It sets `Host` to the
//! authority it dials (`localhost` on a unix socket), which the admin API's DNS-rebinding
//! check accepts. It speaks plain HTTP only.

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// The `Host` a unix-socket request carries: the listener does not judge it, and it is a
/// loopback name should the socket be forwarded to TCP.
const UNIX_HOST: &str = "localhost";

/// Sends `req` to the admin listener at `base` (with `Host` set to the authority dialled);
/// the status and the body as text.
pub async fn send(
    base: &str,
    mut req: Request<Full<Bytes>>,
) -> Result<(http::StatusCode, String), String> {
    if let Some(p) = base.strip_prefix("unix://") {
        let s = tokio::net::UnixStream::connect(p)
            .await
            .map_err(|e| format!("{base}: {e}"))?;
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static(UNIX_HOST));
        send_on(s, req).await
    } else {
        let authority = tcp_authority(base);
        let host = HeaderValue::from_str(authority)
            .map_err(|_| format!("{base}: not a host:port admin address"))?;
        let s = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| format!("{base}: {e}"))?;
        req.headers_mut().insert(header::HOST, host);
        send_on(s, req).await
    }
}

/// `host:port` from `http://host:port[/]` or a bare `host:port`.
fn tcp_authority(base: &str) -> &str {
    base.trim_start_matches("http://").trim_end_matches('/')
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_of_admin_addresses() {
        assert_eq!(tcp_authority("http://127.0.0.1:9901"), "127.0.0.1:9901");
        assert_eq!(tcp_authority("http://127.0.0.1:9901/"), "127.0.0.1:9901");
        assert_eq!(tcp_authority("127.0.0.1:9901"), "127.0.0.1:9901");
        assert_eq!(tcp_authority("http://[::1]:9901"), "[::1]:9901");
        assert_eq!(tcp_authority("localhost:9901"), "localhost:9901");
    }
}
