//! Coalescing a relayed response body's chunks that are already there into one, so the guest
//! leg writes fewer, larger frames and TLS records than the upstream sent.
//!
//! An HTTP/2 upstream hands its body over in DATA frames as it framed them (nginx: 8 KiB);
//! relayed one by one, each becomes a frame, a TLS record and a `write(2)` towards the guest.
//! [`Coalesce`] joins chunks only while the inner body has the next one ready at once, up to
//! [`COALESCE_LIMIT`] bytes: it never waits for data, so a streamed response (server-sent
//! events, a slow download) reaches the guest exactly as soon as before. A chunk already as
//! large as the limit, trailers and errors pass through untouched, in order. It counts,
//! meters and decides nothing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

/// The most bytes one coalesced chunk carries: a few TLS records' worth, so joining saves
/// frames and writes without holding a large buffer per stream.
pub const COALESCE_LIMIT: usize = 64 * 1024;

/// What was read past the chunk being returned, to be returned next.
#[derive(Debug)]
enum Held<E> {
    Frame(Frame<Bytes>),
    Error(E),
}

/// A body that joins its inner body's immediately available data chunks.
#[derive(Debug)]
pub struct Coalesce<B: Body> {
    inner: B,
    held: Option<Held<B::Error>>,
    /// The inner body has ended (returned `None`).
    done: bool,
    limit: usize,
}

// Nothing in it is pinned structurally: `inner` is `Unpin` (required below) and the held
// frame or error is only ever moved out whole.
impl<B: Body> Unpin for Coalesce<B> where B: Unpin {}

impl<B: Body> Coalesce<B> {
    pub fn new(inner: B) -> Self {
        Self::with_limit(inner, COALESCE_LIMIT)
    }

    pub fn with_limit(inner: B, limit: usize) -> Self {
        Coalesce {
            inner,
            held: None,
            done: false,
            limit,
        }
    }
}

impl<B> Body for Coalesce<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let first = match this.held.take() {
            Some(Held::Frame(f)) => f,
            Some(Held::Error(e)) => return Poll::Ready(Some(Err(e))),
            None if this.done => return Poll::Ready(None),
            None => match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => f,
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                other => return other,
            },
        };
        let first = match first.into_data() {
            Ok(d) if d.len() < this.limit && !this.done => d,
            Ok(d) => return Poll::Ready(Some(Ok(Frame::data(d)))),
            Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
        };
        let mut joined: Option<BytesMut> = None;
        let mut len = first.len();
        while len < this.limit {
            let next = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => {
                    this.done = true;
                    break;
                }
                Poll::Ready(Some(Err(e))) => {
                    this.held = Some(Held::Error(e));
                    break;
                }
                Poll::Ready(Some(Ok(f))) => f,
            };
            match next.into_data() {
                Ok(d) if len + d.len() <= this.limit => {
                    let buf = joined.get_or_insert_with(|| {
                        let mut b = BytesMut::with_capacity(this.limit);
                        b.extend_from_slice(&first);
                        b
                    });
                    buf.extend_from_slice(&d);
                    len += d.len();
                }
                Ok(d) => {
                    this.held = Some(Held::Frame(Frame::data(d)));
                    break;
                }
                Err(trailers) => {
                    this.held = Some(Held::Frame(trailers));
                    break;
                }
            }
        }
        let data = match joined {
            Some(b) => b.freeze(),
            None => first,
        };
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && (self.done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            return match &self.held {
                Some(Held::Frame(f)) => {
                    SizeHint::with_exact(f.data_ref().map_or(0, |d| d.len() as u64))
                }
                _ => SizeHint::with_exact(0),
            };
        }
        let mut hint = self.inner.size_hint();
        if let Some(Held::Frame(f)) = &self.held
            && let Some(d) = f.data_ref()
        {
            let n = d.len() as u64;
            let upper = hint.upper().map(|u| u.saturating_add(n));
            let lower = hint.lower().saturating_add(n);
            hint = SizeHint::new();
            hint.set_lower(lower);
            if let Some(u) = upper {
                hint.set_upper(u);
            }
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;

    use http_body_util::BodyExt;

    use super::*;

    type Step = Poll<Option<Result<Frame<Bytes>, &'static str>>>;

    /// A body that plays back a script of polls, `Pending` included.
    struct Script(VecDeque<Step>);

    impl Body for Script {
        type Data = Bytes;
        type Error = &'static str;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
            self.get_mut().0.pop_front().unwrap_or(Poll::Ready(None))
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn data(s: &str) -> Step {
        Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(s.as_bytes())))))
    }

    fn trailers() -> Step {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        Poll::Ready(Some(Ok(Frame::trailers(t))))
    }

    /// What each poll of `Coalesce` returns, as text, until it ends or has polled `max` times.
    fn outputs(script: Vec<Step>, limit: usize, max: usize) -> Vec<String> {
        let mut body = Coalesce::with_limit(Script(script.into()), limit);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        for _ in 0..max {
            let shown = match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Pending => "pending".to_owned(),
                Poll::Ready(None) => {
                    out.push("end".to_owned());
                    break;
                }
                Poll::Ready(Some(Err(e))) => format!("error {e}"),
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(d) => format!("data {}", String::from_utf8_lossy(&d)),
                    Err(f) => format!("trailers {}", f.trailers_ref().map_or(0, |t| t.len())),
                },
            };
            out.push(shown);
        }
        out
    }

    #[test]
    fn joins_what_is_ready_and_never_waits_for_more() {
        let p = || Poll::Pending;
        let cases: Vec<(&str, Vec<Step>, usize, Vec<&str>)> = vec![
            (
                "ready chunks are joined",
                vec![data("ab"), data("cd"), data("ef")],
                64,
                vec!["data abcdef", "end"],
            ),
            (
                "a pending inner body releases what was gathered at once",
                vec![data("ab"), p(), data("cd"), data("ef"), p(), data("g")],
                64,
                // Each `Pending` is met inside the poll that returns what came before it.
                vec!["data ab", "data cdef", "data g", "end"],
            ),
            (
                "the limit splits, and the chunk that did not fit comes next",
                vec![data("abc"), data("def"), data("gh"), data("i")],
                5,
                vec!["data abc", "data defgh", "data i", "end"],
            ),
            (
                "a chunk as large as the limit passes alone",
                vec![data("abcde"), data("f")],
                5,
                vec!["data abcde", "data f", "end"],
            ),
            (
                "trailers follow the data they came after",
                vec![data("ab"), data("cd"), trailers()],
                64,
                vec!["data abcd", "trailers 1", "end"],
            ),
            (
                "an error is reported after the data before it",
                vec![data("ab"), data("cd"), Poll::Ready(Some(Err("cut")))],
                64,
                vec!["data abcd", "error cut", "end"],
            ),
            ("an empty body ends", vec![], 64, vec!["end"]),
        ];
        for (name, script, limit, want) in cases {
            assert_eq!(outputs(script, limit, 16), want, "{name}");
        }
    }

    #[test]
    fn end_and_size_stay_exact() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let full = http_body_util::Full::new(Bytes::from_static(b"0123456789"))
            .map_err(|never: Infallible| match never {});
        let mut body = Coalesce::with_limit(full, 4);
        assert_eq!(body.size_hint().exact(), Some(10));
        let Poll::Ready(Some(Ok(f))) = Pin::new(&mut body).poll_frame(&mut cx) else {
            panic!("a frame");
        };
        assert_eq!(f.into_data().map(|d| d.len()).ok(), Some(10));
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));

        // A chunk held back counts towards what is left.
        let mut body = Coalesce::with_limit(
            Script(vec![data("abc"), data("def"), Poll::Pending].into()),
            4,
        );
        let _ = Pin::new(&mut body).poll_frame(&mut cx);
        assert!(!body.is_end_stream());
        assert!(body.size_hint().lower() >= 3, "{:?}", body.size_hint());
    }
}
