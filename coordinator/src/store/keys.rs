//! Key names. Every key of one sweep carries the hash tag `{<sweep>}`, so one Lua script
//! only ever touches that sweep's keys. tsweep runs on one Redis primary, not on Redis
//! Cluster: the global sets below live outside every sweep's slot, and the metrics
//! consumer reads several sweeps' streams in one XREADGROUP (`Store::connect` refuses a
//! cluster-mode server).

use super::types::TaskState;

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.to_string() }
    }

    /// `<p>:sweeps`: set of every sweep name (global, outside any sweep's slot).
    pub(crate) fn sweeps(&self) -> String {
        format!("{}:sweeps", self.prefix)
    }

    /// `<p>:active`: sweeps that may have work (pending, leased or running tasks).
    pub(crate) fn active(&self) -> String {
        format!("{}:active", self.prefix)
    }

    /// `<p>:workers`: zset of worker ids by when they were last seen (Redis time, ms).
    pub(crate) fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// `<p>:plane`: hash of the control plane's last liveness beat (Redis time, Redis run id,
    /// the coordinator that wrote it).
    pub(crate) fn plane(&self) -> String {
        format!("{}:plane", self.prefix)
    }

    /// `<p>:plane:outages`: zset of control-plane outages (`<start_ms>-<end_ms>`, scored by
    /// their end), the latest few.
    pub(crate) fn outages(&self) -> String {
        format!("{}:plane:outages", self.prefix)
    }

    /// `<p>:worker:<id>`: hash of a registered worker.
    pub(crate) fn worker(&self, worker_id: &str) -> String {
        format!("{}:worker:{}", self.prefix, worker_id)
    }

    /// `<p>:{<sweep>}:`: the prefix of every key of the sweep; scripts append the rest.
    pub(crate) fn sweep_base(&self, sweep: &str) -> String {
        format!("{}:{{{}}}:", self.prefix, sweep)
    }

    pub(crate) fn meta(&self, sweep: &str) -> String {
        format!("{}meta", self.sweep_base(sweep))
    }

    /// The tombstone a delete renames `meta` to while it removes the sweep in batches.
    pub(crate) fn deleting(&self, sweep: &str) -> String {
        format!("{}deleting", self.sweep_base(sweep))
    }

    pub(crate) fn counts(&self, sweep: &str) -> String {
        format!("{}counts", self.sweep_base(sweep))
    }

    pub(crate) fn task(&self, sweep: &str, task_id: &str) -> String {
        format!("{}task:{}", self.sweep_base(sweep), task_id)
    }

    pub(crate) fn all(&self, sweep: &str) -> String {
        format!("{}all", self.sweep_base(sweep))
    }

    pub(crate) fn state_index(&self, sweep: &str, state: TaskState) -> String {
        format!("{}state:{}", self.sweep_base(sweep), state.name())
    }

    pub(crate) fn best(&self, sweep: &str) -> String {
        format!("{}best", self.sweep_base(sweep))
    }

    pub(crate) fn groups(&self, sweep: &str) -> String {
        format!("{}groups", self.sweep_base(sweep))
    }

    pub(crate) fn group(&self, sweep: &str, group_key: &str) -> String {
        format!("{}group:{}", self.sweep_base(sweep), group_key)
    }

    pub(crate) fn group_members(&self, sweep: &str, group_key: &str) -> String {
        format!("{}members:{}", self.sweep_base(sweep), group_key)
    }

    pub(crate) fn group_finals(&self, sweep: &str, group_key: &str) -> String {
        format!("{}finals:{}", self.sweep_base(sweep), group_key)
    }

    /// `<p>:{<sweep>}:pretrains`: set of the sweep's pretrain cells.
    pub(crate) fn pretrains(&self, sweep: &str) -> String {
        format!("{}pretrains", self.sweep_base(sweep))
    }

    /// `<p>:{<sweep>}:dependents:<id>`: the transfer cells that wait for pretrain cell `id`.
    pub(crate) fn dependents(&self, sweep: &str, task_id: &str) -> String {
        format!("{}dependents:{}", self.sweep_base(sweep), task_id)
    }

    pub(crate) fn closed(&self, sweep: &str) -> String {
        format!("{}closed", self.sweep_base(sweep))
    }

    /// `<p>:{<sweep>}:metrics`: the stream workers append progress to.
    pub(crate) fn metrics(&self, sweep: &str) -> String {
        format!("{}metrics", self.sweep_base(sweep))
    }

    /// `<p>:{<sweep>}:metrics:progress`: hash of each task's latest progress (task id →
    /// JSON), merged by `lua/merge_progress.lua`.
    pub(crate) fn progress(&self, sweep: &str) -> String {
        format!("{}metrics:progress", self.sweep_base(sweep))
    }

    /// `<p>:{<sweep>}:curve:<id>`: list of a task's curve points (JSON), capped.
    pub(crate) fn curve(&self, sweep: &str, task_id: &str) -> String {
        format!("{}curve:{}", self.sweep_base(sweep), task_id)
    }

    /// The pattern handed to workers: `{sweep}` is replaced by the sweep's name, which
    /// gives [`Keys::metrics`].
    pub(crate) fn metrics_pattern(&self) -> String {
        format!("{}:{{{{sweep}}}}:metrics", self.prefix)
    }
}
