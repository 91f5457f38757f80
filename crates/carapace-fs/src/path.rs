use std::fmt;
use std::path::{Component, Path};

use crate::FsError;

/// Longest path `check` accepts, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest path component `check` accepts, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;
/// How much of a refused path an error repeats.
const SHOWN_CHARS: usize = 128;

/// A path inside the workspace that passed [`crate::Workspace::check`]: relative, no
/// `..`, no `.` components, no empty components, no NUL, within length limits.
///
/// Only `check` builds one. It is still resolved through the workspace's directory handle
/// on use, so a symlink swapped in after the check cannot lead outside.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkspacePath {
    /// Components joined by `/`; `.` for the root.
    rel: String,
}

impl WorkspacePath {
    /// The normalised workspace-relative path; `.` for the root.
    pub fn as_str(&self) -> &str {
        &self.rel
    }

    /// True for the workspace root itself.
    pub fn is_root(&self) -> bool {
        self.rel == "."
    }

    pub(crate) fn as_path(&self) -> &Path {
        Path::new(&self.rel)
    }

    /// The parent directory and the last component; `None` for the root.
    pub(crate) fn split_last(&self) -> Option<(&str, &str)> {
        if self.is_root() {
            return None;
        }
        Some(match self.rel.rsplit_once('/') {
            Some((parent, name)) => (parent, name),
            None => (".", self.rel.as_str()),
        })
    }

    /// `self` joined with a child name (for paths found while walking a directory).
    pub(crate) fn child(&self, name: &str) -> String {
        if self.is_root() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.rel)
        }
    }
}

impl fmt::Display for WorkspacePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rel)
    }
}

/// The lexical half of the confinement: turns the model's path into a
/// [`WorkspacePath`] or says clearly why not. `roots` are the absolute spellings of the
/// workspace root under which an absolute path is accepted.
pub(crate) fn check(raw: &str, roots: &[&Path]) -> Result<WorkspacePath, FsError> {
    let invalid = |reason| FsError::InvalidPath {
        path: shown(raw),
        reason,
    };
    if raw.contains('\0') {
        return Err(invalid("contains a nul byte"));
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(invalid("longer than 4096 bytes"));
    }
    let mut rel = Path::new(raw);
    if rel.is_absolute() {
        rel = roots
            .iter()
            .find_map(|root| rel.strip_prefix(root).ok())
            .ok_or_else(|| FsError::Escape {
                path: raw.to_owned(),
            })?;
    }

    let mut parts: Vec<&str> = Vec::new();
    // Depth below the root while walking the components, and whether a `..` took it
    // above the root at some point: that is an escape; any other `..` is merely refused.
    let mut depth: usize = 0;
    let mut parent_seen = false;
    let mut climbs_out = false;
    for component in rel.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                parent_seen = true;
                match depth.checked_sub(1) {
                    Some(d) => depth = d,
                    None => climbs_out = true,
                }
            }
            Component::Normal(name) => {
                // `raw` is a `&str`, so every component is UTF-8.
                let name = name.to_str().ok_or_else(|| invalid("not utf-8"))?;
                if name.len() > MAX_NAME_BYTES {
                    return Err(invalid("a component is longer than 255 bytes"));
                }
                parts.push(name);
                depth += 1;
            }
            // Only possible at the start of an absolute path, which was made relative.
            Component::RootDir | Component::Prefix(_) => {
                return Err(FsError::Escape {
                    path: raw.to_owned(),
                });
            }
        }
    }
    if climbs_out {
        return Err(FsError::Escape { path: shown(raw) });
    }
    if parent_seen {
        return Err(invalid("`..` is not allowed"));
    }
    let rel = if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    };
    Ok(WorkspacePath { rel })
}

/// The start of a refused path, so an error never repeats kilobytes of input.
fn shown(raw: &str) -> String {
    match raw.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}...", &raw[..cut]),
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    fn check_path(raw: &str, expect: Expect) {
        let actual = match check(raw, &[Path::new("/srv/ws")]) {
            Ok(p) => format!("ok {p}"),
            Err(e) => format!("{e:?}"),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn accepted() {
        check_path("", expect!["ok ."]);
        check_path(".", expect!["ok ."]);
        check_path("./", expect!["ok ."]);
        check_path("notes/a.txt", expect!["ok notes/a.txt"]);
        check_path("./notes//a.txt/", expect!["ok notes/a.txt"]);
        check_path("a/./b", expect!["ok a/b"]);
        check_path("...", expect!["ok ..."]);
        check_path("..a/b..", expect!["ok ..a/b.."]);
        check_path("/srv/ws", expect!["ok ."]);
        check_path("/srv/ws/", expect!["ok ."]);
        check_path("/srv/ws/notes/a.txt", expect!["ok notes/a.txt"]);
        check_path("//srv//ws/notes", expect!["ok notes"]);
    }

    #[test]
    fn parent_components() {
        check_path("..", expect![[r#"Escape { path: ".." }"#]]);
        check_path("../x", expect![[r#"Escape { path: "../x" }"#]]);
        check_path("./..", expect![[r#"Escape { path: "./.." }"#]]);
        check_path("a/../../x", expect![[r#"Escape { path: "a/../../x" }"#]]);
        check_path("a/../..", expect![[r#"Escape { path: "a/../.." }"#]]);
        check_path(
            "/srv/ws/../x",
            expect![[r#"Escape { path: "/srv/ws/../x" }"#]],
        );
        check_path(
            "a/..",
            expect![[r#"InvalidPath { path: "a/..", reason: "`..` is not allowed" }"#]],
        );
        check_path(
            "a/../b",
            expect![[r#"InvalidPath { path: "a/../b", reason: "`..` is not allowed" }"#]],
        );
    }

    #[test]
    fn absolute_outside() {
        check_path(
            "/etc/passwd",
            expect![[r#"Escape { path: "/etc/passwd" }"#]],
        );
        check_path("/", expect![[r#"Escape { path: "/" }"#]]);
        check_path("/srv/wsx/a", expect![[r#"Escape { path: "/srv/wsx/a" }"#]]);
        check_path("/srv", expect![[r#"Escape { path: "/srv" }"#]]);
    }

    #[test]
    fn malformed() {
        check_path(
            "a\0b",
            expect![[r#"InvalidPath { path: "a\0b", reason: "contains a nul byte" }"#]],
        );
        check_path(
            &"a/".repeat(2049),
            expect![[
                r#"InvalidPath { path: "a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/...", reason: "longer than 4096 bytes" }"#
            ]],
        );
        assert_eq!(check(&"b".repeat(255), &[]).unwrap().as_str().len(), 255);
        check_path(
            &format!("d/{}", "b".repeat(256)),
            expect![[
                r#"InvalidPath { path: "d/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb...", reason: "a component is longer than 255 bytes" }"#
            ]],
        );
    }

    #[test]
    fn split_last() {
        let p = |raw| check(raw, &[]).unwrap();
        assert_eq!(p(".").split_last(), None);
        assert_eq!(p("a.txt").split_last(), Some((".", "a.txt")));
        assert_eq!(p("a/b/c.txt").split_last(), Some(("a/b", "c.txt")));
        assert_eq!(p(".").child("x"), "x");
        assert_eq!(p("a").child("x"), "a/x");
    }
}
