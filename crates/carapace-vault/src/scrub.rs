//! Removes secrets from anything that goes back to the model or into the audit log:
//! known secret values in their common encodings, and strings shaped like credentials.
//!
//! What is removed is defined so that a stream cut at any point scrubs exactly like the
//! whole text: at every position where a known value (or an encoding of one) begins, the
//! longest one that begins there gives a range (so overlapping values are all caught);
//! the credential shapes give the ranges of a left-to-right scan that resumes after each
//! match (resuming inside a match could cost quadratic time on hostile text, such as a
//! long run of `sk-sk-sk-`). Overlapping ranges are joined and every joined range becomes
//! `[REDACTED]`.

use std::ops::Range;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock};

use aho_corasick::{AhoCorasick, Anchored, Input, MatchKind, StartKind};
use base64::Engine as _;
use base64::engine::GeneralPurpose;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use carapace_types::Secret;
use regex::Regex;
use serde_json::Value;
use zeroize::Zeroizing;

/// What a removed secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Known secrets shorter than this many bytes are not scrubbed by value: they would match
/// ordinary text. Credential-shaped patterns still apply.
pub const MIN_SECRET_LEN: usize = 8;

/// Credential shapes, one alternative each. Word boundaries are ASCII (`(?-u:\b)`) so the
/// lazy DFA never gives up on non-ASCII text.
///
/// Every shape except the private-key block and the bearer token lies inside one run of
/// non-whitespace characters; those two can hold whitespace, but any text that could still
/// grow into one of them without matching yet is shorter than [`SHAPE_HOLDBACK`]. The
/// stream scrubber relies on both facts.
const SHAPES: &[&str] = &[
    // PEM private keys; a block without its END line is removed to the end of the text.
    r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]*?-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|[\s\S]*$)",
    // OpenAI and Anthropic (sk-ant-api03-...) keys.
    r"(?-u:\b)sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,}",
    // GitHub tokens.
    r"(?-u:\b)gh[pousr]_[A-Za-z0-9]{30,}",
    r"(?-u:\b)github_pat_[A-Za-z0-9_]{30,}",
    // AWS access key ids.
    r"(?-u:\b)(?:AKIA|ASIA)[0-9A-Z]{16}(?-u:\b)",
    // Slack tokens.
    r"(?-u:\b)xox[abprs]-[A-Za-z0-9-]{10,}",
    // Google API keys.
    r"(?-u:\b)AIza[0-9A-Za-z_\-]{35}",
    // JSON Web Tokens.
    r"(?-u:\b)eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    // Bearer tokens.
    r"(?i:(?-u:\b)bearer[ \t]{1,16}[A-Za-z0-9._~+/=-]{20,})",
    // The userinfo of a URL with a password (postgres://user:PASSWORD@host); only the
    // password is removed, see `shape_range`. The password runs to the last `@` of the
    // run, since passwords in connection strings are often not percent-encoded.
    r#"://[^\s:/@?#"'<>`]*:[^\s"'<>`]+@"#,
];

/// How much text a stream holds back at least: longer than any text that could still
/// grow into a whitespace-holding shape without matching yet (a PEM header is at most
/// 73 bytes, `bearer` with its spaces and a too-short token at most 41).
const SHAPE_HOLDBACK: usize = 128;

/// A stream waits for the end of a whitespace-free run before it emits it, unless the run
/// grows longer than this; then it is cut, and a credential shape that starts more than
/// this far back and has not matched yet may be missed by the stream.
const MAX_RUN: usize = 64 * 1024;

static SHAPE_REGEX: LazyLock<Regex> = LazyLock::new(|| {
    let alternatives: Vec<String> = SHAPES.iter().map(|p| format!("(?:{p})")).collect();
    Regex::new(&alternatives.join("|")).expect("scrub patterns compile")
});

/// Scrubs known secret values and credential-shaped strings.
///
/// Known values and their encodings are found with one Aho-Corasick automaton
/// (leftmost-longest, run anchored at candidate positions that a hash of their first
/// eight bytes lets through), the shapes with one regular expression, so a string that
/// holds nothing secret (the common case) costs two linear scans. Cloning is cheap.
///
/// The automaton holds the values it searches for; it is not wiped when dropped.
#[derive(Clone)]
pub struct Scrubber {
    inner: Arc<Inner>,
}

struct Inner {
    /// The known secrets this scrubber was built from (the long enough ones, once each),
    /// kept so [`Scrubber::with_extra`] can rebuild the automaton.
    secrets: Vec<Secret<String>>,
    /// None when there is no known secret.
    known: Option<Known>,
    /// The longest needle in bytes.
    max_needle: usize,
    /// Whether a needle holds whitespace (then a stream cannot rely on whitespace-free
    /// runs and holds back `max_needle` bytes).
    spaced_needles: bool,
    shapes: Regex,
}

/// The known values and their encodings (the needles, all at least eight bytes long).
///
/// An unanchored automaton over a thousand needles scans at 4 to 7 ns a byte (no
/// prefilter applies to so many patterns, and its DFA takes tens of MB), so a bitset of
/// hashes of every needle's first eight bytes picks the positions worth trying; the
/// anchored automaton then finds the longest needle there. With about 1 bit in 256 set,
/// one position in a few hundred is tried on text that holds no needle.
struct Known {
    ac: AhoCorasick,
    filter: Vec<u64>,
    /// `64 - log2(bits in filter)`.
    shift: u32,
}

/// Every needle is at least this long: the hash covers exactly this many bytes.
const PREFIX: usize = 8;
const _: () = assert!(MIN_SECRET_LEN >= PREFIX);

impl Known {
    fn new(needles: &[Zeroizing<String>]) -> Known {
        let bits = (needles.len() * 256)
            .next_power_of_two()
            .clamp(1 << 12, 1 << 22);
        let mut filter = vec![0u64; bits / 64];
        let shift = 64 - bits.trailing_zeros();
        for n in needles {
            let h = prefix_hash(n.as_bytes(), shift);
            filter[h >> 6] |= 1 << (h & 63);
        }
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .start_kind(StartKind::Anchored)
            .build(needles.iter().map(|n| n.as_bytes()))
            .expect("needles are few and short enough for an automaton");
        Known { ac, filter, shift }
    }

    /// Calls `found` with the longest needle at every position from `from` on where one
    /// starts; stops when `found` returns false.
    fn each(&self, hay: &str, from: usize, found: &mut dyn FnMut(Range<usize>) -> bool) {
        let bytes = hay.as_bytes();
        if bytes.len() < from + PREFIX {
            return;
        }
        for (i, window) in bytes[from..].windows(PREFIX).enumerate() {
            let h = prefix_hash(window, self.shift);
            if self.filter[h >> 6] >> (h & 63) & 1 == 0 {
                continue;
            }
            let start = from + i;
            let input = Input::new(hay)
                .span(start..hay.len())
                .anchored(Anchored::Yes);
            if let Some(m) = self.ac.find(input)
                && !found(m.range())
            {
                return;
            }
        }
    }
}

fn prefix_hash(bytes: &[u8], shift: u32) -> usize {
    let word = u64::from_le_bytes(bytes[..PREFIX].try_into().expect("eight bytes"));
    (word.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrubber({} known secrets)", self.inner.secrets.len())
    }
}

/// Where a JSON document was scrubbed, for the audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redaction {
    /// JSON pointer (RFC 6901) to the string that was scrubbed, such as `/content/0/text`;
    /// a scrubbed object key is reported at the pointer of its member, under the new key.
    pub path: String,
    /// How many ranges were replaced there.
    pub count: usize,
}

/// One range to redact, found at one start position.
#[derive(Debug, Clone)]
struct Hit {
    range: Range<usize>,
    /// The whole match; differs from `range` only for a URL, where only the password is
    /// redacted. A stream must not cut through it, or the rest would not match again.
    matched: Range<usize>,
    /// A shape match (its extent can change when text is appended); known-value matches
    /// are final once `max_needle` bytes follow their start.
    shape: bool,
}

impl Scrubber {
    /// A scrubber for these known secrets (each in raw, base64, base64url, hex,
    /// percent-encoded, JSON-escaped and reversed form, and as the middle of a longer
    /// base64 text at any alignment) plus the built-in credential patterns.
    pub fn new(secrets: &[Secret<String>]) -> Scrubber {
        let mut kept: Vec<Secret<String>> = Vec::new();
        for s in secrets {
            if s.expose().len() >= MIN_SECRET_LEN && !kept.contains(s) {
                kept.push(s.clone());
            }
        }
        let mut needles: Vec<Zeroizing<String>> = Vec::new();
        for s in &kept {
            encodings(s.expose(), &mut needles);
        }
        needles.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        needles.dedup_by(|a, b| a.as_str() == b.as_str());
        // All are at least MIN_SECRET_LEN long already; the filter needs PREFIX bytes.
        needles.retain(|n| n.len() >= PREFIX);
        let max_needle = needles.iter().map(|n| n.len()).max().unwrap_or(0);
        let spaced_needles = needles
            .iter()
            .any(|n| n.bytes().any(|b| b.is_ascii_whitespace()));
        let known = (!needles.is_empty()).then(|| Known::new(&needles));
        Scrubber {
            inner: Arc::new(Inner {
                secrets: kept,
                known,
                max_needle,
                spaced_needles,
                shapes: SHAPE_REGEX.clone(),
            }),
        }
    }

    /// A scrubber that also knows these secrets (a value fetched after start-up).
    pub fn with_extra(&self, more: &[Secret<String>]) -> Scrubber {
        let all: Vec<Secret<String>> = self
            .inner
            .secrets
            .iter()
            .chain(more.iter())
            .cloned()
            .collect();
        Scrubber::new(&all)
    }

    /// How many known secrets are scrubbed by value.
    pub fn known_count(&self) -> usize {
        self.inner.secrets.len()
    }

    /// True when a known secret value, in any of the encodings scrubbed, occurs in `s`.
    /// Credential shapes are not considered: this refuses arguments that carry a secret
    /// the agent should not have.
    pub fn contains_secret(&self, s: &str) -> bool {
        let mut seen = false;
        if let Some(known) = &self.inner.known {
            known.each(s, 0, &mut |_| {
                seen = true;
                false
            });
        }
        seen
    }

    /// Scrubs one string in place; true when anything was removed.
    pub fn scrub_string(&self, s: &mut String) -> bool {
        self.scrub_counted(s) > 0
    }

    /// Scrubs every string (keys included) of a JSON document; true when anything was
    /// removed.
    pub fn scrub_json(&self, v: &mut Value) -> bool {
        let mut changed = false;
        self.walk(v, None, &mut |_, _| changed = true);
        changed
    }

    /// Scrubs like [`Scrubber::scrub_json`] and says where: one entry per scrubbed string
    /// or key, in document order.
    pub fn scrub_json_report(&self, v: &mut Value) -> Vec<Redaction> {
        let mut out = Vec::new();
        let mut path = String::new();
        self.walk(v, Some(&mut path), &mut |p, count| {
            out.push(Redaction {
                path: p.to_owned(),
                count,
            })
        });
        out
    }

    /// A scrubber for text that arrives in pieces (model output, streamed tool output).
    pub fn stream(&self) -> StreamScrubber {
        StreamScrubber {
            scrubber: self.clone(),
            buf: String::new(),
            ctx_len: 0,
            stalled_at: None,
        }
    }

    /// Scrubs `s` in place and returns how many ranges were replaced.
    pub fn scrub_counted(&self, s: &mut String) -> usize {
        let mut hits = Vec::new();
        self.collect(s, 0, &mut hits);
        if hits.is_empty() {
            return 0;
        }
        let ranges = merge(hits.into_iter().map(|h| h.range).collect());
        let out = replace(s, 0, &ranges);
        // The old text held a secret: wipe it rather than just free it.
        drop(Zeroizing::new(std::mem::replace(s, out)));
        ranges.len()
    }

    fn walk(&self, v: &mut Value, path: Option<&mut String>, report: &mut dyn FnMut(&str, usize)) {
        match v {
            Value::String(s) => {
                let n = self.scrub_counted(s);
                if n > 0 {
                    report(path.as_deref().map_or("", |p| p.as_str()), n);
                }
            }
            Value::Array(items) => {
                let mut path = path;
                for (i, item) in items.iter_mut().enumerate() {
                    match path.as_deref_mut() {
                        Some(p) => {
                            let len = p.len();
                            p.push('/');
                            p.push_str(&i.to_string());
                            self.walk(item, Some(p), report);
                            p.truncate(len);
                        }
                        None => self.walk(item, None, report),
                    }
                }
            }
            Value::Object(map) => {
                let mut path = path;
                let keys: Vec<String> = map.keys().cloned().collect();
                for key in keys {
                    let mut new_key = key.clone();
                    let n = self.scrub_counted(&mut new_key);
                    if n > 0 {
                        // Two keys may scrub to the same text: keep both members.
                        let mut unique = new_key.clone();
                        let mut k = 2;
                        while map.contains_key(&unique) {
                            unique = format!("{new_key} ({k})");
                            k += 1;
                        }
                        new_key = unique;
                        if let Some(val) = map.remove(&key) {
                            map.insert(new_key.clone(), val);
                        }
                    }
                    let Some(val) = map.get_mut(&new_key) else {
                        continue;
                    };
                    match path.as_deref_mut() {
                        Some(p) => {
                            let len = p.len();
                            p.push('/');
                            push_pointer_token(p, &new_key);
                            if n > 0 {
                                report(p, n);
                            }
                            self.walk(val, Some(p), report);
                            p.truncate(len);
                        }
                        None => {
                            if n > 0 {
                                report("", n);
                            }
                            self.walk(val, None, report);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Every hit in `hay` that starts at or after `from`; `hay[..from]` is context for
    /// word boundaries only. A stream calls this on text it has not emitted, starting right
    /// after what it emitted; since it never cuts inside a shape match, the shape scan
    /// resumes where the whole-text scan would.
    fn collect(&self, hay: &str, from: usize, out: &mut Vec<Hit>) {
        if let Some(known) = &self.inner.known {
            known.each(hay, from, &mut |range| {
                out.push(Hit {
                    range: range.clone(),
                    matched: range,
                    shape: false,
                });
                true
            });
        }
        let mut pos = from;
        while pos < hay.len() {
            let Some(m) = self.inner.shapes.find_at(hay, pos) else {
                break;
            };
            out.push(Hit {
                range: shape_range(hay, m.range()),
                matched: m.range(),
                shape: true,
            });
            // No shape matches the empty string, so this always advances.
            pos = m.end().max(next_char(hay, m.start()));
        }
    }
}

/// The part of a shape match to redact: the whole match, except for a URL's userinfo,
/// where only the password goes.
fn shape_range(hay: &str, m: Range<usize>) -> Range<usize> {
    let text = &hay[m.clone()];
    if let Some(rest) = text.strip_prefix("://")
        && let Some(colon) = rest.find(':')
    {
        return m.start + 3 + colon + 1..m.end - 1;
    }
    m
}

fn next_char(s: &str, i: usize) -> usize {
    i + s[i..].chars().next().map_or(1, char::len_utf8)
}

/// Sorts ranges and joins the overlapping ones (adjacent ranges stay apart).
fn merge(mut ranges: Vec<Range<usize>>) -> Vec<Range<usize>> {
    ranges.sort_unstable_by_key(|r| (r.start, r.end));
    let mut out: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start < last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// `s[from..]` with every range (offsets into `s`, all at or after `from`) replaced.
fn replace(s: &str, from: usize, ranges: &[Range<usize>]) -> String {
    let mut out = String::with_capacity(s.len() - from);
    let mut at = from;
    for r in ranges {
        out.push_str(&s[at..r.start]);
        out.push_str(REDACTED);
        at = r.end;
    }
    out.push_str(&s[at..]);
    out
}

fn push_pointer_token(path: &mut String, key: &str) {
    for c in key.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

/// Appends the forms of `raw` that are searched for.
fn encodings(raw: &str, out: &mut Vec<Zeroizing<String>>) {
    let b = raw.as_bytes();
    let mut push = |s: String| out.push(Zeroizing::new(s));
    push(raw.to_owned());
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        push(engine.encode(b));
    }
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for offset in 0..3 {
            if let Some(f) = base64_fragment(engine, b, offset) {
                push(f);
            }
        }
    }
    push(hex::encode(b));
    push(hex::encode_upper(b));
    push(percent_encode(raw, true));
    push(percent_encode(raw, false));
    push(raw.chars().rev().collect());
    if let Ok(json) = serde_json::to_string(raw) {
        push(json[1..json.len() - 1].to_owned());
    }
}

/// The base64 characters that depend only on `b` when `b` starts `offset` bytes into a
/// longer base64-encoded text: the characters that also cover bytes before or after it
/// are dropped.
fn base64_fragment(engine: &GeneralPurpose, b: &[u8], offset: usize) -> Option<String> {
    let mut padded = Zeroizing::new(vec![0u8; offset]);
    padded.extend_from_slice(b);
    let encoded = Zeroizing::new(engine.encode(&*padded));
    let determined = padded.len() * 8 / 6;
    let skip = [0, 2, 3][offset];
    (determined > skip + MIN_SECRET_LEN).then(|| encoded[skip..determined].to_owned())
}

fn percent_encode(s: &str, upper: bool) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else if upper {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// Scrubs text that arrives in chunks. Whatever the chunks, the concatenation of what
/// [`StreamScrubber::push`] returns and what [`StreamScrubber::finish`] returns equals
/// [`Scrubber::scrub_string`] of the whole text, as long as no whitespace-free run is
/// longer than 64 KiB. A longer run is emitted in pieces: known values in it are still
/// caught exactly, but a credential shape inside it may be cut differently (or missed if
/// it has not matched 64 KiB after it began).
///
/// It holds back the tail that could still be part of a secret: at least the longest
/// encoded known value, the current whitespace-free run, and any shape match that
/// reaches the end of what has arrived.
pub struct StreamScrubber {
    scrubber: Scrubber,
    /// `buf[..ctx_len]` is the last character already emitted (context for word
    /// boundaries); the rest is pending.
    buf: String,
    ctx_len: usize,
    /// The buffer's length when a scan last found nothing to emit (a shape still open,
    /// such as a private key without its END line yet). Scanning again only after the
    /// buffer has grown by a quarter keeps a long hold-back linear, not quadratic.
    stalled_at: Option<usize>,
}

impl std::fmt::Debug for StreamScrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StreamScrubber({} bytes held back)",
            self.buf.len() - self.ctx_len
        )
    }
}

/// Where, in the last [`SHAPE_HOLDBACK`] bytes of `buf` (not before `from`), a bearer
/// token or a PEM header starts that has not matched yet but still could.
fn open_spaced_shape(buf: &str, from: usize) -> Option<usize> {
    let mut start = buf.len().saturating_sub(SHAPE_HOLDBACK).max(from);
    while !buf.is_char_boundary(start) {
        start += 1;
    }
    let window = &buf[start..];
    static OPEN: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(concat!(
            r"(?i:(?-u:\b)bearer[ \t]{1,16}[A-Za-z0-9._~+/=-]{0,32}$)",
            // Header text so far; over-holding only delays, never leaks.
            r"|-----BEGIN [A-Z0-9 -]{0,64}$",
        ))
        .expect("open shape pattern compiles")
    });
    OPEN.find(window).map(|m| start + m.start())
}

impl StreamScrubber {
    /// Takes the next chunk and returns the scrubbed text that is safe to emit now
    /// (possibly empty).
    pub fn push(&mut self, chunk: &str) -> String {
        self.buf.push_str(chunk);
        let inner = &self.scrubber.inner;
        let end = self.buf.len();
        // Without whitespace in any needle, a known value lies inside one whitespace-free
        // run, and holding back the last run (below) is enough; text goes out as soon
        // as a word ends. Otherwise hold back the longest needle.
        let mut cut = if inner.spaced_needles {
            let holdback = inner.max_needle.max(SHAPE_HOLDBACK);
            if end - self.ctx_len <= holdback {
                return String::new();
            }
            end - holdback
        } else {
            end
        };
        // The two shapes that may hold whitespace: hold back from where one could still
        // be growing (`bearer` and its spaces, a PEM header before its closing dashes).
        if let Some(start) = open_spaced_shape(&self.buf, self.ctx_len) {
            cut = cut.min(start);
        }
        // The current whitespace-free run may still grow into a shape.
        let run_start = self
            .buf
            .rfind(|c: char| c.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        if end - run_start <= MAX_RUN {
            cut = cut.min(run_start);
        }
        if cut <= self.ctx_len {
            return String::new();
        }
        if let Some(n) = self.stalled_at
            && end < n + n / 4
        {
            return String::new();
        }
        let mut hits = Vec::new();
        self.scrubber.collect(&self.buf, self.ctx_len, &mut hits);
        for h in &hits {
            // A shape that reaches the end may grow (or, for a trailing word boundary,
            // vanish) when more text comes.
            if h.shape && h.matched.end >= end {
                cut = cut.min(h.matched.start);
            }
        }
        // Never cut through a match.
        loop {
            let before = cut;
            for h in &hits {
                if h.matched.start < cut && cut < h.matched.end {
                    cut = h.matched.start;
                }
            }
            if cut == before {
                break;
            }
        }
        while !self.buf.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut <= self.ctx_len {
            self.stalled_at = Some(end);
            return String::new();
        }
        self.stalled_at = None;
        let ranges = merge(
            hits.into_iter()
                .filter(|h| h.matched.start < cut)
                .map(|h| h.range)
                .collect(),
        );
        let out = replace(&self.buf[..cut], self.ctx_len, &ranges);
        let ctx_start = self.buf[..cut]
            .char_indices()
            .next_back()
            .map_or(cut, |(i, _)| i);
        self.buf.drain(..ctx_start);
        self.ctx_len = cut - ctx_start;
        out
    }

    /// Scrubs and returns everything still held back.
    pub fn finish(self) -> String {
        let mut hits = Vec::new();
        self.scrubber.collect(&self.buf, self.ctx_len, &mut hits);
        let ranges = merge(hits.into_iter().map(|h| h.range).collect());
        replace(&self.buf, self.ctx_len, &ranges)
    }
}

/// A scrubber that secrets can join at run time (a password-manager entry fetched on
/// first use). Reading is a read lock and an `Arc` clone; adding rebuilds the automaton
/// outside the read path and swaps it in. Clones share one state.
#[derive(Clone)]
pub struct SharedScrubber {
    current: Arc<RwLock<Arc<Scrubber>>>,
    /// Serialises `add` so that two concurrent additions are both kept.
    writer: Arc<Mutex<()>>,
}

impl std::fmt::Debug for SharedScrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedScrubber({:?})", self.current())
    }
}

impl SharedScrubber {
    /// Starts from this scrubber.
    pub fn new(scrubber: Scrubber) -> SharedScrubber {
        SharedScrubber {
            current: Arc::new(RwLock::new(Arc::new(scrubber))),
            writer: Arc::new(Mutex::new(())),
        }
    }

    /// The scrubber to use now; later additions do not change it.
    pub fn current(&self) -> Arc<Scrubber> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Adds secrets; scrubbers taken with [`SharedScrubber::current`] afterwards know them.
    pub fn add(&self, secrets: &[Secret<String>]) {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let now = self.current();
        let new: Vec<Secret<String>> = secrets
            .iter()
            .filter(|s| s.expose().len() >= MIN_SECRET_LEN && !now.inner.secrets.contains(s))
            .cloned()
            .collect();
        if new.is_empty() {
            return;
        }
        let next = Arc::new(now.with_extra(&new));
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
    }
}

impl Default for SharedScrubber {
    fn default() -> SharedScrubber {
        SharedScrubber::new(Scrubber::new(&[]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RAW: &str = "hunter2-very-secret/+=";

    fn scrubber() -> Scrubber {
        Scrubber::new(&[Secret::new(RAW.to_string())])
    }

    fn scrubbed(s: &Scrubber, text: &str) -> String {
        let mut t = text.to_string();
        s.scrub_string(&mut t);
        t
    }

    #[test]
    fn known_secret_is_removed_in_every_encoding() {
        let s = scrubber();
        let json_escaped = "hunter2-\\\"quoted\\\\-secret";
        let quoted = Scrubber::new(&[Secret::new("hunter2-\"quoted\\-secret".to_string())]);
        assert_eq!(
            scrubbed(&quoted, &format!("before {json_escaped} after")),
            "before [REDACTED] after"
        );
        let encodings = [
            RAW.to_string(),
            STANDARD.encode(RAW),
            STANDARD_NO_PAD.encode(RAW),
            URL_SAFE.encode(RAW),
            URL_SAFE_NO_PAD.encode(RAW),
            hex::encode(RAW),
            hex::encode_upper(RAW),
            percent_encode(RAW, true),
            percent_encode(RAW, false),
            RAW.chars().rev().collect(),
        ];
        for enc in encodings {
            let text = format!("before {enc} after");
            assert_eq!(scrubbed(&s, &text), "before [REDACTED] after", "{enc}");
            assert!(s.contains_secret(&text), "{enc}");
        }
    }

    #[test]
    fn base64_of_a_secret_inside_a_longer_blob_is_removed_at_every_alignment() {
        let s = scrubber();
        let n = RAW.len();
        for prefix_len in 0..6 {
            for suffix_len in 0..4 {
                let mut blob = vec![b'x'; prefix_len];
                blob.extend_from_slice(RAW.as_bytes());
                blob.extend(std::iter::repeat_n(b'y', suffix_len));
                for engine in [&STANDARD, &URL_SAFE_NO_PAD] {
                    let encoded = engine.encode(&blob);
                    let text = format!("data: {encoded}");
                    let out = scrubbed(&s, &text);
                    assert_eq!(out.matches(REDACTED).count(), 1, "{out}");
                    // Only the characters that also carry bits of the bytes around the
                    // secret may stay: at most two before it and one after it.
                    let o = prefix_len % 3;
                    let first = (prefix_len - o) / 3 * 4 + [0, 2, 3][o];
                    let last = (prefix_len + n) * 8 / 6;
                    let kept = out.len() - "data: ".len() - REDACTED.len();
                    assert!(kept <= first + (encoded.len() - last), "{text} -> {out}");
                    assert!(s.contains_secret(&text));
                }
            }
        }
    }

    #[test]
    fn short_secrets_are_not_scrubbed_by_value() {
        let s = Scrubber::new(&[Secret::new("abc1234".to_string())]);
        assert_eq!(s.known_count(), 0);
        assert_eq!(scrubbed(&s, "code abc1234"), "code abc1234");
        assert!(!s.contains_secret("abc1234"));
    }

    #[test]
    fn credential_shaped_strings_are_removed_without_being_known() {
        let s = Scrubber::new(&[]);
        for cred in [
            "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
            "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789_-ABCDEFGHIJKLMN-abcdefAA",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "gho_abcdefghijklmnopqrstuvwxyz0123456789",
            "github_pat_11ABCDEFG0abcdefghijkl_mnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ01",
            "AKIAIOSFODNN7EXAMPLE",
            "ASIAIOSFODNN7EXAMPLE",
            "xoxb-1234567890-abcdefghij",
            "AIzaSyA-abcdefghijklmnopqrstuvwxyz01234",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "Bearer abcdefghijklmnopqrstuvwxyz.0123456789",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----",
            "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF\n-----END PGP PRIVATE KEY BLOCK-----",
        ] {
            let mut v = json!({ "text": format!("key: {cred} end"), "nested": [cred] });
            assert!(s.scrub_json(&mut v));
            let out = v.to_string();
            assert!(!out.contains(cred), "{cred} survived: {out}");
            assert_eq!(v["text"], "key: [REDACTED] end", "{cred}");
        }
    }

    #[test]
    fn a_private_key_without_its_end_line_is_removed_to_the_end() {
        let s = Scrubber::new(&[]);
        let text = "ok\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\nmore";
        assert_eq!(scrubbed(&s, text), "ok\n[REDACTED]");
    }

    #[test]
    fn a_url_password_is_removed_and_the_rest_of_the_url_kept() {
        let s = Scrubber::new(&[]);
        for (input, expected) in [
            (
                "db: postgres://app:s3cr3t-pass@db.internal:5432/app",
                "db: postgres://app:[REDACTED]@db.internal:5432/app",
            ),
            (
                "redis://:hunter2@127.0.0.1:6379/0",
                "redis://:[REDACTED]@127.0.0.1:6379/0",
            ),
            (
                r#"{"url":"mysql://root:p@ss/word@host/db"}"#,
                r#"{"url":"mysql://root:[REDACTED]@host/db"}"#,
            ),
            (
                "see https://example.com:8443/path and https://docs.rs/regex",
                "see https://example.com:8443/path and https://docs.rs/regex",
            ),
        ] {
            assert_eq!(scrubbed(&s, input), expected);
        }
    }

    #[test]
    fn shapes_do_not_fire_on_ordinary_text() {
        let s = Scrubber::new(&[]);
        for text in [
            "a task list: skim the notes, ask before sending",
            "the bearer of bad news",
            "AKIAIOSFODNN7EXAMPLEX is too long for an access key id",
            "mask-abcdefghijklmnopqrstuvwxyz is not an sk- key",
            "ünïcödé text with émojis 🦀 and a ghost",
        ] {
            assert_eq!(scrubbed(&s, text), text);
        }
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        let s = scrubber();
        let mut v = json!({ "content": "a task list: skim the notes, ask before sending" });
        let before = v.clone();
        assert!(!s.scrub_json(&mut v));
        assert_eq!(v, before);
        assert!(s.scrub_json_report(&mut v).is_empty());
    }

    #[test]
    fn secrets_in_object_keys_are_removed() {
        let s = scrubber();
        let mut v = json!({ "hunter2-very-secret/+=": 1 });
        assert!(s.scrub_json(&mut v));
        assert_eq!(v, json!({ "[REDACTED]": 1 }));
    }

    #[test]
    fn two_keys_that_scrub_alike_are_both_kept() {
        let s = scrubber();
        let hex = hex::encode(RAW);
        let mut v = json!({ RAW: 1, hex: 2 });
        assert!(s.scrub_json(&mut v));
        let obj = v.as_object().expect("object");
        assert_eq!(obj.len(), 2, "{v}");
        assert!(!v.to_string().contains(RAW));
    }

    #[test]
    fn the_report_names_each_scrubbed_string_by_json_pointer() {
        let s = scrubber();
        let mut v = json!({
            "content": [
                { "type": "text", "text": format!("a {RAW} b {RAW}") },
                { "type": "text", "text": "clean" },
            ],
            "a/b": { RAW: "x" },
            "meta": "AKIAIOSFODNN7EXAMPLE",
        });
        let report = s.scrub_json_report(&mut v);
        assert_eq!(
            report,
            vec![
                Redaction {
                    path: "/a~1b/[REDACTED]".into(),
                    count: 1
                },
                Redaction {
                    path: "/content/0/text".into(),
                    count: 2
                },
                Redaction {
                    path: "/meta".into(),
                    count: 1
                },
            ]
        );
        assert_eq!(v["content"][0]["text"], "a [REDACTED] b [REDACTED]");
        assert_eq!(
            v.pointer("/a~1b/[REDACTED]"),
            Some(&json!("x")),
            "the path points at the member"
        );
    }

    #[test]
    fn overlapping_secrets_are_removed_whole() {
        // The second secret starts inside the first: scanning on after the first match
        // would leave its tail.
        let s = Scrubber::new(&[
            Secret::new("alpha-bravo-charlie".to_string()),
            Secret::new("charlie-delta-echo".to_string()),
        ]);
        assert_eq!(
            scrubbed(&s, "x alpha-bravo-charlie-delta-echo y"),
            "x [REDACTED] y"
        );
    }

    #[test]
    fn hostile_repetitions_are_scrubbed_in_linear_time() {
        // Resuming the shape scan inside each match would make these quadratic (minutes
        // at this size); they must finish like any other text.
        let s = scrubber();
        for unit in ["sk-", "-----BEGIN PRIVATE KEY-----\n", "://a:b", "Bearer "] {
            let text = unit.repeat(300_000 / unit.len());
            let out = scrubbed(&s, &text);
            assert!(out.len() < text.len() / 2 || out == text, "{unit}");
        }
        // And a stream that must hold back an open private key block.
        let mut stream = s.stream();
        let mut out = stream.push("-----BEGIN PRIVATE KEY-----\n");
        for _ in 0..20_000 {
            out.push_str(&stream.push("MIIEvQIBADANBgkq\n"));
        }
        out.push_str(&stream.finish());
        assert_eq!(out, REDACTED);
    }

    #[test]
    fn with_extra_and_shared_scrubber_learn_new_values() {
        let s = scrubber();
        let late = Secret::new("fetched-later-0123".to_string());
        assert_eq!(scrubbed(&s, "v=fetched-later-0123"), "v=fetched-later-0123");
        let more = s.with_extra(std::slice::from_ref(&late));
        assert_eq!(more.known_count(), 2);
        assert_eq!(scrubbed(&more, "v=fetched-later-0123"), "v=[REDACTED]");
        assert_eq!(scrubbed(&more, RAW), REDACTED);

        let shared = SharedScrubber::new(s);
        let before = shared.current();
        shared.add(std::slice::from_ref(&late));
        shared.add(std::slice::from_ref(&late));
        assert_eq!(shared.current().known_count(), 2);
        assert_eq!(before.known_count(), 1, "a taken scrubber does not change");
        assert!(shared.current().contains_secret("fetched-later-0123"));
    }

    #[test]
    fn debug_never_shows_a_value() {
        let s = scrubber();
        let mut stream = s.stream();
        let _ = stream.push("partial hunter2-very");
        let shared = SharedScrubber::new(s.clone());
        for text in [
            format!("{s:?}"),
            format!("{stream:?}"),
            format!("{shared:?}"),
        ] {
            assert!(!text.contains("hunter2"), "{text}");
        }
    }
}
