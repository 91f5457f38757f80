//! Benchmarks of `decide` over a realistic owner policy: 50 rules (tool globs, effect
//! lists, destination lists of 10 patterns, session conditions), allowlists of 20
//! patterns and 5 grants in the session.
//!
//! Two requests: `falls_to_defaults` matches no rule, no grant and no allowlist, so it
//! scans everything before the untrusted default asks (the worst case);
//! `early_deny` hits the first deny rule.
//! `cargo bench -p carapace-policy --bench decide` prints criterion's figures, then
//! p50/p99/max over 200 000 single calls of each (the target is p99 under 10 µs).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use carapace_policy::{
    Destination, Exposure, Grant, Pattern, Plan, Policy, Request, RuleSpec, SessionState, decide,
};
use carapace_types::{Confidentiality, EffectClass, FrontDoor, Integrity, Label, Principal};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};

/// Ten host patterns with a common theme, none matching the worst-case request.
fn hosts(theme: &str) -> Vec<String> {
    (0..10).map(|i| format!("*.{theme}{i}.example")).collect()
}

fn rule(v: Value) -> RuleSpec {
    RuleSpec::from_json(&v).expect("a bench rule parses")
}

/// 50 rules, as an owner who configured a lot might write them.
fn policy() -> Policy {
    let mut specs = vec![rule(
        json!({"name": "no-shell", "tool": "exec", "then": "deny"}),
    )];
    for i in 0..9 {
        specs.push(rule(json!({
            "name": format!("no-leak-{i}"),
            "effect": ["egress"],
            "destination": hosts(&format!("paste{i}-")),
            "then": "deny",
        })));
    }
    for i in 0..5 {
        specs.push(rule(json!({
            "name": format!("no-secret-exec-{i}"),
            "tool": [format!("run_{i}_*"), format!("*_script_{i}")],
            "effect": ["exec", "self_modify"],
            "when": {"session_confidentiality": "secret"},
            "then": "deny",
        })));
    }
    for i in 0..10 {
        specs.push(rule(json!({
            "name": format!("mail-outside-{i}"),
            "tool": ["send_*", "*_message", "http_*"],
            "effect": ["egress"],
            "destination_not_in": hosts(&format!("corp{i}-")),
            "when": {"session_seen": [format!("contact:team{i}*")]},
            "then": "ask",
        })));
    }
    for i in 0..10 {
        specs.push(rule(json!({
            "name": format!("careful-after-{i}"),
            "effect": ["egress", "exec", "write"],
            "when": {
                "session_seen": [format!("tool:scraper_{i}"), format!("plugin:p{i}")],
                "exposure_above": 30 + i,
            },
            "then": "ask",
        })));
    }
    for i in 0..15 {
        specs.push(rule(json!({
            "name": format!("trusted-apis-{i}"),
            "tool": ["http_request", "web_fetch"],
            "effect": "egress",
            "destination": hosts(&format!("api{i}-")),
            "when": {"session_confidentiality": "private"},
            "then": "allow",
        })));
    }
    assert_eq!(specs.len(), 50);
    let rules = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.build(&format!("rules.{i}"))
                .expect("a bench rule is valid")
        })
        .collect();
    let list = |prefix: &str| {
        (0..20)
            .map(|i| Pattern::parse(&format!("{prefix}{i}*")).expect("a pattern"))
            .collect::<Vec<_>>()
    };
    let allow_destinations = BTreeMap::from([
        (EffectClass::Egress, list("host:listed")),
        (EffectClass::Write, list("path:notes/")),
    ]);
    Policy {
        rules,
        allow_destinations,
        ..Policy::default()
    }
}

/// Five approved steps, none covering the worst-case request.
fn grants() -> Vec<Grant> {
    let plan = Plan::from_args(&json!({
        "goal": "bench",
        "steps": [
            {"tool": "web_fetch", "args": {"url": {"prefix": "https://docs.example.com/"}},
             "destinations": ["docs.example.com"], "max_calls": 5},
            {"tool": "http_request", "args": {"url": {"prefix": "https://api.example.com/v1/"}},
             "destinations": ["api.example.com"]},
            {"tool": "http_request", "args": {"/body/to": {"one_of": ["alice", "bob"]}},
             "destinations": ["chat.example.com"]},
            {"tool": "write_file", "args": {"path": {"exact": "summary.md"}}},
            {"tool": "send_email", "args": {"to": {"exact": "bob@example.com"}}},
        ]
    }))
    .expect("the bench plan parses");
    plan.steps
        .into_iter()
        .enumerate()
        .map(|(i, step)| Grant {
            id: format!("plan_bench#{}", i + 1),
            remaining: step.max_calls,
            expires_ms: Some(2_000_000_000_000),
            step,
        })
        .collect()
}

struct Fixture {
    policy: Policy,
    seen: Vec<String>,
    grants: Vec<Grant>,
    owner: Principal,
    destinations: Vec<Destination>,
    args: Value,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            policy: policy(),
            seen: ["owner", "web", "tool:web_fetch", "user_file"]
                .map(String::from)
                .to_vec(),
            grants: grants(),
            owner: Principal::owner(FrontDoor::Api),
            destinations: [
                "host:api.unlisted.net",
                "host:cdn.unlisted.net",
                "host:x.evil.net",
            ]
            .map(Destination::parse)
            .to_vec(),
            args: json!({"url": "https://api.unlisted.net/upload", "body": {"to": "eve"}}),
        }
    }

    fn state(&self) -> SessionState<'_> {
        SessionState {
            label: Label {
                integrity: Integrity::Untrusted,
                confidentiality: Confidentiality::Private,
            },
            seen: &self.seen,
            exposure: Exposure {
                untrusted_reads: 3,
                private_reads: 2,
                egress: 1,
                ..Exposure::default()
            },
            grants: &self.grants,
            now_ms: 1_700_000_000_000,
        }
    }

    /// The worst case: every rule's filters pass or scan their lists, no grant covers,
    /// the allowlist is scanned, and the untrusted default asks.
    fn falls_to_defaults(&self) -> Request<'_> {
        Request {
            principal: &self.owner,
            tool: "http_request",
            effect: EffectClass::Egress,
            destinations: &self.destinations,
            args: &self.args,
        }
    }

    /// The first rule denies.
    fn early_deny(&self) -> Request<'_> {
        Request {
            principal: &self.owner,
            tool: "exec",
            effect: EffectClass::Exec,
            destinations: &[],
            args: &self.args,
        }
    }
}

fn decide_bench(c: &mut Criterion) {
    let f = Fixture::new();
    let state = f.state();
    let cases = [
        (
            "falls_to_defaults",
            f.falls_to_defaults(),
            "default.untrusted-asks",
        ),
        ("early_deny", f.early_deny(), "no-shell"),
    ];
    for (_, req, rule) in &cases {
        assert_eq!(decide(&f.policy, &state, req).decision.rule(), *rule);
    }

    let mut group = c.benchmark_group("decide");
    for (name, req, _) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| decide(black_box(&f.policy), black_box(&state), black_box(req)))
        });
    }
    group.finish();

    // Criterion reports means; the target is a p99, so time single calls too.
    for (name, req, _) in &cases {
        let mut samples: Vec<Duration> = Vec::with_capacity(200_000);
        for _ in 0..200_000 {
            let t = Instant::now();
            black_box(decide(
                black_box(&f.policy),
                black_box(&state),
                black_box(req),
            ));
            samples.push(t.elapsed());
        }
        samples.sort();
        let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
        println!(
            "decide/{name} single calls: p50 {:?}  p99 {:?}  max {:?}  (n = {})",
            pct(0.50),
            pct(0.99),
            samples[samples.len() - 1],
            samples.len()
        );
    }
}

criterion_group!(benches, decide_bench);
criterion_main!(benches);
