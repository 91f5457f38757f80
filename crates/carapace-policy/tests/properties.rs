//! Properties of policy over random policies, sessions and sequences of tool results:
//! a session's label, sources and exposure only rise; rising never loosens a decision
//! (so no tool result turns a deny into an allow without the owner); a model's verdict
//! never yields an allow; and globs match what their definition says.

use std::collections::BTreeSet;

use carapace_policy::{
    Destination, Exposure, Friction, Grant, ModelAsk, Pattern, Policy, Request, RuleSpec,
    SessionState, Step, Weights, decide, escalate, strictness,
};
use carapace_types::{
    Confidentiality, Decision, EffectClass, FrontDoor, Integrity, Label, Principal,
};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use serde_json::{Value, json};

const TOOLS: &[&str] = &[
    "exec",
    "web_fetch",
    "http_request",
    "write_file",
    "read_file",
    "send_email",
    "skill_install",
];
const TOOL_GLOBS: &[&str] = &["exec", "web_*", "*_file", "send_*", "*"];
const DESTINATIONS: &[&str] = &[
    "host:api.example.com",
    "host:evil.net",
    "host:pastebin.com",
    "path:notes/a.md",
    "path:secrets.txt",
    "contact:bob@example.com",
    "contact:eve@evil.net",
];
const DEST_PATTERNS: &[&str] = &[
    "*.example.com",
    "evil.net",
    "*pastebin.com",
    "path:notes/*",
    "contact:*@example.com",
    "*",
];
const SOURCES: &[&str] = &[
    "owner",
    "model",
    "web",
    "user_file",
    "agent_file",
    "tool:exec",
    "tool:web_fetch",
    "contact:+14155550100",
];
const SOURCE_PATTERNS: &[&str] = &["web", "tool:*", "contact:*", "user_file"];

fn label() -> impl Strategy<Value = Label> {
    (
        select(vec![Integrity::Trusted, Integrity::Untrusted]),
        select(vec![
            Confidentiality::Public,
            Confidentiality::Private,
            Confidentiality::Secret,
        ]),
    )
        .prop_map(|(integrity, confidentiality)| Label {
            integrity,
            confidentiality,
        })
}

fn effect() -> impl Strategy<Value = EffectClass> {
    select(EffectClass::ALL.to_vec())
}

fn strings(from: &'static [&'static str], max: usize) -> impl Strategy<Value = Vec<String>> {
    subsequence(from, 0..=max.min(from.len()))
        .prop_map(|v| v.into_iter().map(str::to_string).collect())
}

/// Half the time nothing: a rule's filter is often absent, so rules often match.
fn maybe<T: Clone + std::fmt::Debug>(
    s: impl Strategy<Value = Vec<T>>,
) -> impl Strategy<Value = Vec<T>> {
    prop_oneof![Just(Vec::new()), s]
}

/// Mostly small, so that friction leaves room for the other rules.
fn exposure() -> impl Strategy<Value = Exposure> {
    prop_oneof![Just([0; 7]), prop::array::uniform7(0u32..4)].prop_map(|n| Exposure {
        untrusted_reads: n[0],
        private_reads: n[1],
        writes: n[2],
        egress: n[3],
        exec: n[4],
        secrets: n[5],
        self_modify: n[6],
    })
}

fn many(v: Vec<String>) -> carapace_policy::OneOrMany {
    if v.is_empty() {
        carapace_policy::OneOrMany::None
    } else {
        carapace_policy::OneOrMany::Many(v)
    }
}

/// An owner's rule from a small vocabulary; allow rules get only what the rule language
/// lets them have (label ceilings, tools, effects, destinations).
fn rule() -> impl Strategy<Value = RuleSpec> {
    (
        select(vec!["allow", "ask", "deny"]),
        maybe(strings(TOOL_GLOBS, 2)),
        maybe(subsequence(EffectClass::ALL.to_vec(), 1..=3)),
        maybe(strings(DEST_PATTERNS, 2)),
        maybe(strings(DEST_PATTERNS, 2)),
        prop::option::of(select(vec!["trusted", "untrusted"])),
        prop::option::of(select(vec!["public", "private", "secret"])),
        strings(SOURCE_PATTERNS, 2),
        prop::option::of(0u32..80),
    )
        .prop_map(
            |(then, tools, effects, dests, not_in, i, c, seen, exposure)| {
                let allow = then == "allow";
                let mut spec = RuleSpec {
                    tool: many(tools),
                    effect: many(effects.iter().map(|e| e.as_str().to_string()).collect()),
                    destination: many(dests),
                    then: then.to_string(),
                    ..RuleSpec::default()
                };
                spec.when.session_integrity = i.map(str::to_string);
                spec.when.session_confidentiality = c.map(str::to_string);
                if !allow {
                    spec.destination_not_in = many(not_in);
                    spec.when.session_seen = many(seen);
                    spec.when.exposure_above = exposure;
                }
                spec
            },
        )
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop::collection::vec(rule(), 0..8),
        prop::collection::vec((effect(), strings(DEST_PATTERNS, 3)), 0..3),
        0u32..200,
        0u32..200,
        prop::array::uniform7(0u32..4),
    )
        .prop_map(|(specs, lists, ask_above, gap, w)| {
            let rules = specs
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    s.build(&format!("rules.{i}"))
                        .expect("a generated rule is valid")
                })
                .collect();
            let allow_destinations = lists
                .into_iter()
                .map(|(e, ps)| {
                    (
                        e,
                        ps.iter()
                            .map(|p| Pattern::parse(p).expect("a pattern"))
                            .collect(),
                    )
                })
                .collect();
            Policy {
                rules,
                allow_destinations,
                friction: Friction {
                    weights: Weights {
                        untrusted_read: w[0],
                        private_read: w[1],
                        write: w[2],
                        egress: w[3],
                        exec: w[4],
                        secret: w[5],
                        self_modify: w[6],
                    },
                    ask_above,
                    deny_above: ask_above + gap,
                },
            }
        })
}

/// A grant the owner gave before the sequence starts; live, spent or expired at
/// `now_ms = 1000`.
fn grant() -> impl Strategy<Value = Grant> {
    (
        select(TOOLS.to_vec()),
        strings(DEST_PATTERNS, 2),
        prop::option::of(0u32..3),
        prop::option::of(select(vec![500i64, 1000, 2000])),
    )
        .prop_map(|(tool, dests, remaining, expires_ms)| Grant {
            id: format!("plan_p#{tool}"),
            step: Step {
                tool: tool.to_string(),
                args: Default::default(),
                destinations: dests
                    .iter()
                    .map(|d| Pattern::parse(d).expect("a pattern"))
                    .collect(),
                max_calls: None,
                why: String::new(),
            },
            remaining,
            expires_ms,
        })
}

/// The request asked again after every tool result.
#[derive(Clone, Debug)]
struct Call {
    tool: &'static str,
    effect: EffectClass,
    destinations: Vec<Destination>,
    args: Value,
}

fn call() -> impl Strategy<Value = Call> {
    (select(TOOLS.to_vec()), effect(), strings(DESTINATIONS, 3)).prop_map(|(tool, effect, ds)| {
        Call {
            tool,
            effect,
            destinations: ds.iter().map(|d| Destination::parse(d)).collect(),
            args: json!({"url": "https://api.example.com/"}),
        }
    })
}

/// What one executed tool call adds to a session: its result's label, the source it
/// came from, and what it did.
#[derive(Clone, Debug)]
struct ToolResult {
    label: Label,
    source: Option<&'static str>,
    effect: EffectClass,
    used_secret: bool,
}

fn tool_result() -> impl Strategy<Value = ToolResult> {
    (
        label(),
        prop::option::of(select(SOURCES.to_vec())),
        effect(),
        any::<bool>(),
    )
        .prop_map(|(label, source, effect, used_secret)| ToolResult {
            label,
            source,
            effect,
            used_secret,
        })
}

/// A session as the Gate holds it, owning what `SessionState` borrows.
#[derive(Clone, Debug)]
struct Session {
    label: Label,
    seen: Vec<String>,
    exposure: Exposure,
    grants: Vec<Grant>,
}

impl Session {
    /// Takes in one tool result, as the Gate does after executing a call; never grants.
    fn absorb(&mut self, r: &ToolResult) {
        self.label = self.label.join(r.label);
        if let Some(s) = r.source
            && !self.seen.iter().any(|x| x == s)
        {
            self.seen.push(s.to_string());
        }
        self.exposure.record(r.effect, r.label, r.used_secret);
    }

    fn decide(&self, policy: &Policy, call: &Call) -> Decision {
        let owner = Principal::owner(FrontDoor::Api);
        let state = SessionState {
            label: self.label,
            seen: &self.seen,
            exposure: self.exposure,
            grants: &self.grants,
            now_ms: 1000,
        };
        let req = Request {
            principal: &owner,
            tool: call.tool,
            effect: call.effect,
            destinations: &call.destinations,
            args: &call.args,
        };
        decide(policy, &state, &req).decision
    }
}

fn session() -> impl Strategy<Value = Session> {
    (
        prop_oneof![Just(Label::TRUSTED_PUBLIC), label()],
        maybe(strings(SOURCES, 3)),
        exposure(),
        prop::collection::vec(grant(), 0..3),
    )
        .prop_map(|(label, seen, exposure, grants)| Session {
            label,
            seen,
            exposure,
            grants,
        })
}

fn exposure_counts(e: &Exposure) -> [u32; 7] {
    [
        e.untrusted_reads,
        e.private_reads,
        e.writes,
        e.egress,
        e.exec,
        e.secrets,
        e.self_modify,
    ]
}

fn decision() -> impl Strategy<Value = Decision> {
    (
        0u8..3,
        select(vec!["default.allow", "grant.x", "rules.1", "friction.ask"]),
    )
        .prop_map(|(k, rule)| {
            let rule = rule.to_string();
            match k {
                0 => Decision::Allow { rule },
                1 => Decision::Ask {
                    rule,
                    reason: "because".into(),
                },
                _ => Decision::Deny {
                    rule,
                    reason: "because".into(),
                },
            }
        })
}

/// The glob semantics, written the slow and obvious way: `*` matches any run.
fn reference_glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| reference_glob(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && reference_glob(rest, &text[1..]),
    }
}

fn word(alphabet: &'static [u8], max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(select(alphabet.to_vec()), 0..=max)
        .prop_map(|v| String::from_utf8(v).expect("ascii"))
}

proptest! {
    /// Tool and source globs match exactly what the obvious definition matches.
    #[test]
    fn globs_match_like_the_definition(
        pattern in word(b"ab.*", 8).prop_filter("a pattern is not empty", |p| !p.is_empty()),
        text in word(b"ab.", 10),
    ) {
        let p = Pattern::parse(&pattern).expect("a pattern");
        prop_assert_eq!(
            p.matches_name(&text),
            reference_glob(pattern.as_bytes(), text.as_bytes()),
            "{} against {}", pattern, text
        );
        prop_assert_eq!(
            p.matches(&Destination::host(&text)),
            reference_glob(pattern.as_bytes(), text.as_bytes()),
            "{} against host:{}", pattern, text
        );
    }

    /// Joining result labels from a fresh session only ever rises, and so do the sources
    /// seen and every exposure counter (and so the friction score).
    #[test]
    fn a_session_only_rises(
        results in prop::collection::vec(tool_result(), 0..20),
        weights in prop::array::uniform7(0u32..5),
    ) {
        let friction = Friction {
            weights: Weights {
                untrusted_read: weights[0],
                private_read: weights[1],
                write: weights[2],
                egress: weights[3],
                exec: weights[4],
                secret: weights[5],
                self_modify: weights[6],
            },
            ..Friction::default()
        };
        let mut s = Session {
            label: Label::TRUSTED_PUBLIC,
            seen: Vec::new(),
            exposure: Exposure::default(),
            grants: Vec::new(),
        };
        for r in &results {
            let before = s.clone();
            s.absorb(r);
            prop_assert!(s.label.dominates(before.label), "{} after {}", s.label, before.label);
            prop_assert!(s.label.dominates(r.label), "{} does not hold {}", s.label, r.label);
            let (old, new): (BTreeSet<_>, BTreeSet<_>) =
                (before.seen.iter().collect(), s.seen.iter().collect());
            prop_assert!(old.is_subset(&new));
            let (old, new) = (exposure_counts(&before.exposure), exposure_counts(&s.exposure));
            prop_assert!(old.iter().zip(new).all(|(a, b)| *a <= b), "{old:?} -> {new:?}");
            prop_assert!(friction.score(&s.exposure) >= friction.score(&before.exposure));
        }
    }

    /// Tool results (labels, sources, exposure) without a new grant never loosen a
    /// decision; in particular a deny stays a deny.
    #[test]
    fn tool_results_never_loosen_a_decision(
        policy in policy(),
        start in session(),
        call in call(),
        results in prop::collection::vec(tool_result(), 1..10),
    ) {
        let mut s = start;
        let mut last = s.decide(&policy, &call);
        for r in &results {
            s.absorb(r);
            let next = s.decide(&policy, &call);
            prop_assert!(
                strictness(&next) >= strictness(&last),
                "{last:?} loosened to {next:?} after {r:?}\nsession: {s:?}\npolicy: {policy:?}"
            );
            last = next;
        }
    }

    /// A model's verdict can make a decision stricter, never looser, and never allows.
    #[test]
    fn a_model_verdict_never_allows(
        d in decision(),
        asks in prop::collection::vec(
            (select(vec!["english.0a", "english.ff"]), select(vec!["", "looks risky"])),
            1..4,
        ),
    ) {
        let asks: Vec<ModelAsk> = asks
            .into_iter()
            .map(|(rule, reason)| ModelAsk { rule: rule.into(), reason: reason.into() })
            .collect();
        let out = escalate(d.clone(), &asks);
        prop_assert!(!matches!(out, Decision::Allow { .. }), "{d:?} -> {out:?}");
        prop_assert!(strictness(&out) >= strictness(&d));
        if !matches!(d, Decision::Allow { .. }) {
            prop_assert_eq!(out, d);
        }
    }
}
