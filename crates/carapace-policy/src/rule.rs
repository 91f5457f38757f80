//! The structured rule language, as written in `[[policy.rules]]` and as produced by
//! compiling a plain-English rule.

use std::fmt;

use carapace_types::{Confidentiality, EffectClass, Integrity, Label};
use serde::Deserialize;

use crate::pattern::{Destination, Pattern};

/// What a rule does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Then {
    /// Let the call through without asking (only over the default rules' asks).
    Allow,
    /// Ask the owner.
    Ask,
    /// Refuse.
    Deny,
}

impl Then {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Then::Allow => "allow",
            Then::Ask => "ask",
            Then::Deny => "deny",
        }
    }
}

/// Conditions on the session a rule applies in.
///
/// For `ask` and `deny` rules each condition means "has reached": `integrity =
/// Untrusted` matches once the session holds untrusted content, `confidentiality =
/// Private` once it holds private or secret content. For `allow` rules the two label
/// conditions are ceilings instead ("only while the session is still trusted"), and the
/// other conditions are refused. Either way a session that sees more can only meet
/// stricter rules: that is what keeps policy monotone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct When {
    /// Session integrity condition.
    pub integrity: Option<Integrity>,
    /// Session confidentiality condition.
    pub confidentiality: Option<Confidentiality>,
    /// Matches once the session has seen a source matching any of these (`web`,
    /// `tool:*`, `contact:*`).
    pub seen: Vec<Pattern>,
    /// Matches once the session's exposure score is above this.
    pub exposure_above: Option<u32>,
}

/// One structured rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The rule's name, as it appears in decisions (`rules.NAME`) and the audit log.
    pub name: String,
    /// Tool names (globs); empty: any tool.
    pub tools: Vec<Pattern>,
    /// Effect classes; empty: any.
    pub effects: Vec<EffectClass>,
    /// Destination patterns. An ask or deny rule matches when some destination matches
    /// one; an allow rule only when every destination (at least one) matches one.
    pub destinations: Vec<Pattern>,
    /// Matches when some destination matches none of these, or the call names none (a
    /// destination allowlist whose breach asks or denies). Not for allow rules.
    pub destination_not_in: Vec<Pattern>,
    /// Session conditions.
    pub when: When,
    /// What happens on a match.
    pub then: Then,
    /// Words for the owner; a generated sentence when absent.
    pub reason: Option<String>,
}

/// What a rule needs to know about a request and its session to match.
pub(crate) struct Facts<'a> {
    pub tool: &'a str,
    pub effect: EffectClass,
    pub destinations: &'a [Destination],
    pub label: Label,
    pub seen: &'a [String],
    pub exposure: u32,
}

impl Rule {
    pub(crate) fn matches(&self, f: &Facts<'_>) -> bool {
        if !self.tools.is_empty() && !self.tools.iter().any(|p| p.matches_name(f.tool)) {
            return false;
        }
        if !self.effects.is_empty() && !self.effects.contains(&f.effect) {
            return false;
        }
        if !self.destinations.is_empty() {
            let hit = |d: &Destination| self.destinations.iter().any(|p| p.matches(d));
            let ok = if self.then == Then::Allow {
                !f.destinations.is_empty() && f.destinations.iter().all(hit)
            } else {
                f.destinations.iter().any(hit)
            };
            if !ok {
                return false;
            }
        }
        // A call that names no destination counts as going somewhere off the list, as
        // it does for the allowlists.
        if !self.destination_not_in.is_empty()
            && !f.destinations.is_empty()
            && !f
                .destinations
                .iter()
                .any(|d| !self.destination_not_in.iter().any(|p| p.matches(d)))
        {
            return false;
        }
        self.session_matches(f)
    }

    fn session_matches(&self, f: &Facts<'_>) -> bool {
        let w = &self.when;
        if self.then == Then::Allow {
            // Ceilings: the allow holds only while the session is at or below them.
            return w.integrity.is_none_or(|i| f.label.integrity <= i)
                && w.confidentiality
                    .is_none_or(|c| f.label.confidentiality <= c);
        }
        w.integrity.is_none_or(|i| f.label.integrity >= i)
            && w.confidentiality
                .is_none_or(|c| f.label.confidentiality >= c)
            && (w.seen.is_empty()
                || f.seen
                    .iter()
                    .any(|s| w.seen.iter().any(|p| p.matches_name(s))))
            && w.exposure_above.is_none_or(|n| f.exposure > n)
    }

    /// The reason shown to the owner.
    pub fn reason_text(&self, tool: &str, effect: EffectClass) -> String {
        match &self.reason {
            Some(r) => r.clone(),
            None => format!(
                "the rule `{}` says {} for {tool} (effect `{}`)",
                self.name,
                self.then.as_str(),
                effect.as_str()
            ),
        }
    }
}

/// A rule as written: the serde form of the rule language. Unknown keys are refused.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Optional name; rules without one are named by position.
    #[serde(default)]
    pub name: Option<String>,
    /// Tool name globs.
    #[serde(default)]
    pub tool: OneOrMany,
    /// Effect class names.
    #[serde(default)]
    pub effect: OneOrMany,
    /// Destination patterns.
    #[serde(default)]
    pub destination: OneOrMany,
    /// Destination allowlist whose breach the rule is about.
    #[serde(default)]
    pub destination_not_in: OneOrMany,
    /// Session conditions.
    #[serde(default)]
    pub when: WhenSpec,
    /// `allow`, `ask` or `deny`.
    pub then: String,
    /// Words for the owner.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Session conditions as written.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WhenSpec {
    /// `trusted` or `untrusted`.
    #[serde(default)]
    pub session_integrity: Option<String>,
    /// `public`, `private` or `secret`.
    #[serde(default)]
    pub session_confidentiality: Option<String>,
    /// Source patterns the session has seen.
    #[serde(default)]
    pub session_seen: OneOrMany,
    /// Exposure score threshold.
    #[serde(default)]
    pub exposure_above: Option<u32>,
}

/// A string or a list of strings.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum OneOrMany {
    /// Not given.
    #[default]
    None,
    /// One value.
    One(String),
    /// Several values.
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<OneOrMany, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<String>()? {
                    out.push(v);
                }
                Ok(OneOrMany::Many(out))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl OneOrMany {
    /// The values, in order.
    pub fn values(&self) -> Vec<&str> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// Why a rule was refused: the key (dotted, inside the rule) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    /// The offending key, like `when.session_integrity`.
    pub key: String,
    /// What is wrong, lowercase, no final period.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for RuleError {}

fn err(key: &str, message: impl Into<String>) -> RuleError {
    RuleError {
        key: key.to_string(),
        message: message.into(),
    }
}

fn patterns(key: &str, v: &OneOrMany) -> Result<Vec<Pattern>, RuleError> {
    v.values()
        .into_iter()
        .map(|s| Pattern::parse(s).map_err(|m| err(key, m)))
        .collect()
}

/// Largest number of patterns a rule may hold in one key; a policy is read by people.
const MAX_PATTERNS: usize = 256;

impl RuleSpec {
    /// Parses a rule from JSON (a compiled plain-English rule, a test case).
    pub fn from_json(value: &serde_json::Value) -> Result<RuleSpec, RuleError> {
        RuleSpec::deserialize(value).map_err(|e| err("rule", e.to_string()))
    }

    /// Validates the rule; `fallback_name` names it when it has no name of its own.
    pub fn build(&self, fallback_name: &str) -> Result<Rule, RuleError> {
        let name = match &self.name {
            Some(n) => {
                let ok = !n.is_empty()
                    && n.len() <= 64
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if !ok {
                    return Err(err(
                        "name",
                        "a rule name is 1 to 64 characters of letters, digits, `-`, `_` and `.`",
                    ));
                }
                n.clone()
            }
            None => fallback_name.to_string(),
        };
        let then = match self.then.as_str() {
            "allow" => Then::Allow,
            "ask" => Then::Ask,
            "deny" => Then::Deny,
            other => {
                return Err(err(
                    "then",
                    format!("`{other}` is not one of allow, ask, deny"),
                ));
            }
        };
        let effects = self
            .effect
            .values()
            .into_iter()
            .map(|e| {
                EffectClass::parse(e).ok_or_else(|| {
                    err(
                        "effect",
                        format!(
                            "`{e}` is not an effect class (read, write, egress, exec, secret, self_modify)"
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let integrity = match &self.when.session_integrity {
            None => None,
            Some(s) => Some(Integrity::parse(s).ok_or_else(|| {
                err(
                    "when.session_integrity",
                    format!("`{s}` is not trusted or untrusted"),
                )
            })?),
        };
        let confidentiality = match &self.when.session_confidentiality {
            None => None,
            Some(s) => Some(Confidentiality::parse(s).ok_or_else(|| {
                err(
                    "when.session_confidentiality",
                    format!("`{s}` is not public, private or secret"),
                )
            })?),
        };
        let rule = Rule {
            name,
            tools: patterns("tool", &self.tool)?,
            effects,
            destinations: patterns("destination", &self.destination)?,
            destination_not_in: patterns("destination_not_in", &self.destination_not_in)?,
            when: When {
                integrity,
                confidentiality,
                seen: patterns("when.session_seen", &self.when.session_seen)?,
                exposure_above: self.when.exposure_above,
            },
            then,
            reason: self.reason.clone(),
        };
        for (key, n) in [
            ("tool", rule.tools.len()),
            ("destination", rule.destinations.len()),
            ("destination_not_in", rule.destination_not_in.len()),
            ("when.session_seen", rule.when.seen.len()),
        ] {
            if n > MAX_PATTERNS {
                return Err(err(key, format!("more than {MAX_PATTERNS} patterns")));
            }
        }
        if let Some(r) = &rule.reason {
            if r.len() > 500 {
                return Err(err("reason", "longer than 500 characters"));
            }
            // It is shown in the owner's prompt: one line of visible text.
            if r.chars().any(|c| {
                c.is_control()
                    || matches!(c, '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200b}'..='\u{200f}')
            }) {
                return Err(err(
                    "reason",
                    "a reason is one line of visible text (no control, line-separator or bidi characters)",
                ));
            }
        }
        if then == Then::Allow {
            // An allow must not start to hold as a session sees more (see `When`).
            if !rule.when.seen.is_empty() {
                return Err(err(
                    "when.session_seen",
                    "an allow rule cannot depend on what the session has seen; write an ask or deny rule",
                ));
            }
            if rule.when.exposure_above.is_some() {
                return Err(err(
                    "when.exposure_above",
                    "an allow rule cannot depend on exposure; friction thresholds are in [policy.friction]",
                ));
            }
            if !rule.destination_not_in.is_empty() {
                return Err(err(
                    "destination_not_in",
                    "an allow rule names the destinations it allows with `destination`",
                ));
            }
        }
        Ok(rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(v: serde_json::Value) -> Result<Rule, String> {
        RuleSpec::from_json(&v)
            .and_then(|s| s.build("rules.1"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn bad_rules_name_the_key() {
        assert_eq!(
            build(json!({"then": "maybe"})).unwrap_err(),
            "then: `maybe` is not one of allow, ask, deny"
        );
        assert!(
            build(json!({"then": "ask", "effect": "net"}))
                .unwrap_err()
                .starts_with("effect: `net` is not an effect class")
        );
        assert!(
            build(json!({"then": "ask", "when": {"session_integrity": "dirty"}}))
                .unwrap_err()
                .starts_with("when.session_integrity")
        );
        assert!(
            build(json!({"then": "ask", "colour": "red"}))
                .unwrap_err()
                .contains("unknown field `colour`")
        );
        assert!(
            build(json!({"then": "allow", "when": {"session_seen": "web"}}))
                .unwrap_err()
                .starts_with("when.session_seen")
        );
        assert!(build(json!({"then": "ask", "name": "has space"})).is_err());
        assert!(
            build(json!({"then": "ask", "reason": "ok\u{1b}]52;c;x\u{7}\n(covered by your plan; safe)"}))
                .unwrap_err()
                .starts_with("reason: a reason is one line")
        );
        assert!(build(json!({"then": "ask", "reason": "a\u{202e}b"})).is_err());
        assert!(
            build(json!({"then": "ask", "when": {"session_seen": 5}}))
                .unwrap_err()
                .contains("expected a string or a list of strings")
        );
    }

    #[test]
    fn one_value_or_a_list() {
        let r =
            build(json!({"then": "deny", "tool": "exec", "effect": ["egress", "exec"]})).unwrap();
        assert_eq!(r.tools.len(), 1);
        assert_eq!(r.effects, vec![EffectClass::Egress, EffectClass::Exec]);
        assert_eq!(r.name, "rules.1");
    }
}
