//! Accepting guest connections when the process runs short of file descriptors.
//!
//! `accept` failing with EMFILE/ENFILE leaves the connection in the backlog, so a plain retry
//! loop spins and logs in a burst while guests wait for nothing. [`Acceptor`] keeps one spare
//! descriptor: when descriptors run out it gives the spare up, accepts the waiting connection
//! and hands it back as [`Accepted::Shed`] so the listener can refuse it
//! (`proxy_overloaded`) instead of leaving it hanging; then it backs off (10 ms doubling to
//! 1 s) and logs at most once a second with a count of what it suppressed. It makes no policy
//! decisions and serves nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::context::ConnCtx;
use crate::observe::rate_limit::RateLimited;
use crate::refusal::{Kind, out_of_descriptors};
use crate::state::Shared;

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Guests refused at `proxy.max_connections`, over every listener.
static OVERLOADS: RateLimited = RateLimited::new(LOG_EVERY);

/// What the next accept produced.
#[derive(Debug)]
pub enum Accepted {
    Conn(TcpStream, SocketAddr),
    /// Accepted with the spare descriptor while descriptors are exhausted: refuse it.
    Shed(TcpStream),
    /// `shared.draining` fired.
    Draining,
}

/// A listener with a spare descriptor, a backoff and a rate-limited error log.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    what: &'static str,
    spare: Option<std::fs::File>,
    backoff: Duration,
    errors: RateLimited,
}

fn spare() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

impl Acceptor {
    pub fn new(listener: TcpListener, what: &'static str) -> Acceptor {
        Acceptor {
            listener,
            what,
            spare: spare(),
            backoff: BACKOFF_MIN,
            errors: RateLimited::new(LOG_EVERY),
        }
    }

    /// The next connection, a connection to shed, or the end of accepting.
    pub async fn next(&mut self, shared: &Shared) -> Accepted {
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                () = shared.draining.cancelled() => return Accepted::Draining,
            };
            match accepted {
                Ok((stream, peer)) => {
                    self.backoff = BACKOFF_MIN;
                    if self.spare.is_none() {
                        self.spare = spare();
                    }
                    return Accepted::Conn(stream, peer);
                }
                Err(e) => {
                    let exhausted = out_of_descriptors(&e);
                    // accept4 takes a descriptor before it looks at the queue, so EMFILE does
                    // not say a guest is waiting: give up the spare and look.
                    if exhausted && self.spare.is_none() {
                        // A descriptor may have come free since the spare was last spent.
                        self.spare = spare();
                    }
                    if exhausted && self.spare.take().is_some() {
                        // Taken on this thread, before any other task can take the descriptor.
                        match socket2::SockRef::from(&self.listener).accept() {
                            Ok((sock, _)) => {
                                shared.metrics.refusal(Kind::Overloaded);
                                self.log(&e, true);
                                let std: std::net::TcpStream = sock.into();
                                if std.set_nonblocking(true).is_ok()
                                    && let Ok(stream) = TcpStream::from_std(std)
                                {
                                    return Accepted::Shed(stream);
                                }
                            }
                            // Nobody waiting: keep the spare for when somebody is.
                            Err(_) => self.spare = spare(),
                        }
                    } else {
                        self.log(&e, exhausted);
                    }
                    tokio::select! {
                        () = tokio::time::sleep(self.backoff) => {}
                        () = shared.draining.cancelled() => return Accepted::Draining,
                    }
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn log(&self, e: &std::io::Error, exhausted: bool) {
        let Some(suppressed) = self.errors.check() else {
            return;
        };
        if exhausted {
            tracing::warn!(listener = self.what, error = %e, suppressed, "out of file descriptors: shedding guest connections (raise the process's RLIMIT_NOFILE or lower proxy.max_connections)");
        } else {
            tracing::warn!(listener = self.what, error = %e, suppressed, "accept failed");
        }
    }
}

/// The context of a newly accepted guest connection, holding one of the process's
/// `proxy.max_connections` slots; `None` (counted as `proxy_overloaded`, logged at most once
/// a second) when all are taken.
pub fn connection(
    shared: &Arc<Shared>,
    stream: &TcpStream,
    peer: SocketAddr,
) -> Option<Arc<ConnCtx>> {
    let _ = stream.set_nodelay(true);
    let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
        shared.metrics.refusal(Kind::Overloaded);
        if let Some(suppressed) = OVERLOADS.check() {
            tracing::warn!(client = %peer, suppressed, "at proxy.max_connections: refusing new guest connections with proxy_overloaded");
        }
        return None;
    };
    Some(Arc::new(ConnCtx {
        shared: shared.clone(),
        client: peer,
        permit: Arc::new(permit),
    }))
}
