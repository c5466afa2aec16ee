//! Device selection: "auto" | "cpu" | "cuda:N".

use tch::{Cuda, Device};

use crate::error::TrainerError;

/// Makes sure libtorch_cuda is loaded before CUDA is queried. A binary linked with the
/// default `--as-needed` drops the library (nothing references its symbols), and then
/// `Cuda::is_available()` is false even on a GPU machine. dlopen with RTLD_GLOBAL brings
/// it back, found through LD_LIBRARY_PATH or the executable's rpath. A missing library
/// (a CPU-only libtorch) is fine.
pub fn load_cuda_library() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        let name = c"libtorch_cuda.so";
        // SAFETY: dlopen with a valid NUL-terminated name; the handle is kept for the life
        // of the process on purpose (the library must stay loaded).
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        !handle.is_null()
    })
}

/// Resolves the device string of a task.
pub fn resolve(device: &str) -> Result<Device, TrainerError> {
    let device = device.trim();
    match device {
        "cpu" => Ok(Device::Cpu),
        "auto" | "" => {
            load_cuda_library();
            Ok(if Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu })
        }
        other => {
            let Some(index) = other.strip_prefix("cuda") else {
                return Err(TrainerError::InvalidCell(format!("device {other:?}: expected auto, cpu or cuda:N")));
            };
            let index: usize = match index.strip_prefix(':') {
                None if index.is_empty() => 0,
                Some(n) => n.parse().map_err(|_| {
                    TrainerError::InvalidCell(format!("device {other:?}: expected auto, cpu or cuda:N"))
                })?,
                None => {
                    return Err(TrainerError::InvalidCell(format!("device {other:?}: expected auto, cpu or cuda:N")))
                }
            };
            load_cuda_library();
            let count = Cuda::device_count() as usize;
            if index >= count {
                return Err(TrainerError::DeviceUnavailable(
                    other.to_string(),
                    format!("{count} cuda device(s) visible (is libtorch_cuda loaded and CUDA_VISIBLE_DEVICES right?)"),
                ));
            }
            Ok(Device::Cuda(index))
        }
    }
}

/// "cpu" or "cuda:N", for messages and results.
pub fn name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_strings() {
        assert_eq!(resolve("cpu").unwrap(), Device::Cpu);
        assert!(resolve("auto").is_ok());
        assert!(matches!(resolve("tpu"), Err(TrainerError::InvalidCell(_))));
        assert!(matches!(resolve("cuda:x"), Err(TrainerError::InvalidCell(_))));
        if !Cuda::is_available() {
            assert!(matches!(resolve("cuda:0"), Err(TrainerError::DeviceUnavailable(..))));
        }
    }
}
