use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use cap_std::fs::{Dir, OpenOptions};
use sha2::{Digest, Sha256};

use crate::error::{from_io, is_escape};
use crate::{FsError, Workspace, WorkspacePath};

/// What `write_file` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Bytes written.
    pub bytes: u64,
    /// SHA-256 of the content written, hex.
    pub sha256_hex: String,
    /// True if the file did not exist before.
    pub created: bool,
}

/// Tries at finding an unused temporary name before giving up.
const TEMP_ATTEMPTS: u32 = 16;

impl Workspace {
    /// Atomic write: a temporary file in the same directory, fsync, rename over the
    /// target. Refuses to write through a symlink (if the target itself is a symlink,
    /// `IsSymlink`). `create_dirs` makes missing parents, inside the workspace.
    ///
    /// The rename replaces the directory entry rather than writing into whatever it
    /// names, so neither a symlink nor a hard link swapped in at the target after the
    /// check can redirect the write.
    pub fn write_file(
        &self,
        path: &WorkspacePath,
        content: &[u8],
        create_dirs: bool,
    ) -> Result<WriteOutcome, FsError> {
        let p = path.as_str();
        let (parent, name) = path
            .split_last()
            .ok_or_else(|| FsError::NotAFile { path: p.to_owned() })?;
        if create_dirs && parent != "." {
            self.root
                .create_dir_all(parent)
                .map_err(|e| parent_error(p, parent, &e))?;
        }
        let dir = self
            .root
            .open_dir(parent)
            .map_err(|e| parent_error(p, parent, &e))?;

        let (created, permissions) = match dir.symlink_metadata(name) {
            Ok(meta) if meta.is_symlink() => return Err(FsError::IsSymlink { path: p.to_owned() }),
            Ok(meta) if !meta.is_file() => return Err(FsError::NotAFile { path: p.to_owned() }),
            // Replacing the entry would bypass the file's own mode; honour it instead.
            Ok(meta) if meta.permissions().readonly() => {
                return Err(FsError::Io {
                    path: p.to_owned(),
                    kind: io::ErrorKind::PermissionDenied,
                });
            }
            Ok(meta) => (false, Some(meta.permissions())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (true, None),
            Err(e) => return Err(from_io(p, &e)),
        };

        let (mut file, temp) = create_temp(&dir).map_err(|e| from_io(p, &e))?;
        let written = (|| {
            if let Some(permissions) = permissions {
                file.set_permissions(permissions)?;
            }
            file.write_all(content)?;
            file.sync_all()?;
            drop(file);
            dir.rename(&temp, &dir, name)
        })();
        if let Err(e) = written {
            // Leave nothing behind; the target is untouched.
            let _ = dir.remove_file(&temp);
            return Err(from_io(p, &e));
        }
        // Make the rename itself durable. The file is in place whatever happens here,
        // so a failure is not reported as a failed write.
        if let Ok(d) = dir.open(".") {
            let _ = d.sync_all();
        }

        Ok(WriteOutcome {
            bytes: content.len() as u64,
            sha256_hex: hex::encode(Sha256::digest(content)),
            created,
        })
    }
}

/// Maps an error opening or creating the parent directory of `path`: an escape names the
/// path as given, anything else the parent, which is what is missing or wrong.
fn parent_error(path: &str, parent: &str, e: &io::Error) -> FsError {
    if is_escape(e) {
        return FsError::Escape {
            path: path.to_owned(),
        };
    }
    match e.kind() {
        // `create_dir_all` reports a file in the way as "already exists".
        io::ErrorKind::AlreadyExists => FsError::NotADirectory {
            path: parent.to_owned(),
        },
        _ => from_io(parent, e),
    }
}

/// Creates a new, uniquely named hidden file in `dir` (never an existing one).
fn create_temp(dir: &Dir) -> io::Result<(cap_std::fs::File, String)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut last = None;
    for _ in 0..TEMP_ATTEMPTS {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(".carapace-write-{}-{nanos:x}-{n}.tmp", std::process::id());
        match dir.open_with(&name, OpenOptions::new().write(true).create_new(true)) {
            Ok(file) => return Ok((file, name)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)))
}
