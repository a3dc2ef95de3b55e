//! The standalone SDS server behind `egress-edge sds serve`: options, TLS setup, binding, and
//! running tonic until shutdown.
//!
//! It serves the secrets of a watched secrets file (or of any [`SecretStore`]). It does not
//! reload its own TLS certificate, and it offers no delta xDS.

mod ads;
mod io;
mod service;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use ads::to_resources;
pub use io::Listener;

use crate::error::SdsError;
use crate::file_source::{DEFAULT_POLL_INTERVAL, spawn_file_source};
use crate::fleet::Published;
use crate::pem;
use crate::proto::{AggregatedDiscoveryServiceServer, SecretDiscoveryServiceServer};
use crate::secret::SecretBytes;
use crate::store::SecretStore;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Listen {
    /// `host:port` (an IP address, or `localhost`) or `unix:///absolute/path`.
    pub fn parse(s: &str) -> Result<Self, SdsError> {
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(SdsError::Config(format!(
                    "listen address {s:?}: a unix socket needs an absolute path (unix:///path)"
                )));
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Listen::Tcp(addr));
        }
        if let Some(port) = s.strip_prefix("localhost:")
            && let Ok(port) = port.parse::<u16>()
        {
            return Ok(Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        Err(SdsError::Config(format!(
            "listen address {s:?}: expected IP:port (e.g. 127.0.0.1:18000) or unix:///path"
        )))
    }
}

/// Server certificate, key and, for mTLS, the CA that client certificates must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl ServerTls {
    /// From the CLI flags: none, or cert and key (plus an optional client CA). Any other
    /// combination is an error rather than a silent downgrade to plaintext.
    pub fn from_parts(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Result<Option<Self>, SdsError> {
        match (cert, key, client_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), client_ca) => Ok(Some(ServerTls {
                cert,
                key,
                client_ca,
            })),
            (Some(_), None, _) => Err(SdsError::Config(
                "--tls-cert needs --tls-key (partial TLS settings)".into(),
            )),
            (None, Some(_), _) => Err(SdsError::Config(
                "--tls-key needs --tls-cert (partial TLS settings)".into(),
            )),
            (None, None, Some(_)) => Err(SdsError::Config(
                "--client-ca needs --tls-cert and --tls-key (mTLS requires TLS)".into(),
            )),
        }
    }

    fn acceptor(&self) -> Result<TlsAcceptor, SdsError> {
        let chain = pem::certs(&read("TLS certificate", &self.cert)?)
            .map_err(|r| SdsError::Tls(format!("{} {r}", self.cert.display())))?;
        let key_pem = SecretBytes::new(read("TLS key", &self.key)?);
        let key = pem::private_key(key_pem.expose())
            .map_err(|r| SdsError::Tls(format!("{} {r}", self.key.display())))?;
        let provider = pem::provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| SdsError::Tls(e.to_string()))?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let roots = pem::roots(&read("client CA", ca)?)
                    .map_err(|r| SdsError::Tls(format!("{} {r}", ca.display())))?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| SdsError::Tls(format!("client CA: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| SdsError::Tls(format!("server certificate and key: {e}")))?;
        // gRPC clients (grpc-core in particular) insist on negotiating h2.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, SdsError> {
    std::fs::read(path).map_err(|source| SdsError::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Everything `egress-edge sds serve` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    pub listen: Listen,
    pub secrets_file: PathBuf,
    pub tls: Option<ServerTls>,
}

/// Binds, then serves until `shutdown` resolves.
pub async fn serve(
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SdsError> {
    Server::bind(&opts).await?.run(shutdown).await
}

// Dropping the server (e.g. aborting `run`) must also stop its helper tasks.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A bound SDS server, ready to [`run`](Server::run).
pub struct Server {
    listener: Listener,
    tls: Option<TlsAcceptor>,
    store: SecretStore,
    file_source: Option<AbortOnDrop>,
    /// Fleet resources served over ADS, and the heartbeat that refreshes their TTLs.
    fleet: Option<(Published, Duration)>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .field("store", &self.store)
            .field("fleet", &self.fleet)
            .finish()
    }
}

impl Server {
    /// Loads the secrets file (errors here mean "refuse to start"), sets up TLS and binds.
    pub async fn bind(opts: &ServeOptions) -> Result<Self, SdsError> {
        let tls = opts.tls.as_ref().map(ServerTls::acceptor).transpose()?;
        let store = SecretStore::new([]);
        let task = AbortOnDrop(spawn_file_source(
            opts.secrets_file.clone(),
            store.clone(),
            DEFAULT_POLL_INTERVAL,
        )?);
        let listener = match &opts.listen {
            Listen::Tcp(addr) => Listener::Tcp(TcpListener::bind(addr).await.map_err(
                |source| SdsError::Bind {
                    what: addr.to_string(),
                    source,
                },
            )?),
            Listen::Unix(path) => Listener::Unix(bind_unix(path)?),
        };
        Ok(Self {
            listener,
            tls,
            store,
            file_source: Some(task),
            fleet: None,
        })
    }

    /// Serves `secrets_file` on an already-bound listener (tests bind port 0 themselves).
    /// Starts the file watcher, so it must be called inside a tokio runtime.
    pub fn with_listener(
        listener: impl Into<Listener>,
        secrets_file: &Path,
        tls: Option<&ServerTls>,
    ) -> Result<Self, SdsError> {
        let store = SecretStore::new([]);
        let task = spawn_file_source(
            secrets_file.to_path_buf(),
            store.clone(),
            DEFAULT_POLL_INTERVAL,
        )?;
        let mut server = Self::with_store(listener, store, tls)?;
        server.file_source = Some(AbortOnDrop(task));
        Ok(server)
    }

    /// Serves whatever `store` holds, fed by the caller.
    pub fn with_store(
        listener: impl Into<Listener>,
        store: SecretStore,
        tls: Option<&ServerTls>,
    ) -> Result<Self, SdsError> {
        Ok(Self {
            listener: listener.into(),
            tls: tls.map(ServerTls::acceptor).transpose()?,
            store,
            file_source: None,
            fleet: None,
        })
    }

    /// The bound TCP address (None for a unix socket).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.listener {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(_) => None,
        }
    }

    /// Also serves `published` over the aggregated discovery service (the control plane's
    /// fleet resources); TTL-carrying sets are re-sent every `heartbeat`.
    pub fn with_fleet(mut self, published: Published, heartbeat: Duration) -> Self {
        self.fleet = Some((published, heartbeat.max(Duration::from_millis(100))));
        self
    }

    pub fn store(&self) -> &SecretStore {
        &self.store
    }

    /// Serves until `shutdown` resolves; open streams are then ended with UNAVAILABLE so
    /// clients reconnect elsewhere. Dropping the returned future has the same effect.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), SdsError> {
        let token = CancellationToken::new();
        let _cancel_streams_on_drop = token.clone().drop_guard();
        let _file_source = self.file_source;
        let unix_path = match &self.listener {
            Listener::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf)),
            Listener::Tcp(_) => None,
        };
        let (incoming, accept_task) = io::incoming(self.listener, self.tls);
        let _accept = AbortOnDrop(accept_task);
        let service = service::SdsService::new(self.store, token.clone());
        let ads = self.fleet.map(|(published, heartbeat)| {
            AggregatedDiscoveryServiceServer::new(ads::AdsService::new(
                published,
                heartbeat,
                token.clone(),
            ))
        });
        let signal = async move {
            shutdown.await;
            token.cancel();
        };
        let result = tonic::transport::Server::builder()
            // Detects clients that vanished without closing (a dead peer's stream would
            // otherwise hold its task forever).
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(SecretDiscoveryServiceServer::new(service))
            .add_optional_service(ads)
            .serve_with_incoming_shutdown(incoming, signal)
            .await;
        if let Some(path) = unix_path {
            let _ = std::fs::remove_file(path);
        }
        result.map_err(SdsError::from)
    }
}

/// Binds a unix socket, replacing a stale socket file left by a previous run (but never a
/// regular file, which would be a misconfiguration worth reporting).
fn bind_unix(path: &Path) -> Result<UnixListener, SdsError> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|source| SdsError::Bind {
        what: path.display().to_string(),
        source,
    })
}
