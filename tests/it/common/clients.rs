//! Clients: raw HTTP/1 over TCP, CONNECT and TLS through the proxy, curl, and response parsing.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::harness::Proxy;
use super::pki::{Pki, client_config};

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

/// `start` (a request line and headers, each ending in CRLF) plus an `x-fill` header sized so
/// the whole head, final CRLF included, is exactly `size` bytes.
pub fn sized_head(start: &str, size: usize) -> String {
    let fixed = start.len() + "x-fill: \r\n\r\n".len();
    format!("{start}x-fill: {}\r\n\r\n", "f".repeat(size - fixed))
}

/// The bytes of a TLS ClientHello for `sni`, as a guest sends first on a tunnel.
pub fn client_hello(sni: &str) -> Vec<u8> {
    let cfg = client_config(rustls::RootCertStore::empty(), &[b"http/1.1"]);
    let mut conn =
        rustls::ClientConnection::new(cfg, ServerName::try_from(sni.to_owned()).unwrap()).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// The status of the last response in curl's `-D -` output (the first is the proxy's answer
/// to the CONNECT) and its `x-egress-edge-error`, if any.
pub fn final_status(out: &str) -> (u16, Option<String>) {
    let status = out
        .lines()
        .rev()
        .find(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let code = out
        .lines()
        .find_map(|l| l.strip_prefix("x-egress-edge-error: "))
        .map(|c| c.trim().to_owned());
    (status, code)
}

/// One request with curl through the proxy at `proxy_url`, trusting `ca` for the bump, the
/// body discarded: (status, `x-egress-edge-error`).
pub async fn curl_bumped(
    proxy_url: &str,
    ca: &str,
    url: &str,
    extra: &[&str],
) -> (u16, Option<String>) {
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "-x".into(),
        proxy_url.to_owned(),
        "--cacert".into(),
        ca.to_owned(),
        "-D".into(),
        "-".into(),
        "-o".into(),
        "/dev/null".into(),
        "--max-time".into(),
        "5".into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push(url.to_owned());
    let (_, out, _) = curl_async(args).await;
    final_status(&out)
}
