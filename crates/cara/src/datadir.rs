//! The data directory: `config.toml`, `server.token`, `audit.key`, `carapace.db`,
//! `workspace/`, `logs/`, and `daemon.json` while a daemon runs. Directories are 0700,
//! secrets 0600.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use carapace_types::Secret;

#[derive(Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: PathBuf) -> DataDir {
        DataDir { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn token(&self) -> PathBuf {
        self.root.join("server.token")
    }
    pub fn audit_key(&self) -> PathBuf {
        self.root.join("audit.key")
    }
    pub fn db(&self) -> PathBuf {
        self.root.join("carapace.db")
    }
    pub fn workspace(&self) -> PathBuf {
        self.root.join("workspace")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn daemon_file(&self) -> PathBuf {
        self.root.join("daemon.json")
    }

    /// Creates what is missing: directories (0700), a commented default config, the
    /// server token. Tightens the mode of the root if it is open to others.
    pub fn prepare(&self) -> anyhow::Result<()> {
        for dir in [self.root.clone(), self.workspace(), self.logs()] {
            create_private_dir(&dir)?;
        }
        if !self.config().exists() {
            write_new(&self.config(), crate::config::DEFAULT_CONFIG.as_bytes())?;
        }
        if !self.token().exists() {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).context("the OS random source failed")?;
            write_new(
                &self.token(),
                format!("{}\n", hex::encode(bytes)).as_bytes(),
            )?;
        }
        Ok(())
    }

    /// Reads the server token, refusing a file others can read.
    pub fn read_token(&self) -> anyhow::Result<Secret<String>> {
        let path = self.token();
        let meta = fs::metadata(&path).with_context(|| {
            format!(
                "cannot read {}; start the daemon once (`cara serve`) to create it",
                path.display()
            )
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            bail!(
                "{} is readable by other users; run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let token = text.trim().to_string();
        if token.len() < 32 {
            bail!(
                "{} is too short to be a token; delete it and restart the daemon",
                path.display()
            );
        }
        Ok(Secret::new(token))
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let meta = fs::metadata(dir).with_context(|| format!("cannot stat {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} exists and is not a directory", dir.display());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (chmod 700)", dir.display()))?;
    }
    Ok(())
}

/// Creates a file that must not exist yet, mode 0600, and syncs it.
fn write_new(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    let mut f = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        // Another process created it first; theirs wins.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    };
    f.write_all(content)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Replaces a file atomically (temp file, fsync, rename), mode 0600.
pub fn write_atomic(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(content)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// The default data directory: `$HOME/.carapace`.
pub fn default_root() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("HOME is not set; pass --data-dir or set CARAPACE_DATA_DIR")?;
    Ok(PathBuf::from(home).join(".carapace"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_creates_private_layout_and_keeps_the_token() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::new(tmp.path().join("data"));
        dd.prepare().unwrap();
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dd.root().to_path_buf()), 0o700);
        assert_eq!(mode(dd.workspace()), 0o700);
        assert_eq!(mode(dd.token()), 0o600);
        assert_eq!(mode(dd.config()), 0o600);
        let token = dd.read_token().unwrap();
        dd.prepare().unwrap();
        assert_eq!(
            dd.read_token().unwrap(),
            token,
            "a second start keeps the token"
        );

        fs::set_permissions(dd.token(), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            dd.read_token()
                .unwrap_err()
                .to_string()
                .contains("chmod 600")
        );
        fs::set_permissions(dd.root(), fs::Permissions::from_mode(0o755)).unwrap();
        dd.prepare().unwrap();
        assert_eq!(
            mode(dd.root().to_path_buf()),
            0o700,
            "an open data dir is tightened"
        );
    }
}
