//! `check()`: each feature probed for real, without root.

use crate::{Feature, FeatureStatus, cgroup, sys};

fn status(feature: Feature, available: bool, detail: impl Into<String>) -> FeatureStatus {
    FeatureStatus {
        feature,
        available,
        detail: detail.into(),
    }
}

/// Probes `unshare(flags)` in a child process.
fn namespace(feature: Feature, flags: libc::c_int, what: &str) -> FeatureStatus {
    match sys::probe_in_child(flags) {
        Ok(0) => status(feature, true, format!("unshare({what}) works")),
        Ok(errno) => status(
            feature,
            false,
            format!(
                "unshare({what}): {}",
                std::io::Error::from_raw_os_error(errno)
            ),
        ),
        Err(e) => status(feature, false, format!("cannot probe: {e}")),
    }
}

/// The kernel release as (major, minor).
fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

pub(crate) fn check() -> Vec<FeatureStatus> {
    let user = libc::CLONE_NEWUSER;
    let mut out = vec![
        namespace(Feature::UserNamespace, user, "CLONE_NEWUSER"),
        namespace(
            Feature::MountNamespace,
            user | libc::CLONE_NEWNS,
            "CLONE_NEWUSER|CLONE_NEWNS",
        ),
        namespace(
            Feature::PidNamespace,
            user | libc::CLONE_NEWPID,
            "CLONE_NEWUSER|CLONE_NEWPID",
        ),
        namespace(
            Feature::NetworkNamespace,
            user | libc::CLONE_NEWNET,
            "CLONE_NEWUSER|CLONE_NEWNET",
        ),
        namespace(
            Feature::IpcNamespace,
            user | libc::CLONE_NEWIPC,
            "CLONE_NEWUSER|CLONE_NEWIPC",
        ),
        namespace(
            Feature::UtsNamespace,
            user | libc::CLONE_NEWUTS,
            "CLONE_NEWUSER|CLONE_NEWUTS",
        ),
    ];

    out.push(match sys::landlock_abi() {
        Ok(abi) => status(Feature::Landlock, true, format!("ABI {abi}")),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => status(
            Feature::Landlock,
            false,
            "built into the kernel but not enabled (add landlock to the lsm= boot parameter)",
        ),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => status(
            Feature::Landlock,
            false,
            "the kernel is built without Landlock",
        ),
        Err(e) => status(Feature::Landlock, false, e.to_string()),
    });
    out.push(if sys::seccomp_filter_supported() {
        status(Feature::Seccomp, true, "seccomp filters with errno actions")
    } else {
        status(Feature::Seccomp, false, "the kernel has no seccomp filters")
    });
    out.push(if sys::no_new_privs_supported() {
        status(Feature::NoNewPrivs, true, "PR_SET_NO_NEW_PRIVS")
    } else {
        status(
            Feature::NoNewPrivs,
            false,
            "the kernel has no PR_SET_NO_NEW_PRIVS",
        )
    });
    out.push(match cgroup::find_base() {
        Ok(dir) => status(
            Feature::Cgroup,
            true,
            format!("cgroup2 at {} (memory, pids)", dir.display()),
        ),
        Err(detail) => status(Feature::Cgroup, false, detail),
    });

    let root = sys::ids().0 == 0;
    let pid_max_namespaced = kernel_version().is_some_and(|v| v >= (6, 14));
    out.push(match (root, pid_max_namespaced) {
        (false, _) => status(
            Feature::Rlimits,
            true,
            "CPU, address space, open files; processes per user namespace",
        ),
        (true, true) => status(
            Feature::Rlimits,
            true,
            "CPU, address space, open files; as root, processes are capped by the \
             sandbox's own pid_max (at least 300)",
        ),
        (true, false) => status(
            Feature::Rlimits,
            false,
            "running as root, RLIMIT_NPROC does not apply, and this kernel has no \
             per-namespace pid_max (Linux 6.14)",
        ),
    });
    out
}
