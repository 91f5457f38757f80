//! The stream scrubber must scrub exactly like the whole-string scrubber, whatever the
//! chunking: a secret split across chunks (or an encoding of one) is still caught, and
//! nothing is removed that the whole-string scrubber would keep.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use carapace_types::Secret;
use carapace_vault::{REDACTED, Scrubber};

/// xorshift64*: deterministic, so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SECRETS: &[&str] = &[
    "hunter2-very-secret/+=",
    "correct horse battery staple",
    "pässwörd-ünïcode-🦀-key",
    "0123456789abcdef0123456789abcdef",
];

/// The same secrets without the one holding spaces: streams then hold back only the
/// unfinished word, a different path worth its own random splits.
fn unspaced_scrubber() -> Scrubber {
    let secrets: Vec<Secret<String>> = SECRETS
        .iter()
        .filter(|s| !s.contains(' '))
        .map(|s| Secret::new(s.to_string()))
        .collect();
    Scrubber::new(&secrets)
}

fn scrubber() -> Scrubber {
    let secrets: Vec<Secret<String>> = SECRETS.iter().map(|s| Secret::new(s.to_string())).collect();
    Scrubber::new(&secrets)
}

/// Pieces of text that exercise every way of matching; each input is a random sequence
/// of them.
fn pieces() -> Vec<String> {
    let mut p: Vec<String> = vec![
        "The quick brown fox jumps over the lazy dog. ".into(),
        "ünïcödé prose with émojis 🦀🦀 ".into(),
        "{\"id\": 42, \"name\": \"report\", \"ok\": true}\n".into(),
        "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 ".into(),
        "sk-proj-abcdefghijklmnopqrstuvwxyz012345".into(),
        "sk-ant-api03-ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdef-0123456789".into(),
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789".into(),
        " AKIAIOSFODNN7EXAMPLE ".into(),
        "AKIAIOSFODNN7EXAMPLEX".into(),
        "xoxb-1234567890-abcdefghij ".into(),
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U".into(),
        "Authorization: Bearer   abcdefghijklmnopqrstuvwxyz.0123456789\n".into(),
        "bearer short ".into(),
        "postgres://app:s3cr3t-p@ss@db.internal:5432/app ".into(),
        "https://example.com:8443/path?q=1 ".into(),
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----\n".into(),
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA".into(),
        "x".repeat(300),
        " ".into(),
        "\n".into(),
    ];
    for s in SECRETS {
        p.push(s.to_string());
        p.push(format!(" {} ", STANDARD.encode(s)));
        p.push(URL_SAFE_NO_PAD.encode(format!("xy{s}z")));
        p.push(hex::encode(s));
        p.push(s.chars().rev().collect());
        // A secret glued to a shape and to word characters.
        p.push(format!("sk-{s}"));
    }
    p
}

fn chunked(s: &Scrubber, text: &str, rng: &mut Rng) -> String {
    let mut stream = s.stream();
    let mut out = String::new();
    let mut at = 0;
    while at < text.len() {
        // Mostly small chunks, sometimes large ones, and sometimes empty ones.
        let max = match rng.below(4) {
            0 => 1,
            1 => 8,
            2 => 64,
            _ => 2048,
        };
        let mut end = (at + rng.below(max + 1)).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        out.push_str(&stream.push(&text[at..end]));
        at = end;
    }
    out.push_str(&stream.finish());
    out
}

#[test]
fn any_chunking_scrubs_like_the_whole_text() {
    for s in [scrubber(), unspaced_scrubber()] {
        any_chunking_with(&s);
    }
}

fn any_chunking_with(s: &Scrubber) {
    let pieces = pieces();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for case in 0..1000 {
        let n = 1 + rng.below(30);
        let text: String = (0..n)
            .map(|_| pieces[rng.below(pieces.len())].as_str())
            .collect();
        let mut whole = text.clone();
        s.scrub_string(&mut whole);
        for split in 0..8 {
            let streamed = chunked(s, &text, &mut rng);
            assert_eq!(streamed, whole, "case {case} split {split}: {text:?}");
        }
    }
}

#[test]
fn a_secret_split_at_every_byte_is_caught() {
    for s in [scrubber(), unspaced_scrubber()] {
        split_everywhere(&s);
    }
}

fn split_everywhere(s: &Scrubber) {
    for secret in SECRETS.iter().filter(|x| s.contains_secret(x)) {
        for enc in [
            secret.to_string(),
            STANDARD.encode(secret),
            hex::encode(secret),
        ] {
            let text = format!("before {enc} after");
            for cut in 1..text.len() {
                if !text.is_char_boundary(cut) {
                    continue;
                }
                let mut stream = s.stream();
                let mut out = stream.push(&text[..cut]);
                out.push_str(&stream.push(&text[cut..]));
                out.push_str(&stream.finish());
                assert_eq!(
                    out,
                    format!("before {REDACTED} after"),
                    "{enc} cut at {cut}"
                );
            }
        }
    }
}

#[test]
fn a_long_stream_is_emitted_as_it_goes_not_only_at_the_end() {
    let s = scrubber();
    let mut stream = s.stream();
    let mut emitted = 0;
    for _ in 0..1000 {
        emitted += stream.push("plain words of prose, ").len();
    }
    let rest = stream.finish();
    assert!(
        emitted > 20_000,
        "only {emitted} bytes emitted before finish"
    );
    assert!(rest.len() < 4096, "{} bytes held back", rest.len());
}

#[test]
fn a_private_key_split_across_chunks_is_removed_whole() {
    let s = Scrubber::new(&[]);
    let key = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yRxP4fzaN\n-----END EC PRIVATE KEY-----";
    let text = format!("config:\n{key}\ndone\n");
    let mut stream = s.stream();
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        out.push_str(&stream.push(line));
    }
    out.push_str(&stream.finish());
    assert_eq!(out, format!("config:\n{REDACTED}\ndone\n"));
}

#[test]
fn finished_words_go_out_at_once_and_open_ones_wait() {
    // With no whitespace in any secret, a secret lies within one word.
    let s = unspaced_scrubber();
    let mut stream = s.stream();
    // A word that ended cannot grow into a secret: a stalled model's words are shown.
    assert_eq!(stream.push("this answer "), "this answer ");
    // An unfinished word, `bearer` with its spaces, a PEM header: held back.
    assert_eq!(stream.push("stops"), "");
    assert_eq!(stream.push(" Bearer "), "stops ");
    assert_eq!(stream.push("abc"), "");
    let token = "abcdefghijklmnopqrstuvwxyz0123456789";
    assert_eq!(stream.push(&token[3..]), "");
    assert_eq!(
        stream.push(" and -----BEGIN RSA "),
        format!("{REDACTED} and ")
    );
    assert_eq!(stream.finish(), "-----BEGIN RSA ");
}
