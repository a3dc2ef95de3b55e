//! Coalescing a relayed response body's chunks that are already there into one, so the guest
//! leg writes fewer, larger frames and TLS records than the upstream sent.
//!
//! An HTTP/2 upstream hands its body over in DATA frames as it framed them (nginx: 8 KiB);
//! relayed one by one, each becomes a frame, a TLS record and a `write(2)` towards the guest.
//! [`Coalesce`] joins chunks only while the inner body has the next one ready at once, up to
//! [`COALESCE_LIMIT`] bytes: it never waits for data, so a streamed response (server-sent
//! events, a slow download) reaches the guest exactly as soon as before. Trailers and errors
//! pass through untouched, in order.
//!
//! Towards an HTTP/2 guest ([`Coalesce::for_h2_guest`]) chunks are also cut to
//! [`H2_RECORD_DATA`] bytes: each becomes one DATA frame whose 9-byte header and payload fill
//! one full 16 KiB TLS record, where a 16 KiB chunk would be sent as a full record plus a
//! 9-byte one. Towards an HTTP/1.1 guest a chunk at or over the limit passes whole. It counts,
//! meters and decides nothing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

/// The most bytes one coalesced chunk carries: a few TLS records' worth, so joining saves
/// frames and writes without holding a large buffer per stream.
pub const COALESCE_LIMIT: usize = 64 * 1024;

/// The DATA payload that, with its 9-byte HTTP/2 frame header, fills one TLS record of the
/// largest plaintext size (16 KiB); no peer's maximum frame size is smaller.
pub const H2_RECORD_DATA: usize = 16 * 1024 - 9;

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
    /// The inner body has ended (returned `None`) or failed.
    done: bool,
    limit: usize,
    /// Cut chunks over `limit` to `limit` (and fill joined chunks up to it exactly).
    cut: bool,
}

// Nothing in it is pinned structurally: `inner` is `Unpin` (required below) and the held
// frame or error is only ever moved out whole.
impl<B: Body> Unpin for Coalesce<B> where B: Unpin {}

impl<B: Body> Coalesce<B> {
    pub fn new(inner: B) -> Self {
        Self::with_limit(inner, COALESCE_LIMIT)
    }

    /// Chunks sized for an HTTP/2 guest: each one DATA frame filling one TLS record.
    pub fn for_h2_guest(inner: B) -> Self {
        Coalesce {
            cut: true,
            ..Self::with_limit(inner, H2_RECORD_DATA)
        }
    }

    pub fn with_limit(inner: B, limit: usize) -> Self {
        Coalesce {
            inner,
            held: None,
            done: false,
            limit: limit.max(1),
            cut: false,
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
            // Nothing is read past an error.
            Some(Held::Error(e)) => {
                this.done = true;
                return Poll::Ready(Some(Err(e)));
            }
            None if this.done => return Poll::Ready(None),
            None => match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => f,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            },
        };
        let first = match first.into_data() {
            Ok(d) if d.len() < this.limit => d,
            Ok(mut d) => {
                if this.cut && d.len() > this.limit {
                    this.held = Some(Held::Frame(Frame::data(d.split_off(this.limit))));
                }
                return Poll::Ready(Some(Ok(Frame::data(d))));
            }
            Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
        };
        // The chunks to join, copied once into a buffer of exactly their size.
        let mut parts: Vec<Bytes> = Vec::new();
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
                    len += d.len();
                    parts.push(d);
                }
                Ok(mut d) => {
                    if this.cut {
                        // Fill this chunk to the limit; the rest starts the next one.
                        parts.push(d.split_to(this.limit - len));
                        len = this.limit;
                    }
                    this.held = Some(Held::Frame(Frame::data(d)));
                    break;
                }
                Err(trailers) => {
                    this.held = Some(Held::Frame(trailers));
                    break;
                }
            }
        }
        if parts.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let mut joined = BytesMut::with_capacity(len);
        joined.extend_from_slice(&first);
        for p in &parts {
            joined.extend_from_slice(p);
        }
        Poll::Ready(Some(Ok(Frame::data(joined.freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && (self.done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        // Nothing is ever held once the inner body is done: a frame is held only when a poll
        // stops short of the inner body's end, and an error ends it as it is returned.
        if self.done {
            return SizeHint::with_exact(0);
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
        shown(Coalesce::with_limit(Script(script.into()), limit), max)
    }

    fn shown(mut body: Coalesce<Script>, max: usize) -> Vec<String> {
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
    fn for_an_h2_guest_chunks_are_cut_to_fill_records() {
        let cut = |script: Vec<Step>, limit: usize| {
            let mut body = Coalesce::for_h2_guest(Script(script.into()));
            body.limit = limit;
            shown(body, 16)
        };
        let cases: Vec<(&str, Vec<Step>, Vec<&str>)> = vec![
            (
                "an oversized chunk is cut",
                vec![data("abcdefghij")],
                vec!["data abcd", "data efgh", "data ij", "end"],
            ),
            (
                "joined chunks are filled to the limit exactly",
                vec![data("ab"), data("cdef"), data("g")],
                vec!["data abcd", "data efg", "end"],
            ),
            (
                "a pending body still releases a short chunk at once",
                vec![data("ab"), Poll::Pending, data("cdefgh")],
                vec!["data ab", "data cdef", "data gh", "end"],
            ),
            (
                "trailers after a cut chunk come after all of it",
                vec![data("abcdef"), trailers()],
                vec!["data abcd", "data ef", "trailers 1", "end"],
            ),
        ];
        for (name, script, want) in cases {
            assert_eq!(cut(script, 4), want, "{name}");
        }
        // The size: one full 16 KiB TLS record per frame, header included.
        assert_eq!(H2_RECORD_DATA + 9, 16 * 1024);
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

    #[test]
    fn a_joined_chunk_holds_no_more_memory_than_its_bytes() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut body = Coalesce::new(Script(vec![data("ab"), data("cd")].into()));
        let Poll::Ready(Some(Ok(f))) = Pin::new(&mut body).poll_frame(&mut cx) else {
            panic!("a frame");
        };
        let joined = f.into_data().unwrap_or_default();
        assert_eq!(&joined[..], b"abcd");
        // Converting back to `BytesMut` shows the allocation behind it: the probe itself sees
        // spare room where there is some, and the joined chunk has none.
        let mut roomy = BytesMut::with_capacity(1024);
        roomy.extend_from_slice(b"abcd");
        assert_eq!(BytesMut::from(roomy.freeze()).capacity(), 1024);
        assert_eq!(BytesMut::from(joined).capacity(), 4);
    }

    #[test]
    fn nothing_is_read_past_an_error() {
        let script = vec![Poll::Ready(Some(Err("cut"))), data("after the error")];
        assert_eq!(outputs(script, 64, 8), vec!["error cut", "end"]);
        let script = vec![data("ab"), Poll::Ready(Some(Err("cut"))), data("later")];
        assert_eq!(outputs(script, 64, 8), vec!["data ab", "error cut", "end"]);
    }
}
