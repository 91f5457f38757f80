//! Address patterns, allowlists and denylists, content filters and the send limiter.
//!
//! Addresses are compared normalised: lowercase, and for phone-like addresses (ASCII
//! digits, spaces, `+`, `-`, `(`, `)`, `.`) without the spaces, dashes, dots and
//! parentheses, so `+1 (415) 555-0100` and `+14155550100` are one address to every list
//! and to the limiter. A filter passes one address only: a list of recipients, a display
//! name (`Name <addr>`) or a number in other digits than ASCII is refused before any
//! pattern is tried, because the platform's CLI would read it as other addresses.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use regex::{Regex, RegexBuilder};

/// Longest address or pattern, in bytes.
const MAX_ADDRESS_BYTES: usize = 256;

/// Compiled size limit of a content filter's regex.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The limiter's window.
const WINDOW: Duration = Duration::from_secs(60);

/// Most recipients the limiter remembers; idle ones are forgotten first.
const MAX_RECIPIENTS: usize = 4096;

/// Characters that print as nothing: an address holding one can look like an allowed
/// address while being another.
fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{180e}' | '\u{feff}'
        )
        || ('\u{200b}'..='\u{200f}').contains(&c)
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2060}'..='\u{206f}').contains(&c)
}

fn is_phone_like(text: &str, wildcards: bool) -> bool {
    text.chars().any(|c| c.is_ascii_digit())
        && text.chars().all(|c| {
            c.is_ascii_digit()
                || matches!(c, ' ' | '+' | '-' | '(' | ')' | '.')
                || (wildcards && matches!(c, '*' | '?'))
        })
}

fn normalize(text: &str, wildcards: bool) -> String {
    let lower = text.to_lowercase();
    if is_phone_like(&lower, wildcards) {
        lower
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
            .collect()
    } else {
        lower
    }
}

/// The form in which addresses are compared and counted: lowercase, and phone-like
/// addresses without spaces, dashes, dots and parentheses.
pub fn normalize_address(addr: &str) -> String {
    normalize(addr, false)
}

/// Why a pattern was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is empty (or only spaces).
    #[error("a pattern must not be empty")]
    Empty,
    /// The pattern holds a control or invisible character.
    #[error("a pattern must not hold control or invisible characters")]
    Control,
    /// The pattern is longer than any address.
    #[error("a pattern is at most {MAX_ADDRESS_BYTES} bytes")]
    TooLong,
}

/// An address pattern: `*` matches any run of characters, `?` one character; matching
/// ignores case and, for phone numbers, formatting.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    glob: Vec<char>,
}

impl Pattern {
    /// Parses `+1415*`, `*@example.com`, `alice?`, ...
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        if text.trim().is_empty() {
            return Err(PatternError::Empty);
        }
        if text.chars().any(is_invisible) {
            return Err(PatternError::Control);
        }
        if text.len() > MAX_ADDRESS_BYTES {
            return Err(PatternError::TooLong);
        }
        Ok(Pattern {
            text: text.to_owned(),
            glob: normalize(text, true).chars().collect(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `addr` matches.
    pub fn matches(&self, addr: &str) -> bool {
        let addr: Vec<char> = normalize_address(addr).chars().collect();
        glob_match(&self.glob, &addr)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.text)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Wildcard matching that backtracks only to the last `*`: linear in practice,
/// `O(pattern × text)` at worst.
fn glob_match(pattern: &[char], text: &[char]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            last_star = Some((p, t));
            p += 1;
        } else if let Some((star, from)) = last_star {
            // Let the last `*` take one more character and try again after it.
            p = star + 1;
            t = from + 1;
            last_star = Some((star, from + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Why an address filter refused an address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The address matches a denylist pattern (deny wins over allow).
    #[error("address matches denylist pattern `{pattern}`")]
    Denied {
        /// The first denylist pattern that matched, as written.
        pattern: String,
    },
    /// No allowlist pattern matches the address.
    #[error("address is not on the allowlist")]
    NotAllowed,
    /// The address is empty, too long, holds control or invisible characters or
    /// whitespace, is a list of addresses or has a display name, or is a number in other
    /// digits than ASCII: it could be read as another address than it looks like.
    #[error("address is unusable: {reason}")]
    BadAddress {
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Characters that separate addresses in a list or wrap one in a display name
/// (`Name <addr>, "x" (comment)`): a recipient CLI may read them as several addresses.
fn is_list_syntax(c: char) -> bool {
    matches!(c, ',' | ';' | '<' | '>' | '"' | '(' | ')' | '\\')
}

/// What a filter is asked about.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A recipient's or a sender's address.
    Address,
    /// A backend's id of a chat: a row number, a group id, an address.
    Chat,
}

/// `text` normalised ([`normalize_address`]) when it is one address or chat id: not empty,
/// at most 256 bytes, no whitespace (any Unicode space, after a phone number's formatting
/// is taken out), no list or display-name syntax (`, ; < > " ( ) \`), no control or
/// invisible characters. An address that starts with `+` or an ASCII digit is a phone
/// number of 3 to 15 ASCII digits after an optional `+` (so digits of other scripts,
/// which print like these, are refused). A chat id is printable ASCII (so none of those
/// digits either), may hold `;` (an iMessage chat's guid does), may be a short row number
/// or a group id starting with a digit, and when it starts with `+` is a phone number.
fn one_token(text: &str, kind: Kind) -> Result<String, Refusal> {
    let bad = |reason| Err(Refusal::BadAddress { reason });
    if text.trim().is_empty() {
        return bad("empty");
    }
    if text.len() > MAX_ADDRESS_BYTES {
        return bad("longer than 256 bytes");
    }
    if text.chars().any(is_invisible) {
        return bad("holds control or invisible characters");
    }
    let norm = normalize_address(text);
    if norm.chars().any(char::is_whitespace) {
        return bad("holds whitespace");
    }
    if norm
        .chars()
        .any(|c| is_list_syntax(c) && !(kind == Kind::Chat && c == ';'))
    {
        return bad("holds a list or display-name character");
    }
    if kind == Kind::Chat && !norm.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("a chat id is printable ASCII");
    }
    let phone = match kind {
        Kind::Address => norm.starts_with(|c: char| c == '+' || c.is_ascii_digit()),
        Kind::Chat => norm.starts_with('+'),
    };
    if phone {
        let digits = norm.strip_prefix('+').unwrap_or(&norm);
        if !(3..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return bad("not a phone number of 3 to 15 ASCII digits");
        }
    }
    Ok(norm)
}

/// An allowlist and a denylist of addresses. Deny by default: an empty allowlist allows
/// nothing, and the denylist wins over the allowlist.
#[derive(Clone, Debug, Default)]
pub struct AddressFilter {
    /// Patterns of addresses allowed.
    pub allow: Vec<Pattern>,
    /// Patterns of addresses refused even when allowed.
    pub deny: Vec<Pattern>,
}

impl AddressFilter {
    /// Whether the address `addr` passes: it is one address (no list, display name,
    /// whitespace, invisible character or digits of another script; see the module's
    /// doc), no denylist pattern matches it and an allowlist pattern does.
    pub fn check(&self, addr: &str) -> Result<(), Refusal> {
        self.check_token(addr, Kind::Address)
    }

    /// Whether the chat id `chat` passes, as [`check`](Self::check) but with a chat
    /// id's syntax (printable ASCII, `;` allowed, a row number or group id may start
    /// with a digit): the inbound lists name the chats an agent may read as well as the
    /// senders.
    pub fn check_chat(&self, chat: &str) -> Result<(), Refusal> {
        self.check_token(chat, Kind::Chat)
    }

    fn check_token(&self, text: &str, kind: Kind) -> Result<(), Refusal> {
        let norm: Vec<char> = one_token(text, kind)?.chars().collect();
        if let Some(p) = self.deny.iter().find(|p| glob_match(&p.glob, &norm)) {
            return Err(Refusal::Denied {
                pattern: p.text.clone(),
            });
        }
        if self.allow.iter().any(|p| glob_match(&p.glob, &norm)) {
            Ok(())
        } else {
            Err(Refusal::NotAllowed)
        }
    }
}

/// What a content filter does when its pattern matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentAction {
    /// Refuse the message.
    Block,
    /// Let it through and record a warning.
    Warn,
}

/// Why a content filter's pattern was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContentPatternError {
    /// The pattern does not parse; the parser's message, on one line.
    #[error("not a regular expression: {0}")]
    Syntax(String),
    /// The compiled pattern exceeds the size limit.
    #[error("the compiled pattern is larger than 1 MiB")]
    TooBig,
}

/// A regular expression over an outgoing message's text.
#[derive(Clone, Debug)]
pub struct ContentFilter {
    /// The filter's position in the configuration, counting from 1; rules and audit
    /// records name it as `channel.NAME.filter.INDEX`.
    pub index: usize,
    /// The pattern.
    pub pattern: Regex,
    /// What a match does.
    pub action: ContentAction,
}

impl ContentFilter {
    /// Compiles `pattern` with a size limit, so a filter cannot take unbounded memory.
    pub fn new(
        index: usize,
        pattern: &str,
        action: ContentAction,
    ) -> Result<ContentFilter, ContentPatternError> {
        let pattern = RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(_) => ContentPatternError::TooBig,
                // The parser's own message, without its caret diagram.
                regex::Error::Syntax(text) => ContentPatternError::Syntax(
                    text.lines()
                        .rev()
                        .find_map(|l| l.strip_prefix("error: "))
                        .unwrap_or(&text)
                        .to_owned(),
                ),
                other => ContentPatternError::Syntax(other.to_string()),
            })?;
        Ok(ContentFilter {
            index,
            pattern,
            action,
        })
    }
}

/// What the content filters say about a text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContentVerdict {
    /// The index of the first blocking filter that matched, in order.
    pub blocked_by: Option<usize>,
    /// The indexes of every warning filter that matched.
    pub warnings: Vec<usize>,
}

/// Runs every filter over `text`.
pub fn content_verdict(filters: &[ContentFilter], text: &str) -> ContentVerdict {
    let mut verdict = ContentVerdict::default();
    for f in filters {
        match f.action {
            ContentAction::Block if verdict.blocked_by.is_none() && f.pattern.is_match(text) => {
                verdict.blocked_by = Some(f.index);
            }
            ContentAction::Warn if f.pattern.is_match(text) => verdict.warnings.push(f.index),
            _ => {}
        }
    }
    verdict
}

/// Send rate limits of one channel: at most `per_minute` sends on the channel and
/// `per_recipient_per_minute` to one recipient, in any 60 seconds.
///
/// Each limit is a generic cell rate algorithm (a token bucket that refills one send
/// every `60s / limit` and holds `limit`). Every attempt is charged, including attempts
/// the limiter refuses and attempts refused later by other checks, so an agent that keeps
/// hammering stays shut out. The debt is capped at one window: a minute after the last
/// attempt the limits are whole again. Recipients are counted by their normalised address
/// ([`normalize_address`]); recipients whose bucket is full again are forgotten, and at
/// most 4096 are remembered (a new recipient beyond that is refused until one is
/// forgotten).
#[derive(Debug)]
pub struct SendLimiter {
    per_minute: u32,
    per_recipient_per_minute: u32,
    state: Mutex<LimiterState>,
}

#[derive(Debug, Default)]
struct LimiterState {
    /// The channel's theoretical arrival time: when its bucket would be full again.
    channel: Option<Instant>,
    recipients: HashMap<String, Instant>,
}

impl SendLimiter {
    /// A limiter; a limit of 0 refuses every send.
    pub fn new(per_minute: u32, per_recipient_per_minute: u32) -> SendLimiter {
        SendLimiter {
            per_minute,
            per_recipient_per_minute,
            state: Mutex::new(LimiterState::default()),
        }
    }

    /// The channel-wide limit per minute.
    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    /// The limit per recipient per minute.
    pub fn per_recipient_per_minute(&self) -> u32 {
        self.per_recipient_per_minute
    }

    /// Charges one send attempt to `recipient` at `now`; `Err` holds how long to wait
    /// before an attempt would pass.
    pub fn charge(&self, recipient: &str, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let channel = gcra(&mut state.channel, self.per_minute, now);
        let key = normalize_address(recipient);
        let recipients = &mut state.recipients;
        if recipients.len() >= MAX_RECIPIENTS && !recipients.contains_key(&key) {
            recipients.retain(|_, full_at| *full_at > now);
        }
        let recipient = if recipients.len() >= MAX_RECIPIENTS && !recipients.contains_key(&key) {
            let soonest = recipients.values().min().copied().unwrap_or(now);
            Err(soonest
                .saturating_duration_since(now)
                .max(Duration::from_secs(1)))
        } else {
            let mut tat = recipients.get(&key).copied();
            let verdict = gcra(&mut tat, self.per_recipient_per_minute, now);
            if let Some(tat) = tat {
                recipients.insert(key, tat);
            }
            verdict
        };
        match (channel, recipient) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(a), Ok(())) | (Ok(()), Err(a)) => Err(a),
        }
    }
}

/// One attempt against a limit of `limit` per window, with `tat` the time the bucket
/// is full again.
fn gcra(tat: &mut Option<Instant>, limit: u32, now: Instant) -> Result<(), Duration> {
    if limit == 0 {
        return Err(WINDOW);
    }
    let interval = WINDOW / limit;
    let tolerance = WINDOW - interval;
    let start = tat.map_or(now, |t| t.max(now));
    let allowed = start.saturating_duration_since(now) <= tolerance;
    let next = (start + interval).min(now + WINDOW);
    *tat = Some(next);
    if allowed {
        Ok(())
    } else {
        Err(next
            .saturating_duration_since(now)
            .saturating_sub(tolerance))
    }
}

/// Everything the Gate checks about a channel's messages.
#[derive(Debug)]
pub struct Filters {
    /// Who may be sent to.
    pub outbound: AddressFilter,
    /// What an agent may read: a message passes when its sender's address does, a chat
    /// (its history, its place in the chat list, the owner's own messages in it) when its
    /// id does; a chat whose id is not an address (a group) is readable only when listed.
    pub inbound: AddressFilter,
    /// Patterns over outgoing text, in order.
    pub content: Vec<ContentFilter>,
    /// Send rate limits.
    pub limiter: SendLimiter,
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    /// One line per `(pattern, address)`: whether it matches.
    fn check_matches(cases: &[(&str, &str)], expected: Expect) {
        let actual: String = cases
            .iter()
            .map(|(p, a)| {
                let m = Pattern::parse(p).unwrap().matches(a);
                format!("{p:<16} {a:<22} {}\n", if m { "match" } else { "-" })
            })
            .collect();
        expected.assert_eq(&actual);
    }

    #[test]
    fn wildcards_case_and_phone_formatting() {
        check_matches(
            &[
                ("+1415*", "+14155550100"),
                ("+1415*", "+1 (415) 555-0100"),
                ("+1415*", "+1.415.555.0100"),
                ("+1 (415) *", "+14155550100"),
                ("+1415*", "+14165550100"),
                ("+1415*", "14155550100"),
                ("*@example.com", "alice@example.com"),
                ("*@example.com", "Alice@EXAMPLE.com"),
                ("*@example.com", "alice@example.com.evil"),
                ("*@example.com", "alice@notexample.com"),
                ("*@example.com", "@example.com"),
                ("alice?", "alice1"),
                ("alice?", "alice"),
                ("alice?", "alice12"),
                ("a*b*c", "axxbyyc"),
                ("a*b*c", "axxbyy"),
                ("*", "anything"),
                ("bob", "BOB"),
                ("bob", "bob2"),
            ],
            expect![[r#"
                +1415*           +14155550100           match
                +1415*           +1 (415) 555-0100      match
                +1415*           +1.415.555.0100        match
                +1 (415) *       +14155550100           match
                +1415*           +14165550100           -
                +1415*           14155550100            -
                *@example.com    alice@example.com      match
                *@example.com    Alice@EXAMPLE.com      match
                *@example.com    alice@example.com.evil -
                *@example.com    alice@notexample.com   -
                *@example.com    @example.com           match
                alice?           alice1                 match
                alice?           alice                  -
                alice?           alice12                -
                a*b*c            axxbyyc                match
                a*b*c            axxbyy                 -
                *                anything               match
                bob              BOB                    match
                bob              bob2                   -
            "#]],
        );
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert_eq!(Pattern::parse("  "), Err(PatternError::Empty));
        assert_eq!(Pattern::parse("a\nb"), Err(PatternError::Control));
        assert_eq!(Pattern::parse("+1415\u{200b}*"), Err(PatternError::Control));
        assert_eq!(Pattern::parse(&"a".repeat(257)), Err(PatternError::TooLong));
    }

    fn filter(allow: &[&str], deny: &[&str]) -> AddressFilter {
        let p = |l: &[&str]| l.iter().map(|p| Pattern::parse(p).unwrap()).collect();
        AddressFilter {
            allow: p(allow),
            deny: p(deny),
        }
    }

    fn check_filter(f: &AddressFilter, addrs: &[&str], expected: Expect) {
        let actual: String = addrs
            .iter()
            .map(|a| match f.check(a) {
                Ok(()) => format!("{a:?}: ok\n"),
                Err(r) => format!("{a:?}: {r}\n"),
            })
            .collect();
        expected.assert_eq(&actual);
    }

    #[test]
    fn deny_wins_and_an_empty_allowlist_allows_nothing() {
        let f = filter(&["+1415*", "*@example.com"], &["+1415555*", "boss@*"]);
        check_filter(
            &f,
            &[
                "+14157770100",
                "+1 (415) 555-0100",
                "+14155550100",
                "boss@example.com",
                "alice@example.com",
                "+12125550100",
                "",
                "+1415\u{200b}7770100",
                "alice@example.com\n",
            ],
            expect![[r#"
                "+14157770100": ok
                "+1 (415) 555-0100": address matches denylist pattern `+1415555*`
                "+14155550100": address matches denylist pattern `+1415555*`
                "boss@example.com": address matches denylist pattern `boss@*`
                "alice@example.com": ok
                "+12125550100": address is not on the allowlist
                "": address is unusable: empty
                "+1415\u{200b}7770100": address is unusable: holds control or invisible characters
                "alice@example.com\n": address is unusable: holds control or invisible characters
            "#]],
        );
        check_filter(
            &filter(&[], &[]),
            &["+14155550100", "alice@example.com"],
            expect![[r#"
                "+14155550100": address is not on the allowlist
                "alice@example.com": address is not on the allowlist
            "#]],
        );
        check_filter(
            &filter(&["*"], &["*"]),
            &["anyone"],
            expect![[r#"
                "anyone": address matches denylist pattern `*`
            "#]],
        );
    }

    #[test]
    fn a_recipient_list_is_not_one_allowlisted_address() {
        // Each names an address off the allowlist (or on the denylist) that the real CLI
        // would deliver to (`gog gmail send --to A,B`, an RFC 5322 To list), or a number
        // written so that it does not read as the one it looks like.
        let f = filter(&["*@example.com", "+1415*"], &["+1900*"]);
        check_filter(
            &f,
            &[
                "evil@attacker.com,bob@example.com",
                "Evil <evil@attacker.com>, bob@example.com",
                "+14155550100,+19005550100",
                "bob@example.com;evil@attacker.com",
                "evil@attacker.com\\,bob@example.com",
                "\"evil@attacker.com\"@example.com",
                "(evil@attacker.com)@example.com",
                "bob@example.com ",
                "+1415\u{a0}555 0100",
                "+1415 555 0100\u{a0}",
                "+1415\u{2007}5550100",
                "+1415\u{ff15}550100",
                "+\u{0661}4155550100",
                "+14155550100123456",
                "+14",
                "+1 (415) 555-0100",
                "bob@example.com",
            ],
            expect![[r#"
                "evil@attacker.com,bob@example.com": address is unusable: holds a list or display-name character
                "Evil <evil@attacker.com>, bob@example.com": address is unusable: holds whitespace
                "+14155550100,+19005550100": address is unusable: holds a list or display-name character
                "bob@example.com;evil@attacker.com": address is unusable: holds a list or display-name character
                "evil@attacker.com\\,bob@example.com": address is unusable: holds a list or display-name character
                "\"evil@attacker.com\"@example.com": address is unusable: holds a list or display-name character
                "(evil@attacker.com)@example.com": address is unusable: holds a list or display-name character
                "bob@example.com ": address is unusable: holds whitespace
                "+1415\u{a0}555 0100": address is unusable: holds whitespace
                "+1415 555 0100\u{a0}": address is unusable: holds whitespace
                "+1415\u{2007}5550100": address is unusable: holds whitespace
                "+1415５550100": address is unusable: not a phone number of 3 to 15 ASCII digits
                "+١4155550100": address is unusable: not a phone number of 3 to 15 ASCII digits
                "+14155550100123456": address is unusable: not a phone number of 3 to 15 ASCII digits
                "+14": address is unusable: not a phone number of 3 to 15 ASCII digits
                "+1 (415) 555-0100": ok
                "bob@example.com": ok
            "#]],
        );
        // Refused before any pattern is tried: an allow-all list does not let them by.
        check_filter(
            &filter(&["*"], &[]),
            &[
                "a@example.com,b@example.com",
                "+1415\u{ff15}550100",
                "alice",
            ],
            expect![[r#"
                "a@example.com,b@example.com": address is unusable: holds a list or display-name character
                "+1415５550100": address is unusable: not a phone number of 3 to 15 ASCII digits
                "alice": ok
            "#]],
        );
    }

    #[test]
    fn a_chat_id_is_one_printable_token() {
        let f = filter(&["+1415*", "7", "3kT+g0=", "imessage;-;+1415*"], &[]);
        let actual: String = [
            "+1 (415) 555-0100",
            "7",
            "3kT+g0=",
            "iMessage;-;+14155550100",
            "+14155550100,7",
            "+1415\u{ff15}550100",
            "\u{ff17}",
            "7 ",
            "8",
        ]
        .iter()
        .map(|c| match f.check_chat(c) {
            Ok(()) => format!("{c:?}: ok\n"),
            Err(r) => format!("{c:?}: {r}\n"),
        })
        .collect();
        expect![[r#"
            "+1 (415) 555-0100": ok
            "7": ok
            "3kT+g0=": ok
            "iMessage;-;+14155550100": ok
            "+14155550100,7": address is unusable: holds a list or display-name character
            "+1415５550100": address is unusable: a chat id is printable ASCII
            "７": address is unusable: a chat id is printable ASCII
            "7 ": ok
            "8": address is not on the allowlist
        "#]]
        .assert_eq(&actual);
    }

    #[test]
    fn a_number_is_one_recipient_however_it_is_written() {
        // Formatting a number differently is one recipient to the lists and the limiter;
        // spellings the lists cannot read as that number (no-break spaces, fullwidth
        // digits) are refused, so they never reach the limiter as someone new to send to.
        let out = filter(&["+1415*"], &[]);
        for v in [
            "+1415\u{a0}555 0100",
            "+1415\u{ff15}550100",
            "+1415 555 0100\u{a0}",
        ] {
            assert!(
                matches!(out.check(v), Err(Refusal::BadAddress { .. })),
                "{v:?} passed the allowlist"
            );
        }
        let l = SendLimiter::new(100, 1);
        let now = Instant::now();
        l.charge("+1 415 555 0100", now).unwrap();
        for v in ["+14155550100", "+1 (415) 555-0100", "+1.415.555.0100"] {
            assert_eq!(out.check(v), Ok(()));
            assert!(l.charge(v, now).is_err(), "{v:?} is a fresh recipient");
        }
    }

    #[test]
    fn content_filters_block_in_order_and_warn_on_every_hit() {
        let filters = vec![
            ContentFilter::new(1, r"(?i)\bpassword\b", ContentAction::Block).unwrap(),
            ContentFilter::new(2, r"(?i)urgent", ContentAction::Warn).unwrap(),
            ContentFilter::new(3, r"\d{16}", ContentAction::Block).unwrap(),
            ContentFilter::new(4, r"(?i)wire", ContentAction::Warn).unwrap(),
        ];
        let check = |text: &str, expected: Expect| {
            expected.assert_debug_eq(&content_verdict(&filters, text));
        };
        check(
            "hello",
            expect![[r#"
                ContentVerdict {
                    blocked_by: None,
                    warnings: [],
                }
            "#]],
        );
        check(
            "URGENT: wire the money",
            expect![[r#"
                ContentVerdict {
                    blocked_by: None,
                    warnings: [
                        2,
                        4,
                    ],
                }
            "#]],
        );
        check(
            "card 4111111111111111, Password: hunter2, urgent",
            expect![[r#"
                ContentVerdict {
                    blocked_by: Some(
                        1,
                    ),
                    warnings: [
                        2,
                    ],
                }
            "#]],
        );
        check(
            "card 4111111111111111",
            expect![[r#"
                ContentVerdict {
                    blocked_by: Some(
                        3,
                    ),
                    warnings: [],
                }
            "#]],
        );
        assert_eq!(
            ContentFilter::new(1, "a{1000}{1000}", ContentAction::Block).err(),
            Some(ContentPatternError::TooBig)
        );
        assert_eq!(
            ContentFilter::new(1, "(", ContentAction::Block).err(),
            Some(ContentPatternError::Syntax("unclosed group".into()))
        );
    }

    /// Runs `(seconds since start, recipient)` attempts; one line each.
    fn check_limiter(limiter: &SendLimiter, attempts: &[(u64, &str)], expected: Expect) {
        let start = Instant::now();
        let actual: String = attempts
            .iter()
            .map(|&(at, to)| {
                let verdict = limiter.charge(to, start + Duration::from_secs(at));
                match verdict {
                    Ok(()) => format!("t={at}s {to}: ok\n"),
                    Err(wait) => format!("t={at}s {to}: wait {}ms\n", wait.as_millis()),
                }
            })
            .collect();
        expected.assert_eq(&actual);
    }

    #[test]
    fn the_limiter_counts_refused_attempts_and_recovers() {
        // 2 per recipient per minute: the third is refused; hammering keeps it refused;
        // a minute after the last attempt it passes again.
        check_limiter(
            &SendLimiter::new(100, 2),
            &[
                (0, "+14155550100"),
                (0, "+1 (415) 555-0100"),
                (0, "+14155550100"),
                (20, "+14155550100"),
                (40, "+14155550100"),
                (59, "+14155550100"),
                (60, "alice@example.com"),
                (119, "+14155550100"),
                (120, "+14155550100"),
            ],
            expect![[r#"
                t=0s +14155550100: ok
                t=0s +1 (415) 555-0100: ok
                t=0s +14155550100: wait 30000ms
                t=20s +14155550100: wait 30000ms
                t=40s +14155550100: wait 30000ms
                t=59s +14155550100: wait 30000ms
                t=60s alice@example.com: ok
                t=119s +14155550100: ok
                t=120s +14155550100: ok
            "#]],
        );
        // The third send would pass at 30s, half a minute after the first two...
        check_limiter(
            &SendLimiter::new(100, 2),
            &[(0, "a"), (0, "a"), (30, "a")],
            expect![[r#"
                t=0s a: ok
                t=0s a: ok
                t=30s a: ok
            "#]],
        );
        // ... but not after a refused attempt at 29s.
        check_limiter(
            &SendLimiter::new(100, 2),
            &[(0, "a"), (0, "a"), (29, "a"), (30, "a")],
            expect![[r#"
                t=0s a: ok
                t=0s a: ok
                t=29s a: wait 30000ms
                t=30s a: wait 30000ms
            "#]],
        );
        // The channel-wide limit spans recipients.
        check_limiter(
            &SendLimiter::new(3, 10),
            &[(0, "a"), (0, "b"), (0, "c"), (0, "d"), (20, "e"), (61, "f")],
            expect![[r#"
                t=0s a: ok
                t=0s b: ok
                t=0s c: ok
                t=0s d: wait 20000ms
                t=20s e: ok
                t=61s f: ok
            "#]],
        );
        check_limiter(
            &SendLimiter::new(0, 10),
            &[(0, "a")],
            expect![[r#"
                t=0s a: wait 60000ms
            "#]],
        );
    }

    #[test]
    fn the_limiter_forgets_idle_recipients() {
        let limiter = SendLimiter::new(u32::MAX, 5);
        let start = Instant::now();
        for i in 0..MAX_RECIPIENTS {
            limiter.charge(&format!("r{i}"), start).unwrap();
        }
        // Full, and nobody idle yet: a new recipient waits.
        assert!(limiter.charge("new", start).is_err());
        // Known recipients are still served.
        limiter.charge("r1", start).unwrap();
        // A minute later every bucket is full again and forgotten.
        let later = start + WINDOW;
        limiter.charge("new", later).unwrap();
        assert_eq!(limiter.state.lock().unwrap().recipients.len(), 1);
    }
}
