//! `cara system install|uninstall`: run the gateway as a system user of its own, so the
//! owner's everyday account (and anything running as it) cannot read the vault, the audit
//! log or the dead-letter queue, and reaches the daemon only through the socket directory.
//!
//! What install makes, all under `--root` (default `/`):
//!
//! - the group `carapace-clients` (the accounts allowed to the socket directory) and the
//!   system user `carapace` with its own primary group, home `/var/lib/carapace`, no login
//!   shell, made with the shadow tools (`groupadd`, `useradd`, `usermod`; with `--prefix
//!   ROOT` for another root); the owner is added to `carapace-clients`;
//! - `/var/lib/carapace` (the data directory) `carapace:carapace` 0700, `/run/carapace`
//!   (the sockets) `carapace:carapace-clients` 0750 and a tmpfiles.d line that makes it
//!   again at boot;
//! - `/usr/local/bin/cara` (and `cara-sandbox-init` when it sits beside the source) owned
//!   by root, 0755, and the systemd unit `carapace.service`.
//!
//! Install records what it created in a manifest, and uninstall removes only that.
//! The manifest is `/var/lib/carapace.install-manifest.json`, root's, 0600: not inside the
//! data directory, which the daemon's user owns and could rewrite, and uninstall runs as
//! root. Uninstall still refuses any path in it that install would not have made.
//! Every step is printed; `--dry-run` prints them and changes nothing; a second install
//! changes nothing and says so.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _, lchown};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

/// Where things go on the target system (paths inside `--root`).
const DATA_DIR: &str = "/var/lib/carapace";
const SOCKET_DIR: &str = "/run/carapace";
const BIN: &str = "/usr/local/bin/cara";
const INIT_BIN: &str = "/usr/local/bin/cara-sandbox-init";
const INIT_NAME: &str = "cara-sandbox-init";
const UNIT: &str = "/etc/systemd/system/carapace.service";
const UNIT_NAME: &str = "carapace.service";
const TMPFILES: &str = "/etc/tmpfiles.d/carapace.conf";
const MANIFEST: &str = "/var/lib/carapace.install-manifest.json";
const MANIFEST_FORMAT: &str = "carapace-install-manifest";
const SHELL: &str = "/usr/sbin/nologin";

/// The flags of `cara system install`.
pub struct InstallArgs {
    pub root: PathBuf,
    pub user: String,
    pub group: String,
    pub owner: Option<String>,
    pub bin: Option<PathBuf>,
    pub start: bool,
    pub dry_run: bool,
}

/// The flags of `cara system uninstall`.
pub struct UninstallArgs {
    pub root: PathBuf,
    pub purge: bool,
    pub dry_run: bool,
}

/// What install created, so uninstall removes that and nothing else.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: String,
    version: u32,
    /// The daemon's user (and the name of its primary group).
    user: String,
    /// The group allowed to the socket directory.
    group: String,
    created_user: bool,
    created_user_group: bool,
    created_group: bool,
    /// The owner this install added to `group`, if it did.
    owner_added: Option<String>,
    /// Directories created, in the order they were made (paths on the target system).
    dirs: Vec<String>,
    /// Files written.
    files: Vec<String>,
}

impl Manifest {
    fn new(user: &str, group: &str) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT.into(),
            version: 1,
            user: user.into(),
            group: group.into(),
            created_user: false,
            created_user_group: false,
            created_group: false,
            owner_added: None,
            dirs: Vec::new(),
            files: Vec::new(),
        }
    }

    fn add_dir(&mut self, path: &str) {
        if !self.dirs.iter().any(|d| d == path) {
            self.dirs.push(path.into());
        }
    }

    fn add_file(&mut self, path: &str) {
        if !self.files.iter().any(|f| f == path) {
            self.files.push(path.into());
        }
    }

    /// Refuses a manifest naming anything install would not have made: uninstall acts on
    /// it as root.
    fn check(&self) -> anyhow::Result<()> {
        if self.format != MANIFEST_FORMAT || self.version != 1 {
            bail!("not a version 1 install manifest");
        }
        check_name("user", &self.user)?;
        check_name("group", &self.group)?;
        if let Some(owner) = &self.owner_added {
            check_name("owner", owner)?;
        }
        let files = [BIN, INIT_BIN, UNIT, TMPFILES];
        for f in &self.files {
            if !files.contains(&f.as_str()) {
                bail!("the manifest lists {f:?}, which install never writes");
            }
        }
        let leaves = [
            DATA_DIR, SOCKET_DIR, BIN, INIT_BIN, UNIT, TMPFILES, MANIFEST,
        ];
        for d in &self.dirs {
            let known = leaves.iter().any(|leaf| {
                leaf == d
                    || Path::new(leaf)
                        .ancestors()
                        .skip(1)
                        .any(|a| a != Path::new("/") && a == Path::new(d))
            });
            if !known {
                bail!("the manifest lists the directory {d:?}, which install never makes");
            }
        }
        Ok(())
    }
}

/// The system install goes into: `/` or a directory standing for it.
struct Target {
    root: PathBuf,
}

impl Target {
    fn new(root: &Path) -> anyhow::Result<Target> {
        if !root.is_absolute() {
            bail!("--root must be an absolute path, not {}", root.display());
        }
        let root = fs::canonicalize(root)
            .with_context(|| format!("--root {} does not exist", root.display()))?;
        if !root.is_dir() {
            bail!("--root {} is not a directory", root.display());
        }
        Ok(Target { root })
    }

    /// `abs` (a path on the target system) as a path here.
    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// Refuses a target image where a path install or uninstall touches goes through a
    /// symlink: as root, following one could write or delete outside `--root`. The
    /// running system's own layout (`--root /`) is root's and trusted.
    fn refuse_symlinks(&self) -> anyhow::Result<()> {
        if self.is_host() {
            return Ok(());
        }
        let places = [
            DATA_DIR,
            SOCKET_DIR,
            BIN,
            INIT_BIN,
            UNIT,
            TMPFILES,
            MANIFEST,
            "/etc/passwd",
            "/etc/group",
            "/etc/shadow",
            "/etc/gshadow",
        ];
        for abs in places {
            let mut here = self.root.clone();
            for part in Path::new(abs).components().skip(1) {
                here.push(part);
                match fs::symlink_metadata(&here) {
                    Ok(m) if m.file_type().is_symlink() => bail!(
                        "{} is a symbolic link; refusing to follow it out of --root {}",
                        here.display(),
                        self.root.display()
                    ),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        Ok(())
    }

    fn is_host(&self) -> bool {
        self.root == Path::new("/")
    }

    /// Whether systemd manages this system (its own test: `/run/systemd/system` exists).
    fn systemd_running(&self) -> bool {
        self.is_host() && Path::new("/run/systemd/system").is_dir()
    }

    /// Runs a shadow tool on the target's account files: `--prefix ROOT` unless the
    /// target is this system.
    fn account_tool(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut all: Vec<OsString> = args.iter().map(OsString::from).collect();
        if !self.is_host() {
            let name = all.pop().expect("the account name comes last");
            all.extend([
                OsString::from("--prefix"),
                self.root.clone().into_os_string(),
            ]);
            all.push(name);
        }
        run(program, &all)
    }
}

/// Runs `program`, showing its command line; fails with its error output.
fn run(program: &str, args: &[OsString]) -> anyhow::Result<()> {
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            let a = a.to_string_lossy();
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.into_owned()
            }
        })
        .collect();
    println!("    $ {program} {}", shown.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// An account of the target's `/etc/passwd`.
struct User {
    uid: u32,
    gid: u32,
}

/// A group of the target's `/etc/group`.
struct Group {
    gid: u32,
    members: Vec<String>,
}

fn account_lines(t: &Target, file: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let path = t.path(file);
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').map(String::from).collect())
        .collect())
}

fn find_user(t: &Target, name: &str) -> anyhow::Result<Option<User>> {
    for f in account_lines(t, "/etc/passwd")? {
        if f.len() >= 4 && f[0] == name {
            let parse = |s: &str| {
                s.parse::<u32>()
                    .with_context(|| format!("bad id {s:?} for {name} in /etc/passwd"))
            };
            return Ok(Some(User {
                uid: parse(&f[2])?,
                gid: parse(&f[3])?,
            }));
        }
    }
    Ok(None)
}

fn find_group(t: &Target, name: &str) -> anyhow::Result<Option<Group>> {
    for f in account_lines(t, "/etc/group")? {
        if f.len() >= 4 && f[0] == name {
            return Ok(Some(Group {
                gid: f[2]
                    .parse()
                    .with_context(|| format!("bad gid {:?} for {name} in /etc/group", f[2]))?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect(),
            }));
        }
    }
    Ok(None)
}

/// A user or group name the shadow tools accept, and nothing a command line could take
/// for an option.
fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        bail!(
            "{what} name {name:?} must be lowercase letters, digits, `_` and `-`, starting with a letter or `_`"
        );
    }
    Ok(())
}

/// The effective uid, from `/proc/self/status` (no libc call needed).
fn effective_uid() -> anyhow::Result<u32> {
    let status =
        fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .context("no Uid line in /proc/self/status")
}

fn require_root(what: &str) -> anyhow::Result<()> {
    if !cfg!(target_os = "linux") {
        bail!(
            "cara system {what} sets up a systemd service on Linux; on macOS see \"Running as a separate user\" in the README"
        );
    }
    if effective_uid()? != 0 {
        bail!(
            "cara system {what} creates a system user and writes to system directories: run it as root (sudo cara system {what} ...), or add --dry-run to see what it would do"
        );
    }
    Ok(())
}

/// Prints the steps and remembers whether any changed something.
struct Steps {
    dry_run: bool,
    changed: bool,
}

impl Steps {
    /// A step that is already done.
    fn ok(&self, what: impl AsRef<str>) {
        println!("  ok      {}", what.as_ref());
    }

    /// A step that changes the system: printed, then done unless this is a dry run.
    fn change(
        &mut self,
        what: impl AsRef<str>,
        act: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.changed = true;
        if self.dry_run {
            println!("  would   {}", what.as_ref());
            return Ok(());
        }
        println!("  do      {}", what.as_ref());
        act()
    }

    fn note(&self, what: impl AsRef<str>) {
        println!("  note    {}", what.as_ref());
    }
}

fn mode_of(meta: &fs::Metadata) -> u32 {
    meta.mode() & 0o7777
}

/// Creates the missing parents of `abs` (0755, root's) and records them.
fn make_parents(t: &Target, s: &mut Steps, m: &mut Manifest, abs: &str) -> anyhow::Result<()> {
    // In a dry run nothing is made, so what was planned already counts as made.
    let mut missing: Vec<&Path> = Path::new(abs)
        .ancestors()
        .skip(1)
        .filter(|a| *a != Path::new("/"))
        .filter(|a| !m.dirs.iter().any(|d| Path::new(d) == *a))
        .filter(|a| fs::symlink_metadata(t.path(&a.to_string_lossy())).is_err())
        .collect();
    missing.reverse();
    for dir in missing {
        let dir = dir.to_string_lossy().into_owned();
        let here = t.path(&dir);
        s.change(format!("create {dir} (root, 0755)"), || {
            fs::create_dir(&here).with_context(|| format!("cannot create {}", here.display()))?;
            chown_mode(&here, 0, 0, 0o755)
        })?;
        m.add_dir(&dir);
    }
    Ok(())
}

fn chown_mode(path: &Path, uid: u32, gid: u32, mode: u32) -> anyhow::Result<()> {
    lchown(path, Some(uid), Some(gid))
        .with_context(|| format!("cannot chown {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

/// Owner, group and mode a directory must have; `None` ids in a dry run whose accounts
/// do not exist yet.
struct DirSpec<'a> {
    abs: &'a str,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: u32,
    shown_owner: String,
}

fn ensure_dir(
    t: &Target,
    s: &mut Steps,
    m: &mut Manifest,
    spec: &DirSpec<'_>,
    adopt_from_root: bool,
) -> anyhow::Result<()> {
    make_parents(t, s, m, spec.abs)?;
    let here = t.path(spec.abs);
    let what = format!("{} ({}, {:04o})", spec.abs, spec.shown_owner, spec.mode);
    let (uid, gid) = (spec.uid.unwrap_or(u32::MAX), spec.gid.unwrap_or(u32::MAX));
    match fs::symlink_metadata(&here) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            s.change(format!("create {what}"), || {
                fs::create_dir(&here)
                    .with_context(|| format!("cannot create {}", here.display()))?;
                chown_mode(&here, uid, gid, spec.mode)
            })?;
            m.add_dir(spec.abs);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", here.display())),
        Ok(meta) if !meta.is_dir() => bail!("{} exists and is not a directory", here.display()),
        Ok(meta)
            if spec.uid.is_some()
                && meta.uid() == uid
                && meta.gid() == gid
                && mode_of(&meta) == spec.mode =>
        {
            s.ok(what);
        }
        Ok(meta) if adopt_from_root && meta.uid() == 0 => {
            // A data directory an earlier uninstall kept (it gave it to root).
            s.change(
                format!("take back the kept {what}, everything in it too"),
                || {
                    chown_tree(&here, uid, gid)?;
                    chown_mode(&here, uid, gid, spec.mode)
                },
            )?;
        }
        Ok(meta) if spec.uid.is_none() || meta.uid() == uid || meta.uid() == 0 => {
            s.change(format!("set {what}"), || {
                chown_mode(&here, uid, gid, spec.mode)
            })?;
        }
        Ok(meta) => bail!(
            "{} exists and belongs to uid {}; move it away first",
            here.display(),
            meta.uid()
        ),
    }
    Ok(())
}

/// Gives everything below `dir` to `uid:gid`, following no symbolic link. Called on a
/// directory only root can enter, so nothing in it changes meanwhile.
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        lchown(&path, Some(uid), Some(gid))
            .with_context(|| format!("cannot chown {}", path.display()))?;
        if fs::symlink_metadata(&path)?.is_dir() {
            chown_tree(&path, uid, gid)?;
        }
    }
    Ok(())
}

/// Writes `content` to `abs` (root's, `mode`), by a temporary file renamed into place.
/// A file there that install did not write is left alone, unless it already holds the
/// same bytes (then it is not ours to remove either).
fn ensure_file(
    t: &Target,
    s: &mut Steps,
    m: &mut Manifest,
    abs: &str,
    content: &[u8],
    mode: u32,
) -> anyhow::Result<()> {
    make_parents(t, s, m, abs)?;
    let here = t.path(abs);
    let ours = m.files.iter().any(|f| f == abs);
    let what = format!("{abs} (root, {mode:04o})");
    match fs::symlink_metadata(&here) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            s.change(format!("write {what}"), || write_file(&here, content, mode))?;
            m.add_file(abs);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", here.display())),
        Ok(meta) => {
            let same = meta.is_file()
                && meta.len() == content.len() as u64
                && fs::read(&here).with_context(|| format!("cannot read {}", here.display()))?
                    == content;
            let right = meta.uid() == 0 && meta.gid() == 0 && mode_of(&meta) == mode;
            match (same, right, ours) {
                (true, true, _) => s.ok(what),
                (true, false, true) | (false, _, true) => {
                    s.change(format!("update {what}"), || {
                        write_file(&here, content, mode)
                    })?;
                }
                (true, false, false) => {
                    s.change(format!("set {what}"), || chown_mode(&here, 0, 0, mode))?;
                }
                (false, _, false) => bail!(
                    "{} exists and was not written by cara system install; move it away first",
                    here.display()
                ),
            }
        }
    }
    Ok(())
}

fn write_file(path: &Path, content: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().context("a file has a directory")?;
    let name = path.file_name().context("a file has a name")?;
    let mut temp_name = OsString::from(".");
    temp_name.push(name);
    temp_name.push(".cara-install");
    let temp = dir.join(temp_name);
    let _ = fs::remove_file(&temp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        f.write_all(content)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", temp.display()))?;
        drop(f);
        chown_mode(&temp, 0, 0, mode)?;
        // A rename, not a write over the file: a running `cara` keeps its old binary.
        fs::rename(&temp, path).with_context(|| format!("cannot replace {}", path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

fn load_manifest(t: &Target) -> anyhow::Result<Option<Manifest>> {
    let path = t.path(MANIFEST);
    let meta = match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        other => other.with_context(|| format!("cannot stat {}", path.display()))?,
    };
    if !meta.is_file() || meta.uid() != 0 || mode_of(&meta) & 0o022 != 0 {
        bail!(
            "{} is not a root-owned file only root can write; it is not trusted",
            path.display()
        );
    }
    let text = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not an install manifest", path.display()))?;
    manifest
        .check()
        .with_context(|| format!("{} is refused", path.display()))?;
    Ok(Some(manifest))
}

/// The systemd unit. The sandbox the daemon starts needs unprivileged user namespaces,
/// mounts inside them and a fresh `/proc`, so the unit leaves out `RestrictNamespaces=`,
/// `PrivateUsers=`, and the options that cover parts of `/proc` or `/sys` (a new proc
/// mount is refused while parts of the old one are covered): `ProtectKernelTunables=`,
/// `ProtectKernelLogs=`, `ProtectControlGroups=`, `ProtectProc=`. `MemoryDenyWriteExecute=`
/// is left out because its seccomp filter would reach the agents (Node.js needs W+X).
fn unit_text(user: &str) -> String {
    format!(
        "# Written by `cara system install`; `cara system uninstall` removes it.
[Unit]
Description=Carapace agent gateway
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={user}
Group={user}
Environment=CARAPACE_DATA_DIR={DATA_DIR} CARAPACE_SOCKET_DIR={SOCKET_DIR}
ExecStart={BIN} serve
Restart=on-failure
RestartSec=2
UMask=0077
# Hardening that leaves the sandbox working: user namespaces stay allowed (no
# RestrictNamespaces=, no PrivateUsers=) and /proc and /sys stay whole.
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={DATA_DIR} {SOCKET_DIR}
ProtectHome=read-only
PrivateTmp=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
LockPersonality=yes

[Install]
WantedBy=multi-user.target
"
    )
}

fn tmpfiles_text(user: &str, group: &str) -> String {
    format!(
        "# Written by `cara system install`: the gateway's socket directory, made at boot.\n\
         d {SOCKET_DIR} 0750 {user} {group} -\n"
    )
}

pub fn install(args: InstallArgs) -> anyhow::Result<ExitCode> {
    check_name("user", &args.user)?;
    check_name("group", &args.group)?;
    if !args.dry_run || !cfg!(target_os = "linux") {
        require_root("install")?;
    }
    let t = Target::new(&args.root)?;
    t.refuse_symlinks()?;
    let owner = args
        .owner
        .or_else(|| std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty()))
        .context(
            "who is the owner? pass --owner USER, the account that will use cara (under sudo it defaults to $SUDO_USER)",
        )?;
    check_name("owner", &owner)?;
    let owner_account = find_user(&t, &owner)?.with_context(|| {
        format!(
            "the owner {owner} is not a user of {}",
            t.path("/etc/passwd").display()
        )
    })?;
    let source = match args.bin {
        Some(b) => b,
        None => std::env::current_exe().context("cannot find the cara executable")?,
    };
    let source =
        fs::canonicalize(&source).with_context(|| format!("cannot find {}", source.display()))?;
    let binary = fs::read(&source).with_context(|| format!("cannot read {}", source.display()))?;
    let init_source = source.with_file_name(INIT_NAME);
    let init = match fs::read(&init_source) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", init_source.display()));
        }
    };

    let earlier = load_manifest(&t)?;
    let mut m = earlier
        .clone()
        .unwrap_or_else(|| Manifest::new(&args.user, &args.group));
    if m.user != args.user || m.group != args.group {
        bail!(
            "this system was installed with --user {} --group {}; run `cara system uninstall` first to change them",
            m.user,
            m.group
        );
    }
    let mut s = Steps {
        dry_run: args.dry_run,
        changed: false,
    };
    println!(
        "{} carapace into {} (user {}, group {}, owner {owner})",
        if args.dry_run {
            "dry run: installing"
        } else {
            "installing"
        },
        t.root.display(),
        args.user,
        args.group
    );

    // Accounts.
    let clients = match find_group(&t, &args.group)? {
        Some(g) => {
            s.ok(format!("group {} (gid {})", args.group, g.gid));
            Some(g)
        }
        None => {
            s.change(format!("create system group {}", args.group), || {
                t.account_tool("groupadd", &["--system", &args.group])
            })?;
            m.created_group = true;
            find_group(&t, &args.group)?
        }
    };
    let user = match find_user(&t, &args.user)? {
        Some(u) => {
            s.ok(format!("user {} (uid {}, gid {})", args.user, u.uid, u.gid));
            Some(u)
        }
        None => {
            if find_group(&t, &args.user)?.is_some() {
                bail!(
                    "a group {0} exists but no user {0}; remove the group or choose another --user",
                    args.user
                );
            }
            let comment = "Carapace gateway";
            s.change(
                format!(
                    "create system user {0} (group {0}, home {DATA_DIR}, shell {SHELL})",
                    args.user
                ),
                || {
                    t.account_tool(
                        "useradd",
                        &[
                            "--system",
                            "--user-group",
                            "--no-log-init",
                            "--no-create-home",
                            "--home-dir",
                            DATA_DIR,
                            "--shell",
                            SHELL,
                            "--comment",
                            comment,
                            &args.user,
                        ],
                    )
                },
            )?;
            m.created_user = true;
            m.created_user_group = true;
            find_user(&t, &args.user)?
        }
    };
    if user.as_ref().is_some_and(|u| u.uid == 0) {
        bail!("the daemon's user must not be root; choose another --user");
    }
    let member = clients
        .as_ref()
        .is_some_and(|g| g.members.contains(&owner) || owner_account.gid == g.gid);
    if member {
        s.ok(format!("{owner} is in {}", args.group));
    } else {
        s.change(format!("add {owner} to {}", args.group), || {
            t.account_tool("usermod", &["--append", "--groups", &args.group, &owner])
        })?;
        if !m.created_group {
            m.owner_added = Some(owner.clone());
        }
    }

    // Directories.
    let data_spec = DirSpec {
        abs: DATA_DIR,
        uid: user.as_ref().map(|u| u.uid),
        gid: user.as_ref().map(|u| u.gid),
        mode: 0o700,
        shown_owner: format!("{0}:{0}", args.user),
    };
    ensure_dir(&t, &mut s, &mut m, &data_spec, true)?;
    let socket_spec = DirSpec {
        abs: SOCKET_DIR,
        uid: user.as_ref().map(|u| u.uid),
        gid: clients.as_ref().map(|g| g.gid),
        mode: 0o750,
        shown_owner: format!("{}:{}", args.user, args.group),
    };
    ensure_dir(&t, &mut s, &mut m, &socket_spec, false)?;

    // Files.
    let tmpfiles = tmpfiles_text(&args.user, &args.group);
    ensure_file(&t, &mut s, &mut m, TMPFILES, tmpfiles.as_bytes(), 0o644)?;
    if source == t.path(BIN) {
        s.ok(format!("{BIN} is the running binary"));
    } else {
        ensure_file(&t, &mut s, &mut m, BIN, &binary, 0o755)?;
    }
    match &init {
        Some(bytes) if init_source != t.path(INIT_BIN) => {
            ensure_file(&t, &mut s, &mut m, INIT_BIN, bytes, 0o755)?;
        }
        Some(_) => s.ok(format!("{INIT_BIN} is the one beside the running binary")),
        None => s.note(format!(
            "no {INIT_NAME} beside {}: cara will be its own sandbox init (slower to spawn)",
            source.display()
        )),
    }
    let unit_before = fs::read(t.path(UNIT)).ok();
    let unit = unit_text(&args.user);
    ensure_file(&t, &mut s, &mut m, UNIT, unit.as_bytes(), 0o644)?;

    // The manifest, before anything is started: uninstall must know what is ours.
    if earlier.as_ref() != Some(&m) {
        let json = serde_json::to_vec_pretty(&m)?;
        let path = t.path(MANIFEST);
        s.change(format!("record what was created in {MANIFEST}"), || {
            write_file(&path, &json, 0o600)
        })?;
    }

    if t.systemd_running() {
        if unit_before.as_deref() != Some(unit.as_bytes()) {
            s.change("reload systemd", || {
                run("systemctl", &[OsString::from("daemon-reload")])
            })?;
        }
        if args.start {
            s.change(format!("enable and start {UNIT_NAME}"), || {
                run(
                    "systemctl",
                    &["enable", "--now", UNIT_NAME].map(OsString::from),
                )
            })?;
        }
    }

    if !s.changed {
        println!("already installed in {}; nothing changed", t.root.display());
    } else if args.dry_run {
        println!("dry run: nothing was changed");
    } else {
        println!("installed");
    }
    if !args.start || !t.systemd_running() {
        let on = if t.is_host() {
            ""
        } else {
            " (on the system this root is for)"
        };
        println!("next{on}: systemctl enable --now {UNIT_NAME}");
    }
    if !member && !args.dry_run {
        println!(
            "{owner} joins {} at their next login (or run `newgrp {}`)",
            args.group, args.group
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn uninstall(args: UninstallArgs) -> anyhow::Result<ExitCode> {
    if !args.dry_run || !cfg!(target_os = "linux") {
        require_root("uninstall")?;
    }
    let t = Target::new(&args.root)?;
    t.refuse_symlinks()?;
    let Some(m) = load_manifest(&t)? else {
        println!(
            "nothing to uninstall: no {} (uninstall removes only what `cara system install` created)",
            t.path(MANIFEST).display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let mut s = Steps {
        dry_run: args.dry_run,
        changed: false,
    };
    println!(
        "{} carapace from {}",
        if args.dry_run {
            "dry run: uninstalling"
        } else {
            "uninstalling"
        },
        t.root.display()
    );
    if t.systemd_running() && m.files.iter().any(|f| f == UNIT) {
        s.change(format!("stop and disable {UNIT_NAME}"), || {
            // A unit that never started is not an error here.
            if let Err(e) = run(
                "systemctl",
                &["disable", "--now", UNIT_NAME].map(OsString::from),
            ) {
                println!("    ({e:#})");
            }
            Ok(())
        })?;
    }
    for f in m.files.iter().rev() {
        let here = t.path(f);
        if fs::symlink_metadata(&here).is_ok() {
            s.change(format!("remove {f}"), || {
                fs::remove_file(&here).with_context(|| format!("cannot remove {}", here.display()))
            })?;
        }
    }
    if t.systemd_running() && m.files.iter().any(|f| f == UNIT) {
        s.change("reload systemd", || {
            run("systemctl", &[OsString::from("daemon-reload")])
        })?;
    }
    if m.dirs.iter().any(|d| d == SOCKET_DIR) && fs::symlink_metadata(t.path(SOCKET_DIR)).is_ok() {
        let here = t.path(SOCKET_DIR);
        s.change(format!("remove {SOCKET_DIR}"), || {
            fs::remove_dir_all(&here).with_context(|| format!("cannot remove {}", here.display()))
        })?;
    }

    // The data directory before the accounts, so it never belongs to a uid without a name.
    let data = t.path(DATA_DIR);
    let kept_data = fs::symlink_metadata(&data).is_ok() && !args.purge;
    if fs::symlink_metadata(&data).is_ok() {
        if args.purge {
            s.change(
                format!(
                    "remove {DATA_DIR} (--purge: the vault, audit log and dead letters go with it)"
                ),
                || {
                    fs::remove_dir_all(&data)
                        .with_context(|| format!("cannot remove {}", data.display()))
                },
            )?;
        } else {
            s.change(
                format!("keep {DATA_DIR} (vault, audit log, dead letters), given to root, 0700"),
                || chown_mode(&data, 0, 0, 0o700),
            )?;
        }
    }

    // Accounts.
    if let Some(owner) = &m.owner_added {
        let still = find_group(&t, &m.group)?.is_some_and(|g| g.members.contains(owner));
        if still && find_user(&t, owner)?.is_some() {
            s.change(format!("remove {owner} from {}", m.group), || {
                t.account_tool("usermod", &["--remove", "--groups", &m.group, owner])
            })?;
        }
    }
    if m.created_user && find_user(&t, &m.user)?.is_some() {
        s.change(format!("remove user {}", m.user), || {
            t.account_tool("userdel", &[&m.user])
        })?;
    }
    // userdel removes the user's own group when USERGROUPS_ENAB says so (in a dry run it
    // has not run yet, and would); if not, here.
    let userdel_takes_group = args.dry_run && m.created_user;
    if m.created_user_group && !userdel_takes_group && find_group(&t, &m.user)?.is_some() {
        s.change(format!("remove group {}", m.user), || {
            t.account_tool("groupdel", &[&m.user])
        })?;
    }
    if m.created_group && find_group(&t, &m.group)?.is_some() {
        s.change(format!("remove group {}", m.group), || {
            t.account_tool("groupdel", &[&m.group])
        })?;
    }

    // The manifest lives in /var/lib, which install may have made: it goes first.
    let manifest = t.path(MANIFEST);
    s.change(format!("remove {MANIFEST}"), || {
        fs::remove_file(&manifest).with_context(|| format!("cannot remove {}", manifest.display()))
    })?;

    // Directories install made, deepest first, if nothing else lives in them now.
    let mut kept_dirs = BTreeSet::new();
    for d in m.dirs.iter().rev() {
        if d == SOCKET_DIR || d == DATA_DIR {
            continue;
        }
        let here = t.path(d);
        let empty = fs::read_dir(&here).map(|mut e| e.next().is_none());
        match empty {
            Ok(true) => s.change(format!("remove {d}"), || {
                fs::remove_dir(&here).with_context(|| format!("cannot remove {}", here.display()))
            })?,
            Ok(false) if !args.dry_run => {
                kept_dirs.insert(d.clone());
            }
            _ => {}
        }
    }
    for d in &kept_dirs {
        s.note(format!("kept {d}: other files live in it"));
    }
    if args.dry_run {
        println!("dry run: nothing was changed");
    } else {
        println!("uninstalled");
    }
    if kept_data {
        println!(
            "the data directory is kept at {}, root's and closed to everyone else; `cara system install` takes it back, `rm -r` deletes it",
            data.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let mut m = Manifest::new("carapace", "carapace-clients");
        m.dirs = vec!["/var/lib".into(), DATA_DIR.into(), "/usr/local/bin".into()];
        m.files = vec![BIN.into(), UNIT.into()];
        m
    }

    #[test]
    fn a_manifest_names_only_what_install_makes() {
        assert!(manifest().check().is_ok());
        let mut bad = manifest();
        bad.files.push("/etc/shadow".into());
        assert!(bad.check().is_err());
        let mut bad = manifest();
        bad.dirs.push("/".into());
        assert!(bad.check().is_err());
        let mut bad = manifest();
        bad.dirs.push("/home".into());
        assert!(bad.check().is_err());
        let mut bad = manifest();
        bad.user = "--badname".into();
        assert!(bad.check().is_err());
    }

    #[test]
    fn names_are_what_the_shadow_tools_take() {
        for ok in ["carapace", "carapace-clients", "_x", "a1"] {
            assert!(check_name("user", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-r", "Root", "a b", "a:b", "1a", &"a".repeat(33)] {
            assert!(check_name("user", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_unit_keeps_user_namespaces_allowed() {
        let unit = unit_text("carapace");
        for line in [
            "User=carapace",
            "Group=carapace",
            "ExecStart=/usr/local/bin/cara serve",
            "UMask=0077",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/carapace /run/carapace",
            "ProtectHome=read-only",
            "Restart=on-failure",
            "Environment=CARAPACE_DATA_DIR=/var/lib/carapace CARAPACE_SOCKET_DIR=/run/carapace",
        ] {
            assert!(unit.lines().any(|l| l == line), "{line}");
        }
        for absent in [
            "RestrictNamespaces",
            "PrivateUsers",
            "ProtectKernelTunables",
            "ProtectProc",
            "MemoryDenyWriteExecute",
        ] {
            assert!(
                !unit.lines().any(|l| l.starts_with(absent)),
                "{absent} would break the sandbox"
            );
        }
        assert_eq!(
            tmpfiles_text("carapace", "carapace-clients").lines().last(),
            Some("d /run/carapace 0750 carapace carapace-clients -")
        );
    }
}
