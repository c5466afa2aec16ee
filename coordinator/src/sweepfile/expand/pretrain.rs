//! `[[pretrain]]` entries: source models trained from scratch on one of the file's
//! datasets, one `pretrain` cell per point of their axes (lr, weight_decay, steps,
//! label_smoothing, dropout, aux_head, bn_scale). A `[[models]]` entry with `pretrain =
//! "<name>"` stands for one model per point, named `<model>-<setting>`; its linear and
//! finetune cells wait for their pretrain cell (`Cell::after`), its scratch cells do not
//! (they ignore weights).

use std::collections::{BTreeMap, BTreeSet};

use toml::Spanned;
use tsweep_proto::arch;
use tsweep_proto::cell::{CellSpec, ModelSource, ModelSpec, PretrainedBy, Regime, Regularizers, Stage, TrainSettings};

use super::super::axis::Axis;
use super::super::schema::{ModelEntry, PretrainEntry, SweepFile};
use super::super::{task_id, Cell, SweepFileError};
use super::{Expander, IMAGE_SIZE_RANGE, MAX_NAME_LEN};

/// One grid point of a `[[pretrain]]` entry.
struct PretrainPoint {
    /// Its pretrain cell.
    cell: Cell,
    /// The model the trained backbone becomes in the transfer regimes.
    model: ModelSpec,
}

/// The points of one entry, under the name of the `[[models]]` entry that transfers them.
struct EntryPoints {
    source: String,
    image_size: u32,
    points: Vec<PretrainPoint>,
}

/// Every pretrain cell of a file.
#[derive(Default)]
pub(super) struct PretrainPlan {
    /// By the `[[models]]` entry that names the pretrain entry.
    by_model: BTreeMap<String, EntryPoints>,
    /// In file order: (model entry name or, for an entry no model names, the entry's name).
    order: Vec<String>,
}

impl PretrainPlan {
    /// Models that `model` stands for (None: a plain model).
    pub(super) fn variants(&self, model: &str) -> Option<usize> {
        self.by_model.get(model).map(|e| e.points.len())
    }

    /// The source dataset of a pretrained model.
    pub(super) fn source_of(&self, model: &str) -> Option<&str> {
        self.by_model.get(model).map(|e| e.source.as_str())
    }

    /// The input size of a pretrained model (its pretrain entry's).
    pub(super) fn image_size(&self, model: &ModelEntry) -> Option<u32> {
        self.by_model.get(model.name.get_ref().as_str()).map(|e| e.image_size)
    }

    pub(super) fn cell_count(&self) -> u64 {
        self.by_model.values().map(|e| e.points.len() as u64).sum()
    }

    /// Every pretrain cell, in file order.
    pub(super) fn cells(&self) -> Vec<Cell> {
        self.order
            .iter()
            .filter_map(|name| self.by_model.get(name))
            .flat_map(|e| e.points.iter().map(|p| p.cell.clone()))
            .collect()
    }

    /// The models `model` stands for in `regime`, each with the pretrain cell its cells wait
    /// for: linear and finetune load the trained backbone; scratch ignores weights, so its
    /// cells neither wait nor name the pretrain cell.
    pub(super) fn transfer_models(&self, model: &str, regime: Regime) -> Option<Vec<(ModelSpec, Option<String>)>> {
        let entry = self.by_model.get(model)?;
        Some(
            entry
                .points
                .iter()
                .map(|p| match regime {
                    Regime::Scratch | Regime::Unspecified => (ModelSpec { pretrained: None, ..p.model.clone() }, None),
                    Regime::Linear | Regime::Finetune => (p.model.clone(), Some(p.cell.id.clone())),
                })
                .collect(),
        )
    }
}

/// The axes of one entry, as validated points.
struct Axes {
    lrs: Vec<f64>,
    weight_decays: Vec<f64>,
    steps: Vec<u64>,
    label_smoothing: Vec<f64>,
    dropout: Vec<f64>,
    aux_head: Vec<f64>,
    bn_scale: Vec<bool>,
}

/// `lr0.1-s600`, then every regularizer that is not at its neutral value: `wd0.0001`,
/// `ls0.1`, `do0.5`, `aux0.4`, `nobnscale`. A function of the point alone, so adding
/// values to an axis never renames the models already there.
fn setting_label(lr: f64, weight_decay: f64, steps: u64, r: &Regularizers) -> String {
    let mut parts = vec![format!("lr{lr}"), format!("s{steps}")];
    if weight_decay != 0.0 {
        parts.push(format!("wd{weight_decay}"));
    }
    parts.extend(tsweep_report::pretraining::regularizer_parts(r));
    parts.join("-")
}

impl Expander<'_> {
    /// Validates the `[[pretrain]]` entries and the models that name them, and builds
    /// every pretrain cell.
    pub(super) fn pretrain_plan(
        &self,
        file: &SweepFile,
        sweep: &str,
        max_attempts: u32,
    ) -> Result<PretrainPlan, SweepFileError> {
        let mut entries: BTreeMap<&str, &Spanned<PretrainEntry>> = BTreeMap::new();
        for entry in &file.pretrain {
            let name = &entry.get_ref().name;
            self.check_name(name, "pretrain.name", "pretrain name")?;
            if entries.insert(name.get_ref().as_str(), entry).is_some() {
                return Err(self.invalid(
                    &name.span(),
                    "pretrain.name",
                    format!("pretrain entry {:?} is defined twice", name.get_ref()),
                ));
            }
        }
        // Which model transfers which entry (at most one each).
        let mut user_of: BTreeMap<&str, &str> = BTreeMap::new();
        for model in file.models.iter().map(Spanned::get_ref) {
            let Some(wanted) = &model.pretrain else { continue };
            let Some(_) = entries.get(wanted.get_ref().as_str()) else {
                let known: Vec<&str> = entries.keys().copied().collect();
                let defined =
                    if known.is_empty() { "the file has no [[pretrain]] entry".to_string() } else { known.join(", ") };
                return Err(self.invalid(
                    &wanted.span(),
                    "models.pretrain",
                    format!("unknown pretrain entry {:?}; defined: {defined}", wanted.get_ref()),
                ));
            };
            self.check_pretrained_model(model, wanted.get_ref())?;
            if let Some(other) = user_of.insert(wanted.get_ref().as_str(), model.name.get_ref().as_str()) {
                return Err(self.invalid(
                    &wanted.span(),
                    "models.pretrain",
                    format!("pretrain entry {:?} is already transferred by model {other:?}", wanted.get_ref()),
                ));
            }
        }

        let mut plan = PretrainPlan::default();
        for entry in &file.pretrain {
            let body = entry.get_ref();
            let entry_name = body.name.get_ref().as_str();
            let model_name = user_of.get(entry_name).copied().unwrap_or(entry_name);
            let points = self.entry_points(file, entry, model_name, sweep, max_attempts)?;
            let source = body.dataset.as_ref().map(|d| d.get_ref().clone()).unwrap_or_default();
            let image_size = points.first().map_or(0, |p| p.model.image_size);
            plan.order.push(model_name.to_string());
            plan.by_model.insert(model_name.to_string(), EntryPoints { source, image_size, points });
        }

        // Every model name (plain and derived) once.
        let mut names: BTreeSet<&str> = file
            .models
            .iter()
            .map(Spanned::get_ref)
            .filter(|m| m.pretrain.is_none())
            .map(|m| m.name.get_ref().as_str())
            .collect();
        for model_name in &plan.order {
            let Some(entry) = plan.by_model.get(model_name) else { continue };
            for point in &entry.points {
                if !names.insert(point.model.name.as_str()) {
                    let span = file
                        .models
                        .iter()
                        .find(|m| m.get_ref().name.get_ref() == model_name)
                        .map_or(0..0, |m| m.get_ref().name.span());
                    return Err(self.invalid(
                        &span,
                        "models.name",
                        format!("model {:?} is defined twice (a pretrain setting's model)", point.model.name),
                    ));
                }
            }
        }
        Ok(plan)
    }

    /// A model with `pretrain` takes its backbone from that entry: it sets none of the
    /// fields that would say otherwise.
    fn check_pretrained_model(&self, model: &ModelEntry, pretrain: &str) -> Result<(), SweepFileError> {
        let refuse = |field: &str, set: bool| {
            if set {
                Err(self.invalid(
                    &model.name.span(),
                    &format!("models.{field}"),
                    format!(
                        "model {:?} takes its backbone from pretrain entry {pretrain:?}: leave out `{field}`",
                        model.name.get_ref()
                    ),
                ))
            } else {
                Ok(())
            }
        };
        refuse("weights", model.weights.is_some())?;
        refuse("arch", model.arch.is_some())?;
        refuse("imagenet_top1", model.imagenet_top1.is_some())?;
        refuse("image_size", model.image_size.is_some())?;
        refuse("normalize", model.normalize.is_some())?;
        refuse("source", model.source.is_some_and(|s| s != ModelSource::Builtin))
    }

    fn entry_points(
        &self,
        file: &SweepFile,
        entry: &Spanned<PretrainEntry>,
        model_name: &str,
        sweep: &str,
        max_attempts: u32,
    ) -> Result<Vec<PretrainPoint>, SweepFileError> {
        let body = entry.get_ref();
        let entry_name = body.name.get_ref();
        let arch_name = body.arch.get_ref();
        let Some(arch) = arch::lookup(arch_name) else {
            return Err(self.invalid(
                &body.arch.span(),
                "pretrain.arch",
                format!("unknown architecture {arch_name:?}; builtin: {}", arch::known_names()),
            ));
        };
        let Some(dataset_name) = &body.dataset else {
            return Err(self.invalid(
                &entry.span(),
                "pretrain.dataset",
                format!(
                    "pretrain entry {entry_name:?} needs `dataset`, the name of the [[datasets]] entry it trains on (its source)"
                ),
            ));
        };
        let Some(dataset) =
            file.datasets.iter().map(Spanned::get_ref).find(|d| d.name.get_ref() == dataset_name.get_ref())
        else {
            let known: Vec<&str> = file.datasets.iter().map(|d| d.get_ref().name.get_ref().as_str()).collect();
            return Err(self.invalid(
                &dataset_name.span(),
                "pretrain.dataset",
                format!("unknown dataset {:?}; defined: {}", dataset_name.get_ref(), known.join(", ")),
            ));
        };
        let image_size = match &body.image_size {
            Some(size) if !IMAGE_SIZE_RANGE.contains(size.get_ref()) => {
                return Err(self.invalid(
                    &size.span(),
                    "pretrain.image_size",
                    format!(
                        "{} is out of range: {} to {} pixels",
                        size.get_ref(),
                        IMAGE_SIZE_RANGE.start(),
                        IMAGE_SIZE_RANGE.end()
                    ),
                ));
            }
            Some(size) => *size.get_ref(),
            None => arch.native_size,
        };
        let axes = self.axes(file, entry, arch)?;
        let settings = file.defaults.overridden_by(&body.settings());
        if let Some(resize) = &settings.eval_resize {
            if *resize.get_ref() > *IMAGE_SIZE_RANGE.end() * 2 {
                return Err(self.invalid(
                    &resize.span(),
                    "pretrain.eval_resize",
                    format!("{} is out of range: at most {} pixels", resize.get_ref(), IMAGE_SIZE_RANGE.end() * 2),
                ));
            }
            if *resize.get_ref() < image_size {
                return Err(self.invalid(
                    &resize.span(),
                    "pretrain.eval_resize",
                    format!(
                        "{} is smaller than pretrain entry {entry_name:?}'s image_size {image_size}",
                        resize.get_ref()
                    ),
                ));
            }
        }
        let dataset_spec = self.dataset_spec(dataset);
        let precision = settings.precision.unwrap_or_default();
        let gpus = self.gpus(&settings, "pretrain")?;
        let fake = body.fake.clone().or_else(|| file.fake.clone());
        let seed = body.seed.unwrap_or(0);
        let steps_span = body.steps.as_ref().map_or(entry.span(), |s| s.span());

        let mut points = Vec::new();
        for &steps in &axes.steps {
            let mut with_steps = file.defaults.overridden_by(&body.settings());
            with_steps.steps = Some(Spanned::new(steps_span.clone(), steps));
            let train = self.train_settings(Regime::Scratch, &with_steps, entry.span(), "pretrain", Vec::new())?;
            for &lr in &axes.lrs {
                for &weight_decay in &axes.weight_decays {
                    for &label_smoothing in &axes.label_smoothing {
                        for &dropout in &axes.dropout {
                            for &aux_weight in &axes.aux_head {
                                for &bn_scale in &axes.bn_scale {
                                    let regularizers = Regularizers { label_smoothing, dropout, aux_weight, bn_scale };
                                    let label = setting_label(lr, weight_decay, steps, &regularizers);
                                    let name = format!("{model_name}-{label}");
                                    if name.len() > MAX_NAME_LEN {
                                        return Err(self.invalid(
                                            &body.name.span(),
                                            "pretrain.name",
                                            format!(
                                                "model name {name:?} of a pretrain setting is longer than {MAX_NAME_LEN} characters; use a shorter model name"
                                            ),
                                        ));
                                    }
                                    let mut hparams = BTreeMap::from([
                                        ("lr".to_string(), lr),
                                        ("weight_decay".to_string(), weight_decay),
                                        ("steps".to_string(), steps as f64),
                                    ]);
                                    regularizers.write_hparams(&mut hparams);
                                    let model = ModelSpec {
                                        name,
                                        source: ModelSource::Builtin,
                                        arch: arch.name.to_string(),
                                        weights: None,
                                        imagenet_top1: None,
                                        image_size,
                                        normalize: arch.normalize,
                                        pretrained: None,
                                    };
                                    let spec = CellSpec {
                                        sweep: sweep.to_string(),
                                        stage: Stage::Pretrain,
                                        regime: Regime::Scratch,
                                        model: model.clone(),
                                        dataset: dataset_spec.clone(),
                                        hparams,
                                        train: train.clone(),
                                        seed,
                                        precision,
                                        gpus,
                                        max_attempts,
                                        fake: fake.clone(),
                                    };
                                    let cell = Cell { id: task_id(&spec), spec, after: None };
                                    let pretrained = PretrainedBy {
                                        task_id: cell.id.clone(),
                                        pretrain: entry_name.clone(),
                                        dataset: dataset_spec.name.clone(),
                                    };
                                    points.push(PretrainPoint {
                                        model: ModelSpec { pretrained: Some(pretrained), ..model },
                                        cell,
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(points)
    }

    fn axes(
        &self,
        file: &SweepFile,
        entry: &Spanned<PretrainEntry>,
        arch: &arch::Arch,
    ) -> Result<Axes, SweepFileError> {
        let body = entry.get_ref();
        let axis = |value: &Option<Spanned<Axis>>,
                    key: &str,
                    default: Option<f64>,
                    check: fn(f64) -> bool,
                    requirement: &str|
         -> Result<Vec<f64>, SweepFileError> {
            match (value, default) {
                (Some(a), _) => self.axis_points(a, &format!("pretrain.{key}"), check, requirement),
                (None, Some(d)) => Ok(vec![d]),
                (None, None) => Err(self.invalid(
                    &entry.span(),
                    &format!("pretrain.{key}"),
                    format!("pretrain entry {:?} needs `{key}`, e.g. {key} = 0.1", body.name.get_ref()),
                )),
            }
        };
        let lrs = axis(&body.lr, "lr", None, |v| v > 0.0, "learning rates must be > 0")?;
        let weight_decays =
            axis(&body.weight_decay, "weight_decay", Some(0.0), |v| v >= 0.0, "weight decay must be >= 0")?;
        let unit = |v: f64| (0.0..1.0).contains(&v);
        let label_smoothing =
            axis(&body.label_smoothing, "label_smoothing", Some(0.0), unit, "label smoothing must be in [0, 1)")?;
        let dropout = axis(&body.dropout, "dropout", Some(0.0), unit, "dropout must be in [0, 1)")?;
        let aux_head =
            axis(&body.aux_head, "aux_head", Some(0.0), |v| v >= 0.0, "the aux head's loss weight must be >= 0")?;
        if let (Some(a), false) = (&body.aux_head, arch.aux_head) {
            if aux_head.iter().any(|w| *w > 0.0) {
                let with: Vec<&str> = arch::ARCHS.iter().filter(|a| a.aux_head).map(|a| a.name).collect();
                return Err(self.invalid(
                    &a.span(),
                    "pretrain.aux_head",
                    format!("{} has no auxiliary classifier; `aux_head` needs one of: {}", arch.name, with.join(", ")),
                ));
            }
        }
        let bn_scale = match &body.bn_scale {
            Some(b) => b.get_ref().points().map_err(|_| {
                self.empty(format!("pretrain.bn_scale (line {}) has no values", self.src.locate_span(&b.span()).line))
            })?,
            None => vec![true],
        };
        let default_steps =
            file.defaults.steps.as_ref().map_or(TrainSettings::defaults_for(Regime::Scratch).steps, |s| *s.get_ref());
        let steps = axis(
            &body.steps,
            "steps",
            Some(default_steps as f64),
            |v| v >= 1.0 && v.fract() == 0.0 && v < 1e15,
            "steps must be whole numbers >= 1",
        )?;
        Ok(Axes {
            lrs,
            weight_decays,
            steps: steps.into_iter().map(|s| s as u64).collect(),
            label_smoothing,
            dropout,
            aux_head,
            bn_scale,
        })
    }
}
