//! Destinations and the patterns that match them.

use std::fmt;

/// What kind of place a destination is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DestKind {
    /// A network host (`example.com`, `api.example.com:8443`).
    Host,
    /// A path in the workspace (`notes/today.md`).
    Path,
    /// A messaging contact (`+14155550100`, `bob@example.com`).
    Contact,
    /// An MCP server of `[[mcp.servers]]`, by name (`github`): where its tools' calls go.
    Mcp,
}

impl DestKind {
    /// Stable lowercase name, used as the prefix of a destination's text form.
    pub fn as_str(self) -> &'static str {
        match self {
            DestKind::Host => "host",
            DestKind::Path => "path",
            DestKind::Contact => "contact",
            DestKind::Mcp => "mcp",
        }
    }

    fn parse(s: &str) -> Option<DestKind> {
        match s {
            "host" => Some(DestKind::Host),
            "path" => Some(DestKind::Path),
            "contact" => Some(DestKind::Contact),
            "mcp" => Some(DestKind::Mcp),
            _ => None,
        }
    }
}

/// A place a call reaches, extracted from its arguments by the tool's definition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    /// The kind of place.
    pub kind: DestKind,
    /// The place; hosts and contacts are lowercased when built with [`Destination::new`].
    pub value: String,
}

impl Destination {
    /// A destination; host and contact names are compared without case.
    pub fn new(kind: DestKind, value: impl Into<String>) -> Destination {
        let mut value = value.into();
        if kind != DestKind::Path {
            value = value.to_ascii_lowercase();
        }
        Destination { kind, value }
    }

    /// A host destination.
    pub fn host(value: impl Into<String>) -> Destination {
        Destination::new(DestKind::Host, value)
    }

    /// A workspace path destination.
    pub fn path(value: impl Into<String>) -> Destination {
        Destination::new(DestKind::Path, value)
    }

    /// A contact destination.
    pub fn contact(value: impl Into<String>) -> Destination {
        Destination::new(DestKind::Contact, value)
    }

    /// An MCP server, by its configured name.
    pub fn mcp(value: impl Into<String>) -> Destination {
        Destination::new(DestKind::Mcp, value)
    }

    /// Parses `kind:value` as written in test cases and plans; a bare value is a host.
    pub fn parse(text: &str) -> Destination {
        match text.split_once(':') {
            Some((kind, value)) if DestKind::parse(kind).is_some() => {
                Destination::new(DestKind::parse(kind).unwrap_or(DestKind::Host), value)
            }
            _ => Destination::host(text),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.value)
    }
}

/// A glob over names: `*` matches any run of characters (dots and slashes included),
/// everything else matches itself. An optional `host:`, `path:`, `contact:` or `mcp:` prefix
/// limits a destination pattern to that kind. Host and contact matching ignores case.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pattern {
    kind: Option<DestKind>,
    glob: String,
    /// The glob lowercased, for hosts and contacts.
    folded: String,
    text: String,
}

impl Pattern {
    /// Parses a pattern. Empty patterns are refused: they would match nothing by accident.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("a pattern is empty".into());
        }
        let (kind, glob) = match trimmed.split_once(':') {
            Some((k, rest)) if DestKind::parse(k).is_some() => (DestKind::parse(k), rest),
            _ => (None, trimmed),
        };
        if glob.is_empty() {
            return Err(format!(
                "the pattern `{trimmed}` has nothing after its kind"
            ));
        }
        Ok(Pattern {
            kind,
            glob: glob.to_string(),
            folded: glob.to_ascii_lowercase(),
            text: trimmed.to_string(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when `name` (a tool name, a source name) matches the pattern as written,
    /// case-sensitively. A kind prefix is part of a name (`contact:*` matches the source
    /// `contact:+14155550100`), not a destination kind.
    pub fn matches_name(&self, name: &str) -> bool {
        glob_match(self.text.as_bytes(), name.as_bytes())
    }

    /// True when the destination is of the pattern's kind (if it names one) and its value
    /// matches.
    pub fn matches(&self, dest: &Destination) -> bool {
        if self.kind.is_some_and(|k| k != dest.kind) {
            return false;
        }
        if dest.kind == DestKind::Path {
            glob_match(self.glob.as_bytes(), dest.value.as_bytes())
        } else {
            glob_match(self.folded.as_bytes(), dest.value.as_bytes())
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Iterative glob match with `*` only; linear in practice, no recursion to blow the stack.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    // The literal tail after the last `*`, then the literal head before the first, must
    // end and begin the text; comparing them byte by byte first refuses most
    // non-matches at the first byte.
    let (mut pe, mut te) = (pattern.len(), text.len());
    while pe > 0 && pattern[pe - 1] != b'*' {
        if te == 0 || pattern[pe - 1] != text[te - 1] {
            return false;
        }
        pe -= 1;
        te -= 1;
    }
    if pe == 0 {
        return te == 0;
    }
    let (mut ps, mut ts) = (0, 0);
    while pattern[ps] != b'*' {
        if ts == te || pattern[ps] != text[ts] {
            return false;
        }
        ps += 1;
        ts += 1;
    }
    // What is left of the pattern starts and ends with `*`.
    let (pattern, text) = (&pattern[ps..pe], &text[ts..te]);
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, dest: &str) -> bool {
        Pattern::parse(pattern)
            .unwrap()
            .matches(&Destination::parse(dest))
    }

    #[test]
    fn globs_match_hosts_paths_and_contacts() {
        assert!(m("*.example.com", "api.example.com"));
        assert!(m("*.example.com", "a.b.example.com"));
        assert!(!m("*.example.com", "example.com"));
        assert!(!m("*.example.com", "example.com.evil.net"));
        assert!(m("EXAMPLE.com", "example.COM"));
        assert!(m("path:notes/*", "path:notes/a/b.md"));
        assert!(!m("path:notes/*", "path:Notes/a.md"));
        assert!(!m("host:notes/*", "path:notes/a.md"));
        assert!(m("contact:+1415*", "contact:+14155550100"));
        assert!(m("*@example.com", "contact:bob@example.com"));
        assert!(!m("*@example.com", "contact:bob@example.com.evil"));
        assert!(m("*", "path:anything"));
    }

    #[test]
    fn empty_patterns_are_refused() {
        assert!(Pattern::parse("  ").is_err());
        assert!(Pattern::parse("host:").is_err());
    }

    #[test]
    fn many_stars_do_not_blow_up() {
        let p = Pattern::parse(&"*a".repeat(50)).unwrap();
        assert!(!p.matches(&Destination::host("a".repeat(49))));
    }
}
