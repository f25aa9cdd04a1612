//! Bayesian model averaging: predictions averaged over weight samples, and their uncertainty
//! split into an aleatoric and an epistemic part.
//!
//! A [`Weights`] says which weights the model runs with: a fixed point (the SGD iterate), the
//! SWA mean, or `S` SWAG samples from one posterior or several (MultiSWAG). Before each forward
//! pass on the inputs the weights are written into the model's Vars and, when the model has
//! BatchNorm layers and a [`BatchNormRefresh`] is given, the running statistics are recomputed
//! with [`crate::batchnorm::refresh_batchnorm`] (exact cumulative average over one pass).
//!
//! - Classification ([`classify`]): softmax per sample, probabilities averaged (not logits);
//!   per row the predictive entropy, the expected entropy and the mutual information (see
//!   [`crate::metrics::uncertainty`]).
//! - Regression ([`regress`]): the predictive distribution is the mixture of the `S` Gaussians
//!   `N(μ_s, σ²_noise)`; it is summarised by its moments: mean `μ̄ = (1/S) Σ μ_s`, epistemic
//!   variance `(1/S) Σ (μ_s − μ̄)²` (divisor S) and aleatoric variance `σ²_noise`; the total
//!   variance is their sum.

use candle_core::{DType, ModuleT, Tensor};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::batchnorm::{refresh_batchnorm, HasBatchNorm};
use crate::error::{Error, Result};
use crate::layout::ParamSet;
use crate::metrics::uncertainty::{decompose_uncertainty, UncertaintyDecomposition};
use crate::swag::{MultiSwag, SampleOptions, SwagPosterior};

/// The five methods compared by the examples, the demo and the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The last SGD iterate.
    Sgd,
    /// The SWA mean (the posterior mean, scale 0).
    Swa,
    /// SWAG with the diagonal covariance only.
    SwagDiag,
    /// SWAG: diagonal plus low-rank covariance.
    Swag,
    /// SWAG samples spread over several independent runs' posteriors.
    MultiSwag,
}

impl Method {
    /// All methods, in the order of the tables.
    pub const ALL: [Method; 5] = [
        Method::Sgd,
        Method::Swa,
        Method::SwagDiag,
        Method::Swag,
        Method::MultiSwag,
    ];

    /// The machine name (`sgd`, `swa`, `swag_diag`, `swag`, `multiswag`).
    pub fn key(&self) -> &'static str {
        match self {
            Method::Sgd => "sgd",
            Method::Swa => "swa",
            Method::SwagDiag => "swag_diag",
            Method::Swag => "swag",
            Method::MultiSwag => "multiswag",
        }
    }

    /// The display name (`SGD`, `SWA`, `SWAG-diag`, `SWAG`, `MultiSWAG`).
    pub fn display(&self) -> &'static str {
        match self {
            Method::Sgd => "SGD",
            Method::Swa => "SWA",
            Method::SwagDiag => "SWAG-diag",
            Method::Swag => "SWAG",
            Method::MultiSwag => "MultiSWAG",
        }
    }
}

/// Which weights the model runs with during a BMA.
#[derive(Debug, Clone, Copy)]
pub enum Weights<'a> {
    /// One fixed flat weight vector `[d]` in the layout of the model's [`ParamSet`] (e.g. the
    /// last SGD iterate saved with `params.flatten()`): one forward pass.
    Point(&'a Tensor),
    /// The SWA mean of a posterior: one forward pass.
    SwaMean(&'a SwagPosterior),
    /// `samples` SWAG samples. With several posteriors (MultiSWAG) the samples are spread evenly
    /// with [`MultiSwag::assignment`] (posterior `i` gets `⌊S/M⌋` samples, one more for the first
    /// `S mod M`). The noise comes from one `StdRng` seeded with `seed` (one `u64` drawn per
    /// sample), so a seed fixes the whole BMA.
    Samples {
        /// The posteriors (one for SWAG, several for MultiSWAG).
        posteriors: &'a [&'a SwagPosterior],
        /// Scale, diagonal-only, divisor.
        options: SampleOptions,
        /// Number of samples S.
        samples: usize,
        /// Seed of the noise generator.
        seed: u64,
    },
}

impl Weights<'_> {
    /// Number of forward passes this source gives.
    pub fn num_samples(&self) -> usize {
        match self {
            Weights::Point(_) | Weights::SwaMean(_) => 1,
            Weights::Samples { samples, .. } => *samples,
        }
    }
}

/// Training inputs used to recompute BatchNorm statistics after each weight sample.
#[derive(Debug, Clone, Copy)]
pub struct BatchNormRefresh<'a> {
    /// Inputs `[n, d]` (the training rows), visited in order.
    pub inputs: &'a Tensor,
    /// Rows per batch of the refresh pass.
    pub batch_size: usize,
}

/// Runs the model once per weight sample and hands each output to `each(sample_index, output)`.
/// Returns the number of samples.
pub fn for_each_sample<M, F>(
    model: &M,
    params: &ParamSet,
    weights: &Weights,
    inputs: &Tensor,
    refresh: Option<&BatchNormRefresh>,
    mut each: F,
) -> Result<usize>
where
    M: ModuleT + HasBatchNorm + ?Sized,
    F: FnMut(usize, Tensor) -> Result<()>,
{
    let s = weights.num_samples();
    if s == 0 {
        return Err(Error::invalid("samples", "must be at least 1"));
    }
    let has_bn = !model.batchnorms().is_empty();
    let run = |i: usize, each: &mut F| -> Result<()> {
        if has_bn {
            if let Some(r) = refresh {
                refresh_pass(model, r)?;
            }
        }
        let out = model.forward_t(inputs, false)?;
        each(i, out)
    };
    match weights {
        Weights::Point(flat) => {
            params.write_flat(flat)?;
            run(0, &mut each)?;
        }
        Weights::SwaMean(p) => {
            p.write_mean_into(params)?;
            run(0, &mut each)?;
        }
        Weights::Samples {
            posteriors,
            options,
            samples,
            seed,
        } => {
            if posteriors.is_empty() {
                return Err(Error::invalid(
                    "posteriors",
                    "at least one posterior is needed",
                ));
            }
            let mut rng = rand::rngs::StdRng::seed_from_u64(*seed);
            for (i, which) in MultiSwag::assignment(posteriors.len(), *samples)
                .into_iter()
                .enumerate()
            {
                posteriors[which].sample_into(params, options, &mut rng)?;
                run(i, &mut each)?;
            }
        }
    }
    Ok(s)
}

fn refresh_pass<M: ModuleT + HasBatchNorm + ?Sized>(
    model: &M,
    r: &BatchNormRefresh,
) -> Result<usize> {
    if r.batch_size == 0 {
        return Err(Error::invalid("batch_size", "must be at least 1"));
    }
    let n = r.inputs.dims().first().copied().unwrap_or(0);
    let batches = (0..n)
        .step_by(r.batch_size)
        .map(|start| Ok(r.inputs.narrow(0, start, r.batch_size.min(n - start))?));
    refresh_batchnorm(model, batches, None)
}

/// Classification BMA: the averaged probabilities and the per-row uncertainty split.
pub fn classify<M>(
    model: &M,
    params: &ParamSet,
    weights: &Weights,
    inputs: &Tensor,
    refresh: Option<&BatchNormRefresh>,
) -> Result<UncertaintyDecomposition>
where
    M: ModuleT + HasBatchNorm + ?Sized,
{
    let mut all: Vec<f32> = Vec::new();
    let mut classes = 0;
    let s = for_each_sample(model, params, weights, inputs, refresh, |_, logits| {
        let probs = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
        classes = probs.dim(1)?;
        all.extend(probs.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    })?;
    decompose_uncertainty(&all, s, classes)
}

/// Regression BMA moments, per row, in the units the model was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionPrediction {
    /// Mean over samples of the predicted means.
    pub mean: Vec<f64>,
    /// Variance over samples of the predicted means (divisor S; 0 for a single sample).
    pub var_epistemic: Vec<f64>,
    /// The homoscedastic noise variance (the same for every row).
    pub var_aleatoric: f64,
}

impl RegressionPrediction {
    /// Total predictive standard deviation per row: `sqrt(var_epistemic + var_aleatoric)`.
    pub fn std(&self) -> Vec<f64> {
        self.var_epistemic
            .iter()
            .map(|v| (v + self.var_aleatoric).sqrt())
            .collect()
    }

    /// Maps a prediction made on standardised targets `z = (y − mean)/std` back to the
    /// original units: means become `μ·std + mean`, variances are multiplied by `std²`.
    pub fn to_original_units(&self, target_mean: f64, target_std: f64) -> Self {
        let s2 = target_std * target_std;
        Self {
            mean: self
                .mean
                .iter()
                .map(|m| m * target_std + target_mean)
                .collect(),
            var_epistemic: self.var_epistemic.iter().map(|v| v * s2).collect(),
            var_aleatoric: self.var_aleatoric * s2,
        }
    }
}

/// Regression BMA with a homoscedastic noise variance (in the model's target units).
pub fn regress<M>(
    model: &M,
    params: &ParamSet,
    weights: &Weights,
    inputs: &Tensor,
    refresh: Option<&BatchNormRefresh>,
    noise_variance: f64,
) -> Result<RegressionPrediction>
where
    M: ModuleT + HasBatchNorm + ?Sized,
{
    if !(noise_variance.is_finite() && noise_variance >= 0.0) {
        return Err(Error::invalid(
            "noise_variance",
            format!("must be finite and >= 0, got {noise_variance}"),
        ));
    }
    let samples = sampled_means(model, params, weights, inputs, refresh)?;
    Ok(mixture_moments(&samples, noise_variance))
}

/// The predicted means of every weight sample: `[S][n]`.
pub fn sampled_means<M>(
    model: &M,
    params: &ParamSet,
    weights: &Weights,
    inputs: &Tensor,
    refresh: Option<&BatchNormRefresh>,
) -> Result<Vec<Vec<f64>>>
where
    M: ModuleT + HasBatchNorm + ?Sized,
{
    let mut samples: Vec<Vec<f64>> = Vec::with_capacity(weights.num_samples());
    for_each_sample(model, params, weights, inputs, refresh, |_, out| {
        let v: Vec<f32> = out.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        samples.push(v.into_iter().map(f64::from).collect());
        Ok(())
    })?;
    Ok(samples)
}

/// Mixture moments of `S` sampled means `[S][n]` with a common noise variance.
pub fn mixture_moments(samples: &[Vec<f64>], noise_variance: f64) -> RegressionPrediction {
    let s = samples.len().max(1) as f64;
    let n = samples.first().map_or(0, Vec::len);
    let mut mean = vec![0.0; n];
    for row in samples {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= s);
    let mut var = vec![0.0; n];
    for row in samples {
        for ((acc, v), m) in var.iter_mut().zip(row).zip(&mean) {
            *acc += (v - m) * (v - m);
        }
    }
    var.iter_mut().for_each(|v| *v /= s);
    RegressionPrediction {
        mean,
        var_epistemic: var,
        var_aleatoric: noise_variance,
    }
}

/// Mean squared residual `(1/n) Σ (μ_i − y_i)²`: the homoscedastic noise estimate of the
/// reference recipe when computed on the training rows.
pub fn mean_squared_residual(mean: &[f64], targets: &[f64]) -> Result<f64> {
    if mean.len() != targets.len() || mean.is_empty() {
        return Err(Error::invalid(
            "targets",
            format!("{} predictions for {} targets", mean.len(), targets.len()),
        ));
    }
    Ok(mean
        .iter()
        .zip(targets)
        .map(|(m, y)| (m - y) * (m - y))
        .sum::<f64>()
        / mean.len() as f64)
}

/// Mean Gaussian negative log-likelihood `(1/n) Σ ½ ln(2π σ²_i) + (y_i − μ_i)² / (2σ²_i)`, with
/// `σ²_i = var_epistemic_i + noise`.
pub fn gaussian_nll_with_noise(
    mean: &[f64],
    var_epistemic: &[f64],
    noise: f64,
    targets: &[f64],
) -> f64 {
    let n = mean.len().max(1) as f64;
    mean.iter()
        .zip(var_epistemic)
        .zip(targets)
        .map(|((m, v), y)| {
            let s2 = v + noise;
            0.5 * (2.0 * std::f64::consts::PI * s2).ln() + (y - m) * (y - m) / (2.0 * s2)
        })
        .sum::<f64>()
        / n
}

/// The noise variance grid searched by [`best_noise_variance`]: 601 values log-spaced from
/// 1e-4 to 1e2 (ratio 10^(1/100) ≈ 1.023 between neighbours), in standardised target units.
pub fn noise_grid() -> Vec<f64> {
    (0..=600)
        .map(|i| 10f64.powf(-4.0 + i as f64 / 100.0))
        .collect()
}

/// The noise variance of [`noise_grid`] that minimises the validation NLL (first on ties), and
/// that NLL.
pub fn best_noise_variance(mean: &[f64], var_epistemic: &[f64], targets: &[f64]) -> (f64, f64) {
    noise_grid()
        .into_iter()
        .map(|s2| {
            (
                s2,
                gaussian_nll_with_noise(mean, var_epistemic, s2, targets),
            )
        })
        .fold((f64::NAN, f64::INFINITY), |best, cur| {
            if cur.1 < best.1 {
                cur
            } else {
                best
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixture_moments_by_hand() {
        // Two samples, two rows: means (1, 3) and (2, 5).
        let p = mixture_moments(&[vec![1.0, 2.0], vec![3.0, 5.0]], 0.5);
        assert_eq!(p.mean, vec![2.0, 3.5]);
        assert_eq!(p.var_epistemic, vec![1.0, 2.25]);
        assert_eq!(p.std(), vec![1.5f64.sqrt(), 2.75f64.sqrt()]);
        let o = p.to_original_units(10.0, 2.0);
        assert_eq!(o.mean, vec![14.0, 17.0]);
        assert_eq!(o.var_epistemic, vec![4.0, 9.0]);
        assert_eq!(o.var_aleatoric, 2.0);
    }

    #[test]
    fn best_noise_matches_residual_variance_without_epistemic_part() {
        // With zero epistemic variance the NLL-optimal noise is the mean squared residual.
        let mean = vec![0.0; 4];
        let y = vec![1.0, -1.0, 2.0, -2.0]; // mean squared residual 2.5
        let (s2, _) = best_noise_variance(&mean, &[0.0; 4], &y);
        assert!((s2 / 2.5 - 1.0).abs() < 0.012, "{s2}");
    }
}
