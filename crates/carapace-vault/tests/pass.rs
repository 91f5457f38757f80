//! `PassBackend` against the real `pass` and `gpg`, in a throwaway GnuPG home and
//! password store. Slow-ish (key generation), so switched on at run time with
//! `CARAPACE_TEST_PASS=1`; CI turns it on.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use carapace_vault::{Backend, PassBackend, VaultError};

fn enabled() -> bool {
    if std::env::var_os("CARAPACE_TEST_PASS").is_some_and(|v| v == "1") {
        return true;
    }
    eprintln!("note: skipping the real `pass` test; set CARAPACE_TEST_PASS=1 to run it");
    false
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> String {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Stops the gpg-agent that gpg started in the throwaway home.
struct Agent<'a>(&'a Path);

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .args(["--kill", "gpg-agent"])
            .env("GNUPGHOME", self.0)
            .status();
    }
}

#[test]
fn pass_reads_the_first_line_of_a_real_entry() {
    if !enabled() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let gnupg = tmp.path().join("gnupg");
    let store = tmp.path().join("store");
    std::fs::create_dir(&gnupg).expect("mkdir");
    std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    let _agent = Agent(&gnupg);
    let gpg = |args: &[&str]| {
        let mut c = Command::new("gpg");
        c.args(["--batch", "--pinentry-mode", "loopback"])
            .args(args)
            .env("GNUPGHOME", &gnupg);
        c
    };
    run(
        &mut gpg(&[
            "--passphrase",
            "",
            "--quick-gen-key",
            "carapace test <t@example.invalid>",
            "default",
            "default",
            "never",
        ]),
        None,
    );
    let listing = run(&mut gpg(&["--list-keys", "--with-colons"]), None);
    let fingerprint = listing
        .lines()
        .find_map(|l| l.strip_prefix("fpr:"))
        .and_then(|rest| rest.split(':').find(|f| !f.is_empty()))
        .expect("a fingerprint")
        .to_string();
    let pass = |args: &[&str]| {
        let mut c = Command::new("pass");
        c.args(args)
            .env("GNUPGHOME", &gnupg)
            .env("PASSWORD_STORE_DIR", &store);
        c
    };
    run(&mut pass(&["init", &fingerprint]), None);
    run(
        &mut pass(&["insert", "-m", "mail/imap"]),
        Some("first-line-secret-Ünïcode\nuser: me@example.com\n"),
    );

    let backend = PassBackend::new().store_dir(&store).gnupg_home(&gnupg);
    assert_eq!(
        backend.get("mail/imap").expect("get").expose(),
        "first-line-secret-Ünïcode"
    );
    let err = backend.get("mail/nope").expect_err("missing");
    assert!(matches!(err, VaultError::NotFound { .. }), "{err}");
}
