//! Progress on a terminal, and the report as a table.

use std::io::IsTerminal;

use super::*;

/// Progress on stderr: an `indicatif` bar redrawn in place on a terminal;
/// otherwise (CI logs, files) a line every 10%, which a bar cannot give.
pub(super) struct Progress {
    pub(super) total: u64,
    pub(super) done: u64,
    bar: Option<indicatif::ProgressBar>,
    last_decile: u64,
}

impl Progress {
    pub(super) fn new(total: u64) -> Progress {
        let total = total.max(1);
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "replay [{bar:30}] {percent:>3}% {pos}/{len} rows  {msg:<16} {elapsed}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Progress {
            total,
            done: 0,
            bar,
            last_decile: 0,
        }
    }
    pub(super) fn tick(&mut self, policy: &str) {
        self.done += 1;
        match &self.bar {
            Some(bar) => {
                // indicatif redraws at most 20 times a second; the message is
                // set only when the policy changes.
                if bar.message() != policy {
                    bar.set_message(policy.to_string());
                }
                bar.inc(1);
            }
            None => {
                let decile = self.done * 10 / self.total;
                if decile > self.last_decile {
                    self.last_decile = decile;
                    eprintln!("replay: {}% ({}/{} rows, {policy})", decile * 10, self.done, self.total);
                }
            }
        }
    }
    pub(super) fn done(&mut self) {
        if let Some(bar) = self.bar.take() {
            let took = bar.elapsed();
            bar.finish_and_clear();
            eprintln!("replay: {} rows in {:.1} s", self.total, took.as_secs_f64());
        }
    }
}

pub(super) fn table(r: &Report) -> String {
    let mut out = format!(
        "replay of {} rows, workflow `{}`, seed {}: strong = {}, weak = {}\n\n",
        r.rows, r.workflow, r.seed, r.strong_model, r.weak_model
    );
    out.push_str(&format!(
        "{:<16} {:>8} {:>12} {:>14} {:>10} {:>8} {:>7}\n",
        "policy", "success", "cost", "cost/success", "tasks/out", "strong", "APGR"
    ));
    for p in &r.policies {
        out.push_str(&format!(
            "{:<16} {:>7.2}% {:>12} {:>14} {:>10.3} {:>7.1}% {:>7}\n",
            p.name,
            p.success_rate * 100.0,
            format!("${:.4}", p.cost_usd),
            p.cost_per_success_usd.map_or("-".into(), |c| format!("${c:.7}")),
            p.tasks_per_outcome,
            p.strong_share * 100.0,
            p.routellm.map_or("".into(), |m| format!("{:.3}", m.apgr)),
        ));
    }
    out.push_str(&scores_table(&r.scores));
    if let (Some(apgr), Some(c50), Some(c80)) = (r.apgr, r.cpt50, r.cpt80) {
        out.push_str(&format!(
            "\nRouteLLM metrics of the {} scores: APGR {apgr:.3}, CPT(50%) {:.1}%, CPT(80%) {:.1}% (random: APGR 0.500, CPT 50% / 80%)\n",
            r.scores_from,
            c50 * 100.0,
            c80 * 100.0
        ));
    }
    out
}

/// The score sets side by side, with APGR by fifth of the rows replayed.
fn scores_table(sets: &[ScoreSet]) -> String {
    let mut out = format!(
        "\n{:<16} {:>7} {:>7} {:>7}   APGR by fifth of the rows, in the order replayed\n",
        "scores", "APGR", "CPT50", "CPT80"
    );
    for s in sets {
        let fifths: Vec<String> = s
            .fifths
            .iter()
            .map(|f| f.map_or("    -".into(), |a| format!("{a:>5.3}")))
            .collect();
        out.push_str(&format!(
            "{:<16} {:>7.3} {:>6.1}% {:>6.1}%   {}\n",
            s.name,
            s.apgr,
            s.cpt50 * 100.0,
            s.cpt80 * 100.0,
            fifths.join(" ")
        ));
    }
    out
}

pub(super) fn seeds_table(r: &SeedsReport) -> String {
    let spread = |s: &Spread, scale: f64, digits: usize| {
        format!(
            "{:.d$} ± {:.d$} ({:.d$}–{:.d$})",
            s.mean * scale,
            s.sd * scale,
            s.min * scale,
            s.max * scale,
            d = digits
        )
    };
    let mut out = format!(
        "replay of {} rows, workflow `{}`, {} shuffles of the row order (seeds {}–{}): strong = {}, weak = {}\n",
        r.rows,
        r.workflow,
        r.seeds.len(),
        r.seeds.first().copied().unwrap_or_default(),
        r.seeds.last().copied().unwrap_or_default(),
        r.strong_model,
        r.weak_model
    );
    out.push_str("mean ± standard deviation (least–greatest) over the runs\n\n");
    out.push_str(&format!(
        "{:<16} {:<30} {:<42} {}\n",
        "policy", "success %", "cost/success (µ$)", "strong %"
    ));
    for p in &r.policies {
        out.push_str(&format!(
            "{:<16} {:<30} {:<42} {}\n",
            p.name,
            spread(&p.success_rate, 100.0, 2),
            spread(&p.cost_per_success_usd, 1e6, 1),
            spread(&p.strong_share, 100.0, 1)
        ));
    }
    out.push_str(&format!("\n{:<16} APGR\n", "scores"));
    for s in &r.scores {
        out.push_str(&format!("{:<16} {}\n", s.name, spread(&s.apgr, 1.0, 3)));
    }
    out.push_str(&format!(
        "\nthe router's scores ranked below the prior's in {} of {} runs\n",
        r.router_below_prior,
        r.seeds.len()
    ));
    out
}

/// The report as a table, for people.
pub fn pacing_table(r: &super::pacing::PacingReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} rows of {} in workflow `{}`, {} seeds of a {}-hour period in bursts, {}\n",
        r.rows,
        r.data,
        r.workflow,
        r.seeds,
        r.period_hours,
        if r.learner {
            "with the learner's predictions (each half of the rows learned from the other)"
        } else {
            "with the difficulty score alone (--no-learner)"
        }
    );
    let _ = writeln!(
        s,
        "| budget | policy | accepted (sd) | vs threshold | spend / budget (min–max) | seeds 95–100% | hours stepped down | hours escalated | cost per accepted |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for p in &r.policies {
        let _ = writeln!(
            s,
            "| {:.0}% | {} | {:.0} ({:.0}) | {:+.1}% | {:.1}% ({:.1}–{:.1}) | {} | {:.1} | {:.1} | {} |",
            p.budget_share * 100.0,
            p.name,
            p.accepted_mean,
            p.accepted_sd,
            p.accepted_gain_over_threshold * 100.0,
            p.spend_share_mean * 100.0,
            p.spend_share_min * 100.0,
            p.spend_share_max * 100.0,
            p.seeds_within_95_100,
            p.hours_stepped_down_mean,
            p.hours_escalated_mean,
            crate::money::Usd(p.cost_per_accepted_nanousd),
        );
    }
    let _ = writeln!(
        s,
        "\nthe ceiling: a router that knew each task kind's acceptance in hindsight"
    );
    for c in &r.ceilings {
        let _ = writeln!(
            s,
            "  budget {:.0}%: {:.0} accepted, {:+.1}% over threshold",
            c.budget_share * 100.0,
            c.accepted,
            c.gain_over_threshold * 100.0
        );
    }
    let _ = writeln!(s, "\nprice after the call rate doubles at mid-period (even pacing):");
    for x in &r.settling {
        let _ = writeln!(
            s,
            "  budget {:.0}%: log λ {:.2} -> {:.2}, settled in {:.3} of the period, {} overshoot(s)",
            x.budget_share * 100.0,
            x.log_price_before,
            x.log_price_after,
            x.settle_share,
            x.overshoots
        );
    }
    s
}
