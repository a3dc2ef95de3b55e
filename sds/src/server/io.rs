//! Accepting connections for the SDS server: TCP or unix socket, optionally TLS, as one
//! stream of [`ServerIo`] for tonic's `serve_with_incoming_shutdown`.
//!
//! TLS handshakes run in their own tasks with a deadline so a slow or silent peer cannot stall
//! the accept loop. It does not authorize peers beyond the TLS client verifier.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound listening socket for [`super::Server`].
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

impl From<UnixListener> for Listener {
    fn from(l: UnixListener) -> Self {
        Listener::Unix(l)
    }
}

/// One accepted connection, in whichever transport it arrived.
pub(crate) enum ServerIo {
    Tcp(TcpStream),
    Unix(UnixStream),
    TlsTcp(Box<TlsStream<TcpStream>>),
    TlsUnix(Box<TlsStream<UnixStream>>),
}

impl tonic::transport::server::Connected for ServerIo {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            ServerIo::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            ServerIo::Unix($s) => {
                let $s = Pin::new($s);
                $e
            }
            ServerIo::TlsTcp($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
            ServerIo::TlsUnix($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Tcp(s) => s.is_write_vectored(),
            ServerIo::Unix(s) => s.is_write_vectored(),
            ServerIo::TlsTcp(s) => s.is_write_vectored(),
            ServerIo::TlsUnix(s) => s.is_write_vectored(),
        }
    }
}

/// Starts the accept loop; connections arrive on the returned stream. The loop ends when the
/// stream is dropped or the task is aborted.
pub(crate) fn incoming(
    listener: Listener,
    tls: Option<TlsAcceptor>,
) -> (ReceiverStream<Result<ServerIo, io::Error>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(async move {
        loop {
            let accepted = match &listener {
                Listener::Tcp(l) => l.accept().await.map(|(s, _)| {
                    // gRPC frames are small and latency-sensitive.
                    let _ = s.set_nodelay(true);
                    Accepted::Tcp(s)
                }),
                Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
            };
            let accepted = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "SDS server accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(acceptor) = tls.clone() else {
                let io = match accepted {
                    Accepted::Tcp(s) => ServerIo::Tcp(s),
                    Accepted::Unix(s) => ServerIo::Unix(s),
                };
                if tx.send(Ok(io)).await.is_err() {
                    return;
                }
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let io = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                    Ok::<_, io::Error>(match accepted {
                        Accepted::Tcp(s) => ServerIo::TlsTcp(Box::new(acceptor.accept(s).await?)),
                        Accepted::Unix(s) => ServerIo::TlsUnix(Box::new(acceptor.accept(s).await?)),
                    })
                })
                .await;
                match io {
                    Ok(Ok(io)) => {
                        let _ = tx.send(Ok(io)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "SDS TLS handshake failed"),
                    Err(_) => tracing::debug!("SDS TLS handshake timed out"),
                }
            });
        }
    });
    (ReceiverStream::new(rx), task)
}

enum Accepted {
    Tcp(TcpStream),
    Unix(UnixStream),
}
