//! A sandbox is known by its pid namespace: the caller gets it, held open, when the
//! command starts, and a process inside that connects to a socket is named by the same
//! namespace, never by the caller's own. Switched on by `CARAPACE_TEST_SANDBOX=1`.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use carapace_sandbox::{
    INIT_ARG, InitProgram, Limits, Network, PidNamespace, Sandbox, SandboxSpec, Stdio3, peer,
};

const INIT: &str = env!("CARGO_BIN_EXE_carapace-sandbox-init");

fn enabled() -> bool {
    let on = std::env::var_os("CARAPACE_TEST_SANDBOX").is_some_and(|v| v == "1");
    if !on {
        eprintln!("skipped: set CARAPACE_TEST_SANDBOX=1 to run sandbox tests");
    }
    on
}

fn null() -> OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

#[tokio::test]
async fn the_peer_inside_is_named_by_the_namespace_the_caller_holds() {
    if !enabled() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let p = peer(conn.as_fd()).unwrap();
        let mut got = String::new();
        conn.read_to_string(&mut got).unwrap();
        (p, got)
    });

    let (out_r, out_w) = std::io::pipe().unwrap();
    let spec = SandboxSpec {
        argv: vec![
            "python3".into(),
            "-c".into(),
            "import socket,os; s=socket.socket(socket.AF_UNIX); s.connect('/run/carapace/agent.sock'); \
             s.sendall(str(os.getpid()).encode()); s.close(); print('done')"
                .into(),
        ],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: "/tmp".into(),
        binds: Vec::new(),
        network: Network::UnixSocket {
            host: sock.clone(),
            inside: "/run/carapace/agent.sock".into(),
        },
        limits: Limits {
            wall_clock: Duration::from_secs(30),
            ..Limits::default()
        },
        allow_degraded: false,
    };
    let sandbox = Sandbox::new(InitProgram {
        program: INIT.into(),
        args: vec![INIT_ARG.into()],
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stdio = Stdio3 {
        stdin: null(),
        stdout: out_w.into(),
        stderr: null(),
    };
    let run = sandbox.run_attached(&spec, stdio, tx);
    let (code, ns) = tokio::join!(run, rx);
    assert_eq!(code.unwrap(), 0);
    let ns = ns.expect("the namespace is handed over when the command starts");
    let mut out = String::new();
    let mut out_r = out_r;
    out_r.read_to_string(&mut out).unwrap();
    assert_eq!(out.trim(), "done");

    let (p, inside_pid) = server.join().unwrap();
    let own = PidNamespace::current().unwrap().id();
    assert_ne!(ns.id(), own, "the sandbox has a pid namespace of its own");
    assert_eq!(
        p.pid_ns,
        ns.id(),
        "the peer is named by the sandbox's namespace"
    );
    // Inside, the command sees itself with a small pid; the kernel tells us its real one.
    assert_ne!(p.pid.to_string(), inside_pid);
    assert!(p.pinned, "kernels from 6.5 pin the peer with a pidfd");
}
