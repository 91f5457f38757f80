//! Pure policy decisions: given who asks, for which tool with which effect class, in a
//! session holding data with which labels, say allow, ask or deny, and name the rule.
//!
//! This crate must stay pure: no IO, no clock, no tokio, no SQL, no network, and no
//! model. The same input always gives the same decision. Mechanism crates never depend
//! on it; the Gate calls it through the [`Policy`] trait, which is the seam where the
//! full rule engine (labels, plans, compiled plain-English rules) plugs in.

use carapace_types::{Decision, EffectClass, Integrity, Label, Principal};

/// Everything policy may look at for one request, built by the Gate from trusted state.
#[derive(Clone, Copy, Debug)]
pub struct PolicyRequest<'a> {
    /// Who is acting.
    pub principal: &'a Principal,
    /// The resolved tool name.
    pub tool: &'a str,
    /// The tool's declared effect class.
    pub effect: EffectClass,
    /// The join of every label the session has seen so far.
    pub session_label: Label,
}

/// A policy: a deterministic function from request to decision.
pub trait Policy: Send + Sync {
    /// Decides one request. Must not block and must not do IO.
    fn decide(&self, req: &PolicyRequest<'_>) -> Decision;
}

/// The starting policy: reads pass, every other effect asks the owner. In a session
/// that has seen untrusted content the reason says so, so the owner knows why.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimplePolicy;

impl Policy for SimplePolicy {
    fn decide(&self, req: &PolicyRequest<'_>) -> Decision {
        match req.effect {
            EffectClass::Read => Decision::Allow {
                rule: "default.read-allowed".into(),
            },
            effect => {
                let tainted = req.session_label.integrity == Integrity::Untrusted;
                let reason = if tainted {
                    format!(
                        "{} has effect `{}` and this session has seen untrusted content",
                        req.tool,
                        effect.as_str()
                    )
                } else {
                    format!("{} has effect `{}`", req.tool, effect.as_str())
                };
                let rule = format!("default.{}-asks", effect.as_str());
                Decision::Ask { rule, reason }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carapace_types::{Confidentiality, FrontDoor};
    use expect_test::{Expect, expect};

    fn check(effect: EffectClass, integrity: Integrity, expected: Expect) {
        let owner = Principal::owner(FrontDoor::Api);
        let req = PolicyRequest {
            principal: &owner,
            tool: "t",
            effect,
            session_label: Label {
                integrity,
                confidentiality: Confidentiality::Private,
            },
        };
        expected.assert_eq(&format!("{:?}", SimplePolicy.decide(&req)));
    }

    #[test]
    fn reads_pass_everything_else_asks() {
        check(
            EffectClass::Read,
            Integrity::Untrusted,
            expect![[r#"Allow { rule: "default.read-allowed" }"#]],
        );
        check(
            EffectClass::Write,
            Integrity::Trusted,
            expect![[r#"Ask { rule: "default.write-asks", reason: "t has effect `write`" }"#]],
        );
        check(
            EffectClass::Egress,
            Integrity::Untrusted,
            expect![[
                r#"Ask { rule: "default.egress-asks", reason: "t has effect `egress` and this session has seen untrusted content" }"#
            ]],
        );
    }

    #[test]
    fn no_effect_but_read_is_ever_allowed_without_asking() {
        let owner = Principal::owner(FrontDoor::Api);
        for effect in EffectClass::ALL {
            for integrity in [Integrity::Trusted, Integrity::Untrusted] {
                let req = PolicyRequest {
                    principal: &owner,
                    tool: "t",
                    effect,
                    session_label: Label {
                        integrity,
                        confidentiality: Confidentiality::Public,
                    },
                };
                let allowed = matches!(SimplePolicy.decide(&req), Decision::Allow { .. });
                assert_eq!(
                    allowed,
                    effect == EffectClass::Read,
                    "{effect:?} {integrity:?}"
                );
            }
        }
    }
}
