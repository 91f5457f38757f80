//! `cara system install` and `uninstall` into a temporary root: the accounts, owners and
//! modes it makes, that the owner's account really cannot read the data directory (the
//! kernel checks it: commands run under the temporary root's numeric ids), that a second
//! install changes nothing, and that uninstall leaves the root as it found it.
//!
//! Switched on by `CARAPACE_TEST_SYSTEM=1` and needs root (CI runs as root). The ids the
//! temporary root hands out may also be used on the host; the checks only need them to
//! be distinct from each other.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Output};

use crate::util::CARA;

fn enabled() -> bool {
    if std::env::var_os("CARAPACE_TEST_SYSTEM").is_none_or(|v| v != "1") {
        eprintln!("skipped: set CARAPACE_TEST_SYSTEM=1 (as root) to run the system install tests");
        return false;
    }
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap();
    assert_eq!(euid, "0", "CARAPACE_TEST_SYSTEM=1 needs root");
    true
}

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Shadow's own backups (`passwd-` and so on): every tool that edits the account files
/// rewrites them, and every real system has them; they are the one thing uninstall
/// cannot put back.
const BACKUPS: [&str; 4] = ["etc/passwd-", "etc/group-", "etc/shadow-", "etc/gshadow-"];

/// A minimal system root: the account files (root only), the host's login.defs,
/// `/var/lib`, and two people: `alice` (the owner) and `mallory` (someone else).
fn new_root() -> tempfile::TempDir {
    let tmp = tempfile::Builder::new()
        .prefix("cara-system-")
        .tempdir()
        .unwrap();
    // Other uids must reach inside, as on a real system.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let etc = tmp.path().join("etc");
    fs::create_dir(&etc).unwrap();
    fs::create_dir_all(tmp.path().join("var/lib")).unwrap();
    fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    fs::write(etc.join("group"), "root:x:0:\n").unwrap();
    fs::write(etc.join("shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    fs::write(etc.join("gshadow"), "root:*::\n").unwrap();
    for secret in ["shadow", "gshadow"] {
        fs::set_permissions(etc.join(secret), fs::Permissions::from_mode(0o640)).unwrap();
    }
    fs::copy("/etc/login.defs", etc.join("login.defs")).unwrap();
    for person in ["alice", "mallory"] {
        run_ok(
            Command::new("useradd")
                .args([
                    "--no-log-init",
                    "--no-create-home",
                    "--user-group",
                    "--prefix",
                ])
                .arg(tmp.path())
                .arg(person),
        );
    }
    tmp
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `cara system ARGS --root ROOT`, from a clean environment; its standard output.
fn cara_system(root: &Path, args: &[&str]) -> String {
    let out = run_ok(
        Command::new(CARA)
            .arg("system")
            .args(args)
            .arg("--root")
            .arg(root)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", root.join("nonexistent-home")),
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every entry under the root: kind, mode, owner, group, and a file's bytes.
type Snapshot = BTreeMap<String, (u32, u32, u32, Option<Vec<u8>>)>;

fn snapshot(root: &Path) -> Snapshot {
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if BACKUPS.contains(&rel.as_str()) {
                continue;
            }
            let meta = fs::symlink_metadata(&path).unwrap();
            let content = meta.is_file().then(|| fs::read(&path).unwrap());
            out.insert(rel, (meta.mode(), meta.uid(), meta.gid(), content));
            if meta.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Snapshot::new();
    walk(root, root, &mut out);
    out
}

/// Names of what differs between two snapshots.
fn differences(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) => format!(
                "{k}: mode/uid/gid {:o}/{}/{} -> {:o}/{}/{}",
                x.0, x.1, x.2, y.0, y.1, y.2
            ),
            (Some(_), None) => format!("{k}: gone"),
            _ => format!("{k}: new"),
        })
        .collect()
}

/// (uid, gid) of a user of the root's `/etc/passwd`.
fn user_ids(root: &Path, name: &str) -> (u32, u32) {
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    let f: Vec<&str> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f[0] == name)
        .unwrap_or_else(|| panic!("no {name} in {passwd}"));
    (f[2].parse().unwrap(), f[3].parse().unwrap())
}

/// (gid, members) of a group of the root's `/etc/group`.
fn group(root: &Path, name: &str) -> Option<(u32, Vec<String>)> {
    let groups = fs::read_to_string(root.join("etc/group")).unwrap();
    groups
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f[0] == name)
        .map(|f| {
            (
                f[2].parse().unwrap(),
                f[3].split(',')
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect(),
            )
        })
}

fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    let meta = fs::symlink_metadata(path).unwrap();
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

/// Runs `program args` under `uid:gid` with exactly `groups`, as the kernel would for that
/// account; returns whether it succeeded and its error output.
fn as_user(uid: u32, gid: u32, groups: &[u32], program: &str, path: &Path) -> (bool, String) {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    let out = cmd
        .arg("--")
        .arg(program)
        .arg(path)
        .env_clear()
        .env("PATH", PATH)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_denied(uid: u32, gid: u32, groups: &[u32], program: &str, path: &Path) {
    let (ok, err) = as_user(uid, gid, groups, program, path);
    assert!(!ok, "uid {uid} could {program} {}", path.display());
    assert!(
        err.contains("Permission denied"),
        "{program} {}: {err}",
        path.display()
    );
}

/// Checks what an install made, and that the owner cannot read the daemon's data.
fn check_installed(root: &Path, data_files: &[&str]) {
    let (uid, gid) = user_ids(root, "carapace");
    let (clients, members) = group(root, "carapace-clients").unwrap();
    assert_eq!(
        group(root, "carapace").unwrap().0,
        gid,
        "its own primary group"
    );
    assert!(members.contains(&"alice".to_string()), "{members:?}");
    assert!(!members.contains(&"mallory".to_string()), "{members:?}");
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains(&format!(
            "carapace:x:{uid}:{gid}:Carapace gateway:/var/lib/carapace:/usr/sbin/nologin\n"
        )),
        "{passwd}"
    );

    let data = root.join("var/lib/carapace");
    assert_eq!(owner_and_mode(&data), (uid, gid, 0o700));
    assert_eq!(
        owner_and_mode(&root.join("run/carapace")),
        (uid, clients, 0o750)
    );
    let bin = root.join("usr/local/bin/cara");
    assert_eq!(owner_and_mode(&bin), (0, 0, 0o755));
    assert_eq!(fs::read(&bin).unwrap(), fs::read(CARA).unwrap());
    let init = Path::new(CARA).with_file_name("cara-sandbox-init");
    if init.exists() {
        let installed = root.join("usr/local/bin/cara-sandbox-init");
        assert_eq!(owner_and_mode(&installed), (0, 0, 0o755));
        assert_eq!(fs::read(installed).unwrap(), fs::read(init).unwrap());
    }
    let unit_path = root.join("etc/systemd/system/carapace.service");
    assert_eq!(owner_and_mode(&unit_path), (0, 0, 0o644));
    let unit = fs::read_to_string(unit_path).unwrap();
    for line in [
        "User=carapace",
        "Group=carapace",
        "Environment=CARAPACE_DATA_DIR=/var/lib/carapace CARAPACE_SOCKET_DIR=/run/carapace",
        "ExecStart=/usr/local/bin/cara serve",
        "UMask=0077",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/carapace /run/carapace",
        "ProtectHome=read-only",
        "Restart=on-failure",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line} missing from\n{unit}"
        );
    }
    // The sandbox needs user namespaces.
    assert!(
        !unit
            .lines()
            .any(|l| l.starts_with("RestrictNamespaces") || l.starts_with("PrivateUsers")),
        "{unit}"
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/tmpfiles.d/carapace.conf"))
            .unwrap()
            .lines()
            .last(),
        Some("d /run/carapace 0750 carapace carapace-clients -")
    );
    let manifest = root.join("var/lib/carapace.install-manifest.json");
    assert_eq!(owner_and_mode(&manifest), (0, 0, 0o600));

    // The kernel's own answer, under the temporary root's ids.
    let (alice, alice_gid) = user_ids(root, "alice");
    let (mallory, mallory_gid) = user_ids(root, "mallory");
    assert!(alice != uid && mallory != uid && alice != mallory);
    for file in data_files {
        let path = data.join(file);
        assert_denied(alice, alice_gid, &[clients], "cat", &path);
        assert_denied(mallory, mallory_gid, &[], "cat", &path);
        // The daemon's user can, so the refusals above are about the account.
        let (ok, err) = as_user(uid, gid, &[], "cat", &path);
        assert!(ok, "the daemon's user cannot read {file}: {err}");
    }
    assert_denied(alice, alice_gid, &[clients], "ls", &data);
    let (ok, err) = as_user(
        alice,
        alice_gid,
        &[clients],
        "ls",
        &root.join("run/carapace"),
    );
    assert!(
        ok,
        "a member of carapace-clients cannot list the socket directory: {err}"
    );
    assert_denied(mallory, mallory_gid, &[], "ls", &root.join("run/carapace"));
}

/// Files like the daemon's own, owned by its user, 0600.
fn put_data(root: &Path, files: &[&str]) {
    let (uid, gid) = user_ids(root, "carapace");
    for file in files {
        let path = root.join("var/lib/carapace").join(file);
        fs::write(&path, format!("{file}: the daemon's secret\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
    }
}

#[test]
fn install_makes_a_closed_service_account_and_uninstall_leaves_nothing() {
    if !enabled() {
        return;
    }
    let tmp = new_root();
    let root = tmp.path();
    let before = snapshot(root);
    let accounts = |root: &Path| {
        ["passwd", "group", "shadow", "gshadow"]
            .map(|f| fs::read(root.join("etc").join(f)).unwrap())
    };
    let accounts_before = accounts(root);

    // A dry run says what it would do and does nothing.
    let out = cara_system(root, &["install", "--owner", "alice", "--dry-run"]);
    assert!(out.contains("would   create system user carapace"), "{out}");
    assert_eq!(differences(&before, &snapshot(root)), Vec::<String>::new());

    let out = cara_system(root, &["install", "--owner", "alice"]);
    assert!(out.contains("installed"), "{out}");
    let data_files = ["vault.json", "carapace.db", "audit.key"];
    put_data(root, &data_files);
    check_installed(root, &data_files);

    // A second install changes nothing, and says so.
    let installed = snapshot(root);
    let out = cara_system(root, &["install", "--owner", "alice"]);
    assert!(out.contains("nothing changed"), "{out}");
    assert!(!out.contains("  do "), "{out}");
    assert_eq!(
        differences(&installed, &snapshot(root)),
        Vec::<String>::new()
    );

    // Uninstall without --purge keeps the data, given to root and closed.
    let out = cara_system(root, &["uninstall"]);
    assert!(out.contains("kept at"), "{out}");
    let data = root.join("var/lib/carapace");
    assert_eq!(owner_and_mode(&data), (0, 0, 0o700));
    assert!(data.join("vault.json").exists());
    assert!(group(root, "carapace-clients").is_none());
    assert!(
        !fs::read_to_string(root.join("etc/passwd"))
            .unwrap()
            .contains("carapace")
    );
    assert!(!root.join("usr").exists() && !root.join("run").exists());

    // Installing again takes the kept data back for the new account.
    let out = cara_system(root, &["install", "--owner", "alice"]);
    assert!(
        out.contains("take back the kept /var/lib/carapace"),
        "{out}"
    );
    let (uid, _) = user_ids(root, "carapace");
    assert_eq!(owner_and_mode(&data.join("vault.json")).0, uid);
    check_installed(root, &data_files);

    // A dry run of uninstall changes nothing; uninstall --purge puts everything back.
    let installed = snapshot(root);
    cara_system(root, &["uninstall", "--purge", "--dry-run"]);
    assert_eq!(
        differences(&installed, &snapshot(root)),
        Vec::<String>::new()
    );
    let out = cara_system(root, &["uninstall", "--purge"]);
    assert!(out.contains("remove /var/lib/carapace"), "{out}");
    assert_eq!(differences(&before, &snapshot(root)), Vec::<String>::new());
    assert!(
        accounts(root) == accounts_before,
        "the account files differ"
    );

    // With nothing installed, uninstall says so.
    let out = cara_system(root, &["uninstall"]);
    assert!(out.contains("nothing to uninstall"), "{out}");
}

#[test]
fn install_refuses_a_file_it_did_not_write_and_a_non_root_caller() {
    if !enabled() {
        return;
    }
    let tmp = new_root();
    let root = tmp.path();
    fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    fs::write(root.join("usr/local/bin/cara"), "someone else's cara").unwrap();
    let out = Command::new(CARA)
        .args(["system", "install", "--owner", "alice", "--root"])
        .arg(root)
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", root)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("was not written by cara system install"),
        "{err}"
    );
    assert_eq!(
        fs::read(root.join("usr/local/bin/cara")).unwrap(),
        b"someone else's cara"
    );

    // Not root: refused before anything is looked at. The binary is linked (or copied)
    // where alice can reach it; the build directory may be in root's home.
    let reachable = root.join("cara-for-alice");
    if fs::hard_link(CARA, &reachable).is_err() {
        fs::copy(CARA, &reachable).unwrap();
    }
    let (alice, alice_gid) = user_ids(root, "alice");
    let out = Command::new("setpriv")
        .arg(format!("--reuid={alice}"))
        .arg(format!("--regid={alice_gid}"))
        .arg("--clear-groups")
        .arg(&reachable)
        .args(["system", "install", "--owner", "alice", "--root"])
        .arg(root)
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", root)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("run it as root"), "{err}");
}

#[test]
fn install_refuses_a_root_whose_paths_lead_out_through_symlinks() {
    if !enabled() {
        return;
    }
    let root = new_root();
    let outside = tempfile::Builder::new()
        .prefix("outside-")
        .tempdir()
        .unwrap();
    // Whoever prepared this root left absolute symlinks in it (an image tree, a chroot).
    std::os::unix::fs::symlink(outside.path(), root.path().join("usr")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("etc/systemd")).unwrap();
    let before = snapshot(root.path());
    let out = Command::new(CARA)
        .args(["system", "install", "--owner", "alice", "--root"])
        .arg(root.path())
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", root.path().join("nonexistent-home"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a symbolic link"), "{err}");
    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing written outside"
    );
    assert!(
        differences(&before, &snapshot(root.path())).is_empty(),
        "nothing changed inside"
    );
}
