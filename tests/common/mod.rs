//! Test harness: a real TLS upstream on loopback, certificates generated at test time, the
//! proxy built in-process on `127.0.0.1:0`, and raw/TLS/curl clients.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use egress_edge::app::{AdminListener, App, BuildOptions, Listeners};
use egress_edge::dial::{BoxFuture, Connect};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub type TBody = BoxBody<Bytes, Infallible>;

/// A test CA that signs leaves.
pub struct Pki {
    pub ca_pem: String,
    ca_cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    pub dir: tempfile::TempDir,
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new(cn: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).unwrap();
        let ca_pem = cert.pem();
        let ca_cert_der = cert.der().clone();
        let issuer = Issuer::new(p, key);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        Pki {
            ca_pem,
            ca_cert_der,
            issuer,
            dir,
        }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |_| {})
    }

    pub fn leaf_with(&self, names: &[&str], tweak: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        p.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().unwrap()),
            })
            .collect();
        tweak(&mut p);
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut r = rustls::RootCertStore::empty();
        r.add(self.ca_cert_der.clone()).unwrap();
        r
    }
}

pub fn self_signed(names: &[&str]) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let p =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = p.self_signed(&key).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn server_config(leaf: &Leaf, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> =
        rustls_pki_types::pem::PemObject::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key: PrivateKeyDer<'static> =
        rustls_pki_types::pem::PemObject::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

pub fn client_config(roots: rustls::RootCertStore, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// What the test upstream saw.
#[derive(Default)]
pub struct Seen {
    pub tokens: AtomicUsize,
    pub requests: Mutex<Vec<(String, http::HeaderMap)>>,
    pub handshakes: AtomicUsize,
    pub connections: AtomicUsize,
}

fn full(s: impl Into<Bytes>) -> TBody {
    Full::new(s.into()).map_err(|n| match n {}).boxed()
}

async fn upstream_handler(
    mut req: Request<Incoming>,
    seen: Arc<Seen>,
) -> Result<Response<TBody>, Infallible> {
    seen.requests
        .lock()
        .unwrap()
        .push((req.uri().path().to_owned(), req.headers().clone()));
    let path = req.uri().path().to_owned();
    let resp = match path.as_str() {
        "/small" => Response::new(full("hello")),
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
            let map: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        serde_json::Value::String(v.to_str().unwrap_or("").to_owned()),
                    )
                })
                .collect();
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
        _ => Response::builder().status(404).body(full("nope")).unwrap(),
    };
    Ok(resp)
}

fn tokio_stream_from(
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
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
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

pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub state: tempfile::TempDir,
    pub config_path: PathBuf,
    pub shared: Arc<egress_edge::state::Shared>,
    pub reloader: Arc<egress_edge::reload::Reloader>,
    stop: Option<oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// `yaml` may contain `STATE_DIR`, replaced with a fresh temp dir.
    pub async fn start(yaml: &str) -> Proxy {
        Proxy::start_with(yaml, BuildOptions::default()).await
    }

    pub async fn start_with(yaml: &str, opts: BuildOptions) -> Proxy {
        Proxy::try_start_with(yaml, opts).await.unwrap()
    }

    pub async fn try_start_with(yaml: &str, opts: BuildOptions) -> Result<Proxy, String> {
        let state = tempfile::tempdir().unwrap();
        let text = yaml.replace("STATE_DIR", state.path().join("state").to_str().unwrap());
        let config_path = state.path().join("config.yaml");
        std::fs::write(&config_path, &text).unwrap();
        Proxy::launch(state, config_path, opts).await
    }

    /// Builds and runs an app from the config file in `state`.
    async fn launch(
        state: tempfile::TempDir,
        config_path: PathBuf,
        opts: BuildOptions,
    ) -> Result<Proxy, String> {
        let text = std::fs::read_to_string(&config_path).unwrap();
        let config = egress_edge::config::parse_str(&text, "test").map_err(|e| e.to_string())?;
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let listeners = Listeners {
            proxy,
            admin: Some(AdminListener::Tcp(admin)),
        };
        let app = App::build(config, listeners, opts)
            .await
            .map_err(|e| e.to_string())?;
        let (addr, shared, reloader) = (app.proxy_addr, app.shared().clone(), app.reloader());
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(app.run(async {
            let _ = rx.await;
        }));
        Ok(Proxy {
            addr,
            admin: admin_addr,
            state,
            config_path,
            shared,
            reloader,
            stop: Some(tx),
            done: Some(done),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Stops this proxy and starts a new one on the same config and state dir.
    pub async fn restart(mut self) -> Proxy {
        self.shutdown();
        if let Some(d) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), d).await;
        }
        let state = std::mem::replace(&mut self.state, tempfile::tempdir().unwrap());
        Proxy::launch(state, self.config_path.clone(), BuildOptions::default())
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: &str) -> (u16, String) {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut s = TcpStream::connect(self.admin).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let (status, _, body) = read_response(&mut s).await;
        (status, body)
    }

    /// Mints a handle through the admin API.
    pub async fn mint(&self, body: &str) -> String {
        let (status, resp) = self.post("/v1/handles", body).await;
        assert_eq!(status, 200, "{resp}");
        json(&resp)["handle"].as_str().unwrap().to_owned()
    }

    pub fn bump_ca_path(&self) -> PathBuf {
        self.state.path().join("state").join("ca.pem")
    }

    pub fn bump_roots(&self) -> rustls::RootCertStore {
        let pem = std::fs::read(self.bump_ca_path()).unwrap();
        let mut r = rustls::RootCertStore::empty();
        for c in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
            r.add(c.unwrap()).unwrap();
        }
        r
    }

    /// Polls `/metrics` until it contains `needle` (events are counted when a tunnel closes).
    pub async fn wait_metric(&self, needle: &str) -> String {
        let mut last = String::new();
        for _ in 0..50 {
            last = self.metrics().await;
            if last.contains(needle) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("metric `{needle}` never appeared:\n{last}");
    }

    pub async fn metrics(&self) -> String {
        let (status, _, body) = http_get(self.admin, "/metrics", &[]).await;
        assert_eq!(status, 200);
        body
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Reads an HTTP/1 response head (and a Content-Length body) from a stream.
pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
) -> (u16, Vec<(String, String)>, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.unwrap();
        if n == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if len > 0 {
        s.read_exact(&mut body).await.unwrap();
    }
    (status, headers, String::from_utf8_lossy(&body).to_string())
}

pub fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Sends a raw request and reads the response.
pub async fn raw(
    proxy: SocketAddr,
    request: &str,
) -> (u16, Vec<(String, String)>, String, TcpStream) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let (st, h, b) = read_response(&mut s).await;
    (st, h, b, s)
}

pub async fn connect(
    proxy: SocketAddr,
    target: &str,
) -> (u16, Vec<(String, String)>, String, TcpStream) {
    raw(
        proxy,
        &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
    )
    .await
}

pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    parse_response(&out)
}

/// Parses a whole HTTP/1.1 response (`Connection: close`, so the body runs to EOF).
pub fn parse_response(raw: &[u8]) -> (u16, Vec<(String, String)>, String) {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// CONNECT then TLS with `sni` (a DNS name, or an IP literal for no SNI).
pub async fn tls_through(
    proxy: SocketAddr,
    target: &str,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let (status, _, body, s) = connect(proxy, target).await;
    assert_eq!(status, 200, "CONNECT {target}: {body}");
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(cfg).connect(name, s).await
}

/// Runs curl; returns (exit status code, stdout, stderr).
pub fn curl(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

pub async fn curl_async(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&refs)
    })
    .await
    .unwrap()
}

pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Opens a pass-through tunnel to `upstream.test` and completes one keep-alive request on it.
pub async fn open_tunnel(
    proxy: &Proxy,
    pki: &Pki,
    up: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tls = tls_through(
        proxy.addr,
        &format!("upstream.test:{}", up.port()),
        "upstream.test",
        client_config(pki.roots(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    tls.write_all(b"GET /small HTTP/1.1\r\nHost: upstream.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with("hello"));
    tls
}
