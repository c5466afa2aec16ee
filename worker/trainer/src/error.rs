//! The trainer's one error type. Every variant has a class (fatal / retryable / out of
//! memory / preempted) decided here by its type, so nothing downstream matches on message
//! strings.

use std::path::PathBuf;

use tsweep_proto::v1::FailureClass;

#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// A weights / module / checkpoint file named by the cell does not exist.
    #[error("missing {what}: {path}")]
    MissingFile { what: String, path: PathBuf },
    /// A weights file exists but does not fit the architecture.
    #[error("weights {path} do not fit {arch}: {detail}")]
    WeightsMismatch { path: PathBuf, arch: String, detail: String },
    #[error("unknown architecture {0:?} (known: {known})", known = tsweep_proto::arch::known_names())]
    UnknownArch(String),
    /// The cell is inconsistent (bad hyperparameters, a regime the model cannot run, ...).
    #[error("invalid cell: {0}")]
    InvalidCell(String),
    /// A checkpoint that belongs to another cell or is corrupt.
    #[error("checkpoint {path} cannot be used: {detail}")]
    BadCheckpoint { path: PathBuf, detail: String },
    /// Data errors keep the data crate's own classification (transient I/O is retryable).
    #[error("dataset {dataset}: {source}")]
    Data {
        dataset: String,
        #[source]
        source: tsweep_data::DataError,
    },
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The CUDA caching allocator ran out of memory. Class `OutOfMemory`: retried once, in
    /// a fresh child process (GPU memory fully returns only when a process exits) that
    /// resumes from the last checkpoint; a second OOM of the same task fails it.
    #[error("cuda out of memory on {device} at batch size {batch_size} (a fresh process retries once from the last checkpoint; if it fails again, lower batch_size or use a larger GPU): {detail}")]
    CudaOutOfMemory { device: String, batch_size: usize, detail: String },
    /// Any other libtorch error (retryable: the next attempt starts from the last checkpoint).
    #[error("libtorch error during {during}: {detail}")]
    Torch { during: String, detail: String },
    /// The cell's precision cannot run on this device (fp16 on a CPU, bf16 on a GPU older
    /// than compute capability 8.0). Fatal: another attempt on the same kind of worker
    /// would fail the same way.
    #[error("precision {precision} cannot run on {device}: {reason}")]
    PrecisionUnsupported { precision: String, device: String, reason: String },
    /// The requested device does not exist on this machine.
    #[error("device {0} is not available: {1}")]
    DeviceUnavailable(String, String),
    /// The stop flag was set (SIGTERM / preemption). The checkpoint is already written.
    #[error("preempted at step {step}; checkpoint {}", checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none (nothing to save)".into()))]
    Preempted { step: u64, checkpoint: Option<PathBuf> },
}

impl TrainerError {
    pub fn class(&self) -> FailureClass {
        match self {
            TrainerError::MissingFile { .. }
            | TrainerError::WeightsMismatch { .. }
            | TrainerError::UnknownArch(_)
            | TrainerError::InvalidCell(_)
            | TrainerError::BadCheckpoint { .. }
            | TrainerError::PrecisionUnsupported { .. }
            | TrainerError::DeviceUnavailable(..) => FailureClass::Fatal,
            TrainerError::Data { source, .. } => {
                if source.is_retryable() {
                    FailureClass::Retryable
                } else {
                    FailureClass::Fatal
                }
            }
            TrainerError::Io { .. } | TrainerError::Torch { .. } => FailureClass::Retryable,
            TrainerError::CudaOutOfMemory { .. } => FailureClass::OutOfMemory,
            TrainerError::Preempted { .. } => FailureClass::Preempted,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainerError::Io { path: path.into(), source }
    }

    pub fn data(dataset: &str, source: tsweep_data::DataError) -> Self {
        TrainerError::Data { dataset: dataset.to_string(), source }
    }

    /// Classifies a libtorch failure. This is the one place a libtorch message is
    /// inspected: libtorch reports CUDA OOM only as text (c10::OutOfMemoryError's message).
    pub fn from_torch(during: &str, device: &str, batch_size: usize, detail: String) -> Self {
        if detail.contains("out of memory") && (detail.contains("CUDA") || detail.contains("cuda")) {
            TrainerError::CudaOutOfMemory { device: device.to_string(), batch_size, detail: first_line(&detail) }
        } else {
            TrainerError::Torch { during: during.to_string(), detail: first_line(&detail) }
        }
    }
}

/// The first line of libtorch's message (at most 500 characters). tch's panicking
/// methods wrap it as ``called `Result::unwrap()` on an `Err` value: Torch("...")``
/// with newlines escaped, so that wrapping is taken off first.
fn first_line(s: &str) -> String {
    let inner = s.split_once("Torch(\"").map_or(s, |(_, rest)| rest);
    let line = inner.split("\\n").next().unwrap_or(inner);
    line.lines().next().unwrap_or("").trim_end_matches("\")").chars().take(500).collect()
}

/// Runs a closure that calls panicking tch methods and turns a libtorch panic into a
/// classified error (tch's non-`f_` methods panic on any C++ exception).
pub fn guard_torch<T>(
    during: &str,
    device: &str,
    batch_size: usize,
    f: impl FnOnce() -> Result<T, TrainerError>,
) -> Result<T, TrainerError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let detail = if let Some(s) = payload.downcast_ref::<String>() {
                s.clone()
            } else if let Some(s) = payload.downcast_ref::<&str>() {
                s.to_string()
            } else {
                "panic without message".to_string()
            };
            Err(TrainerError::from_torch(during, device, batch_size, detail))
        }
    }
}

impl From<tch::TchError> for TrainerError {
    fn from(e: tch::TchError) -> Self {
        TrainerError::from_torch("a tensor operation", "", 0, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_oom_is_its_own_class_with_the_device_and_batch_size() {
        let detail = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.10 GiB total capacity)\nException raised from malloc".to_string();
        let err = TrainerError::from_torch("a training step", "cuda:0", 256, detail);
        assert!(matches!(err, TrainerError::CudaOutOfMemory { .. }), "{err:?}");
        assert_eq!(err.class(), FailureClass::OutOfMemory);
        let message = err.to_string();
        assert!(message.contains("cuda:0") && message.contains("256"), "{message}");
        assert!(message.contains("lower batch_size"), "{message}");
        assert!(!message.contains("Exception raised"), "only the first line of libtorch's text: {message}");
    }

    #[test]
    fn a_tch_panic_message_is_unwrapped_to_libtorchs_first_line() {
        let panic = r#"called `Result::unwrap()` on an `Err` value: Torch("CUDA out of memory. Tried to allocate 3.00 GiB.\nException raised from malloc at CUDACachingAllocator.cpp:1574\nframe #0: c10::Error")"#;
        let err = TrainerError::from_torch("a training step", "cuda:0", 128, panic.to_string());
        let TrainerError::CudaOutOfMemory { detail, .. } = &err else { panic!("{err:?}") };
        assert_eq!(detail, "CUDA out of memory. Tried to allocate 3.00 GiB.");
    }

    #[test]
    fn other_libtorch_errors_stay_retryable() {
        let err = TrainerError::from_torch("a training step", "cpu", 8, "shape mismatch".to_string());
        assert!(matches!(err, TrainerError::Torch { .. }), "{err:?}");
        assert_eq!(err.class(), FailureClass::Retryable);
        let cpu =
            TrainerError::from_torch("a training step", "cpu", 8, "DefaultCPUAllocator: not enough memory".into());
        assert_eq!(cpu.class(), FailureClass::Retryable, "host memory is not the accelerator's");
    }
}
