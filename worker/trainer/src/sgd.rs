//! SGD with (Nesterov) momentum and weight decay, PyTorch's update rule, with momentum
//! buffers owned here so that checkpoints hold them and a resumed run is exact:
//!
//! ```text
//! g   = grad + wd_coef * p
//! buf = momentum * buf + g            (buf starts at zero, i.e. buf = g on step one)
//! g   = g + momentum * buf  (nesterov)  |  g = buf  (plain momentum)
//! p   = p - lr * g
//! ```
//! The cell's weight decay `wd` enters as `wd_coef = wd / lr_base` (PROTOCOL.md), so the
//! per-step decay at the start of the schedule is `wd`.

use tch::{Kind, Tensor};

use crate::error::TrainerError;
use crate::models::is_channels_last;
use crate::precision::GradScaler;

/// Segments of the flat buffers start on multiples of this many elements (256 bytes for
/// f32), so every parameter view stays as aligned as a separately allocated tensor.
const ALIGN: i64 = 64;

/// The optimizer owns three flat buffers (parameters, gradients, momentum); every
/// parameter and its gradient is re-pointed (`set_data`) at a view of them, so an update
/// is five whole-buffer kernels instead of five per parameter (PyTorch's `foreach` SGD
/// gets the same effect with multi-tensor kernels; tch has no binding for those).
/// Each view keeps its parameter's layout (contiguous, or channels-last for the 4-d
/// weights of CPU backbones), and gradients get views of the same layout.
pub struct Sgd {
    names: Vec<String>,
    params: Vec<Tensor>,
    shapes: Vec<Vec<i64>>,
    channels_last: Vec<bool>,
    segments: Vec<(i64, i64)>,
    flat_params: Tensor,
    flat_grads: Tensor,
    flat_momentum: Tensor,
    grads_bound: bool,
    momentum: f64,
    nesterov: bool,
    wd_coef: f64,
}

impl Sgd {
    pub fn new(named: Vec<(String, Tensor)>, momentum: f64, nesterov: bool, wd_coef: f64) -> Result<Sgd, TrainerError> {
        let mut segments = Vec::with_capacity(named.len());
        let mut offset = 0i64;
        for (_, p) in &named {
            let n = p.numel() as i64;
            segments.push((offset, n));
            offset += (n + ALIGN - 1) / ALIGN * ALIGN;
        }
        let (kind, device) =
            named.first().map(|(_, p)| (p.kind(), p.device())).unwrap_or((Kind::Float, tch::Device::Cpu));
        let flat_params = Tensor::f_zeros([offset.max(1)], (kind, device))?;
        let flat_grads = Tensor::f_zeros([offset.max(1)], (kind, device))?;
        let flat_momentum = Tensor::f_zeros([offset.max(1)], (kind, device))?;
        let mut names = Vec::with_capacity(named.len());
        let mut params = Vec::with_capacity(named.len());
        let mut shapes = Vec::with_capacity(named.len());
        let mut channels_last = Vec::with_capacity(named.len());
        for ((name, mut p), &(off, n)) in named.into_iter().zip(&segments) {
            let shape = p.size();
            let nhwc = is_channels_last(&p);
            let view = segment_view(&flat_params, off, n, &shape, nhwc)?;
            tch::no_grad(|| view.shallow_clone().f_copy_(&p))?;
            p.f_set_data(&view)?;
            names.push(name);
            params.push(p);
            shapes.push(shape);
            channels_last.push(nhwc);
        }
        Ok(Sgd {
            names,
            params,
            shapes,
            channels_last,
            segments,
            flat_params,
            flat_grads,
            flat_momentum,
            grads_bound: false,
            momentum,
            nesterov,
            wd_coef,
        })
    }

    fn view(&self, flat: &Tensor, i: usize) -> Result<Tensor, TrainerError> {
        let (off, n) = self.segments[i];
        segment_view(flat, off, n, &self.shapes[i], self.channels_last[i])
    }

    pub fn zero_grad(&mut self) {
        if self.grads_bound {
            let _ = self.flat_grads.zero_();
        } else {
            for p in &mut self.params {
                p.zero_grad();
            }
        }
    }

    /// Re-points every gradient at its view of the flat gradient buffer (once, after the
    /// first backward pass creates them); later backward passes accumulate in place.
    fn bind_grads(&mut self) -> Result<bool, TrainerError> {
        let grads: Vec<Tensor> = self.params.iter().map(|p| p.grad()).collect();
        if grads.iter().any(|g| !g.defined()) {
            return Ok(false);
        }
        for (i, mut g) in grads.into_iter().enumerate() {
            let view = self.view(&self.flat_grads, i)?;
            tch::no_grad(|| view.shallow_clone().f_copy_(&g))?;
            g.f_set_data(&view)?;
        }
        self.grads_bound = true;
        Ok(true)
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) -> Result<(), TrainerError> {
        if self.params.is_empty() {
            return Ok(());
        }
        self.ensure_grads_bound()?;
        self.update(lr, None)
    }

    /// One fp16 update: unscales the gradients (`scaler`), applies the update unless a
    /// gradient is inf or NaN — then weights and momentum stay exactly as they were — and
    /// updates the scale. Returns the step's "skipped" flag (f32 0-d, 1 = skipped) still on
    /// the device: nothing here waits for the device.
    pub fn step_scaled(&mut self, lr: f64, scaler: &mut GradScaler) -> Result<Tensor, TrainerError> {
        let device = self.flat_params.device();
        if self.params.is_empty() {
            return Ok(Tensor::f_zeros([], (Kind::Float, device))?);
        }
        self.ensure_grads_bound()?;
        let mut grads = self.flat_grads.shallow_clone();
        let found_inf = tch::no_grad(|| scaler.unscale_(&mut grads))?;
        self.update(lr, Some(&found_inf))?;
        scaler.update(&found_inf)?;
        Ok(found_inf)
    }

    fn ensure_grads_bound(&mut self) -> Result<(), TrainerError> {
        if !self.grads_bound && !self.bind_grads()? {
            return Err(TrainerError::Torch {
                during: "the sgd step".into(),
                detail: "a trained parameter got no gradient".into(),
            });
        }
        Ok(())
    }

    /// The update on the flat buffers. With `found_inf` (f32 0-d) set to 1 it changes
    /// nothing, decided on the device: the gradient is cleared, and weight decay, the
    /// learning rate and the momentum's decay become 0, 0 and 1, so `buf` and `p` keep
    /// their exact values (every term added is an exact zero).
    fn update(&mut self, lr: f64, found_inf: Option<&Tensor>) -> Result<(), TrainerError> {
        let device = self.flat_params.device();
        let scalar = |v: f64| Tensor::f_scalar_tensor(v, (Kind::Float, device));
        let mut neg_lr = scalar(-lr)?;
        let mut wd = scalar(self.wd_coef)?;
        let mut m = scalar(self.momentum)?;
        let mut p = self.flat_params.shallow_clone();
        let mut g = self.flat_grads.shallow_clone();
        let mut buf = self.flat_momentum.shallow_clone();
        tch::no_grad(|| -> Result<(), TrainerError> {
            if let Some(found_inf) = found_inf {
                let skip = found_inf.f_gt(0.0)?;
                let zero = scalar(0.0)?;
                let _ = g.f_masked_fill_(&skip, 0.0)?;
                neg_lr = zero.f_where_self(&skip, &neg_lr)?;
                wd = zero.f_where_self(&skip, &wd)?;
                m = scalar(1.0)?.f_where_self(&skip, &m)?;
            }
            if self.wd_coef != 0.0 {
                let _ = g.f_addcmul_(&p, &wd)?;
            }
            if self.momentum != 0.0 {
                let _ = buf.f_mul_(&m)?;
                let _ = buf.f_add_(&g)?;
                if self.nesterov {
                    let _ = g.f_addcmul_(&buf, &m)?;
                } else {
                    g.f_copy_(&buf)?;
                }
            }
            let _ = p.f_addcmul_(&g, &neg_lr)?;
            Ok(())
        })
    }

    /// (parameter name, momentum buffer view), for checkpoints.
    pub fn buffers(&self) -> Result<Vec<(String, Tensor)>, TrainerError> {
        (0..self.names.len()).map(|i| Ok((self.names[i].clone(), self.view(&self.flat_momentum, i)?))).collect()
    }

    /// Restores a momentum buffer by parameter name; false if there is no such parameter.
    pub fn restore_buffer(&mut self, name: &str, value: &Tensor) -> Result<bool, TrainerError> {
        let Some(i) = self.names.iter().position(|n| n == name) else { return Ok(false) };
        let view = self.view(&self.flat_momentum, i)?;
        tch::no_grad(|| view.shallow_clone().f_copy_(value))?;
        Ok(true)
    }

    pub fn num_params(&self) -> usize {
        self.params.len()
    }
}

/// Elements `[off, off + n)` of a flat buffer as a tensor of `shape`, laid out
/// channels-last (`[o, h, w, i]` in memory) when `nhwc`.
fn segment_view(flat: &Tensor, off: i64, n: i64, shape: &[i64], nhwc: bool) -> Result<Tensor, TrainerError> {
    let segment = flat.f_narrow(0, off, n)?;
    if nhwc {
        Ok(segment.f_view([shape[0], shape[2], shape[3], shape[1]])?.f_permute([0, 3, 1, 2])?)
    } else {
        Ok(segment.f_view(shape)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_last_parameters_keep_their_layout_and_get_the_same_update() {
        tch::manual_seed(0);
        let init = Tensor::randn([4, 3, 2, 2], (Kind::Float, tch::Device::Cpu));
        let x = Tensor::randn([2, 3, 5, 5], (Kind::Float, tch::Device::Cpu));
        let mut results = Vec::new();
        for nhwc in [false, true] {
            let p = if nhwc { crate::models::to_channels_last(&init).unwrap() } else { init.copy() };
            let p = p.set_requires_grad(true);
            let mut sgd = Sgd::new(vec![("w".into(), p.shallow_clone())], 0.9, true, 0.1).unwrap();
            for _ in 0..3 {
                sgd.zero_grad();
                x.conv2d(&p, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1).square().sum(Kind::Float).backward();
                sgd.step(0.01).unwrap();
            }
            assert_eq!(crate::models::is_channels_last(&p), nhwc);
            assert_eq!(crate::models::is_channels_last(&p.grad()), nhwc);
            results.push(p.detach().contiguous());
        }
        let diff = f64::try_from((&results[0] - &results[1]).abs().max()).unwrap();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn a_step_with_non_finite_gradients_changes_nothing_and_a_finite_one_matches_the_plain_step() {
        tch::manual_seed(1);
        let init = Tensor::randn([6], (Kind::Float, tch::Device::Cpu));
        let scaled = init.copy().set_requires_grad(true);
        let plain = init.copy().set_requires_grad(true);
        let mut sgd_scaled = Sgd::new(vec![("w".into(), scaled.shallow_clone())], 0.9, true, 0.1).unwrap();
        let mut sgd_plain = Sgd::new(vec![("w".into(), plain.shallow_clone())], 0.9, true, 0.1).unwrap();
        let mut scaler = GradScaler::new(tch::Device::Cpu).unwrap();
        let scale = crate::precision::INIT_SCALE;
        for step in 0..4 {
            sgd_scaled.zero_grad();
            sgd_plain.zero_grad();
            (&plain * &plain).sum(Kind::Float).backward();
            let loss = (&scaled * &scaled).sum(Kind::Float);
            scaler.scale_loss(&loss).unwrap().backward();
            if step == 2 {
                // an overflow: the scaled step must be skipped exactly
                let _ = tch::no_grad(|| scaled.grad().get(0).fill_(f64::INFINITY));
                let before = (scaled.detach().copy(), sgd_scaled.buffers().unwrap()[0].1.copy());
                let found = sgd_scaled.step_scaled(0.1, &mut scaler).unwrap();
                assert_eq!(found.double_value(&[]), 1.0);
                assert!(scaled.detach().equal(&before.0), "weights unchanged");
                assert!(sgd_scaled.buffers().unwrap()[0].1.equal(&before.1), "momentum unchanged");
                assert_eq!(scaler.scale_value().unwrap(), scale * 0.5);
                continue;
            }
            let found = sgd_scaled.step_scaled(0.1, &mut scaler).unwrap();
            assert_eq!(found.double_value(&[]), 0.0);
            sgd_plain.step(0.1).unwrap();
            // unscaled by a power of two: the same update as without scaling, skipped step or not
            assert!(scaled.detach().allclose(&plain.detach(), 1e-6, 1e-7, false), "step {step}");
        }
    }

    #[test]
    fn matches_pytorch_nesterov_rule() {
        // one parameter, loss = 0.5 * p^2 -> grad = p; two steps by hand
        let p = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let mut sgd = Sgd::new(vec![("p".into(), p.shallow_clone())], 0.9, true, 0.1).unwrap();
        let (lr, m, wd) = (0.5f64, 0.9f64, 0.1f64);
        let (mut pv, mut buf) = (1.0f64, 0.0f64);
        for _ in 0..2 {
            sgd.zero_grad();
            (&p * &p * 0.5).sum(Kind::Float).backward();
            sgd.step(lr).unwrap();
            let g = pv + wd * pv;
            buf = m * buf + g;
            pv -= lr * (g + m * buf);
        }
        assert!((p.double_value(&[0]) - pv).abs() < 1e-6, "{} vs {pv}", p.double_value(&[0]));
    }
}
