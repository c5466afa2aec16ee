//! The transition scripts: one Lua file each under `store/lua/`, with `lua/lib.lua`
//! (shared helpers) prepended. `redis::Script` sends EVALSHA and falls back to EVAL when
//! Redis lost its script cache (after a restart).

use std::sync::LazyLock;

use redis::Script;

macro_rules! lua {
    ($file:literal) => {
        Script::new(concat!(include_str!("lua/lib.lua"), "\n", include_str!(concat!("lua/", $file))))
    };
}

pub(crate) struct Scripts {
    pub submit_meta: Script,
    pub submit_cells: Script,
    pub submit_finish: Script,
    pub acquire: Script,
    pub renew: Script,
    pub complete: Script,
    pub fail: Script,
    pub reap: Script,
    pub cancel: Script,
    pub retry: Script,
    pub create_final: Script,
    pub stale_metric: Script,
    pub touch_worker: Script,
    pub register_worker: Script,
    pub worker_auth: Script,
    pub delete_begin: Script,
    pub delete_batch: Script,
    pub plane_beat: Script,
    pub merge_progress: Script,
    pub trim_stream: Script,
    pub pending_fit: Script,
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    submit_meta: lua!("submit_meta.lua"),
    submit_cells: lua!("submit_cells.lua"),
    submit_finish: lua!("submit_finish.lua"),
    acquire: lua!("acquire.lua"),
    renew: lua!("renew.lua"),
    complete: lua!("complete.lua"),
    fail: lua!("fail.lua"),
    reap: lua!("reap.lua"),
    cancel: lua!("cancel.lua"),
    retry: lua!("retry.lua"),
    create_final: lua!("create_final.lua"),
    stale_metric: lua!("stale_metric.lua"),
    touch_worker: lua!("touch_worker.lua"),
    register_worker: lua!("register_worker.lua"),
    worker_auth: lua!("worker_auth.lua"),
    delete_begin: lua!("delete_begin.lua"),
    delete_batch: lua!("delete_batch.lua"),
    plane_beat: lua!("plane_beat.lua"),
    merge_progress: lua!("merge_progress.lua"),
    trim_stream: lua!("trim_stream.lua"),
    pending_fit: lua!("pending_fit.lua"),
});
