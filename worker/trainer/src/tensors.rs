//! Loader batches (u8 HWC) to network inputs (float `[B, 3, H, W]`, normalised per channel
//! as the model's `normalize` says) on the device.

use tch::{Device, Kind, Tensor};
use tsweep_data::{Batch, Targets};
use tsweep_proto::arch::Normalize;

use crate::error::TrainerError;

/// Converts batches: the u8 bytes travel to the device (4x less than floats), the
/// permute, cast and normalisation run there.
pub struct Normalizer {
    scale: Tensor,
    shift: Tensor,
    device: Device,
}

impl Normalizer {
    /// `(x / 255 - mean) / std` per channel, as one multiply and one add on the device.
    pub fn new(device: Device, normalize: &Normalize) -> Result<Normalizer, TrainerError> {
        let scale: Vec<f32> = normalize.std.iter().map(|s| (1.0 / (255.0 * s)) as f32).collect();
        let shift: Vec<f32> = normalize.mean.iter().zip(normalize.std).map(|(m, s)| (-m / s) as f32).collect();
        Ok(Normalizer {
            scale: Tensor::from_slice(&scale).f_view([1, 3, 1, 1])?.f_to_device(device)?,
            shift: Tensor::from_slice(&shift).f_view([1, 3, 1, 1])?.f_to_device(device)?,
            device,
        })
    }

    /// The batch's images, `[B, 3, H, W]` laid out channels-last as the loader made them
    /// (the cast keeps the strides); `Network::features` puts them in its backbone's layout.
    pub fn images(&self, batch: &Batch) -> Result<Tensor, TrainerError> {
        let (b, h, w) = (batch.batch_size as i64, batch.height as i64, batch.width as i64);
        let raw = self.upload(Tensor::from_slice(&batch.images).f_view([b, h, w, 3])?)?;
        let mut x = raw.f_permute([0, 3, 1, 2])?.f_to_kind(Kind::Float)?;
        let _ = x.f_mul_(&self.scale)?;
        let _ = x.f_add_(&self.shift)?;
        Ok(x)
    }

    /// Class indices `[B]` (i64) or multi-hot `[B, K]` (f32).
    pub fn targets(&self, batch: &Batch) -> Result<Tensor, TrainerError> {
        self.upload(match &batch.targets {
            Targets::Labels(y) => Tensor::from_slice(y),
            Targets::MultiHot(t, k) => Tensor::from_slice(t).f_view([batch.batch_size as i64, *k as i64])?,
        })
    }

    /// A host tensor on the device. To a GPU through pinned memory and an asynchronous copy:
    /// a copy from pageable memory would block this thread until the GPU has finished all
    /// the work queued before it, leaving the GPU idle while the next step is launched.
    fn upload(&self, host: Tensor) -> Result<Tensor, TrainerError> {
        match self.device {
            Device::Cpu => Ok(host),
            device => Ok(host.f_pin_memory(device)?.f_to_device_(device, host.kind(), true, false)?),
        }
    }
}

/// Mean loss of logits against targets: softmax cross-entropy for labels, per-class
/// binary cross-entropy (one-vs-rest) for multi-hot.
pub fn loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor, TrainerError> {
    smoothed_loss(logits, targets, 0.0)
}

/// [`loss`] against label-smoothed targets (Szegedy et al. 2016): for labels, the target
/// distribution is (1 − ε)·one-hot + ε/K, so the loss is (1 − ε)·NLL + ε·mean over the K
/// classes of −log p; for multi-hot, each binary target t becomes (1 − ε)·t + ε/2.
/// ε = 0 is the plain loss.
pub fn smoothed_loss(logits: &Tensor, targets: &Tensor, epsilon: f64) -> Result<Tensor, TrainerError> {
    Ok(if targets.kind() == Kind::Int64 {
        let log_p = logits.f_log_softmax(-1, Kind::Float)?;
        let nll = log_p.f_nll_loss::<Tensor>(targets, None, tch::Reduction::Mean, -100)?;
        if epsilon == 0.0 {
            nll
        } else {
            let uniform = log_p.f_mean_dim(-1, false, Kind::Float)?.f_mean(Kind::Float)?.f_neg()?;
            (nll.f_mul_scalar(1.0 - epsilon)?).f_add(&uniform.f_mul_scalar(epsilon)?)?
        }
    } else {
        let smoothed = if epsilon == 0.0 {
            targets.shallow_clone()
        } else {
            targets.f_mul_scalar(1.0 - epsilon)?.f_add_scalar(epsilon / 2.0)?
        };
        logits.f_binary_cross_entropy_with_logits::<Tensor>(&smoothed, None, None, tch::Reduction::Mean)?
    })
}

/// A flat f32 copy of a CPU-or-device tensor.
pub fn to_vec_f32(t: &Tensor) -> Result<Vec<f32>, TrainerError> {
    let t = t.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?.f_contiguous()?.f_flatten(0, -1)?;
    Ok(Vec::<f32>::try_from(&t)?)
}
