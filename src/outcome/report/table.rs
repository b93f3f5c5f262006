//! The report as a text table, for people.

use super::*;

pub(crate) fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.1}%", v * 100.0))
}

pub(crate) fn usd(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| crate::money::format_dollars(v, 2))
}

pub(crate) fn num(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| {
        if v >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        }
    })
}

/// The report as a table for people.
pub fn table(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Switchyard report: this {} ({} to {}){}",
        r.period,
        r.from,
        r.to,
        r.label.as_ref().map(|l| format!(", label {l}")).unwrap_or_default()
    );
    for w in &r.workflows {
        let _ = writeln!(out, "\n== {}", w.workflow);
        let _ = writeln!(
            out,
            "  outcomes {} (accepted {}, corrected {}, rejected {}, abandoned {}; {} re-recorded)  acceptance {}",
            w.outcomes,
            w.outcomes_by_status["accepted"],
            w.outcomes_by_status["corrected"],
            w.outcomes_by_status["rejected"],
            w.outcomes_by_status["abandoned"],
            w.outcome_changes,
            pct(w.acceptance_rate)
        );
        let _ = writeln!(
            out,
            "  spend {} over {} calls ({} failed)  cost per accepted outcome {}",
            usd(Some(w.spend_usd)),
            w.calls,
            w.failed_calls,
            usd(w.cost_per_accepted_outcome_usd)
        );
        let _ = writeln!(
            out,
            "    = cost/token {} × tokens/task {} × tasks/outcome {} ÷ acceptance {}",
            usd(w.cost_per_token_usd),
            num(w.tokens_per_task),
            num(w.tasks_per_outcome),
            num(w.acceptance_rate)
        );
        let _ = writeln!(
            out,
            "  previous {}: cost per accepted outcome {}, {} calls, {} outcomes",
            r.period,
            usd(w.previous.cost_per_accepted_outcome_usd),
            w.previous.calls,
            w.previous.outcomes
        );
        if let Some(m) = &w.moved_most {
            let _ = writeln!(
                out,
                "  moved most: {} {:+.1}% ({} → {}), which {} cost per outcome",
                m.factor,
                m.change_pct,
                num(Some(m.previous)),
                num(Some(m.current)),
                if m.raises_cost { "raises" } else { "lowers" }
            );
        }
        let mix: Vec<String> = w
            .model_mix
            .iter()
            .map(|m| format!("{} {:.0}% ({} calls)", m.model, m.share_of_spend * 100.0, m.calls))
            .collect();
        let _ = writeln!(
            out,
            "  model mix (share of spend): {}",
            if mix.is_empty() { "–".into() } else { mix.join(", ") }
        );
        let _ = writeln!(
            out,
            "  cached input {}  downgrades {}  escalations {}  human intervention {} ({:.0} min)  median cycle time {}",
            pct(w.cached_token_share),
            w.downgrades,
            w.escalations,
            pct(w.human_intervention_rate),
            w.human_minutes,
            w.median_cycle_time_s.map_or("–".into(), |s| format!("{s:.0} s"))
        );
        let _ = writeln!(
            out,
            "  what-if coverage: {} of calls labelled, {} with a logged decision and propensity",
            pct(w.labelled_call_share),
            pct(w.logged_decision_share)
        );
        if let Some(v) = w.value_usd {
            let _ = writeln!(
                out,
                "  value {} ({} per dollar spent)",
                usd(Some(v)),
                num(w.value_per_dollar)
            );
        }
        if let Some(b) = &w.budget {
            let _ = writeln!(
                out,
                "  budget {}: {} spent + {} reserved of {} ({} left), burning {}/h; {}",
                b.period_scope,
                usd(Some(b.spent_usd)),
                usd(Some(b.reserved_usd)),
                usd(Some(b.limit_usd)),
                usd(Some(b.remaining_usd)),
                usd(Some(b.burn_rate_usd_per_hour)),
                match &b.runs_out_at {
                    Some(t) => format!("runs out at {t}"),
                    None => format!("lasts the period (ends {})", b.period_ends_at),
                }
            );
            if let Some(p) = &b.pace {
                let _ = writeln!(out, "  {}", p.summary());
            }
        }
        let _ = writeln!(
            out,
            "  maturity: {}{}",
            w.maturity.rung,
            match (&w.maturity.next, &w.maturity.needs) {
                (Some(n), Some(why)) => format!(" (next: {n}: {why})"),
                _ => String::new(),
            }
        );
        for f in &w.flags {
            let _ = writeln!(out, "  ! {f}");
        }
    }
    out
}

/// What the table says when nothing has been recorded.
pub const EMPTY: &str = "No calls or outcomes are recorded for this period yet. Route calls, report their usage \
with ReportUsage and how the work ended with RecordOutcome, then run the report again.\n";
