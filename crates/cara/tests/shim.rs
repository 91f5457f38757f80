//! The shims and `cara ipc` as the real binary runs them: each test starts a fake agent
//! socket (a std `UnixListener` in a temporary directory that answers canned JSON-RPC
//! lines), links the `cara` binary under a shim's name and runs it with
//! `CARAPACE_SOCKET` set, like a sandboxed agent would.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Closes the connection when it appears among a fake daemon's answers.
const CLOSE: &str = "<close>";

/// A fake daemon: every request line it reads is recorded, and answered with the lines
/// `answer` gives for it.
struct Fake {
    dir: tempfile::TempDir,
    socket: PathBuf,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Fake {
    fn start(answer: impl Fn(&Value) -> Vec<String> + Send + Sync + 'static) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(answer);
        let recorded = Arc::clone(&seen);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (answer, recorded) = (Arc::clone(&answer), Arc::clone(&recorded));
                thread::spawn(move || serve(stream, &*answer, &recorded));
            }
        });
        Fake { dir, socket, seen }
    }

    fn seen(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(stream: UnixStream, answer: &dyn Fn(&Value) -> Vec<String>, seen: &Mutex<Vec<Value>>) {
    let mut writer = stream.try_clone().unwrap();
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let request: Value = serde_json::from_str(&line).unwrap();
        seen.lock().unwrap().push(request.clone());
        for reply in answer(&request) {
            if reply == CLOSE {
                let _ = writer.shutdown(std::net::Shutdown::Both);
                return;
            }
            // The client may have gone (a line over its limit): not this test's failure.
            if writer.write_all(reply.as_bytes()).is_err() || writer.write_all(b"\n").is_err() {
                return;
            }
        }
    }
}

fn result(request: &Value, result: Value) -> String {
    json!({"jsonrpc": "2.0", "id": request["id"], "result": result}).to_string()
}

fn message(channel: &str, m: Value) -> String {
    json!({"jsonrpc": "2.0", "method": "channel.message",
           "params": {"channel": channel, "message": m}})
    .to_string()
}

fn unauthorized(request: &Value) -> String {
    let channel = request["params"]["channel"].as_str().unwrap_or_default();
    json!({"jsonrpc": "2.0", "id": request["id"], "error": {
        "code": -32003,
        "message": format!("+1999... is not on the outbound allowlist of channel {channel}"),
        "data": {"code": "UNAUTHORIZED", "stage": "authorize", "retriable": false,
                 "dead_letter": true}}})
    .to_string()
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `cara` linked as `name` (or as itself for "cara"), failing the test instead of
/// hanging if it takes more than 20 seconds.
fn run(dir: &Path, name: &str, args: &[&str], socket: Option<&Path>, stdin: &str) -> Ran {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_cara"));
    let program = if name == "cara" {
        exe
    } else {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(&exe, &link).unwrap();
        }
        link
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove("CARAPACE_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(socket) = socket {
        cmd.env("CARAPACE_SOCKET", socket);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        text
    });
    let err = thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{name} {args:?} hung");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Ran {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn shim(fake: &Fake, name: &str, args: &[&str]) -> Ran {
    run(fake.dir.path(), name, args, Some(&fake.socket), "")
}

#[test]
fn imsg_send_makes_the_request_and_prints_like_imsg() {
    let fake = Fake::start(|req| vec![result(req, json!({"sent": true, "channel": "imsg"}))]);
    let ran = shim(
        &fake,
        "imsg",
        &["send", "--to", "+14155550100", "--text", "hi there"],
    );
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
        (0, "sent\n", "")
    );
    assert_eq!(
        fake.seen(),
        vec![json!({"jsonrpc": "2.0", "id": 1, "method": "channel.send",
                    "params": {"channel": "imsg", "to": "+14155550100", "text": "hi there"}})]
    );
}

#[test]
fn a_refusal_prints_the_code_and_exits_1() {
    let fake = Fake::start(|req| vec![unauthorized(req)]);
    let ran = shim(&fake, "imsg", &["send", "--to", "+1999", "--text", "hi"]);
    assert_eq!(ran.code, 1);
    assert_eq!(ran.stdout, "");
    assert_eq!(
        ran.stderr,
        "imsg: send failed: UNAUTHORIZED: +1999... is not on the outbound allowlist of channel imsg\n"
    );
    let ran = shim(&fake, "discord", &["message", "send", "general", "hi"]);
    assert_eq!(ran.code, 1);
    assert_eq!(
        ran.stderr,
        "Error: message send failed: UNAUTHORIZED: +1999... is not on the outbound allowlist of channel discord\n"
    );
}

#[test]
fn imsg_history_and_chats_print_in_imsg_formats() {
    let fake = Fake::start(|req| {
        let answer = match req["method"].as_str() {
            Some("channel.history") => json!({"messages": [
                {"id": "41", "chat": "7", "from": "+14155550100", "text": "lunch?",
                 "at": "2025-01-02T12:30:00.000Z", "from_me": false}], "filtered": 0}),
            _ => json!({"chats": [{"id": "7", "name": "Alice",
                                   "last_message_at": "2025-01-02T12:30:00.000Z"}]}),
        };
        vec![result(req, answer)]
    });
    let ran = shim(
        &fake,
        "imsg",
        &["history", "--chat-id", "7", "--limit", "1"],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(
        ran.stdout,
        "2025-01-02T12:30:00.000Z [recv] +14155550100: lunch?\n"
    );
    let ran = shim(&fake, "imsg", &["chats", "--json"]);
    assert_eq!(
        ran.stdout,
        "{\"id\":7,\"name\":\"Alice\",\"identifier\":\"7\",\"service\":\"\",\"last_message_at\":\"2025-01-02T12:30:00.000Z\"}\n"
    );
    assert_eq!(
        fake.seen()[0]["params"],
        json!({"channel": "imsg", "chat": "7", "limit": 1})
    );
    assert_eq!(
        fake.seen()[1]["params"],
        json!({"channel": "imsg", "limit": 20})
    );
}

#[test]
fn signal_cli_sends_to_each_recipient_and_receives_until_the_end() {
    let fake = Fake::start(|req| match req["method"].as_str() {
        Some("channel.send") => vec![result(
            req,
            json!({"sent": true, "timestamp": 1700000000000_i64}),
        )],
        _ => vec![
            result(req, json!({"watching": true})),
            message(
                "signal-cli",
                json!({"id": "1", "chat": "+14155550100",
                "from": "+14155550100", "text": "hello", "at": "2023-11-14T22:13:20.000Z",
                "from_me": false}),
            ),
            CLOSE.into(),
        ],
    });
    let ran = shim(
        &fake,
        "signal-cli",
        &[
            "-a",
            "+15550001",
            "send",
            "-m",
            "hi",
            "+14155550100",
            "+14155550101",
        ],
    );
    assert_eq!(
        (ran.code, ran.stdout.as_str()),
        (0, "1700000000000\n"),
        "{}",
        ran.stderr
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!((&seen[0]["id"], &seen[1]["id"]), (&json!(1), &json!(2)));
    assert_eq!(seen[1]["params"]["to"], "+14155550101");

    let ran = shim(&fake, "signal-cli", &["receive", "-t", "-1"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(
        ran.stdout,
        "Envelope from: +14155550100\nTimestamp: 1700000000000 (2023-11-14T22:13:20.000Z)\nBody: hello\n\n"
    );
}

#[test]
fn gog_sends_the_subject_in_the_text_and_searches() {
    let fake = Fake::start(|req| match req["method"].as_str() {
        Some("channel.send") => vec![result(req, json!({"sent": true}))],
        _ => vec![result(
            req,
            json!({"chats": [
            {"id": "18c2f", "name": "Invoice 42", "last_message_at": "2025-01-02T12:31:00Z"}]}),
        )],
    });
    let ran = shim(
        &fake,
        "gog",
        &[
            "gmail",
            "send",
            "--to",
            "a@example.com",
            "--subject",
            "Hi",
            "--body",
            "Hello",
        ],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.stdout, "message_id\t\n");
    assert_eq!(
        fake.seen()[0]["params"],
        json!({"channel": "gog", "to": "a@example.com", "text": "Subject: Hi\n\nHello"})
    );
    let ran = shim(&fake, "gog", &["--plain", "gmail", "search", "invoice"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(
        ran.stdout,
        "ID\tDATE\tFROM\tSUBJECT\tLABELS\n18c2f\t2025-01-02 12:31\t\tInvoice 42\t\n"
    );
}

#[test]
fn commands_not_covered_and_help() {
    let fake = Fake::start(|_| vec![]);
    let ran = shim(&fake, "discord", &["member", "ban", "srv", "bob"]);
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr
            .starts_with("discord: member ban is not available inside Carapace (covered: "),
        "{}",
        ran.stderr
    );
    let ran = shim(&fake, "gog", &["--help"]);
    assert_eq!(ran.code, 0);
    assert!(
        ran.stdout.starts_with("gog: a Carapace shim"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout
            .contains("gog [--account A] [--json|--plain] gmail send")
    );
    assert_eq!(fake.seen(), Vec::<Value>::new());
}

#[test]
fn without_the_socket_a_shim_and_cara_ipc_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(dir.path(), "imsg", &["chats"], None, "");
    assert_eq!(ran.code, 2);
    assert_eq!(
        ran.stderr,
        "imsg: cannot reach the Carapace daemon: CARAPACE_SOCKET is not set; cara ipc runs \
         inside a Carapace sandbox (cara agent run)\n"
    );
    let ran = run(dir.path(), "cara", &["ipc", "session.info"], None, "");
    assert_eq!(ran.code, 2);
    assert_eq!(
        ran.stderr,
        "cara ipc: CARAPACE_SOCKET is not set; cara ipc runs inside a Carapace sandbox (cara agent run)\n"
    );
    let gone = dir.path().join("gone.sock");
    let ran = run(
        dir.path(),
        "cara",
        &["ipc", "session.info"],
        Some(&gone),
        "",
    );
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr
            .starts_with("cara ipc: cannot connect to the agent socket"),
        "{}",
        ran.stderr
    );
}

#[test]
fn cara_ipc_exit_codes() {
    let fake = Fake::start(|req| match req["method"].as_str() {
        Some("channel.send") => vec![unauthorized(req)],
        Some("channel.watch") => vec![
            result(req, json!({"watching": true})),
            json!({"jsonrpc": "2.0", "method": "other", "params": {}}).to_string(),
            message("imsg", json!({"id": "1", "text": "one"})),
            message("imsg", json!({"id": "2", "text": "two"})),
            CLOSE.into(),
        ],
        _ => vec![result(req, json!({"echo": req["params"]}))],
    });
    let dir = fake.dir.path();
    let ran = run(
        dir,
        "cara",
        &["ipc", "tools.call", r#"{"name":"x"}"#],
        Some(&fake.socket),
        "",
    );
    assert_eq!(
        (ran.code, ran.stdout.as_str()),
        (0, "{\"echo\":{\"name\":\"x\"}}\n")
    );
    let ran = run(
        dir,
        "cara",
        &["ipc", "session.info"],
        Some(&fake.socket),
        "",
    );
    assert_eq!(ran.stdout, "{\"echo\":{}}\n");
    let ran = run(
        dir,
        "cara",
        &["ipc", "tools.call", "-"],
        Some(&fake.socket),
        "{\"a\":[1]}",
    );
    assert_eq!(ran.stdout, "{\"echo\":{\"a\":[1]}}\n");

    let ran = run(
        dir,
        "cara",
        &["ipc", "channel.send", "{}"],
        Some(&fake.socket),
        "",
    );
    assert_eq!(ran.code, 1);
    let error: Value = serde_json::from_str(ran.stderr.trim_end()).unwrap();
    assert_eq!(error["code"], -32003);
    assert_eq!(error["data"]["code"], "UNAUTHORIZED");
    assert_eq!(ran.stderr.lines().count(), 1);

    let ran = run(
        dir,
        "cara",
        &["ipc", "tools.call", "{nope"],
        Some(&fake.socket),
        "",
    );
    assert_eq!(ran.code, 2);

    let ran = run(
        dir,
        "cara",
        &["ipc", "channel.watch", r#"{"channel":"imsg"}"#],
        Some(&fake.socket),
        "",
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(
        ran.stdout,
        "{\"watching\":true}\n\
         {\"channel\":\"imsg\",\"message\":{\"id\":\"1\",\"text\":\"one\"}}\n\
         {\"channel\":\"imsg\",\"message\":{\"id\":\"2\",\"text\":\"two\"}}\n"
    );
}

#[test]
fn a_response_line_over_the_limit_is_an_error_not_a_hang() {
    // 16 MiB and one byte more, without a newline for the client to wait for.
    let fake = Fake::start(|_| vec!["x".repeat(16 * 1024 * 1024 + 1)]);
    let ran = run(
        fake.dir.path(),
        "cara",
        &["ipc", "tools.list"],
        Some(&fake.socket),
        "",
    );
    assert_eq!(ran.code, 2);
    assert_eq!(
        ran.stderr,
        "cara ipc: the daemon sent a line longer than 16777216 bytes\n"
    );
    let ran = shim(&fake, "imsg", &["chats"]);
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr.contains("longer than 16777216 bytes"),
        "{}",
        ran.stderr
    );
}

#[test]
fn shim_install_links_names_to_the_target_and_list_covers_each() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("shims");
    let exe = env!("CARGO_BIN_EXE_cara");
    let ran = run(
        dir.path(),
        "cara",
        &[
            "shim",
            "install",
            "--dir",
            bin.to_str().unwrap(),
            "--target",
            exe,
            "imsg",
            "gog",
        ],
        None,
        "",
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(
        ran.stdout,
        format!("{0}/imsg -> {exe}\n{0}/gog -> {exe}\n", bin.display())
    );
    assert_eq!(
        std::fs::read_link(bin.join("imsg")).unwrap(),
        Path::new(exe)
    );
    // The link runs as the shim.
    let ran = run(&bin, "imsg", &["--version"], None, "");
    assert!(
        ran.stdout.starts_with("imsg (Carapace shim"),
        "{}",
        ran.stdout
    );

    let ran = run(
        dir.path(),
        "cara",
        &["shim", "install", "--dir", bin.to_str().unwrap(), "imsg"],
        None,
        "",
    );
    assert_eq!(ran.code, 1);
    assert!(
        ran.stderr.contains("exists; pass --force to replace it"),
        "{}",
        ran.stderr
    );
    let ran = run(
        dir.path(),
        "cara",
        &[
            "shim",
            "install",
            "--dir",
            bin.to_str().unwrap(),
            "telegram",
        ],
        None,
        "",
    );
    assert_eq!(ran.code, 1);
    assert!(
        ran.stderr.contains("unknown shim \"telegram\""),
        "{}",
        ran.stderr
    );

    let ran = run(dir.path(), "cara", &["shim", "list"], None, "");
    for tool in ["imsg", "signal-cli", "discord", "gog"] {
        assert!(ran.stdout.contains(&format!(" {tool} ")), "{}", ran.stdout);
    }
}
