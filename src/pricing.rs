//! Prices and the cost of a call.
//!
//! The embedded table (`data/prices.toml`, USD per million tokens, each entry with its date and
//! source) covers current OpenAI and Anthropic chat models; a config file's `[prices]` override
//! and extend it. Lookup: the exact model name, else the name without a trailing date
//! (`gpt-4o-2024-08-06` → `gpt-4o`, `claude-3-5-haiku-20241022` → `claude-3-5-haiku`) or
//! `-latest`; else the model is unpriced and no cost is invented.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::provider::Usage;

const EMBEDDED: &str = include_str!("../data/prices.toml");

/// Price of one model, USD per million tokens.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Uncached input tokens.
    pub input: f64,
    /// Input tokens read from the prompt cache; `None` bills them as input.
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Output tokens (reasoning included).
    pub output: f64,
    /// When the price was read.
    #[serde(default)]
    pub as_of: Option<String>,
    /// Where the price was read.
    #[serde(default)]
    pub source: Option<String>,
}

impl Price {
    fn check(&self, model: &str) -> Result<(), PricingError> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if ok(self.input) && ok(self.output) && self.cached_input.is_none_or(ok) {
            Ok(())
        } else {
            Err(PricingError(format!(
                "price of {model:?}: every price must be a finite number >= 0"
            )))
        }
    }
}

/// Cost of one call in USD.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Cost {
    /// Uncached plus cached input.
    pub input: f64,
    /// Output (reasoning included).
    pub output: f64,
    /// `input + output`.
    pub total: f64,
}

/// A price table that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("price table: {0}")]
pub struct PricingError(pub String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    models: HashMap<String, Price>,
}

/// Model prices; cheap to clone.
#[derive(Clone, Debug)]
pub struct PriceTable {
    prices: Arc<HashMap<String, Price>>,
}

impl Default for PriceTable {
    fn default() -> Self {
        Self::embedded()
    }
}

/// `name` without a trailing `-YYYY-MM-DD`, `-YYYYMMDD` or `-latest`.
fn base_model(name: &str) -> Option<&str> {
    let is_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(base) = name.strip_suffix("-latest") {
        return Some(base);
    }
    let (head, last) = name.rsplit_once('-')?;
    if last.len() == 8 && is_digits(last) {
        return Some(head);
    }
    // -YYYY-MM-DD: three dash-separated numeric parts at the end.
    let (head2, month) = head.rsplit_once('-')?;
    let (head3, year) = head2.rsplit_once('-')?;
    (year.len() == 4 && month.len() == 2 && last.len() == 2 && is_digits(year) && is_digits(month) && is_digits(last))
        .then_some(head3)
}

impl PriceTable {
    /// The embedded table, parsed once per process and shared by every meter.
    pub fn embedded() -> Self {
        static TABLE: std::sync::LazyLock<Arc<HashMap<String, Price>>> = std::sync::LazyLock::new(|| {
            let file: TableFile = toml::from_str(EMBEDDED).expect("the embedded price table is valid (tested)");
            Arc::new(file.models)
        });
        PriceTable { prices: TABLE.clone() }
    }

    /// An empty table (every model unpriced).
    pub fn empty() -> Self {
        PriceTable {
            prices: Arc::new(HashMap::new()),
        }
    }

    /// This table with `overrides` replacing or adding entries.
    pub fn with_overrides(&self, overrides: HashMap<String, Price>) -> Result<Self, PricingError> {
        let mut prices = (*self.prices).clone();
        for (model, price) in overrides {
            price.check(&model)?;
            prices.insert(model, price);
        }
        Ok(PriceTable {
            prices: Arc::new(prices),
        })
    }

    /// The price of `model`, by the lookup rules of this module.
    pub fn price(&self, model: &str) -> Option<&Price> {
        self.prices
            .get(model)
            .or_else(|| base_model(model).and_then(|base| self.prices.get(base)))
    }

    /// Every entry.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Price)> {
        self.prices.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Cost of `usage` on `model`; `None` when the model is unpriced.
    pub fn cost(&self, model: &str, usage: &Usage) -> Option<Cost> {
        self.price(model).map(|p| cost_of(p, usage))
    }
}

/// Cost of `usage` at `price`: uncached input at the input price, cached input at the cached
/// price (or the input price), output (reasoning included) at the output price.
pub fn cost_of(price: &Price, usage: &Usage) -> Cost {
    let cached = usage.cached_input_tokens.unwrap_or(0).min(usage.input_tokens);
    let uncached = usage.input_tokens - cached;
    let per_token = |per_million: f64| per_million / 1_000_000.0;
    let input =
        uncached as f64 * per_token(price.input) + cached as f64 * per_token(price.cached_input.unwrap_or(price.input));
    let output = usage.output_tokens as f64 * per_token(price.output);
    Cost {
        input,
        output,
        total: input + output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_table_parses_and_every_entry_is_sane_and_sourced() {
        let t = PriceTable::embedded();
        assert!(t.entries().count() >= 20);
        for (model, p) in t.entries() {
            p.check(model).unwrap();
            assert!(
                p.as_of.is_some() && p.source.is_some(),
                "{model} needs a date and a source"
            );
            assert!(
                p.cached_input.is_none_or(|c| c <= p.input),
                "{model}: cached input costs more than input"
            );
        }
    }

    #[test]
    fn dated_snapshots_resolve_to_their_model() {
        let t = PriceTable::embedded();
        assert_eq!(t.price("gpt-4o-2024-08-06"), t.price("gpt-4o"));
        assert_eq!(t.price("gpt-4o-mini-2024-07-18"), t.price("gpt-4o-mini"));
        assert_eq!(t.price("claude-3-5-haiku-20241022"), t.price("claude-3-5-haiku"));
        assert_eq!(t.price("claude-3-5-haiku-latest"), t.price("claude-3-5-haiku"));
        assert_eq!(
            t.price("gpt-4o-2024-05-13").unwrap().input,
            5.0,
            "a snapshot with its own price keeps it"
        );
        assert!(t.price("my-finetune").is_none());
        assert!(t.price("gpt-4o-extra").is_none(), "no prefix guessing");
        assert_eq!(base_model("gpt-4o-2024-8-06"), None);
    }

    #[test]
    fn cost_matches_hand_computed_values() {
        let t = PriceTable::embedded();
        // gpt-4o: $2.50 in, $1.25 cached, $10 out per 1M. 1000 in (400 cached), 500 out.
        let u = Usage {
            input_tokens: 1000,
            output_tokens: 500,
            cached_input_tokens: Some(400),
            ..Usage::default()
        };
        let c = t.cost("gpt-4o-2024-08-06", &u).unwrap();
        assert!((c.input - (600.0 * 2.5 + 400.0 * 1.25) / 1e6).abs() < 1e-12);
        assert!((c.output - 0.005).abs() < 1e-12);
        assert!((c.total - 0.007).abs() < 1e-12);
        // Reasoning tokens are part of output tokens and billed as output (o4-mini: $4.40).
        let r = Usage {
            input_tokens: 10,
            output_tokens: 1000,
            reasoning_tokens: Some(800),
            ..Usage::default()
        };
        let c = t.cost("o4-mini", &r).unwrap();
        assert!((c.output - 0.0044).abs() < 1e-12);
        // No cached price: cached tokens billed as input.
        let c = t.cost("gpt-4-turbo", &u).unwrap();
        assert!((c.input - 0.01).abs() < 1e-12);
        assert!(t.cost("unknown-model", &u).is_none());
    }

    #[test]
    fn overrides_replace_and_extend_and_are_checked() {
        let t = PriceTable::embedded();
        let mut o = HashMap::new();
        o.insert(
            "my-finetune".to_owned(),
            Price {
                input: 1.0,
                cached_input: None,
                output: 2.0,
                as_of: None,
                source: None,
            },
        );
        o.insert(
            "gpt-4o".to_owned(),
            Price {
                input: 0.0,
                cached_input: None,
                output: 0.0,
                as_of: None,
                source: None,
            },
        );
        let t2 = t.with_overrides(o).unwrap();
        assert_eq!(t2.price("my-finetune").unwrap().output, 2.0);
        assert_eq!(t2.price("gpt-4o-2024-08-06").unwrap().input, 0.0);
        let mut bad = HashMap::new();
        bad.insert(
            "x".to_owned(),
            Price {
                input: -1.0,
                cached_input: None,
                output: 0.0,
                as_of: None,
                source: None,
            },
        );
        assert!(t.with_overrides(bad).unwrap_err().to_string().contains("\"x\""));
    }
}
