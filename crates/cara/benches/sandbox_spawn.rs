//! Starting `/bin/true` four ways, side by side in one run:
//!
//! - `bare`: `std::process::Command`, no isolation;
//! - `exec_tool_path`: `Sandbox::run` with `cara-sandbox-init` (the small init program
//!   installed beside `cara`) and the `tool` profile's isolation (workspace bound
//!   read-write, no network): what the daemon pays for each `exec` call;
//! - `exec_tool_path_cara_init`: the same with `cara` itself as the init program, the
//!   fallback when `cara-sandbox-init` is not installed;
//! - `cara_sandbox_run`: the whole `cara sandbox run -- /bin/true` command, process start
//!   and config included;
//! - `bwrap`: bubblewrap with equivalent isolation (skipped when not installed).
//!
//! The target of the sandbox issue: under 10 ms overhead per spawn, no slower than bwrap.
//!
//! `cargo bench -p cara --bench sandbox_spawn`

use std::process::{Command, Stdio};
use std::time::Duration;

use carapace_sandbox::{Bind, Exit, INIT_ARG, InitProgram, Limits, Network, Sandbox, SandboxSpec};
use criterion::{Criterion, criterion_group, criterion_main};

const CARA: &str = env!("CARGO_BIN_EXE_cara");
const INIT: &str = env!("CARGO_BIN_EXE_cara-sandbox-init");

fn spawn(c: &mut Criterion) {
    let data = tempfile::TempDir::new().unwrap();
    let ws = tempfile::TempDir::new().unwrap();
    let ws_path = ws.path().to_str().unwrap().to_string();
    let mut group = c.benchmark_group("spawn_true");
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(8));

    group.bench_function("bare", |b| {
        b.iter(|| assert!(Command::new("/bin/true").status().unwrap().success()))
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sandbox = Sandbox::new(InitProgram {
        program: INIT.into(),
        args: vec![INIT_ARG.into()],
    });
    let cara_init = Sandbox::new(InitProgram {
        program: CARA.into(),
        args: vec![INIT_ARG.into()],
    });
    let spec = SandboxSpec {
        argv: vec!["/bin/true".into()],
        env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
        cwd: "/workspace".into(),
        binds: vec![Bind {
            src: ws.path().to_path_buf(),
            dst: "/workspace".into(),
            writable: true,
        }],
        network: Network::None,
        limits: Limits::default(),
        allow_degraded: false,
    };
    group.bench_function("exec_tool_path", |b| {
        b.iter(|| {
            let outcome = rt.block_on(sandbox.run(&spec)).unwrap();
            assert_eq!(outcome.exit, Exit::Code(0));
        })
    });

    group.bench_function("exec_tool_path_cara_init", |b| {
        b.iter(|| {
            let outcome = rt.block_on(cara_init.run(&spec)).unwrap();
            assert_eq!(outcome.exit, Exit::Code(0));
        })
    });

    group.bench_function("cara_sandbox_run", |b| {
        b.iter(|| {
            let status = Command::new(CARA)
                .arg("--data-dir")
                .arg(data.path())
                .args(["sandbox", "run", "--workspace", &ws_path, "--", "/bin/true"])
                .status()
                .unwrap();
            assert!(status.success());
        })
    });

    let bwrap_present = Command::new("bwrap")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if !bwrap_present {
        eprintln!("bwrap is not installed: skipping the bwrap comparison");
    } else {
        group.bench_function("bwrap", |b| {
            b.iter(|| {
                let status = Command::new("bwrap")
                    .args(["--unshare-all", "--die-with-parent", "--new-session"])
                    .args(["--ro-bind", "/usr", "/usr"])
                    .args(["--symlink", "usr/bin", "/bin"])
                    .args(["--symlink", "usr/lib", "/lib"])
                    .args(["--symlink", "usr/lib64", "/lib64"])
                    .args(["--symlink", "usr/sbin", "/sbin"])
                    .args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"])
                    .args(["--bind", &ws_path, "/workspace", "--chdir", "/workspace"])
                    .args(["--clearenv", "/bin/true"])
                    .status()
                    .unwrap();
                assert!(status.success());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, spawn);
criterion_main!(benches);
