//! Prices and the cost of a call.
//!
//! The embedded table (`data/prices.toml`, USD per million tokens, each entry with its date and
//! source) covers current OpenAI and Anthropic chat models; a config file's `[prices]` override
//! and extend it. Lookup: the exact model name, else the name without a trailing date
//! (`gpt-4o-2024-08-06` → `gpt-4o`, `claude-3-5-haiku-20241022` → `claude-3-5-haiku`), a
//! trailing `-MMDD` snapshot (`gpt-3.5-turbo-0125` → `gpt-3.5-turbo`) or `-latest`; else the
//! model is unpriced and no cost is invented. Snapshots whose price differs from their base
//! model's have entries of their own.
//!
//! Service tiers: the tier the response reports (`service_tier`) picks the price. `default`
//! (OpenAI) and `standard` (Anthropic), or no tier reported, use the entry's own prices; any
//! other tier uses the entry's `tiers.<name>` prices (`flex`, `priority`, `batch`, …), and a
//! tier with no price there makes the call unpriced: never costed at another tier's price.
//!
//! Prompt-cache writes (Anthropic) are billed at their own rates: `cache_write_5m` for the
//! 5-minute lifetime and `cache_write_1h` for the 1-hour one, as the usage reports the split;
//! writes whose lifetime the usage does not give are billed at the 5-minute rate. A price
//! without write rates bills writes as input (and 1-hour writes at the 5-minute rate when only
//! that one is known).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::parse::provider::Usage;

const EMBEDDED: &str = include_str!("../../data/prices.toml");

/// Price of one model, USD per million tokens.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Uncached input tokens.
    pub input: f64,
    /// Input tokens read from the prompt cache; `None` bills them as input.
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Input tokens written to the prompt cache with the 5-minute lifetime (Anthropic), and
    /// writes of unknown lifetime; `None` bills them as input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_5m: Option<f64>,
    /// Input tokens written to the prompt cache with the 1-hour lifetime; `None` bills them at
    /// `cache_write_5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h: Option<f64>,
    /// Output tokens (reasoning included).
    pub output: f64,
    /// When the price was read.
    #[serde(default)]
    pub as_of: Option<String>,
    /// Where the price was read.
    #[serde(default)]
    pub source: Option<String>,
    /// Prices of other service tiers (`flex`, `priority`, `batch`, …), by tier name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<String, TierPrice>,
}

/// Price of one service tier of a model, USD per million tokens.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TierPrice {
    /// Uncached input tokens.
    pub input: f64,
    /// Cached input tokens; `None` bills them as input.
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Prompt-cache writes, 5-minute lifetime (and unknown lifetime); `None` bills them as input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_5m: Option<f64>,
    /// Prompt-cache writes, 1-hour lifetime; `None` bills them at `cache_write_5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h: Option<f64>,
    /// Output tokens (reasoning included).
    pub output: f64,
    /// When the price was read.
    #[serde(default)]
    pub as_of: Option<String>,
    /// Where the price was read.
    #[serde(default)]
    pub source: Option<String>,
}

/// The rates a cost is computed from, USD per million tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    /// Uncached input.
    pub input: f64,
    /// Cached input (`None`: as input).
    pub cached_input: Option<f64>,
    /// Prompt-cache writes, 5-minute (or unknown) lifetime (`None`: as input).
    pub cache_write_5m: Option<f64>,
    /// Prompt-cache writes, 1-hour lifetime (`None`: as `cache_write_5m`).
    pub cache_write_1h: Option<f64>,
    /// Output.
    pub output: f64,
}

impl Rates {
    /// Cost of `usage` at these rates: input read from the cache at the cached rate, input
    /// written to it at the write rate of its lifetime (5-minute when the usage does not say),
    /// the rest of the input at the input rate, output (reasoning included) at the output rate.
    /// A rate that is `None` falls back as documented on each field.
    pub fn cost(&self, usage: &Usage) -> Cost {
        let cached = usage.cached_input_tokens.unwrap_or(0).min(usage.input_tokens);
        let writes = usage
            .cache_creation_input_tokens
            .unwrap_or(0)
            .min(usage.input_tokens - cached);
        let writes_1h = usage.cache_creation_1h_input_tokens.unwrap_or(0).min(writes);
        let writes_5m = writes - writes_1h;
        let uncached = usage.input_tokens - cached - writes;
        let per_token = |per_million: f64| per_million / 1_000_000.0;
        let write_5m = self.cache_write_5m.unwrap_or(self.input);
        let write_1h = self.cache_write_1h.unwrap_or(write_5m);
        let input = uncached as f64 * per_token(self.input)
            + cached as f64 * per_token(self.cached_input.unwrap_or(self.input))
            + writes_5m as f64 * per_token(write_5m)
            + writes_1h as f64 * per_token(write_1h);
        let output = usage.output_tokens as f64 * per_token(self.output);
        Cost {
            input,
            output,
            total: input + output,
        }
    }

    /// Every rate a finite number >= 0.
    fn is_valid(&self) -> bool {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        ok(self.input)
            && ok(self.output)
            && self.cached_input.is_none_or(ok)
            && self.cache_write_5m.is_none_or(ok)
            && self.cache_write_1h.is_none_or(ok)
    }
}

impl TierPrice {
    fn rates(&self) -> Rates {
        Rates {
            input: self.input,
            cached_input: self.cached_input,
            cache_write_5m: self.cache_write_5m,
            cache_write_1h: self.cache_write_1h,
            output: self.output,
        }
    }
}

/// Whether a reported service tier is the standard one (priced by the entry itself).
fn is_standard_tier(tier: Option<&str>) -> bool {
    matches!(tier, None | Some("default" | "standard"))
}

impl Price {
    /// The rates of `tier` (`None`, `default`, `standard`: the standard rates); `None` when the
    /// tier has no price.
    pub fn rates(&self, tier: Option<&str>) -> Option<Rates> {
        if is_standard_tier(tier) {
            return Some(self.standard_rates());
        }
        self.tiers.get(tier?).map(TierPrice::rates)
    }

    /// The entry's own (standard tier) rates.
    fn standard_rates(&self) -> Rates {
        Rates {
            input: self.input,
            cached_input: self.cached_input,
            cache_write_5m: self.cache_write_5m,
            cache_write_1h: self.cache_write_1h,
            output: self.output,
        }
    }

    fn check(&self, model: &str) -> Result<(), PricingError> {
        if self.standard_rates().is_valid() && self.tiers.values().all(|t| t.rates().is_valid()) {
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
    /// Uncached plus cached input, prompt-cache writes included.
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

/// Prices by model name. The table is fixed once built, so a hash without a random key
/// (FNV, a few instructions a byte against SipHash's hundreds a lookup) cannot be flooded
/// with colliding names: lookups never insert.
type Prices = HashMap<String, Price, fnv::FnvBuildHasher>;

/// Model prices; cheap to clone.
#[derive(Clone, Debug)]
pub struct PriceTable {
    prices: Arc<Prices>,
}

impl Default for PriceTable {
    fn default() -> Self {
        Self::embedded()
    }
}

/// `name` without a trailing `-YYYY-MM-DD`, `-YYYYMMDD`, `-MMDD` (OpenAI's older snapshots,
/// `gpt-4-0613`) or `-latest`.
fn base_model(name: &str) -> Option<&str> {
    let is_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(base) = name.strip_suffix("-latest") {
        return Some(base);
    }
    let (head, last) = name.rsplit_once('-')?;
    if last.len() == 8 && is_digits(last) {
        return Some(head);
    }
    if last.len() == 4 && is_digits(last) {
        let (month, day) = (&last[..2], &last[2..]);
        let in_range = |v: &str, max: u8| v.parse::<u8>().is_ok_and(|n| (1..=max).contains(&n));
        return (in_range(month, 12) && in_range(day, 31)).then_some(head);
    }
    // -YYYY-MM-DD: three dash-separated numeric parts at the end.
    let (head2, month) = head.rsplit_once('-')?;
    let (head3, year) = head2.rsplit_once('-')?;
    (year.len() == 4 && month.len() == 2 && last.len() == 2 && is_digits(year) && is_digits(month) && is_digits(last))
        .then_some(head3)
}

impl PriceTable {
    /// The embedded table, parsed once per process and shared by every meter.
    #[expect(clippy::expect_used, reason = "the embedded table is a constant, parsed by a test")]
    pub fn embedded() -> Self {
        static TABLE: std::sync::LazyLock<Arc<Prices>> = std::sync::LazyLock::new(|| {
            let file: TableFile = toml::from_str(EMBEDDED).expect("the embedded price table is valid (tested)");
            Arc::new(file.models.into_iter().collect())
        });
        PriceTable { prices: TABLE.clone() }
    }

    /// An empty table (every model unpriced).
    pub fn empty() -> Self {
        PriceTable {
            prices: Arc::new(Prices::default()),
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

    /// Cost of `usage` on `model` at the standard tier; `None` when the model is unpriced.
    pub fn cost(&self, model: &str, usage: &Usage) -> Option<Cost> {
        self.cost_at(model, None, usage)
    }

    /// Cost of `usage` on `model` at service tier `tier` (as the response reports it); `None`
    /// when the model, or that tier of it, is unpriced.
    pub fn cost_at(&self, model: &str, tier: Option<&str>, usage: &Usage) -> Option<Cost> {
        let rates = self.price(model)?.rates(tier)?;
        Some(rates.cost(usage))
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
            for (tier, t) in &p.tiers {
                assert!(
                    t.as_of.is_some() && t.source.is_some(),
                    "{model} tier {tier} needs a date and a source"
                );
                assert!(!is_standard_tier(Some(tier)), "{model}: {tier} is the entry itself");
            }
            assert!(
                p.cached_input.is_none_or(|c| c <= p.input),
                "{model}: cached input costs more than input"
            );
            assert!(
                p.cache_write_5m.is_none_or(|w| w >= p.input) && p.cache_write_1h.is_none_or(|w| w >= p.input),
                "{model}: a cache write costs less than input"
            );
            if model.starts_with("claude-") {
                assert!(
                    p.cache_write_5m.is_some() && p.cache_write_1h.is_some() && p.cached_input.is_some(),
                    "{model}: Anthropic prices cache reads and both cache writes"
                );
            }
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

    /// Real model ids, current and older, OpenAI and Anthropic: the entry each resolves to, or
    /// none on purpose (a model we have no price for is never guessed from a prefix).
    #[test]
    fn real_model_ids_resolve_to_the_right_entry_or_on_purpose_to_none() {
        let t = PriceTable::embedded();
        let cases: &[(&str, Option<&str>)] = &[
            ("gpt-4o", Some("gpt-4o")),
            ("gpt-4o-2024-08-06", Some("gpt-4o")),
            ("gpt-4o-2024-11-20", Some("gpt-4o")),
            ("gpt-4o-2024-05-13", Some("gpt-4o-2024-05-13")),
            ("gpt-4o-mini-2024-07-18", Some("gpt-4o-mini")),
            ("gpt-4.1-2025-04-14", Some("gpt-4.1")),
            ("gpt-4.1-mini-2025-04-14", Some("gpt-4.1-mini")),
            ("gpt-4.1-nano-2025-04-14", Some("gpt-4.1-nano")),
            ("gpt-5-2025-08-07", Some("gpt-5")),
            ("gpt-5-mini-2025-08-07", Some("gpt-5-mini")),
            ("gpt-5-nano-2025-08-07", Some("gpt-5-nano")),
            ("o1-2024-12-17", Some("o1")),
            ("o3-2025-04-16", Some("o3")),
            ("o3-mini-2025-01-31", Some("o3-mini")),
            ("o4-mini-2025-04-16", Some("o4-mini")),
            ("gpt-4-turbo-2024-04-09", Some("gpt-4-turbo")),
            ("gpt-4-turbo-preview", Some("gpt-4-turbo-preview")),
            ("gpt-4-1106-preview", Some("gpt-4-1106-preview")),
            ("gpt-4-0125-preview", Some("gpt-4-0125-preview")),
            ("gpt-4", Some("gpt-4")),
            ("gpt-4-0613", Some("gpt-4")),
            ("gpt-4-0314", Some("gpt-4")),
            ("gpt-4-32k-0613", Some("gpt-4-32k")),
            ("gpt-3.5-turbo", Some("gpt-3.5-turbo")),
            ("gpt-3.5-turbo-0125", Some("gpt-3.5-turbo")),
            ("gpt-3.5-turbo-1106", Some("gpt-3.5-turbo-1106")),
            ("gpt-3.5-turbo-0613", Some("gpt-3.5-turbo-0613")),
            ("gpt-3.5-turbo-16k-0613", Some("gpt-3.5-turbo-16k")),
            ("claude-opus-4-1-20250805", Some("claude-opus-4-1")),
            ("claude-opus-4-20250514", Some("claude-opus-4")),
            ("claude-sonnet-4-20250514", Some("claude-sonnet-4")),
            ("claude-sonnet-4-5-20250929", Some("claude-sonnet-4-5")),
            ("claude-haiku-4-5-20251001", Some("claude-haiku-4-5")),
            ("claude-3-7-sonnet-20250219", Some("claude-3-7-sonnet")),
            ("claude-3-7-sonnet-latest", Some("claude-3-7-sonnet")),
            ("claude-3-5-sonnet-20241022", Some("claude-3-5-sonnet")),
            ("claude-3-5-haiku-20241022", Some("claude-3-5-haiku")),
            ("claude-3-opus-20240229", Some("claude-3-opus")),
            ("claude-3-haiku-20240307", Some("claude-3-haiku")),
            ("claude-opus-4-5-20251101", Some("claude-opus-4-5")),
            ("claude-opus-4-5", Some("claude-opus-4-5")),
            ("claude-sonnet-4-6", Some("claude-sonnet-4-6")),
            ("claude-opus-4-7", Some("claude-opus-4-7")),
            // On purpose unpriced: other modalities, fine-tunes, unknown names, bad dates.
            ("gpt-4o-audio-preview-2024-12-17", None),
            ("gpt-4o-realtime-preview", None),
            ("chatgpt-4o-latest", None),
            ("ft:gpt-4o-mini-2024-07-18:acme::abc123", None),
            ("text-embedding-3-small", None),
            ("gpt-4-1399", None),
            ("gpt-4-0013", None),
            ("my-model-2024", None),
            ("", None),
        ];
        for (id, want) in cases {
            let got = t.price(id);
            let want = want.map(|w| t.prices.get(w).unwrap_or_else(|| panic!("no entry {w}")));
            assert_eq!(got, want, "{id}");
        }
    }

    #[test]
    fn the_reported_service_tier_picks_the_price_and_an_unknown_tier_is_unpriced() {
        let t = PriceTable::embedded();
        let u = Usage {
            input_tokens: 1000,
            output_tokens: 1000,
            cached_input_tokens: Some(200),
            ..Usage::default()
        };
        // gpt-4o standard: $2.50 in, $1.25 cached, $10 out; priority $4.25, $2.125, $17.
        let standard = t.cost_at("gpt-4o-2024-08-06", Some("default"), &u).unwrap();
        assert!((standard.total - (800.0 * 2.5 + 200.0 * 1.25 + 1000.0 * 10.0) / 1e6).abs() < 1e-12);
        assert_eq!(t.cost_at("gpt-4o", None, &u), Some(standard));
        let priority = t.cost_at("gpt-4o-2024-08-06", Some("priority"), &u).unwrap();
        assert!((priority.total - (800.0 * 4.25 + 200.0 * 2.125 + 1000.0 * 17.0) / 1e6).abs() < 1e-12);
        // o3 flex: half the standard price.
        let flex = t.cost_at("o3", Some("flex"), &u).unwrap();
        assert!((flex.total - (800.0 * 1.0 + 200.0 * 0.25 + 1000.0 * 4.0) / 1e6).abs() < 1e-12);
        // Batch without a cached price: cached tokens billed at the tier's input price.
        let batch = t.cost_at("gpt-4o", Some("batch"), &u).unwrap();
        assert!((batch.total - (1000.0 * 1.25 + 1000.0 * 5.0) / 1e6).abs() < 1e-12);
        // A tier with no price is unpriced, never the standard price.
        assert_eq!(t.cost_at("gpt-4o", Some("scale"), &u), None);
        assert_eq!(t.cost_at("gpt-4o", Some("flex"), &u), None, "gpt-4o has no flex tier");
        assert_eq!(t.cost_at("claude-sonnet-4", Some("priority"), &u), None);
    }

    #[test]
    fn config_overrides_can_price_a_tier() {
        let o: HashMap<String, Price> = toml::from_str::<TableFile>(
            "[models.\"gpt-4o\"]\ninput = 1\noutput = 2\n[models.\"gpt-4o\".tiers.scale]\ninput = 3\noutput = 4\n",
        )
        .unwrap()
        .models;
        let t = PriceTable::embedded().with_overrides(o).unwrap();
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
            ..Usage::default()
        };
        assert_eq!(t.cost_at("gpt-4o", Some("scale"), &u).unwrap().total, 7.0);
        assert_eq!(t.cost_at("gpt-4o", None, &u).unwrap().total, 3.0);
        let bad: HashMap<String, Price> = toml::from_str::<TableFile>(
            "[models.x]\ninput = 1\noutput = 1\n[models.x.tiers.flex]\ninput = -1\noutput = 1\n",
        )
        .unwrap()
        .models;
        assert!(PriceTable::embedded().with_overrides(bad).is_err());
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

    /// Anthropic usage with cache reads and both kinds of cache writes, costed by hand.
    #[test]
    fn cache_writes_are_billed_at_their_lifetimes_rate() {
        let t = PriceTable::embedded();
        // claude-sonnet-4-5: $3 in, $0.30 cache read, $3.75 5-minute write, $6 1-hour write,
        // $15 out. 12 uncached + 2048 read + 1536 written (1024 for an hour, 512 for 5 minutes).
        let u = Usage {
            input_tokens: 12 + 2048 + 1536,
            output_tokens: 58,
            cached_input_tokens: Some(2048),
            cache_creation_input_tokens: Some(1536),
            cache_creation_1h_input_tokens: Some(1024),
            ..Usage::default()
        };
        let c = t.cost("claude-sonnet-4-5-20250929", &u).unwrap();
        // 12 × 3 + 2048 × 0.30 + 512 × 3.75 + 1024 × 6 = 36 + 614.4 + 1920 + 6144 = 8714.4
        assert!((c.input - 8714.4e-6).abs() < 1e-12, "{c:?}");
        assert!((c.output - 870e-6).abs() < 1e-12, "{c:?}");
        assert!((c.total - 9584.4e-6).abs() < 1e-12, "{c:?}");
        // Lifetime not given: every write at the 5-minute rate. 36 + 614.4 + 1536 × 3.75 = 6410.4
        let unsplit = Usage {
            cache_creation_1h_input_tokens: None,
            ..u
        };
        let c = t.cost("claude-sonnet-4-5", &unsplit).unwrap();
        assert!((c.input - 6410.4e-6).abs() < 1e-12, "{c:?}");
        // claude-opus-4-1 ($15, $1.50, $18.75, $30, $75): 100 uncached, 1000 written for an hour.
        let opus = Usage {
            input_tokens: 1100,
            output_tokens: 10,
            cache_creation_input_tokens: Some(1000),
            cache_creation_1h_input_tokens: Some(1000),
            ..Usage::default()
        };
        let c = t.cost("claude-opus-4-1-20250805", &opus).unwrap();
        assert!((c.input - (100.0 * 15.0 + 1000.0 * 30.0) / 1e6).abs() < 1e-12, "{c:?}");
        assert!((c.total - (31_500.0 + 750.0) / 1e6).abs() < 1e-12, "{c:?}");
    }

    #[test]
    fn missing_write_rates_fall_back_and_counts_never_exceed_the_input() {
        let price = |toml: &str| {
            let models = toml::from_str::<TableFile>(toml).unwrap().models;
            PriceTable::empty().with_overrides(models).unwrap()
        };
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 0,
            cache_creation_input_tokens: Some(400_000),
            cache_creation_1h_input_tokens: Some(100_000),
            ..Usage::default()
        };
        // No write rates: writes are input.
        let t = price("[models.m]\ninput = 2\noutput = 1\n");
        assert!((t.cost("m", &u).unwrap().input - 2.0).abs() < 1e-12);
        // Only the 5-minute rate: 1-hour writes at it too. 0.6 × 2 + 0.4 × 3 = 2.4
        let t = price("[models.m]\ninput = 2\ncache_write_5m = 3\noutput = 1\n");
        assert!((t.cost("m", &u).unwrap().input - 2.4).abs() < 1e-12);
        // Both: 0.6 × 2 + 0.3 × 3 + 0.1 × 5 = 2.6
        let t = price("[models.m]\ninput = 2\ncache_write_5m = 3\ncache_write_1h = 5\noutput = 1\n");
        assert!((t.cost("m", &u).unwrap().input - 2.6).abs() < 1e-12);
        // Reported counts larger than the input are capped: reads first, then writes, then 1h.
        let odd = Usage {
            input_tokens: 10,
            output_tokens: 0,
            cached_input_tokens: Some(8),
            cache_creation_input_tokens: Some(5),
            cache_creation_1h_input_tokens: Some(9),
            ..Usage::default()
        };
        let t = price("[models.m]\ninput = 1000000\ncached_input = 0\ncache_write_5m = 7000000\ncache_write_1h = 1000000\noutput = 1\n");
        // 8 read at 0, 2 written for an hour at $1 each.
        assert!((t.cost("m", &odd).unwrap().input - 2.0).abs() < 1e-9);
        // A negative write rate is refused.
        let bad = toml::from_str::<TableFile>("[models.x]\ninput = 1\noutput = 1\ncache_write_1h = -1\n")
            .unwrap()
            .models;
        assert!(PriceTable::empty().with_overrides(bad).is_err());
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
                cache_write_5m: None,
                cache_write_1h: None,
                output: 2.0,
                as_of: None,
                source: None,
                tiers: BTreeMap::new(),
            },
        );
        o.insert(
            "gpt-4o".to_owned(),
            Price {
                input: 0.0,
                cached_input: None,
                cache_write_5m: None,
                cache_write_1h: None,
                output: 0.0,
                as_of: None,
                source: None,
                tiers: BTreeMap::new(),
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
                cache_write_5m: None,
                cache_write_1h: None,
                output: 0.0,
                as_of: None,
                source: None,
                tiers: BTreeMap::new(),
            },
        );
        assert!(t.with_overrides(bad).unwrap_err().to_string().contains("\"x\""));
    }
}
