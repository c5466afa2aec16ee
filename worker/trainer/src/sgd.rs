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

pub struct Sgd {
    params: Vec<(String, Tensor)>,
    buffers: Vec<Tensor>,
    momentum: f64,
    nesterov: bool,
    wd_coef: f64,
}

impl Sgd {
    pub fn new(params: Vec<(String, Tensor)>, momentum: f64, nesterov: bool, wd_coef: f64) -> Result<Sgd, TrainerError> {
        let buffers = params
            .iter()
            .map(|(_, p)| Tensor::f_zeros_like(p).map_err(TrainerError::from))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Sgd { params, buffers, momentum, nesterov, wd_coef })
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update with learning rate `lr`. Parameters without a gradient are skipped.
    pub fn step(&mut self, lr: f64) -> Result<(), TrainerError> {
        let Some((_, first)) = self.params.first() else { return Ok(()) };
        let device = first.device();
        let scalar = |v: f64| Tensor::f_scalar_tensor(v, (Kind::Float, device));
        let neg_lr = scalar(-lr)?;
        let wd = scalar(self.wd_coef)?;
        let m = scalar(self.momentum)?;
        tch::no_grad(|| -> Result<(), TrainerError> {
            for ((_, p), buf) in self.params.iter_mut().zip(self.buffers.iter_mut()) {
                let mut g = p.grad();
                if !g.defined() {
                    continue;
                }
                if self.wd_coef != 0.0 {
                    let _ = g.f_addcmul_(p, &wd)?;
                }
                if self.momentum != 0.0 {
                    let _ = buf.f_mul_(&m)?;
                    let _ = buf.f_add_(&g)?;
                    if self.nesterov {
                        let _ = g.f_addcmul_(buf, &m)?;
                    } else {
                        let _ = g.f_copy_(buf)?;
                    }
                }
                let _ = p.f_addcmul_(&g, &neg_lr)?;
            }
            Ok(())
        })
    }

    /// (parameter name, momentum buffer), for checkpoints.
    pub fn buffers(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.params.iter().map(|(n, _)| n.as_str()).zip(self.buffers.iter())
    }

    /// Restores a momentum buffer by parameter name; false if there is no such parameter.
    pub fn restore_buffer(&mut self, name: &str, value: &Tensor) -> Result<bool, TrainerError> {
        let Some(i) = self.params.iter().position(|(n, _)| n == name) else { return Ok(false) };
        tch::no_grad(|| self.buffers[i].f_copy_(value))?;
        Ok(true)
    }

    pub fn num_params(&self) -> usize {
        self.params.len()
    }
}

/// The learning rate at `step` of `total`: "cosine" decays to zero with no warmup,
/// "constant" keeps it.
pub fn learning_rate(schedule: &str, base: f64, step: u64, total: u64) -> f64 {
    match schedule {
        "constant" => base,
        _ => 0.5 * base * (1.0 + (std::f64::consts::PI * step as f64 / total.max(1) as f64).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_decays_to_zero() {
        assert_eq!(learning_rate("cosine", 0.1, 0, 100), 0.1);
        assert!((learning_rate("cosine", 0.1, 50, 100) - 0.05).abs() < 1e-12);
        assert!(learning_rate("cosine", 0.1, 100, 100).abs() < 1e-12);
        assert_eq!(learning_rate("constant", 0.1, 70, 100), 0.1);
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
