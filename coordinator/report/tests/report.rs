//! Whole reports: every file is written, failed and diverged cells render and are marked,
//! the PNGs are real images, the exports hold every cell, and `from_task_infos` reads
//! what the coordinator's ListTasks returns.

mod common;

use std::collections::BTreeMap;

use common::*;
use tsweep_proto::cell::{
    CellSpec, DatasetFormat, DatasetSpec, Metric, ModelSource, ModelSpec, Regime, Stage, TrainSettings, ValPolicy,
};
use tsweep_proto::v1::{FailureClass, TaskInfo, TaskResult, TaskState};
use tsweep_report::{write_report, AnalysisSettings, CellRow, DatasetInfo, ModelInfo, ReportInput};

/// 5 models x 2 datasets x 3 regimes, with a failed final, a diverged grid point, a
/// diverged final, a group whose every grid point failed, and a pending final.
fn troubled_sweep() -> ReportInput {
    let models = ["resnet50", "densenet121", "mobilenet_v2", "inception_v3", "no_top1_net"];
    let top1 = [Some(76.1), Some(74.4), Some(71.8), Some(78.0), None];
    let datasets = ["cars", "flowers"];
    let mut cells: Vec<CellRow> = Vec::new();
    let mut id = 0;
    let mut next = || {
        id += 1;
        format!("task{id:03}")
    };
    for (mi, m) in models.iter().enumerate() {
        for (di, d) in datasets.iter().enumerate() {
            let base = 0.5 + 0.05 * mi as f64 + 0.1 * di as f64;
            let mut lin = linear(m, d, base);
            lin.task_id = next();
            cells.push(lin);
            for regime in [Regime::Finetune, Regime::Scratch] {
                let mut group = vec![
                    grid(&next(), m, d, regime, hp(0.1, 0.0), base + 0.01, base),
                    grid(&next(), m, d, regime, hp(0.01, 1e-5), base + 0.03, base + 0.02),
                ];
                let mut fin = cell(&next(), m, d, regime, Stage::Final);
                fin.is_current_final = true;
                fin.hparams = hp(0.01, 1e-5);
                fin.test_score = Some(base + 0.03);
                match (mi, di, regime) {
                    (0, 0, Regime::Finetune) => {
                        fin.status = TaskState::Failed;
                        fin.test_score = None;
                        fin.attempts = 3;
                        fin.error = "worker lost <gpu-7> & never came back".to_string();
                        fin.error_class = "retryable".to_string();
                    }
                    (1, 0, Regime::Finetune) => {
                        group[1].diverged = true;
                        group[1].val_score = Some(0.005);
                        group[1].test_score = Some(0.005);
                        fin.hparams = hp(0.1, 0.0);
                    }
                    (2, 1, Regime::Scratch) => {
                        fin.diverged = true;
                        fin.test_score = Some(0.01);
                    }
                    (3, 1, Regime::Scratch) => {
                        for g in &mut group {
                            g.status = TaskState::Failed;
                            g.val_score = None;
                            g.test_score = None;
                            g.error = "fatal: dataset missing".to_string();
                            g.error_class = "fatal".to_string();
                        }
                        cells.extend(group);
                        continue;
                    }
                    (2, 0, Regime::Finetune) => {
                        fin.status = TaskState::Pending;
                        fin.test_score = None;
                    }
                    _ => {}
                }
                cells.extend(group);
                cells.push(fin);
            }
        }
    }
    ReportInput {
        sweep: "troubled".to_string(),
        cells,
        models: models.iter().zip(top1).map(|(m, t)| ModelInfo { name: m.to_string(), imagenet_top1: t }).collect(),
        datasets: datasets.iter().map(|d| DatasetInfo { name: d.to_string(), metric: Metric::Top1 }).collect(),
        settings: AnalysisSettings { bootstrap_resamples: 500, ..AnalysisSettings::default() },
        curves: Default::default(),
    }
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&bytes[16..20]), be(&bytes[20..24])))
}

#[test]
fn report_with_failed_and_diverged_cells_renders_and_marks_them() {
    let input = troubled_sweep();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("report");
    let paths = write_report(&input, &out).expect("report written");
    for file in paths.files() {
        let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{} is empty or missing", file.display());
    }
    let names: Vec<String> =
        paths.files().iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
    for expected in [
        "index.html",
        "results.csv",
        "results.json",
        "analysis.json",
        "figure1.png",
        "figure1.svg",
        "scratch_vs_finetune.png",
        "scratch_vs_finetune.svg",
        "tables.txt",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }

    // PNGs are real, sized images (3 regime panels; 2 dataset panels).
    let fig1 = std::fs::read(&paths.figure1_png).expect("figure1.png");
    let (w, h) = png_size(&fig1).expect("figure1 is a png");
    assert!(w >= 1200 && h >= 400, "{w}x{h}");
    assert!(fig1.len() > 20_000, "figure1.png has drawn content: {} bytes", fig1.len());
    let cmp = std::fs::read(paths.scratch_vs_finetune_png.as_ref().expect("comparison written")).expect("png");
    assert!(png_size(&cmp).is_some_and(|(w, h)| w >= 600 && h >= 300));

    let html = std::fs::read_to_string(&paths.index_html).expect("index.html");
    // Self-contained: inline SVG figures and CSS, nothing fetched.
    assert!(html.contains("<svg") && html.contains("<style>"));
    assert!(
        !html.contains("<script")
            && !html.contains("src=\"http")
            && !html.contains("href=\"http")
            && !html.contains("<link")
    );
    // Failed and diverged cells are there, marked, with their errors (escaped).
    assert!(html.contains("Failed, cancelled and diverged cells"));
    assert!(html.contains("worker lost &lt;gpu-7&gt; &amp; never came back"), "error text escaped");
    assert!(html.contains("fatal: dataset missing"));
    assert!(html.contains("class=\"diverged\""));
    assert!(html.contains(">diverged<"), "a diverged cell is labelled");
    assert!(html.contains("best grid point (final failed)"));
    assert!(html.contains("best grid point (no final yet)"));
    assert!(html.contains("no_top1_net") && html.contains("no ImageNet top-1"));
    for regime in ["linear", "finetune", "scratch"] {
        assert!(html.contains(&format!("id=\"{regime}\"")), "{regime} section");
    }

    let tables = std::fs::read_to_string(&paths.tables_txt).expect("tables.txt");
    assert!(tables.contains("== finetune =="));
    assert!(tables.contains("!"), "failed final marked");
    assert!(tables.contains("*"), "pending final marked");
    assert!(tables.contains(" D"), "diverged final marked");
    assert!(tables.contains("failed"), "a group with no score says failed");
    assert_eq!(tables, tsweep_report::render_terminal_tables(&input));

    // Every cell in the CSV and JSON, with status, attempts, worker.
    let csv = std::fs::read_to_string(&paths.results_csv).expect("csv");
    let mut lines = csv.lines();
    let header = lines.next().unwrap_or_default();
    for column in [
        "task_id",
        "status",
        "attempts",
        "val_score",
        "test_score",
        "duration_s",
        "worker",
        "hparam_lr",
        "hparam_weight_decay",
        "selected_l2",
        "current_final",
    ] {
        assert!(header.split(',').any(|h| h == column), "{column} in {header}");
    }
    assert_eq!(lines.count(), input.cells.len());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&paths.results_json).expect("json")).expect("valid json");
    let cells = json["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), input.cells.len());
    assert!(cells.iter().any(|c| c["status"] == "failed" && c["attempts"] == 3));
    assert!(cells.iter().any(|c| c["diverged"] == true));
    assert!(cells.iter().any(|c| c["stage"] == "final") && cells.iter().any(|c| c["stage"] == "grid"));
    let analysis: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&paths.analysis_json).expect("json")).expect("valid json");
    assert_eq!(analysis["regimes"].as_array().map(Vec::len), Some(3));
}

#[test]
fn csv_quotes_fields_with_commas_quotes_and_newlines() {
    let mut input = troubled_sweep();
    input.cells[0].error = "line one, \"two\"\nthree".to_string();
    let csv = tsweep_report::export::results_csv(&input.cells).unwrap();
    assert!(csv.contains("\"line one, \"\"two\"\"\nthree\""));
}

#[test]
fn empty_and_linear_only_sweeps_still_render() {
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = ReportInput {
        sweep: "empty".to_string(),
        cells: vec![],
        models: vec![],
        datasets: vec![],
        settings: AnalysisSettings::default(),
        curves: Default::default(),
    };
    let paths = write_report(&empty, &dir.path().join("empty")).expect("empty report");
    assert!(paths.scratch_vs_finetune_png.is_none());
    assert!(png_size(&std::fs::read(&paths.figure1_png).expect("png")).is_some());
    assert!(tsweep_report::render_terminal_tables(&empty).contains("no cells to report"));

    let names = model_names();
    let models: Vec<(&str, Option<f64>)> = names.iter().zip(TOP1).map(|(n, t)| (n.as_str(), Some(t))).collect();
    let mut linear_only =
        linear_input(&models, &["a", "b", "c"], |m, d| sigmoid(0.2 * d as f64 + 0.08 * (TOP1[m] - 76.0)));
    linear_only.settings.bootstrap_resamples = 200;
    let paths = write_report(&linear_only, &dir.path().join("linear")).expect("linear report");
    let html = std::fs::read_to_string(&paths.index_html).expect("html");
    assert!(html.contains("<b>1.000</b>"), "r = 1 shown in the summary");
}

fn spec(
    model: &str,
    top1: Option<f64>,
    dataset: &str,
    regime: Regime,
    stage: Stage,
    hparams: BTreeMap<String, f64>,
) -> CellSpec {
    CellSpec {
        sweep: "kb".to_string(),
        stage,
        regime,
        model: ModelSpec {
            name: model.to_string(),
            source: ModelSource::Builtin,
            arch: "resnet50".to_string(),
            weights: None,
            imagenet_top1: top1,
            image_size: 224,
            pretrained: None,
            normalize: Default::default(),
        },
        dataset: DatasetSpec {
            name: dataset.to_string(),
            format: DatasetFormat::Imagefolder,
            path: "/data/x".into(),
            metric: Metric::MeanPerClass,
            val: ValPolicy::Official,
            num_classes: None,
        },
        hparams,
        train: TrainSettings {
            steps: 10,
            batch_size: 2,
            checkpoint_every: 0,
            loader_threads: 1,
            lbfgs_max_iter: 10,
            ..TrainSettings::defaults_for(regime)
        },
        seed: 0,
        precision: Default::default(),
        gpus: 1,
        max_attempts: 3,
        fake: None,
    }
}

fn task(id: &str, state: &str, spec: &CellSpec, val: Option<f64>, test: Option<f64>) -> TaskInfo {
    TaskInfo {
        task_id: id.to_string(),
        sweep: spec.sweep.clone(),
        state: TaskState::from_name(state).expect("state").into(),
        model: spec.model.name.clone(),
        dataset: spec.dataset.name.clone(),
        regime: spec.regime.into(),
        stage: spec.stage.into(),
        hparams: spec.hparams.clone().into_iter().collect(),
        attempt: 1,
        worker: "w1".to_string(),
        started_unix_ms: 1_000,
        finished_unix_ms: 61_000,
        result: (state == "succeeded").then(|| TaskResult {
            metric: Metric::Unspecified.into(),
            val_score: val,
            test_score: test,
            ..Default::default()
        }),
        spec_json: spec.to_json().expect("spec json"),
        ..Default::default()
    }
}

#[test]
fn from_task_infos_reads_list_tasks_output() {
    let a = spec("r50", Some(76.1), "pets", Regime::Finetune, Stage::Grid, hp(0.1, 0.0));
    let b = spec("r50", Some(76.1), "pets", Regime::Finetune, Stage::Grid, hp(0.01, 0.0));
    let fin_old = spec("r50", Some(76.1), "pets", Regime::Finetune, Stage::Final, hp(0.1, 0.0));
    let fin_new = spec("r50", Some(76.1), "pets", Regime::Finetune, Stage::Final, hp(0.01, 0.0));
    let lin = spec("r50", Some(76.1), "pets", Regime::Linear, Stage::Grid, BTreeMap::new());
    let mut failed =
        task("t6", "failed", &spec("vgg", None, "pets", Regime::Scratch, Stage::Grid, hp(1.0, 0.0)), None, None);
    failed.error = "cuda oom".to_string();
    failed.error_class = FailureClass::Retryable as i32;
    failed.attempt = 3;
    let mut lin_task = task("t5", "succeeded", &lin, Some(0.9), Some(0.88));
    if let Some(r) = lin_task.result.as_mut() {
        r.selected.insert("l2".to_string(), 0.01);
        r.metric = Metric::MeanPerClass.into();
        r.duration_s = 12.5;
    }
    // What the store answers: each grid point's selection group, and which final of it
    // is current (the grid was extended with a better point: t4 replaced t3).
    let group = "r50/pets/finetune/0";
    let in_group = |mut t: TaskInfo, current: bool| {
        t.selection_group = group.to_string();
        t.current_final = current;
        t
    };
    let tasks = vec![
        in_group(task("t1", "succeeded", &a, Some(0.70), Some(0.71)), false),
        in_group(task("t2", "succeeded", &b, Some(0.80), Some(0.79)), false),
        in_group(task("t3", "succeeded", &fin_old, None, Some(0.72)), false),
        in_group(task("t4", "running", &fin_new, None, None), true),
        lin_task,
        failed,
    ];
    let input = ReportInput::from_task_infos(&tasks).expect("input");
    assert_eq!(input.sweep, "kb");
    assert_eq!(input.cells.len(), 6);
    assert_eq!(
        input.models,
        vec![
            ModelInfo { name: "r50".into(), imagenet_top1: Some(76.1) },
            ModelInfo { name: "vgg".into(), imagenet_top1: None }
        ]
    );
    assert_eq!(input.datasets, vec![DatasetInfo { name: "pets".into(), metric: Metric::MeanPerClass }]);
    let by_id = |id: &str| input.cells.iter().find(|c| c.task_id == id).expect("cell");
    assert!(!by_id("t3").is_current_final, "the store says the old final is not current");
    assert!(by_id("t4").is_current_final);
    assert_eq!(by_id("t1").selection_group, group);
    assert_eq!(by_id("t5").selection_group, "", "linear cells have no selection group");
    assert_eq!(by_id("t1").duration_s, Some(60.0), "wall time when the result has none");
    assert_eq!(by_id("t5").duration_s, Some(12.5));
    assert_eq!(by_id("t5").selected.get("l2"), Some(&0.01));
    assert_eq!(by_id("t6").status, TaskState::Failed);
    assert_eq!((by_id("t6").error_class.as_str(), by_id("t6").attempts), ("retryable", 3));
    assert_eq!(by_id("t2").metric, Metric::MeanPerClass, "metric from the spec when the result has none");

    let analysis = tsweep_report::analyze(&input);
    let finetune = analysis.regime(Regime::Finetune).expect("finetune");
    let s = finetune.score("r50", "pets").expect("score");
    assert_eq!(s.accuracy, Some(0.79), "new final running: best grid point's test");

    let mut bad = tasks.clone();
    bad[0].spec_json = "{not json".to_string();
    let err = ReportInput::from_task_infos(&bad).expect_err("bad spec");
    assert!(err.to_string().contains("t1"), "{err}");
    let mut no_spec = tasks;
    no_spec[0].spec_json.clear();
    no_spec[0].regime = 99;
    let err = ReportInput::from_task_infos(&no_spec).expect_err("bad regime");
    assert!(err.to_string().contains("unknown regime \"99\""), "{err}");
}

#[test]
fn the_weights_files_top1_stands_in_when_the_sweep_file_gives_none() {
    let with_top1 = |task: &mut TaskInfo, top1: f64| {
        if let Some(r) = task.result.as_mut() {
            r.backbone_top1 = Some(top1);
        }
    };
    let lite = spec("lite0", None, "pets", Regime::Linear, Stage::Grid, BTreeMap::new());
    let lite_ft = spec("lite0", None, "pets", Regime::Finetune, Stage::Grid, hp(0.1, 0.0));
    let lite_scratch = spec("lite0", None, "pets", Regime::Scratch, Stage::Grid, hp(0.1, 0.0));
    let given = spec("mnv2", Some(72.0), "pets", Regime::Linear, Stage::Grid, BTreeMap::new());
    let mut tasks = vec![
        task("s1", "succeeded", &lite_scratch, Some(0.5), Some(0.5)),
        task("l1", "succeeded", &lite, Some(0.8), Some(0.8)),
        task("f1", "succeeded", &lite_ft, Some(0.9), Some(0.9)),
        task("m1", "succeeded", &given, Some(0.7), Some(0.7)),
    ];
    with_top1(&mut tasks[1], 75.1);
    with_top1(&mut tasks[2], 75.1);
    with_top1(&mut tasks[3], 71.878);
    let input = ReportInput::from_task_infos(&tasks).expect("input");
    assert_eq!(
        input.models,
        vec![
            ModelInfo { name: "lite0".into(), imagenet_top1: Some(75.1) },
            // the sweep file's value wins over the file's
            ModelInfo { name: "mnv2".into(), imagenet_top1: Some(72.0) },
        ]
    );
}

/// Three pretraining settings of one source model (the pretrain stage), each transferred
/// to two datasets by the linear probe and fine-tuning: the source scores become the x
/// axis and the report draws the regularizer figure and its table.
#[test]
fn pretrain_settings_give_the_regularizer_figure_and_table() {
    use tsweep_proto::cell::{PretrainedBy, Regularizers};
    let mut tasks = Vec::new();
    let settings = [(0.0, 0.0, 0.80), (0.1, 0.0, 0.82), (0.0, 0.5, 0.83)];
    for (i, (ls, dropout, source)) in settings.into_iter().enumerate() {
        let model = format!("r18-s{i}");
        let mut hparams = hp(0.1, 0.0);
        Regularizers { label_smoothing: ls, dropout, aux_weight: 0.0, bn_scale: true }.write_hparams(&mut hparams);
        let mut pre = spec(&model, None, "fashion", Regime::Scratch, Stage::Pretrain, hparams);
        pre.model.arch = "resnet18".into();
        let pre_id = format!("p{i}");
        tasks.push(task(&pre_id, "succeeded", &pre, None, Some(source)));
        for (di, dataset) in ["digits", "faces"].into_iter().enumerate() {
            // Features transfer worse the better the source (the paper's direction).
            let linear_score = 0.9 - 0.5 * (source - 0.8) - 0.05 * di as f64;
            for (regime, stage, score, h) in [
                (Regime::Linear, Stage::Grid, linear_score, BTreeMap::new()),
                (Regime::Finetune, Stage::Final, 0.95 - 0.02 * di as f64, hp(0.01, 0.0)),
            ] {
                let mut s = spec(&model, None, dataset, regime, stage, h);
                s.model.pretrained =
                    Some(PretrainedBy { task_id: pre_id.clone(), pretrain: "src".into(), dataset: "fashion".into() });
                let mut t = task(&format!("t{i}{di}{}", regime.name()), "succeeded", &s, Some(score), Some(score));
                if stage == Stage::Final {
                    t.current_final = true;
                    t.selection_group = format!("{model}/{dataset}/finetune/0");
                }
                tasks.push(t);
            }
        }
    }
    let input = ReportInput::from_task_infos(&tasks).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = write_report(&input, dir.path()).unwrap();
    let png = paths.regularizers_png.expect("the regularizer figure is drawn");
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"), "a real PNG");
    let svg = std::fs::read_to_string(paths.regularizers_svg.unwrap()).unwrap();
    assert!(svg.contains("<svg"));
    let html = std::fs::read_to_string(&paths.index_html).unwrap();
    assert!(html.contains("Pretraining settings"), "the section is in index.html");
    assert!(html.contains("ls0.1") && html.contains("do0.5") && html.contains("baseline"), "the settings' labels");
    assert!(html.contains("82.0"), "the source accuracy of a setting is in the table");
    let analysis: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&paths.analysis_json).unwrap()).unwrap();
    let text = analysis.to_string();
    assert!(text.contains("source top-1 (fashion)"), "the x axis is the source accuracy: {text:.400}");
}

#[test]
fn the_selected_runs_training_curves_are_drawn_with_a_resumed_attempt_taking_over() {
    use tsweep_proto::v1::MetricPoint;
    use tsweep_report::input::loss_curve;

    let point = |attempt: u32, step: u64, loss: f64| MetricPoint {
        attempt,
        step,
        total_steps: 6,
        loss: Some(loss),
        ..Default::default()
    };
    // Attempt 1 reached step 4, attempt 2 resumed from the checkpoint at step 2.
    let curve =
        [point(1, 1, 2.0), point(1, 2, 1.8), point(1, 3, 1.7), point(1, 4, 1.6), point(2, 3, 1.5), point(2, 4, 1.4)];
    assert_eq!(loss_curve(&curve), vec![(1.0, 2.0), (2.0, 1.8), (3.0, 1.5), (4.0, 1.4)]);
    let no_loss = MetricPoint { loss: Some(f64::NAN), ..point(1, 5, 0.0) };
    assert_eq!(loss_curve(&[no_loss]), vec![], "a non-finite loss is not drawn");

    let mut input = troubled_sweep();
    let selected: Vec<String> = input.selected_runs().map(|c| c.task_id.clone()).collect();
    assert!(!selected.is_empty());
    assert!(input.selected_runs().all(|c| c.is_current_final && c.regime != Regime::Linear));
    let dir = tempfile::tempdir().expect("temp dir");
    let without = write_report(&input, &dir.path().join("without")).expect("report");
    assert_eq!(without.training_curves_png, None, "no curves, no figure");
    input.curves = selected.iter().map(|id| (id.clone(), curve.to_vec())).collect();
    let with = write_report(&input, &dir.path().join("with")).expect("report");
    let png = std::fs::read(with.training_curves_png.as_ref().expect("training_curves.png")).expect("png");
    assert!(png_size(&png).is_some_and(|(w, h)| w >= 1000 && h > 300), "a panel per regime");
    let svg = std::fs::read_to_string(with.training_curves_svg.as_ref().expect("svg")).expect("svg");
    assert!(svg.contains("finetune: training loss of the selected runs"), "{}", &svg[..svg.len().min(400)]);
    let html = std::fs::read_to_string(&with.index_html).expect("html");
    assert!(html.contains("Training curves of the selected runs") && html.contains("<svg"));
}
