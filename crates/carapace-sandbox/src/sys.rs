//! Thin wrappers over the system calls the sandbox needs: most `unsafe` of the crate
//! lives here, each next to the reason it is sound (the rest: two in `run.rs` and
//! `init.rs`, socket peer reads in `peer.rs`, descriptor passing in `fdpass.rs`).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `-1` to `Err(last_os_error)`.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A path as a C string; paths with a NUL byte are refused.
pub(crate) fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `mount(2)`.
pub(crate) fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is either null or a NUL-terminated string that outlives the
    // call; the kernel copies them.
    let ret = unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    };
    check(ret).map(drop)
}

/// `MOUNT_ATTR_*` flags of mount_setattr(2).
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// Ignore set-user-ID and set-group-ID bits.
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
/// No device files.
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;
/// No execution.
pub(crate) const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(2)` (Linux 5.12): sets and clears `MOUNT_ATTR_*` flags on the mount
/// at `path`, and with `recursive` on every mount beneath it.
pub(crate) fn mount_setattr(path: &CStr, recursive: bool, set: u64, clear: u64) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 } as libc::c_uint;
    // SAFETY: `path` is NUL-terminated and `attr` is a valid mount_attr whose size is
    // passed; both outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `umount2(target, MNT_DETACH)`.
pub(crate) fn umount_detach(target: &CStr) -> io::Result<()> {
    // SAFETY: `target` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

/// `pivot_root(2)`, which libc does not wrap.
pub(crate) fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: both arguments are NUL-terminated strings that outlive the call.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `unshare(2)`.
pub(crate) fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes no pointers; the calling process is single-threaded (the
    // init program), which CLONE_NEWUSER requires anyway.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// What `fork` returned in this process.
pub(crate) enum Forked {
    /// This is the child.
    Child,
    /// This is the parent; the child's pid.
    Parent(libc::pid_t),
}

/// `fork(2)`.
///
/// # Safety
///
/// The calling process must be single-threaded, or the child must call only
/// async-signal-safe functions until it execs or exits.
pub(crate) unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller upholds the contract above.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// `waitpid(pid, 0)`, retried on EINTR; returns the pid reaped and its raw status.
pub(crate) fn waitpid(pid: libc::pid_t) -> io::Result<(libc::pid_t, libc::c_int)> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer for the duration of the call.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret >= 0 {
            return Ok((ret, status));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Leaves the process at once, without running destructors or atexit handlers (a
/// forked child must not flush buffers it shares with its parent).
pub(crate) fn exit(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it does not return.
    unsafe { libc::_exit(code) }
}

/// `prctl` with integer arguments only.
fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the options used by this crate take integer arguments, no pointers.
    check(unsafe {
        libc::prctl(
            option,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
}

/// The signal this process receives when its parent thread exits.
pub(crate) fn set_parent_death_signal(signal: libc::c_int) -> io::Result<()> {
    prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong).map(drop)
}

/// `PR_SET_NO_NEW_PRIVS`: execve can never grant privileges again.
pub(crate) fn set_no_new_privs() -> io::Result<()> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map(drop)
}

/// Whether `PR_GET_NO_NEW_PRIVS` exists (the kernel knows the flag).
pub(crate) fn no_new_privs_supported() -> bool {
    prctl(libc::PR_GET_NO_NEW_PRIVS, 0).is_ok()
}

/// Removes every capability from the bounding set, so no later execve can regain one.
pub(crate) fn drop_bounding_set() -> io::Result<()> {
    for cap in 0..=63 {
        match prctl(libc::PR_CAPBSET_DROP, cap) {
            Ok(_) => {}
            // Past the last capability the kernel knows.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether `cap` is in this process's bounding set.
pub(crate) fn in_bounding_set(cap: libc::c_int) -> bool {
    prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong).is_ok_and(|r| r == 1)
}

/// Empties the ambient capability set.
pub(crate) fn clear_ambient_capabilities() -> io::Result<()> {
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes integer arguments only.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check(ret).map(drop)
}

/// Orphaned descendants are reparented to this process instead of the system's init.
pub(crate) fn set_child_subreaper() -> io::Result<()> {
    prctl(libc::PR_SET_CHILD_SUBREAPER, 1).map(drop)
}

/// `setrlimit(2)` with soft and hard limits.
pub(crate) fn setrlimit(
    resource: libc::__rlimit_resource_t,
    soft: u64,
    hard: u64,
) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: `limit` is a valid rlimit struct for the duration of the call.
    check(unsafe { libc::setrlimit(resource, &limit) }).map(drop)
}

/// The current hard limit of `resource`.
pub(crate) fn hard_rlimit(resource: libc::__rlimit_resource_t) -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out-pointer for the duration of the call.
    check(unsafe { libc::getrlimit(resource, &mut limit) })?;
    Ok(limit.rlim_max)
}

/// `sethostname(2)`.
pub(crate) fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`, which outlives the call.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// Brings the loopback interface up (ioctl SIOCSIFFLAGS on a datagram socket).
pub(crate) fn loopback_up() -> io::Result<()> {
    // SAFETY: socket takes no pointers; the result is checked before it is owned.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq for SIOCGIFFLAGS, which fills ifru_flags.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: SIOCGIFFLAGS set the flags member of the union, so reading it is sound.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: `req` is a valid ifreq naming `lo` with the new flags.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }).map(drop)
}

/// `execve(2)`; returns only on failure.
pub(crate) fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    // SAFETY: `path` and every array element are NUL-terminated strings that outlive the
    // call, and both arrays end with a null pointer as execve requires.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
    io::Error::last_os_error()
}

/// Whether the file at `path` may be executed by this process.
pub(crate) fn is_executable(path: &CStr) -> bool {
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    unsafe { libc::access(path.as_ptr(), libc::X_OK) == 0 }
}

/// Whether this process may write to `path` (by its real ids).
pub(crate) fn is_writable(path: &CStr) -> bool {
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    unsafe { libc::access(path.as_ptr(), libc::W_OK) == 0 }
}

/// `setsid(2)`: a new session with no controlling terminal, so the process cannot
/// inject input into the caller's terminal.
pub(crate) fn setsid() -> io::Result<()> {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() }).map(drop)
}

/// Sets the file mode creation mask.
pub(crate) fn umask(mask: libc::mode_t) {
    // SAFETY: umask takes no pointers and cannot fail.
    unsafe { libc::umask(mask) };
}

/// Default disposition for every signal and an empty signal mask, so the command does
/// not inherit the caller's ignored or blocked signals.
pub(crate) fn reset_signals() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL is a valid disposition for every catchable signal; errors for
        // signals reserved by libc are ignored.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: an empty set is a valid signal set; sigemptyset initialises it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Ends this process with `signal`, as the process it stands for was ended; falls back
/// to the shell's `128 + signal` exit code if the signal does not end it.
pub(crate) fn die_by_signal(signal: libc::c_int) -> ! {
    // No core file from the stand-in.
    let _ = setrlimit(libc::RLIMIT_CORE, 0, 0);
    // SAFETY: restoring the default disposition and raising a signal take no pointers.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
    exit(128 + signal)
}

/// `close_range(first, ~0, flags)`: closes, or with `CLOSE_RANGE_CLOEXEC` marks
/// close-on-exec, every descriptor from `first` on.
pub(crate) fn close_from(first: RawFd, cloexec: bool) -> io::Result<()> {
    let flags = if cloexec {
        libc::CLOSE_RANGE_CLOEXEC
    } else {
        0
    };
    // SAFETY: close_range takes no pointers; the descriptors it closes are not used
    // again by this process (callers pass the first descriptor they do not own).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            flags,
        )
    };
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Marks `fd` close-on-exec.
pub(crate) fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with F_SETFD takes an integer argument.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) }).map(drop)
}

/// Takes ownership of an inherited descriptor, if it is open.
pub(crate) fn inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD takes no argument; it only tells whether `fd` is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return None;
    }
    // SAFETY: the descriptor is open, was handed to this process by its parent for this
    // purpose, and nothing else in the process owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `dup2(from, to)`; async-signal-safe, for use between fork and exec.
pub(crate) fn dup2_raw(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 takes integers only and is async-signal-safe.
    check(unsafe { libc::dup2(from, to) }).map(drop)
}

/// A pipe, both ends close-on-exec.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A close-on-exec duplicate of `fd` numbered `min` or higher.
pub(crate) fn dup_at_least(fd: RawFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes an integer argument.
    let new = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })?;
    // SAFETY: the duplicate is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Mount flags of the mount holding `path` (`MS_*` values), for the flags a remount in
/// a user namespace must keep (the kernel locks them).
pub(crate) fn mount_flags(path: &CStr) -> io::Result<libc::c_ulong> {
    // SAFETY: statvfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a valid out-pointer.
    check(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
    let f = st.f_flag;
    let mut flags = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    Ok(flags)
}

/// The effective user and group ids of this process.
pub(crate) fn ids() -> (libc::uid_t, libc::gid_t) {
    // SAFETY: geteuid and getegid take no arguments and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Drops every supplementary group (possible for root only; an error otherwise).
pub(crate) fn clear_groups() -> io::Result<()> {
    // SAFETY: a zero-length list may be a null pointer.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }).map(drop)
}

/// `getppid(2)`.
pub(crate) fn getppid() -> libc::pid_t {
    // SAFETY: getppid takes no arguments and cannot fail.
    unsafe { libc::getppid() }
}

/// Whether reading `fd` would report a hang-up now (its writers are all gone).
pub(crate) fn hung_up(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd for the duration of the call; zero timeout.
    let ret = unsafe { libc::poll(&mut pfd, 1, 0) };
    ret == 1 && pfd.revents & libc::POLLHUP != 0
}

/// The process SIGTERM kills, see [`kill_on_term`].
static KILL_ON_TERM: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_term(_: libc::c_int) {
    let pid = KILL_ON_TERM.load(std::sync::atomic::Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe and takes no pointers.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// From now on SIGTERM makes this process SIGKILL `pid` (and carry on, so it can wait
/// for it): how the caller ends a sandbox and waits for all of it to be gone.
pub(crate) fn kill_on_term(pid: libc::pid_t) -> io::Result<()> {
    KILL_ON_TERM.store(pid, std::sync::atomic::Ordering::SeqCst);
    // SAFETY: sigaction is plain old data; all zeroes is a valid value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_term as extern "C" fn(libc::c_int) as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: the handler only calls kill (async-signal-safe) and reads an atomic;
    // `action` is valid for the call and the old action is not asked for.
    check(unsafe { libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut()) }).map(drop)
}

/// Sends SIGTERM to `pid`.
pub(crate) fn terminate(pid: libc::pid_t) {
    // SAFETY: kill takes no pointers.
    unsafe { libc::kill(pid, libc::SIGTERM) };
}

/// Sends SIGKILL to `pid`.
pub(crate) fn kill(pid: libc::pid_t) {
    // SAFETY: kill takes no pointers.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Whether the running kernel accepts seccomp filters returning an errno.
pub(crate) fn seccomp_filter_supported() -> bool {
    let action: u32 = libc::SECCOMP_RET_ERRNO;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 through the pointer, which is valid.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    ret == 0
}

/// The Landlock ABI version of the running kernel, or the errno why there is none.
pub(crate) fn landlock_abi() -> Result<i64, io::Error> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with the VERSION flag the kernel reads no attribute (null, size 0).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Runs `probe` in a forked child and returns what it returned (an errno, 0 for
/// success). The child calls only async-signal-safe functions, so this is sound in a
/// multi-threaded caller.
pub(crate) fn probe_in_child(flags: libc::c_int) -> io::Result<i32> {
    // SAFETY: the child only calls unshare and _exit, both async-signal-safe, so forking
    // a multi-threaded process is sound here.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: unshare and _exit are async-signal-safe; __errno_location reads the
        // thread's errno.
        unsafe {
            let code = if libc::unshare(flags) == 0 {
                0
            } else {
                *libc::__errno_location()
            };
            libc::_exit(code);
        }
    }
    let (_, status) = waitpid(pid)?;
    if libc::WIFEXITED(status) {
        Ok(libc::WEXITSTATUS(status))
    } else {
        Err(io::Error::other("probe child died"))
    }
}
