//! The metrics stream consumer: one consumer group (`tsweep-coordinator`) on every active
//! sweep's stream `tsweep:{<sweep>}:metrics`, read with `XREADGROUP BLOCK` on a DEDICATED
//! connection that has no response timeout (a blocking read must not look like a dead
//! server, and must not hold up the shared connection manager).
//!
//! Each entry (a task's `MetricPoint`, fields written by workers with
//! `tsweep_proto::progress::entry_fields`) is checked against the task's current attempt:
//! - current: the task's progress summary (last step, loss, lr, images/s, best val of the
//!   attempt) and its curve point are merged by [`Store::merge_progress`]
//!   (`store/progress.rs`), which never lets an older attempt or an older step overwrite
//!   a newer one;
//! - stale (an attempt that no longer holds the lease): counted (store + telemetry) and
//!   ignored;
//! - malformed: logged and dropped (a poison entry must not block the stream).
//!
//! Entries are XACKed only after their effect is written. Entries left pending by a
//! crashed consumer are taken over with `XAUTOCLAIM` after `CLAIM_MIN_IDLE`. Every
//! `REFRESH_EVERY` each stream is trimmed up to the entries still needed (`XTRIM MINID ~`
//! at the oldest entry pending in any consumer group, else the last one delivered), so a
//! long sweep's stream stays short and Redis memory flat.
//! Redis away: the loop logs, drops the connection, backs off and reconnects.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::AsyncConnectionConfig;
use tracing::{debug, info, warn};
use tsweep_proto::backoff::Backoff;
use tsweep_proto::progress::{self, EntryError};
use tsweep_proto::v1::MetricPoint;

use super::state::{sleep_or_cancel, Shared};
use crate::store::{Store, StoreError, TaskState};
use crate::telemetry::StaleKind;

pub const GROUP: &str = crate::store::METRICS_GROUP;
/// How long one XREADGROUP waits for new entries.
pub const BLOCK: Duration = Duration::from_millis(1000);
/// Entries per read.
pub const BATCH: usize = 512;
/// An entry delivered but not acked for this long is claimed again.
pub const CLAIM_MIN_IDLE: Duration = Duration::from_secs(30);
/// How often the set of active sweeps (streams to read) and stuck entries are re-checked.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// One parsed stream entry: the task and its point.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricEntry {
    pub task_id: String,
    pub point: MetricPoint,
}

/// Reads a worker's entry (fields: `tsweep_proto::progress::entry_fields`).
pub fn parse_entry(entry: &StreamId) -> Result<MetricEntry, EntryError> {
    let (task_id, point) = progress::parse_entry(&entry.id, |field| entry.get::<String>(field))?;
    Ok(MetricEntry { task_id, point })
}

/// A blocking read that outlives BLOCK by this much counts as a lost connection.
const READ_MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
enum ConsumeError {
    #[error("XREADGROUP did not return within its block time plus {READ_MARGIN:?}")]
    ReadTimeout,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("redis {operation}: {source}")]
    Redis {
        operation: &'static str,
        #[source]
        source: redis::RedisError,
    },
}

fn redis_err(operation: &'static str) -> impl FnOnce(redis::RedisError) -> ConsumeError {
    move |source| ConsumeError::Redis { operation, source }
}

/// Runs until `shared.cancel` fires.
pub async fn run(shared: Shared) {
    let cancel = shared.cancel.clone();
    let Some(store) = shared.store.wait(&cancel).await else {
        return;
    };
    let consumer = format!("coordinator-{}", std::process::id());
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let mut consumer_state = Consumer {
            shared: shared.clone(),
            store: store.clone(),
            consumer: consumer.clone(),
            streams: HashMap::new(),
            groups_ready: HashSet::new(),
            last_refresh: None,
        };
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            outcome = consumer_state.run_connected(&mut backoff) => outcome,
        };
        if let Err(error) = outcome {
            let delay = backoff.next_delay();
            warn!(%error, retry_in_ms = delay.as_millis() as u64, "metrics consumer: redis unavailable, backing off");
            if !sleep_or_cancel(delay, &cancel).await {
                return;
            }
        }
    }
}

struct Consumer {
    shared: Shared,
    store: Store,
    consumer: String,
    /// Stream key → sweep name, for the active sweeps.
    streams: HashMap<String, String>,
    groups_ready: HashSet<String>,
    last_refresh: Option<Instant>,
}

impl Consumer {
    async fn dedicated_connection(&self) -> Result<MultiplexedConnection, ConsumeError> {
        let client = tsweep_redis::build_client(&self.shared.config.redis_url, &self.shared.config.redis_tls())
            .map_err(StoreError::from)?;
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(Duration::from_secs(5)));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(redis_err("connect metrics consumer"))
    }

    async fn run_connected(&mut self, backoff: &mut Backoff) -> Result<(), ConsumeError> {
        let mut conn = self.dedicated_connection().await?;
        debug!(consumer = %self.consumer, "metrics consumer connected");
        loop {
            if self.last_refresh.is_none_or(|at| at.elapsed() >= REFRESH_EVERY) {
                self.refresh_streams(&mut conn).await?;
                self.claim_stuck(&mut conn).await?;
                self.trim_streams(&mut conn).await?;
                self.last_refresh = Some(Instant::now());
            }
            if self.streams.is_empty() {
                backoff.reset();
                if !sleep_or_cancel(BLOCK, &self.shared.cancel).await {
                    return Ok(());
                }
                continue;
            }
            let keys: Vec<&String> = self.streams.keys().collect();
            let mut command = redis::cmd("XREADGROUP");
            command
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(1000))
                .arg("STREAMS")
                .arg(&keys);
            for _ in &keys {
                command.arg(">");
            }
            // No response timeout on this connection; a silent network partition still ends
            // the read after BLOCK plus a margin.
            let read = tokio::time::timeout(BLOCK + READ_MARGIN, command.query_async(&mut conn)).await;
            let Ok(read) = read else {
                return Err(ConsumeError::ReadTimeout);
            };
            let reply: Option<StreamReadReply> = match read {
                Ok(reply) => reply,
                Err(error) if error.code() == Some("NOGROUP") => {
                    // The stream or group vanished (Redis restarted without its data): recreate.
                    self.groups_ready.clear();
                    self.last_refresh = None;
                    continue;
                }
                Err(source) => return Err(ConsumeError::Redis { operation: "XREADGROUP", source }),
            };
            backoff.reset();
            if let Some(reply) = reply {
                for stream in reply.keys {
                    self.apply(&mut conn, &stream.key, stream.ids).await?;
                }
            }
        }
    }

    /// Streams of the active sweeps, each with our consumer group (created from the start
    /// of the stream, so entries written before the group existed are read too).
    async fn refresh_streams(&mut self, conn: &mut MultiplexedConnection) -> Result<(), ConsumeError> {
        let sweeps = self.store.active_sweeps().await?;
        self.streams = sweeps.into_iter().map(|sweep| (self.store.metrics_stream_key(&sweep), sweep)).collect();
        for key in self.streams.keys() {
            if self.groups_ready.contains(key) {
                continue;
            }
            let created: Result<(), redis::RedisError> =
                redis::cmd("XGROUP").arg("CREATE").arg(key).arg(GROUP).arg("0").arg("MKSTREAM").query_async(conn).await;
            match created {
                Ok(()) => info!(stream = %key, group = GROUP, "metrics consumer group created"),
                Err(error) if error.code() == Some("BUSYGROUP") => {}
                Err(source) => return Err(ConsumeError::Redis { operation: "XGROUP CREATE", source }),
            }
            self.groups_ready.insert(key.clone());
        }
        Ok(())
    }

    /// Takes over entries delivered to a consumer that died before acking them.
    async fn claim_stuck(&mut self, conn: &mut MultiplexedConnection) -> Result<(), ConsumeError> {
        let keys: Vec<String> = self.streams.keys().cloned().collect();
        for key in keys {
            let mut start = "0-0".to_string();
            loop {
                let reply: Result<StreamAutoClaimReply, redis::RedisError> = redis::cmd("XAUTOCLAIM")
                    .arg(&key)
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg(u64::try_from(CLAIM_MIN_IDLE.as_millis()).unwrap_or(30_000))
                    .arg(&start)
                    .arg("COUNT")
                    .arg(BATCH)
                    .query_async(conn)
                    .await;
                let reply = match reply {
                    Ok(reply) => reply,
                    Err(error) if error.code() == Some("NOGROUP") => {
                        self.groups_ready.remove(&key);
                        break;
                    }
                    Err(source) => return Err(ConsumeError::Redis { operation: "XAUTOCLAIM", source }),
                };
                if !reply.claimed.is_empty() {
                    info!(stream = %key, entries = reply.claimed.len(), "claimed stuck metrics entries");
                    self.apply(conn, &key, reply.claimed).await?;
                }
                if reply.next_stream_id == "0-0" || reply.next_stream_id.is_empty() {
                    break;
                }
                start = reply.next_stream_id;
            }
        }
        Ok(())
    }

    /// Drops the entries every consumer group is done with (see `store/lua/trim_stream.lua`).
    async fn trim_streams(&mut self, conn: &mut MultiplexedConnection) -> Result<(), ConsumeError> {
        for key in self.streams.keys() {
            let trimmed = self.store.trim_stream(conn, key).await?;
            if trimmed > 0 {
                debug!(stream = %key, trimmed, "metrics stream trimmed");
            }
        }
        Ok(())
    }

    /// Applies a batch of one stream's entries, then acks them.
    async fn apply(
        &mut self,
        conn: &mut MultiplexedConnection,
        key: &str,
        entries: Vec<StreamId>,
    ) -> Result<(), ConsumeError> {
        if entries.is_empty() {
            return Ok(());
        }
        let sweep = match self.streams.get(key) {
            Some(sweep) => sweep.clone(),
            None => {
                // A claimed entry of a sweep no longer active: nothing to update.
                self.ack(conn, key, &entries).await?;
                return Ok(());
            }
        };
        let mut current: HashMap<(String, u32), bool> = HashMap::new();
        let mut stale: u64 = 0;
        let mut applied: u64 = 0;
        for entry in &entries {
            let parsed = match parse_entry(entry) {
                Ok(parsed) => parsed,
                Err(error) => {
                    warn!(sweep = %sweep, %error, "malformed metrics entry dropped");
                    continue;
                }
            };
            let attempt = parsed.point.attempt;
            let cache_key = (parsed.task_id.clone(), attempt);
            let is_current = match current.get(&cache_key) {
                Some(known) => *known,
                None => {
                    let known = self.attempt_is_current(&sweep, &parsed.task_id, attempt).await?;
                    current.insert(cache_key, known);
                    known
                }
            };
            if !is_current {
                self.store.record_stale_metric(&sweep).await?;
                stale += 1;
                continue;
            }
            self.store.merge_progress(conn, &sweep, &parsed.task_id, &parsed.point).await?;
            applied += 1;
        }
        self.ack(conn, key, &entries).await?;
        if stale > 0 {
            debug!(sweep = %sweep, stale, "stale metrics entries ignored");
            self.shared.telemetry.add_stale_reports(StaleKind::Metrics, stale);
        }
        self.shared.telemetry.add_metrics_entries(applied);
        Ok(())
    }

    /// Whether metrics of `attempt` still count: it is the task's latest attempt and that
    /// attempt was not taken back (leased, running, or ended by its own report — an entry
    /// read after the attempt's CompleteTask is late, not stale). An older attempt, or
    /// one whose lease was reaped (pending again) or cancelled, is stale.
    async fn attempt_is_current(&self, sweep: &str, task_id: &str, attempt: u32) -> Result<bool, StoreError> {
        let Some(task) = self.store.task(sweep, task_id).await? else {
            return Ok(false);
        };
        Ok(task.attempt == attempt
            && matches!(
                task.state(),
                TaskState::Leased | TaskState::Running | TaskState::Succeeded | TaskState::Failed
            ))
    }

    async fn ack(&self, conn: &mut MultiplexedConnection, key: &str, entries: &[StreamId]) -> Result<(), ConsumeError> {
        let ids: Vec<&str> = entries.iter().map(|entry| entry.id.as_str()).collect();
        let _: u64 =
            redis::cmd("XACK").arg(key).arg(GROUP).arg(&ids).query_async(conn).await.map_err(redis_err("XACK"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, &str)]) -> StreamId {
        StreamId {
            id: "1-0".into(),
            map: fields.iter().map(|(k, v)| (k.to_string(), redis::Value::BulkString(v.as_bytes().to_vec()))).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn parses_worker_fields_and_drops_nan() {
        let parsed = parse_entry(&entry(&[
            ("task_id", "t1"),
            ("attempt", "2"),
            ("step", "40"),
            ("total_steps", "100"),
            ("loss", "NaN"),
            ("lr", "0.01"),
            ("images_per_s", "512.5"),
            ("val_score", "0.7"),
            ("ts_ms", "1700000000000"),
        ]))
        .unwrap();
        assert_eq!(parsed.task_id, "t1");
        assert_eq!((parsed.point.attempt, parsed.point.step, parsed.point.loss), (2, 40, None));
        assert_eq!(parsed.point.val_score, Some(0.7));
        let bad = parse_entry(&entry(&[("task_id", "t1"), ("attempt", "1"), ("step", "x")])).unwrap_err();
        assert!(bad.to_string().contains("step"), "{bad}");
    }
}
