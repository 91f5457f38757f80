//! `[policy]`, `[tools.NAME]` and `[[rules]]`: the owner's policy.
//!
//! `[[policy.rules]]` are structured rules in the policy crate's rule language;
//! `[[rules]]` are plain-English rules, compiled once by the model into that language
//! (`cara rules compile`); `[tools.NAME]` overrides a tool's effect class or raises the
//! label of its results.

use std::collections::BTreeMap;

use carapace_policy::{Friction, Pattern, Policy, Rule, RuleSpec, Weights};
use carapace_types::{Confidentiality, EffectClass, Integrity, Label};
use serde::Deserialize;
use toml::Spanned;

use super::Locator;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// `default` (decide from labels) or `strict` (every consequential call asks unless a
    /// plan covers it).
    pub preset: Spanned<String>,
    /// How long approved plan steps last, at most.
    pub plan_ttl_minutes: Spanned<u64>,
    /// How long the model may take to judge a plain-English rule that did not compile;
    /// after that the call asks.
    pub judge_timeout_secs: Spanned<u64>,
    /// Destinations on the allowlist, per effect class.
    pub allow_destinations: BTreeMap<String, Spanned<Vec<String>>>,
    pub friction: FrictionSection,
    pub rules: Vec<Spanned<RuleSpec>>,
}

impl Default for PolicySection {
    fn default() -> Self {
        PolicySection {
            preset: Spanned::new(0..0, "default".into()),
            plan_ttl_minutes: Spanned::new(0..0, 60),
            judge_timeout_secs: Spanned::new(0..0, 10),
            allow_destinations: BTreeMap::new(),
            friction: FrictionSection::default(),
            rules: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FrictionSection {
    pub ask_above: Spanned<u32>,
    pub deny_above: Spanned<u32>,
    pub weights: WeightsSection,
}

impl Default for FrictionSection {
    fn default() -> Self {
        let d = Friction::default();
        FrictionSection {
            ask_above: Spanned::new(0..0, d.ask_above),
            deny_above: Spanned::new(0..0, d.deny_above),
            weights: WeightsSection::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightsSection {
    pub untrusted_read: u32,
    pub private_read: u32,
    pub write: u32,
    pub egress: u32,
    pub exec: u32,
    pub secret: u32,
    pub self_modify: u32,
}

impl Default for WeightsSection {
    fn default() -> Self {
        let w = Weights::default();
        WeightsSection {
            untrusted_read: w.untrusted_read,
            private_read: w.private_read,
            write: w.write,
            egress: w.egress,
            exec: w.exec,
            secret: w.secret,
            self_modify: w.self_modify,
        }
    }
}

/// `[tools.NAME]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSection {
    /// The effect class policy decides with.
    pub effect: Option<Spanned<String>>,
    /// The least label of results: `untrusted`, `private`, `secret`, or
    /// `integrity/confidentiality` like `untrusted/private`.
    pub result: Option<Spanned<String>>,
}

/// `[[rules]]`: a plain-English rule.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnglishRule {
    pub text: Spanned<String>,
}

/// Reads `untrusted`, `private`, `secret`, `trusted`, `public` or `I/C`.
pub fn parse_result_label(text: &str) -> Result<Label, String> {
    let mut label = Label::TRUSTED_PUBLIC;
    for part in text.split('/') {
        let part = part.trim();
        if let Some(i) = Integrity::parse(part) {
            label.integrity = i;
        } else if let Some(c) = Confidentiality::parse(part) {
            label.confidentiality = c;
        } else {
            return Err(format!(
                "`{text}` is not a label (untrusted, private, secret, or like untrusted/private)"
            ));
        }
    }
    Ok(label)
}

pub fn effect(text: &str) -> Result<EffectClass, String> {
    EffectClass::parse(text).ok_or_else(|| {
        format!("`{text}` is not an effect class (read, write, egress, exec, secret, self_modify)")
    })
}

impl PolicySection {
    /// Builds the policy (without compiled plain-English rules, which the caller adds).
    pub fn build(&self, at: &Locator<'_>) -> anyhow::Result<Policy> {
        let mut policy = match self.preset.get_ref().as_str() {
            "default" => Policy::default(),
            "strict" => Policy::strict(),
            other => {
                return Err(at.span(
                    self.preset.span(),
                    "policy.preset",
                    format!("`{other}` is not a preset (default, strict)"),
                ));
            }
        };
        for (name, list) in &self.allow_destinations {
            let key = format!("policy.allow_destinations.{name}");
            let class = effect(name).map_err(|p| at.span(list.span(), &key, p))?;
            let patterns = list
                .get_ref()
                .iter()
                .map(|p| Pattern::parse(p).map_err(|e| at.span(list.span(), &key, e)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            policy.allow_destinations.insert(class, patterns);
        }
        let f = &self.friction;
        let (ask, deny) = (*f.ask_above.get_ref(), *f.deny_above.get_ref());
        if deny <= ask {
            return Err(at.span(
                f.deny_above.span(),
                "policy.friction.deny_above",
                format!("{deny} must be above policy.friction.ask_above ({ask})"),
            ));
        }
        let w = &f.weights;
        policy.friction = Friction {
            weights: Weights {
                untrusted_read: w.untrusted_read,
                private_read: w.private_read,
                write: w.write,
                egress: w.egress,
                exec: w.exec,
                secret: w.secret,
                self_modify: w.self_modify,
            },
            ask_above: ask,
            deny_above: deny,
        };
        let mut names = std::collections::BTreeSet::new();
        for (i, spec) in self.rules.iter().enumerate() {
            let n = i + 1;
            let rule = structured_rule(spec.get_ref(), n).map_err(|e| {
                at.span(
                    spec.span(),
                    &format!("policy.rules[{n}].{}", e.key),
                    e.message,
                )
            })?;
            if !names.insert(rule.name.clone()) {
                return Err(at.span(
                    spec.span(),
                    &format!("policy.rules[{n}].name"),
                    format!("another rule is already named `{}`", rule.name),
                ));
            }
            policy.rules.push(rule);
        }
        let minutes = *self.plan_ttl_minutes.get_ref();
        if !(1..=24 * 60).contains(&minutes) {
            return Err(at.span(
                self.plan_ttl_minutes.span(),
                "policy.plan_ttl_minutes",
                format!("{minutes} is out of range 1..=1440"),
            ));
        }
        let secs = *self.judge_timeout_secs.get_ref();
        if !(1..=300).contains(&secs) {
            return Err(at.span(
                self.judge_timeout_secs.span(),
                "policy.judge_timeout_secs",
                format!("{secs} is out of range 1..=300"),
            ));
        }
        Ok(policy)
    }
}

/// A `[[policy.rules]]` entry, named `rules.NAME` (or `rules.N` by position).
pub fn structured_rule(spec: &RuleSpec, n: usize) -> Result<Rule, carapace_policy::RuleError> {
    let mut rule = spec.build(&n.to_string())?;
    rule.name = format!("rules.{}", rule.name);
    Ok(rule)
}

/// Validates `[tools.NAME]` and returns the Gate's overrides.
pub fn tool_overrides(
    at: &Locator<'_>,
    tools: &BTreeMap<String, ToolSection>,
) -> anyhow::Result<BTreeMap<String, carapace_gate::ToolOverride>> {
    let mut out = BTreeMap::new();
    for (name, t) in tools {
        if !carapace_gate::KNOWN_TOOLS.contains(&name.as_str()) {
            return Err(at.key(
                &format!("tools.{name}"),
                format!(
                    "unknown tool `{name}`; known tools: {}",
                    carapace_gate::KNOWN_TOOLS.join(", ")
                ),
            ));
        }
        let mut o = carapace_gate::ToolOverride::default();
        if let Some(e) = &t.effect {
            let key = format!("tools.{name}.effect");
            o.effect = Some(effect(e.get_ref()).map_err(|p| at.span(e.span(), &key, p))?);
        }
        if let Some(r) = &t.result {
            let key = format!("tools.{name}.result");
            o.result =
                Some(parse_result_label(r.get_ref()).map_err(|p| at.span(r.span(), &key, p))?);
        }
        out.insert(name.clone(), o);
    }
    Ok(out)
}
