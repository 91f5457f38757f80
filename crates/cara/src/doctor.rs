//! `cara doctor`: checks everything a working gateway needs and says what to fix.

use std::os::unix::fs::PermissionsExt;
use std::process::ExitCode;
use std::time::Duration;

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
    if let Some(s) = &settings {
        let f = &s.policy.friction;
        let note = if s.policy.rules.iter().any(|r| r.name == "preset.strict") {
            "preset strict: every call but a read asks"
        } else {
            "preset default: consequential calls ask once a session holds untrusted content"
        };
        r.line(
            Level::Ok,
            "policy",
            &format!(
                "{note}; {} rule(s) of yours; friction asks above {} and refuses above {}",
                s.policy
                    .rules
                    .iter()
                    .filter(|r| r.name.starts_with("rules."))
                    .count(),
                f.ask_above,
                f.deny_above
            ),
        );
    }

    // MCP servers outside the sandbox run with the daemon's rights.
    if let Ok(f) = config::load(&dd.config()) {
        let total = f.mcp.servers.len();
        let bare = f.mcp.unsandboxed();
        if !bare.is_empty() {
            r.line(
                Level::Warn,
                "mcp",
                &format!(
                    "{} of {total} server(s) run WITHOUT the sandbox (sandbox = \"none\"): {}; \
                     such a server can read your files and keys and reach the network as \
                     the daemon's user",
                    bare.len(),
                    bare.join(", ")
                ),
            );
        } else if total > 0 {
            r.line(
                Level::Ok,
                "mcp",
                &format!("{total} server(s), each stdio one in the sandbox; `cara mcp list` shows their state"),
            );
        }
        let networked = f.mcp.with_egress();
        if !networked.is_empty() && f.egress.allow_hosts.get_ref().is_empty() {
            r.line(
                Level::Warn,
                "mcp",
                &format!(
                    "server(s) with network = \"egress\" ({}), but [egress] allow_hosts is \
                     empty: every connection they try is refused",
                    networked.join(", ")
                ),
            );
        }
    }

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

    // Plain-English rules: what the running gateway loaded (a stopped one is asked by
    // `cara rules show`).
    if let Ok(Some(d)) = &daemon
        && let Ok(v) = d.get("/api/rules").await
        && let Some(list) = v["rules"].as_array().filter(|l| !l.is_empty())
    {
        let count = |status: &str| list.iter().filter(|r| r["status"] == status).count();
        let (compiled, other) = (count("compiled"), list.len() - count("compiled"));
        if other == 0 {
            r.line(
                Level::Ok,
                "plain-English rules",
                &format!("{compiled} compiled, evaluated deterministically"),
            );
        } else {
            r.line(
                Level::Warn,
                "plain-English rules",
                &format!(
                    "{compiled} compiled, {other} not: those are judged per call by the model (it can only ask); `cara rules show` says why"
                ),
            );
        }
    }

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
                // One cheap call (the model list) to each model of the chain.
                let chain = std::iter::once(&p.target).chain(&p.fallbacks);
                for (i, t) in chain.enumerate() {
                    let (name, failing) = if i == 0 {
                        ("provider".to_string(), Level::Fail)
                    } else {
                        (format!("fallback {i}"), Level::Warn)
                    };
                    let origin = if i == 0 {
                        p.model_origin.to_string()
                    } else {
                        "provider.models".to_string()
                    };
                    let what = format!(
                        "{} at {} ({}), model {} ({origin})",
                        t.provider, t.base_url, t.base_url_origin, t.model
                    );
                    let provider = t.connect(Duration::from_secs(10), Duration::from_secs(10));
                    let (level, text) = match provider {
                        Err(e) => (failing, format!("{what}: {e}")),
                        Ok(provider) => match provider.list_models().await {
                            Ok(models) if models.contains(&t.model) => {
                                (Level::Ok, format!("{what}: reachable, model listed"))
                            }
                            Ok(models) => (
                                Level::Warn,
                                format!(
                                    "{what}: reachable, but `{}` is not among its {} models ({})",
                                    t.model,
                                    models.len(),
                                    models
                                        .iter()
                                        .take(5)
                                        .cloned()
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            ),
                            Err(e) => (failing, format!("{what}: not reachable: {e}")),
                        },
                    };
                    r.line(level, &name, &text);
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

    // The OS keyring: optional (the encrypted file needs none), so never a failure; a
    // warning only when an entry is kept there.
    let keyring_used = config::load(&dd.config()).is_ok_and(|f| {
        f.vault
            .secrets
            .keys()
            .any(|n| f.vault.entry(n).backend == config::vault::BackendKind::Keyring)
    });
    let keyring = tokio::task::spawn_blocking(carapace_vault::KeyringBackend::available)
        .await
        .unwrap_or_else(|e| Err(format!("the probe failed: {e}")));
    match keyring {
        Ok(()) => r.line(Level::Ok, "OS keyring", "available"),
        Err(why) if keyring_used => r.line(
            Level::Warn,
            "OS keyring",
            &format!("not available: {why}; entries with backend = \"keyring\" cannot be read"),
        ),
        Err(why) => r.line(
            Level::Ok,
            "OS keyring",
            &format!("not available ({why}); no entry uses it"),
        ),
    }

    // The sandbox's kernel features, probed for real (`cara sandbox check` lists them).
    // A missing one is a warning: profiles refuse to run without it unless they allow
    // degraded runs, and the exec tool says which feature is missing.
    for f in carapace_sandbox::check() {
        let level = if f.available { Level::Ok } else { Level::Warn };
        r.line(level, &format!("sandbox: {}", f.feature), &f.detail);
    }
    if running_as_root() {
        r.line(
            Level::Warn,
            "sandbox: user",
            "running as root: sandboxed processes keep root's kernel user id (without \
             capabilities); run Carapace as an ordinary user for defence in depth",
        );
    }

    if r.failed {
        println!("\nsome checks failed; fix the lines marked FAIL");
        Ok(ExitCode::FAILURE)
    } else {
        println!("\nall required checks passed");
        Ok(ExitCode::SUCCESS)
    }
}

fn running_as_root() -> bool {
    // The owner of /proc/self is the effective user id, without unsafe code.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
