//! Why pending work does not start: the queued pending cells of a sweep that none of the
//! live registered workers can take. The rule is the lease matching's own (`gpus_fit` in
//! `lua/lib.lua`, which `lua/acquire.lua` leases by), applied by `lua/pending_fit.lua`.

use redis::AsyncCommands;
use tsweep_proto::v1::PendingBlock;

use super::replies::PendingFitReply;
use super::scripts::SCRIPTS;
use super::{validate_sweep_name, Store, StoreError};

/// The live registered workers and the sweep's pending cells none of them can take.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PendingFit {
    pub workers: u32,
    pub blocked: Vec<PendingBlock>,
}

impl Store {
    /// GPU counts of the workers heard from within `worker_forget` whose registration is
    /// still live (one entry per worker).
    pub async fn live_worker_gpus(&self) -> Result<Vec<u32>, StoreError> {
        self.worker_count().await?;
        let mut conn = self.conn.clone();
        let ids: Vec<String> =
            conn.zrange(self.keys.workers(), 0, -1).await.map_err(StoreError::redis("zrange workers"))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hget(self.keys.worker(id), "gpus");
        }
        let gpus: Vec<Option<String>> =
            pipe.query_async(&mut conn).await.map_err(StoreError::redis("read worker gpus"))?;
        Ok(gpus.into_iter().flatten().map(|g| g.parse::<u32>().unwrap_or(0)).collect())
    }

    /// The sweep's queued pending cells, per GPU count, that no live registered worker
    /// can take (nothing when every queued cell has a taker).
    pub async fn pending_fit(&self, sweep: &str) -> Result<PendingFit, StoreError> {
        validate_sweep_name(sweep)?;
        let workers = self.live_worker_gpus().await?;
        let mut conn = self.conn.clone();
        let mut call = SCRIPTS.pending_fit.key(self.keys.sweep_base(sweep));
        for gpus in &workers {
            call.arg(*gpus);
        }
        let PendingFitReply(rows) =
            call.invoke_async(&mut conn).await.map_err(StoreError::redis("pending_fit script"))?;
        let mut blocked: Vec<PendingBlock> = rows
            .into_iter()
            .filter(|row| row.takers == 0)
            .map(|row| PendingBlock {
                gpus: row.gpus,
                cells: row.cells,
                workers: workers.len() as u32,
                min_worker_gpus: workers.iter().copied().min().unwrap_or(0),
                max_worker_gpus: workers.iter().copied().max().unwrap_or(0),
            })
            .collect();
        blocked.sort_by_key(|b| b.gpus);
        Ok(PendingFit { workers: workers.len() as u32, blocked })
    }
}
