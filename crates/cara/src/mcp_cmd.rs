//! `cara mcp list | tools | test`: the daemon's MCP servers as the owner sees them.
//!
//! Names, descriptions and errors come from the servers, so every field is made
//! printable before it reaches the terminal.

use std::process::ExitCode;

use serde_json::{Value, json};

use crate::chat::printable;
use crate::client::Daemon;
use crate::datadir::DataDir;

fn text(v: &Value) -> String {
    printable(v.as_str().unwrap_or_default())
}

/// `cara mcp list`.
pub async fn list(dd: &DataDir, as_json: bool) -> anyhow::Result<ExitCode> {
    let daemon = Daemon::require(dd).await?;
    let v = daemon.get("/api/mcp").await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_list(&v));
    Ok(ExitCode::SUCCESS)
}

fn render_list(v: &Value) -> String {
    let servers = v["servers"].as_array().cloned().unwrap_or_default();
    if servers.is_empty() {
        return "no MCP servers configured ([[mcp.servers]] in config.toml)\n".into();
    }
    let mut out = String::new();
    for s in &servers {
        out.push_str(&format!(
            "{}  {}  {}  tools: {}  restarts: {}\n",
            text(&s["name"]),
            text(&s["state"]),
            text(&s["transport"]),
            s["tools"].as_u64().unwrap_or(0),
            s["restarts"].as_u64().unwrap_or(0),
        ));
        if let Some(e) = s["last_error"].as_str() {
            out.push_str(&format!("    last error: {}\n", printable(e)));
        }
        if let Some(e) = s["egress"].as_object() {
            let n = |k: &str| e.get(k).and_then(Value::as_u64).unwrap_or(0);
            out.push_str(&format!(
                "    egress: {} connection(s) opened, {} open, {} refused\n",
                n("opened"),
                n("open"),
                n("refused")
            ));
            if let Some(r) = e.get("last_refused").and_then(Value::as_str) {
                out.push_str(&format!("    last refused: {}\n", printable(r)));
            }
        }
        let skipped = s["skipped"].as_array().map_or(0, Vec::len);
        if skipped > 0 {
            out.push_str(&format!(
                "    {skipped} tool(s) not offered; `cara mcp tools {}` says why\n",
                text(&s["name"])
            ));
        }
    }
    out
}

/// `cara mcp tools NAME`.
pub async fn tools(dd: &DataDir, name: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let daemon = Daemon::require(dd).await?;
    let v = daemon
        .get(&format!("/api/mcp/{}/tools", encode(name)))
        .await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_tools(&v));
    Ok(ExitCode::SUCCESS)
}

fn render_tools(v: &Value) -> String {
    let mut out = String::new();
    let tools = v["tools"].as_array().cloned().unwrap_or_default();
    if tools.is_empty() {
        out.push_str("no tools listed yet (`cara mcp list` shows the server's state)\n");
    }
    for t in &tools {
        out.push_str(&format!(
            "{}  effect {}  results {}\n    why: {}\n",
            text(&t["name"]),
            text(&t["effect"]),
            text(&t["result"]),
            text(&t["why"]),
        ));
    }
    for s in v["skipped"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!(
            "not offered: {}: {}\n",
            text(&s["remote"]),
            text(&s["reason"])
        ));
    }
    out
}

/// `cara mcp test NAME`: exit 0 when the server answered with its tools.
pub async fn test(dd: &DataDir, name: &str) -> anyhow::Result<ExitCode> {
    let daemon = Daemon::require(dd).await?;
    eprintln!("connecting to {} ...", printable(name));
    let v = daemon
        .post(&format!("/api/mcp/{}/test", encode(name)), &json!({}))
        .await?;
    if v["ok"] == json!(true) {
        let n = v["tools"].as_array().map_or(0, Vec::len);
        println!("{}: ok, {n} tool(s)", printable(name));
        print!("{}", render_tools(&v));
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{}: FAILED: {}", printable(name), text(&v["error"]));
        Ok(ExitCode::FAILURE)
    }
}

/// Server names are checked by the config; anything else is percent-encoded so it
/// stays one path segment.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_escape_what_servers_say() {
        let v = json!({ "servers": [{
            "name": "gh", "state": "down", "transport": "stdio (sandboxed)", "tools": 2,
            "restarts": 3, "last_error": "boom\u{1b}[2J", "skipped": [{ "remote": "x", "reason": "y" }],
            "egress": { "opened": 4, "open": 1, "refused": 2, "last_refused": "evil.com:443: host evil.com is not allowed\u{1b}[2J" }
        }]});
        let out = render_list(&v);
        assert!(
            out.starts_with("gh  down  stdio (sandboxed)  tools: 2  restarts: 3\n"),
            "{out}"
        );
        assert!(!out.contains('\u{1b}'), "{out}");
        assert!(out.contains("1 tool(s) not offered"), "{out}");
        assert!(
            out.contains("egress: 4 connection(s) opened, 1 open, 2 refused\n    last refused: evil.com:443: host evil.com is not allowed"),
            "{out}"
        );
        let t = json!({ "tools": [{ "name": "gh__a", "effect": "read", "result": "trusted/private", "why": "readOnlyHint: reads only" }],
                        "skipped": [{ "remote": "b.c", "reason": "its input schema has type \"array\"" }] });
        let out = render_tools(&t);
        assert!(
            out.contains("gh__a  effect read  results trusted/private\n    why: readOnlyHint"),
            "{out}"
        );
        assert!(out.contains("not offered: b.c:"), "{out}");
        assert_eq!(encode("a/../b"), "a%2F%2E%2E%2Fb");
    }
}
