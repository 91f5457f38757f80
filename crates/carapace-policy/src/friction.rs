//! Escalating friction: the more consequential things a session has been granted, the
//! fewer it is granted without asking.

use carapace_types::{Confidentiality, EffectClass, Integrity, Label};

/// What a session has been granted so far, counted per kind. Only grows until the owner
/// resets it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exposure {
    /// Results with untrusted content that entered the session.
    pub untrusted_reads: u32,
    /// Results with private or secret content that entered the session.
    pub private_reads: u32,
    /// Local writes.
    pub writes: u32,
    /// Calls whose data left the machine.
    pub egress: u32,
    /// Programs run.
    pub exec: u32,
    /// Calls that used a secret.
    pub secrets: u32,
    /// Changes to the agent's own behaviour.
    pub self_modify: u32,
}

impl Exposure {
    /// Counts one executed call: its effect, its result's label, and whether it carried
    /// a secret.
    pub fn record(&mut self, effect: EffectClass, result: Label, used_secret: bool) {
        let bump = |n: &mut u32| *n = n.saturating_add(1);
        if result.integrity == Integrity::Untrusted {
            bump(&mut self.untrusted_reads);
        }
        if result.confidentiality >= Confidentiality::Private {
            bump(&mut self.private_reads);
        }
        match effect {
            EffectClass::Read => {}
            EffectClass::Write => bump(&mut self.writes),
            EffectClass::Egress => bump(&mut self.egress),
            EffectClass::Exec => bump(&mut self.exec),
            EffectClass::Secret => bump(&mut self.secrets),
            EffectClass::SelfModify => bump(&mut self.self_modify),
        }
        if used_secret && effect != EffectClass::Secret {
            bump(&mut self.secrets);
        }
    }
}

/// Weights of each kind in the exposure score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weights {
    /// Per untrusted result.
    pub untrusted_read: u32,
    /// Per private result.
    pub private_read: u32,
    /// Per write.
    pub write: u32,
    /// Per egress call.
    pub egress: u32,
    /// Per program run.
    pub exec: u32,
    /// Per secret used.
    pub secret: u32,
    /// Per self-modification.
    pub self_modify: u32,
}

impl Default for Weights {
    fn default() -> Weights {
        Weights {
            untrusted_read: 2,
            private_read: 1,
            write: 1,
            egress: 2,
            exec: 2,
            secret: 3,
            self_modify: 3,
        }
    }
}

/// Where a session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Allowed-by-policy calls pass silently.
    Quiet,
    /// Every consequential call asks.
    Ask,
    /// Consequential calls are denied until the owner resets the session.
    Locked,
}

impl Level {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Quiet => "quiet",
            Level::Ask => "ask",
            Level::Locked => "locked",
        }
    }
}

/// The friction settings of `[policy.friction]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Friction {
    /// The score weights.
    pub weights: Weights,
    /// Above this score every consequential call asks.
    pub ask_above: u32,
    /// Above this score consequential calls are denied.
    pub deny_above: u32,
}

impl Default for Friction {
    fn default() -> Friction {
        Friction {
            weights: Weights::default(),
            ask_above: 40,
            deny_above: 120,
        }
    }
}

impl Friction {
    /// The weighted score of an exposure. Saturates instead of wrapping.
    pub fn score(&self, e: &Exposure) -> u32 {
        let w = &self.weights;
        [
            (e.untrusted_reads, w.untrusted_read),
            (e.private_reads, w.private_read),
            (e.writes, w.write),
            (e.egress, w.egress),
            (e.exec, w.exec),
            (e.secrets, w.secret),
            (e.self_modify, w.self_modify),
        ]
        .iter()
        .fold(0u32, |acc, (n, w)| acc.saturating_add(n.saturating_mul(*w)))
    }

    /// The level a score puts a session at.
    pub fn level(&self, score: u32) -> Level {
        if score > self.deny_above {
            Level::Locked
        } else if score > self.ask_above {
            Level::Ask
        } else {
            Level::Quiet
        }
    }
}
