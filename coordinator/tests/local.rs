//! `tsweep local` end to end with the fake executor: private redis-server, in-process
//! coordinator, real `tsweep-worker` processes; results table, report, exit codes, and
//! nothing left running. Needs the `tsweep-worker` binary of the same build (built by
//! `cargo test --workspace`); skipped with a note when it has not been built.

use std::path::{Path, PathBuf};
use std::process::Command;

const TSWEEP: &str = env!("CARGO_BIN_EXE_tsweep");

fn worker_binary() -> Option<PathBuf> {
    let path = Path::new(TSWEEP).parent()?.join("tsweep-worker");
    path.is_file().then_some(path)
}

const FAKE: &str = r#"
name = "NAME"
max_attempts = 2
allow_random_init = true
[defaults]
gpus = 0
[fake]
sleep_ms = 100
steps = 5
[[models]]
name = "m1"
source = "builtin"
arch = "resnet18"
imagenet_top1 = 70.0
[[models]]
name = "m2"
source = "builtin"
arch = "resnet34"
imagenet_top1 = 75.0
[[datasets]]
name = "d1"
format = "imagefolder"
path = "data/d1"
[regimes.linear]
l2 = [0.1, 1.0]
[regimes.finetune]
lr = [0.01, 0.1]
[regimes.scratch]
lr = [0.1]
"#;

fn run_local(dir: &Path, name: &str, text: &str) -> std::process::Output {
    std::fs::write(dir.join(format!("{name}.toml")), text.replace("NAME", name)).unwrap();
    Command::new(TSWEEP)
        .current_dir(dir)
        .args(["local", &format!("{name}.toml"), "--workers", "2", "--executor", "fake", "--out", "out"])
        .output()
        .unwrap()
}

#[test]
fn local_runs_a_fake_sweep_to_the_end_and_writes_the_report() {
    let Some(_) = worker_binary() else {
        eprintln!("skipped: tsweep-worker is not built next to {TSWEEP} (cargo build -p tsweep-worker)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = run_local(dir.path(), "localok", FAKE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // 2 linear + 4 finetune + 2 finetune finals + 2 scratch + 2 scratch finals.
    assert!(stdout.contains("succeeded 12 · failed 0"), "{stdout}");
    assert!(stdout.contains("report: out/index.html"), "{stdout}");
    assert!(dir.path().join("out/index.html").is_file());
    assert!(dir.path().join("out/results.csv").is_file());
    // The private redis-server is gone with its temporary directory.
    let redis_line = stderr.lines().find(|l| l.starts_with("redis: ")).unwrap();
    let port = redis_line.trim_start_matches("redis: redis://127.0.0.1:").split('/').next().unwrap();
    assert!(std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err(), "redis still listening on {port}");
}

#[test]
fn local_exits_4_when_cells_fail_and_still_reports() {
    let Some(_) = worker_binary() else {
        eprintln!("skipped: tsweep-worker is not built next to {TSWEEP}");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let failing = FAKE.replace("lr = [0.1]\n", "lr = [0.1]\nfake = { sleep_ms = 50, steps = 2, fail = \"fatal\" }\n");
    let out = run_local(dir.path(), "localfail", &failing);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stderr.lines().last(), Some("error: sweep localfail ended with 2 failed cell(s)"), "{stderr}");
    assert!(stdout.contains("failed"), "{stdout}");
    assert!(dir.path().join("out/index.html").is_file(), "the report is written anyway");
}
