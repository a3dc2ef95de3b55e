//! Binding the listeners a config names, and the admin accept loop. Tests bind their own
//! (port 0) and hand them to [`App::build`](super::App::build).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket, UnixListener};

use super::AppError;
use crate::admin::AdminCtx;
use crate::config::{Config, ListenAddr};

/// The admin listener, bound.
#[derive(Debug)]
pub enum AdminListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// The guest resolver's sockets: one address, UDP and TCP.
#[derive(Debug)]
pub struct DnsListener {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
}

impl DnsListener {
    /// Binds UDP and TCP on `addr`. For port 0, TCP takes the port UDP was given, and when
    /// that port is taken for TCP another one is tried.
    pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<DnsListener> {
        let mut tries = 0;
        loop {
            let udp = UdpSocket::bind(addr).await?;
            match TcpListener::bind(udp.local_addr()?).await {
                Ok(tcp) => return Ok(DnsListener { udp, tcp }),
                Err(e) if addr.port() == 0 && tries < 20 => {
                    tries += 1;
                    tracing::debug!(error = %e, "the guest resolver's UDP port is taken for TCP; trying another");
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Already-bound listeners.
#[derive(Debug)]
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: Option<AdminListener>,
    /// More explicit-proxy listeners serving the same policy (`jail` binds one on its veth).
    pub extra_proxy: Vec<TcpListener>,
    /// Transparent listeners (`proxy.transparent`, and the jail's).
    pub transparent: Vec<TcpListener>,
    /// Guest resolvers (`dns.listen`, and the jail's).
    pub dns: Vec<DnsListener>,
}

impl Listeners {
    /// An explicit proxy listener and an optional admin listener, nothing else.
    pub fn new(proxy: TcpListener, admin: Option<AdminListener>) -> Listeners {
        Listeners {
            proxy,
            admin,
            extra_proxy: Vec::new(),
            transparent: Vec::new(),
            dns: Vec::new(),
        }
    }

    /// Binds what the config names.
    pub async fn bind(config: &Config) -> Result<Listeners, AppError> {
        let proxy = TcpListener::bind(config.proxy.listen)
            .await
            .map_err(|source| AppError::Bind {
                what: "proxy.listen",
                addr: config.proxy.listen.to_string(),
                source,
            })?;
        let mut transparent = Vec::new();
        if let Some(addr) = config.proxy.transparent {
            transparent.push(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| AppError::Bind {
                        what: "proxy.transparent",
                        addr: addr.to_string(),
                        source,
                    })?,
            );
        }
        let mut dns = Vec::new();
        if let Some(d) = &config.dns {
            dns.push(
                DnsListener::bind(d.listen)
                    .await
                    .map_err(|source| AppError::Bind {
                        what: "dns.listen",
                        addr: d.listen.to_string(),
                        source,
                    })?,
            );
        }
        let admin = match &config.admin.listen {
            ListenAddr::Tcp(a) => Some(AdminListener::Tcp(TcpListener::bind(a).await.map_err(
                |source| AppError::Bind {
                    what: "admin.listen",
                    addr: a.to_string(),
                    source,
                },
            )?)),
            ListenAddr::Unix(p) => {
                // A stale socket from a previous run would make bind fail; only remove a socket.
                if std::fs::symlink_metadata(p).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                }) {
                    let _ = std::fs::remove_file(p);
                }
                let l = UnixListener::bind(p).map_err(|source| AppError::Bind {
                    what: "admin.listen",
                    addr: p.display().to_string(),
                    source,
                })?;
                Some(AdminListener::Unix(l, p.clone()))
            }
        };
        Ok(Listeners {
            proxy,
            admin,
            extra_proxy: Vec::new(),
            transparent,
            dns,
        })
    }
}

impl AdminListener {
    async fn accept(&self) -> std::io::Result<Box<dyn crate::admin::AdminStream>> {
        Ok(match self {
            AdminListener::Tcp(l) => Box::new(l.accept().await?.0),
            AdminListener::Unix(l, _) => Box::new(l.accept().await?.0),
        })
    }
}

/// Accepts admin connections until the task is aborted.
pub(super) async fn admin_loop(l: AdminListener, ctx: Arc<AdminCtx>) {
    loop {
        match l.accept().await {
            Ok(s) => {
                tokio::spawn(crate::admin::serve_conn(s, ctx.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
