//! The local HTTPS upstream: hyper 1.x (auto h1/h2) over tokio-rustls on 127.0.0.1.
//!
//! `/small` answers 100 bytes; `/large` streams 64 MiB out of one static buffer, so the
//! upstream itself costs as little CPU as possible.
//!
//! Requests for `inject.test` must carry the injected credential
//! (`authorization: Bearer <INJECTED_SECRET>`) and are answered 403 otherwise, so the bump+inject
//! rows fail loudly if the proxy ever stops injecting (or forwards the handle instead).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::certs::UpstreamPki;

pub const SMALL_LEN: usize = 100;
const CHUNK_LEN: usize = 256 * 1024;
const CHUNKS: usize = 256;
/// `/large`: 64 MiB.
pub const LARGE_LEN: usize = CHUNK_LEN * CHUNKS;

/// The host whose requests must carry the injected credential.
pub const INJECT_HOST: &str = "inject.test";
/// The secret the proxy injects for `INJECT_HOST` (the bench's secrets file holds it).
pub const INJECTED_SECRET: &str = "sk-bench-0123456789";

static SMALL: [u8; SMALL_LEN] = [b's'; SMALL_LEN];
static CHUNK: [u8; CHUNK_LEN] = [b'L'; CHUNK_LEN];

type Body = BoxBody<Bytes, Infallible>;

/// The request's host without port: the URI's (HTTP/2 `:authority`, absolute form) or `Host`.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let host = match req.uri().host() {
        Some(h) => h,
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    Some(host.rsplit_once(':').map_or(host, |(h, _)| h))
}

/// Whether a request for `INJECT_HOST` carries exactly the injected credential.
fn injected<B>(req: &Request<B>) -> bool {
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    matches!(
        (values.next(), values.next()),
        (Some(v), None) if v.as_bytes().strip_prefix(b"Bearer ") == Some(INJECTED_SECRET.as_bytes())
    )
}

fn refuse(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    *r.status_mut() = status;
    r
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if request_host(&req).is_some_and(|h| h.eq_ignore_ascii_case(INJECT_HOST)) && !injected(&req) {
        return Ok(refuse(
            StatusCode::FORBIDDEN,
            "inject.test: the injected credential is missing or wrong\n",
        ));
    }
    let mut resp = match req.uri().path() {
        "/small" => {
            let mut r = Response::new(Full::new(Bytes::from_static(&SMALL)).boxed());
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, header::HeaderValue::from(SMALL_LEN));
            r
        }
        "/large" => {
            let chunks = futures_util::stream::iter(
                (0..CHUNKS).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from_static(&CHUNK)))),
            );
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(chunks)));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, header::HeaderValue::from(LARGE_LEN));
            r
        }
        _ => refuse(StatusCode::NOT_FOUND, "not found\n"),
    };
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

/// Binds 127.0.0.1:0 and serves until the runtime ends.
pub async fn start(pki: &UpstreamPki) -> Result<SocketAddr> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(pki.leaf_chain.clone(), pki.leaf_key.clone_key())
        .context("upstream TLS config")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(cfg));

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the upstream")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("bench: upstream accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service_fn(handle))
                    .await;
            });
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_from_uri_or_header() {
        assert_eq!(
            request_host(&req("https://inject.test:8443/small", &[])),
            Some("inject.test")
        );
        assert_eq!(
            request_host(&req("/small", &[("host", "inject.test:8443")])),
            Some("inject.test")
        );
        assert_eq!(
            request_host(&req("/small", &[("host", "bump.test")])),
            Some("bump.test")
        );
        assert_eq!(request_host(&req("/small", &[])), None);
    }

    #[test]
    fn only_the_injected_secret_passes() {
        let good = format!("Bearer {INJECTED_SECRET}");
        assert!(injected(&req("/small", &[("authorization", &good)])));
        assert!(!injected(&req("/small", &[])));
        assert!(!injected(&req(
            "/small",
            &[("authorization", "Bearer eeh_x.y")]
        )));
        assert!(!injected(&req(
            "/small",
            &[("authorization", &good), ("authorization", &good)]
        )));
    }
}
