//! The dashboard on the admin port's `/`: the report, rendered on the server
//! as HTML with inline SVG. No script and no front-end build; it refreshes
//! itself every 30 seconds.

use std::fmt::Write as _;

use crate::outcome::report::{num, pct, usd, BudgetLine, DayPoint, PaceLine, Report, WorkflowReport};

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#1d2330;background:#fafbfc}\
h1{margin:0 0 4px}h2{margin:28px 0 8px;border-bottom:2px solid #dde3ea;padding-bottom:4px}\
.muted{color:#66707f}.cards{display:flex;flex-wrap:wrap;gap:12px}\
.card{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:12px 16px;min-width:150px}\
.card b{display:block;font-size:1.5em}.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}\
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #dde3ea;padding:4px 8px;text-align:left}\
.flag{color:#a4400a;font-weight:600}.panel{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:12px}";

/// The whole page: the report per workflow, then `status` (rules, models).
pub fn page(r: &Report, status: &str) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"30\">\
         <title>Switchyard: cost per accepted outcome</title><style>{STYLE}</style></head><body>\
         <h1>Switchyard</h1><p class=\"muted\">Cost per accepted outcome, this {} ({} to {}), against the {} before. \
         Generated {}.</p>",
        r.period,
        escape(&r.from),
        escape(&r.to),
        r.period,
        escape(&r.generated_at)
    );
    if let Some(m) = &r.message {
        let _ = write!(out, "<p class=\"panel\" id=\"empty\">{}</p>", escape(m));
    }
    for w in &r.workflows {
        workflow(&mut out, w);
    }
    out.push_str(status);
    out.push_str("</body></html>");
    out
}

fn workflow(out: &mut String, w: &WorkflowReport) {
    let id = escape(&w.workflow);
    let _ = write!(
        out,
        "<section class=\"workflow\" data-workflow=\"{id}\"><h2>{id}</h2><div class=\"cards\">\
         <div class=\"card\">cost per accepted outcome<b id=\"cpo-{id}\">{}</b></div>\
         <div class=\"card\">spend<b id=\"spend-{id}\">{}</b>{} calls</div>\
         <div class=\"card\">accepted outcomes<b id=\"accepted-{id}\">{} of {}</b>acceptance {}</div>\
         <div class=\"card\">human intervention<b>{}</b>{:.0} min</div>\
         <div class=\"card\">median cycle time<b>{}</b></div>\
         <div class=\"card\">value per dollar<b>{}</b></div></div>",
        usd(w.cost_per_accepted_outcome_usd),
        usd(Some(w.spend_usd)),
        w.calls,
        w.accepted_outcomes,
        w.outcomes,
        pct(w.acceptance_rate),
        pct(w.human_intervention_rate),
        w.human_minutes,
        w.median_cycle_time_s.map_or("–".into(), |s| format!("{s:.0} s")),
        num(w.value_per_dollar),
    );
    for f in &w.flags {
        let _ = write!(out, "<p class=\"flag\">⚑ {}</p>", escape(f));
    }
    out.push_str("<div class=\"grid\"><div class=\"panel\"><b>Cost per accepted outcome, by day</b>");
    chart(out, &w.daily);
    out.push_str("</div><div class=\"panel\"><b>The four factors</b>");
    let factors = [
        (
            "cost / token",
            usd(w.cost_per_token_usd),
            usd(w.previous.cost_per_token_usd),
        ),
        ("tokens / task", num(w.tokens_per_task), num(w.previous.tokens_per_task)),
        (
            "tasks / outcome",
            num(w.tasks_per_outcome),
            num(w.previous.tasks_per_outcome),
        ),
        (
            "acceptance rate",
            pct(w.acceptance_rate),
            pct(w.previous.acceptance_rate),
        ),
    ];
    out.push_str("<table><tr><th>factor</th><th>now</th><th>before</th></tr>");
    for (name, now, before) in factors {
        let _ = write!(out, "<tr><td>{name}</td><td>{now}</td><td>{before}</td></tr>");
    }
    out.push_str("</table>");
    if let Some(m) = &w.moved_most {
        let _ = write!(
            out,
            "<p>Moved most: <b>{}</b> {:+.1}%, which {} cost per outcome.</p>",
            m.factor,
            m.change_pct,
            if m.raises_cost { "raises" } else { "lowers" }
        );
    }
    let _ = write!(
        out,
        "<p>Maturity: <b>{}</b>{}</p><p class=\"muted\">cached input {} · downgrades {} · escalations {}</p>\
         <p class=\"muted\">what-if coverage: {} of calls labelled · {} with a logged decision and propensity</p></div>",
        w.maturity.rung,
        match (&w.maturity.next, &w.maturity.needs) {
            (Some(n), Some(why)) => format!(" → next, {n}: {}", escape(why)),
            _ => String::new(),
        },
        pct(w.cached_token_share),
        w.downgrades,
        w.escalations,
        pct(w.labelled_call_share),
        pct(w.logged_decision_share)
    );
    out.push_str("<div class=\"panel\"><b>Spend against budget</b>");
    match &w.budget {
        Some(b) => {
            let scale = |v: f64| {
                if b.limit_usd > 0.0 {
                    (v / b.limit_usd * 100.0).clamp(0.0, 100.0)
                } else {
                    0.0
                }
            };
            // A paced budget's target so far: a dark mark on the bar.
            let target = b.pace.as_ref().map_or(String::new(), |p| {
                format!(
                    "<rect x=\"{:.2}\" width=\"0.6\" height=\"10\" fill=\"#1d2330\"><title>paced target</title></rect>",
                    scale(p.target_usd)
                )
            });
            let _ = write!(
                out,
                "<svg width=\"100%\" height=\"28\" viewBox=\"0 0 100 10\" preserveAspectRatio=\"none\" role=\"img\">\
                 <rect width=\"100\" height=\"10\" fill=\"#e8edf3\"/><rect width=\"{:.2}\" height=\"10\" fill=\"#2f6fdf\"/>\
                 <rect x=\"{:.2}\" width=\"{:.2}\" height=\"10\" fill=\"#9dbcf2\"/>{target}</svg>\
                 <p id=\"budget-{id}\">{} spent + {} reserved of {} · burning {}/h · {}</p>",
                scale(b.spent_usd),
                scale(b.spent_usd),
                scale(b.reserved_usd),
                usd(Some(b.spent_usd)),
                usd(Some(b.reserved_usd)),
                usd(Some(b.limit_usd)),
                usd(Some(b.burn_rate_usd_per_hour)),
                match &b.runs_out_at {
                    Some(t) => format!("<b>runs out at {}</b>", escape(t)),
                    None => "lasts the period at this rate".into(),
                }
            );
            if let Some(p) = &b.pace {
                let _ = write!(out, "<p id=\"pace-{id}\">{}</p>", escape(&p.summary()));
                pace_chart(out, &id, b, p);
            }
        }
        None => out.push_str("<p class=\"muted\">No budget in the rules.</p>"),
    }
    out.push_str("</div><div class=\"panel\"><b>Model mix (share of spend)</b>");
    if w.model_mix.is_empty() {
        out.push_str("<p class=\"muted\">No calls this period.</p>");
    }
    for m in &w.model_mix {
        let _ = write!(
            out,
            "<div>{} · {} calls · {}<svg width=\"100%\" height=\"10\" viewBox=\"0 0 100 4\" preserveAspectRatio=\"none\">\
             <rect width=\"{:.2}\" height=\"4\" fill=\"#3a9a6a\"/></svg></div>",
            escape(&m.model),
            m.calls,
            pct(Some(m.share_of_spend)),
            m.share_of_spend * 100.0
        );
    }
    out.push_str("</div></div><h3>Recent outcomes</h3><table><tr><th>outcome</th><th>status</th><th>calls</th><th>cost</th><th>recorded</th></tr>");
    for o in &w.recent_outcomes {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&o.outcome_id),
            o.status,
            o.calls,
            usd(Some(o.cost_usd)),
            escape(&o.recorded_at)
        );
    }
    out.push_str("</table></section>");
}

/// A paced budget's period: the target curve from its start to its end,
/// the limit, and where spend (spent plus reserved) and the target are now.
fn pace_chart(out: &mut String, id: &str, b: &BudgetLine, p: &PaceLine) {
    if p.curve.is_empty() || b.limit_usd <= 0.0 {
        return;
    }
    let (w, h, pad) = (300.0, 90.0, 4.0);
    // The budget's top is 90% of the height, so spend past it still shows.
    let y = |share: f64| h - pad - (share.clamp(0.0, 1.1) / 1.1) * (h - 2.0 * pad);
    let x = |share: f64| pad + share.clamp(0.0, 1.0) * (w - 2.0 * pad);
    let curve: Vec<String> = p
        .curve
        .iter()
        .map(|&(a, s)| format!("{:.1},{:.1}", x(a), y(s)))
        .collect();
    let used = (b.spent_usd + b.reserved_usd) / b.limit_usd;
    let _ = write!(
        out,
        "<svg id=\"pace-curve-{id}\" width=\"100%\" viewBox=\"0 0 {w} {h}\" role=\"img\" \
         aria-label=\"spend against the paced target over the period\">\
         <line x1=\"{pad}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#b00\" stroke-dasharray=\"3 2\" stroke-width=\"0.8\"><title>limit {}</title></line>\
         <polyline points=\"{}\" fill=\"none\" stroke=\"#1d2330\" stroke-width=\"1.2\"><title>target curve ({})</title></polyline>\
         <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{pad}\" y2=\"{:.1}\" stroke=\"#c8cfd9\" stroke-width=\"0.8\"><title>now</title></line>\
         <circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.2\" fill=\"#1d2330\"><title>target now {}</title></circle>\
         <circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#2f6fdf\"><title>spent and reserved {}</title></circle></svg>\
         <p class=\"muted\">the line: what pacing aims to have spent from the period's start to its end; \
         blue: spend so far; dashed: the limit</p>",
        w - pad,
        y(1.0),
        y(1.0),
        usd(Some(b.limit_usd)),
        curve.join(" "),
        p.pacing,
        x(p.elapsed),
        x(p.elapsed),
        h - pad,
        x(p.elapsed),
        y(p.target_usd / b.limit_usd),
        usd(Some(p.target_usd)),
        x(p.elapsed),
        y(used),
        usd(Some(b.spent_usd + b.reserved_usd)),
    );
}

/// A line chart of cost per accepted outcome per day; days without an
/// accepted outcome leave a gap.
fn chart(out: &mut String, days: &[DayPoint]) {
    let (w, h, pad) = (560.0, 160.0, 28.0);
    let max = days
        .iter()
        .filter_map(|d| d.cost_per_accepted_outcome_usd)
        .fold(0.0_f64, f64::max);
    let _ = write!(
        out,
        "<svg width=\"100%\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"cost per accepted outcome by day\">\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#99a3b1\"/>",
        h - pad,
        w - 4.0,
        h - pad
    );
    if max <= 0.0 {
        let _ = write!(
            out,
            "<text x=\"{pad}\" y=\"{}\" fill=\"#66707f\">no accepted outcomes in the last {} days</text></svg>",
            h / 2.0,
            days.len()
        );
        return;
    }
    let step = (w - pad - 8.0) / (days.len().max(2) - 1) as f64;
    let y = |v: f64| h - pad - v / max * (h - 2.0 * pad);
    let mut segment = String::new();
    for (i, d) in days.iter().enumerate() {
        let x = pad + i as f64 * step;
        match d.cost_per_accepted_outcome_usd {
            Some(v) => {
                let _ = write!(segment, "{x:.1},{:.1} ", y(v));
                let _ = write!(
                    out,
                    "<circle cx=\"{x:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#2f6fdf\"><title>{}: {}</title></circle>",
                    y(v),
                    d.day,
                    usd(Some(v))
                );
            }
            None => {
                if !segment.is_empty() {
                    let _ = write!(
                        out,
                        "<polyline points=\"{segment}\" fill=\"none\" stroke=\"#2f6fdf\" stroke-width=\"2\"/>"
                    );
                    segment.clear();
                }
            }
        }
    }
    if !segment.is_empty() {
        let _ = write!(
            out,
            "<polyline points=\"{segment}\" fill=\"none\" stroke=\"#2f6fdf\" stroke-width=\"2\"/>"
        );
    }
    let _ = write!(
        out,
        "<text x=\"2\" y=\"{:.1}\" font-size=\"10\" fill=\"#66707f\">{}</text>\
         <text x=\"{pad}\" y=\"{:.1}\" font-size=\"10\" fill=\"#66707f\">{}</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#66707f\" text-anchor=\"end\">{}</text></svg>",
        pad - 4.0,
        usd(Some(max)),
        h - 8.0,
        days.first().map(|d| d.day.as_str()).unwrap_or_default(),
        w - 4.0,
        h - 8.0,
        days.last().map(|d| d.day.as_str()).unwrap_or_default()
    );
}
