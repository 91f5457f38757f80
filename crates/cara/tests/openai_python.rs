//! The official OpenAI Python client works against Carapace unchanged: plain and
//! streamed completions, with a tool call behind the Gate in between.
//!
//! Switched on by `CARAPACE_TEST_OPENAI_PYTHON=/path/to/python` (a Python that can
//! `import openai`); `.ci/run` installs the client and sets it. Without it the test
//! says so and passes without checking anything.

use carapace_testkit::{FakeOpenAi, Reply};
use serde_json::{Value, json};

use crate::util::{Daemon, TestDir};

const SCRIPT: &str = r#"
import json, sys
from openai import OpenAI

base_url, token = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=30)
out = {}
plain = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "what is in my workspace?"}],
    user="python-compat",
)
out["plain"] = plain.choices[0].message.content
out["plain_object"] = plain.object
out["plain_finish"] = plain.choices[0].finish_reason
deltas = []
stream = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "and now stream"}],
    user="python-compat",
    stream=True,
)
for chunk in stream:
    for choice in chunk.choices:
        if choice.delta.content:
            deltas.append(choice.delta.content)
out["stream"] = "".join(deltas)
out["stream_pieces"] = len(deltas)
out["models"] = [m.id for m in client.models.list().data]
try:
    OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    out["wrong_key"] = "accepted"
except Exception as e:
    out["wrong_key"] = type(e).__name__
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_client_works_unchanged() {
    let Some(python) = std::env::var_os("CARAPACE_TEST_OPENAI_PYTHON") else {
        eprintln!("skipped: set CARAPACE_TEST_OPENAI_PYTHON to a python with the openai package");
        return;
    };
    let fake = FakeOpenAi::start(vec![
        Reply::ToolCalls(vec![("list_dir".into(), json!({}))]),
        Reply::Text("One file: notes.txt".into()),
        Reply::Text("streamed answer in several words".into()),
    ])
    .await;
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &fake).await;
    std::fs::write(dir.workspace().join("notes.txt"), "x").unwrap();

    let base_url = format!("http://{}/v1", daemon.addr());
    let output = tokio::process::Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(&base_url)
        .arg(daemon.token())
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python failed:\n{stderr}\n{}",
        daemon.log()
    );
    let out: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));

    assert_eq!(out["plain"], "One file: notes.txt");
    assert_eq!(out["plain_object"], "chat.completion");
    assert_eq!(out["plain_finish"], "stop");
    assert_eq!(out["stream"], "streamed answer in several words");
    assert!(out["stream_pieces"].as_u64().unwrap() > 1, "{out}");
    assert_eq!(out["models"], json!(["fake-model"]));
    assert_eq!(out["wrong_key"], "AuthenticationError");

    // The tool call went through the Gate: the model got the listing back.
    let requests = fake.requests();
    let tool_result = requests[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("a tool message");
    assert!(
        tool_result["content"]
            .as_str()
            .unwrap()
            .contains("notes.txt")
    );
}
