//! Reads for users: a sweep's summary, its tasks page by page, one task, the best-score
//! board, the pretrain stage; and how a task hash becomes a `TaskInfo`.

use super::*;

impl Store {
    /// The sweep's counts and status in O(1), without the best-score board (which has an
    /// entry per model, dataset and regime: [`Store::best_scores`]). Status `submitting`
    /// while a submission has not landed its last batch, `deleting` while a delete has not
    /// finished.
    pub async fn summary(&self, sweep: &str) -> Result<SweepSummary, StoreError> {
        validate_sweep_name(sweep)?;
        let mut conn = self.conn.clone();
        type Fields = HashMap<String, String>;
        let (mut meta, counts, closed): (Fields, Fields, u64) = redis::pipe()
            .hgetall(self.keys.meta(sweep))
            .hgetall(self.keys.counts(sweep))
            .scard(self.keys.closed(sweep))
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("read summary"))?;
        let deleting = meta.is_empty();
        if deleting {
            meta = conn.hgetall(self.keys.deleting(sweep)).await.map_err(StoreError::redis("read tombstone"))?;
        }
        if meta.is_empty() {
            return Err(StoreError::SweepNotFound { sweep: sweep.to_string() });
        }
        let count = |state: &str| counts.get(state).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0).max(0) as u64;
        let counts = TaskCounts {
            pending: count("pending"),
            leased: count("leased"),
            running: count("running"),
            succeeded: count("succeeded"),
            failed: count("failed"),
            cancelled: count("cancelled"),
            total: count("total"),
        };
        let meta_num = |field: &str| meta.get(field).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let in_flight = counts.pending + counts.leased + counts.running;
        let submitting = meta.contains_key("submit_fp");
        let cancelled = meta.get("status").map(String::as_str) == Some(SweepStatus::Cancelled.name());
        let status = match () {
            _ if deleting => SweepStatus::Deleting,
            _ if submitting => SweepStatus::Submitting,
            _ if cancelled => SweepStatus::Cancelled,
            _ if in_flight == 0 && closed == 0 => SweepStatus::Done,
            _ => SweepStatus::Active,
        };
        let pretrain = self.pretrain_status(sweep, cancelled).await?;
        Ok(SweepSummary {
            sweep: sweep.to_string(),
            status: status.into(),
            counts: Some(counts),
            stale_reports: meta_num("stale_reports").max(0) as u64,
            lease_expiries: meta_num("lease_expiries").max(0) as u64,
            created_unix_ms: meta_num("created_ms"),
            submit_written: if submitting { meta_num("submit_next").max(0) as u64 } else { 0 },
            submit_total: if submitting { meta_num("submit_total").max(0) as u64 } else { 0 },
            submit_file: if submitting { meta.get("submit_file").cloned().unwrap_or_default() } else { String::new() },
            pretrain,
            ..SweepSummary::default()
        })
    }

    /// The sweep's pretrain cells with their state and the transfer cells that wait for
    /// them (all of a cell's dependents while it has not ended; none in a cancelled
    /// sweep). One read per pretrain cell: a sweep has few.
    pub async fn pretrain_status(&self, sweep: &str, cancelled: bool) -> Result<Vec<PretrainStatus>, StoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> =
            conn.smembers(self.keys.pretrains(sweep)).await.map_err(StoreError::redis("smembers pretrains"))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET").arg(self.keys.task(sweep, id)).arg(&["state", "spec", "result", "error"]);
            pipe.scard(self.keys.dependents(sweep, id));
        }
        let replies: Vec<redis::Value> =
            pipe.query_async(&mut conn).await.map_err(StoreError::redis("read pretrain cells"))?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, pair) in ids.iter().zip(replies.chunks(2)) {
            let key = self.keys.task(sweep, id);
            let corrupt = |detail: String| StoreError::Corrupt { key: key.clone(), field: "pretrain".into(), detail };
            let [row, deps] = pair else { return Err(corrupt("short reply".into())) };
            let row: Vec<Option<String>> =
                redis::from_redis_value(row.clone()).map_err(|e| corrupt(format!("fields: {e}")))?;
            let dependents: u64 = redis::from_redis_value(deps.clone()).map_err(|e| corrupt(format!("scard: {e}")))?;
            let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
            let state = TaskState::from_name(&field(0)).unwrap_or_default();
            let spec: serde_json::Value = serde_json::from_str(&field(1)).unwrap_or_default();
            let name_of = |part: &str| spec[part]["name"].as_str().unwrap_or_default().to_string();
            let test_score = serde_json::from_str::<TaskResult>(&field(2)).ok().and_then(|r| r.test_score);
            let open = state != TaskState::Unspecified && !state.is_terminal();
            out.push(PretrainStatus {
                task_id: id.clone(),
                model: name_of("model"),
                dataset: name_of("dataset"),
                waiting: if open && !cancelled { dependents } else { 0 },
                state: state.into(),
                test_score,
                dependents,
                error: field(3),
            });
        }
        out.sort_by(|a, b| (&a.model, &a.task_id).cmp(&(&b.model, &b.task_id)));
        Ok(out)
    }

    /// Every sweep's summary, by name.
    pub async fn list_sweeps(&self) -> Result<Vec<SweepSummary>, StoreError> {
        let names = self.sorted_members(self.keys.sweeps(), "smembers sweeps").await?;
        let mut summaries = Vec::with_capacity(names.len());
        for name in names {
            match self.summary(&name).await {
                Ok(summary) => summaries.push(summary),
                Err(StoreError::SweepNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(summaries)
    }

    /// One page of the sweep's tasks in submission order, optionally of one state.
    /// `page_size` 0 means 100; at most 1000. `page_token` is empty for the first page,
    /// then the previous page's `next_page_token`.
    pub async fn list_tasks(
        &self,
        sweep: &str,
        state: Option<TaskState>,
        page_size: u32,
        page_token: &str,
    ) -> Result<TaskPage, StoreError> {
        validate_sweep_name(sweep)?;
        let size = match page_size {
            0 => 100,
            n => n.min(1000),
        } as isize;
        let after: u64 = if page_token.is_empty() {
            0
        } else {
            page_token
                .parse()
                .map_err(|_| StoreError::InvalidArgument(format!("list_tasks: bad page token {page_token:?}")))?
        };
        let index = match state {
            Some(state) => self.keys.state_index(sweep, state),
            None => self.keys.all(sweep),
        };
        let mut conn = self.conn.clone();
        let exists: bool = conn.exists(self.keys.meta(sweep)).await.map_err(StoreError::redis("exists meta"))?;
        if !exists {
            return Err(StoreError::SweepNotFound { sweep: sweep.to_string() });
        }
        let ids: Vec<(String, f64)> = conn
            .zrangebyscore_limit_withscores(&index, format!("({after}"), "+inf", 0, size)
            .await
            .map_err(StoreError::redis("zrangebyscore tasks"))?;
        let mut pipe = redis::pipe();
        for (id, _) in &ids {
            pipe.hgetall(self.keys.task(sweep, id));
        }
        let rows: Vec<HashMap<String, String>> = if ids.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn).await.map_err(StoreError::redis("read tasks"))?
        };
        // A page stays well inside one gRPC message whatever its cells' sizes: it ends
        // early (the next page goes on after its last task) once its text passes half the
        // message limit.
        let mut tasks = Vec::with_capacity(rows.len());
        let mut page_bytes = 0usize;
        let mut last_seq = None;
        for ((id, seq), row) in ids.iter().zip(rows) {
            if page_bytes > tsweep_proto::limits::MAX_MESSAGE_BYTES / 2 {
                break;
            }
            page_bytes += row.values().map(String::len).sum::<usize>();
            last_seq = Some(*seq);
            if !row.is_empty() {
                tasks.push(self.task_info(sweep, id, &row)?);
            }
        }
        self.mark_current_finals(&mut conn, sweep, &mut tasks).await?;
        let full = last_seq != ids.last().map(|(_, seq)| *seq) || ids.len() as isize == size;
        let next_page_token = match last_seq {
            Some(seq) if full => format!("{}", seq as u64),
            _ => String::new(),
        };
        Ok(TaskPage { tasks, next_page_token })
    }

    /// One task, or None if the sweep has no such task.
    pub async fn task(&self, sweep: &str, task_id: &str) -> Result<Option<TaskInfo>, StoreError> {
        validate_sweep_name(sweep)?;
        let mut conn = self.conn.clone();
        let row: HashMap<String, String> =
            conn.hgetall(self.keys.task(sweep, task_id)).await.map_err(StoreError::redis("hgetall task"))?;
        if row.is_empty() {
            return Ok(None);
        }
        let mut task = [self.task_info(sweep, task_id, &row)?];
        self.mark_current_finals(&mut conn, sweep, &mut task).await?;
        let [task] = task;
        Ok(Some(task))
    }

    /// Sets `current_final` on the finals among `tasks`: the final its group's latest
    /// selection made (`current_final` of the group hash, the fact `create_final` keeps).
    async fn mark_current_finals(
        &self,
        conn: &mut ConnectionManager,
        sweep: &str,
        tasks: &mut [TaskInfo],
    ) -> Result<(), StoreError> {
        let finals: Vec<usize> = (0..tasks.len())
            .filter(|&i| tasks[i].stage() == Stage::Final && !tasks[i].selection_group.is_empty())
            .collect();
        if finals.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for &i in &finals {
            pipe.hget(self.keys.group(sweep, &tasks[i].selection_group), "current_final");
        }
        let current: Vec<Option<String>> =
            pipe.query_async(conn).await.map_err(StoreError::redis("read current finals"))?;
        for (&i, current) in finals.iter().zip(current) {
            tasks[i].current_final = current.as_deref() == Some(tasks[i].task_id.as_str());
        }
        Ok(())
    }

    /// The best validation score so far per (model, dataset, regime) among succeeded,
    /// non-diverged grid points.
    pub async fn best_scores(&self, sweep: &str) -> Result<Vec<BestScore>, StoreError> {
        validate_sweep_name(sweep)?;
        let mut conn = self.conn.clone();
        let best: HashMap<String, String> =
            conn.hgetall(self.keys.best(sweep)).await.map_err(StoreError::redis("hgetall best"))?;
        Ok(parse_best(best))
    }

    fn task_info(&self, sweep: &str, task_id: &str, row: &HashMap<String, String>) -> Result<TaskInfo, StoreError> {
        let key = self.keys.task(sweep, task_id);
        let text = |field: &str| row.get(field).cloned().unwrap_or_default();
        let number = |field: &str| row.get(field).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let spec_json = text("spec");
        let spec: serde_json::Value = serde_json::from_str(&spec_json).map_err(|e| StoreError::Corrupt {
            key: key.clone(),
            field: "spec".into(),
            detail: e.to_string(),
        })?;
        let name_of = |part: &str| spec[part]["name"].as_str().unwrap_or_default().to_string();
        let hparams = spec["hparams"]
            .as_object()
            .map(|m| m.iter().filter_map(|(k, v)| v.as_f64().map(|v| (k.clone(), v))).collect())
            .unwrap_or_default();
        let result = match row.get("result") {
            Some(json) if !json.is_empty() => Some(serde_json::from_str::<TaskResult>(json).map_err(|e| {
                StoreError::Corrupt { key: key.clone(), field: "result".into(), detail: e.to_string() }
            })?),
            _ => None,
        };
        let error_class =
            row.get("error_class").and_then(|c| FailureClass::from_name(c)).unwrap_or(FailureClass::Unspecified);
        Ok(TaskInfo {
            task_id: task_id.to_string(),
            sweep: sweep.to_string(),
            state: TaskState::from_name(&text("state")).unwrap_or_default().into(),
            model: name_of("model"),
            dataset: name_of("dataset"),
            regime: Regime::from_name(&text("regime")).unwrap_or_default().into(),
            stage: Stage::from_name(&text("stage")).unwrap_or_default().into(),
            hparams,
            attempt: number("attempt").max(0) as u32,
            retries_used: number("retries_used").max(0) as u32,
            worker: text("worker"),
            result,
            error: text("error"),
            error_class: error_class as i32,
            checkpoint: row
                .get("ckpt_path")
                .filter(|path| !path.is_empty())
                .map(|path| Checkpoint { path: path.clone(), step: number("ckpt_step").max(0) as u64 }),
            started_unix_ms: number("started_ms"),
            finished_unix_ms: number("finished_ms"),
            accepted_completions: number("accepted").max(0) as u32,
            spec_json,
            resume_error: text("resume_error"),
            // Grid points carry their group, finals the group they were selected for.
            selection_group: row
                .get("group")
                .filter(|g| !g.is_empty())
                .or_else(|| row.get("final_of"))
                .cloned()
                .unwrap_or_default(),
            current_final: false,
        })
    }
}

/// The best-score board: field `model/dataset/regime`, value `score<TAB>task_id`.
fn parse_best(best: HashMap<String, String>) -> Vec<BestScore> {
    let mut scores: Vec<BestScore> = best
        .into_iter()
        .filter_map(|(key, value)| {
            let (score, task_id) = value.split_once('\t')?;
            let val_score = score.parse::<f64>().ok()?;
            let (rest, regime) = key.rsplit_once('/')?;
            let (model, dataset) = rest.split_once('/')?;
            Some(BestScore {
                model: model.to_string(),
                dataset: dataset.to_string(),
                regime: Regime::from_name(regime)?.into(),
                val_score,
                task_id: task_id.to_string(),
            })
        })
        .collect();
    scores.sort_by(|a, b| (&a.regime, &a.model, &a.dataset).cmp(&(&b.regime, &b.model, &b.dataset)));
    scores
}
