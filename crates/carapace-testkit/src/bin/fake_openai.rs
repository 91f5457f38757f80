//! `fake-openai SCRIPT.json PORT [API_KEY]`: serves a scripted fake OpenAI Chat
//! Completions API on 127.0.0.1 until interrupted, for manual demos. The script format is
//! described at `carapace_testkit::parse_script`.

use std::process::ExitCode;

use carapace_testkit::{FakeOpenAi, parse_script};

const USAGE: &str = "usage: fake-openai SCRIPT.json PORT [API_KEY]";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, port, key) = match args.as_slice() {
        [path, port] => (path, port, None),
        [path, port, key] => (path, port, Some(key)),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let Ok(port) = port.parse::<u16>() else {
        eprintln!("fake-openai: port must be a number from 0 to 65535\n{USAGE}");
        return ExitCode::from(2);
    };
    let script = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("fake-openai: cannot read {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let replies = match parse_script(&script) {
        Ok(replies) => replies,
        Err(e) => {
            eprintln!("fake-openai: {e}");
            return ExitCode::FAILURE;
        }
    };
    let count = replies.len();
    let mut fake = match FakeOpenAi::bind(port, replies).await {
        Ok(fake) => fake,
        Err(e) => {
            eprintln!("fake-openai: cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(key) = key {
        fake = fake.with_api_key(key);
    }
    println!(
        "fake-openai: {count} replies scripted, serving {}",
        fake.base_url()
    );
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("fake-openai: cannot wait for ctrl-c: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
