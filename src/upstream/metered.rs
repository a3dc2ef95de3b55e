//! Metering without buffering: a body wrapper that counts data bytes and runs a completion hook
//! once (a request's bytes and the moment its response finished or was abandoned), and a
//! stream wrapper that counts a connection's bytes each way (a bump session's).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// How a metered body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Its last frame was read.
    Complete,
    /// It yielded an error (the upstream reset or broke off mid-body).
    Failed,
    /// It was dropped unfinished (the guest went away, the session was cut, a hard stop).
    Abandoned,
}

type Hook = Box<dyn FnOnce(Ended) + Send + Sync>;

pub struct Counted<B> {
    inner: B,
    count: Arc<AtomicU64>,
    on_end: Option<Hook>,
    /// The inner body has nothing more to give: a drop now is not an abandonment.
    complete: bool,
}

impl<B> std::fmt::Debug for Counted<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl<B> Counted<B> {
    pub fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        Counted {
            inner,
            count,
            on_end: None,
            complete: false,
        }
    }

    fn finish(&mut self, how: Ended) {
        if let Some(h) = self.on_end.take() {
            h(how);
        }
    }
}

impl<B: Body> Counted<B> {
    /// Runs `hook` once, with how the body ended: read to its end, failed, or dropped
    /// unfinished.
    pub fn on_end(mut self, hook: impl FnOnce(Ended) + Send + Sync + 'static) -> Self {
        // An empty body (a 204, a HEAD answer) is never polled: it is complete already.
        self.complete = self.inner.is_end_stream();
        self.on_end = Some(Box::new(hook));
        self
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        let how = if self.complete {
            Ended::Complete
        } else {
            Ended::Abandoned
        };
        self.finish(how);
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.count.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                // Callers may stop polling once the body says it is at its end.
                if this.inner.is_end_stream() {
                    this.complete = true;
                    this.finish(Ended::Complete);
                }
            }
            Poll::Ready(None) => {
                this.complete = true;
                this.finish(Ended::Complete);
            }
            Poll::Ready(Some(Err(_))) => this.finish(Ended::Failed),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A byte stream that counts what is read (`up`: from the guest) and written (`down`: to the
/// guest), for the byte counts of a bump session's access event.
#[derive(Debug)]
pub struct CountedIo<T> {
    inner: T,
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl<T> CountedIo<T> {
    pub fn new(inner: T, read: Arc<AtomicU64>, written: Arc<AtomicU64>) -> Self {
        CountedIo {
            inner,
            read,
            written,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for CountedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &polled {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
