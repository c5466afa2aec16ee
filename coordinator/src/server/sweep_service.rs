//! `tsweep.v1.SweepService`: what users (the CLI) call.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};
use tsweep_proto::limits::CheckLimits;
use tsweep_proto::v1::sweep_service_server::SweepService;
use tsweep_proto::v1::{
    CancelSweepRequest, CancelSweepResponse, DeleteSweepRequest, DeleteSweepResponse, GetCurveRequest,
    GetCurveResponse, GetSweepRequest, ListSweepsRequest, ListSweepsResponse, ListTasksRequest, ListTasksResponse,
    RetrySweepRequest, RetrySweepResponse, StageCount, SubmitSweepRequest, SubmitSweepResponse, SweepStatus,
    SweepSummary, WatchSweepRequest,
};

use super::state::{bounded, bounded_for, Shared, STORE_CALL_TIMEOUT};
use crate::error::CoordinatorError;
use crate::store::{Budget, Store, SubmitOptions, TaskState, CURVE_POINTS_PER_TASK};
use crate::sweepfile;

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;
pub const DEFAULT_WATCH_INTERVAL_MS: u32 = 1000;
/// Watchers are never answered more often than this, however busy the sweep.
pub const MIN_WATCH_INTERVAL_MS: u32 = 100;
/// Longest budget a bulk call (submit, cancel, retry, delete) may ask for.
pub const MAX_BUDGET_MS: u32 = 4_000;

/// A bulk call's budget (0: none, the operation runs to its end) and how long the call
/// may wait on Redis in all: the budget plus one bounded store call.
fn budget(budget_ms: u32) -> (Budget, Option<Duration>) {
    match budget_ms {
        0 => (Budget::unlimited(), None),
        ms => {
            let budget = Duration::from_millis(u64::from(ms.min(MAX_BUDGET_MS)));
            (Budget::of(budget), Some(budget + STORE_CALL_TIMEOUT))
        }
    }
}

/// Runs a bulk store operation: bounded by its budget when it has one, else unbounded
/// (each of its scripts is short and bounded by the store's response timeout).
async fn bulk<T>(
    limit: Option<Duration>,
    operation: impl std::future::Future<Output = Result<T, crate::store::StoreError>>,
) -> Result<T, CoordinatorError> {
    match limit {
        Some(limit) => bounded_for(limit, operation).await,
        None => operation.await.map_err(CoordinatorError::from),
    }
}

#[derive(Clone)]
pub struct SweepServiceImpl {
    shared: Shared,
}

impl SweepServiceImpl {
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }
}

fn require_sweep(sweep: &str) -> Result<(), CoordinatorError> {
    if sweep.trim().is_empty() {
        return Err(CoordinatorError::InvalidArgument("sweep name is empty".into()));
    }
    Ok(())
}

/// The sweep's summary with its best validation scores, the running tasks with their
/// progress, and the live workers with the pending cells none of them can take (what
/// GetSweep and WatchSweep answer).
async fn summary_with_best(store: &Store, sweep: &str) -> Result<SweepSummary, CoordinatorError> {
    bounded(async {
        let mut summary = store.summary(sweep).await?;
        summary.best = store.best_scores(sweep).await?;
        let counts = summary.counts.unwrap_or_default();
        if counts.leased + counts.running > 0 {
            summary.running = store.running(sweep).await?;
        }
        let fit = store.pending_fit(sweep).await?;
        summary.workers = fit.workers;
        if summary.status() == SweepStatus::Active {
            summary.blocked = fit.blocked;
        }
        Ok(summary)
    })
    .await
}

/// A failed submission call's error, with how many cells of the file had landed when the
/// sweep is left `submitting` (so the user knows what is there and what to run).
async fn with_submit_progress(store: &Store, sweep: &str, error: CoordinatorError) -> CoordinatorError {
    match bounded(store.summary(sweep)).await {
        Ok(summary) if summary.status() == SweepStatus::Submitting => error.with_note(&format!(
            "{} of {} cells written; the sweep stays `submitting` (nothing of it is leased) until the file is submitted again",
            summary.submit_written, summary.submit_total
        )),
        _ => error,
    }
}

#[tonic::async_trait]
impl SweepService for SweepServiceImpl {
    async fn submit_sweep(
        &self,
        request: Request<SubmitSweepRequest>,
    ) -> Result<Response<SubmitSweepResponse>, Status> {
        request.get_ref().check_limits().map_err(CoordinatorError::from)?;
        let request = request.into_inner();
        let store = self.shared.store_for_call()?;
        let file_name = if request.file_name.is_empty() { "<sweep file>".to_string() } else { request.file_name };
        let base_dir = PathBuf::from(&request.base_dir);
        let allow_huge = request.allow_huge;
        let text = request.file_text;
        let name = file_name.clone();
        // Parsing and validating a big file is CPU work: keep it off the async workers. The
        // plan builds each cell when its batch is written, so memory stays bounded.
        let plan = tokio::task::spawn_blocking(move || sweepfile::parse_plan(&text, &name, &base_dir, allow_huge))
            .await
            .map_err(|e| CoordinatorError::Internal(format!("sweep parse task: {e}")))?
            .map_err(CoordinatorError::from)?;
        let (budget, limit) = budget(request.budget_ms);
        let options = SubmitOptions { start: request.start_cell, update: request.update, budget, file: file_name };
        let part = match bulk(limit, store.submit_part(&plan, &options)).await {
            Ok(part) => part,
            Err(error) => return Err(with_submit_progress(&store, &plan.name, error).await.into()),
        };
        info!(sweep = %part.sweep, total = part.total, next = part.next, complete = part.complete, added = part.added,
              existing = part.existing, changed = part.changed, updated = part.updated, resumed_at = part.resumed_at,
              "submission call");
        self.shared.notify_sweep(&part.sweep);
        Ok(Response::new(SubmitSweepResponse {
            sweep: part.sweep,
            cells_total: part.total,
            cells_added: part.added,
            cells_existing: part.existing,
            per_stage: part
                .per_stage
                .into_iter()
                .map(|stage| StageCount { regime: stage.regime.into(), stage: stage.stage.into(), cells: stage.cells })
                .collect(),
            next_cell: part.next,
            complete: part.complete,
            resumed_at: part.resumed_at,
            cells_changed: part.changed,
            cells_updated: part.updated,
            changes: part.changes,
            reactivated: part.reactivated,
        }))
    }

    async fn get_curve(&self, request: Request<GetCurveRequest>) -> Result<Response<GetCurveResponse>, Status> {
        request.get_ref().check_limits().map_err(CoordinatorError::from)?;
        let request = request.into_inner();
        require_sweep(&request.sweep)?;
        let store = self.shared.store_for_call()?;
        let points = bounded(store.curve(&request.sweep, &request.task_id)).await?;
        Ok(Response::new(GetCurveResponse { points, kept_at_most: CURVE_POINTS_PER_TASK }))
    }

    async fn get_sweep(&self, request: Request<GetSweepRequest>) -> Result<Response<SweepSummary>, Status> {
        request.get_ref().check_limits().map_err(CoordinatorError::from)?;
        let request = request.into_inner();
        require_sweep(&request.sweep)?;
        let store = self.shared.store_for_call()?;
        Ok(Response::new(summary_with_best(&store, &request.sweep).await?))
    }

    async fn list_sweeps(&self, request: Request<ListSweepsRequest>) -> Result<Response<ListSweepsResponse>, Status> {
        request.get_ref().check_limits().map_err(CoordinatorError::from)?;
        let store = self.shared.store_for_call()?;
        let sweeps = bounded(store.list_sweeps()).await?;
        Ok(Response::new(ListSweepsResponse { sweeps }))
    }

    async fn list_tasks(&self, request: Request<ListTasksRequest>) -> Result<Response<ListTasksResponse>, Status> {
        request.get_ref().check_limits().map_err(CoordinatorError::from)?;
        let request = request.into_inner();
        require_sweep(&request.sweep)?;
        let state = match TaskState::try_from(request.state) {
            Ok(TaskState::Unspecified) => None,
            Ok(state) => Some(state),
            Err(_) => {
                return Err(CoordinatorError::InvalidArgument(format!(
                    "unknown task state {}: expected one of {}",
                    request.state,
                    TaskState::NAMES.join(", ")
                ))
                .into())
            }
        };
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        let store = self.shared.store_for_call()?;
        let page = bounded(store.list_tasks(&request.sweep, state, page_size, &request.page_token)).await?;
        Ok(Response::new(ListTasksResponse { tasks: page.tasks, next_page_token: page.next_page_token }))
    }

    async fn cancel_sweep(
        &self,
        request: Request<CancelSweepRequest>,
    ) -> Result<Response<CancelSweepResponse>, Status> {
        request.get_ref().check_limits().map_err(CoordinatorError::from)?;
        let request = request.into_inner();
        require_sweep(&request.sweep)?;
        let store = self.shared.store_for_call()?;
        let (budget, limit) = budget(request.budget_ms);
        let progress = bulk(limit, store.cancel_part(&request.sweep, budget)).await?;
        info!(sweep = %request.sweep, cancelled = progress.moved, remaining = progress.remaining, "sweep cancel call");
        self.shared.notify_sweep(&request.sweep);
        Ok(Response::new(CancelSweepResponse {
            cancelled: progress.moved,
            complete: progress.complete,
            remaining: progress.remaining,
        }))
    }

    async fn delete_sweep(
        &self,
        request: Request<DeleteSweepRequest>,
    ) -> Result<Response<DeleteSweepResponse>, Status> {
        request.get_ref().check_limits().map_err(CoordinatorError::from)?;
        let request = request.into_inner();
        require_sweep(&request.sweep)?;
        let store = self.shared.store_for_call()?;
        // Batches of short scripts; with a budget the call answers how far it got and the
        // client calls again. A repeated delete of a deleted sweep is NOT_FOUND.
        let (budget, limit) = budget(request.budget_ms);
        let outcome = bulk(limit, store.delete_part(&request.sweep, request.force, budget)).await?;
        info!(sweep = %request.sweep, keys = outcome.keys_deleted, tasks = outcome.tasks_deleted,
              tasks_total = outcome.tasks_total, complete = outcome.complete, force = request.force, "sweep delete call");
        self.shared.notify_sweep(&request.sweep);
        Ok(Response::new(DeleteSweepResponse {
            keys_deleted: outcome.keys_deleted,
            tasks_deleted: outcome.tasks_deleted,
            cancelled: outcome.cancelled,
            checkpoint_dir: outcome.checkpoint_dir.unwrap_or_default(),
            leftovers_only: outcome.leftovers_only,
            complete: outcome.complete,
            tasks_total: outcome.tasks_total,
        }))
    }

    /// Neither `failed` nor `cancelled` set means both.
    async fn retry_sweep(&self, request: Request<RetrySweepRequest>) -> Result<Response<RetrySweepResponse>, Status> {
        request.get_ref().check_limits().map_err(CoordinatorError::from)?;
        let request = request.into_inner();
        require_sweep(&request.sweep)?;
        let (failed, cancelled) = match (request.failed, request.cancelled) {
            (false, false) => (true, true),
            flags => flags,
        };
        let store = self.shared.store_for_call()?;
        let (budget, limit) = budget(request.budget_ms);
        let progress = bulk(limit, store.retry_part(&request.sweep, failed, cancelled, budget)).await?;
        info!(sweep = %request.sweep, requeued = progress.moved, remaining = progress.remaining, failed, cancelled,
              "sweep retry call");
        self.shared.notify_sweep(&request.sweep);
        Ok(Response::new(RetrySweepResponse {
            requeued: progress.moved,
            complete: progress.complete,
            remaining: progress.remaining,
        }))
    }

    type WatchSweepStream = Pin<Box<dyn Stream<Item = Result<SweepSummary, Status>> + Send + 'static>>;

    /// A summary now, then one every interval and whenever a task of the sweep ends, until
    /// the sweep is done or cancelled (that last summary included), the client goes away
    /// or the server shuts down. While Redis is away the stream stays open and skips ticks.
    async fn watch_sweep(
        &self,
        request: Request<WatchSweepRequest>,
    ) -> Result<Response<Self::WatchSweepStream>, Status> {
        request.get_ref().check_limits().map_err(CoordinatorError::from)?;
        let request = request.into_inner();
        require_sweep(&request.sweep)?;
        let store = self.shared.store_for_call()?;
        let interval_ms = match request.interval_ms {
            0 => DEFAULT_WATCH_INTERVAL_MS,
            ms => ms.max(MIN_WATCH_INTERVAL_MS),
        };
        // The first summary is fetched here so that an unknown sweep is NOT_FOUND at once.
        let first = summary_with_best(&store, &request.sweep).await?;
        let (sender, receiver) = mpsc::channel(4);
        let events = self.shared.sweep_events.subscribe();
        let cancel = self.shared.cancel.clone();
        tokio::spawn(watch_loop(
            store,
            request.sweep,
            first,
            Duration::from_millis(u64::from(interval_ms)),
            events,
            cancel,
            sender,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

async fn watch_loop(
    store: Store,
    sweep: String,
    first: SweepSummary,
    interval: Duration,
    mut events: broadcast::Receiver<String>,
    cancel: tokio_util::sync::CancellationToken,
    sender: mpsc::Sender<Result<SweepSummary, Status>>,
) {
    let mut finished = first.is_finished();
    if sender.send(Ok(first)).await.is_err() {
        return;
    }
    let min_gap = Duration::from_millis(u64::from(MIN_WATCH_INTERVAL_MS));
    while !finished {
        let tick = tokio::time::sleep(interval);
        tokio::pin!(tick);
        // Wait for the tick, or for an event of this sweep (then no sooner than min_gap).
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = sender.closed() => return,
                _ = &mut tick => break,
                event = events.recv() => match event {
                    Ok(name) if name == sweep => {
                        tokio::time::sleep(min_gap).await;
                        break;
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => {
                        (&mut tick).await;
                        break;
                    }
                },
            }
        }
        match summary_with_best(&store, &sweep).await {
            Ok(summary) => {
                finished = summary.is_finished();
                if sender.send(Ok(summary)).await.is_err() {
                    return;
                }
            }
            Err(error) if error.is_retryable() => {
                debug!(sweep = %sweep, %error, "watch tick skipped: store unavailable");
            }
            Err(error) => {
                warn!(sweep = %sweep, %error, "watch ended");
                let _ = sender.send(Err(error.into())).await;
                return;
            }
        }
    }
}
