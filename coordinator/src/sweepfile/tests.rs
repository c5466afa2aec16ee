use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tsweep_proto::arch::Normalize;
use tsweep_proto::cell::{Metric, Regime, Stage, TrainSettings, ValPolicy};

use super::*;

const SMALL: &str = r#"
name = "small"
max_attempts = 4
allow_random_init = true

[defaults]
steps = 50
batch_size = 8
gpus = 0

[[models]]
name = "resnet18"
source = "builtin"
weights = "weights/resnet18.safetensors"
imagenet_top1 = 69.76
image_size = 32

[[models]]
name = "mobilenet_v2"
source = "builtin"
image_size = 32

[[datasets]]
name = "shapes"
format = "imagefolder"
path = "data/shapes"
val = { kind = "official" }

[[datasets]]
name = "cifar"
format = "cifar-binary"
path = "/abs/cifar"
metric = "mean_per_class"
num_classes = 10

[regimes.linear]
l2 = { logspace = [-6, 5, 45] }

[regimes.finetune]
lr = { logspace = [-4, -1, 7] }
weight_decay = { values = [0.0], logspace = [-6, -3, 7] }
steps = 100

[regimes.scratch]
lr = [0.01, 0.1]
weight_decay = [0.0001]
models = ["resnet18"]
"#;

fn expand(text: &str) -> Result<ExpandedSweep, SweepFileError> {
    parse_and_expand(text, "sweep.toml", Path::new("/base"), false)
}

/// 1-based line of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

fn error(text: &str) -> String {
    match expand(text) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn expands_every_regime_with_counts_and_filled_specs() {
    let sweep = expand(SMALL).unwrap();
    assert_eq!(sweep.name, "small");
    assert_eq!(sweep.settings.max_attempts, 4);
    let count = |r: Regime| sweep.cells.iter().filter(|c| c.spec.regime == r).count();
    assert_eq!(count(Regime::Linear), 2 * 2);
    assert_eq!(count(Regime::Finetune), 2 * 2 * 7 * 8);
    assert_eq!(count(Regime::Scratch), 2 * 2, "one model x 2 datasets x 2 lr");
    assert_eq!(
        sweep.stage_counts(),
        vec![
            StageCount { regime: Regime::Linear, stage: Stage::Grid, cells: 4, after_pretrain: 0 },
            StageCount { regime: Regime::Finetune, stage: Stage::Grid, cells: 224, after_pretrain: 0 },
            StageCount { regime: Regime::Finetune, stage: Stage::Final, cells: 4, after_pretrain: 0 },
            StageCount { regime: Regime::Scratch, stage: Stage::Grid, cells: 4, after_pretrain: 0 },
            StageCount { regime: Regime::Scratch, stage: Stage::Final, cells: 2, after_pretrain: 0 },
        ]
    );

    let linear = &sweep.cells[0].spec;
    assert_eq!(linear.regime, Regime::Linear);
    assert!(linear.hparams.is_empty());
    assert_eq!(linear.train.l2_path.len(), 45);
    assert_eq!(linear.train.steps, 50);
    assert_eq!(linear.gpus, 0);
    assert_eq!(linear.max_attempts, 4);
    assert_eq!(linear.stage, Stage::Grid);
    assert_eq!(linear.model.weights, Some(PathBuf::from("/base/weights/resnet18.safetensors")));
    assert_eq!(linear.model.arch, "resnet18");
    assert_eq!(linear.model.image_size, 32);
    assert_eq!(linear.dataset.path, PathBuf::from("/base/data/shapes"));
    assert_eq!(linear.dataset.val, ValPolicy::Official);
    assert_eq!(linear.dataset.metric, Metric::Top1);

    let finetune = sweep.cells.iter().find(|c| c.spec.regime == Regime::Finetune).unwrap();
    assert_eq!(finetune.spec.train.steps, 100);
    assert_eq!(finetune.spec.train.batch_size, 8);
    assert!(finetune.spec.train.l2_path.is_empty());
    assert_eq!(finetune.spec.hparams.keys().collect::<Vec<_>>(), vec!["lr", "weight_decay"]);
    assert_eq!(finetune.spec.hparams["lr"], 0.0001);
    assert_eq!(finetune.spec.hparams["weight_decay"], 0.0);

    let cifar = sweep.cells.iter().find(|c| c.spec.dataset.name == "cifar").unwrap();
    assert_eq!(cifar.spec.dataset.path, PathBuf::from("/abs/cifar"));
    assert_eq!(cifar.spec.dataset.metric, Metric::MeanPerClass);
    assert_eq!(cifar.spec.dataset.val, ValPolicy::HeldOut { fraction: 0.1, seed: 0 });

    let scratch = sweep.cells.iter().find(|c| c.spec.regime == Regime::Scratch).unwrap();
    assert_eq!(scratch.spec.model.weights, None, "scratch trains from random init");
    assert_eq!(scratch.spec.train.steps, 50);

    // Every spec survives the JSON the worker reads.
    for cell in &sweep.cells {
        let back = tsweep_proto::cell::CellSpec::from_json(&cell.spec.to_json().unwrap()).unwrap();
        assert_eq!(back, cell.spec);
    }
}

#[test]
fn a_file_that_sets_no_training_settings_gets_the_defaults_of_each_regime() {
    let bare = SMALL.replace("steps = 50\nbatch_size = 8\n", "").replace("steps = 100\n", "");
    let sweep = expand(&bare).unwrap();
    for regime in [Regime::Linear, Regime::Finetune, Regime::Scratch] {
        let cell = sweep.cells.iter().find(|c| c.spec.regime == regime).unwrap();
        let expected =
            TrainSettings { l2_path: cell.spec.train.l2_path.clone(), ..TrainSettings::defaults_for(regime) };
        assert_eq!(cell.spec.train, expected, "{regime}");
    }
    let steps = |r: Regime| TrainSettings::defaults_for(r).steps;
    assert_eq!((steps(Regime::Finetune), steps(Regime::Scratch)), (20_000, 40_000), "the paper's step counts");
}

#[test]
fn ids_are_unique_deterministic_and_32_hex_digits() {
    let a = expand(SMALL).unwrap();
    let b = expand(SMALL).unwrap();
    let ids_a: Vec<&str> = a.cells.iter().map(|c| c.id.as_str()).collect();
    let ids_b: Vec<&str> = b.cells.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids_a, ids_b);
    let unique: BTreeSet<&str> = ids_a.iter().copied().collect();
    assert_eq!(unique.len(), ids_a.len());
    assert!(ids_a
        .iter()
        .all(|id| id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())));
    for cell in &a.cells {
        assert_eq!(cell.id, task_id(&cell.spec));
    }
}

#[test]
fn extending_the_file_adds_exactly_the_new_cells() {
    let before: BTreeSet<String> = expand(SMALL).unwrap().cells.into_iter().map(|c| c.id).collect();
    let extended = SMALL.replace("lr = [0.01, 0.1]", "lr = [0.01, 0.1, 1.0]").replace(
        "[[datasets]]\nname = \"shapes\"",
        "[[models]]\nname = \"resnet34\"\nsource = \"builtin\"\n\n[[datasets]]\nname = \"shapes\"",
    );
    let after: BTreeSet<String> = expand(&extended).unwrap().cells.into_iter().map(|c| c.id).collect();
    assert!(before.is_subset(&after));
    // resnet34: linear 2 + finetune 2*56; scratch (resnet18 only): one more lr on 2 datasets.
    assert_eq!(after.len() - before.len(), 2 + 2 * 56 + 2);
}

#[test]
fn paths_settings_and_budget_do_not_change_ids() {
    let before: Vec<String> = expand(SMALL).unwrap().cells.into_iter().map(|c| c.id).collect();
    let moved = SMALL
        .replace("data/shapes", "elsewhere/shapes")
        .replace("max_attempts = 4", "max_attempts = 9")
        .replace("batch_size = 8", "batch_size = 16");
    let after: Vec<String> = expand(&moved).unwrap().cells.into_iter().map(|c| c.id).collect();
    assert_eq!(before, after);
    let other_base: Vec<String> = parse_and_expand(SMALL, "x.toml", Path::new("/other"), false)
        .unwrap()
        .cells
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(before, other_base);
}

#[test]
fn the_linear_l2_path_is_part_of_the_linear_cells_identity() {
    let before = expand(SMALL).unwrap();
    let after = expand(&SMALL.replace("logspace = [-6, 5, 45]", "logspace = [-6, 5, 23]")).unwrap();
    let linear_ids = |s: &ExpandedSweep| -> BTreeSet<String> {
        s.cells.iter().filter(|c| c.spec.regime == Regime::Linear).map(|c| c.id.clone()).collect()
    };
    assert!(linear_ids(&before).is_disjoint(&linear_ids(&after)));
}

#[test]
fn root_moves_relative_paths_only() {
    let sweep =
        expand(&SMALL.replace("allow_random_init = true", "allow_random_init = true\nroot = \"store\"")).unwrap();
    let linear = &sweep.cells[0].spec;
    assert_eq!(linear.dataset.path, PathBuf::from("/base/store/data/shapes"));
    assert_eq!(linear.model.weights, Some(PathBuf::from("/base/store/weights/resnet18.safetensors")));
    let cifar = sweep.cells.iter().find(|c| c.spec.dataset.name == "cifar").unwrap();
    assert_eq!(cifar.spec.dataset.path, PathBuf::from("/abs/cifar"));
    let sweep =
        expand(&SMALL.replace("allow_random_init = true", "allow_random_init = true\nroot = \"/mnt/x\"")).unwrap();
    assert_eq!(sweep.cells[0].spec.dataset.path, PathBuf::from("/mnt/x/data/shapes"));
}

#[test]
fn seeds_multiply_cells_and_final_ids_differ_from_grid_ids() {
    let sweep = expand(&SMALL.replace("max_attempts = 4", "max_attempts = 4\nseeds = [0, 1]")).unwrap();
    assert_eq!(sweep.cells.len(), 2 * (4 + 224 + 4));
    let grid = &sweep.cells.iter().find(|c| c.spec.regime == Regime::Finetune).unwrap();
    let last = final_cell(&grid.spec);
    assert_eq!(last.spec.stage, Stage::Final);
    assert_eq!(last.spec.hparams, grid.spec.hparams);
    assert_ne!(last.id, grid.id);
    assert_eq!(last.id, final_cell(&grid.spec).id);
}

#[test]
fn malformed_toml_names_file_line_and_column() {
    let text = "name = \"x\"\n[defaults]\nsteps = = 3\n";
    let msg = error(text);
    assert!(msg.starts_with("sweep.toml:3:"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
}

#[test]
fn unknown_keys_are_refused_with_their_line_and_field() {
    let msg = error(&SMALL.replace("steps = 100", "stepz = 100"));
    assert!(msg.contains("unknown field `stepz`"), "{msg}");
    let line = line_of(SMALL, "steps = 100");
    assert!(msg.starts_with(&format!("sweep.toml:{line}:1: regimes.finetune.stepz:")), "{msg}");
    let msg = error(&SMALL.replace("num_classes = 10", "num_classes = 10\nclases = 3"));
    let line = line_of(SMALL, "num_classes = 10") + 1;
    assert!(
        msg.contains("unknown field `clases`") && msg.contains(&format!("sweep.toml:{line}:1: datasets.clases")),
        "{msg}"
    );
    let msg = error(&format!("colour = 1\n{SMALL}"));
    assert!(msg.contains("unknown field `colour`") && msg.starts_with("sweep.toml:1:1"), "{msg}");
}

#[test]
fn wrong_types_name_the_field() {
    let msg = error(&SMALL.replace("batch_size = 8", "batch_size = \"eight\""));
    assert!(msg.starts_with("sweep.toml:8:14: defaults.batch_size:"), "{msg}");
    let msg = error(&SMALL.replace("lr = [0.01, 0.1]", "lr = \"fast\""));
    assert!(msg.contains("regimes.scratch.lr") && msg.contains("a list of numbers"), "{msg}");
}

#[test]
fn unknown_regime_names_it_and_the_valid_ones() {
    let msg = error(&SMALL.replace("[regimes.scratch]", "[regimes.scrach]"));
    assert!(msg.contains("scrach") && msg.contains("`linear`, `finetune`, `scratch`"), "{msg}");
    assert!(msg.starts_with("sweep.toml:"), "{msg}");
}

#[test]
fn bad_sweep_names_are_refused() {
    for bad in ["a/b", "a b", "", "..", "ünï"] {
        let msg = error(&SMALL.replace("name = \"small\"", &format!("name = {bad:?}")));
        assert!(msg.starts_with("sweep.toml:2:8: name: sweep name"), "{bad}: {msg}");
    }
    let msg = error(&SMALL.replace("name = \"mobilenet_v2\"", "name = \"mobile net\""));
    assert!(msg.contains("models.name: model name \"mobile net\" contains ' '"), "{msg}");
}

#[test]
fn empty_grids_are_refused() {
    let msg = error(&SMALL.replace("lr = [0.01, 0.1]", "lr = []"));
    let line = line_of(SMALL, "lr = [0.01, 0.1]");
    assert!(
        msg.starts_with(&format!("sweep.toml: the grid is empty: regimes.scratch.lr (line {line}) has no values")),
        "{msg}"
    );
    let no_regimes = SMALL.split("[regimes.linear]").next().unwrap().to_string();
    assert!(error(&no_regimes).contains("the grid is empty: the file has no [regimes.linear]"));
    let no_models = "name = \"x\"\n[regimes.scratch]\nlr = [0.1]\n";
    assert!(error(no_models).contains("the grid is empty: the file has no [[models]]"));
}

#[test]
fn over_a_million_cells_needs_allow_huge() {
    // 50,000 lr x 8 wd x 2 models x 2 datasets = 1.6M finetune cells.
    let huge = SMALL.replace("lr = { logspace = [-4, -1, 7] }", "lr = { logspace = [-4, -1, 50000] }");
    let msg = error(&huge);
    assert!(
        msg.starts_with("sweep.toml: the grid has 1600008 cells, more than the limit of 1000000; pass --allow-huge"),
        "{msg}"
    );
    // With allow_huge only the hard limit applies (not expanded here: too big for a unit test).
    // 1,000,000 lr x 8 wd x 2 models x 2 datasets x 2 seeds = 64M finetune cells.
    let beyond = SMALL
        .replace("lr = { logspace = [-4, -1, 7] }", "lr = { logspace = [-4, -1, 1000000] }")
        .replace("max_attempts = 4", "max_attempts = 4\nseeds = [0, 1]");
    let msg = parse_and_expand(&beyond, "sweep.toml", Path::new("/base"), true).unwrap_err().to_string();
    assert!(msg.contains("more than the limit of 50000000") && !msg.contains("--allow-huge"), "{msg}");
    assert_eq!(super::expand::check_size("f", 1_000_001, true), Ok(()));
    assert_eq!(super::expand::check_size("f", 1_000_000, false), Ok(()));
    assert!(super::expand::check_size("f", 1_000_001, false).is_err());
}

#[test]
fn semantic_errors_point_at_their_line() {
    let msg = error(&SMALL.replace("lr = [0.01, 0.1]", "lr = [0.01, -0.1]"));
    let line = line_of(SMALL, "lr = [0.01, 0.1]");
    assert!(msg.starts_with(&format!("sweep.toml:{line}:6: regimes.scratch.lr: value -0.1 is out of range")), "{msg}");
    let msg = error(&SMALL.replace("models = [\"resnet18\"]", "models = [\"resnet19\"]"));
    assert!(
        msg.contains("regimes.scratch.models: unknown model \"resnet19\"; defined: resnet18, mobilenet_v2"),
        "{msg}"
    );
    let msg = error(&SMALL.replace("l2 = { logspace", "lr = { logspace"));
    assert!(msg.contains("regimes.linear.lr: the linear regime has one axis"), "{msg}");
    let msg = error(&SMALL.replace("{ logspace = [-4, -1, 7] }", "{ logspace = [-4, -1, 7.5] }"));
    assert!(msg.contains("regimes.finetune.lr: logspace = [-4, -1, 7.5]"), "{msg}");
    let msg = error(&SMALL.replace("allow_random_init = true", ""));
    assert!(msg.contains("model \"mobilenet_v2\" has no `weights`, which the linear regime needs"), "{msg}");
    let msg = error(&SMALL.replace("name = \"shapes\"", "name = \"cifar\""));
    assert!(msg.contains("dataset \"cifar\" is defined twice"), "{msg}");
    let msg = error(
        &SMALL.replace("val = { kind = \"official\" }", "val = { kind = \"held_out\", fraction = 1.5, seed = 0 }"),
    );
    assert!(msg.contains("datasets.val.fraction: 1.5 is not a fraction"), "{msg}");
}

#[test]
fn the_plan_builds_any_cell_from_its_index_as_the_expansion_does() {
    let plan = parse_plan(SMALL, "sweep.toml", Path::new("/base"), false).unwrap();
    let sweep = plan.expand();
    assert_eq!(plan.total(), sweep.cells.len() as u64);
    assert_eq!(plan.stage_counts(), sweep.stage_counts(), "counted from the axes, the same as from the cells");
    for index in [0, 1, 3, 4, 5, 100, 227, 231] {
        assert_eq!(plan.cell(index).as_ref(), sweep.cells.get(index as usize), "cell {index}");
    }
    assert_eq!(plan.cell(plan.total()), None);
    let batch: Vec<Cell> = plan.cells(220..1000).collect();
    assert_eq!(batch.as_slice(), &sweep.cells[220..], "a range past the end is clamped");
    // The fingerprint follows the file and the directory its paths resolve against.
    let same = parse_plan(SMALL, "other-name.toml", Path::new("/base"), false).unwrap();
    let moved = parse_plan(SMALL, "sweep.toml", Path::new("/elsewhere"), false).unwrap();
    assert_eq!(SweepCells::fingerprint(&plan), SweepCells::fingerprint(&same));
    assert_ne!(SweepCells::fingerprint(&plan), SweepCells::fingerprint(&moved));
}

#[test]
fn submit_checks_architecture_sizes_and_metrics() {
    let msg = error(&SMALL.replace("name = \"mobilenet_v2\"", "name = \"mobilenet_v2\"\narch = \"resnet5000\""));
    assert!(
        msg.contains("models.arch: unknown builtin architecture \"resnet5000\"; builtin: resnet18, resnet34"),
        "{msg}"
    );
    let torchscript = SMALL.replace(
        "name = \"mobilenet_v2\"\nsource = \"builtin\"",
        "name = \"mobilenet_v2\"\nsource = \"torchscript\"\narch = \"anything\"\nweights = \"m.pt\"",
    );
    assert!(expand(&torchscript).is_ok(), "a torchscript module names its own architecture");
    let msg = error(&SMALL.replace("image_size = 32\n\n[[models]]", "image_size = 0\n\n[[models]]"));
    assert!(msg.contains("models.image_size: 0 is out of range: 16 to 1024 pixels"), "{msg}");
    let msg = error(&SMALL.replace("metric = \"mean_per_class\"", "metric = \"map11\""));
    assert!(msg.contains("datasets.metric: map11 (multi-label mean average precision) does not fit the single-label format cifar-binary"), "{msg}");
    let multilabel = SMALL.replace("format = \"imagefolder\"", "format = \"multilabel-list\"");
    let sweep = expand(&multilabel).unwrap();
    let voc = sweep.cells.iter().find(|c| c.spec.dataset.name == "shapes").unwrap();
    assert_eq!(voc.spec.dataset.metric, Metric::Map11, "multi-label lists default to 11-point mAP");
    let msg =
        error(&multilabel.replace("val = { kind = \"official\" }", "val = { kind = \"official\" }\nmetric = \"top1\""));
    assert!(
        msg.contains("top1 is a single-label metric and does not fit the multi-label format multilabel-list"),
        "{msg}"
    );
    let msg = error(&SMALL.replace("gpus = 0", "gpus = 17"));
    assert!(msg.contains("regimes.linear.gpus: 17 is out of range: 0 to 16"), "{msg}");
    let msg = error(&SMALL.replace("batch_size = 8", "batch_size = 0"));
    assert!(msg.contains("regimes.linear.batch_size: 0 is out of range: 1 to 65536"), "{msg}");
    let msg = error(&SMALL.replace("steps = 100\n", "steps = 10000001\n"));
    assert!(msg.contains("regimes.finetune.steps: 10000001 is more than 10000000"), "{msg}");
}

#[test]
fn a_cell_larger_than_a_worker_receives_is_refused_at_its_axis() {
    let long = SMALL.replace("l2 = { logspace = [-6, 5, 45] }", "l2 = { logspace = [-6, 5, 20000] }");
    let msg = error(&long);
    let line = line_of(SMALL, "l2 = { logspace = [-6, 5, 45] }");
    assert!(
        msg.starts_with(&format!(
            "sweep.toml:{line}:6: regimes.linear.l2: the L2 path has 20000 points: each cell would be"
        )),
        "{msg}"
    );
    assert!(msg.contains("more than the 64 KiB a cell may be"), "{msg}");
    let fits = SMALL.replace("l2 = { logspace = [-6, 5, 45] }", "l2 = { logspace = [-6, 5, 2000] }");
    assert!(expand(&fits).is_ok());
}

#[test]
fn attempt_limits_default_override_per_regime_and_are_checked_with_their_line() {
    let sweep = expand(&SMALL.replace("steps = 100\n", "steps = 100\nstall_timeout_s = 7200\nmax_runtime_s = 86400\n"))
        .unwrap();
    for cell in &sweep.cells {
        let train = &cell.spec.train;
        match cell.spec.regime {
            Regime::Finetune => assert_eq!((train.stall_timeout_s, train.max_runtime_s), (7200, Some(86400))),
            _ => assert_eq!((train.stall_timeout_s, train.max_runtime_s), (30 * 60, None), "the defaults"),
        }
    }
    let with_default = SMALL.replace("gpus = 0\n", "gpus = 0\nstall_timeout_s = 60\n");
    assert!(expand(&with_default).unwrap().cells.iter().all(|c| c.spec.train.stall_timeout_s == 60));

    let zero = SMALL.replace("steps = 100\n", "steps = 100\nstall_timeout_s = 0\n");
    let msg = error(&zero);
    let line = line_of(&zero, "stall_timeout_s = 0");
    assert!(msg.starts_with(&format!("sweep.toml:{line}:")), "{msg}");
    assert!(msg.contains("regimes.finetune.stall_timeout_s: 0 is out of range: 1 to 2592000 seconds"), "{msg}");
    let huge = SMALL.replace("steps = 100\n", "steps = 100\nmax_runtime_s = 99999999\n");
    let msg = error(&huge);
    assert!(msg.contains(&format!("sweep.toml:{}:", line_of(&huge, "max_runtime_s"))), "{msg}");
    assert!(msg.contains("regimes.finetune.max_runtime_s: 99999999 is out of range: 1 to 2592000 seconds"), "{msg}");
    let msg = error(&SMALL.replace("steps = 100\n", "steps = 100\nstall_timeout_s = \"30m\"\n"));
    assert!(msg.contains("stall_timeout_s"), "{msg}");
}

#[test]
fn precision_defaults_to_fp32_and_is_set_by_defaults_regime_and_model() {
    use tsweep_proto::cell::Precision;
    let precisions = |s: &ExpandedSweep, regime: Regime, model: &str| -> BTreeSet<Precision> {
        s.cells
            .iter()
            .filter(|c| c.spec.regime == regime && c.spec.model.name == model)
            .map(|c| c.spec.precision)
            .collect()
    };
    let plain = expand(SMALL).unwrap();
    assert!(plain.cells.iter().all(|c| c.spec.precision == Precision::Fp32));
    // fp32 specs serialise as before precision existed (no key), so stored JSON is unchanged
    assert!(!plain.cells[0].spec.to_json().unwrap().contains("precision"));

    let layered = SMALL
        .replace("gpus = 0", "gpus = 0\nprecision = \"bf16\"")
        .replace("lr = [0.01, 0.1]", "lr = [0.01, 0.1]\nprecision = \"fp16\"")
        .replace("name = \"mobilenet_v2\"", "name = \"mobilenet_v2\"\nprecision = \"fp32\"");
    let sweep = expand(&layered).unwrap();
    assert_eq!(precisions(&sweep, Regime::Linear, "resnet18"), BTreeSet::from([Precision::Bf16]), "[defaults]");
    assert_eq!(precisions(&sweep, Regime::Finetune, "resnet18"), BTreeSet::from([Precision::Bf16]));
    assert_eq!(precisions(&sweep, Regime::Scratch, "resnet18"), BTreeSet::from([Precision::Fp16]), "the regime's");
    for regime in [Regime::Linear, Regime::Finetune] {
        assert_eq!(precisions(&sweep, regime, "mobilenet_v2"), BTreeSet::from([Precision::Fp32]), "the model's wins");
    }
    for cell in &sweep.cells {
        let back = tsweep_proto::cell::CellSpec::from_json(&cell.spec.to_json().unwrap()).unwrap();
        assert_eq!(back, cell.spec);
    }
    let finals = final_cell(&sweep.cells.iter().find(|c| c.spec.regime == Regime::Scratch).unwrap().spec);
    assert_eq!(finals.spec.precision, Precision::Fp16, "a final refits in its winner's precision");
}

#[test]
fn precision_is_part_of_the_identity_and_fp32_ids_are_unchanged() {
    let fp32: Vec<String> = expand(SMALL).unwrap().cells.into_iter().map(|c| c.id).collect();
    let explicit: Vec<String> = expand(&SMALL.replace("gpus = 0", "gpus = 0\nprecision = \"fp32\""))
        .unwrap()
        .cells
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(fp32, explicit, "saying fp32 is the default");
    // the id of an fp32 cell is the hash of the identity it had before precision existed
    let cell = &expand(SMALL).unwrap().cells[0];
    assert!(!identity_json(&cell.spec).contains("precision"), "{}", identity_json(&cell.spec));
    let bf16 = expand(&SMALL.replace("gpus = 0", "gpus = 0\nprecision = \"bf16\"")).unwrap();
    assert!(identity_json(&bf16.cells[0].spec).ends_with(r#","precision":"bf16"}"#));
    let bf16: BTreeSet<String> = bf16.cells.into_iter().map(|c| c.id).collect();
    assert!(bf16.is_disjoint(&fp32.iter().cloned().collect()), "a bf16 cell is another cell");
}

#[test]
fn an_unknown_precision_names_its_line_and_field() {
    let msg = error(&SMALL.replace("gpus = 0", "gpus = 0\nprecision = \"fp8\""));
    let line = line_of(SMALL, "gpus = 0") + 1;
    assert!(msg.starts_with(&format!("sweep.toml:{line}:13: defaults.precision:")), "{msg}");
    assert!(msg.contains("fp8") && msg.contains("`fp32`, `bf16`, `fp16`"), "{msg}");
    let msg = error(&SMALL.replace("steps = 100", "steps = 100\nprecision = \"BF16\""));
    assert!(msg.contains("regimes.finetune.precision:"), "{msg}");
    let msg = error(&SMALL.replace("image_size = 32\n\n[[models]]", "image_size = 32\nprecision = 16\n\n[[models]]"));
    assert!(msg.contains("models.precision:"), "{msg}");
}

#[test]
fn normalisation_defaults_per_architecture_and_can_be_given() {
    let text = SMALL.replace(
        "[[datasets]]\nname = \"shapes\"",
        r#"[[models]]
name = "lite"
source = "builtin"
arch = "efficientnet_lite0"
image_size = 32

[[models]]
name = "custom"
source = "builtin"
arch = "resnet18"
image_size = 32
normalize = { mean = [0.5, 0.5, 0.5], std = [0.25, 0.5, 1.0] }

[[models]]
name = "script"
source = "torchscript"
arch = "efficientnet_lite0"
weights = "m.pt"

[[datasets]]
name = "shapes""#,
    );
    let sweep = expand(&text).unwrap();
    let normalize_of =
        |model: &str| sweep.cells.iter().find(|c| c.spec.model.name == model).map(|c| c.spec.model.normalize).unwrap();
    assert_eq!(normalize_of("resnet18"), Normalize::IMAGENET);
    assert_eq!(normalize_of("lite"), Normalize::TF_LITE);
    assert_eq!(normalize_of("custom"), Normalize { mean: [0.5, 0.5, 0.5], std: [0.25, 0.5, 1.0] });
    // a torchscript module is not the registry's architecture: ImageNet unless given
    assert_eq!(normalize_of("script"), Normalize::IMAGENET);
    // the model's name (not its spec) is its identity: ids of other models do not move
    let before: BTreeSet<String> = expand(SMALL).unwrap().cells.into_iter().map(|c| c.id).collect();
    let after: BTreeSet<String> = sweep.cells.iter().map(|c| c.id.clone()).collect();
    assert!(before.is_subset(&after));
    // it travels in the cell spec
    let lite = sweep.cells.iter().find(|c| c.spec.model.name == "lite").unwrap();
    let json = lite.spec.to_json().unwrap();
    assert_eq!(tsweep_proto::cell::CellSpec::from_json(&json).unwrap().model.normalize, Normalize::TF_LITE);
}

#[test]
fn bad_normalisation_names_its_line_and_field() {
    let with = |normalize: &str| {
        SMALL.replace("imagenet_top1 = 69.76", &format!("imagenet_top1 = 69.76\nnormalize = {normalize}"))
    };
    let line = line_of(SMALL, "imagenet_top1 = 69.76") + 1;
    for (normalize, expected) in [
        (
            "{ mean = [0.5, 0.5], std = [0.2, 0.2, 0.2] }",
            "models.normalize.mean: needs 3 values (red, green, blue), got 2",
        ),
        ("{ mean = [0.5, 0.5, 0.5], std = [0.2, 0.0, 0.2] }", "models.normalize.std: 0 is not a finite number > 0"),
        ("{ mean = [0.5, 0.5, 0.5], std = [0.2, -1, 0.2] }", "models.normalize.std: -1 is not a finite number > 0"),
        ("{ mean = [0.5, nan, 0.5], std = [0.2, 0.2, 0.2] }", "models.normalize.mean: NaN is not a finite number"),
        ("{ mean = [0.5, 0.5, 0.5], std = [0.2, 0.2, 0.2, 0.2] }", "models.normalize.std: needs 3 values"),
    ] {
        let msg = error(&with(normalize));
        assert!(msg.starts_with(&format!("sweep.toml:{line}:")), "{msg}");
        assert!(msg.contains(expected), "{normalize}: {msg}");
    }
    let msg = error(&with("{ mean = [0.5, 0.5, 0.5] }"));
    assert!(msg.contains(&format!("sweep.toml:{line}:")) && msg.contains("std"), "{msg}");
    let msg = error(&with("{ mean = [0.5, 0.5, 0.5], std = [1, 1, 1], scale = 2 }"));
    assert!(msg.contains("unknown field `scale`"), "{msg}");
}
