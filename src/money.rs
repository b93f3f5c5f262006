//! Money is an integer number of nano-dollars (1e-9 USD) everywhere inside
//! Switchyard. Budgets add millions of tiny amounts; floating point would drift.
//! Dollars appear only where a person reads them.

/// Nano-dollars in one US dollar.
pub const NANOS_PER_USD: i64 = 1_000_000_000;

/// The largest list price accepted in a rules file, in USD per million tokens.
/// Far above any real model; it exists so that a typo cannot overflow a budget.
pub const MAX_PRICE_PER_MTOK_USD: f64 = 100_000.0;

/// The largest budget amount accepted, in USD: a billion dollars, which keeps
/// every sum of budgets far inside i64 nano-dollars (about 9.2e9 USD).
pub const MAX_BUDGET_USD: f64 = 1_000_000_000.0;

/// Converts a budget amount in USD into integer nano-dollars, or `None` for a
/// non-positive, non-finite or absurd amount.
pub fn budget_usd_to_nanos(usd: f64) -> Option<i64> {
    if !usd.is_finite() || usd <= 0.0 || usd > MAX_BUDGET_USD {
        return None;
    }
    Some((usd * NANOS_PER_USD as f64).round() as i64)
}

/// Converts a USD price per million tokens (as written in TOML) into integer
/// nano-dollars per million tokens, rounding to the nearest nano-dollar.
///
/// Returns `None` for negative, non-finite or absurd prices.
pub fn usd_to_nanos(usd: f64) -> Option<i64> {
    if !usd.is_finite() || !(0.0..=MAX_PRICE_PER_MTOK_USD).contains(&usd) {
        return None;
    }
    // 1e5 USD * 1e9 = 1e14, well inside i64.
    Some((usd * NANOS_PER_USD as f64).round() as i64)
}

/// Cost in nano-dollars of `tokens` at `nanos_per_mtok`, rounded up so that an
/// estimate never under-reserves by a rounding error.
pub fn token_cost(tokens: u64, nanos_per_mtok: i64) -> i64 {
    let product = tokens as i128 * nanos_per_mtok as i128;
    let cost = (product + 999_999) / 1_000_000;
    i64::try_from(cost).unwrap_or(i64::MAX)
}

/// Formats nano-dollars as dollars for people, with enough digits to tell
/// small calls apart: `$0.00042`, `$1.25`.
pub fn format_usd(nanos: i64) -> String {
    format_dollars(nanos as f64 / NANOS_PER_USD as f64, 1)
}

/// A dollar amount for people: cents from $1 up; below that, `extra + 1`
/// significant digits.
pub fn format_dollars(usd: f64, extra: usize) -> String {
    if usd == 0.0 {
        "$0".to_string()
    } else if usd.abs() >= 1.0 {
        format!("${usd:.2}")
    } else {
        let digits = (-usd.abs().log10()).ceil() as usize + extra;
        format!("${usd:.digits$}")
    }
}

/// Nano-dollars as a floating USD amount, for JSON read by tools.
pub fn nanos_to_usd(nanos: i64) -> f64 {
    nanos as f64 / NANOS_PER_USD as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_convert_exactly() {
        assert_eq!(usd_to_nanos(0.025), Some(25_000_000));
        assert_eq!(usd_to_nanos(15.0), Some(15_000_000_000));
        assert_eq!(usd_to_nanos(-1.0), None);
        assert_eq!(usd_to_nanos(f64::NAN), None);
        assert_eq!(usd_to_nanos(1e9), None);
    }

    #[test]
    fn budgets_convert_up_to_a_billion_dollars() {
        assert_eq!(budget_usd_to_nanos(1.0), Some(1_000_000_000));
        assert_eq!(budget_usd_to_nanos(1_000_000.0), Some(1_000_000_000_000_000));
        assert_eq!(budget_usd_to_nanos(0.0), None);
        assert_eq!(budget_usd_to_nanos(2e9), None);
    }

    #[test]
    fn token_cost_rounds_up() {
        // 1 token at $0.025/Mtok is 25 nano-dollars exactly.
        assert_eq!(token_cost(1, 25_000_000), 25);
        // 1 token at $0.0000015/Mtok is 0.0015 nano-dollars: rounds up to 1.
        assert_eq!(token_cost(1, 1_500), 1);
        assert_eq!(token_cost(0, 1_500), 0);
        assert_eq!(token_cost(1_000_000, 2_000_000_000), 2_000_000_000);
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_usd(420_000), "$0.00042");
        assert_eq!(format_usd(1_250_000_000), "$1.25");
        assert_eq!(format_usd(0), "$0");
    }
}
