//! Forwards the children's progress to the sweep's Redis stream, batched.
//!
//! Slots hand points to a [`MetricsSink`] (never blocks: when the queue is full the point is
//! dropped and counted). One forwarder task owns the Redis connection (a
//! `ConnectionManager`, which reconnects by itself) and appends each batch with one
//! pipeline of `XADD <stream> NOMKSTREAM MAXLEN ~ 100000 * field value ...`. Redis being
//! down never stops a task: points stay in a bounded buffer (oldest dropped first) and the
//! forwarder backs off and tries again.
//!
//! `NOMKSTREAM`: the coordinator creates a sweep's stream when the sweep is submitted; the
//! agent never creates one. A point for a sweep whose stream is gone (deleted with
//! `tsweep delete` while this agent was still stopping its task) is dropped, and the
//! deleted sweep's key does not come back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use tsweep_redis::RedisTlsFiles;

use tsweep_proto::backoff::Backoff;
use tsweep_proto::{progress, v1};

/// Approximate length the streams are trimmed to.
pub const STREAM_MAXLEN: u64 = 100_000;
/// Used when the coordinator sends no pattern.
pub const DEFAULT_STREAM_PATTERN: &str = "tsweep:{{sweep}}:metrics";
/// Points kept while Redis is unreachable.
const BUFFER_CAPACITY: usize = 20_000;
/// Points per pipeline.
const BATCH_MAX: usize = 1_000;
/// How long points wait to be batched.
const BATCH_INTERVAL: Duration = Duration::from_millis(200);

/// One step of one attempt, for the stream of its sweep (entry fields:
/// `tsweep_proto::progress::entry_fields`).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamedPoint {
    pub sweep: String,
    pub task_id: String,
    pub point: v1::MetricPoint,
}

/// The stream key of a sweep: `pattern` with `{sweep}` replaced by the sweep's name.
/// With the default pattern, `tsweep:{{sweep}}:metrics` gives `tsweep:{NAME}:metrics`
/// (the braces make the sweep name the Redis Cluster hash tag).
pub fn stream_key(pattern: &str, sweep: &str) -> String {
    let pattern = if pattern.is_empty() { DEFAULT_STREAM_PATTERN } else { pattern };
    pattern.replace("{sweep}", sweep)
}

/// Where slots put points. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MetricsSink {
    sender: mpsc::Sender<StreamedPoint>,
    dropped: Arc<AtomicU64>,
}

impl MetricsSink {
    pub fn send(&self, point: StreamedPoint) {
        if self.sender.try_send(point).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Owns the Redis connection and the buffer.
pub struct MetricsForwarder {
    receiver: mpsc::Receiver<StreamedPoint>,
    dropped: Arc<AtomicU64>,
    redis_url: String,
    redis_tls: RedisTlsFiles,
    pattern: String,
    buffer: VecDeque<StreamedPoint>,
}

/// The sink for the slots and the forwarder that appends to Redis at `redis_url` (with
/// `redis_tls` for `rediss://`) under the stream `pattern`.
pub fn channel(redis_url: &str, redis_tls: &RedisTlsFiles, pattern: &str) -> (MetricsSink, MetricsForwarder) {
    let (sender, receiver) = mpsc::channel(BUFFER_CAPACITY);
    let dropped = Arc::new(AtomicU64::new(0));
    (
        MetricsSink { sender, dropped: dropped.clone() },
        MetricsForwarder {
            receiver,
            dropped,
            redis_url: redis_url.to_string(),
            redis_tls: redis_tls.clone(),
            pattern: pattern.to_string(),
            buffer: VecDeque::new(),
        },
    )
}

impl MetricsForwarder {
    /// Runs until every sink is dropped, then makes one last attempt (bounded by
    /// `final_flush`) to append what is left.
    pub async fn run(mut self, final_flush: Duration) {
        let mut connection = match tsweep_redis::build_client(&self.redis_url, &self.redis_tls) {
            Ok(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(5)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(2));
                match ConnectionManager::new_lazy_with_config(client, config) {
                    Ok(manager) => Some(manager),
                    Err(e) => {
                        warn!(redis_url = %self.redis_url, error = %e, "metrics disabled: cannot set up the redis connection");
                        None
                    }
                }
            }
            Err(e) => {
                warn!(redis_url = %self.redis_url, error = %e, "metrics disabled: bad redis settings");
                None
            }
        };
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut next_flush = Instant::now();
        let mut failing = false;
        loop {
            let flush_at = next_flush.max(Instant::now());
            tokio::select! {
                point = self.receiver.recv() => match point {
                    Some(point) => {
                        if self.buffer.is_empty() && !failing {
                            next_flush = Instant::now() + BATCH_INTERVAL;
                        }
                        self.push(point);
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(flush_at), if !self.buffer.is_empty() => {
                    let Some(manager) = connection.as_mut() else {
                        self.buffer.clear();
                        continue;
                    };
                    match self.flush(manager).await {
                        Ok(sent) => {
                            if failing {
                                info!(sent, "metrics reach redis again");
                            }
                            failing = false;
                            backoff.reset();
                            next_flush = Instant::now() + BATCH_INTERVAL;
                        }
                        Err(e) => {
                            let wait = backoff.next_delay();
                            if !failing {
                                warn!(error = %e, buffered = self.buffer.len(), "cannot append metrics to redis; buffering and retrying");
                            }
                            failing = true;
                            next_flush = Instant::now() + wait;
                        }
                    }
                }
            }
        }
        if let Some(manager) = connection.as_mut() {
            let deadline = Instant::now() + final_flush;
            while !self.buffer.is_empty() {
                match tokio::time::timeout_at(deadline, self.flush(manager)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        warn!(error = %e, lost = self.buffer.len(), "metrics not appended at shutdown");
                        break;
                    }
                    Err(_) => {
                        warn!(lost = self.buffer.len(), "metrics not appended at shutdown: redis too slow");
                        break;
                    }
                }
            }
        }
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            warn!(dropped, "metric points dropped over this run (queue or buffer full)");
        }
    }

    fn push(&mut self, point: StreamedPoint) {
        if self.buffer.len() >= BUFFER_CAPACITY {
            self.buffer.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.buffer.push_back(point);
    }

    /// Appends up to [`BATCH_MAX`] points in one pipeline; they leave the buffer only when
    /// Redis accepted the pipeline.
    async fn flush(&mut self, manager: &mut ConnectionManager) -> redis::RedisResult<usize> {
        let count = self.buffer.len().min(BATCH_MAX);
        let mut pipe = redis::pipe();
        for point in self.buffer.iter().take(count) {
            let command = pipe
                .cmd("XADD")
                .arg(stream_key(&self.pattern, &point.sweep))
                .arg("NOMKSTREAM")
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_MAXLEN)
                .arg("*");
            for (field, value) in progress::entry_fields(&point.task_id, &point.point) {
                command.arg(field).arg(value);
            }
        }
        // One reply per XADD: the new entry's id, or nil when the stream does not exist.
        let ids: Vec<Option<String>> = pipe.query_async(manager).await?;
        for (point, id) in self.buffer.iter().take(count).zip(&ids) {
            if id.is_none() {
                debug!(sweep = %point.sweep, task_id = %point.task_id, attempt = point.point.attempt, step = point.point.step,
                    "metric point dropped: the sweep's stream does not exist (sweep deleted?)");
            }
        }
        self.buffer.drain(..count);
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_key_keeps_the_hash_tag() {
        assert_eq!(stream_key("", "k19"), "tsweep:{k19}:metrics");
        assert_eq!(stream_key("m:{sweep}", "k19"), "m:k19");
    }
}
