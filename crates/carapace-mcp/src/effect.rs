//! Effect classes from MCP tool annotations.
//!
//! Annotations are the server's own claims (MCP calls them hints, and a hostile server
//! can lie), so they only choose among classes the Gate then enforces, the owner's
//! override beats them, and a tool without them gets the most restrictive class.

use carapace_types::{Confidentiality, EffectClass, Integrity, Label};
use rmcp::model::ToolAnnotations;

use crate::config::ToolOverride;

/// The class, result label and the reason, for `cara mcp tools`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    /// What policy decides with.
    pub effect: EffectClass,
    /// The least label of every result.
    pub result: Label,
    /// Why, in words.
    pub why: String,
}

/// A result of a tool that reaches only what the owner configured: owner's data.
const PRIVATE: Label = Label {
    integrity: Integrity::Trusted,
    confidentiality: Confidentiality::Private,
};

/// A result that may hold anybody's words.
const UNTRUSTED: Label = Label {
    integrity: Integrity::Untrusted,
    confidentiality: Confidentiality::Private,
};

/// Classifies a tool by its annotations, then applies the owner's override.
///
/// A `networked` server (streamable HTTP, or stdio with `network = "egress"`) can send
/// whatever a call gives it to the world and answer with what the world says, whatever
/// its annotations claim: its tools are at least egress with untrusted results, unless
/// the owner says otherwise for a tool.
pub fn classify(
    annotations: Option<&ToolAnnotations>,
    over: Option<&ToolOverride>,
    networked: bool,
) -> Classified {
    let mut c = from_annotations(annotations);
    if networked && (c.effect != EffectClass::Egress || c.result != UNTRUSTED) {
        c = Classified {
            effect: EffectClass::Egress,
            result: c.result.join(UNTRUSTED),
            why: format!(
                "{}; but the server has network, so what it is given can leave (egress, untrusted results)",
                c.why
            ),
        };
    }
    if let Some(o) = over {
        if let Some(effect) = o.effect {
            c.why = format!(
                "configured effect = \"{}\" (was: {})",
                effect.as_str(),
                c.why
            );
            c.effect = effect;
        }
        if let Some(result) = o.result {
            let joined = c.result.join(result);
            if joined != c.result {
                c.why = format!(
                    "{}; configured result = \"{}\"",
                    c.why,
                    result.integrity.as_str()
                );
            }
            c.result = joined;
        }
    }
    c
}

fn from_annotations(a: Option<&ToolAnnotations>) -> Classified {
    let most = |why: &str| Classified {
        effect: EffectClass::Egress,
        result: UNTRUSTED,
        why: why.to_string(),
    };
    let Some(a) = a else {
        return most("no annotations: the most restrictive class (egress, untrusted results)");
    };
    if a.open_world_hint == Some(true) {
        return Classified {
            effect: EffectClass::Egress,
            result: UNTRUSTED,
            why: "openWorldHint: reaches the world outside (egress, untrusted results)".into(),
        };
    }
    if a.read_only_hint == Some(true) {
        return Classified {
            effect: EffectClass::Read,
            result: PRIVATE,
            why: "readOnlyHint: reads only".into(),
        };
    }
    if a.destructive_hint == Some(true) {
        return Classified {
            effect: EffectClass::Write,
            result: PRIVATE,
            why: "destructiveHint: changes things".into(),
        };
    }
    if a.read_only_hint == Some(false) {
        return Classified {
            effect: EffectClass::Write,
            result: PRIVATE,
            why: "readOnlyHint false: changes things".into(),
        };
    }
    most(
        "annotations without readOnlyHint, destructiveHint or openWorldHint: the most restrictive class (egress, untrusted results)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(ro: Option<bool>, de: Option<bool>, ow: Option<bool>) -> ToolAnnotations {
        let mut a = ToolAnnotations::default();
        a.read_only_hint = ro;
        a.destructive_hint = de;
        a.open_world_hint = ow;
        a
    }

    #[test]
    fn hints_choose_the_class_and_silence_is_the_strictest() {
        let c = |a: Option<ToolAnnotations>| classify(a.as_ref(), None, false);
        assert_eq!(c(None).effect, EffectClass::Egress);
        assert_eq!(c(None).result.integrity, Integrity::Untrusted);
        assert_eq!(
            c(Some(ann(Some(true), None, None))).effect,
            EffectClass::Read
        );
        assert_eq!(c(Some(ann(Some(true), None, None))).result, PRIVATE);
        assert_eq!(
            c(Some(ann(None, Some(true), None))).effect,
            EffectClass::Write
        );
        assert_eq!(
            c(Some(ann(Some(false), None, None))).effect,
            EffectClass::Write
        );
        // A read-only claim does not hide that the tool reaches the world.
        let ow = c(Some(ann(Some(true), None, Some(true))));
        assert_eq!(ow.effect, EffectClass::Egress);
        assert_eq!(ow.result.integrity, Integrity::Untrusted);
        // Annotations that say nothing of effects (a title only) are no annotations.
        assert_eq!(c(Some(ann(None, None, None))).effect, EffectClass::Egress);
        assert_eq!(
            c(Some(ann(None, None, Some(false)))).effect,
            EffectClass::Egress
        );
    }

    #[test]
    fn the_owner_beats_the_server_and_results_only_rise() {
        let lying = ann(Some(true), None, None);
        let o = ToolOverride {
            effect: Some(EffectClass::Egress),
            result: Some(UNTRUSTED),
        };
        let c = classify(Some(&lying), Some(&o), false);
        assert_eq!(c.effect, EffectClass::Egress);
        assert_eq!(c.result, UNTRUSTED);
        assert!(
            c.why.starts_with("configured effect = \"egress\""),
            "{}",
            c.why
        );
        // A "trusted" override cannot clean an open-world tool's results.
        let o = ToolOverride {
            effect: None,
            result: Some(Label::TRUSTED_PUBLIC),
        };
        let c = classify(Some(&ann(None, None, Some(true))), Some(&o), false);
        assert_eq!(c.result.integrity, Integrity::Untrusted);
    }

    #[test]
    fn a_server_with_network_gets_no_read_or_write_tools() {
        for a in [
            ann(Some(true), None, None),
            ann(None, Some(true), None),
            ann(Some(false), None, Some(false)),
        ] {
            let c = classify(Some(&a), None, true);
            assert_eq!(c.effect, EffectClass::Egress, "{a:?}");
            assert_eq!(c.result, UNTRUSTED, "{a:?}");
            assert!(c.why.contains("the server has network"), "{}", c.why);
        }
        let c = classify(None, None, true);
        assert!(
            !c.why.contains("network"),
            "already the strictest: {}",
            c.why
        );
        // The owner may still say what one tool does.
        let o = ToolOverride {
            effect: Some(EffectClass::Read),
            result: None,
        };
        let c = classify(Some(&ann(Some(true), None, None)), Some(&o), true);
        assert_eq!(c.effect, EffectClass::Read);
        assert_eq!(c.result, UNTRUSTED);
    }
}
