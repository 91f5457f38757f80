use std::io;

/// Why a workspace operation failed.
///
/// Every variant names the workspace-relative path the model gave (or a prefix of it when
/// it was over-long), never the host's absolute path of the root: these messages go back
/// to the model.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    /// The path, or a symlink on its way, leads outside the workspace.
    #[error("path escapes the workspace: {path:?}")]
    Escape {
        /// The path as given.
        path: String,
    },
    /// The path is malformed or not allowed (NUL byte, `..`, too long).
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given (shortened if over-long).
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Nothing exists at the path.
    #[error("no such file or directory: {path:?}")]
    NotFound {
        /// The workspace-relative path.
        path: String,
    },
    /// The path names a directory or a special file where a regular file was expected.
    #[error("not a regular file: {path:?}")]
    NotAFile {
        /// The workspace-relative path.
        path: String,
    },
    /// The path (or one of its parents) is not a directory.
    #[error("not a directory: {path:?}")]
    NotADirectory {
        /// The workspace-relative path.
        path: String,
    },
    /// The path is a symlink and the operation refuses to go through it.
    #[error("refusing to write through a symlink: {path:?}")]
    IsSymlink {
        /// The workspace-relative path.
        path: String,
    },
    /// The file's content is not valid UTF-8.
    #[error("file is not valid utf-8 text: {path:?}")]
    NotUtf8 {
        /// The workspace-relative path.
        path: String,
    },
    /// Any other IO failure, reduced to its kind so no host detail leaks.
    #[error("{kind}: {path:?}")]
    Io {
        /// The workspace-relative path.
        path: String,
        /// The kind of the underlying error.
        kind: io::ErrorKind,
    },
}

/// The message cap-std gives every refusal to resolve a path outside its `Dir`
/// (`cap_primitives::fs::errors::escape_attempt`), including an `openat2` `EXDEV`.
const CAP_STD_ESCAPE: &str = "a path led outside of the filesystem";

/// True if cap-std refused the path because it resolves outside the directory.
pub(crate) fn is_escape(e: &io::Error) -> bool {
    // cap-std builds this error itself (no OS error code), with a fixed message; a real
    // EACCES from the kernel carries an OS code and is a plain permission error.
    e.kind() == io::ErrorKind::PermissionDenied
        && e.raw_os_error().is_none()
        && e.get_ref()
            .is_some_and(|inner| inner.to_string() == CAP_STD_ESCAPE)
}

/// Maps an IO error on `path` to the typed error the model sees.
pub(crate) fn from_io(path: &str, e: &io::Error) -> FsError {
    let path = path.to_owned();
    if is_escape(e) {
        return FsError::Escape { path };
    }
    match e.kind() {
        io::ErrorKind::NotFound => FsError::NotFound { path },
        io::ErrorKind::NotADirectory => FsError::NotADirectory { path },
        io::ErrorKind::IsADirectory => FsError::NotAFile { path },
        kind => FsError::Io { path, kind },
    }
}
