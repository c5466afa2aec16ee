//! `tsweep.v1.SweepService`: what users (the CLI) call.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};
use tsweep_proto::v1::sweep_service_server::SweepService;
use tsweep_proto::v1::{
    CancelSweepRequest, CancelSweepResponse, DeleteSweepRequest, DeleteSweepResponse, GetSweepRequest,
    ListSweepsRequest, ListSweepsResponse, ListTasksRequest, ListTasksResponse, RetrySweepRequest, RetrySweepResponse,
    StageCount, SubmitSweepRequest, SubmitSweepResponse, SweepSummary, WatchSweepRequest,
};

use super::state::{bounded, Shared};
use crate::error::CoordinatorError;
use crate::store::{Store, TaskState};
use crate::sweepfile;

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;
pub const DEFAULT_WATCH_INTERVAL_MS: u32 = 1000;
/// Watchers are never answered more often than this, however busy the sweep.
pub const MIN_WATCH_INTERVAL_MS: u32 = 100;

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

/// The sweep's summary with its best validation scores filled in.
async fn summary_with_best(store: &Store, sweep: &str) -> Result<SweepSummary, CoordinatorError> {
    bounded(async {
        let mut summary = store.summary(sweep).await?;
        if summary.best.is_empty() {
            summary.best = store.best_scores(sweep).await?;
        }
        Ok(summary)
    })
    .await
}

fn is_finished(summary: &SweepSummary) -> bool {
    matches!(summary.status.as_str(), "done" | "cancelled")
}

#[tonic::async_trait]
impl SweepService for SweepServiceImpl {
    async fn submit_sweep(
        &self,
        request: Request<SubmitSweepRequest>,
    ) -> Result<Response<SubmitSweepResponse>, Status> {
        let request = request.into_inner();
        let store = self.shared.store_for_call()?;
        let file_name = if request.file_name.is_empty() { "<sweep file>".to_string() } else { request.file_name };
        let base_dir = PathBuf::from(&request.base_dir);
        let allow_huge = request.allow_huge;
        let text = request.file_text;
        // Expansion of a big grid is CPU work: keep it off the async workers.
        let expanded =
            tokio::task::spawn_blocking(move || sweepfile::parse_and_expand(&text, &file_name, &base_dir, allow_huge))
                .await
                .map_err(|e| CoordinatorError::Internal(format!("sweep expansion task: {e}")))?
                .map_err(CoordinatorError::from)?;
        // Not bounded by STORE_CALL_TIMEOUT: a big grid takes many batches (each one bounded
        // by the store's response timeout); a repeated submit adds nothing.
        let outcome = store.submit(&expanded).await.map_err(CoordinatorError::from)?;
        info!(sweep = %outcome.sweep, total = outcome.total, added = outcome.added, existing = outcome.existing, reactivated = outcome.reactivated, "sweep submitted");
        self.shared.notify_sweep(&outcome.sweep);
        Ok(Response::new(SubmitSweepResponse {
            sweep: outcome.sweep,
            cells_total: outcome.total,
            cells_added: outcome.added,
            cells_existing: outcome.existing,
            per_stage: outcome
                .per_stage
                .into_iter()
                .map(|stage| StageCount { regime: stage.regime, stage: stage.stage, cells: stage.cells })
                .collect(),
        }))
    }

    async fn get_sweep(&self, request: Request<GetSweepRequest>) -> Result<Response<SweepSummary>, Status> {
        let request = request.into_inner();
        require_sweep(&request.sweep)?;
        let store = self.shared.store_for_call()?;
        Ok(Response::new(summary_with_best(&store, &request.sweep).await?))
    }

    async fn list_sweeps(&self, _request: Request<ListSweepsRequest>) -> Result<Response<ListSweepsResponse>, Status> {
        let store = self.shared.store_for_call()?;
        let sweeps = bounded(store.list_sweeps()).await?;
        Ok(Response::new(ListSweepsResponse { sweeps }))
    }

    async fn list_tasks(&self, request: Request<ListTasksRequest>) -> Result<Response<ListTasksResponse>, Status> {
        let request = request.into_inner();
        require_sweep(&request.sweep)?;
        let state = match request.state.trim() {
            "" => None,
            name => Some(TaskState::from_name(name).ok_or_else(|| {
                CoordinatorError::InvalidArgument(format!(
                    "unknown task state {name:?}: expected pending, leased, running, succeeded, failed or cancelled"
                ))
            })?),
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
        let request = request.into_inner();
        require_sweep(&request.sweep)?;
        let store = self.shared.store_for_call()?;
        let cancelled = bounded(store.cancel_sweep(&request.sweep)).await?;
        info!(sweep = %request.sweep, cancelled, "sweep cancelled");
        self.shared.notify_sweep(&request.sweep);
        Ok(Response::new(CancelSweepResponse { cancelled }))
    }

    async fn delete_sweep(
        &self,
        request: Request<DeleteSweepRequest>,
    ) -> Result<Response<DeleteSweepResponse>, Status> {
        let request = request.into_inner();
        require_sweep(&request.sweep)?;
        let store = self.shared.store_for_call()?;
        // Not bounded by STORE_CALL_TIMEOUT: one script over every task of the sweep (each
        // call bounded by the store's response timeout); a repeated delete is NOT_FOUND.
        let outcome = store.delete_sweep(&request.sweep, request.force).await.map_err(CoordinatorError::from)?;
        info!(sweep = %request.sweep, keys = outcome.keys_deleted, tasks = outcome.tasks_deleted, force = request.force, "sweep deleted");
        self.shared.notify_sweep(&request.sweep);
        Ok(Response::new(DeleteSweepResponse {
            keys_deleted: outcome.keys_deleted,
            tasks_deleted: outcome.tasks_deleted,
            cancelled: outcome.cancelled,
            checkpoint_dir: outcome.checkpoint_dir.unwrap_or_default(),
            leftovers_only: outcome.leftovers_only,
        }))
    }

    /// Neither `failed` nor `cancelled` set means both.
    async fn retry_sweep(&self, request: Request<RetrySweepRequest>) -> Result<Response<RetrySweepResponse>, Status> {
        let request = request.into_inner();
        require_sweep(&request.sweep)?;
        let (failed, cancelled) = match (request.failed, request.cancelled) {
            (false, false) => (true, true),
            flags => flags,
        };
        let store = self.shared.store_for_call()?;
        let requeued = bounded(store.retry_sweep(&request.sweep, failed, cancelled)).await?;
        info!(sweep = %request.sweep, requeued, failed, cancelled, "sweep retried");
        self.shared.notify_sweep(&request.sweep);
        Ok(Response::new(RetrySweepResponse { requeued }))
    }

    type WatchSweepStream = Pin<Box<dyn Stream<Item = Result<SweepSummary, Status>> + Send + 'static>>;

    /// A summary now, then one every interval and whenever a task of the sweep ends, until
    /// the sweep is done or cancelled (that last summary included), the client goes away
    /// or the server shuts down. While Redis is away the stream stays open and skips ticks.
    async fn watch_sweep(
        &self,
        request: Request<WatchSweepRequest>,
    ) -> Result<Response<Self::WatchSweepStream>, Status> {
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
    let mut finished = is_finished(&first);
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
                finished = is_finished(&summary);
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
