//! A request body the relay can cut off once the guest's response is complete.
//!
//! An upstream may answer before it has read the whole request body (a 413 to an upload, an
//! early 200). Until the proxy lets go of the guest's body, the pooled client keeps it and
//! stops polling it while the upstream does not read, so an HTTP/2 guest's upload stalls on
//! flow control and never ends. [`Cutter::cut`] takes the guest's body back and makes the
//! upstream side fail, so the upstream request is aborted rather than completed short (an
//! HTTP/1.1 upstream connection is closed, an HTTP/2 stream reset). The caller hands the body
//! to [`drain`]: it reads and discards what the guest still sends for a short grace (many
//! clients stop an upload by themselves once they have a final response, and a small
//! remainder then ends cleanly), then drops it, which makes hyper reset the guest's stream
//! with `NO_ERROR` (RFC 9113 §8.1). A body that already ended is left alone.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::BoxError;

/// Why the upstream request body stopped: the response had already been relayed.
#[derive(Debug, thiserror::Error)]
#[error(
    "the response was complete before the request body; the rest of the upload was not relayed"
)]
pub struct Cut;

#[derive(Debug)]
enum State<B> {
    Open(B),
    Ended,
    Cut,
}

#[derive(Debug)]
struct Slot<B> {
    state: State<B>,
    /// The task polling the body, woken by a cut (the guest body it waited on is gone).
    waker: Option<Waker>,
}

type Shared<B> = Arc<Mutex<Slot<B>>>;

fn lock<B>(s: &Shared<B>) -> MutexGuard<'_, Slot<B>> {
    // A panic while holding the lock leaves a valid state behind.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// The body handed to the upstream client.
#[derive(Debug)]
pub struct Cuttable<B> {
    shared: Shared<B>,
}

/// Cuts the paired [`Cuttable`].
#[derive(Debug)]
pub struct Cutter<B> {
    shared: Shared<B>,
}

/// Wraps `body`; the [`Cutter`] ends it early.
pub fn cuttable<B>(body: B) -> (Cuttable<B>, Cutter<B>) {
    let shared = Arc::new(Mutex::new(Slot {
        state: State::Open(body),
        waker: None,
    }));
    (
        Cuttable {
            shared: shared.clone(),
        },
        Cutter { shared },
    )
}

impl<B: Body> Cutter<B> {
    /// Takes the body back if it has not ended, and fails its next poll on the upstream side.
    pub fn cut(&self) -> Option<B> {
        let (body, waker) = {
            let mut slot = lock(&self.shared);
            match &slot.state {
                State::Open(b) if !b.is_end_stream() => {}
                // Nothing left to send (a GET, or an upload the client finished sending).
                State::Open(_) => {
                    let ended = std::mem::replace(&mut slot.state, State::Ended);
                    drop(slot);
                    drop(ended);
                    return None;
                }
                State::Ended | State::Cut => return None,
            }
            let body = std::mem::replace(&mut slot.state, State::Cut);
            (body, slot.waker.take())
        };
        if let Some(w) = waker {
            w.wake();
        }
        match body {
            State::Open(b) => Some(b),
            State::Ended | State::Cut => None,
        }
    }
}

/// Reads and discards the rest of a cut-off body for at most `grace`, then drops it.
pub async fn drain<B>(mut body: B, grace: Duration)
where
    B: Body + Unpin,
{
    let _ = tokio::time::timeout(grace, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

impl<B> Drop for Cuttable<B> {
    fn drop(&mut self) {
        // The client let go of the body: release the guest's body with it.
        let body = std::mem::replace(&mut lock(&self.shared).state, State::Ended);
        drop(body);
    }
}

impl<B> Body for Cuttable<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut slot = lock(&self.shared);
        let polled = match &mut slot.state {
            State::Open(body) => Pin::new(body).poll_frame(cx),
            State::Ended => return Poll::Ready(None),
            State::Cut => return Poll::Ready(Some(Err(Box::new(Cut)))),
        };
        match polled {
            Poll::Pending => {
                if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    slot.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                slot.state = State::Ended;
                Poll::Ready(None)
            }
            Poll::Ready(Some(r)) => Poll::Ready(Some(r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &lock(&self.shared).state {
            State::Open(b) => b.is_end_stream(),
            State::Ended => true,
            State::Cut => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &lock(&self.shared).state {
            State::Open(b) => b.size_hint(),
            State::Ended | State::Cut => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    type Chunks = tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::convert::Infallible>>;

    fn channel_body(
        mut rx: Chunks,
    ) -> impl Body<Data = Bytes, Error = std::convert::Infallible> + Unpin {
        StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    #[tokio::test]
    async fn a_cut_wakes_the_poller_fails_the_body_and_drops_the_inner_one() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let (mut body, cutter) = cuttable(channel_body(rx));
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        let reader = tokio::spawn(async move { body.frame().await.map(|r| r.is_err()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let rest = cutter.cut().expect("the body had not ended");
        assert_eq!(
            reader.await.unwrap(),
            Some(true),
            "the cut surfaces as an error"
        );
        // The rest is drained for the grace, then dropped.
        tx.send(Ok(Frame::data(Bytes::from_static(b"b"))))
            .await
            .unwrap();
        drain(rest, Duration::from_millis(50)).await;
        assert!(tx.is_closed(), "the inner body is dropped after the grace");
    }

    #[tokio::test]
    async fn an_empty_body_is_not_cut() {
        let (body, cutter) = cuttable(http_body_util::Empty::<Bytes>::new());
        assert!(cutter.cut().is_none());
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn a_finished_body_is_not_cut() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let (mut body, cutter) = cuttable(channel_body(rx));
        drop(tx);
        assert!(body.frame().await.is_none());
        assert!(cutter.cut().is_none());
        assert!(body.frame().await.is_none());
    }
}
