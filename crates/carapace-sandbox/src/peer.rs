//! Who is at the other end of a Unix socket, as the kernel says: uid, gid, pid and the
//! pid namespace of that process. The agent socket of the daemon identifies sandboxes by
//! their pid namespace; this is the one place that reads it.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// The identity of a namespace: the device and inode of its `nsfs` file. Unique among the
/// namespaces that exist at one time; a namespace that is gone can leave its inode to a
/// new one, so whoever compares identities must keep the namespace alive (hold a
/// [`PidNamespace`]) for as long as the identity means something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NsId {
    /// Device of the nsfs file.
    pub dev: u64,
    /// Inode of the nsfs file.
    pub ino: u64,
}

impl std::fmt::Display for NsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid:[{}]", self.ino)
    }
}

/// An open pid namespace: while this value lives, the namespace (and so its [`NsId`])
/// cannot be reused by another.
#[derive(Debug)]
pub struct PidNamespace {
    _file: File,
    id: NsId,
}

impl PidNamespace {
    /// Opens `path` (an nsfs file such as `/proc/PID/ns/pid`) and reads its identity from
    /// the open file, so the identity is that of what is held.
    pub(crate) fn open(path: &str) -> io::Result<PidNamespace> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        Ok(PidNamespace {
            id: NsId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            _file: file,
        })
    }

    /// The pid namespace of this process.
    pub fn current() -> io::Result<PidNamespace> {
        PidNamespace::open("/proc/self/ns/pid")
    }

    /// Its identity.
    pub fn id(&self) -> NsId {
        self.id
    }
}

/// The process at the other end of a connected Unix socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its user id, as seen from this process's user namespace.
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
    /// Its process id, as seen from this process's pid namespace.
    pub pid: i32,
    /// The pid namespace it lives in.
    pub pid_ns: NsId,
    /// Whether the kernel pinned the process (`SO_PEERPIDFD`, Linux 6.5), so the pid could
    /// not have been recycled between the connection and the namespace read.
    pub pinned: bool,
}

/// Reads the peer of a connected Unix stream socket. The pid the kernel recorded at
/// `connect` is pinned with a pidfd where the kernel offers one; after the namespace is
/// read, the pidfd must still name a live process, or the pid may have been recycled and
/// the read is refused.
pub fn peer(socket: BorrowedFd<'_>) -> io::Result<Peer> {
    let cred = peer_cred(socket)?;
    if cred.pid <= 0 {
        return Err(io::Error::other("the peer's pid is unknown"));
    }
    let pidfd = peer_pidfd(socket)?;
    let ns = PidNamespace::open(&format!("/proc/{}/ns/pid", cred.pid))?;
    if let Some(pidfd) = &pidfd
        && !alive(pidfd)?
    {
        return Err(io::Error::other(
            "the peer process ended before its namespace could be checked",
        ));
    }
    Ok(Peer {
        uid: cred.uid,
        gid: cred.gid,
        pid: cred.pid,
        pid_ns: ns.id(),
        pinned: pidfd.is_some(),
    })
}

fn peer_cred(socket: BorrowedFd<'_>) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a writable ucred and `len` holds its size, as SO_PEERCRED expects.
    let ret = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred)
}

/// `SO_PEERPIDFD` on the architectures whose value is the generic one.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
const SO_PEERPIDFD: libc::c_int = 77;

#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
fn peer_pidfd(socket: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is a writable int and `len` its size; SO_PEERPIDFD writes one fd.
    let ret = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if ret == -1 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            // Older kernels do not know the option.
            Some(libc::ENOPROTOOPT) | Some(libc::EINVAL) => Ok(None),
            _ => Err(err),
        };
    }
    // SAFETY: getsockopt succeeded, so `fd` is a fresh pidfd owned by nobody else.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
fn peer_pidfd(_socket: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    Ok(None)
}

/// Whether the process a pidfd refers to still exists (a zombie counts: its pid is not
/// free yet).
fn alive(pidfd: &OwnedFd) -> io::Result<bool> {
    // SAFETY: pidfd_send_signal with signal 0 and no siginfo only checks the target.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ESRCH) => Ok(false),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_socket_pair_names_this_process_and_its_namespace() {
        let (a, _b) = UnixStream::pair().unwrap();
        let p = peer(a.as_fd()).unwrap();
        assert_eq!(p.pid, std::process::id() as i32);
        assert_eq!(p.uid, my_uid());
        assert_eq!(p.pid_ns, PidNamespace::current().unwrap().id());
    }

    #[test]
    fn a_child_in_another_process_is_named_by_its_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import socket,time; s=socket.socket(socket.AF_UNIX); s.connect({:?}); time.sleep(5)",
                path.to_str().unwrap()
            ))
            .spawn()
            .unwrap();
        let (conn, _) = listener.accept().unwrap();
        let p = peer(conn.as_fd()).unwrap();
        assert_eq!(p.pid, child.id() as i32);
        child.kill().unwrap();
        child.wait().unwrap();
        // The process is gone and reaped: its pid is free, so a read now is refused
        // (no namespace file) rather than answered for whoever gets the pid next.
        assert!(peer(conn.as_fd()).is_err());
    }

    fn my_uid() -> u32 {
        std::fs::metadata("/proc/self").unwrap().uid()
    }
}
