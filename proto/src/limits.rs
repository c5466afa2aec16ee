//! Bounds on everything clients send: the one place where the limits live, as named
//! constants, and the checks the coordinator runs first in every gRPC handler
//! ([`CheckLimits`]). The gRPC message limit is shared by the server and both clients (the
//! CLI and the worker agent), so what one side may send the other can receive.

use crate::v1::{
    AcquireTaskRequest, CancelSweepRequest, CompleteTaskRequest, DeleteSweepRequest, FailTaskRequest, GetCurveRequest,
    GetSweepRequest, HeartbeatRequest, LeaseRef, ListSweepsRequest, ListTasksRequest, RegisterWorkerRequest,
    RetrySweepRequest, SubmitSweepRequest, TaskResult, WatchSweepRequest,
};

/// Largest gRPC message either side encodes or decodes (server, CLI and worker alike).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Largest sweep file the CLI reads and the coordinator accepts.
pub const MAX_SWEEP_FILE_BYTES: usize = 4 * 1024 * 1024;
/// Largest cell (the JSON of one `CellSpec`) a submission may create. Far below the
/// message limit on purpose: a `ListTasks` page carries up to 1,000 cells.
pub const MAX_CELL_SPEC_BYTES: usize = 64 * 1024;
/// Sweep names (they become part of every Redis key of the sweep).
pub const MAX_SWEEP_NAME_BYTES: usize = 200;
/// Model, dataset, sweep and `[[pretrain]]` entry names of a sweep file, and the model
/// names a pretrain entry's settings make (`<model>-<setting>`): they become directory
/// names, report labels and parts of cell specs.
pub const MAX_SWEEPFILE_NAME_BYTES: usize = 100;
/// Worker ids, task ids (worker ids become Redis keys) and worker secrets.
pub const MAX_ID_BYTES: usize = 256;
/// Host names, versions, task states, page tokens and other short labels.
pub const MAX_LABEL_BYTES: usize = 256;
/// File and directory paths (sweep file name, base directory, checkpoint paths).
pub const MAX_PATH_BYTES: usize = 4096;
/// Failure messages of a task and the reason an attempt could not resume from its
/// checkpoint (`resume_error`); the agent cuts longer ones with [`truncate_message`].
pub const MAX_ERROR_MESSAGE_BYTES: usize = 16 * 1024;
/// Leases one heartbeat may carry.
pub const MAX_HELD_LEASES: usize = 1024;
/// Entries of a result's `selected` and `extra` maps together.
pub const MAX_RESULT_ENTRIES: usize = 64;
/// Keys of a result's `selected` / `extra` maps and its metric name.
pub const MAX_RESULT_KEY_BYTES: usize = 128;

/// A field of a request over its bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} is {actual} {unit}, more than the limit of {limit}")]
pub struct LimitError {
    pub field: String,
    pub actual: usize,
    pub limit: usize,
    pub unit: &'static str,
}

fn bytes(field: &str, value: &str, limit: usize) -> Result<(), LimitError> {
    if value.len() > limit {
        return Err(LimitError { field: field.to_string(), actual: value.len(), limit, unit: "bytes" });
    }
    Ok(())
}

fn count(field: &str, actual: usize, limit: usize) -> Result<(), LimitError> {
    if actual > limit {
        return Err(LimitError { field: field.to_string(), actual, limit, unit: "entries" });
    }
    Ok(())
}

fn lease(field: &str, lease: Option<&LeaseRef>) -> Result<(), LimitError> {
    if let Some(lease) = lease {
        bytes(&format!("{field}.sweep"), &lease.sweep, MAX_SWEEP_NAME_BYTES)?;
        bytes(&format!("{field}.task_id"), &lease.task_id, MAX_ID_BYTES)?;
    }
    Ok(())
}

fn checkpoint(field: &'static str, checkpoint: Option<&crate::v1::Checkpoint>) -> Result<(), LimitError> {
    checkpoint.map_or(Ok(()), |c| bytes(field, &c.path, MAX_PATH_BYTES))
}

fn result(result: Option<&TaskResult>) -> Result<(), LimitError> {
    let Some(result) = result else { return Ok(()) };
    count("result.selected + result.extra", result.selected.len() + result.extra.len(), MAX_RESULT_ENTRIES)?;
    for key in result.selected.keys() {
        bytes("result.selected key", key, MAX_RESULT_KEY_BYTES)?;
    }
    for key in result.extra.keys() {
        bytes("result.extra key", key, MAX_RESULT_KEY_BYTES)?;
    }
    Ok(())
}

/// The bounds of one request message; every gRPC handler checks them before anything else.
pub trait CheckLimits {
    fn check_limits(&self) -> Result<(), LimitError>;
}

impl CheckLimits for SubmitSweepRequest {
    fn check_limits(&self) -> Result<(), LimitError> {
        bytes("file_text", &self.file_text, MAX_SWEEP_FILE_BYTES)?;
        bytes("file_name", &self.file_name, MAX_PATH_BYTES)?;
        bytes("base_dir", &self.base_dir, MAX_PATH_BYTES)
    }
}

impl CheckLimits for ListSweepsRequest {
    fn check_limits(&self) -> Result<(), LimitError> {
        Ok(())
    }
}

macro_rules! sweep_only {
    ($($request:ty),*) => {$(
        impl CheckLimits for $request {
            fn check_limits(&self) -> Result<(), LimitError> {
                bytes("sweep", &self.sweep, MAX_SWEEP_NAME_BYTES)
            }
        }
    )*};
}
sweep_only!(GetSweepRequest, CancelSweepRequest, RetrySweepRequest, DeleteSweepRequest, WatchSweepRequest);

impl CheckLimits for GetCurveRequest {
    fn check_limits(&self) -> Result<(), LimitError> {
        bytes("sweep", &self.sweep, MAX_SWEEP_NAME_BYTES)?;
        bytes("task_id", &self.task_id, MAX_ID_BYTES)
    }
}

impl CheckLimits for ListTasksRequest {
    fn check_limits(&self) -> Result<(), LimitError> {
        bytes("sweep", &self.sweep, MAX_SWEEP_NAME_BYTES)?;
        bytes("page_token", &self.page_token, MAX_LABEL_BYTES)
    }
}

impl CheckLimits for RegisterWorkerRequest {
    fn check_limits(&self) -> Result<(), LimitError> {
        bytes("worker_id", &self.worker_id, MAX_ID_BYTES)?;
        bytes("worker_secret", &self.worker_secret, MAX_ID_BYTES)?;
        bytes("hostname", &self.hostname, MAX_LABEL_BYTES)?;
        bytes("version", &self.version, MAX_LABEL_BYTES)
    }
}

impl CheckLimits for AcquireTaskRequest {
    fn check_limits(&self) -> Result<(), LimitError> {
        bytes("worker_id", &self.worker_id, MAX_ID_BYTES)?;
        bytes("worker_secret", &self.worker_secret, MAX_ID_BYTES)
    }
}

impl CheckLimits for HeartbeatRequest {
    fn check_limits(&self) -> Result<(), LimitError> {
        bytes("worker_id", &self.worker_id, MAX_ID_BYTES)?;
        bytes("worker_secret", &self.worker_secret, MAX_ID_BYTES)?;
        count("leases", self.leases.len(), MAX_HELD_LEASES)?;
        for held in &self.leases {
            lease("leases.lease", held.lease.as_ref())?;
            checkpoint("leases.checkpoint.path", held.checkpoint.as_ref())?;
            bytes("leases.resume_error", &held.resume_error, MAX_ERROR_MESSAGE_BYTES)?;
        }
        Ok(())
    }
}

impl CheckLimits for CompleteTaskRequest {
    fn check_limits(&self) -> Result<(), LimitError> {
        bytes("worker_id", &self.worker_id, MAX_ID_BYTES)?;
        bytes("worker_secret", &self.worker_secret, MAX_ID_BYTES)?;
        lease("lease", self.lease.as_ref())?;
        result(self.result.as_ref())
    }
}

impl CheckLimits for FailTaskRequest {
    fn check_limits(&self) -> Result<(), LimitError> {
        bytes("worker_id", &self.worker_id, MAX_ID_BYTES)?;
        bytes("worker_secret", &self.worker_secret, MAX_ID_BYTES)?;
        lease("lease", self.lease.as_ref())?;
        bytes("message", &self.message, MAX_ERROR_MESSAGE_BYTES)?;
        bytes("resume_error", &self.resume_error, MAX_ERROR_MESSAGE_BYTES)?;
        checkpoint("checkpoint.path", self.checkpoint.as_ref())
    }
}

/// `message` cut to [`MAX_ERROR_MESSAGE_BYTES`] on a character boundary, marked as cut.
pub fn truncate_message(message: &str) -> String {
    const MARK: &str = " … (truncated)";
    if message.len() <= MAX_ERROR_MESSAGE_BYTES {
        return message.to_string();
    }
    let mut end = MAX_ERROR_MESSAGE_BYTES - MARK.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &message[..end])
}

impl TaskResult {
    /// Why the result's scores cannot be recorded, if they cannot: every metric tsweep
    /// computes (top-1, mean per-class accuracy, 11-point mAP) is a fraction, so a
    /// reported `val_score` or `test_score` must be finite and in [0, 1].
    pub fn score_problem(&self) -> Option<String> {
        for (name, score) in [("val_score", self.val_score), ("test_score", self.test_score)] {
            match score {
                Some(value) if !value.is_finite() => return Some(format!("{name} {value} is not a finite number")),
                Some(value) if !(0.0..=1.0).contains(&value) => {
                    let metric = match self.metric() {
                        crate::v1::Metric::Unspecified => "the metric",
                        metric => metric.name(),
                    };
                    let value = short_number(value);
                    return Some(format!(
                        "{name} {value} is out of range for {metric}: scores are fractions in [0, 1]"
                    ));
                }
                _ => {}
            }
        }
        None
    }
}

/// `-5`, `0.25`, `1e308`: exponent notation for very large or small magnitudes.
fn short_number(value: f64) -> String {
    if value != 0.0 && !(1e-4..1e6).contains(&value.abs()) {
        format!("{value:e}")
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_worker_id_is_refused_with_its_field() {
        let request = AcquireTaskRequest { worker_id: "w".repeat(3_000_000), ..Default::default() };
        let error = request.check_limits().unwrap_err();
        assert_eq!(error.field, "worker_id");
        assert_eq!(error.to_string(), "worker_id is 3000000 bytes, more than the limit of 256");
        assert!(AcquireTaskRequest { worker_id: "w-1".into(), ..Default::default() }.check_limits().is_ok());
    }

    #[test]
    fn heartbeats_are_bounded_in_leases_and_paths() {
        let long = crate::v1::Checkpoint { path: "p".repeat(MAX_PATH_BYTES + 1), step: 1 };
        let held = crate::v1::HeldLease { checkpoint: Some(long), ..Default::default() };
        let request = HeartbeatRequest { worker_id: "w".into(), leases: vec![held], ..Default::default() };
        assert_eq!(request.check_limits().unwrap_err().field, "leases.checkpoint.path");
        let held = crate::v1::HeldLease { resume_error: "r".repeat(MAX_ERROR_MESSAGE_BYTES + 1), ..Default::default() };
        let request = HeartbeatRequest { worker_id: "w".into(), leases: vec![held], ..Default::default() };
        assert_eq!(request.check_limits().unwrap_err().field, "leases.resume_error");
        let fail = FailTaskRequest { resume_error: "r".repeat(MAX_ERROR_MESSAGE_BYTES + 1), ..Default::default() };
        assert_eq!(fail.check_limits().unwrap_err().field, "resume_error");
        let many = HeartbeatRequest {
            worker_id: "w".into(),
            leases: vec![Default::default(); MAX_HELD_LEASES + 1],
            ..Default::default()
        };
        assert_eq!(many.check_limits().unwrap_err().unit, "entries");
    }

    #[test]
    fn messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_MESSAGE_BYTES);
        let cut = truncate_message(&long);
        assert!(cut.len() <= MAX_ERROR_MESSAGE_BYTES);
        assert!(cut.ends_with("(truncated)"));
        assert_eq!(truncate_message("short"), "short");
        let request = FailTaskRequest { message: cut, ..Default::default() };
        assert!(request.check_limits().is_ok());
    }

    #[test]
    fn scores_must_be_finite_fractions() {
        let result = |val: Option<f64>, test: Option<f64>| TaskResult {
            metric: crate::v1::Metric::Top1.into(),
            val_score: val,
            test_score: test,
            ..Default::default()
        };
        assert_eq!(result(Some(0.5), Some(1.0)).score_problem(), None);
        assert_eq!(result(None, None).score_problem(), None);
        assert!(result(Some(1e308), None)
            .score_problem()
            .unwrap()
            .contains("val_score 1e308 is out of range for top1"));
        assert!(result(Some(0.1), Some(-5.0)).score_problem().unwrap().contains("test_score -5"));
        assert!(result(Some(f64::NAN), None).score_problem().unwrap().contains("not a finite number"));
    }
}
