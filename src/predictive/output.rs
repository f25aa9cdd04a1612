//! What a [`Predictive`](super::Predictive) returns (on the device, and on the host), the
//! regression noise model it is given, and [`batches`], which cuts a tensor into its inputs.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::metrics::uncertainty::UncertaintyDecomposition;

/// The noise model of a regression network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Noise {
    /// One noise variance for every row, in the units of the model's outputs (e.g. the mean
    /// squared training residual). Must be finite and >= 0.
    Homoscedastic {
        /// The noise variance `σ²`.
        variance: f64,
    },
    /// The network outputs `[..., 2]`: a mean and a raw variance parameter per row, mapped to a
    /// variance by the link (trained with the Gaussian negative log-likelihood).
    Heteroscedastic(VarianceLink),
}

impl Noise {
    pub(super) fn check(&self) -> Result<()> {
        match *self {
            Noise::Homoscedastic { variance } if !(variance.is_finite() && variance >= 0.0) => {
                Err(Error::invalid(
                    "noise_variance",
                    format!("must be finite and >= 0, got {variance}"),
                ))
            }
            Noise::Heteroscedastic(VarianceLink::Softplus { min_variance })
                if !(min_variance.is_finite() && min_variance >= 0.0) =>
            {
                Err(Error::invalid(
                    "min_variance",
                    format!("must be finite and >= 0, got {min_variance}"),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// How a heteroscedastic network's raw output `s` becomes a variance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceLink {
    /// `σ² = exp(s)`: `s` is the log-variance.
    LogVariance,
    /// `σ² = softplus(s) + min_variance`, `softplus(s) = ln(1 + eˢ)` (computed as
    /// `max(s, 0) + ln(1 + e^(−|s|))`, which does not overflow): bounded away from 0, so one
    /// outlier cannot drive the likelihood to infinity.
    Softplus {
        /// The variance floor (finite, >= 0).
        min_variance: f64,
    },
}

impl VarianceLink {
    /// The variance for raw outputs `raw` (elementwise, any shape, float dtype kept).
    pub fn variance(&self, raw: &Tensor) -> Result<Tensor> {
        Ok(match *self {
            VarianceLink::LogVariance => raw.exp()?,
            VarianceLink::Softplus { min_variance } => {
                let soft = (raw.relu()? + (raw.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
                (soft + min_variance)?
            }
        })
    }
}

/// A classification BMA, on the model's device (f32).
#[derive(Debug, Clone)]
pub struct ClassificationOutput {
    /// Number of weight samples `S` averaged.
    pub n_samples: usize,
    /// `[N, C]`: mean over samples of the softmax probabilities.
    pub probs: Tensor,
    /// `[N]`: entropy of the mean prediction (total uncertainty), in nats.
    pub predictive_entropy: Tensor,
    /// `[N]`: mean entropy of the sample predictions (aleatoric), in nats.
    pub expected_entropy: Tensor,
    /// `[N]`: predictive minus expected entropy (epistemic), clamped at 0, in nats.
    pub mutual_information: Tensor,
    /// `[N]`: one minus the fraction of samples voting for the modal arg-max class.
    pub variation_ratio: Tensor,
}

impl ClassificationOutput {
    /// Copies the prediction to the host in f64, in the form the metrics and the report take.
    /// The predictive entropy and the mutual information are recomputed there in f64 from the
    /// copied probabilities (`H[p̄]`, then `max(H[p̄] − expected entropy, 0)`), so that the host
    /// values agree with each other to f64 precision rather than f32.
    pub fn to_host(&self) -> Result<UncertaintyDecomposition> {
        Ok(UncertaintyDecomposition::from_averages(
            self.n_samples,
            self.probs.dim(1)?,
            host_f64(&self.probs)?,
            host_f64(&self.expected_entropy)?,
            host_f64(&self.variation_ratio)?,
        ))
    }
}

/// A tensor's values, flattened, as f64 on the host.
pub(super) fn host_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

/// Concatenates, along dimension 0, one field of the per-batch accumulators.
pub(super) fn cat_field(
    acc: &[(Tensor, Tensor, Tensor)],
    pick: fn(&(Tensor, Tensor, Tensor)) -> &Tensor,
) -> Result<Tensor> {
    let parts: Vec<&Tensor> = acc.iter().map(pick).collect();
    Ok(Tensor::cat(&parts, 0)?)
}

/// A regression BMA, on the model's device (f32), in the units of the model's outputs.
#[derive(Debug, Clone)]
pub struct RegressionOutput {
    /// Number of weight samples `S`.
    pub n_samples: usize,
    /// Mixture mean `(1/S) Σ μ_s`.
    pub mean: Tensor,
    /// Variance of the sampled means (epistemic), divisor `S`; 0 for one sample.
    pub var_epistemic: Tensor,
    /// Mean of the sampled noise variances (aleatoric).
    pub var_aleatoric: Tensor,
}

impl RegressionOutput {
    /// Copies the prediction to the host in f64 (values flattened in row-major order).
    pub fn to_host(&self) -> Result<RegressionPrediction> {
        Ok(RegressionPrediction {
            mean: host_f64(&self.mean)?,
            var_epistemic: host_f64(&self.var_epistemic)?,
            var_aleatoric: host_f64(&self.var_aleatoric)?,
        })
    }
}

/// A regression BMA on the host, per row (f64), as the metrics and the report take it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionPrediction {
    /// Mixture mean per row.
    pub mean: Vec<f64>,
    /// Epistemic variance per row (divisor `S`).
    pub var_epistemic: Vec<f64>,
    /// Aleatoric variance per row.
    pub var_aleatoric: Vec<f64>,
}

impl RegressionPrediction {
    /// Total predictive variance per row: `var_epistemic + var_aleatoric`.
    pub fn variance(&self) -> Vec<f64> {
        self.var_epistemic
            .iter()
            .zip(&self.var_aleatoric)
            .map(|(e, a)| e + a)
            .collect()
    }

    /// Total predictive standard deviation per row.
    pub fn std(&self) -> Vec<f64> {
        self.variance().into_iter().map(f64::sqrt).collect()
    }

    /// Maps a prediction made on standardised targets `z = (y − mean)/std` back to the
    /// original units: means become `μ·std + mean`, variances are multiplied by `std²`.
    pub fn to_original_units(&self, target_mean: f64, target_std: f64) -> Self {
        let s2 = target_std * target_std;
        let scale = |v: &[f64]| v.iter().map(|x| x * s2).collect();
        Self {
            mean: self
                .mean
                .iter()
                .map(|m| m * target_std + target_mean)
                .collect(),
            var_epistemic: scale(&self.var_epistemic),
            var_aleatoric: scale(&self.var_aleatoric),
        }
    }
}

/// Consecutive batches of `batch_size` rows of `x` (dimension 0; the last batch may be smaller),
/// as a `Clone` iterator for [`Predictive`](super::Predictive) and [`BatchNormRefresh`](crate::BatchNormRefresh). The batches are views
/// (`narrow`), not copies.
///
/// Errors: `batch_size == 0` (`Error::InvalidArgument` naming `batch_size`), a tensor of rank 0
/// or with no row (naming `x`).
pub fn batches(
    x: &Tensor,
    batch_size: usize,
) -> Result<impl Iterator<Item = candle_core::Result<Tensor>> + Clone + '_> {
    if batch_size == 0 {
        return Err(Error::invalid("batch_size", "must be at least 1"));
    }
    let n = match x.dims().first() {
        Some(&n) if n > 0 => n,
        _ => {
            return Err(Error::invalid(
                "x",
                format!(
                    "batches need a tensor with at least one row, got shape {:?}",
                    x.dims()
                ),
            ))
        }
    };
    Ok((0..n)
        .step_by(batch_size)
        .map(move |start| x.narrow(0, start, batch_size.min(n - start))))
}
