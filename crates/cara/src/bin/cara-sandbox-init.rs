//! `cara-sandbox-init`: the sandbox's init program, installed beside `cara`.
//!
//! `cara` can be its own init program, but every spawn then loads a 15 MB binary whose
//! start-up (relocating and copying its read-only data) costs about a millisecond more
//! than the whole of bubblewrap's. This binary holds nothing but the init, so a
//! sandboxed process starts as fast as under bubblewrap. `cara` uses it only when it
//! sits in the same directory, owned like `cara` and writable by no one else
//! (`sandbox_cmd::init_program`); otherwise `cara __sandbox-init` does the same work.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(carapace_sandbox::INIT_ARG))
    {
        carapace_sandbox::init_main();
    }
    eprintln!(
        "cara-sandbox-init: the init program of cara's sandbox, started by cara; not a command \
         (try `cara sandbox run -- COMMAND`)"
    );
    ExitCode::from(2)
}
