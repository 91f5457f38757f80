//! Turning a response body into what the caller gets: readable text or a one-line summary,
//! with every injected credential replaced by `[REDACTED]`.

/// What the body is rendered as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Html,
    Text,
    Binary,
}

/// The kind for a Content-Type header value; `None` when there is none (sniffed later).
pub(crate) fn kind(content_type: Option<&str>) -> Option<Kind> {
    let essence = content_type?
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    Some(match essence.as_str() {
        "text/html" | "application/xhtml+xml" => Kind::Html,
        "application/json" | "application/xml" => Kind::Text,
        e if e.starts_with("text/") || e.ends_with("+json") || e.ends_with("+xml") => Kind::Text,
        _ => Kind::Binary,
    })
}

/// A body without a Content-Type is text when it is UTF-8 without NUL bytes.
pub(crate) fn sniff(bytes: &[u8]) -> Kind {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.contains('\0') => Kind::Text,
        // A multi-byte character cut by truncation is still text.
        Err(e) if e.error_len().is_none() && !bytes.contains(&0) => Kind::Text,
        _ => Kind::Binary,
    }
}

/// HTML as plain text; links stay readable as numbered footnotes with their URLs.
pub(crate) fn html_to_text(html: &str) -> String {
    html2text::config::plain()
        .no_link_wrapping()
        .allow_width_overflow()
        .string_from_read(html.as_bytes(), 100)
        // Rendering fails only on pathological documents; the source is still text.
        .unwrap_or_else(|_| html.to_string())
}

/// The summary returned instead of a binary body.
pub(crate) fn binary_summary(content_type: Option<&str>, bytes: u64, truncated: bool) -> String {
    let ty = content_type
        .and_then(|c| c.split(';').next())
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .unwrap_or("unknown type");
    let at_least = if truncated { "at least " } else { "" };
    format!("binary content, {ty}, {at_least}{bytes} bytes")
}

/// The marker that replaces a credential.
pub(crate) const REDACTED: &str = "[REDACTED]";

/// Replaces the injected credential values, in the encodings a server is likely to
/// reflect them in, with [`REDACTED`].
#[derive(Debug, Default)]
pub(crate) struct Redactor {
    /// Longest first, so an encoded form is replaced whole before a shorter form inside.
    needles: Vec<String>,
}

impl Redactor {
    pub(crate) fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Redactor {
        let mut needles: Vec<String> = Vec::new();
        for v in values.into_iter().filter(|v| !v.is_empty()) {
            let form: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
            let percent = form.replace('+', "%20");
            let json = serde_json::to_string(v).unwrap_or_default();
            let json = json.trim_matches('"').to_string();
            for n in [v.to_string(), form, percent, json] {
                if !n.is_empty() && !needles.contains(&n) {
                    needles.push(n);
                }
            }
        }
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        Redactor { needles }
    }

    /// The forms replaced, longest first.
    pub(crate) fn needles(&self) -> &[String] {
        &self.needles
    }

    /// True when `s` contains a credential in any of the known forms.
    pub(crate) fn found_in(&self, s: &str) -> bool {
        self.needles.iter().any(|n| s.contains(n.as_str()))
    }

    pub(crate) fn redact(&self, s: &str) -> String {
        let mut out = s.to_string();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), REDACTED);
            }
        }
        out
    }

    /// For a body cut at the size limit: drops a tail that is the start of a credential,
    /// so the cut does not leave a prefix of it behind.
    pub(crate) fn trim_partial(&self, s: &mut String) {
        for n in &self.needles {
            let cut = n
                .char_indices()
                .map(|(i, _)| i)
                .filter(|i| *i > 0)
                .rev()
                .find(|i| s.ends_with(&n[..*i]));
            if let Some(i) = cut {
                s.truncate(s.len() - i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        for (ct, expected) in [
            ("text/html; charset=utf-8", Kind::Html),
            ("TEXT/HTML", Kind::Html),
            ("application/xhtml+xml", Kind::Html),
            ("text/plain", Kind::Text),
            ("text/csv", Kind::Text),
            ("application/json", Kind::Text),
            ("application/json; charset=latin1", Kind::Text),
            ("application/problem+json", Kind::Text),
            ("application/xml", Kind::Text),
            ("application/atom+xml", Kind::Text),
            ("image/png", Kind::Binary),
            ("application/octet-stream", Kind::Binary),
            ("application/pdf", Kind::Binary),
            ("", Kind::Binary),
        ] {
            assert_eq!(kind(Some(ct)), Some(expected), "{ct}");
        }
        assert_eq!(kind(None), None);
        assert_eq!(sniff(b"hello"), Kind::Text);
        assert_eq!(sniff("caf\u{e9}".as_bytes()), Kind::Text);
        assert_eq!(sniff(&"caf\u{e9}".as_bytes()[..4]), Kind::Text);
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0"), Kind::Binary);
        assert_eq!(sniff(b"\xff\xfe\xfd"), Kind::Binary);
    }

    #[test]
    fn summary() {
        assert_eq!(
            binary_summary(Some("image/png; q=1"), 12, false),
            "binary content, image/png, 12 bytes"
        );
        assert_eq!(
            binary_summary(None, 5, true),
            "binary content, unknown type, at least 5 bytes"
        );
    }

    #[test]
    fn html_is_readable() {
        let text = html_to_text(
            "<html><head><title>T</title><style>p{}</style></head><body><h1>Head</h1>\
             <p>Some <b>bold</b> and a <a href=\"https://example.com/page\">link</a>.</p>\
             <script>var x = 1;</script></body></html>",
        );
        assert_eq!(
            text,
            "# Head\n\nSome **bold** and a [link][1].\n\n[1]: https://example.com/page\n"
        );
    }

    #[test]
    fn redaction() {
        let r = Redactor::new(["s3cr3t/+ x\"y", "", "tok"]);
        let body =
            "a s3cr3t/+ x\"y b s3cr3t%2F%2B+x%22y c s3cr3t%2F%2B%20x%22y d s3cr3t/+ x\\\"y e tok";
        let out = r.redact(body);
        assert_eq!(
            out,
            "a [REDACTED] b [REDACTED] c [REDACTED] d [REDACTED] e [REDACTED]"
        );
        assert!(r.found_in("xx tok"));
        assert!(!r.found_in("xx to"));
        assert!(Redactor::new([""]).needles.is_empty());
    }

    #[test]
    fn truncation_does_not_leave_a_prefix() {
        let r = Redactor::new(["sk-live-123"]);
        let mut s = "token: sk-live".to_string();
        r.trim_partial(&mut s);
        assert_eq!(s, "token: ");
        let mut s = "nothing here".to_string();
        r.trim_partial(&mut s);
        assert_eq!(s, "nothing here");
    }
}
