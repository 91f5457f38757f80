//! Best-effort cgroup v2 limits: memory and process count for the whole sandbox, where
//! a cgroup directory with both controllers enabled for its children can be written.
//! Rlimits do the job where none can.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Limits;

/// A cgroup v2 directory whose children get the memory and pids controllers.
pub(crate) fn find_base() -> Result<PathBuf, String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    // Fields: id parent major:minor root mount-point options ... - fstype source options
    let (mount_root, mount_point) = mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let fields: Vec<&str> = left.split_whitespace().collect();
            Some((unescape(fields.get(3)?), unescape(fields.get(4)?)))
        })
        .ok_or_else(|| "no cgroup2 file system is mounted".to_string())?;
    let mount_point = PathBuf::from(mount_point);

    let controllers =
        fs::read_to_string(mount_point.join("cgroup.controllers")).unwrap_or_default();
    for needed in ["memory", "pids"] {
        if !controllers.split_whitespace().any(|c| c == needed) {
            return Err(format!(
                "cgroup2 at {} has no {needed} controller",
                mount_point.display()
            ));
        }
    }

    let own = fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        })
        .unwrap_or_else(|| "/".into());
    let relative = Path::new(&own)
        .strip_prefix(&mount_root)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut candidate = Some(mount_point.join(relative));
    while let Some(dir) = candidate {
        if !dir.starts_with(&mount_point) {
            break;
        }
        if usable(&dir) {
            return Ok(dir);
        }
        candidate = dir.parent().map(Path::to_path_buf);
    }
    Err(format!(
        "no writable cgroup2 directory under {} enables memory and pids for its children",
        mount_point.display()
    ))
}

fn usable(dir: &Path) -> bool {
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let has = |c: &str| enabled.split_whitespace().any(|e| e == c);
    has("memory") && has("pids") && writable(dir)
}

fn writable(dir: &Path) -> bool {
    let Ok(c) = crate::sys::cpath(dir) else {
        return false;
    };
    crate::sys::is_writable(&c)
}

/// Octal escapes of /proc/self/mountinfo (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if bytes[i] == b'\\'
            && let Some(digits) = octal
        {
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(value as u8);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup of one run; removed when dropped.
pub(crate) struct RunCgroup {
    dir: PathBuf,
}

impl RunCgroup {
    /// Creates a child of `base` with the run's limits.
    pub(crate) fn create(base: &Path, limits: &Limits) -> std::io::Result<RunCgroup> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("carapace-{}-{n}", std::process::id()));
        fs::create_dir(&dir)?;
        let run = RunCgroup { dir };
        fs::write(run.dir.join("memory.max"), limits.memory_bytes.to_string())?;
        // Swap would let the sandbox go past its memory limit.
        let _ = fs::write(run.dir.join("memory.swap.max"), "0");
        fs::write(
            run.dir.join("pids.max"),
            limits.processes.saturating_add(2).to_string(),
        )?;
        Ok(run)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// Kills every process in the cgroup (Linux 5.14).
    pub(crate) fn kill(&self) {
        let _ = fs::write(self.dir.join("cgroup.kill"), "1");
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        self.kill();
        if fs::remove_dir(&self.dir).is_ok() {
            return;
        }
        // The last processes may still be exiting.
        let dir = self.dir.clone();
        std::thread::spawn(move || {
            for _ in 0..50 {
                std::thread::sleep(std::time::Duration::from_millis(20));
                if fs::remove_dir(&dir).is_ok() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\"), "/end\\");
    }
}
