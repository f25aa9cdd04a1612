//! Post-hoc recalibration baselines, fitted on a validation set and shown beside SWAG.
//!
//! # Temperature scaling (Guo et al. 2017)
//!
//! Probabilities `softmax(z / T)`. `T` minimises the mean validation NLL. Written with the
//! inverse temperature `β = 1/T`, the NLL `mean(logsumexp(βz) − βz_y)` is convex in `β`, with
//! derivative `g(β) = mean(E_{p_β}[z] − z_y)` and second derivative `mean(Var_{p_β}[z]) ≥ 0`;
//! so its unique minimum is the root of `g`, found by Newton's method safeguarded by a
//! bracket (a step leaving the bracket is replaced by a geometric bisection). `T` is searched
//! in `[1e-3, 1e3]`: when the validation set is separable the NLL keeps falling as `T → 0`,
//! and the fit stops at the bound `T = 1e-3` (reported as such by `at_bound`).
//!
//! # σ scaling for Gaussian regression
//!
//! Predictive standard deviations are multiplied by one factor `s`. The mean Gaussian NLL
//! `ln s + mean(ln σ) + mean(r²)/(2s²) + const`, `r = (y − μ)/σ`, is minimised in closed form
//! by `s² = mean(r²)`.

use serde::{Deserialize, Serialize};

use super::{bad_data, check_same_len, label_indices, matrix_rows, ClassLabel, Probability};
use crate::{Error, Result};

/// Smallest and largest temperature searched.
const T_MIN: f64 = 1e-3;
const T_MAX: f64 = 1e3;

/// A fitted temperature and the validation NLL before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemperatureScaling {
    /// The fitted temperature `T` (> 1 softens over-confident predictions).
    pub temperature: f64,
    /// Mean validation NLL at `T = 1`.
    pub nll_before: f64,
    /// Mean validation NLL at the fitted `T`.
    pub nll_after: f64,
    /// Whether the fit stopped at a bound of `[1e-3, 1e3]`.
    pub at_bound: bool,
    /// Newton/bisection iterations used.
    pub iterations: usize,
}

/// A fitted σ scale and the validation NLL before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SigmaScaling {
    /// Factor applied to every predictive standard deviation.
    pub scale: f64,
    /// Mean Gaussian validation NLL with the original σ.
    pub nll_before: f64,
    /// Mean Gaussian validation NLL with `scale · σ`.
    pub nll_after: f64,
}

impl SigmaScaling {
    /// `scale · σ` for every entry.
    pub fn apply(&self, std: &[f64]) -> Vec<f64> {
        std.iter().map(|s| s * self.scale).collect()
    }
}

/// Checks that logits are finite, naming the first bad value.
fn check_logits<T: Probability>(logits: &[T], n_classes: usize) -> Result<usize> {
    let n = matrix_rows("logits", logits.len(), n_classes)?;
    for (i, z) in logits.iter().enumerate() {
        let v = z.to_f64();
        if !v.is_finite() {
            return Err(bad_data(
                "logits",
                i / n_classes,
                format!("class {}", i % n_classes),
                format!("value {v} is not finite"),
            ));
        }
    }
    Ok(n)
}

/// Row-wise softmax of `logits / temperature` (max-subtracted, computed in `f64`).
pub fn apply_temperature<T: Probability>(
    logits: &[T],
    n_classes: usize,
    temperature: f64,
) -> Result<Vec<f32>> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::invalid(
            "temperature",
            format!("{temperature} is not a positive number"),
        ));
    }
    check_logits(logits, n_classes)?;
    let beta = 1.0 / temperature;
    let mut out = Vec::with_capacity(logits.len());
    let mut buf = vec![0.0f64; n_classes];
    for row in logits.chunks_exact(n_classes) {
        let max = row
            .iter()
            .map(|z| z.to_f64())
            .fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for (b, z) in buf.iter_mut().zip(row) {
            *b = ((z.to_f64() - max) * beta).exp();
            sum += *b;
        }
        out.extend(buf.iter().map(|b| (b / sum) as f32));
    }
    Ok(out)
}

/// Row-wise softmax of logits (temperature 1).
pub fn softmax_rows<T: Probability>(logits: &[T], n_classes: usize) -> Result<Vec<f32>> {
    apply_temperature(logits, n_classes, 1.0)
}

/// Mean NLL, its derivative and second derivative in `β` at inverse temperature `beta`.
fn nll_and_derivatives<T: Probability>(
    logits: &[T],
    n_classes: usize,
    labels: &[usize],
    beta: f64,
) -> (f64, f64, f64) {
    let (mut nll, mut g, mut h) = (0.0, 0.0, 0.0);
    for (row, &y) in logits.chunks_exact(n_classes).zip(labels) {
        let max = row
            .iter()
            .map(|z| z.to_f64())
            .fold(f64::NEG_INFINITY, f64::max);
        let (mut s0, mut s1, mut s2) = (0.0, 0.0, 0.0);
        for z in row {
            let z = z.to_f64();
            let w = ((z - max) * beta).exp();
            s0 += w;
            s1 += w * z;
            s2 += w * z * z;
        }
        let zy = row[y].to_f64();
        let mean_z = s1 / s0;
        nll += beta * (max - zy) + s0.ln();
        g += mean_z - zy;
        h += (s2 / s0 - mean_z * mean_z).max(0.0);
    }
    let n = labels.len() as f64;
    (nll / n, g / n, h / n)
}

/// Fits a temperature on validation `logits` (row-major `[N, n_classes]`) and `labels`.
pub fn fit_temperature<T: Probability, L: ClassLabel>(
    logits: &[T],
    n_classes: usize,
    labels: &[L],
) -> Result<TemperatureScaling> {
    let n = check_logits(logits, n_classes)?;
    check_same_len("logits", n, "labels", labels.len())?;
    let labels = label_indices(labels, n_classes)?;
    let eval = |beta: f64| nll_and_derivatives(logits, n_classes, &labels, beta);
    let nll_before = eval(1.0).0;
    let (mut lo, mut hi) = (1.0 / T_MAX, 1.0 / T_MIN);
    let finish = |beta: f64, at_bound: bool, iterations: usize| TemperatureScaling {
        temperature: 1.0 / beta,
        nll_before,
        nll_after: eval(beta).0,
        at_bound,
        iterations,
    };
    // g is non-decreasing: its sign at the bracket ends tells whether the optimum is inside.
    if eval(lo).1 >= 0.0 {
        return Ok(finish(lo, true, 0));
    }
    if eval(hi).1 <= 0.0 {
        return Ok(finish(hi, true, 0));
    }
    let mut beta = 1.0;
    let mut iterations = 0;
    while iterations < 200 {
        iterations += 1;
        let (_, g, h) = eval(beta);
        if g == 0.0 {
            break;
        }
        if g > 0.0 {
            hi = beta;
        } else {
            lo = beta;
        }
        let newton = beta - g / h;
        let next = if h > 0.0 && newton > lo && newton < hi {
            newton
        } else {
            (lo * hi).sqrt()
        };
        let converged = (next - beta).abs() <= 1e-12 * beta || hi / lo - 1.0 <= 1e-12;
        beta = next;
        if converged {
            break;
        }
    }
    Ok(finish(beta, false, iterations))
}

/// Fits the closed-form σ scale `s = sqrt(mean(((y − μ)/σ)²))` on validation data.
pub fn fit_sigma_scale(mean: &[f64], std: &[f64], y: &[f64]) -> Result<SigmaScaling> {
    let nll_before = super::regression::gaussian_nll(mean, std, y)?;
    let mean_r2 = mean
        .iter()
        .zip(std)
        .zip(y)
        .map(|((m, s), t)| ((t - m) / s).powi(2))
        .sum::<f64>()
        / y.len() as f64;
    if mean_r2 <= 0.0 {
        return Err(Error::invalid(
            "targets",
            "every target equals its predicted mean: no σ scale can be fitted",
        ));
    }
    let scale = mean_r2.sqrt();
    let scaled: Vec<f64> = std.iter().map(|s| s * scale).collect();
    let nll_after = super::regression::gaussian_nll(mean, &scaled, y)?;
    Ok(SigmaScaling {
        scale,
        nll_before,
        nll_after,
    })
}
