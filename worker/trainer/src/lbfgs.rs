//! Full-batch L2-regularised logistic regression by L-BFGS, on tensors (CPU or GPU).
//!
//! Objective (scikit-learn's convention for `LogisticRegression(C)`, and
//! shared/bench/logreg.py's):
//! ```text
//! J(W, b) = mean_i loss(x_i W + b, y_i) + (l2 / 2) * ||W||_F^2        (b not penalised)
//! ```
//! so `l2 = 1 / (C * n)`. `loss` is softmax cross-entropy (multinomial) or, for
//! multi-label data, the sum over classes of the binary cross-entropy (one-vs-rest: the
//! objective separates over classes, so its minimiser is the K independent binary fits).
//! The gradient is written out (no autograd): `G = (softmax(Z) - Y) / n`,
//! `dW = X^T G + l2 W`, `db = sum_i G_i`.
//!
//! L-BFGS: two-loop recursion over the last `history` pairs, backtracking (Armijo) line
//! search from step 1 (the first iteration from min(1, 1/|g|_1)), pairs with
//! non-positive curvature skipped. Stops when max|grad| <= `gtol` (scikit-learn's `tol`
//! criterion), when an iteration no longer lowers J, or after `max_iter` iterations.

use tch::{Kind, Tensor};

use crate::error::TrainerError;

/// The data of a fit: features `[n, d]` and targets (labels `[n]` i64, or multi-hot
/// `[n, k]` f32), all on one device.
pub struct Problem<'a> {
    pub x: &'a Tensor,
    /// Dense `[n, k]` targets (one-hot for labels).
    pub y: Tensor,
    pub multi_label: bool,
    pub n: i64,
    pub d: i64,
    pub k: i64,
}

impl<'a> Problem<'a> {
    pub fn new(x: &'a Tensor, targets: &Tensor, k: i64) -> Result<Problem<'a>, TrainerError> {
        let size = x.size();
        let (n, d) = (size[0], size[1]);
        let multi_label = targets.kind() != Kind::Int64;
        let y =
            if multi_label { targets.f_to_kind(Kind::Float)? } else { targets.f_one_hot(k)?.f_to_kind(Kind::Float)? };
        Ok(Problem { x, y, multi_label, n, d, k })
    }

    /// Flat parameter vector of zeros: `d*k` weights then `k` biases.
    pub fn zeros(&self) -> Result<Tensor, TrainerError> {
        Ok(Tensor::f_zeros([self.d * self.k + self.k], (Kind::Float, self.x.device()))?)
    }

    pub fn split(&self, theta: &Tensor) -> Result<(Tensor, Tensor), TrainerError> {
        let w = theta.f_narrow(0, 0, self.d * self.k)?.f_view([self.d, self.k])?;
        let b = theta.f_narrow(0, self.d * self.k, self.k)?;
        Ok((w, b))
    }

    /// Scores `[m, k]` of features `x` under `theta`.
    pub fn scores(&self, x: &Tensor, theta: &Tensor) -> Result<Tensor, TrainerError> {
        let (w, b) = self.split(theta)?;
        Ok(b.f_addmm(x, &w)?)
    }

    /// J and its gradient at `theta`.
    pub fn value_and_grad(&self, theta: &Tensor, l2: f64) -> Result<(f64, Tensor), TrainerError> {
        let (w, b) = self.split(theta)?;
        let z = b.f_addmm(self.x, &w)?;
        let n = self.n as f64;
        let (data_loss, mut g) = if self.multi_label {
            // sum_k softplus(z) - y z, averaged over rows
            let loss = (z.f_softplus()?.f_sub(&z.f_mul(&self.y)?)?).f_sum(Kind::Double)?.f_double_value(&[])? / n;
            let mut g = z.f_sigmoid()?;
            let _ = g.f_sub_(&self.y)?;
            (loss, g)
        } else {
            let lse = z.f_logsumexp([1], true)?;
            // per-row loss in f32 (lse - the target's score, no cancellation across rows),
            // summed in f64: an f32 sum of n terms near log K is too coarse for the line
            // search's sufficient-decrease test on ill-conditioned features
            let picked = z.f_mul(&self.y)?.f_sum_dim_intlist([1i64].as_slice(), true, Kind::Float)?;
            let loss = lse.f_sub(&picked)?.f_sum(Kind::Double)?.f_double_value(&[])? / n;
            let mut g = z.f_sub(&lse)?;
            let _ = g.f_exp_()?;
            let _ = g.f_sub_(&self.y)?;
            (loss, g)
        };
        let _ = g.f_mul_scalar_(1.0 / n)?;
        let w2 = w.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        let value = data_loss + 0.5 * l2 * w2;
        let mut gw = self.x.f_tr()?.f_mm(&g)?;
        if l2 != 0.0 {
            let _ = gw.f_add_(&w.f_mul_scalar(l2)?)?;
        }
        let gb = g.f_sum_dim_intlist([0i64].as_slice(), false, Kind::Float)?;
        let grad = Tensor::f_cat(&[gw.f_flatten(0, -1)?, gb], 0)?;
        Ok((value, grad))
    }
}

#[derive(Debug, Clone, Copy)]
pub struct LbfgsOptions {
    pub max_iter: u32,
    pub history: usize,
    pub gtol: f64,
}

impl Default for LbfgsOptions {
    fn default() -> Self {
        LbfgsOptions { max_iter: 1000, history: 10, gtol: 1e-4 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitReport {
    pub value: f64,
    pub iterations: u32,
    pub evaluations: u32,
    pub grad_max: f64,
    pub converged: bool,
}

/// `a · b` accumulated in f64 (curvature pairs `s · y` can be tiny).
fn dot(a: &Tensor, b: &Tensor) -> Result<f64, TrainerError> {
    Ok(a.f_mul(b)?.f_sum(Kind::Double)?.f_double_value(&[])?)
}

fn max_abs(a: &Tensor) -> Result<f64, TrainerError> {
    Ok(a.f_abs()?.f_max()?.f_double_value(&[])?)
}

/// Minimises J from `theta` (updated in place, a warm start).
pub fn fit(problem: &Problem, theta: &mut Tensor, l2: f64, opts: LbfgsOptions) -> Result<FitReport, TrainerError> {
    tch::no_grad(|| fit_inner(problem, theta, l2, opts))
}

fn fit_inner(problem: &Problem, theta: &mut Tensor, l2: f64, opts: LbfgsOptions) -> Result<FitReport, TrainerError> {
    let (mut f, mut g) = problem.value_and_grad(theta, l2)?;
    let mut evaluations = 1;
    let mut s_hist: Vec<Tensor> = Vec::new();
    let mut y_hist: Vec<Tensor> = Vec::new();
    let mut rho: Vec<f64> = Vec::new();
    let mut iterations = 0;
    let mut gmax = max_abs(&g)?;
    while gmax > opts.gtol && iterations < opts.max_iter {
        // two-loop recursion
        let mut q = g.f_neg()?;
        let m = s_hist.len();
        let mut alpha = vec![0.0; m];
        for i in (0..m).rev() {
            alpha[i] = rho[i] * dot(&s_hist[i], &q)?;
            let _ = q.f_sub_(&y_hist[i].f_mul_scalar(alpha[i])?)?;
        }
        if let (Some(s), Some(y)) = (s_hist.last(), y_hist.last()) {
            let gamma = dot(s, y)? / dot(y, y)?.max(1e-30);
            let _ = q.f_mul_scalar_(gamma)?;
        }
        for i in 0..m {
            let beta = rho[i] * dot(&y_hist[i], &q)?;
            let _ = q.f_add_(&s_hist[i].f_mul_scalar(alpha[i] - beta)?)?;
        }
        let mut direction = q;
        let mut slope = dot(&g, &direction)?;
        if slope >= 0.0 {
            // not a descent direction (numerics): restart from steepest descent
            s_hist.clear();
            y_hist.clear();
            rho.clear();
            direction = g.f_neg()?;
            slope = dot(&g, &direction)?;
        }
        let mut t =
            if s_hist.is_empty() { (1.0 / g.f_abs()?.f_sum(Kind::Double)?.f_double_value(&[])?).min(1.0) } else { 1.0 };
        let mut accepted = None;
        for _ in 0..30 {
            let candidate = theta.f_add(&direction.f_mul_scalar(t)?)?;
            let (f_new, g_new) = problem.value_and_grad(&candidate, l2)?;
            evaluations += 1;
            if f_new.is_finite() && f_new <= f + 1e-4 * t * slope {
                accepted = Some((candidate, f_new, g_new));
                break;
            }
            t *= 0.5;
        }
        iterations += 1;
        let Some((candidate, f_new, g_new)) = accepted else { break };
        let s = candidate.f_sub(theta)?;
        let y = g_new.f_sub(&g)?;
        let sy = dot(&s, &y)?;
        let improvement = f - f_new;
        *theta = candidate;
        f = f_new;
        g = g_new;
        gmax = max_abs(&g)?;
        if sy > 1e-10 {
            if s_hist.len() == opts.history {
                let _ = s_hist.remove(0);
                let _ = y_hist.remove(0);
                rho.remove(0);
            }
            s_hist.push(s);
            y_hist.push(y);
            rho.push(1.0 / sy);
        }
        // scores are f32 (J is summed in f64): a relative change below ~1e-9 is rounding noise
        if improvement <= 1e-9 * f.abs().max(1e-12) && gmax > opts.gtol {
            break;
        }
    }
    Ok(FitReport { value: f, iterations, evaluations, grad_max: gmax, converged: gmax <= opts.gtol })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_autograd() {
        tch::manual_seed(0);
        let x = Tensor::randn([40, 5], (Kind::Float, tch::Device::Cpu));
        let y = Tensor::randint(3, [40], (Kind::Int64, tch::Device::Cpu));
        let p = Problem::new(&x, &y, 3).unwrap();
        let theta = Tensor::randn([5 * 3 + 3], (Kind::Float, tch::Device::Cpu)) * 0.3;
        let (v, g) = p.value_and_grad(&theta, 0.1).unwrap();
        let t = theta.detach().set_requires_grad(true);
        let (w, b) = p.split(&t).unwrap();
        let loss = b.addmm(&x, &w).cross_entropy_for_logits(&y) + w.square().sum(Kind::Float) * 0.05;
        loss.backward();
        assert!((loss.double_value(&[]) - v).abs() < 1e-5);
        assert!(f64::try_from((t.grad() - g).abs().max()).unwrap() < 1e-5);
    }

    #[test]
    fn fits_separable_classes_and_reaches_the_gradient_tolerance() {
        tch::manual_seed(1);
        let y = Tensor::randint(4, [400], (Kind::Int64, tch::Device::Cpu));
        let means = Tensor::randn([4, 8], (Kind::Float, tch::Device::Cpu)) * 2.0;
        let x = means.index_select(0, &y) + Tensor::randn([400, 8], (Kind::Float, tch::Device::Cpu));
        let p = Problem::new(&x, &y, 4).unwrap();
        let mut theta = p.zeros().unwrap();
        let r = fit(&p, &mut theta, 1e-2, LbfgsOptions::default()).unwrap();
        assert!(r.converged, "{r:?}");
        let pred = p.scores(&x, &theta).unwrap().argmax(1, false);
        let acc = f64::try_from(pred.eq_tensor(&y).to_kind(Kind::Float).mean(Kind::Float)).unwrap();
        assert!(acc > 0.9, "{acc}");
    }
}
