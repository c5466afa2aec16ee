//! From the parsed file to validated cells.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use tsweep_proto::arch::Normalize;
use tsweep_proto::cell::{
    DatasetFormat, DatasetSpec, FakeSettings, Metric, ModelSource, ModelSpec, Precision, Regime, TrainSettings,
    ValPolicy,
};
use tsweep_proto::limits::{MAX_CELL_SPEC_BYTES, MAX_SWEEPFILE_NAME_BYTES};

use super::axis::{Axis, AxisError};
use super::location::SourceText;
use super::plan::{file_fingerprint, GridModel, Points, RegimeGrid, SweepPlan};
use super::schema::{DatasetEntry, ModelEntry, NormalizeEntry, RegimeSection, Settings, SweepFile};
use super::{SweepFileError, SweepSettings, HARD_MAX_CELLS, MAX_CELLS};

mod pretrain;

use pretrain::PretrainPlan;

const DEFAULT_MAX_ATTEMPTS: u32 = 3;
const DEFAULT_IMAGE_SIZE: u32 = 224;
/// Longest sweep, model, dataset or pretrain entry name, and longest model name a
/// pretrain setting makes (they become Redis keys and directory names).
const MAX_NAME_LEN: usize = MAX_SWEEPFILE_NAME_BYTES;
/// Held-out validation when a dataset does not say: 10% of train, stratified, seed 0.
const DEFAULT_HELD_OUT_FRACTION: f64 = 0.1;
/// Model input resolutions a cell may ask for (`image_size`, `eval_resize`).
pub const IMAGE_SIZE_RANGE: std::ops::RangeInclusive<u32> = 16..=1024;
/// Training steps of one cell.
pub const MAX_STEPS: u64 = 10_000_000;
/// Images per training batch.
pub const MAX_BATCH_SIZE: u32 = 65_536;
/// GPUs one cell may ask for (one worker runs it: the GPUs of one machine).
pub const MAX_GPUS: u32 = 16;
/// Data-loader threads of one cell.
pub const MAX_LOADER_THREADS: u32 = 256;
/// L-BFGS iterations per L2 path point.
pub const MAX_LBFGS_ITER: u32 = 100_000;
/// Room left in the cell-size check for hyperparameter values and seeds of other lengths
/// than the representative cell's (each number's JSON is at most 24 characters).
const CELL_SIZE_SLACK: usize = 128;
/// Longest `stall_timeout_s` / `max_runtime_s`: 30 days.
pub const MAX_LIMIT_S: u64 = 30 * 24 * 3600;

pub(super) fn parse_plan(
    text: &str,
    file_name: &str,
    base_dir: &Path,
    allow_huge: bool,
) -> Result<SweepPlan, SweepFileError> {
    let src = SourceText { file: file_name, text };
    let file: SweepFile = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        SweepFileError::Invalid {
            location: src.locate_span(&span),
            field: src.field_at(span.start),
            message: e.message().trim().replace('\n', "; "),
        }
    })?;
    let root = match &file.root {
        Some(root) if root.is_absolute() => root.clone(),
        Some(root) => base_dir.join(root),
        None => base_dir.to_path_buf(),
    };
    let fingerprint = file_fingerprint(text, base_dir);
    Expander { src, base_dir: &root }.plan_sweep(file, allow_huge, fingerprint)
}

struct Expander<'a> {
    src: SourceText<'a>,
    base_dir: &'a Path,
}

/// One regime's resolved plan before cells are written out.
struct RegimePlan<'f> {
    regime: Regime,
    models: Vec<&'f ModelEntry>,
    datasets: Vec<&'f DatasetEntry>,
    /// The grid points (one, without hparams, for linear).
    points: Points,
    train: TrainSettings,
    /// `[defaults]` overridden by the regime's `precision`; a model's own wins over it.
    precision: Precision,
    gpus: u32,
    fake: Option<FakeSettings>,
    /// Where the linear regime's `l2` axis is written (for the cell-size check).
    l2_span: Option<Range<usize>>,
}

impl<'a> Expander<'a> {
    fn invalid(&self, span: &Range<usize>, field: &str, message: impl Into<String>) -> SweepFileError {
        SweepFileError::Invalid {
            location: self.src.locate_span(span),
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    fn empty(&self, reason: impl Into<String>) -> SweepFileError {
        SweepFileError::EmptyGrid { file: self.src.file.to_string(), reason: reason.into() }
    }

    fn check_name(&self, name: &Spanned<String>, field: &str, what: &str) -> Result<(), SweepFileError> {
        let value = name.get_ref();
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        let problem = if value.is_empty() {
            Some("is empty".to_string())
        } else if value.len() > MAX_NAME_LEN {
            Some(format!("is longer than {MAX_NAME_LEN} characters"))
        } else if value.chars().all(|c| c == '.') {
            Some("may not be only dots".to_string())
        } else {
            value.chars().find(|c| !allowed(*c)).map(|c| format!("contains {c:?}"))
        };
        match problem {
            Some(problem) => Err(self.invalid(
                &name.span(),
                field,
                format!("{what} {value:?} {problem}; use only letters, digits, '.', '_' and '-'"),
            )),
            None => Ok(()),
        }
    }

    fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    fn plan_sweep(&self, file: SweepFile, allow_huge: bool, fingerprint: String) -> Result<SweepPlan, SweepFileError> {
        self.check_name(&file.name, "name", "sweep name")?;
        let max_attempts = match &file.max_attempts {
            Some(m) if *m.get_ref() == 0 => {
                return Err(self.invalid(&m.span(), "max_attempts", "must be at least 1"));
            }
            Some(m) => *m.get_ref(),
            None => DEFAULT_MAX_ATTEMPTS,
        };
        let seeds = match &file.seeds {
            Some(s) if s.get_ref().is_empty() => {
                return Err(self.invalid(&s.span(), "seeds", "needs at least one seed (default [0])"));
            }
            Some(s) => {
                let unique: BTreeSet<u64> = s.get_ref().iter().copied().collect();
                if unique.len() != s.get_ref().len() {
                    return Err(self.invalid(&s.span(), "seeds", "lists a seed twice"));
                }
                s.get_ref().clone()
            }
            None => vec![0],
        };
        self.check_models(&file.models)?;
        self.check_datasets(&file.datasets)?;
        let name = file.name.get_ref().clone();
        let pretrains = self.pretrain_plan(&file, &name, max_attempts)?;

        let Some(regimes) = &file.regimes else {
            return Err(self.empty("the file has no [regimes.linear], [regimes.finetune] or [regimes.scratch] section"));
        };
        if file.models.is_empty() {
            return Err(self.empty("the file has no [[models]]"));
        }
        if file.datasets.is_empty() {
            return Err(self.empty("the file has no [[datasets]]"));
        }
        let sections = [
            (Regime::Linear, &regimes.get_ref().linear),
            (Regime::Finetune, &regimes.get_ref().finetune),
            (Regime::Scratch, &regimes.get_ref().scratch),
        ];
        let mut plans = Vec::new();
        for (regime, section) in sections {
            if let Some(section) = section {
                plans.push(self.plan(regime, section, &file, &pretrains)?);
            }
        }
        if plans.is_empty() {
            return Err(self.empty("[regimes] names no regime (linear, finetune, scratch)"));
        }

        let mut total: u64 = 0;
        for plan in &plans {
            for model in &plan.models {
                let variants = pretrains.variants(model.name.get_ref()).unwrap_or(1);
                let source = pretrains.source_of(model.name.get_ref());
                let datasets = plan.datasets.iter().filter(|d| Some(d.name.get_ref().as_str()) != source).count();
                let cells = [variants, datasets, seeds.len(), plan.points.count()]
                    .iter()
                    .fold(1u64, |acc, n| acc.saturating_mul(*n as u64));
                total = total.saturating_add(cells);
            }
        }
        if total == 0 {
            return Err(self.empty("no regime selects any (model, dataset) pair"));
        }
        check_size(self.src.file, total.saturating_add(pretrains.cell_count()), allow_huge)?;

        // Pretrain cells first: their dependents are written after them.
        let mut sweep = SweepPlan {
            name,
            settings: SweepSettings { max_attempts },
            seeds,
            pretrains: pretrains.cells(),
            grids: Vec::with_capacity(plans.len()),
            fingerprint,
        };
        // One grid per (regime, model entry): a pretrained model stands for one model per
        // pretrain setting and is not transferred to its own source dataset.
        for plan in plans {
            for entry in &plan.models {
                let model_name = entry.name.get_ref();
                let precision = entry.precision.unwrap_or(plan.precision);
                let models: Vec<GridModel> = match pretrains.transfer_models(model_name, plan.regime) {
                    Some(variants) => {
                        variants.into_iter().map(|(spec, after)| GridModel { spec, precision, after }).collect()
                    }
                    None => vec![GridModel { spec: self.model_spec(entry, plan.regime), precision, after: None }],
                };
                let source = pretrains.source_of(model_name);
                let grid = RegimeGrid {
                    regime: plan.regime,
                    models,
                    datasets: plan
                        .datasets
                        .iter()
                        .filter(|d| Some(d.name.get_ref().as_str()) != source)
                        .map(|d| self.dataset_spec(d))
                        .collect(),
                    points: plan.points.clone(),
                    train: plan.train.clone(),
                    gpus: plan.gpus,
                    fake: plan.fake.clone(),
                };
                self.check_cell_size(&sweep, &grid, entry, plan.l2_span.as_ref())?;
                sweep.grids.push(grid);
            }
        }
        Ok(sweep)
    }

    /// Refuses cells larger than [`MAX_CELL_SPEC_BYTES`] (a worker receives its cell in one
    /// gRPC message, and a `ListTasks` page carries up to 1,000 of them), measured on one
    /// cell per (model, dataset) with the largest seed: the other cells differ only in
    /// their numbers.
    fn check_cell_size(
        &self,
        sweep: &SweepPlan,
        grid: &RegimeGrid,
        entry: &ModelEntry,
        l2_span: Option<&Range<usize>>,
    ) -> Result<(), SweepFileError> {
        let seed = sweep.seeds.iter().copied().max().unwrap_or(0);
        for model in &grid.models {
            for dataset in &grid.datasets {
                let spec = sweep.spec(grid, model, dataset, seed, grid.points.get(0));
                let size = spec.to_json().map(|json| json.len()).unwrap_or(usize::MAX).saturating_add(CELL_SIZE_SLACK);
                if size <= MAX_CELL_SPEC_BYTES {
                    continue;
                }
                let prefix = format!("regimes.{}", grid.regime.name());
                let limit = format!(
                    "more than the {} KiB a cell may be (a worker receives its cell in one message)",
                    MAX_CELL_SPEC_BYTES / 1024
                );
                let path_bytes = serde_json::to_string(&grid.train.l2_path).map_or(0, |json| json.len());
                return Err(match l2_span {
                    Some(span) if path_bytes > MAX_CELL_SPEC_BYTES / 2 => self.invalid(
                        span,
                        &format!("{prefix}.l2"),
                        format!(
                            "the L2 path has {} points: each cell would be {size} bytes, {limit}; use fewer points",
                            grid.train.l2_path.len()
                        ),
                    ),
                    _ => self.invalid(
                        &entry.name.span(),
                        "models",
                        format!(
                            "the {} cell of model {:?} on dataset {:?} would be {size} bytes, {limit}",
                            grid.regime.name(),
                            model.spec.name,
                            dataset.name
                        ),
                    ),
                });
            }
        }
        Ok(())
    }

    fn check_models(&self, models: &[Spanned<ModelEntry>]) -> Result<(), SweepFileError> {
        let mut seen = BTreeSet::new();
        for entry in models {
            let model = entry.get_ref();
            self.check_name(&model.name, "models.name", "model name")?;
            if !seen.insert(model.name.get_ref().as_str()) {
                return Err(self.invalid(
                    &model.name.span(),
                    "models.name",
                    format!("model {:?} is defined twice", model.name.get_ref()),
                ));
            }
            if model.source.is_none() && model.pretrain.is_none() {
                return Err(self.invalid(
                    &entry.span(),
                    "models.source",
                    format!(
                        "model {:?} needs `source` (builtin or torchscript), or `pretrain` naming a [[pretrain]] entry",
                        model.name.get_ref()
                    ),
                ));
            }
            if model.source == Some(ModelSource::Torchscript) && model.weights.is_none() {
                return Err(self.invalid(
                    &entry.span(),
                    "models.weights",
                    format!("torchscript model {:?} needs `weights` (the .pt module file)", model.name.get_ref()),
                ));
            }
            if let Some(arch) = &model.arch {
                if arch.get_ref().trim().is_empty() {
                    return Err(self.invalid(&arch.span(), "models.arch", "is empty"));
                }
            }
            // (a model with `pretrain` takes its architecture from that entry)
            if model.source == Some(ModelSource::Builtin) && model.pretrain.is_none() {
                let (arch, span, field) = match &model.arch {
                    Some(arch) => (arch.get_ref(), arch.span(), "models.arch"),
                    None => (model.name.get_ref(), model.name.span(), "models.name"),
                };
                if tsweep_proto::arch::lookup(arch).is_none() {
                    let given = if model.arch.is_some() { "" } else { " (the model's name, as `arch` is not set)" };
                    return Err(self.invalid(
                        &span,
                        field,
                        format!(
                            "unknown builtin architecture {arch:?}{given}; builtin: {}; or use source = \"torchscript\"",
                            tsweep_proto::arch::known_names()
                        ),
                    ));
                }
            }
            if let Some(top1) = &model.imagenet_top1 {
                let v = *top1.get_ref();
                if !(v > 0.0 && v <= 100.0) {
                    return Err(self.invalid(
                        &top1.span(),
                        "models.imagenet_top1",
                        format!("{v} is not a percentage in (0, 100]"),
                    ));
                }
            }
            if let Some(size) = &model.image_size {
                if !IMAGE_SIZE_RANGE.contains(size.get_ref()) {
                    return Err(self.invalid(
                        &size.span(),
                        "models.image_size",
                        format!(
                            "{} is out of range: {} to {} pixels",
                            size.get_ref(),
                            IMAGE_SIZE_RANGE.start(),
                            IMAGE_SIZE_RANGE.end()
                        ),
                    ));
                }
            }
            if let Some(normalize) = &model.normalize {
                self.check_normalize(normalize.get_ref())?;
            }
        }
        Ok(())
    }

    /// Three finite means and three finite, positive standard deviations.
    fn check_normalize(&self, normalize: &NormalizeEntry) -> Result<(), SweepFileError> {
        for (values, field, positive) in
            [(&normalize.mean, "models.normalize.mean", false), (&normalize.std, "models.normalize.std", true)]
        {
            let v = values.get_ref();
            if v.len() != 3 {
                return Err(self.invalid(
                    &values.span(),
                    field,
                    format!("needs 3 values (red, green, blue), got {}", v.len()),
                ));
            }
            if let Some(bad) = v.iter().find(|x| !x.is_finite() || (positive && **x <= 0.0)) {
                let what = if positive { "a finite number > 0" } else { "a finite number" };
                return Err(self.invalid(&values.span(), field, format!("{bad} is not {what}")));
            }
        }
        Ok(())
    }

    fn check_datasets(&self, datasets: &[Spanned<DatasetEntry>]) -> Result<(), SweepFileError> {
        let mut seen = BTreeSet::new();
        for entry in datasets {
            let dataset = entry.get_ref();
            self.check_name(&dataset.name, "datasets.name", "dataset name")?;
            if !seen.insert(dataset.name.get_ref().as_str()) {
                return Err(self.invalid(
                    &dataset.name.span(),
                    "datasets.name",
                    format!("dataset {:?} is defined twice", dataset.name.get_ref()),
                ));
            }
            if let Some(n) = &dataset.num_classes {
                if *n.get_ref() < 2 {
                    return Err(self.invalid(&n.span(), "datasets.num_classes", "must be at least 2"));
                }
            }
            if let Some(metric) = &dataset.metric {
                if let Some(problem) = metric_misfit(dataset.format, *metric.get_ref()) {
                    return Err(self.invalid(&metric.span(), "datasets.metric", problem));
                }
            }
            if let Some(val) = &dataset.val {
                if let ValPolicy::HeldOut { fraction, .. } = val.get_ref() {
                    if !(*fraction > 0.0 && *fraction < 1.0) {
                        return Err(self.invalid(
                            &val.span(),
                            "datasets.val.fraction",
                            format!("{fraction} is not a fraction in (0, 1)"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn plan<'f>(
        &self,
        regime: Regime,
        section: &Spanned<RegimeSection>,
        file: &'f SweepFile,
        pretrains: &PretrainPlan,
    ) -> Result<RegimePlan<'f>, SweepFileError> {
        let prefix = format!("regimes.{}", regime.name());
        let body = section.get_ref();
        let models = self.filter(
            &body.models,
            file.models.iter().map(|m| (m.get_ref().name.get_ref().as_str(), m.get_ref())),
            &format!("{prefix}.models"),
            "model",
        )?;
        let datasets = self.filter(
            &body.datasets,
            file.datasets.iter().map(|d| (d.get_ref().name.get_ref().as_str(), d.get_ref())),
            &format!("{prefix}.datasets"),
            "dataset",
        )?;

        let points = self.points(regime, section, &prefix)?;
        let settings = file.defaults.overridden_by(&body.settings());
        let train = self.train_settings(regime, &settings, section.span(), &prefix, points.l2_path.clone())?;

        if matches!(regime, Regime::Linear | Regime::Finetune) && !file.allow_random_init {
            if let Some(model) = models.iter().find(|m| m.weights.is_none() && m.pretrain.is_none()) {
                return Err(self.invalid(
                    &model.name.span(),
                    "models.weights",
                    format!(
                        "model {:?} has no `weights`, which the {} regime needs (pretrained); set `weights`, leave the model out of this regime with `models = [...]`, or set allow_random_init = true for a test sweep",
                        model.name.get_ref(),
                        regime.name()
                    ),
                ));
            }
        }
        if let Some(resize) = &settings.eval_resize {
            if *resize.get_ref() > *IMAGE_SIZE_RANGE.end() * 2 {
                return Err(self.invalid(
                    &resize.span(),
                    &format!("{prefix}.eval_resize"),
                    format!("{} is out of range: at most {} pixels", resize.get_ref(), IMAGE_SIZE_RANGE.end() * 2),
                ));
            }
            if let Some(model) =
                models.iter().find(|m| pretrains.image_size(m).unwrap_or_else(|| image_size(m)) > *resize.get_ref())
            {
                return Err(self.invalid(
                    &resize.span(),
                    &format!("{prefix}.eval_resize"),
                    format!("{} is smaller than model {:?}'s image_size", resize.get_ref(), model.name.get_ref()),
                ));
            }
        }
        let gpus = self.gpus(&settings, &prefix)?;
        Ok(RegimePlan {
            regime,
            models,
            datasets,
            points,
            train,
            precision: settings.precision.unwrap_or_default(),
            gpus,
            fake: body.fake.clone().or_else(|| file.fake.clone()),
            l2_span: body.l2.as_ref().map(|l2| l2.span()),
        })
    }

    /// The GPUs a section's cells ask for (default 1), at most [`MAX_GPUS`].
    fn gpus(&self, settings: &Settings, prefix: &str) -> Result<u32, SweepFileError> {
        match &settings.gpus {
            Some(g) if *g.get_ref() > MAX_GPUS => Err(self.invalid(
                &g.span(),
                &format!("{prefix}.gpus"),
                format!("{} is out of range: 0 to {MAX_GPUS} (the GPUs of one worker)", g.get_ref()),
            )),
            Some(g) => Ok(*g.get_ref()),
            None => Ok(1),
        }
    }

    /// The entries a regime's `models = [...]` / `datasets = [...]` selects (all when absent).
    fn filter<'f, T>(
        &self,
        names: &Option<Vec<Spanned<String>>>,
        all: impl Iterator<Item = (&'f str, &'f T)>,
        field: &str,
        what: &str,
    ) -> Result<Vec<&'f T>, SweepFileError> {
        let all: Vec<(&str, &T)> = all.collect();
        let Some(names) = names else {
            return Ok(all.into_iter().map(|(_, t)| t).collect());
        };
        let mut selected = Vec::new();
        let mut seen = BTreeSet::new();
        for name in names {
            match all.iter().find(|(n, _)| *n == name.get_ref().as_str()) {
                Some((_, t)) if seen.insert(name.get_ref().as_str()) => selected.push(*t),
                Some(_) => {
                    return Err(self.invalid(
                        &name.span(),
                        field,
                        format!("{what} {:?} is listed twice", name.get_ref()),
                    ));
                }
                None => {
                    let known: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
                    return Err(self.invalid(
                        &name.span(),
                        field,
                        format!("unknown {what} {:?}; defined: {}", name.get_ref(), known.join(", ")),
                    ));
                }
            }
        }
        // Keep the file's order of models / datasets whatever the filter's order.
        selected.sort_by_key(|t| all.iter().position(|(_, a)| std::ptr::eq(*a, *t)));
        Ok(selected)
    }

    fn axis_points(
        &self,
        axis: &Spanned<Axis>,
        field: &str,
        check: impl Fn(f64) -> bool,
        requirement: &str,
    ) -> Result<Vec<f64>, SweepFileError> {
        let points = axis.get_ref().points().map_err(|e| match e {
            AxisError::Empty => {
                self.empty(format!("{field} (line {}) has no values", self.src.locate_span(&axis.span()).line))
            }
            other => self.invalid(&axis.span(), field, other.to_string()),
        })?;
        if let Some(bad) = points.iter().find(|v| !check(**v)) {
            return Err(self.invalid(&axis.span(), field, format!("value {bad} is out of range: {requirement}")));
        }
        Ok(points)
    }

    fn points(&self, regime: Regime, section: &Spanned<RegimeSection>, prefix: &str) -> Result<Points, SweepFileError> {
        let body = section.get_ref();
        let refuse = |axis: &Option<Spanned<Axis>>, key: &str, why: &str| match axis {
            Some(a) => Err(self.invalid(&a.span(), &format!("{prefix}.{key}"), why.to_string())),
            None => Ok(()),
        };
        match regime {
            Regime::Linear => {
                let why = "the linear regime has one axis, `l2` (the L2 path fitted inside each task)";
                refuse(&body.lr, "lr", why)?;
                refuse(&body.weight_decay, "weight_decay", why)?;
                let Some(l2) = &body.l2 else {
                    return Err(self.invalid(
                        &section.span(),
                        prefix,
                        "needs `l2`, e.g. l2 = { logspace = [-6, 5, 45] }",
                    ));
                };
                let path = self.axis_points(l2, &format!("{prefix}.l2"), |v| v > 0.0, "L2 strengths must be > 0")?;
                Ok(Points { lrs: Vec::new(), weight_decays: Vec::new(), l2_path: path })
            }
            // (Regime::ALL has no Unspecified: the file's sections are named.)
            Regime::Finetune | Regime::Scratch | Regime::Unspecified => {
                refuse(
                    &body.l2,
                    "l2",
                    "`l2` is the linear regime's axis; this regime's axes are `lr` and `weight_decay`",
                )?;
                let Some(lr) = &body.lr else {
                    return Err(self.invalid(
                        &section.span(),
                        prefix,
                        "needs `lr`, e.g. lr = { logspace = [-4, -1, 7] }",
                    ));
                };
                let lrs = self.axis_points(lr, &format!("{prefix}.lr"), |v| v > 0.0, "learning rates must be > 0")?;
                let wds = match &body.weight_decay {
                    Some(wd) => self.axis_points(
                        wd,
                        &format!("{prefix}.weight_decay"),
                        |v| v >= 0.0,
                        "weight decay must be >= 0",
                    )?,
                    None => vec![0.0],
                };
                Ok(Points { lrs, weight_decays: wds, l2_path: Vec::new() })
            }
        }
    }

    fn train_settings(
        &self,
        regime: Regime,
        settings: &Settings,
        section: Range<usize>,
        prefix: &str,
        l2_path: Vec<f64>,
    ) -> Result<TrainSettings, SweepFileError> {
        let defaults = TrainSettings::defaults_for(regime);
        let steps = settings.steps.as_ref().map_or(defaults.steps, |s| *s.get_ref());
        if steps == 0 && regime != Regime::Linear {
            let span = settings.steps.as_ref().map_or(section.clone(), |s| s.span());
            return Err(self.invalid(&span, &format!("{prefix}.steps"), "must be at least 1"));
        }
        if steps > MAX_STEPS {
            let span = settings.steps.as_ref().map_or(section.clone(), |s| s.span());
            return Err(self.invalid(&span, &format!("{prefix}.steps"), format!("{steps} is more than {MAX_STEPS}")));
        }
        let batch_size = settings.batch_size.as_ref().map_or(defaults.batch_size, |b| *b.get_ref());
        if batch_size == 0 || batch_size > MAX_BATCH_SIZE {
            let span = settings.batch_size.as_ref().map_or(section.clone(), |b| b.span());
            return Err(self.invalid(
                &span,
                &format!("{prefix}.batch_size"),
                format!("{batch_size} is out of range: 1 to {MAX_BATCH_SIZE}"),
            ));
        }
        let loader_threads = settings.loader_threads.as_ref().map_or(defaults.loader_threads, |t| *t.get_ref());
        if loader_threads == 0 || loader_threads > MAX_LOADER_THREADS {
            let span = settings.loader_threads.as_ref().map_or(section.clone(), |t| t.span());
            return Err(self.invalid(
                &span,
                &format!("{prefix}.loader_threads"),
                format!("{loader_threads} is out of range: 1 to {MAX_LOADER_THREADS}"),
            ));
        }
        let momentum = settings.momentum.as_ref().map_or(defaults.momentum, |m| *m.get_ref());
        if !(0.0..1.0).contains(&momentum) {
            let span = settings.momentum.as_ref().map_or(section.clone(), |m| m.span());
            return Err(self.invalid(&span, &format!("{prefix}.momentum"), format!("{momentum} is not in [0, 1)")));
        }
        let bn_momentum = match &settings.bn_momentum {
            Some(b) if !(*b.get_ref() > 0.0 && *b.get_ref() <= 1.0) => {
                return Err(self.invalid(
                    &b.span(),
                    &format!("{prefix}.bn_momentum"),
                    format!("{} is not in (0, 1]", b.get_ref()),
                ));
            }
            Some(b) => Some(*b.get_ref()),
            None => None,
        };
        let lbfgs_max_iter = settings.lbfgs_max_iter.as_ref().map_or(defaults.lbfgs_max_iter, |l| *l.get_ref());
        if lbfgs_max_iter == 0 || lbfgs_max_iter > MAX_LBFGS_ITER {
            let span = settings.lbfgs_max_iter.as_ref().map_or(section.clone(), |l| l.span());
            return Err(self.invalid(
                &span,
                &format!("{prefix}.lbfgs_max_iter"),
                format!("{lbfgs_max_iter} is out of range: 1 to {MAX_LBFGS_ITER}"),
            ));
        }
        let stall_timeout_s = settings.stall_timeout_s.as_ref().map_or(defaults.stall_timeout_s, |s| *s.get_ref());
        if !(1..=MAX_LIMIT_S).contains(&stall_timeout_s) {
            let span = settings.stall_timeout_s.as_ref().map_or(section.clone(), |s| s.span());
            return Err(self.invalid(
                &span,
                &format!("{prefix}.stall_timeout_s"),
                format!("{stall_timeout_s} is out of range: 1 to {MAX_LIMIT_S} seconds"),
            ));
        }
        let max_runtime_s = match &settings.max_runtime_s {
            Some(m) if !(1..=MAX_LIMIT_S).contains(m.get_ref()) => {
                return Err(self.invalid(
                    &m.span(),
                    &format!("{prefix}.max_runtime_s"),
                    format!("{} is out of range: 1 to {MAX_LIMIT_S} seconds", m.get_ref()),
                ));
            }
            Some(m) => Some(*m.get_ref()),
            None => None,
        };
        Ok(TrainSettings {
            steps,
            batch_size,
            momentum,
            nesterov: settings.nesterov.unwrap_or(defaults.nesterov),
            schedule: settings.schedule.unwrap_or(defaults.schedule),
            bn_momentum,
            eval_every: settings.eval_every.unwrap_or(defaults.eval_every),
            checkpoint_every: settings.checkpoint_every.unwrap_or(defaults.checkpoint_every),
            eval_resize: settings.eval_resize.as_ref().map(|r| *r.get_ref()),
            loader_threads,
            l2_path,
            lbfgs_max_iter,
            stall_timeout_s,
            max_runtime_s,
        })
    }

    fn model_spec(&self, model: &ModelEntry, regime: Regime) -> ModelSpec {
        // Scratch trains from random init: builtin backbones get no weights. A torchscript
        // module file is also its architecture, so it stays (the trainer re-initialises it).
        let source = model.source.unwrap_or(ModelSource::Builtin);
        let weights = match (regime, source) {
            (Regime::Scratch, ModelSource::Builtin) => None,
            _ => model.weights.as_deref().map(|w| self.resolve(w)),
        };
        let arch = model.arch.as_ref().map_or_else(|| model.name.get_ref().clone(), |a| a.get_ref().clone());
        let normalize = match &model.normalize {
            // check_normalize has made sure there are three of each
            Some(n) => Normalize { mean: triple(n.get_ref().mean.get_ref()), std: triple(n.get_ref().std.get_ref()) },
            None => Normalize::default_for(&arch.to_lowercase(), source == ModelSource::Builtin),
        };
        ModelSpec {
            name: model.name.get_ref().clone(),
            source,
            arch,
            weights,
            imagenet_top1: model.imagenet_top1.as_ref().map(|t| *t.get_ref()),
            image_size: image_size(model),
            normalize,
            pretrained: None,
        }
    }

    fn dataset_spec(&self, dataset: &DatasetEntry) -> DatasetSpec {
        DatasetSpec {
            name: dataset.name.get_ref().clone(),
            format: dataset.format,
            path: self.resolve(&dataset.path),
            metric: dataset.metric.as_ref().map_or_else(|| default_metric(dataset.format), |m| *m.get_ref()),
            val: dataset
                .val
                .as_ref()
                .map(|v| v.get_ref().clone())
                .unwrap_or(ValPolicy::HeldOut { fraction: DEFAULT_HELD_OUT_FRACTION, seed: 0 }),
            num_classes: dataset.num_classes.as_ref().map(|n| *n.get_ref()),
        }
    }
}

/// The first three values (a checked `normalize` list has exactly three).
fn triple(values: &[f64]) -> [f64; 3] {
    let at = |i: usize| values.get(i).copied().unwrap_or(f64::NAN);
    [at(0), at(1), at(2)]
}

/// A `[[models]]` entry's input resolution.
fn image_size(model: &ModelEntry) -> u32 {
    model.image_size.as_ref().map_or(DEFAULT_IMAGE_SIZE, |s| *s.get_ref())
}

/// The metric a dataset gets when it does not say: 11-point mAP for multi-label lists,
/// top-1 otherwise.
fn default_metric(format: DatasetFormat) -> Metric {
    match format {
        DatasetFormat::MultilabelList => Metric::Map11,
        _ => Metric::Top1,
    }
}

/// Why `metric` cannot score a dataset of `format`, if it cannot. A prepared directory
/// says whether it is multi-label only in its manifest, which the worker reads.
fn metric_misfit(format: DatasetFormat, metric: Metric) -> Option<String> {
    let single_label = matches!(format, DatasetFormat::Imagefolder | DatasetFormat::CifarBinary);
    let format_name = match format {
        DatasetFormat::Imagefolder => "imagefolder",
        DatasetFormat::CifarBinary => "cifar-binary",
        DatasetFormat::MultilabelList => "multilabel-list",
        DatasetFormat::Prepared => return None,
    };
    match (single_label, metric) {
        (true, Metric::Map11) => Some(format!(
            "map11 (multi-label mean average precision) does not fit the single-label format {format_name}; use top1 or mean_per_class"
        )),
        (false, Metric::Top1 | Metric::MeanPerClass) => Some(format!(
            "{} is a single-label metric and does not fit the multi-label format {format_name}; use map11",
            metric.name()
        )),
        _ => None,
    }
}

/// Refuses grids over [`MAX_CELLS`] without `allow_huge`, and over [`HARD_MAX_CELLS`] always.
pub(super) fn check_size(file: &str, cells: u64, allow_huge: bool) -> Result<(), SweepFileError> {
    let limit = if allow_huge { HARD_MAX_CELLS } else { MAX_CELLS };
    if cells > limit {
        return Err(SweepFileError::TooLarge { file: file.to_string(), cells, limit });
    }
    Ok(())
}
