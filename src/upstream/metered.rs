//! A body wrapper that counts data bytes and runs a completion hook once.
//!
//! Lets a request's access event report real bytes each way and the duration until the
//! response body finished streaming (or was abandoned), without buffering anything.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

type Hook = Box<dyn FnOnce() + Send + Sync>;

pub struct Counted<B> {
    inner: B,
    count: Arc<AtomicU64>,
    on_end: Option<Hook>,
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
        }
    }

    /// Runs `hook` when the body ends, errors, or is dropped unfinished.
    pub fn on_end(mut self, hook: impl FnOnce() + Send + Sync + 'static) -> Self {
        self.on_end = Some(Box::new(hook));
        self
    }

    fn finish(&mut self) {
        if let Some(h) = self.on_end.take() {
            h();
        }
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        self.finish();
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
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(),
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
