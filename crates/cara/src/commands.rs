//! The smaller commands: status, setup, config, audit, approvals.

use std::process::ExitCode;

use anyhow::{Context, bail};
use carapace_store::{AuditKey, Store, StoreError};
use serde_json::{Value, json};

use crate::client::Daemon;
use crate::config::{self, ProviderSetup};
use crate::datadir::{DataDir, write_atomic};

pub async fn status(dd: &DataDir) -> anyhow::Result<ExitCode> {
    let Some(daemon) = Daemon::find(dd).await? else {
        println!("gateway: not running (data dir {})", dd.root().display());
        println!("start it with `cara serve`, or `cara chat`, which starts it in the background");
        return Ok(ExitCode::from(3));
    };
    let s = daemon.get("/api/status").await?;
    println!(
        "gateway: running on http://{} (version {})",
        daemon.addr,
        s["version"].as_str().unwrap_or("?")
    );
    println!("data dir: {}", dd.root().display());
    match s["model"].as_str() {
        Some(m) => println!("model: {m}"),
        None => println!(
            "model: none configured\n{}",
            s["provider_hint"].as_str().unwrap_or("")
        ),
    }
    let tools: Vec<String> = s["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| {
                    format!(
                        "{} ({})",
                        t["name"].as_str().unwrap_or("?"),
                        t["effect"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    println!("tools: {}", tools.join(", "));
    println!("pending approvals: {}", s["pending_approvals"]);
    Ok(ExitCode::SUCCESS)
}

pub fn config_show(dd: &DataDir) -> anyhow::Result<ExitCode> {
    let path = dd.config();
    let file = config::load(&path)?;
    let s = config::settings(&path, &file, &|k| std::env::var(k).ok())?;
    println!("# effective settings ({})", path.display());
    println!(
        "[server]\nbind = {:?}  # {}\nmax_body_bytes = {}",
        s.bind.to_string(),
        s.bind_origin,
        s.max_body_bytes
    );
    println!("\n[provider]");
    match &s.provider {
        ProviderSetup::Ready(p) => {
            let t = &p.target;
            println!("model = {:?}  # {}", t.full_name(), p.model_origin);
            println!(
                "# provider {} ({} API) at {} ({})",
                t.provider,
                t.kind.api_name(),
                t.base_url,
                t.base_url_origin
            );
            match &t.api_key_from {
                Some(from) => println!("# api key: set (from {from})"),
                None => println!("# api key: none"),
            }
            println!(
                "request_timeout_secs = {}\nstall_timeout_secs = {}",
                p.request_timeout.as_secs(),
                p.stall_timeout.as_secs()
            );
        }
        ProviderSetup::Missing(hint) => {
            for line in hint.lines() {
                println!("# {line}");
            }
        }
    }
    println!("\n[agent]\nmax_steps = {}", s.max_steps);
    println!(
        "\n[gate]\ntool_timeout_secs = {}\napproval_timeout_secs = {}\nrate_per_minute = {}\ntools = {:?}",
        s.gate.tool_timeout.as_secs(),
        s.gate.approval_timeout.as_secs(),
        s.gate.rate_per_minute,
        s.gate.granted_tools
    );
    Ok(ExitCode::SUCCESS)
}

pub fn config_get(dd: &DataDir, key: &str) -> anyhow::Result<ExitCode> {
    let path = dd.config();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|_| config::DEFAULT_CONFIG.to_string());
    config::parse(&path, &text)?;
    match config::get_key(&text, key) {
        Some(v) => {
            println!("{v}");
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("cara: `{key}` is not set in {}", path.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn config_set(dd: &DataDir, key: &str, value: &str) -> anyhow::Result<ExitCode> {
    dd.prepare()?;
    let path = dd.config();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let new_text = config::set_key(&path, &text, key, value)?;
    write_atomic(&path, new_text.as_bytes())?;
    println!(
        "{key} = {}",
        config::get_key(&new_text, key).unwrap_or_default()
    );
    println!("(a running gateway must be restarted to pick this up)");
    Ok(ExitCode::SUCCESS)
}

pub fn config_validate(dd: &DataDir) -> anyhow::Result<ExitCode> {
    let path = dd.config();
    if !path.exists() {
        println!("{} does not exist; the defaults apply", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let file = config::load(&path)?;
    config::settings(&path, &file, &|k| std::env::var(k).ok())?;
    println!("{}: ok", path.display());
    Ok(ExitCode::SUCCESS)
}

fn open_audit(dd: &DataDir) -> anyhow::Result<Option<(Store, AuditKey)>> {
    if !dd.db().exists() {
        return Ok(None);
    }
    if !dd.audit_key().exists() {
        bail!(
            "{} exists but its audit key {} is missing: the log cannot be verified",
            dd.db().display(),
            dd.audit_key().display()
        );
    }
    let store =
        Store::open(&dd.db()).with_context(|| format!("cannot open {}", dd.db().display()))?;
    let key = AuditKey::load_or_create(&dd.audit_key())?;
    Ok(Some((store, key)))
}

/// While the gateway runs it holds the database (exclusively), so the audit commands ask
/// it; otherwise they read the file themselves.
/// `cara usage`: from the running gateway, else from the database directly.
pub async fn usage(
    dd: &DataDir,
    days: u32,
    as_json: bool,
    session: Option<String>,
) -> anyhow::Result<ExitCode> {
    if let Some(id) = session {
        return session_usage(dd, &id, as_json).await;
    }
    let report = if let Some(daemon) = Daemon::find(dd).await? {
        daemon.get(&format!("/api/usage?days={days}")).await?
    } else {
        if !dd.db().exists() {
            println!("no usage yet ({} does not exist)", dd.db().display());
            return Ok(ExitCode::SUCCESS);
        }
        let file = config::load(&dd.config())?;
        let store =
            Store::open(&dd.db()).with_context(|| format!("cannot open {}", dd.db().display()))?;
        carapace_server::usage_report(
            &store,
            days,
            file.usage.accounting().daily_budget_micros,
            carapace_gate::now_ms(),
        )
        .context("cannot read usage")?
    };
    if as_json {
        println!("{report}");
        return Ok(ExitCode::SUCCESS);
    }
    let line = |u: &Value| {
        let unpriced = u["unpriced_calls"].as_u64().unwrap_or(0);
        format!(
            "{:>5} calls {:>10} in {:>9} out  ${:.4}{}",
            u["calls"].as_u64().unwrap_or(0),
            u["prompt_tokens"].as_u64().unwrap_or(0),
            u["completion_tokens"].as_u64().unwrap_or(0),
            u["cost_usd"].as_f64().unwrap_or(0.0),
            if unpriced > 0 {
                format!(" (+{unpriced} calls of models without a price)")
            } else {
                String::new()
            }
        )
    };
    let today = &report["today"];
    println!(
        "today ({} UTC): {}",
        today["day"].as_str().unwrap_or("?"),
        line(&today["usage"])
    );
    match report["daily_budget_usd"].as_f64() {
        Some(b) => println!(
            "daily budget: ${b:.2}, {:.0}% used",
            100.0 * today["usage"]["cost_usd"].as_f64().unwrap_or(0.0) / b
        ),
        None => println!("daily budget: none (usage.daily_budget_usd)"),
    }
    println!("\nsince {}:", report["since"].as_str().unwrap_or("?"));
    let rows = report["days"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("  no model calls");
    }
    for r in rows {
        println!(
            "  {}  {:<36} {}",
            r["day"].as_str().unwrap_or("?"),
            crate::chat::printable(r["model"].as_str().unwrap_or("?")),
            line(&r["usage"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `cara usage --session ID`: one session's totals.
async fn session_usage(dd: &DataDir, id: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let usage = if let Some(daemon) = Daemon::find(dd).await? {
        daemon
            .get(&format!("/api/sessions/{id}"))
            .await
            .with_context(|| format!("no session {id}"))?["usage"]
            .clone()
    } else {
        if !dd.db().exists() {
            bail!("no session {id}: {} does not exist", dd.db().display());
        }
        let store =
            Store::open(&dd.db()).with_context(|| format!("cannot open {}", dd.db().display()))?;
        let session = carapace_types::SessionId::new(id);
        if store.session(&session)?.is_none() {
            bail!("no session {id}");
        }
        let t = store.usage_of_session(&session)?;
        json!({
            "calls": t.calls,
            "prompt_tokens": t.prompt_tokens,
            "completion_tokens": t.completion_tokens,
            "cost_usd": t.cost_micros as f64 / 1e6,
            "unpriced_calls": t.unpriced_calls,
        })
    };
    if as_json {
        println!("{usage}");
    } else {
        println!(
            "session {id}: {} calls, {} in, {} out, ${:.4}",
            usage["calls"].as_u64().unwrap_or(0),
            usage["prompt_tokens"].as_u64().unwrap_or(0),
            usage["completion_tokens"].as_u64().unwrap_or(0),
            usage["cost_usd"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn audit_verify(dd: &DataDir) -> anyhow::Result<ExitCode> {
    let (ok, records, head, seq, reason) = if let Some(daemon) = Daemon::find(dd).await? {
        let v = daemon.get("/api/audit/verify").await?;
        (
            v["ok"] == json!(true),
            v["records"].as_u64().unwrap_or(0),
            v["head_hash"].as_str().unwrap_or("").to_string(),
            v["seq"].as_u64().unwrap_or(0),
            v["reason"].as_str().unwrap_or("").to_string(),
        )
    } else {
        let Some((store, key)) = open_audit(dd)? else {
            println!("no audit log yet ({} does not exist)", dd.db().display());
            return Ok(ExitCode::SUCCESS);
        };
        match store.verify_audit(&key) {
            Ok(report) => (true, report.records, report.head_hash, 0, String::new()),
            Err(StoreError::AuditBroken { seq, reason }) => (false, 0, String::new(), seq, reason),
            Err(e) => return Err(e).context("cannot read the audit log"),
        }
    };
    if ok {
        println!("audit log intact: {records} records, head {head}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("audit log BROKEN at record {seq}: {reason}");
        Ok(ExitCode::FAILURE)
    }
}

pub async fn audit_tail(dd: &DataDir, n: usize, as_json: bool) -> anyhow::Result<ExitCode> {
    let entries: Vec<Value> = if let Some(daemon) = Daemon::find(dd).await? {
        let v = daemon.get(&format!("/api/audit?n={n}")).await?;
        v["entries"].as_array().cloned().unwrap_or_default()
    } else {
        let Some((store, _key)) = open_audit(dd)? else {
            println!("no audit log yet ({} does not exist)", dd.db().display());
            return Ok(ExitCode::SUCCESS);
        };
        store
            .audit_tail(n)?
            .into_iter()
            .map(|e| json!({ "seq": e.seq, "hash": e.hash, "prev_hash": e.prev_hash, "record": e.record }))
            .collect()
    };
    for e in entries {
        if as_json {
            println!("{e}");
            continue;
        }
        let r = &e["record"];
        let field = |k: &str| r[k].as_str().map(String::from).unwrap_or_default();
        let ts = r["ts_ms"].as_i64().map(format_ts).unwrap_or_default();
        let mut line = format!(
            "{:>6}  {ts}  {:<15}",
            e["seq"].as_u64().unwrap_or(0),
            field("event")
        );
        for k in [
            "outcome", "tool", "code", "rule", "session", "reason", "path",
        ] {
            let v = field(k);
            if !v.is_empty() {
                line.push_str(&format!(" {k}={v}"));
            }
        }
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn approvals_list(dd: &DataDir) -> anyhow::Result<ExitCode> {
    let daemon = Daemon::require(dd).await?;
    let list = daemon.get("/api/approvals").await?;
    let items = list["approvals"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("nothing waits for approval");
    }
    for a in items {
        if !a["plan"].is_null() {
            println!(
                "{}  plan for session {} [answer: cara approvals approve ID [--steps 1-3] | deny ID]\n    {}\n    {}",
                a["id"].as_str().unwrap_or("?"),
                a["session"].as_str().unwrap_or("?"),
                crate::chat::printable(a["reason"].as_str().unwrap_or("")),
                crate::chat::printable(a["args"].as_str().unwrap_or("")).replace('\n', "\n    ")
            );
            continue;
        }
        let p = |key: &str| crate::chat::printable(a[key].as_str().unwrap_or(""));
        println!(
            "{}  {} {}\n    session {} · {} [rule {}]",
            p("id"),
            p("tool"),
            p("args").replace('\n', "\n    "),
            p("session"),
            p("reason"),
            p("rule")
        );
        if let Some(scope) = a["session_scope"].as_str() {
            println!(
                "    (--session would also let through: {} for the rest of the session)",
                crate::chat::printable(scope)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn approvals_decide(dd: &DataDir, id: &str, body: Value) -> anyhow::Result<ExitCode> {
    let daemon = Daemon::require(dd).await?;
    let _: Value = daemon.post(&format!("/api/approvals/{id}"), &body).await?;
    let said = match (body["decision"].as_str(), body["steps"].as_str()) {
        (Some("deny"), _) => "denied".to_string(),
        (Some("session"), _) => "approved for this session".to_string(),
        (_, Some(steps)) => format!("approved steps {steps} of"),
        _ => "approved".to_string(),
    };
    println!("{said} {id}");
    Ok(ExitCode::SUCCESS)
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, from milliseconds since the epoch.
pub fn format_ts(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_format_in_utc() {
        assert_eq!(super::format_ts(0), "1970-01-01 00:00:00");
        assert_eq!(super::format_ts(1_795_000_000_000), "2026-11-18 11:06:40");
        assert_eq!(super::format_ts(951_782_400_000), "2000-02-29 00:00:00");
    }
}
