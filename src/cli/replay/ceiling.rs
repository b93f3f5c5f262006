//! The most any router that knows only a row's task kind could accept
//! within a budget: the ceiling `simulate pacing` reads its gains against.
//!
//! It knows, in hindsight, how often each model is accepted on each kind
//! over the whole data, and spends the budget on the kinds where the strong
//! model gains most per dollar over the weak one (the last kind in part).
//! Pacing picks per request from predictions made without that hindsight,
//! so where the difficulty score tells little within a kind, this bounds
//! what pacing can gain.

use serde::Serialize;

use super::data::Case;

/// The ceiling at one budget.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub name: String,
    pub budget_share: f64,
    pub accepted: f64,
    /// Over threshold step-down's mean at the same budget, less 1.
    pub gain_over_threshold: f64,
}

/// What a router that knows each kind's acceptance by `strong` and `weak`
/// accepts within `limit` nano-USD. Rows missing either answer count as the
/// weak model's.
pub(super) fn kind_oracle(cases: &[&Case], strong: usize, weak: usize, limit: i64) -> f64 {
    let mut by_kind: std::collections::BTreeMap<&str, (f64, i64)> = Default::default();
    let (mut accepted, mut spent) = (0.0, 0i64);
    for c in cases {
        let Some(w) = c.outcome[weak] else { continue };
        accepted += f64::from(u8::from(w.0));
        spent = spent.saturating_add(w.2);
        if let Some(s) = c.outcome[strong] {
            let k = by_kind.entry(c.task_kind.as_str()).or_default();
            k.0 += f64::from(u8::from(s.0)) - f64::from(u8::from(w.0));
            k.1 = k.1.saturating_add(s.2 - w.2);
        }
    }
    let mut kinds: Vec<(f64, i64)> = by_kind.into_values().filter(|&(g, _)| g > 0.0).collect();
    // Most gain per dollar first; a kind the strong model costs nothing
    // more on comes first of all.
    kinds.sort_by(|a, b| (b.0 * a.1.max(1) as f64).total_cmp(&(a.0 * b.1.max(1) as f64)));
    let mut left = limit.saturating_sub(spent) as f64;
    for (gain, extra) in kinds {
        if left <= 0.0 {
            break;
        }
        let part = if extra <= 0 {
            1.0
        } else {
            (left / extra as f64).min(1.0)
        };
        accepted += gain * part;
        left -= extra.max(0) as f64 * part;
    }
    accepted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(kind: &str, strong: bool, weak: bool) -> Case {
        Case {
            index: 0,
            id: String::new(),
            task_kind: kind.into(),
            prompt: String::new(),
            outcome: vec![Some((strong, 1.0, 100)), Some((weak, 1.0, 10))],
        }
    }

    #[test]
    fn the_budget_goes_to_the_kind_the_strong_model_helps_most() {
        // Kind a: strong gains 2 of 2; kind b: 1 of 2; kind c: nothing.
        let rows = [
            case("a", true, false),
            case("a", true, false),
            case("b", true, false),
            case("b", true, true),
            case("c", true, true),
        ];
        let refs: Vec<&Case> = rows.iter().collect();
        // All weak: 50 nano-USD, 2 accepted.
        assert_eq!(kind_oracle(&refs, 0, 1, 50), 2.0);
        // 180 more buys kind a whole (+2).
        assert_eq!(kind_oracle(&refs, 0, 1, 230), 4.0);
        // Half of kind b's 180 more buys half its gain.
        assert_eq!(kind_oracle(&refs, 0, 1, 320), 4.5);
        // Kind c gains nothing, so more budget buys nothing more.
        assert_eq!(kind_oracle(&refs, 0, 1, 10_000), 5.0);
    }
}
