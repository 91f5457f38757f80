//! What a model call costs: a price table in US dollars per million tokens, with defaults
//! for common models, overridable in config.

use crate::Usage;

/// The price of one model, in US dollars per million tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Price {
    /// Per million prompt tokens.
    pub input_per_mtok: f64,
    /// Per million generated tokens.
    pub output_per_mtok: f64,
}

impl Price {
    const fn new(input_per_mtok: f64, output_per_mtok: f64) -> Price {
        Price {
            input_per_mtok,
            output_per_mtok,
        }
    }

    /// The cost of `usage`, in millionths of a dollar (rounded up: never under-counted).
    pub fn cost_micros(&self, usage: Usage) -> u64 {
        // $/Mtok × tokens = µ$.
        let micros = self.input_per_mtok * usage.prompt_tokens as f64
            + self.output_per_mtok * usage.completion_tokens as f64;
        micros.max(0.0).ceil() as u64
    }
}

/// List prices of common models (standard tier, short prompts) when this was written;
/// config overrides them. Keys are model names or their prefixes (a dated snapshot
/// matches its family), or `provider/*` for a whole provider.
const DEFAULTS: &[(&str, Price)] = &[
    ("gpt-4o-mini", Price::new(0.15, 0.60)),
    ("gpt-4o", Price::new(2.50, 10.00)),
    ("gpt-4.1-nano", Price::new(0.10, 0.40)),
    ("gpt-4.1-mini", Price::new(0.40, 1.60)),
    ("gpt-4.1", Price::new(2.00, 8.00)),
    ("o4-mini", Price::new(1.10, 4.40)),
    ("o3", Price::new(2.00, 8.00)),
    ("claude-opus-4", Price::new(15.00, 75.00)),
    ("claude-sonnet-4", Price::new(3.00, 15.00)),
    ("claude-3-7-sonnet", Price::new(3.00, 15.00)),
    ("claude-haiku-4-5", Price::new(1.00, 5.00)),
    ("claude-3-5-haiku", Price::new(0.80, 4.00)),
    ("gemini-2.5-pro", Price::new(1.25, 10.00)),
    ("gemini-2.5-flash-lite", Price::new(0.10, 0.40)),
    ("gemini-2.5-flash", Price::new(0.30, 2.50)),
    ("gemini-2.0-flash", Price::new(0.10, 0.40)),
    // Models on this machine cost nothing per token.
    ("ollama/*", Price::new(0.0, 0.0)),
];

/// Prices by model. Lookup of `provider/model`: an exact entry for `provider/model`,
/// then for `model`, then the longest entry that `model` starts with, then
/// `provider/*`; config entries before the defaults.
#[derive(Clone, Debug, Default)]
pub struct PriceTable {
    /// Config's entries, looked up first.
    own: Vec<(String, Price)>,
}

impl PriceTable {
    /// The defaults, with `own` entries (same key syntax) taking precedence.
    pub fn new(own: Vec<(String, Price)>) -> PriceTable {
        PriceTable { own }
    }

    /// The price of `model` (`provider/model`, or a bare model name), if known.
    pub fn price(&self, model: &str) -> Option<Price> {
        let own = self.own.iter().map(|(k, p)| (k.as_str(), *p));
        lookup(own, model).or_else(|| lookup(DEFAULTS.iter().copied(), model))
    }

    /// The cost of a call, in millionths of a dollar, if the model has a price.
    pub fn cost_micros(&self, model: &str, usage: Usage) -> Option<u64> {
        self.price(model).map(|p| p.cost_micros(usage))
    }
}

fn lookup<'a>(
    entries: impl Iterator<Item = (&'a str, Price)> + Clone,
    model: &str,
) -> Option<Price> {
    let (provider, bare) = match model.split_once('/') {
        Some((p, m)) => (Some(p), m),
        None => (None, model),
    };
    let exact = |key: &str| entries.clone().find(|(k, _)| *k == key).map(|(_, p)| p);
    exact(model)
        .or_else(|| exact(bare))
        .or_else(|| {
            entries
                .clone()
                .filter(|(k, _)| !k.contains('/') && bare.starts_with(k))
                .max_by_key(|(k, _)| k.len())
                .map(|(_, p)| p)
        })
        .or_else(|| provider.and_then(|p| exact(&format!("{p}/*"))))
}

#[cfg(test)]
mod tests {
    use super::{Price, PriceTable};
    use crate::Usage;

    fn usage(prompt: u64, completion: u64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
        }
    }

    #[test]
    fn defaults_match_families_by_the_longest_prefix() {
        let t = PriceTable::default();
        let p = |m: &str| t.price(m).map(|p| (p.input_per_mtok, p.output_per_mtok));
        assert_eq!(p("openai/gpt-4o-mini"), Some((0.15, 0.60)));
        assert_eq!(p("gpt-4o-2024-08-06"), Some((2.50, 10.00)));
        assert_eq!(p("anthropic/claude-sonnet-4-5-20250929"), Some((3.0, 15.0)));
        assert_eq!(p("gemini/gemini-2.5-flash-lite"), Some((0.10, 0.40)));
        assert_eq!(p("ollama/anything:7b"), Some((0.0, 0.0)));
        assert_eq!(p("lab/qwen3-32b"), None);
        assert_eq!(p("mystery"), None);
    }

    #[test]
    fn config_entries_win_and_costs_round_up() {
        let t = PriceTable::new(vec![
            ("lab/*".into(), Price::new(0.0, 0.0)),
            ("anthropic/claude-sonnet-4-5".into(), Price::new(1.0, 2.0)),
        ]);
        assert_eq!(
            t.cost_micros("anthropic/claude-sonnet-4-5", usage(1000, 100)),
            Some(1200)
        );
        // Other providers' model of the same name keep the default.
        assert_eq!(
            t.cost_micros("claude-sonnet-4-5", usage(1000, 100)),
            Some(4500)
        );
        assert_eq!(t.cost_micros("lab/qwen3", usage(10, 10)), Some(0));
        // 1 token at $0.15/Mtok is 0.15 µ$: counted as 1.
        assert_eq!(t.cost_micros("gpt-4o-mini", usage(1, 0)), Some(1));
        assert_eq!(t.cost_micros("nobody", usage(1, 1)), None);
    }
}
