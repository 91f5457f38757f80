//! `carapace-sandbox-init`: test support only (`cara` is the init program
//! in production). With [`carapace_sandbox::INIT_ARG`] it is the sandbox's init
//! program; with `run` it is a tiny CLI over `Sandbox::run`, so the escape suite can run
//! sandboxes as another user:
//!
//! ```text
//! carapace-sandbox-init run [--bind SRC:DST[:ro]]... [--socket HOST:INSIDE] [--cwd DIR]
//!     [--env NAME=VALUE]... [--wall-ms N] [--cpu N] [--as-bytes N] [--open-files N]
//!     [--processes N] [--output-bytes N] [--tmp-bytes N] [--allow-degraded] [--inherit]
//!     -- COMMAND...
//! ```
//!
//! It prints the captured stdout and stderr, then a last stderr line
//! `carapace-sandbox-init: exit=... stdout_truncated=... stderr_truncated=... degraded=...`,
//! and exits with the command's code (128+signal, 124 at the deadline, 125 on error).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use carapace_sandbox::{
    Bind, Exit, INIT_ARG, InitProgram, Limits, Network, Sandbox, SandboxSpec, init_main,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(INIT_ARG) {
        init_main();
    }
    if args.first().map(String::as_str) != Some("run") {
        eprintln!("usage: carapace-sandbox-init run [OPTIONS] -- COMMAND... (test support)");
        return ExitCode::from(2);
    }
    match cli(&args[1..]) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("carapace-sandbox-init: error: {e}");
            ExitCode::from(125)
        }
    }
}

fn number(value: Option<&String>, flag: &str) -> Result<u64, String> {
    value
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{flag} needs a number"))
}

fn cli(args: &[String]) -> Result<u8, String> {
    let mut spec = SandboxSpec {
        argv: Vec::new(),
        env: Vec::new(),
        cwd: PathBuf::from("/tmp"),
        binds: Vec::new(),
        network: Network::None,
        limits: Limits::default(),
        allow_degraded: false,
    };
    let mut inherit = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let l = &mut spec.limits;
        match flag.as_str() {
            "--" => {
                spec.argv = it.by_ref().cloned().collect();
            }
            "--bind" => {
                let v = it.next().ok_or("--bind needs SRC:DST[:ro]")?;
                let parts: Vec<&str> = v.split(':').collect();
                let (src, dst, writable) = match parts.as_slice() {
                    [s, d] => (s, d, true),
                    [s, d, "ro"] => (s, d, false),
                    _ => return Err(format!("--bind {v}: expected SRC:DST[:ro]")),
                };
                spec.binds.push(Bind {
                    src: src.into(),
                    dst: dst.into(),
                    writable,
                });
            }
            "--socket" => {
                let v = it.next().ok_or("--socket needs HOST:INSIDE")?;
                let (host, inside) = v.split_once(':').ok_or("--socket needs HOST:INSIDE")?;
                spec.network = Network::UnixSocket {
                    host: host.into(),
                    inside: inside.into(),
                };
            }
            "--cwd" => spec.cwd = it.next().ok_or("--cwd needs a directory")?.into(),
            "--env" => {
                let v = it.next().ok_or("--env needs NAME=VALUE")?;
                let (k, v) = v.split_once('=').ok_or("--env needs NAME=VALUE")?;
                spec.env.push((k.into(), v.into()));
            }
            "--wall-ms" => l.wall_clock = Duration::from_millis(number(it.next(), flag)?),
            "--cpu" => l.cpu_seconds = number(it.next(), flag)?,
            "--as-bytes" => l.address_space_bytes = number(it.next(), flag)?,
            "--open-files" => l.open_files = number(it.next(), flag)?,
            "--processes" => l.processes = number(it.next(), flag)?,
            "--output-bytes" => l.output_bytes = number(it.next(), flag)? as usize,
            "--tmp-bytes" => l.tmp_bytes = number(it.next(), flag)?,
            "--allow-degraded" => spec.allow_degraded = true,
            "--inherit" => inherit = true,
            other => return Err(format!("unknown option {other}")),
        }
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let sandbox = Sandbox::new(InitProgram {
        program: exe,
        args: vec![INIT_ARG.to_string()],
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    if inherit {
        let code = runtime
            .block_on(sandbox.run_inherit(&spec))
            .map_err(|e| e.to_string())?;
        return Ok(code.clamp(0, 255) as u8);
    }
    let outcome = runtime
        .block_on(sandbox.run(&spec))
        .map_err(|e| e.to_string())?;
    let _ = std::io::stdout().write_all(&outcome.stdout);
    let _ = std::io::stdout().flush();
    let mut err = std::io::stderr();
    let _ = err.write_all(&outcome.stderr);
    let (exit, code) = match outcome.exit {
        Exit::Code(c) => (format!("code:{c}"), c.clamp(0, 255) as u8),
        Exit::Signal(s) => (format!("signal:{s}"), (128 + s).clamp(0, 255) as u8),
        Exit::Deadline => ("deadline".to_string(), 124),
    };
    let degraded: Vec<String> = outcome.degraded.iter().map(|f| f.to_string()).collect();
    let _ = writeln!(
        err,
        "\ncarapace-sandbox-init: exit={exit} stdout_truncated={} stderr_truncated={} degraded={}",
        outcome.stdout_truncated,
        outcome.stderr_truncated,
        degraded.join(",")
    );
    Ok(code)
}
