//! The child process contract, on the real binary: `tsweep-worker run-task --executor fake`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tsweep_proto::cell::{
    CellSpec, DatasetFormat, DatasetSpec, FakeSettings, Metric, ModelSource, ModelSpec, Regime, Stage, TrainJob,
    TrainSettings, ValPolicy,
};
use tsweep_worker::child_protocol::{
    exit_code, Checkpoint, ChildEvent, ExecutorKind, FailureClass, StepProgress, TaskInput, TrainingEvent,
};

fn spec(fake: FakeSettings) -> CellSpec {
    CellSpec {
        sweep: "s1".into(),
        stage: Stage::Grid,
        regime: Regime::Finetune,
        model: ModelSpec {
            name: "r18".into(),
            source: ModelSource::Builtin,
            arch: "resnet18".into(),
            weights: None,
            imagenet_top1: Some(0.7),
            image_size: 32,
            pretrained: None,
            normalize: Default::default(),
        },
        dataset: DatasetSpec {
            name: "toy".into(),
            format: DatasetFormat::Imagefolder,
            path: "/nonexistent".into(),
            metric: Metric::Top1,
            val: ValPolicy::Official,
            num_classes: None,
        },
        hparams: BTreeMap::from([("lr".to_string(), 0.01), ("weight_decay".to_string(), 1e-4)]),
        train: TrainSettings {
            steps: 10,
            batch_size: 8,
            checkpoint_every: 0,
            loader_threads: 1,
            lbfgs_max_iter: 10,
            ..TrainSettings::defaults_for(Regime::Finetune)
        },
        seed: 1,
        precision: Default::default(),
        gpus: 0,
        max_attempts: 3,
        fake: Some(fake),
    }
}

fn input(dir: &Path, attempt: u32, fake: FakeSettings, resume: Option<Checkpoint>) -> TaskInput {
    TaskInput {
        task_id: "t1".into(),
        attempt,
        job: TrainJob {
            spec: spec(fake),
            resume,
            checkpoint_dir: dir.join(format!("attempt-{attempt}")),
            cache_dir: dir.join("cache"),
            device: tsweep_proto::cell::Device::Cpu,
            pretrained_out: None,
        },
        cpu_threads: Some(1),
        executor: ExecutorKind::Fake,
    }
}

fn spawn(input: &TaskInput) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tsweep-worker"))
        .args(["run-task", "--executor", "fake"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(serde_json::to_string(input).unwrap().as_bytes()).unwrap();
    drop(stdin);
    child
}

struct Finished {
    events: Vec<ChildEvent>,
    code: Option<i32>,
    stderr: String,
}

fn finish(child: Child) -> Finished {
    let output = child.wait_with_output().unwrap();
    let events = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| ChildEvent::parse_line(line).unwrap_or_else(|e| panic!("not an event: {line}: {e}")))
        .collect();
    Finished { events, code: output.status.code(), stderr: String::from_utf8_lossy(&output.stderr).into_owned() }
}

fn run(input: &TaskInput) -> Finished {
    finish(spawn(input))
}

fn fake(sleep_ms: u64, steps: u64) -> FakeSettings {
    FakeSettings { sleep_ms, steps, ..Default::default() }
}

#[test]
fn success_emits_started_progress_checkpoints_and_one_result() {
    let dir = tempfile::tempdir().unwrap();
    let done = run(&input(dir.path(), 1, fake(50, 5), None));
    assert_eq!(done.code, Some(exit_code::OK), "{}", done.stderr);
    assert!(matches!(done.events.first(), Some(ChildEvent::Training(TrainingEvent::Started { resumed_from_step: 0 }))));
    let progress: Vec<u64> = done
        .events
        .iter()
        .filter_map(|e| match e {
            ChildEvent::Training(TrainingEvent::Progress(StepProgress { step, total_steps, .. })) => {
                assert_eq!(*total_steps, 5);
                Some(*step)
            }
            _ => None,
        })
        .collect();
    assert_eq!(progress, vec![1, 2, 3, 4, 5]);
    let Some(ChildEvent::Result { result }) = done.events.last() else { panic!("{:?}", done.events) };
    assert_eq!(result.metric(), tsweep_proto::v1::Metric::Top1);
    assert_eq!(result.steps, 5);
    assert!(result.val_score.is_some() && result.test_score.is_some());
    let finals = done.events.iter().filter(|e| matches!(e, ChildEvent::Result { .. } | ChildEvent::Failed { .. }));
    assert_eq!(finals.count(), 1);
    // The last checkpoint is on disk at the step it announced.
    let last_checkpoint = done
        .events
        .iter()
        .rev()
        .find_map(|e| match e {
            ChildEvent::Training(TrainingEvent::Checkpoint { path, step }) => Some((path.clone(), *step)),
            _ => None,
        })
        .unwrap();
    assert_eq!(last_checkpoint.1, 5);
    assert_eq!(tsweep_worker::fake::read_checkpoint(&last_checkpoint.0).unwrap().step, 5);
}

#[test]
fn score_is_deterministic_and_prefers_the_sweet_spot() {
    let dir = tempfile::tempdir().unwrap();
    let score = |lr: f64| {
        let mut task = input(dir.path(), 1, fake(0, 1), None);
        task.job.spec.hparams.insert("lr".into(), lr);
        let done = run(&task);
        match done.events.last() {
            Some(ChildEvent::Result { result }) => result.val_score.unwrap(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(score(0.01), score(0.01));
    assert!(score(0.01) > score(1.0));
    // An explicit score wins.
    let mut task = input(dir.path(), 1, FakeSettings { score: Some(0.42), ..fake(0, 1) }, None);
    task.job.spec.hparams.clear();
    match run(&task).events.last() {
        Some(ChildEvent::Result { result }) => assert_eq!(result.val_score, Some(0.42)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sigterm_mid_run_checkpoints_and_exits_preempted() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn(&input(dir.path(), 1, fake(20_000, 100), None));
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    // Wait until it has made progress, then stop it.
    let mut last_step = 0;
    for line in lines.by_ref() {
        if let ChildEvent::Training(TrainingEvent::Progress(StepProgress { step, .. })) =
            ChildEvent::parse_line(&line.unwrap()).unwrap()
        {
            last_step = step;
            if step >= 2 {
                break;
            }
        }
    }
    let stopped_at = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let rest: Vec<ChildEvent> = lines.map(|l| ChildEvent::parse_line(&l.unwrap()).unwrap()).collect();
    let status = child.wait().unwrap();
    assert!(stopped_at.elapsed() < Duration::from_secs(10), "a stop must not wait for the run to end");
    assert_eq!(status.code(), Some(exit_code::PREEMPTED));
    let n = rest.len();
    assert!(n >= 2, "{rest:?}");
    let ChildEvent::Training(TrainingEvent::Checkpoint { path, step }) = &rest[n - 2] else { panic!("{rest:?}") };
    assert!(*step >= last_step);
    assert_eq!(tsweep_worker::fake::read_checkpoint(path).unwrap().step, *step);
    assert!(matches!(&rest[n - 1], ChildEvent::Failed { class: FailureClass::Preempted, .. }), "{rest:?}");
}

#[test]
fn resume_continues_from_the_checkpoint_step_and_logs_it() {
    let dir = tempfile::tempdir().unwrap();
    // Attempt 1 crashes half-way (after checkpointing step 3 of 6).
    let crash = FakeSettings { fail: Some("crash".into()), fail_attempts: 1, ..fake(60, 6) };
    let first = run(&input(dir.path(), 1, crash.clone(), None));
    let (path, step) = first
        .events
        .iter()
        .rev()
        .find_map(|e| match e {
            ChildEvent::Training(TrainingEvent::Checkpoint { path, step }) => Some((path.clone(), *step)),
            _ => None,
        })
        .unwrap();
    assert_eq!(step, 3);

    let second = run(&input(dir.path(), 2, crash, Some(Checkpoint { path: path.display().to_string(), step })));
    assert_eq!(second.code, Some(exit_code::OK), "{}", second.stderr);
    assert!(
        matches!(second.events.first(), Some(ChildEvent::Training(TrainingEvent::Started { resumed_from_step: 3 }))),
        "{:?}",
        second.events
    );
    let steps: Vec<u64> = second
        .events
        .iter()
        .filter_map(|e| match e {
            ChildEvent::Training(TrainingEvent::Progress(StepProgress { step, .. })) => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(steps, vec![4, 5, 6]);
    let Some(ChildEvent::Result { result }) = second.events.last() else { panic!() };
    assert_eq!(result.resumed_from_step, 3);
    assert_eq!(result.steps, 6);
    assert!(second.stderr.contains("resumed_from_step=3"), "{}", second.stderr);
}

#[test]
fn crash_gives_no_result_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let done = run(&input(dir.path(), 1, FakeSettings { fail: Some("crash".into()), ..fake(20, 4) }, None));
    assert_ne!(done.code, Some(0));
    assert!(!done.events.iter().any(|e| matches!(e, ChildEvent::Result { .. } | ChildEvent::Failed { .. })));
}

#[test]
fn injected_failures_carry_their_class_and_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    for (fail, class, code) in [
        ("retryable", FailureClass::Retryable, exit_code::RETRYABLE),
        ("fatal", FailureClass::Fatal, exit_code::FATAL),
        ("out_of_memory", FailureClass::OutOfMemory, exit_code::OUT_OF_MEMORY),
    ] {
        let done = run(&input(dir.path(), 1, FakeSettings { fail: Some(fail.into()), ..fake(0, 2) }, None));
        assert_eq!(done.code, Some(code));
        assert!(matches!(done.events.last(), Some(ChildEvent::Failed { class: c, .. }) if *c == class));
    }
    // fail_attempts = 1: the second attempt succeeds.
    let settings = FakeSettings { fail: Some("retryable".into()), fail_attempts: 1, ..fake(0, 2) };
    let done = run(&input(dir.path(), 2, settings, None));
    assert_eq!(done.code, Some(exit_code::OK));
}

#[test]
fn bad_input_is_a_fatal_failure() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tsweep-worker"))
        .args(["run-task", "--executor", "fake"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"{\"task_id\": 3}").unwrap();
    let done = finish(child);
    assert_eq!(done.code, Some(exit_code::FATAL));
    assert!(matches!(done.events.last(), Some(ChildEvent::Failed { class: FailureClass::Fatal, .. })));
}

// ------------------------------------------------------------ --executor trainer (libtorch)

fn trainer_input(dir: &Path, arch: &str) -> TaskInput {
    let data = dir.join("shapes");
    let options = tsweep_data::SynthOptions {
        classes: 3,
        train_per_class: 8,
        val_per_class: 2,
        test_per_class: 2,
        image_size: 32,
        seed: 0,
    };
    tsweep_data::make_dataset(tsweep_data::SynthKind::Imagefolder, &data, &options).unwrap();
    let mut spec = spec(FakeSettings::default());
    spec.fake = None;
    spec.regime = Regime::Scratch;
    spec.model.arch = arch.into();
    spec.model.imagenet_top1 = None;
    spec.dataset.path = data;
    spec.dataset.num_classes = Some(3);
    spec.train.steps = 2;
    spec.train.batch_size = 4;
    spec.train.checkpoint_every = 1;
    let mut task = input(dir, 1, FakeSettings::default(), None);
    task.executor = ExecutorKind::Trainer;
    task.job.spec = spec;
    task
}

fn run_trainer(input: &TaskInput) -> Finished {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tsweep-worker"))
        .args(["run-task", "--executor", "trainer"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(serde_json::to_string(input).unwrap().as_bytes()).unwrap();
    finish(child)
}

#[test]
fn trainer_executor_runs_a_tiny_cell_through_the_child_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let done = run_trainer(&trainer_input(dir.path(), "resnet18"));
    assert_eq!(done.code, Some(exit_code::OK), "{}", done.stderr);
    assert!(
        matches!(done.events.first(), Some(ChildEvent::Training(TrainingEvent::Started { resumed_from_step: 0 }))),
        "{:?}",
        done.events
    );
    assert!(done.events.iter().any(|e| matches!(
        e,
        ChildEvent::Training(TrainingEvent::Progress(StepProgress { step: 2, total_steps: 2, .. }))
    )));
    assert!(done.events.iter().any(|e| matches!(e, ChildEvent::Training(TrainingEvent::Checkpoint { .. }))));
    let Some(ChildEvent::Result { result }) = done.events.last() else { panic!("{:?}", done.events) };
    assert_eq!(result.steps, 2);
    assert!(result.test_score.is_some());
}

#[test]
fn trainer_errors_keep_their_class() {
    let dir = tempfile::tempdir().unwrap();
    let done = run_trainer(&trainer_input(dir.path(), "no_such_net"));
    assert_eq!(done.code, Some(exit_code::FATAL), "{}", done.stderr);
    let Some(ChildEvent::Failed { class, message }) = done.events.last() else { panic!("{:?}", done.events) };
    assert_eq!(*class, FailureClass::Fatal);
    assert!(message.contains("no_such_net"), "{message}");
}

#[test]
fn every_class_survives_the_trip_from_trainer_to_fail_task() {
    use std::os::unix::process::ExitStatusExt;
    use tsweep_worker::agent::child::classify_exit;

    for class in [FailureClass::Retryable, FailureClass::Fatal, FailureClass::Preempted, FailureClass::OutOfMemory] {
        let line = ChildEvent::Failed { class, message: "m".into() }.to_line();
        let Ok(ChildEvent::Failed { class: parsed, .. }) = ChildEvent::parse_line(&line) else { panic!("{line}") };
        assert_eq!(parsed.as_reported_by_task(), class, "{line}");
    }
    assert!(ChildEvent::Failed { class: FailureClass::OutOfMemory, message: String::new() }
        .to_line()
        .contains(r#""class":"out_of_memory""#));
    assert_eq!(
        FailureClass::LostWorker.as_reported_by_task(),
        FailureClass::Retryable,
        "the task's process never decides a lost worker"
    );

    // Without a final event: the exit code decides, and a crash stays retryable.
    let exited = |code: i32| classify_exit(Some(std::process::ExitStatus::from_raw(code << 8))).0;
    assert_eq!(exited(exit_code::OUT_OF_MEMORY), FailureClass::OutOfMemory);
    assert_eq!(exited(exit_code::FATAL), FailureClass::Fatal);
    assert_eq!(exited(101), FailureClass::Retryable, "a panic is a crash");
    let killed = classify_exit(Some(std::process::ExitStatus::from_raw(9))).0;
    assert_eq!(killed, FailureClass::Retryable, "killed by a signal (the kernel's OOM killer too) is a crash");
}
