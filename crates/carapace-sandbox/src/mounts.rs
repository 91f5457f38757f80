//! The sandbox's file system, built by its PID 1 in a fresh mount namespace: a tmpfs
//! root holding read-only system directories, a generated `/etc` with an allowlist of
//! host entries, a minimal `/dev`, a private `/tmp`, the procfs of the sandbox's own PID
//! namespace and the spec's binds. Every mount is nosuid; all but the device nodes are
//! nodev; all but the writable binds, `/tmp`, `/dev/shm` and the device nodes are
//! read-only.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::init::Fail;
use crate::landlock_rules::{Grant, Rule};
use crate::sys;
use crate::wire::WireSpec;

/// Host directories shown read-only (symlinks are recreated as symlinks).
pub(crate) const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib64", "lib32", "libx32"];

/// Host `/etc` entries shown read-only where they exist. Never `shadow`, `gshadow`,
/// `sudoers*`, `ssh`, `ssl/private` or anything else holding a secret; `passwd`,
/// `group`, `hosts` and `hostname` are generated.
pub(crate) const ETC_ALLOWLIST: &[&str] = &[
    "resolv.conf",
    "nsswitch.conf",
    "gai.conf",
    "protocols",
    "services",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "alternatives",
    "ssl/certs",
    "pki/tls/certs",
    "ca-certificates",
    "ca-certificates.conf",
    "mime.types",
    "magic",
    "bash.bashrc",
    "profile",
    "inputrc",
    "locale.alias",
    "debian_version",
    "os-release",
    "mtab",
];

/// `/etc` entries shown when their name starts with one of these (`python3`,
/// `python3.11`).
pub(crate) const ETC_PREFIXES: &[&str] = &["python3"];

/// Device nodes bound from the host where they exist.
pub(crate) const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Parts of the sandbox's procfs made read-only (as bwrap does).
const PROC_READ_ONLY: &[&str] = &["sys", "sysrq-trigger", "irq", "bus"];

/// Where the new root is assembled before `pivot_root`, in the private mount namespace.
const STAGING: &str = "/tmp";

const PASSWD: &str = "root:x:0:0:root:/root:/usr/sbin/nologin\n\
sandbox:x:1000:1000:sandbox:/tmp:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n";
const HOSTS: &str = "127.0.0.1\tlocalhost carapace\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// The sandbox's host name.
pub(crate) const HOSTNAME: &str = "carapace";

/// How a bind may be used.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    ReadOnly,
    ReadWrite,
    /// Device nodes: read-write and without nodev, or they could not be opened.
    Device,
}

fn fail(step: &str, message: impl std::fmt::Display) -> Fail {
    Fail::setup(step, message.to_string())
}

fn c(path: &Path) -> Result<CString, Fail> {
    sys::cpath(path).map_err(|e| fail("paths", e))
}

/// Binds `source` (a path or `/proc/self/fd/N`) onto `target`; the flags come later,
/// see [`Staging::apply_flags`].
fn bind(source: &Path, target: &Path) -> Result<(), Fail> {
    let (src, dst) = (c(source)?, c(target)?);
    sys::mount(Some(&src), &dst, None, libc::MS_BIND, None).map_err(|e| {
        fail(
            "bind",
            format!("bind {} on {}: {e}", source.display(), target.display()),
        )
    })
}

/// Remounts `target` with the mode's flags, keeping the flags the kernel locks on mounts
/// from the parent namespace (for kernels without mount_setattr).
fn remount(target: &Path, mode: Mode) -> Result<(), Fail> {
    let dst = c(target)?;
    let locked = sys::mount_flags(&dst).map_err(|e| fail("mount flags", e))?;
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | locked;
    match mode {
        Mode::ReadOnly => flags |= libc::MS_RDONLY | libc::MS_NODEV,
        Mode::ReadWrite => flags = (flags | libc::MS_NODEV) & !libc::MS_RDONLY,
        Mode::Device => flags = (flags | libc::MS_NOEXEC) & !(libc::MS_RDONLY | libc::MS_NODEV),
    }
    sys::mount(None, &dst, None, flags, None).map_err(|e| {
        fail(
            "mount flags",
            format!("remount {} with its flags: {e}", target.display()),
        )
    })
}

/// Mounts a tmpfs on `target`.
fn tmpfs(target: &Path, options: &str) -> Result<(), Fail> {
    let data = CString::new(options).map_err(|e| fail("tmpfs", e))?;
    sys::mount(
        Some(c"tmpfs"),
        &c(target)?,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&data),
    )
    .map_err(|e| fail("tmpfs", format!("tmpfs on {}: {e}", target.display())))
}

/// The root being assembled: where it is, and which file systems are its own (where
/// mount points may be created without touching a host file system).
struct Staging {
    root: PathBuf,
    own_devices: Vec<u64>,
    /// Every mount made under the root, with the flags it is to have.
    mounts: Vec<(PathBuf, Mode)>,
    /// Directories this build created and nothing is mounted on: entries can be made in
    /// them without the checks of a walk from the root.
    made: Vec<PathBuf>,
}

impl Staging {
    fn host_path(&self, inside: &Path) -> PathBuf {
        let rel = inside.strip_prefix("/").unwrap_or(inside);
        self.root.join(rel)
    }

    /// Binds `source` on the mount point `at`, to get `mode`'s flags.
    fn bind(&mut self, source: &Path, at: PathBuf, mode: Mode) -> Result<(), Fail> {
        bind(source, &at)?;
        // What is made in `at` from now on lands on what was bound there.
        self.made.retain(|d| *d != at);
        self.mounts.push((at, mode));
        Ok(())
    }

    fn add_own_device(&mut self, path: &Path) -> Result<(), Fail> {
        let dev = fs::metadata(path).map_err(|e| fail("tmpfs", e))?.dev();
        self.own_devices.push(dev);
        Ok(())
    }

    /// Creates the mount point for `inside` (a directory, or an empty file), making the
    /// missing parents. Refuses to pass through a symlink and to create anything on a
    /// file system that is not the sandbox's own (that would write to the host).
    fn mount_point(&mut self, inside: &Path, dir: bool) -> Result<PathBuf, Fail> {
        let at = self.host_path(inside);
        if at
            .parent()
            .is_some_and(|p| self.made.iter().any(|d| d == p))
        {
            let made = if dir {
                fs::create_dir(&at)
            } else {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&at)
                    .map(drop)
            };
            match made {
                Ok(()) => {
                    if dir {
                        self.made.push(at.clone());
                    }
                    return Ok(at);
                }
                // Something is there already: the walk below checks what.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(fail("mount point", format!("{}: {e}", inside.display()))),
            }
        }
        let names: Vec<_> = inside
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        let mut current = self.root.clone();
        for (i, name) in names.iter().enumerate() {
            let last = i + 1 == names.len();
            let next = current.join(name);
            match fs::symlink_metadata(&next) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(fail(
                        "mount point",
                        format!("{} passes through a symlink", inside.display()),
                    ));
                }
                Ok(m) if !last && !m.is_dir() => {
                    return Err(fail(
                        "mount point",
                        format!("a parent of {} is not a directory", inside.display()),
                    ));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let parent = fs::metadata(&current).map_err(|e| fail("mount point", e))?;
                    if !self.own_devices.contains(&parent.dev()) {
                        return Err(fail(
                            "mount point",
                            format!(
                                "{} does not exist inside another bind, and the sandbox does \
                                 not create it there",
                                inside.display()
                            ),
                        ));
                    }
                    let made = if last && !dir {
                        File::create(&next).map(drop)
                    } else {
                        fs::create_dir(&next)
                    };
                    made.map_err(|e| fail("mount point", format!("{}: {e}", inside.display())))?;
                    if !last || dir {
                        self.made.push(next.clone());
                    }
                }
                Err(e) => {
                    return Err(fail("mount point", format!("{}: {e}", inside.display())));
                }
            }
            current = next;
        }
        Ok(current)
    }

    /// Shows the host path `host` at `inside`: a symlink is recreated as the same
    /// symlink (it resolves inside the sandbox), anything else is bound. Absent paths
    /// are skipped.
    fn show(&mut self, host: &Path, inside: &Path, mode: Mode) -> Result<(), Fail> {
        let meta = match fs::symlink_metadata(host) {
            Ok(m) => m,
            Err(_) => return Ok(()),
        };
        if meta.file_type().is_symlink() {
            let target = fs::read_link(host).map_err(|e| fail("symlink", e))?;
            if let Some(parent) = inside.parent() {
                self.mount_point(parent, true)?;
            }
            let at = self.host_path(inside);
            std::os::unix::fs::symlink(&target, &at)
                .map_err(|e| fail("symlink", format!("{}: {e}", inside.display())))?;
            return Ok(());
        }
        let at = self.mount_point(inside, meta.is_dir())?;
        self.bind(host, at, mode)
    }

    /// Gives every mount its flags: all nosuid, read-only and nodev but for the
    /// read-write binds, the own tmpfs mounts and the device nodes. One recursive
    /// mount_setattr and a call per writable mount, or a remount per mount on kernels
    /// before 5.12. Returns whether the root itself still needs its remount.
    fn apply_flags(&self) -> Result<bool, Fail> {
        use sys::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
        let all = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
        match sys::mount_setattr(&c(&self.root)?, true, all, 0) {
            Ok(()) => {
                for (path, mode) in &self.mounts {
                    let (set, clear) = match mode {
                        Mode::ReadOnly => continue,
                        Mode::ReadWrite => (0, MOUNT_ATTR_RDONLY),
                        Mode::Device => (MOUNT_ATTR_NOEXEC, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV),
                    };
                    sys::mount_setattr(&c(path)?, false, set, clear)
                        .map_err(|e| fail("mount flags", format!("{}: {e}", path.display())))?;
                }
                Ok(false)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                for (path, mode) in &self.mounts {
                    remount(path, *mode)?;
                }
                Ok(true)
            }
            Err(e) => Err(fail("mount flags", e)),
        }
    }

    fn write(&self, inside: &str, contents: &str) -> Result<(), Fail> {
        fs::write(self.host_path(Path::new(inside)), contents)
            .map_err(|e| fail("etc", format!("{inside}: {e}")))
    }
}

/// A bind source opened before the staging tmpfs covers `/tmp` (sources may live there).
struct Source {
    file: File,
    dir: bool,
}

impl Source {
    fn open(path: &str) -> Result<Source, Fail> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| fail("bind source", format!("{path}: {e}")))?;
        let dir = file
            .metadata()
            .map_err(|e| fail("bind source", format!("{path}: {e}")))?
            .is_dir();
        Ok(Source { file, dir })
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// What building the root found.
pub(crate) struct Built {
    /// Whether the sandbox's `pid_max` caps its process count.
    pub pid_max_set: bool,
}

/// Landlock rules for the sandbox's root: reads where something is shown, writes where
/// the spec allows them (paths that turn out absent are skipped).
pub(crate) fn rules(spec: &WireSpec) -> Vec<Rule> {
    let mut rules = vec![Rule::new("/", Grant::List)];
    for name in SYSTEM_DIRS {
        rules.push(Rule::new(Path::new("/").join(name), Grant::Read));
    }
    rules.push(Rule::new("/etc", Grant::Read));
    rules.push(Rule::new("/dev", Grant::List));
    for name in DEVICES {
        rules.push(Rule::new(Path::new("/dev").join(name), Grant::Device));
    }
    rules.push(Rule::new("/dev/shm", Grant::Write));
    rules.push(Rule::new("/tmp", Grant::Write));
    rules.push(Rule::new("/proc", Grant::Read));
    for b in &spec.binds {
        let grant = if b.writable {
            Grant::Write
        } else {
            Grant::Read
        };
        rules.push(Rule::new(&b.dst, grant));
    }
    if let Some((_, inside)) = &spec.socket {
        rules.push(Rule::new(inside, Grant::Write));
    }
    rules
}

/// Builds the new root and pivots into it. Runs in PID 1 of the new namespaces.
pub(crate) fn build(spec: &WireSpec) -> Result<Built, Fail> {
    sys::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(|e| fail("private mounts", e))?;

    let sources = spec
        .binds
        .iter()
        .map(|b| Source::open(&b.src))
        .collect::<Result<Vec<_>, _>>()?;
    let socket = spec
        .socket
        .as_ref()
        .map(|(host, _)| Source::open(host))
        .transpose()?;

    let root = PathBuf::from(STAGING);
    tmpfs(&root, "mode=0755,size=16m,nr_inodes=4096")?;
    let mut st = Staging {
        root: root.clone(),
        own_devices: Vec::new(),
        mounts: Vec::new(),
        made: vec![root.clone()],
    };
    st.add_own_device(&root)?;

    for name in SYSTEM_DIRS {
        let host = Path::new("/").join(name);
        st.show(&host, &host, Mode::ReadOnly)?;
    }

    // /etc: generated files and an allowlist of host entries.
    st.mount_point(Path::new("/etc"), true)?;
    st.write("/etc/passwd", PASSWD)?;
    st.write("/etc/group", GROUP)?;
    st.write("/etc/hosts", HOSTS)?;
    st.write("/etc/hostname", &format!("{HOSTNAME}\n"))?;
    let mut etc: Vec<String> = ETC_ALLOWLIST.iter().map(|s| s.to_string()).collect();
    if let Ok(dir) = fs::read_dir("/etc") {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if ETC_PREFIXES.iter().any(|p| name.starts_with(p)) {
                etc.push(name);
            }
        }
    }
    for name in &etc {
        let path = Path::new("/etc").join(name);
        st.show(&path, &path, Mode::ReadOnly)?;
    }

    // /dev: device nodes, the usual symlinks and a private /dev/shm.
    st.mount_point(Path::new("/dev"), true)?;
    for name in DEVICES {
        let path = Path::new("/dev").join(name);
        st.show(&path, &path, Mode::Device)?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, st.host_path(&Path::new("/dev").join(name)))
            .map_err(|e| fail("dev", e))?;
    }
    let shm = st.mount_point(Path::new("/dev/shm"), true)?;
    tmpfs(&shm, &tmp_options(spec.limits.tmp_bytes))?;
    st.add_own_device(&shm)?;
    st.mounts.push((shm, Mode::ReadWrite));

    // A private /tmp.
    let tmp = st.mount_point(Path::new("/tmp"), true)?;
    tmpfs(&tmp, &tmp_options(spec.limits.tmp_bytes))?;
    st.add_own_device(&tmp)?;
    st.mounts.push((tmp, Mode::ReadWrite));

    // The procfs of the new PID namespace.
    let proc = st.mount_point(Path::new("/proc"), true)?;
    sys::mount(
        Some(c"proc"),
        &c(&proc)?,
        Some(c"proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
    .map_err(|e| fail("proc", format!("mount proc: {e}")))?;
    let pid_max_set = set_pid_max(&proc, spec.limits.processes);
    // Read-only too: Landlock already forbids writes, this holds without it.
    st.mounts.push((proc.clone(), Mode::ReadOnly));
    for name in PROC_READ_ONLY {
        let path = proc.join(name);
        if path.exists() {
            st.bind(&path, path.clone(), Mode::ReadOnly)?;
        }
    }

    // The spec's binds, parents before children.
    let mut order: Vec<usize> = (0..spec.binds.len()).collect();
    order.sort_by_key(|&i| Path::new(&spec.binds[i].dst).components().count());
    for i in order {
        let (b, source) = (&spec.binds[i], &sources[i]);
        let inside = Path::new(&b.dst);
        let at = st.mount_point(inside, source.dir)?;
        let mode = if b.writable {
            Mode::ReadWrite
        } else {
            Mode::ReadOnly
        };
        st.bind(&source.path(), at, mode)?;
    }
    if let (Some(source), Some((_, inside))) = (&socket, &spec.socket) {
        let inside = Path::new(inside);
        let at = st.mount_point(inside, false)?;
        st.bind(&source.path(), at, Mode::ReadWrite)?;
    }
    drop(sources);
    drop(socket);
    let remount_root = st.apply_flags()?;

    // Into the new root; the old one is detached, so nothing of it stays reachable.
    std::env::set_current_dir(&root).map_err(|e| fail("pivot_root", e))?;
    sys::pivot_root(c".", c".").map_err(|e| fail("pivot_root", e))?;
    sys::umount_detach(c".").map_err(|e| fail("pivot_root", format!("detach old root: {e}")))?;
    std::env::set_current_dir("/").map_err(|e| fail("pivot_root", e))?;
    if remount_root {
        remount(Path::new("/"), Mode::ReadOnly)?;
    }

    Ok(Built { pid_max_set })
}

fn tmp_options(bytes: u64) -> String {
    let inodes = (bytes / 4096).max(1024);
    format!("mode=1777,size={bytes},nr_inodes={inodes}")
}

/// Caps the PID namespace's process count with its own `pid_max` (Linux 6.14 and
/// later). RLIMIT_NPROC does the same job but is not enforced for a kernel uid of 0, so
/// this is what contains a fork bomb when the caller runs as root.
fn set_pid_max(proc: &Path, processes: u64) -> bool {
    // PIDs 1 .. pid_max-1: PID 1 plus the sandbox's processes. The kernel's minimum is
    // 301.
    let value = processes.saturating_add(2).max(301);
    fs::write(proc.join("sys/kernel/pid_max"), value.to_string()).is_ok()
}

/// Rules for a degraded run without a mount namespace: the same grants on host paths.
pub(crate) fn host_rules(spec: &WireSpec) -> Vec<Rule> {
    let mut rules = vec![Rule::new("/", Grant::List)];
    for name in SYSTEM_DIRS {
        rules.push(Rule::new(Path::new("/").join(name), Grant::Read));
    }
    for name in ETC_ALLOWLIST
        .iter()
        .chain(&["passwd", "group", "hosts", "hostname"])
    {
        rules.push(Rule::new(Path::new("/etc").join(name), Grant::Read));
    }
    for name in DEVICES {
        rules.push(Rule::new(Path::new("/dev").join(name), Grant::Device));
    }
    rules.push(Rule::new("/dev/shm", Grant::Write));
    rules.push(Rule::new("/tmp", Grant::Write));
    for b in &spec.binds {
        let grant = if b.writable {
            Grant::Write
        } else {
            Grant::Read
        };
        rules.push(Rule::new(&b.src, grant));
    }
    if let Some((host, _)) = &spec.socket {
        rules.push(Rule::new(host, Grant::Write));
    }
    rules
}

/// `inside` translated to the host path it is bound from, for a degraded run without a
/// mount namespace (the longest matching bind wins).
pub(crate) fn to_host(spec: &WireSpec, inside: &str) -> PathBuf {
    let inside = Path::new(inside);
    spec.binds
        .iter()
        .filter_map(|b| {
            let rest = inside.strip_prefix(&b.dst).ok()?;
            Some((
                Path::new(&b.dst).components().count(),
                Path::new(&b.src).join(rest),
            ))
        })
        .max_by_key(|(depth, _)| *depth)
        .map(|(_, p)| p)
        .unwrap_or_else(|| inside.to_path_buf())
}
