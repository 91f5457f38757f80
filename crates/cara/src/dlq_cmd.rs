//! `cara dlq list|show|release|discard`: the owner's view of the dead-letter queue, the
//! outbound messages the Gate blocked. The daemon holds the key the texts are sealed
//! with, so every command asks it; nothing here reads the database.
//!
//! Everything shown comes from an agent that was blocked for a reason, so every field is
//! escaped before it reaches the terminal (a message must not be able to rewrite the
//! screen or hide a recipient).

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::chat::printable;
use crate::client::Daemon;
use crate::commands::format_ts;
use crate::datadir::DataDir;

/// Dead-letter ids are made by the store (`dl_` and 16 hex digits); anything else would
/// only reach a 404, but refusing it here keeps odd text out of the request path.
fn check_id(id: &str) -> anyhow::Result<()> {
    let ok = id
        .strip_prefix("dl_")
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        bail!(
            "`{}` is not a dead-letter id (like dl_1a2b3c4d5e6f7a8b; `cara dlq list` shows them)",
            printable(id)
        );
    }
    Ok(())
}

pub async fn list(dd: &DataDir, all: bool, as_json: bool) -> anyhow::Result<ExitCode> {
    let daemon = Daemon::require(dd).await?;
    let v = daemon.get(&format!("/api/dlq?all={all}")).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let letters = v["dead_letters"].as_array().cloned().unwrap_or_default();
    print!("{}", render_list(&letters, all, now_ms()));
    Ok(ExitCode::SUCCESS)
}

pub async fn show(dd: &DataDir, id: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    check_id(id)?;
    let daemon = Daemon::require(dd).await?;
    let v = daemon.get(&format!("/api/dlq/{id}")).await?;
    if as_json {
        // serde_json escapes every control character in a string.
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_show(&v, now_ms()));
    Ok(ExitCode::SUCCESS)
}

/// What the owner decides with `release` or `discard`.
#[derive(Clone, Copy)]
pub enum Decision {
    /// Send the message after all.
    Release,
    /// Throw it away.
    Discard,
}

pub async fn resolve(
    dd: &DataDir,
    id: &str,
    decision: Decision,
    yes: bool,
) -> anyhow::Result<ExitCode> {
    check_id(id)?;
    if !yes && !std::io::stdin().is_terminal() {
        bail!(
            "standard input is not a terminal, so there is no one to ask; add --yes to {} {id} without asking",
            verb(decision)
        );
    }
    let daemon = Daemon::require(dd).await?;
    let v = daemon.get(&format!("/api/dlq/{id}")).await?;
    if v["status"].as_str() != Some("held") {
        bail!(
            "{id} was {} already{}",
            cell(v["status"].as_str().unwrap_or("resolved")),
            match v["resolved_by"].as_str() {
                Some(by) => format!(" by {}", cell(by)),
                None => String::new(),
            }
        );
    }
    let to = cell(v["to"].as_str().unwrap_or("?"));
    let channel = cell(v["channel"].as_str().unwrap_or("?"));
    if !yes {
        let question = match decision {
            Decision::Release => {
                // The owner sees exactly what they are about to send.
                print!("{}", render_show(&v, now_ms()));
                format!("send this message to {to} via {channel}? [y/N] ")
            }
            Decision::Discard => {
                format!("discard the message to {to} via {channel}? It cannot be recovered. [y/N] ")
            }
        };
        if !confirm(&question)? {
            println!("nothing done; {id} stays held");
            return Ok(ExitCode::FAILURE);
        }
    }
    match decision {
        Decision::Release => {
            let _: Value = daemon
                .post(&format!("/api/dlq/{id}/release"), &json!({}))
                .await?;
            println!("released {id}: sent to {to} via {channel}");
        }
        Decision::Discard => {
            let _: Value = daemon
                .post(&format!("/api/dlq/{id}/discard"), &json!({}))
                .await?;
            println!("discarded {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verb(decision: Decision) -> &'static str {
    match decision {
        Decision::Release => "release",
        Decision::Discard => "discard",
    }
}

/// Asks at the terminal; only `y` or `yes` agrees.
fn confirm(question: &str) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    out.write_all(question.as_bytes())?;
    out.flush()?;
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One value on one line: escaped like the chat, and newlines and tabs too.
fn cell(text: &str) -> String {
    printable(text).replace('\n', "\\n").replace('\t', "\\t")
}

/// At most `width` characters, the cut marked with `…`.
fn cut(text: String, width: usize) -> String {
    if text.chars().count() <= width {
        return text;
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// How long ago, in the largest unit that is at least 1.
fn age(now_ms: i64, then_ms: i64) -> String {
    let secs = (now_ms - then_ms).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m", secs / 60),
        3_600..172_800 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Why it was blocked: the code, and the rule when one decided.
fn why(v: &Value) -> String {
    let code = v["code"].as_str().unwrap_or("?");
    match v["rule"].as_str() {
        Some(rule) => cell(&format!("{code} {rule}")),
        None => cell(code),
    }
}

/// The table of `cara dlq list`.
fn render_list(letters: &[Value], all: bool, now_ms: i64) -> String {
    if letters.is_empty() {
        return if all {
            "no dead letters\n".into()
        } else {
            "no dead letters held (`cara dlq list --all` shows released and discarded ones)\n"
                .into()
        };
    }
    let rows: Vec<[String; 7]> = letters
        .iter()
        .map(|l| {
            [
                cut(cell(l["id"].as_str().unwrap_or("?")), 19),
                age(now_ms, l["created_ms"].as_i64().unwrap_or(now_ms)),
                cut(cell(l["channel"].as_str().unwrap_or("?")), 16),
                cut(cell(l["to"].as_str().unwrap_or("?")), 28),
                cut(why(l), 40),
                l["bytes"].as_u64().map_or("?".into(), |b| b.to_string()),
                cell(l["status"].as_str().unwrap_or("?")),
            ]
        })
        .collect();
    let header = ["ID", "AGE", "CHANNEL", "TO", "CODE/RULE", "BYTES", "STATUS"];
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            let pad = w - c.chars().count();
            match i {
                // Numbers to the right, the last column unpadded.
                5 => out.push_str(&format!("{}{c}  ", " ".repeat(pad))),
                6 => out.push_str(c),
                _ => out.push_str(&format!("{c}{}  ", " ".repeat(pad))),
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(&header.map(String::from));
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

/// The text of `cara dlq show`: the metadata, then the message, each of its lines
/// indented so it cannot pass for output of `cara`.
fn render_show(v: &Value, now_ms: i64) -> String {
    let s = |key: &str| cell(v[key].as_str().unwrap_or("?"));
    let created = v["created_ms"].as_i64().unwrap_or(0);
    let mut out = format!(
        "{}  {}\n  to {} via {}\n  blocked {} ({} ago) at stage {}: {}\n  from {} in session {}\n",
        s("id"),
        s("status"),
        s("to"),
        s("channel"),
        format_ts(created),
        age(now_ms, created),
        s("stage"),
        why(v),
        s("principal"),
        s("session"),
    );
    if let (Some(at), Some(by)) = (v["resolved_ms"].as_i64(), v["resolved_by"].as_str()) {
        out.push_str(&format!(
            "  {} {} by {}\n",
            s("status"),
            format_ts(at),
            cell(by)
        ));
    }
    match v["text"].as_str() {
        Some(text) => {
            out.push_str(&format!(
                "message ({} bytes):\n",
                v["bytes"].as_u64().map_or("?".into(), |b| b.to_string())
            ));
            for line in text.split('\n') {
                out.push_str(&format!("  | {}\n", printable(line).replace('\t', "\\t")));
            }
        }
        None => out.push_str("message: (not available)\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use expect_test::expect;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000_000;

    fn letter(
        id: &str,
        ago_ms: i64,
        to: &str,
        rule: Option<&str>,
        status: &str,
    ) -> serde_json::Value {
        json!({
            "id": id, "created_ms": NOW - ago_ms, "session": "s_run1",
            "principal": "agent:r1@socket", "channel": "imsg", "to": to,
            "code": if rule.is_some() { "POLICY_DENIED" } else { "UNAUTHORIZED" },
            "stage": if rule.is_some() { "policy" } else { "authorize" },
            "rule": rule, "bytes": 1234, "status": status,
            "resolved_ms": null, "resolved_by": null
        })
    }

    #[test]
    fn list_is_a_table_with_every_field_escaped() {
        let letters = [
            letter("dl_00000000000000aa", 42_000, "+14155550100", None, "held"),
            letter(
                "dl_00000000000000bb",
                3 * 3_600_000,
                "x@example.com\x1b[2K\rok",
                Some("channel.imsg.filter.0"),
                "held",
            ),
            letter(
                "dl_00000000000000cc",
                9 * 86_400_000,
                "a-very-long-recipient-name@some.example.org",
                None,
                "released",
            ),
        ];
        let table = super::render_list(&letters, true, NOW);
        assert!(
            !table.chars().any(|c| c.is_control() && c != '\n'),
            "{table:?}"
        );
        expect![[r#"
            ID                   AGE  CHANNEL  TO                            CODE/RULE                            BYTES  STATUS
            dl_00000000000000aa  42s  imsg     +14155550100                  UNAUTHORIZED                          1234  held
            dl_00000000000000bb  3h   imsg     x@example.com\u{1b}[2K\u{d}…  POLICY_DENIED channel.imsg.filter.0   1234  held
            dl_00000000000000cc  9d   imsg     a-very-long-recipient-name@…  UNAUTHORIZED                          1234  released
        "#]]
        .assert_eq(&table);
        expect![[r#"
            no dead letters held (`cara dlq list --all` shows released and discarded ones)
        "#]]
        .assert_eq(&super::render_list(&[], false, NOW));
    }

    #[test]
    fn show_prints_metadata_then_the_text_escaped_and_indented() {
        let mut v = letter(
            "dl_00000000000000aa",
            90_000,
            "+14155550100",
            None,
            "released",
        );
        v["resolved_ms"] = json!(NOW);
        v["resolved_by"] = json!("owner@cli\n");
        v["text"] = json!("hi\n\x1b]52;c;aGk=\x07the code is 1234\u{202e}\tend\nresolved by owner");
        let shown = super::render_show(&v, NOW);
        assert!(
            !shown.chars().any(|c| c.is_control() && c != '\n'),
            "{shown:?}"
        );
        expect![[r#"
            dl_00000000000000aa  released
              to +14155550100 via imsg
              blocked 2027-01-15 07:58:30 (1m ago) at stage authorize: UNAUTHORIZED
              from agent:r1@socket in session s_run1
              released 2027-01-15 08:00:00 by owner@cli\n
            message (1234 bytes):
              | hi
              | \u{1b}]52;c;aGk=\u{7}the code is 1234\u{202e}\tend
              | resolved by owner
        "#]]
        .assert_eq(&shown);
    }

    #[test]
    fn ids_are_checked_and_ages_rounded_down() {
        assert!(super::check_id("dl_0123456789abcdef").is_ok());
        for bad in [
            "",
            "dl_",
            "dl_0123456789abcde",
            "dl_0123456789abcdeg",
            "s_1",
            "dl_../../x",
        ] {
            assert!(super::check_id(bad).is_err(), "{bad}");
        }
        let err = super::check_id("\x1b[2J").unwrap_err().to_string();
        assert!(err.contains("\\u{1b}[2J"), "{err}");
        assert_eq!(super::age(NOW, NOW + 5_000), "0s");
        assert_eq!(super::age(NOW, NOW - 59_999), "59s");
        assert_eq!(super::age(NOW, NOW - 60_000), "1m");
        assert_eq!(super::age(NOW, NOW - 47 * 3_600_000), "47h");
        assert_eq!(super::age(NOW, NOW - 48 * 3_600_000), "2d");
    }
}
