//! `cara doctor`: checks everything a working gateway needs and says what to fix.

use std::os::unix::fs::PermissionsExt;
use std::process::ExitCode;
use std::time::Duration;

use carapace_llm::{OpenAiCompat, OpenAiConfig, Provider};
use carapace_store::{AuditKey, Store};

use crate::client::Daemon;
use crate::config::{self, ProviderSetup};
use crate::datadir::DataDir;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, level: Level, what: &str, detail: &str) {
        let mark = match level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        if level == Level::Fail {
            self.failed = true;
        }
        println!("[{mark}] {what}: {detail}");
    }
}

pub async fn doctor(dd: &DataDir) -> anyhow::Result<ExitCode> {
    let mut r = Report { failed: false };

    // Data directory and its secrets.
    match std::fs::metadata(dd.root()) {
        Ok(m) if m.permissions().mode() & 0o077 == 0 => r.line(
            Level::Ok,
            "data dir",
            &format!("{} (0700)", dd.root().display()),
        ),
        Ok(m) => r.line(
            Level::Fail,
            "data dir",
            &format!(
                "{} is mode {:o}; run `chmod 700 {}`",
                dd.root().display(),
                m.permissions().mode() & 0o777,
                dd.root().display()
            ),
        ),
        Err(_) => r.line(
            Level::Warn,
            "data dir",
            &format!(
                "{} does not exist yet; `cara serve` creates it",
                dd.root().display()
            ),
        ),
    }
    for (name, path) in [("server token", dd.token()), ("audit key", dd.audit_key())] {
        match std::fs::metadata(&path) {
            Ok(m) if m.permissions().mode() & 0o077 == 0 => {
                r.line(Level::Ok, name, "present, 0600")
            }
            Ok(_) => r.line(
                Level::Fail,
                name,
                &format!(
                    "{} is readable by others; run `chmod 600 {}`",
                    path.display(),
                    path.display()
                ),
            ),
            Err(_) => r.line(
                Level::Warn,
                name,
                "not created yet (the first `cara serve` creates it)",
            ),
        }
    }

    // Configuration.
    let settings = match config::load(&dd.config())
        .and_then(|f| config::settings(&dd.config(), &f, &|k| std::env::var(k).ok()))
    {
        Ok(s) => {
            r.line(
                Level::Ok,
                "config",
                &format!("{} is valid; bind {}", dd.config().display(), s.bind),
            );
            Some(s)
        }
        Err(e) => {
            r.line(Level::Fail, "config", &format!("{e:#}"));
            None
        }
    };

    // The running gateway, if any: its environment may differ from this shell's.
    let daemon = Daemon::find(dd).await;
    let daemon_model = match &daemon {
        Ok(Some(d)) => d
            .get("/api/status")
            .await
            .ok()
            .and_then(|s| s["model"].as_str().map(String::from)),
        _ => None,
    };

    // Provider.
    if let Some(s) = settings {
        match s.provider {
            ProviderSetup::Missing(_) if daemon_model.is_some() => r.line(
                Level::Warn,
                "provider",
                &format!(
                    "not configured in this shell, but the running gateway uses model {}; a restarted gateway needs the same settings",
                    daemon_model.as_deref().unwrap_or("?")
                ),
            ),
            ProviderSetup::Missing(hint) => {
                r.line(Level::Fail, "provider", &hint.replace('\n', "\n       "))
            }
            ProviderSetup::Ready(p) => {
                let what = format!(
                    "{} ({}), model {} ({})",
                    p.base_url, p.base_url_origin, p.model, p.model_origin
                );
                let provider = OpenAiCompat::new(OpenAiConfig {
                    base_url: p.base_url.clone(),
                    api_key: p.api_key,
                    request_timeout: Duration::from_secs(10),
                    stall_timeout: Duration::from_secs(10),
                });
                match provider {
                    Err(e) => r.line(Level::Fail, "provider", &format!("{what}: {e}")),
                    Ok(provider) => match provider.list_models().await {
                        Ok(models) if models.contains(&p.model) => r.line(
                            Level::Ok,
                            "provider",
                            &format!("{what}: reachable, model listed"),
                        ),
                        Ok(models) => r.line(
                            Level::Warn,
                            "provider",
                            &format!(
                                "{what}: reachable, but `{}` is not among its {} models ({})",
                                p.model,
                                models.len(),
                                models
                                    .iter()
                                    .take(5)
                                    .cloned()
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ),
                        Err(e) => r.line(
                            Level::Fail,
                            "provider",
                            &format!("{what}: not reachable: {e}"),
                        ),
                    },
                }
            }
        }
    }

    // Database and audit chain: the running gateway holds the database, so ask it.
    let daemon_verify = match &daemon {
        Ok(Some(d)) => d.get("/api/audit/verify").await.ok(),
        _ => None,
    };
    if let Some(v) = daemon_verify {
        if v["ok"] == serde_json::json!(true) {
            r.line(
                Level::Ok,
                "audit log",
                &format!("intact, {} records (checked by the gateway)", v["records"]),
            );
        } else {
            r.line(
                Level::Fail,
                "audit log",
                &format!(
                    "broken at record {}: {}; see `cara audit verify`",
                    v["seq"],
                    v["reason"].as_str().unwrap_or("")
                ),
            );
        }
    } else if dd.db().exists() && dd.audit_key().exists() {
        match Store::open(&dd.db())
            .map_err(anyhow::Error::from)
            .and_then(|s| {
                let key = AuditKey::load_or_create(&dd.audit_key())?;
                Ok(s.verify_audit(&key)?)
            }) {
            Ok(report) => r.line(
                Level::Ok,
                "audit log",
                &format!("intact, {} records", report.records),
            ),
            Err(e) => r.line(
                Level::Fail,
                "audit log",
                &format!("{e:#}; see `cara audit verify`"),
            ),
        }
    } else {
        r.line(Level::Warn, "audit log", "no database yet");
    }

    // Gateway.
    match daemon {
        Ok(Some(d)) => r.line(
            Level::Ok,
            "gateway",
            &format!("running on http://{}", d.addr),
        ),
        Ok(None) => r.line(
            Level::Warn,
            "gateway",
            "not running; `cara serve` or `cara chat` starts it",
        ),
        Err(e) => r.line(Level::Fail, "gateway", &format!("{e:#}")),
    }

    // Kernel features the sandbox (a later release) builds on.
    for (feature, level, detail) in kernel_features() {
        r.line(level, feature, &detail);
    }

    if r.failed {
        println!("\nsome checks failed; fix the lines marked FAIL");
        Ok(ExitCode::FAILURE)
    } else {
        println!("\nall required checks passed");
        Ok(ExitCode::SUCCESS)
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn kernel_features() -> Vec<(&'static str, Level, String)> {
    let mut out = Vec::new();
    let userns = match (
        read("/proc/sys/user/max_user_namespaces"),
        read("/proc/sys/kernel/unprivileged_userns_clone"),
    ) {
        (_, Some(v)) if v == "0" => (
            Level::Warn,
            "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0)"
                .to_string(),
        ),
        (Some(v), _) if v == "0" => (
            Level::Warn,
            "user namespaces are disabled (user.max_user_namespaces=0)".to_string(),
        ),
        (Some(v), _) => (Level::Ok, format!("available (max {v})")),
        (None, _) => (
            Level::Warn,
            "unknown (no /proc/sys/user/max_user_namespaces)".to_string(),
        ),
    };
    out.push(("user namespaces", userns.0, userns.1));
    let landlock = match read("/sys/kernel/security/lsm") {
        Some(lsm) if lsm.split(',').any(|m| m == "landlock") => (Level::Ok, "enabled".to_string()),
        Some(lsm) => (Level::Warn, format!("not in the active LSMs ({lsm})")),
        None => (Level::Warn, "unknown (securityfs not readable)".to_string()),
    };
    out.push(("landlock", landlock.0, landlock.1));
    let seccomp = match read("/proc/self/status") {
        Some(status) if status.lines().any(|l| l.starts_with("Seccomp:")) => {
            (Level::Ok, "available".to_string())
        }
        _ => (Level::Warn, "not reported by the kernel".to_string()),
    };
    out.push(("seccomp", seccomp.0, seccomp.1));
    let cgroup = match read("/sys/fs/cgroup/cgroup.controllers") {
        Some(c) => (Level::Ok, format!("v2 ({c})")),
        None => (
            Level::Warn,
            "cgroup v2 not mounted at /sys/fs/cgroup".to_string(),
        ),
    };
    out.push(("cgroups", cgroup.0, cgroup.1));
    out
}
