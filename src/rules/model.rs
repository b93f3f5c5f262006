//! A model in the catalogue and the prices a call is charged at.

use super::*;

/// A model that can be routed to, with prices in integer nano-dollars.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub provider: String,
    /// The ID the provider's API expects: `api_model`, or `name`.
    pub api_model: String,
    pub description: String,
    /// Nano-dollars per million input tokens.
    pub input_nanos_per_mtok: i64,
    /// Nano-dollars per million input tokens served from the prompt cache.
    pub cached_input_nanos_per_mtok: i64,
    /// Nano-dollars per million input tokens written to the prompt cache.
    pub cache_write_input_nanos_per_mtok: i64,
    /// Nano-dollars per million output tokens.
    pub output_nanos_per_mtok: i64,
    /// Batch discount in basis points (5000 = half price).
    pub batch_discount_bp: u32,
    pub context_window: u64,
    pub max_output_tokens: u64,
    pub capabilities: Capabilities,
    pub encoding: Encoding,
    /// Provider tokens per 1000 tokenizer tokens (1000 = exact).
    pub token_scale_permille: u32,
    /// Tier per task class, indexed by `RuleTable::classes`.
    pub tiers: Vec<u8>,
    /// How long the provider keeps a repeated prefix; `None` = no discount.
    pub prefix_cache_ttl: Option<Duration>,
    /// The shortest prefix, in billed tokens, the provider serves from cache.
    pub prefix_cache_min_tokens: u64,
    pub data_processing_agreement: bool,
    /// Empty when not given.
    pub region: String,
}

/// A model's list prices, as a call is charged at them. A reservation keeps
/// the prices it was routed at, so that its settlement never depends on a
/// rules table that was reloaded in between.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "StoredPrices")]
pub struct Prices {
    /// Nano-dollars per million input tokens.
    pub input_nanos_per_mtok: i64,
    /// Nano-dollars per million input tokens served from the prompt cache.
    pub cached_input_nanos_per_mtok: i64,
    /// Nano-dollars per million input tokens written to the prompt cache.
    /// A record stored before this price existed reads it as the input price.
    pub cache_write_input_nanos_per_mtok: i64,
    /// Nano-dollars per million output tokens.
    pub output_nanos_per_mtok: i64,
    /// Batch discount in basis points (5000 = half price).
    pub batch_discount_bp: u32,
}

/// [`Prices`] as journals store them: a line written before the cache-write
/// price existed lacks it, and is read with the input price in its place.
#[derive(serde::Deserialize)]
struct StoredPrices {
    input_nanos_per_mtok: i64,
    cached_input_nanos_per_mtok: i64,
    #[serde(default)]
    cache_write_input_nanos_per_mtok: Option<i64>,
    output_nanos_per_mtok: i64,
    batch_discount_bp: u32,
}

impl From<StoredPrices> for Prices {
    fn from(p: StoredPrices) -> Prices {
        Prices {
            input_nanos_per_mtok: p.input_nanos_per_mtok,
            cached_input_nanos_per_mtok: p.cached_input_nanos_per_mtok,
            cache_write_input_nanos_per_mtok: p.cache_write_input_nanos_per_mtok.unwrap_or(p.input_nanos_per_mtok),
            output_nanos_per_mtok: p.output_nanos_per_mtok,
            batch_discount_bp: p.batch_discount_bp,
        }
    }
}

impl Prices {
    /// The cost in nano-dollars of a call with these token counts. `cached` is
    /// the part of `input` served from the prompt cache; a deferrable call is
    /// priced at the batch discount. Rounds up: an estimate never under-reserves.
    pub fn cost(&self, input: u64, cached: u64, output: u64, deferrable: bool) -> i64 {
        self.cost_with_writes(input, cached, 0, output, deferrable)
    }

    /// [`Prices::cost`], with `written` of the input written to the prompt
    /// cache and charged at the cache-write price. Reads and writes are
    /// both parts of `input`; together they never count for more than it.
    pub fn cost_with_writes(&self, input: u64, cached: u64, written: u64, output: u64, deferrable: bool) -> i64 {
        let cached = cached.min(input);
        let written = written.min(input - cached);
        let full = token_cost(input - cached - written, self.input_nanos_per_mtok)
            .saturating_add(token_cost(cached, self.cached_input_nanos_per_mtok))
            .saturating_add(token_cost(written, self.cache_write_input_nanos_per_mtok))
            .saturating_add(token_cost(output, self.output_nanos_per_mtok));
        if deferrable && self.batch_discount_bp > 0 {
            let kept = 10_000 - self.batch_discount_bp.min(10_000) as i128;
            i64::try_from((full as i128 * kept + 9_999) / 10_000).unwrap_or(i64::MAX)
        } else {
            full
        }
    }
}

impl Model {
    /// The model's prices, as a reservation keeps them.
    pub fn prices(&self) -> Prices {
        Prices {
            input_nanos_per_mtok: self.input_nanos_per_mtok,
            cached_input_nanos_per_mtok: self.cached_input_nanos_per_mtok,
            cache_write_input_nanos_per_mtok: self.cache_write_input_nanos_per_mtok,
            output_nanos_per_mtok: self.output_nanos_per_mtok,
            batch_discount_bp: self.batch_discount_bp,
        }
    }

    /// The cost in nano-dollars of a call with these token counts at the
    /// model's prices (see [`Prices::cost`]).
    pub fn cost(&self, input: u64, cached: u64, output: u64, deferrable: bool) -> i64 {
        self.prices().cost(input, cached, output, deferrable)
    }

    /// Input tokens as the provider would bill them, from the tokenizer count.
    pub fn billed_tokens(&self, counted: u64) -> u64 {
        if self.token_scale_permille == 1000 {
            counted
        } else {
            (counted * self.token_scale_permille as u64).div_ceil(1000)
        }
    }
}
