//! `tsweep watch`: a live progress bar, per-state counts, why pending cells wait (no
//! worker can take them), a table of the running tasks (cell, worker, attempt, step/total,
//! loss, img/s, best val, ETA) and the best validation score so far per (model, dataset,
//! regime), from the coordinator's `WatchSweep` stream. On a terminal (stderr) everything
//! is redrawn in place; otherwise plain lines are appended: the counts at most every
//! [`PLAIN_LINE_EVERY`], a `waiting:` line when the reason changes, and one line per
//! running task when its step, loss or state changed.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tsweep_proto::v1::{GetSweepRequest, SweepSummary, TaskState, WatchSweepRequest};

use super::client::SweepClient;
use super::error::CliError;
use super::output::{best_table, blocked_line, counts_line, pretrain_table, running_line, running_table};

/// Summaries asked for at least this often.
const WATCH_INTERVAL_MS: u32 = 1000;
/// Without a terminal, a progress line at most this often (and at the end).
const PLAIN_LINE_EVERY: Duration = Duration::from_secs(10);
/// Reconnects of the watch stream before giving up.
const MAX_STREAM_RETRIES: u32 = 30;

struct Display {
    bar: ProgressBar,
    live: ProgressBar,
    best: ProgressBar,
    plain: bool,
    last_plain: Option<Instant>,
    last_line: String,
    /// Plain mode: the last line printed per running task, and the last waiting reasons.
    last_running: HashMap<String, String>,
    last_blocked: Vec<String>,
}

impl Display {
    fn new(sweep: &str, quiet: bool) -> Display {
        let plain = !std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if plain || quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        });
        let style =
            ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta} left)\n{msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        let bar = multi.add(ProgressBar::new(0).with_style(style).with_prefix(sweep.to_string()));
        let message = || {
            multi.add(
                ProgressBar::new(0)
                    .with_style(ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar())),
            )
        };
        let (live, best) = (message(), message());
        Display {
            bar,
            live,
            best,
            plain: plain && !quiet,
            last_plain: None,
            last_line: String::new(),
            last_running: HashMap::new(),
            last_blocked: Vec::new(),
        }
    }

    fn update(&mut self, summary: &SweepSummary) {
        let c = summary.counts.unwrap_or_default();
        let ended = c.succeeded + c.failed + c.cancelled;
        self.bar.set_length(c.total);
        self.bar.set_position(ended);
        let line = counts_line(&c);
        self.bar.set_message(line.clone());
        let mut board = String::new();
        if !summary.pretrain.is_empty() {
            board.push_str(&format!("pretrain stage:\n{}", pretrain_table(&summary.pretrain)));
        }
        if !summary.best.is_empty() {
            board.push_str(&format!("best validation score so far:\n{}", best_table(&summary.best)));
        }
        if !board.is_empty() {
            self.best.set_message(board.trim_end().to_string());
        }
        let blocked: Vec<String> = summary.blocked.iter().map(|b| format!("waiting: {}", blocked_line(b))).collect();
        let mut live = blocked.join("\n");
        if !summary.running.is_empty() {
            live.push_str(&format!("\nrunning:\n{}", running_table(&summary.running)));
        }
        self.live.set_message(live.trim().to_string());
        if self.plain {
            self.plain_live(summary, blocked);
        }
        if self.plain {
            let due = self.last_plain.is_none_or(|t| t.elapsed() >= PLAIN_LINE_EVERY);
            if (due || summary.is_finished()) && line != self.last_line {
                let held: u64 = summary.pretrain.iter().map(|p| p.waiting).sum();
                let pretrained = summary.pretrain.iter().filter(|p| p.state() == TaskState::Succeeded).count();
                let stage = if summary.pretrain.is_empty() {
                    String::new()
                } else {
                    format!(" · pretrain {pretrained}/{} done, {held} cells wait for it", summary.pretrain.len())
                };
                eprintln!("{}: {ended}/{} ended · {line}{stage}", summary.sweep, c.total);
                self.last_plain = Some(Instant::now());
                self.last_line = line;
            }
        }
    }

    /// Plain mode: the waiting reasons when they change, and a line per running task
    /// whose row changed since its last line.
    fn plain_live(&mut self, summary: &SweepSummary, blocked: Vec<String>) {
        if blocked != self.last_blocked {
            for line in &blocked {
                eprintln!("{}: {line}", summary.sweep);
            }
            self.last_blocked = blocked;
        }
        let mut seen = HashSet::new();
        for running in &summary.running {
            let Some(task) = &running.task else { continue };
            let line = running_line(running);
            seen.insert(task.task_id.clone());
            if self.last_running.get(&task.task_id) != Some(&line) {
                eprintln!("{}: {line}", summary.sweep);
                self.last_running.insert(task.task_id.clone(), line);
            }
        }
        self.last_running.retain(|id, _| seen.contains(id));
    }

    fn finish(&self) {
        self.bar.finish();
        self.live.finish_and_clear();
        self.best.finish();
    }
}

/// Follows the sweep until it has ended and stays ended for `settle` (the coordinator
/// schedules final refits shortly after a grid stage ends). Returns the last summary.
pub async fn watch_until_done(
    client: &mut SweepClient,
    sweep: &str,
    settle: Duration,
    quiet: bool,
) -> Result<SweepSummary, CliError> {
    let mut display = Display::new(sweep, quiet);
    let mut retries = 0;
    let result = loop {
        match follow_stream(client, sweep, &mut display).await {
            Ok(Some(last)) if last.is_finished() => {
                tokio::time::sleep(settle).await;
                let now = get_summary(client, sweep).await?;
                display.update(&now);
                let total = |s: &SweepSummary| s.counts.as_ref().map_or(0, |c| c.total);
                if now.is_finished() && total(&now) == total(&last) {
                    break Ok(now);
                }
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(CliError::Unavailable(message)) => {
                retries += 1;
                if retries > MAX_STREAM_RETRIES {
                    break Err(CliError::Unavailable(message));
                }
                tracing::warn!(sweep, retries, reason = %message, "watch stream interrupted; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(other) => break Err(other),
        }
    };
    display.finish();
    result
}

async fn get_summary(client: &mut SweepClient, sweep: &str) -> Result<SweepSummary, CliError> {
    let request = GetSweepRequest { sweep: sweep.to_string() };
    super::client::retry_unavailable(|| {
        let mut client = client.clone();
        let request = request.clone();
        async move { client.get_sweep(request).await }
    })
    .await
    .map(|r| r.into_inner())
    .map_err(|s| CliError::from_status(&format!("sweep {sweep}"), s))
}

/// Reads the stream until it ends or reports an ended sweep; the last summary seen.
async fn follow_stream(
    client: &mut SweepClient,
    sweep: &str,
    display: &mut Display,
) -> Result<Option<SweepSummary>, CliError> {
    let mut stream = client
        .watch_sweep(WatchSweepRequest { sweep: sweep.to_string(), interval_ms: WATCH_INTERVAL_MS })
        .await
        .map_err(|s| CliError::from_status(&format!("watch {sweep}"), s))?
        .into_inner();
    let mut last = None;
    loop {
        match stream.message().await {
            Ok(Some(summary)) => {
                display.update(&summary);
                let finished = summary.is_finished();
                last = Some(summary);
                if finished {
                    return Ok(last);
                }
            }
            Ok(None) => return Ok(last),
            Err(status) => return Err(CliError::from_status(&format!("watch {sweep}"), status)),
        }
    }
}
