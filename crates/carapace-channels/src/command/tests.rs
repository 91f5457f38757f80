//! The command backend against fake CLIs: small shell scripts in a temporary directory,
//! run as `/bin/sh SCRIPT ARGS...` (the script is read, never executed as a file, so no
//! "text file busy" races with other tests' forks). The scripts record their argv one
//! `[arg]` a line, so the tests see exactly what a real CLI would receive.

use std::path::{Path, PathBuf};
use std::time::Instant;

use expect_test::{Expect, expect};

use super::*;

fn argv(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn check_template(op: Op, items: &[&str], expected: Expect) {
    let actual = match Template::parse(op, &argv(items)) {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    expected.assert_eq(&actual);
}

#[test]
fn templates_are_checked() {
    check_template(
        Op::Send,
        &["/bin/imsg", "send", "--to", "{to}", "--text={text}"],
        expect!["ok"],
    );
    check_template(
        Op::Send,
        &[],
        expect!["the command is empty; its first element is the program"],
    );
    check_template(
        Op::Send,
        &["imsg", "send"],
        expect!["the program `imsg` must be an absolute path"],
    );
    check_template(
        Op::Send,
        &["{to}", "send"],
        expect!["the program must not hold a placeholder"],
    );
    check_template(
        Op::Send,
        &["/bin/imsg", "{foo}"],
        expect!["unknown placeholder `{foo}`; placeholders are {to}, {text}, {chat} and {limit}"],
    );
    check_template(
        Op::ListChats,
        &["/bin/imsg", "chats", "--to={to}"],
        expect!["list_chats has no value for `{to}`; it takes {limit}"],
    );
    check_template(
        Op::Watch,
        &["/bin/imsg", "watch", "{limit}"],
        expect!["watch has no value for `{limit}`; it takes no placeholders"],
    );
    check_template(
        Op::Send,
        &["/bin/imsg", "a\0b"],
        expect!["an argument holds a NUL character"],
    );
    // Braces that are not a placeholder are text.
    check_template(
        Op::History,
        &["/bin/x", "{}", "{\"a\":1}", "{ chat }", "{chat}{limit}"],
        expect!["ok"],
    );
}

/// A temporary directory holding fake CLIs and what they record.
struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes script `name` and returns the template prefix that runs it.
    fn script(&self, name: &str, body: &str) -> Vec<String> {
        let path = self.path(name);
        std::fs::write(&path, body).unwrap();
        vec!["/bin/sh".to_owned(), path.display().to_string()]
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).unwrap();
    }

    fn backend(&self, ops: &[(Op, Vec<String>)]) -> CommandBackend {
        let get = |op| {
            ops.iter()
                .find(|(o, _)| *o == op)
                .map(|(_, argv)| Template::parse(op, argv).unwrap())
        };
        CommandBackend::new(CommandConfig {
            send: get(Op::Send)
                .unwrap_or_else(|| Template::parse(Op::Send, &argv(&["/bin/false"])).unwrap()),
            list_chats: get(Op::ListChats),
            history: get(Op::History),
            watch: get(Op::Watch),
            env: vec![("FAKE_DIR".into(), self.dir.path().display().to_string())],
            home: Some(PathBuf::from("/nonexistent-home")),
            timeout: Duration::from_secs(10),
        })
    }
}

/// Records its arguments, one `[arg]` a line, in `$FAKE_DIR/args`.
const RECORD_ARGS: &str = r#"for a in "$@"; do printf '[%s]\n' "$a"; done > "$FAKE_DIR/args"
"#;

fn with(prefix: &[String], rest: &[&str]) -> Vec<String> {
    prefix.iter().cloned().chain(argv(rest)).collect()
}

#[tokio::test]
async fn argv_arrives_intact_without_a_shell() {
    let fake = Fake::new();
    let body = format!("{RECORD_ARGS}env > \"$FAKE_DIR/env\"\n");
    let cli = fake.script("imsg", &body);
    let backend = fake.backend(&[(
        Op::Send,
        with(&cli, &["send", "--to", "{to}", "--text={text}", "{text}"]),
    )]);
    let pwned = fake.path("pwned");
    let text = format!(
        "it's \"quoted\" $(touch {0}); touch {0} `touch {0}` | && * ~ \\n\nsecond line",
        pwned.display()
    );
    backend
        .send(Outgoing {
            to: "+1 (415) 555-0100",
            text: &text,
        })
        .await
        .unwrap();
    let expected = format!("[send]\n[--to]\n[+1 (415) 555-0100]\n[--text={text}]\n[{text}]\n");
    assert_eq!(fake.read("args"), expected);
    assert!(!pwned.exists(), "a shell ran the text");

    // The environment is cleared but for PATH, LANG, HOME and the configured pairs
    // (sh adds PWD and a few of its own).
    let env = fake.read("env");
    for line in [
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "LANG=C.UTF-8",
        "HOME=/nonexistent-home",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} missing from\n{env}");
    }
    assert!(env.contains("FAKE_DIR="));
    assert!(
        !env.lines()
            .any(|l| l.starts_with("CARGO") || l.starts_with("RUST")),
        "the daemon's environment leaked:\n{env}"
    );
}

/// One line per send attempt: `ok` and the argv the CLI got, or the error.
async fn check_sends(template: &[&str], sends: &[(&str, &str)], expected: Expect) {
    let fake = Fake::new();
    let cli = fake.script("cli", RECORD_ARGS);
    let backend = fake.backend(&[(Op::Send, with(&cli, template))]);
    let mut actual = String::new();
    for (to, text) in sends {
        std::fs::remove_file(fake.path("args")).ok();
        match backend.send(Outgoing { to, text }).await {
            Ok(()) => actual += &format!("ok {}\n", fake.read("args").replace('\n', "")),
            Err(e) => {
                assert_eq!(fake.read("args"), "", "the CLI ran for a refused value");
                actual += &format!("{e}\n");
            }
        }
    }
    expected.assert_eq(&actual);
}

#[tokio::test]
async fn values_that_would_be_options_are_refused() {
    check_sends(
        &["send", "{to}", "{text}"],
        &[
            ("--exec=x", "hi"),
            ("+14155550100", "-rf"),
            ("+14155550100", "- list item"),
            ("+14155550100", "a-b"),
            ("", "hi"),
            ("+1415\n5550100", "hi"),
            (&"1".repeat(257), "hi"),
            ("+14155550100", "nul\0here"),
        ],
        expect![[r#"
            bad value for {to}: starts with `-`, which the program would read as an option; the template must put `--` before it
            bad value for {text}: starts with `-`, which the program would read as an option; the template must put `--` before it
            bad value for {text}: starts with `-`, which the program would read as an option; the template must put `--` before it
            ok [send][+14155550100][a-b]
            bad value for {to}: is empty
            bad value for {to}: holds control characters
            bad value for {to}: is longer than 256 bytes
            bad value for {text}: holds a NUL character
        "#]],
    )
    .await;
    // After `--` the CLI reads no options, and inside an argument a dash is harmless.
    check_sends(
        &["send", "--to={to}", "--", "{text}"],
        &[("--exec=x", "-rf"), ("a", "--help")],
        expect![[r#"
            ok [send][--to=--exec=x][--][-rf]
            ok [send][--to=a][--][--help]
        "#]],
    )
    .await;
    // A value that starts an argument after another empty value counts too.
    check_sends(
        &["send", "{to}", "{text}{text}"],
        &[("a", "-x")],
        expect![[r#"
            bad value for {text}: starts with `-`, which the program would read as an option; the template must put `--` before it
        "#]],
    )
    .await;
}

#[tokio::test]
async fn failures_timeouts_and_missing_operations() {
    let fake = Fake::new();
    let cli = fake.script(
        "fail",
        "printf '\\n  imsg: no chat \\033[31mnamed\\033[0m x\\n' >&2\necho second >&2\nexit 3\n",
    );
    let backend = fake.backend(&[(Op::Send, with(&cli, &[]))]);
    let err = backend
        .send(Outgoing { to: "a", text: "b" })
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ChannelError::Backend {
            status: Some(3),
            message: "imsg: no chat [31mnamed[0m x".to_owned()
        }
    );
    expect!["backend failed (exit status 3): imsg: no chat [31mnamed[0m x"]
        .assert_eq(&err.to_string());

    let cli = fake.script("long", "head -c 1000 /dev/zero | tr '\\0' x >&2\nexit 1\n");
    let backend = fake.backend(&[(Op::Send, with(&cli, &[]))]);
    match backend.send(Outgoing { to: "a", text: "b" }).await {
        Err(ChannelError::Backend { message, .. }) => assert_eq!(message, "x".repeat(200)),
        other => panic!("{other:?}"),
    }

    // No template for history: unsupported, nothing runs.
    assert_eq!(
        backend.history("chat", 5).await.unwrap_err(),
        ChannelError::Unsupported("history")
    );
    assert_eq!(
        backend.watch().await.err(),
        Some(ChannelError::Unsupported("watch"))
    );

    let missing = fake.backend(&[(Op::Send, argv(&["/nonexistent/imsg"]))]);
    assert!(matches!(
        missing.send(Outgoing { to: "a", text: "b" }).await,
        Err(ChannelError::Spawn(_))
    ));
}

#[tokio::test]
async fn a_timeout_kills_the_command() {
    let fake = Fake::new();
    let cli = fake.script("slow", "echo $$ > \"$FAKE_DIR/pid\"\nexec sleep 30\n");
    let mut backend = fake.backend(&[(Op::Send, with(&cli, &[]))]);
    backend.config.timeout = Duration::from_millis(500);
    let start = Instant::now();
    let err = backend
        .send(Outgoing { to: "a", text: "b" })
        .await
        .unwrap_err();
    assert_eq!(err, ChannelError::Timeout);
    assert!(start.elapsed() < Duration::from_secs(10));
    let pid = fake.read("pid").trim().to_owned();
    assert!(!pid.is_empty());
    assert!(gone(&pid), "the timed-out command {pid} still runs");
}

/// Whether process `pid` has ended (gone, or a zombie), within a few seconds.
fn gone(pid: &str) -> bool {
    let stat = Path::new("/proc").join(pid).join("stat");
    for _ in 0..100 {
        match std::fs::read_to_string(&stat) {
            Err(_) => return true,
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                return true;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    false
}

async fn check_list(output: &str, expected: Expect) {
    let fake = Fake::new();
    fake.write("out", output);
    let cli = fake.script("chats", &format!("{RECORD_ARGS}cat \"$FAKE_DIR/out\"\n"));
    let backend = fake.backend(&[(Op::ListChats, with(&cli, &["chats", "--limit", "{limit}"]))]);
    let actual = match backend.list_chats(7).await {
        Ok(chats) => {
            assert_eq!(fake.read("args"), "[chats]\n[--limit]\n[7]\n");
            format!("{chats:#?}\n")
        }
        Err(e) => format!("{e}\n"),
    };
    expected.assert_eq(&actual);
}

#[tokio::test]
async fn chats_from_json_lines_or_an_array() {
    check_list(
        concat!(
            r#"{"chat_id": 7, "display_name": "Alice", "last_message_at": "2024-05-01T10:00:00Z"}"#,
            "\nnot json\n[1, 2]\n\n",
            r#"{"id": "c2"}"#,
            "\n",
            r#"{"name": "no id"}"#,
            "\n",
            r#"  {"guid": "iMessage;-;+1415", "identifier": "+1415", "date": 1714557600}"#,
        ),
        expect![[r#"
            [
                Chat {
                    id: "7",
                    name: "Alice",
                    last_message_at: Some(
                        "2024-05-01T10:00:00Z",
                    ),
                },
                Chat {
                    id: "c2",
                    name: "c2",
                    last_message_at: None,
                },
                Chat {
                    id: "iMessage;-;+1415",
                    name: "+1415",
                    last_message_at: Some(
                        "1714557600",
                    ),
                },
            ]
        "#]],
    )
    .await;
    check_list(
        "[\n  {\"rowid\": 1, \"title\": \"Family\"},\n  5,\n  {\"id\": \"x\", \"name\": \"X\"}\n]\n",
        expect![[r#"
            [
                Chat {
                    id: "1",
                    name: "Family",
                    last_message_at: None,
                },
                Chat {
                    id: "x",
                    name: "X",
                    last_message_at: None,
                },
            ]
        "#]],
    )
    .await;
    check_list(
        "[{\"id\": 1},",
        expect![[r#"
            cannot read backend output: not a JSON array: EOF while parsing a value at line 1 column 11
        "#]],
    )
    .await;
    check_list(
        "",
        expect![[r#"
        []
    "#]],
    )
    .await;
}

#[tokio::test]
async fn history_reads_messages_with_tolerant_field_names() {
    let fake = Fake::new();
    fake.write(
        "out",
        concat!(
            r#"{"rowid": 12, "chat_identifier": "+14155550100", "sender": "+14155550100", "body": "hi", "date": 1700000000, "is_from_me": false}"#,
            "\n",
            r#"{"guid": "m2", "handle": "me@example.com", "text": "yo", "created_at": "2024-05-01T10:00:00Z", "from_me": true}"#,
            "\n",
            r#"{"event": "connected"}"#,
            "\n",
        ),
    );
    let cli = fake.script("hist", &format!("{RECORD_ARGS}cat \"$FAKE_DIR/out\"\n"));
    let backend = fake.backend(&[(
        Op::History,
        with(&cli, &["history", "--chat-id", "{chat}", "--limit={limit}"]),
    )]);
    let messages = backend.history("chat 42", 20).await.unwrap();
    assert_eq!(
        fake.read("args"),
        "[history]\n[--chat-id]\n[chat 42]\n[--limit=20]\n"
    );
    expect![[r#"
        [
            Message {
                id: "12",
                chat: "+14155550100",
                from: "+14155550100",
                text: "hi",
                at: "1700000000",
                from_me: false,
            },
            Message {
                id: "m2",
                chat: "chat 42",
                from: "me@example.com",
                text: "yo",
                at: "2024-05-01T10:00:00Z",
                from_me: true,
            },
        ]
    "#]]
    .assert_debug_eq(&messages);
    assert!(matches!(
        backend.history("--all", 1).await,
        Err(ChannelError::BadValue {
            placeholder: "chat",
            ..
        })
    ));
}

#[tokio::test]
async fn stdout_is_capped_and_drained() {
    let fake = Fake::new();
    let line = |id: u32| format!("{{\"id\": \"chat-{id:04}\", \"name\": \"n\"}}\n");
    fake.write("out", &(0..3).map(line).collect::<String>());
    let cli = fake.script("chats", "cat \"$FAKE_DIR/out\"\n");
    let mut backend = fake.backend(&[(Op::ListChats, with(&cli, &[]))]);
    // Room for two lines and part of the third: the cut line is dropped.
    backend.max_stdout = 2 * line(0).len() + 5;
    let ids: Vec<String> = backend
        .list_chats(9)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["chat-0000", "chat-0001"]);
    // A cut array is an error, not a shorter list.
    fake.write("out", "[{\"id\": 1}, {\"id\": 2}, {\"id\": 3}]");
    backend.max_stdout = 12;
    assert!(matches!(
        backend.list_chats(9).await,
        Err(ChannelError::Output(_))
    ));

    // Far more than the cap: the command is not stuck on a full pipe, and finishes.
    let cli = fake.script(
        "flood",
        "head -c 6000000 /dev/zero | tr '\\0' x\necho done > \"$FAKE_DIR/flood\"\n",
    );
    let backend = fake.backend(&[(Op::Send, with(&cli, &[]))]);
    backend.send(Outgoing { to: "a", text: "b" }).await.unwrap();
    assert_eq!(fake.read("flood"), "done\n");
}

async fn next(
    stream: &mut BoxStream<'static, Result<Message, ChannelError>>,
) -> Option<Result<Message, ChannelError>> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("watch output did not arrive")
}

#[tokio::test]
async fn watch_streams_lines_as_they_arrive() {
    let fake = Fake::new();
    let cli = fake.script(
        "watch",
        concat!(
            "echo '{\"id\": \"1\", \"chat\": \"c\", \"from\": \"+1415\", \"text\": \"first\"}'\n",
            "echo 'noise'\n",
            "while [ ! -f \"$FAKE_DIR/go\" ]; do sleep 0.05; done\n",
            "echo '{\"id\": \"2\", \"from\": \"+1415\", \"text\": \"second\", \"time\": 5}'\n",
            "exit 4\n",
        ),
    );
    let backend = fake.backend(&[(Op::Watch, with(&cli, &["watch", "--json"]))]);
    let mut stream = backend.watch().await.unwrap();
    // The first message arrives while the CLI still runs (it waits for `go`).
    let first = next(&mut stream).await.unwrap().unwrap();
    assert_eq!((first.id.as_str(), first.text.as_str()), ("1", "first"));
    fake.write("go", "");
    let second = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(
        (
            second.chat.as_str(),
            second.text.as_str(),
            second.at.as_str()
        ),
        ("", "second", "5")
    );
    assert_eq!(
        next(&mut stream).await.unwrap(),
        Err(ChannelError::Backend {
            status: Some(4),
            message: String::new()
        })
    );
    assert!(next(&mut stream).await.is_none());
}

#[tokio::test]
async fn dropping_the_watch_stream_kills_the_command() {
    let fake = Fake::new();
    let cli = fake.script(
        "watch",
        "echo $$ > \"$FAKE_DIR/pid\"\necho '{\"id\": \"1\", \"text\": \"x\"}'\nexec sleep 30\n",
    );
    let backend = fake.backend(&[(Op::Watch, with(&cli, &[]))]);
    let mut stream = backend.watch().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap();
    assert!(first.unwrap().is_ok());
    let pid = fake.read("pid").trim().to_owned();
    drop(stream);
    assert!(gone(&pid), "the watch command {pid} survived its stream");
}
