//! Pure policy decisions: given who asks, for which tool with which effect class and
//! destinations, in a session holding data with which labels, having been granted what,
//! say allow, ask or deny, and name the rule that said it.
//!
//! This crate must stay pure: no IO, no clock, no tokio, no SQL, no network, and no
//! model. The same input always gives the same decision; time comes in as a number. A
//! plain-English rule that could not be compiled is judged by a model in the Gate, and
//! can only reach this crate as a [`ModelAsk`], which [`escalate`] turns into an ask and
//! never into an allow.
//!
//! The order of evaluation, first hit wins:
//! 1. deny: the owner's deny rules; egress off the allowlist from a session holding a
//!    secret; any consequential call once friction is `locked`;
//! 2. grants: a call an approved plan step (or "approve for this session") covers;
//! 3. friction `ask`: every consequential call;
//! 4. the owner's rules: an ask rule that matches, else an allow rule that matches;
//! 5. the default rules: untrusted session -> write, egress, exec and self_modify ask;
//!    private session -> egress off the allowlist asks; else allow.
//!
//! Every input to steps 1, 3 and 5 only rises within a session, and an allow rule's
//! session conditions are ceilings, so seeing more never loosens a decision; only the
//! owner (a grant, a reset) does.

mod friction;
mod pattern;
mod plan;
mod rule;

pub use friction::{Exposure, Friction, Level, Weights};
pub use pattern::{DestKind, Destination, Pattern};
pub use plan::{Constraint, Grant, MAX_STEPS, Plan, Step, parse_step_ranges};
pub use rule::{OneOrMany, Rule, RuleError, RuleSpec, Then, When, WhenSpec};

use std::collections::BTreeMap;

use carapace_types::{Confidentiality, Decision, EffectClass, Integrity, Label, Principal};
use serde_json::{Value, json};

use crate::rule::Facts;

/// The whole policy: the owner's rules, destination allowlists and friction settings.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// The owner's structured rules and compiled plain-English rules, in config order.
    pub rules: Vec<Rule>,
    /// Destinations that count as "on the allowlist" for each effect class.
    pub allow_destinations: BTreeMap<EffectClass, Vec<Pattern>>,
    /// Escalating friction.
    pub friction: Friction,
}

/// What policy may know of a session; built by the Gate from the store, never from the
/// caller.
#[derive(Clone, Copy, Debug)]
pub struct SessionState<'a> {
    /// The join of every label the session has seen.
    pub label: Label,
    /// The sources the session has seen (`owner`, `web`, `tool:exec`, ...).
    pub seen: &'a [String],
    /// What the session has been granted so far.
    pub exposure: Exposure,
    /// Approved plan steps and session grants.
    pub grants: &'a [Grant],
    /// Now, ms since the epoch (grants expire).
    pub now_ms: i64,
}

/// One request for a decision.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Who is acting.
    pub principal: &'a Principal,
    /// The resolved tool name.
    pub tool: &'a str,
    /// The tool's effect class (declared, or overridden in config).
    pub effect: EffectClass,
    /// Where the call reaches, extracted by the tool's definition.
    pub destinations: &'a [Destination],
    /// The validated arguments (plan steps constrain them).
    pub args: &'a Value,
}

/// A decision and, when a grant allowed it, which one (the caller consumes it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The decision, naming its rule.
    pub decision: Decision,
    /// Index into [`SessionState::grants`] of the grant that allowed the call.
    pub grant: Option<usize>,
}

impl Verdict {
    fn of(decision: Decision) -> Verdict {
        Verdict {
            decision,
            grant: None,
        }
    }
}

/// True when an effect has consequences beyond reading.
pub fn consequential(effect: EffectClass) -> bool {
    effect != EffectClass::Read
}

impl Policy {
    /// The strict preset (`[policy] preset = "strict"`): every consequential call asks
    /// unless an approved plan step or session grant covers it, whatever the session has
    /// seen. The owner's rules come after it.
    pub fn strict() -> Policy {
        let rule = Rule {
            name: "preset.strict".into(),
            tools: Vec::new(),
            effects: EffectClass::ALL
                .into_iter()
                .filter(|e| consequential(*e))
                .collect(),
            destinations: Vec::new(),
            destination_not_in: Vec::new(),
            when: When::default(),
            then: Then::Ask,
            reason: Some("the strict preset asks before every call that is not a read".into()),
        };
        Policy {
            rules: vec![rule],
            ..Policy::default()
        }
    }

    /// The destinations of `req` not on the allowlist of its effect. A consequential call
    /// with no destination at all counts as going nowhere listed.
    fn off_list<'r>(&self, req: &Request<'r>) -> Vec<&'r Destination> {
        let list = self
            .allow_destinations
            .get(&req.effect)
            .map(Vec::as_slice)
            .unwrap_or_default();
        req.destinations
            .iter()
            .filter(|d| !list.iter().any(|p| p.matches(d)))
            .collect()
    }

    fn all_listed(&self, req: &Request<'_>) -> bool {
        !req.destinations.is_empty() && self.off_list(req).is_empty()
    }

    /// The friction level of a session.
    pub fn level(&self, state: &SessionState<'_>) -> Level {
        self.friction.level(self.friction.score(&state.exposure))
    }
}

/// Decides one request. Deterministic, no IO; see the crate docs for the order.
pub fn decide(policy: &Policy, state: &SessionState<'_>, req: &Request<'_>) -> Verdict {
    let facts = Facts {
        tool: req.tool,
        effect: req.effect,
        destinations: req.destinations,
        label: state.label,
        seen: state.seen,
        exposure: policy.friction.score(&state.exposure),
    };
    let level = policy.friction.level(facts.exposure);
    let effect = req.effect.as_str();
    let heavy = consequential(req.effect);

    // 1. deny
    if let Some(rule) = policy
        .rules
        .iter()
        .find(|r| r.then == Then::Deny && r.matches(&facts))
    {
        return Verdict::of(Decision::Deny {
            rule: rule.name.clone(),
            reason: rule.reason_text(req.tool, req.effect),
        });
    }
    if req.effect == EffectClass::Egress && state.label.confidentiality == Confidentiality::Secret {
        let off = policy.off_list(req);
        if !off.is_empty() || req.destinations.is_empty() {
            return Verdict::of(Decision::Deny {
                rule: "default.secret-egress".into(),
                reason: format!(
                    "this session holds a secret and {} would send data to {}, which is not on the egress allowlist",
                    req.tool,
                    describe(&off)
                ),
            });
        }
    }
    if heavy && level == Level::Locked {
        return Verdict::of(Decision::Deny {
            rule: "friction.locked".into(),
            reason: format!(
                "this session has been granted a lot (exposure score {} is above {}); consequential calls are refused until the owner resets the session",
                facts.exposure, policy.friction.deny_above
            ),
        });
    }

    // 2. grants
    if let Some((i, grant)) =
        state.grants.iter().enumerate().find(|(_, g)| {
            g.live(state.now_ms) && g.step.covers(req.tool, req.args, req.destinations)
        })
    {
        return Verdict {
            decision: Decision::Allow {
                rule: format!("grant.{}", grant.id),
            },
            grant: Some(i),
        };
    }

    // 3. friction
    if heavy && level == Level::Ask {
        return Verdict::of(Decision::Ask {
            rule: "friction.ask".into(),
            reason: format!(
                "this session has been granted a lot (exposure score {} is above {}); every consequential call asks now",
                facts.exposure, policy.friction.ask_above
            ),
        });
    }

    // 4. the owner's rules
    if let Some(rule) = policy
        .rules
        .iter()
        .find(|r| r.then == Then::Ask && r.matches(&facts))
    {
        return Verdict::of(Decision::Ask {
            rule: rule.name.clone(),
            reason: rule.reason_text(req.tool, req.effect),
        });
    }
    if let Some(rule) = policy
        .rules
        .iter()
        .find(|r| r.then == Then::Allow && r.matches(&facts))
    {
        return Verdict::of(Decision::Allow {
            rule: rule.name.clone(),
        });
    }

    // 5. defaults
    let tainting = matches!(
        req.effect,
        EffectClass::Write | EffectClass::Egress | EffectClass::Exec | EffectClass::SelfModify
    );
    if state.label.integrity == Integrity::Untrusted && tainting {
        if policy.all_listed(req) {
            return Verdict::of(Decision::Allow {
                rule: format!("allowlist.{effect}"),
            });
        }
        return Verdict::of(Decision::Ask {
            rule: "default.untrusted-asks".into(),
            reason: format!(
                "{} has effect `{effect}` and this session has seen untrusted content ({}); no approved plan covers this call",
                req.tool,
                untrusted_sources(state.seen)
            ),
        });
    }
    if req.effect == EffectClass::Egress && state.label.confidentiality >= Confidentiality::Private
    {
        if policy.all_listed(req) {
            return Verdict::of(Decision::Allow {
                rule: "allowlist.egress".into(),
            });
        }
        return Verdict::of(Decision::Ask {
            rule: "default.private-egress-asks".into(),
            reason: format!(
                "this session holds private data and {} would send data to {}, which is not on the egress allowlist",
                req.tool,
                describe(&policy.off_list(req))
            ),
        });
    }
    Verdict::of(Decision::Allow {
        rule: if heavy {
            "default.allow".into()
        } else {
            "default.read".into()
        },
    })
}

fn describe(dests: &[&Destination]) -> String {
    if dests.is_empty() {
        return "a place it does not name".into();
    }
    let names: Vec<String> = dests.iter().take(5).map(|d| d.to_string()).collect();
    names.join(", ")
}

fn untrusted_sources(seen: &[String]) -> String {
    let names: Vec<&str> = seen
        .iter()
        .map(String::as_str)
        .filter(|s| *s != "owner" && *s != "model")
        .take(5)
        .collect();
    if names.is_empty() {
        "untrusted data".into()
    } else {
        format!("sources seen: {}", names.join(", "))
    }
}

/// What a model judging an uncompiled plain-English rule may see: metadata only, never
/// raw arguments or tool output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallMetadata {
    /// The tool name.
    pub tool: String,
    /// Its effect class.
    pub effect: EffectClass,
    /// The session's label.
    pub session_label: Label,
    /// The sources the session has seen.
    pub seen: Vec<String>,
    /// Where the call reaches.
    pub destinations: Vec<Destination>,
}

impl CallMetadata {
    /// Gathers the metadata of a request.
    pub fn of(state: &SessionState<'_>, req: &Request<'_>) -> CallMetadata {
        let mut seen = state.seen.to_vec();
        seen.sort();
        seen.dedup();
        let mut destinations = req.destinations.to_vec();
        destinations.sort();
        destinations.dedup();
        CallMetadata {
            tool: req.tool.to_string(),
            effect: req.effect,
            session_label: state.label,
            seen,
            destinations,
        }
    }

    /// The metadata as the judging model sees it; also the cache key (canonical: fields
    /// in a fixed order, lists sorted).
    pub fn to_json(&self) -> Value {
        json!({
            "tool": self.tool,
            "effect": self.effect.as_str(),
            "session_integrity": self.session_label.integrity.as_str(),
            "session_confidentiality": self.session_label.confidentiality.as_str(),
            "session_seen": self.seen.iter().map(|s| inert(s)).collect::<Vec<_>>(),
            "destinations": self
                .destinations
                .iter()
                .map(|d| format!("{}:{}", d.kind.as_str(), inert(&d.value)))
                .collect::<Vec<_>>(),
        })
    }
}

/// A name the model chose (a path, a host, a contact) as the judging model may see it:
/// only characters names are made of, at most 64 of them, so it reads as a name and
/// cannot carry a sentence addressed to the judge. A long name keeps both ends (for a
/// host the end is the registered domain a rule is most likely about).
fn inert(name: &str) -> String {
    const HALF: usize = 32;
    let clean: Vec<char> = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._/@+:-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.len() <= 2 * HALF {
        return clean.into_iter().collect();
    }
    let head: String = clean[..HALF].iter().collect();
    let tail: String = clean[clean.len() - HALF..].iter().collect();
    format!("{head}…{tail}")
}

/// A model's verdict on an uncompiled plain-English rule: it can ask, and that is all.
/// There is no way to build an allow from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelAsk {
    /// The rule's name (`english.<digest>`).
    pub rule: String,
    /// Why, in the model's words (shown to the owner as the model's, not as fact).
    pub reason: String,
}

/// Applies model verdicts to a deterministic decision: an allow with at least one
/// verdict becomes an ask; an ask or deny stays what it is.
pub fn escalate(decision: Decision, asks: &[ModelAsk]) -> Decision {
    match (decision, asks.first()) {
        (Decision::Allow { .. }, Some(ask)) => Decision::Ask {
            rule: ask.rule.clone(),
            reason: format!("a plain-English rule asks: {}", ask.reason),
        },
        (d, _) => d,
    }
}

/// How strict a decision is, for comparing them: allow < ask < deny.
pub fn strictness(d: &Decision) -> u8 {
    match d {
        Decision::Allow { .. } => 0,
        Decision::Ask { .. } => 1,
        Decision::Deny { .. } => 2,
    }
}

#[cfg(test)]
mod tests;
