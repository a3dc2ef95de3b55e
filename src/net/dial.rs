//! Upstream dial: the one place that turns a destination into a TCP connection.
//!
//! It resolves a name (static `network.hosts` override first, then the system resolver),
//! checks every resolved address against the [`AddressPolicy`], and connects to exactly the
//! addresses it vetted — never a second lookup, so DNS rebinding between check and connect is
//! impossible. A name with any denied address is refused outright: a name that mixes public and
//! private answers is a rebinding or misconfiguration signal, not something to route around.
//! It does not decide rungs (that is `policy`) and does not speak TLS (that is `upstream`).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::net::host::Host;
use crate::net::netguard::{AddressPolicy, Denied};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Name resolution. The system implementation uses getaddrinfo via tokio.
pub trait Resolve: Send + Sync + std::fmt::Debug {
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>>;
}

/// Opening a TCP connection to a vetted address. Tests substitute a recording connector so a
/// broken check could never reach a non-loopback address.
pub trait Connect: Send + Sync + std::fmt::Debug {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<TcpStream>>;
}

#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((name, 0)).await?;
            let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            ips.dedup();
            Ok(ips)
        })
    }
}

#[derive(Debug, Default)]
pub struct TcpConnector;

impl Connect for TcpConnector {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<TcpStream>> {
        Box::pin(async move {
            let s = TcpStream::connect(addr).await?;
            // Proxied request/response traffic is latency-bound; Nagle only adds delay here.
            s.set_nodelay(true)?;
            Ok(s)
        })
    }
}

/// Why a dial failed; each maps to one guest-facing code.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{host} resolves to {}, which is in denied range {}", .denied.addr, .denied.by)]
    AddressDenied { host: String, denied: Denied },
    #[error("the connection to {host} was addressed to {addr}, which {host} does not resolve to")]
    AddressMismatch { host: String, addr: IpAddr },
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("{host} resolved to no address")]
    NoAddress { host: String },
    #[error("cannot connect to {host} ({addr}): {source}")]
    Connect {
        host: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("connecting to {host} timed out after {timeout:?}")]
    Timeout { host: String, timeout: Duration },
}

/// A connection plus the address it goes to, for logs.
#[derive(Debug)]
pub struct Dialed {
    pub stream: TcpStream,
    pub addr: SocketAddr,
}

/// Resolves, vets and connects.
#[derive(Clone, Debug)]
pub struct Dialer {
    addresses: AddressPolicy,
    hosts: Arc<std::collections::HashMap<String, Vec<IpAddr>>>,
    resolver: Arc<dyn Resolve>,
    connector: Arc<dyn Connect>,
    connect_timeout: Duration,
}

impl Dialer {
    pub fn new(
        addresses: AddressPolicy,
        hosts: std::collections::HashMap<String, Vec<IpAddr>>,
        resolver: Arc<dyn Resolve>,
        connector: Arc<dyn Connect>,
        connect_timeout: Duration,
    ) -> Dialer {
        Dialer {
            addresses,
            hosts: Arc::new(hosts),
            resolver,
            connector,
            connect_timeout,
        }
    }

    /// Resolves `host` and checks every address; returns the vetted addresses in order.
    pub async fn vet(&self, host: &Host) -> Result<Vec<IpAddr>, DialError> {
        let shown = host.to_string();
        let ips = match host {
            Host::Ip(ip) => vec![*ip],
            Host::Name(name) => match self.hosts.get(name) {
                Some(fixed) => fixed.clone(),
                None => {
                    let lookup = self.resolver.resolve(name);
                    match tokio::time::timeout(self.connect_timeout, lookup).await {
                        Ok(Ok(ips)) => ips,
                        Ok(Err(source)) => {
                            return Err(DialError::Resolve {
                                host: shown,
                                source,
                            });
                        }
                        Err(_) => {
                            return Err(DialError::Timeout {
                                host: shown,
                                timeout: self.connect_timeout,
                            });
                        }
                    }
                }
            },
        };
        if ips.is_empty() {
            return Err(DialError::NoAddress { host: shown });
        }
        for ip in &ips {
            self.addresses
                .check(*ip)
                .map_err(|denied| DialError::AddressDenied {
                    host: shown.clone(),
                    denied,
                })?;
        }
        Ok(ips)
    }

    /// Destination binding for connections the guest addressed itself (transparent mode):
    /// `addr` must be an address the proxy resolves `host` to, or one the guest resolver gave
    /// out for it (`answered`, vetted when answered); either way it is checked against the
    /// address policy again here.
    pub async fn vet_bound(
        &self,
        host: &Host,
        addr: IpAddr,
        answered: bool,
    ) -> Result<(), DialError> {
        let shown = host.to_string();
        self.addresses
            .check(addr)
            .map_err(|denied| DialError::AddressDenied {
                host: shown.clone(),
                denied,
            })?;
        if answered {
            return Ok(());
        }
        if self.vet(host).await?.contains(&addr) {
            Ok(())
        } else {
            Err(DialError::AddressMismatch { host: shown, addr })
        }
    }

    /// [`Dialer::vet_bound`], then connects to exactly `addr`: the proxy dials the address it
    /// vetted, never another one the name also resolves to.
    pub async fn dial_bound(
        &self,
        host: &Host,
        addr: SocketAddr,
        answered: bool,
    ) -> Result<Dialed, DialError> {
        self.vet_bound(host, addr.ip(), answered).await?;
        let shown = host.to_string();
        match tokio::time::timeout(self.connect_timeout, self.connector.connect(addr)).await {
            Ok(Ok(stream)) => Ok(Dialed { stream, addr }),
            Ok(Err(source)) => Err(DialError::Connect {
                host: shown,
                addr,
                source,
            }),
            Err(_) => Err(DialError::Timeout {
                host: shown,
                timeout: self.connect_timeout,
            }),
        }
    }

    /// Vets `host` and connects to the first vetted address that answers, within the connect
    /// timeout overall.
    pub async fn dial(&self, host: &Host, port: u16) -> Result<Dialed, DialError> {
        let ips = self.vet(host).await?;
        let shown = host.to_string();
        let attempt = async {
            let mut last = None;
            for ip in &ips {
                let addr = SocketAddr::new(*ip, port);
                match self.connector.connect(addr).await {
                    Ok(stream) => return Ok(Dialed { stream, addr }),
                    Err(source) => {
                        last = Some(DialError::Connect {
                            host: shown.clone(),
                            addr,
                            source,
                        })
                    }
                }
            }
            Err(last.unwrap_or(DialError::NoAddress {
                host: shown.clone(),
            }))
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(DialError::Timeout {
                host: shown,
                timeout: self.connect_timeout,
            }),
        }
    }
}
