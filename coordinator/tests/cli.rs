//! The real `tsweep` binary on sweep files: `submit --dry-run` prints counts and touches
//! nothing; bad input exits non-zero with one line `error: <reason>` and writes nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TSWEEP: &str = env!("CARGO_BIN_EXE_tsweep");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Runs tsweep in `dir`, pointed at a coordinator address where nothing listens, so any
/// attempt to use the network would fail loudly.
fn tsweep(dir: &Path, args: &[&str]) -> Output {
    Command::new(TSWEEP)
        .current_dir(dir)
        .args(["--coordinator", "http://127.0.0.1:9"])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exactly one line, `error: ...`.
fn assert_one_line_error(out: &Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err:?}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in {err}");
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

const GOOD: &str = r#"
name = "tiny"
allow_random_init = true
[defaults]
steps = 10
[[models]]
name = "m1"
source = "builtin"
arch = "resnet18"
[[models]]
name = "m2"
source = "builtin"
arch = "resnet34"
[[datasets]]
name = "d1"
format = "imagefolder"
path = "data/d1"
[regimes.linear]
l2 = { logspace = [-2, 2, 5] }
[regimes.finetune]
lr = [0.01, 0.1]
weight_decay = { values = [0.0], logspace = [-5, -4, 2] }
[regimes.scratch]
lr = [0.1]
models = ["m1"]
"#;

#[test]
fn dry_run_prints_counts_per_regime_and_stage_without_the_network() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), GOOD).unwrap();
    let out = tsweep(dir.path(), &["submit", "--dry-run", "tiny.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for row in [
        ["linear", "grid", "2"],
        ["finetune", "grid", "12"],
        ["finetune", "final", "2"],
        ["scratch", "grid", "1"],
        ["scratch", "final", "1"],
    ] {
        assert!(
            text.lines().any(|l| {
                let cells: Vec<&str> = l.split(['│', '┆']).map(str::trim).collect();
                cells.len() > 3 && cells[1] == row[0] && cells[2] == row[1] && cells[3] == row[2]
            }),
            "row {row:?} missing in:\n{text}"
        );
    }
    assert!(text.contains("15 grid cells now, 3 final refits after selection"), "{text}");
    assert_eq!(dir_entries(dir.path()), vec!["tiny.toml"], "a dry run writes nothing");

    let out = tsweep(dir.path(), &["submit", "--dry-run", "--format", "json", "tiny.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["sweep"], "tiny");
    assert_eq!(json["grid_cells"], 15);
    assert_eq!(json["cells_with_finals"], 18);
    assert_eq!(
        json["per_stage"][1],
        serde_json::json!({ "regime": "finetune", "stage": "grid", "cells": 12, "after_pretrain": 0 })
    );
}

#[test]
fn the_paper_example_dry_runs_with_its_counts() {
    let out = tsweep(&repo_root(), &["submit", "--dry-run", "--format", "json", "examples/kornblith2019.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let count = |regime: &str, stage: &str| {
        json["per_stage"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["regime"] == regime && c["stage"] == stage)
            .map(|c| c["cells"].as_u64().unwrap())
    };
    assert_eq!(count("linear", "grid"), Some(16 * 12));
    assert_eq!(count("linear", "final"), None, "linear selects inside its task");
    assert_eq!(count("finetune", "grid"), Some(16 * 12 * 56));
    assert_eq!(count("finetune", "final"), Some(16 * 12));
    assert_eq!(count("scratch", "grid"), Some(16 * 12 * 56));
    assert_eq!(count("scratch", "final"), Some(16 * 12));

    let out = tsweep(&repo_root(), &["submit", "--dry-run", "examples/quickstart.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn bad_input_exits_2_with_one_line_and_writes_nothing() {
    let cases: Vec<(&str, String, &str)> = vec![
        ("malformed", "name = \"x\"\n[defaults\nsteps = 1\n".to_string(), "bad.toml:2:"),
        ("unknown key", GOOD.replace("steps = 10", "stepz = 10"), "unknown field `stepz`"),
        ("empty grid", GOOD.replace("lr = [0.1]", "lr = []"), "the grid is empty"),
        (
            "huge grid",
            GOOD.replace("lr = [0.01, 0.1]", "lr = { logspace = [-4, -1, 600000] }"),
            "more than the limit of 1000000; pass --allow-huge",
        ),
        ("slash in name", GOOD.replace("name = \"tiny\"", "name = \"a/b\""), "sweep name \"a/b\" contains '/'"),
        ("space in name", GOOD.replace("name = \"tiny\"", "name = \"a b\""), "sweep name \"a b\" contains ' '"),
        (
            "unknown regime",
            GOOD.replace("[regimes.scratch]", "[regimes.scrach]"),
            "unknown field `scrach`, expected one of `linear`, `finetune`, `scratch`",
        ),
        (
            "unknown architecture",
            GOOD.replace("arch = \"resnet18\"", "arch = \"resnet5000\""),
            "bad.toml:9:8: models.arch: unknown builtin architecture \"resnet5000\"; builtin: resnet18,",
        ),
        (
            "unknown architecture from the name",
            GOOD.replace("arch = \"resnet34\"\n", ""),
            "models.name: unknown builtin architecture \"m2\" (the model's name, as `arch` is not set)",
        ),
        (
            "image size",
            GOOD.replace("arch = \"resnet18\"\n", "arch = \"resnet18\"\nimage_size = 100000\n"),
            "bad.toml:10:14: models.image_size: 100000 is out of range: 16 to 1024 pixels",
        ),
        (
            "batch size",
            GOOD.replace("steps = 10", "steps = 10\nbatch_size = 4294967295"),
            "bad.toml:6:14: regimes.linear.batch_size: 4294967295 is out of range: 1 to 65536",
        ),
        (
            "gpus",
            GOOD.replace("steps = 10", "steps = 10\ngpus = 4000000000"),
            "bad.toml:6:8: regimes.linear.gpus: 4000000000 is out of range: 0 to 16",
        ),
        (
            "steps",
            GOOD.replace("steps = 10", "steps = 100000000000"),
            "bad.toml:5:9: regimes.linear.steps: 100000000000 is more than 10000000",
        ),
        (
            "metric of another format",
            GOOD.replace("path = \"data/d1\"", "path = \"data/d1\"\nmetric = \"map11\""),
            "datasets.metric: map11 (multi-label mean average precision) does not fit the single-label format imagefolder",
        ),
        (
            "a cell larger than a worker receives",
            GOOD.replace("l2 = { logspace = [-2, 2, 5] }", "l2 = { logspace = [-2, 2, 1000000] }"),
            "regimes.linear.l2: the L2 path has 1000000 points: each cell would be",
        ),
        (
            "unknown precision",
            GOOD.replace("steps = 10", "steps = 10\nprecision = \"fp8\""),
            "bad.toml:6:13: defaults.precision: unknown variant `fp8`, expected one of `fp32`, `bf16`, `fp16`",
        ),
    ];
    for (what, text, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.toml"), &text).unwrap();
        for args in [
            &["submit", "--dry-run", "bad.toml"][..],
            &["submit", "bad.toml"],
            &["local", "bad.toml", "--workers", "1"],
        ] {
            let out = tsweep(dir.path(), args);
            assert_one_line_error(&out, 2, needle);
            assert!(stderr(&out).contains("bad.toml"), "{what}: the file is named: {}", stderr(&out));
            assert!(stdout(&out).is_empty(), "{what}: {}", stdout(&out));
            assert_eq!(dir_entries(dir.path()), vec!["bad.toml"], "{what} {args:?}: nothing written");
        }
    }
}

/// Two source settings (label smoothing × dropout), transferred to the other dataset.
const PRETRAINED: &str = r#"
name = "reg"
[defaults]
steps = 10
gpus = 0
[[datasets]]
name = "source"
format = "imagefolder"
path = "data/source"
[[datasets]]
name = "target"
format = "imagefolder"
path = "data/target"
[[pretrain]]
name = "src"
arch = "resnet18"
dataset = "source"
image_size = 32
lr = 0.1
steps = 20
label_smoothing = [0.0, 0.1]
dropout = [0.0, 0.5]
[[models]]
name = "r18"
pretrain = "src"
[regimes.linear]
l2 = { logspace = [-2, 2, 5] }
[regimes.finetune]
lr = [0.01]
"#;

#[test]
fn dry_run_shows_the_pretrain_stage_and_the_cells_that_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reg.toml"), PRETRAINED).unwrap();
    let out = tsweep(dir.path(), &["submit", "--dry-run", "reg.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("4 pretrain cells now; 8 of the grid cells wait for theirs"), "{text}");
    assert!(text.contains("after their pretrain cell succeeds"), "{text}");
    let out = tsweep(dir.path(), &["submit", "--dry-run", "--format", "json", "reg.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["pretrain_cells"], 4);
    // one transfer target (the source is not its own target): 4 linear + 4 finetune grid cells
    assert_eq!(json["grid_cells"], 8);
    assert_eq!(dir_entries(dir.path()), vec!["reg.toml"], "a dry run writes nothing");
}

#[test]
fn bad_pretrain_input_exits_2_naming_file_line_and_field_and_writes_nothing() {
    let line = |needle: &str| PRETRAINED.lines().position(|l| l.contains(needle)).unwrap() + 1;
    // (what, file text, where the error points, what it says)
    let cases: Vec<(&str, String, String, &str)> = vec![
        (
            "no source dataset",
            PRETRAINED.replace("dataset = \"source\"\n", ""),
            "bad.toml:".to_string(),
            "pretrain.dataset: pretrain entry \"src\" needs `dataset`",
        ),
        (
            "label smoothing out of range",
            PRETRAINED.replace("label_smoothing = [0.0, 0.1]", "label_smoothing = [0.0, 1.0]"),
            format!("bad.toml:{}:", line("label_smoothing")),
            "pretrain.label_smoothing: value 1 is out of range",
        ),
        (
            "dropout out of range",
            PRETRAINED.replace("dropout = [0.0, 0.5]", "dropout = [-0.5]"),
            format!("bad.toml:{}:", line("dropout = ")),
            "pretrain.dropout: value -0.5 is out of range",
        ),
        (
            "unknown pretrain entry",
            PRETRAINED.replace("pretrain = \"src\"", "pretrain = \"srx\""),
            format!("bad.toml:{}:", line("pretrain = ")),
            "models.pretrain: unknown pretrain entry \"srx\"; defined: src",
        ),
        (
            "aux head on a network without one",
            PRETRAINED.replace("dropout = [0.0, 0.5]", "aux_head = [0.4]"),
            format!("bad.toml:{}:", line("dropout = ")),
            "pretrain.aux_head: resnet18 has no auxiliary classifier",
        ),
    ];
    for (what, text, location, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.toml"), &text).unwrap();
        for args in [
            &["submit", "--dry-run", "bad.toml"][..],
            &["submit", "bad.toml"],
            &["local", "bad.toml", "--workers", "1"],
        ] {
            let out = tsweep(dir.path(), args);
            assert_one_line_error(&out, 2, needle);
            assert!(stderr(&out).starts_with(&format!("error: {location}")), "{what}: {}", stderr(&out));
            assert!(stdout(&out).is_empty(), "{what}: {}", stdout(&out));
            assert_eq!(dir_entries(dir.path()), vec!["bad.toml"], "{what} {args:?}: nothing written");
        }
    }
}

#[test]
fn an_endless_or_huge_sweep_file_is_refused_at_its_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["submit", "--dry-run", "/dev/zero"][..], &["submit", "/dev/zero"], &["local", "/dev/zero"]] {
        assert_one_line_error(
            &tsweep(dir.path(), args),
            2,
            "/dev/zero: the file is larger than 4194304 bytes, the limit for a sweep file",
        );
    }
    let big = format!("{GOOD}\n# {}\n", "x".repeat(4 * 1024 * 1024));
    std::fs::write(dir.path().join("big.toml"), big).unwrap();
    assert_one_line_error(&tsweep(dir.path(), &["submit", "--dry-run", "big.toml"]), 2, "big.toml: the file is larger");
    assert_eq!(dir_entries(dir.path()), vec!["big.toml"], "nothing written");
}

#[test]
fn missing_file_and_bad_arguments_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert_one_line_error(&tsweep(dir.path(), &["submit", "--dry-run", "nope.toml"]), 2, "cannot read nope.toml");
    assert_one_line_error(&tsweep(dir.path(), &["submit"]), 2, "required");
    assert_one_line_error(&tsweep(dir.path(), &["results", "x", "--format", "xml"]), 2, "xml");
}

#[test]
fn an_unreachable_coordinator_is_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), GOOD).unwrap();
    assert_one_line_error(&tsweep(dir.path(), &["status"]), 3, "cannot reach the coordinator at http://127.0.0.1:9");
    assert_one_line_error(&tsweep(dir.path(), &["submit", "tiny.toml"]), 3, "cannot reach the coordinator");
}
