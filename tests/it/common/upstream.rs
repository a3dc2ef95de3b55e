//! The fake upstream: a real HTTP/1 + HTTP/2 server on loopback (TLS or plain) with fixed
//! routes (`/small`, `/slow`, `/early`, `/token`, `/headers`, `/reflect`, `/sse`, `/trailers`,
//! `/ws`, `/raw-upgrade`, and the fake LLM API's `/v1/chat/completions` and `/v1/messages`, see
//! [`super::fake_api`]) that records what it saw (requests, connections, peak concurrent
//! requests),
//! and a connector that records dial attempts and never connects.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use egress_edge::net::dial::{BoxFuture, Connect};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub type TBody = BoxBody<Bytes, Infallible>;

/// What the test upstream saw.
#[derive(Default)]
pub struct Seen {
    pub tokens: AtomicUsize,
    pub requests: Mutex<Vec<(String, http::HeaderMap)>>,
    pub handshakes: AtomicUsize,
    pub connections: AtomicUsize,
    /// Requests to `/slow` being served right now, and the most there ever were at once.
    pub inflight: AtomicUsize,
    pub peak_inflight: AtomicUsize,
}

pub(crate) fn full(s: impl Into<Bytes>) -> TBody {
    Full::new(s.into()).map_err(|n| match n {}).boxed()
}

async fn upstream_handler(
    mut req: Request<Incoming>,
    seen: Arc<Seen>,
) -> Result<Response<TBody>, Infallible> {
    seen.requests.lock().unwrap().push((
        req.uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        req.headers().clone(),
    ));
    let path = req.uri().path().to_owned();
    if super::fake_api::is_bad_gateway(&path) {
        return Ok(super::fake_api::bad_gateway());
    }
    if let Some(api) = super::fake_api::Api::route(&path) {
        let headers = req.headers().clone();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        return Ok(super::fake_api::respond(api, &headers, &body));
    }
    let version = format!("{:?}", req.version());
    let resp = match path.as_str() {
        "/small" => Response::new(full("hello")),
        // The HTTP version this upstream was spoken to in.
        "/version" => Response::new(full(version)),
        "/slow" => {
            let now = seen.inflight.fetch_add(1, Ordering::SeqCst) + 1;
            seen.peak_inflight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            seen.inflight.fetch_sub(1, Ordering::SeqCst);
            Response::new(full("slow"))
        }
        // Answers at once (413, or `?status=N`) and neither reads the request body nor lets go
        // of it for a while (an upload it refuses or ignores, on a server that does not drain).
        "/early" => {
            let status = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("status="))
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or(413);
            let body = req.into_body();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(body);
            });
            Response::builder()
                .status(status)
                .body(full(format!("early {status}")))
                .unwrap()
        }
        "/token" => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let form = String::from_utf8_lossy(&body).to_string();
            if !form.contains("grant_type=client_credentials")
                || !form.contains("client_secret=cs-SECRET")
            {
                return Ok(Response::builder()
                    .status(401)
                    .body(full("bad client"))
                    .unwrap());
            }
            // Slow enough that concurrent first requests overlap.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let n = seen.tokens.fetch_add(1, Ordering::SeqCst) + 1;
            Response::new(full(format!(
                "{{\"access_token\":\"tok-{n}\",\"expires_in\":3600}}"
            )))
        }
        "/headers" => {
            let mut map: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        serde_json::Value::String(v.to_str().unwrap_or("").to_owned()),
                    )
                })
                .collect();
            // Not a header: the query the upstream received, for credential-in-query tests.
            map.insert(
                ":query".into(),
                serde_json::Value::String(req.uri().query().unwrap_or("").to_owned()),
            );
            Response::new(full(serde_json::Value::Object(map).to_string()))
        }
        "/sse" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from("data: one\n\n")))).await;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from("data: two\n\n")))).await;
            });
            let stream = tokio_stream_from(rx);
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r
        }
        // A hostile echo: the bearer token back in a header and in the body, raw (split across
        // frames), base64 and percent-encoded.
        "/reflect" => {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let secret = auth.strip_prefix("Bearer ").unwrap_or(&auth).to_owned();
            let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &secret);
            let pct: String = secret
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            let mid = secret.len() / 2;
            let frames = vec![
                format!("you sent: {}", &secret[..mid]),
                format!("{} | base64: {b64} | url: {pct}", &secret[mid..]),
            ];
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                for f in frames {
                    let _ = tx.send(Ok(Frame::data(Bytes::from(f)))).await;
                }
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(tokio_stream_from(rx))));
            r.headers_mut()
                .insert("x-echo", http::HeaderValue::from_str(&auth).unwrap());
            r
        }
        // PATTERN_LEN bytes of `pattern_byte`, sent in chunks of odd sizes on both sides of a
        // TLS record, queued ahead so the relay finds several ready at once.
        "/pattern" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
            tokio::spawn(async move {
                let sizes = [1, 8192, 100_000, 16_375, 16_376, 3, 16_384, 65_536, 7];
                let (mut at, mut i) = (0usize, 0usize);
                while at < PATTERN_LEN {
                    let n = sizes[i % sizes.len()].min(PATTERN_LEN - at);
                    let chunk: Vec<u8> = (at..at + n).map(pattern_byte).collect();
                    if tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                        return;
                    }
                    at += n;
                    i += 1;
                }
            });
            Response::new(BodyExt::boxed(StreamBody::new(tokio_stream_from(rx))))
        }
        "/trailers" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from("body")))).await;
                let mut t = http::HeaderMap::new();
                t.insert("grpc-status", "0".parse().unwrap());
                let _ = tx.send(Ok(Frame::trailers(t))).await;
            });
            Response::new(BodyExt::boxed(StreamBody::new(tokio_stream_from(rx))))
        }
        "/ws" => {
            let key = req.headers().get("sec-websocket-key").cloned();
            let Some(key) = key else {
                return Ok(Response::builder()
                    .status(400)
                    .body(full("no key"))
                    .unwrap());
            };
            let accept = ws_accept(key.to_str().unwrap());
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    // Echo one client frame back unmasked.
                    let mut hdr = [0u8; 2];
                    io.read_exact(&mut hdr).await.unwrap();
                    let len = (hdr[1] & 0x7f) as usize;
                    let mut mask = [0u8; 4];
                    io.read_exact(&mut mask).await.unwrap();
                    let mut payload = vec![0u8; len];
                    io.read_exact(&mut payload).await.unwrap();
                    for (i, b) in payload.iter_mut().enumerate() {
                        *b ^= mask[i % 4];
                    }
                    let mut out = vec![0x81, len as u8];
                    out.extend_from_slice(&payload);
                    io.write_all(&out).await.unwrap();
                    io.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(full(""))
                .unwrap()
        }
        // Switches to whatever protocol the request asked for (or to `?as=PROTOCOL`), then
        // echoes raw bytes: what a proxy must never relay uninspected.
        "/raw-upgrade" => {
            let forced = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("as="))
                .and_then(|p| http::HeaderValue::from_str(p).ok());
            let Some(token) = forced.or_else(|| req.headers().get("upgrade").cloned()) else {
                return Ok(Response::builder()
                    .status(400)
                    .body(full("no upgrade"))
                    .unwrap());
            };
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", token)
                .body(full(""))
                .unwrap()
        }
        _ => Response::builder().status(404).body(full("nope")).unwrap(),
    };
    Ok(resp)
}

/// The length of `/pattern`'s body.
pub const PATTERN_LEN: usize = 3 * 1024 * 1024 + 123;

/// Byte `i` of `/pattern`'s body.
pub fn pattern_byte(i: usize) -> u8 {
    ((i * 31 + 7) % 251) as u8
}

pub(crate) fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

pub fn ws_accept(key: &str) -> String {
    use base64::Engine;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// Starts an upstream on 127.0.0.1:0: TLS when `tls` is given, plain HTTP otherwise.
pub async fn start_upstream(tls: Option<Arc<rustls::ServerConfig>>) -> (SocketAddr, Arc<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_upstream_on(l, tls)
}

/// Serves the test upstream on a listener the caller bound (for example inside a namespace).
pub fn start_upstream_on(
    l: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (SocketAddr, Arc<Seen>) {
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let seen = seen2.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                seen.connections.fetch_add(1, Ordering::SeqCst);
                let svc_seen = seen.clone();
                let svc =
                    hyper::service::service_fn(move |r| upstream_handler(r, svc_seen.clone()));
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // Large enough for the header-limit tests, which send up to 70 kB of headers.
                builder.http2().max_header_list_size(1 << 20);
                match tls {
                    Some(cfg) => {
                        let Ok(t) = tokio_rustls::TlsAcceptor::from(cfg).accept(s).await else {
                            return;
                        };
                        seen.handshakes.fetch_add(1, Ordering::SeqCst);
                        let _ = builder
                            .serve_connection_with_upgrades(TokioIo::new(t), svc)
                            .await;
                    }
                    None => {
                        let _ = builder
                            .serve_connection_with_upgrades(TokioIo::new(s), svc)
                            .await;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A connector that records attempts and never connects: for tests whose targets must be
/// unreachable even if the check under test were broken.
#[derive(Debug, Default)]
pub struct RecordingConnector {
    pub attempts: Mutex<Vec<SocketAddr>>,
}

impl Connect for RecordingConnector {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<TcpStream>> {
        self.attempts.lock().unwrap().push(addr);
        Box::pin(async {
            Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "recording connector",
            ))
        })
    }
}
