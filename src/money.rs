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
    // In 64 bits whenever the product fits, as it does for any real call: a
    // 128-bit division is a library call, made for every candidate model.
    if let Some(rounded) = i64::try_from(tokens)
        .ok()
        .and_then(|t| t.checked_mul(nanos_per_mtok))
        .and_then(|p| p.checked_add(999_999))
    {
        return rounded / 1_000_000;
    }
    let product = tokens as i128 * nanos_per_mtok as i128;
    let cost = (product + 999_999) / 1_000_000;
    i64::try_from(cost).unwrap_or(i64::MAX)
}

/// Formats nano-dollars as dollars for people, with enough digits to tell
/// small calls apart: `$0.00042`, `$1.25`.
pub fn format_usd(nanos: i64) -> String {
    usd_in_integers(nanos).unwrap_or_else(|| format_dollars(nanos as f64 / NANOS_PER_USD as f64, 1))
}

/// [`format_usd`] without floating point: the same two significant digits
/// (whole cents from $1), with the same rounding. Every Route's reason
/// carries an amount, and formatting a float to a precision took over a
/// microsecond. Where float rounding could come out differently (an exact
/// tie, a power of ten, whose logarithm decides the digits, a negative
/// amount, or one too large for an `f64` to hold exactly) it answers `None`
/// and the float formatting decides.
fn usd_in_integers(nanos: i64) -> Option<String> {
    let n = u64::try_from(nanos).ok().filter(|&n| n > 0 && n < 1 << 53)?;
    let digits = n.ilog10() + 1;
    if n == 10u64.pow(digits - 1) {
        return None;
    }
    // Rounded to `unit` nano-dollars (tenths of a nano-dollar for one-digit
    // amounts), shown with `decimals` places.
    let (q, decimals) = if n >= NANOS_PER_USD as u64 {
        (round_to(n, 10_000_000)?, 2)
    } else if digits == 1 {
        (n * 10, 10)
    } else {
        (round_to(n, 10u64.pow(digits - 2))?, 11 - digits)
    };
    let scale = 10u64.pow(decimals);
    Some(format!(
        "${}.{:0width$}",
        q / scale,
        q % scale,
        width = decimals as usize
    ))
}

/// `n / unit` rounded to the nearest integer, or `None` on an exact tie.
fn round_to(n: u64, unit: u64) -> Option<u64> {
    let (q, rem) = (n / unit, n % unit);
    match (rem * 2).cmp(&unit) {
        std::cmp::Ordering::Less => Some(q),
        std::cmp::Ordering::Greater => Some(q + 1),
        std::cmp::Ordering::Equal => None,
    }
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
    fn amounts_format_in_integers_exactly_as_in_floating_point() {
        let float = |n: i64| format_dollars(n as f64 / NANOS_PER_USD as f64, 1);
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut amounts: Vec<i64> = (-10..200_000).collect();
        // Every magnitude, ties and powers of ten among them.
        for d in 0..15 {
            let p = 10i64.pow(d);
            amounts.extend([
                p - 1,
                p,
                p + 1,
                p / 2,
                p * 5 / 2,
                p * 15 / 10,
                p * 995 / 1000,
                2_450 * p,
            ]);
        }
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            amounts.push((state % 10u64.pow(1 + (state >> 60) as u32 % 13)) as i64);
        }
        amounts.extend([i64::MAX, i64::MIN, 1 << 53, (1 << 53) + 1]);
        for n in amounts {
            assert_eq!(format_usd(n), float(n), "{n} nano-dollars");
        }
        assert_eq!(format_usd(420_000), "$0.00042");
        assert_eq!(format_usd(1_250_000_000), "$1.25");
        assert!(usd_in_integers(123_456).is_some(), "the integer path is taken");
    }

    #[test]
    fn token_cost_rounds_up() {
        // 1 token at $0.025/Mtok is 25 nano-dollars exactly.
        assert_eq!(token_cost(1, 25_000_000), 25);
        // 1 token at $0.0000015/Mtok is 0.0015 nano-dollars: rounds up to 1.
        assert_eq!(token_cost(1, 1_500), 1);
        assert_eq!(token_cost(0, 1_500), 0);
        assert_eq!(token_cost(1_000_000, 2_000_000_000), 2_000_000_000);
        // Past 64 bits the 128-bit path gives the same rounding, and saturates.
        let big = 1u64 << 40;
        assert_eq!(
            token_cost(big, 1 << 30),
            ((big as i128 * (1 << 30) + 999_999) / 1_000_000) as i64
        );
        assert_eq!(token_cost(u64::MAX, 100_000_000_000_000), i64::MAX);
        assert_eq!(token_cost(9_223_372_036_854, 1_000_001), 9_223_381_260_227);
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_usd(420_000), "$0.00042");
        assert_eq!(format_usd(1_250_000_000), "$1.25");
        assert_eq!(format_usd(0), "$0");
    }
}
