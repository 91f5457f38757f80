//! Policy cases as data: every `tests/cases/*.toml` file defines named policies at the
//! top and then cases of session state, request and expected decision, and this runner
//! puts each case through `decide` (and `escalate`, when the case has model verdicts).
//!
//! A file reads like this:
//!
//! ```toml
//! [policies.web]                       # a named policy; a case without `policy` gets
//! preset = "default"                   # the built-in defaults; "strict" starts from
//! allow_destinations = { egress = ["*.example.com"] }    # `Policy::strict()`
//! friction = { ask_above = 10, deny_above = 20, weights = { exec = 5 } }
//!
//! [[policies.web.rules]]               # the rule language, as in `[[policy.rules]]`
//! name = "no-paste"
//! effect = "egress"
//! destination = "*pastebin.com"
//! then = "deny"
//!
//! [[case]]
//! name = "a listed host passes an untrusted session"
//! policy = "web"
//! state = { label = "untrusted/public", seen = ["web"], exposure = { exec = 1 } }
//! request = { tool = "web_fetch", effect = "egress", destinations = ["host:api.example.com"] }
//! expect = { decision = "allow", rule = "allowlist.egress" }
//! ```
//!
//! `state.grants` are plan steps as `propose_plan` writes them (`tool`, `args`,
//! `destinations`, `max_calls`) plus the grant's `id`, `remaining` (default: the step's
//! `max_calls`) and `expires_ms`. `model_asks` lists verdicts of uncompiled plain-English
//! rules. `expect` may also name the `grant` index that allowed the call and a
//! substring the reason must contain (`reason_contains`). Every mismatch and every
//! malformed case is reported, naming its file and case, before the test fails.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use carapace_policy::{
    Destination, Exposure, Friction, Grant, ModelAsk, Pattern, Plan, Policy, Request, RuleSpec,
    SessionState, Verdict, Weights, decide, escalate,
};
use carapace_types::{
    Confidentiality, Decision, EffectClass, FrontDoor, Integrity, Label, Principal,
};
use expect_test::{Expect, expect};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    policies: BTreeMap<String, toml::Value>,
    #[serde(default)]
    case: Vec<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    #[serde(default)]
    preset: Option<String>,
    #[serde(default)]
    rules: Vec<RuleSpec>,
    #[serde(default)]
    allow_destinations: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    friction: FrictionSpec,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FrictionSpec {
    ask_above: Option<u32>,
    deny_above: Option<u32>,
    #[serde(default)]
    weights: WeightsSpec,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightsSpec {
    untrusted_read: Option<u32>,
    private_read: Option<u32>,
    write: Option<u32>,
    egress: Option<u32>,
    exec: Option<u32>,
    secret: Option<u32>,
    self_modify: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSpec {
    #[expect(
        dead_code,
        reason = "read from the raw table, so a malformed case is named too"
    )]
    name: String,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    state: StateSpec,
    request: RequestSpec,
    #[serde(default)]
    model_asks: Option<Vec<ModelAskSpec>>,
    expect: ExpectSpec,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateSpec {
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    seen: Vec<String>,
    #[serde(default)]
    exposure: ExposureSpec,
    #[serde(default)]
    grants: Vec<GrantSpec>,
    #[serde(default)]
    now_ms: i64,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExposureSpec {
    #[serde(default)]
    untrusted_reads: u32,
    #[serde(default)]
    private_reads: u32,
    #[serde(default)]
    writes: u32,
    #[serde(default)]
    egress: u32,
    #[serde(default)]
    exec: u32,
    #[serde(default)]
    secrets: u32,
    #[serde(default)]
    self_modify: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantSpec {
    id: String,
    tool: String,
    #[serde(default)]
    args: Option<Value>,
    #[serde(default)]
    destinations: Option<Vec<String>>,
    #[serde(default)]
    max_calls: Option<u32>,
    #[serde(default)]
    remaining: Option<u32>,
    #[serde(default)]
    expires_ms: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    tool: String,
    effect: String,
    #[serde(default)]
    destinations: Vec<String>,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelAskSpec {
    rule: String,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectSpec {
    decision: String,
    rule: String,
    #[serde(default)]
    grant: Option<usize>,
    #[serde(default)]
    reason_contains: Option<String>,
}

fn build_policy(spec: PolicySpec) -> Result<Policy, String> {
    let mut policy = match spec.preset.as_deref() {
        None | Some("default") => Policy::default(),
        Some("strict") => Policy::strict(),
        Some(other) => return Err(format!("preset: `{other}` is not default or strict")),
    };
    for (i, r) in spec.rules.iter().enumerate() {
        let rule = r
            .build(&format!("rules.{}", i + 1))
            .map_err(|e| format!("rules[{}].{e}", i + 1))?;
        policy.rules.push(rule);
    }
    for (effect, patterns) in &spec.allow_destinations {
        let effect = EffectClass::parse(effect)
            .ok_or_else(|| format!("allow_destinations: `{effect}` is not an effect class"))?;
        let patterns = patterns
            .iter()
            .map(|p| Pattern::parse(p).map_err(|e| format!("allow_destinations: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        policy.allow_destinations.insert(effect, patterns);
    }
    let base = Friction::default();
    let (d, w) = (base.weights, &spec.friction.weights);
    policy.friction = Friction {
        weights: Weights {
            untrusted_read: w.untrusted_read.unwrap_or(d.untrusted_read),
            private_read: w.private_read.unwrap_or(d.private_read),
            write: w.write.unwrap_or(d.write),
            egress: w.egress.unwrap_or(d.egress),
            exec: w.exec.unwrap_or(d.exec),
            secret: w.secret.unwrap_or(d.secret),
            self_modify: w.self_modify.unwrap_or(d.self_modify),
        },
        ask_above: spec.friction.ask_above.unwrap_or(base.ask_above),
        deny_above: spec.friction.deny_above.unwrap_or(base.deny_above),
    };
    Ok(policy)
}

fn parse_label(text: &str) -> Result<Label, String> {
    let bad = || format!("state.label: `{text}` is not like `untrusted/private`");
    let (i, c) = text.split_once('/').ok_or_else(bad)?;
    Ok(Label {
        integrity: Integrity::parse(i).ok_or_else(bad)?,
        confidentiality: Confidentiality::parse(c).ok_or_else(bad)?,
    })
}

fn build_grant(i: usize, g: &GrantSpec) -> Result<Grant, String> {
    let mut step = serde_json::Map::new();
    step.insert("tool".into(), json!(g.tool));
    if let Some(args) = &g.args {
        step.insert("args".into(), args.clone());
    }
    if let Some(ds) = &g.destinations {
        step.insert("destinations".into(), json!(ds));
    }
    if let Some(n) = g.max_calls {
        step.insert("max_calls".into(), json!(n));
    }
    let plan = Plan::from_args(&json!({"goal": "a test", "steps": [step]}))
        .map_err(|e| format!("state.grants[{i}]: {e}"))?;
    let step = plan
        .steps
        .into_iter()
        .next()
        .ok_or("a plan without its step")?;
    Ok(Grant {
        id: g.id.clone(),
        remaining: g.remaining.or(step.max_calls),
        expires_ms: g.expires_ms,
        step,
    })
}

fn kind(d: &Decision) -> &'static str {
    match d {
        Decision::Allow { .. } => "allow",
        Decision::Ask { .. } => "ask",
        Decision::Deny { .. } => "deny",
    }
}

fn reason(d: &Decision) -> Option<&str> {
    match d {
        Decision::Allow { .. } => None,
        Decision::Ask { reason, .. } | Decision::Deny { reason, .. } => Some(reason),
    }
}

/// Runs one case: `Ok(None)` when it passes, `Ok(Some(why))` when the decision differs,
/// `Err(what)` when the case itself is malformed.
fn run_case(policies: &BTreeMap<String, Policy>, case: CaseSpec) -> Result<Option<String>, String> {
    let default_policy = Policy::default();
    let policy = match &case.policy {
        None => &default_policy,
        Some(name) => policies
            .get(name)
            .ok_or_else(|| format!("policy: no policy named `{name}` in this file"))?,
    };
    let s = &case.state;
    let label = s
        .label
        .as_deref()
        .map_or(Ok(Label::TRUSTED_PUBLIC), parse_label)?;
    let e = &s.exposure;
    let exposure = Exposure {
        untrusted_reads: e.untrusted_reads,
        private_reads: e.private_reads,
        writes: e.writes,
        egress: e.egress,
        exec: e.exec,
        secrets: e.secrets,
        self_modify: e.self_modify,
    };
    let grants = s
        .grants
        .iter()
        .enumerate()
        .map(|(i, g)| build_grant(i, g))
        .collect::<Result<Vec<_>, _>>()?;
    let state = SessionState {
        label,
        seen: &s.seen,
        exposure,
        grants: &grants,
        now_ms: s.now_ms,
    };

    let r = &case.request;
    let effect = EffectClass::parse(&r.effect)
        .ok_or_else(|| format!("request.effect: `{}` is not an effect class", r.effect))?;
    let destinations: Vec<Destination> = r
        .destinations
        .iter()
        .map(|d| Destination::parse(d))
        .collect();
    let args = r.args.clone().unwrap_or_else(|| json!({}));
    let owner = Principal::owner(FrontDoor::Api);
    let req = Request {
        principal: &owner,
        tool: &r.tool,
        effect,
        destinations: &destinations,
        args: &args,
    };

    let x = &case.expect;
    if !["allow", "ask", "deny"].contains(&x.decision.as_str()) {
        return Err(format!(
            "expect.decision: `{}` is not allow, ask or deny",
            x.decision
        ));
    }
    if x.decision == "allow" && x.reason_contains.is_some() {
        return Err("expect.reason_contains: an allow has no reason".into());
    }

    let Verdict { decision, grant } = decide(policy, &state, &req);
    let decision = match &case.model_asks {
        None => decision,
        Some(asks) => {
            let asks: Vec<ModelAsk> = asks
                .iter()
                .map(|a| ModelAsk {
                    rule: a.rule.clone(),
                    reason: a.reason.clone(),
                })
                .collect();
            escalate(decision, &asks)
        }
    };

    let mut wrong = Vec::new();
    if kind(&decision) != x.decision || decision.rule() != x.rule {
        wrong.push(format!(
            "expected {} by `{}`, got {} by `{}`",
            x.decision,
            x.rule,
            kind(&decision),
            decision.rule()
        ));
    }
    if x.grant.is_some() && x.grant != grant {
        wrong.push(format!("expected grant {:?}, got {grant:?}", x.grant));
    }
    if let Some(want) = &x.reason_contains
        && !reason(&decision).is_some_and(|got| got.contains(want.as_str()))
    {
        wrong.push(format!(
            "expected a reason containing {want:?}, got {:?}",
            reason(&decision).unwrap_or_default()
        ));
    }
    Ok((!wrong.is_empty()).then(|| wrong.join("; ")))
}

/// Runs every case of one file; returns how many ran and what went wrong, one line per
/// problem, each naming `file`.
fn run_file(file: &str, text: &str) -> (usize, Vec<String>) {
    let spec: FileSpec = match toml::from_str(text) {
        Ok(s) => s,
        Err(e) => return (0, vec![format!("{file}: malformed: {e}")]),
    };
    let mut problems = Vec::new();
    let mut policies = BTreeMap::new();
    for (name, value) in spec.policies {
        match value
            .try_into::<PolicySpec>()
            .map_err(|e| e.to_string())
            .and_then(build_policy)
        {
            Ok(p) => {
                policies.insert(name, p);
            }
            Err(e) => problems.push(format!("{file}: policy `{name}`: malformed: {}", e.trim())),
        }
    }
    if spec.case.is_empty() {
        problems.push(format!("{file}: no [[case]] in this file"));
    }
    let mut names = BTreeSet::new();
    let mut ran = 0;
    for (i, value) in spec.case.into_iter().enumerate() {
        let name = match value.get("name").and_then(toml::Value::as_str) {
            Some(n) => format!("case {n:?}"),
            None => format!("case #{} (no name)", i + 1),
        };
        if !names.insert(name.clone()) {
            problems.push(format!("{file}: {name}: malformed: the name is used twice"));
            continue;
        }
        ran += 1;
        let result = value
            .try_into::<CaseSpec>()
            .map_err(|e| e.to_string())
            .and_then(|c| run_case(&policies, c));
        match result {
            Ok(None) => {}
            Ok(Some(why)) => problems.push(format!("{file}: {name}: {why}")),
            Err(e) => problems.push(format!("{file}: {name}: malformed: {}", e.trim())),
        }
    }
    (ran, problems)
}

#[test]
fn policy_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/cases is readable")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no case files in {}", dir.display());

    let (mut ran, mut problems) = (0, Vec::new());
    for path in &files {
        let file = format!(
            "tests/cases/{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        let text = std::fs::read_to_string(path).expect("a case file is readable");
        let (n, p) = run_file(&file, &text);
        ran += n;
        problems.extend(p);
    }
    if !problems.is_empty() {
        let mut report = String::new();
        for p in &problems {
            let _ = writeln!(report, "{p}");
        }
        panic!(
            "{} problem(s) in {ran} policy cases:\n{report}",
            problems.len()
        );
    }
    eprintln!("{ran} policy cases passed in {} files", files.len());
}

/// The problems `run_file` reports for a file `bad.toml` holding `text`.
fn check_problems(text: &str, expected: Expect) {
    expected.assert_eq(&run_file("tests/cases/bad.toml", text).1.join("\n"));
}

/// A well-formed case named `bad` with `extra` lines added to it.
fn case(extra: &str) -> String {
    format!(
        "[[case]]\nname = \"bad\"\nrequest = {{ tool = \"t\", effect = \"read\" }}\nexpect = {{ decision = \"allow\", rule = \"default.read\" }}\n{extra}\n"
    )
}

#[test]
fn malformed_cases_name_their_file_and_case() {
    check_problems(&case(""), expect![[""]]);
    check_problems(
        &case("policy = \"nowhere\""),
        expect![[
            r#"tests/cases/bad.toml: case "bad": malformed: policy: no policy named `nowhere` in this file"#
        ]],
    );
    check_problems(
        &case("colour = \"red\""),
        expect![[
            r#"tests/cases/bad.toml: case "bad": malformed: unknown field `colour`, expected one of `name`, `policy`, `state`, `request`, `model_asks`, `expect`"#
        ]],
    );
    check_problems(
        &case("state = { label = \"dirty/public\" }"),
        expect![[
            r#"tests/cases/bad.toml: case "bad": malformed: state.label: `dirty/public` is not like `untrusted/private`"#
        ]],
    );
    check_problems(
        &case("state = { exposure = { reads = 1 } }"),
        expect![[r#"
        tests/cases/bad.toml: case "bad": malformed: unknown field `reads`, expected one of `untrusted_reads`, `private_reads`, `writes`, `egress`, `exec`, `secrets`, `self_modify`
        in `state.exposure`"#]],
    );
    check_problems(
        &case(
            "state = { grants = [{ id = \"g\", tool = \"t\", args = { a = { regex = \".*\" } } }] }",
        ),
        expect![[
            r#"tests/cases/bad.toml: case "bad": malformed: state.grants[0]: steps[1].args.a: a constraint is {"exact": v}, {"prefix": "non-empty"} or {"one_of": [v, ...]}"#
        ]],
    );
    check_problems(
        &case("").replace("effect = \"read\"", "effect = \"network\""),
        expect![[
            r#"tests/cases/bad.toml: case "bad": malformed: request.effect: `network` is not an effect class"#
        ]],
    );
    check_problems(
        &case("").replace("decision = \"allow\"", "decision = \"maybe\""),
        expect![[
            r#"tests/cases/bad.toml: case "bad": malformed: expect.decision: `maybe` is not allow, ask or deny"#
        ]],
    );
    check_problems(
        "[[case]]\nname = \"no request\"\nexpect = { decision = \"allow\", rule = \"x\" }\n",
        expect![[r#"tests/cases/bad.toml: case "no request": malformed: missing field `request`"#]],
    );
    check_problems(
        &format!(
            "[[policies.p.rules]]\nthen = \"maybe\"\n\n{}",
            case("policy = \"p\"")
        ),
        expect![[r#"
            tests/cases/bad.toml: policy `p`: malformed: rules[1].then: `maybe` is not one of allow, ask, deny
            tests/cases/bad.toml: case "bad": malformed: policy: no policy named `p` in this file"#]],
    );
    check_problems(
        &format!("{}{}", case(""), case("")),
        expect![[r#"tests/cases/bad.toml: case "bad": malformed: the name is used twice"#]],
    );
    check_problems(
        "[[cases]]\nname = \"typo\"\n",
        expect![[r#"
        tests/cases/bad.toml: malformed: TOML parse error at line 1, column 3
          |
        1 | [[cases]]
          |   ^^^^^
        unknown field `cases`, expected `policies` or `case`
    "#]],
    );
    check_problems(
        "",
        expect!["tests/cases/bad.toml: no [[case]] in this file"],
    );
}

#[test]
fn a_wrong_expectation_names_the_case_and_both_decisions() {
    check_problems(
        &case("").replace("rule = \"default.read\"", "rule = \"default.allow\""),
        expect![[
            r#"tests/cases/bad.toml: case "bad": expected allow by `default.allow`, got allow by `default.read`"#
        ]],
    );
    check_problems(
        &case("state = { grants = [{ id = \"g\", tool = \"t\" }] }").replace(
            "rule = \"default.read\" }",
            "rule = \"grant.g\", grant = 1 }",
        ),
        expect![[r#"tests/cases/bad.toml: case "bad": expected grant Some(1), got Some(0)"#]],
    );
    check_problems(
        &format!(
            "[[policies.p.rules]]\nname = \"r\"\ntool = \"t\"\nthen = \"ask\"\nreason = \"the owner's words\"\n\n{}",
            case("policy = \"p\"").replace(
                "decision = \"allow\", rule = \"default.read\"",
                "decision = \"ask\", rule = \"r\", reason_contains = \"web\"",
            )
        ),
        expect![[
            r#"tests/cases/bad.toml: case "bad": expected a reason containing "web", got "the owner's words""#
        ]],
    );
}
