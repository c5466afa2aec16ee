//! The CLI side of big operations (submit, cancel, retry, delete): the coordinator does a
//! bounded part per call ([`CALL_BUDGET_MS`]) and says how far it got; these loops call
//! again until the operation is complete, show progress on a terminal, and when they are
//! interrupted (Ctrl-C, SIGTERM) or a call fails, say what was done and that running the
//! same command again finishes it.

use std::cell::Cell;
use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tsweep_proto::v1::{
    CancelSweepRequest, DeleteSweepRequest, DeleteSweepResponse, RetrySweepRequest, SubmitSweepResponse,
};

use super::client::{retry_unavailable, SweepClient};
use super::error::CliError;
use super::{wait_for_shutdown_signal, SweepSource};

/// How long the coordinator works on one call before it answers how far it got.
pub const CALL_BUDGET_MS: u32 = 2_000;

/// A progress bar on stderr when it is a terminal; nothing otherwise (scripts and logs
/// get the final lines only).
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new(what: String) -> Progress {
        let target =
            if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let style = ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(Some(0), target).with_style(style).with_prefix(what);
        Progress { bar }
    }

    fn set(&self, done: u64, total: u64, message: &str) {
        self.bar.set_length(total);
        self.bar.set_position(done);
        self.bar.set_message(message.to_string());
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Runs `operation` until it ends or a shutdown signal arrives; then `interrupted` says
/// what was done.
async fn unless_interrupted<T>(
    operation: impl std::future::Future<Output = Result<T, CliError>>,
    interrupted: impl FnOnce() -> String,
) -> Result<T, CliError> {
    tokio::select! {
        result = operation => result,
        _ = wait_for_shutdown_signal() => Err(CliError::Other(format!("interrupted: {}", interrupted()))),
    }
}

/// Submits the whole file, a bounded part per call. A call that fails as unavailable is
/// repeated from cell 0: the coordinator finds the submission's marker and goes on where
/// the last landed batch stopped. Returns the counts of every call added up.
pub async fn submit(
    client: &SweepClient,
    source: &SweepSource,
    allow_huge: bool,
    update: bool,
) -> Result<SubmitSweepResponse, CliError> {
    let sum = Cell::new(None::<SubmitSweepResponse>);
    let progress = Progress::new(format!("submit {}", source.file_name));
    let rerun =
        format!("run `tsweep submit {}{}` again to finish it", if update { "--update " } else { "" }, source.file_name);
    let run = async {
        let mut start = 0;
        loop {
            let calls = Cell::new(0u32);
            let response = retry_unavailable(|| {
                let mut client = client.clone();
                let mut request = source.request(allow_huge);
                request.start_cell = if calls.get() == 0 { start } else { 0 };
                request.budget_ms = CALL_BUDGET_MS;
                request.update = update;
                calls.set(calls.get() + 1);
                async move { client.submit_sweep(request).await }
            })
            .await
            .map_err(|status| {
                // The coordinator's message says how many cells landed; a refused file
                // (bad input) has nothing to finish.
                let error = CliError::from_status(&format!("submit {}", source.file_name), status);
                match error {
                    CliError::BadInput(_) => error,
                    error => error.with_note(&rerun),
                }
            })?
            .into_inner();
            let mut total = sum.take().unwrap_or_else(|| SubmitSweepResponse {
                resumed_at: response.resumed_at,
                ..SubmitSweepResponse::default()
            });
            add_submit(&mut total, response);
            progress.set(total.next_cell, total.cells_total, "cells written");
            start = total.next_cell;
            let complete = total.complete;
            sum.set(Some(total));
            if complete {
                return Ok(());
            }
        }
    };
    unless_interrupted(run, || match sum.take() {
        Some(sum) => format!(
            "{} of {} cells of {} written; the sweep stays `submitting` until it is finished: {rerun}",
            sum.next_cell, sum.cells_total, sum.sweep
        ),
        None => format!("nothing was confirmed written; {rerun}"),
    })
    .await?;
    Ok(sum.take().unwrap_or_default())
}

/// Adds one call's answer to the running sum.
fn add_submit(sum: &mut SubmitSweepResponse, part: SubmitSweepResponse) {
    sum.sweep = part.sweep;
    sum.cells_total = part.cells_total;
    sum.cells_added += part.cells_added;
    sum.cells_existing += part.cells_existing;
    sum.cells_changed += part.cells_changed;
    sum.cells_updated += part.cells_updated;
    sum.reactivated += part.reactivated;
    sum.next_cell = part.next_cell;
    sum.complete = part.complete;
    if sum.per_stage.is_empty() {
        sum.per_stage = part.per_stage;
    }
    crate::store::merge_changes(&mut sum.changes, part.changes);
}

/// How far a cancel or retry got: cells moved so far, cells still to move.
#[derive(Debug, Clone, Copy, Default)]
pub struct Moved {
    pub moved: u64,
    pub remaining: u64,
    pub complete: bool,
}

/// Calls `call` (one bounded part of a cancel or retry) until the operation is complete,
/// adding up what each part moved. `what` names the command in messages; `done` says
/// what a stopped operation leaves (the sweep's state, cells moved and to go).
async fn move_cells<F, Fut>(
    what: &str,
    noun: &str,
    done: impl Fn(&Moved) -> String,
    mut call: F,
) -> Result<Moved, CliError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Moved, tonic::Status>>,
{
    let sum = Cell::new(Moved::default());
    let progress = Progress::new(what.to_string());
    let run = async {
        loop {
            let part = retry_unavailable(&mut call).await.map_err(|status| {
                let so_far = sum.get();
                let error = CliError::from_status(what, status);
                if so_far.moved > 0 {
                    error.with_note(&done(&so_far))
                } else {
                    error
                }
            })?;
            let mut total = sum.get();
            total.moved += part.moved;
            total.remaining = part.remaining;
            total.complete = part.complete;
            progress.set(total.moved, total.moved + total.remaining, noun);
            sum.set(total);
            if total.complete {
                return Ok(());
            }
        }
    };
    unless_interrupted(run, || done(&sum.get())).await?;
    Ok(sum.get())
}

/// Cancels the sweep, a bounded part per call (the first one already stops new work).
pub async fn cancel(client: &SweepClient, sweep: &str) -> Result<Moved, CliError> {
    let request = CancelSweepRequest { sweep: sweep.to_string(), budget_ms: CALL_BUDGET_MS };
    let done = |m: &Moved| {
        format!(
            "sweep {sweep} is cancelled (nothing new starts); {} pending cells moved to cancelled, {} to go: run `tsweep cancel {sweep}` again to finish",
            m.moved, m.remaining
        )
    };
    move_cells(&format!("cancel {sweep}"), "pending cells cancelled", done, || {
        let mut client = client.clone();
        let request = request.clone();
        async move {
            let part = client.cancel_sweep(request).await?.into_inner();
            Ok(Moved { moved: part.cancelled, remaining: part.remaining, complete: part.complete })
        }
    })
    .await
}

/// Puts failed and/or cancelled cells back to pending, a bounded part per call.
pub async fn retry(client: &SweepClient, sweep: &str, failed: bool, cancelled: bool) -> Result<Moved, CliError> {
    let request = RetrySweepRequest { sweep: sweep.to_string(), failed, cancelled, budget_ms: CALL_BUDGET_MS };
    let done = |m: &Moved| {
        format!(
            "{} cells of {sweep} back to pending, {} to go: run `tsweep retry {sweep}` again to finish",
            m.moved, m.remaining
        )
    };
    move_cells(&format!("retry {sweep}"), "cells back to pending", done, || {
        let mut client = client.clone();
        let request = request.clone();
        async move {
            let part = client.retry_sweep(request).await?.into_inner();
            Ok(Moved { moved: part.requeued, remaining: part.remaining, complete: part.complete })
        }
    })
    .await
}

/// Deletes the sweep, a bounded part per call. A call whose answer was lost (UNAVAILABLE)
/// may have finished the delete: NOT_FOUND on the retry then means deleted, not an error.
pub async fn delete(client: &SweepClient, sweep: &str, force: bool) -> Result<DeleteSweepResponse, CliError> {
    let sum = Cell::new(DeleteSweepResponse::default());
    let progress = Progress::new(format!("delete {sweep}"));
    let rerun = format!("run `tsweep delete {sweep}` again to finish (it shows as `deleting` until then)");
    let run = async {
        let mut began = false;
        loop {
            let request = DeleteSweepRequest { sweep: sweep.to_string(), force, budget_ms: CALL_BUDGET_MS };
            let calls = Cell::new(0u32);
            let answer = retry_unavailable(|| {
                let mut client = client.clone();
                let request = request.clone();
                calls.set(calls.get() + 1);
                async move { client.delete_sweep(request).await }
            })
            .await;
            let response = match answer {
                Ok(response) => response.into_inner(),
                Err(status) if status.code() == tonic::Code::NotFound && (began || calls.get() > 1) => {
                    // An earlier call (whose answer was lost) finished the delete.
                    let mut total = sum.take();
                    total.complete = true;
                    sum.set(total);
                    return Ok(());
                }
                Err(status) => {
                    let done = sum.take();
                    let error = CliError::from_status(&format!("delete {sweep}"), status);
                    return Err(if began {
                        error.with_note(&format!(
                            "{} of {} cells deleted so far: {rerun}",
                            done.tasks_deleted, done.tasks_total
                        ))
                    } else {
                        error
                    });
                }
            };
            began = began || response.tasks_total > 0 || response.keys_deleted > 0;
            let mut total = sum.take();
            total.cancelled += response.cancelled;
            total.keys_deleted = response.keys_deleted;
            total.tasks_deleted = response.tasks_deleted;
            total.tasks_total = response.tasks_total.max(total.tasks_total);
            total.checkpoint_dir = response.checkpoint_dir;
            total.leftovers_only = response.leftovers_only;
            total.complete = response.complete;
            progress.set(total.tasks_deleted, total.tasks_total, "cells deleted");
            let complete = total.complete;
            sum.set(total);
            if complete {
                return Ok(());
            }
        }
    };
    unless_interrupted(run, || {
        let done = sum.take();
        format!("{} of {} cells of {sweep} deleted: {rerun}", done.tasks_deleted, done.tasks_total)
    })
    .await?;
    Ok(sum.take())
}
