//! Selection, the coordinator's alone: the group a grid point belongs to, and the final
//! (refit on train+val) each group gets once its grid points have ended.

use super::replies::CreateFinalReply;
use super::*;

impl Store {
    /// Drains the sweep's closed selection groups: for each, picks the best grid point
    /// with [`select_best`] and creates its `final` task (deterministic id, so a group
    /// whose winner did not change creates nothing new). Returns the ids of the final
    /// tasks created now. Safe to run from several coordinators at once.
    pub async fn schedule_finals(&self, sweep: &str) -> Result<Vec<String>, StoreError> {
        validate_sweep_name(sweep)?;
        let mut conn = self.conn.clone();
        // A submission still landing its batches: its groups may be missing points.
        let submitting: bool = conn
            .hexists(self.keys.meta(sweep), "submit_fp")
            .await
            .map_err(StoreError::redis("hexists submit marker"))?;
        if submitting {
            return Ok(Vec::new());
        }
        let closed: Vec<String> =
            conn.smembers(self.keys.closed(sweep)).await.map_err(StoreError::redis("smembers closed"))?;
        let mut created = Vec::new();
        for group in closed {
            let version: Option<u64> = conn
                .hget(self.keys.group(sweep, &group), "version")
                .await
                .map_err(StoreError::redis("hget group version"))?;
            let version = version.unwrap_or(0);
            let members: Vec<String> = conn
                .smembers(self.keys.group_members(sweep, &group))
                .await
                .map_err(StoreError::redis("smembers group members"))?;
            let mut pipe = redis::pipe();
            for id in &members {
                pipe.cmd("HMGET").arg(self.keys.task(sweep, id)).arg(&["state", "val", "diverged", "spec"]);
            }
            let rows: Vec<Vec<Option<String>>> =
                pipe.query_async(&mut conn).await.map_err(StoreError::redis("read group members"))?;
            let mut points = Vec::with_capacity(members.len());
            let mut specs = Vec::with_capacity(members.len());
            let mut still_open = false;
            let mut any_cancelled = false;
            for (id, row) in members.iter().zip(rows) {
                let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
                let state = TaskState::from_name(&field(0));
                match state {
                    Some(TaskState::Cancelled) => any_cancelled = true,
                    Some(s) if s.is_terminal() => {}
                    _ => still_open = true,
                }
                let spec_json = field(3);
                let spec = CellSpec::from_json(&spec_json).map_err(|e| StoreError::Corrupt {
                    key: self.keys.task(sweep, id),
                    field: "spec".into(),
                    detail: e.to_string(),
                })?;
                let succeeded = state == Some(TaskState::Succeeded);
                points.push(GridPoint {
                    task_id: id.clone(),
                    hparams: spec.hparams.clone(),
                    val_score: if succeeded { field(1).parse::<f64>().ok() } else { None },
                    diverged: field(2) == "1",
                });
                specs.push(spec);
            }
            let mut invocation = SCRIPTS.create_final.key(self.keys.sweep_base(sweep));
            invocation.arg(&group).arg(version);
            let mode = if any_cancelled { "incomplete" } else { "select" };
            match select_best(&points).filter(|_| !still_open && !any_cancelled) {
                Some(best) => {
                    let winner = &specs[best];
                    let final_cell = sweepfile::final_cell(winner);
                    let spec_json =
                        final_cell.spec.to_json().map_err(|source| StoreError::Json { what: "final spec", source })?;
                    invocation
                        .arg(&points[best].task_id)
                        .arg(&final_cell.id)
                        .arg(spec_json)
                        .arg(final_cell.spec.gpus)
                        .arg(final_cell.spec.regime.name())
                        .arg(final_cell.spec.max_attempts.max(1))
                        .arg(mode);
                }
                None => {
                    invocation.arg("").arg("").arg("").arg(0).arg("").arg(1).arg(mode);
                }
            }
            let CreateFinalReply { outcome, final_id } =
                invocation.invoke_async(&mut conn).await.map_err(StoreError::redis("create_final script"))?;
            info!(sweep = %sweep, group = %group, outcome = %outcome, final_id = %final_id, "selection");
            if outcome == "created" {
                created.push(final_id);
            }
        }
        if !created.is_empty() {
            self.mark_active(sweep).await?;
        }
        Ok(created)
    }

    /// [`Store::schedule_finals`] over every active sweep.
    pub async fn schedule_finals_all(&self) -> Result<Vec<String>, StoreError> {
        let mut created = Vec::new();
        for sweep in self.active_sweeps().await? {
            created.extend(self.schedule_finals(&sweep).await?);
        }
        Ok(created)
    }

    /// The sweep's selection groups with their current final, by key.
    pub async fn groups(&self, sweep: &str) -> Result<Vec<GroupInfo>, StoreError> {
        validate_sweep_name(sweep)?;
        let keys = self.sorted_members(self.keys.groups(sweep), "smembers groups").await?;
        let mut conn = self.conn.clone();
        let mut groups = Vec::with_capacity(keys.len());
        for key in keys {
            let (row, finals): (HashMap<String, String>, Vec<String>) = redis::pipe()
                .hgetall(self.keys.group(sweep, &key))
                .lrange(self.keys.group_finals(sweep, &key), 0, -1)
                .query_async(&mut conn)
                .await
                .map_err(StoreError::redis("read group"))?;
            let num = |field: &str| row.get(field).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0).max(0) as u64;
            groups.push(GroupInfo {
                points: num("points"),
                open: num("open"),
                current_final: row.get("current_final").cloned().unwrap_or_default(),
                winner: row.get("winner").cloned().unwrap_or_default(),
                finals,
                key,
            });
        }
        Ok(groups)
    }
}

/// The selection group of a cell: finetune/scratch grid points of one
/// (model, dataset, regime, seed); None for linear cells and finals.
pub fn selection_group(spec: &CellSpec) -> Option<String> {
    (spec.stage == Stage::Grid && sweepfile::regime_has_final(spec.regime))
        .then(|| format!("{}/{}", spec.group_key(), spec.seed))
}
