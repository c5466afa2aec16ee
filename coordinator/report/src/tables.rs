//! Terminal tables (comfy-table) and the number formats every output shares.

use std::collections::BTreeMap;

use comfy_table::presets::UTF8_FULL;
use comfy_table::{Cell, CellAlignment, Table};

use crate::analysis::{Analysis, Correlation, MissingReason, RegimeAnalysis, ReportedScore};
use crate::pretraining::{PretrainSetting, RegularizerStudy, STUDY_REGIMES};

/// Accuracy fraction as a percentage with one decimal: 0.8734 -> "87.3".
pub fn percent(p: f64) -> String {
    format!("{:.1}", p * 100.0)
}

/// A hyperparameter value, short: 0 -> "0", 0.01 -> "1e-2", 0.0031622 -> "3.2e-3", 0.5 -> "5e-1".
pub fn hparam_value(v: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let text = format!("{v:.1e}");
    text.replace(".0e", "e")
}

/// `lr=1e-2 weight_decay=3.2e-5`.
pub fn hparams_long(h: &BTreeMap<String, f64>) -> String {
    h.iter().map(|(k, v)| format!("{k}={}", hparam_value(*v))).collect::<Vec<_>>().join(" ")
}

/// `1e-2/3.2e-5` (values in key order).
pub fn hparams_short(h: &BTreeMap<String, f64>) -> String {
    h.values().map(|v| hparam_value(*v)).collect::<Vec<_>>().join("/")
}

/// `0.99 [0.97, 1.00]`.
pub fn r_with_interval(c: &Correlation) -> String {
    match &c.interval {
        Some(i) => format!("{:.2} [{:.2}, {:.2}]", c.r, i.low, i.high),
        None => format!("{:.2}", c.r),
    }
}

pub fn missing_text(reason: MissingReason) -> &'static str {
    match reason {
        MissingReason::Pending => "pending",
        MissingReason::Diverged => "diverged",
        MissingReason::Failed => "failed",
        MissingReason::Cancelled => "cancelled",
    }
}

/// `87.3` or, over several seeds, `87.3 ± 0.4` (the spread in percentage points).
pub fn mean_with_spread(score: &ReportedScore) -> Option<String> {
    let p = score.accuracy?;
    Some(match score.spread {
        Some(spread) => format!("{} ± {:.1}", percent(p), spread * 100.0),
        None => percent(p),
    })
}

/// The score text of a table cell: "87.3", "87.3 ± 0.4", "87.3*", "10.0 D", "87.3 2/3",
/// or why there is none.
pub fn score_text(score: &ReportedScore) -> String {
    match (mean_with_spread(score), score.missing) {
        (Some(text), _) => format!("{text}{}", score.mark()),
        (None, Some(reason)) => missing_text(reason).to_string(),
        (None, None) => "-".to_string(),
    }
}

pub const LEGEND: &str = "scores: test metric in %, from the current final (refit on train+val); \
with several seeds the mean over seeds ± their standard deviation, each seed selected on its own; \
* = no final yet (best-validation grid point's test score); ! = final failed (same fallback); \
D = the run behind the score diverged (chance-level; a diverged grid point is never selected); \
k/n = only k of n seeds scored yet; mean log-odds marked (k/n) or (no top-1) are left out of r";

/// The hyperparameter names shown under the scores of a regime (union of keys).
pub fn hparam_names(regime: &RegimeAnalysis) -> Vec<String> {
    let mut names: Vec<String> = regime.scores.iter().flat_map(|s| s.selected.keys().cloned()).collect();
    names.sort();
    names.dedup();
    names
}

/// The column header of the models' x-axis value: "ImageNet", or "source top-1" when
/// pretrained models are in the sweep.
pub fn top1_header(analysis: &Analysis) -> &'static str {
    if analysis.x_axis == "ImageNet top-1" {
        "ImageNet"
    } else {
        "top-1"
    }
}

fn regime_table(regime: &RegimeAnalysis, top1: &str) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL);
    let mut header = vec![Cell::new("model"), Cell::new(top1)];
    header.extend(regime.datasets.iter().map(Cell::new));
    header.push(Cell::new("mean log-odds"));
    table.set_header(header);
    for model in &regime.models {
        let mut row = vec![
            Cell::new(&model.model),
            Cell::new(model.imagenet_top1.map_or_else(|| "-".to_string(), percent)).set_alignment(CellAlignment::Right),
        ];
        for dataset in &regime.datasets {
            let text = match regime.score(&model.model, dataset) {
                Some(s) if s.selected.is_empty() => score_text(s),
                Some(s) => format!("{}\n{}", score_text(s), hparams_short(&s.selected)),
                None => "-".to_string(),
            };
            row.push(Cell::new(text).set_alignment(CellAlignment::Right));
        }
        let mean = match (model.mean_log_odds, model.in_correlation) {
            (Some(m), true) => format!("{m:.3}"),
            (Some(m), false) if model.imagenet_top1.is_none() => format!("{m:.3} (no top-1)"),
            (Some(m), false) => format!("{m:.3} ({}/{})", model.datasets_scored, model.datasets_total),
            (None, _) => "-".to_string(),
        };
        row.push(Cell::new(mean).set_alignment(CellAlignment::Right));
        table.add_row(row);
    }
    let mut r_row = vec![Cell::new(format!("r vs {top1}")), Cell::new("")];
    for dc in &regime.per_dataset {
        r_row.push(
            Cell::new(dc.correlation.as_ref().map_or("-".to_string(), |c| format!("{:.2}", c.r)))
                .set_alignment(CellAlignment::Right),
        );
    }
    r_row.push(
        Cell::new(regime.correlation.as_ref().map_or("-".to_string(), |c| format!("{:.2}", c.r)))
            .set_alignment(CellAlignment::Right),
    );
    table.add_row(r_row);
    table
}

/// One line per regime: r, interval, n, fit.
pub fn correlation_line(regime: &RegimeAnalysis, level: f64) -> String {
    match &regime.correlation {
        Some(c) => format!(
            "{}: r = {} ({:.0}% bootstrap interval over {} models, {} resamples); fit: mean log-odds = {:.3} + {:.4} x top-1 (%)",
            regime.regime.name(),
            r_with_interval(c),
            level * 100.0,
            c.n,
            c.interval.map_or(0, |i| i.resamples),
            c.intercept,
            c.slope
        ),
        None => format!("{}: r not available", regime.regime.name()),
    }
}

/// Everything for the terminal (and tables.txt): a table per regime, the correlations,
/// the scratch-vs-fine-tune comparison, notes and the legend.
pub fn render_tables(analysis: &Analysis) -> String {
    let mut out = String::new();
    out.push_str(&format!("sweep {}\n", analysis.sweep));
    if analysis.regimes.is_empty() {
        out.push_str("no cells to report\n");
    }
    for regime in &analysis.regimes {
        out.push_str(&format!("\n== {} ==\n", regime.regime.name()));
        let names = hparam_names(regime);
        if !names.is_empty() {
            out.push_str(&format!("under each score: selected {}\n", names.join("/")));
        }
        out.push_str(&regime_table(regime, top1_header(analysis)).to_string());
        out.push('\n');
        out.push_str(&correlation_line(regime, analysis.settings.confidence_level));
        out.push('\n');
        for note in &regime.notes {
            out.push_str(&format!("note: {note}\n"));
        }
    }
    if !analysis.scratch_vs_finetune.is_empty() {
        out.push_str("\n== fine-tune vs scratch (per dataset, models with both) ==\n");
        let mut table = Table::new();
        table.load_preset(UTF8_FULL);
        table.set_header(vec![
            "dataset",
            "models",
            "fine-tune",
            "scratch",
            "difference (pp)",
            "Δ log-odds",
            "fine-tune better",
        ]);
        for c in &analysis.scratch_vs_finetune {
            let opt = |v: Option<f64>, f: fn(f64) -> String| v.map_or("-".to_string(), f);
            table.add_row(vec![
                Cell::new(&c.dataset),
                Cell::new(c.pairs.len()).set_alignment(CellAlignment::Right),
                Cell::new(opt(c.mean_finetune, percent)).set_alignment(CellAlignment::Right),
                Cell::new(opt(c.mean_scratch, percent)).set_alignment(CellAlignment::Right),
                Cell::new(opt(c.mean_difference, |d| format!("{:+.1}", d * 100.0))).set_alignment(CellAlignment::Right),
                Cell::new(opt(c.mean_log_odds_difference, |d| format!("{d:+.2}"))).set_alignment(CellAlignment::Right),
                Cell::new(format!("{}/{}", c.finetune_better, c.pairs.len())).set_alignment(CellAlignment::Right),
            ]);
        }
        out.push_str(&table.to_string());
        out.push('\n');
    }
    if let Some(study) = &analysis.pretraining {
        out.push_str("\n== pretraining settings (source accuracy vs transfer) ==\n");
        out.push_str(&pretraining_table(study).to_string());
        out.push('\n');
        for panel in &study.panels {
            let r = panel.correlation.as_ref().map_or("not available".to_string(), r_with_interval);
            out.push_str(&format!("{}: r of mean log-odds vs source accuracy = {r}\n", panel.regime.name()));
        }
    }
    for note in &analysis.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out.push_str(LEGEND);
    out.push('\n');
    out
}

/// The regimes a study's table has columns for: linear and finetune, then any other.
pub fn study_regimes(study: &RegularizerStudy) -> Vec<tsweep_proto::cell::Regime> {
    let mut regimes: Vec<_> =
        STUDY_REGIMES.into_iter().filter(|r| study.settings.iter().any(|s| s.transfer(*r).is_some())).collect();
    for s in &study.settings {
        for t in &s.transfer {
            if !regimes.contains(&t.regime) {
                regimes.push(t.regime);
            }
        }
    }
    regimes
}

/// A setting's transfer in one regime: "-0.412 (71.3%)", marked (k/n) while partial.
pub fn transfer_text(setting: &PretrainSetting, regime: tsweep_proto::cell::Regime) -> String {
    match setting.transfer(regime) {
        Some(t) => match (t.mean_log_odds, t.mean_accuracy) {
            (Some(lo), Some(acc)) if t.datasets_scored == t.datasets_total => format!("{lo:.3} ({})", percent(acc)),
            (Some(lo), Some(acc)) => {
                format!("{lo:.3} ({}) ({}/{})", percent(acc), t.datasets_scored, t.datasets_total)
            }
            _ => "pending".to_string(),
        },
        None => "-".to_string(),
    }
}

/// The source accuracy of a setting, or its status while it has none.
pub fn source_text(setting: &PretrainSetting) -> String {
    match setting.source_accuracy {
        Some(p) if setting.diverged => format!("{} D", percent(p)),
        Some(p) => percent(p),
        None => setting.status.name().to_string(),
    }
}

fn pretraining_table(study: &RegularizerStudy) -> Table {
    let regimes = study_regimes(study);
    let mut table = Table::new();
    table.load_preset(UTF8_FULL);
    let mut header = vec![Cell::new("setting"), Cell::new("model"), Cell::new("source"), Cell::new("source top-1")];
    header.extend(regimes.iter().map(|r| Cell::new(format!("{} mean log-odds (acc)", r.name()))));
    table.set_header(header);
    for s in &study.settings {
        let mut row = vec![
            Cell::new(&s.label),
            Cell::new(&s.model),
            Cell::new(&s.source),
            Cell::new(source_text(s)).set_alignment(CellAlignment::Right),
        ];
        row.extend(regimes.iter().map(|r| Cell::new(transfer_text(s, *r)).set_alignment(CellAlignment::Right)));
        table.add_row(row);
    }
    table
}
