//! `tsweep local` end to end with the fake executor: private redis-server, in-process
//! coordinator, real `tsweep-worker` processes; results table, report, exit codes, and
//! nothing left running. Needs the `tsweep-worker` binary of the same build (built by
//! `cargo test --workspace`); without it the tests skip with a note, and fail under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Command;

const TSWEEP: &str = env!("CARGO_BIN_EXE_tsweep");

/// What the tests that start workers need (`cargo test --workspace` builds it).
const WORKER: &str = "tsweep-worker next to tsweep (cargo build -p tsweep-worker)";

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
    if !have(worker_binary().is_some(), WORKER) {
        return;
    }
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
    // The selected runs' curves, fetched from the coordinator before it stopped.
    assert!(dir.path().join("out/training_curves.png").is_file(), "{stdout}");
    let html = std::fs::read_to_string(dir.path().join("out/index.html")).unwrap();
    assert!(html.contains("Training curves of the selected runs"));
    // The private redis-server is stopped (its data stays under out/redis).
    let redis_line = stderr.lines().find(|l| l.starts_with("redis: ")).unwrap();
    let port = redis_line.trim_start_matches("redis: redis://127.0.0.1:").split('/').next().unwrap();
    assert!(std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err(), "redis still listening on {port}");
}

#[test]
fn local_exits_4_when_cells_fail_and_still_reports() {
    if !have(worker_binary().is_some(), WORKER) {
        return;
    }
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

/// Processes whose command line contains `needle` (from /proc), not counting zombies.
fn processes_with(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
            .unwrap_or(true);
        if cmdline.contains(needle) && !zombie {
            found.push(pid);
        }
    }
    found
}

#[test]
fn local_stops_everything_it_started_on_sigint_sigterm_and_sighup() {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};

    if !have(worker_binary().is_some(), WORKER) {
        return;
    }
    let long = FAKE.replace("sleep_ms = 100", "sleep_ms = 60000").replace("steps = 5", "steps = 600");
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("local{}", signal.as_str().to_lowercase().trim_start_matches("sig"));
        std::fs::write(dir.path().join(format!("{name}.toml")), long.replace("NAME", &name)).unwrap();
        let stderr_path = dir.path().join("stderr.log");
        // In a process group of its own, signalled as a whole: what a terminal does on
        // Ctrl-C (SIGINT) or when it is closed (SIGHUP).
        let mut local = Command::new(TSWEEP)
            .current_dir(dir.path())
            .args(["local", &format!("{name}.toml"), "--workers", "2", "--executor", "fake", "--out", "out"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        let group = Pid::from_raw(local.id() as i32);
        let workers_id = format!("local-{}-", local.id());
        let deadline = Instant::now() + Duration::from_secs(60);
        let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
        // Wait until both workers run a task (their logs say a child started).
        let running = || {
            (0..2).all(|i| {
                std::fs::read_to_string(dir.path().join(format!("out/logs/worker-{i}.log")))
                    .is_ok_and(|log| log.contains("child started"))
            })
        };
        while !running() {
            assert!(Instant::now() < deadline, "{signal}: the workers never ran a task:\n{}", stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
        let redis_line = stderr().lines().find(|l| l.starts_with("redis: ")).unwrap().to_string();
        let port = redis_line.trim_start_matches("redis: redis://127.0.0.1:").split('/').next().unwrap().to_string();
        assert_eq!(processes_with(&workers_id).len(), 2, "{signal}: two workers run");

        killpg(group, signal).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = local.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{signal}: tsweep local did not stop:\n{}", stderr());
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(1), "{signal}: interrupted is exit 1:\n{}", stderr());
        assert!(stderr().contains("interrupted: stopping workers, coordinator and redis"), "{signal}: {}", stderr());
        assert!(processes_with(&workers_id).is_empty(), "{signal}: a worker outlived tsweep local");
        assert!(
            std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err(),
            "{signal}: the private redis-server on {port} is still listening"
        );
        // redis-server retitles itself `redis-server 127.0.0.1:<port>`.
        assert!(processes_with(&format!("127.0.0.1:{port}")).is_empty(), "{signal}: redis-server still runs");
        // The workers drained: their tasks were released as preempted, with a checkpoint.
        let log = std::fs::read_to_string(dir.path().join("out/logs/worker-0.log")).unwrap();
        assert!(log.contains("draining") && log.contains("worker stopped"), "{signal}: {log}");
    }
}

/// True when the test can run; a missing tool fails the test under `CI=true`.
fn have(tool_ok: bool, what: &str) -> bool {
    if !tool_ok {
        tsweep_proto::testing::skip_unless_ci(&format!("{what} is missing"));
    }
    tool_ok
}

#[test]
fn local_warns_when_its_workers_cannot_take_cells() {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};

    if !have(worker_binary().is_some(), WORKER) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Without `gpus = 0` every cell needs one GPU; the workers are told they have none
    // (as `gpus = auto` finds on a machine without /dev/nvidiaN).
    let text = FAKE.replace("[defaults]\ngpus = 0\n", "").replace("NAME", "localgpu");
    std::fs::write(dir.path().join("localgpu.toml"), text).unwrap();
    let stderr_path = dir.path().join("stderr.log");
    let mut local = Command::new(TSWEEP)
        .current_dir(dir.path())
        .args(["local", "localgpu.toml", "--workers", "2", "--executor", "fake", "--out", "out"])
        .env("TSWEEP_WORKER__GPUS", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let warning = loop {
        if let Some(line) = stderr().lines().find(|l| l.starts_with("warning: ")).map(String::from) {
            break line;
        }
        assert!(local.try_wait().unwrap().is_none(), "tsweep local ended:\n{}", stderr());
        assert!(Instant::now() < deadline, "no warning:\n{}", stderr());
        std::thread::sleep(Duration::from_millis(100));
    };
    // 2 linear + 4 finetune + 2 scratch grid cells, none leasable by the two CPU workers.
    assert_eq!(
        warning,
        "warning: 8 pending cells need 1 GPU; the 2 registered workers have 0; they stay pending (`gpus = 0` in \
         the sweep file runs them on CPU)",
        "{}",
        stderr()
    );
    killpg(Pid::from_raw(local.id() as i32), Signal::SIGINT).unwrap();
    assert_eq!(local.wait().unwrap().code(), Some(1));
}

/// The cells of the running table's row for `cell` in a screen capture: (step, loss).
fn table_row(screen: &str, cell: &str) -> Option<(String, String)> {
    let line = screen.lines().find(|l| l.contains(cell))?;
    // comfy_table's UTF8_FULL_CONDENSED: `│` outside, `┆` between the columns
    let cells: Vec<&str> = line.split(['│', '┆']).map(str::trim).filter(|c| !c.is_empty()).collect();
    // cell, worker, attempt, step, loss, img/s, best val, ETA
    let step = cells.iter().find(|c| c.contains('/') && !c.contains(cell))?.to_string();
    let loss = cells.get(cells.iter().position(|c| *c == step)? + 1)?.to_string();
    Some((step, loss))
}

#[test]
fn watch_redraws_the_running_table_in_place_in_a_terminal() {
    use std::time::{Duration, Instant};

    let tmux_ok = Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success());
    if !have(tmux_ok, "tmux (scripts/setup.sh installs it)") || !have(worker_binary().is_some(), WORKER) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // One linear cell of 8 steps, 2 s each: the table shows its step and loss moving.
    let text = r#"
name = "livetable"
allow_random_init = true
[defaults]
gpus = 0
[fake]
sleep_ms = 16000
steps = 8
[[models]]
name = "m1"
source = "builtin"
arch = "resnet18"
imagenet_top1 = 70.0
[[datasets]]
name = "d1"
format = "imagefolder"
path = "data/d1"
[regimes.linear]
l2 = [0.1]
"#;
    std::fs::write(dir.path().join("livetable.toml"), text).unwrap();
    let socket = format!("tsweep-watch-test-{}", std::process::id());
    let tmux = |args: &[&str]| Command::new("tmux").arg("-L").arg(&socket).args(args).output().unwrap();
    let script = format!(
        "cd {} && {TSWEEP} local livetable.toml --workers 1 --executor fake --out out; echo $? > exit-code; sleep 600",
        dir.path().display()
    );
    let started = tmux(&["new-session", "-d", "-s", "watch", "-x", "200", "-y", "50", &script]);
    assert!(started.status.success(), "{started:?}");

    let mut rows = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    while !dir.path().join("exit-code").exists() {
        assert!(Instant::now() < deadline, "the sweep did not end:\n{last}");
        let screen = String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "watch"]).stdout).into_owned();
        // Redrawn in place: one table header on the screen, never a pile of them.
        let headers = screen.lines().filter(|l| l.contains("ETA")).count();
        assert!(headers <= 1, "the table was appended, not redrawn:\n{screen}");
        if let Some(row) = table_row(&screen, "m1/d1/linear") {
            rows.insert(row);
        }
        last = screen;
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = tmux(&["kill-server"]);
    let exit = std::fs::read_to_string(dir.path().join("exit-code")).unwrap();
    assert_eq!(exit.trim(), "0", "{last}");
    let steps: std::collections::BTreeSet<&String> = rows.iter().map(|(step, _)| step).collect();
    let losses: std::collections::BTreeSet<&String> = rows.iter().map(|(_, loss)| loss).collect();
    assert!(steps.len() >= 2 && losses.len() >= 2, "step and loss should move in the table: {rows:?}\n{last}");
    assert!(steps.iter().all(|s| s.ends_with("/8")), "{rows:?}");
}

/// Cells whose attempts succeeded, by the worker logs of the last run in `out`.
fn succeeded_in_logs(dir: &Path) -> usize {
    (0..2)
        .map(|i| std::fs::read_to_string(dir.join(format!("out/logs/worker-{i}.log"))).unwrap_or_default())
        .map(|log| log.matches("attempt succeeded").count())
        .sum()
}

#[test]
fn local_run_again_with_the_same_out_resumes_an_interrupted_run() {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};

    if !have(worker_binary().is_some(), WORKER) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let name = "localresume";
    let slow = FAKE.replace("steps = 5", "steps = 20").replace("NAME", name);
    std::fs::write(dir.path().join(format!("{name}.toml")), &slow).unwrap();
    let mut local = Command::new(TSWEEP)
        .current_dir(dir.path())
        .args(["local", &format!("{name}.toml"), "--workers", "2", "--executor", "fake", "--out", "out"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    // Ctrl-C once at least one cell has succeeded, before the sweep ends.
    let deadline = Instant::now() + Duration::from_secs(60);
    while succeeded_in_logs(dir.path()) == 0 {
        assert!(Instant::now() < deadline, "no cell succeeded in 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    killpg(Pid::from_raw(local.id() as i32), Signal::SIGINT).unwrap();
    assert_eq!(local.wait().unwrap().code(), Some(1), "interrupted is exit 1");
    let first = succeeded_in_logs(dir.path());
    assert!(first < 12, "the sweep was interrupted before its end ({first} cells succeeded)");
    assert!(dir.path().join("out/redis").is_dir(), "the private Redis keeps its data under --out");

    // The same command again: the recorded cells are kept, the rest run, the sweep ends.
    let out = run_local(dir.path(), name, &slow);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("8 cells, 0 added, 8 already known"), "{stderr}");
    assert!(stdout.contains("succeeded 12 · failed 0"), "{stdout}");
    let second = succeeded_in_logs(dir.path());
    assert!(second <= 12 - first, "{first} cells succeeded before the interrupt, {second} ran again after it");
}
