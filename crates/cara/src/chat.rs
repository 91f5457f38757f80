//! `cara chat`: a terminal chat over the gateway's WebSocket, with approvals inline.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::client::Daemon;
use crate::config::{self, ProviderSetup};
use crate::datadir::DataDir;

const HELP: &str = "\
commands:
  /help            this help
  /new             start a new session
  /session         show the current session id and its label
  /model [NAME]    show this session's model, or switch it (provider/model or an alias;
                   `/model default` goes back to the configured one)
  /approve [ID] [session|STEPS]
                   approve a pending tool call (this session's newest when no id);
                   `session`: also later calls of that tool to the same places;
                   for a plan, STEPS approves some steps only, like 1-3,5
  /deny [ID]       refuse a pending tool call or plan (this session's newest when no id)
  /reset           reset this session's friction: exposure back to zero, grants gone
  /exit            leave the chat (the gateway keeps running; `cara status`)
anything else is sent to the agent. Ctrl-C cancels a running turn.";

/// The WebSocket answer to an inline approval prompt; anything not understood denies.
/// `plan_steps` is the number of steps of a plan (`None`: a single call); `session` says
/// whether the call offers "approve for this session".
fn approval_reply(id: &Value, plan_steps: Option<usize>, session: bool, answer: &str) -> Value {
    let answer = answer.trim().to_ascii_lowercase();
    let decision = match (answer.as_str(), plan_steps) {
        ("y" | "yes" | "a" | "all", _) => json!({ "decision": "approve" }),
        ("s" | "session", None) if session => json!({ "decision": "session" }),
        (steps, Some(n)) if carapace_gate::parse_step_ranges(steps, n).is_ok() => {
            json!({ "decision": "approve", "steps": steps })
        }
        _ => json!({ "decision": "deny" }),
    };
    let mut reply = json!({ "type": "approval", "id": id });
    if let (Some(r), Value::Object(d)) = (reply.as_object_mut(), decision) {
        r.extend(d);
    }
    reply
}

pub async fn chat(
    dd: &DataDir,
    session: Option<String>,
    no_start: bool,
    allow_hosts: Vec<String>,
) -> anyhow::Result<ExitCode> {
    if session.is_some() && !allow_hosts.is_empty() {
        bail!(
            "--allow-host applies to new sessions only: a session's host list is fixed when it starts"
        );
    }
    if let Err(problem) = carapace_gate::check_host_list(&allow_hosts) {
        bail!("--allow-host: {problem} (use host, host:port or *.domain, without a scheme)");
    }
    let daemon = match Daemon::find(dd).await? {
        Some(d) => d,
        None if no_start => bail!(
            "no gateway is running for {}; start one with `cara serve`",
            dd.root().display()
        ),
        None => {
            // Say what is missing before starting anything.
            let file = config::load(&dd.config())?;
            let settings = config::settings(&dd.config(), &file, &|k| std::env::var(k).ok())?;
            if let ProviderSetup::Missing(hint) = settings.provider {
                eprintln!("cara: {hint}");
                return Ok(ExitCode::from(2));
            }
            eprintln!(
                "cara: starting the gateway in the background (log: {})",
                dd.logs().join("daemon.log").display()
            );
            Daemon::start(dd).await?
        }
    };
    let status = daemon.get("/api/status").await?;
    if status["provider_configured"] != json!(true) {
        let hint = status["provider_hint"]
            .as_str()
            .unwrap_or("no model provider is configured");
        eprintln!(
            "cara: the running gateway has no model provider.\n{hint}\n(then restart the gateway: stop it and run `cara chat` again)"
        );
        return Ok(ExitCode::from(2));
    }
    let mut session = match session {
        Some(id) => {
            daemon
                .get(&format!("/api/sessions/{id}"))
                .await
                .with_context(|| format!("cannot continue session {id}"))?;
            Some(id)
        }
        None => None,
    };

    let mut request = format!("ws://{}/ws", daemon.addr).into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", daemon.token().expose()).parse()?,
    );
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .context("cannot open the chat connection")?;
    let (mut ws_tx, mut ws_rx) = ws.split();

    println!(
        "carapace {} · model {} · /help for commands, /exit to leave",
        status["version"].as_str().unwrap_or("?"),
        status["model"].as_str().unwrap_or("?")
    );
    let mut lines = stdin_lines();
    loop {
        print!("you> ");
        std::io::stdout().flush().ok();
        let line = tokio::select! {
            line = lines.recv() => line,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(line) = line else {
            println!();
            break;
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(cmd) = line.strip_prefix('/') {
            let (name, arg) = cmd
                .split_once(' ')
                .map(|(n, a)| (n, Some(a.trim())))
                .unwrap_or((cmd, None));
            match name {
                "help" | "h" | "?" => println!("{HELP}"),
                "exit" | "quit" | "q" => break,
                "new" => {
                    session = None;
                    println!("(a new session starts with your next message)");
                }
                "session" => match &session {
                    Some(id) => {
                        let s = daemon.get(&format!("/api/sessions/{id}")).await?;
                        let l = &s["session"]["label"];
                        println!(
                            "session {id} · label {}/{}",
                            l["integrity"].as_str().unwrap_or("?"),
                            l["confidentiality"].as_str().unwrap_or("?")
                        );
                        let p = &s["policy"];
                        println!(
                            "friction {} · exposure {} (asks above {}, refuses above {}) · {} grant(s)",
                            p["friction"].as_str().unwrap_or("?"),
                            p["exposure_score"],
                            p["ask_above"],
                            p["deny_above"],
                            p["grants"].as_array().map_or(0, |g| g.len())
                        );
                        if let Some(hosts) = s["session"]["egress_hosts"].as_array() {
                            let hosts: Vec<&str> = hosts.iter().filter_map(Value::as_str).collect();
                            println!("network tools reach only: {}", hosts.join(", "));
                        }
                    }
                    None => println!("(no session yet: it starts with your first message)"),
                },
                "model" => {
                    let reply = match (arg, &session) {
                        (None, Some(id)) => {
                            daemon.get(&format!("/api/sessions/{id}")).await.map(|s| {
                                match s["session"]["model"].as_str() {
                                    Some(m) => format!("model {m} (this session's own)"),
                                    None => format!(
                                        "model {} (configured)",
                                        status["model"].as_str().unwrap_or("?")
                                    ),
                                }
                            })
                        }
                        (None, None) => Ok(format!(
                            "model {} (configured)",
                            status["model"].as_str().unwrap_or("?")
                        )),
                        (Some(name), _) => {
                            let id = match &session {
                                Some(id) => id.clone(),
                                None => {
                                    let id = new_session(&daemon, &allow_hosts).await?;
                                    session = Some(id.clone());
                                    id
                                }
                            };
                            let model = (name != "default").then_some(name);
                            daemon
                                .put(
                                    &format!("/api/sessions/{id}/model"),
                                    &json!({ "model": model }),
                                )
                                .await
                                .map(|v| {
                                    format!(
                                        "this session now uses model {}",
                                        v["model"].as_str().unwrap_or("?")
                                    )
                                })
                        }
                    };
                    match reply {
                        Ok(text) => println!("({})", printable(&text)),
                        Err(e) => println!("error: {e:#}"),
                    }
                }
                "reset" => match &session {
                    Some(id) => match daemon
                        .post(&format!("/api/sessions/{id}/reset"), &json!({}))
                        .await
                    {
                        Ok(v) => println!(
                            "(session reset: friction {}, its label stays what it has seen)",
                            v["policy"]["friction"].as_str().unwrap_or("?")
                        ),
                        Err(e) => println!("error: {e:#}"),
                    },
                    None => println!("(no session yet: it starts with your first message)"),
                },
                "approve" | "deny" => {
                    let mut id_arg = None;
                    let mut how = None;
                    for token in arg.unwrap_or_default().split_whitespace() {
                        if token.starts_with("ap_") {
                            id_arg = Some(token);
                        } else {
                            how = Some(token);
                        }
                    }
                    let id = match id_arg {
                        Some(id) => id.to_string(),
                        // Without an id: the newest request of this chat's session only.
                        None => match daemon.get("/api/approvals").await?["approvals"]
                            .as_array()
                            .and_then(|a| {
                                a.iter()
                                    .rev()
                                    .find(|a| a["session"].as_str() == session.as_deref())
                            }) {
                            Some(a) => a["id"].as_str().unwrap_or_default().to_string(),
                            None => {
                                println!(
                                    "(nothing in this session waits for approval; `cara approvals list` shows all)"
                                );
                                continue;
                            }
                        },
                    };
                    let body = match (name, how) {
                        ("deny", _) => json!({ "decision": "deny" }),
                        (_, None) => json!({ "decision": "approve" }),
                        (_, Some("session")) => json!({ "decision": "session" }),
                        (_, Some(steps)) => json!({ "decision": "approve", "steps": steps }),
                    };
                    match daemon.post(&format!("/api/approvals/{id}"), &body).await {
                        Ok(_) => println!(
                            "({}d {id})",
                            if name == "deny" { "denie" } else { "approve" }
                        ),
                        Err(e) => println!("error: {e:#}"),
                    }
                }
                _ => println!("unknown command /{name}; /help lists them"),
            }
            continue;
        }

        if session.is_none() && !allow_hosts.is_empty() {
            // The session's own host list is set when it is created, so create it here.
            session = Some(new_session(&daemon, &allow_hosts).await?);
        }
        let mut msg = json!({ "type": "chat", "text": line });
        if let Some(id) = &session {
            msg["session"] = json!(id);
        }
        ws_tx
            .send(Message::Text(msg.to_string().into()))
            .await
            .context("the gateway closed the connection")?;
        // Events of this turn until it is done.
        let mut at_line_start = true;
        loop {
            let event = tokio::select! {
                m = ws_rx.next() => m,
                _ = tokio::signal::ctrl_c() => {
                    ws_tx.send(Message::Text(json!({ "type": "cancel" }).to_string().into())).await.ok();
                    println!("\n(cancelled)");
                    // Drain until the gateway confirms.
                    while let Some(Ok(m)) = ws_rx.next().await {
                        if let Message::Text(t) = m
                            && serde_json::from_str::<Value>(&t).is_ok_and(|v| v["type"] == "cancelled") {
                                break;
                            }
                    }
                    break;
                }
            };
            let Some(Ok(Message::Text(text))) = event else {
                match event {
                    Some(Ok(_)) => continue,
                    _ => bail!("the gateway closed the connection"),
                }
            };
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            match v["type"].as_str().unwrap_or("") {
                "session" => session = v["session"].as_str().map(String::from),
                "delta" => {
                    if at_line_start {
                        print!("cara> ");
                        at_line_start = false;
                    }
                    print!("{}", printable(v["text"].as_str().unwrap_or("")));
                    std::io::stdout().flush().ok();
                }
                "tool_call" => {
                    if !at_line_start {
                        println!();
                        at_line_start = true;
                    }
                    println!(
                        "  · {} {}",
                        printable(v["name"].as_str().unwrap_or("?")),
                        printable(v["arguments"].as_str().unwrap_or(""))
                    );
                }
                "tool_result" => {
                    if v["ok"] == json!(true) {
                        println!("    ok");
                    } else {
                        println!("    refused: {}", v["code"].as_str().unwrap_or("?"));
                    }
                }
                "retrying" | "model_switched" => {
                    if !at_line_start {
                        println!();
                        at_line_start = true;
                    }
                    let reason = printable(v["reason"].as_str().unwrap_or(""));
                    if v["type"] == "retrying" {
                        println!(
                            "  (model {} failed: {reason}; trying again in {:.1} s)",
                            printable(v["model"].as_str().unwrap_or("?")),
                            v["wait_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
                        );
                    } else {
                        println!(
                            "  (model {} keeps failing: {reason}; switched to {})",
                            printable(v["from"].as_str().unwrap_or("?")),
                            printable(v["to"].as_str().unwrap_or("?"))
                        );
                    }
                }
                "approval_request" => {
                    if !at_line_start {
                        println!();
                        at_line_start = true;
                    }
                    // Only this chat's own calls are answered here; another session's
                    // request is mentioned, not prompted for.
                    if v["session"].as_str() != session.as_deref() {
                        println!(
                            "  (another session waits for approval {}; see `cara approvals list`)",
                            printable(v["id"].as_str().unwrap_or("?"))
                        );
                        continue;
                    }
                    let args = printable(v["args"].as_str().unwrap_or(""));
                    println!(
                        "  ? approval needed ({}): {}\n      {}\n    because {} [rule {}]",
                        printable(v["id"].as_str().unwrap_or("?")),
                        printable(v["tool"].as_str().unwrap_or("?")),
                        args.replace('\n', "\n      "),
                        printable(v["reason"].as_str().unwrap_or("")),
                        printable(v["rule"].as_str().unwrap_or(""))
                    );
                    // At a terminal only a line typed after the prompt answers it: lines
                    // typed earlier (during the turn, a paste) must not approve anything.
                    // Piped input is a script whose answers are meant in order.
                    let mut discarded = 0;
                    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                        while lines.try_recv().is_ok() {
                            discarded += 1;
                        }
                    }
                    if discarded > 0 {
                        println!(
                            "  ({discarded} line(s) typed during the turn were discarded; answer below)"
                        );
                    }
                    let plan_steps = v["plan"]["steps"].as_array().map(Vec::len);
                    let session_scope = v["session_scope"].as_str().map(printable);
                    match (plan_steps, &session_scope) {
                        (Some(_), _) => print!("    approve? [a]ll / steps like 1-3,5 / [N]o "),
                        (None, Some(scope)) => print!(
                            "    approve? [y]es once / [s]ession: {scope} for the rest of this session / [N]o "
                        ),
                        (None, None) => print!("    approve? [y]es once / [N]o "),
                    }
                    std::io::stdout().flush().ok();
                    let answer = lines.recv().await.unwrap_or_default();
                    let reply =
                        approval_reply(&v["id"], plan_steps, session_scope.is_some(), &answer);
                    ws_tx
                        .send(Message::Text(reply.to_string().into()))
                        .await
                        .ok();
                }
                "approval_resolved" => {}
                "done" => {
                    if at_line_start {
                        println!("cara> {}", printable(v["text"].as_str().unwrap_or("")));
                    } else {
                        println!();
                    }
                    match v["friction"].as_str() {
                        Some("ask") => println!(
                            "  (friction: this session has been granted a lot; every consequential call asks now. /reset resets it)"
                        ),
                        Some("locked") => println!(
                            "  (friction: consequential calls are refused in this session until you /reset it)"
                        ),
                        _ => {}
                    }
                    break;
                }
                "approval_error" => {
                    println!(
                        "  (your answer to {} was not taken: {}; `cara approvals list` shows what waits)",
                        printable(v["id"].as_str().unwrap_or("?")),
                        printable(v["error"]["message"].as_str().unwrap_or(""))
                    );
                }
                "error" => {
                    if !at_line_start {
                        println!();
                    }
                    let code = v["error"]["code"].as_str().unwrap_or("ERROR");
                    let message = printable(v["error"]["message"].as_str().unwrap_or(""));
                    println!("error: {code}: {message}");
                    break;
                }
                _ => {}
            }
        }
    }
    ws_tx.send(Message::Close(None)).await.ok();
    Ok(ExitCode::SUCCESS)
}

/// Creates a session for this chat (with its own host list, if given) and returns its id.
async fn new_session(daemon: &Daemon, allow_hosts: &[String]) -> anyhow::Result<String> {
    let body = if allow_hosts.is_empty() {
        json!({ "title": "chat" })
    } else {
        json!({ "title": "chat", "egress_hosts": allow_hosts })
    };
    let created = daemon
        .post("/api/sessions", &body)
        .await
        .context("cannot start a session")?;
    created["session"]["id"]
        .as_str()
        .map(String::from)
        .context("the gateway answered no session id")
}

/// Model text made safe for a terminal: control characters (escape sequences that could
/// rewrite the screen, hide text or set the clipboard) are shown as `\u{..}` instead.
pub(crate) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        // Control characters, and the invisible ones that reorder or hide text (bidi
        // overrides and isolates, zero-width marks, line separators): escaped.
        let hidden = matches!(
            c,
            '\u{61c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{feff}'
                | '\u{e0000}'..='\u{e007f}'
        );
        if (c.is_control() && c != '\n' && c != '\t') || hidden {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Lines of standard input, read on their own task so a turn can run meanwhile.
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_never_reach_the_terminal() {
        let hostile = "ok\x1b]52;c;aGk=\x07 \x1b[8mhidden\u{9b}2J\nnext\tline";
        let shown = super::printable(hostile);
        assert!(
            !shown
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{shown:?}"
        );
        assert_eq!(
            shown,
            "ok\\u{1b}]52;c;aGk=\\u{7} \\u{1b}[8mhidden\\u{9b}2J\nnext\tline"
        );
    }

    #[test]
    fn text_that_reorders_or_hides_itself_is_escaped() {
        assert_eq!(
            super::printable("evil.net\u{202e}moc.elpmaxe\u{200b}"),
            "evil.net\\u{202e}moc.elpmaxe\\u{200b}"
        );
        assert_eq!(super::printable("café ✓"), "café ✓");
    }

    #[test]
    fn inline_answers_map_to_decisions_and_anything_else_denies() {
        use serde_json::json;
        let id = json!("ap_1");
        let d = |plan, session, a: &str| super::approval_reply(&id, plan, session, a);
        assert_eq!(
            d(None, true, "Y"),
            json!({"type": "approval", "id": "ap_1", "decision": "approve"})
        );
        assert_eq!(d(None, true, "s")["decision"], "session");
        assert_eq!(
            d(None, false, "s")["decision"],
            "deny",
            "no places: no session grant"
        );
        assert_eq!(
            d(Some(2), true, "s")["decision"],
            "deny",
            "a plan has no session answer"
        );
        assert_eq!(d(Some(2), false, "all")["decision"], "approve");
        assert_eq!(d(Some(4), false, "1-2, 4")["steps"], "1-2, 4");
        assert_eq!(d(Some(2), false, "3")["decision"], "deny", "no step 3");
        assert_eq!(d(Some(2), false, "-")["decision"], "deny");
        assert_eq!(
            d(None, true, "1-2")["decision"],
            "deny",
            "steps are for plans"
        );
        assert_eq!(d(None, true, "")["decision"], "deny");
        assert_eq!(d(Some(2), false, "sure")["decision"], "deny");
    }
}
