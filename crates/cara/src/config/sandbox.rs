//! `[sandbox]`: the profiles sandboxed processes run in.
//!
//! Two profiles always exist: `tool` (the `exec` tool's: workspace read-write, no
//! network) and `readonly` (workspace read-only). A `[sandbox.profiles.NAME]` table
//! overrides a built-in profile key by key or defines a new one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use carapace_sandbox::{Bind, Limits, Network, SandboxSpec};
use serde::Deserialize;
use toml::Spanned;

use super::Locator;

/// Where the agent's workspace appears inside a sandbox.
pub const WORKSPACE_INSIDE: &str = "/workspace";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSection {
    /// The profile the `exec` tool runs in.
    pub exec_profile: Spanned<String>,
    pub profiles: BTreeMap<String, ProfileSection>,
}

impl Default for SandboxSection {
    fn default() -> Self {
        SandboxSection {
            exec_profile: Spanned::new(0..0, "tool".into()),
            profiles: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProfileSection {
    /// `rw`, `ro` or `none`: how the workspace is bound at /workspace.
    pub workspace: Option<Spanned<String>>,
    /// Extra binds, `SRC:DST` (read-write) or `SRC:DST:ro`.
    pub binds: Option<Spanned<Vec<String>>>,
    /// Only `none` for now: loopback inside the sandbox and nothing else.
    pub network: Option<Spanned<String>>,
    /// Run even when a kernel feature is missing (the run reports which).
    pub allow_degraded: Option<bool>,
    pub wall_clock_secs: Option<Spanned<u64>>,
    pub cpu_secs: Option<Spanned<u64>>,
    pub memory_mb: Option<Spanned<u64>>,
    pub address_space_mb: Option<Spanned<u64>>,
    pub processes: Option<Spanned<u64>>,
    pub open_files: Option<Spanned<u64>>,
    pub output_bytes: Option<Spanned<u64>>,
    pub tmp_mb: Option<Spanned<u64>>,
}

/// How a profile binds the workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkspaceAccess {
    ReadWrite,
    ReadOnly,
    None,
}

/// A profile with every value resolved.
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub workspace: WorkspaceAccess,
    pub binds: Vec<Bind>,
    pub allow_degraded: bool,
    pub limits: Limits,
}

impl Profile {
    /// The binds of this profile with the workspace (if any) first.
    pub fn binds_with_workspace(&self, workspace: &Path) -> Vec<Bind> {
        let mut binds = Vec::new();
        if self.workspace != WorkspaceAccess::None {
            binds.push(Bind {
                src: workspace.to_path_buf(),
                dst: PathBuf::from(WORKSPACE_INSIDE),
                writable: self.workspace == WorkspaceAccess::ReadWrite,
            });
        }
        binds.extend(self.binds.iter().cloned());
        binds
    }

    /// A spec for `argv` in this profile, with `workspace` bound at /workspace (where
    /// the command starts, if the profile binds it).
    pub fn spec(
        &self,
        workspace: &Path,
        env: Vec<(String, String)>,
        argv: Vec<String>,
    ) -> SandboxSpec {
        let cwd = if self.workspace == WorkspaceAccess::None {
            PathBuf::from("/tmp")
        } else {
            PathBuf::from(WORKSPACE_INSIDE)
        };
        SandboxSpec {
            argv,
            env,
            cwd,
            binds: self.binds_with_workspace(workspace),
            network: Network::None,
            limits: self.limits.clone(),
            allow_degraded: self.allow_degraded,
        }
    }
}

const BUILTIN: [(&str, WorkspaceAccess); 2] = [
    ("tool", WorkspaceAccess::ReadWrite),
    ("readonly", WorkspaceAccess::ReadOnly),
];

/// Parses `SRC:DST[:ro|:rw]`; both paths absolute (`~/` is the caller's home).
pub fn parse_bind(spec: &str) -> Result<Bind, String> {
    let mut parts: Vec<&str> = spec.split(':').collect();
    let writable = match parts.last() {
        Some(&"ro") if parts.len() == 3 => {
            parts.pop();
            false
        }
        Some(&"rw") if parts.len() == 3 => {
            parts.pop();
            true
        }
        _ => true,
    };
    let [src, dst] = parts.as_slice() else {
        return Err(format!(
            "`{spec}` is not SRC:DST or SRC:DST:ro (paths must not contain `:`)"
        ));
    };
    let src = expand_home(src);
    let dst = PathBuf::from(dst);
    for (what, p) in [("source", &src), ("destination", &dst)] {
        if !p.is_absolute() {
            return Err(format!(
                "bind {what} `{}` in `{spec}` must be an absolute path",
                p.display()
            ));
        }
        if p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!(
                "bind {what} `{}` in `{spec}` must not contain `..`",
                p.display()
            ));
        }
    }
    Ok(Bind { src, dst, writable })
}

fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}

impl SandboxSection {
    pub fn validate(&self, at: &Locator) -> anyhow::Result<()> {
        for (name, p) in &self.profiles {
            let key = |k: &str| format!("sandbox.profiles.{name}.{k}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(at.key(
                    &format!("sandbox.profiles.{name}"),
                    "a profile name uses letters, digits, `-` and `_` only".into(),
                ));
            }
            if let Some(w) = &p.workspace
                && !matches!(w.get_ref().as_str(), "rw" | "ro" | "none")
            {
                return Err(at.span(
                    w.span(),
                    &key("workspace"),
                    format!("`{}` must be \"rw\", \"ro\" or \"none\"", w.get_ref()),
                ));
            }
            if let Some(n) = &p.network
                && n.get_ref() != "none"
            {
                return Err(at.span(
                    n.span(),
                    &key("network"),
                    format!(
                        "`{}`: only \"none\" is available (loopback inside the sandbox); \
                         tools reach the network through the egress tools",
                        n.get_ref()
                    ),
                ));
            }
            if let Some(binds) = &p.binds {
                for b in binds.get_ref() {
                    if let Err(problem) = parse_bind(b) {
                        return Err(at.span(binds.span(), &key("binds"), problem));
                    }
                }
            }
            let ranges: [(&Option<Spanned<u64>>, &str, u64, u64); 8] = [
                (&p.wall_clock_secs, "wall_clock_secs", 1, 86_400),
                (&p.cpu_secs, "cpu_secs", 1, 86_400),
                (&p.memory_mb, "memory_mb", 16, 1 << 20),
                (&p.address_space_mb, "address_space_mb", 64, 1 << 22),
                (&p.processes, "processes", 1, 65_536),
                (&p.open_files, "open_files", 16, 1 << 20),
                (&p.output_bytes, "output_bytes", 1024, 64 << 20),
                (&p.tmp_mb, "tmp_mb", 1, 1 << 20),
            ];
            for (value, k, min, max) in ranges {
                if let Some(v) = value
                    && !(min..=max).contains(v.get_ref())
                {
                    return Err(at.span(
                        v.span(),
                        &key(k),
                        format!("{} is out of range {min}..={max}", v.get_ref()),
                    ));
                }
            }
        }
        let exec = self.exec_profile.get_ref();
        if self.profile(exec).is_none() {
            return Err(at.span(
                self.exec_profile.span(),
                "sandbox.exec_profile",
                format!(
                    "no profile `{exec}`; profiles: {}",
                    self.profile_names().join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// Every profile name, built-in ones first.
    pub fn profile_names(&self) -> Vec<String> {
        let mut names: Vec<String> = BUILTIN.iter().map(|(n, _)| n.to_string()).collect();
        for name in self.profiles.keys() {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }

    /// The resolved profile `name`, if it exists. Call after `validate`.
    pub fn profile(&self, name: &str) -> Option<Profile> {
        let builtin = BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, w)| *w);
        let section = self.profiles.get(name);
        if builtin.is_none() && section.is_none() {
            return None;
        }
        let empty = ProfileSection::default();
        let s = section.unwrap_or(&empty);
        let workspace = match s.workspace.as_ref().map(|w| w.get_ref().as_str()) {
            Some("rw") => WorkspaceAccess::ReadWrite,
            Some("ro") => WorkspaceAccess::ReadOnly,
            Some(_) => WorkspaceAccess::None,
            None => builtin.unwrap_or(WorkspaceAccess::None),
        };
        let d = Limits::default();
        let mb = |v: &Option<Spanned<u64>>, default: u64| {
            v.as_ref().map(|v| v.get_ref() << 20).unwrap_or(default)
        };
        let n = |v: &Option<Spanned<u64>>, default: u64| {
            v.as_ref().map(|v| *v.get_ref()).unwrap_or(default)
        };
        let limits = Limits {
            wall_clock: s
                .wall_clock_secs
                .as_ref()
                .map(|v| Duration::from_secs(*v.get_ref()))
                .unwrap_or(d.wall_clock),
            cpu_seconds: n(&s.cpu_secs, d.cpu_seconds),
            address_space_bytes: mb(&s.address_space_mb, d.address_space_bytes),
            open_files: n(&s.open_files, d.open_files),
            processes: n(&s.processes, d.processes),
            output_bytes: n(&s.output_bytes, d.output_bytes as u64) as usize,
            memory_bytes: mb(&s.memory_mb, d.memory_bytes),
            tmp_bytes: mb(&s.tmp_mb, d.tmp_bytes),
        };
        let binds = s
            .binds
            .as_ref()
            .map(|b| {
                b.get_ref()
                    .iter()
                    .filter_map(|b| parse_bind(b).ok())
                    .collect()
            })
            .unwrap_or_default();
        Some(Profile {
            name: name.to_string(),
            workspace,
            binds,
            allow_degraded: s.allow_degraded.unwrap_or(false),
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_parse_with_modes() {
        let b = parse_bind("/opt/data:/data:ro").unwrap();
        assert_eq!(
            (b.src, b.dst, b.writable),
            ("/opt/data".into(), "/data".into(), false)
        );
        assert!(parse_bind("/a:/b").unwrap().writable);
        assert!(parse_bind("/a:/b:rw").unwrap().writable);
        for bad in ["a:/b", "/a:b", "/a", "/a:/b:/c:ro", "/a/../etc:/b"] {
            assert!(parse_bind(bad).is_err(), "{bad} was accepted");
        }
    }
}
