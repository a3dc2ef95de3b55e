//! Redaction of injected credentials that the upstream reflects back to the sandbox.
//!
//! An upstream that echoes request headers (a debugging endpoint, `TRACE`, an error page that
//! quotes the request) would hand the real secret to the guest, which only ever holds a handle.
//! This module finds the secret in the response and masks it:
//!
//! - [`Reflection`] is built from the values injected for one request — the secret and, if the
//!   caller passes it, the full header value that carried it (e.g. `Basic dXNlcjpwdw==`). From
//!   each value it derives the forms to look for: the raw bytes; standard and URL-safe base64,
//!   padded and unpadded; the base64 characters the value determines when it sits at any byte
//!   offset inside a longer base64-encoded blob (e.g. a base64'd dump of all request headers);
//!   and the percent-encoded form (RFC 3986 unreserved bytes kept, every other byte `%XX`, once
//!   with upper-case and once with lower-case hex). Forms shorter than [`MIN_FORM_LEN`] bytes
//!   are dropped: too short to mask without hitting unrelated bytes, and too short to be worth
//!   much to a guest. A secret of at least 6 bytes always has a base64 form that long.
//! - [`Reflection::redact_headers`] replaces every occurrence in every response header value
//!   (raw bytes, UTF-8 or not) with `[redacted]`; header values may change length.
//! - [`RedactBody`] wraps the response body and masks every occurrence that *starts* within
//!   the first `limit` bytes with the same number of `*`, so `Content-Length` stays right. An
//!   occurrence that starts before the limit and ends after it is masked whole; one starting at
//!   or after the limit is not masked. Between frames it holds back at most
//!   `max_form_len - 1` bytes (an occurrence may be split across frames) and emits the rest of
//!   each frame at once; once past the window, frames (and trailers) pass through as they came,
//!   without copying. The number of redactions is reported once, through a hook, when the body
//!   ends, fails or is dropped.
//!
//! What it does not do: it does not decode anything — a compressed (`Content-Encoding`) body,
//! JSON or HTML escapes (`\/`, `\u00..`, `&#..;`), hex, mixed-case percent escapes, `+` for a
//! space, or any other transformation of the secret is not recognised. It does not look past
//! the body window (the window bounds cost; it is not a guarantee against an upstream that
//! pads its echo), nor at header names, the status line, or trailers. An occurrence that
//! overlaps another is masked as one region and counted once. A purely numeric secret is also
//! masked inside framing headers such as `Content-Length`. The matcher keeps the forms in
//! memory for as long as a [`Reflection`] (or a clone) lives; they are not zeroised. The
//! injector builds a [`Reflection`] per secret version; the request relay applies it.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use base64::Engine;
use base64::engine::GeneralPurpose;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};

/// Forms shorter than this many bytes are not searched for.
pub const MIN_FORM_LEN: usize = 8;

/// A body window that covers any response an echo endpoint plausibly returns for a request's
/// headers.
pub const DEFAULT_LIMIT: usize = 64 * 1024;

/// What a body occurrence is replaced with, byte for byte.
const MASK: u8 = b'*';

/// What a header-value occurrence is replaced with.
const HEADER_MASK: &[u8] = b"[redacted]";

/// Why a [`Reflection`] could not be built. Never carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum ReflectError {
    #[error("cannot build the reflection matcher: {0}")]
    Matcher(#[from] aho_corasick::BuildError),
}

/// The forms of the secret values in force for one request, ready to search for.
///
/// Cloning is cheap: clones share the matcher.
#[derive(Clone)]
pub struct Reflection {
    matcher: Option<AhoCorasick>,
    forms: usize,
    max_len: usize,
}

impl std::fmt::Debug for Reflection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reflection")
            .field("forms", &self.forms)
            .field("max_form_len", &self.max_len)
            .finish()
    }
}

impl Reflection {
    /// Derives the searched forms from each value (see the module docs): pass the secret and,
    /// when it differs, the whole header value that was injected.
    pub fn new(values: &[&[u8]]) -> Result<Reflection, ReflectError> {
        let mut forms = Vec::new();
        for v in values {
            forms_of(v, &mut forms);
        }
        forms.retain(|f| f.len() >= MIN_FORM_LEN);
        forms.sort_unstable();
        forms.dedup();
        let max_len = forms.iter().map(Vec::len).max().unwrap_or(0);
        let matcher = if forms.is_empty() {
            None
        } else {
            // A contiguous NFA is cheap to build per request; overlapping search needs
            // `Standard` semantics.
            Some(
                AhoCorasick::builder()
                    .kind(Some(AhoCorasickKind::ContiguousNFA))
                    .match_kind(MatchKind::Standard)
                    .build(&forms)?,
            )
        };
        let count = forms.len();
        for f in &mut forms {
            f.fill(0);
        }
        Ok(Reflection {
            matcher,
            forms: count,
            max_len,
        })
    }

    /// True when no form is long enough to search for: nothing will ever be redacted.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// The length of the longest searched form (0 when empty).
    pub fn max_form_len(&self) -> usize {
        self.max_len
    }

    /// Replaces every occurrence in every header value with `[redacted]`; returns how many
    /// were replaced. A value whose result would not be a valid header value is removed (not
    /// expected: only visible ASCII is inserted).
    pub fn redact_headers(&self, headers: &mut HeaderMap) -> usize {
        let Some(matcher) = &self.matcher else {
            return 0;
        };
        if !headers.values().any(|v| matches(matcher, v.as_bytes())) {
            return 0;
        }
        let mut count = 0;
        let mut spans = Vec::new();
        let mut name = None;
        for (n, value) in std::mem::take(headers) {
            if n.is_some() {
                name = n;
            }
            let Some(name) = &name else { continue };
            let bytes = value.as_bytes();
            self.spans(bytes, bytes.len(), &mut spans);
            if spans.is_empty() {
                headers.append(name.clone(), value);
                continue;
            }
            count += spans.len();
            let mut out = Vec::with_capacity(bytes.len() + spans.len() * HEADER_MASK.len());
            let mut at = 0;
            for &(s, e) in &spans {
                out.extend_from_slice(&bytes[at..s]);
                out.extend_from_slice(HEADER_MASK);
                at = e;
            }
            out.extend_from_slice(&bytes[at..]);
            if let Ok(mut v) = HeaderValue::from_bytes(&out) {
                v.set_sensitive(value.is_sensitive());
                headers.append(name.clone(), v);
            }
        }
        count
    }

    /// The merged (overlapping occurrences joined) spans of every occurrence in `hay` that
    /// starts before `start_bound`, in order.
    fn spans(&self, hay: &[u8], start_bound: usize, out: &mut Vec<(usize, usize)>) {
        out.clear();
        let Some(matcher) = &self.matcher else {
            return;
        };
        if start_bound == 0 {
            return;
        }
        match matcher.try_find_overlapping_iter(hay) {
            Ok(found) => out.extend(
                found
                    .filter(|m| m.start() < start_bound)
                    .map(|m| (m.start(), m.end())),
            ),
            // Cannot happen with the builder settings above; fail closed.
            Err(_) => out.push((0, hay.len())),
        }
        out.sort_unstable();
        let mut merged = 0;
        for i in 0..out.len() {
            let (s, e) = out[i];
            if merged > 0 && s < out[merged - 1].1 {
                out[merged - 1].1 = out[merged - 1].1.max(e);
            } else {
                out[merged] = (s, e);
                merged += 1;
            }
        }
        out.truncate(merged);
    }
}

fn matches(matcher: &AhoCorasick, hay: &[u8]) -> bool {
    match matcher.try_find_overlapping_iter(hay) {
        Ok(mut found) => found.next().is_some(),
        Err(_) => true,
    }
}

/// Every form of `v` (before the length filter).
fn forms_of(v: &[u8], out: &mut Vec<Vec<u8>>) {
    out.push(v.to_vec());
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        out.push(engine.encode(v).into_bytes());
    }
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for offset in 0..3 {
            out.push(embedded_base64(engine, v, offset));
        }
    }
    out.push(percent(v, b"0123456789ABCDEF"));
    out.push(percent(v, b"0123456789abcdef"));
}

/// The base64 characters fully determined by `v` when it starts `offset` bytes (mod 3) into a
/// longer encoded blob: a character covers bits `6i..6i+6` of the blob, and only those lying
/// entirely within `v`'s bits are fixed.
fn embedded_base64(engine: &GeneralPurpose, v: &[u8], offset: usize) -> Vec<u8> {
    let mut padded = vec![0u8; offset];
    padded.extend_from_slice(v);
    let encoded = engine.encode(&padded).into_bytes();
    let first = (8 * offset).div_ceil(6);
    let end = (8 * (offset + v.len()) / 6).min(encoded.len());
    padded.fill(0);
    encoded
        .get(first..end)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// `v` percent-encoded: RFC 3986 unreserved bytes kept, every other byte `%XX` with `hex`.
fn percent(v: &[u8], hex: &[u8; 16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 3);
    for &b in v {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', hex[usize::from(b >> 4)], hex[usize::from(b & 0xf)]]);
        }
    }
    out
}

type Hook = Box<dyn FnOnce(u64) + Send + Sync>;

/// The injected secret to keep out of one response: its matcher and its name (for the
/// redaction metric and audit event).
#[derive(Clone, Debug)]
pub struct Reflect {
    pub reflection: Reflection,
    pub secret: String,
}

/// A response body that masks reflected secrets within its first `limit` bytes, keeping its
/// length.
///
/// Frames are emitted as soon as they can no longer be the start of an occurrence; bytes
/// inside the window are copied once, bytes after it not at all. Inner errors pass through
/// (the held-back tail is discarded with them). The inner body must be `Unpin`, as hyper's
/// `Incoming` is.
pub struct RedactBody<B> {
    inner: B,
    reflection: Reflection,
    /// Occurrences starting before this stream offset are masked.
    limit: u64,
    /// Past this offset no byte can belong to an occurrence that starts before `limit`.
    scan_end: u64,
    /// Data bytes taken from `inner` so far.
    received: u64,
    /// Bytes not yet emitted because they could begin an occurrence; they end at `received`.
    held: BytesMut,
    /// A frame to emit before polling `inner` again.
    pending: Option<Frame<Bytes>>,
    /// Bytes before this stream offset that belong to an occurrence already counted.
    masked_until: u64,
    redactions: u64,
    inner_done: bool,
    on_redacted: Option<Hook>,
    spans: Vec<(usize, usize)>,
    /// Bytes handed to the matcher, to check that scanning stays linear.
    #[cfg(test)]
    searched: u64,
}

impl<B> std::fmt::Debug for RedactBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedactBody")
            .field("reflection", &self.reflection)
            .field("limit", &self.limit)
            .field("received", &self.received)
            .field("held", &self.held.len())
            .field("redactions", &self.redactions)
            .finish_non_exhaustive()
    }
}

impl<B> RedactBody<B> {
    /// Wraps `inner`, masking occurrences of `reflection`'s forms that start within its first
    /// `limit` bytes (see [`DEFAULT_LIMIT`]).
    pub fn new(inner: B, reflection: Reflection, limit: usize) -> Self {
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        let scan_end = match reflection.max_len {
            0 => 0,
            _ if limit == 0 => 0,
            n => limit.saturating_add(n as u64 - 1),
        };
        RedactBody {
            inner,
            reflection,
            limit,
            scan_end,
            received: 0,
            held: BytesMut::new(),
            pending: None,
            masked_until: 0,
            redactions: 0,
            inner_done: false,
            on_redacted: None,
            spans: Vec::new(),
            #[cfg(test)]
            searched: 0,
        }
    }

    /// Runs `hook` with the number of redactions, once, when the body ends, fails, or is
    /// dropped unfinished — only if there was at least one.
    pub fn on_redacted(mut self, hook: impl FnOnce(u64) + Send + Sync + 'static) -> Self {
        self.on_redacted = Some(Box::new(hook));
        self
    }

    /// Redactions so far.
    #[cfg(test)]
    pub fn redactions(&self) -> u64 {
        self.redactions
    }

    fn finish(&mut self) {
        if let Some(hook) = self.on_redacted.take()
            && self.redactions > 0
        {
            hook(self.redactions);
        }
    }

    /// Takes a data frame; returns what can be emitted now (possibly leaving a frame in
    /// `pending`), or `None` when everything was held back.
    /// `end`: the inner body has nothing after this frame, so nothing needs holding back.
    fn data(&mut self, data: Bytes, end: bool) -> Option<Bytes> {
        if self.received >= self.scan_end {
            self.received = self.received.saturating_add(data.len() as u64);
            return Some(data);
        }
        let room = usize::try_from(self.scan_end - self.received).unwrap_or(usize::MAX);
        let take = room.min(data.len());
        self.held.extend_from_slice(&data[..take]);
        self.received += take as u64;
        let out = self.scan(end || self.received >= self.scan_end);
        let rest = data.slice(take..);
        if !rest.is_empty() {
            self.received = self.received.saturating_add(rest.len() as u64);
            if out.is_empty() {
                return Some(rest);
            }
            self.pending = Some(Frame::data(rest));
        }
        (!out.is_empty()).then_some(out)
    }

    /// Searches the held bytes, counts new occurrences and splits off the masked prefix that
    /// can no longer be part of an unseen occurrence (all of it when `last`).
    fn scan(&mut self, last: bool) -> Bytes {
        let len = self.held.len();
        if len == 0 {
            return Bytes::new();
        }
        let base = self.received - len as u64;
        let keep = self.reflection.max_len.saturating_sub(1);
        let emit = if last { len } else { len.saturating_sub(keep) };
        // Occurrences starting before `emit` lie wholly within `held`; later ones are found
        // again next time, once more bytes have arrived.
        let bound = usize::try_from(self.limit.saturating_sub(base))
            .unwrap_or(usize::MAX)
            .min(emit);
        // Bytes at the front of `held` owed a mask by an occurrence counted earlier. `held`
        // stays unmasked so that overlapping occurrences are still found.
        let owed = usize::try_from(self.masked_until.saturating_sub(base))
            .unwrap_or(usize::MAX)
            .min(len);
        let mut spans = std::mem::take(&mut self.spans);
        self.reflection.spans(&self.held, bound, &mut spans);
        #[cfg(test)]
        {
            self.searched += len as u64;
        }
        for &(s, e) in &spans {
            if base + s as u64 >= self.masked_until {
                self.redactions += 1;
            }
            self.masked_until = self.masked_until.max(base + e as u64);
        }
        let mut out = self.held.split_to(emit);
        out[..owed.min(emit)].fill(MASK);
        for &(s, e) in &spans {
            out[s..e.min(emit)].fill(MASK);
        }
        self.spans = spans;
        out.freeze()
    }
}

impl<B> Drop for RedactBody<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B> Body for RedactBody<B>
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
        loop {
            if let Some(frame) = this.pending.take() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.inner_done {
                this.finish();
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => {
                    this.inner_done = true;
                    let out = this.scan(true);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                Some(Err(e)) => {
                    this.inner_done = true;
                    this.held.clear();
                    this.finish();
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        // The common small response is one frame: sent whole, in one write.
                        let end = this.inner.is_end_stream();
                        if let Some(out) = this.data(data, end) {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    // Trailers: the data before them is complete.
                    Err(frame) => {
                        let out = this.scan(true);
                        if out.is_empty() {
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        this.pending = Some(frame);
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none()
            && self.held.is_empty()
            && (self.inner_done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let pending = self
            .pending
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, Bytes::len);
        let extra = (self.held.len() + pending) as u64;
        let inner = if self.inner_done {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        };
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(extra));
        }
        hint.set_lower(inner.lower().saturating_add(extra));
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use futures_util::stream;
    use http_body_util::{BodyExt, Full, StreamBody};

    const SECRET: &[u8] = b"sk-live-0123456789abcdef";

    type Frames = Vec<Result<Frame<Bytes>, Infallible>>;
    type TestBody = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    fn body_of(chunks: &[&[u8]]) -> TestBody {
        frames(
            chunks
                .iter()
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect(),
        )
    }

    fn frames(frames: Frames) -> TestBody {
        StreamBody::new(stream::iter(frames))
    }

    fn reflection() -> Reflection {
        Reflection::new(&[SECRET]).unwrap()
    }

    fn stars(n: usize) -> Vec<u8> {
        vec![b'*'; n]
    }

    /// Runs `chunks` through a `RedactBody` and returns the body and the redaction count.
    async fn run(r: &Reflection, chunks: &[&[u8]], limit: usize) -> (Vec<u8>, u64) {
        let body = RedactBody::new(body_of(chunks), r.clone(), limit);
        let mut body = body;
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            out.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        (out, body.redactions())
    }

    fn expected(prefix: &[u8], hidden: usize, suffix: &[u8]) -> Vec<u8> {
        [prefix, &stars(hidden), suffix].concat()
    }

    #[tokio::test]
    async fn secret_in_one_frame() {
        let input = [b"{\"authorization\": \"Bearer ".as_slice(), SECRET, b"\"}"].concat();
        let (out, n) = run(&reflection(), &[&input], DEFAULT_LIMIT).await;
        assert_eq!(
            out,
            expected(b"{\"authorization\": \"Bearer ", SECRET.len(), b"\"}")
        );
        assert_eq!(n, 1);
    }

    #[tokio::test]
    async fn split_across_two_frames_at_every_offset() {
        let input = [b"head ".as_slice(), SECRET, b" tail"].concat();
        let want = expected(b"head ", SECRET.len(), b" tail");
        for i in 0..=input.len() {
            let (out, n) = run(&reflection(), &[&input[..i], &input[i..]], DEFAULT_LIMIT).await;
            assert_eq!(out, want, "split at {i}");
            assert_eq!(n, 1, "split at {i}");
        }
    }

    #[tokio::test]
    async fn split_across_three_frames_at_every_offset() {
        let input = [b"ab".as_slice(), SECRET, b"cd"].concat();
        let want = expected(b"ab", SECRET.len(), b"cd");
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let chunks = [&input[..i], &input[i..j], &input[j..]];
                let (out, n) = run(&reflection(), &chunks, DEFAULT_LIMIT).await;
                assert_eq!(out, want, "split at {i}, {j}");
                assert_eq!(n, 1, "split at {i}, {j}");
            }
        }
    }

    #[tokio::test]
    async fn base64_forms() {
        // Bytes whose base64 uses `+` and `/` (URL-safe `-` and `_`) and needs padding.
        let secret: &[u8] = b"\xfb\xff\xbfsecret\xfe\xff";
        let r = Reflection::new(&[secret]).unwrap();
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            let form = engine.encode(secret);
            let input = format!("x={form};");
            let (out, n) = run(&r, &[input.as_bytes()], DEFAULT_LIMIT).await;
            assert_eq!(out, expected(b"x=", form.len(), b";"), "{form}");
            assert_eq!(n, 1);
        }
        assert!(STANDARD.encode(secret).contains('+'));
        assert!(STANDARD.encode(secret).ends_with('='));
    }

    #[tokio::test]
    async fn base64_inside_a_longer_blob_at_any_offset() {
        let r = reflection();
        for lead in 0..6 {
            let mut blob = b"Authorization: Bearer ".to_vec();
            blob.truncate(blob.len() - lead);
            blob.extend_from_slice(SECRET);
            blob.extend_from_slice(b"\r\nAccept: */*\r\n");
            let encoded = STANDARD.encode(&blob);
            let (out, n) = run(&r, &[encoded.as_bytes()], DEFAULT_LIMIT).await;
            assert_eq!(n, 1, "lead {lead}");
            // Whatever survives decodes to something without the secret.
            let masked = String::from_utf8(out).unwrap();
            let left: Vec<&str> = masked.split('*').filter(|s| !s.is_empty()).collect();
            assert_eq!(left.len(), 2, "lead {lead}");
            assert_eq!(masked.len(), encoded.len());
            let stars = masked.bytes().filter(|b| *b == b'*').count();
            assert!(stars >= SECRET.len() * 4 / 3 - 1, "lead {lead}");
        }
    }

    #[tokio::test]
    async fn percent_encoded_forms() {
        let secret: &[u8] = b"p@ss/w0rd+key=xyz";
        let r = Reflection::new(&[secret]).unwrap();
        for form in ["p%40ss%2Fw0rd%2Bkey%3Dxyz", "p%40ss%2fw0rd%2bkey%3dxyz"] {
            let input = format!("/echo?token={form}&x=1");
            let (out, n) = run(&r, &[input.as_bytes()], DEFAULT_LIMIT).await;
            assert_eq!(
                out,
                expected(b"/echo?token=", form.len(), b"&x=1"),
                "{form}"
            );
            assert_eq!(n, 1);
        }
    }

    #[tokio::test]
    async fn base64_of_the_injected_basic_header_value() {
        let header = format!("Basic {}", STANDARD.encode(b"user:hunter22"));
        let r = Reflection::new(&[b"user:hunter22", header.as_bytes()]).unwrap();
        let echoed = STANDARD.encode(header.as_bytes());
        let input = format!("h={echoed}");
        let (out, n) = run(&r, &[input.as_bytes()], DEFAULT_LIMIT).await;
        assert_eq!(out, expected(b"h=", echoed.len(), b""));
        assert_eq!(n, 1);
        let (out, _) = run(&r, &[header.as_bytes()], DEFAULT_LIMIT).await;
        assert_eq!(out, stars(header.len()));
    }

    #[tokio::test]
    async fn occurrence_straddling_the_limit_is_masked_whole() {
        let limit = 100;
        for start in [limit - SECRET.len(), limit - 3, limit - 1] {
            let mut input = vec![b'.'; start];
            input.extend_from_slice(SECRET);
            input.extend_from_slice(b"after");
            let want = expected(&vec![b'.'; start], SECRET.len(), b"after");
            for split in [1, limit - 2, limit, limit + 5, input.len()] {
                let split = split.min(input.len());
                let chunks = [&input[..split], &input[split..]];
                let (out, n) = run(&reflection(), &chunks, limit).await;
                assert_eq!(out, want, "start {start}, split {split}");
                assert_eq!(n, 1);
            }
        }
    }

    #[tokio::test]
    async fn occurrence_starting_at_the_limit_is_untouched() {
        let limit = 100;
        let mut input = vec![b'.'; limit];
        input.extend_from_slice(SECRET);
        let (out, n) = run(&reflection(), &[&input[..60], &input[60..]], limit).await;
        assert_eq!(out, input);
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn frames_after_the_window_pass_through_uncopied() {
        let r = reflection();
        let window = Bytes::from(vec![b'a'; 200]);
        let later = Bytes::from([SECRET, b" stays"].concat());
        let mut body = RedactBody::new(
            frames(vec![
                Ok(Frame::data(window.clone())),
                Ok(Frame::data(later.clone())),
            ]),
            r,
            100,
        );
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            out.push(frame.unwrap().into_data().unwrap());
        }
        let last = out.last().unwrap();
        assert_eq!(last, &later);
        assert_eq!(last.as_ptr(), later.as_ptr(), "not copied");
        assert_eq!(out.concat(), [window.as_ref(), later.as_ref()].concat());
        assert_eq!(body.redactions(), 0);
    }

    #[tokio::test]
    async fn content_length_preserved() {
        let input = Bytes::from([b"123".as_slice(), SECRET, b"456", SECRET].concat());
        let body = RedactBody::new(Full::new(input.clone()), reflection(), DEFAULT_LIMIT);
        assert_eq!(body.size_hint().exact(), Some(input.len() as u64));
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(out.len(), input.len());
        assert_eq!(
            out.as_ref(),
            [
                b"123".as_slice(),
                &stars(SECRET.len()),
                b"456",
                &stars(SECRET.len())
            ]
            .concat()
        );
    }

    #[tokio::test]
    async fn size_hint_counts_held_bytes() {
        let r = reflection();
        let keep = r.max_form_len() - 1;
        let input = [b'.'; 60];
        let mut body = RedactBody::new(body_of(&[&input, b"end"]), r, 1000);
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), input.len() - keep);
        assert_eq!(body.held.len(), keep);
        assert!(body.size_hint().lower() >= keep as u64);
        assert!(!body.is_end_stream());
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest.len(), keep + 3);
    }

    #[tokio::test]
    async fn empty_body() {
        let (out, n) = run(&reflection(), &[], DEFAULT_LIMIT).await;
        assert!(out.is_empty());
        assert_eq!(n, 0);
        let (out, _) = run(&reflection(), &[b"", b""], DEFAULT_LIMIT).await;
        assert!(out.is_empty());
        let body = RedactBody::new(Full::new(Bytes::new()), reflection(), DEFAULT_LIMIT);
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn trailers_pass_after_the_held_tail() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let half = SECRET.len() / 2;
        let body = frames(vec![
            Ok(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::data(Bytes::copy_from_slice(&SECRET[..half]))),
            Ok(Frame::data(Bytes::copy_from_slice(&SECRET[half..]))),
            Ok(Frame::data(Bytes::from_static(b"tail"))),
            Ok(Frame::trailers(trailers.clone())),
        ]);
        let collected = RedactBody::new(body, reflection(), DEFAULT_LIMIT)
            .collect()
            .await
            .unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(
            collected.to_bytes().as_ref(),
            expected(b"x", SECRET.len(), b"tail")
        );
    }

    #[tokio::test]
    async fn near_misses_are_untouched() {
        let mut off_by_one = SECRET.to_vec();
        *off_by_one.last_mut().unwrap() ^= 1;
        let upper = SECRET.to_ascii_uppercase();
        let input = [
            &SECRET[..SECRET.len() - 1],
            b" ",
            &SECRET[1..],
            b" ",
            &off_by_one,
            b" ",
            &upper,
        ]
        .concat();
        let (out, n) = run(&reflection(), &[&input], DEFAULT_LIMIT).await;
        assert_eq!(out, input);
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn overlapping_occurrences_are_masked_whole() {
        let secret: &[u8] = b"abcabcab";
        let r = Reflection::new(&[secret]).unwrap();
        let input = b"<abcabcabcab>";
        for i in 0..=input.len() {
            let (out, n) = run(&r, &[&input[..i], &input[i..]], DEFAULT_LIMIT).await;
            assert_eq!(out, b"<***********>", "split at {i}");
            assert_eq!(n, 1, "split at {i}");
        }
    }

    #[tokio::test]
    async fn adjacent_occurrences_count_separately() {
        let input = [SECRET, SECRET, b"-", SECRET].concat();
        let (out, n) = run(&reflection(), &[&input], DEFAULT_LIMIT).await;
        let want = [stars(2 * SECRET.len()), b"-".to_vec(), stars(SECRET.len())].concat();
        assert_eq!(out, want);
        assert_eq!(n, 3);
    }

    #[test]
    fn short_forms_are_ignored() {
        assert!(Reflection::new(&[b"abc"]).unwrap().is_empty());
        assert!(Reflection::new(&[]).unwrap().is_empty());
        // Six bytes: the raw form is too short, its base64 (8 characters) is not.
        let r = Reflection::new(&[b"k3y-42"]).unwrap();
        assert!(!r.is_empty());
        let mut h = HeaderMap::new();
        h.insert("x-raw", HeaderValue::from_static("k3y-42"));
        h.insert("x-b64", HeaderValue::from_static("azN5LTQy"));
        assert_eq!(r.redact_headers(&mut h), 1);
        assert_eq!(h["x-raw"], "k3y-42");
        assert_eq!(h["x-b64"], "[redacted]");
    }

    #[tokio::test]
    async fn empty_reflection_passes_everything() {
        let r = Reflection::new(&[b"short"]).unwrap();
        let (out, n) = run(&r, &[b"short short"], DEFAULT_LIMIT).await;
        assert_eq!(out, b"short short");
        assert_eq!(n, 0);
    }

    #[test]
    fn headers_are_redacted() {
        let r = reflection();
        let secret = std::str::from_utf8(SECRET).unwrap();
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.append(
            "x-echo-authorization",
            HeaderValue::from_str(&format!("Bearer {secret}")).unwrap(),
        );
        h.append(
            "x-echo-authorization",
            HeaderValue::from_str(&format!("{secret},{secret}")).unwrap(),
        );
        h.insert(
            "x-echo-b64",
            HeaderValue::from_str(&STANDARD.encode(SECRET)).unwrap(),
        );
        assert_eq!(r.redact_headers(&mut h), 4);
        assert_eq!(h["content-type"], "application/json");
        let echoed: Vec<_> = h.get_all("x-echo-authorization").iter().collect();
        assert_eq!(echoed, ["Bearer [redacted]", "[redacted],[redacted]"]);
        assert_eq!(h["x-echo-b64"], "[redacted]");
        assert_eq!(h.len(), 4);
    }

    #[test]
    fn non_utf8_header_value_is_redacted() {
        let r = reflection();
        let raw = [b"\xff\xfe ".as_slice(), SECRET, b" \x80"].concat();
        let mut h = HeaderMap::new();
        h.insert("x-echo", HeaderValue::from_bytes(&raw).unwrap());
        assert_eq!(r.redact_headers(&mut h), 1);
        assert_eq!(h["x-echo"].as_bytes(), b"\xff\xfe [redacted] \x80");
    }

    #[test]
    fn headers_without_a_match_are_left_alone() {
        let r = reflection();
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("sk-live-0123456789abcdeX"));
        let before = h.clone();
        assert_eq!(r.redact_headers(&mut h), 0);
        assert_eq!(h, before);
    }

    #[test]
    fn debug_prints_no_secret() {
        let r = reflection();
        let shown = format!(
            "{r:?} {:?}",
            RedactBody::new(body_of(&[SECRET]), r.clone(), 10)
        );
        assert!(shown.contains("Reflection"));
        for form in [
            SECRET.to_vec(),
            STANDARD.encode(SECRET).into_bytes(),
            SECRET[..MIN_FORM_LEN].to_vec(),
        ] {
            let form = String::from_utf8(form).unwrap();
            assert!(!shown.contains(&form), "{shown}");
        }
    }

    #[tokio::test]
    async fn hook_runs_once_with_the_count() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(AtomicU64::new(0));
        let (c, s) = (calls.clone(), seen.clone());
        let input = [SECRET, b" and ", SECRET].concat();
        let mut body = RedactBody::new(body_of(&[&input]), reflection(), DEFAULT_LIMIT)
            .on_redacted(move |n| {
                c.fetch_add(1, Ordering::Relaxed);
                s.store(n, Ordering::Relaxed);
            });
        while body.frame().await.is_some() {}
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(seen.load(Ordering::Relaxed), 2);
        drop(body);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn hook_skipped_without_redactions_and_run_on_early_drop() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let body = RedactBody::new(body_of(&[b"nothing here"]), reflection(), DEFAULT_LIMIT)
            .on_redacted(move |_| {
                c.fetch_add(1, Ordering::Relaxed);
            });
        body.collect().await.unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 0);

        let c = calls.clone();
        let mut body = RedactBody::new(
            body_of(&[SECRET, b"more", b"and more"]),
            reflection(),
            DEFAULT_LIMIT,
        )
        .on_redacted(move |n| {
            assert_eq!(n, 1);
            c.fetch_add(1, Ordering::Relaxed);
        });
        let _ = body.frame().await;
        let _ = body.frame().await;
        assert_eq!(calls.load(Ordering::Relaxed), 0);
        drop(body);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn inner_error_passes_and_drops_the_held_tail() {
        #[derive(Debug, PartialEq)]
        struct Broken;
        let body = StreamBody::new(stream::iter(vec![
            Ok(Frame::data(Bytes::copy_from_slice(&SECRET[..10]))),
            Err(Broken),
        ]));
        let mut body = RedactBody::new(body, reflection(), DEFAULT_LIMIT);
        let mut data = Vec::new();
        let err = loop {
            match body.frame().await {
                Some(Ok(f)) => data.extend_from_slice(&f.into_data().unwrap()),
                Some(Err(e)) => break e,
                None => panic!("no error"),
            }
        };
        assert_eq!(err, Broken);
        assert!(SECRET.len() - 1 > 10 && data.is_empty());
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn ten_mib_without_a_match_is_linear_and_holds_only_the_tail() {
        let r = reflection();
        let keep = r.max_form_len() - 1;
        let chunk = Bytes::from(
            b"The quick brown fox jumps over the lazy dog; sk-live-0123 "
                .iter()
                .copied()
                .cycle()
                .take(16 * 1024 + 7)
                .collect::<Vec<u8>>(),
        );
        let total = 10 * 1024 * 1024;
        let count = total / chunk.len() + 1;
        let mut body = RedactBody::new(
            frames((0..count).map(|_| Ok(Frame::data(chunk.clone()))).collect()),
            r,
            usize::MAX,
        );
        let doubled = [chunk.as_ref(), chunk.as_ref()].concat();
        let mut emitted = 0;
        let mut polls = 0u64;
        let started = std::time::Instant::now();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(body.held.len() <= keep);
            assert!(body.pending.is_none());
            let at = emitted % chunk.len();
            // Output is the input, shifted by whatever was held back.
            assert!(data.as_ref() == &doubled[at..at + data.len()]);
            emitted += data.len();
            polls += 1;
        }
        assert_eq!(emitted, count * chunk.len());
        assert_eq!(body.redactions(), 0);
        // Each byte is searched once, plus at most the held tail again per frame.
        assert!(body.searched <= (emitted + count * keep) as u64);
        assert!(polls >= count as u64);
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
    }
}
