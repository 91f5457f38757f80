//! The seccomp filter: system calls a sandboxed tool never needs fail with EPERM (the
//! process is not killed), `clone` may not create namespaces, `clone3` reports ENOSYS so
//! libc falls back to `clone`, whose flags the filter can inspect.

use seccompiler::{BpfProgram, sock_filter};

/// System calls denied outright on every architecture.
const DENIED: &[(&str, libc::c_long)] = &[
    // Debugging and reading other processes.
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("kcmp", libc::SYS_kcmp),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    // The mount table and namespaces.
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    // The kernel itself.
    ("bpf", libc::SYS_bpf),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("syslog", libc::SYS_syslog),
    ("quotactl", libc::SYS_quotactl),
    ("vhangup", libc::SYS_vhangup),
    // Keyrings are not namespaced.
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    // The clock is shared with the host.
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    // io_uring runs operations outside the reach of this filter.
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
];

/// Legacy system calls of x86_64 denied as well.
#[cfg(target_arch = "x86_64")]
const DENIED_ARCH: &[(&str, libc::c_long)] = &[
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    // Removed from the kernel long ago; libc no longer names them.
    ("create_module", 174),
    ("get_kernel_syms", 177),
    ("query_module", 178),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("nfsservctl", libc::SYS_nfsservctl),
    ("uselib", libc::SYS_uselib),
    ("ustat", libc::SYS_ustat),
    ("sysfs", libc::SYS_sysfs),
    ("_sysctl", libc::SYS__sysctl),
];

#[cfg(not(target_arch = "x86_64"))]
const DENIED_ARCH: &[(&str, libc::c_long)] = &[];

/// Every `CLONE_NEW*` flag `clone` accepts (CLONE_NEWTIME shares its bit with the exit
/// signal there and is valid with clone3 and unshare only, both denied).
const CLONE_NEW_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// Terminal ioctls that push input into a terminal or reach the console.
// The type of ioctl numbers differs between libcs.
#[allow(clippy::unnecessary_cast)]
const DENIED_IOCTLS: &[u64] = &[libc::TIOCSTI as u64, libc::TIOCLINUX as u64];

/// System calls of the x32 ABI carry this bit.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The names of the system calls denied outright.
#[cfg(test)]
pub(crate) fn denied_names() -> impl Iterator<Item = &'static str> {
    DENIED.iter().chain(DENIED_ARCH).map(|(name, _)| *name)
}

/// The audit architecture of the system calls the filter lets through; any other (the
/// 32-bit ABI on x86_64, say) kills the process.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 62 | 0x8000_0000 | 0x4000_0000;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 183 | 0x8000_0000 | 0x4000_0000;
#[cfg(target_arch = "riscv64")]
const AUDIT_ARCH: u32 = 243 | 0x8000_0000 | 0x4000_0000;

/// Offsets in `struct seccomp_data { int nr; u32 arch; u64 ip; u64 args[6]; }`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

/// Offset of the low 32 bits of argument `i`.
const fn arg_low(i: u32) -> u32 {
    let base = 16 + 8 * i;
    if cfg!(target_endian = "little") {
        base
    } else {
        base + 4
    }
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

fn load(offset: u32) -> sock_filter {
    sock_filter {
        code: BPF_LD_W_ABS,
        jt: 0,
        jf: 0,
        k: offset,
    }
}

fn ret(action: u32) -> sock_filter {
    sock_filter {
        code: BPF_RET_K,
        jt: 0,
        jf: 0,
        k: action,
    }
}

/// A conditional jump at `at` that goes to `target` when true and falls through
/// otherwise.
fn jump_to(code: u16, k: u32, at: usize, target: usize) -> Result<sock_filter, String> {
    let jt =
        u8::try_from(target - at - 1).map_err(|_| "seccomp filter jump too long".to_string())?;
    Ok(sock_filter { code, jt, jf: 0, k })
}

/// Builds the filter program: the architecture check, then one comparison per denied
/// system call that jumps to a shared EPERM return, then the argument checks of `clone`
/// and `ioctl`. (Written here rather than with seccompiler's builder, which has one
/// action per filter and spends a few instructions per system call; a short program
/// costs less to install and to run on every system call.)
pub(crate) fn program() -> Result<BpfProgram, String> {
    let denied: Vec<u32> = DENIED
        .iter()
        .chain(DENIED_ARCH)
        .map(|(_, nr)| *nr as u32)
        .collect();
    let clone_new_mask = CLONE_NEW_FLAGS.iter().fold(0u64, |m, f| m | f) as u32;

    // Where each part starts.
    let checks = 6;
    let clone_jump = checks + denied.len();
    let ioctl_jump = clone_jump + 1;
    let allow = ioctl_jump + 1;
    let clone_check = allow + 1;
    let ioctl_check = clone_check + 3;
    let eperm = ioctl_check + 2 + DENIED_IOCTLS.len();
    let enosys = eperm + 1;

    let mut p = vec![
        load(ARCH_OFFSET),
        sock_filter {
            code: BPF_JEQ_K,
            jt: 1,
            jf: 0,
            k: AUDIT_ARCH,
        },
        ret(libc::SECCOMP_RET_KILL_PROCESS),
        load(NR_OFFSET),
        // x32 numbers share x86_64's audit arch: refused as a block.
        jump_to(BPF_JGE_K, X32_SYSCALL_BIT, 4, eperm)?,
        // ENOSYS, so libc falls back to clone, whose flags the filter can see.
        jump_to(BPF_JEQ_K, libc::SYS_clone3 as u32, 5, enosys)?,
    ];
    for (i, nr) in denied.iter().enumerate() {
        p.push(jump_to(BPF_JEQ_K, *nr, checks + i, eperm)?);
    }
    p.push(jump_to(
        BPF_JEQ_K,
        libc::SYS_clone as u32,
        clone_jump,
        clone_check,
    )?);
    p.push(jump_to(
        BPF_JEQ_K,
        libc::SYS_ioctl as u32,
        ioctl_jump,
        ioctl_check,
    )?);
    p.push(ret(libc::SECCOMP_RET_ALLOW));
    // clone(flags, ...): no namespace flag.
    p.push(load(arg_low(0)));
    p.push(jump_to(BPF_JSET_K, clone_new_mask, clone_check + 1, eperm)?);
    p.push(ret(libc::SECCOMP_RET_ALLOW));
    // ioctl(fd, request, ...): no terminal injection.
    p.push(load(arg_low(1)));
    for (i, request) in DENIED_IOCTLS.iter().enumerate() {
        p.push(jump_to(
            BPF_JEQ_K,
            *request as u32,
            ioctl_check + 1 + i,
            eperm,
        )?);
    }
    p.push(ret(libc::SECCOMP_RET_ALLOW));
    p.push(ret(libc::SECCOMP_RET_ERRNO | libc::EPERM as u32));
    p.push(ret(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    debug_assert_eq!(p.len(), enosys + 1);
    Ok(p)
}

/// Installs `program` on the calling thread (no_new_privs must be set).
pub(crate) fn install(program: &BpfProgram) -> Result<(), String> {
    seccompiler::apply_filter(program).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic BPF interpreter for the instructions seccompiler and the prefix emit:
    /// runs `program` on one system call and returns the action.
    fn run(program: &[sock_filter], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        // struct seccomp_data { int nr; u32 arch; u64 ip; u64 args[6]; }
        let mut data = Vec::new();
        data.extend((nr as i32).to_ne_bytes());
        data.extend(arch.to_ne_bytes());
        data.extend(0u64.to_ne_bytes());
        for a in args {
            data.extend(a.to_ne_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let ins = &program[pc];
            pc += 1;
            match ins.code {
                0x20 => {
                    // BPF_LD | BPF_W | BPF_ABS
                    let k = ins.k as usize;
                    acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                }
                0x54 => acc &= ins.k,         // BPF_ALU | BPF_AND | BPF_K
                0x05 => pc += ins.k as usize, // BPF_JMP | BPF_JA
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let taken = match ins.code {
                        0x15 => acc == ins.k,
                        0x25 => acc > ins.k,
                        0x35 => acc >= ins.k,
                        _ => acc & ins.k != 0,
                    };
                    pc += if taken { ins.jt } else { ins.jf } as usize;
                }
                0x06 => return ins.k, // BPF_RET | BPF_K
                other => panic!("instruction {other:#x} not interpreted"),
            }
        }
    }

    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    const AUDIT_ARCH_AARCH64: u32 = 183 | 0x8000_0000 | 0x4000_0000;
    const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;

    fn native_arch() -> u32 {
        if cfg!(target_arch = "x86_64") {
            AUDIT_ARCH_X86_64
        } else {
            AUDIT_ARCH_AARCH64
        }
    }

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

    fn check(nr: i64, args: [u64; 6]) -> u32 {
        run(&program().unwrap(), native_arch(), nr, args)
    }

    #[test]
    fn denied_calls_fail_with_eperm() {
        for (name, nr) in DENIED.iter().chain(DENIED_ARCH) {
            assert_eq!(check(*nr, [0; 6]), EPERM, "{name}");
        }
        // The brief's list, by name.
        for name in [
            "ptrace",
            "mount",
            "umount2",
            "pivot_root",
            "chroot",
            "kexec_load",
            "kexec_file_load",
            "bpf",
            "keyctl",
            "add_key",
            "request_key",
            "unshare",
            "setns",
            "perf_event_open",
            "init_module",
            "finit_module",
            "delete_module",
            "reboot",
            "swapon",
            "swapoff",
            "acct",
            "open_by_handle_at",
            "name_to_handle_at",
            "userfaultfd",
            "process_vm_readv",
            "process_vm_writev",
            "syslog",
            "fsopen",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "pidfd_getfd",
            "settimeofday",
            "clock_settime",
            "adjtimex",
        ] {
            assert!(denied_names().any(|n| n == name), "{name} is not denied");
        }
    }

    #[test]
    fn ordinary_calls_are_allowed() {
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_wait4,
            libc::SYS_exit_group,
            libc::SYS_landlock_restrict_self,
        ] {
            assert_eq!(check(nr, [0; 6]), ALLOW, "{nr}");
        }
    }

    #[test]
    fn clone_is_allowed_without_namespace_flags_only() {
        let fork_flags =
            (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID) as u64 | libc::SIGCHLD as u64;
        let thread_flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        assert_eq!(check(libc::SYS_clone, [fork_flags, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(check(libc::SYS_clone, [thread_flags, 0, 0, 0, 0, 0]), ALLOW);
        for flag in CLONE_NEW_FLAGS {
            assert_eq!(
                check(libc::SYS_clone, [fork_flags | flag, 0, 0, 0, 0, 0]),
                EPERM,
                "{flag:#x}"
            );
        }
        assert_eq!(check(libc::SYS_clone3, [0; 6]), ENOSYS);
    }

    #[test]
    fn terminal_injection_is_denied_other_ioctls_are_not() {
        // 0x5401 is TCGETS.
        assert_eq!(
            check(libc::SYS_ioctl, [0, DENIED_IOCTLS[0], 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(
            check(libc::SYS_ioctl, [0, DENIED_IOCTLS[1], 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(check(libc::SYS_ioctl, [0, 0x5401, 0, 0, 0, 0]), ALLOW);
    }

    #[test]
    fn x32_and_foreign_architectures_are_refused() {
        let x32_ptrace = (X32_SYSCALL_BIT as i64) | 521;
        assert_eq!(check(x32_ptrace, [0; 6]), EPERM);
        let program = program().unwrap();
        assert_eq!(
            run(&program, AUDIT_ARCH_I386, 0, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
    }
}
