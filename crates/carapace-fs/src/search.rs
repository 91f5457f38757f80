use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;

use cap_fs_ext::DirExt;
use cap_std::fs::Dir;

use crate::error::from_io;
use crate::{EntryKind, FsError, Workspace, WorkspacePath, open_regular};

/// A file with a NUL byte in this many leading bytes is taken to be binary and skipped.
const BINARY_PROBE_BYTES: usize = 8 * 1024;
/// A matching line is cut to this many characters, around the match.
const MAX_LINE_CHARS: usize = 300;
/// How many characters before the match a cut line keeps.
const CONTEXT_CHARS: usize = 100;

/// Limits and flags for [`Workspace::search`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchOptions {
    /// Compare ASCII letters without regard to case.
    pub case_insensitive: bool,
    /// Stop after this many matches (`truncated` tells whether there were more).
    pub max_matches: usize,
    /// Skip files larger than this many bytes.
    pub max_file_bytes: u64,
}

/// What [`Workspace::search`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchResult {
    /// Matches sorted by path, then line number.
    pub matches: Vec<SearchMatch>,
    /// True if there were more matches than `max_matches`.
    pub truncated: bool,
    /// Files whose content was searched (binary, over-large and special files are not).
    pub files_scanned: usize,
}

/// One matching line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchMatch {
    /// Workspace-relative path of the file; invalid UTF-8 is replaced by U+FFFD.
    pub path: String,
    /// Line number, from 1.
    pub line_number: u64,
    /// The line (invalid UTF-8 replaced), cut to 300 characters around the match.
    pub line: String,
}

/// A directory being walked: its handle, its path and the entries still to visit.
struct Frame {
    dir: Dir,
    rel: String,
    /// Entries in reverse order of visit, so `pop` yields the next one.
    pending: Vec<(OsString, EntryKind)>,
}

/// The state of one search.
struct Searcher<'a> {
    /// The query, lowercased if the search ignores case.
    query: String,
    opts: &'a SearchOptions,
    /// Rewrites a matching line before it is cut to an excerpt (see `search_redacted`).
    redact: &'a dyn Fn(&str) -> Option<String>,
    result: SearchResult,
}

impl Workspace {
    /// Plain substring search (optionally ASCII case-insensitive) through the regular
    /// files under `path`, recursively; `path` may also name a single file.
    ///
    /// Does not follow symlinks below `path`; skips files that look binary (a NUL in the
    /// first 8 KiB), files larger than `max_file_bytes`, and entries it cannot read.
    /// Results are sorted by path, then line. An empty query matches every line.
    pub fn search(
        &self,
        path: &WorkspacePath,
        query: &str,
        opts: &SearchOptions,
    ) -> Result<SearchResult, FsError> {
        self.search_redacted(path, query, opts, &|_| None)
    }

    /// [`Workspace::search`], with each matching line passed whole to `redact` before it
    /// is cut to an excerpt; `Some(text)` replaces the line. The caller's scrubber sees
    /// whole lines, so a secret is never cut in two at the edge of an excerpt (where a
    /// scrubber could no longer recognise it).
    pub fn search_redacted(
        &self,
        path: &WorkspacePath,
        query: &str,
        opts: &SearchOptions,
        redact: &dyn Fn(&str) -> Option<String>,
    ) -> Result<SearchResult, FsError> {
        let query = if opts.case_insensitive {
            query.to_ascii_lowercase()
        } else {
            query.to_owned()
        };
        let mut s = Searcher {
            query,
            opts,
            redact,
            result: SearchResult {
                matches: Vec::new(),
                truncated: false,
                files_scanned: 0,
            },
        };
        let p = path.as_str();
        let dir = match self.root.open_dir(path.as_path()) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                let file = open_regular(&self.root, path.as_path(), p, true)?;
                s.scan(file, p).map_err(|e| from_io(p, &e))?;
                return Ok(s.finish());
            }
            Err(e) => return Err(from_io(p, &e)),
        };
        let root_rel = if path.is_root() {
            String::new()
        } else {
            format!("{p}/")
        };
        let pending = read_sorted(&dir).map_err(|e| from_io(p, &e))?;
        let mut stack = vec![Frame {
            dir,
            rel: root_rel,
            pending,
        }];

        while !s.full() {
            let Some(frame) = stack.last_mut() else { break };
            let Some((name, kind)) = frame.pending.pop() else {
                stack.pop();
                continue;
            };
            let rel = format!("{}{}", frame.rel, name.to_string_lossy());
            // Entries that vanish or cannot be opened are skipped: a search reports what
            // it could read, and one unreadable file should not hide every other match.
            match kind {
                EntryKind::Dir => {
                    // No-follow: if a symlink was swapped in since the listing, skip it.
                    let Ok(dir) = frame.dir.open_dir_nofollow(&name) else {
                        continue;
                    };
                    let Ok(pending) = read_sorted(&dir) else {
                        continue;
                    };
                    stack.push(Frame {
                        dir,
                        rel: format!("{rel}/"),
                        pending,
                    });
                }
                EntryKind::File => {
                    let Ok(file) = open_regular(&frame.dir, name.as_ref(), &rel, false) else {
                        continue;
                    };
                    let _ = s.scan(file, &rel);
                }
                EntryKind::Symlink | EntryKind::Other => {}
            }
        }
        Ok(s.finish())
    }
}

/// The entries of `dir` worth visiting, in reverse order of visit. Sorting a directory
/// `d` as `d/` makes the depth-first walk visit files in the order of their full paths.
fn read_sorted(dir: &Dir) -> io::Result<Vec<(OsString, EntryKind)>> {
    let mut entries = Vec::new();
    for entry in dir.entries()? {
        let entry = entry?;
        let mut ft = entry.file_type()?;
        // Some filesystems do not report the type in the listing; ask without following.
        if !(ft.is_dir() || ft.is_file() || ft.is_symlink()) {
            ft = match entry.metadata() {
                Ok(meta) => meta.file_type(),
                Err(_) => continue,
            };
        }
        let kind = EntryKind::of(ft);
        if matches!(kind, EntryKind::Dir | EntryKind::File) {
            let mut key = entry.file_name().as_bytes().to_vec();
            if kind == EntryKind::Dir {
                key.push(b'/');
            }
            entries.push((key, entry.file_name(), kind));
        }
    }
    entries.sort_by(|a, b| b.0.cmp(&a.0));
    Ok(entries
        .into_iter()
        .map(|(_, name, kind)| (name, kind))
        .collect())
}

impl Searcher<'_> {
    /// True once one match more than asked for was found: that one tells `truncated`.
    fn full(&self) -> bool {
        self.result.matches.len() > self.opts.max_matches
    }

    fn finish(mut self) -> SearchResult {
        if self.full() {
            self.result.matches.truncate(self.opts.max_matches);
            self.result.truncated = true;
        }
        self.result
    }

    /// Searches one opened regular file, unless it is too large or looks binary.
    fn scan(&mut self, file: cap_std::fs::File, rel: &str) -> io::Result<()> {
        let max = self.opts.max_file_bytes;
        if file.metadata()?.len() > max {
            return Ok(());
        }
        let mut bytes = Vec::new();
        // One byte more than allowed tells a file that grew since the size check.
        file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > max || bytes[..bytes.len().min(BINARY_PROBE_BYTES)].contains(&0) {
            return Ok(());
        }
        self.result.files_scanned += 1;

        let text = String::from_utf8_lossy(&bytes);
        let query = self.query.as_str();
        for (index, line) in text.lines().enumerate() {
            let found = if self.opts.case_insensitive {
                line.to_ascii_lowercase().find(query)
            } else {
                line.find(query)
            };
            // ASCII lowercasing keeps byte offsets, so `at` indexes `line` too.
            if let Some(at) = found {
                let shown = match (self.redact)(line) {
                    None => excerpt(line, at, query.len()),
                    Some(clean) => {
                        let again = if self.opts.case_insensitive {
                            clean.to_ascii_lowercase().find(query)
                        } else {
                            clean.find(query)
                        };
                        // The match may have been redacted away: show the line's start.
                        match again {
                            Some(at) => excerpt(&clean, at, query.len()),
                            None => excerpt(&clean, 0, 0),
                        }
                    }
                };
                self.result.matches.push(SearchMatch {
                    path: rel.to_owned(),
                    line_number: index as u64 + 1,
                    line: shown,
                });
                if self.full() {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// `line` cut to at most `MAX_LINE_CHARS` characters, keeping the match at byte offset
/// `at` (of `len` bytes) in view.
fn excerpt(line: &str, at: usize, len: usize) -> String {
    if line.chars().count() <= MAX_LINE_CHARS {
        return line.to_owned();
    }
    let match_start = line[..at].chars().count();
    let match_end = match_start + line[at..at + len].chars().count();
    let start = if match_end <= MAX_LINE_CHARS {
        0
    } else {
        match_start.saturating_sub(CONTEXT_CHARS)
    };
    line.chars().skip(start).take(MAX_LINE_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::excerpt;

    #[test]
    fn excerpt_keeps_the_match_in_view() {
        let short = "a needle here";
        assert_eq!(excerpt(short, 2, 6), short);

        let head = format!("needle{}", "x".repeat(400));
        assert_eq!(excerpt(&head, 0, 6), head[..300]);

        let tail = format!("{}needle{}", "é".repeat(500), "y".repeat(500));
        let cut = excerpt(&tail, 1000, 6);
        assert_eq!(cut.chars().count(), 300);
        assert!(cut.starts_with(&"é".repeat(100)));
        assert_eq!(&cut[200..206], "needle");
    }
}
