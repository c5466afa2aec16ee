//! The lease protocol's transitions, one Lua script each (`lua/`): acquire, renew (the
//! heartbeat), complete and fail (fenced reports), and the reaper that takes expired
//! leases back. See the module docs of [`super`] for the protocol in short.

use super::replies::{AcquireReply, LeasedTask, LostLease, ReapReply, RenewAnswer, ReportReply};
use super::*;

impl Store {
    /// Leases the first pending task that needs at most `free_gpus` GPUs, going round the
    /// active sweeps (one script call per sweep, starting one sweep further each call).
    /// None when nothing fits now.
    pub async fn acquire(&self, worker_id: &str, free_gpus: u32) -> Result<Option<TaskAssignment>, StoreError> {
        if worker_id.is_empty() {
            return Err(StoreError::InvalidArgument("acquire: empty worker id".into()));
        }
        let sweeps = self.sorted_members(self.keys.active(), "smembers active").await?;
        if sweeps.is_empty() {
            return Ok(None);
        }
        let mut conn = self.conn.clone();
        let start = self.round_robin.fetch_add(1, Ordering::Relaxed);
        let ttl_ms = self.lease_ttl_ms();
        for offset in 0..sweeps.len() {
            let sweep = &sweeps[(start + offset) % sweeps.len()];
            let reply: AcquireReply = SCRIPTS
                .acquire
                .key(self.keys.sweep_base(sweep))
                .arg(worker_id)
                .arg(free_gpus)
                .arg(ttl_ms)
                .invoke_async(&mut conn)
                .await
                .map_err(StoreError::redis("acquire script"))?;
            match reply {
                AcquireReply::Leased(LeasedTask { task_id, attempt, spec_json, gpus, resume }) => {
                    debug!(sweep = %sweep, task_id = %task_id, attempt, worker = %worker_id, "leased");
                    return Ok(Some(TaskAssignment {
                        sweep: sweep.clone(),
                        task_id,
                        attempt,
                        spec_json,
                        gpus,
                        resume,
                        lease_ttl_ms: ttl_ms,
                    }));
                }
                AcquireReply::Idle => self.deactivate_if_idle(sweep).await?,
                AcquireReply::NothingFits => {}
            }
        }
        Ok(None)
    }

    /// The heartbeat: extends every lease the worker still holds; answers a stop order
    /// for each lease it lost (`LEASE_LOST`) or whose sweep was cancelled (`CANCELLED`).
    /// One script call per sweep.
    pub async fn renew(&self, worker_id: &str, leases: &[HeldLease]) -> Result<Vec<StopOrder>, StoreError> {
        if worker_id.is_empty() {
            return Err(StoreError::InvalidArgument("renew: empty worker id".into()));
        }
        let mut by_sweep: BTreeMap<&str, Vec<(&LeaseRef, &HeldLease)>> = BTreeMap::new();
        for held in leases {
            if let Some(lease) = held.lease.as_ref() {
                by_sweep.entry(lease.sweep.as_str()).or_default().push((lease, held));
            }
        }
        self.touch_worker(worker_id).await?;
        let mut conn = self.conn.clone();
        let mut stops = Vec::new();
        for (sweep, held) in by_sweep {
            if validate_sweep_name(sweep).is_err() {
                stops.extend(held.iter().map(|(lease, _)| stop(lease, StopReason::LeaseLost)));
                continue;
            }
            let mut invocation = SCRIPTS.renew.key(self.keys.sweep_base(sweep));
            invocation.arg(worker_id).arg(self.lease_ttl_ms());
            for (lease, h) in &held {
                invocation
                    .arg(&lease.task_id)
                    .arg(lease.attempt)
                    .arg(if h.running { "1" } else { "0" })
                    .arg(h.checkpoint.as_ref().map_or("", |c| c.path.as_str()))
                    .arg(h.checkpoint.as_ref().map_or(0, |c| c.step))
                    .arg(&h.resume_error);
            }
            let answers: Vec<RenewAnswer> =
                invocation.invoke_async(&mut conn).await.map_err(StoreError::redis("renew script"))?;
            for ((lease, _), answer) in held.iter().zip(answers) {
                match answer {
                    RenewAnswer::Held => {}
                    RenewAnswer::Cancelled => stops.push(stop(lease, StopReason::Cancelled)),
                    RenewAnswer::Lost => {
                        debug!(sweep = %sweep, task_id = %lease.task_id, attempt = lease.attempt, worker = %worker_id, "lease lost");
                        stops.push(stop(lease, StopReason::LeaseLost));
                    }
                }
            }
        }
        Ok(stops)
    }

    /// Records a result. Fenced: `ACCEPTED` only from the worker holding the current
    /// attempt's lease; the same attempt again after its success is `DUPLICATE`;
    /// anything else `STALE` (counted in the sweep's `stale_reports`).
    pub async fn complete(
        &self,
        worker_id: &str,
        lease: &LeaseRef,
        result: &TaskResult,
    ) -> Result<ReportOutcome, StoreError> {
        validate_report(worker_id, lease)?;
        let result = finite_result(result);
        let result_json =
            serde_json::to_string(&result).map_err(|source| StoreError::Json { what: "task result", source })?;
        let val = result.val_score.filter(|v| v.is_finite()).map(|v| v.to_string()).unwrap_or_default();
        let mut conn = self.conn.clone();
        let ReportReply { outcome, .. } = self
            .report_invocation(&SCRIPTS.complete, worker_id, lease)
            .arg(result_json)
            .arg(val)
            .arg(if result.diverged { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::redis("complete script"))?;
        match outcome {
            ReportOutcome::Stale => {
                warn!(sweep = %lease.sweep, task_id = %lease.task_id, attempt = lease.attempt, worker = %worker_id, "stale completion refused")
            }
            _ => {
                debug!(sweep = %lease.sweep, task_id = %lease.task_id, attempt = lease.attempt, outcome = ?outcome, "completion")
            }
        }
        Ok(outcome)
    }

    /// Records a classified failure of the current attempt (fenced like `complete`) and
    /// the attempt's last checkpoint. Lost worker / preempted: back to pending, not
    /// counted; retryable: counted, pending while budget remains; out of memory: counted
    /// like retryable, and the task's second OOM fails it; fatal: failed now.
    pub async fn fail(
        &self,
        worker_id: &str,
        lease: &LeaseRef,
        class: FailureClass,
        message: &str,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<FailOutcome, StoreError> {
        self.fail_with_resume_error(worker_id, lease, class, message, checkpoint, "").await
    }

    /// As [`Store::fail`], for an attempt that could not read the checkpoint it was to
    /// resume from (`resume_error`, recorded on the task; see [`Store::renew`]).
    pub async fn fail_with_resume_error(
        &self,
        worker_id: &str,
        lease: &LeaseRef,
        class: FailureClass,
        message: &str,
        checkpoint: Option<&Checkpoint>,
        resume_error: &str,
    ) -> Result<FailOutcome, StoreError> {
        validate_report(worker_id, lease)?;
        let (path, step) = checkpoint.map(|c| (c.path.as_str(), c.step)).unwrap_or(("", 0));
        let mut conn = self.conn.clone();
        let ReportReply { outcome, state } = self
            .report_invocation(&SCRIPTS.fail, worker_id, lease)
            .arg(class.name())
            .arg(message)
            .arg(path)
            .arg(step)
            .arg(self.options.max_lost_attempts.max(1))
            .arg(resume_error)
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::redis("fail script"))?;
        info!(sweep = %lease.sweep, task_id = %lease.task_id, attempt = lease.attempt, worker = %worker_id,
            class = class.name(), outcome = ?outcome, state = ?state, "failure reported");
        Ok(FailOutcome { outcome, state })
    }

    /// A fenced report's script call (complete, fail) with the lease in place: the sweep's
    /// key, then worker, task and attempt, the arguments every report script starts with.
    fn report_invocation<'a>(
        &self,
        script: &'a redis::Script,
        worker_id: &str,
        lease: &LeaseRef,
    ) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.key(self.keys.sweep_base(&lease.sweep));
        invocation.arg(worker_id).arg(&lease.task_id).arg(lease.attempt);
        invocation
    }

    /// Takes back every lease of the sweep whose deadline (Redis server time) has passed:
    /// the task goes back to pending as a lost worker, not counted against its budget.
    /// Control-plane outages ([`Store::beat`]) the sweep has not seen yet are applied
    /// first, in the same script: leases nobody could renew are extended by the outage.
    /// Safe to run from several coordinators at once. Returns how many were taken back.
    pub async fn reap_expired(&self, sweep: &str) -> Result<u64, StoreError> {
        let outages = self.outages().await?;
        self.reap_sweep(sweep, &outages).await
    }

    async fn reap_sweep(&self, sweep: &str, outages: &[Outage]) -> Result<u64, StoreError> {
        validate_sweep_name(sweep)?;
        let mut conn = self.conn.clone();
        let mut total = 0u64;
        loop {
            let mut invocation = SCRIPTS.reap.key(self.keys.sweep_base(sweep));
            invocation
                .arg(self.options.max_lost_attempts.max(1))
                .arg(self.options.bulk_batch.max(1))
                .arg(self.lease_ttl_ms());
            for outage in outages {
                invocation.arg(outage.start_ms).arg(outage.end_ms);
            }
            let reply: ReapReply =
                invocation.invoke_async(&mut conn).await.map_err(StoreError::redis("reap script"))?;
            if reply.extended > 0 {
                info!(sweep = %sweep, leases = reply.extended, outage_ms = reply.dark_ms,
                      "leases extended by the control-plane outage before reaping");
            }
            for LostLease { task_id, worker, attempt, state } in &reply.lost {
                if state == "leased" {
                    info!(sweep = %sweep, task_id = %task_id, worker = %worker, attempt = %attempt,
                          "lease expired before its worker started it (the worker died first, or the acquire reply never reached it): task back to pending");
                } else {
                    info!(sweep = %sweep, task_id = %task_id, worker = %worker, attempt = %attempt,
                          "lease expired: attempt lost, task back to pending");
                }
            }
            total += reply.reaped;
            if !reply.more {
                break;
            }
        }
        if total > 0 {
            info!(sweep = %sweep, reaped = total, "expired leases taken back");
        }
        Ok(total)
    }

    /// [`Store::reap_expired`] over every active sweep.
    pub async fn reap_all(&self) -> Result<u64, StoreError> {
        let outages = self.outages().await?;
        let mut total = 0;
        for sweep in self.active_sweeps().await? {
            total += self.reap_sweep(&sweep, &outages).await?;
        }
        Ok(total)
    }

    /// Sweeps that may have work (pending, leased or running tasks, or a selection
    /// waiting); what the timers (reaper, finals) go over.
    pub async fn active_sweeps(&self) -> Result<Vec<String>, StoreError> {
        self.sorted_members(self.keys.active(), "smembers active").await
    }

    /// Counts a metrics record of an attempt that no longer holds its lease.
    pub async fn record_stale_metric(&self, sweep: &str) -> Result<(), StoreError> {
        validate_sweep_name(sweep)?;
        let mut conn = self.conn.clone();
        let _: String = SCRIPTS
            .stale_metric
            .key(self.keys.sweep_base(sweep))
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::redis("stale_metric script"))?;
        Ok(())
    }

    /// Whether `attempt` is the task's current lease (leased or running): metrics of any
    /// other attempt are stale.
    pub async fn is_current_attempt(&self, sweep: &str, task_id: &str, attempt: u32) -> Result<bool, StoreError> {
        validate_sweep_name(sweep)?;
        let mut conn = self.conn.clone();
        let (state, current): (Option<String>, Option<u32>) = redis::cmd("HMGET")
            .arg(self.keys.task(sweep, task_id))
            .arg("state")
            .arg("attempt")
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("hmget task attempt"))?;
        Ok(matches!(state.as_deref(), Some("leased") | Some("running")) && current == Some(attempt))
    }
}

fn validate_report(worker_id: &str, lease: &LeaseRef) -> Result<(), StoreError> {
    validate_sweep_name(&lease.sweep)?;
    if worker_id.is_empty() {
        return Err(StoreError::InvalidArgument("report: empty worker id".into()));
    }
    if lease.task_id.is_empty() {
        return Err(StoreError::InvalidArgument("report: empty task id".into()));
    }
    Ok(())
}

fn stop(lease: &LeaseRef, reason: StopReason) -> StopOrder {
    StopOrder { lease: Some(lease.clone()), reason: reason as i32 }
}

/// JSON has no NaN or infinity: non-finite optional scores become unset, other
/// non-finite numbers 0 (a diverged run says so with `diverged`).
fn finite_result(result: &TaskResult) -> TaskResult {
    let finite_opt = |v: Option<f64>| v.filter(|x| x.is_finite());
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    let mut clean = result.clone();
    clean.val_score = finite_opt(result.val_score);
    clean.test_score = finite_opt(result.test_score);
    clean.train_loss = finite_opt(result.train_loss);
    clean.backbone_top1 = finite_opt(result.backbone_top1);
    clean.images_per_s = finite(result.images_per_s);
    clean.duration_s = finite(result.duration_s);
    clean.selected.retain(|_, v| v.is_finite());
    clean.extra.retain(|_, v| v.is_finite());
    clean
}
