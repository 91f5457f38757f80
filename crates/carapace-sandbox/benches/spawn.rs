//! Spawning `/bin/true` three ways, side by side: bare (`std::process::Command`), through
//! `Sandbox::run` with a tool-like spec (workspace bound read-write, no network) and
//! through `bwrap` with equivalent isolation. The sandbox should add under 10 ms per
//! spawn and be no slower than bwrap.
//!
//! `cargo bench -p carapace-sandbox --bench spawn`

use std::process::{Command, Stdio};
use std::time::Duration;

use carapace_sandbox::{Bind, Exit, INIT_ARG, InitProgram, Limits, Network, Sandbox, SandboxSpec};
use criterion::{Criterion, criterion_group, criterion_main};

fn spawn(c: &mut Criterion) {
    let ws = tempfile::TempDir::new().unwrap();
    let mut group = c.benchmark_group("spawn_true");
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(8));

    group.bench_function("bare", |b| {
        b.iter(|| {
            let status = Command::new("/bin/true").status().unwrap();
            assert!(status.success());
        })
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sandbox = Sandbox::new(InitProgram {
        program: env!("CARGO_BIN_EXE_carapace-sandbox-init").into(),
        args: vec![INIT_ARG.into()],
    });
    let spec = SandboxSpec {
        argv: vec!["/bin/true".into()],
        env: vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("HOME".into(), "/tmp".into()),
        ],
        cwd: "/work".into(),
        binds: vec![Bind {
            src: ws.path().to_path_buf(),
            dst: "/work".into(),
            writable: true,
        }],
        network: Network::None,
        limits: Limits::default(),
        allow_degraded: false,
    };
    group.bench_function("carapace_sandbox", |b| {
        b.iter(|| {
            let outcome = rt.block_on(sandbox.run(&spec)).unwrap();
            assert_eq!(outcome.exit, Exit::Code(0));
        })
    });

    if Command::new("bwrap")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("bwrap is not installed: skipping the bwrap comparison");
    } else {
        let ws_path = ws.path().to_str().unwrap().to_string();
        group.bench_function("bwrap", |b| {
            b.iter(|| {
                let status = Command::new("bwrap")
                    .args([
                        "--unshare-all",
                        "--die-with-parent",
                        "--ro-bind",
                        "/usr",
                        "/usr",
                        "--symlink",
                        "usr/bin",
                        "/bin",
                        "--symlink",
                        "usr/lib",
                        "/lib",
                        "--symlink",
                        "usr/lib64",
                        "/lib64",
                        "--symlink",
                        "usr/sbin",
                        "/sbin",
                        "--proc",
                        "/proc",
                        "--dev",
                        "/dev",
                        "--tmpfs",
                        "/tmp",
                        "--bind",
                        &ws_path,
                        "/work",
                        "--chdir",
                        "/work",
                        "--new-session",
                        "--clearenv",
                        "/bin/true",
                    ])
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
