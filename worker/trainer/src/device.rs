//! Device selection: "auto" | "cpu" | "cuda:N".

use std::os::raw::{c_char, c_int, c_uint};

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

/// The libtorch device of a task's device.
pub fn resolve(device: tsweep_proto::cell::Device) -> Result<Device, TrainerError> {
    use tsweep_proto::cell::Device as Wanted;
    match device {
        Wanted::Cpu => Ok(Device::Cpu),
        Wanted::Auto => {
            load_cuda_library();
            Ok(if Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu })
        }
        Wanted::Cuda(index) => {
            load_cuda_library();
            let count = Cuda::device_count() as usize;
            let index = index as usize;
            if index >= count {
                return Err(TrainerError::DeviceUnavailable(
                    device.to_string(),
                    format!("{count} cuda device(s) visible (is libtorch_cuda loaded and CUDA_VISIBLE_DEVICES right?)"),
                ));
            }
            Ok(Device::Cuda(index))
        }
    }
}

/// A CUDA device as the driver describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaInfo {
    pub name: String,
    /// Compute capability, e.g. 9.0 for an H100.
    pub major: i32,
    pub minor: i32,
}

/// The name and compute capability of CUDA device `index` (as this process numbers them,
/// after `CUDA_VISIBLE_DEVICES`), from the driver library (`libcuda.so.1`, present on any
/// machine with an NVIDIA driver; tch binds no such query). `None` without a driver.
pub fn cuda_info(index: usize) -> Option<CudaInfo> {
    type Init = unsafe extern "C" fn(c_uint) -> c_int;
    type Get = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
    type Attribute = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;
    type Name = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
    // cuda.h: CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
    const MAJOR: c_int = 75;
    const MINOR: c_int = 76;
    let ordinal = c_int::try_from(index).ok()?;
    // SAFETY: dlopen/dlsym with valid NUL-terminated names; each symbol is cast to the
    // signature the CUDA driver API documents for it (cuInit, cuDeviceGet,
    // cuDeviceGetAttribute, cuDeviceGetName; CUdevice is an int), and every out-pointer
    // points at a live local of the right size. The handle stays open on purpose.
    unsafe {
        let handle = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            return None;
        }
        let symbol = |name: &std::ffi::CStr| {
            let p = libc::dlsym(handle, name.as_ptr());
            (!p.is_null()).then_some(p)
        };
        let init: Init = std::mem::transmute(symbol(c"cuInit")?);
        let get: Get = std::mem::transmute(symbol(c"cuDeviceGet")?);
        let attribute: Attribute = std::mem::transmute(symbol(c"cuDeviceGetAttribute")?);
        let name: Name = std::mem::transmute(symbol(c"cuDeviceGetName")?);
        let mut device: c_int = 0;
        if init(0) != 0 || get(&mut device, ordinal) != 0 {
            return None;
        }
        let (mut major, mut minor) = (0, 0);
        if attribute(&mut major, MAJOR, device) != 0 || attribute(&mut minor, MINOR, device) != 0 {
            return None;
        }
        let mut buf = [0 as c_char; 256];
        let name = if name(buf.as_mut_ptr(), buf.len() as c_int, device) == 0 {
            std::ffi::CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
        } else {
            format!("cuda device {index}")
        };
        Some(CudaInfo { name, major, minor })
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
    fn resolves_the_cpu_and_refuses_a_gpu_that_is_not_there() {
        use tsweep_proto::cell::Device as Wanted;
        assert_eq!(resolve(Wanted::Cpu).unwrap(), Device::Cpu);
        assert!(resolve(Wanted::Auto).is_ok());
        if !Cuda::is_available() {
            assert_eq!(resolve(Wanted::Auto).unwrap(), Device::Cpu);
            assert!(matches!(resolve(Wanted::Cuda(0)), Err(TrainerError::DeviceUnavailable(..))));
        }
    }
}
