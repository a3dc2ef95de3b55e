//! Opening a gRPC channel to the SDS server over a unix socket, plain loopback TCP, or TLS
//! (rustls with the ring provider, optional client certificate).
//!
//! TLS is done here rather than by tonic so the crypto provider and root store are exactly
//! ours. The channel URI is therefore always `http://`: tonic would refuse an `https://` URI
//! without its own TLS feature, and `:scheme` has no meaning to gRPC servers. It does not
//! retry (the session loop does).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{ClientTls, Target};
use crate::error::SdsError;
use crate::pem;
use crate::secret::SecretBytes;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub(crate) enum Connector {
    Unix(PathBuf),
    Tcp {
        host: String,
        port: u16,
    },
    Tls {
        host: String,
        port: u16,
        name: ServerName<'static>,
        connector: TlsConnector,
    },
}

impl Connector {
    pub(crate) fn new(target: &Target, tls: Option<&ClientTls>) -> Result<Self, SdsError> {
        Ok(match target {
            Target::Unix(p) => Connector::Unix(p.clone()),
            Target::Http { host, port } => Connector::Tcp {
                host: host.clone(),
                port: *port,
            },
            Target::Https { host, port } => Connector::Tls {
                host: host.clone(),
                port: *port,
                name: ServerName::try_from(host.clone())
                    .map_err(|_| SdsError::Tls(format!("{host} is not a valid TLS server name")))?,
                connector: TlsConnector::from(client_config(tls)?),
            },
        })
    }

    pub(crate) async fn connect(&self) -> Result<Channel, String> {
        let authority = match self {
            Connector::Unix(_) => "localhost".to_string(),
            Connector::Tcp { host, port } | Connector::Tls { host, port, .. } => {
                if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                }
            }
        };
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| e.to_string())?
            // Notices a server that vanished without closing the stream.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let this = self.clone();
        let connecting = endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
            let this = this.clone();
            async move { this.io().await }
        }));
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(e)) => Err(error_chain(&e)),
            Err(_) => Err(format!("connect timed out after {CONNECT_TIMEOUT:?}")),
        }
    }

    async fn io(&self) -> std::io::Result<TokioIo<Io>> {
        let io = match self {
            Connector::Unix(path) => Io::Unix(UnixStream::connect(path).await?),
            Connector::Tcp { host, port } => Io::Tcp(tcp(host, *port).await?),
            Connector::Tls {
                host,
                port,
                name,
                connector,
            } => {
                let tcp = tcp(host, *port).await?;
                Io::Tls(Box::new(connector.connect(name.clone(), tcp).await?))
            }
        };
        Ok(TokioIo::new(io))
    }
}

async fn tcp(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect((host, port)).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

// tonic's transport error says only "transport error"; the cause is in the source chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, SdsError> {
    std::fs::read(path).map_err(|source| SdsError::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn client_config(tls: Option<&ClientTls>) -> Result<Arc<ClientConfig>, SdsError> {
    let roots = match tls.and_then(|t| t.ca.as_ref()) {
        Some(ca) => pem::roots(&read("SDS CA", ca)?)
            .map_err(|r| SdsError::Tls(format!("{} {r}", ca.display())))?,
        None => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(SdsError::Tls(
                    "no system CA certificates found; set secrets.sds.tls.ca".into(),
                ));
            }
            roots
        }
    };
    let builder = ClientConfig::builder_with_provider(pem::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| SdsError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match tls.map(|t| (&t.cert, &t.key)) {
        Some((Some(cert), Some(key))) => {
            let chain = pem::certs(&read("SDS client certificate", cert)?)
                .map_err(|r| SdsError::Tls(format!("{} {r}", cert.display())))?;
            let key_pem = SecretBytes::new(read("SDS client key", key)?);
            let key_der = pem::private_key(key_pem.expose())
                .map_err(|r| SdsError::Tls(format!("{} {r}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| SdsError::Tls(format!("client certificate and key: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

enum Io {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Io::Unix($s) => {
                let $s = std::pin::Pin::new($s);
                $e
            }
            Io::Tcp($s) => {
                let $s = std::pin::Pin::new($s);
                $e
            }
            Io::Tls($s) => {
                let $s = std::pin::Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}
