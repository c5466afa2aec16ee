//! The control plane's own state in Redis: the coordinators' liveness beat, the outages
//! it reveals, and the repair of the set of active sweeps.
//!
//! Leases survive an outage of the control plane (every coordinator gone, Redis down or
//! restarting, Redis too slow) the way Chubby's sessions survive a master fail-over: the
//! time nobody could renew does not count against the lease. Every coordinator beats
//! ([`Store::beat`]) every [`crate::config::ServiceConfig::beat_interval`], on the Redis
//! server's clock; a gap between two beats longer than [`StoreOptions::dark_after`] (or a
//! Redis restart) is recorded as an outage, and each sweep's reaper applies it to the
//! sweep's leases before it reaps anything (`lua/reap.lua`). See docs/ARCHITECTURE.md,
//! "Control-plane outages".
//!
//! [`StoreOptions::dark_after`]: super::StoreOptions::dark_after

use redis::AsyncCommands;
use tracing::{info, warn};

use super::replies::BeatReply;
use super::scripts::SCRIPTS;
use super::{parse_num, Beat, Outage, Store, StoreError, TaskState};

/// Outages kept for the reapers (a sweep applies each once; older ones are long past).
pub const OUTAGES_KEPT: usize = 64;

impl Store {
    /// One liveness beat of coordinator `who`. Returns the gap since the previous beat of
    /// any coordinator and, when that gap was an outage, the outage (now recorded).
    pub async fn beat(&self, who: &str) -> Result<Beat, StoreError> {
        let mut conn = self.conn.clone();
        let dark_after_ms = (self.options.dark_after.as_millis() as u64).max(1);
        let BeatReply { gap_ms, dark_since_ms, redis_restarted } = SCRIPTS
            .plane_beat
            .key(self.keys.plane())
            .key(self.keys.outages())
            .arg(who)
            .arg(dark_after_ms)
            .arg(OUTAGES_KEPT)
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::redis("plane_beat script"))?;
        let outage = dark_since_ms.map(|start_ms| Outage { start_ms, end_ms: start_ms + gap_ms });
        if let Some(outage) = outage {
            warn!(coordinator = %who, outage_ms = outage.duration_ms(), redis_restarted,
                  "the control plane was dark (no coordinator beat); leases get that time back before any reaping");
        } else if redis_restarted {
            info!(coordinator = %who, "redis restarted since the last beat");
        }
        Ok(Beat { gap_ms, outage, redis_restarted })
    }

    /// The recorded outages, oldest first (at most [`OUTAGES_KEPT`]).
    pub async fn outages(&self) -> Result<Vec<Outage>, StoreError> {
        let mut conn = self.conn.clone();
        let members: Vec<String> =
            conn.zrange(self.keys.outages(), 0, -1).await.map_err(StoreError::redis("zrange outages"))?;
        let key = self.keys.outages();
        members
            .iter()
            .map(|member| {
                let (start, end) = member.split_once('-').unwrap_or((member.as_str(), ""));
                Ok(Outage { start_ms: parse_num(start, &key, "start_ms")?, end_ms: parse_num(end, &key, "end_ms")? })
            })
            .collect()
    }

    /// Re-derives the set of active sweeps from the task state: every known sweep with
    /// pending, leased or running tasks (their state indexes), or closed selection groups
    /// waiting, that is missing from it is put back. A submit, retry or delete interrupted
    /// between its writes and its last step (the coordinator killed, the call timed out,
    /// an AOF tail lost) can leave work outside the set, where nothing would lease it.
    /// Never put back: a sweep without meta (gone, or a delete under way: its tombstone
    /// `deleting`, whose tasks are only waiting for `delete_batch`), nor a sweep whose
    /// submission is still landing (submit marker) with nothing leased or running: its
    /// submission marks it active once its last batch landed. A delete that begins while
    /// a sweep is put back is caught by the check after the SADD (and the delete takes the
    /// name out of the set again once its tombstone exists). Returns the sweeps put back.
    pub async fn repair_active(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let (known, active): (Vec<String>, Vec<String>) = redis::pipe()
            .smembers(self.keys.sweeps())
            .smembers(self.keys.active())
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("read sweep sets"))?;
        let mut repaired = Vec::new();
        for sweep in known.into_iter().filter(|s| !active.contains(s)) {
            if super::validate_sweep_name(&sweep).is_err() {
                continue;
            }
            let (meta, pending, leased, running, closed): ((Option<String>, Option<String>), u64, u64, u64, u64) =
                redis::pipe()
                    .cmd("HMGET")
                    .arg(self.keys.meta(&sweep))
                    .arg(&["status", "submit_fp"])
                    .zcard(self.keys.state_index(&sweep, TaskState::Pending))
                    .zcard(self.keys.state_index(&sweep, TaskState::Leased))
                    .zcard(self.keys.state_index(&sweep, TaskState::Running))
                    .scard(self.keys.closed(&sweep))
                    .query_async(&mut conn)
                    .await
                    .map_err(StoreError::redis("read sweep work"))?;
            let (status, submit_marker) = meta;
            if status.is_none() || (submit_marker.is_some() && leased + running == 0) {
                continue;
            }
            if pending + leased + running + closed == 0 {
                continue;
            }
            let _: () = conn.sadd(self.keys.active(), &sweep).await.map_err(StoreError::redis("sadd active"))?;
            if !self.has_meta(&sweep).await? {
                // Deleted (or its delete began) since the read above: never active again.
                let _: () = conn.srem(self.keys.active(), &sweep).await.map_err(StoreError::redis("srem active"))?;
                continue;
            }
            warn!(sweep = %sweep, pending, leased, running, selections = closed,
                  "sweep with unfinished work was missing from the active set; put back");
            repaired.push(sweep);
        }
        Ok(repaired)
    }
}
