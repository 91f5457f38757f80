//! Shared fixture: a workspace and, beside it, an "outside" directory that nothing may
//! touch.

#![allow(dead_code)] // each test file uses a different part

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use carapace_fs::{FsError, Workspace, WorkspacePath};

pub struct Fixture {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub outside: PathBuf,
    pub ws: Workspace,
}

impl Fixture {
    /// An empty workspace, and an outside directory holding `secret.txt`.
    pub fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ws");
        let outside = tmp.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret.txt"), "outside secret\n").unwrap();
        let ws = Workspace::open(&root).unwrap();
        Fixture {
            _tmp: tmp,
            root,
            outside,
            ws,
        }
    }

    /// Writes a file in the workspace (host side, creating parents).
    pub fn file(&self, rel: &str, content: impl AsRef<[u8]>) -> &Fixture {
        let path = self.root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
        self
    }

    /// Creates a symlink at `rel` in the workspace pointing at `target` (verbatim).
    pub fn link(&self, rel: &str, target: impl AsRef<Path>) -> &Fixture {
        let path = self.root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(target, path).unwrap();
        self
    }

    pub fn path(&self, raw: &str) -> WorkspacePath {
        self.ws.check(raw).unwrap()
    }

    /// Shows a result as the tests expect it: the value's Debug, or the error's variant
    /// and its message, which must never contain the host path of the workspace.
    pub fn show<T: std::fmt::Debug>(&self, result: Result<T, FsError>) -> String {
        match result {
            Ok(v) => format!("{v:#?}"),
            Err(e) => {
                let shown = format!("{e:?}\n{e}");
                let host = self._tmp.path().to_str().unwrap();
                assert!(!shown.contains(host), "error leaks the host path: {shown}");
                shown
            }
        }
    }

    /// A snapshot of the outside directory, to show that nothing changed there.
    pub fn outside_tree(&self) -> String {
        tree(&self.outside)
    }
}

/// Every entry under `dir`, sorted, with file contents: a cheap "nothing changed" proof.
pub fn tree(dir: &Path) -> String {
    let mut out = String::new();
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.symlink_metadata().unwrap().is_dir() {
                todo.push(path.clone());
            }
            paths.push(path);
        }
    }
    paths.sort();
    for path in paths {
        let rel = path.strip_prefix(dir).unwrap().display().to_string();
        let meta = path.symlink_metadata().unwrap();
        if meta.is_symlink() {
            writeln!(out, "{rel} -> {}", fs::read_link(&path).unwrap().display()).unwrap();
        } else if meta.is_dir() {
            writeln!(out, "{rel}/").unwrap();
        } else {
            writeln!(
                out,
                "{rel}: {:?}",
                String::from_utf8_lossy(&fs::read(&path).unwrap())
            )
            .unwrap();
        }
    }
    out
}
