//! From cell results to the answer: the selection rule, the paper's analysis (log-odds,
//! Pearson r with a bootstrap interval), tables, plots, a self-contained HTML page and
//! CSV/JSON exports. No libtorch, no Redis, no network. See docs/ARCHITECTURE.md
//! ("Analysis and reports").
//!
//! ```no_run
//! # fn main() -> Result<(), tsweep_report::ReportError> {
//! # let tasks: Vec<tsweep_proto::v1::TaskInfo> = Vec::new();
//! let input = tsweep_report::ReportInput::from_task_infos(&tasks)?;
//! print!("{}", tsweep_report::render_terminal_tables(&input));
//! let paths = tsweep_report::write_report(&input, std::path::Path::new("report"))?;
//! println!("{}", paths.index_html.display());
//! # Ok(()) }
//! ```

pub mod analysis;
pub mod export;
pub mod html;
pub mod input;
pub mod plots;
pub mod pretraining;
pub mod selection;
pub mod tables;

use std::path::{Path, PathBuf};

pub use analysis::{analyze, Analysis};
pub use input::{AnalysisSettings, CellRow, DatasetInfo, ModelInfo, ReportInput};
pub use selection::{select_best, GridPoint};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("task {task_id}: invalid spec_json: {source}")]
    Spec {
        task_id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("task {task_id}: unknown {field} {value:?}")]
    UnknownValue { task_id: String, field: &'static str, value: String },
    #[error("cannot encode {what} as json: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write csv: {0}")]
    Csv(String),
    #[error("cannot draw {figure}: {message}")]
    Plot { figure: String, message: String },
    #[error("embedded font {name} cannot be loaded")]
    Font { name: &'static str },
}

/// The files [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportPaths {
    pub out_dir: PathBuf,
    /// Self-contained page: tables, inline SVG figures, inline CSS, no external URLs.
    pub index_html: PathBuf,
    /// The terminal tables as plain text.
    pub tables_txt: PathBuf,
    /// Every cell (grid points and finals).
    pub results_csv: PathBuf,
    pub results_json: PathBuf,
    /// The analysis: reported scores, correlations, intervals, comparisons.
    pub analysis_json: PathBuf,
    /// Mean log-odds vs ImageNet top-1, one panel per regime (the paper's Figure 1).
    pub figure1_png: PathBuf,
    pub figure1_svg: PathBuf,
    /// One panel per dataset; None when the sweep lacks finetune or scratch scores.
    pub scratch_vs_finetune_png: Option<PathBuf>,
    pub scratch_vs_finetune_svg: Option<PathBuf>,
    /// The regularizer study (source accuracy vs transfer per pretraining setting, linear
    /// and fine-tuning side by side); None when the sweep has no pretrain cells.
    pub regularizers_png: Option<PathBuf>,
    pub regularizers_svg: Option<PathBuf>,
    /// The selected runs' training loss (`ReportInput::curves`); None without curves.
    pub training_curves_png: Option<PathBuf>,
    pub training_curves_svg: Option<PathBuf>,
}

impl ReportPaths {
    /// Every file written.
    pub fn files(&self) -> Vec<&Path> {
        let mut files = vec![
            self.index_html.as_path(),
            self.tables_txt.as_path(),
            self.results_csv.as_path(),
            self.results_json.as_path(),
            self.analysis_json.as_path(),
            self.figure1_png.as_path(),
            self.figure1_svg.as_path(),
        ];
        files.extend(self.scratch_vs_finetune_png.as_deref());
        files.extend(self.scratch_vs_finetune_svg.as_deref());
        files.extend(self.regularizers_png.as_deref());
        files.extend(self.regularizers_svg.as_deref());
        files.extend(self.training_curves_png.as_deref());
        files.extend(self.training_curves_svg.as_deref());
        files
    }
}

/// An optional figure's (SVG text, .svg path, .png path) as three options.
fn split<A, B, C>(figure: Option<(A, B, C)>) -> (Option<A>, Option<B>, Option<C>) {
    match figure {
        Some((a, b, c)) => (Some(a), Some(b), Some(c)),
        None => (None, None, None),
    }
}

/// Analyses `input` and writes every report file into `out_dir` (created if missing).
pub fn write_report(input: &ReportInput, out_dir: &Path) -> Result<ReportPaths, ReportError> {
    let analysis = analyze(input);
    std::fs::create_dir_all(out_dir).map_err(|source| ReportError::Io { path: out_dir.to_path_buf(), source })?;
    let write = |name: &str, bytes: &[u8]| -> Result<PathBuf, ReportError> {
        let path = out_dir.join(name);
        std::fs::write(&path, bytes).map_err(|source| ReportError::Io { path: path.clone(), source })?;
        Ok(path)
    };

    // Each figure as SVG text (inlined in index.html) and as .svg and .png files.
    let draw = |figure: plots::Figure| -> Result<(String, PathBuf, PathBuf), ReportError> {
        let (name, text) = (figure.name, figure.svg()?);
        let svg = write(&format!("{name}.svg"), text.as_bytes())?;
        let png = out_dir.join(format!("{name}.png"));
        figure.png(&png)?;
        Ok((text, svg, png))
    };
    let (figure1_svg_text, figure1_svg, figure1_png) = draw(plots::figure1(&analysis))?;
    let comparison =
        (!analysis.scratch_vs_finetune.is_empty()).then(|| draw(plots::scratch_vs_finetune(&analysis))).transpose()?;
    let regularizers = analysis.pretraining.as_ref().map(|study| draw(plots::regularizers(study))).transpose()?;
    let curves = plots::training_curves(input).map(draw).transpose()?;
    let (svf_svg_text, svf_svg, svf_png) = split(comparison);
    let (reg_svg_text, reg_svg, reg_png) = split(regularizers);
    let (curves_svg_text, curves_svg, curves_png) = split(curves);

    let tables_txt = write("tables.txt", tables::render_tables(&analysis).as_bytes())?;
    let results_csv = write("results.csv", export::results_csv(&input.cells)?.as_bytes())?;
    let results_json = write("results.json", export::results_json(input)?.as_bytes())?;
    let analysis_json = write("analysis.json", export::analysis_json(&analysis)?.as_bytes())?;
    let figures = html::PageFigures {
        figure1: &figure1_svg_text,
        comparison: svf_svg_text.as_deref(),
        regularizers: reg_svg_text.as_deref(),
        training_curves: curves_svg_text.as_deref(),
    };
    let page = html::render_page(&analysis, &input.cells, &figures);
    let index_html = write("index.html", page.as_bytes())?;

    Ok(ReportPaths {
        out_dir: out_dir.to_path_buf(),
        index_html,
        tables_txt,
        results_csv,
        results_json,
        analysis_json,
        figure1_png,
        figure1_svg,
        scratch_vs_finetune_png: svf_png,
        scratch_vs_finetune_svg: svf_svg,
        regularizers_png: reg_png,
        regularizers_svg: reg_svg,
        training_curves_png: curves_png,
        training_curves_svg: curves_svg,
    })
}

/// The per-regime tables, correlations and the scratch-vs-fine-tune summary, for a terminal.
pub fn render_terminal_tables(input: &ReportInput) -> String {
    tables::render_tables(&analyze(input))
}
