//! Mixed precision (the cell's `precision`): bf16 and fp16 through libtorch's autocast,
//! and dynamic loss scaling for fp16.
//!
//! - **Autocast** ([`autocast`]): the forward pass and the loss run with libtorch's own
//!   autocast policy for the device (convolutions, linear layers and matmuls in the lower
//!   precision, the ops autocast keeps in f32 in f32), the same kernels
//!   `torch.autocast(device, dtype)` uses. tch 0.24 binds only the deprecated CUDA-only
//!   switch, so the switches come from `csrc/autocast.cpp`. Master weights, the optimizer's
//!   momentum buffers and BatchNorm's running statistics stay f32: autocast casts a weight
//!   for the ops that want it (once per region, its cast cache) and never touches the
//!   variables; the backward pass runs outside the region, and gradients arrive in f32.
//! - **fp16 loss scaling** ([`GradScaler`], `torch.amp.GradScaler`'s rule): the loss is
//!   multiplied by the scale before backward, the gradients divided by it after; a step
//!   whose gradients hold an inf or NaN is skipped (no update of weights or momentum) and
//!   halves the scale, 2,000 clean steps in a row double it. Nothing waits on the device
//!   for it: the skip is applied on the device (`Sgd::step_scaled`), and the per-step
//!   "skipped" flags are read with the losses. [`MAX_SKIPPED_IN_A_ROW`] skipped steps in a
//!   row end the run as diverged.
//! - **Where each runs** ([`check`]): fp16 needs CUDA; bf16 on CUDA needs compute
//!   capability 8.0 (Ampere) or newer. Anything else is a fatal error naming the reason.

use std::os::raw::c_int;

use tch::{Device, Kind, Tensor};
use tsweep_proto::cell::Precision;

use crate::device;
use crate::error::TrainerError;

extern "C" {
    fn tsweep_autocast_is_enabled(device: c_int) -> c_int;
    fn tsweep_autocast_get_dtype(device: c_int) -> c_int;
    fn tsweep_autocast_enter(device: c_int, enabled: c_int, dtype: c_int);
    fn tsweep_autocast_exit(device: c_int, prev_enabled: c_int, prev_dtype: c_int);
}

/// c10's ScalarType codes (c10/core/ScalarType.h), the numbers tch's `Kind` maps to too.
const SCALAR_HALF: c_int = 5;
const SCALAR_BFLOAT16: c_int = 15;

/// Skipped fp16 steps in a row (gradients not finite at every scale tried) after which
/// the run is diverged: the scale has been halved this often, so the overflow is not the
/// scale's (a forward pass that overflows fp16, weights gone to inf).
pub const MAX_SKIPPED_IN_A_ROW: u64 = 50;

/// The reduced-precision type of a precision (`None` for fp32).
pub fn reduced_kind(precision: Precision) -> Option<Kind> {
    match precision {
        Precision::Fp32 => None,
        Precision::Bf16 => Some(Kind::BFloat16),
        Precision::Fp16 => Some(Kind::Half),
    }
}

/// Runs `f` with autocast on for `device` in `precision` (fp32: `f` as it is). The
/// previous autocast state of the thread is restored afterwards, also when `f` panics
/// (a libtorch exception caught by `guard_torch`). Weights cast inside the region are
/// cached until its outermost level ends: a region may span many forward passes only
/// while the weights do not change (feature extraction, evaluation), never an update.
pub fn autocast<T>(precision: Precision, device: Device, f: impl FnOnce() -> T) -> T {
    let dtype = match precision {
        Precision::Fp32 => return f(),
        Precision::Bf16 => SCALAR_BFLOAT16,
        Precision::Fp16 => SCALAR_HALF,
    };
    let _region = Region::enter(device, dtype);
    f()
}

/// One autocast nesting level on this thread; leaving it restores the state before.
struct Region {
    device: c_int,
    prev_enabled: c_int,
    prev_dtype: c_int,
}

impl Region {
    fn enter(device: Device, dtype: c_int) -> Region {
        let device = match device {
            Device::Cuda(_) => 1,
            _ => 0,
        };
        // SAFETY: the shim's functions take plain integers and only read or write
        // libtorch's thread-local autocast state; they do not throw.
        unsafe {
            let prev_enabled = tsweep_autocast_is_enabled(device);
            let prev_dtype = tsweep_autocast_get_dtype(device);
            tsweep_autocast_enter(device, 1, dtype);
            Region { device, prev_enabled, prev_dtype }
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: as in `enter`; restores what `enter` read.
        unsafe { tsweep_autocast_exit(self.device, self.prev_enabled, self.prev_dtype) }
    }
}

/// Whether autocast is on for `device` on this thread (tests).
pub fn autocast_enabled(device: Device) -> bool {
    let device = if matches!(device, Device::Cuda(_)) { 1 } else { 0 };
    // SAFETY: reads libtorch's thread-local autocast state.
    unsafe { tsweep_autocast_is_enabled(device) != 0 }
}

/// Refuses a precision the device cannot run: fp16 off CUDA, bf16 on a GPU older than
/// compute capability 8.0. On a CPU without native bf16 (AVX-512 BF16 or AMX), bf16 runs
/// but emulated, slower than fp32: that is logged, not refused.
pub fn check(precision: Precision, device: Device) -> Result<(), TrainerError> {
    let capability = match device {
        Device::Cuda(i) => device::cuda_info(i),
        _ => None,
    };
    if let Some(reason) = unsupported(precision, device, capability.as_ref()) {
        return Err(TrainerError::PrecisionUnsupported {
            precision: precision.name().into(),
            device: device::name(device),
            reason,
        });
    }
    if precision == Precision::Bf16 && device == Device::Cpu && !cpu_has_native_bf16() {
        tracing::warn!(
            "bf16 on a CPU without AVX-512 BF16 or AMX runs emulated, slower than fp32 (BENCHMARKS.md, \"Mixed precision\")"
        );
    }
    Ok(())
}

/// Why `precision` cannot run on `device` (with the GPU's name and compute capability,
/// when known), or `None` when it can.
pub fn unsupported(precision: Precision, device: Device, gpu: Option<&device::CudaInfo>) -> Option<String> {
    match (precision, device) {
        (Precision::Fp32, _) => None,
        (Precision::Fp16, Device::Cuda(_)) => None,
        (Precision::Fp16, _) => Some(
            "fp16 needs a CUDA GPU (its loss scaling and half-precision kernels are a GPU recipe); this task runs \
             on the CPU: use bf16 or fp32 for cells CPU-only workers run"
                .into(),
        ),
        (Precision::Bf16, Device::Cuda(_)) => match gpu {
            Some(gpu) if gpu.major < 8 => Some(format!(
                "bf16 needs a GPU of compute capability 8.0 or newer (A100, H100, RTX 30xx and later); {} is {}.{}: \
                 use fp16 or fp32 on it",
                gpu.name, gpu.major, gpu.minor
            )),
            _ => None,
        },
        (Precision::Bf16, _) => None,
    }
}

/// AVX-512 BF16 (or an ARM CPU's bf16 extension): oneDNN's bf16 kernels run natively.
fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("bf16")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Dynamic loss scaling for fp16 (`torch.amp.GradScaler` with its defaults): scale 2^16 at
/// the start, halved on a step with non-finite gradients (that step skipped), doubled
/// after 2,000 finite steps in a row. The scale and its growth counter live on the device
/// and are updated there (`_amp_update_scale_`); the counts of skipped steps are host-side,
/// from the per-step flags read with the losses. All of it goes into checkpoints.
pub struct GradScaler {
    scale: Tensor,
    growth_tracker: Tensor,
    /// Steps skipped since the run began (resumed runs included).
    pub skipped_steps: u64,
    /// Steps skipped in a row up to the last one read.
    pub skipped_in_a_row: u64,
}

pub const INIT_SCALE: f64 = 65536.0;
pub const GROWTH_FACTOR: f64 = 2.0;
pub const BACKOFF_FACTOR: f64 = 0.5;
pub const GROWTH_INTERVAL: i64 = 2000;

impl GradScaler {
    /// The scaler of a cell: `Some` for fp16 only.
    pub fn for_precision(precision: Precision, device: Device) -> Result<Option<GradScaler>, TrainerError> {
        match precision {
            Precision::Fp16 => Ok(Some(GradScaler::new(device)?)),
            Precision::Fp32 | Precision::Bf16 => Ok(None),
        }
    }

    pub fn new(device: Device) -> Result<GradScaler, TrainerError> {
        Ok(GradScaler {
            scale: Tensor::f_full([], INIT_SCALE, (Kind::Float, device))?,
            growth_tracker: Tensor::f_zeros([], (Kind::Int, device))?,
            skipped_steps: 0,
            skipped_in_a_row: 0,
        })
    }

    /// `loss · scale`, to run backward on.
    pub fn scale_loss(&self, loss: &Tensor) -> Result<Tensor, TrainerError> {
        Ok(loss.f_mul(&self.scale)?)
    }

    /// Divides the gradients by the scale in place and returns the step's "found inf" flag
    /// (f32 0-d: 1 when any gradient is inf or NaN). One pass to divide, one to sum: the
    /// sum of the unscaled gradients is finite exactly when every one of them is (an
    /// overflow of the f32 sum itself would need gradients near 1e31, a diverged run).
    pub fn unscale_(&self, grads: &mut Tensor) -> Result<Tensor, TrainerError> {
        let inv = self.scale.f_reciprocal()?;
        let _ = grads.f_mul_(&inv)?;
        Ok(grads.f_sum(Kind::Float)?.f_isfinite()?.f_logical_not()?.f_to_kind(Kind::Float)?)
    }

    /// Backs the scale off or grows it after a step, on the device.
    pub fn update(&mut self, found_inf: &Tensor) -> Result<(), TrainerError> {
        let _ = self.scale.f_internal_amp_update_scale_(
            &self.growth_tracker,
            found_inf,
            GROWTH_FACTOR,
            BACKOFF_FACTOR,
            GROWTH_INTERVAL,
        )?;
        Ok(())
    }

    /// Counts the steps' flags as read (1 = skipped). Returns true when the run has now
    /// skipped [`MAX_SKIPPED_IN_A_ROW`] steps in a row.
    pub fn count(&mut self, skipped: bool) -> bool {
        if skipped {
            self.skipped_steps += 1;
            self.skipped_in_a_row += 1;
        } else {
            self.skipped_in_a_row = 0;
        }
        self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW
    }

    /// The current scale (reads the device).
    pub fn scale_value(&self) -> Result<f64, TrainerError> {
        Ok(self.scale.f_double_value(&[])?)
    }

    /// The state for a checkpoint, as named CPU tensors (`amp.*`).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>, TrainerError> {
        Ok(vec![
            ("amp.scale".into(), self.scale.f_to_device(Device::Cpu)?.f_reshape([1])?),
            ("amp.growth_tracker".into(), self.growth_tracker.f_to_device(Device::Cpu)?.f_reshape([1])?),
            ("amp.skipped_steps".into(), Tensor::from_slice(&[self.skipped_steps as i64])),
            ("amp.skipped_in_a_row".into(), Tensor::from_slice(&[self.skipped_in_a_row as i64])),
        ])
    }

    /// Restores [`GradScaler::state`]; `get` looks a checkpoint tensor up by name. Returns
    /// the first missing name, if any.
    pub fn restore(&mut self, get: &dyn Fn(&str) -> Option<Tensor>) -> Result<Option<String>, TrainerError> {
        let names = ["amp.scale", "amp.growth_tracker", "amp.skipped_steps", "amp.skipped_in_a_row"];
        let mut found = Vec::with_capacity(names.len());
        for name in names {
            match get(name) {
                Some(t) => found.push(t),
                None => return Ok(Some(name.to_string())),
            }
        }
        let device = self.scale.device();
        tch::no_grad(|| -> Result<(), TrainerError> {
            self.scale.f_copy_(&found[0].f_reshape([])?.f_to_kind(Kind::Float)?.f_to_device(device)?)?;
            self.growth_tracker.f_copy_(&found[1].f_reshape([])?.f_to_kind(Kind::Int)?.f_to_device(device)?)?;
            Ok(())
        })?;
        self.skipped_steps = found[2].f_int64_value(&[0])?.max(0) as u64;
        self.skipped_in_a_row = found[3].f_int64_value(&[0])?.max(0) as u64;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autocast_regions_nest_and_restore_the_thread_state() {
        assert!(!autocast_enabled(Device::Cpu));
        autocast(Precision::Bf16, Device::Cpu, || {
            assert!(autocast_enabled(Device::Cpu));
            autocast(Precision::Bf16, Device::Cpu, || assert!(autocast_enabled(Device::Cpu)));
            assert!(autocast_enabled(Device::Cpu), "an inner region leaves the outer one on");
        });
        assert!(!autocast_enabled(Device::Cpu));
        autocast(Precision::Fp32, Device::Cpu, || assert!(!autocast_enabled(Device::Cpu)));
        let caught = std::panic::catch_unwind(|| autocast(Precision::Bf16, Device::Cpu, || panic!("libtorch threw")));
        assert!(caught.is_err());
        assert!(!autocast_enabled(Device::Cpu), "a panic inside the region still restores the state");
    }

    #[test]
    fn bf16_autocast_runs_convolutions_in_bf16_and_keeps_f32_weights_and_statistics() {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let conv = tch::nn::conv2d(vs.root() / "c", 3, 4, 3, Default::default());
        let bn = tch::nn::batch_norm2d(vs.root() / "bn", 4, Default::default());
        let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let (y, z) = autocast(Precision::Bf16, Device::Cpu, || {
            let y = x.apply(&conv);
            let z = y.apply_t(&bn, true);
            (y, z)
        });
        assert_eq!(y.kind(), Kind::BFloat16);
        assert_eq!(z.kind(), Kind::BFloat16);
        z.to_kind(Kind::Float).sum(Kind::Float).backward();
        for (name, t) in vs.variables() {
            assert_eq!(t.kind(), Kind::Float, "{name}");
        }
        assert_eq!(conv.ws.grad().kind(), Kind::Float, "gradients of f32 weights are f32");
        let outside = x.apply(&conv);
        assert_eq!(outside.kind(), Kind::Float, "outside the region: f32");
    }

    #[test]
    fn fp16_runs_only_on_cuda_and_bf16_on_cuda_needs_ampere() {
        let cpu = Device::Cpu;
        let gpu = Device::Cuda(0);
        assert_eq!(unsupported(Precision::Fp32, cpu, None), None);
        assert_eq!(unsupported(Precision::Bf16, cpu, None), None);
        let fp16_cpu = unsupported(Precision::Fp16, cpu, None).unwrap();
        assert!(fp16_cpu.contains("needs a CUDA GPU") && fp16_cpu.contains("bf16"), "{fp16_cpu}");
        assert_eq!(unsupported(Precision::Fp16, gpu, None), None);
        let v100 = device::CudaInfo { name: "Tesla V100-SXM2-16GB".into(), major: 7, minor: 0 };
        let h100 = device::CudaInfo { name: "NVIDIA H100 80GB HBM3".into(), major: 9, minor: 0 };
        let old = unsupported(Precision::Bf16, gpu, Some(&v100)).unwrap();
        assert!(old.contains("compute capability 8.0") && old.contains("Tesla V100-SXM2-16GB is 7.0"), "{old}");
        assert_eq!(unsupported(Precision::Bf16, gpu, Some(&h100)), None);
        assert_eq!(unsupported(Precision::Fp16, gpu, Some(&v100)), None);
        let err = check(Precision::Fp16, cpu).unwrap_err();
        assert_eq!(err.class(), tsweep_proto::v1::FailureClass::Fatal);
        assert!(err.to_string().starts_with("precision fp16 cannot run on cpu: fp16 needs a CUDA GPU"), "{err}");
    }

    #[test]
    fn the_scaler_skips_on_overflow_backs_off_and_grows_like_torch_gradscaler() {
        let mut s = GradScaler::new(Device::Cpu).unwrap();
        let mut grads = Tensor::from_slice(&[65536.0f32, -131072.0]);
        let found = s.unscale_(&mut grads).unwrap();
        assert_eq!(Vec::<f32>::try_from(&grads).unwrap(), vec![1.0, -2.0]);
        assert_eq!(found.double_value(&[]), 0.0);
        s.update(&found).unwrap();
        assert_eq!(s.scale_value().unwrap(), INIT_SCALE);
        let mut bad = Tensor::from_slice(&[1.0f32, f32::INFINITY, 0.0]);
        let found = s.unscale_(&mut bad).unwrap();
        assert_eq!(found.double_value(&[]), 1.0);
        s.update(&found).unwrap();
        assert_eq!(s.scale_value().unwrap(), INIT_SCALE * BACKOFF_FACTOR);
        let mut nan = Tensor::from_slice(&[f32::NAN]);
        assert_eq!(s.unscale_(&mut nan).unwrap().double_value(&[]), 1.0);
        // growth after GROWTH_INTERVAL clean steps in a row
        let clean = Tensor::zeros([], (Kind::Float, Device::Cpu));
        for _ in 0..GROWTH_INTERVAL {
            s.update(&clean).unwrap();
        }
        assert_eq!(s.scale_value().unwrap(), INIT_SCALE * BACKOFF_FACTOR * GROWTH_FACTOR);

        assert!(!s.count(true));
        assert!(!s.count(false));
        for i in 1..MAX_SKIPPED_IN_A_ROW {
            assert!(!s.count(true), "{i} in a row");
        }
        assert!(s.count(true), "{MAX_SKIPPED_IN_A_ROW} in a row end the run");
        assert_eq!(s.skipped_steps, MAX_SKIPPED_IN_A_ROW + 1);

        // the state survives a checkpoint
        let state = s.state().unwrap();
        let mut back = GradScaler::new(Device::Cpu).unwrap();
        let get = |n: &str| state.iter().find(|(k, _)| k == n).map(|(_, t)| t.shallow_clone());
        assert_eq!(back.restore(&get).unwrap(), None);
        assert_eq!(back.scale_value().unwrap(), s.scale_value().unwrap());
        assert_eq!(back.growth_tracker.int64_value(&[]), s.growth_tracker.int64_value(&[]));
        assert_eq!((back.skipped_steps, back.skipped_in_a_row), (s.skipped_steps, s.skipped_in_a_row));
        let none = |_: &str| None;
        assert_eq!(back.restore(&none).unwrap(), Some("amp.scale".to_string()));
    }
}
