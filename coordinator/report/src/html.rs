//! `index.html`: one self-contained page (inline CSS, inline SVG figures, no scripts, no
//! external URLs) with every table and figure, readable offline.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use tsweep_proto::v1::TaskState;

use crate::analysis::{Analysis, MissingReason, RegimeAnalysis, ScoreSource};
use crate::input::CellRow;
use crate::pretraining::RegularizerStudy;
use crate::tables::{
    hparams_long, mean_with_spread, missing_text, percent, r_with_interval, score_text, source_text, study_regimes,
    top1_header, transfer_text, LEGEND,
};

/// Cells listed in the "needs attention" table at most; the rest are in results.csv.
const MAX_ATTENTION_ROWS: usize = 1000;

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.3em .5em;vertical-align:top}
th{background:#f4f4f4;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.hp{display:block;color:#777;font-size:.8em;white-space:nowrap}
.fallback{background:#fff8e1}.diverged{background:#fdecea}.failed{background:#fdecea;color:#b71c1c}
.pending{color:#999}.excluded{color:#999}
.figure{overflow-x:auto;margin:1em 0}.figure svg{max-width:100%;height:auto}
.note{color:#555}.scroll{overflow-x:auto}
details{margin:1em 0}summary{cursor:pointer;font-weight:bold}
code{background:#f4f4f4;padding:0 .2em}
";

fn status_counts(cells: &[CellRow]) -> String {
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for c in cells {
        *counts.entry((c.stage.name().to_string(), c.status.name().to_string())).or_default() += 1;
    }
    counts.iter().map(|((stage, status), n)| format!("{stage} {status}: {n}")).collect::<Vec<_>>().join(" · ")
}

fn regime_section(out: &mut String, regime: &RegimeAnalysis, level: f64, x_axis: &str, top1: &str) {
    let name = regime.regime.name();
    let _ = writeln!(out, "<h2 id=\"{name}\">{name}</h2>");
    match &regime.correlation {
        Some(c) => {
            let _ = writeln!(
                out,
                "<p>Pearson r of mean log-odds vs {}: <b>{}</b> ({:.0}% bootstrap interval, {} models); fit: {:.3} + {:.4} × top-1 (%).</p>",
                escape(x_axis),
                escape(&r_with_interval(c)),
                level * 100.0,
                c.n,
                c.intercept,
                c.slope
            );
        }
        None => out.push_str("<p>Pearson r: not available.</p>\n"),
    }
    let _ = write!(out, "<div class=\"scroll\"><table>\n<tr><th>model</th><th>{} top-1</th>", escape(top1));
    for d in &regime.datasets {
        let _ = write!(out, "<th>{}</th>", escape(d));
    }
    out.push_str("<th>mean log-odds</th></tr>\n");
    for m in &regime.models {
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"num\">{}</td>",
            escape(&m.model),
            m.imagenet_top1.map_or("—".to_string(), percent)
        );
        for d in &regime.datasets {
            match regime.score(&m.model, d) {
                Some(s) => {
                    let class = if s.diverged {
                        "num diverged"
                    } else if s.accuracy.is_none() {
                        match s.missing.map(missing_text) {
                            Some("pending") => "num pending",
                            _ => "num failed",
                        }
                    } else if matches!(s.source, ScoreSource::BestGridNoFinal | ScoreSource::BestGridFinalFailed) {
                        "num fallback"
                    } else {
                        "num"
                    };
                    let _ = write!(out, "<td class=\"{class}\">{}", escape(&score_text(s)));
                    if !s.selected.is_empty() {
                        let _ = write!(out, "<span class=\"hp\">{}</span>", escape(&hparams_long(&s.selected)));
                    }
                    out.push_str("</td>");
                }
                None => out.push_str("<td class=\"num pending\">—</td>"),
            }
        }
        let mean = m.mean_log_odds.map_or("—".to_string(), |v| format!("{v:.3}"));
        if m.in_correlation {
            let _ = writeln!(out, "<td class=\"num\">{mean}</td></tr>");
        } else {
            let why = m.excluded_because.as_deref().unwrap_or_default();
            let _ = writeln!(
                out,
                "<td class=\"num excluded\" title=\"{}\">{mean} ({})</td></tr>",
                escape(why),
                escape(why)
            );
        }
    }
    let _ = write!(out, "<tr><th>r vs {} (log-odds)</th><td></td>", escape(top1));
    for dc in &regime.per_dataset {
        match &dc.correlation {
            Some(c) => {
                let _ = write!(
                    out,
                    "<td class=\"num\">{:.2}<span class=\"hp\">{}</span></td>",
                    c.r,
                    escape(&r_with_interval(c))
                );
            }
            None => out.push_str("<td class=\"num\">—</td>"),
        }
    }
    let _ = writeln!(
        out,
        "<td class=\"num\"><b>{}</b></td></tr>\n</table></div>",
        regime.correlation.as_ref().map_or("—".to_string(), |c| format!("{:.2}", c.r))
    );
    for note in &regime.notes {
        let _ = writeln!(out, "<p class=\"note\">note: {}</p>", escape(note));
    }

    let _ = writeln!(out, "<details><summary>selection details ({name})</summary>\n<div class=\"scroll\"><table>");
    out.push_str("<tr><th>model</th><th>dataset</th><th>seed</th><th>selected</th><th>val</th><th>test</th><th>source</th><th>grid ok/diverged/failed/cancelled/unfinished of total</th><th>finals</th><th>task</th></tr>\n");
    let source_text = |source: ScoreSource, missing: Option<MissingReason>| match source {
        ScoreSource::Final => "final",
        ScoreSource::Linear => "linear task",
        ScoreSource::BestGridNoFinal => "best grid point (no final yet)",
        ScoreSource::BestGridFinalFailed => "best grid point (final failed)",
        ScoreSource::Missing => missing.map_or("missing", missing_text),
    };
    for s in &regime.scores {
        let g = &s.grid;
        let several = s.seeds.len() > 1;
        let seed = match s.seeds.as_slice() {
            [one] => one.seed.to_string(),
            seeds => format!("mean of {}/{}", s.seeds_scored, seeds.len()),
        };
        let selected =
            if several && s.selected.is_empty() { "differs by seed".to_string() } else { hparams_long(&s.selected) };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}{}</td><td>{}/{}/{}/{}/{} of {}</td><td class=\"num\">{}</td><td><code>{}</code></td></tr>",
            escape(&s.model),
            escape(&s.dataset),
            escape(&seed),
            escape(&selected),
            s.val_score.map_or("—".to_string(), percent),
            escape(&mean_with_spread(s).unwrap_or_else(|| "—".to_string())),
            source_text(s.source, s.missing),
            if s.diverged { ", diverged" } else { "" },
            g.succeeded,
            g.diverged,
            g.failed,
            g.cancelled,
            g.unfinished,
            g.total,
            s.finals,
            escape(s.task_id.as_deref().unwrap_or("")),
        );
        if !several {
            continue;
        }
        for seed in &s.seeds {
            let _ = writeln!(
                out,
                "<tr class=\"seed\"><td></td><td></td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}{}</td><td></td><td></td><td><code>{}</code></td></tr>",
                seed.seed,
                escape(&hparams_long(&seed.selected)),
                seed.val_score.map_or("—".to_string(), percent),
                seed.accuracy.map_or("—".to_string(), percent),
                source_text(seed.source, None),
                if seed.diverged { ", diverged" } else { "" },
                escape(seed.task_id.as_deref().unwrap_or("")),
            );
        }
    }
    out.push_str("</table></div></details>\n");
}

fn attention_section(out: &mut String, cells: &[CellRow]) {
    let attention: Vec<&CellRow> =
        cells.iter().filter(|c| matches!(c.status, TaskState::Failed | TaskState::Cancelled) || c.diverged).collect();
    let _ = writeln!(out, "<h2 id=\"attention\">Failed, cancelled and diverged cells ({})</h2>", attention.len());
    if attention.is_empty() {
        out.push_str("<p>None.</p>\n");
        return;
    }
    out.push_str("<div class=\"scroll\"><table>\n<tr><th>status</th><th>model</th><th>dataset</th><th>regime</th><th>stage</th><th>hparams</th><th>attempts</th><th>val</th><th>test</th><th>worker</th><th>error</th><th>task</th></tr>\n");
    for c in attention.iter().take(MAX_ATTENTION_ROWS) {
        let status = if c.diverged && c.status == TaskState::Succeeded {
            "diverged".to_string()
        } else {
            c.status.name().to_string()
        };
        let class = if c.diverged { "diverged" } else { "failed" };
        let error = if c.error_class.is_empty() { c.error.clone() } else { format!("{}: {}", c.error_class, c.error) };
        let _ = writeln!(
            out,
            "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            escape(&status),
            escape(&c.model),
            escape(&c.dataset),
            c.regime.name(),
            c.stage.name(),
            escape(&hparams_long(&c.hparams)),
            c.attempts,
            c.val_score.map_or("—".to_string(), |v| format!("{v:.4}")),
            c.test_score.map_or("—".to_string(), |v| format!("{v:.4}")),
            escape(&c.worker),
            escape(&error),
            escape(&c.task_id),
        );
    }
    out.push_str("</table></div>\n");
    if attention.len() > MAX_ATTENTION_ROWS {
        let _ = writeln!(out, "<p class=\"note\">{} more in results.csv.</p>", attention.len() - MAX_ATTENTION_ROWS);
    }
}

fn pretraining_section(out: &mut String, study: &RegularizerStudy, figure_svg: Option<&str>) {
    out.push_str("<h2 id=\"pretraining\">Pretraining settings: source accuracy against transfer</h2>\n");
    out.push_str("<p>Each setting is one pretrain cell: the same architecture trained from scratch on the source dataset under that setting, its backbone then transferred. The paper finds that settings which raise the source accuracy (label smoothing, dropout, an auxiliary head) can make the penultimate features transfer worse by linear probe, while fine-tuning barely moves.</p>\n");
    for panel in &study.panels {
        match &panel.correlation {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "<p>{}: Pearson r of mean log-odds vs source accuracy over {} settings: <b>{}</b>; fit: {:.3} + {:.4} × source top-1 (%).</p>",
                    panel.regime.name(),
                    c.n,
                    escape(&r_with_interval(c)),
                    c.intercept,
                    c.slope
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "<p>{}: r not available (3 settings scored everywhere needed).</p>",
                    panel.regime.name()
                );
            }
        }
    }
    if let Some(svg) = figure_svg {
        let _ = writeln!(out, "<div class=\"figure\">{svg}</div>");
        out.push_str("<p class=\"note\">One point per pretraining setting: its source test accuracy against its model's mean transfer log-odds, linear probe and fine-tuning side by side; hollow grey points are not scored on every dataset yet. Also <code>regularizers.png</code> and <code>regularizers.svg</code>.</p>\n");
    }
    let regimes = study_regimes(study);
    out.push_str("<div class=\"scroll\"><table>\n<tr><th>setting</th><th>model</th><th>source</th><th>settings</th><th>source top-1</th>");
    for r in &regimes {
        let _ = write!(out, "<th>{} mean log-odds (accuracy)</th>", r.name());
    }
    out.push_str("<th>task</th></tr>\n");
    for s in &study.settings {
        let class = match s.status {
            TaskState::Failed | TaskState::Cancelled => "num failed",
            TaskState::Succeeded => "num",
            _ => "num pending",
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{}</td>",
            escape(&s.label),
            escape(&s.model),
            escape(&s.source),
            escape(&hparams_long(&s.hparams)),
            escape(&source_text(s)),
        );
        for r in &regimes {
            let _ = write!(out, "<td class=\"num\">{}</td>", escape(&transfer_text(s, *r)));
        }
        let _ = writeln!(out, "<td><code>{}</code></td></tr>", escape(&s.task_id));
    }
    out.push_str("</table></div>\n");
}

/// The figures of a page, as SVG text (inlined as it is).
pub struct PageFigures<'a> {
    pub figure1: &'a str,
    pub comparison: Option<&'a str>,
    pub regularizers: Option<&'a str>,
    pub training_curves: Option<&'a str>,
}

/// The whole page.
pub fn render_page(analysis: &Analysis, cells: &[CellRow], figures: &PageFigures) -> String {
    let mut out = String::new();
    let title = format!("tsweep report: {}", analysis.sweep);
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{CSS}</style></head><body>",
        escape(&title)
    );
    let _ = writeln!(out, "<h1>{}</h1>", escape(&title));
    let _ = writeln!(out, "<p>{} cells — {}</p>", cells.len(), escape(&status_counts(cells)));
    for note in &analysis.notes {
        let _ = writeln!(out, "<p class=\"note\">note: {}</p>", escape(note));
    }

    out.push_str("<h2 id=\"summary\">Does a better ImageNet model transfer better?</h2>\n<table><tr><th>regime</th><th>models</th><th>Pearson r</th><th>interval</th><th>slope (log-odds per top-1 point)</th></tr>\n");
    for regime in &analysis.regimes {
        match &regime.correlation {
            Some(c) => {
                let interval = c.interval.map_or("—".to_string(), |i| format!("[{:.3}, {:.3}]", i.low, i.high));
                let _ = writeln!(
                    out,
                    "<tr><td><a href=\"#{0}\">{0}</a></td><td class=\"num\">{1}</td><td class=\"num\"><b>{2:.3}</b></td><td class=\"num\">{3}</td><td class=\"num\">{4:.4}</td></tr>",
                    regime.regime.name(),
                    c.n,
                    c.r,
                    interval,
                    c.slope
                );
            }
            None => {
                let _ = writeln!(out, "<tr><td>{}</td><td colspan=\"4\">not available</td></tr>", regime.regime.name());
            }
        }
    }
    let _ = writeln!(
        out,
        "</table>\n<p class=\"note\">{:.0}% percentile bootstrap over models ({} resamples, seed {}). Log-odds ln(p/(1−p)) with p clamped to [{:e}, 1−{:e}].</p>",
        analysis.settings.confidence_level * 100.0,
        analysis.settings.bootstrap_resamples,
        analysis.settings.bootstrap_seed,
        analysis.settings.log_odds_epsilon,
        analysis.settings.log_odds_epsilon
    );
    let _ = writeln!(out, "<div class=\"figure\">{}</div>", figures.figure1);
    out.push_str("<p class=\"note\">Figure 1: one point per model; filled points are in the correlation, hollow grey ones are not (a dataset without a score); red: least-squares fit. Also <code>figure1.png</code> and <code>figure1.svg</code>.</p>\n");

    if let Some(study) = &analysis.pretraining {
        pretraining_section(&mut out, study, figures.regularizers);
    }

    for regime in &analysis.regimes {
        regime_section(&mut out, regime, analysis.settings.confidence_level, &analysis.x_axis, top1_header(analysis));
    }

    if !analysis.scratch_vs_finetune.is_empty() {
        out.push_str("<h2 id=\"scratch-vs-finetune\">Fine-tune vs training from scratch</h2>\n<table><tr><th>dataset</th><th>models</th><th>fine-tune</th><th>scratch</th><th>difference (pp)</th><th>Δ log-odds</th><th>fine-tune better</th></tr>\n");
        for c in &analysis.scratch_vs_finetune {
            let f = |v: Option<f64>| v.map_or("—".to_string(), percent);
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}/{}</td></tr>",
                escape(&c.dataset),
                c.pairs.len(),
                f(c.mean_finetune),
                f(c.mean_scratch),
                c.mean_difference.map_or("—".to_string(), |d| format!("{:+.1}", d * 100.0)),
                c.mean_log_odds_difference.map_or("—".to_string(), |d| format!("{d:+.2}")),
                c.finetune_better,
                c.pairs.len()
            );
        }
        out.push_str("</table>\n");
        if let Some(svg) = figures.comparison {
            let _ = writeln!(out, "<div class=\"figure\">{svg}</div>");
            out.push_str("<p class=\"note\">Per dataset: test accuracy of each model fine-tuned (blue) and trained from random init (orange), against its ImageNet top-1. Also <code>scratch_vs_finetune.png</code>.</p>\n");
        }
    }

    if let Some(svg) = figures.training_curves {
        out.push_str("<h2 id=\"training-curves\">Training curves of the selected runs</h2>\n");
        let _ = writeln!(out, "<div class=\"figure\">{svg}</div>");
        out.push_str("<p class=\"note\">The training loss of each current fine-tune and scratch final (the refit of the selected grid point) against its step, as its workers streamed it; a resumed attempt takes over from the step it resumed at. Also <code>training_curves.png</code>; every point: <code>tsweep curve SWEEP TASK_ID</code>.</p>\n");
    }

    attention_section(&mut out, cells);
    let _ = writeln!(
        out,
        "<h2>Legend</h2><p>{}</p><p>Every cell (grid points and finals) with status, attempts, scores, hyperparameters, duration and worker: <code>results.csv</code>, <code>results.json</code>; the analysis: <code>analysis.json</code>.</p>\n</body></html>",
        escape(LEGEND)
    );
    out
}
