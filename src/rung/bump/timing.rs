//! Timing the guest side of a bump session: request heads by `proxy.header_read_timeout`,
//! idle sessions by `proxy.idle_timeout`.
//!
//! hyper's HTTP/1 header timer starts as soon as the connection waits for a head, so on its
//! own it would also cut a keep-alive connection that is merely idle. [`HeadTimer`] is the
//! timer hyper's HTTP/1 server is given (it asks a timer for nothing but header timeouts):
//! its sleeps count `header_read_timeout` from the first byte read after they were armed
//! ([`GuestIo`] counts reads) and otherwise wait. Idleness (no request in flight, whatever the
//! protocol) is [`Activity::idle`]'s; the session closes gracefully when it fires. A session
//! whose first request has not begun `header_read_timeout` after the handshake (silent, or
//! only an HTTP/2 preface) is closed by [`Activity::no_request_within`]. HTTP/2
//! keep-alive pings are sent after `idle_timeout` without reads and only find dead peers.
//! A head whose first bytes arrived in the same read as the previous request's end is timed
//! as idle; the idle timeout still bounds it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::body::Body;
use crate::upstream::metered::Counted;

/// What a session's timers watch: requests in flight and reads from the guest.
#[derive(Debug, Default)]
pub struct Activity {
    inflight: AtomicUsize,
    changed: Notify,
    reads: AtomicU64,
    /// Requests ever begun on the session.
    begun: AtomicU64,
}

/// One request in flight, until its response body ends or is dropped.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

impl Activity {
    /// Marks a request in flight.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.begun.fetch_add(1, Ordering::SeqCst);
        self.inflight.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        Busy(self.clone())
    }

    /// Resolves once no request has been in flight for `after`.
    pub async fn idle(&self, after: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change between the two is not missed.
            changed.as_mut().enable();
            if self.inflight.load(Ordering::SeqCst) == 0 {
                tokio::select! {
                    () = tokio::time::sleep(after) => return,
                    () = &mut changed => {}
                }
            } else {
                changed.await;
            }
        }
    }

    /// Resolves when `within` has passed and no request has begun: a session that completed
    /// its handshake (or sent only the HTTP/2 preface) and then stays silent is held to the
    /// header timeout, not to the idle timeout meant for keep-alive between requests.
    /// Pends forever once a request has begun.
    pub async fn no_request_within(&self, within: Duration) {
        tokio::time::sleep(within).await;
        if self.begun.load(Ordering::SeqCst) == 0 {
            return;
        }
        std::future::pending::<()>().await;
    }

    fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }
}

/// A response body that keeps its request counted as in flight until it ends.
pub fn hold(body: Body, busy: Busy) -> Body {
    crate::body::boxed(Counted::new(body, Arc::default()).on_end(move |_| drop(busy)))
}

/// The guest's (decrypted) stream, counting reads that returned bytes.
#[derive(Debug)]
pub struct GuestIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> GuestIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        GuestIo { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuestIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.reads.fetch_add(1, Ordering::SeqCst);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuestIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The HTTP/1 header timer of a bump session.
#[derive(Clone, Debug)]
pub struct HeadTimer {
    activity: Arc<Activity>,
    header: Duration,
    /// How long a sleep waits for a first byte before firing anyway (a backstop: the idle
    /// watch closes an idle session first).
    backstop: Duration,
}

impl HeadTimer {
    pub fn new(activity: Arc<Activity>, header: Duration, idle: Duration) -> Self {
        HeadTimer {
            activity,
            header,
            backstop: idle.saturating_add(header),
        }
    }

    fn arm(&self) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadSleep {
            activity: self.activity.clone(),
            reads_at_arm: self.activity.reads(),
            header: self.header,
            started: false,
            sleep: Box::pin(tokio::time::sleep(self.backstop)),
        })
    }
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, _duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.arm()
    }

    fn sleep_until(&self, _deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.arm()
    }
}

/// Waits for the head's first byte, then `header`.
struct HeadSleep {
    activity: Arc<Activity>,
    reads_at_arm: u64,
    header: Duration,
    started: bool,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // hyper polls this right after every read that left the head incomplete.
        if !this.started && this.activity.reads() != this.reads_at_arm {
            this.started = true;
            this.sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + this.header);
        }
        this.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn head_sleep_counts_from_the_first_byte() {
        let activity = Arc::new(Activity::default());
        let timer = HeadTimer::new(activity.clone(), 200 * MS, Duration::from_secs(30));
        let mut sleep = timer.sleep_until(Instant::now());
        // Idle: longer than the header timeout passes without firing.
        tokio::time::sleep(400 * MS).await;
        assert!(futures_util::poll!(sleep.as_mut()).is_pending());
        // The first byte starts the header clock.
        activity.reads.fetch_add(1, Ordering::SeqCst);
        let t0 = Instant::now();
        assert!(futures_util::poll!(sleep.as_mut()).is_pending());
        sleep.await;
        let took = t0.elapsed();
        assert!(took >= 190 * MS && took < 1000 * MS, "{took:?}");
    }

    #[tokio::test]
    async fn idle_waits_for_no_request_in_flight() {
        let activity = Arc::new(Activity::default());
        let busy = activity.begin();
        let idle = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle(100 * MS).await }
        });
        tokio::time::sleep(300 * MS).await;
        assert!(!idle.is_finished(), "a request is in flight");
        drop(busy);
        let t0 = Instant::now();
        idle.await.unwrap();
        assert!(t0.elapsed() >= 90 * MS, "{:?}", t0.elapsed());
    }
}
