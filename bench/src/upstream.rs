//! The local HTTPS upstream: hyper 1.x (auto h1/h2) over tokio-rustls on 127.0.0.1.
//!
//! `/small` answers 100 bytes; `/large` streams 64 MiB out of one static buffer, so the
//! upstream itself costs as little CPU as possible.

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

static SMALL: [u8; SMALL_LEN] = [b's'; SMALL_LEN];
static CHUNK: [u8; CHUNK_LEN] = [b'L'; CHUNK_LEN];

type Body = BoxBody<Bytes, Infallible>;

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
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
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")).boxed());
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
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
