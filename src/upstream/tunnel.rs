//! Byte splicing between the guest and an upstream, with idle timeout and byte counts.
//!
//! Used by the pass-through rung (after the SNI check; [`splice_tcp`], both sides plain TCP)
//! and by upgraded bumped requests (WebSocket; [`splice`], any streams). Each direction
//! half-closes independently; the tunnel ends when both are done, when nothing moved for the
//! idle timeout, at hard shutdown, or when the kill switch fires. This module does not look
//! at the bytes.
//!
//! Memory: [`splice_tcp`] waits for readiness without a buffer and takes one only while bytes
//! are there to move, so an idle tunnel holds no copy buffer at all (thousands of idle
//! tunnels are the normal state of a busy sandbox host).

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;

const BUF: usize = 64 * 1024;

/// Why a tunnel ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides finished.
    Closed,
    IdleTimeout,
    Shutdown,
    KillSwitch,
    /// The unit's sandbox was removed.
    SandboxRemoved,
    /// An I/O error on either side (reset, broken pipe).
    Error,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "ok",
            End::IdleTimeout => "idle_timeout",
            End::Shutdown => "shutdown",
            End::KillSwitch => "kill_switch",
            End::SandboxRemoved => "sandbox_removed",
            End::Error => "io_error",
        }
    }
}

#[derive(Debug)]
pub struct Spliced {
    /// Guest to upstream.
    pub up: u64,
    /// Upstream to guest.
    pub down: u64,
    pub end: End,
}

/// What ends a unit on the operator's word: the kill switch (taken when the unit started, so
/// a unit admitted just before the switch cannot outlive it), and the removal of the unit's
/// sandbox.
#[derive(Clone, Debug)]
pub struct Kill {
    switch: CancellationToken,
    sandbox: Option<CancellationToken>,
}

impl Kill {
    pub fn new(switch: CancellationToken) -> Kill {
        Kill {
            switch,
            sandbox: None,
        }
    }

    /// Also ends the unit when `removed` fires.
    pub fn with_sandbox(mut self, removed: CancellationToken) -> Kill {
        self.sandbox = Some(removed);
        self
    }

    /// Resolves when either signal fires, saying which.
    pub async fn fired(&self) -> End {
        match &self.sandbox {
            None => {
                self.switch.cancelled().await;
                End::KillSwitch
            }
            Some(removed) => tokio::select! {
                () = self.switch.cancelled() => End::KillSwitch,
                () = removed.cancelled() => End::SandboxRemoved,
            },
        }
    }

    /// Which signal has fired, if any.
    pub fn state(&self) -> Option<End> {
        if self.switch.is_cancelled() {
            Some(End::KillSwitch)
        } else if self.sandbox.as_ref().is_some_and(|s| s.is_cancelled()) {
            Some(End::SandboxRemoved)
        } else {
            None
        }
    }
}

/// Stop signals a tunnel obeys.
#[derive(Clone, Debug)]
pub struct Stops {
    pub idle: Duration,
    pub shutdown: CancellationToken,
    pub kill: Kill,
}

/// What both directions of one tunnel share: byte counts, the last time bytes moved, and
/// whether one side has finished.
struct Meter {
    start: Instant,
    last: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
    half_closed: AtomicBool,
}

impl Meter {
    fn new() -> Meter {
        Meter {
            start: Instant::now(),
            last: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            half_closed: AtomicBool::new(false),
        }
    }

    fn moved(&self, count: &AtomicU64, n: usize) {
        count.fetch_add(n as u64, Ordering::Relaxed);
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Runs both directions until they are done or a stop fires.
    async fn run(
        &self,
        a: impl Future<Output = io::Result<()>>,
        b: impl Future<Output = io::Result<()>>,
        stops: &Stops,
    ) -> Spliced {
        let both = async {
            match tokio::try_join!(a, b) {
                Ok(_) => End::Closed,
                // Once one side has finished, a reset or broken pipe on the other is how many
                // peers close (no lingering, no TLS close_notify): the tunnel did its job.
                Err(e) if self.half_closed.load(Ordering::Relaxed) && is_closing(&e) => End::Closed,
                Err(_) => End::Error,
            }
        };
        let end = tokio::select! {
            end = both => end,
            () = idle_watch(&self.last, stops.idle, self.start) => End::IdleTimeout,
            () = stops.shutdown.cancelled() => End::Shutdown,
            end = stops.kill.fired() => end,
        };
        Spliced {
            up: self.up.load(Ordering::Relaxed),
            down: self.down.load(Ordering::Relaxed),
            end,
        }
    }
}

/// Splices any two streams (an upgraded bumped request and its upstream).
pub async fn splice<G, U>(guest: G, upstream: U, stops: &Stops) -> Spliced
where
    G: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let meter = Meter::new();
    let (mut gr, mut gw) = tokio::io::split(guest);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let a = pump(&mut gr, &mut uw, &meter.up, &meter);
    let b = pump(&mut ur, &mut gw, &meter.down, &meter);
    meter.run(a, b, stops).await
}

/// Splices two TCP connections (the pass-through rung).
pub async fn splice_tcp(guest: TcpStream, upstream: TcpStream, stops: &Stops) -> Spliced {
    let meter = Meter::new();
    let (gr, mut gw) = guest.into_split();
    let (ur, mut uw) = upstream.into_split();
    let a = pump_tcp(&gr, &mut uw, &meter.up, &meter);
    let b = pump_tcp(&ur, &mut gw, &meter.down, &meter);
    meter.run(a, b, stops).await
}

/// One direction of [`splice_tcp`]: wait until `r` is readable holding nothing, then move
/// what is there through a buffer that lives only until the socket would block again.
async fn pump_tcp(
    r: &OwnedReadHalf,
    w: &mut OwnedWriteHalf,
    count: &AtomicU64,
    meter: &Meter,
) -> io::Result<()> {
    loop {
        r.readable().await?;
        // Not zeroed: `try_read_buf` fills the spare capacity and reports what it wrote.
        let mut buf: Vec<u8> = Vec::with_capacity(BUF);
        loop {
            buf.clear();
            match r.try_read_buf(&mut buf) {
                Ok(0) => {
                    meter.half_closed.store(true, Ordering::Relaxed);
                    let _ = w.shutdown().await;
                    return Ok(());
                }
                Ok(n) => {
                    w.write_all(&buf[..n]).await?;
                    meter.moved(count, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Errors that mean "the peer went away", not "something broke".
pub fn is_closing(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionReset
            | K::BrokenPipe
            | K::UnexpectedEof
            | K::NotConnected
            | K::ConnectionAborted
    )
}

async fn pump<R, W>(r: &mut R, w: &mut W, count: &AtomicU64, meter: &Meter) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            // Half-close: the other direction may still be streaming (a download after the
            // request body ended).
            meter.half_closed.store(true, Ordering::Relaxed);
            let _ = w.shutdown().await;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        meter.moved(count, n);
    }
}

async fn idle_watch(last: &AtomicU64, idle: Duration, start: Instant) {
    let idle_ms = idle.as_millis() as u64;
    loop {
        let since =
            (start.elapsed().as_millis() as u64).saturating_sub(last.load(Ordering::Relaxed));
        if since >= idle_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(idle_ms - since)).await;
    }
}
