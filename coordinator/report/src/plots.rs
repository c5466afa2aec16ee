//! Figures drawn with plotters, as PNG and SVG: the paper's Figure 1 (mean transfer
//! log-odds against ImageNet top-1, one panel per regime, a labelled point per model, the
//! least-squares line, r in the title), fine-tune vs scratch per dataset, and the
//! regularizer study (source accuracy against mean transfer log-odds per pretraining
//! setting, linear probe and fine-tuning side by side).
//!
//! Text is rendered with DejaVu Sans embedded in the binary (plotters' `ab_glyph`
//! feature), so the PNGs look the same on any machine and need no system fonts.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::analysis::{Analysis, RegimeAnalysis};
use crate::input::{loss_curve, ReportInput};
use crate::pretraining::RegularizerStudy;
use crate::tables::r_with_interval;
use crate::ReportError;
use tsweep_proto::cell::Regime;

const FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FONT: &str = "sans-serif";

/// Registers the embedded font once per process.
pub fn ensure_font() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    if *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()) {
        Ok(())
    } else {
        Err(ReportError::Font { name: "DejaVuSans.ttf" })
    }
}

const FIGURE1_PANEL: (u32, u32) = (600, 560);
const COMPARISON_PANEL: (u32, u32) = (440, 360);
const COMPARISON_COLUMNS: usize = 4;

const FINETUNE_COLOR: RGBColor = RGBColor(31, 119, 180);
const SCRATCH_COLOR: RGBColor = RGBColor(255, 127, 14);
const FIT_COLOR: RGBColor = RGBColor(214, 39, 40);
const EXCLUDED_COLOR: RGBColor = RGBColor(150, 150, 150);

#[derive(Debug, Clone)]
struct Point {
    label: String,
    x: f64,
    y: f64,
    /// In the correlation (filled) or not (hollow, grey).
    included: bool,
}

fn plot_error(figure: &str, e: impl std::fmt::Display) -> ReportError {
    ReportError::Plot { figure: figure.to_string(), message: e.to_string() }
}

fn padded_range(values: impl Iterator<Item = f64>, pad_low: f64, pad_high: f64, default: (f64, f64)) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return default;
    }
    let span = if hi - lo > 1e-9 { hi - lo } else { 1.0_f64.max(hi.abs() * 0.1) };
    (lo - span * pad_low, hi + span * pad_high)
}

/// Decimals that tell ticks apart over a span of about 7 ticks.
fn tick_decimals(span: f64) -> usize {
    let step = span / 7.0;
    if !step.is_finite() || step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil().clamp(0.0, 6.0) as usize
    }
}

/// Pixel boxes overlap area.
fn overlap(a: (i32, i32, i32, i32), b: (i32, i32, i32, i32)) -> i64 {
    let w = (a.0 + a.2).min(b.0 + b.2) - a.0.max(b.0);
    let h = (a.1 + a.3).min(b.1 + b.3) - a.1.max(b.1);
    if w > 0 && h > 0 {
        i64::from(w) * i64::from(h)
    } else {
        0
    }
}

/// Places point labels greedily (left to right) at the candidate offset that overlaps
/// other labels, markers and the plot's edge least, then draws them.
fn draw_labels<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    anchors: &[(String, (i32, i32))],
    plot_box: (i32, i32, i32, i32),
) -> Result<(), String> {
    let style = TextStyle::from((FONT, 12.0).into_font()).color(&BLACK);
    let base = area.get_base_pixel();
    let markers: Vec<(i32, i32, i32, i32)> = anchors.iter().map(|(_, (x, y))| (x - 6, y - 6, 12, 12)).collect();
    let mut order: Vec<usize> = (0..anchors.len()).collect();
    order.sort_by_key(|&i| (anchors[i].1 .0, anchors[i].1 .1));
    let mut placed: Vec<(i32, i32, i32, i32)> = Vec::new();
    for i in order {
        let (label, (px, py)) = &anchors[i];
        let (w, h) = area.estimate_text_size(label, &style).map_err(|e| e.to_string())?;
        let (w, h) = (w as i32, h as i32);
        let candidates = [
            (8, -h / 2),
            (6, -h - 2),
            (6, 3),
            (-w - 8, -h / 2),
            (-w - 6, -h - 2),
            (-w - 6, 3),
            (-w / 2, -h - 8),
            (-w / 2, 8),
        ];
        let mut best: Option<(i64, (i32, i32, i32, i32))> = None;
        for (dx, dy) in candidates {
            let rect = (px + dx, py + dy, w, h);
            let mut cost: i64 = placed.iter().map(|p| overlap(rect, *p)).sum::<i64>() * 4;
            cost += markers.iter().map(|m| overlap(rect, *m)).sum::<i64>() * 2;
            let inside = overlap(rect, plot_box);
            cost += (i64::from(w) * i64::from(h) - inside) * 8;
            if best.is_none_or(|(c, _)| cost < c) {
                best = Some((cost, rect));
            }
        }
        if let Some((_, rect)) = best {
            area.draw_text(label, &style, (rect.0 - base.0, rect.1 - base.1)).map_err(|e| e.to_string())?;
            placed.push(rect);
        }
    }
    Ok(())
}

struct ScatterPanel {
    title: String,
    x_desc: String,
    y_desc: &'static str,
    series: Vec<(String, RGBColor, Vec<Point>)>,
    /// (intercept, slope) of a line to draw.
    fit: Option<(f64, f64)>,
    /// Pairs of points joined by a thin line (the same model in two series).
    links: Vec<((f64, f64), (f64, f64))>,
    labels: bool,
    legend: bool,
    empty_message: Option<String>,
    /// Each series' points joined in order by a line (training curves), not markers.
    joined: bool,
}

impl ScatterPanel {
    /// A panel with nothing to plot yet, saying so.
    fn empty(title: &str, x_desc: String, message: &str) -> ScatterPanel {
        ScatterPanel {
            title: title.to_string(),
            x_desc,
            y_desc: "transfer accuracy (mean log-odds)",
            series: Vec::new(),
            fit: None,
            links: Vec::new(),
            labels: false,
            legend: false,
            empty_message: Some(message.to_string()),
            joined: false,
        }
    }
}

/// The corner of the plot where the legend covers the fewest points (lower right on a
/// tie): scratch points sit low on the right of a comparison panel, for one.
fn legend_corner(points: impl Iterator<Item = (f64, f64)>, x: (f64, f64), y: (f64, f64)) -> SeriesLabelPosition {
    let share = |v: f64, (lo, hi): (f64, f64)| if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
    // (right, upper) of lower right, upper right, lower left, upper left.
    const CORNERS: [(bool, bool); 4] = [(true, false), (true, true), (false, false), (false, true)];
    let mut covered = [0usize; 4];
    for (px, py) in points {
        let (u, v) = (share(px, x), share(py, y));
        for (count, (right, upper)) in covered.iter_mut().zip(CORNERS) {
            let across = if right { u > 0.6 } else { u < 0.4 };
            let up = if upper { v > 0.8 } else { v < 0.2 };
            *count += usize::from(across && up);
        }
    }
    let best = (0..4).min_by_key(|&i| covered[i]).unwrap_or(0);
    match CORNERS[best] {
        (true, false) => SeriesLabelPosition::LowerRight,
        (true, true) => SeriesLabelPosition::UpperRight,
        (false, false) => SeriesLabelPosition::LowerLeft,
        (false, true) => SeriesLabelPosition::UpperLeft,
    }
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &ScatterPanel) -> Result<(), String> {
    let all = || panel.series.iter().flat_map(|(_, _, pts)| pts.iter());
    let (x0, x1) = padded_range(all().map(|p| p.x), 0.08, 0.12, (60.0, 85.0));
    let (y0, y1) = padded_range(all().map(|p| p.y), 0.1, 0.1, (0.0, 1.0));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 19.0))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(58)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(panel.x_desc.as_str())
        .y_desc(panel.y_desc)
        .label_style((FONT, 13.0))
        .axis_desc_style((FONT, 15.0))
        .light_line_style(RGBColor(238, 238, 238))
        .bold_line_style(RGBColor(215, 215, 215))
        .x_labels(7)
        .y_labels(7)
        .x_label_formatter(&|x| format!("{x:.*}", tick_decimals(x1 - x0)))
        .y_label_formatter(&|y| format!("{y:.*}", tick_decimals(y1 - y0)))
        .draw()
        .map_err(|e| e.to_string())?;
    if let Some(message) = &panel.empty_message {
        let (xr, yr) = chart.plotting_area().get_pixel_range();
        let base = area.get_base_pixel();
        let style = TextStyle::from((FONT, 16.0).into_font()).color(&EXCLUDED_COLOR);
        area.draw_text(message, &style, (xr.start + 20 - base.0, (yr.start + yr.end) / 2 - base.1))
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    for (a, b) in &panel.links {
        chart
            .draw_series(LineSeries::new([*a, *b], RGBColor(190, 190, 190).stroke_width(1)))
            .map_err(|e| e.to_string())?;
    }
    if let Some((intercept, slope)) = panel.fit {
        // Clip the line to the plotting box.
        let (mut lo, mut hi) = (x0, x1);
        if slope.abs() > 1e-12 {
            let (xa, xb) = ((y0 - intercept) / slope, (y1 - intercept) / slope);
            lo = lo.max(xa.min(xb));
            hi = hi.min(xa.max(xb));
        }
        if lo < hi {
            chart
                .draw_series(LineSeries::new(
                    [(lo, intercept + slope * lo), (hi, intercept + slope * hi)],
                    FIT_COLOR.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label("least-squares fit")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], FIT_COLOR.stroke_width(2)));
        }
    }
    for (name, color, points) in &panel.series {
        let color = *color;
        if panel.joined {
            let line = LineSeries::new(points.iter().map(|p| (p.x, p.y)), color.stroke_width(2));
            let drawn = chart.draw_series(line).map_err(|e| e.to_string())?;
            if panel.legend {
                drawn
                    .label(name.as_str())
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
            }
            continue;
        }
        let excluded =
            points.iter().filter(|p| !p.included).map(|p| Circle::new((p.x, p.y), 5, EXCLUDED_COLOR.stroke_width(2)));
        chart.draw_series(excluded).map_err(|e| e.to_string())?;
        let included = points.iter().filter(|p| p.included).map(move |p| Circle::new((p.x, p.y), 5, color.filled()));
        let drawn = chart.draw_series(included).map_err(|e| e.to_string())?;
        if panel.legend {
            drawn.label(name.as_str()).legend(move |(x, y)| Circle::new((x + 9, y), 5, color.filled()));
        }
    }
    if panel.legend || panel.fit.is_some() {
        chart
            .configure_series_labels()
            .position(legend_corner(all().map(|p| (p.x, p.y)), (x0, x1), (y0, y1)))
            .label_font((FONT, 13.0))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    if panel.labels {
        let (xr, yr) = chart.plotting_area().get_pixel_range();
        let plot_box = (xr.start, yr.start, xr.end - xr.start, yr.end - yr.start);
        let anchors: Vec<(String, (i32, i32))> =
            all().map(|p| (p.label.clone(), chart.backend_coord(&(p.x, p.y)))).collect();
        draw_labels(area, &anchors, plot_box)?;
    }
    Ok(())
}

fn regime_panel(regime: &RegimeAnalysis, x_axis: &str) -> ScatterPanel {
    let points: Vec<Point> = regime
        .models
        .iter()
        .filter_map(|m| {
            Some(Point {
                label: m.model.clone(),
                x: m.imagenet_top1? * 100.0,
                y: m.mean_log_odds?,
                included: m.in_correlation,
            })
        })
        .collect();
    let title = match &regime.correlation {
        Some(c) => format!("{}: r = {}, n = {}", regime.regime.name(), r_with_interval(c), c.n),
        None => format!("{}: r not available", regime.regime.name()),
    };
    ScatterPanel {
        title,
        x_desc: format!("{x_axis} accuracy (%)"),
        y_desc: "transfer accuracy (mean log-odds)",
        empty_message: points.is_empty().then(|| "no model with a top-1 and a score yet".to_string()),
        joined: false,
        series: vec![("models".to_string(), FINETUNE_COLOR, points)],
        fit: regime.correlation.as_ref().map(|c| (c.intercept, c.slope)),
        links: Vec::new(),
        labels: true,
        legend: false,
    }
}

/// Figure 1 (`figure1.svg|png`): one panel per regime, transfer against ImageNet top-1.
pub fn figure1(analysis: &Analysis) -> Figure {
    let panels: Vec<ScatterPanel> = if analysis.regimes.is_empty() {
        vec![ScatterPanel::empty(
            "no results yet",
            format!("{} accuracy (%)", analysis.x_axis),
            "no cell has a score yet",
        )]
    } else {
        analysis.regimes.iter().map(|r| regime_panel(r, &analysis.x_axis)).collect()
    };
    Figure::in_a_row("figure1", FIGURE1_PANEL, panels)
}

fn comparison_panels(analysis: &Analysis) -> Vec<ScatterPanel> {
    analysis
        .scratch_vs_finetune
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let with_top1: Vec<_> = c.pairs.iter().filter_map(|p| Some((p, p.imagenet_top1? * 100.0))).collect();
            let series = |f: fn(&crate::analysis::PairedScores) -> f64| -> Vec<Point> {
                with_top1
                    .iter()
                    .map(|(p, x)| Point { label: p.model.clone(), x: *x, y: f(p) * 100.0, included: true })
                    .collect()
            };
            let title = match c.mean_difference {
                Some(d) => format!("{}: fine-tune {:+.1} pp", c.dataset, d * 100.0),
                None => format!("{}: no model with both", c.dataset),
            };
            ScatterPanel {
                title,
                x_desc: format!("{} (%)", analysis.x_axis),
                y_desc: "test accuracy (%)",
                empty_message: with_top1.is_empty().then(|| "no model with both scores and a top-1".to_string()),
                joined: false,
                series: vec![
                    ("fine-tune".to_string(), FINETUNE_COLOR, series(|p| p.finetune)),
                    ("scratch".to_string(), SCRATCH_COLOR, series(|p| p.scratch)),
                ],
                fit: None,
                links: with_top1.iter().map(|(p, x)| ((*x, p.finetune * 100.0), (*x, p.scratch * 100.0))).collect(),
                labels: false,
                legend: i == 0,
            }
        })
        .collect()
}

fn comparison_grid(n: usize) -> (usize, usize) {
    let cols = n.clamp(1, COMPARISON_COLUMNS);
    (n.div_ceil(cols).max(1), cols)
}

/// The scratch-vs-fine-tune figure (`scratch_vs_finetune.svg|png`), a panel per dataset.
pub fn scratch_vs_finetune(analysis: &Analysis) -> Figure {
    let panels = comparison_panels(analysis);
    let (rows, cols) = comparison_grid(panels.len());
    let size = (COMPARISON_PANEL.0 * cols as u32, COMPARISON_PANEL.1 * rows as u32);
    Figure { name: "scratch_vs_finetune", size, grid: (rows, cols), panels }
}

const REGULARIZER_PANEL: (u32, u32) = (620, 560);

/// One panel per regime of [`crate::pretraining::STUDY_REGIMES`] that has scores: a point per setting at its
/// source accuracy and its model's mean transfer log-odds, labelled with the setting;
/// hollow grey where the model is not scored on every dataset yet.
fn regularizer_panels(study: &RegularizerStudy) -> Vec<ScatterPanel> {
    study
        .panels
        .iter()
        .map(|panel| {
            let source = study.settings.first().map_or("source", |s| s.source.as_str());
            let points: Vec<Point> = study
                .settings
                .iter()
                .filter_map(|s| {
                    let t = s.transfer(panel.regime)?;
                    Some(Point {
                        label: s.label.clone(),
                        x: s.source_accuracy? * 100.0,
                        y: t.mean_log_odds?,
                        included: t.datasets_scored == t.datasets_total,
                    })
                })
                .collect();
            let name = match panel.regime {
                Regime::Linear => "linear probe",
                Regime::Finetune => "fine-tuning",
                Regime::Scratch => "scratch",
                Regime::Unspecified => "unspecified",
            };
            let title = match &panel.correlation {
                Some(c) => format!("{name}: r = {}, n = {}", r_with_interval(c), c.n),
                None => format!("{name}: {} settings", points.len()),
            };
            ScatterPanel {
                title,
                x_desc: format!("{source} test accuracy (%)"),
                y_desc: "transfer accuracy (mean log-odds)",
                empty_message: points.is_empty().then(|| "no setting with both scores yet".to_string()),
                joined: false,
                series: vec![("settings".to_string(), FINETUNE_COLOR, points)],
                fit: panel.correlation.as_ref().map(|c| (c.intercept, c.slope)),
                links: Vec::new(),
                labels: true,
                legend: false,
            }
        })
        .collect()
}

/// The regularizer figure (`regularizers.svg|png`), linear probe and fine-tuning side by side.
pub fn regularizers(study: &RegularizerStudy) -> Figure {
    let mut panels = regularizer_panels(study);
    if panels.is_empty() {
        panels.push(ScatterPanel::empty(
            "no transfer scores yet",
            "source test accuracy (%)".to_string(),
            "no transfer cell of a pretrained model has a score",
        ));
    }
    Figure::in_a_row("regularizers", REGULARIZER_PANEL, panels)
}

/// Series in a curve panel up to which it has a legend (beyond, the lines stay unnamed).
const MAX_CURVE_LEGEND: usize = 12;

/// A distinct colour per series of a curve panel.
fn series_color(i: usize) -> RGBColor {
    let RGBAColor(r, g, b, _) = Palette99::pick(i).to_rgba();
    RGBColor(r, g, b)
}

/// The selected runs' training curves (`training_curves.svg|png`): the training loss of
/// each current fine-tune and scratch final against its step, one panel per regime, a line
/// per model and dataset. None when no selected run has a curve.
pub fn training_curves(input: &ReportInput) -> Option<Figure> {
    let panels: Vec<ScatterPanel> = [Regime::Finetune, Regime::Scratch]
        .into_iter()
        .filter_map(|regime| {
            let series: Vec<(String, RGBColor, Vec<Point>)> = input
                .selected_runs()
                .filter(|c| c.regime == regime)
                .filter_map(|c| {
                    let curve = loss_curve(input.curves.get(&c.task_id)?);
                    (!curve.is_empty()).then(|| (format!("{}/{}", c.model, c.dataset), curve))
                })
                .enumerate()
                .map(|(i, (name, curve))| {
                    let points =
                        curve.into_iter().map(|(x, y)| Point { label: String::new(), x, y, included: true }).collect();
                    (name, series_color(i), points)
                })
                .collect();
            (!series.is_empty()).then(|| ScatterPanel {
                title: format!("{}: training loss of the selected runs", regime.name()),
                x_desc: "step".to_string(),
                y_desc: "training loss",
                legend: series.len() <= MAX_CURVE_LEGEND,
                series,
                fit: None,
                links: Vec::new(),
                labels: false,
                empty_message: None,
                joined: true,
            })
        })
        .collect();
    (!panels.is_empty()).then(|| Figure::in_a_row("training_curves", FIGURE1_PANEL, panels))
}

/// A figure of scatter panels on a grid, drawn to SVG text or to a PNG file.
pub struct Figure {
    /// The file stem: `figure1` is written as figure1.svg and figure1.png.
    pub name: &'static str,
    size: (u32, u32),
    /// (rows, columns) of panels.
    grid: (usize, usize),
    panels: Vec<ScatterPanel>,
}

impl Figure {
    fn in_a_row(name: &'static str, panel: (u32, u32), panels: Vec<ScatterPanel>) -> Figure {
        let size = (panel.0 * panels.len().max(1) as u32, panel.1);
        Figure { name, size, grid: (1, panels.len()), panels }
    }

    pub fn svg(&self) -> Result<String, ReportError> {
        ensure_font()?;
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, self.size).into_drawing_area();
            self.draw(root).map_err(|e| plot_error(&format!("{}.svg", self.name), e))?;
        }
        Ok(svg)
    }

    pub fn png(&self, path: &Path) -> Result<(), ReportError> {
        ensure_font()?;
        let root = BitMapBackend::new(path, self.size).into_drawing_area();
        self.draw(root).map_err(|e| plot_error(&path.display().to_string(), e))
    }

    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let areas = root.split_evenly(self.grid);
        for (area, panel) in areas.iter().zip(&self.panels) {
            draw_panel(area, panel)?;
        }
        root.present().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legend_goes_to_the_corner_with_fewest_points() {
        let (x, y) = ((70.0, 80.0), (0.0, 100.0));
        // Scratch points low on the right (as on a comparison panel) push it elsewhere.
        let low_right = [(71.0, 70.0), (77.0, 12.0), (79.0, 10.0)];
        assert!(matches!(legend_corner(low_right.into_iter(), x, y), SeriesLabelPosition::UpperRight));
        assert!(matches!(legend_corner(std::iter::empty(), x, y), SeriesLabelPosition::LowerRight));
        let everywhere = [(71.0, 90.0), (79.0, 90.0), (71.0, 5.0), (79.0, 5.0), (79.0, 6.0)];
        assert!(matches!(legend_corner(everywhere.into_iter(), x, y), SeriesLabelPosition::UpperRight));
    }
}
