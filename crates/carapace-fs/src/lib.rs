//! Workspace-confined file operations: the executors behind the agent's built-in
//! `read_file`, `list_dir`, `write_file` and `search_files` tools.
//!
//! A [`Workspace`] is a directory handle on the workspace root; every operation resolves
//! its path beneath that handle (cap-std: `openat2(RESOLVE_BENEATH)` on Linux, a
//! component-by-component walk elsewhere), so it holds even against a symlink swapped in
//! after [`Workspace::check`]. The lexical check exists to give the model clear errors;
//! the handle gives the guarantee.
//!
//! This crate must never touch anything outside the workspace root, never follow a
//! symlink out of it, and never decide policy: whether a call may run at all is the
//! Gate's question, asked before it gets here. Its error messages name only the
//! workspace-relative path, never where the workspace lives on the host.

mod error;
mod path;
mod search;
mod write;

use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cap_fs_ext::OpenOptionsSyncExt;
use cap_std::ambient_authority;
use cap_std::fs::{Dir, File, FileType, OpenOptions};
use sha2::{Digest, Sha256};

pub use error::FsError;
pub use path::{MAX_NAME_BYTES, MAX_PATH_BYTES, WorkspacePath};
pub use search::{SearchMatch, SearchOptions, SearchResult};
pub use write::WriteOutcome;

use error::from_io;

/// The workspace root, opened once; all file tools operate beneath it.
pub struct Workspace {
    root: Dir,
    /// Absolute spellings of the root (as given, and canonical), for accepting absolute
    /// paths the model gives. Never shown in an error.
    root_paths: Vec<PathBuf>,
}

/// A text file read from the workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileContent {
    /// The content, at most `max_bytes` of it (cut back to a character boundary).
    pub text: String,
    /// Size of the whole file in bytes.
    pub total_bytes: u64,
    /// True if `text` is not the whole file.
    pub truncated: bool,
    /// SHA-256 of the whole file, hex, even when `text` is truncated.
    pub sha256_hex: String,
}

/// The entries of one directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    /// Entries sorted by name (bytewise), at most `max_entries` of them.
    pub entries: Vec<DirEntry>,
    /// True if the directory has more entries than were returned.
    pub truncated: bool,
}

/// One entry of a [`Listing`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The name; invalid UTF-8 is replaced by U+FFFD.
    pub name: String,
    /// False if `name` had to be converted lossily.
    pub name_is_utf8: bool,
    /// What the entry is, not following symlinks.
    pub kind: EntryKind,
    /// Size in bytes for a regular file; 0 for anything else.
    pub size: u64,
}

/// The type of a directory entry. Symlinks are reported as such, never followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (wherever it points).
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

impl EntryKind {
    fn of(ft: FileType) -> EntryKind {
        if ft.is_symlink() {
            EntryKind::Symlink
        } else if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            EntryKind::File
        } else {
            EntryKind::Other
        }
    }
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("root", &self.root_paths.first())
            .finish()
    }
}

impl Workspace {
    /// Opens an existing directory as the workspace root.
    ///
    /// This is the one use of ambient authority. Its errors name the root itself: they
    /// go to the owner configuring the daemon, not to the model.
    pub fn open(root: &Path) -> Result<Workspace, FsError> {
        let shown = root.display().to_string();
        let dir =
            Dir::open_ambient_dir(root, ambient_authority()).map_err(|e| from_io(&shown, &e))?;
        let mut root_paths = Vec::new();
        if let Ok(abs) = std::path::absolute(root) {
            root_paths.push(abs);
        }
        if let Ok(canonical) = std::fs::canonicalize(root)
            && !root_paths.contains(&canonical)
        {
            root_paths.push(canonical);
        }
        Ok(Workspace {
            root: dir,
            root_paths,
        })
    }

    /// Lexical check of a path given by the model. Accepts relative paths (`""`, `"."`,
    /// `"notes/a.txt"`) and absolute paths that lie under the root (made relative).
    ///
    /// Refuses NUL bytes, any `..` component (`Escape` if it climbs above the root,
    /// `InvalidPath` otherwise), absolute paths outside the root, and over-long paths
    /// (more than 4096 bytes, or a component of more than 255). Returns the normalised
    /// relative path.
    #[must_use = "use the checked path, not the raw input"]
    pub fn check(&self, raw: &str) -> Result<WorkspacePath, FsError> {
        let roots: Vec<&Path> = self.root_paths.iter().map(PathBuf::as_path).collect();
        path::check(raw, &roots)
    }

    /// Reads a UTF-8 text file, at most `max_bytes` of it; the hash covers the whole
    /// file. A symlink is followed only while it stays inside the workspace.
    pub fn read_file(&self, path: &WorkspacePath, max_bytes: u64) -> Result<FileContent, FsError> {
        let p = path.as_str();
        let mut file = open_regular(&self.root, path.as_path(), p, true)?;

        let mut head = Vec::new();
        let mut hasher = Sha256::new();
        let mut total: u64 = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(from_io(p, &e)),
            };
            let chunk = &buf[..n];
            hasher.update(chunk);
            let room = max_bytes.saturating_sub(total);
            let keep = usize::try_from(room).map_or(n, |room| room.min(n));
            head.extend_from_slice(&chunk[..keep]);
            total += n as u64;
        }
        let truncated = total > max_bytes;

        let text = match String::from_utf8(head) {
            Ok(text) => text,
            Err(e) => {
                let err = e.utf8_error();
                // A cut through a multi-byte character is the limit's doing, not the
                // file's: drop the partial character.
                if truncated && err.error_len().is_none() {
                    let mut bytes = e.into_bytes();
                    bytes.truncate(err.valid_up_to());
                    String::from_utf8(bytes).map_err(|_| FsError::NotUtf8 { path: p.to_owned() })?
                } else {
                    return Err(FsError::NotUtf8 { path: p.to_owned() });
                }
            }
        };
        Ok(FileContent {
            text,
            total_bytes: total,
            truncated,
            sha256_hex: hex::encode(hasher.finalize()),
        })
    }

    /// Lists a directory, sorted by name, at most `max_entries` entries. Entries that are
    /// symlinks are reported as symlinks; the directory itself may be reached through a
    /// symlink that stays inside the workspace.
    pub fn list_dir(&self, path: &WorkspacePath, max_entries: usize) -> Result<Listing, FsError> {
        let p = path.as_str();
        let dir = self
            .root
            .open_dir(path.as_path())
            .map_err(|e| from_io(p, &e))?;
        let mut all = Vec::new();
        for entry in dir.entries().map_err(|e| from_io(p, &e))? {
            all.push(entry.map_err(|e| from_io(p, &e))?);
        }
        all.sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));
        let truncated = all.len() > max_entries;
        all.truncate(max_entries);

        let mut entries = Vec::with_capacity(all.len());
        for entry in all {
            let os_name = entry.file_name();
            let name_is_utf8 = os_name.to_str().is_some();
            let name = os_name.to_string_lossy().into_owned();
            // `metadata` does not follow a symlink; an entry removed meanwhile is skipped.
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(from_io(&path.child(&name), &e)),
            };
            let kind = EntryKind::of(meta.file_type());
            let size = if kind == EntryKind::File {
                meta.len()
            } else {
                0
            };
            entries.push(DirEntry {
                name,
                name_is_utf8,
                kind,
                size,
            });
        }
        Ok(Listing { entries, truncated })
    }
}

/// Opens `path` beneath `dir` for reading and makes sure it is a regular file.
///
/// Non-blocking, so a FIFO cannot hang the caller before we see what it is.
/// `follow` allows symlinks, which cap-std resolves beneath `dir` only.
fn open_regular(dir: &Dir, path: &Path, shown: &str, follow: bool) -> Result<File, FsError> {
    let mut options = OpenOptions::new();
    options.read(true).nonblock(true);
    if !follow {
        cap_fs_ext::OpenOptionsFollowExt::follow(&mut options, cap_fs_ext::FollowSymlinks::No);
    }
    let file = dir
        .open_with(path, &options)
        .map_err(|e| from_io(shown, &e))?;
    let meta = file.metadata().map_err(|e| from_io(shown, &e))?;
    if !meta.is_file() {
        return Err(FsError::NotAFile {
            path: shown.to_owned(),
        });
    }
    Ok(file)
}
