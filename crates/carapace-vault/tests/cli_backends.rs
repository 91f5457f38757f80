//! The password-manager backends against fake CLIs that answer like the real ones, and
//! the environment backend.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use carapace_types::Secret;
use carapace_vault::{
    Backend, BackendKind, BitwardenBackend, EnvBackend, OnePasswordBackend, PassBackend, VaultError,
};

const SESSION: &str = "bw-session-key-0123456789";
const OP_TOKEN: &str = "ops_service-account-token";

/// Every executable the tests run, written once before any test spawns a process (a
/// process forked while another thread still has a script open for writing would make
/// running that script fail with "text file busy").
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn bin(&self, name: &str) -> PathBuf {
        self.root.join("bin").join(name)
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.root.join(name)).unwrap_or_default()
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let fakes = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes");
        let bin = root.join("bin");
        fs::create_dir(&bin).expect("mkdir");
        let write_exe = |name: &str, body: &str| {
            let path = bin.join(name);
            fs::write(&path, body).expect("write");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        };
        for fake in ["bw", "op", "pass"] {
            write_exe(
                &format!("fake-{fake}"),
                &fs::read_to_string(fakes.join(fake)).expect("read fake"),
            );
        }

        let items = root.join("bw-items");
        fs::create_dir(&items).expect("mkdir");
        fs::write(items.join("anthropic"), "bw pass with spaces & $ymbols").expect("write");
        fs::write(items.join("github-personal"), "gh-personal-value").expect("write");
        fs::write(items.join("github-work"), "gh-work-value").expect("write");

        let vault = root.join("op/Private/github");
        fs::create_dir_all(&vault).expect("mkdir");
        fs::write(vault.join("token"), "op-token-value").expect("write");

        let store = root.join("pass-store/mail");
        fs::create_dir_all(&store).expect("mkdir");
        fs::write(
            store.join("imap"),
            "pass-first-line\nuser: me@example.com\n",
        )
        .expect("write");

        let r = root.display();
        // Wrappers set what the fakes read, as the real CLIs read their own state.
        write_exe(
            "bw",
            &format!(
                "#!/bin/sh\nFAKE_BW_ITEMS={r}/bw-items FAKE_BW_SESSION={SESSION} \
                 FAKE_BW_ARGV_LOG={r}/bw-argv exec {r}/bin/fake-bw \"$@\"\n"
            ),
        );
        write_exe(
            "bw-slow",
            &format!(
                "#!/bin/sh\nFAKE_BW_SLEEP=10 FAKE_BW_ITEMS={r}/bw-items FAKE_BW_SESSION={SESSION} \
                 exec {r}/bin/fake-bw \"$@\"\n"
            ),
        );
        write_exe(
            "op",
            &format!(
                "#!/bin/sh\nOP_SERVICE_ACCOUNT_TOKEN={OP_TOKEN} FAKE_OP_TOKEN={OP_TOKEN} \
                 FAKE_OP_ROOT={r}/op FAKE_OP_ARGV_LOG={r}/op-argv exec {r}/bin/fake-op \"$@\"\n"
            ),
        );
        write_exe(
            "op-signed-out",
            &format!(
                "#!/bin/sh\nunset OP_SERVICE_ACCOUNT_TOKEN; FAKE_OP_TOKEN={OP_TOKEN} \
                 FAKE_OP_ROOT={r}/op exec {r}/bin/fake-op \"$@\"\n"
            ),
        );
        write_exe(
            "pass",
            &format!("#!/bin/sh\nFAKE_PASS_STORE={r}/pass-store exec {r}/bin/fake-pass \"$@\"\n"),
        );
        write_exe(
            "crash",
            "#!/bin/sh\necho 'segfault in libfoo' >&2\nexit 139\n",
        );
        Fixture { _dir: dir, root }
    })
}

fn bw() -> BitwardenBackend {
    BitwardenBackend::new()
        .program(fixture().bin("bw"))
        .session(Secret::new(SESSION.to_string()))
}

#[test]
fn bitwarden_reads_the_value_exactly() {
    let v = bw().get("anthropic").expect("get");
    assert_eq!(v.expose(), "bw pass with spaces & $ymbols");
    assert_eq!(bw().kind(), BackendKind::Bitwarden);
}

#[test]
fn bitwarden_gets_the_session_from_the_environment_not_the_command_line() {
    bw().get("github-work").expect("get");
    let log = fixture().log("bw-argv");
    assert!(
        log.lines()
            .any(|l| l == "--nointeraction get password github-work"),
        "{log}"
    );
    assert!(
        !log.contains(SESSION),
        "the session key was on a command line: {log}"
    );
}

#[test]
fn bitwarden_errors_are_told_apart() {
    let locked = BitwardenBackend::new().program(fixture().bin("bw"));
    let err = locked.get("anthropic").expect_err("no session");
    assert!(
        matches!(&err, VaultError::Locked { detail, .. } if detail == "Vault is locked."),
        "{err}"
    );
    let wrong = locked.session(Secret::new("stale-session".into()));
    assert!(matches!(
        wrong.get("anthropic"),
        Err(VaultError::Locked { .. })
    ));

    assert!(matches!(
        bw().get("nothing-like-it"),
        Err(VaultError::NotFound { .. })
    ));
    let err = bw().get("github").expect_err("two items match");
    assert!(matches!(err, VaultError::Ambiguous { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "more than one bitwarden item matches `github`"
    );
}

#[test]
fn a_hanging_cli_is_killed_at_the_timeout() {
    let slow = BitwardenBackend::new()
        .program(fixture().bin("bw-slow"))
        .session(Secret::new(SESSION.to_string()))
        .timeout(Duration::from_millis(300));
    let start = Instant::now();
    let err = slow.get("anthropic").expect_err("times out");
    assert!(matches!(err, VaultError::Timeout { .. }), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_missing_program_is_named() {
    let err = BitwardenBackend::new()
        .program("/nonexistent/bw")
        .get("x")
        .expect_err("missing");
    assert!(matches!(err, VaultError::ProgramNotFound { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "the bitwarden program `/nonexistent/bw` was not found"
    );
    let err = PassBackend::new()
        .program("/nonexistent/pass")
        .get("x")
        .expect_err("missing");
    assert!(matches!(err, VaultError::ProgramNotFound { .. }), "{err}");
}

#[test]
fn an_unknown_failure_reports_the_exit_status_and_error_output() {
    let err = BitwardenBackend::new()
        .program(fixture().bin("crash"))
        .get("x")
        .expect_err("fails");
    assert_eq!(
        err.to_string(),
        "the bitwarden program failed (exit code 139): segfault in libfoo"
    );
}

#[test]
fn names_that_look_like_options_never_reach_the_cli() {
    for name in ["--session=x", "-h", "a\nb", ""] {
        assert!(
            matches!(bw().get(name), Err(VaultError::InvalidName { .. })),
            "{name:?}"
        );
    }
    assert!(!fixture().log("bw-argv").contains("--session"));
}

fn op() -> OnePasswordBackend {
    OnePasswordBackend::new().program(fixture().bin("op"))
}

#[test]
fn one_password_reads_a_reference_without_the_newline() {
    assert_eq!(
        op().get("op://Private/github/token").expect("get").expose(),
        "op-token-value"
    );
    assert_eq!(
        op().get("Private/github/token").expect("get").expose(),
        "op-token-value"
    );
    let log = fixture().log("op-argv");
    assert!(
        log.lines()
            .any(|l| l == "read --no-newline op://Private/github/token"),
        "{log}"
    );
}

#[test]
fn one_password_errors_are_told_apart() {
    for missing in [
        "op://Nope/github/token",
        "op://Private/nope/token",
        "op://Private/github/nope",
    ] {
        let err = op().get(missing).expect_err("missing");
        assert!(
            matches!(err, VaultError::NotFound { .. }),
            "{missing}: {err}"
        );
    }
    let signed_out = OnePasswordBackend::new().program(fixture().bin("op-signed-out"));
    let err = signed_out
        .get("op://Private/github/token")
        .expect_err("signed out");
    assert!(
        matches!(&err, VaultError::Locked { detail, .. } if detail.contains("not currently signed in")),
        "{err}"
    );
    let err = op().get("op://just-a-vault").expect_err("malformed");
    assert!(matches!(err, VaultError::CommandFailed { .. }), "{err}");
}

#[test]
fn pass_takes_the_first_line_and_maps_not_found() {
    let pass = PassBackend::new().program(fixture().bin("pass"));
    assert_eq!(
        pass.get("mail/imap").expect("get").expose(),
        "pass-first-line"
    );
    let err = pass.get("mail/nope").expect_err("missing");
    assert!(matches!(err, VaultError::NotFound { .. }), "{err}");
    assert!(matches!(
        pass.get("../etc/passwd"),
        Err(VaultError::InvalidName { .. })
    ));
}

#[test]
fn read_only_backends_say_so() {
    let backends: Vec<Box<dyn Backend>> = vec![
        Box::new(bw()),
        Box::new(op()),
        Box::new(PassBackend::new()),
        Box::new(EnvBackend::new()),
    ];
    for b in backends {
        let err = b
            .set("x", &Secret::new("value-1234".into()))
            .expect_err("read-only");
        assert!(
            matches!(
                err,
                VaultError::ReadOnly {
                    operation: "set",
                    ..
                }
            ),
            "{err}"
        );
        assert!(matches!(b.remove("x"), Err(VaultError::ReadOnly { .. })));
        assert!(matches!(b.names(), Err(VaultError::ReadOnly { .. })));
        assert_eq!(
            err.to_string(),
            format!(
                "the {} backend is read-only: set is not supported",
                b.kind()
            )
        );
    }
}

#[test]
fn the_environment_backend_reads_mapped_and_derived_variables() {
    let env = EnvBackend::new().map("path", "PATH");
    let path = std::env::var("PATH").expect("PATH is set");
    assert_eq!(env.get("path").expect("get").expose(), &path);
    assert_eq!(
        EnvBackend::with_prefix("CARAPACE_").variable_for("anthropic/api-key"),
        "CARAPACE_ANTHROPIC_API_KEY"
    );
    let err = EnvBackend::with_prefix("CARAPACE_TEST_SURELY_UNSET_")
        .get("x")
        .expect_err("unset");
    assert!(matches!(err, VaultError::NotFound { .. }), "{err}");
    assert!(
        err.to_string().contains("CARAPACE_TEST_SURELY_UNSET_X"),
        "{err}"
    );
}
