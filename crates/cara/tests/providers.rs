//! Model selection: `provider/model` names with each provider's conventional variables,
//! the daemon talking to the fake of each wire protocol, keys going only to their own
//! provider and coming from the vault when imported there.

use carapace_testkit::anthropic::{AnthropicReply, FakeAnthropic};
use carapace_testkit::gemini::{FakeGemini, GeminiReply};
use carapace_testkit::ollama::{FakeOllama, OllamaReply};
use carapace_testkit::{FakeOpenAi, Reply};
use reqwest::Method;
use serde_json::{Value, json};

use crate::util::{Daemon, TestDir, cara, json_response};

/// One chat completion through the daemon; returns its text and the model it names.
async fn ask(daemon: &Daemon, text: &str) -> (String, String) {
    let (status, body) = json_response(
        daemon
            .authed(Method::POST, "/v1/chat/completions")
            .json(&json!({ "messages": [{ "role": "user", "content": text }] }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    (
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string(),
        body["model"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn anthropic_slash_model_uses_the_anthropic_api_with_its_own_key_only() {
    let fake = FakeAnthropic::start(vec![AnthropicReply::Text("hello from claude".into())]).await;
    let dir = TestDir::new();
    let base = fake.base_url();
    let daemon = Daemon::start_with_env(
        &dir,
        &[
            ("CARAPACE_MODEL", "anthropic/claude-test"),
            ("ANTHROPIC_BASE_URL", &base),
            ("ANTHROPIC_API_KEY", "sk-ant-e2e-0001"),
            ("OPENAI_API_KEY", "sk-openai-must-not-travel"),
        ],
    )
    .await;
    let (text, _) = ask(&daemon, "hi").await;
    assert_eq!(text, "hello from claude");
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["model"], "claude-test");
    let headers = fake.headers();
    assert!(
        headers
            .iter()
            .all(|h| h.api_key.as_deref() == Some("sk-ant-e2e-0001")),
        "{headers:?}"
    );
    let everything = format!("{requests:?} {headers:?}");
    assert!(!everything.contains("must-not-travel"), "{everything}");
    daemon.stop().await;
}

#[tokio::test]
async fn gemini_and_ollama_by_alias_and_a_vault_key() {
    // A tool call first: its thought signature must come back in the next request,
    // through the agent's stored history.
    let gemini = FakeGemini::start(vec![
        GeminiReply::ToolCalls(vec![("list_dir".into(), json!({ "path": "." }))]),
        GeminiReply::Text("hello from gemini".into()),
    ])
    .await;
    let dir = TestDir::new();
    std::fs::create_dir_all(dir.data()).unwrap();
    std::fs::write(
        dir.config(),
        "[provider]\nmodel = \"g\"\n[provider.aliases]\ng = \"gemini/gemini-test\"\nlocal = \"ollama/llama-test\"\n",
    )
    .unwrap();
    // The key moves into the vault; the daemon finds it there without the variable.
    let out = cara(&dir)
        .args(["vault", "import-env", "GEMINI_API_KEY"])
        .env("GEMINI_API_KEY", "gm-e2e-key-0002")
        .env("CARAPACE_VAULT_PASSPHRASE", "correct horse")
        .run()
        .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let base = gemini.base_url();
    let daemon = Daemon::start_with_env(
        &dir,
        &[
            ("GEMINI_BASE_URL", &base),
            ("CARAPACE_VAULT_PASSPHRASE", "correct horse"),
        ],
    )
    .await;
    let (text, _) = ask(&daemon, "hi").await;
    assert_eq!(text, "hello from gemini");
    let seen = gemini.requests();
    assert_eq!(seen[0].model, "gemini-test");
    assert_eq!(seen[0].api_key.as_deref(), Some("gm-e2e-key-0002"));
    let model_turn = seen[1].body["contents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["role"] == "model")
        .cloned()
        .expect("the model's turn is sent back");
    assert_eq!(
        model_turn["parts"][0]["thoughtSignature"],
        json!(carapace_testkit::gemini::signature_of("list_dir")),
        "{model_turn}"
    );
    daemon.stop().await;

    let ollama = FakeOllama::start(vec![OllamaReply::Text("hello from ollama".into())]).await;
    let base = ollama.base_url();
    let daemon = Daemon::start_with_env(
        &dir,
        &[
            ("CARAPACE_MODEL", "local"),
            ("OLLAMA_BASE_URL", &base),
            ("CARAPACE_VAULT_PASSPHRASE", "correct horse"),
        ],
    )
    .await;
    let (text, _) = ask(&daemon, "hi").await;
    assert_eq!(text, "hello from ollama");
    assert_eq!(ollama.requests()[0]["model"], "llama-test");
    // Ollama wants no key, and got none: not Gemini's.
    assert_eq!(ollama.authorizations(), vec![None]);
    daemon.stop().await;
}

#[tokio::test]
async fn config_show_and_bad_model_names_say_which_provider_and_why() {
    let dir = TestDir::new();
    let out = cara(&dir)
        .args(["config", "show"])
        .env("CARAPACE_MODEL", "anthropic/claude-x")
        .env("ANTHROPIC_API_KEY", "sk-ant-not-shown-0003")
        .run()
        .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stdout
            .contains("model = \"anthropic/claude-x\"  # from $CARAPACE_MODEL"),
        "{out:#?}"
    );
    assert!(
        out.stdout
            .contains("# provider anthropic (Anthropic Messages API) at https://api.anthropic.com"),
        "{out:#?}"
    );
    assert!(
        out.stdout
            .contains("api key: set (from $ANTHROPIC_API_KEY)"),
        "{out:#?}"
    );
    assert!(!out.stdout.contains("not-shown"), "{out:#?}");

    for (model, var, value, expected) in [
        (
            "gemini/",
            "",
            "",
            "$CARAPACE_MODEL: `gemini/` names no model",
        ),
        (
            "anthropic/c",
            "ANTHROPIC_BASE_URL",
            "http://api.example.com",
            "$ANTHROPIC_BASE_URL: `http://api.example.com` uses plain http",
        ),
    ] {
        let mut cmd = cara(&dir)
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env("CARAPACE_MODEL", model);
        if !var.is_empty() {
            cmd = cmd.env(var, value);
        }
        let out = cmd.run().await;
        assert_eq!(out.code, Some(1), "{out:#?}");
        assert!(out.stderr.contains(expected), "{expected} in {out:#?}");
    }
}

#[tokio::test]
async fn a_failing_model_is_retried_then_the_chain_fails_over_visibly_and_on_record() {
    let overloaded = || AnthropicReply::Error {
        status: 500,
        kind: "api_error".into(),
        message: "Internal server error".into(),
    };
    // Two attempts, both 500s; then the next model of the chain answers. The
    // second turn goes straight to it: the first is cooling down.
    let anthropic = FakeAnthropic::start(vec![overloaded(), overloaded()]).await;
    let openai = FakeOpenAi::start(vec![
        Reply::Text("answer from the fallback".into()),
        // A model of the chain that knows another's key cannot show it.
        Reply::Text("second answer, and the key is sk-ant-e2e-0004".into()),
    ])
    .await;
    let dir = TestDir::new();
    std::fs::create_dir_all(dir.data()).unwrap();
    std::fs::write(
        dir.config(),
        "[provider]\nmodels = [\"anthropic/claude-test\", \"openai/fake-model\"]\nmax_attempts = 2\n",
    )
    .unwrap();
    let (a_base, o_base) = (anthropic.base_url(), openai.base_url());
    let daemon = Daemon::start_with_env(
        &dir,
        &[
            ("ANTHROPIC_BASE_URL", &a_base),
            ("ANTHROPIC_API_KEY", "sk-ant-e2e-0004"),
            ("OPENAI_BASE_URL", &o_base),
        ],
    )
    .await;
    let out = cara(&dir)
        .args(["chat", "--no-start"])
        .stdin("hello\nagain\n/exit\n")
        .run()
        .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    for expected in [
        "model anthropic/claude-test",
        "(model anthropic/claude-test failed: provider answered http 500: api_error: Internal server error; trying again in",
        "(model anthropic/claude-test keeps failing: provider answered http 500: api_error: Internal server error; switched to openai/fake-model)",
        "cara> answer from the fallback",
        "cara> second answer, and the key is [REDACTED]",
    ] {
        assert!(out.stdout.contains(expected), "{expected:?} in {out:#?}");
    }
    assert!(!out.stdout.contains("sk-ant-e2e-0004"), "{out:#?}");
    assert_eq!(anthropic.requests().len(), 2);
    assert_eq!(openai.requests().len(), 2);

    let events: Vec<String> = crate::util::audit_entries(&dir)
        .await
        .iter()
        .filter_map(|e| e["record"]["event"].as_str().map(String::from))
        .filter(|e| e.starts_with("model_"))
        .collect();
    assert_eq!(events, ["model_retry", "model_failover"]);
    daemon.stop().await;

    // The doctor calls every model of the chain once (the model list) and says which
    // answer.
    let out = cara(&dir)
        .args(["doctor"])
        .env("ANTHROPIC_BASE_URL", &a_base)
        .env("ANTHROPIC_API_KEY", "sk-ant-e2e-0004")
        .env("OPENAI_BASE_URL", &o_base)
        .run()
        .await;
    for expected in [
        "provider: anthropic at http://127.0.0.1",
        "fallback 1: openai at http://127.0.0.1",
    ] {
        assert!(out.stdout.contains(expected), "{expected:?} in {out:#?}");
    }
    assert!(!out.stdout.contains("sk-ant-e2e-0004"), "{out:#?}");
}

#[tokio::test]
async fn usage_is_counted_priced_and_the_daily_budget_stops_new_turns() {
    let fake = FakeOpenAi::start(vec![
        Reply::Text("first answer".into()),
        Reply::Text("never sent".into()),
    ])
    .await;
    let dir = TestDir::new();
    std::fs::create_dir_all(dir.data()).unwrap();
    // $1 per prompt token: the first turn alone spends more than the budget.
    std::fs::write(
        dir.config(),
        "[usage]\ndaily_budget_usd = 0.5\n[usage.prices.fake-model]\ninput_per_mtok = 1000000.0\noutput_per_mtok = 0.0\n",
    )
    .unwrap();
    let daemon = Daemon::start(&dir, &fake).await;
    let (text, _) = ask(&daemon, "hi").await;
    assert_eq!(text, "first answer");

    let (status, body) = json_response(
        daemon
            .authed(Method::POST, "/v1/chat/completions")
            .json(&json!({ "messages": [{ "role": "user", "content": "more" }] }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(crate::util::error_code(&body), "BUDGET_REACHED", "{body}");
    assert_eq!(
        fake.requests().len(),
        1,
        "the refused turn never reached the model"
    );

    let (status, usage) = json_response(
        daemon
            .authed(Method::GET, "/api/usage?days=2")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{usage}");
    let today = &usage["today"]["usage"];
    assert_eq!(today["calls"], 1, "{usage}");
    let prompt = today["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 0, "{usage}");
    assert_eq!(
        today["cost_usd"].as_f64().unwrap(),
        prompt as f64,
        "{usage}"
    );
    assert_eq!(usage["daily_budget_usd"], 0.5);
    assert_eq!(usage["days"][0]["model"], "fake-model");
    for bad in [
        "/api/usage?days=0",
        "/api/usage?days=400",
        "/api/usage?weeks=1",
    ] {
        let (status, _) =
            json_response(daemon.authed(Method::GET, bad).send().await.unwrap()).await;
        assert_eq!(status, 400, "{bad}");
    }

    let out = cara(&dir).args(["usage"]).run().await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stdout.contains("daily budget: $0.50"), "{out:#?}");
    assert!(out.stdout.contains("fake-model"), "{out:#?}");
    let (_, sessions) = json_response(
        daemon
            .authed(Method::GET, "/api/sessions")
            .send()
            .await
            .unwrap(),
    )
    .await;
    // The first turn's session (the refused turn made a second one, with no usage).
    let id = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .min_by_key(|s| s["created_ms"].as_i64().unwrap())
        .map(|s| s["id"].as_str().unwrap().to_string())
        .unwrap();
    let out = cara(&dir)
        .args(["usage", "--json", "--session", &id])
        .run()
        .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let online: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(online["prompt_tokens"].as_u64(), Some(prompt), "{online}");
    daemon.stop().await;
    let out = cara(&dir)
        .args(["usage", "--json", "--session", &id])
        .run()
        .await;
    let offline_session: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(offline_session, online);
    let out = cara(&dir)
        .args(["usage", "--session", "s_nope"])
        .run()
        .await;
    assert_eq!(out.code, Some(1), "{out:#?}");

    // Without a gateway, from the database: the same numbers.
    let out = cara(&dir).args(["usage", "--json"]).run().await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let offline: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(offline["today"]["usage"], *today);
    assert_eq!(offline["daily_budget_usd"], 0.5);
}

#[tokio::test]
async fn bedrock_signs_with_aws_credentials_from_the_environment_and_the_vault() {
    use carapace_testkit::bedrock::{
        ACCESS_KEY_ID, BedrockReply, FakeBedrock, MODEL_ID, REGION, SECRET_ACCESS_KEY,
    };
    let fake = FakeBedrock::start(vec![BedrockReply::Text("hello from bedrock".into())]).await;
    let dir = TestDir::new();
    // The secret key lives in the vault; the key id and region in the environment.
    let out = cara(&dir)
        .args(["vault", "import-env", "AWS_SECRET_ACCESS_KEY"])
        .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        .env("CARAPACE_VAULT_PASSPHRASE", "correct horse")
        .run()
        .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let endpoint = fake.endpoint();
    let model = format!("bedrock/{MODEL_ID}");
    let daemon = Daemon::start_with_env(
        &dir,
        &[
            ("CARAPACE_MODEL", &model),
            ("BEDROCK_ENDPOINT_URL", &endpoint),
            ("AWS_REGION", REGION),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
            ("CARAPACE_VAULT_PASSPHRASE", "correct horse"),
        ],
    )
    .await;
    let (text, _) = ask(&daemon, "hi").await;
    assert_eq!(text, "hello from bedrock");
    assert_eq!(fake.model_ids(), [MODEL_ID]);
    let seen = fake.seen();
    assert!(seen.iter().all(|r| r.refused.is_none()), "{seen:?}");
    let everything = format!("{seen:?} {:?}", fake.requests());
    assert!(
        !everything.contains(SECRET_ACCESS_KEY),
        "the secret is never sent"
    );
    daemon.stop().await;

    // Without credentials, the gateway says which variables it needs.
    let out = cara(&TestDir::new())
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("CARAPACE_MODEL", &model)
        .env("AWS_REGION", REGION)
        .run()
        .await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr
            .contains("$AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY"),
        "{out:#?}"
    );
}

#[tokio::test]
async fn a_session_switches_model_with_slash_model_and_others_keep_theirs() {
    let openai = FakeOpenAi::start(vec![
        Reply::Text("from the configured model".into()),
        Reply::Text("other session, configured model".into()),
    ])
    .await;
    let ollama = FakeOllama::start(vec![OllamaReply::Text("from ollama".into())]).await;
    let dir = TestDir::new();
    std::fs::create_dir_all(dir.data()).unwrap();
    std::fs::write(
        dir.config(),
        "[provider.aliases]\nlocal = \"ollama/llama-test\"\n",
    )
    .unwrap();
    let (o_base, l_base) = (openai.base_url(), ollama.base_url());
    let daemon = Daemon::start_with_env(
        &dir,
        &[
            ("OPENAI_BASE_URL", &o_base),
            ("CARAPACE_MODEL", "fake-model"),
            ("OLLAMA_BASE_URL", &l_base),
        ],
    )
    .await;
    let out = cara(&dir)
        .args(["chat", "--no-start"])
        .stdin("first\n/model\n/model local\n/model\nsecond\n/model nobody/x\n/exit\n")
        .run()
        .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    for expected in [
        "cara> from the configured model",
        "(model fake-model (configured))",
        "(this session now uses model ollama/llama-test)",
        "(model local (this session's own))",
        "cara> from ollama",
        // `nobody/` is no provider: the whole name is a model of the openai provider.
        "(this session now uses model nobody/x)",
    ] {
        assert!(out.stdout.contains(expected), "{expected:?} in {out:#?}");
    }
    // A name the configuration cannot serve is refused.
    let (status, body) = json_response(
        daemon
            .authed(Method::POST, "/api/sessions")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    let other = body["session"]["id"].as_str().unwrap().to_string();
    let (status, body) = json_response(
        daemon
            .authed(Method::PUT, &format!("/api/sessions/{other}/model"))
            .json(&json!({ "model": "gemini/" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(crate::util::error_code(&body), "UNKNOWN_MODEL", "{body}");
    // The other session still uses the configured model.
    let (status, body) = json_response(
        daemon
            .authed(Method::POST, "/v1/chat/completions")
            .json(&json!({ "user": other, "messages": [{ "role": "user", "content": "hi" }] }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "other session, configured model"
    );
    assert_eq!(ollama.requests().len(), 1);
    let switched: Vec<Value> = crate::util::audit_entries(&dir)
        .await
        .into_iter()
        .filter(|e| e["record"]["event"] == "session_model")
        .collect();
    let models: Vec<&Value> = switched.iter().map(|e| &e["record"]["model"]).collect();
    assert_eq!(models, [&json!("ollama/llama-test"), &json!("nobody/x")]);
    daemon.stop().await;
}

#[tokio::test]
async fn setup_non_interactive_writes_the_model_keeps_the_key_in_the_vault_and_tests_it() {
    let fake = FakeAnthropic::start(vec![
        AnthropicReply::Text("OK".into()),
        AnthropicReply::Text("hello after setup".into()),
    ])
    .await;
    let dir = TestDir::new();
    let base = fake.base_url();
    let out = cara(&dir)
        .args(["setup", "--non-interactive", "--provider", "anthropic"])
        .args(["--model", "claude-test", "--base-url", &base, "--store-key"])
        .env("ANTHROPIC_API_KEY", "sk-ant-setup-0005")
        .env("CARAPACE_VAULT_PASSPHRASE", "correct horse")
        .run()
        .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stdout
            .contains("stored the key in the vault as `ANTHROPIC_API_KEY`"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("ok, it answered \"OK\""), "{out:#?}");
    let config = std::fs::read_to_string(dir.config()).unwrap();
    assert!(
        config.contains("model = \"anthropic/claude-test\""),
        "{config}"
    );
    assert!(config.contains("[providers.anthropic]"), "{config}");
    assert!(
        !config.contains("sk-ant-setup"),
        "no key in the file: {config}"
    );
    assert_eq!(
        fake.headers()[0].api_key.as_deref(),
        Some("sk-ant-setup-0005")
    );

    // The gateway finds the key in the vault, without the variable.
    let daemon =
        Daemon::start_with_env(&dir, &[("CARAPACE_VAULT_PASSPHRASE", "correct horse")]).await;
    let (text, _) = ask(&daemon, "hi").await;
    assert_eq!(text, "hello after setup");
    daemon.stop().await;

    // Scripts must say what they want; a pipe is not a terminal to ask at.
    let out = cara(&dir).args(["setup"]).stdin("anthropic\n").run().await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("--non-interactive"), "{out:#?}");
    let out = cara(&dir)
        .args(["setup", "--non-interactive", "--provider", "nobody"])
        .run()
        .await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr.contains("`nobody` is not a provider"),
        "{out:#?}"
    );
    // A failing test call says so and exits 1, with the config written.
    let out = cara(&dir)
        .args(["setup", "--non-interactive", "--provider", "anthropic"])
        .args(["--model", "claude-test", "--base-url", "http://127.0.0.1:9"])
        .env("ANTHROPIC_API_KEY", "sk-ant-setup-0005")
        .run()
        .await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("the test call failed"), "{out:#?}");
    assert!(!out.stderr.contains("sk-ant-setup"), "{out:#?}");
}
