//! Admin-listener helpers: the bearer token and token files, admin TLS material and client
//! certificates, HTTPS and plain-HTTP admin requests, and refusal and metric checks.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::ExtendedKeyUsagePurpose;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::clients::parse_response;
use super::harness::write;
use super::pki::{Leaf, Pki, provider};

pub const TOKEN: &str = "admin-token-0123456789abcdef";

/// Writes a token file with `mode`.
pub fn token_file(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
    let p = write(dir, name, contents);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// Server certificate and key for the admin listener, written to `dir`.
pub struct AdminTls {
    /// Signs the admin server certificate; clients trust it.
    pub server_pki: Pki,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl AdminTls {
    pub fn new(dir: &Path) -> AdminTls {
        let server_pki = Pki::new("admin server CA");
        let leaf = server_pki.leaf(&["localhost", "127.0.0.1"]);
        let cert = write(dir, "admin-cert.pem", &leaf.cert_pem);
        let key = write(dir, "admin-key.pem", &leaf.key_pem);
        AdminTls {
            server_pki,
            cert,
            key,
        }
    }
}

/// A client certificate (clientAuth EKU) signed by `pki`.
pub fn client_leaf(pki: &Pki, name: &str) -> Leaf {
    pki.leaf_with(&[name], |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    })
}

/// A TLS client for the admin listener: trusts `roots`, presents `cert` when given.
pub fn admin_client(
    roots: rustls::RootCertStore,
    cert: Option<&Leaf>,
) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match cert {
        None => builder.with_no_client_auth(),
        Some(leaf) => {
            let chain: Vec<CertificateDer<'static>> =
                rustls_pki_types::pem::PemObject::pem_slice_iter(leaf.cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap();
            let key: PrivateKeyDer<'static> =
                rustls_pki_types::pem::PemObject::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

pub type Resp = (u16, Vec<(String, String)>, String);

/// One HTTPS request to the admin listener. `Err` when the TLS handshake or the exchange
/// fails (a refused client certificate surfaces here: with TLS 1.3 the client finishes its
/// side of the handshake and then reads the server's alert).
pub async fn https(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> io::Result<Resp> {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        tls.write_all(req.as_bytes()).await?;
        tls.flush().await?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await?;
        Ok(parse_response(&out))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "admin request timed out",
            ))
        })
}

pub async fn https_get(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<Resp> {
    https(addr, cfg.clone(), "GET", path, headers, "").await
}

/// Asserts that the admin listener gave no HTTP answer: the handshake or the exchange failed,
/// or the connection closed without a status line.
pub fn assert_refused(r: &io::Result<Resp>, what: &str) {
    if let Ok((status, _, body)) = r {
        assert_eq!(
            *status, 0,
            "{what}: expected no response, got {status}: {body}"
        );
    }
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Plain-HTTP JSON POST to the admin listener with optional extra headers. `Host` is the
/// listener's real loopback authority, as curl and the CLI send it.
pub async fn admin_post(admin: SocketAddr, path: &str, body: &str, extra: &[(&str, &str)]) -> Resp {
    let host = admin.to_string();
    let mut headers = vec![
        ("Host", host.as_str()),
        ("Content-Type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    admin_raw(admin, "POST", path, &headers, body).await
}

/// One plain-HTTP request to the admin listener with exactly `headers` (plus
/// `Content-Length` and `Connection: close`): no `Host` or `Content-Type` unless given.
pub async fn admin_raw(
    admin: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    parse_response(&out)
}

/// Polls an HTTPS `/metrics` until it contains `needle`.
pub async fn wait_metric_https(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    needle: &str,
) -> String {
    let mut last = String::new();
    for _ in 0..50 {
        let (status, _, body) = https_get(addr, cfg, "/metrics", &[]).await.unwrap();
        assert_eq!(status, 200);
        if body.contains(needle) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("metric `{needle}` never appeared:\n{last}");
}
