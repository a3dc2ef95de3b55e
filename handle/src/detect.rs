//! Finding handles in request bytes and in log text, so that a handle never reaches an
//! upstream unnoticed and never appears whole in a log line.
//!
//! # What [`scan`] does
//!
//! [`scan`] takes raw bytes (a method, a header value, a URI; not necessarily UTF-8) and
//! reports every *candidate*: anything carrying the handle prefix `eeh_` in **any letter case**
//! (`eeh_`, `EEH_`, `eEh_`, …), wherever it is, even inside a word. A candidate runs from the
//! prefix over the following base64url characters and `.`; any other byte (space, `,`, `;`,
//! `"`, `'`, `&`, `/`, `?`, `#`, `=`, `:`, `%`, a control or non-ASCII byte) or the end of the
//! input ends it. It looks in three places:
//!
//! - the bytes as given ([`Origin::Raw`]);
//! - the bytes after percent-decoding, repeated up to [`PERCENT_LAYERS`] times
//!   ([`Origin::PercentDecoded`]): a prefix with encoded characters (`%65eh_`, `eeh%5F`,
//!   `%45%45%48%5F`, `%2565eh_`), an encoded `.` (`%2E`/`%2e`) or any other encoded piece.
//!   Only candidates that contain a decoded byte are reported from these layers (a handle
//!   merely followed by `%20` is the raw candidate, not a second one);
//! - inside `Basic` credentials: the word `basic` (any case), spaces or tabs, then base64
//!   (standard or URL-safe alphabet, padded or not, each `=`-separated piece decoded on its own,
//!   as leniently as any server would), itself scanned raw and percent-decoded
//!   ([`Origin::Basic`]). `Basic` inside percent-encoded text (`Basic%20…`) is found too.
//!
//! Each candidate is classified ([`Shape`]):
//!
//! - [`Shape::WellFormed`]: exactly the shape of a valid handle, standing alone, as given:
//!   lowercase `eeh_`; not directly after a base64url character or `.` (or a `%XX` escape of
//!   one); a canonical base64url payload that parses as a version-1 payload; one `.`; an
//!   86-character canonical signature; at most [`MAX_TOKEN_LEN`] bytes; and not directly
//!   followed by a further base64url character or `.` (so `{handle}.` at the end of a
//!   sentence is *extended*). Its text is the exact token, ready for
//!   [`Verifier::verify`](crate::Verifier::verify). Nothing is verified here: a well-formed
//!   candidate may carry a forged signature, be expired or be revoked.
//! - [`Shape::Malformed`]: everything else that carries the prefix, with the first [`Defect`]
//!   that applies (percent-encoded, wrong case, glued to preceding text, truncated, too long,
//!   undecodable, extended). The rule for callers: refuse the request with `handle_invalid`,
//!   never forward it.
//!
//! This is deliberately conservative: *any* occurrence of `eeh_` in any case is a candidate,
//! so `xeeh_abc`, `cheeh_x` or `my_EEH_var` make a request refused even if they were never
//! meant as handles. Such strings are rare in requests, and a false refusal is much cheaper
//! than a leaked handle.
//!
//! The scan takes time linear in the input. The prefix is found by looking for its `_` eight
//! bytes at a time (input without `_` is skipped at that speed, and a value without `e`/`E`
//! never gets past the look-back); every byte is examined a constant number of times per
//! layer; after a candidate the search resumes after it, never from a later prefix inside it;
//! and the layers are bounded (raw, [`PERCENT_LAYERS`] percent-decoded ones, and the same once
//! inside each `Basic` credential, whose runs do not overlap).
//!
//! [`redact_in`] uses the same scan to replace every candidate in a log line by its redacted
//! form (see [`redact`]). [`find_handles`], [`contains_handle`] and [`looks_like_handle`] are
//! the older string helpers, now built on it; `find_handles` returns malformed candidates too,
//! so a caller that verifies what it returns refuses them.
//!
//! # What it does not do
//!
//! - It verifies nothing (key, signature, expiry, revocation, scope): that is `verify`, and
//!   where a well-formed handle may appear (which header, not the URI) is the caller's rule.
//! - It does not undo other encodings: base64 not introduced by `Basic`, `+` for space, HTML
//!   entities, JSON or other `\u` escapes, punycode, Unicode look-alikes (fullwidth letters),
//!   compression, or more than [`PERCENT_LAYERS`] nested percent-encodings. A guest set on
//!   smuggling a handle out can always encrypt it first; this module catches handles forwarded
//!   as they are or under the encodings clients and frameworks apply on their own, and makes
//!   prefix-bearing junk fail closed.
//! - It does not read request bodies, and does not split a `Basic` credential into user and
//!   password: the decoded credential is scanned as one string.
//! - It does not deduplicate: one handle may be reported twice (raw, and percent-decoded with
//!   an encoded extension), and the number of candidates is not capped (it is at most a fifth
//!   of the input length per layer).

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use crate::token::{self, MAX_TOKEN_LEN, MIN_PAYLOAD_LEN, PREFIX, SIGNATURE_B64_LEN};

/// How many nested layers of percent-encoding [`scan`] undoes (`%65`, `%2565`, `%252565`).
pub const PERCENT_LAYERS: usize = 3;

/// Characters shown after the prefix by [`redact`].
const REDACT_KEEP: usize = 6;
/// Base64 characters the smallest payload occupies.
const MIN_PAYLOAD_B64_LEN: usize = (MIN_PAYLOAD_LEN * 4).div_ceil(3);
/// The word introducing Basic credentials (matched case-insensitively).
const BASIC: &[u8] = b"basic";

/// What a candidate looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    /// Exactly the shape of a handle; verify it.
    WellFormed,
    /// Carries the prefix but is not exactly a handle; refuse, never forward.
    Malformed(Defect),
}

/// Why a candidate is not well-formed; when several apply, the first in this list is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Defect {
    /// Found only after percent-decoding (an encoded prefix character, `.` or any other piece).
    PercentEncoded,
    /// The prefix is not lowercase `eeh_` (`EEH_`, `eEh_`, …).
    PrefixCase,
    /// The prefix directly follows a base64url character or `.` (`xeeh_…`, `my_eeh_…`), or a
    /// percent-escape of one (`%41eeh_…`).
    Embedded,
    /// Too short for a handle: no `.`, a payload shorter than the smallest one, or a signature
    /// shorter than 86 characters.
    Truncated,
    /// Payload, `.` and signature of plausible lengths, but together longer than
    /// [`MAX_TOKEN_LEN`].
    TooLong,
    /// The right lengths, but not canonical base64url or not a parseable version-1 payload
    /// (this includes most payloads with characters cut out or added).
    Undecodable,
    /// A complete handle directly followed by more base64url characters or `.`.
    Extended,
}

impl Defect {
    /// A short description, suitable for a refusal's cause.
    pub fn describe(self) -> &'static str {
        match self {
            Defect::PercentEncoded => "percent-encoded handle",
            Defect::PrefixCase => "handle prefix in the wrong letter case",
            Defect::Embedded => "handle prefix glued to preceding text",
            Defect::Truncated => "truncated handle",
            Defect::TooLong => "handle too long",
            Defect::Undecodable => "undecodable handle",
            Defect::Extended => "handle followed by extra characters",
        }
    }
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Where a candidate was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// In the scanned bytes as given.
    Raw,
    /// After percent-decoding the scanned bytes.
    PercentDecoded,
    /// Inside the base64 of a `Basic` credential (possibly also percent-decoded).
    Basic,
}

/// One prefix-bearing string found by [`scan`]. `Debug` shows it redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    text: Cow<'a, str>,
    shape: Shape,
    origin: Origin,
    span: Range<usize>,
}

impl<'a> Candidate<'a> {
    /// The candidate's text, decoded if it was found percent-encoded or inside `Basic`; for a
    /// well-formed candidate, the exact token to verify. It starts with the prefix (any case)
    /// and contains only ASCII base64url characters and `.`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The text, owned or borrowed from the scanned bytes.
    pub fn into_text(self) -> Cow<'a, str> {
        self.text
    }

    /// Well-formed or malformed (and why).
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Whether this is exactly a handle's shape (to be verified).
    pub fn is_well_formed(&self) -> bool {
        self.shape == Shape::WellFormed
    }

    /// Why it is malformed, if it is.
    pub fn defect(&self) -> Option<Defect> {
        match self.shape {
            Shape::WellFormed => None,
            Shape::Malformed(d) => Some(d),
        }
    }

    /// Where it was found.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The bytes of the scanned input it came from: the candidate itself when raw, its
    /// percent-encoded form when percent-decoded, the whole base64 run of a `Basic` credential.
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// A loggable stand-in: the prefix as written, up to 6 further characters, then `…`.
    pub fn redacted(&self) -> String {
        let mut out = Vec::with_capacity(PREFIX.len() + REDACT_KEEP + 3);
        push_redacted(&mut out, self.text.as_bytes());
        utf8(out)
    }

    /// The same candidate, owning its text.
    pub fn into_owned(self) -> Candidate<'static> {
        Candidate {
            text: Cow::Owned(self.text.into_owned()),
            shape: self.shape,
            origin: self.origin,
            span: self.span,
        }
    }
}

impl fmt::Debug for Candidate<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidate")
            .field("text", &self.redacted())
            .field("shape", &self.shape)
            .field("origin", &self.origin)
            .field("span", &self.span)
            .finish()
    }
}

/// The result of [`scan`]: every candidate, raw ones first (in input order), then those found
/// by percent-decoding (layer by layer), with those inside `Basic` credentials after the layer
/// they were found in. The same handle may be reported more than once (say raw and, extended
/// by a decoded `%2E`, percent-decoded). `Debug` redacts.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Scan<'a> {
    candidates: Vec<Candidate<'a>>,
}

impl<'a> Scan<'a> {
    /// Every candidate.
    pub fn candidates(&self) -> &[Candidate<'a>] {
        &self.candidates
    }

    /// Every candidate, by value.
    pub fn into_candidates(self) -> Vec<Candidate<'a>> {
        self.candidates
    }

    /// Whether nothing carrying the prefix was found.
    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    /// The well-formed candidates (to verify).
    pub fn well_formed(&self) -> impl Iterator<Item = &Candidate<'a>> {
        self.candidates.iter().filter(|c| c.is_well_formed())
    }

    /// The malformed candidates (to refuse).
    pub fn malformed(&self) -> impl Iterator<Item = &Candidate<'a>> {
        self.candidates.iter().filter(|c| !c.is_well_formed())
    }

    /// The first malformed candidate, if any: the request must be refused.
    pub fn first_malformed(&self) -> Option<&Candidate<'a>> {
        self.malformed().next()
    }
}

impl fmt::Debug for Scan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.candidates).finish()
    }
}

impl<'a> IntoIterator for Scan<'a> {
    type Item = Candidate<'a>;
    type IntoIter = std::vec::IntoIter<Candidate<'a>>;

    fn into_iter(self) -> Self::IntoIter {
        self.candidates.into_iter()
    }
}

/// Finds every candidate handle in `bytes`, raw, percent-decoded and inside `Basic`
/// credentials, in linear time; see the module documentation.
pub fn scan(bytes: &[u8]) -> Scan<'_> {
    let mut candidates = Vec::new();
    scan_layers(bytes, None, &mut candidates);
    Scan { candidates }
}

/// A loggable stand-in for a handle: `eeh_` and its first 6 characters, then `…`.
/// Anything not starting with `eeh_` is shown as `…` alone, since it may be a real secret.
pub fn redact(token: &str) -> String {
    match token.strip_prefix(PREFIX) {
        Some(rest) => redact_parts(PREFIX, rest),
        None => "…".to_owned(),
    }
}

/// `text` with every candidate [`scan`] finds (any case, well-formed or not, raw,
/// percent-encoded or inside `Basic`) replaced by its redacted form (the prefix as written, up
/// to 6 characters, `…`; see [`Candidate::redacted`]), so that no whole handle reaches a log
/// line. Overlapping candidates are replaced together; a `Basic` credential's whole base64 is
/// replaced. Borrowed when there is nothing to replace. Linear in the length of `text`
/// (candidates come in a constant number of sorted runs, which the stable sort merges).
pub fn redact_in(text: &str) -> Cow<'_, str> {
    let found = scan(text.as_bytes());
    if found.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut spans: Vec<&Candidate<'_>> = found.candidates.iter().collect();
    spans.sort_by_key(|c| c.span.start);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(text.len());
    let mut pos = 0;
    let mut rest = spans.iter().peekable();
    while let Some(first) = rest.next() {
        let start = first.span.start.max(pos);
        let mut end = first.span.end;
        while let Some(next) = rest.next_if(|c| c.span.start < end) {
            end = end.max(next.span.end);
        }
        out.extend_from_slice(bytes.get(pos..start).unwrap_or_default());
        push_redacted(&mut out, first.text.as_bytes());
        pos = end.max(pos);
    }
    out.extend_from_slice(bytes.get(pos..).unwrap_or_default());
    // Spans start at an ASCII byte and end before a byte following an ASCII one, so the
    // result is UTF-8.
    Cow::Owned(utf8(out))
}

/// Whether `s` as a whole is exactly the shape of a handle (a [`Shape::WellFormed`]
/// candidate spanning all of it). Does not verify anything.
pub fn looks_like_handle(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.starts_with(PREFIX.as_bytes())
        && run_end(bytes, PREFIX.len()) == bytes.len()
        && classify(bytes, 0, bytes.len()) == Shape::WellFormed
}

/// The text of every candidate in `haystack`, well-formed or not (see [`scan`], which also
/// tells which is which and takes bytes): a well-formed one verifies or not, a malformed one
/// never does, so verifying each and refusing on failure keeps every candidate from an
/// upstream. Percent-decoded and `Basic` candidates are returned decoded, hence `Cow`.
pub fn find_handles(haystack: &str) -> Vec<Cow<'_, str>> {
    scan(haystack.as_bytes())
        .into_iter()
        .map(Candidate::into_text)
        .collect()
}

/// Whether `haystack` carries anything [`scan`] reports (the handle prefix in any case, raw,
/// percent-encoded or inside `Basic`).
pub fn contains_handle(haystack: &str) -> bool {
    !scan(haystack.as_bytes()).is_empty()
}

/// Bytes known to be UTF-8 as a `String` (lossily, should they not be).
fn utf8(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Appends the redacted form of a candidate's text (ASCII: the prefix as written, then
/// base64url characters and `.`): what [`redact`] shows, whatever the prefix's case.
fn push_redacted(out: &mut Vec<u8>, text: &[u8]) {
    let (prefix, rest) = text.split_at(PREFIX.len().min(text.len()));
    out.extend_from_slice(prefix);
    for &b in rest.iter().take(REDACT_KEEP) {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b);
        }
    }
    out.extend_from_slice("…".as_bytes());
}

fn redact_parts(prefix: &str, rest: &str) -> String {
    let shown: String = rest
        .chars()
        .take(REDACT_KEEP)
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    format!("{prefix}{shown}…")
}

/// Byte classes, one table lookup each (cheap even in unoptimised builds).
/// Base64url or `.`: the bytes that continue a candidate.
const TOKEN: u8 = 1;
/// Either base64 alphabet or `=`: the bytes of a `Basic` credential.
const BASIC_B64_CHAR: u8 = 2;
/// Not a hexadecimal digit, in [`HEX`].
const NOT_HEX: u8 = 0xff;

const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let alnum = c.is_ascii_alphanumeric();
        if alnum || c == b'-' || c == b'_' {
            t[b] |= TOKEN | BASIC_B64_CHAR;
        }
        if c == b'.' {
            t[b] |= TOKEN;
        }
        if c == b'+' || c == b'/' || c == b'=' {
            t[b] |= BASIC_B64_CHAR;
        }
        b += 1;
    }
    t
};

/// Not a base64 character of either alphabet, in [`B64_VALUE`].
const NOT_B64: u8 = 0xff;

/// The value of a base64 character, standard (`+/`) or URL-safe (`-_`) alphabet.
const B64_VALUE: [u8; 256] = {
    let mut t = [NOT_B64; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => NOT_B64,
        };
        b += 1;
    }
    t
};

const HEX: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => NOT_HEX,
        };
        b += 1;
    }
    t
};

/// Bytes that continue a candidate: base64url and `.`.
fn is_token(b: u8) -> bool {
    CLASS[usize::from(b)] & TOKEN != 0
}

/// Bytes of a `Basic` credential's base64 (either alphabet, padding).
fn is_basic_b64(b: u8) -> bool {
    CLASS[usize::from(b)] & BASIC_B64_CHAR != 0
}

/// End of the run of token bytes starting at `from`.
fn run_end(buf: &[u8], from: usize) -> usize {
    let mut i = from;
    while i < buf.len() && is_token(buf[i]) {
        i += 1;
    }
    i
}

/// Index of the first byte at or after `from` with `byte | fold == needle`, eight bytes at a
/// time (a portable memchr; `fold = 0x20` makes an ASCII letter match either case).
fn find_folded(hay: &[u8], from: usize, needle: u8, fold: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let want = LO * u64::from(needle);
    let fold_word = LO * u64::from(fold);
    let mut i = from;
    while i + 8 <= hay.len() {
        let word = u64::from_le_bytes([
            hay[i],
            hay[i + 1],
            hay[i + 2],
            hay[i + 3],
            hay[i + 4],
            hay[i + 5],
            hay[i + 6],
            hay[i + 7],
        ]);
        let x = (word | fold_word) ^ want;
        // The lowest set bit marks the first zero byte of `x` exactly.
        let zero = x.wrapping_sub(LO) & !x & HI;
        if zero != 0 {
            return Some(i + (zero.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    while i < hay.len() {
        if hay[i] | fold == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Whether the three bytes before `q` are `eeh` in any case.
fn eeh_before(buf: &[u8], q: usize) -> bool {
    q >= 3 && buf[q - 3] | 0x20 == b'e' && buf[q - 2] | 0x20 == b'e' && buf[q - 1] | 0x20 == b'h'
}

/// Every prefix occurrence as `(start, end)` of its candidate, left to right, never starting
/// inside an earlier candidate. Searches for the `_` (rarer than `e`) and looks back.
struct Prefixes<'b> {
    buf: &'b [u8],
    /// Where to look for the next `_`.
    from: usize,
}

impl<'b> Prefixes<'b> {
    fn new(buf: &'b [u8]) -> Self {
        Prefixes {
            buf,
            from: PREFIX.len() - 1,
        }
    }
}

impl Iterator for Prefixes<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        loop {
            let q = find_folded(self.buf, self.from, b'_', 0)?;
            self.from = q + 1;
            if eeh_before(self.buf, q) {
                let end = run_end(self.buf, q + 1);
                // The next prefix's `_` is at least a prefix length past this candidate.
                self.from = end + PREFIX.len() - 1;
                return Some((q + 1 - PREFIX.len(), end));
            }
        }
    }
}

/// Classifies the candidate `buf[start..end]` (a prefix, any case, then token bytes).
fn classify(buf: &[u8], start: usize, end: usize) -> Shape {
    let run = buf.get(start..end).unwrap_or_default();
    if !run.starts_with(PREFIX.as_bytes()) {
        return Shape::Malformed(Defect::PrefixCase);
    }
    if glued(buf, start) {
        return Shape::Malformed(Defect::Embedded);
    }
    match structure(run) {
        Ok(()) => Shape::WellFormed,
        Err(d) => Shape::Malformed(d),
    }
}

/// Whether the prefix at `start` directly follows a base64url character or `.`, or a `%XX`
/// escape of one (so `%20eeh_…` in a URI is not glued, `%41eeh_…` is).
fn glued(buf: &[u8], start: usize) -> bool {
    if let Some(escaped) = start.checked_sub(3).and_then(|p| escape_at(buf, p)) {
        return is_token(escaped);
    }
    start > 0 && buf.get(start - 1).is_some_and(|b| is_token(*b))
}

/// Checks a run of token bytes starting with the exact prefix against the handle grammar.
fn structure(run: &[u8]) -> Result<(), Defect> {
    let body = run.get(PREFIX.len()..).unwrap_or_default();
    let dot = find_folded(body, 0, b'.', 0).ok_or(Defect::Truncated)?;
    if dot < MIN_PAYLOAD_B64_LEN {
        return Err(Defect::Truncated);
    }
    let after = body.get(dot + 1..).unwrap_or_default();
    let sig_len = find_folded(after, 0, b'.', 0).unwrap_or(after.len());
    if sig_len < SIGNATURE_B64_LEN {
        return Err(Defect::Truncated);
    }
    let head_len = PREFIX.len() + dot + 1 + SIGNATURE_B64_LEN;
    if head_len > MAX_TOKEN_LEN {
        return Err(Defect::TooLong);
    }
    let head = run
        .get(..head_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or(Defect::Undecodable)?;
    let raw = token::split(head).map_err(|_| Defect::Undecodable)?;
    token::decode_payload(&raw.payload).map_err(|_| Defect::Undecodable)?;
    if run.len() > head_len {
        return Err(Defect::Extended);
    }
    Ok(())
}

/// The text of a candidate: ASCII by construction, so this never actually replaces anything.
fn text_of(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Scans `input` raw and percent-decoded, and (at the top level) inside `Basic` credentials.
/// Inside a credential (`basic` is the span of its base64 in the top-level input), every
/// candidate is reported with that span and [`Origin::Basic`].
fn scan_layers<'a>(input: &'a [u8], basic: Option<&Range<usize>>, out: &mut Vec<Candidate<'a>>) {
    let origin = |fallback| {
        if basic.is_some() {
            Origin::Basic
        } else {
            fallback
        }
    };
    for (start, end) in Prefixes::new(input) {
        out.push(Candidate {
            text: text_of(input.get(start..end).unwrap_or_default()),
            shape: classify(input, start, end),
            origin: origin(Origin::Raw),
            span: basic.cloned().unwrap_or(start..end),
        });
    }
    // Decoded credentials, one at a time.
    let mut scratch = Vec::new();
    if basic.is_none() {
        for_each_basic_run(input, |_, run| {
            scan_basic(input, run.clone(), run, false, &mut scratch, out);
        });
    }
    // Each layer reports only what involves a byte it decoded: anything else was already
    // found, with the same extent, in the layer before.
    let mut layers: Vec<Layer> = Vec::new();
    for _ in 0..PERCENT_LAYERS {
        let prev = layers.last().map_or(input, |l| l.bytes.as_slice());
        let Some(next) = percent_decode(prev) else {
            break;
        };
        layers.push(next);
        let Some(top) = layers.last() else {
            break;
        };
        let mut fresh = Fresh::new(&top.escapes);
        let mut to_input = ToInput::new(&layers);
        for (start, end) in Prefixes::new(&top.bytes) {
            if !fresh.any_in(start..end) {
                continue;
            }
            let span = to_input.map(start)..to_input.map(end);
            out.push(Candidate {
                text: Cow::Owned(
                    text_of(top.bytes.get(start..end).unwrap_or_default()).into_owned(),
                ),
                shape: Shape::Malformed(Defect::PercentEncoded),
                origin: origin(Origin::PercentDecoded),
                span: basic.cloned().unwrap_or(span),
            });
        }
        if basic.is_none() {
            let mut fresh = Fresh::new(&top.escapes);
            let mut to_input = ToInput::new(&layers);
            for_each_basic_run(&top.bytes, |keyword, run| {
                if fresh.any_in(keyword..run.end) {
                    let span = to_input.map(run.start)..to_input.map(run.end);
                    scan_basic(&top.bytes, run, span, true, &mut scratch, out);
                }
            });
        }
    }
}

/// Decodes the `Basic` base64 at `buf[run]` and scans it; `span` is the run's place in the
/// top-level input. Found via percent-decoding, every candidate is malformed.
fn scan_basic(
    buf: &[u8],
    run: Range<usize>,
    span: Range<usize>,
    percent: bool,
    scratch: &mut Vec<u8>,
    out: &mut Vec<Candidate<'_>>,
) {
    decode_basic(buf.get(run).unwrap_or_default(), scratch);
    if scratch.len() < PREFIX.len() {
        return;
    }
    let mut inner = Vec::new();
    scan_layers(scratch, Some(&span), &mut inner);
    out.extend(inner.into_iter().map(|c| {
        let mut c = c.into_owned();
        if percent {
            c.shape = Shape::Malformed(Defect::PercentEncoded);
        }
        c
    }));
}

/// Calls `f(keyword start, base64 run)` for every `basic` + blanks + base64 in `buf`,
/// including one whose keyword sits at the end of an earlier run. Linear: the blanks and runs
/// of different matches never overlap.
fn for_each_basic_run(buf: &[u8], mut f: impl FnMut(usize, Range<usize>)) {
    let mut from = 0;
    while let Some(i) = find_folded(buf, from, b'b', 0x20) {
        from = i + 1;
        let after_word = i + BASIC.len();
        let is_word = after_word <= buf.len()
            && buf[i + 1] | 0x20 == b'a'
            && buf[i + 2] | 0x20 == b's'
            && buf[i + 3] | 0x20 == b'i'
            && buf[i + 4] | 0x20 == b'c';
        if !is_word {
            continue;
        }
        from = after_word;
        let mut start = after_word;
        while start < buf.len() && matches!(buf[start], b' ' | b'\t') {
            start += 1;
        }
        if start == after_word {
            continue;
        }
        let mut end = start;
        while end < buf.len() && is_basic_b64(buf[end]) {
            end += 1;
        }
        if end > start {
            f(i, start..end);
        }
    }
}

/// Decodes Basic base64 leniently into `out`, as the most forgiving server would: either
/// alphabet, every `=`-separated piece on its own, dangling bits dropped. Pieces are kept apart
/// by a NUL so that no candidate spans two of them.
fn decode_basic(run: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in run {
        let value = B64_VALUE[usize::from(c)];
        if value == NOT_B64 {
            (acc, bits) = (0, 0);
            if out.last().is_some_and(|b| *b != 0) {
                out.push(0);
            }
            continue;
        }
        // Bits shifted out at the top were already emitted.
        acc = acc << 6 | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
}

/// One layer of percent-decoding.
struct Layer {
    bytes: Vec<u8>,
    /// Positions in `bytes` of the bytes this layer decoded from `%XX`, ascending.
    escapes: Vec<usize>,
}

/// Whether ranges of the newest layer contain a byte it decoded, for ranges given in
/// ascending order of start (so the whole pass is linear).
struct Fresh<'l> {
    escapes: &'l [usize],
    next: usize,
}

impl<'l> Fresh<'l> {
    fn new(escapes: &'l [usize]) -> Self {
        Fresh { escapes, next: 0 }
    }

    fn any_in(&mut self, range: Range<usize>) -> bool {
        while self
            .escapes
            .get(self.next)
            .is_some_and(|e| *e < range.start)
        {
            self.next += 1;
        }
        self.escapes.get(self.next).is_some_and(|e| *e < range.end)
    }
}

/// Maps positions in the newest layer back to the scanned input, for positions given in
/// ascending order (so the whole pass is linear): a position preceded by `k` escapes in a
/// layer sits `2k` bytes further in the layer below.
struct ToInput<'l> {
    layers: &'l [Layer],
    /// Per layer: how many of its escapes precede the last position mapped through it.
    before: Vec<usize>,
}

impl<'l> ToInput<'l> {
    fn new(layers: &'l [Layer]) -> Self {
        ToInput {
            layers,
            before: vec![0; layers.len()],
        }
    }

    fn map(&mut self, pos: usize) -> usize {
        let mut pos = pos;
        for (layer, before) in self.layers.iter().zip(self.before.iter_mut()).rev() {
            while layer.escapes.get(*before).is_some_and(|e| *e < pos) {
                *before += 1;
            }
            pos += 2 * *before;
        }
        pos
    }
}

/// The byte `%XX` at `buf[p]` stands for, if `p` starts an escape.
fn escape_at(buf: &[u8], p: usize) -> Option<u8> {
    if buf.get(p) != Some(&b'%') || p + 2 >= buf.len() {
        return None;
    }
    let (hi, lo) = (HEX[usize::from(buf[p + 1])], HEX[usize::from(buf[p + 2])]);
    (hi != NOT_HEX && lo != NOT_HEX).then_some(hi << 4 | lo)
}

/// Decodes every `%XX` in `buf` once; `None` if there is none.
fn percent_decode(buf: &[u8]) -> Option<Layer> {
    // Most values have no escape at all: find the first one before allocating.
    let mut first = find_folded(buf, 0, b'%', 0)?;
    while escape_at(buf, first).is_none() {
        first = find_folded(buf, first + 1, b'%', 0)?;
    }
    let mut layer = Layer {
        bytes: Vec::with_capacity(buf.len()),
        escapes: Vec::new(),
    };
    let mut copied = 0;
    let mut pct = Some(first);
    while let Some(p) = pct {
        // A `%` that starts no escape is copied with the plain bytes around it.
        if let Some(byte) = escape_at(buf, p) {
            layer
                .bytes
                .extend_from_slice(buf.get(copied..p).unwrap_or_default());
            layer.escapes.push(layer.bytes.len());
            layer.bytes.push(byte);
            copied = p + 3;
        }
        pct = find_folded(buf, p + 1, b'%', 0);
    }
    layer
        .bytes
        .extend_from_slice(buf.get(copied..).unwrap_or_default());
    Some(layer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn find_folded_matches_naive_search() {
        let hay: Vec<u8> = (0u8..=255).chain(b"xxBxbxx_x%".iter().copied()).collect();
        for from in 0..hay.len() + 2 {
            for (needle, fold) in [(b'_', 0), (b'%', 0), (b'b', 0x20), (0x80, 0), (0, 0)] {
                let naive = hay
                    .get(from..)
                    .and_then(|r| r.iter().position(|b| *b | fold == needle))
                    .map(|i| i + from);
                assert_eq!(
                    find_folded(&hay, from, needle, fold),
                    naive,
                    "{from} {needle}"
                );
            }
        }
    }

    #[test]
    fn prefixes_do_not_overlap_and_skip_candidates() {
        let found: Vec<_> = Prefixes::new(b"eeh_ab eeh_eeh_ x EEH_,eEh_").collect();
        assert_eq!(found, [(0, 6), (7, 15), (18, 22), (23, 27)]);
        assert_eq!(Prefixes::new(b"eh_ e_h_ eeh").count(), 0);
    }

    #[test]
    fn percent_decode_maps_back_to_the_input() {
        let l1 = percent_decode(b"a%65b%zz%4%%41").unwrap();
        assert_eq!(l1.bytes, b"aeb%zz%4%A");
        assert_eq!(l1.escapes, [1, 9]);
        let layers = [l1];
        let mut to_input = ToInput::new(&layers);
        let mapped: Vec<usize> = [0, 1, 2, 9, 10].map(|p| to_input.map(p)).into();
        assert_eq!(mapped, [0, 1, 4, 11, 14]);
        let mut fresh = Fresh::new(&layers[0].escapes);
        assert!(!fresh.any_in(0..1));
        assert!(fresh.any_in(1..2));
        assert!(!fresh.any_in(2..9));
        assert!(fresh.any_in(3..10));
        assert!(percent_decode(b"100% sure %g0 %4").is_none());

        let l1 = percent_decode(b"x%2565%25").unwrap();
        let l2 = percent_decode(&l1.bytes).unwrap();
        assert_eq!(l2.bytes, b"xe%");
        let layers = [l1, l2];
        let mut to_input = ToInput::new(&layers);
        let mapped: Vec<usize> = [0, 1, 2, 3].map(|p| to_input.map(p)).into();
        assert_eq!(mapped, [0, 1, 6, 9]);
    }

    #[test]
    fn basic_runs_find_every_credential_once() {
        let mut runs = Vec::new();
        for_each_basic_run(b"Basic abcBasic def basicx BASIC\tgh= basic", |k, r| {
            runs.push((k, r))
        });
        assert_eq!(runs, [(0, 6..14), (9, 15..18), (26, 32..35)]);
        let mut out = Vec::new();
        decode_basic(b"ZWVoXw==ZWVoXy0t=ab", &mut out);
        assert_eq!(out, b"eeh_\0eeh_--\0i");
        decode_basic(b"ZWVoX-A", &mut out);
        assert_eq!(out, b"eeh_\xe0");
        decode_basic(b"=ZWVo/+8", &mut out);
        assert_eq!(out, b"eeh\xff\xef");
        for text in [&b"user:eeh_x.y"[..], b"", b"\0\xff\xfe"] {
            let b64 = base64::engine::general_purpose::STANDARD.encode(text);
            decode_basic(b64.as_bytes(), &mut out);
            assert_eq!(out, text);
        }
    }
}
