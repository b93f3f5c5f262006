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

/// [`MAX_BUDGET_USD`] in nano-dollars.
pub const MAX_BUDGET_NANOS: i64 = 1_000_000_000 * NANOS_PER_USD;

/// The most one escalation approval may add, in USD. An approval is a person
/// raising a limit by hand; a million dollars at once is past any real need,
/// and the cap keeps a typo (or a hostile admin key) from lifting a budget
/// out of reach of its own arithmetic.
pub const MAX_APPROVAL_USD: i64 = 1_000_000;

/// [`MAX_APPROVAL_USD`] in nano-dollars.
pub const MAX_APPROVAL_NANOS: i64 = MAX_APPROVAL_USD * NANOS_PER_USD;

/// The most approvals may add to one scope in all, in nano-dollars: with a
/// limit of at most [`MAX_BUDGET_NANOS`], a scope's limit stays below 2e18,
/// far inside i64 (9.2e18), so no sum the stores make can overflow.
pub const MAX_SCOPE_EXTRA_NANOS: i64 = MAX_BUDGET_NANOS;

/// The sum of `amounts`, or `None` if it does not fit in i64: a sum never
/// wraps silently.
pub fn checked_sum(amounts: impl IntoIterator<Item = i64>) -> Option<i64> {
    amounts.into_iter().try_fold(0i64, i64::checked_add)
}

/// `a + b`, held at the ends of i64 instead of wrapping. Counters that only
/// grow (spend) saturate: far past any budget, and never a wrapped negative.
pub fn saturating_add(a: i64, b: i64) -> i64 {
    a.saturating_add(b)
}

/// Parses a USD amount written by a person or a script, exactly: `12`,
/// `0.5`, `$1.25`, `0.000000001`. At most nine decimals (one nano-dollar);
/// no sign, exponent or separators. The answer is in nano-dollars.
pub fn parse_usd(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let t = t.strip_prefix('$').unwrap_or(t);
    let bad =
        || format!("`{text}` is not an amount of USD: write digits with at most nine decimals, such as 5 or 0.25");
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if (whole.is_empty() && frac.is_empty())
        || frac.len() > 9
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let mut nanos_frac: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    for _ in frac.len()..9 {
        nanos_frac *= 10;
    }
    whole
        .checked_mul(NANOS_PER_USD)
        .and_then(|n| n.checked_add(nanos_frac))
        .ok_or_else(|| format!("`{text}` USD is too large"))
}

/// Nano-dollars as an exact dollar amount, every digit kept and trailing
/// zeros dropped: `$1.5`, `$0.000000001`, `-$2`. [`parse_usd`] reads it back
/// to the same nano-dollars (for amounts of at least zero).
pub fn format_usd_exact(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let (whole, frac) = (n / NANOS_PER_USD as u64, n % NANOS_PER_USD as u64);
    if frac == 0 {
        return format!("{sign}${whole}");
    }
    let digits = format!("{frac:09}");
    format!("{sign}${whole}.{}", digits.trim_end_matches('0'))
}

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
    Usd(nanos).to_string()
}

/// Nano-dollars shown as [`format_usd`] shows them, written straight into
/// the text around it: `format!("est. {}", Usd(cost))` builds one string
/// where `format_usd` inside a `format!` builds two (every Route's reason
/// carries an amount).
#[derive(Debug, Clone, Copy)]
pub struct Usd(pub i64);

impl std::fmt::Display for Usd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match usd_in_integers(self.0) {
            Some((q, decimals)) => {
                // `$` and whole dollars, then `decimals` digits: written
                // back to front into a buffer (a u64 has at most 20 digits),
                // as formatting with a width and fill costs several times more.
                let mut buf = [0u8; 32];
                let mut at = buf.len();
                let mut rest = q;
                for _ in 0..decimals {
                    at -= 1;
                    buf[at] = b'0' + (rest % 10) as u8;
                    rest /= 10;
                }
                at -= 1;
                buf[at] = b'.';
                loop {
                    at -= 1;
                    buf[at] = b'0' + (rest % 10) as u8;
                    rest /= 10;
                    if rest == 0 {
                        break;
                    }
                }
                at -= 1;
                buf[at] = b'$';
                // Only ASCII digits, `.` and `$` were written.
                f.write_str(std::str::from_utf8(&buf[at..]).map_err(|_| std::fmt::Error)?)
            }
            None => f.write_str(&format_dollars(self.0 as f64 / NANOS_PER_USD as f64, 1)),
        }
    }
}

/// [`format_usd`] without floating point: the same two significant digits
/// (whole cents from $1), with the same rounding, as the amount in units of
/// `10^-decimals` dollars. Every Route's reason carries an amount, and
/// formatting a float to a precision took over a microsecond. Where float
/// rounding could come out differently (an exact tie, a power of ten, whose
/// logarithm decides the digits, a negative amount, or one too large for an
/// `f64` to hold exactly) it answers `None` and the float formatting decides.
fn usd_in_integers(nanos: i64) -> Option<(u64, u32)> {
    let n = u64::try_from(nanos).ok().filter(|&n| n > 0 && n < 1 << 53)?;
    let digits = n.ilog10() + 1;
    if n == 10u64.pow(digits - 1) {
        return None;
    }
    // Rounded to `unit` nano-dollars (tenths of a nano-dollar for one-digit
    // amounts), shown with `decimals` places.
    if n >= NANOS_PER_USD as u64 {
        Some((round_to(n, 10_000_000)?, 2))
    } else if digits == 1 {
        Some((n * 10, 10))
    } else {
        Some((round_to(n, 10u64.pow(digits - 2))?, 11 - digits))
    }
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

    proptest::proptest! {
        /// Any amounts a budget can hold sum exactly, or the sum says it
        /// does not fit: never a wrapped value.
        #[test]
        fn sums_of_amounts_never_wrap(amounts in proptest::collection::vec(0..=i64::MAX, 0..64)) {
            let exact: i128 = amounts.iter().map(|&a| a as i128).sum();
            match checked_sum(amounts.iter().copied()) {
                Some(s) => proptest::prop_assert_eq!(s as i128, exact),
                None => proptest::prop_assert!(exact > i64::MAX as i128),
            }
        }

        /// Sums of in-range budget amounts always fit.
        #[test]
        fn sums_of_budget_amounts_fit(amounts in proptest::collection::vec(0..=MAX_BUDGET_NANOS, 0..9)) {
            proptest::prop_assert!(checked_sum(amounts.iter().copied()).is_some());
        }

        /// Every exactly formatted amount parses back to the same nanos.
        #[test]
        fn exact_amounts_round_trip(n in 0..=i64::MAX) {
            let text = format_usd_exact(n);
            proptest::prop_assert_eq!(parse_usd(&text), Ok(n), "{}", text);
            proptest::prop_assert_eq!(parse_usd(text.trim_start_matches('$')), Ok(n));
        }

        /// Spend saturates at the top of i64 and never turns negative.
        #[test]
        fn saturating_spend_stays_in_range(a in 0..=i64::MAX, b in 0..=i64::MAX) {
            let s = saturating_add(a, b);
            proptest::prop_assert!(s >= a.max(b));
            proptest::prop_assert_eq!(s as i128, (a as i128 + b as i128).min(i64::MAX as i128));
        }
    }

    #[test]
    fn usd_is_parsed_exactly_or_refused_with_a_reason() {
        assert_eq!(parse_usd("5"), Ok(5 * NANOS_PER_USD));
        assert_eq!(parse_usd("$0.25"), Ok(250_000_000));
        assert_eq!(parse_usd(".5"), Ok(500_000_000));
        assert_eq!(parse_usd("0.000000001"), Ok(1));
        assert_eq!(parse_usd("9223372036.854775807"), Ok(i64::MAX));
        for bad in ["", "$", "-1", "1e9", "1,000", "0.0000000001", "NaN", "1.2.3", " "] {
            assert!(parse_usd(bad).is_err(), "{bad:?}");
        }
        assert!(parse_usd("9223372036.854775808")
            .expect_err("over")
            .contains("too large"));
        assert_eq!(format_usd_exact(1_500_000_000), "$1.5");
        assert_eq!(format_usd_exact(-2 * NANOS_PER_USD), "-$2");
        assert_eq!(format_usd_exact(0), "$0");
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_usd(420_000), "$0.00042");
        assert_eq!(format_usd(1_250_000_000), "$1.25");
        assert_eq!(format_usd(0), "$0");
    }
}
